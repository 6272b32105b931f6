//! Malformed input to the guest protocol decoder: one test per class of bad
//! frame, each asserting the `ProtocolError` the node gateway acts on.
//!
//! Frames are built by hand here (not with `Frame::encode`) so that each test
//! shows the exact bytes it sends; fd-related cases go through a real
//! `SOCK_SEQPACKET` pair where the kernel's part matters.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::IoSlice;
use std::mem::MaybeUninit;
use std::os::fd::{AsFd, BorrowedFd, OwnedFd};

use faas_core::protocol::{
    Body, Channel, DecodeLimits, Frame, FrameKind, HEADER_LEN, LONG_LIVED, MAGIC, MAX_DATAGRAM,
    MAX_INLINE_BODY, MAX_META, ProtocolError, SealedMemfd, VERSION, channel_pair, decode,
    recv_frame, send_frame,
};
use faas_core::types::{InvocationId, UnixMillis};
use rustix::fs::{MemfdFlags, SealFlags};
use rustix::net::{SendAncillaryBuffer, SendAncillaryMessage, SendFlags};

const READY: u8 = 1;
const INVOKE: u8 = 2;
const RESULT: u8 = 3;
const ERROR: u8 = 4;
const LOG: u8 = 5;
const FLAG_MEMFD: u16 = 1;
const FLAG_SNAPSHOT: u16 = 2;
const FLAG_READY: u16 = 4;

/// A 24-byte header with the given fields.
fn header(kind: u8, flags: u16, id: u64, meta_len: u32, body_len: u32) -> Vec<u8> {
    let mut h = Vec::with_capacity(HEADER_LEN);
    h.extend_from_slice(&MAGIC);
    h.push(VERSION);
    h.push(kind);
    h.extend_from_slice(&flags.to_le_bytes());
    h.extend_from_slice(&id.to_le_bytes());
    h.extend_from_slice(&meta_len.to_le_bytes());
    h.extend_from_slice(&body_len.to_le_bytes());
    h
}

/// A frame with consistent lengths and an inline body.
fn frame(kind: u8, flags: u16, meta: &[u8], body: &[u8]) -> Vec<u8> {
    let mut f = header(kind, flags, 42, meta.len() as u32, body.len() as u32);
    f.extend_from_slice(meta);
    f.extend_from_slice(body);
    f
}

/// A frame announcing a memfd body of `body_len` bytes.
fn memfd_frame(kind: u8, meta: &[u8], body_len: u32) -> Vec<u8> {
    let mut f = header(kind, FLAG_MEMFD, 42, meta.len() as u32, body_len);
    f.extend_from_slice(meta);
    f
}

/// Valid Result metadata: status 200, no headers.
fn result_meta() -> Vec<u8> {
    let mut m = 200u16.to_le_bytes().to_vec();
    m.extend_from_slice(&0u16.to_le_bytes());
    m
}

/// Valid Invoke metadata: deadline, empty trace id, no headers.
fn invoke_meta() -> Vec<u8> {
    let mut m = 1_700_000_000_000u64.to_le_bytes().to_vec();
    m.extend_from_slice(&0u16.to_le_bytes());
    m.extend_from_slice(&0u16.to_le_bytes());
    m
}

/// Metadata with one header, name and value as raw bytes.
fn result_meta_with_header(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut m = 200u16.to_le_bytes().to_vec();
    m.extend_from_slice(&1u16.to_le_bytes());
    m.extend_from_slice(&(name.len() as u16).to_le_bytes());
    m.extend_from_slice(name);
    m.extend_from_slice(&(value.len() as u32).to_le_bytes());
    m.extend_from_slice(value);
    m
}

fn decode_err(bytes: &[u8], fd: Option<OwnedFd>) -> ProtocolError {
    decode_err_with(bytes, fd, &DecodeLimits::default())
}

