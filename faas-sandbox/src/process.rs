//! [`ProcessRuntime`]: instances as plain child processes. Not isolated.

use std::io;
use std::os::fd::AsFd;
use std::os::unix::process::{CommandExt, ExitStatusExt};
use std::path::Path;

use faas_core::{
    BoxFuture, ExitStatus, ImageRef, Instance, LaunchError, SandboxRuntime, SandboxSpec, StartMode,
    Stdio,
};

use crate::sys;

/// Starts each instance as a plain child process of the caller.
///
/// **Not isolated — for development only.** The function runs with the
/// caller's user, file system, network and privileges; nothing stops it from
/// reading or changing the host. Use it to develop functions and the
/// platform on machines without namespaces; production nodes use the
/// sandboxed runtime.
///
/// What it does: the root must be a directory ([`ImageRef::Dir`]); the
/// program (relative to the root) is executed with the root as working
/// directory (or the policy's `cwd`, a host path here), exactly `spec.env`
/// as environment, `spec.channel` as fd 3, and
/// in a process group of its own so that killing the instance kills
/// everything it started. Only [`StartMode::Cold`] is supported, and no
/// read-only binds (`SandboxPolicy::binds`): it cannot remap paths.
#[derive(Debug, Default, Clone, Copy)]
pub struct ProcessRuntime;

impl ProcessRuntime {
    /// The runtime.
    pub fn new() -> Self {
        ProcessRuntime
    }
}

fn stdio(s: Stdio) -> std::process::Stdio {
    match s {
        Stdio::Null => std::process::Stdio::null(),
        Stdio::Inherit => std::process::Stdio::inherit(),
        Stdio::Fd(fd) => std::process::Stdio::from(fd),
    }
}

impl SandboxRuntime for ProcessRuntime {
    fn name(&self) -> &'static str {
        "process"
    }

    fn launch(&self, spec: SandboxSpec) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>> {
        Box::pin(async move { launch(spec).map(|i| Box::new(i) as Box<dyn Instance>) })
    }
}

fn launch(spec: SandboxSpec) -> Result<ProcessInstance, LaunchError> {
    let root = match &spec.root {
        ImageRef::Dir(d) => d.clone(),
        ImageRef::Image(p) => {
            return Err(LaunchError::Unsupported {
                name: spec.name,
                runtime: "process",
                what: format!("image roots ({}); use a directory", p.display()),
            });
        }
    };
    if !spec.policy.binds.is_empty() {
        return Err(LaunchError::Unsupported {
            name: spec.name,
            runtime: "process",
            what: "read-only binds (it does not isolate: run with host paths)".to_owned(),
        });
    }
    if spec.start != StartMode::Cold {
        return Err(LaunchError::Unsupported {
            name: spec.name,
            runtime: "process",
            what: format!("start mode {}", spec.start.as_str()),
        });
    }
    let program = root.join(strip_root(&spec.program));
    let mut cmd = std::process::Command::new(&program);
    cmd.args(&spec.args)
        .env_clear()
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .current_dir(spec.policy.cwd.as_deref().unwrap_or(&root))
        .process_group(0)
        .stdin(stdio(spec.stdin))
        .stdout(stdio(spec.stdout))
        .stderr(stdio(spec.stderr));
    sys::channel_as_fd3(&mut cmd, spec.channel.as_fd());
    let mut cmd = tokio::process::Command::from(cmd);
    cmd.kill_on_drop(true);
    let child = cmd.spawn().map_err(|source| LaunchError::Program {
        name: spec.name.clone(),
        program: program.clone(),
        source,
    })?;
    // The child has its copy; ours must close so that the gateway sees EOF
    // when the instance exits.
    drop(spec.channel);
    let pid = child.id().unwrap_or(0);
    tracing::debug!(instance = %spec.name, pid, program = %program.display(), "launched");
    Ok(ProcessInstance { child, pid })
}

fn strip_root(p: &Path) -> &Path {
    p.strip_prefix("/").unwrap_or(p)
}

/// A child process started by [`ProcessRuntime`].
#[derive(Debug)]
struct ProcessInstance {
    child: tokio::process::Child,
    pid: u32,
}

