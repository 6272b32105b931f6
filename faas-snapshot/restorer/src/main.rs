//! faas-restorer: turns itself into a snapshotted process.
//!
//! faas-snapshot starts this small static program (no libc, so no rseq, no
//! TLS and no signal handlers of its own) with the guest's fds 0–3 in place
//! and a socket on fd 4, sends it a restore plan (see `plan.rs`) with the
//! descriptors of the page file and the mapped files, and the restorer
//! executes the plan itself — no ptrace round trip per step:
//!
//! 1. unmap everything but its own image and the running kernel's
//!    vvar/vvar_vclock/vdso;
//! 2. move those three to the snapshot's addresses, keeping their relative
//!    offsets (glibc caches pointers into the vDSO);
//! 3. map every area: private memory copy-on-write from the page file,
//!    code and read-only data from the original files;
//! 4. mm fields and auxv (PR_SET_MM_MAP), signal actions, the robust list,
//!    the clear-tid address, fs/gs base;
//! 5. close every descriptor above 3, register the guest's rseq area; an
//!    instance restored ahead of its request (`MODE_PARKED`) now pre-faults
//!    the snapshot's recorded working set (`MADV_POPULATE_WRITE`, and a
//!    one-byte read of each page a request only reads),
//!    installs the sandbox's seccomp filter when the plan says the filter
//!    allows what follows (`FILTERS_BEFORE_PARK`), and waits for its
//!    guest's fds 0–3; otherwise the filter goes in now (last: nothing the
//!    restorer does after it needs more than `munmap` and `rt_sigreturn`);
//! 6. unmap its own writable pages and `rt_sigreturn` on a frame placed
//!    below the guest's stack pointer: general registers, the full xsave
//!    state, the signal mask and the sigaltstack come back in one step.
//!
//! The restorer's read-only text (a few KiB, shared page cache) stays mapped
//! at its fixed link address; faas-snapshot refuses a snapshot whose areas
//! collide with it. On any failure the restorer writes one line to fd 2 and
//! exits with one of the `plan::exit` codes; the guest never runs half
//! restored.
#![no_std]
#![no_main]

mod plan;
mod sys;

use plan::{
    AREA_LEN, Area, FILTER_INSN_LEN, HEADER_LEN, Header, PLAN_MAGIC, PLAN_VERSION, RANGE_LEN,
    Range, SIGACTION_LEN, SigAction, VDSO_PARTS, exit,
};

/// Lowest address the restorer unmaps from.
const LOW: u64 = 0x1000;
/// The end of the 47-bit user address space.
const TASK_SIZE: u64 = 0x7fff_ffff_f000;

/// Gives up: one line on fd 2, then exit.
fn fail(code: i32, what: &str, err: isize) -> ! {
    sys::write_all(2, b"faas-restorer: ");
    sys::write_all(2, what.as_bytes());
    if err < 0 {
        sys::write_all(2, b": errno ");
        let mut digits = [0u8; 20];
        sys::write_all(2, itoa(err.unsigned_abs() as u64, &mut digits));
    }
    sys::write_all(2, b"\n");
    sys::exit_group(code)
}

/// Gives up (see [`fail`]) when a system call returned an error.
fn check(rc: isize, code: i32, what: &str) {
    if rc < 0 {
        fail(code, what, rc);
    }
}

fn itoa(mut v: u64, buf: &mut [u8; 20]) -> &[u8] {
    let mut i = buf.len();
    loop {
        i -= 1;
        buf[i] = b'0' + (v % 10) as u8;
        v /= 10;
        if v == 0 {
            return &buf[i..];
        }
    }
}

