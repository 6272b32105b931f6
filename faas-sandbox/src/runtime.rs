//! [`PooledSandboxRuntime`]: namespaced, cgroup-limited, seccomp-filtered
//! instances, with the expensive resources made ahead of time.

use std::collections::{HashMap, VecDeque};
use std::ffi::CString;
use std::io;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use faas_core::{
    BoxFuture, ExitStatus, ImageRef, Instance, LaunchError, LimitExceeded, SandboxRuntime,
    SandboxSpec, StartMode, Stdio,
};
use faas_snapshot::{RestoreOptions, Snapshot};
use parking_lot::{Condvar, Mutex};

use crate::cgroup::{Cgroup, CgroupError, Cgroups};
use crate::fork::{ForkError, Template, fork_snapshot};
use crate::seccomp::{SeccompFilters, SeccompProfile};
use crate::sys::ns;
use crate::sys::spawn::{self, BindPlan, ChildPlan};

/// Settings of a [`PooledSandboxRuntime`].
#[derive(Debug, Clone)]
pub struct SandboxConfig {
    /// Where the runtime keeps its mount points (created, and removed on
    /// drop).
    pub work_dir: PathBuf,
    /// First host uid/gid of the sandboxes' range; sandbox `i` runs as host
    /// uid `uid_base + i`.
    pub uid_base: u32,
    /// Size of the range: the most sandboxes alive at once.
    pub uid_count: u32,
    /// Network namespaces kept ready.
    pub netns_pool: usize,
    /// Give a sandbox's network namespace, once every process in it has
    /// exited, to a later sandbox of the same kind (same root, limits,
    /// profile: in the platform, the same function version) instead of
    /// destroying it; up to `reuse_per_kind` are kept per kind. Creating and
    /// destroying a network namespace is the largest kernel cost of a
    /// sandbox. Off: every sandbox gets a namespace no one used before.
    pub reuse_netns: bool,
    /// Likewise for a sandbox's cgroups (its limits are already those of
    /// its kind; the OOM and fork-refusal counts start again from zero).
    pub reuse_cgroups: bool,
    /// cgroups kept ready.
    pub cgroup_pool: usize,
    /// Network namespaces and cgroups kept for reuse per kind at most
    /// (`reuse_netns`, `reuse_cgroups`): enough for every sandbox of a kind
    /// in circulation at once — parked, restored ahead, serving, being
    /// reaped. With fewer, a kind served at full speed keeps creating and
    /// destroying both (at 1,000 requests/s with 8: ~50 network namespaces
    /// and ~50 cgroups per 3,000 requests; with 16: 1–2). Not more: every
    /// network namespace kept is an open fd of this process, and each
    /// sandbox's clone copies the fd table and closes the copies (~0.1 µs
    /// per fd).
    pub reuse_per_kind: usize,
    /// Size of each sandbox's `/tmp`, in MiB.
    pub tmp_mb: u32,
    /// `RLIMIT_NOFILE` inside.
    pub nofile: u64,
    /// Enforce memory, pids and CPU limits with cgroups.
    pub cgroups: bool,
    /// Sandboxes kept parked (set up up to their exec) per kind of sandbox
    /// (root, limits, seccomp profile, /proc) once that kind was launched.
    pub parked: usize,
    /// Kinds of sandbox kept parked at most: beyond, the kind launched
    /// least recently gives up its parked sandboxes (and the namespaces
    /// and cgroups kept for it), so a stream of ever new kinds (a user
    /// trying every memory limit) cannot pile up sandboxes. Unbounded by
    /// default: in the platform the kinds are the deployed function
    /// versions, which `forget` ends, and a bound below the number of
    /// active functions would discard and re-park sandboxes at every
    /// launch.
    pub parked_kinds: usize,
    /// Keep a reference to each sandbox's mount namespace until it is
    /// reaped, then drop it on a background thread. The last process of a
    /// mount namespace unmounts its tree before it becomes a zombie, and
    /// that waits for an RCU grace period (`namespace_unlock`): with this,
    /// its exit status is there ~0.5 ms sooner, at the cost of a hop to a
    /// blocking thread per sandbox. For callers that wait for the exit
    /// (`faas sandbox run`); an instance that answered over its channel
    /// has nobody waiting.
    pub hold_mount_namespaces: bool,
    /// Threads that refill the pools (at nice 10). More than one lets one
    /// set a sandbox up while another restores into the last one, or waits
    /// in the kernel (a cgroup v1 migration can wait for an RCU grace
    /// period).
    pub keepers: usize,
}

impl Default for SandboxConfig {
    fn default() -> Self {
        SandboxConfig {
            work_dir: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                let n = NEXT.fetch_add(1, Ordering::Relaxed);
                PathBuf::from(format!("/run/faas/sandbox-{}-{n}", std::process::id()))
            },
            uid_base: 1_000_000_000,
            uid_count: 65_536,
            netns_pool: 8,
            reuse_netns: true,
            reuse_cgroups: true,
            cgroup_pool: 8,
            reuse_per_kind: 16,
            tmp_mb: 64,
            nofile: 1024,
            cgroups: true,
            parked: 4,
            parked_kinds: usize::MAX,
            hold_mount_namespaces: false,
            keepers: 2,
        }
    }
}

