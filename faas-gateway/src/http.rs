//! [`FunctionGateway`]: the HTTP front door. Routes the REST API, schedules
//! every invocation and hands it to the node gateway of its placement.
//!
//! | route | does |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `GET /openapi.json` | the OpenAPI 3 document of these routes |
//! | `GET /metrics` | Prometheus metrics, text format 0.0.4 (series in [`Metrics`]) |
//! | `GET /functions` | every function's latest version |
//! | `POST /functions` | deploy a [`FunctionSpec`] (JSON) as a new version, prepared by the [`Preparer`] (a snapshot) → `201` + the spec (its `version`, `start` mode) and any `warnings` |
//! | `PUT /functions/{name}` | the same, the name from the path (a different `name` in the body is `400`) |
//! | `GET /functions/{name}` | its latest version |
//! | `DELETE /functions/{name}` | delete every version and alias → `204`; every node drops its instances and copies of it |
//! | `GET /functions/{name}/versions` | every version, oldest first |
//! | `GET /functions/{name}/aliases` | `{"ALIAS": VERSION, ...}` |
//! | `POST /functions/{name}/aliases/{alias}` | `{"version": N}`: point the alias at version N |
//! | `DELETE /functions/{name}/aliases/{alias}` | delete the alias → `204` (`404` if there is none) |
//! | `POST /invoke/{name}[@version\|@alias]` | run it: the function's status, headers and body, plus `x-faas-invocation-id`, `x-faas-function-version`, `x-faas-start` (`cold`, `restore`, `fork`, or `warm` for a reused instance) and `server-timing` |
//! | `POST /invoke-async/{name}[@version\|@alias]` | run it in the background → `202` `{"id"}` + `Location` |
//! | `GET /invocations/{id}` | an invocation's state and (asynchronous) result |
//! | `GET /invocations/{id}/logs` | its logs (`text/plain`) |
//! | `GET /nodes` | the nodes (see [`crate::cluster::NodeTable`]): capacity, requests in flight, health |
//!
//! [`ROUTES`] is the one table of routes: the router matches requests
//! against it and a test checks it against the OpenAPI document
//! ([`OPENAPI`]).
//!
//! Errors are JSON `{"error": CODE, "message": TEXT}` with exactly one
//! response per request: unknown function, version, alias or invocation
//! `404`, body over the limit `413`, concurrency limit `429` +
//! `Retry-After`, instance exited or broke the protocol `502`, deadline
//! `504`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use faas_core::{
    FunctionSpec, Invocation, InvocationId, InvocationResult, InvokeError, NodeGateway, NodeId,
    Outcome, Placement, ScheduleError, Scheduler, StartMode, UnixMillis,
};
use http::header::{
    ALLOW, CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, LOCATION, RETRY_AFTER,
};
use http::{Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use parking_lot::RwLock;
use serde::{Deserialize, Serialize};
use tracing::Instrument;

use crate::invocations::{ErrorInfo, Finished, InvocationLimits, InvocationState, Invocations};
use crate::metrics::{self, Metrics};
use crate::prepare::{PrepareError, Prepared, Preparer, Step};
use crate::registry::{AliasError, DeployError, Registry, ResolveError, Target, fill_random};

/// The response body type of the gateway.
pub type ResponseBody = Full<Bytes>;

/// The OpenAPI 3 document of the gateway's REST API (served at
/// `/openapi.json`).
pub const OPENAPI: &str = include_str!("openapi.json");

/// Configuration of a [`FunctionGateway`].
#[derive(Debug, Clone)]
pub struct GatewayConfig {
    /// Largest request body accepted, in bytes (default 6 MiB, as Lambda's
    /// synchronous invocations).
    pub max_body: usize,
}

impl Default for GatewayConfig {
    fn default() -> Self {
        GatewayConfig {
            max_body: 6 * 1024 * 1024,
        }
    }
}

/// What a route does.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Healthz,
    OpenApi,
    Metrics,
    ListFunctions,
    Deploy,
    PutFunction,
    GetFunction,
    DeleteFunction,
    ListVersions,
    ListAliases,
    SetAlias,
    DeleteAlias,
    Invoke,
    InvokeAsync,
    GetInvocation,
    GetInvocationLogs,
    ListNodes,
}

/// One route of the REST API: a method and a path pattern whose `{...}`
/// segments match any one segment.
#[derive(Debug)]
pub struct Route {
    /// The HTTP method.
    pub method: &'static str,
    /// The path pattern, as in the OpenAPI document (`/invoke/{function}`).
    pub path: &'static str,
    op: Op,
}

const fn route(method: &'static str, path: &'static str, op: Op) -> Route {
    Route { method, path, op }
}

/// Every route of the gateway: what the router serves and what
/// [`OPENAPI`] documents.
pub static ROUTES: [Route; 17] = [
    route("GET", "/healthz", Op::Healthz),
    route("GET", "/openapi.json", Op::OpenApi),
    route("GET", "/metrics", Op::Metrics),
    route("GET", "/functions", Op::ListFunctions),
    route("POST", "/functions", Op::Deploy),
    route("GET", "/functions/{name}", Op::GetFunction),
    route("PUT", "/functions/{name}", Op::PutFunction),
    route("DELETE", "/functions/{name}", Op::DeleteFunction),
    route("GET", "/functions/{name}/versions", Op::ListVersions),
    route("GET", "/functions/{name}/aliases", Op::ListAliases),
    route("POST", "/functions/{name}/aliases/{alias}", Op::SetAlias),
    route(
        "DELETE",
        "/functions/{name}/aliases/{alias}",
        Op::DeleteAlias,
    ),
    route("POST", "/invoke/{function}", Op::Invoke),
    route("POST", "/invoke-async/{function}", Op::InvokeAsync),
    route("GET", "/invocations/{id}", Op::GetInvocation),
    route("GET", "/invocations/{id}/logs", Op::GetInvocationLogs),
    route("GET", "/nodes", Op::ListNodes),
];

