//! [`LocalNodeGateway`]: per-function queues, instances that pull their
//! requests, deadlines, and exactly one answer per request.

use std::collections::{HashMap, VecDeque};
use std::os::fd::OwnedFd;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use faas_core::protocol::{Body, DecodeLimits, Frame, ProtocolError, channel_pair};
use faas_core::{
    BoxFuture, ExitStatus, FunctionSpec, ImageRef, Instance, Invocation, InvocationResult,
    InvokeError, LaunchError, NodeGateway, NodeId, Placement, Reuse, RuntimeKind, SandboxRuntime,
    SandboxSpec, Snapshotter, StartMode, Timings,
};
use parking_lot::{Mutex, RwLock};
use tokio::sync::oneshot;
use tokio::time::sleep_until;
use tracing::Instrument;

use crate::channel::AsyncChannel;
use crate::cpu;
use crate::logs::InstanceOutput;
use crate::metrics::{Metrics, NodeSource};
use crate::prepare::{self, PrepareError, Prepared, Preparer, SnapshotFailure, micros};
use crate::runtimes::{self, Layout, RuntimeCommands};

type Reply = oneshot::Sender<Result<InvocationResult, InvokeError>>;

/// Configuration of a [`LocalNodeGateway`].
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// The node's id.
    pub node: NodeId,
    /// Largest body accepted from an instance (inline or memfd).
    pub max_body: u64,
    /// Whether the instances' stderr is copied to the node's stderr, each
    /// line prefixed with its invocation id (it is captured into the
    /// invocation's logs either way).
    pub inherit_stderr: bool,
    /// The language runtimes (Python, Node.js) this node offers.
    pub runtimes: RuntimeCommands,
    /// Where language runtimes find their files: [`Layout::Sandbox`] when
    /// the sandbox runtime honours `SandboxPolicy::binds`
    /// (`PooledSandboxRuntime`), [`Layout::Host`] for `ProcessRuntime`.
    pub layout: Layout,
    /// Pin each kept-alive instance to one CPU and hand a request to an
    /// idle instance on the CPU that handles it, and a per-request instance
    /// to the CPU that sends it its request (see the `cpu` module): a
    /// wake-up on the same CPU costs no inter-processor interrupt.
    pub pin_instances: bool,
}

impl Default for NodeConfig {
    fn default() -> Self {
        NodeConfig {
            node: NodeId("local".into()),
            max_body: 64 * 1024 * 1024,
            inherit_stderr: true,
            runtimes: RuntimeCommands::default(),
            layout: Layout::default(),
            pin_instances: true,
        }
    }
}

/// Counters of a node gateway.
#[derive(Debug, Default)]
pub struct NodeStats {
    /// Instances launched.
    pub launched: AtomicU64,
    /// Instances alive now.
    pub live: AtomicU64,
    /// Requests served by an instance that was already running.
    pub reused: AtomicU64,
}

/// A request waiting in a function's queue.
struct Pending {
    inv: Invocation,
    enqueued: Instant,
    deadline: tokio::time::Instant,
    reply: Reply,
}

#[derive(Default)]
struct Queue {
    pending: VecDeque<Pending>,
    /// Idle keep-alive instances waiting for a request, the most recently
    /// parked last: a request takes the last one (its process and caches
    /// are the warmest, and under a load that needs fewer instances than
    /// are alive, the same few keep serving while the others age out).
    /// Each is tagged with the CPU it is pinned to (see [`cpu`]).
    idle: VecDeque<(Option<usize>, oneshot::Sender<Pending>)>,
    /// Instances launched that have not looked at `pending` yet.
    launching: usize,
    /// Keep-alive instances that have answered and will look at `pending`
    /// before they park idle.
    returning: usize,
}

impl Queue {
    /// The oldest request whose caller is still waiting.
    fn pop_live(&mut self) -> Option<Pending> {
        while let Some(p) = self.pending.pop_front() {
            if !p.reply.is_closed() {
                return Some(p);
            }
        }
        None
    }

    /// The most recently parked idle instance pinned to CPU `here`, else
    /// the most recently parked one.
    fn take_idle(&mut self, here: Option<usize>) -> Option<oneshot::Sender<Pending>> {
        let last = self.idle.len().checked_sub(1)?;
        let at = here
            .and_then(|h| self.idle.iter().rposition(|(c, _)| *c == Some(h)))
            .unwrap_or(last);
        self.idle.remove(at).map(|(_, tx)| tx)
    }
}

/// State per function version.
struct FnState {
    spec: Arc<FunctionSpec>,
    queue: Mutex<Queue>,
    /// A restore from the function's snapshot failed: start cold from now on.
    restore_failed: AtomicBool,
    /// A fork of the function's template failed: restore from now on.
    fork_failed: AtomicBool,
    /// The function was deleted: instances do not park idle any more.
    removed: AtomicBool,
    /// Kept-alive instances given a home CPU so far (they take the CPUs in
    /// turn).
    homes: AtomicU64,
    /// How long the requests of its per-request instances run, in µs (a
    /// moving average): they are pinned while it is short (see `cpu`).
    run_us: AtomicU64,
}

