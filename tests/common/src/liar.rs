//! A registry that lies: a proxy in front of a real registry that answers range requests of
//! blobs wrongly when told to — the whole blob instead of the range (it drops the `Range`
//! header, so the registry answers 200), or half the range with a matching `Content-Length`
//! (a short answer that looks complete). Otherwise it passes requests through unchanged.
//!
//! One request per connection (it asks the registry to close, and closes after answering),
//! served by a thread of the test process on a free loopback port, stopped when dropped.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::thread::JoinHandle;
use std::time::Duration;

/// How the proxy answers range requests of blobs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Lie {
    Honest = 0,
    WholeBlob = 1,
    ShortRange = 2,
}

/// A running proxy.
pub struct Liar {
    port: u16,
    mode: Arc<AtomicU8>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl Liar {
    /// Starts a proxy in front of the registry at `127.0.0.1:upstream`, honest at first.
    pub fn start(upstream: u16) -> Liar {
        let listener = TcpListener::bind("127.0.0.1:0").expect("bind");
        listener.set_nonblocking(true).expect("nonblocking");
        let port = listener.local_addr().expect("addr").port();
        let mode = Arc::new(AtomicU8::new(Lie::Honest as u8));
        let stop = Arc::new(AtomicBool::new(false));
        let (m, st) = (Arc::clone(&mode), Arc::clone(&stop));
        let thread = std::thread::spawn(move || {
            while !st.load(Ordering::Relaxed) {
                match listener.accept() {
                    Ok((conn, _)) => {
                        let lie = m.load(Ordering::Relaxed);
                        std::thread::spawn(move || serve(conn, upstream, lie));
                    }
                    Err(_) => std::thread::sleep(Duration::from_millis(5)),
                }
            }
        });
        Liar {
            port,
            mode,
            stop,
            thread: Some(thread),
        }
    }

    /// `127.0.0.1:PORT` of the proxy.
    pub fn host(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    /// How range requests are answered from now on.
    pub fn set(&self, lie: Lie) {
        self.mode.store(lie as u8, Ordering::Relaxed);
    }
}

impl Drop for Liar {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Passes one request to the registry and its answer back, lying as `lie` says.
fn serve(conn: TcpStream, upstream: u16, lie: u8) {
    let _ = conn.set_nonblocking(false);
    let _ = conn.set_read_timeout(Some(Duration::from_secs(10)));
    let mut r = BufReader::new(&conn);
    let mut head = Vec::new();
    let mut blob = false;
    loop {
        let mut line = String::new();
        if r.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        if head.is_empty() {
            blob = line.starts_with("GET ") && line.contains("/blobs/sha256:");
        }
        let lower = line.to_ascii_lowercase();
        let end = line == "\r\n";
        if lower.starts_with("connection:") || (lie == Lie::WholeBlob as u8 && blob && lower.starts_with("range:")) {
            continue;
        }
        if end {
            head.extend_from_slice(b"Connection: close\r\n");
        }
        head.extend_from_slice(line.as_bytes());
        if end {
            break;
        }
    }
    let Ok(mut up) = TcpStream::connect(("127.0.0.1", upstream)) else {
        return;
    };
    if up.write_all(&head).is_err() {
        return;
    }
    let mut answer = Vec::new();
    let _ = up.read_to_end(&mut answer);
    let split = answer
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .map_or(answer.len(), |i| i + 4);
    let (status_head, body) = answer.split_at(split);
    let text = String::from_utf8_lossy(status_head).into_owned();
    let mut w = &conn;
    if lie == Lie::ShortRange as u8 && blob && text.starts_with("HTTP/1.1 206") {
        let short = &body[..body.len() / 2];
        let mut out = String::new();
        for l in text.split("\r\n").filter(|l| !l.is_empty()) {
            if l.to_ascii_lowercase().starts_with("content-length:") {
                out.push_str(&format!("Content-Length: {}\r\n", short.len()));
            } else {
                out.push_str(l);
                out.push_str("\r\n");
            }
        }
        out.push_str("\r\n");
        let _ = w.write_all(out.as_bytes()).and_then(|()| w.write_all(short));
        return;
    }
    let _ = w.write_all(&answer);
}
