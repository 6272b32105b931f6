//! [`Metrics`]: the platform's Prometheus metrics, served by the function
//! gateway at `GET /metrics` in the text exposition format 0.0.4
//! (`text/plain; version=0.0.4`).
//!
//! The series and their labels are listed on [`Metrics`].
//!
//! # Hot path
//!
//! A request is recorded in two steps: [`Metrics::start_request`] finds
//! the series of the function version (a read lock on a map from
//! function name to its versions' series, interned once per version)
//! and counts it in flight; [`RequestRecord::finish`] takes a read lock
//! on the status counters of its start mode and does relaxed atomic adds
//! (status counter, histogram bucket, histogram sum in nanoseconds,
//! in-flight gauge); the bucket is found by binary search over integer
//! nanosecond bounds. The gauges of the node cost nothing per request:
//! they are read from the node gateways at each scrape (live instances,
//! and queued requests whose caller still waits).
//!
//! Hand-written rather than with `prometheus-client`: the exposition
//! format is a page of code; the crate's `Family` looks series up by an
//! owned label set (we look up by `&str` and `u32`, hash only the name,
//! and allocate nothing per request); and its `Histogram::observe` locks a
//! mutex per observation (an `f64` sum and count beside the buckets),
//! where ours is two relaxed `fetch_add`s on integers. Sums are kept in
//! nanoseconds and written as exact decimal seconds.

use std::collections::{BTreeMap, HashMap};
use std::fmt::{Display, Write as _};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use faas_core::{FunctionSpec, NodeId, StartMode};
use http::header::{CONTENT_TYPE as CONTENT_TYPE_HEADER, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;
use parking_lot::{Mutex, RwLock};

use crate::http::ResponseBody;

/// The content type of the exposition.
pub const CONTENT_TYPE: &str = "text/plain; version=0.0.4; charset=utf-8";

/// How the instance that answered a request was started: the `start_mode`
/// label.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Start {
    /// A fresh sandbox, the runtime executed.
    Cold,
    /// Restored from the function's snapshot.
    Restore,
    /// Forked from a live template.
    Fork,
    /// An instance that was already running (keep-alive).
    Warm,
    /// No instance answered: the response is an error.
    NoInstance,
}

impl Start {
    const ALL: [Start; 5] = [
        Start::Cold,
        Start::Restore,
        Start::Fork,
        Start::Warm,
        Start::NoInstance,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Start::Cold => "cold",
            Start::Restore => "restore",
            Start::Fork => "fork",
            Start::Warm => "warm",
            Start::NoInstance => "none",
        }
    }

    /// The value of the gateway's `x-faas-start` response header.
    fn from_header(v: &[u8]) -> Start {
        match v {
            b"cold" => Start::Cold,
            b"restore" => Start::Restore,
            b"fork" => Start::Fork,
            b"warm" => Start::Warm,
            _ => Start::NoInstance,
        }
    }
}

impl From<StartMode> for Start {
    fn from(m: StartMode) -> Start {
        match m {
            StartMode::Cold => Start::Cold,
            StartMode::Restore => Start::Restore,
            StartMode::Fork => Start::Fork,
        }
    }
}

const MS: u64 = 1_000_000;
const US: u64 = 1_000;
const S: u64 = 1_000_000_000;

/// Request and instance start latencies: 100 µs … 30 s.
const LATENCY_NS: &[u64] = &[
    100 * US,
    250 * US,
    500 * US,
    MS,
    2_500 * US,
    5 * MS,
    10 * MS,
    25 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    2_500 * MS,
    5 * S,
    10 * S,
    30 * S,
];

/// Scheduler decisions: 250 ns … 10 ms.
const DECISION_NS: &[u64] = &[
    250,
    500,
    US,
    2_500,
    5 * US,
    10 * US,
    25 * US,
    50 * US,
    100 * US,
    250 * US,
    MS,
    10 * MS,
];

/// Deploys: 10 ms … 60 s.
const DEPLOY_NS: &[u64] = &[
    10 * MS,
    50 * MS,
    100 * MS,
    250 * MS,
    500 * MS,
    S,
    2_500 * MS,
    5 * S,
    10 * S,
    30 * S,
    60 * S,
];

fn nanos(d: Duration) -> u64 {
    u64::try_from(d.as_nanos()).unwrap_or(u64::MAX)
}

/// Nanoseconds written as decimal seconds, exactly and without float
/// formatting: `2500` → `0.0000025`, `30_000_000_000` → `30`.
struct Seconds(u64);

impl Display for Seconds {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let (secs, mut frac) = (self.0 / S, self.0 % S);
        if frac == 0 {
            return write!(f, "{secs}");
        }
        let mut width = 9;
        while frac % 10 == 0 {
            frac /= 10;
            width -= 1;
        }
        write!(f, "{secs}.{frac:0width$}")
    }
}

