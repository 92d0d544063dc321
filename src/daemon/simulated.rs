//! The simulated container runtime: containers are what the pods' statuses say (kwok writes
//! them), and an exec's outcome is what the pod's annotation `exec.sim.kruise.io/<container>`
//! says, so a test or a load test drives probes by annotating pods. One process serves any
//! number of kwok nodes with it.
//!
//! The annotation holds JSON `{"exitCode": 0, "stdout": "", "stderr": "", "latencyMs": 0}` (all
//! optional); without it every exec succeeds at once with empty output. An exec slower than its
//! timeout times out.
//!
//! Images ([`SimulatedImages`]): each node starts with the images its annotation
//! `images.sim.kruise.io/script` names as present and keeps what it pulls. A pull takes the
//! process's pull time unless the annotation says otherwise, and fails as often as it says:
//! `{"latencyMs": 1000, "present": ["busybox:1.36"], "failures": {"nginx:1.25": 2, "*": 0},
//! "requireUser": "robot"}` (`failures`: attempts of a reference that fail before one succeeds, `*`
//! for any reference; `requireUser`: pulls without that registry user are refused).

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use serde::Deserialize;

use super::runtime::{ContainerInfo, ContainerRuntime, ExecOutcome, ImageRuntime, RegistryAuth, RuntimeError};
use crate::runtime::watch_changes::{Change, follow};

/// The annotation prefix scripting a container's exec outcome.
pub const EXEC_ANNOTATION_PREFIX: &str = "exec.sim.kruise.io/";

/// A scripted exec outcome.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ExecScript {
    pub exit_code: i32,
    pub stdout: String,
    pub stderr: String,
    pub latency_ms: u64,
}

#[derive(Debug, Clone, PartialEq)]
struct SimContainer {
    info: ContainerInfo,
    script: ExecScript,
}

/// Containers by pod uid and name, and pod uid + name by container id.
#[derive(Default)]
struct Containers {
    by_pod: HashMap<String, HashMap<String, SimContainer>>,
    by_id: HashMap<String, (String, String)>,
}

impl Containers {
    fn put(&mut self, pod: &Pod) {
        let uid = pod.metadata.uid.clone().unwrap_or_default();
        self.remove(&uid);
        let annotations = pod.metadata.annotations.clone().unwrap_or_default();
        let mut containers = HashMap::new();
        for s in pod.status.as_ref().and_then(|s| s.container_statuses.as_ref()).into_iter().flatten() {
            let running = s.state.as_ref().and_then(|st| st.running.as_ref());
            let started_at = running.and_then(|r| r.started_at.as_ref()).map(|t| t.0);
            // kwok may leave the ID out; a restart still makes a new one.
            let id = s
                .container_id
                .clone()
                .filter(|i| !i.is_empty())
                .unwrap_or_else(|| format!("sim://{uid}/{}/{}", s.name, s.restart_count));
            let script = annotations
                .get(&format!("{EXEC_ANNOTATION_PREFIX}{}", s.name))
                .and_then(|raw| serde_json::from_str(raw).ok())
                .unwrap_or_default();
            self.by_id.insert(id.clone(), (uid.clone(), s.name.clone()));
            let info = ContainerInfo { id, name: s.name.clone(), running: running.is_some(), started_at };
            containers.insert(s.name.clone(), SimContainer { info, script });
        }
        self.by_pod.insert(uid, containers);
    }

    fn remove(&mut self, uid: &str) {
        if let Some(old) = self.by_pod.remove(uid) {
            for c in old.values() {
                self.by_id.remove(&c.info.id);
            }
        }
    }
}

#[derive(Clone, Default)]
pub struct SimulatedRuntime {
    containers: Arc<RwLock<Containers>>,
}

impl SimulatedRuntime {
    /// Follows the pods matching `field_selector` (e.g. every pod, or one node's).
    pub fn watch(client: &Client, field_selector: Option<String>) -> Self {
        use kube::runtime::watcher;
        let rt = SimulatedRuntime::default();
        let containers = rt.containers.clone();
        let mut config = watcher::Config::default();
        if let Some(f) = field_selector {
            config = config.fields(&f);
        }
        let stream = watcher::watcher(Api::<Pod>::all(client.clone()), config);
        let uid = |p: &Pod| p.metadata.uid.clone().unwrap_or_default();
        tokio::spawn(follow(stream, "simulated runtime: pod", uid, move |changes, _| {
            let Ok(mut c) = containers.write() else { return false };
            for change in changes {
                match change {
                    Change::Put(p) => c.put(&p),
                    Change::Gone(uid) => c.remove(&uid),
                }
            }
            true
        }));
        rt
    }

    #[cfg(test)]
    fn with(pods: &[Pod]) -> Self {
        let rt = SimulatedRuntime::default();
        pods.iter().for_each(|p| rt.containers.write().unwrap().put(p));
        rt
    }
}

