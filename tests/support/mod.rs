//! Test support: one control plane per test binary, shared by its tests, plus small helpers.
//!
//! The control plane starts on first use and stops when the test binary exits (an `atexit` hook,
//! with the kernel's parent-death signal as a backstop when the binary is killed). Tests share it
//! and keep apart by working in their own namespaces. A test that needs different API-server
//! flags starts its own `ControlPlane` and drops it when done.

#![allow(dead_code)]

// Shared with the `kruise-dev` binary, which uses parts the tests do not.
#[allow(unused_imports)]
#[path = "../cluster/mod.rs"]
pub mod cluster;

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, ServiceAccount};
use kube::api::{DeleteParams, ObjectMeta, PostParams};
use kube::{Api, Client};
use tokio::sync::OnceCell;

pub use cluster::{ControlPlane, ControlPlaneConfig};

/// Nodes in the shared control plane.
pub const SHARED_NODES: usize = 3;

static SHARED: OnceCell<Result<ControlPlane, String>> = OnceCell::const_new();
static ANY_FAILED: AtomicBool = AtomicBool::new(false);

/// The shared control plane of this test binary. Panics (failing the calling test) if it could
/// not be started; the component logs have been printed then.
pub async fn shared() -> &'static ControlPlane {
    let result = SHARED
        .get_or_init(|| async {
            init_tracing();
            let mut cfg = ControlPlaneConfig { name: "shared".into(), nodes: SHARED_NODES, ..Default::default() };
            // The suite must pass with the API server's sharded watch on (the default) and off:
            // KRUISE_TEST_FEATURE_GATES=ShardedListAndWatch=false runs it the other way.
            if let Ok(gates) = std::env::var("KRUISE_TEST_FEATURE_GATES") {
                cfg.feature_gates = gates.split(',').filter(|g| !g.is_empty()).map(String::from).collect();
            }
            match ControlPlane::start(cfg).await {
                Ok(cp) => {
                    // SAFETY: registering a plain extern "C" fn that does not unwind.
                    unsafe { libc::atexit(stop_shared_at_exit) };
                    Ok(cp)
                }
                Err(e) => Err(e.to_string()),
            }
        })
        .await;
    match result {
        Ok(cp) => cp,
        Err(e) => panic!("the shared control plane did not start: {e}"),
    }
}

extern "C" fn stop_shared_at_exit() {
    let _ = std::panic::catch_unwind(|| {
        if let Some(Ok(cp)) = SHARED.get() {
            if ANY_FAILED.load(Ordering::SeqCst) || std::env::var_os("KRUISE_KEEP_LOGS").is_some() {
                save_logs(cp);
            }
            cp.stop_shared();
        }
    });
}

/// Copies the component (and manager) logs out of the control plane's temporary directory, which
/// stopping removes.
fn save_logs(cp: &ControlPlane) {
    let keep = std::env::temp_dir().join("kruise-rs-failed-logs").join(std::process::id().to_string());
    let _ = std::fs::create_dir_all(&keep);
    if let Ok(entries) = std::fs::read_dir(cp.dir().join("logs")) {
        for e in entries.flatten() {
            let _ = std::fs::copy(e.path(), keep.join(e.file_name()));
        }
    }
    eprintln!("component logs copied to {}", keep.display());
}

/// Prints the control plane's logs if the test that holds it panics.
pub struct LogsOnFailure<'a>(pub &'a ControlPlane);

impl Drop for LogsOnFailure<'_> {
    fn drop(&mut self) {
        if std::thread::panicking() {
            ANY_FAILED.store(true, Ordering::SeqCst);
            self.0.print_logs(30);
        }
    }
}

/// A test's handle on the shared cluster: an admin client made in the test's own runtime, and a
/// guard that prints component logs if the test fails.
pub struct TestCluster {
    pub cp: &'static ControlPlane,
    pub client: Client,
    _logs: LogsOnFailure<'static>,
}

pub async fn test_cluster() -> TestCluster {
    let cp = shared().await;
    let client = cp.admin_client().await.expect("admin client");
    TestCluster { cp, client, _logs: LogsOnFailure(cp) }
}

/// A namespace for one test, deleted (best effort) when dropped.
pub struct TestNamespace {
    pub name: String,
    admin_kubeconfig: std::path::PathBuf,
}

impl TestNamespace {
    /// Creates `<prefix>-<random>` and waits for its `default` ServiceAccount, without which the
    /// ServiceAccount admission plugin rejects pods.
    pub async fn create(tc: &TestCluster, prefix: &str) -> Self {
        let client = &tc.client;
        let name = format!("{prefix}-{:08x}", rand_u32());
        let ns =
            Namespace { metadata: ObjectMeta { name: Some(name.clone()), ..Default::default() }, ..Default::default() };
        Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("create namespace");
        default_service_account(client, &name).await;
        Self { name, admin_kubeconfig: tc.cp.admin_kubeconfig().to_path_buf() }
    }
}

