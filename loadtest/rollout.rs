//! `kruise-loadtest sidecarset-rollout` (alias `rollout`): a SidecarSet image change rolled out in place over many pods on kwok
//! nodes, measured against the API server's own pod-patch throughput in the same cluster.
//!
//! For each pod count: a fresh control plane with kwok nodes (kwok's `container-image-update`
//! stage restarts a container on its new image after 1 s), `replicas` kruise-managers, pods spread
//! over `namespaces` namespaces, all injected by one SidecarSet. Measured: the baseline (a plain
//! loop patching every pod once, `concurrency` at a time, as the managers' writers allow), then the
//! rollout from the image change until status reports every pod updated and ready: total time,
//! API writes per pod, peak RSS and CPU per replica.

use std::time::{Duration, Instant};

use anyhow::Context;
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::Api;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use serde_json::json;

use crate::environment::{ClusterArgs, Environment};
use crate::report::{Progress, Report, Series, Table};
use crate::{machine, wait_for};

#[derive(clap::Args, Clone)]
pub struct RolloutArgs {
    /// Pod counts to measure, each in a fresh cluster.
    #[arg(long, value_delimiter = ',', default_value = "1000,10000")]
    pods: Vec<usize>,
    #[arg(long, default_value_t = 100)]
    namespaces: usize,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    #[arg(long, default_value = "10%")]
    max_unavailable: String,
    /// kwok nodes the pods are spread over.
    #[arg(long, default_value_t = 20)]
    nodes: usize,
    /// Requests in flight for pod creation and the baseline patch loop (the managers' default
    /// `--kube-api-max-in-flight`).
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
    /// Per-replica write budget; high, so the benchmark measures the controller, not the limit.
    #[arg(long, default_value_t = 2000.0)]
    kube_api_qps: f64,
    #[arg(long, default_value_t = 2000)]
    kube_api_burst: u32,
    #[arg(long, default_value_t = 1800)]
    timeout_secs: u64,
    #[arg(long)]
    manager_bin: Option<std::path::PathBuf>,
    /// Where sidecarset-rollout.json, .md and the plots go.
    #[arg(long, default_value = "target/loadtest")]
    out: std::path::PathBuf,
}

/// The sidecar's name: one no other SidecarSet in a shared cluster is likely to use (sets that
/// may select the same pods must not share container names).
const SIDECAR: &str = "kruise-loadtest-proxy";

/// Namespace names that spread over shards: FNV-1a's top bits barely move when only the end of a
/// name changes, so the index goes first.
fn namespace_name(i: usize) -> String {
    format!("{i:03}-rollout")
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": "bench" } },
        "spec": { "nodeName": node,
                  "containers": [{ "name": "main", "image": "app:1" }] }
    }))
    .expect("pod")
}

/// `[matched, updated, ready, updatedReady]` and whether it describes the current generation.
async fn status(sets: &Api<DynamicObject>) -> ([i64; 4], bool) {
    let Ok(s) = sets.get("bench").await else { return ([0; 4], false) };
    let st = &s.data["status"];
    let n = |k: &str| st[k].as_i64().unwrap_or(0);
    let observed = st["observedGeneration"].as_i64() == s.metadata.generation;
    ([n("matchedPods"), n("updatedPods"), n("readyPods"), n("updatedReadyPods")], observed)
}

struct Figures {
    pods: usize,
    create_secs: f64,
    /// From the last pod created until kwok had them all running and ready (and status said so).
    ready_secs: f64,
    baseline_secs: f64,
    rollout_secs: f64,
    pod_writes: f64,
    other_writes: f64,
    apiserver_cpu: f64,
    /// Percent updated and ready over time.
    progress: Series,
}

