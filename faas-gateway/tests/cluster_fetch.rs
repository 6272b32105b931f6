//! Nodes without shared storage fetch a version's files from the gateway
//! over their connection, once, checked against its digest; a gateway
//! that sends files that do not match is not believed. Deleting a
//! function removes the copies (at once, or when the node joins again).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::frame;

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use faas_core::{
    BoxFuture, FunctionSpec, ImageRef, Invocation, InvocationId, InvocationResult, InvokeError,
    NodeGateway, NodeId, Placement, RuntimeKind, Scheduler, Timings, UnixMillis,
};
use faas_gateway::cluster::{
    AgentConfig, ClusterConfig, ClusterGateway, ClusterToken, NodeAgent, NodeTable,
};
use faas_gateway::{FunctionGateway, GatewayConfig, Registry};

/// Answers with the path of the function's files and its `data.txt`.
struct Cat(NodeId);

impl NodeGateway for Cat {
    fn node(&self) -> &NodeId {
        &self.0
    }
    fn invoke<'a>(
        &'a self,
        f: Arc<FunctionSpec>,
        _p: &'a Placement,
        _inv: Invocation,
    ) -> BoxFuture<'a, Result<InvocationResult, InvokeError>> {
        Box::pin(async move {
            let root = f.image.path();
            let data = std::fs::read_to_string(root.join("data.txt")).unwrap_or_default();
            Ok(InvocationResult {
                status: 200,
                headers: vec![],
                body: format!("{}\n{data}", root.display()).into_bytes(),
                timings: Timings::default(),
                cold: true,
                logs: String::new(),
            })
        })
    }
}

const TOKEN: [u8; 32] = [42; 32];

fn inv() -> Invocation {
    Invocation {
        id: InvocationId(1),
        function: "f".into(),
        version: 1,
        headers: vec![],
        body: vec![],
        deadline: UnixMillis::now().after(Duration::from_secs(30)),
        trace_id: "t".into(),
    }
}

fn function_dir(dir: &Path) {
    std::fs::create_dir_all(dir.join("sub")).unwrap();
    std::fs::write(dir.join("data.txt"), "the function's data").unwrap();
    std::fs::write(dir.join("sub/more.txt"), "more").unwrap();
    std::fs::write(dir.join("run"), "#!/bin/sh\n").unwrap();
    std::fs::set_permissions(dir.join("run"), std::fs::Permissions::from_mode(0o755)).unwrap();
}

