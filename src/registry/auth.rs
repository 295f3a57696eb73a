//! Credentials from the containers `auth.json` that `podman login` and `skopeo login` write
//! (and Docker's `config.json`, same `auths` map): `{"auths": {"HOST[:PORT]": {"auth":
//! base64("user:password")}}}`. Keys may also carry a scheme or a repository path
//! (`https://host/v1/`, `host/team`); the most specific key that covers the repository wins.

use std::path::{Path, PathBuf};

use base64::Engine as _;

/// A user name and password for a registry.
#[derive(Clone, PartialEq, Eq)]
pub struct Credentials {
    pub user: String,
    pub password: String,
}

// Never print a password, not even in a debug log.
impl std::fmt::Debug for Credentials {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Credentials({}, …)", self.user)
    }
}

/// The files looked in, first match wins: `$REGISTRY_AUTH_FILE` alone when it is set, else
/// `$XDG_RUNTIME_DIR/containers/auth.json`, `~/.config/containers/auth.json`,
/// `~/.docker/config.json`.
pub fn auth_files() -> Vec<PathBuf> {
    let env = |k: &str| std::env::var_os(k).filter(|v| !v.is_empty()).map(PathBuf::from);
    if let Some(f) = env("REGISTRY_AUTH_FILE") {
        return vec![f];
    }
    let mut out = Vec::new();
    if let Some(r) = env("XDG_RUNTIME_DIR") {
        out.push(r.join("containers/auth.json"));
    }
    if let Some(h) = env("HOME") {
        out.push(h.join(".config/containers/auth.json"));
        out.push(h.join(".docker/config.json"));
    }
    out
}

/// The credentials for `repository` on `registry` in the first of `files` that has any, with
/// that file. A file that is missing is skipped; one that cannot be read or parsed is an error
/// naming it.
pub fn lookup(files: &[PathBuf], registry: &str, repository: &str) -> Result<Option<(Credentials, PathBuf)>, String> {
    for f in files {
        let text = match std::fs::read_to_string(f) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
            Err(e) => return Err(format!("{}: {e}", f.display())),
        };
        if let Some(c) = from_json(f, &text, registry, repository)? {
            return Ok(Some((c, f.clone())));
        }
    }
    Ok(None)
}

fn from_json(file: &Path, text: &str, registry: &str, repository: &str) -> Result<Option<Credentials>, String> {
    let bad = |why: &str| format!("{}: {why}", file.display());
    let v: serde_json::Value = serde_json::from_str(text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let Some(auths) = v.get("auths").and_then(|a| a.as_object()) else {
        return Ok(None);
    };
    let full = format!("{registry}/{repository}");
    let best = auths
        .iter()
        .filter_map(|(k, entry)| {
            let key = normalise(k, registry);
            let covers = full == key || full.starts_with(&format!("{key}/"));
            covers.then_some((key.len(), k, entry))
        })
        .max_by_key(|(len, _, _)| *len);
    let Some((_, key, entry)) = best else {
        return Ok(None);
    };
    let Some(auth) = entry.get("auth").and_then(|a| a.as_str()).filter(|a| !a.is_empty()) else {
        return Ok(None);
    };
    let raw = base64::engine::general_purpose::STANDARD
        .decode(auth.trim())
        .map_err(|_| bad(&format!("the auth of {key:?} is not base64")))?;
    let text = String::from_utf8(raw).map_err(|_| bad(&format!("the auth of {key:?} is not UTF-8")))?;
    let (user, password) = text
        .split_once(':')
        .ok_or_else(|| bad(&format!("the auth of {key:?} is not user:password")))?;
    Ok(Some(Credentials {
        user: user.to_string(),
        password: password.to_string(),
    }))
}

/// A key as `HOST[/PATH]`: without a scheme or trailing slash; Docker Hub's legacy key
/// `index.docker.io/v1` counts as `docker.io`.
fn normalise(key: &str, registry: &str) -> String {
    let k = key
        .trim_start_matches("https://")
        .trim_start_matches("http://")
        .trim_end_matches('/');
    if registry == "docker.io" && (k == "index.docker.io/v1" || k == "index.docker.io" || k == "registry-1.docker.io") {
        return "docker.io".into();
    }
    k.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn b64(s: &str) -> String {
        base64::engine::general_purpose::STANDARD.encode(s)
    }

    #[test]
    fn the_most_specific_key_of_the_first_file_that_has_one_wins() {
        let t = tempfile::tempdir().expect("tmp");
        let (a, b) = (t.path().join("a.json"), t.path().join("b.json"));
        let json = serde_json::json!({"auths": {
            "127.0.0.1:5000": {"auth": b64("alice:s3:cret")},
            "127.0.0.1:5000/team": {"auth": b64("bob:pw")},
            "https://index.docker.io/v1/": {"auth": b64("hub:pw")},
            "other:5000": {"auth": ""},
        }});
        std::fs::write(&b, json.to_string()).expect("write");
        let files = vec![t.path().join("missing.json"), b.clone()];
        let c = |reg: &str, repo: &str| {
            lookup(&files, reg, repo)
                .expect("reads")
                .map(|(c, _)| (c.user, c.password))
        };
        assert_eq!(c("127.0.0.1:5000", "app"), Some(("alice".into(), "s3:cret".into())));
        assert_eq!(c("127.0.0.1:5000", "team/app"), Some(("bob".into(), "pw".into())));
        assert_eq!(
            c("127.0.0.1:5000", "teamx/app"),
            Some(("alice".into(), "s3:cret".into()))
        );
        assert_eq!(c("docker.io", "library/alpine"), Some(("hub".into(), "pw".into())));
        assert_eq!(c("other:5000", "app"), None);
        assert_eq!(c("127.0.0.1:5001", "app"), None);
        // An earlier file with an entry for the registry wins over a later one.
        std::fs::write(
            &a,
            serde_json::json!({"auths": {"127.0.0.1:5000": {"auth": b64("carol:x")}}}).to_string(),
        )
        .expect("write");
        let files = vec![a.clone(), b];
        let (got, from) = lookup(&files, "127.0.0.1:5000", "app").expect("reads").expect("found");
        assert_eq!((got.user.as_str(), from), ("carol", a.clone()));
        assert!(!format!("{got:?}").contains('x'), "no password in debug output");
        std::fs::write(&a, "{not json").expect("write");
        let e = lookup(&files, "127.0.0.1:5000", "app").expect_err("bad file");
        assert!(e.contains("a.json"), "{e}");
    }
}
