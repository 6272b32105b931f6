//! Gateway ↔ node transport: the framed protocol of
//! `faas_gateway::cluster` against hyper HTTP/2, both on loopback over
//! one TCP connection, forwarding a small invocation (64-byte body, a
//! default `FunctionSpec`) to a node whose node gateway echoes the body.
//! Both carry the same bytes per request (the same JSON metadata and raw
//! body); only the transport differs.
//!
//! Cases:
//! - `cluster/latency/{framed,http2}`: one request at a time, round trip.
//! - `cluster/throughput64/{framed,http2}`: 64 requests in flight on the
//!   one connection; criterion reports requests/s.
//!
//! Besides criterion's report, the run prints to stderr the p50/p99 round
//! trip of 20,000 individually timed sequential requests per transport.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::convert::Infallible;
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use criterion::{Criterion, Throughput, criterion_main};
use faas_core::{
    BoxFuture, FunctionSpec, ImageRef, Invocation, InvocationId, InvocationResult, InvokeError,
    NodeGateway, NodeId, Placement, RuntimeKind, Scheduler, Timings, UnixMillis,
};
use faas_gateway::cluster::{
    AgentConfig, ClusterConfig, ClusterGateway, ClusterToken, NodeAgent, NodeTable,
    RemoteNodeGateway,
};
use faas_gateway::{FunctionGateway, GatewayConfig, Registry};
use http_body_util::{BodyExt, Full};

const BODY: &[u8] = &[b'x'; 64];

/// The node's node gateway: answers with the request body.
struct Echo(NodeId);

impl NodeGateway for Echo {
    fn node(&self) -> &NodeId {
        &self.0
    }
    fn invoke<'a>(
        &'a self,
        _f: Arc<FunctionSpec>,
        _p: &'a Placement,
        inv: Invocation,
    ) -> BoxFuture<'a, Result<InvocationResult, InvokeError>> {
        Box::pin(async move {
            Ok(InvocationResult {
                status: 200,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: inv.body,
                timings: Timings::default(),
                cold: false,
                logs: String::new(),
            })
        })
    }
}

fn spec() -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec::new(
        "hello",
        RuntimeKind::Native,
        // A directory the node sees (as the gateway's state directory).
        ImageRef::Dir(std::env::temp_dir()),
        "hello",
    ))
}

fn invocation(i: u64) -> Invocation {
    Invocation {
        id: InvocationId(i),
        function: "hello".into(),
        version: 1,
        headers: vec![("content-type".into(), "text/plain".into())],
        body: BODY.to_vec(),
        deadline: UnixMillis::now().after(Duration::from_secs(30)),
        trace_id: "4bf92f3577b34da6a3ce929d0e0e4736".into(),
    }
}

