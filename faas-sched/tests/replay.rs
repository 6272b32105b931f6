//! Replays of the shipped Azure Functions traces, and trace files that are
//! malformed.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};

use faas_sched::KeepAlivePolicy;
use faas_sched::replay::{InstanceModel, LoadTraceError, ReplayConfig, Trace, TraceFormat, replay};

const TRACES: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../shared/traces");

fn traces() -> PathBuf {
    let p = Path::new(TRACES);
    assert!(
        p.join("azure2019").is_dir(),
        "the shared traces are missing: expected {} (shared/ beside the repository)",
        p.display()
    );
    p.to_owned()
}

/// Sum of the per-minute counts of the example trio, computed independently
/// of the loader: 4 functions, one day.
fn example_invocations() -> u64 {
    let text = std::fs::read_to_string(traces().join("azure2019/example_invocations.csv")).unwrap();
    text.lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .map(|l| {
            l.split(',')
                .skip(4)
                .map(|x| x.trim().parse::<u64>().unwrap())
                .sum::<u64>()
        })
        .sum()
}

#[test]
fn the_example_trio_replays_with_checked_totals() {
    let trace = Trace::load(&traces().join("azure2019/example")).unwrap();
    assert_eq!(trace.format, TraceFormat::Azure2019);
    assert_eq!(trace.functions.len(), 4);
    let expected = example_invocations();
    assert_eq!(expected, 4525);
    assert_eq!(trace.invocations(), expected);
    for policy in [
        KeepAlivePolicy::fixed_10_min(),
        KeepAlivePolicy::fixed_20_min(),
        KeepAlivePolicy::hybrid(),
    ] {
        let mut cfg = ReplayConfig::new(4, 32 * 1024);
        cfg.policy = policy.clone();
        let r = replay(&trace, &cfg, |_| {}).unwrap();
        assert_eq!(r.invocations, expected, "{policy:?}");
        assert_eq!(r.placed + r.rejected, r.invocations, "{policy:?}");
        // Ample capacity: everything is placed, and every function starts
        // cold at least once.
        assert_eq!(r.rejected, 0, "{policy:?}");
        assert!(
            r.cold_starts >= 4 && r.cold_starts < r.invocations / 10,
            "{r:?}"
        );
        assert!(r.wasted_gb_s > 0.0);
        assert!(r.decision_p50_ns <= r.decision_p99_ns && r.decision_p99_ns <= r.decision_p999_ns);
        // The same seed gives the same counts.
        let again = replay(&trace, &cfg, |_| {}).unwrap();
        assert_eq!(
            (again.placed, again.cold_starts, again.wasted_gb_s),
            (r.placed, r.cold_starts, r.wasted_gb_s)
        );
    }
}

#[test]
fn one_instance_per_function_starts_cold_less_than_one_per_invocation() {
    let trace = Trace::load(&traces().join("azure2019/example")).unwrap();
    assert_eq!(
        InstanceModel::parse("function"),
        Some(InstanceModel::PerFunction)
    );
    assert_eq!(
        InstanceModel::parse("invocation"),
        Some(InstanceModel::PerInvocation)
    );
    assert_eq!(InstanceModel::parse("app"), None);
    for policy in [KeepAlivePolicy::fixed_10_min(), KeepAlivePolicy::hybrid()] {
        let mut cfg = ReplayConfig::new(4, 32 * 1024);
        cfg.policy = policy.clone();
        assert_eq!(cfg.instances, InstanceModel::PerFunction);
        let per_fn = replay(&trace, &cfg, |_| {}).unwrap();
        cfg.instances = InstanceModel::PerInvocation;
        let per_inv = replay(&trace, &cfg, |_| {}).unwrap();
        assert_eq!(per_fn.placed + per_fn.rejected, per_fn.invocations);
        assert_eq!(per_fn.rejected, 0, "{policy:?}");
        // Every function starts cold at least once; concurrent invocations
        // share the loaded instance, so never more cold starts than with an
        // instance per concurrent invocation.
        assert!(per_fn.cold_starts >= 4, "{per_fn:?}");
        assert!(
            per_fn.cold_starts <= per_inv.cold_starts,
            "{policy:?}: {per_fn:?} vs {per_inv:?}"
        );
    }
}

