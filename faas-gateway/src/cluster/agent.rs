//! The node side: [`NodeAgent`] joins a gateway over TCP and serves the
//! invocations it forwards with a local [`NodeGateway`].

use std::collections::{HashMap, HashSet};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use faas_core::{
    FunctionSpec, ImageRef, Invocation, InvocationId, InvokeError, NodeGateway, NodeId, Placement,
    UnixMillis,
};
use parking_lot::Mutex;
use tokio::io::{AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use tokio::sync::{mpsc, oneshot};
use tokio::task::AbortHandle;

use super::auth::{self, ClusterToken, Role, Seal, TOKEN_LEN};
use super::frame::{
    self, ErrorMeta, FetchEnd, FetchMeta, ForgetMeta, FrameError, Hello, InvokeMeta, Kind,
    PrepareMeta, PreparedMeta, Reject, ResultMeta, Side, Welcome,
};
use crate::prepare::{PrepareError, Preparer};

/// Settings of a [`NodeAgent`].
#[derive(Debug, Clone)]
pub struct AgentConfig {
    /// The gateway's node address (`HOST:PORT`).
    pub gateway: String,
    /// This node's name (`[a-z0-9][a-z0-9_-]{0,62}`); a node that joins
    /// again under the same name replaces its old connection.
    pub name: String,
    /// The cluster's secret: the node proves it knows it and accepts only
    /// a gateway that proves the same.
    pub token: ClusterToken,
    /// Instance slots offered.
    pub slots: u32,
    /// Memory offered for instances, in MiB.
    pub memory_mb: u64,
    /// Largest frame accepted from the gateway, in bytes.
    pub max_frame: u32,
    /// Longest wait between two connection attempts.
    pub max_backoff: Duration,
    /// Where versions fetched from the gateway are kept: a version whose
    /// directory this node cannot see is fetched into it (once). `None`:
    /// the node must see the gateway's state directory.
    pub cache_dir: Option<PathBuf>,
    /// Fetch every version into `cache_dir`, even one whose directory the
    /// node can see (for nodes that must not read shared storage, and tests).
    pub always_fetch: bool,
}

impl AgentConfig {
    /// Defaults for `name` joining `gateway` with `token`: 64 slots, 8 GiB.
    pub fn new(gateway: impl Into<String>, name: impl Into<String>, token: ClusterToken) -> Self {
        AgentConfig {
            gateway: gateway.into(),
            name: name.into(),
            token,
            slots: 64,
            memory_mb: 8192,
            max_frame: super::DEFAULT_MAX_FRAME,
            max_backoff: Duration::from_secs(5),
            cache_dir: None,
            always_fetch: false,
        }
    }
}

/// What a [`NodeAgent`] reports while it runs.
#[derive(Debug, Clone)]
pub enum AgentEvent {
    /// Joined the gateway.
    Joined {
        /// The gateway's address.
        gateway: String,
    },
    /// The gateway cannot be reached; the agent tries again.
    Unreachable {
        /// The gateway's address.
        gateway: String,
        /// Why.
        error: String,
        /// When it tries again.
        retry_in: Duration,
    },
    /// The connection ended; the agent reconnects.
    Disconnected {
        /// Why.
        reason: String,
    },
}

/// Why a [`NodeAgent`] stopped.
#[derive(Debug, thiserror::Error)]
pub enum AgentError {
    /// The gateway refused this node (bad name, protocol version, ...).
    #[error("gateway {gateway} refused node {name}: {message}")]
    Rejected {
        /// The gateway.
        gateway: String,
        /// This node.
        name: String,
        /// Its reason.
        message: String,
    },
    /// The gateway could not prove that it knows the cluster token: one of
    /// the two has another token, or it is not the gateway.
    #[error(
        "gateway {gateway} could not prove the cluster token (bad cluster token: the gateway and node {name} have different tokens, or it is not your gateway); not joining"
    )]
    Unauthenticated {
        /// The gateway.
        gateway: String,
        /// This node.
        name: String,
    },
}

