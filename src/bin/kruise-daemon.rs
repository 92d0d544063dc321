//! kruise-daemon: the per-node agent. On a real node it serves that node (`NODE_NAME`); in
//! simulated mode one process serves every kwok node matching a label selector, so load tests can
//! drive thousands of fake nodes. This binary tracks the nodes it serves and exposes /metrics and
//! /healthz; the probe and image-pull agents attach to those nodes.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::Parser;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Node;
use kube::Api;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use ractor::Actor;

use kruise::api::nodepodprobe::NodePodProbe;
use prometheus::IntGauge;

use kruise::api::nodeimage::NodeImage;
use kruise::daemon::cri::CriRuntime;
use kruise::daemon::imagepull::puller::PullMetrics;
use kruise::daemon::imagepull::supervisor::{
    ImagePullers, ImageRuntimeFor, PullContext, PullSupervisor, PullSupervisorArgs,
};
use kruise::daemon::node_agents::{AgentArgsFor, follow_node_objects};
use kruise::daemon::podprobe::agent::{AgentArgs, AgentContext, NodeAgent, ProbeMetrics, ProbeSupervisor};
use kruise::daemon::runtime::{ContainerRuntime, ImageRuntime};
use kruise::daemon::simulated::{SimulatedImages, SimulatedRuntime};
use kruise::features::{self, FeatureGates};
use kruise::runtime::api_writer::{ApiWriter, WriterArgs, WriterMetrics};
use kruise::runtime::client::{self, ClientMetrics};
use kruise::runtime::flag_values::{parse_duration, parse_listen_addr};
use kruise::runtime::http::{self, Readiness};
use kruise::runtime::metrics::MetricsRegistry;
use kruise::runtime::supervisor::API_WRITER;

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
    /// The host's /var/run, where the CRI sockets are looked for (upstream mounts it here).
    #[arg(long, default_value = "/hostvarrun")]
    host_var_run: std::path::PathBuf,
    /// The CRI socket under --host-var-run (e.g. `containerd/containerd.sock`); by default the
    /// known sockets are tried in order.
    #[arg(long)]
    socket_file: Option<String>,
    /// How often at most a node's NodePodProbe status is written (results in between are batched).
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    probe_status_flush_interval: Duration,
    /// How long a change of a node's pulls waits for more before its NodeImage status is written.
    #[arg(long, default_value = "500ms", value_parser = parse_duration)]
    image_status_flush_interval: Duration,
    /// Images pulled at once per node (the rest report Waiting); 0 or less: no limit. Upstream's
    /// default is no limit; pulling many images at once only splits the node's bandwidth.
    #[arg(long, default_value_t = 4, allow_negative_numbers = true)]
    max_workers_for_pull_image: i64,
    /// How long a simulated pull takes (a node's `images.sim.kruise.io/script` may say otherwise).
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    simulated_pull_time: Duration,
    /// API writes per second this process may make.
    #[arg(long, default_value_t = 50.0)]
    kube_api_qps: f64,
    /// Writes this process may make at once above the rate.
    #[arg(long, default_value_t = 100)]
    kube_api_burst: u32,
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
    http::serve(flags.addr, http::router(registry.clone(), ready.clone())).await?;

    let (store, writer) = reflector::store::<Node>();
    let nodes = reflector(writer, watcher(Api::<Node>::all(client.clone()), watch_config))
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

    if flags.feature_gates.enabled(features::KRUISE_DAEMON) {
        start_agents(&flags, &client, &registry, store.clone()).await?;
    }

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

/// The node agents: probes (PodProbeMarkerGate) and image pulls, each fed its node objects,
/// writing through one ApiWriter.
async fn start_agents(
    flags: &Flags,
    client: &kube::Client,
    registry: &MetricsRegistry,
    nodes: reflector::Store<Node>,
) -> anyhow::Result<()> {
    kruise::runtime::api_writer::check_rate_limit(flags.kube_api_qps, flags.kube_api_burst)?;
    let writer = WriterArgs {
        client: client.clone(),
        qps: flags.kube_api_qps,
        burst: flags.kube_api_burst,
        max_in_flight: 32,
        metrics: WriterMetrics::register(registry)?,
    };
    Actor::spawn(Some(API_WRITER.into()), ApiWriter, writer).await.context("starting the API writer")?;
    let cri = if flags.simulated {
        None
    } else {
        let (socket, cri) = CriRuntime::discover(&flags.host_var_run, flags.socket_file.as_deref())
            .await
            .context("connecting to the node's container runtime")?;
        tracing::info!(socket = %socket.display(), "using the node's container runtime");
        Some(Arc::new(cri))
    };
    let served = {
        let store = nodes.clone();
        let own = flags.node_name.clone().filter(|_| !flags.simulated);
        move |node: &str| match &own {
            Some(n) => n == node,
            None => store.get(&ObjectRef::new(node)).is_some(),
        }
    };
    let field_selector = flags.node_name.as_ref().filter(|_| !flags.simulated).map(|n| format!("metadata.name={n}"));

    if flags.feature_gates.enabled(features::POD_PROBE_MARKER_GATE) {
        let runtime: Arc<dyn ContainerRuntime> = match &cri {
            Some(cri) => cri.clone(),
            None => Arc::new(SimulatedRuntime::watch(client, None)),
        };
        let ctx = AgentContext {
            runtime,
            metrics: ProbeMetrics::register(registry)?,
            flush_interval: flags.probe_status_flush_interval,
            started: Instant::now(),
        };
        let args: AgentArgsFor<NodeAgent> =
            Arc::new(move |node| AgentArgs { node: node.to_string(), ctx: ctx.clone() });
        let (probes, _) =
            Actor::spawn(Some("probe-supervisor".into()), ProbeSupervisor::new(NodeAgent, "probes"), args)
                .await
                .context("starting the probe supervisor")?;
        let served = served.clone();
        tokio::spawn(follow_node_objects::<NodePodProbe>(client.clone(), field_selector.clone(), probes, served));
        tracing::info!("probing for PodProbeMarkers");
    }

    let runtime_for: ImageRuntimeFor = match cri {
        Some(cri) => Arc::new(move |_: &str| -> Arc<dyn ImageRuntime> { cri.clone() }),
        None => {
            let images = SimulatedImages::new(nodes, flags.simulated_pull_time);
            Arc::new(move |node: &str| -> Arc<dyn ImageRuntime> { Arc::new(images.node(node)) })
        }
    };
    let ctx = PullContext {
        runtime_for,
        secrets: Some(client.clone()),
        metrics: PullMetrics::register(registry)?,
        flush_interval: flags.image_status_flush_interval,
        max_workers: usize::try_from(flags.max_workers_for_pull_image).unwrap_or(0),
    };
    let args: AgentArgsFor<PullSupervisor> =
        Arc::new(move |node| PullSupervisorArgs { node: node.to_string(), ctx: ctx.clone() });
    let (pullers, _) =
        Actor::spawn(Some("image-pullers".into()), ImagePullers::new(PullSupervisor, "image pulls"), args)
            .await
            .context("starting the image pullers")?;
    tokio::spawn(follow_node_objects::<NodeImage>(client.clone(), field_selector, pullers, served));
    tracing::info!("pulling images for NodeImages");
    Ok(())
}
