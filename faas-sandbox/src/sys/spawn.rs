//! Creating a sandboxed process: `clone3` into new namespaces, then the
//! child's set-up up to `execve`.
//!
//! The child is a fork-like copy of a multi-threaded parent, so between
//! `clone3` and `execve` it may only make raw system calls: it never
//! allocates, locks or unwinds. Everything it needs (paths, argv, envp, the
//! seccomp programs) is prepared by the parent in a [`ChildPlan`] before the
//! clone, and the child only reads it.
//!
//! ```text
//! parent                                 child (pid 1 of new user/pid/mnt/ipc/uts/cgroup ns)
//!   clone3(CLONE_NEW*, CLONE_PIDFD) ───▶  read(sync)  … blocks
//!   write uid_map/gid_map, cgroup.procs
//!   write(sync) ──────────────────────▶  setresgid/setresuid(0) = host range
//!                                         / private; root bound ro; /dev, /tmp (, /proc)
//!                                         pivot_root; hostname; rlimits; fds 0-3
//!                                         caps dropped, securebits locked
//!                                         close_range(4.., CLOEXEC); no_new_privs
//!                                         seccomp filters (last)
//!   read(err) ◀── EOF on exec ─────────  execve(program)
//! ```

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `CLONE_PIDFD` (linux/sched.h).
const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// `SECCOMP_SET_MODE_FILTER` (linux/seccomp.h).
const SECCOMP_SET_MODE_FILTER: libc::c_ulong = 1;
/// `_LINUX_CAPABILITY_VERSION_3`.
const CAP_V3: u32 = 0x2008_0522;
/// `SECBIT_NOROOT | _LOCKED`, `SECBIT_NO_SETUID_FIXUP | _LOCKED`,
/// `SECBIT_KEEP_CAPS_LOCKED`, `SECBIT_NO_CAP_AMBIENT_RAISE | _LOCKED`.
const SECUREBITS: libc::c_ulong = 0x01 | 0x02 | 0x04 | 0x08 | 0x20 | 0x40 | 0x80;

/// `struct clone_args` (linux/sched.h), version 2 (with `cgroup`).
#[repr(C)]
#[derive(Default)]
struct CloneArgs {
    flags: u64,
    pidfd: u64,
    child_tid: u64,
    parent_tid: u64,
    exit_signal: u64,
    stack: u64,
    stack_size: u64,
    tls: u64,
    set_tid: u64,
    set_tid_size: u64,
    cgroup: u64,
}

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// A step of the child's set-up, reported to the parent when it fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u32)]
pub(crate) enum Stage {
    Sync = 1,
    SetIds,
    MountPrivate,
    BindRoot,
    RemountRoot,
    MountDev,
    DevNodes,
    MountTmp,
    MountProc,
    PivotRoot,
    Hostname,
    Rlimits,
    Fds,
    Caps,
    CloseRange,
    NoNewPrivs,
    Seccomp,
    Exec,
}

impl Stage {
    pub(crate) fn from_u32(v: u32) -> Option<Stage> {
        use Stage::*;
        [
            Sync,
            SetIds,
            MountPrivate,
            BindRoot,
            RemountRoot,
            MountDev,
            DevNodes,
            MountTmp,
            MountProc,
            PivotRoot,
            Hostname,
            Rlimits,
            Fds,
            Caps,
            CloseRange,
            NoNewPrivs,
            Seccomp,
            Exec,
        ]
        .into_iter()
        .find(|s| *s as u32 == v)
    }

    pub(crate) fn describe(self) -> &'static str {
        match self {
            Stage::Sync => "waiting for the parent",
            Stage::SetIds => "switching to the sandbox uid/gid",
            Stage::MountPrivate => "making mounts private",
            Stage::BindRoot => "binding the root",
            Stage::RemountRoot => "making the root read-only",
            Stage::MountDev => "mounting /dev (does the root have a dev directory?)",
            Stage::DevNodes => "binding /dev/null, /dev/zero, /dev/urandom",
            Stage::MountTmp => "mounting /tmp (does the root have a tmp directory?)",
            Stage::MountProc => "mounting /proc (does the root have a proc directory?)",
            Stage::PivotRoot => "pivot_root",
            Stage::Hostname => "sethostname",
            Stage::Rlimits => "setrlimit",
            Stage::Fds => "placing fds 0-3",
            Stage::Caps => "dropping capabilities",
            Stage::CloseRange => "close_range",
            Stage::NoNewPrivs => "no_new_privs",
            Stage::Seccomp => "installing the seccomp filter",
            Stage::Exec => "execve",
        }
    }
}

