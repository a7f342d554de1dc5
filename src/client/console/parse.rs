//! Reading a command: the tokenizer, the parser and the typed [`Command`].
//!
//! [`tokenize`] splits a console line into words (quotes group, backslash
//! escapes inside double quotes); [`parse`] turns words, from a line or from
//! the one-shot arguments, into a [`Command`] or a message naming what is
//! wrong. Nothing here touches the network or panics on any input. [`HELP`]
//! describes the same grammar for people.

use std::path::PathBuf;

use crate::cluster::consistency::Consistency;
use crate::message::MAX_SCAN_COUNT;
use crate::proto;

/// The console's help text.
pub const HELP: &str = "\
Commands (keywords are case-insensitive; CL is ONE, QUORUM, ALL or SERIAL):
  get KEY [CL]            read KEY (0-255 in a byte-ordered cluster, any text in a murmur3 one)
  get KEY @FILE [CL]      write KEY's value, byte for byte, to FILE
  put KEY VALUE [CL]      write VALUE; quote a value with spaces: put 5 \"hello world\" quorum
  put KEY @FILE [CL]      write the bytes of FILE (@@text stores the text @text)
  put KEY VALUE if OLD    write VALUE only if KEY holds OLD (SERIAL compare-and-set; OLD may be @FILE);
                          prints applied, or not applied (current: VALUE or none); one-shot, not applied exits 5
  put KEY VALUE if absent write VALUE only if KEY has no value
  del KEY [CL]            delete KEY (writes a tombstone)
  del KEY if OLD          delete KEY only if it holds OLD (SERIAL compare-and-set)
  consistency [CL]        show or set the session's default level (starts at ONE); SERIAL runs Paxos per key:
                          linearizable, about 2 round trips a write and 1 a read; it sees a QUORUM or ALL write
                          acknowledged before it began, but a plain write concurrent with a SERIAL one on the same
                          key may be lost to it (README: Mixing levels on one key)
  status                  each replica: address, up/down as the coordinator sees it, key range, hints held for it
  inspect KEY             what each replica of KEY holds, one line per replica
  display                 what every replica holds, and which keys differ between replicas
  token KEY               KEY's token, its slot and its replicas (owner first), one a line
  ring [tokens]           each node: its tokens (murmur3; the first few) or key range, its share of the data, keys and bytes held;
                          `ring tokens` lists every token in ring order with its node
  scan [CURSOR] [COUNT]   a page of every key in the cluster: up to COUNT (default 10, at most 10000) keys from CURSOR
                          (0 or none: the start; fewer once their bytes pass 1 MiB), then the cursor of the next page;
                          one-shot, it walks every page
  txn [if CONDS] then WRITES
                          a transaction: CONDS are KEY = VALUE or KEY absent joined by `and`, WRITES are
                          put KEY VALUE or del KEY separated by `;`, e.g. txn if a = 10 and b = 5 then put a 7; put b 8;
                          all writes or none, serializable with other transactions and SERIAL operations; prints
                          committed, or not applied with the compared keys' values (one-shot: exit 5); keys may live
                          on any replicas (at most --max-txn-keys keys, 64 by default; a conflict with another transaction aborts: retry)
  mget KEY...             read several keys at QUORUM, read atomic: of every transaction, all of its writes or none;
                          one value a line (one-shot: an empty line for a missing key, exit 1 only if all are missing)
  repair                  compare every replica's data with the others' now (hash trees, then only the cells that
                          differ) and send the newest version where one is missing or older, with progress;
                          Ctrl-C leaves it running (replicas also do this in the background: --anti-entropy-interval)
Membership (seed 003; start a new replica with --join HOST:PORT to add it):
  decommission [force]    the connected replica hands its ranges to their new replicas, leaves the ring and exits;
                          refused if fewer members than the RF would own data, unless forced
  removenode NAME [force] rebuild dead member NAME's ranges from the surviving replicas, then remove it
  movement                the progress of the membership change the connected replica runs (or ran last)
                          (decommission and removenode show a progress bar; Ctrl-C leaves them running)
