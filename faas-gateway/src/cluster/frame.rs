//! The framed gateway ↔ node protocol: a 16-byte little-endian header and a
//! payload.
//!
//! ```text
//! 0      2     3      4          8                 16
//! ┌──────┬─────┬──────┬──────────┬─────────────────┐
//! │magic │kind │flags │ length   │ request id      │ payload (length bytes)
//! │0xFA5C│ u8  │ 0    │ u32      │ u64             │
//! └──────┴─────┴──────┴──────────┴─────────────────┘
//! ```
//!
//! After the handshake (`Auth`, `AuthReply`, `AuthProof`) every frame is
//! followed by a 16-byte MAC (see [`super::auth::Seal`]), not counted in
//! `length`.
//!
//! Payloads of `Invoke` and `Result` are `u32 meta length | meta (JSON) |
//! body (raw bytes)`, so bodies are never escaped; every other payload is
//! JSON (or empty). The decoder trusts nothing: the magic, the kind (and
//! which side may send it), the flags, the length against a limit, the id
//! (0 only where a kind has none) and the JSON are all checked.

use bytes::{BufMut, Bytes, BytesMut};
use faas_core::{FunctionSpec, StartMode, Timings};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::mpsc;

use super::auth::{Seal, TAG_LEN};

/// First two bytes of every frame.
pub(crate) const MAGIC: u16 = 0xFA5C;
/// Version of the protocol, sent first in `Auth` (and again in `Hello`).
/// 2: cluster-token authentication before any other frame; `Forget`.
pub(crate) const PROTOCOL: u32 = 2;
/// Header length.
pub(crate) const HEADER: usize = 16;

/// The kinds of frames; the high bit says which side sends it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Kind {
    /// node → gateway: name and capacity (first frame after the
    /// authentication).
    Hello = 0x01,
    /// node → gateway: alive.
    Heartbeat = 0x02,
    /// node → gateway: an invocation's result (id).
    Result = 0x03,
    /// node → gateway: an invocation's error (id).
    Error = 0x04,
    /// node → gateway: the answer to `Prepare` (id).
    Prepared = 0x05,
    /// node → gateway: send me a version's files (id chosen by the node).
    Fetch = 0x06,
    /// node → gateway, the first frame: protocol version and the node's
    /// nonce (raw bytes, see [`super::auth`]).
    Auth = 0x07,
    /// node → gateway: the node's proof of the token (raw bytes).
    AuthProof = 0x08,
    /// gateway → node: accepted, with the heartbeat interval.
    Welcome = 0x81,
    /// gateway → node: refused (the message says why); the gateway closes.
    Reject = 0x82,
    /// gateway → node: run an invocation (id).
    Invoke = 0x83,
    /// gateway → node: the caller of an invocation is gone (id).
    Cancel = 0x84,
    /// gateway → node: prepare a new version (id).
    Prepare = 0x85,
    /// gateway → node: the next piece of a fetched version's tar (id).
    FetchData = 0x86,
    /// gateway → node: the fetch is complete (its digest) or failed (id).
    FetchEnd = 0x87,
    /// gateway → node: the answer to each `Heartbeat`, so a node notices a
    /// gateway that went away without closing the connection.
    HeartbeatAck = 0x88,
    /// gateway → node: the gateway's nonce and its proof of the token
    /// (raw bytes), the answer to `Auth`.
    AuthReply = 0x89,
    /// gateway → node: a function was deleted: drop its instances and the
    /// copies of its versions.
    Forget = 0x8a,
}

/// Which side sent a frame.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Side {
    /// The node agent.
    Node,
    /// The gateway.
    Gateway,
}

