//! Random access into a gzip stream.
//!
//! gzip cannot be entered in the middle: every deflate block may refer to the 32 KiB of output
//! before it, and blocks do not start on byte boundaries. So the one pass that indexes a layer
//! also leaves restart points (zlib's `zran` idea): at a block boundary every
//! [`SPAN`] bytes of output it records where the next block starts in the input (byte and bit),
//! and the 32 KiB of output before it. A read then inflates from the nearest point before it,
//! never from the start of the layer. A new gzip member (eStargz writes one per file) is a
//! restart point that needs no window.
//!
//! The inflater is miniz_oxide's, whose state at a block boundary can be saved and restored
//! (`BlockBoundaryState`), in pure Rust.

use std::io::Read;

use miniz_oxide::inflate::TINFLStatus;
use miniz_oxide::inflate::core::inflate_flags::{
    TINFL_FLAG_HAS_MORE_INPUT, TINFL_FLAG_IGNORE_ADLER32, TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY,
};
use miniz_oxide::inflate::core::{BlockBoundaryState, DecompressorOxide, decompress};

/// Output between two restart points (the most a read inflates before its first byte).
pub const SPAN: u64 = 2 << 20;
/// How much earlier output a deflate block may refer to.
pub const WINDOW: usize = 32 << 10;
/// The wrapping output buffer: a power of two, at least twice the window.
const OUT: usize = 1 << 17;

/// A restart point with its window (empty at a member start).
pub type PointWithWindow = (Point, Vec<u8>);

/// Where inflating can start again.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Point {
    /// Offset in the decompressed stream.
    pub out: u64,
    /// Offset in the compressed stream of the first byte not yet consumed.
    pub input: u64,
    /// Inside a deflate stream: the bits of the byte before `input` that still belong to the
    /// next block, and how many. At a member start: none.
    pub bits: Option<(u8, u8)>,
    /// Index of its window in the windows file (none at a member start).
    pub window: Option<u32>,
}

/// Why a gzip stream could not be read.
#[derive(Debug, thiserror::Error)]
pub enum GzipError {
    #[error("{0}")]
    Io(#[from] std::io::Error),
    #[error("not a gzip stream at byte {0}")]
    NotGzip(u64),
    #[error("corrupt deflate data at byte {0}")]
    Corrupt(u64),
    #[error("truncated gzip stream")]
    Truncated,
    #[error("gzip member checksum mismatch at byte {0}")]
    Checksum(u64),
}

/// Buffered input that counts the bytes consumed.
struct Input<R> {
    r: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    /// Offset in the stream of `buf[start]`.
    pos: u64,
    eof: bool,
}

impl<R: Read> Input<R> {
    fn new(r: R, pos: u64) -> Input<R> {
        Input {
            r,
            buf: vec![0; 1 << 16],
            start: 0,
            end: 0,
            pos,
            eof: false,
        }
    }

    fn avail(&self) -> &[u8] {
        &self.buf[self.start..self.end]
    }

    fn consume(&mut self, n: usize) {
        self.start += n;
        self.pos += n as u64;
    }

    /// Reads more input; false at the end of the stream.
    fn fill(&mut self) -> std::io::Result<bool> {
        if self.start > 0 {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        if self.end == self.buf.len() {
            return Ok(true);
        }
        let n = self.r.read(&mut self.buf[self.end..])?;
        self.end += n;
        self.eof = n == 0;
        Ok(n > 0)
    }

    /// Exactly `n` bytes (n is small: header fields).
    fn take(&mut self, n: usize) -> Result<Vec<u8>, GzipError> {
        while self.avail().len() < n {
            if !self.fill()? {
                return Err(GzipError::Truncated);
            }
        }
        let v = self.avail()[..n].to_vec();
        self.consume(n);
        Ok(v)
    }

    /// Whether any input is left.
    fn at_end(&mut self) -> std::io::Result<bool> {
        if !self.avail().is_empty() {
            return Ok(false);
        }
        Ok(!self.fill()?)
    }
}

/// Skips a gzip member header (RFC 1952).
fn skip_header<R: Read>(inp: &mut Input<R>) -> Result<(), GzipError> {
    let at = inp.pos;
    let h = inp.take(10)?;
    if h[0] != 0x1f || h[1] != 0x8b || h[2] != 8 {
        return Err(GzipError::NotGzip(at));
    }
    let flags = h[3];
    if flags & 4 != 0 {
        let x = inp.take(2)?;
        inp.take(usize::from(u16::from_le_bytes([x[0], x[1]])))?;
    }
    for bit in [8u8, 16] {
        if flags & bit != 0 {
            while inp.take(1)?[0] != 0 {}
        }
    }
    if flags & 2 != 0 {
        inp.take(2)?;
    }
    Ok(())
}

/// The output of one inflate run, kept in a wrapping buffer so the last window is at hand.
struct Out {
    buf: Vec<u8>,
    pos: usize,
    /// Bytes produced since the run started (including a primed window).
    total: u64,
}

impl Out {
    fn new() -> Out {
        Out {
            buf: vec![0; OUT],
            pos: 0,
            total: 0,
        }
    }

