//! The [`SandboxRuntime`] trait: bringing up instances.

use std::fmt;
use std::io;
use std::os::fd::OwnedFd;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::BoxFuture;
use crate::types::{ImageRef, Limits, StartMode};

/// Where one of an instance's standard streams goes.
#[derive(Debug, Default)]
pub enum Stdio {
    /// `/dev/null`.
    #[default]
    Null,
    /// The launching process's own stream.
    Inherit,
    /// This fd (a pipe to a log collector, a file, ...).
    Fd(OwnedFd),
}

/// Everything needed to launch one instance.
#[derive(Debug)]
pub struct SandboxSpec {
    /// A name for logs and errors (function name and instance number).
    pub name: String,
    /// The function's files.
    pub root: ImageRef,
    /// The program to run, relative to the root.
    pub program: PathBuf,
    /// Arguments after the program name.
    pub args: Vec<String>,
    /// The complete environment of the instance.
    pub env: Vec<(String, String)>,
    /// Resource limits.
    pub limits: Limits,
    /// How to bring the instance up.
    pub start: StartMode,
    /// The snapshot directory to restore when `start` is
    /// [`StartMode::Restore`].
    pub snapshot: Option<PathBuf>,
    /// Isolation choices beyond the limits.
    pub policy: SandboxPolicy,
    /// The instance's end of the guest channel; it becomes fd 3.
    pub channel: OwnedFd,
    /// fd 0.
    pub stdin: Stdio,
    /// fd 1.
    pub stdout: Stdio,
    /// fd 2.
    pub stderr: Stdio,
}

/// Isolation choices of one instance.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct SandboxPolicy {
    /// Seccomp profile: `native`, `python`, `node` or a path to a JSON
    /// profile; `None` lets the runtime choose by the function's runtime kind.
    pub seccomp: Option<String>,
    /// Mount a fresh procfs of the sandbox's own pid namespace at `/proc`.
    pub proc: bool,
    /// Read-only bind mounts, `(host directory, path inside)`: each host
    /// directory appears read-only (and nosuid, nodev) at its inside path,
    /// an absolute path of at least two components (`/var/task`). The
    /// first component (`/var`) must be a directory of the root; inside the
    /// sandbox it is replaced by an empty read-only tmpfs that holds only
    /// the binds' mount points, so the root's own files there are hidden
    /// and nothing is created on the host. Runtimes that cannot isolate
    /// (`ProcessRuntime`) refuse binds.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub binds: Vec<(PathBuf, PathBuf)>,
    /// The working directory inside the sandbox (default `/`), also the
    /// one a restored process finds itself in.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cwd: Option<PathBuf>,
}

/// A resource limit that ended or hampered an instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LimitExceeded {
    /// The kernel's OOM killer ended it at the memory limit.
    Memory {
        /// The limit in MiB.
        limit_mb: u32,
    },
    /// It tried to create more processes than allowed.
    Pids {
        /// The limit.
        limit: u32,
    },
}

impl fmt::Display for LimitExceeded {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LimitExceeded::Memory { limit_mb } => {
                write!(f, "memory limit of {limit_mb} MiB exceeded (OOM-killed)")
            }
            LimitExceeded::Pids { limit } => write!(f, "process limit of {limit} reached"),
        }
    }
}

/// How an instance ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ExitStatus {
    /// It exited with this code.
    Code(i32),
    /// It was killed by this signal.
    Signal(i32),
}

impl ExitStatus {
    /// Whether it exited with code 0.
    pub fn success(self) -> bool {
        self == ExitStatus::Code(0)
    }
}

impl fmt::Display for ExitStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExitStatus::Code(c) => write!(f, "status {c}"),
            ExitStatus::Signal(s) => {
                let name = match s {
                    4 => " (SIGILL)",
                    6 => " (SIGABRT)",
                    7 => " (SIGBUS)",
                    9 => " (SIGKILL)",
                    11 => " (SIGSEGV)",
                    15 => " (SIGTERM)",
                    31 => " (SIGSYS)",
                    _ => "",
                };
                write!(f, "signal {s}{name}")
            }
        }
    }
}

