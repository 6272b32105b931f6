//! Network namespaces, pidfds and image mounts.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

fn cvt(rc: libc::c_int) -> io::Result<libc::c_int> {
    if rc < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(rc)
    }
}

/// Opens a namespace file (`/proc/thread-self/ns/net`, ...).
pub(crate) fn open_ns(path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: open of a NUL-terminated path; we own the returned fd.
    let fd = cvt(unsafe { libc::open(path.as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) })?;
    // SAFETY: fd was just returned by open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// Opens a directory as an `O_PATH` fd (to come back to with `fchdir`).
pub(crate) fn open_dir(path: &std::ffi::CStr) -> io::Result<OwnedFd> {
    // SAFETY: open of a NUL-terminated path; we own the returned fd.
    let fd = cvt(unsafe {
        libc::open(
            path.as_ptr(),
            libc::O_PATH | libc::O_DIRECTORY | libc::O_CLOEXEC,
        )
    })?;
    // SAFETY: fd was just returned by open and is owned by no one else.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

thread_local! {
    /// Whether this thread has filesystem attributes (root, working
    /// directory) of its own, which `setns` into a mount namespace needs.
    static OWN_FS: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Moves the calling thread into the mount namespace `fd` (its root and
/// working directory become the namespace's root). The thread gets
/// filesystem attributes of its own first, once; come back with
/// [`leave_mount_ns`].
pub(crate) fn enter_mount_ns(fd: BorrowedFd<'_>) -> io::Result<()> {
    if !OWN_FS.get() {
        // SAFETY: unshare(CLONE_FS) gives only the calling thread a copy of
        // its root, working directory and umask.
        cvt(unsafe { libc::unshare(libc::CLONE_FS) })?;
        OWN_FS.set(true);
    }
    // SAFETY: setns on a valid namespace fd affects only the calling thread
    // (whose filesystem attributes are its own).
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNS) }).map(drop)
}

/// Brings the calling thread back into the mount namespace `host`, the
/// root directory `root` and the working directory `cwd` after
/// [`enter_mount_ns`] (`setns` leaves it at the namespace's root: a process
/// running in a chroot would otherwise leave it on this thread).
pub(crate) fn leave_mount_ns(
    host: BorrowedFd<'_>,
    root: BorrowedFd<'_>,
    cwd: BorrowedFd<'_>,
) -> io::Result<()> {
    // SAFETY: as in `enter_mount_ns`; fchdir on valid directory fds and
    // chroot of the working directory, all for the calling thread only.
    unsafe {
        cvt(libc::setns(host.as_raw_fd(), libc::CLONE_NEWNS))?;
        cvt(libc::fchdir(root.as_raw_fd()))?;
        cvt(libc::chroot(c".".as_ptr()))?;
        cvt(libc::fchdir(cwd.as_raw_fd())).map(drop)
    }
}

/// Moves the calling thread into the network namespace `fd`.
pub(crate) fn setns_net(fd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: setns on a valid namespace fd affects only the calling thread.
    cvt(unsafe { libc::setns(fd.as_raw_fd(), libc::CLONE_NEWNET) }).map(drop)
}

/// Creates a network namespace with loopback up and returns it as an fd.
/// The calling thread ends up inside it: call it on a thread reserved for
/// that.
pub(crate) fn new_netns_on_this_thread() -> io::Result<OwnedFd> {
    // SAFETY: unshare(CLONE_NEWNET) affects only the calling thread's
    // namespaces.
    cvt(unsafe { libc::unshare(libc::CLONE_NEWNET) })?;
    loopback_up()?;
    open_ns(c"/proc/thread-self/ns/net")
}

fn loopback_up() -> io::Result<()> {
    // SAFETY: a plain socket(2) call; we own the result.
    let s = cvt(unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) })?;
    // SAFETY: s is a fresh fd owned by no one else.
    let s = unsafe { OwnedFd::from_raw_fd(s) };
    // SAFETY: ifreq is plain old data; all-zero is a valid value.
    let mut ifr: libc::ifreq = unsafe { std::mem::zeroed() };
    for (d, b) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
        *d = *b as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS/SIOCSIFFLAGS read and write the ifreq we own.
    unsafe {
        cvt(libc::ioctl(s.as_raw_fd(), libc::SIOCGIFFLAGS, &raw mut ifr))?;
        ifr.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        cvt(libc::ioctl(s.as_raw_fd(), libc::SIOCSIFFLAGS, &raw mut ifr))?;
    }
    Ok(())
}

