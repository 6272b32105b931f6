//! Checkpoint and restore through the library API: every test target is
//! dumped at its stop, killed, and restored from the snapshot; the restored
//! process must pass all of the target's checks (see `tests/targets/`).
//! One snapshot restores many times, one after another and 50 at once,
//! without the instances seeing each other's writes and without changing
//! the snapshot. Needs root (CI runs as root).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::fd::OwnedFd;
use std::os::unix::process::ExitStatusExt as _;
use std::path::Path;
use std::process::Command;
use std::thread::JoinHandle;
use std::time::Duration;

use faas_core::{ExitStatus, RestoreSpec, Snapshotter as _, Stdio};
use faas_snapshot::{DumpOptions, PtraceSnapshotter, RestoreIo, Restored, Snapshot, dump};

use common::{
    CHECKS, EXIT_TIMEOUT, REGS, Watchdog, assert_passed, assert_root, checkpoint_killed, data_file,
    file_hash, read_all, read_pipe, sigcont, spawn_stopped, std_status, target, wait_output,
    wait_stopped, watchdog,
};

/// A restored process whose stdout and stderr are being read.
struct Running {
    restored: Restored,
    dog: Watchdog,
    stdout: JoinHandle<String>,
    stderr: JoinHandle<String>,
}

/// What a restored process did.
struct Finished {
    pid: u32,
    status: ExitStatus,
    out: String,
    err: String,
}

fn dev_null() -> OwnedFd {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null")
        .into()
}

/// Restores `snap` with stdin `/dev/null` and stdout and stderr pipes.
fn start(snap: &Snapshot) -> Running {
    let (out_r, out_w) = std::io::pipe().expect("pipe");
    let (err_r, err_w) = std::io::pipe().expect("pipe");
    let restored = snap
        .restore(RestoreIo {
            stdin: Some(dev_null()),
            stdout: Some(out_w.into()),
            stderr: Some(err_w.into()),
            channel: None,
            inherit_stdio: false,
        })
        .unwrap_or_else(|e| panic!("restore {}: {e}", snap.dir().display()));
    let dog = watchdog(restored.pid(), EXIT_TIMEOUT);
    Running {
        restored,
        dog,
        stdout: read_pipe(out_r),
        stderr: read_pipe(err_r),
    }
}

/// Waits for a [`start`]ed process (killed after [`EXIT_TIMEOUT`]) and
/// collects its output.
fn finish(mut r: Running) -> Finished {
    let pid = r.restored.pid();
    let status = r
        .restored
        .wait_blocking()
        .expect("wait for the restored process");
    let out = r.stdout.join().expect("stdout reader");
    let err = r.stderr.join().expect("stderr reader");
    assert!(
        !r.dog.fired(),
        "restored pid {pid} did not exit within {EXIT_TIMEOUT:?}; killed; stdout:\n{out}\nstderr:\n{err}"
    );
    Finished {
        pid,
        status,
        out,
        err,
    }
}

/// Restores once and asserts that the target passed `checks`; its stdout.
fn restore_passes(what: &str, snap: &Snapshot, checks: &[&str]) -> String {
    let f = finish(start(snap));
    assert_passed(
        &format!("{what} (restored pid {}; stderr: {:?})", f.pid, f.err),
        std_status(f.status),
        &f.out,
        checks,
    );
    f.out
}

fn open(dir: &Path) -> Snapshot {
    Snapshot::open(dir).unwrap_or_else(|e| panic!("open {}: {e}", dir.display()))
}

#[test]
fn regs_restores_every_register() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("regs");
    checkpoint_killed("regs", &mut Command::new(target("regs")), &dir);
    let out = restore_passes("regs", &open(&dir), REGS);
    // Only zmm may be skipped, and only on a CPU without AVX-512F.
    let avx512 = std::fs::read_to_string("/proc/cpuinfo")
        .unwrap_or_default()
        .split_whitespace()
        .any(|w| w == "avx512f");
    for check in REGS {
        let must = *check != "zmm" || avx512;
        assert!(
            !must || out.lines().any(|l| l == format!("OK {check}")),
            "regs restored: no `OK {check}` line (AVX-512F: {avx512}):\n{out}"
        );
    }
}

#[test]
fn checks_restores_process_state() {
    assert_root();
    let data = data_file(3 * 4096 + 100);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checks");
    checkpoint_killed(
        "checks",
        Command::new(target("checks")).arg(data.path()),
        &dir,
    );
    restore_passes("checks", &open(&dir), CHECKS);
}

