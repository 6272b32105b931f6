//! `faas bench`: latency and throughput of invocations (`cold`, `warm`),
//! and the platform's cold path against plain exec, bubblewrap and runc
//! (`compare`).
//!
//! `cold` and `warm` drive the load generator of [`faas_platform::load`]
//! against a server given with `--server`, or against an embedded platform
//! on a private state directory with the bundled example functions
//! deployed by the command itself. `compare` is in [`compare`].

mod compare;

use std::io::IsTerminal;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, ValueEnum};
use faas_core::{FunctionSpec, ImageRef, Reuse, RuntimeKind};
use faas_platform::client::Client;
use faas_platform::load::{self, LoadPlan, Summary};
use faas_platform::{Platform, embedded};
use http::{Method, StatusCode};

use crate::{Embedded, fmt_ms};

/// How long an embedded `warm` bench keeps idle instances.
const WARM_IDLE_MS: u64 = 60_000;

/// `faas bench [cold|warm|compare]`.
#[derive(Args)]
pub(crate) struct BenchArgs {
    /// What to measure: `cold` (a fresh instance per request), `warm`
    /// (instances kept alive and reused) or `compare` (one static program
    /// through the platform's cold path, plain exec, bwrap and runc).
    #[arg(value_enum, default_value = "cold")]
    mode: Mode,
    /// Function to invoke: on --server a deployed one, else a bundled
    /// example (hello or cpu).
    #[arg(long, default_value = "hello")]
    function: String,
    /// Requests to measure [default: 1000; compare: 200 each way].
    #[arg(long)]
    requests: Option<usize>,
    /// Requests in flight at once (one connection each).
    #[arg(long, default_value_t = 1)]
    concurrency: usize,
    /// Open loop: send requests at this rate (per second) on a fixed
    /// schedule, at most --concurrency in flight; one that had to wait for
    /// a free connection counts its latency from when it was due. Without
    /// it, each connection sends its next request as soon as the last is
    /// answered.
    #[arg(long, value_parser = positive_rate)]
    rate: Option<f64>,
    /// Same as `warm` (older spelling).
    #[arg(long, hide = true)]
    keep_alive: bool,
    /// Request body.
    #[arg(long, default_value = "")]
    data: String,
    /// Print one JSON object instead of the table.
    #[arg(long)]
    json: bool,
    /// Bench a function deployed on this faas server instead of an embedded
    /// platform (cold and warm only).
    #[arg(long)]
    server: Option<String>,
    /// compare: the static executable, built on faas-guest [default: the
    /// bundled hello example].
    #[arg(long)]
    binary: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, ValueEnum)]
enum Mode {
    /// A fresh instance per request.
    Cold,
    /// Instances kept alive; `--concurrency` of them warmed up first.
    Warm,
    /// The platform's cold path against plain exec, bwrap and runc.
    Compare,
}

impl Mode {
    fn as_str(self) -> &'static str {
        match self {
            Mode::Cold => "cold",
            Mode::Warm => "warm",
            Mode::Compare => "compare",
        }
    }
}

/// `--rate`: a finite number of requests per second above zero.
fn positive_rate(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(r) if r.is_finite() && r > 0.0 => Ok(r),
        _ => Err(format!("{s:?} is not a rate above 0 (requests per second)")),
    }
}

