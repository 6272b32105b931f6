//! [`PoolScheduler`]: nodes with slot pools, heartbeat health, power of two
//! choices with locality under a load bound, per-function instances with
//! reuse, keep-alive policies and a bounded wait queue.
//!
//! Locking (always taken in this order, never the reverse):
//!
//! ```text
//! node table   crossbeam ShardedLock: a read touches only the caller's shard;
//!              written on membership changes only
//!   └─▶ function shard   RwLock of a name → entry map, held only for the lookup
//!   └─▶ function         Mutex per function: its instances, queue, policy
//!         └─▶ node       Mutex per node: its slot pool; loads are mirrored in
//!                        atomics so sampling a node takes no lock
//! ```

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, Weak};
use std::time::Duration;

use crossbeam::sync::{ShardedLock, ShardedLockReadGuard};
use crossbeam::utils::CachePadded;
use faas_core::ticket::{Ticket, TicketSender};
use faas_core::{
    Admission, FunctionSpec, NodeId, NodeInfo, Outcome, Placement, Reuse, ScheduleError, Scheduler,
};
use parking_lot::{Mutex, RwLock};

use crate::clock::{Clock, MonotonicClock, Nanos};
use crate::policy::{HybridPolicy, KeepAlivePolicy, Windows};
use crate::rng::{FnvBuild, Rng, hash_str};

/// Bits of [`Placement::slot`] that number the slot within its node; the
/// bits above hold the node's incarnation, so a placement made before a node
/// died is never mistaken for one made after it came back.
const SLOT_BITS: u32 = 20;
const SLOT_MASK: u32 = (1 << SLOT_BITS) - 1;
const GEN_MASK: u32 = (1 << (32 - SLOT_BITS)) - 1;
/// The largest slot pool of one node.
pub const MAX_NODE_SLOTS: u32 = SLOT_MASK;

const FN_SHARDS: usize = 64;
const LOAD_STRIPES: usize = 8;
const NEVER: Nanos = u64::MAX;

fn encode_slot(generation: u32, index: u32) -> u32 {
    ((generation & GEN_MASK) << SLOT_BITS) | (index & SLOT_MASK)
}

fn ns(d: Duration) -> Nanos {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// What one node offers: instance slots, CPU and memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NodeCapacity {
    /// Instance slots (at most [`MAX_NODE_SLOTS`]).
    pub slots: u32,
    /// CPU in milli-cores.
    pub cpu_millis: u64,
    /// Memory in MiB.
    pub memory_mb: u64,
}

/// Configuration of a [`PoolScheduler`]; start from `default()` and adjust
/// with the `with_*` methods.
#[derive(Debug, Clone)]
pub struct PoolConfig {
    /// Keep-alive policy for functions with `Reuse::KeepAlive`.
    pub keep_alive: KeepAlivePolicy,
    /// Requests that may wait per function at its limit (0: none).
    pub queue_len: u32,
    /// Longest wait in that queue.
    pub queue_wait: Duration,
    /// A node that has not sent a heartbeat for this long gets no new work
    /// and, at the next [`PoolScheduler::tick`], its placements are reported
    /// failed. `None`: nodes never time out.
    pub heartbeat_timeout: Option<Duration>,
    /// A node holding the function's image is preferred while its load is at
    /// most `load_bound * average + load_slack`.
    pub load_bound: f64,
    /// Absolute slack of that bound, in per-mille of a node.
    pub load_slack_permille: u32,
    /// Rounds of two random choices before scanning every node.
    pub probes: u32,
    /// Nodes remembered per function as holding its image.
    pub locality_nodes: usize,
    /// CPU per slot of nodes added with [`Scheduler::add_node`].
    pub cpu_per_slot_millis: u64,
    /// Suggested retry delay when nothing better is known.
    pub retry_after: Duration,
    /// Seed of the random choices: the same seed and the same calls give
    /// the same placements.
    pub seed: u64,
}

impl Default for PoolConfig {
    fn default() -> Self {
        PoolConfig {
            keep_alive: KeepAlivePolicy::FromSpec,
            queue_len: 64,
            queue_wait: Duration::from_secs(1),
            heartbeat_timeout: None,
            load_bound: 1.25,
            load_slack_permille: 100,
            probes: 2,
            locality_nodes: 4,
            cpu_per_slot_millis: 1000,
            retry_after: Duration::from_secs(1),
            seed: 0,
        }
    }
}

impl PoolConfig {
    /// Sets the keep-alive policy.
    pub fn with_keep_alive(mut self, p: KeepAlivePolicy) -> Self {
        self.keep_alive = p;
        self
    }
    /// Sets the wait queue: length per function and longest wait.
    pub fn with_queue(mut self, len: u32, wait: Duration) -> Self {
        self.queue_len = len;
        self.queue_wait = wait;
        self
    }
    /// Sets the heartbeat deadline.
    pub fn with_heartbeat_timeout(mut self, d: Duration) -> Self {
        self.heartbeat_timeout = Some(d);
        self
    }
    /// Sets the seed of the random choices.
    pub fn with_seed(mut self, seed: u64) -> Self {
        self.seed = seed;
        self
    }
}

/// What [`PoolScheduler::place`] decided for one request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    /// Where it runs.
    pub placement: Placement,
    /// Whether a new instance is started for it (a cold start).
    pub cold: bool,
}

/// Counters of a [`PoolScheduler`], summed over functions.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct PoolStats {
    /// Requests placed (directly or from the queue).
    pub placed: u64,
    /// Of those, on a new instance.
    pub cold_starts: u64,
    /// Of those, on a kept-alive or pre-warmed instance.
    pub warm_starts: u64,
    /// Cold starts on a node that already held the function's image.
    pub locality_hits: u64,
    /// Requests that entered a wait queue.
    pub queued: u64,
    /// Queued requests that got a placement.
    pub queue_served: u64,
    /// Queued requests whose wait ran out.
    pub queue_timeouts: u64,
    /// Refusals at a function's limit.
    pub over_limit: u64,
    /// Refusals because no healthy node had room.
    pub no_capacity: u64,
    /// Refusals because no node was healthy.
    pub no_nodes: u64,
    /// Releases accepted.
    pub released: u64,
    /// Releases ignored: unknown, already released, or from a dead node.
    pub stale_releases: u64,
    /// In-flight requests reported failed because their node died.
    pub failed_by_node: u64,
    /// Idle instances unloaded at the end of their keep-alive window.
    pub expired: u64,
    /// Instances loaded ahead of time by a pre-warm window.
    pub prewarmed: u64,
    /// Idle memory-time: MiB × nanoseconds that loaded instances spent idle.
    pub wasted_mb_ns: u128,
    /// Requests in flight now.
    pub in_flight: u64,
    /// Instances loaded now (busy or idle).
    pub live_instances: u64,
}

