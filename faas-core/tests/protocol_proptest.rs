//! Property tests of the guest protocol codec (DESIGN.md §5).
//!
//! - `decode` never panics: on random bytes, on random bytes behind a valid
//!   header, and on random mutations (bit flips, byte edits, truncations,
//!   length-field edits, appended bytes) of valid frames, with and without
//!   an fd (the frame's own memfd, a sealed or unsealed memfd, a pipe).
//!   Whatever it accepts re-encodes and decodes again.
//! - Every frame kind round-trips encode → decode in memory, with inline and
//!   memfd bodies of 0..=200 KiB, arbitrary UTF-8 headers and trace ids and
//!   statuses 100..=999, and re-encodes to the same bytes.
//! - The same frames round-trip through a real `channel_pair`, one at a time
//!   and as a stream from another thread ending with the peer closing.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::{AsFd, OwnedFd};

use faas_core::protocol::{
    Body, DEFAULT_MEMFD_THRESHOLD, DecodeLimits, Frame, HEADER_LEN, LogStream, MAGIC,
    MAX_INLINE_BODY, SealedMemfd, VERSION, channel_pair, decode, recv_frame, send_frame,
};
use faas_core::types::{InvocationId, UnixMillis};
use proptest::collection::vec;
use proptest::prelude::*;
use rustix::fs::{MemfdFlags, SealFlags};

// ---------------------------------------------------------------------------
// Frame descriptions: plain, cloneable data from which frames are built, so
// that strategies create no fds and the decoded frame can be checked field by
// field (`Frame` has no `PartialEq`).

#[derive(Debug, Clone)]
struct BodySpec {
    len: usize,
    seed: u64,
    /// Passed to `Body::with_threshold`.
    threshold: usize,
}

impl BodySpec {
    fn bytes(&self) -> Vec<u8> {
        pattern(self.len, self.seed)
    }

    fn is_memfd(&self) -> bool {
        self.len > self.threshold.min(MAX_INLINE_BODY as usize)
    }

    fn build(&self) -> Body {
        Body::with_threshold(self.bytes(), self.threshold).unwrap()
    }
}

#[derive(Debug, Clone)]
enum Spec {
    Ready {
        snapshot: bool,
    },
    Invoke {
        id: u64,
        deadline: u64,
        trace_id: String,
        headers: Vec<(String, String)>,
        body: BodySpec,
    },
    Result {
        id: u64,
        status: u16,
        headers: Vec<(String, String)>,
        body: BodySpec,
        ready: bool,
    },
    Error {
        id: u64,
        status: u16,
        message: String,
        ready: bool,
    },
    Log {
        id: u64,
        stream: LogStream,
        body: BodySpec,
    },
}

impl Spec {
    fn build(&self) -> Frame {
        match self {
            Spec::Ready { snapshot } => Frame::Ready {
                snapshot: *snapshot,
            },
            Spec::Invoke {
                id,
                deadline,
                trace_id,
                headers,
                body,
            } => Frame::Invoke {
                id: InvocationId(*id),
                deadline: UnixMillis(*deadline),
                trace_id: trace_id.clone(),
                headers: headers.clone(),
                body: body.build(),
            },
            Spec::Result {
                id,
                status,
                headers,
                body,
                ready,
            } => Frame::Result {
                id: InvocationId(*id),
                status: *status,
                headers: headers.clone(),
                body: body.build(),
                ready: *ready,
            },
            Spec::Error {
                id,
                status,
                message,
                ready,
            } => Frame::Error {
                id: InvocationId(*id),
                status: *status,
                message: message.clone(),
                ready: *ready,
            },
            Spec::Log { id, stream, body } => Frame::Log {
                id: InvocationId(*id),
                stream: *stream,
                body: body.build(),
            },
        }
    }
}

/// Deterministic pseudo-random bytes (xorshift64), so large bodies cost one
/// seed in the strategy instead of one value per byte.
fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut out = Vec::with_capacity(len + 8);
    while out.len() < len {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        out.extend_from_slice(&x.to_le_bytes());
    }
    out.truncate(len);
    out
}

