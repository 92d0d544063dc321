//! PodProbeMarker end to end through the real API server: kruise-manager fans probes out into
//! NodePodProbes and marks pods; kruise-daemon in simulated mode runs the probes of the kwok nodes,
//! whose outcomes the tests script with the pod annotation `exec.sim.kruise.io/<container>`.

use std::time::Duration;

use k8s_openapi::api::core::v1::{Pod, PodCondition};
use kube::api::{DeleteParams, Patch, PatchParams};
use kube::core::DynamicObject;
use kube::{Api, Client};
use serde_json::json;

use kruise::api::nodepodprobe::NodePodProbe;
use kruise::api::podprobemarker::ProbeState;
use kruise::controllers::podprobemarker::marking::MARKS_ANNOTATION;

use crate::rollout::namespace;
use crate::support::cluster::control_plane::node_name;
use crate::support::{DaemonProcess, LogsOnFailure, eventually};
use crate::webhooks::{create, create_pod, kruise_cluster, resource};

const WAIT: Duration = Duration::from_secs(60);
const COST: &str = "controller.kubernetes.io/pod-deletion-cost";

fn script(exit_code: i32, stdout: &str, stderr: &str) -> String {
    json!({ "exitCode": exit_code, "stdout": stdout, "stderr": stderr }).to_string()
}

/// A game server pod on kwok node `node` whose idle script answers `idle`.
fn game_server(name: &str, node: usize, idle: &str) -> serde_json::Value {
    json!({
        "apiVersion": "v1", "kind": "Pod",
        "metadata": {
            "name": name, "labels": { "app": "game-server" },
            "annotations": { "exec.sim.kruise.io/game-server": idle }
        },
        "spec": {
            "nodeName": node_name(node),
            "containers": [{ "name": "game-server", "image": "game:1" }]
        }
    })
}

/// The release notes' Idle marker, with a 1 s period and delay so the test runs in seconds.
fn game_server_probe() -> serde_json::Value {
    json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "PodProbeMarker",
        "metadata": { "name": "game-server-probe" },
        "spec": {
            "selector": { "matchLabels": { "app": "game-server" } },
            "probes": [{
                "name": "Idle", "containerName": "game-server",
                "probe": { "exec": { "command": ["/home/game/idle.sh"] }, "initialDelaySeconds": 1,
                           "timeoutSeconds": 3, "periodSeconds": 1, "successThreshold": 1, "failureThreshold": 3 },
                "markerPolicy": [
                    { "state": "Succeeded", "labels": { "gameserver-idle": "true" }, "annotations": { COST: "-10" } },
                    { "state": "Failed", "labels": { "gameserver-idle": "false" }, "annotations": { COST: "10" } }
                ],
                "podConditionType": "game.io/idle"
            }]
        }
    })
}

fn label<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata.labels.as_ref()?.get(key).map(String::as_str)
}

fn annotation<'p>(pod: &'p Pod, key: &str) -> Option<&'p str> {
    pod.metadata.annotations.as_ref()?.get(key).map(String::as_str)
}

fn condition(pod: &Pod, type_: &str) -> Option<PodCondition> {
    pod.status.as_ref()?.conditions.as_ref()?.iter().find(|c| c.type_ == type_).cloned()
}

async fn npp(client: &Client, node: &str) -> Option<NodePodProbe> {
    Api::<NodePodProbe>::all(client.clone()).get_opt(node).await.ok().flatten()
}

