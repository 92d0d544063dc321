//! The admission webhooks through the real API server: kruise-manager creates its certificates,
//! points the installed webhook configurations at itself with the right caBundle, defaults and
//! validates apps.kruise.io objects, and a restarted replica keeps serving with the same CA.
//!
//! These tests run their own control plane: webhook configurations are cluster-wide, and the
//! other tests' objects must not pass through (or wait for) these webhooks.

use std::time::Duration;

use k8s_openapi::api::admissionregistration::v1::{MutatingWebhookConfiguration, ValidatingWebhookConfiguration};
use k8s_openapi::api::apps::v1::ControllerRevision;
use k8s_openapi::api::core::v1::{Namespace, Pod, Secret};
use kube::api::{ListParams, ObjectMeta, PostParams};
use kube::core::DynamicObject;
use kube::discovery::ApiResource;
use kube::{Api, Client};
use serde_json::json;

use kruise::webhook::configuration::{self, MUTATING_CONFIGURATION, VALIDATING_CONFIGURATION};

use crate::support::{
    ControlPlane, ControlPlaneConfig, ManagerProcess, default_service_account, eventually, install_crds,
};

pub(crate) const KRUISE_NS: &str = "kruise-system";

pub(crate) fn resource(plural: &str, kind: &str) -> ApiResource {
    ApiResource {
        group: "apps.kruise.io".into(),
        version: "v1alpha1".into(),
        api_version: "apps.kruise.io/v1alpha1".into(),
        kind: kind.into(),
        plural: plural.into(),
    }
}

pub(crate) async fn create(
    client: &Client,
    plural: &str,
    kind: &str,
    namespace: Option<&str>,
    body: serde_json::Value,
) -> Result<DynamicObject, kube::Error> {
    let ar = resource(plural, kind);
    let api: Api<DynamicObject> = match namespace {
        Some(ns) => Api::namespaced_with(client.clone(), ns, &ar),
        None => Api::all_with(client.clone(), &ar),
    };
    let obj: DynamicObject = serde_json::from_value(body).expect("object");
    api.create(&PostParams::default(), &obj).await
}

fn sidecarset(name: &str, container: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": name },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "containers": [{ "name": container, "image": "busybox:1.36", "command": ["sleep", "999d"] }]
        }
    })
}

/// Whether both configurations point at `port` on 127.0.0.1 with a real CA bundle.
async fn configured_for(client: &Client, port: u16) -> bool {
    let want = format!("https://127.0.0.1:{port}/");
    let m = Api::<MutatingWebhookConfiguration>::all(client.clone()).get(MUTATING_CONFIGURATION).await.ok();
    let v = Api::<ValidatingWebhookConfiguration>::all(client.clone()).get(VALIDATING_CONFIGURATION).await.ok();
    let (Some(m), Some(v)) = (m, v) else { return false };
    let ok = |cc: &k8s_openapi::api::admissionregistration::v1::WebhookClientConfig| {
        cc.url.as_deref().is_some_and(|u| u.starts_with(&want))
            && cc.ca_bundle.as_ref().is_some_and(|b| b.0.starts_with(b"-----BEGIN CERTIFICATE-----"))
    };
    m.webhooks.iter().flatten().all(|w| ok(&w.client_config))
        && v.webhooks.iter().flatten().all(|w| ok(&w.client_config))
}

async fn webhook_port(m: &ManagerProcess) -> u16 {
    let mut port = 0;
    eventually(Duration::from_secs(30), "the manager to log its webhook port", || {
        let log = std::fs::read_to_string(&m.process.log).unwrap_or_default();
        let found = crate::support::cluster::process::logged_webhook_port(&log);
        if let Some(p) = found {
            port = p;
        }
        async move { found.is_some() }
    })
    .await;
    port
}

async fn ca_of_secret(client: &Client) -> Vec<u8> {
    let s = Api::<Secret>::namespaced(client.clone(), KRUISE_NS).get("kruise-webhook-certs").await.expect("secret");
    s.data.and_then(|d| d.get("ca-cert.pem").map(|b| b.0.clone())).unwrap_or_default()
}

/// A private control plane with the CRDs and the chart's webhook configurations installed, and
/// one kruise-manager serving them (ready, and the configurations pointing at it).
async fn webhook_cluster(name: &str) -> (ControlPlane, Client, ManagerProcess) {
    let (cp, client, mut managers) = kruise_cluster(name, 0, 1, &[]).await;
    (cp, client, managers.remove(0))
}