/// Runs `faas bench`.
pub(crate) async fn run(a: BenchArgs) -> anyhow::Result<()> {
    let mode = match (a.mode, a.keep_alive) {
        (Mode::Compare, true) => bail!("--keep-alive does not apply to `faas bench compare`"),
        (_, true) => Mode::Warm,
        (m, false) => m,
    };
    if a.requests == Some(0) {
        bail!("--requests must be at least 1");
    }
    if mode == Mode::Compare {
        if a.server.is_some() {
            bail!("`faas bench compare` runs its own embedded platform: --server does not apply");
        }
        if a.rate.is_some() {
            bail!("--rate applies to `faas bench cold` and `warm` only");
        }
        let requests = a.requests.unwrap_or(200);
        return compare::run(a.binary, requests, a.data.into(), a.json).await;
    }
    if a.binary.is_some() {
        bail!("--binary applies to `faas bench compare` only");
    }
    if a.concurrency == 0 {
        bail!("--concurrency must be at least 1");
    }
    let plan = LoadPlan {
        function: a.function.clone(),
        body: Bytes::from(a.data.clone()),
        requests: a.requests.unwrap_or(1000),
        concurrency: a.concurrency,
        warm_up: mode == Mode::Warm,
        rate: a.rate,
    };
    let (summary, target) = match &a.server {
        Some(server) => {
            check_deployed(server, &a.function, mode).await?;
            let s = measure(server, &plan, a.json).await?;
            (s, server.clone())
        }
        None => {
            let server = EmbeddedServer::start().await?;
            let reuse = match mode {
                Mode::Warm => Reuse::KeepAlive {
                    idle_ms: WARM_IDLE_MS,
                },
                _ => Reuse::PerRequest,
            };
            let dir = server.example_dir(&a.function)?;
            let spec = example_spec(&a.function, dir, reuse, a.concurrency);
            server.deploy(&spec).await?;
            let s = measure(&server.base, &plan, a.json).await;
            let target = format!("embedded platform, {} runtime", server.emb.platform.runtime);
            server.stop().await?;
            (s?, target)
        }
    };
    report(&a, mode, &summary, &target);
    Ok(())
}

/// Checks that `function` is deployed on `server` and reuses instances as
/// `mode` needs.
async fn check_deployed(server: &str, function: &str, mode: Mode) -> anyhow::Result<()> {
    let r = Client::new(server)
        .request(Method::GET, &format!("/functions/{function}"), Bytes::new())
        .await?;
    if r.status == StatusCode::NOT_FOUND {
        bail!("function {function:?} is not deployed on {server} (deploy it first: faas deploy)");
    }
    if !r.status.is_success() {
        bail!(
            "GET {server}/functions/{function}: {} — {}",
            r.status,
            load::first_line(&r.error_message())
        );
    }
    let spec: FunctionSpec = serde_json::from_slice(&r.body)
        .with_context(|| format!("GET /functions/{function}: unexpected answer"))?;
    match (mode, spec.reuse) {
        (Mode::Cold, Reuse::KeepAlive { idle_ms }) => bail!(
            "function {function:?} keeps its instances alive ({idle_ms} ms): \
             `faas bench cold` measures a fresh instance per request; use `faas bench warm`, \
             or deploy it without --keep-alive-ms"
        ),
        (Mode::Warm, Reuse::PerRequest) => bail!(
            "function {function:?} starts a fresh instance per request: `faas bench warm` \
             needs instances kept alive; use `faas bench cold`, or deploy it with --keep-alive-ms"
        ),
        _ => Ok(()),
    }
}

/// Runs the plan with a progress line on stderr when it is a terminal.
async fn measure(base: &str, plan: &LoadPlan, quiet: bool) -> anyhow::Result<Summary> {
    let tty = !quiet && std::io::stderr().is_terminal();
    let total = plan.requests;
    let s = load::run_plan(base, plan, |n| {
        if tty {
            eprint!("\r  {n}/{total}");
        }
    })
    .await;
    if tty {
        eprint!("\r\x1b[K");
    }
    s
}

fn modes_line(s: &Summary) -> String {
    let seen: Vec<String> = s
        .start_modes
        .iter()
        .filter(|(_, n)| **n > 0)
        .map(|(m, n)| format!("{m} {n}"))
        .collect();
    if seen.is_empty() {
        "none reported".to_owned()
    } else {
        seen.join(", ")
    }
}

