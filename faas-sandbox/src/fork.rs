//! [`StartMode::Fork`](faas_core::StartMode::Fork) in the
//! [`PooledSandboxRuntime`](crate::PooledSandboxRuntime): one fork template
//! per snapshot and kind of sandbox, and instances that are its children.
//!
//! ```text
//! template sandbox (namespaces, root, caps dropped, cgroup; pid 1 = restorer)
//!   restorer: template plan ─▶ the whole process rebuilt, parked
//!     ◀── ForkCommand{FORK, fds 0-3} ── launch   ──▶ child pid + pidfd
//!     ◀── ForkCommand{REAP, pid}     ── wait/drop (after reading the
//!                                       zombie's exit status)
//! ```
//!
//! The template is the init of the sandbox's pid namespace, so its forks
//! are its own children, in its namespaces and cgroup: instances of one
//! function share that sandbox's memory, pids and CPU limits together,
//! its `/tmp` and its network namespace, and are isolated from each other
//! as processes only (separate address spaces, copy-on-write). Functions
//! are isolated from each other by the full sandbox.
//!
//! Exit statuses: a fork is not our child, so `waitid` cannot reap it. Its
//! pidfd becomes readable when it exits; the template reaps a child only
//! when told to, so the exit status is read from the zombie
//! (`/proc/PID/stat`, `exit_code`) and then the template is told to reap
//! it. When the template ends, the kernel kills and reaps every fork.

use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::path::Path;
use std::sync::Arc;

use faas_core::{BoxFuture, ExitStatus, Instance, LaunchError, LimitExceeded};
use parking_lot::Mutex;

use crate::runtime::SandboxInstance;
use crate::sys::ns;

/// A sandbox whose restorer restored a snapshot as a fork template and
/// serves forks on `socket`.
pub(crate) struct Template {
    /// The sandbox (its pid 1 is the template); locked for one fork at a
    /// time (a command and its answer).
    inst: Mutex<SandboxInstance>,
    socket: OwnedFd,
    /// OOM kills of the template's cgroup already given to a fork.
    ooms_told: Mutex<u64>,
}

/// Why a fork failed.
pub(crate) enum ForkError {
    /// The template is gone (or answers no more): make a new one.
    Gone(String),
    /// The template's `clone` failed (a pids limit, memory).
    Failed(io::Error),
}

impl Template {
    pub(crate) fn new(inst: SandboxInstance, socket: OwnedFd) -> Template {
        Template {
            inst: Mutex::new(inst),
            socket,
            ooms_told: Mutex::new(0),
        }
    }

    /// The template sandbox's pid.
    pub(crate) fn pid(&self) -> u32 {
        self.inst.lock().pid()
    }

    /// Whether the template still runs.
    pub(crate) fn alive(&self) -> bool {
        matches!(self.inst.lock().try_reap(), Ok(None))
    }

    /// A new instance: a child of the template with `fds` as its fds 0–3.
    pub(crate) fn fork(
        self: &Arc<Self>,
        fds: [BorrowedFd<'_>; 4],
    ) -> Result<ForkInstance, ForkError> {
        let mut inst = self.inst.lock();
        let gone = |inst: &mut SandboxInstance, e: &dyn std::fmt::Display| {
            let status = match inst.try_reap() {
                Ok(Some(s)) => format!("it ended ({s})"),
                _ => "it answers no more".to_owned(),
            };
            ForkError::Gone(format!(
                "the fork template (sandbox pid {}): {status}: {e}",
                inst.pid()
            ))
        };
        if let Ok(Some(_)) = inst.try_reap() {
            return Err(gone(&mut inst, &"before the fork"));
        }
        let (inner, pidfd) = match faas_snapshot::template_fork(&self.socket, fds) {
            Ok(got) => got,
            Err(e) if e.raw_os_error().is_some() => return Err(ForkError::Failed(e)),
            Err(e) => return Err(gone(&mut inst, &e)),
        };
        drop(inst);
        let mut fork = ForkInstance {
            template: self.clone(),
            pid: 0,
            inner,
            pidfd: Some(pidfd),
            afd: None,
            exit: None,
            killed: false,
            exceeded: None,
        };
        match fork.pidfd.as_ref().map(|fd| host_pid(fd.as_fd())) {
            Some(Ok(pid)) => fork.pid = pid,
            // Dropping it kills and reaps it.
            Some(Err(e)) => return Err(ForkError::Failed(e)),
            None => {}
        }
        Ok(fork)
    }

    /// Tells the template to reap its exited child `inner`.
    /// A fork ended by SIGKILL that no one here sent: if the forks'
    /// shared cgroup counts an OOM kill not yet given to a fork, it is this
    /// one's (the memory limit of the template, which all its forks share).
    fn take_oom(&self) -> Option<LimitExceeded> {
        let (kills, limit_mb) = self.inst.lock().oom_kills();
        let mut told = self.ooms_told.lock();
        (kills > *told).then(|| {
            *told += 1;
            LimitExceeded::Memory { limit_mb }
        })
    }

    fn reap(&self, inner: u32) {
        if let Err(e) = faas_snapshot::template_reap(&self.socket, inner) {
            // Gone: the kernel reaped its children with it.
            tracing::debug!(error = %e, "telling a fork template to reap a child failed");
        }
    }
}

/// A fork of a [`Template`], addressed by its pidfd.
pub(crate) struct ForkInstance {
    template: Arc<Template>,
    /// Its pid on the host.
    pid: u32,
    /// Its pid in the template's pid namespace.
    inner: u32,
    pidfd: Option<OwnedFd>,
    afd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    exit: Option<ExitStatus>,
    /// `kill` was called: a SIGKILL end is ours, not the OOM killer's.
    killed: bool,
    exceeded: Option<LimitExceeded>,
}

impl ForkInstance {
    fn fd(&self) -> Option<BorrowedFd<'_>> {
        self.pidfd
            .as_ref()
            .map(|f| f.as_fd())
            .or_else(|| self.afd.as_ref().map(|a| a.get_ref().as_fd()))
    }

