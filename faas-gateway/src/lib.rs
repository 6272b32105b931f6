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
//! - [`FunctionGateway`]: hyper 1 HTTP server with the REST API, request body
//!   limit, trace ids, and the mapping of every failure to one JSON error.
//! - [`LocalNodeGateway`]: the [`faas_core::NodeGateway`] of a node: buffers
//!   requests per function, launches instances through a
//!   [`faas_core::SandboxRuntime`], hands each request to the instance that
//!   pulls it, enforces the deadline and treats the instance as hostile.
//! - [`Registry`]: deployed functions and their versions under a state
//!   directory.
//! - [`RuntimeCommands`]: the language runtimes (Python, Node.js) of a
//!   node, and the layout their instances see ([`Layout`]: the code at
//!   `/var/task`, the runtime at `/var/runtime`, both read-only).
//! - [`Preparer`]: what a node does with a new version before it is
//!   registered; [`LocalNodeGateway`] checks the runtime and takes the
//!   snapshot that Python instances are restored from.
//! - [`cluster`]: node agents over TCP: [`cluster::NodeAgent`] on a node,
//!   [`cluster::ClusterGateway`] and [`cluster::RemoteNodeGateway`] on the
//!   gateway, a lean framed protocol (measured against HTTP/2).

mod channel;
pub mod cluster;
mod http;
mod node;
mod prepare;
mod registry;
mod runtimes;
mod sys;

pub use http::{FunctionGateway, GatewayConfig, ResponseBody};
pub use node::{LocalNodeGateway, NodeConfig, NodeStats};
pub use prepare::{PrepareError, Prepared, Preparer};
pub use registry::{DeployError, OpenError, Registry, Staged};
pub use runtimes::{
    Layout, RUNTIME_DIR, RuntimeCommand, RuntimeCommands, RuntimeUnavailable, TASK_DIR,
};
