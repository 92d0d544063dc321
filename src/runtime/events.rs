//! Kubernetes Events, written through the ApiWriter (best effort: an Event that cannot be
//! written is logged at debug and dropped, never retried at the cost of real work).

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Event, ObjectReference};
use kube::api::ApiResource;
use serde_json::json;
use tracing::debug;

use super::api_writer::{WriteOp, WriteTarget, write};

/// Who reports an Event: the component, and the node or replica it runs as.
#[derive(Debug, Clone)]
pub struct Reporter {
    pub component: &'static str,
    pub instance: String,
}

/// Writes one Event about `object` (`type_`: Normal or Warning). Cluster-scoped objects get
/// theirs in namespace `default`, as kubectl looks for them there.
pub async fn emit(reporter: &Reporter, object: &ObjectReference, type_: &str, reason: &str, message: &str) {
    let now = Timestamp::now();
    let namespace = object.namespace.clone().filter(|n| !n.is_empty()).unwrap_or_else(|| "default".into());
    let name = format!("{}.{:x}", object.name.as_deref().unwrap_or("object"), now.as_nanosecond());
    let event = json!({
        "apiVersion": "v1", "kind": "Event",
        "metadata": { "name": name, "namespace": namespace },
        "involvedObject": object,
        "reason": reason,
        "message": message,
        "type": type_,
        "source": { "component": reporter.component, "host": reporter.instance },
        "reportingComponent": reporter.component,
        "reportingInstance": reporter.instance,
        "firstTimestamp": now.to_string(),
        "lastTimestamp": now.to_string(),
        "count": 1,
    });
    let target =
        WriteTarget { resource: ApiResource::erase::<Event>(&()), namespace: Some(namespace), name, status: false };
    if let Err(e) = write(target, WriteOp::Create(event)).await {
        debug!(reason, error = %e, "event not written");
    }
}
