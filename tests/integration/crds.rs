//! The CRDs generated from `src/api` on a real API server: they install, every example applies
//! and reads back unchanged (nothing pruned), malformed objects are refused by the schema, and
//! kubectl prints upstream's columns.

use std::path::Path;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{ApiResource, DynamicObject, PostParams};
use kube::{Api, Client};
use serde_json::{Value, json};

use crate::support::{install_crds, test_cluster};

/// The API resource and scope of a kruise kind.
fn resource_of(kind: &str) -> Option<(ApiResource, bool)> {
    kruise::api::crds().into_iter().find(|c| c.spec.names.kind == kind).map(|c: CustomResourceDefinition| {
        let version = c.spec.versions[0].name.clone();
        let ar = ApiResource {
            group: c.spec.group.clone(),
            version: version.clone(),
            api_version: format!("{}/{version}", c.spec.group),
            kind: c.spec.names.kind.clone(),
            plural: c.spec.names.plural.clone(),
        };
        (ar, c.spec.scope == "Namespaced")
    })
}

fn api_for(client: &Client, ar: &ApiResource, namespaced: bool, ns: &str) -> Api<DynamicObject> {
    if namespaced { Api::namespaced_with(client.clone(), ns, ar) } else { Api::all_with(client.clone(), ar) }
}

/// Every YAML document in examples/.
fn examples() -> Vec<(String, Value)> {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("examples");
    let mut docs = Vec::new();
    for f in crate::support::files_with_extension(&dir, "yaml") {
        let text = std::fs::read_to_string(&f).expect("read example");
        for (i, value) in crate::support::yaml_documents(&text).into_iter().enumerate() {
            docs.push((format!("{}#{i}", f.file_name().unwrap_or_default().to_string_lossy()), value));
        }
    }
    docs
}

async fn create(client: &Client, mut obj: Value, suffix: &str) -> Result<(Value, Value), kube::Error> {
    let kind = obj["kind"].as_str().expect("kind").to_string();
    let (ar, namespaced) = resource_of(&kind).unwrap_or_else(|| panic!("no CRD for kind {kind}"));
    let name = format!("{}-{suffix}", obj["metadata"]["name"].as_str().expect("name"));
    obj["metadata"]["name"] = json!(name);
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default").to_string();
    let api = api_for(client, &ar, namespaced, &ns);
    let dynamic: DynamicObject = serde_json::from_value(obj.clone()).expect("a Kubernetes object");
    api.create(&PostParams::default(), &dynamic).await?;
    let read = serde_json::to_value(api.get(&name).await?).expect("json");
    Ok((obj, read))
}

#[tokio::test]
async fn every_example_applies_and_reads_back_unchanged() {
    let tc = test_cluster().await;
    install_crds(&tc.client).await;
    let docs = examples();
    assert!(!docs.is_empty(), "examples/ holds manifests");
    for (i, (source, obj)) in docs.into_iter().enumerate() {
        let (sent, read) = create(&tc.client, obj, &format!("rt{i}")).await.unwrap_or_else(|e| panic!("{source}: {e}"));
        assert_eq!(read["spec"], sent["spec"], "{source}: the API server changed or pruned the spec");
        assert_eq!(read["metadata"]["labels"], sent["metadata"]["labels"], "{source}: labels");
    }
}

/// The first document of the example file `file`.
fn example(file: &str) -> Value {
    examples()
        .into_iter()
        .find(|(s, _)| s.starts_with(&format!("{file}#")))
        .map(|(_, v)| v)
        .unwrap_or_else(|| panic!("no example {file}"))
}

fn logtail() -> Value {
    example("sidecarset-logtail.yaml")
}

/// Creating `obj` must fail with 422 and a message containing each of `expected`.
async fn assert_rejected(client: &Client, obj: Value, suffix: &str, expected: &[&str]) {
    match create(client, obj, suffix).await {
        Err(kube::Error::Api(s)) => {
            assert_eq!(s.code, 422, "{}", s.message);
            for e in expected {
                assert!(s.message.contains(e), "message {:?} does not mention {e:?}", s.message);
            }
        }
        Err(e) => panic!("expected a schema rejection, got {e}"),
        Ok(_) => panic!("the API server accepted a malformed object (expected {expected:?})"),
    }
}

