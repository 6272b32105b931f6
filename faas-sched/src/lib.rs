//! faas-sched
