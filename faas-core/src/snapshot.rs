//! The [`Snapshotter`] trait: checkpoint a process, restore it.

use std::io;
use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::BoxFuture;
use crate::sandbox::{Instance, Stdio};
use std::os::fd::OwnedFd;

/// What a checkpoint wrote.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SnapshotInfo {
    /// The snapshot directory.
    pub dir: PathBuf,
    /// Memory pages saved.
    pub pages: u64,
    /// Bytes written in total.
    pub bytes: u64,
}

/// What a restored process gets.
#[derive(Debug)]
pub struct RestoreSpec {
    /// A name for logs and errors.
    pub name: String,
    /// The new guest channel; it becomes fd 3.
    pub channel: OwnedFd,
    /// fd 0.
    pub stdin: Stdio,
    /// fd 1.
    pub stdout: Stdio,
    /// fd 2.
    pub stderr: Stdio,
}

/// Why a checkpoint or restore failed.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotError {
    /// The process cannot be checkpointed as it is.
    #[error("process {pid} cannot be checkpointed: {why}")]
    NotSnapshotReady {
        /// The process.
        pid: u32,
        /// Why (threads, open fds, ...).
        why: String,
    },
    /// The snapshot directory cannot be used: damaged, from an incompatible
    /// host, or not writable.
    #[error("snapshot {dir}: {what}")]
    Invalid {
        /// The snapshot.
        dir: PathBuf,
        /// What is wrong.
        what: String,
    },
    /// A system call failed.
    #[error("{op}: {source}")]
    Sys {
        /// The operation.
        op: &'static str,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// Checkpoints a running process to a snapshot directory and restores new
/// processes from it.
///
/// # Example
///
/// A snapshotter for hosts without ptrace refuses both operations:
///
/// ```
/// use std::path::Path;
/// use faas_core::{BoxFuture, Instance, RestoreSpec, SnapshotError, SnapshotInfo, Snapshotter};
///
/// struct Unavailable;
///
/// impl Snapshotter for Unavailable {
///     fn checkpoint<'a>(&'a self, pid: u32, _dir: &'a Path)
///         -> BoxFuture<'a, Result<SnapshotInfo, SnapshotError>>
///     {
///         Box::pin(async move {
///             Err(SnapshotError::NotSnapshotReady { pid, why: "ptrace is unavailable".into() })
///         })
///     }
///     fn restore<'a>(&'a self, dir: &'a Path, _spec: RestoreSpec)
///         -> BoxFuture<'a, Result<Box<dyn Instance>, SnapshotError>>
///     {
///         Box::pin(async move {
///             Err(SnapshotError::Invalid { dir: dir.into(), what: "restore is unavailable".into() })
///         })
///     }
/// }
///
/// let s: &dyn Snapshotter = &Unavailable;
/// let _ = s;
/// ```
pub trait Snapshotter: Send + Sync {
    /// Checkpoints process `pid` (stopped at its snapshot point) into `dir`.
    fn checkpoint<'a>(
        &'a self,
        pid: u32,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<SnapshotInfo, SnapshotError>>;

    /// Restores a new process from the snapshot in `dir`.
    fn restore<'a>(
        &'a self,
        dir: &'a Path,
        spec: RestoreSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, SnapshotError>>;

    /// Records the working set of the snapshot in `dir`: the pages of the
    /// snapshot's memory that process `pid`, a running instance restored
    /// from it, writes until it exits while `request` runs (`request`
    /// hands it one request and then closes its channel, so it exits; it
    /// answers whether the instance served the request: only then is the
    /// working set recorded). Instances restored ahead of their request then take those page
    /// faults before the request comes rather than while serving it.
    /// Returns the number of pages recorded.
    ///
    /// The default only runs `request` and records nothing (0 pages).
    ///
    /// # Errors
    ///
    /// The process cannot be watched, it was killed, or the working set
    /// cannot be written.
    fn record_working_set<'a>(
        &'a self,
        pid: u32,
        dir: &'a Path,
        request: BoxFuture<'a, bool>,
    ) -> BoxFuture<'a, Result<u64, SnapshotError>> {
        let _ = (pid, dir);
        Box::pin(async move {
            let _ = request.await;
            Ok(0)
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Snapshotter) {}
}
