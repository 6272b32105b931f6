//! The node port trusts no peer: `faas serve --role gateway` creates its
//! cluster token (mode 0600) and says how to join; `faas node` with the
//! token joins; a node with another token, or a token file others can
//! read, fails with one clear line and a non-zero exit, gets no work, and
//! the gateway logs its address; a fake gateway that cannot prove the
//! token cannot make `faas node` join it. On loopback, plain-process
//! sandboxes (no root needed).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Read, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

const FAAS: &str = env!("CARGO_BIN_EXE_faas");

/// A `faas serve --role gateway` on loopback, its stderr in a file.
struct Gateway {
    child: Child,
    url: String,
    nodes: String,
    banner: String,
    log: PathBuf,
    dir: tempfile::TempDir,
}

impl Drop for Gateway {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Gateway {
    fn start(extra: &[&str]) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("gateway.log");
        let mut child = Command::new(FAAS)
            .args(["serve", "--role", "gateway", "--listen", "127.0.0.1:0"])
            .args(["--node-listen", "127.0.0.1:0", "--state-dir"])
            .arg(dir.path().join("state"))
            .args(extra)
            .env_remove("FAAS_CLUSTER_TOKEN_FILE")
            .stdout(Stdio::piped())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        let mut out = BufReader::new(child.stdout.take().unwrap());
        let mut banner = String::new();
        for _ in 0..4 {
            out.read_line(&mut banner).unwrap();
        }
        let url = banner
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {banner:?}"))
            .to_owned();
        let nodes = banner
            .split("nodes join on ")
            .nth(1)
            .and_then(|r| r.split_whitespace().next())
            .unwrap_or_else(|| panic!("no node address in {banner:?}"))
            .to_owned();
        Gateway {
            child,
            url,
            nodes,
            banner,
            log,
            dir,
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap()
    }

    fn node(&self, name: &str, token: &Path) -> Command {
        let mut cmd = Command::new(FAAS);
        cmd.args(["node", "--join", &self.nodes, "--name", name])
            .args(["--sandbox", "process", "--quiet-instances", "--state-dir"])
            .arg(self.dir.path().join(name))
            .arg("--cluster-token-file")
            .arg(token);
        cmd
    }

    fn node_names(&self) -> Vec<String> {
        let o = Command::new(FAAS)
            .args(["nodes", "--json"])
            .env("FAAS_SERVER", &self.url)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        let v: Vec<serde_json::Value> = serde_json::from_slice(&o.stdout).unwrap();
        v.iter()
            .map(|n| n["name"].as_str().unwrap().to_owned())
            .collect()
    }
}

/// Runs `cmd` to its end (at most 20 s).
fn finish(mut cmd: Command) -> Output {
    let mut child = cmd
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let until = Instant::now() + Duration::from_secs(20);
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > until {
            let _ = child.kill();
            panic!("`faas node` did not exit: {:?}", child.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child.wait_with_output().unwrap()
}

fn token_file(dir: &Path, name: &str, byte: u8) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, format!("{}\n", format!("{byte:02x}").repeat(32))).unwrap();
    std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o600)).unwrap();
    p
}

