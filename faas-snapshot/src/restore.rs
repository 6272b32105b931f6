//! Restore: a snapshot → a restore plan (once) → a running process per
//! restore.

use std::ffi::CString;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write as _};
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use faas_core::{ExitStatus, SnapshotError};

use crate::dump::VDSO_NAMES;
use crate::meta::{self, FileId, META_FILE, Meta, PAGE, PAGES_FILE, Source, TASK_SIZE};
use crate::plan::{self, Header, VdsoPart};
use crate::pool;
use crate::sys::{self, spawn};
use crate::workingset::{READ_SET_FILE, WORKING_SET_FILE, WorkingSet};
use parking_lot::Mutex;

/// The restorer executable, built by build.rs.
const RESTORER: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/faas-restorer"));

fn invalid(dir: &Path, what: impl Into<String>) -> SnapshotError {
    SnapshotError::Invalid {
        dir: dir.to_path_buf(),
        what: what.into(),
    }
}

fn sys_err(op: &'static str) -> impl Fn(io::Error) -> SnapshotError {
    move |source| SnapshotError::Sys { op, source }
}

/// What this host offers a snapshot: compared with what it recorded.
struct Host {
    kernel: String,
    xcr0: u64,
    vdso_base: u64,
    /// (name, start, end) of vvar, vvar_vclock, vdso as this kernel lays
    /// them out.
    vdso: Vec<(String, u64, u64)>,
    vdso_hash: String,
    /// The restorer's image: [start, end).
    restorer: (u64, u64),
    /// The restorer as an executable memfd.
    exe: OwnedFd,
}

fn host() -> Result<&'static Host, String> {
    static HOST: OnceLock<Result<Host, String>> = OnceLock::new();
    HOST.get_or_init(|| {
        let maps =
            fs::read_to_string("/proc/self/maps").map_err(|e| format!("/proc/self/maps: {e}"))?;
        let vdso: Vec<(String, u64, u64)> = maps
            .lines()
            .filter_map(crate::maps::parse_line)
            .filter(|v| VDSO_NAMES.contains(&v.name.as_str()))
            .map(|v| (v.name, v.start, v.end))
            .collect();
        let vdso_base = sys::vdso_base();
        let own = vdso
            .iter()
            .find(|(n, _, _)| n == "[vdso]")
            .map(|&(_, s, e)| sys::own_vdso(s, e - s))
            .unwrap_or_default();
        let restorer =
            elf_range(RESTORER).ok_or("the embedded restorer is not a valid ELF executable")?;
        let exe = restorer_memfd().map_err(|e| format!("cannot stage the restorer: {e}"))?;
        Ok(Host {
            kernel: sys::kernel(),
            xcr0: sys::xcr0(),
            vdso_base,
            vdso,
            vdso_hash: blake3::hash(&own).to_hex().to_string(),
            restorer,
            exe,
        })
    })
    .as_ref()
    .map_err(Clone::clone)
}

fn restorer_memfd() -> io::Result<OwnedFd> {
    use rustix::fs::{MemfdFlags, SealFlags};
    let fd = rustix::fs::memfd_create(
        "faas-restorer",
        MemfdFlags::CLOEXEC | MemfdFlags::ALLOW_SEALING,
    )?;
    let mut f = File::from(fd);
    f.write_all(RESTORER)?;
    let fd = OwnedFd::from(f);
    rustix::fs::fcntl_add_seals(
        &fd,
        SealFlags::WRITE | SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL,
    )?;
    Ok(fd)
}

/// The page-aligned address range the PT_LOAD segments of a static ELF
/// executable occupy.
fn elf_range(elf: &[u8]) -> Option<(u64, u64)> {
    const PT_LOAD: u32 = 1;
    let u16_at = |o: usize| Some(u16::from_le_bytes(elf.get(o..o + 2)?.try_into().ok()?));
    let u32_at = |o: usize| Some(u32::from_le_bytes(elf.get(o..o + 4)?.try_into().ok()?));
    let u64_at = |o: usize| Some(u64::from_le_bytes(elf.get(o..o + 8)?.try_into().ok()?));
    if elf.get(..6)? != b"\x7fELF\x02\x01" {
        return None;
    }
    let phoff = usize::try_from(u64_at(0x20)?).ok()?;
    let phentsize = usize::from(u16_at(0x36)?);
    let (mut lo, mut hi) = (u64::MAX, 0);
    for i in 0..usize::from(u16_at(0x38)?) {
        let ph = phoff + i * phentsize;
        if u32_at(ph)? == PT_LOAD {
            let vaddr = u64_at(ph + 16)?;
            lo = lo.min(vaddr & !(PAGE - 1));
            hi = hi.max((vaddr + u64_at(ph + 40)? + PAGE - 1) & !(PAGE - 1));
        }
    }
    (lo < hi).then_some((lo, hi))
}

/// The restorer, as a sealed executable memfd (close-on-exec), for
/// runtimes that start it themselves: exec it with `execveat(fd, "",
/// AT_EMPTY_PATH)`, with the guest's fds 0–3 and a SOCK_SEQPACKET socket as
/// fd 4, then [`Snapshot::send_plan`] on the socket's other end.
pub fn restorer_executable() -> Result<BorrowedFd<'static>, SnapshotError> {
    host()
        .map(|h| h.exe.as_fd())
        .map_err(|e| SnapshotError::Sys {
            op: "stage the restorer",
            source: io::Error::other(e),
        })
}

/// A snapshot opened for restoring: checked against this host once, its
/// files open and its restore plan built, so each restore only starts the
/// restorer and hands it the plan.
#[derive(Debug)]
pub struct Snapshot {
    dir: PathBuf,
    meta: Meta,
    /// The page file, then every mapped file, in plan order.
    fds: Vec<File>,
    plan: Vec<u8>,
    cwd: Option<CString>,
    /// The recorded working set, as loaded when the snapshot was opened,
    /// and again whenever its file changed (it is recorded after the first
    /// trial restore, which already opened the snapshot).
    working_set: Mutex<LoadedWorkingSet>,
}

/// A snapshot's working set, checked against its areas.
#[derive(Debug, Default)]
struct LoadedWorkingSet {
    /// The file's identity (inode, size, mtime) when it was read; `None`:
    /// there was none.
    id: Option<(u64, u64, i128)>,
    ranges: Vec<plan::Range>,
    /// Why the file, or some of its ranges, were not used.
    issues: Vec<String>,
}

