//! Container image references, parsed and normalised the way upstream's image jobs use them:
//! a familiar name (no `docker.io/library/`) and one tag, `latest` by default, or the digest
//! (`sha256:…`) standing in for the tag when one is given.

use std::fmt;

/// An image as ImagePullJob and NodeImage key it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ImageRef {
    /// Repository in familiar form: `nginx`, `quay.io/org/app`, `localhost:5000/x`.
    pub name: String,
    /// A tag or a digest (`sha256:<64 hex>`).
    pub tag: String,
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.tag.contains(':') {
            write!(f, "{}@{}", self.name, self.tag)
        } else {
            write!(f, "{}:{}", self.name, self.tag)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid image reference {image:?}: {reason}")]
pub struct ImageError {
    pub image: String,
    pub reason: &'static str,
}

fn is_path_component(c: &str) -> bool {
    // [a-z0-9]+ separated by one of `.`, `_`, `__`, or one or more `-`.
    if c.is_empty() || !c.starts_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit()) {
        return false;
    }
    if !c.ends_with(|ch: char| ch.is_ascii_lowercase() || ch.is_ascii_digit()) {
        return false;
    }
    let bytes = c.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let b = bytes[i];
        if b.is_ascii_lowercase() || b.is_ascii_digit() {
            i += 1;
            continue;
        }
        // A separator run.
        let start = i;
        while i < bytes.len() && matches!(bytes[i], b'.' | b'_' | b'-') {
            i += 1;
        }
        let sep = &c[start..i];
        let ok = sep == "." || sep == "_" || sep == "__" || sep.chars().all(|ch| ch == '-');
        if !ok {
            return false;
        }
    }
    true
}

fn is_domain(d: &str) -> bool {
    let host = match d.rsplit_once(':') {
        Some((h, port)) if !port.is_empty() && port.chars().all(|c| c.is_ascii_digit()) => h,
        Some(_) => return false,
        None => d,
    };
    !host.is_empty()
        && host.split('.').all(|label| {
            !label.is_empty()
                && label.starts_with(|c: char| c.is_ascii_alphanumeric())
                && label.ends_with(|c: char| c.is_ascii_alphanumeric())
                && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

fn is_tag(t: &str) -> bool {
    // [\w][\w.-]{0,127}
    !t.is_empty()
        && t.len() <= 128
        && t.starts_with(|c: char| c.is_ascii_alphanumeric() || c == '_')
        && t.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-'))
}

fn is_digest(d: &str) -> bool {
    match d.split_once(':') {
        Some(("sha256", hex)) => hex.len() == 64 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        Some(("sha384", hex)) => hex.len() == 96 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        Some(("sha512", hex)) => {
            hex.len() == 128 && hex.chars().all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c))
        }
        _ => false,
    }
}

/// Parses `image` (e.g. `nginx`, `docker.io/library/nginx:1.27`, `quay.io/a/b@sha256:…`).
pub fn parse_image(image: &str) -> Result<ImageRef, ImageError> {
    let err = |reason| ImageError { image: image.to_string(), reason };
    if image.is_empty() {
        return Err(err("empty"));
    }
    if image.len() > 255 {
        return Err(err("longer than 255 characters"));
    }
    let (rest, digest) = match image.split_once('@') {
        Some((r, d)) if is_digest(d) => (r, Some(d)),
        Some(_) => return Err(err("invalid digest")),
        None => (image, None),
    };
    // A tag is what follows the last ':' after the last '/', so a registry port is not a tag.
    let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
    let (repo, tag) = match rest[last_slash..].rfind(':') {
        Some(i) => (&rest[..last_slash + i], Some(&rest[last_slash + i + 1..])),
        None => (rest, None),
    };
    if let Some(t) = tag
        && !is_tag(t)
    {
        return Err(err("invalid tag"));
    }
    let mut parts: Vec<&str> = repo.split('/').collect();
    let domain = if parts.len() > 1 && (parts[0].contains(['.', ':']) || parts[0] == "localhost") {
        Some(parts.remove(0))
    } else {
        None
    };
    if let Some(d) = domain
        && !is_domain(d)
    {
        return Err(err("invalid registry host"));
    }
    if parts.is_empty() || !parts.iter().all(|p| is_path_component(p)) {
        return Err(err("invalid repository name (lower-case letters, digits and separators . _ __ -)"));
    }
    let path = parts.join("/");
    let name = match domain {
        None | Some("docker.io") | Some("index.docker.io") => {
            path.strip_prefix("library/").filter(|p| !p.contains('/')).map(str::to_string).unwrap_or(path)
        }
        Some(d) => format!("{d}/{path}"),
    };
    let tag = match (digest, tag) {
        (Some(d), _) => d.to_string(),
        (None, Some(t)) => t.to_string(),
        (None, None) => "latest".to_string(),
    };
    Ok(ImageRef { name, tag })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parsed(s: &str) -> (String, String) {
        let r = parse_image(s).unwrap_or_else(|e| panic!("{e}"));
        (r.name, r.tag)
    }

    #[test]
    fn normalises_to_familiar_name_and_tag() {
        assert_eq!(parsed("nginx"), ("nginx".into(), "latest".into()));
        assert_eq!(parsed("nginx:1.27"), ("nginx".into(), "1.27".into()));
        assert_eq!(parsed("docker.io/library/nginx:1.27"), ("nginx".into(), "1.27".into()));
        assert_eq!(parsed("docker.io/bitnami/redis"), ("bitnami/redis".into(), "latest".into()));
        assert_eq!(parsed("localhost:5000/team/app:v2"), ("localhost:5000/team/app".into(), "v2".into()));
        assert_eq!(parsed("registry.example.com/ml/inference-server:2.1.0-rc.3").1, "2.1.0-rc.3");
        let digest = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(parsed(&format!("quay.io/org/app:ignored@{digest}")), ("quay.io/org/app".into(), digest));
    }

    #[test]
    fn rejects_what_a_registry_would() {
        for bad in ["", "Nginx", "nginx:", "nginx:-x", "nginx@sha256:abc", "a//b", "-a/b", "reg.io:port/x", "nginx:a/b"]
        {
            assert!(parse_image(bad).is_err(), "{bad:?} must be rejected");
        }
    }

    #[test]
    fn displays_back() {
        assert_eq!(parse_image("nginx").unwrap().to_string(), "nginx:latest");
        let d = format!("sha256:{}", "0".repeat(64));
        assert_eq!(parse_image(&format!("a/b@{d}")).unwrap().to_string(), format!("a/b@{d}"));
    }
}
