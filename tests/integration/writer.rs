//! The ApiWriter against the real API server: it keeps to its token bucket and its bound on
//! writes in flight, and folds a burst of patches to one object into a few requests with the final
//! state intact.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::Api;
use kube::api::{ApiResource, ObjectMeta, PostParams};
use ractor::concurrency::oneshot;
use ractor::{Actor, ActorRef};
use serde_json::json;
use tokio::time::Instant;

use kruise::runtime::api_writer::{ApiWriter, WriteError, WriteOp, WriteTarget, WriterArgs, WriterMetrics, WriterMsg};
use kruise::runtime::metrics::MetricsRegistry;

use crate::support::{TestNamespace, test_cluster};

async fn start_writer(
    client: kube::Client,
    qps: f64,
    burst: u32,
    max_in_flight: usize,
) -> (ActorRef<WriterMsg>, MetricsRegistry) {
    let registry = MetricsRegistry::new();
    let metrics = WriterMetrics::register(&registry).expect("metrics");
    let args = WriterArgs { client, qps, burst, max_in_flight, metrics };
    let (writer, _) = Actor::spawn(None, ApiWriter, args).await.expect("writer");
    (writer, registry)
}

fn target(ns: &str, name: &str) -> WriteTarget {
    WriteTarget {
        resource: ApiResource::erase::<ConfigMap>(&()),
        namespace: Some(ns.into()),
        name: name.into(),
        status: false,
    }
}

/// Sends every patch at once and waits for all outcomes.
async fn write_all(
    writer: &ActorRef<WriterMsg>,
    writes: Vec<(WriteTarget, serde_json::Value)>,
) -> Vec<Result<(), WriteError>> {
    let mut waiting = Vec::new();
    for (t, patch) in writes {
        let (tx, rx) = oneshot();
        writer.send_message(WriterMsg::Patch { target: t, patch, reply: Some(tx.into()) }).expect("writer alive");
        waiting.push(rx);
    }
    let mut results = Vec::new();
    for rx in waiting {
        results.push(tokio::time::timeout(Duration::from_secs(60), rx).await.expect("reply in time").expect("replied"));
    }
    results
}

fn metric(registry: &MetricsRegistry, series: &str) -> f64 {
    registry.render().lines().find_map(|l| l.strip_prefix(series)?.trim().parse().ok()).unwrap_or(0.0)
}

async fn create_config_maps(client: &kube::Client, ns: &str, names: &[String]) {
    let api: Api<ConfigMap> = Api::namespaced(client.clone(), ns);
    for n in names {
        let cm =
            ConfigMap { metadata: ObjectMeta { name: Some(n.clone()), ..Default::default() }, ..Default::default() };
        api.create(&PostParams::default(), &cm).await.expect("create configmap");
    }
}

#[tokio::test]
async fn a_burst_of_patches_to_one_object_coalesces_and_ends_in_the_final_state() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "writer-coalesce").await;
    create_config_maps(&tc.client, &ns.name, &["counter".to_string()]).await;
    // One token every 500 ms: after the first request, everything else waits and folds.
    let (writer, registry) = start_writer(tc.client.clone(), 2.0, 1, 32).await;

    let started = Instant::now();
    let writes = (0..100)
        .map(|i| {
            (
                target(&ns.name, "counter"),
                json!({ "data": { "counter": i.to_string(), format!("k{}", i % 10): i.to_string() } }),
            )
        })
        .collect();
    let results = write_all(&writer, writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");

    let requests =
        metric(&registry, "kruise_writer_requests_total{code=\"200\",resource=\"configmaps\",verb=\"patch\"}");
    let coalesced = metric(&registry, "kruise_writer_coalesced_total");
    eprintln!("100 patches in {:?}: {requests} requests, {coalesced} coalesced", started.elapsed());
    assert!((1.0..=3.0).contains(&requests), "100 patches took {requests} requests");
    assert_eq!(requests + coalesced, 100.0, "every patch either went out or was folded into one that did");

    let cm = Api::<ConfigMap>::namespaced(tc.client.clone(), &ns.name).get("counter").await.expect("get");
    let data = cm.data.unwrap_or_default();
    let mut expected = BTreeMap::from([("counter".to_string(), "99".to_string())]);
    for k in 0..10 {
        expected.insert(format!("k{k}"), (90 + k).to_string());
    }
    assert_eq!(data, expected, "the final state is what the last patches said");
    writer.stop(None);
}

