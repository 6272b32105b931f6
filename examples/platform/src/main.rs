//! `faas`: the whole platform in one binary, and the client of its API.

/// `println!` for a command's output: a reader that went away (`faas ls
/// | head`) ends the command quietly, as it would a C tool, instead of a
/// panic; any other write error is one line and exit status 1.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        if let Err(e) = writeln!(std::io::stdout(), $($t)*) {
            $crate::output_failed(&e)
        }
    }};
}

mod cli_bench;
mod cli_image;
mod cli_sandbox;
mod cli_sched;
mod cli_snapshot;

use std::io::{IsTerminal, Write};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use bytes::Bytes;
use clap::{Args, Parser, Subcommand};
use faas_core::{FunctionSpec, ImageRef, Reuse, RuntimeKind, StartMode};
use faas_platform::client::Client;
use faas_platform::{Platform, PlatformConfig, SandboxChoice, embedded, load};
use http::Method;

/// faas — per-request function instances, fast.
#[derive(Parser)]
#[command(name = "faas", version, about, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the platform (gateway, scheduler, node) in this process, or with
    /// --role gateway only the gateway and scheduler, with nodes joining
    /// over TCP (`faas node --join`).
    Serve(ServeArgs),
    /// Run a node agent: join a gateway (`faas serve --role gateway`) and
    /// run the invocations it sends in this machine's sandboxes.
    Node(NodeArgs),
    /// List the nodes of the platform: capacity, requests in flight, health.
    Nodes {
        /// Print the JSON of GET /nodes.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Deploy a function from a directory: an executable, or a Python or
    /// Node.js Lambda handler (Python: snapshotted at deploy, restored per
    /// request).
    Deploy(DeployArgs),
    /// Invoke a function (NAME, NAME@VERSION or NAME@ALIAS) and print its
    /// answer.
    Invoke(InvokeArgs),
    /// Print the logs of an invocation (its id is in x-faas-invocation-id,
    /// or printed by `invoke --async`).
    Logs {
        /// Invocation id.
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Print what is known about an invocation (state, status, result) as
    /// JSON.
    Invocation {
        /// Invocation id.
        id: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Point an alias of a function at one of its versions (`faas alias
    /// NAME ALIAS VERSION`), or delete one (`faas alias rm NAME ALIAS`).
    #[command(args_conflicts_with_subcommands = true, subcommand_negates_reqs = true)]
    Alias {
        /// Function name.
        #[arg(required = true)]
        name: Option<String>,
        /// Alias (a-z, 0-9, '-', '_'; not a number, not `latest`).
        #[arg(required = true)]
        alias: Option<String>,
        /// Version number.
        #[arg(value_name = "VERSION", required = true)]
        to_version: Option<u32>,
        #[command(subcommand)]
        action: Option<AliasAction>,
        #[command(flatten)]
        server: ServerArg,
    },
    /// List deployed functions (latest versions) and their aliases.
    Ls(ServerArg),
    /// Delete a function (every version).
    Rm {
        /// Function name.
        name: String,
        #[command(flatten)]
        server: ServerArg,
    },
    /// Start an embedded platform, deploy the example functions, measure
    /// cold invocations and stay up for you to try.
    Demo(DemoArgs),
    /// Measure invocations: `cold` or `warm` latency and throughput against
    /// an embedded platform (or --server), or `compare` the platform's cold
    /// path with plain exec, bwrap and runc.
    Bench(cli_bench::BenchArgs),
    /// Build, inspect, verify and mount read-only images (faas-rofs).
    Image(cli_image::ImageArgs),
    /// Run a command in a sandbox.
    Sandbox(cli_sandbox::SandboxArgs),
    /// Scheduler tools: replay a real trace through the pool scheduler.
    Sched(cli_sched::SchedArgs),
    /// Checkpoint a process and restore it (faas-snapshot).
    Snapshot(cli_snapshot::SnapshotArgs),
    /// Write the bundled example functions (hello, cpu) to a directory.
    ExampleFunctions {
        /// Directory to create them in (one subdirectory per function).
        #[arg(long)]
        out: PathBuf,
    },
}

#[derive(Subcommand)]
enum AliasAction {
    /// Delete an alias of a function (its versions stay).
    Rm {
        /// Function name.
        name: String,
        /// Alias.
        alias: String,
        #[command(flatten)]
        server: ServerArg,
    },
}

#[derive(Args)]
struct ServerArg {
    /// URL of the faas server.
    #[arg(long, env = "FAAS_SERVER", default_value = "http://127.0.0.1:8080")]
    server: String,
}

#[derive(Args)]
struct ServeArgs {
    /// Address to listen on (port 0 picks a free port).
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// `all`: gateway, scheduler and a local node in this process;
    /// `gateway`: no local node, nodes join over TCP on --node-listen.
    #[arg(long, default_value = "all", value_parser = ["all", "gateway"])]
    role: String,
    /// With --role gateway: the address node agents connect to [default:
    /// the --listen address with the next port, e.g. 127.0.0.1:8081].
    #[arg(long)]
    node_listen: Option<SocketAddr>,
    /// With --role gateway: the file of the cluster token that nodes must
    /// prove they know (created, mode 0600, if it does not exist) [default:
    /// STATE/cluster.token].
    #[arg(long, env = "FAAS_CLUSTER_TOKEN_FILE")]
    cluster_token_file: Option<PathBuf>,
    /// Where deployed functions are kept [default: $XDG_STATE_HOME/faas or ~/.local/state/faas].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Instance slots of the local node.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Largest request body in bytes.
    #[arg(long, default_value_t = 6 * 1024 * 1024)]
    max_body: usize,
    /// Do not copy the instances' stderr to this process's stderr (it is
    /// captured into each invocation's logs either way: `faas logs ID`).
    #[arg(long)]
    quiet_instances: bool,
    /// How instances run: `pooled` (namespaces, cgroups, seccomp; needs
    /// root), `process` (plain processes, NOT isolated, development only) or
    /// `auto` (pooled when root, else process).
    #[arg(long, default_value = "auto", value_parser = parse_sandbox)]
    sandbox: SandboxChoice,
    /// The Python interpreter of Python functions (a system path that the
    /// sandboxes' unprivileged uids can reach, not a shim under /root).
    #[arg(long, default_value = faas_platform::runtimes::DEFAULT_PYTHON)]
    python: PathBuf,
    /// The Node.js interpreter of Node functions.
    #[arg(long, default_value = faas_platform::runtimes::DEFAULT_NODE)]
    node: PathBuf,
    /// Do not snapshot Python functions at deploy: their instances start
    /// cold (snapshots need the pooled sandbox anyway).
    #[arg(long)]
    no_snapshots: bool,
    /// Let the kernel place instances on any CPU, instead of pinning each
    /// kept-alive one to a CPU and handing it the requests handled there,
    /// and per-request ones with short requests to the CPU that sends them
    /// their request (which saves a cross-CPU wake-up per request).
    #[arg(long)]
    no_pin_instances: bool,
}

#[derive(Args)]
struct NodeArgs {
    /// The gateway's node address (its --node-listen), HOST:PORT.
    #[arg(long)]
    join: String,
    /// The gateway's cluster token (a copy of its STATE/cluster.token,
    /// mode 0600): node and gateway each prove they know it.
    #[arg(long, env = "FAAS_CLUSTER_TOKEN_FILE")]
    cluster_token_file: PathBuf,
    /// This node's name (a-z, 0-9, '-', '_'); joining again under the same
    /// name replaces the old connection.
    #[arg(long)]
    name: String,
    /// Instance slots offered to the scheduler.
    #[arg(long, default_value_t = 64)]
    slots: u32,
    /// Memory offered for instances, in MiB [default: this machine's].
    #[arg(long)]
    memory_mb: Option<u64>,
    /// Where the node keeps its runtimes [default: the state directory of
    /// `faas serve` + /nodes/NAME].
    #[arg(long)]
    state_dir: Option<PathBuf>,
    /// Discard the instances' stderr instead of showing it.
    #[arg(long)]
    quiet_instances: bool,
    /// How instances run: pooled, process or auto (as for `faas serve`).
    #[arg(long, default_value = "auto", value_parser = parse_sandbox)]
    sandbox: SandboxChoice,
    /// The Python interpreter of Python functions.
    #[arg(long, default_value = faas_platform::runtimes::DEFAULT_PYTHON)]
    python: PathBuf,
    /// The Node.js interpreter of Node functions.
    #[arg(long, default_value = faas_platform::runtimes::DEFAULT_NODE)]
    node: PathBuf,
    /// Do not snapshot Python functions when the gateway asks this node to
    /// prepare a version.
    #[arg(long)]
    no_snapshots: bool,
    /// Fetch every function version from the gateway into STATE/cache,
    /// even when the gateway's state directory is visible here (versions
    /// that are not visible are always fetched).
    #[arg(long)]
    always_fetch: bool,
    /// Let the kernel place instances on any CPU, instead of pinning each
    /// kept-alive one to a CPU and handing it the requests handled there,
    /// and per-request ones with short requests to the CPU that sends them
    /// their request (which saves a cross-CPU wake-up per request).
    #[arg(long)]
    no_pin_instances: bool,
}

fn parse_sandbox(s: &str) -> Result<SandboxChoice, String> {
    match s {
        "auto" => Ok(SandboxChoice::Auto),
        "pooled" => Ok(SandboxChoice::Pooled),
        "process" => Ok(SandboxChoice::Process),
        _ => Err(format!(
            "unknown sandbox {s:?}: use auto, pooled or process"
        )),
    }
}

#[derive(Args)]
struct DeployArgs {
    /// Function name (a-z, 0-9, '-', '_').
    name: String,
    /// Directory holding the function's files; it is copied at deploy time.
    #[arg(long)]
    dir: PathBuf,
    /// How the code runs: native or exec (an executable), python or node
    /// (an AWS Lambda handler, run by the platform's runtime).
    #[arg(long, default_value = "native", value_parser = parse_runtime)]
    runtime: RuntimeKind,
    /// The executable inside --dir (native, exec), or the Lambda handler:
    /// MODULE.FUNCTION for python (lambda_function.lambda_handler), FILE.EXPORT
    /// for node (index.handler).
    #[arg(long)]
    handler: String,
    /// Invocation timeout in milliseconds.
    #[arg(long, default_value_t = 30_000)]
    timeout_ms: u64,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = 128)]
    memory_mb: u32,
    /// Most requests of this function in flight at once (beyond: 429).
    #[arg(long, default_value_t = 100)]
    max_instances: u32,
    /// Keep instances alive for this many milliseconds after a request
    /// instead of one fresh instance per request.
    #[arg(long)]
    keep_alive_ms: Option<u64>,
    /// Environment variable for the function, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = parse_env)]
    env: Vec<(String, String)>,
    /// How instances start once the runtime was snapshotted: restore (each
    /// restored from the snapshot), fork (each forked from a template of
    /// it, in one sandbox per function) or cold (no snapshot).
    #[arg(long, default_value = "restore", value_parser = parse_start)]
    start: StartMode,
    /// Serve this request body once at deploy, from the snapshot, to record
    /// the memory a request writes: instances restored ahead then have it
    /// in place (fewer page faults per request, ~0.3-0.5 ms for a Python
    /// hello). Your handler runs with it: leave it out if a request has
    /// side effects.
    #[arg(long, value_name = "BODY")]
    working_set_request: Option<String>,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct InvokeArgs {
    /// Function: NAME (latest version), NAME@VERSION or NAME@ALIAS.
    name: String,
    /// Request body.
    #[arg(long, conflicts_with = "file")]
    data: Option<String>,
    /// Read the request body from this file ('-' for stdin).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Print the response status and headers to stderr.
    #[arg(long, short = 'i')]
    include: bool,
    /// Run it in the background: print the invocation id at once (see
    /// `faas invocation ID` and `faas logs ID`).
    #[arg(long = "async")]
    run_async: bool,
    #[command(flatten)]
    server: ServerArg,
}

#[derive(Args)]
struct DemoArgs {
    /// Address to listen on.
    #[arg(long, default_value = "127.0.0.1:8080")]
    listen: SocketAddr,
    /// Cold invocations per function.
    #[arg(long, default_value_t = 300)]
    requests: usize,
    /// Stop after printing the table instead of serving until Ctrl-C.
    #[arg(long)]
    exit: bool,
}

fn parse_runtime(s: &str) -> Result<RuntimeKind, String> {
    match s {
        "native" => Ok(RuntimeKind::Native),
        "exec" => Ok(RuntimeKind::Exec),
        "python" => Ok(RuntimeKind::Python),
        "node" => Ok(RuntimeKind::Node),
        _ => Err(format!(
            "unknown runtime {s:?}: use native, exec, python or node"
        )),
    }
}

fn parse_start(s: &str) -> Result<StartMode, String> {
    match s {
        "restore" => Ok(StartMode::Restore),
        "fork" => Ok(StartMode::Fork),
        "cold" => Ok(StartMode::Cold),
        _ => Err(format!(
            "unknown start mode {s:?}: use restore, fork or cold"
        )),
    }
}

pub(crate) fn parse_env(s: &str) -> Result<(String, String), String> {
    s.split_once('=')
        .map(|(k, v)| (k.to_owned(), v.to_owned()))
        .ok_or_else(|| format!("{s:?} is not KEY=VALUE"))
}

fn main() {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_env("FAAS_LOG")
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn")),
        )
        .with_writer(std::io::stderr)
        .init();
    // The sandbox daemon's work is hand-offs and waits: one thread that
    // polls the reactor and runs every task wakes no other thread.
    let mut builder = match &cli.command {
        Command::Sandbox(a) if a.is_serve() => tokio::runtime::Builder::new_current_thread(),
        _ => tokio::runtime::Builder::new_multi_thread(),
    };
    let rt = match builder.enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("faas: cannot start the async runtime: {e}");
            std::process::exit(1);
        }
    };
    if let Err(e) = rt.block_on(run(cli)) {
        eprintln!("faas: {}", error_line(&e));
        std::process::exit(1);
    }
}

