//! Assembling the components into one running platform.

use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::{Arc, Weak};
use std::time::Duration;

use anyhow::Context;
use faas_core::SandboxRuntime;
use faas_core::{NodeId, NodeInfo, Scheduler};
use faas_gateway::cluster::{ClusterGateway, NodeTable};
use faas_gateway::{
    FunctionGateway, GatewayConfig, Layout, LocalNodeGateway, Metrics, NodeConfig, Registry,
};
use faas_sandbox::{PooledSandboxRuntime, ProcessRuntime, SandboxConfig};
use faas_sched::{PoolConfig, PoolScheduler};

/// How long a node that joined over TCP may go without a heartbeat before
/// the scheduler declares it dead (nodes send one every 500 ms).
pub const HEARTBEAT_TIMEOUT: Duration = Duration::from_secs(2);
/// How often the scheduler's housekeeping ([`PoolScheduler::tick`]) runs.
pub const TICK: Duration = Duration::from_millis(100);

/// Settings of an embedded platform.
#[derive(Debug, Clone)]
pub struct PlatformConfig {
    /// Where deployed functions are kept.
    pub state_dir: PathBuf,
    /// Instance slots of the local node.
    pub slots: u32,
    /// Largest request body, in bytes.
    pub max_body: usize,
    /// Whether instances write to this process's stderr.
    pub inherit_stderr: bool,
    /// How instances are started.
    pub sandbox: SandboxChoice,
    /// The Python interpreter of Python functions.
    pub python: PathBuf,
    /// The Node.js interpreter of Node functions.
    pub node: PathBuf,
    /// Take a snapshot of each Python function at deploy and restore its
    /// instances from it (with the pooled sandbox; else they start cold).
    pub snapshots: bool,
    /// Pin instances to CPUs so that handing them a request wakes them on
    /// the same CPU (see `faas_gateway::NodeConfig::pin_instances`).
    pub pin_instances: bool,
}

/// Which [`SandboxRuntime`] starts the instances.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum SandboxChoice {
    /// `PooledSandboxRuntime` when running as root, else `ProcessRuntime`
    /// with a warning.
    #[default]
    Auto,
    /// `PooledSandboxRuntime`: namespaces, cgroups, seccomp.
    Pooled,
    /// `ProcessRuntime`: plain processes, not isolated, development only.
    Process,
}

impl PlatformConfig {
    /// Defaults with the given state directory: 64 slots, 6 MiB bodies,
    /// instance stderr shown, `/usr/bin/python3` and `/usr/bin/node`,
    /// snapshots on, kept-alive instances pinned.
    pub fn new(state_dir: PathBuf) -> Self {
        PlatformConfig {
            state_dir,
            slots: 64,
            max_body: 6 * 1024 * 1024,
            inherit_stderr: true,
            sandbox: SandboxChoice::Auto,
            python: PathBuf::from(crate::runtimes::DEFAULT_PYTHON),
            node: PathBuf::from(crate::runtimes::DEFAULT_NODE),
            snapshots: true,
            pin_instances: true,
        }
    }
}

/// The sandbox runtime, and the layout its instances see (binds and
/// restores only with the pooled sandbox).
fn runtime(choice: SandboxChoice) -> anyhow::Result<(Arc<dyn SandboxRuntime>, Layout)> {
    let pooled = || -> anyhow::Result<(Arc<dyn SandboxRuntime>, Layout)> {
        Ok((
            Arc::new(
                PooledSandboxRuntime::new(SandboxConfig::default())
                    .context("starting the sandbox runtime")?,
            ),
            Layout::Sandbox,
        ))
    };
    let process = || {
        (
            Arc::new(ProcessRuntime::new()) as Arc<dyn SandboxRuntime>,
            Layout::Host,
        )
    };
    match choice {
        SandboxChoice::Pooled => pooled(),
        SandboxChoice::Process => Ok(process()),
        SandboxChoice::Auto => match pooled() {
            Ok(r) => Ok(r),
            Err(e) => {
                tracing::warn!("{e:#}; falling back to plain processes (not isolated)");
                eprintln!(
                    "faas: WARNING: {e:#}\nfaas: WARNING: instances run as plain processes: not isolated, for development only"
                );
                Ok(process())
            }
        },
    }
}

/// The scheduler of a platform: a [`PoolScheduler`], whose nodes time out
/// after `heartbeat_timeout` when given (remote nodes; the in-process node
/// cannot miss a heartbeat).
pub(crate) fn scheduler(heartbeat_timeout: Option<Duration>) -> Arc<PoolScheduler> {
    Arc::new(PoolScheduler::new(PoolConfig {
        heartbeat_timeout,
        ..PoolConfig::default()
    }))
}

