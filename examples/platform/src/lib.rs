//! # faas-platform
//!
//! The whole platform assembled from the faas crates, as a library (so the
//! benches and tests can run it in-process) and as the `faas` binary.
//!
//! ```text
//! Platform
//!   ├─ FunctionGateway (faas-gateway)  HTTP API, body limit, trace ids
//!   ├─ PoolScheduler   (faas-sched)    nodes, slots, per-function limits,
//!   │    keep-alive (tick thread every 100 ms)
//!   ├─ LocalNodeGateway(faas-gateway)  queues, instances pull over fd 3;
//!   │    at deploy: Python snapshots (faas-snapshot's PtraceSnapshotter)
//!   ├─ PooledSandboxRuntime (faas-sandbox) namespaces, cgroups, seccomp
//!   │    (or ProcessRuntime: plain processes, development only)
//!   └─ runtimes: the Python and Node.js runtime scripts, embedded and
//!        written to STATE/runtimes/ at start-up
//! ```
//!
//! [`cluster`] runs the same parts as separate processes: a gateway
//! (`faas serve --role gateway`) and node agents (`faas node --join`) over
//! TCP.

pub mod client;
pub mod cluster;
pub mod embedded;
pub mod load;
mod platform;
pub mod runtimes;

pub use platform::{
    HEARTBEAT_TIMEOUT, Platform, PlatformConfig, SandboxChoice, TICK, machine_memory_mb,
};

/// The README's Rust examples, compiled and run as doc tests.
#[cfg(doctest)]
#[doc = include_str!("../../../README.md")]
pub struct ReadmeDoctests;