/// Where a request goes.
#[derive(Debug, PartialEq, Eq)]
enum Routed {
    /// A route, with the path's `{...}` segments (percent-decoded).
    To(Op, Vec<String>),
    /// The path exists with other methods.
    WrongMethod(Vec<&'static str>),
    /// No route has this path.
    Nowhere,
}

/// Matches `method path` against [`ROUTES`].
fn route_of(method: &str, path: &str) -> Routed {
    let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
    let mut allowed = Vec::new();
    for r in &ROUTES {
        let pat: Vec<&str> = r.path.trim_matches('/').split('/').collect();
        if pat.len() != segs.len() {
            continue;
        }
        let mut params = Vec::new();
        let matched = pat.iter().zip(&segs).all(|(p, s)| {
            if p.starts_with('{') {
                params.push(percent_decode(s));
                !s.is_empty()
            } else {
                p == s
            }
        });
        if !matched {
            continue;
        }
        if r.method == method {
            return Routed::To(r.op, params);
        }
        allowed.push(r.method);
    }
    if allowed.is_empty() {
        Routed::Nowhere
    } else {
        Routed::WrongMethod(allowed)
    }
}

/// Decodes `%XX` escapes of a path segment (invalid escapes and non-UTF-8
/// results are kept as they are).
fn percent_decode(s: &str) -> String {
    if !s.contains('%') {
        return s.to_owned();
    }
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |c: u8| (c as char).to_digit(16);
        if b[i] == b'%'
            && i + 2 < b.len()
            && let (Some(h), Some(l)) = (hex(b[i + 1]), hex(b[i + 2]))
        {
            out.push((h * 16 + l) as u8);
            i += 3;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap_or_else(|_| s.to_owned())
}

/// Finds the node gateway of a placement and runs invocations on it; what
/// a background (asynchronous) invocation takes along.
#[derive(Clone)]
struct Dispatcher {
    scheduler: Arc<dyn Scheduler>,
    nodes: Arc<RwLock<HashMap<NodeId, Arc<dyn NodeGateway>>>>,
    metrics: Arc<Metrics>,
}

/// Why an invocation produced no function result.
#[derive(Debug)]
enum Failure {
    Schedule(ScheduleError),
    NoNode(NodeId),
    Invoke(InvokeError),
}

impl Failure {
    fn status(&self) -> StatusCode {
        match self {
            Failure::Schedule(e) => match e {
                ScheduleError::OverLimit { .. } | ScheduleError::NoCapacity { .. } => {
                    StatusCode::TOO_MANY_REQUESTS
                }
                ScheduleError::NoNodes => StatusCode::SERVICE_UNAVAILABLE,
            },
            Failure::NoNode(_) => StatusCode::SERVICE_UNAVAILABLE,
            Failure::Invoke(e) => {
                StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY)
            }
        }
    }

    fn code(&self) -> &'static str {
        match self {
            Failure::Schedule(ScheduleError::OverLimit { .. }) => "over_limit",
            Failure::Schedule(ScheduleError::NoCapacity { .. }) => "no_capacity",
            Failure::Schedule(ScheduleError::NoNodes) => "no_nodes",
            Failure::NoNode(_) => "node_unavailable",
            Failure::Invoke(e) => e.code(),
        }
    }

    fn message(&self) -> String {
        match self {
            Failure::Schedule(e) => e.to_string(),
            Failure::NoNode(n) => format!("node {n} has no gateway"),
            Failure::Invoke(e) => e.to_string(),
        }
    }

    /// The response of a synchronous invocation.
    fn response(&self) -> Response<ResponseBody> {
        let retry = match self {
            Failure::Schedule(e) => e.retry_after().map(|d| d.as_secs().max(1)),
            _ => None,
        };
        let mut r = json(
            self.status(),
            &ErrorBody {
                error: self.code(),
                message: self.message(),
                retry_after_s: retry,
            },
        );
        if let Some(s) = retry {
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
        }
        metrics::tag_error(&mut r, self.code());
        r
    }

    /// How the invocation store records it.
    fn finished(self) -> Finished {
        let (status, error) = (
            self.status().as_u16(),
            ErrorInfo {
                error: self.code().to_owned(),
                message: self.message(),
            },
        );
        let logs = match self {
            Failure::Invoke(e) => e.into_parts().1,
            _ => String::new(),
        };
        Finished::Failed {
            status,
            error,
            logs,
        }
    }
}

/// Marks a synchronous invocation cancelled when its request is dropped
/// before it finished (client gone).
struct Recording<'a> {
    store: &'a Invocations,
    id: InvocationId,
    done: bool,
}

impl Recording<'_> {
    fn finish(mut self, how: Finished) {
        self.done = true;
        self.store.finish(self.id, how);
    }
}

impl Drop for Recording<'_> {
    fn drop(&mut self) {
        if !self.done {
            self.store.finish(
                self.id,
                Finished::Failed {
                    status: 499,
                    error: ErrorInfo {
                        error: "cancelled".into(),
                        message: "the client went away before the function answered".into(),
                    },
                    logs: String::new(),
                },
            );
        }
    }
}

/// How long an asynchronous invocation retries while the function is at
/// its concurrency limit (or the cluster full).
const ASYNC_RETRY_WINDOW: Duration = Duration::from_secs(60);

