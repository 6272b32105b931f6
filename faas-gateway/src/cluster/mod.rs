//! Node agents over TCP: the gateway and its nodes as separate processes
//! (DESIGN.md §4, "TCP when remote").
//!
//! ```text
//!  faas serve --role gateway                       faas node --join GW:8081 --name n1
//!  ┌────────────────────────────────┐              ┌───────────────────────────────┐
//!  │ FunctionGateway ─ Scheduler    │   Hello ◀──  │ NodeAgent                     │
//!  │   │ RemoteNodeGateway (per node)│  ──▶ Welcome │   │ LocalNodeGateway          │
//!  │   │  Invoke(id) ───────────────┼──────────────┼─▶ │  sandboxes, snapshots     │
//!  │   │  ◀─ Result(id) / Error(id) ─┼──────────────┼── │                           │
//!  │ ClusterGateway: accept, table  │ ◀─ Heartbeat │   every 500 ms               │
//!  └────────────────────────────────┘  (one TCP connection per node, multiplexed)
//! ```
//!
//! - [`NodeAgent`] (node side) connects, says `Hello` (name, slots,
//!   memory), gets `Welcome` (heartbeat interval), sends `Heartbeat`s, and
//!   runs each `Invoke` on its [`crate::LocalNodeGateway`] as a task of its
//!   own, answering `Result` or `Error` with the request's id; `Cancel`
//!   aborts one. It reconnects with backoff (100 ms doubling to 5 s) and
//!   says so.
//! - [`ClusterGateway`] (gateway side) accepts nodes, registers each with
//!   the scheduler (`Scheduler::add_node`) and the function gateway
//!   ([`RemoteNodeGateway`]), forwards `Scheduler::heartbeat`, and lists
//!   them in a [`NodeTable`] (`GET /nodes`). A node that reconnects under
//!   the same name replaces its old connection.
//! - **A node is lost** when its connection closes (a killed process: the
//!   kernel closes its socket), when it sends nothing for the heartbeat
//!   timeout (2 s), when the scheduler's `tick` declares it dead
//!   ([`ClusterGateway::nodes_dead`]), or when it breaks the protocol.
//!   Then every request in flight on it fails at once with
//!   [`faas_core::InvokeError::NodeLost`] (`502`, `node_lost`, naming the
//!   node: the request may or may not have run, nothing is retried behind
//!   the caller's back), and the node is removed from the scheduler so new
//!   requests go to the others.
//! - Every frame from the peer is checked (magic, kind and which side may
//!   send it, reserved flags, length limit, request ids, JSON); a broken or
//!   hostile peer is disconnected with one log line naming it.
//!
//! ## Function files on nodes
//!
//! The gateway's registry writes each version to
//! `STATE/functions/NAME/VERSION-ID/root/` and forwards the spec with that
//! path. A node uses the path as it is: it must see the gateway's state
//! directory at the same path (the same host, as in the tests, or shared
//! storage such as NFS mounted at the same place). A node that does not see
//! it answers `503 files_unavailable` naming the path. The check is made
//! once per version.
//!
//! Not implemented yet, the design for nodes without shared storage: on
//! the first invocation of a version it does not have, the node sends
//! `Fetch(id, name, version)`; the gateway answers with the version
//! directory as a tar stream in `FetchChunk(id)` frames (bounded size,
//! back-pressured by the writer queue) ending with its blake3 digest; the
//! node unpacks into `NODE_STATE/cache/NAME/VERSION-ID.tmp`, checks the
//! digest, renames it into place (once per version; concurrent first
//! invocations wait on the same fetch) and rewrites `spec.image` to its
//! copy.
//!
//! ## Deploys in a cluster
//!
//! `--role gateway` has no sandboxes of its own: its deploys are prepared
//! by a connected node ([`ClusterGateway::preparer`] sends `Prepare`): the
//! node checks the runtime and, for Python, takes the snapshot into the
//! version directory (shared storage again), so every node restores from
//! it; a node whose host does not match the snapshot falls back to cold
//! starts by itself. With no node connected at deploy time the version is
//! registered cold, with a warning.
//!
//! ## Why a framed protocol, not HTTP/2
//!
//! Measured by `cargo bench -p faas-benches --bench cluster` (loopback,
//! one connection, a small invocation answered by an echo node gateway;
//! the numbers are in BENCHMARKS.md):
//! the framed protocol had lower latency and higher throughput than
//! hyper's HTTP/2 on the same connection count, needs no HPACK state,
//! stream flow-control windows or header maps per request, and lets the
//! node push heartbeats and the gateway cancellations as one-line frames.
//! HTTP/2 would buy interoperability with generic tools, which node agents
//! do not need. See `BENCHMARKS-cluster.md` for the numbers.

mod agent;
mod frame;
mod remote;

pub use agent::{AgentConfig, AgentError, AgentEvent, NodeAgent};
pub use frame::{FrameError, NodeView};
pub use remote::{ClusterConfig, ClusterGateway, NodeEntry, NodeTable, RemoteNodeGateway, Tracked};

/// Default largest frame: 80 MiB (a 64 MiB body plus its metadata).
pub const DEFAULT_MAX_FRAME: u32 = 80 * 1024 * 1024;
