//! Replays an Azure Functions trace through a [`PoolScheduler`] in virtual
//! time.
//!
//! ```text
//! Trace::load(path) ── 2019 trio: per-minute counts ─┐  invocations spread inside each
//!                  └── 2021 CSV: one row per call ───┤  minute (stratified, seeded);
//!                                                    ▼  durations and memory drawn from
//!   virtual clock ──▶ place_queued(f) at each arrival   the trace's percentiles
//!        │            release(p) at arrival + duration
//!        │            tick() every virtual second (expiry, pre-warm, queue timeouts)
//!        ▼
//!   ReplayReport: invocations, placed, rejected, cold starts, idle GB·s,
//!                 real decision latency p50/p99/p99.9
//! ```
//!
//! By default a function's invocations share one instance
//! ([`InstanceModel::PerFunction`], the model of "Serverless in the Wild"):
//! it is idle only while none of them runs, and a keep-alive policy's windows
//! start when it becomes idle. Cold starts and idle memory-time (memory of
//! loaded idle instances × time) are counted the same way for every policy.
//!
//! The same trace, configuration and seed give the same counts.

mod trace;

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use faas_core::{
    FunctionSpec, ImageRef, NodeId, Outcome, Placement, Reuse, RuntimeKind, Scheduler, Ticket,
};

pub use trace::{Arrivals, LoadTraceError, Percentiles, Trace, TraceFormat, TraceFunction};

use crate::clock::{Clock, ManualClock};
use crate::policy::KeepAlivePolicy;
use crate::pool::{MAX_NODE_SLOTS, NodeCapacity, Placed, PoolConfig, PoolScheduler};
use crate::rng::Rng;

const SEC: u64 = 1_000_000_000;
const MINUTE: u64 = 60 * SEC;

/// How to replay a trace.
#[derive(Debug, Clone)]
pub struct ReplayConfig {
    /// Nodes of the simulated cluster.
    pub nodes: u32,
    /// Memory of each node, MiB.
    pub node_memory_mb: u64,
    /// Instance slots of each node (default: one per 16 MiB of memory).
    pub node_slots: u32,
    /// Keep-alive policy.
    pub policy: KeepAlivePolicy,
    /// Seed of every random draw (arrival times, durations, memory, node
    /// choice).
    pub seed: u64,
    /// How many instances a function's invocations run on.
    pub instances: InstanceModel,
    /// Concurrent instances allowed per function (with
    /// [`InstanceModel::PerInvocation`]).
    pub max_instances: u32,
    /// Memory of an instance when the trace gives none (2021 trace), MiB.
    pub default_memory_mb: u32,
    /// Duration of an invocation when the trace gives none, milliseconds.
    pub default_duration_ms: u64,
    /// Wait queue per function at its limit, and the longest wait.
    pub queue: (u32, Duration),
    /// Virtual time between two scheduler ticks.
    pub tick: Duration,
}

impl ReplayConfig {
    /// `nodes` nodes of `node_memory_mb` MiB each, fixed 10-minute
    /// keep-alive, seed 0.
    pub fn new(nodes: u32, node_memory_mb: u64) -> Self {
        ReplayConfig {
            nodes,
            node_memory_mb,
            node_slots: u32::try_from(node_memory_mb / 16)
                .unwrap_or(u32::MAX)
                .clamp(1, MAX_NODE_SLOTS),
            policy: KeepAlivePolicy::fixed_10_min(),
            seed: 0,
            instances: InstanceModel::PerFunction,
            max_instances: 1000,
            default_memory_mb: 128,
            default_duration_ms: 1000,
            queue: (64, Duration::from_secs(1)),
            tick: Duration::from_secs(1),
        }
    }
}

/// How the replay maps a function's invocations onto instances.
///
/// The keep-alive policies are compared in the model of "Serverless in the
/// Wild" (ATC'20, §4): an application is one image that is either loaded in
/// memory or not; every invocation that arrives while it is loaded is warm,
/// whatever else of the application runs at that moment; it is idle when no
/// invocation runs, and only then does the policy's pre-warm or keep-alive
/// window start. [`InstanceModel::PerFunction`] is that model. The trace
/// does not say how invocations of one function share an instance, so
/// [`InstanceModel::PerInvocation`] (one instance per concurrent
/// invocation, each with its own window) is kept as a stress model of the
/// scheduler: there most cold starts are scale-ups of busy functions, which
/// no keep-alive policy of the paper addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum InstanceModel {
    /// One instance per function that serves all of its concurrent
    /// invocations (the paper's model; the default).
    PerFunction,
    /// One instance per concurrent invocation, up to
    /// [`ReplayConfig::max_instances`].
    PerInvocation,
}

