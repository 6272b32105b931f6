//! [`Invocations`]: the recent invocations of a gateway — asynchronous ones
//! with their results, synchronous ones with their status — and their
//! logs, bounded in number, bytes and age.

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use faas_core::InvocationId;
use parking_lot::Mutex;
use serde::Serialize;

/// Bounds of an [`Invocations`] store.
#[derive(Debug, Clone, Copy)]
pub struct InvocationLimits {
    /// Most invocations kept (the oldest finished ones go first).
    pub max_entries: usize,
    /// Most bytes of bodies, headers and logs kept.
    pub max_bytes: usize,
    /// Finished invocations older than this are forgotten.
    pub ttl: Duration,
    /// Most asynchronous invocations pending at once (beyond: `429`).
    pub max_pending_async: usize,
}

impl Default for InvocationLimits {
    fn default() -> Self {
        InvocationLimits {
            max_entries: 10_000,
            max_bytes: 256 * 1024 * 1024,
            ttl: Duration::from_secs(3600),
            max_pending_async: 1_000,
        }
    }
}

/// Where an invocation is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum InvocationState {
    /// Not finished.
    Pending,
    /// The function answered (any status it chose).
    Done,
    /// No answer from the function: see `error`.
    Failed,
}

/// What is known about one invocation (the JSON of `GET
/// /invocations/{id}`, without its logs).
#[derive(Debug, Clone, Serialize)]
pub struct InvocationRecord {
    /// Its id.
    pub id: String,
    /// The function.
    pub function: String,
    /// The version that runs it.
    pub version: u32,
    /// Its trace id.
    pub trace_id: String,
    /// Whether it was made with `POST /invoke-async`.
    #[serde(rename = "async")]
    pub is_async: bool,
    /// Where it is.
    pub state: InvocationState,
    /// The HTTP status of the answer (the function's, or the error's).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub status: Option<u16>,
    /// The function's response headers.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub headers: Vec<(String, String)>,
    /// The response body when it is UTF-8 (asynchronous invocations only:
    /// a synchronous caller got it already).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body: Option<String>,
    /// The response body in base64 when it is not UTF-8.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub body_base64: Option<String>,
    /// Why it failed: `{"error": CODE, "message": TEXT}`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<ErrorInfo>,
}

/// A failure, as the JSON error bodies of the gateway.
#[derive(Debug, Clone, Serialize)]
pub struct ErrorInfo {
    /// A stable machine-readable code.
    pub error: String,
    /// What happened.
    pub message: String,
}

/// How an invocation ended.
#[derive(Debug)]
pub enum Finished {
    /// The function answered.
    Done {
        /// Its status.
        status: u16,
        /// Its headers.
        headers: Vec<(String, String)>,
        /// Its body (`None`: not kept, a synchronous invocation).
        body: Option<Vec<u8>>,
        /// Its logs.
        logs: String,
    },
    /// It failed.
    Failed {
        /// The status the gateway answered with.
        status: u16,
        /// The error code and message.
        error: ErrorInfo,
        /// The instance's logs, if it got that far.
        logs: String,
    },
}

struct Entry {
    record: InvocationRecord,
    logs: String,
    at: Instant,
    bytes: usize,
}

#[derive(Default)]
struct Inner {
    map: HashMap<InvocationId, Entry>,
    /// Ids in the order they were added (some may be gone from `map`).
    order: VecDeque<InvocationId>,
    bytes: usize,
    pending_async: usize,
}

/// The recent invocations of a gateway.
pub struct Invocations {
    limits: InvocationLimits,
    inner: Mutex<Inner>,
}

/// Why an invocation cannot be added.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("{0} asynchronous invocations are pending already; retry later")]
pub struct TooManyPending(pub usize);

impl Invocations {
    /// An empty store with `limits`.
    pub fn new(limits: InvocationLimits) -> Self {
        Invocations {
            limits,
            inner: Mutex::new(Inner::default()),
        }
    }

