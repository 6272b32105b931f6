//! Taking fd 3, the instance's end of the guest channel: the only `unsafe`
//! code of this crate.
//!
//! The node gateway hands the instance a connected `AF_UNIX` /
//! `SOCK_SEQPACKET` socket as fd 3 across `exec`. Before this module wraps
//! fd 3 in an [`OwnedFd`] it checks that it really is such a socket, so a
//! function started by hand (fd 3 closed, or some file the process opened
//! itself) fails with a clear message instead of owning an fd that is not
//! its own.

use std::fmt;
use std::os::fd::{BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};

use rustix::fs::FileType;
use rustix::io::{Errno, FdFlags};
use rustix::net::{AddressFamily, SocketType};

/// The fd number the gateway puts the channel on.
pub(crate) const GUEST_FD: RawFd = 3;

/// Set once fd 3 has been wrapped in an [`OwnedFd`].
static TAKEN: AtomicBool = AtomicBool::new(false);

/// Why fd 3 is not (or no longer) the guest channel.
#[derive(Debug)]
pub(crate) enum GuestFdError {
    /// This process already took fd 3.
    AlreadyTaken,
    /// Nothing is open on fd 3.
    NotOpen,
    /// fd 3 is open but is not a socket.
    NotASocket {
        /// What it is instead.
        file_type: FileType,
    },
    /// fd 3 is a socket of another address family.
    NotUnix {
        /// Its family.
        family: AddressFamily,
    },
    /// fd 3 is a Unix socket of another type.
    NotSeqpacket {
        /// Its type.
        socket_type: SocketType,
    },
    /// fd 3 is an unconnected socket.
    NotConnected,
    /// fd 3 has close-on-exec set: this process opened it itself (everything
    /// Rust opens is close-on-exec), it was not inherited from a gateway.
    NotInherited,
    /// A system call on fd 3 failed.
    Io {
        /// The call.
        op: &'static str,
        /// The cause.
        source: Errno,
    },
}

impl fmt::Display for GuestFdError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            GuestFdError::AlreadyTaken => write!(f, "this process already took fd {GUEST_FD}"),
            GuestFdError::NotOpen => write!(f, "fd {GUEST_FD} is not open"),
            GuestFdError::NotASocket { file_type } => {
                write!(f, "fd {GUEST_FD} is a {file_type:?}, not a socket")
            }
            GuestFdError::NotUnix { family } => {
                write!(
                    f,
                    "fd {GUEST_FD} is a socket of family {family:?}, not AF_UNIX"
                )
            }
            GuestFdError::NotSeqpacket { socket_type } => write!(
                f,
                "fd {GUEST_FD} is a Unix socket of type {socket_type:?}, not SOCK_SEQPACKET"
            ),
            GuestFdError::NotConnected => write!(f, "fd {GUEST_FD} is an unconnected socket"),
            GuestFdError::NotInherited => write!(
                f,
                "fd {GUEST_FD} has close-on-exec set, so this process opened it itself; \
                 it was not inherited from a gateway"
            ),
            GuestFdError::Io { op, source } => write!(f, "{op} on fd {GUEST_FD}: {source}"),
        }
    }
}

impl std::error::Error for GuestFdError {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            GuestFdError::Io { source, .. } => Some(source),
            _ => None,
        }
    }
}

/// Takes fd 3 as the guest channel's socket, at most once per process, and
/// sets close-on-exec on it so the function's own child processes do not
/// inherit the channel.
///
/// Call this before the process starts threads that open or close fds: a
/// thread that does so concurrently could change what fd 3 is between the
/// checks and the take.
///
/// # Errors
///
/// fd 3 was already taken, or it is not a connected, inherited `AF_UNIX`
/// `SOCK_SEQPACKET` socket.
pub(crate) fn take_guest_fd() -> Result<OwnedFd, GuestFdError> {
    if TAKEN
        .compare_exchange(false, true, Ordering::AcqRel, Ordering::Acquire)
        .is_err()
    {
        return Err(GuestFdError::AlreadyTaken);
    }
    // SAFETY: `borrow_raw` needs fd 3 to stay open for as long as the
    // `BorrowedFd` lives, which is only the call to `check` below; nothing in
    // this crate closes fd 3 (it has no owner yet: `TAKEN` was false). If fd 3
    // is not open, the system calls in `check` fail with EBADF and touch no
    // memory, and `check` reports `NotOpen` without the borrow escaping.
    let borrowed = unsafe { BorrowedFd::borrow_raw(GUEST_FD) };
    if let Err(e) = check(borrowed) {
        TAKEN.store(false, Ordering::Release);
        return Err(e);
    }
    // SAFETY: `check` established that fd 3 is open and is a connected
    // AF_UNIX/SOCK_SEQPACKET socket *without* close-on-exec. std and rustix
    // open every fd close-on-exec, so no `File`/`OwnedFd`/socket object of
    // this process owns it: it was inherited across exec from the gateway,
    // which gave it to us. `TAKEN` guarantees this is the only `OwnedFd`
    // ever made from it, so the `OwnedFd` is its sole owner and closes it
    // exactly once.
    let owned = unsafe { OwnedFd::from_raw_fd(GUEST_FD) };
    rustix::io::fcntl_setfd(&owned, FdFlags::CLOEXEC).map_err(|source| GuestFdError::Io {
        op: "fcntl(F_SETFD, FD_CLOEXEC)",
        source,
    })?;
    Ok(owned)
}