impl Dispatcher {
    /// Schedules `spec` and finds the placement's node gateway.
    fn place(&self, spec: &FunctionSpec) -> Result<(Arc<dyn NodeGateway>, Placement), Failure> {
        let placement = self
            .metrics
            .time_schedule(|| self.scheduler.schedule(spec))
            .map_err(Failure::Schedule)?;
        let node = self.nodes.read().get(&placement.node).cloned();
        match node {
            Some(n) => Ok((n, placement)),
            None => {
                self.scheduler.release(&placement, Outcome::Failed);
                Err(Failure::NoNode(placement.node))
            }
        }
    }

    /// Runs `inv` on the node of `placement` and releases the placement.
    async fn run_on(
        &self,
        node: Arc<dyn NodeGateway>,
        placement: Placement,
        spec: Arc<FunctionSpec>,
        inv: Invocation,
    ) -> Result<InvocationResult, Failure> {
        let mut release = Release {
            scheduler: &*self.scheduler,
            placement,
            outcome: Outcome::Cancelled,
        };
        let result = node.invoke(spec, &release.placement, inv).await;
        release.outcome = match result.as_ref().map_err(InvokeError::kind) {
            Ok(_) | Err(InvokeError::Function { .. }) => Outcome::Ok,
            Err(InvokeError::TimedOut { .. }) => Outcome::TimedOut,
            Err(_) => Outcome::Failed,
        };
        result.map_err(Failure::Invoke)
    }

    /// Runs one invocation.
    /// Runs one invocation; also says on which node (if it was placed).
    async fn run(
        &self,
        spec: Arc<FunctionSpec>,
        inv: Invocation,
    ) -> (Option<NodeId>, Result<InvocationResult, Failure>) {
        let (node, placement) = match self.place(&spec) {
            Ok(p) => p,
            Err(e) => return (None, Err(e)),
        };
        let on = placement.node.clone();
        (Some(on), self.run_on(node, placement, spec, inv).await)
    }

    /// Runs an asynchronous invocation: while the function is at its limit
    /// (`429`), it waits and retries for up to [`ASYNC_RETRY_WINDOW`];
    /// each attempt gets the function's full timeout.
    async fn run_async(
        &self,
        spec: Arc<FunctionSpec>,
        mut inv: Invocation,
    ) -> Result<InvocationResult, Failure> {
        let give_up = tokio::time::Instant::now() + ASYNC_RETRY_WINDOW;
        loop {
            match self.place(&spec) {
                Ok((node, placement)) => {
                    inv.deadline = UnixMillis::now().after(spec.limits.timeout());
                    return self.run_on(node, placement, spec, inv).await;
                }
                Err(Failure::Schedule(e))
                    if e.retry_after().is_some() && tokio::time::Instant::now() < give_up =>
                {
                    let wait = e
                        .retry_after()
                        .unwrap_or_default()
                        .clamp(Duration::from_millis(10), Duration::from_secs(1));
                    tokio::time::sleep(wait).await;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

/// The HTTP function gateway.
pub struct FunctionGateway {
    registry: Arc<Registry>,
    dispatcher: Dispatcher,
    invocations: Arc<Invocations>,
    preparer: Option<Arc<dyn Preparer>>,
    node_table: Option<Arc<crate::cluster::NodeTable>>,
    config: GatewayConfig,
    next_id: AtomicU64,
}

/// The answer to a deploy: the spec as registered, and what the deployer
/// should know.
#[derive(Serialize)]
struct Deployed<'a> {
    #[serde(flatten)]
    spec: &'a FunctionSpec,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    warnings: Vec<String>,
    /// How long each preparation step took.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    steps: Vec<Step>,
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u64>,
}

/// The body of `POST /functions/{name}/aliases/{alias}`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct AliasBody {
    version: u32,
}

/// The answer to an alias update.
#[derive(Serialize)]
struct AliasSet<'a> {
    function: &'a str,
    alias: &'a str,
    version: u32,
}

fn json<T: Serialize + ?Sized>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn text(status: StatusCode, body: impl Into<Bytes>) -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(body.into()));
    *r.status_mut() = status;
    r.headers_mut().insert(
        CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ResponseBody> {
    let mut r = json(
        status,
        &ErrorBody {
            error: code,
            message: message.into(),
            retry_after_s: None,
        },
    );
    metrics::tag_error(&mut r, code);
    r
}

/// `204 No Content`.
fn no_content() -> Response<ResponseBody> {
    let mut r = Response::new(Full::new(Bytes::new()));
    *r.status_mut() = StatusCode::NO_CONTENT;
    r
}

/// The answer to a failed alias update.
fn alias_error(e: &AliasError) -> Response<ResponseBody> {
    let (status, code) = match e {
        AliasError::Name(_) => (StatusCode::BAD_REQUEST, "bad_alias"),
        AliasError::NoFunction(_) => (StatusCode::NOT_FOUND, "function_not_found"),
        AliasError::NoVersion { .. } => (StatusCode::NOT_FOUND, "version_not_found"),
        AliasError::NoAlias { .. } => (StatusCode::NOT_FOUND, "alias_not_found"),
        AliasError::State { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "state_error"),
    };
    error(status, code, e.to_string())
}

/// Releases a placement exactly once, also when the request is dropped
/// half-way (client gone).
struct Release<'a> {
    scheduler: &'a dyn Scheduler,
    placement: Placement,
    outcome: Outcome,
}

impl Drop for Release<'_> {
    fn drop(&mut self) {
        self.scheduler.release(&self.placement, self.outcome);
    }
}