/// One line: the error and each cause its message does not already end
/// with (many errors print their source in their own message).
/// Where [`outln!`] goes when stdout fails.
pub(crate) fn output_failed(e: &std::io::Error) -> ! {
    if e.kind() == std::io::ErrorKind::BrokenPipe {
        std::process::exit(0);
    }
    eprintln!("faas: writing the output: {e}");
    std::process::exit(1)
}

pub(crate) fn error_line(e: &anyhow::Error) -> String {
    let mut line = String::new();
    for cause in e.chain() {
        let text = cause.to_string();
        if line.ends_with(&text) {
            continue;
        }
        if !line.is_empty() {
            line.push_str(": ");
        }
        line.push_str(&text);
    }
    line
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(a) => serve(a).await,
        Command::Node(a) => node(a).await,
        Command::Nodes { json, server } => nodes(&server.server, json).await,
        Command::Deploy(a) => deploy(a).await,
        Command::Invoke(a) => invoke(a).await,
        Command::Ls(s) => ls(&s.server).await,
        Command::Logs { id, server } => {
            let r = Client::new(&server.server)
                .expect_ok(
                    Method::GET,
                    &format!("/invocations/{id}/logs"),
                    Bytes::new(),
                )
                .await?;
            std::io::stdout().write_all(&r.body)?;
            Ok(())
        }
        Command::Invocation { id, server } => {
            let r = Client::new(&server.server)
                .expect_ok(Method::GET, &format!("/invocations/{id}"), Bytes::new())
                .await?;
            let v: serde_json::Value = serde_json::from_slice(&r.body)
                .context("server answered with an unexpected body")?;
            outln!("{}", serde_json::to_string_pretty(&v)?);
            Ok(())
        }
        Command::Alias {
            action:
                Some(AliasAction::Rm {
                    name,
                    alias,
                    server,
                }),
            ..
        } => {
            Client::new(&server.server)
                .expect_ok(
                    Method::DELETE,
                    &format!("/functions/{name}/aliases/{alias}"),
                    Bytes::new(),
                )
                .await?;
            outln!("deleted {name}@{alias}");
            Ok(())
        }
        Command::Alias {
            name: Some(name),
            alias: Some(alias),
            to_version: Some(version),
            server,
            action: None,
        } => {
            Client::new(&server.server)
                .expect_ok(
                    Method::POST,
                    &format!("/functions/{name}/aliases/{alias}"),
                    serde_json::to_vec(&serde_json::json!({ "version": version }))?,
                )
                .await?;
            outln!("{name}@{alias} -> version {version}");
            Ok(())
        }
        Command::Alias { .. } => bail!("give NAME ALIAS VERSION, or rm NAME ALIAS"),
        Command::Rm { name, server } => {
            Client::new(&server.server)
                .expect_ok(Method::DELETE, &format!("/functions/{name}"), Bytes::new())
                .await?;
            outln!("deleted {name}");
            Ok(())
        }
        Command::Demo(a) => demo(a).await,
        Command::Bench(a) => cli_bench::run(a).await,
        Command::Image(a) => cli_image::run(a),
        Command::Sched(a) => cli_sched::run(a),
        Command::Snapshot(a) => {
            let code = cli_snapshot::run(a)?;
            std::process::exit(code);
        }
        Command::Sandbox(a) => {
            let code = cli_sandbox::run(a).await?;
            std::process::exit(code);
        }
        Command::ExampleFunctions { out } => {
            for d in embedded::write_all(&out)
                .with_context(|| format!("writing to {}", out.display()))?
            {
                outln!("{}", d.display());
            }
            Ok(())
        }
    }
}

