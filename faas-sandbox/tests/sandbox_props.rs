//! Every isolation property of `PooledSandboxRuntime`, checked from inside
//! a sandbox (the host's `/` as a read-only root, the probe binary or the
//! host's shell as the program). Needs root, as CI runs.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::PathBuf;
use std::time::Duration;

use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, LimitExceeded, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec,
    StartMode, Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};

/// The probe, copied onto the root file system: the sandbox's `/tmp` is
/// its own tmpfs, so a build directory under the host's /tmp is not visible
/// inside.
fn probe() -> String {
    static PATH: std::sync::OnceLock<String> = std::sync::OnceLock::new();
    PATH.get_or_init(|| {
        let dst = format!("/var/tmp/faas-sandbox-probe-{}", std::process::id());
        // Copied by another process: a write fd of ours would be inherited
        // by sandboxes cloned meanwhile and make the exec fail (ETXTBSY).
        let ok = std::process::Command::new("cp")
            .arg(env!("CARGO_BIN_EXE_faas-sandbox-probe"))
            .arg(&dst)
            .status()
            .unwrap();
        assert!(ok.success());
        dst
    })
    .clone()
}

fn runtime() -> PooledSandboxRuntime {
    assert_eq!(
        rustix_euid(),
        0,
        "these tests need root (user namespaces with a uid range, mounts, cgroups); CI runs as root"
    );
    PooledSandboxRuntime::new(SandboxConfig {
        netns_pool: 2,
        cgroup_pool: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox runtime")
}

/// [`runtime`] without parked sandboxes: each launch sets its sandbox up
/// on the spot, from what its kind left behind if anything.
fn unparked_runtime() -> PooledSandboxRuntime {
    assert_eq!(rustix_euid(), 0, "needs root");
    PooledSandboxRuntime::new(SandboxConfig {
        netns_pool: 2,
        cgroup_pool: 2,
        parked: 0,
        ..SandboxConfig::default()
    })
    .expect("sandbox runtime")
}

fn rustix_euid() -> u32 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|v| v.split_whitespace().nth(1).map(|x| x.parse().unwrap()))
        .unwrap()
}

struct Run {
    status: ExitStatus,
    out: String,
    exceeded: Option<LimitExceeded>,
}