/// Why the runtime could not be created.
#[derive(Debug, thiserror::Error)]
pub enum SandboxInitError {
    /// Not running as root.
    #[error(
        "the sandbox runtime needs root (to create user namespaces with a uid range, mount and set up cgroups); run as root or use the development-only process runtime"
    )]
    NotRoot,
    /// cgroups are unavailable.
    #[error("cgroups: {0}")]
    Cgroup(#[from] CgroupError),
    /// The work directory or a namespace could not be prepared.
    #[error("{what}: {source}")]
    Io {
        /// What was being prepared.
        what: String,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

/// A pool of ready network namespaces (loopback up), refilled by a
/// background thread.
struct NetnsPool {
    ready: Mutex<Vec<OwnedFd>>,
    want: Condvar,
    target: usize,
    made: AtomicU64,
}

impl NetnsPool {
    fn start(target: usize) -> Arc<Self> {
        let pool = Arc::new(NetnsPool {
            ready: Mutex::new(Vec::with_capacity(target)),
            want: Condvar::new(),
            target,
            made: AtomicU64::new(0),
        });
        if target > 0 {
            let weak = Arc::downgrade(&pool);
            // A thread of its own: each unshare moves it into the new netns.
            let _ = std::thread::Builder::new()
                .name("faas-netns-pool".into())
                .spawn(move || {
                    // Pool work: behind the requests being served.
                    let _ = rustix::process::setpriority_process(None, BACKGROUND_NICE);
                    loop {
                        let Some(pool) = weak.upgrade() else { return };
                        {
                            let mut ready = pool.ready.lock();
                            while ready.len() >= pool.target {
                                // Wake up now and then to notice the runtime is gone.
                                if pool
                                    .want
                                    .wait_for(&mut ready, std::time::Duration::from_millis(500))
                                    .timed_out()
                                    && Arc::strong_count(&pool) == 1
                                {
                                    return;
                                }
                            }
                        }
                        match ns::new_netns_on_this_thread() {
                            Ok(fd) => {
                                pool.made.fetch_add(1, Ordering::Relaxed);
                                pool.ready.lock().push(fd);
                            }
                            Err(e) => {
                                tracing::warn!(error = %e, "creating a network namespace failed");
                                std::thread::sleep(std::time::Duration::from_millis(100));
                            }
                        }
                    }
                });
        }
        pool
    }

    fn take(&self) -> Option<OwnedFd> {
        let fd = self.ready.lock().pop();
        self.want.notify_one();
        fd
    }
}

/// An opened snapshot's cache key: its directory, the seccomp profile and
/// the binds it is restored with.
type SnapshotKey = (PathBuf, String, Vec<(PathBuf, PathBuf)>);

/// The cache key of the snapshot in `dir` restored into sandboxes of `park`.
fn snapshot_key(dir: &Path, park: &ParkKey) -> SnapshotKey {
    (dir.to_path_buf(), park.seccomp.clone(), park.binds.clone())
}

struct Shared {
    config: SandboxConfig,
    base: PathBuf,
    host_netns: OwnedFd,
    /// Our mount namespace, root and working directory, which a thread
    /// that cloned a sandbox from a kind's mount template comes back to.
    host_mntns: OwnedFd,
    root: OwnedFd,
    cwd: OwnedFd,
    /// Each kind's mount template ([`spawn::build_mount_template`]), made at
    /// its first sandbox; `None`: it could not be made (that kind's
    /// sandboxes assemble their root themselves). Kinds with `/proc` have
    /// none: the kernel lets a user namespace mount a procfs only where one
    /// is fully visible, and a template has none.
    mount_templates: Mutex<HashMap<ParkKey, Option<Arc<OwnedFd>>>>,
    netns: Arc<NetnsPool>,
    /// Network namespaces of exited sandboxes, by kind, for the next
    /// sandboxes of that kind ([`SandboxConfig::reuse_netns`]).
    netns_reuse: Mutex<HashMap<ParkKey, Vec<OwnedFd>>>,
    /// Sandboxes started in a reused network namespace.
    netns_reused: AtomicU64,
    /// cgroups of exited sandboxes, by kind ([`SandboxConfig::reuse_cgroups`]).
    cgroup_reuse: Mutex<HashMap<ParkKey, Vec<Cgroup>>>,
    /// Sandboxes started in a reused cgroup.
    cgroups_reused: AtomicU64,
    cgroups: Option<Cgroups>,
    cgroup_pool: Mutex<Vec<Cgroup>>,
    uids: Mutex<Vec<u32>>,
    /// Host mount of each root (a read-only bind or an EROFS mount), by
    /// the root's path.
    roots: Mutex<HashMap<PathBuf, PathBuf>>,
    filters: Mutex<HashMap<String, Arc<SeccompFilters>>>,
    /// Opened snapshots, by (directory, seccomp profile, binds): each is opened
    /// with its profile's programs, which its restorer installs.
    snapshots: Mutex<HashMap<SnapshotKey, Arc<Snapshot>>>,
    parked: Mutex<HashMap<ParkKey, Vec<Parked>>>,
    /// The kinds parked for, least recently launched first (see
    /// [`SandboxConfig::parked_kinds`]).
    parked_kinds: Mutex<std::collections::VecDeque<ParkKey>>,
    /// Sandboxes of each kind whose snapshot restorer already runs, waiting
    /// for a guest's fds and a plan (see [`ReadyRestorer`]).
    restorers: Mutex<HashMap<ParkKey, Vec<ReadyRestorer>>>,
    /// Restores that went to a ready restorer.
    restored_ready: AtomicU64,
    /// Instances of each snapshot restored ahead of their request, waiting
    /// for its fds 0–3 (see [`Snapshot::send_parked_plan`]).
    restored: Mutex<HashMap<SnapshotKey, Vec<ReadyRestorer>>>,
    /// Launches that resumed an instance restored ahead.
    resumed: AtomicU64,
    /// Launches handed to a sandbox parked ahead (its exec, or its restore,
    /// on the request path).
    from_parked: AtomicU64,
    /// Launches that set a sandbox up on the request path (no pool had one).
    unpooled: AtomicU64,
    /// Restores that found their pools empty and took what a keeper added
    /// within [`REFILL_WAIT`].
    refill_waits: AtomicU64,
    /// Launches that forked a template.
    forked: AtomicU64,
    /// Fork templates, by kind of sandbox and snapshot directory (see
    /// [`crate::fork`]).
    templates: Mutex<HashMap<TemplateKey, Arc<Template>>>,
    /// Held while a template is made: one at a time, never two of a kind.
    making_template: Mutex<()>,
    /// `/dev/null`, read-write: the fd of a `Stdio::Null`.
    dev_null: OwnedFd,
    /// Pool refills asked for by launches, done by the keeper threads (see
    /// [`Shared::keep`]).
    refills: Mutex<VecDeque<Refill>>,
    refill_wanted: parking_lot::Condvar,
    /// Told each time a keeper adds an instance restored ahead, a ready
    /// restorer or a parked sandbox (see [`wait_for_refill`]).
    refilled: tokio::sync::Notify,
    /// Set when the runtime is dropped: background tasks stop parking.
    closing: std::sync::atomic::AtomicBool,
    cap_last: u32,
    next: AtomicU64,
}

/// Runs every instance in a fresh sandbox:
///
/// - namespaces: user (one unprivileged host uid/gid per sandbox, maps
///   written by the parent), pid (the instance is pid 1; killing it kills
///   everything inside), mount, network (a pooled namespace with only
///   loopback, owned by the host's user namespace so the sandbox cannot
///   reconfigure it), ipc, uts, cgroup;
/// - root: the function's directory (or its EROFS image, mounted once per
///   image) bound read-only, `/tmp` a size-limited tmpfs, `/dev` with only
///   null, zero and urandom (the host's, bound on the empty files of a
///   read-only bind of the runtime's `dev` directory), `/proc` only when
///   the policy asks; the
///   policy's read-only binds (each host directory bound read-only once
///   per runtime, then into the sandbox on a read-only tmpfs that replaces
///   the bind's top directory: `/var` for `/var/task`); `pivot_root` with
///   the old root detached, then the policy's working directory. A kind
///   without `/proc` does the root, `/dev` and the binds once, in a mount
///   namespace of its own (its *mount template*, pivoted and detached
///   once); each sandbox is cloned from a thread inside it, so its mount
///   namespace is a copy of those few mounts (locked: made by the host)
///   and it only mounts its `/tmp` — no copy of the host's mount tree, no
///   `pivot_root`, no detach, which waits for an RCU grace period (the
///   cloning thread keeps root and working directory of its own from then
///   on: the process's, as they were when the runtime was made);
/// - then rlimits, all capabilities dropped and securebits locked, every fd
///   but 0–3 closed at exec, no_new_privs, and the seccomp filters last;
/// - cgroups (v1 or v2) with the memory, pids and CPU limits; an OOM kill is
///   reported as [`LimitExceeded::Memory`].
///
/// Network namespaces and cgroup directories come from pools refilled off
/// the request path; sandbox children share the runtime's memory until
/// they execute (see `sys::spawn`).
///
/// [`StartMode::Restore`] restores the snapshot in [`SandboxSpec::snapshot`]
/// (a `faas-snapshot` directory; the spec's program, arguments and
/// environment are the snapshot's and are ignored). Fastest first:
///
/// 1. an instance of that snapshot restored ahead of time (the whole
///    process rebuilt in its own sandbox, waiting only for the request's
///    fds 0–3), resumed on the caller's thread;
/// 2. a sandbox of the spec's kind whose restorer already runs: the fds and
///    the plan in two messages;
/// 3. a parked sandbox (parked on the spot when none is ready) that
///    executes the restorer.
///
/// Each serves once. After a restore, the keeper threads (nice 10) top all
/// three pools up to [`SandboxConfig::parked`]. The restorer rebuilds the
/// process and installs the sandbox's seccomp filters as its very last
/// step, so the guest never runs unfiltered. A restorer that fails exits
/// with a code of 120–127 and a one-line reason on the instance's stderr.
/// Opened snapshots are cached per directory and seccomp profile; a
/// snapshot that fails to restore (a mapped file changed) is opened again
/// by the next launch.
///
/// [`StartMode::Fork`] forks a template: per snapshot and kind of sandbox,
/// one sandbox as for a restore whose restorer rebuilds the process once
/// and then forks a child per launch, with the launch's fds 0–3 and the
/// sandbox's seccomp filters. The template is made by the first fork launch
/// (again when it died) and ends with the runtime and its last instance.
/// The forks are the template's children in its namespaces and cgroup: the
/// memory, pids and CPU limits apply to all instances of that kind
/// together, and they share `/tmp` and the network namespace; isolation
/// between instances of one function is by process (own address space,
/// copy-on-write), between functions by the full sandbox.
pub struct PooledSandboxRuntime {
    shared: Arc<Shared>,
}

impl PooledSandboxRuntime {
    /// Prepares the runtime: checks for root, creates the work directory,
    /// finds the cgroups and starts the pools.
    ///
    /// # Errors
    ///
    /// See [`SandboxInitError`].
    pub fn new(config: SandboxConfig) -> Result<Self, SandboxInitError> {
        if ns::euid() != 0 {
            return Err(SandboxInitError::NotRoot);
        }
        let io_err = |what: String| move |source| SandboxInitError::Io { what, source };
        if let Some(parent) = config.work_dir.parent() {
            clean_stale_work_dirs(parent);
        }
        let base = config.work_dir.join("root");
        std::fs::create_dir_all(&base).map_err(io_err(format!("creating {}", base.display())))?;
        let dev_dir = config.work_dir.join("dev");
        std::fs::create_dir_all(&dev_dir)
            .map_err(io_err(format!("creating {}", dev_dir.display())))?;
        for node in DEV_NODES {
            let f = dev_dir.join(node);
            std::fs::File::create(&f).map_err(io_err(format!("creating {}", f.display())))?;
        }
        let host_mntns = ns::open_ns(c"/proc/self/ns/mnt")
            .map_err(io_err("opening our mount namespace".into()))?;
        let root = ns::open_dir(c"/").map_err(io_err("opening our root directory".into()))?;
        let cwd = ns::open_dir(c".").map_err(io_err("opening our working directory".into()))?;
        let host_netns = ns::open_ns(c"/proc/self/ns/net")
            .map_err(io_err("opening our network namespace".into()))?;
        let cgroups = if config.cgroups {
            Some(Cgroups::new()?)
        } else {
            None
        };
        let netns = NetnsPool::start(config.netns_pool);
        let uids = (0..config.uid_count).rev().collect();
        let rt = PooledSandboxRuntime {
            shared: Arc::new(Shared {
                base,
                host_netns,
                host_mntns,
                root,
                cwd,
                mount_templates: Mutex::new(HashMap::new()),
                netns,
                netns_reuse: Mutex::new(HashMap::new()),
                netns_reused: AtomicU64::new(0),
                cgroup_reuse: Mutex::new(HashMap::new()),
                cgroups_reused: AtomicU64::new(0),
                cgroups,
                cgroup_pool: Mutex::new(Vec::new()),
                uids: Mutex::new(uids),
                roots: Mutex::new(HashMap::new()),
                filters: Mutex::new(HashMap::new()),
                snapshots: Mutex::new(HashMap::new()),
                parked: Mutex::new(HashMap::new()),
                parked_kinds: Mutex::new(std::collections::VecDeque::new()),
                restorers: Mutex::new(HashMap::new()),
                restored_ready: AtomicU64::new(0),
                restored: Mutex::new(HashMap::new()),
                resumed: AtomicU64::new(0),
                from_parked: AtomicU64::new(0),
                refill_waits: AtomicU64::new(0),
                unpooled: AtomicU64::new(0),
                forked: AtomicU64::new(0),
                templates: Mutex::new(HashMap::new()),
                making_template: Mutex::new(()),
                dev_null: OwnedFd::from(
                    std::fs::OpenOptions::new()
                        .read(true)
                        .write(true)
                        .open("/dev/null")
                        .map_err(io_err("opening /dev/null".into()))?,
                ),
                refills: Mutex::new(VecDeque::new()),
                refill_wanted: parking_lot::Condvar::new(),
                refilled: tokio::sync::Notify::new(),
                closing: std::sync::atomic::AtomicBool::new(false),
                cap_last: spawn::cap_last_cap(),
                next: AtomicU64::new(0),
                config,
            }),
        };
        rt.shared.refill_cgroups();
        for _ in 0..rt.shared.config.keepers.max(1) {
            let weak = Arc::downgrade(&rt.shared);
            std::thread::Builder::new()
                .name("faas-pool-keeper".into())
                .spawn(move || Shared::keep(&weak))
                .map_err(io_err("starting the pool keeper thread".into()))?;
        }
        Ok(rt)
    }

    /// Network namespaces created by the pool so far.
    pub fn netns_created(&self) -> u64 {
        self.shared.netns.made.load(Ordering::Relaxed)
    }

    /// Sandboxes started in the network namespace of an earlier sandbox of
    /// their kind ([`SandboxConfig::reuse_netns`]).
    pub fn netns_reused(&self) -> u64 {
        self.shared.netns_reused.load(Ordering::Relaxed)
    }

    /// Sandboxes started in the cgroup of an earlier sandbox of their kind
    /// ([`SandboxConfig::reuse_cgroups`]).
    pub fn cgroups_reused(&self) -> u64 {
        self.shared.cgroups_reused.load(Ordering::Relaxed)
    }
}

impl PooledSandboxRuntime {
    /// Sandboxes whose snapshot restorer is already running, ready for a
    /// restore (all kinds together). Refilled in the background after each
    /// restore, up to [`SandboxConfig::parked`] per kind.
    pub fn ready_restorers(&self) -> usize {
        self.shared.restorers.lock().values().map(Vec::len).sum()
    }

    /// Sandboxes parked for a program, waiting (all kinds together), and
    /// the kinds they are parked for.
    pub fn parked(&self) -> (usize, usize) {
        let parked = self.shared.parked.lock();
        (parked.values().map(Vec::len).sum(), parked.len())
    }

    /// Restores so far that went to a sandbox whose restorer was ready.
    pub fn restores_from_ready(&self) -> u64 {
        self.shared.restored_ready.load(Ordering::Relaxed)
    }

    /// Instances restored ahead of their request, waiting (all snapshots).
    /// Refilled in the background after each restore, up to
    /// [`SandboxConfig::parked`] per snapshot.
    pub fn restored_ahead(&self) -> usize {
        self.shared.restored.lock().values().map(Vec::len).sum()
    }

    /// Launches so far that resumed an instance restored ahead.
    pub fn resumed(&self) -> u64 {
        self.shared.resumed.load(Ordering::Relaxed)
    }
}

impl Drop for PooledSandboxRuntime {
    fn drop(&mut self) {
        // No more parking; the parked ones go now. The rest is cleaned up
        // when the last instance or background task lets go of `Shared`.
        self.shared.closing.store(true, Ordering::Relaxed);
        self.shared.discard_parked();
        self.shared.refill_wanted.notify_all();
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.discard_parked();
        for c in self.cgroup_pool.lock().drain(..) {
            let _ = c.remove();
        }
        for c in self.cgroup_reuse.lock().drain().flat_map(|(_, v)| v) {
            let _ = c.remove();
        }
        for dir in self.roots.lock().values() {
            if let Ok(c) = spawn::cstring("mount point", dir.as_os_str().as_bytes()) {
                let _ = ns::umount_detach(&c);
            }
            let _ = std::fs::remove_dir(dir);
        }
        let _ = std::fs::remove_dir(&self.base);
        remove_dev_dir(&self.config.work_dir);
        let _ = std::fs::remove_dir(self.config.work_dir.join("roots"));
        let _ = std::fs::remove_dir(&self.config.work_dir);
    }
}

/// The device nodes bound into every sandbox's `/dev`, from the host's.
const DEV_NODES: [&str; 3] = ["null", "zero", "urandom"];

/// Each of [`DEV_NODES`]: the host's node and its mount point under the
/// sandbox root being assembled (`join` prefixes that root).
fn dev_nodes<E>(
    c: &impl Fn(&str, &[u8]) -> Result<CString, E>,
    join: &impl Fn(&str) -> Vec<u8>,
) -> Result<[(CString, CString); 3], E> {
    let mut nodes = DEV_NODES.map(|_| (CString::default(), CString::default()));
    for (slot, node) in nodes.iter_mut().zip(DEV_NODES) {
        let path = format!("/dev/{node}");
        *slot = (c("dev", path.as_bytes())?, c("base", &join(&path))?);
    }
    Ok(nodes)
}

/// Removes a work directory's `dev` directory (the mount points of
/// [`DEV_NODES`]).
fn remove_dev_dir(work_dir: &Path) {
    let dev = work_dir.join("dev");
    for node in DEV_NODES {
        let _ = std::fs::remove_file(dev.join(node));
    }
    let _ = std::fs::remove_dir(dev);
}

/// Whether `pid` names a live process.
fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// The pid in a name `PREFIX<pid>-...` or `PREFIX<pid>`.
pub(crate) fn owner_pid(name: &str, prefix: &str) -> Option<u32> {
    name.strip_prefix(prefix)?.split('-').next()?.parse().ok()
}

/// Removes what runtimes of processes that died without cleaning up (killed
/// by SIGKILL) left in `parent`: their root mounts and work directories.
fn clean_stale_work_dirs(parent: &Path) {
    let Ok(rd) = std::fs::read_dir(parent) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name();
        let Some(pid) = owner_pid(&name.to_string_lossy(), "sandbox-") else {
            continue;
        };
        if alive(pid) {
            continue;
        }
        let dir = e.path();
        if let Ok(roots) = std::fs::read_dir(dir.join("roots")) {
            for r in roots.flatten() {
                if let Ok(c) = spawn::cstring("mount point", r.path().as_os_str().as_bytes()) {
                    let _ = ns::umount_detach(&c);
                }
                let _ = std::fs::remove_dir(r.path());
            }
        }
        let _ = std::fs::remove_dir(dir.join("roots"));
        let _ = std::fs::remove_dir(dir.join("root"));
        remove_dev_dir(&dir);
        match std::fs::remove_dir(&dir) {
            Ok(()) => {
                tracing::info!(dir = %dir.display(), "removed a dead runtime's work directory")
            }
            // Another runtime starting now cleaned it first.
            Err(e) if e.kind() == io::ErrorKind::NotFound => {}
            Err(e) => {
                tracing::warn!(dir = %dir.display(), error = %e, "cannot remove a dead runtime's work directory")
            }
        }
    }
}

fn sys_err<'a>(name: &'a str, op: &'static str) -> impl FnOnce(io::Error) -> LaunchError + 'a {
    move |source| LaunchError::Sys {
        name: name.to_owned(),
        op,
        source,
    }
}

impl Shared {
    fn discard_parked(&self) {
        let parked: Vec<Parked> = self.parked.lock().drain().flat_map(|(_, v)| v).collect();
        for p in parked {
            p.discard(self);
        }
        // Their instances hold `Shared`: dropping them (killed and reaped)
        // lets it go.
        let ready: Vec<ReadyRestorer> =
            self.restorers.lock().drain().flat_map(|(_, v)| v).collect();
        drop(ready);
        let restored: Vec<ReadyRestorer> =
            self.restored.lock().drain().flat_map(|(_, v)| v).collect();
        drop(restored);
        // Templates end once their last instance is gone.
        let templates: Vec<Arc<Template>> = self.templates.lock().drain().map(|(_, t)| t).collect();
        drop(templates);
    }

    /// See [`SandboxRuntime::forget`]: everything kept for kinds, snapshots
    /// and mounts under `paths` is taken out now and ended on a thread of
    /// its own (killing and reaping what was prepared ahead, removing
    /// cgroups and mounts can take milliseconds).
    fn forget(self: &Arc<Self>, paths: &[&Path]) {
        let gone = |p: &Path| paths.iter().any(|g| p.starts_with(g));
        let kind_gone = |k: &ParkKey| gone(&k.root) || k.binds.iter().any(|(src, _)| gone(src));
        let snap_gone = |k: &SnapshotKey| gone(&k.0) || k.2.iter().any(|(src, _)| gone(src));
        // First what the keeper checks before it keeps anything new for a
        // kind or snapshot (see `live`), then what it kept.
        let mounts: Vec<PathBuf> = self
            .roots
            .lock()
            .extract_if(|k, _| gone(k))
            .map(|(_, v)| v)
            .collect();
        let snapshots: Vec<Arc<Snapshot>> = self
            .snapshots
            .lock()
            .extract_if(|k, _| snap_gone(k))
            .map(|(_, v)| v)
            .collect();
        let kinds = self.take_kinds(&kind_gone);
        let mut ready: Vec<ReadyRestorer> = self
            .restorers
            .lock()
            .extract_if(|k, _| kind_gone(k))
            .flat_map(|(_, v)| v)
            .collect();
        ready.extend(
            self.restored
                .lock()
                .extract_if(|k, _| snap_gone(k))
                .flat_map(|(_, v)| v),
        );
        let templates: Vec<Arc<Template>> = self
            .templates
            .lock()
            .extract_if(|(k, dir), _| kind_gone(k) || gone(dir))
            .map(|(_, v)| v)
            .collect();
        let sh = self.clone();
        let end = move || {
            kinds.end(&sh);
            // Killed and reaped as they drop; templates end with their
            // last instance.
            drop((ready, snapshots, templates));
            for dir in mounts {
                if let Ok(c) = spawn::cstring("mount point", dir.as_os_str().as_bytes()) {
                    let _ = ns::umount_detach(&c);
                }
                let _ = std::fs::remove_dir(&dir);
            }
        };
        if let Err(e) = std::thread::Builder::new()
            .name("faas-forget".into())
            .spawn(end)
        {
            tracing::warn!(error = %e, "no thread to end what was kept for deleted files");
        }
    }

    /// A sandbox of `key` whose restorer runs, if one is ready and alive.
    fn take_restorer(&self, key: &ParkKey) -> Option<ReadyRestorer> {
        loop {
            let mut r = self.restorers.lock().get_mut(key)?.pop()?;
            if matches!(r.inst.try_reap(), Ok(None)) {
                return Some(r);
            }
        }
    }

    /// After adding to a pool: if the runtime closed meanwhile, empties the
    /// pools again (a ready instance holds `Shared`: left in a pool, it
    /// would keep it, and itself, alive).
    fn unless_closing(&self) {
        if self.closing.load(Ordering::Relaxed) {
            self.discard_parked();
        }
    }

    /// Asks the keeper threads to top a pool up (a job already waiting is
    /// not added again).
    fn want(&self, job: Refill) {
        let mut q = self.refills.lock();
        if !q.contains(&job) {
            q.push_back(job);
            self.refill_wanted.notify_one();
        }
    }

    /// A keeper thread: tops the pools up as launches ask, one job at a
    /// time, at [`BACKGROUND_NICE`] (the sandboxes it parks inherit it until
    /// their hand-off), until the runtime is gone.
    fn keep(shared: &std::sync::Weak<Shared>) {
        let _ = rustix::process::setpriority_process(None, BACKGROUND_NICE);
        loop {
            let Some(sh) = shared.upgrade() else { return };
            if sh.closing.load(Ordering::Relaxed) {
                return;
            }
            let job = {
                let mut q = sh.refills.lock();
                if q.is_empty() {
                    // Wake up now and then to notice the runtime is gone.
                    sh.refill_wanted
                        .wait_for(&mut q, std::time::Duration::from_millis(500));
                }
                q.pop_front()
            };
            let Some(job) = job else { continue };
            let root = |key: &ParkKey| sh.roots.lock().get(&key.root).cloned();
            match job {
                Refill::Cgroups => sh.refill_cgroups(),
                Refill::Parked(key) => {
                    if let Some(root) = root(&key) {
                        sh.park_more(&key, &root);
                    }
                }
                Refill::Restore(key, dir) => {
                    if let Some(root) = root(&key) {
                        sh.restore_more(&key, &root, &dir);
                        sh.ready_more(&key, &root, &dir);
                    }
                }
            }
        }
    }

    /// An instance of the snapshot of `skey` restored ahead, if one waits
    /// and is alive (its restore may have failed meanwhile).
    fn take_restored(&self, skey: &SnapshotKey) -> Option<ReadyRestorer> {
        loop {
            let mut r = self.restored.lock().get_mut(skey)?.pop()?;
            if matches!(r.inst.try_reap(), Ok(None)) {
                return Some(r);
            }
        }
    }

    /// Tops the instances of the snapshot in `dir` restored ahead up to the
    /// configured number, off the request path: sandboxes of `key` whose
    /// restorer runs get the snapshot's plan and rebuild the process now;
    /// only the fds 0–3 of a request are missing.
    fn restore_more(self: &Arc<Self>, key: &ParkKey, root: &Path, dir: &Path) {
        let skey = snapshot_key(dir, key);
        let Some(snap) = self.snapshots.lock().get(&skey).cloned() else {
            return;
        };
        loop {
            let have = self.restored.lock().get(&skey).map_or(0, Vec::len);
            if have >= self.config.parked || self.closing.load(Ordering::Relaxed) {
                return;
            }
            let r = match self.take_restorer(key) {
                Some(r) => r,
                None => match ready_restorer(self, key, root, dir, false) {
                    Ok(r) => r,
                    Err(e) => {
                        tracing::warn!(error = %e, "starting a snapshot restorer ahead of time failed");
                        return;
                    }
                },
            };
            if let Err(e) = snap.send_parked_plan(&r.socket) {
                tracing::warn!(error = %e, "restoring a snapshot ahead of time failed");
                return;
            }
            {
                let mut restored = self.restored.lock();
                if !self.snapshots.lock().contains_key(&skey) {
                    // Forgotten meanwhile: `r` ends as it drops.
                    return;
                }
                restored.entry(skey.clone()).or_default().push(r);
            }
            self.refilled.notify_waiters();
            self.unless_closing();
        }
    }

    /// Tops the ready restorers of `key` up to the configured number:
    /// parked sandboxes of that kind execute the restorer now, off the
    /// request path (`dir`: the snapshot that asked, for messages).
    fn ready_more(self: &Arc<Self>, key: &ParkKey, root: &Path, dir: &Path) {
        loop {
            let have = self.restorers.lock().get(key).map_or(0, Vec::len);
            if have >= self.config.parked || self.closing.load(Ordering::Relaxed) {
                return;
            }
            match ready_restorer(self, key, root, dir, false) {
                Ok(r) => {
                    {
                        let mut restorers = self.restorers.lock();
                        if !self.live(key) {
                            return;
                        }
                        restorers.entry(key.clone()).or_default().push(r);
                    }
                    self.refilled.notify_waiters();
                    self.unless_closing();
                }
                Err(e) => {
                    tracing::warn!(error = %e, "starting a snapshot restorer ahead of time failed");
                    return;
                }
            }
        }
    }

    /// Whether the mounts of `key` are still in use: not forgotten (see
    /// [`Shared::forget`]). What is made ahead for a kind is kept only
    /// while this holds, checked under the lock of the list it goes to.
    fn live(&self, key: &ParkKey) -> bool {
        let roots = self.roots.lock();
        roots.contains_key(&key.root) && key.binds.iter().all(|(src, _)| roots.contains_key(src))
    }

    fn take_parked(&self, key: &ParkKey) -> Option<Parked> {
        self.parked.lock().get_mut(key)?.pop()
    }

    /// A network namespace for a new sandbox of `key`: one its kind left
    /// behind, else one from the pool (None: the pool is empty).
    fn take_netns(&self, key: &ParkKey) -> Option<OwnedFd> {
        if let Some(fd) = self.netns_reuse.lock().get_mut(key).and_then(Vec::pop) {
            self.netns_reused.fetch_add(1, Ordering::Relaxed);
            return Some(fd);
        }
        self.netns.take()
    }

    /// Keeps the network namespace of a reaped sandbox of `key` for the
    /// next one of the kind. Only after the reap: the sandbox was pid 1 of
    /// its pid namespace, and its reap means every process that could use
    /// the namespace has exited. Its processes joined it before their user
    /// namespace existed, so they could not change it (addresses, routes,
    /// sysctls, `lo` stays up); what can outlive them is what any instance
    /// of the same kind may see: loopback counters and sockets in TIME_WAIT.
    fn recycle_netns(&self, key: &ParkKey, fd: OwnedFd) {
        if !self.config.reuse_netns || self.closing.load(Ordering::Relaxed) {
            return;
        }
        let mut reuse = self.netns_reuse.lock();
        if !self.live(key) {
            return;
        }
        let list = reuse.entry(key.clone()).or_default();
        if list.len() < self.config.reuse_per_kind.max(1) {
            list.push(fd);
        }
    }

    /// The cgroup of a reaped sandbox of `key`, kept for the next one of
    /// the kind (`Err` gives it back: remove it); `ooms` and `refused` are
    /// its counts, read at the reap. It is empty: the sandbox was pid 1 of
    /// its pid namespace.
    fn recycle_cgroup(
        &self,
        key: &ParkKey,
        mut cg: Cgroup,
        (ooms, refused): (u64, u64),
    ) -> Result<(), Cgroup> {
        if !self.config.reuse_cgroups || self.closing.load(Ordering::Relaxed) {
            return Err(cg);
        }
        let mut reuse = self.cgroup_reuse.lock();
        if !self.live(key) {
            return Err(cg);
        }
        let list = reuse.entry(key.clone()).or_default();
        if list.len() >= self.config.reuse_per_kind.max(1) {
            return Err(cg);
        }
        cg.rebase(ooms, refused);
        list.push(cg);
        Ok(())
    }

    /// An empty cgroup its kind left behind, with the kind's limits set.
    fn take_reused_cgroup(&self, key: &ParkKey) -> Option<Cgroup> {
        let cg = self.cgroup_reuse.lock().get_mut(key).and_then(Vec::pop)?;
        self.cgroups_reused.fetch_add(1, Ordering::Relaxed);
        Some(cg)
    }

    /// Tops the parked sandboxes of `key` up to the configured number.
    fn park_more(&self, key: &ParkKey, root: &Path) {
        self.note_parked_kind(key);
        loop {
            let have = self.parked.lock().get(key).map_or(0, Vec::len);
            if have >= self.config.parked || self.closing.load(Ordering::Relaxed) {
                return;
            }
            let p = match self.park_one("parked", key, root) {
                Ok(p) => p,
                Err(e) => {
                    tracing::warn!(error = %e, "parking a sandbox failed");
                    return;
                }
            };
            if self.closing.load(Ordering::Relaxed) {
                p.discard(self);
                return;
            }
            {
                let mut parked = self.parked.lock();
                if !self.live(key) {
                    drop(parked);
                    p.discard(self);
                    return;
                }
                parked.entry(key.clone()).or_default().push(p);
            }
            self.refilled.notify_waiters();
        }
    }

    /// `key` was just launched (a refill follows each launch): it becomes
    /// the most recent kind; beyond [`SandboxConfig::parked_kinds`] the
    /// least recent ones lose what was kept for them.
    fn note_parked_kind(&self, key: &ParkKey) {
        if self.config.parked_kinds == usize::MAX {
            return;
        }
        let evicted: Vec<ParkKey> = {
            let mut kinds = self.parked_kinds.lock();
            if let Some(i) = kinds.iter().position(|k| k == key) {
                kinds.remove(i);
            }
            kinds.push_back(key.clone());
            let over = kinds.len().saturating_sub(self.config.parked_kinds.max(1));
            kinds.drain(..over).collect()
        };
        if !evicted.is_empty() {
            self.take_kinds(&|k| evicted.contains(k)).end(self);
        }
    }

    /// The mount template of `key` (see [`Shared::mount_templates`]), made
    /// from `plan` on a thread of its own at the kind's first sandbox.
    fn mount_template(&self, name: &str, key: &ParkKey, plan: &ChildPlan) -> Option<Arc<OwnedFd>> {
        if key.proc {
            return None;
        }
        let mut templates = self.mount_templates.lock();
        if let Some(t) = templates.get(key) {
            return t.clone();
        }
        let made = std::thread::scope(|s| {
            std::thread::Builder::new()
                .name("faas-mount-template".into())
                .spawn_scoped(s, || spawn::build_mount_template(plan))
                .map_err(|e| io::Error::other(format!("starting its thread: {e}")))
                .and_then(|t| {
                    t.join()
                        .unwrap_or_else(|_| Err(io::Error::other("its thread panicked")))
                })
        });
        let t = match made {
            Ok(fd) => Some(Arc::new(fd)),
            Err(e) => {
                tracing::warn!(function = %name, error = %e, "making a mount template failed; its sandboxes assemble their root themselves");
                None
            }
        };
        templates.insert(key.clone(), t.clone());
        t
    }

    /// Takes what the pools keep for the kinds `gone` selects: their
    /// parked sandboxes, network namespaces and cgroups (and drops their
    /// mount templates).
    fn take_kinds(&self, gone: &dyn Fn(&ParkKey) -> bool) -> KindPools {
        fn take<V>(
            pool: &Mutex<HashMap<ParkKey, Vec<V>>>,
            gone: &dyn Fn(&ParkKey) -> bool,
        ) -> Vec<V> {
            pool.lock()
                .extract_if(|k, _| gone(k))
                .flat_map(|(_, v)| v)
                .collect()
        }
        self.parked_kinds.lock().retain(|k| !gone(k));
        self.mount_templates.lock().retain(|k, _| !gone(k));
        KindPools {
            parked: take(&self.parked, gone),
            netns: take(&self.netns_reuse, gone),
            cgroups: take(&self.cgroup_reuse, gone),
        }
    }

    /// Sets up one sandbox of `key` up to its exec and returns it parked,
    /// waiting for its request.
    fn park_one(&self, name: &str, key: &ParkKey, root: &Path) -> Result<Parked, LaunchError> {
        let (ours, theirs) =
            seqpacket_pair().map_err(sys_err(name, "creating a control socket"))?;
        let st = start(
            self,
            name,
            key,
            root,
            Mode::Park {
                ctl: ns::raw(theirs.as_fd()),
            },
        )?;
        drop(theirs);
        Ok(Parked {
            pid: st.pid,
            pidfd: st.pidfd,
            err_r: st.err_r,
            ctl: ours,
            cgroup: st.cgroup,
            uid_slot: st.uid_slot,
            netns: st.netns,
            mnt_ns: st.mnt_ns,
            mem: st.mem,
        })
    }

    /// Tops the cgroup pool up to its configured size.
    fn refill_cgroups(&self) {
        let Some(cg) = &self.cgroups else {
            return;
        };
        while self.cgroup_pool.lock().len() < self.config.cgroup_pool {
            let n = self.next.fetch_add(1, Ordering::Relaxed);
            match cg.create(&format!("sb-{n}")) {
                Ok(c) => self.cgroup_pool.lock().push(c),
                Err(e) => {
                    tracing::warn!(error = %e, "pre-creating a cgroup failed");
                    break;
                }
            }
        }
    }

    /// The host mount to bind as the sandbox's root: a read-only bind of
    /// the directory, or the mounted EROFS image; made once per root and
    /// shared by every sandbox of it. (A sandbox cannot bind a host
    /// directory itself without its submounts: the kernel refuses that in
    /// a user namespace.)
    fn root_dir(&self, name: &str, root: &ImageRef) -> Result<PathBuf, LaunchError> {
        let key = root.path().to_path_buf();
        let mut roots = self.roots.lock();
        if let Some(d) = roots.get(&key) {
            return Ok(d.clone());
        }
        // Numbered once per runtime: a forgotten root's number is not
        // given again while its lazily detached mount may linger.
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        let dir = self.config.work_dir.join("roots").join(format!("{n}"));
        std::fs::create_dir_all(&dir).map_err(sys_err(name, "creating a root mount point"))?;
        let c_src = spawn::cstring("root path", key.as_os_str().as_bytes())
            .map_err(sys_err(name, "root path"))?;
        let c_dir = spawn::cstring("mount point", dir.as_os_str().as_bytes())
            .map_err(sys_err(name, "mount point"))?;
        let (what, r) = match root {
            ImageRef::Dir(_) => ("binding the root read-only", ns::bind_ro(&c_src, &c_dir)),
            ImageRef::Image(_) => ("mounting the EROFS image", ns::mount_erofs(&c_src, &c_dir)),
        };
        if let Err(e) = r {
            let _ = std::fs::remove_dir(&dir);
            return Err(LaunchError::Sys {
                name: name.to_owned(),
                op: what,
                source: io::Error::new(e.kind(), format!("{}: {e}", key.display())),
            });
        }
        roots.insert(key, dir.clone());
        Ok(dir)
    }

    fn filters(&self, name: &str, profile: &str) -> Result<Arc<SeccompFilters>, LaunchError> {
        if let Some(f) = self.filters.lock().get(profile) {
            return Ok(f.clone());
        }
        let p: SeccompProfile = profile.parse().map_err(|e| LaunchError::Unsupported {
            name: name.to_owned(),
            runtime: "sandbox",
            what: format!("seccomp profile {profile:?}: {e}"),
        })?;
        let f = Arc::new(
            SeccompFilters::compile(&p).map_err(|e| LaunchError::Unsupported {
                name: name.to_owned(),
                runtime: "sandbox",
                what: format!("seccomp profile {profile:?}: {e}"),
            })?,
        );
        self.filters.lock().insert(profile.to_owned(), f.clone());
        Ok(f)
    }

    /// The snapshot in `dir`, opened (once per profile, binds and root)
    /// with the seccomp programs of `profile` for its restorer to install.
    /// `root` is the host mount of the sandbox's root.
    fn snapshot(
        &self,
        name: &str,
        dir: &Path,
        park: &ParkKey,
        root: &Path,
    ) -> Result<Arc<Snapshot>, LaunchError> {
        let (profile, binds) = (&park.seccomp, &park.binds);
        let key = snapshot_key(dir, park);
        if let Some(s) = self.snapshots.lock().get(&key) {
            return Ok(s.clone());
        }
        let filters = self.filters(name, profile)?;
        // Files the guest mapped through a bind (a Python extension in
        // /var/task) are opened on the host where the bind comes from (an
        // image's mount), the others below the root's host mount (unless
        // the root is the host's own /).
        let mut images = Vec::new();
        let mut path_map = Vec::new();
        for (host, inside) in binds {
            if host.is_file() {
                let mount = self.root_dir(name, &ImageRef::Image(host.clone()))?;
                images.push(mount.clone());
                path_map.push((inside.clone(), mount));
            } else {
                path_map.push((inside.clone(), host.clone()));
            }
        }
        if park.root != Path::new("/") {
            if park.root.is_file() {
                images.push(root.to_path_buf());
            }
            path_map.push((PathBuf::from("/"), root.to_path_buf()));
        }
        let options = RestoreOptions {
            seccomp: filters.programs().iter().map(|p| bpf_bytes(p)).collect(),
            // The sandbox child set it before parking.
            no_new_privs: false,
            // Off the request path when the profile allows what the
            // restorer does after its filters.
            filters_before_park: filters.allows_all(faas_snapshot::PARKED_SYSCALLS),
            path_map,
            images,
        };
        // Opened without the lock: it reads and checks the whole snapshot.
        // Two launches racing here open it twice; the first one is kept.
        let snap = Snapshot::open_with(dir, &options).map_err(|e| LaunchError::Sys {
            name: name.to_owned(),
            op: "opening the snapshot",
            source: io::Error::other(e),
        })?;
        Ok(self
            .snapshots
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(snap))
            .clone())
    }

    /// Drops the template `t` of `tkey` (it died), so that the next fork
    /// launch makes a new one.
    fn forget_template(&self, tkey: &TemplateKey, t: &Arc<Template>) {
        let mut all = self.templates.lock();
        if all.get(tkey).is_some_and(|x| Arc::ptr_eq(x, t)) {
            all.remove(tkey);
        }
    }

    /// Drops `snap` from the cache (it failed to restore), so that the
    /// next launch opens its directory again.
    fn forget_snapshot(&self, park: &ParkKey, snap: &Arc<Snapshot>) {
        let key = snapshot_key(snap.dir(), park);
        let mut cache = self.snapshots.lock();
        if cache.get(&key).is_some_and(|s| Arc::ptr_eq(s, snap)) {
            cache.remove(&key);
        }
    }

    fn take_cgroup(&self, name: &str) -> Result<Option<Cgroup>, LaunchError> {
        let Some(cgs) = &self.cgroups else {
            return Ok(None);
        };
        if let Some(c) = self.cgroup_pool.lock().pop() {
            return Ok(Some(c));
        }
        let n = self.next.fetch_add(1, Ordering::Relaxed);
        cgs.create(&format!("sb-{n}"))
            .map(Some)
            .map_err(|e| LaunchError::Sys {
                name: name.to_owned(),
                op: "creating the cgroup",
                source: io::Error::other(e),
            })
    }
}

