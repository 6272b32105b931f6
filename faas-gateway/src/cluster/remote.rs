//! The gateway side: [`ClusterGateway`] accepts node connections,
//! [`RemoteNodeGateway`] forwards invocations over one, [`NodeTable`] says
//! which nodes there are and how they fare.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faas_core::types::valid_name;
use faas_core::{
    BoxFuture, FunctionSpec, Invocation, InvocationResult, InvokeError, NodeGateway, NodeId,
    NodeInfo, Placement, Scheduler,
};
use parking_lot::Mutex;
use serde::Serialize;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{Notify, mpsc, oneshot};

use super::auth::{self, ClusterToken, Role, Seal, TOKEN_LEN};
use super::frame::{
    self, ErrorMeta, FetchEnd, FetchMeta, ForgetMeta, FrameError, Hello, Kind, NodeView,
    PrepareMeta, PreparedMeta, Reject, ResultMeta, Side, Welcome,
};
use crate::http::FunctionGateway;
use crate::prepare::{PrepareError, Prepared, Preparer};
use crate::registry::Registry;
use crate::runtimes::RuntimeUnavailable;

/// Settings of the gateway's side of node connections.
#[derive(Debug, Clone)]
pub struct ClusterConfig {
    /// The secret every node must prove it knows (and the gateway proves
    /// to each node) before anything else crosses the connection.
    pub token: ClusterToken,
    /// How often nodes send a heartbeat (told to each node in `Welcome`).
    pub heartbeat: Duration,
    /// A node silent for this long is disconnected and its requests fail
    /// (give the scheduler the same heartbeat timeout).
    pub heartbeat_timeout: Duration,
    /// Largest frame accepted from a node, in bytes.
    pub max_frame: u32,
    /// How long a new connection may take to authenticate and say
    /// `Hello`; a peer that says nothing is dropped after it.
    pub handshake_timeout: Duration,
    /// Most connections authenticating at once; more are closed at once
    /// (so a flood of idle peers cannot exhaust the gateway).
    pub max_handshakes: usize,
    /// How long a node may take to prepare a version at deploy.
    pub prepare_timeout: Duration,
}

impl ClusterConfig {
    /// Defaults for a cluster authenticated by `token`: heartbeats every
    /// 500 ms, lost after 2 s of silence, 2 s to authenticate.
    pub fn new(token: ClusterToken) -> Self {
        ClusterConfig {
            token,
            heartbeat: Duration::from_millis(500),
            heartbeat_timeout: Duration::from_secs(2),
            max_frame: super::DEFAULT_MAX_FRAME,
            handshake_timeout: Duration::from_secs(2),
            max_handshakes: 256,
            prepare_timeout: Duration::from_secs(120),
        }
    }
}

// ------------------------------------------------------------ node table

/// One node as the gateway sees it: its capacity and counters.
#[derive(Debug)]
pub struct NodeEntry {
    name: String,
    address: String,
    slots: u32,
    memory_mb: u64,
    since: Instant,
    last_heartbeat: Mutex<Instant>,
    lost: Mutex<Option<String>>,
    in_flight: AtomicU64,
    served: AtomicU64,
    failed: AtomicU64,
}

impl NodeEntry {
    fn new(name: &str, address: String, slots: u32, memory_mb: u64) -> Self {
        let now = Instant::now();
        NodeEntry {
            name: name.to_owned(),
            address,
            slots,
            memory_mb,
            since: now,
            last_heartbeat: Mutex::new(now),
            lost: Mutex::new(None),
            in_flight: AtomicU64::new(0),
            served: AtomicU64::new(0),
            failed: AtomicU64::new(0),
        }
    }

    fn view(&self) -> NodeView {
        let lost = self.lost.lock().clone();
        let local = self.address == "local";
        NodeView {
            name: self.name.clone(),
            address: self.address.clone(),
            slots: self.slots,
            memory_mb: self.memory_mb,
            state: if lost.is_some() { "lost" } else { "up" }.to_owned(),
            reason: lost,
            in_flight: self.in_flight.load(Ordering::Relaxed),
            served: self.served.load(Ordering::Relaxed),
            failed: self.failed.load(Ordering::Relaxed),
            heartbeat_age_ms: if local {
                0
            } else {
                u64::try_from(self.last_heartbeat.lock().elapsed().as_millis()).unwrap_or(u64::MAX)
            },
            up_s: self.since.elapsed().as_secs(),
        }
    }

