//! The distribution API's HTTP side: one agent per image open, the scheme (`https`, or plain
//! `http` for a test registry with `--tls-verify=false`), and authentication: anonymous, Basic,
//! or a Bearer token got from the realm a `WWW-Authenticate` challenge names (with the Basic
//! credentials, when there are any), renewed once when a later request is refused.

use std::time::Duration;

use parking_lot::Mutex;
use ureq::http::{Response, StatusCode};
use ureq::tls::{Certificate, RootCerts, TlsConfig};
use ureq::{Agent, Body};

use super::Options;
use super::auth::Credentials;
use super::reference::Reference;

/// What went wrong talking to the registry (the caller names the reference).
#[derive(Debug)]
pub enum Failure {
    Unreachable(String),
    /// The registry's certificate was not accepted.
    Tls(String),
    Unauthorized(String),
    NotFound,
    Status(u16),
    Other(String),
}

impl std::fmt::Display for Failure {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Failure::Unreachable(why) => write!(f, "registry unreachable: {why}"),
            Failure::Tls(why) => write!(
                f,
                "TLS with the registry failed: {why} (--cert-dir DIR trusts its CA, --tls-verify=false skips the check)"
            ),
            Failure::Unauthorized(why) => write!(f, "unauthorized (401): {why}"),
            Failure::NotFound => write!(f, "not found (404)"),
            Failure::Status(s) => write!(f, "the registry answered HTTP {s}"),
            Failure::Other(why) => f.write_str(why),
        }
    }
}

/// A registry client for one repository.
pub struct Client {
    agent: Agent,
    /// `https://HOST[:PORT]` or `http://…`.
    base: String,
    repository: String,
    registry: String,
    creds: Option<Credentials>,
    /// The file the credentials came from, or the files looked in (for messages).
    creds_from: String,
    /// The `Authorization` header value that the registry accepted last.
    authorization: Mutex<Option<String>>,
    /// Token scopes asked for besides the one a challenge names (a push needs
    /// `repository:REPO:pull,push` from the start, and `pull` on the repositories it mounts from).
    scopes: Vec<String>,
}

/// What a request sends (HEAD, POST, PUT, DELETE).
pub enum Payload<'a> {
    Empty,
    /// Small bytes and their `Content-Type`.
    Bytes(&'a [u8], &'a str),
    /// A file of this many bytes, streamed (read again if the request has to be repeated); the
    /// callback hears how many bytes went out.
    File(&'a std::path::Path, u64, &'a (dyn Fn(u64) + Sync)),
}

/// The methods besides GET.
#[derive(Clone, Copy, Debug)]
pub enum Method {
    Head,
    Post,
    Put,
    Delete,
}

/// A challenge from a `WWW-Authenticate` header.
#[derive(Debug, PartialEq, Eq)]
pub enum Challenge {
    Basic,
    Bearer {
        realm: String,
        service: Option<String>,
        scope: Option<String>,
    },
}

impl Client {
    /// Connects to the registry of `r` (one `GET /v2/`, which also says how to authenticate).
    pub fn connect(
        r: &Reference,
        opts: &Options,
        creds: Option<Credentials>,
        creds_from: String,
    ) -> Result<Client, Failure> {
        Client::connect_scoped(r, opts, creds, creds_from, Vec::new())
    }

    /// [`Self::connect`], asking every token for `scopes` too.
    pub fn connect_scoped(
        r: &Reference,
        opts: &Options,
        creds: Option<Credentials>,
        creds_from: String,
        scopes: Vec<String>,
    ) -> Result<Client, Failure> {
        let agent = agent(opts)?;
        let host = r.api_host();
        let mut c = Client {
            agent,
            base: format!("https://{host}"),
            repository: r.repository.clone(),
            registry: r.registry.clone(),
            creds,
            creds_from,
            authorization: Mutex::new(None),
            scopes,
        };
        let first = c.agent.get(format!("{}/v2/", c.base)).call();
        let resp = match first {
            Ok(resp) => resp,
            // Without verification, a registry that speaks plain HTTP is allowed (skopeo's
            // `--tls-verify=false` does the same).
            Err(_) if !opts.tls_verify => {
                c.base = format!("http://{host}");
                c.agent
                    .get(format!("{}/v2/", c.base))
                    .call()
                    .map_err(|e| transport(host, e))?
            }
            Err(e) => return Err(transport(host, e)),
        };
        if resp.status() == StatusCode::UNAUTHORIZED {
            c.authenticate(&resp)?;
        }
        Ok(c)
    }

    /// `GET /v2/REPO/PATH` with `accept` (if any); a refusal is answered once by authenticating
    /// again. Any status comes back; transport failures are errors.
    pub fn get(&self, path: &str, accept: Option<&str>, range: Option<(u64, u64)>) -> Result<Response<Body>, Failure> {
        self.get_within(path, accept, range, None)
    }

