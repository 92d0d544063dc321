//! Where a scenario runs and what it can see of the controller under test.
//!
//! `--cluster local` (the default) starts a fresh local control plane (the Go-built
//! kube-apiserver, etcd, kube-controller-manager and kwok nodes) per scenario and runs kruise-rs
//! in it as local processes, so per-process figures come from `/proc`. `--kubeconfig` (or
//! `--cluster kind`, which creates a kind cluster first) drives a cluster that already runs an
//! `apps.kruise.io/v1alpha1` controller: the scenario starts nothing there, talks to it only
//! through the Kubernetes API, uses nodes matching `--node-selector`, reads the controller's
//! processes' CPU, memory and writes from the `/metrics` endpoints it is given, and deletes what
//! it created when it ends.

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Node, ServiceAccount};
use kube::api::{ApiResource, DeleteParams, DynamicObject, ListParams, ObjectMeta, PostParams};
use kube::{Api, Client};

use crate::cluster::process::{Component, http_get};
use crate::cluster::{ControlPlane, Lifetime};
use crate::{Scrape, wait_for};
use kruise::runtime::process_metrics::ProcessFigures;

#[derive(Clone, Copy, PartialEq, Eq, Debug, clap::ValueEnum)]
pub enum ClusterKind {
    /// A fresh local control plane with kwok nodes per scenario, and kruise-rs started by the run.
    Local,
    /// Create a kind cluster (needs docker and kind on PATH), then run as with --kubeconfig.
    Kind,
}

/// The cluster flags every scenario takes.
#[derive(clap::Args, Clone, Debug)]
pub struct ClusterArgs {
    #[arg(long, value_enum, default_value_t = ClusterKind::Local, global = true)]
    pub cluster: ClusterKind,
    /// Run against the cluster this kubeconfig reaches, whose kruise controller is already
    /// running: the scenario only creates, watches and deletes its own objects there.
    #[arg(long, global = true)]
    pub kubeconfig: Option<PathBuf>,
    /// With --kubeconfig: the controller's manager replicas' metrics endpoints (`host:port`,
    /// comma-separated or repeated), for per-replica CPU, memory and writes. Without them those
    /// figures read "n/a".
    #[arg(long, value_delimiter = ',', global = true)]
    pub manager_metrics: Vec<String>,
    /// With --kubeconfig: the node daemons' metrics endpoints (`host:port`).
    #[arg(long, value_delimiter = ',', global = true)]
    pub daemon_metrics: Vec<String>,
    /// With --kubeconfig: the nodes a scenario may place pods and pulls on (kwok's by default).
    #[arg(long, default_value = "type=kwok", global = true)]
    pub node_selector: String,
    /// With --cluster kind: the kind cluster's name.
    #[arg(long, default_value = "kruise-loadtest", global = true)]
    pub kind_name: String,
}

impl ClusterArgs {
    /// The kubeconfig of a cluster the run does not start (given, or a kind cluster it creates).
    fn external_kubeconfig(&self) -> anyhow::Result<Option<PathBuf>> {
        match (&self.kubeconfig, self.cluster) {
            (Some(path), _) => Ok(Some(path.clone())),
            (None, ClusterKind::Local) => Ok(None),
            (None, ClusterKind::Kind) => create_kind_cluster(&self.kind_name).map(Some),
        }
    }

    /// Fails for scenarios that start and stop kruise-rs processes themselves.
    pub fn require_local(&self, scenario: &str) -> anyhow::Result<()> {
        if self.kubeconfig.is_some() || self.cluster != ClusterKind::Local {
            bail!(
                "{scenario} starts, stops and kills its own kruise-manager processes with kruise-rs-only flags, so it runs only with --cluster local"
            );
        }
        Ok(())
    }
}

/// Creates (or reuses) kind cluster `name`; returns its kubeconfig. Untested here: the
/// development machines have no docker.
fn create_kind_cluster(name: &str) -> anyhow::Result<PathBuf> {
    let kubeconfig = std::env::temp_dir().join(format!("kind-{name}.kubeconfig"));
    let have = |tool: &str| std::process::Command::new(tool).arg("version").output().is_ok_and(|o| o.status.success());
    if !have("docker") || !have("kind") {
        bail!("--cluster kind needs docker and kind on PATH; pass --kubeconfig for another cluster");
    }
    let existing = std::process::Command::new("kind").args(["get", "clusters"]).output()?;
    if !String::from_utf8_lossy(&existing.stdout).lines().any(|l| l.trim() == name) {
        let status = std::process::Command::new("kind").args(["create", "cluster", "--name", name]).status()?;
        anyhow::ensure!(status.success(), "kind create cluster --name {name} failed");
    }
    let out = std::process::Command::new("kind").args(["get", "kubeconfig", "--name", name]).output()?;
    anyhow::ensure!(out.status.success(), "kind get kubeconfig --name {name} failed");
    std::fs::write(&kubeconfig, &out.stdout)?;
    println!("kind cluster {name}: install kruise there and start kwok nodes labelled for --node-selector first");
    Ok(kubeconfig)
}