fn raw_stdio(s: &Stdio, null: &OwnedFd, own: &mut Vec<OwnedFd>, which: i32) -> io::Result<i32> {
    Ok(match s {
        Stdio::Null => ns::raw(null.as_fd()),
        Stdio::Inherit => which,
        Stdio::Fd(fd) => {
            let d = fd.try_clone()?;
            let r = ns::raw(d.as_fd());
            own.push(d);
            r
        }
    })
}

/// What a parked sandbox is interchangeable on: everything its set-up
/// before the park depends on (root, binds and working directory, limits,
/// seccomp profile, /proc).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct ParkKey {
    /// Its sandboxes execute a program (start mode cold), not the snapshot
    /// restorer: they install their seccomp filters before they park.
    cold: bool,
    root: PathBuf,
    memory_mb: u32,
    pids: u32,
    cpu_millis: u32,
    seccomp: String,
    proc: bool,
    binds: Vec<(PathBuf, PathBuf)>,
    cwd: Option<PathBuf>,
}

impl ParkKey {
    fn of(spec: &SandboxSpec) -> Self {
        ParkKey {
            cold: spec.start == StartMode::Cold,
            root: spec.root.path().to_path_buf(),
            memory_mb: spec.limits.memory_mb,
            pids: spec.limits.pids,
            cpu_millis: spec.limits.cpu_millis,
            seccomp: spec
                .policy
                .seccomp
                .clone()
                .unwrap_or_else(|| "native".into()),
            proc: spec.policy.proc,
            binds: spec.policy.binds.clone(),
            cwd: spec.policy.cwd.clone(),
        }
    }
}

