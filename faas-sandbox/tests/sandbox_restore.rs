//! `StartMode::Restore` in `PooledSandboxRuntime`: a snapshot taken on the
//! host comes back inside a sandbox, with the sandbox's namespaces, root and
//! seccomp filters in force. The target is `tests/targets/restore_probe.c`
//! (see its header for what it prints). Needs root and gcc, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, LaunchError, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec,
    StartMode, Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};
use faas_snapshot::DumpOptions;

/// The file only the sandbox's root has, at its top.
const ROOT_MARKER: &str = "restore-root-marker";

/// What the tests share: the built target, its snapshot and a directory to
/// use as the sandboxes' root, all in [`work_dir`]. Built once per test
/// process.
struct Fixture {
    /// The sandboxes' root: `dev`, `tmp`, `proc` and [`ROOT_MARKER`].
    root: PathBuf,
    /// The target binary (which the snapshot maps by path).
    binary: PathBuf,
    snapshot: PathBuf,
}

/// This process's work directory (it stays for the life of the process: a
/// snapshot refers to its binary by path); removes those of processes that
/// are gone.
fn work_dir() -> PathBuf {
    const PREFIX: &str = "faas-sandbox-restore-";
    let tmp = std::env::temp_dir();
    if let Ok(entries) = std::fs::read_dir(&tmp) {
        for entry in entries.flatten() {
            let name = entry.file_name();
            let Some(pid) = name.to_str().and_then(|n| n.strip_prefix(PREFIX)) else {
                continue;
            };
            if pid.parse::<u32>().is_ok() && !Path::new("/proc").join(pid).exists() {
                let _ = std::fs::remove_dir_all(entry.path());
            }
        }
    }
    let dir = tmp.join(format!("{PREFIX}{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

fn euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|x| x.parse().unwrap()))
        .unwrap()
}

/// The state letter of `/proc/PID/stat`, None when it is gone.
fn state(pid: u32) -> Option<char> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    text[text.rfind(')')? + 1..].trim_start().chars().next()
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        assert_eq!(
            euid(),
            0,
            "these tests need root (sandboxes: user namespaces with a uid range, mounts, cgroups; snapshots: ptrace); CI runs as root"
        );
        let work = work_dir();
        let binary = work.join("restore_probe");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/restore_probe.c");
        let out = Command::new("gcc")
            .args(["-O1", "-static", "-o"])
            .arg(&binary)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| {
                panic!("run gcc to build the test target: {e} (apt-get install gcc libc6-dev)")
            });
        assert!(
            out.status.success(),
            "gcc failed to build {} ({}):\n{}",
            src.display(),
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );

        // Run it on the host until it stops itself, then dump it. Its
        // argument is a host path it can open there (its own binary) and
        // that the sandbox's root does not have.
        let mut child = Command::new(&binary)
            .arg(&binary)
            .stdin(StdStdio::null())
            .stdout(StdStdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while state(pid) != Some('T') {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the target exited ({status}) before stopping itself");
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("the target did not stop itself within 10 s");
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let snapshot = work.join("snapshot");
        faas_snapshot::dump(pid, &snapshot, &DumpOptions { kill: true })
            .unwrap_or_else(|e| panic!("dump the target: {e}"));
        let _ = child.wait();

        let root = work.join("root");
        for d in ["dev", "tmp", "proc"] {
            std::fs::create_dir_all(root.join(d)).unwrap();
        }
        std::fs::write(root.join(ROOT_MARKER), "inside\n").unwrap();
        Fixture {
            root,
            binary,
            snapshot,
        }
    })
}