fn default_state_dir() -> PathBuf {
    if let Some(d) = std::env::var_os("XDG_STATE_HOME").filter(|d| !d.is_empty()) {
        return PathBuf::from(d).join("faas");
    }
    match std::env::var_os("HOME").filter(|d| !d.is_empty()) {
        Some(h) => PathBuf::from(h).join(".local/state/faas"),
        None => PathBuf::from("/var/lib/faas"),
    }
}

pub(crate) async fn shutdown_signal() {
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = term => {}
    }
}

async fn serve(a: ServeArgs) -> anyhow::Result<()> {
    let state_dir = a.state_dir.unwrap_or_else(default_state_dir);
    if a.role == "gateway" {
        let (token, token_file, created) =
            faas_platform::cluster::gateway_token(&state_dir, a.cluster_token_file.as_deref())?;
        let gw = faas_platform::cluster::Gateway::new(&state_dir, a.max_body, token)?;
        let node_addr = a
            .node_listen
            .unwrap_or_else(|| faas_platform::cluster::default_node_listen(a.listen));
        let (listener, addr) = Platform::bind(a.listen).await?;
        let (nodes, node_addr) = faas_platform::cluster::Gateway::bind_nodes(node_addr).await?;
        let join = if node_addr.ip().is_unspecified() {
            format!("GATEWAY-HOST:{}", node_addr.port())
        } else {
            node_addr.to_string()
        };
        // One write: a reader that stops after the first line does not
        // make a later line fail.
        let banner = format!(
            "faas: listening on http://{addr} (state in {}); nodes join on {node_addr}\n\
             faas: cluster token in {} ({}); copy it to each node (mode 0600) and run there:\n  \
             faas node --join {join} --name NAME --cluster-token-file {}\n\
             faas: node traffic is authenticated, not encrypted: keep the node port on a private network or a tunnel\n",
            state_dir.display(),
            token_file.display(),
            if created { "created now" } else { "existing" },
            token_file.display()
        );
        let mut out = std::io::stdout().lock();
        let _ = out.write_all(banner.as_bytes());
        let _ = out.flush();
        drop(out);
        gw.serve(listener, nodes, shutdown_signal()).await?;
        eprintln!("faas: stopped");
        return Ok(());
    }
    if a.node_listen.is_some() {
        bail!("--node-listen needs --role gateway");
    }
    if a.cluster_token_file.is_some() && std::env::var_os("FAAS_CLUSTER_TOKEN_FILE").is_none() {
        bail!("--cluster-token-file needs --role gateway");
    }
    let mut config = PlatformConfig::new(state_dir.clone());
    config.slots = a.slots;
    config.max_body = a.max_body;
    config.inherit_stderr = !a.quiet_instances;
    config.sandbox = a.sandbox;
    config.python = a.python;
    config.node = a.node;
    config.snapshots = !a.no_snapshots;
    config.pin_instances = !a.no_pin_instances;
    let platform = Platform::new(&config)?;
    let (listener, addr) = Platform::bind(a.listen).await?;
    outln!(
        "faas: listening on http://{addr} (state in {})",
        state_dir.display()
    );
    if platform.runtime == "process" {
        eprintln!(
            "faas: WARNING: instances run as plain processes (ProcessRuntime): not isolated, for development only"
        );
    }
    let _ = std::io::stdout().flush();
    platform.serve(listener, shutdown_signal()).await?;
    eprintln!("faas: stopped");
    Ok(())
}