/// The pod's marks are as wanted: the idle label, the deletion cost, the condition status and message.
async fn wait_marked(
    client: &Client,
    ns: &str,
    pod: &str,
    idle: &str,
    cost: &str,
    status: &str,
    message: Option<&str>,
) -> Pod {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let marked = |p: &Pod| {
        let c = condition(p, "game.io/idle");
        label(p, "gameserver-idle") == Some(idle)
            && annotation(p, COST) == Some(cost)
            && c.as_ref().is_some_and(|c| c.status == status && c.message.as_deref() == message)
    };
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let p = pods.get(pod).await.expect("pod");
        if marked(&p) {
            return p;
        }
        if tokio::time::Instant::now() > deadline {
            let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
            let n = npp(client, &node).await;
            panic!(
                "timed out waiting for {pod} marked idle={idle} cost={cost} {status} {message:?}\npod metadata: {:?}\nconditions: {:?}\nNodePodProbe status: {:?}",
                p.metadata.labels,
                p.status.as_ref().and_then(|s| s.conditions.clone()),
                n.and_then(|n| n.status)
            );
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

async fn set_script(client: &Client, ns: &str, pod: &str, script: &str) {
    let patch = json!({ "metadata": { "annotations": { "exec.sim.kruise.io/game-server": script } } });
    Api::<Pod>::namespaced(client.clone(), ns)
        .patch(pod, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch pod");
}

/// Scenarios 1, 3, 4, 9, 10, 15 and 17 with the seed's game servers: NodePodProbes per node; the
/// marker's finalizer and status; the fan-out; Idle marks with the condition's timestamps and
/// message; busy after three failures and back; deleting the marker takes its marks away (kruise-rs
/// differs from upstream here on purpose); deleting a pod takes its entry out of the NodePodProbe.
#[tokio::test]
async fn game_servers_are_marked_idle_and_busy() {
    let (cp, client, _managers) = kruise_cluster("probes-game", 2, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let daemon = DaemonProcess::start(&cp, "probes-game-daemon", &["--probe-status-flush-interval=200ms"]);
    for i in 0..2 {
        let node = node_name(i);
        eventually(WAIT, &format!("NodePodProbe {node}"), || {
            let client = client.clone();
            let node = node.clone();
            async move { npp(&client, &node).await.is_some_and(|n| n.spec.pod_probes.unwrap_or_default().is_empty()) }
        })
        .await;
    }

    let ns = "game";
    namespace(&client, ns).await;
    create_pod(&client, ns, game_server("gs-0", 0, &script(0, "idle", ""))).await.expect("gs-0");
    create_pod(&client, ns, game_server("gs-1", 1, &script(0, "idle", ""))).await.expect("gs-1");

    // Invalid markers are denied with their reasons (scenario 23, some of them).
    let mut tcp = game_server_probe();
    tcp["spec"]["probes"][0]["probe"] = json!({ "tcpSocket": { "port": 80 } });
    let mut reserved = game_server_probe();
    reserved["spec"]["probes"][0]["name"] = json!("Initialized");
    let mut no_selector = game_server_probe();
    no_selector["spec"]["selector"] = json!({});
    for (bad, reason) in [
        (tcp, "only exec probes are supported"),
        (reserved, "this name is reserved for a pod condition"),
        (no_selector, "spec.selector"),
    ] {
        match create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), bad).await {
            Err(kube::Error::Api(e)) => {
                // kruise-rs denies with 422 Invalid (upstream answers 400): the reason is what counts.
                assert!(e.message.contains("vpodprobemarker.kb.io\" denied the request"), "{e:?}");
                assert!(e.message.contains(reason), "{} lacks {reason:?}", e.message);
            }
            other => panic!("an invalid marker was not denied: {other:?}"),
        }
    }
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), game_server_probe()).await.expect("marker");

    // The marker: finalizer, observedGeneration, matchedPods.
    let markers: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &resource("podprobemarkers", "PodProbeMarker"));
    eventually(WAIT, "the marker's finalizer and status", || {
        let markers = markers.clone();
        async move {
            let Ok(m) = markers.get("game-server-probe").await else { return false };
            let finalizer = m.metadata.finalizers.iter().flatten().any(|f| f == "kruise.io/node-pod-probe-cleanup");
            finalizer && m.data["status"]["matchedPods"] == 2 && m.data["status"]["observedGeneration"] == 1
        }
    })
    .await;

    // The fan-out: gs-0's entry on node 0, with the probe verbatim.
    let gs0 = Api::<Pod>::namespaced(client.clone(), ns).get("gs-0").await.expect("gs-0");
    let n0 = npp(&client, &node_name(0)).await.expect("npp");
    let entries = n0.spec.pod_probes.clone().unwrap_or_default();
    assert_eq!(entries.len(), 1, "{entries:?}");
    assert_eq!((entries[0].name.as_str(), entries[0].namespace.as_str()), ("gs-0", ns));
    assert_eq!(Some(&entries[0].uid), gs0.metadata.uid.as_ref());
    let probe = &entries[0].probes.as_ref().unwrap()[0];
    assert_eq!((probe.name.as_str(), probe.container_name.as_str()), ("game-server-probe#Idle", "game-server"));
    assert_eq!(probe.probe.failure_threshold, Some(3));

    // Idle: label, cost, condition True with both timestamps and stdout as the message.
    let p = wait_marked(&client, ns, "gs-0", "true", "-10", "True", Some("idle")).await;
    let c = condition(&p, "game.io/idle").unwrap();
    assert!(c.last_probe_time.is_some() && c.last_transition_time.is_some(), "{c:?}");
    assert_eq!(c.reason, None);
    wait_marked(&client, ns, "gs-1", "true", "-10", "True", Some("idle")).await;

    // Busy: the state turns Failed only after failureThreshold (3) failures in a row.
    let failed_before = daemon.metric("kruise_daemon_probe_runs_total", "result=\"failed\"").await.unwrap_or(0.0);
    set_script(&client, ns, "gs-0", &script(1, "", "busy")).await;
    let p = wait_marked(&client, ns, "gs-0", "false", "10", "False", Some("busy")).await;
    let failed_after = daemon.metric("kruise_daemon_probe_runs_total", "result=\"failed\"").await.unwrap_or(0.0);
    assert!(failed_after - failed_before >= 3.0, "Failed after {} failures", failed_after - failed_before);
    let busy_since = condition(&p, "game.io/idle").unwrap().last_transition_time;
    assert_ne!(busy_since, c.last_transition_time, "a new lastTransitionTime");
    let n0 = npp(&client, &node_name(0)).await.expect("npp");
    let state = &n0.status.unwrap().pod_probe_statuses.unwrap()[0].probe_states.clone().unwrap()[0];
    assert_eq!((state.name.as_str(), state.state), ("game-server-probe#Idle", ProbeState::Failed));

    // The daemon's pod Events, one per change of result.
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "a KruiseProbeFailed Event for gs-0", || {
        let events = events.clone();
        async move {
            let list = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
            list.iter().any(|e| {
                e.reason.as_deref() == Some("KruiseProbeFailed")
                    && e.involved_object.name.as_deref() == Some("gs-0")
                    && e.message.as_deref().is_some_and(|m| m.contains("busy"))
                    && e.source.as_ref().and_then(|s| s.component.as_deref()) == Some("kruise-daemon-podprobe")
            })
        }
    })
    .await;

    // And idle again. Back from busy is news (an Event); gs-1's first idle result was not.
    set_script(&client, ns, "gs-0", &script(0, "", "")).await;
    wait_marked(&client, ns, "gs-0", "true", "-10", "True", None).await;
    let succeeded_events = async |pod: &str| {
        let list = events.list(&Default::default()).await.map(|l| l.items).unwrap_or_default();
        list.iter()
            .filter(|e| {
                e.reason.as_deref() == Some("KruiseProbeSucceeded") && e.involved_object.name.as_deref() == Some(pod)
            })
            .count()
    };
    eventually(WAIT, "a KruiseProbeSucceeded Event for gs-0", || async { succeeded_events("gs-0").await == 1 }).await;
    assert_eq!(succeeded_events("gs-1").await, 0, "a first Succeeded gets no Event");

    // A deleted pod leaves its node's NodePodProbe, spec and status.
    Api::<Pod>::namespaced(client.clone(), ns)
        .delete("gs-1", &DeleteParams::default().grace_period(0))
        .await
        .expect("delete");
    let deadline = tokio::time::Instant::now() + WAIT;
    loop {
        let n = npp(&client, &node_name(1)).await.expect("node 1's NodePodProbe");
        let gone = n.spec.pod_probes.clone().unwrap_or_default().is_empty()
            && n.status.clone().and_then(|s| s.pod_probe_statuses).unwrap_or_default().is_empty();
        if gone {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "gs-1's entry did not leave node 1: {n:?}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }

    // Deleting the marker: probes out of the NodePodProbes, marks off the pod, then the marker goes.
    markers.delete("game-server-probe", &DeleteParams::default()).await.expect("delete marker");
    eventually(WAIT, "the marker to be gone", || {
        let markers = markers.clone();
        async move { matches!(markers.get_opt("game-server-probe").await, Ok(None)) }
    })
    .await;
    let n0 = npp(&client, &node_name(0)).await.expect("npp");
    assert!(n0.spec.pod_probes.unwrap_or_default().is_empty());
    let p = Api::<Pod>::namespaced(client.clone(), ns).get("gs-0").await.expect("gs-0");
    assert_eq!(label(&p, "gameserver-idle"), None, "{:?}", p.metadata.labels);
    assert_eq!(annotation(&p, COST), None);
    assert_eq!(annotation(&p, MARKS_ANNOTATION), None);
    assert!(condition(&p, "game.io/idle").is_none());
    assert_eq!(label(&p, "app"), Some("game-server"), "labels the marker did not set stay");
}

/// A daemon killed mid-run and started again carries on from the recorded states: the Idle state
/// keeps its lastTransitionTime (no flip through Unknown, so the pod's marks never move), and an
/// outcome that changed while no daemon ran is picked up.
#[tokio::test]
async fn a_restarted_daemon_resumes_without_flipping_results() {
    let (cp, client, _managers) = kruise_cluster("probes-restart", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let flush = "--probe-status-flush-interval=200ms";
    let mut daemon = DaemonProcess::start(&cp, "probes-restart-daemon-1", &[flush]);
    let ns = "game";
    namespace(&client, ns).await;
    create_pod(&client, ns, game_server("gs-0", 0, &script(0, "idle", ""))).await.expect("gs-0");
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), game_server_probe()).await.expect("marker");
    let before = wait_marked(&client, ns, "gs-0", "true", "-10", "True", Some("idle")).await;
    let idle_since = condition(&before, "game.io/idle").and_then(|c| c.last_transition_time);
    let state_of = |n: NodePodProbe| n.status?.pod_probe_statuses?.first()?.probe_states.clone()?.first().cloned();
    let recorded = state_of(npp(&client, &node_name(0)).await.expect("npp")).expect("state");

    daemon.process.kill();
    let daemon = DaemonProcess::start(&cp, "probes-restart-daemon-2", &[flush]);
    eventually(WAIT, "the new daemon to probe a few times", || {
        let daemon = &daemon;
        async move { daemon.metric("kruise_daemon_probe_runs_total", "result=\"succeeded\"").await.unwrap_or(0.0) >= 3.0 }
    })
    .await;
    let after = state_of(npp(&client, &node_name(0)).await.expect("npp")).expect("state");
    assert_eq!((after.state, &after.last_transition_time), (ProbeState::Succeeded, &recorded.last_transition_time));
    let pod = Api::<Pod>::namespaced(client.clone(), ns).get("gs-0").await.expect("gs-0");
    assert_eq!(condition(&pod, "game.io/idle").and_then(|c| c.last_transition_time), idle_since, "no flip");

    // Busy while no daemon runs: the next daemon finds it.
    let mut daemon = daemon;
    daemon.process.kill();
    set_script(&client, ns, "gs-0", &script(1, "", "busy")).await;
    let _daemon = DaemonProcess::start(&cp, "probes-restart-daemon-3", &[flush]);
    wait_marked(&client, ns, "gs-0", "false", "10", "False", Some("busy")).await;
}

