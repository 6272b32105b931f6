//! Snapshot restore benchmarks (`faas_snapshot`): restore from a snapshot and
//! fork of a template against a cold exec of the same program, in the same
//! run.
//!
//! Two targets (`benches/targets/`, see its README): `respond`, a small
//! static C program, and `respond.py`, a Python script with a realistic set
//! of standard-library imports and some state. Each is started once, stops
//! itself with SIGSTOP at its snapshot point and is checkpointed in-process
//! with `faas_snapshot::dump` (killed after); the snapshot is opened once
//! (`Snapshot::open`) and a `ForkTemplate` made of it once. The arms:
//!
//! | arm | one instance is |
//! |---|---|
//! | `cold` | `std::process::Command` spawn of the same binary/script with `--cold` (it does not stop) |
//! | `restore` | `Snapshot::restore` |
//! | `fork` | `ForkTemplate::fork(io, false)` (no namespaces, like `restore`) |
//! | `fork_ns` | `ForkTemplate::fork(io, true)` (new pid, ipc, uts, mount and network namespaces) |
//!
//! each with fresh pipes as fds 0 and 1. What is timed, all on
//! CLOCK_MONOTONIC (the target reads it too):
//!
//! | quantity | from | to |
//! |---|---|---|
//! | first instruction | just before `restore()` / `fork()` in this process | the target's first `clock_gettime` after its stop returns (`t=`) |
//! | main (cold) | just before `spawn()` | the target's first statement (`main=`: `main()` / the script's first line) |
//! | ready (cold) | just before `spawn()` | the point a restore resumes at (`t=`: after imports and set-up) |
//! | response | just before `restore()` / `fork()` / `spawn()` | this process has read the target's `response` line |
//! | response net | the same, less the target's own read of smaps_rollup before it answers (`smaps_ns=`) | |
//!
//! Private_Dirty (from `/proc/PID/smaps_rollup`) is read twice per instance:
//! by the target itself at `t=` and by this process after the response (the
//! target waits for its stdin to close before it exits). The binary and the
//! page files are written back (`sync`) before anything is measured: a
//! dirty page-cache page mapped by one process counts as Private_Dirty.
//! Every response is checked against the first cold one.
//!
//! First, `SNAPSHOT_BENCH_RUNS` (default 200) interleaved rounds (each: every
//! arm of the native target, then every arm of the Python target) are timed,
//! their p50/p99 and median Private_Dirty printed (criterion reports means
//! and medians only) and written as JSON to `SNAPSHOT_BENCH_JSON` (default
//! `$CARGO_TARGET_DIR/snapshot-latencies.json`, else
//! `target/snapshot-latencies.json`). Then criterion, per target
//! (`snapshot_native/…`, `snapshot_python/…`):
//!
//! | case | what is timed |
//! |---|---|
//! | `restore_first_instruction` | restore → first instruction (the iteration's time is that latency) |
//! | `restore_response` | restore → response |
//! | `fork_first_instruction` | template fork → first instruction |
//! | `fork_response` | template fork → response |
//! | `cold_response` | cold exec → response (Python: flat sampling, ~0.1 s an iteration) |
//!
//! Waiting for the instance to exit and reaping it is untimed. The Python
//! interpreter is `SNAPSHOT_BENCH_PYTHON`, else the distribution's
//! `/usr/bin/python3`, else the real executable behind `python3`
//! (`sys.executable`: a pyenv shim would add a shell and pyenv to every cold
//! start). Whatever `site` imports at start-up (`.pth` hooks) is part of the
//! cold baseline, so prefer an interpreter without extra site-packages.
//! Needs root (ptrace, PR_SET_MM, namespaces) and gcc with static glibc.
//!
//! Run with `cargo bench -p faas-benches --bench snapshot`; the summary
//! table with ratios: `benches/scripts/snapshot-vs-cold.py`. Only the timed
//! rounds, no criterion: `SNAPSHOT_BENCH_ROUNDS_ONLY=1`. To see where an
//! instance's memory goes, `SNAPSHOT_BENCH_SMAPS=DIR` saves the
//! `/proc/PID/smaps` of one instance of each target and arm, after its
//! response, into DIR.
#![allow(missing_docs, clippy::unwrap_used, clippy::expect_used)]