async fn node(a: NodeArgs) -> anyhow::Result<()> {
    if !faas_core::types::valid_name(&a.name) {
        bail!(
            "node name {:?} is invalid: use 1-63 characters of a-z, 0-9, '-' and '_'",
            a.name
        );
    }
    let state_dir = a
        .state_dir
        .unwrap_or_else(|| default_state_dir().join("nodes").join(&a.name));
    let mut platform = PlatformConfig::new(state_dir);
    platform.slots = a.slots;
    platform.inherit_stderr = !a.quiet_instances;
    platform.sandbox = a.sandbox;
    platform.python = a.python;
    platform.node = a.node;
    platform.snapshots = !a.no_snapshots;
    platform.pin_instances = !a.no_pin_instances;
    let token = faas_gateway::cluster::ClusterToken::load(&a.cluster_token_file)?;
    let settings = faas_platform::cluster::NodeSettings {
        join: a.join,
        name: a.name,
        token,
        memory_mb: a.memory_mb.unwrap_or_else(faas_platform::machine_memory_mb),
        always_fetch: a.always_fetch,
        platform,
    };
    faas_platform::cluster::run_node(settings, shutdown_signal()).await?;
    eprintln!("faas node: stopped");
    Ok(())
}

async fn nodes(server: &str, json: bool) -> anyhow::Result<()> {
    let r = Client::new(server)
        .expect_ok(Method::GET, "/nodes", Bytes::new())
        .await?;
    if json {
        std::io::stdout().write_all(&r.body)?;
        outln!();
        return Ok(());
    }
    let nodes: Vec<faas_gateway::cluster::NodeView> =
        serde_json::from_slice(&r.body).context("server answered with an unexpected body")?;
    outln!(
        "{:<16} {:<22} {:<5} {:>6} {:>9} {:>9} {:>9} {:>7} {:>9}",
        "NAME",
        "ADDRESS",
        "STATE",
        "SLOTS",
        "MEMORY",
        "IN-FLIGHT",
        "SERVED",
        "FAILED",
        "HEARTBEAT"
    );
    for n in nodes {
        outln!(
            "{:<16} {:<22} {:<5} {:>6} {:>6}MiB {:>9} {:>9} {:>7} {:>7}ms{}",
            n.name,
            n.address,
            n.state,
            n.slots,
            n.memory_mb,
            n.in_flight,
            n.served,
            n.failed,
            n.heartbeat_age_ms,
            n.reason.map(|r| format!("  ({r})")).unwrap_or_default()
        );
    }
    Ok(())
}

