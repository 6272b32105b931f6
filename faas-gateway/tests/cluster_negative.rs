//! The gateway side of node connections against broken and hostile
//! peers, written as raw TCP clients that build frames by hand (so the
//! wire format is checked too): every one is disconnected, the requests in
//! flight on it fail at once with `NodeLost` naming the node, and the
//! gateway keeps serving the real node agents. Peers that do not prove
//! the cluster token (nothing, garbage, a `Hello` without the handshake, a
//! wrong, reflected or replayed proof, an agent with another token) are
//! dropped before they can join; a fake gateway cannot make a node join it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::Arc;
use std::time::Duration;

use common::{Raw, frame, gateway_auth, node_auth, proof, read};
use faas_core::{
    BoxFuture, FunctionSpec, ImageRef, Invocation, InvocationId, InvocationResult, InvokeError,
    NodeGateway, NodeId, Placement, RuntimeKind, Scheduler, Timings, UnixMillis,
};
use faas_gateway::cluster::{
    AgentConfig, AgentError, ClusterConfig, ClusterGateway, ClusterToken, NodeAgent, NodeTable,
    RemoteNodeGateway,
};
use faas_gateway::{FunctionGateway, GatewayConfig, Registry};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

struct Gw {
    token: [u8; 32],
    cluster: Arc<ClusterGateway>,
    table: Arc<NodeTable>,
    addr: std::net::SocketAddr,
    _state: tempfile::TempDir,
}

const TOKEN: [u8; 32] = *b"a test cluster token, 32 bytes!!";

async fn gateway(heartbeat_timeout: Duration) -> Gw {
    gateway_with(heartbeat_timeout, 256).await
}

async fn gateway_with(heartbeat_timeout: Duration, max_handshakes: usize) -> Gw {
    let state = tempfile::tempdir().unwrap();
    let scheduler = Arc::new(faas_sched::PoolScheduler::new(Default::default()));
    let table = Arc::new(NodeTable::new());
    let cluster = ClusterGateway::new(
        scheduler.clone(),
        table.clone(),
        ClusterConfig {
            heartbeat: Duration::from_millis(50),
            heartbeat_timeout,
            max_handshakes,
            ..ClusterConfig::new(ClusterToken::from_bytes(TOKEN))
        },
    );
    let gateway = Arc::new(FunctionGateway::new(
        Arc::new(Registry::open(state.path()).unwrap()),
        scheduler as Arc<dyn Scheduler>,
        GatewayConfig::default(),
    ));
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(cluster.clone().serve(gateway, l, std::future::pending()));
    Gw {
        token: TOKEN,
        cluster,
        table,
        addr,
        _state: state,
    }
}

fn hello(name: &str) -> Vec<u8> {
    frame(
        0x01,
        0,
        format!(r#"{{"protocol":2,"name":"{name}","slots":4,"memory_mb":1024}}"#).as_bytes(),
    )
}

/// A raw peer that authenticated with the right token.
async fn authed(gw: &Gw) -> Raw {
    let mut s = TcpStream::connect(gw.addr).await.unwrap();
    let (nn, ng) = node_auth(&mut s, &gw.token, |nn, ng| {
        proof(&gw.token, "node", nn, ng).to_vec()
    })
    .await;
    Raw::new(s, &gw.token, "node", &nn, &ng)
}

/// Whether the gateway closes `s` (reads EOF) within a few seconds.
async fn closed(s: &mut TcpStream) -> bool {
    let mut buf = [0u8; 4096];
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match s.read(&mut buf).await {
                Ok(0) | Err(_) => return true,
                Ok(_) => continue,
            }
        }
    })
    .await
    .unwrap_or(false)
}

/// A raw node that joined as `name` (Welcome read).
async fn raw_node(gw: &Gw, name: &str) -> Raw {
    let mut s = authed(gw).await;
    s.send(&hello(name)).await;
    let (kind, _, _) = s.recv().await.unwrap();
    assert_eq!(kind, 0x81, "Welcome");
    s
}

