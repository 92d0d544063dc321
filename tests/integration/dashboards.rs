//! The Grafana dashboards in dashboards/ against a real Prometheus (the Debian package, installed
//! by scripts/setup.sh) scraping two kruise-manager replicas and a simulated kruise-daemon while
//! they do real work: a SidecarSet injected and rolled out, a PodProbeMarker probing, an
//! ImagePullJob pulling. Every panel query must parse and, unless listed with a reason below,
//! return data; every metric a query names must be one the binaries export.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{Value, json};

use crate::rollout::namespace;
use crate::support::cluster::control_plane::{free_port, node_name};
use crate::support::cluster::process::{Component, http_get};
use crate::support::cluster::{self, Lifetime};
use crate::support::{DaemonProcess, LogsOnFailure, eventually};
use crate::webhooks::{create, create_pod, kruise_cluster};

const WAIT: Duration = Duration::from_secs(90);

/// Queries that may rightly return nothing in this scenario, and why.
const MAY_BE_EMPTY: &[(&str, &str)] = &[];

fn dashboards() -> Vec<(String, Value)> {
    crate::support::files_with_extension(&cluster::repo_root().join("dashboards"), "json")
        .into_iter()
        .map(|p| {
            let text = std::fs::read_to_string(&p).expect("read");
            let name = p.file_name().unwrap_or_default().to_string_lossy().into_owned();
            (name, serde_json::from_str(&text).expect("JSON"))
        })
        .collect()
}

/// Every (dashboard, panel title, expr).
fn queries(all: &[(String, Value)]) -> Vec<(String, String, String)> {
    let mut out = Vec::new();
    for (file, d) in all {
        for p in d["panels"].as_array().into_iter().flatten() {
            for t in p["targets"].as_array().into_iter().flatten() {
                let expr = t["expr"].as_str().unwrap_or_default().to_string();
                out.push((file.clone(), p["title"].as_str().unwrap_or_default().to_string(), expr));
            }
        }
    }
    out
}

/// Metric names an expression refers to (identifiers followed by `{`).
fn metric_names(expr: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    let bytes: Vec<char> = expr.chars().collect();
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i].is_ascii_alphabetic() || bytes[i] == '_' {
            let start = i;
            while i < bytes.len() && (bytes[i].is_ascii_alphanumeric() || bytes[i] == '_') {
                i += 1;
            }
            if bytes.get(i) == Some(&'{') {
                names.insert(bytes[start..i].iter().collect());
            }
        } else {
            i += 1;
        }
    }
    names
}

#[test]
fn dashboards_are_grafana_10_json() {
    let all = dashboards();
    assert_eq!(all.len(), 3, "overview, SidecarSet rollout, node agents");
    for (file, d) in &all {
        assert!(d["schemaVersion"].as_i64().unwrap_or(0) >= 36, "{file}: Grafana 10 schema");
        assert!(d["uid"].as_str().is_some_and(|u| !u.is_empty() && u.len() <= 40), "{file}: uid");
        let panels = d["panels"].as_array().expect("panels");
        let ids: BTreeSet<i64> = panels.iter().filter_map(|p| p["id"].as_i64()).collect();
        assert_eq!(ids.len(), panels.len(), "{file}: unique panel ids");
        for p in panels {
            let g = &p["gridPos"];
            let (x, w) = (g["x"].as_i64().unwrap_or(-1), g["w"].as_i64().unwrap_or(0));
            assert!(x >= 0 && w > 0 && x + w <= 24, "{file}: {} fits the 24-column grid", p["title"]);
            if p["type"] != "row" {
                assert_eq!(
                    p["datasource"]["uid"], "${datasource}",
                    "{file}: {} uses the datasource variable",
                    p["title"]
                );
                assert!(
                    !p["targets"].as_array().map(Vec::is_empty).unwrap_or(true),
                    "{file}: {} has queries",
                    p["title"]
                );
            }
        }
    }
}