impl Kind {
    fn from_u8(b: u8) -> Option<Kind> {
        Some(match b {
            0x01 => Kind::Hello,
            0x02 => Kind::Heartbeat,
            0x03 => Kind::Result,
            0x04 => Kind::Error,
            0x05 => Kind::Prepared,
            0x06 => Kind::Fetch,
            0x07 => Kind::Auth,
            0x08 => Kind::AuthProof,
            0x81 => Kind::Welcome,
            0x82 => Kind::Reject,
            0x83 => Kind::Invoke,
            0x84 => Kind::Cancel,
            0x85 => Kind::Prepare,
            0x86 => Kind::FetchData,
            0x87 => Kind::FetchEnd,
            0x88 => Kind::HeartbeatAck,
            0x89 => Kind::AuthReply,
            0x8a => Kind::Forget,
            _ => return None,
        })
    }

    fn sender(self) -> Side {
        if (self as u8) & 0x80 == 0 {
            Side::Node
        } else {
            Side::Gateway
        }
    }

    /// Whether frames of this kind carry a request id (else it must be 0).
    fn has_id(self) -> bool {
        !matches!(
            self,
            Kind::Hello
                | Kind::Heartbeat
                | Kind::Welcome
                | Kind::Reject
                | Kind::HeartbeatAck
                | Kind::Auth
                | Kind::AuthProof
                | Kind::AuthReply
                | Kind::Forget
        )
    }
}

/// Why bytes from the peer are not a valid frame.
#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    /// Reading failed or the peer closed the connection.
    #[error("connection: {0}")]
    Io(#[from] std::io::Error),
    /// The frame does not start with the magic.
    #[error("bad magic {0:#06x} (not a faas node connection?)")]
    Magic(u16),
    /// Unknown kind byte.
    #[error("unknown frame kind {0:#04x}")]
    UnknownKind(u8),
    /// A kind this side never receives.
    #[error("frame kind {0:?} may not be sent by this peer")]
    WrongSide(&'static str),
    /// Flags are reserved.
    #[error("reserved flags {0:#04x} set")]
    Flags(u8),
    /// Longer than the limit.
    #[error("frame of {len} bytes exceeds the limit of {max}")]
    TooLong {
        /// Declared length.
        len: u32,
        /// The limit.
        max: u32,
    },
    /// An id where none belongs, or none where one does.
    #[error("frame kind {kind} with request id {id}")]
    Id {
        /// The kind.
        kind: &'static str,
        /// The id.
        id: u64,
    },
    /// The MAC after a frame does not match (see the module docs of
    /// [`crate::cluster`]).
    #[error(
        "{0} frame does not match its MAC (altered, injected or replayed on the way, or not from the authenticated peer)"
    )]
    Mac(&'static str),
    /// The payload does not parse.
    #[error("{kind} payload is malformed: {why}")]
    Payload {
        /// The kind.
        kind: &'static str,
        /// What is wrong.
        why: String,
    },
}

fn kind_name(k: Kind) -> &'static str {
    match k {
        Kind::Hello => "Hello",
        Kind::Heartbeat => "Heartbeat",
        Kind::Result => "Result",
        Kind::Error => "Error",
        Kind::Prepared => "Prepared",
        Kind::Welcome => "Welcome",
        Kind::Reject => "Reject",
        Kind::Invoke => "Invoke",
        Kind::Cancel => "Cancel",
        Kind::Prepare => "Prepare",
        Kind::Fetch => "Fetch",
        Kind::FetchData => "FetchData",
        Kind::FetchEnd => "FetchEnd",
        Kind::HeartbeatAck => "HeartbeatAck",
        Kind::Auth => "Auth",
        Kind::AuthProof => "AuthProof",
        Kind::AuthReply => "AuthReply",
        Kind::Forget => "Forget",
    }
}

/// One decoded frame.
#[derive(Debug)]
pub(crate) struct Frame {
    pub(crate) kind: Kind,
    pub(crate) id: u64,
    pub(crate) payload: Bytes,
}