Images (seed 004; a murmur3 cluster; decoding needs a build with --features images):
  iset IMAGE METADATA...  store METADATA (all the words) at SERIAL under IMAGE's average hash; prints the hash
  iget IMAGE              the metadata of IMAGE's hash, or of the nearest stored hash within 4 bits (a resized or
                          re-encoded copy), with its distance; not found exits 1
Fault injection (only on replicas started with --enable-fault-injection; acts on the replica connected to):
  fault [show]            show the faults active on this replica
  fault drop PEERS [DIR]  drop messages exchanged with PEERS (names, comma-separated, or all); DIR is to, from or both (default)
  fault delay PEERS MS [DIR]  delay them by MS milliseconds
  fault pause MS          answer nothing, to clients or peers, for MS milliseconds
  fault clock +MS|-MS     shift this replica's wall clock ahead or behind by MS milliseconds (0: put it back)
  fault heal              remove every drop and delay, and put the clock back
  help                    this text
  quit                    leave (also: exit, Ctrl-D)";

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show the help.
    Help,
    /// Store image metadata under the image's average hash.
    ISet {
        /// The image file.
        path: PathBuf,
        /// The metadata: every word after the path, joined by spaces.
        metadata: String,
    },
    /// Find the metadata of an image (or of the nearest stored one).
    IGet {
        /// The image file.
        path: PathBuf,
    },
    /// Read a key.
    Get {
        /// The key.
        key: String,
        /// Write the value to this file instead of printing it.
        to_file: Option<PathBuf>,
        /// Level; `None` uses the session default.
        level: Option<Consistency>,
    },
    /// Write a key.
    Put {
        /// The key.
        key: String,
        /// The value.
        value: Value,
        /// Level; `None` uses the session default.
        level: Option<Consistency>,
        /// `if OLD` / `if absent`: a compare-and-set (always SERIAL).
        condition: Option<Condition>,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: String,
        /// Level; `None` uses the session default.
        level: Option<Consistency>,
        /// `if OLD`: delete only if the key holds this value (SERIAL).
        if_value: Option<Value>,
    },
    /// Show (`None`) or set the session default level.
    Consistency(Option<Consistency>),
    /// Cluster status.
    Status,
    /// Each replica's version of a key.
    Inspect(String),
    /// Everything every replica holds.
    Display,
    /// A fault-injection request to the connected replica.
    Fault(proto::FaultRequest),
    /// Where a key lives.
    Token(String),
    /// Each node's tokens, share and keys; every token with `tokens`.
    Ring {
        /// List every token in ring order.
        tokens: bool,
    },
    /// A full anti-entropy pass from the coordinator, followed to its end.
    Repair,
    /// Decommission the connected replica, followed to its end.
    Decommission {
        /// Even if fewer members than the RF would own data.
        force: bool,
    },
    /// Rebuild a dead member's ranges elsewhere and remove it, followed to its end.
    RemoveNode {
        /// The dead member.
        name: String,
        /// Even if fewer members than the RF would own data.
        force: bool,
    },
    /// The movement the connected replica runs or ran last.
    Movement,
    /// A page of every key (one-shot: every page).
    Scan {
        /// Where to start: the bytes of a cursor a scan printed (empty: the start).
        cursor: Vec<u8>,
        /// Keys a page looks at; `None` uses the default.
        count: Option<u32>,
    },
    /// A transaction: if every condition holds, every write, atomically.
    Txn {
        /// Keys compared: `KEY = VALUE` or `KEY absent`.
        conditions: Vec<(String, Condition)>,
        /// Writes: `put KEY VALUE` (`Some`) or `del KEY` (`None`).
        writes: Vec<(String, Option<Value>)>,
    },
    /// A read-atomic read of several keys.
    MGet(Vec<String>),
    /// Leave.
    Quit,
}

/// The condition of a conditional `put`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Condition {
    /// `if OLD`: the key holds exactly this value.
    Equals(Value),
    /// `if absent`: the key has no live value.
    Absent,
}

