//! zstd streams, entered at frame starts.
//!
//! A zstd frame can only be decoded from its beginning, and nothing of a decoder's state in the
//! middle of one can be saved. So the restart points of a zstd layer are its frame starts: one
//! per file in zstd:chunked layers (whose table of contents gives them anyway), and only the
//! start of the stream in a plain zstd layer written as one frame, where a read inflates from
//! the start of the layer and the content cache keeps what it produced.

use std::io::Read;

use zstd::stream::raw::{Decoder, InBuffer, Operation, OutBuffer};

/// A frame start: offsets in the compressed and the decompressed stream.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Frame {
    pub input: u64,
    pub out: u64,
}

/// Decompresses a zstd stream from a frame start on, as a reader, noting every frame start.
pub struct Scanner<R> {
    r: R,
    dec: Decoder<'static>,
    inbuf: Vec<u8>,
    in_start: usize,
    in_end: usize,
    input: u64,
    out: u64,
    /// The next byte starts a frame.
    at_frame_start: bool,
    eof: bool,
    /// Every frame start met so far.
    pub frames: Vec<Frame>,
}

impl<R: Read> Scanner<R> {
    /// Reads the stream `r`, which starts at frame `at`.
    pub fn new(r: R, at: Frame) -> std::io::Result<Scanner<R>> {
        Ok(Scanner {
            r,
            dec: Decoder::new()?,
            inbuf: vec![0; 1 << 17],
            in_start: 0,
            in_end: 0,
            input: at.input,
            out: at.out,
            at_frame_start: true,
            eof: false,
            frames: Vec::new(),
        })
    }

    /// Bytes of compressed input consumed so far (counted from the stream's start).
    pub fn consumed(&self) -> u64 {
        self.input
    }

    /// The offset in the decompressed stream of the next byte.
    pub fn position(&self) -> u64 {
        self.out
    }

    /// The input reader (positioned after whatever was read ahead) and the frame starts.
    pub fn into_parts(self) -> (R, Vec<Frame>) {
        (self.r, self.frames)
    }

    fn fill(&mut self) -> std::io::Result<()> {
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = self.r.read(&mut self.inbuf)?;
            self.eof = self.in_end == 0;
        }
        Ok(())
    }
}

impl<R: Read> Read for Scanner<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if buf.is_empty() {
            return Ok(0);
        }
        loop {
            self.fill()?;
            if self.eof {
                if !self.at_frame_start {
                    return Err(std::io::Error::new(
                        std::io::ErrorKind::UnexpectedEof,
                        "truncated zstd stream",
                    ));
                }
                return Ok(0);
            }
            if self.at_frame_start {
                self.frames.push(Frame {
                    input: self.input,
                    out: self.out,
                });
                self.at_frame_start = false;
            }
            let mut ib = InBuffer::around(&self.inbuf[self.in_start..self.in_end]);
            let mut ob = OutBuffer::around(buf);
            let hint = self.dec.run(&mut ib, &mut ob)?;
            let (used, made) = (ib.pos(), ob.pos());
            self.in_start += used;
            self.input += used as u64;
            self.out += made as u64;
            if hint == 0 {
                self.at_frame_start = true;
            }
            if made > 0 {
                return Ok(made);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_are_found_and_each_can_be_entered() {
        let parts: Vec<Vec<u8>> = (0..5u8).map(|i| vec![i; 200_000 + usize::from(i)]).collect();
        let mut blob = Vec::new();
        for p in &parts {
            blob.extend(zstd::encode_all(&p[..], 3).expect("compress"));
        }
        let mut sc = Scanner::new(&blob[..], Frame { input: 0, out: 0 }).expect("scanner");
        let mut all = Vec::new();
        sc.read_to_end(&mut all).expect("read");
        assert_eq!(all, parts.concat());
        assert_eq!(sc.frames.len(), 5);
        let f = sc.frames[3];
        let mut again = Scanner::new(&blob[f.input as usize..], f).expect("resume");
        let mut got = Vec::new();
        again.read_to_end(&mut got).expect("read");
        assert_eq!(got, parts[3..].concat());
        assert!(
            Scanner::new(&blob[..blob.len() - 10], Frame { input: 0, out: 0 })
                .expect("scanner")
                .read_to_end(&mut Vec::new())
                .is_err()
        );
    }
}