/// Everything the child needs, prepared before the clone.
pub(crate) struct ChildPlan {
    /// Host directory to bind read-only as `/`.
    pub root: CString,
    /// The (empty) directory the new root is assembled on.
    pub base: CString,
    pub base_dev: CString,
    pub base_dev_nodes: [(CString, CString); 3],
    pub base_tmp: CString,
    pub base_proc: CString,
    pub tmp_opts: CString,
    pub mount_proc: bool,
    /// Program path inside the new root.
    pub program: CString,
    pub argv: Vec<CString>,
    pub envp: Vec<CString>,
    /// fds 0, 1, 2, 3 for the child (raw numbers in the parent; valid in the
    /// child because it gets copies of all the parent's fds).
    pub fds: [RawFd; 4],
    pub rlimits: [(libc::__rlimit_resource_t, u64); 3],
    pub cap_last: u32,
    pub seccomp: Vec<Vec<libc::sock_filter>>,
}

/// The null-terminated pointer arrays of a plan, built before the clone.
struct Ptrs {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    progs: Vec<libc::sock_fprog>,
}

fn ptrs(plan: &ChildPlan) -> io::Result<Ptrs> {
    let mut argv: Vec<_> = plan.argv.iter().map(|a| a.as_ptr()).collect();
    argv.push(std::ptr::null());
    let mut envp: Vec<_> = plan.envp.iter().map(|a| a.as_ptr()).collect();
    envp.push(std::ptr::null());
    let progs = plan
        .seccomp
        .iter()
        .map(|p| {
            Ok(libc::sock_fprog {
                len: u16::try_from(p.len()).map_err(|_| {
                    io::Error::new(io::ErrorKind::InvalidInput, "seccomp program too long")
                })?,
                filter: p.as_ptr().cast_mut(),
            })
        })
        .collect::<io::Result<Vec<_>>>()?;
    Ok(Ptrs { argv, envp, progs })
}

/// A child that was cloned and is waiting for [`Spawned::release`].
pub(crate) struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    sync_w: OwnedFd,
    err_r: OwnedFd,
}

fn pipe_cloexec() -> io::Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0 as RawFd; 2];
    // SAFETY: pipe2 writes two fds into the array we pass; on success we
    // take ownership of both exactly once.
    let rc = unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: both fds were just returned by pipe2 and are owned by no one
    // else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Clones the child into new namespaces (user, mount, pid, ipc, uts,
/// cgroup; the network namespace is the calling thread's) and returns it
/// blocked before its set-up. `cgroup_fd` places it with
/// `CLONE_INTO_CGROUP` (cgroup v2).
pub(crate) fn clone_child(plan: &ChildPlan, cgroup_fd: Option<RawFd>) -> io::Result<Spawned> {
    let ptrs = ptrs(plan)?;
    let (sync_r, sync_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    let mut pidfd: RawFd = -1;
    let mut args = CloneArgs {
        flags: (libc::CLONE_NEWUSER
            | libc::CLONE_NEWNS
            | libc::CLONE_NEWPID
            | libc::CLONE_NEWIPC
            | libc::CLONE_NEWUTS
            | libc::CLONE_NEWCGROUP) as u64
            | CLONE_PIDFD,
        pidfd: (&raw mut pidfd) as u64,
        exit_signal: libc::SIGCHLD as u64,
        ..CloneArgs::default()
    };
    if let Some(fd) = cgroup_fd {
        args.flags |= CLONE_INTO_CGROUP;
        args.cgroup = fd as u64;
    }
    // SAFETY: clone3 with a valid, fully initialised clone_args of the size
    // we pass; no CLONE_VM, so the child runs on a private copy of this
    // thread's stack and memory, like fork. In the child (rc == 0) we only
    // call `child_main`, which never returns and only makes raw system calls
    // on memory prepared before the clone.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_clone3,
            &raw mut args,
            std::mem::size_of::<CloneArgs>(),
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    if rc == 0 {
        // SAFETY: we are the freshly cloned child; see `child_main`.
        unsafe { child_main(plan, &ptrs, sync_r.as_raw_fd(), err_w.as_raw_fd()) }
    }
    drop(sync_r);
    drop(err_w);
    // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid: rc as libc::pid_t,
        pidfd,
        sync_w,
        err_r,
    })
}

