//! cgroups for sandboxes, v1 and v2 behind one interface.
//!
//! Sandboxes' cgroups are created beneath the cgroup this process runs in
//! (per controller, as `/proc/self/cgroup` names it), in a directory
//! `faas-<pid>-<n>` of our own, so they stay inside whatever limits the host set
//! for the platform; nothing is created or changed anywhere else.
//!
//! ```text
//! v1 (per controller):  <memory mount>/<our path>/faas-<pid>/sb-N   memory.limit_in_bytes
//!                       <pids mount>/<our path>/faas-<pid>/sb-N     pids.max
//!                       <cpu mount>/<our path>/faas-<pid>/sb-N      cpu.cfs_quota_us
//! v2:                   <unified>/<our path>/faas-<pid>/sb-N        memory.max pids.max cpu.max
//! ```
//!
//! On v2 the controllers must be delegated to our cgroup (present in its
//! `cgroup.controllers`); if they are not yet enabled for its children, this
//! process moves itself into a leaf `faas-<pid>-supervisor` first (the "no
//! internal processes" rule) and enables them — the usual delegation
//! protocol.

use std::io;
use std::path::{Path, PathBuf};

/// Why cgroups could not be set up or used.
#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    /// `/proc/self/cgroup` or `/proc/self/mountinfo` is unreadable or odd.
    #[error("cannot find this process's cgroups: {0}")]
    Discover(String),
    /// A controller is not available to us.
    #[error("cgroup controller {controller} is not available: {why}")]
    Controller {
        /// The controller.
        controller: &'static str,
        /// Why.
        why: String,
    },
    /// A cgroup file or directory operation failed.
    #[error("{path}: {source}")]
    Io {
        /// The path.
        path: PathBuf,
        /// The cause.
        #[source]
        source: io::Error,
    },
}

fn io_at(path: &Path) -> impl FnOnce(io::Error) -> CgroupError + '_ {
    move |source| CgroupError::Io {
        path: path.to_owned(),
        source,
    }
}

/// Which cgroup version is in use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CgroupVersion {
    /// Controllers on separate v1 hierarchies.
    V1,
    /// The unified hierarchy.
    V2,
}

const CONTROLLERS: [&str; 3] = ["memory", "pids", "cpu"];

/// The parent directories of this runtime's sandbox cgroups.
#[derive(Debug)]
pub struct Cgroups {
    version: CgroupVersion,
    /// v1: one base per controller (memory, pids, cpu); v2: one.
    bases: Vec<PathBuf>,
}

/// One sandbox's cgroup (one directory per v1 controller, one on v2).
#[derive(Debug)]
pub struct Cgroup {
    version: CgroupVersion,
    dirs: Vec<PathBuf>,
    /// OOM kills and refused forks counted before [`Cgroup::rebase`].
    base: (u64, u64),
}

struct Mount {
    root: String,
    point: PathBuf,
    fstype: String,
    opts: Vec<String>,
}

fn mounts() -> Result<Vec<Mount>, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/mountinfo")
        .map_err(|e| CgroupError::Discover(format!("/proc/self/mountinfo: {e}")))?;
    let mut out = Vec::new();
    for line in text.lines() {
        let Some((pre, post)) = line.split_once(" - ") else {
            continue;
        };
        let pre: Vec<&str> = pre.split(' ').collect();
        let post: Vec<&str> = post.split(' ').collect();
        if pre.len() < 5 || post.len() < 3 {
            continue;
        }
        out.push(Mount {
            root: pre[3].to_owned(),
            point: PathBuf::from(pre[4]),
            fstype: post[0].to_owned(),
            opts: post[2].split(',').map(str::to_owned).collect(),
        });
    }
    Ok(out)
}