/// A private control plane with `nodes` kwok nodes, the CRDs and the chart's webhook
/// configurations, and `replicas` kruise-managers (with `extra_args`), all ready, the
/// configurations pointing at one of them.
pub(crate) async fn kruise_cluster(
    name: &str,
    nodes: usize,
    replicas: usize,
    extra_args: &[&str],
) -> (ControlPlane, Client, Vec<ManagerProcess>) {
    let cp = ControlPlane::start(ControlPlaneConfig {
        name: name.into(),
        nodes,
        scheduler: false,
        // Creates the namespaces' default ServiceAccounts, without which pods are refused.
        controller_manager: true,
        ..Default::default()
    })
    .await
    .expect("control plane");
    let client = cp.admin_client().await.expect("client");
    install_crds(&client).await;
    let ns =
        Namespace { metadata: ObjectMeta { name: Some(KRUISE_NS.into()), ..Default::default() }, ..Default::default() };
    Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await.expect("namespace");
    // What the chart installs: entries pointing at the Service, a placeholder CA.
    let (m, v) = configuration::configurations(KRUISE_NS, "kruise-webhook-service");
    Api::<MutatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &m)
        .await
        .expect("mutating");
    Api::<ValidatingWebhookConfiguration>::all(client.clone())
        .create(&PostParams::default(), &v)
        .await
        .expect("validating");

    let managers: Vec<ManagerProcess> = (0..replicas)
        .map(|i| ManagerProcess::start(&cp, KRUISE_NS, &format!("{name}-{}", (b'a' + i as u8) as char), extra_args))
        .collect();
    let mut ports = Vec::new();
    for m in &managers {
        ports.push(webhook_port(m).await);
    }
    eventually(Duration::from_secs(60), "the configurations to point at a manager with its CA", || {
        let (client, ports) = (client.clone(), ports.clone());
        async move {
            for p in ports {
                if configured_for(&client, p).await {
                    return true;
                }
            }
            false
        }
    })
    .await;
    for m in &managers {
        eventually(Duration::from_secs(30), "the manager to be ready", || async {
            crate::support::cluster::process::http_get(&m.metrics_addr, "/readyz").await.is_some()
        })
        .await;
    }
    default_service_account(&client, "default").await;
    (cp, client, managers)
}

