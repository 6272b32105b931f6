//! Everything unsafe in the restorer: the entry point, raw system calls, the
//! restorer's static buffers and the final jump into the guest.
//!
//! The restorer is the only code in its process and owns the whole address
//! space: it deliberately unmaps and replaces memory that Rust does not know
//! about. The only memory Rust code here reads or writes is the restorer's own
//! statics (which the plan can never unmap: faas-snapshot refuses plans whose
//! areas touch the restorer's image) and, through [`copy_out`], the frame it
//! writes into the guest's memory.

use core::arch::{asm, global_asm};
use core::cell::UnsafeCell;

use crate::plan::{self, MmFields, SigAction};

/// The restorer's own stack.
const STACK_SIZE: usize = 64 * 1024;

/// A static the restorer alone uses, on its only thread.
#[repr(C, align(4096))]
struct Page<T>(UnsafeCell<T>);

// SAFETY: the restorer is single-threaded and has no signal handlers; each
// buffer has exactly one user at a time (see the functions below).
unsafe impl<T> Sync for Page<T> {}

static STACK: Page<[u8; STACK_SIZE]> = Page(UnsafeCell::new([0; STACK_SIZE]));
static PLAN: Page<[u8; plan::PLAN_MAX]> = Page(UnsafeCell::new([0; plan::PLAN_MAX]));
static FDS: Page<[i32; plan::MAX_FDS]> = Page(UnsafeCell::new([0; plan::MAX_FDS]));

unsafe extern "C" {
    static __executable_start: u8;
    static __bss_start: u8;
    static _end: u8;
}

// The kernel enters here with the initial stack (argc, argv, envp, auxv).
// Switch to the restorer's stack in .bss at once — the initial stack is
// unmapped with everything else — and pass the old one to `start`.
global_asm!(
    ".globl _start",
    "_start:",
    "mov rdi, rsp",
    "lea rsp, [rip + {stack} + {size}]",
    "and rsp, -16",
    "call {start}",
    "ud2",
    stack = sym STACK,
    size = const STACK_SIZE,
    start = sym start,
);

/// Finds `AT_SYSINFO_EHDR` on the initial stack and runs the restorer.
extern "C" fn start(initial_sp: *const u64) -> ! {
    const AT_NULL: u64 = 0;
    const AT_SYSINFO_EHDR: u64 = 33;
    let mut vdso = 0;
    // SAFETY: the kernel's initial stack layout (System V x86-64 ABI §3.4.1):
    // argc, argc argv pointers, NULL, envp pointers, NULL, auxv pairs ending
    // in AT_NULL. It is mapped until `run` unmaps it, after this loop.
    unsafe {
        let argc = *initial_sp;
        let mut p = initial_sp.add(1 + argc as usize + 1);
        while *p != 0 {
            p = p.add(1);
        }
        p = p.add(1);
        loop {
            let (key, value) = (*p, *p.add(1));
            if key == AT_NULL {
                break;
            }
            if key == AT_SYSINFO_EHDR {
                vdso = value;
            }
            p = p.add(2);
        }
    }
    crate::run(vdso)
}

#[panic_handler]
fn panic(_: &core::panic::PanicInfo<'_>) -> ! {
    exit_group(plan::exit::BAD_PLAN)
}

/// A raw system call with up to six arguments.
#[inline(always)]
fn syscall6(nr: usize, a: u64, b: u64, c: u64, d: u64, e: u64, f: u64) -> isize {
    let ret: isize;
    // SAFETY: a system call touches only the memory its arguments name; every
    // caller below passes either the restorer's statics, values from the plan
    // (addresses the restorer is about to replace), or plain integers. The
    // kernel clobbers rcx and r11.
    unsafe {
        asm!(
            "syscall",
            inlateout("rax") nr as isize => ret,
            in("rdi") a, in("rsi") b, in("rdx") c,
            in("r10") d, in("r8") e, in("r9") f,
            lateout("rcx") _, lateout("r11") _,
            options(nostack),
        );
    }
    ret
}

