//! The NodeImages a job is for (B.4.1 step 4), in the order they are handed the image.

use std::collections::{BTreeMap, BTreeSet};

use k8s_openapi::api::core::v1::Pod;

use crate::api::imagepulljob::ImagePullJob;
use crate::api::nodeimage::NodeImage;
use crate::api::selector::matches;
use crate::controllers::pods::is_active;

/// The names of the job's target NodeImages, each once, among `node_images` (by name):
/// - `podSelector`: the nodes of the matching active, scheduled pods of the job's namespace
///   (`pods`), in pod-name order;
/// - `selector.names`: those, in the order given;
/// - a label selector: the NodeImages whose labels (the node's) match, by name;
/// - no selector: every NodeImage, by name.
///
/// Names without a NodeImage are skipped.
pub fn target_names(job: &ImagePullJob, node_images: &BTreeMap<String, NodeImage>, pods: &[&Pod]) -> Vec<String> {
    let known = |n: &String| node_images.contains_key(n);
    if let Some(ps) = &job.spec.pod_selector {
        let ns = job.metadata.namespace.as_deref();
        let mut matching: Vec<&&Pod> = pods
            .iter()
            .filter(|p| p.metadata.namespace.as_deref() == ns && is_active(p))
            .filter(|p| matches(&ps.selector, p.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .collect();
        matching.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
        let mut seen = BTreeSet::new();
        return matching
            .into_iter()
            .filter_map(|p| p.spec.as_ref()?.node_name.clone())
            .filter(|n| known(n) && seen.insert(n.clone()))
            .collect();
    }
    match &job.spec.selector {
        Some(sel) if sel.names.is_some() => {
            let mut seen = BTreeSet::new();
            sel.names.iter().flatten().filter(|n| known(n) && seen.insert((*n).clone())).cloned().collect()
        }
        Some(sel) => node_images
            .iter()
            .filter(|(_, ni)| matches(&sel.selector, ni.metadata.labels.as_ref().unwrap_or(&BTreeMap::new())))
            .map(|(n, _)| n.clone())
            .collect(),
        None => node_images.keys().cloned().collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn job(spec: serde_json::Value) -> ImagePullJob {
        let mut spec = spec;
        spec["image"] = json!("nginx:1.25");
        spec["completionPolicy"] = json!({});
        serde_json::from_value(json!({
            "apiVersion": "apps.kruise.io/v1alpha1", "kind": "ImagePullJob",
            "metadata": { "name": "j", "namespace": "ns", "uid": "u1" }, "spec": spec
        }))
        .unwrap()
    }

    fn node_images(labelled: &[(&str, &str)]) -> BTreeMap<String, NodeImage> {
        labelled
            .iter()
            .map(|(name, zone)| {
                let ni: NodeImage = serde_json::from_value(json!({
                    "apiVersion": "apps.kruise.io/v1alpha1", "kind": "NodeImage",
                    "metadata": { "name": name, "labels": { "zone": zone } }, "spec": {}
                }))
                .unwrap();
                (name.to_string(), ni)
            })
            .collect()
    }

    fn pod(name: &str, ns: &str, node: Option<&str>, app: &str, phase: &str) -> Pod {
        serde_json::from_value(json!({
            "metadata": { "name": name, "namespace": ns, "labels": { "app": app } },
            "spec": { "nodeName": node, "containers": [] },
            "status": { "phase": phase }
        }))
        .unwrap()
    }

    #[test]
    fn every_kind_of_selector() {
        let nis = node_images(&[("n1", "a"), ("n2", "b"), ("n3", "a")]);
        assert_eq!(target_names(&job(json!({})), &nis, &[]), ["n1", "n2", "n3"], "no selector: all");
        let names = job(json!({ "selector": { "names": ["n3", "gone", "n1", "n3"] } }));
        assert_eq!(target_names(&names, &nis, &[]), ["n3", "n1"], "in the given order, missing skipped, once each");
        let labels = job(json!({ "selector": { "matchLabels": { "zone": "a" } } }));
        assert_eq!(target_names(&labels, &nis, &[]), ["n1", "n3"]);

        let pods = [
            pod("web-2", "ns", Some("n2"), "web", "Running"),
            pod("web-1", "ns", Some("n3"), "web", "Running"),
            pod("web-3", "ns", Some("n3"), "web", "Pending"),
            pod("web-4", "ns", None, "web", "Pending"),
            pod("web-5", "ns", Some("n1"), "web", "Succeeded"),
            pod("web-6", "other", Some("n1"), "web", "Running"),
            pod("db-1", "ns", Some("n1"), "db", "Running"),
            pod("web-7", "ns", Some("gone"), "web", "Running"),
        ];
        let refs: Vec<&Pod> = pods.iter().collect();
        let by_pods = job(json!({ "podSelector": { "matchLabels": { "app": "web" } } }));
        assert_eq!(
            target_names(&by_pods, &nis, &refs),
            ["n3", "n2"],
            "nodes of active scheduled matching pods of the job's namespace, once each"
        );
    }
}
