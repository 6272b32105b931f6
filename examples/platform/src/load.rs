//! The load generator of `faas bench`: many invocations over HTTP/1.1,
//! summarised.
//!
//! Each concurrent worker owns one keep-alive connection (a lean HTTP/1.1
//! exchange of its own, see [`Connection`]; no pool, no locks on the
//! request path) and sends its
//! requests one after the other on it; workers take request numbers from a
//! shared counter, so a slow request does not leave the others idle. Every
//! response's latency, status and `x-faas-start` header (how the instance
//! that answered was started) are kept by the worker and merged at the end.

use std::collections::BTreeMap;
use std::io::Write as _;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use bytes::Bytes;
use http::{StatusCode, Uri};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::client::Client;

/// Most warm-up rounds of a [`LoadPlan`] with `warm_up`.
pub const WARM_UP_ROUNDS: usize = 10;

/// The start modes a response can report in `x-faas-start`, in the order
/// they are listed.
pub const START_MODES: [&str; 4] = ["cold", "restore", "fork", "warm"];

/// What to send.
#[derive(Debug, Clone)]
pub struct LoadPlan {
    /// Function to invoke (`POST /invoke/{function}`).
    pub function: String,
    /// Request body of every invocation.
    pub body: Bytes,
    /// Requests to measure.
    pub requests: usize,
    /// Workers, each with its own connection and one request in flight.
    pub concurrency: usize,
    /// Before measuring, every worker sends one request, all at once, and
    /// waits for the others (not counted), in rounds until every answer of
    /// a round came from a warm instance (at most [`WARM_UP_ROUNDS`]): with
    /// a keep-alive function this leaves `concurrency` warm instances.
    /// Without it one request is sent first (not counted) to check that the
    /// function answers.
    pub warm_up: bool,
    /// Open loop: requests are due at this many per second, on a fixed
    /// schedule, whatever the answers do; a request that had to wait for a
    /// free connection counts its latency from when it was due (its wait
    /// included), the others from when they were sent. `None`: closed
    /// loop, each connection sends its next request when the last one is
    /// answered.
    pub rate: Option<f64>,
}

/// Latency summary of a run.
#[derive(Debug, Clone)]
pub struct Summary {
    /// Requests sent.
    pub requests: usize,
    /// Requests that did not return 2xx (or got no answer).
    pub errors: usize,
    /// Median latency.
    pub p50: Duration,
    /// 90th percentile.
    pub p90: Duration,
    /// 99th percentile.
    pub p99: Duration,
    /// Mean latency.
    pub mean: Duration,
    /// Slowest request.
    pub max: Duration,
    /// Wall time of the whole run.
    pub wall: Duration,
    /// How many responses reported each start mode in `x-faas-start`
    /// (every mode of [`START_MODES`] is present, possibly 0; a response
    /// without the header is not counted).
    pub start_modes: BTreeMap<String, usize>,
    /// The first error seen, for the report.
    pub first_error: Option<String>,
}

impl Summary {
    /// Summarises `lat` (sorted in place); no start modes.
    pub fn from_latencies(lat: &mut [Duration], errors: usize, wall: Duration) -> Self {
        lat.sort_unstable();
        let pick = |q: f64| {
            if lat.is_empty() {
                Duration::ZERO
            } else {
                let i = ((lat.len() as f64 * q).ceil() as usize).clamp(1, lat.len()) - 1;
                lat[i]
            }
        };
        let sum: Duration = lat.iter().sum();
        Summary {
            requests: lat.len(),
            errors,
            p50: pick(0.50),
            p90: pick(0.90),
            p99: pick(0.99),
            mean: sum.checked_div(lat.len().max(1) as u32).unwrap_or_default(),
            max: lat.last().copied().unwrap_or_default(),
            wall,
            start_modes: START_MODES.iter().map(|m| ((*m).to_owned(), 0)).collect(),
            first_error: None,
        }
    }

    /// Requests per second over the run's wall time.
    pub fn rps(&self) -> f64 {
        self.requests as f64 / self.wall.as_secs_f64().max(1e-9)
    }

    /// Responses that reported start mode `mode`.
    pub fn started(&self, mode: &str) -> usize {
        self.start_modes.get(mode).copied().unwrap_or(0)
    }
}

/// The answer to one invocation, as the load generator keeps it.
#[derive(Debug, Clone)]
pub struct Answer {
    /// HTTP status.
    pub status: StatusCode,
    /// The `x-faas-start` header, if any.
    pub start: Option<String>,
    /// The body.
    pub body: Bytes,
}

