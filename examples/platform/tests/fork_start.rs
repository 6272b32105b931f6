//! Start mode `fork` on the full path: `faas deploy --start fork` snapshots
//! the function as for a restore, and every instance is then forked from a
//! template of that snapshot (one sandbox per function), one per request.
//! `--start cold` takes no snapshot. Needs root (pooled sandbox, snapshots)
//! and `/usr/bin/python3`, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use bytes::Bytes;
use common::Server;
use faas_platform::client::Reply;
use http::Method;

fn request(s: &Server, method: Method, path: &str, body: &str) -> Reply {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
        .block_on(
            s.client()
                .request(method, path, Bytes::from(body.to_owned())),
        )
        .unwrap()
}

fn start_header(r: &Reply) -> &str {
    r.headers
        .get("x-faas-start")
        .expect("no x-faas-start header")
        .to_str()
        .unwrap()
}

fn spec(s: &Server, name: &str) -> serde_json::Value {
    let r = request(s, Method::GET, &format!("/functions/{name}"), "");
    assert_eq!(r.status, 200);
    serde_json::from_slice(&r.body).unwrap()
}

/// The value of the sample of `family` whose labels include all of
/// `labels` (`key="value"` each), 0 when there is none.
fn metric(s: &Server, family: &str, labels: &[&str]) -> f64 {
    let r = request(s, Method::GET, "/metrics", "");
    assert_eq!(r.status, 200);
    let text = String::from_utf8(r.body.to_vec()).unwrap();
    text.lines()
        .filter(|l| l.starts_with(&format!("{family}{{")))
        .filter(|l| labels.iter().all(|want| l.contains(want)))
        .map(|l| l.rsplit(' ').next().unwrap().parse::<f64>().unwrap())
        .sum()
}

