//! `faas snapshot dump|inspect|restore` end to end: the real binary
//! checkpoints a Python process that stopped itself with SIGSTOP, lists the
//! snapshot and restores it, and the restored process carries on where it
//! stopped (its output, its exit status); refusals are one line and a
//! non-zero exit. Needs root for ptrace (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::io::Read;
use std::os::unix::process::ExitStatusExt;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::thread;
use std::time::{Duration, Instant};

/// How long a target may take to stop itself.
const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a `faas` command may take.
const RUN_TIMEOUT: Duration = Duration::from_secs(30);

/// Builds a state before its stop and prints it (and that its pid changed)
/// after; exits 7. Closes every inherited fd above 2 first: a checkpoint
/// refuses them.
const TARGET: &str = r#"
import os, signal, sys
os.closerange(3, 1 << 16)
state = sum(i * i for i in range(1000))
before = os.getpid()
os.kill(before, signal.SIGSTOP)
sys.stdout.write(f"resumed {state} new_pid={os.getpid() != before}\n")
sys.stdout.flush()
os._exit(7)
"#;
const RESUMED: &str = "resumed 332833500 new_pid=True\n";

/// A second thread blocked on an event when it stops.
const THREADED: &str = r#"
import os, signal, threading
os.closerange(3, 1 << 16)
threading.Thread(target=threading.Event().wait, daemon=True).start()
os.kill(os.getpid(), signal.SIGSTOP)
print("continued")
"#;

fn assert_root() {
    let euid = fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned));
    assert_eq!(
        euid.as_deref(),
        Some("0"),
        "these tests need root (ptrace of the checkpointed process); CI runs as root"
    );
}

/// Whether every thread of `pid` is in a group stop (state `T`).
fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        any = true;
        let stat = fs::read_to_string(task.path().join("stat")).unwrap_or_default();
        let state = stat
            .rfind(')')
            .and_then(|i| stat[i + 1..].trim_start().chars().next());
        if state != Some('T') {
            return false;
        }
    }
    any
}

/// Runs `python3 -c code` until it has stopped itself.
fn spawn_stopped(code: &str) -> Child {
    let mut child = Command::new("python3")
        .args(["-c", code])
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run python3");
    let pid = child.id();
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            let mut err = String::new();
            let _ = child.stderr.take().unwrap().read_to_string(&mut err);
            panic!("python3 target (pid {pid}) exited ({status}) before stopping: {err}");
        }
        if all_stopped(pid) {
            return child;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("python3 target (pid {pid}) did not stop within {STOP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// What a command did.
struct Ran {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Runs `faas args`, killed after [`RUN_TIMEOUT`].
fn faas(args: &[&str]) -> Ran {
    let mut child = Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("run faas");
    let read = |mut r: Box<dyn Read + Send>| {
        thread::spawn(move || {
            let mut s = String::new();
            let _ = r.read_to_string(&mut s);
            s
        })
    };
    let out = read(Box::new(child.stdout.take().unwrap()));
    let err = read(Box::new(child.stderr.take().unwrap()));
    let deadline = Instant::now() + RUN_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().unwrap() {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("faas {args:?} did not finish within {RUN_TIMEOUT:?}; killed");
        }
        thread::sleep(Duration::from_millis(5));
    };
    Ran {
        status,
        stdout: out.join().unwrap(),
        stderr: err.join().unwrap(),
    }
}

fn ok(args: &[&str]) -> Ran {
    let ran = faas(args);
    assert!(
        ran.status.success(),
        "faas {args:?} failed ({}): {}",
        ran.status,
        ran.stderr
    );
    ran
}

/// Runs `faas args`, which must fail with a one-line error; the error.
fn fails_with_one_line(args: &[&str]) -> String {
    let ran = faas(args);
    assert!(
        !ran.status.success() && ran.status.code().is_some(),
        "faas {args:?} should fail with an exit code, not {}; stdout: {}",
        ran.status,
        ran.stdout
    );
    let err = ran.stderr.trim_end().to_owned();
    assert_eq!(err.lines().count(), 1, "faas {args:?}: one line: {err}");
    err
}

#[test]
fn dump_inspect_and_restore_a_stopped_python_process() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    let dir_s = dir.to_str().unwrap();
    let mut child = spawn_stopped(TARGET);
    let pid = child.id().to_string();

    let dumped = faas(&["snapshot", "dump", "--pid", &pid, "-o", dir_s, "--kill"]);
    let status = child.wait().unwrap();
    assert!(
        dumped.status.success(),
        "faas snapshot dump failed ({}): {}",
        dumped.status,
        dumped.stderr
    );
    assert!(
        dumped.stderr.contains(&pid) && dumped.stderr.contains(dir_s),
        "dump's summary names neither pid {pid} nor {dir_s}: {}",
        dumped.stderr
    );
    assert_eq!(status.signal(), Some(9), "dump --kill: the target {status}");
    let mut before = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut before)
        .unwrap();
    assert_eq!(before, "", "the target printed before its checkpoint");

    let inspected = ok(&["snapshot", "inspect", dir_s]).stdout;
    assert!(
        inspected.contains("areas") && inspected.contains("[stack]"),
        "inspect shows no areas:\n{inspected}"
    );
    assert!(
        inspected.contains(&pid),
        "inspect does not name process {pid}:\n{inspected}"
    );

    for round in 1..=2 {
        let restored = faas(&["snapshot", "restore", dir_s]);
        assert_eq!(
            (restored.status.code(), restored.stdout.as_str()),
            (Some(7), RESUMED),
            "restore {round}: stderr: {}",
            restored.stderr
        );
    }
}