fn runtime() -> PooledSandboxRuntime {
    fixture();
    PooledSandboxRuntime::new(SandboxConfig {
        netns_pool: 2,
        cgroup_pool: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox runtime")
}

/// A restore of the fixture's snapshot (or `snapshot`) under the `native`
/// profile, with `/proc`; stdout to the returned pipe.
fn spec(snapshot: Option<PathBuf>) -> (SandboxSpec, std::io::PipeReader, OwnedFd) {
    let f = fixture();
    let (ours, theirs) = channel_pair().unwrap();
    let (r, w) = std::io::pipe().unwrap();
    (
        SandboxSpec {
            name: "restore-test".into(),
            root: ImageRef::Dir(f.root.clone()),
            // Ignored for a restore: the snapshot has its program.
            program: PathBuf::from("/nonexistent"),
            args: Vec::new(),
            env: Vec::new(),
            limits: Limits::default(),
            start: StartMode::Restore,
            snapshot,
            policy: SandboxPolicy {
                seccomp: Some("native".into()),
                proc: true,
                ..SandboxPolicy::default()
            },
            channel: theirs,
            stdin: Stdio::Null,
            stdout: Stdio::Fd(OwnedFd::from(w)),
            stderr: Stdio::Inherit,
        },
        r,
        ours,
    )
}

/// Restores the fixture's snapshot once: exit status and stdout.
async fn restore_once(rt: &PooledSandboxRuntime) -> (ExitStatus, String) {
    let (s, mut r, _ours) = spec(Some(fixture().snapshot.clone()));
    let mut inst = rt
        .launch(s)
        .await
        .unwrap_or_else(|e| panic!("restore into a sandbox: {e}"));
    let status = tokio::time::timeout(Duration::from_secs(30), inst.wait())
        .await
        .expect("the restored instance did not finish")
        .unwrap();
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    (status, out)
}

fn kv(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

/// Asserts what every restore of the probe must show.
fn assert_restored_inside(status: ExitStatus, out: &str) {
    assert_eq!(status, ExitStatus::Code(0), "output:\n{out}");
    let m = kv(out);
    assert_eq!(
        m.get("restored").map(String::as_str),
        Some("1"),
        "the restored guest did not write to its stdout (are its fds 0-3 in place?):\n{out}"
    );
    // The state it had on the host came back...
    assert_ne!(m["before_pid"], "1", "{out}");
    assert_eq!(m["before_host_path"], "OK", "{out}");
    assert_eq!(m["before_unshare0"], "OK", "{out}");
    assert_eq!(m["before_clone3"], "EINVAL", "{out}");
    // ...in a new pid namespace, of which it is pid 1,
    assert_eq!(m["pid"], "1", "{out}");
    // in the sandbox's user namespace (uid 0 inside = a host uid of the
    // sandbox range),
    let map: Vec<u64> = m["uid_map"]
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0, "{out}");
    assert!(map[1] >= 1_000_000_000, "host uid {} in:\n{out}", map[1]);
    // with the sandbox's root: the host path it opened before is gone, the
    // root's own file is there,
    assert_eq!(m["host_path"], "ENOENT", "{out}");
    assert_eq!(m["root_marker"], "OK", "{out}");
    // in a network namespace with only loopback (and sockets denied by the
    // native profile),
    assert_eq!(m["ifaces"], "lo", "{out}");
    assert_eq!(m["socket"], "EPERM", "{out}");
    assert!(!m.contains_key("connect"), "{out}");
    // with the sandbox's seccomp filters in force after the restore:
    // unshare is denied (even the no-op unshare(0) the host allowed) and
    // clone3 gets the guard filter's ENOSYS,
    assert_eq!(m["unshare0"], "EPERM", "{out}");
    assert_eq!(m["unshare_newuser"], "EPERM", "{out}");
    assert_eq!(m["clone3"], "ENOSYS", "{out}");
    assert_eq!(m["Seccomp"], "2", "{out}");
    // The restorer's two programs (guard and allowlist) only: the sandbox
    // did not install its own before the restorer.
    assert_eq!(m["Seccomp_filters"], "2", "{out}");
    assert_eq!(m["NoNewPrivs"], "1", "{out}");
    // and only fds 0-3: the restorer's plan socket is closed.
    assert_eq!(m["fds"], "0,1,2,3", "{out}");
    // It serves a request: at normal priority, even when it was restored
    // ahead by the pool keeper (nice 10).
    assert_eq!(m["nice"], "0", "{out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_restores_into_a_sandbox_with_its_namespaces_root_and_filters() {
    let rt = runtime();
    // The first restore parks a sandbox on the spot; the second may take a
    // parked one.
    for _ in 0..2 {
        let (status, out) = restore_once(&rt).await;
        assert_restored_inside(status, &out);
    }
}

/// Waits until `ready` says so (10 s at most).
async fn eventually(what: &str, ready: impl Fn() -> bool) {
    for _ in 0..500 {
        if ready() {
            return;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    panic!("{what} within 10 s of a restore");
}

/// One restore through `rt`: checked like every restore of the probe.
async fn restore_checked(rt: &PooledSandboxRuntime) {
    let (s, mut r, _ours) = spec(Some(fixture().snapshot.clone()));
    let mut inst = rt.launch(s).await.expect("restore");
    let status = tokio::time::timeout(Duration::from_secs(30), inst.wait())
        .await
        .expect("the restored instance did not finish")
        .unwrap();
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    assert_restored_inside(status, &out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restores_ahead_of_the_request_get_their_fds_namespaces_and_filters() {
    let rt = runtime();
    assert_eq!((rt.ready_restorers(), rt.restored_ahead()), (0, 0));
    // The first restore execs the restorer on the request path; after it,
    // instances of this snapshot are restored ahead (waiting only for a
    // request's fds 0-3) and restorers of this kind started ahead.
    restore_checked(&rt).await;
    assert_eq!((rt.resumed(), rt.restores_from_ready()), (0, 0));
    eventually("no instance was restored ahead", || rt.restored_ahead() > 0).await;
    // Those waiting for a request already have the sandbox's filters (the
    // native profile allows what the restorer does after them): a child of
    // ours still holding its plan socket (fd 4; a guest that runs has only
    // 0-3) under seccomp (a restorer that has not restored is not).
    let waiting_filtered = std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter(|e| {
            let p = e.path();
            let status = std::fs::read_to_string(p.join("status")).unwrap_or_default();
            let field = |k: &str| {
                status
                    .lines()
                    .find_map(|l| l.strip_prefix(k))
                    .map(str::trim)
                    .unwrap_or("")
                    .to_owned()
            };
            field("PPid:") == std::process::id().to_string()
                && field("Seccomp:") == "2"
                && p.join("fd/4").exists()
        })
        .count();
    assert!(
        waiting_filtered > 0,
        "no instance restored ahead installed its filters before its request"
    );
    for i in 1..=3 {
        eventually("no instance was restored ahead", || rt.restored_ahead() > 0).await;
        restore_checked(&rt).await;
        assert_eq!(
            rt.resumed(),
            i,
            "the launch resumed an instance restored ahead"
        );
    }
    // With none restored ahead, a ready restorer takes the restore: several
    // at once use up what was restored ahead.
    eventually("no restorer was made ready", || rt.ready_restorers() > 0).await;
    let (before_resumed, before_ready) = (rt.resumed(), rt.restores_from_ready());
    let rt = Arc::new(rt);
    let tasks: Vec<_> = (0..8)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { restore_checked(&rt).await })
        })
        .collect();
    for t in tasks {
        t.await.unwrap();
    }
    let used = (rt.resumed() - before_resumed) + (rt.restores_from_ready() - before_ready);
    assert!((1..=8).contains(&used), "{used}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ten_concurrent_restores_of_one_snapshot_each_run_in_their_own_sandbox() {
    let rt = Arc::new(runtime());
    let tasks: Vec<_> = (0..10)
        .map(|_| {
            let rt = rt.clone();
            tokio::spawn(async move { restore_once(&rt).await })
        })
        .collect();
    for t in tasks {
        let (status, out) = t.await.unwrap();
        assert_restored_inside(status, &out);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_without_a_snapshot_is_refused_clearly() {
    let rt = runtime();
    let (s, _r, _ours) = spec(None);
    let e = rt
        .launch(s)
        .await
        .err()
        .expect("a restore without snapshot");
    assert!(matches!(e, LaunchError::Unsupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(
        msg.contains("restore") && msg.contains("snapshot"),
        "the error should say a snapshot is missing: {msg}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restore_of_a_missing_snapshot_names_it() {
    let rt = runtime();
    let missing = fixture().binary.with_file_name("no-such-snapshot");
    let (s, _r, _ours) = spec(Some(missing.clone()));
    let e = rt.launch(s).await.err().expect("a restore of nothing");
    let msg = e.to_string();
    assert!(
        msg.contains("opening the snapshot") && msg.contains(&*missing.to_string_lossy()),
        "{msg}"
    );
    // The runtime still restores a good snapshot afterwards.
    let (status, out) = restore_once(&rt).await;
    assert_restored_inside(status, &out);
}

/// Mount points under `dir` in this process's mount table.
fn mounts_under(dir: &Path) -> usize {
    std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .filter_map(|l| l.split(' ').nth(4))
        .filter(|m| Path::new(m).starts_with(dir))
        .count()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forgetting_a_deleted_version_ends_what_was_made_ahead_for_it() {
    fixture();
    // Named like the runtime's own work directories, so that a later
    // runtime cleans it up if this process dies before its runtime does.
    let work = PathBuf::from(format!("/run/faas/sandbox-{}-forget", std::process::id()));
    let rt = PooledSandboxRuntime::new(SandboxConfig {
        work_dir: work.clone(),
        netns_pool: 2,
        cgroup_pool: 2,
        parked: 1,
        ..SandboxConfig::default()
    })
    .expect("sandbox runtime");
    restore_checked(&rt).await;
    eventually("nothing was made ahead", || {
        rt.restored_ahead() == 1 && rt.ready_restorers() == 1
    })
    .await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(
        mounts_under(&work.join("roots")),
        1,
        "the root is mounted once"
    );
    let f = fixture();
    rt.forget(&[f.root.as_path(), f.snapshot.as_path()]);
    eventually("the instances made ahead did not end", || {
        rt.restored_ahead() == 0 && rt.ready_restorers() == 0
    })
    .await;
    eventually("the root stayed mounted", || {
        mounts_under(&work.join("roots")) == 0
    })
    .await;
    // Other files: untouched; the same files again: prepared from nothing.
    rt.forget(&[Path::new("/nonexistent/elsewhere")]);
    restore_checked(&rt).await;
    assert_eq!(mounts_under(&work.join("roots")), 1);
    // And a runtime that goes leaves no mount behind.
    drop(rt);
    eventually("the dropped runtime left its root mounted", || {
        mounts_under(&work.join("roots")) == 0
    })
    .await;
}
