//! What checkpoint and restore refuse, and how: processes that cannot be
//! checkpointed (threads, extra fds, no such process), snapshots whose
//! mapped files changed, damaged metadata, another vDSO, missing files.
//! Every refusal is an error (never a panic) whose message is one line,
//! names the process or the snapshot and says what is wrong. Needs root
//! (CI runs as root).

#![allow(clippy::expect_used, clippy::unwrap_used)]

mod common;

use std::fs;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::path::{Path, PathBuf};
use std::process::Command;

use faas_core::SnapshotError;
use faas_snapshot::{DumpOptions, RestoreIo, Snapshot, dump, inspect};

use common::{
    assert_passed, assert_root, checkpoint_killed, data_file, sigcont, spawn_stopped, target,
    wait_output,
};

const META: &str = "snapshot.meta";
const PAGES: &str = "pages.img";
const HEADER: usize = 56;

/// Runs `f`, failing the test (rather than unwinding) if it panics.
fn no_panic<T>(what: &str, f: impl FnOnce() -> T) -> T {
    catch_unwind(AssertUnwindSafe(f)).unwrap_or_else(|_| panic!("{what} panicked"))
}

/// Asserts that `err` is one line that contains `name` and, ignoring
/// case, each of `words`; returns the message.
fn assert_error(what: &str, err: &SnapshotError, name: &str, words: &[&str]) -> String {
    let msg = err.to_string();
    assert!(
        !msg.trim_end().contains('\n'),
        "{what}: the error is not one line:\n{msg}"
    );
    assert!(
        msg.contains(name),
        "{what}: the error does not name {name:?}: {msg}"
    );
    let lower = msg.to_lowercase();
    for word in words {
        assert!(
            lower.contains(&word.to_lowercase()),
            "{what}: the error does not say {word:?}: {msg}"
        );
    }
    msg
}

/// `Snapshot::open(dir)`, which must fail, without panicking.
fn open_err(what: &str, dir: &Path) -> SnapshotError {
    match no_panic(what, || Snapshot::open(dir)) {
        Ok(_) => panic!("{what}: Snapshot::open({}) succeeded", dir.display()),
        Err(e) => e,
    }
}

/// `inspect(dir)`, which must fail, without panicking.
fn inspect_err(what: &str, dir: &Path) -> SnapshotError {
    match no_panic(what, || inspect(dir)) {
        Ok(text) => panic!("{what}: inspect({}) succeeded:\n{text}", dir.display()),
        Err(e) => e,
    }
}

/// `dump(pid)` into a new directory, which must fail, without panicking;
/// no snapshot may have been written.
fn dump_err(what: &str, pid: u32) -> SnapshotError {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("snap");
    let result = no_panic(what, || dump(pid, &dir, &DumpOptions { kill: false }));
    match result {
        Ok(info) => panic!("{what}: dump of pid {pid} succeeded: {info:?}"),
        Err(e) => {
            assert!(
                !dir.join(META).exists(),
                "{what}: a refused dump left {}",
                dir.join(META).display()
            );
            e
        }
    }
}

/// The decimal numbers in `s`.
fn numbers(s: &str) -> Vec<u64> {
    s.split(|c: char| !c.is_ascii_digit())
        .filter_map(|w| w.parse().ok())
        .collect()
}

/// A valid snapshot of the `regs` target (no mapped files but its own
/// binary, which stays for the life of the test process).
fn regs_snapshot(tmp: &Path) -> PathBuf {
    let dir = tmp.join("regs");
    checkpoint_killed("regs", &mut Command::new(target("regs")), &dir);
    dir
}

/// A copy of snapshot `src` in a new directory under `tmp`.
fn copy_snapshot(src: &Path, tmp: &Path, name: &str) -> PathBuf {
    let dir = tmp.join(name);
    fs::create_dir(&dir).unwrap();
    for f in [META, PAGES] {
        fs::copy(src.join(f), dir.join(f)).unwrap();
    }
    dir
}

/// Writes `body` as the metadata of `dir`, with the original's first 16
/// header bytes (magic, version, reserved) and a correct length and
/// checksum.
fn write_body(dir: &Path, body: &[u8]) {
    let path = dir.join(META);
    let old = fs::read(&path).unwrap();
    let mut meta = old[..16].to_vec();
    meta.extend_from_slice(&(body.len() as u64).to_le_bytes());
    meta.extend_from_slice(blake3::hash(body).as_bytes());
    meta.extend_from_slice(body);
    fs::write(&path, meta).unwrap();
}