    /// An output buffer whose history is `window` (a resumed run).
    fn primed(window: &[u8]) -> Out {
        let mut o = Out::new();
        o.buf[..window.len()].copy_from_slice(window);
        o.pos = window.len();
        o.total = window.len() as u64;
        o
    }

    /// The last `min(total, WINDOW)` bytes.
    fn window(&self) -> Vec<u8> {
        let n = (self.total.min(WINDOW as u64)) as usize;
        let mut w = Vec::with_capacity(n);
        let start = (self.pos + OUT - n) % OUT;
        if start + n <= OUT {
            w.extend_from_slice(&self.buf[start..start + n]);
        } else {
            w.extend_from_slice(&self.buf[start..]);
            w.extend_from_slice(&self.buf[..n - (OUT - start)]);
        }
        w
    }
}

/// One step of inflating: what happened, and the bytes produced (a slice of the buffer).
enum Step {
    Produced(usize, usize),
    Boundary(usize, usize),
    MemberEnd(usize, usize),
    NeedInput,
}

fn step<R: Read>(
    dec: &mut DecompressorOxide,
    inp: &mut Input<R>,
    out: &mut Out,
    flags: u32,
) -> Result<Step, GzipError> {
    let at = inp.pos;
    let (st, used, written) = decompress(dec, inp.avail(), &mut out.buf, out.pos, flags);
    inp.consume(used);
    let start = out.pos;
    out.pos = (out.pos + written) & (OUT - 1);
    out.total += written as u64;
    Ok(match st {
        TINFLStatus::Done => Step::MemberEnd(start, written),
        TINFLStatus::BlockBoundary => Step::Boundary(start, written),
        TINFLStatus::HasMoreOutput => Step::Produced(start, written),
        TINFLStatus::NeedsMoreInput => {
            if written > 0 {
                Step::Produced(start, written)
            } else {
                Step::NeedInput
            }
        }
        _ => return Err(GzipError::Corrupt(at)),
    })
}

const FLAGS: u32 = TINFL_FLAG_HAS_MORE_INPUT | TINFL_FLAG_IGNORE_ADLER32 | TINFL_FLAG_STOP_ON_BLOCK_BOUNDARY;

/// Decompresses a whole gzip stream (all members), as a reader, leaving a restart point at
/// every member start and at the first block boundary after every [`SPAN`] bytes of output,
/// and checking each member's CRC.
pub struct Scanner<R> {
    inp: Input<R>,
    dec: DecompressorOxide,
    out: Out,
    crc: crc32fast::Hasher,
    total: u64,
    last_point: u64,
    windows: u32,
    pending: (usize, usize),
    /// Between members: the next read starts one (or finds the end).
    between: bool,
    done: bool,
    /// Restart points so far, with their windows.
    pub points: Vec<PointWithWindow>,
}

impl<R: Read> Scanner<R> {
    pub fn new(r: R) -> Scanner<R> {
        Scanner {
            inp: Input::new(r, 0),
            dec: DecompressorOxide::new(),
            out: Out::new(),
            crc: crc32fast::Hasher::new(),
            total: 0,
            last_point: 0,
            windows: 0,
            pending: (0, 0),
            between: true,
            done: false,
            points: Vec::new(),
        }
    }