/// `/proc/self/cgroup` as (controllers, path) pairs; v2 has empty controllers.
fn own_cgroups() -> Result<Vec<(Vec<String>, String)>, CgroupError> {
    let text = std::fs::read_to_string("/proc/self/cgroup")
        .map_err(|e| CgroupError::Discover(format!("/proc/self/cgroup: {e}")))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let mut it = l.splitn(3, ':');
            let _id = it.next()?;
            let ctrls = it.next()?;
            let path = it.next()?;
            let ctrls = if ctrls.is_empty() {
                Vec::new()
            } else {
                ctrls.split(',').map(str::to_owned).collect()
            };
            Some((ctrls, path.to_owned()))
        })
        .collect())
}

/// The directory of cgroup `path` on mount `m` (`path` relative to the
/// hierarchy's root, `m.root` the part of it the mount shows).
fn dir_on(m: &Mount, path: &str) -> Result<PathBuf, CgroupError> {
    let rel = path
        .strip_prefix(m.root.trim_end_matches('/'))
        .ok_or_else(|| {
            CgroupError::Discover(format!(
                "our cgroup {path} is outside the mount {} (root {})",
                m.point.display(),
                m.root
            ))
        })?;
    Ok(m.point.join(rel.trim_start_matches('/')))
}

impl Cgroups {
    /// Finds our cgroups and creates `faas-<pid>` beneath each. v1 is used
    /// when the memory controller is on a v1 hierarchy, v2 otherwise.
    ///
    /// # Errors
    ///
    /// A controller is missing or not delegated, or a directory cannot be
    /// created.
    pub fn new() -> Result<Self, CgroupError> {
        let mounts = mounts()?;
        let own = own_cgroups()?;
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let tag = format!("faas-{}-{n}", std::process::id());
        let v1_memory = own.iter().any(|(c, _)| c.iter().any(|c| c == "memory"));
        if v1_memory {
            let mut bases = Vec::new();
            for ctrl in CONTROLLERS {
                let (_, path) = own
                    .iter()
                    .find(|(c, _)| c.iter().any(|c| c == ctrl))
                    .ok_or_else(|| CgroupError::Controller {
                        controller: ctrl,
                        why: "no v1 hierarchy has it (see /proc/self/cgroup)".into(),
                    })?;
                let m = mounts
                    .iter()
                    .find(|m| m.fstype == "cgroup" && m.opts.iter().any(|o| o == ctrl))
                    .ok_or_else(|| CgroupError::Controller {
                        controller: ctrl,
                        why: "its v1 hierarchy is not mounted".into(),
                    })?;
                let own_dir = dir_on(m, path)?;
                clean_stale(&own_dir);
                let base = own_dir.join(&tag);
                std::fs::create_dir_all(&base).map_err(io_at(&base))?;
                bases.push(base);
            }
            return Ok(Cgroups {
                version: CgroupVersion::V1,
                bases,
            });
        }
        let (_, path) = own.iter().find(|(c, _)| c.is_empty()).ok_or_else(|| {
            CgroupError::Discover("no cgroup v2 entry in /proc/self/cgroup".into())
        })?;
        let m = mounts
            .iter()
            .find(|m| m.fstype == "cgroup2")
            .ok_or_else(|| CgroupError::Discover("cgroup2 is not mounted".into()))?;
        let own_dir = dir_on(m, path)?;
        clean_stale(&own_dir);
        let read = |p: PathBuf| std::fs::read_to_string(&p).map_err(io_at(&p));
        let available = read(own_dir.join("cgroup.controllers"))?;
        for ctrl in CONTROLLERS {
            if !available.split_whitespace().any(|c| c == ctrl) {
                return Err(CgroupError::Controller {
                    controller: ctrl,
                    why: format!(
                        "not delegated to our cgroup {} (start faas in a delegated cgroup, e.g. `systemd-run --scope -p Delegate=yes`)",
                        own_dir.display()
                    ),
                });
            }
        }
        let enabled = read(own_dir.join("cgroup.subtree_control"))?;
        let missing: Vec<&str> = CONTROLLERS
            .into_iter()
            .filter(|c| !enabled.split_whitespace().any(|e| e == *c))
            .collect();
        if !missing.is_empty() {
            // Leave our own cgroup for a leaf of it, then enable the
            // controllers for its children.
            let sup = own_dir.join(format!("faas-{}-supervisor", std::process::id()));
            std::fs::create_dir_all(&sup).map_err(io_at(&sup))?;
            let procs = sup.join("cgroup.procs");
            std::fs::write(&procs, std::process::id().to_string()).map_err(io_at(&procs))?;
            let ctl = own_dir.join("cgroup.subtree_control");
            let add: Vec<String> = missing.iter().map(|c| format!("+{c}")).collect();
            std::fs::write(&ctl, add.join(" ")).map_err(io_at(&ctl))?;
        }
        let base = own_dir.join(&tag);
        std::fs::create_dir_all(&base).map_err(io_at(&base))?;
        let ctl = base.join("cgroup.subtree_control");
        std::fs::write(&ctl, "+memory +pids +cpu").map_err(io_at(&ctl))?;
        Ok(Cgroups {
            version: CgroupVersion::V2,
            bases: vec![base],
        })
    }