#[tokio::test]
async fn malformed_objects_are_refused_by_the_schema() {
    let tc = test_cluster().await;
    install_crds(&tc.client).await;

    let mut wrong_type = logtail();
    wrong_type["spec"]["updateStrategy"]["paused"] = json!("yes");
    assert_rejected(&tc.client, wrong_type, "bad-type", &["spec.updateStrategy.paused", "boolean"]).await;

    let mut bad_enum = logtail();
    bad_enum["spec"]["containers"][0]["podInjectPolicy"] = json!("Sideways");
    assert_rejected(&tc.client, bad_enum, "bad-enum", &["podInjectPolicy", "Unsupported value", "Sideways"]).await;

    let mut bad_enum = logtail();
    bad_enum["spec"]["updateStrategy"]["type"] = json!("OnDelete");
    assert_rejected(&tc.client, bad_enum, "bad-strategy", &["spec.updateStrategy.type", "Unsupported value"]).await;

    let mut missing = logtail();
    missing["spec"]["updateStrategy"]["scatterStrategy"] = json!([{ "key": "app_name" }]);
    assert_rejected(&tc.client, missing, "missing", &["scatterStrategy[0].value", "Required value"]).await;

    let mut not_a_list = logtail();
    not_a_list["spec"]["volumes"] = json!({ "name": "x" });
    assert_rejected(&tc.client, not_a_list, "volumes", &["spec.volumes", "array"]).await;

    let mut no_container = example("podprobemarker-game-server.yaml");
    no_container["spec"]["probes"][0].as_object_mut().expect("probe").remove("containerName");
    assert_rejected(&tc.client, no_container, "no-container", &["spec.probes[0].containerName", "Required value"])
        .await;

    let mut bad_state = example("podprobemarker-game-server.yaml");
    bad_state["spec"]["probes"][0]["markerPolicy"][0]["state"] = json!("Maybe");
    assert_rejected(&tc.client, bad_state, "bad-state", &["markerPolicy[0].state", "Unsupported value"]).await;

    // podProbes is a list-map keyed by namespace/name/uid, so manager shards can each own their
    // pods' entries through server-side apply; the same pod twice is refused.
    let mut twice = example("nodepodprobe.yaml");
    let entry = twice["spec"]["podProbes"][0].clone();
    twice["spec"]["podProbes"] = json!([entry.clone(), entry]);
    assert_rejected(&tc.client, twice, "twice", &["spec.podProbes[1]", "Duplicate value"]).await;

    let mut no_policy = example("imagepulljob.yaml");
    no_policy["spec"].as_object_mut().expect("spec").remove("completionPolicy");
    assert_rejected(&tc.client, no_policy, "no-policy", &["spec.completionPolicy", "Required value"]).await;

    let mut bad_policy = example("imagepulljob.yaml");
    bad_policy["spec"]["completionPolicy"]["type"] = json!("Sometimes");
    assert_rejected(&tc.client, bad_policy, "bad-policy", &["spec.completionPolicy.type", "Unsupported value"]).await;

    let mut tag_twice = example("nodeimage.yaml");
    let image = tag_twice["spec"]["images"].as_object_mut().expect("images").values_mut().next().expect("an image");
    let tag = image["tags"][0].clone();
    image["tags"] = json!([tag.clone(), tag]);
    assert_rejected(&tc.client, tag_twice, "tag-twice", &["tags[1]", "Duplicate value"]).await;

    let mut no_template = example("broadcastjob.yaml");
    no_template["spec"].as_object_mut().expect("spec").remove("template");
    assert_rejected(&tc.client, no_template, "no-template", &["spec.template", "Required value"]).await;

    let mut bad_failure = example("broadcastjob.yaml");
    bad_failure["spec"]["failurePolicy"]["type"] = json!("Retry");
    assert_rejected(&tc.client, bad_failure, "bad-failure", &["spec.failurePolicy.type", "Unsupported value"]).await;

    let mut bad_concurrency = example("advancedcronjob.yaml");
    bad_concurrency["spec"]["concurrencyPolicy"] = json!("Sometimes");
    assert_rejected(&tc.client, bad_concurrency, "bad-concurrency", &["spec.concurrencyPolicy", "Unsupported value"])
        .await;

    let mut bad_update = example("cloneset.yaml");
    bad_update["spec"]["updateStrategy"]["type"] = json!("RollingUpdate");
    assert_rejected(&tc.client, bad_update, "bad-update", &["spec.updateStrategy.type", "Unsupported value"]).await;

    let mut no_selector = example("cloneset.yaml");
    no_selector["spec"].as_object_mut().expect("spec").remove("selector");
    assert_rejected(&tc.client, no_selector, "no-selector", &["spec.selector", "Required value"]).await;

    let mut bad_rolling = example("daemonset.yaml");
    bad_rolling["spec"]["updateStrategy"]["rollingUpdate"]["rollingUpdateType"] = json!("BlueGreen");
    assert_rejected(&tc.client, bad_rolling, "bad-rolling", &["rollingUpdateType", "Unsupported value"]).await;

    let mut no_target = example("workloadspread.yaml");
    no_target["spec"]["targetRef"].as_object_mut().expect("targetRef").remove("kind");
    assert_rejected(&tc.client, no_target, "no-target", &["spec.targetRef.kind", "Required value"]).await;

    let mut bad_schedule = example("workloadspread.yaml");
    bad_schedule["spec"]["scheduleStrategy"]["type"] = json!("Random");
    assert_rejected(&tc.client, bad_schedule, "bad-schedule", &["spec.scheduleStrategy.type", "Unsupported value"])
        .await;

    let mut negative = example("advancedcronjob.yaml");
    negative["spec"]["startingDeadlineSeconds"] = json!(-1);
    assert_rejected(&tc.client, negative, "negative", &["spec.startingDeadlineSeconds", "greater than or equal to 0"])
        .await;
}