use std::ffi::OsString;
use std::fs;
use std::io::Read;
use std::os::fd::OwnedFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{Criterion, SamplingMode, criterion_main};
use faas_core::{ExitStatus, SnapshotError};
use faas_snapshot::{DumpOptions, ForkTemplate, RestoreIo, Restored, Snapshot};
use serde_json::{Value, json};

/// CLOCK_MONOTONIC in nanoseconds, the clock the targets stamp with.
fn now_ns() -> i64 {
    let t = rustix::time::clock_gettime(rustix::time::ClockId::Monotonic);
    t.tv_sec * 1_000_000_000 + t.tv_nsec
}

fn targets_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("targets")
}

/// `respond.c` compiled static into `dir`.
fn build_native(dir: &Path) -> PathBuf {
    let out = dir.join("respond");
    let r = Command::new("gcc")
        .args(["-O2", "-static", "-o"])
        .arg(&out)
        .arg(targets_dir().join("respond.c"))
        .output()
        .expect("run gcc (apt-get install gcc libc6-dev)");
    assert!(
        r.status.success(),
        "gcc respond.c failed:\n{}",
        String::from_utf8_lossy(&r.stderr)
    );
    out
}

/// The Python interpreter: `SNAPSHOT_BENCH_PYTHON`, else the distribution's
/// `/usr/bin/python3`, else the real executable behind `python3`.
fn python() -> PathBuf {
    if let Some(p) = std::env::var_os("SNAPSHOT_BENCH_PYTHON") {
        return PathBuf::from(p);
    }
    if let Ok(p) = fs::canonicalize("/usr/bin/python3") {
        return p;
    }
    let r = Command::new("python3")
        .args(["-c", "import sys; print(sys.executable)"])
        .output()
        .expect("run python3");
    assert!(
        r.status.success(),
        "python3 -c 'print(sys.executable)' failed"
    );
    PathBuf::from(String::from_utf8(r.stdout).unwrap().trim())
}

/// State letter of /proc/PID/stat.
fn proc_state(pid: u32) -> Option<char> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..].trim_start().chars().next()
}

/// The minor page faults of PID so far (field 10 of /proc/PID/stat).
fn minor_faults(pid: u32) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    s[s.rfind(')')? + 1..]
        .split_whitespace()
        .nth(7)?
        .parse()
        .ok()
}

/// A field (in kB) of /proc/PID/smaps_rollup.
fn rollup_kb(pid: u32, field: &str) -> Option<u64> {
    let s = fs::read_to_string(format!("/proc/{pid}/smaps_rollup")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix(field)?.strip_prefix(':'))?
        .split_whitespace()
        .next()?
        .parse()
        .ok()
}

/// How an instance is started.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Arm {
    Cold,
    Restore,
    Fork,
    ForkNs,
}

impl Arm {
    const ALL: [Arm; 4] = [Arm::Cold, Arm::Restore, Arm::Fork, Arm::ForkNs];

    fn key(self) -> &'static str {
        match self {
            Arm::Cold => "cold",
            Arm::Restore => "restore",
            Arm::Fork => "fork",
            Arm::ForkNs => "fork_ns",
        }
    }
}

/// A target, its snapshot, its fork template and its cold command line.
struct Target {
    name: &'static str,
    cold: Vec<OsString>,
    snapshot: Snapshot,
    template: ForkTemplate,
    /// Checkpoint: pages saved, bytes written, time.
    dump: (u64, u64, Duration),
    /// The response line every instance must give (the first cold one's).
    expected: std::cell::OnceCell<String>,
}