/// The identity of the working-set file of `dir`; `None` when there is none.
fn working_set_id(dir: &Path) -> Option<(u64, u64, i128)> {
    let m = fs::metadata(dir.join(WORKING_SET_FILE)).ok()?;
    Some((
        m.ino(),
        m.size(),
        i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec()),
    ))
}

/// Loads the working set of the snapshot in `dir`; what is wrong with it is
/// logged and kept in `issues`, never fatal: without it the snapshot still
/// restores, only its parked instances are not pre-faulted.
fn load_working_set(dir: &Path, meta: &Meta) -> LoadedWorkingSet {
    let id = working_set_id(dir);
    let mut issues = Vec::new();
    let mut ranges = match WorkingSet::read(dir) {
        Ok(None) => Vec::new(),
        Ok(Some(mut ws)) => {
            for what in ws.keep_inside(meta) {
                issues.push(format!(
                    "working set {}: range {what}: dropped",
                    dir.join(WORKING_SET_FILE).display()
                ));
            }
            ranges_of(&ws, plan::POPULATE_WRITE)
        }
        Err(e) => {
            issues.push(format!("{e}: ignored, no page is pre-faulted"));
            Vec::new()
        }
    };
    // The pages a request only read: mapped ahead too (read-only).
    match WorkingSet::read_set(dir) {
        Ok(None) => {}
        Ok(Some(mut read)) => {
            for what in read.keep_inside_readable(meta) {
                issues.push(format!(
                    "read set {}: range {what}: dropped",
                    dir.join(READ_SET_FILE).display()
                ));
            }
            ranges.extend(ranges_of(&read, plan::POPULATE_READ));
        }
        Err(e) => issues.push(format!("{e}: ignored, no page is mapped ahead")),
    }
    for issue in &issues {
        tracing::warn!(snapshot = %dir.display(), "{issue}");
    }
    LoadedWorkingSet { id, ranges, issues }
}

/// The plan's ranges of `ws`, each with `advice`.
fn ranges_of(ws: &WorkingSet, advice: u32) -> Vec<plan::Range> {
    ws.ranges()
        .iter()
        .map(|&(start, len)| plan::Range {
            start,
            len,
            advice,
            pad: 0,
        })
        .collect()
}

/// What an instance restored ahead does after installing its seccomp
/// programs early ([`RestoreOptions::filters_before_park`]): wait for its
/// fds 0–3 (`recvmsg`), move them into place (`fcntl`, `dup2`, `close`,
/// `close_range`), report a failure (`write`, `exit_group`), unmap itself
/// and return into the guest (`munmap`, `rt_sigreturn`).
pub const PARKED_SYSCALLS: &[&str] = &[
    "recvmsg",
    "fcntl",
    "dup2",
    "close",
    "close_range",
    "write",
    "exit_group",
    "munmap",
    "rt_sigreturn",
];

/// How restored processes are confined beyond what their snapshot holds.
#[derive(Debug, Clone, Default)]
pub struct RestoreOptions {
    /// Classic-BPF seccomp programs (`struct sock_filter`s, 8 bytes each)
    /// that the restorer installs, in order, as its very last step: after
    /// everything else is in place and before the guest's code runs again.
    pub seccomp: Vec<Vec<u8>>,
    /// Set no_new_privs before installing the filter (needed without
    /// CAP_SYS_ADMIN).
    pub no_new_privs: bool,
    /// An instance restored ahead ([`Snapshot::send_parked_plan`])
    /// installs `seccomp` before it waits for its fds 0–3 instead of after,
    /// taking that work off the request path. Set it only when the
    /// programs allow every syscall of [`PARKED_SYSCALLS`], which the
    /// restorer makes after them.
    pub filters_before_park: bool,
    /// Where the mapped files are on this host when the checkpointed
    /// process saw them elsewhere: `(as the process saw it, on the host)`
    /// path prefixes, e.g. a sandbox's read-only bind `/var/task` of a
    /// host directory. The first matching prefix under which the file
    /// exists applies, else the path as the process saw it; the files'
    /// device and inode must still match (a bind keeps both).
    pub path_map: Vec<(PathBuf, PathBuf)>,
    /// Host directories where immutable read-only images (EROFS) are
    /// mounted, e.g. a function's faas-rofs image: a mapped file below one
    /// of them is the same file when its inode, size and mtime match, on
    /// whatever device (mounting the image again gives it a new one).
    pub images: Vec<PathBuf>,
}

/// The host path of a file the process mapped as `seen`: below the first
/// matching prefix of `map` where it exists, else `seen` itself where it
/// exists (a process checkpointed outside any sandbox), else the first
/// match (for the error). Whichever it is, its identity is checked.
fn host_path(seen: &str, map: &[(PathBuf, PathBuf)]) -> PathBuf {
    let seen = Path::new(seen);
    let mut candidates = map
        .iter()
        .filter_map(|(guest, host)| Some(host.join(seen.strip_prefix(guest).ok()?)));
    let first = candidates.next();
    first
        .iter()
        .cloned()
        .chain(candidates)
        .chain(std::iter::once(seen.to_path_buf()))
        .find(|p| p.exists())
        .or(first)
        .unwrap_or_else(|| seen.to_path_buf())
}

/// The descriptors a restored process starts with.
#[derive(Debug, Default)]
pub struct RestoreIo {
    /// fd 0 (None: closed).
    pub stdin: Option<OwnedFd>,
    /// fd 1 (None: closed).
    pub stdout: Option<OwnedFd>,
    /// fd 2 (None: closed).
    pub stderr: Option<OwnedFd>,
    /// fd 3, the guest channel (None: closed).
    pub channel: Option<OwnedFd>,
    /// Use the caller's own fds 0–2 where the fields above are None.
    pub inherit_stdio: bool,
}

impl RestoreIo {
    /// The descriptors that travel to the restorer (or a template's
    /// child), in fd order, and the mask saying which of fds 0–3 they are.
    pub(crate) fn fds(&self) -> (u64, Vec<BorrowedFd<'_>>) {
        let mut mask = 0u64;
        let mut fds = Vec::with_capacity(4);
        let std = [&self.stdin, &self.stdout, &self.stderr];
        for (i, own) in std.into_iter().enumerate() {
            if let Some(fd) = std_fd(own, i as i32, self.inherit_stdio) {
                fds.push(fd);
                mask |= 1 << i;
            }
        }
        if let Some(ch) = &self.channel {
            fds.push(ch.as_fd());
            mask |= 1 << 3;
        }
        (mask, fds)
    }
}