async fn node_gateway(gw: &Gw, name: &str) -> RemoteNodeGateway {
    for _ in 0..500 {
        if let Some(g) = gw.cluster.node_gateway(name) {
            return g;
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    panic!("node {name} never joined")
}

fn spec() -> Arc<FunctionSpec> {
    Arc::new(FunctionSpec::new(
        "f",
        RuntimeKind::Native,
        ImageRef::Dir(std::env::temp_dir()),
        "f",
    ))
}

fn inv(body: &[u8]) -> Invocation {
    Invocation {
        id: InvocationId(1),
        function: "f".into(),
        version: 1,
        headers: vec![],
        body: body.to_vec(),
        deadline: UnixMillis::now().after(Duration::from_secs(30)),
        trace_id: "t".into(),
    }
}

fn placement(node: &str) -> Placement {
    Placement {
        node: NodeId(node.into()),
        slot: 0,
        function: "f".into(),
    }
}

/// Starts one invocation on `node`; returns its task.
fn invoke(
    g: RemoteNodeGateway,
    node: &str,
) -> tokio::task::JoinHandle<Result<InvocationResult, InvokeError>> {
    let p = placement(node);
    tokio::spawn(async move { g.invoke(spec(), &p, inv(b"x")).await })
}

fn assert_lost(r: Result<InvocationResult, InvokeError>, node: &str, why: &str) {
    match r {
        Err(InvokeError::NodeLost { node: n, reason }) => {
            assert_eq!(n.0, node);
            assert!(reason.contains(why), "{reason}");
        }
        other => panic!("expected NodeLost, got {other:?}"),
    }
}

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// The node gateway of a real agent: echoes the body after `delay`.
struct Echo(NodeId, Duration);

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
            tokio::time::sleep(self.1).await;
            if inv.body == b"fail" {
                return Err(InvokeError::Function {
                    status: 418,
                    message: "teapot".into(),
                });
            }
            Ok(InvocationResult {
                status: 200,
                headers: vec![],
                body: inv.body,
                timings: Timings::default(),
                cold: true,
                logs: String::new(),
            })
        })
    }
}

fn agent(gw: &Gw, name: &str, delay: Duration) {
    let a = NodeAgent::new(
        AgentConfig::new(
            gw.addr.to_string(),
            name,
            ClusterToken::from_bytes(gw.token),
        ),
        Arc::new(Echo(NodeId(name.into()), delay)),
        None,
    );
    tokio::spawn(a.run(|_| {}));
}

#[test]
fn garbage_and_bad_hellos_are_disconnected_and_real_nodes_still_join() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(2)).await;
        // Not a frame at all.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n").await.unwrap();
        assert!(closed(&mut s).await);
        // A Hello longer than the handshake's limit (far below the limit
        // of frames from nodes that joined).
        let mut s = authed(&gw).await;
        let mut f = hello("big");
        f[4..8].copy_from_slice(&(1u32 << 20).to_le_bytes());
        s.send(&f).await;
        assert!(closed(&mut s.s).await);
        // A gateway-only kind as the first frame.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&frame(0x83, 1, b"")).await.unwrap();
        assert!(closed(&mut s).await);
        // A bad name is refused with the reason.
        let mut s = authed(&gw).await;
        s.send(&hello("Bad Name")).await;
        let (kind, _, p) = s.recv().await.unwrap();
        assert_eq!(kind, 0x82, "Reject");
        let msg: serde_json::Value = serde_json::from_slice(&p).unwrap();
        let msg = msg["message"].as_str().unwrap();
        assert!(msg.contains("node name \"Bad Name\" is invalid"), "{msg}");
        assert!(closed(&mut s.s).await);
        // Zero slots too.
        let mut s = authed(&gw).await;
        s.send(&frame(
            0x01,
            0,
            br#"{"protocol":2,"name":"z","slots":0,"memory_mb":1}"#,
        ))
        .await;
        assert_eq!(s.recv().await.unwrap().0, 0x82);
        assert!(gw.cluster.connected().is_empty());

        // A real agent joins and serves, many requests in flight at once on
        // its one connection, each answer matched to its request.
        agent(&gw, "good", Duration::from_millis(50));
        let g = node_gateway(&gw, "good").await;
        let tasks: Vec<_> = (0..32u32)
            .map(|i| {
                let g = g.clone();
                tokio::spawn(async move {
                    let body = format!("request {i}");
                    let r = g.invoke(spec(), &placement("good"), inv(body.as_bytes())).await;
                    (body, r)
                })
            })
            .collect();
        for t in tasks {
            let (body, r) = t.await.unwrap();
            assert_eq!(r.unwrap().body, body.as_bytes());
        }
        let r = g.invoke(spec(), &placement("good"), inv(b"fail")).await;
        assert!(
            matches!(r, Err(InvokeError::Function { status: 418, ref message }) if message == "teapot"),
            "{r:?}"
        );
        let v = gw.table.list();
        assert_eq!(v.len(), 1);
        assert_eq!((v[0].served, v[0].in_flight), (33, 0));
    });
}