pub async fn rollout(args: RolloutArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let manager = crate::manager_binary(args.manager_bin.as_deref())?;
    println!(
        "# kruise-loadtest rollout: {} replicas, {} namespaces, {} kwok nodes, maxUnavailable {}",
        args.replicas, args.namespaces, args.nodes, args.max_unavailable
    );
    println!("machine: {}; manager: {}", machine(), manager.display());
    let parameters = [
        ("pods", json!(args.pods)),
        ("namespaces", json!(args.namespaces)),
        ("replicas", json!(args.replicas)),
        ("max_unavailable", json!(args.max_unavailable)),
        ("nodes", json!(args.nodes)),
        ("kube_api_qps", json!(args.kube_api_qps)),
    ];
    let mut report =
        Report::new("sidecarset-rollout", parameters.into_iter().map(|(k, v)| (k.to_string(), v)).collect());
    let mut results = Vec::new();
    for &pods in &args.pods {
        results.push(measure(&args, cluster, &manager, pods, &mut report).await?);
    }
    let columns = [
        "pods",
        "create s",
        "all ready (kwok) s",
        "baseline: patch every pod once, s",
        "patches/s",
        "rollout s",
        "rollout ÷ baseline",
        "pod writes/pod",
        "other writes",
        "apiserver CPU s",
    ];
    let rows = results
        .iter()
        .map(|f| {
            vec![
                json!(f.pods),
                json!(f.create_secs),
                json!(f.ready_secs),
                json!(f.baseline_secs),
                json!(f.pods as f64 / f.baseline_secs),
                json!(f.rollout_secs),
                json!(f.rollout_secs / f.baseline_secs),
                json!(f.pod_writes / f.pods as f64),
                json!(f.other_writes),
                json!(f.apiserver_cpu),
            ]
        })
        .collect();
    report.tables.push(Table {
        title: "In-place SidecarSet rollout against a plain patch loop".into(),
        columns: columns.map(String::from).to_vec(),
        rows,
    });
    for f in &results {
        report.series.push(f.progress.clone());
    }
    report.finish(&args.out)
}

