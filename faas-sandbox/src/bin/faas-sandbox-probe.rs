//! `faas-sandbox-probe`: reports, from inside a sandbox, what the sandbox
//! allows. A test tool; it changes nothing outside itself.
//!
//! ```text
//! faas-sandbox-probe syscalls   one line per probe: NAME RESULT
//! faas-sandbox-probe status     one line per property: KEY VALUE
//! ```
//!
//! `syscalls` calls each syscall of the sandbox's denied list, and a few
//! allowed controls, with arguments the kernel rejects (a bad fd, a NULL
//! pointer, unknown flags), so that an allowed call fails without effect:
//! RESULT `EPERM`/`ENOSYS` means a filter stopped it, any other errno
//! (`EBADF`, `EFAULT`, `EINVAL`, ...) means the kernel saw it, `OK` means it
//! succeeded. Probes that could kill the process (an x32 syscall number) or
//! that create a process (`fork`) run in a forked child; their RESULT is the
//! child's errno, `OK`, or `KILLED:SIGNAL`.

use std::ffi::CStr;
use std::io::Write;

fn errno_name(e: i32) -> String {
    let name = match e {
        libc::EPERM => "EPERM",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::EIO => "EIO",
        libc::EBADF => "EBADF",
        libc::EAGAIN => "EAGAIN",
        libc::ENOMEM => "ENOMEM",
        libc::EACCES => "EACCES",
        libc::EFAULT => "EFAULT",
        libc::EBUSY => "EBUSY",
        libc::EEXIST => "EEXIST",
        libc::ENOTDIR => "ENOTDIR",
        libc::EINVAL => "EINVAL",
        libc::EROFS => "EROFS",
        libc::ENOSYS => "ENOSYS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOEXEC => "ENOEXEC",
        libc::E2BIG => "E2BIG",
        libc::ENODEV => "ENODEV",
        _ => return format!("E{e}"),
    };
    name.to_owned()
}

fn last_errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

/// The result of a raw syscall return value.
fn outcome(rc: libc::c_long) -> String {
    if rc < 0 {
        errno_name(last_errno())
    } else {
        "OK".to_owned()
    }
}

/// Runs `f` in a forked child and reports how the child ended: `f`'s
/// result (an errno, 0 for OK) as exit code, or the signal that killed it.
fn in_child(f: fn() -> i32) -> String {
    // SAFETY: the probe is single-threaded, so the child may run any code;
    // it leaves with _exit, never returning into the parent's stack frames.
    let pid = unsafe { libc::fork() };
    if pid < 0 {
        return format!("FORK-FAILED:{}", errno_name(last_errno()));
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
        return format!("WAIT-FAILED:{}", errno_name(last_errno()));
    }
    if libc::WIFSIGNALED(status) {
        let sig = libc::WTERMSIG(status);
        return if sig == libc::SIGSYS {
            "KILLED:SIGSYS".to_owned()
        } else {
            format!("KILLED:{sig}")
        };
    }
    match libc::WEXITSTATUS(status) {
        0 => "OK".to_owned(),
        e => errno_name(e),
    }
}

fn x32_getpid() -> i32 {
    let nr = 0x4000_0000 | libc::SYS_getpid;
    // SAFETY: getpid takes no arguments and touches no memory; under the x32
    // ABI number it is the same call.
    let rc = unsafe { libc::syscall(nr) };
    if rc < 0 { last_errno() } else { 0 }
}

fn child_exits() -> i32 {
    0
}

const NULL: usize = 0;
const BAD_FD: usize = usize::MAX; // -1 as a syscall argument.

