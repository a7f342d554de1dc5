//! A small blocking RESP2 client: what the tests and the bench use to talk
//! to quorumkv's RESP port and to `redis-server` (no crates).

use std::io::{self, BufRead, BufReader, Write};
use std::net::TcpStream;
use std::time::Duration;

use crate::resp::{Reply, encode_command as encode};

/// The longest bulk string a reply may carry.
const MAX_BULK: i64 = 1 << 30;

fn bad(what: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, what)
}

/// One line without its `\r\n`.
fn line<R: BufRead>(r: &mut R) -> io::Result<String> {
    let mut s = String::new();
    if r.read_line(&mut s)? == 0 {
        return Err(io::Error::new(io::ErrorKind::UnexpectedEof, "the server closed the connection"));
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
pub fn read_reply<R: BufRead>(r: &mut R) -> io::Result<Reply> {
    let l = line(r)?;
    let (kind, rest) = l.split_at_checked(1).ok_or_else(|| bad("empty reply line".into()))?;
    Ok(match kind {
        "+" => Reply::Simple(rest.to_string()),
        "-" => Reply::Error(rest.to_string()),
        ":" => Reply::Integer(number(rest)?),
        "$" => match number(rest)? {
            -1 => Reply::Bulk(None),
            n if (0..=MAX_BULK).contains(&n) => {
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
        "_" => Reply::Bulk(None),
        "%" => match number(rest)? {
            n if n >= 0 => Reply::Map((0..n).map(|_| Ok((read_reply(r)?, read_reply(r)?))).collect::<io::Result<_>>()?),
            n => return Err(bad(format!("map length {n}"))),
        },
        "*" => match number(rest)? {
            -1 => Reply::Array(None),
            n if n >= 0 => Reply::Array(Some((0..n).map(|_| read_reply(r)).collect::<io::Result<_>>()?)),
            n => return Err(bad(format!("array length {n}"))),
        },
        _ => return Err(bad(format!("unknown reply type in {l:?}"))),
    })
}

/// One connection to a RESP server.
pub struct Resp {
    stream: TcpStream,
    reader: BufReader<TcpStream>,
    buf: Vec<u8>,
}

impl Resp {
    /// Connects to 127.0.0.1:`port`; requests wait at most `timeout` for their reply.
    pub fn connect(port: u16, timeout: Duration) -> io::Result<Resp> {
        let stream = TcpStream::connect_timeout(&([127, 0, 0, 1], port).into(), timeout)?;
        stream.set_nodelay(true)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        let reader = BufReader::with_capacity(64 << 10, stream.try_clone()?);
        Ok(Resp { stream, reader, buf: Vec::new() })
    }

    /// Sends one command and reads its reply.
    pub fn command(&mut self, args: &[&[u8]]) -> io::Result<Reply> {
        self.buf.clear();
        encode(&mut self.buf, args);
        self.stream.write_all(&self.buf)?;
        read_reply(&mut self.reader)
    }

    /// The socket (for timeouts, shutdowns and raw reads).
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Sends raw bytes (e.g. an inline command, or a broken one).
    pub fn send_raw(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.stream.write_all(bytes)
    }

    /// Reads the next reply.
    pub fn read(&mut self) -> io::Result<Reply> {
        read_reply(&mut self.reader)
    }

    /// Sends every command in one write, then reads their replies.
    pub fn pipeline(&mut self, commands: &[Vec<Vec<u8>>]) -> io::Result<Vec<Reply>> {
        let mut buf = Vec::new();
        for c in commands {
            let args: Vec<&[u8]> = c.iter().map(Vec::as_slice).collect();
            encode(&mut buf, &args);
        }
        self.stream.write_all(&buf)?;
        commands.iter().map(|_| self.read()).collect()
    }

    /// Queues a command for [`send_queued`](Self::send_queued).
    pub fn queue(&mut self, args: &[&[u8]]) {
        encode(&mut self.buf, args);
    }

    /// Sends the `n` queued commands in one write and reads their replies;
    /// an error if any is not `+OK`.
    pub fn send_queued(&mut self, n: usize) -> io::Result<()> {
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
