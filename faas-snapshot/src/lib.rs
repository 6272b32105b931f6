//! # faas-snapshot
//!
//! The home of the reference [`faas_core::Snapshotter`]: CRIU-style
//! checkpoint/restore of a function runtime stopped at its snapshot point
//! (DESIGN.md §6), and template fork.
//!
//! This release contains no implementation yet: the contract (the
//! `Snapshotter` trait, `SnapshotInfo`, `RestoreSpec`, `SnapshotError`) lives
//! in `faas-core`, and the platform starts every instance cold until the
//! ptrace-based snapshotter lands here.
#![forbid(unsafe_code)]
