//! What the handler returns.

/// The answer of a handler: an HTTP status, headers and a body.
///
/// ```
/// use faas_guest::Response;
///
/// let r = Response::with_status(404, "no such thing").header("content-type", "text/plain");
/// assert_eq!(r.status(), 404);
/// assert_eq!(r.body(), b"no such thing");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Response {
    status: u16,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

impl Response {
    /// A `200 OK` response with `body`.
    pub fn ok(body: impl Into<Vec<u8>>) -> Self {
        Self::with_status(200, body)
    }

    /// A response with status `code` and `body`.
    ///
    /// The wire protocol carries statuses 100..=999; a handler that returns
    /// another one gets its request answered with an error instead.
    pub fn with_status(code: u16, body: impl Into<Vec<u8>>) -> Self {
        Response {
            status: code,
            headers: Vec::new(),
            body: body.into(),
        }
    }

    /// Adds a header (builder style). Headers are sent in the order added; a
    /// name added twice is sent twice.
    #[must_use]
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.headers.push((name.into(), value.into()));
        self
    }

    /// The HTTP status.
    pub fn status(&self) -> u16 {
        self.status
    }

    /// The headers, in the order added.
    pub fn headers(&self) -> &[(String, String)] {
        &self.headers
    }

    /// The body.
    pub fn body(&self) -> &[u8] {
        &self.body
    }

    pub(crate) fn into_parts(self) -> (u16, Vec<(String, String)>, Vec<u8>) {
        (self.status, self.headers, self.body)
    }
}
