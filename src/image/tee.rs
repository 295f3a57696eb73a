//! sha256 of a stream on another thread, for the scan of a layer.
//!
//! A scan hashes the blob (its digest) and the tar it inflates to (its DiffID) besides
//! inflating and reading the tar; the two hashes were a third to a half of a scan's work on
//! one thread. A [`Tee`] hands the bytes read through it to a thread that hashes them, so a
//! first mount's scans spread over the cores even when the image has fewer layers than cores.

use std::io::Read;
use std::sync::mpsc::{Receiver, SyncSender, sync_channel};
use std::thread::{Scope, ScopedJoinHandle};

use sha2::{Digest as _, Sha256};

/// Bytes gathered before they go to the hashing thread.
const BLOCK: usize = 1 << 20;

/// A reader that passes `r` through and has another thread hash what passed.
pub struct Tee<'scope, R> {
    r: R,
    pending: Vec<u8>,
    tx: SyncSender<Vec<u8>>,
    /// Blocks the hashing thread is done with, to fill again.
    back: Receiver<Vec<u8>>,
    n: u64,
    hasher: ScopedJoinHandle<'scope, String>,
}

impl<'scope, R: Read> Tee<'scope, R> {
    /// Starts the hashing thread in `s`.
    pub fn new<'env>(s: &'scope Scope<'scope, 'env>, r: R) -> Tee<'scope, R> {
        let (tx, rx) = sync_channel::<Vec<u8>>(4);
        let (back_tx, back) = sync_channel::<Vec<u8>>(8);
        let hasher = s.spawn(move || {
            let mut h = Sha256::new();
            for mut block in rx {
                h.update(&block);
                block.clear();
                let _ = back_tx.try_send(block);
            }
            format!("sha256:{:x}", h.finalize())
        });
        Tee {
            r,
            pending: Vec::with_capacity(BLOCK),
            tx,
            back,
            n: 0,
            hasher,
        }
    }

    fn hand_over(&mut self) -> std::io::Result<()> {
        let fresh = self.back.try_recv().unwrap_or_else(|_| Vec::with_capacity(BLOCK));
        let full = std::mem::replace(&mut self.pending, fresh);
        self.tx
            .send(full)
            .map_err(|_| std::io::Error::other("the hashing thread stopped"))
    }

    /// The reader, the bytes that passed and their sha256 (`sha256:HEX`).
    pub fn finish(mut self) -> std::io::Result<(R, u64, String)> {
        self.hand_over()?;
        let Tee { r, tx, n, hasher, .. } = self;
        drop(tx);
        let digest = hasher
            .join()
            .map_err(|_| std::io::Error::other("the hashing thread panicked"))?;
        Ok((r, n, digest))
    }

    pub fn get_ref(&self) -> &R {
        &self.r
    }
}

impl<R: Read> Read for Tee<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.r.read(buf)?;
        self.pending.extend_from_slice(&buf[..k]);
        self.n += k as u64;
        if self.pending.len() >= BLOCK {
            self.hand_over()?;
        }
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_digest_is_of_every_byte_that_passed() {
        let data: Vec<u8> = (0..3_500_000u32).map(|i| (i % 251) as u8).collect();
        let want = format!("sha256:{:x}", Sha256::digest(&data));
        std::thread::scope(|s| {
            let mut t = Tee::new(s, &data[..]);
            let mut got = Vec::new();
            let mut buf = vec![0u8; 70_001];
            loop {
                let k = t.read(&mut buf).expect("read");
                if k == 0 {
                    break;
                }
                got.extend_from_slice(&buf[..k]);
            }
            let (_, n, digest) = t.finish().expect("finish");
            assert_eq!(got, data);
            assert_eq!(n, data.len() as u64);
            assert_eq!(digest, want);
        });
    }
}
