//! A minimal client for redis' RESP2 protocol: enough to load keys with
//! pipelined `SET`s and to ask `PING`, `DBSIZE`, `SAVE` and `INFO` (no crates).
//!
//! A command is an array of bulk strings (`*3\r\n$3\r\nSET\r\n$1\r\nk\r\n…`);
//! a reply is a simple string (`+OK`), an error (`-LOADING …`), an integer
//! (`:42`), a bulk string (`$5\r\nhello`, `$-1` for none) or an array of replies.

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

/// Appends the command `args` (e.g. `[b"SET", key, value]`) to `buf`.
pub(crate) use quorumkv::resp::encode_command as encode;

/// One reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum Reply {
    /// `+OK`
    Simple(String),
    /// `-ERR …`, `-LOADING …`
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello` (`None`: `$-1`)
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…` (`None`: `*-1`)
    Array(Option<Vec<Reply>>),
}

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One line without its `\r\n`.
fn line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "redis closed the connection"));
    }
    match s.strip_suffix("\r\n") {
        Some(l) => Ok(l.to_string()),
        None => Err(bad(format!("reply line without CRLF: {s:?}"))),
    }
}

fn number(s: &str) -> io::Result<i64> {
    s.parse().map_err(|_| bad(format!("{s:?} is not a number")))
}

/// Reads one reply.
pub(crate) fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    let l = line(r)?;
    let (kind, rest) = l.split_at_checked(1).ok_or_else(|| bad("empty reply line".into()))?;
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(number(rest)?),
        "$" => match number(rest)? {
            -1 => Reply::Bulk(None),
            n if n >= 0 => {
                let mut data = vec![0; n as usize + 2];
                r.read_exact(&mut data)?;
                if !data.ends_with(b"\r\n") {
                    return Err(bad("bulk string without CRLF".into()));
                }
                data.truncate(n as usize);
                Reply::Bulk(Some(data))
            }
            n => return Err(bad(format!("bulk length {n}"))),
        },
        "*" => match number(rest)? {
            -1 => Reply::Array(None),
            n if n >= 0 => Reply::Array(Some((0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?)),
            n => return Err(bad(format!("array length {n}"))),
        },
        _ => return Err(bad(format!("unknown reply type in {l:?}"))),
    })
}

/// One connection to a redis server.
pub(crate) struct Resp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Resp {
    /// Connects to 127.0.0.1:`port`; requests wait at most `timeout` for their reply.
    pub(crate) fn connect(port: u16, timeout: Duration) -> io::Result<Resp> {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let reader = BufReader::with_capacity(64 << 10, stream.try_clone()?);
        Ok(Resp { stream, reader, buf: Vec::new() })
    }

    /// Sends one command and reads its reply.
    pub(crate) fn command(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.buf.clear();
        encode(&mut self.buf, args);
        self.stream.write_all(&self.buf)?;
        read_reply(&mut self.reader)
    }

    /// Queues a command for [`send_queued`](Self::send_queued).
    pub(crate) fn queue(&mut self, args: &[&[u8]]) {
        encode(&mut self.buf, args);
    }

    /// Sends the `n` queued commands in one write and reads their replies;
    /// an error if any is not `+OK`.
    pub(crate) fn send_queued(&mut self, n: usize) -> io::Result<()> {
        let sent = self.stream.write_all(&self.buf);
        self.buf.clear();
        sent?;
        for _ in 0..n {
            match read_reply(&mut self.reader)? {
                Reply::Simple(s) if s == "OK" => {}
                other => return Err(bad(format!("unexpected reply {other:?}"))),
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut buf = Vec::new();
        encode(&mut buf, &[b"SET", b"k1", b"a\r\nb"]);
        encode(&mut buf, &[b"DBSIZE"]);
        assert_eq!(buf, b"*3\r\n$3\r\nSET\r\n$2\r\nk1\r\n$4\r\na\r\nb\r\n*1\r\n$6\r\nDBSIZE\r\n");
    }

    #[test]
    fn every_reply_kind_parses() {
        let wire = b"+OK\r\n-LOADING Redis is loading\r\n:1000000\r\n$5\r\nhel\r\n\r\n$-1\r\n*2\r\n:1\r\n*1\r\n$0\r\n\r\n*-1\r\n";
        let mut r = &wire[..];
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Simple("OK".into()));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Error("LOADING Redis is loading".into()));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Integer(1_000_000));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(Some(b"hel\r\n".to_vec())));
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Bulk(None));
        assert_eq!(
            read_reply(&mut r).unwrap(),
            Reply::Array(Some(vec![Reply::Integer(1), Reply::Array(Some(vec![Reply::Bulk(Some(Vec::new()))]))]))
        );
        assert_eq!(read_reply(&mut r).unwrap(), Reply::Array(None));
        assert_eq!(read_reply(&mut r).unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }

    #[test]
    fn malformed_replies_are_errors() {
        for wire in [&b"?x\r\n"[..], b":12a\r\n", b"+OK\n", b"$3\r\nabcd\r\n", b"$-5\r\n", b"\r\n"] {
            let mut r = wire;
            assert!(read_reply(&mut r).is_err(), "{:?}", String::from_utf8_lossy(wire));
        }
    }
}
