//! `faas bench compare`: one static faas guest program, a fresh process of
//! it per request, four ways, in the same run:
//!
//! | way | what starts the program |
//! |---|---|
//! | `platform` | an embedded platform, the program deployed as a native function with a fresh instance per request, invoked over HTTP (one keep-alive connection) |
//! | `exec` | plain fork + exec (`ProcessRuntime`, no isolation) |
//! | `bwrap` | `bwrap --unshare-all --die-with-parent --ro-bind ROOT / /guest` |
//! | `runc` | `runc run --preserve-fds 1` of an OCI bundle (`runc spec`, read-only rootfs holding only the program, no tty, a unique container id per run) |
//!
//! Every way does the same work: the program starts, finds the guest
//! channel on fd 3, says `Ready`, pulls one `Invoke`, answers with a
//! `Result` and exits. For the three peers this command is the gateway: it
//! hands the channel over as fd 3 (bwrap and runc pass it through) and
//! speaks the protocol itself. A run's latency is the time from the request
//! (the HTTP request, or starting the tool) to the answer in hand; the
//! process is then reaped, untimed (the platform, too, tears instances down
//! after answering). The ways run interleaved (round i runs each way once),
//! after one untimed run each, so that a noisy neighbour hurts them alike.
//!
//! A tool that is not installed is reported as skipped, with the way to
//! install it; a tool that fails is reported as failed, with its message.

use std::fs::File;
use std::io::{IsTerminal, Read, Seek};
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use faas_core::protocol::{Body, Channel, DecodeLimits, Frame, channel_pair};
use faas_core::{
    ExitStatus, ImageRef, InvocationId, Limits, Reuse, SandboxPolicy, SandboxRuntime, SandboxSpec,
    StartMode, Stdio, UnixMillis,
};
use faas_platform::embedded;
use faas_platform::load::{Connection, Summary};
use faas_sandbox::ProcessRuntime;

use super::{EmbeddedServer, example_spec, us};
use crate::fmt_ms;

/// The program's file name in every root.
const PROGRAM: &str = "guest";
/// The function name of the program on the embedded platform.
const FUNCTION: &str = "compare";
/// How long a peer may take to answer one request.
const ANSWER_TIMEOUT: Duration = Duration::from_secs(20);
const INSTALL_HINT: &str = "apt-get install bubblewrap runc";

/// How one way starts the program.
enum Launch {
    /// Over HTTP through the embedded platform.
    Platform(Box<Connection>),
    /// A command run with the channel as fd 3: `program` (an absolute path)
    /// with `args`, plus a unique container id for runc.
    Process {
        program: PathBuf,
        args: Vec<String>,
        runc: Option<Runc>,
    },
}

/// What runc needs beyond its command line.
struct Runc {
    state: PathBuf,
    prefix: String,
}

enum Outcome {
    Running,
    Skipped(String),
    Failed(String),
}

/// One way and what it measured.
struct Way {
    name: &'static str,
    launch: Option<Launch>,
    outcome: Outcome,
    samples: Vec<Duration>,
    start_modes: std::collections::BTreeMap<String, usize>,
    /// The tool's stderr, read back when it fails.
    log: Option<File>,
    runs: usize,
}

impl Way {
    fn new(name: &'static str, launch: anyhow::Result<Option<Launch>>, work: &Path) -> Self {
        let (launch, outcome) = match launch {
            Ok(Some(l)) => (Some(l), Outcome::Running),
            Ok(None) => (
                None,
                Outcome::Skipped(format!("{name} is not installed ({INSTALL_HINT})")),
            ),
            Err(e) => (None, Outcome::Failed(format!("{e:#}"))),
        };
        let log = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(work.join(format!("{name}.stderr")))
            .ok();
        Way {
            name,
            launch,
            outcome,
            samples: Vec::new(),
            start_modes: Default::default(),
            log,
            runs: 0,
        }
    }

