//! The helm chart (deploy/helm/kruise) with the pinned helm built by tests/cluster/build.sh:
//! `helm lint`, `helm template` checked against the code (webhook configurations, flags the
//! binaries accept) and validated by the real API server (server-side dry run), and `helm install`
//! into a real API server. Pods need not run there (no images in the test cluster).

use std::path::{Path, PathBuf};
use std::process::Command;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::{DaemonSet, Deployment};
use kube::api::{Api, DynamicObject, PostParams};
use kube::discovery::Discovery;
use serde_json::Value;

use crate::support::LogsOnFailure;
use crate::support::cluster::{self, ControlPlane, ControlPlaneConfig};

fn chart_dir() -> PathBuf {
    cluster::repo_root().join("deploy/helm/kruise")
}

fn helm() -> PathBuf {
    cluster::ensure_binaries().expect("the pinned binaries").join("helm")
}

/// Runs helm with `args`; its stdout, or a panic with its stderr.
fn run_helm(args: &[&str]) -> String {
    let out = Command::new(helm()).args(args).output().expect("run helm");
    assert!(
        out.status.success(),
        "helm {args:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `helm template` with `--set` values, as JSON objects.
fn render(sets: &[&str]) -> Vec<Value> {
    let chart = chart_dir();
    let mut args = vec!["template", "kruise", chart.to_str().expect("utf-8 path")];
    for s in sets {
        args.extend(["--set", s]);
    }
    let yaml = run_helm(&args);
    crate::support::yaml_documents(&yaml)
}

fn find<'a>(objects: &'a [Value], kind: &str, name: &str) -> Option<&'a Value> {
    objects.iter().find(|o| o["kind"] == kind && o["metadata"]["name"] == name)
}

fn typed<T: serde::de::DeserializeOwned>(v: &Value) -> T {
    serde_json::from_value(v.clone()).expect("typed object")
}

/// The container args of `kind/name`, which the binary must accept: run with them and `--help`
/// last, it exits 0 only if it knew every one (clap stops at the first unknown argument).
fn assert_binary_accepts(objects: &[Value], kind: &str, name: &str, binary: &Path) {
    let o = find(objects, kind, name).unwrap_or_else(|| panic!("{kind} {name} rendered"));
    let args: Vec<String> =
        serde_json::from_value(o["spec"]["template"]["spec"]["containers"][0]["args"].clone()).expect("args");
    let out = Command::new(binary).args(&args).arg("--help").output().expect("run the binary");
    assert!(out.status.success(), "{} rejects the chart's args {args:?}: {}", binary.display(), {
        String::from_utf8_lossy(&out.stderr)
    });
}

