//! `faas sandbox run` and `faas sandbox serve`.
//!
//! `run` sets one sandbox up and runs a command in it. A sandbox set up on
//! the spot pays for everything a pool would have made ahead: a user and a
//! network namespace, cgroups and the move into them, the mounts.
//! `serve` is the same runtime kept alive: a daemon with sandboxes parked
//! per kind (root, limits, profile) that `run` hands its command and its
//! stdio to over a unix socket, so one command costs a hand-off and an exec.
//!
//! `run` uses the daemon when its socket (`$FAAS_SANDBOX_SOCKET`, default
//! [`DEFAULT_SOCKET`]) accepts a connection, and otherwise (or with
//! `--no-daemon`, or `--no-cgroups`, which the daemon does not offer, or
//! with a terminal on stdin, which a process of the daemon could not read:
//! it is not in the terminal's foreground process group) sets the sandbox
//! up itself. Either way the result is the same: the command's
//! stdio are the caller's own fds, its exit status becomes `run`'s, and a
//! limit that ended it is named on stderr.
//!
//! The client of the daemon is not here: it is `src/sys/early_client.c`,
//! which runs at the executable's entry point, before the C library and
//! the Rust runtime start (most of what a process start costs on a virtual
//! machine). It sends the daemon one `SOCK_SEQPACKET` datagram: a tag, its
//! working directory and its arguments after `run`, with its fds 0, 1 and 2
//! attached (`SCM_RIGHTS`). The daemon parses them as `run` would
//! ([`take_request`]) and answers once the command has exited ([`Answer`]),
//! or at once that the client should run the command line itself (one it
//! does not take: `--help`, a parse error). A client that goes away before
//! the answer (its socket closes) has its sandbox killed. Only clients of
//! the daemon's own uid are served (`SO_PEERCRED`), and the socket is
//! created mode 0600.

use std::ffi::OsStr;
use std::io::{self, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::OwnedFd;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, Instance, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec, StartMode,
    Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags, SendFlags,
    SocketAddrUnix, SocketFlags, SocketType,
};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

/// The daemon's socket when `$FAAS_SANDBOX_SOCKET` does not name one.
pub(crate) const DEFAULT_SOCKET: &str = "/run/faas/sandbox.sock";

/// Kinds of sandbox (root, limits, profile) the daemon keeps parked at
/// most; the least recently used kind gives its sandboxes up.
const PARKED_KINDS: usize = 32;

/// The largest request datagram (the command line and environment).
const MAX_REQUEST: usize = 64 * 1024;

/// `faas sandbox ...`
#[derive(Args)]
pub(crate) struct SandboxArgs {
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Run CMD inside a fresh sandbox; stdio passes through and the exit
    /// status is CMD's (128+signal when it was killed). Uses a running
    /// `faas sandbox serve` when there is one.
    Run(RunArgs),
    /// Keep sandboxes parked, ready for `faas sandbox run`: a daemon on a
    /// unix socket. Each command then costs a hand-off and an exec instead
    /// of setting a sandbox up.
    Serve(ServeArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Root: a directory (bound read-only) or an EROFS image file
    /// [default: the host's / read-only, without its /proc, /sys, /dev].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Process limit.
    #[arg(long, default_value_t = 64)]
    pids: u32,
    /// CPU limit in milli-CPUs.
    #[arg(long, default_value_t = 1000)]
    cpu: u32,
    /// Wall-clock limit in seconds; then every process inside is killed.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seccomp profile: native, python, node or a JSON file.
    #[arg(long, default_value = "native")]
    seccomp: String,
    /// Mount a procfs of the sandbox's own pid namespace at /proc.
    #[arg(long)]
    proc: bool,
    /// No cgroup: no memory, pids or CPU limit (like bubblewrap). Moving a
    /// process into a cgroup v1 memory cgroup costs an RCU grace period.
    /// Always runs in this process.
    #[arg(long, conflicts_with_all = ["memory", "pids", "cpu"])]
    no_cgroups: bool,
    /// Set the sandbox up in this process even when a `faas sandbox serve`
    /// is running.
    #[arg(long)]
    no_daemon: bool,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = crate::parse_env)]
    env: Vec<(String, String)>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

