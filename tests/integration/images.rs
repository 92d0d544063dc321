//! Image pre-download through the real API server: kruise-manager keeps a NodeImage per kwok
//! node and hands an ImagePullJob's image to its targets a few at a time; kruise-daemon in
//! simulated mode pulls on every kwok node (pulls take `--simulated-pull-time`; a node's
//! `images.sim.kruise.io/script` annotation makes them fail or finds images already present).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use k8s_openapi::api::core::v1::{Event, Node};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client};
use serde_json::json;

use kruise::api::imagepulljob::ImagePullJob;
use kruise::api::nodeimage::{ImagePullPhase, NodeImage};
use kruise::daemon::simulated::IMAGES_ANNOTATION;

use crate::rollout::namespace;
use crate::support::cluster::control_plane::node_name;
use crate::support::{DaemonProcess, LogsOnFailure, eventually};
use crate::webhooks::{create, kruise_cluster};

const WAIT: Duration = Duration::from_secs(90);

/// The most NodeImages seen at once with an unfinished pull of `image:tag`, over every version
/// the watch delivers (each event is one point in the API server's order).
fn most_nodes_pulling(
    client: Client,
    image: &'static str,
    tag: &'static str,
) -> (Arc<Mutex<usize>>, tokio::task::JoinHandle<()>) {
    let most = Arc::new(Mutex::new(0));
    let seen = most.clone();
    let task = tokio::spawn(async move {
        let mut unfinished: BTreeMap<String, bool> = BTreeMap::new();
        let mut stream = std::pin::pin!(watcher(Api::<NodeImage>::all(client), Default::default()).applied_objects());
        while let Some(Ok(ni)) = stream.next().await {
            let pulling = ni.spec.tag(image, tag).is_some_and(|t| {
                ni.status
                    .as_ref()
                    .and_then(|s| s.tag_at(image, tag, t.version))
                    .is_none_or(|s| s.completion_time.is_none())
            });
            unfinished.insert(ni.metadata.name.clone().unwrap_or_default(), pulling);
            let now = unfinished.values().filter(|p| **p).count();
            if let Ok(mut m) = seen.lock() {
                *m = (*m).max(now);
            }
        }
    });
    (most, task)
}

