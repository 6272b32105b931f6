//! [`LocalScheduler`]: slot pools per node, first fit, per-function limits.

use std::collections::HashMap;
use std::time::Duration;

use faas_core::{FunctionSpec, NodeId, NodeInfo, Outcome, Placement, ScheduleError, Scheduler};
use parking_lot::Mutex;

/// Suggested wait before retrying a refused request.
const RETRY_AFTER: Duration = Duration::from_secs(1);

struct Node {
    id: NodeId,
    slots: u32,
    /// Free slot numbers; the most recently released is reused first.
    free: Vec<u32>,
}

#[derive(Default)]
struct State {
    nodes: Vec<Node>,
    /// In-flight requests per function.
    in_flight: HashMap<String, u32>,
    stats: SchedulerStats,
}

/// Counters of a [`LocalScheduler`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SchedulerStats {
    /// Successful placements.
    pub placed: u64,
    /// Refusals at a function's concurrency limit.
    pub over_limit: u64,
    /// Refusals because every slot was in use.
    pub no_capacity: u64,
    /// Releases.
    pub released: u64,
    /// Slots in use now.
    pub in_use: u64,
}

/// A scheduler for a small, fixed set of nodes, each with a pool of instance
/// slots: first fit over the nodes in the order they were added, and
/// per-function concurrency limits (`FunctionSpec::concurrency.max_instances`).
///
/// One mutex guards the state; a decision takes well under a microsecond,
/// which is plenty for one machine (the pool scheduler of a later release
/// shards this for clusters).
///
/// ```
/// use faas_core::{FunctionSpec, ImageRef, NodeId, NodeInfo, Outcome, RuntimeKind, Scheduler};
/// use faas_sched::LocalScheduler;
///
/// let s = LocalScheduler::new();
/// s.add_node(NodeInfo { id: NodeId("local".into()), slots: 2, memory_mb: 1024 });
/// let mut f = FunctionSpec::new("f", RuntimeKind::Native, ImageRef::Dir("/srv/f".into()), "f");
/// f.concurrency.max_instances = 1;
/// let p = s.schedule(&f).unwrap();
/// assert!(s.schedule(&f).is_err()); // over the function's limit
/// s.release(&p, Outcome::Ok);
/// assert!(s.schedule(&f).is_ok());
/// ```
#[derive(Default)]
pub struct LocalScheduler {
    state: Mutex<State>,
}

impl LocalScheduler {
    /// A scheduler with no nodes.
    pub fn new() -> Self {
        Self::default()
    }

    /// A snapshot of the counters.
    pub fn stats(&self) -> SchedulerStats {
        self.state.lock().stats
    }

    /// Requests of `function` in flight now.
    pub fn in_flight(&self, function: &str) -> u32 {
        self.state
            .lock()
            .in_flight
            .get(function)
            .copied()
            .unwrap_or(0)
    }
}

impl Scheduler for LocalScheduler {
    fn add_node(&self, node: NodeInfo) {
        let mut st = self.state.lock();
        if let Some(n) = st.nodes.iter_mut().find(|n| n.id == node.id) {
            // Grow or shrink the pool; slots in use above the new size are
            // dropped when released.
            if node.slots > n.slots {
                n.free.extend((n.slots..node.slots).rev());
            } else {
                n.free.retain(|s| *s < node.slots);
            }
            n.slots = node.slots;
        } else {
            st.nodes.push(Node {
                id: node.id,
                slots: node.slots,
                free: (0..node.slots).rev().collect(),
            });
        }
    }

    fn remove_node(&self, node: &NodeId) {
        self.state.lock().nodes.retain(|n| &n.id != node);
    }

    fn schedule(&self, function: &FunctionSpec) -> Result<Placement, ScheduleError> {
        let mut st = self.state.lock();
        if st.nodes.is_empty() {
            return Err(ScheduleError::NoNodes);
        }
        let limit = function.concurrency.max_instances;
        let cur = st.in_flight.get(&function.name).copied().unwrap_or(0);
        if cur >= limit {
            st.stats.over_limit += 1;
            return Err(ScheduleError::OverLimit {
                function: function.name.clone(),
                limit,
                retry_after: RETRY_AFTER,
            });
        }
        let Some((node, slot)) = st
            .nodes
            .iter_mut()
            .find_map(|n| n.free.pop().map(|s| (n.id.clone(), s)))
        else {
            st.stats.no_capacity += 1;
            let slots = st.nodes.iter().map(|n| u64::from(n.slots)).sum();
            return Err(ScheduleError::NoCapacity {
                nodes: st.nodes.len(),
                slots,
                retry_after: RETRY_AFTER,
            });
        };
        *st.in_flight.entry(function.name.clone()).or_insert(0) += 1;
        st.stats.placed += 1;
        st.stats.in_use += 1;
        Ok(Placement {
            node,
            slot,
            function: function.name.clone(),
        })
    }