#[derive(Args)]
struct ServeArgs {
    /// The unix socket to serve on [default: $FAAS_SANDBOX_SOCKET, or
    /// /run/faas/sandbox.sock].
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Sandboxes kept parked per kind (root, limits, seccomp profile,
    /// /proc) once a command of that kind ran; for the 32 kinds used
    /// last.
    #[arg(long, default_value_t = 8)]
    parked: usize,
}

/// The first bytes of a request to the daemon: protocol and version.
const REQUEST_TAG: &[u8] = b"faas-run 1\0";

/// The daemon's answer to a request.
enum Answer {
    /// The client runs this command line itself (a parse error, `--help`,
    /// `--no-daemon`): `F`.
    RunItYourself,
    /// The command ended with `code`, or could not run (code 1), and
    /// `text` is what to print on stderr: `X`, the code as 4 bytes
    /// little-endian, the text.
    Exit { code: i32, text: String },
}

impl Answer {
    fn failed(e: &anyhow::Error) -> Answer {
        Answer::Exit {
            code: 1,
            text: format!("faas: {}\n", crate::error_line(e)),
        }
    }

    fn to_bytes(&self) -> Vec<u8> {
        match self {
            Answer::RunItYourself => b"F".to_vec(),
            Answer::Exit { code, text } => {
                let mut b = Vec::with_capacity(5 + text.len());
                b.push(b'X');
                b.extend(code.to_le_bytes());
                b.extend(text.as_bytes());
                b
            }
        }
    }
}

impl SandboxArgs {
    /// `faas sandbox serve` (a daemon: it runs on a current-thread runtime).
    pub(crate) fn is_serve(&self) -> bool {
        matches!(self.command, SandboxCommand::Serve(_))
    }
}

/// Runs `faas sandbox ...`; returns the exit code to exit with.
pub(crate) async fn run(a: SandboxArgs) -> anyhow::Result<i32> {
    match a.command {
        SandboxCommand::Run(r) => {
            let rt = PooledSandboxRuntime::new(SandboxConfig {
                // One sandbox: nothing to pool.
                netns_pool: 0,
                cgroup_pool: 0,
                parked: 0,
                keepers: 1,
                cgroups: !r.no_cgroups,
                hold_mount_namespaces: true,
                ..SandboxConfig::default()
            })?;
            let cwd = std::env::current_dir().context("the working directory")?;
            let r = absolute(r, &cwd)?;
            let stdio = [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit];
            let ended = execute(&rt, r, stdio, std::future::pending()).await?;
            for n in &ended.notes {
                eprintln!("faas: {n}");
            }
            Ok(ended.code)
        }
        SandboxCommand::Serve(s) => serve(s).await,
    }
}

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Resolves `cmd` like a shell would, inside `root`.
fn resolve(root: &Path, cmd: &str) -> anyhow::Result<PathBuf> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    for dir in PATH.split(':') {
        let p = Path::new(dir).join(cmd);
        if root.join(p.strip_prefix("/").unwrap_or(&p)).is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{cmd}: not found in {PATH} inside the root {}",
        root.display()
    )
}

/// Makes the paths of a command line absolute, from the caller's
/// directory `cwd`.
fn absolute(mut r: RunArgs, cwd: &Path) -> anyhow::Result<RunArgs> {
    if let Some(p) = &r.root {
        r.root = Some(
            std::fs::canonicalize(cwd.join(p)).with_context(|| format!("root {}", p.display()))?,
        );
    }
    if !matches!(r.seccomp.as_str(), "native" | "python" | "node") {
        let p = Path::new(&r.seccomp);
        r.seccomp = std::fs::canonicalize(cwd.join(p))
            .with_context(|| format!("seccomp profile {}", p.display()))?
            .to_string_lossy()
            .into_owned();
    }
    Ok(r)
}

