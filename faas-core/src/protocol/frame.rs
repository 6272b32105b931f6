//! Frame layout, encoder and the defensive decoder.
//!
//! ```text
//! offset size  field
//!      0    4  magic      b"FAAS"
//!      4    1  version    1
//!      5    1  kind       1 Ready, 2 Invoke, 3 Result, 4 Error, 5 Log
//!      6    2  flags      bit 0: body travels as a sealed memfd; bit 1: Ready at a snapshot point;
//!                         bit 2: Result/Error of an instance that takes its next Invoke now (no Ready follows)
//!      8    8  id         invocation id (0 for Ready)
//!     16    4  meta_len   bytes of kind-specific metadata after the header
//!     20    4  body_len   bytes of body: inline after the metadata, or the memfd's size
//! ```
//!
//! Metadata per kind (all integers little-endian, strings UTF-8 with a length
//! prefix):
//!
//! | kind | metadata | body |
//! |---|---|---|
//! | `Ready` | none | none |
//! | `Invoke` | deadline u64 (Unix ms), trace id (u16 len + bytes), headers | request body |
//! | `Result` | status u16, headers | response body |
//! | `Error` | status u16 | message (UTF-8, replaced where invalid) |
//! | `Log` | stream u8 (1 stdout, 2 stderr, 3 log) | log bytes |
//!
//! Headers: u16 count, then per header u16 name length, name, u32 value length,
//! value.

use std::os::fd::OwnedFd;

use super::Body;
use super::ProtocolError;
use crate::types::{InvocationId, UnixMillis};

/// The first four bytes of every frame.
pub const MAGIC: [u8; 4] = *b"FAAS";
/// The protocol version this crate speaks.
pub const VERSION: u8 = 1;
/// Size of the fixed header.
pub const HEADER_LEN: usize = 24;
/// Largest metadata section a decoder accepts.
pub const MAX_META: u32 = 64 * 1024;
/// Largest body that may travel inline (above it, a sealed memfd is used).
pub const MAX_INLINE_BODY: u32 = 128 * 1024;
/// Default size above which an encoder sends the body as a memfd.
pub const DEFAULT_MEMFD_THRESHOLD: usize = 64 * 1024;
/// A receive buffer of this size holds any valid datagram.
pub const MAX_DATAGRAM: usize = HEADER_LEN + MAX_META as usize + MAX_INLINE_BODY as usize;

const FLAG_MEMFD: u16 = 1 << 0;
const FLAG_SNAPSHOT: u16 = 1 << 1;
const FLAG_READY: u16 = 1 << 2;
const KNOWN_FLAGS: u16 = FLAG_MEMFD | FLAG_SNAPSHOT | FLAG_READY;
const MAX_HEADERS: u16 = 256;

/// The kind of a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum FrameKind {
    /// instance → gateway: ready for a request.
    Ready = 1,
    /// gateway → instance: a request.
    Invoke = 2,
    /// instance → gateway: the answer.
    Result = 3,
    /// instance → gateway: the handler failed.
    Error = 4,
    /// instance → gateway: a log record of the current invocation.
    Log = 5,
}

impl FrameKind {
    fn from_u8(b: u8) -> Option<Self> {
        Some(match b {
            1 => FrameKind::Ready,
            2 => FrameKind::Invoke,
            3 => FrameKind::Result,
            4 => FrameKind::Error,
            5 => FrameKind::Log,
            _ => return None,
        })
    }
}

/// Which stream a [`Frame::Log`] record came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum LogStream {
    /// Standard output.
    Stdout = 1,
    /// Standard error.
    Stderr = 2,
    /// A structured log call of the guest library.
    Log = 3,
}

/// One message of the guest protocol.
#[derive(Debug)]
pub enum Frame {
    /// The instance is ready to pull a request.
    Ready {
        /// The instance stopped at its snapshot point and may be checkpointed.
        snapshot: bool,
    },
    /// A request for the instance.
    Invoke {
        /// Invocation id.
        id: InvocationId,
        /// When the platform gives up on it.
        deadline: UnixMillis,
        /// Trace id.
        trace_id: String,
        /// Request headers.
        headers: Vec<(String, String)>,
        /// Request body.
        body: Body,
    },
    /// The answer of the handler.
    Result {
        /// Invocation id.
        id: InvocationId,
        /// HTTP status.
        status: u16,
        /// Response headers.
        headers: Vec<(String, String)>,
        /// Response body.
        body: Body,
        /// The instance takes its next `Invoke` now: no `Ready` follows
        /// (a kept-alive instance saves a send, and the gateway a receive,
        /// per request).
        ready: bool,
    },
    /// The handler failed (panic, exception).
    Error {
        /// Invocation id.
        id: InvocationId,
        /// HTTP status to answer with (usually 500).
        status: u16,
        /// What went wrong.
        message: String,
        /// The instance takes its next `Invoke` now: no `Ready` follows.
        ready: bool,
    },
    /// A log record.
    Log {
        /// Invocation id.
        id: InvocationId,
        /// Source stream.
        stream: LogStream,
        /// The bytes.
        body: Body,
    },
}

