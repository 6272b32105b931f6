//! faas-snapshot