/// Waits for `namespace`'s `default` ServiceAccount (the controller-manager creates it), without
/// which the ServiceAccount admission plugin rejects pods.
pub async fn default_service_account(client: &Client, namespace: &str) {
    let sas: Api<ServiceAccount> = Api::namespaced(client.clone(), namespace);
    eventually(Duration::from_secs(60), "the default ServiceAccount", || async {
        sas.get_opt("default").await.ok().flatten().is_some()
    })
    .await;
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        let kubeconfig = self.admin_kubeconfig.clone();
        let name = self.name.clone();
        // With its own client: the test's runs its connection task on the test's runtime.
        block_on_own_thread(async move {
            if let Ok(client) = cluster::control_plane::client_from_kubeconfig(&kubeconfig).await {
                let _ = Api::<Namespace>::all(client).delete(&name, &DeleteParams::background()).await;
            }
        });
    }
}

/// Runs `work` to completion on a thread with its own runtime, for `Drop`s, which cannot await
/// and must not block the test's runtime (the test's own tasks may need it to finish); `None`
/// if that runtime cannot start or `work` panics.
fn block_on_own_thread<T: Send + 'static>(work: impl std::future::Future<Output = T> + Send + 'static) -> Option<T> {
    std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().ok()?;
        Some(rt.block_on(work))
    })
    .join()
    .ok()
    .flatten()
}

/// Polls `check` every 250 ms until it returns true; panics with `what` after `timeout`.
pub async fn eventually<F, Fut>(timeout: Duration, what: &str, mut check: F)
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if check().await {
            return;
        }
        if tokio::time::Instant::now() >= deadline {
            panic!("timed out after {timeout:?} waiting for {what}");
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

fn rand_u32() -> u32 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0));
    h.finish() as u32
}

pub fn init_tracing() {
    let _ = tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()))
        .with_test_writer()
        .try_init();
}

/// The documents of a multi-document YAML text, as JSON values (empty documents left out).
pub fn yaml_documents(text: &str) -> Vec<serde_json::Value> {
    serde_norway::Deserializer::from_str(text)
        .filter_map(|doc| {
            let v: serde_json::Value = serde::Deserialize::deserialize(doc).expect("a YAML document");
            (!v.is_null()).then_some(v)
        })
        .collect()
}

