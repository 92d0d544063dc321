//! `kruise-loadtest`: benchmarks of kruise-rs (or any `apps.kruise.io/v1alpha1` controller)
//! against a real control plane: a local one each scenario starts, or an existing cluster by
//! kubeconfig (see `environment.rs`). Not a test: it reports figures, it asserts nothing about
//! speed. Scenarios live one per file; `shards` is below.
//!
//! ```text
//! kruise-loadtest shards [--objects 10000] [--namespaces 1000] [--replicas 1,3] [--server-sharding on,off]
//! ```
//! `shards` seeds labelled ConfigMaps across namespaces, then for each API-server setting
//! (`ShardedListAndWatch` on/off) and replica count starts that many `kruise-manager` replicas
//! running the demo controller (which stamps every object once) and measures: time from start
//! until every object carries a stamp from this run, peak RSS and CPU time per replica, bytes
//! received on watch streams and in total, API requests made, and how the objects were split.
//! Ratios are against the first configuration measured in the same run, since shared machines
//! are noisy. Build with `--release` to measure what ships.

// Shared with the integration tests and kruise-dev, which use parts this binary does not.
#[allow(dead_code, unused_imports)]
#[path = "../tests/cluster/mod.rs"]
mod cluster;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace};
use kube::api::{DeleteParams, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

mod admission;
mod environment;
mod failover;
mod images;
mod probes;
mod report;
mod rollout;

use cluster::process::{Component, http_get};
use cluster::{ControlPlane, ControlPlaneConfig, Lifetime};
use kruise::controllers::demo::{DEMO_LABEL, RECONCILED_BY};

#[derive(Parser)]
#[command(
    name = "kruise-loadtest",
    about = "Benchmarks an apps.kruise.io controller on a local control plane or an existing cluster"
)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
    #[command(flatten)]
    cluster: environment::ClusterArgs,
}

#[derive(Subcommand)]
enum Cmd {
    /// Sharded runtime: time to reconcile every object once, memory, watch bytes and requests,
    /// for several replica counts, with server-side sharding on and off.
    Shards(ShardsArgs),
    /// Pod-create latency through the API server with the sidecar-injecting pod webhook, for
    /// several numbers of matching SidecarSets, and the webhook's own handling time.
    #[command(name = "pod-create-with-injection", alias = "admission")]
    Admission(admission::AdmissionArgs),
    /// The pod webhook's decision (injection + JSON patch) timed in process, without a cluster.
    Injection(admission::InjectionArgs),
    /// A SidecarSet image change rolled out in place over many pods on kwok nodes, against the
    /// API server's own pod-patch throughput.
    #[command(name = "sidecarset-rollout", alias = "rollout")]
    Rollout(rollout::RolloutArgs),
    /// PodProbeMarker at scale: simulated kruise-daemon probing many kwok nodes' pods; marking
    /// latency from an outcome change, write rates, CPU and memory.
    #[command(name = "probe-marker-churn", alias = "probes")]
    Probes(probes::ProbesArgs),
    /// Image pre-download: one ImagePullJob onto many kwok nodes per parallelism setting, with
    /// simulated kruise-daemon pulls; time against the ideal, concurrency, API requests.
    #[command(name = "image-pull-fanout", alias = "images")]
    Images(images::ImagesArgs),
    /// A manager replica leaving (SIGTERM, then another by SIGKILL): how long the work in its
    /// shards stands still, and when the survivors hold every shard again.
    #[command(name = "replica-failover")]
    Failover(failover::FailoverArgs),
}

