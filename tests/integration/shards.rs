//! kruise-manager replicas share the shards through leases on the real API server.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use tokio::time::Instant;

use crate::support::{ManagerProcess, TestNamespace, eventually, test_cluster};

/// Shard lease holders: identity -> number of shards.
async fn shard_holders(leases: &Api<Lease>) -> BTreeMap<String, usize> {
    let list = leases.list(&ListParams::default().labels("kruise.io/lease-role=shard")).await.expect("list leases");
    let mut by_holder = BTreeMap::new();
    for l in list.items {
        if let Some(h) = l.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty()) {
            *by_holder.entry(h).or_insert(0) += 1;
        }
    }
    by_holder
}

/// Holder of the leader lease, if any.
async fn leader(leases: &Api<Lease>) -> Option<String> {
    let l = leases.get_opt("kruise-manager").await.expect("get leader lease")?;
    l.spec.and_then(|s| s.holder_identity).filter(|h| !h.is_empty())
}

fn split(counts: &BTreeMap<String, usize>) -> Vec<usize> {
    let mut v: Vec<usize> = counts.values().copied().collect();
    v.sort();
    v
}

#[tokio::test]
async fn replicas_split_shards_fairly_and_hand_them_over_on_sigterm_and_on_crash() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "shards").await;
    let leases: Api<Lease> = Api::namespaced(tc.client.clone(), &ns.name);
    // Short leases keep the crash case quick; the retry period bounds a graceful handoff. The
    // NodePodProbe and NodeImage lifecycles are off: they would write for the shared cluster's nodes, and this test
    // counts on the replicas having nothing to write.
    let timing = [
        "--leader-election-lease-duration=6s",
        "--leader-election-renew-deadline=4s",
        "--leader-election-retry-period=500ms",
        "--controllers=*,-podprobemarker,-imagepulljob",
    ];
    let mut replicas: Vec<ManagerProcess> = ["manager-a", "manager-b", "manager-c"]
        .iter()
        .map(|id| ManagerProcess::start(tc.cp, &ns.name, &format!("{}-{id}", ns.name), &timing))
        .collect();

    eventually(Duration::from_secs(60), "32 shards split 11/11/10 over 3 replicas", || async {
        split(&shard_holders(&leases).await) == vec![10, 11, 11]
    })
    .await;
    for r in &replicas {
        let held = shard_holders(&leases).await.get(&r.identity).copied().unwrap_or(0) as f64;
        eventually(Duration::from_secs(10), "each replica's kruise_shards_held to match its leases", || async {
            r.metric("kruise_shards_held").await == Some(held)
        })
        .await;
    }

    // Every replica runs its ApiWriter, and it drains: start-up writes (the webhook certificate
    // Secret, the webhook configurations, SidecarSets other tests left on the shared cluster) may
    // be waiting at any given moment, so a snapshot of exactly 0 would be a race.
    for r in &replicas {
        eventually(Duration::from_secs(10), &format!("{}'s ApiWriter to run and drain", r.identity), || async {
            r.metric("kruise_writer_queue_depth").await == Some(0.0)
        })
        .await;
    }

    // Exactly one leader, and only it says so.
    eventually(Duration::from_secs(20), "one replica to lead", || async { leader(&leases).await.is_some() }).await;
    let first_leader = leader(&leases).await.expect("a leader");
    for r in &replicas {
        let expected = if r.identity == first_leader { 1.0 } else { 0.0 };
        eventually(Duration::from_secs(10), "kruise_manager_is_leader to match the leader lease", || async {
            r.metric("kruise_manager_is_leader").await == Some(expected)
        })
        .await;
    }

    // SIGTERM: the replica releases its leases, so the others take them within a couple of retry
    // periods (the issue asks for 2 s) rather than after the 6 s lease duration.
    let mut stopped = replicas.remove(0);
    let t0 = Instant::now();
    stopped.process.stop(Duration::from_secs(10));
    eventually(Duration::from_secs(20), "the 2 remaining replicas to hold 16/16", || async {
        split(&shard_holders(&leases).await) == vec![16, 16]
    })
    .await;
    let graceful = t0.elapsed();
    eprintln!("graceful handoff took {graceful:?}");
    assert!(
        graceful < Duration::from_secs(2),
        "handoff after SIGTERM took {graceful:?}: leases were not released (log:\n{})",
        stopped.log_tail()
    );
    let member = leases.get_opt(&format!("kruise-member-{}", stopped.identity)).await.expect("get member lease");
    assert!(member.is_none(), "a stopped replica deletes its membership lease");

    // SIGKILL: nothing is released; the survivor takes over once the leases expire.
    let mut crashed = replicas.remove(0);
    let t1 = Instant::now();
    crashed.process.kill();
    eventually(Duration::from_secs(30), "the last replica to hold all 32 shards", || async {
        shard_holders(&leases).await.get(&replicas[0].identity) == Some(&32)
    })
    .await;
    let takeover = t1.elapsed();
    eprintln!("takeover after a crash took {takeover:?}");
    assert!(
        takeover >= Duration::from_secs(4),
        "a crashed replica's shards must not move before its leases can expire"
    );
    // The bound: within the lease duration (6 s) plus the renew period (deadline 4 s).
    assert!(takeover <= Duration::from_secs(10), "the crashed replica's shards took {takeover:?} to move");
    eventually(Duration::from_secs(10), "the survivor's metric to show 32 shards", || async {
        replicas[0].metric("kruise_shards_held").await == Some(32.0)
    })
    .await;
    // Whoever led before, the survivor leads now.
    eventually(Duration::from_secs(30), "the survivor to lead", || async {
        leader(&leases).await.as_deref() == Some(replicas[0].identity.as_str())
            && replicas[0].metric("kruise_manager_is_leader").await == Some(1.0)
    })
    .await;
}