/// The metadata body of `dir` as JSON.
fn read_json(dir: &Path) -> serde_json::Value {
    let meta = fs::read(dir.join(META)).unwrap();
    serde_json::from_slice(&meta[HEADER..]).expect("the metadata body is JSON")
}

fn write_json(dir: &Path, value: &serde_json::Value) {
    write_body(dir, &serde_json::to_vec(value).unwrap());
}

#[test]
fn multithreaded_process_is_refused_naming_its_three_threads() {
    assert_root();
    let child = spawn_stopped(&mut Command::new(target("multithread")));
    let pid = child.id();
    let err = dump_err("multithread", pid);
    sigcont(pid);
    let (status, out) = wait_output(child);
    assert_error("multithread", &err, &pid.to_string(), &["3 threads"]);
    // The refusal left the process as it was.
    assert_passed(
        "multithread after a refused dump",
        status,
        &out,
        &["multithread"],
    );
}

#[test]
fn process_with_extra_fds_is_refused_naming_fds_5_and_7() {
    assert_root();
    let child = spawn_stopped(&mut Command::new(target("extra_fd")));
    let pid = child.id();
    let err = dump_err("extra_fd", pid);
    sigcont(pid);
    let (status, out) = wait_output(child);
    let msg = assert_error("extra_fd", &err, &pid.to_string(), &["fd"]);
    let after_pid = &msg[msg.find(&pid.to_string()).unwrap() + pid.to_string().len()..];
    let listed = numbers(after_pid);
    assert!(
        listed.contains(&5) && listed.contains(&7),
        "extra_fd: the error does not list fds 5 and 7: {msg}"
    );
    assert_passed("extra_fd after a refused dump", status, &out, &["extra_fd"]);
}

#[test]
fn process_that_does_not_exist_is_refused() {
    assert_root();
    let pid_max: u32 = fs::read_to_string("/proc/sys/kernel/pid_max")
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    let pid = pid_max + 1;
    let err = dump_err("no such pid", pid);
    assert_error("no such pid", &err, &pid.to_string(), &["no such process"]);
}

#[test]
fn changed_mapped_file_is_refused_naming_it() {
    assert_root();
    let data = data_file(3 * 4096 + 100);
    let data_path = data.path().to_owned();
    let name = data_path.to_str().unwrap().to_owned();
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("checks");
    checkpoint_killed(
        "checks",
        Command::new(target("checks")).arg(&data_path),
        &dir,
    );
    let opened = Snapshot::open(&dir).unwrap_or_else(|e| panic!("open the fresh snapshot: {e}"));

    let original = fs::read(&data_path).unwrap();

    // Other bytes, another size, in place (same inode).
    fs::write(&data_path, vec![0x5a; 2 * 4096]).unwrap();
    let err = open_err("rewritten DATAFILE", &dir);
    assert_error("rewritten DATAFILE", &err, &name, &["changed"]);
    // A snapshot opened before the change refuses to restore too.
    let err = match no_panic("restore after the change", || {
        opened.restore(RestoreIo::default())
    }) {
        Ok(r) => panic!("restore after DATAFILE changed succeeded: pid {}", r.pid()),
        Err(e) => e,
    };
    assert_error("restore after the change", &err, &name, &["changed"]);

    // The original bytes again, in another inode.
    let copy = tmp.path().join("copy");
    fs::write(&copy, &original).unwrap();
    fs::rename(&copy, &data_path).unwrap();
    let err = open_err("replaced DATAFILE", &dir);
    assert_error("replaced DATAFILE", &err, &name, &["changed"]);

    // Gone.
    fs::remove_file(&data_path).unwrap();
    let err = open_err("deleted DATAFILE", &dir);
    assert_error("deleted DATAFILE", &err, &name, &[]);
}

#[test]
fn damaged_metadata_is_refused_by_its_checksum() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());
    let meta = fs::read(good.join(META)).unwrap();
    let dir = copy_snapshot(&good, tmp.path(), "flipped");
    let name = dir.to_str().unwrap();

    // One byte of the body.
    let mut bad = meta.clone();
    bad[HEADER + (meta.len() - HEADER) / 2] ^= 0x01;
    fs::write(dir.join(META), &bad).unwrap();
    let err = open_err("flipped body byte", &dir);
    assert_error("flipped body byte", &err, name, &["checksum"]);
    let err = inspect_err("flipped body byte", &dir);
    assert_error("inspect, flipped body byte", &err, name, &["checksum"]);

    // Any byte but the 4 reserved ones, sampled across the whole file: an
    // error every time, never a panic.
    let step = (meta.len() / 211).max(1);
    for at in (0..meta.len())
        .filter(|at| !(12..16).contains(at))
        .filter(|at| *at < HEADER || at % step == 0)
    {
        let mut bad = meta.clone();
        bad[at] ^= 0x80;
        fs::write(dir.join(META), &bad).unwrap();
        let err = open_err(&format!("byte {at} flipped"), &dir);
        assert_error(&format!("byte {at} flipped"), &err, name, &["metadata"]);
    }
}

