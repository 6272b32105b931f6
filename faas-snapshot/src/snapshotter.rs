//! [`PtraceSnapshotter`]: the [`Snapshotter`] over [`dump`] and [`Snapshot`].

use std::collections::HashMap;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use faas_core::{
    BoxFuture, Instance, RestoreSpec, SnapshotError, SnapshotInfo, Snapshotter, Stdio,
};
use parking_lot::Mutex;

use crate::dump::{DumpOptions, dump};
use crate::restore::{RestoreIo, Snapshot, dev_null};

/// Checkpoints with ptrace, restores with the in-process restorer.
///
/// Opened snapshots are cached by directory: the first restore checks the
/// snapshot against the host and builds its plan, later ones only start the
/// restorer. A checkpoint into a directory drops its cached snapshot.
#[derive(Debug, Default)]
pub struct PtraceSnapshotter {
    opened: Mutex<HashMap<PathBuf, Arc<Snapshot>>>,
}

impl PtraceSnapshotter {
    /// A snapshotter with an empty cache.
    pub fn new() -> Self {
        Self::default()
    }

    /// The opened snapshot in `dir`, from the cache or opened now.
    pub fn open(&self, dir: &Path) -> Result<Arc<Snapshot>, SnapshotError> {
        if let Some(s) = self.opened.lock().get(dir) {
            return Ok(s.clone());
        }
        let s = Arc::new(Snapshot::open(dir)?);
        self.opened.lock().insert(dir.to_path_buf(), s.clone());
        Ok(s)
    }
}

fn fd_of(s: Stdio) -> Result<Option<OwnedFd>, SnapshotError> {
    Ok(match s {
        Stdio::Fd(fd) => Some(fd),
        Stdio::Inherit => None,
        Stdio::Null => Some(dev_null()?),
    })
}

impl Snapshotter for PtraceSnapshotter {
    fn checkpoint<'a>(
        &'a self,
        pid: u32,
        dir: &'a Path,
    ) -> BoxFuture<'a, Result<SnapshotInfo, SnapshotError>> {
        Box::pin(async move {
            self.opened.lock().remove(dir);
            let owned = dir.to_path_buf();
            tokio::task::spawn_blocking(move || dump(pid, &owned, &DumpOptions::default()))
                .await
                .map_err(|e| SnapshotError::Sys {
                    op: "checkpoint task",
                    source: std::io::Error::other(e.to_string()),
                })?
        })
    }

    fn restore<'a>(
        &'a self,
        dir: &'a Path,
        spec: RestoreSpec,
    ) -> BoxFuture<'a, Result<Box<dyn Instance>, SnapshotError>> {
        Box::pin(async move {
            let snapshot = self.open(dir)?;
            let inherit = matches!(spec.stdin, Stdio::Inherit)
                || matches!(spec.stdout, Stdio::Inherit)
                || matches!(spec.stderr, Stdio::Inherit);
            let io = RestoreIo {
                stdin: fd_of(spec.stdin)?,
                stdout: fd_of(spec.stdout)?,
                stderr: fd_of(spec.stderr)?,
                channel: Some(spec.channel),
                inherit_stdio: inherit,
            };
            Ok(Box::new(snapshot.restore(io)?) as Box<dyn Instance>)
        })
    }

    /// [`crate::pages_at_exit`], on a thread of its own (the
    /// instance's tracer until it exits); `request` runs once it is
    /// attached, and the working set is written when it served.
    fn record_working_set<'a>(
        &'a self,
        pid: u32,
        dir: &'a Path,
        request: BoxFuture<'a, bool>,
    ) -> BoxFuture<'a, Result<u64, SnapshotError>> {
        Box::pin(async move {
            let (attached_tx, attached) = tokio::sync::oneshot::channel();
            let (done_tx, done) = tokio::sync::oneshot::channel();
            let owned = dir.to_path_buf();
            std::thread::Builder::new()
                .name("faas-working-set".into())
                .spawn(move || {
                    let r = crate::pages_at_exit(pid, &owned, || {
                        let _ = attached_tx.send(());
                    });
                    let _ = done_tx.send(r);
                })
                .map_err(|source| SnapshotError::Sys {
                    op: "start the working-set thread",
                    source,
                })?;
            let served = attached.await.is_ok() && request.await;
            let (ws, read) = done.await.map_err(|_| SnapshotError::Sys {
                op: "working-set thread",
                source: std::io::Error::other("it ended without an answer"),
            })??;
            if !served {
                return Err(SnapshotError::Invalid {
                    dir: dir.to_path_buf(),
                    what: "the instance did not serve its request: no working set recorded".into(),
                });
            }
            crate::write_both(&ws, &read, dir)?;
            Ok(ws.pages() + read.pages())
        })
    }
}