impl FnState {
    /// Notes that starting instances in `mode` failed: the next ones start
    /// the next way (fork → restore → cold).
    fn start_failed(&self, mode: StartMode) {
        let (flag, what) = match mode {
            StartMode::Fork => (
                &self.fork_failed,
                "forking the template failed; restoring the snapshot from now on",
            ),
            _ => (
                &self.restore_failed,
                "restoring the snapshot failed; starting cold from now on",
            ),
        };
        tracing::warn!(function = %self.spec.name, version = self.spec.version, "{what}");
        flag.store(true, Ordering::Relaxed);
    }
}

struct Inner {
    config: NodeConfig,
    runtime: Arc<dyn SandboxRuntime>,
    snapshotter: Option<Arc<dyn Snapshotter>>,
    functions: Mutex<HashMap<(String, u32), Arc<FnState>>>,
    stats: NodeStats,
    next_instance: AtomicU64,
    metrics: RwLock<Arc<Metrics>>,
}

/// The reference [`NodeGateway`]: it runs on the node, in the same process
/// as the instances' launcher.
///
/// ```text
/// invoke(f, req) ─▶ idle instance of f? ──yes──▶ hand req to it
///                         │ no
///                         ▼
///                   queue[f].push(req); launch instance ─▶ instance sends Ready
///                                                          ─▶ pulls oldest req of f
///                                                          ─▶ Invoke … Result
/// ```
///
/// Each request gets exactly one answer: the function's result, or an
/// [`InvokeError`] — instance exited before answering, deadline passed
/// (instance killed), protocol violation (instance killed), launch failure.
/// `per_request` instances are killed after their answer; `keep_alive`
/// instances wait for the next request of their function for the idle time.
///
/// Instances of a function deployed with `start: restore` are restored
/// from its snapshot; when a restore fails (the snapshot no longer matches
/// the host, e.g. an updated interpreter), the function's instances start
/// cold from then on and a warning is logged. With `start: fork` they are
/// forks of a template of the snapshot ([`StartMode::Fork`]); when a fork
/// fails they are restored from then on. As a [`Preparer`] it checks
/// that a function's language runtime is available and, with a
/// [`Snapshotter`] and the sandbox layout, takes Python snapshots at deploy
/// (see [`Preparer`]).
#[derive(Clone)]
pub struct LocalNodeGateway {
    inner: Arc<Inner>,
}

impl LocalNodeGateway {
    /// A node gateway launching instances with `runtime`, always cold.
    pub fn new(config: NodeConfig, runtime: Arc<dyn SandboxRuntime>) -> Self {
        Self::build(config, runtime, None)
    }

    /// A node gateway that also takes snapshots of Python functions at
    /// deploy with `snapshotter` and restores their instances from them
    /// (`runtime` must support `StartMode::Restore` and the config's layout
    /// be [`Layout::Sandbox`]).
    pub fn with_snapshotter(
        config: NodeConfig,
        runtime: Arc<dyn SandboxRuntime>,
        snapshotter: Arc<dyn Snapshotter>,
    ) -> Self {
        Self::build(config, runtime, Some(snapshotter))
    }

    fn build(
        config: NodeConfig,
        runtime: Arc<dyn SandboxRuntime>,
        snapshotter: Option<Arc<dyn Snapshotter>>,
    ) -> Self {
        LocalNodeGateway {
            inner: Arc::new(Inner {
                config,
                runtime,
                snapshotter,
                functions: Mutex::new(HashMap::new()),
                stats: NodeStats::default(),
                next_instance: AtomicU64::new(1),
                metrics: RwLock::default(),
            }),
        }
    }

    /// Records instance starts into `metrics` (shared with the function
    /// gateway of the process, see [`Metrics`]) instead of a registry of
    /// its own, which also reports this node's live instances and queue
    /// depths at each scrape.
    #[must_use]
    pub fn with_metrics(self, metrics: Arc<Metrics>) -> Self {
        let source: Weak<Inner> = Arc::downgrade(&self.inner);
        metrics.add_node(&self.inner.config.node, source);
        *self.inner.metrics.write() = metrics;
        self
    }

    /// The gateway's counters.
    pub fn stats(&self) -> &NodeStats {
        &self.inner.stats
    }

    /// The queue of this exact spec (a redeployed version with the same
    /// number but other contents gets a fresh one).
    fn state(&self, spec: &Arc<FunctionSpec>) -> Arc<FnState> {
        let mut fns = self.inner.functions.lock();
        let key = (spec.name.clone(), spec.version);
        match fns.get(&key) {
            Some(st) if st.spec == *spec => st.clone(),
            _ => {
                let st = Arc::new(FnState {
                    spec: spec.clone(),
                    queue: Mutex::new(Queue::default()),
                    restore_failed: AtomicBool::new(false),
                    fork_failed: AtomicBool::new(false),
                    removed: AtomicBool::new(false),
                    homes: AtomicU64::new(0),
                    run_us: AtomicU64::new(0),
                });
                fns.insert(key, st.clone());
                st
            }
        }
    }