fn syscalls(out: &mut impl Write) -> std::io::Result<()> {
    // (name, number, arguments): arguments every kernel rejects before doing
    // anything, even for root: NULL pointers, fd -1, unknown flags or
    // commands.
    let probes: &[(&str, libc::c_long, [usize; 6])] = &[
        ("ptrace", libc::SYS_ptrace, [0xffff, 0, NULL, NULL, 0, 0]),
        ("mount", libc::SYS_mount, [NULL, NULL, NULL, 0, NULL, 0]),
        ("umount2", libc::SYS_umount2, [NULL, 0, 0, 0, 0, 0]),
        ("unshare", libc::SYS_unshare, [usize::MAX, 0, 0, 0, 0, 0]),
        ("setns", libc::SYS_setns, [BAD_FD, 0, 0, 0, 0, 0]),
        ("bpf", libc::SYS_bpf, [0xffff, NULL, 0, 0, 0, 0]),
        (
            "perf_event_open",
            libc::SYS_perf_event_open,
            [NULL, 0, BAD_FD, BAD_FD, 0, 0],
        ),
        ("keyctl", libc::SYS_keyctl, [0xffff, 0, 0, 0, 0, 0]),
        ("add_key", libc::SYS_add_key, [NULL, NULL, NULL, 0, 0, 0]),
        (
            "request_key",
            libc::SYS_request_key,
            [NULL, NULL, NULL, 0, 0, 0],
        ),
        (
            "kexec_load",
            libc::SYS_kexec_load,
            [0, 0, NULL, usize::MAX, 0, 0],
        ),
        (
            "kexec_file_load",
            libc::SYS_kexec_file_load,
            [BAD_FD, BAD_FD, 0, NULL, usize::MAX, 0],
        ),
        (
            "init_module",
            libc::SYS_init_module,
            [NULL, 0, NULL, 0, 0, 0],
        ),
        (
            "finit_module",
            libc::SYS_finit_module,
            [BAD_FD, NULL, 0, 0, 0, 0],
        ),
        (
            "delete_module",
            libc::SYS_delete_module,
            [NULL, 0, 0, 0, 0, 0],
        ),
        (
            "io_uring_setup",
            libc::SYS_io_uring_setup,
            [0, NULL, 0, 0, 0, 0],
        ),
        (
            "io_uring_enter",
            libc::SYS_io_uring_enter,
            [BAD_FD, 0, 0, 0, NULL, 0],
        ),
        (
            "io_uring_register",
            libc::SYS_io_uring_register,
            [BAD_FD, 0, NULL, 0, 0, 0],
        ),
        (
            "userfaultfd",
            libc::SYS_userfaultfd,
            [usize::MAX, 0, 0, 0, 0, 0],
        ),
        (
            "process_vm_readv",
            libc::SYS_process_vm_readv,
            [0, NULL, 1, NULL, 1, 0],
        ),
        (
            "process_vm_writev",
            libc::SYS_process_vm_writev,
            [0, NULL, 1, NULL, 1, 0],
        ),
        (
            "open_by_handle_at",
            libc::SYS_open_by_handle_at,
            [BAD_FD, NULL, 0, 0, 0, 0],
        ),
        (
            "name_to_handle_at",
            libc::SYS_name_to_handle_at,
            [BAD_FD, NULL, NULL, NULL, 0, 0],
        ),
        ("pivot_root", libc::SYS_pivot_root, [NULL, NULL, 0, 0, 0, 0]),
        ("chroot", libc::SYS_chroot, [NULL, 0, 0, 0, 0, 0]),
        ("swapon", libc::SYS_swapon, [NULL, 0, 0, 0, 0, 0]),
        ("reboot", libc::SYS_reboot, [0, 0, 0, NULL, 0, 0]),
        // clone3 with a NULL, too-small argument struct: EINVAL/EFAULT if
        // the kernel sees it.
        ("clone3", libc::SYS_clone3, [NULL, 0, 0, 0, 0, 0]),
        // Controls: allowed in every profile.
        ("getpid", libc::SYS_getpid, [0; 6]),
        ("read", libc::SYS_read, [BAD_FD, NULL, 0, 0, 0, 0]),
        ("write", libc::SYS_write, [BAD_FD, NULL, 0, 0, 0, 0]),
        ("close", libc::SYS_close, [BAD_FD, 0, 0, 0, 0, 0]),
        ("fcntl", libc::SYS_fcntl, [BAD_FD, 0, 0, 0, 0, 0]),
    ];
    for (name, nr, a) in probes {
        // SAFETY: every probe passes NULL pointers, fd -1 or unknown
        // commands/flags (see the table), so an allowed call fails in the
        // kernel's argument checks without reading or writing our memory.
        let rc = unsafe { libc::syscall(*nr, a[0], a[1], a[2], a[3], a[4], a[5]) };
        writeln!(out, "{name} {}", outcome(rc))?;
    }

    // clone with one CLONE_NEW* flag at a time (and all of them), plus
    // CLONE_THREAD without CLONE_SIGHAND, which the kernel rejects with
    // EINVAL before creating anything.
    let news: &[(&str, libc::c_int)] = &[
        ("NEWNS", libc::CLONE_NEWNS),
        ("NEWCGROUP", libc::CLONE_NEWCGROUP),
        ("NEWUTS", libc::CLONE_NEWUTS),
        ("NEWIPC", libc::CLONE_NEWIPC),
        ("NEWUSER", libc::CLONE_NEWUSER),
        ("NEWPID", libc::CLONE_NEWPID),
        ("NEWNET", libc::CLONE_NEWNET),
        ("NEWUSER|NEWNS", libc::CLONE_NEWUSER | libc::CLONE_NEWNS),
        ("none", 0),
    ];
    for (label, flags) in news {
        let flags = (flags | libc::CLONE_THREAD) as usize;
        // SAFETY: CLONE_THREAD without CLONE_SIGHAND is rejected (EINVAL)
        // before any process is created; the NULL stack and pointers are
        // never used.
        let rc = unsafe { libc::syscall(libc::SYS_clone, flags, NULL, NULL, NULL, 0usize) };
        writeln!(out, "clone:{label} {}", outcome(rc))?;
    }

    writeln!(out, "fork {}", in_child(child_exits))?;
    writeln!(out, "x32:getpid {}", in_child(x32_getpid))?;
    out.flush()
}