/// Why an instance could not be launched.
#[derive(Debug, thiserror::Error)]
pub enum LaunchError {
    /// The program is missing or not executable.
    #[error("instance {name}: cannot execute {program}: {source}")]
    Program {
        /// Instance name.
        name: String,
        /// The program path.
        program: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
    /// The runtime cannot do what the spec asks.
    #[error("instance {name}: {runtime} does not support {what}")]
    Unsupported {
        /// Instance name.
        name: String,
        /// The runtime's name.
        runtime: &'static str,
        /// The unsupported request.
        what: String,
    },
    /// A system call of the launch failed.
    #[error("instance {name}: {op}: {source}")]
    Sys {
        /// Instance name.
        name: String,
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A running instance: a process (tree) the runtime launched.
///
/// Dropping an instance kills it.
pub trait Instance: Send + Sync {
    /// The process id of its first process, as the host sees it.
    fn pid(&self) -> u32;

    /// Waits until it has exited and been reaped.
    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>>;

    /// Sends `SIGKILL` (idempotent; no error once it has exited).
    ///
    /// # Errors
    ///
    /// The kill failed for another reason than the process being gone.
    fn kill(&mut self) -> io::Result<()>;

    /// After [`Instance::wait`]: the resource limit that killed or hampered
    /// the instance, if the runtime enforces and observes limits.
    fn exceeded(&self) -> Option<LimitExceeded> {
        None
    }
}

/// Launches instances from [`SandboxSpec`]s.
///
/// # Example
///
/// A runtime for environments that cannot run anything refuses every launch:
///
/// ```
/// use faas_core::{BoxFuture, Instance, LaunchError, SandboxRuntime, SandboxSpec};
///
/// struct Refuse;
///
/// impl SandboxRuntime for Refuse {
///     fn name(&self) -> &'static str { "refuse" }
///     fn launch(&self, spec: SandboxSpec)
///         -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>>
///     {
///         Box::pin(async move {
///             Err(LaunchError::Unsupported {
///                 name: spec.name, runtime: "refuse", what: "launching".into(),
///             })
///         })
///     }
/// }
///
/// let rt: &dyn SandboxRuntime = &Refuse;
/// assert_eq!(rt.name(), "refuse");
/// ```
pub trait SandboxRuntime: Send + Sync {
    /// A short name for logs and metrics.
    fn name(&self) -> &'static str;

    /// Launches an instance: it runs `spec.program` with `spec.channel` as
    /// fd 3 and the given standard streams.
    fn launch(&self, spec: SandboxSpec) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>>;

    /// Forgets what the runtime keeps for files that are going away (a
    /// deleted function version's image, code and snapshot, named by
    /// `paths` or directories above them): whatever it prepared ahead for
    /// them ends, its mounts of them go. Running instances are not
    /// touched. A later launch naming them starts from nothing. The
    /// default keeps nothing, so forgets nothing.
    fn forget(&self, paths: &[&std::path::Path]) {
        let _ = paths;
    }

    /// Calls `each` with the runtime's counters, for metrics: monotonic
    /// counts of how launches were served (from which pool) and of what
    /// its pools did, by name (`launch_resumed`, `netns_reused`, ...).
    /// The default has none.
    fn counters(&self, each: &mut dyn FnMut(&'static str, u64)) {
        let _ = each;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn SandboxRuntime, _: &dyn Instance) {}

    #[test]
    fn exit_status_reads_like_a_shell() {
        assert_eq!(ExitStatus::Code(3).to_string(), "status 3");
        assert_eq!(ExitStatus::Signal(9).to_string(), "signal 9 (SIGKILL)");
        assert!(ExitStatus::Code(0).success());
        assert!(!ExitStatus::Signal(15).success());
    }
}