impl InstanceModel {
    /// Parses `function` or `invocation`.
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "function" => Some(InstanceModel::PerFunction),
            "invocation" => Some(InstanceModel::PerInvocation),
            _ => None,
        }
    }
}

/// A replay configuration that cannot run.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("replay: {field} {message}")]
pub struct ReplayError {
    /// The offending setting.
    pub field: &'static str,
    /// What is wrong with it.
    pub message: &'static str,
}

/// What a replay measured.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplayReport {
    /// Invocations in the trace.
    pub invocations: u64,
    /// Invocations that got a placement (directly or after waiting).
    pub placed: u64,
    /// Invocations refused (limit, capacity, queue timeout).
    pub rejected: u64,
    /// Invocations that started a new instance.
    pub cold_starts: u64,
    /// `cold_starts` as a percentage of `invocations`.
    pub cold_start_pct: f64,
    /// Memory-time of loaded but idle instances, GB·s (1 GB = 1024 MiB),
    /// up to the end of the trace.
    pub wasted_gb_s: f64,
    /// Real (wall-clock) latency of one decision: median, nanoseconds.
    pub decision_p50_ns: u64,
    /// 99th percentile.
    pub decision_p99_ns: u64,
    /// 99.9th percentile.
    pub decision_p999_ns: u64,
    /// Invocations that waited in a queue.
    pub queued: u64,
    /// Instances loaded ahead of time (hybrid policy).
    pub prewarmed: u64,
    /// Functions in the trace.
    pub functions: usize,
    /// Virtual time covered, seconds.
    pub virtual_secs: f64,
}

/// Progress of a replay, reported once per virtual minute.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Minutes replayed.
    pub minute: u64,
    /// Minutes in the trace.
    pub minutes: u64,
}

struct Arrival {
    at: u64,
    function: u32,
    duration: u64,
    memory_mb: u32,
}

struct Waiting {
    ticket: Ticket,
    duration: u64,
}

struct Sim {
    clock: Arc<ManualClock>,
    sched: PoolScheduler,
    /// (end, sequence, index into `running`).
    ends: BinaryHeap<Reverse<(u64, u64, usize)>>,
    running: Vec<Option<Placement>>,
    free: Vec<usize>,
    seq: u64,
    waiting: Vec<Waiting>,
    next_tick: u64,
    tick: u64,
    placed: u64,
    rejected: u64,
}

impl Sim {
    fn start(&mut self, now: u64, duration: u64, p: Placement) {
        let i = match self.free.pop() {
            Some(i) => {
                self.running[i] = Some(p);
                i
            }
            None => {
                self.running.push(Some(p));
                self.running.len() - 1
            }
        };
        self.seq += 1;
        self.ends
            .push(Reverse((now.saturating_add(duration), self.seq, i)));
        self.placed += 1;
    }

    fn poll_waiting(&mut self, now: u64) {
        if self.waiting.is_empty() {
            return;
        }
        let mut still = Vec::new();
        for mut w in std::mem::take(&mut self.waiting) {
            match w.ticket.try_take() {
                Some(Ok(p)) => self.start(now, w.duration, p),
                Some(Err(_)) => self.rejected += 1,
                None => still.push(w),
            }
        }
        self.waiting = still;
    }

    /// Runs every completion and tick up to and including `t`.
    fn advance(&mut self, t: u64) {
        loop {
            let next_end = self.ends.peek().map_or(u64::MAX, |Reverse(e)| e.0);
            let next = next_end.min(self.next_tick);
            if next > t {
                break;
            }
            self.clock.set(next);
            if next_end <= self.next_tick {
                if let Some(Reverse((_, _, i))) = self.ends.pop()
                    && let Some(p) = self.running[i].take()
                {
                    self.free.push(i);
                    self.sched.release(&p, Outcome::Ok);
                }
            } else {
                self.sched.tick();
                self.next_tick = self.next_tick.saturating_add(self.tick);
            }
            self.poll_waiting(next);
        }
        self.clock.set(t);
    }
}