fn decode_err_with(bytes: &[u8], fd: Option<OwnedFd>, limits: &DecodeLimits) -> ProtocolError {
    match decode(bytes, fd, limits) {
        Ok(f) => panic!("decoded {f:?}, expected an error"),
        Err(e) => e,
    }
}

fn sealed_memfd(len: usize) -> OwnedFd {
    SealedMemfd::from_bytes(&vec![0xab; len]).unwrap().into_fd()
}

/// Sends `bytes` as one datagram with `fds` attached, bypassing the encoder.
fn send_raw(sock: BorrowedFd<'_>, bytes: &[u8], fds: &[BorrowedFd<'_>]) {
    let mut space = [MaybeUninit::<u8>::uninit(); rustix::cmsg_space!(ScmRights(16))];
    let mut control = SendAncillaryBuffer::new(&mut space);
    if !fds.is_empty() {
        assert!(control.push(SendAncillaryMessage::ScmRights(fds)));
    }
    let n = rustix::net::sendmsg(
        sock,
        &[IoSlice::new(bytes)],
        &mut control,
        SendFlags::empty(),
    )
    .unwrap();
    assert_eq!(n, bytes.len());
}

fn recv_err(sock: BorrowedFd<'_>) -> ProtocolError {
    let mut buf = Vec::new();
    match recv_frame(sock, &mut buf, &DecodeLimits::default()) {
        Ok(f) => panic!("received {f:?}, expected an error"),
        Err(e) => e,
    }
}

/// After a bad datagram, the channel still carries the next good one.
fn assert_channel_still_works(tx: BorrowedFd<'_>, rx: BorrowedFd<'_>) {
    let mut buf = Vec::new();
    send_frame(tx, &Frame::Ready { snapshot: false }, &mut buf).unwrap();
    let f = recv_frame(rx, &mut buf, &DecodeLimits::default()).unwrap();
    assert!(matches!(f, Some(Frame::Ready { snapshot: false })), "{f:?}");
}

#[test]
fn short_frame() {
    for len in [0, 1, 4, HEADER_LEN - 1] {
        let bytes = &frame(READY, 0, &[], &[])[..len];
        let e = decode_err(bytes, None);
        assert!(
            matches!(e, ProtocolError::Short { len: l } if l == len),
            "{e:?}"
        );
    }
}

#[test]
fn bad_magic() {
    let mut f = frame(READY, 0, &[], &[]);
    f[..4].copy_from_slice(b"FAAT");
    let e = decode_err(&f, None);
    assert!(
        matches!(e, ProtocolError::BadMagic { found } if &found == b"FAAT"),
        "{e:?}"
    );
}

#[test]
fn bad_version() {
    for v in [0, VERSION + 1, u8::MAX] {
        let mut f = frame(READY, 0, &[], &[]);
        f[4] = v;
        let e = decode_err(&f, None);
        assert!(
            matches!(e, ProtocolError::BadVersion { found } if found == v),
            "{e:?}"
        );
    }
}

#[test]
fn unknown_kind() {
    for k in [0, 6, u8::MAX] {
        let e = decode_err(&frame(k, 0, &[], &[]), None);
        assert!(
            matches!(e, ProtocolError::UnknownKind { kind } if kind == k),
            "{e:?}"
        );
    }
}

#[test]
fn unknown_flags() {
    for fl in [1 << 3, 1 << 15, u16::MAX] {
        let e = decode_err(&frame(RESULT, fl, &result_meta(), &[]), None);
        assert!(
            matches!(e, ProtocolError::UnknownFlags { flags } if flags == fl),
            "{e:?}"
        );
    }
}

#[test]
fn meta_too_long() {
    for declared in [MAX_META + 1, u32::MAX] {
        let mut f = header(RESULT, 0, 1, declared, 0);
        f.resize(HEADER_LEN + MAX_META as usize + 1, 0);
        let e = decode_err(&f, None);
        assert!(
            matches!(e, ProtocolError::MetaTooLong { len, max: MAX_META } if len == u64::from(declared)),
            "{e:?}"
        );
    }
}

