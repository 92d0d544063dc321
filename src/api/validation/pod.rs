//! The core/v1 Pod validation rules that catch most mistakes in embedded pod templates and in a
//! SidecarSet's synthetic pod: containers (names, images, ports, env names, volume mounts),
//! volumes (names, exactly one source) and the enumerated pod fields. The API server validates
//! every real pod in full when it is created; these checks move the common errors to the moment
//! the workload is written.

use std::collections::HashSet;

use k8s_openapi::api::core::v1::{Container, PodSpec, Volume};

use super::{ErrorList, FieldPath, duplicate, invalid, is_dns1123_subdomain, not_supported, required};

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
    fn claim_templates_count_as_volumes() {
        let mut web = c("web");
        web.volume_mounts =
            Some(vec![VolumeMount { name: "cache".into(), mount_path: "/c".into(), ..Default::default() }]);
        let ps = PodSpec { containers: vec![web], ..Default::default() };
        assert!(validate_pod_spec(&ps, &FieldPath::new("spec"), &["cache"]).is_empty());
        assert_eq!(validate_pod_spec(&ps, &FieldPath::new("spec"), &[]).len(), 1);
    }
}
