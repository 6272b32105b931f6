//! faas-sandbox