    fn running(&self) -> bool {
        matches!(self.outcome, Outcome::Running)
    }

    /// Runs the program once; `None` on failure (the way is then failed).
    async fn run_once(&mut self, body: &Bytes) -> Option<Duration> {
        let r = match &mut self.launch {
            Some(Launch::Platform(conn)) => platform_once(conn, body, &mut self.start_modes).await,
            Some(Launch::Process {
                program,
                args,
                runc,
            }) => {
                let stderr = self.log.as_ref().and_then(|f| f.try_clone().ok());
                process_once(program, args, runc.as_ref(), self.runs, stderr, body).await
            }
            None => return None,
        };
        self.runs += 1;
        match r {
            Ok(d) => Some(d),
            Err(e) => {
                let mut msg = format!("{e:#}");
                if let Some(tail) = self.log.as_mut().and_then(log_tail) {
                    msg.push_str(&format!(" (stderr: {tail})"));
                }
                self.outcome = Outcome::Failed(msg);
                None
            }
        }
    }
}

/// The last line the tool wrote to stderr.
fn log_tail(f: &mut File) -> Option<String> {
    let mut s = String::new();
    f.rewind().ok()?;
    f.read_to_string(&mut s).ok()?;
    s.lines()
        .rev()
        .find(|l| !l.trim().is_empty())
        .map(|l| l.trim().to_owned())
}

async fn platform_once(
    conn: &mut Connection,
    body: &Bytes,
    modes: &mut std::collections::BTreeMap<String, usize>,
) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let a = conn.invoke(FUNCTION, body.clone()).await?;
    let d = t.elapsed();
    if !a.status.is_success() {
        bail!("the platform answered {}", a.error_line());
    }
    let mode = a.start.unwrap_or_else(|| "unknown".to_owned());
    if mode == "warm" {
        bail!("the platform answered from a warm instance: not a cold start");
    }
    *modes.entry(mode).or_insert(0) += 1;
    Ok(d)
}

async fn process_once(
    program: &Path,
    args: &[String],
    runc: Option<&Runc>,
    run: usize,
    stderr: Option<File>,
    body: &Bytes,
) -> anyhow::Result<Duration> {
    let (ours, theirs) = channel_pair().context("creating the guest channel")?;
    rustix::net::sockopt::set_socket_timeout(
        &ours,
        rustix::net::sockopt::Timeout::Recv,
        Some(ANSWER_TIMEOUT),
    )
    .context("setting the guest channel's timeout")?;
    let mut chan = Channel::new(ours, DecodeLimits::default());
    let mut args = args.to_vec();
    let id = runc.map(|r| format!("{}-{run}", r.prefix));
    if let Some(id) = &id {
        args.push(id.clone());
    }
    let spec = SandboxSpec {
        name: format!("compare-{run}"),
        root: ImageRef::Dir(PathBuf::from("/")),
        program: program.to_owned(),
        args,
        env: Vec::new(),
        limits: Limits::default(),
        start: StartMode::Cold,
        snapshot: None,
        policy: SandboxPolicy::default(),
        channel: theirs,
        stdin: Stdio::Null,
        stdout: Stdio::Null,
        stderr: stderr.map_or(Stdio::Null, |f| Stdio::Fd(OwnedFd::from(f))),
    };
    let t = Instant::now();
    let mut instance = ProcessRuntime::new()
        .launch(spec)
        .await
        .with_context(|| format!("starting {}", program.display()))?;
    let answered = tokio::task::block_in_place(|| exchange(&mut chan, body));
    let d = t.elapsed();
    if answered.is_err() {
        let _ = instance.kill();
    }
    let exit = instance.wait().await;
    if let (Some(r), Some(id)) = (runc, &id)
        && r.state.join(id).exists()
    {
        let _ = std::process::Command::new(program)
            .arg("--root")
            .arg(&r.state)
            .args(["delete", "--force", id])
            .output();
    }
    let status = answered?;
    match exit.with_context(|| format!("waiting for {}", program.display()))? {
        ExitStatus::Code(0) => {}
        other => bail!(
            "{} exited with {other:?} after answering",
            program.display()
        ),
    }
    if !(200..300).contains(&status) {
        bail!("the program answered with status {status}");
    }
    Ok(d)
}