/// Mount points of the sandbox itself, which binds may not cover.
const OWN_TOPS: [&str; 3] = ["dev", "tmp", "proc"];

/// Checks the binds of `key` against the root mounted at `root` and turns
/// them into the child's [`BindPlan`] (paths under `base`); each host
/// directory is bound read-only once per runtime, like a root.
fn bind_plan(
    sh: &Shared,
    name: &str,
    key: &ParkKey,
    root: &Path,
    base: &[u8],
) -> Result<BindPlan, LaunchError> {
    use std::path::Component;
    let bad = |what: String| LaunchError::Unsupported {
        name: name.to_owned(),
        runtime: "sandbox",
        what,
    };
    let c = |what: &str, b: &[u8]| {
        spawn::cstring(what, b).map_err(sys_err(name, "preparing the sandbox binds"))
    };
    let under_base = |p: &Path| [base, p.as_os_str().as_bytes()].concat();
    let mut plan = BindPlan::default();
    let mut dirs: Vec<PathBuf> = Vec::new();
    for (host, inside) in &key.binds {
        let parts: Vec<&std::ffi::OsStr> = inside
            .components()
            .filter_map(|c| match c {
                Component::Normal(p) => Some(Ok(p)),
                Component::RootDir => None,
                _ => Some(Err(())),
            })
            .collect::<Result<_, _>>()
            .ok()
            .filter(|_| inside.is_absolute())
            .ok_or_else(|| {
                bad(format!(
                    "bind target {}: use a plain absolute path",
                    inside.display()
                ))
            })?;
        if parts.len() < 2 {
            return Err(bad(format!(
                "bind target {}: give an absolute path of at least two components (/var/task)",
                inside.display()
            )));
        }
        let top = Path::new("/").join(parts[0]);
        if OWN_TOPS.iter().any(|t| parts[0] == *t) {
            return Err(bad(format!(
                "bind target {}: {} is a mount point of the sandbox itself",
                inside.display(),
                top.display()
            )));
        }
        if !root.join(parts[0]).is_dir() {
            return Err(LaunchError::Program {
                name: name.to_owned(),
                program: root.join(parts[0]),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "the root needs a {} directory to mount the bind {} on",
                        top.display(),
                        inside.display()
                    ),
                ),
            });
        }
        if let Some((_, other)) = key
            .binds
            .iter()
            .find(|(_, o)| o != inside && (o.starts_with(inside) || inside.starts_with(o)))
        {
            return Err(bad(format!(
                "bind targets {} and {} are nested",
                inside.display(),
                other.display()
            )));
        }
        // A directory is bound; a regular file is an EROFS image, mounted
        // (once per node) and bound like a directory.
        let source = if host.is_dir() {
            ImageRef::Dir(host.clone())
        } else if host.is_file() {
            ImageRef::Image(host.clone())
        } else {
            return Err(LaunchError::Program {
                name: name.to_owned(),
                program: host.clone(),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "bind source for {} is neither a directory nor an image file",
                        inside.display()
                    ),
                ),
            });
        };
        let source = sh.root_dir(name, &source)?;
        let top_c = c("bind", &under_base(&top))?;
        if !plan.tops.contains(&top_c) {
            plan.tops.push(top_c);
        }
        let mut dir = top;
        for p in &parts[1..] {
            dir.push(p);
            if !dirs.contains(&dir) {
                dirs.push(dir.clone());
            }
        }
        plan.binds.push((
            c("bind", source.as_os_str().as_bytes())?,
            c("bind", &under_base(inside))?,
        ));
    }
    // Parents first: a path sorts after its prefixes.
    dirs.sort();
    for d in &dirs {
        plan.dirs.push(c("bind", &under_base(d))?);
    }
    Ok(plan)
}

