//! Length-prefixed frames.
//!
//! A frame is a 4-byte big-endian length `n`, then `n` bytes of one protobuf
//! message. [`FrameReader`] reads frames from any `Read` with its own buffer:
//! it reads as much as the socket has, hands out whole frames one by one, and
//! tells a clean end of stream (`Ok(None)`, the peer closed between frames)
//! from a half frame (`Err(Truncated)`). A length above the reader's cap is
//! refused *before* anything is allocated, so a hostile `0xFFFFFFFF` prefix
//! costs nothing. A read that times out keeps the partial frame, so a reader
//! with a socket timeout can poll without losing its place.
//!
//! [`encode_frame`] builds the length and body in one buffer so each frame
//! goes out in a single `write`.

use std::fmt;
use std::io::{self, Read, Write};

use byteorder::{BigEndian, ByteOrder};
use prost::Message;

/// Bytes of the length prefix.
pub const HEADER_LEN: usize = 4;

const INITIAL_BUFFER: usize = 8 * 1024;
/// A buffer grown past this by a large frame is given back once it is empty.
const KEEP_BUFFER: usize = 64 * 1024;

/// Why a frame could not be read.
#[derive(Debug)]
pub enum FrameError {
    /// The socket failed or timed out (a timeout keeps the partial frame).
    Io(io::Error),
    /// The length prefix exceeds the cap; the stream cannot be resynchronised.
    TooLarge {
        /// Announced length.
        len: u64,
        /// The reader's cap.
        max: usize,
    },
    /// The stream ended in the middle of a frame.
    Truncated {
        /// Bytes of the frame (prefix included) that arrived.
        got: usize,
    },
}

impl FrameError {
    /// Whether this is a read timeout (the reader can be called again).
    pub fn is_timeout(&self) -> bool {
        matches!(self, FrameError::Io(e) if matches!(e.kind(), io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut))
    }
}

impl fmt::Display for FrameError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FrameError::Io(e) => write!(f, "read failed: {e}"),
            FrameError::TooLarge { len, max } => write!(f, "frame of {len} bytes exceeds the limit of {max} bytes"),
            FrameError::Truncated { got } => write!(f, "connection closed in the middle of a frame ({got} bytes received)"),
        }
    }
}

impl std::error::Error for FrameError {}

/// Reads frames from `R` through an internal buffer.
pub struct FrameReader<R> {
    inner: R,
    buf: Vec<u8>,
    start: usize,
    end: usize,
    max: usize,
}

impl<R: Read> FrameReader<R> {
    /// A reader that refuses frames longer than `max` bytes (prefix excluded).
    pub fn new(inner: R, max: usize) -> Self {
        FrameReader { inner, buf: vec![0; INITIAL_BUFFER], start: 0, end: 0, max }
    }

    /// The underlying reader.
    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    /// Whether a whole frame is already buffered (the next call returns it without blocking).
    /// A length prefix over the cap is not a frame: a server that holds back replies while
    /// more requests are buffered must send them before it reads the refused prefix.
    pub fn has_frame(&self) -> bool {
        let avail = self.end - self.start;
        avail >= HEADER_LEN && {
            let len = BigEndian::read_u32(&self.buf[self.start..]) as usize;
            len <= self.max && avail >= HEADER_LEN + len
        }
    }

    /// The next frame's body; `Ok(None)` on a clean end of stream.
    pub fn read_frame(&mut self) -> Result<Option<&[u8]>, FrameError> {
        loop {
            let avail = self.end - self.start;
            if avail >= HEADER_LEN {
                let len = BigEndian::read_u32(&self.buf[self.start..]) as usize;
                if len > self.max {
                    return Err(FrameError::TooLarge { len: len as u64, max: self.max });
                }
                if avail >= HEADER_LEN + len {
                    let body = self.start + HEADER_LEN;
                    self.start = body + len;
                    return Ok(Some(&self.buf[body..body + len]));
                }
                self.make_room(HEADER_LEN + len);
            } else {
                self.make_room(HEADER_LEN);
            }
            match self.inner.read(&mut self.buf[self.end..]) {
                Ok(0) if self.start == self.end => return Ok(None),
                Ok(0) => return Err(FrameError::Truncated { got: self.end - self.start }),
                Ok(n) => self.end += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(FrameError::Io(e)),
            }
        }
    }

