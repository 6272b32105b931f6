//! The REST API end to end, with the real `faas` binary over real HTTP:
//! versions and aliases (and that they survive a restart), asynchronous
//! invocations, per-invocation logs (shell functions' stdout/stderr, a
//! Python function's `print`, the size bound, the trace id on the
//! gateway's log lines), and the OpenAPI document against the router.
//!
//! Python functions run in the pooled sandbox, restored from their
//! snapshot (needs root, as CI runs); shell functions run as plain
//! processes (`--sandbox process`: they need the host's /bin/sh).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Server;
use faas_platform::client::Reply;
use http::Method;

const PLAIN: &[&str] = &["--sandbox", "process"];

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn call(s: &Server, method: Method, path: &str, body: impl Into<Bytes>) -> Reply {
    rt().block_on(s.client().request(method, path, body))
        .unwrap()
}

fn json(r: &Reply) -> serde_json::Value {
    serde_json::from_slice(&r.body)
        .unwrap_or_else(|_| panic!("not JSON: {:?}", String::from_utf8_lossy(&r.body)))
}

fn header<'a>(r: &'a Reply, name: &str) -> &'a str {
    r.headers
        .get(name)
        .unwrap_or_else(|| panic!("no {name} header"))
        .to_str()
        .unwrap()
}

fn text(r: &Reply) -> String {
    String::from_utf8_lossy(&r.body).into_owned()
}