/// A sandbox set up up to its exec, waiting for a request on `ctl`.
struct Parked {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    err_r: OwnedFd,
    ctl: OwnedFd,
    cgroup: Option<Cgroup>,
    uid_slot: u32,
    netns: Option<OwnedFd>,
    mnt_ns: Option<OwnedFd>,
    mem: spawn::ChildMem,
}

impl Parked {
    /// After a hand-off: the sandbox is on its way to its exec.
    fn into_started(self) -> Started {
        let Parked {
            pid,
            pidfd,
            err_r,
            ctl,
            cgroup,
            uid_slot,
            netns,
            mnt_ns,
            mem,
        } = self;
        drop(ctl);
        Started {
            pid,
            pidfd,
            err_r,
            cgroup,
            uid_slot,
            netns,
            mnt_ns,
            mem,
        }
    }

    /// Kills, reaps and frees it (pool shutdown, or a failed hand-off).
    fn discard(self, sh: &Shared) {
        if kill_and_reap(&self.pidfd) {
            self.mem.release();
        }
        if let Some(cg) = self.cgroup {
            let _ = cg.remove();
        }
        sh.uids.lock().push(self.uid_slot);
    }
}

/// Kills the child and waits (up to a second) until it is reaped; says
/// whether it was.
fn kill_and_reap(pidfd: &OwnedFd) -> bool {
    let _ = ns::pidfd_kill(pidfd.as_fd(), libc::SIGKILL);
    for _ in 0..5000 {
        match ns::pidfd_try_reap(pidfd.as_fd()) {
            Ok(ns::Reaped::Running) => std::thread::sleep(std::time::Duration::from_micros(200)),
            Ok(_) => return true,
            // Already reaped (ECHILD) or gone: not running on our memory.
            Err(_) => return true,
        }
    }
    false
}

/// What a sandbox executes.
enum Target {
    /// The spec's program (its path on the host, for errors).
    Program(PathBuf),
    /// The snapshot restorer, restoring the snapshot in this directory.
    Restore(PathBuf),
}

/// The checks and strings every launch of `spec` needs.
struct Prepared {
    root: PathBuf,
    target: Target,
    argv: Vec<CString>,
    envp: Vec<CString>,
}

fn prepare(sh: &Shared, spec: &SandboxSpec) -> Result<Prepared, LaunchError> {
    let name = spec.name.as_str();
    let snapshot = match spec.start {
        StartMode::Cold => None,
        StartMode::Restore => Some(spec.snapshot.clone().ok_or_else(|| {
            LaunchError::Unsupported {
                name: name.to_owned(),
                runtime: "sandbox",
                what: "start mode restore without a snapshot (the spec's `snapshot` directory is missing)".to_owned(),
            }
        })?),
        StartMode::Fork => Some(fork_snapshot(name, spec.snapshot.as_deref())?.to_path_buf()),
    };
    let root = sh.root_dir(name, &spec.root)?;
    for d in ["dev", "tmp"]
        .into_iter()
        .chain(spec.policy.proc.then_some("proc"))
    {
        if !root.join(d).is_dir() {
            return Err(LaunchError::Program {
                name: name.to_owned(),
                program: root.join(d),
                source: io::Error::new(
                    io::ErrorKind::NotFound,
                    format!(
                        "the root {} needs an empty {d} directory as a mount point",
                        root.display()
                    ),
                ),
            });
        }
    }
    let c = |what: &str, b: &[u8]| {
        spawn::cstring(what, b).map_err(sys_err(name, "preparing the sandbox"))
    };
    if let Some(dir) = snapshot {
        // The snapshot holds the program, its arguments and environment.
        return Ok(Prepared {
            root,
            target: Target::Restore(dir),
            argv: vec![c("program", b"faas-restorer")?],
            envp: Vec::new(),
        });
    }
    let rel = spec.program.strip_prefix("/").unwrap_or(&spec.program);
    let host_program = root.join(rel);
    if !host_program.is_file() {
        return Err(LaunchError::Program {
            name: name.to_owned(),
            program: host_program,
            source: io::Error::from(io::ErrorKind::NotFound),
        });
    }
    let mut argv = vec![c(
        "program",
        Path::new("/").join(rel).as_os_str().as_bytes(),
    )?];
    for a in &spec.args {
        argv.push(c("argument", a.as_bytes())?);
    }
    let mut envp = Vec::with_capacity(spec.env.len());
    for (k, v) in &spec.env {
        envp.push(c("environment", format!("{k}={v}").as_bytes())?);
    }
    Ok(Prepared {
        root,
        target: Target::Program(host_program),
        argv,
        envp,
    })
}

/// How the child is to get its program.
enum Mode<'a> {
    /// Exec `argv[0]` right away with these fds.
    Cold {
        fds: [i32; 4],
        argv: &'a [CString],
        envp: &'a [CString],
    },
    /// Park, waiting on this control socket end.
    Park { ctl: i32 },
}

/// A cloned, released child with its resources.
struct Started {
    pid: libc::pid_t,
    pidfd: OwnedFd,
    err_r: OwnedFd,
    cgroup: Option<Cgroup>,
    uid_slot: u32,
    /// Its network namespace (kept for reuse once it is reaped).
    netns: Option<OwnedFd>,
    /// Its mount namespace, held so that its exit does not wait for the
    /// namespace's teardown (see [`SandboxInstance::mnt_ns`]).
    mnt_ns: Option<OwnedFd>,
    /// Freed once it executed (see [`finish`]) or was reaped.
    mem: spawn::ChildMem,
}

