//! The data that flows between the components: functions, invocations,
//! results, nodes and placements. Everything that crosses a process boundary
//! derives `serde`.

use std::collections::BTreeMap;
use std::fmt;
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use serde::{Deserialize, Serialize};

/// How the code of a function is run inside its instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum RuntimeKind {
    /// A native executable linked against `faas-guest` (the handler names it).
    Native,
    /// The Python runtime shim runs `handler` (`module.function`).
    Python,
    /// The Node.js runtime shim runs `handler` (`file.export`).
    Node,
    /// Any executable that speaks the guest protocol on fd 3 itself.
    Exec,
}

impl RuntimeKind {
    /// The lower-case name used on the command line and in JSON.
    pub fn as_str(self) -> &'static str {
        match self {
            RuntimeKind::Native => "native",
            RuntimeKind::Python => "python",
            RuntimeKind::Node => "node",
            RuntimeKind::Exec => "exec",
        }
    }
}

impl fmt::Display for RuntimeKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Where the files of a function come from.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind", content = "path")]
pub enum ImageRef {
    /// A directory on the node's file system, used as the function's root.
    Dir(PathBuf),
    /// A read-only image file (faas-rofs / EROFS).
    Image(PathBuf),
}

impl ImageRef {
    /// The path the reference points at.
    pub fn path(&self) -> &std::path::Path {
        match self {
            ImageRef::Dir(p) | ImageRef::Image(p) => p,
        }
    }
}

/// Resource limits of one instance.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Limits {
    /// Memory limit in MiB.
    pub memory_mb: u32,
    /// CPU limit in milli-cores (1000 = one core).
    pub cpu_millis: u32,
    /// Maximum number of processes/threads.
    pub pids: u32,
    /// Wall-clock budget of one invocation, in milliseconds.
    pub timeout_ms: u64,
}

impl Limits {
    /// The invocation timeout as a [`Duration`].
    pub fn timeout(&self) -> Duration {
        Duration::from_millis(self.timeout_ms)
    }
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            memory_mb: 128,
            cpu_millis: 1000,
            pids: 64,
            timeout_ms: 30_000,
        }
    }
}

/// How many instances of a function may run, and how many requests each takes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default)]
pub struct Concurrency {
    /// Maximum number of requests of this function in flight at once
    /// (equivalently, of live instances when each takes one request).
    pub max_instances: u32,
    /// Requests one instance serves at the same time.
    pub per_instance: u32,
}

impl Default for Concurrency {
    fn default() -> Self {
        Concurrency {
            max_instances: 100,
            per_instance: 1,
        }
    }
}

/// What happens to an instance after it answered.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Reuse {
    /// A fresh instance per request, destroyed after its response.
    #[default]
    PerRequest,
    /// The instance waits for the next request for up to `idle_ms`.
    KeepAlive {
        /// Idle time after which the instance is destroyed, in milliseconds.
        idle_ms: u64,
    },
}

/// How a new instance is brought up.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum StartMode {
    /// Execute the runtime in a fresh sandbox.
    #[default]
    Cold,
    /// Restore the function's snapshot into a pooled sandbox.
    Restore,
    /// Fork a live, initialised template.
    Fork,
}

impl StartMode {
    /// The lower-case name used in JSON and metrics.
    pub fn as_str(self) -> &'static str {
        match self {
            StartMode::Cold => "cold",
            StartMode::Restore => "restore",
            StartMode::Fork => "fork",
        }
    }
}

/// Everything the platform knows about one deployed function version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FunctionSpec {
    /// Function name: `[a-z0-9][a-z0-9_-]{0,62}`.
    pub name: String,
    /// Version number; each deploy creates a new one.
    #[serde(default = "default_version")]
    pub version: u32,
    /// How the code runs.
    pub runtime: RuntimeKind,
    /// The function's files.
    pub image: ImageRef,
    /// The entry point: an executable path inside the image for `native` and
    /// `exec`, `module.function` for the language runtimes.
    pub handler: String,
    /// Environment variables given to the instance.
    #[serde(default)]
    pub env: BTreeMap<String, String>,
    /// Resource limits.
    #[serde(default)]
    pub limits: Limits,
    /// Concurrency limits.
    #[serde(default)]
    pub concurrency: Concurrency,
    /// Reuse policy.
    #[serde(default)]
    pub reuse: Reuse,
    /// Start mode. Set by the platform at deploy: `restore` when it took a
    /// snapshot of the initialised runtime (`fork` when `start_request`
    /// asked for it), else `cold`.
    #[serde(default)]
    pub start: StartMode,
    /// The start mode the deployer asked for (`faas deploy --start`):
    /// `fork` forks each instance from a template of the snapshot (a deploy
    /// body's `start: fork` asks for it too), `cold` takes no snapshot;
    /// `restore` or none: restore each instance from the snapshot. Without
    /// a snapshot every instance starts cold.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub start_request: Option<StartMode>,
    /// A request body the deploy may serve once, from the snapshot, to
    /// learn which memory a request writes (its working set): instances
    /// restored ahead then have those pages in place before their request
    /// (`faas deploy --working-set-request BODY`). The handler runs with
    /// it, so it is the deployer's choice; none: no such request.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub working_set_request: Option<String>,
    /// The snapshot directory that `restore` starts from (set by the
    /// platform at deploy, with `start`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub snapshot: Option<PathBuf>,
}

