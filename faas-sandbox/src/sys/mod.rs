//! The only unsafe code of the crate: system calls that std and rustix do
//! not wrap (clone3 into namespaces, pivot_root, pidfds, setns, mounts) and
//! the work done in a child between clone and exec.

pub(crate) mod ns;
pub(crate) mod spawn;

use std::os::fd::{AsRawFd, BorrowedFd};
use std::os::unix::process::CommandExt;

/// Arranges for `channel` to be the child's fd 3, without close-on-exec.
///
/// The descriptor must stay open until the command is spawned.
pub(crate) fn channel_as_fd3(cmd: &mut std::process::Command, channel: BorrowedFd<'_>) {
    let raw = channel.as_raw_fd();
    // SAFETY: the closure runs in the child after fork, before exec. It only
    // calls dup2 and fcntl, which are async-signal-safe, touches no memory
    // shared with other threads and does not allocate. `raw` stays open in
    // the parent until spawn returns (the caller holds the OwnedFd), so it is
    // valid in the child.
    unsafe {
        cmd.pre_exec(move || {
            if raw != 3 && libc::dup2(raw, 3) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            // dup2 clears FD_CLOEXEC on the new fd, but not when raw == 3.
            if libc::fcntl(3, libc::F_SETFD, 0) < 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
}

/// Sends `SIGKILL` to process group `pgid`; a group that is gone is not an
/// error.
pub(crate) fn kill_group(pgid: u32) -> std::io::Result<()> {
    let Ok(pgid) = libc::pid_t::try_from(pgid) else {
        return Ok(());
    };
    if pgid <= 1 {
        return Ok(());
    }
    // SAFETY: kill(2) takes plain integers and touches no memory. A negative
    // pid addresses the process group we created for the instance
    // (process_group(0) makes the child its group leader).
    let rc = unsafe { libc::kill(-pgid, libc::SIGKILL) };
    if rc < 0 {
        let e = std::io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}
