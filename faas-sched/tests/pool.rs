//! Behaviour of `PoolScheduler` in virtual time.

use std::sync::Arc;
use std::time::Duration;

use faas_core::{
    Admission, FunctionSpec, ImageRef, NodeId, NodeInfo, Outcome, Reuse, RuntimeKind,
    ScheduleError, Scheduler,
};
use faas_sched::{KeepAlivePolicy, ManualClock, NodeCapacity, PoolConfig, PoolScheduler};

const SEC: u64 = 1_000_000_000;
const MIN: u64 = 60 * SEC;

fn func(name: &str, max: u32, reuse: Reuse) -> FunctionSpec {
    let mut f = FunctionSpec::new(name, RuntimeKind::Native, ImageRef::Dir("/x".into()), "x");
    f.concurrency.max_instances = max;
    f.reuse = reuse;
    f.limits.memory_mb = 100;
    f.limits.cpu_millis = 500;
    f
}

fn keep(ms: u64) -> Reuse {
    Reuse::KeepAlive { idle_ms: ms }
}

fn sched(cfg: PoolConfig, nodes: &[(&str, u32)]) -> (PoolScheduler, Arc<ManualClock>) {
    let clock = Arc::new(ManualClock::new(0));
    let s = PoolScheduler::with_clock(cfg, clock.clone());
    for (id, slots) in nodes {
        s.add_node(NodeInfo {
            id: NodeId((*id).into()),
            slots: *slots,
            memory_mb: 100_000,
        });
    }
    (s, clock)
}

#[test]
fn keep_alive_reuses_the_idle_instance_and_per_request_does_not() {
    let (s, _) = sched(PoolConfig::default(), &[("a", 4), ("b", 4)]);
    let f = func("f", 10, keep(60_000));
    let d1 = s.place(&f).unwrap();
    assert!(d1.cold);
    s.release(&d1.placement, Outcome::Ok);
    let d2 = s.place(&f).unwrap();
    assert!(!d2.cold);
    assert_eq!(d2.placement, d1.placement);
    s.release(&d2.placement, Outcome::Ok);

    let g = func("g", 10, Reuse::PerRequest);
    for _ in 0..3 {
        let d = s.place(&g).unwrap();
        assert!(d.cold);
        s.release(&d.placement, Outcome::Ok);
    }
    let st = s.stats();
    assert_eq!((st.cold_starts, st.warm_starts), (4, 1));
    // Only f's idle instance is still loaded.
    assert_eq!(st.live_instances, 1);
    assert_eq!(s.audit().unwrap().used_slots, 1);
}

#[test]
fn a_failed_instance_is_not_reused() {
    let (s, _) = sched(PoolConfig::default(), &[("a", 4)]);
    let f = func("f", 10, keep(60_000));
    let d = s.place(&f).unwrap();
    s.release(&d.placement, Outcome::Failed);
    assert!(s.place(&f).unwrap().cold);
}

#[test]
fn idle_instances_expire_after_the_window_and_count_wasted_memory() {
    let cfg =
        PoolConfig::default().with_keep_alive(KeepAlivePolicy::Fixed(Duration::from_secs(600)));
    let (s, clock) = sched(cfg, &[("a", 4)]);
    let f = func("f", 10, keep(1));
    let d = s.place(&f).unwrap();
    clock.set(SEC);
    s.release(&d.placement, Outcome::Ok);
    clock.set(SEC + 10 * MIN - 1);
    assert_eq!(s.tick().expired, 0);
    clock.set(SEC + 10 * MIN + 5 * SEC);
    assert_eq!(s.tick().expired, 1);
    let st = s.stats();
    assert_eq!(st.live_instances, 0);
    // 100 MiB idle for exactly 10 minutes (not until the tick).
    assert_eq!(st.wasted_mb_ns, 100 * 600 * u128::from(SEC));
    assert!(s.place(&f).unwrap().cold);
}

#[test]
fn per_instance_concurrency_shares_one_slot() {
    let (s, _) = sched(
        PoolConfig::default().with_queue(0, Duration::ZERO),
        &[("a", 8)],
    );
    let mut f = func("f", 1, keep(60_000));
    f.concurrency.per_instance = 3;
    let ds: Vec<_> = (0..3).map(|_| s.place(&f).unwrap()).collect();
    assert!(ds[0].cold && !ds[1].cold && !ds[2].cold);
    assert!(ds.iter().all(|d| d.placement == ds[0].placement));
    match s.place(&f) {
        Err(ScheduleError::OverLimit { limit, .. }) => assert_eq!(limit, 3),
        other => panic!("expected OverLimit, got {other:?}"),
    }
    assert_eq!(s.audit().unwrap().used_slots, 1);
    for d in &ds {
        s.release(&d.placement, Outcome::Ok);
    }
    assert_eq!(s.stats().in_flight, 0);
    assert_eq!(s.stats().stale_releases, 0);
}

