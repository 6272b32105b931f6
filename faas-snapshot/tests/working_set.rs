//! A snapshot's recorded working set (`workingset`): an instance restored
//! ahead of its request (`Snapshot::restore_parked`) has those pages
//! already private — copy-on-write broken, contents unchanged — before it
//! gets its fds; `record_working_set` finds the pages a live instance made
//! private; a damaged or out-of-range working-set file is refused with a
//! message naming it, and the snapshot still restores. The target is
//! `stamp` (see `tests/targets/`): a 4 MiB static buffer with a pattern,
//! which it checks page by page after the restore. A watched instance
//! that is killed stays its owner's to reap. Needs root.

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::fs::File;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::FileExt as _;
use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use faas_snapshot::{
    DumpOptions, RestoreIo, Restored, Snapshot, WORKING_SET_FILE, WorkingSet, dump,
    record_working_set,
};

use common::{
    EXIT_TIMEOUT, STOP_TIMEOUT, assert_passed, assert_root, read_pipe, spawn_stopped, std_status,
    target, watchdog,
};

const PAGE: u64 = 4096;

/// Checkpoints `stamp` into `dir` (killing it); the first 4 MiB of the
/// largest private writable area that is neither heap nor stack (its
/// buffer's), as (start, end), and where its code starts.
fn stamp_snapshot(dir: &Path) -> ((u64, u64), u64) {
    let mut child = spawn_stopped(&mut Command::new(target("stamp")));
    let pid = child.id();
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap();
    let area = maps
        .lines()
        .filter(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.get(1) == Some(&"rw-p") && !l.contains("[stack]") && !l.contains("[heap]")
        })
        .map(|l| {
            let (s, e) = l
                .split_whitespace()
                .next()
                .unwrap()
                .split_once('-')
                .unwrap();
            (
                u64::from_str_radix(s, 16).unwrap(),
                u64::from_str_radix(e, 16).unwrap(),
            )
        })
        .max_by_key(|(s, e)| e - s)
        .unwrap();
    let text = maps
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some("r-xp"))
        .and_then(|l| u64::from_str_radix(l.split('-').next()?, 16).ok())
        .unwrap();
    assert!(
        area.1 - area.0 >= 4 << 20,
        "stamp has no 4 MiB writable area:\n{maps}"
    );
    if let Err(e) = dump(pid, dir, &DumpOptions { kill: true }) {
        let _ = child.kill();
        panic!("dump of stamp (pid {pid}): {e}");
    }
    let _ = child.wait();
    // The buffer's 4 MiB from the start of its area (the break may follow
    // it in the same mapping).
    ((area.0, area.0 + (4 << 20)), text)
}

/// Pages of `[start, end)` of `pid` that are present and private
/// (anonymous: written since the restore, not the page file's).
fn private_pages(pid: u32, (start, end): (u64, u64)) -> u64 {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).unwrap();
    let n = ((end - start) / PAGE) as usize;
    let mut buf = vec![0u8; n * 8];
    pagemap.read_exact_at(&mut buf, start / PAGE * 8).unwrap();
    buf.chunks_exact(8)
        .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
        .filter(|e| e & (1 << 63) != 0 && e & (1 << 61) == 0)
        .count() as u64
}