impl Spawned {
    /// Lets the child go on, then waits until it has executed the program
    /// (the error pipe closes on exec) or reports the stage that failed.
    pub(crate) fn release(self) -> Result<(OwnedFd, libc::pid_t), (Stage, io::Error)> {
        let b = [1u8];
        // SAFETY: writing one byte from a valid buffer to our pipe end.
        let n = unsafe { libc::write(self.sync_w.as_raw_fd(), b.as_ptr().cast(), 1) };
        if n != 1 {
            return Err((Stage::Sync, io::Error::last_os_error()));
        }
        drop(self.sync_w);
        let mut buf = [0u8; 8];
        let mut got = 0usize;
        loop {
            // SAFETY: reading into the unfilled tail of a valid buffer.
            let n = unsafe {
                libc::read(
                    self.err_r.as_raw_fd(),
                    buf[got..].as_mut_ptr().cast(),
                    buf.len() - got,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err((Stage::Sync, e));
            }
            if n == 0 {
                break;
            }
            got += n as usize;
            if got == buf.len() {
                break;
            }
        }
        if got == 0 {
            return Ok((self.pidfd, self.pid));
        }
        let stage = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
        let errno = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
        Err((
            Stage::from_u32(stage).unwrap_or(Stage::Exec),
            io::Error::from_raw_os_error(errno),
        ))
    }
}

/// Reports `stage` and the current errno to the parent and exits.
///
/// # Safety
///
/// Only to be called in the cloned child.
unsafe fn fail(err_fd: RawFd, stage: Stage) -> ! {
    // SAFETY: __errno_location is valid in every thread of the process.
    let errno = unsafe { *libc::__errno_location() };
    let mut msg = [0u8; 8];
    msg[..4].copy_from_slice(&(stage as u32).to_le_bytes());
    msg[4..].copy_from_slice(&errno.to_le_bytes());
    // SAFETY: raw write of a stack buffer, then _exit, which never returns
    // and runs no destructors or atexit handlers of the copied parent.
    unsafe {
        libc::write(err_fd, msg.as_ptr().cast(), msg.len());
        libc::_exit(127)
    }
}

/// The child: set up the sandbox and exec. Never returns.
///
/// # Safety
///
/// Only to be called once, in the child of `clone_child`, with the plan and
/// pointers the parent prepared; it uses nothing but raw system calls.
unsafe fn child_main(plan: &ChildPlan, p: &Ptrs, sync_r: RawFd, err_w: RawFd) -> ! {
    macro_rules! check {
        ($e:expr, $stage:expr) => {
            if $e < 0 {
                fail(err_w, $stage)
            }
        };
    }
    // SAFETY: every call below is a raw system call on
    // NUL-terminated strings and arrays owned by `plan`/`p`, which the
    // parent built before the clone and which stay valid in this private
    // copy of its memory; nothing allocates or takes a lock.
    unsafe {
        // 1. Wait until the parent has written our uid/gid maps.
        let mut b = [0u8; 1];
        if libc::read(sync_r, b.as_mut_ptr().cast(), 1) != 1 {
            fail(err_w, Stage::Sync);
        }
        libc::close(sync_r);
        // 2. Become uid/gid 0 of the new user namespace: the host range.
        //    Raw system calls: glibc's wrappers would try to change the
        //    credentials of every thread of the parent it still believes
        //    exist, and wait for them forever.
        check!(
            libc::syscall(libc::SYS_setgroups, 0, std::ptr::null::<libc::gid_t>()) as libc::c_int,
            Stage::SetIds
        );
        check!(
            libc::syscall(libc::SYS_setresgid, 0, 0, 0) as libc::c_int,
            Stage::SetIds
        );
        check!(
            libc::syscall(libc::SYS_setresuid, 0, 0, 0) as libc::c_int,
            Stage::SetIds
        );
        // 3. The new root.
        let none: *const libc::c_char = std::ptr::null();
        check!(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null()
            ),
            Stage::MountPrivate
        );
        check!(
            libc::mount(
                plan.root.as_ptr(),
                plan.base.as_ptr(),
                none,
                // The runtime's own read-only bind of the root (which has
                // no submounts), so recursive is allowed and exact.
                libc::MS_BIND | libc::MS_REC,
                std::ptr::null()
            ),
            Stage::BindRoot
        );
        check!(
            libc::mount(
                none,
                plan.base.as_ptr(),
                none,
                libc::MS_BIND
                    | libc::MS_REMOUNT
                    | libc::MS_RDONLY
                    | libc::MS_NOSUID
                    | libc::MS_NODEV,
                std::ptr::null()
            ),
            Stage::RemountRoot
        );
        check!(
            libc::mount(
                c"tmpfs".as_ptr(),
                plan.base_dev.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NOEXEC,
                c"size=64k,nr_inodes=16,mode=755".as_ptr().cast()
            ),
            Stage::MountDev
        );
        for (host, inside) in &plan.base_dev_nodes {
            let fd = libc::open(
                inside.as_ptr(),
                libc::O_CREAT | libc::O_WRONLY | libc::O_CLOEXEC,
                0o666,
            );
            check!(fd, Stage::DevNodes);
            libc::close(fd);
            check!(
                libc::mount(
                    host.as_ptr(),
                    inside.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null()
                ),
                Stage::DevNodes
            );
        }
        check!(
            libc::mount(
                none,
                plan.base_dev.as_ptr(),
                none,
                libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NOEXEC,
                c"size=64k,nr_inodes=16,mode=755".as_ptr().cast()
            ),
            Stage::MountDev
        );
        check!(
            libc::mount(
                c"tmpfs".as_ptr(),
                plan.base_tmp.as_ptr(),
                c"tmpfs".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV,
                plan.tmp_opts.as_ptr().cast()
            ),
            Stage::MountTmp
        );
        if plan.mount_proc {
            check!(
                libc::mount(
                    c"proc".as_ptr(),
                    plan.base_proc.as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null()
                ),
                Stage::MountProc
            );
        }
        // 4. pivot_root onto it and detach the old root.
        check!(libc::chdir(plan.base.as_ptr()), Stage::PivotRoot);
        check!(
            libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) as libc::c_int,
            Stage::PivotRoot
        );
        check!(
            libc::umount2(c".".as_ptr(), libc::MNT_DETACH),
            Stage::PivotRoot
        );
        check!(libc::chdir(c"/".as_ptr()), Stage::PivotRoot);
        let mut cwd = [0u8; 4];
        if libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null()
            || cwd[0] != b'/'
            || cwd[1] != 0
        {
            fail(err_w, Stage::PivotRoot);
        }
        // 5. Host name and resource limits.
        check!(libc::sethostname(c"faas".as_ptr(), 4), Stage::Hostname);
        for (res, v) in plan.rlimits {
            let lim = libc::rlimit {
                rlim_cur: v,
                rlim_max: v,
            };
            check!(libc::setrlimit(res, &lim), Stage::Rlimits);
        }
        // 6. fds 0-3: first out of the way (sources may be 0-3), then in place.
        let mut high = [0 as RawFd; 4];
        for (i, fd) in plan.fds.iter().enumerate() {
            high[i] = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
            check!(high[i], Stage::Fds);
        }
        for (i, fd) in high.iter().enumerate() {
            check!(libc::dup2(*fd, i as RawFd), Stage::Fds);
        }
        // 7. Capabilities: bounding set, securebits, ambient, then the rest.
        for cap in 0..=plan.cap_last {
            check!(
                libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0),
                Stage::Caps
            );
        }
        check!(
            libc::prctl(libc::PR_SET_SECUREBITS, SECUREBITS, 0, 0, 0),
            Stage::Caps
        );
        check!(
            libc::prctl(
                libc::PR_CAP_AMBIENT,
                libc::PR_CAP_AMBIENT_CLEAR_ALL as libc::c_ulong,
                0,
                0,
                0
            ),
            Stage::Caps
        );
        let mut hdr = CapHeader {
            version: CAP_V3,
            pid: 0,
        };
        let data = [CapData {
            effective: 0,
            permitted: 0,
            inheritable: 0,
        }; 2];
        check!(
            libc::syscall(libc::SYS_capset, &raw mut hdr, data.as_ptr()) as libc::c_int,
            Stage::Caps
        );
        // 8. Every other fd closes at exec (the error pipe included, which
        //    tells the parent the exec happened).
        check!(
            libc::syscall(
                libc::SYS_close_range,
                4 as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC
            ) as libc::c_int,
            Stage::CloseRange
        );
        check!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            Stage::NoNewPrivs
        );
        // 9. Seccomp, last.
        for prog in &p.progs {
            check!(
                libc::syscall(
                    libc::SYS_seccomp,
                    SECCOMP_SET_MODE_FILTER,
                    0 as libc::c_ulong,
                    prog as *const _
                ) as libc::c_int,
                Stage::Seccomp
            );
        }
        libc::execve(plan.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        fail(err_w, Stage::Exec)
    }
}

/// `CString` of a path or string, with a clear error for interior NULs.
pub(crate) fn cstring(what: &str, s: impl Into<Vec<u8>>) -> io::Result<CString> {
    CString::new(s).map_err(|_| {
        io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{what} contains a NUL byte"),
        )
    })
}

/// Writes the uid and gid maps of `pid`: inside id 0 is host id `host`.
pub(crate) fn write_id_maps(pid: libc::pid_t, host_uid: u32, host_gid: u32) -> io::Result<()> {
    std::fs::write(format!("/proc/{pid}/uid_map"), format!("0 {host_uid} 1\n"))?;
    std::fs::write(format!("/proc/{pid}/gid_map"), format!("0 {host_gid} 1\n"))?;
    Ok(())
}

/// The highest capability number of this kernel.
pub(crate) fn cap_last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}