impl PoolStats {
    /// Idle memory-time in GB·s (1 GB = 1024 MiB).
    pub fn wasted_gb_s(&self) -> f64 {
        self.wasted_mb_ns as f64 / 1024.0 / 1e9
    }
}

/// One request that was in flight on a node that died: answer it with an
/// error; its release is no longer expected (and is ignored if it comes).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FailedPlacement {
    /// The placement.
    pub placement: Placement,
}

/// What one [`PoolScheduler::tick`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TickReport {
    /// Nodes declared dead (missed their heartbeat deadline).
    pub dead_nodes: Vec<NodeId>,
    /// Their in-flight requests, one entry per request.
    pub failed: Vec<FailedPlacement>,
    /// Idle instances unloaded.
    pub expired: u64,
    /// Instances pre-warmed.
    pub prewarmed: u64,
}

/// A consistency violation found by [`PoolScheduler::audit`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AuditError {
    /// A node uses more than it has.
    #[error("node {node}: {resource} over-committed: {used} used of {capacity}")]
    Overcommitted {
        /// The node.
        node: NodeId,
        /// `slots`, `cpu` or `memory`.
        resource: &'static str,
        /// In use.
        used: u64,
        /// Capacity.
        capacity: u64,
    },
    /// A node's accounting disagrees with the instances placed on it.
    #[error("node {node}: {resource} accounting is {node_used} but its instances hold {instances}")]
    Leaked {
        /// The node.
        node: NodeId,
        /// `slots`, `cpu` or `memory`.
        resource: &'static str,
        /// What the node counts.
        node_used: u64,
        /// What the instances on it hold.
        instances: u64,
    },
    /// A function's in-flight count disagrees with its instances.
    #[error("function {function}: {in_flight} in flight but its instances serve {active}")]
    InFlight {
        /// The function.
        function: String,
        /// Its counter.
        in_flight: u64,
        /// The sum over its instances.
        active: u64,
    },
}

/// Totals found by a successful [`PoolScheduler::audit`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Audit {
    /// Slots in use over all nodes.
    pub used_slots: u64,
    /// Memory in use over all nodes, MiB.
    pub used_memory_mb: u64,
    /// Requests in flight.
    pub in_flight: u64,
    /// Live instances.
    pub live_instances: u64,
}

// ---------------------------------------------------------------- nodes

struct Node {
    id: NodeId,
    idx: u32,
    inner: Mutex<NodeInner>,
    /// Not removed and not dead.
    accepting: AtomicBool,
    last_heartbeat: AtomicU64,
    // Mirrors of the pool for lock-free sampling.
    free_slots: AtomicU32,
    free_cpu: AtomicU64,
    free_mem: AtomicU64,
    cap_slots: AtomicU32,
    /// Dominant-resource load in per-mille.
    load: AtomicU32,
}

struct NodeInner {
    cap: NodeCapacity,
    used_slots: u32,
    used_cpu: u64,
    used_mem: u64,
    generation: u32,
    free: Vec<u32>,
    owners: Vec<Option<Arc<str>>>,
    dead: bool,
    removed: bool,
}

impl NodeInner {
    fn new(cap: NodeCapacity) -> Self {
        NodeInner {
            cap,
            used_slots: 0,
            used_cpu: 0,
            used_mem: 0,
            generation: 0,
            free: (0..cap.slots).rev().collect(),
            owners: vec![None; cap.slots as usize],
            dead: false,
            removed: false,
        }
    }

    fn resize(&mut self, cap: NodeCapacity) {
        let old = self.cap.slots;
        if cap.slots as usize > self.owners.len() {
            self.owners.resize(cap.slots as usize, None);
        }
        if cap.slots > old {
            // Slots above the old size may still be held since a shrink:
            // those come back when released.
            for i in (old..cap.slots).rev() {
                if self.owners[i as usize].is_none() && !self.free.contains(&i) {
                    self.free.push(i);
                }
            }
        } else {
            self.free.retain(|i| *i < cap.slots);
        }
        self.cap = cap;
    }

    fn wipe(&mut self) -> Wiped {
        let generation = self.generation;
        let owned = self
            .owners
            .iter_mut()
            .enumerate()
            .filter_map(|(i, o)| o.take().map(|f| (f, encode_slot(generation, i as u32))))
            .collect();
        self.generation = (self.generation + 1) & GEN_MASK;
        self.used_slots = 0;
        self.used_cpu = 0;
        self.used_mem = 0;
        self.owners.truncate(self.cap.slots as usize);
        self.owners.resize(self.cap.slots as usize, None);
        self.free = (0..self.cap.slots).rev().collect();
        owned
    }

    fn load_permille(&self) -> u32 {
        fn ratio(used: u64, cap: u64) -> u64 {
            used.saturating_mul(1000).checked_div(cap).unwrap_or(1000)
        }
        let l = ratio(self.used_slots.into(), self.cap.slots.into())
            .max(ratio(self.used_cpu, self.cap.cpu_millis))
            .max(ratio(self.used_mem, self.cap.memory_mb));
        u32::try_from(l).unwrap_or(u32::MAX)
    }
}

#[derive(Default)]
struct Table {
    nodes: Vec<Arc<Node>>,
    by_id: HashMap<NodeId, u32, FnvBuild>,
    /// Nodes that accept work (rebuilt on every membership change).
    alive: Vec<u32>,
}

impl Table {
    fn rebuild_alive(&mut self) {
        self.alive = self
            .nodes
            .iter()
            .filter(|n| n.accepting.load(Ordering::Acquire))
            .map(|n| n.idx)
            .collect();
    }
}

#[derive(Clone, Copy)]
struct Need {
    cpu: u64,
    mem: u64,
}

// ------------------------------------------------------------ functions

struct Instance {
    node: u32,
    slot: u32,
    active: u32,
    idle_since: Nanos,
    expires_at: Nanos,
    busy_since: Nanos,
    need: Need,
    broken: bool,
    available: bool,
}

#[derive(Clone, Copy)]
struct Prewarm {
    at: Nanos,
    until: Nanos,
}

struct Waiter {
    sender: TicketSender,
    deadline: Nanos,
}

struct FnState {
    name: Arc<str>,
    max_instances: u32,
    per_instance: u32,
    keep: bool,
    keep_ms: Option<u64>,
    need: Need,
    in_flight: u32,
    instances: Vec<Option<Instance>>,
    free_ids: Vec<usize>,
    live: u32,
    by_slot: HashMap<u64, usize, FnvBuild>,
    /// Instances that can take another request, most recently freed last.
    available: Vec<usize>,
    idle_start: Option<Nanos>,
    hybrid: Option<HybridPolicy>,
    prewarm: Option<Prewarm>,
    image_nodes: Vec<u32>,
    queue: VecDeque<Waiter>,
    rng: Rng,
    service_ns: Option<f64>,
    stats: PoolStats,
}

