//! Proves the test harness: a real control plane where Deployments schedule onto kwok nodes and
//! become Ready, RBAC is enforced for users and ServiceAccount tokens, and a control plane is torn
//! down when its owner panics.

use std::collections::BTreeMap;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, DeploymentSpec};
use k8s_openapi::api::core::v1::{Container, Pod, PodSpec, PodTemplateSpec, Secret, ServiceAccount};
use k8s_openapi::api::rbac::v1::{PolicyRule, Role, RoleBinding, RoleRef, Subject};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::LabelSelector;
use kube::Api;
use kube::api::{ListParams, ObjectMeta, PostParams};

use crate::support::cluster::control_plane::{client_from_kubeconfig, node_name};
use crate::support::cluster::process::pid_alive;
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
    let alice_subject = Subject {
        kind: "User".into(),
        name: "alice".into(),
        api_group: Some("rbac.authorization.k8s.io".into()),
        ..Default::default()
    };
    grant(&tc.client, &ns.name, "pod-reader", "pods", &["get", "list", "watch"], alice_subject).await;

    eventually(Duration::from_secs(20), "alice to be allowed to list pods", || async {
        pods.list(&ListParams::default()).await.is_ok()
    })
    .await;
    assert!(forbidden(secrets.list(&ListParams::default()).await), "pod rights must not extend to secrets");
}

#[tokio::test]
async fn a_service_account_token_authenticates_and_rbac_governs_it() {
    let tc = test_cluster().await;
    let ns = TestNamespace::create(&tc, "harness-sa").await;
    let sa = ServiceAccount {
        metadata: ObjectMeta { name: Some("controller".into()), ..Default::default() },
        ..Default::default()
    };
    Api::<ServiceAccount>::namespaced(tc.client.clone(), &ns.name)
        .create(&PostParams::default(), &sa)
        .await
        .expect("sa");
    let kubeconfig = tc.cp.service_account_kubeconfig(&tc.client, &ns.name, "controller").await.expect("token");
    let client = client_from_kubeconfig(&kubeconfig).await.expect("sa client");
    let secrets: Api<Secret> = Api::namespaced(client, &ns.name);

    // The API server knows who is asking: the 403 names the ServiceAccount user.
    match secrets.list(&ListParams::default()).await {
        Err(kube::Error::Api(s)) if s.code == 403 => assert!(
            s.message.contains(&format!("system:serviceaccount:{}:controller", ns.name)),
            "the token must authenticate as the ServiceAccount: {}",
            s.message
        ),
        other => panic!("a ServiceAccount with no role must be forbidden to list secrets, got {other:?}"),
    }

    let sa_subject = Subject {
        kind: "ServiceAccount".into(),
        name: "controller".into(),
        namespace: Some(ns.name.clone()),
        ..Default::default()
    };
    grant(&tc.client, &ns.name, "secret-reader", "secrets", &["list"], sa_subject).await;
    eventually(Duration::from_secs(20), "the ServiceAccount to be allowed to list secrets", || async {
        secrets.list(&ListParams::default()).await.is_ok()
    })
    .await;
}

/// Creates Role `role` allowing `verbs` on core `resource` in `ns`, bound to `subject`.
async fn grant(admin: &kube::Client, ns: &str, role: &str, resource: &str, verbs: &[&str], subject: Subject) {
    let r = Role {
        metadata: ObjectMeta { name: Some(role.into()), ..Default::default() },
        rules: Some(vec![PolicyRule {
            api_groups: Some(vec!["".into()]),
            resources: Some(vec![resource.into()]),
            verbs: verbs.iter().map(|v| v.to_string()).collect(),
            ..Default::default()
        }]),
    };
    let binding = RoleBinding {
        metadata: ObjectMeta { name: Some(format!("{role}-binding")), ..Default::default() },
        role_ref: RoleRef {
            api_group: Some("rbac.authorization.k8s.io".into()),
            kind: "Role".into(),
            name: role.into(),
        },
        subjects: Some(vec![subject]),
    };
    Api::<Role>::namespaced(admin.clone(), ns).create(&PostParams::default(), &r).await.expect("create role");
    Api::<RoleBinding>::namespaced(admin.clone(), ns)
        .create(&PostParams::default(), &binding)
        .await
        .expect("create rolebinding");
}

fn forbidden<T>(r: Result<T, kube::Error>) -> bool {
    matches!(r, Err(kube::Error::Api(s)) if s.code == 403)
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

/// Where the helper below writes the pids of the control plane it started.
const HELPER_PID_FILE: &str = "KRUISE_TEST_HELPER_PID_FILE";

#[tokio::test]
#[ignore = "helper: run by a_killed_test_binary_takes_its_control_plane_with_it in a child process"]
async fn helper_start_a_control_plane_and_wait_to_be_killed() {
    let Some(pid_file) = std::env::var_os(HELPER_PID_FILE) else {
        eprintln!("{HELPER_PID_FILE} not set: nothing to do");
        return;
    };
    let cp = ControlPlane::start(ControlPlaneConfig { name: "killed".into(), nodes: 1, ..Default::default() })
        .await
        .expect("control plane");
    let pids: Vec<String> = cp.pids().iter().map(|(_, p)| p.to_string()).collect();
    std::fs::write(&pid_file, format!("{}\n{}", cp.dir().display(), pids.join(" "))).expect("write pid file");
    tokio::time::sleep(Duration::from_secs(300)).await;
}

#[tokio::test]
async fn a_killed_test_binary_takes_its_control_plane_with_it() {
    // SIGKILL skips Drop and atexit: the kernel's parent-death signal must stop the components.
    let pid_file = std::env::temp_dir().join(format!("kruise-helper-{}-{}", std::process::id(), line!()));
    let _ = std::fs::remove_file(&pid_file);
    let mut helper = std::process::Command::new(std::env::current_exe().expect("test binary"))
        .args(["--ignored", "--exact", "harness::helper_start_a_control_plane_and_wait_to_be_killed", "--nocapture"])
        .env(HELPER_PID_FILE, &pid_file)
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start helper");
    eventually(Duration::from_secs(120), "the helper's control plane to start", || async { pid_file.exists() }).await;
    let text = std::fs::read_to_string(&pid_file).expect("pid file");
    let _ = std::fs::remove_file(&pid_file);
    let (dir, pids) = text.split_once('\n').expect("dir and pids");
    let pids: Vec<u32> = pids.split_whitespace().map(|p| p.parse().expect("pid")).collect();
    assert_eq!(pids.len(), 5, "etcd, apiserver, controller-manager, scheduler, kwok");
    assert!(pids.iter().all(|p| pid_alive(*p)));

    helper.kill().expect("SIGKILL the helper");
    helper.wait().expect("reap the helper");
    eventually(Duration::from_secs(10), "every component to die with the helper", || async {
        pids.iter().all(|p| !pid_alive(*p))
    })
    .await;
    // Nothing ran to remove the helper's directory; clean up after it.
    let _ = std::fs::remove_dir_all(dir);
}