impl Frame {
    /// The payload as JSON of `T`.
    pub(crate) fn json<T: DeserializeOwned>(&self) -> Result<T, FrameError> {
        serde_json::from_slice(&self.payload).map_err(|e| FrameError::Payload {
            kind: kind_name(self.kind),
            why: e.to_string(),
        })
    }

    /// The payload as `meta (JSON) + body`.
    pub(crate) fn split<T: DeserializeOwned>(&self) -> Result<(T, Bytes), FrameError> {
        let bad = |why: String| FrameError::Payload {
            kind: kind_name(self.kind),
            why,
        };
        let p = &self.payload;
        let Some(len) = p.get(..4) else {
            return Err(bad("shorter than its meta length".into()));
        };
        let len = u32::from_le_bytes([len[0], len[1], len[2], len[3]]) as usize;
        let end = 4usize
            .checked_add(len)
            .filter(|e| *e <= p.len())
            .ok_or_else(|| bad(format!("meta length {len} exceeds the payload")))?;
        let meta = serde_json::from_slice(&p[4..end]).map_err(|e| bad(e.to_string()))?;
        Ok((meta, p.slice(end..)))
    }
}

/// Reads one frame sent by `from`, checking everything.
///
/// # Errors
///
/// The connection failed, or the frame is invalid ([`FrameError`]).
pub(crate) async fn read_frame<R: AsyncRead + Unpin>(
    r: &mut R,
    from: Side,
    max: u32,
) -> Result<Frame, FrameError> {
    let mut h = [0u8; HEADER];
    r.read_exact(&mut h).await?;
    let magic = u16::from_le_bytes([h[0], h[1]]);
    if magic != MAGIC {
        return Err(FrameError::Magic(magic));
    }
    let kind = Kind::from_u8(h[2]).ok_or(FrameError::UnknownKind(h[2]))?;
    if kind.sender() != from {
        return Err(FrameError::WrongSide(kind_name(kind)));
    }
    if h[3] != 0 {
        return Err(FrameError::Flags(h[3]));
    }
    let len = u32::from_le_bytes([h[4], h[5], h[6], h[7]]);
    if len > max {
        return Err(FrameError::TooLong { len, max });
    }
    let id = u64::from_le_bytes([h[8], h[9], h[10], h[11], h[12], h[13], h[14], h[15]]);
    if (id == 0) == kind.has_id() {
        return Err(FrameError::Id {
            kind: kind_name(kind),
            id,
        });
    }
    let mut payload = BytesMut::zeroed(len as usize);
    r.read_exact(&mut payload).await?;
    Ok(Frame {
        kind,
        id,
        payload: payload.freeze(),
    })
}

/// Reads one frame sent by `from` and the MAC after it, checked with
/// `seal` (the peer's direction of the session).
///
/// # Errors
///
/// As [`read_frame`], or [`FrameError::Mac`].
pub(crate) async fn read_sealed<R: AsyncRead + Unpin>(
    r: &mut R,
    from: Side,
    max: u32,
    seal: &mut Seal,
) -> Result<Frame, FrameError> {
    let f = read_frame(r, from, max).await?;
    let mut tag = [0u8; TAG_LEN];
    r.read_exact(&mut tag).await?;
    // The header as sent: `read_frame` checked its magic and flags.
    let h = header_bytes(f.kind, f.id, f.payload.len());
    if !seal.check(&[&h, &f.payload], &tag) {
        return Err(FrameError::Mac(kind_name(f.kind)));
    }
    Ok(f)
}

/// The MAC to send after `frame` (an encoded frame).
pub(crate) fn tag(seal: &mut Seal, frame: &[u8]) -> [u8; TAG_LEN] {
    seal.tag(&[frame])
}

