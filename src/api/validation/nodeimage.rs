//! NodeImage defaulting and validation (upstream v1.3 webhook rules).

use std::collections::HashSet;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

use super::imagepulljob::{DEFAULT_PULL_BACKOFF_LIMIT, DEFAULT_PULL_TIMEOUT_SECONDS};
use super::{ErrorList, FieldPath, duplicate, invalid, required, too_many};
use crate::api::nodeimage::{ImageTagPullPolicy, NodeImage};

/// Most images one NodeImage may list.
pub const MAX_IMAGES: usize = 256;

/// Sets `createdAt` (to `now`) and the pull policy defaults on tags that lack them, and sorts
/// tags, as the mutating webhook does.
pub fn default_nodeimage(ni: &mut NodeImage, now: Time) {
    for image in ni.spec.images.iter_mut().flat_map(|m| m.values_mut()) {
        for tag in &mut image.tags {
            tag.created_at.get_or_insert_with(|| now.clone());
            let p = tag.pull_policy.get_or_insert_with(ImageTagPullPolicy::default);
            p.timeout_seconds.get_or_insert(DEFAULT_PULL_TIMEOUT_SECONDS);
            p.backoff_limit.get_or_insert(DEFAULT_PULL_BACKOFF_LIMIT);
        }
        image.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    }
    for status in ni.status.iter_mut().flat_map(|s| s.image_statuses.iter_mut()).flat_map(|m| m.values_mut()) {
        status.tags.sort_by(|a, b| a.tag.cmp(&b.tag));
    }
}

pub fn validate_nodeimage(ni: &NodeImage) -> ErrorList {
    let images_path = FieldPath::new("spec").child("images");
    let mut errs = ErrorList::new();
    let images = ni.spec.images.as_ref();
    if images.is_some_and(|m| m.len() > MAX_IMAGES) {
        errs.push(too_many(&images_path, MAX_IMAGES));
    }
    for (name, image) in images.into_iter().flatten() {
        let ip = images_path.key(name);
        if name.is_empty() {
            errs.push(required(&ip, "image name can not be empty"));
        }
        let mut tags = HashSet::new();
        for (i, tag) in image.tags.iter().enumerate() {
            let tp = ip.child("tags").index(i);
            if tag.tag.is_empty() {
                errs.push(required(&tp.child("tag"), ""));
            } else if !tags.insert(tag.tag.as_str()) {
                errs.push(duplicate(&tp.child("tag"), &tag.tag));
            }
            if tag.created_at.is_none() {
                errs.push(required(&tp.child("createdAt"), ""));
            }
            if let Some(v) = tag.version
                && v < 0
            {
                errs.push(invalid(&tp.child("version"), v, "must be greater than or equal to 0"));
            }
            match &tag.pull_policy {
                None => errs.push(required(&tp.child("pullPolicy"), "")),
                Some(p) if p.ttl_seconds_after_finished.is_none() => {
                    errs.push(required(&tp.child("pullPolicy").child("ttlSecondsAfterFinished"), ""))
                }
                Some(_) => {}
            }
        }
    }
    errs
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::nodeimage::{ImageSpec, ImageTagSpec, NodeImageSpec};
    use k8s_openapi::jiff::Timestamp;
    use std::collections::BTreeMap;

    fn tag(t: &str) -> ImageTagSpec {
        ImageTagSpec {
            tag: t.into(),
            pull_policy: Some(ImageTagPullPolicy { ttl_seconds_after_finished: Some(600), ..Default::default() }),
            ..Default::default()
        }
    }

    fn node_image(tags: Vec<ImageTagSpec>) -> NodeImage {
        NodeImage::new(
            "node-1",
            NodeImageSpec {
                images: Some(BTreeMap::from([("nginx".to_string(), ImageSpec { pull_secrets: None, tags })])),
            },
        )
    }

    #[test]
    fn defaults_then_validates() {
        let mut ni = node_image(vec![tag("b"), tag("a")]);
        default_nodeimage(&mut ni, Time(Timestamp::UNIX_EPOCH));
        let tags = &ni.spec.images.as_ref().unwrap()["nginx"].tags;
        assert_eq!(tags.iter().map(|t| t.tag.as_str()).collect::<Vec<_>>(), ["a", "b"], "sorted");
        assert_eq!(tags[0].pull_policy.as_ref().unwrap().timeout_seconds, Some(600));
        assert_eq!(tags[0].pull_policy.as_ref().unwrap().backoff_limit, Some(3));
        assert!(validate_nodeimage(&ni).is_empty());
    }

    #[test]
    fn rejections() {
        let mut t = tag("a");
        t.version = Some(-1);
        let mut no_ttl = tag("b");
        no_ttl.pull_policy = Some(ImageTagPullPolicy::default());
        let ni = node_image(vec![t, tag("a"), tag(""), no_ttl]);
        let fields: Vec<String> = validate_nodeimage(&ni).into_iter().map(|e| e.field).collect();
        assert_eq!(
            fields,
            [
                "spec.images[nginx].tags[0].createdAt",
                "spec.images[nginx].tags[0].version",
                "spec.images[nginx].tags[1].tag",
                "spec.images[nginx].tags[1].createdAt",
                "spec.images[nginx].tags[2].tag",
                "spec.images[nginx].tags[2].createdAt",
                "spec.images[nginx].tags[3].createdAt",
                "spec.images[nginx].tags[3].pullPolicy.ttlSecondsAfterFinished",
            ]
        );
    }
}