    async fn run(
        &self,
        spec: Arc<FunctionSpec>,
        inv: Invocation,
    ) -> Result<InvocationResult, InvokeError> {
        let timeout = spec.limits.timeout();
        let remaining = inv.deadline.remaining().min(timeout);
        let deadline = tokio::time::Instant::now() + remaining;
        let (tx, rx) = oneshot::channel();
        let mut p = Pending {
            inv,
            enqueued: Instant::now(),
            deadline,
            reply: tx,
        };
        let st = self.state(&spec);
        let here = if self.inner.config.pin_instances {
            cpu::current()
        } else {
            None
        };
        let launch = {
            let mut q = st.queue.lock();
            loop {
                match q.take_idle(here) {
                    Some(idle) => match idle.send(p) {
                        Ok(()) => break false,
                        Err(back) => p = back,
                    },
                    None => {
                        q.pending.push_back(p);
                        // Instances on their way (launching, or back from
                        // their last answer) take the waiting requests
                        // first: launch only for the ones left over.
                        break q.pending.len() > q.launching + q.returning;
                    }
                }
            }
        };
        if launch {
            spawn_instance(self.inner.clone(), st);
        }
        // The instance task enforces the deadline once it runs the request;
        // this bound covers a request that no instance pulled in time.
        match tokio::time::timeout_at(deadline + Duration::from_millis(50), rx).await {
            Ok(Ok(r)) => r,
            Ok(Err(_)) => Err(InvokeError::ShuttingDown),
            Err(_) => Err(InvokeError::TimedOut { timeout }),
        }
    }
}

impl NodeGateway for LocalNodeGateway {
    fn node(&self) -> &NodeId {
        &self.inner.config.node
    }

    fn invoke<'a>(
        &'a self,
        function: Arc<FunctionSpec>,
        placement: &'a Placement,
        invocation: Invocation,
    ) -> BoxFuture<'a, Result<InvocationResult, InvokeError>> {
        Box::pin(async move {
            if placement.node != self.inner.config.node {
                return Err(InvokeError::WrongNode {
                    placement: placement.node.clone(),
                    node: self.inner.config.node.clone(),
                });
            }
            self.run(function, invocation).await
        })
    }

    /// Forgets every version of `function`: its idle keep-alive instances
    /// exit now, running ones after their request; its requests still
    /// queued are served.
    fn remove_function(&self, function: &str) {
        let removed: Vec<Arc<FnState>> = {
            let mut fns = self.inner.functions.lock();
            let keys: Vec<_> = fns.keys().filter(|(n, _)| n == function).cloned().collect();
            keys.iter().filter_map(|k| fns.remove(k)).collect()
        };
        for st in removed {
            st.removed.store(true, Ordering::Relaxed);
            // Dropping their senders wakes the idle instances: they exit.
            st.queue.lock().idle.clear();
            // What the runtime prepared ahead for this version (instances
            // restored ahead, templates, mounts of its image and code).
            let mut paths: Vec<&std::path::Path> = vec![st.spec.image.path()];
            paths.extend(st.spec.snapshot.as_deref());
            self.inner.runtime.forget(&paths);
        }
    }
}

/// Fails the oldest waiting request of `st` (the one an instance was
/// launched for) with `err`.
fn fail_one(st: &FnState, err: InvokeError) {
    let p = st.queue.lock().pop_live();
    if let Some(p) = p {
        let _ = p.reply.send(Err(err));
    }
}

struct LiveGuard<'a>(&'a NodeStats);

impl Drop for LiveGuard<'_> {
    fn drop(&mut self) {
        self.0.live.fetch_sub(1, Ordering::Relaxed);
    }
}

/// Starts [`instance_task`] in the background, in the current span (the
/// request's that launches it: its trace id is on the task's log lines),
/// counted in its queue's `launching`.
fn spawn_instance(inner: Arc<Inner>, st: Arc<FnState>) {
    st.queue.lock().launching += 1;
    tokio::spawn(instance_task(inner, st).instrument(tracing::Span::current()));
}

/// Counts a new instance in its queue's `launching` until it first looks
/// at the queue, or gives up before.
struct Launching(Option<Arc<FnState>>);

impl Launching {
    fn arrive(&mut self, q: &mut Queue) {
        if self.0.take().is_some() {
            q.launching -= 1;
        }
    }
}

impl Drop for Launching {
    fn drop(&mut self) {
        if let Some(st) = self.0.take() {
            st.queue.lock().launching -= 1;
        }
    }
}