impl Answer {
    /// One line about a failed answer: its status and the server's message
    /// (the `message` of a JSON error, else the body's first line).
    pub fn error_line(&self) -> String {
        let reply = crate::client::Reply {
            status: self.status,
            headers: http::HeaderMap::new(),
            body: self.body.clone(),
        };
        format!("{} — {}", self.status, first_line(&reply.error_message()))
    }
}

/// One HTTP/1.1 keep-alive connection to a platform server, reopened when
/// the server closes it.
///
/// The load generator shares the machine with the server it measures, so
/// its exchange is as lean as an HTTP/1.1 client can be: the request is one
/// buffer and one `write`, the answer is read into a reused buffer and
/// parsed in place (`httparse`), and nothing runs beside the worker that
/// owns the connection (no connection task to wake).
pub struct Connection {
    addr: String,
    host: String,
    base: String,
    stream: Option<TcpStream>,
    /// The request being sent, rebuilt in place.
    out: Vec<u8>,
    /// What the server sent, read in place.
    buf: Vec<u8>,
}

/// Largest response head `faas bench` reads.
const MAX_HEAD: usize = 64 * 1024;

/// Largest response body `faas bench` reads (the platform's own limit on an
/// invocation's answer is 6 MiB).
const MAX_BODY: usize = 64 * 1024 * 1024;

impl Connection {
    /// A connection to the server at `base` (`http://HOST:PORT`), opened on
    /// first use.
    ///
    /// # Errors
    ///
    /// `base` is not an `http://` URL with a host.
    pub fn new(base: &str) -> anyhow::Result<Self> {
        let base = base.trim_end_matches('/');
        let uri: Uri = base
            .parse()
            .with_context(|| format!("server URL {base:?} is not a URL"))?;
        if uri.scheme_str() != Some("http") {
            bail!("server URL {base:?}: only http:// is supported");
        }
        let Some(auth) = uri.authority() else {
            bail!("server URL {base:?} has no host");
        };
        let addr = if auth.port().is_some() {
            auth.as_str().to_owned()
        } else {
            format!("{}:80", auth.host())
        };
        Ok(Connection {
            host: auth.as_str().to_owned(),
            addr,
            base: base.to_owned(),
            stream: None,
            out: Vec::new(),
            buf: Vec::with_capacity(4096),
        })
    }

    async fn connect(&self) -> anyhow::Result<TcpStream> {
        let tcp = TcpStream::connect(&self.addr).await.with_context(|| {
            format!(
                "{}: cannot reach the faas server (is `faas serve` running? see --server)",
                self.base
            )
        })?;
        tcp.set_nodelay(true)
            .with_context(|| format!("{}: setting TCP_NODELAY", self.base))?;
        Ok(tcp)
    }

    /// Sends `POST /invoke/{function}` with `body` and reads the whole
    /// answer.
    ///
    /// # Errors
    ///
    /// `function` is not a valid path segment, the server cannot be
    /// reached, or the exchange failed (the connection is then reopened by
    /// the next call).
    pub async fn invoke(&mut self, function: &str, body: Bytes) -> anyhow::Result<Answer> {
        if function.is_empty() || function.bytes().any(|b| !b.is_ascii_graphic() || b == b'/') {
            bail!("bad function name {function:?}");
        }
        let mut stream = match self.stream.take() {
            Some(s) => s,
            None => self.connect().await?,
        };
        self.out.clear();
        // Writing into a Vec cannot fail.
        let _ = write!(
            self.out,
            "POST /invoke/{function} HTTP/1.1\r\nhost: {}\r\ncontent-length: {}\r\n\r\n",
            self.host,
            body.len()
        );
        self.out.extend_from_slice(&body);
        match exchange(&mut stream, &self.out, &mut self.buf).await {
            Ok((answer, keep)) => {
                if keep {
                    self.stream = Some(stream);
                }
                Ok(answer)
            }
            Err(e) => Err(e.context(format!("POST {}/invoke/{function}", self.base))),
        }
    }
}