impl Target {
    /// Starts `argv` (without `--cold`), waits for its SIGSTOP, checkpoints it
    /// into `dir` (killing it), opens the snapshot and makes its template.
    fn new(name: &'static str, argv: Vec<OsString>, dir: &Path) -> Target {
        let mut child = Command::new(&argv[0])
            .args(&argv[1..])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .unwrap();
        let pid = child.id();
        let deadline = Instant::now() + Duration::from_secs(20);
        while proc_state(pid) != Some('T') {
            if let Some(st) = child.try_wait().unwrap() {
                panic!("{name} exited ({st}) before its snapshot point");
            }
            assert!(Instant::now() < deadline, "{name} did not stop itself");
            std::thread::sleep(Duration::from_millis(1));
        }
        let t = Instant::now();
        let info = faas_snapshot::dump(pid, dir, &DumpOptions { kill: true })
            .unwrap_or_else(|e| panic!("dump {name}: {e}"));
        let took = t.elapsed();
        // dump reaps it when it was traced as our child; ECHILD then.
        let _ = child.wait();
        let snapshot = Snapshot::open(dir).unwrap_or_else(|e| panic!("open {name}: {e}"));
        let template =
            ForkTemplate::new(&snapshot).unwrap_or_else(|e| panic!("template {name}: {e}"));
        let mut cold = argv;
        cold.push("--cold".into());
        Target {
            name,
            cold,
            snapshot,
            template,
            dump: (info.pages, info.bytes, took),
            expected: std::cell::OnceCell::new(),
        }
    }
}

/// One instance's measurements, in ns from the start (restore, fork or
/// spawn).
#[derive(Clone, Copy)]
struct Sample {
    /// To the target's `t=` (restore, fork: first instruction; cold: ready).
    first: i64,
    /// To the target's `main=` (cold only).
    main: Option<i64>,
    /// To this process having read the response line.
    response: i64,
    /// Of that, the target's own read of smaps_rollup before answering.
    smaps: i64,
    /// Private_Dirty the target read itself at `t=`, kB.
    dirty_at_first: u64,
    /// Private_Dirty of the instance after its response, kB.
    dirty_after: u64,
    /// Minor page faults of the instance up to after its response (a fork
    /// or restore: since it started; cold: its exec and set-up included).
    faults_after: u64,
}