/// A kruise process whose figures the run reads: one it started, or an endpoint it was given.
pub struct KruiseProcess {
    pub name: String,
    pub metrics_addr: String,
    process: Option<Component>,
    /// CPU seconds it had used when the run began (0 for one the run started), so figures
    /// count the run's share.
    cpu_at_start: f64,
}

impl KruiseProcess {
    pub async fn scrape(&self) -> Scrape {
        crate::scrape(&self.metrics_addr).await
    }

    /// CPU time since the run began and peak memory: from `/proc` for a process the run started
    /// (exact, even after a crash of its metrics server), else from its `/metrics`.
    pub async fn figures(&self) -> ProcessFigures {
        let mut f = self.lifetime_figures().await;
        f.cpu_seconds -= self.cpu_at_start;
        f
    }

    async fn lifetime_figures(&self) -> ProcessFigures {
        if let Some(f) = self.process.as_ref().and_then(|p| ProcessFigures::of(p.pid())) {
            return f;
        }
        let s = self.scrape().await;
        if s.0.is_empty() {
            // Unreachable: unknown, not zero.
            return ProcessFigures { cpu_seconds: f64::NAN, peak_resident_bytes: f64::NAN, ..Default::default() };
        }
        let resident = s.sum("process_resident_memory_bytes", "");
        // Other implementations may not export the peak; the current figure is the next best.
        let peak =
            crate::cluster::metrics::sum(&s.0, "kruise_process_peak_resident_memory_bytes", "").unwrap_or(resident);
        ProcessFigures {
            cpu_seconds: s.sum("process_cpu_seconds_total", ""),
            resident_bytes: resident,
            peak_resident_bytes: peak,
            ..Default::default()
        }
    }

    /// The process the run started, if it did.
    pub fn local(&mut self) -> Option<&mut Component> {
        self.process.as_mut()
    }
}

/// The cluster a scenario runs in and the kruise processes it measures.
pub struct Environment {
    pub client: Client,
    /// The control plane this run started, `None` for an existing cluster.
    control_plane: Option<ControlPlane>,
    kubeconfig: PathBuf,
    description: String,
    nodes: Vec<String>,
    pub managers: Vec<KruiseProcess>,
    pub daemons: Vec<KruiseProcess>,
    /// What the run created in an existing cluster, deleted when it ends.
    created_namespaces: Vec<String>,
    created_cluster_objects: Vec<(ApiResource, String)>,
}

impl Environment {
    /// A fresh local control plane named `name` with `nodes` kwok nodes, the CRDs and the webhook
    /// configurations; or the existing cluster the flags name, with up to `nodes` of its nodes.
    pub async fn start(args: &ClusterArgs, name: &str, nodes: usize, startup: Duration) -> anyhow::Result<Self> {
        let Some(kubeconfig) = args.external_kubeconfig()? else {
            let (cp, client) = crate::webhook_control_plane(name, nodes, startup).await?;
            return Ok(Self {
                client,
                kubeconfig: cp.admin_kubeconfig().to_path_buf(),
                description: format!("local control plane ({} kwok nodes)", nodes),
                control_plane: Some(cp),
                nodes: (0..nodes).map(crate::cluster::control_plane::node_name).collect(),
                managers: Vec::new(),
                daemons: Vec::new(),
                created_namespaces: Vec::new(),
                created_cluster_objects: Vec::new(),
            });
        };
        let client = crate::cluster::control_plane::client_from_kubeconfig(&kubeconfig)
            .await
            .with_context(|| format!("connecting with {}", kubeconfig.display()))?;
        let found = Api::<Node>::all(client.clone())
            .list_metadata(&ListParams::default().labels(&args.node_selector))
            .await
            .context("listing nodes")?;
        let mut names: Vec<String> = found.items.into_iter().filter_map(|n| n.metadata.name).collect();
        names.sort();
        if names.is_empty() && nodes > 0 {
            bail!(
                "no node matches --node-selector {}: start kwok nodes there or pass another selector",
                args.node_selector
            );
        }
        if names.len() < nodes {
            println!("only {} nodes match {}: the scenario uses those", names.len(), args.node_selector);
        }
        names.truncate(nodes);
        let endpoints = async |role: &str, addrs: &[String]| {
            let mut processes = Vec::new();
            for (i, a) in addrs.iter().enumerate() {
                let mut p = KruiseProcess {
                    name: format!("{role} {i}"),
                    metrics_addr: a.clone(),
                    process: None,
                    cpu_at_start: 0.0,
                };
                p.cpu_at_start = p.lifetime_figures().await.cpu_seconds;
                processes.push(p);
            }
            processes
        };
        Ok(Self {
            client,
            description: format!("existing cluster ({}; {} nodes used)", kubeconfig.display(), names.len()),
            kubeconfig,
            control_plane: None,
            nodes: names,
            managers: endpoints("kruise-manager", &args.manager_metrics).await,
            daemons: endpoints("kruise-daemon", &args.daemon_metrics).await,
            created_namespaces: Vec::new(),
            created_cluster_objects: Vec::new(),
        })
    }