    /// Counts one request from start to end.
    fn track(&self) -> InFlight<'_> {
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        InFlight(self)
    }

    fn finish(&self, r: &Result<InvocationResult, InvokeError>) {
        match r {
            Ok(_) | Err(InvokeError::Function { .. }) => &self.served,
            Err(_) => &self.failed,
        }
        .fetch_add(1, Ordering::Relaxed);
    }
}

struct InFlight<'a>(&'a NodeEntry);

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// The nodes of a gateway, for `GET /nodes`: the local node (embedded
/// mode) and every node that joined over TCP, with their state.
#[derive(Debug, Default)]
pub struct NodeTable {
    nodes: Mutex<BTreeMap<String, Arc<NodeEntry>>>,
}

impl NodeTable {
    /// An empty table.
    pub fn new() -> Self {
        Self::default()
    }

    /// Every node, by name.
    pub fn list(&self) -> Vec<NodeView> {
        self.nodes.lock().values().map(|e| e.view()).collect()
    }

    fn insert(&self, e: Arc<NodeEntry>) {
        self.nodes.lock().insert(e.name.clone(), e);
    }

    /// Registers the in-process node `gateway` (with `slots` and
    /// `memory_mb`) and returns it wrapped so its requests are counted.
    pub fn local<G: NodeGateway>(&self, gateway: G, slots: u32, memory_mb: u64) -> Tracked<G> {
        let entry = Arc::new(NodeEntry::new(
            &gateway.node().0,
            "local".into(),
            slots,
            memory_mb,
        ));
        self.insert(entry.clone());
        Tracked {
            inner: gateway,
            entry,
        }
    }
}

/// A [`NodeGateway`] whose requests are counted in a [`NodeTable`] (see
/// [`NodeTable::local`]).
pub struct Tracked<G> {
    inner: G,
    entry: Arc<NodeEntry>,
}

impl<G: NodeGateway> NodeGateway for Tracked<G> {
    fn node(&self) -> &NodeId {
        self.inner.node()
    }

    fn invoke<'a>(
        &'a self,
        function: Arc<FunctionSpec>,
        placement: &'a Placement,
        invocation: Invocation,
    ) -> BoxFuture<'a, Result<InvocationResult, InvokeError>> {
        Box::pin(async move {
            let _t = self.entry.track();
            let r = self.inner.invoke(function, placement, invocation).await;
            self.entry.finish(&r);
            r
        })
    }

    fn remove_function(&self, function: &str) {
        self.inner.remove_function(function);
    }
}

// ------------------------------------------------------------ connection

/// What a node answered to one request.
enum Reply {
    Result(ResultMeta, Bytes),
    Error(ErrorMeta),
    Prepared(PreparedMeta),
}

struct Waiter {
    /// `Invoke` or `Prepare`: which answers fit.
    asked: Kind,
    tx: oneshot::Sender<Reply>,
}

struct ConnState {
    /// Why the connection is closed, once it is.
    closed: Option<String>,
    pending: HashMap<u64, Waiter>,
    /// The writer task's queue (`None` once closed).
    out: Option<mpsc::UnboundedSender<Bytes>>,
}

/// One node's connection.
struct Conn {
    node: NodeId,
    entry: Arc<NodeEntry>,
    state: Mutex<ConnState>,
    next_id: AtomicU64,
    stop: Notify,
}

impl Conn {
    fn lost(&self) -> InvokeError {
        InvokeError::NodeLost {
            node: self.node.clone(),
            reason: self.reason(),
        }
    }

    fn reason(&self) -> String {
        self.state
            .lock()
            .closed
            .clone()
            .unwrap_or_else(|| "connection closed".into())
    }

    /// Sends a request frame made by `make(id)`; the answer arrives on the
    /// returned receiver (dropped sender: the connection closed).
    fn request(
        &self,
        asked: Kind,
        make: impl FnOnce(u64) -> Bytes,
    ) -> Result<(u64, oneshot::Receiver<Reply>), String> {
        let id = self.next_id.fetch_add(1, Ordering::Relaxed) + 1;
        let frame = make(id);
        let (tx, rx) = oneshot::channel();
        let mut st = self.state.lock();
        if let Some(r) = &st.closed {
            return Err(r.clone());
        }
        st.pending.insert(id, Waiter { asked, tx });
        if let Some(out) = &st.out
            && out.send(frame).is_ok()
        {
            return Ok((id, rx));
        }
        st.pending.remove(&id);
        Err("connection closed".into())
    }