#[tokio::test]
async fn webhooks_default_and_validate_through_the_api_server_and_survive_a_restart() {
    let (cp, client, mut first) = webhook_cluster("webhooks").await;
    let ca = ca_of_secret(&client).await;
    assert!(!ca.is_empty(), "the Secret holds the CA");

    // Defaulting: a bare CloneSet comes back with upstream's defaults.
    let cs = create(&client, "clonesets", "CloneSet", Some("default"), json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "CloneSet",
        "metadata": { "name": "web" },
        "spec": {
            "replicas": 1,
            "selector": { "matchLabels": { "app": "web" } },
            "template": { "metadata": { "labels": { "app": "web" } }, "spec": { "containers": [{ "name": "web", "image": "nginx" }] } }
        }
    }))
    .await
    .expect("a valid CloneSet is admitted");
    assert_eq!(
        cs.data["spec"]["updateStrategy"]["type"], "ReCreate",
        "defaulted by the mutating webhook: {:?}",
        cs.data
    );
    assert_eq!(cs.data["spec"]["template"]["spec"]["containers"][0]["imagePullPolicy"], "Always");

    // Validation: a second SidecarSet injecting the same container into the same pods is denied.
    create(&client, "sidecarsets", "SidecarSet", None, sidecarset("logs", "sidecar")).await.expect("first SidecarSet");
    let err = create(&client, "sidecarsets", "SidecarSet", None, sidecarset("logs-again", "sidecar"))
        .await
        .expect_err("a conflicting SidecarSet is denied");
    let kube::Error::Api(status) = err else { panic!("an API error: {err:?}") };
    assert_eq!(status.code, 422, "{status:?}");
    assert!(status.message.contains("vsidecarset.kb.io"), "the message names the webhook: {}", status.message);
    assert!(status.message.contains("container sidecar already exist in logs"), "{}", status.message);

    let handled = first.metric("kruise_webhook_handling_seconds_count{allowed=\"false\",path=\"/validate-apps-kruise-io-v1alpha1-sidecarset\"}").await;
    assert_eq!(handled, Some(1.0), "the denial was timed");

    // patchPodMetadata is limited by the whitelist in kruise-configuration.
    let patching = |name: &str, key: &str| {
        json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
            "metadata": { "name": name, "labels": { "app": "sidecar" } },
            "spec": {
                "selector": { "matchLabels": { "app": name } },
                "containers": [{ "name": name, "image": "busybox:1.36" }],
                "patchPodMetadata": [{ "annotations": { key: "1" }, "patchPolicy": "Retain" }]
            }
        })
    };
    let denied = |r: Result<DynamicObject, kube::Error>| match r {
        Err(kube::Error::Api(s)) if s.code == 422 => s.message,
        other => panic!("expected a denial, got {other:?}"),
    };
    let msg = denied(create(&client, "sidecarsets", "SidecarSet", None, patching("oom-a", "oom-score")).await);
    assert!(msg.contains("whitelist not found"), "{msg}");
    let whitelist = json!({ "rules": [{ "selector": { "matchLabels": { "app": "sidecar" } }, "allowedAnnotationKeyExprs": ["^oom-score$"] }] });
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta { name: Some("kruise-configuration".into()), ..Default::default() },
        data: Some([("SidecarSet_PatchPodMetadata_WhiteList".to_string(), whitelist.to_string())].into()),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), KRUISE_NS)
        .create(&PostParams::default(), &cm)
        .await
        .expect("whitelist ConfigMap");
    create(&client, "sidecarsets", "SidecarSet", None, patching("oom-b", "oom-score"))
        .await
        .expect("a whitelisted key");
    let msg = denied(create(&client, "sidecarsets", "SidecarSet", None, patching("oom-c", "other")).await);
    assert!(msg.contains("annotation other is not allowed"), "{msg}");

    // The Secret deleted: the replica writes a new one at once and re-points the configurations.
    Api::<Secret>::namespaced(client.clone(), KRUISE_NS)
        .delete("kruise-webhook-certs", &Default::default())
        .await
        .expect("delete the Secret");
    let secrets = Api::<Secret>::namespaced(client.clone(), KRUISE_NS);
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    let replaced = loop {
        let secret = secrets.get_opt("kruise-webhook-certs").await.ok().flatten();
        let new_ca = secret.and_then(|s| s.data).and_then(|d| d.get("ca-cert.pem").map(|b| b.0.clone()));
        if let Some(c) = new_ca.filter(|c| !c.is_empty() && *c != ca) {
            break c;
        }
        assert!(std::time::Instant::now() < deadline, "no new Secret with a new CA within 20 s");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    eventually(Duration::from_secs(20), "the configurations to carry the new CA", || async {
        let v = Api::<ValidatingWebhookConfiguration>::all(client.clone()).get(VALIDATING_CONFIGURATION).await.ok();
        v.and_then(|v| v.webhooks)
            .is_some_and(|w| w.iter().all(|w| w.client_config.ca_bundle.as_ref().is_some_and(|b| b.0 == replaced)))
    })
    .await;
    create(&client, "sidecarsets", "SidecarSet", None, sidecarset("after-rotation", "rotated"))
        .await
        .expect("served with the new certificate");
    let ca = replaced;

    // A new process (new port, same Secret) takes over with the same CA.
    first.process.stop(Duration::from_secs(10));
    let second = ManagerProcess::start(&cp, KRUISE_NS, "webhook-b", &[]);
    let port2 = webhook_port(&second).await;
    eventually(Duration::from_secs(60), "the configurations to point at the new process", || {
        configured_for(&client, port2)
    })
    .await;
    assert_eq!(ca_of_secret(&client).await, ca, "the restarted replica reuses the CA");
    let err = create(&client, "sidecarsets", "SidecarSet", None, sidecarset("logs-third", "sidecar")).await;
    assert!(matches!(err, Err(kube::Error::Api(ref s)) if s.code == 422), "still denied: {err:?}");
    create(&client, "sidecarsets", "SidecarSet", None, sidecarset("metrics", "exporter"))
        .await
        .expect("a valid one is admitted");
}

pub(crate) async fn create_pod(client: &Client, namespace: &str, body: serde_json::Value) -> Result<Pod, kube::Error> {
    let pod: Pod = serde_json::from_value(body).expect("pod");
    Api::<Pod>::namespaced(client.clone(), namespace).create(&PostParams::default(), &pod).await
}

pub(crate) fn annotation<'a>(pod: &'a Pod, key: &str) -> Option<&'a str> {
    pod.metadata.annotations.as_ref().and_then(|a| a.get(key)).map(String::as_str)
}