const SYS_WRITE: usize = 1;
const SYS_MMAP: usize = 9;
const SYS_MUNMAP: usize = 11;
const SYS_RT_SIGACTION: usize = 13;
const SYS_RT_SIGRETURN: usize = 15;
const SYS_MREMAP: usize = 25;
const SYS_MADVISE: usize = 28;
const SYS_RECVMSG: usize = 47;
const SYS_PRCTL: usize = 157;
const SYS_ARCH_PRCTL: usize = 158;
const SYS_SET_TID_ADDRESS: usize = 218;
const SYS_EXIT_GROUP: usize = 231;
const SYS_SET_ROBUST_LIST: usize = 273;
const SYS_SECCOMP: usize = 317;
const SYS_RSEQ: usize = 334;
const SYS_CLOSE_RANGE: usize = 436;

/// Writes all of `bytes` to `fd`, giving up silently on errors.
pub(crate) fn write_all(fd: i32, mut bytes: &[u8]) {
    while !bytes.is_empty() {
        let n = syscall6(
            SYS_WRITE,
            fd as u64,
            bytes.as_ptr() as u64,
            bytes.len() as u64,
            0,
            0,
            0,
        );
        if n <= 0 {
            return;
        }
        bytes = &bytes[n as usize..];
    }
}

pub(crate) fn exit_group(code: i32) -> ! {
    syscall6(SYS_EXIT_GROUP, code as u64, 0, 0, 0, 0, 0);
    // SAFETY: exit_group does not return.
    unsafe { core::hint::unreachable_unchecked() }
}

const CMSG_HDR: usize = 16;

/// `recvmsg` on the plan socket into `buf`, with up to `fds.len()`
/// descriptors: (bytes, descriptors). 0 bytes: the peer closed.
fn recv_with_fds(buf: &mut [u8], fds: &mut [i32]) -> Result<(usize, usize), isize> {
    const SOL_SOCKET: i32 = 1;
    const SCM_RIGHTS: i32 = 1;
    const MSG_TRUNC: i32 = 0x20;
    const MSG_CTRUNC: i32 = 0x8;
    #[repr(C, align(8))]
    struct Control([u8; CMSG_HDR + plan::MAX_FDS * 4 + 8]);

    let mut control = Control([0; CMSG_HDR + plan::MAX_FDS * 4 + 8]);
    let mut iov = Iovec {
        base: buf.as_mut_ptr() as u64,
        len: buf.len() as u64,
    };
    let mut msg = Msghdr {
        name: 0,
        namelen: 0,
        _pad: 0,
        iov: &mut iov,
        iovlen: 1,
        control: control.0.as_mut_ptr(),
        controllen: (CMSG_HDR + fds.len() * 4).next_multiple_of(8) as u64,
        flags: 0,
        _pad2: 0,
    };
    let n = syscall6(
        SYS_RECVMSG,
        plan::PLAN_FD as u64,
        &raw mut msg as u64,
        0,
        0,
        0,
        0,
    );
    if n < 0 {
        return Err(n);
    }
    if msg.flags & (MSG_TRUNC | MSG_CTRUNC) != 0 {
        return Err(0);
    }
    let mut count = 0;
    let clen = (msg.controllen as usize).min(control.0.len());
    if clen >= CMSG_HDR {
        let c = &control.0;
        let len = u64::from_ne_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]) as usize;
        let level = i32::from_ne_bytes([c[8], c[9], c[10], c[11]]);
        let kind = i32::from_ne_bytes([c[12], c[13], c[14], c[15]]);
        if level == SOL_SOCKET && kind == SCM_RIGHTS && len >= CMSG_HDR && len <= clen {
            count = ((len - CMSG_HDR) / 4).min(fds.len());
            for (i, fd) in fds.iter_mut().enumerate().take(count) {
                let o = CMSG_HDR + 4 * i;
                *fd = i32::from_ne_bytes([c[o], c[o + 1], c[o + 2], c[o + 3]]);
            }
        }
    }
    Ok((n as usize, count))
}

#[repr(C)]
struct Iovec {
    base: u64,
    len: u64,
}

