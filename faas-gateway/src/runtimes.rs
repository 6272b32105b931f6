//! The language runtimes of a node (Python, Node.js): where their
//! interpreters and runtime scripts are, and the command, file layout and
//! environment an instance of a function starts with.
//!
//! ```text
//! Layout::Sandbox (PooledSandboxRuntime)          Layout::Host (ProcessRuntime)
//!   root  = the host's /, read-only                 root = /
//!   /var  = a read-only tmpfs holding only:         (no binds: host paths)
//!   /var/task    ← the version's code (ro bind)      --code <version dir>/root
//!   /var/runtime ← the runtime scripts (ro bind)     <scripts>/faas_runtime.py
//!   cwd   = /var/task                                cwd = the code directory
//!   interpreter /usr/bin/python3 | /usr/bin/node (a world-readable host path)
//! ```
//!
//! Native and exec functions are unchanged: their directory (or its image)
//! is the root and the handler the program. A version's faas-rofs image
//! is mounted where its directory would be bound; without the sandbox the
//! directory it was built from is used.

use std::path::{Path, PathBuf};

use faas_core::{FunctionSpec, ImageRef, Reuse, RuntimeKind};

/// Where the function's code appears inside a sandbox (Lambda's
/// `LAMBDA_TASK_ROOT`).
pub const TASK_DIR: &str = "/var/task";

/// Where the runtime scripts appear inside a sandbox (Lambda's
/// `LAMBDA_RUNTIME_DIR`).
pub const RUNTIME_DIR: &str = "/var/runtime";

/// One language runtime: an interpreter and the directory holding its faas
/// runtime script (`faas_runtime.py` / `faas_runtime.js`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuntimeCommand {
    /// The interpreter, an absolute host path that a sandbox's unprivileged
    /// uid can reach (`/usr/bin/python3`; not under `/root`).
    pub interpreter: PathBuf,
    /// The host directory of the runtime script.
    pub scripts: PathBuf,
}

/// The language runtimes a node offers; `None`: not offered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct RuntimeCommands {
    /// Python (`faas-guest/runtimes/python`).
    pub python: Option<RuntimeCommand>,
    /// Node.js (`faas-guest/runtimes/node`).
    pub node: Option<RuntimeCommand>,
}

/// Why a function's runtime cannot run on this node.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("runtime {runtime} is not available on this node: {why}")]
pub struct RuntimeUnavailable {
    /// The runtime.
    pub runtime: RuntimeKind,
    /// What is missing.
    pub why: String,
}

/// The script a runtime runs, inside its script directory.
pub(crate) fn script_name(kind: RuntimeKind) -> Option<&'static str> {
    match kind {
        RuntimeKind::Python => Some("faas_runtime.py"),
        RuntimeKind::Node => Some("faas_runtime.js"),
        RuntimeKind::Native | RuntimeKind::Exec => None,
    }
}

impl RuntimeCommands {
    /// The command of a language runtime (`None` for native and exec
    /// functions, or when not offered).
    pub fn get(&self, kind: RuntimeKind) -> Option<&RuntimeCommand> {
        match kind {
            RuntimeKind::Python => self.python.as_ref(),
            RuntimeKind::Node => self.node.as_ref(),
            RuntimeKind::Native | RuntimeKind::Exec => None,
        }
    }

    /// Checks that functions of `kind` can start here now: the interpreter
    /// and the runtime script exist. Native and exec functions always can.
    ///
    /// # Errors
    ///
    /// What is missing, as [`RuntimeUnavailable`].
    pub fn check(&self, kind: RuntimeKind) -> Result<&RuntimeCommand, RuntimeUnavailable> {
        let unavailable = |why: String| RuntimeUnavailable { runtime: kind, why };
        let Some(script) = script_name(kind) else {
            return Err(unavailable("it is not a language runtime".into()));
        };
        let cmd = self
            .get(kind)
            .ok_or_else(|| unavailable("the node offers no such runtime".into()))?;
        if !cmd.interpreter.is_file() {
            return Err(unavailable(format!(
                "{} not found",
                cmd.interpreter.display()
            )));
        }
        let script = cmd.scripts.join(script);
        if !script.is_file() {
            return Err(unavailable(format!(
                "its runtime script {} is missing",
                script.display()
            )));
        }
        Ok(cmd)
    }
}

/// Where the node's sandbox runtime lets a language runtime find its files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Layout {
    /// The sandbox honours `SandboxPolicy::binds` (`PooledSandboxRuntime`):
    /// the code at [`TASK_DIR`], the scripts at [`RUNTIME_DIR`], read-only.
    #[default]
    Sandbox,
    /// Host paths, no binds (`ProcessRuntime`, development only).
    Host,
}