fn default_version() -> u32 {
    1
}

/// Why a [`FunctionSpec`] is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SpecError {
    /// The name does not match `[a-z0-9][a-z0-9_-]{0,62}`.
    #[error(
        "function name {0:?} is invalid: use 1-63 characters of a-z, 0-9, '-' and '_', starting with a letter or digit"
    )]
    Name(String),
    /// The handler is empty, absolute, or leaves the image.
    #[error("handler {0:?} is invalid: give a relative path inside the function directory")]
    Handler(String),
    /// A limit is zero or out of range.
    #[error("{field} = {value} is out of range ({range})")]
    Range {
        /// The offending field.
        field: &'static str,
        /// Its value.
        value: u64,
        /// The accepted range, for the message.
        range: &'static str,
    },
    /// An environment variable name is empty or contains `=` or NUL.
    #[error("environment variable name {0:?} is invalid")]
    Env(String),
}

impl FunctionSpec {
    /// A spec with default limits, concurrency, reuse and start mode.
    pub fn new(
        name: impl Into<String>,
        runtime: RuntimeKind,
        image: ImageRef,
        handler: impl Into<String>,
    ) -> Self {
        FunctionSpec {
            name: name.into(),
            version: 1,
            runtime,
            image,
            handler: handler.into(),
            env: BTreeMap::new(),
            limits: Limits::default(),
            concurrency: Concurrency::default(),
            reuse: Reuse::default(),
            start: StartMode::default(),
            start_request: None,
            working_set_request: None,
            snapshot: None,
        }
    }

    /// Checks every field a user supplies.
    ///
    /// # Errors
    ///
    /// The first field that is not acceptable, as a [`SpecError`].
    pub fn validate(&self) -> Result<(), SpecError> {
        if !valid_name(&self.name) {
            return Err(SpecError::Name(self.name.clone()));
        }
        let h = &self.handler;
        if h.is_empty()
            || h.starts_with('/')
            || h.contains('\0')
            || h.split('/').any(|c| c == ".." || c.is_empty())
        {
            return Err(SpecError::Handler(h.clone()));
        }
        let ranges: [(&'static str, u64, u64, u64, &'static str); 5] = [
            (
                "limits.memory_mb",
                self.limits.memory_mb.into(),
                1,
                1 << 20,
                "1..=1048576",
            ),
            (
                "limits.cpu_millis",
                self.limits.cpu_millis.into(),
                1,
                1 << 20,
                "1..=1048576",
            ),
            (
                "limits.pids",
                self.limits.pids.into(),
                1,
                1 << 22,
                "1..=4194304",
            ),
            (
                "limits.timeout_ms",
                self.limits.timeout_ms,
                1,
                24 * 3600 * 1000,
                "1..=86400000",
            ),
            (
                "concurrency.max_instances",
                self.concurrency.max_instances.into(),
                1,
                1 << 20,
                "1..=1048576",
            ),
        ];
        for (field, value, lo, hi, range) in ranges {
            if value < lo || value > hi {
                return Err(SpecError::Range {
                    field,
                    value,
                    range,
                });
            }
        }
        if self.concurrency.per_instance == 0 || self.concurrency.per_instance > 1024 {
            return Err(SpecError::Range {
                field: "concurrency.per_instance",
                value: self.concurrency.per_instance.into(),
                range: "1..=1024",
            });
        }
        for k in self.env.keys() {
            if k.is_empty() || k.contains('=') || k.contains('\0') {
                return Err(SpecError::Env(k.clone()));
            }
        }
        Ok(())
    }
}

/// Whether `name` is a valid function name.
pub fn valid_name(name: &str) -> bool {
    let b = name.as_bytes();
    !b.is_empty()
        && b.len() <= 63
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == b'-' || *c == b'_')
}

/// Identity of one invocation, unique within a platform.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct InvocationId(pub u64);

impl fmt::Display for InvocationId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

impl std::str::FromStr for InvocationId {
    type Err = std::num::ParseIntError;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        u64::from_str_radix(s, 16).map(InvocationId)
    }
}

/// A point in wall-clock time, in milliseconds since the Unix epoch; what a
/// deadline is when it crosses processes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(transparent)]
pub struct UnixMillis(pub u64);

impl UnixMillis {
    /// The current time.
    pub fn now() -> Self {
        Self::from_system_time(SystemTime::now())
    }

