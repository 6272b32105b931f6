//! `faas sandbox run` end to end, the real binary, both ways a command
//! runs: set up by the command itself (`--no-daemon`) and handed to a
//! running `faas sandbox serve`. Either way stdio passes through, the exit
//! status is the command's (128+signal when killed), and a limit that
//! ended it is one line on stderr. And the daemon: a client that goes away
//! takes its sandbox with it; a hostile client gets an error and harms
//! nothing; a stale socket is replaced, a live one is not taken over.
//! Needs root (CI runs as root); the root is the host's `/`, read-only.
//! Shell commands that fork run with the `python` seccomp profile (the
//! default, `native`, is for one static program: no fork).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAAS: &str = env!("CARGO_BIN_EXE_faas");

/// A `faas sandbox serve` on its own socket, stopped with SIGTERM on drop.
struct Daemon {
    child: Option<Child>,
    err: Option<BufReader<ChildStderr>>,
    socket: PathBuf,
    dir: Option<tempfile::TempDir>,
}

impl Daemon {
    fn start() -> Daemon {
        let dir = tempfile::tempdir().expect("tempdir");
        Daemon::start_at(dir.path().join("sandbox.sock"), dir)
    }

    /// Starts one on `socket` and waits until it serves.
    fn start_at(socket: PathBuf, dir: tempfile::TempDir) -> Daemon {
        let mut child = Command::new(FAAS)
            .args(["sandbox", "serve", "--parked", "2", "--socket"])
            .arg(&socket)
            .stderr(Stdio::piped())
            .spawn()
            .expect("start faas sandbox serve");
        let mut err = BufReader::new(child.stderr.take().expect("stderr"));
        // Its first lines may be warnings (a dead runtime's leftovers).
        let mut seen = String::new();
        while !seen.contains("serving on") {
            let mut line = String::new();
            assert!(err.read_line(&mut line).expect("read") > 0, "{seen}");
            seen += &line;
        }
        Daemon {
            child: Some(child),
            err: Some(err),
            socket,
            dir: Some(dir),
        }
    }

    /// Stops it; returns the rest of what it printed.
    fn stop(mut self) -> String {
        let mut child = self.child.take().expect("running");
        stop(&mut child);
        let mut rest = String::new();
        self.err
            .take()
            .expect("stderr")
            .read_to_string(&mut rest)
            .expect("read");
        rest
    }
}

fn stop(child: &mut Child) {
    let pid = rustix::process::Pid::from_child(child);
    rustix::process::kill_process(pid, rustix::process::Signal::TERM).expect("SIGTERM");
    let status = child.wait().expect("wait");
    assert!(status.success(), "the daemon ended with {status}");
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(c) = &mut self.child {
            stop(c);
        }
    }
}

/// How a command is run: by itself, or through `daemon`'s socket; from
/// `/usr/bin` (relative paths are the caller's).
fn run(daemon: Option<&Path>, args: &[&str], stdin: &[u8]) -> Output {
    let mut cmd = Command::new(FAAS);
    cmd.args(["sandbox", "run"]).current_dir("/usr/bin");
    match daemon {
        Some(s) => cmd.env("FAAS_SANDBOX_SOCKET", s),
        // A socket no daemon serves: the command sets its sandbox up.
        None => cmd.env("FAAS_SANDBOX_SOCKET", "/nonexistent/faas-sandbox.sock"),
    };
    let mut child = cmd
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faas");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(stdin)
        .expect("write stdin");
    child.wait_with_output().expect("wait")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The same checks, once without and once through a daemon.
fn both_ways(check: impl Fn(Option<&Path>)) {
    check(None);
    let d = Daemon::start();
    check(Some(&d.socket));
    // Again, now that sandboxes of these kinds are parked.
    check(Some(&d.socket));
    let log = d.stop();
    assert!(
        !log.contains("stopped after 0 commands"),
        "the daemon ran none of them: {log}"
    );
}

#[test]
fn stdio_passes_through_and_the_status_is_the_commands() {
    both_ways(|d| {
        let out = run(
            d,
            &[
                "--",
                "sh",
                "-c",
                "read x; echo \"got $x\"; echo oops >&2; exit 7",
            ],
            b"hi\n",
        );
        assert_eq!(out.status.code(), Some(7), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "got hi\n");
        assert_eq!(text(&out.stderr), "oops\n");

        let out = run(
            d,
            &[
                "--env",
                "GREETING=hey",
                "--seccomp",
                "python",
                "--",
                "sh",
                "-c",
                "echo $GREETING $HOME; id -u",
            ],
            b"",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "hey /tmp\n0\n");

        // Arguments arrive as given; a relative root is the caller's.
        let out = run(
            d,
            &[
                "--root", "../..", "--", "printf", "[%s]", "a b", "", "ü", "--x",
            ],
            b"",
        );
        assert!(out.status.success(), "{}", text(&out.stderr));
        assert_eq!(text(&out.stdout), "[a b][][ü][--x]");
        // (Killed by a signal, 128 + its number: the limits test.)
    });
}

#[test]
fn a_limit_that_ended_the_command_is_one_line_on_stderr() {
    both_ways(|d| {
        let out = run(
            d,
            &[
                "--memory",
                "32",
                "--seccomp",
                "python",
                "--",
                "python3",
                "-c",
                "x = bytearray(256 << 20); print(len(x))",
            ],
            b"",
        );
        assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr),
            "faas: memory limit of 32 MiB exceeded (OOM-killed)\n"
        );

        let t = Instant::now();
        let out = run(
            d,
            &[
                "--timeout",
                "0.3",
                "--seccomp",
                "python",
                "--",
                "sh",
                "-c",
                "sleep 20 & sleep 20",
            ],
            b"",
        );
        assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
        assert_eq!(out.status.code(), Some(137), "{}", text(&out.stderr));
        assert_eq!(
            text(&out.stderr),
            "faas: timeout of 0.3 s reached: every process in the sandbox was killed\n"
        );

        let out = run(
            d,
            &[
                "--pids",
                "4",
                "--seccomp",
                "python",
                "--",
                "sh",
                "-c",
                "for i in 1 2 3 4 5 6 7 8; do sleep 1 & done 2>/dev/null; wait",
            ],
            b"",
        );
        let err = text(&out.stderr);
        assert!(err.ends_with("faas: process limit of 4 reached\n"), "{err}");
    });
}

