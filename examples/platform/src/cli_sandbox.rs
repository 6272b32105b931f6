//! `faas sandbox run`: one command in a sandbox of the platform's runtime.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Args, Subcommand};
use faas_core::protocol::channel_pair;
use faas_core::{
    ExitStatus, ImageRef, Limits, SandboxPolicy, SandboxRuntime, SandboxSpec, StartMode, Stdio,
};
use faas_sandbox::{PooledSandboxRuntime, SandboxConfig};

/// `faas sandbox ...`
#[derive(Args)]
pub(crate) struct SandboxArgs {
    #[command(subcommand)]
    command: SandboxCommand,
}

#[derive(Subcommand)]
enum SandboxCommand {
    /// Run CMD inside a fresh sandbox; stdio passes through and the exit
    /// status is CMD's (128+signal when it was killed).
    Run(RunArgs),
}

#[derive(Args)]
struct RunArgs {
    /// Root: a directory (bound read-only) or an EROFS image file
    /// [default: the host's / read-only, without its /proc, /sys, /dev].
    #[arg(long)]
    root: Option<PathBuf>,
    /// Memory limit in MiB.
    #[arg(long, default_value_t = 256)]
    memory: u32,
    /// Process limit.
    #[arg(long, default_value_t = 64)]
    pids: u32,
    /// CPU limit in milli-CPUs.
    #[arg(long, default_value_t = 1000)]
    cpu: u32,
    /// Wall-clock limit in seconds; then every process inside is killed.
    #[arg(long)]
    timeout: Option<f64>,
    /// Seccomp profile: native, python, node or a JSON file.
    #[arg(long, default_value = "native")]
    seccomp: String,
    /// Mount a procfs of the sandbox's own pid namespace at /proc.
    #[arg(long)]
    proc: bool,
    /// No cgroup: no memory, pids or CPU limit (like bubblewrap). Moving a
    /// process into a cgroup v1 memory cgroup costs an RCU grace period.
    #[arg(long, conflicts_with_all = ["memory", "pids", "cpu"])]
    no_cgroups: bool,
    /// Environment variable, KEY=VALUE (repeatable).
    #[arg(long = "env", value_parser = crate::parse_env)]
    env: Vec<(String, String)>,
    /// The command and its arguments.
    #[arg(last = true, required = true)]
    cmd: Vec<String>,
}

/// Runs `faas sandbox ...`; returns the exit code to exit with.
pub(crate) async fn run(a: SandboxArgs) -> anyhow::Result<i32> {
    match a.command {
        SandboxCommand::Run(r) => run_one(r).await,
    }
}

const PATH: &str = "/usr/local/bin:/usr/bin:/bin";

/// Resolves `cmd` like a shell would, inside `root`.
fn resolve(root: &Path, cmd: &str) -> anyhow::Result<PathBuf> {
    if cmd.contains('/') {
        return Ok(PathBuf::from(cmd));
    }
    for dir in PATH.split(':') {
        let p = Path::new(dir).join(cmd);
        if root.join(p.strip_prefix("/").unwrap_or(&p)).is_file() {
            return Ok(p);
        }
    }
    bail!(
        "{cmd}: not found in {PATH} inside the root {}",
        root.display()
    )
}

async fn run_one(a: RunArgs) -> anyhow::Result<i32> {
    let root = match &a.root {
        None => ImageRef::Dir("/".into()),
        Some(p) if p.is_dir() => ImageRef::Dir(
            std::fs::canonicalize(p).with_context(|| format!("root {}", p.display()))?,
        ),
        Some(p) if p.is_file() => ImageRef::Image(
            std::fs::canonicalize(p).with_context(|| format!("root {}", p.display()))?,
        ),
        Some(p) => bail!("root {}: no such directory or image file", p.display()),
    };
    let program = resolve(root.path(), &a.cmd[0])?;
    let rt = PooledSandboxRuntime::new(SandboxConfig {
        // One sandbox: nothing to pool.
        netns_pool: 0,
        cgroup_pool: 0,
        parked: 0,
        keepers: 1,
        cgroups: !a.no_cgroups,
        ..SandboxConfig::default()
    })?;
    let (_ours, theirs) = channel_pair()?;
    let mut env = vec![
        ("PATH".to_owned(), PATH.to_owned()),
        ("HOME".to_owned(), "/tmp".to_owned()),
    ];
    env.extend(a.env);
    let spec = SandboxSpec {
        name: "sandbox-run".into(),
        root,
        program,
        args: a.cmd[1..].to_vec(),
        env,
        limits: Limits {
            memory_mb: a.memory,
            cpu_millis: a.cpu,
            pids: a.pids,
            timeout_ms: a.timeout.map_or(0, |t| (t * 1000.0) as u64),
        },
        start: StartMode::Cold,
        snapshot: None,
        policy: SandboxPolicy {
            seccomp: Some(a.seccomp),
            proc: a.proc,
            ..SandboxPolicy::default()
        },
        channel: theirs,
        stdin: Stdio::Inherit,
        stdout: Stdio::Inherit,
        stderr: Stdio::Inherit,
    };
    let mut inst = rt.launch(spec).await?;
    let status = match a.timeout {
        Some(t) => match tokio::time::timeout(Duration::from_secs_f64(t), inst.wait()).await {
            Ok(s) => s?,
            Err(_) => {
                inst.kill()?;
                let s = inst.wait().await?;
                eprintln!(
                    "faas: timeout of {t} s reached: every process in the sandbox was killed"
                );
                s
            }
        },
        None => inst.wait().await?,
    };
    if let Some(limit) = inst.exceeded() {
        eprintln!("faas: {limit}");
    }
    Ok(match status {
        ExitStatus::Code(c) => c,
        ExitStatus::Signal(s) => 128 + s,
    })
}
