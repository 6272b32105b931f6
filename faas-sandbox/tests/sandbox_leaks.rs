//! After 1,000 sandboxes nothing is left behind: mounts, cgroups, network
//! namespaces, processes, fds. A test binary of its own, so that the
//! process-wide counts are not disturbed by other tests running at once.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Duration;

use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec, StartMode, Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};

/// A uid range of this test's own, so sandboxes of other tests or tools on
/// the machine are not counted.
const UID_BASE: u32 = 1_500_000_000;
const UID_COUNT: u32 = 4096;

fn in_range_processes() -> usize {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| std::fs::read_to_string(e.path().join("status")).ok())
        .filter(|st| {
            st.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
                .is_some_and(|u| {
                    (u64::from(UID_BASE)..u64::from(UID_BASE + UID_COUNT)).contains(&u)
                })
        })
        .count()
}

fn snapshot() -> (usize, usize, usize) {
    let mounts = std::fs::read_to_string("/proc/self/mountinfo")
        .unwrap()
        .lines()
        .count();
    let fds = std::fs::read_dir("/proc/self/fd").unwrap().count();
    let cgroups = walk_count(std::path::Path::new("/sys/fs/cgroup/memory"));
    (mounts, fds, cgroups)
}

fn walk_count(p: &std::path::Path) -> usize {
    std::fs::read_dir(p)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .map(|e| 1 + walk_count(&e.path()))
                .sum()
        })
        .unwrap_or(0)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_sandboxes_leak_nothing() {
    let before = snapshot();
    {
        assert_eq!(
            std::fs::read_to_string("/proc/self/status")
                .unwrap()
                .lines()
                .find(|l| l.starts_with("Uid:"))
                .map(|l| l.split_whitespace().nth(1) == Some("0")),
            Some(true),
            "needs root; CI runs as root"
        );
        let rt = PooledSandboxRuntime::new(SandboxConfig {
            uid_base: UID_BASE,
            uid_count: UID_COUNT,
            netns_pool: 2,
            cgroup_pool: 2,
            ..SandboxConfig::default()
        })
        .unwrap();
        for _ in 0..1000 {
            let (ours, theirs) = channel_pair().unwrap();
            let spec = SandboxSpec {
                name: "leak".into(),
                root: ImageRef::Dir("/".into()),
                program: PathBuf::from("/bin/true"),
                args: vec![],
                env: vec![],
                limits: Limits::default(),
                start: StartMode::Cold,
                snapshot: None,
                policy: SandboxPolicy {
                    seccomp: Some("python".into()),
                    proc: false,
                    ..SandboxPolicy::default()
                },
                channel: theirs,
                stdin: Stdio::Null,
                stdout: Stdio::Null,
                stderr: Stdio::Null,
            };
            let mut inst = rt.launch(spec).await.unwrap();
            assert_eq!(inst.wait().await.unwrap(), ExitStatus::Code(0));
            drop(ours);
        }
    }
    // The pools' netns fds and cgroups go with the runtime.
    tokio::time::sleep(Duration::from_millis(700)).await;
    let after = snapshot();
    // Parked sandboxes are processes too: the runtime's drop ends them.
    assert_eq!(
        in_range_processes(),
        0,
        "sandbox processes survived the runtime"
    );
    // `<=`: creating a runtime also removes what dead ones left behind.
    assert!(
        after.0 <= before.0,
        "mounts leaked: {before:?} -> {after:?}"
    );
    assert!(
        after.1 <= before.1,
        "fds (netns, pidfds, pipes) leaked: {before:?} -> {after:?}"
    );
    assert!(
        after.2 <= before.2,
        "cgroups leaked: {before:?} -> {after:?}"
    );
}