/// Writes `request` on `stream` and reads one answer into `buf`; also
/// whether the connection can carry the next request.
async fn exchange(
    stream: &mut TcpStream,
    request: &[u8],
    buf: &mut Vec<u8>,
) -> anyhow::Result<(Answer, bool)> {
    stream.write_all(request).await?;
    buf.clear();
    let (head, status, length, keep, start) = loop {
        if stream.read_buf(buf).await? == 0 {
            bail!("the server closed the connection before its answer");
        }
        let mut headers = [httparse::EMPTY_HEADER; 32];
        let mut r = httparse::Response::new(&mut headers);
        let httparse::Status::Complete(head) = r.parse(buf).context("malformed HTTP answer")?
        else {
            if buf.len() > MAX_HEAD {
                bail!("the answer's head is over {MAX_HEAD} bytes");
            }
            continue;
        };
        let status = StatusCode::from_u16(r.code.unwrap_or(0)).context("bad HTTP status")?;
        let mut length = None;
        let mut keep = r.version == Some(1);
        let mut start = None;
        for h in r.headers.iter() {
            if h.name.eq_ignore_ascii_case("content-length") {
                let n = std::str::from_utf8(h.value)
                    .ok()
                    .and_then(|v| v.trim().parse().ok());
                length = Some(n.context("bad content-length")?);
            } else if h.name.eq_ignore_ascii_case("transfer-encoding") {
                bail!("a chunked answer (faas bench reads answers with a content-length)");
            } else if h.name.eq_ignore_ascii_case("connection") {
                keep &= !h.value.eq_ignore_ascii_case(b"close");
            } else if h.name.eq_ignore_ascii_case("x-faas-start") {
                start = std::str::from_utf8(h.value).ok().map(str::to_owned);
            }
        }
        break (head, status, length.unwrap_or(0), keep, start);
    };
    if length > MAX_BODY {
        bail!("an answer of {length} bytes (faas bench reads at most {MAX_BODY})");
    }
    while buf.len() < head + length {
        buf.reserve(head + length - buf.len());
        if stream.read_buf(buf).await? == 0 {
            bail!("the server closed the connection in the middle of its answer");
        }
    }
    if buf.len() > head + length {
        bail!("the server sent more than its answer");
    }
    let body = Bytes::copy_from_slice(&buf[head..]);
    Ok((
        Answer {
            status,
            start,
            body,
        },
        keep,
    ))
}

/// What one measured request gave.
struct Sample {
    latency: Duration,
    ok: bool,
    start: Option<String>,
    error: Option<String>,
}

/// The first line of `s`, at most 200 characters (an HTML error page is
/// not a message).
pub fn first_line(s: &str) -> String {
    let line = s.lines().find(|l| !l.trim().is_empty()).unwrap_or("");
    match line.char_indices().nth(200) {
        Some((i, _)) => format!("{}…", &line[..i]),
        None => line.to_owned(),
    }
}

