//! Preparing a function version on a node at deploy time, before it is
//! registered: checking that its runtime is available, and for Python
//! taking the snapshot its instances are restored from (DESIGN.md §4, §6).
//!
//! ```text
//! deploy ─▶ Preparer::check (runtime available?)
//!        ─▶ Registry::stage  (version directory written, not yet visible)
//!        ─▶ Preparer::prepare
//!             python, sandbox layout, snapshotter:
//!               sandbox (same layout, limits, seccomp as its instances)
//!                 pid 1: python3 -c WRAPPER (fork, exec, wait)
//!                 pid 2: python3 /var/runtime/faas_runtime.py … --snapshot
//!                        initialises, SIGSTOPs itself   (pid 1 could not:
//!                        the kernel ignores signals a pid-namespace init sends itself)
//!               ─▶ Snapshotter::checkpoint(host pid of pid 2, VERSION/snapshot)
//!               ─▶ one trial restore into a sandbox must say Ready
//!               ─▶ with a `working_set_request`, another serves it: the
//!                  snapshot pages it wrote are recorded as the snapshot's
//!                  working set (instances restored ahead pre-fault them)
//!               ─▶ start = restore
//!        ─▶ Registry::commit (spec.json rewritten, version visible)
//! ```
//!
//! A runtime that exits before its snapshot point fails the deploy with the
//! last lines of its output. A snapshot that cannot be taken or does not
//! restore leaves the function in cold mode, with a warning.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use faas_core::protocol::{Body, DecodeLimits, Frame, channel_pair};
use faas_core::{
    BoxFuture, ExitStatus, FunctionSpec, Instance, RuntimeKind, SandboxRuntime, SandboxSpec,
    Snapshotter, StartMode, Stdio,
};

use crate::channel::AsyncChannel;
use crate::node::NodeConfig;
use crate::runtimes::{self, RuntimeUnavailable};

/// Prepares freshly written function versions before they are registered
/// (see the module docs). [`crate::LocalNodeGateway`] implements it;
/// [`crate::FunctionGateway::with_preparer`] installs one.
///
/// # Example
///
/// A preparer that accepts everything as it is:
///
/// ```
/// use std::path::Path;
/// use faas_core::{BoxFuture, FunctionSpec};
/// use faas_gateway::{PrepareError, Prepared, Preparer};
///
/// struct AsIs;
///
/// impl Preparer for AsIs {
///     fn check(&self, _spec: &FunctionSpec) -> Result<(), PrepareError> { Ok(()) }
///     fn prepare<'a>(&'a self, _spec: &'a FunctionSpec, _dir: &'a Path)
///         -> BoxFuture<'a, Result<Prepared, PrepareError>>
///     {
///         Box::pin(async { Ok(Prepared::default()) })
///     }
/// }
///
/// let p: &dyn Preparer = &AsIs;
/// let _ = p;
/// ```
pub trait Preparer: Send + Sync {
    /// Checks, before anything is copied, that `spec` can run here.
    ///
    /// # Errors
    ///
    /// Why it cannot (its language runtime is missing, ...).
    fn check(&self, spec: &FunctionSpec) -> Result<(), PrepareError>;

    /// Prepares the version of `spec` written at `version_dir` (its code is
    /// `spec.image`): decides its start mode.
    fn prepare<'a>(
        &'a self,
        spec: &'a FunctionSpec,
        version_dir: &'a Path,
    ) -> BoxFuture<'a, Result<Prepared, PrepareError>>;
}

/// What [`Preparer::prepare`] decided.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Prepared {
    /// How instances start.
    pub start: StartMode,
    /// The snapshot `restore` starts from.
    pub snapshot: Option<PathBuf>,
    /// The function's files as a faas-rofs (EROFS) image, which its
    /// sandboxes mount instead of the directory.
    pub image: Option<PathBuf>,
    /// What the deployer should know (e.g. why the function starts cold).
    pub warnings: Vec<String>,
    /// How long each step took, in order.
    pub steps: Vec<Step>,
}

/// One step of preparing a version, and how long it took.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Step {
    /// What was done (`image`, `snapshot`, `restore check`).
    pub step: String,
    /// Wall time, in microseconds.
    pub us: u64,
    /// A detail for the deployer (files and size of the image, pages of
    /// the snapshot).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub detail: String,
}

