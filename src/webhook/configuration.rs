//! The webhook configurations kruise-manager serves, as upstream's chart declares them (names,
//! paths, rules, failure policy, timeouts), for the kinds kruise-rs implements. The chart and the
//! tests install these objects; every replica then keeps their `caBundle` (and, out of cluster,
//! their URLs) current.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use k8s_openapi::api::admissionregistration::v1::{
    MutatingWebhook, MutatingWebhookConfiguration, RuleWithOperations, ServiceReference, ValidatingWebhook,
    ValidatingWebhookConfiguration, WebhookClientConfig,
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{LabelSelector, LabelSelectorRequirement, ObjectMeta};

pub const MUTATING_CONFIGURATION: &str = "kruise-mutating-webhook-configuration";
pub const VALIDATING_CONFIGURATION: &str = "kruise-validating-webhook-configuration";
/// Annotation holding the webhook entries as installed, from which every sync starts.
pub const TEMPLATE_ANNOTATION: &str = "template";
/// The placeholder caBundle the chart ships (a newline), replaced at the first sync.
pub const PLACEHOLDER_CA_BUNDLE: &[u8] = b"\n";

/// One apps.kruise.io/v1alpha1 kind's webhooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KindWebhooks {
    /// Lower-case kind, as in the webhook names (`mcloneset.kb.io`).
    pub kind: &'static str,
    pub plural: &'static str,
    /// Whether a defaulting (mutating) webhook exists.
    pub mutating: bool,
    /// Operations the validating webhook sees.
    pub validating_operations: &'static [&'static str],
    /// Upstream's validating path, which is not uniform across kinds.
    pub validating_path: &'static str,
    /// Upstream gives some validating webhooks no timeout (the API server's default applies).
    pub validating_timeout: Option<i32>,
}

const CREATE_UPDATE: &[&str] = &["CREATE", "UPDATE"];
const CREATE_UPDATE_DELETE: &[&str] = &["CREATE", "UPDATE", "DELETE"];

/// The kinds with webhooks, upstream's entries for each.
pub const KINDS: &[KindWebhooks] = &[
    KindWebhooks {
        kind: "advancedcronjob",
        plural: "advancedcronjobs",
        mutating: true,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-advancedcronjob",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "broadcastjob",
        plural: "broadcastjobs",
        mutating: true,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-broadcastjob",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "cloneset",
        plural: "clonesets",
        mutating: true,
        validating_operations: CREATE_UPDATE_DELETE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-cloneset",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "daemonset",
        plural: "daemonsets",
        mutating: true,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-daemonset",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "imagepulljob",
        plural: "imagepulljobs",
        mutating: true,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-imagepulljob",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "nodeimage",
        plural: "nodeimages",
        mutating: true,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-nodeimage",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "sidecarset",
        plural: "sidecarsets",
        mutating: true,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-sidecarset",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "workloadspread",
        plural: "workloadspreads",
        mutating: false,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-v1alpha1-workloadspread",
        validating_timeout: Some(30),
    },
    KindWebhooks {
        kind: "podprobemarker",
        plural: "podprobemarkers",
        mutating: false,
        validating_operations: CREATE_UPDATE,
        validating_path: "/validate-apps-kruise-io-podprobemarker",
        validating_timeout: None,
    },
];

impl KindWebhooks {
    pub fn mutating_path(&self) -> Option<String> {
        self.mutating.then(|| format!("/mutate-apps-kruise-io-v1alpha1-{}", self.kind))
    }

    pub fn by_plural(plural: &str) -> Option<&'static KindWebhooks> {
        KINDS.iter().find(|k| k.plural == plural)
    }
}

fn rule(plural: &str, operations: &[&str]) -> RuleWithOperations {
    RuleWithOperations {
        api_groups: Some(vec!["apps.kruise.io".into()]),
        api_versions: Some(vec!["v1alpha1".into()]),
        operations: Some(operations.iter().map(|o| o.to_string()).collect()),
        resources: Some(vec![plural.into()]),
        scope: None,
    }
}

fn client_config(namespace: &str, service: &str, path: &str) -> WebhookClientConfig {
    WebhookClientConfig {
        ca_bundle: Some(ByteString(PLACEHOLDER_CA_BUNDLE.to_vec())),
        service: Some(ServiceReference {
            namespace: namespace.into(),
            name: service.into(),
            path: Some(path.into()),
            port: Some(443),
        }),
        url: None,
    }
}

fn meta(name: &str) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        // Empty: the first sync records the installed entries here (as upstream's chart does).
        annotations: Some(BTreeMap::from([(TEMPLATE_ANNOTATION.to_string(), String::new())])),
        ..Default::default()
    }
}

/// The pod mutating webhook (sidecar injection).
pub const MUTATE_POD_PATH: &str = "/mutate-pod";
/// Namespaces labelled with this key (the Kruise namespace) never reach the pod webhooks, so
/// Kruise itself can always start.
pub const CONTROL_PLANE_LABEL: &str = "control-plane";