/// Checks a decoded frame against its description: every field, the bytes
/// of the body, and whether the body travelled inline or as a memfd.
fn check(spec: &Spec, got: &Frame) -> Result<(), TestCaseError> {
    fn check_body(want: &BodySpec, got: &Body) -> Result<(), TestCaseError> {
        prop_assert_eq!(want.is_memfd(), matches!(got, Body::Memfd(_)), "body kind");
        prop_assert_eq!(got.len(), want.len as u64);
        let bytes = match got {
            Body::Inline(b) => b.clone(),
            Body::Memfd(m) => m.read_all().unwrap(),
        };
        prop_assert!(bytes == want.bytes(), "body bytes differ");
        Ok(())
    }
    match (spec, got) {
        (Spec::Ready { snapshot }, Frame::Ready { snapshot: s }) => {
            prop_assert_eq!(snapshot, s);
            prop_assert_eq!(got.id(), InvocationId(0));
        }
        (
            Spec::Invoke {
                id,
                deadline,
                trace_id,
                headers,
                body,
            },
            Frame::Invoke {
                id: i,
                deadline: d,
                trace_id: t,
                headers: h,
                body: b,
            },
        ) => {
            prop_assert_eq!(*i, InvocationId(*id));
            prop_assert_eq!(*d, UnixMillis(*deadline));
            prop_assert_eq!(t, trace_id);
            prop_assert_eq!(h, headers);
            check_body(body, b)?;
        }
        (
            Spec::Result {
                id,
                status,
                headers,
                body,
                ready,
            },
            Frame::Result {
                id: i,
                status: s,
                headers: h,
                body: b,
                ready: r,
            },
        ) => {
            prop_assert_eq!(*i, InvocationId(*id));
            prop_assert_eq!(s, status);
            prop_assert_eq!(h, headers);
            prop_assert_eq!(r, ready);
            check_body(body, b)?;
        }
        (
            Spec::Error {
                id,
                status,
                message,
                ready,
            },
            Frame::Error {
                id: i,
                status: s,
                message: m,
                ready: r,
            },
        ) => {
            prop_assert_eq!(*i, InvocationId(*id));
            prop_assert_eq!(s, status);
            prop_assert_eq!(m, message);
            prop_assert_eq!(r, ready);
        }
        (
            Spec::Log { id, stream, body },
            Frame::Log {
                id: i,
                stream: s,
                body: b,
            },
        ) => {
            prop_assert_eq!(*i, InvocationId(*id));
            prop_assert_eq!(s, stream);
            check_body(body, b)?;
        }
        _ => prop_assert!(false, "decoded {:?}, expected {:?}", got.kind(), spec),
    }
    Ok(())
}

/// Encodes `frame` and decodes it in memory, passing a duplicate of the
/// memfd `encode` returned, as the kernel would.
fn encode_decode(frame: &Frame, buf: &mut Vec<u8>) -> Frame {
    let fd = frame.encode(buf).unwrap();
    let fd = fd.map(|fd| fd.try_clone_to_owned().unwrap());
    decode(buf, fd, &DecodeLimits::default()).unwrap()
}

// ---------------------------------------------------------------------------
// Strategies.

fn utf8(max_chars: usize) -> impl Strategy<Value = String> {
    vec(any::<char>(), 0..=max_chars).prop_map(String::from_iter)
}

fn headers() -> impl Strategy<Value = Vec<(String, String)>> {
    vec((utf8(16), utf8(48)), 0..12)
}

fn status() -> impl Strategy<Value = u16> {
    prop_oneof![
        100u16..=999,
        prop::sample::select(vec![100u16, 200, 500, 999])
    ]
}

fn body_spec(max_len: usize) -> impl Strategy<Value = BodySpec> {
    const KIB: usize = 1024;
    let edges: Vec<usize> = [
        0,
        1,
        64 * KIB - 1,
        64 * KIB,
        64 * KIB + 1,
        128 * KIB,
        128 * KIB + 1,
        200 * KIB,
    ]
    .into_iter()
    .filter(|&n| n <= max_len)
    .collect();
    let len = prop_oneof![
        4 => 0usize..512,
        2 => 0usize..=max_len,
        1 => prop::sample::select(edges),
    ];
    let threshold =
        prop::sample::select(vec![0, DEFAULT_MEMFD_THRESHOLD, MAX_INLINE_BODY as usize]);
    (len, any::<u64>(), threshold).prop_map(|(len, seed, threshold)| BodySpec {
        len,
        seed,
        threshold,
    })
}