/// Clones a sandbox child for `key` into a fresh netns/cgroup/uid and lets
/// it run its set-up (cold: up to exec; park: up to waiting for a request).
fn start(
    sh: &Shared,
    name: &str,
    key: &ParkKey,
    root: &Path,
    mode: Mode<'_>,
) -> Result<Started, LaunchError> {
    let filters = sh.filters(name, &key.seccomp)?;
    let c = |what: &str, b: &[u8]| {
        spawn::cstring(what, b).map_err(sys_err(name, "preparing the sandbox"))
    };
    let base = sh.base.as_os_str().as_bytes();
    let join = |s: &str| [base, s.as_bytes()].concat();
    let (fds, program, argv, envp, park) = match mode {
        Mode::Cold { fds, argv, envp } => {
            (fds, argv[0].clone(), argv.to_vec(), envp.to_vec(), None)
        }
        Mode::Park { ctl } => (
            [-1; 4],
            c("program", b"/")?,
            Vec::new(),
            Vec::new(),
            Some(ctl),
        ),
    };
    let mut plan = ChildPlan {
        root: c("root", root.as_os_str().as_bytes())?,
        base: c("base", base)?,
        dev_dir: c("dev", sh.config.work_dir.join("dev").as_os_str().as_bytes())?,
        base_dev: c("base", &join("/dev"))?,
        base_dev_nodes: dev_nodes(&c, &join)?,
        base_tmp: c("base", &join("/tmp"))?,
        base_proc: c("base", &join("/proc"))?,
        tmp_opts: c(
            "tmp",
            format!("size={}m,mode=1777", sh.config.tmp_mb).as_bytes(),
        )?,
        mount_proc: key.proc,
        binds: bind_plan(sh, name, key, root, base)?,
        templated: false,
        cwd: match &key.cwd {
            Some(d) if d.is_absolute() => Some(c("working directory", d.as_os_str().as_bytes())?),
            Some(d) => {
                return Err(LaunchError::Unsupported {
                    name: name.to_owned(),
                    runtime: "sandbox",
                    what: format!("a relative working directory ({})", d.display()),
                });
            }
            None => None,
        },
        program,
        argv,
        envp,
        fds,
        rlimits: [
            (libc::RLIMIT_CORE, 0),
            (libc::RLIMIT_NOFILE, sh.config.nofile),
            (
                libc::RLIMIT_FSIZE,
                u64::from(sh.config.tmp_mb) * 1024 * 1024,
            ),
        ],
        cap_last: sh.cap_last,
        seccomp: filters
            .programs()
            .iter()
            .map(|p| {
                p.iter()
                    .map(|f| libc::sock_filter {
                        code: f.code,
                        jt: f.jt,
                        jf: f.jf,
                        k: f.k,
                    })
                    .collect()
            })
            .collect(),
        filter_before_park: key.cold
            && park.is_some()
            && filters.allows_all(spawn::PARKED_CHILD_SYSCALLS),
        park,
    };
    let uid_slot = sh.uids.lock().pop().ok_or_else(|| LaunchError::Sys {
        name: name.to_owned(),
        op: "allocating a uid",
        source: io::Error::other(format!(
            "all {} sandbox uids are in use",
            sh.config.uid_count
        )),
    })?;
    let host_uid = sh.config.uid_base + uid_slot;
    let (cgroup, limits_set) = match sh.take_reused_cgroup(key) {
        Some(cg) => (Some(cg), true),
        None => match sh.take_cgroup(name) {
            Ok(c) => (c, false),
            Err(e) => {
                sh.uids.lock().push(uid_slot);
                return Err(e);
            }
        },
    };
    let release_all = |cg: Option<Cgroup>| {
        if let Some(cg) = cg {
            let _ = cg.remove();
        }
        sh.uids.lock().push(uid_slot);
    };
    if let Some(cg) = cgroup.as_ref().filter(|_| !limits_set)
        && let Err(e) = cg.set_limits(key.memory_mb, key.pids, key.cpu_millis)
    {
        release_all(cgroup);
        return Err(sys_err(name, "setting cgroup limits")(io::Error::other(e)));
    }
    let cgroup_dir_fd = match cgroup.as_ref().and_then(Cgroup::v2_dir) {
        Some(d) => match std::fs::File::open(d) {
            Ok(f) => Some(OwnedFd::from(f)),
            Err(e) => {
                release_all(cgroup);
                return Err(sys_err(name, "opening the cgroup")(e));
            }
        },
        None => None,
    };
    // Clone from inside a network namespace of its kind or the pool (or a
    // fresh one when both are empty) and the kind's mount template when it
    // has one (entered last: making a network namespace reads the host's
    // /proc), then come back.
    let template = sh.mount_template(name, key, &plan);
    let entered = match sh.take_netns(key) {
        Some(fd) => ns::setns_net(fd.as_fd()).map(|()| fd),
        None => ns::new_netns_on_this_thread(),
    };
    let in_template = entered.is_ok()
        && template.is_some_and(|t| match ns::enter_mount_ns(t.as_fd()) {
            Ok(()) => true,
            Err(e) => {
                tracing::warn!(error = %e, "entering a mount template failed; assembling the root");
                false
            }
        });
    plan.templated = in_template;
    let cloned = entered.and_then(|netns| {
        spawn::clone_child(plan, cgroup_dir_fd.as_ref().map(|f| ns::raw(f.as_fd())))
            .map(|c| (c, netns))
    });
    if in_template
        && let Err(e) = ns::leave_mount_ns(sh.host_mntns.as_fd(), sh.root.as_fd(), sh.cwd.as_fd())
    {
        tracing::error!(error = %e, "returning to the host mount namespace failed");
    }
    if let Err(e) = ns::setns_net(sh.host_netns.as_fd()) {
        // This blocking-pool thread is stuck in another namespace; nothing
        // we can do but say so (the sandbox itself is unaffected).
        tracing::error!(error = %e, "returning to the host network namespace failed");
    }
    let (child, netns) = match cloned {
        Ok(c) => c,
        Err(e) => {
            release_all(cgroup);
            return Err(sys_err(name, "clone3 into new namespaces")(e));
        }
    };
    let pid = child.pid;
    let pidfd_for_kill = child.pidfd.try_clone().ok();
    let mnt_ns = sh
        .config
        .hold_mount_namespaces
        .then(|| std::fs::File::open(format!("/proc/{pid}/ns/mnt")).ok())
        .flatten()
        .map(OwnedFd::from);
    let ready = spawn::write_id_maps(pid, host_uid, host_uid)
        .map_err(|e| (spawn::Stage::Sync, e))
        .and_then(|()| match (&cgroup, &cgroup_dir_fd) {
            (Some(cg), None) => cg
                .add(pid)
                .map_err(|e| (spawn::Stage::Sync, io::Error::other(e))),
            _ => Ok(()),
        });
    let setup = match ready {
        Ok(()) => child.go(),
        Err((stage, e)) => Err((stage, e, child.mem)),
    };
    match setup {
        Ok((pidfd, pid, err_r, mem)) => Ok(Started {
            pid,
            pidfd,
            err_r,
            cgroup,
            uid_slot,
            netns: Some(netns),
            mnt_ns,
            mem,
        }),
        Err((stage, e, mem)) => {
            // Its memory is ours again once it is gone (else it leaks).
            if pidfd_for_kill.as_ref().is_some_and(kill_and_reap) {
                mem.release();
            }
            release_all(cgroup);
            Err(LaunchError::Sys {
                name: name.to_owned(),
                op: "setting up the sandbox",
                source: io::Error::new(e.kind(), format!("{}: {e}", stage.describe())),
            })
        }
    }
}

/// Turns a child's exec result into an instance (or a clean error).
fn finish(
    sh: &Arc<Shared>,
    name: &str,
    key: &ParkKey,
    target: &Target,
    st: Started,
) -> Result<SandboxInstance, LaunchError> {
    let exec = spawn::exec_result(&st.err_r);
    finish_with(sh, name, key, target, st, exec)
}

/// [`finish`] once the sandbox's exec result is known.
fn finish_with(
    sh: &Arc<Shared>,
    name: &str,
    key: &ParkKey,
    target: &Target,
    st: Started,
    exec: Result<(), (spawn::Stage, io::Error)>,
) -> Result<SandboxInstance, LaunchError> {
    if let Err((stage, e)) = exec {
        if kill_and_reap(&st.pidfd) {
            st.mem.release();
        }
        if let Some(cg) = st.cgroup {
            let _ = cg.remove();
        }
        sh.uids.lock().push(st.uid_slot);
        let source = io::Error::new(e.kind(), format!("{}: {e}", stage.describe()));
        return Err(match target {
            Target::Program(program) if stage == spawn::Stage::Exec => LaunchError::Program {
                name: name.to_owned(),
                program: program.clone(),
                source,
            },
            Target::Restore(dir) => LaunchError::Sys {
                name: name.to_owned(),
                op: "starting the snapshot restorer",
                source: io::Error::new(
                    e.kind(),
                    format!("snapshot {}: {}: {e}", dir.display(), stage.describe()),
                ),
            },
            Target::Program(_) => LaunchError::Sys {
                name: name.to_owned(),
                op: "setting up the sandbox",
                source,
            },
        });
    }
    // It executed: it has an address space of its own now.
    st.mem.release();
    Ok(SandboxInstance {
        shared: sh.clone(),
        pid: u32::try_from(st.pid).unwrap_or(0),
        pidfd: Some(st.pidfd),
        afd: None,
        cgroup: st.cgroup,
        uid_slot: Some(st.uid_slot),
        kind: key.clone(),
        netns: st.netns,
        mnt_ns: st.mnt_ns,
        memory_mb: key.memory_mb,
        pids: key.pids,
        exit: None,
        exceeded: None,
        counts: (0, 0),
    })
}

/// The synchronous part of a launch, run on a blocking thread: a parked
/// sandbox of the same kind if one is ready, else a cold one (a restore
/// always goes through a parked sandbox).
fn launch_blocking(sh: &Arc<Shared>, spec: &SandboxSpec) -> Result<SandboxInstance, LaunchError> {
    let name = spec.name.as_str();
    let p = prepare(sh, spec)?;
    let key = ParkKey::of(spec);
    let null = &sh.dev_null;
    let mut keep = Vec::new();
    let fds = [
        raw_stdio(&spec.stdin, null, &mut keep, 0).map_err(sys_err(name, "stdin"))?,
        raw_stdio(&spec.stdout, null, &mut keep, 1).map_err(sys_err(name, "stdout"))?,
        raw_stdio(&spec.stderr, null, &mut keep, 2).map_err(sys_err(name, "stderr"))?,
        ns::raw(spec.channel.as_fd()),
    ];
    // The raw fds stay open in this function (`keep`, `Shared`, the spec).
    let borrowed = fds.map(ns::borrow_raw_fd);
    let payload = spawn::encode_request(&p.argv, &p.envp);
    if let Target::Restore(dir) = &p.target {
        let payload = payload.map_err(sys_err(name, "preparing the restore request"))?;
        return restore_blocking(sh, name, &key, &p, dir, borrowed, &payload);
    }
    // Arguments too large for a parked sandbox's request: a cold start.
    while let Ok(payload) = &payload
        && let Some(parked) = sh.take_parked(&key)
    {
        match hand_off(&parked, &borrowed, payload, true) {
            Ok(()) => {
                sh.from_parked.fetch_add(1, Ordering::Relaxed);
                return finish(sh, name, &key, &p.target, parked.into_started());
            }
            Err(e) => {
                tracing::debug!(error = %e, "a parked sandbox could not take its request");
                parked.discard(sh);
            }
        }
    }
    let mode = Mode::Cold {
        fds,
        argv: &p.argv,
        envp: &p.envp,
    };
    let st = start(sh, name, &key, &p.root, mode)?;
    sh.unpooled.fetch_add(1, Ordering::Relaxed);
    finish(sh, name, &key, &p.target, st)
}

/// A pool refill for the keeper threads.
#[derive(Debug, PartialEq, Eq)]
enum Refill {
    /// The cgroup pool.
    Cgroups,
    /// Parked sandboxes of a kind.
    Parked(ParkKey),
    /// Instances of a snapshot restored ahead, and ready restorers of the
    /// kind.
    Restore(ParkKey, PathBuf),
}

/// What the pools kept for some kinds of sandbox, taken out of them (see
/// [`Shared::take_kinds`]).
struct KindPools {
    parked: Vec<Parked>,
    netns: Vec<OwnedFd>,
    cgroups: Vec<Cgroup>,
}

impl KindPools {
    /// Kills and frees the parked sandboxes, closes the namespaces, removes
    /// the cgroups (which can take milliseconds each on cgroup v1).
    fn end(self, sh: &Shared) {
        for p in self.parked {
            p.discard(sh);
        }
        drop(self.netns);
        for c in self.cgroups {
            let _ = c.remove();
        }
    }
}

/// A sandbox that executed the snapshot restorer ahead of time: it blocks
/// on its fd 4 (the other end of `socket`) until it gets a guest's fds 0–3
/// and a restore plan ([`Snapshot::send_restore`]). A restore then costs
/// two messages on the request path instead of a hand-off and an `execve`.
struct ReadyRestorer {
    inst: SandboxInstance,
    socket: OwnedFd,
}

/// Restores `snap` into a sandbox of `key` whose restorer is ready: the
/// guest's fds and the plan in two messages. `None` when none is ready.
fn restore_ready(
    sh: &Shared,
    name: &str,
    key: &ParkKey,
    snap: &Arc<Snapshot>,
    fds: [BorrowedFd<'_>; 4],
) -> Option<Result<SandboxInstance, LaunchError>> {
    while let Some(mut ready) = sh.take_restorer(key) {
        to_foreground(&ready.inst);
        let Err(e) = snap.send_restore(&ready.socket, fds) else {
            sh.restored_ready.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(ready.inst));
        };
        if matches!(ready.inst.try_reap(), Ok(None)) {
            sh.forget_snapshot(key, snap);
            return Some(Err(LaunchError::Sys {
                name: name.to_owned(),
                op: "sending the restore plan",
                source: io::Error::other(e),
            }));
        }
        // It died meanwhile: the next one.
    }
    None
}

