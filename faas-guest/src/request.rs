//! What the handler gets: one invocation's request.

use std::time::Duration;

use faas_core::{InvocationId, UnixMillis};

/// How long [`Request::new`] gives a request made by hand.
const HANDMADE_DEADLINE: Duration = Duration::from_secs(60);

/// One request, as pulled from the node gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Request {
    id: InvocationId,
    deadline: UnixMillis,
    trace_id: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Request {
    /// A request made by hand, e.g. to unit-test a handler: invocation id 0,
    /// no trace id, no headers, a deadline 60 s from now.
    pub fn new(body: impl Into<Vec<u8>>) -> Self {
        Request {
            id: InvocationId(0),
            deadline: UnixMillis::now().after(HANDMADE_DEADLINE),
            trace_id: String::new(),
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (builder style), e.g. to unit-test a handler.
    #[must_use]
    pub fn with_header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    pub(crate) fn from_invoke(
        id: InvocationId,
        deadline: UnixMillis,
        trace_id: String,
        headers: Vec<(String, String)>,
        body: Vec<u8>,
    ) -> Self {
        Request {
            id,
            deadline,
            trace_id,
            headers,
            body,
        }
    }

    /// The request body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    /// The request body, giving up the request.
    pub fn into_body(self) -> Vec<u8> {
        self.body
    }

    /// The value of the first header called `name`, compared ASCII
    /// case-insensitively.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }

    /// All headers, in the order the gateway sent them.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The invocation id (also on every log record of this request).
    pub fn id(&self) -> InvocationId {
        self.id
    }

    /// The trace id the platform propagates (empty when there is none).
    pub fn trace_id(&self) -> &str {
        &self.trace_id
    }

    /// When the platform gives up on this request, as time since the Unix
    /// epoch (`UNIX_EPOCH + req.deadline()` is the `SystemTime`).
    pub fn deadline(&self) -> Duration {
        Duration::from_millis(self.deadline.0)
    }

    /// Time left until [`Request::deadline`] (zero once it has passed).
    pub fn remaining(&self) -> Duration {
        self.deadline.remaining()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_lookup_ignores_case_and_takes_the_first() {
        let req = Request::new("x")
            .with_header("Content-Type", "text/plain")
            .with_header("content-type", "second");
        assert_eq!(req.header("content-type"), Some("text/plain"));
        assert_eq!(req.header("CONTENT-TYPE"), Some("text/plain"));
        assert_eq!(req.header("accept"), None);
        assert_eq!(req.headers().len(), 2);
    }

    #[test]
    fn handmade_request_has_time_left() {
        let req = Request::new(Vec::new());
        assert!(req.remaining() > Duration::from_secs(50));
        assert!(req.deadline() > Duration::from_secs(1_600_000_000));
    }
}