/// Scenario 2: a virtual-kubelet node gets no NodePodProbe (one made for it is deleted), a
/// NodePodProbe with no node is deleted, and deleting a node deletes its NodePodProbe.
#[tokio::test]
async fn node_pod_probes_follow_the_nodes() {
    use k8s_openapi::api::core::v1::Node;
    let (cp, client, _managers) = kruise_cluster("probes-nodes", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let kwok_node = node_name(0);
    eventually(WAIT, "the kwok node's NodePodProbe", || {
        let client = client.clone();
        let node = kwok_node.clone();
        async move { npp(&client, &node).await.is_some() }
    })
    .await;

    let nodes: Api<Node> = Api::all(client.clone());
    let virtual_node: Node = serde_json::from_value(json!({
        "metadata": { "name": "vk-1", "labels": { "type": "virtual-kubelet" } }
    }))
    .expect("node");
    nodes.create(&Default::default(), &virtual_node).await.expect("virtual node");
    let ready = json!({ "status": { "conditions": [{ "type": "Ready", "status": "True" }] } });
    nodes.patch_status("vk-1", &PatchParams::default(), &Patch::Merge(&ready)).await.expect("ready");
    let probes = Api::<DynamicObject>::all_with(client.clone(), &resource("nodepodprobes", "NodePodProbe"));
    for name in ["vk-1", "ghost"] {
        let o: DynamicObject = serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodePodProbe", "metadata": { "name": name }, "spec": {}
        }))
        .expect("npp");
        probes.create(&Default::default(), &o).await.expect("create npp");
    }
    for name in ["vk-1", "ghost"] {
        eventually(WAIT, &format!("NodePodProbe {name} to be deleted"), || {
            let client = client.clone();
            async move { npp(&client, name).await.is_none() }
        })
        .await;
    }

    nodes.delete(&kwok_node, &DeleteParams::default()).await.expect("delete node");
    eventually(WAIT, "the deleted node's NodePodProbe to go", || {
        let client = client.clone();
        let node = kwok_node.clone();
        async move { npp(&client, &node).await.is_none() }
    })
    .await;
}