    /// [`Self::get`], the whole exchange (body included) given up after `timeout`.
    pub fn get_within(
        &self,
        path: &str,
        accept: Option<&str>,
        range: Option<(u64, u64)>,
        timeout: Option<Duration>,
    ) -> Result<Response<Body>, Failure> {
        let url = format!("{}/v2/{}/{path}", self.base, self.repository);
        let send = || {
            let mut req = self.agent.get(&url);
            if timeout.is_some() {
                req = req.config().timeout_global(timeout).build();
            }
            if let Some(a) = accept {
                req = req.header("Accept", a);
            }
            if let Some((from, to)) = range {
                req = req.header("Range", format!("bytes={from}-{to}"));
            }
            if let Some(h) = self.authorization.lock().clone() {
                req = req.header("Authorization", h);
            }
            req.call()
                .map_err(|e| Failure::Unreachable(format!("{}: {e}", self.registry)))
        };
        self.retrying(send)
    }

    /// The answer to `send`, sent again once after answering a refusal's challenge.
    fn retrying(&self, send: impl Fn() -> Result<Response<Body>, Failure>) -> Result<Response<Body>, Failure> {
        let resp = send()?;
        if resp.status() != StatusCode::UNAUTHORIZED {
            return Ok(resp);
        }
        self.authenticate(&resp)?;
        let resp = send()?;
        if resp.status() == StatusCode::UNAUTHORIZED {
            return Err(Failure::Unauthorized(self.refused()));
        }
        Ok(resp)
    }

    /// The URL of `PATH` under `/v2/REPO/`.
    pub fn url(&self, path: &str) -> String {
        format!("{}/v2/{}/{path}", self.base, self.repository)
    }

    /// The URL a `Location` header names: absolute, or a path on the registry.
    pub fn location(&self, loc: &str) -> String {
        if loc.starts_with("http://") || loc.starts_with("https://") {
            loc.to_string()
        } else {
            format!("{}/{}", self.base, loc.trim_start_matches('/'))
        }
    }

    /// `method url` with `payload`, authenticated like [`Self::get`]. Any status comes back.
    pub fn send(&self, method: Method, url: &str, payload: &Payload) -> Result<Response<Body>, Failure> {
        let unreachable = |e: ureq::Error| Failure::Unreachable(format!("{}: {e}", self.registry));
        let send = || {
            let auth = self.authorization.lock().clone();
            match method {
                Method::Head | Method::Delete => {
                    let mut req = match method {
                        Method::Head => self.agent.head(url),
                        _ => self.agent.delete(url),
                    };
                    if let Some(h) = auth {
                        req = req.header("Authorization", h);
                    }
                    req.call().map_err(unreachable)
                }
                Method::Post | Method::Put => {
                    let mut req = match method {
                        Method::Post => self.agent.post(url),
                        _ => self.agent.put(url),
                    };
                    if let Some(h) = auth {
                        req = req.header("Authorization", h);
                    }
                    match payload {
                        Payload::Empty => req.send_empty().map_err(unreachable),
                        Payload::Bytes(b, media) => req.header("Content-Type", *media).send(*b).map_err(unreachable),
                        Payload::File(path, size, sent) => {
                            let file = std::fs::File::open(path)
                                .map_err(|e| Failure::Other(format!("{}: {e}", path.display())))?;
                            let mut counted = Counted {
                                inner: file,
                                sent: *sent,
                            };
                            // A stated length rather than chunks: every registry takes it.
                            req.header("Content-Type", "application/octet-stream")
                                .header("Content-Length", size.to_string())
                                .send(ureq::SendBody::from_reader(&mut counted))
                                .map_err(unreachable)
                        }
                    }
                }
            }
        };
        self.retrying(send)
    }

    fn refused(&self) -> String {
        match &self.creds {
            Some(c) => format!(
                "the registry {} refused the credentials of {} (from {})",
                self.registry, c.user, self.creds_from
            ),
            None => format!(
                "the registry {} wants credentials and there are none for it (looked in {})",
                self.registry, self.creds_from
            ),
        }
    }

    /// Answers the challenge of the refusal `resp`.
    fn authenticate(&self, resp: &Response<Body>) -> Result<(), Failure> {
        let header = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .filter_map(parse_challenge)
            .min_by_key(|c| matches!(c, Challenge::Basic));
        let value = match header {
            None => return Err(Failure::Unauthorized(self.refused())),
            Some(Challenge::Basic) => {
                let c = self
                    .creds
                    .as_ref()
                    .ok_or_else(|| Failure::Unauthorized(self.refused()))?;
                basic(c)
            }
            Some(Challenge::Bearer { realm, service, scope }) => {
                let scopes = self.scopes_for(scope.as_deref());
                format!("Bearer {}", self.token(&realm, service.as_deref(), &scopes)?)
            }
        };
        *self.authorization.lock() = Some(value);
        Ok(())
    }

