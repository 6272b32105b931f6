//! The restore plan: what `faas-snapshot` sends the restorer, and the only
//! interface between them.
//!
//! This file is compiled twice: into the restorer (`no_std`) and into
//! faas-snapshot (`#[path]` module), so both sides agree on every byte. A plan
//! is one message on fd [`PLAN_FD`]: a [`Header`], then `n_areas` [`Area`]s,
//! `n_sigactions` [`SigAction`]s, `n_filter` seccomp instructions (8 bytes
//! each), `frame_len` bytes of signal frame, and `n_prefault` [`Range`]s
//! (only in a [`MODE_PARKED`] plan). The file descriptors the
//! areas map from travel with it (SCM_RIGHTS) and are numbered by their
//! position in that message.
//!
//! Before the plan comes one [`IoMessage`] with the guest's fds 0–3, so a
//! restorer can be started ahead of time, before anyone knows which
//! snapshot it will restore or whose descriptors it will hold.
//!
//! All fields are native-endian `u64`/`u32`s; the layout is `#[repr(C)]` with
//! no implicit padding.

/// The restorer receives its plan on this descriptor (a SOCK_SEQPACKET
/// socket), and closes it and every descriptor above 3 before the guest runs.
pub const PLAN_FD: i32 = 4;

/// `b"FAASPLAN"` read as a little-endian u64.
pub const PLAN_MAGIC: u64 = u64::from_le_bytes(*b"FAASPLAN");

/// Bumped whenever the layout changes; the build embeds the restorer, so both
/// sides always come from the same build.
pub const PLAN_VERSION: u32 = 7;

/// [`Header::no_new_privs`]: the restorer sets no_new_privs before the
/// filters.
pub const NO_NEW_PRIVS: u32 = 1;

/// [`Header::no_new_privs`]: an instance restored ahead (`MODE_PARKED`)
/// installs the filters before it waits for its guest's fds, not after;
/// set only when they allow what the restorer does from then on.
pub const FILTERS_BEFORE_PARK: u32 = 2;

/// The largest plan the restorer accepts, in bytes.
pub const PLAN_MAX: usize = 192 * 1024;

/// The most descriptors one plan passes.
pub const MAX_FDS: usize = 250;

/// Words of auxv the kernel keeps (`AT_VECTOR_SIZE` on x86-64 is 2 * (2 + 20 + 24)).
pub const AUXV_WORDS: usize = 64;

/// `Area::fd` of an anonymous mapping.
pub const ANON: u32 = u32::MAX;

/// The three kernel-provided areas, in address order.
pub const VDSO_PARTS: usize = 3;

/// One of `[vvar]`, `[vvar_vclock]`, `[vdso]`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VdsoPart {
    /// Where the running kernel put it, relative to the vDSO base
    /// (`AT_SYSINFO_EHDR`); the same for every process on one kernel.
    pub offset: i64,
    /// Its length; 0 when this kernel has no such area.
    pub len: u64,
    /// Where the snapshot had it.
    pub target: u64,
}

/// The fields of `struct prctl_mm_map` (PR_SET_MM_MAP), without auxv.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct MmFields {
    /// `start_code`.
    pub start_code: u64,
    /// `end_code`.
    pub end_code: u64,
    /// `start_data`.
    pub start_data: u64,
    /// `end_data`.
    pub end_data: u64,
    /// `start_brk`.
    pub start_brk: u64,
    /// The current program break.
    pub brk: u64,
    /// `start_stack`.
    pub start_stack: u64,
    /// `arg_start`.
    pub arg_start: u64,
    /// `arg_end`.
    pub arg_end: u64,
    /// `env_start`.
    pub env_start: u64,
    /// `env_end`.
    pub env_end: u64,
}