    /// Queues a frame for the node; false once the connection is closed.
    fn send(&self, frame: Bytes) -> bool {
        let st = self.state.lock();
        st.out.as_ref().is_some_and(|o| o.send(frame).is_ok())
    }

    /// Forgets request `id` (its caller gave up) and tells the node.
    fn cancel(&self, id: u64) {
        let mut st = self.state.lock();
        if st.pending.remove(&id).is_some()
            && let Some(out) = &st.out
        {
            let _ = out.send(frame::encode_empty(Kind::Cancel, id));
        }
    }

    /// Closes the connection: every waiting request fails with `reason`.
    fn close(&self, reason: String) {
        let waiters = {
            let mut st = self.state.lock();
            if st.closed.is_some() {
                return;
            }
            st.closed = Some(reason);
            st.out = None;
            std::mem::take(&mut st.pending)
        };
        // Dropping the senders wakes every waiter at once.
        drop(waiters);
        self.stop.notify_one();
    }

    /// Hands an answer to its waiter. An id never issued, or an answer that
    /// does not fit the request, is a protocol violation.
    fn complete(&self, id: u64, kind: Kind, reply: Reply) -> Result<(), String> {
        if id > self.next_id.load(Ordering::Relaxed) {
            return Err(format!("answer for request {id}, which was never sent"));
        }
        let mut st = self.state.lock();
        let Some(w) = st.pending.remove(&id) else {
            // Cancelled or timed out meanwhile: nobody waits.
            return Ok(());
        };
        let fits = match w.asked {
            Kind::Invoke => matches!(kind, Kind::Result | Kind::Error),
            _ => kind == Kind::Prepared,
        };
        if !fits {
            return Err(format!("{kind:?} answer to an {:?} request {id}", w.asked));
        }
        let _ = w.tx.send(reply);
        Ok(())
    }
}

// ------------------------------------------------------------ remote node

/// A [`NodeGateway`] on another host: each invocation is forwarded over
/// the node's connection (many in flight on one connection, matched by
/// request id), and fails with [`InvokeError::NodeLost`] at once when the
/// connection closes or the node misses its heartbeats.
#[derive(Clone)]
pub struct RemoteNodeGateway {
    conn: Arc<Conn>,
}

/// Cancels a forwarded request whose caller went away before its answer.
struct CancelOnDrop<'a> {
    conn: &'a Conn,
    id: u64,
    done: bool,
}

impl Drop for CancelOnDrop<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.conn.cancel(self.id);
        }
    }
}

/// The borrowed form of `frame::InvokeMeta` (same fields).
#[derive(Serialize)]
struct InvokeOut<'a> {
    spec: &'a FunctionSpec,
    invocation: u64,
    headers: &'a [(String, String)],
    trace_id: &'a str,
    timeout_ms: u64,
}

impl NodeGateway for RemoteNodeGateway {
    fn node(&self) -> &NodeId {
        &self.conn.node
    }

    fn invoke<'a>(
        &'a self,
        function: Arc<FunctionSpec>,
        placement: &'a Placement,
        invocation: Invocation,
    ) -> BoxFuture<'a, Result<InvocationResult, InvokeError>> {
        Box::pin(async move {
            let conn = &*self.conn;
            if placement.node != conn.node {
                return Err(InvokeError::WrongNode {
                    placement: placement.node.clone(),
                    node: conn.node.clone(),
                });
            }
            let _t = conn.entry.track();
            let remaining = invocation.deadline.remaining();
            let r = forward(conn, &function, &invocation, remaining).await;
            conn.entry.finish(&r);
            r
        })
    }

    /// Tells the node (`Forget`); a node that is not connected now learns
    /// it when it joins again (`Welcome` lists the functions that exist).
    fn remove_function(&self, function: &str) {
        let name = function.to_owned();
        self.conn
            .send(frame::encode_json(Kind::Forget, 0, &ForgetMeta { name }));
    }
}

