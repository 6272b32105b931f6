//! faas-sched benchmarks.
//!
//! Cases:
//! - `sched/decide_release/{1,2}t/{10,100,1000,10000}`: one `PoolScheduler::place`
//!   plus its `release` (a per-request function: every decision picks a node and
//!   reserves a slot, every release frees it), 1000 functions, nodes of 64 slots;
//!   with 2 threads both call the same scheduler, throughput is per operation.
//! - `sched/replay_100/{fixed10m,hybrid}`: wall time of replaying the 100-function
//!   Azure 2019 trace on 100 nodes of 64 GiB.
//!
//! Besides criterion's report, the run prints to stderr, per case, the p50/p99
//! latency of decision + release from 200,000 individually timed operations, the
//! one-thread throughput, and for the replays the cold-start % and idle GB·s.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use faas_core::{FunctionSpec, ImageRef, NodeId, Outcome, Reuse, RuntimeKind, Scheduler};
use faas_sched::replay::{ReplayConfig, Trace, replay};
use faas_sched::{KeepAlivePolicy, NodeCapacity, PoolConfig, PoolScheduler};

const NODE_COUNTS: [u32; 4] = [10, 100, 1_000, 10_000];
const FUNCTIONS: usize = 1000;

fn cluster(nodes: u32) -> PoolScheduler {
    let s = PoolScheduler::new(PoolConfig::default());
    for i in 0..nodes {
        s.add_node_with(
            NodeId(format!("node-{i}")),
            NodeCapacity {
                slots: 64,
                cpu_millis: 64_000,
                memory_mb: 64 * 1024,
            },
        );
    }
    s
}

fn functions() -> Vec<FunctionSpec> {
    (0..FUNCTIONS)
        .map(|i| {
            let mut f = FunctionSpec::new(
                format!("f{i}"),
                RuntimeKind::Native,
                ImageRef::Dir("/x".into()),
                "x",
            );
            f.reuse = Reuse::PerRequest;
            f
        })
        .collect()
}

fn op(s: &PoolScheduler, f: &FunctionSpec) {
    let d = s.place(f).expect("capacity");
    s.release(black_box(&d.placement), Outcome::Ok);
}

fn latency_report(nodes: u32) {
    let s = cluster(nodes);
    let fns = functions();
    for (i, f) in fns.iter().enumerate().take(10_000) {
        op(&s, f);
        let _ = i;
    }
    let n = 200_000usize;
    let mut lat = Vec::with_capacity(n);
    let start = Instant::now();
    for i in 0..n {
        let t0 = Instant::now();
        op(&s, &fns[i % FUNCTIONS]);
        lat.push(t0.elapsed().as_nanos() as u64);
    }
    let wall = start.elapsed();
    lat.sort_unstable();
    eprintln!(
        "sched/latency nodes={nodes} threads=1: p50 {} ns, p99 {} ns, p99.9 {} ns, {:.2} M ops/s (timed loop)",
        lat[n / 2],
        lat[n * 99 / 100],
        lat[n * 999 / 1000],
        n as f64 / wall.as_secs_f64() / 1e6
    );
}

fn decide_release(c: &mut Criterion) {
    let mut g = c.benchmark_group("sched/decide_release");
    g.throughput(Throughput::Elements(1));
    g.measurement_time(Duration::from_secs(3));
    g.warm_up_time(Duration::from_secs(1));
    for nodes in NODE_COUNTS {
        latency_report(nodes);
        let s = cluster(nodes);
        let fns = functions();
        let mut i = 0usize;
        g.bench_with_input(BenchmarkId::new("1t", nodes), &nodes, |b, _| {
            b.iter(|| {
                i = (i + 1) % FUNCTIONS;
                op(&s, &fns[i]);
            })
        });
        let s = Arc::new(s);
        let fns = Arc::new(fns);
        g.bench_with_input(BenchmarkId::new("2t", nodes), &nodes, |b, _| {
            b.iter_custom(|iters| {
                let per = iters / 2 + 1;
                let start = Instant::now();
                let hs: Vec<_> = (0..2)
                    .map(|t| {
                        let (s, fns) = (s.clone(), fns.clone());
                        std::thread::spawn(move || {
                            for k in 0..per as usize {
                                op(&s, &fns[(k * 7 + t * 500) % FUNCTIONS]);
                            }
                        })
                    })
                    .collect();
                for h in hs {
                    h.join().unwrap();
                }
                // Wall time per operation over both threads.
                start.elapsed().mul_f64(iters as f64 / (2 * per) as f64)
            })
        });
    }
    g.finish();
}

fn replay_100(c: &mut Criterion) {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../shared/traces/azure2019/100"
    );
    let trace = Trace::load(path.as_ref()).expect("the 100-function trace (shared/traces)");
    let mut g = c.benchmark_group("sched/replay_100");
    g.sample_size(10);
    g.measurement_time(Duration::from_secs(10));
    for (name, policy) in [
        ("fixed10m", KeepAlivePolicy::fixed_10_min()),
        ("fixed20m", KeepAlivePolicy::fixed_20_min()),
        ("hybrid", KeepAlivePolicy::hybrid()),
    ] {
        let mut cfg = ReplayConfig::new(100, 64 * 1024);
        cfg.policy = policy;
        let r = replay(&trace, &cfg, |_| {}).unwrap();
        eprintln!(
            "sched/replay_100/{name}: invocations {}, rejected {}, cold starts {} ({:.3} %), idle {:.0} GB·s, decision p50 {} ns p99 {} ns",
            r.invocations,
            r.rejected,
            r.cold_starts,
            r.cold_start_pct,
            r.wasted_gb_s,
            r.decision_p50_ns,
            r.decision_p99_ns
        );
        g.bench_function(name, |b| {
            b.iter(|| black_box(replay(&trace, &cfg, |_| {}).unwrap()))
        });
    }
    g.finish();
}

/// The criterion entry point: every case of this file.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    decide_release(&mut c);
    replay_100(&mut c);
}

criterion_main!(benches);