fn spec(
    program: &str,
    args: &[&str],
    proc_: bool,
    seccomp: &str,
    limits: Limits,
) -> (SandboxSpec, std::io::PipeReader, OwnedFd) {
    let (ours, theirs) = channel_pair().unwrap();
    let (r, w) = std::io::pipe().unwrap();
    (
        SandboxSpec {
            name: "test".into(),
            root: ImageRef::Dir("/".into()),
            program: PathBuf::from(program),
            args: args.iter().map(|s| (*s).to_owned()).collect(),
            env: vec![("PATH".into(), "/usr/bin:/bin".into())],
            limits,
            start: StartMode::Cold,
            snapshot: None,
            policy: SandboxPolicy {
                seccomp: Some(seccomp.into()),
                proc: proc_,
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

async fn run(
    rt: &PooledSandboxRuntime,
    program: &str,
    args: &[&str],
    proc_: bool,
    seccomp: &str,
    limits: Limits,
) -> Run {
    let (s, mut r, _ours) = spec(program, args, proc_, seccomp, limits);
    let mut inst = rt.launch(s).await.unwrap();
    let status = tokio::time::timeout(Duration::from_secs(30), inst.wait())
        .await
        .expect("sandbox did not finish")
        .unwrap();
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    Run {
        status,
        out,
        exceeded: inst.exceeded(),
    }
}

fn kv(out: &str) -> HashMap<String, String> {
    out.lines()
        .filter_map(|l| l.split_once(' '))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn identity_caps_seccomp_fds_and_root_from_inside() {
    let rt = runtime();
    let r = run(
        &rt,
        &probe(),
        &["status"],
        true,
        "python",
        Limits::default(),
    )
    .await;
    assert_eq!(r.status, ExitStatus::Code(0), "{}", r.out);
    let m = kv(&r.out);
    // uid 0 inside is an unprivileged host uid of the sandbox range.
    let map: Vec<u64> = m["uid_map"]
        .split(' ')
        .map(|x| x.parse().unwrap())
        .collect();
    assert_eq!(map[0], 0);
    assert!(
        map[1] >= 1_000_000_000,
        "host uid {} is not in the sandbox range",
        map[1]
    );
    assert_eq!(map[2], 1);
    assert_eq!(m["pid"], "1");
    assert_eq!(m["hostname"], "faas");
    for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
        assert_eq!(m[cap], "0000000000000000", "{cap}");
    }
    assert_eq!(m["NoNewPrivs"], "1");
    assert_eq!(m["Seccomp"], "2");
    assert_eq!(m["fds"], "0,1,2,3", "only fds 0-3 may be open");
    assert_eq!(m["cwd"], "/");
    assert_eq!(m["write_root"], "EROFS");
    assert_eq!(m["sethostname"], "EPERM");
    assert_eq!(m["mount"], "EPERM");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn denied_syscalls_are_denied_inside() {
    let rt = runtime();
    let r = run(
        &rt,
        &probe(),
        &["syscalls"],
        false,
        "native",
        Limits::default(),
    )
    .await;
    let m = kv(&r.out);
    for name in faas_sandbox::seccomp::DENIED_SYSCALLS {
        assert_eq!(
            m.get(*name).map(String::as_str),
            Some("EPERM"),
            "{name} in:\n{}",
            r.out
        );
    }
    assert_eq!(m["clone3"], "ENOSYS");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pid_net_ipc_namespaces_hide_the_host() {
    let rt = runtime();
    let host_pid = std::process::id().to_string();
    let script = format!(
        "kill -0 {host_pid} 2>/dev/null && echo kill=ok || echo kill=fail; \
         cat /proc/net/dev | tail -n +3 | cut -d: -f1 | tr -d ' ' | tr '\\n' ,; echo; \
         cat /proc/sysvipc/shm | wc -l; ls /proc | grep -c '^[0-9]'"
    );
    // A host SysV segment the sandbox must not see.
    let shm = std::process::Command::new("ipcmk")
        .args(["-M", "4096"])
        .output();
    let r = run(
        &rt,
        "/bin/sh",
        &["-c", &script],
        true,
        "python",
        Limits::default(),
    )
    .await;
    let lines: Vec<&str> = r.out.lines().collect();
    assert_eq!(lines[0], "kill=fail", "a host pid is visible: {}", r.out);
    assert_eq!(lines[1], "lo,", "interfaces: {}", r.out);
    assert_eq!(lines[2], "1", "host SysV IPC is visible: {}", r.out);
    assert!(
        lines[3].parse::<u32>().unwrap() <= 6,
        "too many pids visible: {}",
        r.out
    );
    if let Ok(o) = shm {
        let id = String::from_utf8_lossy(&o.stdout);
        if let Some(id) = id.split_whitespace().last() {
            let _ = std::process::Command::new("ipcrm")
                .args(["-m", id])
                .output();
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn loopback_cannot_be_taken_down() {
    let rt = runtime();
    // The network namespace belongs to the host's user namespace, so even
    // uid 0 of the sandbox has no CAP_NET_ADMIN over it.
    let r = run(
        &rt,
        &probe(),
        &["lo-down"],
        false,
        "python",
        Limits::default(),
    )
    .await;
    assert_eq!(r.out.trim(), "lo_down EPERM", "{}", r.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn memory_bomb_is_oom_killed_and_reported() {
    let rt = runtime();
    let limits = Limits {
        memory_mb: 32,
        ..Limits::default()
    };
    let r = run(
        &rt,
        "/usr/bin/python3",
        &["-c", "b = [bytearray(1 << 20) for _ in range(256)]"],
        false,
        "python",
        limits,
    )
    .await;
    assert_eq!(r.status, ExitStatus::Signal(9));
    assert_eq!(r.exceeded, Some(LimitExceeded::Memory { limit_mb: 32 }));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fork_bomb_stops_at_the_pids_limit() {
    let rt = runtime();
    let limits = Limits {
        pids: 8,
        ..Limits::default()
    };
    let r = run(
        &rt,
        "/bin/sh",
        &["-c", "n=0; for i in $(seq 30); do sleep 2 & n=$((n+1)); done 2>/dev/null; echo started; exit 0"],
        false,
        "python",
        limits,
    )
    .await;
    assert_eq!(
        r.exceeded,
        Some(LimitExceeded::Pids { limit: 8 }),
        "{}",
        r.out
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_ends_every_process_inside() {
    let rt = runtime();
    let (s, _r, _ours) = spec(
        "/bin/sh",
        &["-c", "sleep 60 & sleep 60 & sleep 60"],
        false,
        "python",
        Limits::default(),
    );
    let mut inst = rt.launch(s).await.unwrap();
    tokio::time::sleep(Duration::from_millis(200)).await;
    let pid = inst.pid();
    let children = descendants(pid);
    assert!(
        children.len() >= 2,
        "the sleeps did not start ({children:?})"
    );
    inst.kill().unwrap();
    assert_eq!(inst.wait().await.unwrap(), ExitStatus::Signal(9));
    tokio::time::sleep(Duration::from_millis(100)).await;
    let alive: Vec<_> = children
        .iter()
        .filter(|c| std::path::Path::new(&format!("/proc/{c}")).exists())
        .collect();
    assert!(
        alive.is_empty(),
        "processes of the sandbox survived its kill: {alive:?}"
    );
}

/// Pids of the processes whose parent is `pid`.
fn descendants(pid: u32) -> Vec<String> {
    std::fs::read_dir("/proc")
        .unwrap()
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let st = std::fs::read_to_string(e.path().join("stat")).ok()?;
            let (_, rest) = st.rsplit_once(") ")?;
            (rest.split(' ').nth(1)? == pid.to_string())
                .then(|| e.file_name().to_string_lossy().into_owned())
        })
        .collect()
}

/// A sandbox without `/proc` is cloned from its kind's mount template: seen
/// from the host, it holds only its own mounts (no trace of the host's
/// tree), read-only but for `/tmp` and the device nodes, and it is confined
/// like any other: no capabilities, no_new_privs, seccomp, a sandbox uid.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sandbox_from_a_mount_template_holds_only_its_own_mounts_and_no_privilege() {
    let rt = runtime();
    let script = "touch /x 2>/dev/null && echo root=rw || echo root=ro; \
                  mount -t tmpfs t /tmp 2>/dev/null && echo mount=ok || echo mount=denied; \
                  echo ready; read x; exit 0";
    // Twice: the second may be a sandbox parked for the first's kind.
    for round in 0..2 {
        let (mut s, mut r, _ours) = spec(
            "/bin/sh",
            &["-c", script],
            false,
            "python",
            Limits::default(),
        );
        let (stdin_r, stdin_w) = std::io::pipe().unwrap();
        s.stdin = Stdio::Fd(OwnedFd::from(stdin_r));
        let mut inst = rt.launch(s).await.unwrap();
        let pid = inst.pid();
        let mut out = String::new();
        let mut buf = [0u8; 256];
        while !out.contains("ready") {
            let n = r.read(&mut buf).unwrap();
            assert!(n > 0, "round {round}: it ended early: {out}");
            out.push_str(std::str::from_utf8(&buf[..n]).unwrap());
        }
        assert!(
            out.starts_with("root=ro\nmount=denied\n"),
            "round {round}: {out}"
        );
        // What the host sees of it. The shell is pid 1 inside, `pid` here.
        let mounts: Vec<(String, String)> =
            std::fs::read_to_string(format!("/proc/{pid}/mountinfo"))
                .unwrap()
                .lines()
                .map(|l| {
                    let f: Vec<&str> = l.split(' ').collect();
                    (f[4].to_owned(), f[5].to_owned())
                })
                .collect();
        let points: Vec<&str> = mounts.iter().map(|(p, _)| p.as_str()).collect();
        assert_eq!(
            points,
            [
                "/",
                "/dev",
                "/dev/null",
                "/dev/zero",
                "/dev/urandom",
                "/tmp"
            ],
            "round {round}"
        );
        for (point, opts) in &mounts {
            let ro = opts.split(',').any(|o| o == "ro");
            let want_ro = !point.starts_with("/dev/") && point != "/tmp";
            assert_eq!(ro, want_ro, "round {round}: {point} {opts}");
        }
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap();
        let field = |k: &str| {
            status
                .lines()
                .find_map(|l| l.strip_prefix(&format!("{k}:")))
                .unwrap()
                .trim()
                .to_owned()
        };
        for cap in ["CapPrm", "CapEff", "CapBnd", "CapAmb", "CapInh"] {
            assert_eq!(field(cap), "0000000000000000", "round {round}: {cap}");
        }
        assert_eq!(field("NoNewPrivs"), "1");
        assert_eq!(field("Seccomp"), "2");
        let uid_map = std::fs::read_to_string(format!("/proc/{pid}/uid_map")).unwrap();
        let map: Vec<u64> = uid_map
            .split_whitespace()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!((map[0], map[2]), (0, 1));
        assert!(map[1] >= 1_000_000_000, "host uid {}", map[1]);
        drop(stdin_w);
        assert_eq!(inst.wait().await.unwrap(), ExitStatus::Code(0));
    }
}

/// The threads that clone sandboxes from a mount template (here the
/// blocking threads of an unparked runtime, which set every sandbox up on
/// the request path) come back to the process's mount namespace, root and
/// working directory.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn threads_that_clone_from_a_mount_template_come_back_to_our_mounts() {
    let rt = unparked_runtime();
    let ns = |p: &str| std::fs::read_link(p).unwrap();
    let ours = (ns("/proc/self/ns/mnt"), std::env::current_dir().unwrap());
    for _ in 0..6 {
        let r = run(&rt, "/bin/true", &[], false, "python", Limits::default()).await;
        assert_eq!(r.status, ExitStatus::Code(0), "{}", r.out);
    }
    for _ in 0..32 {
        let theirs = tokio::task::spawn_blocking(move || {
            (
                ns("/proc/thread-self/ns/mnt"),
                std::env::current_dir().unwrap(),
                std::path::Path::new("/proc/self/exe").exists(),
            )
        })
        .await
        .unwrap();
        assert_eq!((theirs.0, theirs.1), ours.clone());
        assert!(theirs.2, "the host's /proc is not visible");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dev_holds_only_null_zero_and_urandom_and_is_read_only() {
    let rt = runtime();
    let script = "ls -A /dev | tr '\\n' ,; echo; \
                  echo x >/dev/null && echo null=ok; \
                  echo zero=$(head -c 4 /dev/zero | od -An -tx1 | tr -d ' '); \
                  echo urandom=$(head -c 16 /dev/urandom | wc -c); \
                  touch /dev/new 2>/dev/null && echo dev=rw || echo dev=ro; \
                  rm /dev/null 2>/dev/null && echo rm=yes || echo rm=no";
    // Twice: the second sandbox may be one parked for the first's kind.
    for round in 0..2 {
        let r = run(
            &rt,
            "/bin/sh",
            &["-c", script],
            false,
            "python",
            Limits::default(),
        )
        .await;
        assert_eq!(r.status, ExitStatus::Code(0), "round {round}: {}", r.out);
        assert_eq!(
            r.out, "null,urandom,zero,\nnull=ok\nzero=00000000\nurandom=16\ndev=ro\nrm=no\n",
            "round {round}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn binds_are_read_only_and_replace_their_top_directory() {
    let rt = runtime();
    // A private (0700) host directory the sandbox's uid could not traverse.
    let host = tempfile::tempdir().unwrap();
    let code = host.path().join("code");
    std::fs::create_dir(&code).unwrap();
    std::fs::write(code.join("hello.txt"), "bound\n").unwrap();
    let script = "pwd; cat hello.txt; ls /var | tr '\\n' ,; echo; \
                  touch /var/task/new 2>/dev/null && echo task=rw || echo task=ro; \
                  mkdir /var/other 2>/dev/null && echo var=rw || echo var=ro";
    for round in 0..2 {
        let (mut s, mut r, _ours) = spec(
            "/bin/sh",
            &["-c", script],
            false,
            "python",
            Limits::default(),
        );
        s.policy.binds = vec![(code.clone(), PathBuf::from("/var/task"))];
        s.policy.cwd = Some(PathBuf::from("/var/task"));
        let mut inst = rt.launch(s).await.unwrap();
        assert_eq!(inst.wait().await.unwrap(), ExitStatus::Code(0));
        let mut out = String::new();
        r.read_to_string(&mut out).unwrap();
        assert_eq!(
            out, "/var/task\nbound\ntask,\ntask=ro\nvar=ro\n",
            "round {round}"
        );
        // The second round may use a sandbox parked with the same binds.
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(!code.join("new").exists());
    // Nothing was created on the host for the mount point.
    assert!(!std::path::Path::new("/var/task").exists());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_binds_are_refused_with_the_reason() {
    let rt = runtime();
    let code = tempfile::tempdir().unwrap();
    for (inside, want) in [
        ("/var", "at least two components"),
        ("var/task", "plain absolute path"),
        ("/var/../etc/x", "plain absolute path"),
        ("/tmp/code", "mount point of the sandbox itself"),
        ("/no-such-top/code", "no-such-top"),
    ] {
        let (mut s, _r, _ours) = spec("/bin/true", &[], false, "python", Limits::default());
        s.policy.binds = vec![(code.path().to_path_buf(), PathBuf::from(inside))];
        let e = match rt.launch(s).await {
            Ok(_) => panic!("bind {inside} was accepted"),
            Err(e) => e.to_string(),
        };
        assert!(e.contains(want), "{inside}: {e}");
    }
}

/// Prints this sandbox's network namespace, whether it can bind the port
/// and abstract socket name an earlier sandbox held, its interfaces and
/// whether `lo` is up; then (with `hold`) binds both and leaves a child
/// holding them while pid 1 exits.
const NETNS_PROBE: &str = r#"
import fcntl, os, socket, struct, sys
print("ns", os.readlink("/proc/self/ns/net"))
tcp = socket.socket()
tcp.bind(("127.0.0.1", 47123)); tcp.listen()
unix = socket.socket(socket.AF_UNIX)
unix.bind("\0faas-netns-reuse-test")
print("bind ok")
print("ifaces", ",".join(n for _, n in socket.if_nameindex()))
flags = struct.unpack("16sH14x", fcntl.ioctl(tcp, 0x8913, struct.pack("16sH14x", b"lo", 0)))[1]
print("lo_up", flags & 1)
if sys.argv[1] == "hold" and os.fork() == 0:
    os.execv("/bin/sleep", ["sleep", "60"])
sys.stdout.flush()
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_network_namespace_is_reused_only_by_its_kind_and_only_clean() {
    // No parked sandboxes: each launch sets up its sandbox on the spot, so
    // it takes the namespace its kind left behind, if any.
    let rt = unparked_runtime();
    let py = |hold: &'static str| {
        let rt = &rt;
        async move {
            run(
                rt,
                "/usr/bin/python3",
                &["-c", NETNS_PROBE, hold],
                true,
                "python",
                Limits::default(),
            )
            .await
        }
    };
    let first = py("hold").await;
    let a = kv(&first.out);
    assert_eq!(
        a.get("bind").map(String::as_str),
        Some("ok"),
        "{}",
        first.out
    );
    // Same kind: the namespace comes back, with nothing of the first
    // sandbox left in it (its listener and abstract socket, held by a
    // child still sleeping when pid 1 exited, are gone).
    let second = py("no").await;
    let b = kv(&second.out);
    assert_eq!(a["ns"], b["ns"], "not reused: {}", second.out);
    assert_eq!(
        b.get("bind").map(String::as_str),
        Some("ok"),
        "{}",
        second.out
    );
    assert_eq!(b["ifaces"], "lo", "{}", second.out);
    assert_eq!(b["lo_up"], "1", "{}", second.out);
    assert!(rt.netns_reused() >= 1);
    // Another kind (other limits): never that namespace.
    let (s, mut r, _ours) = spec(
        "/usr/bin/python3",
        &["-c", NETNS_PROBE, "no"],
        true,
        "python",
        Limits {
            memory_mb: 200,
            ..Limits::default()
        },
    );
    let mut inst = rt.launch(s).await.unwrap();
    inst.wait().await.unwrap();
    let mut out = String::new();
    r.read_to_string(&mut out).unwrap();
    let c = kv(&out);
    assert!(c.contains_key("ns"), "{out}");
    assert_ne!(a["ns"], c["ns"], "another kind got the namespace: {out}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reused_cgroup_keeps_its_limits_and_counts_only_its_new_sandbox() {
    // No parked sandboxes: each launch takes the cgroup its kind left.
    let rt = unparked_runtime();
    let limits = Limits {
        memory_mb: 32,
        ..Limits::default()
    };
    let bomb = "b = [bytearray(1 << 20) for _ in range(256)]";
    let first = run(
        &rt,
        "/usr/bin/python3",
        &["-c", bomb],
        false,
        "python",
        limits,
    )
    .await;
    assert_eq!(first.exceeded, Some(LimitExceeded::Memory { limit_mb: 32 }));
    // The same kind gets that cgroup: the OOM kill before is not this
    // sandbox's, and the limit still holds.
    let calm = run(&rt, "/bin/true", &[], false, "python", limits).await;
    assert_eq!(calm.status, ExitStatus::Code(0));
    assert_eq!(
        calm.exceeded, None,
        "the earlier OOM kill was counted again"
    );
    assert!(rt.cgroups_reused() >= 1, "the cgroup was not reused");
    let again = run(
        &rt,
        "/usr/bin/python3",
        &["-c", bomb],
        false,
        "python",
        limits,
    )
    .await;
    assert_eq!(again.exceeded, Some(LimitExceeded::Memory { limit_mb: 32 }));
    assert!(rt.cgroups_reused() >= 2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_parked_for_a_program_wait_with_their_filters_installed() {
    let rt = runtime();
    // A first launch of the kind: sandboxes of it get parked after it.
    let r = run(&rt, "/bin/true", &[], false, "native", Limits::default()).await;
    assert_eq!(r.status, ExitStatus::Code(0));
    // Parked ones are children of ours that have not executed anything
    // yet (the keeper thread's name): they already have both filters.
    let parked_filtered = || {
        std::fs::read_dir("/proc")
            .unwrap()
            .filter_map(|e| e.ok())
            .filter(|e| {
                let status = std::fs::read_to_string(e.path().join("status")).unwrap_or_default();
                let field = |k: &str| {
                    status
                        .lines()
                        .find_map(|l| l.strip_prefix(k))
                        .map(str::trim)
                        .unwrap_or("")
                        .to_owned()
                };
                field("PPid:") == std::process::id().to_string()
                    && field("Name:") == "faas-pool-keepe"
                    && field("Seccomp:") == "2"
                    && field("Seccomp_filters:") == "2"
            })
            .count()
    };
    for _ in 0..250 {
        if parked_filtered() > 0 {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(parked_filtered() > 0, "no parked sandbox had its filters");
    // And a launch into one still runs under them: the native profile
    // has no `socket`.
    let r = run(
        &rt,
        &probe(),
        &["lo-down"],
        false,
        "native",
        Limits::default(),
    )
    .await;
    assert_eq!(r.out.trim(), "lo_down socket:EPERM", "{}", r.out);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sandboxes_are_parked_for_a_bounded_number_of_kinds() {
    assert_eq!(rustix_euid(), 0, "needs root");
    let rt = PooledSandboxRuntime::new(SandboxConfig {
        netns_pool: 2,
        cgroup_pool: 2,
        parked: 1,
        parked_kinds: 2,
        ..SandboxConfig::default()
    })
    .expect("sandbox runtime");
    // Three kinds (the memory limit differs), one after the other.
    for memory_mb in [64, 65, 66] {
        let limits = Limits {
            memory_mb,
            ..Limits::default()
        };
        let r = run(&rt, "/bin/true", &[], false, "python", limits).await;
        assert_eq!(r.status, ExitStatus::Code(0));
        // Its refill: one parked for this kind.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        while rt.parked().0 < usize::min(2, usize::try_from(memory_mb - 63).unwrap()) {
            assert!(std::time::Instant::now() < deadline, "{:?}", rt.parked());
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
    // The first kind gave its sandbox up for the third.
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(rt.parked(), (2, 2));
}