/// A probe slower than its timeout fails; a pod that stops matching the marker leaves the
/// NodePodProbe and loses the marks the marker set (kruise-rs; upstream keeps both), while a value
/// someone else wrote over a mark stays.
#[tokio::test]
async fn a_pod_that_stops_matching_loses_its_entry_and_marks() {
    let (cp, client, _managers) = kruise_cluster("probes-unmatch", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let _daemon = DaemonProcess::start(&cp, "probes-unmatch-daemon", &["--probe-status-flush-interval=200ms"]);
    let ns = "game";
    namespace(&client, ns).await;
    create_pod(&client, ns, game_server("gs-0", 0, &script(0, "idle", ""))).await.expect("gs-0");
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), game_server_probe()).await.expect("marker");
    wait_marked(&client, ns, "gs-0", "true", "-10", "True", Some("idle")).await;

    // Scenario 21: a script slower than timeoutSeconds (3) fails, with the timeout as message.
    set_script(&client, ns, "gs-0", &json!({ "exitCode": 0, "latencyMs": 5000 }).to_string()).await;
    wait_marked(&client, ns, "gs-0", "false", "10", "False", Some("command timed out after 3s")).await;

    // Someone takes over the deletion cost; then the pod leaves the marker's selector.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let patch = json!({ "metadata": { "annotations": { COST: "5" }, "labels": { "app": "retired" } } });
    pods.patch("gs-0", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("relabel");
    eventually(WAIT, "gs-0's entry to leave the NodePodProbe and its marks to go", || {
        let client = client.clone();
        let pods = pods.clone();
        async move {
            let entries = npp(&client, &node_name(0)).await.and_then(|n| n.spec.pod_probes).unwrap_or_default();
            let Ok(p) = pods.get("gs-0").await else { return false };
            entries.is_empty() && label(&p, "gameserver-idle").is_none() && condition(&p, "game.io/idle").is_none()
        }
    })
    .await;
    let p = pods.get("gs-0").await.expect("gs-0");
    assert_eq!(annotation(&p, COST), Some("5"), "a value the marker did not write stays");
    assert_eq!(annotation(&p, MARKS_ANNOTATION), None);
}