fn percentile(sorted: &[u32], q: f64) -> u64 {
    if sorted.is_empty() {
        return 0;
    }
    let rank = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len());
    u64::from(sorted[rank - 1])
}

/// Replays `trace` through a fresh [`PoolScheduler`].
///
/// # Errors
///
/// A [`ReplayError`] when the configuration cannot run (no node, no memory).
pub fn replay(
    trace: &Trace,
    cfg: &ReplayConfig,
    mut progress: impl FnMut(Progress),
) -> Result<ReplayReport, ReplayError> {
    if cfg.nodes == 0 {
        return Err(ReplayError {
            field: "nodes",
            message: "must be at least 1",
        });
    }
    if cfg.node_memory_mb == 0 || cfg.node_slots == 0 {
        return Err(ReplayError {
            field: "node memory",
            message: "must be at least 1 MiB with at least one slot",
        });
    }
    if cfg.tick.is_zero() {
        return Err(ReplayError {
            field: "tick",
            message: "must be longer than zero",
        });
    }
    let clock = Arc::new(ManualClock::new(0));
    let pool_cfg = PoolConfig::default()
        .with_keep_alive(cfg.policy.clone())
        .with_queue(cfg.queue.0, cfg.queue.1)
        .with_seed(cfg.seed);
    let sched = PoolScheduler::with_clock(pool_cfg, clock.clone());
    let slots = cfg.node_slots.min(MAX_NODE_SLOTS);
    for i in 0..cfg.nodes {
        sched.add_node_with(
            NodeId(format!("node-{i}")),
            NodeCapacity {
                slots,
                cpu_millis: u64::from(slots) * 1000,
                memory_mb: cfg.node_memory_mb,
            },
        );
    }
    let mut specs: Vec<FunctionSpec> = (0..trace.functions.len())
        .map(|i| {
            let name = format!("fn-{i}");
            let mut f = FunctionSpec::new(
                &name,
                RuntimeKind::Native,
                ImageRef::Dir(format!("/trace/{name}").into()),
                "handler",
            );
            f.reuse = Reuse::KeepAlive { idle_ms: 600_000 };
            match cfg.instances {
                InstanceModel::PerFunction => {
                    f.concurrency.max_instances = 1;
                    f.concurrency.per_instance = u32::MAX;
                }
                InstanceModel::PerInvocation => {
                    f.concurrency.max_instances = cfg.max_instances.max(1);
                    f.concurrency.per_instance = 1;
                }
            }
            f.limits.cpu_millis = 1000;
            f
        })
        .collect();

    let minutes = minutes_of(trace);
    let mut rng = Rng::new(cfg.seed ^ 0x7261_6e64_6f6d_0001);
    let mut explicit = explicit_arrivals(trace, cfg);
    let mut next_explicit = 0usize;
    let mut sim = Sim {
        clock,
        sched,
        ends: BinaryHeap::new(),
        running: Vec::new(),
        free: Vec::new(),
        seq: 0,
        waiting: Vec::new(),
        next_tick: 0,
        tick: u64::try_from(cfg.tick.as_nanos()).unwrap_or(u64::MAX),
        placed: 0,
        rejected: 0,
    };
    let mut latencies: Vec<u32> =
        Vec::with_capacity(usize::try_from(trace.invocations()).unwrap_or(0));
    let mut batch = Vec::new();
    for m in 0..minutes {
        batch.clear();
        per_minute_arrivals(trace, cfg, m, &mut rng, &mut batch);
        let end = (m + 1) * MINUTE;
        while next_explicit < explicit.len() && explicit[next_explicit].at < end {
            batch.push(std::mem::replace(
                &mut explicit[next_explicit],
                Arrival {
                    at: 0,
                    function: 0,
                    duration: 0,
                    memory_mb: 0,
                },
            ));
            next_explicit += 1;
        }
        batch.sort_by_key(|a| (a.at, a.function));
        for a in &batch {
            sim.advance(a.at);
            let spec = &mut specs[a.function as usize];
            spec.limits.memory_mb = a.memory_mb;
            let t0 = Instant::now();
            let r = sim.sched.place_queued(spec);
            let ns = t0.elapsed().as_nanos();
            latencies.push(u32::try_from(ns).unwrap_or(u32::MAX));
            match r {
                Ok(Placed::Now(d)) => sim.start(a.at, a.duration, d.placement),
                Ok(Placed::Queued(ticket)) => sim.waiting.push(Waiting {
                    ticket,
                    duration: a.duration,
                }),
                Err(_) => sim.rejected += 1,
            }
        }
        progress(Progress {
            minute: m + 1,
            minutes,
        });
    }
    // Let everything in flight finish.
    while !sim.ends.is_empty() || !sim.waiting.is_empty() {
        let t = sim
            .ends
            .peek()
            .map_or(sim.next_tick, |Reverse(e)| e.0.min(sim.next_tick));
        sim.advance(t);
    }
    let horizon = minutes * MINUTE;
    let end = horizon.max(sim.clock.now());
    sim.clock.set(end);
    let stats = sim.sched.stats();
    let wasted_mb_ns = stats.wasted_mb_ns + sim.sched.idle_now_mb_ns();
    latencies.sort_unstable();
    let invocations = trace.invocations();
    Ok(ReplayReport {
        invocations,
        placed: sim.placed,
        rejected: sim.rejected,
        cold_starts: stats.cold_starts,
        cold_start_pct: if invocations == 0 {
            0.0
        } else {
            stats.cold_starts as f64 * 100.0 / invocations as f64
        },
        wasted_gb_s: wasted_mb_ns as f64 / 1024.0 / 1e9,
        decision_p50_ns: percentile(&latencies, 0.50),
        decision_p99_ns: percentile(&latencies, 0.99),
        decision_p999_ns: percentile(&latencies, 0.999),
        queued: stats.queued,
        prewarmed: stats.prewarmed,
        functions: trace.functions.len(),
        virtual_secs: end as f64 / 1e9,
    })
}

