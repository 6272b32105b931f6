//! A function crate written outside the workspace against `faas-guest` (by
//! path) builds, deploys through the real `faas` binary and answers —
//! including a handler panic, which must come back as a 500, not a hang.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::process::Command;

const MAIN_RS: &str = r#"
fn main() {
    faas_guest::serve(|req: faas_guest::Request| {
        if req.body() == b"panic" {
            panic!("the handler gave up");
        }
        let who = req.header("x-who").unwrap_or("nobody").to_owned();
        faas_guest::Response::with_status(201, format!("outside says {} to {who}", String::from_utf8_lossy(req.body())))
            .header("x-outside", "yes")
    })
}
"#;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

#[test]
fn outside_guest_crate_builds_deploys_and_answers() {
    let ws = workspace();
    let tmp = tempfile::tempdir().unwrap();
    let krate = tmp.path().join("outside-fn");
    std::fs::create_dir_all(krate.join("src")).unwrap();
    std::fs::write(
        krate.join("Cargo.toml"),
        format!(
            "[package]\nname = \"outside-fn\"\nversion = \"0.1.0\"\nedition = \"2024\"\n\n\
             [dependencies]\nfaas-guest = {{ path = {:?} }}\n\n[workspace]\n",
            ws.join("faas-guest")
        ),
    )
    .unwrap();
    std::fs::write(krate.join("src/main.rs"), MAIN_RS).unwrap();
    // The workspace's lock file pins the same dependency versions, so the
    // build needs nothing the workspace build did not already download.
    std::fs::copy(ws.join("Cargo.lock"), krate.join("Cargo.lock")).unwrap();
    // A target directory that survives between runs keeps this test fast.
    let target = ws.join("target/outside-guest");
    let out = Command::new(env!("CARGO"))
        .args(["build", "--release", "--target", "x86_64-unknown-linux-gnu"])
        .arg("--manifest-path")
        .arg(krate.join("Cargo.toml"))
        .env("CARGO_TARGET_DIR", &target)
        .env("CARGO_ENCODED_RUSTFLAGS", "-Ctarget-feature=+crt-static")
        .env_remove("RUSTFLAGS")
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "building the outside crate failed:\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let fn_dir = tmp.path().join("deploy");
    std::fs::create_dir_all(&fn_dir).unwrap();
    std::fs::copy(
        target.join("x86_64-unknown-linux-gnu/release/outside-fn"),
        fn_dir.join("outside-fn"),
    )
    .unwrap();

    let server = common::Server::start(&[]);
    let faas = |args: &[&str]| server.cli(args);
    let o = faas(&[
        "deploy",
        "outside",
        "--dir",
        fn_dir.to_str().unwrap(),
        "--handler",
        "outside-fn",
    ]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));

    let o = faas(&["invoke", "outside", "--data", "hello", "-i"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert_eq!(
        String::from_utf8_lossy(&o.stdout),
        "outside says hello to nobody"
    );
    let headers = String::from_utf8_lossy(&o.stderr);
    assert!(headers.contains("201"), "{headers}");
    assert!(headers.contains("x-outside: yes"), "{headers}");

    let o = faas(&["invoke", "outside", "--data", "panic"]);
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("500") && e.contains("the handler gave up"),
        "{e}"
    );
}
