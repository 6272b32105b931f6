//! The probe's raw system calls: all of its unsafe code. Each returns the
//! kernel's answer; the caller turns it into the report.

use std::ffi::CStr;

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// Forks, runs `f` in the child and exits with its result; returns the
/// child's wait status, or what failed and its errno.
pub(crate) fn in_child(f: fn() -> i32) -> Result<libc::c_int, (&'static str, i32)> {
    // SAFETY: the probe is single-threaded, so the child may run any code;
    // it leaves with _exit, never returning into the parent's stack frames.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return Err(("FORK", last_errno()));
    }
    if pid == 0 {
        let code = f();
        // SAFETY: _exit ends the child without running the parent's atexit
        // handlers or flushing its buffers twice.
        unsafe { libc::_exit(code) };
    }
    let mut status = 0;
    // SAFETY: `status` is a valid out-pointer; `pid` is our own child.
    let rc = unsafe { libc::waitpid(pid, &mut status, 0) };
    if rc < 0 {
        return Err(("WAIT", last_errno()));
    }
    Ok(status)
}

/// getpid under its x32 ABI number (the x32 bit set).
pub(crate) fn x32_getpid() -> libc::c_long {
    let nr = 0x4000_0000 | libc::SYS_getpid;
    // SAFETY: getpid takes no arguments and touches no memory; under the x32
    // ABI number it is the same call.
    unsafe { libc::syscall(nr) }
}

/// Syscall `nr` with `args` that every kernel rejects before doing
/// anything: only NULL pointers, fd -1 and unknown commands or flags (the
/// probe's table), so an allowed call fails in the kernel's argument checks.
pub(crate) fn rejected_call(nr: libc::c_long, args: [usize; 6]) -> libc::c_long {
    let a = args;
    // SAFETY: per the contract above (the only caller passes the probe's
    // table), the call reads and writes none of our memory.
    unsafe { libc::syscall(nr, a[0], a[1], a[2], a[3], a[4], a[5]) }
}

/// clone with `flags | CLONE_THREAD` and no CLONE_SIGHAND, which the kernel
/// rejects (EINVAL) before creating anything — unless a filter stops it
/// first.
pub(crate) fn rejected_clone(flags: libc::c_int) -> libc::c_long {
    let flags = (flags | libc::CLONE_THREAD) as usize;
    // SAFETY: CLONE_THREAD without CLONE_SIGHAND is rejected before any
    // process is created; the NULL stack and pointers are never used.
    unsafe { libc::syscall(libc::SYS_clone, flags, 0usize, 0usize, 0usize, 0usize) }
}

/// Whether `fd` is open.
pub(crate) fn fd_is_open(fd: i32) -> bool {
    // SAFETY: F_GETFD only reads the descriptor table.
    unsafe { libc::fcntl(fd, libc::F_GETFD) >= 0 }
}

/// Our uid.
pub(crate) fn uid() -> u32 {
    // SAFETY: getuid cannot fail and touches no memory.
    unsafe { libc::getuid() }
}

/// The UTS host name, or the errno of uname.
pub(crate) fn hostname() -> Result<String, i32> {
    // SAFETY: utsname is plain old data; all-zero is valid.
    let mut uts: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: `uts` is a valid out-pointer.
    if unsafe { libc::uname(&mut uts) } != 0 {
        return Err(last_errno());
    }
    // SAFETY: uname NUL-terminates nodename inside the array.
    let name = unsafe { CStr::from_ptr(uts.nodename.as_ptr()) };
    Ok(name.to_string_lossy().into_owned())
}

/// Creates an unnamed file (O_TMPFILE) on `/` and closes it: on a
/// writable root it vanishes when closed, on a read-only one EROFS.
pub(crate) fn unnamed_file_on_root() -> Result<(), i32> {
    // SAFETY: a valid NUL-terminated path; O_TMPFILE creates no name.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd < 0 {
        return Err(last_errno());
    }
    // SAFETY: we own `fd`.
    unsafe { libc::close(fd) };
    Ok(())
}

/// sethostname(`name`).
pub(crate) fn sethostname(name: &str) -> libc::c_long {
    // SAFETY: `name` bytes are valid for their length.
    unsafe { libc::sethostname(name.as_ptr().cast(), name.len()) }.into()
}

/// A tmpfs mount on a path that does not exist: ENOENT if mount is
/// permitted at all.
pub(crate) fn mount_tmpfs_nowhere() -> libc::c_long {
    let (src, target, fstype) = (c"none", c"/.faas-sandbox-probe-nonexistent", c"tmpfs");
    // SAFETY: valid NUL-terminated strings and a NULL data pointer.
    unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    }
    .into()
}

/// Takes the loopback interface down (SIOCSIFFLAGS without IFF_UP); the
/// errno and which step failed (`socket` or `ioctl`) otherwise.
pub(crate) fn loopback_down() -> Result<(), (&'static str, i32)> {
    // SAFETY: a plain socket(2) call; the fd is closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return Err(("socket", last_errno()));
    }
    // SAFETY: ifreq is plain old data; zeroed is valid. The ioctls read and
    // write only the ifreq we own.
    let rc = unsafe {
        let mut ifr: libc::ifreq = std::mem::zeroed();
        for (d, b) in ifr.ifr_name.iter_mut().zip(b"lo\0") {
            *d = *b as libc::c_char;
        }
        let mut rc = libc::ioctl(s, libc::SIOCGIFFLAGS, &raw mut ifr);
        if rc == 0 {
            ifr.ifr_ifru.ifru_flags &= !(libc::IFF_UP as libc::c_short);
            rc = libc::ioctl(s, libc::SIOCSIFFLAGS, &raw mut ifr);
        }
        rc
    };
    let e = last_errno();
    // SAFETY: closing the socket we opened.
    unsafe { libc::close(s) };
    if rc == 0 { Ok(()) } else { Err(("ioctl", e)) }
}