#[repr(C)]
struct Msghdr {
    name: u64,
    namelen: u32,
    _pad: u32,
    iov: *mut Iovec,
    iovlen: u64,
    control: *mut u8,
    controllen: u64,
    flags: i32,
    _pad2: u32,
}

/// Receives the plan into the plan buffer and its descriptors into the fd
/// table: (plan length, descriptors).
pub(crate) fn recv_plan() -> Result<(usize, &'static [i32]), isize> {
    // SAFETY: the plan buffer and fd table are written only here, once,
    // before anything reads them.
    let (buf, fds) = unsafe { (&mut *PLAN.0.get(), &mut *FDS.0.get()) };
    match recv_with_fds(buf, fds)? {
        (0, _) => Err(0),
        (n, count) => Ok((n, &fds[..count])),
    }
}

/// Puts received descriptors into fds 0–3: `mask` bit i set means the next
/// of `fds` becomes fd i; fds without a bit are closed. Sources are moved
/// above 3 first, so a source that already sits in 0–3 is never
/// overwritten before it is placed.
pub(crate) fn place_fds(mask: u64, fds: &[i32]) {
    const SYS_FCNTL: usize = 72;
    const F_DUPFD: u64 = 0;
    let mut high = [-1i32; 4];
    let mut next = 0;
    for (target, slot) in high.iter_mut().enumerate() {
        if mask & (1 << target) != 0 {
            if let Some(&fd) = fds.get(next) {
                *slot = syscall6(SYS_FCNTL, fd as u64, F_DUPFD, 64, 0, 0, 0) as i32;
                close(fd);
            }
            next += 1;
        }
    }
    for (target, &fd) in high.iter().enumerate() {
        if fd >= 0 {
            dup2(fd, target as i32);
            close(fd);
        } else {
            close(target as i32);
        }
    }
}

/// Receives the [`plan::IoMessage`]: places fds 0–3 and changes to the
/// working directory (best effort: a directory that is gone is no reason
/// to fail the restore). `Ok(false)`: the socket closed.
pub(crate) fn recv_io() -> Result<bool, isize> {
    const SYS_CHDIR: usize = 80;
    const HEAD: usize = core::mem::size_of::<plan::IoMessage>();
    let mut buf = [0u8; HEAD + plan::CWD_MAX + 1];
    let mut fds = [-1i32; 4];
    let (n, count) = recv_with_fds(&mut buf[..HEAD + plan::CWD_MAX], &mut fds)?;
    if n == 0 {
        return Ok(false);
    }
    let Some(io) = read::<plan::IoMessage>(&buf[..n], 0) else {
        return Err(0);
    };
    let cwd_len = io.cwd_len as usize;
    if io.magic != plan::IO_MAGIC || cwd_len > plan::CWD_MAX || HEAD + cwd_len != n {
        return Err(0);
    }
    // No fds: whoever started us put 0-3 in place already (a sandbox).
    if io.fds != 0 {
        place_fds(io.fds, &fds[..count]);
    }
    if cwd_len > 0 {
        buf[HEAD + cwd_len] = 0;
        syscall6(SYS_CHDIR, buf[HEAD..].as_ptr() as u64, 0, 0, 0, 0, 0);
    }
    Ok(true)
}

/// Receives one fork command: (command, descriptors, count); None when the
/// owner closed the socket.
pub(crate) fn recv_command() -> Result<Option<(plan::ForkCommand, [i32; 4], usize)>, isize> {
    let mut buf = [0u8; core::mem::size_of::<plan::ForkCommand>()];
    let mut fds = [-1i32; 4];
    let (n, count) = recv_with_fds(&mut buf, &mut fds)?;
    if n == 0 {
        return Ok(None);
    }
    match read::<plan::ForkCommand>(&buf[..n], 0) {
        Some(cmd) => Ok(Some((cmd, fds, count))),
        None => Err(0),
    }
}

