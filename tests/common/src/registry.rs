//! A real registry for the tests: Debian's `docker-registry` (Docker Distribution) serving a
//! temporary storage directory on a free loopback port, with or without `htpasswd` auth, killed
//! by its PID when the guard is dropped. Its access log (stdout) is kept, so tests can count the
//! blob requests our binary made.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::prereq::require_program;

/// Whether the registry tests can run: the registry, skopeo to push to it, htpasswd (Debian
/// `apache2-utils`) for its Basic auth and openssl for its certificates and tokens; through
/// [`crate::require`].
#[track_caller]
pub fn registry_prerequisites() -> bool {
    require_program("docker-registry", "docker-registry")
        && require_program("skopeo", "skopeo")
        && require_program("htpasswd", "apache2-utils")
        && require_program("openssl", "openssl")
}

/// A running registry.
pub struct Registry {
    child: Option<Child>,
    port: u16,
    dir: tempfile::TempDir,
    /// The token service of a registry with token auth (stopped after the registry).
    token: Option<crate::token::TokenServer>,
}

/// How a registry asks for credentials.
pub enum Auth<'a> {
    None,
    /// Basic auth of one of these (name, password), from an `htpasswd` file.
    Basic(&'a [(&'a str, &'a str)]),
    /// Bearer tokens from a token service that gives them to this (name, password).
    Token(&'a str, &'a str),
}

impl Registry {
    /// Starts a registry; with `users` (name, password), it asks for Basic auth of one of them.
    pub fn start(users: &[(&str, &str)]) -> Registry {
        let auth = if users.is_empty() {
            Auth::None
        } else {
            Auth::Basic(users)
        };
        Registry::start_with(auth, None)
    }

    /// Starts a registry asking for `auth`, serving HTTPS with `tls` (certificate, key PEM files)
    /// if given.
    pub fn start_with(auth: Auth<'_>, tls: Option<(&Path, &Path)>) -> Registry {
        let dir = tempfile::Builder::new()
            .prefix("unionfs-registry")
            .tempdir()
            .expect("tmp");
        let mut token = None;
        let auth = match auth {
            Auth::None => String::new(),
            Auth::Basic(users) => htpasswd(dir.path(), users),
            Auth::Token(user, password) => {
                let t = crate::token::TokenServer::start(&dir.path().join("token"), user, password);
                let yaml = t.registry_config();
                token = Some(t);
                yaml
            }
        };
        let tls = tls.map_or(String::new(), |(cert, key)| {
            format!(
                "  tls:\n    certificate: {}\n    key: {}\n",
                cert.display(),
                key.display()
            )
        });
        // A port another test takes between our probe and the registry's bind makes it exit:
        // try again on another.
        for _ in 0..10 {
            let port = free_port();
            let config = dir.path().join("config.yml");
            std::fs::write(
                &config,
                format!(
                    "version: 0.1\nlog:\n  level: warn\nstorage:\n  filesystem:\n    rootdirectory: {}\n\
                     http:\n  addr: 127.0.0.1:{port}\n{tls}{auth}",
                    dir.path().join("storage").display()
                ),
            )
            .expect("write config");
            let out = std::fs::File::create(dir.path().join("access.log")).expect("log");
            let err = std::fs::File::create(dir.path().join("registry.log")).expect("log");
            let mut child = Command::new("docker-registry")
                .arg("serve")
                .arg(&config)
                .stdin(Stdio::null())
                .stdout(out)
                .stderr(err)
                .spawn()
                .expect("start docker-registry");
            if wait_up(&mut child, port) {
                return Registry {
                    child: Some(child),
                    port,
                    dir,
                    token,
                };
            }
            let _ = child.kill();
            let _ = child.wait();
        }
        let log = std::fs::read_to_string(dir.path().join("registry.log")).unwrap_or_default();
        panic!("docker-registry did not start: {log}");
    }

    /// The loopback port it serves.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// `127.0.0.1:PORT`.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// `docker://127.0.0.1:PORT/REPO:TAG`.
    pub fn reference(&self, repo: &str, tag: &str) -> String {
        format!("docker://{}/{repo}:{tag}", self.host())
    }

    /// How many tokens its token service gave out (0 without token auth).
    pub fn tokens_issued(&self) -> usize {
        self.token
            .as_ref()
            .map_or(0, |t| t.issued.load(std::sync::atomic::Ordering::Relaxed))
    }

    /// Where the registry keeps what is pushed.
    pub fn storage(&self) -> PathBuf {
        self.dir.path().join("storage")
    }

