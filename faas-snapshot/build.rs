//! Builds the restorer (`restorer/`, a `no_std`, libc-free static
//! executable linked at a fixed address) with a nested cargo and puts it in
//! `$OUT_DIR/faas-restorer`, where `src/restore.rs` embeds it.
//!
//! The restorer is not a workspace member: it needs flags no other crate
//! wants (panic=abort, no start files, no libc, a non-PIE static link at
//! [`BASE`]), so it is built on its own, in its own target directory.

use std::env;
use std::ffi::OsString;
use std::fs;
use std::path::PathBuf;
use std::process::Command;

#[path = "../build-support/nested_cargo.rs"]
mod nested_cargo;

/// The restorer's link address: low enough for the small code model, far
/// from where the kernel puts executables (0x400000, 0x55.., 0x7f..) and
/// their heaps. A snapshot with an area here is refused with a clear error.
const BASE: &str = "0x5f000000";

fn main() {
    let manifest_dir = PathBuf::from(var("CARGO_MANIFEST_DIR"));
    let out_dir = PathBuf::from(var("OUT_DIR"));
    let target = var("TARGET");
    let cargo = env::var_os("CARGO").unwrap_or_else(|| OsString::from("cargo"));
    let restorer = manifest_dir.join("restorer");
    for watched in ["src", "Cargo.toml", "Cargo.lock"] {
        println!(
            "cargo:rerun-if-changed={}",
            restorer.join(watched).display()
        );
    }
    println!("cargo:rerun-if-changed=build.rs");
    println!("cargo:rerun-if-changed=../build-support/nested_cargo.rs");

    let target_dir = out_dir.join("restorer-target");
    let flags = [
        "-Crelocation-model=static",
        "-Ctarget-feature=+crt-static",
        "-Cpanic=abort",
        "-Clink-arg=-nostartfiles",
        "-Clink-arg=-nostdlib",
        "-Clink-arg=-static",
        &format!("-Clink-arg=-Wl,--image-base={BASE}"),
        "-Clink-arg=-Wl,--build-id=none",
        "-Clink-arg=-Wl,-z,norelro",
    ];
    let mut cmd = Command::new(&cargo);
    cmd.args([
        "build",
        "--release",
        "--locked",
        "--target",
        &target,
        "--manifest-path",
    ])
    .arg(restorer.join("Cargo.toml"));
    nested_cargo::clean_env(&mut cmd);
    cmd.env("CARGO_TARGET_DIR", &target_dir)
        .env("CARGO_ENCODED_RUSTFLAGS", flags.join("\x1f"))
        .env("CARGO_TERM_COLOR", "never");
    let output = match cmd.output() {
        Ok(o) => o,
        Err(e) => panic!("faas-snapshot build.rs: cannot run cargo to build the restorer: {e}"),
    };
    if !output.status.success() {
        panic!(
            "faas-snapshot build.rs: building the restorer failed ({}):\n{}",
            output.status,
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let built = target_dir
        .join(&target)
        .join("release")
        .join("faas-restorer");
    if let Err(e) = fs::copy(&built, out_dir.join("faas-restorer")) {
        panic!("faas-snapshot build.rs: copy {}: {e}", built.display());
    }
}

fn var(name: &str) -> String {
    match env::var(name) {
        Ok(v) => v,
        Err(e) => panic!("faas-snapshot build.rs: ${name}: {e} (is this run by cargo?)"),
    }
}
