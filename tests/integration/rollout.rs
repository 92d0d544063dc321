//! SidecarSet in-place rollouts through the real API server: kwok nodes run the pods, and kwok's
//! `container-image-update` stage (tests/cluster/kwok) plays the kubelet's part of an in-place
//! update (restart the container on the new image, report a new image ID).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Namespace, Pod};
use kube::api::{ObjectMeta, Patch, PatchParams, PostParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::json;

use kruise::api::sidecarset::SidecarSet;
use kruise::controllers::sidecarset::pod_state::{
    INPLACE_UPDATE_STATE, SetVersion, is_consistent, is_matched, is_ready, is_updated,
};

use crate::support::cluster::control_plane::node_name;
use crate::support::{LogsOnFailure, default_service_account, eventually};
use crate::webhooks::{KRUISE_NS, annotation, create, create_pod, kruise_cluster, resource};

/// The waits of these tests: generous, the machines are shared.
const WAIT: Duration = Duration::from_secs(90);

fn sidecarsets(client: &Client) -> Api<DynamicObject> {
    Api::all_with(client.clone(), &resource("sidecarsets", "SidecarSet"))
}

async fn get_set(client: &Client, name: &str) -> SidecarSet {
    let o = sidecarsets(client).get(name).await.expect("sidecarset");
    serde_json::from_value(serde_json::to_value(o).expect("json")).expect("SidecarSet")
}

/// `[matched, updated, ready, updatedReady]` of the set's status.
async fn status_of(client: &Client, name: &str) -> [i32; 4] {
    let s = get_set(client, name).await.status.unwrap_or_default();
    [s.matched_pods, s.updated_pods, s.ready_pods, s.updated_ready_pods.unwrap_or(0)]
}

async fn wait_status(client: &Client, name: &str, want: [i32; 4]) {
    eventually(WAIT, &format!("status {want:?} of {name}"), || async move { status_of(client, name).await == want })
        .await;
}

async fn patch_set(client: &Client, name: &str, patch: serde_json::Value) {
    sidecarsets(client).patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("patch sidecarset");
}

pub(crate) async fn namespace(client: &Client, name: &str) {
    let ns = Namespace { metadata: ObjectMeta { name: Some(name.into()), ..Default::default() }, ..Default::default() };
    match Api::<Namespace>::all(client.clone()).create(&PostParams::default(), &ns).await {
        Ok(_) => {}
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => panic!("namespace {name}: {e}"),
    }
    default_service_account(client, name).await;
}

/// A pod on the first kwok node (no scheduler needed).
fn pod_body(name: &str, labels: serde_json::Value) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": { "name": name, "labels": labels },
        "spec": {
            "nodeName": node_name(0),
            "containers": [{
                "name": "nginx", "image": "nginx:1.25",
                "env": [{ "name": "TZ", "value": "Asia/Shanghai" }],
                "volumeMounts": [{ "name": "nginx-log", "mountPath": "/var/log/nginx" }]
            }],
            "volumes": [{ "name": "nginx-log", "emptyDir": {} }]
        }
    })
}

fn container<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::Container> {
    pod.spec.as_ref()?.containers.iter().find(|c| c.name == name)
}

fn container_status<'a>(pod: &'a Pod, name: &str) -> Option<&'a k8s_openapi::api::core::v1::ContainerStatus> {
    pod.status.as_ref()?.container_statuses.as_ref()?.iter().find(|c| c.name == name)
}

