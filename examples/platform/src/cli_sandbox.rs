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
//! `--no-daemon`, or `--no-cgroups`, which the daemon does not offer) sets
//! the sandbox up itself. Either way the result is the same: the command's
//! stdio are the caller's own fds, its exit status becomes `run`'s, and a
//! limit that ended it is named on stderr.
//!
//! The daemon's protocol: one `SOCK_SEQPACKET` connection per command; the
//! client sends one datagram, a JSON [`RunRequest`] with its fds 0, 1 and 2
//! attached (`SCM_RIGHTS`); the daemon answers with one JSON [`RunReply`]
//! once the command has exited. A client that goes away before that (its
//! socket closes) has its sandbox killed. Only clients of the daemon's own
//! uid are served (`SO_PEERCRED`), and the socket is created mode 0600.

use std::ffi::OsString;
use std::io::{self, IoSlice, IoSliceMut};
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Parser, Subcommand};
use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec, StartMode, Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};
use rustix::io::Errno;
use rustix::net::{
    AddressFamily, RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags, ReturnFlags,
    SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix, SocketFlags, SocketType,
};
use serde::{Deserialize, Serialize};
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

#[derive(Args, Clone, Serialize, Deserialize)]
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
    #[serde(skip)]
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

/// What a command's sandbox ended with: the exit code `run` exits with
/// and the lines it prints on stderr (a limit hit, the timeout).
#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
enum RunReply {
    /// The command ran and ended.
    Exited { code: i32, notes: Vec<String> },
    /// It could not run.
    Failed { error: String },
}

/// The request a client sends: the command's [`RunArgs`] with the root
/// (and a profile file) made absolute by the client.
type RunRequest = RunArgs;

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
            let r = absolute(r)?;
            let stdio = [Stdio::Inherit, Stdio::Inherit, Stdio::Inherit];
            let (code, notes) = execute(&rt, r, stdio, std::future::pending()).await?;
            for n in notes {
                eprintln!("faas: {n}");
            }
            Ok(code)
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

/// Makes the paths of a request absolute, from the caller's directory.
fn absolute(mut r: RunArgs) -> anyhow::Result<RunArgs> {
    if let Some(p) = &r.root {
        r.root = Some(std::fs::canonicalize(p).with_context(|| format!("root {}", p.display()))?);
    }
    if !matches!(r.seccomp.as_str(), "native" | "python" | "node") {
        let p = Path::new(&r.seccomp);
        r.seccomp = std::fs::canonicalize(p)
            .with_context(|| format!("seccomp profile {}", p.display()))?
            .to_string_lossy()
            .into_owned();
    }
    Ok(r)
}

/// Runs one command in a sandbox of `rt` until it exits, its timeout, or
/// `gone` (the client went away: the sandbox is killed, an error
/// returned). The result is the exit code and the lines to print.
async fn execute(
    rt: &PooledSandboxRuntime,
    a: RunArgs,
    [stdin, stdout, stderr]: [Stdio; 3],
    gone: impl Future<Output = ()>,
) -> anyhow::Result<(i32, Vec<String>)> {
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
    Ok((code, notes))
}

fn socket_path() -> PathBuf {
    std::env::var_os("FAAS_SANDBOX_SOCKET")
        .filter(|s| !s.is_empty())
        .map_or_else(|| PathBuf::from(DEFAULT_SOCKET), PathBuf::from)
}