impl Frame {
    /// The frame's kind.
    pub fn kind(&self) -> FrameKind {
        match self {
            Frame::Ready { .. } => FrameKind::Ready,
            Frame::Invoke { .. } => FrameKind::Invoke,
            Frame::Result { .. } => FrameKind::Result,
            Frame::Error { .. } => FrameKind::Error,
            Frame::Log { .. } => FrameKind::Log,
        }
    }

    /// The invocation id (0 for `Ready`).
    pub fn id(&self) -> InvocationId {
        match self {
            Frame::Ready { .. } => InvocationId(0),
            Frame::Invoke { id, .. }
            | Frame::Result { id, .. }
            | Frame::Error { id, .. }
            | Frame::Log { id, .. } => *id,
        }
    }

    /// Serialises the frame into `out` (cleared first). Returns the memfd to
    /// pass along with the datagram, if the body travels as one.
    ///
    /// # Errors
    ///
    /// A field that does not fit the wire format: more than 256 headers, a
    /// header or trace id over its length limit, metadata over [`MAX_META`],
    /// an inline body over [`MAX_INLINE_BODY`].
    pub fn encode<'a>(
        &'a self,
        out: &mut Vec<u8>,
    ) -> Result<Option<std::os::fd::BorrowedFd<'a>>, ProtocolError> {
        out.clear();
        out.resize(HEADER_LEN, 0);
        let mut flags = 0u16;
        let body: Option<&Body> = match self {
            Frame::Ready { snapshot } => {
                if *snapshot {
                    flags |= FLAG_SNAPSHOT;
                }
                None
            }
            Frame::Invoke {
                deadline,
                trace_id,
                headers,
                body,
                ..
            } => {
                out.extend_from_slice(&deadline.0.to_le_bytes());
                put_str16(out, trace_id, "trace id")?;
                put_headers(out, headers)?;
                Some(body)
            }
            Frame::Result {
                status,
                headers,
                body,
                ready,
                ..
            } => {
                if *ready {
                    flags |= FLAG_READY;
                }
                out.extend_from_slice(&status.to_le_bytes());
                put_headers(out, headers)?;
                Some(body)
            }
            Frame::Error { status, ready, .. } => {
                if *ready {
                    flags |= FLAG_READY;
                }
                out.extend_from_slice(&status.to_le_bytes());
                None
            }
            Frame::Log { stream, body, .. } => {
                out.push(*stream as u8);
                Some(body)
            }
        };
        let meta_len = out.len() - HEADER_LEN;
        if meta_len > MAX_META as usize {
            return Err(ProtocolError::MetaTooLong {
                len: meta_len as u64,
                max: MAX_META,
            });
        }
        let mut fd = None;
        let body_len: usize = match (self, body) {
            (Frame::Error { message, .. }, _) => {
                // Long messages are cut at a character boundary to fit inline.
                let mut end = message.len().min(MAX_INLINE_BODY as usize);
                while !message.is_char_boundary(end) {
                    end -= 1;
                }
                out.extend_from_slice(&message.as_bytes()[..end]);
                end
            }
            (_, Some(Body::Inline(b))) => {
                if b.len() > MAX_INLINE_BODY as usize {
                    return Err(ProtocolError::BodyTooLong {
                        len: b.len() as u64,
                        max: u64::from(MAX_INLINE_BODY),
                    });
                }
                out.extend_from_slice(b);
                b.len()
            }
            (_, Some(Body::Memfd(m))) => {
                flags |= FLAG_MEMFD;
                fd = Some(m.as_fd());
                usize::try_from(m.len()).unwrap_or(usize::MAX)
            }
            (_, None) => 0,
        };
        let body_len = u32::try_from(body_len).map_err(|_| ProtocolError::BodyTooLong {
            len: body_len as u64,
            max: u64::from(u32::MAX),
        })?;
        let h = &mut out[..HEADER_LEN];
        h[0..4].copy_from_slice(&MAGIC);
        h[4] = VERSION;
        h[5] = self.kind() as u8;
        h[6..8].copy_from_slice(&flags.to_le_bytes());
        h[8..16].copy_from_slice(&self.id().0.to_le_bytes());
        h[16..20].copy_from_slice(&(meta_len as u32).to_le_bytes());
        h[20..24].copy_from_slice(&body_len.to_le_bytes());
        Ok(fd)
    }
}