/// Runs [`PoolScheduler::tick`] every [`TICK`] on a thread of its own
/// until the scheduler is dropped (keep-alive expiry, pre-warming, queue
/// timeouts) and hands the nodes the tick declared dead to `cluster`,
/// which fails their requests.
pub(crate) fn start_ticker(scheduler: &Arc<PoolScheduler>, cluster: Option<Weak<ClusterGateway>>) {
    let weak = Arc::downgrade(scheduler);
    let spawned = std::thread::Builder::new()
        .name("faas-sched-tick".into())
        .spawn(move || {
            loop {
                std::thread::sleep(TICK);
                let Some(s) = weak.upgrade() else { return };
                let report = s.tick();
                if !report.dead_nodes.is_empty() {
                    tracing::warn!(nodes = ?report.dead_nodes, failed = report.failed.len(), "nodes missed their heartbeats");
                    if let Some(c) = cluster.as_ref().and_then(Weak::upgrade) {
                        c.nodes_dead(&report.dead_nodes);
                    }
                }
            }
        });
    if let Err(e) = spawned {
        tracing::error!("cannot start the scheduler's tick thread: {e}");
    }
}

/// Memory of this machine in MiB (`MemTotal`), what a node offers its
/// instances by default.
pub fn machine_memory_mb() -> u64 {
    std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
        })
        .map_or(8192, |kb| kb / 1024)
}

/// A node gateway for `node_id` with the sandbox runtime, runtimes and
/// snapshot setting of `config`; also returns the runtime's name.
///
/// # Errors
///
/// The sandbox runtime cannot start, or the language runtimes cannot be
/// written to the state directory.
pub(crate) fn local_node(
    config: &PlatformConfig,
    node_id: NodeId,
) -> anyhow::Result<(LocalNodeGateway, &'static str)> {
    let (runtime, layout) = runtime(config.sandbox)?;
    let runtime_name = runtime.name();
    let runtimes = crate::runtimes::install(&config.state_dir, &config.python, &config.node)
        .with_context(|| {
            format!(
                "writing the language runtimes into {}",
                config.state_dir.join("runtimes").display()
            )
        })?;
    let node_config = NodeConfig {
        node: node_id,
        max_body: 64 * 1024 * 1024,
        inherit_stderr: config.inherit_stderr,
        runtimes,
        layout,
        pin_instances: config.pin_instances,
    };
    // Restores need the pooled sandbox (the layout says which it is).
    let node = if config.snapshots && layout == Layout::Sandbox {
        LocalNodeGateway::with_snapshotter(
            node_config,
            runtime,
            Arc::new(faas_snapshot::PtraceSnapshotter::new()),
        )
    } else {
        LocalNodeGateway::new(node_config, runtime)
    };
    Ok((node, runtime_name))
}

/// A running platform: gateway, scheduler, one local node.
pub struct Platform {
    /// The HTTP gateway.
    pub gateway: Arc<FunctionGateway>,
    /// The scheduler (its tick thread runs while it lives).
    pub scheduler: Arc<PoolScheduler>,
    /// The local node's gateway.
    pub node: LocalNodeGateway,
    /// The nodes, as `GET /nodes` lists them.
    pub nodes: Arc<NodeTable>,
    /// The name of the sandbox runtime in use (`sandbox` or `process`).
    pub runtime: &'static str,
}

impl Platform {
    /// Opens the state directory and wires the components.
    ///
    /// # Errors
    ///
    /// The state directory cannot be opened.
    pub fn new(config: &PlatformConfig) -> anyhow::Result<Self> {
        let registry =
            Arc::new(Registry::open(&config.state_dir).with_context(|| {
                format!("opening state directory {}", config.state_dir.display())
            })?);
        let node_id = NodeId("local".into());
        let memory_mb = machine_memory_mb();
        let scheduler = scheduler(None);
        scheduler.add_node(NodeInfo {
            id: node_id.clone(),
            slots: config.slots,
            memory_mb,
        });
        start_ticker(&scheduler, None);
        let (node, runtime_name) = local_node(config, node_id)?;
        let nodes = Arc::new(NodeTable::new());
        // One registry for the gateway and the node: served at /metrics.
        let metrics = Arc::new(Metrics::new());
        let node = node.with_metrics(metrics.clone());
        let gateway = Arc::new(
            FunctionGateway::new(
                registry,
                scheduler.clone(),
                GatewayConfig {
                    max_body: config.max_body,
                },
            )
            .with_preparer(Arc::new(node.clone()))
            .with_metrics(metrics)
            .with_node_table(nodes.clone()),
        );
        gateway.add_node(Arc::new(nodes.local(node.clone(), config.slots, memory_mb)));
        Ok(Platform {
            gateway,
            scheduler,
            node,
            nodes,
            runtime: runtime_name,
        })
    }

    /// Binds `addr`; returns the listener and the address actually bound
    /// (port 0 picks a free port).
    ///
    /// # Errors
    ///
    /// The address is in use or not available.
    pub async fn bind(addr: SocketAddr) -> anyhow::Result<(tokio::net::TcpListener, SocketAddr)> {
        let l = tokio::net::TcpListener::bind(addr).await.with_context(|| {
            format!(
                "cannot listen on {addr} (is another server running? pick another with --listen)"
            )
        })?;
        let a = l.local_addr()?;
        Ok((l, a))
    }

    /// Serves HTTP on `listener` until `shutdown` completes.
    ///
    /// # Errors
    ///
    /// The server failed.
    pub async fn serve(
        &self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> anyhow::Result<()> {
        self.gateway.clone().serve(listener, shutdown).await?;
        Ok(())
    }
}
