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
//! [`PooledSandboxRuntime`] is the platform default: namespaced,
//! cgroup-limited, seccomp-filtered sandboxes, set up ahead of time (parked
//! before their exec) and handed fds 0-3 and a program, or, for
//! [`faas_core::StartMode::Restore`], a `faas-snapshot` snapshot that its
//! restorer rebuilds inside the sandbox:
//!
//! ```text
//! parked sandbox ──(fds 0-3, restorer exe, plan socket)──▶ execveat(restorer)
//!   restorer: plan ─▶ memory, registers, ... ─▶ the sandbox's seccomp filters ─▶ guest
//! ```
//!
//! Most restored instances are restored *ahead* of their request: they
//! wait with the guest rebuilt and the sandbox's filters installed, and a
//! request only hands them fds 0-3. Two keeper threads at nice 10 refill
//! the pools; what they make stays at nice 10 until a request takes it. A
//! sandbox's network namespace and cgroups go, once all its processes have
//! exited, to the next sandbox of the same kind (same root and limits: in
//! the platform, the same function version), never to another kind.
//! `faas_sandbox_events_total` (metrics) counts which pool served each
//! launch.
//!
//! For [`faas_core::StartMode::Fork`] one such sandbox per snapshot and
//! kind of sandbox runs the restorer as a *fork template*, and each launch
//! is a fork of it (`fork` module): instances of one function then share
//! that sandbox's cgroup limits (together), `/tmp` and network namespace,
//! and are isolated from each other as processes only.
//!
//! [`ProcessRuntime`] is a plain child process, **not isolated, for
//! development only**.
//!
//! Unsafe code (clone3 into namespaces, the child's set-up up to its exec,
//! the `pre_exec` hook that places the channel at fd 3) lives in the `sys`
//! module only.

pub mod cgroup;
mod fork;
mod process;
mod runtime;
pub mod seccomp;
mod sys;

pub use process::ProcessRuntime;
pub use runtime::{PooledSandboxRuntime, SandboxConfig, SandboxInitError};
