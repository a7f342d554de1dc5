//! The Redis protocol, as a replica speaks it on `--resp-port` (issue 16).
//! This file is the I/O-free codec: bytes into commands, replies into bytes
//! (RESP2, and RESP3 after `HELLO 3`), every size bounded, so it can be
//! tested (and fuzzed) alone. [`command`] types a command, [`session`] runs
//! it on the node, [`glob`] matches `SCAN` patterns, [`client`] is the small
//! client of the tests and the bench; the socket side is
//! [`crate::net::resp_conn`].
//!
//! # The wire
//!
//! A client sends a command as an **array of bulk strings**:
//! `*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n`. Or, for people typing into
//! `telnet` or `nc`, as an **inline command**: one line, arguments separated
//! by spaces, with Redis's quoting (`"a b\x41"`, `'it''s'` is two args:
//! single quotes take only `\'`). Commands may be pipelined: several in one
//! read, replies in order.
//!
//! Replies are a simple string (`+OK`), an error (`-ERR …`), an integer
//! (`:1`), a bulk string (`$5\r\nhello`, `$-1` for nil) or an array of
//! replies (`*-1` for a nil array, as `EXEC` answers when a watched key
//! changed).
//!
//! # Bad input
//!
//! As Redis does, a malformed command is answered with
//! `-ERR Protocol error: …` and the connection is closed (the rest of the
//! stream cannot be trusted to be framed). Sizes are capped before anything
//! is allocated: a bulk string at [`Limits::max_bulk`] (the replica's value
//! limit plus room), an array at [`Limits::max_args`], an inline line at
//! [`Limits::max_inline`]. [`Parser::parse`] never panics on any input (the
//! fuzz test feeds it random and mutated streams).

pub mod client;
pub mod command;
pub mod glob;
pub mod session;

use std::fmt::Write as _;

/// Caps on what a client may send.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// The largest bulk string (an argument).
    pub max_bulk: usize,
    /// The most arguments in one command.
    pub max_args: usize,
    /// The longest inline command line (Redis: 64 KiB).
    pub max_inline: usize,
}

impl Limits {
    /// Caps for a replica whose values may be `max_value_bytes` long.
    pub fn for_values(max_value_bytes: usize) -> Limits {
        Limits { max_bulk: max_value_bytes + 1024, max_args: 1 << 16, max_inline: 64 << 10 }
    }
}

/// A protocol error: the reply's text (after `-ERR `); the connection is
/// closed after it, as Redis does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProtocolError(pub String);

impl std::fmt::Display for ProtocolError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Protocol error: {}", self.0)
    }
}

/// One command: its arguments, the name first (as sent: any case).
pub type Command = Vec<Vec<u8>>;

/// A command read in part: how many arguments it has, those taken so far,
/// and where the next one starts (from the command's first byte).
#[derive(Debug, Default)]
pub struct Partial {
    count: usize,
    args: Vec<Vec<u8>>,
    pos: usize,
}

/// Reads commands from a buffer that grows as bytes arrive.
#[derive(Debug, Clone, Copy)]
pub struct Parser {
    limits: Limits,
}

/// Why a length line is bad.
enum LineError {
    /// No line end within the cap.
    TooLong,
    /// A CR not followed by LF.
    NoLf,
}

/// Where a length line ends: the index of its `\r`, if the line is complete.
fn line_end(buf: &[u8], from: usize, cap: usize) -> Result<Option<usize>, LineError> {
    let window = &buf[from.min(buf.len())..];
    match window.iter().position(|&b| b == b'\r') {
        Some(i) if i > cap => Err(LineError::TooLong),
        Some(i) => match window.get(i + 1) {
            Some(b'\n') => Ok(Some(from + i)),
            Some(_) => Err(LineError::NoLf),
            None => Ok(None),
        },
        None if window.len() > cap => Err(LineError::TooLong),
        None => Ok(None),
    }
}

/// A decimal length, possibly negative (`*-1`, `$-1`); `None` if not a number.
fn parse_len(digits: &[u8]) -> Option<i64> {
    if digits.is_empty() || digits.len() > 20 {
        return None;
    }
    let (neg, digits) = match digits.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, digits),
    };
    if digits.is_empty() || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let n: i64 = std::str::from_utf8(digits).ok()?.parse().ok()?;
    Some(if neg { -n } else { n })
}

impl Parser {
    /// A parser with these caps.
    pub fn new(limits: Limits) -> Parser {
        Parser { limits }
    }

    /// The first whole command in `buf` and how many bytes it took;
    /// `Ok(None)` if more bytes are needed. An empty inline line takes its
    /// bytes and gives an empty command (Redis ignores it; so should the caller).
    pub fn parse(&self, buf: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
        self.parse_more(buf, &mut Partial::default())
    }