/// Bounds the decoder enforces beyond the fixed wire limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DecodeLimits {
    /// Largest body accepted (inline or memfd), in bytes.
    pub max_body: u64,
}

impl Default for DecodeLimits {
    fn default() -> Self {
        DecodeLimits {
            max_body: 64 * 1024 * 1024,
        }
    }
}

/// Decodes one datagram and the fd that came with it.
///
/// Every length is checked against the datagram and the limits; the memfd (if
/// any) must be sealed against writes, growth and shrinking and be exactly
/// `body_len` bytes, so it can be mapped safely.
///
/// # Errors
///
/// A [`ProtocolError`] naming the first thing that is wrong. Never panics,
/// whatever the bytes.
pub fn decode(
    datagram: &[u8],
    fd: Option<OwnedFd>,
    limits: &DecodeLimits,
) -> Result<Frame, ProtocolError> {
    if datagram.len() < HEADER_LEN {
        return Err(ProtocolError::Short {
            len: datagram.len(),
        });
    }
    let (h, rest) = datagram.split_at(HEADER_LEN);
    if h[0..4] != MAGIC {
        return Err(ProtocolError::BadMagic {
            found: [h[0], h[1], h[2], h[3]],
        });
    }
    if h[4] != VERSION {
        return Err(ProtocolError::BadVersion { found: h[4] });
    }
    let kind = FrameKind::from_u8(h[5]).ok_or(ProtocolError::UnknownKind { kind: h[5] })?;
    let flags = u16::from_le_bytes([h[6], h[7]]);
    if flags & !KNOWN_FLAGS != 0 {
        return Err(ProtocolError::UnknownFlags { flags });
    }
    let id = InvocationId(u64::from_le_bytes(arr(&h[8..16])));
    let meta_len = u32::from_le_bytes(arr(&h[16..20]));
    let body_len = u32::from_le_bytes(arr(&h[20..24]));
    if meta_len > MAX_META {
        return Err(ProtocolError::MetaTooLong {
            len: meta_len.into(),
            max: MAX_META,
        });
    }
    let memfd = flags & FLAG_MEMFD != 0;
    let body_max = if memfd {
        limits.max_body
    } else {
        limits.max_body.min(MAX_INLINE_BODY.into())
    };
    if u64::from(body_len) > body_max {
        return Err(ProtocolError::BodyTooLong {
            len: body_len.into(),
            max: body_max,
        });
    }
    let inline_body = if memfd { 0 } else { body_len as usize };
    let declared = HEADER_LEN + meta_len as usize + inline_body;
    if declared != datagram.len() {
        return Err(ProtocolError::LengthMismatch {
            declared,
            actual: datagram.len(),
        });
    }
    if flags & FLAG_SNAPSHOT != 0 && kind != FrameKind::Ready {
        return Err(ProtocolError::Malformed {
            kind,
            what: "snapshot flag outside Ready",
        });
    }
    let ready = flags & FLAG_READY != 0;
    if ready && !matches!(kind, FrameKind::Result | FrameKind::Error) {
        return Err(ProtocolError::Malformed {
            kind,
            what: "ready flag outside Result and Error",
        });
    }
    let carries_body = matches!(kind, FrameKind::Invoke | FrameKind::Result | FrameKind::Log);
    if memfd && !carries_body {
        return Err(ProtocolError::Malformed {
            kind,
            what: "memfd body on a kind without body",
        });
    }
    let body = match (memfd, fd) {
        (true, Some(fd)) => Body::Memfd(super::SealedMemfd::from_received(fd, body_len.into())?),
        (true, None) => return Err(ProtocolError::MissingFd),
        (false, Some(_)) => return Err(ProtocolError::UnexpectedFd),
        (false, None) => Body::Inline(rest[meta_len as usize..].to_vec()),
    };
    let mut m = Cursor {
        buf: &rest[..meta_len as usize],
        kind,
    };
    let frame = match kind {
        FrameKind::Ready => {
            if meta_len != 0 || body_len != 0 {
                return Err(ProtocolError::Malformed {
                    kind,
                    what: "Ready carries no metadata or body",
                });
            }
            if id.0 != 0 {
                return Err(ProtocolError::Malformed {
                    kind,
                    what: "Ready carries invocation id 0",
                });
            }
            Frame::Ready {
                snapshot: flags & FLAG_SNAPSHOT != 0,
            }
        }
        FrameKind::Invoke => {
            let deadline = UnixMillis(m.u64("deadline")?);
            let trace_id = m.str16("trace id")?;
            let headers = m.headers()?;
            Frame::Invoke {
                id,
                deadline,
                trace_id,
                headers,
                body,
            }
        }
        FrameKind::Result => {
            let status = m.status()?;
            let headers = m.headers()?;
            Frame::Result {
                id,
                status,
                headers,
                body,
                ready,
            }
        }
        FrameKind::Error => {
            let status = m.status()?;
            let Body::Inline(msg) = body else {
                return Err(ProtocolError::Malformed {
                    kind,
                    what: "memfd body on a kind without body",
                });
            };
            Frame::Error {
                id,
                status,
                message: String::from_utf8_lossy(&msg).into_owned(),
                ready,
            }
        }
        FrameKind::Log => {
            let stream = match m.u8("stream")? {
                1 => LogStream::Stdout,
                2 => LogStream::Stderr,
                3 => LogStream::Log,
                _ => {
                    return Err(ProtocolError::Malformed {
                        kind,
                        what: "unknown log stream",
                    });
                }
            };
            Frame::Log { id, stream, body }
        }
    };
    if !m.buf.is_empty() {
        return Err(ProtocolError::Malformed {
            kind,
            what: "trailing metadata bytes",
        });
    }
    Ok(frame)
}

