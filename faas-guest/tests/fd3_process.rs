//! `serve` and `snapshot_point` in a real child process that gets its
//! channel as fd 3, the way a node gateway starts a function.
//!
//! The child is this test binary itself, re-executed (through `bash`, which
//! puts the socket on fd 3; POSIX `sh` only redirects fds 0-9) to run only [`guest_process_entry`] with
//! `FAAS_GUEST_TEST_ROLE` naming what it does.

// Test helpers outside #[test] fns: clippy.toml's test allowance does not
// reach them.
#![allow(clippy::unwrap_used)]

use std::io::Read;
use std::os::fd::{AsRawFd, OwnedFd};
use std::process::{Child, Command, Output, Stdio};
use std::sync::Mutex;
use std::time::Duration;

use faas_core::protocol::{Body, Channel, DecodeLimits, Frame};
use faas_core::{InvocationId, UnixMillis};
use faas_guest::{Request, Response};
use rustix::net::{AddressFamily, SocketFlags, SocketType, socketpair};

const ROLE: &str = "FAAS_GUEST_TEST_ROLE";

/// The child's side. Run directly (no role set) it does nothing.
#[test]
fn guest_process_entry() {
    let Ok(role) = std::env::var(ROLE) else {
        return;
    };
    let echo = |req: Request| {
        Response::ok(req.into_body()).header("x-pid", std::process::id().to_string())
    };
    match role.as_str() {
        "echo" => faas_guest::serve(echo),
        "snapshot" => {
            faas_guest::snapshot_point();
            faas_guest::serve(echo)
        }
        "panic" => faas_guest::serve(|_req: Request| -> Response { panic!("boom in a process") }),
        other => panic!("unknown role {other}"),
    }
}

/// Children inherit the socket because it is not close-on-exec while they
/// are spawned: one spawn at a time, so no other child keeps it open.
static SPAWN: Mutex<()> = Mutex::new(());

/// What to put on the child's fd 3.
enum Fd3 {
    /// Nothing: fd 3 closed.
    Closed,
    /// This socket.
    Socket(OwnedFd),
}

fn spawn(role: &str, fd3: Fd3, env: &[(&str, &str)]) -> Child {
    let _one_at_a_time = SPAWN.lock().unwrap_or_else(|e| e.into_inner());
    let script = match &fd3 {
        Fd3::Closed => "exec \"$0\" \"$@\" 3<&-".to_owned(),
        Fd3::Socket(s) if s.as_raw_fd() == 3 => "exec \"$0\" \"$@\"".to_owned(),
        Fd3::Socket(s) => {
            let n = s.as_raw_fd();
            format!("exec \"$0\" \"$@\" 3<&{n} {n}<&-")
        }
    };
    if let Fd3::Socket(s) = &fd3 {
        rustix::io::fcntl_setfd(s, rustix::io::FdFlags::empty()).unwrap();
    }
    let mut cmd = Command::new("bash");
    cmd.arg("-c")
        .arg(script)
        .arg(std::env::current_exe().unwrap())
        .args([
            "--exact",
            "guest_process_entry",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(ROLE, role)
        .env_remove("FAAS_REUSE")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped());
    for (k, v) in env {
        cmd.env(k, v);
    }
    let child = cmd.spawn().unwrap();
    drop(fd3); // the parent's copy of the child's end
    child
}

fn gateway(role: &str, env: &[(&str, &str)]) -> (Channel, Child) {
    let (gw, guest) = socketpair(
        AddressFamily::UNIX,
        SocketType::SEQPACKET,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let child = spawn(role, Fd3::Socket(guest), env);
    (Channel::new(gw, DecodeLimits::default()), child)
}

fn invoke(gw: &mut Channel, id: u64, body: &[u8]) {
    gw.send(&Frame::Invoke {
        id: InvocationId(id),
        deadline: UnixMillis::now().after(Duration::from_secs(30)),
        trace_id: String::new(),
        headers: Vec::new(),
        body: Body::new(body.to_vec()).unwrap(),
    })
    .unwrap();
}

fn expect_ready(gw: &mut Channel, snapshot: bool) {
    match gw.recv().unwrap() {
        Some(Frame::Ready { snapshot: s }) if s == snapshot => {}
        other => panic!("expected Ready {{ snapshot: {snapshot} }}, got {other:?}"),
    }
}

/// An echo's `Result`; `ready`: the flag saying the next request may come
/// at once (kept alive: no `Ready` follows).
fn expect_echo(gw: &mut Channel, id: u64, body: &[u8], pid: u32, ready: bool) {
    match gw.recv().unwrap() {
        Some(Frame::Result {
            id: got,
            status: 200,
            headers,
            body: got_body,
            ready: got_ready,
        }) => {
            assert_eq!(got, InvocationId(id));
            assert_eq!(got_ready, ready);
            assert_eq!(got_body.into_vec().unwrap(), body);
            assert_eq!(headers, vec![("x-pid".to_owned(), pid.to_string())]);
        }
        other => panic!("expected Result, got {other:?}"),
    }
}

fn finish(child: Child) -> (i32, String) {
    let Output { status, stderr, .. } = child.wait_with_output().unwrap();
    (
        status.code().unwrap_or(-1),
        String::from_utf8_lossy(&stderr).into_owned(),
    )
}

/// The lines the library printed (libtest prints nothing on stderr).
fn guest_lines(stderr: &str) -> Vec<&str> {
    stderr
        .lines()
        .filter(|l| l.starts_with("faas-guest:"))
        .collect()
}

#[test]
fn per_request_answers_one_request_and_exits_zero() {
    let (mut gw, child) = gateway("echo", &[]);
    let pid = child.id(); // `sh` exec'd the test binary: same pid
    expect_ready(&mut gw, false);
    invoke(&mut gw, 1, b"hello over fd 3");
    expect_echo(&mut gw, 1, b"hello over fd 3", pid, false);
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "stderr: {stderr}");
    assert!(
        gw.recv().unwrap().is_none(),
        "the channel closes with the process"
    );
}

#[test]
fn keep_alive_serves_until_the_gateway_closes_then_exits_zero() {
    let (mut gw, child) = gateway("echo", &[("FAAS_REUSE", "keep_alive")]);
    let pid = child.id();
    // One `Ready`, then each answer says the next request may come.
    expect_ready(&mut gw, false);
    for id in 1..=3 {
        invoke(&mut gw, id, format!("request {id}").as_bytes());
        expect_echo(&mut gw, id, format!("request {id}").as_bytes(), pid, true);
    }
    drop(gw);
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "stderr: {stderr}");
}