    /// The scopes a token is asked for: those the challenge names (space-separated), and ours;
    /// pulling this repository when neither names any.
    fn scopes_for(&self, challenge: Option<&str>) -> Vec<String> {
        let mut out: Vec<String> = challenge
            .unwrap_or_default()
            .split_whitespace()
            .map(str::to_string)
            .collect();
        for s in &self.scopes {
            if !out.contains(s) {
                out.push(s.clone());
            }
        }
        if out.is_empty() {
            out.push(format!("repository:{}:pull", self.repository));
        }
        out
    }

    /// A token from `realm` for `scopes`, asked with the Basic credentials if there are any.
    fn token(&self, realm: &str, service: Option<&str>, scopes: &[String]) -> Result<String, Failure> {
        let mut url = realm.to_string();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for scope in scopes {
            url.push_str(&format!("{sep}scope={}", query_escape(scope)));
            sep = '&';
        }
        if let Some(s) = service {
            url.push_str(&format!("{sep}service={}", query_escape(s)));
        }
        let mut req = self.agent.get(&url);
        if let Some(c) = &self.creds {
            req = req.header("Authorization", basic(c));
        }
        let mut resp = req
            .call()
            .map_err(|e| Failure::Unreachable(format!("token service {realm}: {e}")))?;
        if resp.status() == StatusCode::UNAUTHORIZED || resp.status() == StatusCode::FORBIDDEN {
            return Err(Failure::Unauthorized(self.refused()));
        }
        if !resp.status().is_success() {
            return Err(Failure::Other(format!(
                "token service {realm} answered HTTP {}",
                resp.status().as_u16()
            )));
        }
        let bytes = resp
            .body_mut()
            .with_config()
            .limit(1 << 20)
            .read_to_vec()
            .map_err(|e| Failure::Other(format!("token service {realm}: {e}")))?;
        let v: serde_json::Value =
            serde_json::from_slice(&bytes).map_err(|e| Failure::Other(format!("token service {realm}: {e}")))?;
        v.get("token")
            .or_else(|| v.get("access_token"))
            .and_then(|t| t.as_str())
            .map(str::to_string)
            .ok_or_else(|| Failure::Other(format!("token service {realm} sent no token")))
    }
}

/// A request that got no answer: a certificate refused, or no registry there.
fn transport(host: &str, e: ureq::Error) -> Failure {
    // rustls reports a refused certificate as an InvalidData I/O error; a missing or silent
    // registry never does.
    let tls = match &e {
        ureq::Error::Tls(_) | ureq::Error::Rustls(_) => true,
        ureq::Error::Io(io) => io.kind() == std::io::ErrorKind::InvalidData,
        _ => false,
    };
    if tls {
        Failure::Tls(format!("{host}: {e}"))
    } else {
        Failure::Unreachable(format!("{host}: {e}"))
    }
}

/// A file being sent, its bytes counted as they go.
struct Counted<'a> {
    inner: std::fs::File,
    sent: &'a (dyn Fn(u64) + Sync),
}

impl std::io::Read for Counted<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.sent)(n as u64);
        Ok(n)
    }
}

fn basic(c: &Credentials) -> String {
    use base64::Engine as _;
    let raw = format!("{}:{}", c.user, c.password);
    format!("Basic {}", base64::engine::general_purpose::STANDARD.encode(raw))
}