/// `/dev/null`, read-write: fds a restored process should have but nobody
/// gave.
pub(crate) fn dev_null() -> Result<OwnedFd, SnapshotError> {
    File::options()
        .read(true)
        .write(true)
        .open("/dev/null")
        .map(OwnedFd::from)
        .map_err(|source| SnapshotError::Sys {
            op: "open /dev/null",
            source,
        })
}

impl Snapshot {
    /// Opens the snapshot in `dir`: reads and checks its metadata, refuses it
    /// when this host's vDSO, xsave features or kernel differ from the
    /// snapshot's or a mapped file changed, and builds the restore plan.
    pub fn open(dir: &Path) -> Result<Snapshot, SnapshotError> {
        Self::open_with(dir, &RestoreOptions::default())
    }

    /// [`Snapshot::open`], with every restore confined by `options`.
    pub fn open_with(dir: &Path, options: &RestoreOptions) -> Result<Snapshot, SnapshotError> {
        for bpf in &options.seccomp {
            let n = bpf.len() / plan::FILTER_INSN_LEN;
            if bpf.len() % plan::FILTER_INSN_LEN != 0 || !(1..=4096).contains(&n) {
                return Err(invalid(
                    dir,
                    format!(
                        "a seccomp program of {} bytes is not 1-4096 instructions",
                        bpf.len()
                    ),
                ));
            }
        }
        let host = host().map_err(|e| invalid(dir, e))?;
        let meta_path = dir.join(META_FILE);
        let bytes = fs::read(&meta_path)
            .map_err(|e| invalid(dir, format!("cannot read {}: {e}", meta_path.display())))?;
        let mut meta = Meta::decode(&bytes).map_err(|e| invalid(dir, e))?;
        check_host(dir, &meta, host)?;

        let mut fds = Vec::with_capacity(1 + meta.files.len());
        let pages_path = dir.join(PAGES_FILE);
        let pages = File::open(&pages_path)
            .map_err(|e| invalid(dir, format!("cannot open {}: {e}", pages_path.display())))?;
        let len = pages
            .metadata()
            .map_err(sys_err("stat the page file"))?
            .len();
        if len != meta.pages_len {
            return Err(invalid(
                dir,
                format!(
                    "{PAGES_FILE} is {len} bytes; the metadata says {}",
                    meta.pages_len
                ),
            ));
        }
        fds.push(pages);
        for i in 0..meta.files.len() {
            let f = &meta.files[i];
            let writable = meta.areas.iter().any(|a| {
                a.shared()
                    && a.prot() & libc::PROT_WRITE as u32 != 0
                    && matches!(a.source, Source::File { file, .. } if file == i)
            });
            let path = host_path(&f.path, &options.path_map);
            let file = OpenOptions::new()
                .read(true)
                .write(writable)
                .open(&path)
                .map_err(|e| invalid(dir, format!("mapped file {}: {e}", path.display())))?;
            if options.images.iter().any(|m| path.starts_with(m))
                && let Ok(m) = file.metadata()
            {
                // Same image, mounted again: its files keep their inodes.
                meta.files[i].dev = m.dev();
            }
            check_file(dir, &meta.files[i], &file)?;
            fds.push(file);
        }
        if fds.len() > plan::MAX_FDS {
            return Err(invalid(
                dir,
                format!(
                    "{} mapped files; at most {} are supported",
                    fds.len() - 1,
                    plan::MAX_FDS - 1
                ),
            ));
        }
        let plan = build_plan(dir, &meta, host, options)?;
        let cwd = CString::new(meta.cwd.clone())
            .ok()
            .filter(|_| Path::new(&meta.cwd).is_dir());
        let working_set = Mutex::new(load_working_set(dir, &meta));
        Ok(Snapshot {
            dir: dir.to_path_buf(),
            meta,
            fds,
            plan,
            cwd,
            working_set,
        })
    }

    /// Checks that no mapped file changed since the snapshot was opened.
    fn check_files(&self) -> Result<(), SnapshotError> {
        for (f, file) in self.meta.files.iter().zip(&self.fds[1..]) {
            check_file(&self.dir, f, file)?;
        }
        Ok(())
    }

    /// The snapshot directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Starts a new process from the snapshot. It runs from where the
    /// checkpointed process stopped, with `io`'s descriptors as fds 0–3.
    pub fn restore(&self, io: RestoreIo) -> Result<Restored, SnapshotError> {
        self.start(&self.plan, &io).map(|(restored, _)| restored)
    }

    /// Starts the restorer with `io` as fds 0–3 and sends it `plan`; returns
    /// the process and our end of its plan socket.
    pub(crate) fn start(
        &self,
        plan: &[u8],
        io: &RestoreIo,
    ) -> Result<(Restored, OwnedFd), SnapshotError> {
        let host = host().map_err(|e| invalid(&self.dir, e))?;
        self.check_files()?;
        let mut ready = pool::take(host.exe.as_fd()).map_err(sys_err("start the restorer"))?;
        let cwd = self.cwd.as_ref().map_or(&[][..], |c| c.as_bytes());
        if let Err(e) = send_io(&ready.socket, io, cwd) {
            // A restorer started earlier that died (killed by someone):
            // start one now.
            if !matches!(e.raw_os_error(), Some(libc::EPIPE | libc::ECONNREFUSED)) {
                return Err(sys_err("hand the restorer its descriptors")(e));
            }
            drop(Restored::new(ready.pid, ready.pidfd));
            ready = pool::start(host.exe.as_fd()).map_err(sys_err("start the restorer"))?;
            send_io(&ready.socket, io, cwd)
                .map_err(sys_err("hand the restorer its descriptors"))?;
        }
        let restored = Restored::new(ready.pid, ready.pidfd);
        let borrowed: Vec<BorrowedFd<'_>> = self.fds.iter().map(|f| f.as_fd()).collect();
        send_with_fds(&ready.socket, plan, &borrowed).map_err(sys_err("send the restore plan"))?;
        // The guest is on its way: start the next restore's restorer now.
        pool::refill(host.exe.as_fd());
        Ok((restored, ready.socket))
    }

    /// Sends the restore plan and its descriptors on `socket`, whose other
    /// end is fd 4 of a restorer started by someone else (a sandbox runtime:
    /// see [`restorer_executable`]).
    pub fn send_plan(&self, socket: &OwnedFd) -> Result<(), SnapshotError> {
        self.send_plan_bytes(socket, &self.plan)
    }