#[derive(clap::Args, Clone)]
struct ShardsArgs {
    /// Objects (ConfigMaps) to reconcile.
    #[arg(long, default_value_t = 10_000)]
    objects: usize,
    /// Namespaces the objects are spread over.
    #[arg(long, default_value_t = 1_000)]
    namespaces: usize,
    /// Replica counts to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "1,3")]
    replicas: Vec<usize>,
    /// API server `ShardedListAndWatch` settings to measure, in order.
    #[arg(long, value_delimiter = ',', default_value = "on,off")]
    server_sharding: Vec<OnOff>,
    /// Bytes of data in each ConfigMap (the demo reads none of it, so stores drop it).
    #[arg(long, default_value_t = 512)]
    payload_bytes: usize,
    /// Per-replica write budget; high, so the benchmark measures the runtime rather than the limit.
    #[arg(long, default_value_t = 2000.0)]
    kube_api_qps: f64,
    #[arg(long, default_value_t = 2000)]
    kube_api_burst: u32,
    /// Give up on one configuration after this many seconds.
    #[arg(long, default_value_t = 900)]
    timeout_secs: u64,
    /// The kruise-manager to run; by default the one next to this binary.
    #[arg(long)]
    manager_bin: Option<PathBuf>,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum OnOff {
    On,
    Off,
}

/// What one configuration measured.
struct RunResult {
    sharding: OnOff,
    replicas: usize,
    seconds: f64,
    per_replica: Vec<ReplicaFigures>,
    /// CPU seconds kube-apiserver and etcd spent during the run: where the time went.
    apiserver_cpu: f64,
    etcd_cpu: f64,
}

#[derive(Default, Clone)]
struct ReplicaFigures {
    peak_rss_mib: f64,
    cpu_seconds: f64,
    watch_mib: f64,
    received_mib: f64,
    requests: f64,
    writes: f64,
    objects_cached: f64,
    events_received: f64,
    events_filtered: f64,
    relists: f64,
}

#[tokio::main]
async fn main() {
    // kube logs every failed readiness probe of a starting API server at ERROR: not news here.
    kruise::runtime::logging::init("warn,kube_client=off");
    let result = run(Cli::parse()).await;
    if let Err(e) = &result {
        eprintln!("Error: {e:?}");
    }
    use std::io::Write;
    let _ = std::io::stdout().flush();
    // Leave without the runtime's shutdown: a client task still retrying against a control plane
    // that has stopped can keep it from finishing. The processes a run started die with it.
    std::process::exit(if result.is_ok() { 0 } else { 1 });
}

async fn run(cli: Cli) -> anyhow::Result<()> {
    let cluster = &cli.cluster;
    match cli.command {
        Cmd::Shards(args) => {
            cluster.require_local("shards")?;
            shards(args).await
        }
        Cmd::Admission(args) => admission::admission(args, cluster).await,
        Cmd::Injection(args) => admission::injection(args),
        Cmd::Rollout(args) => rollout::rollout(args, cluster).await,
        Cmd::Probes(args) => probes::probes(args, cluster).await,
        Cmd::Images(args) => images::images(args, cluster).await,
        Cmd::Failover(args) => {
            cluster.require_local("replica-failover")?;
            failover::failover(args, cluster).await
        }
    }
}

fn machine() -> String {
    let cpu = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find(|l| l.starts_with("model name"))
                .map(|l| l.split(':').nth(1).unwrap_or("").trim().to_string())
        })
        .unwrap_or_else(|| "unknown CPU".into());
    let cores = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0);
    let mem_gib = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| m.lines().next().and_then(|l| l.split_whitespace().nth(1)).and_then(|kb| kb.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0 / 1024.0)
        .unwrap_or(0.0);
    format!("{cores} cores ({cpu}), {mem_gib:.0} GiB")
}