impl FunctionGateway {
    /// A gateway over `registry`, placing requests with `scheduler`.
    pub fn new(
        registry: Arc<Registry>,
        scheduler: Arc<dyn Scheduler>,
        config: GatewayConfig,
    ) -> Self {
        let mut seed = [0u8; 8];
        fill_random(&mut seed);
        FunctionGateway {
            registry,
            dispatcher: Dispatcher {
                scheduler,
                nodes: Arc::new(RwLock::new(HashMap::new())),
                metrics: Arc::default(),
            },
            invocations: Arc::new(Invocations::new(InvocationLimits::default())),
            preparer: None,
            node_table: None,
            config,
            // Random start, so ids of successive runs do not collide; the top
            // bit is kept clear so the counter never wraps in practice.
            next_id: AtomicU64::new(u64::from_le_bytes(seed) >> 1),
        }
    }

    /// Deploys go through `preparer` (see [`Preparer`]): it checks each
    /// new version before it is copied and prepares it (a snapshot) before
    /// it is registered. Without one, versions are registered cold as they
    /// are.
    #[must_use]
    pub fn with_preparer(mut self, preparer: Arc<dyn Preparer>) -> Self {
        self.preparer = Some(preparer);
        self
    }

    /// `GET /nodes` lists the nodes of `table`.
    #[must_use]
    pub fn with_node_table(mut self, table: Arc<crate::cluster::NodeTable>) -> Self {
        self.node_table = Some(table);
        self
    }

    /// Records into `metrics` (shared with the node gateways of the
    /// process, see [`Metrics`]) instead of a registry of its own; served
    /// at `GET /metrics`.
    #[must_use]
    pub fn with_metrics(mut self, metrics: Arc<Metrics>) -> Self {
        self.dispatcher.metrics = metrics;
        self
    }

    /// The metrics registry served at `GET /metrics`.
    pub fn metrics(&self) -> &Arc<Metrics> {
        &self.dispatcher.metrics
    }

    /// Bounds of the store of recent invocations (default: 10,000
    /// invocations, 256 MiB, one hour, 1,000 pending asynchronous ones).
    #[must_use]
    pub fn with_invocation_limits(mut self, limits: InvocationLimits) -> Self {
        self.invocations = Arc::new(Invocations::new(limits));
        self
    }

    /// Registers the node gateway of a node (the scheduler must know the node
    /// too).
    pub fn add_node(&self, gateway: Arc<dyn NodeGateway>) {
        self.dispatcher
            .nodes
            .write()
            .insert(gateway.node().clone(), gateway);
    }

    /// The function registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// The recent invocations.
    pub fn invocations(&self) -> &Arc<Invocations> {
        &self.invocations
    }

