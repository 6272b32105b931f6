//! # faas-sandbox
//!
//! Implementations of [`faas_core::SandboxRuntime`]: they turn a
//! [`faas_core::SandboxSpec`] into a running [`faas_core::Instance`] whose
//! fd 3 is its guest channel.
//!
//! ```text
//! SandboxSpec { root, program, env, limits, channel, stdio }
//!        │ launch()
//!        ▼
//!   child process: fd 0-2 = stdio, fd 3 = channel, cwd = root, env = spec.env
//!        │
//!        ▼
//!   Instance { pid, wait(), kill() }   (dropping it kills the process group)
//! ```
//!
//! Only [`ProcessRuntime`] exists so far: a plain child process, **not
//! isolated, for development only**. The namespaced, seccomp-filtered,
//! pooled runtime replaces it as the platform default.
//!
//! Unsafe code (the `pre_exec` hook that places the channel at fd 3) lives in
//! the `sys` module only.

pub mod cgroup;
mod process;
mod runtime;
pub mod seccomp;
mod sys;

pub use process::ProcessRuntime;
pub use runtime::{PooledSandboxRuntime, SandboxConfig, SandboxInitError};
