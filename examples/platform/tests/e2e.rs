//! End-to-end tests: the real `faas` binary, real HTTP, real processes.
//!
//! Each test starts `faas serve` on a free port with its own state
//! directory, deploys functions (the bundled examples, or small shell
//! scripts that misbehave on purpose) and checks what a client sees.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Server;
use faas_platform::client::Reply;
use http::Method;

/// Shell-script functions need the host's /bin/sh: they run as plain
/// processes. Everything else runs in the default (sandboxed) runtime.
const PLAIN: &[&str] = &["--sandbox", "process"];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn post(s: &Server, path: &str, body: impl Into<Bytes>) -> Reply {
    rt().block_on(s.client().request(Method::POST, path, body))
        .unwrap()
}

fn json_error(r: &Reply) -> (String, String) {
    let v: serde_json::Value = serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&r.body)));
    (
        v["error"].as_str().unwrap().to_owned(),
        v["message"].as_str().unwrap().to_owned(),
    )
}

#[test]
fn hello_answers_from_a_fresh_process_each_time() {
    let s = Server::start(&[]);
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    let a = post(&s, "/invoke/hello", "hi");
    let b = post(&s, "/invoke/hello", "hi");
    assert_eq!(a.status, 200);
    let (ta, tb) = (
        String::from_utf8(a.body.to_vec()).unwrap(),
        String::from_utf8(b.body.to_vec()).unwrap(),
    );
    assert!(ta.contains("hi"), "{ta}");
    // Each is pid 1 of a fresh pid namespace: a new instance per request.
    assert_eq!(ta, "hello from pid 1 on host faas: hi");
    assert_eq!(ta, tb);
    assert_eq!(a.headers["x-faas-cold"], "true");
    assert_eq!(b.headers["x-faas-cold"], "true");
    assert!(a.headers.contains_key("x-faas-invocation-id"));
    assert!(
        a.headers["server-timing"]
            .to_str()
            .unwrap()
            .contains("run;dur=")
    );
}

#[test]
fn instances_run_sandboxed_by_default() {
    let s = Server::start(&["--sandbox", "pooled"]);
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    let r = post(&s, "/invoke/hello", "hi");
    assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
    // pid 1 of its own pid namespace, in its own uts namespace.
    assert_eq!(&r.body[..], b"hello from pid 1 on host faas: hi");
}