#[test]
fn a_dropped_connection_fails_every_request_in_flight_at_once() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(30)).await;
        let mut s = raw_node(&gw, "n1").await;
        let g = node_gateway(&gw, "n1").await;
        let a = invoke(g.clone(), "n1");
        let b = invoke(g.clone(), "n1");
        // Both requests reach the node, with distinct ids.
        let (k1, id1, _) = s.recv().await.unwrap();
        let (k2, id2, _) = s.recv().await.unwrap();
        assert_eq!((k1, k2), (0x83, 0x83));
        assert_ne!(id1, id2);
        drop(s);
        let lost = tokio::time::timeout(Duration::from_secs(5), async {
            (a.await.unwrap(), b.await.unwrap())
        })
        .await
        .expect("requests failed at once, long before their deadline");
        assert_lost(lost.0, "n1", "connection closed by the node");
        assert_lost(lost.1, "n1", "connection closed by the node");
        // New requests on the lost node fail at once too.
        assert_lost(invoke(g, "n1").await.unwrap(), "n1", "closed");
        let v = gw.table.list();
        assert_eq!(v[0].state, "lost");
        assert_eq!(v[0].failed, 3);
    });
}

#[test]
fn answers_to_requests_never_sent_are_a_protocol_violation() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(30)).await;
        let mut s = raw_node(&gw, "liar").await;
        let g = node_gateway(&gw, "liar").await;
        let a = invoke(g, "liar");
        let (_, id, _) = s.recv().await.unwrap();
        s.send(&frame(
            0x04,
            id + 100,
            br#"{"status":500,"code":"x","message":"m"}"#,
        ))
        .await;
        assert_lost(a.await.unwrap(), "liar", "protocol violation");
        assert!(closed(&mut s.s).await);
    });
}

#[test]
fn malformed_answers_and_wrong_kinds_disconnect_the_node() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(30)).await;
        for (name, bad) in [
            // A Result whose meta length points past its payload.
            ("m1", frame(0x03, 1, &[200, 0, 0, 0, b'{'])),
            // An Error whose JSON is not an error.
            ("m2", frame(0x04, 1, b"[1,2,3]")),
            // A Prepared answer to an Invoke.
            ("m3", frame(0x05, 1, br#"{"sys":{"what":"x"}}"#)),
            // A second Hello.
            ("m4", hello("m4")),
            // Reserved flags.
            ("m5", {
                let mut f = frame(0x02, 0, b"");
                f[3] = 0x80;
                f
            }),
        ] {
            let mut s = raw_node(&gw, name).await;
            let g = node_gateway(&gw, name).await;
            let a = invoke(g, name);
            let (_, id, _) = s.recv().await.unwrap();
            assert_eq!(id, 1);
            s.send(&bad).await;
            assert_lost(a.await.unwrap(), name, "protocol violation");
            assert!(closed(&mut s.s).await, "{name}");
        }
    });
}