/// Creates pods from `body(i)` until one satisfies `done`: the pod webhook reads SidecarSets from
/// a watch, so a pod created right after a SidecarSet change may see the previous state.
async fn first_pod_where(
    client: &Client,
    prefix: &str,
    body: impl Fn(&str) -> serde_json::Value,
    done: impl Fn(&Pod) -> bool,
) -> Pod {
    for i in 0..40 {
        let pod = create_pod(client, "default", body(&format!("{prefix}-{i}"))).await.expect("pod admitted");
        if done(&pod) {
            return pod;
        }
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
    panic!("no {prefix} pod came out as expected");
}

#[tokio::test]
async fn pods_get_their_sidecars_at_creation_through_the_api_server() {
    let (_cp, client, _manager) = webhook_cluster("injection").await;

    // The seed example: the logtail SidecarSet, applied as a user would.
    let logtail: serde_json::Value =
        serde_norway::from_str(include_str!("../../examples/sidecarset-logtail.yaml")).expect("example");
    let set = create(&client, "sidecarsets", "SidecarSet", None, logtail).await.expect("logtail SidecarSet");
    let set_hash = set.metadata.annotations.as_ref().and_then(|a| a.get("kruise.io/sidecarset-hash")).cloned();
    assert_eq!(set_hash.as_ref().map(String::len), Some(64), "the mutating webhook hashed the set");
    // Scenario 2: stored with upstream's defaults and both hashes.
    let without_image =
        set.metadata.annotations.as_ref().and_then(|a| a.get("kruise.io/sidecarset-hash-without-image"));
    assert_eq!(without_image.map(String::len), Some(64));
    assert_eq!(set.data["spec"]["updateStrategy"]["type"], "RollingUpdate");
    assert_eq!(set.data["spec"]["updateStrategy"]["partition"], 0);
    assert_eq!(set.data["spec"]["revisionHistoryLimit"], 10);
    let c = &set.data["spec"]["containers"][0];
    assert_eq!(c["upgradeStrategy"]["upgradeType"], "ColdUpgrade");
    assert_eq!(c["imagePullPolicy"], "IfNotPresent");
    assert_eq!(c["terminationMessagePath"], "/dev/termination-log");

    // The controller records the set's first revision and names it in the status.
    let sets: Api<DynamicObject> = Api::all_with(client.clone(), &resource("sidecarsets", "SidecarSet"));
    let mut latest = String::new();
    let deadline = std::time::Instant::now() + Duration::from_secs(30);
    while latest.is_empty() {
        assert!(std::time::Instant::now() < deadline, "status.latestRevision never set");
        tokio::time::sleep(Duration::from_millis(250)).await;
        let s = sets.get("logtail").await.expect("get set");
        latest = s.data.pointer("/status/latestRevision").and_then(|v| v.as_str()).unwrap_or_default().to_string();
    }
    assert!(latest.starts_with("logtail-"), "{latest}");
    let rev =
        Api::<ControllerRevision>::namespaced(client.clone(), KRUISE_NS).get(&latest).await.expect("the revision");
    assert_eq!(
        rev.metadata.labels.as_ref().and_then(|l| l.get("kruise.io/sidecarset-name")).map(String::as_str),
        Some("logtail")
    );
    assert_eq!(rev.revision, 1);
    assert_eq!(
        rev.metadata.annotations.as_ref().and_then(|a| a.get("kruise.io/sidecarset-hash")),
        set_hash.as_ref(),
        "the revision carries the set's hashes"
    );

    let app = |name: &str| {
        json!({
            "metadata": { "name": name, "labels": { "logging": "enabled", "app-container": "main" } },
            "spec": { "containers": [{
                "name": "main", "image": "nginx:1.27",
                "env": [{ "name": "TZ", "value": "Asia/Shanghai" }, { "name": "CLUSTER_NAME", "value": "prod" }],
                "volumeMounts": [{ "name": "logs", "mountPath": "/var/log/app" }]
            }], "volumes": [{ "name": "logs", "emptyDir": {} }] }
        })
    };
    let pod =
        first_pod_where(&client, "web", app, |p| annotation(p, "kruise.io/sidecarset-injected-list").is_some()).await;
    let spec = pod.spec.as_ref().expect("spec");
    let names: Vec<&str> = spec.containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["main", "logtail"], "AfterAppContainer");
    let logtail = &spec.containers[1];
    let env: Vec<(&str, &str)> =
        logtail.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or(""))).collect();
    assert_eq!(env, [("IS_INJECTED", "true"), ("TZ", "Asia/Shanghai"), ("CLUSTER_NAME", "prod")]);
    let mounts: Vec<&str> = logtail.volume_mounts.iter().flatten().map(|m| m.mount_path.as_str()).collect();
    // Own mount, then the app's: its log mount and, as upstream shares every app mount, the
    // token mount the ServiceAccount admission plugin added before the webhook ran.
    assert_eq!(
        mounts,
        ["/var/lib/logtail", "/var/log/app", "/var/run/secrets/kubernetes.io/serviceaccount"],
        "own mount, then the shared app mounts"
    );
    let volumes: Vec<&str> = spec.volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert!(volumes.contains(&"logs") && volumes.contains(&"logtail-state"), "{volumes:?}");
    assert_eq!(annotation(&pod, "kruise.io/sidecarset-injected-list"), Some("logtail"));
    let hashes: serde_json::Value =
        serde_json::from_str(annotation(&pod, "kruise.io/sidecarset-hash").expect("hash annotation")).expect("JSON");
    assert_eq!(hashes["logtail"]["hash"].as_str(), set_hash.as_deref(), "the pod records the set's hash");
    assert_eq!(hashes["logtail"]["sidecarList"], json!(["logtail"]));

    // A pod the set does not select is left alone.
    let mut plain = app("plain");
    plain["metadata"]["labels"] = json!({ "logging": "disabled" });
    let plain = create_pod(&client, "default", plain).await.expect("pod admitted");
    assert_eq!(plain.spec.as_ref().map(|s| s.containers.len()), Some(1));
    assert!(annotation(&plain, "kruise.io/sidecarset-hash").is_none());

    // Pinned to a recorded revision: new pods get that revision's sidecar, not the current one.
    let revision: ControllerRevision = serde_json::from_value(json!({
        "metadata": {
            "name": "logtail-v1", "namespace": KRUISE_NS,
            "labels": { "kruise.io/sidecarset-name": "logtail", "apps.kruise.io/sidecarset-custom-version": "v1" }
        },
        "revision": 1,
        "data": { "spec": {
            "containers": [{ "name": "logtail", "image": "registry.example.com/observability/logtail:1.0.0",
                             "podInjectPolicy": "AfterAppContainer" }],
            "initContainers": null, "volumes": null, "imagePullSecrets": null, "patchPodMetadata": null
        } }
    }))
    .expect("revision");
    Api::<ControllerRevision>::namespaced(client.clone(), KRUISE_NS)
        .create(&PostParams::default(), &revision)
        .await
        .expect("create revision");
    // The v1.3 gray-release example: keep 90% of pods at the old version while new pods are
    // injected with the pinned custom version (moving existing pods is the upgrade controller's).
    let pin = json!({ "spec": {
        "updateStrategy": { "partition": "90%" },
        "injectionStrategy": { "revision": { "customVersion": "v1", "policy": "Always" } }
    } });
    sets.patch("logtail", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&pin))
        .await
        .expect("the SidecarSet pins custom version v1 (the validating webhook finds the revision)");
    let old_image = Some("registry.example.com/observability/logtail:1.0.0");
    let old = first_pod_where(&client, "pinned", app, |p| {
        let logtail = p.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == "logtail"));
        logtail.and_then(|c| c.image.as_deref()) == old_image
    })
    .await;
    let hashes: serde_json::Value =
        serde_json::from_str(annotation(&old, "kruise.io/sidecarset-hash").expect("hash")).expect("JSON");
    assert_eq!(hashes["logtail"]["controllerRevision"], "logtail-v1");

    // Pinned by name instead: another recorded revision.
    let mut v0 = revision.clone();
    v0.metadata.name = Some("logtail-v0".into());
    v0.metadata.labels.as_mut().expect("labels").insert("apps.kruise.io/sidecarset-custom-version".into(), "v0".into());
    v0.revision = 0;
    v0.data.as_mut().expect("data").0["spec"]["containers"][0]["image"] =
        json!("registry.example.com/observability/logtail:0.9.0");
    Api::<ControllerRevision>::namespaced(client.clone(), KRUISE_NS)
        .create(&PostParams::default(), &v0)
        .await
        .expect("create revision v0");
    let pin = json!({ "spec": { "injectionStrategy": { "revision": { "customVersion": null, "revisionName": "logtail-v0" } } } });
    sets.patch("logtail", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&pin))
        .await
        .expect("the SidecarSet pins revision logtail-v0 by name");
    let v0_image = Some("registry.example.com/observability/logtail:0.9.0");
    first_pod_where(&client, "by-name", app, |p| {
        let logtail = p.spec.as_ref().and_then(|s| s.containers.iter().find(|c| c.name == "logtail"));
        logtail.and_then(|c| c.image.as_deref()) == v0_image
    })
    .await;

    // patchPodMetadata, each policy, on pods with their own annotations (keys whitelisted).
    let whitelist = json!({ "rules": [{ "allowedAnnotationKeyExprs": ["^(kept|replaced|merged)$"] }] });
    let cm = k8s_openapi::api::core::v1::ConfigMap {
        metadata: ObjectMeta { name: Some("kruise-configuration".into()), ..Default::default() },
        data: Some([("SidecarSet_PatchPodMetadata_WhiteList".to_string(), whitelist.to_string())].into()),
        ..Default::default()
    };
    Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(client.clone(), KRUISE_NS)
        .create(&PostParams::default(), &cm)
        .await
        .expect("whitelist");
    create(
        &client,
        "sidecarsets",
        "SidecarSet",
        None,
        json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
            "metadata": { "name": "patcher" },
            "spec": {
                "selector": { "matchLabels": { "patch": "me" } },
                "containers": [{ "name": "patcher", "image": "busybox:1.36" }],
                "patchPodMetadata": [
                    { "annotations": { "kept": "side" }, "patchPolicy": "Retain" },
                    { "annotations": { "replaced": "side" }, "patchPolicy": "Overwrite" },
                    { "annotations": { "merged": "{\"envoy\":2}" }, "patchPolicy": "MergePatchJson" }
                ]
            }
        }),
    )
    .await
    .expect("patching SidecarSet");
    let annotated = |name: &str| {
        json!({
            "metadata": { "name": name, "labels": { "patch": "me" },
                          "annotations": { "kept": "user", "replaced": "user", "merged": "{\"log-agent\":1}" } },
            "spec": { "containers": [{ "name": "main", "image": "nginx:1.27" }] }
        })
    };
    let patched = first_pod_where(&client, "patched", annotated, |p| {
        annotation(p, "kruise.io/sidecarset-injected-list").is_some()
    })
    .await;
    assert_eq!(annotation(&patched, "kept"), Some("user"), "Retain keeps the pod's value");
    assert_eq!(annotation(&patched, "replaced"), Some("side"), "Overwrite replaces it");
    assert_eq!(annotation(&patched, "merged"), Some(r#"{"envoy":2,"log-agent":1}"#), "MergePatchJson merges");
}

#[tokio::test]
async fn sidecarset_history_is_capped_and_a_returning_spec_is_renumbered() {
    let (_cp, client, _manager) = webhook_cluster("history").await;
    let sets: Api<DynamicObject> = Api::all_with(client.clone(), &resource("sidecarsets", "SidecarSet"));
    let revisions: Api<ControllerRevision> = Api::namespaced(client.clone(), KRUISE_NS);
    let latest = || async {
        let s = sets.get("history").await.expect("get set");
        s.data.pointer("/status/latestRevision").and_then(|v| v.as_str()).unwrap_or_default().to_string()
    };
    let mut set = sidecarset("history", "history");
    set["spec"]["imagePullSecrets"] = json!([{ "name": "secret-1" }]);
    create(&client, "sidecarsets", "SidecarSet", None, set).await.expect("create");
    let mut seen = Vec::new();
    for i in 1..=15 {
        if i > 1 {
            let patch = json!({ "spec": { "imagePullSecrets": [{ "name": format!("secret-{i}") }] } });
            sets.patch("history", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch))
                .await
                .expect("edit");
        }
        // One edit at a time: wait for its revision before the next.
        let deadline = std::time::Instant::now() + Duration::from_secs(20);
        loop {
            let now = latest().await;
            if !now.is_empty() && !seen.contains(&now) {
                seen.push(now);
                break;
            }
            assert!(std::time::Instant::now() < deadline, "edit {i} got no new revision");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    let numbers = || async {
        let list = revisions
            .list(&ListParams::default().labels("kruise.io/sidecarset-name=history"))
            .await
            .expect("list revisions");
        let mut n: Vec<i64> = list.items.iter().map(|r| r.revision).collect();
        n.sort();
        n
    };
    eventually(Duration::from_secs(20), "10 revisions kept, numbered 6..15", || async {
        numbers().await == (6..=15).collect::<Vec<_>>()
    })
    .await;

    // Back to secret-12: no new revision; revision 12 becomes 16.
    let patch = json!({ "spec": { "imagePullSecrets": [{ "name": "secret-12" }] } });
    sets.patch("history", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.expect("edit");
    eventually(Duration::from_secs(20), "the old revision renumbered 16", || async {
        numbers().await == [6, 7, 8, 9, 10, 11, 13, 14, 15, 16]
    })
    .await;
    assert_eq!(latest().await, seen[11], "status names the revision of secret-12 again");
}

/// A SidecarSet selecting pods labelled `scenario=<name>`, with `spec` merged in.
async fn scenario_set(client: &Client, name: &str, spec: serde_json::Value) {
    let mut body = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": name },
        "spec": { "selector": { "matchLabels": { "scenario": name } } }
    });
    json_patch::merge(&mut body["spec"], &spec);
    create(client, "sidecarsets", "SidecarSet", None, body).await.expect("SidecarSet");
}

/// A pod labelled for `scenario`, with `spec` and `metadata` merged in.
fn scenario_pod(scenario: &str, name: &str, metadata: serde_json::Value, spec: serde_json::Value) -> serde_json::Value {
    let mut pod = json!({
        "metadata": { "name": name, "labels": { "scenario": scenario } },
        "spec": { "containers": [{ "name": "main", "image": "nginx:1.27" }] }
    });
    json_patch::merge(&mut pod["metadata"], &metadata);
    json_patch::merge(&mut pod["spec"], &spec);
    pod
}

fn injected(p: &Pod) -> bool {
    annotation(p, "kruise.io/sidecarset-injected-list").is_some()
}

fn container_names(p: &Pod) -> Vec<String> {
    p.spec.iter().flat_map(|s| s.containers.iter().map(|c| c.name.clone())).collect()
}

/// For a set `scenario` that must not inject: adds a sibling set selecting the same pods, creates
/// pods until the sibling injects one (the webhook's cache then holds both sets, so `scenario`'s
/// absence means something) and checks only the sibling did.
async fn only_the_sibling_injects(client: &Client, scenario: &str, why: &str) -> Pod {
    let sibling = format!("{scenario}-sibling");
    let container = json!({ "name": sibling, "image": "busybox:1.36" });
    scenario_set(
        client,
        &sibling,
        json!({ "selector": { "matchLabels": { "scenario": scenario } }, "containers": [container] }),
    )
    .await;
    let p = first_pod_where(client, scenario, |n| scenario_pod(scenario, n, json!({}), json!({})), injected).await;
    assert_eq!(annotation(&p, "kruise.io/sidecarset-injected-list"), Some(sibling.as_str()), "{why}");
    p
}

#[tokio::test]
async fn the_spec_injection_scenarios_through_the_api_server() {
    let (_cp, client, _manager) = webhook_cluster("scenarios").await;
    let busybox = |name: &str| json!({ "name": name, "image": "busybox:1.36" });

    // 4. Order: init containers by name after the pod's; Before / After app containers.
    scenario_set(
        &client,
        "order",
        json!({
            "initContainers": [busybox("init-2"), busybox("init-1")],
            "containers": [
                { "name": "dns-f", "image": "busybox:1.36", "podInjectPolicy": "BeforeAppContainer" },
                { "name": "log-agent", "image": "busybox:1.36", "podInjectPolicy": "AfterAppContainer" }
            ]
        }),
    )
    .await;
    let p = first_pod_where(
        &client,
        "order",
        |n| scenario_pod("order", n, json!({}), json!({ "initContainers": [busybox("init-0")] })),
        injected,
    )
    .await;
    let inits: Vec<&str> = p.spec.as_ref().unwrap().init_containers.iter().flatten().map(|c| c.name.as_str()).collect();
    assert_eq!(inits, ["init-0", "init-1", "init-2"]);
    assert_eq!(container_names(&p), ["dns-f", "main", "log-agent"]);

    // 5. Volumes: only mounted ones, after the pod's.
    scenario_set(&client, "volumes", json!({
        "containers": [{ "name": "c", "image": "busybox:1.36", "volumeMounts": [{ "name": "volume-1", "mountPath": "/v1" }] }],
        "volumes": [{ "name": "volume-1", "emptyDir": {} }, { "name": "volume-2", "emptyDir": {} }]
    }))
    .await;
    let pod_volumes =
        json!({ "volumes": [{ "name": "volume-a", "emptyDir": {} }, { "name": "volume-b", "emptyDir": {} }] });
    let p =
        first_pod_where(&client, "volumes", |n| scenario_pod("volumes", n, json!({}), pod_volumes.clone()), injected)
            .await;
    let vols: Vec<&str> = p.spec.as_ref().unwrap().volumes.iter().flatten().map(|v| v.name.as_str()).collect();
    assert_eq!(
        vols.iter().filter(|v| !v.starts_with("kube-api-access")).copied().collect::<Vec<_>>(),
        ["volume-a", "volume-b", "volume-1"]
    );

    // 7 + 8. transferEnv: the sidecar's own env wins; the source named by a label or annotation;
    // a missing variable is skipped.
    for (scenario, field) in
        [("env-label", "metadata.labels['biz']"), ("env-annotation", "metadata.annotations['biz']")]
    {
        scenario_set(&client, scenario, json!({
            "containers": [{
                "name": "nginx-sidecar", "image": "busybox:1.36",
                "env": [{ "name": "OD_NAME", "value": "sidecar_name" }, { "name": "SidecarName", "value": "nginx-sidecar" }],
                "transferEnv": [{ "sourceContainerNameFrom": { "fieldRef": { "apiVersion": "v1", "fieldPath": field } },
                                  "envNames": ["POD_NAME", "OD_NAME", "PROXY_IP", "MISSING"] }]
            }]
        }))
        .await;
        let meta = json!({ "labels": { "biz": "main" }, "annotations": { "biz": "main" } });
        let app = json!({ "containers": [{ "name": "main", "image": "nginx:1.27", "env": [
            { "name": "POD_NAME", "value": "bar" }, { "name": "OD_NAME", "value": "od_name" }, { "name": "PROXY_IP", "value": "127.0.0.1" }
        ] }] });
        let p = first_pod_where(&client, scenario, |n| scenario_pod(scenario, n, meta.clone(), app.clone()), injected)
            .await;
        let sidecar = &p.spec.as_ref().unwrap().containers[0];
        let env: std::collections::BTreeMap<&str, &str> =
            sidecar.env.iter().flatten().map(|e| (e.name.as_str(), e.value.as_deref().unwrap_or(""))).collect();
        assert_eq!(env["POD_NAME"], "bar", "{scenario}");
        assert_eq!(env["OD_NAME"], "sidecar_name", "{scenario}: the sidecar's own value wins");
        assert_eq!(env["PROXY_IP"], "127.0.0.1", "{scenario}");
        assert_eq!(env["SidecarName"], "nginx-sidecar", "{scenario}");
        assert!(!env.contains_key("MISSING"), "{scenario}");
    }

    // 9. imagePullSecrets: the pod's, then the set's new ones.
    scenario_set(
        &client,
        "secrets",
        json!({
            "containers": [busybox("c")],
            "imagePullSecrets": [{ "name": "s0" }, { "name": "s1" }, { "name": "s2" }]
        }),
    )
    .await;
    let pod_secrets = json!({ "imagePullSecrets": [{ "name": "s2" }, { "name": "s3" }] });
    let p =
        first_pod_where(&client, "secrets", |n| scenario_pod("secrets", n, json!({}), pod_secrets.clone()), injected)
            .await;
    let secrets: Vec<&str> =
        p.spec.as_ref().unwrap().image_pull_secrets.iter().flatten().map(|s| s.name.as_str()).collect();
    assert_eq!(secrets, ["s2", "s3", "s0", "s1"]);

    // 11. namespace: only pods of that namespace.
    scenario_set(&client, "scoped", json!({ "namespace": "kube-public", "containers": [busybox("scoped")] })).await;
    only_the_sibling_injects(&client, "scoped", "not injected outside spec.namespace").await;

    // 12. Two sets on one pod, a legacy hash entry kept.
    scenario_set(
        &client,
        "two-a",
        json!({ "selector": { "matchLabels": { "scenario": "two" } }, "containers": [busybox("two-a")] }),
    )
    .await;
    scenario_set(
        &client,
        "two-b",
        json!({ "selector": { "matchLabels": { "scenario": "two" } }, "containers": [busybox("two-b")] }),
    )
    .await;
    let legacy = json!({ "annotations": { "kruise.io/sidecarset-hash": "{\"sidecarset-test\":\"abc\"}" } });
    let p = first_pod_where(
        &client,
        "two",
        |n| scenario_pod("two", n, legacy.clone(), json!({})),
        |p| annotation(p, "kruise.io/sidecarset-injected-list") == Some("two-a,two-b"),
    )
    .await;
    let hashes: serde_json::Value = serde_json::from_str(annotation(&p, "kruise.io/sidecarset-hash").unwrap()).unwrap();
    assert_eq!(hashes["sidecarset-test"]["hash"], "abc", "the legacy entry kept, in object form");
    assert!(hashes["two-a"]["hash"].is_string() && hashes["two-b"]["hash"].is_string());

    // 10. Paused injection: new pods untouched.
    scenario_set(
        &client,
        "paused",
        json!({ "injectionStrategy": { "paused": true }, "containers": [busybox("paused")] }),
    )
    .await;
    let p = only_the_sibling_injects(&client, "paused", "the paused set injects nothing").await;
    assert!(!container_names(&p).contains(&"paused".to_string()));
}
