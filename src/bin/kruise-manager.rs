//! kruise-manager: parses flags, starts the actor tree and the HTTP endpoints, and on SIGTERM or
//! SIGINT releases its shards before exiting.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use ractor::Actor;

use kruise::controllers::demo::{DemoResource, DemoStamper};
use kruise::features::{self, FeatureGates};
use kruise::runtime::api_writer::{WriterArgs, WriterMetrics};
use kruise::runtime::client::{self, ClientMetrics};
use kruise::runtime::flag_values::{parse_duration, parse_listen_addr};
use kruise::runtime::http::{self, Readiness};
use kruise::runtime::lease::{LeaseStore, LeaseTimings};
use kruise::runtime::metrics::{MetricsRegistry, ShardMetrics};
use kruise::runtime::namespace_actor::{NamespaceArgs, ReconcileMetrics, Reconciler};
use kruise::runtime::object_store::ObjectStore;
use kruise::runtime::ownership::{Leadership, ShardOwnership};
use kruise::runtime::shard::ShardSpace;
use kruise::runtime::shard_coordinator::{CoordinatorArgs, RELEASE_TIMEOUT};
use kruise::runtime::sharded_watch::WatchMetrics;
use kruise::runtime::supervisor::{ManagerArgs, ManagerSupervisor, SupervisorMsg};
use kruise::runtime::watch_hub::HubArgs;
use kruise::runtime::work_queue::{Backoff, WorkQueueMetrics};

/// Flags follow upstream kruise-manager's names and defaults where it has them.
#[derive(Parser, Debug)]
#[command(name = "kruise-manager", version, about = "kruise-rs controller manager (one of several replicas)")]
struct Flags {
    #[command(subcommand)]
    command: Option<Command>,
    /// Path to a kubeconfig; by default in-cluster config, then KUBECONFIG, then ~/.kube/config.
    #[arg(long)]
    kubeconfig: Option<std::path::PathBuf>,
    /// Address for /metrics.
    #[arg(long, default_value = ":8080", value_parser = parse_listen_addr)]
    metrics_addr: SocketAddr,
    /// Address for /healthz and /readyz.
    #[arg(long, default_value = ":8000", value_parser = parse_listen_addr)]
    health_probe_addr: SocketAddr,
    /// Watch and reconcile only this namespace (empty: all namespaces).
    #[arg(long, default_value = "")]
    namespace: String,
    /// Namespace of the shard and membership leases.
    #[arg(long, env = "POD_NAMESPACE", default_value = "kruise-system")]
    leader_election_namespace: String,
    /// This replica's identity in leases; the pod name in a cluster.
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,
    /// Virtual shards the work is cut into. Fixed per installation: every replica must agree.
    #[arg(long, default_value_t = 32)]
    shards: u32,
    /// How long a lease stays valid without renewal.
    #[arg(long, default_value = "15s", value_parser = parse_duration)]
    leader_election_lease_duration: Duration,
    /// A replica stops acting on a shard when it could not renew it for this long.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    leader_election_renew_deadline: Duration,
    /// How often leases are renewed and free shards looked for.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    leader_election_retry_period: Duration,
    /// API writes per second this replica may make (upstream: --rest-config-qps).
    #[arg(long, alias = "rest-config-qps", default_value_t = 30.0)]
    kube_api_qps: f64,
    /// Writes this replica may make at once above the rate (upstream: --rest-config-burst).
    #[arg(long, alias = "rest-config-burst", default_value_t = 50)]
    kube_api_burst: u32,
    /// Writes this replica keeps on the wire at once; more wait (and coalesce) until one returns.
    #[arg(long, default_value_t = 32)]
    kube_api_max_in_flight: usize,
    /// Run the demo controller (stamps ConfigMaps labelled kruise.io/demo=true), which proves the
    /// sharded runtime end to end.
    #[arg(long)]
    demo_controller: bool,
    /// The objects the demo controller stamps (a label selector).
    #[arg(long, default_value_t = kruise::controllers::demo::default_selector())]
    demo_selector: String,
    /// The kind of object the demo controller stamps.
    #[arg(long, value_enum, default_value = "configmaps")]
    demo_resource: DemoResource,
    /// Feature gates, `Name=true|false,...` (upstream's names; `AllAlpha`/`AllBeta` accepted).
    #[arg(long, default_value = "")]
    feature_gates: FeatureGates,
    /// HTTPS port of the admission webhooks (0: any free port).
    #[arg(long, env = "WEBHOOK_PORT", default_value_t = 9876)]
    webhook_port: u16,
    /// Out of cluster: the API server calls the webhooks at https://<host>:<port> (an IP or a
    /// name) instead of through the Service.
    #[arg(long, env = "WEBHOOK_HOST")]
    webhook_host: Option<String>,
    /// The Secret holding the webhook certificates (shared by all replicas).
    #[arg(long, env = "SECRET_NAME", default_value = "kruise-webhook-certs")]
    webhook_secret_name: String,
    /// The Service in front of the webhooks.
    #[arg(long, env = "SERVICE_NAME", default_value = "kruise-webhook-service")]
    webhook_service_name: String,
    /// Controllers to run, as kube-controller-manager's flag: `*` all, `name` one, `-name` not
    /// that one (e.g. `*,-sidecarset`). Known: sidecarset, podprobemarker (with nodepodprobe), imagepulljob (with nodeimage). (The demo controller has its own flag.)
    #[arg(long, value_delimiter = ',', default_value = "*")]
    controllers: Vec<String>,
    /// How long a node must have been Ready before it gets a NodeImage.
    #[arg(long, default_value = "30s", value_parser = parse_duration)]
    nodeimage_creation_delay: Duration,
    /// How long a NodeImage tag may go unanswered by its node's daemon before the manager fails it,
    /// so jobs never hang on a node without a daemon.
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    nodeimage_response_timeout: Duration,
    /// Reconciles running at once per namespace.
    #[arg(long, default_value_t = 3)]
    namespace_concurrency: usize,
}

