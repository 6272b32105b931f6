//! The platform as separate processes: `faas serve --role gateway` (the
//! function gateway and the scheduler, no sandboxes) and `faas node --join`
//! (a node agent with its own sandboxes). See
//! [`faas_gateway::cluster`] for the protocol and what happens when a node
//! dies.
//!
//! ```text
//! faas serve --role gateway --listen 0.0.0.0:8080      (node port: 8081)
//!   ├─ FunctionGateway  HTTP API, GET /nodes
//!   ├─ PoolScheduler    nodes by heartbeat, tick every 100 ms
//!   └─ ClusterGateway   accepts nodes on --node-listen
//! faas node --join GATEWAY:8081 --name n1 --slots 64
//!   └─ NodeAgent ─▶ LocalNodeGateway ─▶ PooledSandboxRuntime
//! ```

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;

use anyhow::Context;
use faas_core::NodeId;
use faas_gateway::cluster::{
    AgentConfig, AgentEvent, ClusterConfig, ClusterGateway, ClusterToken, NodeAgent, NodeTable,
};
use faas_gateway::{FunctionGateway, GatewayConfig, Registry};
use faas_sched::PoolScheduler;

use crate::PlatformConfig;
use crate::platform::{HEARTBEAT_TIMEOUT, local_node, scheduler, start_ticker};

/// The gateway of a cluster: HTTP API and scheduler, nodes join over TCP.
pub struct Gateway {
    /// The HTTP gateway.
    pub gateway: Arc<FunctionGateway>,
    /// The scheduler (its tick thread runs while it lives).
    pub scheduler: Arc<PoolScheduler>,
    /// The node side: accepts node agents.
    pub cluster: Arc<ClusterGateway>,
    /// The nodes, as `GET /nodes` lists them.
    pub nodes: Arc<NodeTable>,
}

impl Gateway {
    /// Opens the registry in `state_dir` and wires the components; nodes
    /// must prove they know `token`; deploys are prepared by a connected
    /// node.
    ///
    /// # Errors
    ///
    /// The state directory cannot be opened.
    pub fn new(state_dir: &Path, max_body: usize, token: ClusterToken) -> anyhow::Result<Self> {
        let registry = Arc::new(
            Registry::open(state_dir)
                .with_context(|| format!("opening state directory {}", state_dir.display()))?,
        );
        let scheduler = scheduler(Some(HEARTBEAT_TIMEOUT));
        let nodes = Arc::new(NodeTable::new());
        let cluster = ClusterGateway::new(
            scheduler.clone(),
            nodes.clone(),
            ClusterConfig {
                heartbeat_timeout: HEARTBEAT_TIMEOUT,
                ..ClusterConfig::new(token)
            },
        );
        let gateway = Arc::new(
            FunctionGateway::new(registry, scheduler.clone(), GatewayConfig { max_body })
                .with_node_table(nodes.clone())
                .with_preparer(cluster.preparer()),
        );
        start_ticker(&scheduler, Some(Arc::downgrade(&cluster)));
        Ok(Gateway {
            gateway,
            scheduler,
            cluster,
            nodes,
        })
    }

    /// Binds the node listener at `addr`.
    ///
    /// # Errors
    ///
    /// The address is in use or not available.
    pub async fn bind_nodes(
        addr: SocketAddr,
    ) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!("cannot listen for nodes on {addr} (pick another with --node-listen)")
        })?;
        let a = l.local_addr()?;
        Ok((l, a))
    }

    /// Serves HTTP on `http` and node connections on `nodes` until
    /// `shutdown` completes.
    ///
    /// # Errors
    ///
    /// The HTTP server failed.
    pub async fn serve(
        &self,
        http: tokio::net::TcpListener,
        nodes: tokio::net::TcpListener,
        shutdown: impl std::future::Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let mut rx = stop_rx.clone();
        let node_task = tokio::spawn(self.cluster.clone().serve(
            self.gateway.clone(),
            nodes,
            async move {
                let _ = rx.wait_for(|s| *s).await;
            },
        ));
        let r = self
            .gateway
            .clone()
            .serve(http, async move {
                shutdown.await;
                let _ = stop_tx.send(true);
            })
            .await;
        drop(stop_rx);
        let _ = node_task.await;
        r?;
        Ok(())
    }
}

