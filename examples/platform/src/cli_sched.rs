//! `faas sched replay`: a real Azure Functions trace through the pool
//! scheduler, in virtual time. The replay itself is `faas_sched::replay`;
//! this only parses arguments and prints.

use std::io::IsTerminal;
use std::path::PathBuf;

use anyhow::Context;
use clap::{Args, Subcommand};
use faas_sched::KeepAlivePolicy;
use faas_sched::replay::{InstanceModel, Progress, ReplayConfig, ReplayReport, Trace, replay};

/// `faas sched ...`
#[derive(Args)]
pub(crate) struct SchedArgs {
    #[command(subcommand)]
    command: SchedCommand,
}

#[derive(Subcommand)]
enum SchedCommand {
    /// Replay an Azure Functions trace (2019 per-minute trio or 2021
    /// per-invocation CSV) through the pool scheduler in virtual time.
    Replay(ReplayArgs),
}

#[derive(Args)]
struct ReplayArgs {
    /// The trace: a 2021 CSV file, or a 2019 trio as a directory holding one
    /// trio or a prefix (DIR/100 for DIR/100_{inv,run,mem}.csv, DIR/example
    /// for DIR/example_{invocations,durations,memory}.csv).
    #[arg(long)]
    trace: PathBuf,
    /// Nodes of the simulated cluster.
    #[arg(long)]
    nodes: u32,
    /// Memory of each node, MiB.
    #[arg(long)]
    node_memory: u64,
    /// Keep-alive policy: fixed:10m, fixed:20m, fixed:<N>s|m|h or hybrid.
    #[arg(long, default_value = "fixed:10m", value_parser = parse_policy)]
    policy: KeepAlivePolicy,
    /// Seed of every random draw; the same seed gives the same counts.
    #[arg(long, default_value_t = 0)]
    seed: u64,
    /// Instances per function: `function` (one instance serves all of a
    /// function's invocations, the model of "Serverless in the Wild") or
    /// `invocation` (one instance per concurrent invocation).
    #[arg(long, default_value = "function", value_parser = parse_instances)]
    instances: InstanceModel,
    /// Concurrent instances allowed per function (`--instances invocation`).
    #[arg(long, default_value_t = 1000)]
    max_instances: u32,
    /// Print one JSON object instead of text.
    #[arg(long)]
    json: bool,
}

fn parse_instances(s: &str) -> Result<InstanceModel, String> {
    InstanceModel::parse(s).ok_or_else(|| format!("{s:?} is not one of function, invocation"))
}

fn parse_policy(s: &str) -> Result<KeepAlivePolicy, String> {
    KeepAlivePolicy::parse(s).map_err(|e| e.to_string())
}

/// Runs `faas sched ...`.
pub(crate) fn run(args: SchedArgs) -> anyhow::Result<()> {
    match args.command {
        SchedCommand::Replay(a) => run_replay(a),
    }
}

fn run_replay(a: ReplayArgs) -> anyhow::Result<()> {
    let trace = Trace::load(&a.trace)?;
    let mut cfg = ReplayConfig::new(a.nodes, a.node_memory);
    cfg.policy = a.policy.clone();
    cfg.seed = a.seed;
    cfg.instances = a.instances;
    cfg.max_instances = a.max_instances;
    let tty = std::io::stderr().is_terminal();
    let mut last = 0u64;
    let report = replay(&trace, &cfg, |p: Progress| {
        if tty && (p.minute == p.minutes || p.minute >= last + 10) {
            last = p.minute;
            eprint!("\r  replaying: minute {}/{}", p.minute, p.minutes);
        }
    })
    .context("replay")?;
    if tty {
        eprint!("\r\x1b[K");
    }
    if a.json {
        outln!("{}", json(&report));
    } else {
        print_text(&a, &report);
    }
    Ok(())
}

fn json(r: &ReplayReport) -> serde_json::Value {
    serde_json::json!({
        "invocations": r.invocations,
        "placed": r.placed,
        "rejected": r.rejected,
        "cold_starts": r.cold_starts,
        "cold_start_pct": r.cold_start_pct,
        "wasted_gb_s": r.wasted_gb_s,
        "decision_p50_ns": r.decision_p50_ns,
        "decision_p99_ns": r.decision_p99_ns,
        "decision_p999_ns": r.decision_p999_ns,
    })
}

fn policy_name(p: &KeepAlivePolicy) -> String {
    match p {
        KeepAlivePolicy::FromSpec => "spec".into(),
        KeepAlivePolicy::Fixed(d) => format!("fixed {}", fmt_secs(d.as_secs())),
        KeepAlivePolicy::Hybrid(_) => "hybrid histogram".into(),
    }
}

fn fmt_secs(s: u64) -> String {
    if s.is_multiple_of(3600) {
        format!("{}h", s / 3600)
    } else if s.is_multiple_of(60) {
        format!("{}m", s / 60)
    } else {
        format!("{s}s")
    }
}

fn print_text(a: &ReplayArgs, r: &ReplayReport) {
    outln!(
        "trace {} ({} functions, {:.0} virtual minutes), {} nodes x {} MiB, policy {}, instances per {}, seed {}",
        a.trace.display(),
        r.functions,
        r.virtual_secs / 60.0,
        a.nodes,
        a.node_memory,
        policy_name(&a.policy),
        match a.instances {
            InstanceModel::PerFunction => "function",
            InstanceModel::PerInvocation => "invocation",
        },
        a.seed
    );
    outln!("invocations       {}", r.invocations);
    outln!("placed            {}", r.placed);
    outln!("rejected          {}", r.rejected);
    outln!(
        "cold starts       {} ({:.3} %)",
        r.cold_starts,
        r.cold_start_pct
    );
    outln!(
        "wasted memory     {:.1} GB·s (idle instances)",
        r.wasted_gb_s
    );
    outln!(
        "decision latency  p50 {} ns, p99 {} ns, p99.9 {} ns",
        r.decision_p50_ns,
        r.decision_p99_ns,
        r.decision_p999_ns
    );
}
