//! Restorers started ahead of time.
//!
//! Starting the restorer (clone + exec of a 6 KiB static program) costs
//! 60–90 µs here, before the restorer can do anything. A restore takes an
//! already started restorer, blocked on its plan socket, hands it the
//! guest's descriptors and the plan, and only then — while the guest is
//! already coming up — starts a replacement for the next restore. The
//! caller's thread does that work (no background thread competing for the
//! CPU with the restores it serves), so the pool holds at most one restorer
//! per restore in flight, up to its size.

use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::restore::seqpacket_pair;
use crate::sys::spawn;

/// Restorers kept ready by default.
const DEFAULT_SIZE: usize = 2;

static SIZE: AtomicUsize = AtomicUsize::new(DEFAULT_SIZE);
static READY: Mutex<Vec<Ready>> = Mutex::new(Vec::new());

/// Sets how many restorers are kept started ahead of time (default 2; 0
/// starts each restorer on demand and stops the waiting ones).
pub fn set_restorer_pool_size(n: usize) {
    SIZE.store(n, Ordering::Relaxed);
    let surplus: Vec<Ready> = match READY.lock() {
        Ok(mut v) => {
            let keep = v.len().min(n);
            v.split_off(keep)
        }
        Err(_) => Vec::new(),
    };
    for r in surplus {
        // Closing our end of its socket ends a waiting restorer; Restored's
        // drop kills and reaps it should it linger.
        drop(r.socket);
        drop(crate::restore::Restored::new(r.pid, r.pidfd));
    }
}

/// A started restorer waiting for its guest's descriptors and plan.
#[derive(Debug)]
pub(crate) struct Ready {
    pub(crate) pid: u32,
    pub(crate) pidfd: OwnedFd,
    /// Our end of its plan socket (its fd 4).
    pub(crate) socket: OwnedFd,
}

/// Starts one restorer with no fds 0–3 and its plan socket as fd 4.
pub(crate) fn start(exe: BorrowedFd<'_>) -> std::io::Result<Ready> {
    let (ours, theirs) = seqpacket_pair().map_err(std::io::Error::other)?;
    let child = spawn::spawn(exe, [None, None, None, None, Some(theirs.as_fd())], None)?;
    Ok(Ready {
        pid: child.pid,
        pidfd: child.pidfd,
        socket: ours,
    })
}

/// A ready restorer: one started earlier if there is one, else started now.
pub(crate) fn take(exe: BorrowedFd<'_>) -> std::io::Result<Ready> {
    let got = READY.lock().ok().and_then(|mut v| v.pop());
    match got {
        Some(r) => Ok(r),
        None => start(exe),
    }
}

/// Starts a restorer for a later restore if the pool is below its size.
/// Failures only cost that later restore its head start.
pub(crate) fn refill(exe: BorrowedFd<'_>) {
    let size = SIZE.load(Ordering::Relaxed);
    if READY.lock().map_or(true, |v| v.len() >= size) {
        return;
    }
    match start(exe) {
        Ok(r) => {
            if let Ok(mut v) = READY.lock() {
                v.push(r);
            }
        }
        Err(e) => tracing::debug!(error = %e, "starting a restorer ahead of time failed"),
    }
}