/// A connection's writer: each frame `queue` yields goes to `wr` followed
/// by its tag under `seal`, whatever else is queued is written before one
/// flush; returns when the queue closes (after shutting `wr` down) or a
/// write fails.
pub(crate) async fn write_sealed<W: AsyncWrite + Unpin>(
    wr: W,
    mut queue: mpsc::UnboundedReceiver<Bytes>,
    mut seal: Seal,
) {
    let mut w = tokio::io::BufWriter::with_capacity(64 * 1024, wr);
    while let Some(mut f) = queue.recv().await {
        loop {
            let t = tag(&mut seal, &f);
            if w.write_all(&f).await.is_err() || w.write_all(&t).await.is_err() {
                return;
            }
            match queue.try_recv() {
                Ok(next) => f = next,
                Err(_) => break,
            }
        }
        if w.flush().await.is_err() {
            return;
        }
    }
    let _ = w.shutdown().await;
}

fn header_bytes(kind: Kind, id: u64, len: usize) -> [u8; HEADER] {
    let mut h = [0u8; HEADER];
    h[..2].copy_from_slice(&MAGIC.to_le_bytes());
    h[2] = kind as u8;
    h[4..8].copy_from_slice(&u32::try_from(len).unwrap_or(u32::MAX).to_le_bytes());
    h[8..].copy_from_slice(&id.to_le_bytes());
    h
}

fn header(buf: &mut BytesMut, kind: Kind, id: u64, len: usize) {
    buf.put_slice(&header_bytes(kind, id, len));
}

/// Encodes a frame with a JSON payload.
pub(crate) fn encode_json<T: Serialize>(kind: Kind, id: u64, value: &T) -> Bytes {
    let payload = serde_json::to_vec(value).unwrap_or_else(|_| b"{}".to_vec());
    let mut buf = BytesMut::with_capacity(HEADER + payload.len());
    header(&mut buf, kind, id, payload.len());
    buf.put_slice(&payload);
    buf.freeze()
}

/// Encodes a frame with `meta (JSON) + body`.
pub(crate) fn encode_split<T: Serialize>(kind: Kind, id: u64, meta: &T, body: &[u8]) -> Bytes {
    let meta = serde_json::to_vec(meta).unwrap_or_else(|_| b"{}".to_vec());
    let len = 4 + meta.len() + body.len();
    let mut buf = BytesMut::with_capacity(HEADER + len);
    header(&mut buf, kind, id, len);
    buf.put_u32_le(u32::try_from(meta.len()).unwrap_or(u32::MAX));
    buf.put_slice(&meta);
    buf.put_slice(body);
    buf.freeze()
}

/// Encodes a frame whose payload is `raw` as it is.
pub(crate) fn encode_split_raw(kind: Kind, id: u64, raw: &[u8]) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER + raw.len());
    header(&mut buf, kind, id, raw.len());
    buf.put_slice(raw);
    buf.freeze()
}

/// Encodes a frame whose payload is the concatenation of `parts`.
pub(crate) fn encode_raw(kind: Kind, parts: &[&[u8]]) -> Bytes {
    let len = parts.iter().map(|p| p.len()).sum();
    let mut buf = BytesMut::with_capacity(HEADER + len);
    header(&mut buf, kind, 0, len);
    for p in parts {
        buf.put_slice(p);
    }
    buf.freeze()
}

/// Encodes a frame with an empty payload.
pub(crate) fn encode_empty(kind: Kind, id: u64) -> Bytes {
    let mut buf = BytesMut::with_capacity(HEADER);
    header(&mut buf, kind, id, 0);
    buf.freeze()
}

/// `Hello`: who the node is and what it offers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Hello {
    pub(crate) protocol: u32,
    pub(crate) name: String,
    pub(crate) slots: u32,
    pub(crate) memory_mb: u64,
}

/// `Forget`: the function that was deleted.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ForgetMeta {
    pub(crate) name: String,
}

/// `Welcome`: how often to send heartbeats.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Welcome {
    pub(crate) heartbeat_ms: u64,
    /// Every function deployed now: a node drops its copies of others
    /// (deleted while it was away).
    #[serde(default)]
    pub(crate) functions: Vec<String>,
}