/// Waits until the instance restored ahead has rebuilt `area` and blocks
/// for its fds (in `recvmsg`, after the pre-faulting).
fn wait_parked(pid: u32, area: (u64, u64)) {
    let deadline = Instant::now() + STOP_TIMEOUT;
    let mapped = format!("{:x}-", area.0);
    loop {
        let syscall = std::fs::read_to_string(format!("/proc/{pid}/syscall")).unwrap_or_default();
        let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
        let has_area = maps.lines().any(|l| {
            l.split_once('-').is_some_and(|(s, rest)| {
                let e = rest.split_whitespace().next().unwrap_or("");
                let (s, e) = (
                    u64::from_str_radix(s, 16).unwrap_or(u64::MAX),
                    u64::from_str_radix(e, 16).unwrap_or(0),
                );
                s <= area.0 && area.1 <= e
            })
        });
        if syscall.starts_with("47 ") && has_area {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "instance {pid} restored ahead did not park within {STOP_TIMEOUT:?} (syscall {syscall:?}, area {mapped})"
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

fn dev_null() -> OwnedFd {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .unwrap()
        .into()
}

/// Hands a parked instance its fds; it must pass stamp's `isolation`
/// check (every page of the buffer still holds the snapshot's pattern);
/// its stdout.
fn resume_passes(what: &str, mut restored: Restored, socket: &OwnedFd) -> String {
    let (out_r, out_w) = std::io::pipe().unwrap();
    let (err_r, err_w) = std::io::pipe().unwrap();
    let (null, out_w, err_w): (OwnedFd, OwnedFd, OwnedFd) =
        (dev_null(), out_w.into(), err_w.into());
    let null2 = dev_null();
    let dog = watchdog(restored.pid(), EXIT_TIMEOUT);
    Snapshot::resume_parked(
        socket,
        [null.as_fd(), out_w.as_fd(), err_w.as_fd(), null2.as_fd()],
    )
    .unwrap();
    drop((out_w, err_w));
    let (out, err) = (read_pipe(out_r), read_pipe(err_r));
    let status = restored.wait_blocking().unwrap();
    let (out, err) = (out.join().unwrap(), err.join().unwrap());
    assert!(!dog.fired(), "{what}: did not exit; stdout:\n{out}");
    assert_passed(
        &format!("{what} (stderr: {err:?})"),
        std_status(status),
        &out,
        &["isolation"],
    );
    out
}

fn private_dirty_kb(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("private_dirty_kb="))
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no private_dirty_kb line:\n{out}"))
}

#[test]
fn a_recorded_working_set_is_private_before_a_parked_instance_gets_its_fds() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    let (buf, _) = stamp_snapshot(&dir);
    let buf_pages = (buf.1 - buf.0) / PAGE;
    let snap = Snapshot::open(&dir).unwrap();
    assert_eq!(snap.working_set_pages(), 0);

    // Without a working set: the buffer is still the page file's, and the
    // recorder finds (almost) nothing of it.
    let (plain, socket) = snap.restore_parked().unwrap();
    wait_parked(plain.pid(), buf);
    let before = private_pages(plain.pid(), buf);
    assert!(
        before < 4,
        "{before} of {buf_pages} buffer pages private without a working set"
    );
    let recorded = record_working_set(plain.pid(), &dir).unwrap();
    let in_buf = |ws: &WorkingSet| -> u64 {
        ws.ranges()
            .iter()
            .map(|&(s, l)| (s + l).min(buf.1).saturating_sub(s.max(buf.0)) / PAGE)
            .sum()
    };
    assert!(in_buf(&recorded) < 4, "recorded {recorded:?}");
    // Watched to its end while it runs: stamp writes into every page of
    // its buffer, and all of them are recorded.
    let pid = plain.pid();
    let (attached_tx, attached) = std::sync::mpsc::channel();
    let dir2 = dir.clone();
    let watcher = std::thread::spawn(move || {
        faas_snapshot::working_set_at_exit(pid, &dir2, || attached_tx.send(()).unwrap())
    });
    attached.recv().expect("the recorder attached");
    let out = resume_passes("restored ahead, no working set", plain, &socket);
    assert!(private_dirty_kb(&out) < buf_pages * 4 / 2, "{out}");
    let recorded = watcher.join().unwrap().unwrap();
    assert_eq!(in_buf(&recorded), buf_pages, "recorded {recorded:?}");

    // The recorded working set: the snapshot opened before it was written
    // picks it up for its next instance restored ahead.
    recorded.write(&dir).unwrap();
    let (warm, socket) = snap.restore_parked().unwrap();
    assert_eq!(
        snap.working_set_pages(),
        recorded.pages(),
        "{:?}\n{}",
        snap.working_set_issues(),
        snap.describe()
    );
    assert!(snap.working_set_issues().is_empty());
    wait_parked(warm.pid(), buf);
    let private = private_pages(warm.pid(), buf);
    assert_eq!(
        private, buf_pages,
        "only {private} of {buf_pages} buffer pages private before the fds"
    );
    // The recorder sees them too.
    let live = record_working_set(warm.pid(), &dir).unwrap();
    assert_eq!(in_buf(&live), buf_pages, "recorded {live:?}");
    // Contents unchanged: stamp checks every page's pattern, and sees its
    // buffer already private before it writes anything.
    let out = resume_passes("restored ahead with the working set", warm, &socket);
    assert!(private_dirty_kb(&out) >= buf_pages * 4, "{out}");

    // A restore on a request's path does not pre-fault: the request path
    // is unchanged.
    let (out_r, out_w) = std::io::pipe().unwrap();
    let mut r = snap
        .restore(RestoreIo {
            stdin: Some(dev_null()),
            stdout: Some(out_w.into()),
            stderr: Some(dev_null()),
            channel: None,
            inherit_stdio: false,
        })
        .unwrap();
    let out = read_pipe(out_r);
    let status = r.wait_blocking().unwrap();
    let out = out.join().unwrap();
    assert_passed("plain restore", std_status(status), &out, &["isolation"]);
    assert!(private_dirty_kb(&out) < buf_pages * 4 / 2, "{out}");
}

#[test]
fn a_damaged_or_out_of_range_working_set_is_refused_and_the_snapshot_still_restores() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    let (buf, text) = stamp_snapshot(&dir);
    let file = dir.join(WORKING_SET_FILE);

    // Damaged: one byte of a valid file flipped.
    let mut bytes = WorkingSet::from_ranges(vec![(buf.0, buf.1 - buf.0)])
        .unwrap()
        .encode();
    let last = bytes.len() - 1;
    bytes[last] ^= 1;
    std::fs::write(&file, &bytes).unwrap();
    let err = WorkingSet::read(&dir).unwrap_err().to_string();
    assert!(
        err.contains(&file.display().to_string()) && err.contains("checksum"),
        "{err}"
    );
    let snap = Snapshot::open(&dir).unwrap();
    assert_eq!(snap.working_set_pages(), 0);
    let issues = snap.working_set_issues();
    assert!(
        issues.len() == 1 && issues[0].contains(&file.display().to_string()),
        "{issues:?}"
    );
    let (r, socket) = snap.restore_parked().unwrap();
    wait_parked(r.pid(), buf);
    assert!(private_pages(r.pid(), buf) < 4);
    resume_passes("restored ahead, damaged working set", r, &socket);

    // Out of range: a range where the snapshot has no memory and one in
    // its code (not writable) are dropped, the rest kept.
    WorkingSet::from_ranges(vec![(0x10000, PAGE), (text, PAGE), (buf.0, 16 * PAGE)])
        .unwrap()
        .write(&dir)
        .unwrap();
    let snap = Snapshot::open(&dir).unwrap();
    assert_eq!(snap.working_set_pages(), 16);
    let issues = snap.working_set_issues();
    assert_eq!(issues.len(), 2, "{issues:?}");
    for issue in &issues {
        assert!(
            issue.contains(&file.display().to_string()) && issue.contains("dropped"),
            "{issue}"
        );
    }
    let (r, socket) = snap.restore_parked().unwrap();
    wait_parked(r.pid(), buf);
    assert_eq!(private_pages(r.pid(), (buf.0, buf.0 + 16 * PAGE)), 16);
    resume_passes(
        "restored ahead, partly out-of-range working set",
        r,
        &socket,
    );

    // Missing: nothing to pre-fault, nothing to complain about.
    std::fs::remove_file(&file).unwrap();
    let snap = Snapshot::open(&dir).unwrap();
    assert_eq!(snap.working_set_pages(), 0);
    assert!(snap.working_set_issues().is_empty());
}