#[test]
fn a_silent_node_is_disconnected_after_the_heartbeat_timeout() {
    rt().block_on(async {
        let gw = gateway(Duration::from_millis(300)).await;
        let mut s = raw_node(&gw, "mute").await;
        let g = node_gateway(&gw, "mute").await;
        let a = invoke(g, "mute");
        assert_lost(a.await.unwrap(), "mute", "no heartbeat");
        assert!(closed(&mut s.s).await);
        // A node that sends heartbeats stays.
        agent(&gw, "alive", Duration::ZERO);
        let g = node_gateway(&gw, "alive").await;
        tokio::time::sleep(Duration::from_millis(800)).await;
        let r = g.invoke(spec(), &placement("alive"), inv(b"hi")).await;
        assert_eq!(r.unwrap().body, b"hi");
    });
}

#[test]
fn a_node_that_joins_again_replaces_its_old_connection() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(30)).await;
        let mut old = raw_node(&gw, "n1").await;
        let g_old = node_gateway(&gw, "n1").await;
        let a = invoke(g_old, "n1");
        old.recv().await.unwrap();
        agent(&gw, "n1", Duration::ZERO);
        assert_lost(a.await.unwrap(), "n1", "replaced by a new connection");
        assert!(closed(&mut old.s).await);
        let g = node_gateway(&gw, "n1").await;
        let r = g.invoke(spec(), &placement("n1"), inv(b"again")).await;
        assert_eq!(r.unwrap().body, b"again");
        assert_eq!(gw.cluster.connected(), vec!["n1".to_owned()]);
    });
}

#[test]
fn an_agent_whose_gateway_is_unreachable_retries_and_says_so() {
    rt().block_on(async {
        // A port with nothing listening.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let e2 = events.clone();
        let a = NodeAgent::new(
            AgentConfig::new(addr.to_string(), "n1", ClusterToken::from_bytes(TOKEN)),
            Arc::new(Echo(NodeId("n1".into()), Duration::ZERO)),
            None,
        );
        let task = tokio::spawn(a.run(move |e| e2.lock().push(format!("{e:?}"))));
        tokio::time::sleep(Duration::from_millis(500)).await;
        task.abort();
        let ev = events.lock();
        assert!(ev.len() >= 2, "{ev:?}");
        assert!(
            ev[0].contains("Unreachable") && ev[0].contains(&addr.to_string()),
            "{ev:?}"
        );
    });
}