/// Why a version cannot be deployed on this node.
#[derive(Debug, thiserror::Error)]
pub enum PrepareError {
    /// Its language runtime is not available.
    #[error(transparent)]
    Unavailable(#[from] RuntimeUnavailable),
    /// Its runtime failed to initialise (import error, exception at module
    /// init, ...).
    #[error("function {name}: the {runtime} runtime {what} while initialising{}", output_suffix(.output))]
    Init {
        /// The function.
        name: String,
        /// Its runtime.
        runtime: RuntimeKind,
        /// What happened ("exited with status 2").
        what: String,
        /// The last lines of its output.
        output: String,
    },
    /// The sandbox or the channel could not be set up.
    #[error("function {name}: preparing failed: {what}")]
    Sys {
        /// The function.
        name: String,
        /// What failed.
        what: String,
    },
}

fn output_suffix(output: &str) -> String {
    if output.is_empty() {
        String::new()
    } else {
        format!(": {output}")
    }
}

/// Started as pid 1 of the snapshot sandbox: the runtime runs as its child
/// (a pid-namespace init cannot stop itself), and its status is passed on.
const WRAPPER: &str = "import os, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.argv[1], sys.argv[1:])
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
code = os.waitstatus_to_exitcode(status)
os._exit(code if code >= 0 else 128 - code)
";

/// Output kept from an initialising runtime, in bytes.
const OUTPUT_TAIL: usize = 4096;
/// Lines of it shown in an error.
const OUTPUT_LINES: usize = 8;
/// How long a trial restore may take to say Ready.
const RESTORE_CHECK: Duration = Duration::from_secs(10);

/// How a snapshot attempt failed.
pub(crate) enum SnapshotFailure {
    /// The runtime did not initialise: the deploy fails.
    Init(PrepareError),
    /// Only the snapshot failed: the function starts cold.
    Snapshot(String),
}

/// The last lines of `bytes`, on one line each joined by " | ".
fn tail_lines(bytes: &[u8]) -> String {
    let text = String::from_utf8_lossy(bytes);
    let lines: Vec<&str> = text
        .lines()
        .map(str::trim_end)
        .filter(|l| !l.is_empty())
        .collect();
    lines[lines.len().saturating_sub(OUTPUT_LINES)..].join(" | ")
}

/// Reads `r` to its end on a thread, keeping the last [`OUTPUT_TAIL`]
/// bytes.
fn collect_tail(mut r: std::io::PipeReader) -> tokio::sync::oneshot::Receiver<Vec<u8>> {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let spawned = std::thread::Builder::new()
        .name("faas-init-output".into())
        .spawn(move || {
            let mut keep = Vec::new();
            let mut buf = [0u8; 4096];
            while let Ok(n) = r.read(&mut buf) {
                if n == 0 {
                    break;
                }
                keep.extend_from_slice(&buf[..n]);
                if keep.len() > 2 * OUTPUT_TAIL {
                    keep.drain(..keep.len() - OUTPUT_TAIL);
                }
            }
            let start = keep.len().saturating_sub(OUTPUT_TAIL);
            let _ = tx.send(keep.split_off(start));
        });
    if let Err(e) = spawned {
        tracing::warn!(error = %e, "cannot start the thread that reads a runtime's output");
    }
    rx
}

/// The state letter of `/proc/PID/stat` (`None` when it is gone).
fn proc_state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].trim_start().chars().next()
}

/// The parent pid in `/proc/PID/stat`.
fn proc_ppid(pid: &str) -> Option<u32> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..]
        .split_whitespace()
        .nth(1)?
        .parse()
        .ok()
}

/// A child of host process `parent` (the runtime under the wrapper).
fn child_of(parent: u32) -> Option<u32> {
    std::fs::read_dir("/proc")
        .ok()?
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| proc_ppid(&pid.to_string()) == Some(parent))
}