#[test]
fn an_instance_killed_while_watched_is_still_reaped_by_its_owner() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    let (buf, _) = stamp_snapshot(&dir);
    let snap = Snapshot::open(&dir).unwrap();
    let (mut r, _socket) = snap.restore_parked().unwrap();
    wait_parked(r.pid(), buf);
    let pid = r.pid();
    let (attached_tx, attached) = std::sync::mpsc::channel();
    let dir2 = dir.clone();
    let watcher = std::thread::spawn(move || {
        faas_snapshot::working_set_at_exit(pid, &dir2, || attached_tx.send(()).unwrap())
    });
    attached.recv().expect("the recorder attached");
    r.kill().unwrap();
    // Whether the kernel stops a killed process at its exit or not, the
    // watcher ends, writes nothing, and the owner reaps its process.
    let _ = watcher.join().unwrap();
    assert!(!dir.join(WORKING_SET_FILE).exists());
    assert_eq!(
        r.wait_blocking().unwrap(),
        faas_core::ExitStatus::Signal(libc::SIGKILL)
    );
}

/// Pages of `ranges` present in `pid`'s page tables.
fn present_pages(pid: u32, ranges: &[(u64, u64)]) -> u64 {
    let pagemap = File::open(format!("/proc/{pid}/pagemap")).unwrap();
    ranges
        .iter()
        .map(|&(start, len)| {
            let n = (len / PAGE) as usize;
            let mut buf = vec![0u8; n * 8];
            pagemap.read_exact_at(&mut buf, start / PAGE * 8).unwrap();
            buf.chunks_exact(8)
                .map(|e| u64::from_le_bytes(e.try_into().unwrap()))
                .filter(|e| e & (1 << 63) != 0)
                .count() as u64
        })
        .sum()
}

#[test]
fn the_pages_a_request_only_read_are_mapped_before_a_parked_instance_gets_its_fds() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("stamp");
    let (buf, _) = stamp_snapshot(&dir);
    let snap = Snapshot::open(&dir).unwrap();
    // Watch one instance restored ahead through its run: what it wrote and
    // what it only read (its code, its read-only data).
    let (plain, socket) = snap.restore_parked().unwrap();
    wait_parked(plain.pid(), buf);
    let pid = plain.pid();
    let (attached_tx, attached) = std::sync::mpsc::channel();
    let dir2 = dir.clone();
    let watcher = std::thread::spawn(move || {
        faas_snapshot::pages_at_exit(pid, &dir2, || attached_tx.send(()).unwrap())
    });
    attached.recv().expect("the recorder attached");
    resume_passes("restored ahead, recorded", plain, &socket);
    let (written, read) = watcher.join().unwrap().unwrap();
    assert!(read.pages() > 0, "no page was only read: {read:?}");
    faas_snapshot::write_both(&written, &read, &dir).unwrap();
    assert!(dir.join(faas_snapshot::READ_SET_FILE).is_file());

    // The next instance restored ahead has them mapped before its request,
    // and still runs right.
    let (warm, socket) = snap.restore_parked().unwrap();
    assert!(
        snap.working_set_issues().is_empty(),
        "{:?}",
        snap.working_set_issues()
    );
    assert_eq!(snap.read_set_pages(), read.pages());
    wait_parked(warm.pid(), buf);
    let present = present_pages(warm.pid(), read.ranges());
    assert_eq!(
        present,
        read.pages(),
        "only {present} of the {} read pages mapped before the fds",
        read.pages()
    );
    resume_passes("restored ahead with the read set", warm, &socket);
}
