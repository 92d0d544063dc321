//! Image pre-download through the real API server: kruise-manager keeps a NodeImage per kwok
//! node and hands an ImagePullJob's image to its targets a few at a time. The test plays the
//! nodes' daemons: it answers each requested tag in the NodeImage status (Pulling, then a result
//! a moment later), so what is checked here is the manager's side of the protocol.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client};
use serde_json::json;

use kruise::api::imagepulljob::ImagePullJob;
use kruise::api::nodeimage::{ImagePullPhase, NodeImage};
use kruise::daemon::imagepull::plan::{node_status, owed_pulls};

use crate::rollout::namespace;
use crate::support::cluster::control_plane::node_name;
use crate::support::{LogsOnFailure, eventually};
use crate::webhooks::{create, kruise_cluster};

const WAIT: Duration = Duration::from_secs(90);

/// What the stand-in daemons saw: the most tags pulling at once on all nodes together.
#[derive(Default)]
struct Observed {
    max_pulling: usize,
}

/// Stands in for the nodes' daemons: each owed tag goes Pulling, and `pull_for` later ends as
/// `outcome(node)` (Succeeded or Failed; None: the node has no daemon and never answers).
fn stand_in_daemons(
    client: Client,
    pull_for: Duration,
    outcome: impl Fn(&str) -> Option<ImagePullPhase> + Send + 'static,
    observed: Arc<Mutex<Observed>>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let api: Api<NodeImage> = Api::all(client);
        let mut started: BTreeMap<(String, String, String, i64), Timestamp> = BTreeMap::new();
        loop {
            let Ok(list) = api.list(&Default::default()).await else { continue };
            let mut pulling_now = 0;
            for ni in &list.items {
                let node = ni.metadata.name.clone().unwrap_or_default();
                // None: this node has no daemon.
                let Some(result) = outcome(&node) else { continue };
                let owed = owed_pulls(&ni.spec, ni.status.as_ref());
                pulling_now += owed.len();
                if owed.is_empty() {
                    continue;
                }
                let mut live = BTreeMap::new();
                for p in &owed {
                    let key = (node.clone(), p.image.clone(), p.tag.clone(), p.version);
                    let since = *started.entry(key).or_insert_with(Timestamp::now);
                    let done = Timestamp::now().duration_since(since) >= pull_for.try_into().unwrap_or_default();
                    let phase = if done { result } else { ImagePullPhase::Pulling };
                    let status = json!({
                        "tag": p.tag, "phase": phase, "version": p.version, "startTime": Time(since),
                        "completionTime": done.then(|| Time(Timestamp::now())),
                        "message": (phase == ImagePullPhase::Failed).then_some("pull failed"),
                    });
                    live.insert((p.image.clone(), p.tag.clone()), serde_json::from_value(status).expect("tag status"));
                }
                let status = node_status(&ni.spec, ni.status.as_ref(), &live);
                let patch = json!({ "status": status });
                let _ = api.patch_status(&node, &PatchParams::default(), &Patch::Merge(&patch)).await;
            }
            if let Ok(mut o) = observed.lock() {
                o.max_pulling = o.max_pulling.max(pulling_now);
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    })
}

async fn job_status(client: &Client, ns: &str, name: &str) -> Option<kruise::api::imagepulljob::ImagePullJobStatus> {
    Api::<ImagePullJob>::namespaced(client.clone(), ns).get_opt(name).await.ok().flatten()?.status
}

