//! Shared by the build scripts that run a nested `cargo build` (the example
//! functions, the snapshot restorer): the environment the outer cargo (or
//! clippy) gives a build script is cleaned first, so the nested build is a
//! plain one.

use std::env;
use std::process::Command;

/// Variables the outer cargo, clippy or the user set that would change the
/// nested build (wrappers, flags, target dir, fix mode) or leak the outer
/// build script's context into it.
const REMOVED_VARS: &[&str] = &[
    "RUSTC_WORKSPACE_WRAPPER",
    "RUSTC_WRAPPER",
    "RUSTFLAGS",
    "CARGO_BUILD_RUSTFLAGS",
    "CARGO_ENCODED_RUSTFLAGS",
    "CARGO_TARGET_DIR",
    "CARGO_BUILD_TARGET_DIR",
    "CARGO_BUILD_TARGET",
    "__CARGO_FIX_PLZ",
    "__CARGO_FIX_YOLO",
    "CLIPPY_ARGS",
    "CLIPPY_CONF_DIR",
    "OUT_DIR",
    "TARGET",
    "HOST",
    "PROFILE",
    "OPT_LEVEL",
    "DEBUG",
    "NUM_JOBS",
    "RUSTC_LINKER",
    "CARGO_MANIFEST_DIR",
    "CARGO_MANIFEST_PATH",
    "CARGO_MANIFEST_LINKS",
    "CARGO_PRIMARY_PACKAGE",
];

/// Prefixes of per-package variables cargo sets for a build script.
const REMOVED_PREFIXES: &[&str] = &["CARGO_CFG_", "CARGO_FEATURE_", "CARGO_PKG_", "DEP_"];

/// Removes from `cmd`'s environment everything that would leak the outer
/// build into the nested one.
pub(crate) fn clean_env(cmd: &mut Command) {
    for (key, _) in env::vars_os() {
        let Some(name) = key.to_str() else { continue };
        if REMOVED_VARS.contains(&name) || REMOVED_PREFIXES.iter().any(|p| name.starts_with(p)) {
            cmd.env_remove(&key);
        }
    }
}