#[test]
fn only_nodes_with_the_cluster_token_join() {
    let gw = Gateway::start(&[]);
    // The token was created private, and the gateway says how to join.
    let token = gw.dir.path().join("state/cluster.token");
    let mode = std::fs::metadata(&token).unwrap().permissions().mode();
    assert_eq!(mode & 0o777, 0o600);
    assert_eq!(std::fs::read_to_string(&token).unwrap().trim().len(), 64);
    let join = format!(
        "faas node --join {} --name NAME --cluster-token-file {}",
        gw.nodes,
        token.display()
    );
    assert!(gw.banner.contains(&join), "{}", gw.banner);
    assert!(gw.banner.contains("created now"), "{}", gw.banner);
    assert!(gw.banner.contains("not encrypted"), "{}", gw.banner);

    // Another token: one clear line, a non-zero exit, no work.
    let wrong = token_file(gw.dir.path(), "wrong.token", 0xab);
    let o = finish(gw.node("intruder", &wrong));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.starts_with("faas: gateway ") && last.contains("bad cluster token"),
        "{err}"
    );
    assert!(gw.node_names().is_empty());
    let until = Instant::now() + Duration::from_secs(5);
    loop {
        let log = gw.log();
        if log.lines().any(|l| {
            l.contains("node connection from 127.0.0.1:") && l.contains("bad cluster token")
        }) {
            break;
        }
        assert!(Instant::now() < until, "gateway log: {log}");
        std::thread::sleep(Duration::from_millis(20));
    }

    // A token file others may read is refused before connecting.
    let open = token_file(gw.dir.path(), "open.token", 0xab);
    std::fs::set_permissions(&open, std::fs::Permissions::from_mode(0o644)).unwrap();
    let o = finish(gw.node("careless", &open));
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(err.contains("chmod 600"), "{err}");

    // The right token joins.
    let mut cmd = gw.node("good", &token);
    let mut good = cmd.stdout(Stdio::piped()).spawn().unwrap();
    let mut line = String::new();
    BufReader::new(good.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("faas node good: joined gateway"), "{line}");
    assert_eq!(gw.node_names(), ["good"]);
    let _ = good.kill();
    let _ = good.wait();

    // A second gateway given the same file keeps its token, and a node
    // given the file through FAAS_CLUSTER_TOKEN_FILE joins it.
    let before = std::fs::read_to_string(&token).unwrap();
    let again = Gateway::start(&["--cluster-token-file", token.to_str().unwrap()]);
    assert!(again.banner.contains("(existing)"), "{}", again.banner);
    assert_eq!(std::fs::read_to_string(&token).unwrap(), before);
    let mut env = Command::new(FAAS)
        .args(["node", "--join", &again.nodes, "--name", "env"])
        .args(["--sandbox", "process", "--state-dir"])
        .arg(again.dir.path().join("env"))
        .env("FAAS_CLUSTER_TOKEN_FILE", &token)
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    let mut line = String::new();
    BufReader::new(env.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("faas node env: joined gateway"), "{line}");
    let _ = env.kill();
    let _ = env.wait();
}

#[test]
fn a_fake_gateway_cannot_make_a_node_join() {
    let dir = tempfile::tempdir().unwrap();
    let token = token_file(dir.path(), "cluster.token", 0x11);
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap();
    let mut node = Command::new(FAAS);
    node.args(["node", "--join", &addr.to_string(), "--name", "n1"])
        .args(["--sandbox", "process", "--state-dir"])
        .arg(dir.path().join("n1"))
        .arg("--cluster-token-file")
        .arg(&token);
    let node = std::thread::spawn(move || finish(node));
    // Answer the node's Auth with a nonce and a proof made with another
    // token.
    let (mut s, _) = l.accept().unwrap();
    let mut h = [0u8; 16];
    s.read_exact(&mut h).unwrap();
    assert_eq!(h[2], 0x07, "Auth");
    let mut p = vec![0u8; u32::from_le_bytes(h[4..8].try_into().unwrap()) as usize];
    s.read_exact(&mut p).unwrap();
    let mut reply = vec![0x5C, 0xFA, 0x89, 0];
    reply.extend_from_slice(&64u32.to_le_bytes());
    reply.extend_from_slice(&0u64.to_le_bytes());
    reply.extend_from_slice(&[0x42; 64]);
    s.write_all(&reply).unwrap();
    let o = node.join().unwrap();
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    let last = err.lines().last().unwrap_or_default();
    assert!(
        last.contains(&format!(
            "gateway {addr} could not prove the cluster token (bad cluster token"
        )),
        "{err}"
    );
    assert!(!String::from_utf8_lossy(&o.stdout).contains("joined"));
}