/// Answers a fork command: the child's pid (or -errno) and its pidfd.
pub(crate) fn send_reply(pid: i64, pidfd: i32) {
    const SYS_SENDMSG: usize = 46;
    #[repr(C, align(8))]
    struct Control([u8; CMSG_HDR + 8]);
    let mut control = Control([0; CMSG_HDR + 8]);
    control.0[..8].copy_from_slice(&((CMSG_HDR + 4) as u64).to_ne_bytes());
    control.0[8..12].copy_from_slice(&1i32.to_ne_bytes());
    control.0[12..16].copy_from_slice(&1i32.to_ne_bytes());
    control.0[16..20].copy_from_slice(&pidfd.to_ne_bytes());
    let mut body = pid.to_ne_bytes();
    let mut iov = Iovec {
        base: body.as_mut_ptr() as u64,
        len: 8,
    };
    let with_fd = pid > 0 && pidfd >= 0;
    let msg = Msghdr {
        name: 0,
        namelen: 0,
        _pad: 0,
        iov: &mut iov,
        iovlen: 1,
        control: if with_fd {
            control.0.as_mut_ptr()
        } else {
            core::ptr::null_mut()
        },
        controllen: if with_fd { control.0.len() as u64 } else { 0 },
        flags: 0,
        _pad2: 0,
    };
    syscall6(
        SYS_SENDMSG,
        plan::PLAN_FD as u64,
        &raw const msg as u64,
        0,
        0,
        0,
        0,
    );
}

/// Forks (a `clone` without CLONE_VM): (pid or -errno, pidfd) in the parent,
/// (0, -1) in the child. With `parent_owns`, the child is the template
/// owner's child (CLONE_PARENT), so it can wait for it through the pidfd;
/// the kernel refuses that to the init of a pid namespace.
pub(crate) fn fork(extra_flags: u64, parent_owns: bool) -> (i64, i32) {
    const SYS_CLONE: usize = 56;
    const CLONE_PIDFD: u64 = 0x1000;
    const CLONE_PARENT: u64 = 0x8000;
    let mut pidfd: i32 = -1;
    let mut flags = extra_flags | CLONE_PIDFD | SIGCHLD;
    if parent_owns {
        flags |= CLONE_PARENT;
    }
    let rc = syscall6(SYS_CLONE, flags, 0, &raw mut pidfd as u64, 0, 0, 0);
    (rc as i64, if rc > 0 { pidfd } else { -1 })
}

/// `SIGCHLD`.
pub(crate) const SIGCHLD: u64 = 17;

/// This process's pid, as its own pid namespace sees it.
pub(crate) fn getpid() -> i64 {
    const SYS_GETPID: usize = 39;
    syscall6(SYS_GETPID, 0, 0, 0, 0, 0, 0) as i64
}

/// Blocks every signal that can be blocked.
pub(crate) fn block_signals() {
    const SYS_RT_SIGPROCMASK: usize = 14;
    const SIG_SETMASK: u64 = 2;
    let all = u64::MAX;
    syscall6(
        SYS_RT_SIGPROCMASK,
        SIG_SETMASK,
        &raw const all as u64,
        0,
        8,
        0,
        0,
    );
}

/// Reaps the exited (or exiting) child `pid`; nothing when it is not our
/// child.
pub(crate) fn reap(pid: u32) {
    const SYS_WAITID: usize = 247;
    const P_PID: u64 = 1;
    const WEXITED: u64 = 4;
    // struct siginfo: 128 bytes.
    let mut info = [0u64; 16];
    syscall6(
        SYS_WAITID,
        P_PID,
        u64::from(pid),
        info.as_mut_ptr() as u64,
        WEXITED,
        0,
        0,
    );
}

pub(crate) fn dup2(from: i32, to: i32) {
    const SYS_DUP2: usize = 33;
    syscall6(SYS_DUP2, from as u64, to as u64, 0, 0, 0, 0);
}

pub(crate) fn close(fd: i32) {
    const SYS_CLOSE: usize = 3;
    syscall6(SYS_CLOSE, fd as u64, 0, 0, 0, 0, 0);
}

