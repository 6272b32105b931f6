//! # faas-core
//!
//! The contracts of the faas crate family: the data that flows between the
//! components ([`types`]), the component traits, and the guest wire protocol
//! ([`protocol`]).
//!
//! ```text
//!  client ──HTTP──▶ function gateway ──Scheduler::schedule──▶ Placement
//!                        │
//!                        ▼
//!                   NodeGateway::invoke ──SandboxRuntime::launch──▶ Instance
//!                        ▲                   (or Snapshotter::restore)
//!                        └──── guest protocol on fd 3 (Ready/Invoke/Result) ──┘
//!                   ImageFs: the function's read-only files, mapped, shared
//! ```
//!
//! | trait | role | memory-only? |
//! |---|---|---|
//! | [`Scheduler`] | place a request on a node slot; release it after | yes: synchronous |
//! | [`NodeGateway`] | run a placed request on an instance | no: async |
//! | [`SandboxRuntime`] | launch an isolated [`Instance`] | no: async |
//! | [`ImageFs`] | zero-copy read-only access to a function image | yes: synchronous |
//! | [`Snapshotter`] | checkpoint a process, restore it | no: async |
//!
//! This crate holds no unsafe code and starts no async runtime; the async
//! traits return boxed `Send` futures so they work as `dyn` objects.
#![forbid(unsafe_code)]

mod image;
mod node;
pub mod protocol;
mod sandbox;
mod scheduler;
mod snapshot;
pub mod ticket;
pub mod types;

pub use image::{DirEntry, FileExtent, FileType, ImageError, ImageFs, Ino, Stat};
pub use node::{InvokeError, NodeGateway};
pub use sandbox::{
    ExitStatus, Instance, LaunchError, LimitExceeded, SandboxPolicy, SandboxRuntime, SandboxSpec,
    Stdio,
};
pub use scheduler::{Admission, ScheduleError, Scheduler};
pub use snapshot::{RestoreSpec, SnapshotError, SnapshotInfo, Snapshotter};
pub use ticket::{Ticket, TicketSender};
pub use types::{
    Concurrency, FunctionSpec, ImageRef, Invocation, InvocationId, InvocationResult, Limits,
    NodeId, NodeInfo, Outcome, Placement, Reuse, RuntimeKind, SpecError, StartMode, Timings,
    UnixMillis,
};

/// A boxed, `Send` future: what the async trait methods return.
pub type BoxFuture<'a, T> = std::pin::Pin<Box<dyn std::future::Future<Output = T> + Send + 'a>>;
