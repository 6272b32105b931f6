//! `faas snapshot dump|restore|inspect`: checkpoint a process, restore it.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Context;
use clap::{Args, Subcommand};
use faas_core::ExitStatus;
use faas_snapshot::{DumpOptions, RestoreIo, Snapshot};

/// `faas snapshot ...`
#[derive(Args)]
pub(crate) struct SnapshotArgs {
    #[command(subcommand)]
    command: SnapshotCommand,
}

#[derive(Subcommand)]
enum SnapshotCommand {
    /// Checkpoint a running or stopped process (single-threaded, fds 0-3
    /// only). A process that stopped itself with SIGSTOP is the simple way to
    /// say "ready"; it is left stopped (or killed with --kill).
    Dump {
        /// The process.
        #[arg(long)]
        pid: u32,
        /// The snapshot directory to write.
        #[arg(short = 'o', long = "out")]
        out: PathBuf,
        /// Kill the process after the checkpoint.
        #[arg(long)]
        kill: bool,
    },
    /// Restore a snapshot with this command's stdin, stdout and stderr as
    /// fds 0-2; it continues from where it stopped, and this command exits
    /// with its exit status (128+signal when it was killed).
    Restore {
        /// The snapshot directory.
        dir: PathBuf,
    },
    /// Print a snapshot's areas and sizes.
    Inspect {
        /// The snapshot directory.
        dir: PathBuf,
    },
}

/// Runs the command; returns the exit code for `restore`, 0 otherwise.
pub(crate) fn run(args: SnapshotArgs) -> anyhow::Result<i32> {
    match args.command {
        SnapshotCommand::Dump { pid, out, kill } => {
            let started = Instant::now();
            let info = faas_snapshot::dump(pid, &out, &DumpOptions { kill })?;
            eprintln!(
                "checkpointed process {pid} into {} in {:.1} ms: {} pages saved, {} KiB written{}",
                info.dir.display(),
                started.elapsed().as_secs_f64() * 1e3,
                info.pages,
                info.bytes / 1024,
                if kill { "; process killed" } else { "" }
            );
            Ok(0)
        }
        SnapshotCommand::Restore { dir } => {
            // One restore and done: no restorer started ahead for a next one.
            faas_snapshot::set_restorer_pool_size(0);
            let snapshot = Snapshot::open(&dir)?;
            let mut child = snapshot
                .restore(RestoreIo {
                    inherit_stdio: true,
                    ..RestoreIo::default()
                })
                .with_context(|| format!("restoring {}", dir.display()))?;
            let status = child
                .wait_blocking()
                .context("waiting for the restored process")?;
            Ok(match status {
                ExitStatus::Code(c) => c,
                ExitStatus::Signal(s) => 128 + s,
            })
        }
        SnapshotCommand::Inspect { dir } => {
            outln!("{}", faas_snapshot::inspect(&dir)?.trim_end_matches('\n'));
            Ok(0)
        }
    }
}
