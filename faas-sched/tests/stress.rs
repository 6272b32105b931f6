//! Many threads schedule and release at once, while another ticks, sends
//! heartbeats and changes membership: no slot is ever handed out twice, no
//! node goes over capacity, and nothing leaks.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use faas_core::{
    Admission, FunctionSpec, ImageRef, NodeId, NodeInfo, Outcome, Placement, Reuse, RuntimeKind,
    Scheduler,
};
use faas_sched::{KeepAlivePolicy, PoolConfig, PoolScheduler, Rng};
use parking_lot::Mutex;

const NODES: usize = 6;
const SLOTS: u32 = 4;

#[test]
fn concurrent_decisions_never_overcommit_or_leak() {
    let cfg = PoolConfig::default()
        .with_keep_alive(KeepAlivePolicy::Fixed(Duration::from_millis(2)))
        .with_queue(4, Duration::from_millis(5));
    let s = Arc::new(PoolScheduler::new(cfg));
    for i in 0..NODES {
        s.add_node(NodeInfo {
            id: NodeId(format!("n{i}")),
            slots: SLOTS,
            memory_mb: 1 << 20,
        });
    }
    // Every (node, slot) held by a placement, across threads: inserting a duplicate means a slot was
    // handed out twice.
    let exclusive: Arc<Mutex<HashSet<(NodeId, u32)>>> = Arc::default();
    let stop = Arc::new(AtomicBool::new(false));
    let fns: Arc<Vec<FunctionSpec>> = Arc::new(
        (0..6)
            .map(|i| {
                let mut f = FunctionSpec::new(
                    format!("f{i}"),
                    RuntimeKind::Native,
                    ImageRef::Dir("/x".into()),
                    "x",
                );
                f.concurrency.max_instances = 3 + i;
                f.reuse = if i % 2 == 0 {
                    Reuse::PerRequest
                } else {
                    Reuse::KeepAlive { idle_ms: 0 }
                };
                f
            })
            .collect(),
    );
    let workers: Vec<_> = (0..4)
        .map(|w| {
            let (s, fns, exclusive) = (s.clone(), fns.clone(), exclusive.clone());
            std::thread::spawn(move || {
                let mut rng = Rng::new(w);
                let mut held: Vec<(Placement, bool)> = Vec::new();
                for _ in 0..20_000 {
                    if held.len() < 8 && rng.below(2) == 0 {
                        let f = &fns[rng.below(fns.len() as u64) as usize];
                        // One request per instance: every placement owns its slot.
                        let excl = f.concurrency.per_instance == 1;
                        let p = match s.schedule_queued(f) {
                            Ok(Admission::Placed(p)) => Some(p),
                            Ok(Admission::Queued(t)) => {
                                if rng.below(2) == 0 {
                                    t.wait_timeout(Duration::from_millis(1)).ok()
                                } else {
                                    None // dropped: the placement, if any, comes back
                                }
                            }
                            Err(_) => None,
                        };
                        if let Some(p) = p {
                            if excl {
                                assert!(
                                    exclusive.lock().insert((p.node.clone(), p.slot)),
                                    "slot handed out twice: {p:?}"
                                );
                            }
                            held.push((p, excl));
                        }
                    } else if !held.is_empty() {
                        let (p, excl) = held.swap_remove(rng.below(held.len() as u64) as usize);
                        if excl {
                            exclusive.lock().remove(&(p.node.clone(), p.slot));
                        }
                        let outcome = if rng.below(10) == 0 {
                            Outcome::Failed
                        } else {
                            Outcome::Ok
                        };
                        s.release(&p, outcome);
                    }
                }
                for (p, excl) in held {
                    if excl {
                        exclusive.lock().remove(&(p.node.clone(), p.slot));
                    }
                    s.release(&p, Outcome::Ok);
                }
            })
        })
        .collect();
    let house = {
        let (s, stop) = (s.clone(), stop.clone());
        std::thread::spawn(move || {
            let mut k = 0u64;
            while !stop.load(Ordering::Relaxed) {
                s.tick();
                let n = NodeId(format!("n{}", k % NODES as u64));
                s.heartbeat(&n);
                // Grow and shrink one node's pool now and then.
                s.add_node(NodeInfo {
                    id: n,
                    slots: SLOTS - (k % 2) as u32,
                    memory_mb: 1 << 20,
                });
                k += 1;
                std::thread::sleep(Duration::from_micros(200));
            }
            for i in 0..NODES {
                s.add_node(NodeInfo {
                    id: NodeId(format!("n{i}")),
                    slots: SLOTS,
                    memory_mb: 1 << 20,
                });
            }
        })
    };
    for w in workers {
        w.join().unwrap();
    }
    stop.store(true, Ordering::Relaxed);
    house.join().unwrap();
    let st = s.stats();
    assert_eq!(st.in_flight, 0, "{st:?}");
    assert_eq!(st.stale_releases, 0, "{st:?}");
    assert!(st.placed > 10_000, "{st:?}");
    let audit = s.audit().unwrap();
    assert_eq!(audit.in_flight, 0);
    // Only idle kept-alive instances may still hold slots; once they expire
    // every slot is back.
    std::thread::sleep(Duration::from_millis(5));
    s.tick();
    let audit = s.audit().unwrap();
    assert_eq!(audit.used_slots, 0, "{audit:?}");
    assert_eq!(audit.live_instances, 0);
}