/// `faas sandbox run ...` through a running daemon, before the rest of the
/// binary starts (no async runtime, no logging set up: a command's cost
/// is mostly starting this process). `None` when the arguments are not
/// `sandbox run`, do not parse, ask for this process (`--no-daemon`,
/// `--no-cgroups`), or no daemon answers: then `main` goes on as usual.
pub(crate) fn run_through_daemon(args: &[OsString]) -> Option<i32> {
    if args.get(1).is_none_or(|a| a != "sandbox") || args.get(2).is_none_or(|a| a != "run") {
        return None;
    }
    #[derive(Parser)]
    struct Run {
        #[command(flatten)]
        run: RunArgs,
    }
    let r = Run::try_parse_from(&args[2..]).ok()?.run;
    if r.no_daemon || r.no_cgroups {
        return None;
    }
    let path = socket_path();
    let addr = SocketAddrUnix::new(&path).ok()?;
    let sock = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .ok()?;
    match rustix::net::connect(&sock, &addr) {
        Ok(()) => {}
        // No daemon (or a stale socket, or another user's): set it up here.
        Err(Errno::NOENT | Errno::CONNREFUSED | Errno::ACCESS | Errno::PERM) => return None,
        Err(e) => {
            eprintln!("faas: sandbox daemon at {}: connect: {e}", path.display());
            return Some(1);
        }
    }
    let r = match absolute(r) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("faas: {}", crate::error_line(&e));
            return Some(1);
        }
    };
    let Ok(request) = serde_json::to_vec(&r) else {
        return None;
    };
    if request.len() > MAX_REQUEST {
        // Too long to send: this process sets it up itself.
        return None;
    }
    let (stdin, stdout, stderr) = (io::stdin(), io::stdout(), io::stderr());
    let stdio = [stdin.as_fd(), stdout.as_fd(), stderr.as_fd()];
    if let Err(e) = send(sock.as_fd(), &request, &stdio) {
        // Nothing ran yet: this process can still do it itself.
        tracing::debug!(error = %e, "the sandbox daemon did not take the command");
        return None;
    }
    // The answer is a status and a few lines.
    let mut buf = [0u8; 4096];
    let reply = loop {
        match rustix::net::recv(&sock, &mut buf[..], RecvFlags::empty()) {
            Ok((n, _)) => break n,
            Err(Errno::INTR) => {}
            Err(e) => {
                eprintln!("faas: sandbox daemon at {}: {e}", path.display());
                return Some(1);
            }
        }
    };
    match serde_json::from_slice::<RunReply>(&buf[..reply]) {
        Ok(RunReply::Exited { code, notes }) => {
            for n in notes {
                eprintln!("faas: {n}");
            }
            Some(code)
        }
        Ok(RunReply::Failed { error }) => {
            eprintln!("faas: {error}");
            Some(1)
        }
        Err(_) if reply == 0 => {
            eprintln!(
                "faas: sandbox daemon at {} went away before the command ended",
                path.display()
            );
            Some(1)
        }
        Err(e) => {
            eprintln!(
                "faas: sandbox daemon at {}: unreadable answer: {e}",
                path.display()
            );
            Some(1)
        }
    }
}

/// Sends one datagram with `fds` attached.
fn send(sock: BorrowedFd<'_>, data: &[u8], fds: &[BorrowedFd<'_>]) -> io::Result<()> {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(3))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::ErrorKind::OutOfMemory.into());
    }
    loop {
        match rustix::net::sendmsg(
            sock,
            &[IoSlice::new(data)],
            &mut control,
            SendFlags::NOSIGNAL,
        ) {
            Ok(n) if n == data.len() => return Ok(()),
            Ok(_) => return Err(io::ErrorKind::WriteZero.into()),
            Err(Errno::INTR) => {}
            Err(e) => return Err(e.into()),
        }
    }
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
    eprintln!(
        "faas sandbox: stopped after {} commands",
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
    let reply = match take_request(&conn).await {
        Ok((req, stdio)) => {
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
                Ok((code, notes)) => RunReply::Exited { code, notes },
                Err(e) => RunReply::Failed {
                    error: crate::error_line(&e),
                },
            }
        }
        Err(e) => RunReply::Failed {
            error: crate::error_line(&e),
        },
    };
    let Ok(data) = serde_json::to_vec(&reply) else {
        return;
    };
    loop {
        let Ok(mut ready) = conn.writable().await else {
            return;
        };
        match send(conn.get_ref().as_fd(), &data, &[]) {
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => ready.clear_ready(),
            // Sent, or the client is gone: nothing more to do either way.
            _ => return,
        }
    }
}

/// Reads a client's request: checks who it is, the datagram, its fds.
async fn take_request(conn: &AsyncFd<OwnedFd>) -> anyhow::Result<(RunRequest, [Stdio; 3])> {
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
    let req: RunRequest = serde_json::from_slice(&buf[..len]).context("malformed request")?;
    if req.no_cgroups {
        bail!("the sandbox daemon always enforces cgroup limits (run with --no-daemon)");
    }
    if let Some(root) = &req.root
        && !root.is_absolute()
    {
        bail!("root {}: not an absolute path", root.display());
    }
    Ok((req, [Stdio::Fd(i), Stdio::Fd(o), Stdio::Fd(e)]))
}