fn query_escape(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' | b':' | b'/' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// `Basic realm="…"` or `Bearer realm="…",service="…",scope="…"`.
pub fn parse_challenge(h: &str) -> Option<Challenge> {
    let (scheme, params) = h.trim().split_once(' ').unwrap_or((h.trim(), ""));
    if scheme.eq_ignore_ascii_case("basic") {
        return Some(Challenge::Basic);
    }
    if !scheme.eq_ignore_ascii_case("bearer") {
        return None;
    }
    let mut realm = None;
    let mut service = None;
    let mut scope = None;
    let mut rest = params.trim();
    while !rest.is_empty() {
        let (key, after) = rest.split_once('=')?;
        let (value, next) = match after.strip_prefix('"') {
            Some(q) => {
                let end = q.find('"')?;
                (&q[..end], q[end + 1..].trim_start_matches([',', ' ']))
            }
            None => match after.split_once(',') {
                Some((v, n)) => (v, n.trim_start()),
                None => (after, ""),
            },
        };
        match key.trim().to_ascii_lowercase().as_str() {
            "realm" => realm = Some(value.to_string()),
            "service" => service = Some(value.to_string()),
            "scope" => scope = Some(value.to_string()),
            _ => {}
        }
        rest = next.trim();
    }
    Some(Challenge::Bearer {
        realm: realm?,
        service,
        scope,
    })
}

/// The agent: verified TLS with the built-in roots, or with the system bundle and the
/// certificates of `--cert-dir`; or no verification at all.
fn agent(opts: &Options) -> Result<Agent, Failure> {
    let mut tls = TlsConfig::builder().disable_verification(!opts.tls_verify);
    if let Some(dir) = &opts.cert_dir {
        tls = tls.root_certs(roots_with(dir)?);
    }
    let config = Agent::config_builder()
        .http_status_as_error(false)
        .tls_config(tls.build())
        .timeout_connect(Some(Duration::from_secs(15.min(opts.fetch_timeout.max(1)))))
        .timeout_recv_response(Some(Duration::from_secs(60)))
        // A blob may take long to come, but a registry that stops sending is given up on.
        .timeout_per_read(Some(Duration::from_secs(60)))
        .user_agent(concat!("unionfs/", env!("CARGO_PKG_VERSION")))
        .build();
    Ok(Agent::new_with_config(config))
}

/// The system's CA bundle (where there is one) and every `*.crt`/`*.pem` of `dir`.
fn roots_with(dir: &std::path::Path) -> Result<RootCerts, Failure> {
    let mut certs = Vec::new();
    let mut add = |p: &std::path::Path| -> Result<(), Failure> {
        let pem = std::fs::read(p).map_err(|e| Failure::Other(format!("{}: {e}", p.display())))?;
        for item in ureq::tls::parse_pem(&pem) {
            match item {
                Ok(ureq::tls::PemItem::Certificate(c)) => certs.push(c.to_owned()),
                Ok(_) => {}
                Err(e) => return Err(Failure::Other(format!("{}: {e}", p.display()))),
            }
        }
        Ok(())
    };
    let bundle = std::path::Path::new("/etc/ssl/certs/ca-certificates.crt");
    if bundle.is_file() {
        add(bundle)?;
    }
    let rd = std::fs::read_dir(dir).map_err(|e| Failure::Other(format!("--cert-dir {}: {e}", dir.display())))?;
    let mut paths: Vec<_> = rd.flatten().map(|e| e.path()).collect();
    paths.sort();
    for p in paths
        .iter()
        .filter(|p| p.extension().is_some_and(|x| x == "crt" || x == "pem"))
    {
        add(p)?;
    }
    let certs: Vec<Certificate<'static>> = certs;
    Ok(RootCerts::new_with_certs(&certs))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn challenges_parse() {
        assert_eq!(
            parse_challenge(r#"Basic realm="Registry Realm""#),
            Some(Challenge::Basic)
        );
        assert_eq!(
            parse_challenge(
                r#"Bearer realm="https://auth.example/token",service="registry.example",scope="repository:a/b:pull""#
            ),
            Some(Challenge::Bearer {
                realm: "https://auth.example/token".into(),
                service: Some("registry.example".into()),
                scope: Some("repository:a/b:pull".into()),
            })
        );
        assert_eq!(
            parse_challenge("bearer realm=https://t.example/x"),
            Some(Challenge::Bearer {
                realm: "https://t.example/x".into(),
                service: None,
                scope: None,
            })
        );
        assert_eq!(
            parse_challenge("Bearer service=\"x\""),
            None,
            "a Bearer challenge needs a realm"
        );
        assert_eq!(parse_challenge("Negotiate"), None);
        assert_eq!(query_escape("repository:a/b:pull,push"), "repository:a/b:pull%2Cpush");
    }

    fn client(scopes: &[&str]) -> Client {
        Client {
            agent: Agent::new_with_defaults(),
            base: "https://reg.example".into(),
            repository: "app".into(),
            registry: "reg.example".into(),
            creds: None,
            creds_from: String::new(),
            authorization: Mutex::new(None),
            scopes: scopes.iter().map(|s| s.to_string()).collect(),
        }
    }

    #[test]
    fn a_token_covers_the_challenges_scopes_and_ours() {
        assert_eq!(client(&[]).scopes_for(None), ["repository:app:pull"]);
        let push = client(&["repository:app:pull,push", "repository:base:pull"]);
        assert_eq!(
            push.scopes_for(Some("repository:app:pull")),
            [
                "repository:app:pull",
                "repository:app:pull,push",
                "repository:base:pull"
            ]
        );
        // Distribution names every scope a mount needs in one parameter.
        assert_eq!(
            push.scopes_for(Some("repository:app:pull,push repository:base:pull")),
            ["repository:app:pull,push", "repository:base:pull"]
        );
        assert_eq!(
            push.location("/v2/app/blobs/uploads/u?_state=x"),
            "https://reg.example/v2/app/blobs/uploads/u?_state=x"
        );
        assert_eq!(push.location("http://other:5000/up/u"), "http://other:5000/up/u");
    }
}