    /// Bytes of compressed input consumed so far.
    pub fn consumed(&self) -> u64 {
        self.inp.pos
    }

    /// The input reader (positioned after whatever was read ahead) and the restart points.
    pub fn into_parts(self) -> (R, Vec<PointWithWindow>) {
        (self.inp.r, self.points)
    }

    /// Starts the next member, or finds the end of the stream.
    fn next_member(&mut self) -> Result<bool, GzipError> {
        if self.inp.at_end()? {
            return Ok(false);
        }
        let p = Point {
            out: self.total,
            input: self.inp.pos,
            bits: None,
            window: None,
        };
        self.points.push((p, Vec::new()));
        skip_header(&mut self.inp)?;
        self.dec = DecompressorOxide::new();
        self.out = Out::new();
        self.crc = crc32fast::Hasher::new();
        self.last_point = self.total;
        self.between = false;
        Ok(true)
    }

    fn end_member(&mut self) -> Result<(), GzipError> {
        let trailer = self.inp.take(8)?;
        let want = u32::from_le_bytes([trailer[0], trailer[1], trailer[2], trailer[3]]);
        let crc = std::mem::replace(&mut self.crc, crc32fast::Hasher::new());
        if want != crc.finalize() {
            return Err(GzipError::Checksum(self.inp.pos));
        }
        self.between = true;
        Ok(())
    }

    /// Records a restart point at the block boundary just reached, if one is due.
    fn maybe_point(&mut self) {
        if self.total - self.last_point < SPAN {
            return;
        }
        if let Some(b) = self.dec.block_boundary_state() {
            let p = Point {
                out: self.total,
                input: self.inp.pos,
                bits: Some((b.bit_buf, b.num_bits)),
                window: Some(self.windows),
            };
            self.points.push((p, self.out.window()));
            self.windows += 1;
            self.last_point = self.total;
        }
    }

    /// Inflates until some output is pending; false at the end of the stream.
    fn produce(&mut self) -> Result<bool, GzipError> {
        loop {
            if self.done {
                return Ok(false);
            }
            if self.between && !self.next_member()? {
                self.done = true;
                return Ok(false);
            }
            let s = step(&mut self.dec, &mut self.inp, &mut self.out, FLAGS)?;
            let (start, n) = match s {
                Step::Produced(s, n) | Step::Boundary(s, n) | Step::MemberEnd(s, n) => (s, n),
                Step::NeedInput => {
                    if !self.inp.fill()? {
                        return Err(GzipError::Truncated);
                    }
                    continue;
                }
            };
            self.crc.update(&self.out.buf[start..start + n]);
            self.total += n as u64;
            match s {
                Step::Boundary(..) => self.maybe_point(),
                Step::MemberEnd(..) => self.end_member()?,
                _ => {}
            }
            if n > 0 {
                self.pending = (start, n);
                return Ok(true);
            }
        }
    }
}

impl<R: Read> Read for Scanner<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.1 == 0 && !self.produce().map_err(std::io::Error::other)? {
            return Ok(0);
        }
        let (s, n) = self.pending;
        let k = n.min(buf.len());
        buf[..k].copy_from_slice(&self.out.buf[s..s + k]);
        self.pending = (s + k, n - k);
        Ok(k)
    }
}

/// Reads decompressed bytes of a gzip stream from a restart point on.
pub struct Resumed<R> {
    inp: Input<R>,
    dec: DecompressorOxide,
    out: Out,
    /// Offset in the decompressed stream of the next byte `read` returns.
    pos: u64,
    /// Produced but not yet returned: `out.buf[pending.0 .. pending.0 + pending.1]`.
    pending: (usize, usize),
    member_done: bool,
}

impl<R: Read> Resumed<R> {
    /// Resumes at `p`, with `r` reading the compressed stream from `p.input` on and `window` the
    /// point's window (empty at a member start).
    pub fn new(r: R, p: &Point, window: &[u8]) -> Result<Resumed<R>, GzipError> {
        let mut inp = Input::new(r, p.input);
        let (dec, out) = match p.bits {
            None => {
                skip_header(&mut inp)?;
                (DecompressorOxide::new(), Out::new())
            }
            Some((bit_buf, num_bits)) => {
                let st = BlockBoundaryState {
                    num_bits,
                    bit_buf,
                    ..BlockBoundaryState::default()
                };
                (DecompressorOxide::from_block_boundary_state(&st), Out::primed(window))
            }
        };
        Ok(Resumed {
            inp,
            dec,
            out,
            pos: p.out,
            pending: (0, 0),
            member_done: false,
        })
    }

