//! The platform as a cluster: `faas serve --role gateway` and three
//! `faas node --join` agents, each in a network namespace of its own,
//! joined by veth pairs to a bridge in a fifth namespace (addresses
//! 10.213.0.0/24, only inside the namespaces this test creates). Needs
//! root (CI runs as root), `ip` (iproute2) and `nsenter` (util-linux).
//!
//! What it proves: nodes join over TCP and the gateway spreads requests
//! over them (`x-faas-node`); a Python function deployed through the
//! gateway is prepared (snapshotted) by a node; a node that fetches its
//! files from the gateway (n3, `--always-fetch`) serves them too; when a node is killed
//! (SIGKILL) while it runs a slow request, that request fails at once
//! with `502 node_lost` naming the node (not after its timeout), and the
//! following requests all succeed on the other two. Nodes join with the
//! cluster token the gateway created; deleting a function reaches the
//! nodes (n3's fetched copy goes, at once or when it joins again).
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAAS: &str = env!("CARGO_BIN_EXE_faas");
const GW_IP: &str = "10.213.0.1";
const NODES: [&str; 3] = ["n1", "n2", "n3"];

fn ip(args: &[&str]) {
    let o = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("cannot run `ip` (iproute2 is needed for this test): {e}"));
    assert!(
        o.status.success(),
        "ip {}: {}",
        args.join(" "),
        String::from_utf8_lossy(&o.stderr)
    );
}

/// The namespaces and processes of one test run; everything is removed on
/// drop, also when the test fails.
struct Cluster {
    prefix: String,
    namespaces: Vec<String>,
    gateway: Option<Child>,
    nodes: Vec<(String, Child)>,
    dir: tempfile::TempDir,
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for (_, c) in &mut self.nodes {
            let _ = c.kill();
            let _ = c.wait();
        }
        if let Some(c) = &mut self.gateway {
            let _ = c.kill();
            let _ = c.wait();
        }
        for ns in self.namespaces.iter().rev() {
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}

impl Cluster {
    fn ns(&self, short: &str) -> String {
        format!("{}-{short}", self.prefix)
    }

    /// Creates the namespaces, the bridge and the veth pairs.
    fn network() -> Cluster {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
            "the cluster test needs root (network namespaces); CI runs as root"
        );
        let mut c = Cluster {
            prefix: format!("faas-t-{}", std::process::id()),
            namespaces: Vec::new(),
            gateway: None,
            nodes: Vec::new(),
            dir: tempfile::tempdir().unwrap(),
        };
        let br = c.ns("br");
        for short in ["br", "gw", "n1", "n2", "n3"] {
            let ns = c.ns(short);
            ip(&["netns", "add", &ns]);
            c.namespaces.push(ns.clone());
            ip(&["-n", &ns, "link", "set", "lo", "up"]);
        }
        ip(&["-n", &br, "link", "add", "br0", "type", "bridge"]);
        ip(&["-n", &br, "link", "set", "br0", "up"]);
        for (i, short) in ["gw", "n1", "n2", "n3"].iter().enumerate() {
            let ns = c.ns(short);
            let peer = format!("p{i}");
            let addr = if *short == "gw" {
                format!("{GW_IP}/24")
            } else {
                format!("10.213.0.{}/24", 11 + i)
            };
            ip(&[
                "-n", &ns, "link", "add", "eth0", "type", "veth", "peer", "name", &peer, "netns",
                &br,
            ]);
            ip(&["-n", &ns, "addr", "add", &addr, "dev", "eth0"]);
            ip(&["-n", &ns, "link", "set", "eth0", "up"]);
            ip(&["-n", &br, "link", "set", &peer, "master", "br0"]);
            ip(&["-n", &br, "link", "set", &peer, "up"]);
        }
        c
    }

    /// `faas` in namespace `short`: `nsenter --net` rather than `ip netns
    /// exec`, which remounts /sys and so hides the cgroup hierarchy the
    /// node's sandbox runtime needs. Both exec `faas` (same pid).
    fn exec(&self, short: &str) -> Command {
        let mut cmd = Command::new("nsenter");
        cmd.arg(format!("--net=/run/netns/{}", self.ns(short)))
            .arg(FAAS);
        cmd
    }

    fn start_gateway(&mut self) {
        let state = self.dir.path().join("gw");
        let mut child = self
            .exec("gw")
            .args(["serve", "--role", "gateway", "--listen", "0.0.0.0:8080"])
            .arg("--state-dir")
            .arg(&state)
            .stdout(Stdio::piped())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut line = String::new();
        out.read_line(&mut line).unwrap();
        assert!(line.contains("nodes join on 0.0.0.0:8081"), "{line:?}");
        let mut how = String::new();
        out.read_line(&mut how).unwrap();
        out.read_line(&mut how).unwrap();
        let token = state.join("cluster.token");
        assert!(
            how.contains(&format!(
                "faas node --join GATEWAY-HOST:8081 --name NAME --cluster-token-file {}",
                token.display()
            )),
            "{how:?}"
        );
        self.gateway = Some(child);
    }