fn spec(max_body: usize) -> impl Strategy<Value = Spec> {
    let stream = prop::sample::select(vec![LogStream::Stdout, LogStream::Stderr, LogStream::Log]);
    prop_oneof![
        any::<bool>().prop_map(|snapshot| Spec::Ready { snapshot }),
        (
            any::<u64>(),
            any::<u64>(),
            utf8(64),
            headers(),
            body_spec(max_body)
        )
            .prop_map(|(id, deadline, trace_id, headers, body)| Spec::Invoke {
                id,
                deadline,
                trace_id,
                headers,
                body,
            }),
        (
            any::<u64>(),
            status(),
            headers(),
            body_spec(max_body),
            any::<bool>()
        )
            .prop_map(|(id, status, headers, body, ready)| Spec::Result {
                id,
                status,
                headers,
                body,
                ready,
            }),
        (any::<u64>(), status(), utf8(256), any::<bool>()).prop_map(
            |(id, status, message, ready)| Spec::Error {
                id,
                status,
                message,
                ready,
            }
        ),
        (any::<u64>(), stream, body_spec(max_body)).prop_map(|(id, stream, body)| Spec::Log {
            id,
            stream,
            body
        }),
    ]
}

/// Metadata that is mostly made of plausible fields (small counts and
/// lengths, statuses, strings, stream bytes), so the field parser gets deep,
/// or plain random bytes.
fn meta_bytes() -> impl Strategy<Value = Vec<u8>> {
    let field = prop_oneof![
        (0u16..6).prop_map(|n| n.to_le_bytes().to_vec()),
        (100u16..=999).prop_map(|n| n.to_le_bytes().to_vec()),
        (0u32..6).prop_map(|n| n.to_le_bytes().to_vec()),
        any::<u64>().prop_map(|n| n.to_le_bytes().to_vec()),
        (0u8..=4).prop_map(|b| vec![b]),
        utf8(4).prop_map(String::into_bytes),
        vec(any::<u8>(), 0..8),
    ];
    prop_oneof![
        3 => vec(field, 0..12).prop_map(|f| f.concat()),
        1 => vec(any::<u8>(), 0..1024),
    ]
}

/// The fd handed to `decode` next to possibly hostile bytes.
#[derive(Debug, Clone)]
enum FdChoice {
    None,
    /// The memfd the encoder returned, if any.
    Own,
    Sealed(usize),
    Unsealed(usize),
    Pipe,
}

fn fd_choice() -> impl Strategy<Value = FdChoice> {
    prop_oneof![
        3 => Just(FdChoice::None),
        3 => Just(FdChoice::Own),
        1 => (0usize..300).prop_map(FdChoice::Sealed),
        1 => (0usize..300).prop_map(FdChoice::Unsealed),
        1 => Just(FdChoice::Pipe),
    ]
}

fn make_fd(choice: &FdChoice, own: Option<OwnedFd>) -> Option<OwnedFd> {
    match choice {
        FdChoice::None => None,
        FdChoice::Own => own,
        FdChoice::Sealed(n) => Some(SealedMemfd::from_bytes(&pattern(*n, 7)).unwrap().into_fd()),
        FdChoice::Unsealed(n) => {
            let fd = rustix::fs::memfd_create("unsealed", MemfdFlags::ALLOW_SEALING).unwrap();
            rustix::fs::ftruncate(&fd, *n as u64).unwrap();
            // A partial seal set: still not enough.
            rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW).unwrap();
            Some(fd)
        }
        FdChoice::Pipe => {
            let (r, _w) = std::io::pipe().unwrap();
            Some(r.into())
        }
    }
}

#[derive(Debug, Clone)]
enum Mutation {
    FlipBit(usize, u8),
    SetByte(usize, u8),
    Truncate(usize),
    /// Overwrite the meta_len (false) or body_len (true) field.
    SetLen(bool, u32),
    /// Add a small delta to the meta_len or body_len field.
    NudgeLen(bool, i8),
    Append(Vec<u8>),
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        4 => (any::<usize>(), 0u8..8).prop_map(|(i, b)| Mutation::FlipBit(i, b)),
        3 => (any::<usize>(), any::<u8>()).prop_map(|(i, v)| Mutation::SetByte(i, v)),
        1 => any::<usize>().prop_map(Mutation::Truncate),
        1 => (any::<bool>(), any::<u32>()).prop_map(|(f, v)| Mutation::SetLen(f, v)),
        1 => (any::<bool>(), -4i8..=4).prop_map(|(f, d)| Mutation::NudgeLen(f, d)),
        1 => vec(any::<u8>(), 1..16).prop_map(Mutation::Append),
    ]
}

