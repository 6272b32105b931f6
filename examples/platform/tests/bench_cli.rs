//! `faas bench`: the real binary's JSON reports, embedded and against a
//! running server, and `faas bench compare` of the four ways. No timing is
//! asserted, only what the numbers must be consistent with.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::process::Command;

use common::{FAAS, Server};
use serde_json::Value;

/// Runs `faas ARGS`, asserts success and parses its stdout as one JSON
/// object.
fn bench_json(args: &[&str]) -> Value {
    let o = Command::new(FAAS).args(args).output().unwrap();
    assert!(
        o.status.success(),
        "faas {args:?}: {}",
        String::from_utf8_lossy(&o.stderr)
    );
    serde_json::from_slice(&o.stdout)
        .unwrap_or_else(|e| panic!("faas {args:?}: {e}: {}", String::from_utf8_lossy(&o.stdout)))
}

/// Runs `faas ARGS`, asserts failure; returns stderr.
fn bench_fails(args: &[&str]) -> String {
    let o = Command::new(FAAS).args(args).output().unwrap();
    assert!(!o.status.success(), "faas {args:?} succeeded");
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn count(v: &Value, mode: &str) -> u64 {
    v["start_modes"][mode]
        .as_u64()
        .unwrap_or_else(|| panic!("no start_modes.{mode} in {v}"))
}

/// The fields every load report has, consistent with each other.
fn check_report(v: &Value, mode: &str, requests: u64, concurrency: u64) {
    assert_eq!(v["mode"], mode, "{v}");
    assert_eq!(v["requests"], requests, "{v}");
    assert_eq!(v["errors"], 0, "{v}");
    assert_eq!(v["concurrency"], concurrency, "{v}");
    let us = |k: &str| v[k].as_u64().unwrap_or_else(|| panic!("no {k} in {v}"));
    assert!(us("p50_us") > 0, "{v}");
    assert!(us("p50_us") <= us("p90_us"), "{v}");
    assert!(us("p90_us") <= us("p99_us"), "{v}");
    assert!(us("p99_us") <= us("max_us"), "{v}");
    assert!(us("mean_us") <= us("max_us"), "{v}");
    assert!(v["rps"].as_f64().unwrap() > 0.0, "{v}");
    let seen: u64 = ["cold", "restore", "fork", "warm"]
        .iter()
        .map(|m| count(v, m))
        .sum();
    assert_eq!(seen, requests, "every response reports its start mode: {v}");
}

#[test]
fn cold_bench_starts_a_fresh_instance_per_request() {
    let v = bench_json(&["bench", "cold", "--requests", "20", "--json"]);
    check_report(&v, "cold", 20, 1);
    assert_eq!(v["function"], "hello");
    assert_eq!(count(&v, "warm"), 0, "{v}");
    assert_eq!(count(&v, "cold") + count(&v, "restore"), 20, "{v}");
    // The default mode is cold: what the README's `faas bench` runs.
    let v = bench_json(&["bench", "--requests", "3", "--concurrency", "2", "--json"]);
    check_report(&v, "cold", 3, 2);
}

#[test]
fn warm_bench_reuses_warmed_up_instances() {
    let v = bench_json(&[
        "bench",
        "warm",
        "--requests",
        "60",
        "--concurrency",
        "3",
        "--json",
    ]);
    check_report(&v, "warm", 60, 3);
    // Whether an instance is parked again before the next request comes
    // is the platform's race to win; the report counts what it lost.
    assert!(count(&v, "warm") > 0, "{v}");
    assert_eq!(v["not_warm"], 60 - count(&v, "warm"), "{v}");
    // The older spelling.
    let v = bench_json(&["bench", "--keep-alive", "--requests", "5", "--json"]);
    check_report(&v, "warm", 5, 1);
}

#[test]
fn bench_against_a_running_server_checks_the_function() {
    let s = Server::start(&[]);
    let examples = s.examples();
    let hello = examples.join("hello");
    s.deploy("hello", &hello, "hello", &[]);
    s.deploy("hello-ka", &hello, "hello", &["--keep-alive-ms", "60000"]);

    let cold = ["bench", "cold", "--server", &s.url, "--function", "hello"];
    let v = bench_json(&[&cold[..], &["--requests", "10", "--json"]].concat());
    check_report(&v, "cold", 10, 1);
    assert_eq!(count(&v, "warm"), 0, "{v}");

    let warm = [
        "bench",
        "warm",
        "--server",
        &s.url,
        "--function",
        "hello-ka",
    ];
    let v = bench_json(
        &[
            &warm[..],
            &["--requests", "20", "--concurrency", "2", "--json"],
        ]
        .concat(),
    );
    check_report(&v, "warm", 20, 2);
    assert!(count(&v, "warm") > 0, "{v}");

    let e = bench_fails(&[
        "bench",
        "cold",
        "--server",
        &s.url,
        "--function",
        "hello-ka",
    ]);
    assert!(e.contains("keeps its instances alive"), "{e}");
    let e = bench_fails(&["bench", "warm", "--server", &s.url, "--function", "hello"]);
    assert!(e.contains("fresh instance per request"), "{e}");
    let e = bench_fails(&["bench", "cold", "--server", &s.url, "--function", "nope"]);
    assert!(e.contains("\"nope\" is not deployed"), "{e}");
}

#[test]
fn an_open_loop_bench_keeps_to_its_rate() {
    // 30 requests due at 100/s: the last is due 0.29 s after the first,
    // so however fast the answers, the run cannot go faster than the rate.
    let v = bench_json(&[
        "bench",
        "cold",
        "--rate",
        "100",
        "--requests",
        "30",
        "--concurrency",
        "2",
        "--json",
    ]);
    check_report(&v, "cold", 30, 2);
    assert_eq!(v["rate"], 100.0, "{v}");
    assert!(v["rps"].as_f64().unwrap() <= 30.0 / 0.29, "{v}");
    for bad in ["0", "-5", "nan", "fast"] {
        let e = bench_fails(&["bench", "cold", &format!("--rate={bad}")]);
        assert!(e.contains("not a rate above 0"), "{bad}: {e}");
    }
    let e = bench_fails(&["bench", "compare", "--rate", "10"]);
    assert!(e.contains("--rate applies to"), "{e}");
}

/// Whether `tool` is installed where `faas bench compare` looks for it.
fn installed(tool: &str) -> bool {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(["/usr/local/sbin", "/usr/sbin", "/sbin"].map(Into::into))
        .any(|d| d.join(tool).is_file())
}

#[test]
fn compare_runs_the_same_program_four_ways() {
    let v = bench_json(&["bench", "compare", "--requests", "5", "--json"]);
    assert_eq!(v["requests"], 5, "{v}");
    let ways = v["ways"].as_array().unwrap();
    let names: Vec<&str> = ways.iter().map(|w| w["way"].as_str().unwrap()).collect();
    assert_eq!(names, ["platform", "exec", "bwrap", "runc"], "{v}");
    for w in ways {
        let name = w["way"].as_str().unwrap();
        assert!(w.get("failed").is_none(), "{name} failed: {v}");
        if let Some(why) = w.get("skipped") {
            assert!(
                !installed(name),
                "{name} is installed but was skipped: {why}"
            );
            assert!(why.as_str().unwrap().contains("apt-get install"), "{v}");
            continue;
        }
        assert_eq!(w["runs"], 5, "{v}");
        for k in ["p50_ratio", "p99_ratio", "mean_ratio"] {
            let r = w[k]
                .as_f64()
                .unwrap_or_else(|| panic!("no {k} for {name}: {v}"));
            assert!(r.is_finite() && r > 0.0, "{name} {k} = {r}");
        }
        assert!(w["p50_us"].as_u64().unwrap() > 0, "{v}");
    }
    let platform = &ways[0];
    assert_eq!(platform["p50_ratio"].as_f64(), Some(1.0), "{v}");
    let modes = platform["start_modes"].as_object().unwrap();
    let fresh: u64 = modes.values().map(|n| n.as_u64().unwrap()).sum();
    assert_eq!(fresh, 5, "the platform answered from fresh instances: {v}");
    assert!(modes.get("warm").is_none(), "{v}");
}

#[test]
fn compare_refuses_what_is_not_a_program() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("notes.txt");
    std::fs::write(&f, "not a program").unwrap();
    let e = bench_fails(&["bench", "compare", "--binary", f.to_str().unwrap()]);
    assert!(e.contains("notes.txt: not an ELF executable"), "{e}");
    let e = bench_fails(&["bench", "compare", "--binary", "/nonexistent/guest"]);
    assert!(e.contains("/nonexistent/guest"), "{e}");
    let e = bench_fails(&["bench", "cold", "--binary", f.to_str().unwrap()]);
    assert!(
        e.contains("--binary applies to `faas bench compare` only"),
        "{e}"
    );
}
