//! CPU affinity of instances.
//!
//! Handing a request to an instance wakes it. On a virtual machine, waking
//! a process on another vCPU costs an inter-processor interrupt, a VM exit
//! that takes 10–20 µs of the waker's time (measured on the warm path: 7.5 %
//! of all CPU time went into `sock_def_readable` waking instances on the
//! other vCPU). A wake-up on the waker's own CPU costs none of that: the
//! instance runs when the gateway thread blocks or is preempted, and its
//! answer wakes that thread on the same CPU again.
//!
//! So each kept-alive instance gets a home CPU, one of those the node
//! gateway may run on (round robin), and is pinned to it; a request goes to
//! an idle instance whose home is the CPU the request is handled on when
//! there is one (see `Queue::take_idle`). A per-request instance is pinned
//! to the CPU that sends it its request, just before it is sent, while the
//! requests of its function run shorter than [`SHORT_RUN`] on average (a
//! restored Python hello runs ~1.5 ms and is better off on whichever CPU is
//! free).
//!
//! Pinning is for short requests, where a wake-up is a large part of the
//! cost. A per-request instance still running its request after
//! [`UNPIN_AFTER`] is unpinned there and then, and a kept-alive one after a
//! request that took longer (for work that long a wake-up is noise, and the
//! kernel must be free to run it on whichever CPU is idle); a kept-alive one
//! is pinned to its home again after a request shorter than
//! [`SHORT_RUN`].

use std::sync::OnceLock;
use std::time::Duration;

use rustix::thread::{CpuSet, Pid, sched_getaffinity, sched_getcpu, sched_setaffinity};

/// A pinned instance whose request runs longer than this is unpinned.
pub(crate) const UNPIN_AFTER: Duration = Duration::from_millis(2);

/// A request that runs shorter than this is short: a kept-alive instance
/// is pinned again after one, and per-request instances are pinned while
/// their function's requests are short on average.
pub(crate) const SHORT_RUN: Duration = Duration::from_millis(1);

/// The CPU this thread runs on, when instances are pinned at all (this
/// process may run on more than one CPU).
pub(crate) fn current() -> Option<usize> {
    (allowed().len() > 1).then(sched_getcpu)
}

/// The home CPU of the `n`th instance: the CPUs this process may run on,
/// in turn; `None` with fewer than two.
pub(crate) fn home(n: u64) -> Option<usize> {
    let cpus = allowed();
    if cpus.len() < 2 {
        return None;
    }
    cpus.get(usize::try_from(n).ok()? % cpus.len()).copied()
}

/// Pins process `pid` to `cpu`; false when the kernel refuses (the process
/// is left as it was).
pub(crate) fn pin(pid: u32, cpu: usize) -> bool {
    let mut set = CpuSet::new();
    set.set(cpu);
    set_affinity(pid, &set)
}

/// Lets process `pid` run on every CPU this process may run on again.
pub(crate) fn unpin(pid: u32) -> bool {
    let mut set = CpuSet::new();
    for &c in allowed() {
        set.set(c);
    }
    set_affinity(pid, &set)
}

fn set_affinity(pid: u32, set: &CpuSet) -> bool {
    match i32::try_from(pid).ok().and_then(Pid::from_raw) {
        // It may have exited meanwhile: its wait reports that.
        Some(pid) => sched_setaffinity(Some(pid), set).is_ok(),
        None => false,
    }
}

/// The CPUs this process may run on, read once.
fn allowed() -> &'static [usize] {
    static CPUS: OnceLock<Vec<usize>> = OnceLock::new();
    CPUS.get_or_init(|| match sched_getaffinity(None) {
        Ok(set) => (0..CpuSet::MAX_CPU).filter(|&c| set.is_set(c)).collect(),
        Err(_) => Vec::new(),
    })
}
