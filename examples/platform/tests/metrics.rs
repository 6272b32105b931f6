//! End-to-end tests of `GET /metrics`: the real `faas serve`, functions
//! deployed and invoked over HTTP, the exposition scraped over HTTP and
//! read by a strict parser of the Prometheus text format 0.0.4 (every line
//! is a `# HELP`/`# TYPE` comment or `name{labels} value`; every sample
//! belongs to a declared family; histogram buckets are cumulative and end
//! in `+Inf` = `_count`). The counters must count exactly what was done.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::{BTreeMap, HashMap};
use std::io::Write;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::Server;
use faas_platform::client::Reply;
use http::Method;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn request(s: &Server, method: Method, path: &str, body: &str) -> Reply {
    rt().block_on(
        s.client()
            .request(method, path, Bytes::from(body.to_owned())),
    )
    .unwrap()
}

/// One sample: metric name, labels, value.
#[derive(Debug)]
struct Sample {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// A sample's labels, sorted by name.
type Labels = Vec<(String, String)>;

/// A scrape, parsed.
struct Scrape {
    /// Family name → type.
    types: HashMap<String, String>,
    samples: Vec<Sample>,
    text: String,
}

impl Scrape {
    /// The value of the sample `name` with exactly these labels.
    fn get(&self, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
        let want: BTreeMap<String, String> = labels
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect();
        let mut found = self
            .samples
            .iter()
            .filter(|s| s.name == name && s.labels == want);
        let v = found.next().map(|s| s.value);
        assert!(found.next().is_none(), "{name} {labels:?} twice");
        v
    }

    fn value(&self, name: &str, labels: &[(&str, &str)]) -> f64 {
        self.get(name, labels)
            .unwrap_or_else(|| panic!("no sample {name} {labels:?} in\n{}", self.text))
    }

    /// Every sample of `name`.
    fn all(&self, name: &str) -> Vec<&Sample> {
        self.samples.iter().filter(|s| s.name == name).collect()
    }
}

/// A label value up to its closing quote, unescaped; returns it and the
/// rest after the quote.
fn label_value(s: &str) -> (String, &str) {
    let mut out = String::new();
    let mut chars = s.char_indices();
    while let Some((i, c)) = chars.next() {
        match c {
            '"' => return (out, &s[i + 1..]),
            '\\' => match chars.next() {
                Some((_, '\\')) => out.push('\\'),
                Some((_, '"')) => out.push('"'),
                Some((_, 'n')) => out.push('\n'),
                other => panic!("bad escape {other:?} in label value {s:?}"),
            },
            '\n' => panic!("raw newline in label value {s:?}"),
            c => out.push(c),
        }
    }
    panic!("unterminated label value {s:?}")
}

fn valid_name(n: &str) -> bool {
    let mut b = n.bytes();
    b.next()
        .is_some_and(|c| c.is_ascii_alphabetic() || c == b'_' || c == b':')
        && b.all(|c| c.is_ascii_alphanumeric() || c == b'_' || c == b':')
}

/// The family a sample belongs to (`x_bucket` → `x` for a histogram `x`).
fn family<'a>(types: &HashMap<String, String>, sample: &'a str) -> Option<&'a str> {
    if types.contains_key(sample) {
        return Some(sample);
    }
    ["_bucket", "_sum", "_count"].iter().find_map(|suffix| {
        let base = sample.strip_suffix(suffix)?;
        (types.get(base).map(String::as_str) == Some("histogram")).then_some(base)
    })
}

