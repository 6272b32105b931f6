//! # faas-snapshot
//!
//! CRIU-style checkpoint/restore of a function runtime stopped at its
//! snapshot point (DESIGN.md §6): [`dump`] checkpoints a single-threaded
//! process with ptrace; [`Snapshot::restore`] brings up a new process from
//! it in a few hundred microseconds; [`PtraceSnapshotter`] is the
//! [`faas_core::Snapshotter`] the platform uses.
//!
//! ## Checkpoint
//!
//! `PTRACE_SEIZE` + `PTRACE_INTERRUPT`, then: general registers (fs/gs base
//! included) and the full xsave area (`NT_X86_XSTATE`); the signal mask, the
//! handled signals' actions, the sigaltstack, the clear-tid address and the
//! program break (read by system calls injected at a `syscall` instruction
//! of the process's own vDSO); the rseq registration; the robust list; mm
//! fields and auxv; the memory map from `smaps`. Private memory is saved
//! page by page where `/proc/PID/pagemap` says it was ever touched;
//! file-backed areas whose pages all still come from their file are
//! recorded by path and identity (device, inode, size, mtime) instead. A
//! syscall the stop interrupted is rewound like the kernel would restart it.
//! Refused, with the reason: more than one thread, fds other than 0–3,
//! shared anonymous memory, deleted files, locked memory.
//!
//! ## Snapshot directory
//!
//! `snapshot.meta` (versioned, BLAKE3-checksummed, validated on load) and
//! `pages.img`, a sparse page file in which every saved area has a range as
//! long as itself, so it maps with one `mmap(MAP_PRIVATE)`. Optionally
//! `workingset` ([`WorkingSet`], recorded by [`record_working_set`] from an
//! instance that served a request): the pages an instance restored ahead of
//! its request ([`Snapshot::send_parked_plan`]) pre-faults before it parks.
//!
//! ## Restore
//!
//! [`Snapshot::open`] checks the snapshot against this host once — kernel,
//! XCR0, vDSO bytes and layout, the identity of every mapped file — and
//! builds the restore plan. Each [`Snapshot::restore`] then starts the
//! embedded restorer (a 6 KiB static program without libc, linked at
//! `0x5f000000`) with the new process's fds 0–3 and sends it the plan and
//! the files' descriptors; the restorer rebuilds the address space itself
//! (no ptrace, no copying: private memory comes back copy-on-write from the
//! page file) and `rt_sigreturn`s into the saved registers. See
//! `restorer/src/main.rs` for its steps.
//!
//! Memory that was anonymous comes back file-backed (the page file, private):
//! after `madvise(MADV_DONTNEED)` such memory reads the snapshot's bytes
//! again rather than zeros, and `MADV_FREE` fails with `EINVAL`. glibc's
//! malloc in a single-threaded process relies on neither; runtimes whose
//! allocators do should be restored with their heaps re-anonymised
//! (not done yet).
//!
//! What a restored process does not get back: other threads, fds other than
//! 0–3, pending signals, interval timers, the `/proc/PID/exe` link (it names
//! the restorer), and its pid. The restorer's read-only text stays mapped
//! at `0x5f000000`.
#![warn(missing_docs)]

mod dump;
mod maps;
mod meta;
#[path = "../restorer/src/plan.rs"]
#[allow(dead_code, unreachable_pub)]
mod plan;
mod pool;
mod restore;
mod snapshotter;
mod sys;
mod template;
mod workingset;

pub use dump::{DumpOptions, dump};
pub use meta::FORMAT_VERSION;
pub use pool::set_restorer_pool_size;
pub use restore::{
    PARKED_SYSCALLS, RestoreIo, RestoreOptions, Restored, Snapshot, restorer_executable,
};
pub use snapshotter::PtraceSnapshotter;
pub use template::{FORK_NAMESPACES, ForkTemplate, template_fork, template_reap};
pub use workingset::{
    READ_SET_FILE, WORKING_SET_FILE, WorkingSet, WorkingSetError, pages_at_exit,
    record_working_set, working_set_at_exit, write_both,
};

/// A summary of the snapshot in `dir` (areas, their sources and sizes),
/// without checking it against this host.
pub fn inspect(dir: &std::path::Path) -> Result<String, faas_core::SnapshotError> {
    restore::read_meta(dir).map(|m| restore::describe(&m))
}
