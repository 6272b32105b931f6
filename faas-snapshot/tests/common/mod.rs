//! Shared helpers of the integration tests: the test target programs of
//! `tests/targets/` (see its README), built once per test process, started
//! until they stop themselves with SIGSTOP, continued, and their output
//! collected and judged.
#![allow(
    dead_code,
    unreachable_pub,
    missing_docs,
    clippy::expect_used,
    clippy::unwrap_used
)]

use std::collections::BTreeMap;
use std::fs;
use std::io::{Read, Write};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::Mutex;
use std::sync::mpsc;
use std::thread;
use std::time::{Duration, Instant};

/// How long a target may take to stop itself after it was spawned.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a continued target may take to exit.
pub const EXIT_TIMEOUT: Duration = Duration::from_secs(20);

/// Built targets of this process, by name.
static BUILT: Mutex<BTreeMap<String, PathBuf>> = Mutex::new(BTreeMap::new());

/// The directory of the target sources.
pub fn targets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets")
}

/// The gcc arguments (before `-o OUT`) that build a target, by name.
fn gcc_args(name: &str) -> &'static [&'static str] {
    match name {
        "regs" => &["-static", "-nostdlib", "regs.S"],
        "checks" => &["-O1", "checks.c"],
        "multithread" => &["-O1", "-pthread", "multithread.c"],
        "extra_fd" => &["-O1", "extra_fd.c"],
        "stamp" => &["-O2", "-static", "stamp.c"],
        other => panic!("unknown test target `{other}`"),
    }
}

/// The binary of the named target (`regs`, `checks`, `multithread`,
/// `extra_fd`, `stamp`), compiled with gcc on first use in this process
/// into `$TMPDIR/faas-snapshot-targets-<pid>/`, which stays for the life of
/// the process (a snapshot refers to the binary by path). `state.py` is
/// returned as its source path; run it with `python3`.
///
/// # Panics
///
/// When gcc is missing or fails (with gcc's stderr), or the name is unknown.
pub fn target(name: &str) -> PathBuf {
    if name == "state.py" {
        return targets_dir().join("state.py");
    }
    let mut built = BUILT.lock().unwrap_or_else(|e| e.into_inner());
    if let Some(path) = built.get(name) {
        return path.clone();
    }
    let dir = build_dir();
    let out = dir.join(name);
    let result = Command::new("gcc")
        .args(gcc_args(name))
        .arg("-o")
        .arg(&out)
        .current_dir(targets_dir())
        .output()
        .unwrap_or_else(|e| {
            panic!("run gcc to build test target {name}: {e} (apt-get install gcc libc6-dev)")
        });
    assert!(
        result.status.success(),
        "gcc failed to build test target {name} ({}):\n{}",
        result.status,
        String::from_utf8_lossy(&result.stderr)
    );
    built.insert(name.to_owned(), out.clone());
    out
}

/// This process's build directory; removes those of processes that are gone.
fn build_dir() -> PathBuf {
    const PREFIX: &str = "faas-snapshot-targets-";
    let tmp = std::env::temp_dir();
    if let Ok(entries) = fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{PREFIX}{}", std::process::id()));
    fs::create_dir_all(&dir)
        .unwrap_or_else(|e| panic!("create test target directory {}: {e}", dir.display()));
    dir
}

/// The state letter of `/proc/<pid>/task/<tid>/stat`, None when gone.
fn task_state(stat: &Path) -> Option<char> {
    let text = fs::read_to_string(stat).ok()?;
    // The command name is in parentheses and may contain anything.
    let after = &text[text.rfind(')')? + 1..];
    after.trim_start().chars().next()
}

/// Whether every thread of `pid` is in a group stop (state `T`).
pub fn all_stopped(pid: u32) -> bool {
    let Ok(tasks) = fs::read_dir(format!("/proc/{pid}/task")) else {
        return false;
    };
    let mut any = false;
    for task in tasks.flatten() {
        any = true;
        if task_state(&task.path().join("stat")) != Some('T') {
            return false;
        }
    }
    any
}

/// Spawns `cmd` with stdin `/dev/null` and stdout piped (stderr as the
/// caller set it) and waits until every thread of the target has stopped
/// itself with SIGSTOP.
///
/// # Panics
///
/// When the spawn fails, the target exits before stopping (with its exit
/// status and output), or it has not stopped within [`STOP_TIMEOUT`] (it is
/// killed first).
pub fn spawn_stopped(cmd: &mut Command) -> Child {
    let mut child = cmd
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("spawn test target {cmd:?}: {e}"));
    let pid = child.id();
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("wait for test target") {
            let out = read_all(&mut child);
            panic!(
                "test target {cmd:?} (pid {pid}) exited ({status}) before stopping itself; stdout:\n{out}"
            );
        }
        if all_stopped(pid) {
            return child;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            panic!("test target {cmd:?} (pid {pid}) did not stop itself within {STOP_TIMEOUT:?}");
        }
        thread::sleep(Duration::from_millis(2));
    }
}