/// Spec scenarios 3 and 17 (the seed): inject, status 1/1/1/1, change the image, the sidecar is
/// restarted in place on the new image (the pod is not re-created, the app container not
/// restarted), the old image ID is recorded, and status comes back to all updated.
#[tokio::test]
async fn the_logtail_sidecar_is_upgraded_in_place() {
    let (cp, client, managers) = kruise_cluster("rollout-logtail", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let set = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": "logtail-sidecarset" },
        "spec": {
            "selector": { "matchLabels": { "app": "nginx" } },
            "updateStrategy": { "maxUnavailable": "10%" },
            "containers": [{
                "name": "logtail", "image": "log-service/logtail:0.16.16",
                "transferEnv": [{ "sourceContainerName": "nginx", "envName": "TZ" }],
                "volumeMounts": [{ "name": "nginx-log", "mountPath": "/var/log/nginx" }]
            }],
            "volumes": [{ "name": "nginx-log", "emptyDir": {} }]
        }
    });
    create(&client, "sidecarsets", "SidecarSet", None, set).await.expect("logtail-sidecarset");
    injected_pods(&client, "default", "logtail-sidecarset", &["test-pod"], |_| json!({"app": "nginx"})).await;
    let created = Api::<Pod>::namespaced(client.clone(), "default").get("test-pod").await.expect("test-pod");
    let pod_name = created.metadata.name.clone().unwrap_or_default();
    let uid = created.metadata.uid.clone();
    let names: Vec<&str> = created.spec.as_ref().unwrap().containers.iter().map(|c| c.name.as_str()).collect();
    assert_eq!(names, ["logtail", "nginx"]);

    // Ready on kwok: [1,1,1,1] with the revision fields.
    wait_status(&client, "logtail-sidecarset", [1, 1, 1, 1]).await;
    let s = get_set(&client, "logtail-sidecarset").await;
    let status = s.status.clone().unwrap_or_default();
    assert_eq!(status.observed_generation, Some(1));
    assert!(status.latest_revision.as_deref().is_some_and(|r| r.starts_with("logtail-sidecarset-")));
    let pods: Api<Pod> = Api::namespaced(client.clone(), "default");
    let before = pods.get(&pod_name).await.expect("pod");
    let old_image_id = container_status(&before, "logtail").map(|c| c.image_id.clone()).unwrap_or_default();

    // Scenario 17: a new image.
    patch_set(
        &client,
        "logtail-sidecarset",
        json!({ "spec": { "containers": [{
        "name": "logtail", "image": "log-service/logtail:0.16.18",
        "transferEnv": [{ "sourceContainerName": "nginx", "envName": "TZ" }],
        "volumeMounts": [{ "name": "nginx-log", "mountPath": "/var/log/nginx" }]
    }] } }),
    )
    .await;
    eventually(WAIT, "the logtail container to run 0.16.18 after one restart", || async {
        let Ok(p) = pods.get(&pod_name).await else { return false };
        let spec_ok = container(&p, "logtail").and_then(|c| c.image.as_deref()) == Some("log-service/logtail:0.16.18");
        let st = container_status(&p, "logtail");
        spec_ok && st.is_some_and(|s| s.image == "log-service/logtail:0.16.18" && s.restart_count == 1)
    })
    .await;
    let after = pods.get(&pod_name).await.expect("pod");
    assert_eq!(after.metadata.uid, uid, "upgraded in place, not re-created");
    assert_eq!(container_status(&after, "nginx").map(|c| c.restart_count), Some(0), "the app was not restarted");
    assert_eq!(
        container(&after, "nginx").and_then(|c| c.image.as_deref()),
        Some("nginx:1.25"),
        "only the sidecar's image changed"
    );
    let state: serde_json::Value =
        serde_json::from_str(annotation(&after, INPLACE_UPDATE_STATE).expect("in-place update state")).expect("json");
    assert_eq!(state["logtail-sidecarset"]["lastContainerStatuses"]["logtail"]["imageID"], json!(old_image_id));

    wait_status(&client, "logtail-sidecarset", [1, 1, 1, 1]).await;
    let s = get_set(&client, "logtail-sidecarset").await;
    let v = SetVersion::new(&s);
    let after = pods.get(&pod_name).await.expect("pod");
    assert!(is_updated(&v, &after) && is_consistent(&after, &["logtail"]) && is_ready(&after));
    let hashes: BTreeMap<String, serde_json::Value> =
        serde_json::from_str(annotation(&after, "kruise.io/sidecarset-hash").expect("hash")).expect("json");
    eventually(WAIT, "the pod's entry to name the latest revision", || async {
        let s = get_set(&client, "logtail-sidecarset").await;
        let latest = s.status.and_then(|st| st.latest_revision).unwrap_or_default();
        let p = pods.get(&pod_name).await.expect("pod");
        let h: BTreeMap<String, serde_json::Value> =
            serde_json::from_str(annotation(&p, "kruise.io/sidecarset-hash").unwrap_or("{}")).unwrap_or_default();
        h["logtail-sidecarset"]["controllerRevision"] == json!(latest)
    })
    .await;
    assert_eq!(hashes["logtail-sidecarset"]["hash"], json!(v.hash));
    let m = &managers[0];
    let updated = "kruise_sidecarset_pods{sidecarset=\"logtail-sidecarset\",state=\"updated_ready\"}";
    assert_eq!(m.metric(updated).await, Some(1.0));
    assert_eq!(m.metric("kruise_sidecarset_inplace_updates_total{result=\"success\"}").await, Some(1.0));
}

