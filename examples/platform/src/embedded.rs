//! The example functions carried inside the `faas` binary.
//!
//! `build.rs` builds `examples/functions/*` as static executables (a nested
//! `cargo build --release` with `+crt-static`) into `$OUT_DIR/functions/`;
//! they are included here byte for byte, so `faas demo` works from a fresh
//! clone without a separate build step.

use std::fs;
use std::io::{self, Write};
use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
use std::path::{Path, PathBuf};

/// One example function: a static executable linked against `faas-guest`.
#[derive(Debug, Clone, Copy)]
pub struct ExampleFunction {
    /// Function name, also the executable's file name.
    pub name: &'static str,
    /// The static executable.
    pub binary: &'static [u8],
    /// One line for listings.
    pub description: &'static str,
}

/// The embedded example functions.
pub const FUNCTIONS: &[ExampleFunction] = &[
    ExampleFunction {
        name: "hello",
        binary: include_bytes!(concat!(env!("OUT_DIR"), "/functions/hello")),
        description: "echoes the request body, with the pid and host of the instance",
    },
    ExampleFunction {
        name: "cpu",
        binary: include_bytes!(concat!(env!("OUT_DIR"), "/functions/cpu")),
        description: "counts the primes below N (the request body) and reports the time taken",
    },
];

/// The embedded function called `name`.
pub fn find(name: &str) -> Option<&'static ExampleFunction> {
    FUNCTIONS.iter().find(|f| f.name == name)
}

/// Writes every example function to `dir/<name>/<name>` (mode 0755),
/// creating the directories, and returns the function directories
/// (`dir/<name>`), in the order of [`FUNCTIONS`].
///
/// An existing file is replaced atomically (written beside it, then
/// renamed), so a running instance of the old one is not disturbed.
///
/// # Errors
///
/// Creating a directory or writing a file failed; the error names the path.
pub fn write_all(dir: &Path) -> io::Result<Vec<PathBuf>> {
    FUNCTIONS
        .iter()
        .map(|f| {
            let fn_dir = dir.join(f.name);
            fs::create_dir_all(&fn_dir).map_err(|e| at("create directory", &fn_dir, e))?;
            write_executable(&fn_dir.join(f.name), f.binary)?;
            Ok(fn_dir)
        })
        .collect()
}

fn write_executable(path: &Path, bytes: &[u8]) -> io::Result<()> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let written = (|| {
        let mut file = fs::OpenOptions::new()
            .write(true)
            .create(true)
            .truncate(true)
            .mode(0o755)
            .open(&tmp)?;
        file.write_all(bytes)?;
        // The umask may have cleared bits of the mode given to open.
        file.set_permissions(fs::Permissions::from_mode(0o755))?;
        file.sync_all()
    })();
    if let Err(e) = written {
        let _ = fs::remove_file(&tmp);
        return Err(at("write", &tmp, e));
    }
    fs::rename(&tmp, path).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        at("rename into", path, e)
    })
}

/// `e` with the operation and path in its message.
fn at(op: &str, path: &Path, e: io::Error) -> io::Error {
    io::Error::new(e.kind(), format!("{op} {}: {e}", path.display()))
}

#[cfg(test)]
mod tests {
    use std::process::Command;

    use super::*;

    #[test]
    fn embedded_functions_are_static_executables() {
        for f in FUNCTIONS {
            assert!(f.binary.starts_with(b"\x7fELF"), "{} is not ELF", f.name);
            assert!(
                f.binary.len() > 64 * 1024,
                "{} is suspiciously small",
                f.name
            );
            assert!(!f.description.is_empty());
        }
        assert_eq!(find("hello").map(|f| f.name), Some("hello"));
        assert!(find("nope").is_none());
    }

    #[test]
    fn write_all_writes_executable_function_dirs() {
        let dir = std::env::temp_dir().join(format!("faas-embedded-test-{}", std::process::id()));
        let _ = fs::remove_dir_all(&dir);
        let dirs = write_all(&dir).unwrap();
        assert_eq!(dirs, vec![dir.join("hello"), dir.join("cpu")]);
        // Again, over the existing files.
        assert_eq!(write_all(&dir).unwrap(), dirs);
        for f in FUNCTIONS {
            let path = dir.join(f.name).join(f.name);
            let meta = fs::metadata(&path).unwrap();
            assert_eq!(meta.permissions().mode() & 0o777, 0o755);
            assert_eq!(fs::read(&path).unwrap(), f.binary);
            // Run by hand, a function finds no channel on fd 3: exit 70.
            let out = Command::new(&path).output().unwrap();
            assert_eq!(out.status.code(), Some(70), "{}", f.name);
            assert!(
                String::from_utf8_lossy(&out.stderr).contains("fd 3 is not the guest channel"),
                "{}",
                f.name
            );
        }
        fs::remove_dir_all(&dir).unwrap();
    }
}
