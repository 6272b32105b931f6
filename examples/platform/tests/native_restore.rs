//! Native functions on the full path of issue 7: `faas deploy` builds the
//! version's faas-rofs image (the sandbox mounts it as the root), starts the
//! function once in a sandbox, checkpoints it after its `Ready`, and every
//! instance is restored from that snapshot — also after a restart of the
//! server (the image is mounted again, on another device).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::PathBuf;
use std::process::Command;

use bytes::Bytes;
use common::Server;
use faas_platform::client::Reply;
use http::Method;

fn request(s: &Server, method: Method, path: &str, body: &str) -> Reply {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(
            s.client()
                .request(method, path, Bytes::from(body.to_owned())),
        )
        .unwrap()
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

/// Deploys with the CLI; returns its stdout.
fn deploy(s: &Server, name: &str, extra: &[&str]) -> String {
    let dir = s.examples().join("hello");
    let mut args = vec![
        "deploy",
        name,
        "--dir",
        dir.to_str().unwrap(),
        "--handler",
        "hello",
    ];
    args.extend_from_slice(extra);
    let o = s.cli(&args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "deploy {name}: {err}");
    assert!(err.is_empty(), "deploy {name} warned: {err}");
    out
}

fn spec(s: &Server, name: &str) -> serde_json::Value {
    let r = request(s, Method::GET, &format!("/functions/{name}"), "");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

fn assert_restored_hello(s: &Server, name: &str) {
    let r = request(s, Method::POST, &format!("/invoke/{name}"), "hi");
    assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(&r.body[..], b"hello from pid 1 on host faas: hi");
    assert_eq!(header(&r, "x-faas-start"), "restore");
}

#[test]
fn native_function_runs_from_its_image_restored_from_its_snapshot() {
    let mut s = Server::start(&["--sandbox", "pooled"]);
    let out = deploy(&s, "hello", &[]);
    let lines: Vec<&str> = out.lines().collect();
    assert!(
        lines.iter().any(|l| l.trim_start().starts_with("image ")),
        "{out}"
    );
    assert!(
        lines
            .iter()
            .any(|l| l.trim_start().starts_with("snapshot ")),
        "{out}"
    );
    assert!(
        lines
            .last()
            .unwrap()
            .starts_with("deployed hello version 1 (start: restore) in "),
        "{out}"
    );

    let v = spec(&s, "hello");
    assert_eq!(v["start"], "restore");
    assert_eq!(v["image"]["kind"], "image", "{v}");
    let image = PathBuf::from(v["image"]["path"].as_str().unwrap());
    assert!(image.ends_with("root.erofs"), "{v}");
    // The image is a real EROFS image: the peer's checker agrees.
    let fsck = Command::new("fsck.erofs")
        .arg(&image)
        .output()
        .expect("fsck.erofs (scripts/test installs erofs-utils)");
    assert!(
        fsck.status.success(),
        "{}",
        String::from_utf8_lossy(&fsck.stderr)
    );
    let snapshot = PathBuf::from(v["snapshot"].as_str().unwrap());
    assert!(snapshot.join("snapshot.meta").is_file());

    for _ in 0..5 {
        assert_restored_hello(&s, "hello");
    }
    // Mounted again after a restart, the image's files keep their inodes:
    // the snapshot still restores.
    s.restart();
    for _ in 0..3 {
        assert_restored_hello(&s, "hello");
    }
}

#[test]
fn keep_alive_native_instance_is_restored_once_then_warm() {
    let s = Server::start(&["--sandbox", "pooled"]);
    deploy(&s, "hello", &["--keep-alive-ms", "60000"]);
    assert_restored_hello(&s, "hello");
    for _ in 0..3 {
        let r = request(&s, Method::POST, "/invoke/hello", "again");
        assert_eq!(r.status, 200);
        assert_eq!(&r.body[..], b"hello from pid 1 on host faas: again");
        assert_eq!(header(&r, "x-faas-start"), "warm");
    }
}

/// The server's child processes whose CPU affinity is one CPU.
fn children_pinned_to_one_cpu(s: &Server) -> Vec<u32> {
    let mut pinned = Vec::new();
    let tasks = std::fs::read_dir(format!("/proc/{}/task", s.pid())).unwrap();
    for task in tasks {
        let children = std::fs::read_to_string(task.unwrap().path().join("children")).unwrap();
        for pid in children.split_whitespace() {
            // A child may exit meanwhile.
            let Ok(status) = std::fs::read_to_string(format!("/proc/{pid}/status")) else {
                continue;
            };
            let cpus = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
                .unwrap()
                .trim();
            if !cpus.contains([',', '-']) {
                pinned.push(pid.parse().unwrap());
            }
        }
    }
    pinned
}

/// A kept-alive instance is pinned to one CPU (so that handing it a request
/// wakes it on the CPU of the gateway thread that handles the request);
/// `--no-pin-instances` leaves every instance to the kernel.
#[test]
fn kept_alive_instances_are_pinned_to_one_cpu_unless_told_not_to() {
    if std::thread::available_parallelism().map_or(1, usize::from) < 2 {
        eprintln!("skipped: this process may run on one CPU only");
        return;
    }
    for (extra, pinned) in [(None, 1), (Some("--no-pin-instances"), 0)] {
        let mut args = vec!["--sandbox", "pooled"];
        args.extend(extra);
        let s = Server::start(&args);
        deploy(&s, "hello", &["--keep-alive-ms", "60000"]);
        // One instance serves every request, one after the other. It is
        // unpinned after a request that ran long (a loaded machine can make
        // any request long) and pinned again after a short one, so look
        // after each request until the state wanted shows.
        let mut seen = Vec::new();
        for _ in 0..200 {
            let r = request(&s, Method::POST, "/invoke/hello", "hi");
            assert_eq!(r.status, 200);
            let now = children_pinned_to_one_cpu(&s).len();
            assert!(now <= 1, "{extra:?}: {now} instances pinned");
            seen.push(now);
            if seen.len() >= 3 && now == pinned {
                break;
            }
        }
        assert_eq!(
            seen.last(),
            Some(&pinned),
            "{extra:?}: pinned after each request: {seen:?}"
        );
        if pinned == 0 {
            assert!(seen.iter().all(|&n| n == 0), "{extra:?}: {seen:?}");
        }
    }
}

#[test]
fn a_broken_snapshot_falls_back_to_cold_starts() {
    let mut s = Server::start(&["--sandbox", "pooled"]);
    deploy(&s, "hello", &[]);
    let v = spec(&s, "hello");
    let meta = PathBuf::from(v["snapshot"].as_str().unwrap()).join("snapshot.meta");
    let mut bytes = std::fs::read(&meta).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(&meta, bytes).unwrap();
    // The running server keeps the snapshot it checked at deploy open; a
    // restarted one reads it again and finds it broken.
    s.restart();
    for _ in 0..3 {
        let r = request(&s, Method::POST, "/invoke/hello", "hi");
        assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
        assert_eq!(&r.body[..], b"hello from pid 1 on host faas: hi");
        assert_eq!(header(&r, "x-faas-start"), "cold");
    }
}
