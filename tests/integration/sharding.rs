//! Server-side sharding (KEP-5866, gate ShardedListAndWatch): kruise-rs' shard ranges and FNV-1a
//! namespace hash agree with the API server's, so a replica can ask for exactly its shards.

use std::collections::BTreeSet;

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ObjectMeta, PostParams};
use serde_json::Value;

use kruise::runtime::metrics::MetricsRegistry;
use kruise::runtime::shard::{ShardId, ShardSpace};
use kruise::runtime::sharded_watch::{ShardFilter, ShardedWatch, WatchMetrics, WatchUpdate, query_escape};

use crate::support::{TestNamespace, labelled_config_map, test_cluster};

#[tokio::test]
async fn the_servers_shard_ranges_match_ours() {
    let tc = test_cluster().await;
    let run = format!("{:x}", std::process::id());
    let mut namespaces = Vec::new();
    for i in 0..12 {
        let ns = TestNamespace::create(&tc, &format!("shard{i}")).await;
        labelled_config_map(&tc.client, &ns.name, "probe", "kruise-sharding-test", &run).await;
        namespaces.push(ns);
    }
    let all: BTreeSet<String> = namespaces.iter().map(|n| n.name.clone()).collect();

    let gate_on = tc.cp.feature_gates().iter().any(|g| g == "ShardedListAndWatch=true");
    let space = ShardSpace::new(4).expect("space");
    let mut seen = BTreeSet::new();
    for s in space.shards() {
        let selector = space.selector(&[s]).expect("a selector");
        let path = format!(
            "/api/v1/configmaps?labelSelector={}&shardSelector={}",
            query_escape(&format!("kruise-sharding-test={run}")),
            query_escape(&selector)
        );
        let req = http::Request::get(path).body(Vec::new()).expect("request");
        let body: Value =
            serde_json::from_str(&tc.client.request_text(req).await.expect("sharded list")).expect("json");
        let echoed = body["metadata"]["shardInfo"]["selector"].as_str();
        assert_eq!(echoed.is_some(), gate_on, "shardInfo is echoed exactly when the gate is on");
        let items: Vec<String> = body["items"]
            .as_array()
            .expect("items")
            .iter()
            .filter_map(|i| i["metadata"]["namespace"].as_str().map(String::from))
            .collect();
        match echoed {
            // The gate is on: the server filtered, with our hash and our ranges.
            Some(e) => {
                assert_eq!(e, selector, "the server echoes the selector it applied");
                for ns in &items {
                    assert_eq!(space.shard_of_key(ns), s, "the server put {ns} in shard {s}; we would not");
                    assert!(seen.insert(ns.clone()), "{ns} in two shards");
                }
            }
            // The gate is off: the parameter is ignored and everything comes back, so clients
            // must filter themselves.
            None => {
                assert_eq!(items.iter().cloned().collect::<BTreeSet<_>>(), all, "without sharding, the full list");
                seen.extend(items);
            }
        }
    }
    assert_eq!(seen, all, "every namespace lands in exactly one shard");
    // Several shards in one selector: ranges joined by ||.
    assert!(space.selector(&[ShardId(0), ShardId(2)]).expect("selector").contains(" || "));
}

