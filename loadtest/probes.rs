//! `kruise-loadtest probe-marker-churn` (alias `probes`): PodProbeMarker at scale. Many kwok nodes and pods, one marker per
//! namespace with several exec probes per pod, kruise-daemon in simulated mode running every
//! probe, kruise-manager replicas fanning out and marking.
//!
//! Measured: time until every pod is first marked; then, with every probe running at its period,
//! the steady API write rate of the managers and the daemon; then the latency from changing a
//! probe's outcome (the simulated runtime's pod annotation) to the pod being marked with it
//! (p50/p99 over `--flips` pods), which includes the wait for the probe's next period; CPU and
//! peak RSS of the daemon and each manager replica.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{DynamicObject, Patch, PatchParams, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use crate::environment::{ClusterArgs, Environment};
use crate::report::{Latencies, Progress, Table, percentile};
use crate::{machine, wait_for};

#[derive(clap::Args, Clone)]
pub struct ProbesArgs {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    #[arg(long, default_value_t = 20000)]
    pods: usize,
    #[arg(long, default_value_t = 20)]
    namespaces: usize,
    /// Probes per pod (all in one marker per namespace).
    #[arg(long, default_value_t = 2)]
    probes: usize,
    #[arg(long, default_value_t = 10)]
    period_secs: i32,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Pods whose outcome is changed to measure marking latency.
    #[arg(long, default_value_t = 200)]
    flips: usize,
    /// How long the steady-state write rate is observed.
    #[arg(long, default_value_t = 60)]
    steady_secs: u64,
    #[arg(long, default_value_t = 64)]
    concurrency: usize,
    /// Write budget per process (managers and daemon).
    #[arg(long, default_value_t = 500.0)]
    kube_api_qps: f64,
    #[arg(long, default_value_t = 500)]
    kube_api_burst: u32,
    #[arg(long, default_value_t = 3600)]
    timeout_secs: u64,
    #[arg(long)]
    manager_bin: Option<std::path::PathBuf>,
    /// Where probe-marker-churn.json, .md and the plots go.
    #[arg(long, default_value = "target/loadtest")]
    out: std::path::PathBuf,
}

const IDLE_LABEL: &str = "bench-idle";
const EXEC_ANNOTATION: &str = "exec.sim.kruise.io/main";

fn namespace_name(i: usize) -> String {
    format!("{i:03}-probes")
}

fn pod(name: &str, node: &str) -> Pod {
    serde_json::from_value(json!({
        "metadata": { "name": name, "labels": { "app": "bench" },
                      "annotations": { EXEC_ANNOTATION: json!({"exitCode": 0}).to_string() } },
        "spec": { "nodeName": node,
                  "containers": [{ "name": "main", "image": "app:1" }] }
    }))
    .expect("pod")
}

/// One marker with `probes` probes on container `main`: the first drives the idle label and a
/// condition, the others a condition each.
fn marker(probes: usize, period: i32) -> serde_json::Value {
    let list: Vec<serde_json::Value> = (0..probes)
        .map(|i| {
            let mut p = json!({
                "name": format!("p{i}"), "containerName": "main",
                "probe": { "exec": { "command": ["/probe.sh"] }, "periodSeconds": period,
                           "initialDelaySeconds": 1, "timeoutSeconds": 1,
                           "successThreshold": 1, "failureThreshold": 1 },
                "podConditionType": format!("bench.kruise.io/p{i}"),
            });
            if i == 0 {
                p["markerPolicy"] = json!([
                    { "state": "Succeeded", "labels": { IDLE_LABEL: "true" } },
                    { "state": "Failed", "labels": { IDLE_LABEL: "false" } }
                ]);
            }
            p
        })
        .collect();
    json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "PodProbeMarker",
        "metadata": { "name": "bench" },
        "spec": { "selector": { "matchLabels": { "app": "bench" } }, "probes": list }
    })
}