#[tokio::test]
async fn bad_flags_stop_the_manager_with_a_clear_error() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "bad-flags").await;
    let cases = [
        ("bad-qps", "--kube-api-qps=0", "invalid rate limit: qps 0 and burst 50 must both be positive"),
        ("bad-gate", "--feature-gates=PodWebhook=true,NoSuchGate=true", "unrecognized feature gate \"NoSuchGate\""),
    ];
    for (identity, flag, message) in cases {
        let mut m = ManagerProcess::start(tc.cp, &ns.name, identity, &[flag]);
        eventually(Duration::from_secs(20), "the manager to exit", || {
            let exited = m.process.check_running().is_err();
            async move { exited }
        })
        .await;
        let log = std::fs::read_to_string(&m.process.log).expect("manager log");
        assert!(log.contains(message), "{flag}: {log}");
    }
}

/// One `demo reconciled` log line: (key, replica, start µs, end µs).
fn reconciles(log: &str) -> Vec<(String, String, u128, u128)> {
    let field = |line: &str, name: &str| -> Option<String> {
        let rest = line.split(&format!(" {name}=")).nth(1)?;
        Some(rest.split_whitespace().next()?.to_string())
    };
    log.lines()
        .filter(|l| l.contains("demo reconciled"))
        .filter_map(|l| {
            Some((
                field(l, "key")?,
                field(l, "identity")?,
                field(l, "start_us")?.parse().ok()?,
                field(l, "end_us")?.parse().ok()?,
            ))
        })
        .collect()
}