async fn deploy(a: DeployArgs) -> anyhow::Result<()> {
    let dir = std::fs::canonicalize(&a.dir)
        .with_context(|| format!("function directory {}", a.dir.display()))?;
    let mut spec = FunctionSpec::new(&a.name, a.runtime, ImageRef::Dir(dir), &a.handler);
    spec.limits.timeout_ms = a.timeout_ms;
    spec.limits.memory_mb = a.memory_mb;
    spec.concurrency.max_instances = a.max_instances;
    if let Some(ms) = a.keep_alive_ms {
        spec.reuse = Reuse::KeepAlive { idle_ms: ms };
    }
    spec.env = a.env.into_iter().collect();
    spec.start_request = Some(a.start);
    spec.working_set_request = a.working_set_request;
    spec.validate()?;
    let body = serde_json::to_vec(&spec)?;
    let started = std::time::Instant::now();
    let client = Client::new(&a.server.server);
    let path = format!("/functions/{}", a.name);
    let put = client.expect_ok(Method::PUT, &path, body);
    tokio::pin!(put);
    // The server copies the files, builds the image and takes the snapshot
    // in this one request: show that it is working (on a terminal).
    let tty = std::io::stderr().is_terminal();
    let mut tick = tokio::time::interval(Duration::from_millis(100));
    let r = loop {
        tokio::select! {
            r = &mut put => break r,
            _ = tick.tick() => if tty && started.elapsed() > Duration::from_millis(300) {
                eprint!(
                    "\r  deploying {}: copying, building the image, snapshotting ... {:.1} s",
                    a.name,
                    started.elapsed().as_secs_f64()
                );
            },
        }
    };
    if tty && started.elapsed() > Duration::from_millis(300) {
        eprint!("\r\x1b[K");
    }
    let r = r?;
    let took = started.elapsed();
    let spec: FunctionSpec =
        serde_json::from_slice(&r.body).context("server answered with an unexpected body")?;
    let extra = serde_json::from_slice::<serde_json::Value>(&r.body).unwrap_or_default();
    let warnings: Vec<String> = extra
        .get("warnings")
        .and_then(|w| serde_json::from_value(w.clone()).ok())
        .unwrap_or_default();
    let steps: Vec<faas_gateway::Step> = extra
        .get("steps")
        .and_then(|w| serde_json::from_value(w.clone()).ok())
        .unwrap_or_default();
    for w in warnings {
        eprintln!("faas: warning: {w}");
    }
    for s in &steps {
        let detail = if s.detail.is_empty() {
            String::new()
        } else {
            format!(" ({})", s.detail)
        };
        outln!(
            "  {:<10} {:>9}{detail}",
            s.step,
            fmt_ms(Duration::from_micros(s.us))
        );
    }
    outln!(
        "deployed {} version {} (start: {}) in {}",
        spec.name,
        spec.version,
        spec.start.as_str(),
        fmt_ms(took)
    );
    Ok(())
}