/// Entered from `_start` on the restorer's own stack; `vdso` is the running
/// vDSO's base (`AT_SYSINFO_EHDR`, 0 without one).
pub(crate) fn run(vdso: u64) -> ! {
    // Started ahead of time, the restorer first learns whose process it
    // becomes: fds 0-3 and the working directory.
    match sys::recv_io() {
        Ok(true) => {}
        // The pool that started us is closing.
        Ok(false) => sys::exit_group(0),
        Err(e) => fail(exit::NO_PLAN, "cannot receive the guest's descriptors", e),
    }
    let (len, fds) = match sys::recv_plan() {
        Ok(got) => got,
        Err(e) => fail(exit::NO_PLAN, "cannot receive the restore plan", e),
    };
    let plan = sys::plan_bytes(len);
    let Some(header) = sys::read::<Header>(plan, 0) else {
        fail(exit::BAD_PLAN, "plan shorter than its header", 0)
    };
    if header.magic != PLAN_MAGIC || header.version != PLAN_VERSION {
        fail(exit::BAD_PLAN, "plan has a foreign magic or version", 0);
    }
    let areas_at = HEADER_LEN;
    let sig_at = areas_at + header.n_areas as usize * AREA_LEN;
    let filter_at = sig_at + header.n_sigactions as usize * SIGACTION_LEN;
    let frame_at = filter_at + header.n_filter as usize * FILTER_INSN_LEN;
    let end = frame_at + header.frame_len as usize;
    let prefault_at = end;
    let prefault_end = prefault_at + header.n_prefault as usize * RANGE_LEN;
    if prefault_end != plan.len() || header.auxv_len as usize > header.auxv.len() {
        fail(exit::BAD_PLAN, "plan length does not match its header", 0);
    }

    let (image_start, image_end) = sys::image_range();
    unmap_all_but(image_start, image_end, &header, vdso);
    move_vdso(&header, vdso, image_start, image_end);

    for i in 0..header.n_areas as usize {
        let Some(area) = sys::read::<Area>(plan, areas_at + i * AREA_LEN) else {
            fail(exit::BAD_PLAN, "area outside the plan", 0)
        };
        map_area(&area, fds);
    }

    check(
        sys::set_mm_map(&header.mm, &header.auxv[..header.auxv_len as usize]),
        exit::STATE,
        "prctl(PR_SET_MM_MAP)",
    );
    for i in 0..header.n_sigactions as usize {
        let Some(act) = sys::read::<SigAction>(plan, sig_at + i * SIGACTION_LEN) else {
            fail(exit::BAD_PLAN, "signal action outside the plan", 0)
        };
        check(sys::rt_sigaction(&act), exit::STATE, "rt_sigaction");
    }
    if header.robust_list != 0 {
        check(
            sys::set_robust_list(header.robust_list, header.robust_len),
            exit::STATE,
            "set_robust_list",
        );
    }
    sys::set_tid_address(header.clear_tid);
    check(
        sys::set_fs_gs(header.fs_base, header.gs_base),
        exit::STATE,
        "arch_prctl(ARCH_SET_FS/GS)",
    );

    // The frame goes below the guest's stack pointer; from here on the
    // guest's memory is complete.
    check(
        sys::copy_out(header.frame_addr, &plan[frame_at..end]),
        exit::STATE,
        "signal frame outside the guest's writable memory",
    );
    let template = header.mode == plan::MODE_TEMPLATE;
    let parked = header.mode == plan::MODE_PARKED;
    // A template, or an instance parked until its request, keeps its
    // command socket.
    check(
        sys::close_above(if template || parked {
            plan::PLAN_FD as u32
        } else {
            3
        }),
        exit::STATE,
        "close_range",
    );
    if header.rseq != 0 {
        // Registered here, inherited by every fork of a template.
        check(
            sys::rseq(header.rseq, header.rseq_len, header.rseq_sig),
            exit::STATE,
            "rseq registration",
        );
    }
    let filter = &plan[filter_at..frame_at];
    if template {
        serve_forks(&header, &plan[sig_at..filter_at], filter);
    }
    if parked {
        // Restored ahead of its request: take the faults of its recorded
        // working set now rather than during the request — copy-on-write
        // for the pages a request writes, mapping for those it reads.
        // Only an optimisation: an error changes nothing.
        for i in 0..header.n_prefault as usize {
            if let Some(r) = sys::read::<Range>(plan, prefault_at + i * RANGE_LEN)
                && (r.advice == plan::POPULATE_WRITE || r.advice == plan::POPULATE_READ)
            {
                if r.advice == plan::POPULATE_READ {
                    sys::map_for_reading(r.start, r.len);
                } else {
                    sys::madvise(r.start, r.len, r.advice);
                }
            }
        }
        // When the sandbox's profile allows what the restorer does from
        // here on (the plan says so: FILTERS_BEFORE_PARK; see
        // faas_snapshot::PARKED_SYSCALLS), its filters go in now too, so a
        // request does not wait for them.
        let early = header.no_new_privs & plan::FILTERS_BEFORE_PARK != 0;
        if early {
            install_filters(&header, filter);
        }
        // Then wait for the guest's fds 0-3.
        let (cmd, received, n) = match sys::recv_command() {
            Ok(Some(got)) => got,
            // The owner dropped it unused.
            Ok(None) => sys::exit_group(0),
            Err(e) => fail(exit::NO_PLAN, "cannot receive the guest's descriptors", e),
        };
        sys::place_fds(cmd.fds, &received[..n]);
        check(sys::close_above(3), exit::STATE, "close_range");
        if early {
            sys::sigreturn(header.frame_addr + 8)
        }
    }
    become_guest(&header, filter)
}