/// Everything a sandbox of `spec`'s instances has, for the snapshot and
/// the trial restore (same root, binds, working directory, limits and
/// seccomp profile: same parked sandboxes). Python runs under the wrapper
/// with `--snapshot`; a native program runs as itself.
fn sandbox_spec(
    config: &NodeConfig,
    spec: &FunctionSpec,
    name: String,
    restore: Option<&Path>,
    channel: std::os::fd::OwnedFd,
    output: std::io::PipeWriter,
) -> Result<SandboxSpec, RuntimeUnavailable> {
    let python = spec.runtime == RuntimeKind::Python;
    let mut cmd = runtimes::command(spec, &config.runtimes, config.layout, python)?;
    let args = if python {
        // The wrapper is pid 1; the runtime command its arguments.
        let mut args = vec![
            "-I".to_owned(),
            "-S".to_owned(),
            "-c".to_owned(),
            WRAPPER.to_owned(),
            cmd.program.to_string_lossy().into_owned(),
        ];
        args.extend(std::mem::take(&mut cmd.args));
        args
    } else {
        std::mem::take(&mut cmd.args)
    };
    // stdout and stderr both into `output`.
    let fd = std::os::fd::OwnedFd::from(output);
    let (stdout, stderr) = match fd.try_clone() {
        Ok(dup) => (Stdio::Fd(dup), Stdio::Fd(fd)),
        Err(_) => (Stdio::Null, Stdio::Fd(fd)),
    };
    Ok(runtimes::Command { args, ..cmd }.into_spec(
        name,
        spec,
        config.layout,
        restore,
        runtimes::InstanceIo {
            channel,
            stdout,
            stderr,
        },
    ))
}

/// Kills an instance and reaps it.
async fn finish(inst: &mut dyn Instance) {
    let _ = inst.kill();
    let _ = tokio::time::timeout(Duration::from_secs(5), inst.wait()).await;
}

/// Takes the snapshot of `spec`'s function into `version_dir/snapshot` and
/// checks that it restores. Returns the snapshot directory.
///
/// The function starts once in a sandbox like its instances' and is
/// checkpointed at its snapshot point:
///
/// - Python: the runtime (pid 2, under the wrapper) stops itself with
///   `SIGSTOP` once the handler's module is imported (see the module docs);
/// - native: a guest (`faas_guest::serve`) sends `Ready` and blocks in
///   `recvmsg` on fd 3 for its first request; it is checkpointed right
///   there (pid 1 of its sandbox; the interrupted `recvmsg` is rewound).
///   Each restored copy re-enters `recvmsg` on its own fresh channel, so it
///   does not say `Ready` again: the node gateway hands it its request at
///   once ([`restored_sends_ready`]).
///
/// Then one trial restore must come back (see [`check_restore`]).
pub(crate) async fn snapshot(
    config: &NodeConfig,
    runtime: &Arc<dyn SandboxRuntime>,
    snapshotter: &Arc<dyn Snapshotter>,
    spec: &FunctionSpec,
    version_dir: &Path,
) -> Result<PathBuf, SnapshotFailure> {
    let sys = |what: String| {
        SnapshotFailure::Init(PrepareError::Sys {
            name: spec.name.clone(),
            what,
        })
    };
    let python = spec.runtime == RuntimeKind::Python;
    let dir = version_dir.join("snapshot");
    let (ours, theirs) = channel_pair().map_err(|e| sys(format!("guest channel: {e}")))?;
    let mut chan = AsyncChannel::new(
        ours,
        DecodeLimits {
            max_body: config.max_body,
        },
    )
    .map_err(|e| sys(format!("guest channel: {e}")))?;
    let (r, w) = std::io::pipe().map_err(|e| sys(format!("output pipe: {e}")))?;
    let name = format!("{}-v{}-snapshot", spec.name, spec.version);
    let sandbox = sandbox_spec(config, spec, name, None, theirs, w)
        .map_err(|e| SnapshotFailure::Init(e.into()))?;
    let output = collect_tail(r);
    let what = if python {
        "the runtime"
    } else {
        "the function"
    };
    let mut inst = runtime
        .launch(sandbox)
        .await
        .map_err(|e| sys(format!("starting {what}: {e}")))?;
    let at_point = if python {
        stopped_runtime(inst.as_mut(), spec).await
    } else {
        ready_guest(&mut chan, inst.as_mut(), spec).await
    };
    let pid = match at_point {
        Ok(pid) => pid,
        Err(what) => {
            finish(inst.as_mut()).await;
            let output = output_tail(output).await;
            return Err(if python && output.contains("faas_runtime: --snapshot:") {
                // The code initialised but cannot be checkpointed (threads
                // left running, a hook failed): it still runs cold.
                SnapshotFailure::Snapshot(format!("the runtime refused the snapshot: {output}"))
            } else {
                SnapshotFailure::Init(PrepareError::Init {
                    name: spec.name.clone(),
                    runtime: spec.runtime,
                    what,
                    output,
                })
            });
        }
    };
    let taken = snapshotter.checkpoint(pid, &dir).await;
    finish(inst.as_mut()).await;
    drop(chan);
    let info = taken.map_err(|e| SnapshotFailure::Snapshot(format!("checkpoint failed: {e}")))?;
    tracing::info!(function = %spec.name, version = spec.version, pages = info.pages, bytes = info.bytes, "snapshot taken");
    if let Err(e) = check_restore(config, runtime, spec, &dir).await {
        let _ = std::fs::remove_dir_all(&dir);
        return Err(SnapshotFailure::Snapshot(format!(
            "the snapshot does not restore: {e}"
        )));
    }
    // Only when the deployer gave a request to learn it from: the handler
    // runs with it.
    if let Some(body) = &spec.working_set_request {
        match working_set(config, runtime, snapshotter, spec, &dir, body.as_bytes()).await {
            Ok(pages) => {
                tracing::info!(function = %spec.name, version = spec.version, pages, "working set recorded");
            }
            // Only an optimisation: instances restored ahead are not
            // pre-faulted.
            Err(why) => {
                tracing::warn!(function = %spec.name, version = spec.version, "no working set recorded: {why}");
            }
        }
    }
    Ok(dir)
}