#[tokio::test]
async fn a_sharded_watch_delivers_exactly_its_shards_objects() {
    let tc = test_cluster().await;
    let run = format!("w{:x}", std::process::id());
    let space = ShardSpace::new(4).expect("space");
    let mine = vec![ShardId(0), ShardId(1)];
    let gate_on = tc.cp.feature_gates().iter().any(|g| g == "ShardedListAndWatch=true");

    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let watch = ShardedWatch {
        client: tc.client.clone(),
        url_path: "/api/v1/configmaps".into(),
        space,
        shards: ShardFilter::new(mine.clone()),
        label_selector: Some(format!("kruise-sharded-watch={run}")),
        metrics: WatchMetrics::register(&MetricsRegistry::new()).expect("metrics"),
    };
    let task = tokio::spawn(watch.run::<ConfigMap>(tx));
    assert!(matches!(rx.recv().await, Some(WatchUpdate::Relisting)), "a watch starts with a list");
    match rx.recv().await.expect("the initial list") {
        WatchUpdate::Listed { server_filtered } => {
            assert_eq!(server_filtered, gate_on, "the server filters exactly when the gate is on");
        }
        other => panic!("nothing is labelled yet, so the list has no pages: {other:?}"),
    }

    // ConfigMaps in 12 namespaces; only those whose namespace hashes into shards 0-1 must arrive.
    let mut expected = BTreeSet::new();
    let mut namespaces = Vec::new();
    for i in 0..12 {
        let ns = TestNamespace::create(&tc, &format!("watch{i}")).await;
        labelled_config_map(&tc.client, &ns.name, "probe", "kruise-sharded-watch", &run).await;
        if mine.contains(&space.shard_of_key(&ns.name)) {
            expected.insert(ns.name.clone());
        }
        namespaces.push(ns);
    }
    assert!(!expected.is_empty() && expected.len() < 12, "the 12 namespaces straddle the shards: {expected:?}");

    let mut received = BTreeSet::new();
    let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(30);
    while received != expected {
        let update = tokio::time::timeout_at(deadline, rx.recv()).await.expect("updates in time").expect("watch alive");
        let cm = match update {
            WatchUpdate::Applied(cm) | WatchUpdate::Deleted(cm) => cm,
            WatchUpdate::Page(objects) => {
                received.extend(objects.iter().filter_map(|o| o.metadata.namespace.clone()));
                continue;
            }
            WatchUpdate::Relisting | WatchUpdate::Listed { .. } => continue,
        };
        let ns = cm.metadata.namespace.clone().unwrap_or_default();
        assert!(expected.contains(&ns), "received {ns}, which is not in shards {mine:?}");
        received.insert(ns);
    }
    task.abort();
}

