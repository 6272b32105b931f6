//! [`FunctionGateway`]: the HTTP front door. Routes the REST API, schedules
//! every invocation and hands it to the node gateway of its placement.
//!
//! | route | does |
//! |---|---|
//! | `GET /healthz` | `ok` |
//! | `POST /functions` | deploy a [`FunctionSpec`] (JSON) as a new version, prepared by the [`Preparer`] (a snapshot) → `201` + the spec (its `start` mode) and any `warnings` |
//! | `GET /functions` | every function's latest version |
//! | `GET /functions/{name}` | its latest version |
//! | `DELETE /functions/{name}` | delete every version → `204` |
//! | `POST /invoke/{name}` | run it: the function's status, headers and body, plus `x-faas-start` (`cold`, `restore`, or `warm` for a reused instance), `x-faas-node` (the node that ran it) and `server-timing` |
//! | `GET /nodes` | the nodes (see [`crate::cluster::NodeTable`]): capacity, requests in flight, health |
//!
//! Errors are JSON `{"error": CODE, "message": TEXT}` with exactly one
//! response per request: unknown function `404`, body over the limit `413`,
//! concurrency limit `429` + `Retry-After`, instance exited or broke the
//! protocol `502`, deadline `504`.

use std::collections::HashMap;
use std::convert::Infallible;
use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use bytes::Bytes;
use faas_core::{
    FunctionSpec, Invocation, InvocationId, InvokeError, NodeGateway, NodeId, Outcome, Placement,
    ScheduleError, Scheduler, StartMode, UnixMillis,
};
use http::header::{CONTENT_LENGTH, CONTENT_TYPE, HeaderName, HeaderValue, RETRY_AFTER};
use http::{Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Full, Limited};
use parking_lot::RwLock;
use serde::Serialize;

use crate::prepare::{PrepareError, Prepared, Preparer};
use crate::registry::{DeployError, Registry, fill_random};

/// The response body type of the gateway.
pub type ResponseBody = Full<Bytes>;

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

/// The HTTP function gateway.
pub struct FunctionGateway {
    registry: Arc<Registry>,
    scheduler: Arc<dyn Scheduler>,
    nodes: RwLock<HashMap<NodeId, Arc<dyn NodeGateway>>>,
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
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    retry_after_s: Option<u64>,
}