    /// `t` rounded down to milliseconds (0 before the epoch).
    pub fn from_system_time(t: SystemTime) -> Self {
        let ms = t.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis());
        UnixMillis(u64::try_from(ms).unwrap_or(u64::MAX))
    }

    /// This time plus `d`, saturating.
    pub fn after(self, d: Duration) -> Self {
        let ms = u64::try_from(d.as_millis()).unwrap_or(u64::MAX);
        UnixMillis(self.0.saturating_add(ms))
    }

    /// Time left from now until this instant (zero when passed).
    pub fn remaining(self) -> Duration {
        Duration::from_millis(self.0.saturating_sub(Self::now().0))
    }
}

/// One request for a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Invocation {
    /// Unique id (also the guest protocol's invocation id).
    pub id: InvocationId,
    /// Function name.
    pub function: String,
    /// Function version the request is bound to.
    pub version: u32,
    /// Request headers the function sees (lower-case names).
    pub headers: Vec<(String, String)>,
    /// Request body.
    pub body: Vec<u8>,
    /// When the platform gives up on the request.
    pub deadline: UnixMillis,
    /// Trace id, propagated to the instance and to every log line.
    pub trace_id: String,
}

/// Where the time of one invocation went.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
pub struct Timings {
    /// Waiting in the node gateway's queue, in microseconds.
    pub queued_us: u64,
    /// Bringing up the instance until it said `Ready` (0 when reused), in
    /// microseconds.
    pub start_us: u64,
    /// From handing over the request to its result, in microseconds.
    pub run_us: u64,
    /// How the instance was brought up when it was started for this
    /// request (`None`: an instance that was already running served it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started: Option<StartMode>,
}

/// The answer of a function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InvocationResult {
    /// HTTP status.
    pub status: u16,
    /// Response headers set by the function.
    pub headers: Vec<(String, String)>,
    /// Response body.
    pub body: Vec<u8>,
    /// Where the time went.
    pub timings: Timings,
    /// Whether a new instance was started for this request.
    pub cold: bool,
    /// What the instance wrote while it served this request (its `Log`
    /// frames, stdout and stderr), bounded by the node gateway.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub logs: String,
}

/// Identity of a node of the cluster.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(transparent)]
pub struct NodeId(pub String);

impl fmt::Display for NodeId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// What a node offers the scheduler.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeInfo {
    /// The node.
    pub id: NodeId,
    /// Instance slots in the node's pod resource pool.
    pub slots: u32,
    /// Memory available for instances, in MiB.
    pub memory_mb: u64,
}

/// Where the scheduler put one request.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Placement {
    /// The node.
    pub node: NodeId,
    /// The slot in the node's pool.
    pub slot: u32,
    /// The function the slot is charged to.
    pub function: String,
}

/// How a placed request ended, reported back to the scheduler.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Outcome {
    /// The function answered (any status it chose).
    Ok,
    /// The instance crashed, misbehaved, or could not be started.
    Failed,
    /// The deadline passed.
    TimedOut,
    /// The request was abandoned before it ran (client gone, shutdown).
    Cancelled,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> FunctionSpec {
        FunctionSpec::new(
            "hello",
            RuntimeKind::Native,
            ImageRef::Dir("/f".into()),
            "hello",
        )
    }

    #[test]
    fn spec_json_uses_defaults_for_omitted_fields() {
        let s: FunctionSpec = serde_json::from_str(
            r#"{"name":"hello","runtime":"native","image":{"kind":"dir","path":"/f"},"handler":"hello"}"#,
        )
        .unwrap();
        assert_eq!(s, spec());
        let back: FunctionSpec = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn reuse_keep_alive_round_trips() {
        let r = Reuse::KeepAlive { idle_ms: 600_000 };
        let j = serde_json::to_string(&r).unwrap();
        assert_eq!(j, r#"{"keep_alive":{"idle_ms":600000}}"#);
        assert_eq!(serde_json::from_str::<Reuse>(&j).unwrap(), r);
        assert_eq!(
            serde_json::to_string(&Reuse::PerRequest).unwrap(),
            r#""per_request""#
        );
    }

    #[test]
    fn validate_rejects_bad_fields() {
        assert!(spec().validate().is_ok());
        for bad in ["", "Hello", "-x", "a b", &"x".repeat(64)] {
            let mut s = spec();
            s.name = bad.into();
            assert_eq!(s.validate(), Err(SpecError::Name(bad.into())));
        }
        for bad in ["", "/bin/sh", "../x", "a//b", "a/../../b"] {
            let mut s = spec();
            s.handler = bad.into();
            assert!(matches!(s.validate(), Err(SpecError::Handler(_))), "{bad}");
        }
        let mut s = spec();
        s.limits.timeout_ms = 0;
        assert!(matches!(
            s.validate(),
            Err(SpecError::Range {
                field: "limits.timeout_ms",
                ..
            })
        ));
        let mut s = spec();
        s.env.insert("A=B".into(), "x".into());
        assert_eq!(s.validate(), Err(SpecError::Env("A=B".into())));
    }

    #[test]
    fn invocation_id_hex_round_trips() {
        let id = InvocationId(0xdead_beef);
        assert_eq!(id.to_string(), "00000000deadbeef");
        assert_eq!("00000000deadbeef".parse::<InvocationId>().unwrap(), id);
    }
}