async fn invoke(a: InvokeArgs) -> anyhow::Result<()> {
    let body: Vec<u8> = match (&a.data, &a.file) {
        (Some(d), _) => d.clone().into_bytes(),
        (None, Some(f)) if f == Path::new("-") => {
            let mut v = Vec::new();
            std::io::Read::read_to_end(&mut std::io::stdin(), &mut v).context("reading stdin")?;
            v
        }
        (None, Some(f)) => std::fs::read(f).with_context(|| format!("reading {}", f.display()))?,
        (None, None) => Vec::new(),
    };
    let route = if a.run_async {
        "invoke-async"
    } else {
        "invoke"
    };
    let r = Client::new(&a.server.server)
        .request(Method::POST, &format!("/{route}/{}", a.name), body)
        .await?;
    if a.include {
        eprintln!("{}", r.status);
        for (k, v) in &r.headers {
            eprintln!("{k}: {}", v.to_str().unwrap_or("<binary>"));
        }
    }
    if !r.status.is_success() {
        let id = r
            .headers
            .get("x-faas-invocation-id")
            .and_then(|v| v.to_str().ok())
            .map(|id| format!(" (invocation {id}: faas logs {id})"))
            .unwrap_or_default();
        bail!("{}: {} — {}{id}", a.name, r.status, r.error_message());
    }
    if a.run_async {
        let v: serde_json::Value =
            serde_json::from_slice(&r.body).context("server answered with an unexpected body")?;
        let id = v["id"]
            .as_str()
            .context("server answered without an invocation id")?;
        outln!("{id}");
        return Ok(());
    }
    let mut out = std::io::stdout();
    out.write_all(&r.body)?;
    if std::io::stdout().is_terminal() && !r.body.ends_with(b"\n") {
        out.write_all(b"\n")?;
    }
    Ok(())
}

