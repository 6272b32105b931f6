//! Creating a sandboxed process: `clone3` into new namespaces, then the
//! child's set-up up to `execve`.
//!
//! The child shares the address space of its multi-threaded parent
//! (`CLONE_VM`, on a stack and thread-local storage of its own; with
//! cgroup v2's `CLONE_INTO_CGROUP` it is a fork-like copy instead), so
//! between the clone and `execve` it may only make raw system calls: it
//! never allocates, locks or unwinds. Everything it needs (paths, argv,
//! envp, the seccomp programs) is prepared by the parent in a [`ChildPlan`]
//! before the clone, and the child only reads it; the parent keeps that
//! memory ([`ChildMem`]) until the child executed or was reaped.
//!
//! ```text
//! parent                                 child (pid 1 of new user/pid/mnt/ipc/uts/cgroup ns)
//!   clone(CLONE_VM, CLONE_NEW*, CLONE_PIDFD) ─▶  read(sync)  … blocks
//!   write uid_map/gid_map, cgroup.procs
//!   write(sync) ──────────────────────▶  setresgid/setresuid(0) = host range
//!                                         / private; root bound ro; /dev; binds (tmpfs
//!                                         on their top dir, bound ro); /tmp (, /proc)
//!                                         pivot_root (with a mount template: the clone
//!                                         copied root, /dev, binds; only /tmp here)
//!                                         cwd; hostname; rlimits
//!                                         caps dropped, securebits locked; no_new_privs
//!                                         (parked: wait here for fds 0-3 + argv/envp)
//!                                         fds 0-3; close_range(4.., CLOEXEC)
//!                                         seccomp filters (last)
//!   read(err) ◀── EOF on exec ─────────  execve(program)
//! ```
//!
//! A parked child may instead get a *restore request* (six fds: 0-3, the
//! snapshot restorer's executable and a plan socket): it places the plan
//! socket at fd 4, closes everything above 4 at exec, skips its own seccomp
//! filters and `execveat`s the restorer, which installs the same filters
//! from its restore plan as its last step, before the guest's code runs.

use std::ffi::CString;
use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

/// `CLONE_PIDFD` (linux/sched.h).
const CLONE_PIDFD: u64 = 0x1000;
/// `CLONE_INTO_CGROUP` (linux/sched.h).
const CLONE_INTO_CGROUP: u64 = 0x2_0000_0000;
/// `CLOSE_RANGE_CLOEXEC` (linux/close_range.h).
const CLOSE_RANGE_CLOEXEC: libc::c_uint = 1 << 2;
/// `AT_EMPTY_PATH` (linux/fcntl.h).
const AT_EMPTY_PATH: libc::c_int = 0x1000;
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

/// Declares [`Stage`], its list and its descriptions from one table.
macro_rules! stages {
    ($($name:ident => $desc:literal,)*) => {
        /// A step of the child's set-up, reported to the parent when it fails.
        #[derive(Debug, Clone, Copy, PartialEq, Eq)]
        #[repr(u32)]
        pub(crate) enum Stage {
            $($name,)*
        }

        impl Stage {
            const ALL: &[Stage] = &[$(Stage::$name,)*];

            pub(crate) fn describe(self) -> &'static str {
                match self {
                    $(Stage::$name => $desc,)*
                }
            }
        }
    };
}

stages! {
    Sync => "waiting for the parent",
    SetIds => "switching to the sandbox uid/gid",
    MountPrivate => "making mounts private",
    BindRoot => "binding the root",
    RemountRoot => "making the root read-only",
    MountDev => "mounting /dev (does the root have a dev directory?)",
    DevNodes => "binding /dev/null, /dev/zero, /dev/urandom",
    MountTmp => "mounting /tmp (does the root have a tmp directory?)",
    MountProc => "mounting /proc (does the root have a proc directory?)",
    MountBinds => "mounting the read-only binds (does the root have their top directory?)",
    PivotRoot => "pivot_root",
    Cwd => "changing to the working directory (does it exist in the sandbox?)",
    Hostname => "sethostname",
    Rlimits => "setrlimit",
    Fds => "placing fds 0-3",
    Caps => "dropping capabilities",
    CloseRange => "close_range",
    NoNewPrivs => "no_new_privs",
    Seccomp => "installing the seccomp filter",
    Exec => "execve",
    Request => "receiving the request from the runtime (malformed)",
    PlanSocket => "placing the restore plan socket at fd 4",
    ExecRestorer => "execveat of the snapshot restorer",
}

impl Stage {
    pub(crate) fn from_u32(v: u32) -> Option<Stage> {
        Stage::ALL.get(usize::try_from(v).ok()?).copied()
    }
}

/// Everything the child needs, prepared before the clone.
pub(crate) struct ChildPlan {
    /// Host directory to bind read-only as `/`.
    pub root: CString,
    /// The (empty) directory the new root is assembled on.
    pub base: CString,
    /// The runtime's directory with the three empty files the device nodes
    /// are bound on, bound read-only as `/dev`.
    pub dev_dir: CString,
    pub base_dev: CString,
    pub base_dev_nodes: [(CString, CString); 3],
    pub base_tmp: CString,
    pub base_proc: CString,
    pub tmp_opts: CString,
    pub mount_proc: bool,
    /// Read-only binds: see [`BindPlan`].
    pub binds: BindPlan,
    /// The clone copies a mount template of the kind
    /// ([`build_mount_template`]): its root is already the sandbox's root;
    /// only `/tmp` (and `/proc`) are mounted, there (not at `base_tmp` and
    /// `base_proc`).
    pub templated: bool,
    /// Working directory inside the new root (after `pivot_root`).
    pub cwd: Option<CString>,
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
    /// Parked mode: the child's end of a control socket. After its set-up
    /// the child waits there for its request (fds as `SCM_RIGHTS` and an
    /// [`encode_request`] payload) instead of using `fds`, `program`, `argv`
    /// and `envp`: 4 fds (0-3) to exec `argv[0]`, or [`RESTORE_FDS`] (0-3,
    /// the restorer's executable, the plan socket) to exec the restorer.
    pub park: Option<RawFd>,
    /// Parked mode, for a program: install the seccomp programs before
    /// waiting, so that a hand-off does not wait for them. They must allow
    /// what the child does after them ([`PARKED_CHILD_SYSCALLS`]); a
    /// restore request (whose restorer installs them itself) is refused.
    pub filter_before_park: bool,
}

