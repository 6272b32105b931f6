//! Sandbox spawn benchmarks (`PooledSandboxRuntime`).
//!
//! | case | what is timed |
//! |---|---|
//! | `sandbox_spawn/pools_warm` | `launch()` until the guest has executed (the exec closes the error pipe): clone3 into new namespaces, uid maps, cgroup placement, the child's mounts, pivot_root, caps, seccomp, execve — with a network namespace and a cgroup taken from warm pools |
//! | `sandbox_spawn/pools_empty` | the same with both pools empty: a network namespace and a cgroup are created on the request path |
//! | `sandbox_spawn/parked` | hand-off to a parked sandbox (already set up up to its exec): the request and fds 0-3 sent over its control socket, until its exec |
//! | `seccomp_install/{native,python,node}` | installing a built-in profile's two filters (`SeccompFilters::install`) on a fresh thread: the kernel checks, converts and JITs each program and emulates it for every syscall number (its action cache) |
//!
//! Before the criterion runs, each case is also timed 200 times and its
//! p50/p99 printed (criterion reports means and medians only). Each launch
//! is timed inside a task on the runtime's worker threads, as the platform
//! calls it.
//!
//! The guest is the bundled static `hello` function (it blocks on its
//! channel after exec); between iterations, untimed, it is killed and reaped
//! and the pools get time to refill. Needs root.
//!
//! Run with `cargo bench -p faas-benches --bench sandbox`; whole-command
//! comparisons with bubblewrap and runc are in
//! `benches/scripts/sandbox-vs-peers.py`.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_main};
use faas_core::protocol::channel_pair;
use faas_core::{ImageRef, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec, StartMode, Stdio};
use faas_platform::embedded;
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};

fn spec(root: &std::path::Path) -> (SandboxSpec, std::os::fd::OwnedFd) {
    let (ours, theirs) = channel_pair().unwrap();
    (
        SandboxSpec {
            name: "bench".into(),
            root: ImageRef::Dir(root.to_path_buf()),
            program: PathBuf::from("/hello"),
            args: vec![],
            env: vec![],
            limits: Limits::default(),
            start: StartMode::Cold,
            snapshot: None,
            policy: SandboxPolicy {
                seccomp: Some("native".into()),
                proc: false,
                ..SandboxPolicy::default()
            },
            channel: theirs,
            stdin: Stdio::Null,
            stdout: Stdio::Null,
            stderr: Stdio::Null,
        },
        ours,
    )
}

fn spawn(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let dir = tempfile::tempdir_in("/var/tmp").unwrap();
    let fns = embedded::write_all(&dir.path().join("src")).unwrap();
    let root = dir.path().join("root");
    std::fs::create_dir_all(&root).unwrap();
    for d in ["dev", "tmp", "proc"] {
        std::fs::create_dir_all(root.join(d)).unwrap();
    }
    let hello = fns.iter().find(|d| d.ends_with("hello")).unwrap();
    std::fs::copy(hello.join("hello"), root.join("hello")).unwrap();

    let mut g = c.benchmark_group("sandbox_spawn");
    g.sample_size(20);
    for (name, pool, parked) in [
        ("pools_warm", 8, 0),
        ("pools_empty", 0, 0),
        ("parked", 8, 2),
    ] {
        let sb = Arc::new(
            PooledSandboxRuntime::new(SandboxConfig {
                netns_pool: pool,
                cgroup_pool: pool,
                parked,
                ..SandboxConfig::default()
            })
            .unwrap(),
        );
        // Timed inside a task on the runtime's own threads, where the
        // platform launches (a caller outside them, in `block_on`, adds a
        // wake-up of its own thread to every await).
        let launch = |sb: &Arc<PooledSandboxRuntime>| {
            let (s, ours) = spec(&root);
            let sb = sb.clone();
            let (d, inst) = rt
                .block_on(rt.spawn(async move {
                    let t = Instant::now();
                    let inst = sb.launch(s).await.unwrap();
                    (t.elapsed(), inst)
                }))
                .unwrap();
            (d, inst, ours)
        };
        // Let the pools fill (and, for `parked`, park the first ones).
        let one = |sb: &Arc<PooledSandboxRuntime>| {
            let (d, mut inst, _ours) = launch(sb);
            inst.kill().unwrap();
            rt.block_on(inst.wait()).unwrap();
            // Untimed: time for the background refills (a parked sandbox
            // needs a cgroup migration, ~10 ms on cgroup v1).
            std::thread::sleep(Duration::from_millis(if parked > 0 {
                25
            } else if pool > 0 {
                2
            } else {
                0
            }));
            d
        };
        one(&sb);
        std::thread::sleep(Duration::from_millis(100));
        let mut xs: Vec<Duration> = (0..200).map(|_| one(&sb)).collect();
        xs.sort();
        eprintln!(
            "sandbox_spawn/{name}: p50 {:?} p99 {:?} over {} launches",
            xs[xs.len() / 2],
            xs[xs.len() * 99 / 100 - 1],
            xs.len()
        );
        g.bench_function(name, |b| {
            b.iter_custom(|iters| {
                let mut total = Duration::ZERO;
                for _ in 0..iters {
                    let (d, mut inst, _ours) = launch(&sb);
                    total += d;
                    inst.kill().unwrap();
                    rt.block_on(inst.wait()).unwrap();
                    // Let the background refills catch up, untimed.
                    std::thread::sleep(Duration::from_millis(if parked > 0 {
                        25
                    } else if pool > 0 {
                        2
                    } else {
                        0
                    }));
                }
                total
            });
        });
    }
    g.finish();
}

/// Installs each built-in profile on fresh threads (a filter without
/// TSYNC applies to its own thread only, and goes with it).
fn seccomp_install(c: &mut Criterion) {
    use faas_sandbox::seccomp::{SeccompFilters, SeccompProfile};
    let mut g = c.benchmark_group("seccomp_install");
    for name in ["native", "python", "node"] {
        let f = SeccompFilters::compile(&name.parse::<SeccompProfile>().unwrap()).unwrap();
        let once = |f: &SeccompFilters| {
            let f = f.clone();
            std::thread::spawn(move || {
                let t = Instant::now();
                f.install().unwrap();
                t.elapsed()
            })
            .join()
            .unwrap()
        };
        let mut xs: Vec<Duration> = (0..400).map(|_| once(&f)).collect();
        xs.sort();
        eprintln!(
            "seccomp_install/{name}: {:?} instructions, p50 {:?} p99 {:?} over {} installs",
            f.programs().iter().map(Vec::len).collect::<Vec<_>>(),
            xs[xs.len() / 2],
            xs[xs.len() * 99 / 100 - 1],
            xs.len()
        );
        g.bench_function(name, |b| {
            b.iter_custom(|iters| (0..iters).map(|_| once(&f)).sum());
        });
    }
    g.finish();
}

fn benches() {
    let mut c = Criterion::default().configure_from_args();
    seccomp_install(&mut c);
    spawn(&mut c);
}

criterion_main!(benches);
