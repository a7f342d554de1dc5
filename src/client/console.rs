//! The console: command parsing, execution against a coordinator, and output.
//!
//! The `client` binary reads lines (or one command from its arguments), turns
//! them into [`Command`]s with [`tokenize`] and [`parse`], and runs them with a
//! [`Session`]. Parsing never panics and names what is wrong with the input;
//! every outcome maps to the exit status documented in the README
//! ([`Outcome::exit_code`]).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::io::Write;
use std::time::Duration;

use crate::client::Client;
use crate::coordinator::consistency::Consistency;
use crate::error::Error;
use crate::proto;
use crate::storage::store::KEYS;

/// The console's help text.
pub const HELP: &str = "\
Commands (keywords are case-insensitive; CL is ONE, QUORUM or ALL):
  get KEY [CL]            read KEY (0-255)
  put KEY VALUE [CL]      write VALUE; quote a value with spaces: put 5 \"hello world\" quorum
  del KEY [CL]            delete KEY (writes a tombstone)
  consistency [CL]        show or set the session's default level (starts at ONE)
  status                  each replica: address, up/down as the coordinator sees it, key range, hints held for it
  inspect KEY             what each replica of KEY holds, one line per replica
  display                 what every replica holds, and which keys differ between replicas
Fault injection (only on replicas started with --enable-fault-injection; acts on the replica connected to):
  fault                   show the faults active on this replica
  fault drop PEERS [DIR]  drop messages exchanged with PEERS (names, comma-separated, or all); DIR is to, from or both (default)
  fault delay PEERS MS [DIR]  delay them by MS milliseconds
  fault pause MS          answer nothing, to clients or peers, for MS milliseconds
  fault heal              remove every drop and delay
  help                    this text
  quit                    leave (also: exit, Ctrl-D)";

/// A console command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Show the help.
    Help,
    /// Read a key.
    Get {
        /// The key.
        key: u32,
        /// Level; `None` uses the session default.
        level: Option<Consistency>,
    },
    /// Write a key.
    Put {
        /// The key.
        key: u32,
        /// The value.
        value: String,
        /// Level; `None` uses the session default.
        level: Option<Consistency>,
    },
    /// Delete a key.
    Del {
        /// The key.
        key: u32,
        /// Level; `None` uses the session default.
        level: Option<Consistency>,
    },
    /// Show (`None`) or set the session default level.
    Consistency(Option<Consistency>),
    /// Cluster status.
    Status,
    /// Each replica's version of a key.
    Inspect(u32),
    /// Everything every replica holds.
    Display,
    /// A fault-injection request to the connected replica.
    Fault(proto::FaultRequest),
    /// Leave.
    Quit,
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

fn parse_key(s: &str) -> Result<u32, String> {
    match s.parse::<u32>() {
        Ok(k) if (k as usize) < KEYS => Ok(k),
        _ => Err(format!("key must be an integer from 0 to {}, got {s:?}", KEYS - 1)),
    }
}

fn parse_level(s: &str, hint: &str) -> Result<Consistency, String> {
    Consistency::parse(s).ok_or_else(|| format!("unknown consistency level {s:?}: use ONE, QUORUM or ALL{hint}"))
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
            arity(1, 2, "get KEY [CL]")?;
            Ok(Command::Get { key: parse_key(&args[0])?, level: opt_level(1)? })
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
            Ok(Command::Put { key: parse_key(&args[0])?, value: args[1].clone(), level })
        }
        "del" | "delete" => {
            arity(1, 2, "del KEY [CL]")?;
            Ok(Command::Del { key: parse_key(&args[0])?, level: opt_level(1)? })
        }
        "consistency" => {
            arity(0, 1, "consistency [ONE|QUORUM|ALL]")?;
            Ok(Command::Consistency(opt_level(0)?))
        }
        "status" => arity(0, 0, "status").map(|_| Command::Status),
        "inspect" => {
            arity(1, 1, "inspect KEY")?;
            Ok(Command::Inspect(parse_key(&args[0])?))
        }
        "display" => arity(0, 0, "display").map(|_| Command::Display),
        "fault" => parse_fault(args).map(Command::Fault),
        other => Err(format!("unknown command {other:?}; type help")),
    }
}

fn parse_fault(args: &[String]) -> Result<proto::FaultRequest, String> {
    use proto::{FaultAction as A, FaultDirection as D};
    const USAGE: &str = "usage: fault [drop PEERS [to|from|both] | delay PEERS MS [to|from|both] | pause MS | heal]";
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
        _ => return Err(USAGE.into()),
    }
    Ok(req)
}

