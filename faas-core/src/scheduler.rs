//! The [`Scheduler`] trait: per-request placement.

use std::time::Duration;

use crate::ticket::Ticket;
use crate::types::{FunctionSpec, NodeId, NodeInfo, Outcome, Placement};

/// The answer of [`Scheduler::schedule_queued`]: placed now, or waiting in
/// the function's queue.
#[derive(Debug)]
pub enum Admission {
    /// Placed now.
    Placed(Placement),
    /// At the function's limit, queued: the ticket resolves to a placement
    /// when a slot frees up, or to an error when the wait is over.
    Queued(Ticket),
}

/// Why a request could not be placed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleError {
    /// The function already has its maximum number of requests in flight.
    #[error("function {function} is at its concurrency limit of {limit}")]
    OverLimit {
        /// The function.
        function: String,
        /// Its limit.
        limit: u32,
        /// When a retry is likely to succeed.
        retry_after: Duration,
    },
    /// Every node is full.
    #[error("no capacity: all {slots} slots of {nodes} node(s) are in use")]
    NoCapacity {
        /// Healthy nodes.
        nodes: usize,
        /// Their slots in total.
        slots: u64,
        /// When a retry is likely to succeed.
        retry_after: Duration,
    },
    /// No healthy node is registered.
    #[error("no healthy node is registered")]
    NoNodes,
}

impl ScheduleError {
    /// The suggested wait before a retry, if one may succeed.
    pub fn retry_after(&self) -> Option<Duration> {
        match self {
            ScheduleError::OverLimit { retry_after, .. }
            | ScheduleError::NoCapacity { retry_after, .. } => Some(*retry_after),
            ScheduleError::NoNodes => None,
        }
    }
}

/// Places every request on a node slot, enforcing per-function concurrency
/// and node capacity, and gets each placement back with its outcome.
///
/// The decision is memory-only and on the path of every request, so the
/// methods are synchronous and must not block; implementations are called
/// from many threads at once.
///
/// # Example
///
/// A scheduler for one node that admits at most `slots` requests at a time:
///
/// ```
/// use std::sync::atomic::{AtomicU32, Ordering};
/// use std::time::Duration;
/// use faas_core::{FunctionSpec, NodeId, NodeInfo, Outcome, Placement, ScheduleError, Scheduler};
///
/// struct OneNode { node: NodeId, slots: u32, used: AtomicU32 }
///
/// impl Scheduler for OneNode {
///     fn add_node(&self, _node: NodeInfo) {}
///     fn remove_node(&self, _node: &NodeId) {}
///     fn schedule(&self, f: &FunctionSpec) -> Result<Placement, ScheduleError> {
///         let slot = self.used.fetch_add(1, Ordering::AcqRel);
///         if slot >= self.slots {
///             self.used.fetch_sub(1, Ordering::AcqRel);
///             return Err(ScheduleError::NoCapacity {
///                 nodes: 1, slots: self.slots.into(), retry_after: Duration::from_millis(10),
///             });
///         }
///         Ok(Placement { node: self.node.clone(), slot, function: f.name.clone() })
///     }
///     fn release(&self, _p: &Placement, _o: Outcome) {
///         self.used.fetch_sub(1, Ordering::AcqRel);
///     }
/// }
///
/// let s = OneNode { node: NodeId("n1".into()), slots: 1, used: AtomicU32::new(0) };
/// let f = FunctionSpec::new("f", faas_core::RuntimeKind::Native,
///     faas_core::ImageRef::Dir("/srv/f".into()), "f");
/// let p = s.schedule(&f).unwrap();
/// assert!(s.schedule(&f).is_err());
/// s.release(&p, Outcome::Ok);
/// assert!(s.schedule(&f).is_ok());
/// ```
pub trait Scheduler: Send + Sync {
    /// Adds a node (or updates its capacity).
    fn add_node(&self, node: NodeInfo);

    /// Removes a node: it gets no new work.
    fn remove_node(&self, node: &NodeId);

    /// Chooses a node and slot for one request of `function`.
    ///
    /// # Errors
    ///
    /// [`ScheduleError::OverLimit`] at the function's concurrency limit,
    /// [`ScheduleError::NoCapacity`] when every node is full,
    /// [`ScheduleError::NoNodes`] when there is no healthy node.
    fn schedule(&self, function: &FunctionSpec) -> Result<Placement, ScheduleError>;

    /// Gives the slot of a finished request back. Called exactly once per
    /// successful [`Scheduler::schedule`].
    fn release(&self, placement: &Placement, outcome: Outcome);

    /// Like [`Scheduler::schedule`], but at the function's concurrency limit
    /// the request may wait in a bounded queue instead of being refused.
    /// The default never queues.
    ///
    /// # Errors
    ///
    /// As [`Scheduler::schedule`]; [`ScheduleError::OverLimit`] when the
    /// queue is full too.
    fn schedule_queued(&self, function: &FunctionSpec) -> Result<Admission, ScheduleError> {
        self.schedule(function).map(Admission::Placed)
    }

    /// A node reports that it is alive. Schedulers that track node health
    /// by heartbeat deadline use it; the default ignores it.
    fn heartbeat(&self, node: &NodeId) {
        let _ = node;
    }
}

impl<T: Scheduler + ?Sized> Scheduler for std::sync::Arc<T> {
    fn add_node(&self, node: NodeInfo) {
        (**self).add_node(node)
    }
    fn remove_node(&self, node: &NodeId) {
        (**self).remove_node(node)
    }
    fn schedule(&self, function: &FunctionSpec) -> Result<Placement, ScheduleError> {
        (**self).schedule(function)
    }
    fn release(&self, placement: &Placement, outcome: Outcome) {
        (**self).release(placement, outcome)
    }
    fn schedule_queued(&self, function: &FunctionSpec) -> Result<Admission, ScheduleError> {
        (**self).schedule_queued(function)
    }
    fn heartbeat(&self, node: &NodeId) {
        (**self).heartbeat(node)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn _object_safe(_: &dyn Scheduler) {}

    #[test]
    fn retry_after_is_reported_for_retryable_errors() {
        let e = ScheduleError::OverLimit {
            function: "f".into(),
            limit: 2,
            retry_after: Duration::from_secs(1),
        };
        assert_eq!(e.retry_after(), Some(Duration::from_secs(1)));
        assert_eq!(ScheduleError::NoNodes.retry_after(), None);
        assert_eq!(e.to_string(), "function f is at its concurrency limit of 2");
    }
}