/// Processes whose command line contains `marker`.
fn processes_with(marker: &str) -> usize {
    std::fs::read_dir("/proc")
        .expect("/proc")
        .filter_map(|e| {
            let e = e.ok()?;
            e.file_name().to_str()?.parse::<u32>().ok()?;
            std::fs::read(e.path().join("cmdline")).ok()
        })
        .filter(|c| text(c).contains(marker))
        .count()
}

#[test]
fn a_client_that_goes_away_takes_its_sandbox_with_it() {
    let d = Daemon::start();
    let marker = format!("{}.{}", 30, std::process::id());
    let mut client = Command::new(FAAS)
        .args(["sandbox", "run", "--", "sleep", &marker])
        .env("FAAS_SANDBOX_SOCKET", &d.socket)
        .spawn()
        .expect("run");
    let deadline = Instant::now() + Duration::from_secs(10);
    // The client itself carries the marker too.
    while processes_with(&marker) < 2 {
        assert!(Instant::now() < deadline, "the command never started");
        std::thread::sleep(Duration::from_millis(10));
    }
    client.kill().expect("kill the client");
    client.wait().expect("wait");
    while processes_with(&marker) > 0 {
        assert!(Instant::now() < deadline, "the sandbox outlived its client");
        std::thread::sleep(Duration::from_millis(10));
    }
    // The daemon is still there for the next one.
    let out = run(Some(&d.socket), &["--", "true"], b"");
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Sends one datagram to the daemon (with `fds` attached) and returns its
/// answer.
fn raw_request(socket: &Path, data: &[u8], fds: &[std::os::fd::BorrowedFd<'_>]) -> Vec<u8> {
    use rustix::net::{
        AddressFamily, SendAncillaryBuffer, SendAncillaryMessage, SendFlags, SocketAddrUnix,
        SocketFlags, SocketType,
    };
    let s = rustix::net::socket_with(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .expect("socket");
    rustix::net::connect(&s, &SocketAddrUnix::new(socket).expect("addr")).expect("connect");
    let mut space = [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(8))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    rustix::net::sendmsg(
        &s,
        &[std::io::IoSlice::new(data)],
        &mut control,
        SendFlags::NOSIGNAL,
    )
    .expect("send");
    let mut buf = [0u8; 4096];
    let (n, _) =
        rustix::net::recv(&s, &mut buf[..], rustix::net::RecvFlags::empty()).expect("recv");
    buf[..n].to_vec()
}

/// A request as the client sends it: the tag, the working directory, the
/// arguments after `run`, each ended by a NUL.
fn request(cwd: &str, args: &[&str]) -> Vec<u8> {
    let mut r = b"faas-run 1\0".to_vec();
    for s in std::iter::once(&cwd).chain(args) {
        r.extend(s.as_bytes());
        r.push(0);
    }
    r
}

#[test]
fn a_hostile_client_gets_an_error_and_harms_nothing() {
    use std::os::fd::AsFd;
    let d = Daemon::start();
    let null = std::fs::File::open("/dev/null").expect("/dev/null");
    let n = null.as_fd();
    let three = [n, n, n];
    let ok_request = request("/", &["--memory", "64", "--", "true"]);
    let mut unterminated = ok_request.clone();
    unterminated.pop();
    for (data, fds, expect) in [
        (b"not a request".to_vec(), &three[..], "malformed request"),
        (unterminated, &three[..], "malformed request"),
        (ok_request.clone(), &three[..2], "exactly 3 fds"),
        (ok_request.clone(), &[n, n, n, n][..], "exactly 3 fds"),
        (
            request("relative/dir", &["--", "true"]),
            &three[..],
            "working directory relative/dir: not an absolute path",
        ),
        (
            request("/", &["--root", "no/such/root", "--", "true"]),
            &three[..],
            "root no/such/root: No such file",
        ),
        (
            request("/", &["--timeout=-1", "--", "true"]),
            &three[..],
            "not a positive number",
        ),
    ] {
        let answer = raw_request(&d.socket, &data, fds);
        assert!(
            answer.starts_with(b"X\x01\0\0\0") && text(&answer[5..]).contains(expect),
            "{expect}: {}",
            text(&answer)
        );
    }
    // Command lines `run` itself would refuse, or should set up itself,
    // go back to the client.
    for args in [&[][..], &["--help"], &["--no-daemon", "--", "true"]] {
        assert_eq!(raw_request(&d.socket, &request("/", args), &three), b"F");
    }
    // A well-formed one is served.
    assert_eq!(raw_request(&d.socket, &ok_request, &three), b"X\0\0\0\0");
    let out = run(Some(&d.socket), &["--", "echo", "still here"], b"");
    assert_eq!(text(&out.stdout), "still here\n");
}

#[test]
fn a_stale_socket_is_replaced_and_a_live_one_kept() {
    let d = Daemon::start();
    // A second daemon on the same socket refuses, in one line.
    let out = Command::new(FAAS)
        .args(["sandbox", "serve", "--socket"])
        .arg(&d.socket)
        .output()
        .expect("run");
    assert_eq!(out.status.code(), Some(1));
    let err = text(&out.stderr);
    assert!(
        err.contains("another sandbox daemon is serving there") && err.lines().count() == 1,
        "{err}"
    );
    // Killed without its clean-up, the daemon leaves its socket behind...
    let mut d = d;
    let mut child = d.child.take().expect("running");
    child.kill().expect("kill");
    child.wait().expect("wait");
    let socket = d.socket.clone();
    assert!(socket.exists());
    // ... which a command no longer uses (it sets its sandbox up itself)...
    let out = run(Some(&socket), &["--", "echo", "alone"], b"");
    assert_eq!(text(&out.stdout), "alone\n", "{}", text(&out.stderr));
    // ... and the next daemon replaces.
    let d2 = Daemon::start_at(socket, d.dir.take().expect("dir"));
    let out = run(Some(&d2.socket), &["--", "echo", "served"], b"");
    assert_eq!(text(&out.stdout), "served\n", "{}", text(&out.stderr));
    let log = d2.stop();
    assert!(log.contains("stopped after 1 commands"), "{log}");
}

#[test]
fn a_command_with_a_terminal_on_stdin_is_not_handed_to_the_daemon() {
    use rustix::pty::{OpenptFlags, grantpt, openpt, ptsname, unlockpt};
    let d = Daemon::start();
    // A process of the daemon could not read the caller's terminal (it is
    // not in the terminal's foreground process group): such a command
    // runs as the caller's child.
    let master = openpt(OpenptFlags::RDWR | OpenptFlags::NOCTTY).expect("openpt");
    grantpt(&master).expect("grantpt");
    unlockpt(&master).expect("unlockpt");
    let name = ptsname(&master, Vec::new()).expect("ptsname");
    let terminal = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(name.to_str().expect("pts path"))
        .expect("open the terminal");
    let out = Command::new(FAAS)
        .args(["sandbox", "run", "--seccomp", "python", "--"])
        .args(["sh", "-c", "test -t 0 && echo tty"])
        .env("FAAS_SANDBOX_SOCKET", &d.socket)
        .stdin(terminal)
        .output()
        .expect("run");
    assert!(out.status.success(), "{}", text(&out.stderr));
    assert_eq!(text(&out.stdout), "tty\n");
    let log = d.stop();
    assert!(log.contains("stopped after 0 commands"), "{log}");
}