/// The last steps of every guest: the sandbox's seccomp filter, then
/// `rt_sigreturn` into the saved state.
fn become_guest(header: &Header, filter: &[u8]) -> ! {
    install_filters(header, filter);
    sys::sigreturn(header.frame_addr + 8)
}

/// Installs the sandbox's seccomp programs, in order.
fn install_filters(header: &Header, filter: &[u8]) {
    let mut rest = filter;
    while !rest.is_empty() {
        let Some(count) = sys::read::<u64>(rest, 0) else {
            fail(exit::BAD_PLAN, "truncated seccomp program", 0)
        };
        let len = (count as usize).saturating_mul(FILTER_INSN_LEN);
        let Some(program) = rest.get(8..8 + len) else {
            fail(exit::BAD_PLAN, "truncated seccomp program", 0)
        };
        check(
            sys::seccomp(
                program,
                count as u32,
                header.no_new_privs & plan::NO_NEW_PRIVS != 0,
            ),
            exit::SECCOMP,
            "seccomp filter",
        );
        rest = &rest[8 + len..];
    }
}

/// A template's life: fork a guest per command until the socket closes.
///
/// The template runs no guest code: it blocks every signal (each child gets
/// the guest's mask back from its signal frame) and keeps `SIGCHLD` at its
/// default, so that no child is reaped behind its owner's back (an ignored
/// `SIGCHLD` would reap them all); each child gets the guest's own
/// `SIGCHLD` action back. `sigactions` are the plan's signal actions.
fn serve_forks(header: &Header, sigactions: &[u8], filter: &[u8]) -> ! {
    // The init of a pid namespace (a template inside a sandbox) may not
    // give its children away: they are its own, reaped when told.
    let init = sys::getpid() == 1;
    sys::block_signals();
    let mut chld = None;
    for i in 0..header.n_sigactions as usize {
        if let Some(act) = sys::read::<SigAction>(sigactions, i * SIGACTION_LEN)
            && act.signo == sys::SIGCHLD
        {
            chld = Some(act);
        }
    }
    if chld.is_some() {
        let default = SigAction {
            signo: sys::SIGCHLD,
            ..SigAction::default()
        };
        check(sys::rt_sigaction(&default), exit::STATE, "rt_sigaction");
    }
    loop {
        let (cmd, received, n) = match sys::recv_command() {
            Ok(Some(got)) => got,
            // The owner dropped the template (a pid namespace's init
            // takes its children with it).
            Ok(None) => sys::exit_group(0),
            Err(e) => fail(exit::NO_PLAN, "cannot receive a fork command", e),
        };
        let fds = &received[..n];
        if cmd.kind == plan::REAP_CHILD {
            for &fd in fds {
                sys::close(fd);
            }
            if init {
                sys::reap(cmd.pid);
            }
            continue;
        }
        let (pid, pidfd) = sys::fork(cmd.clone_flags, !init);
        if pid == 0 {
            // The child: its own fds 0-3, a fresh robust list and clear-tid
            // (fork resets both), the guest's SIGCHLD action, then the
            // guest.
            sys::place_fds(cmd.fds, fds);
            sys::close_above(3);
            if header.robust_list != 0 {
                sys::set_robust_list(header.robust_list, header.robust_len);
            }
            sys::set_tid_address(header.clear_tid);
            if let Some(act) = &chld {
                check(sys::rt_sigaction(act), exit::STATE, "rt_sigaction");
            }
            become_guest(header, filter);
        }
        sys::send_reply(pid, pidfd);
        for &fd in fds {
            sys::close(fd);
        }
        if pidfd >= 0 {
            sys::close(pidfd);
        }
    }
}

