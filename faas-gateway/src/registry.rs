//! [`Registry`]: deployed functions, their versions, and their files under
//! the state directory.
//!
//! ```text
//! STATE/functions/NAME/VERSION-DEPLOYID/spec.json   the spec as deployed
//! STATE/functions/NAME/VERSION-DEPLOYID/root/       a private copy of the function's directory
//! STATE/functions/NAME/VERSION-DEPLOYID/root.erofs  the same files as a faas-rofs image (sandbox nodes)
//! STATE/functions/NAME/VERSION-DEPLOYID/snapshot/   its snapshot, when one was taken
//! STATE/functions/NAME/aliases.json                 {"ALIAS": VERSION, ...}, replaced atomically
//! ```
//!
//! A deploy copies the user's directory, so later edits to it do not change
//! a deployed version, and writes the version directory atomically (rename
//! from a temporary name). The copy is readable by everyone (directories
//! 0755, files at least 0644): instances run as unprivileged uids. Every
//! version stays runnable until the function is deleted.
//!
//! A deploy is [`Registry::stage`] (the version directory is written under
//! its final name, not yet visible) then [`Registry::commit`] (its start
//! mode recorded, `spec.json` replaced atomically, the version visible),
//! so that a node can prepare the version in place (a snapshot) before any
//! request sees it; [`Registry::deploy`] does both.

use std::collections::{BTreeMap, HashMap};
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faas_core::{FunctionSpec, ImageRef, RuntimeKind, SpecError, StartMode};
use parking_lot::{Mutex, RwLock};

use crate::prepare::Prepared;

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
    /// The handler is missing: not an executable regular file (native,
    /// exec), or its module file does not exist (python, node).
    #[error("handler {handler:?} in {dir}: {why}")]
    Handler {
        /// The handler.
        handler: String,
        /// The function's directory.
        dir: PathBuf,
        /// What is wrong.
        why: String,
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

/// Why an alias cannot be set or deleted.
#[derive(Debug, thiserror::Error)]
pub enum AliasError {
    /// The alias name is not acceptable.
    #[error(
        "alias {0:?} is invalid: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit, not all digits and not \"latest\""
    )]
    Name(String),
    /// The function is not deployed.
    #[error("function {0:?} is not deployed")]
    NoFunction(String),
    /// The version does not exist.
    #[error("function {function:?} has no version {version}")]
    NoVersion {
        /// The function.
        function: String,
        /// The version asked for.
        version: u32,
    },
    /// The function has no such alias (to delete).
    #[error("function {function:?} has no alias {alias:?}")]
    NoAlias {
        /// The function.
        function: String,
        /// The alias.
        alias: String,
    },
    /// The aliases cannot be written.
    #[error("state directory {path}: {source}")]
    State {
        /// The file.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Which version of a function a request names: `NAME`, `NAME@latest`,
/// `NAME@VERSION` or `NAME@ALIAS`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// The latest version.
    Latest,
    /// A version number.
    Version(u32),
    /// An alias.
    Alias(String),
}

impl Target {
    /// Splits `NAME[@VERSION|@ALIAS]` into the name and the target.
    ///
    /// # Errors
    ///
    /// The part after `@` is empty, a number out of range, or not a valid
    /// alias name (a message naming it).
    pub fn parse(s: &str) -> Result<(&str, Target), String> {
        let Some((name, t)) = s.split_once('@') else {
            return Ok((s, Target::Latest));
        };
        let target = if t == "latest" {
            Target::Latest
        } else if !t.is_empty() && t.bytes().all(|b| b.is_ascii_digit()) {
            match t.parse::<u32>() {
                Ok(v) if v > 0 => Target::Version(v),
                _ => return Err(format!("version {t:?} of {name:?} is out of range")),
            }
        } else if valid_alias(t) {
            Target::Alias(t.to_owned())
        } else {
            return Err(format!(
                "{s:?}: after '@' give a version number or an alias (a-z, 0-9, '-', '_')"
            ));
        };
        Ok((name, target))
    }
}

/// Whether `alias` is a valid alias name: a valid function name that is not
/// a number and not `latest`.
pub fn valid_alias(alias: &str) -> bool {
    faas_core::types::valid_name(alias)
        && alias != "latest"
        && !alias.bytes().all(|b| b.is_ascii_digit())
}

