//! The ImagePullJob controller's Kubernetes glue: reconciles one job at a time on the replica
//! holding its namespace's shard, reading every NodeImage from [`NodeImageIndex`] (one
//! unsharded watch per replica: a job's targets are cluster-wide) and writing NodeImage specs and
//! its own status through the ApiWriter.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::Pod;
use kube::Client;
use kube::api::ApiResource;
use rand::Rng;
use serde_json::{Value, json};
use tracing::{debug, info};

use super::progress::progress;
use super::request::requested_spec;
use super::targets::target_names;
use crate::api::image::parse_image;
use crate::api::imagepulljob::ImagePullJob;
use crate::api::nodeimage::NodeImage;
use crate::controllers::pods::typed;
use crate::runtime::api_writer::{WriteError, WriteOp, WriteTarget, write};
use crate::runtime::namespace_actor::{Action, ReconcileError, Reconciler};
use crate::runtime::object_store::{ObjectStore, Trim};
use crate::runtime::ownership::ShardOwnership;
use crate::runtime::shard::ShardSpace;
use crate::runtime::watch_changes::{Change, Mirror, follow};
use crate::runtime::watch_hub::{WatchSpec, enqueue};

pub const CONTROLLER: &str = "imagepulljob-controller";

/// How soon a job looks again after a NodeImage changed under one of its writes.
const CONFLICT_RETRY: Duration = Duration::from_secs(1);

/// ImagePullJobs, one key each.
pub fn watch_spec(store: ObjectStore, controllers: Vec<&'static str>) -> WatchSpec {
    WatchSpec {
        controllers,
        url_path: "/apis/apps.kruise.io/v1alpha1/imagepulljobs".into(),
        label_selector: None,
        store,
        trim: Trim { drop: &[] },
        namespaced: true,
        per_namespace: false,
    }
}

/// Every NodeImage by name, as one watch per replica sees them.
pub type NodeImageIndex = Arc<Mirror<BTreeMap<String, NodeImage>>>;

/// How soon a reconcile that needs a mirror's first list looks again.
pub const UNTIL_LISTED: Duration = Duration::from_secs(1);

/// Whether a change of NodeImage `ni` (`old`: its previous version) may move `job`: a new or
/// deleted NodeImage, new labels, or the job's image in its spec or status.
fn concerns(job: &ImagePullJob, old: Option<&NodeImage>, ni: Option<&NodeImage>) -> bool {
    let Ok(image) = parse_image(&job.spec.image) else { return false };
    let (Some(old), Some(ni)) = (old, ni) else { return true };
    let mentions = |n: &NodeImage| {
        n.spec.images.as_ref().is_some_and(|m| m.contains_key(&image.name))
            || n.status.as_ref().and_then(|s| s.image_statuses.as_ref()).is_some_and(|m| m.contains_key(&image.name))
    };
    old.metadata.labels != ni.metadata.labels || mentions(old) || mentions(ni)
}

/// Follows every NodeImage into `index`; a change reconciles the held jobs it concerns, and the
/// NodeImage itself under `per_node_controller`.
pub fn watch_node_images(client: &Client, index: NodeImageIndex, jobs: ObjectStore, per_node_controller: &'static str) {
    use kube::runtime::watcher;
    let stream = watcher::watcher(kube::Api::<NodeImage>::all(client.clone()), watcher::Config::default());
    let name = |n: &NodeImage| n.metadata.name.clone().unwrap_or_default();
    tokio::spawn(follow(stream, "NodeImage", name, move |changes, listed| {
        let mut moved: Vec<(Option<NodeImage>, Option<NodeImage>)> = Vec::new();
        {
            let Ok(mut ix) = index.objects.write() else { return false };
            for change in changes {
                match change {
                    Change::Put(ni) => {
                        let old = ix.insert(name(&ni), ni.clone());
                        moved.push((old, Some(ni)));
                    }
                    Change::Gone(n) => moved.push((ix.remove(&n), None)),
                }
            }
        }
        if listed {
            index.mark_listed();
        }
        for (old, new) in &moved {
            if let Some(n) = new.as_ref().or(old.as_ref()).and_then(|n| n.metadata.name.as_deref()) {
                enqueue(per_node_controller, "", n);
            }
        }
        let held: Vec<ImagePullJob> = jobs.all().iter().filter_map(|o| typed(o)).collect();
        let mut keys = BTreeSet::new();
        for job in held.iter().filter(|j| j.status.as_ref().and_then(|s| s.completion_time.as_ref()).is_none()) {
            if moved.iter().any(|(old, new)| concerns(job, old.as_ref(), new.as_ref())) {
                let ns = job.metadata.namespace.clone().unwrap_or_default();
                keys.insert((ns, job.metadata.name.clone().unwrap_or_default()));
            }
        }
        for (ns, name) in keys {
            enqueue(CONTROLLER, &ns, &name);
        }
        true
    }));
}

pub struct ImagePullJobController {
    pub jobs: ObjectStore,
    pub pods: ObjectStore,
    pub node_images: NodeImageIndex,
    pub space: ShardSpace,
    pub ownership: ShardOwnership,
}