    /// [`parse`](Self::parse), resuming where an earlier call on the same
    /// command left off (`partial`: the arguments it already took), so a
    /// command arriving in many small pieces is read in linear time. `buf`
    /// must start where the command starts; `partial` is reset when a
    /// command is returned or an error is.
    pub fn parse_more(&self, buf: &[u8], partial: &mut Partial) -> Result<Option<(Command, usize)>, ProtocolError> {
        let result = match buf.first() {
            None => Ok(None),
            Some(b'*') => self.multibulk(buf, partial),
            Some(_) => self.inline(buf),
        };
        if !matches!(result, Ok(None)) {
            *partial = Partial::default();
        }
        result
    }

    fn multibulk(&self, buf: &[u8], partial: &mut Partial) -> Result<Option<(Command, usize)>, ProtocolError> {
        if partial.count == 0 {
            let bad_count = |e| match e {
                LineError::TooLong => ProtocolError("too big mbulk count string".into()),
                LineError::NoLf => ProtocolError("invalid multibulk length".into()),
            };
            let Some(end) = line_end(buf, 1, 32).map_err(bad_count)? else { return Ok(None) };
            let count = parse_len(&buf[1..end]).ok_or_else(|| ProtocolError("invalid multibulk length".into()))?;
            if count <= 0 {
                // `*0` and `*-1` are empty commands, skipped.
                return Ok(Some((Vec::new(), end + 2)));
            }
            if count as u64 > self.limits.max_args as u64 {
                return Err(ProtocolError("invalid multibulk length".into()));
            }
            partial.count = count as usize;
            partial.pos = end + 2;
            partial.args = Vec::with_capacity(partial.count.min(64));
        }
        let mut pos = partial.pos;
        while partial.args.len() < partial.count {
            let Some(&first) = buf.get(pos) else { return Ok(None) };
            if first != b'$' {
                return Err(ProtocolError(format!("expected '$', got '{}'", char::from(first).escape_default())));
            }
            let bad_len = |e| match e {
                LineError::TooLong => ProtocolError("too big bulk count string".into()),
                LineError::NoLf => ProtocolError("invalid bulk length".into()),
            };
            let Some(end) = line_end(buf, pos + 1, 32).map_err(bad_len)? else {
                return Ok(None);
            };
            let len = parse_len(&buf[pos + 1..end]).ok_or_else(|| ProtocolError("invalid bulk length".into()))?;
            if len < 0 || len as u64 > self.limits.max_bulk as u64 {
                return Err(ProtocolError("invalid bulk length".into()));
            }
            let start = end + 2;
            let stop = start + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err(ProtocolError("bulk string not followed by CRLF".into()));
            }
            partial.args.push(buf[start..stop].to_vec());
            pos = stop + 2;
            partial.pos = pos;
        }
        Ok(Some((std::mem::take(&mut partial.args), pos)))
    }

    fn inline(&self, buf: &[u8]) -> Result<Option<(Command, usize)>, ProtocolError> {
        let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
            if buf.len() > self.limits.max_inline {
                return Err(ProtocolError("too big inline request".into()));
            }
            return Ok(None);
        };
        if nl > self.limits.max_inline {
            return Err(ProtocolError("too big inline request".into()));
        }
        let line = buf[..nl].strip_suffix(b"\r").unwrap_or(&buf[..nl]);
        let args = split_args(line).ok_or_else(|| ProtocolError("unbalanced quotes in request".into()))?;
        if args.len() > self.limits.max_args {
            return Err(ProtocolError("invalid multibulk length".into()));
        }
        Ok(Some((args, nl + 1)))
    }
}

fn hex(b: u8) -> Option<u8> {
    match b {
        b'0'..=b'9' => Some(b - b'0'),
        b'a'..=b'f' => Some(b - b'a' + 10),
        b'A'..=b'F' => Some(b - b'A' + 10),
        _ => None,
    }
}

