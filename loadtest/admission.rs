//! `kruise-loadtest pod-create-with-injection` (alias `admission`): pod-create latency through the real API server with the pod
//! webhook installed and 0, 1 or 10 SidecarSets selecting the pods, at a sustained create rate;
//! plus the webhook's own handling time from its histogram.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, bail};
use k8s_openapi::api::admissionregistration::v1::MutatingWebhookConfiguration;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::Api;
use kube::api::{DeleteParams, PostParams};
use kube::core::DynamicObject;
use serde_json::json;

use crate::environment::{ClusterArgs, Environment, KruiseProcess};
use crate::report::{Latencies, Progress, Table, percentile};
use crate::{machine, wait_for};

/// How long the benchmark waits for its cluster to get where it needs.
const WAIT: Duration = Duration::from_secs(60);

#[derive(clap::Args, Clone)]
pub struct AdmissionArgs {
    /// Pods created per configuration.
    #[arg(long, default_value_t = 300)]
    pods: usize,
    /// Pods created per second.
    #[arg(long, default_value_t = 20.0)]
    rate: f64,
    /// Numbers of SidecarSets selecting the pods, in order.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10")]
    sidecarsets: Vec<usize>,
    /// The kruise-manager to run; by default the one next to this binary.
    #[arg(long)]
    manager_bin: Option<PathBuf>,
    /// Extra kruise-manager flags (e.g. `--controllers=-sidecarset`), for a local cluster.
    #[arg(long, allow_hyphen_values = true)]
    manager_flag: Vec<String>,
    /// Where pod-create-with-injection.json, .md and the plots go.
    #[arg(long, default_value = "target/loadtest")]
    out: PathBuf,
}

const PATH: &str = "/mutate-pod";

/// The handler histogram's buckets for the pod path over every measured replica: (upper bound,
/// cumulative count), sum and count.
async fn handler_histogram(managers: &[KruiseProcess]) -> (Vec<(f64, f64)>, f64, f64) {
    let mut text = String::new();
    for m in managers {
        text += &m.scrape().await.0;
    }
    let mut buckets = Vec::new();
    let (mut sum, mut count) = (0.0, 0.0);
    for line in text.lines().filter(|l| l.contains(&format!("path=\"{PATH}\""))) {
        let Some((series, value)) = line.rsplit_once(' ') else { continue };
        let value: f64 = value.parse().unwrap_or(0.0);
        if series.starts_with("kruise_webhook_handling_seconds_bucket") {
            let le = series.split("le=\"").nth(1).and_then(|r| r.split('"').next()).unwrap_or("+Inf");
            let bound = if le == "+Inf" { f64::INFINITY } else { le.parse().unwrap_or(f64::INFINITY) };
            match buckets.iter_mut().find(|(b, _)| *b == bound) {
                Some((_, c)) => *c += value, // allowed="true" and "false" series, and replicas
                None => buckets.push((bound, value)),
            }
        } else if series.starts_with("kruise_webhook_handling_seconds_sum") {
            sum += value;
        } else if series.starts_with("kruise_webhook_handling_seconds_count") {
            count += value;
        }
    }
    buckets.sort_by(|a, b| a.0.total_cmp(&b.0));
    (buckets, sum, count)
}

/// The smallest bucket bound holding quantile `q` of the requests between two scrapes.
fn bucket_quantile(before: &[(f64, f64)], after: &[(f64, f64)], q: f64) -> f64 {
    let delta: Vec<(f64, f64)> = after
        .iter()
        .map(|(b, c)| (*b, c - before.iter().find(|(x, _)| x == b).map(|(_, v)| *v).unwrap_or(0.0)))
        .collect();
    let total = delta.last().map(|(_, c)| *c).unwrap_or(0.0);
    delta.iter().find(|(_, c)| *c >= q * total).map(|(b, _)| *b).unwrap_or(f64::NAN)
}

async fn webhook_port(log: &std::path::Path) -> anyhow::Result<u16> {
    for _ in 0..120 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        if let Some(p) = crate::cluster::process::logged_webhook_port(&text) {
            return Ok(p);
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    bail!("the manager never logged its webhook port; see {}", log.display())
}

fn pod(name: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": "bench" } },
        "spec": { "containers": [{ "name": "main", "image": "nginx:1.27" }] }
    }))
    .unwrap_or_default()
}