/// How one instance of a function is started, apart from its limits and
/// fds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Command {
    pub root: ImageRef,
    pub program: PathBuf,
    pub args: Vec<String>,
    pub binds: Vec<(PathBuf, PathBuf)>,
    pub cwd: Option<PathBuf>,
    pub seccomp: &'static str,
}

/// The fds of an instance besides the ones its spec does not choose.
pub(crate) struct InstanceIo {
    pub channel: std::os::fd::OwnedFd,
    pub stdout: faas_core::Stdio,
    pub stderr: faas_core::Stdio,
}

impl Command {
    /// The sandbox spec of an instance of `spec` started by this command:
    /// cold, or restored from `snapshot`.
    pub(crate) fn into_spec(
        self,
        name: String,
        spec: &FunctionSpec,
        layout: Layout,
        snapshot: Option<&Path>,
        io: InstanceIo,
    ) -> faas_core::SandboxSpec {
        faas_core::SandboxSpec {
            name,
            root: self.root,
            program: self.program,
            args: self.args,
            env: instance_env(spec, layout),
            limits: spec.limits,
            start: if snapshot.is_some() {
                faas_core::StartMode::Restore
            } else {
                faas_core::StartMode::Cold
            },
            snapshot: snapshot.map(Path::to_path_buf),
            policy: faas_core::SandboxPolicy {
                seccomp: Some(self.seccomp.to_owned()),
                proc: false,
                binds: self.binds,
                cwd: self.cwd,
            },
            channel: io.channel,
            stdin: faas_core::Stdio::Null,
            stdout: io.stdout,
            stderr: io.stderr,
        }
    }
}

/// The command of an instance of `spec`; `snapshot` adds the Python
/// runtime's `--snapshot`.
///
/// # Errors
///
/// The function's language runtime is not available here.
pub(crate) fn command(
    spec: &FunctionSpec,
    runtimes: &RuntimeCommands,
    layout: Layout,
    snapshot: bool,
) -> Result<Command, RuntimeUnavailable> {
    let seccomp = match spec.runtime {
        RuntimeKind::Python => "python",
        RuntimeKind::Node => "node",
        RuntimeKind::Native | RuntimeKind::Exec => "native",
    };
    // Without the sandbox (no mounts), an image built at deploy is read
    // from the `root` directory it was built from.
    let image = match (layout, &spec.image) {
        (Layout::Host, ImageRef::Image(p)) if p.ends_with(crate::prepare::IMAGE_FILE) => {
            ImageRef::Dir(p.with_file_name("root"))
        }
        (_, image) => image.clone(),
    };
    let Some(script) = script_name(spec.runtime) else {
        return Ok(Command {
            root: image,
            program: spec.handler.clone().into(),
            args: Vec::new(),
            binds: Vec::new(),
            cwd: None,
            seccomp,
        });
    };
    let cmd = runtimes.check(spec.runtime)?;
    let code = image.path().to_path_buf();
    let (script, code_arg, binds, cwd) = match layout {
        Layout::Sandbox => (
            Path::new(RUNTIME_DIR).join(script),
            PathBuf::from(TASK_DIR),
            vec![
                (code, PathBuf::from(TASK_DIR)),
                (cmd.scripts.clone(), PathBuf::from(RUNTIME_DIR)),
            ],
            PathBuf::from(TASK_DIR),
        ),
        Layout::Host => (cmd.scripts.join(script), code.clone(), Vec::new(), code),
    };
    let mut args = vec![
        script.to_string_lossy().into_owned(),
        "--handler".to_owned(),
        spec.handler.clone(),
        "--code".to_owned(),
        code_arg.to_string_lossy().into_owned(),
    ];
    if snapshot {
        args.push("--snapshot".to_owned());
    }
    Ok(Command {
        root: ImageRef::Dir("/".into()),
        program: cmd.interpreter.clone(),
        args,
        binds,
        cwd: Some(cwd),
        seccomp,
    })
}