#[test]
fn the_chart_lints_and_renders_what_the_code_expects() {
    let chart = chart_dir();
    let chart = chart.to_str().expect("utf-8 path");
    run_helm(&["lint", chart]);
    run_helm(&[
        "lint",
        chart,
        "--set",
        "featureGates=KruiseDaemon=false\\,PodWebhook=false",
        "--set",
        "serviceMonitor.enabled=true",
    ]);

    let objects = render(&[]);
    // The webhook configurations are the ones the managers keep current.
    let (mutating, validating) =
        kruise::webhook::configuration::configurations("kruise-system", "kruise-webhook-service");
    let m: MutatingWebhookConfiguration = typed(
        find(&objects, "MutatingWebhookConfiguration", "kruise-mutating-webhook-configuration").expect("mutating"),
    );
    let v: ValidatingWebhookConfiguration = typed(
        find(&objects, "ValidatingWebhookConfiguration", "kruise-validating-webhook-configuration")
            .expect("validating"),
    );
    assert_eq!(m.webhooks, mutating.webhooks);
    assert_eq!(v.webhooks, validating.webhooks);

    // The manager: 3 replicas spread over nodes, probes, time to hand shards over, a PDB.
    let d: Deployment = typed(find(&objects, "Deployment", "kruise-controller-manager").expect("manager"));
    let spec = d.spec.expect("spec");
    assert_eq!(spec.replicas, Some(3));
    let pod = spec.template.spec.expect("pod spec");
    let c = &pod.containers[0];
    assert_eq!(
        c.readiness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.as_deref()),
        Some("/readyz")
    );
    assert_eq!(
        c.liveness_probe.as_ref().and_then(|p| p.http_get.as_ref()).and_then(|g| g.path.as_deref()),
        Some("/healthz")
    );
    assert!(pod.termination_grace_period_seconds.unwrap_or(0) >= 15, "time to release the shard leases");
    assert!(pod.affinity.and_then(|a| a.pod_anti_affinity).is_some(), "replicas spread over nodes");
    assert!(c.resources.as_ref().and_then(|r| r.requests.as_ref()).is_some());
    assert!(find(&objects, "PodDisruptionBudget", "kruise-controller-manager").is_some());
    assert!(
        find(&objects, "Namespace", "kruise-system")
            .is_some_and(|n| n["metadata"]["labels"]["control-plane"] == "controller-manager")
    );
    assert!(find(&objects, "ServiceMonitor", "kruise-manager").is_none(), "optional, off by default");

    // The daemon: the host's /var/run read-only at /hostvarrun, simulated mode off.
    let ds: DaemonSet = typed(find(&objects, "DaemonSet", "kruise-daemon").expect("daemon"));
    let pod = ds.spec.expect("spec").template.spec.expect("pod spec");
    let mount = &pod.containers[0].volume_mounts.as_ref().expect("mounts")[0];
    assert_eq!((mount.mount_path.as_str(), mount.read_only), ("/hostvarrun", Some(true)));
    let host = pod.volumes.as_ref().expect("volumes")[0].host_path.as_ref().expect("hostPath");
    assert_eq!(host.path, "/var/run");
    assert!(!pod.containers[0].args.as_ref().expect("args").iter().any(|a| a == "--simulated"));

    // Every flag the chart passes is one the binaries know.
    assert_binary_accepts(
        &objects,
        "Deployment",
        "kruise-controller-manager",
        Path::new(env!("CARGO_BIN_EXE_kruise-manager")),
    );
    assert_binary_accepts(&objects, "DaemonSet", "kruise-daemon", Path::new(env!("CARGO_BIN_EXE_kruise-daemon")));

    // Gates as upstream's chart: no daemon (or its RBAC) without KruiseDaemon, no pod entry
    // without PodWebhook; the ServiceMonitor and PodMonitor on request.
    let off = render(&["featureGates=KruiseDaemon=false\\,PodWebhook=false", "serviceMonitor.enabled=true"]);
    assert!(find(&off, "DaemonSet", "kruise-daemon").is_none());
    assert!(find(&off, "ClusterRole", "kruise-daemon-role").is_none());
    let m: MutatingWebhookConfiguration =
        typed(find(&off, "MutatingWebhookConfiguration", "kruise-mutating-webhook-configuration").expect("mutating"));
    assert!(m.webhooks.unwrap_or_default().iter().all(|w| w.name != "mpod.kb.io"));
    assert!(find(&off, "ServiceMonitor", "kruise-manager").is_some());
    assert!(find(&off, "PodMonitor", "kruise-daemon").is_none(), "no daemon to scrape");
    let args = &find(&off, "Deployment", "kruise-controller-manager").expect("manager")["spec"]["template"]["spec"]["containers"]
        [0]["args"];
    assert!(args.as_array().expect("args").iter().any(|a| a == "--feature-gates=KruiseDaemon=false,PodWebhook=false"));
}