/// Checks that `fd` is an open, connected, inherited `AF_UNIX`
/// `SOCK_SEQPACKET` socket.
fn check(fd: BorrowedFd<'_>) -> Result<(), GuestFdError> {
    let io = |op: &'static str| move |source: Errno| GuestFdError::Io { op, source };
    let fd_flags = match rustix::io::fcntl_getfd(fd) {
        Ok(flags) => flags,
        Err(Errno::BADF) => return Err(GuestFdError::NotOpen),
        Err(e) => return Err(io("fcntl(F_GETFD)")(e)),
    };
    let st = rustix::fs::fstat(fd).map_err(io("fstat"))?;
    let file_type = FileType::from_raw_mode(st.st_mode);
    if file_type != FileType::Socket {
        return Err(GuestFdError::NotASocket { file_type });
    }
    let family = rustix::net::sockopt::socket_domain(fd).map_err(io("getsockopt(SO_DOMAIN)"))?;
    if family != AddressFamily::UNIX {
        return Err(GuestFdError::NotUnix { family });
    }
    let socket_type = rustix::net::sockopt::socket_type(fd).map_err(io("getsockopt(SO_TYPE)"))?;
    if socket_type != SocketType::SEQPACKET {
        return Err(GuestFdError::NotSeqpacket { socket_type });
    }
    match rustix::net::getpeername(fd) {
        Ok(_) => {}
        Err(Errno::NOTCONN) => return Err(GuestFdError::NotConnected),
        Err(e) => return Err(io("getpeername")(e)),
    }
    if fd_flags.contains(FdFlags::CLOEXEC) {
        return Err(GuestFdError::NotInherited);
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use std::os::fd::AsFd;

    use rustix::net::{SocketFlags, socketpair};

    use super::*;

    fn pair(socket_type: SocketType) -> (OwnedFd, OwnedFd) {
        socketpair(AddressFamily::UNIX, socket_type, SocketFlags::CLOEXEC, None).unwrap()
    }

    #[test]
    fn inherited_connected_seqpacket_socket_passes() {
        let (a, _b) = pair(SocketType::SEQPACKET);
        rustix::io::fcntl_setfd(&a, FdFlags::empty()).unwrap();
        check(a.as_fd()).unwrap();
    }

    #[test]
    fn close_on_exec_socket_was_not_inherited() {
        let (a, _b) = pair(SocketType::SEQPACKET);
        assert!(matches!(check(a.as_fd()), Err(GuestFdError::NotInherited)));
    }

    #[test]
    fn stream_socket_is_refused() {
        let (a, _b) = pair(SocketType::STREAM);
        let err = check(a.as_fd()).unwrap_err();
        assert!(
            matches!(err, GuestFdError::NotSeqpacket { socket_type } if socket_type == SocketType::STREAM),
            "{err:?}"
        );
        assert!(err.to_string().contains("not SOCK_SEQPACKET"), "{err}");
    }

    #[test]
    fn unconnected_seqpacket_socket_is_refused() {
        let s = rustix::net::socket(AddressFamily::UNIX, SocketType::SEQPACKET, None).unwrap();
        assert!(matches!(check(s.as_fd()), Err(GuestFdError::NotConnected)));
    }

    #[test]
    fn inet_socket_is_refused() {
        let s = rustix::net::socket(AddressFamily::INET, SocketType::DGRAM, None).unwrap();
        assert!(matches!(
            check(s.as_fd()),
            Err(GuestFdError::NotUnix { family }) if family == AddressFamily::INET
        ));
    }

    #[test]
    fn regular_file_is_refused() {
        let f = std::fs::File::open("/proc/self/exe")
            .or_else(|_| std::fs::File::open("/"))
            .unwrap();
        let err = check(f.as_fd()).unwrap_err();
        assert!(matches!(err, GuestFdError::NotASocket { .. }), "{err:?}");
        assert!(err.to_string().contains("not a socket"), "{err}");
    }
}
