//! # faas-sched
//!
//! Reference implementations of [`faas_core::Scheduler`], keep-alive
//! policies, and a replay of real Azure Functions traces.
//!
//! - [`LocalScheduler`]: one mutex, first fit, per-function limits; what
//!   `faas serve` uses on a single machine.
//! - [`PoolScheduler`]: a cluster scheduler. Nodes have pools of slots with
//!   CPU and memory and are kept alive by heartbeats; each request goes to a
//!   warm instance of its function when one is idle, else a new instance on
//!   a node chosen by locality under a load bound, then by power of two
//!   choices. Per-function limits, per-instance concurrency, a bounded wait
//!   queue, and keep-alive policies ([`KeepAlivePolicy`]: fixed windows and
//!   the hybrid histogram policy of "Serverless in the Wild"). No global
//!   lock on the decision path.
//! - [`replay`]: drives a [`PoolScheduler`] through an Azure Functions trace
//!   (2019 per-minute counts or 2021 per-invocation records) in virtual time.
//!
//! ```text
//! schedule(f) ──▶ f's state (sharded map, one mutex per function)
//!    │ idle instance of f, not expired, node healthy? ──yes──▶ warm Placement
//!    │ no
//!    │ f below max_instances? ──no──▶ wait queue (bounded) ──full──▶ OverLimit (429 + Retry-After)
//!    │ yes
//!    ▼
//!  node with f's image, load ≤ bound? ──▶ else the less loaded of 2 random nodes
//!    │                                    ──▶ else scan ──none──▶ NoCapacity
//!    ▼
//!  reserve slot + cpu + memory (one mutex per node) ──▶ cold Placement
//!
//! release(p, outcome) ──▶ instance idle ──▶ policy: keep for k | unload, pre-warm at +w
//!                     └─▶ hand the slot to the first queued request
//! tick() ──▶ dead nodes (missed heartbeat): wipe, report their placements failed;
//!            unload expired instances; load pre-warmed ones; time out waiters
//! ```
#![forbid(unsafe_code)]

mod clock;
mod local;
mod policy;
mod pool;
pub mod replay;

mod rng;

pub use clock::{Clock, ManualClock, MonotonicClock, Nanos};
pub use local::{LocalScheduler, SchedulerStats};
pub use policy::{
    HybridConfig, HybridPolicy, KeepAlivePolicy, ParsePolicyError, WindowSource, Windows,
};
pub use pool::{
    Audit, AuditError, Decision, FailedPlacement, MAX_NODE_SLOTS, NodeCapacity, Placed, PoolConfig,
    PoolScheduler, PoolStats, TickReport,
};
pub use rng::Rng;

/// Result alias of this crate.
pub type Result<T> = std::result::Result<T, faas_core::ScheduleError>;