impl ContainerRuntime for SimulatedRuntime {
    fn container(&self, pod_uid: &str, container: &str) -> BoxFuture<'_, Result<Option<ContainerInfo>, RuntimeError>> {
        let found = self
            .containers
            .read()
            .map_err(|_| RuntimeError("simulated runtime state poisoned".into()))
            .map(|c| c.by_pod.get(pod_uid).and_then(|p| p.get(container)).map(|c| c.info.clone()));
        Box::pin(async move { found })
    }

    fn exec_sync(
        &self,
        container_id: &str,
        _command: &[String],
        timeout: Duration,
    ) -> BoxFuture<'_, Result<ExecOutcome, RuntimeError>> {
        let script = self.containers.read().ok().and_then(|c| {
            let (uid, name) = c.by_id.get(container_id)?;
            c.by_pod.get(uid)?.get(name).map(|c| c.script.clone())
        });
        let missing = RuntimeError(format!("no container {container_id}"));
        Box::pin(async move {
            let Some(s) = script else { return Err(missing) };
            let latency = Duration::from_millis(s.latency_ms);
            if latency > timeout {
                tokio::time::sleep(timeout).await;
                return Ok(ExecOutcome::TimedOut);
            }
            tokio::time::sleep(latency).await;
            Ok(ExecOutcome::Exited { exit_code: s.exit_code, stdout: s.stdout, stderr: s.stderr })
        })
    }
}

/// The node annotation scripting its images.
pub const IMAGES_ANNOTATION: &str = "images.sim.kruise.io/script";

/// A node's scripted images.
#[derive(Debug, Clone, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase", default)]
pub struct ImagesScript {
    pub latency_ms: Option<u64>,
    pub present: Vec<String>,
    pub failures: HashMap<String, u32>,
    /// The registry user every pull must come with (the others are refused).
    pub require_user: Option<String>,
}

/// What the simulated nodes hold and how often each was asked to pull what.
#[derive(Default)]
struct PulledImages {
    /// By node: the references pulled so far.
    pulled: HashMap<String, std::collections::HashSet<String>>,
    /// By (node, reference): the pull attempts so far.
    attempts: HashMap<(String, String), u32>,
}

/// Images of simulated nodes, scripted by node annotation; [`SimulatedImages::node`] is one
/// node's image service.
#[derive(Clone)]
pub struct SimulatedImages {
    nodes: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Node>,
    pull_time: Duration,
    state: Arc<std::sync::Mutex<PulledImages>>,
}

impl SimulatedImages {
    /// Serves the nodes of `nodes`; a pull takes `pull_time` unless a node's script says otherwise.
    pub fn new(nodes: kube::runtime::reflector::Store<k8s_openapi::api::core::v1::Node>, pull_time: Duration) -> Self {
        SimulatedImages { nodes, pull_time, state: Default::default() }
    }

    pub fn node(&self, node: &str) -> SimulatedNodeImages {
        SimulatedNodeImages { images: self.clone(), node: node.to_string() }
    }

    fn script(&self, node: &str) -> ImagesScript {
        let n = self.nodes.get(&kube::runtime::reflector::ObjectRef::new(node));
        let raw = n.as_ref().and_then(|n| n.metadata.annotations.as_ref()?.get(IMAGES_ANNOTATION).cloned());
        raw.and_then(|r| serde_json::from_str(&r).ok()).unwrap_or_default()
    }
}

/// One simulated node's image service.
pub struct SimulatedNodeImages {
    images: SimulatedImages,
    node: String,
}

impl ImageRuntime for SimulatedNodeImages {
    fn image_id(&self, reference: &str) -> BoxFuture<'_, Result<Option<String>, RuntimeError>> {
        let present = self.images.script(&self.node).present.iter().any(|p| p == reference)
            || self.images.state.lock().is_ok_and(|s| s.pulled.get(&self.node).is_some_and(|p| p.contains(reference)));
        let id = present.then(|| simulated_image_id(reference));
        Box::pin(async move { Ok(id) })
    }

    fn pull_image(&self, reference: &str, auth: Option<&RegistryAuth>) -> BoxFuture<'_, Result<String, RuntimeError>> {
        let script = self.images.script(&self.node);
        let refused = script.require_user.is_some_and(|u| auth.is_none_or(|a| a.username != u));
        let latency = script.latency_ms.map_or(self.images.pull_time, Duration::from_millis);
        let fail_first = script.failures.get(reference).or_else(|| script.failures.get("*")).copied().unwrap_or(0);
        let reference = reference.to_string();
        Box::pin(async move {
            tokio::time::sleep(latency).await;
            if refused {
                return Err(RuntimeError(format!("simulated registry refused {reference}: unauthorized")));
            }
            let mut s = self.images.state.lock().map_err(|_| RuntimeError("simulated images poisoned".into()))?;
            let attempt = s.attempts.entry((self.node.clone(), reference.clone())).or_default();
            *attempt += 1;
            if *attempt <= fail_first {
                return Err(RuntimeError(format!("simulated pull of {reference} failed (attempt {attempt})")));
            }
            s.pulled.entry(self.node.clone()).or_default().insert(reference.clone());
            Ok(simulated_image_id(&reference))
        })
    }
}