/// The first `len` bytes of the plan buffer, filled by [`recv_plan`].
pub(crate) fn plan_bytes(len: usize) -> &'static [u8] {
    // SAFETY: written only by recv_plan (the kernel), which has returned;
    // from here on the buffer is only read.
    let all = unsafe { &*PLAN.0.get() };
    &all[..len.min(all.len())]
}

/// Reads a plain-old-data struct at `offset`, if it fits.
pub(crate) fn read<T: Copy>(bytes: &[u8], offset: usize) -> Option<T> {
    let end = offset.checked_add(core::mem::size_of::<T>())?;
    if end > bytes.len() {
        return None;
    }
    // SAFETY: the range is in bounds (checked above); T is one of the plan's
    // `#[repr(C)]` structs of integers, valid for any bit pattern.
    Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr().add(offset).cast::<T>()) })
}

/// The restorer's own image, page aligned: [start, end).
pub(crate) fn image_range() -> (u64, u64) {
    // SAFETY: linker-defined symbols; only their addresses are taken.
    let (start, end) = (&raw const __executable_start as u64, &raw const _end as u64);
    (start & !0xfff, (end + 0xfff) & !0xfff)
}

pub(crate) fn munmap(addr: u64, len: u64) -> isize {
    syscall6(SYS_MUNMAP, addr, len, 0, 0, 0, 0)
}

/// Moves a mapping of `len` bytes from `from` to `to`.
pub(crate) fn mremap(from: u64, len: u64, to: u64) -> isize {
    const MREMAP_MAYMOVE: u64 = 1;
    const MREMAP_FIXED: u64 = 2;
    let rc = syscall6(
        SYS_MREMAP,
        from,
        len,
        len,
        MREMAP_MAYMOVE | MREMAP_FIXED,
        to,
        0,
    );
    if rc >= 0 && rc as u64 != to {
        -14
    } else {
        rc.min(0)
    }
}

pub(crate) fn mmap_fixed(
    addr: u64,
    len: u64,
    prot: u32,
    flags: u32,
    fd: i32,
    offset: u64,
) -> isize {
    const MAP_FIXED: u32 = 0x10;
    let rc = syscall6(
        SYS_MMAP,
        addr,
        len,
        prot as u64,
        (flags | MAP_FIXED) as u64,
        fd as i64 as u64,
        offset,
    );
    if rc >= 0 && rc as u64 != addr {
        -14
    } else {
        rc.min(0)
    }
}

pub(crate) fn madvise(addr: u64, len: u64, advice: u32) -> isize {
    syscall6(SYS_MADVISE, addr, len, advice as u64, 0, 0, 0)
}

/// PR_SET_MM_MAP with the saved fields and auxv; the exe link is left as is.
pub(crate) fn set_mm_map(mm: &MmFields, auxv: &[u64]) -> isize {
    const PR_SET_MM: u64 = 35;
    const PR_SET_MM_MAP: u64 = 14;
    #[repr(C)]
    struct PrctlMmMap {
        fields: MmFields,
        auxv: u64,
        auxv_size: u32,
        exe_fd: u32,
    }
    let map = PrctlMmMap {
        fields: *mm,
        auxv: auxv.as_ptr() as u64,
        auxv_size: (auxv.len() * 8) as u32,
        exe_fd: u32::MAX,
    };
    syscall6(
        SYS_PRCTL,
        PR_SET_MM,
        PR_SET_MM_MAP,
        &raw const map as u64,
        core::mem::size_of::<PrctlMmMap>() as u64,
        0,
        0,
    )
}

pub(crate) fn rt_sigaction(act: &SigAction) -> isize {
    // struct kernel_sigaction: handler, flags, restorer, mask.
    let k = [act.handler, act.flags, act.restorer, act.mask];
    syscall6(SYS_RT_SIGACTION, act.signo, k.as_ptr() as u64, 0, 8, 0, 0)
}

pub(crate) fn set_robust_list(head: u64, len: u64) -> isize {
    syscall6(SYS_SET_ROBUST_LIST, head, len, 0, 0, 0, 0)
}

