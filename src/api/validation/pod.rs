//! Kubernetes' standard pod defaults, and the core/v1 Pod validation rules that catch most
//! mistakes, for embedded pod templates and a SidecarSet's synthetic pod: containers (names,
//! images, ports, env names, volume mounts), volumes (names, exactly one source) and the
//! enumerated pod fields. The API server validates every real pod in full when it is created;
//! these checks move the common errors to the moment the workload is written. Defaults matter
//! beyond validation: they are part of a template's revision hash.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{
    Container, NodeSelectorRequirement, NodeSelectorTerm, PodSecurityContext, PodSpec, Probe, Volume,
};

use super::{ErrorList, FieldPath, duplicate, invalid, is_dns1123_subdomain, not_supported, required};

/// Secret, ConfigMap, DownwardAPI and projected volumes' file mode when unset (0644).
const DEFAULT_FILE_MODE: i32 = 0o644;

/// `SetDefaults_PodSpec` and the defaults of everything inside it, as the API server applies them
/// to a pod template.
pub fn default_pod_spec(ps: &mut PodSpec) {
    ps.dns_policy.get_or_insert_with(|| "ClusterFirst".into());
    ps.restart_policy.get_or_insert_with(|| "Always".into());
    ps.termination_grace_period_seconds.get_or_insert(30);
    ps.security_context.get_or_insert_with(PodSecurityContext::default);
    ps.scheduler_name.get_or_insert_with(|| "default-scheduler".into());
    ps.enable_service_links.get_or_insert(true);
    let host_network = ps.host_network == Some(true);
    for c in ps.init_containers.iter_mut().flatten().chain(ps.containers.iter_mut()) {
        default_container(c);
        if host_network {
            for p in c.ports.iter_mut().flatten() {
                p.host_port.get_or_insert(p.container_port);
            }
        }
    }
    for v in ps.volumes.iter_mut().flatten() {
        default_volume(v);
    }
}

/// `SetDefaults_Container` and its ports, probes and env.
pub fn default_container(c: &mut Container) {
    c.termination_message_path.get_or_insert_with(|| "/dev/termination-log".into());
    c.termination_message_policy.get_or_insert_with(|| "File".into());
    if c.image_pull_policy.is_none() {
        let tag = c.image.as_deref().and_then(|i| crate::api::image::parse_image(i).ok()).map(|r| r.tag);
        let latest = tag.as_deref().is_none_or(|t| t == "latest");
        c.image_pull_policy = Some(if latest { "Always" } else { "IfNotPresent" }.into());
    }
    for p in c.ports.iter_mut().flatten() {
        p.protocol.get_or_insert_with(|| "TCP".into());
    }
    for probe in [&mut c.liveness_probe, &mut c.readiness_probe, &mut c.startup_probe].into_iter().flatten() {
        default_probe(probe);
    }
    for e in c.env.iter_mut().flatten() {
        if let Some(f) = e.value_from.as_mut().and_then(|v| v.field_ref.as_mut()) {
            f.api_version.get_or_insert_with(|| "v1".into());
        }
    }
}

fn default_probe(p: &mut Probe) {
    p.timeout_seconds.get_or_insert(1);
    p.period_seconds.get_or_insert(10);
    p.success_threshold.get_or_insert(1);
    p.failure_threshold.get_or_insert(3);
    if let Some(h) = p.http_get.as_mut() {
        h.path.get_or_insert_with(|| "/".into());
        h.scheme.get_or_insert_with(|| "HTTP".into());
    }
}

fn default_volume(v: &mut Volume) {
    if let Some(s) = v.secret.as_mut() {
        s.default_mode.get_or_insert(DEFAULT_FILE_MODE);
    }
    if let Some(c) = v.config_map.as_mut() {
        c.default_mode.get_or_insert(DEFAULT_FILE_MODE);
    }
    if let Some(d) = v.downward_api.as_mut() {
        d.default_mode.get_or_insert(DEFAULT_FILE_MODE);
        for f in d.items.iter_mut().flatten() {
            if let Some(r) = f.field_ref.as_mut() {
                r.api_version.get_or_insert_with(|| "v1".into());
            }
        }
    }
    if let Some(p) = v.projected.as_mut() {
        p.default_mode.get_or_insert(DEFAULT_FILE_MODE);
    }
    if let Some(h) = v.host_path.as_mut() {
        h.type_.get_or_insert_with(String::new);
    }
}