/// A value to write: text as typed, or a file's bytes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Value {
    /// The text's UTF-8 bytes.
    Text(String),
    /// The bytes of this file, read when the command runs.
    File(PathBuf),
}

impl Value {
    /// `@FILE` names a file, `@@text` is the text `@text`, anything else is itself.
    pub(super) fn parse(word: &str) -> Result<Value, String> {
        match word.strip_prefix('@') {
            Some(rest) if rest.starts_with('@') => Ok(Value::Text(rest.to_string())),
            Some("") => Err("@ must be followed by a file name (or write @@ for a value starting with @)".into()),
            Some(path) => Ok(Value::File(PathBuf::from(path))),
            None => Ok(Value::Text(word.to_string())),
        }
    }
}

/// Splits a line into words: whitespace separates, `"…"` and `'…'` group, and
/// inside double quotes `\"` and `\\` escape.
pub fn tokenize(line: &str) -> Result<Vec<String>, String> {
    let mut words = Vec::new();
    let mut chars = line.chars().peekable();
    loop {
        while chars.next_if(|c| c.is_whitespace()).is_some() {}
        if chars.peek().is_none() {
            return Ok(words);
        }
        let mut word = String::new();
        while let Some(&c) = chars.peek() {
            if c.is_whitespace() {
                break;
            }
            chars.next();
            match c {
                '"' => loop {
                    match chars.next() {
                        Some('"') => break,
                        Some('\\') => match chars.next() {
                            Some(e @ ('"' | '\\')) => word.push(e),
                            Some(other) => {
                                word.push('\\');
                                word.push(other);
                            }
                            None => return Err("unterminated double quote".into()),
                        },
                        Some(ch) => word.push(ch),
                        None => return Err("unterminated double quote".into()),
                    }
                },
                '\'' => loop {
                    match chars.next() {
                        Some('\'') => break,
                        Some(ch) => word.push(ch),
                        None => return Err("unterminated single quote".into()),
                    }
                },
                _ => word.push(c),
            }
        }
        words.push(word);
    }
}

/// A key as typed: the replica checks it against its cluster's partitioner.
fn parse_key(s: &str) -> Result<String, String> {
    if s.is_empty() {
        return Err("the key is empty".into());
    }
    Ok(s.to_string())
}

fn parse_level(s: &str, hint: &str) -> Result<Consistency, String> {
    Consistency::parse(s).ok_or_else(|| format!("unknown consistency level {s:?}: use ONE, QUORUM, ALL or SERIAL{hint}"))
}