impl Reconciler for ImagePullJobController {
    fn name(&self) -> &'static str {
        CONTROLLER
    }

    fn reconcile(&self, namespace: &str, name: &str) -> BoxFuture<'static, Result<Action, ReconcileError>> {
        let shard = self.space.shard_of_key(namespace);
        let held = self.ownership.epoch(shard).is_some();
        if name.is_empty() {
            // A pod of the namespace changed: the jobs that target nodes by pods look again.
            let by_pods: Vec<String> = self
                .jobs
                .in_namespace(namespace)
                .iter()
                .filter_map(|o| typed::<ImagePullJob>(o))
                .filter(|j| j.spec.pod_selector.is_some())
                .filter_map(|j| j.metadata.name)
                .collect();
            let ns = namespace.to_string();
            return Box::pin(async move {
                by_pods.iter().filter(|_| held).for_each(|n| enqueue(CONTROLLER, &ns, n));
                Ok(Action::Done)
            });
        }
        let job: Option<ImagePullJob> = self.jobs.get(namespace, name).and_then(|o| typed(&o));
        let pods: Vec<Pod> = match &job {
            Some(j) if j.spec.pod_selector.is_some() => {
                self.pods.in_namespace(namespace).iter().filter_map(|o| typed(o)).collect()
            }
            _ => Vec::new(),
        };
        let index = self.node_images.clone();
        Box::pin(async move {
            let Some(job) = job.filter(|_| held) else { return Ok(Action::Done) };
            reconcile_job(job, &pods, &index, Timestamp::now()).await
        })
    }
}

/// The status as a merge patch: every field present, absent optional ones as null so a value
/// that went away is removed.
fn status_patch(status: &crate::api::imagepulljob::ImagePullJobStatus) -> Value {
    let mut v = serde_json::to_value(status).unwrap_or_else(|_| json!({}));
    if let Value::Object(m) = &mut v {
        for key in ["startTime", "completionTime", "message", "failedNodes"] {
            m.entry(key).or_insert(Value::Null);
        }
    }
    json!({ "status": v })
}

async fn reconcile_job(
    job: ImagePullJob,
    pods: &[Pod],
    index: &Mirror<BTreeMap<String, NodeImage>>,
    now: Timestamp,
) -> Result<Action, ReconcileError> {
    let ns = job.metadata.namespace.clone().unwrap_or_default();
    let name = job.metadata.name.clone().unwrap_or_default();
    if job.metadata.deletion_timestamp.is_some() {
        return Ok(Action::Done);
    }
    let job_target = |status: bool| WriteTarget {
        resource: ApiResource::erase::<ImagePullJob>(&()),
        namespace: Some(ns.clone()),
        name: name.clone(),
        status,
    };
    if let Some(done) = job.status.as_ref().and_then(|s| s.completion_time.as_ref()) {
        let Some(ttl) = job.spec.completion_policy.ttl_seconds_after_finished else { return Ok(Action::Done) };
        let left = done.0.as_second().saturating_add(i64::from(ttl)) - now.as_second();
        if left > 0 {
            return Ok(Action::RequeueAfter(crate::controllers::wait_seconds(left)));
        }
        info!(job = %format!("{ns}/{name}"), "deleting a finished job past its ttlSecondsAfterFinished");
        return match write(job_target(false), WriteOp::Delete).await {
            Ok(()) | Err(WriteError::Api { code: 404, .. }) => Ok(Action::Done),
            Err(e) => Err(ReconcileError::from_display(e)),
        };
    }
    let image = parse_image(&job.spec.image).map_err(ReconcileError::from_display)?;
    // Before the first list every job would look target-less, and an Always one would complete.
    if !index.is_listed() {
        return Ok(Action::RequeueAfter(UNTIL_LISTED));
    }
    let (plan, edits) = {
        let ix = index.objects.read().map_err(ReconcileError::from_display)?;
        let pod_refs: Vec<&Pod> = pods.iter().collect();
        let names = target_names(&job, &ix, &pod_refs);
        let targets: Vec<&NodeImage> = names.iter().filter_map(|n| ix.get(n)).collect();
        let plan = progress(&job, &image, &targets, now);
        let mut rng = rand::rng();
        let mut random = |n: i32| rng.random_range(0..n.max(1));
        let edits: Vec<(String, Option<String>, Value)> = plan
            .to_request
            .iter()
            .filter_map(|n| {
                let ni = ix.get(n)?;
                let spec = requested_spec(ni, &job, &image, now, &mut random)?;
                let entry = spec.images.as_ref()?.get(&image.name)?;
                Some((n.clone(), ni.metadata.resource_version.clone(), serde_json::to_value(entry).ok()?))
            })
            .collect();
        (plan, edits)
    };

    // The edits go out together: each is to its own NodeImage.
    let writes = edits.into_iter().map(|(node, version, entry)| {
        debug!(node = %node, "handing the image to the node");
        let target = WriteTarget {
            resource: ApiResource::erase::<NodeImage>(&()),
            namespace: None,
            name: node.clone(),
            status: false,
        };
        // Against the version read, so two jobs asking at once cannot lose one's tag.
        let patch =
            json!({ "metadata": { "resourceVersion": version }, "spec": { "images": { image.name.clone(): entry } } });
        async move { (node, write(target, WriteOp::MergePatch(patch)).await) }
    });
    let mut conflict = false;
    for (node, result) in futures::future::join_all(writes).await {
        match result {
            Ok(()) => {}
            Err(WriteError::Api { code: 409 | 404, .. }) => conflict = true,
            Err(e) => return Err(ReconcileError(format!("NodeImage {node}: {e}"))),
        }
    }

    if job.status.as_ref() != Some(&plan.status) {
        write(job_target(true), WriteOp::MergePatch(status_patch(&plan.status)))
            .await
            .map_err(ReconcileError::from_display)?;
    }
    let next = [conflict.then_some(CONFLICT_RETRY), plan.deadline_in].into_iter().flatten().min();
    Ok(next.map_or(Action::Done, Action::RequeueAfter))
}