/// A restore that needs only a few quick system calls, done on the
/// caller's (async) thread instead of a blocking one: a restorer of the
/// spec's kind is ready and its snapshot is open. `None` otherwise.
fn launch_ready(sh: &Shared, spec: &SandboxSpec) -> Option<Result<SandboxInstance, LaunchError>> {
    let dir = spec
        .snapshot
        .as_ref()
        .filter(|_| spec.start == StartMode::Restore)?;
    let key = ParkKey::of(spec);
    let skey = snapshot_key(dir, &key);
    let restored_waits = sh.restored.lock().get(&skey).is_some_and(|v| !v.is_empty());
    let ready_waits = sh.restorers.lock().get(&key).is_some_and(|v| !v.is_empty());
    if !restored_waits && !ready_waits {
        return None;
    }
    let snap = sh.snapshots.lock().get(&skey).cloned()?;
    let name = spec.name.as_str();
    let fds = spec_fds(spec, &sh.dev_null);
    // Restored ahead: the request's fds are all it needs. One that fails
    // to take them is gone (its restore failed): the next one.
    while let Some(r) = sh.take_restored(&skey) {
        to_foreground(&r.inst);
        if Snapshot::resume_parked(&r.socket, fds).is_ok() {
            sh.resumed.fetch_add(1, Ordering::Relaxed);
            return Some(Ok(r.inst));
        }
    }
    restore_ready(sh, name, &key, &snap, fds)
}

/// How long a restore that finds every pool of its kind empty waits for
/// the keepers' next instance before it sets a sandbox up itself. A keeper
/// restoring ahead finishes one in well under this; a sandbox set up on the
/// request path takes 2–10 ms (a new network namespace, a cgroup v1
/// migration that can wait for an RCU grace period), and it competes with
/// the keepers for the same CPUs.
const REFILL_WAIT: std::time::Duration = std::time::Duration::from_millis(1);

/// A restore of `spec` when its pools are empty: waits up to
/// [`REFILL_WAIT`] for a keeper to add an instance restored ahead or a
/// ready restorer of its kind, and takes it. `None`: none came in time.
async fn wait_for_refill(
    sh: &Arc<Shared>,
    spec: &SandboxSpec,
) -> Option<Result<SandboxInstance, LaunchError>> {
    let deadline = tokio::time::Instant::now() + REFILL_WAIT;
    loop {
        let refilled = sh.refilled.notified();
        tokio::pin!(refilled);
        refilled.as_mut().enable();
        if let Some(r) = launch_ready(sh, spec) {
            sh.refill_waits.fetch_add(1, Ordering::Relaxed);
            return Some(r);
        }
        if tokio::time::timeout_at(deadline, refilled).await.is_err() {
            return None;
        }
    }
}

/// The instance's fds 0–3 of `spec` (`null`: `/dev/null`).
fn spec_fds<'a>(spec: &'a SandboxSpec, null: &'a OwnedFd) -> [BorrowedFd<'a>; 4] {
    fn stdio<'a>(s: &'a Stdio, null: &'a OwnedFd, which: i32) -> BorrowedFd<'a> {
        match s {
            Stdio::Null => null.as_fd(),
            // Our own standard streams, open while we run.
            Stdio::Inherit => ns::borrow_raw_fd(which),
            Stdio::Fd(fd) => fd.as_fd(),
        }
    }
    [
        stdio(&spec.stdin, null, 0),
        stdio(&spec.stdout, null, 1),
        stdio(&spec.stderr, null, 2),
        spec.channel.as_fd(),
    ]
}

/// A fork template's cache key: the kind of sandbox and the snapshot
/// directory.
type TemplateKey = (ParkKey, PathBuf);

/// [`StartMode::Fork`]: a fork of the template of the spec's snapshot in
/// sandboxes of its kind; the template is made first (on a blocking
/// thread) when there is none or it died.
async fn launch_fork(sh: Arc<Shared>, spec: SandboxSpec) -> Result<Box<dyn Instance>, LaunchError> {
    let name = spec.name.clone();
    let dir = fork_snapshot(&name, spec.snapshot.as_deref())?.to_path_buf();
    let tkey = (ParkKey::of(&spec), dir);
    let existing = sh.templates.lock().get(&tkey).cloned();
    if let Some(t) = existing {
        match t.fork(spec_fds(&spec, &sh.dev_null)) {
            Ok(inst) => return Ok(Box::new(inst)),
            Err(ForkError::Failed(e)) => return Err(fork_failed(&name, e)),
            Err(ForkError::Gone(why)) => {
                tracing::warn!(function = %name, "{why}; starting a new fork template");
                sh.forget_template(&tkey, &t);
            }
        }
    }
    tokio::task::spawn_blocking(move || {
        let t = template(&sh, &spec, &tkey)?;
        let r = match t.fork(spec_fds(&spec, &sh.dev_null)) {
            Ok(inst) => Ok(Box::new(inst) as Box<dyn Instance>),
            Err(ForkError::Failed(e)) => Err(fork_failed(&spec.name, e)),
            Err(ForkError::Gone(why)) => {
                sh.forget_template(&tkey, &t);
                Err(fork_failed(&spec.name, io::Error::other(why)))
            }
        };
        // The child has its copies now; ours close here.
        drop(spec);
        r
    })
    .await
    .map_err(|e| LaunchError::Sys {
        name,
        op: "launch thread",
        source: io::Error::other(e),
    })?
}

fn fork_failed(name: &str, source: io::Error) -> LaunchError {
    LaunchError::Sys {
        name: name.to_owned(),
        op: "forking the template",
        source,
    }
}

/// The live fork template of `tkey`, made now when there is none: a parked
/// sandbox of the kind executes the restorer (see [`ready_restorer`]),
/// which restores the snapshot with the template plan and then serves
/// forks on its plan socket.
fn template(
    sh: &Arc<Shared>,
    spec: &SandboxSpec,
    tkey: &TemplateKey,
) -> Result<Arc<Template>, LaunchError> {
    let _one = sh.making_template.lock();
    if let Some(t) = sh.templates.lock().get(tkey).filter(|t| t.alive()) {
        return Ok(t.clone());
    }
    let name = spec.name.as_str();
    let p = prepare(sh, spec)?;
    let (key, dir) = tkey;
    let snap = sh.snapshot(name, dir, key, &p.root)?;
    let r = ready_restorer(sh, key, &p.root, dir, true)?;
    if let Err(e) = snap.send_template_plan(&r.socket) {
        sh.forget_snapshot(key, &snap);
        return Err(LaunchError::Sys {
            name: name.to_owned(),
            op: "sending the fork template plan",
            source: io::Error::other(e),
        });
    }
    let t = Arc::new(Template::new(r.inst, r.socket));
    tracing::debug!(function = %name, pid = t.pid(), snapshot = %dir.display(), "fork template started");
    sh.templates.lock().insert(tkey.clone(), t.clone());
    sh.unless_closing();
    Ok(t)
}

/// A cold start into a sandbox parked for the spec's kind, on the caller's
/// (async) thread: the hand-off is one message, and the program's exec is
/// awaited on the sandbox's error pipe rather than on a blocking thread.
/// `None` when none of the kind is parked (or the request does not fit
/// one): the caller takes the blocking path.
async fn launch_parked(
    sh: &Arc<Shared>,
    spec: &SandboxSpec,
) -> Option<Result<SandboxInstance, LaunchError>> {
    if spec.start != StartMode::Cold {
        return None;
    }
    let key = ParkKey::of(spec);
    if sh.parked.lock().get(&key).is_none_or(Vec::is_empty) {
        return None;
    }
    let p = match prepare(sh, spec) {
        Ok(p) => p,
        Err(e) => return Some(Err(e)),
    };
    let payload = spawn::encode_request(&p.argv, &p.envp).ok()?;
    let fds = spec_fds(spec, &sh.dev_null);
    let parked = loop {
        let parked = sh.take_parked(&key)?;
        match hand_off(&parked, &fds, &payload, true) {
            Ok(()) => break parked,
            Err(e) => {
                tracing::debug!(error = %e, "a parked sandbox could not take its request");
                parked.discard(sh);
            }
        }
    };
    sh.from_parked.fetch_add(1, Ordering::Relaxed);
    let st = parked.into_started();
    // The exec closes the error pipe (or the child writes why it failed
    // first): readable means the answer is there.
    let exec = match st.err_r.try_clone().and_then(ns::register) {
        Ok(afd) => match afd.readable().await {
            Ok(_ready) => spawn::exec_result(&st.err_r),
            Err(e) => Err((spawn::Stage::Sync, e)),
        },
        Err(_) => spawn::exec_result(&st.err_r),
    };
    Some(finish_with(
        sh,
        spec.name.as_str(),
        &key,
        &p.target,
        st,
        exec,
    ))
}

/// A parked sandbox of `key` (or a new one) executing the restorer with
/// `/dev/null` as fds 0–3.
fn ready_restorer(
    sh: &Arc<Shared>,
    key: &ParkKey,
    root: &Path,
    dir: &Path,
    urgent: bool,
) -> Result<ReadyRestorer, LaunchError> {
    let name = "restorer";
    let exe = faas_snapshot::restorer_executable().map_err(|e| LaunchError::Sys {
        name: name.to_owned(),
        op: "staging the snapshot restorer",
        source: io::Error::other(e),
    })?;
    let payload = spawn::encode_request(&[c"faas-restorer".to_owned()], &[])
        .map_err(sys_err(name, "preparing the restore request"))?;
    let (ours, theirs) = seqpacket_pair().map_err(sys_err(name, "creating the plan socket"))?;
    let n = sh.dev_null.as_fd();
    let all = [n, n, n, n, exe, theirs.as_fd()];
    let (parked, _) = hand_to_parked(
        sh,
        name,
        key,
        root,
        (&all, &payload),
        urgent,
        "handing the restorer to a sandbox",
    )?;
    let target = Target::Restore(dir.to_path_buf());
    let inst = finish(sh, name, key, &target, parked.into_started())?;
    Ok(ReadyRestorer { inst, socket: ours })
}