fn arr<const N: usize>(s: &[u8]) -> [u8; N] {
    let mut a = [0u8; N];
    a.copy_from_slice(&s[..N]);
    a
}

fn put_str16(out: &mut Vec<u8>, s: &str, what: &'static str) -> Result<(), ProtocolError> {
    let len = u16::try_from(s.len()).map_err(|_| ProtocolError::FieldTooLong { what })?;
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(s.as_bytes());
    Ok(())
}

fn put_headers(out: &mut Vec<u8>, headers: &[(String, String)]) -> Result<(), ProtocolError> {
    let n = u16::try_from(headers.len())
        .ok()
        .filter(|n| *n <= MAX_HEADERS)
        .ok_or(ProtocolError::FieldTooLong { what: "headers" })?;
    out.extend_from_slice(&n.to_le_bytes());
    for (k, v) in headers {
        put_str16(out, k, "header name")?;
        let len = u32::try_from(v.len()).map_err(|_| ProtocolError::FieldTooLong {
            what: "header value",
        })?;
        out.extend_from_slice(&len.to_le_bytes());
        out.extend_from_slice(v.as_bytes());
    }
    Ok(())
}

struct Cursor<'a> {
    buf: &'a [u8],
    kind: FrameKind,
}

impl<'a> Cursor<'a> {
    fn take(&mut self, n: usize, what: &'static str) -> Result<&'a [u8], ProtocolError> {
        if self.buf.len() < n {
            return Err(ProtocolError::Malformed {
                kind: self.kind,
                what,
            });
        }
        let (a, b) = self.buf.split_at(n);
        self.buf = b;
        Ok(a)
    }
    fn u8(&mut self, what: &'static str) -> Result<u8, ProtocolError> {
        Ok(self.take(1, what)?[0])
    }
    fn u16(&mut self, what: &'static str) -> Result<u16, ProtocolError> {
        Ok(u16::from_le_bytes(arr(self.take(2, what)?)))
    }
    fn u32(&mut self, what: &'static str) -> Result<u32, ProtocolError> {
        Ok(u32::from_le_bytes(arr(self.take(4, what)?)))
    }
    fn u64(&mut self, what: &'static str) -> Result<u64, ProtocolError> {
        Ok(u64::from_le_bytes(arr(self.take(8, what)?)))
    }
    fn utf8(&self, b: &[u8], what: &'static str) -> Result<String, ProtocolError> {
        std::str::from_utf8(b)
            .map(str::to_owned)
            .map_err(|_| ProtocolError::Utf8 {
                kind: self.kind,
                what,
            })
    }
    fn str16(&mut self, what: &'static str) -> Result<String, ProtocolError> {
        let n = self.u16(what)?;
        let b = self.take(n.into(), what)?;
        self.utf8(b, what)
    }
    fn status(&mut self) -> Result<u16, ProtocolError> {
        let s = self.u16("status")?;
        if !(100..=999).contains(&s) {
            return Err(ProtocolError::Malformed {
                kind: self.kind,
                what: "status outside 100..=999",
            });
        }
        Ok(s)
    }
    fn headers(&mut self) -> Result<Vec<(String, String)>, ProtocolError> {
        let n = self.u16("header count")?;
        if n > MAX_HEADERS {
            return Err(ProtocolError::Malformed {
                kind: self.kind,
                what: "more than 256 headers",
            });
        }
        let mut out = Vec::with_capacity(n.into());
        for _ in 0..n {
            let k = self.str16("header name")?;
            let vlen = self.u32("header value")?;
            let v = self.take(vlen as usize, "header value")?;
            let v = self.utf8(v, "header value")?;
            out.push((k, v));
        }
        Ok(out)
    }
}
