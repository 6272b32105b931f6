//! End-to-end tests of the language runtimes: unchanged AWS Lambda handlers
//! deployed with `faas deploy --runtime python|node` on the real `faas
//! serve`, invoked over HTTP.
//!
//! | server | Python | Node.js |
//! |---|---|---|
//! | pooled sandbox (root) | snapshot at deploy, every instance restored | cold |
//! | `--sandbox process` | cold, host paths | — (its interpreter is "missing") |
//!
//! Each case checks what a Lambda user relies on: the event and the return
//! value, a raised exception in Lambda's error shape, the timeout, a 5 MiB
//! response (Node: its documented 128 KiB limit, a clear error), heavy
//! standard-library imports at module scope, module state fresh in every
//! per-request instance, logs attributed to the invocation, and (restored)
//! different random numbers in copies of one snapshot. Needs root for the
//! pooled sandbox and snapshots (CI runs as root), `/usr/bin/python3` and
//! `/usr/bin/node`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::path::{Path, PathBuf};

use bytes::Bytes;
use common::Server;
use faas_platform::client::Reply;
use http::Method;

const PYTHON_HANDLER: &str = r#"import email.parser, decimal, http.client
import logging, os, random, sys, time

COUNT = 0
logger = logging.getLogger()
logger.setLevel(logging.INFO)


def lambda_handler(event, context):
    global COUNT
    COUNT += 1
    print("print line of", context.aws_request_id)
    logger.info("logging line of %s", context.aws_request_id)
    if event.get("boom"):
        raise ValueError("bad input: %s" % event["boom"])
    if event.get("sleep"):
        time.sleep(event["sleep"])
    if event.get("big"):
        return {"statusCode": 200, "body": "x" * event["big"]}
    return {
        "echo": event,
        "count": COUNT,
        "rand": random.random(),
        "cwd": os.getcwd(),
        "pid": os.getpid(),
        "modules": all(m in sys.modules for m in ("email.parser", "decimal", "http.client")),
        "request_id": context.aws_request_id,
    }
"#;

const NODE_HANDLER: &str = r#"const zlib = require('zlib');
const crypto = require('crypto');
let count = 0;
exports.handler = async (event, context) => {
  count += 1;
  console.log('console line of', context.awsRequestId);
  if (event.boom) throw new Error('bad input: ' + event.boom);
  if (event.sleep) await new Promise((r) => setTimeout(r, event.sleep * 1000));
  if (event.big) return { statusCode: 200, body: 'x'.repeat(event.big) };
  return {
    echo: event,
    count,
    rand: crypto.randomBytes(8).toString('hex'),
    cwd: process.cwd(),
    gzip: zlib.gzipSync('abc').length > 0,
  };
};
"#;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn invoke(s: &Server, name: &str, body: &str) -> Reply {
    rt().block_on(s.client().request(
        Method::POST,
        &format!("/invoke/{name}"),
        Bytes::from(body.to_owned()),
    ))
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

/// A function directory with one file.
fn function_dir(s: &Server, name: &str, file: &str, text: &str) -> PathBuf {
    let dir = s.work.path().join(name);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
    dir
}

/// Deploys with the CLI; returns its summary line without the time it
/// took ("deployed NAME version N (start: MODE)") and its stderr.
fn deploy(
    s: &Server,
    name: &str,
    dir: &Path,
    runtime: &str,
    handler: &str,
    extra: &[&str],
) -> (String, String) {
    let mut args = vec![
        "deploy",
        name,
        "--dir",
        dir.to_str().unwrap(),
        "--runtime",
        runtime,
        "--handler",
        handler,
    ];
    args.extend_from_slice(extra);
    let o = s.cli(&args);
    let (out, err) = (
        String::from_utf8_lossy(&o.stdout).into_owned(),
        String::from_utf8_lossy(&o.stderr).into_owned(),
    );
    assert!(o.status.success(), "deploy {name}: {err}");
    let last = out.lines().last().unwrap_or_default();
    let summary = last.rsplit_once(" in ").map_or(last, |(s, _)| s);
    (summary.to_owned(), err)
}