    /// Records a new pending invocation.
    ///
    /// # Errors
    ///
    /// It is asynchronous and too many asynchronous invocations are
    /// pending.
    pub fn start(
        &self,
        id: InvocationId,
        function: &str,
        version: u32,
        trace_id: &str,
        is_async: bool,
    ) -> Result<(), TooManyPending> {
        let mut g = self.inner.lock();
        if is_async {
            if g.pending_async >= self.limits.max_pending_async {
                return Err(TooManyPending(g.pending_async));
            }
            g.pending_async += 1;
        }
        let record = InvocationRecord {
            id: id.to_string(),
            function: function.to_owned(),
            version,
            trace_id: trace_id.to_owned(),
            is_async,
            state: InvocationState::Pending,
            status: None,
            headers: Vec::new(),
            body: None,
            body_base64: None,
            error: None,
        };
        let bytes = 256 + function.len() + trace_id.len();
        g.bytes += bytes;
        g.order.push_back(id);
        if let Some(old) = g.map.insert(
            id,
            Entry {
                record,
                logs: String::new(),
                at: Instant::now(),
                bytes,
            },
        ) {
            g.bytes -= old.bytes;
        }
        self.evict(&mut g);
        Ok(())
    }

    /// Records how `id` ended (nothing when it was evicted meanwhile).
    pub fn finish(&self, id: InvocationId, how: Finished) {
        let mut g = self.inner.lock();
        let g = &mut *g;
        let Some(e) = g.map.get_mut(&id) else {
            return;
        };
        if e.record.state != InvocationState::Pending {
            return;
        }
        if e.record.is_async {
            g.pending_async = g.pending_async.saturating_sub(1);
        }
        let r = &mut e.record;
        match how {
            Finished::Done {
                status,
                headers,
                body,
                logs,
            } => {
                r.state = InvocationState::Done;
                r.status = Some(status);
                r.headers = headers;
                if let Some(body) = body {
                    match String::from_utf8(body) {
                        Ok(s) => r.body = Some(s),
                        Err(e) => r.body_base64 = Some(base64(e.as_bytes())),
                    }
                }
                e.logs = logs;
            }
            Finished::Failed {
                status,
                error,
                logs,
            } => {
                r.state = InvocationState::Failed;
                r.status = Some(status);
                r.error = Some(error);
                e.logs = logs;
            }
        }
        let size = 256
            + r.function.len()
            + r.trace_id.len()
            + r.headers
                .iter()
                .map(|(k, v)| k.len() + v.len())
                .sum::<usize>()
            + r.body.as_ref().map_or(0, String::len)
            + r.body_base64.as_ref().map_or(0, String::len)
            + r.error.as_ref().map_or(0, |e| e.message.len())
            + e.logs.len();
        g.bytes = g.bytes - e.bytes + size;
        e.bytes = size;
        e.at = Instant::now();
        self.evict(g);
    }

    /// What is known about `id`.
    pub fn get(&self, id: InvocationId) -> Option<InvocationRecord> {
        let g = self.inner.lock();
        g.map
            .get(&id)
            .filter(|e| !self.expired(e))
            .map(|e| e.record.clone())
    }

    /// The logs of `id` and where it is.
    pub fn logs(&self, id: InvocationId) -> Option<(InvocationState, String)> {
        let g = self.inner.lock();
        g.map
            .get(&id)
            .filter(|e| !self.expired(e))
            .map(|e| (e.record.state, e.logs.clone()))
    }