/// A node agent: joins the gateway at [`AgentConfig::gateway`], registers
/// its name and capacity, sends heartbeats, and runs every invocation the
/// gateway forwards on its local [`NodeGateway`] (real sandboxes); many
/// run at once on the one connection. It reconnects (with backoff) when
/// the connection ends.
///
/// A function's files are used where the gateway's registry put them
/// (`spec.image`): the node must see that path (same host or shared
/// storage); see the module docs.
pub struct NodeAgent {
    config: AgentConfig,
    node: Arc<dyn NodeGateway>,
    preparer: Option<Arc<dyn Preparer>>,
    /// Versions whose files were found (checked once per version).
    seen: Mutex<HashSet<(String, u32, PathBuf)>>,
    /// Versions fetched into the cache, by their directory on the gateway;
    /// the first invocation fetches, concurrent ones wait for it.
    fetched: Mutex<HashMap<(String, PathBuf), FetchSlot>>,
}

/// Where a version fetched from the gateway went (`None` until it is).
type FetchSlot = Arc<tokio::sync::Mutex<Option<PathBuf>>>;

/// The current connection, as the tasks of its requests see it.
struct Link {
    out: mpsc::UnboundedSender<Bytes>,
    /// Fetches waiting for their data, by the id this node chose.
    fetches: Mutex<HashMap<u64, Fetching>>,
    next_fetch: std::sync::atomic::AtomicU64,
}

struct Fetching {
    data: Vec<u8>,
    done: oneshot::Sender<Result<Vec<u8>, String>>,
}

/// Largest version a node fetches: 4 GiB.
const MAX_FETCH: usize = 4 << 30;

impl NodeAgent {
    /// An agent serving with `node` (whose id must be the agent's name)
    /// and preparing new versions with `preparer` when the gateway asks.
    pub fn new(
        config: AgentConfig,
        node: Arc<dyn NodeGateway>,
        preparer: Option<Arc<dyn Preparer>>,
    ) -> Arc<Self> {
        Arc::new(NodeAgent {
            config,
            node,
            preparer,
            seen: Mutex::new(HashSet::new()),
            fetched: Mutex::new(HashMap::new()),
        })
    }