fn slot_key(node: u32, slot: u32) -> u64 {
    (u64::from(node) << 32) | u64::from(slot)
}

impl FnState {
    fn update_spec(&mut self, f: &FunctionSpec) {
        self.max_instances = f.concurrency.max_instances;
        self.keep_ms = match f.reuse {
            Reuse::KeepAlive { idle_ms } => Some(idle_ms),
            Reuse::PerRequest => None,
        };
        self.keep = self.keep_ms.is_some();
        self.per_instance = if self.keep {
            f.concurrency.per_instance.max(1)
        } else {
            1
        };
        self.need = Need {
            cpu: f.limits.cpu_millis.into(),
            mem: f.limits.memory_mb.into(),
        };
    }

    fn limit(&self) -> u32 {
        self.max_instances.saturating_mul(self.per_instance)
    }

    fn add_instance(&mut self, inst: Instance) -> usize {
        let key = slot_key(inst.node, inst.slot);
        let i = match self.free_ids.pop() {
            Some(i) => {
                self.instances[i] = Some(inst);
                i
            }
            None => {
                self.instances.push(Some(inst));
                self.instances.len() - 1
            }
        };
        self.by_slot.insert(key, i);
        self.live += 1;
        i
    }

    /// Removes instance `i` from the books (not from its node) and counts
    /// its idle memory-time up to `now` or its expiry, whichever is first.
    fn forget(&mut self, i: usize, now: Nanos) -> Option<Instance> {
        let inst = self.instances.get_mut(i)?.take()?;
        self.free_ids.push(i);
        self.by_slot.remove(&slot_key(inst.node, inst.slot));
        self.live -= 1;
        if inst.active == 0 {
            let end = now.min(inst.expires_at);
            self.stats.wasted_mb_ns +=
                u128::from(inst.need.mem) * u128::from(end.saturating_sub(inst.idle_since));
        }
        if inst.available
            && let Some(pos) = self.available.iter().rposition(|&a| a == i)
        {
            self.available.swap_remove(pos);
        }
        Some(inst)
    }

    fn remember_node(&mut self, node: u32, max: usize) {
        if max == 0 || self.image_nodes.contains(&node) {
            return;
        }
        if self.image_nodes.len() >= max {
            self.image_nodes.remove(0);
        }
        self.image_nodes.push(node);
    }

    fn next_event(&self) -> Nanos {
        let mut t = NEVER;
        for inst in self.instances.iter().flatten() {
            if inst.active == 0 {
                t = t.min(inst.expires_at);
            }
        }
        if let Some(p) = self.prewarm {
            t = t.min(p.at);
        }
        if let Some(w) = self.queue.front() {
            t = t.min(w.deadline);
        }
        t
    }
}

struct FnEntry {
    state: Mutex<FnState>,
    /// No sweep is needed before this time (it may be early, never late).
    next_event: AtomicU64,
}

enum Refusal {
    AtLimit,
    Error(ScheduleError),
}

/// The answer of [`PoolScheduler::place_queued`].
#[derive(Debug)]
pub enum Placed {
    /// Placed now.
    Now(Decision),
    /// Waiting in the function's queue.
    Queued(Ticket),
}

// ------------------------------------------------------------ scheduler

type FnShard = RwLock<HashMap<Arc<str>, Arc<FnEntry>, FnvBuild>>;
/// Slots a dead node held: (function, placement slot).
type Wiped = Vec<(Arc<str>, u32)>;

struct Inner {
    cfg: PoolConfig,
    clock: Arc<dyn Clock>,
    me: Weak<Inner>,
    table: ShardedLock<Table>,
    fns: Box<[CachePadded<FnShard>]>,
    load_sum: [CachePadded<AtomicI64>; LOAD_STRIPES],
}

/// A scheduler for a cluster of nodes, each with a pool of instance slots
/// (CPU and memory): see the crate documentation for the decision.
///
/// ```
/// use std::time::Duration;
/// use faas_core::{FunctionSpec, ImageRef, NodeId, NodeInfo, Outcome, Reuse, RuntimeKind, Scheduler};
/// use faas_sched::{PoolConfig, PoolScheduler};
///
/// let s = PoolScheduler::new(PoolConfig::default());
/// s.add_node(NodeInfo { id: NodeId("n1".into()), slots: 8, memory_mb: 4096 });
/// let mut f = FunctionSpec::new("f", RuntimeKind::Native, ImageRef::Dir("/srv/f".into()), "f");
/// f.reuse = Reuse::KeepAlive { idle_ms: 60_000 };
///
/// let first = s.place(&f).unwrap();
/// assert!(first.cold);
/// s.release(&first.placement, Outcome::Ok);
/// let second = s.place(&f).unwrap(); // the kept-alive instance
/// assert!(!second.cold);
/// assert_eq!(second.placement, first.placement);
/// s.release(&second.placement, Outcome::Ok);
/// ```
pub struct PoolScheduler {
    inner: Arc<Inner>,
}

impl std::fmt::Debug for PoolScheduler {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("PoolScheduler")
            .field("config", &self.inner.cfg)
            .finish_non_exhaustive()
    }
}

impl PoolScheduler {
    /// A scheduler with no nodes, on the process's monotonic clock.
    pub fn new(cfg: PoolConfig) -> Self {
        Self::with_clock(cfg, Arc::new(MonotonicClock::new()))
    }

    /// A scheduler with no nodes on `clock` (a [`crate::ManualClock`] gives
    /// virtual time).
    pub fn with_clock(cfg: PoolConfig, clock: Arc<dyn Clock>) -> Self {
        let inner = Arc::new_cyclic(|me| Inner {
            cfg,
            clock,
            me: me.clone(),
            table: ShardedLock::new(Table::default()),
            fns: (0..FN_SHARDS)
                .map(|_| CachePadded::new(RwLock::new(HashMap::default())))
                .collect(),
            load_sum: std::array::from_fn(|_| CachePadded::new(AtomicI64::new(0))),
        });
        PoolScheduler { inner }
    }

    /// The configuration.
    pub fn config(&self) -> &PoolConfig {
        &self.inner.cfg
    }

    /// Adds a node with an explicit capacity, or updates it (a dead or
    /// removed node comes back, empty if it had died).
    pub fn add_node_with(&self, id: NodeId, cap: NodeCapacity) {
        self.inner.add_node(id, cap);
    }

