//! A small HTTP client for the platform's API (what the CLI uses).

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{Method, Request, StatusCode};
use http_body_util::{BodyExt, Full};
use hyper_util::client::legacy::Client as HyperClient;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::TokioExecutor;

/// A response: status, headers and the whole body.
#[derive(Debug)]
pub struct Reply {
    /// HTTP status.
    pub status: StatusCode,
    /// Headers.
    pub headers: http::HeaderMap,
    /// Body.
    pub body: Bytes,
}

impl Reply {
    /// The `message` of a JSON error body, or the body as text.
    pub fn error_message(&self) -> String {
        serde_json::from_slice::<serde_json::Value>(&self.body)
            .ok()
            .and_then(|v| v.get("message").and_then(|m| m.as_str()).map(str::to_owned))
            .unwrap_or_else(|| String::from_utf8_lossy(&self.body).trim().to_owned())
    }
}

/// A client of one platform server.
#[derive(Clone)]
pub struct Client {
    base: String,
    http: HyperClient<HttpConnector, Full<Bytes>>,
}

impl Client {
    /// A client for the server at `base` (e.g. `http://127.0.0.1:8080`).
    pub fn new(base: &str) -> Self {
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        Client {
            base: base.trim_end_matches('/').to_owned(),
            http: HyperClient::builder(TokioExecutor::new()).build(conn),
        }
    }

    /// The server's base URL.
    pub fn base(&self) -> &str {
        &self.base
    }

    /// Sends one request.
    ///
    /// # Errors
    ///
    /// The server cannot be reached or the exchange failed.
    pub async fn request(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        self.request_with(method, path, &[], body).await
    }

    /// Sends one request with extra headers.
    ///
    /// # Errors
    ///
    /// As [`Client::request`], or a header is invalid.
    pub async fn request_with(
        &self,
        method: Method,
        path: &str,
        headers: &[(&str, &str)],
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let uri = format!("{}{}", self.base, path);
        let mut req = Request::builder().method(method.clone()).uri(&uri);
        for (k, v) in headers {
            req = req.header(*k, *v);
        }
        let req = req
            .body(Full::new(body.into()))
            .with_context(|| format!("bad URL {uri} or header"))?;
        let resp = self
            .http
            .request(req)
            .await
            .with_context(|| format!("{method} {uri}: cannot reach the faas server (is `faas serve` running? see --server)"))?;
        let (parts, body) = resp.into_parts();
        let body = body
            .collect()
            .await
            .with_context(|| format!("{method} {uri}: reading the response"))?
            .to_bytes();
        Ok(Reply {
            status: parts.status,
            headers: parts.headers,
            body,
        })
    }

    /// Sends a request and fails unless the status is a success.
    ///
    /// # Errors
    ///
    /// As [`Client::request`], or a non-2xx status (with the server's message).
    pub async fn expect_ok(
        &self,
        method: Method,
        path: &str,
        body: impl Into<Bytes>,
    ) -> anyhow::Result<Reply> {
        let r = self.request(method.clone(), path, body).await?;
        if !r.status.is_success() {
            bail!("{method} {path}: {} — {}", r.status, r.error_message());
        }
        Ok(r)
    }
}