/// Why a [`Target`] names no version.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ResolveError {
    /// The function is not deployed.
    #[error("function {0:?} is not deployed")]
    NoFunction(String),
    /// The function has no such version.
    #[error("function {function:?} has no version {version}")]
    NoVersion {
        /// The function.
        function: String,
        /// The version.
        version: u32,
    },
    /// The function has no such alias.
    #[error("function {function:?} has no alias {alias:?}")]
    NoAlias {
        /// The function.
        function: String,
        /// The alias.
        alias: String,
    },
}

#[derive(Default)]
struct Entry {
    versions: BTreeMap<u32, Arc<FunctionSpec>>,
    aliases: BTreeMap<String, u32>,
}

const ALIASES: &str = "aliases.json";

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
                    // An interrupted deploy or alias update: remove it.
                    let p = v.path();
                    let _ = std::fs::remove_dir_all(&p).or_else(|_| std::fs::remove_file(&p));
                    continue;
                }
                if !v.file_type().map_err(io_err(&v.path()))?.is_dir() {
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
            let path = fdir.join(ALIASES);
            match std::fs::read(&path) {
                Ok(bytes) => {
                    let aliases: BTreeMap<String, u32> =
                        serde_json::from_slice(&bytes).map_err(|source| OpenError::Spec {
                            path: path.clone(),
                            source,
                        })?;
                    if let Some(name) = f.file_name().to_str()
                        && let Some(e) = functions.get_mut(name)
                    {
                        e.aliases = aliases;
                    }
                }
                Err(e) if e.kind() == io::ErrorKind::NotFound => {}
                Err(e) => return Err(io_err(&path)(e)),
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

    /// Every version of `name`, oldest first (`None`: not deployed).
    pub fn versions(&self, name: &str) -> Option<Vec<Arc<FunctionSpec>>> {
        self.functions
            .read()
            .get(name)
            .map(|e| e.versions.values().cloned().collect())
    }

    /// The aliases of `name` and the versions they point at (`None`: not
    /// deployed).
    pub fn aliases(&self, name: &str) -> Option<BTreeMap<String, u32>> {
        self.functions.read().get(name).map(|e| e.aliases.clone())
    }

    /// The version of `name` that `target` names.
    ///
    /// # Errors
    ///
    /// The function, version or alias does not exist.
    pub fn resolve(&self, name: &str, target: &Target) -> Result<Arc<FunctionSpec>, ResolveError> {
        let fns = self.functions.read();
        let e = fns
            .get(name)
            .ok_or_else(|| ResolveError::NoFunction(name.to_owned()))?;
        let version = match target {
            Target::Latest => e.versions.last_key_value().map_or(0, |(v, _)| *v),
            Target::Version(v) => *v,
            Target::Alias(a) => *e.aliases.get(a).ok_or_else(|| ResolveError::NoAlias {
                function: name.to_owned(),
                alias: a.clone(),
            })?,
        };
        e.versions
            .get(&version)
            .cloned()
            .ok_or_else(|| match target {
                Target::Latest => ResolveError::NoFunction(name.to_owned()),
                _ => ResolveError::NoVersion {
                    function: name.to_owned(),
                    version,
                },
            })
    }

    /// Points `alias` of `name` at `version` (creating or moving it) and
    /// writes the function's aliases atomically. Blocking.
    ///
    /// # Errors
    ///
    /// See [`AliasError`]; nothing changes on error.
    pub fn set_alias(&self, name: &str, alias: &str, version: u32) -> Result<(), AliasError> {
        if !valid_alias(alias) {
            return Err(AliasError::Name(alias.to_owned()));
        }
        self.update_aliases(name, |e, aliases| {
            if !e.versions.contains_key(&version) {
                return Err(AliasError::NoVersion {
                    function: name.to_owned(),
                    version,
                });
            }
            aliases.insert(alias.to_owned(), version);
            Ok(())
        })
    }

    /// Deletes `alias` of `name` and writes the function's aliases
    /// atomically. Blocking.
    ///
    /// # Errors
    ///
    /// [`AliasError::NoFunction`], [`AliasError::NoAlias`] or
    /// [`AliasError::State`]; nothing changes on error.
    pub fn remove_alias(&self, name: &str, alias: &str) -> Result<(), AliasError> {
        self.update_aliases(name, |_, aliases| {
            aliases
                .remove(alias)
                .map(|_| ())
                .ok_or_else(|| AliasError::NoAlias {
                    function: name.to_owned(),
                    alias: alias.to_owned(),
                })
        })
    }

    /// Applies `change` to a copy of the aliases of `name`, writes the
    /// result (a temporary file renamed over `aliases.json`), then makes
    /// it current.
    fn update_aliases(
        &self,
        name: &str,
        change: impl FnOnce(&Entry, &mut BTreeMap<String, u32>) -> Result<(), AliasError>,
    ) -> Result<(), AliasError> {
        let _w = self.write.lock();
        let aliases = {
            let fns = self.functions.read();
            let e = fns
                .get(name)
                .ok_or_else(|| AliasError::NoFunction(name.to_owned()))?;
            let mut aliases = e.aliases.clone();
            change(e, &mut aliases)?;
            aliases
        };
        let fdir = self.dir.join(name);
        let path = fdir.join(ALIASES);
        let tmp = fdir.join(format!(".{ALIASES}.{}", random_hex(4)));
        let written = serde_json::to_vec_pretty(&aliases)
            .map_err(io::Error::from)
            .and_then(|json| {
                let mut f = std::fs::File::create(&tmp)?;
                io::Write::write_all(&mut f, &json)?;
                f.sync_all()
            })
            .and_then(|()| std::fs::rename(&tmp, &path));
        if let Err(source) = written {
            let _ = std::fs::remove_file(&tmp);
            return Err(AliasError::State { path, source });
        }
        if let Some(e) = self.functions.write().get_mut(name) {
            e.aliases = aliases;
        }
        Ok(())
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

    /// Deploys a new version of `spec.name` in cold mode: [`Registry::stage`]
    /// and [`Registry::commit`]. Blocking (file system work): call it from a
    /// blocking context.
    ///
    /// # Errors
    ///
    /// See [`DeployError`]; nothing is registered on error.
    pub fn deploy(&self, spec: FunctionSpec) -> Result<Arc<FunctionSpec>, DeployError> {
        let staged = self.stage(spec)?;
        self.commit(staged, &Prepared::default())
    }

    /// Writes a new version of `spec.name` without registering it:
    /// validates the spec, checks the handler, copies the function's
    /// directory into the state directory under the version's final name
    /// (with `spec.json` in cold mode). The platform decides the start mode
    /// (see [`FunctionSpec::start_request`] for the deployer's wish):
    /// `start` and `snapshot` of `spec` are reset. Blocking.
    ///
    /// # Errors
    ///
    /// See [`DeployError`]; nothing is left behind on error.
    pub fn stage(&self, mut spec: FunctionSpec) -> Result<Staged, DeployError> {
        spec.validate()?;
        if spec.start == StartMode::Fork && spec.start_request.is_none() {
            spec.start_request = Some(StartMode::Fork);
        }
        spec.start = StartMode::Cold;
        spec.snapshot = None;
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
        check_handler(&src, &spec)?;

        let _w = self.write.lock();
        let fdir = self.dir.join(&spec.name);
        // Above every registered version and every version directory
        // (staged ones are not registered yet).
        let registered = self
            .functions
            .read()
            .get(&spec.name)
            .and_then(|e| e.versions.last_key_value().map(|(v, _)| *v))
            .unwrap_or(0);
        let on_disk = std::fs::read_dir(&fdir)
            .into_iter()
            .flatten()
            .flatten()
            .filter_map(|e| {
                let name = e.file_name();
                name.to_str()?.split('-').next()?.parse::<u32>().ok()
            })
            .max()
            .unwrap_or(0);
        let version = registered.max(on_disk) + 1;
        spec.version = version;
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
            std::fs::set_permissions(&root, std::fs::Permissions::from_mode(0o755))
                .map_err(state_err(&root))?;
            copy_tree(&src, &root)?;
            // Mount points a sandbox needs when the directory is its root
            // (language runtimes have the host's / as root instead).
            if matches!(spec.runtime, RuntimeKind::Native | RuntimeKind::Exec) {
                for d in ["dev", "tmp", "proc"] {
                    let p = root.join(d);
                    if !p.exists() {
                        std::fs::create_dir(&p).map_err(state_err(&p))?;
                    }
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
        Ok(Staged { spec, dir: fin })
    }

    /// Registers a staged version as `prepared` it (start mode, snapshot,
    /// the image its sandboxes mount instead of the `root` directory):
    /// rewrites its `spec.json` atomically, then makes it the latest
    /// version. Blocking.
    ///
    /// # Errors
    ///
    /// The spec cannot be written (the function was deleted meanwhile, the
    /// disk is full); the version directory is removed.
    pub fn commit(
        &self,
        staged: Staged,
        prepared: &Prepared,
    ) -> Result<Arc<FunctionSpec>, DeployError> {
        let Staged { mut spec, dir } = staged;
        let _w = self.write.lock();
        if prepared.start != StartMode::Cold
            || prepared.snapshot.is_some()
            || prepared.image.is_some()
        {
            spec.start = prepared.start;
            spec.snapshot.clone_from(&prepared.snapshot);
            if let Some(image) = &prepared.image {
                spec.image = ImageRef::Image(image.clone());
            }
            let path = dir.join("spec.json");
            let tmp = dir.join(".spec.json.tmp");
            let written = serde_json::to_vec_pretty(&spec)
                .map_err(io::Error::from)
                .and_then(|json| std::fs::write(&tmp, json))
                .and_then(|()| std::fs::rename(&tmp, &path));
            if let Err(source) = written {
                let _ = std::fs::remove_dir_all(&dir);
                return Err(DeployError::State { path, source });
            }
        }
        let spec = Arc::new(spec);
        self.functions
            .write()
            .entry(spec.name.clone())
            .or_default()
            .versions
            .insert(spec.version, spec.clone());
        Ok(spec)
    }

    /// Forgets a staged version: removes its directory. Blocking.
    pub fn abandon(&self, staged: Staged) {
        let _w = self.write.lock();
        if let Err(e) = std::fs::remove_dir_all(&staged.dir) {
            tracing::warn!(dir = %staged.dir.display(), error = %e, "removing an abandoned version failed");
        }
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

/// A version written by [`Registry::stage`], not registered yet.
#[derive(Debug)]
pub struct Staged {
    spec: FunctionSpec,
    dir: PathBuf,
}

impl Staged {
    /// The spec with its version number and final image path.
    pub fn spec(&self) -> &FunctionSpec {
        &self.spec
    }

    /// The version directory (holding `root/` and `spec.json`).
    pub fn dir(&self) -> &Path {
        &self.dir
    }
}

/// Checks that the handler names something in `dir`: an executable
/// (native, exec), or the module file of `MODULE.FUNCTION` (python:
/// `MODULE.py` or a package, dots or slashes as separators; node:
/// `MODULE.js`, `.mjs`, `.cjs`, the bare file or a directory).
fn check_handler(dir: &Path, spec: &FunctionSpec) -> Result<(), DeployError> {
    let handler = spec.handler.as_str();
    let err = |why: String| DeployError::Handler {
        handler: handler.to_owned(),
        dir: dir.to_owned(),
        why,
    };
    let is_file = |p: &str| dir.join(p).is_file();
    match spec.runtime {
        RuntimeKind::Native | RuntimeKind::Exec => {
            let meta =
                std::fs::metadata(dir.join(handler)).map_err(|_| err("no such file".into()))?;
            if !meta.is_file() {
                return Err(err("not a regular file".into()));
            }
            if meta.permissions().mode() & 0o111 == 0 {
                return Err(err("not executable (chmod +x it)".into()));
            }
        }
        RuntimeKind::Python => {
            let Some((module, function)) = handler.rsplit_once('.') else {
                return Err(err(
                    "give MODULE.FUNCTION (lambda_function.lambda_handler)".into()
                ));
            };
            if module.is_empty() || function.is_empty() {
                return Err(err(
                    "give MODULE.FUNCTION (lambda_function.lambda_handler)".into()
                ));
            }
            let path = module.replace('.', "/");
            let found = is_file(&format!("{path}.py"))
                || is_file(&format!("{path}.pyc"))
                || is_file(&format!("{path}/__init__.py"))
                || extension_module(dir, &path);
            if !found {
                return Err(err(format!(
                    "no module file {path}.py (the handler is MODULE.FUNCTION; for {handler:?} the directory needs {path}.py)"
                )));
            }
        }
        RuntimeKind::Node => {
            // Lambda's rule: the module is everything up to the first dot
            // after the last slash; the rest is the (nested) export.
            let slash = handler.rfind('/').map_or(0, |i| i + 1);
            let Some(dot) = handler[slash..].find('.').map(|i| slash + i) else {
                return Err(err("give FILE.EXPORT (index.handler)".into()));
            };
            let module = &handler[..dot];
            if handler[slash..dot].is_empty() || handler.len() == dot + 1 {
                return Err(err("give FILE.EXPORT (index.handler)".into()));
            }
            let found = ["", ".js", ".mjs", ".cjs"]
                .iter()
                .any(|ext| is_file(&format!("{module}{ext}")))
                || dir.join(module).is_dir();
            if !found {
                return Err(err(format!(
                    "no module file {module}.js, {module}.mjs or {module}.cjs (the handler is FILE.EXPORT)"
                )));
            }
        }
    }
    Ok(())
}

/// Whether `dir` holds a compiled extension module `path.*.so`.
fn extension_module(dir: &Path, path: &str) -> bool {
    let p = dir.join(path);
    let (Some(parent), Some(stem)) = (p.parent(), p.file_name().and_then(|n| n.to_str())) else {
        return false;
    };
    std::fs::read_dir(parent)
        .into_iter()
        .flatten()
        .flatten()
        .any(|e| {
            e.file_name().to_str().is_some_and(|n| {
                n.strip_prefix(stem)
                    .is_some_and(|rest| rest.starts_with('.') && rest.ends_with(".so"))
            })
        })
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
            std::fs::set_permissions(&to, std::fs::Permissions::from_mode(0o755)).map_err(
                |source| DeployError::State {
                    path: to.clone(),
                    source,
                },
            )?;
            copy_tree(&from, &to)?;
        } else if ft.is_file() {
            std::fs::copy(&from, &to).map_err(src_err(&from))?;
            // Readable by the instances' unprivileged uids (executable for
            // them where it is for its owner).
            let mode = std::fs::metadata(&to)
                .map_err(src_err(&to))?
                .permissions()
                .mode();
            let readable =
                (mode & 0o7777 & !0o7000) | 0o444 | if mode & 0o100 != 0 { 0o111 } else { 0 };
            if readable != mode & 0o7777 {
                std::fs::set_permissions(&to, std::fs::Permissions::from_mode(readable)).map_err(
                    |source| DeployError::State {
                        path: to.clone(),
                        source,
                    },
                )?;
            }
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
///
/// The bytes come from the kernel's random source in blocks of
/// [`RANDOM_BLOCK`] kept per thread: a trace id per request costs no
/// system call (one `getrandom` per 16 ids).
pub(crate) fn random_hex(n: usize) -> String {
    const HEX: &[u8; 16] = b"0123456789abcdef";
    thread_local! {
        static POOL: std::cell::RefCell<([u8; RANDOM_BLOCK], usize)> =
            const { std::cell::RefCell::new(([0; RANDOM_BLOCK], RANDOM_BLOCK)) };
    }
    let mut out = String::with_capacity(2 * n);
    POOL.with_borrow_mut(|(block, used)| {
        for _ in 0..n {
            if *used == RANDOM_BLOCK {
                fill_random(block);
                *used = 0;
            }
            let b = block[*used];
            // Each byte is handed out once.
            block[*used] = 0;
            *used += 1;
            out.push(HEX[usize::from(b >> 4)] as char);
            out.push(HEX[usize::from(b & 15)] as char);
        }
    });
    out
}

/// Random bytes fetched from the kernel at once by [`random_hex`].
const RANDOM_BLOCK: usize = 256;

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
    use super::*;

    #[test]
    fn random_hex_ids_are_hex_and_distinct_across_refills() {
        // 100 ids of 16 bytes span several blocks of the per-thread pool.
        let ids: std::collections::HashSet<String> = (0..100).map(|_| random_hex(16)).collect();
        assert_eq!(ids.len(), 100);
        for id in &ids {
            assert_eq!(id.len(), 32);
            assert!(
                id.bytes()
                    .all(|b| b.is_ascii_hexdigit() && !b.is_ascii_uppercase())
            );
        }
    }

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
    fn language_handlers_name_a_module_file() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        std::fs::write(src.path().join("lambda_function.py"), "").unwrap();
        std::fs::create_dir_all(src.path().join("pkg/sub")).unwrap();
        std::fs::write(src.path().join("pkg/sub/mod.py"), "").unwrap();
        std::fs::write(src.path().join("index.mjs"), "").unwrap();
        let r = Registry::open(state.path()).unwrap();
        let lang = |runtime, handler: &str| {
            FunctionSpec::new("f", runtime, ImageRef::Dir(src.path().into()), handler)
        };
        let py = RuntimeKind::Python;
        for ok in [
            "lambda_function.lambda_handler",
            "pkg.sub.mod.fn",
            "pkg/sub/mod.fn",
        ] {
            r.deploy(lang(py, ok))
                .unwrap_or_else(|e| panic!("{ok}: {e}"));
        }
        let e = r.deploy(lang(py, "app.handler")).unwrap_err().to_string();
        assert!(e.contains("no module file app.py"), "{e}");
        let e = r.deploy(lang(py, "handler")).unwrap_err().to_string();
        assert!(e.contains("MODULE.FUNCTION"), "{e}");
        let v = r
            .deploy(lang(RuntimeKind::Node, "index.api.v1.handler"))
            .unwrap();
        // No sandbox mount points in a language runtime's code directory.
        assert!(!v.image.path().join("dev").exists());
        let e = r
            .deploy(lang(RuntimeKind::Node, "lib/main.handler"))
            .unwrap_err()
            .to_string();
        assert!(e.contains("no module file lib/main.js"), "{e}");
    }

    #[test]
    fn staged_versions_are_invisible_until_committed() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        make_fn(src.path());
        // A private file of the deployer becomes readable by instances.
        std::fs::write(src.path().join("secret"), "s").unwrap();
        std::fs::set_permissions(
            src.path().join("secret"),
            std::fs::Permissions::from_mode(0o600),
        )
        .unwrap();
        let r = Registry::open(state.path()).unwrap();
        let mut s = spec("f", src.path());
        s.start = StartMode::Restore;
        s.snapshot = Some("/elsewhere".into());
        let a = r.stage(s.clone()).unwrap();
        let b = r.stage(s).unwrap();
        // The platform decides the start mode, not the request.
        assert_eq!(
            (a.spec().start, a.spec().snapshot.as_ref()),
            (StartMode::Cold, None)
        );
        assert_eq!((a.spec().version, b.spec().version), (1, 2));
        assert_eq!(a.spec().start_request, None);
        // A wish for fork is kept apart, for the preparer to honour.
        let mut f = spec("f", src.path());
        f.start = StartMode::Fork;
        let c = r.stage(f).unwrap();
        assert_eq!(
            (c.spec().start, c.spec().start_request),
            (StartMode::Cold, Some(StartMode::Fork))
        );
        r.abandon(c);
        assert!(r.get("f").is_none());
        let mode = std::fs::metadata(a.dir().join("root/secret"))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o644);
        let b_dir = b.dir().to_path_buf();
        r.abandon(b);
        assert!(!b_dir.exists());
        let snap = a.dir().join("snapshot");
        let prepared = Prepared {
            start: StartMode::Restore,
            snapshot: Some(snap.clone()),
            ..Prepared::default()
        };
        let v1 = r.commit(a, &prepared).unwrap();
        assert_eq!(v1.snapshot.as_deref(), Some(snap.as_path()));
        drop(r);
        let r = Registry::open(state.path()).unwrap();
        let f = r.get("f").unwrap();
        assert_eq!((f.version, f.start), (1, StartMode::Restore));
        assert_eq!(f.snapshot.as_deref(), Some(snap.as_path()));
    }

    #[test]
    fn targets_parse_versions_aliases_and_latest() {
        assert_eq!(Target::parse("f"), Ok(("f", Target::Latest)));
        assert_eq!(Target::parse("f@latest"), Ok(("f", Target::Latest)));
        assert_eq!(Target::parse("f@12"), Ok(("f", Target::Version(12))));
        assert_eq!(
            Target::parse("f@prod-2"),
            Ok(("f", Target::Alias("prod-2".into())))
        );
        for bad in ["f@", "f@0", "f@99999999999", "f@Prod", "f@a@b", "f@-x"] {
            let e = Target::parse(bad).unwrap_err();
            assert!(
                e.contains(bad.split('@').nth(1).unwrap()) || e.contains(bad),
                "{bad}: {e}"
            );
        }
        assert!(valid_alias("prod") && valid_alias("v2") && valid_alias("2a"));
        for bad in ["", "latest", "12", "Prod", "a b", &"a".repeat(64)] {
            assert!(!valid_alias(bad), "{bad}");
        }
    }

    #[test]
    fn aliases_point_at_versions_persist_and_go_with_the_function() {
        let state = tempfile::tempdir().unwrap();
        let src = tempfile::tempdir().unwrap();
        make_fn(src.path());
        let r = Registry::open(state.path()).unwrap();
        assert!(matches!(
            r.set_alias("f", "prod", 1),
            Err(AliasError::NoFunction(_))
        ));
        r.deploy(spec("f", src.path())).unwrap();
        r.deploy(spec("f", src.path())).unwrap();
        assert!(matches!(
            r.set_alias("f", "latest", 1),
            Err(AliasError::Name(_))
        ));
        assert!(matches!(r.set_alias("f", "3", 1), Err(AliasError::Name(_))));
        assert!(matches!(
            r.set_alias("f", "prod", 3),
            Err(AliasError::NoVersion { version: 3, .. })
        ));
        r.set_alias("f", "prod", 1).unwrap();
        r.set_alias("f", "canary", 2).unwrap();
        assert_eq!(
            r.resolve("f", &Target::Alias("prod".into()))
                .unwrap()
                .version,
            1
        );
        r.set_alias("f", "prod", 2).unwrap();
        assert_eq!(
            r.resolve("f", &Target::Alias("prod".into()))
                .unwrap()
                .version,
            2
        );
        assert_eq!(r.resolve("f", &Target::Version(1)).unwrap().version, 1);
        assert_eq!(r.resolve("f", &Target::Latest).unwrap().version, 2);
        assert_eq!(
            r.resolve("f", &Target::Alias("beta".into())),
            Err(ResolveError::NoAlias {
                function: "f".into(),
                alias: "beta".into()
            })
        );
        assert_eq!(
            r.resolve("f", &Target::Version(9)),
            Err(ResolveError::NoVersion {
                function: "f".into(),
                version: 9
            })
        );
        assert_eq!(
            r.resolve("g", &Target::Latest),
            Err(ResolveError::NoFunction("g".into()))
        );
        drop(r);
        let r = Registry::open(state.path()).unwrap();
        let aliases = r.aliases("f").unwrap();
        assert_eq!(aliases.len(), 2);
        assert_eq!((aliases["prod"], aliases["canary"]), (2, 2));
        assert_eq!(r.versions("f").unwrap().len(), 2);
        // A third deploy is numbered past the alias file.
        assert_eq!(r.deploy(spec("f", src.path())).unwrap().version, 3);
        // Deleting an alias persists; a missing one is named.
        r.remove_alias("f", "canary").unwrap();
        assert!(matches!(
            r.remove_alias("f", "canary"),
            Err(AliasError::NoAlias { ref alias, .. }) if alias == "canary"
        ));
        assert!(matches!(
            r.remove_alias("g", "prod"),
            Err(AliasError::NoFunction(_))
        ));
        drop(r);
        let r = Registry::open(state.path()).unwrap();
        let aliases = r.aliases("f").unwrap();
        assert_eq!(aliases.keys().collect::<Vec<_>>(), ["prod"]);
        assert_eq!(
            r.resolve("f", &Target::Alias("canary".into())),
            Err(ResolveError::NoAlias {
                function: "f".into(),
                alias: "canary".into()
            })
        );
        assert!(r.remove("f").unwrap());
        r.deploy(spec("f", src.path())).unwrap();
        assert!(r.aliases("f").unwrap().is_empty());
        drop(r);
        let r = Registry::open(state.path()).unwrap();
        assert!(r.aliases("f").unwrap().is_empty());
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