/// Scripts a node's simulated images (see `kruise::daemon::simulated`).
async fn script_images(client: &Client, node: &str, script: serde_json::Value) {
    let patch = json!({ "metadata": { "annotations": { IMAGES_ANNOTATION: script.to_string() } } });
    Api::<Node>::all(client.clone())
        .patch(node, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate the node");
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

    let daemon = DaemonProcess::start(
        &cp,
        "images-fifty-daemon",
        &["--simulated-pull-time=500ms", "--image-status-flush-interval=100ms"],
    );
    let (most, watching) = most_nodes_pulling(client.clone(), "nginx", "1.25");
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
    watching.abort();
    let max = most.lock().map(|m| *m).unwrap_or(usize::MAX);
    eprintln!("at most {max} nodes pulling at once");
    assert!((2..=5).contains(&max), "at most 5 nodes pulled at once, and more than one did: {max}");
    let pulled = daemon.metric("kruise_daemon_image_pulls_total", "result=\"succeeded\"").await;
    assert_eq!(pulled, Some(50.0), "the daemon pulled once per node");

    // Every node's status: Succeeded at the tag's version, with the image's ID.
    for ni in &node_images.list(&Default::default()).await.expect("list").items {
        let s = ni.status.as_ref().expect("status");
        let tag = s.tag("nginx", "1.25").expect("the tag's status");
        assert_eq!((tag.phase, tag.progress, s.desired, s.succeeded), (ImagePullPhase::Succeeded, Some(100), 1, 1));
        assert!(tag.image_id.as_deref().is_some_and(|id| id.starts_with("nginx@sha256:")), "{tag:?}");
        assert!(tag.start_time.is_some() && tag.completion_time.is_some());
    }

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
    // node 1's pulls always fail; node 3 has no daemon (the daemon serves every other node);
    // node 0 already holds busybox:1.
    let (failing, silent) = (node_name(1), node_name(3));
    script_images(&client, &failing, json!({ "failures": { "*": 1000 } })).await;
    script_images(&client, &node_name(0), json!({ "present": ["busybox:1"] })).await;
    // node 2's registry wants user "puller", which only the jobs' pull secret gives.
    script_images(&client, &node_name(2), json!({ "requireUser": "puller" })).await;
    let selector = format!("--simulated-node-selector=type=kwok,kubernetes.io/hostname!={silent}");
    let daemon = DaemonProcess::start(
        &cp,
        "images-fail-daemon",
        &[&selector, "--simulated-pull-time=300ms", "--image-status-flush-interval=100ms"],
    );
    let ns = "images";
    namespace(&client, ns).await;
    let config = json!({ "auths": { "https://index.docker.io/v1/": { "username": "puller", "password": "p" } } });
    let secret = json!({
        "apiVersion": "v1", "kind": "Secret", "type": "kubernetes.io/dockerconfigjson",
        "metadata": { "name": "registry" }, "stringData": { ".dockerconfigjson": config.to_string() }
    });
    let secret: k8s_openapi::api::core::v1::Secret = serde_json::from_value(secret).expect("secret");
    Api::<k8s_openapi::api::core::v1::Secret>::namespaced(client.clone(), ns)
        .create(&Default::default(), &secret)
        .await
        .expect("pull secret");
    let job = |name: &str, image: &str, spec: serde_json::Value| {
        let mut j = json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": name },
            "spec": { "image": image, "parallelism": 10, "pullSecrets": ["registry"] }
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

    // All four nodes: two succeed (node 2 with the pull secret's user); node 1 fails after
    // backoffLimit + 1 = 3 attempts; node 3 never answers and is failed by the manager.
    let all = job(
        "all",
        "nginx:1.25",
        json!({ "completionPolicy": { "type": "Always", "ttlSecondsAfterFinished": 3 },
                "pullPolicy": { "backoffLimit": 2, "timeoutSeconds": 30 } }),
    );
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
    let n1 = node_images.get(&failing).await.expect("node 1's NodeImage");
    let tag = n1.status.as_ref().and_then(|s| s.tag("nginx", "1.25")).expect("node 1's tag status").clone();
    assert_eq!(tag.phase, ImagePullPhase::Failed);
    let message = tag.message.unwrap_or_default();
    // Each attempt pulls with the secret's user, then anonymously: 6 PullImage calls.
    assert!(message.ends_with("(attempt 6)"), "the last of exactly 6 calls: {message}");
    let attempts = daemon.metric("kruise_daemon_image_pull_attempts_total", "result=\"failed\"").await;
    assert_eq!(attempts, Some(3.0), "3 failed attempts in all");
    // PullImageFailed on the job: the daemon's for node 1, the manager's for node 3.
    let events: Api<Event> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "PullImageFailed Events on the job from the daemon and the manager", || async {
        let Ok(l) = events.list(&Default::default()).await else { return false };
        let on_job = |e: &&Event| {
            e.reason.as_deref() == Some("PullImageFailed")
                && e.type_.as_deref() == Some("Warning")
                && e.involved_object.name.as_deref() == Some("all")
        };
        let from = |component: &str| {
            l.items.iter().filter(on_job).any(|e| e.reporting_component.as_deref() == Some(component))
        };
        from("kruise-daemon-imagepuller") && l.items.iter().filter(on_job).count() >= 2
    })
    .await;
    // ttlSecondsAfterFinished: 3 s after completing, the job is gone.
    let jobs: Api<ImagePullJob> = Api::namespaced(client.clone(), ns);
    eventually(WAIT, "job all to be deleted after its TTL", || async { matches!(jobs.get_opt("all").await, Ok(None)) })
        .await;
    // With their only owner gone, its tags leave every NodeImage's spec, and the status of every
    // node with a daemon (the silent node's status keeps what the manager wrote, as upstream).
    eventually(WAIT, "nginx to leave every NodeImage", || async {
        node_images.list(&Default::default()).await.is_ok_and(|l| {
            l.items.iter().all(|n| {
                let served = n.metadata.name.as_deref() != Some(silent.as_str());
                let in_status = n.status.as_ref().is_some_and(|s| s.tag("nginx", "1.25").is_some());
                n.spec.tag("nginx", "1.25").is_none() && !(served && in_status)
            })
        })
    })
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
    let present = daemon.metric("kruise_daemon_image_pull_attempts_total", "result=\"present\"").await;
    assert_eq!(present, Some(1.0), "node 0 held busybox:1 already: no pull");

    // A second job for the same image on node 2: a second owner, a new version, a new pull that
    // finds the image present.
    let again = job("warm-again", "busybox:1", json!({ "selector": { "names": [node_name(2)] } }));
    create(&client, "imagepulljobs", "ImagePullJob", Some(ns), again).await.expect("warm-again");
    eventually(WAIT, "job warm-again to succeed on node 2", || async {
        job_status(&client, ns, "warm-again").await.is_some_and(|s| s.succeeded == 1 && s.completion_time.is_some())
    })
    .await;
    let n2 = node_images.get(&node_name(2)).await.expect("node 2's NodeImage");
    let spec_tag = n2.spec.tag("busybox", "1").expect("the tag");
    assert_eq!(spec_tag.owner_references.as_ref().map(Vec::len), Some(2));
    assert_eq!(spec_tag.version, Some(1));
    let present = daemon.metric("kruise_daemon_image_pull_attempts_total", "result=\"present\"").await;
    assert_eq!(present, Some(2.0), "the re-pull found the image present");
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
}

/// With KruiseDaemon off, ImagePullJobs and NodeImages are refused: 403 with the gate's name.
#[tokio::test]
async fn image_objects_are_refused_while_kruise_daemon_is_off() {
    let (cp, client, _managers) =
        kruise_cluster("images-gate-off", 0, 1, &["--feature-gates=KruiseDaemon=false"]).await;
    let _logs = LogsOnFailure(&cp);
    namespace(&client, "images").await;
    let job = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
        "metadata": { "name": "nginx" }, "spec": { "image": "nginx:1.25" }
    });
    let node_image =
        json!({ "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage", "metadata": { "name": "n" } });
    for (plural, kind, ns, body) in
        [("imagepulljobs", "ImagePullJob", Some("images"), job), ("nodeimages", "NodeImage", None, node_image)]
    {
        match create(&client, plural, kind, ns, body).await {
            Err(kube::Error::Api(s)) => {
                assert_eq!(s.code, 403, "{s:?}");
                assert!(s.message.contains("feature-gate KruiseDaemon is not enabled"), "{}", s.message);
            }
            other => panic!("{kind} with KruiseDaemon off: {other:?}"),
        }
    }
}