async fn ls(server: &str) -> anyhow::Result<()> {
    let client = Client::new(server);
    let r = client
        .expect_ok(Method::GET, "/functions", Bytes::new())
        .await?;
    let fns: Vec<FunctionSpec> =
        serde_json::from_slice(&r.body).context("server answered with an unexpected body")?;
    outln!(
        "{:<24} {:>7}  {:<8} {:<8} {:<10} {:>9}  {:<24} ALIASES",
        "NAME",
        "VERSION",
        "RUNTIME",
        "START",
        "REUSE",
        "TIMEOUT",
        "HANDLER"
    );
    for f in fns {
        // Deleted meanwhile: no aliases.
        let aliases: std::collections::BTreeMap<String, u32> = match client
            .request(
                Method::GET,
                &format!("/functions/{}/aliases", f.name),
                Bytes::new(),
            )
            .await
        {
            Ok(r) if r.status.is_success() => serde_json::from_slice(&r.body)
                .context("server answered with an unexpected body")?,
            _ => Default::default(),
        };
        let aliases: Vec<String> = aliases.iter().map(|(a, v)| format!("{a}={v}")).collect();
        let reuse = match f.reuse {
            Reuse::PerRequest => "request".to_owned(),
            Reuse::KeepAlive { idle_ms } => format!("keep {}s", idle_ms / 1000),
        };
        outln!(
            "{:<24} {:>7}  {:<8} {:<8} {:<10} {:>8}s  {:<24} {}",
            f.name,
            f.version,
            f.runtime.as_str(),
            f.start.as_str(),
            reuse,
            f.limits.timeout_ms as f64 / 1000.0,
            f.handler,
            if aliases.is_empty() {
                "-".to_owned()
            } else {
                aliases.join(",")
            }
        );
    }
    Ok(())
}