#[test]
fn over_limit_carries_a_retry_after_from_the_service_time() {
    let (s, clock) = sched(
        PoolConfig::default().with_queue(0, Duration::ZERO),
        &[("a", 8)],
    );
    let f = func("f", 1, Reuse::PerRequest);
    let d = s.place(&f).unwrap();
    clock.advance(2 * SEC);
    s.release(&d.placement, Outcome::Ok);
    let _d = s.place(&f).unwrap();
    match s.place(&f) {
        Err(e @ ScheduleError::OverLimit { .. }) => {
            // One waiter ahead (this one), limit 1, 2 s per request.
            assert_eq!(e.retry_after(), Some(Duration::from_secs(2)));
        }
        other => panic!("expected OverLimit, got {other:?}"),
    }
}

#[test]
fn queued_requests_get_the_freed_slot_in_order_and_time_out() {
    let cfg = PoolConfig::default().with_queue(2, Duration::from_secs(5));
    let (s, clock) = sched(cfg, &[("a", 8)]);
    let f = func("f", 1, keep(60_000));
    let p = s.schedule(&f).unwrap();
    let Ok(Admission::Queued(mut t1)) = s.schedule_queued(&f) else {
        panic!("expected a ticket")
    };
    let Ok(Admission::Queued(mut t2)) = s.schedule_queued(&f) else {
        panic!("expected a ticket")
    };
    // The queue holds 2: the next is refused.
    assert!(matches!(
        s.schedule_queued(&f),
        Err(ScheduleError::OverLimit { .. })
    ));
    // Plain schedule never queues and never overtakes.
    assert!(matches!(
        s.schedule(&f),
        Err(ScheduleError::OverLimit { .. })
    ));
    assert!(t1.try_take().is_none());
    s.release(&p, Outcome::Ok);
    // The first waiter gets the kept-alive instance.
    assert_eq!(t1.try_take(), Some(Ok(p.clone())));
    assert!(t2.try_take().is_none());
    clock.advance(6 * SEC);
    s.tick();
    assert!(matches!(
        t2.try_take(),
        Some(Err(ScheduleError::OverLimit { .. }))
    ));
    s.release(&p, Outcome::Ok);
    let st = s.stats();
    assert_eq!((st.queued, st.queue_served, st.queue_timeouts), (2, 1, 1));
    assert_eq!(st.in_flight, 0);
    s.audit().unwrap();
}

#[test]
fn a_dropped_ticket_gives_its_placement_back() {
    let (s, _) = sched(PoolConfig::default(), &[("a", 8)]);
    let f = func("f", 1, Reuse::PerRequest);
    let p = s.schedule(&f).unwrap();
    let Ok(Admission::Queued(t)) = s.schedule_queued(&f) else {
        panic!("expected a ticket")
    };
    s.release(&p, Outcome::Ok); // hands a new slot to the ticket
    assert_eq!(s.stats().in_flight, 1);
    drop(t); // never read: released as cancelled
    assert_eq!(s.stats().in_flight, 0);
    assert_eq!(s.audit().unwrap().used_slots, 0);
}

#[test]
fn a_node_that_misses_its_heartbeat_gets_no_work_and_its_placements_fail() {
    let cfg = PoolConfig::default().with_heartbeat_timeout(Duration::from_secs(10));
    let (s, clock) = sched(cfg, &[("a", 4), ("b", 4)]);
    let a = NodeId("a".into());
    let b = NodeId("b".into());
    let f = func("f", 100, Reuse::PerRequest);
    let ps: Vec<_> = (0..6).map(|_| s.schedule(&f).unwrap()).collect();
    let on_a: Vec<_> = ps.iter().filter(|p| p.node == a).cloned().collect();
    assert!(!on_a.is_empty());
    clock.set(8 * SEC);
    s.heartbeat(&b);
    clock.set(12 * SEC); // a is past its deadline, b is not
    // Even before the tick, a gets no new work.
    let extra = s.schedule(&f).unwrap();
    assert_eq!(extra.node, b);
    let report = s.tick();
    assert_eq!(report.dead_nodes, vec![a.clone()]);
    let mut failed: Vec<_> = report.failed.iter().map(|f| f.placement.clone()).collect();
    let mut expected = on_a.clone();
    failed.sort_by_key(|p| p.slot);
    expected.sort_by_key(|p| p.slot);
    assert_eq!(failed, expected);
    // Their late releases are ignored.
    for p in &on_a {
        s.release(p, Outcome::Ok);
    }
    assert_eq!(s.stats().stale_releases, on_a.len() as u64);
    for p in ps.iter().filter(|p| p.node == b).chain([&extra]) {
        s.release(p, Outcome::Ok);
    }
    assert_eq!(s.stats().in_flight, 0);
    assert_eq!(s.audit().unwrap().used_slots, 0);
    // A heartbeat brings a back, empty, with new slot numbers.
    s.heartbeat(&a);
    s.remove_node(&b);
    let q = s.schedule(&f).unwrap();
    assert_eq!(q.node, a);
    assert!(on_a.iter().all(|p| p.slot != q.slot));
}

