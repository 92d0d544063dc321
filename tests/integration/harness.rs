//! Proves the test harness: a real control plane where Deployments schedule onto kwok nodes and
//! become Ready, RBAC is enforced, and a control plane is torn down when its owner panics.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, Secret};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};

use crate::support::cluster::control_plane::node_name;
use crate::support::{ControlPlane, ControlPlaneConfig, SHARED_NODES, TestNamespace, eventually, test_cluster};

fn pod_ready(p: &Pod) -> bool {
    let status = p.status.as_ref();
    status.and_then(|s| s.phase.as_deref()) == Some("Running")
        && status
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

#[tokio::test]
async fn deployment_pods_run_and_become_ready_on_kwok_nodes() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "harness-deploy").await;
    let labels = BTreeMap::from([("app".to_string(), "web".to_string())]);
    let deploy = Deployment {
        metadata: ObjectMeta { name: Some("web".into()), ..Default::default() },
        spec: Some(DeploymentSpec {
            replicas: Some(3),
            selector: LabelSelector { match_labels: Some(labels.clone()), ..Default::default() },
            template: PodTemplateSpec {
                metadata: Some(ObjectMeta { labels: Some(labels), ..Default::default() }),
                spec: Some(PodSpec {
                    containers: vec![Container {
                        name: "web".into(),
                        image: Some("nginx:1.27".into()),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
            },
            ..Default::default()
        }),
        ..Default::default()
    };
    let deploys: Api<Deployment> = Api::namespaced(tc.client.clone(), &ns.name);
    deploys.create(&PostParams::default(), &deploy).await.expect("create deployment");

    // The ReplicaSet controller creates the pods, the scheduler binds them, kwok runs them.
    let pods: Api<Pod> = Api::namespaced(tc.client.clone(), &ns.name);
    eventually(Duration::from_secs(90), "3 pods Running and Ready", || async {
        let list = pods.list(&ListParams::default().labels("app=web")).await.expect("list pods");
        list.items.len() == 3 && list.items.iter().all(pod_ready)
    })
    .await;

    let kwok_nodes: Vec<String> = (0..SHARED_NODES).map(node_name).collect();
    for p in pods.list(&ListParams::default().labels("app=web")).await.expect("list pods").items {
        let node = p.spec.as_ref().and_then(|s| s.node_name.clone()).unwrap_or_default();
        assert!(kwok_nodes.contains(&node), "pod scheduled to {node:?}, not a kwok node");
        let ip = p.status.as_ref().and_then(|s| s.pod_ip.clone()).unwrap_or_default();
        assert!(ip.starts_with("10.244."), "kwok gives pods an IP from its CIDR, got {ip:?}");
    }
    eventually(Duration::from_secs(30), "the Deployment to report 3 available replicas", || async {
        let d = deploys.get("web").await.expect("get deployment");
        d.status.and_then(|s| s.available_replicas) == Some(3)
    })
    .await;
}

#[tokio::test]
async fn rbac_is_enforced_for_a_less_privileged_user() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "harness-rbac").await;
    let alice = tc.cp.user_client("alice", Some("dev-team")).await.expect("alice's client");

    let secrets: Api<Secret> = Api::namespaced(alice.clone(), &ns.name);
    let pods: Api<Pod> = Api::namespaced(alice.clone(), &ns.name);
    assert!(forbidden(secrets.list(&ListParams::default()).await), "a user with no role must not list secrets");
    assert!(forbidden(pods.list(&ListParams::default()).await), "a user with no role must not list pods");

    // Grant pods only: the same identity can now list pods and still not secrets, so the 403s
    // above came from RBAC deciding about an authenticated user.
    let role = Role {
        metadata: ObjectMeta { name: Some("pod-reader".into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec!["pods".into()]),
            verbs: vec!["get".into(), "list".into(), "watch".into()],
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some("alice-reads-pods".into()), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: "pod-reader".into(),
        },
        subjects: Some(vec![Subject {
            kind: "User".into(),
            name: "alice".into(),
            api_group: Some("rbac.authorization.k8s.io".into()),
            ..Default::default()
        }]),
    };
    Api::<Role>::namespaced(tc.client.clone(), &ns.name).create(&PostParams::default(), &role).await.expect("role");
    Api::<RoleBinding>::namespaced(tc.client.clone(), &ns.name)
        .create(&PostParams::default(), &binding)
        .await
        .expect("rolebinding");

    eventually(Duration::from_secs(20), "alice to be allowed to list pods", || async {
        pods.list(&ListParams::default()).await.is_ok()
    })
    .await;
    assert!(forbidden(secrets.list(&ListParams::default()).await), "pod rights must not extend to secrets");
}

fn forbidden<T>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
}

fn pid_alive(pid: u32) -> bool {
    // SAFETY: signal 0 only checks that the process exists.
    unsafe { libc::kill(pid as libc::pid_t, 0) == 0 }
}

#[tokio::test]
async fn a_control_plane_is_torn_down_when_its_owner_panics() {
    // Its own control plane, started beside the shared one: also shows that two run side by side
    // without port or directory clashes.
    let cp = ControlPlane::start(ControlPlaneConfig { name: "teardown".into(), nodes: 1, ..Default::default() })
        .await
        .expect("second control plane");
    let pids = cp.pids();
    let dir = cp.dir().to_path_buf();
    assert_eq!(
        pids.iter().map(|(n, _)| n.as_str()).collect::<Vec<_>>(),
        ["etcd", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kwok"]
    );
    assert!(pids.iter().all(|(_, pid)| pid_alive(*pid)));

    let owner = std::thread::spawn(move || {
        let _owned = cp;
        panic!("a test failing while it owns a control plane");
    });
    assert!(owner.join().is_err(), "the owner thread panicked");

    for (name, pid) in &pids {
        assert!(!pid_alive(*pid), "{name} (pid {pid}) outlived the panic");
    }
    assert!(!dir.exists(), "the temporary directory {} was not removed", dir.display());
}
