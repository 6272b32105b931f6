//! ForkTemplate: forks of a parked, restored instance are isolated guests.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Read;
use std::os::fd::OwnedFd;

use faas_snapshot::{DumpOptions, ForkTemplate, RestoreIo, Snapshot, dump};

fn require_root() {
    assert!(
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))),
        "faas-snapshot tests checkpoint with ptrace and restore with PR_SET_MM: run them as root"
    );
}

/// A pipe: (read end, write end).
fn pipe() -> (std::io::PipeReader, OwnedFd) {
    let (r, w) = std::io::pipe().expect("pipe");
    (r, w.into())
}

fn snapshot_of(target: &str, dir: &std::path::Path) -> Snapshot {
    let mut cmd = std::process::Command::new(common::target(target));
    let child = common::spawn_stopped(&mut cmd);
    dump(child.id(), dir, &DumpOptions { kill: true }).expect("dump");
    drop(child);
    Snapshot::open(dir).expect("open")
}

#[test]
fn forks_of_a_template_are_isolated_guests() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let snapshot = snapshot_of("stamp", dir.path());
    let template = ForkTemplate::new(&snapshot).expect("template");
    let mut running = Vec::new();
    for i in 0..8 {
        let (r, w) = pipe();
        let child = template
            .fork(
                RestoreIo {
                    stdout: Some(w),
                    ..RestoreIo::default()
                },
                i % 2 == 1,
            )
            .expect("fork");
        running.push((child, r));
    }
    let mut pids = std::collections::HashSet::new();
    for (mut child, mut r) in running {
        let status = child.wait_blocking().expect("wait");
        let mut out = String::new();
        r.read_to_string(&mut out).expect("read");
        assert!(status.success(), "fork exited with {status}: {out}");
        assert!(out.contains("OK isolation"), "{out}");
        assert!(pids.insert(child.pid()));
    }
    assert_ne!(template.pid(), 0);
}

#[test]
fn a_template_forks_a_python_process() {
    require_root();
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new("python3");
    cmd.arg(common::target("state.py"));
    let child = common::spawn_stopped(&mut cmd);
    dump(child.id(), dir.path(), &DumpOptions { kill: true }).expect("dump");
    drop(child);
    let snapshot = Snapshot::open(dir.path()).expect("open");
    let template = ForkTemplate::new(&snapshot).expect("template");
    for _ in 0..3 {
        let (mut r, w) = pipe();
        let mut child = template
            .fork(
                RestoreIo {
                    stdout: Some(w),
                    ..RestoreIo::default()
                },
                true,
            )
            .expect("fork");
        let status = child.wait_blocking().expect("wait");
        let mut out = String::new();
        r.read_to_string(&mut out).expect("read");
        assert!(
            status.success() && out.starts_with("OK python "),
            "{status}: {out}"
        );
    }
}