/// The cluster token of a gateway: read from `file` when given (created
/// there if it does not exist), else from `STATE/cluster.token` (created on
/// first start). Returns the token, its file, and whether it was created.
///
/// # Errors
///
/// The file cannot be read or created, is not a token, or others may read
/// it.
pub fn gateway_token(
    state_dir: &Path,
    file: Option<&Path>,
) -> anyhow::Result<(ClusterToken, std::path::PathBuf, bool)> {
    let path = file.map_or_else(|| state_dir.join("cluster.token"), Path::to_path_buf);
    let (token, created) = ClusterToken::load_or_create(&path)?;
    Ok((token, path, created))
}

/// The default node address: the HTTP address with the next port.
pub fn default_node_listen(http: SocketAddr) -> SocketAddr {
    let mut a = http;
    a.set_port(if http.port() == 0 {
        0
    } else {
        http.port().wrapping_add(1)
    });
    a
}

/// Settings of `faas node`.
#[derive(Debug, Clone)]
pub struct NodeSettings {
    /// The gateway's node address.
    pub join: String,
    /// The node's name.
    pub name: String,
    /// The cluster token (the gateway's `cluster.token`).
    pub token: ClusterToken,
    /// Memory offered, in MiB.
    pub memory_mb: u64,
    /// Fetch every version from the gateway into `STATE/cache`, even one
    /// whose directory is visible (versions that are not visible are
    /// always fetched).
    pub always_fetch: bool,
    /// Slots, sandbox, runtimes, state directory (for the runtimes'
    /// scripts) and snapshots, as for `faas serve`.
    pub platform: PlatformConfig,
}

/// Runs a node agent until the gateway refuses it or `shutdown` completes;
/// prints one line per connection event.
///
/// # Errors
///
/// The sandbox runtime cannot start, or the gateway refused the node.
pub async fn run_node(
    settings: NodeSettings,
    shutdown: impl std::future::Future<Output = ()> + Send,
) -> anyhow::Result<()> {
    let cfg = &settings.platform;
    std::fs::create_dir_all(&cfg.state_dir)
        .with_context(|| format!("creating state directory {}", cfg.state_dir.display()))?;
    let (node, runtime) = local_node(cfg, NodeId(settings.name.clone()))?;
    if runtime == "process" {
        eprintln!(
            "faas node: WARNING: instances run as plain processes (ProcessRuntime): not isolated, for development only"
        );
    }
    let mut agent_cfg = AgentConfig::new(
        settings.join.clone(),
        settings.name.clone(),
        settings.token.clone(),
    );
    agent_cfg.slots = cfg.slots;
    agent_cfg.memory_mb = settings.memory_mb;
    agent_cfg.cache_dir = Some(cfg.state_dir.join("cache"));
    agent_cfg.always_fetch = settings.always_fetch;
    let agent = NodeAgent::new(agent_cfg, Arc::new(node.clone()), Some(Arc::new(node)));
    let name = settings.name.clone();
    let (slots, memory) = (cfg.slots, settings.memory_mb);
    let run = agent.run(move |e| match e {
        AgentEvent::Joined { gateway } => {
            println!(
                "faas node {name}: joined gateway {gateway} ({slots} slots, {memory} MiB, sandbox: {runtime})"
            );
            use std::io::Write;
            let _ = std::io::stdout().flush();
        }
        AgentEvent::Unreachable {
            gateway,
            error,
            retry_in,
        } => eprintln!(
            "faas node {name}: gateway {gateway} unreachable: {error}; retrying in {:.1} s",
            retry_in.as_secs_f64()
        ),
        AgentEvent::Disconnected { reason } => {
            eprintln!("faas node {name}: disconnected: {reason}; reconnecting")
        }
    });
    tokio::select! {
        r = run => r.map_err(anyhow::Error::from),
        () = shutdown => Ok(()),
    }
}
