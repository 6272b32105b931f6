//! `StartMode::Fork` in `PooledSandboxRuntime`: instances forked from a
//! template (a snapshot restored once in a sandbox) each answer on their own
//! fd 3 with their own memory, report their real exit status, can be
//! killed, leave no zombie behind, and survive their template's death. The
//! target is `tests/targets/fork_probe.c` (see its header). Needs root and
//! gcc, as CI has.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::os::fd::OwnedFd;
use std::os::unix::net::UnixDatagram;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio as StdStdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, Instance, LaunchError, LimitExceeded, Limits, SandboxPolicy,
    SandboxRuntime, SandboxSpec, StartMode, Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};
use faas_snapshot::DumpOptions;

/// The sandboxes' root and the target's snapshot, made once per test
/// process in a directory of its own (the snapshot maps the binary by
/// path).
struct Fixture {
    root: PathBuf,
    snapshot: PathBuf,
}

/// Fields 3.. of `/proc/PID/stat` (state first), None when it is gone.
fn stat_fields(pid: u32) -> Option<Vec<String>> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let rest = &text[text.rfind(')')? + 1..];
    Some(rest.split_whitespace().map(str::to_owned).collect())
}

fn fixture() -> &'static Fixture {
    static FIXTURE: OnceLock<Fixture> = OnceLock::new();
    FIXTURE.get_or_init(|| {
        let status = std::fs::read_to_string("/proc/self/status").unwrap();
        assert!(
            status
                .lines()
                .any(|l| l.starts_with("Uid:") && l.split_whitespace().nth(2) == Some("0")),
            "these tests need root (sandboxes: user namespaces, mounts, cgroups; snapshots: ptrace); CI runs as root"
        );
        let work = std::env::temp_dir().join(format!("faas-sandbox-fork-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&work);
        std::fs::create_dir_all(&work).unwrap();
        let binary = work.join("fork_probe");
        let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/targets/fork_probe.c");
        let out = Command::new("gcc")
            .args(["-O1", "-static", "-o"])
            .arg(&binary)
            .arg(&src)
            .output()
            .unwrap_or_else(|e| panic!("run gcc to build the test target: {e}"));
        assert!(
            out.status.success(),
            "gcc failed on {}:\n{}",
            src.display(),
            String::from_utf8_lossy(&out.stderr)
        );
        let mut child = Command::new(&binary)
            .stdin(StdStdio::null())
            .stdout(StdStdio::null())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(10);
        while stat_fields(pid).and_then(|f| f.first().cloned()).as_deref() != Some("T") {
            if let Some(status) = child.try_wait().unwrap() {
                panic!("the target exited ({status}) before stopping itself");
            }
            assert!(Instant::now() < deadline, "the target did not stop itself");
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
        Fixture { root, snapshot }
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

fn spec(snapshot: Option<PathBuf>, channel: OwnedFd) -> SandboxSpec {
    SandboxSpec {
        name: "fork-test".into(),
        root: ImageRef::Dir(fixture().root.clone()),
        program: PathBuf::from("/nonexistent"),
        args: Vec::new(),
        env: Vec::new(),
        limits: Limits::default(),
        start: StartMode::Fork,
        snapshot,
        policy: SandboxPolicy {
            seccomp: Some("native".into()),
            ..SandboxPolicy::default()
        },
        channel,
        stdin: Stdio::Null,
        stdout: Stdio::Null,
        stderr: Stdio::Inherit,
    }
}

/// A forked instance and our end of its fd 3.
struct Fork {
    inst: Box<dyn Instance>,
    channel: UnixDatagram,
}

/// What a fork says first: `count N pid P ppid Q unshare0 R`.
struct Hello {
    count: u32,
    pid: u32,
    ppid: u32,
    unshare0: String,
}

async fn fork(rt: &PooledSandboxRuntime) -> Fork {
    try_fork(rt, Limits::default())
        .await
        .unwrap_or_else(|e| panic!("fork launch: {e}"))
}

async fn try_fork(rt: &PooledSandboxRuntime, limits: Limits) -> Result<Fork, LaunchError> {
    let (ours, theirs) = channel_pair().unwrap();
    let mut s = spec(Some(fixture().snapshot.clone()), theirs);
    s.limits = limits;
    let inst = rt.launch(s).await?;
    let channel = UnixDatagram::from(ours);
    channel
        .set_read_timeout(Some(Duration::from_secs(20)))
        .unwrap();
    Ok(Fork { inst, channel })
}

impl Fork {
    fn hello(&self) -> Hello {
        let mut buf = [0u8; 128];
        let n = self
            .channel
            .recv(&mut buf)
            .expect("the fork did not answer on its fd 3");
        let text = std::str::from_utf8(&buf[..n]).unwrap().to_owned();
        let v: Vec<&str> = text.split(' ').collect();
        assert_eq!(
            (v[0], v[2], v[4], v[6]),
            ("count", "pid", "ppid", "unshare0"),
            "{text}"
        );
        Hello {
            count: v[1].parse().unwrap(),
            pid: v[3].parse().unwrap(),
            ppid: v[5].parse().unwrap(),
            unshare0: v[7].to_owned(),
        }
    }

    fn say(&self, cmd: &str) {
        self.channel.send(cmd.as_bytes()).unwrap();
    }

    async fn wait(&mut self) -> ExitStatus {
        tokio::time::timeout(Duration::from_secs(20), self.inst.wait())
            .await
            .expect("the fork did not end")
            .expect("its exit status")
    }

    /// The template's host pid: the fork's parent.
    fn template_pid(&self) -> u32 {
        stat_fields(self.inst.pid()).expect("the fork runs")[1]
            .parse()
            .unwrap()
    }
}

/// Host pids of the children of `parent`.
fn children(parent: u32) -> Vec<u32> {
    std::fs::read_dir("/proc")
        .unwrap()
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|&pid| {
            stat_fields(pid)
                .is_some_and(|f| f.get(1).map(String::as_str) == Some(&*parent.to_string()))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn forks_answer_on_their_own_fd3_with_memory_of_their_own() {
    let rt = runtime();
    let mut forks = Vec::new();
    for _ in 0..3 {
        forks.push(fork(&rt).await);
    }
    let template = forks[0].template_pid();
    let mut pids = Vec::new();
    for f in &forks {
        let h = f.hello();
        // Each adds one to a counter that is 0 in the snapshot: no fork
        // sees another's write.
        assert_eq!(h.count, 1, "a fork saw another fork's memory");
        // The template is pid 1 of the sandbox's pid namespace; the forks
        // are its children there.
        assert_eq!(h.ppid, 1);
        assert_ne!(h.pid, 1);
        // The sandbox's seccomp filters are in force in every fork.
        assert_eq!(h.unshare0, "EPERM");
        assert_eq!(
            f.template_pid(),
            template,
            "forks of one kind share one template"
        );
        pids.push(h.pid);
    }
    pids.sort_unstable();
    pids.dedup();
    assert_eq!(pids.len(), 3, "each fork is a process of its own");
    for (i, f) in forks.iter_mut().enumerate() {
        f.say(&format!("exit {}", 10 + i));
        assert_eq!(f.wait().await, ExitStatus::Code(10 + i as i32));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn exit_status_is_real_kill_works_and_no_zombie_stays() {
    let rt = runtime();
    let mut a = fork(&rt).await;
    a.hello();
    let template = a.template_pid();
    a.say("exit 7");
    assert_eq!(a.wait().await, ExitStatus::Code(7));

    let mut b = fork(&rt).await;
    b.hello();
    b.say("sleep");
    b.inst.kill().unwrap();
    assert_eq!(b.wait().await, ExitStatus::Signal(9));

    // A fork dropped while it runs is killed and reaped too.
    let c = fork(&rt).await;
    c.hello();
    let c_pid = c.inst.pid();
    drop(c);

    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let left = children(template);
        if left.is_empty() {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the template (pid {template}) still has children {left:?} (the dropped fork was {c_pid})"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    assert!(stat_fields(template).is_some(), "the template lives on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_killed_at_the_memory_limit_is_reported_and_one_killed_by_us_is_not() {
    let rt = runtime();
    let limits = Limits {
        memory_mb: 48,
        ..Limits::default()
    };
    let mut a = try_fork(&rt, limits).await.unwrap();
    a.hello();
    a.say("alloc 512");
    assert_eq!(a.wait().await, ExitStatus::Signal(9));
    assert_eq!(
        a.inst.exceeded(),
        Some(LimitExceeded::Memory { limit_mb: 48 })
    );
    // The next fork of the same template, killed by us: no limit named.
    let mut b = try_fork(&rt, limits).await.unwrap();
    b.hello();
    b.say("sleep");
    b.inst.kill().unwrap();
    assert_eq!(b.wait().await, ExitStatus::Signal(9));
    assert_eq!(b.inst.exceeded(), None);
    // And one that stays under it.
    let mut c = try_fork(&rt, limits).await.unwrap();
    c.hello();
    c.say("alloc 8");
    assert_eq!(c.wait().await, ExitStatus::Code(0));
    assert_eq!(c.inst.exceeded(), None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_template_is_made_again_by_the_next_fork() {
    let rt = runtime();
    let mut a = fork(&rt).await;
    a.hello();
    let first = a.template_pid();
    let killed = Command::new("kill")
        .args(["-KILL", &first.to_string()])
        .status()
        .unwrap();
    assert!(killed.success());
    // Its forks die with it; the status the kernel reaped is not made up.
    let r = tokio::time::timeout(Duration::from_secs(20), a.inst.wait())
        .await
        .expect("the fork did not end with its template");
    assert!(r.is_err(), "{r:?}");

    let mut b = fork(&rt).await;
    assert_eq!(b.hello().count, 1);
    let second = b.template_pid();
    assert_ne!(first, second, "a new template");
    b.say("exit 0");
    assert_eq!(b.wait().await, ExitStatus::Code(0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_fork_without_a_snapshot_is_refused_clearly() {
    let rt = runtime();
    let (_ours, theirs) = channel_pair().unwrap();
    let e = rt.launch(spec(None, theirs)).await.err().expect("refused");
    assert!(matches!(e, LaunchError::Unsupported { .. }), "{e:?}");
    let msg = e.to_string();
    assert!(msg.contains("fork") && msg.contains("snapshot"), "{msg}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pids_limit_holds_for_all_forks_of_a_template_together() {
    let rt = runtime();
    // The template and two forks.
    let limits = Limits {
        pids: 3,
        ..Limits::default()
    };
    let mut running = Vec::new();
    let refused = loop {
        match try_fork(&rt, limits).await {
            Ok(f) => {
                f.hello();
                running.push(f);
                assert!(
                    running.len() <= 2,
                    "{} forks under a pids limit of 3",
                    running.len()
                );
            }
            Err(e) => break e,
        }
    };
    assert_eq!(running.len(), 2);
    let LaunchError::Sys { source, .. } = &refused else {
        panic!("{refused:?}")
    };
    assert_eq!(source.kind(), std::io::ErrorKind::WouldBlock, "{refused}");
    // Once one has ended (and been reaped), the template forks again.
    let mut first = running.remove(0);
    first.say("exit 0");
    assert_eq!(first.wait().await, ExitStatus::Code(0));
    let again = try_fork(&rt, limits).await.expect("a fork after one ended");
    assert_eq!(again.hello().count, 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dropping_the_runtime_ends_its_templates_and_their_forks() {
    let rt = runtime();
    let a = fork(&rt).await;
    a.hello();
    let template = a.template_pid();
    let fork_pid = a.inst.pid();
    // The instance keeps its template: both end when the last goes.
    drop(rt);
    assert!(
        stat_fields(template).is_some(),
        "the template went before its last instance"
    );
    drop(a);
    let deadline = Instant::now() + Duration::from_secs(10);
    while stat_fields(template).is_some() || stat_fields(fork_pid).is_some() {
        assert!(
            Instant::now() < deadline,
            "template {template} or fork {fork_pid} outlived the runtime and its instances"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}