/// What a watch of the pods saw during a rollout to `v`: the most pods updated but not yet
/// consistent and ready at once, and the fewest pods still old.
#[derive(Debug, Default, Clone, Copy)]
struct Observed {
    max_in_flight: usize,
    min_old: usize,
    events: usize,
}

/// Watches every pod matched by `set` (label `app=web`) and checks the rollout's invariants on
/// every event, until dropped.
fn watch_invariants(client: &Client, target: SidecarSet) -> (tokio::task::JoinHandle<()>, Arc<Mutex<Observed>>) {
    use futures::StreamExt;
    use kube::runtime::watcher;
    let observed = Arc::new(Mutex::new(Observed { min_old: usize::MAX, ..Default::default() }));
    let seen = observed.clone();
    let api: Api<Pod> = Api::all(client.clone());
    let task = tokio::spawn(async move {
        let v = SetVersion::new(&target);
        let mut pods: BTreeMap<(String, String), Pod> = BTreeMap::new();
        let mut stream = watcher(api, watcher::Config::default().labels("app=web")).boxed();
        while let Some(Ok(event)) = stream.next().await {
            let key = |p: &Pod| {
                (p.metadata.namespace.clone().unwrap_or_default(), p.metadata.name.clone().unwrap_or_default())
            };
            match event {
                watcher::Event::Apply(p) | watcher::Event::InitApply(p) => {
                    pods.insert(key(&p), p);
                }
                watcher::Event::Delete(p) => {
                    pods.remove(&key(&p));
                }
                watcher::Event::Init => pods.clear(),
                watcher::Event::InitDone => {}
            }
            let matched: Vec<&Pod> = pods.values().filter(|p| is_matched(&v, p)).collect();
            let in_flight = matched
                .iter()
                .filter(|p| is_updated(&v, p) && !(is_ready(p) && is_consistent(p, &v.containers)))
                .count();
            let old = matched.iter().filter(|p| !is_updated(&v, p)).count();
            let mut o = seen.lock().unwrap();
            o.events += 1;
            o.max_in_flight = o.max_in_flight.max(in_flight);
            if matched.len() == 48 {
                o.min_old = o.min_old.min(old);
            }
        }
    });
    (task, observed)
}

/// The identity holding the lease of the shard SidecarSets live in (namespace "").
async fn sidecarset_shard_holder(client: &Client) -> Option<String> {
    let shard = kruise::runtime::shard::ShardSpace::new(32).expect("space").shard_of_key("");
    let leases: Api<Lease> = Api::namespaced(client.clone(), KRUISE_NS);
    let l = leases.get_opt(&format!("kruise-shard-{}", shard.0)).await.ok().flatten()?;
    l.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty())
}