/// A fresh control plane with `nodes` kwok nodes, the CRDs, the Kruise namespace and the chart's
/// webhook configurations (which the managers' leader points at itself).
async fn webhook_control_plane(
    name: &str,
    nodes: usize,
    startup_timeout: Duration,
) -> anyhow::Result<(ControlPlane, Client)> {
    use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
    let cp = ControlPlane::start(ControlPlaneConfig {
        name: name.into(),
        nodes,
        scheduler: false,
        // Creates the namespaces' default ServiceAccounts, without which pods are refused.
        controller_manager: true,
        lifetime: Lifetime::TiedToProcess,
        startup_timeout,
        ..Default::default()
    })
    .await
    .context("starting the control plane")?;
    let client = cp.admin_client().await?;
    cluster::control_plane::install_crds(&client, "kruise-loadtest").await?;
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(KRUISE_NS.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await?;
    let (m, v) = kruise::webhook::configuration::configurations(KRUISE_NS, "kruise-webhook-service");
    Api::<MutatingWebhookConfiguration>::all(client.clone()).create(&PostParams::default(), &m).await?;
    Api::<ValidatingWebhookConfiguration>::all(client.clone()).create(&PostParams::default(), &v).await?;
    Ok((cp, client))
}

/// A background task that ends with its owner: a watch must not outlive the cluster it watches
/// (nor keep the runtime from shutting down).
struct Background(tokio::task::JoinHandle<()>);

impl Drop for Background {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Polls `check` until it says true, or fails after `timeout`.
async fn wait_for(what: &str, timeout: Duration, mut check: impl AsyncFnMut() -> bool) -> anyhow::Result<()> {
    let started = Instant::now();
    while !check().await {
        if started.elapsed() > timeout {
            bail!("timed out waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    Ok(())
}

/// Runs `create` until the webhooks answer it: retries while the API server cannot reach them
/// (5xx, or no answer), fails at once on a denial or another client error, with its reason.
async fn create_when_webhooks_answer<T>(
    what: &str,
    timeout: Duration,
    mut create: impl AsyncFnMut() -> Result<T, kube::Error>,
) -> anyhow::Result<T> {
    let started = Instant::now();
    loop {
        match create().await {
            Ok(created) => return Ok(created),
            Err(kube::Error::Api(e)) if e.code < 500 => bail!("creating {what}: {} ({})", e.message, e.code),
            Err(e) if started.elapsed() > timeout => bail!("creating {what}: still failing after {timeout:?}: {e}"),
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// Creates pods `bench-0..count` round-robin over the namespaces `names`, pod `i` from
/// `make(name, i)`, `concurrency` requests at a time; returns how long it took (s).
async fn create_pods(
    client: &Client,
    names: &[String],
    count: usize,
    concurrency: usize,
    make: impl Fn(&str, usize) -> k8s_openapi::api::core::v1::Pod,
) -> anyhow::Result<f64> {
    let started = Instant::now();
    let creations = futures::stream::iter(0..count).map(|i| {
        let api: Api<k8s_openapi::api::core::v1::Pod> = Api::namespaced(client.clone(), &names[i % names.len()]);
        let p = make(&format!("bench-{i}"), i);
        async move { api.create(&PostParams::default(), &p).await }
    });
    let created: Vec<_> = creations.buffer_unordered(concurrency).collect().await;
    for c in created {
        c.context("creating a pod")?;
    }
    Ok(started.elapsed().as_secs_f64())
}

/// The SidecarSet resource, for dynamic clients.
fn sidecarsets() -> kube::api::ApiResource {
    kube::api::ApiResource::erase::<kruise::api::sidecarset::SidecarSet>(&())
}

/// The Kruise namespace of the benchmarks' clusters.
const KRUISE_NS: &str = "kruise-system";

/// The flags every benchmark's kruise-manager gets: admin access to `cp`, its identity and
/// metrics address, and a webhook on a free local port.
fn manager_flags(cp: &ControlPlane, identity: &str, metrics_addr: &str) -> Vec<String> {
    vec![
        format!("--kubeconfig={}", cp.admin_kubeconfig().display()),
        format!("--identity={identity}"),
        format!("--leader-election-namespace={KRUISE_NS}"),
        format!("--metrics-addr={metrics_addr}"),
        format!("--health-probe-addr={metrics_addr}"),
        "--webhook-port=0".to_string(),
        "--webhook-host=127.0.0.1".to_string(),
    ]
}

/// The kruise-manager to run: `--manager-bin`, else the one next to this binary.
fn manager_binary(flag: Option<&Path>) -> anyhow::Result<PathBuf> {
    let manager = match flag {
        Some(p) => p.to_path_buf(),
        None => std::env::current_exe()?.with_file_name("kruise-manager"),
    };
    if !manager.exists() {
        bail!(
            "{} not found: build it (cargo build --release --bin kruise-manager) or pass --manager-bin",
            manager.display()
        );
    }
    Ok(manager)
}

async fn shards(args: ShardsArgs) -> anyhow::Result<()> {
    let manager = manager_binary(args.manager_bin.as_deref())?;
    println!("# kruise-loadtest shards: {} objects in {} namespaces", args.objects, args.namespaces);
    println!("machine: {}; manager: {}", machine(), manager.display());
    let mut results = Vec::new();
    for sharding in &args.server_sharding {
        let gate = if *sharding == OnOff::On { "true" } else { "false" };
        let cp = ControlPlane::start(ControlPlaneConfig {
            name: "loadtest".into(),
            nodes: 0,
            feature_gates: vec![format!("ShardedListAndWatch={gate}")],
            scheduler: false,
            controller_manager: false,
            lifetime: Lifetime::TiedToProcess,
            ..Default::default()
        })
        .await
        .context("starting the control plane")?;
        let client = cp.admin_client().await?;
        let t = Instant::now();
        seed(&client, &args).await?;
        println!("ShardedListAndWatch={gate}: seeded {} objects in {:.1}s", args.objects, t.elapsed().as_secs_f64());
        for (i, replicas) in args.replicas.iter().enumerate() {
            // Distinct per configuration, so each run's stamps are told from the previous one's.
            let run = format!("{}-r{replicas}-{i}", if *sharding == OnOff::On { "on" } else { "off" });
            let r = measure(&cp, &client, &manager, &args, &run, *replicas, *sharding).await?;
            report_one(&r);
            results.push(r);
        }
    }
    report(&results, &args);
    Ok(())
}

/// Namespaces `lt-<hash>` (hashed, not sequential: FNV-1a leaves sequential names unevenly
/// spread) with the objects spread evenly over them.
async fn seed(client: &Client, args: &ShardsArgs) -> anyhow::Result<()> {
    let namespaces: Vec<String> = (0..args.namespaces).map(|i| format!("lt-{:08x}", mix(i as u64) as u32)).collect();
    futures::stream::iter(namespaces.clone())
        .map(|name| {
            let api: Api<Namespace> = Api::all(client.clone());
            async move {
                let ns =
                    Namespace { metadata: ObjectMeta { name: Some(name), ..Default::default() }, ..Default::default() };
                api.create(&PostParams::default(), &ns).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .context("creating namespaces")?;
    let payload = "x".repeat(args.payload_bytes);
    futures::stream::iter(0..args.objects)
        .map(|i| {
            let ns = &namespaces[i % namespaces.len()];
            let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
            let cm = ConfigMap {
                metadata: ObjectMeta {
                    name: Some(format!("obj-{i}")),
                    labels: Some(BTreeMap::from([(DEMO_LABEL.to_string(), "true".to_string())])),
                    ..Default::default()
                },
                data: Some(BTreeMap::from([("payload".to_string(), payload.clone())])),
                ..Default::default()
            };
            async move { api.create(&PostParams::default(), &cm).await.map(|_| ()) }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .context("creating ConfigMaps")?;
    Ok(())
}

/// SplitMix64: spreads consecutive integers over the whole range.
fn mix(x: u64) -> u64 {
    let mut z = x.wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

struct Replica {
    identity: String,
    metrics_addr: String,
    process: Component,
}

async fn measure(
    cp: &ControlPlane,
    client: &Client,
    manager: &Path,
    args: &ShardsArgs,
    run: &str,
    replicas: usize,
    sharding: OnOff,
) -> anyhow::Result<RunResult> {
    let lease_ns = format!("kruise-{run}");
    let nss: Api<Namespace> = Api::all(client.clone());
    nss.create(
        &PostParams::default(),
        &Namespace {
            metadata: ObjectMeta { name: Some(lease_ns.clone()), ..Default::default() },
            ..Default::default()
        },
    )
    .await?;
    let control_plane_cpu = || {
        let of = |name: &str| {
            cp.pids().iter().filter(|(n, _)| n == name).map(|(_, pid)| process_figures(*pid).1).sum::<f64>()
        };
        (of("kube-apiserver"), of("etcd"))
    };
    let cpu_before = control_plane_cpu();
    let started = Instant::now();
    let mut running = Vec::new();
    for i in 0..replicas {
        let identity = format!("{run}-m{i}");
        let metrics_addr = format!("127.0.0.1:{}", cluster::control_plane::free_port()?);
        let flags = vec![
            format!("--kubeconfig={}", cp.admin_kubeconfig().display()),
            format!("--identity={identity}"),
            format!("--leader-election-namespace={lease_ns}"),
            format!("--metrics-addr={metrics_addr}"),
            format!("--health-probe-addr={metrics_addr}"),
            format!("--kube-api-qps={}", args.kube_api_qps),
            format!("--kube-api-burst={}", args.kube_api_burst),
            "--demo-controller".to_string(),
            "--webhook-port=0".to_string(),
            "--webhook-host=127.0.0.1".to_string(),
        ];
        let process = Component::spawn(&identity, manager, &flags, &cp.dir().join("logs"), Lifetime::TiedToProcess)?;
        running.push(Replica { identity, metrics_addr, process });
    }

    // Done when every object carries a stamp from this run. The replicas' write counters say when
    // to look; a metadata-only list confirms.
    let cms: Api<ConfigMap> = Api::all(client.clone());
    let deadline = started + Duration::from_secs(args.timeout_secs);
    let prefix = format!("{run}-");
    loop {
        let mut writes = 0.0;
        for r in &mut running {
            r.process
                .check_running()
                .with_context(|| format!("{} exited; see {}", r.identity, r.process.log.display()))?;
            writes += scrape(&r.metrics_addr).await.sum("kruise_writer_requests_total", "code=\"200\"");
        }
        if writes >= args.objects as f64 {
            let list = cms.list_metadata(&ListParams::default().labels(&format!("{DEMO_LABEL}=true"))).await?;
            let stamped = list
                .items
                .iter()
                .filter(|o| {
                    o.metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(RECONCILED_BY))
                        .is_some_and(|v| v.starts_with(&prefix))
                })
                .count();
            if stamped >= args.objects {
                break;
            }
        }
        if Instant::now() > deadline {
            bail!("{replicas} replicas did not stamp {} objects within {}s", args.objects, args.timeout_secs);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    let seconds = started.elapsed().as_secs_f64();
    let cpu_after = control_plane_cpu();

    let mut per_replica = Vec::new();
    for r in &running {
        let m = scrape(&r.metrics_addr).await;
        let proc_figures = process_figures(r.process.pid());
        per_replica.push(ReplicaFigures {
            peak_rss_mib: proc_figures.0,
            cpu_seconds: proc_figures.1,
            watch_mib: m.sum("kruise_rest_client_response_bytes_total", "verb=\"watch\"") / MIB,
            received_mib: m.sum("kruise_rest_client_response_bytes_total", "") / MIB,
            requests: m.sum("rest_client_requests_total", ""),
            writes: m.sum("kruise_writer_requests_total", ""),
            objects_cached: m.sum("kruise_watch_cache_objects", ""),
            events_received: m.sum("kruise_watch_events_received_total", ""),
            events_filtered: m.sum("kruise_watch_events_filtered_total", ""),
            relists: m.sum("kruise_watch_relists_total", ""),
        });
    }
    let logs = cluster::repo_root().join("target/loadtest-logs");
    std::fs::create_dir_all(&logs)?;
    for r in &mut running {
        r.process.stop(Duration::from_secs(15));
        let _ = std::fs::copy(&r.process.log, logs.join(format!("{}.log", r.identity)));
    }
    let _ = nss.delete(&lease_ns, &DeleteParams::background()).await;
    Ok(RunResult {
        sharding,
        replicas,
        seconds,
        per_replica,
        apiserver_cpu: cpu_after.0 - cpu_before.0,
        etcd_cpu: cpu_after.1 - cpu_before.1,
    })
}

const MIB: f64 = 1024.0 * 1024.0;

/// Peak RSS (MiB) and CPU time (s) of a local process, from /proc; zeros when it is gone.
fn process_figures(pid: u32) -> (f64, f64) {
    let f = kruise::runtime::process_metrics::ProcessFigures::of(pid).unwrap_or_default();
    (f.peak_resident_bytes / MIB, f.cpu_seconds)
}

/// A scrape of /metrics.
struct Scrape(String);

async fn scrape(addr: &str) -> Scrape {
    Scrape(http_get(addr, "/metrics").await.unwrap_or_default())
}

impl Scrape {
    /// The sum of every series of `name` whose labels contain `label` (empty: all series).
    fn sum(&self, name: &str, label: &str) -> f64 {
        cluster::metrics::sum(&self.0, name, label).unwrap_or(0.0)
    }
}

/// What the API server served, by (verb, resource): request count and seconds spent, from its
/// own /metrics. Two readings subtract to what a phase of a run cost the server.
#[derive(Default)]
struct ApiServerLoad {
    by_request: BTreeMap<(String, String), (f64, f64)>,
}

impl ApiServerLoad {
    async fn read(client: &Client) -> Self {
        let request = http::Request::get("/metrics").body(Vec::new()).expect("a static request");
        let text = client.request_text(request).await.unwrap_or_default();
        let mut by_request: BTreeMap<(String, String), (f64, f64)> = BTreeMap::new();
        for (metric, labels, v) in cluster::metrics::samples(&text) {
            let count = match metric {
                "apiserver_request_total" => true,
                "apiserver_request_duration_seconds_sum" => false,
                _ => continue,
            };
            let label = |key: &str| cluster::metrics::label(labels, key).unwrap_or("").to_string();
            let resource = match label("subresource").as_str() {
                "" => label("resource"),
                sub => format!("{}/{sub}", label("resource")),
            };
            let entry = by_request.entry((label("verb"), resource)).or_default();
            if count { entry.0 += v } else { entry.1 += v }
        }
        Self { by_request }
    }

    /// Requests since `before`, busiest (by server seconds) first; WATCH counts streams held
    /// open, not work, so it is left out of the seconds.
    fn since(&self, before: &Self) -> Vec<(String, String, f64, f64)> {
        let mut rows: Vec<(String, String, f64, f64)> = self
            .by_request
            .iter()
            .map(|((verb, resource), (n, secs))| {
                let (n0, s0) = before.by_request.get(&(verb.clone(), resource.clone())).copied().unwrap_or_default();
                let secs = if verb == "WATCH" { 0.0 } else { secs - s0 };
                (verb.clone(), resource.clone(), n - n0, secs)
            })
            .filter(|r| r.2 > 0.0)
            .collect();
        rows.sort_by(|a, b| b.3.total_cmp(&a.3).then(b.2.total_cmp(&a.2)));
        rows
    }

    /// Prints the `top` busiest rows of a phase lasting `secs`.
    fn report(&self, before: &Self, phase: &str, secs: f64, top: usize) {
        let rows = self.since(before);
        let total: f64 = rows.iter().filter(|r| r.0 != "WATCH").map(|r| r.2).sum();
        println!("API server, {phase}: {total:.0} requests ({:.0}/s); busiest:", total / secs.max(0.001));
        for (verb, resource, n, s) in rows.iter().take(top) {
            println!("  {verb:<8} {resource:<28} {n:>8.0} requests {:>7.1}/s  {s:>8.1} server s", n / secs.max(0.001));
        }
    }
}

fn label(r: &RunResult) -> String {
    format!("{} replica(s), server sharding {}", r.replicas, if r.sharding == OnOff::On { "on" } else { "off" })
}

fn report_one(r: &RunResult) {
    println!(
        "\n## {}: all reconciled in {:.1}s (kube-apiserver used {:.1} CPU-s, etcd {:.1})",
        label(r),
        r.seconds,
        r.apiserver_cpu,
        r.etcd_cpu
    );
    println!(
        "| replica | objects cached | peak RSS MiB | CPU s | watch MiB | all responses MiB | requests | writes | objects received | filtered client-side | lists |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|---|");
    for (i, f) in r.per_replica.iter().enumerate() {
        println!(
            "| {i} | {:.0} | {:.1} | {:.1} | {:.2} | {:.2} | {:.0} | {:.0} | {:.0} | {:.0} | {:.0} |",
            f.objects_cached,
            f.peak_rss_mib,
            f.cpu_seconds,
            f.watch_mib,
            f.received_mib,
            f.requests,
            f.writes,
            f.events_received,
            f.events_filtered,
            f.relists
        );
    }
}

fn report(results: &[RunResult], args: &ShardsArgs) {
    let Some(base) = results.first() else { return };
    println!("\n## Summary ({} objects, {} namespaces; ratios against the first row)", args.objects, args.namespaces);
    println!(
        "| configuration | time s | ×time | max peak RSS MiB | total watch MiB | total received MiB | total requests | manager CPU s | apiserver CPU s | etcd CPU s |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for r in results {
        let max_rss = r.per_replica.iter().map(|f| f.peak_rss_mib).fold(0.0, f64::max);
        let total = |f: fn(&ReplicaFigures) -> f64| r.per_replica.iter().map(f).sum::<f64>();
        println!(
            "| {} | {:.1} | {:.2} | {:.1} | {:.2} | {:.2} | {:.0} | {:.1} | {:.1} | {:.1} |",
            label(r),
            r.seconds,
            r.seconds / base.seconds,
            max_rss,
            total(|f| f.watch_mib),
            total(|f| f.received_mib),
            total(|f| f.requests),
            total(|f| f.cpu_seconds),
            r.apiserver_cpu,
            r.etcd_cpu
        );
    }
}
