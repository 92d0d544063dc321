//! Registry credentials from image pull secrets: the entries of a `kubernetes.io/dockerconfigjson`
//! (or legacy `kubernetes.io/dockercfg`) secret that serve an image's registry.

use std::collections::BTreeMap;

use k8s_openapi::ByteString;
use serde::Deserialize;

use crate::daemon::runtime::RegistryAuth;

const DOCKER_HUB: &str = "docker.io";

/// The registry host of an image name (`nginx` → `docker.io`, `quay.io/x/y` → `quay.io`), and
/// the repository path under it.
pub fn registry_of(image: &str) -> (String, &str) {
    match image.split_once('/') {
        Some((first, rest)) if first.contains(['.', ':']) || first == "localhost" => {
            (normalize_host(first).to_string(), rest)
        }
        _ => (DOCKER_HUB.to_string(), image),
    }
}

/// Docker Hub's many names as one.
fn normalize_host(host: &str) -> &str {
    match host {
        "index.docker.io" | "registry-1.docker.io" | "registry.hub.docker.com" => DOCKER_HUB,
        h => h,
    }
}

#[derive(Deserialize, Default)]
struct Entry {
    #[serde(default)]
    username: String,
    #[serde(default)]
    password: String,
    #[serde(default)]
    auth: String,
}

#[derive(Deserialize)]
struct DockerConfigJson {
    #[serde(default)]
    auths: BTreeMap<String, Entry>,
}

/// A secret's `data`, as the credentials it holds for `image`'s registry; the most specific
/// entry first (one naming a repository path before the bare host).
pub fn credentials_for(image: &str, data: &BTreeMap<String, ByteString>) -> Vec<RegistryAuth> {
    let entries: BTreeMap<String, Entry> = if let Some(raw) = data.get(".dockerconfigjson") {
        serde_json::from_slice::<DockerConfigJson>(&raw.0).map(|c| c.auths).unwrap_or_default()
    } else if let Some(raw) = data.get(".dockercfg") {
        serde_json::from_slice(&raw.0).unwrap_or_default()
    } else {
        BTreeMap::new()
    };
    let (host, path) = registry_of(image);
    let mut matching: Vec<(usize, RegistryAuth)> = Vec::new();
    for (key, e) in entries {
        // Keys are `host`, `host/path` or a URL such as `https://index.docker.io/v1/`.
        let bare = key.trim_start_matches("https://").trim_start_matches("http://").trim_end_matches('/');
        let (key_host, key_path) = bare.split_once('/').unwrap_or((bare, ""));
        // Docker Hub's `/v1` is an API version, not a repository.
        let key_path = if normalize_host(key_host) == DOCKER_HUB && key_path.starts_with('v') { "" } else { key_path };
        let path_matches = key_path.is_empty() || path == key_path || path.starts_with(&format!("{key_path}/"));
        if normalize_host(key_host) == host && path_matches {
            let specificity = key_path.len();
            let auth = RegistryAuth { username: e.username, password: e.password, auth: e.auth, server_address: key };
            matching.push((specificity, auth));
        }
    }
    matching.sort_by_key(|m| std::cmp::Reverse(m.0));
    matching.into_iter().map(|(_, a)| a).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn data(key: &str, v: serde_json::Value) -> BTreeMap<String, ByteString> {
        [(key.to_string(), ByteString(v.to_string().into_bytes()))].into()
    }

    #[test]
    fn registries_of_image_names() {
        assert_eq!(registry_of("nginx"), ("docker.io".into(), "nginx"));
        assert_eq!(registry_of("library/nginx"), ("docker.io".into(), "library/nginx"));
        assert_eq!(registry_of("index.docker.io/library/nginx"), ("docker.io".into(), "library/nginx"));
        assert_eq!(registry_of("quay.io/team/app"), ("quay.io".into(), "team/app"));
        assert_eq!(registry_of("localhost/app"), ("localhost".into(), "app"));
        assert_eq!(registry_of("reg:5000/app"), ("reg:5000".into(), "app"));
    }

    #[test]
    fn entries_serving_the_registry_most_specific_first() {
        let d = data(
            ".dockerconfigjson",
            json!({ "auths": {
                "https://index.docker.io/v1/": { "username": "hub", "password": "h" },
                "quay.io": { "auth": "cXVheTpx" },
                "quay.io/team": { "username": "team", "password": "t" },
                "quay.io/other": { "username": "other", "password": "o" },
                "ghcr.io": { "username": "gh", "password": "g" }
            } }),
        );
        let quay: Vec<String> = credentials_for("quay.io/team/app", &d)
            .into_iter()
            .map(|a| if a.username.is_empty() { a.auth } else { a.username })
            .collect();
        assert_eq!(quay, ["team", "cXVheTpx"]);
        let hub = credentials_for("nginx", &d);
        assert_eq!(hub.len(), 1);
        assert_eq!((hub[0].username.as_str(), hub[0].server_address.as_str()), ("hub", "https://index.docker.io/v1/"));
        assert!(credentials_for("registry.k8s.io/pause", &d).is_empty());
    }

    #[test]
    fn legacy_dockercfg_and_bad_secrets() {
        let legacy = data(".dockercfg", json!({ "quay.io": { "username": "u", "password": "p" } }));
        assert_eq!(credentials_for("quay.io/x", &legacy)[0].password, "p");
        let garbage = [(".dockerconfigjson".to_string(), ByteString(b"not json".to_vec()))].into();
        assert!(credentials_for("quay.io/x", &garbage).is_empty(), "an unreadable secret gives nothing, no panic");
        assert!(credentials_for("quay.io/x", &BTreeMap::new()).is_empty());
    }
}
