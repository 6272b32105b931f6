//! Starting the restorer: `clone(CLONE_VM | CLONE_VFORK | CLONE_PIDFD)` and
//! `execveat` of the embedded restorer, with descriptors 0–4 in place.

use std::ffi::CStr;
use std::io;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};
use std::sync::atomic::{AtomicI32, Ordering};

/// A started restorer.
#[derive(Debug)]
pub(crate) struct Child {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
}

/// What the child needs; lives on the parent's stack, which the vfork child
/// shares (CLONE_VM) while the parent is suspended.
struct Args<'a> {
    exe: RawFd,
    /// Source descriptor for each of fds 0..=4 (-1: closed).
    fds: [RawFd; 5],
    cwd: Option<&'a CStr>,
    /// errno of the failed step, written by the child before it exits.
    error: AtomicI32,
}

/// Starts the restorer (`exe`, an executable memfd) with `fds[i]` as its
/// descriptor `i` (None: closed) and `cwd` as working directory.
pub(crate) fn spawn(
    exe: BorrowedFd<'_>,
    fds: [Option<BorrowedFd<'_>>; 5],
    cwd: Option<&CStr>,
) -> io::Result<Child> {
    let args = Args {
        exe: exe.as_raw_fd(),
        fds: fds.map(|f| f.map_or(-1, |f| f.as_raw_fd())),
        cwd,
        error: AtomicI32::new(0),
    };
    let mut stack = vec![0u8; 32 * 1024];
    // SAFETY: the stack grows down; its top is 16-byte aligned (the Vec is
    // 32 KiB from an allocator that aligns to at least 16 for this size,
    // and we round down anyway).
    let top = unsafe { stack.as_mut_ptr().add(stack.len()) } as usize & !15;
    let mut pidfd: libc::c_int = -1;

    // Block every signal so no handler of ours runs on the child's borrowed
    // stack; the restorer starts with them blocked too (the guest's own mask
    // comes back with its signal frame).
    // SAFETY: sigset_t is plain data; sigfillset/pthread_sigmask write only
    // the locals passed.
    let mut all: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    let mut old: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: as above.
    unsafe {
        libc::sigfillset(&mut all);
        libc::pthread_sigmask(libc::SIG_SETMASK, &all, &mut old);
    }
    // SAFETY: CLONE_VM | CLONE_VFORK: the child runs `child` on `stack`
    // while this thread is suspended until it execs or exits, so `args` and
    // `stack` outlive it. `child` only makes async-signal-safe system calls
    // and writes the atomic in `args`. CLONE_PIDFD stores the pidfd in
    // `pidfd`.
    let pid = unsafe {
        libc::clone(
            child,
            top as *mut libc::c_void,
            libc::CLONE_VM | libc::CLONE_VFORK | libc::CLONE_PIDFD | libc::SIGCHLD,
            (&raw const args).cast_mut().cast(),
            &raw mut pidfd,
        )
    };
    let clone_err = io::Error::last_os_error();
    // SAFETY: restores the mask saved above.
    unsafe { libc::pthread_sigmask(libc::SIG_SETMASK, &old, std::ptr::null_mut()) };
    drop(stack);
    if pid < 0 {
        return Err(io::Error::new(
            clone_err.kind(),
            format!("clone: {clone_err}"),
        ));
    }
    // SAFETY: CLONE_PIDFD gave us a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    let errno = args.error.load(Ordering::Acquire);
    if errno != 0 {
        // The child has exited (status 127); reap it.
        let mut status = 0;
        // SAFETY: waitpid writes the status to the local.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        let e = io::Error::from_raw_os_error(errno);
        return Err(io::Error::new(
            e.kind(),
            format!("starting the restorer: {e}"),
        ));
    }
    Ok(Child {
        pid: pid as u32,
        pidfd,
    })
}

extern "C" fn child(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` points to the parent's `Args`, alive while we run.
    let args = unsafe { &*arg.cast::<Args<'_>>() };
    let fail = |e: libc::c_int| -> libc::c_int {
        args.error.store(e.max(1), Ordering::Release);
        // SAFETY: _exit ends the child without running anything of the
        // parent's (atexit handlers, buffers).
        unsafe { libc::_exit(127) }
    };
    let errno = || {
        io::Error::last_os_error()
            .raw_os_error()
            .unwrap_or(libc::EIO)
    };
    // Move the executable and every source out of the way first, so that
    // dup2 into 0..=4 (or closing one of them) never hits a descriptor still
    // needed.
    // SAFETY: fcntl on a descriptor number.
    let exe = unsafe { libc::fcntl(args.exe, libc::F_DUPFD_CLOEXEC, 16) };
    if exe < 0 {
        return fail(errno());
    }
    let mut moved = [-1; 5];
    for (i, &src) in args.fds.iter().enumerate() {
        if src >= 0 {
            // SAFETY: fcntl on a descriptor number.
            let fd = unsafe { libc::fcntl(src, libc::F_DUPFD_CLOEXEC, 16) };
            if fd < 0 {
                return fail(errno());
            }
            moved[i] = fd;
        }
    }
    for (i, &src) in moved.iter().enumerate() {
        let target = i as libc::c_int;
        // SAFETY: dup2/close on descriptor numbers; dup2 clears FD_CLOEXEC
        // on the target.
        let rc = unsafe {
            if src >= 0 {
                libc::dup2(src, target)
            } else {
                libc::close(target);
                0
            }
        };
        if rc < 0 {
            return fail(errno());
        }
    }
    if let Some(cwd) = args.cwd {
        // SAFETY: chdir reads the NUL-terminated path.
        if unsafe { libc::chdir(cwd.as_ptr()) } < 0 {
            return fail(errno());
        }
    }
    let argv: [*const libc::c_char; 2] = [c"faas-restorer".as_ptr(), std::ptr::null()];
    let envp: [*const libc::c_char; 1] = [std::ptr::null()];
    // SAFETY: execveat with an executable descriptor, an empty path and
    // AT_EMPTY_PATH; argv and envp are NULL-terminated arrays of C strings
    // that live on this stack.
    unsafe {
        libc::syscall(
            libc::SYS_execveat,
            exe,
            c"".as_ptr(),
            argv.as_ptr(),
            envp.as_ptr(),
            libc::AT_EMPTY_PATH,
        );
    }
    fail(errno())
}

/// Sends SIGKILL through a pidfd; a process that is gone is not an error.
pub(crate) fn pidfd_kill(pidfd: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: pidfd_send_signal with a pidfd, a signal and no siginfo.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            libc::SIGKILL,
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

/// Reaps the process behind `pidfd` if it has exited: its raw wait status.
pub(crate) fn pidfd_try_wait(pidfd: BorrowedFd<'_>) -> io::Result<Option<i32>> {
    // SAFETY: siginfo_t is plain data; waitid fills it.
    let mut info: libc::siginfo_t = unsafe { std::mem::zeroed() };
    // SAFETY: waitid(P_PIDFD) writes only `info`.
    let rc = unsafe {
        libc::waitid(
            libc::P_PIDFD,
            pidfd.as_raw_fd() as libc::id_t,
            &mut info,
            libc::WEXITED | libc::WNOHANG,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: after a successful waitid the pid and status fields are valid;
    // pid 0 means nothing was reaped (WNOHANG).
    let (pid, code, status) = unsafe { (info.si_pid(), info.si_code, info.si_status()) };
    if pid == 0 {
        return Ok(None);
    }
    Ok(Some(if code == libc::CLD_EXITED {
        (status & 0xff) << 8
    } else {
        status & 0x7f
    }))
}