#[test]
fn removed_nodes_get_no_work_but_their_placements_release_normally() {
    let (s, _) = sched(PoolConfig::default(), &[("a", 1), ("b", 1)]);
    let f = func("f", 10, Reuse::PerRequest);
    let p1 = s.schedule(&f).unwrap();
    s.remove_node(&p1.node);
    let p2 = s.schedule(&f).unwrap();
    assert_ne!(p2.node, p1.node);
    assert!(matches!(
        s.schedule(&f),
        Err(ScheduleError::NoCapacity {
            nodes: 1,
            slots: 1,
            ..
        })
    ));
    s.release(&p1, Outcome::Ok);
    s.release(&p2, Outcome::Ok);
    assert_eq!(s.stats().stale_releases, 0);
    assert_eq!(s.audit().unwrap().used_slots, 0);
    s.remove_node(&p2.node);
    assert_eq!(s.schedule(&f), Err(ScheduleError::NoNodes));
}

#[test]
fn memory_and_cpu_bound_a_node_not_only_slots() {
    let (s, _) = sched(PoolConfig::default(), &[]);
    s.add_node_with(
        NodeId("n".into()),
        NodeCapacity {
            slots: 100,
            cpu_millis: 100_000,
            memory_mb: 250,
        },
    );
    let f = func("f", 100, Reuse::PerRequest); // 100 MiB each
    let _a = s.schedule(&f).unwrap();
    let _b = s.schedule(&f).unwrap();
    assert!(matches!(
        s.schedule(&f),
        Err(ScheduleError::NoCapacity { .. })
    ));
    let mut small = func("g", 100, Reuse::PerRequest);
    small.limits.memory_mb = 50;
    assert!(s.schedule(&small).is_ok());
}

#[test]
fn cold_starts_prefer_a_node_holding_the_image() {
    let nodes: Vec<(String, u32)> = (0..16).map(|i| (format!("n{i}"), 64)).collect();
    let refs: Vec<(&str, u32)> = nodes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let (s, _) = sched(PoolConfig::default(), &refs);
    let f = func("f", 100, Reuse::PerRequest);
    let first = s.schedule(&f).unwrap();
    s.release(&first, Outcome::Ok);
    for _ in 0..20 {
        let p = s.schedule(&f).unwrap();
        assert_eq!(p.node, first.node);
        s.release(&p, Outcome::Ok);
    }
    assert_eq!(s.stats().locality_hits, 20);
}

#[test]
fn the_load_bound_spreads_a_hot_function_beyond_its_image_node() {
    let nodes: Vec<(String, u32)> = (0..8).map(|i| (format!("n{i}"), 10)).collect();
    let refs: Vec<(&str, u32)> = nodes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
    let (s, _) = sched(PoolConfig::default(), &refs);
    let f = func("f", 1000, Reuse::PerRequest);
    let held: Vec<_> = (0..40).map(|_| s.schedule(&f).unwrap()).collect();
    // 40 requests on 8 nodes of 10 slots: average half full. No node may be
    // filled far beyond the bound (1.25 * 50 % + 10 % = 72.5 %) by locality.
    let mut per_node = std::collections::HashMap::new();
    for p in &held {
        *per_node.entry(p.node.clone()).or_insert(0) += 1;
    }
    assert!(per_node.len() >= 5, "{per_node:?}");
    assert!(per_node.values().all(|&n| n <= 8), "{per_node:?}");
    s.audit().unwrap();
}