/// Launches one instance of `st`'s function and serves requests with it
/// until it exits (per request: after one).
async fn instance_task(inner: Arc<Inner>, st: Arc<FnState>) {
    let mut launching = Launching(Some(st.clone()));
    let spec = st.spec.clone();
    let n = inner.next_instance.fetch_add(1, Ordering::Relaxed);
    let name = format!("{}-v{}-{n}", spec.name, spec.version);
    let started = Instant::now();
    let timeout = spec.limits.timeout();
    let launch_err = |e: ProtocolError| {
        InvokeError::Launch(faas_core::LaunchError::Sys {
            name: name.clone(),
            op: "guest channel",
            source: std::io::Error::other(e),
        })
    };
    let (ours, theirs) = match channel_pair() {
        Ok(p) => p,
        Err(e) => return fail_one(&st, launch_err(e)),
    };
    let mut chan = match AsyncChannel::new(
        ours,
        DecodeLimits {
            max_body: inner.config.max_body,
        },
    ) {
        Ok(c) => c,
        Err(e) => return fail_one(&st, launch_err(e)),
    };
    let out = match InstanceOutput::new(&name, inner.config.inherit_stderr) {
        Ok(o) => o,
        Err(source) => {
            return fail_one(
                &st,
                InvokeError::Launch(LaunchError::Sys {
                    name: name.clone(),
                    op: "creating the log pipes",
                    source,
                }),
            );
        }
    };
    let keep_alive = match spec.reuse {
        Reuse::PerRequest => None,
        Reuse::KeepAlive { idle_ms } => Some(Duration::from_millis(idle_ms)),
    };
    let launched = launch(&inner, &st, &name, theirs, &out).await;
    out.launched();
    let (mut inst, mode) = match launched {
        Ok(i) => i,
        Err(e) => {
            tracing::warn!(function = %spec.name, error = %e, "launch failed");
            return fail_one(&st, InvokeError::Launch(e));
        }
    };
    inner.stats.launched.fetch_add(1, Ordering::Relaxed);
    let pid = inst.pid();
    // A kept-alive instance's home CPU (see the `cpu` module), and whether
    // it is pinned there now.
    let home = match keep_alive {
        Some(_) if inner.config.pin_instances => {
            cpu::home(st.homes.fetch_add(1, Ordering::Relaxed))
        }
        _ => None,
    }
    .filter(|&c| cpu::pin(pid, c));
    let mut pinned = home.is_some();
    inner.stats.live.fetch_add(1, Ordering::Relaxed);
    let _live = LiveGuard(&inner.stats);

    // Startup: the instance must say Ready within the function's timeout
    // (a restored native guest said it before its snapshot). One restored
    // from a snapshot has run its start already: its request goes out at
    // once, and a `Ready` it still says (a language runtime continuing
    // from its snapshot point) is read before the answer, which saves it
    // and us a wake-up each (see `exchange`).
    let from_snapshot = matches!(mode, StartMode::Restore | StartMode::Fork);
    let ready_at_once = from_snapshot;
    let says_ready = from_snapshot && prepare::restored_sends_ready(&spec);
    let ready = if ready_at_once {
        Ok(())
    } else {
        await_ready(&mut chan, inst.as_mut(), timeout).await
    };
    let mut start_us = match ready {
        Ok(()) => {
            let took = started.elapsed();
            inner
                .metrics
                .read()
                .record_instance_start(&spec, mode, took);
            micros(took)
        }
        Err(InvokeError::Exited {
            status: ExitStatus::Code(code @ 120..=127),
            ..
        }) if from_snapshot => {
            // The snapshot restorer gave up (its reason is on the
            // instance's stderr): the request is still queued; start this
            // function the next way from now on.
            tracing::warn!(function = %spec.name, version = spec.version, code, "the restorer gave up");
            st.start_failed(mode);
            let _ = out.finish();
            drop(_live);
            return spawn_instance(inner.clone(), st.clone());
        }
        Err(e) => {
            tracing::debug!(instance = %name, error = %e, "instance failed before Ready");
            return fail_one(&st, e.with_logs(out.finish()));
        }
    };
    let mut cold = true;
    // A keep-alive instance counts as available as soon as it has answered:
    // it is parked before its next `Ready` arrives, so a request that comes
    // in meanwhile does not launch a second instance.
    let mut announced = true;
    // Counted in the queue's `returning` (see `serve_one`).
    let mut returning = false;
    loop {
        // Pull the oldest request, or park idle (keep-alive only), in one
        // step: a request arriving meanwhile finds this instance either
        // returning or idle, and launches no other.
        let (next, parked) = {
            let mut q = st.queue.lock();
            launching.arrive(&mut q);
            if returning {
                q.returning -= 1;
            }
            match (q.pop_live(), keep_alive) {
                (Some(p), _) => (Some(p), None),
                (None, Some(_)) if !st.removed.load(Ordering::Relaxed) => {
                    // Instances that stopped waiting (idle time over) leave
                    // their closed senders at the front, where requests
                    // rarely reach: drop them here.
                    while q.idle.front().is_some_and(|(_, tx)| tx.is_closed()) {
                        q.idle.pop_front();
                    }
                    let (tx, rx) = oneshot::channel();
                    q.idle.push_back((home.filter(|_| pinned), tx));
                    (None, Some(rx))
                }
                (None, _) => (None, None),
            }
        };
        let p = match (next, parked, keep_alive) {
            (Some(p), _, _) => p,
            (None, Some(rx), Some(idle)) => match wait_idle(&st, inst.as_mut(), rx, idle).await {
                Some(p) => p,
                None => break,
            },
            _ => break,
        };
        if !announced && let Err(e) = await_ready(&mut chan, inst.as_mut(), timeout).await {
            // It died after its last answer: the request it took goes back
            // to the head of the queue, for a fresh instance.
            tracing::debug!(instance = %name, error = %e, "keep-alive instance did not come back");
            st.queue.lock().pending.push_front(p);
            spawn_instance(inner.clone(), st.clone());
            break;
        }
        if !cold {
            inner.stats.reused.fetch_add(1, Ordering::Relaxed);
        }
        let start = Start {
            us: start_us,
            mode: cold.then_some(mode),
            retry_restore: cold && ready_at_once,
            ready_first: cold && says_ready,
            keep_alive: keep_alive.is_some(),
        };
        // A per-request instance of a function whose requests are short
        // runs on the CPU that sends it its request.
        if keep_alive.is_none()
            && inner.config.pin_instances
            && st.run_us.load(Ordering::Relaxed) < micros(cpu::SHORT_RUN)
            && let Some(c) = cpu::current()
        {
            pinned = cpu::pin(pid, c);
        }
        let began = Instant::now();
        let serving = serve_one(&mut chan, inst.as_mut(), &out, &st, p, start, timeout);
        let served = if home.is_none() && pinned {
            // One request, most often a short one: unpinned if it is not.
            unpin_if_long(serving, pid).await
        } else {
            serving.await
        };
        // A kept-alive instance is unpinned after a long request (a timer
        // per request would cost the warm path ~10 % of its throughput) and
        // pinned again after a short one.
        let took = began.elapsed();
        match home {
            Some(_) if pinned && took > cpu::UNPIN_AFTER => pinned = !cpu::unpin(pid),
            Some(c) if !pinned && took < cpu::SHORT_RUN => pinned = cpu::pin(pid, c),
            // Only per-request instances read the average.
            Some(_) => {}
            None if keep_alive.is_some() => {}
            None => {
                let avg = st.run_us.load(Ordering::Relaxed);
                let avg = avg.saturating_mul(7).saturating_add(micros(took)) / 8;
                st.run_us.store(avg, Ordering::Relaxed);
            }
        }
        cold = false;
        start_us = 0;
        announced = matches!(served, Served::Usable { ready: true });
        returning = matches!(served, Served::Usable { .. }) && keep_alive.is_some();
        match served {
            Served::Usable { .. } if keep_alive.is_some() => {}
            Served::Usable { .. } | Served::Done => break,
            Served::RestoreFailed(p) => {
                // The restorer gave up before the guest ran (its reason is
                // on the instance's stderr): the request goes back to the
                // head of the queue, for an instance started the next way.
                st.start_failed(mode);
                st.queue.lock().pending.push_front(p);
                drop(_live);
                return spawn_instance(inner.clone(), st.clone());
            }
        }
    }
    let _ = inst.kill();
    let _ = inst.wait().await;
}