/// Runs `plan` against the server at `base` and summarises what the client
/// saw. `progress` is called with the number of requests done, about five
/// times a second and once at the end.
///
/// # Errors
///
/// `base` is not a usable URL, the server cannot be reached, or the first
/// request (or a warm-up request) fails, so that a broken setup is reported
/// instead of measured. Failures while measuring are counted as errors.
pub async fn run_plan(
    base: &str,
    plan: &LoadPlan,
    mut progress: impl FnMut(usize),
) -> anyhow::Result<Summary> {
    let concurrency = plan.concurrency.max(1);
    let function = plan.function.as_str();
    let mut conns = Vec::with_capacity(concurrency);
    for _ in 0..concurrency {
        conns.push(Connection::new(base)?);
    }
    let check = |a: anyhow::Result<Answer>, what: &str| -> anyhow::Result<Answer> {
        let a = a?;
        if !a.status.is_success() {
            bail!("{function}: {what} failed: {}", a.error_line());
        }
        Ok(a)
    };
    if plan.warm_up {
        // A platform may serve several of one round's requests with one
        // new instance (an instance that answers takes the next waiting
        // request rather than a second one being launched): rounds until
        // every answer of one came from a warm instance, at most
        // `WARM_UP_ROUNDS`.
        for _ in 0..WARM_UP_ROUNDS {
            let mut warming = tokio::task::JoinSet::new();
            for mut conn in conns.drain(..) {
                let (function, body) = (plan.function.clone(), plan.body.clone());
                warming.spawn(async move {
                    let r = conn.invoke(&function, body).await;
                    (conn, r)
                });
            }
            let mut all_warm = true;
            while let Some(joined) = warming.join_next().await {
                let (conn, r) = joined.context("a warm-up request failed")?;
                let a = check(r, "warm-up request")?;
                all_warm &= a.start.as_deref() == Some("warm");
                conns.push(conn);
            }
            if all_warm {
                break;
            }
        }
    } else {
        let first = conns[0].invoke(function, plan.body.clone()).await;
        check(first, "first invocation")?;
    }

    let next = Arc::new(AtomicUsize::new(0));
    let done = Arc::new(AtomicUsize::new(0));
    let start = Instant::now();
    let period = plan.rate.map(|r| Duration::from_secs_f64(1.0 / r));
    let mut workers = tokio::task::JoinSet::new();
    for mut conn in conns {
        let (next, done) = (next.clone(), done.clone());
        let (function, body, total) = (plan.function.clone(), plan.body.clone(), plan.requests);
        workers.spawn(async move {
            let mut samples = Vec::with_capacity(total / concurrency + 1);
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed);
                if i >= total {
                    break;
                }
                let t = match period {
                    // Free before it is due: sent when the timer fires (its
                    // lateness, up to a millisecond, is ours, not the
                    // server's). Still busy when it was due: it waited for
                    // this connection, and that wait counts.
                    Some(p) => {
                        let due = start + p.mul_f64(i as f64);
                        if Instant::now() < due {
                            tokio::time::sleep_until(due.into()).await;
                            Instant::now()
                        } else {
                            due
                        }
                    }
                    None => Instant::now(),
                };
                let r = conn.invoke(&function, body.clone()).await;
                let latency = t.elapsed();
                samples.push(match r {
                    Ok(a) if a.status.is_success() => Sample {
                        latency,
                        ok: true,
                        start: a.start,
                        error: None,
                    },
                    Ok(a) => Sample {
                        latency,
                        ok: false,
                        error: Some(a.error_line()),
                        start: a.start,
                    },
                    Err(e) => Sample {
                        latency,
                        ok: false,
                        start: None,
                        error: Some(format!("{e:#}")),
                    },
                });
                done.fetch_add(1, Ordering::Relaxed);
            }
            samples
        });
    }
    let mut samples = Vec::with_capacity(plan.requests);
    let mut tick = tokio::time::interval(Duration::from_millis(200));
    loop {
        tokio::select! {
            joined = workers.join_next() => match joined {
                Some(r) => samples.extend(r.context("a load worker failed")?),
                None => break,
            },
            _ = tick.tick() => progress(done.load(Ordering::Relaxed)),
        }
    }
    let wall = start.elapsed();
    progress(samples.len());

    let mut lat: Vec<Duration> = samples.iter().map(|s| s.latency).collect();
    let errors = samples.iter().filter(|s| !s.ok).count();
    let mut summary = Summary::from_latencies(&mut lat, errors, wall);
    for s in &samples {
        if let Some(m) = &s.start {
            *summary.start_modes.entry(m.clone()).or_insert(0) += 1;
        }
    }
    summary.first_error = samples.into_iter().find_map(|s| s.error);
    Ok(summary)
}