    /// No fds 0–3 (the runtime placed them, or a later message brings
    /// them), then `plan` with the snapshot's descriptors.
    fn send_plan_bytes(&self, socket: &OwnedFd, plan: &[u8]) -> Result<(), SnapshotError> {
        self.check_files()?;
        send_io(socket, &RestoreIo::default(), &[]).map_err(sys_err("send the restore plan"))?;
        let borrowed: Vec<BorrowedFd<'_>> = self.fds.iter().map(|f| f.as_fd()).collect();
        send_with_fds(socket, plan, &borrowed).map_err(sys_err("send the restore plan"))
    }

    /// Sends the guest's fds 0–3 (`io`, in order) and the restore plan on
    /// `socket`, whose other end is fd 4 of a restorer that someone else
    /// started ahead of time and that waits for them (a sandbox runtime's
    /// pool of sandboxes with their restorer already running: see
    /// [`restorer_executable`]).
    ///
    /// # Errors
    ///
    /// A mapped file changed since the snapshot was opened, or the
    /// restorer is gone (the socket refuses the message).
    pub fn send_restore(
        &self,
        socket: &OwnedFd,
        io: [BorrowedFd<'_>; 4],
    ) -> Result<(), SnapshotError> {
        self.check_files()?;
        send_io_fds(socket, 0b1111, &io, &[]).map_err(sys_err("send the guest's descriptors"))?;
        let borrowed: Vec<BorrowedFd<'_>> = self.fds.iter().map(|f| f.as_fd()).collect();
        send_with_fds(socket, &self.plan, &borrowed).map_err(sys_err("send the restore plan"))
    }

    /// Makes the restorer at the other end of `socket` (fd 4 of a restorer
    /// someone else started, whose fds 0–3 are placeholders: a sandbox
    /// runtime's) a fork template: it rebuilds the process and then, instead
    /// of becoming the guest, forks one guest per [`crate::template_fork`]
    /// on that socket, until the socket closes.
    ///
    /// # Errors
    ///
    /// A mapped file changed since the snapshot was opened, or the
    /// restorer is gone.
    pub fn send_template_plan(&self, socket: &OwnedFd) -> Result<(), SnapshotError> {
        self.send_plan_bytes(socket, &self.template_plan())
    }

    /// The restore plan, for a template (`plan::MODE_TEMPLATE`).
    pub(crate) fn template_plan(&self) -> Vec<u8> {
        self.plan_in_mode(plan::MODE_TEMPLATE)
    }

    fn plan_in_mode(&self, mode: u32) -> Vec<u8> {
        let mut plan = self.plan.clone();
        let at = std::mem::offset_of!(Header, mode);
        plan[at..at + 4].copy_from_slice(&mode.to_ne_bytes());
        plan
    }

    /// Restores ahead of a request: sends the plan on `socket` (the other
    /// end of fd 4 of a restorer that someone else started, whose fds 0–3
    /// are placeholders) in a mode where the restorer rebuilds the whole
    /// process, then waits on that socket for the guest's real fds 0–3
    /// ([`Snapshot::resume_parked`]) before it installs the seccomp
    /// programs and becomes the guest. Closing the socket instead ends it.
    ///
    /// # Errors
    ///
    /// A mapped file changed since the snapshot was opened, or the
    /// restorer is gone.
    ///
    /// The snapshot's recorded working set ([`WorkingSet`], re-read when
    /// its file changed since the last call) travels with the plan: the
    /// restorer pre-faults it for writing before it waits, so those
    /// copy-on-write faults are taken now rather than by the request.
    pub fn send_parked_plan(&self, socket: &OwnedFd) -> Result<(), SnapshotError> {
        self.send_plan_bytes(socket, &self.parked_plan())
    }

    /// Restores ahead of a request without a sandbox: starts a restorer
    /// and sends it the plan of [`Snapshot::send_parked_plan`]. The process
    /// rebuilds itself, pre-faults the working set, then waits on the
    /// returned socket for [`Snapshot::resume_parked`]; dropping the socket
    /// ends it.
    ///
    /// # Errors
    ///
    /// A mapped file changed since the snapshot was opened, or the
    /// restorer cannot be started.
    pub fn restore_parked(&self) -> Result<(Restored, OwnedFd), SnapshotError> {
        self.start(&self.parked_plan(), &RestoreIo::default())
    }

    /// The plan of an instance restored ahead: `MODE_PARKED`, with the
    /// working set's ranges after the frame (none when the plan would not
    /// fit).
    fn parked_plan(&self) -> Vec<u8> {
        let mut plan = self.plan_in_mode(plan::MODE_PARKED);
        let mut ws = self.working_set.lock();
        if working_set_id(&self.dir) != ws.id {
            *ws = load_working_set(&self.dir, &self.meta);
        }
        let extra = ws.ranges.len() * plan::RANGE_LEN;
        if ws.ranges.is_empty() || plan.len() + extra > plan::PLAN_MAX {
            return plan;
        }
        for r in &ws.ranges {
            push_pod(&mut plan, r);
        }
        let at = std::mem::offset_of!(Header, n_prefault);
        plan[at..at + 4].copy_from_slice(&(ws.ranges.len() as u32).to_ne_bytes());
        plan
    }

    /// Pages of the working set that instances restored ahead pre-fault
    /// (0: none recorded, or it was refused).
    pub fn working_set_pages(&self) -> u64 {
        self.prefault_pages(plan::POPULATE_WRITE)
    }

    /// Pages of the read set that instances restored ahead map ahead (0:
    /// none recorded, or it was refused).
    pub fn read_set_pages(&self) -> u64 {
        self.prefault_pages(plan::POPULATE_READ)
    }

    fn prefault_pages(&self, advice: u32) -> u64 {
        self.working_set
            .lock()
            .ranges
            .iter()
            .filter(|r| r.advice == advice)
            .map(|r| r.len / PAGE)
            .sum()
    }

    /// Why the working set, or some of its ranges, were not used (each
    /// also logged as a warning when it was loaded).
    pub fn working_set_issues(&self) -> Vec<String> {
        self.working_set.lock().issues.clone()
    }

    /// Hands an instance restored by [`Snapshot::send_parked_plan`] its
    /// fds 0–3 (`io`, in order): it becomes the guest.
    ///
    /// # Errors
    ///
    /// The restored instance is gone (its restore failed, or it was killed).
    pub fn resume_parked(socket: &OwnedFd, io: [BorrowedFd<'_>; 4]) -> Result<(), SnapshotError> {
        let cmd = plan::ForkCommand {
            fds: 0b1111,
            ..plan::ForkCommand::default()
        };
        send_with_fds(socket, crate::sys::pod_bytes(&cmd), &io)
            .map_err(sys_err("hand the restored instance its descriptors"))
    }

    /// A human-readable summary: areas, sources and sizes.
    pub fn describe(&self) -> String {
        describe(&self.meta)
    }
}

fn check_host(dir: &Path, meta: &Meta, host: &Host) -> Result<(), SnapshotError> {
    if meta.kernel != host.kernel {
        return Err(invalid(
            dir,
            format!(
                "taken on kernel {:?}; this host runs {:?}",
                meta.kernel, host.kernel
            ),
        ));
    }
    if meta.xcr0 != host.xcr0 {
        return Err(invalid(
            dir,
            format!(
                "taken on a CPU with xsave features {:#x}; this CPU has {:#x}",
                meta.xcr0, host.xcr0
            ),
        ));
    }
    if meta.vdso_hash != host.vdso_hash {
        return Err(invalid(dir, "its vDSO bytes differ from this host's vDSO"));
    }
    // Same parts, same sizes, same relative offsets.
    let snap_base = meta
        .vdso
        .iter()
        .find(|v| v.name == "[vdso]")
        .map(|v| v.start);
    let host_base = host.vdso.iter().find(|v| v.0 == "[vdso]").map(|v| v.1);
    let same_layout = meta.vdso.len() == host.vdso.len()
        && match (snap_base, host_base) {
            (Some(sb), Some(hb)) => host.vdso.iter().all(|(name, s, e)| {
                meta.vdso.iter().any(|v| {
                    &v.name == name
                        && v.end - v.start == e - s
                        && v.start.wrapping_sub(sb) == s.wrapping_sub(hb)
                })
            }),
            _ => false,
        };
    if !same_layout {
        return Err(invalid(
            dir,
            "its vvar/vdso layout differs from this kernel's",
        ));
    }
    Ok(())
}

fn check_file(dir: &Path, want: &FileId, file: &File) -> Result<(), SnapshotError> {
    let m = file.metadata().map_err(sys_err("stat a mapped file"))?;
    let mtime = i128::from(m.mtime()) * 1_000_000_000 + i128::from(m.mtime_nsec());
    if m.dev() != want.dev || m.ino() != want.ino || m.size() != want.size || mtime != want.mtime_ns
    {
        return Err(invalid(
            dir,
            format!(
                "mapped file {} changed since the snapshot (it is {} bytes, mtime {}; the snapshot has {} bytes, mtime {}, or another inode)",
                want.path,
                m.size(),
                mtime,
                want.size,
                want.mtime_ns
            ),
        ));
    }
    Ok(())
}

/// One plan area (the plan's own type, built from the metadata).
fn plan_area(a: &meta::Area) -> plan::Area {
    let mut flags = if a.shared() {
        libc::MAP_SHARED
    } else {
        libc::MAP_PRIVATE
    } as u32;
    let (fd, offset) = match a.source {
        Source::Zero => {
            flags |= (libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u32;
            (plan::ANON, 0)
        }
        Source::Pages { offset, .. } => (0, offset),
        Source::File { file, offset } => (1 + file as u32, offset),
    };
    plan::Area {
        start: a.start,
        len: a.len(),
        offset,
        prot: a.prot(),
        flags,
        fd,
        advice: a.advice,
    }
}

fn overlaps(a: (u64, u64), b: (u64, u64)) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Bytes of frame before the xsave area: pretcode (8), ucontext (304), padding.
const FRAME_FPSTATE: usize = 320;

fn build_plan(
    dir: &Path,
    meta: &Meta,
    host: &Host,
    options: &RestoreOptions,
) -> Result<Vec<u8>, SnapshotError> {
    let mut areas: Vec<plan::Area> = meta.areas.iter().map(plan_area).collect();
    let mut taken: Vec<(u64, u64)> = meta.areas.iter().map(|a| (a.start, a.end)).collect();
    taken.extend(meta.vdso.iter().map(|v| (v.start, v.end)));
    if let Some(a) = meta
        .areas
        .iter()
        .find(|a| overlaps((a.start, a.end), host.restorer))
    {
        return Err(invalid(
            dir,
            format!(
                "area {:#x}-{:#x} {} collides with the restorer at {:#x}-{:#x}",
                a.start, a.end, a.name, host.restorer.0, host.restorer.1
            ),
        ));
    }
    if meta
        .vdso
        .iter()
        .any(|v| overlaps((v.start, v.end), host.restorer))
    {
        return Err(invalid(dir, "its vDSO collides with the restorer"));
    }

    // Room for the stack to grow: an untouched anonymous area below
    // [stack] up to RLIMIT_STACK, clear of every other area by a guard gap.
    if let Some(stack) = meta.areas.iter().find(|a| a.name == "[stack]") {
        const GUARD: u64 = 256 * PAGE;
        let floor = taken
            .iter()
            .filter(|r| r.1 <= stack.start)
            .map(|r| r.1 + GUARD)
            .chain([host.restorer.1 + GUARD])
            .filter(|&e| e <= stack.start)
            .max()
            .unwrap_or(PAGE);
        let low = stack.end.saturating_sub(meta.stack_limit).max(floor) & !(PAGE - 1);
        if low < stack.start {
            areas.push(plan::Area {
                start: low,
                len: stack.start - low,
                offset: 0,
                prot: (libc::PROT_READ | libc::PROT_WRITE) as u32,
                flags: (libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE) as u32,
                fd: plan::ANON,
                advice: 0,
            });
            taken.push((low, stack.start));
        }
    }
    areas.sort_by_key(|a| a.start);
    let areas = merge_adjacent(areas);

    let xstate = meta.xstate_bytes().map_err(|e| invalid(dir, e))?;
    let frame_len = (FRAME_FPSTATE + xstate.len() + 4 + 63) & !63;
    let frame_addr = (meta.regs.rsp.wrapping_sub(128 + frame_len as u64)) & !63;
    let frame_range = (frame_addr, frame_addr + frame_len as u64);
    let writable = areas.iter().any(|a| {
        a.prot & libc::PROT_WRITE as u32 != 0
            && a.flags & libc::MAP_SHARED as u32 == 0
            && a.start <= frame_range.0
            && frame_range.1 <= a.start + a.len
    });
    if !writable {
        return Err(invalid(
            dir,
            format!(
                "no writable memory below the stack pointer {:#x} for the signal frame",
                meta.regs.rsp
            ),
        ));
    }
    let frame = signal_frame(meta, &xstate, frame_addr);

    // vDSO parts: this kernel's offsets, the snapshot's addresses.
    let mut vdso = [VdsoPart::default(); plan::VDSO_PARTS];
    let host_vdso_start = host
        .vdso
        .iter()
        .find(|v| v.0 == "[vdso]")
        .map_or(0, |v| v.1);
    for (slot, name) in vdso.iter_mut().zip(VDSO_NAMES) {
        if let (Some(h), Some(s)) = (
            host.vdso.iter().find(|v| v.0 == name),
            meta.vdso.iter().find(|v| v.name == name),
        ) {
            *slot = VdsoPart {
                offset: h.1.wrapping_sub(host_vdso_start) as i64,
                len: h.2 - h.1,
                target: s.start,
            };
        }
    }
    let _ = host.vdso_base;
    let family: u64 = vdso.iter().map(|p| p.len).sum();
    let mut avoid = taken.clone();
    avoid.push(host.restorer);
    let scratch = (0..4096u64)
        .map(|i| 0x1_0000_0000 + i * 0x100_0000)
        .find(|&s| !avoid.iter().any(|r| overlaps(*r, (s, s + family))))
        .filter(|&s| s + family < TASK_SIZE)
        .ok_or_else(|| invalid(dir, "no free address range to move the vDSO through"))?;

    // Each program: its instruction count (u64), then its instructions.
    let mut filters = Vec::new();
    for bpf in &options.seccomp {
        filters.extend_from_slice(&((bpf.len() / plan::FILTER_INSN_LEN) as u64).to_ne_bytes());
        filters.extend_from_slice(bpf);
    }
    let mut auxv = [0u64; plan::AUXV_WORDS];
    auxv[..meta.auxv.len()].copy_from_slice(&meta.auxv);
    let header = Header {
        magic: plan::PLAN_MAGIC,
        version: plan::PLAN_VERSION,
        n_areas: areas.len() as u32,
        n_sigactions: meta.sigactions.len() as u32,
        n_filter: filters.len().div_ceil(plan::FILTER_INSN_LEN) as u32,
        frame_len: frame.len() as u32,
        frame_fpstate: FRAME_FPSTATE as u32,
        frame_addr,
        vdso,
        scratch,
        mm: meta.mm.into(),
        auxv_len: meta.auxv.len() as u32,
        no_new_privs: if options.no_new_privs {
            plan::NO_NEW_PRIVS
        } else {
            0
        } | if options.filters_before_park {
            plan::FILTERS_BEFORE_PARK
        } else {
            0
        },
        auxv,
        fs_base: meta.regs.fs_base,
        gs_base: meta.regs.gs_base,
        rseq: meta.rseq.map_or(0, |r| r.0),
        rseq_len: meta.rseq.map_or(0, |r| r.1),
        rseq_sig: meta.rseq.map_or(0, |r| r.2),
        robust_list: meta.robust_list.0,
        robust_len: meta.robust_list.1,
        clear_tid: meta.clear_tid,
        mode: plan::MODE_RESTORE,
        n_prefault: 0,
    };
    let mut out =
        Vec::with_capacity(plan::HEADER_LEN + areas.len() * plan::AREA_LEN + frame.len() + 4096);
    push_pod(&mut out, &header);
    for a in &areas {
        push_pod(&mut out, a);
    }
    for s in &meta.sigactions {
        push_pod(&mut out, &plan::SigAction::from(*s));
    }
    out.extend_from_slice(&filters);
    out.extend_from_slice(&frame);
    if out.len() > plan::PLAN_MAX {
        return Err(invalid(
            dir,
            format!(
                "its restore plan is {} bytes; at most {} fit",
                out.len(),
                plan::PLAN_MAX
            ),
        ));
    }
    Ok(out)
}

/// Merges neighbours that one `mmap` can create: adjacent in memory, same
/// protection, flags and advice, and — for file mappings — the same file
/// with contiguous offsets. A library's `.data` and `.bss` saved side by
/// side in the page file are one mapping at restore, so a process with 30
/// libraries needs tens of `mmap`s fewer (each ~1.5 µs).
fn merge_adjacent(areas: Vec<plan::Area>) -> Vec<plan::Area> {
    let mut out: Vec<plan::Area> = Vec::with_capacity(areas.len());
    for a in areas {
        if let Some(last) = out.last_mut() {
            let adjacent = last.start + last.len == a.start;
            let same = last.prot == a.prot
                && last.flags == a.flags
                && last.fd == a.fd
                && last.advice == a.advice;
            let contiguous = a.fd == plan::ANON || last.offset + last.len == a.offset;
            if adjacent && same && contiguous {
                last.len += a.len;
                continue;
            }
        }
        out.push(a);
    }
    out
}

/// Appends the bytes of one of the plan's `#[repr(C)]` structs.
fn push_pod<T: Copy>(out: &mut Vec<u8>, value: &T) {
    out.extend_from_slice(sys::pod_bytes(value));
}

/// The rt_sigframe the restorer returns through: pretcode, ucontext
/// (flags, link, sigaltstack, sigcontext, signal mask), then the xsave area
/// with its trailing magic.
fn signal_frame(meta: &Meta, xstate: &[u8], frame_addr: u64) -> Vec<u8> {
    const UC_FP_XSTATE: u64 = 1;
    const UC_SIGCONTEXT_SS: u64 = 2;
    const UC_STRICT_RESTORE_SS: u64 = 4;
    const FP_XSTATE_MAGIC2: u32 = 0x4650_5845;
    let r = &meta.regs;
    let mut f = Vec::with_capacity(FRAME_FPSTATE + xstate.len() + 64);
    let mut q = |v: u64| f.extend_from_slice(&v.to_le_bytes());
    q(0); // pretcode
    q(UC_FP_XSTATE | UC_SIGCONTEXT_SS | UC_STRICT_RESTORE_SS);
    q(0); // uc_link
    q(meta.altstack.sp);
    q(u64::from(meta.altstack.flags));
    q(meta.altstack.size);
    for v in [
        r.r8, r.r9, r.r10, r.r11, r.r12, r.r13, r.r14, r.r15, r.rdi, r.rsi, r.rbp, r.rbx, r.rdx,
        r.rax, r.rcx, r.rsp, r.rip, r.eflags,
    ] {
        q(v);
    }
    // cs, gs, fs, ss (16 bits each).
    q((r.cs & 0xffff) | (r.ss & 0xffff) << 48);
    q(0); // err
    q(0); // trapno
    q(meta.sigmask); // oldmask
    q(0); // cr2
    q(frame_addr + FRAME_FPSTATE as u64);
    for _ in 0..8 {
        q(0);
    }
    q(meta.sigmask); // uc_sigmask
    f.resize(FRAME_FPSTATE, 0);
    f.extend_from_slice(xstate);
    // The software bytes of the frame's xsave area (struct _fpx_sw_bytes at
    // offset 464): magic1, extended size, xfeatures, xstate size. ptrace
    // leaves only the xfeatures mask there.
    const FP_XSTATE_MAGIC1: u32 = 0x4650_5853;
    let sw = FRAME_FPSTATE + 464;
    let features = xstate.get(464..472).map_or(3, |b| {
        let mut w = [0u8; 8];
        w.copy_from_slice(b);
        u64::from_le_bytes(w)
    });
    f[sw..sw + 48].fill(0);
    f[sw..sw + 4].copy_from_slice(&FP_XSTATE_MAGIC1.to_le_bytes());
    f[sw + 4..sw + 8].copy_from_slice(&(xstate.len() as u32 + 4).to_le_bytes());
    f[sw + 8..sw + 16].copy_from_slice(&features.to_le_bytes());
    f[sw + 16..sw + 20].copy_from_slice(&(xstate.len() as u32).to_le_bytes());
    f.extend_from_slice(&FP_XSTATE_MAGIC2.to_le_bytes());
    f.resize((f.len() + 63) & !63, 0);
    f
}

fn std_fd(own: &Option<OwnedFd>, n: i32, inherit: bool) -> Option<BorrowedFd<'_>> {
    match own {
        Some(fd) => Some(fd.as_fd()),
        None if inherit => Some(sys::stdio_fd(n)),
        None => None,
    }
}

pub(crate) fn seqpacket_pair() -> Result<(OwnedFd, OwnedFd), SnapshotError> {
    rustix::net::socketpair(
        rustix::net::AddressFamily::UNIX,
        rustix::net::SocketType::SEQPACKET,
        rustix::net::SocketFlags::CLOEXEC,
        None,
    )
    .map_err(|e| SnapshotError::Sys {
        op: "socketpair",
        source: e.into(),
    })
}

/// The restorer's first message: the guest's fds 0–3 and working directory.
fn send_io(sock: &OwnedFd, io: &RestoreIo, cwd: &[u8]) -> io::Result<()> {
    let (mask, fds) = io.fds();
    send_io_fds(sock, mask, &fds, cwd)
}

/// The `IoMessage`: which of fds 0–3 travel (`mask`), and the cwd.
fn send_io_fds(sock: &OwnedFd, mask: u64, fds: &[BorrowedFd<'_>], cwd: &[u8]) -> io::Result<()> {
    let cwd = if cwd.len() <= plan::CWD_MAX { cwd } else { &[] };
    let head = plan::IoMessage {
        magic: plan::IO_MAGIC,
        fds: mask,
        cwd_len: cwd.len() as u64,
    };
    let mut msg = sys::pod_bytes(&head).to_vec();
    msg.extend_from_slice(cwd);
    send_with_fds(sock, &msg, fds)
}

/// One message with descriptors attached.
pub(crate) fn send_with_fds(
    sock: &OwnedFd,
    bytes: &[u8],
    fds: &[BorrowedFd<'_>],
) -> io::Result<()> {
    let mut space =
        vec![std::mem::MaybeUninit::uninit(); rustix::cmsg_space!(ScmRights(fds.len()))];
    let mut control = rustix::net::SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() && !control.push(rustix::net::SendAncillaryMessage::ScmRights(fds)) {
        return Err(io::Error::other("too many descriptors for one message"));
    }
    rustix::net::sendmsg(
        sock,
        &[io::IoSlice::new(bytes)],
        &mut control,
        rustix::net::SendFlags::empty(),
    )?;
    Ok(())
}

/// A process restored from a snapshot.
#[derive(Debug)]
pub struct Restored {
    pid: u32,
    pidfd: Option<OwnedFd>,
    status: Option<ExitStatus>,
}

fn exit_status(raw: i32) -> ExitStatus {
    if raw & 0x7f == 0 {
        ExitStatus::Code((raw >> 8) & 0xff)
    } else {
        ExitStatus::Signal(raw & 0x7f)
    }
}

impl Restored {
    pub(crate) fn new(pid: u32, pidfd: OwnedFd) -> Restored {
        Restored {
            pid,
            pidfd: Some(pidfd),
            status: None,
        }
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.pid
    }

    /// Blocks until the process exits.
    pub fn wait_blocking(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let Some(pidfd) = self.pidfd.as_ref() else {
            return Err(io::Error::other("the process was already reaped"));
        };
        loop {
            let mut pfd = [rustix::event::PollFd::new(
                pidfd,
                rustix::event::PollFlags::IN,
            )];
            match rustix::event::poll(&mut pfd, None) {
                Ok(_) | Err(rustix::io::Errno::INTR) => {}
                Err(e) => return Err(e.into()),
            }
            if let Some(raw) = spawn::pidfd_try_wait(pidfd.as_fd())? {
                let s = exit_status(raw);
                self.status = Some(s);
                return Ok(s);
            }
        }
    }

    /// Waits asynchronously (tokio) until the process exits.
    pub async fn wait(&mut self) -> io::Result<ExitStatus> {
        if let Some(s) = self.status {
            return Ok(s);
        }
        let Some(pidfd) = self.pidfd.take() else {
            return Err(io::Error::other("the process was already reaped"));
        };
        let afd = sys::register(pidfd)?;
        loop {
            let mut guard = afd.readable().await?;
            if let Some(raw) = spawn::pidfd_try_wait(afd.get_ref().as_fd())? {
                let s = exit_status(raw);
                self.status = Some(s);
                self.pidfd = Some(afd.into_inner());
                return Ok(s);
            }
            guard.clear_ready();
        }
    }

    /// Sends SIGKILL.
    pub fn kill(&self) -> io::Result<()> {
        match &self.pidfd {
            Some(fd) if self.status.is_none() => spawn::pidfd_kill(fd.as_fd()),
            _ => Ok(()),
        }
    }
}

impl Drop for Restored {
    fn drop(&mut self) {
        if self.status.is_none()
            && let Some(fd) = &self.pidfd
        {
            let _ = spawn::pidfd_kill(fd.as_fd());
            let _ = self.wait_blocking();
        }
    }
}

impl faas_core::Instance for Restored {
    fn pid(&self) -> u32 {
        self.pid
    }
    fn wait(&mut self) -> faas_core::BoxFuture<'_, io::Result<ExitStatus>> {
        Box::pin(Restored::wait(self))
    }
    fn kill(&mut self) -> io::Result<()> {
        Restored::kill(self)
    }
}

/// Text for `faas snapshot inspect`.
pub(crate) fn describe(meta: &Meta) -> String {
    use std::fmt::Write as _;
    let mut s = String::new();
    let saved: u64 = meta
        .areas
        .iter()
        .map(|a| match a.source {
            Source::Pages { pages, .. } => pages,
            _ => 0,
        })
        .sum();
    let _ = writeln!(s, "process   {} ({})", meta.pid, meta.exe);
    let _ = writeln!(s, "kernel    {}", meta.kernel);
    let _ = writeln!(
        s,
        "registers rip {:#x} rsp {:#x}; xsave {} bytes (xcr0 {:#x})",
        meta.regs.rip,
        meta.regs.rsp,
        meta.xstate.len() / 2,
        meta.xcr0
    );
    let _ = writeln!(
        s,
        "memory    {} areas, {} mapped files, {} pages saved ({} KiB), page file {} KiB (sparse)",
        meta.areas.len(),
        meta.files.len(),
        saved,
        saved * 4,
        meta.pages_len / 1024
    );
    let _ = writeln!(
        s,
        "{:<27} {:<4} {:>10} {:>10}  source / name",
        "area", "perm", "size KiB", "saved KiB"
    );
    for a in &meta.areas {
        let (src, saved) = match &a.source {
            Source::Zero => ("zero".to_string(), 0),
            Source::Pages { offset, pages } => (format!("pages@{offset:#x}"), *pages),
            Source::File { file, offset } => (
                format!(
                    "{}+{offset:#x}",
                    meta.files.get(*file).map_or("?", |f| f.path.as_str())
                ),
                0,
            ),
        };
        let _ = writeln!(
            s,
            "{:012x}-{:012x} {:<4} {:>10} {:>10}  {src} {}",
            a.start,
            a.end,
            a.perms,
            a.len() / 1024,
            saved * 4,
            if matches!(a.source, Source::File { .. }) {
                ""
            } else {
                a.name.as_str()
            }
        );
    }
    for v in &meta.vdso {
        let _ = writeln!(
            s,
            "{:012x}-{:012x} {:<4} {:>10} {:>10}  {}",
            v.start,
            v.end,
            "",
            (v.end - v.start) / 1024,
            0,
            v.name
        );
    }
    s
}

/// Reads a snapshot's metadata without checking it against this host.
pub(crate) fn read_meta(dir: &Path) -> Result<Meta, SnapshotError> {
    let path = dir.join(META_FILE);
    let bytes = fs::read(&path)
        .map_err(|e| invalid(dir, format!("cannot read {}: {e}", path.display())))?;
    Meta::decode(&bytes).map_err(|e| invalid(dir, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn area(start: u64, len: u64, fd: u32, offset: u64, prot: u32) -> plan::Area {
        plan::Area {
            start,
            len,
            offset,
            prot,
            flags: libc::MAP_PRIVATE as u32,
            fd,
            advice: 0,
        }
    }

    #[test]
    fn mapped_files_are_found_through_the_path_map() {
        let map = vec![
            (PathBuf::from("/var/task"), PathBuf::from("/srv/fn/3/root")),
            (PathBuf::from("/var"), PathBuf::from("/elsewhere")),
        ];
        assert_eq!(
            host_path("/var/task/ext.so", &map),
            Path::new("/srv/fn/3/root/ext.so")
        );
        assert_eq!(
            host_path("/var/taskforce/x", &map),
            Path::new("/elsewhere/taskforce/x")
        );
        assert_eq!(
            host_path("/usr/lib/libc.so.6", &map),
            Path::new("/usr/lib/libc.so.6")
        );
        assert_eq!(host_path("/var/task", &map), Path::new("/srv/fn/3/root"));
        // The first prefix where the file exists wins; then the path as seen.
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("f"), b"").unwrap();
        let map = vec![
            (PathBuf::from("/"), PathBuf::from("/nonexistent-root")),
            (PathBuf::from("/x"), dir.path().to_path_buf()),
        ];
        assert_eq!(host_path("/x/f", &map), dir.path().join("f"));
        let seen = dir.path().join("f");
        assert_eq!(host_path(seen.to_str().unwrap(), &map[..1]), seen);
    }

    #[test]
    fn merges_only_what_one_mmap_can_create() {
        let rw = (libc::PROT_READ | libc::PROT_WRITE) as u32;
        let merged = merge_adjacent(vec![
            // .data and .bss saved side by side in the page file: one.
            area(0x1000, 0x2000, 0, 0x0, rw),
            area(0x3000, 0x1000, 0, 0x2000, rw),
            // Adjacent, but a gap in the page file: kept apart.
            area(0x4000, 0x1000, 0, 0x9000, rw),
            // Adjacent, same file range, other protection: kept apart.
            area(0x5000, 0x1000, 0, 0xa000, libc::PROT_READ as u32),
            // Not adjacent in memory: kept apart.
            area(0x8000, 0x1000, 0, 0xb000, libc::PROT_READ as u32),
            // Anonymous neighbours: one.
            area(0x9000, 0x1000, plan::ANON, 0, rw),
            area(0xa000, 0x3000, plan::ANON, 0, rw),
        ]);
        let got: Vec<(u64, u64)> = merged.iter().map(|a| (a.start, a.len)).collect();
        assert_eq!(
            got,
            [
                (0x1000, 0x3000),
                (0x4000, 0x1000),
                (0x5000, 0x1000),
                (0x8000, 0x1000),
                (0x9000, 0x4000)
            ]
        );
    }
}