async fn forward(
    conn: &Conn,
    spec: &FunctionSpec,
    inv: &Invocation,
    remaining: Duration,
) -> Result<InvocationResult, InvokeError> {
    let timeout_ms = u64::try_from(remaining.as_millis()).unwrap_or(u64::MAX);
    let (id, rx) = conn
        .request(Kind::Invoke, |id| {
            frame::encode_split(
                Kind::Invoke,
                id,
                &InvokeOut {
                    spec,
                    invocation: inv.id.0,
                    headers: &inv.headers,
                    trace_id: &inv.trace_id,
                    timeout_ms,
                },
                &inv.body,
            )
        })
        .map_err(|reason| InvokeError::NodeLost {
            node: conn.node.clone(),
            reason,
        })?;
    let mut guard = CancelOnDrop {
        conn,
        id,
        done: false,
    };
    // The node enforces the deadline; this bound covers a node that
    // stays connected but never answers.
    let reply = tokio::time::timeout(remaining + Duration::from_secs(1), rx).await;
    guard.done = true;
    match reply {
        Err(_) => {
            conn.cancel(id);
            Err(InvokeError::TimedOut {
                timeout: spec.limits.timeout(),
            })
        }
        Ok(Err(_)) => Err(conn.lost()),
        Ok(Ok(Reply::Result(m, body))) => Ok(InvocationResult {
            status: m.status,
            headers: m.headers,
            body: body.to_vec(),
            timings: m.timings,
            cold: m.cold,
            logs: m.logs,
        }),
        Ok(Ok(Reply::Error(mut e))) => {
            let logs = std::mem::take(&mut e.logs);
            Err(remote_error(&conn.node, e).with_logs(logs))
        }
        Ok(Ok(Reply::Prepared(_))) => Err(conn.lost()),
    }
}

/// The node's error as the gateway's: the variants a caller branches on
/// come back as themselves, the rest keep their status, code and message.
fn remote_error(node: &NodeId, e: ErrorMeta) -> InvokeError {
    match (e.code.as_str(), e.timeout_ms) {
        ("function_error", _) => InvokeError::Function {
            status: e.status,
            message: e.message,
        },
        ("timeout", Some(ms)) => InvokeError::TimedOut {
            timeout: Duration::from_millis(ms),
        },
        _ => InvokeError::Remote {
            node: node.clone(),
            status: e.status,
            code: e.code,
            message: e.message,
        },
    }
}

// ------------------------------------------------------------ cluster

/// The gateway's side of the cluster: accepts node agents on a TCP
/// listener, registers each with the scheduler and the function gateway,
/// forwards invocations, and fails a node's requests when it is lost.
pub struct ClusterGateway {
    scheduler: Arc<dyn Scheduler>,
    table: Arc<NodeTable>,
    config: ClusterConfig,
    conns: Mutex<BTreeMap<String, Arc<Conn>>>,
    /// Slots for connections that have not authenticated yet.
    handshakes: Arc<tokio::sync::Semaphore>,
}

impl ClusterGateway {
    /// A cluster side registering nodes with `scheduler` (the function
    /// gateway's) and listing them in `table`.
    pub fn new(
        scheduler: Arc<dyn Scheduler>,
        table: Arc<NodeTable>,
        config: ClusterConfig,
    ) -> Arc<Self> {
        Arc::new(ClusterGateway {
            scheduler,
            table,
            handshakes: Arc::new(tokio::sync::Semaphore::new(config.max_handshakes)),
            config,
            conns: Mutex::new(BTreeMap::new()),
        })
    }

    /// The node gateway of the node connected as `name` now.
    pub fn node_gateway(&self, name: &str) -> Option<RemoteNodeGateway> {
        self.conns
            .lock()
            .get(name)
            .map(|c| RemoteNodeGateway { conn: c.clone() })
    }

    /// Names of the nodes connected now.
    pub fn connected(&self) -> Vec<String> {
        self.conns.lock().keys().cloned().collect()
    }

    /// The scheduler declared these nodes dead (missed heartbeats): close
    /// their connections so their requests fail now.
    pub fn nodes_dead(&self, nodes: &[NodeId]) {
        for n in nodes {
            let c = self.conns.lock().get(&n.0).cloned();
            if let Some(c) = c {
                tracing::warn!(node = %n, "node missed its heartbeats; disconnecting it");
                c.close(format!(
                    "no heartbeat for {:?}",
                    self.config.heartbeat_timeout
                ));
            }
        }
    }

