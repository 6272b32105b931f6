//! faas-guest