    /// Joins the gateway and serves until the gateway refuses this node;
    /// reports progress to `events`. Cancel the future to stop.
    ///
    /// # Errors
    ///
    /// [`AgentError::Rejected`]: the gateway will not take this node.
    pub async fn run(
        self: Arc<Self>,
        events: impl Fn(AgentEvent) + Send + Sync,
    ) -> Result<(), AgentError> {
        let mut backoff = Duration::from_millis(100);
        loop {
            let gw = &self.config.gateway;
            let stream =
                match tokio::time::timeout(Duration::from_secs(3), TcpStream::connect(gw)).await {
                    Ok(Ok(s)) => s,
                    Ok(Err(e)) => {
                        events(AgentEvent::Unreachable {
                            gateway: gw.clone(),
                            error: e.to_string(),
                            retry_in: backoff,
                        });
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.max_backoff);
                        continue;
                    }
                    Err(_) => {
                        events(AgentEvent::Unreachable {
                            gateway: gw.clone(),
                            error: "connection timed out".into(),
                            retry_in: backoff,
                        });
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(self.config.max_backoff);
                        continue;
                    }
                };
            match self.clone().session(stream, &events).await {
                Ok(reason) => {
                    backoff = Duration::from_millis(100);
                    events(AgentEvent::Disconnected { reason });
                    tokio::time::sleep(backoff).await;
                }
                Err(Session::Rejected(message)) => {
                    return Err(AgentError::Rejected {
                        gateway: gw.clone(),
                        name: self.config.name.clone(),
                        message,
                    });
                }
                Err(Session::Unauthenticated) => {
                    return Err(AgentError::Unauthenticated {
                        gateway: gw.clone(),
                        name: self.config.name.clone(),
                    });
                }
                Err(Session::Failed(error)) => {
                    events(AgentEvent::Unreachable {
                        gateway: gw.clone(),
                        error,
                        retry_in: backoff,
                    });
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(self.config.max_backoff);
                }
            }
        }
    }

    /// One connection: handshake, then serve until it ends (`Ok(why)`).
    async fn session(
        self: Arc<Self>,
        stream: TcpStream,
        events: &(impl Fn(AgentEvent) + Send + Sync),
    ) -> Result<String, Session> {
        let _ = stream.set_nodelay(true);
        let (rd, mut wr) = stream.into_split();
        let mut rd = BufReader::with_capacity(64 * 1024, rd);
        let (mut seal_out, mut seal_in) = self.authenticate(&mut rd, &mut wr).await?;
        let hello = Hello {
            protocol: frame::PROTOCOL,
            name: self.config.name.clone(),
            slots: self.config.slots,
            memory_mb: self.config.memory_mb,
        };
        let mut f = frame::encode_json(Kind::Hello, 0, &hello).to_vec();
        let t = frame::tag(&mut seal_out, &f);
        f.extend_from_slice(&t);
        wr.write_all(&f)
            .await
            .map_err(|e| Session::Failed(format!("sending Hello: {e}")))?;
        let max = self.config.max_frame;
        let first = tokio::time::timeout(
            Duration::from_secs(5),
            frame::read_sealed(&mut rd, Side::Gateway, 64 * 1024, &mut seal_in),
        )
        .await
        .map_err(|_| Session::Failed("the gateway did not answer Hello in time".into()))?
        .map_err(|e| Session::Failed(format!("waiting for Welcome: {e}")))?;
        let heartbeat = match first.kind {
            Kind::Welcome => {
                let w: Welcome = first.json().map_err(|e| Session::Failed(e.to_string()))?;
                self.forget_all_but(&w.functions);
                Duration::from_millis(w.heartbeat_ms.clamp(10, 60_000))
            }
            Kind::Reject => {
                let r: Reject = first.json().map_err(|e| Session::Failed(e.to_string()))?;
                return Err(Session::Rejected(r.message));
            }
            k => {
                return Err(Session::Failed(format!(
                    "gateway sent {k:?} before Welcome"
                )));
            }
        };
        events(AgentEvent::Joined {
            gateway: self.config.gateway.clone(),
        });

        let (out, queue) = mpsc::unbounded_channel::<Bytes>();
        let link = Arc::new(Link {
            out: out.clone(),
            fetches: Mutex::new(HashMap::new()),
            next_fetch: std::sync::atomic::AtomicU64::new(0),
        });
        let writer = tokio::spawn(frame::write_sealed(wr, queue, seal_out));
        let beat = {
            let out = out.clone();
            tokio::spawn(async move {
                let mut t = tokio::time::interval(heartbeat);
                t.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    t.tick().await;
                    if out.send(frame::encode_empty(Kind::Heartbeat, 0)).is_err() {
                        return;
                    }
                }
            })
        };
        let running: Arc<Mutex<HashMap<u64, AbortHandle>>> = Arc::default();
        // The gateway answers every heartbeat: this long without a frame
        // from it, it is gone even if the connection still looks open.
        let silence = (heartbeat * 4).max(Duration::from_secs(2));
        let reason = loop {
            let f = match tokio::time::timeout(
                silence,
                frame::read_sealed(&mut rd, Side::Gateway, max, &mut seal_in),
            )
            .await
            {
                Err(_) => {
                    let why = format!("no answer from the gateway for {silence:?}");
                    tracing::warn!(gateway = %self.config.gateway, "{why}; reconnecting");
                    break why;
                }
                Ok(r) => r,
            };
            let f = match f {
                Ok(f) => f,
                Err(FrameError::Io(e)) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                    break "the gateway closed the connection".to_owned();
                }
                Err(e) => {
                    let why = format!("gateway connection: {e}");
                    tracing::warn!(gateway = %self.config.gateway, "{why}");
                    break why;
                }
            };
            if let Err(why) = self.dispatch(f, &link, &running) {
                tracing::warn!(gateway = %self.config.gateway, "protocol violation by the gateway: {why}; reconnecting");
                break format!("protocol violation by the gateway: {why}");
            }
        };
        beat.abort();
        for (_, h) in running.lock().drain() {
            h.abort();
        }
        // Fetches in progress fail (their senders drop).
        link.fetches.lock().clear();
        drop(link);
        drop(out);
        writer.abort();
        Ok(reason)
    }

    /// The node's side of the handshake (see [`super::auth`]): `Auth`, the
    /// gateway's `AuthReply` (its proof checked), then our `AuthProof`.
    async fn authenticate(
        &self,
        rd: &mut BufReader<tokio::net::tcp::OwnedReadHalf>,
        wr: &mut tokio::net::tcp::OwnedWriteHalf,
    ) -> Result<(Seal, Seal), Session> {
        let nn = auth::nonce().map_err(|e| Session::Failed(format!("cannot draw a nonce: {e}")))?;
        let auth = frame::encode_raw(Kind::Auth, &[&frame::PROTOCOL.to_le_bytes(), &nn]);
        wr.write_all(&auth)
            .await
            .map_err(|e| Session::Failed(format!("sending Auth: {e}")))?;
        let reply = tokio::time::timeout(
            Duration::from_secs(5),
            frame::read_frame(rd, Side::Gateway, 64 * 1024),
        )
        .await
        .map_err(|_| Session::Failed("the gateway did not answer Auth in time".into()))?
        .map_err(|e| match e {
            FrameError::Io(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => Session::Failed(
                "the gateway closed the connection during authentication (is it the same faas version?)"
                    .into(),
            ),
            e => Session::Failed(format!("waiting for AuthReply: {e}")),
        })?;
        match reply.kind {
            Kind::AuthReply => {}
            Kind::Reject => {
                let r: Reject = reply.json().map_err(|e| Session::Failed(e.to_string()))?;
                return Err(Session::Rejected(r.message));
            }
            k => {
                return Err(Session::Failed(format!(
                    "gateway sent {k:?} before AuthReply"
                )));
            }
        }
        let p = &reply.payload;
        let ng: [u8; TOKEN_LEN] = p
            .get(..TOKEN_LEN)
            .and_then(|n| n.try_into().ok())
            .ok_or(Session::Unauthenticated)?;
        let proof = p.get(TOKEN_LEN..).unwrap_or_default();
        let believed = self.config.token.verify(Role::Gateway, &nn, &ng, proof);
        // Our proof goes out either way: it is useless to anyone but the
        // gateway of this session, and a real gateway with another token
        // then logs this node's address as a bad cluster token.
        let mine = self.config.token.proof(Role::Node, &nn, &ng);
        let sent = wr
            .write_all(&frame::encode_raw(Kind::AuthProof, &[&mine]))
            .await;
        if !believed {
            return Err(Session::Unauthenticated);
        }
        sent.map_err(|e| Session::Failed(format!("sending AuthProof: {e}")))?;
        // From here on every frame carries its MAC.
        let token = &self.config.token;
        Ok((
            Seal::new(token, Role::Node, &nn, &ng),
            Seal::new(token, Role::Gateway, &nn, &ng),
        ))
    }

    /// Drops what this node keeps of `function` (deleted on the gateway):
    /// its instances, the versions it checked, and its fetched copies.
    fn forget(&self, function: &str) {
        self.node.remove_function(function);
        self.seen.lock().retain(|(n, _, _)| n != function);
        self.fetched.lock().retain(|(n, _), _| n != function);
        if let Some(cache) = &self.config.cache_dir {
            remove_cached(cache, function);
        }
        tracing::info!(function, "function deleted on the gateway: dropped here");
    }

    /// Drops the copies of every function not in `functions` (deleted
    /// while this node was away).
    fn forget_all_but(&self, functions: &[String]) {
        let Some(cache) = &self.config.cache_dir else {
            return;
        };
        let Ok(dir) = std::fs::read_dir(cache) else {
            return;
        };
        for e in dir.flatten() {
            if let Some(name) = e.file_name().to_str()
                && faas_core::types::valid_name(name)
                && !functions.iter().any(|f| f == name)
            {
                self.forget(name);
            }
        }
    }

    fn dispatch(
        self: &Arc<Self>,
        f: frame::Frame,
        link: &Arc<Link>,
        running: &Arc<Mutex<HashMap<u64, AbortHandle>>>,
    ) -> Result<(), String> {
        let out = &link.out;
        match f.kind {
            Kind::FetchData => {
                let mut fetches = link.fetches.lock();
                let Some(w) = fetches.get_mut(&f.id) else {
                    return Err(format!("data for fetch {}, which is not running", f.id));
                };
                if w.data.len() + f.payload.len() > MAX_FETCH {
                    return Err(format!("fetch {} exceeds {MAX_FETCH} bytes", f.id));
                }
                w.data.extend_from_slice(&f.payload);
                Ok(())
            }
            Kind::FetchEnd => {
                let end: FetchEnd = f.json().map_err(|e| e.to_string())?;
                let Some(w) = link.fetches.lock().remove(&f.id) else {
                    return Err(format!("end of fetch {}, which is not running", f.id));
                };
                let r = match end {
                    FetchEnd::Ok { digest, bytes } => {
                        if bytes != w.data.len() as u64 {
                            Err(format!(
                                "the gateway sent {} bytes, announced {bytes}",
                                w.data.len()
                            ))
                        } else if blake3::hash(&w.data).to_hex().as_str() != digest {
                            Err("the fetched files do not match their digest".into())
                        } else {
                            Ok(w.data)
                        }
                    }
                    FetchEnd::Error { message } => Err(message),
                };
                let _ = w.done.send(r);
                Ok(())
            }
            Kind::Invoke => {
                let (meta, body) = f.split::<InvokeMeta>().map_err(|e| e.to_string())?;
                let mut map = running.lock();
                if map.contains_key(&f.id) {
                    return Err(format!("request id {} is already running", f.id));
                }
                let me = self.clone();
                let link = link.clone();
                let running2 = running.clone();
                let id = f.id;
                let h = tokio::spawn(async move {
                    let frame = me.invoke(id, meta, body, &link).await;
                    let out = &link.out;
                    running2.lock().remove(&id);
                    let _ = out.send(frame);
                });
                map.insert(id, h.abort_handle());
                Ok(())
            }
            Kind::HeartbeatAck => Ok(()),
            Kind::Forget => {
                let m: ForgetMeta = f.json().map_err(|e| e.to_string())?;
                if !faas_core::types::valid_name(&m.name) {
                    return Err(format!("Forget of the invalid function name {:?}", m.name));
                }
                self.forget(&m.name);
                Ok(())
            }
            Kind::Cancel => {
                if let Some(h) = running.lock().remove(&f.id) {
                    h.abort();
                }
                Ok(())
            }
            Kind::Prepare => {
                let meta: PrepareMeta = f.json().map_err(|e| e.to_string())?;
                let me = self.clone();
                let out = out.clone();
                let running2 = running.clone();
                let id = f.id;
                let mut map = running.lock();
                if map.contains_key(&id) {
                    return Err(format!("request id {id} is already running"));
                }
                let h = tokio::spawn(async move {
                    let answer = me.prepare(meta).await;
                    running2.lock().remove(&id);
                    let _ = out.send(frame::encode_json(Kind::Prepared, id, &answer));
                });
                map.insert(id, h.abort_handle());
                Ok(())
            }
            k => Err(format!("unexpected {k:?} frame")),
        }
    }

    /// Runs one forwarded invocation; returns its answer frame.
    async fn invoke(&self, id: u64, meta: InvokeMeta, body: Bytes, link: &Link) -> Bytes {
        let InvokeMeta {
            spec,
            invocation,
            headers,
            trace_id,
            timeout_ms,
        } = meta;
        let node = self.node.node().clone();
        let spec = match self.local_files(spec, &node, link).await {
            Ok(s) => s,
            Err(message) => {
                let e = ErrorMeta {
                    status: 503,
                    code: "files_unavailable".into(),
                    message,
                    timeout_ms: None,
                    logs: String::new(),
                };
                return frame::encode_json(Kind::Error, id, &e);
            }
        };
        let inv = Invocation {
            id: InvocationId(invocation),
            function: spec.name.clone(),
            version: spec.version,
            headers,
            body: body.to_vec(),
            deadline: UnixMillis::now().after(Duration::from_millis(timeout_ms)),
            trace_id,
        };
        let placement = Placement {
            node,
            slot: 0,
            function: spec.name.clone(),
        };
        match self.node.invoke(Arc::new(spec), &placement, inv).await {
            Ok(r) => frame::encode_split(
                Kind::Result,
                id,
                &ResultMeta {
                    status: r.status,
                    headers: r.headers,
                    timings: r.timings,
                    cold: r.cold,
                    logs: r.logs,
                },
                &r.body,
            ),
            Err(e) => frame::encode_json(Kind::Error, id, &error_meta(&e)),
        }
    }

    /// The spec with files this node can read: as it is when the node
    /// sees the version's directory, else pointing into the cache, fetched
    /// from the gateway the first time.
    async fn local_files(
        &self,
        spec: FunctionSpec,
        node: &NodeId,
        link: &Link,
    ) -> Result<FunctionSpec, String> {
        let path = spec.image.path().to_owned();
        let key = (spec.name.clone(), spec.version, path.clone());
        if !self.config.always_fetch {
            if self.seen.lock().contains(&key) {
                return Ok(spec);
            }
            if path.is_dir() || path.is_file() {
                self.seen.lock().insert(key);
                return Ok(spec);
            }
        }
        let Some(cache) = &self.config.cache_dir else {
            return Err(format!(
                "node {node} cannot see the files of {} version {} at {} (the node needs the gateway's state directory at the same path, or a cache to fetch versions into)",
                spec.name,
                spec.version,
                path.display()
            ));
        };
        let Some(vdir) = path.parent().map(Path::to_path_buf) else {
            return Err(format!("{} has no version directory", path.display()));
        };
        let slot = self
            .fetched
            .lock()
            .entry((spec.name.clone(), vdir.clone()))
            .or_default()
            .clone();
        let mut local = slot.lock().await;
        let local_dir = match &*local {
            Some(d) => d.clone(),
            None => {
                let d = fetch(&spec, &vdir, cache, link).await.map_err(|e| {
                    format!(
                        "node {node}: fetching {} version {} from the gateway: {e}",
                        spec.name, spec.version
                    )
                })?;
                *local = Some(d.clone());
                d
            }
        };
        drop(local);
        Ok(relocate(spec, &vdir, &local_dir))
    }

    async fn prepare(&self, meta: PrepareMeta) -> PreparedMeta {
        let Some(p) = &self.preparer else {
            return PreparedMeta::Ok {
                start: faas_core::StartMode::Cold,
                snapshot: None,
                image: None,
                warnings: Vec::new(),
                steps: Vec::new(),
            };
        };
        if !meta.dir.is_dir() || self.config.always_fetch {
            // A snapshot belongs in the version directory, which every node
            // reads: without it, the version starts cold.
            return PreparedMeta::Ok {
                start: faas_core::StartMode::Cold,
                snapshot: None,
                image: None,
                steps: Vec::new(),
                warnings: vec![format!(
                    "node {} does not share the gateway's state directory: no snapshot, instances start cold",
                    self.config.name
                )],
            };
        }
        let r = match p.check(&meta.spec) {
            Ok(()) => p.prepare(&meta.spec, &meta.dir).await,
            Err(e) => Err(e),
        };
        match r {
            Ok(p) => PreparedMeta::Ok {
                start: p.start,
                snapshot: p.snapshot,
                image: p.image,
                warnings: p.warnings,
                steps: p.steps,
            },
            Err(PrepareError::Unavailable(u)) => PreparedMeta::Unavailable { why: u.why },
            Err(PrepareError::Init { what, output, .. }) => PreparedMeta::Init { what, output },
            Err(PrepareError::Sys { what, .. }) => PreparedMeta::Sys { what },
        }
    }
}

