//! Warm invocation benchmarks: an in-process platform (gateway, scheduler,
//! node gateway, `ProcessRuntime`) with the bundled `hello` function
//! deployed keep-alive, so every iteration is served by the same running
//! instance.
//!
//! | case | what one iteration does |
//! |---|---|
//! | `invoke/warm/in_process` | `FunctionGateway::handle` on an in-memory request: routing, body limit, scheduling, node queue, Invoke/Result over the guest channel |
//! | `invoke/warm/http` | the same through real HTTP/1.1 on loopback (keep-alive connection) |
//!
//! Run with `cargo bench -p faas-benches --bench invoke`. Cold invocations
//! (a new process per request) are measured by `faas bench` (see
//! BENCHMARKS.md).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::hint::black_box;

use bytes::Bytes;
use criterion::{Criterion, criterion_main};
use faas_core::{FunctionSpec, ImageRef, Reuse, RuntimeKind};
use faas_platform::client::Client;
use faas_platform::{Platform, PlatformConfig, embedded};
use http::Method;
use http_body_util::Full;

fn warm(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let fns = embedded::write_all(&dir.path().join("src")).unwrap();
    let hello = fns.iter().find(|d| d.ends_with("hello")).unwrap().clone();
    let mut config = PlatformConfig::new(dir.path().join("state"));
    config.inherit_stderr = false;
    let platform = Platform::new(&config).unwrap();
    let mut spec = FunctionSpec::new("hello", RuntimeKind::Native, ImageRef::Dir(hello), "hello");
    spec.reuse = Reuse::KeepAlive { idle_ms: 600_000 };
    platform.gateway.registry().deploy(spec).unwrap();
    let (listener, addr) = rt
        .block_on(Platform::bind("127.0.0.1:0".parse().unwrap()))
        .unwrap();
    let gw = platform.gateway.clone();
    rt.spawn(gw.serve(listener, std::future::pending()));
    let client = Client::new(&format!("http://{addr}"));

    let mut g = c.benchmark_group("invoke/warm");
    let gw = platform.gateway.clone();
    g.bench_function("in_process", |b| {
        b.iter(|| {
            rt.block_on(async {
                let req = http::Request::post("/invoke/hello")
                    .body(Full::new(Bytes::from_static(b"hi")))
                    .unwrap();
                let r = gw.handle(req).await;
                assert_eq!(r.status(), 200);
                black_box(r)
            })
        });
    });
    g.bench_function("http", |b| {
        b.iter(|| {
            rt.block_on(async {
                let r = client
                    .request(Method::POST, "/invoke/hello", Bytes::from_static(b"hi"))
                    .await
                    .unwrap();
                assert_eq!(r.status, 200);
                black_box(r)
            })
        });
    });
    g.finish();
    let launched = platform
        .node
        .stats()
        .launched
        .load(std::sync::atomic::Ordering::Relaxed);
    assert_eq!(launched, 1, "a warm benchmark must reuse one instance");
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    warm(&mut c);
}

criterion_main!(benches);