/// Splits an inline command line into arguments as Redis's `sdssplitargs`
/// does: spaces separate; `"…"` takes `\n \r \t \b \a \\ \"` and `\xHH`;
/// `'…'` takes `\'`; a closing quote must be followed by a space or the end.
/// `None` for unbalanced quotes.
pub fn split_args(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < line.len() && line[i].is_ascii_whitespace() {
            i += 1;
        }
        if i >= line.len() {
            return Some(args);
        }
        let mut arg = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            let c = line.get(i).copied();
            if dq {
                match c {
                    None => return None,
                    Some(b'\\')
                        if line.get(i + 1) == Some(&b'x')
                            && line.get(i + 2).and_then(|&b| hex(b)).is_some()
                            && line.get(i + 3).and_then(|&b| hex(b)).is_some() =>
                    {
                        arg.push(hex(line[i + 2])? * 16 + hex(line[i + 3])?);
                        i += 3;
                    }
                    Some(b'\\') if i + 1 < line.len() => {
                        i += 1;
                        arg.push(match line[i] {
                            b'n' => b'\n',
                            b'r' => b'\r',
                            b't' => b'\t',
                            b'b' => 8,
                            b'a' => 7,
                            other => other,
                        });
                    }
                    Some(b'"') => {
                        // The closing quote must end the argument.
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(b) => arg.push(b),
                }
            } else if sq {
                match c {
                    None => return None,
                    Some(b'\\') if line.get(i + 1) == Some(&b'\'') => {
                        i += 1;
                        arg.push(b'\'');
                    }
                    Some(b'\'') => {
                        if line.get(i + 1).is_some_and(|b| !b.is_ascii_whitespace()) {
                            return None;
                        }
                        i += 1;
                        break;
                    }
                    Some(b) => arg.push(b),
                }
            } else {
                match c {
                    None => break,
                    Some(b) if b.is_ascii_whitespace() => break,
                    Some(b'"') => dq = true,
                    Some(b'\'') => sq = true,
                    Some(b) => arg.push(b),
                }
            }
            i += 1;
        }
        args.push(arg);
    }
}

/// The protocol version a connection speaks: RESP2 until `HELLO 3`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Version {
    /// RESP2 (every client's default before `HELLO`).
    #[default]
    Resp2,
    /// RESP3.
    Resp3,
}

/// A reply, as the client will read it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply {
    /// `+OK`: a short status without CR or LF.
    Simple(String),
    /// `-ERR …`: the whole text, its code first (`ERR`, `UNAVAILABLE`, …).
    Error(String),
    /// `:42`
    Integer(i64),
    /// `$5\r\nhello`; `None`: nil (`$-1`).
    Bulk(Option<Vec<u8>>),
    /// `*2\r\n…`; `None`: a nil array (`*-1`).
    Array(Option<Vec<Reply>>),
    /// Keys and values: RESP3's map (`%2\r\n…`), a flat array in RESP2.
    Map(Vec<(Reply, Reply)>),
}

impl Reply {
    /// `+OK`.
    pub fn ok() -> Reply {
        Reply::Simple("OK".into())
    }

    /// An error reply `-CODE text` (CR and LF in `text` become spaces: they would end the line).
    pub fn error(code: &str, text: &str) -> Reply {
        Reply::Error(format!("{code} {text}"))
    }

    /// Appends the reply's RESP2 bytes to `out`.
    pub fn encode(&self, out: &mut Vec<u8>) {
        self.encode_as(out, Version::Resp2);
    }

    /// Appends the reply's bytes in `version` to `out`: RESP3 (after
    /// `HELLO 3`) differs only in its null (`_`) and its maps (`%`).
    pub fn encode_as(&self, out: &mut Vec<u8>, version: Version) {
        // Writing to a String cannot fail; the line texts never hold CR or LF.
        let line = |out: &mut Vec<u8>, tag: char, text: &str| {
            out.push(tag as u8);
            out.extend(text.bytes().map(|b| if b == b'\r' || b == b'\n' { b' ' } else { b }));
            out.extend_from_slice(b"\r\n");
        };
        match self {
            Reply::Simple(s) => line(out, '+', s),
            Reply::Error(s) => line(out, '-', s),
            Reply::Integer(n) => {
                let mut s = String::new();
                let _ = write!(s, ":{n}\r\n");
                out.extend_from_slice(s.as_bytes());
            }
            Reply::Bulk(None) | Reply::Array(None) if version == Version::Resp3 => out.extend_from_slice(b"_\r\n"),
            Reply::Bulk(None) => out.extend_from_slice(b"$-1\r\n"),
            Reply::Bulk(Some(b)) => {
                out.extend_from_slice(format!("${}\r\n", b.len()).as_bytes());
                out.extend_from_slice(b);
                out.extend_from_slice(b"\r\n");
            }
            Reply::Array(None) => out.extend_from_slice(b"*-1\r\n"),
            Reply::Array(Some(items)) => {
                out.extend_from_slice(format!("*{}\r\n", items.len()).as_bytes());
                for item in items {
                    item.encode_as(out, version);
                }
            }
            Reply::Map(pairs) => {
                match version {
                    Version::Resp2 => out.extend_from_slice(format!("*{}\r\n", pairs.len() * 2).as_bytes()),
                    Version::Resp3 => out.extend_from_slice(format!("%{}\r\n", pairs.len()).as_bytes()),
                }
                for (k, v) in pairs {
                    k.encode_as(out, version);
                    v.encode_as(out, version);
                }
            }
        }
    }
}

