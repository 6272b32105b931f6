//! The language runtimes carried inside the `faas` binary: the Python and
//! Node.js runtime scripts of `faas-guest/runtimes/`, written at start-up
//! into `STATE/runtimes/{python,node}/` (rewritten only when their content
//! differs, so Python's cached bytecode stays valid) and offered to the
//! node gateway with the interpreters found on the host.

use std::fs;
use std::io;
use std::path::{Path, PathBuf};

use faas_gateway::{RuntimeCommand, RuntimeCommands};

/// The Python runtime: the entry point and the module it imports.
const PYTHON: &[(&str, &[u8])] = &[
    (
        "faas_runtime.py",
        include_bytes!("../../../faas-guest/runtimes/python/faas_runtime.py"),
    ),
    (
        "_faas_runtime.py",
        include_bytes!("../../../faas-guest/runtimes/python/_faas_runtime.py"),
    ),
];

/// The Node.js runtime and its N-API addon (built by build.rs), which lets
/// it pass bodies over 64 KiB as sealed memfds; the runtime loads it from
/// next to itself.
const NODE: &[(&str, &[u8])] = &[
    (
        "faas_runtime.js",
        include_bytes!("../../../faas-guest/runtimes/node/faas_runtime.js"),
    ),
    (
        "faas_native.node",
        include_bytes!(concat!(env!("OUT_DIR"), "/faas_native.node")),
    ),
];

/// The default interpreters: system paths that a sandbox's unprivileged uid
/// can reach (never a version manager's shim under `/root`).
pub const DEFAULT_PYTHON: &str = "/usr/bin/python3";
/// See [`DEFAULT_PYTHON`].
pub const DEFAULT_NODE: &str = "/usr/bin/node";

/// Writes `files` into `dir` (created, world-readable), each only when its
/// content differs. Returns whether anything was written.
fn write_files(dir: &Path, files: &[(&str, &[u8])]) -> io::Result<bool> {
    use std::os::unix::fs::PermissionsExt;
    fs::create_dir_all(dir)?;
    fs::set_permissions(dir, fs::Permissions::from_mode(0o755))?;
    let mut changed = false;
    for (name, text) in files {
        let path = dir.join(name);
        if fs::read(&path).is_ok_and(|old| old == *text) {
            continue;
        }
        let tmp = dir.join(format!(".{name}.tmp"));
        fs::write(&tmp, text)?;
        fs::set_permissions(&tmp, fs::Permissions::from_mode(0o644))?;
        fs::rename(&tmp, &path)?;
        changed = true;
    }
    Ok(changed)
}

/// Compiles the Python runtime's bytecode next to it (a sandbox sees the
/// directory read-only, so Python could not cache it there, and compiling
/// it costs about 10 ms per cold start). Only our own scripts are compiled,
/// as root, before any function runs.
fn compile_python(interpreter: &Path, dir: &Path) {
    let out = std::process::Command::new(interpreter)
        .args(["-I", "-m", "compileall", "-q"])
        .arg(dir)
        .stdin(std::process::Stdio::null())
        .output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => tracing::warn!(
            dir = %dir.display(),
            status = %o.status,
            stderr = %String::from_utf8_lossy(&o.stderr).trim(),
            "compiling the Python runtime failed; it is compiled at every cold start"
        ),
        Err(e) => tracing::warn!(
            interpreter = %interpreter.display(),
            error = %e,
            "cannot run the Python interpreter to compile the runtime"
        ),
    }
}

/// Writes both runtimes into `state_dir/runtimes/` and returns the node's
/// runtime commands. An interpreter that does not exist is kept as given:
/// deploying a function of that runtime then fails with a clear error.
///
/// # Errors
///
/// The scripts cannot be written.
pub fn install(state_dir: &Path, python: &Path, node: &Path) -> io::Result<RuntimeCommands> {
    let base = state_dir.join("runtimes");
    let py_dir = base.join("python");
    write_files(&py_dir, PYTHON)?;
    if python.is_file() {
        // Cheap when the bytecode is current (compileall skips it).
        compile_python(python, &py_dir);
    }
    let node_dir = base.join("node");
    write_files(&node_dir, NODE)?;
    for interpreter in [python, node] {
        if !interpreter.is_file() {
            tracing::info!(interpreter = %interpreter.display(), "interpreter not found; its runtime is unavailable");
        } else if interpreter.starts_with("/root") || interpreter.starts_with("/home") {
            tracing::warn!(interpreter = %interpreter.display(), "this interpreter is under a home directory, which a sandbox's unprivileged uid usually cannot reach");
        }
    }
    Ok(RuntimeCommands {
        python: Some(RuntimeCommand {
            interpreter: PathBuf::from(python),
            scripts: py_dir,
        }),
        node: Some(RuntimeCommand {
            interpreter: PathBuf::from(node),
            scripts: node_dir,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_are_written_once_and_rewritten_when_changed() {
        let state = tempfile::tempdir().unwrap();
        let rt = install(
            state.path(),
            Path::new("/nonexistent/python3"),
            Path::new("/nonexistent/node"),
        )
        .unwrap();
        let py = rt.python.unwrap();
        let script = py.scripts.join("_faas_runtime.py");
        assert_eq!(fs::read(&script).unwrap(), PYTHON[1].1);
        let mtime = fs::metadata(&script).unwrap().modified().unwrap();
        assert!(!write_files(&py.scripts, PYTHON).unwrap());
        assert_eq!(fs::metadata(&script).unwrap().modified().unwrap(), mtime);
        fs::write(&script, "changed").unwrap();
        assert!(write_files(&py.scripts, PYTHON).unwrap());
        assert_eq!(fs::read(&script).unwrap(), PYTHON[1].1);
        assert!(rt.node.unwrap().scripts.join("faas_runtime.js").is_file());
    }
}
