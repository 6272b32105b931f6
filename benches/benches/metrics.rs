//! Hot-path cost of the Prometheus metrics (`faas_gateway::Metrics`).
//!
//! | case | what one iteration does |
//! |---|---|
//! | `metrics/request/1t` | what the gateway does per invocation of an existing series (100 functions registered): `Metrics::start_request` (series lookup, in-flight gauge, clock) + `RequestRecord::finish` (`faas_requests_total` counter, `faas_request_duration_seconds` histogram, clock, in-flight gauge) |
//! | `metrics/request/2t` | the same from 2 threads at once on the same series (time per request, both threads counted) |
//! | `metrics/record_request` | `Metrics::record_request` with a given duration: lookup, counter, histogram (no clock, no in-flight gauge) |
//! | `metrics/record_error` | the same for a failed request: also `faas_invocation_errors_total` |
//! | `metrics/time_schedule` | `Metrics::time_schedule` around an empty decision: two clock reads and a histogram record |
//! | `metrics/render/100fn` | the whole exposition with 100 functions that each served requests |
//!
//! Run with `cargo bench -p faas-benches --bench metrics`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;
use std::sync::Barrier;
use std::time::{Duration, Instant};

use criterion::{Criterion, Throughput, criterion_main};
use faas_gateway::{Metrics, Start};

fn registry() -> Metrics {
    let m = Metrics::new();
    for i in 0..100 {
        let f = format!("function-{i}");
        m.record_request(&f, 1, Start::Cold, 200, None, Duration::from_millis(1));
        m.record_request(&f, 1, Start::Warm, 200, None, Duration::from_micros(90));
    }
    m
}

fn record(c: &mut Criterion) {
    let m = registry();
    let mut g = c.benchmark_group("metrics");
    g.throughput(Throughput::Elements(1));
    let one = || {
        let r = m.start_request(black_box("function-42"), 1);
        r.finish(Start::Cold, black_box(200), None);
    };
    g.bench_function("request/1t", |b| b.iter(one));
    g.bench_function("request/2t", |b| {
        b.iter_custom(|iters| {
            let barrier = Barrier::new(2);
            let per = |_: ()| {
                barrier.wait();
                let t = Instant::now();
                for _ in 0..iters {
                    one();
                }
                t.elapsed()
            };
            let (a, b) = std::thread::scope(|s| {
                let other = s.spawn(|| per(()));
                let mine = per(());
                (mine, other.join().unwrap())
            });
            // Two records per iteration happened in max(a, b).
            a.max(b) / 2
        });
    });
    g.bench_function("record_request", |b| {
        b.iter(|| {
            m.record_request(
                black_box("function-42"),
                1,
                Start::Cold,
                200,
                None,
                black_box(Duration::from_micros(850)),
            );
        });
    });
    g.bench_function("record_error", |b| {
        b.iter(|| {
            m.record_request(
                black_box("function-42"),
                1,
                Start::NoInstance,
                504,
                Some("timeout"),
                black_box(Duration::from_secs(1)),
            );
        });
    });
    g.bench_function("time_schedule", |b| {
        b.iter(|| m.time_schedule(|| black_box(1u32)));
    });
    g.throughput(Throughput::Elements(100));
    g.bench_function("render/100fn", |b| b.iter(|| black_box(m.render())));
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    record(&mut c);
}

criterion_main!(benches);