/// Appends `args` as a RESP command (an array of bulk strings): what a
/// client sends (the tests' and the bench's).
pub fn encode_command(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.extend_from_slice(format!("*{}\r\n", args.len()).as_bytes());
    for a in args {
        out.extend_from_slice(format!("${}\r\n", a.len()).as_bytes());
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A command arriving a byte at a time is resumed, not read again from
    /// its start: each argument is taken once (reading it again every time
    /// made a long command sent in small pieces cost quadratic time).
    #[test]
    fn a_command_in_pieces_is_resumed_where_it_stopped() {
        let p = Parser::new(Limits { max_bulk: 100, max_args: 1000, max_inline: 64 });
        let mut wire = Vec::new();
        let args: Vec<Vec<u8>> = (0..300).map(|i| format!("arg{i}").into_bytes()).collect();
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        encode_command(&mut wire, &refs);
        let mut partial = Partial::default();
        let mut taken = 0;
        for end in 1..wire.len() {
            assert_eq!(p.parse_more(&wire[..end], &mut partial), Ok(None));
            assert!(partial.args.len() >= taken, "the arguments taken went from {taken} to {}", partial.args.len());
            taken = partial.args.len();
        }
        assert_eq!(taken, 299, "every argument before the last was taken as it completed");
        assert_eq!(p.parse_more(&wire, &mut partial), Ok(Some((args, wire.len()))));
        assert_eq!(partial.count, 0, "reset for the next command");
    }

    #[test]
    fn resp3_differs_in_nulls_and_maps_only() {
        let reply = Reply::Array(Some(vec![
            Reply::Bulk(None),
            Reply::Array(None),
            Reply::Map(vec![(Reply::Simple("a".into()), Reply::Integer(1))]),
            Reply::Bulk(Some(b"x".to_vec())),
        ]));
        let (mut two, mut three) = (Vec::new(), Vec::new());
        reply.encode(&mut two);
        reply.encode_as(&mut three, Version::Resp3);
        assert_eq!(two, b"*4\r\n$-1\r\n*-1\r\n*2\r\n+a\r\n:1\r\n$1\r\nx\r\n");
        assert_eq!(three, b"*4\r\n_\r\n_\r\n%1\r\n+a\r\n:1\r\n$1\r\nx\r\n");
    }

    fn parser() -> Parser {
        Parser::new(Limits { max_bulk: 100, max_args: 8, max_inline: 64 })
    }

    fn args(v: &[&str]) -> Command {
        v.iter().map(|s| s.as_bytes().to_vec()).collect()
    }

    fn all(p: &Parser, mut buf: &[u8]) -> Result<Vec<Command>, ProtocolError> {
        let mut out = Vec::new();
        while let Some((cmd, n)) = p.parse(buf)? {
            assert!(n > 0 && n <= buf.len(), "took {n} of {} bytes", buf.len());
            out.push(cmd);
            buf = &buf[n..];
        }
        Ok(out)
    }

    #[test]
    fn multibulk_commands_pipelined_and_split_anywhere() {
        let mut wire = Vec::new();
        encode_command(&mut wire, &[b"SET", b"k", b"v a\r\nlue"]);
        encode_command(&mut wire, &[b"GET", b""]);
        wire.extend_from_slice(b"*0\r\n");
        let p = parser();
        let cmds = all(&p, &wire).unwrap();
        assert_eq!(cmds, vec![args(&["SET", "k", "v a\r\nlue"]), args(&["GET", ""]), vec![]]);
        // Every prefix is either incomplete or the first command whole.
        for cut in 0..wire.len() {
            match p.parse(&wire[..cut]).unwrap() {
                None => {}
                Some((cmd, n)) => {
                    assert_eq!(cmd, args(&["SET", "k", "v a\r\nlue"]));
                    assert!(n <= cut);
                }
            }
        }
    }

    #[test]
    fn inline_commands_split_and_unquote_as_redis_does() {
        let p = parser();
        assert_eq!(all(&p, b"set k v\r\nget   k\n\r\n").unwrap(), vec![args(&["set", "k", "v"]), args(&["get", "k"]), vec![]]);
        assert_eq!(all(&p, b"set \"a b\" \"x\\x41\\n\" 'it\\'s'\r\n").unwrap(), vec![args(&["set", "a b", "xA\n", "it's"])]);
        assert_eq!(p.parse(b"get k").unwrap(), None, "no line end yet");
        assert_eq!(split_args(b"\"\"").unwrap(), vec![Vec::<u8>::new()]);
        for bad in [&b"set \"unclosed\r\n"[..], b"set 'x\r\n", b"set \"a\"b\r\n"] {
            assert_eq!(p.parse(bad), Err(ProtocolError("unbalanced quotes in request".into())), "{:?}", String::from_utf8_lossy(bad));
        }
    }

    #[test]
    fn bad_input_is_a_protocol_error_with_redis_s_words() {
        let p = parser();
        let cases: &[(&[u8], &str)] = &[
            (b"*x\r\n", "invalid multibulk length"),
            (b"*9\r\n", "invalid multibulk length"),
            (b"*1\r\n+OK\r\n", "expected '+', got"),
            (b"*1\r\n$x\r\n", "invalid bulk length"),
            (b"*1\r\n$-1\r\n", "invalid bulk length"),
            (b"*1\r\n$101\r\n", "invalid bulk length"),
            (b"*1\r\n$1\r\nabc\r\n", "bulk string not followed by CRLF"),
            (b"*1\rx", "invalid multibulk length"),
            (b"*1\r\n$1\rx", "invalid bulk length"),
            (b"*111111111111111111111111111111111111", "too big mbulk count string"),
            (b"*1\r\n$1111111111111111111111111111111111111111", "too big bulk count string"),
        ];
        for (input, want) in cases {
            let got = p.parse(input);
            let want = if want.starts_with("expected") { "expected '$', got '+'" } else { want };
            assert_eq!(got, Err(ProtocolError(want.to_string())), "{:?}", String::from_utf8_lossy(input));
        }
        let long = vec![b'a'; 65];
        assert_eq!(p.parse(&long), Err(ProtocolError("too big inline request".into())));
        let mut long_line = vec![b'a'; 70];
        long_line.push(b'\n');
        assert_eq!(p.parse(&long_line), Err(ProtocolError("too big inline request".into())));
        assert!(p.parse(b"a b c d e f g h i\n").is_err(), "more inline arguments than the cap");
    }

    #[test]
    fn replies_encode_as_redis_sends_them() {
        let mut out = Vec::new();
        for r in [
            Reply::ok(),
            Reply::error("ERR", "unknown command 'FOO'\r\nx"),
            Reply::Integer(-3),
            Reply::Bulk(Some(b"hi".to_vec())),
            Reply::Bulk(None),
            Reply::Array(Some(vec![Reply::Integer(1), Reply::Bulk(None)])),
            Reply::Array(None),
        ] {
            r.encode(&mut out);
        }
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "+OK\r\n-ERR unknown command 'FOO'  x\r\n:-3\r\n$2\r\nhi\r\n$-1\r\n*2\r\n:1\r\n$-1\r\n*-1\r\n"
        );
    }

    /// Random and mutated streams: never a panic, every command within the
    /// caps, and progress or a clean "need more" each time.
    #[test]
    fn fuzzed_streams_never_panic_and_stay_within_the_caps() {
        let p = parser();
        let mut seed = 7u64;
        let mut valid = Vec::new();
        encode_command(&mut valid, &[b"MSET", b"a", b"1", b"b", b"2"]);
        valid.extend_from_slice(b"set \"q\\x4a\" 'z'\r\n");
        let (mut commands, mut errors) = (0, 0);
        for round in 0..20_000u32 {
            let mut buf = if round.is_multiple_of(2) { valid.clone() } else { Vec::new() };
            let n = (crate::rand::splitmix64(&mut seed) % 48) as usize;
            for _ in 0..n {
                let r = crate::rand::splitmix64(&mut seed);
                let byte = b"*$\r\n-0123456789abc \"'\\x"[(r % 23) as usize];
                if buf.is_empty() || r.is_multiple_of(3) {
                    buf.push(byte);
                } else {
                    let at = (r >> 8) as usize % buf.len();
                    buf[at] = byte;
                }
            }
            let mut rest = &buf[..];
            loop {
                match p.parse(rest) {
                    Ok(Some((cmd, took))) => {
                        assert!(took > 0 && took <= rest.len());
                        assert!(cmd.len() <= 8 && cmd.iter().all(|a| a.len() <= 100));
                        commands += 1;
                        rest = &rest[took..];
                    }
                    Ok(None) => break,
                    Err(e) => {
                        assert!(!e.0.is_empty());
                        errors += 1;
                        break;
                    }
                }
            }
        }
        assert!(commands > 1000 && errors > 1000, "{commands} commands, {errors} errors: the fuzz reached both");
    }
}