#[test]
fn native_function_deployed_with_start_fork_forks_one_instance_per_request() {
    let s = Server::start(&["--sandbox", "pooled"]);
    let dir = s.examples().join("hello");
    let o = s.cli(&[
        "deploy",
        "hello",
        "--dir",
        dir.to_str().unwrap(),
        "--handler",
        "hello",
        "--start",
        "fork",
    ]);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr),
    );
    assert!(o.status.success(), "deploy: {err}");
    assert!(err.is_empty(), "deploy warned: {err}");
    assert!(
        out.lines()
            .last()
            .unwrap()
            .starts_with("deployed hello version 1 (start: fork) in "),
        "{out}"
    );
    let v = spec(&s, "hello");
    assert_eq!(
        (&v["start"], &v["start_request"]),
        (&"fork".into(), &"fork".into()),
        "{v}"
    );
    assert!(v["snapshot"].is_string(), "{v}");

    let mut pids = Vec::new();
    for i in 0..6 {
        let r = request(&s, Method::POST, "/invoke/hello", &format!("hi {i}"));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(start_header(&r), "fork", "{body}");
        // A child of the template (pid 1 of the function's sandbox): a
        // fresh process per request.
        let pid: u32 = body
            .strip_prefix("hello from pid ")
            .and_then(|rest| rest.strip_suffix(&format!(" on host faas: hi {i}")))
            .unwrap_or_else(|| panic!("unexpected answer {body:?}"))
            .parse()
            .unwrap();
        assert_ne!(pid, 1, "{body}");
        assert!(!pids.contains(&pid), "pid {pid} answered twice: {pids:?}");
        pids.push(pid);
    }
    let labels = [r#"function="hello""#, r#"start_mode="fork""#];
    assert_eq!(metric(&s, "faas_cold_starts_total", &labels), 6.0);
    assert_eq!(
        metric(
            &s,
            "faas_requests_total",
            &[labels[0], labels[1], r#"status="200""#]
        ),
        6.0
    );
    assert_eq!(
        metric(
            &s,
            "faas_cold_starts_total",
            &[labels[0], r#"start_mode="restore""#]
        ),
        0.0
    );
}

#[test]
fn python_function_deployed_with_start_fork_is_forked() {
    let s = Server::start(&["--sandbox", "pooled"]);
    let dir = s.work.path().join("py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.py"),
        "import os\n\nseen = []\n\ndef handler(event, context):\n    seen.append(event[\"n\"])\n    return {\"seen\": seen, \"pid\": os.getpid()}\n",
    )
    .unwrap();
    s.deploy(
        "py",
        &dir,
        "app.handler",
        &["--runtime", "python", "--start", "fork"],
    );
    assert_eq!(spec(&s, "py")["start"], "fork");
    for n in 0..3 {
        let r = request(&s, Method::POST, "/invoke/py", &format!("{{\"n\": {n}}}"));
        let body = String::from_utf8_lossy(&r.body).into_owned();
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(start_header(&r), "fork", "{body}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        // Module state written by one instance is not seen by the next.
        assert_eq!(v["seen"], serde_json::json!([n]), "{body}");
        assert_ne!(v["pid"], 1, "{body}");
    }
    assert_eq!(
        metric(
            &s,
            "faas_cold_starts_total",
            &[r#"function="py""#, r#"start_mode="fork""#]
        ),
        3.0
    );
}

#[test]
fn a_fork_refused_at_the_templates_pids_limit_is_restored_instead() {
    let s = Server::start(&["--sandbox", "pooled"]);
    let dir = s.work.path().join("slow");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.py"),
        "import time\n\ndef handler(event, context):\n    time.sleep(0.8)\n    return \"done\"\n",
    )
    .unwrap();
    // Two processes for the function's sandbox: the template and one fork.
    let spec_json = serde_json::json!({
        "runtime": "python",
        "image": {"kind": "dir", "path": dir.to_str().unwrap()},
        "handler": "app.handler",
        "start_request": "fork",
        "limits": {"pids": 2, "timeout_ms": 20000},
    });
    let r = request(&s, Method::PUT, "/functions/slow", &spec_json.to_string());
    assert_eq!(r.status, 201, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(spec(&s, "slow")["start"], "fork");
    // Three at once: one forks, the others find the template's pids limit
    // reached and are restored, each in a sandbox of its own.
    let starts: Vec<String> = std::thread::scope(|sc| {
        let all: Vec<_> = (0..3)
            .map(|_| {
                sc.spawn(|| {
                    let r = request(&s, Method::POST, "/invoke/slow", "{}");
                    let body = String::from_utf8_lossy(&r.body).into_owned();
                    assert_eq!(r.status, 200, "{body}");
                    assert_eq!(body, "\"done\"");
                    start_header(&r).to_owned()
                })
            })
            .collect();
        all.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert!(starts.iter().any(|m| m == "fork"), "{starts:?}");
    assert!(starts.iter().any(|m| m == "restore"), "{starts:?}");
    // Not a failure of fork mode: once the template has reaped the last
    // forks (asynchronously, after their exit status was read), requests
    // fork again.
    let forked_again = (0..20).any(|_| {
        std::thread::sleep(std::time::Duration::from_millis(100));
        let r = request(&s, Method::POST, "/invoke/slow", "{}");
        assert_eq!(r.status, 200);
        start_header(&r) == "fork"
    });
    assert!(forked_again, "fork mode was given up after a refused fork");
}

#[test]
fn start_cold_takes_no_snapshot() {
    let s = Server::start(&["--sandbox", "pooled"]);
    let dir = s.examples().join("hello");
    s.deploy("hello", &dir, "hello", &["--start", "cold"]);
    let v = spec(&s, "hello");
    assert_eq!(v["start"], "cold", "{v}");
    assert!(v.get("snapshot").is_none(), "{v}");
    let r = request(&s, Method::POST, "/invoke/hello", "hi");
    assert_eq!(r.status, 200);
    assert_eq!(start_header(&r), "cold");
}