/// One pod count: in a fresh local cluster, or in the existing one (cleaned up after).
async fn measure(
    args: &RolloutArgs,
    cluster: &ClusterArgs,
    manager: &std::path::Path,
    pods: usize,
    report: &mut Report,
) -> anyhow::Result<Figures> {
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut env = Environment::start(cluster, &format!("rollout-{pods}"), args.nodes, Duration::from_secs(300)).await?;
    report.parameters.insert("cluster".into(), env.describe().into());
    let extra = [format!("--kube-api-qps={}", args.kube_api_qps), format!("--kube-api-burst={}", args.kube_api_burst)];
    env.start_managers(manager, "rollout", args.replicas, &extra, timeout).await?;
    let client = env.client.clone();

    let sets: Api<DynamicObject> = Api::all_with(client.clone(), &crate::sidecarsets());
    let set = |image: &str| -> anyhow::Result<DynamicObject> {
        Ok(serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
            "metadata": { "name": "bench" },
            "spec": {
                "selector": { "matchLabels": { "app": "bench" } },
                "updateStrategy": { "maxUnavailable": args.max_unavailable },
                "containers": [{ "name": SIDECAR, "image": image }]
            }
        }))?)
    };
    // The configurations point at a replica with its CA once the leader has synced them.
    let bench_set = set("proxy:1")?;
    let resource = crate::sidecarsets();
    crate::create_when_webhooks_answer("the SidecarSet", timeout, async || {
        env.create_cluster_object(&resource, &bench_set).await
    })
    .await?;
    let names: Vec<String> = (0..args.namespaces).map(namespace_name).collect();
    env.create_namespaces(&names, timeout).await?;
    // Every replica's webhook must see the set: probe pods until injected several times in a row.
    let probe: Api<Pod> = Api::namespaced(client.clone(), &names[0]);
    let mut injected_in_a_row = 0;
    let mut i = 0;
    wait_for("the webhooks to see the SidecarSet", timeout, async || {
        i += 1;
        let p = probe.create(&PostParams::default(), &pod(&format!("probe-{i}"), env.node(0))).await;
        let ok = p.ok().and_then(|p| p.spec).is_some_and(|s| s.containers.len() == 2);
        let _ = probe.delete(&format!("probe-{i}"), &Default::default()).await;
        injected_in_a_row = if ok { injected_in_a_row + 1 } else { 0 };
        injected_in_a_row >= 10
    })
    .await?;

    let create_secs =
        crate::create_pods(&client, &names, pods, args.concurrency, |name, i| pod(name, env.node(i))).await?;
    let n = pods as i64;
    // kwok's own pace (one status patch per pod): the other floor a rollout cannot beat.
    let started = Instant::now();
    let mut progress = Progress::new("pods ready", started, 1.0);
    wait_for("every pod injected, running and ready", timeout, async || {
        let s = status(&sets).await.0;
        progress.record(s[2] as f64, |_| format!("{} of {n} pods injected, {} ready", s[0], s[2]));
        s == [n, n, n, n]
    })
    .await?;
    let ready_secs = started.elapsed().as_secs_f64();

    // Baseline: the API server's own throughput for pod patches, `concurrency` at a time.
    let started = Instant::now();
    let patches = futures::stream::iter(0..pods).map(|i| {
        let api: Api<Pod> = Api::namespaced(client.clone(), &names[i % names.len()]);
        async move {
            let patch = json!({ "metadata": { "annotations": { "kruise-loadtest/touched": "1" } } });
            api.patch(&format!("bench-{i}"), &PatchParams::default(), &Patch::Merge(&patch)).await
        }
    });
    let patched: Vec<_> = patches.buffer_unordered(args.concurrency).collect().await;
    for p in patched {
        p.context("baseline patch")?;
    }
    let baseline_secs = started.elapsed().as_secs_f64();

    let writes = async || {
        (
            env.managers_sum("kruise_writer_requests_total", "resource=\"pods\"").await,
            env.managers_sum("kruise_writer_requests_total", "").await,
        )
    };
    let (pods_before, all_before) = writes().await;
    let api_before = env.apiserver_cpu_seconds().await;
    let started = Instant::now();
    let patch = json!({ "spec": { "containers": [{ "name": SIDECAR, "image": "proxy:2" }] } });
    sets.patch("bench", &PatchParams::default(), &Patch::Merge(&patch)).await?;
    // When each tenth of the pods was updated and ready again: the rollout's pace, wave by wave.
    let mut tenths: Vec<f64> = Vec::new();
    let mut progress = Progress::new(format!("% updated and ready, {pods} pods"), started, 0.5);
    wait_for("the rollout", timeout, async || {
        let (s, observed) = status(&sets).await;
        let updated_ready = if observed { s[3] } else { 0 };
        progress.record(updated_ready as f64 * 100.0 / n.max(1) as f64, |_| {
            format!("rollout: {updated_ready} of {n} pods updated and ready")
        });
        while observed && tenths.len() < 10 && s[3] * 10 >= n * (tenths.len() as i64 + 1) {
            tenths.push(started.elapsed().as_secs_f64());
        }
        observed && s == [n, n, n, n]
    })
    .await?;
    let rollout_secs = started.elapsed().as_secs_f64();
    println!(
        "{pods} pods: updated and ready by tenths at {} s",
        tenths.iter().map(|t| format!("{t:.1}")).collect::<Vec<_>>().join(", ")
    );
    let (pods_after, all_after) = writes().await;
    let apiserver_cpu = env.apiserver_cpu_seconds().await - api_before;
    println!("{}", env.add_processes(report, &format!(" ({pods} pods)")).await);
    env.clean_up(timeout).await?;
    let f = Figures {
        pods,
        create_secs,
        ready_secs,
        baseline_secs,
        rollout_secs,
        pod_writes: pods_after - pods_before,
        other_writes: (all_after - all_before) - (pods_after - pods_before),
        apiserver_cpu,
        progress: progress.finish(rollout_secs, 100.0),
    };
    println!(
        "\n{} pods: created in {:.1}s, all ready {:.1}s later; baseline {:.1}s; rollout {:.1}s ({:.2}× baseline), {:.2} pod writes per pod",
        pods,
        f.create_secs,
        f.ready_secs,
        f.baseline_secs,
        f.rollout_secs,
        f.rollout_secs / f.baseline_secs,
        f.pod_writes / pods as f64
    );
    Ok(f)
}