/// The sandbox spec of an instance of `spec` (cold, or restored from
/// `snapshot`).
fn sandbox_spec(
    config: &NodeConfig,
    spec: &FunctionSpec,
    name: &str,
    snapshot: Option<&Path>,
    channel: OwnedFd,
    out: &InstanceOutput,
) -> Result<SandboxSpec, LaunchError> {
    let cmd = runtimes::command(spec, &config.runtimes, config.layout, false).map_err(|e| {
        LaunchError::Unsupported {
            name: name.to_owned(),
            runtime: "node gateway",
            what: e.to_string(),
        }
    })?;
    let (stdout, stderr) = out.stdio().map_err(|source| LaunchError::Sys {
        name: name.to_owned(),
        op: "duplicating the log pipes",
        source,
    })?;
    Ok(cmd.into_spec(
        name.to_owned(),
        spec,
        config.layout,
        snapshot,
        runtimes::InstanceIo {
            channel,
            stdout,
            stderr,
        },
    ))
}

/// Launches an instance of `st`'s function with `channel` as its fd 3:
/// forked from its snapshot's template when it was deployed with `start:
/// fork`, restored from its snapshot when it has one, else cold, each
/// unless it failed before. A fork or restore that cannot even be launched
/// falls back to the next way at once. Returns the instance and how it
/// started.
async fn launch(
    inner: &Inner,
    st: &FnState,
    name: &str,
    channel: OwnedFd,
    out: &InstanceOutput,
) -> Result<(Box<dyn Instance>, StartMode), LaunchError> {
    let spec = &st.spec;
    let cfg = &inner.config;
    let mut channel = channel;
    if let Some(dir) = &spec.snapshot {
        for mode in [StartMode::Fork, StartMode::Restore] {
            let (wanted, failed) = match mode {
                StartMode::Fork => (spec.start == StartMode::Fork, &st.fork_failed),
                _ => (spec.start != StartMode::Cold, &st.restore_failed),
            };
            if !wanted || failed.load(Ordering::Relaxed) {
                continue;
            }
            let spare = channel.try_clone().map_err(|source| LaunchError::Sys {
                name: name.to_owned(),
                op: "duplicating the guest channel",
                source,
            })?;
            let mut sandbox = sandbox_spec(cfg, spec, name, Some(dir), channel, out)?;
            sandbox.start = mode;
            match inner.runtime.launch(sandbox).await {
                Ok(inst) => return Ok((inst, mode)),
                Err(e) => {
                    tracing::warn!(function = %spec.name, version = spec.version, error = %e, "launching an instance ({}) failed", mode.as_str());
                    // A fork refused for want of resources (the template's
                    // pids or memory limit, shared by all its forks): this
                    // one instance is restored instead; the next forks.
                    let exhausted = matches!(&e, LaunchError::Sys { source, .. }
                        if matches!(source.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::OutOfMemory));
                    if mode != StartMode::Fork || !exhausted {
                        st.start_failed(mode);
                    }
                    channel = spare;
                }
            }
        }
    }
    let inst = inner
        .runtime
        .launch(sandbox_spec(cfg, spec, name, None, channel, out)?)
        .await?;
    Ok((inst, StartMode::Cold))
}