/// A stable fake digest for a reference.
fn simulated_image_id(reference: &str) -> String {
    use std::hash::{Hash, Hasher};
    let mut h = std::collections::hash_map::DefaultHasher::new();
    reference.hash(&mut h);
    format!("sha256:{:064x}", h.finish())
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn pod(annotations: serde_json::Value, restarts: i32, running: bool) -> Pod {
        let state = if running {
            json!({"running": {"startedAt": "2026-11-30T10:00:00Z"}})
        } else {
            json!({"terminated": {"exitCode": 1}})
        };
        serde_json::from_value(json!({
            "metadata": {"name": "p", "namespace": "ns", "uid": "u1", "annotations": annotations},
            "status": {"containerStatuses": [{"name": "main", "image": "x", "imageID": "", "ready": true,
                "restartCount": restarts, "state": state}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn containers_come_from_pod_status_and_execs_from_the_annotation() {
        let script = json!({"exitCode": 1, "stderr": "busy"}).to_string();
        let rt = SimulatedRuntime::with(&[pod(json!({"exec.sim.kruise.io/main": script}), 0, true)]);
        let c = rt.container("u1", "main").await.unwrap().unwrap();
        assert!(c.running);
        assert_eq!(c.started_at.map(|t| t.to_string()).as_deref(), Some("2026-11-30T10:00:00Z"));
        assert_eq!(rt.container("u1", "ghost").await.unwrap(), None);
        let out = rt.exec_sync(&c.id, &["x".into()], Duration::from_secs(1)).await.unwrap();
        assert_eq!(out, ExecOutcome::Exited { exit_code: 1, stdout: String::new(), stderr: "busy".into() });

        rt.containers.write().unwrap().put(&pod(json!({}), 1, false));
        let restarted = rt.container("u1", "main").await.unwrap().unwrap();
        assert_ne!(restarted.id, c.id, "a restart is a new container");
        assert!(!restarted.running);
        assert!(rt.exec_sync(&c.id, &[], Duration::from_secs(1)).await.is_err(), "the old container is gone");
        let ok = rt.exec_sync(&restarted.id, &[], Duration::from_secs(1)).await.unwrap();
        assert_eq!(ok, ExecOutcome::Exited { exit_code: 0, stdout: String::new(), stderr: String::new() });
    }

    #[tokio::test(start_paused = true)]
    async fn slow_execs_time_out() {
        let script = json!({"latencyMs": 5000}).to_string();
        let rt = SimulatedRuntime::with(&[pod(json!({"exec.sim.kruise.io/main": script}), 0, true)]);
        let c = rt.container("u1", "main").await.unwrap().unwrap();
        assert_eq!(rt.exec_sync(&c.id, &[], Duration::from_secs(1)).await.unwrap(), ExecOutcome::TimedOut);
    }

    #[tokio::test(start_paused = true)]
    async fn images_are_scripted_by_node_annotation() {
        use kube::runtime::reflector;
        use kube::runtime::watcher::Event;
        let (store, mut writer) = reflector::store::<k8s_openapi::api::core::v1::Node>();
        let script = json!({"latencyMs": 3000, "present": ["busybox:1"], "failures": {"nginx:1": 2}}).to_string();
        let node: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json!({"metadata": {"name": "n1", "annotations": {IMAGES_ANNOTATION: script}}}))
                .unwrap();
        writer.apply_watcher_event(&Event::Apply(node));
        let images = SimulatedImages::new(store, Duration::from_secs(1));
        let n1 = images.node("n1");
        assert!(n1.image_id("busybox:1").await.unwrap().is_some(), "present from the start");
        assert_eq!(n1.image_id("nginx:1").await.unwrap(), None);
        let start = tokio::time::Instant::now();
        let e = n1.pull_image("nginx:1", None).await.unwrap_err();
        assert_eq!(start.elapsed(), Duration::from_secs(3), "the script's latency");
        assert!(e.0.ends_with("(attempt 1)"), "{e}");
        assert!(n1.pull_image("nginx:1", None).await.is_err());
        let id = n1.pull_image("nginx:1", None).await.expect("the third attempt succeeds");
        assert_eq!(n1.image_id("nginx:1").await.unwrap(), Some(id), "pulled images stay");

        let robot = RegistryAuth { username: "robot".into(), ..Default::default() };
        let script = json!({"requireUser": "robot"}).to_string();
        let locked: k8s_openapi::api::core::v1::Node =
            serde_json::from_value(json!({"metadata": {"name": "n3", "annotations": {IMAGES_ANNOTATION: script}}}))
                .unwrap();
        writer.apply_watcher_event(&Event::Apply(locked));
        let n3 = images.node("n3");
        assert!(n3.pull_image("nginx:1", None).await.unwrap_err().0.contains("unauthorized"));
        assert!(n3.pull_image("nginx:1", Some(&RegistryAuth::default())).await.is_err());
        n3.pull_image("nginx:1", Some(&robot)).await.expect("the required user");

        let other = images.node("n2");
        let start = tokio::time::Instant::now();
        other.pull_image("nginx:1", None).await.expect("no script: every pull succeeds");
        assert_eq!(start.elapsed(), Duration::from_secs(1), "the process's pull time");
        assert_eq!(other.image_id("busybox:1").await.unwrap(), None, "nodes hold their own images");
    }
}