fn apply(m: &Mutation, buf: &mut Vec<u8>) {
    let len_field = |body: bool| if body { 20..24 } else { 16..20 };
    match m {
        Mutation::FlipBit(i, b) if !buf.is_empty() => {
            let i = i % buf.len();
            buf[i] ^= 1 << b;
        }
        Mutation::SetByte(i, v) if !buf.is_empty() => {
            let i = i % buf.len();
            buf[i] = *v;
        }
        Mutation::Truncate(n) => {
            let n = n % (buf.len() + 1);
            buf.truncate(n);
        }
        Mutation::SetLen(body, v) if buf.len() >= HEADER_LEN => {
            buf[len_field(*body)].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::NudgeLen(body, d) if buf.len() >= HEADER_LEN => {
            let r = len_field(*body);
            let mut a = [0u8; 4];
            a.copy_from_slice(&buf[r.clone()]);
            let v = u32::from_le_bytes(a).wrapping_add_signed(i32::from(*d));
            buf[r].copy_from_slice(&v.to_le_bytes());
        }
        Mutation::Append(extra) => buf.extend_from_slice(extra),
        _ => {}
    }
}

/// What must hold whenever `decode` accepts something: the frame re-encodes,
/// and the re-encoded bytes decode again.
fn accepted_is_reencodable(frame: &Frame) {
    let mut buf = Vec::new();
    let again = encode_decode(frame, &mut buf);
    assert_eq!(again.kind(), frame.kind());
    assert_eq!(again.id(), frame.id());
}

// ---------------------------------------------------------------------------
// (a) The decoder never panics.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(1024))]

    #[test]
    fn decode_random_bytes_never_panics(bytes in vec(any::<u8>(), 0..4096)) {
        if let Ok(f) = decode(&bytes, None, &DecodeLimits::default()) {
            accepted_is_reencodable(&f);
        }
    }

    #[test]
    fn decode_random_bytes_with_fd_never_panics(
        bytes in vec(any::<u8>(), 0..4096),
        fd in fd_choice(),
    ) {
        if let Ok(f) = decode(&bytes, make_fd(&fd, None), &DecodeLimits::default()) {
            accepted_is_reencodable(&f);
        }
    }

    /// A valid header with consistent lengths in front of random metadata,
    /// so the metadata parser sees the garbage.
    #[test]
    fn decode_random_metadata_never_panics(
        kind in prop_oneof![8 => 1u8..=5, 1 => 0u8..=6],
        flags in prop_oneof![6 => Just(0u16), 3 => Just(1), 1 => 0u16..4, 1 => any::<u16>()],
        id in any::<u64>(),
        meta in meta_bytes(),
        body_len in prop_oneof![8 => 0u32..300, 1 => any::<u32>()],
        fd in fd_choice(),
        max_body in prop_oneof![4 => Just(DecodeLimits::default().max_body), 1 => 0u64..1024],
    ) {
        let memfd = flags & 1 != 0;
        let mut bytes = Vec::new();
        bytes.extend_from_slice(&MAGIC);
        bytes.push(VERSION);
        bytes.push(kind);
        bytes.extend_from_slice(&flags.to_le_bytes());
        bytes.extend_from_slice(&id.to_le_bytes());
        bytes.extend_from_slice(&(meta.len() as u32).to_le_bytes());
        let body_len = if memfd { body_len } else { body_len % 300 };
        bytes.extend_from_slice(&body_len.to_le_bytes());
        bytes.extend_from_slice(&meta);
        if !memfd {
            bytes.extend_from_slice(&pattern(body_len as usize, id));
        }
        let own = memfd.then(|| {
            SealedMemfd::from_bytes(&pattern(body_len.min(300) as usize, id))
                .unwrap()
                .into_fd()
        });
        let limits = DecodeLimits { max_body };
        if let Ok(f) = decode(&bytes, make_fd(&fd, own), &limits) {
            accepted_is_reencodable(&f);
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(512))]

    #[test]
    fn decode_mutated_frames_never_panics(
        spec in spec(70 * 1024),
        mutations in vec(mutation(), 1..3),
        fd in fd_choice(),
    ) {
        let frame = spec.build();
        let mut buf = Vec::new();
        let own = frame
            .encode(&mut buf)
            .unwrap()
            .map(|fd| fd.try_clone_to_owned().unwrap());
        for m in &mutations {
            apply(m, &mut buf);
        }
        if let Ok(f) = decode(&buf, make_fd(&fd, own), &DecodeLimits::default()) {
            accepted_is_reencodable(&f);
        }
    }
}