#[test]
fn snapshot_point_sends_snapshot_ready_and_serve_answers_the_pulled_request() {
    let (mut gw, child) = gateway("snapshot", &[]);
    let pid = child.id();
    expect_ready(&mut gw, true);
    invoke(&mut gw, 8, b"first after the snapshot point");
    expect_echo(&mut gw, 8, b"first after the snapshot point", pid, false);
    let (code, stderr) = finish(child);
    assert_eq!(code, 0, "stderr: {stderr}");
}

#[test]
fn missing_fd3_exits_70_with_one_clear_line() {
    let (code, stderr) = finish(spawn("echo", Fd3::Closed, &[]));
    assert_eq!(code, 70, "stderr: {stderr}");
    assert_eq!(
        guest_lines(&stderr),
        [
            "faas-guest: fd 3 is not the guest channel: fd 3 is not open (run this under a faas node gateway)"
        ]
    );
}

#[test]
fn stream_socket_on_fd3_exits_70() {
    let (_gw, guest) = socketpair(
        AddressFamily::UNIX,
        SocketType::STREAM,
        SocketFlags::CLOEXEC,
        None,
    )
    .unwrap();
    let (code, stderr) = finish(spawn("echo", Fd3::Socket(guest), &[]));
    assert_eq!(code, 70, "stderr: {stderr}");
    let lines = guest_lines(&stderr);
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(lines[0].contains("not SOCK_SEQPACKET"), "{stderr}");
}

#[test]
fn protocol_violation_by_the_gateway_exits_71() {
    let (mut gw, child) = gateway("echo", &[]);
    expect_ready(&mut gw, false);
    gw.send(&Frame::Ready { snapshot: false }).unwrap();
    let (code, stderr) = finish(child);
    assert_eq!(code, 71, "stderr: {stderr}");
    assert_eq!(
        guest_lines(&stderr),
        [
            "faas-guest: the gateway sent a Ready frame (invocation 0000000000000000) where a guest expects Invoke"
        ]
    );
}

#[test]
fn unknown_reuse_mode_exits_71() {
    let (_gw, child) = gateway("echo", &[("FAAS_REUSE", "forever")]);
    let (code, stderr) = finish(child);
    assert_eq!(code, 71, "stderr: {stderr}");
    assert_eq!(
        guest_lines(&stderr),
        ["faas-guest: FAAS_REUSE=\"forever\": expected per_request or keep_alive"]
    );
}

#[test]
fn handler_panic_is_an_error_frame_and_one_stderr_line() {
    let (mut gw, mut child) = gateway("panic", &[("RUST_BACKTRACE", "1")]);
    expect_ready(&mut gw, false);
    invoke(&mut gw, 3, b"");
    match gw.recv().unwrap() {
        Some(Frame::Error {
            id,
            status,
            message,
            ready: false,
        }) => {
            assert_eq!(id, InvocationId(3));
            assert_eq!(status, 500);
            assert_eq!(message, "boom in a process");
        }
        other => panic!("expected Error, got {other:?}"),
    }
    let mut stderr = String::new();
    let status = child.wait().unwrap();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(status.code(), Some(0), "stderr: {stderr}");
    // One line, no backtrace, no "note: run with RUST_BACKTRACE".
    let lines: Vec<&str> = stderr.lines().collect();
    assert_eq!(lines.len(), 1, "{stderr}");
    assert!(
        lines[0].starts_with("faas-guest: invocation 0000000000000003: handler panicked at ")
            && lines[0].ends_with(": boom in a process"),
        "{stderr}"
    );
}