/// Restores one more instance from the snapshot in `dir`, has it serve one
/// request (`body`, the deployer's `working_set_request`), and records the
/// pages of the snapshot it wrote from restore to answer (the working
/// set, see [`Snapshotter::record_working_set`]): instances restored ahead
/// of their request pre-fault them, so requests do not take those page
/// faults. The handler's answer, success or error, does not matter; the
/// instance is killed after. Returns the pages recorded.
async fn working_set(
    config: &NodeConfig,
    runtime: &Arc<dyn SandboxRuntime>,
    snapshotter: &Arc<dyn Snapshotter>,
    spec: &FunctionSpec,
    dir: &Path,
    body: &[u8],
) -> Result<u64, String> {
    let (ours, theirs) = channel_pair().map_err(|e| e.to_string())?;
    let mut chan = AsyncChannel::new(
        ours,
        DecodeLimits {
            max_body: config.max_body,
        },
    )
    .map_err(|e| e.to_string())?;
    let name = format!("{}-v{}-working-set", spec.name, spec.version);
    let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
    // Its output is read and dropped (a full pipe would block it).
    drop(collect_tail(r));
    let sandbox =
        sandbox_spec(config, spec, name, Some(dir), theirs, w).map_err(|e| e.to_string())?;
    let mut inst = runtime.launch(sandbox).await.map_err(|e| e.to_string())?;
    let budget = spec.limits.timeout().min(RESTORE_CHECK);
    let served = std::sync::Mutex::new(Err("it was not sent".to_owned()));
    let request = async {
        let r = serve_one(&mut chan, restored_sends_ready(spec), body).await;
        // Closing the channel ends the instance (one that served its
        // request has ended already).
        drop(chan);
        let ok = r.is_ok();
        if let Ok(mut s) = served.lock() {
            *s = r;
        }
        ok
    };
    let pid = inst.pid();
    let recorded = tokio::time::timeout(
        budget,
        snapshotter.record_working_set(pid, dir, Box::pin(request)),
    )
    .await;
    finish(inst.as_mut()).await;
    let served = served
        .into_inner()
        .unwrap_or_else(|_| Err("poisoned".to_owned()));
    match (recorded, served) {
        (Err(_), _) => Err(format!("no answer within {} ms", budget.as_millis())),
        (Ok(_), Err(what)) => Err(format!("the trial request failed: {what}")),
        (Ok(r), Ok(())) => r.map_err(|e| e.to_string()),
    }
}