/// The gateway's side of one request: `Ready` → `Invoke` → `Result`.
fn exchange(chan: &mut Channel, body: &[u8]) -> anyhow::Result<u16> {
    match chan.recv().context("waiting for Ready")? {
        Some(Frame::Ready { .. }) => {}
        Some(f) => bail!("the program sent {:?} instead of Ready", f.kind()),
        None => bail!("the program exited before saying Ready (is it built on faas-guest?)"),
    }
    let deadline = UnixMillis(UnixMillis::now().0 + ANSWER_TIMEOUT.as_millis() as u64);
    chan.send(&Frame::Invoke {
        id: InvocationId(1),
        deadline,
        trace_id: "faas-bench-compare".to_owned(),
        headers: Vec::new(),
        body: Body::new(body.to_vec()).context("request body")?,
    })
    .context("sending the request")?;
    loop {
        match chan.recv().context("waiting for the answer")? {
            Some(Frame::Result { status, .. }) => return Ok(status),
            Some(Frame::Log { .. }) => {}
            Some(Frame::Error {
                status, message, ..
            }) => bail!("the program failed ({status}): {message}"),
            Some(f) => bail!("the program sent {:?} instead of its answer", f.kind()),
            None => bail!("the program exited without answering"),
        }
    }
}

/// A directory removed on drop.
struct WorkDir(PathBuf);

impl Drop for WorkDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// `name` on `PATH` (and in the sbin directories root has on it), if
/// installed.
fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(PathBuf::from))
        .map(|d| d.join(name))
        .find(|p| {
            use std::os::unix::fs::PermissionsExt;
            p.metadata()
                .is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
        })
}