impl Preparer for LocalNodeGateway {
    fn check(&self, spec: &FunctionSpec) -> Result<(), PrepareError> {
        if matches!(spec.runtime, RuntimeKind::Python | RuntimeKind::Node) {
            self.inner.config.runtimes.check(spec.runtime)?;
        }
        Ok(())
    }

    /// In the sandbox layout: builds the version's faas-rofs image (its
    /// sandboxes mount it), then, with a snapshotter, takes the snapshot
    /// of a Python runtime at its snapshot point or of a native guest
    /// after its `Ready` (see [`crate::prepare`]).
    fn prepare<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        version_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Prepared, PrepareError>> {
        Box::pin(async move {
            self.check(spec)?;
            let inner = &self.inner;
            if inner.config.layout != Layout::Sandbox {
                return Ok(Prepared::default());
            }
            let mut done = Prepared::default();
            let built = {
                let (spec, dir) = (spec.clone(), version_dir.to_path_buf());
                tokio::task::spawn_blocking(move || prepare::build_image(&spec, &dir)).await
            };
            let step = built.map_err(|e| PrepareError::Sys {
                name: spec.name.clone(),
                what: format!("building the image: {e}"),
            })??;
            done.steps.push(step);
            let image = version_dir.join(prepare::IMAGE_FILE);
            let mut spec = spec.clone();
            spec.image = ImageRef::Image(image.clone());
            done.image = Some(image);
            let fork = spec.start_request == Some(StartMode::Fork);
            let snapshotter = match &inner.snapshotter {
                _ if spec.start_request == Some(StartMode::Cold) => return Ok(done),
                Some(s) if matches!(spec.runtime, RuntimeKind::Python | RuntimeKind::Native) => s,
                _ => {
                    if fork {
                        done.warnings.push(format!(
                            "start mode fork needs a snapshot, which this node does not take of {} functions: instances start cold",
                            spec.runtime.as_str()
                        ));
                    }
                    return Ok(done);
                }
            };
            let started = Instant::now();
            let taken = prepare::snapshot(
                &inner.config,
                &inner.runtime,
                snapshotter,
                &spec,
                version_dir,
            )
            .await;
            match taken {
                Ok(dir) => {
                    done.start = if fork {
                        StartMode::Fork
                    } else {
                        StartMode::Restore
                    };
                    done.snapshot = Some(dir);
                    done.steps.push(prepare::Step {
                        step: "snapshot".into(),
                        us: micros(started.elapsed()),
                        detail: "taken and restored once".into(),
                    });
                }
                Err(SnapshotFailure::Init(e)) => return Err(e),
                Err(SnapshotFailure::Snapshot(why)) => {
                    tracing::warn!(function = %spec.name, version = spec.version, "no snapshot, instances start cold: {why}");
                    done.warnings.push(format!(
                        "no snapshot was taken, instances start cold: {why}"
                    ));
                }
            }
            Ok(done)
        })
    }
}