    /// A [`Preparer`] that has a connected node prepare each new version
    /// (see the module docs).
    pub fn preparer(self: &Arc<Self>) -> Arc<dyn Preparer> {
        Arc::new(RemotePreparer {
            cluster: self.clone(),
        })
    }

    /// Accepts node connections on `listener` until `shutdown` completes,
    /// registering each node with `gateway` (built on the same scheduler).
    ///
    /// # Errors
    ///
    /// None so far: failed accepts are logged and retried.
    pub async fn serve(
        self: Arc<Self>,
        gateway: Arc<FunctionGateway>,
        listener: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        tokio::pin!(shutdown);
        loop {
            let (stream, peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        tracing::warn!(error = %e, "accepting a node connection failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            tokio::spawn(self.clone().connection(gateway.clone(), stream, peer));
        }
        let conns: Vec<_> = self.conns.lock().values().cloned().collect();
        for c in conns {
            c.close("the gateway is shutting down".into());
        }
        Ok(())
    }

    async fn connection(
        self: Arc<Self>,
        gateway: Arc<FunctionGateway>,
        stream: TcpStream,
        peer: SocketAddr,
    ) {
        let Ok(permit) = self.handshakes.clone().try_acquire_owned() else {
            tracing::warn!(
                "node connection from {peer} closed: too many connections authenticating at once"
            );
            return;
        };
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        // Nothing but the handshake is read from a peer that has not proved
        // it knows the token, and it gets no large buffer.
        let hello = match tokio::time::timeout(
            self.config.handshake_timeout,
            self.handshake(&mut rd, &mut wr),
        )
        .await
        {
            Err(_) => {
                tracing::warn!(
                    "node connection from {peer} closed: it did not authenticate within {:?}",
                    self.config.handshake_timeout
                );
                return;
            }
            Ok(Err(Refused { log, answer })) => {
                tracing::warn!("node connection from {peer} refused: {log}");
                if let Some(f) = answer {
                    let _ = wr.write_all(&f).await;
                }
                return;
            }
            Ok(Ok(h)) => h,
        };
        let (hello, seal_out, mut seal_in) = hello;
        drop(permit);
        let node = NodeId(hello.name.clone());
        let entry = Arc::new(NodeEntry::new(
            &hello.name,
            peer.to_string(),
            hello.slots,
            hello.memory_mb,
        ));
        let (out, queue) = mpsc::unbounded_channel::<Bytes>();
        let conn = Arc::new(Conn {
            node: node.clone(),
            entry: entry.clone(),
            state: Mutex::new(ConnState {
                closed: None,
                pending: HashMap::new(),
                out: Some(out.clone()),
            }),
            next_id: AtomicU64::new(0),
            stop: Notify::new(),
        });
        let welcome = Welcome {
            heartbeat_ms: u64::try_from(self.config.heartbeat.as_millis()).unwrap_or(500),
            functions: gateway
                .registry()
                .list()
                .iter()
                .map(|s| s.name.clone())
                .collect(),
        };
        let _ = out.send(frame::encode_json(Kind::Welcome, 0, &welcome));
        drop(out);
        let writer = tokio::spawn(frame::write_sealed(wr, queue, seal_out));
        // Register: a node that reconnects under the same name replaces
        // its old connection (whose requests fail now).
        let old = self.conns.lock().insert(hello.name.clone(), conn.clone());
        if let Some(old) = old {
            old.close(format!("replaced by a new connection from {peer}"));
        }
        self.table.insert(entry.clone());
        self.scheduler.add_node(NodeInfo {
            id: node.clone(),
            slots: hello.slots,
            memory_mb: hello.memory_mb,
        });
        gateway.add_node(Arc::new(RemoteNodeGateway { conn: conn.clone() }));
        tracing::info!(node = %node, %peer, slots = hello.slots, memory_mb = hello.memory_mb, "node joined");

        let reason = self
            .read_loop(&conn, &mut rd, &mut seal_in, gateway.registry())
            .await;
        conn.close(reason.clone());
        *entry.lost.lock() = Some(conn.reason());
        let current = {
            let mut conns = self.conns.lock();
            let current = conns
                .get(&hello.name)
                .is_some_and(|c| Arc::ptr_eq(c, &conn));
            if current {
                conns.remove(&hello.name);
            }
            current
        };
        if current {
            self.scheduler.remove_node(&node);
        }
        tracing::warn!(node = %node, %peer, "node lost: {}", conn.reason());
        let _ = writer.await;
    }

    /// The gateway's side of the handshake (see [`super::auth`]): the
    /// node's `Auth`, our `AuthReply`, its `AuthProof`, then its `Hello`
    /// (checked).
    async fn handshake(
        &self,
        rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<(Hello, Seal, Seal), Refused> {
        let read = |what: &'static str, f: Result<frame::Frame, FrameError>| {
            f.map_err(|e| Refused::silent(format!("{what}: {e}")))
        };
        let first = read(
            "waiting for Auth",
            frame::read_frame(rd, Side::Node, HANDSHAKE_MAX).await,
        )?;
        let nn: [u8; TOKEN_LEN] = match first.kind {
            Kind::Auth => {
                let p = &first.payload;
                let protocol = p
                    .get(..4)
                    .map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
                if protocol != Some(frame::PROTOCOL) {
                    let m = format!(
                        "node speaks protocol {}, this gateway {}: run the same faas version on both",
                        protocol.map_or_else(|| "?".into(), |v| v.to_string()),
                        frame::PROTOCOL
                    );
                    return Err(Refused::answered(m));
                }
                p.get(4..)
                    .and_then(|n| n.try_into().ok())
                    .ok_or_else(|| Refused::silent(format!("Auth of {} bytes", p.len())))?
            }
            Kind::Hello => {
                // A node of protocol 1 (no cluster token) starts with Hello.
                let m = match first.json::<Hello>() {
                    Ok(h) if h.protocol != frame::PROTOCOL => format!(
                        "node speaks protocol {}, this gateway {} (which needs the cluster token): upgrade faas on the node and give it --cluster-token-file",
                        h.protocol,
                        frame::PROTOCOL
                    ),
                    _ => "Hello before authenticating: give the node the cluster token (--cluster-token-file)".into(),
                };
                return Err(Refused::answered(m));
            }
            k => {
                return Err(Refused::silent(format!(
                    "{k:?} frame before authenticating"
                )));
            }
        };
        let ng = auth::nonce().map_err(|e| Refused::silent(format!("cannot draw a nonce: {e}")))?;
        let proof = self.config.token.proof(Role::Gateway, &nn, &ng);
        wr.write_all(&frame::encode_raw(Kind::AuthReply, &[&ng, &proof]))
            .await
            .map_err(|e| Refused::silent(format!("sending AuthReply: {e}")))?;
        let f = read(
            "waiting for AuthProof",
            frame::read_frame(rd, Side::Node, HANDSHAKE_MAX).await,
        )?;
        if f.kind != Kind::AuthProof || !self.config.token.verify(Role::Node, &nn, &ng, &f.payload)
        {
            return Err(Refused::answered("bad cluster token".into()));
        }
        // From here on every frame carries its MAC.
        let mut seal_out = Seal::new(&self.config.token, Role::Gateway, &nn, &ng);
        let mut seal_in = Seal::new(&self.config.token, Role::Node, &nn, &ng);
        let f = read(
            "waiting for Hello",
            frame::read_sealed(rd, Side::Node, HANDSHAKE_MAX, &mut seal_in).await,
        )?;
        if f.kind != Kind::Hello {
            return Err(Refused::silent(format!(
                "{:?} frame instead of Hello",
                f.kind
            )));
        }
        match f
            .json::<Hello>()
            .map_err(|e| e.to_string())
            .and_then(check_hello)
        {
            Ok(h) => Ok((h, seal_out, seal_in)),
            Err(message) => {
                let mut f = frame::encode_json(
                    Kind::Reject,
                    0,
                    &Reject {
                        message: message.clone(),
                    },
                )
                .to_vec();
                let t = frame::tag(&mut seal_out, &f);
                f.extend_from_slice(&t);
                Err(Refused {
                    log: message,
                    answer: Some(f.into()),
                })
            }
        }
    }

    /// Reads the node's frames until the connection ends; returns why.
    async fn read_loop(
        &self,
        conn: &Arc<Conn>,
        rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        seal: &mut Seal,
        registry: &Arc<Registry>,
    ) -> String {
        let max = self.config.max_frame;
        loop {
            let f = tokio::select! {
                r = tokio::time::timeout(self.config.heartbeat_timeout, frame::read_sealed(rd, Side::Node, max, seal)) => r,
                () = conn.stop.notified() => return conn.reason(),
            };
            let f = match f {
                Err(_) => {
                    return format!("no heartbeat for {:?}", self.config.heartbeat_timeout);
                }
                Ok(Err(FrameError::Io(e))) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    return "connection closed by the node".into();
                }
                Ok(Err(FrameError::Io(e))) => return format!("connection failed: {e}"),
                Ok(Err(e)) => return format!("protocol violation: {e}"),
                Ok(Ok(f)) => f,
            };
            let done = match f.kind {
                Kind::Heartbeat => {
                    *conn.entry.last_heartbeat.lock() = Instant::now();
                    self.scheduler.heartbeat(&conn.node);
                    conn.send(frame::encode_empty(Kind::HeartbeatAck, 0));
                    Ok(())
                }
                Kind::Result => match f.split::<ResultMeta>() {
                    Ok((m, body)) => conn.complete(f.id, f.kind, Reply::Result(m, body)),
                    Err(e) => Err(e.to_string()),
                },
                Kind::Error => match f.json::<ErrorMeta>() {
                    Ok(m) => conn.complete(f.id, f.kind, Reply::Error(m)),
                    Err(e) => Err(e.to_string()),
                },
                Kind::Prepared => match f.json::<PreparedMeta>() {
                    Ok(m) => conn.complete(f.id, f.kind, Reply::Prepared(m)),
                    Err(e) => Err(e.to_string()),
                },
                Kind::Fetch => match f.json::<FetchMeta>() {
                    Ok(m) => {
                        tokio::spawn(send_version(conn.clone(), registry.clone(), f.id, m));
                        Ok(())
                    }
                    Err(e) => Err(e.to_string()),
                },
                k => Err(format!("unexpected {k:?} frame")),
            };
            if let Err(why) = done {
                return format!("protocol violation: {why}");
            }
        }
    }
}

/// Largest frame before a node has joined (`Auth`, `AuthProof`, `Hello`).
const HANDSHAKE_MAX: u32 = 64 * 1024;

/// Why a connection was refused during its handshake: what the log says,
/// and the frame the peer is told it with (`Reject`), if any.
struct Refused {
    log: String,
    answer: Option<Bytes>,
}

impl Refused {
    fn silent(log: String) -> Self {
        Refused { log, answer: None }
    }