/// How a command ended: the exit code, the lines to print, and its
/// sandbox, reaped, whose drop gives back what it held (after the answer:
/// giving back wakes other threads).
struct Ended {
    code: i32,
    notes: Vec<String>,
    sandbox: Box<dyn Instance>,
}

/// Runs one command in a sandbox of `rt` until it exits, its timeout, or
/// `gone` (the client went away: the sandbox is killed, an error
/// returned).
async fn execute(
    rt: &PooledSandboxRuntime,
    a: RunArgs,
    [stdin, stdout, stderr]: [Stdio; 3],
    gone: impl Future<Output = ()>,
) -> anyhow::Result<Ended> {
    let root = match &a.root {
        None => ImageRef::Dir("/".into()),
        Some(p) if p.is_dir() => ImageRef::Dir(p.clone()),
        Some(p) if p.is_file() => ImageRef::Image(p.clone()),
        Some(p) => bail!("root {}: no such directory or image file", p.display()),
    };
    let Some(cmd) = a.cmd.first() else {
        bail!("no command to run");
    };
    let program = resolve(root.path(), cmd)?;
    let (_ours, theirs) = channel_pair()?;
    let mut env = vec![
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), "/tmp".to_owned()),
    ];
    env.extend(a.env);
    let timeout = match a.timeout {
        Some(t) if !(t.is_finite() && t > 0.0) => bail!("timeout {t}: not a positive number"),
        Some(t) => Some(Duration::from_secs_f64(t)),
        None => None,
    };
    let spec = SandboxSpec {
        name: "sandbox-run".into(),
        root,
        program,
        args: a.cmd[1..].to_vec(),
        env,
        limits: Limits {
            memory_mb: a.memory,
            cpu_millis: a.cpu,
            pids: a.pids,
            timeout_ms: timeout.map_or(0, |t| t.as_millis() as u64),
        },
        start: StartMode::Cold,
        snapshot: None,
        policy: SandboxPolicy {
            seccomp: Some(a.seccomp),
            proc: a.proc,
            ..SandboxPolicy::default()
        },
        channel: theirs,
        stdin,
        stdout,
        stderr,
    };
    let mut inst = rt.launch(spec).await?;
    SERVED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    enum End {
        Exited(io::Result<ExitStatus>),
        Deadline,
        Gone,
    }
    let end = {
        let deadline = async {
            match timeout {
                Some(t) => tokio::time::sleep(t).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            s = inst.wait() => End::Exited(s),
            () = deadline => End::Deadline,
            () = gone => End::Gone,
        }
    };
    let mut notes = Vec::new();
    let status = match end {
        End::Exited(s) => s?,
        End::Deadline => {
            inst.kill()?;
            let s = inst.wait().await?;
            notes.push(format!(
                "timeout of {} s reached: every process in the sandbox was killed",
                a.timeout.unwrap_or_default()
            ));
            s
        }
        End::Gone => {
            inst.kill()?;
            inst.wait().await?;
            bail!("the client went away: its sandbox was killed");
        }
    };
    if let Some(limit) = inst.exceeded() {
        notes.push(limit.to_string());
    }
    let code = match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    };
    Ok(Ended {
        code,
        notes,
        sandbox: inst,
    })
}