#[tokio::test]
async fn a_list_arrives_in_pages_and_ends_with_listed() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "pages").await;
    let api: Api<ConfigMap> = Api::namespaced(tc.client.clone(), &ns.name);
    let count = 1200; // over two pages of 500
    futures::stream::iter(0..count)
        .map(|i| {
            let api = api.clone();
            let label = ns.name.clone();
            async move {
                let cm = ConfigMap {
                    metadata: ObjectMeta {
                        name: Some(format!("cm-{i}")),
                        labels: Some([("kruise-pages".to_string(), label)].into()),
                        ..Default::default()
                    },
                    ..Default::default()
                };
                api.create(&PostParams::default(), &cm).await.map(|_| ())
            }
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("create ConfigMaps");

    let space = ShardSpace::new(4).expect("space");
    let (tx, mut rx) = tokio::sync::mpsc::channel(64);
    let watch = ShardedWatch {
        client: tc.client.clone(),
        url_path: "/api/v1/configmaps".into(),
        space,
        shards: ShardFilter::new((0..4).map(ShardId).collect()),
        label_selector: Some(format!("kruise-pages={}", ns.name)),
        metrics: WatchMetrics::register(&MetricsRegistry::new()).expect("metrics"),
    };
    let task = tokio::spawn(watch.run::<ConfigMap>(tx));
    assert!(matches!(rx.recv().await, Some(WatchUpdate::Relisting)));
    let (mut pages, mut names) = (0, BTreeSet::new());
    loop {
        match rx.recv().await.expect("watch alive") {
            WatchUpdate::Page(objects) => {
                assert!(objects.len() <= 500, "a page holds at most 500 objects");
                pages += 1;
                names.extend(objects.into_iter().filter_map(|o| o.metadata.name));
            }
            WatchUpdate::Listed { .. } => break,
            other => panic!("only pages before the list ends: {other:?}"),
        }
    }
    assert_eq!(pages, 3, "1200 objects come in 3 pages");
    assert_eq!(names.len(), count, "every object exactly once");
    task.abort();
}

mod hub {
    use std::collections::{BTreeSet, HashMap};
    use std::sync::{Arc, Mutex};
    use std::time::Duration;

    use futures::future::BoxFuture;
    use ractor::Actor;

    use kruise::runtime::http::Readiness;
    use kruise::runtime::metrics::MetricsRegistry;
    use kruise::runtime::namespace_actor::{Action, NamespaceArgs, ReconcileError, ReconcileMetrics, Reconciler};
    use kruise::runtime::object_store::{ObjectStore, Trim};
    use kruise::runtime::ownership::ShardOwnership;
    use kruise::runtime::shard::{ShardId, ShardSpace};
    use kruise::runtime::sharded_watch::WatchMetrics;
    use kruise::runtime::watch_hub::{HubArgs, WatchHub, WatchSpec};
    use kruise::runtime::work_queue::{Backoff, WorkQueueMetrics};

    use crate::support::{TestNamespace, labelled_config_map, test_cluster};

    struct Recorder(Arc<Mutex<BTreeSet<String>>>);

    impl Reconciler for Recorder {
        fn name(&self) -> &'static str {
            "demo"
        }
        fn reconcile(&self, ns: &str, _name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
            self.0.lock().unwrap().insert(ns.to_string());
            Box::pin(async { Ok(Action::Done) })
        }
    }

    fn store_namespaces(store: &ObjectStore, candidates: &[TestNamespace]) -> BTreeSet<String> {
        candidates.iter().filter(|ns| !store.in_namespace(&ns.name).is_empty()).map(|ns| ns.name.clone()).collect()
    }

    #[tokio::test]
    async fn changes_reach_the_reconciler_only_for_held_shards_and_the_store_keeps_only_their_objects() {
        let tc = test_cluster().await;
        let run = format!("h{:x}", std::process::id());
        let space = ShardSpace::new(4).expect("space");
        let ownership = ShardOwnership::default();
        let forever = tokio::time::Instant::now() + Duration::from_secs(3600);
        ownership.grant(ShardId(0), forever);
        ownership.grant(ShardId(1), forever);

        let reconciled = Arc::new(Mutex::new(BTreeSet::new()));
        let registry = MetricsRegistry::new();
        let reconciler: Arc<dyn Reconciler> = Arc::new(Recorder(reconciled.clone()));
        let store = ObjectStore::default();
        let readiness = Readiness::default();
        let caches_ready = readiness.condition("caches");
        let args = HubArgs {
            client: tc.client.clone(),
            space,
            ownership: ownership.clone(),
            watches: vec![WatchSpec {
                controllers: vec!["demo"],
                url_path: "/api/v1/configmaps".into(),
                label_selector: Some(format!("kruise-hub-test={run}")),
                store: store.clone(),
                trim: Trim { drop: &[&["data"]] },
                namespaced: true,
                per_namespace: false,
            }],
            namespace: None,
            namespace_template: NamespaceArgs {
                namespace: String::new(),
                reconcilers: Arc::new(HashMap::from([("demo", reconciler)])),
                concurrency: 4,
                backoff: Backoff::default(),
                idle_timeout: Duration::from_secs(30),
                reconcile_metrics: ReconcileMetrics::register(&registry).expect("metrics"),
                queue_metrics: WorkQueueMetrics::register(&registry).expect("metrics"),
            },
            sync_period: Duration::from_millis(200),
            metrics: WatchMetrics::register(&registry).expect("metrics"),
            leases_ready: readiness.condition("leases"),
            caches_ready: caches_ready.clone(),
        };
        let (hub, _) = Actor::spawn(None, WatchHub, args).await.expect("hub");
        assert!(!caches_ready.is_set(), "nothing listed yet");

        let mut held_namespaces = BTreeSet::new();
        let mut other_namespaces = Vec::new();
        let mut keep = Vec::new();
        // Namespace names are random: make enough that every shard has at least one.
        let mut per_shard = [0usize; 4];
        let mut i = 0;
        while i < 12 || per_shard.contains(&0) {
            assert!(i < 80, "80 random namespaces left a shard empty: {per_shard:?}");
            let ns = TestNamespace::create(&tc, &format!("hub{i}")).await;
            labelled_config_map(&tc.client, &ns.name, "probe", "kruise-hub-test", &run).await;
            let shard = space.shard_of_key(&ns.name).0;
            per_shard[shard as usize] += 1;
            match shard {
                0 | 1 => {
                    held_namespaces.insert(ns.name.clone());
                }
                _ => other_namespaces.push(ns.name.clone()),
            }
            keep.push(ns);
            i += 1;
        }
        crate::support::eventually(Duration::from_secs(30), "every held namespace reconciled", || async {
            reconciled.lock().unwrap().is_superset(&held_namespaces)
        })
        .await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let got = reconciled.lock().unwrap().clone();
        assert_eq!(got, held_namespaces, "nothing outside shards 0-1 is reconciled");
        assert!(caches_ready.is_set(), "the watch has listed its shards");
        assert_eq!(store_namespaces(&store, &keep), held_namespaces, "the store keeps exactly the held shards");
        let cached = store.in_namespace(held_namespaces.first().expect("a held namespace"));
        assert!(
            cached.iter().all(|o| o.metadata.managed_fields.is_none() && o.data.get("data").is_none()),
            "stored objects are trimmed: {cached:?}"
        );

        // Take a shard over: the hub notices, re-watches, and the new shard's objects arrive.
        let newly =
            other_namespaces.iter().filter(|ns| space.shard_of_key(ns) == ShardId(2)).cloned().collect::<BTreeSet<_>>();
        ownership.grant(ShardId(2), forever);
        crate::support::eventually(
            Duration::from_secs(30),
            "shard 2's namespaces reconciled after taking it",
            || async { reconciled.lock().unwrap().is_superset(&newly) },
        )
        .await;
        assert!(store_namespaces(&store, &keep).is_superset(&newly), "shard 2's objects are cached");

        // Give shard 0 up: its objects leave the store, the others stay.
        let shard0: BTreeSet<String> =
            held_namespaces.iter().filter(|ns| space.shard_of_key(ns) == ShardId(0)).cloned().collect();
        let relists = || {
            registry.render().lines().find_map(|l| {
                l.strip_prefix("kruise_watch_relists_total{resource=\"configmaps\"} ")?.parse::<f64>().ok()
            })
        };
        let relists_before = relists();
        assert!(relists_before.is_some_and(|n| n >= 1.0), "the watch has listed");
        ownership.revoke(ShardId(0));
        crate::support::eventually(Duration::from_secs(10), "shard 0's objects forgotten", || async {
            store_namespaces(&store, &keep).is_disjoint(&shard0)
        })
        .await;
        assert!(store_namespaces(&store, &keep).is_superset(&newly));
        if tc.cp.feature_gates().iter().any(|g| g == "ShardedListAndWatch=true") {
            crate::support::eventually(Duration::from_secs(10), "the watch re-established for shards 1-2", || async {
                relists() > relists_before
            })
            .await;
        } else {
            assert_eq!(relists(), relists_before, "without server sharding, giving a shard up needs no new list");
        }

        // A deletion reaches the reconciler, and the store forgets the object.
        let victim = newly.first().expect("a namespace of shard 2").clone();
        reconciled.lock().unwrap().remove(&victim);
        kube::Api::<k8s_openapi::api::core::v1::ConfigMap>::namespaced(tc.client.clone(), &victim)
            .delete("probe", &Default::default())
            .await
            .expect("delete");
        crate::support::eventually(Duration::from_secs(10), "the deleted object gone from the store", || async {
            store.get(&victim, "probe").is_none()
        })
        .await;
        crate::support::eventually(Duration::from_secs(10), "the deletion reconciled", || async {
            reconciled.lock().unwrap().contains(&victim)
        })
        .await;
        hub.stop(None);
    }
}