pub async fn admission(args: AdmissionArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let manager = crate::manager_binary(args.manager_bin.as_deref())?;
    println!("# kruise-loadtest admission: {} pods per configuration at {}/s", args.pods, args.rate);
    println!("machine: {}; manager: {}", machine(), manager.display());
    let mut env = Environment::start(cluster, "admission", 0, Duration::from_secs(120)).await?;
    let client = env.client.clone();
    env.start_managers(&manager, "admission-bench", 1, &args.manager_flag, WAIT).await?;
    // A manager this run started: wait until the leader (it) points the webhooks at itself.
    if let Some(log) = env.managers.first_mut().and_then(|m| m.local()).map(|p| p.log.clone()) {
        let port = webhook_port(&log).await?;
        let mutating: Api<MutatingWebhookConfiguration> = Api::all(client.clone());
        wait_for("the pod webhook to point at the manager", WAIT, async || {
            let m = mutating.get(kruise::webhook::configuration::MUTATING_CONFIGURATION).await.ok();
            m.and_then(|m| m.webhooks).is_some_and(|w| {
                w.iter().all(|w| w.client_config.url.as_deref().is_some_and(|u| u.contains(&format!(":{port}/"))))
            })
        })
        .await?;
    }

    println!(
        "\n| SidecarSets matching | pods | create p50 ms | create p99 ms | handler mean ms | handler p50 ≤ ms | handler p99 ≤ ms |"
    );
    println!("|---|---|---|---|---|---|---|");
    let parameters = [
        ("pods", json!(args.pods)),
        ("rate_per_s", json!(args.rate)),
        ("sidecarsets", json!(args.sidecarsets)),
        ("manager_flags", json!(args.manager_flag)),
    ];
    let mut report = env.report("pod-create-with-injection", &parameters);
    let mut table = Table {
        title: "Pod creation through the sidecar-injecting webhook".into(),
        columns: [
            "SidecarSets matching",
            "pods",
            "create p50 ms",
            "create p90 ms",
            "create p99 ms",
            "handler mean ms",
            "handler p50 ≤ ms",
            "handler p99 ≤ ms",
        ]
        .map(String::from)
        .to_vec(),
        rows: Vec::new(),
    };
    let resource = crate::sidecarsets();
    let sets: Api<DynamicObject> = Api::all_with(client.clone(), &resource);
    let mut created = 0;
    for (round, n) in args.sidecarsets.iter().enumerate() {
        // Only this run's sets: the cluster may hold others.
        for i in *n..created {
            sets.delete(&format!("bench-{i}"), &DeleteParams::default()).await?;
        }
        for i in created..*n {
            let set: DynamicObject = serde_json::from_value(json!({
                "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
                "metadata": { "name": format!("bench-{i}") },
                "spec": {
                    "selector": { "matchLabels": { "app": "bench" } },
                    "containers": [{ "name": format!("kruise-loadtest-sidecar-{i}"), "image": "busybox:1.36",
                                     "env": [{ "name": "TZ", "value": "UTC" }],
                                     "transferEnv": [{ "sourceContainerName": "main", "envName": "TZ" }] }]
                }
            }))?;
            env.create_cluster_object(&resource, &set).await?;
        }
        created = *n;
        let namespace = format!("bench-{round}");
        env.create_namespaces(std::slice::from_ref(&namespace), WAIT).await?;
        let pods: Api<Pod> = Api::namespaced(client.clone(), &namespace);
        // The webhook reads SidecarSets from a watch: wait until a probe pod gets all n sidecars.
        let mut probe = 0;
        wait_for("the webhook to see the SidecarSets", WAIT, async || {
            probe += 1;
            let created = pods.create(&PostParams::default(), &pod(&format!("probe-{probe}"))).await;
            created.ok().and_then(|p| p.spec).is_some_and(|s| s.containers.len() == n + 1)
        })
        .await?;

        let before = handler_histogram(&env.managers).await;
        let interval = Duration::from_secs_f64(1.0 / args.rate.max(0.1));
        let started = Instant::now();
        let mut tasks = Vec::new();
        let mut progress = Progress::new("pods sent", started, 1.0);
        for i in 0..args.pods {
            tokio::time::sleep_until((started + interval * i as u32).into()).await;
            progress.record(i as f64, |_| format!("{n} SidecarSets: {i} of {} pods sent", args.pods));
            let pods = pods.clone();
            tasks.push(tokio::spawn(async move {
                let t = Instant::now();
                let r = pods.create(&PostParams::default(), &pod(&format!("p-{i}"))).await;
                r.map(|_| t.elapsed().as_secs_f64() * 1000.0)
            }));
        }
        let mut latencies = Vec::new();
        for t in tasks {
            latencies.push(t.await?.context("creating a pod")?);
        }
        latencies.sort_by(f64::total_cmp);
        let after = handler_histogram(&env.managers).await;
        let handled = after.2 - before.2;
        let mean_ms = if handled > 0.0 { (after.1 - before.1) / handled * 1000.0 } else { f64::NAN };
        println!(
            "| {n} | {} | {:.1} | {:.1} | {:.3} | {} | {} |",
            args.pods,
            percentile(&latencies, 0.5),
            percentile(&latencies, 0.99),
            mean_ms,
            bucket_quantile(&before.0, &after.0, 0.5) * 1000.0,
            bucket_quantile(&before.0, &after.0, 0.99) * 1000.0,
        );
        table.rows.push(vec![
            json!(n),
            json!(args.pods),
            json!(percentile(&latencies, 0.5)),
            json!(percentile(&latencies, 0.9)),
            json!(percentile(&latencies, 0.99)),
            json!(mean_ms),
            json!(bucket_quantile(&before.0, &after.0, 0.5) * 1000.0),
            json!(bucket_quantile(&before.0, &after.0, 0.99) * 1000.0),
        ]);
        report.latencies.push(Latencies {
            name: format!("pod create, {n} SidecarSets"),
            seconds: latencies.iter().map(|ms| ms / 1000.0).collect(),
        });
        let _ = Api::<Namespace>::all(client.clone()).delete(&namespace, &DeleteParams::background()).await;
    }
    println!("{}", env.add_processes(&mut report, "").await);
    env.clean_up(WAIT).await?;
    report.tables.push(table);
    report.finish(&args.out)
}