fn write_program(path: &Path, bytes: &[u8]) -> anyhow::Result<()> {
    use std::os::unix::fs::PermissionsExt;
    std::fs::write(path, bytes).with_context(|| format!("writing {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o755))
        .with_context(|| format!("chmod {}", path.display()))
}

/// The runc bundle: `runc spec`'s config with our program, no tty, a
/// read-only root.
fn runc_bundle(runc: &Path, bundle: &Path) -> anyhow::Result<()> {
    let out = std::process::Command::new(runc)
        .arg("spec")
        .arg("--bundle")
        .arg(bundle)
        .output()
        .with_context(|| format!("running {} spec", runc.display()))?;
    if !out.status.success() {
        bail!(
            "runc spec failed: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    let path = bundle.join("config.json");
    let text = std::fs::read(&path).with_context(|| format!("reading {}", path.display()))?;
    let mut config: serde_json::Value =
        serde_json::from_slice(&text).with_context(|| format!("{}: not JSON", path.display()))?;
    let process = config
        .get_mut("process")
        .and_then(|p| p.as_object_mut())
        .with_context(|| format!("{}: no process object", path.display()))?;
    process.insert("terminal".into(), false.into());
    process.insert("args".into(), serde_json::json!([format!("/{PROGRAM}")]));
    process.insert("env".into(), serde_json::json!([]));
    config["root"] = serde_json::json!({ "path": "rootfs", "readonly": true });
    std::fs::write(&path, serde_json::to_vec_pretty(&config)?)
        .with_context(|| format!("writing {}", path.display()))
}

/// Runs `faas bench compare`.
pub(super) async fn run(
    binary: Option<PathBuf>,
    requests: usize,
    body: Bytes,
    json: bool,
) -> anyhow::Result<()> {
    let (program_bytes, shown) = match &binary {
        Some(p) => (
            std::fs::read(p).with_context(|| format!("--binary {}", p.display()))?,
            p.display().to_string(),
        ),
        None => {
            let hello = embedded::find("hello").context("the bundled hello example is missing")?;
            (
                hello.binary.to_vec(),
                "the bundled hello example".to_owned(),
            )
        }
    };
    if !program_bytes.starts_with(b"\x7fELF") {
        bail!("--binary {shown}: not an ELF executable");
    }
    let work =
        WorkDir(std::env::temp_dir().join(format!("faas-bench-compare-{}", std::process::id())));
    let _ = std::fs::remove_dir_all(&work.0);
    let bundle = work.0.join("bundle");
    let rootfs = bundle.join("rootfs");
    for d in ["proc", "dev", "sys", "tmp"] {
        std::fs::create_dir_all(rootfs.join(d))
            .with_context(|| format!("creating {}", rootfs.join(d).display()))?;
    }
    write_program(&rootfs.join(PROGRAM), &program_bytes)?;
    let fn_dir = work.0.join("function");
    std::fs::create_dir_all(&fn_dir).with_context(|| format!("creating {}", fn_dir.display()))?;
    write_program(&fn_dir.join(PROGRAM), &program_bytes)?;

    let server = EmbeddedServer::start().await?;
    let mut spec = example_spec(FUNCTION, fn_dir, Reuse::PerRequest, 1);
    spec.handler = PROGRAM.to_owned();
    let start = server.deploy(&spec).await?;
    let mut ways = vec![
        Way::new(
            "platform",
            Connection::new(&server.base).map(|c| Some(Launch::Platform(Box::new(c)))),
            &work.0,
        ),
        Way::new(
            "exec",
            Ok(Some(Launch::Process {
                program: rootfs.join(PROGRAM),
                args: Vec::new(),
                runc: None,
            })),
            &work.0,
        ),
        Way::new(
            "bwrap",
            Ok(find_tool("bwrap").map(|bwrap| {
                let mut args: Vec<String> = ["--unshare-all", "--die-with-parent", "--ro-bind"]
                    .map(String::from)
                    .into();
                args.push(rootfs.display().to_string());
                args.push("/".to_owned());
                args.push(format!("/{PROGRAM}"));
                Launch::Process {
                    program: bwrap,
                    args,
                    runc: None,
                }
            })),
            &work.0,
        ),
    ];
    let runc = match find_tool("runc") {
        None => Ok(None),
        Some(runc) => runc_bundle(&runc, &bundle).map(|()| {
            let state = work.0.join("runc-state");
            let mut args = vec!["--root".to_owned(), state.display().to_string()];
            args.extend(["run", "--preserve-fds", "1", "--bundle"].map(String::from));
            args.push(bundle.display().to_string());
            Some(Launch::Process {
                program: runc,
                args,
                runc: Some(Runc {
                    state,
                    prefix: format!("faas-bench-{}", std::process::id()),
                }),
            })
        }),
    };
    ways.push(Way::new("runc", runc, &work.0));

    // One untimed run each, then the rounds.
    for w in ways.iter_mut().filter(|w| w.running()) {
        w.run_once(&body).await;
        w.start_modes.clear();
    }
    let tty = !json && std::io::stderr().is_terminal();
    for round in 0..requests {
        for w in ways.iter_mut().filter(|w| w.running()) {
            if let Some(d) = w.run_once(&body).await {
                w.samples.push(d);
            }
        }
        if tty && (round % 10 == 0 || round + 1 == requests) {
            eprint!("\r  round {}/{requests}", round + 1);
        }
    }
    if tty {
        eprint!("\r\x1b[K");
    }
    let runtime = server.emb.platform.runtime;
    server.stop().await?;

    let summaries: Vec<Option<Summary>> = ways
        .iter()
        .map(|w| {
            w.running().then(|| {
                let mut lat = w.samples.clone();
                Summary::from_latencies(&mut lat, 0, Duration::ZERO)
            })
        })
        .collect();
    let base = summaries[0].clone();
    let ratio = |x: Duration, b: Duration| x.as_secs_f64() / b.as_secs_f64().max(1e-9);
    if json {
        let rows: Vec<serde_json::Value> = ways
            .iter()
            .zip(&summaries)
            .map(|(w, s)| {
                let mut v = serde_json::json!({ "way": w.name });
                match (&w.outcome, s) {
                    (Outcome::Running, Some(s)) => {
                        v["runs"] = s.requests.into();
                        v["p50_us"] = us(s.p50).into();
                        v["p99_us"] = us(s.p99).into();
                        v["mean_us"] = us(s.mean).into();
                        if let Some(b) = &base {
                            v["p50_ratio"] = ratio(s.p50, b.p50).into();
                            v["p99_ratio"] = ratio(s.p99, b.p99).into();
                            v["mean_ratio"] = ratio(s.mean, b.mean).into();
                        }
                        if w.name == "platform" {
                            v["start_modes"] =
                                serde_json::to_value(&w.start_modes).unwrap_or_default();
                        }
                    }
                    (Outcome::Skipped(why), _) => v["skipped"] = why.clone().into(),
                    _ => v["failed"] = why_failed(&w.outcome).into(),
                }
                v
            })
            .collect();
        outln!(
            "{}",
            serde_json::json!({
                "binary": shown, "requests": requests, "platform_start": start,
                "platform_runtime": runtime, "ways": rows,
            })
        );
    } else {
        outln!(
            "faas bench compare: {shown}, {requests} runs each way, interleaved; each run starts the \
             program, hands it one request over fd 3 and waits for the answer\n\
             (platform: deployed as a native function, start mode {start}, {runtime} runtime, over HTTP)\n"
        );
        outln!(
            "{:<9} {:>5} {:>11} {:>11} {:>11}   {:>8} {:>8} {:>8}",
            "WAY",
            "RUNS",
            "P50",
            "P99",
            "MEAN",
            "P50 ×",
            "P99 ×",
            "MEAN ×"
        );
        for (w, s) in ways.iter().zip(&summaries) {
            match (&w.outcome, s) {
                (Outcome::Running, Some(s)) => {
                    let r = |x: Duration, b: fn(&Summary) -> Duration| {
                        base.as_ref()
                            .map_or("-".to_owned(), |bs| format!("{:.2}", ratio(x, b(bs))))
                    };
                    outln!(
                        "{:<9} {:>5} {:>11} {:>11} {:>11}   {:>8} {:>8} {:>8}",
                        w.name,
                        s.requests,
                        fmt_ms(s.p50),
                        fmt_ms(s.p99),
                        fmt_ms(s.mean),
                        r(s.p50, |b| b.p50),
                        r(s.p99, |b| b.p99),
                        r(s.mean, |b| b.mean),
                    );
                }
                (Outcome::Skipped(why), _) => outln!("{:<9} skipped: {why}", w.name),
                _ => outln!("{:<9} FAILED: {}", w.name, why_failed(&w.outcome)),
            }
        }
        outln!(
            "\n× = the way's time divided by the platform's (below 1: faster than the platform)"
        );
    }
    let failed: Vec<&str> = ways
        .iter()
        .filter(|w| matches!(w.outcome, Outcome::Failed(_)))
        .map(|w| w.name)
        .collect();
    if !failed.is_empty() {
        let hint = if binary.is_some() {
            "; --binary must be a static executable built on faas-guest"
        } else {
            ""
        };
        bail!("compare: {} failed (see above{hint})", failed.join(", "));
    }
    Ok(())
}

fn why_failed(o: &Outcome) -> String {
    match o {
        Outcome::Failed(why) | Outcome::Skipped(why) => why.clone(),
        Outcome::Running => "no run succeeded".to_owned(),
    }
}