// ---------------------------------------------------------------------------
// (b) In-memory round trip, (c) round trip through a socket pair.

proptest! {
    #![proptest_config(ProptestConfig::with_cases(256))]

    #[test]
    fn every_frame_round_trips_in_memory(spec in spec(200 * 1024)) {
        let frame = spec.build();
        let mut buf = Vec::new();
        let decoded = encode_decode(&frame, &mut buf);
        check(&spec, &decoded)?;
        // Encoding the decoded frame gives the same datagram.
        let mut again = Vec::new();
        decoded.encode(&mut again).unwrap();
        prop_assert!(again == buf, "re-encoded datagram differs");
    }

    #[test]
    fn every_frame_round_trips_through_a_channel(spec in spec(200 * 1024)) {
        let (a, b) = channel_pair().unwrap();
        let mut send_buf = Vec::new();
        let mut recv_buf = Vec::new();
        send_frame(a.as_fd(), &spec.build(), &mut send_buf).unwrap();
        let got = recv_frame(b.as_fd(), &mut recv_buf, &DecodeLimits::default())
            .unwrap()
            .expect("a frame, not a close");
        check(&spec, &got)?;
        // And back the other way.
        send_frame(b.as_fd(), &spec.build(), &mut send_buf).unwrap();
        let got = recv_frame(a.as_fd(), &mut recv_buf, &DecodeLimits::default())
            .unwrap()
            .expect("a frame, not a close");
        check(&spec, &got)?;
    }
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// Several frames sent from another thread (so a full socket buffer
    /// blocks the sender, not the test) arrive whole and in order, and the
    /// sender closing its end reads as `None`.
    #[test]
    fn frame_streams_round_trip_through_a_channel(specs in vec(spec(200 * 1024), 1..6)) {
        let (a, b) = channel_pair().unwrap();
        let to_send = specs.clone();
        let sender = std::thread::spawn(move || {
            let mut buf = Vec::new();
            for s in &to_send {
                send_frame(a.as_fd(), &s.build(), &mut buf).unwrap();
            }
            drop(a);
        });
        let mut buf = Vec::new();
        for s in &specs {
            let got = recv_frame(b.as_fd(), &mut buf, &DecodeLimits::default())
                .unwrap()
                .expect("a frame, not a close");
            check(s, &got)?;
        }
        prop_assert!(recv_frame(b.as_fd(), &mut buf, &DecodeLimits::default())
            .unwrap()
            .is_none());
        sender.join().unwrap();
    }
}

/// The largest frames the encoder allows: 256 headers and an inline body of
/// exactly `MAX_INLINE_BODY`, in memory and through a socket.
#[test]
fn largest_inline_frame_round_trips() {
    let headers: Vec<(String, String)> = (0..256)
        .map(|i| (format!("x-h{i}"), "v".repeat(200)))
        .collect();
    let spec = Spec::Result {
        id: u64::MAX,
        status: 999,
        headers,
        body: BodySpec {
            len: MAX_INLINE_BODY as usize,
            seed: 3,
            threshold: MAX_INLINE_BODY as usize,
        },
        ready: true,
    };
    let mut buf = Vec::new();
    check(&spec, &encode_decode(&spec.build(), &mut buf)).unwrap();

    let (a, b) = channel_pair().unwrap();
    send_frame(a.as_fd(), &spec.build(), &mut buf).unwrap();
    let got = recv_frame(b.as_fd(), &mut buf, &DecodeLimits::default())
        .unwrap()
        .unwrap();
    check(&spec, &got).unwrap();
}
