//! `import`: the archive, plain or compressed (told by its first bytes), counted as it is read.

use std::fs::File;
use std::io::{self, BufReader, Read};
use std::path::Path;

use crate::blob::Compression;
use crate::layers::{LayerError, Observer, Result};

/// Opens the archive `path`, decompressed as its first bytes say.
pub(super) fn open_archive<'a>(path: &Path, obs: &'a dyn Observer) -> Result<Box<dyn Read + 'a>> {
    let mut f = File::open(path).map_err(|e| LayerError::io(path, e))?;
    let mut magic = [0u8; 4];
    let mut got = 0;
    while got < magic.len() {
        match f.read(&mut magic[got..]) {
            Ok(0) => break,
            Ok(n) => got += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(LayerError::io(path, e)),
        }
    }
    let head = io::Cursor::new(magic[..got].to_vec());
    let counted = Counting {
        inner: head.chain(f),
        obs,
    };
    let r = BufReader::with_capacity(1 << 20, counted);
    Compression::sniff(&magic[..got])
        .decoder(r)
        .map_err(|e| LayerError::io(path, e))
}

struct Counting<'a, R> {
    inner: R,
    obs: &'a dyn Observer,
}

impl<R: Read> Read for Counting<'_, R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        if self.obs.cancelled() {
            return Err(io::Error::other("interrupted"));
        }
        let n = self.inner.read(buf)?;
        self.obs.bytes(n as u64);
        Ok(n)
    }
}