/// What a parked child does after installing its seccomp programs early
/// ([`ChildPlan::filter_before_park`]): receive its request, move fds 0-3
/// into place, close the rest at exec, execute the program, report a
/// failure and exit.
pub(crate) const PARKED_CHILD_SYSCALLS: &[&str] = &[
    "recvmsg",
    "fcntl",
    "dup2",
    "close",
    "close_range",
    "execve",
    "write",
    "exit_group",
];

/// The read-only binds of a sandbox, as paths under the base directory the
/// new root is assembled on (all prepared by the parent):
///
/// 1. a small tmpfs on each of `tops` (the binds' top-level directories),
/// 2. `dirs` created on it, parents first (the mount points),
/// 3. each `(source, target)` bound recursively and made read-only,
///    nosuid, nodev (`source` is the runtime's own read-only host bind of
///    the directory, which has no submounts),
/// 4. the tmpfs made read-only.
#[derive(Default)]
pub(crate) struct BindPlan {
    pub tops: Vec<CString>,
    pub dirs: Vec<CString>,
    pub binds: Vec<(CString, CString)>,
}

/// Options of the tmpfs under the binds: mount points only.
const BIND_TOP_OPTS: &std::ffi::CStr = c"size=16k,nr_inodes=64,mode=755";

/// The fds of a restore request: 0-3, the restorer's executable, the
/// child's end of the plan socket.
pub(crate) const RESTORE_FDS: usize = 6;

/// Largest request a parked sandbox accepts (program, arguments and
/// environment).
pub(crate) const PARK_MAX: usize = 64 * 1024;
const PARK_MAX_PTRS: usize = 4096;

/// The null-terminated pointer arrays of a plan, built before the clone.
struct Ptrs {
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    progs: Vec<libc::sock_fprog>,
    /// Parked mode: where the request and its pointer arrays go.
    park_buf: Vec<u8>,
    park_ptrs: Vec<*const libc::c_char>,
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
    let (park_buf, park_ptrs) = if plan.park.is_some() {
        (
            vec![0u8; PARK_MAX + 1],
            vec![std::ptr::null(); PARK_MAX_PTRS],
        )
    } else {
        (Vec::new(), Vec::new())
    };
    Ok(Ptrs {
        argv,
        envp,
        progs,
        park_buf,
        park_ptrs,
    })
}

/// A child that was cloned and is waiting for [`Spawned::go`].
pub(crate) struct Spawned {
    pub pid: libc::pid_t,
    pub pidfd: OwnedFd,
    sync_w: OwnedFd,
    err_r: OwnedFd,
    /// The memory the child runs on (see [`ChildMem`]).
    pub mem: ChildMem,
}

/// `CLONE_SETTLS`, `CLONE_VM` (linux/sched.h).
const CLONE_SETTLS: libc::c_int = 0x0008_0000;
/// Stack of a child that shares our memory.
const CHILD_STACK: usize = 256 * 1024;
/// Its thread-local storage block; the thread pointer is in the middle.
const CHILD_TLS: usize = 128 * 1024;

/// An anonymous private mapping, unmapped on drop.
struct Region {
    ptr: *mut u8,
    len: usize,
}

impl Region {
    /// `len` bytes, zeroed; the first page `PROT_NONE` when `guard`.
    fn new(len: usize, guard: bool) -> io::Result<Region> {
        // SAFETY: a fresh anonymous mapping at an address of the kernel's
        // choosing: it aliases nothing.
        let ptr = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ | libc::PROT_WRITE,
                libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_STACK,
                -1,
                0,
            )
        };
        if ptr == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        let region = Region {
            ptr: ptr.cast(),
            len,
        };
        // SAFETY: the first page of the mapping we just made.
        if guard && unsafe { libc::mprotect(ptr, 4096, libc::PROT_NONE) } < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(region)
    }
}

impl Drop for Region {
    fn drop(&mut self) {
        // SAFETY: our own mapping, unmapped once; nothing refers to it any
        // more (see `ChildMem::release`).
        unsafe { libc::munmap(self.ptr.cast(), self.len) };
    }
}

// SAFETY: a Region is the sole owner of its mapping; which thread unmaps or
// reuses it does not matter.
unsafe impl Send for Region {}

/// Stacks and TLS blocks of children that executed, kept for the next
/// clones (at most [`SPARE_MEM`] pairs): mapping them again for every child
/// cost an `mmap`, an `mprotect`, first-touch page faults and an `munmap`
/// whose TLB shootdown interrupts the other CPUs running this process
/// (~70 µs of CPU per sandbox, BENCHMARKS.md).
static SPARE: std::sync::Mutex<Vec<(Region, Region)>> = std::sync::Mutex::new(Vec::new());
/// How many stack and TLS pairs [`SPARE`] keeps.
const SPARE_MEM: usize = 16;