    fn release(&self, placement: &Placement, _outcome: Outcome) {
        let mut st = self.state.lock();
        if let Some(n) = st.in_flight.get_mut(&placement.function) {
            *n = n.saturating_sub(1);
            if *n == 0 {
                st.in_flight.remove(&placement.function);
            }
        }
        if let Some(n) = st.nodes.iter_mut().find(|n| n.id == placement.node)
            && placement.slot < n.slots
            && !n.free.contains(&placement.slot)
        {
            n.free.push(placement.slot);
        }
        st.stats.released += 1;
        st.stats.in_use = st.stats.in_use.saturating_sub(1);
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use faas_core::{ImageRef, RuntimeKind};

    use super::*;

    fn node(id: &str, slots: u32) -> NodeInfo {
        NodeInfo {
            id: NodeId(id.into()),
            slots,
            memory_mb: 1024,
        }
    }

    fn func(name: &str, max: u32) -> FunctionSpec {
        let mut f = FunctionSpec::new(name, RuntimeKind::Native, ImageRef::Dir("/x".into()), "x");
        f.concurrency.max_instances = max;
        f
    }

    #[test]
    fn no_nodes_is_an_error() {
        assert_eq!(
            LocalScheduler::new().schedule(&func("f", 1)),
            Err(ScheduleError::NoNodes)
        );
    }

    #[test]
    fn slots_are_unique_and_come_back() {
        let s = LocalScheduler::new();
        s.add_node(node("a", 3));
        let f = func("f", 10);
        let ps: Vec<_> = (0..3).map(|_| s.schedule(&f).unwrap()).collect();
        let mut slots: Vec<_> = ps.iter().map(|p| p.slot).collect();
        slots.sort_unstable();
        assert_eq!(slots, [0, 1, 2]);
        assert!(matches!(
            s.schedule(&f),
            Err(ScheduleError::NoCapacity {
                nodes: 1,
                slots: 3,
                ..
            })
        ));
        s.release(&ps[1], Outcome::Ok);
        assert_eq!(s.schedule(&f).unwrap().slot, ps[1].slot);
    }

    #[test]
    fn first_fit_spills_to_the_next_node() {
        let s = LocalScheduler::new();
        s.add_node(node("a", 1));
        s.add_node(node("b", 1));
        let f = func("f", 10);
        assert_eq!(s.schedule(&f).unwrap().node.0, "a");
        assert_eq!(s.schedule(&f).unwrap().node.0, "b");
    }

    #[test]
    fn function_limit_is_per_function() {
        let s = LocalScheduler::new();
        s.add_node(node("a", 10));
        let p = s.schedule(&func("f", 1)).unwrap();
        assert!(matches!(
            s.schedule(&func("f", 1)),
            Err(ScheduleError::OverLimit { limit: 1, .. })
        ));
        assert!(s.schedule(&func("g", 1)).is_ok());
        s.release(&p, Outcome::Failed);
        assert_eq!(s.in_flight("f"), 0);
        assert!(s.schedule(&func("f", 1)).is_ok());
    }

    #[test]
    fn removed_node_gets_no_work() {
        let s = LocalScheduler::new();
        s.add_node(node("a", 1));
        s.add_node(node("b", 1));
        s.remove_node(&NodeId("a".into()));
        assert_eq!(s.schedule(&func("f", 5)).unwrap().node.0, "b");
    }

    #[test]
    fn concurrent_schedulers_never_overcommit_or_leak() {
        let s = Arc::new(LocalScheduler::new());
        s.add_node(node("a", 8));
        let f = Arc::new(func("f", 6));
        let max_seen = Arc::new(std::sync::atomic::AtomicU32::new(0));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let (s, f, max_seen) = (s.clone(), f.clone(), max_seen.clone());
                std::thread::spawn(move || {
                    for _ in 0..2000 {
                        if let Ok(p) = s.schedule(&f) {
                            max_seen
                                .fetch_max(s.in_flight("f"), std::sync::atomic::Ordering::Relaxed);
                            s.release(&p, Outcome::Ok);
                        }
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        assert!(max_seen.load(std::sync::atomic::Ordering::Relaxed) <= 6);
        let st = s.stats();
        assert_eq!(st.in_use, 0);
        assert_eq!(st.placed, st.released);
        assert_eq!(s.in_flight("f"), 0);
    }
}