/// The framed transport: a real `ClusterGateway` and `NodeAgent`.
async fn framed(state: &std::path::Path) -> (RemoteNodeGateway, Placement) {
    let scheduler = Arc::new(faas_sched::LocalScheduler::new());
    let table = Arc::new(NodeTable::new());
    let token = ClusterToken::generate().unwrap();
    let cluster = ClusterGateway::new(scheduler.clone(), table, ClusterConfig::new(token.clone()));
    let gateway = Arc::new(FunctionGateway::new(
        Arc::new(Registry::open(state).unwrap()),
        scheduler.clone() as Arc<dyn Scheduler>,
        GatewayConfig::default(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cluster.clone().serve(gateway, l, std::future::pending()));
    let node = NodeId("n1".into());
    let agent = NodeAgent::new(
        AgentConfig::new(addr.to_string(), "n1", token),
        Arc::new(Echo(node.clone())),
        None,
    );
    tokio::spawn(agent.run(|_| {}));
    loop {
        if let Some(g) = cluster.node_gateway("n1") {
            let p = Placement {
                node,
                slot: 0,
                function: "hello".into(),
            };
            return (g, p);
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The metadata the framed protocol sends with `Invoke`, as JSON, sent
/// and parsed the same way (typed, no intermediate `Value`).
#[derive(serde::Serialize, serde::Deserialize)]
struct InvokeMeta {
    spec: FunctionSpec,
    invocation: u64,
    headers: Vec<(String, String)>,
    trace_id: String,
    timeout_ms: u64,
}

/// The metadata of `Result`.
#[derive(serde::Serialize, serde::Deserialize)]
struct ResultMeta {
    status: u16,
    headers: Vec<(String, String)>,
    timings: Timings,
    cold: bool,
}

fn meta(spec: &FunctionSpec, inv: &Invocation) -> Vec<u8> {
    serde_json::to_vec(&InvokeMeta {
        spec: spec.clone(),
        invocation: inv.id.0,
        headers: inv.headers.clone(),
        trace_id: inv.trace_id.clone(),
        timeout_ms: 30_000,
    })
    .unwrap()
}

fn split(b: &[u8]) -> (&[u8], &[u8]) {
    let n = u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize;
    (&b[4..4 + n], &b[4 + n..])
}

fn join(meta: &[u8], body: &[u8]) -> Bytes {
    let mut v = Vec::with_capacity(4 + meta.len() + body.len());
    v.extend_from_slice(&(meta.len() as u32).to_le_bytes());
    v.extend_from_slice(meta);
    v.extend_from_slice(body);
    Bytes::from(v)
}

type H2 = hyper::client::conn::http2::SendRequest<Full<Bytes>>;

/// The HTTP/2 transport: a hyper HTTP/2 server in front of the same echo
/// node gateway, one client connection.
async fn http2() -> H2 {
    use hyper_util::rt::{TokioExecutor, TokioIo};
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    let echo = Arc::new(Echo(NodeId("n1".into())));
    tokio::spawn(async move {
        loop {
            let (s, _) = l.accept().await.unwrap();
            s.set_nodelay(true).unwrap();
            let echo = echo.clone();
            let svc =
                hyper::service::service_fn(move |req: hyper::Request<hyper::body::Incoming>| {
                    let echo = echo.clone();
                    async move {
                        let b = req.into_body().collect().await.unwrap().to_bytes();
                        let (m, body) = split(&b);
                        let m: InvokeMeta = serde_json::from_slice(m).unwrap();
                        let spec = m.spec;
                        let inv = Invocation {
                            id: InvocationId(m.invocation),
                            function: spec.name.clone(),
                            version: spec.version,
                            headers: m.headers,
                            body: body.to_vec(),
                            deadline: UnixMillis::now().after(Duration::from_millis(m.timeout_ms)),
                            trace_id: m.trace_id,
                        };
                        let p = Placement {
                            node: echo.0.clone(),
                            slot: 0,
                            function: spec.name.clone(),
                        };
                        let r = echo.invoke(Arc::new(spec), &p, inv).await.unwrap();
                        let meta = serde_json::to_vec(&ResultMeta {
                            status: r.status,
                            headers: r.headers,
                            timings: r.timings,
                            cold: r.cold,
                        })
                        .unwrap();
                        Ok::<_, Infallible>(hyper::Response::new(Full::new(join(&meta, &r.body))))
                    }
                });
            tokio::spawn(
                hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(s), svc),
            );
        }
    });
    let s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.set_nodelay(true).unwrap();
    let (send, conn) = hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(s))
        .await
        .unwrap();
    tokio::spawn(conn);
    send
}

async fn call_framed(g: &RemoteNodeGateway, p: &Placement, spec: &Arc<FunctionSpec>, i: u64) {
    let r = g.invoke(spec.clone(), p, invocation(i)).await.unwrap();
    assert_eq!(r.body, BODY);
}

async fn call_h2(mut h: H2, spec: &FunctionSpec, i: u64) {
    let inv = invocation(i);
    let req = hyper::Request::post("http://n1/invoke")
        .body(Full::new(join(&meta(spec, &inv), &inv.body)))
        .unwrap();
    let r = h.send_request(req).await.unwrap();
    let b = r.into_body().collect().await.unwrap().to_bytes();
    let (m, body) = split(&b);
    let _: ResultMeta = serde_json::from_slice(m).unwrap();
    assert_eq!(body, BODY);
}

fn percentiles(mut v: Vec<Duration>) -> (Duration, Duration) {
    v.sort();
    (v[v.len() / 2], v[v.len() * 99 / 100])
}

fn transport(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let state = tempfile::tempdir().unwrap();
    let (fg, fp) = rt.block_on(framed(state.path()));
    let h2 = rt.block_on(http2());
    let spec = spec();

    // Individually timed round trips, for p50/p99.
    let n = 20_000;
    let framed_lat = rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            call_framed(&fg, &fp, &spec, i + 1).await;
            v.push(t.elapsed());
        }
        v
    });
    let h2_lat = rt.block_on(async {
        let mut v = Vec::with_capacity(n);
        for i in 0..n as u64 {
            let t = Instant::now();
            call_h2(h2.clone(), &spec, i + 1).await;
            v.push(t.elapsed());
        }
        v
    });
    let (f50, f99) = percentiles(framed_lat);
    let (h50, h99) = percentiles(h2_lat);
    eprintln!(
        "cluster round trip, {n} sequential requests: framed p50 {f50:?} p99 {f99:?}; http2 p50 {h50:?} p99 {h99:?}"
    );

    let mut g = c.benchmark_group("cluster/latency");
    g.measurement_time(Duration::from_secs(4));
    g.bench_function("framed", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            rt.block_on(call_framed(&fg, &fp, &spec, i))
        })
    });
    g.bench_function("http2", |b| {
        let mut i = 0;
        b.iter(|| {
            i += 1;
            rt.block_on(call_h2(h2.clone(), &spec, i))
        })
    });
    g.finish();

    const IN_FLIGHT: u64 = 64;
    let mut g = c.benchmark_group("cluster/throughput64");
    g.measurement_time(Duration::from_secs(4));
    g.throughput(Throughput::Elements(IN_FLIGHT));
    g.bench_function("framed", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..IN_FLIGHT)
                    .map(|i| {
                        let (fg, fp, spec) = (fg.clone(), fp.clone(), spec.clone());
                        tokio::spawn(async move { call_framed(&fg, &fp, &spec, i + 1).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.bench_function("http2", |b| {
        b.iter(|| {
            rt.block_on(async {
                let tasks: Vec<_> = (0..IN_FLIGHT)
                    .map(|i| {
                        let (h2, spec) = (h2.clone(), spec.clone());
                        tokio::spawn(async move { call_h2(h2, &spec, i + 1).await })
                    })
                    .collect();
                for t in tasks {
                    t.await.unwrap();
                }
            })
        })
    });
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    transport(&mut c);
}

criterion_main!(benches);