/// A histogram of durations: one counter per bucket (not cumulative; the
/// exposition sums them) and the sum in nanoseconds.
struct Histogram {
    /// Upper bounds in nanoseconds, ascending.
    bounds: &'static [u64],
    /// `bounds.len() + 1` counters; the last is the `+Inf` bucket.
    buckets: Box<[AtomicU64]>,
    sum_ns: AtomicU64,
}

impl Histogram {
    fn new(bounds: &'static [u64]) -> Self {
        Histogram {
            bounds,
            buckets: (0..=bounds.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_ns: AtomicU64::new(0),
        }
    }

    fn record(&self, d: Duration) {
        let ns = nanos(d);
        // The first bound >= ns: `le` is inclusive.
        let i = self.bounds.partition_point(|&b| b < ns);
        if let Some(b) = self.buckets.get(i) {
            b.fetch_add(1, Ordering::Relaxed);
        }
        self.sum_ns.fetch_add(ns, Ordering::Relaxed);
    }

    fn count(&self) -> u64 {
        self.buckets.iter().map(|b| b.load(Ordering::Relaxed)).sum()
    }

    /// Writes the `_bucket`, `_sum` and `_count` samples of `name`.
    fn encode(&self, out: &mut String, name: &str, labels: &[(&str, &str)]) {
        let mut cumulative = 0u64;
        let mut le = String::new();
        for (i, b) in self.buckets.iter().enumerate() {
            cumulative += b.load(Ordering::Relaxed);
            le.clear();
            match self.bounds.get(i) {
                Some(&ns) => {
                    let _ = write!(le, "{}", Seconds(ns));
                }
                None => le.push_str("+Inf"),
            }
            sample(out, name, "_bucket", labels, Some(("le", &le)), cumulative);
        }
        let sum = Seconds(self.sum_ns.load(Ordering::Relaxed));
        sample(out, name, "_sum", labels, None, sum);
        sample(out, name, "_count", labels, None, cumulative);
    }
}

/// A counter per label value, found by a linear scan under a read lock
/// (a handful of values per series: statuses, error codes).
struct Counters<K>(RwLock<Vec<(K, AtomicU64)>>);

impl<K: PartialEq + Clone + Ord> Counters<K> {
    fn new() -> Self {
        Counters(RwLock::new(Vec::new()))
    }

    fn add<Q>(&self, key: &Q, own: impl FnOnce(&Q) -> K)
    where
        K: std::borrow::Borrow<Q>,
        Q: PartialEq + ?Sized,
    {
        if let Some((_, c)) = self.0.read().iter().find(|(k, _)| k.borrow() == key) {
            c.fetch_add(1, Ordering::Relaxed);
            return;
        }
        let mut w = self.0.write();
        match w.iter().find(|(k, _)| k.borrow() == key) {
            Some((_, c)) => {
                c.fetch_add(1, Ordering::Relaxed);
            }
            None => w.push((own(key), AtomicU64::new(1))),
        }
    }

    /// The values, sorted by key.
    fn sorted(&self) -> Vec<(K, u64)> {
        let mut v: Vec<(K, u64)> = self
            .0
            .read()
            .iter()
            .map(|(k, c)| (k.clone(), c.load(Ordering::Relaxed)))
            .collect();
        v.sort_by(|a, b| a.0.cmp(&b.0));
        v
    }
}

/// The series of one function version and start mode.
struct ModeSeries {
    statuses: Counters<u16>,
    duration: Histogram,
    /// Instances started this way (only for cold, restore, fork).
    start: Histogram,
}

/// The series of one function version, interned on its first use.
struct FnSeries {
    function: Box<str>,
    version: u32,
    /// The version label (empty for requests to unknown functions).
    version_label: Box<str>,
    modes: [ModeSeries; Start::ALL.len()],
    errors: Counters<Box<str>>,
    in_flight: AtomicU64,
}

impl FnSeries {
    fn new(function: &str, version: u32) -> Self {
        FnSeries {
            function: function.into(),
            version,
            version_label: if function.is_empty() {
                "".into()
            } else {
                version.to_string().into()
            },
            modes: std::array::from_fn(|_| ModeSeries {
                statuses: Counters::new(),
                duration: Histogram::new(LATENCY_NS),
                start: Histogram::new(LATENCY_NS),
            }),
            errors: Counters::new(),
            in_flight: AtomicU64::new(0),
        }
    }

    fn mode(&self, s: Start) -> &ModeSeries {
        &self.modes[s as usize]
    }