/// Unmaps the whole user address space except `[image_start, image_end)` and
/// the running vDSO parts.
fn unmap_all_but(image_start: u64, image_end: u64, header: &Header, vdso: u64) {
    let mut keep = [(0u64, 0u64); 1 + VDSO_PARTS];
    keep[0] = (image_start, image_end);
    let mut n = 1;
    if vdso != 0 {
        for part in header.vdso.iter().filter(|p| p.len > 0) {
            let start = vdso.wrapping_add_signed(part.offset);
            keep[n] = (start, start + part.len);
            n += 1;
        }
    }
    let keep = &mut keep[..n];
    keep.sort_unstable();
    let mut from = LOW;
    for &(start, end) in keep.iter() {
        if start > from {
            check(sys::munmap(from, start - from), exit::UNMAP, "munmap");
        }
        from = from.max(end);
    }
    if from < TASK_SIZE {
        check(sys::munmap(from, TASK_SIZE - from), exit::UNMAP, "munmap");
    }
}

/// Moves vvar, vvar_vclock and vdso to the snapshot's addresses, through the
/// scratch range when the old and new places overlap.
fn move_vdso(header: &Header, vdso: u64, image_start: u64, image_end: u64) {
    if vdso == 0 {
        if header.vdso.iter().any(|p| p.len > 0) {
            fail(exit::VDSO, "this process has no vDSO to move", 0);
        }
        return;
    }
    let parts = &header.vdso;
    let (mut lo, mut hi, mut tlo, mut thi) = (u64::MAX, 0, u64::MAX, 0);
    for p in parts.iter().filter(|p| p.len > 0) {
        let cur = vdso.wrapping_add_signed(p.offset);
        lo = lo.min(cur);
        hi = hi.max(cur + p.len);
        tlo = tlo.min(p.target);
        thi = thi.max(p.target + p.len);
        if p.target.wrapping_sub(cur) != parts[VDSO_PARTS - 1].target.wrapping_sub(vdso) {
            fail(
                exit::VDSO,
                "vDSO parts would not keep their relative offsets",
                0,
            );
        }
    }
    if lo == u64::MAX || tlo == lo {
        return;
    }
    if tlo < image_end && image_start < thi {
        fail(
            exit::VDSO,
            "the snapshot's vDSO collides with the restorer",
            0,
        );
    }
    let via_scratch = tlo < hi && lo < thi;
    for p in parts.iter().filter(|p| p.len > 0) {
        let mut cur = vdso.wrapping_add_signed(p.offset);
        if via_scratch {
            let stop = header.scratch + (cur - lo);
            check(
                sys::mremap(cur, p.len, stop),
                exit::VDSO,
                "mremap of the vDSO to the scratch range",
            );
            cur = stop;
        }
        check(
            sys::mremap(cur, p.len, p.target),
            exit::VDSO,
            "mremap of the vDSO",
        );
    }
}

fn map_area(area: &Area, fds: &[i32]) {
    let fd = if area.fd == plan::ANON {
        -1
    } else {
        match fds.get(area.fd as usize) {
            Some(&fd) => fd,
            None => fail(exit::BAD_PLAN, "area names a descriptor the plan lacks", 0),
        }
    };
    check(
        sys::mmap_fixed(area.start, area.len, area.prot, area.flags, fd, area.offset),
        exit::MAP,
        "mmap of a snapshot area",
    );
    if area.advice != 0 {
        check(
            sys::madvise(area.start, area.len, area.advice),
            exit::MAP,
            "madvise of a snapshot area",
        );
    }
}