    /// What the run runs against, for reports.
    pub fn describe(&self) -> &str {
        &self.description
    }

    /// A report for `scenario` with `parameters` and what the run runs against.
    pub fn report(&self, scenario: &str, parameters: &[(&str, serde_json::Value)]) -> crate::report::Report {
        let mut all: std::collections::BTreeMap<String, serde_json::Value> =
            parameters.iter().map(|(k, v)| (k.to_string(), v.clone())).collect();
        all.insert("cluster".into(), self.describe().into());
        crate::report::Report::new(scenario, all)
    }

    /// The control plane this run started, if it did.
    pub fn control_plane(&self) -> Option<&ControlPlane> {
        self.control_plane.as_ref()
    }

    pub fn node_count(&self) -> usize {
        self.nodes.len()
    }

    /// The node for the `i`th pod, round-robin.
    pub fn node(&self, i: usize) -> &str {
        self.nodes.get(i % self.nodes.len().max(1)).map_or("", String::as_str)
    }

    /// In a local cluster, starts `count` kruise-managers `<prefix>-<i>` with `extra` flags and
    /// waits for each to be ready. In an existing cluster the controller already runs: nothing
    /// starts, and the run measures the endpoints it was given.
    pub async fn start_managers(
        &mut self,
        manager: &Path,
        prefix: &str,
        count: usize,
        extra: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let Some(cp) = &self.control_plane else {
            if self.managers.is_empty() {
                println!("no --manager-metrics: the managers' CPU, memory and writes are not measured");
            }
            return Ok(());
        };
        for i in 0..count {
            let metrics_addr = format!("127.0.0.1:{}", crate::cluster::control_plane::free_port()?);
            let identity = format!("{prefix}-{i}");
            let mut flags = crate::manager_flags(cp, &identity, &metrics_addr);
            flags.extend(extra.iter().cloned());
            let process =
                Component::spawn(&identity, manager, &flags, &cp.dir().join("logs"), Lifetime::TiedToProcess)?;
            self.managers.push(KruiseProcess {
                name: identity,
                metrics_addr,
                process: Some(process),
                cpu_at_start: 0.0,
            });
        }
        for m in &self.managers {
            wait_for("a manager to be ready", timeout, async || http_get(&m.metrics_addr, "/readyz").await.is_some())
                .await?;
        }
        Ok(())
    }

    /// In a local cluster, starts `daemon` in simulated mode for every kwok node with `extra`
    /// flags and waits until it serves; in an existing cluster, nothing.
    pub async fn start_simulated_daemon(
        &mut self,
        daemon: &Path,
        name: &str,
        extra: &[String],
        timeout: Duration,
    ) -> anyhow::Result<()> {
        let Some(cp) = &self.control_plane else {
            if self.daemons.is_empty() {
                println!("no --daemon-metrics: the daemons' CPU, memory and writes are not measured");
            }
            return Ok(());
        };
        let addr = format!("127.0.0.1:{}", crate::cluster::control_plane::free_port()?);
        let mut flags =
            vec![format!("--kubeconfig={}", self.kubeconfig.display()), format!("--addr={addr}"), "--simulated".into()];
        flags.extend(extra.iter().cloned());
        let process = Component::spawn(name, daemon, &flags, &cp.dir().join("logs"), Lifetime::TiedToProcess)?;
        wait_for("the daemon to serve", timeout, async || http_get(&addr, "/healthz").await.is_some()).await?;
        self.daemons.push(KruiseProcess {
            name: name.into(),
            metrics_addr: addr,
            process: Some(process),
            cpu_at_start: 0.0,
        });
        Ok(())
    }