/// The pod entry: pods CREATE, failure policy `Ignore` (the chart's default for pods).
fn pod_webhook(namespace: &str, service: &str) -> MutatingWebhook {
    MutatingWebhook {
        name: "mpod.kb.io".into(),
        client_config: client_config(namespace, service, MUTATE_POD_PATH),
        rules: Some(vec![RuleWithOperations {
            api_groups: Some(vec![String::new()]),
            api_versions: Some(vec!["v1".into()]),
            operations: Some(vec!["CREATE".into()]),
            resources: Some(vec!["pods".into()]),
            scope: None,
        }]),
        namespace_selector: Some(LabelSelector {
            match_expressions: Some(vec![LabelSelectorRequirement {
                key: CONTROL_PLANE_LABEL.into(),
                operator: "DoesNotExist".into(),
                values: None,
            }]),
            match_labels: None,
        }),
        failure_policy: Some("Ignore".into()),
        side_effects: "None".into(),
        admission_review_versions: vec!["v1".into(), "v1beta1".into()],
        timeout_seconds: Some(30),
        ..Default::default()
    }
}

/// The two configurations as the chart installs them, pointing at `service` in `namespace`.
pub fn configurations(
    namespace: &str,
    service: &str,
) -> (MutatingWebhookConfiguration, ValidatingWebhookConfiguration) {
    let versions = || Some(vec!["v1".to_string(), "v1beta1".to_string()]);
    let kinds = KINDS
        .iter()
        .filter_map(|k| {
            Some(MutatingWebhook {
                name: format!("m{}.kb.io", k.kind),
                client_config: client_config(namespace, service, &k.mutating_path()?),
                rules: Some(vec![rule(k.plural, CREATE_UPDATE)]),
                failure_policy: Some("Fail".into()),
                side_effects: "None".into(),
                admission_review_versions: versions().unwrap_or_default(),
                timeout_seconds: Some(30),
                ..Default::default()
            })
        })
        .collect::<Vec<_>>();
    let mutating = std::iter::once(pod_webhook(namespace, service)).chain(kinds).collect();
    let validating = KINDS
        .iter()
        .map(|k| ValidatingWebhook {
            name: format!("v{}.kb.io", k.kind),
            client_config: client_config(namespace, service, k.validating_path),
            rules: Some(vec![rule(k.plural, k.validating_operations)]),
            failure_policy: Some("Fail".into()),
            side_effects: "None".into(),
            admission_review_versions: versions().unwrap_or_default(),
            timeout_seconds: k.validating_timeout,
            ..Default::default()
        })
        .collect();
    (
        MutatingWebhookConfiguration { metadata: meta(MUTATING_CONFIGURATION), webhooks: Some(mutating) },
        ValidatingWebhookConfiguration { metadata: meta(VALIDATING_CONFIGURATION), webhooks: Some(validating) },
    )
}

/// Where the API server should send a webhook's requests: the Service as installed, or, out of
/// cluster (`WEBHOOK_HOST`), `https://<host>:<port><path>`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Endpoint {
    Service { namespace: String, name: String },
    Url { host: String, port: u16 },
}

/// Rewrites one installed entry's client config for this deployment: the CA, the endpoint, and
/// `None` when no handler serves its path (upstream drops such entries).
pub fn current_client_config(
    installed: &WebhookClientConfig,
    ca_pem: &[u8],
    endpoint: &Endpoint,
    served: impl Fn(&str) -> bool,
) -> Option<WebhookClientConfig> {
    let path = match (&installed.service, &installed.url) {
        (Some(s), _) => s.path.clone().unwrap_or_default(),
        (None, Some(url)) => url_path(url),
        (None, None) => return None,
    };
    if !served(&path) {
        return None;
    }
    let ca_bundle = Some(ByteString(ca_pem.to_vec()));
    Some(match endpoint {
        Endpoint::Service { namespace, name } => WebhookClientConfig {
            ca_bundle,
            service: Some(ServiceReference {
                namespace: namespace.clone(),
                name: name.clone(),
                path: Some(path),
                port: installed.service.as_ref().and_then(|s| s.port).or(Some(443)),
            }),
            url: None,
        },
        Endpoint::Url { host, port } => {
            WebhookClientConfig { ca_bundle, service: None, url: Some(format!("https://{host}:{port}{path}")) }
        }
    })
}

/// The path of an `https://host:port/path` URL.
fn url_path(url: &str) -> String {
    let rest = url.split_once("://").map(|(_, r)| r).unwrap_or(url);
    rest.find('/').map(|i| rest[i..].to_string()).unwrap_or_default()
}

/// Where the chart keeps the webhook configurations, relative to the repository root.
pub const CHART_WEBHOOKS_TEMPLATE: &str = "deploy/helm/kruise/templates/webhook-configurations.yaml";

