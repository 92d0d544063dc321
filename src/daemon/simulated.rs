//! The simulated container runtime: containers are what the pods' statuses say (kwok writes
//! them), and an exec's outcome is what the pod's annotation `exec.sim.kruise.io/<container>`
//! says, so a test or a load test drives probes by annotating pods. One process serves any
//! number of kwok nodes with it.
//!
//! The annotation holds JSON `{"exitCode": 0, "stdout": "", "stderr": "", "latencyMs": 0}` (all
//! optional); without it every exec succeeds at once with empty output. An exec slower than its
//! timeout times out.

use std::collections::HashMap;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::future::BoxFuture;
use k8s_openapi::api::core::v1::Pod;
use kube::{Api, Client};
use serde::Deserialize;

use super::runtime::{ContainerInfo, ContainerRuntime, ExecOutcome, RuntimeError};
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
}