/// Pods' idle labels as a watch sees them, with when each last changed.
#[derive(Default)]
struct Marks {
    idle: HashMap<(String, String), (Option<String>, Instant)>,
    /// Pods kwok has started (`Initialized=True`): only these can be probed.
    initialized: std::collections::HashSet<(String, String)>,
}

fn follow_marks(client: &Client, marks: Arc<Mutex<Marks>>) -> crate::Background {
    let api: Api<Pod> = Api::all(client.clone());
    let stream = watcher::watcher(api, watcher::Config::default().labels("app=bench")).default_backoff();
    crate::Background(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(e) = stream.next().await {
            let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) = (match e {
                Ok(e) => e,
                Err(_) => continue,
            }) else {
                continue;
            };
            let key = (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default());
            let value = p.metadata.labels.as_ref().and_then(|l| l.get(IDLE_LABEL).cloned());
            let Ok(mut m) = marks.lock() else { return };
            if kruise::controllers::pods::condition_is_true(&p, "Initialized") {
                m.initialized.insert(key.clone());
            }
            let changed = m.idle.get(&key).is_none_or(|(v, _)| *v != value);
            if changed {
                m.idle.insert(key, (value, Instant::now()));
            }
        }
    }))
}

pub async fn probes(args: ProbesArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let manager = crate::manager_binary(args.manager_bin.as_deref())?;
    let daemon = manager.with_file_name("kruise-daemon");
    anyhow::ensure!(daemon.exists(), "{} not found: build it next to kruise-manager", daemon.display());
    println!(
        "# kruise-loadtest probes: {} nodes, {} pods in {} namespaces, {} probes each every {} s, {} replicas",
        args.nodes, args.pods, args.namespaces, args.probes, args.period_secs, args.replicas
    );
    println!("machine: {}; manager: {}", machine(), manager.display());
    let timeout = Duration::from_secs(args.timeout_secs);
    let parameters = [
        ("nodes", json!(args.nodes)),
        ("pods", json!(args.pods)),
        ("namespaces", json!(args.namespaces)),
        ("probes_per_pod", json!(args.probes)),
        ("period_secs", json!(args.period_secs)),
        ("replicas", json!(args.replicas)),
        ("flips", json!(args.flips)),
        ("steady_secs", json!(args.steady_secs)),
    ];
    let mut env = Environment::start(cluster, "probes", args.nodes, Duration::from_secs(600)).await?;
    let mut report = env.report("probe-marker-churn", &parameters);
    let client = env.client.clone();
    let nodes = env.node_count();

    let extra = [
        format!("--kube-api-qps={}", args.kube_api_qps),
        format!("--kube-api-burst={}", args.kube_api_burst),
        "--controllers=podprobemarker".to_string(),
    ];
    env.start_managers(&manager, "probes", args.replicas, &extra, timeout).await?;
    let daemon_flags =
        [format!("--kube-api-qps={}", args.kube_api_qps), format!("--kube-api-burst={}", args.kube_api_burst)];
    env.start_simulated_daemon(&daemon, "probes-daemon", &daemon_flags, timeout).await?;

    let npps: Api<DynamicObject> =
        Api::all_with(client.clone(), &kube::api::ApiResource::erase::<kruise::api::nodepodprobe::NodePodProbe>(&()));
    let started = Instant::now();
    wait_for("a NodePodProbe per node", timeout, async || {
        npps.list(&Default::default()).await.is_ok_and(|l| l.items.len() >= nodes)
    })
    .await?;
    println!("NodePodProbes for {nodes} nodes after {:.1} s", started.elapsed().as_secs_f64());

    let names: Vec<String> = (0..args.namespaces).map(namespace_name).collect();
    env.create_namespaces(&names, timeout).await?;
    let marks = Arc::new(Mutex::new(Marks::default()));
    let _following = follow_marks(&client, marks.clone());

    let create_secs =
        crate::create_pods(&client, &names, args.pods, args.concurrency, |name, i| pod(name, env.node(i))).await?;
    println!("{} pods created in {create_secs:.1} s", args.pods);
    // The markers come once kwok has started every pod, so the marking phase measures kruise-rs
    // rather than kwok's status updates (which load the same API server).
    let started = Instant::now();
    wait_for("kwok to start every pod", timeout, async || marks.lock().is_ok_and(|m| m.initialized.len() >= args.pods))
        .await?;
    let kwok_secs = started.elapsed().as_secs_f64();
    println!("kwok started every pod {kwok_secs:.1} s later");

    let load_before_markers = crate::ApiServerLoad::read(&client).await;
    let started = Instant::now();
    for n in &names {
        let api: Api<DynamicObject> = Api::namespaced_with(
            client.clone(),
            n,
            &kube::api::ApiResource::erase::<kruise::api::podprobemarker::PodProbeMarker>(&()),
        );
        let m: DynamicObject = serde_json::from_value(marker(args.probes, args.period_secs))?;
        crate::create_when_webhooks_answer("a PodProbeMarker", timeout, async || {
            api.create(&PostParams::default(), &m).await
        })
        .await?;
    }
    let marked_true = |m: &Marks| m.idle.values().filter(|(v, _)| v.as_deref() == Some("true")).count();
    // (Counting the daemon's states too would mean listing every NodePodProbe, which at 1000
    // nodes costs the API server more than the run itself.)
    let mut progress = Progress::new("pods marked", started, 0.5);
    wait_for("every pod marked idle", timeout, async || {
        let marked = marks.lock().map(|m| marked_true(&m)).unwrap_or(0);
        progress.record(marked as f64, |_| format!("{marked} of {} pods marked", args.pods));
        marked >= args.pods
    })
    .await?;
    let first_marks_secs = started.elapsed().as_secs_f64();
    report.series.push(progress.finish(first_marks_secs, args.pods as f64));
    println!("every pod marked {first_marks_secs:.1} s after the markers were created");
    let load_marked = crate::ApiServerLoad::read(&client).await;
    load_marked.report(&load_before_markers, "until every pod was marked", first_marks_secs, 12);
    report.add_requests("until every pod was marked", first_marks_secs, &load_marked, &load_before_markers);

    // Steady state: every probe running at its period, nothing changing.
    let writes = async || {
        (
            env.managers_sum("kruise_writer_requests_total", "").await,
            env.daemons_sum("kruise_writer_requests_total", "").await,
            env.daemons_sum("kruise_daemon_probe_runs_total", "").await,
        )
    };
    let cpu = async |processes: &[crate::environment::KruiseProcess]| {
        let mut v = Vec::new();
        for p in processes {
            v.push(p.figures().await.cpu_seconds);
        }
        v
    };
    let (m0, d0, r0) = writes().await;
    let (daemon_cpu0, manager_cpu0) = (cpu(&env.daemons).await, cpu(&env.managers).await);
    tokio::time::sleep(Duration::from_secs(args.steady_secs)).await;
    let (m1, d1, r1) = writes().await;
    let secs = args.steady_secs as f64;
    let load_steady = crate::ApiServerLoad::read(&client).await;
    load_steady.report(&load_marked, "steady state", secs, 8);
    report.add_requests("steady state", secs, &load_steady, &load_marked);
    let (steady_daemon_writes, steady_manager_writes) = ((d1 - d0) / secs, (m1 - m0) / secs);
    let cores = |after: Vec<f64>, before: &[f64]| {
        after.iter().zip(before).map(|(a, b)| format!("{:.2}", (a - b) / secs)).collect::<Vec<_>>().join("/")
    };
    println!(
        "steady {secs:.0} s: {:.1} probe runs/s, daemon writes {steady_daemon_writes:.2}/s, manager writes {steady_manager_writes:.2}/s, daemon CPU {} cores, manager CPU {} cores",
        (r1 - r0) / secs,
        cores(cpu(&env.daemons).await, &daemon_cpu0),
        cores(cpu(&env.managers).await, &manager_cpu0),
    );

    // Flips: change the outcome of `flips` pods, spread over the namespaces, and time each mark.
    let flips = args.flips.min(args.pods);
    let step = (args.pods / flips.max(1)).max(1);
    let targets: Vec<(String, String)> =
        (0..flips).map(|k| k * step).map(|i| (names[i % names.len()].clone(), format!("bench-{i}"))).collect();
    let (m0, d0, _) = writes().await;
    let flip_started = Instant::now();
    let mut sent_at: HashMap<(String, String), Instant> = HashMap::new();
    let patch = json!({ "metadata": { "annotations": { EXEC_ANNOTATION: json!({"exitCode": 1, "stderr": "busy"}).to_string() } } });
    for (ns, name) in &targets {
        let api: Api<Pod> = Api::namespaced(client.clone(), ns);
        sent_at.insert((ns.clone(), name.clone()), Instant::now());
        api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await?;
    }
    wait_for("every flipped pod marked busy", timeout, async || {
        marks
            .lock()
            .is_ok_and(|m| targets.iter().all(|k| m.idle.get(k).is_some_and(|(v, _)| v.as_deref() == Some("false"))))
    })
    .await?;
    let flip_secs = flip_started.elapsed().as_secs_f64();
    let load_flips = crate::ApiServerLoad::read(&client).await;
    load_flips.report(&load_steady, "flips", flip_secs, 8);
    report.add_requests("flips", flip_secs, &load_flips, &load_steady);
    let (m1, d1, _) = writes().await;
    let mut latencies: Vec<f64> = {
        let m = marks.lock().map_err(|_| anyhow::anyhow!("marks poisoned"))?;
        targets.iter().filter_map(|k| Some(m.idle.get(k)?.1.duration_since(*sent_at.get(k)?).as_secs_f64())).collect()
    };
    latencies.sort_by(|a, b| a.total_cmp(b));

    // What each replica wrote, and whether shards moved (a new owner starts without the
    // previous one's memory of recent writes).
    for r in &env.managers {
        let m = r.scrape().await;
        let count = |kind: &str, result: &str| {
            m.sum("kruise_podprobemarker_writes_total", &format!("kind=\"{kind}\",result=\"{result}\""))
        };
        let handoffs = |d: &str| m.sum("kruise_shard_handoffs_total", &format!("direction=\"{d}\""));
        println!(
            "{}: applies {}/{} failed, pod marks {}/{} failed; shards acquired {}, released {}, lost {}",
            r.name,
            count("nodepodprobe_apply", "success"),
            count("nodepodprobe_apply", "error"),
            count("pod_mark", "success"),
            count("pod_mark", "error"),
            handoffs("acquired"),
            handoffs("released"),
            handoffs("lost"),
        );
    }

    let columns = [
        "nodes",
        "pods",
        "probes/pod",
        "period s",
        "pods created s",
        "kwok started them s",
        "all marked s",
        "steady daemon writes/s",
        "steady manager writes/s",
        "flip→marked p50 s",
        "p99 s",
        "max s",
        "flip-phase writes (daemon/manager)",
        "flip phase s",
    ];
    let row = vec![
        json!(nodes),
        json!(args.pods),
        json!(args.probes),
        json!(args.period_secs),
        json!(create_secs),
        json!(kwok_secs),
        json!(first_marks_secs),
        json!(steady_daemon_writes),
        json!(steady_manager_writes),
        json!(percentile(&latencies, 0.5)),
        json!(percentile(&latencies, 0.99)),
        json!(latencies.last().copied().unwrap_or(f64::NAN)),
        json!(format!("{:.0}/{:.0}", d1 - d0, m1 - m0)),
        json!(flip_secs),
    ];
    report.tables.push(Table {
        title: "Probe marking at scale".into(),
        columns: columns.map(String::from).to_vec(),
        rows: vec![row],
    });
    report.latencies.push(Latencies { name: "probe outcome change → pod marked".into(), seconds: latencies.clone() });
    println!("{}", env.add_processes(&mut report, "").await);
    env.clean_up(timeout).await?;
    report.finish(&args.out)
}