#[test]
fn truncated_metadata_is_refused() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());
    let meta = fs::read(good.join(META)).unwrap();
    let dir = copy_snapshot(&good, tmp.path(), "truncated");
    let name = dir.to_str().unwrap();
    for len in [
        0,
        8,
        HEADER - 1,
        HEADER,
        HEADER + 1,
        meta.len() / 2,
        meta.len() - 1,
    ] {
        fs::write(dir.join(META), &meta[..len]).unwrap();
        let what = format!("metadata truncated to {len} bytes");
        let err = open_err(&what, &dir);
        assert_error(&what, &err, name, &["metadata", "bytes"]);
        let err = inspect_err(&what, &dir);
        assert_error(&what, &err, name, &["metadata", "bytes"]);
    }
    // Longer than its header says.
    let mut long = meta.clone();
    long.extend_from_slice(b" ");
    fs::write(dir.join(META), &long).unwrap();
    let err = open_err("metadata with a trailing byte", &dir);
    assert_error(
        "metadata with a trailing byte",
        &err,
        name,
        &["metadata", "bytes"],
    );
}

#[test]
fn metadata_with_bad_magic_or_version_is_refused() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());
    let meta = fs::read(good.join(META)).unwrap();
    let dir = copy_snapshot(&good, tmp.path(), "magic");
    let name = dir.to_str().unwrap();

    let mut bad = meta.clone();
    bad[..8].copy_from_slice(b"NOTASNAP");
    fs::write(dir.join(META), &bad).unwrap();
    let err = open_err("bad magic", &dir);
    let msg = assert_error("bad magic", &err, name, &[]);
    assert!(
        msg.contains("FAASSNAP") || msg.to_lowercase().contains("magic"),
        "bad magic: the error does not say what is wrong: {msg}"
    );

    let mut bad = meta.clone();
    bad[8..12].copy_from_slice(&(faas_snapshot::FORMAT_VERSION + 1).to_le_bytes());
    fs::write(dir.join(META), &bad).unwrap();
    let err = open_err("other version", &dir);
    let msg = assert_error("other version", &err, name, &["version"]);
    assert!(
        numbers(&msg).contains(&u64::from(faas_snapshot::FORMAT_VERSION + 1)),
        "other version: the error does not name the version: {msg}"
    );
}

#[test]
fn metadata_that_does_not_parse_is_refused() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());
    let dir = copy_snapshot(&good, tmp.path(), "garbage");
    let name = dir.to_str().unwrap();
    for (what, body) in [
        (
            "garbage body",
            &b"{\"pid\": 1, this is not JSON \xff\xfe"[..],
        ),
        ("empty body", b""),
        ("JSON of another shape", b"{\"hello\": [1, 2, 3]}"),
        ("JSON null", b"null"),
    ] {
        write_body(&dir, body);
        let err = open_err(what, &dir);
        assert_error(what, &err, name, &["parse"]);
        let err = inspect_err(what, &dir);
        assert_error(what, &err, name, &["parse"]);
    }
}

#[test]
fn inconsistent_metadata_is_refused() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());
    let json = read_json(&good);
    let dir = copy_snapshot(&good, tmp.path(), "inconsistent");
    let name = dir.to_str().unwrap();
    type Edit = fn(&mut serde_json::Value);
    let edits: [(&str, Edit, &str); 4] = [
        (
            "unaligned area",
            |j| {
                let start = j["areas"][0]["start"].as_u64().unwrap();
                j["areas"][0]["start"] = (start + 1).into();
            },
            "area",
        ),
        (
            "areas out of order",
            |j| {
                let areas = j["areas"].as_array_mut().unwrap();
                areas.swap(0, 1);
            },
            "area",
        ),
        (
            "xsave area cut short",
            |j| j["xstate"] = "00".into(),
            "xsave",
        ),
        (
            "SIGKILL action",
            |j| {
                let mut action = serde_json::json!({
                    "signo": 9, "handler": 0, "flags": 0, "restorer": 0, "mask": 0
                });
                if let Some(first) = j["sigactions"].get(0) {
                    action = first.clone();
                    action["signo"] = 9.into();
                }
                j["sigactions"].as_array_mut().unwrap().push(action);
            },
            "signal",
        ),
    ];
    for (what, edit, word) in edits {
        let mut j = json.clone();
        edit(&mut j);
        write_json(&dir, &j);
        let err = open_err(what, &dir);
        assert_error(what, &err, name, &[word]);
    }
}