/// Reads the target's output until its complete `response` line; returns
/// the output and the time it was read.
fn read_response(r: &mut impl Read, what: &str) -> (String, i64) {
    let mut buf = Vec::with_capacity(1024);
    let mut chunk = [0u8; 4096];
    loop {
        let n = r.read(&mut chunk).unwrap();
        let at = now_ns();
        if n == 0 {
            panic!(
                "{what}: end of output before the response:\n{}",
                String::from_utf8_lossy(&buf)
            );
        }
        buf.extend_from_slice(&chunk[..n]);
        if let Some(i) = find(&buf, b"response ")
            && (i == 0 || buf[i - 1] == b'\n')
            && buf[i..].contains(&b'\n')
        {
            return (String::from_utf8(buf).unwrap(), at);
        }
    }
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn field(out: &str, key: &str) -> Option<i64> {
    out.lines()
        .find_map(|l| l.strip_prefix(key)?.strip_prefix('='))?
        .parse()
        .ok()
}

/// Judges one instance's output and finishes it: checks the response,
/// reads its Private_Dirty, closes its stdin and checks that it exits 0.
#[allow(clippy::too_many_arguments)]
fn finish(
    t: &Target,
    arm: Arm,
    start: i64,
    out: &str,
    at: i64,
    pid: u32,
    stdin: OwnedFd,
    wait: impl FnOnce() -> bool,
) -> Sample {
    let what = format!("{} {}", t.name, arm.key());
    let first = field(out, "t").unwrap_or_else(|| panic!("{what}: no t= in {out:?}"));
    let response = out.lines().find(|l| l.starts_with("response ")).unwrap();
    let expected = t.expected.get_or_init(|| response.to_owned());
    assert_eq!(response, expected, "{what}: another response");
    let dirty_after = rollup_kb(pid, "Private_Dirty").expect("smaps_rollup");
    let faults_after = minor_faults(pid).expect("/proc/PID/stat");
    if let Some(dir) = std::env::var_os("SNAPSHOT_BENCH_SMAPS") {
        let path = Path::new(&dir).join(format!("{}-{}.smaps", t.name, arm.key()));
        if !path.exists() {
            fs::copy(format!("/proc/{pid}/smaps"), path).unwrap();
        }
    }
    drop(stdin);
    assert!(wait(), "{what} did not exit 0; output:\n{out}");
    Sample {
        first: first - start,
        main: field(out, "main").map(|m| m - start),
        response: at - start,
        smaps: field(out, "smaps_ns").unwrap_or_else(|| panic!("{what}: no smaps_ns= in {out:?}")),
        dirty_at_first: field(out, "private_dirty_kb")
            .and_then(|k| u64::try_from(k).ok())
            .unwrap_or_else(|| panic!("{what}: no private_dirty_kb= in {out:?}")),
        dirty_after,
        faults_after,
    }
}

/// Starts one instance the way `arm` says and takes it through its
/// response.
fn once(t: &Target, arm: Arm) -> Sample {
    if arm == Arm::Cold {
        return cold_once(t);
    }
    let (mut out_r, out_w) = std::io::pipe().unwrap();
    let (in_r, in_w) = std::io::pipe().unwrap();
    let io = RestoreIo {
        stdin: Some(in_r.into()),
        stdout: Some(out_w.into()),
        inherit_stdio: true,
        ..RestoreIo::default()
    };
    let start = now_ns();
    // `io` is consumed: this process keeps no write end of the output pipe.
    let r: Result<Restored, SnapshotError> = match arm {
        Arm::Restore => t.snapshot.restore(io),
        Arm::Fork => t.template.fork(io, false),
        Arm::ForkNs => t.template.fork(io, true),
        Arm::Cold => unreachable!(),
    };
    let mut r = r.unwrap_or_else(|e| panic!("{} {}: {e}", t.name, arm.key()));
    let (out, at) = read_response(&mut out_r, t.name);
    let pid = r.pid();
    finish(t, arm, start, &out, at, pid, in_w.into(), move || {
        matches!(r.wait_blocking(), Ok(ExitStatus::Code(0)))
    })
}

/// Cold-execs the target with `--cold` and takes it through its response.
fn cold_once(t: &Target) -> Sample {
    let mut cmd = Command::new(&t.cold[0]);
    cmd.args(&t.cold[1..])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let start = now_ns();
    let mut child = cmd.spawn().unwrap();
    let mut stdout = child.stdout.take().unwrap();
    let (out, at) = read_response(&mut stdout, t.name);
    let stdin = OwnedFd::from(child.stdin.take().unwrap());
    let pid = child.id();
    finish(t, Arm::Cold, start, &out, at, pid, stdin, move || {
        child.wait().is_ok_and(|s| s.success())
    })
}

/// Nearest-rank percentile of sorted values.
fn pct<T: Copy>(sorted: &[T], q: f64) -> T {
    let i = ((q * sorted.len() as f64).ceil() as usize).clamp(1, sorted.len()) - 1;
    sorted[i]
}

fn stats_us(mut xs: Vec<i64>) -> Value {
    xs.sort_unstable();
    let us = |ns: i64| (ns as f64 / 100.0).round() / 10.0;
    json!({
        "p50": us(pct(&xs, 0.5)),
        "p99": us(pct(&xs, 0.99)),
        "min": us(xs[0]),
        "max": us(xs[xs.len() - 1]),
    })
}

fn median(mut xs: Vec<u64>) -> u64 {
    xs.sort_unstable();
    pct(&xs, 0.5)
}

/// p50/p99 and median Private_Dirty of one arm.
fn summarise(samples: &[Sample], arm: Arm) -> Value {
    let first = if arm == Arm::Cold {
        "ready_us"
    } else {
        "first_instruction_us"
    };
    let mut v = json!({
        first: stats_us(samples.iter().map(|s| s.first).collect()),
        "response_us": stats_us(samples.iter().map(|s| s.response).collect()),
        "response_net_us": stats_us(samples.iter().map(|s| s.response - s.smaps).collect()),
        "smaps_read_us": stats_us(samples.iter().map(|s| s.smaps).collect()),
        "private_dirty_kb_at_first": median(samples.iter().map(|s| s.dirty_at_first).collect()),
        "private_dirty_kb_after_response": median(samples.iter().map(|s| s.dirty_after).collect()),
        "minor_faults_after_response": median(samples.iter().map(|s| s.faults_after).collect()),
    });
    if arm == Arm::Cold {
        v["main_us"] = stats_us(samples.iter().filter_map(|s| s.main).collect());
    }
    v
}

fn p50(v: &Value, arm: &str, key: &str) -> f64 {
    v[arm][key]["p50"].as_f64().unwrap()
}

/// The interleaved timed rounds: JSON summary.
fn rounds(targets: &[Target], runs: usize) -> Value {
    let mut samples: Vec<Vec<Vec<Sample>>> =
        vec![vec![Vec::with_capacity(runs); Arm::ALL.len()]; targets.len()];
    // One untimed round first (page cache, lazy set-up).
    for t in targets {
        for arm in Arm::ALL {
            once(t, arm);
        }
    }
    let started = Instant::now();
    for _ in 0..runs {
        for (i, t) in targets.iter().enumerate() {
            for (j, arm) in Arm::ALL.into_iter().enumerate() {
                samples[i][j].push(once(t, arm));
            }
        }
    }
    let mut out = json!({
        "runs": runs,
        "rounds_seconds": started.elapsed().as_secs_f64(),
        "python_interpreter": python().display().to_string(),
    });
    for (i, t) in targets.iter().enumerate() {
        let mut v = json!({
            "snapshot": {
                "pages": t.dump.0,
                "bytes": t.dump.1,
                "dump_ms": t.dump.2.as_secs_f64() * 1e3,
            },
        });
        for (j, arm) in Arm::ALL.into_iter().enumerate() {
            v[arm.key()] = summarise(&samples[i][j], arm);
        }
        let cold_resp = p50(&v, "cold", "response_us");
        let cold_net = p50(&v, "cold", "response_net_us");
        let cold_main = p50(&v, "cold", "main_us");
        let mut ratios = json!({});
        for arm in ["restore", "fork", "fork_ns"] {
            ratios[format!("cold_response_over_{arm}_response_p50")] =
                json!(cold_resp / p50(&v, arm, "response_us"));
            ratios[format!("cold_response_net_over_{arm}_response_net_p50")] =
                json!(cold_net / p50(&v, arm, "response_net_us"));
            ratios[format!("cold_main_over_{arm}_first_instruction_p50")] =
                json!(cold_main / p50(&v, arm, "first_instruction_us"));
        }
        ratios["restore_response_over_fork_response_p50"] =
            json!(p50(&v, "restore", "response_us") / p50(&v, "fork", "response_us"));
        v["ratios"] = ratios;
        out[t.name] = v;
    }
    out
}

fn print_rounds(v: &Value) {
    eprintln!(
        "snapshot rounds: {} interleaved runs of each arm in {:.1} s",
        v["runs"],
        v["rounds_seconds"].as_f64().unwrap()
    );
    for name in ["native", "python"] {
        let t = &v[name];
        for arm in Arm::ALL {
            let a = &t[arm.key()];
            let keys: &[&str] = if arm == Arm::Cold {
                &["main_us", "ready_us", "response_us", "response_net_us"]
            } else {
                &["first_instruction_us", "response_us", "response_net_us"]
            };
            for key in keys {
                eprintln!(
                    "  {name:6} {:7} {key:21} p50 {:>9.1} µs  p99 {:>9.1} µs",
                    arm.key(),
                    a[key]["p50"].as_f64().unwrap(),
                    a[key]["p99"].as_f64().unwrap()
                );
            }
            eprintln!(
                "  {name:6} {:7} Private_Dirty median {} kB at t=, {} kB after the response; {} minor faults",
                arm.key(),
                a["private_dirty_kb_at_first"],
                a["private_dirty_kb_after_response"],
                a["minor_faults_after_response"]
            );
        }
        let r = &t["ratios"];
        eprintln!(
            "  {name:6} p50 cold/restore: response {:.1}x (without the smaps reads {:.1}x), main vs first instruction {:.2}x; restore/fork response {:.2}x",
            r["cold_response_over_restore_response_p50"]
                .as_f64()
                .unwrap(),
            r["cold_response_net_over_restore_response_net_p50"]
                .as_f64()
                .unwrap(),
            r["cold_main_over_restore_first_instruction_p50"]
                .as_f64()
                .unwrap(),
            r["restore_response_over_fork_response_p50"]
                .as_f64()
                .unwrap(),
        );
    }
}

fn json_path() -> PathBuf {
    if let Some(p) = std::env::var_os("SNAPSHOT_BENCH_JSON") {
        return PathBuf::from(p);
    }
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../target"));
    target.join("snapshot-latencies.json")
}

/// A criterion case whose iteration time is `pick` of one instance.
fn case(
    g: &mut criterion::BenchmarkGroup<'_, criterion::measurement::WallTime>,
    id: &str,
    t: &Target,
    arm: Arm,
    pick: fn(&Sample) -> i64,
) {
    g.bench_function(id, |b| {
        b.iter_custom(|iters| {
            let ns: i64 = (0..iters).map(|_| pick(&once(t, arm))).sum();
            Duration::from_nanos(ns as u64)
        });
    });
}

/// The criterion cases of one target.
fn criterion_cases(c: &mut Criterion, t: &Target) {
    let mut g = c.benchmark_group(format!("snapshot_{}", t.name));
    g.sample_size(if t.name == "python" { 20 } else { 50 });
    case(&mut g, "restore_first_instruction", t, Arm::Restore, |s| {
        s.first
    });
    case(&mut g, "restore_response", t, Arm::Restore, |s| s.response);
    case(&mut g, "fork_first_instruction", t, Arm::Fork, |s| s.first);
    case(&mut g, "fork_response", t, Arm::Fork, |s| s.response);
    if t.name == "python" {
        g.sample_size(10).sampling_mode(SamplingMode::Flat);
    }
    case(&mut g, "cold_response", t, Arm::Cold, |s| s.response);
    g.finish();
}

fn benches() {
    let rounds_only = std::env::var_os("SNAPSHOT_BENCH_ROUNDS_ONLY").is_some_and(|v| v != "0");
    let work = tempfile::tempdir_in("/var/tmp").unwrap();
    let native = build_native(work.path());
    let targets = [
        Target::new(
            "native",
            vec![native.into()],
            &work.path().join("native.snap"),
        ),
        Target::new(
            "python",
            vec![python().into(), targets_dir().join("respond.py").into()],
            &work.path().join("python.snap"),
        ),
    ];
    // The binary and the page files were just written: until written back,
    // their page-cache pages are dirty, and smaps counts a dirty file page
    // mapped by one process as Private_Dirty. Write them back first.
    rustix::fs::sync();
    // `cargo test --benches` runs without --bench: one criterion pass only.
    if std::env::args().any(|a| a == "--bench") || rounds_only {
        let runs = std::env::var("SNAPSHOT_BENCH_RUNS")
            .ok()
            .and_then(|s| s.parse().ok())
            .unwrap_or(200);
        let v = rounds(&targets, runs);
        print_rounds(&v);
        let path = json_path();
        if let Some(dir) = path.parent() {
            let _ = fs::create_dir_all(dir);
        }
        fs::write(&path, serde_json::to_string_pretty(&v).unwrap()).unwrap();
        eprintln!("snapshot rounds written to {}", path.display());
    }
    if rounds_only {
        return;
    }
    let mut c = Criterion::default()
        .warm_up_time(Duration::from_secs(1))
        .measurement_time(Duration::from_secs(3))
        .configure_from_args();
    for t in &targets {
        criterion_cases(&mut c, t);
    }
}

criterion_main!(benches);