/// Parses a tokenized command.
pub fn parse(words: &[String]) -> Result<Command, String> {
    let Some(first) = words.first() else { return Err("empty command; type help".into()) };
    let args = &words[1..];
    let arity = |min: usize, max: usize, usage: &str| {
        if args.len() < min || args.len() > max { Err(format!("usage: {usage}")) } else { Ok(()) }
    };
    let opt_level = |i: usize| args.get(i).map(|s| parse_level(s, "")).transpose();
    match first.to_ascii_lowercase().as_str() {
        "help" | "?" => Ok(Command::Help),
        "quit" | "exit" => Ok(Command::Quit),
        "get" => {
            arity(1, 3, "get KEY [@FILE] [CL]")?;
            let to_file = match args.get(1).and_then(|a| a.strip_prefix('@')) {
                Some("") => return Err("@ must be followed by a file name".into()),
                Some(path) => Some(PathBuf::from(path)),
                None => None,
            };
            let level_at = if to_file.is_some() { 2 } else { 1 };
            if args.len() > level_at + 1 {
                return Err("usage: get KEY [@FILE] [CL]".into());
            }
            Ok(Command::Get { key: parse_key(&args[0])?, to_file, level: opt_level(level_at)? })
        }
        "put" if args.get(2).is_some_and(|w| w.eq_ignore_ascii_case("if")) => {
            arity(4, 4, "put KEY VALUE if OLD|absent")?;
            let condition =
                if args[3].eq_ignore_ascii_case("absent") { Condition::Absent } else { Condition::Equals(Value::parse(&args[3])?) };
            Ok(Command::Put { key: parse_key(&args[0])?, value: Value::parse(&args[1])?, level: None, condition: Some(condition) })
        }
        "del" | "delete" if args.get(1).is_some_and(|w| w.eq_ignore_ascii_case("if")) => {
            arity(3, 3, "del KEY if OLD")?;
            Ok(Command::Del { key: parse_key(&args[0])?, level: None, if_value: Some(Value::parse(&args[2])?) })
        }
        "put" => {
            if args.len() > 3 {
                return Err(format!(
                    "usage: put KEY VALUE [CL]; got {} words after the key; quote a value with spaces: put {} \"{}\"",
                    args.len() - 1,
                    args[0],
                    args[1..].join(" ")
                ));
            }
            arity(2, 3, "put KEY VALUE [CL]")?;
            let level = args
                .get(2)
                .map(|s| parse_level(s, &format!("; quote a value with spaces: put {} \"{} {s}\"", args[0], args[1])))
                .transpose()?;
            Ok(Command::Put { key: parse_key(&args[0])?, value: Value::parse(&args[1])?, level, condition: None })
        }
        "del" | "delete" => {
            arity(1, 2, "del KEY [CL]")?;
            Ok(Command::Del { key: parse_key(&args[0])?, level: opt_level(1)?, if_value: None })
        }
        "consistency" => {
            arity(0, 1, "consistency [ONE|QUORUM|ALL|SERIAL]")?;
            Ok(Command::Consistency(opt_level(0)?))
        }
        "status" => arity(0, 0, "status").map(|_| Command::Status),
        "iset" => {
            if args.len() < 2 {
                return Err("usage: iset IMAGE METADATA... (the metadata may be several words)".into());
            }
            Ok(Command::ISet { path: PathBuf::from(&args[0]), metadata: args[1..].join(" ") })
        }
        "iget" => {
            arity(1, 1, "iget IMAGE")?;
            Ok(Command::IGet { path: PathBuf::from(&args[0]) })
        }
        "inspect" => {
            arity(1, 1, "inspect KEY")?;
            Ok(Command::Inspect(parse_key(&args[0])?))
        }
        "display" => arity(0, 0, "display").map(|_| Command::Display),
        "fault" => parse_fault(args).map(Command::Fault),
        "token" => {
            arity(1, 1, "token KEY")?;
            Ok(Command::Token(parse_key(&args[0])?))
        }
        "ring" => match args {
            [] => Ok(Command::Ring { tokens: false }),
            [t] if t.eq_ignore_ascii_case("tokens") => Ok(Command::Ring { tokens: true }),
            _ => Err("usage: ring [tokens]".into()),
        },
        "scan" => parse_scan(args),
        "txn" => parse_txn(args),
        "mget" => {
            if args.is_empty() {
                return Err("usage: mget KEY...".into());
            }
            Ok(Command::MGet(args.iter().map(|k| parse_key(k)).collect::<Result<_, _>>()?))
        }
        "repair" => arity(0, 0, "repair").map(|_| Command::Repair),
        "decommission" => match args {
            [] => Ok(Command::Decommission { force: false }),
            [f] if f.eq_ignore_ascii_case("force") => Ok(Command::Decommission { force: true }),
            _ => Err("usage: decommission [force]".into()),
        },
        "removenode" => match args {
            [name] => Ok(Command::RemoveNode { name: name.clone(), force: false }),
            [name, f] if f.eq_ignore_ascii_case("force") => Ok(Command::RemoveNode { name: name.clone(), force: true }),
            _ => Err("usage: removenode NAME [force]".into()),
        },
        "movement" => arity(0, 0, "movement").map(|_| Command::Movement),
        other => Err(format!("unknown command {other:?}; type help")),
    }
}

/// How to write a transaction (in its parse errors).
const TXN_USAGE: &str = "usage: txn [if KEY = VALUE|KEY absent [and ...]] then put KEY VALUE|del KEY [; ...]";

