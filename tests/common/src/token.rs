//! The token service of a registry with token auth (Docker Distribution's `auth: token`): it
//! answers `GET /token?service=…&scope=repository:NAME:ACTIONS` given the right Basic
//! credentials with a JWT granting those scopes, signed (RS256, by `openssl`) with a key whose
//! self-signed certificate the registry trusts and finds in the token's `x5c` header. The
//! registry itself checks every token, so the client's whole Bearer flow runs for real.
//!
//! Served by a thread of the test process on a free loopback port, stopped when dropped.

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicI64, AtomicUsize, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// Makes the key and certificate; `sign.sh` then prints a token for `$ACCESS` (a JSON array)
/// good for `$LIFETIME` seconds (the registry allows 60 s of clock skew past `exp`, which is
/// taken off here).
const SETUP: &str = r#"
openssl req -x509 -newkey rsa:2048 -nodes -keyout key.pem -out cert.pem -days 2 -subj /CN=unionfs-test-token 2>/dev/null
cat > sign.sh <<'END'
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
x5c=$(openssl x509 -in cert.pem -outform DER | base64 -w0)
h=$(printf '{"alg":"RS256","typ":"JWT","x5c":["%s"]}' "$x5c" | b64url)
now=$(date +%s)
p=$(printf '{"iss":"unionfs-test","sub":"%s","aud":"unionfs-registry","exp":%d,"nbf":%d,"iat":%d,"jti":"%s","access":%s}' \
  "$SUBJECT" $((now + LIFETIME - 60)) $((now - 60)) $((now - 60)) "$now$$" "$ACCESS" | b64url)
s=$(printf '%s.%s' "$h" "$p" | openssl dgst -sha256 -sign key.pem | b64url)
printf '%s.%s.%s' "$h" "$p" "$s"
END
"#;

/// A running token service.
pub struct TokenServer {
    port: u16,
    dir: PathBuf,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
    /// Tokens given out so far.
    pub issued: Arc<AtomicUsize>,
    /// Seconds the tokens given from now on are good for.
    pub lifetime: Arc<AtomicI64>,
}

impl TokenServer {
    /// Starts a service in `dir` that gives tokens to `user` with `password` only.
    pub fn start(dir: &Path, user: &str, password: &str) -> TokenServer {
        std::fs::create_dir_all(dir).expect("mkdir token dir");
        shell(dir, SETUP, &[]);
        let basic = shell(dir, &format!("printf '%s' '{user}:{password}' | base64 -w0"), &[]);
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let stop = Arc::new(AtomicBool::new(false));
        let issued = Arc::new(AtomicUsize::new(0));
        let lifetime = Arc::new(AtomicI64::new(3600));
        let (d, st, n, u, life) = (
            dir.to_path_buf(),
            Arc::clone(&stop),
            Arc::clone(&issued),
            user.to_string(),
            Arc::clone(&lifetime),
        );
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => serve(conn, &d, &basic, &u, &n, life.load(Ordering::Relaxed)),
                    Err(_) => std::thread::sleep(Duration::from_millis(10)),
                }
            }
        });
        TokenServer {
            port,
            dir: dir.to_path_buf(),
            stop,
            thread: Some(thread),
            issued,
            lifetime,
        }
    }

    /// The registry's `auth:` section that sends clients here.
    pub fn registry_config(&self) -> String {
        format!(
            "auth:\n  token:\n    realm: http://127.0.0.1:{}/token\n    service: unionfs-registry\n    \
             issuer: unionfs-test\n    rootcertbundle: {}\n",
            self.port,
            self.dir.join("cert.pem").display()
        )
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Runs `script` in `dir` with `env` and gives its output.
fn shell(dir: &Path, script: &str, env: &[(&str, &str)]) -> String {
    let out = Command::new("sh")
        .arg("-ec")
        .arg(script)
        .current_dir(dir)
        .envs(env.iter().copied())
        .output()
        .expect("sh");
    assert!(
        out.status.success(),
        "{script}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// Answers one request: a token for the scopes asked, or 401 without the right credentials.
fn serve(conn: TcpStream, dir: &Path, basic: &str, user: &str, issued: &AtomicUsize, lifetime: i64) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(5)));
    let mut r = BufReader::new(&conn);
    let mut first = String::new();
    if r.read_line(&mut first).is_err() {
        return;
    }
    let mut authorized = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).is_err() || line.trim().is_empty() {
            break;
        }
        if let Some((k, v)) = line.split_once(':') {
            authorized |= k.eq_ignore_ascii_case("authorization") && v.trim() == format!("Basic {basic}");
        }
    }
    let target = first.split_whitespace().nth(1).unwrap_or_default();
    let access: Vec<String> = target
        .split_once('?')
        .map(|(_, q)| q)
        .unwrap_or_default()
        .split('&')
        .filter_map(|kv| kv.strip_prefix("scope="))
        .filter_map(|scope| {
            let scope = percent_decode(scope);
            let mut parts = scope.splitn(3, ':');
            let (kind, name, actions) = (parts.next()?, parts.next()?, parts.next()?);
            let actions: Vec<String> = actions.split(',').map(|a| format!("\"{a}\"")).collect();
            Some(format!(
                r#"{{"type":"{kind}","name":"{name}","actions":[{}]}}"#,
                actions.join(",")
            ))
        })
        .collect();
    let (status, body) = if authorized {
        let access = format!("[{}]", access.join(","));
        let secs = lifetime.to_string();
        let env = [("ACCESS", access.as_str()), ("SUBJECT", user), ("LIFETIME", &secs)];
        let token = shell(dir, "sh sign.sh", &env);
        issued.fetch_add(1, Ordering::Relaxed);
        ("200 OK", format!(r#"{{"token":"{token}","expires_in":{lifetime}}}"#))
    } else {
        (
            "401 Unauthorized",
            r#"{"details":"wrong or no credentials"}"#.to_string(),
        )
    };
    let mut w = &conn;
    let _ = write!(
        w,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
}

fn percent_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = b
            .get(i + 1..i + 3)
            .and_then(|h| u8::from_str_radix(std::str::from_utf8(h).ok()?, 16).ok());
        match (b[i], hex) {
            (b'%', Some(v)) => {
                out.push(v);
                i += 3;
            }
            (b'+', _) => {
                out.push(b' ');
                i += 1;
            }
            (c, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}