fn minutes_of(trace: &Trace) -> u64 {
    trace
        .functions
        .iter()
        .map(|f| match &f.arrivals {
            Arrivals::PerMinute(c) => c.len() as u64,
            Arrivals::Explicit(v) => v.iter().map(|a| a.0 / MINUTE + 1).max().unwrap_or(0),
        })
        .max()
        .unwrap_or(0)
}

fn draw_memory(f: &TraceFunction, cfg: &ReplayConfig, rng: &mut Rng) -> u32 {
    match &f.memory_mb {
        Some(p) => (p.sample(rng.unit()).round() as u32).max(1),
        None => cfg.default_memory_mb.max(1),
    }
}

fn per_minute_arrivals(
    trace: &Trace,
    cfg: &ReplayConfig,
    minute: u64,
    rng: &mut Rng,
    out: &mut Vec<Arrival>,
) {
    for (i, f) in trace.functions.iter().enumerate() {
        let Arrivals::PerMinute(counts) = &f.arrivals else {
            continue;
        };
        let k = counts.get(minute as usize).copied().unwrap_or(0);
        if k == 0 {
            continue;
        }
        let step = MINUTE as f64 / f64::from(k);
        for j in 0..k {
            // Stratified: the j-th call falls uniformly in the j-th k-th of
            // the minute.
            let offset = ((f64::from(j) + rng.unit()) * step) as u64;
            let duration_ms = match &f.duration_ms {
                Some(p) => p.sample(rng.unit()),
                None => cfg.default_duration_ms as f64,
            };
            out.push(Arrival {
                at: minute * MINUTE + offset.min(MINUTE - 1),
                function: i as u32,
                duration: (duration_ms * 1e6).round() as u64,
                memory_mb: draw_memory(f, cfg, rng),
            });
        }
    }
}

fn explicit_arrivals(trace: &Trace, cfg: &ReplayConfig) -> Vec<Arrival> {
    let mut rng = Rng::new(cfg.seed ^ 0x7261_6e64_6f6d_0002);
    let mut v = Vec::new();
    for (i, f) in trace.functions.iter().enumerate() {
        if let Arrivals::Explicit(calls) = &f.arrivals {
            for &(at, duration) in calls {
                v.push(Arrival {
                    at,
                    function: i as u32,
                    duration,
                    memory_mb: draw_memory(f, cfg, &mut rng),
                });
            }
        }
    }
    v.sort_by_key(|a| (a.at, a.function));
    v
}