/// Parses the exposition strictly: panics at the first line that is not
/// a HELP/TYPE comment or a sample of a declared family.
fn parse(text: &str) -> Scrape {
    let mut types = HashMap::new();
    let mut helped = HashMap::new();
    let mut samples = Vec::new();
    assert!(text.ends_with('\n'), "exposition must end with a newline");
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# ") {
            let (kw, rest) = rest.split_once(' ').unwrap();
            let (name, arg) = rest.split_once(' ').unwrap();
            assert!(valid_name(name), "bad name in {line:?}");
            match kw {
                "HELP" => assert!(helped.insert(name.to_owned(), ()).is_none(), "{line}"),
                "TYPE" => {
                    assert!(
                        ["counter", "gauge", "histogram", "summary", "untyped"].contains(&arg),
                        "{line}"
                    );
                    assert!(
                        types.insert(name.to_owned(), arg.to_owned()).is_none(),
                        "TYPE twice: {line}"
                    );
                    assert!(
                        !samples.iter().any(|s: &Sample| family(
                            &HashMap::from([(name.to_owned(), arg.to_owned())]),
                            &s.name
                        )
                        .is_some()),
                        "TYPE after its samples: {line}"
                    );
                }
                _ => panic!("unexpected comment {line:?}"),
            }
            continue;
        }
        assert!(!line.starts_with('#'), "bad comment {line:?}");
        let name_end = line.find(['{', ' ']).unwrap_or_else(|| panic!("{line:?}"));
        let name = &line[..name_end];
        assert!(valid_name(name), "bad metric name in {line:?}");
        let mut rest = &line[name_end..];
        let mut labels = BTreeMap::new();
        if let Some(r) = rest.strip_prefix('{') {
            rest = r;
            loop {
                if let Some(r) = rest.strip_prefix('}') {
                    rest = r;
                    break;
                }
                let (k, r) = rest.split_once("=\"").unwrap_or_else(|| panic!("{line:?}"));
                assert!(valid_name(k) && !k.starts_with("__"), "bad label {k:?}");
                let (v, r) = label_value(r);
                assert!(
                    labels.insert(k.to_owned(), v).is_none(),
                    "label twice: {line}"
                );
                rest = r.strip_prefix(',').unwrap_or(r);
                assert!(
                    rest.starts_with('}') || r.starts_with(','),
                    "labels not separated: {line:?}"
                );
            }
        }
        let value = rest
            .strip_prefix(' ')
            .unwrap_or_else(|| panic!("no value in {line:?}"));
        assert!(!value.contains(' '), "timestamps are not used: {line:?}");
        let value: f64 = match value {
            "+Inf" => f64::INFINITY,
            "-Inf" => f64::NEG_INFINITY,
            v => v
                .parse()
                .unwrap_or_else(|_| panic!("bad value in {line:?}")),
        };
        let fam = family(&types, name).unwrap_or_else(|| panic!("no TYPE for {line:?}"));
        assert!(helped.contains_key(fam), "no HELP for {fam}");
        samples.push(Sample {
            name: name.to_owned(),
            labels,
            value,
        });
    }
    let scrape = Scrape {
        types,
        samples,
        text: text.to_owned(),
    };
    check_histograms(&scrape);
    scrape
}

/// Every histogram series: buckets in increasing `le`, cumulative, the
/// last `+Inf` and equal to `_count`; a `_sum` that is not negative.
fn check_histograms(s: &Scrape) {
    for (fam, kind) in &s.types {
        if kind != "histogram" {
            continue;
        }
        // Labels without `le` → (le, cumulative count) of each bucket.
        let mut series: BTreeMap<Labels, Vec<(f64, f64)>> = BTreeMap::new();
        for b in s.all(&format!("{fam}_bucket")) {
            let mut labels = b.labels.clone();
            let le = labels.remove("le").expect("bucket without le");
            let le: f64 = if le == "+Inf" {
                f64::INFINITY
            } else {
                le.parse().unwrap()
            };
            series
                .entry(labels.into_iter().collect())
                .or_default()
                .push((le, b.value));
        }
        for (labels, buckets) in series {
            assert!(
                buckets
                    .windows(2)
                    .all(|w| w[0].0 < w[1].0 && w[0].1 <= w[1].1),
                "{fam} {labels:?}: buckets not increasing / not cumulative: {buckets:?}"
            );
            let last = buckets.last().unwrap();
            assert!(last.0.is_infinite(), "{fam} {labels:?} has no +Inf bucket");
            let labels: Vec<(&str, &str)> = labels
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(s.value(&format!("{fam}_count"), &labels), last.1);
            assert!(s.value(&format!("{fam}_sum"), &labels) >= 0.0);
        }
    }
}