#[derive(clap::Args, Clone)]
pub struct InjectionArgs {
    /// Injections timed per configuration.
    #[arg(long, default_value_t = 20_000)]
    iterations: usize,
    /// Numbers of SidecarSets selecting the pod, in order.
    #[arg(long, value_delimiter = ',', default_value = "0,1,10")]
    sidecarsets: Vec<usize>,
}

/// The pod webhook's decision alone, in this process: injection plus the JSON patch, per call.
/// Separates the handler's own cost from a loaded machine's scheduling noise.
pub fn injection(args: InjectionArgs) -> anyhow::Result<()> {
    use k8s_openapi::api::apps::v1::ControllerRevision;
    use kruise::api::sidecarset::SidecarSet;
    use kruise::controllers::sidecarset::injection::inject;
    println!("# kruise-loadtest injection: {} in-process injections per row", args.iterations);
    println!("machine: {}", machine());
    println!("\n| SidecarSets matching | mean µs | p50 µs | p99 µs |");
    println!("|---|---|---|---|");
    let pod_json = json!({
        "metadata": { "name": "p", "namespace": "bench", "labels": { "app": "bench" } },
        "spec": { "containers": [{ "name": "main", "image": "nginx:1.27", "env": [{ "name": "TZ", "value": "UTC" }] }] }
    });
    let pod: Pod = serde_json::from_value(pod_json.clone())?;
    for n in &args.sidecarsets {
        let sets: Vec<SidecarSet> = (0..*n)
            .map(|i| -> anyhow::Result<SidecarSet> {
                let mut s: SidecarSet = serde_json::from_value(json!({
                    "metadata": { "name": format!("bench-{i}") },
                    "spec": {
                        "selector": { "matchLabels": { "app": "bench" } },
                        "containers": [{ "name": format!("kruise-loadtest-sidecar-{i}"), "image": "busybox:1.36",
                                         "transferEnv": [{ "sourceContainerName": "main", "envName": "TZ" }] }]
                    }
                }))?;
                kruise::api::validation::sidecarset::default_sidecarset(&mut s);
                // As stored: the mutating webhook has written both hashes.
                let (hash, without_image) = kruise::controllers::sidecarset::hash::sidecarset_hashes(&s);
                let annotations = s.metadata.annotations.get_or_insert_with(Default::default);
                annotations.insert("kruise.io/sidecarset-hash".into(), hash);
                annotations.insert("kruise.io/sidecarset-hash-without-image".into(), without_image);
                Ok(s)
            })
            .collect::<anyhow::Result<_>>()?;
        let mut micros = Vec::with_capacity(args.iterations);
        for _ in 0..args.iterations {
            let t = Instant::now();
            if let Some(injected) = inject(&pod, "bench", &sets, &[] as &[ControllerRevision], "2026-11-30T00:00:00Z")?
            {
                let after = serde_json::to_value(&injected)?;
                let patch = kruise::webhook::admission::patch_between(&pod_json, &after)?;
                std::hint::black_box(serde_json::to_vec(&patch)?);
            }
            micros.push(t.elapsed().as_secs_f64() * 1e6);
        }
        micros.sort_by(f64::total_cmp);
        let mean = micros.iter().sum::<f64>() / micros.len().max(1) as f64;
        println!("| {n} | {mean:.1} | {:.1} | {:.1} |", percentile(&micros, 0.5), percentile(&micros, 0.99));
    }
    Ok(())
}