#[test]
fn inline_body_over_max_inline_body() {
    let meta = result_meta();
    let f = frame(RESULT, 0, &meta, &vec![0; MAX_INLINE_BODY as usize + 1]);
    let e = decode_err(&f, None);
    assert!(
        matches!(e, ProtocolError::BodyTooLong { len, max }
            if len == u64::from(MAX_INLINE_BODY) + 1 && max == u64::from(MAX_INLINE_BODY)),
        "{e:?}"
    );
}

#[test]
fn inline_body_over_decode_limit() {
    let limits = DecodeLimits { max_body: 10 };
    let f = frame(LOG, 0, &[1], &[b'x'; 11]);
    let e = decode_err_with(&f, None, &limits);
    assert!(
        matches!(e, ProtocolError::BodyTooLong { len: 11, max: 10 }),
        "{e:?}"
    );
}

#[test]
fn memfd_body_over_decode_limit() {
    const MIB: u64 = 1024 * 1024;
    let limits = DecodeLimits { max_body: MIB };
    let f = memfd_frame(RESULT, &result_meta(), 2 * MIB as u32);
    // Rejected on the header alone: the fd is never inspected.
    let e = decode_err_with(&f, Some(sealed_memfd(16)), &limits);
    assert!(
        matches!(e, ProtocolError::BodyTooLong { len, max: MIB } if len == 2 * MIB),
        "{e:?}"
    );
    // The default limit (64 MiB) also bounds a memfd body.
    let f = memfd_frame(RESULT, &result_meta(), u32::MAX);
    let e = decode_err(&f, Some(sealed_memfd(16)));
    assert!(matches!(e, ProtocolError::BodyTooLong { .. }), "{e:?}");
}

#[test]
fn length_mismatch() {
    let meta = result_meta();
    let good = frame(RESULT, 0, &meta, b"body");
    // One byte missing, one byte extra.
    let e = decode_err(&good[..good.len() - 1], None);
    assert!(
        matches!(e, ProtocolError::LengthMismatch { declared, actual }
            if declared == good.len() && actual == good.len() - 1),
        "{e:?}"
    );
    let mut long = good.clone();
    long.push(0);
    let e = decode_err(&long, None);
    assert!(
        matches!(e, ProtocolError::LengthMismatch { declared, actual }
            if declared == good.len() && actual == good.len() + 1),
        "{e:?}"
    );
    // A memfd frame carries no inline body: bytes after the metadata are extra.
    let mut f = memfd_frame(RESULT, &meta, 4);
    f.extend_from_slice(b"body");
    let e = decode_err(&f, Some(sealed_memfd(4)));
    assert!(matches!(e, ProtocolError::LengthMismatch { .. }), "{e:?}");
}

#[test]
fn memfd_flag_without_fd() {
    let e = decode_err(&memfd_frame(RESULT, &result_meta(), 100), None);
    assert!(matches!(e, ProtocolError::MissingFd), "{e:?}");

    // The same through a socket.
    let (a, b) = channel_pair().unwrap();
    send_raw(a.as_fd(), &memfd_frame(INVOKE, &invoke_meta(), 100), &[]);
    let e = recv_err(b.as_fd());
    assert!(matches!(e, ProtocolError::MissingFd), "{e:?}");
}

#[test]
fn fd_without_memfd_flag() {
    let f = frame(RESULT, 0, &result_meta(), b"inline");
    let e = decode_err(&f, Some(sealed_memfd(6)));
    assert!(matches!(e, ProtocolError::UnexpectedFd), "{e:?}");

    // On a kind without body, too.
    let e = decode_err(&frame(READY, 0, &[], &[]), Some(sealed_memfd(0)));
    assert!(matches!(e, ProtocolError::UnexpectedFd), "{e:?}");
}