fn scrape(s: &Server) -> Scrape {
    let r = request(s, Method::GET, "/metrics", "");
    assert_eq!(r.status, 200);
    let ct = r.headers["content-type"].to_str().unwrap();
    assert!(ct.starts_with("text/plain; version=0.0.4"), "{ct}");
    parse(std::str::from_utf8(&r.body).unwrap())
}

/// Scrapes until `done` holds (instances tear down after their answer).
fn scrape_until(s: &Server, what: &str, done: impl Fn(&Scrape) -> bool) -> Scrape {
    let t = Instant::now();
    loop {
        let m = scrape(s);
        if done(&m) {
            return m;
        }
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "{what} never happened:\n{}",
            m.text
        );
        std::thread::sleep(Duration::from_millis(50));
    }
}

#[test]
fn metrics_count_requests_starts_errors_and_instances_exactly() {
    // Plain processes: the failing function is a shell script.
    let s = Server::start(&["--sandbox", "process"]);
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    s.deploy(
        "warm",
        &ex.join("hello"),
        "hello",
        &["--keep-alive-ms", "4000"],
    );
    s.deploy("crash", &s.script("crash", "exit 3"), "run", &[]);
    let bad = request(&s, Method::POST, "/functions", "{not json");
    assert_eq!(bad.status, 400);

    const N: usize = 5;
    for _ in 0..N {
        let r = request(&s, Method::POST, "/invoke/hello", "hi");
        assert_eq!(r.status, 200);
        assert_eq!(r.headers["x-faas-start"], "cold");
    }
    let starts: Vec<_> = (0..3)
        .map(|_| {
            let r = request(&s, Method::POST, "/invoke/warm", "hi");
            assert_eq!(r.status, 200);
            r.headers["x-faas-start"].to_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(starts, ["cold", "warm", "warm"]);
    assert_eq!(request(&s, Method::POST, "/invoke/nope", "x").status, 404);
    assert_eq!(request(&s, Method::POST, "/invoke/crash", "x").status, 502);

    // The kept-alive instance of `warm` is alive (4 s idle time).
    let m = scrape(&s);
    assert!(
        m.value("faas_live_instances", &[("node", "local")]) >= 1.0,
        "{}",
        m.text
    );
    // Every instance is gone once the keep-alive instance's idle time passed.
    let m = scrape_until(&s, "live instances back to 0", |m| {
        m.get("faas_live_instances", &[("node", "local")]) == Some(0.0)
    });

    let req = |f: &str, v: &str, mode: &str, status: &str| {
        m.get(
            "faas_requests_total",
            &[
                ("function", f),
                ("version", v),
                ("start_mode", mode),
                ("status", status),
            ],
        )
    };
    assert_eq!(req("hello", "1", "cold", "200"), Some(N as f64));
    assert_eq!(req("warm", "1", "cold", "200"), Some(1.0));
    assert_eq!(req("warm", "1", "warm", "200"), Some(2.0));
    assert_eq!(req("crash", "1", "none", "502"), Some(1.0));
    assert_eq!(req("", "", "none", "404"), Some(1.0));
    let total: f64 = m.all("faas_requests_total").iter().map(|s| s.value).sum();
    assert_eq!(total, (N + 3 + 2) as f64, "{}", m.text);

    let fv = |f: &'static str, mode: &'static str| {
        [("function", f), ("version", "1"), ("start_mode", mode)]
    };
    assert_eq!(
        m.value("faas_request_duration_seconds_count", &fv("hello", "cold")),
        N as f64
    );
    assert_eq!(
        m.value("faas_request_duration_seconds_count", &fv("warm", "warm")),
        2.0
    );
    assert!(m.value("faas_request_duration_seconds_sum", &fv("hello", "cold")) > 0.0);
    // Instances that reached Ready: one per request of `hello`, one for
    // `warm`, none for `crash` (it exits before Ready).
    assert_eq!(
        m.value("faas_cold_starts_total", &fv("hello", "cold")),
        N as f64
    );
    assert_eq!(m.value("faas_cold_starts_total", &fv("warm", "cold")), 1.0);
    assert_eq!(m.all("faas_cold_starts_total").len(), 2, "{}", m.text);
    assert_eq!(
        m.value("faas_instance_start_seconds_count", &fv("hello", "cold")),
        N as f64
    );

    let errors = m.all("faas_invocation_errors_total");
    assert_eq!(errors.len(), 2, "{}", m.text);
    assert_eq!(
        m.value(
            "faas_invocation_errors_total",
            &[("function", "crash"), ("code", "instance_exited")]
        ),
        1.0
    );
    assert_eq!(
        m.value(
            "faas_invocation_errors_total",
            &[("function", ""), ("code", "function_not_found")]
        ),
        1.0
    );

    // One decision per scheduled request (not the 404).
    assert_eq!(
        m.value("faas_scheduler_decision_seconds_count", &[]),
        (N + 3 + 1) as f64
    );
    for f in ["hello", "warm", "crash"] {
        assert_eq!(m.value("faas_queue_depth", &[("function", f)]), 0.0);
        let fv = [("function", f), ("version", "1")];
        assert_eq!(m.value("faas_inflight_requests", &fv), 0.0);
    }
    assert_eq!(m.value("faas_deploys_total", &[("outcome", "ok")]), 3.0);
    assert_eq!(m.value("faas_deploys_total", &[("outcome", "error")]), 1.0);
    assert_eq!(m.value("faas_deploy_duration_seconds_count", &[]), 4.0);

    assert_eq!(
        request(&s, Method::POST, "/metrics", "").status,
        405,
        "only GET"
    );
}

#[test]
fn metrics_show_waiting_in_flight_and_abandoned_requests() {
    let s = Server::start(&["--sandbox", "process"]);
    // The script never says Ready: each request waits in the queue for its
    // instance until the deadline kills the instance.
    s.deploy(
        "slow",
        &s.script("slow", "sleep 4"),
        "run",
        &["--timeout-ms", "3000"],
    );
    let rt = rt();
    let c = s.client();
    let m = rt.block_on(async {
        let calls: Vec<_> = (0..3)
            .map(|_| {
                let c = c.clone();
                tokio::spawn(
                    async move { c.request(Method::POST, "/invoke/slow", Bytes::new()).await },
                )
            })
            .collect();
        // Scrape while all three wait (their instances are killed 3 s
        // after their launch: room for a loaded CI machine).
        let t = Instant::now();
        let m = loop {
            tokio::time::sleep(Duration::from_millis(50)).await;
            let r = c
                .request(Method::GET, "/metrics", Bytes::new())
                .await
                .unwrap();
            let m = parse(std::str::from_utf8(&r.body).unwrap());
            if m.get("faas_queue_depth", &[("function", "slow")]) == Some(3.0)
                && m.get("faas_live_instances", &[("node", "local")]) == Some(3.0)
            {
                break m;
            }
            assert!(
                t.elapsed() < Duration::from_millis(2700),
                "3 waiting requests never seen:\n{}",
                m.text
            );
        };
        for call in calls {
            assert_eq!(call.await.unwrap().unwrap().status, 504);
        }
        m
    });
    assert_eq!(m.value("faas_queue_depth", &[("function", "slow")]), 3.0);
    assert_eq!(m.value("faas_live_instances", &[("node", "local")]), 3.0);
    assert_eq!(
        m.value(
            "faas_inflight_requests",
            &[("function", "slow"), ("version", "1")]
        ),
        3.0
    );
    let m = scrape_until(&s, "the slow instances killed", |m| {
        m.get("faas_live_instances", &[("node", "local")]) == Some(0.0)
    });
    assert_eq!(m.value("faas_queue_depth", &[("function", "slow")]), 0.0);
    assert_eq!(
        m.value(
            "faas_invocation_errors_total",
            &[("function", "slow"), ("code", "timeout")]
        ),
        3.0
    );
    assert_eq!(
        m.value(
            "faas_inflight_requests",
            &[("function", "slow"), ("version", "1")]
        ),
        0.0
    );

    // A client that gives up before the answer (closes its connection):
    // counted as 499 at once, not in flight any more.
    let addr = s.url.trim_start_matches("http://").trim_end_matches('/');
    let mut conn = std::net::TcpStream::connect(addr).unwrap();
    conn.write_all(b"POST /invoke/slow HTTP/1.1\r\nhost: faas\r\ncontent-length: 0\r\n\r\n")
        .unwrap();
    std::thread::sleep(Duration::from_millis(300));
    drop(conn);
    let m = scrape_until(&s, "the abandoned request counted", |m| {
        m.get(
            "faas_requests_total",
            &[
                ("function", "slow"),
                ("version", "1"),
                ("start_mode", "none"),
                ("status", "499"),
            ],
        ) == Some(1.0)
    });
    assert_eq!(
        m.value(
            "faas_inflight_requests",
            &[("function", "slow"), ("version", "1")]
        ),
        0.0
    );
    assert_eq!(
        m.value(
            "faas_invocation_errors_total",
            &[("function", "slow"), ("code", "client_closed")]
        ),
        1.0
    );
    // Its instance is killed at the deadline; nothing else is counted.
    let m = scrape_until(&s, "the abandoned request's instance killed", |m| {
        m.get("faas_live_instances", &[("node", "local")]) == Some(0.0)
    });
    let total: f64 = m.all("faas_requests_total").iter().map(|s| s.value).sum();
    assert_eq!(total, 4.0, "{}", m.text);
    assert_eq!(
        m.get(
            "faas_requests_total",
            &[
                ("function", "slow"),
                ("version", "1"),
                ("start_mode", "none"),
                ("status", "504"),
            ],
        ),
        Some(3.0),
        "the abandoned request was answered after all"
    );
}

#[test]
fn metrics_show_python_instances_restored_from_the_snapshot() {
    // Needs root (pooled sandbox, snapshots) and /usr/bin/python3.
    let s = Server::start(&["--sandbox", "pooled"]);
    let dir = s.work.path().join("py");
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("app.py"),
        "def handler(event, context):\n    return {\"ok\": True}\n",
    )
    .unwrap();
    s.deploy("py", &dir, "app.handler", &["--runtime", "python"]);
    for _ in 0..3 {
        let r = request(&s, Method::POST, "/invoke/py", "{}");
        assert_eq!(r.status, 200, "{:?}", String::from_utf8_lossy(&r.body));
        assert_eq!(r.headers["x-faas-start"], "restore");
    }
    let m = scrape_until(&s, "live instances back to 0", |m| {
        m.get("faas_live_instances", &[("node", "local")]) == Some(0.0)
    });
    let fv = [
        ("function", "py"),
        ("version", "1"),
        ("start_mode", "restore"),
    ];
    let mut req = fv.to_vec();
    req.push(("status", "200"));
    assert_eq!(m.value("faas_requests_total", &req), 3.0);
    assert_eq!(m.value("faas_cold_starts_total", &fv), 3.0);
    assert_eq!(m.value("faas_instance_start_seconds_count", &fv), 3.0);
    assert_eq!(m.value("faas_request_duration_seconds_count", &fv), 3.0);
    assert_eq!(m.value("faas_queue_depth", &[("function", "py")]), 0.0);
    // The sandbox runtime says where each launch's sandbox came from: the
    // three restores (and the deploy's own start and trial restore), none
    // forked.
    let ev = |e: &str| {
        m.value(
            "faas_sandbox_events_total",
            &[("node", "local"), ("event", e)],
        )
    };
    let launches: f64 = [
        "launch_resumed",
        "launch_ready_restorer",
        "launch_parked",
        "launch_unpooled",
    ]
    .iter()
    .map(|e| ev(e))
    .sum();
    assert!(launches >= 3.0, "{}", m.text);
    assert_eq!(ev("launch_forked"), 0.0);
}