/// Hands `fds` and `payload` (see [`hand_off`]) to a parked sandbox of
/// `key`, parking one on the spot when none is, and passing over parked
/// ones that can no longer take it (they are discarded). Returns the one
/// that took it, and whether it was parked on the spot; a failure of that
/// one is the error (`op`).
fn hand_to_parked(
    sh: &Shared,
    name: &str,
    key: &ParkKey,
    root: &Path,
    (fds, payload): (&[BorrowedFd<'_>], &[u8]),
    urgent: bool,
    op: &'static str,
) -> Result<(Parked, bool), LaunchError> {
    loop {
        let (parked, fresh) = match sh.take_parked(key) {
            Some(parked) => (parked, false),
            None => (sh.park_one(name, key, root)?, true),
        };
        match hand_off(&parked, fds, payload, urgent) {
            Ok(()) => return Ok((parked, fresh)),
            Err(source) if fresh => {
                parked.discard(sh);
                return Err(LaunchError::Sys {
                    name: name.to_owned(),
                    op,
                    source,
                });
            }
            Err(e) => {
                tracing::debug!(error = %e, "a parked sandbox could not take its request");
                parked.discard(sh);
            }
        }
    }
}

/// Restores the snapshot in `dir` into a sandbox whose restorer is ready
/// (two messages: the guest's fds, the plan), else into a parked sandbox
/// (parking one now if none is ready): the plan goes into a fresh socket
/// first, then the sandbox gets fds 0-3, the restorer's executable and that
/// socket's other end, and executes the restorer.
fn restore_blocking(
    sh: &Arc<Shared>,
    name: &str,
    key: &ParkKey,
    p: &Prepared,
    dir: &Path,
    fds: [BorrowedFd<'_>; 4],
    payload: &[u8],
) -> Result<SandboxInstance, LaunchError> {
    let snap = sh.snapshot(name, dir, key, &p.root)?;
    if let Some(r) = restore_ready(sh, name, key, &snap, fds) {
        return r;
    }
    let exe = faas_snapshot::restorer_executable().map_err(|e| LaunchError::Sys {
        name: name.to_owned(),
        op: "staging the snapshot restorer",
        source: io::Error::other(e),
    })?;
    // Sent before any sandbox is used: one message into an empty socket
    // does not block, and a snapshot that cannot be sent (a mapped file
    // changed) costs no sandbox. Our end stays open until the restorer ran.
    let (ours, theirs) =
        seqpacket_pair().map_err(sys_err(name, "creating the restore plan socket"))?;
    if let Err(e) = snap.send_plan(&ours) {
        sh.forget_snapshot(key, &snap);
        return Err(LaunchError::Sys {
            name: name.to_owned(),
            op: "sending the restore plan",
            source: io::Error::other(e),
        });
    }
    let all = [fds[0], fds[1], fds[2], fds[3], exe, theirs.as_fd()];
    let (parked, fresh) = hand_to_parked(
        sh,
        name,
        key,
        &p.root,
        (&all, payload),
        true,
        "handing the restore to a sandbox",
    )?;
    let counter = if fresh { &sh.unpooled } else { &sh.from_parked };
    counter.fetch_add(1, Ordering::Relaxed);
    drop(theirs);
    let inst = finish(sh, name, key, &p.target, parked.into_started());
    drop(ours);
    inst
}

/// Sends a parked sandbox its fds and program (see [`spawn::send_request`]).
/// It was parked by a [`background`] thread: for a request (`urgent`) it
/// runs at normal priority from now on; work ahead of the requests (a
/// restorer made ready, an instance restored ahead) stays behind them
/// until a request takes it (see [`to_foreground`]).
fn hand_off(
    parked: &Parked,
    fds: &[BorrowedFd<'_>],
    payload: &[u8],
    urgent: bool,
) -> io::Result<()> {
    if !matches!(
        ns::pidfd_try_reap(parked.pidfd.as_fd())?,
        ns::Reaped::Running
    ) {
        return Err(io::Error::other("the parked sandbox has exited"));
    }
    if urgent {
        normal_priority(parked.pid);
    }
    spawn::send_request(parked.ctl.as_fd(), fds, payload)
}

/// A sandbox made ahead at [`BACKGROUND_NICE`] now serves a request: back
/// at normal priority.
fn to_foreground(inst: &SandboxInstance) {
    normal_priority(libc::pid_t::try_from(inst.pid).unwrap_or(0));
}

/// The nice value of the threads that refill the pools: on this kind of
/// 2-core machine, parking the next sandbox must not take the CPU from the
/// request being served.
const BACKGROUND_NICE: i32 = 10;

/// Runs `f` (pool refills) at [`BACKGROUND_NICE`] on this thread, then
/// back at 0. Sandboxes it starts inherit the nice value until they are
/// handed a request ([`hand_off`]).
fn background<T>(f: impl FnOnce() -> T) -> T {
    let _ = rustix::process::setpriority_process(None, BACKGROUND_NICE);
    let r = f();
    let _ = rustix::process::setpriority_process(None, 0);
    r
}

/// Puts process `pid` (a sandbox started in the background) back at nice 0.
fn normal_priority(pid: libc::pid_t) {
    if let Some(pid) = rustix::process::Pid::from_raw(pid) {
        let _ = rustix::process::setpriority_process(Some(pid), 0);
    }
}

/// A close-on-exec `SOCK_SEQPACKET` socket pair.
fn seqpacket_pair() -> io::Result<(OwnedFd, OwnedFd)> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(io::Error::from)
}

/// A compiled seccomp program as raw `struct sock_filter`s (`code` u16,
/// `jt` u8, `jf` u8, `k` u32: 8 bytes each, in the kernel's byte order).
fn bpf_bytes(prog: &[seccompiler::sock_filter]) -> Vec<u8> {
    let mut out = Vec::with_capacity(prog.len() * 8);
    for f in prog {
        out.extend_from_slice(&f.code.to_ne_bytes());
        out.push(f.jt);
        out.push(f.jf);
        out.extend_from_slice(&f.k.to_ne_bytes());
    }
    out
}

impl SandboxRuntime for PooledSandboxRuntime {
    fn name(&self) -> &'static str {
        "sandbox"
    }

    fn forget(&self, paths: &[&Path]) {
        self.shared.forget(paths);
    }

    fn counters(&self, each: &mut dyn FnMut(&'static str, u64)) {
        let sh = &self.shared;
        let n = |c: &AtomicU64| c.load(Ordering::Relaxed);
        each("launch_resumed", n(&sh.resumed));
        each("launch_ready_restorer", n(&sh.restored_ready));
        each("launch_parked", n(&sh.from_parked));
        each("launch_unpooled", n(&sh.unpooled));
        each("launch_after_refill_wait", n(&sh.refill_waits));
        each("launch_forked", n(&sh.forked));
        each("netns_created", n(&sh.netns.made));
        each("netns_reused", n(&sh.netns_reused));
        each("cgroups_reused", n(&sh.cgroups_reused));
    }

    fn launch(&self, spec: SandboxSpec) -> BoxFuture<'_, Result<Box<dyn Instance>, LaunchError>> {
        let sh = self.shared.clone();
        Box::pin(async move {
            if spec.start == StartMode::Fork {
                let inst = launch_fork(sh.clone(), spec).await?;
                sh.forked.fetch_add(1, Ordering::Relaxed);
                return Ok(inst);
            }
            let name = spec.name.clone();
            let key = ParkKey::of(&spec);
            let restore = spec
                .snapshot
                .clone()
                .filter(|_| spec.start == StartMode::Restore);
            let fast = match launch_ready(&sh, &spec) {
                Some(r) => Some(r),
                None => match launch_parked(&sh, &spec).await {
                    Some(r) => Some(r),
                    None if restore.is_some() => wait_for_refill(&sh, &spec).await,
                    None => None,
                },
            };
            let inst = match fast {
                Some(r) => r?,
                None => tokio::task::spawn_blocking(move || {
                    let r = launch_blocking(&sh, &spec);
                    // The child has its copies now; ours close here.
                    drop(spec);
                    r
                })
                .await
                .map_err(|e| LaunchError::Sys {
                    name,
                    op: "launch thread",
                    source: io::Error::other(e),
                })??,
            };
            // Off the request path (the keeper thread): cgroups; instances
            // of this snapshot restored ahead and restorers ready in
            // sandboxes of this kind; parked sandboxes of this kind.
            let sh = &self.shared;
            if sh.cgroups.is_some() && sh.cgroup_pool.lock().len() < sh.config.cgroup_pool / 2 {
                sh.want(Refill::Cgroups);
            }
            if let Some(dir) = restore
                && (sh.restorers.lock().get(&key).map_or(0, Vec::len) < sh.config.parked
                    || sh
                        .restored
                        .lock()
                        .get(&snapshot_key(&dir, &key))
                        .map_or(0, Vec::len)
                        < sh.config.parked)
            {
                sh.want(Refill::Restore(key.clone(), dir));
            }
            if sh.parked.lock().get(&key).map_or(0, Vec::len) < sh.config.parked {
                sh.want(Refill::Parked(key));
            }
            Ok(Box::new(inst) as Box<dyn Instance>)
        })
    }
}

/// One sandbox, addressed by its pidfd.
pub(crate) struct SandboxInstance {
    shared: Arc<Shared>,
    pid: u32,
    pidfd: Option<OwnedFd>,
    afd: Option<tokio::io::unix::AsyncFd<OwnedFd>>,
    cgroup: Option<Cgroup>,
    uid_slot: Option<u32>,
    /// Its kind and network namespace, for reuse after the reap.
    kind: ParkKey,
    netns: Option<OwnedFd>,
    /// Its mount namespace, with [`SandboxConfig::hold_mount_namespaces`]:
    /// dropped on a background thread after the reap.
    mnt_ns: Option<OwnedFd>,
    memory_mb: u32,
    pids: u32,
    exit: Option<ExitStatus>,
    exceeded: Option<LimitExceeded>,
    /// Its cgroup's OOM kills and refused forks, read at the reap.
    counts: (u64, u64),
}

impl SandboxInstance {
    fn fd(&self) -> Option<std::os::fd::BorrowedFd<'_>> {
        self.pidfd
            .as_ref()
            .map(|f| f.as_fd())
            .or_else(|| self.afd.as_ref().map(|a| a.get_ref().as_fd()))
    }

    /// After the exit: note the limit that was hit. What it holds is given
    /// back when it is dropped ([`SandboxInstance::release`]), so whoever
    /// waited can answer first: giving back wakes other threads (pool
    /// keepers, the blocking pool), which on a small VM costs the waiter
    /// tens of microseconds each.
    fn teardown(&mut self, status: ExitStatus) {
        self.exit = Some(status);
        if let Some(cg) = &self.cgroup {
            let counts = (cg.oom_kills(), cg.pids_refused());
            if counts.0 > 0 {
                self.exceeded = Some(LimitExceeded::Memory {
                    limit_mb: self.memory_mb,
                });
            } else if counts.1 > 0 {
                self.exceeded = Some(LimitExceeded::Pids { limit: self.pids });
            }
            self.counts = counts;
        }
    }

    /// After the reap: keeps the cgroup for the next sandbox of the kind or
    /// removes it, gives the uid and the network namespace back, drops the
    /// mount namespace.
    fn release(&mut self) {
        if let Some(cg) = self.cgroup.take() {
            // Kept for the next sandbox of the kind if it can be, else
            // removed, which can take milliseconds (v1 memory controller):
            // not on the async thread that waits for the instance, which
            // may be serving the next request.
            if let Err(cg) = self.shared.recycle_cgroup(&self.kind, cg, self.counts) {
                let remove = move || {
                    if let Err(e) = cg.remove() {
                        tracing::warn!(error = %e, "removing a sandbox cgroup failed");
                    }
                };
                match tokio::runtime::Handle::try_current() {
                    Ok(rt) => drop(rt.spawn_blocking(move || background(remove))),
                    Err(_) => remove(),
                }
            }
        }
        if let Some(slot) = self.uid_slot.take() {
            self.shared.uids.lock().push(slot);
        }
        if let Some(fd) = self.netns.take() {
            self.shared.recycle_netns(&self.kind, fd);
        }
        if let Some(fd) = self.mnt_ns.take() {
            match tokio::runtime::Handle::try_current() {
                Ok(rt) => drop(rt.spawn_blocking(move || background(|| drop(fd)))),
                Err(_) => drop(fd),
            }
        }
    }

    /// OOM kills in its cgroup so far (none without a cgroup), and its
    /// memory limit.
    pub(crate) fn oom_kills(&self) -> (u64, u32) {
        (
            self.cgroup.as_ref().map_or(0, Cgroup::oom_kills),
            self.memory_mb,
        )
    }

    pub(crate) fn try_reap(&mut self) -> io::Result<Option<ExitStatus>> {
        if let Some(s) = self.exit {
            return Ok(Some(s));
        }
        let Some(fd) = self.fd() else {
            return Ok(self.exit);
        };
        let st = match ns::pidfd_try_reap(fd)? {
            ns::Reaped::Running => return Ok(None),
            ns::Reaped::Exited(c) => ExitStatus::Code(c),
            ns::Reaped::Signaled(s) => ExitStatus::Signal(s),
        };
        self.teardown(st);
        Ok(Some(st))
    }
}

impl Instance for SandboxInstance {
    fn pid(&self) -> u32 {
        self.pid
    }

    fn wait(&mut self) -> BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(async move {
            // Registered by the first wait, which also tries to reap at
            // once; later waits (a keep-alive instance is waited for each
            // time it parks idle) reap only once the pidfd is readable, so
            // a wait that is dropped before the exit costs no system call.
            if let Some(fd) = self.pidfd.take() {
                self.afd = Some(ns::register(fd)?);
                if let Some(s) = self.try_reap()? {
                    return Ok(s);
                }
            }
            if let Some(s) = self.exit {
                return Ok(s);
            }
            loop {
                let Some(afd) = &self.afd else {
                    return Err(io::Error::other("sandbox has no pidfd"));
                };
                let mut g = afd.readable().await?;
                let st = match ns::pidfd_try_reap(g.get_ref().as_fd())? {
                    ns::Reaped::Running => {
                        g.clear_ready();
                        continue;
                    }
                    ns::Reaped::Exited(c) => ExitStatus::Code(c),
                    ns::Reaped::Signaled(s) => ExitStatus::Signal(s),
                };
                self.teardown(st);
                return Ok(st);
            }
        })
    }

    fn kill(&mut self) -> io::Result<()> {
        if self.exit.is_some() {
            return Ok(());
        }
        match self.fd() {
            // The instance is pid 1 of its pid namespace: killing it ends
            // every process inside.
            Some(fd) => ns::pidfd_kill(fd, libc::SIGKILL),
            None => Ok(()),
        }
    }

    fn exceeded(&self) -> Option<LimitExceeded> {
        self.exceeded
    }
}

impl Drop for SandboxInstance {
    fn drop(&mut self) {
        if self.exit.is_none() {
            let _ = self.kill();
            // SIGKILL ends it promptly; reap it so nothing is left behind.
            for _ in 0..5000 {
                match self.try_reap() {
                    Ok(None) => std::thread::sleep(std::time::Duration::from_micros(200)),
                    _ => break,
                }
            }
        }
        if self.exit.is_some() {
            self.release();
        }
    }
}