    /// Places one request and says whether it starts a new instance.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::schedule`].
    pub fn place(&self, f: &FunctionSpec) -> Result<Decision, ScheduleError> {
        match self.inner.place(f, false)? {
            Placed::Now(d) => Ok(d),
            // Not reachable with queueing off; release rather than leak.
            Placed::Queued(t) => match t.cancel() {
                Some(p) => Ok(Decision {
                    placement: p,
                    cold: false,
                }),
                None => Err(self.inner.over_limit_error(f)),
            },
        }
    }

    /// Places one request, or queues it at the function's limit.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::schedule_queued`].
    pub fn place_queued(&self, f: &FunctionSpec) -> Result<Placed, ScheduleError> {
        self.inner.place(f, true)
    }

    /// Housekeeping, to be called periodically (every 100 ms is plenty):
    /// declares nodes past their heartbeat deadline dead and reports their
    /// in-flight requests failed, unloads idle instances whose keep-alive
    /// window ended, loads pre-warmed instances, times out queued requests.
    pub fn tick(&self) -> TickReport {
        self.inner.tick()
    }

    /// Counters summed over all functions.
    pub fn stats(&self) -> PoolStats {
        let mut s = PoolStats::default();
        for shard in self.inner.fns.iter() {
            let entries: Vec<_> = shard.read().values().cloned().collect();
            for e in entries {
                let st = e.state.lock();
                let f = &st.stats;
                s.placed += f.placed;
                s.cold_starts += f.cold_starts;
                s.warm_starts += f.warm_starts;
                s.locality_hits += f.locality_hits;
                s.queued += f.queued;
                s.queue_served += f.queue_served;
                s.queue_timeouts += f.queue_timeouts;
                s.over_limit += f.over_limit;
                s.no_capacity += f.no_capacity;
                s.no_nodes += f.no_nodes;
                s.released += f.released;
                s.stale_releases += f.stale_releases;
                s.failed_by_node += f.failed_by_node;
                s.expired += f.expired;
                s.prewarmed += f.prewarmed;
                s.wasted_mb_ns += f.wasted_mb_ns;
                s.in_flight += u64::from(st.in_flight);
                s.live_instances += u64::from(st.live);
            }
        }
        s
    }

    /// Idle memory-time of instances that are idle right now, up to now (MiB
    /// × ns): add it to [`PoolStats::wasted_mb_ns`] for a total at this
    /// instant.
    pub fn idle_now_mb_ns(&self) -> u128 {
        let now = self.inner.clock.now();
        let mut total = 0u128;
        for shard in self.inner.fns.iter() {
            let entries: Vec<_> = shard.read().values().cloned().collect();
            for e in entries {
                let st = e.state.lock();
                for inst in st.instances.iter().flatten() {
                    if inst.active == 0 {
                        let end = now.min(inst.expires_at);
                        total += u128::from(inst.need.mem)
                            * u128::from(end.saturating_sub(inst.idle_since));
                    }
                }
            }
        }
        total
    }

    /// Checks that no node is over-committed and that every node's
    /// accounting equals the instances placed on it. Exact only when no
    /// other call runs at the same time (tests, debugging).
    ///
    /// # Errors
    ///
    /// The first inconsistency found.
    pub fn audit(&self) -> Result<Audit, AuditError> {
        self.inner.audit()
    }
}

impl Scheduler for PoolScheduler {
    fn add_node(&self, node: NodeInfo) {
        let slots = node.slots.min(MAX_NODE_SLOTS);
        let cap = NodeCapacity {
            slots,
            cpu_millis: u64::from(slots).saturating_mul(self.inner.cfg.cpu_per_slot_millis),
            memory_mb: node.memory_mb,
        };
        self.inner.add_node(node.id, cap);
    }

    fn remove_node(&self, node: &NodeId) {
        self.inner.remove_node(node);
    }

    fn schedule(&self, function: &FunctionSpec) -> Result<Placement, ScheduleError> {
        self.place(function).map(|d| d.placement)
    }

    fn release(&self, placement: &Placement, outcome: Outcome) {
        self.inner.release(placement, outcome);
    }

    fn schedule_queued(&self, function: &FunctionSpec) -> Result<Admission, ScheduleError> {
        Ok(match self.inner.place(function, true)? {
            Placed::Now(d) => Admission::Placed(d.placement),
            Placed::Queued(t) => Admission::Queued(t),
        })
    }

    fn heartbeat(&self, node: &NodeId) {
        self.inner.heartbeat(node);
    }
}