    /// The version in use.
    pub fn version(&self) -> CgroupVersion {
        self.version
    }

    /// Creates the cgroup `name` (a fresh, empty one).
    ///
    /// # Errors
    ///
    /// `mkdir` failed.
    pub fn create(&self, name: &str) -> Result<Cgroup, CgroupError> {
        let mut dirs = Vec::with_capacity(self.bases.len());
        for b in &self.bases {
            let d = b.join(name);
            if let Err(e) = std::fs::create_dir(&d)
                && e.kind() != io::ErrorKind::AlreadyExists
            {
                {
                    let c = Cgroup {
                        version: self.version,
                        dirs,
                        base: (0, 0),
                    };
                    let _ = c.remove();
                    return Err(CgroupError::Io { path: d, source: e });
                }
            }
            dirs.push(d);
        }
        Ok(Cgroup {
            version: self.version,
            dirs,
            base: (0, 0),
        })
    }
}

impl Drop for Cgroups {
    fn drop(&mut self) {
        for b in &self.bases {
            // Only empty directories go; sandboxes still alive keep theirs.
            let _ = std::fs::remove_dir(b);
        }
    }
}

/// Removes the (empty) sandbox cgroups that runtimes of processes that
/// died without cleaning up left beneath `own`: only `faas-<pid>-*`
/// directories of dead pids, which a faas runtime created.
fn clean_stale(own: &Path) {
    let Ok(rd) = std::fs::read_dir(own) else {
        return;
    };
    for e in rd.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix("faas-")
            .and_then(|r| r.split('-').next())
            .and_then(|p| p.parse::<u32>().ok())
        else {
            continue;
        };
        if name.ends_with("-supervisor") || Path::new(&format!("/proc/{pid}")).exists() {
            continue;
        }
        if let Ok(children) = std::fs::read_dir(e.path()) {
            for c in children.flatten() {
                if c.file_type().is_ok_and(|t| t.is_dir()) {
                    let _ = std::fs::remove_dir(c.path());
                }
            }
        }
        let _ = std::fs::remove_dir(e.path());
    }
}

fn write(path: PathBuf, value: &str) -> Result<(), CgroupError> {
    std::fs::write(&path, value).map_err(io_at(&path))
}

/// The number after `key ` in a flat-keyed cgroup file (0 when absent).
fn keyed(path: &Path, key: &str) -> u64 {
    // Read at every reap: one read of a small buffer (these files are a
    // few lines, and a cgroup file gives all it has to one read), not
    // `read_to_string`'s stat and reads to the end.
    let mut buf = [0u8; 512];
    let n = std::fs::File::open(path)
        .and_then(|mut f| std::io::Read::read(&mut f, &mut buf))
        .unwrap_or(0);
    std::str::from_utf8(&buf[..n])
        .ok()
        .and_then(|t| {
            t.lines().find_map(|l| {
                let (k, v) = l.split_once(' ')?;
                (k == key).then(|| v.trim().parse().ok()).flatten()
            })
        })
        .unwrap_or(0)
}

