//! ImagePullJob: pulls one image onto the nodes a job selects, a bounded number at a time, by
//! writing a tag into each target's NodeImage and reading the daemon's result back from its
//! status (spec part B.4.1). The decisions are pure functions over a snapshot:
//! - [`targets`]: which NodeImages a job is for, in order;
//! - [`progress`]: the job's status from its targets, and which targets to hand the image next;
//! - [`request`]: the edit that hands the image to one NodeImage.

pub mod controller;
pub mod progress;
pub mod request;
pub mod targets;

use k8s_openapi::api::core::v1::ObjectReference;

use crate::api::imagepulljob::ImagePullJob;

/// The reference a job leaves on the NodeImage tags it asked for.
pub fn owner_ref(job: &ImagePullJob) -> ObjectReference {
    ObjectReference {
        api_version: Some("apps.kruise.io/v1alpha1".into()),
        kind: Some("ImagePullJob".into()),
        name: job.metadata.name.clone(),
        namespace: job.metadata.namespace.clone(),
        uid: job.metadata.uid.clone(),
        ..Default::default()
    }
}

/// Whether `refs` hold `job`'s reference (by UID: a job recreated under the same name is another
/// job).
pub fn owned_by(refs: Option<&Vec<ObjectReference>>, job: &ImagePullJob) -> bool {
    let Some(uid) = job.metadata.uid.as_deref() else { return false };
    refs.into_iter().flatten().any(|r| r.uid.as_deref() == Some(uid) && r.kind.as_deref() == Some("ImagePullJob"))
}