#[test]
fn an_agent_reconnects_when_the_gateway_goes_silent() {
    rt().block_on(async {
        // A gateway that welcomes the node, then never answers again.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let e2 = events.clone();
        let a = NodeAgent::new(
            AgentConfig::new(addr.to_string(), "n1", ClusterToken::from_bytes(TOKEN)),
            Arc::new(Echo(NodeId("n1".into()), Duration::ZERO)),
            None,
        );
        let task = tokio::spawn(a.run(move |e| e2.lock().push(format!("{e:?}"))));
        let (mut first, _) = l.accept().await.unwrap();
        let good = |nn: &[u8; 32], ng: &[u8; 32]| proof(&TOKEN, "gateway", nn, ng);
        let (next, nn, ng) = gateway_auth(&mut first, good).await;
        let (kind, _, p) = next.unwrap();
        assert_eq!(kind, 0x08, "AuthProof");
        assert_eq!(p.len(), 32);
        let mut first = Raw::new(first, &TOKEN, "gateway", &nn, &ng);
        assert_eq!(first.recv().await.unwrap().0, 0x01, "Hello");
        first.send(&frame(0x81, 0, br#"{"heartbeat_ms":50}"#)).await;
        // Heartbeats arrive, unanswered; the node gives up and joins again.
        assert_eq!(first.recv().await.unwrap().0, 0x02, "Heartbeat");
        let (mut second, _) = tokio::time::timeout(Duration::from_secs(10), l.accept())
            .await
            .expect("the node reconnects")
            .unwrap();
        assert_eq!(read(&mut second).await.unwrap().0, 0x07, "Auth again");
        task.abort();
        let ev = events.lock();
        assert!(
            ev.iter().any(|e| e.contains("no answer from the gateway")),
            "{ev:?}"
        );
    });
}

/// Whether `s` is still open: nothing to read and no end of stream yet.
async fn still_open(s: &mut TcpStream) -> bool {
    let mut b = [0u8; 1];
    tokio::time::timeout(Duration::from_millis(50), s.read(&mut b))
        .await
        .is_err()
}

/// The `message` of a `Reject` read from `s`.
async fn rejected(s: &mut TcpStream) -> String {
    let (kind, _, p) = read(s).await.expect("an answer");
    assert_eq!(kind, 0x82, "Reject");
    let v: serde_json::Value = serde_json::from_slice(&p).unwrap();
    v["message"].as_str().unwrap().to_owned()
}

#[test]
fn peers_that_do_not_prove_the_token_are_dropped_before_they_join() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(30)).await;
        // A peer that connects and says nothing does not hold up others:
        // a real node joins while it waits, then it is dropped (~2 s).
        let mut mute = TcpStream::connect(gw.addr).await.unwrap();
        agent(&gw, "good", Duration::ZERO);
        let g = node_gateway(&gw, "good").await;
        assert!(still_open(&mut mute).await, "dropped too early");
        assert!(closed(&mut mute).await, "a silent peer is dropped");

        // A valid-looking Hello without the handshake.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&hello("sneaky")).await.unwrap();
        let m = rejected(&mut s).await;
        assert!(m.contains("Hello before authenticating"), "{m}");
        assert!(closed(&mut s).await);
        // A node of protocol 1 (no token) is told what to do.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&frame(
            0x01,
            0,
            br#"{"protocol":1,"name":"old","slots":4,"memory_mb":1024}"#,
        ))
        .await
        .unwrap();
        let m = rejected(&mut s).await;
        assert!(
            m.contains("protocol 1") && m.contains("cluster token"),
            "{m}"
        );
        // Auth of another protocol version.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let mut p = 3u32.to_le_bytes().to_vec();
        p.extend_from_slice(&[0; 32]);
        s.write_all(&frame(0x07, 0, &p)).await.unwrap();
        let m = rejected(&mut s).await;
        assert!(m.contains("node speaks protocol 3, this gateway 2"), "{m}");
        // Garbage after a valid Auth, in place of the proof.
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        node_auth(&mut s, &gw.token, |_, _| b"not a proof".to_vec()).await;
        assert_eq!(rejected(&mut s).await, "bad cluster token");
        assert!(closed(&mut s).await);

        // Proofs that are not the node's for this session: another token,
        // the gateway's own proof reflected back, a Hello in its place.
        let other = [7u8; 32];
        for bad in [
            Box::new(|nn: &[u8; 32], ng: &[u8; 32]| proof(&other, "node", nn, ng).to_vec())
                as Box<dyn FnOnce(&[u8; 32], &[u8; 32]) -> Vec<u8>>,
            Box::new(|nn: &[u8; 32], ng: &[u8; 32]| proof(&TOKEN, "gateway", nn, ng).to_vec()),
            Box::new(|nn: &[u8; 32], ng: &[u8; 32]| proof(&TOKEN, "node", ng, nn).to_vec()),
        ] {
            let mut s = TcpStream::connect(gw.addr).await.unwrap();
            node_auth(&mut s, &gw.token, bad).await;
            s.write_all(&hello("intruder")).await.unwrap();
            assert_eq!(rejected(&mut s).await, "bad cluster token");
            assert!(closed(&mut s).await);
        }
        // Replay: a proof that worked, sent again with the same node nonce,
        // is refused (the gateway's nonce differs each time).
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        let (nn, ng) = node_auth(&mut s, &gw.token, |nn, ng| {
            proof(&TOKEN, "node", nn, ng).to_vec()
        })
        .await;
        let recorded = proof(&TOKEN, "node", &nn, &ng);
        drop(s);
        let mut s = TcpStream::connect(gw.addr).await.unwrap();
        s.write_all(&common::auth(&nn)).await.unwrap();
        let (kind, _, p) = read(&mut s).await.unwrap();
        assert_eq!(kind, 0x89);
        assert_ne!(p[..32], ng, "a fresh gateway nonce");
        s.write_all(&frame(0x08, 0, &recorded)).await.unwrap();
        assert_eq!(rejected(&mut s).await, "bad cluster token");

        // An agent with another token finds that the gateway cannot prove
        // it (and the gateway, that the agent cannot): it says why and stops.
        let a = NodeAgent::new(
            AgentConfig::new(
                gw.addr.to_string(),
                "intruder",
                ClusterToken::from_bytes(other),
            ),
            Arc::new(Echo(NodeId("intruder".into()), Duration::ZERO)),
            None,
        );
        let r = tokio::time::timeout(Duration::from_secs(5), a.run(|_| {}))
            .await
            .expect("the agent stops");
        match r {
            Err(e @ AgentError::Unauthenticated { .. }) => {
                let e = e.to_string();
                assert!(
                    e.contains("bad cluster token") && e.contains("intruder"),
                    "{e}"
                );
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
        // None of them joined; the real node served throughout.
        assert_eq!(gw.cluster.connected(), vec!["good".to_owned()]);
        assert_eq!(gw.table.list().len(), 1);
        let r = g.invoke(spec(), &placement("good"), inv(b"still")).await;
        assert_eq!(r.unwrap().body, b"still");
    });
}

