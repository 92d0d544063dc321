//! `kruise-dev`: a local Kubernetes control plane for people, the same one the tests use.
//!
//! ```text
//! kruise-dev up [--nodes N]   start etcd, kube-apiserver, controller-manager, scheduler, kwok + N nodes
//! kruise-dev status           what is running, and the kubeconfig
//! kruise-dev env              shell exports: KUBECONFIG and a PATH with the matching kubectl
//! kruise-dev down             stop everything and delete the cluster's data
//! ```
//! The cluster lives in `target/dev-cluster/` (`--dir` to change); its kubeconfig is
//! `target/dev-cluster/kubeconfig`.

// Shared with the integration tests, which use parts this binary does not.
#[allow(dead_code, unused_imports)]
#[path = "mod.rs"]
mod cluster;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use serde::{Deserialize, Serialize};

use cluster::process::{pid_alive, terminate_pid};
use cluster::{ControlPlane, ControlPlaneConfig, Lifetime};

#[derive(Parser)]
#[command(name = "kruise-dev", about = "Run a local Kubernetes control plane (etcd, apiserver, kwok) for kruise-rs")]
struct Cli {
    /// Where the cluster keeps its data, certificates, logs and kubeconfig.
    #[arg(long, global = true, default_value_os_t = cluster::repo_root().join("target/dev-cluster"))]
    dir: PathBuf,
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start the cluster in the background (no-op if it is already up).
    Up {
        /// Number of kwok nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// kube-apiserver port on 127.0.0.1.
        #[arg(long, default_value_t = 16443)]
        port: u16,
        /// kube-apiserver feature gates (comma-separated), e.g. ShardedListAndWatch=false.
        #[arg(long, default_value = "ShardedListAndWatch=true")]
        feature_gates: String,
    },
    /// Stop the cluster and delete its data.
    Down,
    /// Show the cluster's processes and kubeconfig.
    Status,
    /// Print `export` lines for a shell: `eval "$(kruise-dev env)"`.
    Env,
}

/// What `up` leaves behind for `down` and `status`.
#[derive(Serialize, Deserialize)]
struct State {
    server: String,
    kubeconfig: PathBuf,
    bin_dir: PathBuf,
    components: Vec<(String, u32)>,
}

fn state_path(dir: &Path) -> PathBuf {
    dir.join("state.json")
}

fn read_state(dir: &Path) -> anyhow::Result<Option<State>> {
    let p = state_path(dir);
    if !p.exists() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(&p).with_context(|| format!("reading {}", p.display()))?;
    Ok(Some(serde_json::from_str(&text).with_context(|| format!("parsing {}", p.display()))?))
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    // The readiness poll meets 500s while the API server starts; the client logs each as an error.
    kruise::runtime::logging::init("info,kube_client::client::builder=off");
    let cli = Cli::parse();
    match cli.command {
        Cmd::Up { nodes, port, feature_gates } => up(&cli.dir, nodes, port, &feature_gates).await,
        Cmd::Down => down(&cli.dir),
        Cmd::Status => status(&cli.dir),
        Cmd::Env => {
            let state = read_state(&cli.dir)?.context("the dev cluster is not up: run `kruise-dev up`")?;
            println!("export KUBECONFIG={}", state.kubeconfig.display());
            println!("export PATH={}:$PATH", state.bin_dir.display());
            Ok(())
        }
    }
}

async fn up(dir: &Path, nodes: usize, port: u16, feature_gates: &str) -> anyhow::Result<()> {
    if let Some(state) = read_state(dir)? {
        if state.components.iter().all(|(_, pid)| pid_alive(*pid)) {
            eprintln!("dev cluster already up at {}", state.server);
            println!("{}", state.kubeconfig.display());
            return Ok(());
        }
        eprintln!("found a dev cluster that is partly or wholly gone; replacing it");
        down(dir)?;
    } else if dir.exists() {
        std::fs::remove_dir_all(dir).with_context(|| format!("removing stale {}", dir.display()))?;
    }
    let bin_dir = cluster::ensure_binaries()?;
    let config = ControlPlaneConfig {
        name: "dev".into(),
        nodes,
        feature_gates: feature_gates.split(',').filter(|s| !s.is_empty()).map(String::from).collect(),
        lifetime: Lifetime::Detached,
        dir: Some(dir.to_path_buf()),
        apiserver_port: Some(port),
        startup_timeout: Duration::from_secs(180),
        ..Default::default()
    };
    let cp = ControlPlane::start(config).await.context("starting the dev cluster")?;
    let kubeconfig = dir.join("kubeconfig");
    std::fs::copy(cp.admin_kubeconfig(), &kubeconfig).context("writing the kubeconfig")?;
    let server = cp.server().to_string();
    let state = State { server: server.clone(), kubeconfig: kubeconfig.clone(), bin_dir, components: cp.detach() };
    std::fs::write(state_path(dir), serde_json::to_string_pretty(&state)?).context("writing state.json")?;
    eprintln!("dev cluster up at {server} with {nodes} kwok nodes; logs in {}", dir.join("logs").display());
    eprintln!("use it with: export KUBECONFIG={}", kubeconfig.display());
    println!("{}", kubeconfig.display());
    Ok(())
}

fn down(dir: &Path) -> anyhow::Result<()> {
    let Some(state) = read_state(dir)? else {
        eprintln!("no dev cluster in {}", dir.display());
        return Ok(());
    };
    for (name, pid) in state.components.iter().rev() {
        if pid_alive(*pid) {
            eprintln!("stopping {name} ({pid})");
            terminate_pid(*pid, Duration::from_secs(5));
        }
    }
    std::fs::remove_dir_all(dir).with_context(|| format!("removing {}", dir.display()))?;
    eprintln!("dev cluster down");
    Ok(())
}

fn status(dir: &Path) -> anyhow::Result<()> {
    let Some(state) = read_state(dir)? else { bail!("no dev cluster in {}", dir.display()) };
    println!("server:     {}", state.server);
    println!("kubeconfig: {}", state.kubeconfig.display());
    for (name, pid) in &state.components {
        println!("{name:<24} pid {pid:<8} {}", if pid_alive(*pid) { "running" } else { "GONE" });
    }
    if state.components.iter().any(|(_, pid)| !pid_alive(*pid)) {
        bail!("some components are gone; logs are in {}", dir.join("logs").display());
    }
    Ok(())
}
