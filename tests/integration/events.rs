//! Test (g) of the sharded runtime: with `ShardedListAndWatch` on, each of 3 replicas receives
//! only the pod events of its own shards; with it off, each receives them all and drops the
//! others' itself. Either way every pod is reconciled by the replica owning its namespace.
//! `scripts/test.sh` runs the suite once with the gate on and once with it off.

use std::collections::BTreeMap;
use std::time::Duration;

use futures::TryStreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec};
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams, WatchEvent, WatchParams};

use kruise::runtime::shard::{ShardId, ShardSpace};
use kruise::runtime::shard_coordinator::shard_lease_name;

use crate::support::{ManagerProcess, TestNamespace, eventually, test_cluster};

const SHARDS: u32 = 32;

/// One replica's pod-watch counters.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
struct Counters {
    watch_events: f64,
    filtered: f64,
    relists: f64,
}

async fn counters(r: &ManagerProcess) -> Counters {
    let m = |name: &'static str| async move { r.metric(name).await.unwrap_or(0.0) };
    Counters {
        watch_events: m("kruise_watch_events_received_total{resource=\"pods\",via=\"watch\"}").await,
        filtered: m("kruise_watch_events_filtered_total{resource=\"pods\"}").await,
        relists: m("kruise_watch_relists_total{resource=\"pods\"}").await,
    }
}

async fn all_counters(replicas: &[ManagerProcess]) -> Vec<Counters> {
    let mut v = Vec::new();
    for r in replicas {
        v.push(counters(r).await);
    }
    v
}

/// Shard -> holder identity, from the shard leases.
async fn holders(leases: &Api<Lease>) -> BTreeMap<ShardId, String> {
    let mut out = BTreeMap::new();
    for s in 0..SHARDS {
        let lease = leases.get_opt(&shard_lease_name(ShardId(s))).await.expect("get shard lease");
        if let Some(h) = lease.and_then(|l| l.spec).and_then(|s| s.holder_identity).filter(|h| !h.is_empty()) {
            out.insert(ShardId(s), h);
        }
    }
    out
}

fn demo_pod(name: &str, label_value: &str) -> Pod {
    Pod {
        metadata: ObjectMeta {
            name: Some(name.into()),
            labels: Some(BTreeMap::from([("kruise.io/demo".to_string(), label_value.to_string())])),
            ..Default::default()
        },
        spec: Some(PodSpec {
            containers: vec![Container { name: "app".into(), image: Some("nginx:1.27".into()), ..Default::default() }],
            ..Default::default()
        }),
        ..Default::default()
    }
}