    /// Refused before the session is authenticated: a plain `Reject`.
    fn answered(message: String) -> Self {
        Refused {
            answer: Some(frame::encode_json(
                Kind::Reject,
                0,
                &Reject {
                    message: message.clone(),
                },
            )),
            log: message,
        }
    }
}

/// Pieces of a fetched version's tar, per `FetchData` frame.
const FETCH_CHUNK: usize = 1 << 20;

/// Answers a node's `Fetch`: the version directory (code, spec, snapshot)
/// as a tar in `FetchData` frames, then `FetchEnd` with its blake3 digest.
async fn send_version(conn: Arc<Conn>, registry: Arc<Registry>, id: u64, m: FetchMeta) {
    let end = |e: FetchEnd| frame::encode_json(Kind::FetchEnd, id, &e);
    let Some(spec) = registry.get_version(&m.name, m.version) else {
        conn.send(end(FetchEnd::Error {
            message: format!("function {} version {} is not deployed", m.name, m.version),
        }));
        return;
    };
    let Some(dir) = spec.image.path().parent().map(Path::to_path_buf) else {
        conn.send(end(FetchEnd::Error {
            message: format!("{} has no version directory", spec.image.path().display()),
        }));
        return;
    };
    let d = dir.clone();
    let tar = tokio::task::spawn_blocking(move || {
        let mut b = tar::Builder::new(Vec::new());
        b.follow_symlinks(false);
        b.append_dir_all(".", &d)?;
        b.into_inner()
    })
    .await;
    let tar = match tar {
        Ok(Ok(t)) => t,
        Ok(Err(e)) => {
            tracing::warn!(node = %conn.node, dir = %dir.display(), "cannot pack a version for the node: {e}");
            conn.send(end(FetchEnd::Error {
                message: format!("packing {}: {e}", dir.display()),
            }));
            return;
        }
        Err(e) => {
            conn.send(end(FetchEnd::Error {
                message: e.to_string(),
            }));
            return;
        }
    };
    let digest = blake3::hash(&tar).to_hex().to_string();
    for chunk in tar.chunks(FETCH_CHUNK) {
        if !conn.send(frame::encode_split_raw(Kind::FetchData, id, chunk)) {
            return;
        }
    }
    tracing::info!(node = %conn.node, function = %m.name, version = m.version, bytes = tar.len(), "sent a version to a node");
    conn.send(end(FetchEnd::Ok {
        digest,
        bytes: tar.len() as u64,
    }));
}

/// Checks a node's `Hello`.
fn check_hello(h: Hello) -> Result<Hello, String> {
    if h.protocol != frame::PROTOCOL {
        return Err(format!(
            "node speaks protocol {}, this gateway {}",
            h.protocol,
            frame::PROTOCOL
        ));
    }
    if !valid_name(&h.name) {
        return Err(format!(
            "node name {:?} is invalid: use 1-63 characters of a-z, 0-9, '-' and '_'",
            h.name
        ));
    }
    if h.slots == 0 || h.slots > (1 << 20) {
        return Err(format!(
            "node {}: slots = {} is out of range (1..=1048576)",
            h.name, h.slots
        ));
    }
    if h.memory_mb == 0 {
        return Err(format!("node {}: memory_mb = 0", h.name));
    }
    Ok(h)
}

// ------------------------------------------------------------ prepare

/// Has a connected node prepare each new version (Python: take its
/// snapshot, written into the version directory the node sees through
/// shared storage); with no node connected, versions are registered cold.
struct RemotePreparer {
    cluster: Arc<ClusterGateway>,
}

impl Preparer for RemotePreparer {
    fn check(&self, _spec: &FunctionSpec) -> Result<(), PrepareError> {
        // Which runtimes exist is known on the nodes: `prepare` asks one.
        Ok(())
    }

