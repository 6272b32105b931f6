//! Shared by the end-to-end tests: a `faas serve` process on a free port
//! with its own state directory, and the CLI pointed at it.
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use faas_platform::client::Client;

/// The binary under test.
pub(crate) const FAAS: &str = env!("CARGO_BIN_EXE_faas");

/// A `faas serve` process, killed on drop.
pub(crate) struct Server {
    child: Child,
    pub(crate) url: String,
    _state: tempfile::TempDir,
    pub(crate) work: tempfile::TempDir,
    log: Option<tempfile::NamedTempFile>,
    extra: Vec<String>,
}

impl Server {
    pub(crate) fn start(extra: &[&str]) -> Server {
        Self::spawn(extra, None)
    }

    /// Like [`Server::start`], with the gateway's logs (`FAAS_LOG=info`,
    /// which includes every invocation's Log frames) in a file that
    /// [`Server::log`] reads.
    pub(crate) fn start_logged(extra: &[&str]) -> Server {
        let log = tempfile::NamedTempFile::new().unwrap();
        let mut s = Self::spawn(extra, Some(log.reopen().unwrap()));
        s.log = Some(log);
        s
    }

    /// The server's process id.
    pub(crate) fn pid(&self) -> u32 {
        self.child.id()
    }

    /// What the server logged so far (see [`Server::start_logged`]),
    /// without terminal colours.
    pub(crate) fn log(&self) -> String {
        let log = self.log.as_ref().expect("started with start_logged");
        let text = std::fs::read_to_string(log.path()).unwrap();
        let mut out = String::with_capacity(text.len());
        let mut rest = text.as_str();
        while let Some(i) = rest.find('\x1b') {
            out.push_str(&rest[..i]);
            rest = &rest[i..];
            rest = rest.find('m').map_or("", |m| &rest[m + 1..]);
        }
        out.push_str(rest);
        out
    }

    fn spawn(extra: &[&str], log: Option<std::fs::File>) -> Server {
        let state = tempfile::tempdir().unwrap();
        let work = tempfile::tempdir().unwrap();
        let extra: Vec<String> = extra.iter().map(|s| (*s).to_owned()).collect();
        let (child, url) = Self::launch(state.path(), &extra, log);
        Server {
            child,
            url,
            _state: state,
            work,
            log: None,
            extra,
        }
    }

    /// Starts `faas serve` on `state`; returns it and its URL.
    fn launch(state: &Path, extra: &[String], log: Option<std::fs::File>) -> (Child, String) {
        let mut cmd = Command::new(FAAS);
        cmd.args([
            "serve",
            "--listen",
            "127.0.0.1:0",
            "--quiet-instances",
            "--state-dir",
        ])
        .arg(state)
        .args(extra)
        .stdout(Stdio::piped());
        match log {
            Some(f) => cmd.env("FAAS_LOG", "info").stderr(f),
            None => cmd.stderr(Stdio::inherit()),
        };
        let mut child = cmd.spawn().unwrap();
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        let url = line
            .split_whitespace()
            .find(|w| w.starts_with("http://"))
            .unwrap_or_else(|| panic!("no URL in {line:?}"))
            .to_owned();
        (child, url)
    }

    /// Stops the server and starts it again on the same state directory
    /// (and log file), as after a reboot of the node.
    pub(crate) fn restart(&mut self) {
        self.stop();
        let log = self.log.as_ref().map(|l| {
            std::fs::OpenOptions::new()
                .append(true)
                .open(l.path())
                .unwrap()
        });
        let (child, url) = Self::launch(self._state.path(), &self.extra, log);
        self.child = child;
        self.url = url;
    }

    /// SIGTERM: a graceful stop, so the sandbox runtime cleans up.
    fn stop(&mut self) {
        let _ = Command::new("kill")
            .arg(self.child.id().to_string())
            .status();
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    pub(crate) fn client(&self) -> Client {
        Client::new(&self.url)
    }

    /// Runs the `faas` CLI against this server.
    pub(crate) fn cli(&self, args: &[&str]) -> std::process::Output {
        Command::new(FAAS)
            .args(args)
            .env("FAAS_SERVER", &self.url)
            .output()
            .unwrap()
    }

    /// Writes the bundled example functions; returns their directories.
    pub(crate) fn examples(&self) -> PathBuf {
        let out = self.work.path().join("examples");
        let o = Command::new(FAAS)
            .args(["example-functions", "--out"])
            .arg(&out)
            .output()
            .unwrap();
        assert!(o.status.success(), "{}", String::from_utf8_lossy(&o.stderr));
        out
    }

    /// A function directory holding one shell script `run`.
    pub(crate) fn script(&self, name: &str, body: &str) -> PathBuf {
        let dir = self.work.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let p = dir.join("run");
        let mut f = std::fs::File::create(&p).unwrap();
        writeln!(f, "#!/bin/sh\n{body}").unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
        dir
    }

    pub(crate) fn deploy(&self, name: &str, dir: &Path, handler: &str, extra: &[&str]) {
        let mut args = vec![
            "deploy",
            name,
            "--dir",
            dir.to_str().unwrap(),
            "--handler",
            handler,
        ];
        args.extend_from_slice(extra);
        let o = self.cli(&args);
        assert!(
            o.status.success(),
            "deploy {name}: {}",
            String::from_utf8_lossy(&o.stderr)
        );
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.stop();
    }
}