#[test]
fn state_py_restores_to_the_digest_it_computes_when_merely_continued() {
    assert_root();
    let digest_of = |out: &str| {
        out.lines()
            .find_map(|l| l.strip_prefix("OK python "))
            .unwrap_or_else(|| panic!("state.py printed no `OK python` line:\n{out}"))
            .to_owned()
    };
    // The reference: stopped and continued, no snapshot.
    let child = spawn_stopped(Command::new("python3").arg(target("state.py")));
    sigcont(child.id());
    let (status, out) = wait_output(child);
    assert_passed("state.py continued", status, &out, &["python"]);
    let reference = digest_of(&out);

    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("py");
    checkpoint_killed(
        "state.py",
        Command::new("python3").arg(target("state.py")),
        &dir,
    );
    let out = restore_passes("state.py", &open(&dir), &["python"]);
    assert_eq!(
        digest_of(&out),
        reference,
        "state.py restored computes another digest than when continued"
    );
}

#[test]
fn stamp_restores_isolated() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    checkpoint_killed("stamp", &mut Command::new(target("stamp")), &dir);
    let out = restore_passes("stamp", &open(&dir), &["isolation"]);
    for key in ["first_instruction_ns=", "private_dirty_kb="] {
        assert!(
            out.lines()
                .filter_map(|l| l.strip_prefix(key))
                .any(|v| v.parse::<u64>().is_ok()),
            "stamp restored printed no numeric {key} line:\n{out}"
        );
    }
}

#[test]
fn one_snapshot_restores_three_times_in_a_row() {
    assert_root();
    let data = data_file(2 * 4096 + 7);
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checks");
    checkpoint_killed(
        "checks",
        Command::new(target("checks")).arg(data.path()),
        &dir,
    );
    let snap = open(&dir);
    for i in 1..=3 {
        restore_passes(&format!("checks, restore {i} of 3"), &snap, CHECKS);
    }
}

#[test]
fn fifty_concurrent_restores_of_one_snapshot_are_isolated_and_leave_it_unchanged() {
    const N: usize = 50;
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    checkpoint_killed("stamp", &mut Command::new(target("stamp")), &dir);
    let (pages, meta) = (dir.join("pages.img"), dir.join("snapshot.meta"));
    let before = (file_hash(&pages), file_hash(&meta));

    let snap = open(&dir);
    let running: Vec<Running> = (0..N).map(|_| start(&snap)).collect();
    let finished: Vec<Finished> = running.into_iter().map(finish).collect();
    let mut pids: Vec<u32> = finished.iter().map(|f| f.pid).collect();
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(
        pids.len(),
        N,
        "{N} restores gave {} distinct pids",
        pids.len()
    );
    for (i, f) in finished.iter().enumerate() {
        assert_passed(
            &format!(
                "stamp, concurrent restore {i} of {N} (pid {}; stderr: {:?})",
                f.pid, f.err
            ),
            std_status(f.status),
            &f.out,
            &["isolation"],
        );
    }
    drop(snap);
    assert!(
        (file_hash(&pages), file_hash(&meta)) == before,
        "{N} restores changed the snapshot's files"
    );
    // And it still restores.
    restore_passes("stamp after 50 restores", &open(&dir), &["isolation"]);
}

#[test]
fn dump_without_kill_leaves_the_process_stopped_and_dumpable_again() {
    // PTRACE_DETACH wakes the tracee, which goes straight back into its
    // group stop (running no code of its own): allow it a moment.
    const RESTOP: Duration = Duration::from_secs(2);
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let (first, second) = (tmp.path().join("first"), tmp.path().join("second"));
    let mut child = spawn_stopped(&mut Command::new(target("stamp")));
    let pid = child.id();
    let opts = DumpOptions { kill: false };
    let mut stopped = Vec::new();
    let result = dump(pid, &first, &opts).and_then(|_| {
        stopped.push(wait_stopped(pid, RESTOP));
        dump(pid, &second, &opts)
    });
    stopped.push(wait_stopped(pid, RESTOP));
    let _ = child.kill();
    let status = child.wait().expect("reap the target");
    let out = read_all(&mut child);
    if let Err(e) = result {
        panic!("dump without kill of pid {pid}: {e}");
    }
    assert_eq!(
        stopped,
        [true, true],
        "pid {pid} stopped again after the first and the second dump"
    );
    assert_eq!(
        status.signal(),
        Some(9),
        "pid {pid} should have stayed stopped until killed; it exited with {status}"
    );
    assert_eq!(out, "", "pid {pid} ran past its stop between the dumps");
    for dir in [&first, &second] {
        restore_passes(
            &format!("stamp from {}", dir.display()),
            &open(dir),
            &["isolation"],
        );
    }
}