/// Upstream's short name (if any) and `kubectl get` header for each kind.
const EXPECTED_NAMES_AND_COLUMNS: &[(&str, &[&str], &[&str])] = &[
    ("SidecarSet", &[], &["NAME", "MATCHED", "UPDATED", "READY", "AGE"]),
    ("PodProbeMarker", &[], &["NAME", "AGE"]),
    ("NodePodProbe", &[], &["NAME", "AGE"]),
    ("ImagePullJob", &[], &["NAME", "TOTAL", "ACTIVE", "SUCCEED", "FAILED", "AGE", "MESSAGE"]),
    ("NodeImage", &[], &["NAME", "DESIRED", "PULLING", "SUCCEED", "FAILED", "AGE"]),
    ("BroadcastJob", &["bcj"], &["NAME", "DESIRED", "ACTIVE", "SUCCEEDED", "FAILED", "AGE"]),
    ("AdvancedCronJob", &["acj"], &["NAME", "SCHEDULE", "TYPE", "LASTSCHEDULETIME", "AGE"]),
    ("CloneSet", &["clone"], &["NAME", "DESIRED", "UPDATED", "UPDATED_READY", "READY", "TOTAL", "AGE"]),
    ("DaemonSet", &["daemon", "ads"], &["NAME", "DESIRED", "CURRENT", "READY", "UP-TO-DATE", "AVAILABLE", "AGE"]),
    ("WorkloadSpread", &["ws"], &["NAME", "WORKLOADNAME", "WORKLOADKIND", "ADAPTIVE", "AGE"]),
];

#[tokio::test]
async fn kubectl_get_prints_upstreams_columns() {
    let tc = test_cluster().await;
    install_crds(&tc.client).await;
    let kubectl = crate::support::cluster::ensure_binaries().expect("binaries").join("kubectl");
    for crd in kruise::api::crds() {
        let kind = crd.spec.names.kind.as_str();
        let (_, shorts, expected) = EXPECTED_NAMES_AND_COLUMNS
            .iter()
            .find(|(k, _, _)| *k == kind)
            .unwrap_or_else(|| panic!("no expected columns for {kind}"));
        let declared = crd.spec.names.short_names.clone().unwrap_or_default();
        assert_eq!(declared, *shorts, "{kind} short names");
        // Through a short name where there is one, so kubectl's discovery of it is tested too.
        let resource = shorts.last().copied().unwrap_or(crd.spec.names.plural.as_str());
        let (file, obj) = examples()
            .into_iter()
            .find(|(_, v)| v["kind"] == kind)
            .unwrap_or_else(|| panic!("no example of kind {kind}"));
        let (sent, _) = create(&tc.client, obj, "columns").await.unwrap_or_else(|e| panic!("{file}: {e}"));
        let mut cmd = std::process::Command::new(&kubectl);
        cmd.arg(format!("--kubeconfig={}", tc.cp.admin_kubeconfig().display())).args([
            "get",
            resource,
            sent["metadata"]["name"].as_str().expect("name"),
        ]);
        if let Some(ns) = sent["metadata"]["namespace"].as_str() {
            cmd.args(["-n", ns]);
        }
        let out = cmd.output().expect("run kubectl");
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "kubectl get {kind}: {}", String::from_utf8_lossy(&out.stderr));
        let header: Vec<&str> = stdout.lines().next().unwrap_or_default().split_whitespace().collect();
        assert_eq!(header, *expected, "{kind}: {stdout}");
    }
}

#[tokio::test]
async fn the_scale_subresource_drives_clonesets() {
    use kube::api::{Patch, PatchParams};
    let tc = test_cluster().await;
    install_crds(&tc.client).await;
    let (sent, _) = create(&tc.client, example("cloneset.yaml"), "scale").await.expect("create");
    let name = sent["metadata"]["name"].as_str().expect("name");
    let (ar, _) = resource_of("CloneSet").expect("CloneSet CRD");
    let api: Api<DynamicObject> = Api::namespaced_with(tc.client.clone(), "default", &ar);
    let scale = api.get_scale(name).await.expect("GET scale");
    assert_eq!(scale.spec.and_then(|s| s.replicas), Some(10));
    api.patch_scale(name, &PatchParams::default(), &Patch::Merge(json!({ "spec": { "replicas": 4 } })))
        .await
        .expect("PATCH scale");
    let after = api.get(name).await.expect("get");
    assert_eq!(after.data["spec"]["replicas"], json!(4), "scale writes spec.replicas");
}
