//! # faas-gateway
//!
//! The two gateways of the request path (DESIGN.md §4):
//!
//! ```text
//! client ─HTTP─▶ FunctionGateway ── Scheduler::schedule ──▶ Placement
//!                     │                                        │
//!                     └──────── NodeGateway::invoke ◀──────────┘
//!                                   │ LocalNodeGateway: queue per function,
//!                                   │ SandboxRuntime::launch, deadline
//!                                   ▼
//!                     instance ── fd 3 (SOCK_SEQPACKET): Ready ▶ Invoke ◀ Result ▶
//! ```
//!
//! - [`FunctionGateway`]: hyper 1 HTTP server with the REST API (one route
//!   table, [`ROUTES`], documented by [`OPENAPI`]), request body limit,
//!   trace ids, and the mapping of every failure to one JSON error.
//! - [`Invocations`]: the recent invocations (asynchronous ones with their
//!   results) and their logs, bounded in number, bytes and age.
//! - [`LocalNodeGateway`]: the [`faas_core::NodeGateway`] of a node: buffers
//!   requests per function, launches instances through a
//!   [`faas_core::SandboxRuntime`], hands each request to the instance that
//!   pulls it, enforces the deadline and treats the instance as hostile; it
//!   captures what each instance writes (`Log` frames, stdout, stderr) into
//!   the logs of the invocation it serves, at most [`MAX_INVOCATION_LOGS`].
//! - [`Registry`]: deployed functions, their versions and aliases under a
//!   state directory; [`Target`] parses `NAME[@VERSION|@ALIAS]`.
//! - [`RuntimeCommands`]: the language runtimes (Python, Node.js) of a
//!   node, and the layout their instances see ([`Layout`]: the code at
//!   `/var/task`, the runtime at `/var/runtime`, both read-only).
//! - [`Metrics`]: the Prometheus metrics of the process (requests, latency,
//!   cold starts, live instances, queue depth, scheduler decisions),
//!   recorded by both gateways and served at `GET /metrics`.
//! - [`Preparer`]: what a node does with a new version before it is
//!   registered; [`LocalNodeGateway`] checks the runtime and takes the
//!   snapshot that Python instances are restored from.
//! - [`cluster`]: node agents over TCP: [`cluster::NodeAgent`] on a node,
//!   [`cluster::ClusterGateway`] and [`cluster::RemoteNodeGateway`] on the
//!   gateway, a lean framed protocol (measured against HTTP/2).

mod channel;
pub mod cluster;
mod cpu;
mod http;
mod invocations;
mod logs;
mod metrics;
mod node;
mod prepare;
mod registry;
mod runtimes;
mod sys;

pub use http::{FunctionGateway, GatewayConfig, OPENAPI, ROUTES, ResponseBody, Route};
pub use invocations::{
    ErrorInfo, Finished, InvocationLimits, InvocationRecord, InvocationState, Invocations,
    TooManyPending,
};
pub use logs::MAX_INVOCATION_LOGS;
pub use metrics::{CONTENT_TYPE as METRICS_CONTENT_TYPE, Metrics, RequestRecord, Start};
pub use node::{LocalNodeGateway, NodeConfig, NodeStats};
pub use prepare::{IMAGE_FILE, PrepareError, Prepared, Preparer, Step};
pub use registry::{
    AliasError, DeployError, OpenError, Registry, ResolveError, Staged, Target, valid_alias,
};
pub use runtimes::{
    Layout, RUNTIME_DIR, RuntimeCommand, RuntimeCommands, RuntimeUnavailable, TASK_DIR,
};
pub use sys::register;