pub(crate) fn set_tid_address(addr: u64) {
    syscall6(SYS_SET_TID_ADDRESS, addr, 0, 0, 0, 0, 0);
}

pub(crate) fn set_fs_gs(fs: u64, gs: u64) -> isize {
    const ARCH_SET_GS: u64 = 0x1001;
    const ARCH_SET_FS: u64 = 0x1002;
    let rc = syscall6(SYS_ARCH_PRCTL, ARCH_SET_FS, fs, 0, 0, 0, 0);
    if rc < 0 {
        return rc;
    }
    syscall6(SYS_ARCH_PRCTL, ARCH_SET_GS, gs, 0, 0, 0, 0)
}

/// Copies `bytes` to guest address `addr`. faas-snapshot places the range
/// in a writable area of the plan; `madvise(MADV_WILLNEED)` first proves it
/// is mapped (ENOMEM otherwise), so a wrong plan is an error, not a fault.
pub(crate) fn copy_out(addr: u64, bytes: &[u8]) -> isize {
    const MADV_WILLNEED: u64 = 3;
    let start = addr & !0xfff;
    let end = (addr + bytes.len() as u64 + 0xfff) & !0xfff;
    let rc = syscall6(SYS_MADVISE, start, end - start, MADV_WILLNEED, 0, 0, 0);
    if rc < 0 {
        return rc;
    }
    // SAFETY: [addr, addr + len) is mapped (madvise above fails with ENOMEM
    // otherwise) and writable (faas-snapshot places the frame in a writable
    // area); it is guest memory, disjoint from every Rust object.
    unsafe { core::ptr::copy_nonoverlapping(bytes.as_ptr(), addr as *mut u8, bytes.len()) };
    0
}

/// Closes every descriptor above `keep`.
pub(crate) fn close_above(keep: u32) -> isize {
    syscall6(
        SYS_CLOSE_RANGE,
        keep as u64 + 1,
        u32::MAX as u64,
        0,
        0,
        0,
        0,
    )
}

pub(crate) fn rseq(addr: u64, len: u32, sig: u32) -> isize {
    syscall6(SYS_RSEQ, addr, len as u64, 0, sig as u64, 0, 0)
}

/// Installs `insns` (`struct sock_filter`s) as a seccomp filter.
pub(crate) fn seccomp(insns: &[u8], count: u32, no_new_privs: bool) -> isize {
    const PR_SET_NO_NEW_PRIVS: u64 = 38;
    const SECCOMP_SET_MODE_FILTER: u64 = 1;
    if no_new_privs {
        let rc = syscall6(SYS_PRCTL, PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0, 0);
        if rc < 0 {
            return rc;
        }
    }
    // The instructions sit in the plan buffer at an arbitrary alignment;
    // the kernel copies them with copy_from_user, which needs none.
    #[repr(C)]
    struct SockFprog {
        len: u16,
        _pad: [u16; 3],
        filter: u64,
    }
    let prog = SockFprog {
        len: count as u16,
        _pad: [0; 3],
        filter: insns.as_ptr() as u64,
    };
    syscall6(
        SYS_SECCOMP,
        SECCOMP_SET_MODE_FILTER,
        0,
        &raw const prog as u64,
        0,
        0,
        0,
    )
}

/// Unmaps the restorer's writable pages (its stack and buffers included) and
/// returns into the guest through `rt_sigreturn` with the stack pointer at
/// `sp` (the frame's `ucontext`, 8 bytes above the frame's start).
pub(crate) fn sigreturn(sp: u64) -> ! {
    // SAFETY: linker-defined symbols; only their addresses are taken.
    let (bss, end) = (&raw const __bss_start as u64, &raw const _end as u64);
    let bss = (bss + 0xfff) & !0xfff;
    let end = (end + 0xfff) & !0xfff;
    // SAFETY: after the munmap nothing touches the stack or any static: the
    // remaining instructions use registers only. rt_sigreturn loads the
    // guest's registers, xsave state, signal mask and sigaltstack from the
    // frame at sp - 8 and never returns on success; if the kernel rejects the
    // frame the process gets SIGSEGV (or we exit if it returned).
    unsafe {
        asm!(
            "syscall",
            "mov rsp, rdx",
            "mov eax, {sigreturn}",
            "syscall",
            "mov edi, {code}",
            "mov eax, {exit}",
            "syscall",
            "ud2",
            in("rdx") sp,
            sigreturn = const SYS_RT_SIGRETURN,
            code = const plan::exit::SIGRETURN,
            exit = const SYS_EXIT_GROUP,
            in("rax") SYS_MUNMAP,
            in("rdi") bss,
            in("rsi") end - bss,
            options(noreturn),
        );
    }
}