#[test]
fn restore_of_a_missing_snapshot_fails_naming_it() {
    let err = fails_with_one_line(&["snapshot", "restore", "/nonexistent"]);
    assert!(err.contains("/nonexistent"), "{err}");
    let err = fails_with_one_line(&["snapshot", "inspect", "/nonexistent"]);
    assert!(err.contains("/nonexistent"), "{err}");
}

#[test]
fn dump_of_a_multithreaded_process_fails_naming_its_threads() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    let mut child = spawn_stopped(THREADED);
    let pid = child.id();
    let threads = fs::read_dir(format!("/proc/{pid}/task")).unwrap().count();
    let err = fails_with_one_line(&[
        "snapshot",
        "dump",
        "--pid",
        &pid.to_string(),
        "-o",
        dir.to_str().unwrap(),
        "--kill",
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert_eq!(threads, 2, "the target's threads at its stop");
    assert!(
        err.contains(&format!("{threads} threads")) && err.contains(&pid.to_string()),
        "{err}"
    );
    assert!(
        !dir.join("snapshot.meta").exists(),
        "a refused dump wrote a snapshot"
    );
}

#[test]
fn dump_of_a_missing_process_fails_naming_it() {
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = (pid_max + 1).to_string();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    let err = fails_with_one_line(&[
        "snapshot",
        "dump",
        "--pid",
        &pid,
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(
        err.contains(&pid) && err.contains("no such process"),
        "{err}"
    );
}

#[test]
fn dump_into_an_unusable_directory_fails_naming_it() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("snap");
    let mut child = spawn_stopped(TARGET);
    let pid = child.id().to_string();
    let ran = faas(&[
        "snapshot",
        "dump",
        "--pid",
        &pid,
        "-o",
        dir.to_str().unwrap(),
    ]);
    let _ = child.kill();
    let _ = child.wait();
    assert!(
        !ran.status.success(),
        "dump into {} succeeded",
        dir.display()
    );
    let err = ran.stderr.trim_end();
    assert_eq!(err.lines().count(), 1, "one line: {err}");
    assert!(
        err.contains(dir.to_str().unwrap()),
        "the error does not name {}: {err}",
        dir.display()
    );
}
