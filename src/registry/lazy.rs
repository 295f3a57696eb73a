//! The registry behind a mounted image's lazy layers: range requests for the table of contents
//! and the chunks reads need, for as long as the mount lives.
//!
//! A read that cannot get its bytes keeps trying (the registry restarting, a link dropping for
//! a moment) until the fetch timeout has passed, then fails; the mount stays usable and a later
//! read asks again. Every request carries the time left, so no request thread waits longer
//! than the timeout. A token that expires is renewed by the client when the registry refuses
//! it (see `client.rs`).

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::Options;
use super::client::Client;
use super::fetch::range_of;
use super::reference::Reference;
use crate::image::source::Remote;

/// A registry repository read by range.
pub struct Lazy {
    reference: Reference,
    opts: Options,
    /// Made at the first fetch (a mount whose chunks are all cached never connects), and made
    /// again after a failure to connect.
    client: Mutex<Option<Arc<Client>>>,
}

impl Lazy {
    pub fn new(reference: Reference, opts: &Options) -> Lazy {
        Lazy {
            reference,
            opts: opts.clone(),
            client: Mutex::new(None),
        }
    }

    fn client(&self) -> Result<Arc<Client>, String> {
        let mut c = self.client.lock();
        if let Some(c) = &*c {
            return Ok(Arc::clone(c));
        }
        let (creds, from) = super::credentials(&self.reference)?;
        let made = Arc::new(Client::connect(&self.reference, &self.opts, creds, from).map_err(|e| e.to_string())?);
        *c = Some(Arc::clone(&made));
        Ok(made)
    }
}

impl Remote for Lazy {
    fn read(&self, digest: &str, from: u64, len: u64) -> Result<Vec<u8>, String> {
        let limit = Duration::from_secs(self.opts.fetch_timeout);
        let deadline = Instant::now() + limit;
        let mut pause = Duration::from_millis(100);
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            // The layer and the registry are named by the reader's message (`LayerReadError`).
            let what = format!("fetching bytes {from}+{len}");
            let err = match self.client() {
                Ok(c) => match range_of(&c, digest, from, len, Some(left.max(Duration::from_millis(1)))) {
                    Ok(b) => return Ok(b),
                    Err(e) if !e.transient => return Err(format!("{what}: {}", e.why)),
                    Err(e) => format!("{what}: {}", e.why),
                },
                Err(e) => format!("{what}: {e}"),
            };
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return Err(format!("{err} (gave up after --fetch-timeout {}s)", limit.as_secs()));
            }
            tracing::debug!("{err}; trying again");
            std::thread::sleep(pause.min(left));
            pause = (pause * 2).min(Duration::from_secs(2));
        }
    }

    fn describe(&self) -> String {
        let r = &self.reference;
        format!("docker://{}/{}", r.registry, r.repository)
    }
}