/// Scenarios 7 and 22: two markers with the same condition type on one pod, where only the first
/// state in status order drives the condition; editing a probe's command replaces it in place, the
/// state goes Unknown and then takes the new command's result.
#[tokio::test]
async fn two_markers_share_a_condition_and_a_changed_probe_starts_over() {
    let (cp, client, _managers) = kruise_cluster("probes-two", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let _daemon = DaemonProcess::start(&cp, "probes-two-daemon", &["--probe-status-flush-interval=200ms"]);
    let ns = "game";
    namespace(&client, ns).await;
    // Two containers with opposite outcomes, one marker probing each.
    let mut two = game_server("gs-0", 0, &script(0, "idle", ""));
    two["spec"]["containers"] =
        json!([{ "name": "game-server", "image": "game:1" }, { "name": "sidecar", "image": "side:1" }]);
    two["metadata"]["annotations"]["exec.sim.kruise.io/sidecar"] = json!(script(1, "", "down"));
    create_pod(&client, ns, two).await.expect("gs-0");
    let condition_only = |name: &str, container: &str, command: &str| {
        json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "PodProbeMarker",
            "metadata": { "name": name },
            "spec": {
                "selector": { "matchLabels": { "app": "game-server" } },
                "probes": [{
                    "name": "check", "containerName": container,
                    "probe": { "exec": { "command": [command] }, "initialDelaySeconds": 1, "periodSeconds": 1 },
                    "podConditionType": "x.io/y"
                }]
            }
        })
    };
    let a = condition_only("a", "game-server", "/a.sh");
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), a).await.expect("a");
    let b = condition_only("b", "sidecar", "/b.sh");
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), b).await.expect("b");

    // Both probes land in gs-0's entry and both report (Succeeded and Failed); the condition
    // follows whichever state comes first in the status, and does not flap.
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "both states reported and the condition set", || {
        let client = client.clone();
        let pods = pods.clone();
        async move {
            let Some(n) = npp(&client, &node_name(0)).await else { return false };
            let states = n.status.and_then(|s| s.pod_probe_statuses).and_then(|e| e.first()?.probe_states.clone());
            let states = states.unwrap_or_default();
            let Some(first) = states.first().cloned() else { return false };
            let want = if first.state == ProbeState::Succeeded { "True" } else { "False" };
            let Ok(p) = pods.get("gs-0").await else { return false };
            let differ = states.len() == 2 && states[0].state != states[1].state;
            differ && condition(&p, "x.io/y").is_some_and(|c| c.message == first.message && c.status == want)
        }
    })
    .await;

    // Editing b's command: the NodePodProbe carries the new command in place.
    let markers: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &resource("podprobemarkers", "PodProbeMarker"));
    let edited = condition_only("b", "sidecar", "/b2.sh");
    let patch = json!({ "spec": { "probes": edited["spec"]["probes"] } });
    markers.patch("b", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("edit b");
    eventually(WAIT, "b's new command in the NodePodProbe", || {
        let client = client.clone();
        async move {
            let entries = npp(&client, &node_name(0)).await.and_then(|n| n.spec.pod_probes).unwrap_or_default();
            let probes = entries.first().and_then(|e| e.probes.clone()).unwrap_or_default();
            let b = probes.iter().find(|p| p.name == "b#check");
            probes.len() == 2
                && b.and_then(|b| b.probe.exec.as_ref()?.command.clone()) == Some(vec!["/b2.sh".to_string()])
        }
    })
    .await;
    // The daemon carries on with the new probe: the sidecar's outcome, Failed again.
    eventually(WAIT, "b's state after the change", || {
        let client = client.clone();
        async move {
            let Some(n) = npp(&client, &node_name(0)).await else { return false };
            let states = n.status.and_then(|s| s.pod_probe_statuses).and_then(|e| e.first()?.probe_states.clone());
            states.unwrap_or_default().iter().any(|s| s.name == "b#check" && s.state == ProbeState::Failed)
        }
    })
    .await;
}