#[test]
fn a_small_cluster_rejects_and_still_accounts_for_every_invocation() {
    let trace = Trace::load(&traces().join("azure2019/example")).unwrap();
    let mut cfg = ReplayConfig::new(1, 200);
    cfg.instances = InstanceModel::PerInvocation;
    cfg.max_instances = 2;
    let r = replay(&trace, &cfg, |_| {}).unwrap();
    assert!(r.rejected > 0, "{r:?}");
    assert_eq!(r.placed + r.rejected, r.invocations);
}

#[test]
fn the_2021_trace_replays_every_invocation() {
    let trace = Trace::load(&traces().join("azure2021/Azure2021_200.csv")).unwrap();
    assert_eq!(trace.format, TraceFormat::Azure2021);
    let rows = std::fs::read_to_string(traces().join("azure2021/Azure2021_200.csv"))
        .unwrap()
        .lines()
        .skip(1)
        .filter(|l| !l.is_empty())
        .count() as u64;
    assert_eq!(trace.invocations(), rows);
    let r = replay(&trace, &ReplayConfig::new(2, 8192), |_| {}).unwrap();
    assert_eq!((r.placed, r.rejected), (rows, 0));
    assert!(r.cold_starts as usize >= trace.functions.len());
}

#[test]
fn a_directory_with_several_trios_is_ambiguous() {
    match Trace::load(&traces().join("azure2019")) {
        Err(LoadTraceError::Ambiguous { candidates, .. }) => {
            assert_eq!(candidates, ["100", "1000", "example"]);
        }
        other => panic!("expected Ambiguous, got {other:?}"),
    }
}

fn write_trio(dir: &Path, inv: &str) -> PathBuf {
    std::fs::write(dir.join("t_inv.csv"), inv).unwrap();
    std::fs::write(
        dir.join("t_run.csv"),
        "HashFunction,HashApp,HashOwner,Count,Average,Minimum,Maximum,percentile_Average_0,percentile_Average_50,percentile_Average_100\nf,a,o,1,10,10,10,10,10,10\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("t_mem.csv"),
        "HashApp,HashOwner,SampleCount,AverageAllocatedMb,AverageAllocatedMb_pct1,AverageAllocatedMb_pct100\na,o,1,100,100,100\n",
    )
    .unwrap();
    dir.join("t")
}

#[test]
fn a_malformed_line_names_the_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let prefix = write_trio(
        dir.path(),
        "HashFunction,HashApp,HashOwner,minute_1,minute_2\nf,a,o,1,2\nf,a,o,x,1\n",
    );
    let err = Trace::load(&prefix).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(err, LoadTraceError::Parse { line: 3, .. }),
        "{msg}"
    );
    assert!(msg.contains("t_inv.csv:3"), "{msg}");
    let prefix = write_trio(
        dir.path(),
        "HashFunction,HashApp,HashOwner,minute_1\nf,a,o,1,2\n",
    );
    assert!(matches!(
        Trace::load(&prefix),
        Err(LoadTraceError::Parse { line: 2, .. })
    ));
    let prefix = write_trio(dir.path(), "HashApp,HashOwner,minute_1\na,o,1\n");
    assert!(matches!(
        Trace::load(&prefix),
        Err(LoadTraceError::MissingColumn { .. })
    ));
    let prefix = write_trio(
        dir.path(),
        "HashFunction,HashApp,HashOwner,minute_1\nf,a,o,0\n",
    );
    assert!(matches!(
        Trace::load(&prefix),
        Err(LoadTraceError::Empty { .. })
    ));
    assert!(matches!(
        Trace::load(&dir.path().join("nothing")),
        Err(LoadTraceError::NotFound { .. })
    ));
    // A well-formed one loads: 3 invocations of 10 ms, 100 MiB.
    let prefix = write_trio(
        dir.path(),
        "HashFunction,HashApp,HashOwner,minute_1,minute_2\nf,a,o,1,2\n",
    );
    let t = Trace::load(&prefix).unwrap();
    assert_eq!(t.invocations(), 3);
    let r = replay(&t, &ReplayConfig::new(1, 1024), |_| {}).unwrap();
    assert_eq!((r.placed, r.cold_starts), (3, 1));
}