#[tokio::test]
async fn every_dashboard_query_runs_against_a_real_prometheus() {
    let (cp, client, managers) = kruise_cluster("dashboards", 2, 2, &["--nodeimage-creation-delay=0s"]).await;
    let _logs = LogsOnFailure(&cp);
    let daemon = DaemonProcess::start(
        &cp,
        "dashboards-daemon",
        &["--probe-status-flush-interval=200ms", "--image-status-flush-interval=100ms", "--simulated-pull-time=200ms"],
    );

    // Prometheus scraping every second.
    let prom_addr = format!("127.0.0.1:{}", free_port().expect("port"));
    let dir = cp.dir().join("prometheus");
    std::fs::create_dir_all(&dir).expect("prometheus dir");
    let managers_targets: Vec<String> = managers.iter().map(|m| m.metrics_addr.clone()).collect();
    let config = json!({
        "global": { "scrape_interval": "1s", "evaluation_interval": "1s" },
        "scrape_configs": [
            { "job_name": "kruise-manager", "static_configs": [{ "targets": managers_targets }] },
            { "job_name": "kruise-daemon", "static_configs": [{ "targets": [daemon.addr.clone()] }] }
        ]
    });
    // JSON is YAML.
    std::fs::write(dir.join("prometheus.yml"), config.to_string()).expect("config");
    let prometheus = std::env::var("KRUISE_PROMETHEUS").unwrap_or_else(|_| "prometheus".into());
    let args = [
        format!("--config.file={}", dir.join("prometheus.yml").display()),
        format!("--storage.tsdb.path={}", dir.join("data").display()),
        format!("--web.listen-address={prom_addr}"),
    ];
    let _prom = Component::spawn(
        "prometheus",
        std::path::Path::new(&prometheus),
        &args,
        &cp.dir().join("logs"),
        Lifetime::TiedToProcess,
    )
    .expect("start prometheus (apt-get install prometheus; scripts/setup.sh does)");
    eventually(WAIT, "Prometheus to be ready", || async { http_get(&prom_addr, "/-/ready").await.is_some() }).await;

    // Real work for every panel: injection and an in-place rollout, probes, pulls.
    let ns = "dash";
    namespace(&client, ns).await;
    let set = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "SidecarSet",
        "metadata": { "name": "mesh" },
        "spec": { "selector": { "matchLabels": { "app": "web" } }, "containers": [{ "name": "proxy", "image": "proxy:1" }] }
    });
    create(&client, "sidecarsets", "SidecarSet", None, set).await.expect("sidecarset");
    for i in 0..4 {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": { "name": format!("web-{i}"), "labels": { "app": "web" },
                          "annotations": { "exec.sim.kruise.io/main": json!({"exitCode": 0}).to_string() } },
            "spec": { "nodeName": node_name(i % 2), "containers": [{ "name": "main", "image": "web:1" }] }
        });
        // The webhook may still be starting: retry the creation.
        eventually(WAIT, "a pod created through the webhook", || {
            let (client, pod) = (client.clone(), pod.clone());
            async move { create_pod(&client, ns, pod).await.is_ok() }
        })
        .await;
    }
    let marker = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "PodProbeMarker",
        "metadata": { "name": "ready" },
        "spec": { "selector": { "matchLabels": { "app": "web" } }, "probes": [{
            "name": "Healthy", "containerName": "main",
            "probe": { "exec": { "command": ["true"] }, "periodSeconds": 1, "initialDelaySeconds": 1 },
            "podConditionType": "web.io/ready"
        }] }
    });
    create(&client, "podprobemarkers", "PodProbeMarker", Some(ns), marker).await.expect("marker");
    let job = json!({
        "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
        "metadata": { "name": "warm" },
        "spec": { "image": "web:2", "parallelism": 1, "completionPolicy": { "type": "Always" } }
    });
    create(&client, "imagepulljobs", "ImagePullJob", Some(ns), job).await.expect("job");
    let sets: kube::Api<kube::core::DynamicObject> =
        kube::Api::all_with(client.clone(), &crate::webhooks::resource("sidecarsets", "SidecarSet"));
    let patch = json!({ "spec": { "containers": [{ "name": "proxy", "image": "proxy:2" }] } });
    sets.patch("mesh", &kube::api::PatchParams::default(), &kube::api::Patch::Merge(&patch)).await.expect("roll out");

    // Let the work happen and Prometheus take enough samples for rate() over 30 s.
    let daemon_ref = &daemon;
    eventually(WAIT, "pulls and probe runs on the daemon", || async move {
        daemon_ref.metric("kruise_daemon_image_pulls_total", "result=\"succeeded\"").await.unwrap_or(0.0) >= 2.0
            && daemon_ref.metric("kruise_daemon_probe_runs_total", "result=\"succeeded\"").await.unwrap_or(0.0) >= 4.0
    })
    .await;
    tokio::time::sleep(Duration::from_secs(20)).await;

    // Every metric a dashboard names is exported by a binary.
    let mut exported = BTreeSet::new();
    for addr in managers.iter().map(|m| m.metrics_addr.as_str()).chain([daemon.addr.as_str()]) {
        let body = http_get(addr, "/metrics").await.expect("/metrics");
        for (name, _, _) in cluster::metrics::samples(&body) {
            exported.insert(name.to_string());
        }
        // Families registered without a series yet (a labelled counter nothing has counted).
        for line in body.lines().filter_map(|l| l.strip_prefix("# TYPE ")) {
            let mut parts = line.split_whitespace();
            let (Some(name), Some(kind)) = (parts.next(), parts.next()) else { continue };
            exported.insert(name.to_string());
            if kind == "histogram" {
                exported.extend(["_bucket", "_sum", "_count"].map(|s| format!("{name}{s}")));
            }
        }
    }
    let all = dashboards();
    let mut failures = Vec::new();
    for (file, title, expr) in queries(&all) {
        for name in metric_names(&expr) {
            if !exported.contains(&name) {
                failures.push(format!("{file} / {title}: {name} is not exported"));
            }
        }
        let query = expr.replace("$__rate_interval", "30s").replace("$job", ".*");
        let url = format!("/api/v1/query?query={}", urlencode(&query));
        let body = http_get(&prom_addr, &url).await.unwrap_or_default();
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        if answer["status"] != "success" {
            failures.push(format!("{file} / {title}: `{query}` failed: {body}"));
            continue;
        }
        let empty = answer["data"]["result"].as_array().is_none_or(Vec::is_empty);
        let may_be_empty = MAY_BE_EMPTY.iter().any(|(m, _)| expr.contains(m));
        if empty && !may_be_empty {
            failures.push(format!("{file} / {title}: `{query}` returned no data"));
        }
    }
    assert!(failures.is_empty(), "{} dashboard queries failed:\n{}", failures.len(), failures.join("\n"));
}

fn urlencode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => (b as char).to_string(),
            _ => format!("%{b:02X}"),
        })
        .collect()
}
