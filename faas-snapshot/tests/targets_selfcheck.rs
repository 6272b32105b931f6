//! The test targets pass on their own: stopped and continued with SIGCONT,
//! with no snapshot in between, each prints only OK lines and exits 0. A
//! target that fails after a restore therefore points at the restore.

mod common;

use std::io::Write;
use std::process::Command;

use common::{assert_passed, open_fds, sigcont, spawn_stopped, target, thread_count, wait_output};

/// Spawns `cmd` until it stops, asserts that it holds only fds 0-2 and one
/// thread, continues it and asserts that it passed.
fn stop_continue_pass(what: &str, cmd: &mut Command, checks: &[&str]) -> String {
    let child = spawn_stopped(cmd);
    let pid = child.id();
    assert_eq!(open_fds(pid), [0, 1, 2], "{what}: fds at the stop");
    assert_eq!(thread_count(pid), 1, "{what}: threads at the stop");
    sigcont(pid);
    let (status, out) = wait_output(child);
    assert_passed(what, status, &out, checks);
    out
}

#[test]
fn regs_keeps_every_register_across_a_stop() {
    stop_continue_pass(
        "regs",
        &mut Command::new(target("regs")),
        &["gpr", "eflags", "stack", "fpu", "fsgs_base", "ymm", "zmm"],
    );
}

#[test]
fn checks_keeps_process_state_across_a_stop() {
    let mut data = tempfile::NamedTempFile::new().unwrap();
    let bytes: Vec<u8> = (0..3 * 4096 + 100u32).map(|i| (i * 7 + 3) as u8).collect();
    data.write_all(&bytes).unwrap();
    data.flush().unwrap();
    stop_continue_pass(
        "checks",
        Command::new(target("checks")).arg(data.path()),
        &[
            "tls",
            "rseq",
            "malloc_brk",
            "signal_handler",
            "signal_mask",
            "sigaltstack",
            "file_mapping",
            "file_mapping_backed",
            "static_counter",
            "heap_pattern",
            "vdso_clock",
        ],
    );
}

#[test]
fn stamp_reports_its_first_instruction_and_stays_isolated() {
    let out = stop_continue_pass("stamp", &mut Command::new(target("stamp")), &["isolation"]);
    for key in ["first_instruction_ns=", "private_dirty_kb="] {
        let value = out
            .lines()
            .find_map(|l| l.strip_prefix(key))
            .unwrap_or_else(|| panic!("stamp printed no {key} line:\n{out}"));
        assert!(
            value.parse::<u64>().is_ok(),
            "stamp: {key}{value} is not a number"
        );
    }
}

#[test]
fn state_py_recomputes_the_same_digest_after_a_stop() {
    let out = stop_continue_pass(
        "state.py",
        Command::new("python3").arg(target("state.py")),
        &["python"],
    );
    let digest = out
        .lines()
        .find_map(|l| l.strip_prefix("OK python "))
        .unwrap_or_default();
    assert!(
        digest.len() == 64 && digest.bytes().all(|b| b.is_ascii_hexdigit()),
        "state.py: `{digest}` is not a sha256 digest"
    );
}

#[test]
fn negative_targets_stop_themselves() {
    for name in ["multithread", "extra_fd"] {
        let child = spawn_stopped(&mut Command::new(target(name)));
        let pid = child.id();
        let (fds, threads) = (open_fds(pid), thread_count(pid));
        sigcont(pid);
        let (status, out) = wait_output(child);
        assert_passed(name, status, &out, &[name]);
        if name == "multithread" {
            assert_eq!(
                (fds, threads),
                (vec![0, 1, 2], 3),
                "multithread at the stop"
            );
        } else {
            assert_eq!(
                (fds, threads),
                (vec![0, 1, 2, 5, 7], 1),
                "extra_fd at the stop"
            );
        }
    }
}