/// The plan's fixed part.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Header {
    /// [`PLAN_MAGIC`].
    pub magic: u64,
    /// [`PLAN_VERSION`].
    pub version: u32,
    /// Areas that follow.
    pub n_areas: u32,
    /// Signal actions that follow.
    pub n_sigactions: u32,
    /// 8-byte words of seccomp programs that follow (0: no filter); each
    /// program is its instruction count (one word), then its instructions.
    pub n_filter: u32,
    /// Bytes of signal frame that follow.
    pub frame_len: u32,
    /// Offset of the xsave area inside the frame (64-byte aligned).
    pub frame_fpstate: u32,
    /// Where the frame goes (in a writable area of the snapshot, below the
    /// saved stack pointer and its red zone; 64-byte aligned).
    pub frame_addr: u64,
    /// vvar, vvar_vclock, vdso.
    pub vdso: [VdsoPart; VDSO_PARTS],
    /// A free range, as long as the three vDSO parts together, that collides
    /// with neither the snapshot nor the restorer: a stop-over when the
    /// running vDSO overlaps its destination.
    pub scratch: u64,
    /// mm fields for PR_SET_MM_MAP.
    pub mm: MmFields,
    /// Words of `auxv` in use (even).
    pub auxv_len: u32,
    /// Flags: [`NO_NEW_PRIVS`], [`FILTERS_BEFORE_PARK`].
    pub no_new_privs: u32,
    /// The saved auxv.
    pub auxv: [u64; AUXV_WORDS],
    /// `fs_base`.
    pub fs_base: u64,
    /// `gs_base`.
    pub gs_base: u64,
    /// The rseq area (0: none).
    pub rseq: u64,
    /// Its registered length.
    pub rseq_len: u32,
    /// Its signature.
    pub rseq_sig: u32,
    /// The robust futex list head (0: none).
    pub robust_list: u64,
    /// Its length.
    pub robust_len: u64,
    /// The clear-child-tid address.
    pub clear_tid: u64,
    /// [`MODE_RESTORE`], [`MODE_TEMPLATE`] or [`MODE_PARKED`].
    pub mode: u32,
    /// [`Range`]s that follow the frame: the snapshot's recorded working
    /// set, which a [`MODE_PARKED`] restorer pre-faults (for writing:
    /// `MADV_POPULATE_WRITE`; or reading: a one-byte read per page) before it
    /// waits for its guest's fds, so the request does not take those
    /// faults. Other modes ignore them.
    pub n_prefault: u32,
}

/// A page-aligned range of the guest's memory to fault in ahead.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Range {
    /// Start address (page aligned).
    pub start: u64,
    /// Length (page aligned, non-zero).
    pub len: u64,
    /// [`POPULATE_WRITE`] (pages a request writes: copy-on-write broken
    /// now) or [`POPULATE_READ`] (pages it only reads: mapped now).
    pub advice: u32,
    /// Zero.
    pub pad: u32,
}

/// [`Range::advice`]: `MADV_POPULATE_WRITE`.
pub const POPULATE_WRITE: u32 = 23;
/// [`Range::advice`]: mapped for reading (a one-byte read of every page; the
/// value is `MADV_POPULATE_READ`'s number).
pub const POPULATE_READ: u32 = 22;

/// Restore once and become the guest.
pub const MODE_RESTORE: u32 = 0;
/// Restore, then stay parked as a fork template: every [`ForkCommand`]
/// received on [`PLAN_FD`] forks a child that becomes the guest.
pub const MODE_TEMPLATE: u32 = 1;
/// Restore, then wait on [`PLAN_FD`] for one [`ForkCommand`] (its
/// `clone_flags` ignored) carrying the guest's fds 0–3, and become the
/// guest with them: an instance restored ahead of its request.
pub const MODE_PARKED: u32 = 2;

/// The first message a restorer receives: the guest's fds 0–3 (those whose
/// bit is set in `fds`, in order, as SCM_RIGHTS) and its working directory
/// (`cwd_len` bytes after this struct; 0: keep the restorer's).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct IoMessage {
    /// [`IO_MAGIC`].
    pub magic: u64,
    /// Bit i set: a descriptor for fd i travels with the message.
    pub fds: u64,
    /// Bytes of working directory path that follow.
    pub cwd_len: u64,
}

/// `b"FAASIO\0\0"` read as a little-endian u64.
pub const IO_MAGIC: u64 = u64::from_le_bytes(*b"FAASIO\0\0");