/// Scenario: a job over 50 nodes with parallelism 5 never has more than 5 nodes pulling and
/// completes with the right counts; deleting it takes its tag out of every NodeImage.
#[tokio::test]
async fn a_job_pulls_onto_fifty_nodes_five_at_a_time() {
    let (cp, client, _managers) = kruise_cluster("images-fifty", 50, 1, &["--nodeimage-creation-delay=0s"]).await;
    let _logs = LogsOnFailure(&cp);
    let node_images: Api<NodeImage> = Api::all(client.clone());
    eventually(WAIT, "a NodeImage per node, with the node's labels", || async {
        node_images.list(&Default::default()).await.is_ok_and(|l| {
            l.items.len() == 50
                && l.items
                    .iter()
                    .all(|n| n.metadata.labels.as_ref().is_some_and(|l| l.contains_key("kubernetes.io/hostname")))
        })
    })
    .await;

    let observed = Arc::new(Mutex::new(Observed::default()));
    let daemons = stand_in_daemons(
        client.clone(),
        Duration::from_millis(500),
        |_| Some(ImagePullPhase::Succeeded),
        observed.clone(),
    );
    let ns = "images";
    namespace(&client, ns).await;
    let job = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
        "metadata": { "name": "nginx" },
        "spec": { "image": "nginx:1.25", "parallelism": 5, "pullSecrets": ["registry"],
                  "completionPolicy": { "type": "Always" } }
    });
    create(&client, "imagepulljobs", "ImagePullJob", Some(ns), job).await.expect("job");
    eventually(WAIT, "the job to complete", || async {
        job_status(&client, ns, "nginx").await.is_some_and(|s| s.completion_time.is_some())
    })
    .await;
    let s = job_status(&client, ns, "nginx").await.expect("status");
    assert_eq!((s.desired, s.active, s.succeeded, s.failed), (50, 0, 50, 0), "{s:?}");
    assert_eq!(s.message.as_deref(), Some("job has completed"));
    assert!(s.start_time.is_some());
    let max = observed.lock().map(|o| o.max_pulling).unwrap_or(usize::MAX);
    eprintln!("at most {max} nodes pulling at once");
    assert!((2..=5).contains(&max), "at most 5 nodes pulled at once, and more than one did: {max}");

    // Every node's tag: owned by the job, with its pull secret and a pull policy.
    let all = node_images.list(&Default::default()).await.expect("list").items;
    for ni in &all {
        let image = &ni.spec.images.as_ref().expect("images")["nginx"];
        let tag = &image.tags[0];
        assert_eq!(tag.tag, "1.25");
        assert_eq!(tag.owner_references.as_ref().expect("owners")[0].name.as_deref(), Some("nginx"));
        assert_eq!(image.pull_secrets.as_ref().expect("secrets")[0].name.as_deref(), Some("registry"));
        assert!(tag.pull_policy.as_ref().and_then(|p| p.ttl_seconds_after_finished).is_some());
    }

    // Deleting the job: its tags leave the NodeImages.
    Api::<ImagePullJob>::namespaced(client.clone(), ns).delete("nginx", &Default::default()).await.expect("delete");
    eventually(WAIT, "no NodeImage to list the image", || async {
        node_images
            .list(&Default::default())
            .await
            .is_ok_and(|l| l.items.iter().all(|n| n.spec.images.as_ref().is_none_or(|m| !m.contains_key("nginx"))))
    })
    .await;
    daemons.abort();
}