/// `txn [if COND [and COND]...] then WRITE [; WRITE]...`: a `;` ends a
/// write, alone or at the end of a word (a value that ends with `;` is
/// written with @FILE).
fn parse_txn(args: &[String]) -> Result<Command, String> {
    let mut words: Vec<&str> = Vec::new();
    for a in args {
        match a.strip_suffix(';') {
            Some(rest) if !rest.is_empty() => words.extend([rest, ";"]),
            _ => words.push(a),
        }
    }
    let mut conditions = Vec::new();
    let mut rest = &words[..];
    if rest.first().is_some_and(|w| w.eq_ignore_ascii_case("if")) {
        rest = &rest[1..];
        loop {
            match rest {
                [k, eq, v, tail @ ..] if *eq == "=" => {
                    conditions.push((parse_key(k)?, Condition::Equals(Value::parse(v)?)));
                    rest = tail;
                }
                [k, absent, tail @ ..] if absent.eq_ignore_ascii_case("absent") => {
                    conditions.push((parse_key(k)?, Condition::Absent));
                    rest = tail;
                }
                _ => return Err(format!("a condition is KEY = VALUE or KEY absent; {TXN_USAGE}")),
            }
            match rest.first() {
                Some(w) if w.eq_ignore_ascii_case("and") => rest = &rest[1..],
                Some(w) if w.eq_ignore_ascii_case("then") => break,
                _ => return Err(format!("conditions are joined by `and` and end with `then`; {TXN_USAGE}")),
            }
        }
    }
    match rest.first() {
        Some(w) if w.eq_ignore_ascii_case("then") => rest = &rest[1..],
        _ => return Err(TXN_USAGE.into()),
    }
    let mut writes = Vec::new();
    loop {
        match rest {
            [put, k, v, tail @ ..] if put.eq_ignore_ascii_case("put") => {
                writes.push((parse_key(k)?, Some(Value::parse(v)?)));
                rest = tail;
            }
            [del, k, tail @ ..] if del.eq_ignore_ascii_case("del") || del.eq_ignore_ascii_case("delete") => {
                writes.push((parse_key(k)?, None));
                rest = tail;
            }
            _ => return Err(format!("a write is put KEY VALUE or del KEY; {TXN_USAGE}")),
        }
        match rest {
            [] | [";"] => break,
            [";", tail @ ..] => rest = tail,
            _ => return Err(format!("writes are separated by `;`; {TXN_USAGE}")),
        }
    }
    Ok(Command::Txn { conditions, writes })
}

/// `scan [CURSOR] [COUNT]`, or Redis's `scan CURSOR count N`.
fn parse_scan(args: &[String]) -> Result<Command, String> {
    const USAGE: &str = "usage: scan [CURSOR] [COUNT] (CURSOR 0 starts)";
    let count = |s: &str| match s.parse::<u32>() {
        Ok(n) if (1..=MAX_SCAN_COUNT).contains(&n) => Ok(Some(n)),
        _ => Err(format!("the count is a whole number from 1 to {MAX_SCAN_COUNT}, got {s:?}")),
    };
    let (cursor, count) = match args {
        [] => return Ok(Command::Scan { cursor: Vec::new(), count: None }),
        [c] => (c, None),
        [c, n] => (c, count(n)?),
        [c, kw, n] if kw.eq_ignore_ascii_case("count") => (c, count(n)?),
        _ => return Err(USAGE.into()),
    };
    Ok(Command::Scan { cursor: parse_cursor(cursor)?, count })
}

/// A cursor as `scan` prints it: `0` for the start, otherwise hex digits.
fn parse_cursor(s: &str) -> Result<Vec<u8>, String> {
    if s == "0" {
        return Ok(Vec::new());
    }
    let bad = || format!("a scan cursor is 0 (the start) or the hex digits a scan printed, got {s:?}");
    if !s.len().is_multiple_of(2) || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return Err(bad());
    }
    (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).map_err(|_| bad())).collect()
}