/// `spec` with its paths under `from` moved under `to`.
fn relocate(mut spec: FunctionSpec, from: &Path, to: &Path) -> FunctionSpec {
    let moved = |p: &Path| p.strip_prefix(from).map(|rel| to.join(rel)).ok();
    spec.image = match spec.image {
        ImageRef::Dir(p) => ImageRef::Dir(moved(&p).unwrap_or(p)),
        ImageRef::Image(p) => ImageRef::Image(moved(&p).unwrap_or(p)),
    };
    spec.snapshot = spec.snapshot.map(|p| moved(&p).unwrap_or(p));
    spec
}

/// Fetches the version directory `vdir` of `spec` from the gateway into
/// `cache/NAME/DIRNAME`: a tar checked against its blake3 digest, unpacked
/// beside its final place, then renamed into it. A directory already there
/// (fetched by an earlier run) is used as it is.
async fn fetch(
    spec: &FunctionSpec,
    vdir: &Path,
    cache: &Path,
    link: &Link,
) -> Result<PathBuf, String> {
    let Some(dirname) = vdir.file_name() else {
        return Err(format!("{} has no name", vdir.display()));
    };
    let dest = cache.join(&spec.name).join(dirname);
    if dest.is_dir() {
        return Ok(dest);
    }
    let id = link
        .next_fetch
        .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
        + 1;
    let (tx, rx) = oneshot::channel();
    link.fetches.lock().insert(
        id,
        Fetching {
            data: Vec::new(),
            done: tx,
        },
    );
    let ask = FetchMeta {
        name: spec.name.clone(),
        version: spec.version,
    };
    if link
        .out
        .send(frame::encode_json(Kind::Fetch, id, &ask))
        .is_err()
    {
        link.fetches.lock().remove(&id);
        return Err("the connection to the gateway closed".into());
    }
    let tar = match tokio::time::timeout(Duration::from_secs(300), rx).await {
        Ok(Ok(r)) => r?,
        Ok(Err(_)) => return Err("the connection to the gateway closed".into()),
        Err(_) => {
            link.fetches.lock().remove(&id);
            return Err("no answer within 300 s".into());
        }
    };
    let d = dest.clone();
    tokio::task::spawn_blocking(move || unpack(&tar, &d))
        .await
        .map_err(|e| e.to_string())??;
    tracing::info!(function = %spec.name, version = spec.version, dir = %dest.display(), "fetched a version from the gateway");
    Ok(dest)
}