    fn prepare<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        version_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Prepared, PrepareError>> {
        Box::pin(async move {
            let conn = self.cluster.conns.lock().values().next().cloned();
            let Some(conn) = conn else {
                return Ok(Prepared {
                    warnings: vec![
                        "no node is connected to prepare this version: its instances start cold"
                            .into(),
                    ],
                    ..Prepared::default()
                });
            };
            let meta = PrepareMeta {
                spec: spec.clone(),
                dir: version_dir.to_owned(),
            };
            let sys = |what: String| PrepareError::Sys {
                name: spec.name.clone(),
                what,
            };
            let (id, rx) = conn
                .request(Kind::Prepare, |id| {
                    frame::encode_json(Kind::Prepare, id, &meta)
                })
                .map_err(|r| sys(format!("node {} was lost: {r}", conn.node)))?;
            let mut guard = CancelOnDrop {
                conn: &conn,
                id,
                done: false,
            };
            let reply = tokio::time::timeout(self.cluster.config.prepare_timeout, rx).await;
            guard.done = true;
            let meta = match reply {
                Err(_) => {
                    conn.cancel(id);
                    return Err(sys(format!(
                        "node {} did not prepare the version within {:?}",
                        conn.node, self.cluster.config.prepare_timeout
                    )));
                }
                Ok(Err(_)) => {
                    return Err(sys(format!(
                        "node {} was lost while preparing: {}",
                        conn.node,
                        conn.reason()
                    )));
                }
                Ok(Ok(Reply::Prepared(m))) => m,
                Ok(Ok(_)) => return Err(sys("unexpected answer".into())),
            };
            match meta {
                PreparedMeta::Ok {
                    start,
                    snapshot,
                    image,
                    warnings,
                    steps,
                } => Ok(Prepared {
                    start,
                    snapshot,
                    image,
                    warnings,
                    steps,
                }),
                PreparedMeta::Unavailable { why } => {
                    Err(PrepareError::Unavailable(RuntimeUnavailable {
                        runtime: spec.runtime,
                        why,
                    }))
                }
                PreparedMeta::Init { what, output } => Err(PrepareError::Init {
                    name: spec.name.clone(),
                    runtime: spec.runtime,
                    what,
                    output,
                }),
                PreparedMeta::Sys { what } => Err(sys(format!("on node {}: {what}", conn.node))),
            }
        })
    }
}