/// Waits for the instance's `Ready`, or turns its failure into the error of
/// the request it was launched for.
async fn await_ready(
    chan: &mut AsyncChannel,
    inst: &mut dyn Instance,
    timeout: Duration,
) -> Result<(), InvokeError> {
    let by = tokio::time::Instant::now() + timeout;
    let frame = tokio::select! {
        f = chan.recv() => f,
        () = sleep_until(by) => {
            let _ = inst.kill();
            let _ = inst.wait().await;
            return Err(InvokeError::TimedOut { timeout });
        }
    };
    match frame {
        Ok(Some(Frame::Ready { .. })) => Ok(()),
        Ok(None) => Err(exited(inst).await),
        Ok(Some(other)) => {
            let _ = inst.kill();
            Err(InvokeError::Protocol(ProtocolError::Malformed {
                kind: other.kind(),
                what: "expected Ready",
            }))
        }
        Err(e) => {
            let _ = inst.kill();
            Err(InvokeError::Protocol(e))
        }
    }
}

/// The instance closed its channel: wait (briefly) for its exit status.
async fn exited(inst: &mut dyn Instance) -> InvokeError {
    match tokio::time::timeout(Duration::from_secs(2), inst.wait()).await {
        Ok(Ok(status)) => InvokeError::Exited {
            status,
            limit: inst.exceeded(),
        },
        _ => {
            // It closed fd 3 but lives on: kill it and report the signal.
            let _ = inst.kill();
            match inst.wait().await {
                Ok(status) => InvokeError::Exited {
                    status,
                    limit: inst.exceeded(),
                },
                Err(_) => InvokeError::Exited {
                    status: faas_core::ExitStatus::Signal(9),
                    limit: None,
                },
            }
        }
    }
}

/// Awaits `serving`, the request of the pinned instance `pid`, which is
/// unpinned if it is still at it after [`cpu::UNPIN_AFTER`].
async fn unpin_if_long(serving: impl Future<Output = Served>, pid: u32) -> Served {
    tokio::pin!(serving);
    tokio::select! {
        biased;
        served = &mut serving => served,
        () = tokio::time::sleep(cpu::UNPIN_AFTER) => {
            cpu::unpin(pid);
            serving.await
        }
    }
}

/// Keeps a keep-alive instance parked (its sender is in the queue's
/// `idle`) until a request for its function arrives on `rx` or `idle`
/// passes.
async fn wait_idle(
    st: &FnState,
    inst: &mut dyn Instance,
    mut rx: oneshot::Receiver<Pending>,
    idle: Duration,
) -> Option<Pending> {
    tokio::select! {
        p = &mut rx => p.ok(),
        () = tokio::time::sleep(idle) => {
            rx.close();
            rx.try_recv().ok()
        }
        _ = inst.wait() => {
            rx.close();
            // A request handed over in the same instant goes back to the queue's head.
            if let Ok(p) = rx.try_recv() {
                st.queue.lock().pending.push_front(p);
            }
            None
        }
    }
}

/// What became of an instance that ran a request.
enum Served {
    /// It answered and can take another request; `ready`: at once (its
    /// answer said so), else after its next `Ready`.
    Usable { ready: bool },
    /// It is gone or was killed.
    Done,
    /// It was restored without `Ready` and its restorer gave up before the
    /// guest ran: the request, unanswered.
    RestoreFailed(Pending),
}

/// How the instance serving a request started.
struct Start {
    /// Microseconds it took (0 for a reused instance).
    us: u64,
    /// How, for a fresh instance.
    mode: Option<StartMode>,
    /// It was restored and sent its request before any `Ready`: a restorer
    /// failure hands the request back (see [`serve_one`]).
    retry_restore: bool,
    /// It says `Ready` after its restore, before it reads the request sent
    /// ahead of it: the first frame may be that `Ready`.
    ready_first: bool,
    /// It stays for the next request: counted in [`Queue::returning`]
    /// before its answer goes out.
    keep_alive: bool,
}