fn unpack(tar: &[u8], dest: &Path) -> Result<(), String> {
    use std::os::unix::fs::PermissionsExt;
    let parent = dest.parent().ok_or("cache directory has no parent")?;
    let io = |what: &str, p: &Path, e: std::io::Error| format!("{what} {}: {e}", p.display());
    std::fs::create_dir_all(parent).map_err(|e| io("creating", parent, e))?;
    // Instances run as unprivileged uids: the cache is world-readable.
    for d in [Some(parent), parent.parent()].into_iter().flatten() {
        let _ = std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755));
    }
    let tmp = parent.join(format!(
        ".{}.{}",
        dest.file_name().and_then(|n| n.to_str()).unwrap_or("v"),
        std::process::id()
    ));
    let _ = std::fs::remove_dir_all(&tmp);
    std::fs::create_dir(&tmp).map_err(|e| io("creating", &tmp, e))?;
    let mut a = tar::Archive::new(tar);
    a.set_preserve_permissions(true);
    a.set_overwrite(false);
    // `unpack` refuses entries that would land outside `tmp`.
    if let Err(e) = a.unpack(&tmp) {
        let _ = std::fs::remove_dir_all(&tmp);
        return Err(io("unpacking into", &tmp, e));
    }
    let _ = std::fs::set_permissions(&tmp, std::fs::Permissions::from_mode(0o755));
    match std::fs::rename(&tmp, dest) {
        Ok(()) => Ok(()),
        Err(_) if dest.is_dir() => {
            let _ = std::fs::remove_dir_all(&tmp);
            Ok(())
        }
        Err(e) => {
            let _ = std::fs::remove_dir_all(&tmp);
            Err(io("moving into place", dest, e))
        }
    }
}

