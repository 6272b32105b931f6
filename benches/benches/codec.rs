//! Guest protocol codec benchmarks (DESIGN.md §5).
//!
//! Every case moves one `Invoke` frame (32-byte trace id, four headers) and
//! ends with the receiver holding the body as a `Vec<u8>`. Body sizes:
//! 100 B and 64 KiB travel inline (64 KiB is the largest inline body at the
//! default memfd threshold), 1 MiB travels as a sealed memfd.
//!
//! | case | what one iteration does |
//! |---|---|
//! | `codec/in_memory/100B`, `.../64KiB` | encode into a reused buffer (copies the body in), decode (copies it out) |
//! | `codec/in_memory/1MiB` | build the body (memfd_create + write + seal), encode, dup the fd (what `SCM_RIGHTS` does), decode (seal check + fstat), read the body back (pread) |
//! | `codec/channel/100B`, `.../64KiB` | `send_frame` + `recv_frame` on a `channel_pair`, in one thread (one datagram fits the socket buffer) |
//! | `codec/channel/1MiB` | as in memory, with the fd passed through the socket instead of dup'ed |
//!
//! For the inline sizes the frame is built once outside the timed loop; for
//! 1 MiB it is built inside it, because creating the memfd is part of the
//! cost of sending a large body.
//!
//! Run with `cargo bench -p faas-benches --bench codec`.
// A benchmark harness: a failing setup or a codec error should abort the run.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::os::fd::AsFd;

use criterion::{BenchmarkId, Criterion, Throughput, criterion_main};
use faas_core::protocol::{
    Body, DEFAULT_MEMFD_THRESHOLD, DecodeLimits, Frame, SealedMemfd, channel_pair, decode,
    recv_frame, send_frame,
};
use faas_core::types::{InvocationId, UnixMillis};

const SIZES: [(&str, usize); 3] = [("100B", 100), ("64KiB", 64 * 1024), ("1MiB", 1024 * 1024)];

fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i * 31 % 251) as u8).collect()
}

fn invoke(body: Body) -> Frame {
    Frame::Invoke {
        id: InvocationId(0x0123_4567_89ab_cdef),
        deadline: UnixMillis(1_700_000_000_000),
        trace_id: String::from("4bf92f3577b34da6a3ce929d0e0e4736"),
        headers: vec![
            (
                String::from("content-type"),
                String::from("application/json"),
            ),
            (String::from("accept"), String::from("*/*")),
            (String::from("user-agent"), String::from("faas-bench/1")),
            (
                String::from("x-request-id"),
                String::from("0123456789abcdef"),
            ),
        ],
        body,
    }
}

/// The body as the receiver gets to use it.
fn into_body(frame: Frame) -> Vec<u8> {
    match frame {
        Frame::Invoke { body, .. } => body.into_vec().unwrap(),
        other => panic!("expected Invoke, got {:?}", other.kind()),
    }
}

fn is_inline(len: usize) -> bool {
    len <= DEFAULT_MEMFD_THRESHOLD
}

fn in_memory(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let mut group = c.benchmark_group("codec/in_memory");
    for (label, len) in SIZES {
        let bytes = payload(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            let mut buf = Vec::new();
            if is_inline(len) {
                let frame = invoke(Body::Inline(bytes.clone()));
                let mut run = || {
                    let fd = frame.encode(&mut buf).unwrap();
                    assert!(fd.is_none());
                    let got = decode(black_box(&buf), None, &limits).unwrap();
                    black_box(into_body(got))
                };
                assert_eq!(run(), bytes);
                b.iter(run);
            } else {
                let mut run = || {
                    let memfd = SealedMemfd::from_bytes(black_box(&bytes)).unwrap();
                    let frame = invoke(Body::Memfd(memfd));
                    let fd = frame
                        .encode(&mut buf)
                        .unwrap()
                        .map(|fd| fd.try_clone_to_owned().unwrap());
                    assert!(fd.is_some());
                    let got = decode(black_box(&buf), fd, &limits).unwrap();
                    black_box(into_body(got))
                };
                assert_eq!(run(), bytes);
                b.iter(run);
            }
        });
    }
    group.finish();
}

fn channel(c: &mut Criterion) {
    let limits = DecodeLimits::default();
    let (tx, rx) = channel_pair().unwrap();
    let mut group = c.benchmark_group("codec/channel");
    for (label, len) in SIZES {
        let bytes = payload(len);
        group.throughput(Throughput::Bytes(len as u64));
        group.bench_function(BenchmarkId::from_parameter(label), |b| {
            let mut send_buf = Vec::new();
            let mut recv_buf = Vec::new();
            let mut round_trip = |frame: &Frame| {
                send_frame(tx.as_fd(), frame, &mut send_buf).unwrap();
                let got = recv_frame(rx.as_fd(), &mut recv_buf, &limits)
                    .unwrap()
                    .expect("the peer is open");
                black_box(into_body(got))
            };
            if is_inline(len) {
                let frame = invoke(Body::Inline(bytes.clone()));
                assert_eq!(round_trip(&frame), bytes);
                b.iter(|| round_trip(black_box(&frame)));
            } else {
                let mut run = || {
                    let memfd = SealedMemfd::from_bytes(black_box(&bytes)).unwrap();
                    round_trip(&invoke(Body::Memfd(memfd)))
                };
                assert_eq!(run(), bytes);
                b.iter(run);
            }
        });
    }
    group.finish();
}

// What `criterion_group!` would generate, as a private function: the macro's
// `pub fn` has no doc comment and trips `missing_docs`.
fn benches() {
    let mut c = Criterion::default().configure_from_args();
    in_memory(&mut c);
    channel(&mut c);
}

criterion_main!(benches);