fn socket_path() -> PathBuf {
    std::env::var_os("FAAS_SANDBOX_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// Binds the daemon's socket at `path` (mode 0600), replacing a stale one;
/// refuses when another daemon answers there.
fn bind(path: &Path) -> anyhow::Result<OwnedFd> {
    let addr = SocketAddrUnix::new(path).with_context(|| format!("socket {}", path.display()))?;
    let sock = || {
        rustix::net::socket_with(
            AddressFamily::UNIX,
            SocketType::SEQPACKET,
            SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            None,
        )
        .context("creating a unix socket")
    };
    if path.exists() {
        if rustix::net::connect(sock()?, &addr).is_ok() {
            bail!(
                "socket {}: another sandbox daemon is serving there",
                path.display()
            );
        }
        std::fs::remove_file(path).with_context(|| format!("removing stale {}", path.display()))?;
    }
    if let Some(dir) = path.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let fd = sock()?;
    // Created 0600 from the start: no moment where others could connect.
    let old = rustix::process::umask(rustix::fs::Mode::from_raw_mode(0o177));
    let bound = rustix::net::bind(&fd, &addr);
    rustix::process::umask(old);
    bound.with_context(|| format!("binding {}", path.display()))?;
    rustix::net::listen(&fd, 128).with_context(|| format!("listening on {}", path.display()))?;
    Ok(fd)
}

async fn serve(a: ServeArgs) -> anyhow::Result<i32> {
    let path = a.socket.unwrap_or_else(socket_path);
    let rt = Arc::new(PooledSandboxRuntime::new(SandboxConfig {
        parked: a.parked,
        // Commands may come with ever new roots and limits.
        parked_kinds: PARKED_KINDS,
        hold_mount_namespaces: true,
        ..SandboxConfig::default()
    })?);
    let listener = faas_gateway::register(bind(&path)?, Interest::READABLE)
        .context("registering the socket")?;
    eprintln!(
        "faas sandbox: serving on {} ({} sandboxes parked per kind)",
        path.display(),
        a.parked
    );
    let accept = async {
        loop {
            let mut ready = match listener.readable().await {
                Ok(r) => r,
                Err(e) => return anyhow::Error::from(e),
            };
            match rustix::net::accept_with(
                listener.get_ref(),
                SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
            ) {
                Ok(conn) => {
                    tokio::spawn(serve_one(rt.clone(), conn));
                }
                Err(Errno::AGAIN) => ready.clear_ready(),
                Err(Errno::INTR | Errno::CONNABORTED) => {}
                // Out of fds or memory: wait a moment rather than spin.
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
            }
        }
    };
    let end = tokio::select! {
        e = accept => Err(e),
        () = crate::shutdown_signal() => Ok(0),
    };
    drop(std::fs::remove_file(&path));
    let (mut parked, mut unpooled) = (0, 0);
    rt.counters(&mut |name, n| match name {
        "launch_parked" => parked = n,
        "launch_unpooled" => unpooled = n,
        _ => {}
    });
    eprintln!(
        "faas sandbox: stopped after {} commands ({parked} in sandboxes parked ahead, \
         {unpooled} set up on the spot)",
        SERVED.load(std::sync::atomic::Ordering::Relaxed)
    );
    end
}

/// Commands the daemon took (their sandbox was launched).
static SERVED: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);

/// One client: its request, its command, the answer.
async fn serve_one(rt: Arc<PooledSandboxRuntime>, conn: OwnedFd) {
    let Ok(conn) = faas_gateway::register(conn, Interest::READABLE | Interest::WRITABLE) else {
        return;
    };
    let mut sandbox = None;
    let answer = match take_request(&conn).await {
        Ok(Some((req, stdio))) => {
            let gone = async {
                // The client sends nothing more: what it can still send is
                // its hang-up (or a protocol violation: the same).
                loop {
                    let Ok(mut ready) = conn.readable().await else {
                        return;
                    };
                    match rustix::net::recv(
                        conn.get_ref(),
                        &mut [0u8; 1][..],
                        RecvFlags::PEEK | RecvFlags::DONTWAIT,
                    ) {
                        Err(Errno::AGAIN) => ready.clear_ready(),
                        Err(Errno::INTR) => {}
                        _ => return,
                    }
                }
            };
            match execute(&rt, req, stdio, gone).await {
                Ok(ended) => {
                    sandbox = Some(ended.sandbox);
                    Answer::Exit {
                        code: ended.code,
                        text: ended.notes.iter().map(|n| format!("faas: {n}\n")).collect(),
                    }
                }
                Err(e) => Answer::failed(&e),
            }
        }
        Ok(None) => Answer::RunItYourself,
        Err(e) => Answer::failed(&e),
    };
    let data = answer.to_bytes();
    loop {
        let Ok(mut ready) = conn.writable().await else {
            return;
        };
        match rustix::net::send(conn.get_ref(), &data, SendFlags::NOSIGNAL) {
            Err(Errno::AGAIN) => ready.clear_ready(),
            Err(Errno::INTR) => {}
            // Sent, or the client is gone: nothing more to do either way.
            _ => break,
        }
    }
    // Answered: now its sandbox gives back what it held.
    drop(sandbox);
}

/// Reads a client's request: checks who it is, the datagram, its fds, and
/// parses its command line as `faas sandbox run` would. `None`: one the
/// client should run itself.
async fn take_request(conn: &AsyncFd<OwnedFd>) -> anyhow::Result<Option<(RunArgs, [Stdio; 3])>> {
    let peer = rustix::net::sockopt::socket_peercred(conn.get_ref())
        .context("reading the client's credentials")?;
    let me = rustix::process::geteuid();
    if peer.uid != me {
        bail!(
            "uid {} may not use the sandbox daemon of uid {}",
            peer.uid.as_raw(),
            me.as_raw()
        );
    }
    let mut buf = vec![0u8; MAX_REQUEST + 1];
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(4))];
    let (len, fds) = loop {
        let mut ready = conn.readable().await.context("waiting for the request")?;
        let mut control = RecvAncillaryBuffer::new(&mut space);
        match rustix::net::recvmsg(
            conn.get_ref(),
            &mut [IoSliceMut::new(&mut buf)],
            &mut control,
            RecvFlags::CMSG_CLOEXEC,
        ) {
            Ok(m) => {
                let mut fds: Vec<OwnedFd> = Vec::new();
                for c in control.drain() {
                    if let RecvAncillaryMessage::ScmRights(rights) = c {
                        fds.extend(rights);
                    }
                }
                if m.flags.intersects(ReturnFlags::TRUNC | ReturnFlags::CTRUNC)
                    || m.bytes > MAX_REQUEST
                {
                    bail!("request larger than {MAX_REQUEST} bytes (or with too many fds)");
                }
                break (m.bytes, fds);
            }
            Err(Errno::AGAIN) => ready.clear_ready(),
            Err(Errno::INTR) => {}
            Err(e) => return Err(io::Error::from(e)).context("receiving the request"),
        }
    };
    let Ok::<[OwnedFd; 3], _>([i, o, e]) = fds.try_into() else {
        bail!("a request carries exactly 3 fds (stdin, stdout, stderr)");
    };
    let Some((cwd, args)) = split_request(&buf[..len]) else {
        bail!("malformed request (not a faas-run 1 datagram)");
    };
    let cwd = Path::new(cwd);
    if !cwd.is_absolute() {
        bail!("working directory {}: not an absolute path", cwd.display());
    }
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }
    let Ok(Run { run }) = Run::try_parse_from(std::iter::once(OsStr::new("run")).chain(args))
    else {
        return Ok(None);
    };
    if run.no_daemon || run.no_cgroups {
        return Ok(None);
    }
    Ok(Some((
        absolute(run, cwd)?,
        [Stdio::Fd(i), Stdio::Fd(o), Stdio::Fd(e)],
    )))
}

/// A request's working directory and arguments: after [`REQUEST_TAG`],
/// strings each ended by a NUL.
fn split_request(data: &[u8]) -> Option<(&OsStr, impl Iterator<Item = &OsStr>)> {
    let rest = data.strip_prefix(REQUEST_TAG)?.strip_suffix(b"\0")?;
    let mut strings = rest.split(|b| *b == 0).map(OsStr::from_bytes);
    Some((strings.next()?, strings))
}
