//! Node agents over TCP: the gateway and its nodes as separate processes
//! (DESIGN.md §4, "TCP when remote").
//!
//! ```text
//!  faas serve --role gateway                       faas node --join GW:8081 --name n1
//!  ┌────────────────────────────────┐  Auth ◀──    ┌───────────────────────────────┐
//!  │                                │ ──▶ AuthReply│   (cluster token, see below)  │
//!  │                                │ AuthProof ◀──│                               │
//!  │ FunctionGateway ─ Scheduler    │   Hello ◀──  │ NodeAgent                     │
//!  │   │ RemoteNodeGateway (per node)│  ──▶ Welcome │   │ LocalNodeGateway          │
//!  │   │  Invoke(id) ───────────────┼──────────────┼─▶ │  sandboxes, snapshots     │
//!  │   │  ◀─ Result(id) / Error(id) ─┼──────────────┼── │                           │
//!  │ ClusterGateway: accept, table  │ ◀─ Heartbeat │   every 500 ms               │
//!  └────────────────────────────────┘  (one TCP connection per node, multiplexed)
//! ```
//!
//! - [`NodeAgent`] (node side) connects, authenticates (below), says
//!   `Hello` (name, slots, memory), gets `Welcome` (heartbeat interval,
//!   the functions that exist), sends `Heartbeat`s
//!   (each answered by `HeartbeatAck`: a node that hears nothing from the
//!   gateway for four intervals, at least 2 s, reconnects), and
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
//! - Nodes do not trust the gateway either: every frame is checked the same
//!   way, and a violation makes the node reconnect.
//! - Every frame from the peer is checked (magic, kind and which side may
//!   send it, reserved flags, length limit, request ids, JSON); a broken or
//!   hostile peer is disconnected with one log line naming it.
//!
//! ## Authentication: the cluster token
//!
//! The node port trusts no peer: anyone who could join would receive
//! function code and requests, and a fake gateway could make a node run
//! code. Gateway and nodes share a [`ClusterToken`] (32 random bytes; the
//! platform keeps it in the gateway's `STATE/cluster.token`, mode 0600, and
//! gives nodes a copy). Before any other frame (protocol 2):
//!
//! ```text
//! node ── Auth {protocol, Nn} ──────────────────────▶ gateway   (Nn, Ng: 32 random bytes each)
//!      ◀── AuthReply {Ng, MAC(token, "gateway", Nn, Ng)}
//!      ── AuthProof {MAC(token, "node", Nn, Ng)}, Hello ▶
//!      ◀── Welcome …   (from Hello on: each frame + MAC(K_dir, seq ‖ frame)[..16])
//! MAC = blake3 keyed hash, compared in constant time
//! ```
//!
//! - The token never crosses the wire; both nonces make every proof good
//!   for one session only (no replay); the role in the MAC keeps a peer's
//!   proof from passing as one's own (no reflection).
//! - The gateway reads nothing but these frames (64 KiB at most each) from
//!   a peer that has not proved the token, for at most
//!   [`ClusterConfig::handshake_timeout`] (2 s; each connection is its own
//!   task, so a silent peer holds up no one), and at most
//!   [`ClusterConfig::max_handshakes`] peers at once. A bad proof gets
//!   `Reject("bad cluster token")`, the connection is closed and the log
//!   says `node connection from ADDR refused: bad cluster token`. A node of
//!   protocol 1 (which starts with `Hello`) or another protocol version is
//!   told which versions differ.
//! - A node does not send `Hello` (nor run anything) until the gateway has
//!   proved the token; if it cannot, the agent stops with
//!   [`AgentError::Unauthenticated`] (it still sends its own proof, useless
//!   for any other session, so a real gateway with another token logs the
//!   node's address). A `Reject` stops it with [`AgentError::Rejected`].
//! - **Every frame after the handshake is followed by a 16-byte MAC**:
//!   `blake3::keyed_hash(K, seq ‖ frame)`, `K` derived from the token, the
//!   direction and both nonces, `seq` counting that direction's frames. A
//!   frame altered, injected, dropped, replayed or reordered on the path,
//!   or copied from another connection, fails its check and ends the
//!   connection ("… frame does not match its MAC") — so someone on the
//!   path cannot make a node run code (e.g. by answering its `Fetch`) nor
//!   feed the gateway answers.
//! - **Not encrypted**: whoever can read the traffic sees function code,
//!   requests and answers. Keep the node port on a private network or in a
//!   tunnel (WireGuard, SSH, a TLS proxy).
//!
//! ## Deleted functions
//!
//! When a function is deleted (`DELETE /functions/{name}`), the function
//! gateway tells every node gateway (`NodeGateway::remove_function`):
//! [`RemoteNodeGateway`] sends `Forget {name}`, and the node drops the
//! function's idle instances (running ones finish), the versions it
//! checked, and its fetched copies under [`AgentConfig::cache_dir`]. A node
//! that was not connected learns it from the next `Welcome`, which lists
//! the functions that exist: it drops the cached copies of the others.
//!
//! ## Function files on nodes
//!
//! The gateway's registry writes each version to
//! `STATE/functions/NAME/VERSION-ID/` (`root/` the code, `snapshot/` its
//! snapshot) and forwards the spec with those paths. A node that sees the
//! path (the same host, as in the tests, or shared storage such as NFS
//! mounted at the same place) uses it as it is; the check is made once per
//! version.
//!
//! A node that does not see it (or runs with
//! [`AgentConfig::always_fetch`]) fetches the version over its connection
//! into [`AgentConfig::cache_dir`] on the first invocation that needs it:
//!
//! ```text
//! node ── Fetch(id){name, version} ──────────────▶ gateway: registry.get_version
//!      ◀── FetchData(id) × n (1 MiB pieces of a tar of the version directory)
//!      ◀── FetchEnd(id){blake3 digest, length}  (or {error})
//! node: length and digest checked ─▶ unpacked into CACHE/NAME/.VERSION-ID.PID
//!       (tar refuses paths outside it, modes kept) ─▶ renamed to CACHE/NAME/VERSION-ID
//!       ─▶ spec.image / spec.snapshot rewritten to the copy
//! ```
//!
//! Concurrent first invocations of a version wait for the one fetch; a
//! copy left by an earlier run is reused (the rename makes it all or
//! nothing). A fetch bigger than 4 GiB, data for a fetch that is not
//! running, or a digest that does not match fails the invocation with
//! `503 files_unavailable` (the last two also end the connection as a
//! protocol violation or a refused copy). A snapshot restored from a copy
//! may not match its new path; the node gateway then starts that version
//! cold by itself.
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
//! Measured with `cargo bench -p faas-benches --bench cluster`: loopback,
//! one TCP connection, the same small invocation (64-byte body, the same
//! JSON metadata) answered by an echo node gateway, through this module vs
//! through hyper HTTP/2 (client and server). On the 2-vCPU VM, two runs:
//! one request at a time 70–71 µs framed vs 118–124 µs HTTP/2 (criterion
//! medians, 1.7×); 64 requests in flight 115–117 k requests/s framed vs
//! 56–63 k/s HTTP/2 (1.9–2.1×). The framed protocol won every case: a
//! frame is a 16-byte header, the writer task batches what is queued into
//! one write, and there is no HPACK, stream state or flow-control window
//! per request. It also fits what else the connection carries
//! (heartbeats, cancellations, version fetches are one frame each) and is
//! validated by one small decoder. HTTP/2 would buy interoperability with
//! generic tools, which the gateway ↔ node link does not need. The numbers
//! and the method are in BENCHMARKS.md.

mod agent;
mod auth;
mod frame;
mod remote;

pub use agent::{AgentConfig, AgentError, AgentEvent, NodeAgent};
pub use auth::{ClusterToken, TOKEN_LEN, TokenError};
pub use frame::{FrameError, NodeView};
pub use remote::{ClusterConfig, ClusterGateway, NodeEntry, NodeTable, RemoteNodeGateway, Tracked};

/// Default largest frame: 80 MiB (a 64 MiB body plus its metadata).
pub const DEFAULT_MAX_FRAME: u32 = 80 * 1024 * 1024;