/// Runs the CLI; asserts success; returns stdout.
fn cli_ok(s: &Server, args: &[&str]) -> String {
    let o = s.cli(args);
    assert!(
        o.status.success(),
        "faas {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8(o.stdout).unwrap()
}

/// A Python function directory whose handler is `body` (indented).
fn python_fn(s: &Server, dir: &str, body: &str) -> PathBuf {
    let d = s.work.path().join(dir);
    std::fs::create_dir_all(&d).unwrap();
    std::fs::write(
        d.join("lambda_function.py"),
        format!("import os, sys, time\n\ndef lambda_handler(event, context):\n{body}\n"),
    )
    .unwrap();
    d
}

fn deploy_python(s: &Server, name: &str, dir: &Path) -> String {
    cli_ok(
        s,
        &[
            "deploy",
            name,
            "--dir",
            dir.to_str().unwrap(),
            "--runtime",
            "python",
            "--handler",
            "lambda_function.lambda_handler",
        ],
    )
}

/// Polls `GET /invocations/{id}` until it is no longer pending.
fn wait_done(s: &Server, id: &str) -> serde_json::Value {
    let until = Instant::now() + Duration::from_secs(30);
    loop {
        let r = call(s, Method::GET, &format!("/invocations/{id}"), "");
        assert_eq!(r.status, 200, "{}", text(&r));
        let v = json(&r);
        if v["state"] != "pending" {
            return v;
        }
        assert!(Instant::now() < until, "invocation {id} still pending: {v}");
        std::thread::sleep(Duration::from_millis(20));
    }
}

#[test]
fn versions_and_aliases_choose_what_runs_and_survive_a_restart() {
    let mut s = Server::start(&[]);
    let v1 = python_fn(&s, "v1", "    return 'answer of v1'");
    let v2 = python_fn(&s, "v2", "    return 'answer of v2'");
    let out = deploy_python(&s, "greet", &v1);
    assert!(out.contains("deployed greet version 1"), "{out}");
    let out = deploy_python(&s, "greet", &v2);
    assert!(out.contains("deployed greet version 2"), "{out}");

    let invoke = |s: &Server, target: &str| {
        let r = call(s, Method::POST, &format!("/invoke/{target}"), "{}");
        assert_eq!(r.status, 200, "{target}: {}", text(&r));
        (text(&r), header(&r, "x-faas-function-version").to_owned())
    };
    let (body, v) = invoke(&s, "greet");
    assert!(body.contains("answer of v2") && v == "2", "{body} {v}");
    let (body, v) = invoke(&s, "greet@1");
    assert!(body.contains("answer of v1") && v == "1", "{body} {v}");
    let (body, v) = invoke(&s, "greet@latest");
    assert!(body.contains("answer of v2") && v == "2", "{body} {v}");
    // The CLI takes the same targets.
    let out = cli_ok(&s, &["invoke", "greet@1"]);
    assert!(out.contains("answer of v1"), "{out}");

    // An alias, then flipped.
    let out = cli_ok(&s, &["alias", "greet", "prod", "1"]);
    assert!(out.contains("greet@prod -> version 1"), "{out}");
    let (body, v) = invoke(&s, "greet@prod");
    assert!(body.contains("answer of v1") && v == "1", "{body} {v}");
    cli_ok(&s, &["alias", "greet", "prod", "2"]);
    cli_ok(&s, &["alias", "greet", "old", "1"]);
    let (body, v) = invoke(&s, "greet@prod");
    assert!(body.contains("answer of v2") && v == "2", "{body} {v}");
    let aliases = json(&call(&s, Method::GET, "/functions/greet/aliases", ""));
    assert_eq!(aliases, serde_json::json!({"old": 1, "prod": 2}));
    let versions = json(&call(&s, Method::GET, "/functions/greet/versions", ""));
    let numbers: Vec<u64> = versions
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v["version"].as_u64().unwrap())
        .collect();
    assert_eq!(numbers, [1, 2]);
    let ls = cli_ok(&s, &["ls"]);
    assert!(ls.contains("old=1,prod=2"), "{ls}");

    // Unknown versions and aliases, bad aliases: errors that name them.
    for (target, code, named) in [
        ("greet@9", "version_not_found", "9"),
        ("greet@beta", "alias_not_found", "\"beta\""),
        ("nosuch@1", "function_not_found", "\"nosuch\""),
    ] {
        let r = call(&s, Method::POST, &format!("/invoke/{target}"), "");
        assert_eq!(r.status, 404, "{target}");
        let e = json(&r);
        assert_eq!(e["error"], code, "{e}");
        assert!(e["message"].as_str().unwrap().contains(named), "{e}");
    }
    let r = call(&s, Method::POST, "/invoke/greet@Bad!", "");
    assert_eq!(
        (r.status.as_u16(), json(&r)["error"].as_str()),
        (400, Some("bad_target"))
    );
    let alias = |name: &str, alias: &str, body: &str| {
        let r = call(
            &s,
            Method::POST,
            &format!("/functions/{name}/aliases/{alias}"),
            body.to_owned(),
        );
        (
            r.status.as_u16(),
            json(&r)["error"].as_str().unwrap_or("").to_owned(),
        )
    };
    assert_eq!(
        alias("greet", "prod", r#"{"version": 9}"#),
        (404, "version_not_found".into())
    );
    assert_eq!(
        alias("nosuch", "prod", r#"{"version": 1}"#),
        (404, "function_not_found".into())
    );
    assert_eq!(
        alias("greet", "latest", r#"{"version": 1}"#),
        (400, "bad_alias".into())
    );
    assert_eq!(
        alias("greet", "12", r#"{"version": 1}"#),
        (400, "bad_alias".into())
    );
    assert_eq!(
        alias("greet", "prod", r#"{"v": 1}"#),
        (400, "bad_alias".into())
    );
    let o = s.cli(&["alias", "greet", "prod", "7"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has no version 7"), "{err}");

    // PUT: the name comes from the path; another name in the body is refused.
    let spec = |name: Option<&str>| {
        let mut v = serde_json::json!({
            "runtime": "python",
            "image": {"kind": "dir", "path": v1.to_str().unwrap()},
            "handler": "lambda_function.lambda_handler",
        });
        if let Some(n) = name {
            v["name"] = n.into();
        }
        serde_json::to_vec(&v).unwrap()
    };
    let r = call(&s, Method::PUT, "/functions/greet", spec(Some("other")));
    assert_eq!(
        (r.status.as_u16(), json(&r)["error"].as_str()),
        (400, Some("name_mismatch"))
    );
    let r = call(&s, Method::PUT, "/functions/greet", spec(None));
    assert_eq!(r.status, 201, "{}", text(&r));
    assert_eq!(json(&r)["version"], 3);
    let (body, v) = invoke(&s, "greet");
    assert!(body.contains("answer of v1") && v == "3", "{body} {v}");

    // Deleting an alias: 204, it no longer resolves, the versions stay;
    // a missing alias or function is a 404 that names it.
    cli_ok(&s, &["alias", "greet", "tmp", "1"]);
    let out = cli_ok(&s, &["alias", "rm", "greet", "tmp"]);
    assert!(out.contains("deleted greet@tmp"), "{out}");
    let r = call(&s, Method::POST, "/invoke/greet@tmp", "");
    assert_eq!(
        (r.status.as_u16(), json(&r)["error"].as_str()),
        (404, Some("alias_not_found"))
    );
    let (_, v) = invoke(&s, "greet@1");
    assert_eq!(v, "1");
    for (path, code, named) in [
        ("/functions/greet/aliases/tmp", "alias_not_found", "\"tmp\""),
        (
            "/functions/nosuch/aliases/prod",
            "function_not_found",
            "\"nosuch\"",
        ),
    ] {
        let r = call(&s, Method::DELETE, path, "");
        assert_eq!(r.status, 404, "{path}");
        let e = json(&r);
        assert_eq!(e["error"], code, "{e}");
        assert!(e["message"].as_str().unwrap().contains(named), "{e}");
    }
    let o = s.cli(&["alias", "rm", "greet", "tmp"]);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("has no alias \"tmp\""), "{err}");
    let r = call(&s, Method::DELETE, "/functions/greet/aliases/prod", "");
    assert_eq!((r.status.as_u16(), r.body.len()), (204, 0));
    cli_ok(&s, &["alias", "greet", "prod", "2"]);

    // After a restart: the same versions and aliases (the deleted one
    // stays deleted).
    s.restart();
    let aliases = json(&call(&s, Method::GET, "/functions/greet/aliases", ""));
    assert_eq!(aliases, serde_json::json!({"old": 1, "prod": 2}));
    let (body, v) = invoke(&s, "greet@prod");
    assert!(body.contains("answer of v2") && v == "2", "{body} {v}");
    let (body, v) = invoke(&s, "greet@old");
    assert!(body.contains("answer of v1") && v == "1", "{body} {v}");
    let (_, v) = invoke(&s, "greet");
    assert_eq!(v, "3");

    // Deleting the function deletes its aliases.
    cli_ok(&s, &["rm", "greet"]);
    assert_eq!(
        call(&s, Method::GET, "/functions/greet/aliases", "").status,
        404
    );
    deploy_python(&s, "greet", &v2);
    let aliases = json(&call(&s, Method::GET, "/functions/greet/aliases", ""));
    assert_eq!(aliases, serde_json::json!({}));
    let r = call(&s, Method::POST, "/invoke/greet@prod", "");
    assert_eq!(r.status, 404);
}

#[test]
fn async_invocations_answer_at_once_and_keep_their_result() {
    let s = Server::start(&[]);
    let slow = python_fn(
        &s,
        "slow",
        "    time.sleep(0.5)\n    print('slept for', event)\n    return {'done': event}",
    );
    deploy_python(&s, "slow", &slow);
    let r = call(&s, Method::POST, "/invoke-async/slow", r#"{"n": 7}"#);
    assert_eq!(r.status, 202, "{}", text(&r));
    let id = json(&r)["id"].as_str().unwrap().to_owned();
    assert_eq!(header(&r, "location"), format!("/invocations/{id}"));
    assert_eq!(header(&r, "x-faas-invocation-id"), id);
    assert_eq!(header(&r, "x-faas-function-version"), "1");
    // The answer came while the function still ran (it sleeps 0.5 s).
    let now = json(&call(&s, Method::GET, &format!("/invocations/{id}"), ""));
    assert_eq!(now["state"], "pending", "{now}");
    let done = wait_done(&s, &id);
    assert_eq!(done["state"], "done", "{done}");
    assert_eq!(done["status"], 200);
    assert_eq!(done["function"], "slow");
    assert_eq!(done["version"], 1);
    assert_eq!(done["async"], true);
    let body: serde_json::Value = serde_json::from_str(done["body"].as_str().unwrap()).unwrap();
    assert_eq!(body, serde_json::json!({"done": {"n": 7}}));
    let logs = cli_ok(&s, &["logs", &id]);
    assert!(logs.contains("slept for {'n': 7}"), "{logs}");

    // The CLI: --async prints the id; `faas invocation` shows the result.
    let id = cli_ok(&s, &["invoke", "slow@1", "--async", "--data", "{\"n\": 8}"])
        .trim()
        .to_owned();
    assert_eq!(id.len(), 16, "{id}");
    wait_done(&s, &id);
    let shown = cli_ok(&s, &["invocation", &id]);
    assert!(shown.contains("\"state\": \"done\""), "{shown}");

    // A body that is not UTF-8 comes back in base64 (hello echoes it).
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    let r = call(&s, Method::POST, "/invoke-async/hello", vec![0xffu8, 0xfe]);
    let id = json(&r)["id"].as_str().unwrap().to_owned();
    let done = wait_done(&s, &id);
    assert!(done.get("body").is_none(), "{done}");
    // base64 of "hello " is "aGVsbG8g".
    let b64 = done["body_base64"].as_str().unwrap();
    assert!(b64.starts_with("aGVsbG8g"), "{b64}");

    // Synchronous invocations are recorded too (without their body).
    let r = call(&s, Method::POST, "/invoke/hello", "x");
    let id = header(&r, "x-faas-invocation-id").to_owned();
    let v = json(&call(&s, Method::GET, &format!("/invocations/{id}"), ""));
    assert_eq!(
        (v["state"].as_str(), v["async"].as_bool()),
        (Some("done"), Some(false))
    );
    assert!(v.get("body").is_none(), "{v}");

    // Unknown ids, bad ids, unknown functions.
    let r = call(&s, Method::GET, "/invocations/00000000000000ff", "");
    assert_eq!(
        (r.status.as_u16(), json(&r)["error"].as_str()),
        (404, Some("invocation_not_found"))
    );
    let r = call(&s, Method::GET, "/invocations/nothex/logs", "");
    assert_eq!(r.status, 400);
    let r = call(&s, Method::POST, "/invoke-async/nosuch", "");
    assert_eq!(r.status, 404);
    let r = call(&s, Method::POST, "/invoke-async/slow@prod", "");
    assert_eq!(
        (r.status.as_u16(), json(&r)["error"].as_str()),
        (404, Some("alias_not_found"))
    );
}

#[test]
fn async_failures_are_recorded_with_their_logs() {
    let s = Server::start(PLAIN);
    let dir = s.script("crash", "echo about to fail; echo the reason >&2; exit 3");
    s.deploy("crash", &dir, "run", &[]);
    let r = call(&s, Method::POST, "/invoke-async/crash", "");
    assert_eq!(r.status, 202);
    let id = json(&r)["id"].as_str().unwrap().to_owned();
    let v = wait_done(&s, &id);
    assert_eq!(v["state"], "failed", "{v}");
    assert_eq!(v["status"], 502);
    assert_eq!(v["error"]["error"], "instance_exited");
    // Two pipes: each line whole, in either order.
    let logs = cli_ok(&s, &["logs", &id]);
    let mut lines: Vec<&str> = logs.lines().collect();
    lines.sort_unstable();
    assert_eq!(lines, ["about to fail", "the reason"], "{logs}");
}

#[test]
fn logs_of_shell_functions_are_their_stdout_and_stderr_bounded() {
    let s = Server::start(PLAIN);
    let dir = s.script("talk", "echo \"to stdout\"; echo \"to stderr\" >&2; exit 3");
    s.deploy("talk", &dir, "run", &[]);
    let r = call(&s, Method::POST, "/invoke/talk", "");
    assert_eq!(r.status, 502, "{}", text(&r));
    let id = header(&r, "x-faas-invocation-id").to_owned();
    let logs = call(&s, Method::GET, &format!("/invocations/{id}/logs"), "");
    assert_eq!(logs.status, 200);
    assert!(header(&logs, "content-type").starts_with("text/plain"));
    assert_eq!(header(&logs, "x-faas-invocation-state"), "failed");
    let logs = text(&logs);
    assert_eq!(logs.len(), "to stdout\nto stderr\n".len(), "{logs}");
    assert!(
        logs.contains("to stdout\n") && logs.contains("to stderr\n"),
        "{logs}"
    );
    assert_eq!(cli_ok(&s, &["logs", &id]), logs);
    // The CLI names the invocation of a failed call.
    let o = s.cli(&["invoke", "talk"]);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(!o.status.success() && err.contains("faas logs "), "{err}");

    // 200 KB of output: the first 64 KiB and a marker.
    let dir = s.script(
        "flood",
        "head -c 200000 /dev/zero | tr '\\0' x; echo; echo never seen >&2; exit 1",
    );
    s.deploy("flood", &dir, "run", &[]);
    let r = call(&s, Method::POST, "/invoke/flood", "");
    let id = header(&r, "x-faas-invocation-id").to_owned();
    let logs = text(&call(
        &s,
        Method::GET,
        &format!("/invocations/{id}/logs"),
        "",
    ));
    assert!(
        logs.ends_with("\n[truncated]\n"),
        "{}",
        &logs[logs.len().saturating_sub(40)..]
    );
    let kept = logs.len() - "\n[truncated]\n".len();
    assert_eq!(kept, faas_gateway::MAX_INVOCATION_LOGS);
    assert!(logs[..kept].bytes().all(|b| b == b'x'));
}

#[test]
fn python_prints_are_the_logs_of_their_invocation_with_the_trace_id() {
    let s = Server::start_logged(&[]);
    let dir = python_fn(
        &s,
        "noisy",
        "    print('print of', context.aws_request_id)\n    print('stderr of', context.aws_request_id, file=sys.stderr)\n    os.write(1, b'raw write to fd 1\\n')\n    return 'ok'",
    );
    deploy_python(&s, "noisy", &dir);
    let send = |trace: &str| {
        let r = rt()
            .block_on(s.client().request_with(
                Method::POST,
                "/invoke/noisy",
                &[("x-faas-trace-id", trace)],
                "{}",
            ))
            .unwrap();
        assert_eq!(r.status, 200, "{}", text(&r));
        assert_eq!(header(&r, "x-faas-trace-id"), trace);
        header(&r, "x-faas-invocation-id").to_owned()
    };
    let a = send("trace-aaaa-1");
    let b = send("trace-bbbb-2");
    let logs_a = cli_ok(&s, &["logs", &a]);
    assert!(logs_a.contains(&format!("print of {a}\n")), "{logs_a}");
    assert!(logs_a.contains(&format!("stderr of {a}\n")), "{logs_a}");
    assert!(logs_a.contains("raw write to fd 1\n"), "{logs_a}");
    assert!(!logs_a.contains(&b), "{logs_a}");
    let logs_b = cli_ok(&s, &["logs", &b]);
    assert!(
        logs_b.contains(&format!("print of {b}\n")) && !logs_b.contains(&a),
        "{logs_b}"
    );

    // Every gateway log line of the invocation carries its trace id.
    let log = s.log();
    let lines: Vec<&str> = log
        .lines()
        .filter(|l| l.contains(&format!("print of {a}")))
        .collect();
    assert!(!lines.is_empty(), "{log}");
    for l in lines {
        assert!(l.contains("trace-aaaa-1"), "{l}");
    }
}

/// `faas_live_instances` of the local node.
fn live_instances(s: &Server) -> f64 {
    let m = text(&call(s, Method::GET, "/metrics", ""));
    m.lines()
        .find_map(|l| l.strip_prefix("faas_live_instances{node=\"local\"} "))
        .unwrap_or_else(|| panic!("no faas_live_instances in\n{m}"))
        .trim()
        .parse()
        .unwrap()
}

/// Deleting a function stops its warm (kept-alive) instances at once,
/// not when their idle time (here 10 minutes) runs out.
#[test]
fn deleting_a_function_stops_its_warm_instances() {
    let s = Server::start(PLAIN);
    let ex = s.examples();
    s.deploy(
        "warm",
        &ex.join("hello"),
        "hello",
        &["--keep-alive-ms", "600000"],
    );
    let r = call(&s, Method::POST, "/invoke/warm", "hi");
    assert_eq!(r.status, 200, "{}", text(&r));
    let r = call(&s, Method::POST, "/invoke/warm", "hi");
    assert_eq!(header(&r, "x-faas-start"), "warm");
    assert_eq!(live_instances(&s), 1.0);
    cli_ok(&s, &["rm", "warm"]);
    let until = Instant::now() + Duration::from_secs(10);
    while live_instances(&s) != 0.0 {
        assert!(
            Instant::now() < until,
            "the warm instance of a deleted function is still alive"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
    let r = call(&s, Method::POST, "/invoke/warm", "hi");
    assert_eq!(r.status, 404);
    // Deployed again under the same name: a fresh instance.
    s.deploy("warm", &ex.join("hello"), "hello", &[]);
    let r = call(&s, Method::POST, "/invoke/warm", "hi");
    assert_eq!(
        (r.status.as_u16(), header(&r, "x-faas-start")),
        (200, "cold")
    );
}

#[test]
fn openapi_document_matches_the_router() {
    let s = Server::start(PLAIN);
    let r = call(&s, Method::GET, "/openapi.json", "");
    assert_eq!(r.status, 200);
    assert_eq!(header(&r, "content-type"), "application/json");
    let doc = json(&r);
    assert!(doc["openapi"].as_str().unwrap().starts_with("3."));
    let mut documented = std::collections::BTreeSet::new();
    let methods = ["get", "put", "post", "delete", "patch", "head", "options"];
    for (path, item) in doc["paths"].as_object().unwrap() {
        for m in item.as_object().unwrap().keys() {
            if methods.contains(&m.as_str()) {
                documented.insert((m.to_uppercase(), path.clone()));
            }
        }
    }
    // The router's own table, both ways.
    let routed: std::collections::BTreeSet<(String, String)> = faas_gateway::ROUTES
        .iter()
        .map(|r| (r.method.to_owned(), r.path.to_owned()))
        .collect();
    assert_eq!(documented, routed);

    // Over HTTP: every documented operation reaches a handler (no "no
    // route" 404, no 405), and other methods on its path are 405.
    let concrete = |path: &str| {
        path.replace("{name}", "nosuchfn")
            .replace("{function}", "nosuchfn@prod")
            .replace("{alias}", "prod")
            .replace("{id}", "0000000000000001")
    };
    for (method, path) in &documented {
        let m = Method::from_bytes(method.as_bytes()).unwrap();
        let r = call(&s, m, &concrete(path), "{}");
        let body = text(&r);
        assert_ne!(r.status, 405, "{method} {path}: {body}");
        assert!(!body.contains("no route"), "{method} {path}: {body}");
        for other in ["GET", "PUT", "POST", "DELETE", "PATCH"] {
            if documented.contains(&(other.to_owned(), path.clone())) {
                continue;
            }
            let r = call(
                &s,
                Method::from_bytes(other.as_bytes()).unwrap(),
                &concrete(path),
                "",
            );
            assert_eq!(r.status, 405, "{other} {path}: {}", text(&r));
            assert!(r.headers.contains_key("allow"));
        }
    }
    let r = call(&s, Method::GET, "/nowhere", "");
    assert_eq!(
        (r.status.as_u16(), json(&r)["error"].as_str()),
        (404, Some("not_found"))
    );
}

/// `faas serve` without `--quiet-instances`: the instances' stderr is
/// copied to the server's, each line prefixed with its invocation id.
#[test]
fn instance_stderr_is_forwarded_with_the_invocation_id() {
    use std::io::BufRead;
    let state = tempfile::tempdir().unwrap();
    let err = tempfile::NamedTempFile::new().unwrap();
    let mut child = std::process::Command::new(common::FAAS)
        .args(["serve", "--listen", "127.0.0.1:0", "--state-dir"])
        .arg(state.path())
        .stdout(std::process::Stdio::piped())
        .stderr(err.reopen().unwrap())
        .spawn()
        .unwrap();
    struct Kill(std::process::Child);
    impl Drop for Kill {
        fn drop(&mut self) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    let _child = Kill(child);
    let url = line
        .split_whitespace()
        .find(|w| w.starts_with("http://"))
        .unwrap()
        .to_owned();
    let work = tempfile::tempdir().unwrap();
    std::fs::write(
        work.path().join("lambda_function.py"),
        "import os\n\ndef lambda_handler(event, context):\n    os.write(2, ('straight to fd 2 of ' + context.aws_request_id + '\\n').encode())\n    return 'ok'\n",
    )
    .unwrap();
    let o = std::process::Command::new(common::FAAS)
        .args(["deploy", "fwd", "--runtime", "python", "--dir"])
        .arg(work.path())
        .args(["--handler", "lambda_function.lambda_handler"])
        .env("FAAS_SERVER", &url)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let client = faas_platform::client::Client::new(&url);
    let r = rt()
        .block_on(client.request(Method::POST, "/invoke/fwd", "{}"))
        .unwrap();
    assert_eq!(r.status, 200, "{}", text(&r));
    let id = header(&r, "x-faas-invocation-id").to_owned();
    let logs = rt()
        .block_on(client.request(Method::GET, &format!("/invocations/{id}/logs"), ""))
        .unwrap();
    assert_eq!(text(&logs), format!("straight to fd 2 of {id}\n"));
    let want = format!("[invocation {id}] straight to fd 2 of {id}");
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let seen = std::fs::read_to_string(err.path()).unwrap();
        if seen.lines().any(|l| l == want) {
            break;
        }
        assert!(
            Instant::now() < until,
            "{want:?} not in the server's stderr:\n{seen}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}