#[test]
fn a_fake_gateway_cannot_make_a_node_join() {
    rt().block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let e2 = events.clone();
        let a = NodeAgent::new(
            AgentConfig::new(addr.to_string(), "n1", ClusterToken::from_bytes(TOKEN)),
            Arc::new(Echo(NodeId("n1".into()), Duration::ZERO)),
            None,
        );
        let task = tokio::spawn(a.run(move |e| e2.lock().push(format!("{e:?}"))));
        // A gateway that skips the handshake: the node does not believe
        // its Welcome nor run its Invoke; it hangs up (and tries again).
        let (mut s, _) = l.accept().await.unwrap();
        assert_eq!(read(&mut s).await.unwrap().0, 0x07, "Auth");
        s.write_all(&frame(0x81, 0, br#"{"heartbeat_ms":50}"#))
            .await
            .unwrap();
        assert!(closed(&mut s).await);
        // A gateway that does not know the token.
        let (mut s, _) = tokio::time::timeout(Duration::from_secs(5), l.accept())
            .await
            .unwrap()
            .unwrap();
        let other = [7u8; 32];
        let (next, _, _) = gateway_auth(&mut s, |nn, ng| proof(&other, "gateway", nn, ng)).await;
        // Its proof (useless for any other session), then nothing: no Hello.
        let (kind, _, _) = next.unwrap();
        assert_eq!(kind, 0x08, "AuthProof");
        assert!(closed(&mut s).await, "the node hung up");
        let r = tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .expect("the node gives up")
            .unwrap();
        match r {
            Err(e @ AgentError::Unauthenticated { .. }) => {
                let e = e.to_string();
                assert!(
                    e.contains(&format!("gateway {addr} could not prove the cluster token")),
                    "{e}"
                );
            }
            other => panic!("expected Unauthenticated, got {other:?}"),
        }
        let ev = events.lock();
        assert!(!ev.iter().any(|e| e.contains("Joined")), "{ev:?}");
    });
}

#[test]
fn frames_with_a_wrong_missing_or_replayed_mac_disconnect_the_node() {
    rt().block_on(async {
        let gw = gateway(Duration::from_secs(30)).await;
        let answer = br#"{"status":500,"code":"x","message":"m"}"#;
        // An answer whose MAC was altered (as by someone on the path).
        let mut s = raw_node(&gw, "t1").await;
        let a = invoke(node_gateway(&gw, "t1").await, "t1");
        let (_, id, _) = s.recv().await.unwrap();
        let f = frame(0x04, id, answer);
        let mut t = [0u8; 16];
        t.copy_from_slice(&blake3::hash(&f).as_bytes()[..16]);
        s.s.write_all(&[&f[..], &t[..]].concat()).await.unwrap();
        assert_lost(a.await.unwrap(), "t1", "does not match its MAC");
        assert!(closed(&mut s.s).await);
        // Frames without a MAC (as injected by someone who cannot compute one).
        let mut s = raw_node(&gw, "t2").await;
        let a = invoke(node_gateway(&gw, "t2").await, "t2");
        let (_, id, _) = s.recv().await.unwrap();
        let f = frame(0x04, id, answer);
        s.s.write_all(&[&f[..], &f[..]].concat()).await.unwrap();
        assert_lost(a.await.unwrap(), "t2", "does not match its MAC");
        // A frame and its MAC sent twice (a replay).
        let mut s = raw_node(&gw, "t3").await;
        let a = invoke(node_gateway(&gw, "t3").await, "t3");
        let (_, id, _) = s.recv().await.unwrap();
        let hb = s.seal(&frame(0x02, 0, b""));
        s.s.write_all(&hb).await.unwrap();
        s.s.write_all(&hb).await.unwrap();
        assert_lost(
            a.await.unwrap(),
            "t3",
            "Heartbeat frame does not match its MAC",
        );
        assert!(id > 0);
        // The real node was never affected.
        agent(&gw, "good", Duration::ZERO);
        let g = node_gateway(&gw, "good").await;
        assert_eq!(
            g.invoke(spec(), &placement("good"), inv(b"ok"))
                .await
                .unwrap()
                .body,
            b"ok"
        );
    });
}