/// The state of probe `key` of the first pod on node 0, as the NodePodProbe says.
async fn state_on_node_0(client: &Client, key: &str) -> Option<kruise::api::nodepodprobe::ContainerProbeState> {
    let n = npp(client, &node_name(0)).await?;
    let entries = n.status?.pod_probe_statuses?;
    entries.first()?.probe_states.clone()?.into_iter().find(|s| s.name == key)
}

/// Scenarios 20 and 7, and a probe taken out of a marker: a restarted container starts Unknown and
/// is probed again once initialDelaySeconds have passed since its new start; an edited command
/// makes the result Unknown until the new command has run; a probe removed from the marker leaves
/// the NodePodProbe and takes its condition off the pod, the marker's other probe carries on.
/// (Each exec takes 2 s here, so an Unknown lasts long enough to be seen whatever the timing.)
#[tokio::test]
async fn a_restart_an_edited_command_and_a_removed_probe() {
    let (cp, client, _managers) = kruise_cluster("probes-change", 1, 1, &[]).await;
    let _logs = LogsOnFailure(&cp);
    let _daemon = DaemonProcess::start(&cp, "probes-change-daemon", &["--probe-status-flush-interval=200ms"]);
    let ns = "game";
    namespace(&client, ns).await;
    let slow_idle = json!({ "exitCode": 0, "stdout": "idle", "latencyMs": 2000 }).to_string();
    create_pod(&client, ns, game_server("gs-0", 0, &slow_idle)).await.expect("gs-0");
    let mut marker = game_server_probe();
    let probe = &mut marker["spec"]["probes"][0];
    probe["probe"]["initialDelaySeconds"] = json!(3);
    probe["probe"]["timeoutSeconds"] = json!(10);
    let healthy = json!({
        "name": "Healthy", "containerName": "game-server",
        "probe": { "exec": { "command": ["/healthy.sh"] }, "initialDelaySeconds": 1, "periodSeconds": 1, "timeoutSeconds": 10 },
        "podConditionType": "game.io/healthy"
    });
    marker["spec"]["probes"].as_array_mut().expect("probes").push(healthy);
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), marker.clone()).await.expect("marker");
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let before = wait_marked(&client, ns, "gs-0", "true", "-10", "True", Some("idle")).await;
    let idle_since = condition(&before, "game.io/idle").and_then(|c| c.last_transition_time).expect("transition time");
    eventually(WAIT, "the Healthy condition", || async {
        pods.get("gs-0").await.is_ok_and(|p| condition(&p, "game.io/healthy").is_some_and(|c| c.status == "True"))
    })
    .await;

    // 20. The container restarts (a new ID and start time, as the kubelet would report them).
    let restarted_at = jiff::Timestamp::now();
    let restart = json!({ "status": { "containerStatuses": [{
        "name": "game-server", "restartCount": 1, "containerID": "sim://gs-0/restarted",
        "state": { "running": { "startedAt": restarted_at.strftime("%Y-%m-%dT%H:%M:%SZ").to_string() } }
    }] } });
    pods.patch_status("gs-0", &PatchParams::default(), &Patch::Strategic(&restart)).await.expect("restart");
    eventually(WAIT, "Idle to be Unknown after the restart", || async {
        state_on_node_0(&client, "game-server-probe#Idle").await.is_some_and(|s| s.state == ProbeState::Unknown)
    })
    .await;
    eventually(WAIT, "Idle to be Succeeded again", || async {
        state_on_node_0(&client, "game-server-probe#Idle").await.is_some_and(|s| s.state == ProbeState::Succeeded)
    })
    .await;
    let s = state_on_node_0(&client, "game-server-probe#Idle").await.expect("Idle's state");
    let probed = s.last_probe_time.expect("a probe time").0;
    // Whole seconds, as the start time is recorded.
    assert!(
        probed.as_second() >= restarted_at.as_second() + 3,
        "probed at {probed}, before initialDelaySeconds passed since the restart at {restarted_at}"
    );
    let p = wait_marked(&client, ns, "gs-0", "true", "-10", "True", Some("idle")).await;
    let since = condition(&p, "game.io/idle").and_then(|c| c.last_transition_time).expect("transition time");
    assert!(since.0 > idle_since.0, "the condition went through Unknown: a new lastTransitionTime");

    // 7. Idle's command is edited: Unknown until the new command has run, then its result.
    let markers: Api<DynamicObject> =
        Api::namespaced_with(client.clone(), ns, &resource("podprobemarkers", "PodProbeMarker"));
    let mut edited = marker["spec"]["probes"].clone();
    edited[0]["probe"]["exec"]["command"] = json!(["/home/game/idle-v2.sh"]);
    let patch = json!({ "spec": { "probes": edited } });
    markers.patch("game-server-probe", &PatchParams::default(), &Patch::Merge(&patch)).await.expect("edit");
    eventually(WAIT, "Idle to be Unknown after the edit", || async {
        state_on_node_0(&client, "game-server-probe#Idle").await.is_some_and(|s| s.state == ProbeState::Unknown)
    })
    .await;
    let entries = npp(&client, &node_name(0)).await.and_then(|n| n.spec.pod_probes).unwrap_or_default();
    let idle = entries.first().and_then(|e| e.probes.clone()).unwrap_or_default();
    let command = idle.iter().find(|p| p.name == "game-server-probe#Idle").and_then(|p| p.probe.exec.clone());
    assert_eq!(command.and_then(|e| e.command), Some(vec!["/home/game/idle-v2.sh".to_string()]));
    wait_marked(&client, ns, "gs-0", "true", "-10", "True", Some("idle")).await;

    // The Healthy probe taken out of the marker: out of the NodePodProbe, its condition off the pod.
    let only_idle = json!({ "spec": { "probes": [edited[0].clone()] } });
    markers.patch("game-server-probe", &PatchParams::default(), &Patch::Merge(&only_idle)).await.expect("remove");
    eventually(WAIT, "Healthy out of the NodePodProbe and its condition off the pod", || async {
        let Some(n) = npp(&client, &node_name(0)).await else { return false };
        let listed = n
            .spec
            .pod_probes
            .unwrap_or_default()
            .iter()
            .flat_map(|e| e.probes.clone().unwrap_or_default())
            .any(|p| p.name.ends_with("#Healthy"));
        let reported = state_on_node_0(&client, "game-server-probe#Healthy").await.is_some();
        let p = pods.get("gs-0").await.expect("gs-0");
        !listed && !reported && condition(&p, "game.io/healthy").is_none()
    })
    .await;
    let p = pods.get("gs-0").await.expect("gs-0");
    assert_eq!(label(&p, "gameserver-idle"), Some("true"), "the other probe's marks stay");
    assert_eq!(condition(&p, "game.io/idle").map(|c| c.status), Some("True".to_string()));
}
