//! `kruise-loadtest replica-failover`: how long a manager replica's work stands still when it
//! leaves. Three (by default) replicas run the demo controller over ConfigMaps in many
//! namespaces. One replica is stopped gracefully (SIGTERM: it releases its shard leases), later
//! another is killed (SIGKILL: its leases must expire). After each, one new ConfigMap per
//! namespace is created at once, and the time until each carries a stamp is measured: the
//! objects in the departed replica's shards wait for the handover, the rest do not.
//!
//! Measured per departure: stamp latency p50/p90/p99/max over the new objects, the time until the
//! survivors hold every shard again (from their `kruise_shards_held`), and the API requests.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::ConfigMap;
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use serde_json::json;

use kruise::controllers::demo::{DEMO_LABEL, RECONCILED_BY};

use crate::environment::{ClusterArgs, Environment, KruiseProcess};
use crate::report::{Latencies, Table, percentile};
use crate::{machine, wait_for};

#[derive(clap::Args, Clone)]
pub struct FailoverArgs {
    /// Namespaces, each with one ConfigMap per round.
    #[arg(long, default_value_t = 200)]
    namespaces: usize,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Virtual shards (the managers' `--shards`).
    #[arg(long, default_value_t = 32)]
    shards: u32,
    /// Per-replica write budget. The default is what ships; with many namespaces it, not the
    /// handover, bounds the stamp latencies (raise it to see the handover alone).
    #[arg(long, default_value_t = 30.0)]
    kube_api_qps: f64,
    #[arg(long, default_value_t = 50)]
    kube_api_burst: u32,
    #[arg(long, default_value_t = 600)]
    timeout_secs: u64,
    #[arg(long)]
    manager_bin: Option<std::path::PathBuf>,
    /// Where replica-failover.json, .md and the plots go.
    #[arg(long, default_value = "target/loadtest")]
    out: std::path::PathBuf,
}

/// Creates ConfigMap `name` in every namespace; returns when each was created.
async fn create_round(client: &Client, namespaces: &[String], name: &str) -> anyhow::Result<BTreeMap<String, Instant>> {
    let mut created = BTreeMap::new();
    for ns in namespaces {
        let cm = ConfigMap {
            metadata: ObjectMeta {
                name: Some(name.to_string()),
                labels: Some(BTreeMap::from([(DEMO_LABEL.to_string(), "true".to_string())])),
                ..Default::default()
            },
            ..Default::default()
        };
        Api::<ConfigMap>::namespaced(client.clone(), ns).create(&PostParams::default(), &cm).await?;
        created.insert(ns.clone(), Instant::now());
    }
    Ok(created)
}

/// Waits until every ConfigMap `name` is stamped; the latency of each from its creation.
async fn stamp_latencies(
    client: &Client,
    name: &str,
    created: &BTreeMap<String, Instant>,
    timeout: Duration,
) -> anyhow::Result<Vec<f64>> {
    let mut stamped: BTreeMap<String, f64> = BTreeMap::new();
    let api: Api<ConfigMap> = Api::all(client.clone());
    wait_for(&format!("every {name} stamped"), timeout, async || {
        let Ok(list) = api.list_metadata(&ListParams::default().labels(&format!("{DEMO_LABEL}=true"))).await else {
            return false;
        };
        for cm in list.items.iter().filter(|c| c.metadata.name.as_deref() == Some(name)) {
            let ns = cm.metadata.namespace.clone().unwrap_or_default();
            let by = cm.metadata.annotations.as_ref().and_then(|a| a.get(RECONCILED_BY));
            if let (Some(_), Some(at)) = (by, created.get(&ns)) {
                stamped.entry(ns).or_insert_with(|| at.elapsed().as_secs_f64());
            }
        }
        stamped.len() >= created.len()
    })
    .await?;
    let mut v: Vec<f64> = stamped.into_values().collect();
    v.sort_by(f64::total_cmp);
    Ok(v)
}

/// Objects that waited for a handover rather than being stamped at once (namespaces hash
/// unevenly, so the leaving replica's share of objects is not its share of shards).
fn waited(latencies: &[f64]) -> usize {
    latencies.iter().filter(|l| **l > 2.0).count()
}

/// One departure's table row from its sorted stamp latencies and when every shard was held
/// again (`None`: not within the timeout).
fn row(departure: &str, latencies: &[f64], regained: Option<f64>) -> Vec<serde_json::Value> {
    vec![
        json!(departure),
        json!(latencies.len()),
        json!(waited(latencies)),
        json!(percentile(latencies, 0.1)),
        json!(percentile(latencies, 0.5)),
        json!(percentile(latencies, 0.9)),
        json!(percentile(latencies, 0.99)),
        json!(latencies.last().copied().unwrap_or(f64::NAN)),
        json!(regained),
    ]
}

/// Runs only in a local cluster (it kills its own kruise-rs processes); `cluster` says so.
pub async fn failover(args: FailoverArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    anyhow::ensure!(args.replicas >= 3, "--replicas must be at least 3 (one leaves gracefully, one is killed)");
    let manager = crate::manager_binary(args.manager_bin.as_deref())?;
    println!(
        "# kruise-loadtest replica-failover: {} replicas, {} namespaces, {} shards",
        args.replicas, args.namespaces, args.shards
    );
    println!("machine: {}; manager: {}", machine(), manager.display());
    let timeout = Duration::from_secs(args.timeout_secs);
    let parameters = [
        ("namespaces", json!(args.namespaces)),
        ("replicas", json!(args.replicas)),
        ("shards", json!(args.shards)),
        ("kube_api_qps", json!(args.kube_api_qps)),
    ];
    let mut env = Environment::start(cluster, "failover", 0, Duration::from_secs(300)).await?;
    let mut report = env.report("replica-failover", &parameters);
    let client = env.client.clone();
    let namespaces: Vec<String> =
        (0..args.namespaces).map(|i| format!("fo-{:08x}", crate::mix(i as u64) as u32)).collect();
    env.create_namespaces(&namespaces, timeout).await?;
    let extra = [
        "--demo-controller".to_string(),
        format!("--demo-selector={DEMO_LABEL}=true"),
        format!("--shards={}", args.shards),
        "--controllers=-sidecarset,-podprobemarker,-imagepulljob".to_string(),
        format!("--kube-api-qps={}", args.kube_api_qps),
        format!("--kube-api-burst={}", args.kube_api_burst),
    ];
    env.start_managers(&manager, "failover", args.replicas, &extra, timeout).await?;
    // The replicas leave this list as they leave the cluster.
    let mut replicas = std::mem::take(&mut env.managers);
    let held = async |replicas: &[KruiseProcess]| {
        let mut sum = 0.0;
        for r in replicas {
            sum += r.scrape().await.sum("kruise_shards_held", "");
        }
        sum
    };
    let all_shards = f64::from(args.shards);
    wait_for("every shard held", timeout, async || held(&replicas).await >= all_shards).await?;
    // A first round with everyone up: the baseline.
    let created = create_round(&client, &namespaces, "round-0").await?;
    let baseline = stamp_latencies(&client, "round-0", &created, timeout).await?;

    let mut table = Table {
        title: "Stamp latency of objects created right after a replica leaves".into(),
        columns: [
            "departure",
            "objects",
            "waited over 2 s (in the leaving replica's shards)",
            "p10 s",
            "p50 s",
            "p90 s",
            "p99 s",
            "max s",
            "all shards held again after s",
        ]
        .map(String::from)
        .to_vec(),
        rows: vec![row("none (baseline)", &baseline, Some(0.0))],
    };
    report.latencies.push(Latencies { name: "no departure".into(), seconds: baseline });
    for (round, (how, graceful)) in [("SIGTERM (graceful)", true), ("SIGKILL (crash)", false)].into_iter().enumerate() {
        let mut leaving = replicas.remove(0);
        report.add_process(format!("{} stopped by {how}", leaving.name), &leaving.figures().await);
        let load0 = crate::ApiServerLoad::read(&client).await;
        let left = Instant::now();
        let process = leaving.local().context("replica-failover runs only on processes it started")?;
        if graceful {
            process.stop(Duration::from_secs(10));
        } else {
            process.kill();
        }
        let name = format!("round-{}", round + 1);
        let created = create_round(&client, &namespaces, &name).await?;
        let stamping = stamp_latencies(&client, &name, &created, timeout);
        let watching = async {
            wait_for("the survivors to hold every shard", timeout, async || held(&replicas).await >= all_shards)
                .await
                .map(|()| left.elapsed().as_secs_f64())
        };
        let (latencies, regained) = tokio::join!(stamping, watching);
        let (latencies, regained) = (latencies?, regained.ok());
        let seconds = left.elapsed().as_secs_f64();
        let load1 = crate::ApiServerLoad::read(&client).await;
        report.add_requests(how, seconds, &load1, &load0);
        println!(
            "{how}: {} objects stamped ({} waited over 2 s), p50 {:.2} s, p99 {:.2} s, max {:.2} s; all shards held again after {:.2} s",
            latencies.len(),
            waited(&latencies),
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            latencies.last().copied().unwrap_or(f64::NAN),
            regained.unwrap_or(f64::NAN)
        );
        table.rows.push(row(how, &latencies, regained));
        report.latencies.push(Latencies { name: format!("after {how}"), seconds: latencies });
    }
    env.managers = replicas;
    println!("{}", env.add_processes(&mut report, " (stayed)").await);
    report.tables.push(table);
    report.finish(&args.out)
}