/// Zeroes the pages of `region` that were touched: those `mincore` reports
/// resident (a child writes two or three pages of its TLS block; zeroing all
/// 128 KiB cost ~10 µs per sandbox). Zeroes all of it if `mincore` fails.
fn zero_touched(region: &Region) {
    const PAGE: usize = 4096;
    let mut resident = [0u8; CHILD_TLS / PAGE];
    let pages = region.len.div_ceil(PAGE).min(resident.len());
    // SAFETY: `region` is our own page-aligned mapping; `mincore` writes one
    // byte per page of it into `resident`, which has room for them.
    let ok = unsafe {
        libc::mincore(
            region.ptr.cast(),
            pages * PAGE,
            resident.as_mut_ptr().cast(),
        )
    } == 0;
    for (i, r) in resident[..pages].iter().enumerate() {
        if !ok || r & 1 != 0 {
            // SAFETY: page `i` of our own mapping, which nothing else reads
            // or writes now (its child executed or was reaped).
            unsafe { std::ptr::write_bytes(region.ptr.add(i * PAGE), 0, PAGE) };
        }
    }
}

/// A stack (with its guard page) and a zeroed TLS block for a `CLONE_VM`
/// child: spare ones when there are, else new mappings.
fn child_stack_and_tls() -> io::Result<(Region, Region)> {
    if let Some(pair) = SPARE.lock().ok().and_then(|mut spare| spare.pop()) {
        return Ok(pair);
    }
    Ok((
        Region::new(CHILD_STACK, true)?,
        Region::new(CHILD_TLS, false)?,
    ))
}

/// Keeps a stack and TLS block whose child no longer runs on them for the
/// next child, the TLS zeroed again (glibc in the child expects it so, see
/// `clone_child`); beyond [`SPARE_MEM`] pairs they are unmapped.
fn spare_stack_and_tls(stack: Region, tls: Region) {
    if let Ok(mut spare) = SPARE.lock()
        && spare.len() < SPARE_MEM
    {
        zero_touched(&tls);
        spare.push((stack, tls));
    }
}

/// What `child_entry` gets.
#[repr(C)]
struct EntryArgs {
    plan: *const ChildPlan,
    ptrs: *mut Ptrs,
    sync_r: RawFd,
    /// Our end of the sync pipe, which the child closes in its copy of the
    /// fd table before it waits.
    sync_w: RawFd,
    err_w: RawFd,
}

struct ChildMemInner {
    plan: ChildPlan,
    ptrs: Ptrs,
    args: EntryArgs,
    _stack: Option<Region>,
    _tls: Option<Region>,
}

/// The memory a sandbox child runs on and reads until it executes its
/// program: its plan and pointer arrays, and, for a child that shares our
/// address space (`CLONE_VM`), its own stack and thread-local storage.
///
/// Freed only by [`ChildMem::release`], which the runtime calls once the
/// child's `execve` succeeded (it has an address space of its own) or the
/// child was reaped. Dropped any other way it is leaked, never freed under
/// a child that may still use it.
pub(crate) struct ChildMem {
    inner: std::mem::ManuallyDrop<Box<ChildMemInner>>,
}

// SAFETY: the raw pointers inside point into the same heap allocation (or
// its own mappings), which moves with the value; this process only frees
// it through `release`, from whichever thread.
unsafe impl Send for ChildMem {}