    /// Handles one HTTP request, in a `request` span that carries its
    /// trace id (and, for invocations, an `invoke` span with the function,
    /// version and invocation id).
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_owned();
        let method = req.method().clone();
        let trace = trace_id(req.headers());
        let span = tracing::info_span!("request", %method, %path, trace = %trace);
        async move {
            let resp = match route_of(method.as_str(), &path) {
                Routed::To(op, params) => self.dispatch(op, &params, req, trace).await,
                Routed::WrongMethod(allowed) => {
                    let mut r = error(
                        StatusCode::METHOD_NOT_ALLOWED,
                        "method_not_allowed",
                        format!("{method} is not allowed on {path}"),
                    );
                    if let Ok(v) = HeaderValue::from_str(&allowed.join(", ")) {
                        r.headers_mut().insert(ALLOW, v);
                    }
                    r
                }
                Routed::Nowhere => error(
                    StatusCode::NOT_FOUND,
                    "not_found",
                    format!("no route for {method} {path}"),
                ),
            };
            tracing::debug!(status = resp.status().as_u16(), "request");
            resp
        }
        .instrument(span)
        .await
    }

    async fn dispatch<B>(
        &self,
        op: Op,
        params: &[String],
        req: Request<B>,
        trace: String,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let p = |i: usize| params.get(i).map_or("", String::as_str);
        match op {
            Op::Healthz => text(StatusCode::OK, Bytes::from_static(b"ok\n")),
            Op::OpenApi => {
                let mut r = Response::new(Full::new(Bytes::from_static(OPENAPI.as_bytes())));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
                r
            }
            Op::Metrics => self.dispatcher.metrics.response(),
            Op::ListFunctions => json(StatusCode::OK, &self.registry.list()),
            Op::Deploy => self.dispatcher.metrics.deploy(self.deploy(req, None)).await,
            Op::PutFunction => {
                let deploy = self.deploy(req, Some(p(0)));
                self.dispatcher.metrics.deploy(deploy).await
            }
            Op::GetFunction => match self.registry.get(p(0)) {
                Some(s) => json(StatusCode::OK, &*s),
                None => not_deployed(p(0)),
            },
            Op::DeleteFunction => self.delete(p(0)).await,
            Op::ListVersions => match self.registry.versions(p(0)) {
                Some(v) => json(StatusCode::OK, &v),
                None => not_deployed(p(0)),
            },
            Op::ListAliases => match self.registry.aliases(p(0)) {
                Some(a) => json(StatusCode::OK, &a),
                None => not_deployed(p(0)),
            },
            Op::SetAlias => self.set_alias(p(0), p(1), req).await,
            Op::DeleteAlias => self.delete_alias(p(0), p(1)).await,
            Op::Invoke => self.invoke(p(0), req, trace).await,
            Op::InvokeAsync => self.invoke_async(p(0), req, trace).await,
            Op::GetInvocation => match parse_id(p(0)) {
                Ok(id) => match self.invocations.get(id) {
                    Some(r) => json(StatusCode::OK, &r),
                    None => no_invocation(p(0)),
                },
                Err(e) => e.response(),
            },
            Op::GetInvocationLogs => match parse_id(p(0)) {
                Ok(id) => match self.invocations.logs(id) {
                    Some((state, logs)) => {
                        let mut r = text(StatusCode::OK, logs);
                        let state = match state {
                            InvocationState::Pending => "pending",
                            InvocationState::Done => "done",
                            InvocationState::Failed => "failed",
                        };
                        insert(r.headers_mut(), "x-faas-invocation-state", state);
                        r
                    }
                    None => no_invocation(p(0)),
                },
                Err(e) => e.response(),
            },
            Op::ListNodes => json(
                StatusCode::OK,
                &self
                    .node_table
                    .as_ref()
                    .map(|t| t.list())
                    .unwrap_or_default(),
            ),
        }
    }

    async fn read_body<B>(
        &self,
        req: Request<B>,
    ) -> Result<(http::request::Parts, Bytes), Response<ResponseBody>>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let max = self.config.max_body;
        let too_large = || {
            error(
                StatusCode::PAYLOAD_TOO_LARGE,
                "body_too_large",
                format!("request body exceeds the limit of {max} bytes"),
            )
        };
        let declared = req
            .headers()
            .get(CONTENT_LENGTH)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse::<u64>().ok());
        if declared.is_some_and(|n| n > max as u64) {
            return Err(too_large());
        }
        let (parts, body) = req.into_parts();
        match Limited::new(body, max).collect().await {
            Ok(c) => Ok((parts, c.to_bytes())),
            Err(e) if e.is::<http_body_util::LengthLimitError>() => Err(too_large()),
            Err(e) => Err(error(
                StatusCode::BAD_REQUEST,
                "bad_body",
                format!("reading the request body failed: {e}"),
            )),
        }
    }

    /// `POST /functions`, or `PUT /functions/{name}` with `name`.
    async fn deploy<B>(&self, req: Request<B>, name: Option<&str>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (_, body) = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let spec = match parse_spec(&body, name) {
            Ok(s) => s,
            Err(e) => return e.response(),
        };
        if let Some(p) = &self.preparer
            && let Err(e) = p.check(&spec)
        {
            return prepare_error(&e);
        }
        let registry = self.registry.clone();
        let staged = match tokio::task::spawn_blocking(move || registry.stage(spec)).await {
            Ok(Ok(staged)) => staged,
            Ok(Err(e)) => return deploy_error(&e),
            Err(e) => return error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        };
        let prepared = match &self.preparer {
            Some(p) => {
                let dir = staged.dir().to_path_buf();
                match p.prepare(staged.spec(), &dir).await {
                    Ok(prepared) => prepared,
                    Err(e) => {
                        let registry = self.registry.clone();
                        let _ = tokio::task::spawn_blocking(move || registry.abandon(staged)).await;
                        return prepare_error(&e);
                    }
                }
            }
            None => Prepared::default(),
        };
        let registry = self.registry.clone();
        let committed = tokio::task::spawn_blocking(move || {
            registry.commit(staged, &prepared).map(|s| (s, prepared))
        })
        .await;
        match committed {
            Ok(Ok((spec, prepared))) => {
                tracing::info!(function = %spec.name, version = spec.version, start = spec.start.as_str(), "deployed");
                json(
                    StatusCode::CREATED,
                    &Deployed {
                        spec: &spec,
                        warnings: prepared.warnings,
                        steps: prepared.steps,
                    },
                )
            }
            Ok(Err(e)) => deploy_error(&e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }

    async fn delete(&self, name: &str) -> Response<ResponseBody> {
        let registry = self.registry.clone();
        let n = name.to_owned();
        match tokio::task::spawn_blocking(move || registry.remove(&n)).await {
            Ok(Ok(true)) => {
                tracing::info!(function = %name, "deleted");
                // Every node drops its instances and copies of it.
                let nodes: Vec<_> = self.dispatcher.nodes.read().values().cloned().collect();
                for n in nodes {
                    n.remove_function(name);
                }
                no_content()
            }
            Ok(Ok(false)) => not_deployed(name),
            Ok(Err(e)) => error(
                StatusCode::INTERNAL_SERVER_ERROR,
                "state_error",
                e.to_string(),
            ),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }

    async fn set_alias<B>(&self, name: &str, alias: &str, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (_, body) = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let version = match serde_json::from_slice::<AliasBody>(&body) {
            Ok(b) => b.version,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_alias",
                    format!("alias body: give {{\"version\": N}}: {e}"),
                );
            }
        };
        let registry = self.registry.clone();
        let (n, a) = (name.to_owned(), alias.to_owned());
        match tokio::task::spawn_blocking(move || registry.set_alias(&n, &a, version)).await {
            Ok(Ok(())) => {
                tracing::info!(function = %name, alias, version, "alias set");
                json(
                    StatusCode::OK,
                    &AliasSet {
                        function: name,
                        alias,
                        version,
                    },
                )
            }
            Ok(Err(e)) => alias_error(&e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }

    async fn delete_alias(&self, name: &str, alias: &str) -> Response<ResponseBody> {
        let registry = self.registry.clone();
        let (n, a) = (name.to_owned(), alias.to_owned());
        match tokio::task::spawn_blocking(move || registry.remove_alias(&n, &a)).await {
            Ok(Ok(())) => {
                tracing::info!(function = %name, alias, "alias deleted");
                no_content()
            }
            Ok(Err(e)) => alias_error(&e),
            Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, "internal", e.to_string()),
        }
    }

    /// Resolves `target` (`NAME[@VERSION|@ALIAS]`), reads the body and
    /// builds the invocation.
    async fn invocation<B>(
        &self,
        target: &str,
        req: Request<B>,
        trace_id: String,
    ) -> Result<(Arc<FunctionSpec>, Invocation), Response<ResponseBody>>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (name, target) =
            Target::parse(target).map_err(|m| error(StatusCode::BAD_REQUEST, "bad_target", m))?;
        let spec = self
            .registry
            .resolve(name, &target)
            .map_err(|e| resolve_error(&e))?;
        let (parts, body) = self.read_body(req).await?;
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| !is_hop_by_hop(k))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let inv = Invocation {
            id: InvocationId(self.next_id.fetch_add(1, Ordering::Relaxed)),
            function: spec.name.clone(),
            version: spec.version,
            headers,
            body: body.to_vec(),
            deadline: UnixMillis::now().after(spec.limits.timeout()),
            trace_id,
        };
        Ok((spec, inv))
    }

    async fn invoke<B>(
        &self,
        target: &str,
        req: Request<B>,
        trace: String,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let metrics = &self.dispatcher.metrics;
        let (spec, inv) = match self.invocation(target, req, trace).await {
            Ok(x) => x,
            Err(r) => {
                // Unknown function or version, bad body: no function's
                // labels (a made-up name must not add a series).
                metrics.start_request("", 0).finish_response(&r);
                return r;
            }
        };
        let record = metrics.start_request(&spec.name, spec.version);
        let (id, trace_id) = (inv.id, inv.trace_id.clone());
        let span = tracing::info_span!("invoke", function = %spec.name, version = spec.version, invocation = %id);
        // Synchronous invocations are never refused by the store.
        let _ = self
            .invocations
            .start(id, &spec.name, spec.version, &trace_id, false);
        let recording = Recording {
            store: &self.invocations,
            id,
            done: false,
        };
        let (node, result) = self
            .dispatcher
            .run(spec.clone(), inv)
            .instrument(span.clone())
            .await;
        let mut resp = match result {
            Ok(r) => {
                recording.finish(Finished::Done {
                    status: r.status,
                    headers: r.headers.clone(),
                    body: None,
                    logs: r.logs,
                });
                let mut resp = Response::new(Full::new(Bytes::from(r.body)));
                *resp.status_mut() = StatusCode::from_u16(r.status).unwrap_or(StatusCode::OK);
                for (k, v) in r.headers {
                    match (
                        HeaderName::from_bytes(k.as_bytes()),
                        HeaderValue::from_str(&v),
                    ) {
                        (Ok(k), Ok(v)) if !is_hop_by_hop(&k) && k != CONTENT_LENGTH => {
                            resp.headers_mut().append(k, v);
                        }
                        _ => span.in_scope(|| {
                            tracing::warn!(header = %k, "dropping invalid response header from the function");
                        }),
                    }
                }
                let t = r.timings;
                let h = resp.headers_mut();
                insert(h, "x-faas-cold", if r.cold { "true" } else { "false" });
                let started = t.started.map_or("warm", StartMode::as_str);
                insert(h, "x-faas-start", started);
                insert(
                    h,
                    "server-timing",
                    &format!(
                        "queue;dur={:.3}, start;dur={:.3};desc={started}, run;dur={:.3}",
                        t.queued_us as f64 / 1e3,
                        t.start_us as f64 / 1e3,
                        t.run_us as f64 / 1e3
                    ),
                );
                resp
            }
            Err(e) => {
                let resp = e.response();
                span.in_scope(|| {
                    tracing::info!(error = %e.message(), status = resp.status().as_u16(), "invocation failed");
                });
                recording.finish(e.finished());
                resp
            }
        };
        let h = resp.headers_mut();
        insert(h, "x-faas-invocation-id", &id.to_string());
        insert(h, "x-faas-trace-id", &trace_id);
        insert(h, "x-faas-function-version", &spec.version.to_string());
        if let Some(node) = node {
            insert(h, "x-faas-node", &node.0);
        }
        record.finish_response(&resp);
        resp
    }

    async fn invoke_async<B>(
        &self,
        target: &str,
        req: Request<B>,
        trace: String,
    ) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (spec, inv) = match self.invocation(target, req, trace).await {
            Ok(x) => x,
            Err(r) => return r,
        };
        let (id, trace_id) = (inv.id, inv.trace_id.clone());
        if let Err(e) = self
            .invocations
            .start(id, &spec.name, spec.version, &trace_id, true)
        {
            let mut r = error(
                StatusCode::TOO_MANY_REQUESTS,
                "too_many_pending",
                e.to_string(),
            );
            r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(1));
            return r;
        }
        let version = spec.version;
        let span = tracing::info_span!("invoke", function = %spec.name, version, invocation = %id, mode = "async");
        let dispatcher = self.dispatcher.clone();
        let store = self.invocations.clone();
        tokio::spawn(
            async move {
                let how = match dispatcher.run_async(spec, inv).await {
                    Ok(r) => Finished::Done {
                        status: r.status,
                        headers: r.headers,
                        body: Some(r.body),
                        logs: r.logs,
                    },
                    Err(e) => {
                        tracing::info!(error = %e.message(), "invocation failed");
                        e.finished()
                    }
                };
                store.finish(id, how);
            }
            .instrument(span),
        );
        let id_text = id.to_string();
        let mut r = json(StatusCode::ACCEPTED, &serde_json::json!({ "id": id_text }));
        let h = r.headers_mut();
        if let Ok(v) = HeaderValue::from_str(&format!("/invocations/{id_text}")) {
            h.insert(LOCATION, v);
        }
        insert(h, "x-faas-invocation-id", &id_text);
        insert(h, "x-faas-trace-id", &trace_id);
        insert(h, "x-faas-function-version", &version.to_string());
        r
    }

    /// Serves HTTP/1.1 and HTTP/2 (prior knowledge) on `listener` until
    /// `shutdown` completes.
    ///
    /// # Errors
    ///
    /// Accepting connections failed persistently.
    pub async fn serve(
        self: Arc<Self>,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send,
    ) -> std::io::Result<()> {
        use hyper_util::rt::{TokioExecutor, TokioIo};
        use hyper_util::server::conn::auto::Builder;
        let graceful = hyper_util::server::graceful::GracefulShutdown::new();
        tokio::pin!(shutdown);
        loop {
            let (stream, _peer) = tokio::select! {
                r = listener.accept() => match r {
                    Ok(c) => c,
                    Err(e) => {
                        // EMFILE and friends: back off instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                },
                () = &mut shutdown => break,
            };
            let _ = stream.set_nodelay(true);
            let gw = self.clone();
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let gw = gw.clone();
                async move { Ok::<_, Infallible>(gw.handle(req).await) }
            });
            let conn = Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), svc)
                .into_owned();
            let conn = graceful.watch(conn);
            tokio::spawn(async move {
                if let Err(e) = conn.await {
                    tracing::debug!(error = %e, "connection ended with an error");
                }
            });
        }
        tokio::select! {
            () = graceful.shutdown() => {}
            () = tokio::time::sleep(Duration::from_secs(5)) => {
                tracing::warn!("connections still open after 5 s; closing them");
            }
        }
        Ok(())
    }
}