/// Runs one request on a ready instance. With `retry_restore`, a restorer
/// failure (exit status 120-127 before any answer) hands the request back.
async fn serve_one(
    chan: &mut AsyncChannel,
    inst: &mut dyn Instance,
    out: &InstanceOutput,
    st: &FnState,
    p: Pending,
    start: Start,
    timeout: Duration,
) -> Served {
    let Start {
        us: start_us,
        mode: started,
        retry_restore,
        ready_first,
        keep_alive,
    } = start;
    let Pending {
        inv,
        enqueued,
        deadline,
        reply,
    } = p;
    let id = inv.id;
    let (function, version) = (inv.function, inv.version);
    let span = tracing::info_span!("invocation", invocation = %id, trace = %inv.trace_id);
    out.begin(id);
    let queued_us = micros(enqueued.elapsed()).saturating_sub(start_us);
    let sent = Instant::now();
    let body = match Body::new(inv.body) {
        Ok(b) => b,
        Err(e) => {
            let _ = reply.send(Err(InvokeError::Protocol(e)));
            return Served::Done;
        }
    };
    let frame = Frame::Invoke {
        id,
        deadline: inv.deadline,
        trace_id: inv.trace_id,
        headers: inv.headers,
        body,
    };
    let outcome = tokio::select! {
        r = exchange(chan, &frame, id, out, ready_first).instrument(span) => r,
        () = sleep_until(deadline) => Err(InvokeError::TimedOut { timeout }),
    };
    let (result, usable, ready) = match outcome {
        Ok((Ok((status, headers, body)), ready)) => (
            Ok(InvocationResult {
                status,
                headers,
                body,
                timings: Timings {
                    queued_us,
                    start_us,
                    run_us: micros(sent.elapsed()),
                    started,
                },
                cold: started.is_some(),
                logs: out.finish(),
            }),
            true,
            ready,
        ),
        Ok((Err(e @ InvokeError::Function { .. }), ready)) => {
            (Err(e.with_logs(out.finish())), true, ready)
        }
        Ok((Err(e), _)) | Err(e) => {
            // Timeout or protocol violation: the instance is done for.
            let _ = inst.kill();
            let e = match e {
                InvokeError::Exited { .. } => exited(inst).await,
                e => e,
            };
            if retry_restore
                && let InvokeError::Exited {
                    status: ExitStatus::Code(120..=127),
                    ..
                } = e
                && let Frame::Invoke {
                    id,
                    deadline: at,
                    trace_id,
                    headers,
                    body,
                } = frame
                && let Ok(body) = body.into_vec()
            {
                let inv = Invocation {
                    id,
                    function,
                    version,
                    headers,
                    body,
                    deadline: at,
                    trace_id,
                };
                // Nothing ran: what the restorer wrote is not the request's.
                drop(out.finish());
                return Served::RestoreFailed(Pending {
                    inv,
                    enqueued,
                    deadline,
                    reply,
                });
            }
            (Err(e.with_logs(out.finish())), false, false)
        }
    };
    if usable && keep_alive {
        st.queue.lock().returning += 1;
    }
    let _ = reply.send(result);
    if usable {
        Served::Usable { ready }
    } else {
        Served::Done
    }
}

type Answer = Result<(u16, Vec<(String, String)>, Vec<u8>), InvokeError>;

/// Sends the request and reads frames until its answer (after one `Ready`
/// with `ready_first`). With the answer: whether the instance said it
/// takes its next request at once (no `Ready` follows).
async fn exchange(
    chan: &mut AsyncChannel,
    invoke: &Frame,
    id: faas_core::InvocationId,
    out: &InstanceOutput,
    mut ready_first: bool,
) -> Result<(Answer, bool), InvokeError> {
    chan.send(invoke).await.map_err(|e| match e {
        // The instance went away before taking its request.
        ProtocolError::Io { .. } => InvokeError::Exited {
            status: faas_core::ExitStatus::Code(-1),
            limit: None,
        },
        e => InvokeError::Protocol(e),
    })?;
    loop {
        match chan.recv().await {
            Ok(Some(Frame::Ready { .. })) if ready_first => ready_first = false,
            Ok(Some(Frame::Result {
                id: rid,
                status,
                headers,
                body,
                ready,
            })) if rid == id => {
                let body = body.into_vec().map_err(InvokeError::Protocol)?;
                return Ok((Ok((status, headers, body)), ready));
            }
            Ok(Some(Frame::Error {
                id: rid,
                status,
                message,
                ready,
            })) if rid == id => {
                return Ok((Err(InvokeError::Function { status, message }), ready));
            }
            Ok(Some(Frame::Log {
                id: rid,
                stream,
                body,
            })) if rid == id => {
                if let Ok(bytes) = body.into_vec() {
                    tracing::info!(invocation = %id, ?stream, "{}", String::from_utf8_lossy(&bytes).trim_end());
                    out.frame(&bytes);
                }
            }
            Ok(Some(other)) => {
                return Err(InvokeError::Protocol(ProtocolError::Malformed {
                    kind: other.kind(),
                    what: "unexpected frame or invocation id while a request runs",
                }));
            }
            Ok(None) => {
                return Err(InvokeError::Exited {
                    status: faas_core::ExitStatus::Code(-1),
                    limit: None,
                });
            }
            Err(e) => return Err(InvokeError::Protocol(e)),
        }
    }
}

/// The gauges of `faas_live_instances` and `faas_queue_depth`, read at
/// each scrape.
impl NodeSource for Inner {
    fn live_instances(&self) -> u64 {
        self.stats.live.load(Ordering::Relaxed)
    }

    fn sandbox_counters(&self, each: &mut dyn FnMut(&'static str, u64)) {
        self.runtime.counters(each);
    }

    fn queue_depths(&self, each: &mut dyn FnMut(&str, u64)) {
        let fns: Vec<Arc<FnState>> = self.functions.lock().values().cloned().collect();
        for st in fns {
            let waiting = st
                .queue
                .lock()
                .pending
                .iter()
                .filter(|p| !p.reply.is_closed())
                .count();
            each(&st.spec.name, waiting as u64);
        }
    }
}