/// Waits until every thread of `pid` is in a group stop; false when that
/// has not happened within `timeout`.
pub fn wait_stopped(pid: u32, timeout: Duration) -> bool {
    let deadline = Instant::now() + timeout;
    loop {
        if all_stopped(pid) {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        thread::sleep(Duration::from_millis(1));
    }
}

pub fn read_all(child: &mut Child) -> String {
    let mut out = String::new();
    if let Some(mut stdout) = child.stdout.take() {
        let _ = stdout.read_to_string(&mut out);
    }
    out
}

/// The open fds of `pid`, sorted.
///
/// # Panics
///
/// When `/proc/<pid>/fd` cannot be read.
pub fn open_fds(pid: u32) -> Vec<u32> {
    let mut fds: Vec<u32> = fs::read_dir(format!("/proc/{pid}/fd"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/fd: {e}"))
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    fds.sort_unstable();
    fds
}

/// The number of threads of `pid`.
///
/// # Panics
///
/// When `/proc/<pid>/task` cannot be read.
pub fn thread_count(pid: u32) -> usize {
    fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap_or_else(|e| panic!("read /proc/{pid}/task: {e}"))
        .count()
}

/// Sends SIGCONT to `pid` (with the `kill` command: this crate has no libc).
///
/// # Panics
///
/// When `kill` cannot be run or fails.
pub fn sigcont(pid: u32) {
    let status = Command::new("kill")
        .args(["-CONT", &pid.to_string()])
        .status()
        .unwrap_or_else(|e| panic!("run kill -CONT {pid}: {e}"));
    assert!(status.success(), "kill -CONT {pid} failed: {status}");
}

/// Waits for `child` to exit and returns its status and stdout.
///
/// # Panics
///
/// When it has not exited within [`EXIT_TIMEOUT`]: it is killed and the
/// panic shows the output so far.
pub fn wait_output(mut child: Child) -> (ExitStatus, String) {
    let pid = child.id();
    let mut stdout = child.stdout.take();
    let reader = thread::spawn(move || {
        let mut out = String::new();
        if let Some(stdout) = stdout.as_mut() {
            let _ = stdout.read_to_string(&mut out);
        }
        out
    });
    let deadline = Instant::now() + EXIT_TIMEOUT;
    let status = loop {
        if let Some(status) = child.try_wait().expect("wait for test target") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            let _ = child.wait();
            let out = reader.join().unwrap_or_default();
            panic!(
                "test target pid {pid} did not exit within {EXIT_TIMEOUT:?}; killed; stdout so far:\n{out}"
            );
        }
        thread::sleep(Duration::from_millis(5));
    };
    let out = reader.join().unwrap_or_default();
    (status, out)
}

/// Asserts that a target passed: exit status 0, every line `OK <name>`,
/// `SKIP <name>: <why>` or a `key=value` measurement, and an `OK` or `SKIP`
/// line for each of `checks`.
///
/// # Panics
///
/// When any of that does not hold, with the whole output.
pub fn assert_passed(what: &str, status: ExitStatus, out: &str, checks: &[&str]) {
    let bad: Vec<&str> = out
        .lines()
        .filter(|l| {
            !(l.starts_with("OK ")
                || l.starts_with("SKIP ")
                || l.split_once('=').is_some_and(|(k, _)| {
                    !k.is_empty() && k.bytes().all(|b| b.is_ascii_lowercase() || b == b'_')
                }))
        })
        .collect();
    assert!(
        status.success() && bad.is_empty(),
        "{what}: exit {status}; failing lines {bad:?}; output:\n{out}"
    );
    for check in checks {
        let seen = out.lines().any(|l| {
            let name = l
                .strip_prefix("OK ")
                .or_else(|| l.strip_prefix("SKIP "))
                .map(|rest| rest.split([' ', ':']).next().unwrap_or(""));
            name == Some(*check)
        });
        assert!(
            seen,
            "{what}: no OK line for check `{check}`; output:\n{out}"
        );
    }
}

/// Asserts that the tests run as root: checkpointing needs ptrace rights
/// over the targets and restoring sets mm fields (prctl PR_SET_MM).
///
/// # Panics
///
/// When the effective uid is not 0.
pub fn assert_root() {
    let euid = fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(str::to_owned));
    assert_eq!(
        euid.as_deref(),
        Some("0"),
        "these tests need root (ptrace of the targets, prctl(PR_SET_MM) in restored processes); CI runs as root"
    );
}

/// A file of `len` bytes of a fixed pattern, for the `checks` target's
/// DATAFILE.
///
/// # Panics
///
/// When the file cannot be created or written.
pub fn data_file(len: usize) -> tempfile::NamedTempFile {
    let mut data = tempfile::NamedTempFile::new().expect("create DATAFILE");
    let bytes: Vec<u8> = (0..len).map(|i| (i * 7 + 3) as u8).collect();
    data.write_all(&bytes).expect("write DATAFILE");
    data.flush().expect("flush DATAFILE");
    data
}

/// The checks of the `checks` target.
pub const CHECKS: &[&str] = &[
    "tls",
    "rseq",
    "malloc_brk",
    "signal_handler",
    "signal_mask",
    "sigaltstack",
    "file_mapping",
    "file_mapping_backed",
    "static_counter",
    "heap_pattern",
    "vdso_clock",
];

/// The checks of the `regs` target.
pub const REGS: &[&str] = &["gpr", "eflags", "stack", "fpu", "fsgs_base", "ymm", "zmm"];

/// A faas-core exit status as the std one [`assert_passed`] judges.
pub fn std_status(s: faas_core::ExitStatus) -> ExitStatus {
    match s {
        faas_core::ExitStatus::Code(c) => ExitStatus::from_raw((c & 0xff) << 8),
        faas_core::ExitStatus::Signal(sig) => ExitStatus::from_raw(sig & 0x7f),
    }
}

/// Spawns `cmd` until it stops itself, checkpoints it into `dir` with
/// [`faas_snapshot::dump`] killing it, and reaps it.
///
/// # Panics
///
/// When the target does not stop, the dump fails, or the target was not
/// killed by SIGKILL.
pub fn checkpoint_killed(what: &str, cmd: &mut Command, dir: &Path) -> faas_core::SnapshotInfo {
    let mut child = spawn_stopped(cmd);
    let pid = child.id();
    let info = match faas_snapshot::dump(pid, dir, &faas_snapshot::DumpOptions { kill: true }) {
        Ok(info) => info,
        Err(e) => {
            let _ = child.kill();
            let _ = child.wait();
            panic!(
                "{what}: dump of pid {pid} into {} failed: {e}",
                dir.display()
            );
        }
    };
    // When the caller is the target's parent, dump's own waitpid (as its
    // tracer) may already have reaped it.
    match child.wait() {
        Ok(status) => assert_eq!(
            status.signal(),
            Some(9),
            "{what}: dump --kill left pid {pid} to exit with {status}"
        ),
        Err(e) if e.raw_os_error() == Some(libc::ECHILD) => {}
        Err(e) => panic!("{what}: reap the checkpointed target {pid}: {e}"),
    }
    info
}

/// The BLAKE3 hash of a file's content.
///
/// # Panics
///
/// When the file cannot be read.
pub fn file_hash(path: &Path) -> blake3::Hash {
    blake3::hash(&fs::read(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display())))
}