fn deploy_fails(s: &Server, name: &str, dir: &Path, runtime: &str, handler: &str) -> String {
    let o = s.cli(&[
        "deploy",
        name,
        "--dir",
        dir.to_str().unwrap(),
        "--runtime",
        runtime,
        "--handler",
        handler,
    ]);
    assert!(!o.status.success(), "deploy {name} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// The Python checks, on a server whose Python instances start `start`
/// (`restore` or `cold`).
fn python_cases(s: &Server, start: &str) {
    let dir = function_dir(s, "py", "lambda_function.py", PYTHON_HANDLER);
    let (out, _) = deploy(
        s,
        "py",
        &dir,
        "python",
        "lambda_function.lambda_handler",
        &["--working-set-request", r#"{"n": 1}"#],
    );
    assert_eq!(
        out.trim(),
        format!("deployed py version 1 (start: {start})")
    );
    deploy(
        s,
        "pyslow",
        &dir,
        "python",
        "lambda_function.lambda_handler",
        &["--timeout-ms", "1500"],
    );
    let ls = String::from_utf8_lossy(&s.cli(&["ls"]).stdout).into_owned();
    let row = ls.lines().find(|l| l.starts_with("py ")).unwrap();
    assert!(row.contains(&format!(" {start} ")), "{ls}");

    // JSON echo; heavy imports at module scope; fresh module state.
    let a = invoke(s, "py", r#"{"n": [1, "two", {"three": 3.5}]}"#);
    let b = invoke(s, "py", r#"{"n": 2}"#);
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(header(&a, "content-type"), "application/json");
    assert_eq!(header(&a, "x-faas-start"), start);
    assert!(header(&a, "server-timing").contains(&format!("desc={start}")));
    let (ja, jb) = (json(&a), json(&b));
    assert_eq!(
        ja["echo"],
        serde_json::json!({"n": [1, "two", {"three": 3.5}]})
    );
    assert_eq!(jb["echo"], serde_json::json!({"n": 2}));
    assert_eq!(ja["modules"], true);
    assert_eq!(
        (ja["count"].as_u64(), jb["count"].as_u64()),
        (Some(1), Some(1))
    );
    // Two instances (two restores of one snapshot) draw different numbers.
    assert_ne!(ja["rand"], jb["rand"]);
    assert_eq!(ja["request_id"], header(&a, "x-faas-invocation-id"));
    if start == "restore" {
        // The Lambda layout inside the sandbox, also after a restore.
        assert_eq!(ja["cwd"], "/var/task");
        assert_eq!(ja["pid"], 1);
    } else {
        assert!(ja["cwd"].as_str().unwrap().ends_with("/root"), "{ja}");
    }

    // A raised exception: Lambda's error shape.
    let e = invoke(s, "py", r#"{"boom": 5}"#);
    assert_eq!(e.status, 500);
    let je = json(&e);
    assert_eq!(je["error"], "function_error");
    let msg = je["message"].as_str().unwrap();
    let lambda: serde_json::Value =
        serde_json::from_str(msg.strip_prefix("function error: ").unwrap()).unwrap();
    assert_eq!(lambda["errorType"], "ValueError");
    assert_eq!(lambda["errorMessage"], "bad input: 5");
    assert!(
        lambda["stackTrace"][0]
            .as_str()
            .unwrap()
            .contains("lambda_function.py")
    );

    // A 5 MiB response (a sealed memfd on the wire).
    let big = invoke(s, "py", r#"{"big": 5242880}"#);
    assert_eq!(big.status, 200);
    assert_eq!(big.body.len(), 5 * 1024 * 1024);
    assert!(big.body.iter().all(|&c| c == b'x'));

    // Past its timeout: 504, the instance killed.
    let t = invoke(s, "pyslow", r#"{"sleep": 10}"#);
    assert_eq!(t.status, 504, "{:?}", String::from_utf8_lossy(&t.body));
    assert_eq!(json(&t)["error"], "timeout");
    assert_eq!(invoke(s, "pyslow", "{}").status, 200);

    // Keep-alive: the first request starts an instance, the next one
    // reuses it (and its module state).
    deploy(
        s,
        "pyka",
        &dir,
        "python",
        "lambda_function.lambda_handler",
        &["--keep-alive-ms", "30000"],
    );
    let k1 = invoke(s, "pyka", "{}");
    let k2 = invoke(s, "pyka", "{}");
    assert_eq!(
        (header(&k1, "x-faas-start"), header(&k2, "x-faas-start")),
        (start, "warm")
    );
    assert_eq!(
        (json(&k1)["count"].as_u64(), json(&k2)["count"].as_u64()),
        (Some(1), Some(2))
    );

    // Logs: the handler's print and logging lines arrive as Log frames of
    // its invocation.
    let id = header(&a, "x-faas-invocation-id");
    let log = s.log();
    for line in [
        format!("print line of {id}"),
        format!("logging line of {id}"),
    ] {
        assert!(
            log.lines()
                .any(|l| l.contains(&line) && l.contains(&format!("invocation={id}"))),
            "{line:?} not logged for invocation {id}:\n{log}"
        );
    }
}

#[test]
fn python_restored_from_a_snapshot_in_the_pooled_sandbox() {
    let mut s = Server::start_logged(&["--sandbox", "pooled"]);
    python_cases(&s, "restore");

    // Deploying with --working-set-request recorded the snapshot's working
    // set (the pages that request wrote): a non-empty `workingset` file
    // next to it. Without it (pyslow) no request ran at deploy.
    let working_set = |f: &str| {
        let spec: serde_json::Value = serde_json::from_slice(
            &rt()
                .block_on(
                    s.client()
                        .request(Method::GET, &format!("/functions/{f}"), Bytes::new()),
                )
                .unwrap()
                .body,
        )
        .unwrap();
        std::path::Path::new(spec["snapshot"].as_str().unwrap()).join("workingset")
    };
    let ws = working_set("py");
    let len = std::fs::metadata(&ws).map_or(0, |m| m.len());
    assert!(
        len > 48,
        "{} is {len} bytes; log:\n{}",
        ws.display(),
        s.log()
    );
    let none = working_set("pyslow");
    assert!(!none.exists(), "{} exists", none.display());

    // Deploy errors: no module file; a module that fails to import.
    let dir = function_dir(&s, "bad", "app.py", "import no_such_module_here\n");
    let e = deploy_fails(&s, "bad", &dir, "python", "missing.handler");
    assert!(e.contains("no module file missing.py"), "{e}");
    let e = deploy_fails(&s, "bad", &dir, "python", "app.handler");
    assert!(
        e.contains("exited with status 2 while initialising")
            && e.contains("No module named 'no_such_module_here'"),
        "{e}"
    );
    // A module that leaves a thread running cannot be checkpointed: it
    // deploys cold, with a warning.
    let dir = function_dir(
        &s,
        "threads",
        "app.py",
        "import threading, time\nthreading.Thread(target=time.sleep, args=(60,), daemon=True).start()\n\ndef handler(event, context):\n    return 'cold'\n",
    );
    let (out, err) = deploy(&s, "threads", &dir, "python", "app.handler", &[]);
    assert!(out.contains("(start: cold)"), "{out}");
    assert!(
        err.contains("warning: no snapshot was taken") && err.contains("threads"),
        "{err}"
    );
    let r = invoke(&s, "threads", "");
    assert_eq!((r.status.as_u16(), &r.body[..]), (200, &b"\"cold\""[..]));

    // After a restart the snapshot is opened again. One that is gone (or
    // no longer matches the host) is never restored: the function starts
    // cold, and says so.
    let spec: serde_json::Value = serde_json::from_slice(
        &rt()
            .block_on(
                s.client()
                    .request(Method::GET, "/functions/pyslow", Bytes::new()),
            )
            .unwrap()
            .body,
    )
    .unwrap();
    assert_eq!(spec["start"], "restore");
    std::fs::remove_dir_all(spec["snapshot"].as_str().unwrap()).unwrap();
    s.restart();
    let r = invoke(&s, "py", "{}");
    assert_eq!(
        (r.status.as_u16(), header(&r, "x-faas-start")),
        (200, "restore")
    );
    let r = invoke(&s, "pyslow", "{}");
    assert_eq!(
        (r.status.as_u16(), header(&r, "x-faas-start")),
        (200, "cold")
    );
    assert!(
        s.log()
            .contains("restoring the snapshot failed; starting cold from now on"),
        "{}",
        s.log()
    );
}

#[test]
fn python_cold_as_plain_processes() {
    let s = Server::start_logged(&["--sandbox", "process", "--node", "/nonexistent/node"]);
    python_cases(&s, "cold");
    let dir = function_dir(&s, "n", "index.js", NODE_HANDLER);
    let e = deploy_fails(&s, "n", &dir, "node", "index.handler");
    assert!(
        e.contains("runtime node is not available on this node: /nonexistent/node not found"),
        "{e}"
    );
}

#[test]
fn node_cold_in_the_pooled_sandbox() {
    let s = Server::start_logged(&["--sandbox", "pooled"]);
    let dir = function_dir(&s, "node", "index.js", NODE_HANDLER);
    let (out, _) = deploy(&s, "node", &dir, "node", "index.handler", &[]);
    assert_eq!(out.trim(), "deployed node version 1 (start: cold)");
    deploy(
        &s,
        "nodeslow",
        &dir,
        "node",
        "index.handler",
        &["--timeout-ms", "1500"],
    );

    let a = invoke(&s, "node", r#"{"n": [1, "two"]}"#);
    let b = invoke(&s, "node", r#"{"n": 2}"#);
    assert_eq!(a.status, 200, "{:?}", String::from_utf8_lossy(&a.body));
    assert_eq!(header(&a, "x-faas-start"), "cold");
    let (ja, jb) = (json(&a), json(&b));
    assert_eq!(ja["echo"], serde_json::json!({"n": [1, "two"]}));
    assert_eq!(
        (ja["count"].as_u64(), jb["count"].as_u64()),
        (Some(1), Some(1))
    );
    assert_ne!(ja["rand"], jb["rand"]);
    assert_eq!(ja["gzip"], true);
    assert_eq!(ja["cwd"], "/var/task");

    let e = invoke(&s, "node", r#"{"boom": 7}"#);
    assert_eq!(e.status, 500);
    let msg = json(&e)["message"].as_str().unwrap().to_owned();
    let lambda: serde_json::Value =
        serde_json::from_str(msg.strip_prefix("function error: ").unwrap()).unwrap();
    assert_eq!(lambda["errorType"], "Error");
    assert_eq!(lambda["errorMessage"], "bad input: 7");

    // A 5 MiB response: the runtime's N-API addon (shipped in the `faas`
    // binary, written next to the runtime) sends it as a sealed memfd.
    let big = invoke(&s, "node", r#"{"big": 5242880}"#);
    assert_eq!(
        big.status,
        200,
        "{:?}",
        String::from_utf8_lossy(&big.body[..big.body.len().min(300)])
    );
    assert_eq!(big.body.len(), 5 * 1024 * 1024);
    assert!(big.body.iter().all(|&c| c == b'x'));
    // And a 1 MiB request body (a memfd in the other direction).
    let payload = format!(r#"{{"echo": "{}"}}"#, "y".repeat(1 << 20));
    let echo = invoke(&s, "node", &payload);
    assert_eq!(echo.status, 200);
    assert!(echo.body.len() > 1 << 20);

    let t = invoke(&s, "nodeslow", r#"{"sleep": 10}"#);
    assert_eq!(t.status, 504);

    // Node's request id is the invocation id in decimal.
    let id = header(&a, "x-faas-invocation-id");
    let decimal = u64::from_str_radix(id, 16).unwrap();
    let log = s.log();
    assert!(
        log.lines()
            .any(|l| l.contains(&format!("console line of {decimal}"))
                && l.contains(&format!("invocation={id}"))),
        "console.log of invocation {id} not logged:\n{log}"
    );
    let e = deploy_fails(&s, "bad", &dir, "node", "missing.handler");
    assert!(e.contains("no module file missing.js"), "{e}");
}

/// A shared library in the function's own directory, loaded at module
/// scope (what a Python C extension or a `ctypes` binding does): the
/// snapshot maps it as `/var/task/libadd.so`, which exists on the host only
/// under the function's version directory — the restore finds it through
/// the sandbox's binds.
#[test]
fn python_with_a_shared_library_in_its_code_is_restored() {
    let s = Server::start_logged(&["--sandbox", "pooled"]);
    let dir = function_dir(
        &s,
        "pyext",
        "lambda_function.py",
        "import ctypes, os\n\
         LIB = ctypes.CDLL(os.path.join(os.path.dirname(__file__), 'libadd.so'))\n\
         def lambda_handler(event, context):\n    return {'sum': LIB.add(event['a'], event['b'])}\n",
    );
    std::fs::write(
        dir.join("add.c"),
        "int add(int a, int b) { return a + b; }\n",
    )
    .unwrap();
    let cc = std::process::Command::new("gcc")
        .args(["-shared", "-fPIC", "-O2", "-o"])
        .arg(dir.join("libadd.so"))
        .arg(dir.join("add.c"))
        .status()
        .expect("gcc (scripts/test installs it)");
    assert!(cc.success(), "gcc failed");
    let (out, err) = deploy(
        &s,
        "pyext",
        &dir,
        "python",
        "lambda_function.lambda_handler",
        &[],
    );
    assert_eq!(
        out.trim(),
        "deployed pyext version 1 (start: restore)",
        "{err}"
    );
    for _ in 0..2 {
        let r = invoke(&s, "pyext", r#"{"a": 40, "b": 2}"#);
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(header(&r, "x-faas-start"), "restore");
        assert_eq!(json(&r)["sum"], 42);
    }
}