/// Item 5 and 7 of the rollout issue: 3 replicas, 48 pods over 24 namespaces (so over most
/// shards), maxUnavailable 3 and partition 10. A watch of the pods checks on every event that no
/// more than 3 are updated-but-unavailable and at least 10 stay old; the replica owning the set's
/// shard is killed mid-rollout; the rollout still ends with exactly 38 new and 10 old.
#[tokio::test]
async fn budgets_hold_across_replicas_and_a_killed_owner() {
    let (cp, client, mut managers) = kruise_cluster("rollout-shards", 2, 3, &[]).await;
    let _logs = LogsOnFailure(&cp);
    // Names that differ only at the end share FNV-1a's top bits, hence a shard ("team-00".."team-23"
    // all fall in shard 8 of 32): these spread over 19 shards.
    let namespaces: Vec<String> = (0..24).map(|i| format!("team-{i:02}-apps")).collect();
    for ns in &namespaces {
        namespace(&client, ns).await;
    }
    let mut set = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": "mesh" },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "updateStrategy": { "maxUnavailable": 3, "partition": 10 },
            "containers": [{ "name": "proxy", "image": "proxy:1" }]
        }
    });
    create(&client, "sidecarsets", "SidecarSet", None, set.clone()).await.expect("mesh");
    for ns in &namespaces {
        injected_pods(&client, ns, "mesh", &["web-0", "web-1"], |_| json!({"app": "web"})).await;
    }
    wait_status(&client, "mesh", [48, 48, 48, 48]).await;

    set["spec"]["containers"][0]["image"] = json!("proxy:2");
    patch_set(&client, "mesh", json!({ "spec": { "containers": set["spec"]["containers"] } })).await;
    let target = get_set(&client, "mesh").await;
    let (watch, observed) = watch_invariants(&client, target);

    // Mid-rollout, the replica coordinating the set dies without a word.
    eventually(WAIT, "a third of the rollout", || async {
        let s = get_set(&client, "mesh").await;
        let st = s.status.unwrap_or_default();
        st.observed_generation == s.metadata.generation && (12..38).contains(&st.updated_pods)
    })
    .await;
    let owner = sidecarset_shard_holder(&client).await.expect("an owner");
    let victim = managers.iter().position(|m| m.identity == owner).expect("owner is one of ours");
    managers[victim].process.kill();
    eprintln!("killed {owner} mid-rollout at {:?}", status_of(&client, "mesh").await);

    wait_status(&client, "mesh", [48, 38, 48, 38]).await;
    // Nothing more happens: the partition holds.
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(&client, "mesh").await, [48, 38, 48, 38]);
    watch.abort();
    let o = *observed.lock().unwrap();
    eprintln!("observed {o:?}");
    assert!(o.events > 48, "the watch saw the rollout: {o:?}");
    assert!(o.max_in_flight <= 3, "maxUnavailable 3 was exceeded: {o:?}");
    assert!(o.max_in_flight >= 2, "the window was used: {o:?}");
    assert_eq!(o.min_old, 10, "partition 10: {o:?}");
    let upgrades: Vec<usize> = managers
        .iter()
        .map(|m| {
            std::fs::read_to_string(&m.process.log).unwrap_or_default().matches("upgraded sidecars in place").count()
        })
        .collect();
    assert!(
        upgrades.iter().filter(|n| **n > 0).count() >= 2,
        "the pod work was spread over the replicas: {upgrades:?}\n{}",
        managers.iter().map(|m| format!("--- {}:\n{}", m.identity, m.log_tail())).collect::<String>()
    );
}

/// The image of container `c` in each named pod of `namespace`.
async fn images(client: &Client, namespace: &str, pods: &[&str], c: &str) -> Vec<String> {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    let mut out = Vec::new();
    for p in pods {
        let pod = api.get(p).await.expect("pod");
        out.push(container(&pod, c).and_then(|c| c.image.clone()).unwrap_or_default());
    }
    out
}

/// Waits until the status describes the set's current generation, and has `want`.
async fn wait_observed(client: &Client, name: &str, want: [i32; 4]) {
    eventually(WAIT, &format!("status {want:?} of {name}'s current generation"), || async move {
        let s = get_set(client, name).await;
        let generation = s.metadata.generation;
        let st = s.status.unwrap_or_default();
        st.observed_generation == generation
            && [st.matched_pods, st.updated_pods, st.ready_pods, st.updated_ready_pods.unwrap_or(0)] == want
    })
    .await;
}

/// Creates `names` in `namespace` with `labels(name)`, each injected by `set` (retrying while
/// the pod webhook has not seen the set yet).
async fn injected_pods(
    client: &Client,
    namespace: &str,
    set: &str,
    names: &[&str],
    labels: impl Fn(&str) -> serde_json::Value,
) {
    let api: Api<Pod> = Api::namespaced(client.clone(), namespace);
    for name in names {
        for attempt in 0..40 {
            let p = create_pod(client, namespace, pod_body(name, labels(name))).await.expect("pod");
            if annotation(&p, "kruise.io/sidecarset-injected-list") == Some(set) {
                break;
            }
            assert!(attempt < 39, "{name} was never injected");
            api.delete(name, &Default::default()).await.expect("delete");
            eventually(WAIT, "the uninjected pod to go", || async { api.get_opt(name).await.ok().flatten().is_none() })
                .await;
        }
    }
}