fn json<T: Serialize>(status: StatusCode, value: &T) -> Response<ResponseBody> {
    let body = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut()
        .insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn error(status: StatusCode, code: &str, message: impl Into<String>) -> Response<ResponseBody> {
    json(
        status,
        &ErrorBody {
            error: code,
            message: message.into(),
            retry_after_s: None,
        },
    )
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
            scheduler,
            nodes: RwLock::new(HashMap::new()),
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

    /// Registers the node gateway of a node (the scheduler must know the node
    /// too).
    pub fn add_node(&self, gateway: Arc<dyn NodeGateway>) {
        self.nodes.write().insert(gateway.node().clone(), gateway);
    }

    /// The function registry.
    pub fn registry(&self) -> &Arc<Registry> {
        &self.registry
    }

    /// Handles one HTTP request.
    pub async fn handle<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let path = req.uri().path().to_owned();
        let segs: Vec<&str> = path.trim_matches('/').split('/').collect();
        let method = req.method().clone();
        let resp = match (&method, segs.as_slice()) {
            (&Method::GET, ["healthz"]) => {
                let mut r = Response::new(Full::new(Bytes::from_static(b"ok\n")));
                r.headers_mut()
                    .insert(CONTENT_TYPE, HeaderValue::from_static("text/plain"));
                r
            }
            (&Method::GET, ["functions"]) => json(StatusCode::OK, &self.registry.list()),
            (&Method::POST, ["functions"]) => self.deploy(req).await,
            (&Method::GET, ["functions", name]) => match self.registry.get(name) {
                Some(s) => json(StatusCode::OK, &*s),
                None => not_deployed(name),
            },
            (&Method::DELETE, ["functions", name]) => self.delete(name).await,
            (&Method::GET, ["nodes"]) => json(
                StatusCode::OK,
                &self
                    .node_table
                    .as_ref()
                    .map(|t| t.list())
                    .unwrap_or_default(),
            ),
            (&Method::POST, ["invoke", name]) => {
                let name = (*name).to_owned();
                self.invoke(&name, req).await
            }
            (_, ["healthz"] | ["functions"] | ["functions", _] | ["invoke", _]) => error(
                StatusCode::METHOD_NOT_ALLOWED,
                "method_not_allowed",
                format!("{method} is not allowed on {path}"),
            ),
            _ => error(
                StatusCode::NOT_FOUND,
                "not_found",
                format!("no route for {method} {path}"),
            ),
        };
        tracing::debug!(%method, %path, status = resp.status().as_u16(), "request");
        resp
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

    async fn deploy<B>(&self, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let (_, body) = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let spec: FunctionSpec = match serde_json::from_slice(&body) {
            Ok(s) => s,
            Err(e) => {
                return error(
                    StatusCode::BAD_REQUEST,
                    "bad_spec",
                    format!("function spec is not valid JSON for a spec: {e}"),
                );
            }
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
        let Prepared {
            start,
            snapshot,
            warnings,
        } = prepared;
        let registry = self.registry.clone();
        match tokio::task::spawn_blocking(move || registry.commit(staged, start, snapshot)).await {
            Ok(Ok(spec)) => {
                tracing::info!(function = %spec.name, version = spec.version, start = spec.start.as_str(), "deployed");
                json(
                    StatusCode::CREATED,
                    &Deployed {
                        spec: &spec,
                        warnings,
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
                let mut r = Response::new(Full::new(Bytes::new()));
                *r.status_mut() = StatusCode::NO_CONTENT;
                r
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

    async fn invoke<B>(&self, name: &str, req: Request<B>) -> Response<ResponseBody>
    where
        B: http_body::Body<Data = Bytes> + Send,
        B::Error: std::error::Error + Send + Sync + 'static,
    {
        let Some(spec) = self.registry.get(name) else {
            return not_deployed(name);
        };
        let (parts, body) = match self.read_body(req).await {
            Ok(b) => b,
            Err(r) => return r,
        };
        let id = InvocationId(self.next_id.fetch_add(1, Ordering::Relaxed));
        let trace_id = trace_id(&parts.headers);
        let headers = parts
            .headers
            .iter()
            .filter(|(k, _)| !is_hop_by_hop(k))
            .filter_map(|(k, v)| Some((k.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect();
        let inv = Invocation {
            id,
            function: spec.name.clone(),
            version: spec.version,
            headers,
            body: body.to_vec(),
            deadline: UnixMillis::now().after(spec.limits.timeout()),
            trace_id: trace_id.clone(),
        };
        let span = tracing::info_span!("invoke", function = %spec.name, invocation = %id, trace = %trace_id);
        let _e = span.enter();
        let placement = match self.scheduler.schedule(&spec) {
            Ok(p) => p,
            Err(e) => return schedule_error(&e),
        };
        let node = self.nodes.read().get(&placement.node).cloned();
        let Some(node) = node else {
            self.scheduler.release(&placement, Outcome::Failed);
            return error(
                StatusCode::SERVICE_UNAVAILABLE,
                "node_unavailable",
                format!("node {} has no gateway", placement.node),
            );
        };
        let mut release = Release {
            scheduler: &*self.scheduler,
            placement,
            outcome: Outcome::Cancelled,
        };
        let result = node.invoke(spec.clone(), &release.placement, inv).await;
        let node_name = release.placement.node.0.clone();
        release.outcome = match &result {
            Ok(_) | Err(InvokeError::Function { .. }) => Outcome::Ok,
            Err(InvokeError::TimedOut { .. }) => Outcome::TimedOut,
            Err(_) => Outcome::Failed,
        };
        drop(release);
        let mut resp = match result {
            Ok(r) => {
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
                        _ => {
                            tracing::warn!(header = %k, "dropping invalid response header from the function")
                        }
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
                let status =
                    StatusCode::from_u16(e.http_status()).unwrap_or(StatusCode::BAD_GATEWAY);
                tracing::info!(error = %e, status = status.as_u16(), "invocation failed");
                error(status, e.code(), e.to_string())
            }
        };
        let h = resp.headers_mut();
        insert(h, "x-faas-invocation-id", &id.to_string());
        insert(h, "x-faas-trace-id", &trace_id);
        insert(h, "x-faas-function-version", &spec.version.to_string());
        insert(h, "x-faas-node", &node_name);
        resp
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

fn schedule_error(e: &ScheduleError) -> Response<ResponseBody> {
    let (status, code) = match e {
        ScheduleError::OverLimit { .. } => (StatusCode::TOO_MANY_REQUESTS, "over_limit"),
        ScheduleError::NoCapacity { .. } => (StatusCode::TOO_MANY_REQUESTS, "no_capacity"),
        ScheduleError::NoNodes => (StatusCode::SERVICE_UNAVAILABLE, "no_nodes"),
    };
    let retry = e.retry_after().map(|d| d.as_secs().max(1));
    let mut r = json(
        status,
        &ErrorBody {
            error: code,
            message: e.to_string(),
            retry_after_s: retry,
        },
    );
    if let Some(s) = retry {
        r.headers_mut().insert(RETRY_AFTER, HeaderValue::from(s));
    }
    r
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