enum Session {
    Rejected(String),
    Unauthenticated,
    Failed(String),
}

/// Removes `cache/function`: renamed aside at once (so a fetch that starts
/// next unpacks into a fresh directory), deleted in the background.
fn remove_cached(cache: &Path, function: &str) {
    let dir = cache.join(function);
    if !dir.exists() {
        return;
    }
    let trash = cache.join(format!(
        ".deleted-{function}-{}",
        crate::registry::random_hex(4)
    ));
    match std::fs::rename(&dir, &trash) {
        Ok(()) => {
            tokio::task::spawn_blocking(move || {
                if let Err(e) = std::fs::remove_dir_all(&trash) {
                    tracing::warn!(dir = %trash.display(), "cannot remove a deleted function's files: {e}");
                }
            });
        }
        Err(e) => {
            tracing::warn!(dir = %dir.display(), "cannot remove a deleted function's files: {e}");
        }
    }
}

/// An invocation error as it crosses to the gateway.
fn error_meta(e: &InvokeError) -> ErrorMeta {
    let (message, timeout_ms) = match e.kind() {
        InvokeError::Function { message, .. } => (message.clone(), None),
        InvokeError::TimedOut { timeout } => (
            e.to_string(),
            Some(u64::try_from(timeout.as_millis()).unwrap_or(u64::MAX)),
        ),
        _ => (e.to_string(), None),
    };
    ErrorMeta {
        status: e.http_status(),
        code: e.code().to_owned(),
        message,
        timeout_ms,
        logs: e.logs().to_owned(),
    }
}