impl Cgroup {
    /// Sets the memory limit (MiB), the process limit and the CPU quota
    /// (milli-CPUs per 100 ms period).
    ///
    /// # Errors
    ///
    /// Writing a control file failed.
    pub fn set_limits(
        &self,
        memory_mb: u32,
        pids: u32,
        cpu_millis: u32,
    ) -> Result<(), CgroupError> {
        let bytes = u64::from(memory_mb) * 1024 * 1024;
        let quota = u64::from(cpu_millis) * 100;
        match self.version {
            CgroupVersion::V1 => {
                write(
                    self.dirs[0].join("memory.limit_in_bytes"),
                    &bytes.to_string(),
                )?;
                write(self.dirs[1].join("pids.max"), &pids.to_string())?;
                write(self.dirs[2].join("cpu.cfs_period_us"), "100000")?;
                write(self.dirs[2].join("cpu.cfs_quota_us"), &quota.to_string())?;
            }
            CgroupVersion::V2 => {
                let d = &self.dirs[0];
                write(d.join("memory.max"), &bytes.to_string())?;
                let _ = write(d.join("memory.swap.max"), "0");
                write(d.join("pids.max"), &pids.to_string())?;
                write(d.join("cpu.max"), &format!("{quota} 100000"))?;
            }
        }
        Ok(())
    }

    /// Adds process `pid` (v1: to every controller's cgroup).
    ///
    /// # Errors
    ///
    /// Writing `cgroup.procs` failed.
    pub fn add(&self, pid: i32) -> Result<(), CgroupError> {
        for d in &self.dirs {
            write(d.join("cgroup.procs"), &pid.to_string())?;
        }
        Ok(())
    }

    /// The v2 directory, for `CLONE_INTO_CGROUP`.
    pub fn v2_dir(&self) -> Option<&Path> {
        (self.version == CgroupVersion::V2).then(|| self.dirs[0].as_path())
    }

    /// OOM kills inside this cgroup so far.
    pub fn oom_kills(&self) -> u64 {
        let n = match self.version {
            CgroupVersion::V1 => keyed(&self.dirs[0].join("memory.oom_control"), "oom_kill"),
            CgroupVersion::V2 => keyed(&self.dirs[0].join("memory.events"), "oom_kill"),
        };
        n.saturating_sub(self.base.0)
    }

    /// Forks refused at the process limit so far.
    pub fn pids_refused(&self) -> u64 {
        let d = match self.version {
            CgroupVersion::V1 => &self.dirs[1],
            CgroupVersion::V2 => &self.dirs[0],
        };
        keyed(&d.join("pids.events"), "max").saturating_sub(self.base.1)
    }

    /// Starts counting [`Cgroup::oom_kills`] and [`Cgroup::pids_refused`]
    /// again from zero (the kernel's counters only grow), given what they
    /// say now: for an empty cgroup handed to a new sandbox.
    pub fn rebase(&mut self, oom_kills: u64, pids_refused: u64) {
        self.base.0 += oom_kills;
        self.base.1 += pids_refused;
    }

    /// Removes the cgroup (it must hold no process any more).
    ///
    /// # Errors
    ///
    /// `rmdir` failed for a reason other than the directory being gone.
    pub fn remove(&self) -> Result<(), CgroupError> {
        for d in &self.dirs {
            if let Err(e) = std::fs::remove_dir(d)
                && e.kind() != io::ErrorKind::NotFound
            {
                {
                    return Err(CgroupError::Io {
                        path: d.clone(),
                        source: e,
                    });
                }
            }
        }
        Ok(())
    }
}
