//! The compiled seccomp profiles, installed in a child process (no
//! namespaces), deny what every sandbox must deny and allow what guests
//! need. The child is `faas-sandbox-probe syscalls`; see its docs for how
//! it reads results.

#![allow(clippy::unwrap_used)]

use std::collections::BTreeMap;
use std::os::unix::process::CommandExt;
use std::process::Command;

use faas_sandbox::seccomp::{DENIED_SYSCALLS, SeccompFilters, SeccompProfile};

const PROBE: &str = env!("CARGO_BIN_EXE_faas-sandbox-probe");

/// Runs the probe with `args` under `profile`'s filters (or none) and
/// returns its `NAME RESULT` lines.
fn probe(profile: Option<&SeccompProfile>, args: &[&str]) -> BTreeMap<String, String> {
    let mut cmd = Command::new(PROBE);
    cmd.args(args);
    if let Some(p) = profile {
        let filters = SeccompFilters::compile(p).unwrap();
        // SAFETY: the closure runs in the child between fork and exec; it
        // calls prctl and seccomp only and allocates nothing on success
        // (`install` is documented so). The filters stay alive in the
        // parent until spawn returns, and the child has a copy.
        unsafe {
            cmd.pre_exec(move || filters.install().map_err(|e| e.into_io()));
        }
    }
    let out = cmd.output().unwrap();
    assert!(
        out.status.success(),
        "probe {args:?} under {profile:?}: {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .collect()
}

fn profiles() -> [SeccompProfile; 3] {
    [
        SeccompProfile::Native,
        SeccompProfile::Python,
        SeccompProfile::Node,
    ]
}

#[test]
fn every_listed_syscall_returns_eperm_in_every_profile() {
    for p in profiles() {
        let r = probe(Some(&p), &["syscalls"]);
        for name in DENIED_SYSCALLS {
            assert_eq!(
                r.get(*name).map(String::as_str),
                Some("EPERM"),
                "{p}: {name}: {r:?}"
            );
        }
    }
}

#[test]
fn clone3_returns_enosys_so_libcs_fall_back_to_clone() {
    for p in profiles() {
        let r = probe(Some(&p), &["syscalls"]);
        assert_eq!(r["clone3"], "ENOSYS", "{p}");
    }
}

#[test]
fn clone_with_any_clone_new_flag_is_denied_and_without_reaches_the_kernel() {
    for p in profiles() {
        let r = probe(Some(&p), &["syscalls"]);
        for label in [
            "NEWNS",
            "NEWCGROUP",
            "NEWUTS",
            "NEWIPC",
            "NEWUSER",
            "NEWPID",
            "NEWNET",
            "NEWUSER|NEWNS",
        ] {
            assert_eq!(r[&format!("clone:{label}")], "EPERM", "{p}: clone {label}");
        }
        // CLONE_THREAD without CLONE_SIGHAND: the kernel itself says EINVAL.
        assert_eq!(r["clone:none"], "EINVAL", "{p}");
        assert_eq!(r["fork"], "OK", "{p}: plain fork must work");
    }
}

#[test]
fn x32_syscall_numbers_kill_the_process() {
    for p in profiles() {
        let r = probe(Some(&p), &["syscalls"]);
        assert_eq!(r["x32:getpid"], "KILLED:SIGSYS", "{p}");
    }
}

#[test]
fn controls_are_allowed_and_fail_only_on_their_bad_arguments() {
    for p in profiles() {
        let r = probe(Some(&p), &["syscalls"]);
        assert_eq!(r["getpid"], "OK", "{p}");
        for name in ["read", "write", "close", "fcntl"] {
            assert_eq!(r[name], "EBADF", "{p}: {name}");
        }
    }
}

#[test]
fn without_filters_the_kernel_sees_every_probe() {
    // The probe's arguments are wrong on purpose: unfiltered, the calls fail
    // in the kernel's own checks, so EPERM/ENOSYS above come from the
    // filters. (As root; other users get EPERM from capability checks.)
    let r = probe(None, &["syscalls"]);
    assert_eq!(r["getpid"], "OK");
    assert_eq!(r["read"], "EBADF");
    assert_eq!(r["fork"], "OK");
    assert_ne!(r["clone3"], "ENOSYS", "{r:?}");
    assert_eq!(r["clone:NEWUSER|NEWNS"], "EINVAL", "{r:?}");
}

#[test]
fn status_shows_no_new_privs_and_seccomp_filter_mode() {
    let r = probe(Some(&SeccompProfile::Native), &["status"]);
    assert_eq!(r["NoNewPrivs"], "1", "{r:?}");
    assert_eq!(r["Seccomp"], "2", "{r:?}");
    assert_eq!(r["mount"], "EPERM", "{r:?}");
}

#[test]
fn python_runs_under_the_python_profile() {
    // The interpreter itself, not a version-manager shim script.
    let Some(python) = ["/usr/bin/python3", "/usr/local/bin/python3"]
        .iter()
        .map(std::path::PathBuf::from)
        .find(|p| p.is_file())
        .or_else(|| which("python3"))
    else {
        panic!("python3 is not installed: the python profile cannot be checked");
    };
    let script = "import json, os, sys, socket, hashlib, random, logging, threading\n\
                  t = threading.Thread(target=lambda: None); t.start(); t.join()\n\
                  a, b = socket.socketpair(); a.send(b'x'); assert b.recv(1) == b'x'\n\
                  print(json.dumps({'h': hashlib.sha256(b'x').hexdigest(), 'r': random.random()}))";
    let out = run_filtered(&SeccompProfile::Python, &python, &["-c", script], &[]);
    assert!(out.contains("\"h\""), "{out}");
}

#[test]
fn node_runs_under_the_node_profile_with_io_uring_denied() {
    let Some(node) = which("node") else {
        panic!("node is not installed: the node profile cannot be checked");
    };
    let script = "const fs = require('fs'), crypto = require('crypto'), net = require('net');\
        const srv = net.createServer(s => s.end('pong')).listen(0, '127.0.0.1', () => {\
          const c = net.connect(srv.address().port, '127.0.0.1'); let got = '';\
          c.on('data', d => got += d); c.on('end', () => { srv.close();\
            fs.readFile('/proc/self/status', 'utf8', (e, st) => {\
              const h = crypto.createHash('sha256').update(got).digest('hex');\
              console.log(JSON.stringify({ got, h, seccomp: /Seccomp:\\s*2/.test(st || '') }));\
            }); }); });";
    // UV_USE_IO_URING=1 makes libuv try io_uring_setup (it does, unfiltered);
    // under the profile that returns EPERM and libuv must fall back.
    let out = run_filtered(
        &SeccompProfile::Node,
        &node,
        &["-e", script],
        &[("UV_USE_IO_URING", "1")],
    );
    assert!(out.contains("\"got\":\"pong\""), "{out}");
    assert!(out.contains("\"seccomp\":true"), "{out}");
}

fn which(name: &str) -> Option<std::path::PathBuf> {
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join(name))
        .find(|p| p.is_file())
}

fn run_filtered(
    p: &SeccompProfile,
    program: &std::path::Path,
    args: &[&str],
    env: &[(&str, &str)],
) -> String {
    let filters = SeccompFilters::compile(p).unwrap();
    let mut cmd = Command::new(program);
    cmd.args(args).envs(env.iter().copied());
    // SAFETY: as in `probe`: prctl + seccomp only, no allocation on success.
    unsafe {
        cmd.pre_exec(move || filters.install().map_err(|e| e.into_io()));
    }
    let out = cmd.output().unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{} under {p}: {:?}\nstdout:\n{stdout}\nstderr:\n{}",
        program.display(),
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}