fn insert(h: &mut http::HeaderMap, name: &'static str, value: &str) {
    if let Ok(v) = HeaderValue::from_str(value) {
        h.insert(HeaderName::from_static(name), v);
    }
}

fn deploy_error(e: &DeployError) -> Response<ResponseBody> {
    match e {
        DeployError::State { .. } => error(
            StatusCode::INTERNAL_SERVER_ERROR,
            "state_error",
            e.to_string(),
        ),
        _ => error(StatusCode::BAD_REQUEST, "bad_spec", e.to_string()),
    }
}

fn prepare_error(e: &PrepareError) -> Response<ResponseBody> {
    let (status, code) = match e {
        PrepareError::Unavailable(_) => (StatusCode::BAD_REQUEST, "runtime_unavailable"),
        PrepareError::Init { .. } => (StatusCode::BAD_REQUEST, "init_failed"),
        PrepareError::Sys { .. } => (StatusCode::INTERNAL_SERVER_ERROR, "prepare_failed"),
    };
    error(status, code, e.to_string())
}

fn not_deployed(name: &str) -> Response<ResponseBody> {
    error(
        StatusCode::NOT_FOUND,
        "function_not_found",
        format!("function {name:?} is not deployed"),
    )
}

fn resolve_error(e: &ResolveError) -> Response<ResponseBody> {
    let code = match e {
        ResolveError::NoFunction(_) => "function_not_found",
        ResolveError::NoVersion { .. } => "version_not_found",
        ResolveError::NoAlias { .. } => "alias_not_found",
    };
    error(StatusCode::NOT_FOUND, code, e.to_string())
}

