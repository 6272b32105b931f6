//! Time sources: the real monotonic clock, and a manual clock for virtual
//! time (trace replay, tests).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

/// Nanoseconds on a scheduler's clock.
pub type Nanos = u64;

/// A monotonic time source, in nanoseconds from an arbitrary origin.
pub trait Clock: Send + Sync {
    /// The current time.
    fn now(&self) -> Nanos;
}

/// The process's monotonic clock.
#[derive(Debug, Clone, Copy)]
pub struct MonotonicClock {
    origin: Instant,
}

impl MonotonicClock {
    /// A clock whose origin is now.
    pub fn new() -> Self {
        MonotonicClock {
            origin: Instant::now(),
        }
    }
}

impl Default for MonotonicClock {
    fn default() -> Self {
        Self::new()
    }
}

impl Clock for MonotonicClock {
    fn now(&self) -> Nanos {
        u64::try_from(self.origin.elapsed().as_nanos()).unwrap_or(u64::MAX)
    }
}

/// A clock that moves only when told to: virtual time.
///
/// ```
/// use faas_sched::{Clock, ManualClock};
/// let c = ManualClock::new(0);
/// c.set(5_000);
/// assert_eq!(c.now(), 5_000);
/// ```
#[derive(Debug, Default)]
pub struct ManualClock {
    now: AtomicU64,
}

impl ManualClock {
    /// A clock showing `start`.
    pub fn new(start: Nanos) -> Self {
        ManualClock {
            now: AtomicU64::new(start),
        }
    }

    /// Moves the clock to `t` (never backwards: an earlier `t` is ignored).
    pub fn set(&self, t: Nanos) {
        self.now.fetch_max(t, Ordering::AcqRel);
    }

    /// Moves the clock forward by `d` nanoseconds.
    pub fn advance(&self, d: Nanos) {
        self.now.fetch_add(d, Ordering::AcqRel);
    }
}

impl Clock for ManualClock {
    fn now(&self) -> Nanos {
        self.now.load(Ordering::Acquire)
    }
}