    /// Adds every measured kruise process's CPU time and peak memory to `report`, with `suffix`
    /// after each name; returns them as `name: CPU s / peak MiB` for printing.
    pub async fn add_processes(&self, report: &mut crate::report::Report, suffix: &str) -> String {
        let mut summary = Vec::new();
        for p in self.managers.iter().chain(&self.daemons) {
            let f = p.figures().await;
            let rss_mib = f.peak_resident_bytes / crate::MIB;
            summary.push(format!("{}: {:.1} CPU s / {rss_mib:.0} MiB", p.name, f.cpu_seconds));
            report.add_process(format!("{}{suffix}", p.name), &f);
        }
        summary.join(", ")
    }

    /// The sum of a metric over the managers, or NaN (reported "n/a") when none is measured.
    pub async fn managers_sum(&self, name: &str, label: &str) -> f64 {
        sum_over(&self.managers, name, label).await
    }

    /// The sum of a metric over the daemons, or NaN when none is measured.
    pub async fn daemons_sum(&self, name: &str, label: &str) -> f64 {
        sum_over(&self.daemons, name, label).await
    }

    /// CPU seconds the API server has used, from its own `/metrics` (so it works anywhere the
    /// run may read them).
    pub async fn apiserver_cpu_seconds(&self) -> f64 {
        let request = http::Request::get("/metrics").body(Vec::new()).expect("a static request");
        let text = self.client.request_text(request).await.unwrap_or_default();
        crate::cluster::metrics::sum(&text, "process_cpu_seconds_total", "").unwrap_or(f64::NAN)
    }

    /// Creates the namespaces `names` and waits for their default ServiceAccounts (pods need
    /// them). In an existing cluster they are deleted when the run ends.
    pub async fn create_namespaces(&mut self, names: &[String], timeout: Duration) -> anyhow::Result<()> {
        let api: Api<Namespace> = Api::all(self.client.clone());
        for n in names {
            let ns = Namespace {
                metadata: ObjectMeta { name: Some(n.clone()), ..Default::default() },
                ..Default::default()
            };
            api.create(&PostParams::default(), &ns).await.with_context(|| {
                format!("creating namespace {n} (left over from an interrupted run? delete it first)")
            })?;
            self.created_namespaces.push(n.clone());
        }
        for n in names {
            let sas: Api<ServiceAccount> = Api::namespaced(self.client.clone(), n);
            wait_for("the default ServiceAccounts", timeout, async || {
                sas.get_opt("default").await.ok().flatten().is_some()
            })
            .await?;
        }
        Ok(())
    }

    /// Creates cluster-scoped `object`; in an existing cluster it is deleted when the run ends.
    pub async fn create_cluster_object(
        &mut self,
        resource: &ApiResource,
        object: &DynamicObject,
    ) -> Result<DynamicObject, kube::Error> {
        let created = Api::<DynamicObject>::all_with(self.client.clone(), resource)
            .create(&PostParams::default(), object)
            .await?;
        let name = created.metadata.name.clone().unwrap_or_default();
        if !self.created_cluster_objects.iter().any(|(r, n)| r == resource && *n == name) {
            self.created_cluster_objects.push((resource.clone(), name));
        }
        Ok(created)
    }

    /// Deletes what the run created in an existing cluster and waits until it is gone, so the
    /// next run (or the next size) starts clean. A local control plane just stops.
    pub async fn clean_up(&mut self, timeout: Duration) -> anyhow::Result<()> {
        if self.control_plane.is_some() {
            return Ok(());
        }
        for (resource, name) in self.created_cluster_objects.drain(..) {
            let api = Api::<DynamicObject>::all_with(self.client.clone(), &resource);
            let _ = api.delete(&name, &DeleteParams::background()).await;
        }
        let api: Api<Namespace> = Api::all(self.client.clone());
        let names = std::mem::take(&mut self.created_namespaces);
        for n in &names {
            let _ = api.delete(n, &DeleteParams::background()).await;
        }
        if !names.is_empty() {
            println!("deleting the run's {} namespaces", names.len());
        }
        for n in &names {
            wait_for(&format!("namespace {n} to be deleted"), timeout, async || {
                matches!(api.get_opt(n).await, Ok(None))
            })
            .await?;
        }
        Ok(())
    }
}

async fn sum_over(processes: &[KruiseProcess], name: &str, label: &str) -> f64 {
    if processes.is_empty() {
        return f64::NAN;
    }
    let mut sum = 0.0;
    for p in processes {
        sum += p.scrape().await.sum(name, label);
    }
    sum
}

impl Drop for Environment {
    /// Stops the kruise processes the run started (SIGTERM, so they release their shards) before
    /// the control plane goes.
    fn drop(&mut self) {
        for p in self.managers.iter_mut().chain(self.daemons.iter_mut()) {
            if let Some(c) = p.process.as_mut() {
                c.stop(Duration::from_secs(10));
            }
        }
    }
}