fn parse_fault(args: &[String]) -> Result<proto::FaultRequest, String> {
    use proto::{FaultAction as A, FaultDirection as D};
    const USAGE: &str = "usage: fault [drop PEERS [to|from|both] | delay PEERS MS [to|from|both] | pause MS | clock +MS|-MS | heal]";
    let mut req = proto::FaultRequest::default();
    let peers = |s: &str| -> Vec<String> {
        if s.eq_ignore_ascii_case("all") { Vec::new() } else { s.split(',').filter(|p| !p.is_empty()).map(str::to_string).collect() }
    };
    let direction = |s: Option<&String>| -> Result<i32, String> {
        match s.map(|s| s.to_ascii_lowercase()).as_deref() {
            None | Some("both") => Ok(D::Both as i32),
            Some("to") => Ok(D::To as i32),
            Some("from") => Ok(D::From as i32),
            Some(other) => Err(format!("unknown direction {other:?}: use to, from or both")),
        }
    };
    let millis = |s: &str| s.parse::<u32>().map_err(|_| format!("milliseconds must be a whole number, got {s:?}"));
    let Some(action) = args.first() else { return Ok(req) };
    let rest = &args[1..];
    match action.to_ascii_lowercase().as_str() {
        "show" if rest.is_empty() => {}
        "heal" if rest.is_empty() => req.action = A::Heal as i32,
        "drop" if (1..=2).contains(&rest.len()) => {
            req.action = A::Drop as i32;
            req.peers = peers(&rest[0]);
            req.direction = direction(rest.get(1))?;
        }
        "delay" if (2..=3).contains(&rest.len()) => {
            req.action = A::Delay as i32;
            req.peers = peers(&rest[0]);
            req.delay_ms = millis(&rest[1])?;
            req.direction = direction(rest.get(2))?;
        }
        "pause" if rest.len() == 1 => {
            req.action = A::Pause as i32;
            req.pause_ms = millis(&rest[0])?;
        }
        "clock" if rest.len() == 1 => {
            req.action = A::Clock as i32;
            req.clock_offset_ms = rest[0]
                .parse::<i64>()
                .map_err(|_| format!("a clock offset is a whole number of milliseconds such as +2000 or -2000, got {:?}", rest[0]))?;
        }
        _ => return Err(USAGE.into()),
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn words(s: &str) -> Vec<String> {
        tokenize(s).unwrap()
    }

    #[test]
    fn tokenize_quotes_and_escapes() {
        assert_eq!(words("put 5 \"hello world\" quorum"), ["put", "5", "hello world", "quorum"]);
        assert_eq!(words("  put   7 'it''s' "), ["put", "7", "its"]);
        assert_eq!(words(r#"put 1 "say \"hi\" \\ ok""#), ["put", "1", r#"say "hi" \ ok"#]);
        assert_eq!(words("put 1 \"\""), ["put", "1", ""]);
        assert!(words("   ").is_empty());
        assert!(tokenize("put 1 \"open").is_err());
        assert!(tokenize("put 1 'open").is_err());
    }

    #[test]
    fn parse_commands() {
        let p = |s: &str| parse(&words(s));
        let key = |k: &str| k.to_string();
        assert_eq!(p("GET 5").unwrap(), Command::Get { key: key("5"), to_file: None, level: None });
        assert_eq!(p("get 255 quorum").unwrap(), Command::Get { key: key("255"), to_file: None, level: Some(Consistency::Quorum) });
        assert_eq!(
            p("get user:1 @out.bin all").unwrap(),
            Command::Get { key: key("user:1"), to_file: Some("out.bin".into()), level: Some(Consistency::All) }
        );
        assert_eq!(
            p("put 5 \"hello world\" ALL").unwrap(),
            Command::Put { key: key("5"), value: Value::Text("hello world".into()), level: Some(Consistency::All), condition: None }
        );
        let put = |k: &str, value, level, condition| Command::Put { key: key(k), value, level, condition };
        assert_eq!(p("put k @v.bin").unwrap(), put("k", Value::File("v.bin".into()), None, None));
        assert_eq!(p("put k @@home").unwrap(), put("k", Value::Text("@home".into()), None, None));
        assert_eq!(p("Del 0 one").unwrap(), Command::Del { key: key("0"), level: Some(Consistency::One), if_value: None });
        assert_eq!(p("get 5 serial").unwrap(), Command::Get { key: key("5"), to_file: None, level: Some(Consistency::Serial) });
        assert_eq!(p("put 5 v SERIAL").unwrap(), put("5", Value::Text("v".into()), Some(Consistency::Serial), None));
        let text = |t: &str| Value::Text(t.into());
        assert_eq!(p("put 5 new if old").unwrap(), put("5", text("new"), None, Some(Condition::Equals(text("old")))));
        assert_eq!(p("put 5 new IF Absent").unwrap(), put("5", text("new"), None, Some(Condition::Absent)));
        assert_eq!(
            p("put 5 new if @old.bin").unwrap(),
            put("5", text("new"), None, Some(Condition::Equals(Value::File("old.bin".into()))))
        );
        assert_eq!(p("del 5 if \"a b\"").unwrap(), Command::Del { key: key("5"), level: None, if_value: Some(text("a b")) });
        assert_eq!(p("consistency serial").unwrap(), Command::Consistency(Some(Consistency::Serial)));
        assert!(p("put 5 new if").unwrap_err().contains("usage: put KEY VALUE if OLD|absent"));
        assert!(p("put 5 new if a b").unwrap_err().contains("usage: put KEY VALUE if OLD|absent"));
        assert!(p("del 5 if").unwrap_err().contains("usage: del KEY if OLD"));
        assert_eq!(p("consistency").unwrap(), Command::Consistency(None));
        assert_eq!(p("CONSISTENCY quorum").unwrap(), Command::Consistency(Some(Consistency::Quorum)));
        assert_eq!(p("inspect 70").unwrap(), Command::Inspect("70".into()));
        assert_eq!(p("status").unwrap(), Command::Status);
        assert_eq!(p("display").unwrap(), Command::Display);
        assert_eq!(p("quit").unwrap(), Command::Quit);
        use proto::{FaultAction as A, FaultDirection as D, FaultRequest as F};
        assert_eq!(p("fault").unwrap(), Command::Fault(F::default()));
        assert_eq!(p("fault heal").unwrap(), Command::Fault(F { action: A::Heal as i32, ..F::default() }));
        assert_eq!(
            p("fault drop r1,r2 from").unwrap(),
            Command::Fault(F { action: A::Drop as i32, peers: vec!["r1".into(), "r2".into()], direction: D::From as i32, ..F::default() })
        );
        assert_eq!(p("FAULT delay all 250").unwrap(), Command::Fault(F { action: A::Delay as i32, delay_ms: 250, ..F::default() }));
        assert_eq!(p("fault pause 1500").unwrap(), Command::Fault(F { action: A::Pause as i32, pause_ms: 1500, ..F::default() }));
        assert_eq!(p("fault clock -2000").unwrap(), Command::Fault(F { action: A::Clock as i32, clock_offset_ms: -2000, ..F::default() }));
        assert_eq!(p("fault clock +250").unwrap(), Command::Fault(F { action: A::Clock as i32, clock_offset_ms: 250, ..F::default() }));
    }

    #[test]
    fn parse_txn_and_mget() {
        let p = |s: &str| parse(&words(s));
        let text = |v: &str| Value::Text(v.into());
        assert_eq!(
            p("txn if a = 10 and b absent then put a 7; put b \"8 9\" ; del c"),
            Ok(Command::Txn {
                conditions: vec![("a".into(), Condition::Equals(text("10"))), ("b".into(), Condition::Absent)],
                writes: vec![("a".into(), Some(text("7"))), ("b".into(), Some(text("8 9"))), ("c".into(), None)],
            })
        );
        assert_eq!(
            p("TXN then put k @f;"),
            Ok(Command::Txn { conditions: vec![], writes: vec![("k".into(), Some(Value::File("f".into())))] })
        );
        assert_eq!(p("mget a b"), Ok(Command::MGet(vec!["a".into(), "b".into()])));
        for bad in [
            "txn",
            "txn put a 1",
            "txn if a = 1 put a 2",
            "txn if a then put a 1",
            "txn then",
            "txn then put a",
            "txn then put a 1 put b 2",
            "mget",
        ] {
            let e = p(bad).unwrap_err();
            assert!(e.contains("usage") || e.contains("txn"), "{bad}: {e}");
        }
    }

    #[test]
    fn parse_token_ring_and_scan() {
        let p = |s: &str| parse(&words(s));
        let scan = |cursor: &[u8], count| Command::Scan { cursor: cursor.to_vec(), count };
        assert_eq!(p("TOKEN user:1").unwrap(), Command::Token("user:1".into()));
        assert_eq!(
            p("iset cat.png a photo of  a cat").unwrap(),
            Command::ISet { path: "cat.png".into(), metadata: "a photo of a cat".into() }
        );
        assert_eq!(
            p("iset cat.png 'a photo of  a cat'").unwrap(),
            Command::ISet { path: "cat.png".into(), metadata: "a photo of  a cat".into() }
        );
        assert_eq!(p("IGET cat.png").unwrap(), Command::IGet { path: "cat.png".into() });
        assert!(p("iset cat.png").unwrap_err().contains("usage: iset IMAGE METADATA"));
        assert!(p("iget").unwrap_err().contains("iget IMAGE"));
        assert_eq!(p("ring").unwrap(), Command::Ring { tokens: false });
        assert_eq!(p("ring TOKENS").unwrap(), Command::Ring { tokens: true });
        assert_eq!(p("scan").unwrap(), scan(b"", None));
        assert_eq!(p("scan 0").unwrap(), scan(b"", None));
        assert_eq!(p("scan 0 100").unwrap(), scan(b"", Some(100)));
        assert_eq!(p("scan 012aFF 10000").unwrap(), scan(&[1, 0x2a, 0xff], Some(10_000)));
        assert_eq!(p("Scan 0118 COUNT 5").unwrap(), scan(&[1, 0x18], Some(5)));
        let e = |s: &str| p(s).unwrap_err();
        assert!(e("token").contains("usage: token KEY"));
        assert!(e("token a b").contains("usage: token KEY"));
        assert!(e("token \"\"").contains("the key is empty"));
        assert!(e("ring all").contains("usage: ring [tokens]"));
        assert!(e("scan 0 0").contains("from 1 to 10000, got \"0\""));
        assert!(e("scan 0 10001").contains("from 1 to 10000"));
        assert!(e("scan 0 ten").contains("whole number"));
        assert!(e("scan 012").contains("hex digits a scan printed, got \"012\""));
        assert!(e("scan 01zz").contains("hex digits"));
        assert!(e("scan 0 count").contains("whole number"), "count without a number reads as the count");
        assert!(e("scan 0 1 2 3").contains("usage: scan"));
        assert!(e("scan 0 twice 5").contains("usage: scan"));
        for usage in ["token KEY", "ring [tokens]", "scan [CURSOR] [COUNT]"] {
            assert!(HELP.contains(&format!("\n  {usage} ")), "help lacks {usage}");
        }
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let p = |s: &str| parse(&words(s)).unwrap_err();
        // Keys are checked by the replica, which knows its partitioner.
        assert!(p("get \"\"").contains("the key is empty"));
        assert!(p("get").contains("usage: get"));
        assert!(p("get k @").contains("file name"));
        assert!(p("get k @f one two").contains("usage: get"));
        assert!(p("put k @").contains("file name"));
        assert!(p("put 5 hello world").contains("quote a value with spaces"));
        assert!(p("put 5 hello world quorum").contains("quote a value with spaces"));
        assert!(p("get 5 twice").contains("unknown consistency level"));
        assert!(p("frobnicate").contains("unknown command"));
        assert!(p("status now").contains("usage"));
        assert!(p("fault drop").contains("usage: fault"));
        assert!(p("fault delay r1").contains("usage: fault"));
        assert!(p("fault delay r1 soon").contains("whole number"));
        assert!(p("fault drop r1 sideways").contains("unknown direction"));
        assert!(p("fault pause -5").contains("whole number"));
        assert!(p("fault clock soon").contains("+2000 or -2000"));
        assert!(p("fault explode").contains("usage: fault"));
    }
}
