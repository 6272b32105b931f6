//! Properties of `PoolScheduler` under random sequences of operations:
//! capacity is never over-committed nor leaked, every placement is released
//! exactly once, and a dead node's placements are reported failed.

use std::sync::Arc;
use std::time::Duration;

use faas_core::{
    Admission, FunctionSpec, ImageRef, NodeId, NodeInfo, Outcome, Placement, Reuse, RuntimeKind,
    Scheduler, Ticket,
};
use faas_sched::{KeepAlivePolicy, ManualClock, PoolConfig, PoolScheduler};
use proptest::prelude::*;

const SEC: u64 = 1_000_000_000;

#[derive(Debug, Clone)]
enum Op {
    Place {
        f: usize,
        queued: bool,
    },
    Release {
        pick: usize,
        outcome: u8,
    },
    Advance {
        secs: u64,
    },
    Tick,
    Heartbeat {
        node: usize,
    },
    Remove {
        node: usize,
    },
    /// Adds back or grows a node (never below its first size: shrinking
    /// under load is tested in `stress.rs`).
    Add {
        node: usize,
        slots: u32,
    },
    TakeTickets,
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (0..4usize, any::<bool>()).prop_map(|(f, queued)| Op::Place { f, queued }),
        4 => (any::<usize>(), 0..4u8).prop_map(|(pick, outcome)| Op::Release { pick, outcome }),
        2 => (0..40u64).prop_map(|secs| Op::Advance { secs }),
        1 => Just(Op::Tick),
        2 => (0..3usize).prop_map(|node| Op::Heartbeat { node }),
        1 => (0..3usize).prop_map(|node| Op::Remove { node }),
        1 => (0..3usize, 3..6u32).prop_map(|(node, slots)| Op::Add { node, slots }),
        1 => Just(Op::TakeTickets),
    ]
}

fn functions() -> Vec<FunctionSpec> {
    (0..4)
        .map(|i| {
            let mut f = FunctionSpec::new(
                format!("f{i}"),
                RuntimeKind::Native,
                ImageRef::Dir("/x".into()),
                "x",
            );
            f.concurrency.max_instances = 1 + i as u32;
            f.concurrency.per_instance = 1 + (i as u32 % 2);
            f.limits.memory_mb = 64 * (1 + i as u32);
            f.reuse = if i == 0 {
                Reuse::PerRequest
            } else {
                Reuse::KeepAlive { idle_ms: 30_000 }
            };
            f
        })
        .collect()
}

fn node(i: usize) -> NodeId {
    NodeId(format!("n{i}"))
}

fn take_ready(tickets: &mut Vec<Ticket>, held: &mut Vec<Placement>) {
    for mut t in std::mem::take(tickets) {
        match t.try_take() {
            Some(Ok(p)) => held.push(p),
            Some(Err(_)) => {}
            None => tickets.push(t),
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

    #[test]
    fn capacity_is_never_overcommitted_or_leaked(ops in proptest::collection::vec(op(), 1..120), hybrid in any::<bool>()) {
        let clock = Arc::new(ManualClock::new(0));
        let policy = if hybrid { KeepAlivePolicy::hybrid() } else { KeepAlivePolicy::Fixed(Duration::from_secs(60)) };
        let cfg = PoolConfig::default()
            .with_keep_alive(policy)
            .with_queue(2, Duration::from_secs(20))
            .with_heartbeat_timeout(Duration::from_secs(60));
        let s = PoolScheduler::with_clock(cfg, clock.clone());
        for i in 0..3 {
            s.add_node(NodeInfo { id: node(i), slots: 3, memory_mb: 400 });
        }
        let fns = functions();
        let mut held: Vec<Placement> = Vec::new();
        let mut tickets: Vec<Ticket> = Vec::new();
        let mut released = 0u64;
        let mut failed = 0u64;
        for op in ops {
            match op {
                Op::Place { f, queued } => {
                    if queued {
                        match s.schedule_queued(&fns[f]) {
                            Ok(Admission::Placed(p)) => held.push(p),
                            Ok(Admission::Queued(t)) => tickets.push(t),
                            Err(_) => {}
                        }
                    } else if let Ok(p) = s.schedule(&fns[f]) {
                        held.push(p);
                    }
                }
                Op::Release { pick, outcome } => {
                    if !held.is_empty() {
                        let p = held.swap_remove(pick % held.len());
                        let o = [Outcome::Ok, Outcome::Failed, Outcome::TimedOut, Outcome::Cancelled][outcome as usize];
                        s.release(&p, o);
                        released += 1;
                    }
                }
                Op::Advance { secs } => clock.advance(secs * SEC),
                Op::Tick => {
                    // Placements handed to tickets are the caller's as well.
                    take_ready(&mut tickets, &mut held);
                    let report = s.tick();
                    for fp in report.failed {
                        // Every failed placement is one we hold, on a dead node.
                        prop_assert!(report.dead_nodes.contains(&fp.placement.node));
                        let pos = held.iter().position(|p| *p == fp.placement);
                        prop_assert!(pos.is_some(), "failed placement {:?} not held", fp.placement);
                        if let Some(pos) = pos {
                            held.swap_remove(pos);
                        }
                        failed += 1;
                    }
                    // Nothing is left on a node that died.
                    for d in &report.dead_nodes {
                        prop_assert!(held.iter().all(|p| &p.node != d));
                    }
                }
                Op::Heartbeat { node: n } => s.heartbeat(&node(n)),
                Op::Remove { node: n } => s.remove_node(&node(n)),
                Op::Add { node: n, slots } => s.add_node(NodeInfo { id: node(n), slots, memory_mb: 400 }),
                Op::TakeTickets => take_ready(&mut tickets, &mut held),
            }
            let audit = s.audit();
            prop_assert!(audit.is_ok(), "{:?}", audit);
            // Tickets that hold a placement count as in flight too.
            let st = s.stats();
            prop_assert!(st.in_flight >= held.len() as u64);
        }
        // Dropping the tickets gives unread placements back.
        drop(tickets);
        prop_assert_eq!(s.stats().in_flight, held.len() as u64);
        for p in held.drain(..) {
            s.release(&p, Outcome::Ok);
            released += 1;
        }
        let st = s.stats();
        prop_assert_eq!(st.in_flight, 0);
        prop_assert_eq!(st.failed_by_node, failed);
        // Every release we made was accepted exactly once; the only stale
        // ones are none: we never released a failed placement.
        prop_assert_eq!(st.stale_releases, 0);
        prop_assert!(st.released >= released);
        let audit = s.audit().map_err(|e| TestCaseError::fail(e.to_string()))?;
        prop_assert_eq!(audit.in_flight, 0);
        // Only idle kept-alive instances still hold capacity.
        prop_assert_eq!(audit.used_slots, audit.live_instances);
    }
}