    /// Ensures the buffer can hold `need` bytes from `start`, compacting or growing it.
    fn make_room(&mut self, need: usize) {
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
            if self.buf.len() > KEEP_BUFFER && need <= INITIAL_BUFFER {
                self.buf = vec![0; INITIAL_BUFFER];
            }
        }
        if self.start + need > self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
            if need > self.buf.len() {
                // Grow with what has arrived, not with what the prefix announces: a
                // peer that sends a large prefix and stalls costs little memory.
                let have = self.end - self.start;
                let target = need.min(have.max(INITIAL_BUFFER) * 2).max(self.buf.len());
                self.buf.resize(target, 0);
            }
        } else if self.end == self.buf.len() {
            // Room is there but behind `start`: compact so `read` has space.
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
    }
}

/// Encodes `msg` as one frame into `buf` (cleared first).
pub fn encode_frame<M: Message>(msg: &M, buf: &mut Vec<u8>) {
    buf.clear();
    append_frame(msg, buf);
}

/// Appends `msg` as one frame to `buf`.
pub fn append_frame<M: Message>(msg: &M, buf: &mut Vec<u8>) {
    let len = msg.encoded_len();
    buf.reserve(HEADER_LEN + len);
    buf.extend_from_slice(&(len as u32).to_be_bytes());
    // Cannot fail: the buffer grows as needed.
    msg.encode(buf).expect("encoding into a Vec cannot run out of space");
}

