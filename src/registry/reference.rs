//! `docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]`: which registry, which repository, which
//! image. A name without a registry host (`docker://alpine`) means Docker Hub, as skopeo and
//! Podman read it.

use std::fmt;

/// Docker Hub's name in references and credentials, and the host its API answers on.
const HUB: &str = "docker.io";
const HUB_API: &str = "registry-1.docker.io";

/// The image a `docker://` reference names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reference {
    /// `HOST[:PORT]` as written (`docker.io` for Docker Hub): what credentials are filed under.
    pub registry: String,
    /// `library/alpine`, `team/app`: the path in the API's URLs.
    pub repository: String,
    pub image: Which,
}

/// A tag or a manifest digest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Which {
    Tag(String),
    Digest(String),
}

impl Which {
    /// What goes after `/manifests/` in the API's URL.
    pub fn as_str(&self) -> &str {
        match self {
            Which::Tag(t) | Which::Digest(t) => t,
        }
    }
}

/// Whether `s` names a registry image (rather than `oci:` and the like).
pub fn is_registry(s: &str) -> bool {
    s.starts_with("docker://")
}

impl Reference {
    /// Parses `docker://…`; the error says what is wrong with it.
    pub fn parse(s: &str) -> Result<Reference, String> {
        let rest = s.strip_prefix("docker://").ok_or_else(|| {
            format!("{s}: registry images are given as docker://HOST[:PORT]/REPO[:TAG|@sha256:DIGEST]")
        })?;
        let (name, image) = match rest.split_once('@') {
            Some((n, d)) => (n, Which::Digest(check_digest(s, d)?)),
            None => match rest.rsplit_once(':') {
                // A colon after the last slash is a tag; before it, a port.
                Some((n, t)) if !t.contains('/') => (n, Which::Tag(check_tag(s, t)?)),
                _ => (rest, Which::Tag("latest".into())),
            },
        };
        let (first, path) = match name.split_once('/') {
            Some((h, p)) if h.contains(['.', ':']) || h == "localhost" => (h.to_string(), p.to_string()),
            _ => (HUB.to_string(), name.to_string()),
        };
        let repository = if first == HUB && !path.contains('/') {
            format!("library/{path}")
        } else {
            path
        };
        let ok = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c);
        if repository.is_empty()
            || !repository.chars().all(ok)
            || repository
                .split('/')
                .any(|p| p.is_empty() || p.starts_with(['.', '-', '_']))
        {
            return Err(format!(
                "{s}: {repository:?} is not a repository name (lowercase letters, digits, . _ - /)"
            ));
        }
        if first.is_empty() || !first.chars().all(|c| c.is_ascii_alphanumeric() || ".-:[]".contains(c)) {
            return Err(format!("{s}: {first:?} is not a registry host"));
        }
        Ok(Reference {
            registry: first,
            repository,
            image,
        })
    }

    /// The host (and port) the API is reached at.
    pub fn api_host(&self) -> &str {
        if self.registry == HUB { HUB_API } else { &self.registry }
    }

    /// The same image named by its manifest digest.
    pub fn pinned(&self, digest: &str) -> Reference {
        Reference {
            image: Which::Digest(digest.to_string()),
            ..self.clone()
        }
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let sep = match self.image {
            Which::Tag(_) => ':',
            Which::Digest(_) => '@',
        };
        write!(
            f,
            "docker://{}/{}{sep}{}",
            self.registry,
            self.repository,
            self.image.as_str()
        )
    }
}

fn check_tag(s: &str, t: &str) -> Result<String, String> {
    let ok = !t.is_empty()
        && t.len() <= 128
        && !t.starts_with(['.', '-'])
        && t.chars().all(|c| c.is_ascii_alphanumeric() || "._-".contains(c));
    if ok {
        Ok(t.to_string())
    } else {
        Err(format!("{s}: {t:?} is not a tag"))
    }
}

fn check_digest(s: &str, d: &str) -> Result<String, String> {
    let hex = d.strip_prefix("sha256:").unwrap_or_default();
    if hex.len() == 64 && hex.bytes().all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b)) {
        Ok(d.to_string())
    } else {
        Err(format!("{s}: {d:?} is not a sha256:HEX digest"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn tag(r: &str) -> (String, String, Which) {
        let p = Reference::parse(r).expect("parses");
        (p.registry, p.repository, p.image)
    }

    #[test]
    fn hosts_ports_tags_and_digests() {
        let d = format!("sha256:{}", "ab".repeat(32));
        assert_eq!(
            tag("docker://127.0.0.1:5000/team/app:v1"),
            ("127.0.0.1:5000".into(), "team/app".into(), Which::Tag("v1".into()))
        );
        assert_eq!(
            tag("docker://localhost/app"),
            ("localhost".into(), "app".into(), Which::Tag("latest".into()))
        );
        assert_eq!(
            tag(&format!("docker://reg.example:443/a/b@{d}")),
            ("reg.example:443".into(), "a/b".into(), Which::Digest(d.clone()))
        );
        assert_eq!(
            tag("docker://alpine:3"),
            ("docker.io".into(), "library/alpine".into(), Which::Tag("3".into()))
        );
        assert_eq!(
            Reference::parse("docker://alpine").expect("ok").api_host(),
            "registry-1.docker.io"
        );
        let r = Reference::parse("docker://127.0.0.1:5000/app:v1").expect("ok");
        assert_eq!(r.to_string(), "docker://127.0.0.1:5000/app:v1");
        assert_eq!(r.pinned(&d).to_string(), format!("docker://127.0.0.1:5000/app@{d}"));
    }

    #[test]
    fn malformed_references_say_why() {
        for bad in [
            "oci:/x",
            "docker://",
            "docker://h.example/",
            "docker://h.example/App",
            "docker://h.example/a//b",
            "docker://h.example/a:",
            "docker://h.example/a:bad/tag",
            "docker://h.example/a@sha256:00",
            "docker://h.example/a@md5:0123",
            "docker://h.example/../etc",
        ] {
            let e = Reference::parse(bad).expect_err(bad);
            assert!(e.starts_with(bad), "{bad}: {e}");
        }
    }
}