/// Invokes `function` `requests` times with `concurrency` requests in flight
/// on the server `client` talks to (see [`run_plan`]; one request is sent
/// first to check the function answers).
///
/// # Errors
///
/// As [`run_plan`].
pub async fn run(
    client: &Client,
    function: &str,
    body: Bytes,
    requests: usize,
    concurrency: usize,
    progress: impl FnMut(usize),
) -> anyhow::Result<Summary> {
    let plan = LoadPlan {
        function: function.to_owned(),
        body,
        requests,
        concurrency,
        warm_up: false,
        rate: None,
    };
    run_plan(client.base(), &plan, progress).await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_pick_the_right_rank() {
        let mut v: Vec<_> = (1..=100).rev().map(Duration::from_millis).collect();
        let s = Summary::from_latencies(&mut v, 0, Duration::from_secs(1));
        assert_eq!(s.p50, Duration::from_millis(50));
        assert_eq!(s.p90, Duration::from_millis(90));
        assert_eq!(s.p99, Duration::from_millis(99));
        assert_eq!(s.max, Duration::from_millis(100));
        assert_eq!(s.rps(), 100.0);
        assert_eq!(s.started("cold"), 0);
        assert_eq!(s.start_modes.len(), START_MODES.len());
    }

    #[test]
    fn connection_urls_are_checked() {
        assert!(Connection::new("http://127.0.0.1:8080/").is_ok());
        assert_eq!(
            Connection::new("http://localhost").unwrap().addr,
            "localhost:80"
        );
        let e = Connection::new("https://127.0.0.1:1").err().unwrap();
        assert!(e.to_string().contains("only http://"), "{e}");
        assert!(Connection::new("not a url").is_err());
    }

    /// A server on loopback that reads one request per element of
    /// `answers` (up to the end of its body) and writes the element in
    /// two pieces, then closes; what it read, in order.
    async fn canned(answers: Vec<&'static [u8]>) -> (String, tokio::task::JoinHandle<Vec<String>>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let base = format!("http://{}", l.local_addr().unwrap());
        let task = tokio::spawn(async move {
            let (mut s, _) = l.accept().await.unwrap();
            let mut seen = Vec::new();
            for a in answers {
                let mut req = Vec::new();
                let mut chunk = [0u8; 4096];
                // The test's requests carry a 2-byte body after the head.
                while !req.windows(4).any(|w| w == b"\r\n\r\n")
                    || req.len() < req.windows(4).position(|w| w == b"\r\n\r\n").unwrap() + 6
                {
                    let n = s.read(&mut chunk).await.unwrap();
                    assert!(n > 0, "client closed early");
                    req.extend_from_slice(&chunk[..n]);
                }
                seen.push(String::from_utf8(req).unwrap());
                let (a, b) = a.split_at(a.len() / 2);
                s.write_all(a).await.unwrap();
                tokio::time::sleep(Duration::from_millis(5)).await;
                s.write_all(b).await.unwrap();
            }
            seen
        });
        (base, task)
    }

    #[tokio::test]
    async fn answers_are_read_whole_over_one_kept_connection() {
        let (base, server) = canned(vec![
            b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nx-faas-start: warm\r\n\r\nhello",
            b"HTTP/1.1 502 Bad Gateway\r\nContent-Length: 31\r\n\r\n{\"error\":{\"message\":\"crashed\"}}",
        ])
        .await;
        let mut c = Connection::new(&base).unwrap();
        let a = c.invoke("hello", Bytes::from_static(b"hi")).await.unwrap();
        assert_eq!(
            (a.status, a.start.as_deref(), &a.body[..]),
            (StatusCode::OK, Some("warm"), &b"hello"[..])
        );
        let a = c
            .invoke("hello@prod", Bytes::from_static(b"hi"))
            .await
            .unwrap();
        assert_eq!(a.status, StatusCode::BAD_GATEWAY);
        assert_eq!(a.start, None);
        assert!(a.error_line().contains("crashed"), "{}", a.error_line());
        let seen = server.await.unwrap();
        assert!(
            seen[0].starts_with("POST /invoke/hello HTTP/1.1\r\nhost: 127.0.0.1:"),
            "{}",
            seen[0]
        );
        assert!(
            seen[0].ends_with("content-length: 2\r\n\r\nhi"),
            "{}",
            seen[0]
        );
        assert!(
            seen[1].starts_with("POST /invoke/hello@prod "),
            "{}",
            seen[1]
        );
    }

    #[tokio::test]
    async fn answers_it_cannot_read_are_errors_naming_the_request() {
        for (answer, want) in [
            (
                &b"HTTP/1.1 200 OK\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n"[..],
                "chunked",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 10\r\n\r\nhalf",
                "in the middle of its answer",
            ),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: x\r\n\r\n",
                "bad content-length",
            ),
            (b"garbage\r\n\r\n", "malformed HTTP answer"),
            (
                b"HTTP/1.1 200 OK\r\ncontent-length: 1\r\n\r\nab",
                "more than its answer",
            ),
        ] {
            let (base, server) = canned(vec![answer]).await;
            let mut c = Connection::new(&base).unwrap();
            let e = c.invoke("f", Bytes::from_static(b"hi")).await.unwrap_err();
            let e = format!("{e:#}");
            assert!(
                e.contains(want) && e.contains("POST http://127.0.0.1:"),
                "{e}"
            );
            server.await.unwrap();
        }
        let mut c = Connection::new("http://127.0.0.1:1").unwrap();
        let e = c.invoke("a/b", Bytes::new()).await.unwrap_err();
        assert!(e.to_string().contains("bad function name"), "{e}");
    }

    #[test]
    fn error_bodies_shrink_to_one_line() {
        assert_eq!(first_line("\n<html>\n<body>"), "<html>");
        assert_eq!(first_line(&"x".repeat(300)).chars().count(), 201);
        assert_eq!(first_line(""), "");
    }
}
