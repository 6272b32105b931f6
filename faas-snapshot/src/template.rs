//! [`ForkTemplate`]: one restored instance kept parked; every new instance
//! is a fork of it.

use std::io;
use std::os::fd::{BorrowedFd, OwnedFd};
use std::path::PathBuf;

use faas_core::SnapshotError;
use parking_lot::Mutex;

use crate::plan::{self, ForkCommand};
use crate::restore::{RestoreIo, Restored, Snapshot, dev_null, send_with_fds};
use crate::sys;

/// The namespaces a fork of a template gets: pid, ipc, uts, mount and
/// network (a new network namespace has only a loopback that is down).
pub const FORK_NAMESPACES: u64 = (libc::CLONE_NEWPID
    | libc::CLONE_NEWIPC
    | libc::CLONE_NEWUTS
    | libc::CLONE_NEWNS
    | libc::CLONE_NEWNET) as u64;

/// A snapshot restored once and parked inside its restorer, right before
/// the guest would run. [`ForkTemplate::fork`] makes the template `fork`:
/// the child takes its fds 0–3, installs the snapshot's seccomp filter and
/// returns into the guest, sharing every page with the template
/// copy-on-write — no restore plan, no mapping work.
///
/// The children are children of this process (CLONE_PARENT): wait for them
/// through the returned [`Restored`]. Dropping the template ends it; its
/// children live on.
#[derive(Debug)]
pub struct ForkTemplate {
    dir: PathBuf,
    template: Restored,
    /// Our end of the template's command socket; one fork at a time.
    socket: Mutex<OwnedFd>,
}

impl ForkTemplate {
    /// Restores `snapshot` as a parked template (its fds 0–2 are
    /// /dev/null, it has no fd 3).
    pub fn new(snapshot: &Snapshot) -> Result<ForkTemplate, SnapshotError> {
        let io = RestoreIo {
            stdin: Some(dev_null()?),
            stdout: Some(dev_null()?),
            stderr: Some(dev_null()?),
            channel: None,
            inherit_stdio: false,
        };
        let (template, socket) = snapshot.start(&snapshot.template_plan(), &io)?;
        Ok(ForkTemplate {
            dir: snapshot.dir().to_path_buf(),
            template,
            socket: Mutex::new(socket),
        })
    }

    /// The template process's pid.
    pub fn pid(&self) -> u32 {
        self.template.pid()
    }

    /// A new instance: a fork of the template with `io` as fds 0–3 (the
    /// caller's own 0–2 where `io.inherit_stdio` and a field is None), in
    /// fresh namespaces ([`FORK_NAMESPACES`]) when `namespaces` is set.
    pub fn fork(&self, io: RestoreIo, namespaces: bool) -> Result<Restored, SnapshotError> {
        let fail = |what: String| SnapshotError::Invalid {
            dir: self.dir.clone(),
            what,
        };
        let (mask, fds) = io.fds();
        let flags = if namespaces { FORK_NAMESPACES } else { 0 };
        let socket = self.socket.lock();
        let (pid, pidfd) =
            request_fork(&socket, flags, mask, &fds).map_err(|e| match e.raw_os_error() {
                // The template's own fork failed.
                Some(_) => SnapshotError::Sys {
                    op: "fork the template",
                    source: e,
                },
                None => fail(format!("the fork template (pid {}): {e}", self.pid())),
            })?;
        drop(socket);
        Ok(Restored::new(pid, pidfd))
    }
}

/// Sends a template a [`ForkCommand`] and reads its answer: the child's pid
/// (as the template sees it) and pidfd.
fn request_fork(
    socket: &OwnedFd,
    clone_flags: u64,
    mask: u64,
    fds: &[BorrowedFd<'_>],
) -> io::Result<(u32, OwnedFd)> {
    let cmd = ForkCommand {
        clone_flags,
        fds: mask,
        kind: plan::FORK_CHILD,
        pid: 0,
    };
    send_with_fds(socket, sys::pod_bytes(&cmd), fds)
        .map_err(|e| io::Error::new(e.kind(), format!("it is gone: {e}")))?;
    let (pid, pidfd) =
        recv_reply(socket).map_err(|e| io::Error::new(e.kind(), format!("no answer: {e}")))?;
    match (pid, pidfd) {
        (p, Some(fd)) if p > 0 => Ok((p as u32, fd)),
        (p, _) if p < 0 => Err(io::Error::from_raw_os_error((-p) as i32)),
        _ => Err(io::Error::other("it answered without a child")),
    }
}

/// Asks the template whose command socket is `socket` (started with
/// [`Snapshot::send_template_plan`]) for a new instance with `io` as fds
/// 0–3, in its own namespaces. Returns the child's pid as the template sees
/// it and its pidfd.
///
/// Inside a sandbox the template is the init of the sandbox's pid
/// namespace: the child is the template's own child (in the template's
/// namespaces and cgroup), and stays a zombie after it exits until
/// [`template_reap`] names it, so its owner can read its exit status.
///
/// # Errors
///
/// The template is gone or could not fork.
pub fn template_fork(socket: &OwnedFd, io: [BorrowedFd<'_>; 4]) -> io::Result<(u32, OwnedFd)> {
    request_fork(socket, 0, 0b1111, &io)
}

/// Tells the template whose command socket is `socket` to reap its exited
/// child `pid` (the pid [`template_fork`] returned). No answer; a template
/// that does not own the child ignores it.
///
/// # Errors
///
/// The template is gone.
pub fn template_reap(socket: &OwnedFd, pid: u32) -> io::Result<()> {
    let cmd = ForkCommand {
        clone_flags: 0,
        fds: 0,
        kind: plan::REAP_CHILD,
        pid,
    };
    send_with_fds(socket, sys::pod_bytes(&cmd), &[])
}

/// The template's answer: the child's pid (or -errno) and its pidfd.
fn recv_reply(sock: &OwnedFd) -> io::Result<(i64, Option<OwnedFd>)> {
    use rustix::net::{RecvAncillaryBuffer, RecvAncillaryMessage, RecvFlags};
    let mut body = [0u8; 8];
    let mut space = [std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(1))];
    let mut control = RecvAncillaryBuffer::new(&mut space);
    let got = rustix::net::recvmsg(
        sock,
        &mut [io::IoSliceMut::new(&mut body)],
        &mut control,
        RecvFlags::CMSG_CLOEXEC,
    )?;
    if got.bytes != 8 {
        return Err(io::Error::new(
            io::ErrorKind::UnexpectedEof,
            "the template closed its socket",
        ));
    }
    let mut pidfd = None;
    for msg in control.drain() {
        if let RecvAncillaryMessage::ScmRights(fds) = msg {
            pidfd = fds.into_iter().next();
        }
    }
    Ok((i64::from_ne_bytes(body), pidfd))
}