#[test]
fn snapshot_of_another_vdso_is_refused() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());
    let dir = copy_snapshot(&good, tmp.path(), "vdso");
    let name = dir.to_str().unwrap();
    let mut json = read_json(&dir);
    let other = blake3::hash(b"another kernel's vDSO").to_hex().to_string();
    assert_ne!(json["vdso_hash"].as_str(), Some(other.as_str()));
    json["vdso_hash"] = other.into();
    write_json(&dir, &json);
    let err = open_err("other vDSO", &dir);
    assert_error("other vDSO", &err, name, &["vDSO"]);
    // The metadata itself is sound: inspect still reads it.
    no_panic("inspect", || inspect(&dir)).unwrap_or_else(|e| panic!("inspect: {e}"));
}

#[test]
fn snapshot_of_another_cpu_or_kernel_is_refused() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let good = regs_snapshot(tmp.path());

    // Another CPU: an xsave feature mask this one does not have.
    let dir = copy_snapshot(&good, tmp.path(), "xcr0");
    let name = dir.to_str().unwrap();
    let mut json = read_json(&dir);
    let xcr0 = json["xcr0"].as_u64().unwrap();
    json["xcr0"] = (xcr0 ^ (1 << 9)).into();
    write_json(&dir, &json);
    let err = open_err("other CPU", &dir);
    assert_error("other CPU", &err, name, &["xsave"]);

    // Another kernel build.
    let dir = copy_snapshot(&good, tmp.path(), "kernel");
    let name = dir.to_str().unwrap();
    let mut json = read_json(&dir);
    json["kernel"] = "5.15.0-generic #1 SMP".into();
    write_json(&dir, &json);
    let err = open_err("other kernel", &dir);
    assert_error("other kernel", &err, name, &["kernel"]);
}

#[test]
fn missing_snapshot_files_are_refused_naming_them() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();

    let dir = tmp.path().join("does-not-exist");
    let name = dir.to_str().unwrap();
    let err = open_err("no such directory", &dir);
    assert_error("no such directory", &err, name, &["no such file"]);
    let err = inspect_err("no such directory", &dir);
    assert_error("inspect, no such directory", &err, name, &["no such file"]);

    let good = regs_snapshot(tmp.path());
    let dir = copy_snapshot(&good, tmp.path(), "no-meta");
    fs::remove_file(dir.join(META)).unwrap();
    let err = open_err("no metadata", &dir);
    assert_error("no metadata", &err, dir.join(META).to_str().unwrap(), &[]);

    let dir = copy_snapshot(&good, tmp.path(), "no-pages");
    fs::remove_file(dir.join(PAGES)).unwrap();
    let err = open_err("no page file", &dir);
    assert_error("no page file", &err, dir.to_str().unwrap(), &[PAGES]);

    let dir = copy_snapshot(&good, tmp.path(), "short-pages");
    let len = fs::metadata(dir.join(PAGES)).unwrap().len();
    fs::OpenOptions::new()
        .write(true)
        .open(dir.join(PAGES))
        .unwrap()
        .set_len(len - 4096)
        .unwrap();
    let err = open_err("short page file", &dir);
    assert_error("short page file", &err, dir.to_str().unwrap(), &[PAGES]);

    // The good one still opens.
    Snapshot::open(&good).unwrap_or_else(|e| panic!("open the good snapshot: {e}"));
}

#[test]
fn dump_into_an_unusable_directory_fails_naming_it() {
    assert_root();
    let tmp = tempfile::tempdir().unwrap();
    let file = tmp.path().join("a-file");
    fs::write(&file, b"not a directory").unwrap();
    let dir = file.join("snap");
    let mut child = spawn_stopped(&mut Command::new(target("regs")));
    let pid = child.id();
    let result = no_panic("dump into a file", || {
        dump(pid, &dir, &DumpOptions { kill: false })
    });
    let _ = child.kill();
    let _ = child.wait();
    let err = match result {
        Ok(info) => panic!("dump into {} succeeded: {info:?}", dir.display()),
        Err(e) => e,
    };
    assert_error(
        "dump into a file",
        &err,
        dir.to_str().unwrap(),
        &["directory"],
    );
}
