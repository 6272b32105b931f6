//! faas-gateway
