//! kruise-daemon: the per-node agent. On a real node it serves that node (`NODE_NAME`); in
//! simulated mode one process serves every kwok node matching a label selector, so load tests can
//! drive thousands of fake nodes. This binary tracks the nodes it serves and exposes /metrics and
//! /healthz; the probe and image-pull agents attach to those nodes.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use prometheus::IntGauge;

use kruise::features::FeatureGates;
use kruise::runtime::client::{self, ClientMetrics};
use kruise::runtime::flag_values::parse_listen_addr;
use kruise::runtime::http::{self, Readiness};
use kruise::runtime::metrics::MetricsRegistry;

#[derive(Parser, Debug)]
#[command(name = "kruise-daemon", version, about = "kruise-rs node daemon")]
struct Flags {
    /// Path to a kubeconfig; by default in-cluster config, then KUBECONFIG, then ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Address for /metrics and /healthz.
    #[arg(long, default_value = ":10221", value_parser = parse_listen_addr)]
    addr: SocketAddr,
    /// The node this daemon serves (required unless --simulated).
    #[arg(long, env = "NODE_NAME")]
    node_name: Option<String>,
    /// Feature gates, as kruise-manager's (`Name=true|false,...`).
    #[arg(long, default_value = "")]
    feature_gates: FeatureGates,
    /// Serve every node matching --simulated-node-selector from this one process (kwok nodes).
    #[arg(long)]
    simulated: bool,
    /// Label selector for the nodes served in simulated mode.
    #[arg(long, default_value = "type=kwok")]
    simulated_node_selector: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kruise::runtime::logging::init("info");
    let flags = Flags::parse();
    let watch_config = match (&flags.node_name, flags.simulated) {
        (_, true) => watcher::Config::default().labels(&flags.simulated_node_selector),
        (Some(node), false) if !node.is_empty() => watcher::Config::default().fields(&format!("metadata.name={node}")),
        _ => bail!("NODE_NAME (or --node-name) is required unless --simulated is set"),
    };
    let registry = MetricsRegistry::new();
    let config = client::load_config(flags.kubeconfig.as_deref()).await.context("loading the Kubernetes config")?;
    let client_metrics = ClientMetrics::register(&registry, &client::host_of(&config))?;
    let client = client::counted_client(config, &client_metrics).context("building the client")?;
    let nodes_served = IntGauge::new("kruise_daemon_nodes_served", "Nodes this daemon process serves")?;
    registry.register(&nodes_served)?;
    let ready = Readiness::default();
    let node_cache = ready.condition("node-cache");
    http::serve(flags.addr, http::router(registry, ready.clone())).await?;

    let (store, writer) = reflector::store::<Node>();
    let nodes = reflector(writer, watcher(Api::<Node>::all(client), watch_config))
        .default_backoff()
        .touched_objects()
        .for_each(|r| async move {
            if let Err(e) = r {
                tracing::warn!(error = %e, "node watch error; retrying");
            }
        });
    tokio::spawn(nodes);
    store.wait_until_ready().await.context("waiting for the node cache")?;
    node_cache.set();
    tracing::info!(
        simulated = flags.simulated,
        nodes = store.len(),
        feature_gates = ?flags.feature_gates.changed(),
        "kruise-daemon serving"
    );

    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => nodes_served.set(store.len() as i64),
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
    }
    tracing::info!("kruise-daemon stopped");
    Ok(())
}
