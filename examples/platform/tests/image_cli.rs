//! `faas image ...` end to end: the real binary builds, lists, reads,
//! verifies, mounts and unmounts an image; failures are one line and a
//! non-zero exit. Mounting needs root (CI runs as root).

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::fs;
use std::os::unix::fs::FileExt;
use std::process::{Command, Output};

fn faas(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_faas"))
        .args(args)
        .output()
        .expect("run faas")
}

fn ok(args: &[&str]) -> String {
    let out = faas(args);
    assert!(
        out.status.success(),
        "faas {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf8")
}

fn fails_with_one_line(args: &[&str]) -> String {
    let out = faas(args);
    assert!(!out.status.success(), "faas {args:?} should fail");
    let err = String::from_utf8(out.stderr).expect("utf8");
    assert_eq!(err.trim_end().lines().count(), 1, "one line: {err}");
    err
}

#[test]
fn image_commands_build_inspect_verify_and_mount() {
    let dir = tempfile::tempdir().expect("tempdir");
    let src = dir.path().join("src");
    fs::create_dir_all(src.join("bin")).expect("mkdir");
    fs::write(src.join("bin/hello"), b"#!/bin/sh\necho hi\n").expect("write");
    fs::write(src.join("data.bin"), vec![42u8; 20_000]).expect("write");
    std::os::unix::fs::symlink("bin/hello", src.join("run")).expect("symlink");
    let img = dir.path().join("fn.img");
    let img_s = img.to_str().expect("utf8 path");

    let summary = ok(&[
        "image",
        "build",
        src.to_str().unwrap(),
        "-o",
        img_s,
        "--mtime",
        "0",
    ]);
    assert!(
        summary.contains("2 files") && summary.contains("digest "),
        "{summary}"
    );
    let ls = ok(&["image", "ls", img_s]);
    assert!(
        ls.contains(" bin") && ls.contains("run -> bin/hello"),
        "{ls}"
    );
    assert_eq!(
        ok(&["image", "cat", img_s, "/bin/hello"]),
        "#!/bin/sh\necho hi\n"
    );
    let stat = ok(&["image", "stat", img_s, "/data.bin"]);
    assert!(
        stat.contains("size: 20000") && stat.contains("(mappable)"),
        "{stat}"
    );
    assert!(ok(&["image", "verify", img_s]).contains(": ok: 2 files"));

    // Reproducible from the CLI too.
    let img2 = dir.path().join("fn2.img");
    ok(&[
        "image",
        "build",
        src.to_str().unwrap(),
        "-o",
        img2.to_str().unwrap(),
        "--mtime",
        "0",
    ]);
    assert_eq!(fs::read(&img).unwrap(), fs::read(&img2).unwrap());

    fails_with_one_line(&["image", "cat", img_s, "/missing"]);
    fails_with_one_line(&["image", "ls", "/nonexistent.img"]);
    // One flipped data byte: verify fails.
    let data_off = stat
        .lines()
        .find_map(|l| l.trim().strip_prefix("extent: offset "))
        .and_then(|r| r.split(' ').next())
        .and_then(|n| n.parse::<u64>().ok())
        .expect("extent offset");
    let bad = dir.path().join("bad.img");
    fs::copy(&img, &bad).expect("copy");
    let f = fs::OpenOptions::new().write(true).open(&bad).expect("open");
    f.write_all_at(b"!", data_off + 7).expect("write");
    let err = fails_with_one_line(&["image", "verify", bad.to_str().unwrap()]);
    assert!(err.contains("/data.bin"), "{err}");

    assert!(
        rustix_is_root(),
        "faas image mount needs root; this test must run as root (CI does)"
    );
    let mnt = dir.path().join("mnt");
    fs::create_dir(&mnt).expect("mkdir");
    ok(&["image", "mount", img_s, mnt.to_str().unwrap()]);
    let read = fs::read(mnt.join("bin/hello"));
    let mounts = fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    ok(&["image", "umount", mnt.to_str().unwrap()]);
    assert_eq!(
        read.expect("read through the kernel mount"),
        b"#!/bin/sh\necho hi\n"
    );
    let line = mounts
        .lines()
        .find(|l| l.contains(mnt.to_str().unwrap()))
        .expect("mount listed");
    assert!(
        line.contains(" erofs ")
            && line.contains("ro")
            && line.contains("nosuid")
            && line.contains("nodev"),
        "{line}"
    );
}

fn rustix_is_root() -> bool {
    // The effective uid, from /proc.
    fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|r| r.split_whitespace().nth(1).map(|e| e == "0"))
        .unwrap_or(false)
}
