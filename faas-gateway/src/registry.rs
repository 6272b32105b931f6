//! [`Registry`]: deployed functions, their versions, and their files under
//! the state directory.
//!
//! ```text
//! STATE/functions/NAME/VERSION-DEPLOYID/spec.json   the spec as deployed
//! STATE/functions/NAME/VERSION-DEPLOYID/root/       a private copy of the function's directory
//! ```
//!
//! A deploy copies the user's directory, so later edits to it do not change
//! a deployed version, and writes the version directory atomically (rename
//! from a temporary name). Every version stays runnable until the function is
//! deleted.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faas_core::{FunctionSpec, ImageRef, SpecError};
use parking_lot::{Mutex, RwLock};

/// Why a deploy failed.
#[derive(Debug, thiserror::Error)]
pub enum DeployError {
    /// A field of the spec is invalid.
    #[error("{0}")]
    Spec(#[from] SpecError),
    /// The function's directory cannot be read.
    #[error("function directory {path}: {source}")]
    Source {
        /// The directory (or a file in it).
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The image reference is not a directory.
    #[error("function directory {0}: not a directory")]
    NotADirectory(PathBuf),
    /// Image files are not accepted yet.
    #[error("image {0}: deploying from an image file is not supported yet; give a directory")]
    ImageUnsupported(PathBuf),
    /// The handler is missing or not an executable regular file.
    #[error("handler {handler:?} in {dir}: {why}")]
    Handler {
        /// The handler.
        handler: String,
        /// The function's directory.
        dir: PathBuf,
        /// What is wrong.
        why: &'static str,
    },
    /// The state directory cannot be written.
    #[error("state directory {path}: {source}")]
    State {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Why the registry could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The state directory cannot be created or read.
    #[error("state directory {path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// A stored spec cannot be parsed.
    #[error("state directory: {path}: {source}")]
    Spec {
        /// The spec file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: serde_json::Error,
    },
}

#[derive(Default)]
struct Entry {
    versions: BTreeMap<u32, Arc<FunctionSpec>>,
}

/// The deployed functions of a gateway, persisted under a state directory.
pub struct Registry {
    dir: PathBuf,
    functions: RwLock<HashMap<String, Entry>>,
    /// Serialises deploys and deletes (they touch the file system).
    write: Mutex<()>,
}

impl Registry {
    /// Opens (creating if needed) the registry in `state_dir` and loads every
    /// deployed function.
    ///
    /// # Errors
    ///
    /// The directory cannot be created or read, or a stored spec is corrupt.
    pub fn open(state_dir: &Path) -> Result<Self, OpenError> {
        let dir = state_dir.join("functions");
        let io_err = |path: &Path| {
            let path = path.to_owned();
            move |source| OpenError::Io { path, source }
        };
        std::fs::create_dir_all(&dir).map_err(io_err(&dir))?;
        let mut functions: HashMap<String, Entry> = HashMap::new();
        for f in std::fs::read_dir(&dir).map_err(io_err(&dir))? {
            let f = f.map_err(io_err(&dir))?;
            let fdir = f.path();
            if !f.file_type().map_err(io_err(&fdir))?.is_dir() {
                continue;
            }
            for v in std::fs::read_dir(&fdir).map_err(io_err(&fdir))? {
                let v = v.map_err(io_err(&fdir))?;
                let name = v.file_name();
                let Some(name) = name.to_str() else { continue };
                if name.starts_with('.') {
                    // An interrupted deploy: remove it.
                    let _ = std::fs::remove_dir_all(v.path());
                    continue;
                }
                let spec_path = v.path().join("spec.json");
                let bytes = std::fs::read(&spec_path).map_err(io_err(&spec_path))?;
                let spec: FunctionSpec =
                    serde_json::from_slice(&bytes).map_err(|source| OpenError::Spec {
                        path: spec_path.clone(),
                        source,
                    })?;
                functions
                    .entry(spec.name.clone())
                    .or_default()
                    .versions
                    .insert(spec.version, Arc::new(spec));
            }
        }
        Ok(Registry {
            dir,
            functions: RwLock::new(functions),
            write: Mutex::new(()),
        })
    }

    /// The latest version of `name`.
    pub fn get(&self, name: &str) -> Option<Arc<FunctionSpec>> {
        self.functions
            .read()
            .get(name)
            .and_then(|e| e.versions.last_key_value().map(|(_, s)| s.clone()))
    }

    /// A given version of `name`.
    pub fn get_version(&self, name: &str, version: u32) -> Option<Arc<FunctionSpec>> {
        self.functions
            .read()
            .get(name)
            .and_then(|e| e.versions.get(&version).cloned())
    }

    /// The latest version of every function, sorted by name.
    pub fn list(&self) -> Vec<Arc<FunctionSpec>> {
        let mut v: Vec<_> = self
            .functions
            .read()
            .values()
            .filter_map(|e| e.versions.last_key_value().map(|(_, s)| s.clone()))
            .collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v
    }

    /// Deploys a new version of `spec.name`: validates the spec, copies the
    /// function's directory into the state directory and checks the handler.
    /// Blocking (file system work): call it from a blocking context.
    ///
    /// # Errors
    ///
    /// See [`DeployError`]; nothing is registered on error.
    pub fn deploy(&self, mut spec: FunctionSpec) -> Result<Arc<FunctionSpec>, DeployError> {
        spec.validate()?;
        let src = match &spec.image {
            ImageRef::Dir(d) => d.clone(),
            ImageRef::Image(p) => return Err(DeployError::ImageUnsupported(p.clone())),
        };
        let meta = std::fs::metadata(&src).map_err(|source| DeployError::Source {
            path: src.clone(),
            source,
        })?;
        if !meta.is_dir() {
            return Err(DeployError::NotADirectory(src));
        }
        check_handler(&src, &spec.handler)?;

        let _w = self.write.lock();
        let version = self
            .functions
            .read()
            .get(&spec.name)
            .and_then(|e| e.versions.last_key_value().map(|(v, _)| v + 1))
            .unwrap_or(1);
        spec.version = version;
        let fdir = self.dir.join(&spec.name);
        let state_err = |path: &Path| {
            let path = path.to_owned();
            move |source| DeployError::State { path, source }
        };
        std::fs::create_dir_all(&fdir).map_err(state_err(&fdir))?;
        let deploy_id = random_hex(4);
        let tmp = fdir.join(format!(".{version}-{deploy_id}"));
        let fin = fdir.join(format!("{version}-{deploy_id}"));
        let root = tmp.join("root");
        let result = (|| {
            std::fs::create_dir_all(&root).map_err(state_err(&root))?;
            copy_tree(&src, &root)?;
            // Mount points a sandbox needs in a read-only root.
            for d in ["dev", "tmp", "proc"] {
                let p = root.join(d);
                if !p.exists() {
                    std::fs::create_dir(&p).map_err(state_err(&p))?;
                }
            }
            spec.image = ImageRef::Dir(fin.join("root"));
            let json = serde_json::to_vec_pretty(&spec).map_err(|e| DeployError::State {
                path: tmp.join("spec.json"),
                source: e.into(),
            })?;
            std::fs::write(tmp.join("spec.json"), json).map_err(state_err(&tmp))?;
            std::fs::rename(&tmp, &fin).map_err(state_err(&fin))
        })();
        if let Err(e) = result {
            let _ = std::fs::remove_dir_all(&tmp);
            return Err(e);
        }
        let spec = Arc::new(spec);
        self.functions
            .write()
            .entry(spec.name.clone())
            .or_default()
            .versions
            .insert(version, spec.clone());
        Ok(spec)
    }

    /// Deletes every version of `name`. Returns whether it existed.
    /// Blocking (file system work).
    ///
    /// # Errors
    ///
    /// Its directory could not be removed (it is unregistered anyway).
    pub fn remove(&self, name: &str) -> Result<bool, DeployError> {
        let _w = self.write.lock();
        if self.functions.write().remove(name).is_none() {
            return Ok(false);
        }
        let fdir = self.dir.join(name);
        let trash = self.dir.join(format!(".trash-{name}-{}", random_hex(4)));
        std::fs::rename(&fdir, &trash).map_err(|source| DeployError::State {
            path: fdir.clone(),
            source,
        })?;
        std::fs::remove_dir_all(&trash).map_err(|source| DeployError::State {
            path: trash,
            source,
        })?;
        Ok(true)
    }
}

fn check_handler(dir: &Path, handler: &str) -> Result<(), DeployError> {
    let err = |why| DeployError::Handler {
        handler: handler.to_owned(),
        dir: dir.to_owned(),
        why,
    };
    let meta = std::fs::metadata(dir.join(handler)).map_err(|_| err("no such file"))?;
    if !meta.is_file() {
        return Err(err("not a regular file"));
    }
    if meta.permissions().mode() & 0o111 == 0 {
        return Err(err("not executable (chmod +x it)"));
    }
    Ok(())
}

/// Copies a directory tree: directories, regular files (with their mode)
/// and symlinks (as links). Other file types are refused.
fn copy_tree(src: &Path, dst: &Path) -> Result<(), DeployError> {
    let src_err = |path: &Path| {
        let path = path.to_owned();
        move |source| DeployError::Source { path, source }
    };
    for e in std::fs::read_dir(src).map_err(src_err(src))? {
        let e = e.map_err(src_err(src))?;
        let from = e.path();
        let to = dst.join(e.file_name());
        let ft = e.file_type().map_err(src_err(&from))?;
        if ft.is_dir() {
            std::fs::create_dir(&to).map_err(|source| DeployError::State {
                path: to.clone(),
                source,
            })?;
            copy_tree(&from, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(src_err(&from))?;
        } else if ft.is_symlink() {
            let target = std::fs::read_link(&from).map_err(src_err(&from))?;
            std::os::unix::fs::symlink(&target, &to).map_err(|source| DeployError::State {
                path: to.clone(),
                source,
            })?;
        } else {
            return Err(DeployError::Source {
                path: from,
                source: io::Error::new(
                    io::ErrorKind::Unsupported,
                    "special files (devices, fifos, sockets) cannot be deployed",
                ),
            });
        }
    }
    Ok(())
}

/// `n` random bytes as hex.
pub(crate) fn random_hex(n: usize) -> String {
    let mut b = vec![0u8; n];
    fill_random(&mut b);
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Fills `buf` from the kernel's random source.
pub(crate) fn fill_random(buf: &mut [u8]) {
    let mut off = 0;
    while off < buf.len() {
        match rustix::rand::getrandom(&mut buf[off..], rustix::rand::GetRandomFlags::empty()) {
            Ok(n) => off += n,
            Err(rustix::io::Errno::INTR) => {}
            // getrandom(2) cannot fail on Linux >= 3.17 once the pool is
            // initialised; fall back to the clock rather than panic.
            Err(_) => {
                let t = std::time::SystemTime::now()
                    .duration_since(std::time::UNIX_EPOCH)
                    .map_or(0, |d| d.as_nanos());
                for (i, x) in buf[off..].iter_mut().enumerate() {
                    *x = (t >> ((i % 16) * 8)) as u8;
                }
                return;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use faas_core::RuntimeKind;

    use super::*;

    fn make_fn(dir: &Path) {
        std::fs::write(dir.join("run"), "#!/bin/sh\n").unwrap();
        std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
        std::fs::create_dir(dir.join("data")).unwrap();
        std::fs::write(dir.join("data/x"), "x").unwrap();
        std::os::unix::fs::symlink("data/x", dir.join("link")).unwrap();
    }

    fn spec(name: &str, dir: &Path) -> FunctionSpec {
        FunctionSpec::new(name, RuntimeKind::Native, ImageRef::Dir(dir.into()), "run")
    }

    #[test]
    fn deploy_copies_versions_and_survives_reopen() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        make_fn(src.path());
        let r = Registry::open(state.path()).unwrap();
        let v1 = r.deploy(spec("f", src.path())).unwrap();
        let v2 = r.deploy(spec("f", src.path())).unwrap();
        assert_eq!((v1.version, v2.version), (1, 2));
        let root = v2.image.path();
        assert!(root.starts_with(state.path()));
        assert_eq!(std::fs::read(root.join("data/x")).unwrap(), b"x");
        assert_eq!(
            std::fs::read_link(root.join("link")).unwrap(),
            Path::new("data/x")
        );
        drop(r);
        let r = Registry::open(state.path()).unwrap();
        assert_eq!(r.get("f").unwrap().version, 2);
        assert_eq!(r.get_version("f", 1).unwrap().image, v1.image);
        assert_eq!(r.list().len(), 1);
        assert!(r.remove("f").unwrap());
        assert!(!r.remove("f").unwrap());
        assert!(r.get("f").is_none());
        assert!(!root.exists());
    }

    #[test]
    fn deploy_errors_name_the_input() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        let r = Registry::open(state.path()).unwrap();
        let e = r.deploy(spec("f", src.path())).unwrap_err().to_string();
        assert!(e.contains("\"run\"") && e.contains("no such file"), "{e}");
        std::fs::write(src.path().join("run"), "x").unwrap();
        let e = r.deploy(spec("f", src.path())).unwrap_err().to_string();
        assert!(e.contains("not executable"), "{e}");
        let e = r
            .deploy(spec("f", Path::new("/nonexistent/dir")))
            .unwrap_err()
            .to_string();
        assert!(e.contains("/nonexistent/dir"), "{e}");
        let e = r
            .deploy(spec("Bad Name", src.path()))
            .unwrap_err()
            .to_string();
        assert!(e.contains("invalid"), "{e}");
        assert!(r.list().is_empty());
    }
}