/// A node believes only frames with the MAC of its session: one altered
/// on the way ends the connection and is not run.
#[test]
fn a_node_drops_a_gateway_frame_whose_mac_does_not_match() {
    rt().block_on(async {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let events = Arc::new(parking_lot::Mutex::new(Vec::new()));
        let e2 = events.clone();
        let a = NodeAgent::new(
            AgentConfig::new(addr.to_string(), "n1", ClusterToken::from_bytes(TOKEN)),
            Arc::new(Echo(NodeId("n1".into()), Duration::ZERO)),
            None,
        );
        let task = tokio::spawn(a.run(move |e| e2.lock().push(format!("{e:?}"))));
        let (mut s, _) = l.accept().await.unwrap();
        let (next, nn, ng) = gateway_auth(&mut s, |nn, ng| proof(&TOKEN, "gateway", nn, ng)).await;
        assert_eq!(next.unwrap().0, 0x08);
        let mut g = Raw::new(s, &TOKEN, "gateway", &nn, &ng);
        assert_eq!(g.recv().await.unwrap().0, 0x01, "Hello");
        g.send(&frame(0x81, 0, br#"{"heartbeat_ms":60000}"#)).await;
        // An Invoke whose MAC is wrong.
        let meta = serde_json::to_vec(&serde_json::json!({
            "spec": *spec(), "invocation": 1, "headers": [], "trace_id": "t", "timeout_ms": 5000,
        }))
        .unwrap();
        let mut p = (meta.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&meta);
        let mut bad = g.seal(&frame(0x83, 1, &p));
        let last = bad.len() - 1;
        bad[last] ^= 1;
        g.s.write_all(&bad).await.unwrap();
        assert!(closed(&mut g.s).await, "the node hung up");
        task.abort();
        let ev = events.lock();
        assert!(
            ev.iter()
                .any(|e| e.contains("Invoke frame does not match its MAC")),
            "{ev:?}"
        );
    });
}

/// Peers that have not authenticated hold at most `max_handshakes` slots:
/// more are closed at once, and the slots free up when they are dropped.
#[test]
fn connections_authenticating_at_once_are_bounded() {
    rt().block_on(async {
        let gw = gateway_with(Duration::from_secs(30), 2).await;
        let mut mute: Vec<TcpStream> = Vec::new();
        for _ in 0..2 {
            mute.push(TcpStream::connect(gw.addr).await.unwrap());
        }
        // Both are waiting in their handshake: the third is turned away.
        tokio::time::sleep(Duration::from_millis(100)).await;
        let mut third = TcpStream::connect(gw.addr).await.unwrap();
        let mut b = [0u8; 1];
        let r = tokio::time::timeout(Duration::from_millis(1500), third.read(&mut b)).await;
        assert!(matches!(r, Ok(Ok(0) | Err(_))), "not closed at once: {r:?}");
        for m in &mut mute {
            assert!(still_open(m).await);
        }
        // Once the silent ones are dropped (2 s), a node joins.
        for m in &mut mute {
            assert!(closed(m).await);
        }
        agent(&gw, "later", Duration::ZERO);
        node_gateway(&gw, "later").await;
    });
}