    /// How many invocations are kept.
    pub fn len(&self) -> usize {
        self.inner.lock().map.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn expired(&self, e: &Entry) -> bool {
        e.record.state != InvocationState::Pending && e.at.elapsed() > self.limits.ttl
    }

    /// Drops the oldest finished invocations while over a bound, and
    /// expired ones at the front. Pending ones stay (they are bounded by
    /// the requests in flight and `max_pending_async`).
    fn evict(&self, g: &mut Inner) {
        let mut skipped = 0;
        while let Some(&id) = g.order.front() {
            let over = g.map.len() > self.limits.max_entries || g.bytes > self.limits.max_bytes;
            let Some(e) = g.map.get(&id) else {
                g.order.pop_front();
                continue;
            };
            if !over && !self.expired(e) {
                break;
            }
            g.order.pop_front();
            if e.record.state == InvocationState::Pending {
                // Still running: look at it again later.
                g.order.push_back(id);
                skipped += 1;
                if skipped >= g.order.len() {
                    break;
                }
                continue;
            }
            if let Some(e) = g.map.remove(&id) {
                g.bytes -= e.bytes;
            }
        }
    }
}

/// Standard base64 with padding.
fn base64(bytes: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for c in bytes.chunks(3) {
        let n = (u32::from(c[0]) << 16)
            | (u32::from(c.get(1).copied().unwrap_or(0)) << 8)
            | u32::from(c.get(2).copied().unwrap_or(0));
        for i in 0..4 {
            if i <= c.len() {
                out.push(char::from(ALPHABET[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn done(body: &[u8]) -> Finished {
        Finished::Done {
            status: 200,
            headers: vec![],
            body: Some(body.to_vec()),
            logs: "log\n".into(),
        }
    }

    #[test]
    fn base64_matches_rfc4648() {
        for (i, o) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(i.as_bytes()), o);
        }
    }

    #[test]
    fn records_results_and_logs() {
        let s = Invocations::new(InvocationLimits::default());
        s.start(InvocationId(1), "f", 2, "t", true).unwrap();
        assert_eq!(
            s.get(InvocationId(1)).unwrap().state,
            InvocationState::Pending
        );
        s.finish(InvocationId(1), done(b"hi"));
        let r = s.get(InvocationId(1)).unwrap();
        assert_eq!(
            (r.state, r.status, r.body.as_deref()),
            (InvocationState::Done, Some(200), Some("hi"))
        );
        assert_eq!(s.logs(InvocationId(1)).unwrap().1, "log\n");
        s.start(InvocationId(2), "f", 2, "t", true).unwrap();
        s.finish(InvocationId(2), done(&[0xff, 0]));
        let r = s.get(InvocationId(2)).unwrap();
        assert_eq!((r.body, r.body_base64.as_deref()), (None, Some("/wA=")));
        assert!(s.get(InvocationId(3)).is_none());
    }

    #[test]
    fn bounded_by_count_bytes_and_pending() {
        let s = Invocations::new(InvocationLimits {
            max_entries: 3,
            max_bytes: 10_000,
            ttl: Duration::from_secs(3600),
            max_pending_async: 2,
        });
        // A pending invocation outlives newer finished ones.
        s.start(InvocationId(100), "f", 1, "t", true).unwrap();
        for i in 0..10 {
            s.start(InvocationId(i), "f", 1, "t", false).unwrap();
            s.finish(InvocationId(i), done(b"x"));
        }
        assert_eq!(s.len(), 3);
        assert!(s.get(InvocationId(100)).is_some());
        assert!(s.get(InvocationId(9)).is_some() && s.get(InvocationId(8)).is_some());
        assert!(s.get(InvocationId(7)).is_none());
        // Bytes: big bodies push older results out.
        let s = Invocations::new(InvocationLimits {
            max_bytes: 10_000,
            max_pending_async: 2,
            ..InvocationLimits::default()
        });
        for i in 1..=3 {
            s.start(InvocationId(i), "f", 1, "t", true).unwrap();
            s.finish(InvocationId(i), done(&[b'y'; 4_000]));
        }
        assert!(s.get(InvocationId(1)).is_none());
        assert!(s.get(InvocationId(2)).is_some() && s.get(InvocationId(3)).is_some());
        // At most two asynchronous invocations pending.
        s.start(InvocationId(300), "f", 1, "t", true).unwrap();
        s.start(InvocationId(301), "f", 1, "t", true).unwrap();
        assert_eq!(
            s.start(InvocationId(302), "f", 1, "t", true),
            Err(TooManyPending(2))
        );
        s.start(InvocationId(303), "f", 1, "t", false).unwrap();
        s.finish(InvocationId(300), done(b""));
        s.start(InvocationId(302), "f", 1, "t", true).unwrap();
    }

    #[test]
    fn finished_invocations_expire() {
        let s = Invocations::new(InvocationLimits {
            ttl: Duration::from_millis(1),
            ..InvocationLimits::default()
        });
        s.start(InvocationId(1), "f", 1, "t", false).unwrap();
        s.start(InvocationId(2), "f", 1, "t", false).unwrap();
        s.finish(InvocationId(1), done(b""));
        std::thread::sleep(Duration::from_millis(5));
        assert!(s.get(InvocationId(1)).is_none());
        assert!(
            s.get(InvocationId(2)).is_some(),
            "pending ones do not expire"
        );
        s.start(InvocationId(3), "f", 1, "t", false).unwrap();
        assert_eq!(s.len(), 2);
    }
}