/// How a command ended; decides the one-shot exit status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Done.
    Ok,
    /// `get` found nothing.
    NotFound,
    /// The input was wrong.
    BadInput,
    /// The store refused (unavailable, timeout, failure, overloaded).
    Refused,
    /// No connection to the coordinator.
    Unreachable,
    /// `quit`.
    Quit,
}

impl Outcome {
    /// 0 success, 1 not found, 2 bad usage or input, 3 refused by the store, 4 cannot connect.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok | Outcome::Quit => 0,
            Outcome::NotFound => 1,
            Outcome::BadInput => 2,
            Outcome::Refused => 3,
            Outcome::Unreachable => 4,
        }
    }

    fn of(e: &Error) -> Outcome {
        match e {
            Error::InvalidRequest(_) | Error::Config(_) => Outcome::BadInput,
            Error::Unavailable(_)
            | Error::Timeout(_)
            | Error::Failure(_)
            | Error::Overloaded(_)
            | Error::RingMismatch(_)
            | Error::Storage(_)
            | Error::Internal(_) => Outcome::Refused,
            Error::Io(_) | Error::Protocol(_) => Outcome::Unreachable,
        }
    }
}

/// A console session: the coordinator's address, the connection, the default level.
pub struct Session {
    host: String,
    port: u16,
    client: Option<Client>,
    /// The level used when a command names none.
    pub default_level: Consistency,
    /// Print `(not found)` on stdout for a missing key (console) rather than only the exit status (one-shot).
    pub console: bool,
}

const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);
const REQUEST_TIMEOUT: Duration = Duration::from_secs(30);

impl Session {
    /// Connects to the coordinator at `host:port`.
    pub fn connect(host: &str, port: u16) -> Result<Session, Error> {
        let mut s = Session { host: host.to_string(), port, client: None, default_level: Consistency::One, console: true };
        s.client()?;
        Ok(s)
    }

    fn client(&mut self) -> Result<&mut Client, Error> {
        if self.client.is_none() {
            let mut c = Client::connect(&self.host, self.port, CONNECT_TIMEOUT)?;
            c.set_timeout(Some(REQUEST_TIMEOUT))?;
            self.client = Some(c);
        }
        Ok(self.client.as_mut().expect("set above"))
    }

    /// Runs `f` on the connection; a broken connection is dropped so the next command reconnects.
    fn call<T>(&mut self, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        let r = f(self.client()?);
        if matches!(r, Err(Error::Io(_) | Error::Protocol(_))) {
            self.client = None;
        }
        r
    }

    /// The coordinator's name (a ping).
    pub fn coordinator_name(&mut self) -> Result<String, Error> {
        self.call(|c| c.ping())
    }

    /// Runs one command, writing results to `out` and errors (prefixed `error:`) to `err`.
    pub fn execute(&mut self, cmd: Command, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
        match self.run(cmd, out, err) {
            Ok(o) => o,
            Err(e) => {
                let _ = writeln!(err, "error: {e}");
                Outcome::of(&e)
            }
        }
    }

    fn run(&mut self, cmd: Command, out: &mut dyn Write, err: &mut dyn Write) -> Result<Outcome, Error> {
        let w = |out: &mut dyn Write, s: &str| {
            let _ = writeln!(out, "{s}");
        };
        match cmd {
            Command::Help => w(out, HELP),
            Command::Quit => return Ok(Outcome::Quit),
            Command::Consistency(None) => w(out, &format!("Current consistency level is {}.", self.default_level)),
            Command::Consistency(Some(l)) => {
                self.default_level = l;
                w(out, &format!("Consistency level set to {l}."));
            }
            Command::Get { key, level } => {
                let level = level.unwrap_or(self.default_level);
                match self.call(|c| c.get(key, level))? {
                    Some(v) => w(out, &v),
                    None => {
                        if self.console {
                            w(out, "(not found)");
                        } else {
                            w(err, &format!("key {key} not found"));
                        }
                        return Ok(Outcome::NotFound);
                    }
                }
            }
            Command::Put { key, value, level } => {
                let level = level.unwrap_or(self.default_level);
                let r = self.call(|c| c.put(key, &value, level))?;
                w(out, &format!("OK ({} acks at {level}, ts {})", r.acks, fmt_ts(r.micros, r.node)));
            }
            Command::Del { key, level } => {
                let level = level.unwrap_or(self.default_level);
                let r = self.call(|c| c.delete(key, level))?;
                w(out, &format!("OK ({} acks at {level}, ts {})", r.acks, fmt_ts(r.micros, r.node)));
            }
            Command::Status => {
                let s = self.call(|c| c.status())?;
                w(out, &format_status(&s));
            }
            Command::Inspect(key) => {
                let i = self.call(|c| c.inspect(key))?;
                w(out, &format_inspect(&i));
            }
            Command::Display => {
                let d = self.call(|c| c.display(40))?;
                w(out, &format_display(&d));
            }
            Command::Fault(req) => {
                let f = self.call(|c| c.fault(req))?;
                if f.active.is_empty() {
                    w(out, &format!("{}: no faults", f.replica));
                } else {
                    w(out, &format!("{}: {}", f.replica, f.active.join("; ")));
                }
            }
        }
        Ok(Outcome::Ok)
    }
}

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 10 << 20 => format!("{} MiB", b >> 20),
        b if b >= 10 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// How long ago a wall-clock time in microseconds was (`never` for 0).
