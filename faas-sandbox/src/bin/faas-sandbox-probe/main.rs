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

use std::io::Write;

mod sys;

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
    let status = match sys::in_child(f) {
        Ok(status) => status,
        Err((what, e)) => return format!("{what}-FAILED:{}", errno_name(e)),
    };
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
    let rc = sys::x32_getpid();
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
        writeln!(out, "{name} {}", outcome(sys::rejected_call(*nr, *a)))?;
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
        writeln!(
            out,
            "clone:{label} {}",
            outcome(sys::rejected_clone(*flags))
        )?;
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
        .filter(|&fd| sys::fd_is_open(fd))
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
    writeln!(out, "uid {}", sys::uid())?;
    let host = sys::hostname().unwrap_or_else(|e| format!("ERR:{}", errno_name(e)));
    writeln!(out, "hostname {host}")?;
    writeln!(out, "fds {}", open_fds())?;
    match std::env::current_dir() {
        Ok(d) => writeln!(out, "cwd {}", d.display())?,
        Err(e) => writeln!(out, "cwd ERR:{e}")?,
    }
    // An unnamed file (O_TMPFILE): on a writable root it vanishes when
    // closed, so probing outside a sandbox (or under a filter that denies
    // unlink) leaves nothing behind; on a read-only mount it fails with EROFS.
    match sys::unnamed_file_on_root() {
        Ok(()) => writeln!(out, "write_root OK")?,
        Err(e) => writeln!(out, "write_root {}", errno_name(e))?,
    }
    // Set the hostname to what it is already: no change even if allowed.
    writeln!(out, "sethostname {}", outcome(sys::sethostname(&host)))?;
    // A tmpfs on a path that does not exist: ENOENT if mount is permitted.
    writeln!(out, "mount {}", outcome(sys::mount_tmpfs_nowhere()))?;
    out.flush()
}

/// Tries to take the loopback interface down (SIOCSIFFLAGS without IFF_UP)
/// and prints `lo_down OK` or `lo_down ERRNO`.
fn lo_down(out: &mut impl Write) -> std::io::Result<()> {
    match sys::loopback_down() {
        Ok(()) => writeln!(out, "lo_down OK"),
        Err(("socket", e)) => writeln!(out, "lo_down socket:{}", errno_name(e)),
        Err((_, e)) => writeln!(out, "lo_down {}", errno_name(e)),
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