    /// The offset in the decompressed stream of the next byte.
    pub fn position(&self) -> u64 {
        self.pos
    }

    fn produce(&mut self) -> Result<bool, GzipError> {
        loop {
            if self.member_done {
                self.inp.take(8)?;
                if self.inp.at_end()? {
                    return Ok(false);
                }
                skip_header(&mut self.inp)?;
                self.dec = DecompressorOxide::new();
                self.out = Out::new();
                self.member_done = false;
            }
            match step(&mut self.dec, &mut self.inp, &mut self.out, FLAGS)? {
                Step::NeedInput => {
                    if !self.inp.fill()? {
                        return Err(GzipError::Truncated);
                    }
                }
                Step::Produced(s, n) | Step::Boundary(s, n) if n > 0 => {
                    self.pending = (s, n);
                    return Ok(true);
                }
                Step::Produced(..) | Step::Boundary(..) => {}
                Step::MemberEnd(s, n) => {
                    self.member_done = true;
                    if n > 0 {
                        self.pending = (s, n);
                        return Ok(true);
                    }
                }
            }
        }
    }
}

impl<R: Read> Read for Resumed<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.pending.1 == 0 && !self.produce().map_err(std::io::Error::other)? {
            return Ok(0);
        }
        let (s, n) = self.pending;
        let k = n.min(buf.len());
        buf[..k].copy_from_slice(&self.out.buf[s..s + k]);
        self.pending = (s + k, n - k);
        self.pos += k as u64;
        Ok(k)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    /// Decompresses `gz` whole; the data and the restart points.
    fn scan(gz: &[u8]) -> Result<(Vec<u8>, Vec<PointWithWindow>), std::io::Error> {
        let mut sc = Scanner::new(gz);
        let mut data = Vec::new();
        sc.read_to_end(&mut data)?;
        Ok((data, sc.points))
    }

    /// Data that compresses somewhat, with long-distance matches.
    fn sample(len: usize) -> Vec<u8> {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut v = Vec::with_capacity(len);
        while v.len() < len {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let word = format!("w{} ", x % 5000);
            v.extend_from_slice(word.as_bytes());
        }
        v.truncate(len);
        v
    }

    fn gzip(parts: &[&[u8]]) -> Vec<u8> {
        let mut out = Vec::new();
        for p in parts {
            let mut e = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::default());
            e.write_all(p).expect("compress");
            out.extend(e.finish().expect("finish"));
        }
        out
    }

    #[test]
    fn every_restart_point_reproduces_the_stream_from_there() {
        let a = sample(9 << 20);
        let b = sample(300_000);
        let gz = gzip(&[&a, &b]);
        let (data, points) = scan(&gz).expect("scan");
        let mut whole = a.clone();
        whole.extend_from_slice(&b);
        assert_eq!(data, whole);
        assert!(points.len() >= 5, "{} points", points.len());
        assert!(points.iter().any(|(p, _)| p.bits.is_some()));
        assert_eq!(
            points.iter().filter(|(p, _)| p.bits.is_none()).count(),
            2,
            "two members"
        );
        for (p, w) in &points {
            let mut r = Resumed::new(&gz[p.input as usize..], p, w).expect("resume");
            let mut got = vec![0u8; 100_000.min(whole.len() - p.out as usize)];
            r.read_exact(&mut got).expect("read");
            assert_eq!(got[..], whole[p.out as usize..p.out as usize + got.len()], "at {p:?}");
        }
    }

    #[test]
    fn corruption_and_truncation_are_errors() {
        let gz = gzip(&[&sample(1 << 20)]);
        assert!(scan(&gz[..gz.len() - 100]).is_err());
        let mut bad = gz.clone();
        let mid = bad.len() / 2;
        bad[mid] ^= 0x55;
        assert!(scan(&bad).is_err());
        assert!(scan(b"not gzip at all").is_err());
    }
}