#[test]
fn hybrid_policy_prewarms_a_periodic_function_in_virtual_time() {
    // A function runs 1 s every 30 minutes: idle times of 29 min 59 s, in
    // the bin [29 min, 30 min). After 5 of them the histogram says: unload,
    // pre-warm after 29 min - 10 % = 26.1 min, keep until 30 min + 10 % = 33 min.
    let cfg = PoolConfig::default().with_keep_alive(KeepAlivePolicy::hybrid());
    let (s, clock) = sched(cfg, &[("a", 8)]);
    let f = func("f", 10, keep(1));
    let mut colds = Vec::new();
    for k in 0..10u64 {
        let start = k * 30 * MIN;
        clock.set(start);
        s.tick();
        let d = s.place(&f).unwrap();
        colds.push(d.cold);
        clock.set(start + SEC);
        s.release(&d.placement, Outcome::Ok);
        s.tick();
    }
    // Invocations 0..=5 see the fallback (4 h keep-alive): only the first
    // is cold. Then the histogram pre-warms: all warm.
    assert_eq!(
        colds,
        [
            true, false, false, false, false, false, false, false, false, false
        ]
    );
    let st = s.stats();
    assert_eq!(st.prewarmed, 4); // after invocations 5..=8 (idle times 5 observed)
    // Wasted: 5 idle periods of 30 min - 1 s under the fallback (instance
    // kept), then 4 periods idle only from the pre-warm (26.1 min + 1 s after
    // the start) to the next arrival at 30 min: 233 s each.
    let expect = 100u128 * u128::from(5 * (30 * MIN - SEC) + 4 * 233 * SEC);
    assert_eq!(st.wasted_mb_ns, expect);
}

#[test]
fn one_instance_per_function_measures_idle_time_only_when_nothing_runs() {
    // The replay's per-function model: one instance serves every concurrent
    // invocation. Every 30 minutes two invocations overlap: A at +0 s
    // (ends +20 s) and B at +10 s (ends +40 s). A's end starts no window
    // (B still runs); the function is idle from +40 s to the next period:
    // 30 min - 40 s = 1760 s, bin 29 (1740..1800 s). After 5 such idle
    // times (observed at the arrivals of periods 1..=5) the histogram has
    // head = tail = bin 29: at the end of period 5 the instance is unloaded,
    // pre-warmed 29 min * 0.9 = 1566 s later and kept to 30 min * 1.1 =
    // 1980 s; the next arrival, 1760 s after the end, finds it loaded.
    let cfg = PoolConfig::default().with_keep_alive(KeepAlivePolicy::hybrid());
    let (s, clock) = sched(cfg, &[("a", 8)]);
    let mut f = func("f", 1, keep(1));
    f.concurrency.per_instance = 100;
    let mut colds = Vec::new();
    for k in 0..10u64 {
        let start = k * 30 * MIN;
        clock.set(start);
        s.tick();
        let a = s.place(&f).unwrap();
        clock.set(start + 10 * SEC);
        let b = s.place(&f).unwrap();
        assert_eq!(a.placement, b.placement, "one instance");
        colds.extend([a.cold, b.cold]);
        clock.set(start + 20 * SEC);
        s.release(&a.placement, Outcome::Ok);
        clock.set(start + 40 * SEC);
        s.release(&b.placement, Outcome::Ok);
        s.tick();
    }
    // Only the very first invocation is cold (periods 1..=5 ride the 4 h
    // fallback, periods 6..=9 the pre-warmed instance).
    let mut expect_colds = vec![false; 20];
    expect_colds[0] = true;
    assert_eq!(colds, expect_colds);
    let st = s.stats();
    assert_eq!(st.cold_starts, 1);
    assert_eq!(st.prewarmed, 4); // after periods 5..=8
    // Wasted (100 MiB): periods 0..=4 idle 1760 s each (kept by the
    // fallback); periods 5..=8 loaded 1566 s after the end, idle until the
    // next arrival: 1760 - 1566 = 194 s each; none after period 9.
    let expect = 100u128 * u128::from((5 * 1760 + 4 * 194) * SEC);
    assert_eq!(st.wasted_mb_ns, expect);
}

#[test]
fn a_double_release_is_ignored() {
    let (s, _) = sched(PoolConfig::default(), &[("a", 2)]);
    let f = func("f", 10, Reuse::PerRequest);
    let p = s.schedule(&f).unwrap();
    s.release(&p, Outcome::Ok);
    s.release(&p, Outcome::Ok);
    let st = s.stats();
    assert_eq!((st.released, st.stale_releases, st.in_flight), (1, 1, 0));
    s.audit().unwrap();
}

#[test]
fn the_same_seed_gives_the_same_placements() {
    let run = |seed| {
        let nodes: Vec<(String, u32)> = (0..50).map(|i| (format!("n{i}"), 4)).collect();
        let refs: Vec<(&str, u32)> = nodes.iter().map(|(n, s)| (n.as_str(), *s)).collect();
        let (s, _) = sched(PoolConfig::default().with_seed(seed), &refs);
        (0..100)
            .map(|i| {
                s.schedule(&func(&format!("f{}", i % 7), 100, Reuse::PerRequest))
                    .unwrap()
            })
            .collect::<Vec<_>>()
    };
    assert_eq!(run(1), run(1));
    assert_ne!(run(1), run(2));
}