/// The rendered chart passes the real API server's validation (server-side dry run of every
/// object, CRDs first), and `helm install` into it succeeds.
#[tokio::test]
async fn the_chart_installs_into_a_real_api_server() {
    let cp = ControlPlane::start(ControlPlaneConfig { name: "chart".into(), nodes: 1, ..Default::default() })
        .await
        .expect("control plane");
    let _logs = LogsOnFailure(&cp);
    let client = cp.admin_client().await.expect("client");
    crate::support::install_crds(&client).await;

    // Dry run of each rendered object, so the server checks every field against its schema.
    // (Rendered into a namespace made here: a namespaced dry run needs an existing namespace.)
    let ns: k8s_openapi::api::core::v1::Namespace =
        serde_json::from_value(serde_json::json!({ "metadata": { "name": "chart-check" } })).expect("namespace");
    Api::<k8s_openapi::api::core::v1::Namespace>::all(client.clone())
        .create(&PostParams::default(), &ns)
        .await
        .expect("namespace");
    let discovery = Discovery::new(client.clone()).run().await.expect("discovery");
    let dry_run = PostParams { dry_run: true, ..Default::default() };
    let objects = render(&["installation.namespace=chart-check", "installation.createNamespace=false"]);
    assert!(objects.len() > 10, "{} objects", objects.len());
    for o in objects {
        let obj: DynamicObject = typed(&o);
        let types = obj.types.as_ref().expect("apiVersion and kind");
        let gvk = kube::core::GroupVersionKind::try_from(types).expect("gvk");
        let (ar, caps) = discovery.resolve_gvk(&gvk).unwrap_or_else(|| panic!("{gvk:?} is served"));
        let api: Api<DynamicObject> = match caps.scope {
            kube::discovery::Scope::Namespaced => Api::namespaced_with(client.clone(), "chart-check", &ar),
            kube::discovery::Scope::Cluster => Api::all_with(client.clone(), &ar),
        };
        if let Err(e) = api.create(&dry_run, &obj).await {
            panic!("{gvk:?} {:?} refused: {e}", obj.metadata.name);
        }
    }

    // helm install, CRDs included (already there: helm skips existing ones).
    let chart = chart_dir();
    let kubeconfig = cp.admin_kubeconfig().to_str().expect("utf-8 path").to_string();
    run_helm(&["install", "kruise", chart.to_str().expect("utf-8 path"), "--kubeconfig", &kubeconfig, "--wait=false"]);
    let status = run_helm(&["status", "kruise", "--kubeconfig", &kubeconfig]);
    assert!(status.contains("STATUS: deployed"), "{status}");
    let deployments: Api<Deployment> = Api::namespaced(client.clone(), "kruise-system");
    assert!(deployments.get_opt("kruise-controller-manager").await.expect("get").is_some());
    let daemonsets: Api<DaemonSet> = Api::namespaced(client.clone(), "kruise-system");
    assert!(daemonsets.get_opt("kruise-daemon").await.expect("get").is_some());
    let webhooks: Api<ValidatingWebhookConfiguration> = Api::all(client.clone());
    assert!(webhooks.get_opt("kruise-validating-webhook-configuration").await.expect("get").is_some());
    // An upgrade keeps the certificates the managers wrote into the Secret.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> = Api::namespaced(client.clone(), "kruise-system");
    let mut secret = secrets.get("kruise-webhook-certs").await.expect("secret");
    secret.data = Some([("ca-cert.pem".to_string(), k8s_openapi::ByteString(b"written by a manager".to_vec()))].into());
    secret.metadata.managed_fields = None;
    secrets.replace("kruise-webhook-certs", &PostParams::default(), &secret).await.expect("write the secret");
    run_helm(&["upgrade", "kruise", chart.to_str().expect("utf-8 path"), "--kubeconfig", &kubeconfig]);
    let kept = secrets.get("kruise-webhook-certs").await.expect("secret").data.unwrap_or_default();
    assert_eq!(kept.get("ca-cert.pem").map(|b| b.0.as_slice()), Some(&b"written by a manager"[..]));
}