#[derive(clap::Subcommand, Debug)]
enum Command {
    /// Writes the chart's webhook configurations template (generated from the code).
    ChartWebhooks,
    /// Print the CRD manifests generated from the API types, or write one file per CRD.
    Crds {
        /// Directory to write `<group>_<plural>.yaml` files into (e.g. deploy/helm/kruise/crds).
        #[arg(long)]
        out: Option<std::path::PathBuf>,
    },
    /// Print the admission webhook configurations (pointing at the Service, placeholder CA) that
    /// a running manager keeps up to date.
    WebhookConfigurations {
        /// The namespace of the webhook Service.
        #[arg(long, env = "POD_NAMESPACE", default_value = "kruise-system")]
        namespace: String,
        #[arg(long, env = "SERVICE_NAME", default_value = "kruise-webhook-service")]
        service: String,
    },
}

/// `kruise-manager crds`: the CRDs as YAML, to stdout or as files.
fn write_crds(out: Option<&std::path::Path>) -> anyhow::Result<()> {
    for crd in kruise::api::crds() {
        let yaml = kruise::api::crd_yaml(&crd)?;
        match out {
            Some(dir) => {
                let path = dir.join(kruise::api::crd_file_name(&crd));
                std::fs::write(&path, yaml).with_context(|| format!("writing {}", path.display()))?;
                eprintln!("wrote {}", path.display());
            }
            None => print!("---\n{yaml}"),
        }
    }
    Ok(())
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").ok().filter(|h| !h.is_empty()).unwrap_or_else(|| "kruise-manager".into());
    format!("{host}-{}", std::process::id())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    kruise::runtime::logging::init("info");
    let flags = Flags::parse();
    match &flags.command {
        Some(Command::Crds { out }) => return write_crds(out.as_deref()),
        Some(Command::ChartWebhooks) => {
            let path = kruise::webhook::configuration::CHART_WEBHOOKS_TEMPLATE;
            std::fs::write(path, kruise::webhook::configuration::chart_template()?)
                .with_context(|| format!("writing {path} (run from the repository root)"))?;
            eprintln!("wrote {path}");
            return Ok(());
        }
        Some(Command::WebhookConfigurations { namespace, service }) => {
            let (m, v) = kruise::webhook::configuration::configurations(namespace, service);
            print!("---\n{}---\n{}", serde_norway::to_string(&m)?, serde_norway::to_string(&v)?);
            return Ok(());
        }
        None => {}
    }
    let space = ShardSpace::new(flags.shards)?;
    let timings = LeaseTimings {
        lease_duration: flags.leader_election_lease_duration,
        renew_deadline: flags.leader_election_renew_deadline,
        retry_period: flags.leader_election_retry_period,
    }
    .validate()?;
    kruise::runtime::api_writer::check_rate_limit(flags.kube_api_qps, flags.kube_api_burst)?;
    let identity = flags.identity.clone().unwrap_or_else(default_identity);
    let registry = MetricsRegistry::new();
    let config = client::load_config(flags.kubeconfig.as_deref()).await.context("loading the Kubernetes config")?;
    let client_metrics = ClientMetrics::register(&registry, &client::host_of(&config))?;
    let client = client::counted_client(config.clone(), &client_metrics).context("building the client")?;
    // Leases get a connection pool of their own, so renewals never queue behind a burst of writes.
    let lease_client = client::counted_client(config, &client_metrics).context("building the lease client")?;
    let metrics = ShardMetrics::register(&registry)?;
    let writer_metrics = WriterMetrics::register(&registry)?;
    let reconcile_metrics = ReconcileMetrics::register(&registry)?;
    let queue_metrics = WorkQueueMetrics::register(&registry)?;
    let watch_metrics = WatchMetrics::register(&registry)?;
    let ready = Readiness::default();
    let leases_ready = ready.condition("shard-leases");
    let webhook_ready = ready.condition("webhook");
    let webhook_caches = ready.condition("webhook-caches");
    let caches_ready = ready.condition("caches");
    let ownership = ShardOwnership::default();
    http::serve(flags.metrics_addr, http::router(registry.clone(), ready.clone())).await?;
    if flags.health_probe_addr != flags.metrics_addr {
        http::serve(flags.health_probe_addr, http::router(registry.clone(), ready.clone())).await?;
    }

    let writer = WriterArgs {
        client: client.clone(),
        qps: flags.kube_api_qps,
        burst: flags.kube_api_burst,
        max_in_flight: flags.kube_api_max_in_flight,
        metrics: writer_metrics,
    };
    // Controllers, each with the resources it watches.
    let mut reconcilers: HashMap<&'static str, Arc<dyn Reconciler>> = HashMap::new();
    let mut watches = Vec::new();
    if flags.demo_controller {
        let store = ObjectStore::default();
        watches.push(kruise::controllers::demo::watch_spec(flags.demo_resource, &flags.demo_selector, store.clone()));
        let demo = DemoStamper {
            identity: identity.clone(),
            space,
            ownership: ownership.clone(),
            resource: flags.demo_resource,
            store,
        };
        reconcilers.insert(demo.name(), Arc::new(demo));
    }
    // Every SidecarSet and their revisions, watched whole by every replica: the pod webhook and
    // the rollouts read them.
    let (all_sidecarsets, sidecarset_revisions) =
        kruise::webhook::server::watch_stores(&client, &flags.leader_election_namespace, webhook_caches);
    // One pods watch for every controller that reads pods.
    let pods = ObjectStore::default();
    let mut pod_controllers = Vec::new();
    if !controller_enabled(&flags.controllers, "sidecarset") {
        tracing::info!("the SidecarSet controller is disabled by --controllers");
    } else if serves(&client, "apps.kruise.io/v1alpha1", "sidecarsets").await {
        use kruise::controllers::sidecarset::{controller, rollout};
        let store = ObjectStore::default();
        watches.push(controller::watch_spec(store.clone()));
        pod_controllers.push(rollout::ROLLOUT_CONTROLLER);
        let rollout_ctx = rollout::RolloutContext::new(rollout::RolloutSources {
            client: client.clone(),
            namespace: flags.leader_election_namespace.clone(),
            space,
            ownership: ownership.clone(),
            pods: pods.clone(),
            sets: all_sidecarsets.clone(),
            rollouts: rollout::watch_rollout_configmaps(&client, &flags.leader_election_namespace),
            metrics: rollout::RolloutMetrics::register(&registry)?,
        });
        let coordinator = controller::SidecarSetCoordinator {
            client: client.clone(),
            rollout: rollout_ctx.clone(),
            namespace: flags.leader_election_namespace.clone(),
            store,
            space,
            ownership: ownership.clone(),
        };
        reconcilers.insert(coordinator.name(), Arc::new(coordinator));
        let pods_reconciler = rollout::SidecarSetRollout(rollout_ctx.clone());
        reconcilers.insert(pods_reconciler.name(), Arc::new(pods_reconciler));
        tokio::spawn(rollout::run_sync(rollout_ctx, controller::CONTROLLER, Duration::from_millis(200)));
    } else {
        tracing::info!("the SidecarSet CRD is not served: its controller is not started");
    }
    // One nodes watch for the controllers keeping per-node objects.
    let nodes = ObjectStore::default();
    let mut node_controllers: Vec<&'static str> = Vec::new();
    let probe_gates = [features::KRUISE_DAEMON, features::POD_PROBE_MARKER_GATE];
    if !controller_enabled(&flags.controllers, "podprobemarker") {
        tracing::info!("the PodProbeMarker controllers are disabled by --controllers");
    } else if !probe_gates.iter().all(|g| flags.feature_gates.enabled(g)) {
        tracing::info!("the PodProbeMarker controllers are off: PodProbeMarkerGate and KruiseDaemon must be on");
    } else if serves(&client, "apps.kruise.io/v1alpha1", "podprobemarkers").await {
        use kruise::controllers::{nodepodprobe, podprobemarker::controller as ppm};
        let markers = ObjectStore::default();
        watches.push(ppm::watch_spec(markers.clone()));
        pod_controllers.push(ppm::CONTROLLER);
        let index = Arc::new(std::sync::RwLock::new(Default::default()));
        ppm::watch_node_pod_probes(&client, index.clone());
        let marker = ppm::PodProbeMarkerController {
            markers,
            pods: pods.clone(),
            index,
            space,
            ownership: ownership.clone(),
            metrics: ppm::MarkerMetrics::register(&registry)?,
            recent: Default::default(),
            typed_pods: Default::default(),
        };
        reconcilers.insert(marker.name(), Arc::new(marker));
        let probes = ObjectStore::default();
        node_controllers.push(nodepodprobe::CONTROLLER);
        watches.push(nodepodprobe::watch_spec(probes.clone()));
        let lifecycle =
            nodepodprobe::NodePodProbeLifecycle { nodes: nodes.clone(), probes, space, ownership: ownership.clone() };
        reconcilers.insert(lifecycle.name(), Arc::new(lifecycle));
    } else {
        tracing::info!("the PodProbeMarker CRD is not served: its controllers are not started");
    }
    if !controller_enabled(&flags.controllers, "imagepulljob") {
        tracing::info!("the ImagePullJob controllers are disabled by --controllers");
    } else if !flags.feature_gates.enabled(features::KRUISE_DAEMON) {
        tracing::info!("the ImagePullJob controllers are off: KruiseDaemon must be on");
    } else if serves(&client, "apps.kruise.io/v1alpha1", "imagepulljobs").await {
        use kruise::controllers::imagepulljob::controller as jobs;
        use kruise::controllers::nodeimage::controller as node_images;
        let store = ObjectStore::default();
        watches.push(jobs::watch_spec(store.clone(), vec![jobs::CONTROLLER]));
        pod_controllers.push(jobs::CONTROLLER);
        let index: jobs::NodeImageIndex = Default::default();
        jobs::watch_node_images(&client, index.clone(), store.clone(), node_images::CONTROLLER);
        let uids: node_images::JobUids = Default::default();
        node_images::watch_job_uids(&client, uids.clone(), index.clone());
        let job_controller = jobs::ImagePullJobController {
            jobs: store,
            pods: pods.clone(),
            node_images: index.clone(),
            space,
            ownership: ownership.clone(),
        };
        reconcilers.insert(job_controller.name(), Arc::new(job_controller));
        node_controllers.push(node_images::CONTROLLER);
        let node_image_controller = node_images::NodeImageController {
            nodes: nodes.clone(),
            node_images: index,
            job_uids: uids,
            space,
            ownership: ownership.clone(),
            creation_delay: flags.nodeimage_creation_delay,
            response_timeout: flags.nodeimage_response_timeout,
        };
        reconcilers.insert(node_image_controller.name(), Arc::new(node_image_controller));
    } else {
        tracing::info!("the ImagePullJob CRD is not served: its controllers are not started");
    }
    if !node_controllers.is_empty() {
        watches.push(kruise::controllers::nodes::watch_spec(nodes, node_controllers));
    }
    if !pod_controllers.is_empty() {
        watches.push(kruise::controllers::pods::watch_spec(pods, pod_controllers));
    }
    if watches.is_empty() {
        caches_ready.set();
    }
    for name in reconcilers.keys() {
        reconcile_metrics.init(name);
    }
    queue_metrics.init(kruise::runtime::namespace_actor::NAMESPACE_QUEUE);
    let hub = (!watches.is_empty()).then(|| HubArgs {
        client: client.clone(),
        space,
        ownership: ownership.clone(),
        watches,
        namespace_template: NamespaceArgs {
            namespace: String::new(),
            reconcilers: Arc::new(reconcilers),
            concurrency: flags.namespace_concurrency.max(1),
            backoff: Backoff::default(),
            idle_timeout: Duration::from_secs(300),
            reconcile_metrics,
            queue_metrics,
        },
        namespace: Some(flags.namespace.clone()).filter(|n| !n.is_empty()),
        sync_period: Duration::from_millis(500),
        metrics: watch_metrics,
        leases_ready: leases_ready.clone(),
        caches_ready,
    });
    let leadership = Leadership::default();
    let coordinator = CoordinatorArgs {
        store: LeaseStore::new(lease_client, &flags.leader_election_namespace),
        identity: identity.clone(),
        space,
        timings,
        ownership,
        leadership: leadership.clone(),
        metrics,
        ready: leases_ready,
    };
    start_webhooks(
        &flags,
        client.clone(),
        &registry,
        webhook_ready,
        (all_sidecarsets, sidecarset_revisions),
        leadership,
    )
    .await?;
    let args = ManagerArgs { coordinator, writer, hub };
    let (supervisor, handle) = Actor::spawn(Some("manager-supervisor".into()), ManagerSupervisor, args)
        .await
        .context("starting the actor tree")?;
    tracing::info!(
        %identity,
        shards = space.count(),
        namespace = %flags.leader_election_namespace,
        feature_gates = ?flags.feature_gates.changed(),
        "kruise-manager started"
    );

    shutdown_signal().await?;
    tracing::info!("shutting down: releasing shards");
    let released = ractor::call_t!(supervisor, SupervisorMsg::Shutdown, (RELEASE_TIMEOUT.as_millis() + 1000) as u64);
    if let Err(e) = released {
        tracing::warn!(error = %e, "shutdown did not complete cleanly; leases will expire instead");
    }
    let _ = tokio::time::timeout(Duration::from_secs(2), handle).await;
    Ok(())
}