#[tokio::test]
async fn the_demo_controller_reconciles_each_key_on_one_replica_at_a_time() {
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::{Patch, PatchParams};

    let tc = test_cluster().await;
    let lease_ns = TestNamespace::create(&tc, "demo-leases").await;
    // A label value of its own, so managers of other tests running in the same cluster leave
    // these ConfigMaps alone (and these managers theirs).
    let selector = format!("--demo-selector=kruise.io/demo={}", lease_ns.name);
    let timing = [
        "--leader-election-lease-duration=6s",
        "--leader-election-renew-deadline=4s",
        "--leader-election-retry-period=500ms",
        "--demo-controller",
        selector.as_str(),
    ];
    let mut replicas: Vec<ManagerProcess> = ["a", "b", "c"]
        .iter()
        .map(|id| ManagerProcess::start(tc.cp, &lease_ns.name, &format!("{}-{id}", lease_ns.name), &timing))
        .collect();
    let ids: Vec<String> = replicas.iter().map(|r| r.identity.clone()).collect();

    // 8 namespaces x 3 labelled ConfigMaps, spread over the replicas' shards.
    let mut namespaces = Vec::new();
    for i in 0..8 {
        let ns = TestNamespace::create(&tc, &format!("demo{i}")).await;
        for j in 0..3 {
            crate::support::labelled_config_map(
                &tc.client,
                &ns.name,
                &format!("cm-{j}"),
                "kruise.io/demo",
                &lease_ns.name,
            )
            .await;
        }
        namespaces.push(ns);
    }
    let stamps = || async {
        let mut out = Vec::new();
        for ns in &namespaces {
            // Only the labelled ones: every namespace also has kube-root-ca.crt.
            for cm in Api::<ConfigMap>::namespaced(tc.client.clone(), &ns.name)
                .list(&kube::api::ListParams::default().labels(&format!("kruise.io/demo={}", lease_ns.name)))
                .await
                .expect("list")
                .items
            {
                out.push(cm.metadata.annotations.and_then(|a| a.get("kruise.io/demo-reconciled-by").cloned()));
            }
        }
        out
    };
    eventually(Duration::from_secs(60), "every ConfigMap stamped by a replica", || async {
        stamps().await.iter().all(|s| s.as_ref().is_some_and(|s| ids.contains(s)))
    })
    .await;

    // Crash the replica that stamped the most ConfigMaps (so some keys must move) while every
    // ConfigMap keeps changing; the survivors take its shards over.
    let stamped = stamps().await;
    let busiest = (0..replicas.len())
        .max_by_key(|i| stamped.iter().filter(|s| s.as_deref() == Some(replicas[*i].identity.as_str())).count())
        .expect("replicas");
    let mut crashed = replicas.remove(busiest);
    crashed.process.kill();
    for round in 0..5 {
        for ns in &namespaces {
            let api = Api::<ConfigMap>::namespaced(tc.client.clone(), &ns.name);
            for j in 0..3 {
                let patch = serde_json::json!({ "data": { "round": round.to_string() } });
                api.patch(&format!("cm-{j}"), &PatchParams::default(), &Patch::Merge(&patch)).await.expect("touch");
            }
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
    }
    let survivors: Vec<String> = replicas.iter().map(|r| r.identity.clone()).collect();
    eventually(Duration::from_secs(60), "every ConfigMap stamped by a surviving replica", || async {
        stamps().await.iter().all(|s| s.as_ref().is_some_and(|s| survivors.contains(s)))
    })
    .await;

    // No key was ever reconciled by two replicas at once.
    let mut by_key: BTreeMap<String, Vec<(u128, u128, String)>> = BTreeMap::new();
    for r in replicas.iter().chain(std::iter::once(&crashed)) {
        let log = std::fs::read_to_string(&r.process.log).expect("log");
        // Only this test's ConfigMaps: other tests label theirs too, in the same cluster.
        let ours = |key: &str| namespaces.iter().any(|ns| key.starts_with(&format!("{}/", ns.name)));
        for (key, id, start, end) in reconciles(&log).into_iter().filter(|(k, ..)| ours(k)) {
            by_key.entry(key).or_default().push((start, end, id));
        }
    }
    assert_eq!(by_key.len(), 24, "every ConfigMap was reconciled: {:?}", by_key.keys());
    let mut handed_over = 0;
    for (key, mut runs) in by_key {
        runs.sort();
        for w in runs.windows(2) {
            if w[0].2 != w[1].2 {
                handed_over += 1;
                assert!(w[0].1 <= w[1].0, "{key} reconciled by {} and {} at once: {w:?}", w[0].2, w[1].2);
            }
        }
    }
    eprintln!("{handed_over} keys changed replica");
    assert!(handed_over > 0, "the crash moved some keys to another replica");
}

/// The metric names docs/design.md promises (controller-runtime's, so existing dashboards work,
/// OpenKruise's leader gauge, and the runtime's own), as /metrics serves them.
const DESIGN_METRIC_NAMES: &[&str] = &[
    "controller_runtime_reconcile_total",
    "controller_runtime_reconcile_errors_total",
    "controller_runtime_reconcile_time_seconds",
    "workqueue_depth",
    "workqueue_adds_total",
    "workqueue_queue_duration_seconds",
    "workqueue_work_duration_seconds",
    "workqueue_retries_total",
    "rest_client_requests_total",
    "leader_election_master_status",
    "kruise_manager_is_leader",
    "kruise_shards_held",
    "kruise_shard_handoffs_total",
    "kruise_writer_queue_depth",
    "kruise_writer_throttle_wait_seconds",
    "kruise_writer_coalesced_total",
    "kruise_writer_requests_total",
    "kruise_writer_in_flight",
    "kruise_rest_client_response_bytes_total",
    "kruise_watch_events_received_total",
    "kruise_watch_events_filtered_total",
    "kruise_watch_server_sharded",
    "kruise_watch_relists_total",
    "kruise_watch_cache_objects",
];

#[tokio::test]
async fn metrics_expose_every_name_in_the_design() {
    let tc = test_cluster().await;
    let lease_ns = TestNamespace::create(&tc, "metrics").await;
    let ns = TestNamespace::create(&tc, "metrics-demo").await;
    let selector = format!("--demo-selector=kruise.io/demo={}", ns.name);
    let m = ManagerProcess::start(
        tc.cp,
        &lease_ns.name,
        &format!("{}-m", lease_ns.name),
        &["--demo-controller", &selector],
    );
    // One write, so the request counter has a series.
    crate::support::labelled_config_map(&tc.client, &ns.name, "stamp-me", "kruise.io/demo", &ns.name).await;
    let cms: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(tc.client.clone(), &ns.name);
    eventually(Duration::from_secs(60), "the ConfigMap stamped by this manager", || async {
        let by = cms.get("stamp-me").await.ok().and_then(|c| c.metadata.annotations);
        by.and_then(|a| a.get("kruise.io/demo-reconciled-by").cloned()).as_deref() == Some(m.identity.as_str())
    })
    .await;
    // The stamp is visible before the writer has read the API server's answer and counted the
    // request, so the request counter's first series can lag the stamp by a moment.
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let body = loop {
        let body = crate::support::cluster::process::http_get(&m.metrics_addr, "/metrics").await.expect("/metrics");
        let missing: Vec<&str> =
            DESIGN_METRIC_NAMES.iter().copied().filter(|n| !body.contains(&format!("# TYPE {n} "))).collect();
        if missing.is_empty() {
            break body;
        }
        assert!(tokio::time::Instant::now() < deadline, "/metrics lacks {missing:?}");
        tokio::time::sleep(Duration::from_millis(250)).await;
    };
    assert!(
        body.contains("controller_runtime_reconcile_errors_total{controller=\"demo-controller\"} 0"),
        "series start at zero"
    );
}

#[tokio::test]
async fn the_namespace_flag_limits_the_manager_to_one_namespace() {
    let tc = test_cluster().await;
    let lease_ns = TestNamespace::create(&tc, "one-ns").await;
    let inside = TestNamespace::create(&tc, "one-ns-in").await;
    let outside = TestNamespace::create(&tc, "one-ns-out").await;
    let label = inside.name.clone();
    for ns in [&inside, &outside] {
        crate::support::labelled_config_map(&tc.client, &ns.name, "probe", "kruise.io/demo", &label).await;
    }
    let m = ManagerProcess::start(
        tc.cp,
        &lease_ns.name,
        &format!("{}-m", lease_ns.name),
        &[
            "--demo-controller",
            &format!("--demo-selector=kruise.io/demo={label}"),
            &format!("--namespace={}", inside.name),
        ],
    );
    let stamp = |ns: &str| {
        let api: Api<k8s_openapi::api::core::v1::ConfigMap> = Api::namespaced(tc.client.clone(), ns);
        async move {
            let cm = api.get("probe").await.expect("get");
            cm.metadata.annotations.and_then(|a| a.get("kruise.io/demo-reconciled-by").cloned())
        }
    };
    eventually(Duration::from_secs(60), "the ConfigMap inside the namespace stamped", || async {
        stamp(&inside.name).await.is_some()
    })
    .await;
    eventually(Duration::from_secs(10), "the store to hold exactly that one object", || async {
        m.metric("kruise_watch_cache_objects{resource=\"configmaps\"}").await == Some(1.0)
    })
    .await;
    assert_eq!(stamp(&outside.name).await, None, "nothing outside --namespace is reconciled");
}