impl ChildMem {
    /// Frees the memory. Call only when the child no longer runs on it: it
    /// executed its program, or it was reaped.
    pub(crate) fn release(mut self) {
        // SAFETY: taken once, here; the caller vouches that the child is
        // gone from this memory.
        let inner = unsafe { std::mem::ManuallyDrop::take(&mut self.inner) };
        if let ChildMemInner {
            _stack: Some(stack),
            _tls: Some(tls),
            ..
        } = *inner
        {
            spare_stack_and_tls(stack, tls);
        }
    }
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
///
/// Without `cgroup_fd` the child shares our address space (`CLONE_VM`,
/// on a stack and thread-local storage of its own, through glibc's
/// `clone`): no page tables are copied and none of our pages become
/// copy-on-write, which otherwise costs this (multi-threaded) process a
/// fault and a TLB shootdown for every page it writes after each clone.
/// With `cgroup_fd` (`clone3` only) it gets a private copy, like fork.
pub(crate) fn clone_child(plan: ChildPlan, cgroup_fd: Option<RawFd>) -> io::Result<Spawned> {
    let ptrs = ptrs(&plan)?;
    let (sync_r, sync_w) = pipe_cloexec()?;
    let (err_r, err_w) = pipe_cloexec()?;
    let shared = cgroup_fd.is_none();
    let (stack, tls) = if shared {
        let (stack, tls) = child_stack_and_tls()?;
        (Some(stack), Some(tls))
    } else {
        (None, None)
    };
    let mut inner = Box::new(ChildMemInner {
        plan,
        ptrs,
        args: EntryArgs {
            plan: std::ptr::null(),
            ptrs: std::ptr::null_mut(),
            sync_r: sync_r.as_raw_fd(),
            sync_w: sync_w.as_raw_fd(),
            err_w: err_w.as_raw_fd(),
        },
        _stack: stack,
        _tls: tls,
    });
    inner.args.plan = &raw const inner.plan;
    inner.args.ptrs = &raw mut inner.ptrs;
    let flags = libc::CLONE_NEWUSER
        | libc::CLONE_NEWNS
        | libc::CLONE_NEWPID
        | libc::CLONE_NEWIPC
        | libc::CLONE_NEWUTS
        | libc::CLONE_NEWCGROUP;
    let mut pidfd: RawFd = -1;
    let rc = match (&inner._stack, &inner._tls) {
        (Some(stack), Some(tls)) => {
            // The thread pointer of x86-64's TLS variant II: the static TLS
            // (errno among it) lies below it, the thread control block
            // above, whose first word points to itself. All zero otherwise:
            // glibc sees a single-threaded process with no stack canary.
            // SAFETY: `tp` is 8-aligned and inside the TLS mapping.
            let tp = unsafe { tls.ptr.add(CHILD_TLS / 2) };
            // SAFETY: writing one pointer at `tp` and at `tp + 16` (the
            // TCB's `tcb` and `self` fields), inside the mapping.
            unsafe {
                tp.cast::<usize>().write(tp as usize);
                tp.add(16).cast::<usize>().write(tp as usize);
            }
            // SAFETY: the end of our stack mapping, 16-aligned.
            let top = unsafe { stack.ptr.add(stack.len) };
            let arg = (&raw mut inner.args).cast::<libc::c_void>();
            // SAFETY: glibc's clone runs `child_entry(arg)` on `top` with
            // `tp` as its thread pointer, in a child that shares our memory
            // (CLONE_VM) but not our fds. `arg` and everything it points to
            // live in `inner`, which is kept (and only freed through
            // `ChildMem::release`) until the child executed or was reaped.
            // CLONE_PIDFD stores the child's pidfd in `pidfd`.
            unsafe {
                libc::clone(
                    child_entry,
                    top.cast(),
                    flags
                        | libc::CLONE_VM
                        | CLONE_SETTLS
                        | CLONE_PIDFD as libc::c_int
                        | libc::SIGCHLD,
                    arg,
                    &raw mut pidfd,
                    tp.cast::<libc::c_void>(),
                    std::ptr::null_mut::<libc::c_int>(),
                )
            }
        }
        _ => {
            let mut args = CloneArgs {
                flags: flags as u64 | CLONE_PIDFD,
                pidfd: (&raw mut pidfd) as u64,
                exit_signal: libc::SIGCHLD as u64,
                ..CloneArgs::default()
            };
            if let Some(fd) = cgroup_fd {
                args.flags |= CLONE_INTO_CGROUP;
                args.cgroup = fd as u64;
            }
            // SAFETY: clone3 with a valid, fully initialised clone_args of
            // the size we pass; no CLONE_VM, so the child runs on a private
            // copy of this thread's stack and memory, like fork. In the
            // child (rc == 0) we only call `child_main`, which never
            // returns and only makes raw system calls on memory prepared
            // before the clone.
            let rc = unsafe {
                libc::syscall(
                    libc::SYS_clone3,
                    &raw mut args,
                    std::mem::size_of::<CloneArgs>(),
                )
            };
            if rc == 0 {
                let a = &mut inner.args;
                // SAFETY: we are the freshly cloned child; see `child_main`.
                unsafe { child_main(&*a.plan, &mut *a.ptrs, a.sync_r, a.sync_w, a.err_w) }
            }
            rc as libc::c_int
        }
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    // The child has copies in a table of its own (no CLONE_FILES).
    drop(sync_r);
    drop(err_w);
    // SAFETY: CLONE_PIDFD stored a new pidfd that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd) };
    Ok(Spawned {
        pid: rc as libc::pid_t,
        pidfd,
        sync_w,
        err_r,
        mem: ChildMem {
            inner: std::mem::ManuallyDrop::new(inner),
        },
    })
}

/// Where a `CLONE_VM` child starts, on its own stack.
extern "C" fn child_entry(arg: *mut libc::c_void) -> libc::c_int {
    // SAFETY: `arg` is the `EntryArgs` of a live `ChildMemInner` (see
    // `clone_child`); we are the freshly cloned child and `child_main`
    // never returns.
    unsafe {
        let a = &*arg.cast::<EntryArgs>();
        child_main(&*a.plan, &mut *a.ptrs, a.sync_r, a.sync_w, a.err_w)
    }
}

impl Spawned {
    /// Lets the child go on without waiting: a parked child sets itself up
    /// and waits for its request. Returns its pidfd, pid and error pipe.
    /// On failure the memory comes back too: the caller frees it once it
    /// reaped the child.
    #[allow(clippy::type_complexity)]
    pub(crate) fn go(
        self,
    ) -> Result<(OwnedFd, libc::pid_t, OwnedFd, ChildMem), (Stage, io::Error, ChildMem)> {
        let b = [1u8];
        // SAFETY: writing one byte from a valid buffer to our pipe end.
        let n = unsafe { libc::write(self.sync_w.as_raw_fd(), b.as_ptr().cast(), 1) };
        if n != 1 {
            return Err((Stage::Sync, io::Error::last_os_error(), self.mem));
        }
        Ok((self.pidfd, self.pid, self.err_r, self.mem))
    }
}

/// Waits on a child's error pipe: `Ok` when it closed at exec, else the
/// stage that failed and its errno.
pub(crate) fn exec_result(err_r: &OwnedFd) -> Result<(), (Stage, io::Error)> {
    let mut buf = [0u8; 8];
    let mut got = 0usize;
    loop {
        // SAFETY: reading into the unfilled tail of a valid buffer.
        let n = unsafe {
            libc::read(
                err_r.as_raw_fd(),
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
        return Ok(());
    }
    if got < buf.len() {
        return Err((
            Stage::Sync,
            io::Error::other("sandbox child died during set-up"),
        ));
    }
    let stage = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]);
    let errno = i32::from_le_bytes([buf[4], buf[5], buf[6], buf[7]]);
    Err((
        Stage::from_u32(stage).unwrap_or(Stage::Exec),
        io::Error::from_raw_os_error(errno),
    ))
}

/// Which step of [`bind_read_only`] failed (errno says why).
enum BindStep {
    Bind,
    Remount,
}

/// Binds `source` (recursively) on `target`, then makes the bind
/// read-only, nosuid and nodev.
///
/// # Safety
///
/// Only in the cloned child; both are NUL-terminated paths.
unsafe fn bind_read_only(
    source: *const libc::c_char,
    target: *const libc::c_char,
) -> Result<(), BindStep> {
    let none: *const libc::c_char = std::ptr::null();
    // SAFETY: mount(2) with NUL-terminated paths from the caller and no data.
    let rc = unsafe {
        libc::mount(
            source,
            target,
            none,
            libc::MS_BIND | libc::MS_REC,
            std::ptr::null(),
        )
    };
    if rc < 0 {
        return Err(BindStep::Bind);
    }
    let flags =
        libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY | libc::MS_NOSUID | libc::MS_NODEV;
    // SAFETY: as above; a remount names only the target.
    if unsafe { libc::mount(none, target, none, flags, std::ptr::null()) } < 0 {
        return Err(BindStep::Remount);
    }
    Ok(())
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

/// Assembles the sandbox's root on `plan.base` in the calling thread's
/// mount namespace (made private first): the root bound read-only, `/dev`,
/// the read-only binds. Raw system calls only (it runs in a child between
/// clone and exec, or on a thread making a mount template).
///
/// # Safety
///
/// The calling thread must be in a mount namespace of its own (a sandbox
/// child, or a thread that unshared it); the plan's strings are valid.
unsafe fn assemble_root(plan: &ChildPlan) -> Result<(), Stage> {
    let none: *const libc::c_char = std::ptr::null();
    let ok = |rc: libc::c_int, stage: Stage| if rc < 0 { Err(stage) } else { Ok(()) };
    // SAFETY: mount(2) calls on NUL-terminated strings owned by `plan` (or
    // literals); they change only the calling thread's mount namespace.
    unsafe {
        ok(
            libc::mount(
                none,
                c"/".as_ptr(),
                none,
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            ),
            Stage::MountPrivate,
        )?;
        // The runtime's own read-only bind of the root (which has no
        // submounts), so recursive is allowed and exact.
        match bind_read_only(plan.root.as_ptr(), plan.base.as_ptr()) {
            Err(BindStep::Bind) => return Err(Stage::BindRoot),
            Err(BindStep::Remount) => return Err(Stage::RemountRoot),
            Ok(()) => {}
        }
        // /dev: a read-only bind of the runtime's directory of three empty
        // files, with the host's null, zero and urandom bound on them. (A
        // tmpfs of its own cost a superblock made and torn down and three
        // files created per sandbox.)
        if bind_read_only(plan.dev_dir.as_ptr(), plan.base_dev.as_ptr()).is_err() {
            return Err(Stage::MountDev);
        }
        for (host, inside) in &plan.base_dev_nodes {
            ok(
                libc::mount(
                    host.as_ptr(),
                    inside.as_ptr(),
                    none,
                    libc::MS_BIND,
                    std::ptr::null(),
                ),
                Stage::DevNodes,
            )?;
        }
        // The read-only binds, on a tmpfs over their top directory.
        for top in &plan.binds.tops {
            ok(
                libc::mount(
                    c"tmpfs".as_ptr(),
                    top.as_ptr(),
                    c"tmpfs".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    BIND_TOP_OPTS.as_ptr().cast(),
                ),
                Stage::MountBinds,
            )?;
        }
        for dir in &plan.binds.dirs {
            if libc::mkdir(dir.as_ptr(), 0o755) < 0 && *libc::__errno_location() != libc::EEXIST {
                return Err(Stage::MountBinds);
            }
        }
        for (source, target) in &plan.binds.binds {
            if bind_read_only(source.as_ptr(), target.as_ptr()).is_err() {
                return Err(Stage::MountBinds);
            }
        }
        for top in &plan.binds.tops {
            ok(
                libc::mount(
                    none,
                    top.as_ptr(),
                    none,
                    libc::MS_REMOUNT
                        | libc::MS_RDONLY
                        | libc::MS_NOSUID
                        | libc::MS_NODEV
                        | libc::MS_NOEXEC,
                    BIND_TOP_OPTS.as_ptr().cast(),
                ),
                Stage::MountBinds,
            )?;
        }
    }
    Ok(())
}

/// Mounts the sandbox's own `/tmp` (a size-limited tmpfs) and, when the
/// plan asks, its `/proc`: at `plan.base_tmp` and `plan.base_proc` under the
/// root being assembled, or at `/tmp` and `/proc` of a templated root.
///
/// # Safety
///
/// As [`assemble_root`].
unsafe fn mount_tmp_and_proc(plan: &ChildPlan) -> Result<(), Stage> {
    let (tmp, proc_) = if plan.templated {
        (c"/tmp", c"/proc")
    } else {
        (plan.base_tmp.as_c_str(), plan.base_proc.as_c_str())
    };
    // SAFETY: mount(2) on NUL-terminated strings owned by `plan` or literals.
    unsafe {
        if libc::mount(
            c"tmpfs".as_ptr(),
            tmp.as_ptr(),
            c"tmpfs".as_ptr(),
            libc::MS_NOSUID | libc::MS_NODEV,
            plan.tmp_opts.as_ptr().cast(),
        ) < 0
        {
            return Err(Stage::MountTmp);
        }
        if plan.mount_proc
            && libc::mount(
                c"proc".as_ptr(),
                proc_.as_ptr(),
                c"proc".as_ptr(),
                libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                std::ptr::null(),
            ) < 0
        {
            return Err(Stage::MountProc);
        }
    }
    Ok(())
}

/// `pivot_root` onto `plan.base` and detach the old root; the working
/// directory is then the new `/`.
///
/// # Safety
///
/// As [`assemble_root`].
unsafe fn pivot_to_base(plan: &ChildPlan) -> Result<(), Stage> {
    // SAFETY: chdir, pivot_root and umount2 on NUL-terminated strings; they
    // change only the calling thread's mount namespace and directories.
    unsafe {
        if libc::chdir(plan.base.as_ptr()) < 0
            || libc::syscall(libc::SYS_pivot_root, c".".as_ptr(), c".".as_ptr()) < 0
            || libc::umount2(c".".as_ptr(), libc::MNT_DETACH) < 0
            || libc::chdir(c"/".as_ptr()) < 0
        {
            return Err(Stage::PivotRoot);
        }
    }
    Ok(())
}

/// Makes a kind's mount template: a mount namespace whose root is the
/// sandbox root `plan` describes (its root bound read-only, `/dev`, the
/// read-only binds), assembled once; a sandbox cloned from a thread inside
/// it copies those few mounts (`plan.templated`) instead of the host's whole
/// tree, and has no `pivot_root` to do and no old root to detach — the
/// detach waits for an RCU grace period. Returns the namespace.
///
/// Call it on a thread of its own, which it leaves in the template: it
/// unshares the thread's filesystem attributes and mount namespace.
pub(crate) fn build_mount_template(plan: &ChildPlan) -> io::Result<OwnedFd> {
    // SAFETY: unshare(CLONE_FS | CLONE_NEWNS) changes only the calling
    // thread's filesystem attributes and mount namespace.
    if unsafe { libc::unshare(libc::CLONE_FS | libc::CLONE_NEWNS) } < 0 {
        return Err(io::Error::last_os_error());
    }
    let failed = |stage: Stage| {
        io::Error::other(format!(
            "{}: {}",
            stage.describe(),
            io::Error::last_os_error()
        ))
    };
    // SAFETY: this thread has a mount namespace of its own (above).
    unsafe { assemble_root(plan) }.map_err(failed)?;
    // Named while the host's /proc is still visible.
    let ns = super::ns::open_ns(c"/proc/thread-self/ns/mnt")?;
    // SAFETY: as above.
    unsafe { pivot_to_base(plan) }.map_err(failed)?;
    Ok(ns)
}

/// The child: set up the sandbox and exec. Never returns.
///
/// # Safety
///
/// Only to be called once, in the child of `clone_child`, with the plan and
/// pointers the parent prepared; it uses nothing but raw system calls.
unsafe fn child_main(
    plan: &ChildPlan,
    p: &mut Ptrs,
    sync_r: RawFd,
    sync_w: RawFd,
    err_w: RawFd,
) -> ! {
    macro_rules! check {
        ($e:expr, $stage:expr) => {
            if $e < 0 {
                fail(err_w, $stage)
            }
        };
    }
    // SAFETY: every call below is a raw system call on
    // NUL-terminated strings and arrays owned by `plan`/`p`, which the
    // parent built before the clone and keeps valid until we executed or
    // were reaped (`ChildMem`; a private copy of them without CLONE_VM);
    // nothing allocates or takes a lock.
    unsafe {
        // 1. Wait until the parent has written our uid/gid maps. Our copy of
        //    its end of the pipe goes first: if the parent dies before it
        //    writes, the read ends (instead of keeping us, and our copies of
        //    its fds, alive forever).
        libc::close(sync_w);
        let mut b = [0u8; 1];
        if libc::read(sync_r, b.as_mut_ptr().cast(), 1) != 1 {
            fail(err_w, Stage::Sync);
        }
        libc::close(sync_r);
        // A parked child lives on: it must not keep the parent's fds (other
        // parked sandboxes' control sockets among them, which would never
        // see their peer close). Keep only the error pipe and our control
        // socket.
        if let Some(ctl) = plan.park {
            let (a, b) = if err_w < ctl {
                (err_w, ctl)
            } else {
                (ctl, err_w)
            };
            let ranges = [(0, a - 1), (a + 1, b - 1), (b + 1, libc::c_int::MAX)];
            for (lo, hi) in ranges {
                if lo <= hi {
                    libc::syscall(
                        libc::SYS_close_range,
                        lo as libc::c_uint,
                        hi as libc::c_uint,
                        0 as libc::c_uint,
                    );
                }
            }
        }
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
        // 3. The new root: assembled here, or copied with the mount
        //    namespace of the kind's template (`plan.templated`: the clone
        //    copied it, its root is already the sandbox's root). Then its
        //    own /tmp (and /proc).
        if !plan.templated
            && let Err(stage) = assemble_root(plan)
        {
            fail(err_w, stage);
        }
        if let Err(stage) = mount_tmp_and_proc(plan) {
            fail(err_w, stage);
        }
        // 4. pivot_root onto it and detach the old root (a template did
        //    that once for all its copies).
        let pivoted = if plan.templated {
            if libc::chdir(c"/".as_ptr()) < 0 {
                Err(Stage::PivotRoot)
            } else {
                Ok(())
            }
        } else {
            pivot_to_base(plan)
        };
        if let Err(stage) = pivoted {
            fail(err_w, stage);
        }
        let mut cwd = [0u8; 4];
        if libc::getcwd(cwd.as_mut_ptr().cast(), cwd.len()).is_null()
            || cwd[0] != b'/'
            || cwd[1] != 0
        {
            fail(err_w, Stage::PivotRoot);
        }
        if let Some(cwd) = &plan.cwd {
            check!(libc::chdir(cwd.as_ptr()), Stage::Cwd);
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
        // 6. Capabilities: bounding set, securebits, ambient, then the rest
        //    (before parking, so a hand-off does not pay for them).
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
        // 7. No new privileges (also before parking).
        check!(
            libc::prctl(libc::PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0),
            Stage::NoNewPrivs
        );
        // 8. Parked: wait here for the request.
        let mut fds = [-1 as RawFd; RESTORE_FDS];
        fds[..4].copy_from_slice(&plan.fds);
        let mut nfds = 4;
        let (mut program, mut argv, mut envp) =
            (plan.program.as_ptr(), p.argv.as_ptr(), p.envp.as_ptr());
        // Parked for a program: seccomp now (see `filter_before_park`).
        let early = plan.park.is_some() && plan.filter_before_park;
        if early {
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
        }
        if let Some(ctl) = plan.park {
            match receive_request(ctl, p) {
                Ok(r) => {
                    (fds, nfds) = (r.fds, r.nfds);
                    (program, argv, envp) = (r.program, r.argv, r.envp);
                }
                // The pool is closing: leave quietly.
                Err(Rejected::Closed) => libc::_exit(0),
                Err(Rejected::Malformed) => {
                    *libc::__errno_location() = libc::EINVAL;
                    fail(err_w, Stage::Request)
                }
            }
            libc::close(ctl);
        }
        let restore = nfds == RESTORE_FDS;
        if restore && early {
            // The restorer needs what the filters deny; it installs them
            // itself. Never asked of such a sandbox: say so, not a mystery.
            *libc::__errno_location() = libc::EINVAL;
            fail(err_w, Stage::Request)
        }
        // 9. fds 0-3 (and the restorer's two): first out of the way (sources
        //    may be 0-4), then in place. The copies close at exec.
        let mut high = [0 as RawFd; RESTORE_FDS];
        for (h, fd) in high.iter_mut().zip(&fds).take(nfds) {
            *h = libc::fcntl(*fd, libc::F_DUPFD_CLOEXEC, 64);
            check!(*h, Stage::Fds);
        }
        for (i, fd) in high[..4].iter().enumerate() {
            check!(libc::dup2(*fd, i as RawFd), Stage::Fds);
        }
        if restore {
            // dup2 clears close-on-exec: the restorer finds its plan socket
            // at fd 4.
            check!(libc::dup2(high[5], 4), Stage::PlanSocket);
        }
        // 10. Every other fd closes at exec (the error pipe included, which
        //     tells the parent the exec happened).
        let keep = if restore { 5 } else { 4 };
        check!(
            libc::syscall(
                libc::SYS_close_range,
                keep as libc::c_uint,
                libc::c_uint::MAX,
                CLOSE_RANGE_CLOEXEC
            ) as libc::c_int,
            Stage::CloseRange
        );
        if restore {
            // 11. No filters here: the restorer installs the same programs
            //     from its plan as its last step, before the guest runs.
            //     Its executable is a close-on-exec memfd, fine for an ELF.
            libc::syscall(
                libc::SYS_execveat,
                high[4],
                c"".as_ptr(),
                argv,
                envp,
                AT_EMPTY_PATH,
            );
            fail(err_w, Stage::ExecRestorer)
        }
        // 11. Seccomp, last (unless it went in before the park).
        for prog in p.progs.iter().filter(|_| !early) {
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
        libc::execve(program, argv, envp);
        fail(err_w, Stage::Exec)
    }
}

/// A parked child's request, its strings in the buffers of [`Ptrs`].
struct Request {
    /// fds 0-3, then (restore) the restorer's executable and the plan
    /// socket; `nfds` of them are valid.
    fds: [RawFd; RESTORE_FDS],
    nfds: usize,
    program: *const libc::c_char,
    argv: *const *const libc::c_char,
    envp: *const *const libc::c_char,
}

/// Why a parked child got no request.
enum Rejected {
    /// The runtime closed the control socket (or it failed).
    Closed,
    /// The message was not a request.
    Malformed,
}

/// Parked child: receives its request on `ctl` into the preallocated
/// buffers of `p`.
///
/// # Safety
///
/// Only in the cloned child; uses raw system calls and the buffers of `p`.
unsafe fn receive_request(ctl: RawFd, p: &mut Ptrs) -> Result<Request, Rejected> {
    // Room for one SCM_RIGHTS message of up to 6 fds (and any excess the
    // kernel then reports as truncation), 8-byte aligned.
    let mut cbuf = [0u64; 8];
    let mut iov = libc::iovec {
        iov_base: p.park_buf.as_mut_ptr().cast(),
        iov_len: PARK_MAX,
    };
    // SAFETY: msghdr is plain old data; zeroed is a valid empty header.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = &raw mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = cbuf.as_mut_ptr().cast();
    msg.msg_controllen = std::mem::size_of_val(&cbuf);
    let n = loop {
        // SAFETY: recvmsg into buffers that live for the whole call.
        let n = unsafe { libc::recvmsg(ctl, &raw mut msg, libc::MSG_CMSG_CLOEXEC) };
        // SAFETY: errno is thread-local and always readable.
        if n < 0 && unsafe { *libc::__errno_location() } == libc::EINTR {
            continue;
        }
        break n;
    };
    if n <= 0 {
        return Err(Rejected::Closed);
    }
    if msg.msg_flags & (libc::MSG_TRUNC | libc::MSG_CTRUNC) != 0 {
        return Err(Rejected::Malformed);
    }
    let n = n as usize;
    let mut fds = [-1 as RawFd; RESTORE_FDS];
    // SAFETY: the control buffer was filled by recvmsg; CMSG_FIRSTHDR and
    // CMSG_DATA stay inside it, and we read only as many fds as its length
    // says it holds.
    let nfds = unsafe {
        let cmsg_len =
            |k: usize| libc::CMSG_LEN((k * std::mem::size_of::<RawFd>()) as u32) as usize;
        let c = libc::CMSG_FIRSTHDR(&raw const msg);
        if c.is_null() || (*c).cmsg_level != libc::SOL_SOCKET || (*c).cmsg_type != libc::SCM_RIGHTS
        {
            return Err(Rejected::Malformed);
        }
        let nfds = if (*c).cmsg_len == cmsg_len(4) {
            4
        } else if (*c).cmsg_len == cmsg_len(RESTORE_FDS) {
            RESTORE_FDS
        } else {
            return Err(Rejected::Malformed);
        };
        let d = libc::CMSG_DATA(c).cast::<RawFd>();
        for (i, fd) in fds.iter_mut().take(nfds).enumerate() {
            *fd = d.add(i).read_unaligned();
        }
        nfds
    };
    // `argc` (u32 LE), then NUL-terminated strings: argc for argv (the
    // program first), the rest for envp. The last byte must be a NUL.
    let buf = &p.park_buf;
    if n < 5 || buf[n - 1] != 0 {
        return Err(Rejected::Malformed);
    }
    let argc = u32::from_le_bytes([buf[0], buf[1], buf[2], buf[3]]) as usize;
    let ptrs = &mut p.park_ptrs;
    let mut k = 0usize;
    let mut start = 4usize;
    for i in 4..n {
        if buf[i] != 0 {
            continue;
        }
        if k == argc {
            // argv's terminator.
            ptrs[k] = std::ptr::null();
            k += 1;
        }
        if k + 2 >= ptrs.len() {
            return Err(Rejected::Malformed);
        }
        ptrs[k] = buf[start..].as_ptr().cast();
        k += 1;
        start = i + 1;
    }
    if argc == 0 || k < argc {
        return Err(Rejected::Malformed);
    }
    if k == argc {
        ptrs[k] = std::ptr::null();
        k += 1;
    }
    ptrs[k] = std::ptr::null();
    let argv = ptrs.as_ptr();
    // SAFETY: argc + 1 <= k < ptrs.len().
    let envp = unsafe { ptrs.as_ptr().add(argc + 1) };
    Ok(Request {
        fds,
        nfds,
        program: ptrs[0],
        argv,
        envp,
    })
}

/// Encodes a parked sandbox's request: `argc` (u32 LE) and the
/// NUL-terminated strings of argv (program first) and envp.
pub(crate) fn encode_request(argv: &[CString], envp: &[CString]) -> io::Result<Vec<u8>> {
    let argc = u32::try_from(argv.len()).map_err(|_| io::Error::other("too many arguments"))?;
    let mut out = argc.to_le_bytes().to_vec();
    for s in argv.iter().chain(envp) {
        out.extend_from_slice(s.as_bytes_with_nul());
    }
    if out.len() > PARK_MAX || argv.len() + envp.len() + 3 > PARK_MAX_PTRS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "arguments and environment too large for a parked sandbox",
        ));
    }
    Ok(out)
}

/// Sends a parked sandbox its request: fds 0-3 (and, for a restore, the
/// restorer's executable and the plan socket: [`RESTORE_FDS`] in all) and
/// an [`encode_request`] payload.
pub(crate) fn send_request(
    ctl: std::os::fd::BorrowedFd<'_>,
    fds: &[std::os::fd::BorrowedFd<'_>],
    payload: &[u8],
) -> io::Result<()> {
    use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};
    if fds.len() != 4 && fds.len() != RESTORE_FDS {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            "a request carries 4 or 6 fds",
        ));
    }
    let mut space =
        [std::mem::MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(RESTORE_FDS))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !control.push(SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("control buffer too small"));
    }
    let n = rustix::net::sendmsg(
        ctl,
        &[io::IoSlice::new(payload)],
        &mut control,
        SendFlags::NOSIGNAL,
    )?;
    if n != payload.len() {
        return Err(io::Error::other("request truncated"));
    }
    Ok(())
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spare_tls_block_is_zero_again_wherever_it_was_written() {
        let tls = Region::new(CHILD_TLS, false).unwrap();
        // SAFETY: bytes inside our own mapping, nothing else uses it.
        unsafe {
            tls.ptr.add(CHILD_TLS / 2 - 8).write(0xaa);
            tls.ptr.add(CHILD_TLS / 2 + 16).write(0xbb);
            tls.ptr.add(CHILD_TLS - 1).write(0xcc);
        }
        zero_touched(&tls);
        // SAFETY: the whole mapping, readable.
        let all = unsafe { std::slice::from_raw_parts(tls.ptr, tls.len) };
        assert!(all.iter().all(|&b| b == 0));
    }

    #[test]
    fn spare_stacks_are_reused_and_bounded() {
        let pairs: Vec<_> = (0..SPARE_MEM + 4)
            .map(|_| child_stack_and_tls().unwrap())
            .collect();
        let ours: Vec<usize> = pairs.iter().map(|(s, _)| s.ptr as usize).collect();
        for (stack, tls) in pairs {
            spare_stack_and_tls(stack, tls);
        }
        assert!(SPARE.lock().unwrap().len() <= SPARE_MEM);
        // The next child runs on one of them, not on a new mapping.
        let (stack, tls) = child_stack_and_tls().unwrap();
        assert!(ours.contains(&(stack.ptr as usize)));
        spare_stack_and_tls(stack, tls);
    }
}