/// Whether `--controllers` enables `name`.
fn controller_enabled(flag: &[String], name: &str) -> bool {
    let listed = |n: &str| flag.iter().any(|f| f.trim() == n);
    (listed("*") || listed(name)) && !listed(&format!("-{name}"))
}

/// Whether the API server serves `plural` in `api_version` (upstream skips a controller whose CRD
/// is missing). Retried a few times, as upstream's discovery, so a just-started server counts.
async fn serves(client: &kube::Client, api_version: &str, plural: &str) -> bool {
    for attempt in 0..4 {
        match client.list_api_group_resources(api_version).await {
            Ok(list) => return list.resources.iter().any(|r| r.name == plural),
            Err(kube::Error::Api(e)) if e.code == 404 => return false,
            Err(_) => tokio::time::sleep(Duration::from_millis(500 * 5u64.pow(attempt))).await,
        }
    }
    // Other errors count as present, as upstream: the watch retries until it works.
    true
}

/// The webhook server (HTTPS) and the certificate sync that feeds it.
async fn start_webhooks(
    flags: &Flags,
    client: kube::Client,
    registry: &MetricsRegistry,
    ready: kruise::runtime::http::ReadyCondition,
    (sidecarsets, revisions): (
        kube::runtime::reflector::Store<kruise::api::sidecarset::SidecarSet>,
        kube::runtime::reflector::Store<k8s_openapi::api::apps::v1::ControllerRevision>,
    ),
    leadership: Leadership,
) -> anyhow::Result<()> {
    use kruise::webhook::{cert_sync, configuration::Endpoint, server, tls};
    let namespace = flags.leader_election_namespace.clone();
    let slot = tls::CertSlot::default();
    let state = server::WebhookState {
        sidecarsets,
        revisions,
        client: client.clone(),
        namespace: namespace.clone(),
        gates: flags.feature_gates.clone(),
        metrics: server::WebhookMetrics::register(registry)?,
    };
    let addr = std::net::SocketAddr::from(([0, 0, 0, 0], flags.webhook_port));
    let bound = tls::serve_tls(addr, server::router(state), slot.clone()).await?;
    let (host, endpoint) = match &flags.webhook_host {
        Some(h) if !h.is_empty() => (h.clone(), Endpoint::Url { host: h.clone(), port: bound.port() }),
        _ => (
            format!("{}.{namespace}.svc", flags.webhook_service_name),
            Endpoint::Service { namespace: namespace.clone(), name: flags.webhook_service_name.clone() },
        ),
    };
    tokio::spawn(cert_sync::run(cert_sync::CertSyncArgs {
        client,
        namespace,
        secret_name: flags.webhook_secret_name.clone(),
        host,
        endpoint,
        served_paths: server::served_paths(&flags.feature_gates),
        slot,
        ready,
        leadership,
        period: Duration::from_secs(30),
    }));
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    use tokio::signal::unix::{SignalKind, signal};
    let mut term = signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
    tokio::select! {
        _ = term.recv() => {},
        r = tokio::signal::ctrl_c() => r.context("waiting for Ctrl-C")?,
    }
    Ok(())
}