    /// `skopeo copy --preserve-digests` of `oci:LAYOUT:TAG` to `REPO:TAG` here, with `extra`
    /// arguments (`--dest-creds=…` for a registry that asks for them, `--all` for an index).
    pub fn push(&self, layout: &Path, tag: &str, repo: &str, extra: &[&str]) {
        let mut cmd = Command::new("skopeo");
        cmd.args(["copy", "--quiet", "--preserve-digests", "--dest-tls-verify=false"])
            .args(extra)
            .arg(format!("oci:{}:{tag}", layout.display()))
            .arg(format!("docker://{}/{repo}:{tag}", self.host()));
        let out = cmd.output().expect("skopeo");
        assert!(
            out.status.success(),
            "{cmd:?}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// The requests our binary (its user agent) made so far with `method` to a path containing
    /// `part`, in order: (status, bytes of the answer's body), from the access log.
    fn ours(&self, method: &str, part: &str) -> Vec<(u16, u64)> {
        let log = std::fs::read_to_string(self.dir.path().join("access.log")).unwrap_or_default();
        let start = format!("{method} /v2/");
        log.lines()
            .filter(|l| l.contains("unionfs/"))
            // `… "METHOD PATH HTTP/1.1" STATUS BYTES "referer" "agent"`
            .filter(|l| {
                l.split('"')
                    .nth(1)
                    .is_some_and(|req| req.starts_with(&start) && req.contains(part))
            })
            .map(|l| {
                let mut after = l.split("HTTP/1.1\" ").nth(1).unwrap_or("").split_whitespace();
                let status = after.next().and_then(|x| x.parse().ok()).unwrap_or(0);
                (status, after.next().and_then(|x| x.parse().ok()).unwrap_or(0))
            })
            .collect()
    }

    /// How many blob GETs our binary made so far.
    pub fn blob_gets(&self) -> usize {
        self.ours("GET", "/blobs/sha256:").len()
    }

    /// The statuses of the requests our binary made so far with `method` to a path containing
    /// `part` (`/blobs/uploads/`, `mount=`), in order.
    pub fn requests(&self, method: &str, part: &str) -> Vec<u16> {
        self.ours(method, part).into_iter().map(|(status, _)| status).collect()
    }

    /// How many manifest GETs our binary made for `tag_or_digest` so far.
    pub fn manifest_gets(&self, tag_or_digest: &str) -> usize {
        self.ours("GET", &format!("/manifests/{tag_or_digest} ")).len()
    }

    /// Bytes of blob bodies the registry sent our binary so far in answers with status
    /// `status`, and in how many answers.
    pub fn blob_bytes_sent(&self, status: u16) -> (u64, usize) {
        let sent: Vec<u64> = self
            .ours("GET", "/blobs/sha256:")
            .into_iter()
            .filter(|(st, _)| *st == status)
            .map(|(_, n)| n)
            .collect();
        (sent.iter().sum(), sent.len())
    }

    /// Starts the registry again, on the same port with the same storage and configuration,
    /// after [`Self::stop`].
    pub fn restart(&mut self) {
        assert!(self.child.is_none(), "the registry is running");
        let config = self.dir.path().join("config.yml");
        let log = |name: &str| {
            std::fs::File::options()
                .append(true)
                .create(true)
                .open(self.dir.path().join(name))
                .expect("log")
        };
        let mut child = Command::new("docker-registry")
            .arg("serve")
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(log("access.log"))
            .stderr(log("registry.log"))
            .spawn()
            .expect("start docker-registry");
        assert!(wait_up(&mut child, self.port), "docker-registry did not start again");
        self.child = Some(child);
    }

    /// Sets how long the tokens its token service gives from now on are good for.
    pub fn token_lifetime(&self, secs: i64) {
        if let Some(t) = &self.token {
            t.lifetime.store(secs, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Stops the registry (by its PID); the storage stays until the guard is dropped.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Registry {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The `auth:` section for Basic auth of `users`, with their `htpasswd` file (bcrypt) in `dir`.
fn htpasswd(dir: &Path, users: &[(&str, &str)]) -> String {
    let file = dir.join("htpasswd");
    let mut lines = String::new();
    for (u, p) in users {
        let out = Command::new("htpasswd")
            .args(["-Bbn", u, p])
            .output()
            .expect("htpasswd");
        assert!(
            out.status.success(),
            "htpasswd: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        lines.push_str(String::from_utf8_lossy(&out.stdout).trim());
        lines.push('\n');
    }
    std::fs::write(&file, lines).expect("write htpasswd");
    format!(
        "auth:\n  htpasswd:\n    realm: unionfs-test\n    path: {}\n",
        file.display()
    )
}

/// Waits until `/v2/` answers (200, 401 when auth is on, 400 to plain HTTP when it serves
/// HTTPS); false if the registry exited.
fn wait_up(child: &mut Child, port: u16) -> bool {
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline {
        if let Ok(Some(_)) = child.try_wait() {
            return false;
        }
        if matches!(http_status(port, "/v2/"), Some(200 | 400 | 401)) {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    false
}

/// A loopback port nothing listens on right now.
fn free_port() -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("addr").port()
}

/// The status of `GET PATH` on the loopback port, if anything answers.
fn http_status(port: u16, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(("127.0.0.1", port)).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(2))).ok()?;
    write!(s, "GET {path} HTTP/1.0\r\nHost: 127.0.0.1\r\n\r\n").ok()?;
    let mut buf = [0u8; 64];
    let n = s.read(&mut buf).ok()?;
    let line = String::from_utf8_lossy(&buf[..n]);
    line.split_whitespace().nth(1)?.parse().ok()
}