/// Sends SIGKILL to a process if it has not been disarmed within a timeout,
/// through a pidfd opened when it is armed (so never to a reused pid).
pub struct Watchdog {
    disarm: Option<mpsc::Sender<()>>,
    thread: Option<thread::JoinHandle<bool>>,
}

/// Arms a [`Watchdog`] for `pid`, which must not have been reaped yet.
///
/// # Panics
///
/// When pidfd_open fails.
pub fn watchdog(pid: u32, timeout: Duration) -> Watchdog {
    // SAFETY: pidfd_open takes a pid and flags; no memory is passed.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::c_int, 0) };
    assert!(
        fd >= 0,
        "pidfd_open({pid}): {}",
        std::io::Error::last_os_error()
    );
    // SAFETY: fd is a new descriptor that nothing else owns.
    let pidfd = unsafe { OwnedFd::from_raw_fd(fd as libc::c_int) };
    let (tx, rx) = mpsc::channel::<()>();
    let thread = thread::spawn(move || match rx.recv_timeout(timeout) {
        Err(mpsc::RecvTimeoutError::Timeout) => {
            // SAFETY: pidfd_send_signal with a valid pidfd and no siginfo.
            unsafe {
                libc::syscall(
                    libc::SYS_pidfd_send_signal,
                    pidfd.as_raw_fd(),
                    libc::SIGKILL,
                    std::ptr::null::<libc::siginfo_t>(),
                    0,
                );
            }
            true
        }
        _ => false,
    });
    Watchdog {
        disarm: Some(tx),
        thread: Some(thread),
    }
}

impl Watchdog {
    /// Disarms it; whether it had fired (killed the process) before.
    pub fn fired(mut self) -> bool {
        drop(self.disarm.take());
        self.thread
            .take()
            .map(|t| t.join().unwrap_or(false))
            .unwrap_or(false)
    }
}

/// Reads a pipe to its end on a thread.
pub fn read_pipe(reader: std::io::PipeReader) -> thread::JoinHandle<String> {
    thread::spawn(move || {
        let mut reader = reader;
        let mut bytes = Vec::new();
        let _ = reader.read_to_end(&mut bytes);
        String::from_utf8_lossy(&bytes).into_owned()
    })
}
