//! Starts and stops one local control plane.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use k8s_openapi::api::authentication::v1::{TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Node, ServiceAccount};
use kube::api::{ObjectMeta, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use serde_json::json;

use super::pki::{CertFiles, Pki};
pub use super::process::Lifetime;
use super::process::{Component, http_get, tail};
use super::{ClusterError, ensure_binaries};

/// Annotation kwok selects the nodes it plays by (`--manage-nodes-with-annotation-selector`).
pub const KWOK_NODE_ANNOTATION: &str = "kwok.x-k8s.io/node";
/// Name of the i-th fake node.
pub fn node_name(i: usize) -> String {
    format!("kwok-node-{i}")
}

#[derive(Debug, Clone)]
pub struct ControlPlaneConfig {
    /// Used in the working directory's name.
    pub name: String,
    /// How many kwok nodes to create and wait Ready for.
    pub nodes: usize,
    /// `--feature-gates` for kube-apiserver, e.g. `ShardedListAndWatch=true`.
    pub feature_gates: Vec<String>,
    pub scheduler: bool,
    pub controller_manager: bool,
    pub lifetime: Lifetime,
    /// Working directory; `None` makes a fresh one under the system temp dir, removed on stop.
    pub dir: Option<PathBuf>,
    /// Fixed API server port (the dev cluster uses one so its kubeconfig stays valid); `None`
    /// picks a free one.
    pub apiserver_port: Option<u16>,
    pub extra_apiserver_args: Vec<String>,
    /// Upper bound for the whole start-up.
    pub startup_timeout: Duration,
}

impl Default for ControlPlaneConfig {
    fn default() -> Self {
        Self {
            name: "test".into(),
            nodes: 3,
            feature_gates: vec!["ShardedListAndWatch=true".into()],
            scheduler: true,
            controller_manager: true,
            lifetime: Lifetime::TiedToProcess,
            dir: None,
            apiserver_port: None,
            extra_apiserver_args: Vec::new(),
            startup_timeout: Duration::from_secs(120),
        }
    }
}

/// A running control plane. Dropping it (or `stop`) stops every component.
pub struct ControlPlane {
    config: ControlPlaneConfig,
    dir: PathBuf,
    remove_dir_on_stop: bool,
    server: String,
    pki: Pki,
    admin_kubeconfig: PathBuf,
    components: Mutex<Vec<Component>>,
}

impl ControlPlane {
    /// Builds the binaries if needed, starts every component and waits until the API server is
    /// ready and all kwok nodes are Ready. On failure, stops what it started and returns the
    /// error with the tail of each component's log printed to stderr.
    ///
    /// Free ports are picked by binding and releasing them, so another process can take one in
    /// between; a component that exits during start-up is retried on fresh ports (twice at most)
    /// when the configuration lets the ports and directory be chosen freely.
    pub async fn start(config: ControlPlaneConfig) -> Result<Self, ClusterError> {
        let retryable = config.dir.is_none() && config.apiserver_port.is_none();
        let mut attempt = 1;
        loop {
            match Self::start_once(config.clone()).await {
                Err(e @ ClusterError::Exited { .. }) if retryable && attempt < 3 => {
                    eprintln!("control plane start-up attempt {attempt} failed ({e}); retrying on fresh ports");
                    attempt += 1;
                }
                result => return result,
            }
        }
    }

    async fn start_once(config: ControlPlaneConfig) -> Result<Self, ClusterError> {
        let bins = ensure_binaries()?;
        let (dir, remove_dir_on_stop) = match &config.dir {
            Some(d) => (d.clone(), false),
            None => (fresh_dir(&config.name), true),
        };
        for sub in ["logs", "pki", "etcd"] {
            let p = dir.join(sub);
            std::fs::create_dir_all(&p).map_err(|e| ClusterError::io(&p, e))?;
        }
        let pki = Pki::create(&dir.join("pki"))?;
        let apiserver_port = match config.apiserver_port {
            Some(p) => p,
            None => free_port()?,
        };
        let server = format!("https://127.0.0.1:{apiserver_port}");
        let admin = pki.client_cert("admin", "kruise-admin", Some("system:masters"))?;
        let admin_kubeconfig = dir.join("admin.kubeconfig");
        write_kubeconfig(&admin_kubeconfig, &server, &pki.ca_cert, "kruise-admin", Credentials::Cert(&admin))?;

        let mut cp =
            Self { config, dir, remove_dir_on_stop, server, pki, admin_kubeconfig, components: Mutex::new(Vec::new()) };
        let timeout = cp.config.startup_timeout;
        match tokio::time::timeout(timeout, cp.boot(&bins, apiserver_port)).await {
            Ok(Ok(())) => Ok(cp),
            Ok(Err(e)) => Err(cp.fail(e)),
            Err(_) => {
                let e = ClusterError::Timeout { what: "the control plane to start".into(), secs: timeout.as_secs() };
                Err(cp.fail(e))
            }
        }
    }

    fn fail(&mut self, e: ClusterError) -> ClusterError {
        eprintln!("control plane in {} failed to start: {e}", self.dir.display());
        self.print_logs(40);
        // Keep the directory for inspection.
        self.remove_dir_on_stop = false;
        self.stop();
        e
    }

    async fn boot(&mut self, bins: &Path, apiserver_port: u16) -> Result<(), ClusterError> {
        let started = Instant::now();
        let pki_dir = self.dir.join("pki");
        let serving = self.pki.serving_cert(
            "apiserver",
            &["localhost", "127.0.0.1", "kubernetes", "kubernetes.default", "kubernetes.default.svc", "10.96.0.1"],
        )?;
        let sa = self.pki.signing_key("service-account")?;
        let ca = self.pki.ca_cert.display().to_string();
        let admin_kc = self.admin_kubeconfig.display().to_string();

        // etcd
        let (etcd_client, etcd_peer) = (free_port()?, free_port()?);
        let etcd_url = format!("http://127.0.0.1:{etcd_client}");
        let peer_url = format!("http://127.0.0.1:{etcd_peer}");
        self.spawn(
            bins,
            "etcd",
            vec![
                format!("--data-dir={}", self.dir.join("etcd").display()),
                format!("--listen-client-urls={etcd_url}"),
                format!("--advertise-client-urls={etcd_url}"),
                format!("--listen-peer-urls={peer_url}"),
                format!("--initial-advertise-peer-urls={peer_url}"),
                format!("--initial-cluster=default={peer_url}"),
                // Test data only: durability is not needed and fsync dominates on shared disks.
                "--unsafe-no-fsync=true".into(),
                "--quota-backend-bytes=8589934592".into(),
                "--auto-compaction-mode=periodic".into(),
                "--auto-compaction-retention=5m".into(),
                "--log-level=warn".into(),
            ],
        )?;
        let etcd_health = format!("127.0.0.1:{etcd_client}");
        self.wait_for("etcd to be healthy", || {
            let addr = etcd_health.clone();
            async move { Ok(http_get(&addr, "/health").await.is_some_and(|b| b.contains("\"health\":\"true\""))) }
        })
        .await?;

        // kube-apiserver
        let mut args = vec![
            format!("--etcd-servers={etcd_url}"),
            format!("--secure-port={apiserver_port}"),
            "--bind-address=127.0.0.1".into(),
            // Without a default route, a loopback bind needs an explicit advertise address.
            "--advertise-address=127.0.0.1".into(),
            "--endpoint-reconciler-type=none".into(),
            format!("--cert-dir={}", pki_dir.display()),
            format!("--tls-cert-file={}", serving.cert.display()),
            format!("--tls-private-key-file={}", serving.key.display()),
            format!("--client-ca-file={ca}"),
            "--authorization-mode=Node,RBAC".into(),
            format!("--service-account-issuer={}", self.server),
            format!("--service-account-key-file={}", sa.cert.display()),
            format!("--service-account-signing-key-file={}", sa.key.display()),
            "--service-cluster-ip-range=10.96.0.0/16".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
        ];
        if !self.config.feature_gates.is_empty() {
            args.push(format!("--feature-gates={}", self.config.feature_gates.join(",")));
        }
        args.extend(self.config.extra_apiserver_args.iter().cloned());
        self.spawn(bins, "kube-apiserver", args)?;
        self.wait_for("kube-apiserver /readyz", || async {
            let Ok(client) = self.admin_client().await else { return Ok(false) };
            let req =
                http::Request::get("/readyz").body(Vec::new()).map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
            Ok(client.request_text(req).await.map(|body| body.trim() == "ok").unwrap_or(false))
        })
        .await?;

        if self.config.controller_manager {
            self.spawn(
                bins,
                "kube-controller-manager",
                vec![
                    format!("--kubeconfig={admin_kc}"),
                    "--leader-elect=false".into(),
                    // 0 turns the HTTPS endpoint off, so parallel clusters never fight over 10257.
                    "--secure-port=0".into(),
                    format!("--root-ca-file={ca}"),
                    format!("--service-account-private-key-file={}", sa.key.display()),
                    "--use-service-account-credentials=false".into(),
                    "--kube-api-qps=200".into(),
                    "--kube-api-burst=400".into(),
                ],
            )?;
        }
        if self.config.scheduler {
            self.spawn(
                bins,
                "kube-scheduler",
                vec![
                    format!("--kubeconfig={admin_kc}"),
                    "--leader-elect=false".into(),
                    "--secure-port=0".into(),
                    "--kube-api-qps=200".into(),
                    "--kube-api-burst=400".into(),
                ],
            )?;
        }
        let kwok_port = free_port()?;
        // Ours on top of kwok's own stages: the kubelet's part of in-place container updates.
        let image_update = self.dir.join("kwok-container-image-update.yaml");
        std::fs::write(&image_update, include_str!("kwok/container-image-update.yaml"))
            .map_err(|source| ClusterError::Io { path: image_update.clone(), source })?;
        self.spawn(
            bins,
            "kwok",
            vec![
                format!("--kubeconfig={admin_kc}"),
                format!("--config={}", bins.join("kwok-stages.yaml").display()),
                format!("--config={}", image_update.display()),
                format!("--manage-nodes-with-annotation-selector={KWOK_NODE_ANNOTATION}=fake"),
                "--cidr=10.244.0.0/16".into(),
                "--node-lease-duration-seconds=40".into(),
                format!("--server-address=127.0.0.1:{kwok_port}"),
            ],
        )?;

        let client = self.admin_client().await?;
        self.add_nodes(&client, 0..self.config.nodes).await?;
        tracing::info!(
            dir = %self.dir.display(),
            server = %self.server,
            secs = started.elapsed().as_secs_f32(),
            "control plane ready"
        );
        Ok(())
    }

    fn spawn(&self, bins: &Path, name: &str, args: Vec<String>) -> Result<(), ClusterError> {
        let c = Component::spawn(name, &bins.join(name), &args, &self.dir.join("logs"), self.config.lifetime)?;
        self.lock_components().push(c);
        Ok(())
    }

    fn lock_components(&self) -> std::sync::MutexGuard<'_, Vec<Component>> {
        // A panic while holding this lock leaves a plain Vec behind: still usable.
        self.components.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Polls `check` every 200 ms until it says true, failing fast when a component has exited.
    async fn wait_for<F, Fut>(&self, what: &str, mut check: F) -> Result<(), ClusterError>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<bool, ClusterError>>,
    {
        loop {
            for c in self.lock_components().iter_mut() {
                c.check_running()?;
            }
            if check().await? {
                return Ok(());
            }
            tracing::debug!(what, "waiting");
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Creates kwok nodes with the given indices and waits until each reports Ready.
    pub async fn add_nodes(&self, client: &Client, indices: std::ops::Range<usize>) -> Result<(), ClusterError> {
        let nodes: Api<Node> = Api::all(client.clone());
        for i in indices.clone() {
            let name = node_name(i);
            let node = Node {
                metadata: ObjectMeta {
                    name: Some(name.clone()),
                    annotations: Some(BTreeMap::from([
                        (KWOK_NODE_ANNOTATION.to_string(), "fake".to_string()),
                        ("node.alpha.kubernetes.io/ttl".to_string(), "0".to_string()),
                    ])),
                    labels: Some(BTreeMap::from([
                        ("kubernetes.io/hostname".to_string(), name.clone()),
                        ("kubernetes.io/os".to_string(), "linux".to_string()),
                        ("kubernetes.io/arch".to_string(), "amd64".to_string()),
                        ("type".to_string(), "kwok".to_string()),
                    ])),
                    ..Default::default()
                },
                ..Default::default()
            };
            match nodes.create(&PostParams::default(), &node).await {
                Ok(_) => {}
                Err(kube::Error::Api(s)) if s.code == 409 => {}
                Err(e) => return Err(e.into()),
            }
        }
        let wanted: Vec<String> = indices.map(node_name).collect();
        self.wait_for("kwok nodes to be Ready", || async {
            let list = nodes.list(&Default::default()).await?;
            let ready = list
                .items
                .iter()
                .filter(|n| wanted.iter().any(|w| Some(w) == n.metadata.name.as_ref()) && node_ready(n))
                .count();
            Ok(ready == wanted.len())
        })
        .await
    }

    /// The kube-apiserver feature gates this control plane runs with.
    pub fn feature_gates(&self) -> &[String] {
        &self.config.feature_gates
    }

    pub fn server(&self) -> &str {
        &self.server
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    pub fn admin_kubeconfig(&self) -> &Path {
        &self.admin_kubeconfig
    }

    /// A client with cluster-admin rights (group `system:masters`, which RBAC never checks).
    /// Clients are bound to the Tokio runtime that creates them: make one per test.
    pub async fn admin_client(&self) -> Result<Client, ClusterError> {
        client_from_kubeconfig(&self.admin_kubeconfig).await
    }

    /// A kubeconfig for `user` (optionally in `group`) that authenticates with a client certificate
    /// signed by the cluster CA. The user has no rights until RBAC grants some.
    pub fn user_kubeconfig(&self, user: &str, group: Option<&str>) -> Result<PathBuf, ClusterError> {
        let stem = format!("user-{}", sanitize(user));
        let cert = self.pki.client_cert(&stem, user, group)?;
        let path = self.dir.join(format!("{stem}.kubeconfig"));
        write_kubeconfig(&path, &self.server, &self.pki.ca_cert, user, Credentials::Cert(&cert))?;
        Ok(path)
    }

    /// A kubeconfig that authenticates as the existing ServiceAccount `namespace/name`, with a
    /// one-hour token the API server issues through the TokenRequest API: how an in-cluster
    /// controller authenticates, so RBAC rules meant for a ServiceAccount can be tested as written.
    pub async fn service_account_kubeconfig(
        &self,
        admin: &Client,
        namespace: &str,
        name: &str,
    ) -> Result<PathBuf, ClusterError> {
        let request = TokenRequest {
            spec: Some(TokenRequestSpec { expiration_seconds: Some(3600), ..Default::default() }),
            ..Default::default()
        };
        let issued = Api::<ServiceAccount>::namespaced(admin.clone(), namespace)
            .create_token_request(name, &PostParams::default(), &request)
            .await?;
        let token = issued.status.and_then(|s| s.token).unwrap_or_default();
        self.token_kubeconfig(namespace, name, &token)
    }

    /// A kubeconfig that authenticates as ServiceAccount `namespace/name` with `token` (issued
    /// for it, e.g. by `kubectl create token`).
    pub fn token_kubeconfig(&self, namespace: &str, name: &str, token: &str) -> Result<PathBuf, ClusterError> {
        if token.is_empty() {
            return Err(ClusterError::Kubeconfig(format!("no token issued for {namespace}/{name}")));
        }
        let path = self.dir.join(format!("sa-{}-{}.kubeconfig", sanitize(namespace), sanitize(name)));
        let user = format!("system:serviceaccount:{namespace}:{name}");
        write_kubeconfig(&path, &self.server, &self.pki.ca_cert, &user, Credentials::Token(token))?;
        Ok(path)
    }

    pub async fn user_client(&self, user: &str, group: Option<&str>) -> Result<Client, ClusterError> {
        client_from_kubeconfig(&self.user_kubeconfig(user, group)?).await
    }

    /// (component name, pid) of everything running, in start order.
    pub fn pids(&self) -> Vec<(String, u32)> {
        self.lock_components().iter().map(|c| (c.name.clone(), c.pid())).collect()
    }

    /// Prints the last `lines` lines of every component's log to stderr.
    pub fn print_logs(&self, lines: usize) {
        let mut printed = Vec::new();
        for c in self.lock_components().iter() {
            eprintln!("----- {} ({}), last {lines} lines -----\n{}", c.name, c.log.display(), tail(&c.log, lines));
            printed.push(c.log.clone());
        }
        // And every other process that logs here (kruise-manager replicas, kruise-daemon).
        let mut others: Vec<_> = std::fs::read_dir(self.dir.join("logs"))
            .into_iter()
            .flatten()
            .flatten()
            .map(|e| e.path())
            .filter(|p| !printed.contains(p))
            .collect();
        others.sort();
        for log in others {
            eprintln!("----- {}, last {lines} lines -----\n{}", log.display(), tail(&log, lines));
        }
    }

    /// Stops every component (last started first) and removes a temporary working directory.
    /// Idempotent.
    pub fn stop(&mut self) {
        self.stop_shared();
    }

    /// `stop` through a shared reference, for a cluster kept in a static.
    pub fn stop_shared(&self) {
        let mut comps = std::mem::take(&mut *self.lock_components());
        while let Some(mut c) = comps.pop() {
            c.stop(Duration::from_secs(3));
        }
        if self.remove_dir_on_stop {
            let _ = std::fs::remove_dir_all(&self.dir);
        }
    }

    /// Lets a detached control plane (see [`Lifetime::Detached`]) run on after this value is gone.
    /// Returns (component, pid) so the caller can record them for a later stop.
    pub fn detach(self) -> Vec<(String, u32)> {
        let pids = self.pids();
        // Dropping a std Child neither kills nor waits; detached children were started in their
        // own session, so they live on.
        self.lock_components().clear();
        std::mem::forget(self);
        pids
    }
}

impl Drop for ControlPlane {
    fn drop(&mut self) {
        self.stop();
    }
}

pub async fn client_from_kubeconfig(path: &Path) -> Result<Client, ClusterError> {
    let kc = Kubeconfig::read_from(path).map_err(|e| ClusterError::Kubeconfig(format!("{}: {e}", path.display())))?;
    let config = Config::from_custom_kubeconfig(kc, &KubeConfigOptions::default())
        .await
        .map_err(|e| ClusterError::Kubeconfig(format!("{}: {e}", path.display())))?;
    Ok(Client::try_from(config)?)
}

enum Credentials<'a> {
    Cert(&'a CertFiles),
    Token(&'a str),
}

fn write_kubeconfig(
    path: &Path,
    server: &str,
    ca: &Path,
    user: &str,
    creds: Credentials<'_>,
) -> Result<(), ClusterError> {
    let user_entry = match creds {
        Credentials::Cert(c) => json!({"client-certificate": c.cert, "client-key": c.key}),
        Credentials::Token(t) => json!({"token": t}),
    };
    // JSON is valid YAML: kubectl and kube-rs read it as a kubeconfig.
    let kc = json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "kruise-local", "cluster": {"server": server, "certificate-authority": ca}}],
        "users": [{"name": user, "user": user_entry}],
        "contexts": [{"name": "kruise-local", "context": {"cluster": "kruise-local", "user": user}}],
        "current-context": "kruise-local",
    });
    let text = serde_json::to_string_pretty(&kc).map_err(|e| ClusterError::Kubeconfig(e.to_string()))?;
    std::fs::write(path, text).map_err(|e| ClusterError::io(path, e))
}

fn node_ready(n: &Node) -> bool {
    n.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A port that was free a moment ago. Ports handed out in this process are never handed out
/// twice, so components of parallel clusters in one test binary cannot collide.
pub fn free_port() -> Result<u16, ClusterError> {
    static GIVEN: Mutex<Vec<u16>> = Mutex::new(Vec::new());
    for _ in 0..100 {
        let l = TcpListener::bind("127.0.0.1:0").map_err(|e| ClusterError::io(Path::new("127.0.0.1:0"), e))?;
        let port = l.local_addr().map_err(|e| ClusterError::io(Path::new("127.0.0.1:0"), e))?.port();
        let mut given = GIVEN.lock().unwrap_or_else(|e| e.into_inner());
        if !given.contains(&port) {
            given.push(port);
            return Ok(port);
        }
    }
    Err(ClusterError::Io { path: "127.0.0.1:0".into(), source: std::io::Error::other("no free port") })
}

fn fresh_dir(name: &str) -> PathBuf {
    static N: AtomicUsize = AtomicUsize::new(0);
    std::env::temp_dir().join("kruise-rs-clusters").join(format!(
        "{}-{}-{}",
        sanitize(name),
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ))
}

fn sanitize(s: &str) -> String {
    s.chars().map(|c| if c.is_ascii_alphanumeric() || c == '-' { c } else { '_' }).collect()
}

/// Installs every kruise CRD (server-side apply as `field_manager`, so repeated and parallel calls
/// are fine) and waits up to 30 s until each is Established.
pub async fn install_crds(client: &Client, field_manager: &str) -> Result<(), ClusterError> {
    use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
    use kube::api::{Patch, PatchParams};
    let api: Api<CustomResourceDefinition> = Api::all(client.clone());
    let crds = kruise::api::crds();
    for crd in &crds {
        let name = crd.metadata.name.clone().unwrap_or_default();
        api.patch(&name, &PatchParams::apply(field_manager).force(), &Patch::Apply(crd)).await?;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let mut established = true;
        for crd in &crds {
            let current = api.get(crd.metadata.name.as_deref().unwrap_or_default()).await?;
            established &= current
                .status
                .and_then(|s| s.conditions)
                .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Established" && c.status == "True"));
        }
        if established {
            return Ok(());
        }
        if Instant::now() >= deadline {
            return Err(ClusterError::Timeout { what: "every CRD to be Established".into(), secs: 30 });
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}