/// The files in `dir` ending in `.<extension>`, sorted.
pub fn files_with_extension(dir: &std::path::Path, extension: &str) -> Vec<std::path::PathBuf> {
    let mut files: Vec<std::path::PathBuf> = std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.expect("directory entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == extension))
        .collect();
    files.sort();
    files
}

/// The ServiceAccounts the chart's RBAC binds, in the namespace the chart is "installed" in.
const CHART_NAMESPACE: &str = "kruise-system";

/// The kubeconfig a kruise-manager (`component` "kruise-manager", leases in `lease_namespace`) or
/// kruise-daemon ("kruise-daemon") runs with: the admin's, or with `KRUISE_TEST_RBAC=chart` the
/// chart's ServiceAccount with exactly the chart's RBAC (deploy/helm/kruise/templates/rbac.yaml),
/// so the whole suite shows that RBAC is enough.
pub fn component_kubeconfig(cp: &ControlPlane, lease_namespace: &str, component: &str) -> std::path::PathBuf {
    if std::env::var("KRUISE_TEST_RBAC").as_deref() != Ok("chart") {
        return cp.admin_kubeconfig().to_path_buf();
    }
    chart_rbac::kubeconfig(cp, lease_namespace, component)
}

mod chart_rbac {
    use std::collections::HashSet;
    use std::path::PathBuf;
    use std::process::{Command, Stdio};
    use std::sync::Mutex;

    use super::{CHART_NAMESPACE, ControlPlane, cluster};

    /// (cluster dir, namespace) pairs already given the chart's RBAC.
    static APPLIED: Mutex<Option<HashSet<(PathBuf, String)>>> = Mutex::new(None);

    fn tool(name: &str) -> PathBuf {
        cluster::ensure_binaries().expect("the pinned binaries").join(name)
    }

    fn run(cmd: &mut Command, input: Option<&str>) -> String {
        use std::io::Write;
        cmd.stdin(Stdio::piped()).stdout(Stdio::piped()).stderr(Stdio::piped());
        let mut child = cmd.spawn().expect("spawn");
        if let (Some(text), Some(mut stdin)) = (input, child.stdin.take()) {
            stdin.write_all(text.as_bytes()).expect("write stdin");
        }
        let out = child.wait_with_output().expect("wait");
        assert!(out.status.success(), "{cmd:?} failed: {}", String::from_utf8_lossy(&out.stderr));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The chart's RBAC objects for `namespace`, as JSON documents.
    fn rendered(namespace: &str) -> Vec<serde_json::Value> {
        let chart = cluster::repo_root().join("deploy/helm/kruise");
        let yaml = run(
            Command::new(tool("helm")).args(["template", "kruise"]).arg(&chart).args([
                "--show-only",
                "templates/rbac.yaml",
                "--set",
                &format!("installation.namespace={namespace}"),
            ]),
            None,
        );
        super::yaml_documents(&yaml)
    }

    /// `kubectl args` as the admin of `cp`, with `input` on stdin; its stdout.
    fn kubectl(cp: &ControlPlane, args: &[&str], input: Option<&str>) -> String {
        let kubeconfig = format!("--kubeconfig={}", cp.admin_kubeconfig().display());
        run(Command::new(tool("kubectl")).arg(kubeconfig).args(args), input)
    }

    fn apply(cp: &ControlPlane, objects: &[serde_json::Value]) {
        let list = serde_json::json!({ "apiVersion": "v1", "kind": "List", "items": objects });
        let args = ["apply", "--server-side", "--force-conflicts", "--field-manager=kruise-tests", "-f", "-"];
        kubectl(cp, &args, Some(&list.to_string()));
    }

    pub fn kubeconfig(cp: &ControlPlane, lease_namespace: &str, component: &str) -> PathBuf {
        let mut applied = APPLIED.lock().unwrap_or_else(|e| e.into_inner());
        let applied = applied.get_or_insert_with(HashSet::new);
        if applied.insert((cp.dir().to_path_buf(), CHART_NAMESPACE.to_string())) {
            // The chart's cluster-wide rules, bound to its ServiceAccounts in its namespace.
            let ns = serde_json::json!({ "apiVersion": "v1", "kind": "Namespace",
                "metadata": { "name": CHART_NAMESPACE, "labels": { "control-plane": "controller-manager" } } });
            let accounts = ["kruise-manager", "kruise-daemon"].map(|name| {
                serde_json::json!({ "apiVersion": "v1", "kind": "ServiceAccount",
                    "metadata": { "name": name, "namespace": CHART_NAMESPACE } })
            });
            let mut objects = vec![ns];
            objects.extend(accounts);
            objects.extend(rendered(CHART_NAMESPACE));
            apply(cp, &objects);
        }
        if component == "kruise-manager" && applied.insert((cp.dir().to_path_buf(), lease_namespace.to_string())) {
            // The namespaced rules (leases, the webhook Secret) in the namespace this manager
            // uses as the Kruise namespace, bound to the chart's ServiceAccount.
            let mut objects: Vec<serde_json::Value> = rendered(lease_namespace)
                .into_iter()
                .filter(|o| o["kind"] == "Role" || o["kind"] == "RoleBinding")
                .collect();
            for o in &mut objects {
                if let Some(subjects) = o.get_mut("subjects").and_then(|s| s.as_array_mut()) {
                    for s in subjects {
                        s["namespace"] = CHART_NAMESPACE.into();
                    }
                }
            }
            let ns =
                serde_json::json!({ "apiVersion": "v1", "kind": "Namespace", "metadata": { "name": lease_namespace } });
            objects.insert(0, ns);
            apply(cp, &objects);
        }
        let token = kubectl(cp, &["create", "token", component, "-n", CHART_NAMESPACE, "--duration=2h"], None);
        cp.token_kubeconfig(CHART_NAMESPACE, component, token.trim()).expect("a ServiceAccount kubeconfig")
    }
}

/// A kruise-manager replica run as a child process of the test binary.
pub struct ManagerProcess {
    pub identity: String,
    pub metrics_addr: String,
    pub process: cluster::process::Component,
}

impl ManagerProcess {
    /// Starts `target/.../kruise-manager` against `cp` (as [`component_kubeconfig`]), with its leases in
    /// `lease_namespace`, plus `extra_args`. Its log goes to `<cluster dir>/logs/<identity>.log`.
    pub fn start(cp: &ControlPlane, lease_namespace: &str, identity: &str, extra_args: &[&str]) -> Self {
        let metrics_port = cluster::control_plane::free_port().expect("free port");
        let metrics_addr = format!("127.0.0.1:{metrics_port}");
        let kubeconfig = component_kubeconfig(cp, lease_namespace, "kruise-manager");
        let mut args = vec![
            format!("--kubeconfig={}", kubeconfig.display()),
            format!("--identity={identity}"),
            format!("--leader-election-namespace={lease_namespace}"),
            format!("--metrics-addr={metrics_addr}"),
            format!("--health-probe-addr={metrics_addr}"),
            // Several replicas share this host: each takes a free webhook port.
            "--webhook-port=0".to_string(),
            "--webhook-host=127.0.0.1".to_string(),
        ];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let process = cluster::process::Component::spawn(
            identity,
            std::path::Path::new(env!("CARGO_BIN_EXE_kruise-manager")),
            &args,
            &cp.dir().join("logs"),
            cluster::Lifetime::TiedToProcess,
        )
        .expect("start kruise-manager");
        Self { identity: identity.to_string(), metrics_addr, process }
    }

    /// The value of a series on /metrics (the sum of all series when no labels are given), if
    /// served.
    pub async fn metric(&self, series: &str) -> Option<f64> {
        let body = cluster::process::http_get(&self.metrics_addr, "/metrics").await?;
        // `series` is a metric name, with or without labels: `name{a="x",b="y"}`.
        let (name, labels) = series.split_once('{').map_or((series, ""), |(n, l)| (n, l.trim_end_matches('}')));
        cluster::metrics::sum(&body, name, labels)
    }

    pub fn log_tail(&self) -> String {
        cluster::process::tail(&self.process.log, 40)
    }
}

impl Drop for ManagerProcess {
    fn drop(&mut self) {
        assert_never_forbidden(&self.identity, &self.metrics_addr, &self.process.log);
    }
}

/// Fails the test if the API server refused the process at `metrics_addr` any request (403):
/// under the chart's RBAC (`KRUISE_TEST_RBAC=chart`) that is a missing rule, which a scenario
/// that still passes would otherwise hide; with admin rights it is one of our own webhooks
/// refusing our own writes. A process the test stopped has nothing to say.
fn assert_never_forbidden(name: &str, metrics_addr: &str, log: &std::path::Path) {
    if std::thread::panicking() {
        return;
    }
    let addr = metrics_addr.to_string();
    let body = block_on_own_thread(async move { cluster::process::http_get(&addr, "/metrics").await }).flatten();
    let Some(body) = body else { return };
    let forbidden = cluster::metrics::sum(&body, "rest_client_requests_total", "code=\"403\"").unwrap_or(0.0);
    if forbidden > 0.0 {
        let text = std::fs::read_to_string(log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().filter(|l| l.contains("forbidden") || l.contains("403")).take(10).collect();
        panic!("{name} was refused {forbidden} request(s) with 403; its log says:\n{}", lines.join("\n"));
    }
}

/// kruise-daemon in simulated mode (serving every kwok node of `cp`), a child of the test binary.
pub struct DaemonProcess {
    pub addr: String,
    pub process: cluster::process::Component,
}

impl DaemonProcess {
    pub fn start(cp: &ControlPlane, name: &str, extra_args: &[&str]) -> Self {
        let port = cluster::control_plane::free_port().expect("free port");
        let addr = format!("127.0.0.1:{port}");
        let kubeconfig = component_kubeconfig(cp, "", "kruise-daemon");
        let mut args =
            vec![format!("--kubeconfig={}", kubeconfig.display()), format!("--addr={addr}"), "--simulated".to_string()];
        args.extend(extra_args.iter().map(|a| a.to_string()));
        let process = cluster::process::Component::spawn(
            name,
            std::path::Path::new(env!("CARGO_BIN_EXE_kruise-daemon")),
            &args,
            &cp.dir().join("logs"),
            cluster::Lifetime::TiedToProcess,
        )
        .expect("start kruise-daemon");
        Self { addr, process }
    }

    /// The sum of a metric's series on /metrics whose labels contain `labels` (e.g.
    /// `result="failed"`), if served.
    pub async fn metric(&self, name: &str, labels: &str) -> Option<f64> {
        let body = cluster::process::http_get(&self.addr, "/metrics").await?;
        cluster::metrics::sum(&body, name, labels)
    }
}

impl Drop for DaemonProcess {
    fn drop(&mut self) {
        assert_never_forbidden(&self.process.name, &self.addr, &self.process.log);
    }
}

/// Installs every kruise CRD and waits until each is Established (see `cluster::install_crds`).
pub async fn install_crds(client: &Client) {
    cluster::control_plane::install_crds(client, "kruise-tests").await.expect("install the CRDs");
}

/// Creates ConfigMap `name` in `namespace` labelled `label=value`.
pub async fn labelled_config_map(client: &Client, namespace: &str, name: &str, label: &str, value: &str) {
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some([(label.to_string(), value.to_string())].into()),
            ..Default::default()
        },
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), namespace)
        .create(&PostParams::default(), &cm)
        .await
        .expect("create configmap");
}