    fn record(&self, start: Start, status: u16, error: Option<&str>, elapsed: Duration) {
        let m = self.mode(start);
        m.statuses.add(&status, |&s| s);
        m.duration.record(elapsed);
        if let Some(code) = error {
            self.errors.add(code, |c| c.into());
        }
    }
}

/// A request in flight, from [`Metrics::start_request`]: counted in
/// `faas_inflight_requests` until it is finished or dropped (a request
/// dropped unfinished counts as `499 client_closed`).
#[must_use = "finish it with its answer"]
pub struct RequestRecord {
    series: Arc<FnSeries>,
    started: Instant,
    finished: bool,
}

impl RequestRecord {
    /// Counts the request as answered with `status`, by an instance
    /// started `start`, with the error `error` if it failed.
    pub fn finish(mut self, start: Start, status: u16, error: Option<&str>) {
        self.series
            .record(start, status, error, self.started.elapsed());
        self.finished = true;
    }

    /// Counts the request as answered with `resp`: the start mode comes
    /// from the `x-faas-start` header of a function result, the error code
    /// from the [`ErrorCode`] of an error response.
    pub(crate) fn finish_response<B>(self, resp: &Response<B>) {
        let error = resp.extensions().get::<ErrorCode>().map(|c| &*c.0);
        let start = match (error, resp.headers().get("x-faas-start")) {
            (None, Some(v)) => Start::from_header(v.as_bytes()),
            _ => Start::NoInstance,
        };
        self.finish(start, resp.status().as_u16(), error);
    }
}

impl Drop for RequestRecord {
    fn drop(&mut self) {
        if !self.finished {
            self.series.record(
                Start::NoInstance,
                499,
                Some("client_closed"),
                self.started.elapsed(),
            );
        }
        self.series.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

/// What a node gateway reports at each scrape.
pub(crate) trait NodeSource: Send + Sync {
    /// Instances alive now.
    fn live_instances(&self) -> u64;
    /// Calls `each` with every function's number of waiting requests.
    fn queue_depths(&self, each: &mut dyn FnMut(&str, u64));
    /// Calls `each` with its sandbox runtime's counters
    /// ([`faas_core::SandboxRuntime::counters`]).
    fn sandbox_counters(&self, each: &mut dyn FnMut(&'static str, u64));
}

/// The metrics registry of a process: shared by its function gateway
/// ([`FunctionGateway::with_metrics`](crate::FunctionGateway::with_metrics))
/// and its node gateways
/// ([`LocalNodeGateway::with_metrics`](crate::LocalNodeGateway::with_metrics)),
/// rendered at `GET /metrics`.
///
/// | series | type | labels | what |
/// |---|---|---|---|
/// | `faas_requests_total` | counter | `function`, `version`, `start_mode`, `status` | invocations answered, by HTTP status |
/// | `faas_request_duration_seconds` | histogram | `function`, `version`, `start_mode` | from the request's arrival at the gateway to its response (100 µs … 30 s) |
/// | `faas_invocation_errors_total` | counter | `function`, `code` | invocations answered with an error (`code` as in the JSON error body: `function_not_found`, `body_too_large`, `over_limit`, `instance_exited`, `timeout`, `protocol_violation`, `function_error`, …; `client_closed` for a client that went away before its answer) |
/// | `faas_inflight_requests` | gauge | `function`, `version` | invocations in the gateway now (Lambda's concurrent executions) |
/// | `faas_cold_starts_total` | counter | `function`, `version`, `start_mode` | instances started for a request (they reached `Ready`) |
/// | `faas_instance_start_seconds` | histogram | `function`, `version`, `start_mode` | launch until the instance is ready: the sandbox spawn until its `Ready` (`cold`), the snapshot restore (`restore`) or template fork (`fork`) until the launch returns (its request is sent then; a runtime that still says `Ready` after its restore says it before its answer) |
/// | `faas_live_instances` | gauge | `node` | instances alive on the node now |
/// | `faas_queue_depth` | gauge | `function` | requests waiting in the node gateways' queue of the function for an instance |
/// | `faas_scheduler_decision_seconds` | histogram | | time spent in `Scheduler::schedule` (250 ns … 10 ms) |
/// | `faas_deploys_total` | counter | `outcome` (`ok`, `error`) | deploys answered |
/// | `faas_deploy_duration_seconds` | histogram | | from the deploy request to its answer, including the snapshot (10 ms … 60 s) |
///
/// `start_mode` of a request is how the instance that produced its result
/// was started: `cold`, `restore`, `fork`, or `warm` (an instance that was
/// already running), and `none` when the answer is an error (from the
/// gateway, or from the node: the instance crashed, timed out or broke the
/// protocol before answering). Requests for a function that is not
/// deployed are counted with empty `function` and `version` labels, so
/// that made-up names cannot grow the number of series. A request whose
/// client went away before its answer counts with status `499` (as
/// nginx logs it) and error code `client_closed`.
///
/// ```
/// use std::time::Duration;
/// use faas_gateway::{Metrics, Start};
///
/// let m = Metrics::new();
/// m.record_request("hello", 1, Start::Cold, 200, None, Duration::from_micros(900));
/// let text = m.render();
/// assert!(text.contains(
///     r#"faas_requests_total{function="hello",version="1",start_mode="cold",status="200"} 1"#
/// ));
/// ```
pub struct Metrics {
    /// Function name → the series of its versions.
    functions: RwLock<HashMap<Box<str>, Vec<Arc<FnSeries>>>>,
    nodes: Mutex<Vec<(NodeId, Weak<dyn NodeSource>)>>,
    decisions: Histogram,
    deploys_ok: AtomicU64,
    deploys_failed: AtomicU64,
    deploy_duration: Histogram,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Metrics {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Metrics")
            .field("functions", &self.functions.read().len())
            .field("nodes", &self.nodes.lock().len())
            .finish_non_exhaustive()
    }
}

impl Metrics {
    /// An empty registry.
    pub fn new() -> Self {
        Metrics {
            functions: RwLock::new(HashMap::new()),
            nodes: Mutex::new(Vec::new()),
            decisions: Histogram::new(DECISION_NS),
            deploys_ok: AtomicU64::new(0),
            deploys_failed: AtomicU64::new(0),
            deploy_duration: Histogram::new(DEPLOY_NS),
        }
    }

    /// The series of `function` version `version`, created on first use.
    fn series(&self, function: &str, version: u32) -> Arc<FnSeries> {
        if let Some(s) = self
            .functions
            .read()
            .get(function)
            .and_then(|v| v.iter().find(|s| s.version == version))
        {
            return s.clone();
        }
        let mut map = self.functions.write();
        let versions = map.entry(function.into()).or_default();
        match versions.iter().find(|s| s.version == version) {
            Some(s) => s.clone(),
            None => {
                let s = Arc::new(FnSeries::new(function, version));
                versions.push(s.clone());
                s
            }
        }
    }

    /// Starts timing an invocation of `function` version `version` (an
    /// empty `function`: one that is not deployed) and counts it in
    /// flight until the returned record is finished.
    pub fn start_request(&self, function: &str, version: u32) -> RequestRecord {
        let series = self.series(function, version);
        series.in_flight.fetch_add(1, Ordering::Relaxed);
        RequestRecord {
            series,
            started: Instant::now(),
            finished: false,
        }
    }

    /// Counts one answered invocation of `function` version `version`
    /// that took `elapsed`: its HTTP `status`, how its instance started,
    /// its error code when it is an error. An empty `function` stands for
    /// a function that is not deployed.
    pub fn record_request(
        &self,
        function: &str,
        version: u32,
        start: Start,
        status: u16,
        error: Option<&str>,
        elapsed: Duration,
    ) {
        self.series(function, version)
            .record(start, status, error, elapsed);
    }

    /// Counts an instance of `spec` started `mode` that reached `Ready`
    /// after `elapsed` (from its launch).
    pub fn record_instance_start(&self, spec: &FunctionSpec, mode: StartMode, elapsed: Duration) {
        self.series(&spec.name, spec.version)
            .mode(mode.into())
            .start
            .record(elapsed);
    }

    /// Runs a scheduling decision and records how long it took.
    pub fn time_schedule<T>(&self, decide: impl FnOnce() -> T) -> T {
        let t = Instant::now();
        let r = decide();
        self.decisions.record(t.elapsed());
        r
    }

    /// Counts a deploy that succeeded (`ok`) or not, and its duration.
    pub fn record_deploy(&self, ok: bool, elapsed: Duration) {
        let c = if ok {
            &self.deploys_ok
        } else {
            &self.deploys_failed
        };
        c.fetch_add(1, Ordering::Relaxed);
        self.deploy_duration.record(elapsed);
    }

    /// Awaits the deploy handler `deploy` and records its outcome.
    pub(crate) async fn deploy(
        &self,
        deploy: impl Future<Output = Response<ResponseBody>>,
    ) -> Response<ResponseBody> {
        let t = Instant::now();
        let r = deploy.await;
        self.record_deploy(r.status().is_success(), t.elapsed());
        r
    }

    /// Reports the live instances and queue depths of a node gateway at
    /// each scrape, while it exists.
    pub(crate) fn add_node(&self, node: &NodeId, source: Weak<dyn NodeSource>) {
        let mut nodes = self.nodes.lock();
        nodes.retain(|(_, s)| s.strong_count() > 0);
        nodes.push((node.clone(), source));
    }

    /// The `GET /metrics` response.
    pub(crate) fn response(&self) -> Response<ResponseBody> {
        let mut r = Response::new(Full::new(Bytes::from(self.render())));
        *r.status_mut() = StatusCode::OK;
        r.headers_mut()
            .insert(CONTENT_TYPE_HEADER, HeaderValue::from_static(CONTENT_TYPE));
        r
    }

    /// The exposition: every series in the text format 0.0.4.
    pub fn render(&self) -> String {
        let mut fns: Vec<Arc<FnSeries>> =
            self.functions.read().values().flatten().cloned().collect();
        fns.sort_by(|a, b| (&a.function, a.version).cmp(&(&b.function, b.version)));
        let mut out = String::with_capacity(4096 + fns.len() * 4096);

        header(
            &mut out,
            "faas_requests_total",
            "counter",
            "Invocations answered, by function version, start mode of the instance that answered (none: an error) and HTTP status.",
        );
        for s in &fns {
            for start in Start::ALL {
                for (status, n) in s.mode(start).statuses.sorted() {
                    let status = status.to_string();
                    let labels = [
                        ("function", &*s.function),
                        ("version", &*s.version_label),
                        ("start_mode", start.as_str()),
                        ("status", &status),
                    ];
                    sample(&mut out, "faas_requests_total", "", &labels, None, n);
                }
            }
        }

        header(
            &mut out,
            "faas_request_duration_seconds",
            "histogram",
            "Time from an invocation's arrival at the gateway to its response.",
        );
        encode_by_mode(&mut out, &fns, "faas_request_duration_seconds", |m| {
            &m.duration
        });

        header(
            &mut out,
            "faas_invocation_errors_total",
            "counter",
            "Invocations answered with an error, by function and error code.",
        );
        for s in &fns {
            for (code, n) in s.errors.sorted() {
                let labels = [("function", &*s.function), ("code", &*code)];
                sample(
                    &mut out,
                    "faas_invocation_errors_total",
                    "",
                    &labels,
                    None,
                    n,
                );
            }
        }

        header(
            &mut out,
            "faas_inflight_requests",
            "gauge",
            "Invocations in the gateway now, by function version.",
        );
        for s in fns.iter().filter(|s| !s.function.is_empty()) {
            let labels = [("function", &*s.function), ("version", &*s.version_label)];
            let n = s.in_flight.load(Ordering::Relaxed);
            sample(&mut out, "faas_inflight_requests", "", &labels, None, n);
        }

        header(
            &mut out,
            "faas_cold_starts_total",
            "counter",
            "Instances started for a request that reached Ready, by function version and start mode.",
        );
        for s in &fns {
            for start in Start::ALL {
                let n = s.mode(start).start.count();
                if n > 0 {
                    let labels = fn_labels(s, start);
                    sample(&mut out, "faas_cold_starts_total", "", &labels, None, n);
                }
            }
        }

        header(
            &mut out,
            "faas_instance_start_seconds",
            "histogram",
            "Launch until the instance's Ready: sandbox spawn (cold), snapshot restore (restore), template fork (fork).",
        );
        encode_by_mode(&mut out, &fns, "faas_instance_start_seconds", |m| &m.start);

        self.render_nodes(&mut out);

        header(
            &mut out,
            "faas_scheduler_decision_seconds",
            "histogram",
            "Time spent in Scheduler::schedule per invocation.",
        );
        self.decisions
            .encode(&mut out, "faas_scheduler_decision_seconds", &[]);

        header(
            &mut out,
            "faas_deploys_total",
            "counter",
            "Deploys answered, by outcome.",
        );
        for (outcome, c) in [("ok", &self.deploys_ok), ("error", &self.deploys_failed)] {
            let n = c.load(Ordering::Relaxed);
            sample(
                &mut out,
                "faas_deploys_total",
                "",
                &[("outcome", outcome)],
                None,
                n,
            );
        }
        header(
            &mut out,
            "faas_deploy_duration_seconds",
            "histogram",
            "Time from a deploy request to its answer, including the snapshot.",
        );
        self.deploy_duration
            .encode(&mut out, "faas_deploy_duration_seconds", &[]);
        out
    }

    /// The gauges read from the node gateways.
    fn render_nodes(&self, out: &mut String) {
        let sources: Vec<(NodeId, Arc<dyn NodeSource>)> = self
            .nodes
            .lock()
            .iter()
            .filter_map(|(n, s)| Some((n.clone(), s.upgrade()?)))
            .collect();
        let mut live: BTreeMap<&str, u64> = BTreeMap::new();
        let mut queued: BTreeMap<String, u64> = BTreeMap::new();
        let mut sandbox: BTreeMap<(&str, &'static str), u64> = BTreeMap::new();
        for (node, s) in &sources {
            *live.entry(node.0.as_str()).or_default() += s.live_instances();
            s.sandbox_counters(&mut |event, n| {
                *sandbox.entry((node.0.as_str(), event)).or_default() += n;
            });
            s.queue_depths(&mut |f, n| match queued.get_mut(f) {
                Some(q) => *q += n,
                None => {
                    queued.insert(f.to_owned(), n);
                }
            });
        }
        header(
            out,
            "faas_live_instances",
            "gauge",
            "Instances alive on the node now.",
        );
        for (node, n) in live {
            sample(out, "faas_live_instances", "", &[("node", node)], None, n);
        }
        header(
            out,
            "faas_sandbox_events_total",
            "counter",
            "What the node's sandbox runtime did: launches by where their sandbox came from (launch_resumed: an instance restored ahead; launch_ready_restorer: a restorer started ahead; launch_parked: a sandbox parked ahead; launch_unpooled: set up on the request path; launch_forked: a template's fork; launch_after_refill_wait: of the resumed and ready-restorer launches, those that found their pools empty and took what a keeper added within 1 ms) and what its pools did.",
        );
        for ((node, event), n) in sandbox {
            sample(
                out,
                "faas_sandbox_events_total",
                "",
                &[("node", node), ("event", event)],
                None,
                n,
            );
        }
        header(
            out,
            "faas_queue_depth",
            "gauge",
            "Requests waiting in the node gateways' queue of the function for an instance.",
        );
        for (function, n) in &queued {
            sample(
                out,
                "faas_queue_depth",
                "",
                &[("function", function)],
                None,
                n,
            );
        }
    }
}

/// The error code of an error response (`error` in its JSON body), for
/// `faas_invocation_errors_total`.
#[derive(Debug, Clone)]
pub(crate) struct ErrorCode(pub(crate) Box<str>);

/// Marks `resp` as the error `code`.
pub(crate) fn tag_error<B>(resp: &mut Response<B>, code: &str) {
    resp.extensions_mut().insert(ErrorCode(code.into()));
}

fn fn_labels(s: &FnSeries, start: Start) -> [(&str, &str); 3] {
    [
        ("function", &*s.function),
        ("version", &*s.version_label),
        ("start_mode", start.as_str()),
    ]
}

/// One histogram family by function, version and start mode: the
/// histogram `pick` chooses of each series that has observations.
fn encode_by_mode(
    out: &mut String,
    fns: &[Arc<FnSeries>],
    name: &str,
    pick: impl Fn(&ModeSeries) -> &Histogram,
) {
    for s in fns {
        for start in Start::ALL {
            let h = pick(s.mode(start));
            if h.count() > 0 {
                h.encode(out, name, &fn_labels(s, start));
            }
        }
    }
}

/// `# HELP` and `# TYPE` of a metric family.
fn header(out: &mut String, name: &str, kind: &str, help: &str) {
    out.push_str("# HELP ");
    out.push_str(name);
    out.push(' ');
    for c in help.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
    out.push_str("\n# TYPE ");
    out.push_str(name);
    out.push(' ');
    out.push_str(kind);
    out.push('\n');
}

/// One sample line: `name{labels} value`.
fn sample(
    out: &mut String,
    name: &str,
    suffix: &str,
    labels: &[(&str, &str)],
    extra: Option<(&str, &str)>,
    value: impl Display,
) {
    out.push_str(name);
    out.push_str(suffix);
    let mut all = labels.iter().copied().chain(extra).peekable();
    if all.peek().is_some() {
        out.push('{');
        for (i, (k, v)) in all.enumerate() {
            if i > 0 {
                out.push(',');
            }
            out.push_str(k);
            out.push_str("=\"");
            escape_label(out, v);
            out.push('"');
        }
        out.push('}');
    }
    let _ = writeln!(out, " {value}");
}

/// A label value: `\`, `"` and newline escaped.
fn escape_label(out: &mut String, v: &str) {
    for c in v.chars() {
        match c {
            '\\' => out.push_str("\\\\"),
            '"' => out.push_str("\\\""),
            '\n' => out.push_str("\\n"),
            c => out.push(c),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn lines(text: &str, prefix: &str) -> Vec<String> {
        text.lines()
            .filter(|l| l.starts_with(prefix))
            .map(str::to_owned)
            .collect()
    }

    #[test]
    fn label_values_are_escaped() {
        let mut out = String::new();
        sample(
            &mut out,
            "m",
            "_total",
            &[("a", "x\\y\"z\nw")],
            Some(("le", "1")),
            3,
        );
        assert_eq!(out, "m_total{a=\"x\\\\y\\\"z\\nw\",le=\"1\"} 3\n");
        let mut out = String::new();
        sample(&mut out, "m", "", &[], None, 0.5);
        assert_eq!(out, "m 0.5\n");
        let mut out = String::new();
        header(&mut out, "m", "gauge", "a \\ b\nc \"q\"");
        assert_eq!(out, "# HELP m a \\\\ b\\nc \"q\"\n# TYPE m gauge\n");
    }

    #[test]
    fn histogram_buckets_are_cumulative_with_sum_count_and_inf() {
        let h = Histogram::new(&[MS, 10 * MS]);
        h.record(Duration::from_micros(500));
        h.record(Duration::from_millis(1)); // on the bound: le is inclusive
        h.record(Duration::from_millis(5));
        h.record(Duration::from_secs(2));
        let mut out = String::new();
        h.encode(&mut out, "h_seconds", &[("f", "a")]);
        assert_eq!(
            out,
            "h_seconds_bucket{f=\"a\",le=\"0.001\"} 2\n\
             h_seconds_bucket{f=\"a\",le=\"0.01\"} 3\n\
             h_seconds_bucket{f=\"a\",le=\"+Inf\"} 4\n\
             h_seconds_sum{f=\"a\"} 2.0065\n\
             h_seconds_count{f=\"a\"} 4\n"
        );
    }

    #[test]
    fn seconds_are_exact_decimals() {
        for (ns, text) in [
            (0, "0"),
            (1, "0.000000001"),
            (250, "0.00000025"),
            (2_500_000, "0.0025"),
            (S, "1"),
            (30 * S + 10, "30.00000001"),
            (u64::MAX, "18446744073.709551615"),
        ] {
            assert_eq!(Seconds(ns).to_string(), text);
        }
    }

    #[test]
    fn latency_bounds_render_as_plain_decimals() {
        let h = Histogram::new(LATENCY_NS);
        let mut out = String::new();
        h.encode(&mut out, "h", &[]);
        let les: Vec<&str> = out
            .lines()
            .filter_map(|l| l.split("le=\"").nth(1)?.split('"').next())
            .collect();
        assert_eq!(les.first(), Some(&"0.0001"));
        assert_eq!(les.get(3), Some(&"0.001"));
        assert_eq!(les.get(4), Some(&"0.0025"));
        assert_eq!(les[les.len() - 2], "30");
        assert_eq!(les.last(), Some(&"+Inf"));
        let d = Histogram::new(DECISION_NS);
        let mut out = String::new();
        d.encode(&mut out, "d", &[]);
        assert!(out.starts_with("d_bucket{le=\"0.00000025\"} 0\n"), "{out}");
    }

    #[test]
    fn requests_count_by_function_version_start_and_status() {
        let m = Metrics::new();
        for _ in 0..3 {
            m.record_request("f", 1, Start::Cold, 200, None, Duration::from_millis(2));
        }
        m.record_request("f", 1, Start::Warm, 200, None, Duration::from_micros(50));
        m.record_request(
            "f",
            2,
            Start::NoInstance,
            504,
            Some("timeout"),
            Duration::from_secs(1),
        );
        m.record_request(
            "",
            0,
            Start::NoInstance,
            404,
            Some("function_not_found"),
            Duration::ZERO,
        );
        let text = m.render();
        assert_eq!(
            lines(&text, "faas_requests_total{"),
            [
                r#"faas_requests_total{function="",version="",start_mode="none",status="404"} 1"#,
                r#"faas_requests_total{function="f",version="1",start_mode="cold",status="200"} 3"#,
                r#"faas_requests_total{function="f",version="1",start_mode="warm",status="200"} 1"#,
                r#"faas_requests_total{function="f",version="2",start_mode="none",status="504"} 1"#,
            ]
        );
        assert_eq!(
            lines(&text, "faas_invocation_errors_total{"),
            [
                r#"faas_invocation_errors_total{function="",code="function_not_found"} 1"#,
                r#"faas_invocation_errors_total{function="f",code="timeout"} 1"#,
            ]
        );
        assert!(text.contains(
            "faas_request_duration_seconds_count{function=\"f\",version=\"1\",start_mode=\"cold\"} 3\n"
        ));
        assert!(text.contains(
            "faas_request_duration_seconds_bucket{function=\"f\",version=\"1\",start_mode=\"cold\",le=\"0.001\"} 0\n"
        ));
        assert!(text.contains(
            "faas_request_duration_seconds_bucket{function=\"f\",version=\"1\",start_mode=\"cold\",le=\"0.0025\"} 3\n"
        ));
        // No histogram for a start mode that served nothing.
        assert!(!text.contains("start_mode=\"restore\""));
    }

    #[test]
    fn instance_starts_count_as_cold_starts_with_their_latency() {
        let m = Metrics::new();
        let spec = FunctionSpec::new(
            "py",
            faas_core::RuntimeKind::Python,
            faas_core::ImageRef::Dir("/x".into()),
            "m.h",
        );
        m.record_instance_start(&spec, StartMode::Restore, Duration::from_millis(3));
        m.record_instance_start(&spec, StartMode::Restore, Duration::from_millis(4));
        m.record_instance_start(&spec, StartMode::Cold, Duration::from_millis(40));
        let text = m.render();
        assert_eq!(
            lines(&text, "faas_cold_starts_total{"),
            [
                r#"faas_cold_starts_total{function="py",version="1",start_mode="cold"} 1"#,
                r#"faas_cold_starts_total{function="py",version="1",start_mode="restore"} 2"#,
            ]
        );
        assert!(text.contains(
            "faas_instance_start_seconds_sum{function=\"py\",version=\"1\",start_mode=\"restore\"} 0.007\n"
        ));
    }

    #[test]
    fn requests_are_in_flight_until_finished_and_dropped_ones_count_as_499() {
        let m = Metrics::new();
        let a = m.start_request("f", 3);
        let b = m.start_request("f", 3);
        let text = m.render();
        assert_eq!(
            lines(&text, "faas_inflight_requests{"),
            [r#"faas_inflight_requests{function="f",version="3"} 2"#]
        );
        a.finish(Start::Restore, 201, None);
        drop(b);
        let text = m.render();
        assert_eq!(
            lines(&text, "faas_inflight_requests{"),
            [r#"faas_inflight_requests{function="f",version="3"} 0"#]
        );
        assert_eq!(
            lines(&text, "faas_requests_total{"),
            [
                r#"faas_requests_total{function="f",version="3",start_mode="restore",status="201"} 1"#,
                r#"faas_requests_total{function="f",version="3",start_mode="none",status="499"} 1"#,
            ]
        );
        assert_eq!(
            lines(&text, "faas_invocation_errors_total{"),
            [r#"faas_invocation_errors_total{function="f",code="client_closed"} 1"#]
        );
    }

    struct FakeNode(u64, Vec<(&'static str, u64)>);

    impl NodeSource for FakeNode {
        fn live_instances(&self) -> u64 {
            self.0
        }
        fn queue_depths(&self, each: &mut dyn FnMut(&str, u64)) {
            for (f, n) in &self.1 {
                each(f, *n);
            }
        }
        fn sandbox_counters(&self, each: &mut dyn FnMut(&'static str, u64)) {
            each("launch_resumed", self.0 * 10);
            each("netns_reused", self.0);
        }
    }

    #[test]
    fn gauges_are_read_from_the_nodes_at_scrape_and_summed_per_label() {
        let m = Metrics::new();
        let a: Arc<dyn NodeSource> = Arc::new(FakeNode(2, vec![("f", 1), ("g", 0)]));
        let b: Arc<dyn NodeSource> = Arc::new(FakeNode(1, vec![("f", 3)]));
        m.add_node(&NodeId("n\"1".into()), Arc::downgrade(&a));
        m.add_node(&NodeId("n2".into()), Arc::downgrade(&b));
        let text = m.render();
        assert_eq!(
            lines(&text, "faas_live_instances{"),
            [
                r#"faas_live_instances{node="n\"1"} 2"#,
                r#"faas_live_instances{node="n2"} 1"#,
            ]
        );
        assert_eq!(
            lines(&text, "faas_queue_depth{"),
            [
                r#"faas_queue_depth{function="f"} 4"#,
                r#"faas_queue_depth{function="g"} 0"#,
            ]
        );
        assert_eq!(
            lines(&text, "faas_sandbox_events_total{"),
            [
                r#"faas_sandbox_events_total{node="n\"1",event="launch_resumed"} 20"#,
                r#"faas_sandbox_events_total{node="n\"1",event="netns_reused"} 2"#,
                r#"faas_sandbox_events_total{node="n2",event="launch_resumed"} 10"#,
                r#"faas_sandbox_events_total{node="n2",event="netns_reused"} 1"#,
            ]
        );
        drop(b);
        let text = m.render();
        assert_eq!(lines(&text, "faas_live_instances{").len(), 1);
    }

    #[test]
    fn every_family_has_help_and_type_once_and_samples_follow_it() {
        let m = Metrics::new();
        m.record_request("f", 1, Start::Cold, 200, None, Duration::from_millis(2));
        m.time_schedule(|| ());
        m.record_deploy(true, Duration::from_millis(30));
        let text = m.render();
        let mut current: Option<(String, String)> = None;
        let mut seen = std::collections::HashSet::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').unwrap();
                assert!(seen.insert(name.to_owned()), "TYPE {name} twice");
                current = Some((name.to_owned(), kind.to_owned()));
            } else if !line.starts_with("# HELP ") {
                let (name, kind) = current.as_ref().expect("sample before TYPE");
                let sample = line.split(['{', ' ']).next().unwrap();
                let ok = match kind.as_str() {
                    "histogram" => ["_bucket", "_sum", "_count"]
                        .iter()
                        .any(|s| sample.strip_suffix(s) == Some(name.as_str())),
                    _ => sample == name,
                };
                assert!(ok, "{sample} under TYPE {name} {kind}");
            }
        }
        assert!(text.contains("faas_scheduler_decision_seconds_count 1\n"));
        assert!(text.contains("faas_deploys_total{outcome=\"ok\"} 1\n"));
        assert!(text.contains("faas_deploys_total{outcome=\"error\"} 0\n"));
    }
}