    fn start_node(&mut self, name: &str) {
        let state = self.dir.path().join(name);
        let child = self
            .exec(name)
            .args(["node", "--join", &format!("{GW_IP}:8081"), "--name", name])
            .args(["--slots", "4", "--quiet-instances", "--state-dir"])
            .arg(&state)
            .arg("--cluster-token-file")
            .arg(self.dir.path().join("gw/cluster.token"))
            // n3 does not use the shared state directory: it fetches each
            // version from the gateway over its connection.
            .args(if name == "n3" {
                &["--always-fetch"][..]
            } else {
                &[]
            })
            .stdout(Stdio::null())
            .spawn()
            .unwrap();
        self.nodes.push((name.to_owned(), child));
    }

    /// Runs the `faas` CLI in the gateway's namespace.
    fn cli(&self, args: &[&str]) -> Output {
        self.cli_cmd(args).output().unwrap()
    }

    fn cli_cmd(&self, args: &[&str]) -> Command {
        let mut cmd = self.exec("gw");
        cmd.args(args).env("FAAS_SERVER", "http://127.0.0.1:8080");
        cmd
    }

    fn nodes(&self) -> Vec<serde_json::Value> {
        let o = self.cli(&["nodes", "--json"]);
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        serde_json::from_slice(&o.stdout).unwrap()
    }

