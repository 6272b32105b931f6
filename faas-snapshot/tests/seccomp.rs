//! A seccomp filter given at open is in force when the guest runs again.
#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::io::Read;

use faas_snapshot::{DumpOptions, RestoreIo, RestoreOptions, Snapshot, dump};

/// `struct sock_filter` bytes: code (u16), jt, jf (u8), k (u32).
fn insn(code: u16, jt: u8, jf: u8, k: u32) -> [u8; 8] {
    let mut b = [0u8; 8];
    b[..2].copy_from_slice(&code.to_ne_bytes());
    b[2] = jt;
    b[3] = jf;
    b[4..].copy_from_slice(&k.to_ne_bytes());
    b
}

/// getppid fails with ENOSYS; everything else is allowed.
fn deny_getppid() -> Vec<u8> {
    const LD_W_ABS: u16 = 0x20;
    const JEQ_K: u16 = 0x15;
    const RET_K: u16 = 0x06;
    const SYS_GETPPID: u32 = 110;
    const RET_ERRNO_ENOSYS: u32 = 0x0005_0000 | 38;
    const RET_ALLOW: u32 = 0x7fff_0000;
    [
        insn(LD_W_ABS, 0, 0, 0),
        insn(JEQ_K, 0, 1, SYS_GETPPID),
        insn(RET_K, 0, 0, RET_ERRNO_ENOSYS),
        insn(RET_K, 0, 0, RET_ALLOW),
    ]
    .concat()
}

fn restored_output(snapshot: &Snapshot) -> String {
    let (mut r, w) = std::io::pipe().expect("pipe");
    let mut child = snapshot
        .restore(RestoreIo {
            stdout: Some(w.into()),
            ..RestoreIo::default()
        })
        .expect("restore");
    let status = child.wait_blocking().expect("wait");
    let mut out = String::new();
    r.read_to_string(&mut out).expect("read");
    assert!(status.success(), "{status}: {out}");
    out
}

#[test]
fn the_restorer_installs_the_filter_before_the_guest_runs() {
    assert!(
        std::fs::read_to_string("/proc/self/status").is_ok_and(|s| s
            .lines()
            .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0"))),
        "faas-snapshot tests checkpoint with ptrace: run them as root"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    let mut cmd = std::process::Command::new("python3");
    cmd.args([
        "-c",
        "import os, signal\nos.closerange(3, 1 << 16)\nos.kill(os.getpid(), signal.SIGSTOP)\nprint('ppid', os.getppid())",
    ]);
    let child = common::spawn_stopped(&mut cmd);
    dump(child.id(), dir.path(), &DumpOptions { kill: true }).expect("dump");
    drop(child);

    let open = Snapshot::open(dir.path()).expect("open");
    let out = restored_output(&open);
    assert!(out.starts_with("ppid ") && !out.contains("-1"), "{out}");

    let filtered = Snapshot::open_with(
        dir.path(),
        &RestoreOptions {
            seccomp: vec![deny_getppid()],
            no_new_privs: true,
            ..RestoreOptions::default()
        },
    )
    .expect("open with a filter");
    // glibc's getppid cannot fail, so it returns the filter's -ENOSYS as is.
    assert_eq!(restored_output(&filtered).trim(), "ppid -38");

    let bad = Snapshot::open_with(
        dir.path(),
        &RestoreOptions {
            seccomp: vec![vec![0; 7]],
            no_new_privs: true,
            ..RestoreOptions::default()
        },
    );
    let err = bad.expect_err("a program that is not whole instructions");
    assert!(err.to_string().contains("seccomp program"), "{err}");
}