#[test]
fn two_fds_in_one_datagram() {
    let (a, b) = channel_pair().unwrap();
    let m1 = sealed_memfd(8);
    let m2 = sealed_memfd(8);
    send_raw(
        a.as_fd(),
        &memfd_frame(RESULT, &result_meta(), 8),
        &[m1.as_fd(), m2.as_fd()],
    );
    let e = recv_err(b.as_fd());
    assert!(matches!(e, ProtocolError::UnexpectedFd), "{e:?}");
    assert_channel_still_works(a.as_fd(), b.as_fd());
}

#[test]
fn many_fds_in_one_datagram() {
    // The receiver's control buffer holds a few fds: more than that cut the
    // control data (`Truncated`), fewer are counted (`UnexpectedFd`). Which
    // one a given count hits depends on the buffer's alignment; either way
    // the frame is refused and the channel stays usable.
    let (a, b) = channel_pair().unwrap();
    for n in [3, 4, 5, 16] {
        let fds: Vec<OwnedFd> = (0..n).map(|_| sealed_memfd(8)).collect();
        let borrowed: Vec<_> = fds.iter().map(|f| f.as_fd()).collect();
        send_raw(
            a.as_fd(),
            &memfd_frame(RESULT, &result_meta(), 8),
            &borrowed,
        );
        let e = recv_err(b.as_fd());
        assert!(
            matches!(e, ProtocolError::UnexpectedFd | ProtocolError::Truncated),
            "{n} fds: {e:?}"
        );
        assert_channel_still_works(a.as_fd(), b.as_fd());
    }
}

#[test]
fn datagram_larger_than_any_valid_frame() {
    let (a, b) = channel_pair().unwrap();
    let mut f = header(RESULT, 0, 1, MAX_META, MAX_INLINE_BODY);
    f.resize(MAX_DATAGRAM + 16, 0);
    send_raw(a.as_fd(), &f, &[]);
    let e = recv_err(b.as_fd());
    assert!(matches!(e, ProtocolError::Truncated), "{e:?}");
    assert_channel_still_works(a.as_fd(), b.as_fd());
}

#[test]
fn memfd_not_sealed() {
    let f = memfd_frame(RESULT, &result_meta(), 8);

    // Sealing allowed but no seal applied.
    let fd = rustix::fs::memfd_create("unsealed", MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 8).unwrap();
    let e = decode_err(&f, Some(fd));
    assert!(matches!(e, ProtocolError::NotSealed { seals: 0 }), "{e:?}");

    // Some seals, but writes still possible.
    let fd = rustix::fs::memfd_create("half", MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 8).unwrap();
    rustix::fs::fcntl_add_seals(&fd, SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL)
        .unwrap();
    let e = decode_err(&f, Some(fd));
    let want = (SealFlags::GROW | SealFlags::SHRINK | SealFlags::SEAL).bits();
    assert!(
        matches!(e, ProtocolError::NotSealed { seals } if seals == want),
        "{e:?}"
    );

    // Sealing not allowed: the kernel reports only F_SEAL_SEAL.
    let fd = rustix::fs::memfd_create("unsealable", MemfdFlags::empty()).unwrap();
    rustix::fs::ftruncate(&fd, 8).unwrap();
    let e = decode_err(&f, Some(fd));
    assert!(
        matches!(e, ProtocolError::NotSealed { seals } if seals == SealFlags::SEAL.bits()),
        "{e:?}"
    );

    // Through a socket: what a hostile instance would actually do.
    let (a, b) = channel_pair().unwrap();
    let fd = rustix::fs::memfd_create("unsealed", MemfdFlags::ALLOW_SEALING).unwrap();
    rustix::fs::ftruncate(&fd, 8).unwrap();
    send_raw(a.as_fd(), &f, &[fd.as_fd()]);
    let e = recv_err(b.as_fd());
    assert!(matches!(e, ProtocolError::NotSealed { .. }), "{e:?}");
}