fn fmt_age(micros: u64) -> String {
    if micros == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let secs = now.saturating_sub(micros) / 1_000_000;
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

fn fmt_ts(micros: u64, node: u32) -> String {
    format!("{micros}.{node:08x}")
}

fn fmt_version(v: &proto::Version) -> String {
    if v.tombstone {
        format!("deleted  ts={}", fmt_ts(v.micros, v.node))
    } else {
        format!("{:?}  ts={}", v.value, fmt_ts(v.micros, v.node))
    }
}

/// `status` output.
pub fn format_status(s: &proto::StatusResult) -> String {
    let mut o = format!("coordinator {} (RF {}, mode {}, ring epoch {})\n", s.coordinator, s.rf, s.mode, s.epoch);
    let _ = writeln!(
        o,
        "{:<12} {:<22} {:<5} {:<9} {:>6}  {:<15} {:>10}  {:<14}",
        "NAME", "ADDRESS", "STATE", "KEYS", "HINTS", "FSYNC", "LOG", "LAST SNAPSHOT"
    );
    for r in &s.replicas {
        let keys = format!("{}-{}", r.range_start, r.range_end);
        let state = if r.up { "up" } else { "down" };
        let me = if r.is_self { "  (this coordinator)" } else { "" };
        let (fsync, log, snap) = match &r.storage {
            None => ("?".to_string(), "?".to_string(), "?".to_string()),
            Some(st) if st.in_memory => ("in memory".to_string(), "-".to_string(), "-".to_string()),
            Some(st) => (st.fsync.clone(), fmt_bytes(st.log_bytes), fmt_age(st.snapshot_micros)),
        };
        let _ =
            writeln!(o, "{:<12} {:<22} {:<5} {:<9} {:>6}  {fsync:<15} {log:>10}  {snap:<14}{me}", r.name, r.address, state, keys, r.hints);
        if let Some(st) = r.storage.as_ref().filter(|st| !st.error.is_empty()) {
            let _ = writeln!(o, "{:<12} storage error: {}", "", st.error);
        }
    }
    o.pop();
    o
}

/// `inspect` output: one line per replica, starting with its name.
pub fn format_inspect(i: &proto::InspectResult) -> String {
    let width = i.replicas.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let lines: Vec<String> = i
        .replicas
        .iter()
        .map(|r| {
            let what = match (&r.version, r.reachable) {
                (_, false) => format!("unreachable ({})", r.error),
                (Some(v), true) => fmt_version(v),
                (None, true) => "none".to_string(),
            };
            format!("{:<width$}  {what}", r.name)
        })
        .collect();
    lines.join("\n")
}

/// The replicas (indexes into `d.replicas`) of `key`, from the ranges and RF in a display result.
fn replicas_of(d: &proto::DisplayResult, key: u32) -> Vec<usize> {
    let n = d.replicas.len();
    let Some(owner) = d.replicas.iter().position(|r| (r.range_start..=r.range_end).contains(&key)) else { return Vec::new() };
    (0..(d.rf as usize).min(n)).map(|j| (owner + j) % n).collect()
}

/// `display` output: each replica's cells, then the keys whose replicas disagree.
pub fn format_display(d: &proto::DisplayResult) -> String {
    let mut o = String::new();
    let mut cells: Vec<std::collections::BTreeMap<u32, &proto::Version>> = Vec::new();
    for r in &d.replicas {
        let map: std::collections::BTreeMap<u32, &proto::Version> =
            r.cells.iter().filter_map(|c| c.version.as_ref().map(|v| (c.key, v))).collect();
        if !r.reachable {
            let _ = writeln!(o, "{} (owns {}-{}): unreachable ({})", r.name, r.range_start, r.range_end, r.error);
        } else {
            let _ = writeln!(o, "{} (owns {}-{}): {} key(s)", r.name, r.range_start, r.range_end, map.len());
            for c in &r.cells {
                if let Some(v) = &c.version {
                    let cut = if c.truncated { "…" } else { "" };
                    let shown = if v.tombstone { "deleted".to_string() } else { format!("{:?}{cut}", v.value) };
                    let _ = writeln!(o, "  {:>3}  {shown}  ts={}", c.key, fmt_ts(v.micros, v.node));
                }
            }
        }
        cells.push(map);
    }
    let keys: BTreeSet<u32> = cells.iter().flat_map(|m| m.keys().copied()).collect();
    let mut diffs = Vec::new();
    for key in keys {
        let reps = replicas_of(d, key);
        let reachable: Vec<usize> = reps.iter().copied().filter(|&i| d.replicas[i].reachable).collect();
        let stamp = |i: usize| cells[i].get(&key).map(|v| (v.micros, v.node, v.tombstone));
        let first = reachable.first().map(|&i| stamp(i));
        if reachable.iter().any(|&i| Some(stamp(i)) != first) {
            let parts: Vec<String> = reachable
                .iter()
                .map(|&i| {
                    let name = &d.replicas[i].name;
                    match cells[i].get(&key) {
                        Some(v) if v.tombstone => format!("{name} deleted@{}", v.micros),
                        Some(v) => format!("{name} {:?}@{}", v.value, v.micros),
                        None => format!("{name} none"),
                    }
                })
                .collect();
            diffs.push(format!("  key {key}: {}", parts.join(", ")));
        }
    }
    if diffs.is_empty() {
        o.push_str("All reachable replicas agree on every key.");
    } else {
        let _ = write!(o, "Keys that differ between replicas ({}):\n{}", diffs.len(), diffs.join("\n"));
    }
    o
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
        assert_eq!(p("GET 5").unwrap(), Command::Get { key: 5, level: None });
        assert_eq!(p("get 255 quorum").unwrap(), Command::Get { key: 255, level: Some(Consistency::Quorum) });
        assert_eq!(
            p("put 5 \"hello world\" ALL").unwrap(),
            Command::Put { key: 5, value: "hello world".into(), level: Some(Consistency::All) }
        );
        assert_eq!(p("Del 0 one").unwrap(), Command::Del { key: 0, level: Some(Consistency::One) });
        assert_eq!(p("consistency").unwrap(), Command::Consistency(None));
        assert_eq!(p("CONSISTENCY quorum").unwrap(), Command::Consistency(Some(Consistency::Quorum)));
        assert_eq!(p("inspect 70").unwrap(), Command::Inspect(70));
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
    }

    #[test]
    fn parse_errors_say_what_is_wrong() {
        let p = |s: &str| parse(&words(s)).unwrap_err();
        assert!(p("get 256").contains("0 to 255"));
        assert!(p("get -1").contains("0 to 255"));
        assert!(p("get x").contains("0 to 255"));
        assert!(p("get 99999999999999999999").contains("0 to 255"));
        assert!(p("get").contains("usage: get"));
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
        assert!(p("fault explode").contains("usage: fault"));
    }

    #[test]
    fn exit_codes() {
        assert_eq!(Outcome::of(&Error::Unavailable("x".into())).exit_code(), 3);
        assert_eq!(Outcome::of(&Error::Timeout("x".into())).exit_code(), 3);
        assert_eq!(Outcome::of(&Error::InvalidRequest("x".into())).exit_code(), 2);
        assert_eq!(Outcome::of(&Error::Io("x".into())).exit_code(), 4);
        assert_eq!(Outcome::NotFound.exit_code(), 1);
    }

    #[test]
    fn display_flags_differing_keys() {
        let v = |micros, value: &str| proto::Version { micros, node: 1, tombstone: false, value: value.into() };
        let cell = |key, ver| proto::KeyVersion { key, version: Some(ver), truncated: false };
        let entry = |name: &str, s, e, cells| proto::ReplicaDumpEntry {
            name: name.into(),
            reachable: true,
            error: String::new(),
            cells,
            range_start: s,
            range_end: e,
        };
        let d = proto::DisplayResult {
            rf: 3,
            replicas: vec![
                entry("r0", 0, 63, vec![cell(5, v(2, "new")), cell(200, v(1, "x"))]),
                entry("r1", 64, 127, vec![cell(5, v(1, "old")), cell(200, v(1, "x"))]),
                entry("r2", 128, 191, vec![cell(5, v(2, "new"))]),
                entry("r3", 192, 255, vec![cell(200, v(1, "x"))]),
            ],
        };
        let out = format_display(&d);
        assert!(out.contains("key 5: r0 \"new\"@2, r1 \"old\"@1, r2 \"new\"@2"), "{out}");
        assert!(!out.contains("key 200"), "200 is on r3, r0, r1 which agree: {out}");
    }
}
