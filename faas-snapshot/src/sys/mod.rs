//! The only unsafe code of faas-snapshot: ptrace, reading another process's
//! memory, a few system calls std and rustix do not wrap, and starting the
//! restorer (vfork + execveat) with its descriptors in place.

pub(crate) mod ptrace;
pub(crate) mod spawn;

use std::io;

/// `XCR0`: the xsave features the kernel enabled for user space.
pub(crate) fn xcr0() -> u64 {
    #[target_feature(enable = "xsave")]
    fn read() -> u64 {
        // SAFETY: xgetbv(0) only reads XCR0; callers check OSXSAVE first.
        unsafe { core::arch::x86_64::_xgetbv(0) }
    }
    // CPUID.1:ECX.OSXSAVE[bit 27]: the OS enabled xsave and xgetbv.
    let leaf1 = core::arch::x86_64::__cpuid(1);
    if leaf1.ecx & (1 << 27) == 0 {
        return 0;
    }
    // SAFETY: OSXSAVE is set, so the xsave target feature (xgetbv) is usable.
    unsafe { read() }
}

/// `uname -r` and `uname -v`: the kernel a snapshot belongs to.
pub(crate) fn kernel() -> String {
    let u = rustix::system::uname();
    format!(
        "{} {}",
        u.release().to_string_lossy(),
        u.version().to_string_lossy()
    )
}

/// The robust futex list of `pid`: (head, length).
pub(crate) fn robust_list(pid: u32) -> io::Result<(u64, u64)> {
    let mut head: u64 = 0;
    let mut len: usize = 0;
    // SAFETY: get_robust_list writes one pointer and one size_t to the two
    // locals, which outlive the call.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_get_robust_list,
            pid as libc::c_int,
            &raw mut head,
            &raw mut len,
        )
    };
    if rc < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok((head, len as u64))
}

/// The running process's vDSO base (`AT_SYSINFO_EHDR`), 0 without one.
pub(crate) fn vdso_base() -> u64 {
    // SAFETY: getauxval only reads the process's saved auxv.
    unsafe { libc::getauxval(libc::AT_SYSINFO_EHDR) }
}

/// The running process's own vDSO bytes (`len` bytes from `base`).
pub(crate) fn own_vdso(base: u64, len: u64) -> Vec<u8> {
    if base == 0 || len == 0 {
        return Vec::new();
    }
    // SAFETY: the kernel maps the vDSO readable at AT_SYSINFO_EHDR for the
    // life of the process; `len` is its length as /proc/self/maps gives it.
    unsafe { std::slice::from_raw_parts(base as *const u8, len as usize) }.to_vec()
}

/// The bytes of a `#[repr(C)]` plain-old-data value of the plan.
pub(crate) fn pod_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: T is one of the plan's `#[repr(C)]` structs of integers with
    // no padding (see plan.rs), so every byte is initialised; the slice
    // borrows `value` for its lifetime.
    unsafe {
        std::slice::from_raw_parts((value as *const T).cast::<u8>(), std::mem::size_of::<T>())
    }
}

/// This process's own fd 0, 1 or 2.
pub(crate) fn stdio_fd(n: i32) -> std::os::fd::BorrowedFd<'static> {
    // SAFETY: fds 0-2 belong to the process for its whole life (std never
    // closes them); callers pass only 0, 1 or 2 and only when they inherit
    // the caller's stdio.
    unsafe { std::os::fd::BorrowedFd::borrow_raw(n.clamp(0, 2)) }
}

/// Registers a pidfd with tokio's reactor.
pub(crate) fn register(
    fd: std::os::fd::OwnedFd,
) -> io::Result<tokio::io::unix::AsyncFd<std::os::fd::OwnedFd>> {
    // SAFETY: the OwnedFd stays open until the AsyncFd drops it, and its
    // raw number never changes, which is what register_with_interest needs.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(fd, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}