/// The chart's template of the two configurations: [`configurations`] with the namespace, the pod
/// entry's failure policy and the timeouts taken from the values, and the pod entry rendered only
/// unless `featureGates` turns `PodWebhook` off (as upstream's chart). Generated, so the chart
/// and the code never disagree (`kruise-manager chart-webhooks` rewrites it; a test compares).
pub fn chart_template() -> Result<String, serde_norway::Error> {
    const NS: &str = "__KRUISE_NAMESPACE__";
    let (mutating, validating) = configurations(NS, "kruise-webhook-service");
    let values = |yaml: String| {
        yaml.replace(NS, "{{ .Values.installation.namespace }}")
            .replace("timeoutSeconds: 30", "timeoutSeconds: {{ .Values.webhookConfiguration.timeoutSeconds }}")
    };
    let entries = |list: String| values(list).lines().map(|l| format!("{l}\n")).collect::<String>();
    let header = |kind: &str, name: &str| {
        format!(
            "apiVersion: admissionregistration.k8s.io/v1\nkind: {kind}\nmetadata:\n  name: {name}\n  annotations:\n    {TEMPLATE_ANNOTATION}: \"\"\nwebhooks:\n"
        )
    };
    let mut webhooks = mutating.webhooks.unwrap_or_default();
    let pod = webhooks.iter().position(|w| w.name == "mpod.kb.io").map(|i| webhooks.remove(i));
    let mut out = String::from("# Generated by `kruise-manager chart-webhooks` from src/webhook/configuration.rs.\n");
    out += &header("MutatingWebhookConfiguration", MUTATING_CONFIGURATION);
    if let Some(pod) = pod {
        out += "{{- if not (contains \"PodWebhook=false\" .Values.featureGates) }}\n";
        out += &entries(serde_norway::to_string(&[pod])?)
            .replace("failurePolicy: Ignore", "failurePolicy: {{ .Values.webhookConfiguration.failurePolicy.pods }}");
        out += "{{- end }}\n";
    }
    out += &entries(serde_norway::to_string(&webhooks)?);
    out += "---\n";
    out += &header("ValidatingWebhookConfiguration", VALIDATING_CONFIGURATION);
    out += &entries(serde_norway::to_string(&validating.webhooks.unwrap_or_default())?);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_configurations_follow_upstreams_chart() {
        let (m, v) = configurations("kruise-system", "kruise-webhook-service");
        let m = m.webhooks.unwrap();
        let v = v.webhooks.unwrap();
        let cloneset = m.iter().find(|w| w.name == "mcloneset.kb.io").expect("mcloneset");
        let svc = cloneset.client_config.service.as_ref().unwrap();
        assert_eq!(svc.path.as_deref(), Some("/mutate-apps-kruise-io-v1alpha1-cloneset"));
        assert_eq!((svc.name.as_str(), svc.port), ("kruise-webhook-service", Some(443)));
        assert_eq!(cloneset.failure_policy.as_deref(), Some("Fail"));
        assert_eq!(cloneset.admission_review_versions, vec!["v1", "v1beta1"]);
        assert!(!m.iter().any(|w| w.name == "mworkloadspread.kb.io"), "no defaulting webhook upstream");
        let vcs = v.iter().find(|w| w.name == "vcloneset.kb.io").unwrap();
        assert_eq!(vcs.rules.as_ref().unwrap()[0].operations.as_ref().unwrap(), &["CREATE", "UPDATE", "DELETE"]);
        let ppm = v.iter().find(|w| w.name == "vpodprobemarker.kb.io").unwrap();
        assert_eq!(ppm.timeout_seconds, None);
        assert_eq!(
            ppm.client_config.service.as_ref().unwrap().path.as_deref(),
            Some("/validate-apps-kruise-io-podprobemarker")
        );
    }

    #[test]
    fn client_configs_get_the_ca_and_endpoint_and_unserved_paths_are_dropped() {
        let (_, v) = configurations("kruise-system", "kruise-webhook-service");
        let installed = &v.webhooks.unwrap()[0].client_config;
        let svc = Endpoint::Service { namespace: "other-ns".into(), name: "svc".into() };
        let c = current_client_config(installed, b"CA", &svc, |_| true).unwrap();
        assert_eq!(c.ca_bundle, Some(ByteString(b"CA".to_vec())));
        assert_eq!(c.service.as_ref().map(|s| s.namespace.as_str()), Some("other-ns"));
        let url = Endpoint::Url { host: "127.0.0.1".into(), port: 9876 };
        let c = current_client_config(installed, b"CA", &url, |_| true).unwrap();
        assert_eq!(c.url.as_deref(), Some("https://127.0.0.1:9876/validate-apps-kruise-io-v1alpha1-advancedcronjob"));
        assert!(c.service.is_none());
        // A URL entry keeps its path when re-pointed.
        let again = current_client_config(&c, b"CA", &url, |_| true).unwrap();
        assert_eq!(again, c);
        assert!(current_client_config(installed, b"CA", &svc, |_| false).is_none());
    }

    #[test]
    fn the_chart_template_is_generated_from_the_configurations() {
        let path = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(CHART_WEBHOOKS_TEMPLATE);
        let checked_in = std::fs::read_to_string(&path).unwrap_or_default();
        assert!(
            checked_in == chart_template().unwrap(),
            "{} is stale: run `cargo run --bin kruise-manager -- chart-webhooks`",
            CHART_WEBHOOKS_TEMPLATE
        );
    }
}