/// Waits for `Ready` (when `ready`), sends one request with `body` and
/// waits for its answer (`Result` or `Error`).
async fn serve_one(chan: &mut AsyncChannel, ready: bool, body: &[u8]) -> Result<(), String> {
    if ready {
        match chan.recv().await {
            Ok(Some(Frame::Ready { .. })) => {}
            Ok(Some(other)) => return Err(format!("it sent {:?} instead of Ready", other.kind())),
            Ok(None) => return Err("it exited before Ready".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
    let id = faas_core::InvocationId(1);
    let invoke = Frame::Invoke {
        id,
        deadline: faas_core::UnixMillis::now().after(RESTORE_CHECK),
        trace_id: "deploy-working-set".to_owned(),
        headers: Vec::new(),
        body: Body::new(body.to_vec()).map_err(|e| e.to_string())?,
    };
    chan.send(&invoke).await.map_err(|e| e.to_string())?;
    loop {
        match chan.recv().await {
            Ok(Some(Frame::Result { id: rid, .. } | Frame::Error { id: rid, .. })) if rid == id => {
                return Ok(());
            }
            Ok(Some(Frame::Log { .. })) => {}
            Ok(Some(other)) => return Err(format!("it sent an unexpected {:?}", other.kind())),
            Ok(None) => return Err("it exited before answering".to_owned()),
            Err(e) => return Err(e.to_string()),
        }
    }
}

/// Waits until the Python runtime under the wrapper stopped itself at its
/// snapshot point; its host pid, or what happened instead.
async fn stopped_runtime(inst: &mut dyn Instance, spec: &FunctionSpec) -> Result<u32, String> {
    let budget = spec.limits.timeout();
    let deadline = tokio::time::Instant::now() + budget;
    let host_pid = inst.pid();
    let mut child = None;
    loop {
        if child.is_none() {
            child = child_of(host_pid);
        }
        if let Some(pid) = child
            && proc_state(pid) == Some('T')
        {
            return Ok(pid);
        }
        let exited = tokio::select! {
            s = inst.wait() => Some(s),
            () = tokio::time::sleep(Duration::from_millis(5)) => None,
        };
        if let Some(status) = exited {
            let what = match status {
                Ok(ExitStatus::Code(c)) => format!("exited with status {c}"),
                Ok(ExitStatus::Signal(s)) => format!("was killed by signal {s}"),
                Err(e) => format!("could not be waited for ({e})"),
            };
            return Err(match inst.exceeded() {
                Some(limit) => format!("{what}: {limit}"),
                None => what,
            });
        }
        if tokio::time::Instant::now() > deadline {
            return Err(format!(
                "did not reach its snapshot point within the timeout of {} ms",
                budget.as_millis()
            ));
        }
    }
}

/// Waits for a native guest's `Ready`; its host pid, or what happened
/// instead.
async fn ready_guest(
    chan: &mut AsyncChannel,
    inst: &mut dyn Instance,
    spec: &FunctionSpec,
) -> Result<u32, String> {
    let budget = spec.limits.timeout();
    match tokio::time::timeout(budget, chan.recv()).await {
        Ok(Ok(Some(Frame::Ready { .. }))) => Ok(inst.pid()),
        Ok(Ok(Some(other))) => Err(format!("sent {:?} instead of Ready", other.kind())),
        Ok(Ok(None)) => Err(match inst.wait().await {
            Ok(ExitStatus::Code(c)) => format!("exited with status {c} before Ready"),
            Ok(ExitStatus::Signal(s)) => format!("was killed by signal {s} before Ready"),
            Err(e) => format!("could not be waited for ({e})"),
        }),
        Ok(Err(e)) => Err(format!("broke the protocol: {e}")),
        Err(_) => Err(format!(
            "did not say Ready within the timeout of {} ms",
            budget.as_millis()
        )),
    }
}

/// The last lines of an instance's output ([`collect_tail`]), waiting at
/// most 2 s for the instance to close it.
async fn output_tail(output: tokio::sync::oneshot::Receiver<Vec<u8>>) -> String {
    let out = tokio::time::timeout(Duration::from_secs(2), output)
        .await
        .ok()
        .and_then(Result::ok)
        .unwrap_or_default();
    tail_lines(&out)
}

/// Whether an instance restored from a snapshot of `spec`'s function says
/// `Ready` (a language runtime continuing from its snapshot point) or is
/// ready at once (a native guest, checkpointed after its `Ready`).
pub(crate) fn restored_sends_ready(spec: &FunctionSpec) -> bool {
    spec.runtime != RuntimeKind::Native
}

/// Builds the faas-rofs image of a staged version's files
/// (`version_dir/root.erofs`, from `spec.image`), reproducibly. Blocking.
pub(crate) fn build_image(spec: &FunctionSpec, version_dir: &Path) -> Result<Step, PrepareError> {
    let started = std::time::Instant::now();
    let out = version_dir.join(IMAGE_FILE);
    let summary = faas_rofs::Builder::new()
        .dir(spec.image.path())
        .build(&out)
        .map_err(|e| PrepareError::Sys {
            name: spec.name.clone(),
            what: format!("building the image of {}: {e}", spec.image.path().display()),
        })?;
    Ok(Step {
        step: "image".into(),
        us: micros(started.elapsed()),
        detail: format!(
            "{} files, {} bytes, image {} bytes, digest {}",
            summary.files,
            summary.file_bytes,
            summary.image_len,
            faas_rofs::hex(&summary.digest)
        ),
    })
}

/// The image file of a version, next to its `root` directory.
pub const IMAGE_FILE: &str = "root.erofs";

pub(crate) fn micros(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// Restores one instance from `dir` and checks it runs: a language
/// runtime must say `Ready`; a native guest, whose channel is closed at
/// once, must exit with status 0.
async fn check_restore(
    config: &NodeConfig,
    runtime: &Arc<dyn SandboxRuntime>,
    spec: &FunctionSpec,
    dir: &Path,
) -> Result<(), String> {
    let (ours, theirs) = channel_pair().map_err(|e| e.to_string())?;
    let mut chan = AsyncChannel::new(
        ours,
        DecodeLimits {
            max_body: config.max_body,
        },
    )
    .map_err(|e| e.to_string())?;
    let name = format!("{}-v{}-check", spec.name, spec.version);
    let (r, w) = std::io::pipe().map_err(|e| e.to_string())?;
    let sandbox =
        sandbox_spec(config, spec, name, Some(dir), theirs, w).map_err(|e| e.to_string())?;
    let output = collect_tail(r);
    let mut inst = runtime.launch(sandbox).await.map_err(|e| e.to_string())?;
    if !restored_sends_ready(spec) {
        drop(chan);
        let status = match tokio::time::timeout(RESTORE_CHECK, inst.wait()).await {
            Ok(Ok(ExitStatus::Code(0))) => return Ok(()),
            Ok(Ok(ExitStatus::Code(c))) => format!("it exited with status {c}"),
            Ok(Ok(ExitStatus::Signal(s))) => format!("it was killed by signal {s}"),
            Ok(Err(e)) => e.to_string(),
            Err(_) => {
                finish(inst.as_mut()).await;
                format!("it did not exit within {} s", RESTORE_CHECK.as_secs())
            }
        };
        return Err(format!(
            "{status}{}",
            output_suffix(&output_tail(output).await)
        ));
    }
    let ready = tokio::time::timeout(RESTORE_CHECK, chan.recv()).await;
    // Closing the channel ends a restored runtime (exit 0).
    drop(chan);
    finish(inst.as_mut()).await;
    let status = match ready {
        Ok(Ok(Some(Frame::Ready { .. }))) => return Ok(()),
        Ok(Ok(Some(other))) => format!("it sent {:?} instead of Ready", other.kind()),
        Ok(Ok(None)) => "it exited before Ready".to_owned(),
        Ok(Err(e)) => e.to_string(),
        Err(_) => format!("no Ready within {} s", RESTORE_CHECK.as_secs()),
    };
    Err(format!(
        "{status}{}",
        output_suffix(&output_tail(output).await)
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tail_lines_keeps_the_last_non_empty_lines() {
        let text: String = (0..20).map(|i| format!("line {i}\n\n")).collect();
        assert_eq!(
            tail_lines(text.as_bytes()),
            "line 12 | line 13 | line 14 | line 15 | line 16 | line 17 | line 18 | line 19"
        );
        assert_eq!(tail_lines(b""), "");
    }

    #[test]
    fn init_errors_read_as_one_line() {
        let e = PrepareError::Init {
            name: "f".into(),
            runtime: RuntimeKind::Python,
            what: "exited with status 2".into(),
            output: "faas_runtime: cannot load handler".into(),
        };
        assert_eq!(
            e.to_string(),
            "function f: the python runtime exited with status 2 while initialising: faas_runtime: cannot load handler"
        );
    }
}