/// `Reject`: why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Reject {
    pub(crate) message: String,
}

/// The meta part of `Invoke`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct InvokeMeta {
    pub(crate) spec: FunctionSpec,
    pub(crate) invocation: u64,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) trace_id: String,
    /// Time left until the deadline (deadlines are not sent as wall-clock
    /// times: the hosts' clocks may differ).
    pub(crate) timeout_ms: u64,
}

/// The meta part of `Result`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ResultMeta {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) timings: Timings,
    pub(crate) cold: bool,
    /// What the instance wrote while it served the request.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) logs: String,
}

/// `Error`: an invocation failed on the node.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct ErrorMeta {
    pub(crate) status: u16,
    pub(crate) code: String,
    pub(crate) message: String,
    /// The timeout, for `timeout` errors.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub(crate) timeout_ms: Option<u64>,
    /// What the instance wrote before it failed.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub(crate) logs: String,
}

/// `Prepare`: prepare the version written at `dir`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct PrepareMeta {
    pub(crate) spec: FunctionSpec,
    pub(crate) dir: std::path::PathBuf,
}

/// `Prepared`: what the node decided, or why it failed.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum PreparedMeta {
    Ok {
        start: StartMode,
        snapshot: Option<std::path::PathBuf>,
        /// The version's faas-rofs image, built by the node.
        #[serde(default)]
        image: Option<std::path::PathBuf>,
        warnings: Vec<String>,
        /// How long each step took on the node.
        #[serde(default)]
        steps: Vec<crate::prepare::Step>,
    },
    /// Its language runtime is missing on the node.
    Unavailable { why: String },
    /// Its runtime failed to initialise.
    Init { what: String, output: String },
    /// The node failed to prepare it.
    Sys { what: String },
}

/// `Fetch`: which version.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct FetchMeta {
    pub(crate) name: String,
    pub(crate) version: u32,
}

/// `FetchEnd`: the tar's blake3 digest (hex) and length, or why not.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FetchEnd {
    Ok { digest: String, bytes: u64 },
    Error { message: String },
}