#[test]
fn a_node_fetches_a_version_once_into_its_cache() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let state = tempfile::tempdir().unwrap();
        let cache = tempfile::tempdir().unwrap();
        let src = state.path().join("src");
        function_dir(&src);
        let registry = Arc::new(Registry::open(&state.path().join("gw")).unwrap());
        let spec = registry
            .deploy(FunctionSpec::new(
                "f",
                RuntimeKind::Exec,
                ImageRef::Dir(src),
                "run",
            ))
            .unwrap();
        let scheduler = Arc::new(faas_sched::PoolScheduler::new(Default::default()));
        let cluster = ClusterGateway::new(
            scheduler.clone(),
            Arc::new(NodeTable::new()),
            ClusterConfig::new(ClusterToken::from_bytes(TOKEN)),
        );
        let gateway = Arc::new(FunctionGateway::new(
            registry.clone(),
            scheduler as Arc<dyn Scheduler>,
            GatewayConfig::default(),
        ));
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        tokio::spawn(
            cluster
                .clone()
                .serve(gateway.clone(), l, std::future::pending()),
        );
        let mut cfg = AgentConfig::new(addr.to_string(), "n1", ClusterToken::from_bytes(TOKEN));
        cfg.cache_dir = Some(cache.path().to_owned());
        cfg.always_fetch = true;
        // A copy of a function deleted while the node was away.
        std::fs::create_dir_all(cache.path().join("gone/1-ab/root")).unwrap();
        let agent = NodeAgent::new(cfg, Arc::new(Cat(NodeId("n1".into()))), None);
        tokio::spawn(agent.run(|_| {}));
        let g = loop {
            if let Some(g) = cluster.node_gateway("n1") {
                break g;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        };
        // Welcome lists the functions that exist: the node drops the rest.
        let mut dropped = false;
        for _ in 0..500 {
            if !cache.path().join("gone").exists() {
                dropped = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(dropped, "the node kept a copy of a deleted function");
        let p = Placement {
            node: NodeId("n1".into()),
            slot: 0,
            function: "f".into(),
        };
        // Concurrent first invocations share one fetch.
        let (a, b) = tokio::join!(
            g.invoke(spec.clone(), &p, inv()),
            g.invoke(spec.clone(), &p, inv())
        );
        for r in [a.unwrap(), b.unwrap()] {
            let text = String::from_utf8(r.body).unwrap();
            let (root, data) = text.split_once('\n').unwrap();
            assert!(Path::new(root).starts_with(cache.path()), "{root}");
            assert_eq!(data, "the function's data");
            assert_eq!(
                std::fs::read_to_string(Path::new(root).join("sub/more.txt")).unwrap(),
                "more"
            );
            let mode = std::fs::metadata(Path::new(root).join("run"))
                .unwrap()
                .permissions()
                .mode();
            assert_eq!(mode & 0o777, 0o755);
        }
        let versions: Vec<_> = std::fs::read_dir(cache.path().join("f")).unwrap().collect();
        assert_eq!(versions.len(), 1, "one copy, no leftovers: {versions:?}");

        // A version the gateway does not have.
        let mut gone = (*spec).clone();
        gone.version = 7;
        gone.image = ImageRef::Dir("/nonexistent/f/7-x/root".into());
        let e = g.invoke(Arc::new(gone), &p, inv()).await.unwrap_err();
        assert_eq!(e.http_status(), 503);
        assert!(e.to_string().contains("version 7 is not deployed"), "{e}");

        // Deleting the function on the gateway reaches the node: its copy
        // goes (the gateway does not wait for that).
        let del = |path: &str| {
            http::Request::delete(path)
                .body(http_body_util::Empty::<bytes::Bytes>::new())
                .unwrap()
        };
        assert_eq!(gateway.handle(del("/functions/f")).await.status(), 204);
        let mut gone = false;
        for _ in 0..500 {
            if !cache.path().join("f").exists() {
                gone = true;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert!(gone, "the node still has its copy of f");
        assert_eq!(gateway.handle(del("/functions/f")).await.status(), 404);
    });
}

#[test]
fn files_that_do_not_match_their_digest_are_refused() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        let cache = tempfile::tempdir().unwrap();
        // A gateway that lies about the files it sends.
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let mut cfg = AgentConfig::new(addr.to_string(), "n1", ClusterToken::from_bytes(TOKEN));
        cfg.cache_dir = Some(cache.path().to_owned());
        let agent = NodeAgent::new(cfg, Arc::new(Cat(NodeId("n1".into()))), None);
        tokio::spawn(agent.run(|_| {}));
        let (mut s, _) = l.accept().await.unwrap();
        let (next, nn, ng) =
            common::gateway_auth(&mut s, |nn, ng| common::proof(&TOKEN, "gateway", nn, ng)).await;
        assert_eq!(next.unwrap().0, 0x08, "AuthProof");
        let mut s = common::Raw::new(s, &TOKEN, "gateway", &nn, &ng);
        assert_eq!(s.recv().await.unwrap().0, 0x01, "Hello");
        s.send(&frame(0x81, 0, br#"{"heartbeat_ms":60000}"#)).await;
        let spec = FunctionSpec::new(
            "f",
            RuntimeKind::Exec,
            ImageRef::Dir("/nonexistent/f/1-ab/root".into()),
            "run",
        );
        let meta = serde_json::to_vec(&serde_json::json!({
            "spec": spec, "invocation": 1, "headers": [], "trace_id": "t", "timeout_ms": 5000,
        }))
        .unwrap();
        let mut p = (meta.len() as u32).to_le_bytes().to_vec();
        p.extend_from_slice(&meta);
        s.send(&frame(0x83, 1, &p)).await;
        let (kind, fid, _) = loop {
            let f = s.recv().await.unwrap();
            if f.0 != 0x02 {
                break f;
            }
        };
        assert_eq!(kind, 0x06, "Fetch");
        s.send(&frame(0x86, fid, b"not a tar")).await;
        let end =
            serde_json::to_vec(&serde_json::json!({"ok": {"digest": "00", "bytes": 9}})).unwrap();
        s.send(&frame(0x87, fid, &end)).await;
        let (kind, id, p) = loop {
            let f = s.recv().await.unwrap();
            if f.0 != 0x02 {
                break f;
            }
        };
        assert_eq!((kind, id), (0x04, 1), "Error for the invocation");
        let e: serde_json::Value = serde_json::from_slice(&p).unwrap();
        assert_eq!(e["code"], "files_unavailable");
        assert!(
            e["message"]
                .as_str()
                .unwrap()
                .contains("do not match their digest"),
            "{e}"
        );
        assert_eq!(std::fs::read_dir(cache.path()).unwrap().count(), 0);
    });
}