/// The complete environment of an instance of `spec` (launch and
/// snapshot alike, since a restored instance keeps the environment of the
/// checkpointed one): language runtimes get `PATH`, `LANG`, `TZ` and
/// `LAMBDA_RUNTIME_DIR` as on Lambda, then the function's own variables,
/// then the platform's `FAAS_*`, which the function cannot override.
pub(crate) fn instance_env(spec: &FunctionSpec, layout: Layout) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = Vec::new();
    let mut set = |k: &str, v: String| {
        env.retain(|(key, _)| key != k);
        env.push((k.to_owned(), v));
    };
    if script_name(spec.runtime).is_some() {
        set("PATH", "/usr/local/bin:/usr/bin:/bin".to_owned());
        set("LANG", "C.UTF-8".to_owned());
        set("TZ", ":UTC".to_owned());
        if layout == Layout::Sandbox {
            set("LAMBDA_RUNTIME_DIR", RUNTIME_DIR.to_owned());
        }
    }
    for (k, v) in &spec.env {
        set(k, v.clone());
    }
    set("FAAS_FUNCTION_NAME", spec.name.clone());
    set("FAAS_FUNCTION_VERSION", spec.version.to_string());
    set("FAAS_MEMORY_MB", spec.limits.memory_mb.to_string());
    set("FAAS_TIMEOUT_MS", spec.limits.timeout_ms.to_string());
    set(
        "FAAS_REUSE",
        match spec.reuse {
            Reuse::PerRequest => "per_request",
            Reuse::KeepAlive { .. } => "keep_alive",
        }
        .to_owned(),
    );
    env
}

#[cfg(test)]
mod tests {
    use super::*;

    fn python(dir: &Path) -> (FunctionSpec, RuntimeCommands) {
        std::fs::write(dir.join("faas_runtime.py"), "").unwrap();
        let spec = FunctionSpec::new(
            "f",
            RuntimeKind::Python,
            ImageRef::Dir("/state/f/1-ab/root".into()),
            "app.handler",
        );
        let rt = RuntimeCommands {
            python: Some(RuntimeCommand {
                interpreter: "/bin/sh".into(),
                scripts: dir.to_path_buf(),
            }),
            node: None,
        };
        (spec, rt)
    }

    #[test]
    fn python_runs_from_var_task_in_a_sandbox_and_host_paths_outside() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, rt) = python(dir.path());
        let c = command(&spec, &rt, Layout::Sandbox, true).unwrap();
        assert_eq!(c.root, ImageRef::Dir("/".into()));
        assert_eq!(c.program, Path::new("/bin/sh"));
        assert_eq!(
            c.args,
            [
                "/var/runtime/faas_runtime.py",
                "--handler",
                "app.handler",
                "--code",
                "/var/task",
                "--snapshot"
            ]
        );
        assert_eq!(
            c.binds,
            [
                ("/state/f/1-ab/root".into(), "/var/task".into()),
                (dir.path().to_path_buf(), "/var/runtime".into())
            ]
        );
        assert_eq!(c.cwd.as_deref(), Some(Path::new("/var/task")));
        assert_eq!(c.seccomp, "python");
        let h = command(&spec, &rt, Layout::Host, false).unwrap();
        assert!(h.binds.is_empty());
        assert_eq!(
            h.args[0],
            dir.path().join("faas_runtime.py").to_str().unwrap()
        );
        assert_eq!(h.args[4], "/state/f/1-ab/root");
        assert_eq!(h.cwd.as_deref(), Some(Path::new("/state/f/1-ab/root")));
    }

    #[test]
    fn a_missing_interpreter_is_named() {
        let dir = tempfile::tempdir().unwrap();
        let (spec, mut rt) = python(dir.path());
        rt.python.as_mut().unwrap().interpreter = "/nonexistent/python3".into();
        let e = command(&spec, &rt, Layout::Sandbox, false).unwrap_err();
        assert_eq!(
            e.to_string(),
            "runtime python is not available on this node: /nonexistent/python3 not found"
        );
        let e = rt.check(RuntimeKind::Node).unwrap_err();
        assert!(e.to_string().contains("runtime node"), "{e}");
    }

    #[test]
    fn the_platform_env_wins_over_the_functions() {
        let mut spec =
            FunctionSpec::new("f", RuntimeKind::Python, ImageRef::Dir("/x".into()), "a.b");
        spec.env.insert("FAAS_REUSE".into(), "keep_alive".into());
        spec.env.insert("LANG".into(), "de_DE.UTF-8".into());
        let env = instance_env(&spec, Layout::Sandbox);
        let get = |k: &str| {
            let v: Vec<_> = env.iter().filter(|(key, _)| key == k).collect();
            assert_eq!(v.len(), 1, "{k} set {} times", v.len());
            v[0].1.clone()
        };
        assert_eq!(get("FAAS_REUSE"), "per_request");
        assert_eq!(get("LANG"), "de_DE.UTF-8");
        assert_eq!(get("LAMBDA_RUNTIME_DIR"), "/var/runtime");
        assert_eq!(get("FAAS_FUNCTION_NAME"), "f");
    }
}