fn read_or_err(path: &str) -> String {
    match std::fs::read_to_string(path) {
        Ok(s) => s,
        Err(e) => format!("ERR:{}", e.raw_os_error().map_or("?".into(), errno_name)),
    }
}

fn open_fds() -> String {
    // fcntl on every number: opening /proc/self/fd would list its own fd.
    let fds: Vec<String> = (0..4096)
        // SAFETY: F_GETFD only reads the descriptor table.
        .filter(|&fd| unsafe { libc::fcntl(fd, libc::F_GETFD) } >= 0)
        .map(|fd: i32| fd.to_string())
        .collect();
    fds.join(",")
}

fn status(out: &mut impl Write) -> std::io::Result<()> {
    let st = read_or_err("/proc/self/status");
    for line in st.lines() {
        for key in [
            "CapInh:",
            "CapPrm:",
            "CapEff:",
            "CapBnd:",
            "CapAmb:",
            "NoNewPrivs:",
            "Seccomp:",
        ] {
            if let Some(v) = line.strip_prefix(key) {
                writeln!(out, "{} {}", key.trim_end_matches(':'), v.trim())?;
            }
        }
    }
    if st.starts_with("ERR:") {
        writeln!(out, "status {st}")?;
    }
    let map = read_or_err("/proc/self/uid_map");
    writeln!(
        out,
        "uid_map {}",
        map.split_whitespace().collect::<Vec<_>>().join(" ")
    )?;
    writeln!(out, "pid {}", std::process::id())?;
    // SAFETY: getuid cannot fail and touches no memory.
    writeln!(out, "uid {}", unsafe { libc::getuid() })?;
    // SAFETY: `uts` is a valid out-pointer; nodename is NUL-terminated.
    let host = unsafe {
        let mut uts: libc::utsname = std::mem::zeroed();
        if libc::uname(&mut uts) == 0 {
            CStr::from_ptr(uts.nodename.as_ptr())
                .to_string_lossy()
                .into_owned()
        } else {
            format!("ERR:{}", errno_name(last_errno()))
        }
    };
    writeln!(out, "hostname {host}")?;
    writeln!(out, "fds {}", open_fds())?;
    match std::env::current_dir() {
        Ok(d) => writeln!(out, "cwd {}", d.display())?,
        Err(e) => writeln!(out, "cwd ERR:{e}")?,
    }
    // An unnamed file (O_TMPFILE): on a writable root it vanishes when
    // closed, so probing outside a sandbox (or under a filter that denies
    // unlink) leaves nothing behind; on a read-only mount it fails with EROFS.
    // SAFETY: a valid NUL-terminated path; O_TMPFILE creates no name.
    let fd = unsafe {
        libc::open(
            c"/".as_ptr(),
            libc::O_TMPFILE | libc::O_WRONLY | libc::O_CLOEXEC,
            0o600,
        )
    };
    if fd >= 0 {
        // SAFETY: we own `fd`.
        unsafe {
            libc::close(fd);
        }
        writeln!(out, "write_root OK")?;
    } else {
        writeln!(out, "write_root {}", errno_name(last_errno()))?;
    }
    // Set the hostname to what it is already: no change even if allowed.
    // SAFETY: `host` bytes are valid for their length.
    let rc = unsafe { libc::sethostname(host.as_ptr().cast(), host.len()) };
    writeln!(out, "sethostname {}", outcome(rc.into()))?;
    // A tmpfs on a path that does not exist: ENOENT if mount is permitted.
    let (src, target, fstype) = (c"none", c"/.faas-sandbox-probe-nonexistent", c"tmpfs");
    // SAFETY: valid NUL-terminated strings and a NULL data pointer.
    let rc = unsafe {
        libc::mount(
            src.as_ptr(),
            target.as_ptr(),
            fstype.as_ptr(),
            0,
            std::ptr::null(),
        )
    };
    writeln!(out, "mount {}", outcome(rc.into()))?;
    out.flush()
}

/// Tries to take the loopback interface down (SIOCSIFFLAGS without IFF_UP)
/// and prints `lo_down OK` or `lo_down ERRNO`.
fn lo_down(out: &mut impl Write) -> std::io::Result<()> {
    // SAFETY: a plain socket(2) call; the fd is closed below.
    let s = unsafe { libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0) };
    if s < 0 {
        return writeln!(out, "lo_down socket:{}", errno_name(last_errno()));
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
    if rc == 0 {
        writeln!(out, "lo_down OK")
    } else {
        writeln!(out, "lo_down {}", errno_name(e))
    }
}

fn main() {
    let mut out = std::io::stdout().lock();
    let cmd = std::env::args().nth(1).unwrap_or_default();
    let r = match cmd.as_str() {
        "syscalls" => syscalls(&mut out),
        "status" => status(&mut out),
        "lo-down" => lo_down(&mut out),
        _ => {
            eprintln!("usage: faas-sandbox-probe syscalls|status|lo-down");
            std::process::exit(2);
        }
    };
    if let Err(e) = r {
        eprintln!("faas-sandbox-probe: writing the report: {e}");
        std::process::exit(1);
    }
}