impl Inner {
    fn read_table(&self) -> ShardedLockReadGuard<'_, Table> {
        self.table.read().unwrap_or_else(PoisonError::into_inner)
    }

    fn write_table(&self) -> crossbeam::sync::ShardedLockWriteGuard<'_, Table> {
        self.table.write().unwrap_or_else(PoisonError::into_inner)
    }

    fn shard(&self, h: u64) -> &FnShard {
        &self.fns[(h as usize) % FN_SHARDS]
    }

    fn lookup(&self, name: &str) -> Option<Arc<FnEntry>> {
        self.shard(hash_str(name)).read().get(name).cloned()
    }

    fn entry(&self, name: &str) -> Arc<FnEntry> {
        let h = hash_str(name);
        if let Some(e) = self.shard(h).read().get(name) {
            return e.clone();
        }
        let mut w = self.shard(h).write();
        w.entry(Arc::from(name))
            .or_insert_with_key(|k| {
                Arc::new(FnEntry {
                    state: Mutex::new(FnState {
                        name: k.clone(),
                        max_instances: 1,
                        per_instance: 1,
                        keep: false,
                        keep_ms: None,
                        need: Need { cpu: 0, mem: 0 },
                        in_flight: 0,
                        instances: Vec::new(),
                        free_ids: Vec::new(),
                        live: 0,
                        by_slot: HashMap::default(),
                        available: Vec::new(),
                        idle_start: None,
                        hybrid: None,
                        prewarm: None,
                        image_nodes: Vec::new(),
                        queue: VecDeque::new(),
                        rng: Rng::new(self.cfg.seed ^ h),
                        service_ns: None,
                        stats: PoolStats::default(),
                    }),
                    next_event: AtomicU64::new(NEVER),
                })
            })
            .clone()
    }

    // ---------------------------------------------------------- nodes

    fn publish(&self, node: &Node, g: &NodeInner) {
        node.free_slots
            .store(g.cap.slots.saturating_sub(g.used_slots), Ordering::Relaxed);
        node.free_cpu.store(
            g.cap.cpu_millis.saturating_sub(g.used_cpu),
            Ordering::Relaxed,
        );
        node.free_mem.store(
            g.cap.memory_mb.saturating_sub(g.used_mem),
            Ordering::Relaxed,
        );
        node.cap_slots.store(g.cap.slots, Ordering::Relaxed);
        let load = if g.dead || g.removed {
            0
        } else {
            g.load_permille()
        };
        let old = node.load.swap(load, Ordering::Relaxed);
        if old != load {
            self.load_sum[node.idx as usize % LOAD_STRIPES]
                .fetch_add(i64::from(load) - i64::from(old), Ordering::Relaxed);
        }
    }

    fn add_node(&self, id: NodeId, mut cap: NodeCapacity) {
        cap.slots = cap.slots.min(MAX_NODE_SLOTS);
        let now = self.clock.now();
        let mut t = self.write_table();
        if let Some(&i) = t.by_id.get(&id) {
            let node = t.nodes[i as usize].clone();
            let mut g = node.inner.lock();
            g.resize(cap);
            g.dead = false;
            g.removed = false;
            node.last_heartbeat.store(now, Ordering::Release);
            node.accepting.store(true, Ordering::Release);
            self.publish(&node, &g);
        } else {
            let idx = t.nodes.len() as u32;
            let node = Arc::new(Node {
                id: id.clone(),
                idx,
                inner: Mutex::new(NodeInner::new(cap)),
                accepting: AtomicBool::new(true),
                last_heartbeat: AtomicU64::new(now),
                free_slots: AtomicU32::new(0),
                free_cpu: AtomicU64::new(0),
                free_mem: AtomicU64::new(0),
                cap_slots: AtomicU32::new(0),
                load: AtomicU32::new(0),
            });
            self.publish(&node, &node.inner.lock());
            t.nodes.push(node);
            t.by_id.insert(id, idx);
        }
        t.rebuild_alive();
    }

    fn remove_node(&self, id: &NodeId) {
        let mut t = self.write_table();
        if let Some(&i) = t.by_id.get(id) {
            let node = t.nodes[i as usize].clone();
            let mut g = node.inner.lock();
            g.removed = true;
            node.accepting.store(false, Ordering::Release);
            self.publish(&node, &g);
        }
        t.rebuild_alive();
    }

    fn heartbeat(&self, id: &NodeId) {
        let now = self.clock.now();
        let revive = {
            let t = self.read_table();
            let Some(&i) = t.by_id.get(id) else { return };
            let node = &t.nodes[i as usize];
            node.last_heartbeat.store(now, Ordering::Release);
            if node.accepting.load(Ordering::Acquire) {
                return;
            }
            let mut g = node.inner.lock();
            if g.dead && !g.removed {
                g.dead = false;
                node.accepting.store(true, Ordering::Release);
                self.publish(node, &g);
                true
            } else {
                false
            }
        };
        if revive {
            self.write_table().rebuild_alive();
        }
    }

    fn healthy(&self, node: &Node, now: Nanos) -> bool {
        node.accepting.load(Ordering::Acquire)
            && self.cfg.heartbeat_timeout.is_none_or(|t| {
                now <= node
                    .last_heartbeat
                    .load(Ordering::Acquire)
                    .saturating_add(ns(t))
            })
    }

    fn fits(node: &Node, need: Need) -> bool {
        node.free_slots.load(Ordering::Relaxed) >= 1
            && node.free_cpu.load(Ordering::Relaxed) >= need.cpu
            && node.free_mem.load(Ordering::Relaxed) >= need.mem
    }

    fn reserve(&self, node: &Node, need: Need, owner: &Arc<str>) -> Option<u32> {
        let mut g = node.inner.lock();
        if g.dead
            || g.removed
            || g.used_slots >= g.cap.slots
            || g.used_cpu.saturating_add(need.cpu) > g.cap.cpu_millis
            || g.used_mem.saturating_add(need.mem) > g.cap.memory_mb
        {
            return None;
        }
        let idx = g.free.pop()?;
        g.used_slots += 1;
        g.used_cpu += need.cpu;
        g.used_mem += need.mem;
        g.owners[idx as usize] = Some(owner.clone());
        let slot = encode_slot(g.generation, idx);
        self.publish(node, &g);
        Some(slot)
    }

    fn unreserve(&self, node: &Node, slot: u32, need: Need) {
        let mut g = node.inner.lock();
        let idx = slot & SLOT_MASK;
        if slot >> SLOT_BITS != g.generation {
            return; // the node died since: its pool was wiped
        }
        let Some(owner) = g.owners.get_mut(idx as usize) else {
            return;
        };
        if owner.take().is_none() {
            return;
        }
        g.used_slots = g.used_slots.saturating_sub(1);
        g.used_cpu = g.used_cpu.saturating_sub(need.cpu);
        g.used_mem = g.used_mem.saturating_sub(need.mem);
        if idx < g.cap.slots {
            g.free.push(idx);
        }
        self.publish(node, &g);
    }

    fn average_load(&self, alive: usize) -> f64 {
        let sum: i64 = self
            .load_sum
            .iter()
            .map(|s| s.load(Ordering::Relaxed))
            .sum();
        sum.max(0) as f64 / alive.max(1) as f64
    }

    /// Chooses a node for a new instance and reserves its resources.
    fn choose(
        &self,
        t: &Table,
        st: &mut FnState,
        now: Nanos,
    ) -> Result<(u32, u32, bool), ScheduleError> {
        let need = st.need;
        let len = t.alive.len();
        if len == 0 {
            return Err(ScheduleError::NoNodes);
        }
        // 1. Locality: a node that holds the image, within the load bound.
        if !st.image_nodes.is_empty() {
            let bound = self.cfg.load_bound * self.average_load(len)
                + f64::from(self.cfg.load_slack_permille);
            let mut best: Option<(&Node, u32)> = None;
            for &i in &st.image_nodes {
                let Some(n) = t.nodes.get(i as usize) else {
                    continue;
                };
                let load = n.load.load(Ordering::Relaxed);
                if self.healthy(n, now)
                    && Self::fits(n, need)
                    && f64::from(load) <= bound
                    && best.is_none_or(|(_, l)| load < l)
                {
                    best = Some((n, load));
                }
            }
            if let Some((n, _)) = best
                && let Some(slot) = self.reserve(n, need, &st.name)
            {
                return Ok((n.idx, slot, true));
            }
        }
        // 2. Power of two choices: the less loaded of two random nodes.
        for _ in 0..self.cfg.probes {
            let a = st.rng.below(len as u64) as usize;
            let b = if len > 1 {
                (a + 1 + st.rng.below(len as u64 - 1) as usize) % len
            } else {
                a
            };
            let (na, nb) = (&t.nodes[t.alive[a] as usize], &t.nodes[t.alive[b] as usize]);
            let ok = |n: &Node| self.healthy(n, now) && Self::fits(n, need);
            let mut cands: [Option<&Node>; 2] = [ok(na).then_some(&**na), ok(nb).then_some(&**nb)];
            if let [Some(x), Some(y)] = cands
                && y.load.load(Ordering::Relaxed) < x.load.load(Ordering::Relaxed)
            {
                cands.swap(0, 1);
            }
            for n in cands.into_iter().flatten() {
                if let Some(slot) = self.reserve(n, need, &st.name) {
                    let local = st.image_nodes.contains(&n.idx);
                    return Ok((n.idx, slot, local));
                }
            }
        }
        // 3. Every node, from a random start: the first that fits.
        let start = st.rng.below(len as u64) as usize;
        let (mut healthy, mut slots) = (0usize, 0u64);
        for k in 0..len {
            let n = &t.nodes[t.alive[(start + k) % len] as usize];
            if !self.healthy(n, now) {
                continue;
            }
            healthy += 1;
            slots += u64::from(n.cap_slots.load(Ordering::Relaxed));
            if Self::fits(n, need)
                && let Some(slot) = self.reserve(n, need, &st.name)
            {
                let local = st.image_nodes.contains(&n.idx);
                return Ok((n.idx, slot, local));
            }
        }
        if healthy == 0 {
            return Err(ScheduleError::NoNodes);
        }
        Err(ScheduleError::NoCapacity {
            nodes: healthy,
            slots,
            retry_after: self.cfg.retry_after,
        })
    }

    // ------------------------------------------------------ decisions

    fn retry_after(&self, st: &FnState) -> Duration {
        match st.service_ns {
            Some(s) => {
                let waiters = st.queue.len() as f64 + 1.0;
                let est = s * waiters / f64::from(st.limit().max(1));
                Duration::from_nanos(est as u64)
                    .clamp(Duration::from_millis(10), Duration::from_secs(60))
            }
            None => self.cfg.retry_after,
        }
    }

    fn over_limit_error(&self, f: &FunctionSpec) -> ScheduleError {
        let limit = f
            .concurrency
            .max_instances
            .saturating_mul(f.concurrency.per_instance.max(1));
        ScheduleError::OverLimit {
            function: f.name.clone(),
            limit,
            retry_after: self.cfg.retry_after,
        }
    }

    fn place(&self, f: &FunctionSpec, allow_queue: bool) -> Result<Placed, ScheduleError> {
        let now = self.clock.now();
        let t = self.read_table();
        let entry = self.entry(&f.name);
        let mut st = entry.state.lock();
        st.update_spec(f);
        if st.in_flight == 0
            && let Some(t0) = st.idle_start.take()
        {
            self.observe_idle(&mut st, now.saturating_sub(t0));
        }
        if let Some(p) = st.prewarm {
            if p.at > now {
                // Arrived during the pre-warm wait: too early, cold start.
                st.prewarm = None;
            } else {
                self.load_prewarmed(&t, &mut st, now);
            }
        }
        if !st.queue.is_empty() {
            self.serve_waiters(&t, &mut st, now);
        }
        let r = if st.queue.is_empty() {
            self.try_place(&t, &mut st, now)
        } else {
            Err(Refusal::AtLimit) // do not overtake waiting requests
        };
        let out = match r {
            Ok(d) => Ok(Placed::Now(d)),
            Err(Refusal::AtLimit) => self.enqueue(&mut st, &entry, now, allow_queue),
            Err(Refusal::Error(e)) => {
                match e {
                    ScheduleError::NoNodes => st.stats.no_nodes += 1,
                    _ => st.stats.no_capacity += 1,
                }
                Err(e)
            }
        };
        drop(st);
        out
    }

    fn enqueue(
        &self,
        st: &mut FnState,
        entry: &FnEntry,
        now: Nanos,
        allow_queue: bool,
    ) -> Result<Placed, ScheduleError> {
        let err = ScheduleError::OverLimit {
            function: st.name.to_string(),
            limit: st.limit(),
            retry_after: self.retry_after(st),
        };
        if allow_queue && self.cfg.queue_len > 0 {
            if st.queue.len() >= self.cfg.queue_len as usize {
                st.queue.retain(|w| !w.sender.is_abandoned());
            }
            if st.queue.len() < self.cfg.queue_len as usize {
                let me = self.me.clone();
                let (ticket, sender) = faas_core::ticket::ticket(
                    err,
                    Box::new(move |p: Placement| {
                        if let Some(inner) = me.upgrade() {
                            inner.release(&p, Outcome::Cancelled);
                        }
                    }),
                );
                let deadline = now.saturating_add(ns(self.cfg.queue_wait));
                st.queue.push_back(Waiter { sender, deadline });
                st.stats.queued += 1;
                entry.next_event.fetch_min(deadline, Ordering::AcqRel);
                return Ok(Placed::Queued(ticket));
            }
        }
        st.stats.over_limit += 1;
        Err(err)
    }

    /// A warm instance if one can take the request, else a new one.
    fn try_place(&self, t: &Table, st: &mut FnState, now: Nanos) -> Result<Decision, Refusal> {
        if st.keep {
            while let Some(&i) = st.available.last() {
                let Some(inst) = st.instances.get(i).and_then(Option::as_ref) else {
                    st.available.pop();
                    continue;
                };
                let node = &t.nodes[inst.node as usize];
                let expired = inst.active == 0 && inst.expires_at <= now;
                if expired || !self.healthy(node, now) {
                    st.available.pop();
                    if let Some(inst) = st.instances[i].as_mut() {
                        inst.available = false;
                    }
                    if expired || st.instances[i].as_ref().is_some_and(|x| x.active == 0) {
                        self.destroy(t, st, i, now);
                        if expired {
                            st.stats.expired += 1;
                        }
                    }
                    continue;
                }
                let per = st.per_instance;
                let Some(inst) = st.instances[i].as_mut() else {
                    st.available.pop();
                    continue;
                };
                if inst.active == 0 {
                    st.stats.wasted_mb_ns +=
                        u128::from(inst.need.mem) * u128::from(now.saturating_sub(inst.idle_since));
                    inst.busy_since = now;
                    inst.expires_at = NEVER;
                }
                inst.active += 1;
                let (node_idx, slot) = (inst.node, inst.slot);
                if inst.active >= per {
                    inst.available = false;
                    st.available.pop();
                }
                st.in_flight += 1;
                st.stats.placed += 1;
                st.stats.warm_starts += 1;
                return Ok(Decision {
                    placement: Placement {
                        node: t.nodes[node_idx as usize].id.clone(),
                        slot,
                        function: st.name.to_string(),
                    },
                    cold: false,
                });
            }
        }
        if st.live >= st.max_instances {
            return Err(Refusal::AtLimit);
        }
        let (node_idx, slot, local) = self.choose(t, st, now).map_err(Refusal::Error)?;
        let available = st.per_instance > 1;
        let i = st.add_instance(Instance {
            node: node_idx,
            slot,
            active: 1,
            idle_since: now,
            expires_at: NEVER,
            busy_since: now,
            need: st.need,
            broken: false,
            available,
        });
        if available {
            st.available.push(i);
        }
        st.remember_node(node_idx, self.cfg.locality_nodes);
        st.in_flight += 1;
        st.stats.placed += 1;
        st.stats.cold_starts += 1;
        st.stats.locality_hits += u64::from(local);
        Ok(Decision {
            placement: Placement {
                node: t.nodes[node_idx as usize].id.clone(),
                slot,
                function: st.name.to_string(),
            },
            cold: true,
        })
    }

    fn destroy(&self, t: &Table, st: &mut FnState, i: usize, now: Nanos) {
        if let Some(inst) = st.forget(i, now)
            && let Some(node) = t.nodes.get(inst.node as usize)
        {
            self.unreserve(node, inst.slot, inst.need);
        }
    }

    fn observe_idle(&self, st: &mut FnState, idle: Nanos) {
        if let KeepAlivePolicy::Hybrid(cfg) = &self.cfg.keep_alive {
            st.hybrid
                .get_or_insert_with(|| HybridPolicy::new(cfg.clone()))
                .observe_ns(idle);
        }
    }

    fn windows(&self, st: &mut FnState, spec_idle: Duration) -> Windows {
        match &self.cfg.keep_alive {
            KeepAlivePolicy::FromSpec => Windows::keep(spec_idle),
            KeepAlivePolicy::Fixed(d) => Windows::keep(*d),
            KeepAlivePolicy::Hybrid(cfg) => {
                st.hybrid
                    .get_or_insert_with(|| HybridPolicy::new(cfg.clone()))
                    .windows()
                    .0
            }
        }
    }

    fn load_prewarmed(&self, t: &Table, st: &mut FnState, now: Nanos) {
        let Some(p) = st.prewarm.take() else { return };
        if now >= p.until || st.live >= st.max_instances || !st.keep {
            return;
        }
        let Ok((node_idx, slot, _)) = self.choose(t, st, now) else {
            return;
        };
        let i = st.add_instance(Instance {
            node: node_idx,
            slot,
            active: 0,
            idle_since: p.at,
            expires_at: p.until,
            busy_since: p.at,
            need: st.need,
            broken: false,
            available: true,
        });
        st.available.push(i);
        st.remember_node(node_idx, self.cfg.locality_nodes);
        st.stats.prewarmed += 1;
    }

    fn release(&self, p: &Placement, outcome: Outcome) {
        let now = self.clock.now();
        let t = self.read_table();
        let Some(entry) = self.lookup(&p.function) else {
            return;
        };
        let mut st = entry.state.lock();
        let ev = self.release_locked(&t, &mut st, p, outcome, now);
        if !st.queue.is_empty() {
            self.serve_waiters(&t, &mut st, now);
        }
        if let Some(ev) = ev {
            entry.next_event.fetch_min(ev, Ordering::AcqRel);
        }
    }

    /// Returns the time of a new event (expiry, pre-warm), if any.
    fn release_locked(
        &self,
        t: &Table,
        st: &mut FnState,
        p: &Placement,
        outcome: Outcome,
        now: Nanos,
    ) -> Option<Nanos> {
        let found = t
            .by_id
            .get(&p.node)
            .and_then(|&n| st.by_slot.get(&slot_key(n, p.slot)).copied());
        let Some(i) = found else {
            st.stats.stale_releases += 1;
            return None;
        };
        let per = st.per_instance;
        let keep = st.keep;
        let Some(inst) = st.instances[i].as_mut().filter(|x| x.active > 0) else {
            st.stats.stale_releases += 1;
            return None;
        };
        inst.active -= 1;
        if matches!(outcome, Outcome::Failed | Outcome::TimedOut) {
            inst.broken = true;
        }
        let idle = inst.active == 0;
        if idle {
            inst.idle_since = now;
        }
        let busy_for = now.saturating_sub(inst.busy_since);
        let (broken, listed, active) = (inst.broken, inst.available, inst.active);
        st.in_flight -= 1;
        st.stats.released += 1;
        if st.in_flight == 0 {
            st.idle_start = Some(now);
        }
        let mut event = None;
        if idle {
            st.service_ns = Some(match st.service_ns {
                None => busy_for as f64,
                Some(s) => 0.8 * s + 0.2 * busy_for as f64,
            });
            let w = if broken || !keep {
                Windows::keep(Duration::ZERO)
            } else {
                let spec_idle = st.keep_ms.map_or(Duration::ZERO, Duration::from_millis);
                let w = self.windows(st, spec_idle);
                if st.in_flight > 0 {
                    // Other requests of the function still run: it is not
                    // idle, so no pre-warm gap; keep this instance until the
                    // end of the window.
                    Windows::keep(w.prewarm + w.keep_alive)
                } else {
                    w
                }
            };
            if w.prewarm.is_zero() && !w.keep_alive.is_zero() {
                let exp = now.saturating_add(ns(w.keep_alive));
                if let Some(inst) = st.instances[i].as_mut() {
                    inst.expires_at = exp;
                    if !inst.available {
                        inst.available = true;
                        st.available.push(i);
                    }
                }
                event = Some(exp);
            } else {
                self.destroy(t, st, i, now);
                if !w.prewarm.is_zero() && !w.keep_alive.is_zero() {
                    let at = now.saturating_add(ns(w.prewarm));
                    st.prewarm = Some(Prewarm {
                        at,
                        until: at.saturating_add(ns(w.keep_alive)),
                    });
                    event = Some(at);
                }
            }
        } else if broken {
            if listed && let Some(pos) = st.available.iter().rposition(|&a| a == i) {
                st.available.swap_remove(pos);
                if let Some(inst) = st.instances[i].as_mut() {
                    inst.available = false;
                }
            }
        } else if !listed && active < per {
            if let Some(inst) = st.instances[i].as_mut() {
                inst.available = true;
            }
            st.available.push(i);
        }
        event
    }

    fn serve_waiters(&self, t: &Table, st: &mut FnState, now: Nanos) {
        while let Some(w) = st.queue.front() {
            if w.sender.is_abandoned() {
                st.queue.pop_front();
                continue;
            }
            if w.deadline <= now {
                if let Some(w) = st.queue.pop_front() {
                    let err = ScheduleError::OverLimit {
                        function: st.name.to_string(),
                        limit: st.limit(),
                        retry_after: self.retry_after(st),
                    };
                    if w.sender.send(Err(err)).is_ok() {
                        st.stats.queue_timeouts += 1;
                    }
                }
                continue;
            }
            match self.try_place(t, st, now) {
                Ok(d) => {
                    let Some(w) = st.queue.pop_front() else {
                        break;
                    };
                    match w.sender.send(Ok(d.placement)) {
                        Ok(()) => st.stats.queue_served += 1,
                        Err(Ok(p)) => {
                            // The waiter left just now: undo.
                            st.stats.placed -= 1;
                            if d.cold {
                                st.stats.cold_starts -= 1;
                            } else {
                                st.stats.warm_starts -= 1;
                            }
                            self.release_locked(t, st, &p, Outcome::Cancelled, now);
                            st.stats.released -= 1;
                        }
                        Err(Err(_)) => {}
                    }
                }
                Err(Refusal::AtLimit) => break,
                Err(Refusal::Error(e)) => {
                    match e {
                        ScheduleError::NoNodes => st.stats.no_nodes += 1,
                        _ => st.stats.no_capacity += 1,
                    }
                    break;
                }
            }
        }
    }

    // ----------------------------------------------------- housekeeping

    fn tick(&self) -> TickReport {
        let now = self.clock.now();
        let mut report = TickReport::default();
        // 1. Nodes past their heartbeat deadline die; their pools are wiped.
        let mut wiped: Vec<(u32, Wiped)> = Vec::new();
        if let Some(timeout) = self.cfg.heartbeat_timeout {
            let t = self.read_table();
            for &i in &t.alive {
                let node = &t.nodes[i as usize];
                let last = node.last_heartbeat.load(Ordering::Acquire);
                if now > last.saturating_add(ns(timeout)) {
                    let mut g = node.inner.lock();
                    if g.dead || g.removed {
                        continue;
                    }
                    g.dead = true;
                    node.accepting.store(false, Ordering::Release);
                    let owned = g.wipe();
                    self.publish(node, &g);
                    report.dead_nodes.push(node.id.clone());
                    wiped.push((i, owned));
                }
            }
        }
        if !wiped.is_empty() {
            self.write_table().rebuild_alive();
        }
        let t = self.read_table();
        for (node_idx, owned) in wiped {
            let node_id = t.nodes[node_idx as usize].id.clone();
            for (function, slot) in owned {
                let Some(entry) = self.lookup(&function) else {
                    continue;
                };
                let mut st = entry.state.lock();
                let Some(&i) = st.by_slot.get(&slot_key(node_idx, slot)) else {
                    continue;
                };
                // The pool is already wiped: only forget the instance.
                if let Some(inst) = st.forget(i, now) {
                    st.in_flight -= inst.active;
                    st.stats.failed_by_node += u64::from(inst.active);
                    if st.in_flight == 0 && inst.active > 0 {
                        st.idle_start = Some(now);
                    }
                    for _ in 0..inst.active {
                        report.failed.push(FailedPlacement {
                            placement: Placement {
                                node: node_id.clone(),
                                slot,
                                function: function.to_string(),
                            },
                        });
                    }
                }
                if !st.queue.is_empty() {
                    self.serve_waiters(&t, &mut st, now);
                }
            }
        }
        // 2. Functions with something due.
        for shard in self.fns.iter() {
            let due: Vec<_> = shard
                .read()
                .values()
                .filter(|e| e.next_event.load(Ordering::Acquire) <= now)
                .cloned()
                .collect();
            for entry in due {
                let mut st = entry.state.lock();
                self.sweep(&t, &mut st, now, &mut report);
                entry.next_event.store(st.next_event(), Ordering::Release);
            }
        }
        report
    }

    fn sweep(&self, t: &Table, st: &mut FnState, now: Nanos, report: &mut TickReport) {
        let mut gone = Vec::new();
        for (i, inst) in st.instances.iter().enumerate() {
            if let Some(inst) = inst
                && inst.active == 0
                && (inst.expires_at <= now || !self.healthy(&t.nodes[inst.node as usize], now))
            {
                gone.push((i, inst.expires_at <= now));
            }
        }
        for (i, expired) in gone {
            self.destroy(t, st, i, now);
            if expired {
                st.stats.expired += 1;
                report.expired += 1;
            }
        }
        if st.prewarm.is_some_and(|p| p.at <= now) {
            let before = st.stats.prewarmed;
            self.load_prewarmed(t, st, now);
            report.prewarmed += st.stats.prewarmed - before;
        }
        if !st.queue.is_empty() {
            self.serve_waiters(t, st, now);
        }
    }

    fn audit(&self) -> Result<Audit, AuditError> {
        let t = self.read_table();
        let n = t.nodes.len();
        let (mut slots, mut cpu, mut mem) = (vec![0u64; n], vec![0u64; n], vec![0u64; n]);
        let mut audit = Audit::default();
        for shard in self.fns.iter() {
            let entries: Vec<_> = shard.read().values().cloned().collect();
            for e in entries {
                let st = e.state.lock();
                let mut active = 0u64;
                for inst in st.instances.iter().flatten() {
                    let k = inst.node as usize;
                    slots[k] += 1;
                    cpu[k] += inst.need.cpu;
                    mem[k] += inst.need.mem;
                    active += u64::from(inst.active);
                    audit.live_instances += 1;
                }
                if active != u64::from(st.in_flight) {
                    return Err(AuditError::InFlight {
                        function: st.name.to_string(),
                        in_flight: st.in_flight.into(),
                        active,
                    });
                }
                audit.in_flight += active;
            }
        }
        for node in &t.nodes {
            let g = node.inner.lock();
            let k = node.idx as usize;
            let checks = [
                (
                    "slots",
                    u64::from(g.used_slots),
                    u64::from(g.cap.slots),
                    slots[k],
                ),
                ("cpu", g.used_cpu, g.cap.cpu_millis, cpu[k]),
                ("memory", g.used_mem, g.cap.memory_mb, mem[k]),
            ];
            for (resource, used, capacity, instances) in checks {
                if used > capacity {
                    return Err(AuditError::Overcommitted {
                        node: node.id.clone(),
                        resource,
                        used,
                        capacity,
                    });
                }
                if used != instances {
                    return Err(AuditError::Leaked {
                        node: node.id.clone(),
                        resource,
                        node_used: used,
                        instances,
                    });
                }
            }
            let owned = g.owners.iter().filter(|o| o.is_some()).count() as u64;
            if owned != u64::from(g.used_slots) {
                return Err(AuditError::Leaked {
                    node: node.id.clone(),
                    resource: "slots",
                    node_used: g.used_slots.into(),
                    instances: owned,
                });
            }
            audit.used_slots += u64::from(g.used_slots);
            audit.used_memory_mb += g.used_mem;
        }
        Ok(audit)
    }
}