#[test]
fn fd_that_is_not_a_memfd() {
    let f = memfd_frame(LOG, &[1], 0);

    let (r, w) = std::io::pipe().unwrap();
    let e = decode_err(&f, Some(r.into()));
    assert!(matches!(e, ProtocolError::NotSealed { seals: 0 }), "{e:?}");
    let e = decode_err(&f, Some(w.into()));
    assert!(matches!(e, ProtocolError::NotSealed { seals: 0 }), "{e:?}");

    let file = std::fs::File::open(concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml")).unwrap();
    let e = decode_err(&f, Some(file.into()));
    assert!(matches!(e, ProtocolError::NotSealed { seals: 0 }), "{e:?}");

    // A socket, through a socket.
    let (a, b) = channel_pair().unwrap();
    let (other, _) = channel_pair().unwrap();
    send_raw(a.as_fd(), &f, &[other.as_fd()]);
    let e = recv_err(b.as_fd());
    assert!(matches!(e, ProtocolError::NotSealed { seals: 0 }), "{e:?}");
}

#[test]
fn sealed_memfd_of_the_wrong_size() {
    for (declared, actual) in [(100u32, 99usize), (100, 101), (0, 1), (1, 0)] {
        let f = memfd_frame(RESULT, &result_meta(), declared);
        let e = decode_err(&f, Some(sealed_memfd(actual)));
        assert!(
            matches!(e, ProtocolError::MemfdSize { expected, actual: got }
                if expected == u64::from(declared) && got == actual as u64),
            "{e:?}"
        );
    }
}

#[test]
fn ready_with_metadata_or_body() {
    for (meta, body) in [(&[0u8][..], &[][..]), (&[], &[0u8][..])] {
        let e = decode_err(&frame(READY, 0, meta, body), None);
        assert!(
            matches!(
                e,
                ProtocolError::Malformed {
                    kind: FrameKind::Ready,
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn ready_with_an_invocation_id() {
    // `frame` writes id 42; Ready must carry 0.
    let e = decode_err(&frame(READY, 0, &[], &[]), None);
    assert!(
        matches!(
            e,
            ProtocolError::Malformed {
                kind: FrameKind::Ready,
                what: "Ready carries invocation id 0",
            }
        ),
        "{e:?}"
    );
}

#[test]
fn long_error_messages_are_cut_at_a_character_boundary() {
    let message = "é".repeat(MAX_INLINE_BODY as usize); // 2 bytes each
    let f = Frame::Error {
        id: faas_core::InvocationId(1),
        status: 500,
        message,
        ready: false,
    };
    let mut buf = Vec::new();
    f.encode(&mut buf).unwrap();
    match decode(&buf, None, &DecodeLimits::default()).unwrap() {
        Frame::Error { message, .. } => {
            assert_eq!(message.len(), MAX_INLINE_BODY as usize);
            assert!(message.chars().all(|c| c == 'é'));
        }
        other => panic!("{other:?}"),
    }
}

#[test]
fn memfd_flag_on_a_kind_without_body() {
    for k in [READY, ERROR] {
        let meta = if k == ERROR {
            500u16.to_le_bytes().to_vec()
        } else {
            vec![]
        };
        let e = decode_err(&memfd_frame(k, &meta, 4), Some(sealed_memfd(4)));
        assert!(
            matches!(
                e,
                ProtocolError::Malformed {
                    what: "memfd body on a kind without body",
                    ..
                }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn snapshot_flag_outside_ready() {
    let cases: [(u8, FrameKind, Vec<u8>); 4] = [
        (INVOKE, FrameKind::Invoke, invoke_meta()),
        (RESULT, FrameKind::Result, result_meta()),
        (ERROR, FrameKind::Error, 500u16.to_le_bytes().to_vec()),
        (LOG, FrameKind::Log, vec![1]),
    ];
    for (k, kind, meta) in cases {
        let e = decode_err(&frame(k, FLAG_SNAPSHOT, &meta, &[]), None);
        assert!(
            matches!(e, ProtocolError::Malformed { kind: got, what: "snapshot flag outside Ready" } if got == kind),
            "{e:?}"
        );
    }
    // While on Ready it is fine.
    let f = decode(
        &header(READY, FLAG_SNAPSHOT, 0, 0, 0),
        None,
        &DecodeLimits::default(),
    );
    assert!(matches!(f, Ok(Frame::Ready { snapshot: true })), "{f:?}");
}

#[test]
fn ready_flag_outside_result_and_error() {
    let cases: [(u8, FrameKind, Vec<u8>, u64); 3] = [
        (READY, FrameKind::Ready, Vec::new(), 0),
        (INVOKE, FrameKind::Invoke, invoke_meta(), 42),
        (LOG, FrameKind::Log, vec![1], 42),
    ];
    for (k, kind, meta, id) in cases {
        let mut f = header(k, FLAG_READY, id, meta.len() as u32, 0);
        f.extend_from_slice(&meta);
        let e = decode_err(&f, None);
        assert!(
            matches!(e, ProtocolError::Malformed { kind: got, what: "ready flag outside Result and Error" } if got == kind),
            "{e:?}"
        );
    }
    // On Result and Error it says the next request may come at once.
    let f = decode(
        &frame(RESULT, FLAG_READY, &result_meta(), b"ok"),
        None,
        &DecodeLimits::default(),
    );
    assert!(matches!(f, Ok(Frame::Result { ready: true, .. })), "{f:?}");
    let f = decode(
        &frame(ERROR, FLAG_READY, &500u16.to_le_bytes(), b"failed"),
        None,
        &DecodeLimits::default(),
    );
    assert!(matches!(f, Ok(Frame::Error { ready: true, .. })), "{f:?}");
    let f = decode(
        &frame(RESULT, 0, &result_meta(), b"ok"),
        None,
        &DecodeLimits::default(),
    );
    assert!(matches!(f, Ok(Frame::Result { ready: false, .. })), "{f:?}");
}

#[test]
fn status_outside_100_to_999() {
    for status in [0u16, 99, 1000, u16::MAX] {
        let mut meta = status.to_le_bytes().to_vec();
        meta.extend_from_slice(&0u16.to_le_bytes());
        let e = decode_err(&frame(RESULT, 0, &meta, &[]), None);
        assert!(
            matches!(
                e,
                ProtocolError::Malformed {
                    kind: FrameKind::Result,
                    what: "status outside 100..=999"
                }
            ),
            "{e:?}"
        );
        let e = decode_err(&frame(ERROR, 0, &status.to_le_bytes(), b"boom"), None);
        assert!(
            matches!(
                e,
                ProtocolError::Malformed {
                    kind: FrameKind::Error,
                    what: "status outside 100..=999"
                }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn invalid_utf8_in_strings() {
    let e = decode_err(
        &frame(RESULT, 0, &result_meta_with_header(b"x-\xff", b"v"), &[]),
        None,
    );
    assert!(
        matches!(
            e,
            ProtocolError::Utf8 {
                kind: FrameKind::Result,
                what: "header name"
            }
        ),
        "{e:?}"
    );
    let e = decode_err(
        &frame(RESULT, 0, &result_meta_with_header(b"x", b"\xc3("), &[]),
        None,
    );
    assert!(
        matches!(
            e,
            ProtocolError::Utf8 {
                kind: FrameKind::Result,
                what: "header value"
            }
        ),
        "{e:?}"
    );
    let mut meta = 0u64.to_le_bytes().to_vec();
    meta.extend_from_slice(&2u16.to_le_bytes());
    meta.extend_from_slice(b"\xed\xa0"); // a lone surrogate's first bytes
    meta.extend_from_slice(&0u16.to_le_bytes());
    let e = decode_err(&frame(INVOKE, 0, &meta, &[]), None);
    assert!(
        matches!(
            e,
            ProtocolError::Utf8 {
                kind: FrameKind::Invoke,
                what: "trace id"
            }
        ),
        "{e:?}"
    );
}

#[test]
fn metadata_cut_short() {
    // A header value whose declared length runs past the metadata.
    let mut meta = result_meta_with_header(b"x", b"value");
    meta.truncate(meta.len() - 1);
    let e = decode_err(&frame(RESULT, 0, &meta, &[]), None);
    assert!(
        matches!(
            e,
            ProtocolError::Malformed {
                kind: FrameKind::Result,
                what: "header value"
            }
        ),
        "{e:?}"
    );
    // No metadata at all where a deadline is required.
    let e = decode_err(&frame(INVOKE, 0, &[], &[]), None);
    assert!(
        matches!(
            e,
            ProtocolError::Malformed {
                kind: FrameKind::Invoke,
                what: "deadline"
            }
        ),
        "{e:?}"
    );
}

#[test]
fn unknown_log_stream() {
    for s in [0u8, 4, u8::MAX] {
        let e = decode_err(&frame(LOG, 0, &[s], b"line"), None);
        assert!(
            matches!(
                e,
                ProtocolError::Malformed {
                    kind: FrameKind::Log,
                    what: "unknown log stream"
                }
            ),
            "{e:?}"
        );
    }
}

#[test]
fn trailing_metadata_bytes() {
    let cases: [(u8, FrameKind, Vec<u8>); 4] = [
        (INVOKE, FrameKind::Invoke, invoke_meta()),
        (RESULT, FrameKind::Result, result_meta()),
        (ERROR, FrameKind::Error, 500u16.to_le_bytes().to_vec()),
        (LOG, FrameKind::Log, vec![2]),
    ];
    for (k, kind, mut meta) in cases {
        meta.push(0);
        let e = decode_err(&frame(k, 0, &meta, b"body"), None);
        assert!(
            matches!(e, ProtocolError::Malformed { kind: got, what: "trailing metadata bytes" } if got == kind),
            "{e:?}"
        );
    }
}

#[test]
fn more_than_256_headers() {
    // The count is checked before any header is read.
    for count in [257u16, u16::MAX] {
        let mut meta = 200u16.to_le_bytes().to_vec();
        meta.extend_from_slice(&count.to_le_bytes());
        let e = decode_err(&frame(RESULT, 0, &meta, &[]), None);
        assert!(
            matches!(
                e,
                ProtocolError::Malformed {
                    kind: FrameKind::Result,
                    what: "more than 256 headers"
                }
            ),
            "{e:?}"
        );
    }
    // The encoder refuses to produce such a frame.
    let f = Frame::Invoke {
        id: InvocationId(1),
        deadline: UnixMillis(0),
        trace_id: String::new(),
        headers: vec![(String::from("a"), String::new()); 257],
        body: Body::Inline(Vec::new()),
    };
    let e = f.encode(&mut Vec::new()).unwrap_err();
    assert!(
        matches!(e, ProtocolError::FieldTooLong { what: "headers" }),
        "{e:?}"
    );
}

#[test]
fn encoder_refuses_oversized_fields() {
    let f = Frame::Invoke {
        id: InvocationId(1),
        deadline: UnixMillis(0),
        trace_id: "t".repeat(usize::from(u16::MAX) + 1),
        headers: Vec::new(),
        body: Body::Inline(Vec::new()),
    };
    let e = f.encode(&mut Vec::new()).unwrap_err();
    assert!(
        matches!(e, ProtocolError::FieldTooLong { what: "trace id" }),
        "{e:?}"
    );

    let f = Frame::Result {
        id: InvocationId(1),
        status: 200,
        headers: vec![(String::from("h"), "v".repeat(MAX_META as usize))],
        body: Body::Inline(Vec::new()),
        ready: false,
    };
    let e = f.encode(&mut Vec::new()).unwrap_err();
    assert!(matches!(e, ProtocolError::MetaTooLong { .. }), "{e:?}");

    let f = Frame::Log {
        id: InvocationId(1),
        stream: faas_core::protocol::LogStream::Stdout,
        body: Body::Inline(vec![0; MAX_INLINE_BODY as usize + 1]),
    };
    let e = f.encode(&mut Vec::new()).unwrap_err();
    assert!(matches!(e, ProtocolError::BodyTooLong { .. }), "{e:?}");
}

#[test]
fn peer_closing_the_socket() {
    let (a, b) = channel_pair().unwrap();
    drop(a);
    let mut buf = Vec::new();
    let got = recv_frame(b.as_fd(), &mut buf, &DecodeLimits::default()).unwrap();
    assert!(got.is_none(), "{got:?}");
    // And it stays closed.
    let got = recv_frame(b.as_fd(), &mut buf, &DecodeLimits::default()).unwrap();
    assert!(got.is_none(), "{got:?}");
}

#[test]
fn sending_to_a_closed_peer_is_an_error_not_a_signal() {
    let (a, b) = channel_pair().unwrap();
    drop(b);
    let e = send_frame(
        a.as_fd(),
        &Frame::Ready { snapshot: false },
        &mut Vec::new(),
    )
    .unwrap_err();
    assert!(
        matches!(&e, ProtocolError::Io { source, .. } if source.raw_os_error() == Some(rustix::io::Errno::PIPE.raw_os_error())),
        "{e:?}"
    );
}

#[test]
fn error_message_with_invalid_utf8_decodes_lossily() {
    let f = frame(ERROR, 0, &500u16.to_le_bytes(), b"bad \xff\xfe input");
    let got = decode(&f, None, &DecodeLimits::default()).unwrap();
    let Frame::Error {
        id,
        status,
        message,
        ready: false,
    } = got
    else {
        panic!("decoded {got:?}");
    };
    assert_eq!(id, InvocationId(42));
    assert_eq!(status, 500);
    assert_eq!(message, "bad \u{fffd}\u{fffd} input");
}

#[test]
fn long_lived_channel_reads_maximal_frames_and_refuses_larger_ones() {
    let (a, b) = channel_pair().unwrap();
    let mut rx = Channel::new(b, DecodeLimits::default());
    let mut scratch = Vec::new();
    // Past `LONG_LIVED` frames the receive buffer holds any datagram and
    // the length is no longer peeked at.
    for _ in 0..=LONG_LIVED {
        send_frame(a.as_fd(), &Frame::Ready { snapshot: false }, &mut scratch).unwrap();
        assert!(matches!(rx.recv().unwrap(), Some(Frame::Ready { .. })));
    }
    let big = vec![7u8; MAX_INLINE_BODY as usize];
    let result = Frame::Result {
        id: InvocationId(9),
        status: 200,
        headers: vec![("k".into(), "v".repeat(1000))],
        body: Body::Inline(big.clone()),
        ready: false,
    };
    send_frame(a.as_fd(), &result, &mut scratch).unwrap();
    match rx.recv().unwrap() {
        Some(Frame::Result { id, body, .. }) => {
            assert_eq!(id, InvocationId(9));
            assert_eq!(body.into_vec().unwrap(), big);
        }
        other => panic!("expected the Result, got {other:?}"),
    }
    let mut f = header(RESULT, 0, 1, MAX_META, MAX_INLINE_BODY);
    f.resize(MAX_DATAGRAM + 16, 0);
    send_raw(a.as_fd(), &f, &[]);
    let e = rx.recv().unwrap_err();
    assert!(matches!(e, ProtocolError::Truncated), "{e:?}");
    send_frame(a.as_fd(), &Frame::Ready { snapshot: true }, &mut scratch).unwrap();
    assert!(matches!(
        rx.recv().unwrap(),
        Some(Frame::Ready { snapshot: true })
    ));
}