/// Encodes `msg` as one frame and writes it with a single `write_all`.
pub fn write_frame<M: Message, W: Write>(w: &mut W, msg: &M, buf: &mut Vec<u8>) -> io::Result<()> {
    encode_frame(msg, buf);
    w.write_all(buf)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;
    use std::io::Cursor;

    fn frame(body: &[u8]) -> Vec<u8> {
        let mut v = (body.len() as u32).to_be_bytes().to_vec();
        v.extend_from_slice(body);
        v
    }

    /// A reader that returns at most `chunk` bytes per read.
    struct Trickle<'a>(&'a [u8], usize);
    impl Read for Trickle<'_> {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.0.len().min(self.1).min(out.len());
            out[..n].copy_from_slice(&self.0[..n]);
            self.0 = &self.0[n..];
            Ok(n)
        }
    }

    #[test]
    fn reads_back_to_back_frames_then_clean_eof() {
        let mut bytes = frame(b"one");
        bytes.extend(frame(b""));
        bytes.extend(frame(&[7u8; 20_000]));
        for chunk in [1, 3, 4096, 1 << 20] {
            let mut r = FrameReader::new(Trickle(&bytes, chunk), 1 << 20);
            assert_eq!(r.read_frame().unwrap().unwrap(), b"one");
            assert_eq!(r.read_frame().unwrap().unwrap(), b"");
            assert_eq!(r.read_frame().unwrap().unwrap(), &[7u8; 20_000][..]);
            assert!(r.read_frame().unwrap().is_none(), "chunk {chunk}");
        }
    }

    #[test]
    fn truncated_body_is_an_error_not_eof() {
        let mut bytes = frame(b"hello world");
        bytes.truncate(8);
        let mut r = FrameReader::new(Cursor::new(bytes), 1024);
        assert!(matches!(r.read_frame(), Err(FrameError::Truncated { got: 8 })));
    }

    #[test]
    fn truncated_prefix_is_an_error() {
        let mut r = FrameReader::new(Cursor::new(vec![0u8, 0]), 1024);
        assert!(matches!(r.read_frame(), Err(FrameError::Truncated { got: 2 })));
    }

    #[test]
    fn announced_length_is_not_allocated_before_it_arrives() {
        let mut bytes = (900_000u32).to_be_bytes().to_vec();
        bytes.extend_from_slice(&[1, 2, 3]);
        let mut r = FrameReader::new(Cursor::new(bytes), 1 << 20);
        assert!(matches!(r.read_frame(), Err(FrameError::Truncated { got: 7 })));
        assert!(r.buf.len() <= 2 * INITIAL_BUFFER, "allocated {} bytes for 7 received", r.buf.len());
    }

    #[test]
    fn oversize_prefix_is_refused_without_allocating() {
        let mut r = FrameReader::new(Cursor::new(vec![0xFF, 0xFF, 0xFF, 0xFF, 1, 2, 3]), 1 << 20);
        match r.read_frame() {
            Err(FrameError::TooLarge { len, max }) => {
                assert_eq!(len, u32::MAX as u64);
                assert_eq!(max, 1 << 20);
            }
            other => panic!("expected TooLarge, got {other:?}"),
        }
        assert!(r.buf.len() <= INITIAL_BUFFER);
    }

    /// A server answers the requests before an oversize prefix only if this says no frame is waiting.
    #[test]
    fn an_oversize_prefix_is_not_a_buffered_frame() {
        let mut bytes = frame(b"first");
        bytes.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 1, 2]);
        let mut r = FrameReader::new(Cursor::new(bytes), 1024);
        assert_eq!(r.read_frame().unwrap().unwrap(), b"first");
        assert!(!r.has_frame(), "the refused prefix must not hold back the first frame's reply");
        assert!(matches!(r.read_frame(), Err(FrameError::TooLarge { .. })));
    }

    #[test]
    fn garbage_bodies_fail_to_decode_but_do_not_panic() {
        let garbage: [&[u8]; 5] = [b"\xff\xff\xff\xff", b"\x0a\x80", b"\x12\x05ab", &[0u8; 9], b"\x1a\xff\xff\xff\xff\x0f"];
        for g in garbage {
            let bytes = frame(g);
            let mut r = FrameReader::new(Cursor::new(bytes), 1024);
            let body = r.read_frame().unwrap().unwrap();
            // Either an error or some message: never a panic.
            let _ = <proto::Request as Message>::decode(body);
        }
    }

    #[test]
    fn encode_then_read_round_trips() {
        let req = proto::Request {
            id: 42,
            body: Some(proto::request::Body::Put(proto::Put {
                key: b"7".to_vec(),
                value: "x".repeat(300).into(),
                consistency: 2,
                condition: None,
            })),
        };
        let mut buf = Vec::new();
        encode_frame(&req, &mut buf);
        assert_eq!(BigEndian::read_u32(&buf) as usize, buf.len() - 4);
        let mut r = FrameReader::new(Cursor::new(buf), 4096);
        let back = proto::Request::decode(r.read_frame().unwrap().unwrap()).unwrap();
        assert_eq!(back, req);
    }

    #[test]
    fn timeout_keeps_the_partial_frame() {
        /// Returns the first part, then a timeout, then the rest.
        struct Stutter(Vec<u8>, usize, bool);
        impl Read for Stutter {
            fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
                if self.1 == 6 && !self.2 {
                    self.2 = true;
                    return Err(io::Error::new(io::ErrorKind::WouldBlock, "later"));
                }
                let end = if self.1 < 6 { 6 } else { self.0.len() };
                let n = (end - self.1).min(out.len());
                out[..n].copy_from_slice(&self.0[self.1..self.1 + n]);
                self.1 += n;
                Ok(n)
            }
        }
        let mut r = FrameReader::new(Stutter(frame(b"abcdefgh"), 0, false), 64);
        let err = r.read_frame().unwrap_err();
        assert!(err.is_timeout());
        assert_eq!(r.read_frame().unwrap().unwrap(), b"abcdefgh");
    }
}