#[test]
fn ptrace_snapshotter_checkpoints_and_restores() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    let mut child = spawn_stopped(&mut Command::new(target("stamp")));
    let pid = child.id();
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
        .expect("tokio runtime");
    let snapshotter = PtraceSnapshotter::new();
    let info = rt.block_on(snapshotter.checkpoint(pid, &dir));
    let _ = child.kill();
    let _ = child.wait();
    let info = info.unwrap_or_else(|e| panic!("checkpoint pid {pid}: {e}"));
    assert_eq!(info.dir, dir);
    assert!(info.pages > 1024, "stamp's 4 MiB buffer: {info:?}");

    let (out_r, out_w) = std::io::pipe().expect("pipe");
    let stdout = read_pipe(out_r);
    let (ours, theirs) = std::os::unix::net::UnixStream::pair().expect("socketpair");
    let (status, dog) = rt.block_on(async {
        let mut instance = snapshotter
            .restore(
                &dir,
                RestoreSpec {
                    name: "stamp".into(),
                    channel: theirs.into(),
                    stdin: Stdio::Null,
                    stdout: Stdio::Fd(out_w.into()),
                    stderr: Stdio::Null,
                },
            )
            .await
            .unwrap_or_else(|e| panic!("restore {}: {e}", dir.display()));
        let dog = watchdog(instance.pid(), EXIT_TIMEOUT);
        (instance.wait().await.expect("wait for the instance"), dog)
    });
    drop(ours);
    let out = stdout.join().expect("stdout reader");
    assert!(
        !dog.fired(),
        "the instance did not exit within {EXIT_TIMEOUT:?}"
    );
    assert_eq!(status, ExitStatus::Code(0), "instance output:\n{out}");
    assert_passed(
        "stamp through PtraceSnapshotter",
        std_status(status),
        &out,
        &["isolation"],
    );
}

/// A process that never stopped itself, blocked in `read(2)` when it is
/// interrupted: the checkpoint rewinds the interrupted syscall (-ERESTARTSYS
/// → re-execute), so the restored process reads again, from its new stdin.
#[test]
fn a_running_process_blocked_in_a_syscall_resumes_it_after_restore() {
    assert_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut child = Command::new("python3")
        .args([
            "-c",
            "import os, sys\n\
             os.closerange(3, 1 << 16)\n\
             data = os.read(0, 100)\n\
             os.write(1, b'got ' + data)\n",
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .spawn()
        .expect("spawn python3");
    let pid = child.id();
    // Wait until it sleeps in read(0): state S with the read syscall (0) in
    // /proc/PID/syscall.
    let deadline = std::time::Instant::now() + Duration::from_secs(10);
    loop {
        let sc = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        if sc.split_whitespace().next() == Some("0") && sc.split_whitespace().nth(1) == Some("0x0")
        {
            break;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "python3 never blocked in read(0): {sc}"
        );
        std::thread::sleep(Duration::from_millis(10));
    }
    dump(pid, dir.path(), &DumpOptions { kill: true }).expect("dump a running process");
    let _ = child.wait();

    let snap = Snapshot::open(dir.path()).expect("open");
    let (stdin_r, stdin_w) = std::io::pipe().expect("pipe");
    let (mut out_r, out_w) = std::io::pipe().expect("pipe");
    let mut restored = snap
        .restore(RestoreIo {
            stdin: Some(stdin_r.into()),
            stdout: Some(out_w.into()),
            ..RestoreIo::default()
        })
        .expect("restore");
    {
        use std::io::Write as _;
        let mut w = stdin_w;
        w.write_all(b"hello after restore").expect("write stdin");
    }
    let status = restored.wait_blocking().expect("wait");
    let mut out = String::new();
    std::io::Read::read_to_string(&mut out_r, &mut out).expect("read");
    assert!(status.success(), "{status}: {out}");
    assert_eq!(out, "got hello after restore");
}