/// An embedded platform on a private state directory, removed on drop.
struct Embedded {
    platform: Platform,
    state: PathBuf,
    functions: Vec<PathBuf>,
}

impl Embedded {
    fn start(quiet: bool) -> anyhow::Result<Self> {
        let state = std::env::temp_dir().join(format!("faas-embedded-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&state);
        let functions = embedded::write_all(&state.join("src"))
            .with_context(|| format!("writing the example functions to {}", state.display()))?;
        let mut config = PlatformConfig::new(state.join("state"));
        config.inherit_stderr = !quiet;
        Ok(Embedded {
            platform: Platform::new(&config)?,
            state,
            functions,
        })
    }
}

impl Drop for Embedded {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.state);
    }
}

async fn deploy_examples(client: &Client, dirs: &[PathBuf], reuse: Reuse) -> anyhow::Result<()> {
    for dir in dirs {
        let name = dir
            .file_name()
            .and_then(|n| n.to_str())
            .context("example function directory has no name")?;
        let mut spec =
            FunctionSpec::new(name, RuntimeKind::Native, ImageRef::Dir(dir.clone()), name);
        spec.reuse = reuse;
        client
            .expect_ok(Method::POST, "/functions", serde_json::to_vec(&spec)?)
            .await?;
    }
    Ok(())
}

fn fmt_ms(d: Duration) -> String {
    format!("{:.2} ms", d.as_secs_f64() * 1e3)
}

async fn demo(a: DemoArgs) -> anyhow::Result<()> {
    let emb = Embedded::start(true)?;
    let (listener, addr) = Platform::bind(a.listen).await?;
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let gateway = emb.platform.gateway.clone();
    let server = tokio::spawn(gateway.serve(listener, async {
        let _ = stop_rx.await;
    }));
    let base = format!("http://{addr}");
    let client = Client::new(&base);
    deploy_examples(&client, &emb.functions, Reuse::PerRequest).await?;
    let restored = emb
        .platform
        .gateway
        .registry()
        .list()
        .iter()
        .all(|s| s.start == StartMode::Restore);
    let how = match (emb.platform.runtime, restored) {
        ("process", _) => "a fresh plain process (not isolated): a cold start",
        (_, true) => {
            "a fresh sandbox (namespaces, cgroup, seccomp) with its instance restored from the function's snapshot"
        }
        (_, false) => "a fresh sandbox (namespaces, cgroup, seccomp): a cold start",
    };
    outln!("faas demo: platform on {base}; every request below gets {how}\n");
    let cases: [(&str, &[u8]); 2] = [("hello", b"hi"), ("cpu", b"200000")];
    let tty = std::io::stderr().is_terminal();
    let mut rows = Vec::new();
    for (name, body) in cases {
        let s = load::run(
            &client,
            name,
            Bytes::from_static(body),
            a.requests,
            1,
            |n| {
                if tty && (n % 10 == 0 || n == a.requests) {
                    eprint!("\r  {name}: {n}/{}", a.requests);
                }
            },
        )
        .await?;
        if tty {
            eprint!("\r\x1b[K");
        }
        rows.push((name, s));
    }
    outln!(
        "{:<8} {:>8} {:>7} {:>11} {:>11} {:>11}",
        "FUNCTION",
        "REQUESTS",
        "ERRORS",
        "P50",
        "P99",
        "MEAN"
    );
    for (name, s) in &rows {
        outln!(
            "{:<8} {:>8} {:>7} {:>11} {:>11} {:>11}",
            name,
            s.requests,
            s.errors,
            fmt_ms(s.p50),
            fmt_ms(s.p99),
            fmt_ms(s.mean)
        );
    }
    outln!(
        "\nTry it:\n  curl -X POST {base}/invoke/hello -d hi\n  curl -X POST {base}/invoke/cpu -d 1000000"
    );
    if !a.exit {
        outln!("\nServing until Ctrl-C.");
        shutdown_signal().await;
    }
    let _ = stop_tx.send(());
    server.await.context("server task")??;
    Ok(())
}