fn report(a: &BenchArgs, mode: Mode, s: &Summary, target: &str) {
    let not_warm = (s.requests - s.errors).saturating_sub(s.started("warm"));
    if a.json {
        let modes: serde_json::Map<String, serde_json::Value> = s
            .start_modes
            .iter()
            .map(|(m, n)| (m.clone(), (*n).into()))
            .collect();
        let mut v = serde_json::json!({
            "function": a.function, "mode": mode.as_str(), "target": target,
            "requests": s.requests, "errors": s.errors, "concurrency": a.concurrency,
            "rate": a.rate,
            "p50_us": us(s.p50), "p90_us": us(s.p90), "p99_us": us(s.p99),
            "max_us": us(s.max), "mean_us": us(s.mean), "rps": s.rps(),
            "start_modes": modes,
        });
        if mode == Mode::Warm {
            v["not_warm"] = not_warm.into();
        }
        if let Some(e) = &s.first_error {
            v["first_error"] = e.clone().into();
        }
        outln!("{v}");
    } else {
        outln!(
            "{} {} ({target}), concurrency {}{}: {} requests, {} errors\n  \
             p50 {}  p90 {}  p99 {}  max {}  mean {}  {:.0} req/s\n  start modes: {}",
            a.function,
            mode.as_str(),
            a.concurrency,
            a.rate
                .map(|r| format!(", open loop at {r} req/s"))
                .unwrap_or_default(),
            s.requests,
            s.errors,
            fmt_ms(s.p50),
            fmt_ms(s.p90),
            fmt_ms(s.p99),
            fmt_ms(s.max),
            fmt_ms(s.mean),
            s.rps(),
            modes_line(s)
        );
    }
    if let Some(e) = &s.first_error {
        eprintln!("faas bench: {} errors; the first: {e}", s.errors);
    }
    match mode {
        Mode::Cold if s.started("warm") > 0 => eprintln!(
            "faas bench: warning: {} of {} responses came from a warm (reused) instance, not a fresh one",
            s.started("warm"),
            s.requests
        ),
        Mode::Warm if not_warm > 0 => eprintln!(
            "faas bench: {not_warm} of {} successful requests were not answered by a warm instance ({})",
            s.requests - s.errors,
            modes_line(s)
        ),
        _ => {}
    }
}

fn us(d: Duration) -> u64 {
    u64::try_from(d.as_micros()).unwrap_or(u64::MAX)
}

/// The spec of a bundled example (or any native executable `name` in
/// `dir`).
fn example_spec(name: &str, dir: PathBuf, reuse: Reuse, concurrency: usize) -> FunctionSpec {
    let mut spec = FunctionSpec::new(name, RuntimeKind::Native, ImageRef::Dir(dir), name);
    spec.reuse = reuse;
    let wanted = u32::try_from(concurrency).unwrap_or(u32::MAX);
    spec.concurrency.max_instances = spec.concurrency.max_instances.max(wanted);
    spec
}

/// An embedded platform serving HTTP on a free loopback port.
pub(crate) struct EmbeddedServer {
    emb: Embedded,
    base: String,
    stop: tokio::sync::oneshot::Sender<()>,
    task: tokio::task::JoinHandle<std::io::Result<()>>,
}

impl EmbeddedServer {
    async fn start() -> anyhow::Result<Self> {
        let emb = Embedded::start(true)?;
        let (listener, addr) = Platform::bind("127.0.0.1:0".parse()?).await?;
        let (stop, stop_rx) = tokio::sync::oneshot::channel::<()>();
        let task = tokio::spawn(emb.platform.gateway.clone().serve(listener, async {
            let _ = stop_rx.await;
        }));
        Ok(EmbeddedServer {
            emb,
            base: format!("http://{addr}"),
            stop,
            task,
        })
    }

    /// The directory of the bundled example `name`.
    fn example_dir(&self, name: &str) -> anyhow::Result<PathBuf> {
        match self.emb.functions.iter().find(|d| d.ends_with(name)) {
            Some(d) => Ok(d.clone()),
            None => {
                let names: Vec<&str> = embedded::FUNCTIONS.iter().map(|f| f.name).collect();
                bail!(
                    "unknown example function {name:?}: use {} (or --server for a deployed one)",
                    names.join(" or ")
                )
            }
        }
    }

    /// Deploys `spec`; returns the start mode the platform chose.
    async fn deploy(&self, spec: &FunctionSpec) -> anyhow::Result<String> {
        let r = Client::new(&self.base)
            .expect_ok(Method::POST, "/functions", serde_json::to_vec(spec)?)
            .await
            .with_context(|| format!("deploying {}", spec.name))?;
        let deployed: FunctionSpec = serde_json::from_slice(&r.body)
            .with_context(|| format!("deploying {}: unexpected answer", spec.name))?;
        Ok(deployed.start.as_str().to_owned())
    }

    async fn stop(self) -> anyhow::Result<()> {
        let _ = self.stop.send(());
        self.task.await.context("server task")??;
        Ok(())
    }
}