/// What `GET /nodes` shows per node (also the node table's snapshot).
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct NodeView {
    /// The node's name.
    pub name: String,
    /// `local`, or the peer address of its connection.
    pub address: String,
    /// Instance slots.
    pub slots: u32,
    /// Memory for instances, in MiB.
    pub memory_mb: u64,
    /// `up` or `lost`.
    pub state: String,
    /// Why it was lost.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    /// Requests running on it now.
    pub in_flight: u64,
    /// Requests it answered (results and function errors).
    pub served: u64,
    /// Requests that failed on it (or with it).
    pub failed: u64,
    /// Milliseconds since its last heartbeat (0 for the local node).
    pub heartbeat_age_ms: u64,
    /// Seconds since it (re)connected.
    pub up_s: u64,
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn decode(bytes: &[u8], from: Side) -> Result<Frame, FrameError> {
        let mut r = bytes;
        read_frame(&mut r, from, 1024).await
    }

    fn rt() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap_or_else(|e| panic!("runtime: {e}"))
    }

    #[test]
    fn frames_round_trip() {
        rt().block_on(async {
            let f = encode_split(Kind::Invoke, 7, &serde_json::json!({"a": 1}), b"body");
            let d = decode(&f, Side::Gateway).await.unwrap();
            assert_eq!((d.kind, d.id), (Kind::Invoke, 7));
            let (meta, body): (serde_json::Value, Bytes) = d.split().unwrap();
            assert_eq!(meta["a"], 1);
            assert_eq!(&body[..], b"body");
            let h = encode_json(
                Kind::Hello,
                0,
                &Hello {
                    protocol: PROTOCOL,
                    name: "n1".into(),
                    slots: 4,
                    memory_mb: 1024,
                },
            );
            let d = decode(&h, Side::Node).await.unwrap();
            assert_eq!(d.json::<Hello>().unwrap().name, "n1");
        });
    }

    #[test]
    fn invalid_frames_are_refused_with_the_reason() {
        rt().block_on(async {
            let good = encode_empty(Kind::Cancel, 3).to_vec();
            let mut bad = good.clone();
            bad[0] = 0;
            assert!(matches!(
                decode(&bad, Side::Gateway).await,
                Err(FrameError::Magic(_))
            ));
            let mut bad = good.clone();
            bad[2] = 0x7f;
            assert!(matches!(
                decode(&bad, Side::Gateway).await,
                Err(FrameError::UnknownKind(0x7f))
            ));
            // A node may not send Cancel.
            assert!(matches!(
                decode(&good, Side::Node).await,
                Err(FrameError::WrongSide("Cancel"))
            ));
            let mut bad = good.clone();
            bad[3] = 1;
            assert!(matches!(
                decode(&bad, Side::Gateway).await,
                Err(FrameError::Flags(1))
            ));
            let mut bad = good.clone();
            bad[4..8].copy_from_slice(&5000u32.to_le_bytes());
            assert!(matches!(
                decode(&bad, Side::Gateway).await,
                Err(FrameError::TooLong { len: 5000, .. })
            ));
            let zero_id = encode_empty(Kind::Cancel, 0);
            assert!(matches!(
                decode(&zero_id, Side::Gateway).await,
                Err(FrameError::Id { .. })
            ));
            let hb_with_id = encode_empty(Kind::Heartbeat, 9);
            assert!(matches!(
                decode(&hb_with_id, Side::Node).await,
                Err(FrameError::Id { .. })
            ));
            // Truncated payload: the connection ends early.
            let f = encode_json(Kind::Error, 2, &serde_json::json!({"x": 1}));
            assert!(matches!(
                decode(&f[..f.len() - 1], Side::Node).await,
                Err(FrameError::Io(_))
            ));
            // Meta length past the payload.
            let mut f = encode_split(Kind::Result, 2, &1, b"").to_vec();
            f[HEADER..HEADER + 4].copy_from_slice(&100u32.to_le_bytes());
            let d = decode(&f, Side::Node).await.unwrap();
            assert!(matches!(d.split::<u32>(), Err(FrameError::Payload { .. })));
            let f = encode_json(Kind::Hello, 0, &"not a hello");
            let d = decode(&f, Side::Node).await.unwrap();
            assert!(d.json::<Hello>().is_err());
        });
    }

    proptest::proptest! {
        /// Any header and payload decode to a frame or an error, never a
        /// panic; payloads that decode parse or fail cleanly.
        #[test]
        fn arbitrary_frames_never_panic(
            kind in proptest::prelude::any::<u8>(),
            flags in 0u8..2,
            id in proptest::prelude::any::<u64>(),
            payload in proptest::collection::vec(proptest::prelude::any::<u8>(), 0..64),
            extra in 0u32..8,
            magic_ok in proptest::prelude::any::<bool>(),
        ) {
            let mut f = Vec::new();
            f.extend_from_slice(&(if magic_ok { MAGIC } else { 0x1234 }).to_le_bytes());
            f.push(kind);
            f.push(flags);
            f.extend_from_slice(&(payload.len() as u32 + extra).to_le_bytes());
            f.extend_from_slice(&id.to_le_bytes());
            f.extend_from_slice(&payload);
            rt().block_on(async {
                for side in [Side::Node, Side::Gateway] {
                    if let Ok(d) = decode(&f, side).await {
                        let _ = d.split::<ResultMeta>();
                        let _ = d.split::<InvokeMeta>();
                        let _ = d.json::<Hello>();
                        let _ = d.json::<ErrorMeta>();
                        let _ = d.json::<PreparedMeta>();
                    }
                }
            });
        }
    }
}