    /// The exit status once it has exited (read from the zombie, which the
    /// template then reaps); `None` while it runs.
    fn try_status(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.exit {
            return Ok(Some(s));
        }
        let Some(fd) = self.fd() else {
            return Err(io::Error::other("the fork has no pidfd"));
        };
        let stat = std::fs::read_to_string(format!("/proc/{}/stat", self.pid));
        // Read while the pidfd still names a process: then the pid was
        // still ours (a zombie keeps its pid until it is reaped).
        let exists = ns::pidfd_exists(fd);
        let status = match stat {
            Ok(text) if exists => match zombie_status(&text) {
                Some(s) => s,
                None => return Ok(None),
            },
            _ => {
                return Err(io::Error::other(format!(
                    "fork pid {}: reaped by its ending template before its exit status was read",
                    self.pid
                )));
            }
        };
        self.exit = Some(status);
        if status == ExitStatus::Signal(libc::SIGKILL) && !self.killed {
            self.exceeded = self.template.take_oom();
        }
        self.template.reap(self.inner);
        Ok(Some(status))
    }
}

/// The exit status in a zombie's `/proc/PID/stat` (`exit_code`, field 52,
/// in `waitpid` form); `None` when the process is not a zombie.
pub(crate) fn zombie_status(stat: &str) -> Option<ExitStatus> {
    let rest = &stat[stat.rfind(')')? + 1..];
    let mut fields = rest.split_whitespace();
    if fields.next()? != "Z" {
        return None;
    }
    // Fields 4.. after the state; exit_code is field 52.
    let raw: i32 = fields.nth(52 - 4)?.parse().ok()?;
    Some(if raw & 0x7f == 0 {
        ExitStatus::Code((raw >> 8) & 0xff)
    } else {
        ExitStatus::Signal(raw & 0x7f)
    })
}

/// The host pid of the process of `pidfd` (`Pid:` in its fdinfo).
fn host_pid(pidfd: BorrowedFd<'_>) -> io::Result<u32> {
    let path = format!("/proc/self/fdinfo/{}", ns::raw(pidfd));
    let text = std::fs::read_to_string(&path)?;
    text.lines()
        .find_map(|l| l.strip_prefix("Pid:"))
        .and_then(|v| v.trim().parse::<i64>().ok())
        .and_then(|p| u32::try_from(p).ok())
        .filter(|&p| p > 0)
        .ok_or_else(|| io::Error::other(format!("{path}: no pid of a live fork")))
}

impl Instance for ForkInstance {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(async move {
            if let Some(s) = self.exit {
                return Ok(s);
            }
            if let Some(fd) = self.pidfd.take() {
                self.afd = Some(ns::register(fd)?);
            }
            loop {
                let Some(afd) = &self.afd else {
                    return Err(io::Error::other("the fork has no pidfd"));
                };
                // Readable once it has exited, child of ours or not.
                let mut g = afd.readable().await?;
                g.clear_ready();
                drop(g);
                if let Some(s) = self.try_status()? {
                    return Ok(s);
                }
            }
        })
    }

    fn kill(&mut self) -> io::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        self.killed = true;
        match self.fd() {
            Some(fd) => ns::pidfd_kill(fd, libc::SIGKILL),
            None => Ok(()),
        }
    }

    fn exceeded(&self) -> Option<LimitExceeded> {
        self.exceeded
    }
}

impl Drop for ForkInstance {
    fn drop(&mut self) {
        if self.exit.is_some() {
            return;
        }
        let _ = self.kill();
        // The template waits for it to die, then reaps it.
        self.template.reap(self.inner);
    }
}

/// The snapshot directory of a fork launch, or the clear error of a spec
/// without one.
pub(crate) fn fork_snapshot<'a>(
    name: &str,
    snapshot: Option<&'a Path>,
) -> Result<&'a Path, LaunchError> {
    snapshot.ok_or_else(|| LaunchError::Unsupported {
        name: name.to_owned(),
        runtime: "sandbox",
        what: "start mode fork without a snapshot (the spec's `snapshot` directory is missing)"
            .to_owned(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat(state: &str, exit_code: i32) -> String {
        // pid (comm with ) spaces) state, then fields 4..=51, then exit_code.
        let mut s = format!("42 (a b) c) {state}");
        for i in 4..52 {
            s.push_str(&format!(" {i}"));
        }
        s.push_str(&format!(" {exit_code}\n"));
        s
    }

    #[test]
    fn exit_status_of_a_zombie_comes_from_field_52() {
        assert_eq!(zombie_status(&stat("Z", 7 << 8)), Some(ExitStatus::Code(7)));
        assert_eq!(zombie_status(&stat("Z", 9)), Some(ExitStatus::Signal(9)));
        assert_eq!(zombie_status(&stat("Z", 0)), Some(ExitStatus::Code(0)));
        assert_eq!(zombie_status(&stat("S", 0)), None);
        assert_eq!(zombie_status("garbage"), None);
        assert_eq!(zombie_status("1 (x) Z 1 2"), None);
    }
}