/// The longest working directory an [`IoMessage`] carries.
pub const CWD_MAX: usize = 4096;

/// A command to a template ([`MODE_TEMPLATE`]), or the guest's fds to an
/// instance restored ahead ([`MODE_PARKED`], which reads only `fds`).
///
/// [`FORK_CHILD`]: fork a child with fds 0–3 (those whose bit is set in
/// `fds`, in order) as SCM_RIGHTS. The template answers with one `i64`:
/// the child's pid (with its pidfd as SCM_RIGHTS) or `-errno`.
///
/// [`REAP_CHILD`]: reap the exited child `pid` (its pid as the template
/// sees it, from the fork's answer); no answer. A template that is pid 1 of
/// its pid namespace (inside a sandbox) forks its own children, since the
/// kernel refuses `CLONE_PARENT` there, and reaps only the children it is
/// told to reap: until then each stays a zombie whose exit status its owner
/// reads (`/proc/PID/stat`). Elsewhere the children are the template
/// owner's (`CLONE_PARENT`) and `REAP_CHILD` does nothing.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ForkCommand {
    /// Extra `clone` flags (the `CLONE_NEW*` namespaces to create).
    pub clone_flags: u64,
    /// Bit i set: a descriptor for fd i travels with the command.
    pub fds: u64,
    /// [`FORK_CHILD`] or [`REAP_CHILD`].
    pub kind: u32,
    /// [`REAP_CHILD`]: the child to reap.
    pub pid: u32,
}

/// [`ForkCommand::kind`]: fork a child.
pub const FORK_CHILD: u32 = 0;
/// [`ForkCommand::kind`]: reap an exited child.
pub const REAP_CHILD: u32 = 1;

/// One mapping to create.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Area {
    /// Start address (page aligned).
    pub start: u64,
    /// Length (page aligned, non-zero).
    pub len: u64,
    /// Offset in the file (page aligned).
    pub offset: u64,
    /// `PROT_*`.
    pub prot: u32,
    /// `MAP_*` without MAP_FIXED (the restorer adds it).
    pub flags: u32,
    /// Index of the descriptor in the plan's message, or [`ANON`].
    pub fd: u32,
    /// `MADV_*` to apply after mapping, 0 for none.
    pub advice: u32,
}

/// One `rt_sigaction` to perform (`struct kernel_sigaction` layout after
/// `signo`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct SigAction {
    /// The signal.
    pub signo: u64,
    /// `sa_handler`.
    pub handler: u64,
    /// `sa_flags`.
    pub flags: u64,
    /// `sa_restorer`.
    pub restorer: u64,
    /// `sa_mask`.
    pub mask: u64,
}

/// Bytes of the fixed part.
pub const HEADER_LEN: usize = core::mem::size_of::<Header>();
/// Bytes per area.
pub const AREA_LEN: usize = core::mem::size_of::<Area>();
/// Bytes per signal action.
pub const SIGACTION_LEN: usize = core::mem::size_of::<SigAction>();
/// Bytes per pre-fault range.
pub const RANGE_LEN: usize = core::mem::size_of::<Range>();
/// Bytes per seccomp instruction (`struct sock_filter`).
pub const FILTER_INSN_LEN: usize = 8;

/// Exit statuses of a restorer that gave up (it also writes one line to
/// fd 2 saying why).
pub mod exit {
    /// No plan could be received.
    pub const NO_PLAN: i32 = 120;
    /// The plan is malformed.
    pub const BAD_PLAN: i32 = 121;
    /// Unmapping the restorer's own surroundings failed.
    pub const UNMAP: i32 = 122;
    /// Moving the vDSO failed.
    pub const VDSO: i32 = 123;
    /// Mapping an area failed.
    pub const MAP: i32 = 124;
    /// Restoring process state (mm fields, signals, rseq, fs base) failed.
    pub const STATE: i32 = 125;
    /// Installing the seccomp filter failed.
    pub const SECCOMP: i32 = 126;
    /// rt_sigreturn returned (a rejected frame).
    pub const SIGRETURN: i32 = 127;
}