/// Failures, a node that never answers (daemon down: the manager fails its tag after the response
/// timeout), activeDeadlineSeconds, ttlSecondsAfterFinished, a Never job picking up a new node,
/// node deletion, and invalid jobs denied with their reasons.
#[tokio::test]
async fn failures_deadlines_ttl_new_and_deleted_nodes() {
    let flags = ["--nodeimage-creation-delay=0s", "--nodeimage-response-timeout=4s"];
    let (cp, client, _managers) = kruise_cluster("images-fail", 4, 1, &flags).await;
    let _logs = LogsOnFailure(&cp);
    let node_images: Api<NodeImage> = Api::all(client.clone());
    let count = || async { node_images.list(&Default::default()).await.map(|l| l.items.len()).unwrap_or(0) };
    eventually(WAIT, "a NodeImage per node", || async { count().await == 4 }).await;
    // node 1's pulls fail; node 3 has no daemon.
    let (failing, silent) = (node_name(1), node_name(3));
    let outcome = move |node: &str| match node {
        n if n == silent => None,
        n if n == failing => Some(ImagePullPhase::Failed),
        _ => Some(ImagePullPhase::Succeeded),
    };
    let daemons = stand_in_daemons(client.clone(), Duration::from_millis(300), outcome, Default::default());
    let ns = "images";
    namespace(&client, ns).await;
    let job = |name: &str, image: &str, spec: serde_json::Value| {
        let mut j = json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": name }, "spec": { "image": image, "parallelism": 10 }
        });
        if let (Some(s), Some(extra)) = (j["spec"].as_object_mut(), spec.as_object()) {
            s.extend(extra.clone());
        }
        j
    };

    // Invalid jobs are denied, each with its reason.
    let invalid = [
        (
            json!({ "selector": { "names": ["a"], "matchLabels": { "x": "y" } } }),
            "can not set both names and labelSelector",
        ),
        (json!({ "selector": {}, "podSelector": {} }), "can not set both selector and podSelector"),
        (json!({ "completionPolicy": { "type": "Never", "activeDeadlineSeconds": 10 } }), "activeDeadlineSeconds"),
    ];
    for (spec, reason) in invalid {
        let e = create(&client, "imagepulljobs", "ImagePullJob", Some(ns), job("bad", "nginx:1", spec))
            .await
            .expect_err("denied");
        assert!(e.to_string().contains(reason), "{e}");
    }
    let e = create(&client, "imagepulljobs", "ImagePullJob", Some(ns), job("bad", "Not An Image", json!({})))
        .await
        .expect_err("denied");
    assert!(e.to_string().contains("spec.image"), "{e}");

    // All four nodes: two succeed, node 1 fails, node 3 never answers and is failed by the manager.
    let all =
        job("all", "nginx:1.25", json!({ "completionPolicy": { "type": "Always", "ttlSecondsAfterFinished": 3 } }));
    create(&client, "imagepulljobs", "ImagePullJob", Some(ns), all).await.expect("all");
    eventually(WAIT, "job all to complete", || async {
        job_status(&client, ns, "all").await.is_some_and(|s| s.completion_time.is_some())
    })
    .await;
    let s = job_status(&client, ns, "all").await.expect("status");
    assert_eq!((s.desired, s.succeeded, s.failed), (4, 2, 2), "{s:?}");
    assert_eq!(s.failed_nodes, Some(vec![node_name(1), node_name(3)]));
    let n3 = node_images.get(&node_name(3)).await.expect("node 3's NodeImage");
    let tag = &n3.status.and_then(|s| s.image_statuses).expect("statuses")["nginx"].tags[0];
    assert_eq!(
        (tag.phase, tag.message.as_deref()),
        (ImagePullPhase::Failed, Some("node has not responded for a long time"))
    );
    let events: Api<k8s_openapi::api::core::v1::Event> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "a PullImageFailed Event on the job", || async {
        events.list(&Default::default()).await.is_ok_and(|l| {
            l.items.iter().any(|e| {
                e.reason.as_deref() == Some("PullImageFailed")
                    && e.type_.as_deref() == Some("Warning")
                    && e.involved_object.name.as_deref() == Some("all")
            })
        })
    })
    .await;
    // ttlSecondsAfterFinished: 3 s after completing, the job is gone.
    let jobs: Api<ImagePullJob> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "job all to be deleted after its TTL", || async { matches!(jobs.get_opt("all").await, Ok(None)) })
        .await;

    // activeDeadlineSeconds: the silent node cannot finish in 2 s.
    let deadline = job(
        "deadline",
        "redis:7",
        json!({ "selector": { "names": [node_name(3)] }, "completionPolicy": { "activeDeadlineSeconds": 2 } }),
    );
    create(&client, "imagepulljobs", "ImagePullJob", Some(ns), deadline).await.expect("deadline");
    eventually(WAIT, "job deadline to fail at its deadline", || async {
        job_status(&client, ns, "deadline").await.is_some_and(|s| {
            s.completion_time.is_some()
                && s.failed == 1
                && s.message.as_deref() == Some("job exceeds activeDeadlineSeconds")
        })
    })
    .await;

    // Never: a node that joins later gets the image too.
    let never = job("warm", "busybox:1", json!({ "completionPolicy": { "type": "Never" } }));
    create(&client, "imagepulljobs", "ImagePullJob", Some(ns), never).await.expect("warm");
    eventually(WAIT, "job warm to reach the 4 nodes", || async {
        job_status(&client, ns, "warm").await.is_some_and(|s| s.desired == 4 && s.succeeded == 2)
    })
    .await;
    cp.add_nodes(&client, 4..5).await.expect("a fifth node");
    eventually(WAIT, "job warm to reach the new node", || async {
        job_status(&client, ns, "warm")
            .await
            .is_some_and(|s| s.desired == 5 && s.succeeded == 3 && s.completion_time.is_none())
    })
    .await;

    // A deleted node takes its NodeImage with it.
    Api::<k8s_openapi::api::core::v1::Node>::all(client.clone())
        .delete(&node_name(4), &Default::default())
        .await
        .expect("delete node");
    eventually(WAIT, "node 4's NodeImage to go", || async {
        matches!(node_images.get_opt(&node_name(4)).await, Ok(None))
    })
    .await;
    daemons.abort();
}