// There is no libc: the compiler's calls for block copies and fills land
// here. `rep movsb`/`rep stosb` keep them from recursing into themselves.

/// `memcpy`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memcpy(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    // SAFETY: the caller (compiler-generated code) guarantees both ranges are
    // valid for n bytes and do not overlap.
    unsafe {
        asm!("rep movsb", inout("rcx") n => _, inout("rdi") dest => _, inout("rsi") src => _,
             options(nostack, preserves_flags));
    }
    dest
}

/// `memmove`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memmove(dest: *mut u8, src: *const u8, n: usize) -> *mut u8 {
    if (dest as usize) <= (src as usize) || (dest as usize) >= (src as usize) + n {
        // SAFETY: copying forwards is correct when dest is below src or the
        // ranges are disjoint; the caller guarantees both are valid.
        return unsafe { memcpy(dest, src, n) };
    }
    // SAFETY: copying backwards (direction flag set, then cleared as the ABI
    // requires) is correct for an overlapping dest above src.
    unsafe {
        asm!("std", "rep movsb", "cld",
             inout("rcx") n => _, inout("rdi") dest.add(n - 1) => _, inout("rsi") src.add(n - 1) => _,
             options(nostack));
    }
    dest
}

/// `memset`.
#[unsafe(no_mangle)]
unsafe extern "C" fn memset(dest: *mut u8, c: i32, n: usize) -> *mut u8 {
    // SAFETY: the caller guarantees dest is valid for n bytes.
    unsafe {
        asm!("rep stosb", inout("rcx") n => _, inout("rdi") dest => _, in("al") c as u8,
             options(nostack, preserves_flags));
    }
    dest
}

/// `memcmp` (and `bcmp`).
#[unsafe(no_mangle)]
unsafe extern "C" fn memcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    for i in 0..n {
        // SAFETY: the caller guarantees both ranges are valid for n bytes.
        let (x, y) = unsafe {
            (
                core::ptr::read_volatile(a.add(i)),
                core::ptr::read_volatile(b.add(i)),
            )
        };
        if x != y {
            return i32::from(x) - i32::from(y);
        }
    }
    0
}

/// `bcmp`.
#[unsafe(no_mangle)]
unsafe extern "C" fn bcmp(a: *const u8, b: *const u8, n: usize) -> i32 {
    // SAFETY: same contract as memcmp.
    unsafe { memcmp(a, b, n) }
}

/// Maps the pages of `[start, start + len)` for reading: reads one byte of
/// each. A page not mapped yet takes a page fault, and the kernel's fault-
/// around maps the other cached pages of its 64 KiB window and area with
/// it, under one page-table lock, so the reads that follow mostly find their
/// pages mapped. `MADV_POPULATE_READ` walks the range page by page through
/// `get_user_pages` instead; for a Python hello's ~1,850 read pages these
/// reads cost the instance ~10 % less CPU (BENCHMARKS.md).
pub(crate) fn map_for_reading(start: u64, len: u64) {
    let end = start.saturating_add(len);
    let mut at = start;
    while at < end {
        // SAFETY: the plan's read ranges lie in areas the restorer mapped
        // readable (faas-snapshot keeps only those: `keep_inside_readable`)
        // from the page file or an original file, at pages that were
        // present in the snapshotted process; a volatile one-byte read of
        // such a page only faults it in.
        unsafe { core::ptr::read_volatile(at as *const u8) };
        at += 4096;
    }
}