pub fn is_dns1123_label(s: &str) -> bool {
    !s.is_empty() && s.len() <= 63 && !s.contains('.') && is_dns1123_subdomain(s)
}

/// An IANA service name, as container port names must be: at most 15 lower-case alphanumerics
/// and dashes, at least one letter, no leading, trailing or double dash.
fn is_port_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 15
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && s.chars().any(|c| c.is_ascii_lowercase())
        && !s.starts_with('-')
        && !s.ends_with('-')
        && !s.contains("--")
}

/// An environment variable name: letters, digits, `_`, `-` and `.`, not starting with a digit.
fn is_env_var_name(s: &str) -> bool {
    !s.is_empty()
        && !s.starts_with(|c: char| c.is_ascii_digit())
        && s.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '-' | '.'))
}

/// Volume names a pod's containers may mount: the pod's volumes plus any the workload adds (a
/// CloneSet's volumeClaimTemplates).
pub fn validate_pod_spec(ps: &PodSpec, path: &FieldPath, extra_volumes: &[&str]) -> ErrorList {
    let mut errs = ErrorList::new();
    let volumes = ps.volumes.as_deref().unwrap_or_default();
    errs.extend(validate_volumes(volumes, &path.child("volumes")));
    let mut mountable: HashSet<&str> = volumes.iter().map(|v| v.name.as_str()).collect();
    mountable.extend(extra_volumes.iter().copied());

    if ps.containers.is_empty() {
        errs.push(required(&path.child("containers"), ""));
    }
    let mut names = HashSet::new();
    let init = ps.init_containers.iter().flatten().enumerate().map(|(i, c)| (path.child("initContainers").index(i), c));
    let main = ps.containers.iter().enumerate().map(|(i, c)| (path.child("containers").index(i), c));
    for (cp, c) in init.chain(main) {
        errs.extend(validate_container(c, &cp, &mountable, &mut names));
    }

    if let Some(rp) = ps.restart_policy.as_deref()
        && !matches!(rp, "Always" | "OnFailure" | "Never")
    {
        errs.push(not_supported(&path.child("restartPolicy"), rp, &["Always", "OnFailure", "Never"]));
    }
    if let Some(dp) = ps.dns_policy.as_deref()
        && !matches!(dp, "ClusterFirstWithHostNet" | "ClusterFirst" | "Default" | "None")
    {
        errs.push(not_supported(
            &path.child("dnsPolicy"),
            dp,
            &["ClusterFirstWithHostNet", "ClusterFirst", "Default", "None"],
        ));
    }
    errs
}