#[test]
fn cli_deploy_invoke_ls_rm() {
    let s = Server::start(&[]);
    let ex = s.examples();
    s.deploy("cpu", &ex.join("cpu"), "cpu", &["--timeout-ms", "5000"]);
    let o = s.cli(&["invoke", "cpu", "--data", "1000"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(v["n"], 1000);
    let o = s.cli(&["ls"]);
    let out = String::from_utf8(o.stdout).unwrap();
    assert!(out.contains("cpu") && out.contains("5s"), "{out}");
    // A second deploy is a new version.
    s.deploy("cpu", &ex.join("cpu"), "cpu", &[]);
    let r = rt()
        .block_on(
            s.client()
                .request(Method::GET, "/functions/cpu", Bytes::new()),
        )
        .unwrap();
    let v: serde_json::Value = serde_json::from_slice(&r.body).unwrap();
    assert_eq!(v["version"], 2);
    let o = s.cli(&["rm", "cpu"]);
    assert!(o.status.success());
    let o = s.cli(&["invoke", "cpu"]);
    assert!(!o.status.success());
    let err = String::from_utf8(o.stderr).unwrap();
    assert!(err.contains("404") && err.contains("not deployed"), "{err}");
    let o = s.cli(&["rm", "cpu"]);
    assert!(!o.status.success());
}

#[test]
fn unknown_function_is_404() {
    let s = Server::start(&[]);
    let r = post(&s, "/invoke/nope", "x");
    assert_eq!(r.status, 404);
    assert_eq!(json_error(&r).0, "function_not_found");
}

#[test]
fn instance_exiting_before_answering_is_502_with_its_status() {
    let s = Server::start(PLAIN);
    s.deploy("crash", &s.script("crash", "exit 3"), "run", &[]);
    let r = post(&s, "/invoke/crash", "x");
    assert_eq!(r.status, 502);
    let (code, msg) = json_error(&r);
    assert_eq!(code, "instance_exited");
    assert_eq!(msg, "instance exited with status 3 before responding");
}

#[test]
fn deadline_is_504_and_the_instance_is_killed() {
    let s = Server::start(PLAIN);
    let marker = s.work.path().join("still-alive");
    let body = format!("sleep 3; touch {}", marker.display());
    s.deploy(
        "slow",
        &s.script("slow", &body),
        "run",
        &["--timeout-ms", "300"],
    );
    let t = Instant::now();
    let r = post(&s, "/invoke/slow", "x");
    assert_eq!(r.status, 504);
    assert_eq!(json_error(&r).0, "timeout");
    assert!(t.elapsed() < Duration::from_secs(3));
    std::thread::sleep(Duration::from_millis(3500) - t.elapsed().min(Duration::from_millis(3500)));
    assert!(!marker.exists(), "the timed-out instance kept running");
}

#[test]
fn hostile_frames_are_502_and_the_server_keeps_serving() {
    let s = Server::start(PLAIN);
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    s.deploy(
        "garbage",
        &s.script(
            "garbage",
            "printf 'this is not a frame of the guest protocol' >&3; sleep 5",
        ),
        "run",
        &[],
    );
    let r = post(&s, "/invoke/garbage", "x");
    assert_eq!(r.status, 502);
    let (code, msg) = json_error(&r);
    assert_eq!(code, "protocol_violation");
    assert!(msg.contains("bad magic"), "{msg}");
    assert_eq!(post(&s, "/invoke/hello", "still here").status, 200);
}

#[test]
fn oversized_body_is_413() {
    let s = Server::start(&["--max-body", "1024"]);
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    let r = post(&s, "/invoke/hello", vec![b'x'; 2048]);
    assert_eq!(r.status, 413);
    assert_eq!(json_error(&r).0, "body_too_large");
    assert_eq!(post(&s, "/invoke/hello", vec![b'x'; 1000]).status, 200);
}

#[test]
fn concurrency_limit_is_429_with_retry_after() {
    let s = Server::start(PLAIN);
    s.deploy(
        "one",
        &s.script("one", "sleep 2"),
        "run",
        &["--max-instances", "1", "--timeout-ms", "1000"],
    );
    let rt = rt();
    let c = s.client();
    let (a, b) = rt.block_on(async {
        let first = tokio::spawn({
            let c = c.clone();
            async move { c.request(Method::POST, "/invoke/one", Bytes::new()).await }
        });
        tokio::time::sleep(Duration::from_millis(200)).await;
        let second = c.request(Method::POST, "/invoke/one", Bytes::new()).await;
        (first.await.unwrap().unwrap(), second.unwrap())
    });
    assert_eq!(a.status, 504);
    assert_eq!(b.status, 429);
    assert_eq!(b.headers["retry-after"], "1");
    let (code, msg) = json_error(&b);
    assert_eq!(code, "over_limit");
    assert!(msg.contains("concurrency limit of 1"), "{msg}");
}

#[test]
fn bad_deploys_are_rejected_with_the_reason() {
    let s = Server::start(PLAIN);
    let dir = s.script("f", "exit 0");
    let o = s.cli(&[
        "deploy",
        "f",
        "--dir",
        dir.to_str().unwrap(),
        "--handler",
        "missing",
    ]);
    assert!(!o.status.success());
    let e = String::from_utf8(o.stderr).unwrap();
    assert!(
        e.contains("\"missing\"") && e.contains("no such file"),
        "{e}"
    );
    let r = post(&s, "/functions", "{not json");
    assert_eq!(r.status, 400);
    assert_eq!(json_error(&r).0, "bad_spec");
    let r = rt()
        .block_on(s.client().request(Method::PUT, "/invoke/f", Bytes::new()))
        .unwrap();
    assert_eq!(r.status, 405);
}

#[test]
fn keep_alive_reuses_one_instance() {
    let s = Server::start(&[]);
    let ex = s.examples();
    s.deploy(
        "hello",
        &ex.join("hello"),
        "hello",
        &["--keep-alive-ms", "10000"],
    );
    let bodies: Vec<_> = (0..3).map(|_| post(&s, "/invoke/hello", "again")).collect();
    assert!(bodies.iter().all(|r| r.status == 200));
    assert_eq!(bodies[0].headers["x-faas-cold"], "true");
    assert_eq!(bodies[2].headers["x-faas-cold"], "false");
    assert_eq!(bodies[1].body, bodies[2].body, "same pid answers");
}

#[test]
fn keep_alive_never_launches_more_instances_than_requests_in_flight() {
    // Four clients, each sending its next request as soon as its answer
    // is back: an instance between its answer and parking idle must take
    // the next request rather than a new instance being launched for it.
    let s = Server::start(&[]);
    let ex = s.examples();
    s.deploy(
        "hello",
        &ex.join("hello"),
        "hello",
        &["--keep-alive-ms", "60000"],
    );
    let fresh: usize = std::thread::scope(|scope| {
        let workers: Vec<_> = (0..4)
            .map(|_| {
                scope.spawn(|| {
                    let client = s.client();
                    rt().block_on(async {
                        let mut fresh = 0;
                        for _ in 0..50 {
                            let r = client
                                .request(Method::POST, "/invoke/hello", Bytes::from_static(b"x"))
                                .await
                                .unwrap();
                            assert_eq!(r.status, 200);
                            if r.headers["x-faas-start"] != "warm" {
                                fresh += 1;
                            }
                        }
                        fresh
                    })
                })
            })
            .collect();
        workers.into_iter().map(|w| w.join().unwrap()).sum()
    });
    assert!(
        (1..=4).contains(&fresh),
        "{fresh} of 200 answers came from a fresh instance"
    );
}