fn no_invocation(id: &str) -> Response<ResponseBody> {
    error(
        StatusCode::NOT_FOUND,
        "invocation_not_found",
        format!(
            "invocation {id:?} is unknown (or was forgotten: only recent invocations are kept)"
        ),
    )
}

/// An invocation id as the gateway prints it (16 hex digits).
fn parse_id(s: &str) -> Result<InvocationId, BadRequest> {
    let bad = || BadRequest {
        code: "bad_invocation_id",
        message: format!(
            "invocation id {s:?} is invalid: give the 16 hex digits of x-faas-invocation-id"
        ),
    };
    if s.is_empty() || s.len() > 16 {
        return Err(bad());
    }
    s.parse().map_err(|_| bad())
}

/// A `400` answer: its code and message.
#[derive(Debug)]
struct BadRequest {
    code: &'static str,
    message: String,
}

impl BadRequest {
    fn response(self) -> Response<ResponseBody> {
        error(StatusCode::BAD_REQUEST, self.code, self.message)
    }
}

/// The spec of a deploy; with `name` (from the path) its `name` may be
/// left out and must match when given.
fn parse_spec(body: &[u8], name: Option<&str>) -> Result<FunctionSpec, BadRequest> {
    let bad = |e: serde_json::Error| BadRequest {
        code: "bad_spec",
        message: format!("function spec is not valid JSON for a spec: {e}"),
    };
    let Some(name) = name else {
        return serde_json::from_slice(body).map_err(bad);
    };
    let mut v: serde_json::Value = serde_json::from_slice(body).map_err(bad)?;
    let Some(obj) = v.as_object_mut() else {
        return Err(BadRequest {
            code: "bad_spec",
            message: "function spec must be a JSON object".into(),
        });
    };
    match obj.get("name") {
        None => {
            obj.insert("name".into(), name.into());
        }
        Some(n) if n.as_str() == Some(name) => {}
        Some(n) => {
            return Err(BadRequest {
                code: "name_mismatch",
                message: format!("the spec names function {n} but the path names {name:?}"),
            });
        }
    }
    serde_json::from_value(v).map_err(bad)
}

fn is_hop_by_hop(name: &HeaderName) -> bool {
    matches!(
        name.as_str(),
        "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "upgrade"
            | "te"
            | "trailer"
    )
}

