//! What the writers of indexed layers (`estargz::write`, `chunked::write`) share: a tar fed by
//! a producer that pushes it (as `unionfs commit` does), through a bounded pipe to a scoped
//! thread, and a tap that keeps the tar's header bytes as the tar reader consumes them.

use std::cell::{Cell, RefCell};
use std::io::{Read, Write};
use std::rc::Rc;

/// The input as the tar reader consumes it, kept while `recording`, so that the header bytes of
/// each entry (with any PAX/GNU extension records, and the padding of the data before it) pass
/// on unchanged into the blob.
pub(crate) struct Tap<R> {
    r: R,
    pub kept: Rc<RefCell<Vec<u8>>>,
    pub recording: Rc<Cell<bool>>,
}

impl<R> Tap<R> {
    /// A tap on `r`, recording; `kept` and `recording` are shared with the caller.
    pub fn new(r: R) -> Tap<R> {
        Tap {
            r,
            kept: Rc::new(RefCell::new(Vec::new())),
            recording: Rc::new(Cell::new(true)),
        }
    }
}

impl<R: Read> Read for Tap<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let k = self.r.read(buf)?;
        if self.recording.get() {
            self.kept.borrow_mut().extend_from_slice(&buf[..k]);
        }
        Ok(k)
    }
}

/// `produce` writes the tar stream into the `Write` it is given, while a scoped thread runs
/// `convert` on it (reading it from a [`ChannelReader`]) into the blob on `out`. Returns what
/// `produce` returned and what `convert` did. An error of `produce` is the result (the blob is
/// then incomplete: discard it); if the writer refuses the tar first, its error is.
pub(crate) fn write_with<W, T, X>(
    out: W,
    convert: impl FnOnce(ChannelReader, W) -> std::io::Result<X> + Send,
    produce: impl FnOnce(&mut dyn Write) -> std::io::Result<T>,
) -> std::io::Result<(T, X)>
where
    W: Write + Send,
    X: Send,
{
    let (tx, rx) = std::sync::mpsc::sync_channel::<Vec<u8>>(4);
    std::thread::scope(|s| {
        let writer = s.spawn(move || {
            let r = ChannelReader {
                rx,
                cur: Vec::new(),
                at: 0,
            };
            convert(r, out)
        });
        let mut w = ChannelWriter {
            tx: Some(tx),
            buf: Vec::with_capacity(PIPE_BUF),
        };
        let produced = produce(&mut w).and_then(|t| w.close().map(|()| t));
        drop(w);
        let written = writer
            .join()
            .map_err(|_| std::io::Error::other("the blob writer thread panicked"))?;
        match (produced, written) {
            (Ok(t), Ok(w)) => Ok((t, w)),
            (Ok(_), Err(e)) => Err(e),
            (Err(e), Err(w)) if e.kind() == std::io::ErrorKind::BrokenPipe => Err(w),
            (Err(e), _) => Err(e),
        }
    })
}

/// Bytes a [`ChannelWriter`] gathers before it hands them over.
const PIPE_BUF: usize = 256 << 10;

/// The producer's end of [`write_with`]'s pipe.
struct ChannelWriter {
    tx: Option<std::sync::mpsc::SyncSender<Vec<u8>>>,
    buf: Vec<u8>,
}

impl ChannelWriter {
    fn send(&mut self) -> std::io::Result<()> {
        if self.buf.is_empty() {
            return Ok(());
        }
        let full = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_BUF));
        match &self.tx {
            Some(tx) => tx
                .send(full)
                .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the blob writer stopped")),
            None => Err(std::io::Error::new(
                std::io::ErrorKind::BrokenPipe,
                "the pipe to the blob writer is closed",
            )),
        }
    }

    /// Hands over the rest; the reader then sees the end of the stream.
    fn close(&mut self) -> std::io::Result<()> {
        self.send()?;
        self.tx = None;
        Ok(())
    }
}

impl Write for ChannelWriter {
    fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(b);
        if self.buf.len() >= PIPE_BUF {
            self.send()?;
        }
        Ok(b.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

/// The writer's end of [`write_with`]'s pipe: the end of the stream when the producer's end is
/// closed or dropped.
pub(crate) struct ChannelReader {
    rx: std::sync::mpsc::Receiver<Vec<u8>>,
    cur: Vec<u8>,
    at: usize,
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.at == self.cur.len() {
            match self.rx.recv() {
                Ok(next) => (self.cur, self.at) = (next, 0),
                Err(_) => return Ok(0),
            }
        }
        let n = buf.len().min(self.cur.len() - self.at);
        buf[..n].copy_from_slice(&self.cur[self.at..self.at + n]);
        self.at += n;
        Ok(n)
    }
}
