//! `kruise-loadtest image-pull-fanout` (alias `images`): one image pre-downloaded onto many kwok nodes by an ImagePullJob,
//! for several parallelism settings, with kruise-daemon in simulated mode pulling for every node
//! (each pull takes `--pull-ms`).
//!
//! Measured per parallelism `p`: the time from creating the job until it completes, against the
//! ideal `ceil(nodes / p) × pull time` (what a controller with no overhead would take), the most
//! nodes seen pulling the image at once (never above `p`), and the API requests of the run by
//! verb and resource, with the managers' and the daemon's writes.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::StreamExt;
use kube::api::{DynamicObject, PostParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use kruise::api::imagepulljob::ImagePullJob;
use kruise::api::nodeimage::NodeImage;

use crate::environment::{ClusterArgs, Environment};
use crate::report::{Progress, Table};
use crate::{machine, wait_for};

#[derive(clap::Args, Clone)]
pub struct ImagesArgs {
    #[arg(long, default_value_t = 1000)]
    nodes: usize,
    /// Parallelism settings to measure, in order (one job each, each its own image).
    #[arg(long, value_delimiter = ',', default_value = "100,10,1")]
    parallelism: Vec<usize>,
    /// How long each simulated pull takes.
    #[arg(long, default_value_t = 1000)]
    pull_ms: u64,
    #[arg(long, default_value_t = 3)]
    replicas: usize,
    /// Write budget per process (managers and daemon).
    #[arg(long, default_value_t = 500.0)]
    kube_api_qps: f64,
    #[arg(long, default_value_t = 500)]
    kube_api_burst: u32,
    /// Extra kruise-daemon flags (e.g. `--image-status-flush-interval=100ms`).
    #[arg(long, allow_hyphen_values = true)]
    daemon_flag: Vec<String>,
    #[arg(long, default_value_t = 7200)]
    timeout_secs: u64,
    #[arg(long)]
    manager_bin: Option<std::path::PathBuf>,
    /// Where image-pull-fanout.json, .md and the plots go.
    #[arg(long, default_value = "target/loadtest")]
    out: std::path::PathBuf,
}

const NAMESPACE: &str = "images-bench";
const IMAGE: &str = "bench.local/app";

/// Per tag: per node, whether its NodeImage holds an unfinished pull of `IMAGE:tag`, and the
/// most nodes at once.
#[derive(Default)]
struct Pulling {
    unfinished: BTreeMap<String, BTreeMap<String, bool>>,
    most: BTreeMap<String, usize>,
}

/// Follows every NodeImage and keeps [`Pulling`] (each watch event is one point in the API
/// server's order, so the count after it is exact at that version).
fn follow_pulls(client: &Client, pulling: Arc<Mutex<Pulling>>) -> crate::Background {
    let stream =
        watcher::watcher(Api::<NodeImage>::all(client.clone()), Default::default()).default_backoff().applied_objects();
    crate::Background(tokio::spawn(async move {
        let mut stream = std::pin::pin!(stream);
        while let Some(ni) = stream.next().await {
            let Ok(ni) = ni else { continue };
            let node = ni.metadata.name.clone().unwrap_or_default();
            let Ok(mut p) = pulling.lock() else { return };
            let tags = ni.spec.images.as_ref().and_then(|m| m.get(IMAGE)).map(|s| s.tags.clone()).unwrap_or_default();
            let mut tracked: Vec<String> = p.unfinished.keys().cloned().collect();
            tracked.extend(tags.iter().map(|t| t.tag.clone()));
            for tag in tracked {
                let spec = tags.iter().find(|t| t.tag == tag);
                let unfinished = spec.is_some_and(|t| {
                    let s = ni.status.as_ref().and_then(|s| s.tag_at(IMAGE, &tag, t.version));
                    s.is_none_or(|s| s.completion_time.is_none())
                });
                let per_node = p.unfinished.entry(tag.clone()).or_default();
                per_node.insert(node.clone(), unfinished);
                let now = per_node.values().filter(|u| **u).count();
                let most = p.most.entry(tag).or_default();
                *most = (*most).max(now);
            }
        }
    }))
}

struct Run {
    parallelism: usize,
    seconds: f64,
    ideal: f64,
    most_pulling: usize,
    succeeded: i32,
    manager_writes: f64,
    daemon_writes: f64,
    requests: f64,
}

pub async fn images(args: ImagesArgs, cluster: &ClusterArgs) -> anyhow::Result<()> {
    let manager = crate::manager_binary(args.manager_bin.as_deref())?;
    let daemon = manager.with_file_name("kruise-daemon");
    anyhow::ensure!(daemon.exists(), "{} not found: build it next to kruise-manager", daemon.display());
    println!(
        "# kruise-loadtest images: {} nodes, parallelism {:?}, {} ms pulls, {} replicas",
        args.nodes, args.parallelism, args.pull_ms, args.replicas
    );
    println!("machine: {}; manager: {}", machine(), manager.display());
    let timeout = Duration::from_secs(args.timeout_secs);
    let mut env = Environment::start(cluster, "images", args.nodes, Duration::from_secs(600)).await?;
    let client = env.client.clone();
    let nodes = env.node_count();

    let extra = [
        format!("--kube-api-qps={}", args.kube_api_qps),
        format!("--kube-api-burst={}", args.kube_api_burst),
        "--controllers=imagepulljob".to_string(),
        "--nodeimage-creation-delay=0s".to_string(),
    ];
    env.start_managers(&manager, "images", args.replicas, &extra, timeout).await?;
    let mut daemon_flags = vec![
        format!("--simulated-pull-time={}ms", args.pull_ms),
        format!("--kube-api-qps={}", args.kube_api_qps),
        format!("--kube-api-burst={}", args.kube_api_burst),
    ];
    daemon_flags.extend(args.daemon_flag.iter().cloned());
    println!("daemon flags: {}", daemon_flags.join(" "));
    env.start_simulated_daemon(&daemon, "images-daemon", &daemon_flags, timeout).await?;

    let node_images: Api<NodeImage> = Api::all(client.clone());
    let started = Instant::now();
    wait_for("a NodeImage per node", timeout, async || {
        node_images.list(&Default::default()).await.is_ok_and(|l| l.items.len() >= nodes)
    })
    .await?;
    println!("NodeImages for {nodes} nodes after {:.1} s", started.elapsed().as_secs_f64());
    env.create_namespaces(&[NAMESPACE.to_string()], timeout).await?;
    let pulling = Arc::new(Mutex::new(Pulling::default()));
    let _following = follow_pulls(&client, pulling.clone());

    let writes = async || {
        (
            env.managers_sum("kruise_writer_requests_total", "").await,
            env.daemons_sum("kruise_writer_requests_total", "").await,
        )
    };
    // A cluster the run did not start may have other nodes: the jobs name the ones it uses.
    let selector = match env.control_plane() {
        Some(_) => None,
        None => Some(json!({ "names": (0..nodes).map(|i| env.node(i)).collect::<Vec<_>>() })),
    };
    let parameters = [
        ("nodes", json!(args.nodes)),
        ("parallelism", json!(args.parallelism)),
        ("pull_ms", json!(args.pull_ms)),
        ("replicas", json!(args.replicas)),
        ("kube_api_qps", json!(args.kube_api_qps)),
        ("daemon_flags", json!(args.daemon_flag)),
    ];
    let mut report = env.report("image-pull-fanout", &parameters);
    let jobs: Api<ImagePullJob> = Api::namespaced(client.clone(), NAMESPACE);
    let pull_secs = args.pull_ms as f64 / 1000.0;
    let mut runs = Vec::new();
    for &p in &args.parallelism {
        let tag = format!("p{p}");
        let name = format!("bench-{tag}");
        let mut job = json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": name },
            "spec": { "image": format!("{IMAGE}:{tag}"), "parallelism": p,
                      "completionPolicy": { "type": "Always" } }
        });
        if let Some(selector) = &selector {
            job["spec"]["selector"] = selector.clone();
        }
        let dynamic: Api<DynamicObject> =
            Api::namespaced_with(client.clone(), NAMESPACE, &kube::api::ApiResource::erase::<ImagePullJob>(&()));
        let (m0, d0) = writes().await;
        let load0 = crate::ApiServerLoad::read(&client).await;
        let started = Instant::now();
        dynamic.create(&PostParams::default(), &serde_json::from_value(job)?).await?;
        let mut status = None;
        let mut progress = Progress::new(format!("nodes succeeded, parallelism {p}"), started, 0.2);
        wait_for(&format!("job {name} to complete"), timeout, async || {
            status = jobs.get_opt(&name).await.ok().flatten().and_then(|j| j.status);
            let s = status.clone().unwrap_or_default();
            progress.record(f64::from(s.succeeded), |_| {
                format!(
                    "parallelism {p}: {} succeeded, {} active, {} failed of {}",
                    s.succeeded, s.active, s.failed, s.desired
                )
            });
            status.as_ref().is_some_and(|s| s.completion_time.is_some())
        })
        .await?;
        let seconds = started.elapsed().as_secs_f64();
        let (m1, d1) = writes().await;
        let load1 = crate::ApiServerLoad::read(&client).await;
        load1.report(&load0, &format!("parallelism {p}"), seconds, 8);
        report.add_requests(&format!("parallelism {p}"), seconds, &load1, &load0);
        report.series.push(progress.finish(seconds, f64::from(status.as_ref().map_or(0, |s| s.succeeded))));
        let requests: f64 = load1.since(&load0).iter().filter(|r| r.0 != "WATCH").map(|r| r.2).sum();
        let s = status.unwrap_or_default();
        let most_pulling = pulling.lock().ok().and_then(|p| p.most.get(&tag).copied()).unwrap_or(0);
        let steps = nodes.div_ceil(p.max(1));
        let ideal = steps as f64 * pull_secs;
        println!(
            "parallelism {p}: complete after {seconds:.1} s (ideal {ideal:.0} s, ×{:.2}; {:.2} s per step over the pull), {} succeeded, {} failed, at most {most_pulling} nodes pulling",
            seconds / ideal,
            (seconds - ideal) / steps as f64,
            s.succeeded,
            s.failed
        );
        runs.push(Run {
            parallelism: p,
            seconds,
            ideal,
            most_pulling,
            succeeded: s.succeeded,
            manager_writes: m1 - m0,
            daemon_writes: d1 - d0,
            requests,
        });
    }

    println!("\n{}", env.add_processes(&mut report, "").await);
    let columns = [
        "nodes",
        "parallelism",
        "complete s",
        "ideal s",
        "ratio",
        "overhead per step s",
        "most pulling at once",
        "succeeded",
        "manager writes",
        "daemon writes",
        "API requests (excl. watches)",
    ];
    let rows = runs
        .iter()
        .map(|r| {
            let steps = nodes.div_ceil(r.parallelism.max(1)) as f64;
            vec![
                json!(nodes),
                json!(r.parallelism),
                json!(r.seconds),
                json!(r.ideal),
                json!(r.seconds / r.ideal),
                json!((r.seconds - r.ideal) / steps),
                json!(r.most_pulling),
                json!(r.succeeded),
                json!(r.manager_writes),
                json!(r.daemon_writes),
                json!(r.requests),
            ]
        })
        .collect();
    report.tables.push(Table {
        title: "One image onto every node, per parallelism".into(),
        columns: columns.map(String::from).to_vec(),
        rows,
    });
    env.clean_up(timeout).await?;
    report.finish(&args.out)
}
