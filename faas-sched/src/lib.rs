//! # faas-sched
//!
//! Reference implementations of [`faas_core::Scheduler`].
//!
//! [`LocalScheduler`] is the first one: a fixed set of nodes, each with a
//! pool of instance slots, first-fit placement and per-function concurrency
//! limits. It is what `faas serve` uses on a single machine.
//!
//! ```text
//! schedule(f) ── f below max_instances? ──no──▶ OverLimit (→ 429)
//!                    │ yes
//!                    ▼
//!              first node with a free slot ──none──▶ NoCapacity (→ 429)
//!                    │
//!                    ▼
//!              Placement { node, slot }   ...   release(placement, outcome)
//! ```
#![forbid(unsafe_code)]

mod local;

pub use local::{LocalScheduler, SchedulerStats};

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, faas_core::ScheduleError>;