/// One container. `names` collects container names across the pod to find duplicates.
pub fn validate_container(
    c: &Container,
    path: &FieldPath,
    mountable: &HashSet<&str>,
    names: &mut HashSet<String>,
) -> ErrorList {
    let mut errs = ErrorList::new();
    if c.name.is_empty() {
        errs.push(required(&path.child("name"), ""));
    } else if !is_dns1123_label(&c.name) {
        errs.push(invalid(&path.child("name"), &c.name, "must be a lowercase RFC 1123 label"));
    } else if !names.insert(c.name.clone()) {
        errs.push(duplicate(&path.child("name"), &c.name));
    }
    if c.image.as_deref().unwrap_or_default().trim().is_empty() {
        errs.push(required(&path.child("image"), ""));
    }
    if let Some(p) = c.image_pull_policy.as_deref()
        && !matches!(p, "Always" | "IfNotPresent" | "Never")
    {
        errs.push(not_supported(&path.child("imagePullPolicy"), p, &["Always", "IfNotPresent", "Never"]));
    }

    let mut port_names = HashSet::new();
    for (i, port) in c.ports.iter().flatten().enumerate() {
        let pp = path.child("ports").index(i);
        if !(1..=65535).contains(&port.container_port) {
            errs.push(invalid(
                &pp.child("containerPort"),
                port.container_port,
                "must be between 1 and 65535, inclusive",
            ));
        }
        if let Some(hp) = port.host_port
            && !(0..=65535).contains(&hp)
        {
            errs.push(invalid(&pp.child("hostPort"), hp, "must be between 0 and 65535, inclusive"));
        }
        if let Some(proto) = port.protocol.as_deref()
            && !matches!(proto, "TCP" | "UDP" | "SCTP")
        {
            errs.push(not_supported(&pp.child("protocol"), proto, &["SCTP", "TCP", "UDP"]));
        }
        if let Some(name) = port.name.as_deref() {
            if !is_port_name(name) {
                errs.push(invalid(
                    &pp.child("name"),
                    name,
                    "must be an IANA_SVC_NAME (at most 15 characters, a-z, 0-9 and '-')",
                ));
            } else if !port_names.insert(name) {
                errs.push(duplicate(&pp.child("name"), name));
            }
        }
    }

    for (i, e) in c.env.iter().flatten().enumerate() {
        if !is_env_var_name(&e.name) {
            errs.push(invalid(
                &path.child("env").index(i).child("name"),
                &e.name,
                "a valid environment variable name must consist of alphabetic characters, digits, '_', '-', or '.', and must not start with a digit",
            ));
        }
    }

    let mut mount_paths = HashSet::new();
    for (i, m) in c.volume_mounts.iter().flatten().enumerate() {
        let mp = path.child("volumeMounts").index(i);
        if m.name.is_empty() {
            errs.push(required(&mp.child("name"), ""));
        } else if !mountable.contains(m.name.as_str()) {
            errs.push(not_found(&mp.child("name"), &m.name));
        }
        if m.mount_path.is_empty() {
            errs.push(required(&mp.child("mountPath"), ""));
        } else if !mount_paths.insert(m.mount_path.as_str()) {
            errs.push(invalid(&mp.child("mountPath"), &m.mount_path, "must be unique"));
        }
    }
    errs
}

fn not_found(path: &FieldPath, value: &str) -> super::FieldError {
    invalid(path, value, "not found: no volume of this name in the pod")
}

/// Volume names unique DNS-1123 labels, each volume with exactly one source.
pub fn validate_volumes(volumes: &[Volume], path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    let mut names = HashSet::new();
    for (i, v) in volumes.iter().enumerate() {
        let vp = path.index(i);
        if v.name.is_empty() {
            errs.push(required(&vp.child("name"), ""));
        } else if !is_dns1123_label(&v.name) {
            errs.push(invalid(&vp.child("name"), &v.name, "must be a lowercase RFC 1123 label"));
        } else if !names.insert(v.name.as_str()) {
            errs.push(duplicate(&vp.child("name"), &v.name));
        }
        // Every key but `name` is a volume source.
        let sources =
            serde_json::to_value(v).ok().and_then(|j| j.as_object().map(|o| o.keys().filter(|k| *k != "name").count()));
        match sources {
            Some(0) => errs.push(required(&vp, "must specify a volume type")),
            Some(1) | None => {}
            Some(_) => errs.push(super::forbidden(&vp, "may not specify more than 1 volume type")),
        }
    }
    errs
}

/// A node selector term as node affinity takes it.
pub fn validate_node_selector_term(term: &NodeSelectorTerm, path: &FieldPath) -> ErrorList {
    let mut errs = ErrorList::new();
    for (i, r) in term.match_expressions.iter().flatten().enumerate() {
        let rp = path.child("matchExpressions").index(i);
        errs.extend(
            super::qualified_name_errors(&r.key).iter().map(|reason| invalid(&rp.child("key"), &r.key, reason)),
        );
        errs.extend(validate_node_selector_requirement(r, &rp));
    }
    for (i, r) in term.match_fields.iter().flatten().enumerate() {
        let rp = path.child("matchFields").index(i);
        if r.key != "metadata.name" {
            errs.push(not_supported(&rp.child("key"), &r.key, &["metadata.name"]));
        }
        if !matches!(r.operator.as_str(), "In" | "NotIn") {
            errs.push(not_supported(&rp.child("operator"), &r.operator, &["In", "NotIn"]));
        } else if r.values.as_ref().is_none_or(|v| v.len() != 1) {
            errs.push(required(
                &rp.child("values"),
                "must be only one value when `operator` is 'In' or 'NotIn' for node field selector",
            ));
        }
    }
    errs
}