    fn wait_for(&self, what: &str, mut ok: impl FnMut(&[serde_json::Value]) -> bool) {
        let start = Instant::now();
        loop {
            let n = self.nodes();
            if ok(&n) {
                return;
            }
            assert!(
                start.elapsed() < Duration::from_secs(30),
                "timed out waiting for {what}: {n:?}"
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn deploy(&self, args: &[&str]) -> String {
        let o = self.cli(args);
        assert!(
            o.status.success(),
            "deploy: {}",
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8(o.stdout).unwrap()
    }
}

/// One `faas invoke -i` answer: status, the node that ran it, body/error.
#[derive(Debug)]
struct Answer {
    status: u16,
    node: String,
    text: String,
}

fn answer(o: &Output) -> Answer {
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let status = err
        .lines()
        .next()
        .and_then(|l| l.split_whitespace().next())
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("no status line in {err:?}"));
    let node = err
        .lines()
        .find_map(|l| l.strip_prefix("x-faas-node: "))
        .unwrap_or_default()
        .to_owned();
    Answer {
        status,
        node,
        text: format!("{}{err}", String::from_utf8_lossy(&o.stdout)),
    }
}

fn write(dir: &Path, file: &str, text: &str) -> PathBuf {
    std::fs::create_dir_all(dir).unwrap();
    std::fs::write(dir.join(file), text).unwrap();
    dir.to_owned()
}

#[test]
fn three_nodes_share_the_load_and_a_killed_node_fails_only_its_requests() {
    let mut c = Cluster::network();
    c.start_gateway();
    for n in NODES {
        c.start_node(n);
    }
    c.wait_for("three nodes to join", |n| {
        n.iter().filter(|n| n["state"] == "up").count() == 3
    });

    // Functions: the native hello example and a Python function that
    // sleeps as long as it is told, prepared (snapshotted) by a node.
    let ex = c.dir.path().join("examples");
    let o = Command::new(FAAS)
        .args(["example-functions", "--out"])
        .arg(&ex)
        .output()
        .unwrap();
    assert!(o.status.success());
    let hello = ex.join("hello");
    c.deploy(&[
        "deploy",
        "hello",
        "--dir",
        hello.to_str().unwrap(),
        "--handler",
        "hello",
    ]);
    let slow = write(
        &c.dir.path().join("slow"),
        "app.py",
        "import time\n\ndef handler(event, context):\n    time.sleep(event.get('sleep', 0))\n    return {'slept': event.get('sleep', 0)}\n",
    );
    let out = c.deploy(&[
        "deploy",
        "slow",
        "--dir",
        slow.to_str().unwrap(),
        "--runtime",
        "python",
        "--handler",
        "app.handler",
        "--timeout-ms",
        "30000",
    ]);
    assert!(out.contains("start: restore"), "{out}");

    // Concurrent requests spread over the nodes: 12 at once fill the 3 × 4
    // slots, so every node runs some.
    let running: Vec<Child> = (0..12)
        .map(|_| {
            c.cli_cmd(&["invoke", "slow", "-i", "--data", r#"{"sleep": 2}"#])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        })
        .collect();
    let mut used = BTreeSet::new();
    for child in running {
        let a = answer(&child.wait_with_output().unwrap());
        assert_eq!(a.status, 200, "{a:?}");
        assert!(a.text.contains(r#"{"slept": 2}"#), "{a:?}");
        used.insert(a.node);
    }
    assert_eq!(used.len(), 3, "requests ran on {used:?} only");
    // n3 ran them from its fetched copy, the others from the shared one.
    for n in NODES {
        let cache = c.dir.path().join(n).join("cache");
        assert_eq!(cache.join("slow").is_dir(), n == "n3", "{n}");
    }
    let a = answer(&c.cli(&["invoke", "hello", "-i", "--data", "hi"]));
    assert_eq!(a.status, 200, "{a:?}");
    assert!(a.text.contains("hello from"), "{a:?}");
    c.wait_for("no request in flight", |n| {
        n.iter().all(|n| n["in_flight"] == 0)
    });

    // A slow request; kill the node that runs it.
    let started = Instant::now();
    let victim_req = c
        .cli_cmd(&["invoke", "slow", "-i", "--data", r#"{"sleep": 20}"#])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut victim = String::new();
    c.wait_for("the slow request to run", |n| {
        match n.iter().find(|n| n["in_flight"] == 1) {
            Some(v) => {
                victim = v["name"].as_str().unwrap().to_owned();
                true
            }
            None => false,
        }
    });
    std::thread::sleep(Duration::from_millis(300));
    let i = c.nodes.iter().position(|(n, _)| *n == victim).unwrap();
    let (_, mut child) = c.nodes.remove(i);
    // SIGKILL of the agent (`nsenter` execs it: same pid).
    child.kill().unwrap();
    child.wait().unwrap();
    let killed = Instant::now();
    let a = answer(&victim_req.wait_with_output().unwrap());
    assert_eq!(a.status, 502, "{a:?}");
    assert!(a.text.contains(&format!("node {victim} was lost")), "{a:?}");
    assert_eq!(a.node, victim);
    // It failed when the node died, long before the function's 20 s.
    assert!(
        started.elapsed() < Duration::from_secs(15),
        "the request failed only after {:?} ({:?} after the kill)",
        started.elapsed(),
        killed.elapsed()
    );

    // Every following request succeeds, on the two others.
    for i in 0..8 {
        let a = answer(&c.cli(&["invoke", "hello", "-i", "--data", &format!("after {i}")]));
        assert_eq!(a.status, 200, "{a:?}");
        assert_ne!(a.node, victim, "{a:?}");
    }
    let a = answer(&c.cli(&["invoke", "slow", "-i", "--data", r#"{"sleep": 0}"#]));
    assert_eq!(a.status, 200, "{a:?}");
    assert_ne!(a.node, victim);
    let n = c.nodes();
    let v = n.iter().find(|n| n["name"] == victim.as_str()).unwrap();
    assert_eq!(v["state"], "lost", "{n:?}");
    assert_eq!(n.iter().filter(|n| n["state"] == "up").count(), 2, "{n:?}");

    // Deleting a function reaches the nodes: n3 drops its fetched copy at
    // once if it is up, or when it joins again (the killed node is
    // restarted after the delete); the gateway answers 404.
    let n3_copy = c.dir.path().join("n3/cache/slow");
    assert!(n3_copy.is_dir(), "n3 fetched slow");
    let o = c.cli(&["rm", "slow"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    c.start_node(&victim);
    c.wait_for("the killed node to join again", |n| {
        n.iter().filter(|n| n["state"] == "up").count() == 3
    });
    let start = Instant::now();
    while n3_copy.exists() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "n3 still has its copy of a deleted function"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let a = answer(&c.cli(&["invoke", "slow", "-i", "--data", "{}"]));
    assert_eq!(a.status, 404, "{a:?}");
    assert!(a.text.contains("is not deployed"), "{a:?}");
    for i in 0..6 {
        let a = answer(&c.cli(&["invoke", "hello", "-i", "--data", &format!("back {i}")]));
        assert_eq!(a.status, 200, "{a:?}");
    }
}

/// `faas serve` (role all) lists its one in-process node, counts its
/// requests, and names it in `x-faas-node`.
#[test]
fn the_embedded_platform_lists_its_local_node() {
    let s = common::Server::start(&["--slots", "8"]);
    let ex = s.examples();
    s.deploy("hello", &ex.join("hello"), "hello", &[]);
    let o = s.cli(&["invoke", "hello", "-i", "--data", "hi"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    assert!(String::from_utf8_lossy(&o.stderr).contains("x-faas-node: local"));
    let o = s.cli(&["nodes", "--json"]);
    assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
    let n: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap();
    let n = n.as_array().unwrap();
    assert_eq!(n.len(), 1, "{n:?}");
    assert_eq!(n[0]["name"], "local");
    assert_eq!(n[0]["state"], "up");
    assert_eq!(n[0]["slots"], 8);
    assert_eq!(n[0]["served"], 1);
    assert_eq!(n[0]["in_flight"], 0);
    let o = s.cli(&["nodes"]);
    let table = String::from_utf8(o.stdout).unwrap();
    assert!(
        table.starts_with("NAME") && table.contains("local"),
        "{table}"
    );
}