impl Instance for ProcessInstance {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(async move {
            let st = self.child.wait().await?;
            Ok(match (st.code(), st.signal()) {
                (Some(c), _) => ExitStatus::Code(c),
                (None, Some(s)) => ExitStatus::Signal(s),
                (None, None) => ExitStatus::Code(-1),
            })
        })
    }

    fn kill(&mut self) -> io::Result<()> {
        // Only while the leader is not reaped is its pid (= the group id)
        // guaranteed to still name our group.
        if self.child.id().is_some() {
            sys::kill_group(self.pid)?;
        }
        Ok(())
    }
}

impl Drop for ProcessInstance {
    fn drop(&mut self) {
        if let Err(e) = self.kill() {
            tracing::warn!(pid = self.pid, error = %e, "killing instance on drop failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::os::unix::fs::PermissionsExt;

    use faas_core::Limits;
    use faas_core::protocol::channel_pair;

    use super::*;

    fn script(dir: &Path, name: &str, body: &str) {
        let p = dir.join(name);
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "#!/bin/sh\n{body}").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    fn spec(dir: &Path, program: &str) -> (SandboxSpec, std::os::fd::OwnedFd) {
        let (ours, theirs) = channel_pair().unwrap();
        (
            SandboxSpec {
                name: "t".into(),
                root: ImageRef::Dir(dir.into()),
                program: program.into(),
                args: vec![],
                env: vec![("GREETING".into(), "hi".into())],
                limits: Limits::default(),
                start: StartMode::Cold,
                snapshot: None,
                policy: faas_core::SandboxPolicy::default(),
                channel: theirs,
                stdin: Stdio::Null,
                stdout: Stdio::Null,
                stderr: Stdio::Inherit,
            },
            ours,
        )
    }

    #[tokio::test]
    async fn child_sees_channel_on_fd3_env_and_cwd() {
        let d = tempfile::tempdir().unwrap();
        // Writes to fd 3 (the channel) and exits with a code derived from
        // the environment and the working directory.
        script(
            d.path(),
            "f",
            r#"printf '%s' "$GREETING" >&3 || exit 9
               [ -f ./f ] || exit 8
               [ -z "$HOME" ] || exit 7
               exit 3"#,
        );
        let (s, ours) = spec(d.path(), "f");
        let mut inst = ProcessRuntime.launch(s).await.unwrap();
        assert_eq!(inst.wait().await.unwrap(), ExitStatus::Code(3));
        let mut buf = [0u8; 16];
        let n = rustix_read(&ours, &mut buf);
        assert_eq!(&buf[..n], b"hi");
    }

    fn rustix_read(fd: &std::os::fd::OwnedFd, buf: &mut [u8]) -> usize {
        let mut f = std::fs::File::from(fd.try_clone().unwrap());
        std::io::Read::read(&mut f, buf).unwrap()
    }

    #[tokio::test]
    async fn kill_ends_the_whole_group() {
        let d = tempfile::tempdir().unwrap();
        script(d.path(), "f", "sleep 30 & sleep 30");
        let (s, _ours) = spec(d.path(), "f");
        let mut inst = ProcessRuntime.launch(s).await.unwrap();
        inst.kill().unwrap();
        assert_eq!(inst.wait().await.unwrap(), ExitStatus::Signal(9));
        inst.kill().unwrap(); // idempotent after exit
    }

    #[tokio::test]
    async fn missing_program_is_a_clear_error() {
        let d = tempfile::tempdir().unwrap();
        let (s, _ours) = spec(d.path(), "nope");
        let e = ProcessRuntime.launch(s).await.err().unwrap();
        let msg = e.to_string();
        assert!(
            msg.contains("cannot execute") && msg.contains("nope"),
            "{msg}"
        );
    }

    #[tokio::test]
    async fn image_roots_and_restore_are_refused() {
        let d = tempfile::tempdir().unwrap();
        let (mut s, _ours) = spec(d.path(), "f");
        s.start = StartMode::Restore;
        let e = ProcessRuntime.launch(s).await.err().unwrap();
        assert!(e.to_string().contains("start mode restore"), "{e}");
    }
}