/// Spec scenarios 20 (NotUpdate), 21 (paused), 29 (canary selector, and a pod labelled later).
#[tokio::test]
async fn not_update_paused_and_canary_selector() {
    let (cp, client, _managers) = kruise_cluster("rollout-strategies", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let set = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": "side" },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "updateStrategy": { "type": "NotUpdate" },
            "containers": [{ "name": "side", "image": "side:1" }]
        }
    });
    create(&client, "sidecarsets", "SidecarSet", None, set).await.expect("set");
    let pods = ["web-0", "web-1", "web-2"];
    injected_pods(&client, "default", "side", &pods, |_| json!({"app": "web"})).await;
    wait_status(&client, "side", [3, 3, 3, 3]).await;
    let set_image = |image: &str| json!({ "spec": { "containers": [{ "name": "side", "image": image }] } });

    // NotUpdate: the status follows the new version, the pods do not.
    patch_set(&client, "side", set_image("side:2")).await;
    wait_observed(&client, "side", [3, 0, 3, 0]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(images(&client, "default", &pods, "side").await, ["side:1"; 3]);

    // Rolling but paused: still nothing.
    patch_set(&client, "side", json!({ "spec": { "updateStrategy": { "type": "RollingUpdate", "paused": true } } }))
        .await;
    wait_observed(&client, "side", [3, 0, 3, 0]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(images(&client, "default", &pods, "side").await, ["side:1"; 3]);

    // Canary: only the labelled pod; a pod labelled later follows.
    let label = |name: &'static str| {
        let api: Api<Pod> = Api::namespaced(client.clone(), "default");
        async move {
            let patch = json!({ "metadata": { "labels": { "canary.release": "true" } } });
            api.patch(name, &PatchParams::default(), &Patch::Merge(&patch)).await.expect("label");
        }
    };
    label("web-1").await;
    patch_set(
        &client,
        "side",
        json!({ "spec": { "updateStrategy": { "paused": false, "selector": { "matchLabels": { "canary.release": "true" } } } } }),
    )
    .await;
    wait_observed(&client, "side", [3, 1, 3, 1]).await;
    assert_eq!(images(&client, "default", &pods, "side").await, ["side:1", "side:2", "side:1"]);
    label("web-2").await;
    wait_status(&client, "side", [3, 2, 3, 2]).await;
    assert_eq!(images(&client, "default", &pods, "side").await, ["side:1", "side:2", "side:2"]);

    // Paused with the selector gone: holds; resumed: the rest.
    patch_set(&client, "side", json!({ "spec": { "updateStrategy": { "paused": true, "selector": null } } })).await;
    wait_observed(&client, "side", [3, 2, 3, 2]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(images(&client, "default", &pods, "side").await, ["side:1", "side:2", "side:2"]);
    patch_set(&client, "side", json!({ "spec": { "updateStrategy": { "paused": false } } })).await;
    wait_observed(&client, "side", [3, 3, 3, 3]).await;
    assert_eq!(images(&client, "default", &pods, "side").await, ["side:2"; 3]);

    // A pod that goes leaves the status.
    Api::<Pod>::namespaced(client.clone(), "default").delete("web-0", &Default::default()).await.expect("delete");
    wait_status(&client, "side", [2, 2, 2, 2]).await;
}

/// Spec scenario 31: with scatterStrategy over app_name, the first batch is the planner's, which
/// mixes apps where the default order would take one app's pods first.
#[tokio::test]
async fn scatter_mixes_apps_in_each_batch() {
    use kruise::controllers::sidecarset::planner::{plan, upgrade_order};
    use kruise::controllers::sidecarset::pod_state::PodFacts;
    let (cp, client, _managers) = kruise_cluster("rollout-scatter", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let mut set = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": "scatter" },
        "spec": {
            "selector": { "matchLabels": { "app": "web" } },
            "updateStrategy": { "maxUnavailable": 3, "scatterStrategy": [
                { "key": "app_name", "value": "nginx" },
                { "key": "app_name", "value": "web-server" },
                { "key": "app_name", "value": "api-gateway" }
            ] },
            "containers": [{ "name": "side", "image": "side:1" }]
        }
    });
    create(&client, "sidecarsets", "SidecarSet", None, set.clone()).await.expect("set");
    let apps = ["nginx", "web-server", "api-gateway"];
    let names: Vec<String> = (0..9).map(|i| format!("p{i}-{}", apps[i / 3])).collect();
    let refs: Vec<&str> = names.iter().map(String::as_str).collect();
    injected_pods(&client, "default", "scatter", &refs, |n| {
        let app = apps.iter().find(|a| n.ends_with(*a)).copied().unwrap_or_default();
        json!({ "app": "web", "app_name": app })
    })
    .await;
    wait_status(&client, "scatter", [9, 9, 9, 9]).await;

    set["spec"]["containers"][0]["image"] = json!("side:2");
    patch_set(&client, "scatter", json!({ "spec": { "containers": set["spec"]["containers"] } })).await;
    let target = get_set(&client, "scatter").await;
    // What the planner picks first from the pods as they are now, and what it would pick without scatter.
    let v = SetVersion::new(&target);
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    let current: Vec<Pod> = api.list(&Default::default()).await.expect("pods").items;
    let facts: Vec<PodFacts> = current.iter().map(|p| PodFacts::of(&v, p)).collect();
    let name_of = |i: usize| current[i].metadata.name.clone().unwrap_or_default();
    let app_of = |n: &str| apps.iter().find(|a| n.ends_with(*a)).copied().unwrap_or_default();
    let planned: std::collections::BTreeSet<String> = plan(&target, &facts).into_iter().map(name_of).collect();
    let planned_apps: std::collections::BTreeSet<&str> = planned.iter().map(|n| app_of(n)).collect();
    assert!(planned_apps.len() >= 2, "the planner's first batch mixes apps: {planned:?}");
    let mut plain = target.clone();
    plain.spec.update_strategy.as_mut().unwrap().scatter_strategy = None;
    let unscattered: Vec<String> =
        upgrade_order(plain.spec.update_strategy.as_ref(), &facts).into_iter().take(3).map(name_of).collect();
    eprintln!("planned first batch {planned:?}; without scatter {unscattered:?}");

    // The first three pods the controller updates are the planned batch.
    // (The next batch waits for kwok's 1 s restart; polling every 100 ms sees this one alone.)
    let started = std::time::Instant::now();
    let first = loop {
        let updated: std::collections::BTreeSet<String> = api
            .list(&Default::default())
            .await
            .expect("pods")
            .items
            .iter()
            .filter(|p| is_updated(&v, p))
            .filter_map(|p| p.metadata.name.clone())
            .collect();
        if updated.len() >= 3 {
            break updated;
        }
        assert!(started.elapsed() < WAIT, "no first batch: {updated:?}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(first, planned, "the controller's first batch is the planner's");
    wait_status(&client, "scatter", [9, 9, 9, 9]).await;
}

/// Spec scenario 39 (the v1.3 gray release, scaled down): 20 pods on `version-1`; the image edit
/// is labelled `version-2` with `partition: 90%` while new pods stay pinned to `version-1`. Two
/// pods move (floor(90% × 20) = 18 stay old); two more pods arrive on version-1, and then
/// floor(90% × 22) = 19 stay old, so exactly one more pod moves.
#[tokio::test]
async fn gray_release_with_a_percent_partition_and_pinned_new_pods() {
    let (cp, client, _managers) = kruise_cluster("rollout-gray", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let mut set = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": "gray", "labels": { "apps.kruise.io/sidecarset-custom-version": "version-1" } },
        "spec": {
            "selector": { "matchLabels": { "app": "gray" } },
            "updateStrategy": { "maxUnavailable": 5 },
            "containers": [{ "name": "side", "image": "side:1" }]
        }
    });
    create(&client, "sidecarsets", "SidecarSet", None, set.clone()).await.expect("set");
    let first: Vec<String> = (0..20).map(|i| format!("g-{i:02}")).collect();
    let refs: Vec<&str> = first.iter().map(String::as_str).collect();
    injected_pods(&client, "default", "gray", &refs, |_| json!({"app": "gray"})).await;
    wait_status(&client, "gray", [20, 20, 20, 20]).await;

    set["metadata"]["labels"]["apps.kruise.io/sidecarset-custom-version"] = json!("version-2");
    set["spec"]["containers"][0]["image"] = json!("side:2");
    set["spec"]["updateStrategy"]["partition"] = json!("90%");
    set["spec"]["injectionStrategy"] = json!({ "revision": { "customVersion": "version-1", "policy": "Always" } });
    patch_set(&client, "gray", json!({ "metadata": set["metadata"], "spec": set["spec"] })).await;
    wait_observed(&client, "gray", [20, 2, 20, 2]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(&client, "gray").await, [20, 2, 20, 2], "the partition holds");

    // New pods get version-1 (the pinned custom version), then the partition lets one more move.
    let more = ["g-20", "g-21"];
    let api: Api<Pod> = Api::namespaced(client.clone(), "default");
    injected_pods(&client, "default", "gray", &more, |_| json!({"app": "gray"})).await;
    for name in more {
        let p = api.get(name).await.expect("pod");
        assert_eq!(
            container(&p, "side").and_then(|c| c.image.as_deref()),
            Some("side:1"),
            "{name} pinned to version-1"
        );
    }
    wait_status(&client, "gray", [22, 3, 22, 3]).await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(status_of(&client, "gray").await, [22, 3, 22, 3]);
    let images =
        images(&client, "default", &first.iter().map(String::as_str).chain(more).collect::<Vec<_>>(), "side").await;
    assert_eq!(images.iter().filter(|i| *i == "side:2").count(), 3);
}