#[tokio::test]
async fn writes_keep_to_the_token_bucket() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "writer-qps").await;
    let names: Vec<String> = (0..45).map(|i| format!("cm-{i}")).collect();
    create_config_maps(&tc.client, &ns.name, &names).await;
    let (qps, burst) = (20.0, 5);
    let (writer, registry) = start_writer(tc.client.clone(), qps, burst, 32).await;

    let started = Instant::now();
    let writes = names.iter().map(|n| (target(&ns.name, n), json!({ "data": { "touched": "yes" } }))).collect();
    let results = write_all(&writer, writes).await;
    let elapsed = started.elapsed();
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let requests =
        metric(&registry, "kruise_writer_requests_total{code=\"200\",resource=\"configmaps\",verb=\"patch\"}");
    assert_eq!(requests, 45.0, "distinct objects are never folded");
    // A bucket of 5 refilled at 20/s lets 45 requests out no sooner than (45 - 5) / 20 s. Only a
    // lower bound: a slow machine may take longer, never shorter.
    let floor = Duration::from_secs_f64((45.0 - f64::from(burst)) / qps);
    eprintln!("45 writes at {qps}/s, burst {burst}: {elapsed:?} (floor {floor:?})");
    assert!(
        elapsed + Duration::from_millis(50) >= floor,
        "45 writes took {elapsed:?}, under the bucket's floor {floor:?}"
    );
    writer.stop(None);
}

#[tokio::test]
async fn no_more_writes_are_in_flight_than_allowed() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "writer-inflight").await;
    let names: Vec<String> = (0..40).map(|i| format!("cm-{i}")).collect();
    create_config_maps(&tc.client, &ns.name, &names).await;
    // The bucket would let all 40 out at once; the in-flight bound must not.
    let (writer, registry) = start_writer(tc.client.clone(), 1000.0, 1000, 2).await;

    let writes = names.iter().map(|n| (target(&ns.name, n), json!({ "data": { "touched": "yes" } }))).collect();
    let sampler = {
        let registry = registry.clone();
        tokio::spawn(async move {
            let mut most = 0.0f64;
            loop {
                most = most.max(metric(&registry, "kruise_writer_in_flight"));
                if metric(
                    &registry,
                    "kruise_writer_requests_total{code=\"200\",resource=\"configmaps\",verb=\"patch\"}",
                ) >= 40.0
                {
                    return most;
                }
                tokio::time::sleep(Duration::from_micros(200)).await;
            }
        })
    };
    let results = write_all(&writer, writes).await;
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    let most = tokio::time::timeout(Duration::from_secs(10), sampler).await.expect("sampler done").expect("sampler");
    eprintln!("most writes in flight at once: {most}");
    assert!((1.0..=2.0).contains(&most), "{most} writes were in flight at once, over the bound of 2");
    writer.stop(None);
}

#[tokio::test]
async fn creates_patches_and_deletes_go_out_in_order() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "writer-ops").await;
    let (writer, registry) = start_writer(tc.client.clone(), 1000.0, 1000, 32).await;
    let send = |op: WriteOp| {
        let (tx, rx) = oneshot();
        writer
            .send_message(WriterMsg::Write { target: target(&ns.name, "made"), op, reply: Some(tx.into()) })
            .expect("writer alive");
        rx
    };
    let object =
        json!({ "apiVersion": "v1", "kind": "ConfigMap", "metadata": { "name": "made" }, "data": { "a": "1" } });
    // All three are queued at once; the writer keeps their order for the object.
    let created = send(WriteOp::Create(object.clone()));
    let patched = send(WriteOp::MergePatch(json!({ "data": { "b": "2" } })));
    let again = send(WriteOp::Create(object));
    for (what, rx) in [("create", created), ("patch", patched)] {
        assert_eq!(
            tokio::time::timeout(Duration::from_secs(30), rx).await.expect("reply").expect("replied"),
            Ok(()),
            "{what}"
        );
    }
    let exists = tokio::time::timeout(Duration::from_secs(30), again).await.expect("reply").expect("replied");
    assert!(matches!(exists, Err(WriteError::Api { code: 409, .. })), "a second create is refused: {exists:?}");
    let cm = Api::<ConfigMap>::namespaced(tc.client.clone(), &ns.name).get("made").await.expect("get");
    assert_eq!(cm.data, Some(BTreeMap::from([("a".into(), "1".into()), ("b".into(), "2".into())])));

    let deleted = send(WriteOp::Delete);
    assert_eq!(tokio::time::timeout(Duration::from_secs(30), deleted).await.expect("reply").expect("replied"), Ok(()));
    assert!(Api::<ConfigMap>::namespaced(tc.client.clone(), &ns.name).get_opt("made").await.expect("get").is_none());
    assert_eq!(
        metric(&registry, "kruise_writer_requests_total{code=\"201\",resource=\"configmaps\",verb=\"create\"}"),
        1.0
    );
    assert_eq!(
        metric(&registry, "kruise_writer_requests_total{code=\"409\",resource=\"configmaps\",verb=\"create\"}"),
        1.0
    );
    assert_eq!(
        metric(&registry, "kruise_writer_requests_total{code=\"200\",resource=\"configmaps\",verb=\"delete\"}"),
        1.0
    );
    writer.stop(None);
}