/// Sends `signal` through a pidfd; a process that is gone is not an error.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>, signal: libc::c_int) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    if rc < 0 {
        let e = io::Error::last_os_error();
        if e.raw_os_error() != Some(libc::ESRCH) {
            return Err(e);
        }
    }
    Ok(())
}

/// How a reaped process ended.
pub(crate) enum Reaped {
    Exited(i32),
    Signaled(i32),
    /// Not exited yet.
    Running,
}

/// Reaps the process of `pidfd` if it has exited (`WNOHANG`).
pub(crate) fn pidfd_try_reap(pidfd: BorrowedFd<'_>) -> io::Result<Reaped> {
    const P_PIDFD: libc::idtype_t = 3;
    // SAFETY: siginfo_t is plain old data; zeroed is valid and lets us tell
    // "not exited" (si_pid stays 0) from a reaped child.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid on a valid pidfd writing into our siginfo_t.
    cvt(unsafe {
        libc::waitid(
            P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &raw mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    })?;
    // SAFETY: after a successful waitid the pid and status fields are set
    // (or si_pid is 0 when nothing was reaped).
    let (pid, status) = unsafe { (info.si_pid(), info.si_status()) };
    if pid == 0 {
        return Ok(Reaped::Running);
    }
    Ok(if info.si_code == libc::CLD_EXITED {
        Reaped::Exited(status)
    } else {
        Reaped::Signaled(status)
    })
}

/// Mounts an EROFS image file read-only at `dir` (file-backed, no loop
/// device).
pub(crate) fn mount_erofs(image: &CString, dir: &CString) -> io::Result<()> {
    // SAFETY: mount(2) with NUL-terminated strings we own.
    cvt(unsafe {
        libc::mount(
            image.as_ptr(),
            dir.as_ptr(),
            c"erofs".as_ptr(),
            libc::MS_RDONLY | libc::MS_NODEV | libc::MS_NOSUID,
            std::ptr::null(),
        )
    })
    .map(drop)
}

/// Detaches the mount at `dir`.
pub(crate) fn umount_detach(dir: &CString) -> io::Result<()> {
    // SAFETY: umount2 of a NUL-terminated path we own.
    cvt(unsafe { libc::umount2(dir.as_ptr(), libc::MNT_DETACH) }).map(drop)
}

/// The raw number of an fd, for the child plan.
pub(crate) fn raw(fd: BorrowedFd<'_>) -> RawFd {
    fd.as_raw_fd()
}

/// Registers an owned fd (a pidfd) with the current tokio reactor.
pub(crate) fn register(fd: OwnedFd) -> io::Result<tokio::io::unix::AsyncFd<OwnedFd>> {
    // SAFETY: an `OwnedFd` is a valid open descriptor that nothing else
    // closes; `AsyncFd` owns it from here on and `as_raw_fd` always returns
    // the same number, so it stays open and names the same file for the
    // whole registration.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

/// The effective uid of this process.
pub(crate) fn euid() -> u32 {
    // SAFETY: geteuid cannot fail and touches no memory.
    unsafe { libc::geteuid() }
}

/// Binds `src` (only its own mount, not the ones below it) read-only,
/// nosuid, nodev at `dst`, in this process's mount namespace.
pub(crate) fn bind_ro(src: &CString, dst: &CString) -> io::Result<()> {
    // SAFETY: mount(2) with NUL-terminated strings we own.
    unsafe {
        cvt(libc::mount(
            src.as_ptr(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND,
            std::ptr::null(),
        ))?;
        if let Err(e) = cvt(libc::mount(
            std::ptr::null(),
            dst.as_ptr(),
            std::ptr::null(),
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV,
            std::ptr::null(),
        )) {
            libc::umount2(dst.as_ptr(), libc::MNT_DETACH);
            return Err(e);
        }
    }
    Ok(())
}

/// Borrows a raw fd number that the caller keeps open for the borrow's
/// (short) lifetime.
pub(crate) fn borrow_raw_fd<'a>(fd: RawFd) -> BorrowedFd<'a> {
    // SAFETY: callers pass fds they hold open (the spec's stdio and channel,
    // or /dev/null) for the duration of the single call that uses the
    // borrow; fd numbers 0-2 are this process's standard streams.
    unsafe { BorrowedFd::borrow_raw(fd) }
}

/// Whether the process of `pidfd` still exists (running, or a zombie not
/// reaped yet).
pub(crate) fn pidfd_exists(pidfd: BorrowedFd<'_>) -> bool {
    // SAFETY: pidfd_send_signal with a valid pidfd, signal 0 (a check
    // only) and no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            0,
            std::ptr::null::<libc::siginfo_t>(),
            0,
        )
    };
    rc == 0
}