fn validate_node_selector_requirement(r: &NodeSelectorRequirement, rp: &FieldPath) -> ErrorList {
    let values = r.values.as_deref().unwrap_or_default();
    match r.operator.as_str() {
        "In" | "NotIn" if values.is_empty() => {
            vec![required(&rp.child("values"), "must be specified when `operator` is 'In' or 'NotIn'")]
        }
        "Exists" | "DoesNotExist" if !values.is_empty() => {
            vec![super::forbidden(
                &rp.child("values"),
                "may not be specified when `operator` is 'Exists' or 'DoesNotExist'",
            )]
        }
        "Gt" | "Lt" if values.len() != 1 || values[0].parse::<i64>().is_err() => {
            vec![required(&rp.child("values"), "must be specified single value when `operator` is 'Lt' or 'Gt'")]
        }
        "In" | "NotIn" | "Exists" | "DoesNotExist" | "Gt" | "Lt" => vec![],
        other => {
            vec![not_supported(&rp.child("operator"), other, &["DoesNotExist", "Exists", "Gt", "In", "Lt", "NotIn"])]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::{ContainerPort, EmptyDirVolumeSource, EnvVar, HostPathVolumeSource, VolumeMount};

    fn c(name: &str) -> Container {
        Container { name: name.into(), image: Some("x:1".into()), ..Default::default() }
    }

    fn fields(ps: &PodSpec) -> Vec<String> {
        validate_pod_spec(ps, &FieldPath::new("spec"), &[]).into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn a_plain_pod_passes() {
        assert!(fields(&PodSpec { containers: vec![c("web")], ..Default::default() }).is_empty());
        assert_eq!(fields(&PodSpec::default()), ["spec.containers"]);
    }

    #[test]
    fn containers() {
        let mut bad = c("web");
        bad.ports = Some(vec![
            ContainerPort {
                container_port: 0,
                protocol: Some("HTTP".into()),
                name: Some("http".into()),
                ..Default::default()
            },
            ContainerPort { container_port: 80, name: Some("http".into()), ..Default::default() },
            ContainerPort { container_port: 81, name: Some("Too_Long_Port_Name".into()), ..Default::default() },
        ]);
        bad.env = Some(vec![
            EnvVar { name: "1BAD".into(), ..Default::default() },
            EnvVar { name: "GOOD_1.x-y".into(), ..Default::default() },
        ]);
        bad.volume_mounts = Some(vec![
            VolumeMount { name: "missing".into(), mount_path: "/a".into(), ..Default::default() },
            VolumeMount { name: "data".into(), mount_path: "/a".into(), ..Default::default() },
        ]);
        bad.image_pull_policy = Some("Sometimes".into());
        let ps = PodSpec {
            containers: vec![bad, c("web"), Container { image: None, ..c("side") }],
            volumes: Some(vec![Volume {
                name: "data".into(),
                empty_dir: Some(EmptyDirVolumeSource::default()),
                ..Default::default()
            }]),
            restart_policy: Some("Sometimes".into()),
            ..Default::default()
        };
        assert_eq!(
            fields(&ps),
            [
                "spec.containers[0].imagePullPolicy",
                "spec.containers[0].ports[0].containerPort",
                "spec.containers[0].ports[0].protocol",
                "spec.containers[0].ports[1].name",
                "spec.containers[0].ports[2].name",
                "spec.containers[0].env[0].name",
                "spec.containers[0].volumeMounts[0].name",
                "spec.containers[0].volumeMounts[1].mountPath",
                "spec.containers[1].name",
                "spec.containers[2].image",
                "spec.restartPolicy",
            ]
        );
    }

    #[test]
    fn volumes() {
        let empty =
            |n: &str| Volume { name: n.into(), empty_dir: Some(EmptyDirVolumeSource::default()), ..Default::default() };
        let vols = vec![
            empty("a"),
            empty("a"),
            Volume { name: "none".into(), ..Default::default() },
            Volume {
                host_path: Some(HostPathVolumeSource { path: "/x".into(), ..Default::default() }),
                ..empty("two")
            },
        ];
        let f: Vec<String> =
            validate_volumes(&vols, &FieldPath::new("spec.volumes")).into_iter().map(|e| e.field).collect();
        assert_eq!(f, ["spec.volumes[1].name", "spec.volumes[2]", "spec.volumes[3]"]);
    }

    #[test]
    fn defaults_as_the_api_server() {
        use k8s_openapi::api::core::v1::{HTTPGetAction, SecretVolumeSource};
        use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
        let mut web = c("web");
        web.image = Some("nginx".into());
        web.ports = Some(vec![ContainerPort { container_port: 80, ..Default::default() }]);
        web.readiness_probe = Some(Probe {
            http_get: Some(HTTPGetAction { port: IntOrString::Int(80), ..Default::default() }),
            ..Default::default()
        });
        let mut ps = PodSpec {
            containers: vec![web],
            host_network: Some(true),
            volumes: Some(vec![Volume {
                name: "s".into(),
                secret: Some(SecretVolumeSource::default()),
                ..Default::default()
            }]),
            ..Default::default()
        };
        default_pod_spec(&mut ps);
        assert_eq!(ps.dns_policy.as_deref(), Some("ClusterFirst"));
        assert_eq!(ps.restart_policy.as_deref(), Some("Always"));
        assert_eq!(ps.termination_grace_period_seconds, Some(30));
        assert_eq!(ps.scheduler_name.as_deref(), Some("default-scheduler"));
        let web = &ps.containers[0];
        assert_eq!(web.image_pull_policy.as_deref(), Some("Always"), "untagged means latest");
        let port = &web.ports.as_ref().unwrap()[0];
        assert_eq!((port.protocol.as_deref(), port.host_port), (Some("TCP"), Some(80)), "hostNetwork mirrors ports");
        let probe = web.readiness_probe.as_ref().unwrap();
        assert_eq!(
            (probe.timeout_seconds, probe.period_seconds, probe.success_threshold, probe.failure_threshold),
            (Some(1), Some(10), Some(1), Some(3))
        );
        assert_eq!(probe.http_get.as_ref().unwrap().path.as_deref(), Some("/"));
        assert_eq!(ps.volumes.unwrap()[0].secret.as_ref().unwrap().default_mode, Some(0o644));
        let mut pinned = c("x");
        pinned.image = Some("nginx:1.27".into());
        default_container(&mut pinned);
        assert_eq!(pinned.image_pull_policy.as_deref(), Some("IfNotPresent"));
    }

    #[test]
    fn node_selector_terms() {
        let req = |key: &str, op: &str, values: &[&str]| NodeSelectorRequirement {
            key: key.into(),
            operator: op.into(),
            values: Some(values.iter().map(|v| v.to_string()).collect()),
        };
        let term = NodeSelectorTerm {
            match_expressions: Some(vec![
                req("zone", "In", &["a"]),
                req("zone", "In", &[]),
                req("cpu", "Gt", &["x"]),
                req("gpu", "Exists", &["1"]),
                req("z", "Near", &["1"]),
            ]),
            match_fields: Some(vec![req("metadata.name", "In", &["n1"]), req("spec.x", "In", &["a", "b"])]),
        };
        let f: Vec<String> =
            validate_node_selector_term(&term, &FieldPath::new("t")).into_iter().map(|e| e.field).collect();
        assert_eq!(
            f,
            [
                "t.matchExpressions[1].values",
                "t.matchExpressions[2].values",
                "t.matchExpressions[3].values",
                "t.matchExpressions[4].operator",
                "t.matchFields[1].key",
                "t.matchFields[1].values",
            ]
        );
    }

    #[test]
    fn claim_templates_count_as_volumes() {
        let mut web = c("web");
        web.volume_mounts =
            Some(vec![VolumeMount { name: "cache".into(), mount_path: "/c".into(), ..Default::default() }]);
        let ps = PodSpec { containers: vec![web], ..Default::default() };
        assert!(validate_pod_spec(&ps, &FieldPath::new("spec"), &["cache"]).is_empty());
        assert_eq!(validate_pod_spec(&ps, &FieldPath::new("spec"), &[]).len(), 1);
    }
}
