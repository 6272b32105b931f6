//! faas-rofs