#[tokio::test]
async fn each_replica_receives_only_its_share_of_pod_events() {
    let tc = test_cluster().await;
    let gate_on = tc.cp.feature_gates().iter().any(|g| g == "ShardedListAndWatch=true");
    let space = ShardSpace::new(SHARDS).expect("space");
    let lease_ns = TestNamespace::create(&tc, "podevents").await;
    let leases: Api<Lease> = Api::namespaced(tc.client.clone(), &lease_ns.name);
    let label = lease_ns.name.clone();
    let selector = format!("--demo-selector=kruise.io/demo={label}");
    let args = [
        "--demo-controller",
        "--demo-resource=pods",
        &selector,
        // Only the demo's pod watch, whose events the test counts.
        "--controllers=*,-sidecarset,-podprobemarker,-imagepulljob",
        "--leader-election-lease-duration=6s",
        "--leader-election-renew-deadline=4s",
        "--leader-election-retry-period=500ms",
    ];
    let replicas: Vec<ManagerProcess> = ["a", "b", "c"]
        .iter()
        .map(|id| ManagerProcess::start(tc.cp, &lease_ns.name, &format!("{}-{id}", lease_ns.name), &args))
        .collect();

    // Settle first: every shard held, each replica's metric agreeing with the leases, and each
    // replica's pod watch (re)started for its final shards.
    eventually(Duration::from_secs(60), "32 shards split over 3 replicas", || async {
        let h = holders(&leases).await;
        let mut counts: Vec<usize> =
            replicas.iter().map(|r| h.values().filter(|id| **id == r.identity).count()).collect();
        counts.sort();
        counts == vec![10, 11, 11]
    })
    .await;
    let owner = holders(&leases).await;
    for r in &replicas {
        let held = owner.values().filter(|id| **id == r.identity).count() as f64;
        eventually(Duration::from_secs(10), "each replica's kruise_shards_held to match its leases", || async {
            r.metric("kruise_shards_held").await == Some(held)
        })
        .await;
    }
    tokio::time::sleep(Duration::from_secs(2)).await; // the hubs re-watch within their 500 ms sync
    let before = all_counters(&replicas).await;

    // Namespaces until each replica owns at least two, with two demo pods in each.
    let mut namespaces = Vec::new();
    let mut per_replica: BTreeMap<String, usize> = BTreeMap::new();
    while replicas.iter().any(|r| per_replica.get(&r.identity).copied().unwrap_or(0) < 2) {
        assert!(namespaces.len() < 60, "60 random namespaces missed a replica: {per_replica:?}");
        let ns = TestNamespace::create(&tc, "pe").await;
        let holder = owner.get(&space.shard_of_key(&ns.name)).cloned().expect("every shard held");
        *per_replica.entry(holder).or_default() += 1;
        namespaces.push(ns);
    }
    let pods_api = Api::<Pod>::all(tc.client.clone());
    let label_selector = format!("kruise.io/demo={label}");
    let start_version = pods_api
        .list_metadata(&ListParams::default().labels(&label_selector))
        .await
        .expect("list pods")
        .metadata
        .resource_version
        .expect("a list has a resourceVersion");
    for ns in &namespaces {
        let api: Api<Pod> = Api::namespaced(tc.client.clone(), &ns.name);
        for i in 0..2 {
            api.create(&PostParams::default(), &demo_pod(&format!("p{i}"), &label)).await.expect("create pod");
        }
    }

    // Every pod is stamped, by the replica that owns its namespace.
    eventually(Duration::from_secs(90), "every pod stamped by its namespace's owner", || async {
        let pods = pods_api.list(&ListParams::default().labels(&label_selector)).await.expect("list pods");
        pods.items.len() == namespaces.len() * 2
            && pods.items.iter().all(|p| {
                let ns = p.metadata.namespace.clone().unwrap_or_default();
                let by = p.metadata.annotations.as_ref().and_then(|a| a.get("kruise.io/demo-reconciled-by"));
                by == owner.get(&space.shard_of_key(&ns))
            })
    })
    .await;

    // The truth: every event of these pods, per namespace, from the test's own watch, read until
    // the replicas' counters and the test's count stop moving (kwok keeps updating status for a
    // moment after the stamps).
    let mut stream = std::pin::pin!(
        pods_api
            .watch(&WatchParams::default().labels(&label_selector).disable_bookmarks(), &start_version)
            .await
            .expect("watch pods")
    );
    let mut events_by_namespace: BTreeMap<String, f64> = BTreeMap::new();
    let mut last = (all_counters(&replicas).await, 0.0);
    let mut quiet_since = tokio::time::Instant::now();
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    loop {
        match tokio::time::timeout(Duration::from_millis(300), stream.try_next()).await {
            Ok(Ok(Some(WatchEvent::Added(p) | WatchEvent::Modified(p) | WatchEvent::Deleted(p)))) => {
                *events_by_namespace.entry(p.metadata.namespace.unwrap_or_default()).or_default() += 1.0;
            }
            Ok(Ok(Some(_))) => {}
            Ok(Ok(None)) | Ok(Err(_)) => panic!("the test's pod watch ended early"),
            Err(_) => {}
        }
        let now = (all_counters(&replicas).await, events_by_namespace.values().sum::<f64>());
        if now != last {
            last = now;
            quiet_since = tokio::time::Instant::now();
        } else if quiet_since.elapsed() > Duration::from_secs(3) {
            break;
        }
        assert!(tokio::time::Instant::now() < deadline, "pod events never settled");
    }
    let total: f64 = events_by_namespace.values().sum();
    let after = last.0;

    for ((r, b), a) in replicas.iter().zip(&before).zip(&after) {
        let own: f64 = events_by_namespace
            .iter()
            .filter(|(ns, _)| owner.get(&space.shard_of_key(ns)) == Some(&r.identity))
            .map(|(_, n)| *n)
            .sum();
        let received = a.watch_events - b.watch_events;
        let filtered = a.filtered - b.filtered;
        let relisted = a.relists > b.relists;
        eprintln!("{}: own {own} of {total} events; received {received}, filtered {filtered}", r.identity);
        assert!(own > 0.0, "{} owns namespaces with pods", r.identity);
        let server_sharded = r.metric("kruise_watch_server_sharded{resource=\"pods\"}").await;
        if gate_on {
            assert_eq!(server_sharded, Some(1.0), "{}: the API server shards the pod watch", r.identity);
            assert_eq!(filtered, 0.0, "{} was sent pods of shards it does not hold", r.identity);
            if relisted {
                assert!(received <= own, "{} received {received} events, more than its own {own}", r.identity);
            } else {
                assert_eq!(received, own, "{} receives exactly its own namespaces' events", r.identity);
            }
        } else {
            assert_eq!(server_sharded, Some(0.0), "{}: nothing is sharded server-side", r.identity);
            if !relisted {
                assert_eq!(received, total, "{} receives every event without the gate", r.identity);
                assert_eq!(filtered, total - own, "{} drops exactly the others' events", r.identity);
            }
        }
    }
}