/// The caller's trace id (`x-faas-trace-id`, or the trace-id field of a W3C
/// `traceparent`), or a new random one.
fn trace_id(h: &http::HeaderMap) -> String {
    let valid = |s: &str| {
        !s.is_empty() && s.len() <= 64 && s.bytes().all(|b| b.is_ascii_alphanumeric() || b == b'-')
    };
    if let Some(t) = h.get("x-faas-trace-id").and_then(|v| v.to_str().ok())
        && valid(t)
    {
        return t.to_owned();
    }
    if let Some(t) = h
        .get("traceparent")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.split('-').nth(1))
        && t.len() == 32
        && valid(t)
    {
        return t.to_owned();
    }
    crate::registry::random_hex(16)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every (method, path) the OpenAPI document describes.
    fn documented() -> std::collections::BTreeSet<(String, String)> {
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        let mut out = std::collections::BTreeSet::new();
        for (path, item) in doc["paths"].as_object().unwrap() {
            for (method, _) in item.as_object().unwrap() {
                if ["get", "put", "post", "delete", "patch", "head", "options"]
                    .contains(&method.as_str())
                {
                    out.insert((method.to_uppercase(), path.clone()));
                }
            }
        }
        out
    }

    #[test]
    fn openapi_documents_exactly_the_routes() {
        let routed: std::collections::BTreeSet<(String, String)> = ROUTES
            .iter()
            .map(|r| (r.method.to_owned(), r.path.to_owned()))
            .collect();
        let documented = documented();
        let undocumented: Vec<_> = routed.difference(&documented).collect();
        let unrouted: Vec<_> = documented.difference(&routed).collect();
        assert!(
            undocumented.is_empty(),
            "routes missing from openapi.json: {undocumented:?}"
        );
        assert!(
            unrouted.is_empty(),
            "documented but not routed: {unrouted:?}"
        );
        // Every path parameter of a route is declared in the document.
        let doc: serde_json::Value = serde_json::from_str(OPENAPI).unwrap();
        for r in &ROUTES {
            let item = &doc["paths"][r.path];
            let mut params: Vec<serde_json::Value> =
                item["parameters"].as_array().cloned().unwrap_or_default();
            params.extend(
                item[r.method.to_lowercase()]["parameters"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default(),
            );
            let names: Vec<String> = params
                .iter()
                .map(|p| match p["$ref"].as_str() {
                    Some(rf) => {
                        let key = rf.rsplit('/').next().unwrap();
                        doc["components"]["parameters"][key]["name"]
                            .as_str()
                            .unwrap()
                            .to_owned()
                    }
                    None => p["name"].as_str().unwrap().to_owned(),
                })
                .collect();
            for seg in r.path.split('/').filter(|s| s.starts_with('{')) {
                let name = seg.trim_matches(|c| c == '{' || c == '}');
                assert!(
                    names.iter().any(|n| n == name),
                    "{} {}: {name} undeclared",
                    r.method,
                    r.path
                );
            }
        }
    }

    #[test]
    fn router_matches_patterns_methods_and_escapes() {
        assert_eq!(route_of("GET", "/healthz"), Routed::To(Op::Healthz, vec![]));
        assert_eq!(
            route_of("POST", "/invoke/hello%40prod"),
            Routed::To(Op::Invoke, vec!["hello@prod".into()])
        );
        assert_eq!(
            route_of("POST", "/functions/f/aliases/prod"),
            Routed::To(Op::SetAlias, vec!["f".into(), "prod".into()])
        );
        assert_eq!(
            route_of("GET", "/invocations/00ab/logs"),
            Routed::To(Op::GetInvocationLogs, vec!["00ab".into()])
        );
        assert_eq!(
            route_of("PATCH", "/functions/f"),
            Routed::WrongMethod(vec!["GET", "PUT", "DELETE"])
        );
        assert_eq!(route_of("GET", "/functions/f/nope"), Routed::Nowhere);
        assert_eq!(route_of("POST", "/invoke/"), Routed::Nowhere);
        assert_eq!(percent_decode("a%2"), "a%2");
        assert_eq!(percent_decode("%ff"), "%ff");
    }

    #[test]
    fn put_spec_takes_its_name_from_the_path() {
        let body = br#"{"runtime":"native","image":{"kind":"dir","path":"/f"},"handler":"h"}"#;
        assert_eq!(parse_spec(body, Some("f")).unwrap().name, "f");
        let named =
            br#"{"name":"g","runtime":"native","image":{"kind":"dir","path":"/f"},"handler":"h"}"#;
        assert_eq!(parse_spec(named, Some("g")).unwrap().name, "g");
        assert_eq!(
            parse_spec(named, Some("f")).unwrap_err().code,
            "name_mismatch"
        );
        assert_eq!(parse_spec(b"[]", Some("f")).unwrap_err().code, "bad_spec");
        assert_eq!(parse_spec(body, None).unwrap_err().code, "bad_spec");
        assert!(parse_id("00000000deadbeef").is_ok());
        for bad in ["", "xyz", "00000000deadbeef0", "-1"] {
            assert!(parse_id(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn trace_id_comes_from_headers_or_is_generated() {
        let mut h = http::HeaderMap::new();
        assert_eq!(trace_id(&h).len(), 32);
        h.insert(
            "traceparent",
            HeaderValue::from_static("00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"),
        );
        assert_eq!(trace_id(&h), "4bf92f3577b34da6a3ce929d0e0e4736");
        h.insert("x-faas-trace-id", HeaderValue::from_static("abc-1"));
        assert_eq!(trace_id(&h), "abc-1");
        h.insert("x-faas-trace-id", HeaderValue::from_static("bad id!"));
        assert_eq!(trace_id(&h), "4bf92f3577b34da6a3ce929d0e0e4736");
    }
}
