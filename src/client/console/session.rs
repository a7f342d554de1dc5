//! The session: one coordinator connection, the default consistency level,
//! running a [`Command`] against the [`Client`], and the [`Outcome`] that
//! decides the exit status.

use std::io::Write;
use std::time::Duration;

use super::format::{fmt_cursor, fmt_ts, format_display, format_inspect, format_ring, format_status, format_token};
use super::parse::{Command, Condition, HELP, Value};
use crate::client::{Cas, Client, Expect, TxnOutcome};
use crate::cluster::consistency::Consistency;
use crate::cluster::key::escaped;
use crate::error::Error;
use crate::proto;

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
    /// A conditional write's condition did not hold.
    NotApplied,
    /// `quit`.
    Quit,
}

impl Outcome {
    /// 0 success, 1 not found, 2 bad usage or input, 3 refused by the store, 4 cannot connect,
    /// 5 a condition did not hold.
    pub fn exit_code(self) -> u8 {
        match self {
            Outcome::Ok | Outcome::Quit => 0,
            Outcome::NotFound => 1,
            Outcome::BadInput => 2,
            Outcome::Refused => 3,
            Outcome::Unreachable => 4,
            Outcome::NotApplied => 5,
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
            | Error::Internal(_)
            | Error::StaleEpoch(_)
            | Error::Conflict(_) => Outcome::Refused,
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

/// Keys a page looks at when a one-shot `scan` walks every page and names no count.
const WALK_COUNT: u32 = 1000;

/// Whether progress lines are drawn: only on a terminal (scripts get the result alone).
fn progress_shown() -> bool {
    use std::io::IsTerminal;
    std::io::stderr().is_terminal()
}

/// How often `decommission` and `removenode` ask how they are going.
const MOVEMENT_POLL: Duration = Duration::from_millis(250);

/// How often `repair` asks how its pass is going.
const REPAIR_POLL: Duration = Duration::from_millis(250);

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

    /// Starts a decommission or removenode on the connected replica and
    /// follows it with a progress line until it ends. A decommissioned
    /// replica exits: the connection closing after it said it was finishing is the end.
    fn follow_movement(
        &mut self,
        op: proto::membership_request::Op,
        name: &str,
        force: bool,
        out: &mut dyn Write,
        err: &mut dyn Write,
    ) -> Result<Outcome, Error> {
        let w = |out: &mut dyn Write, s: &str| {
            let _ = writeln!(out, "{s}");
        };
        let mut m = self.call(|c| c.membership(op, name, force))?;
        loop {
            if !m.running {
                if progress_shown() {
                    let _ = write!(err, "\r{:100}\r", "");
                }
                if !m.error.is_empty() {
                    w(err, &format!("error: {}", m.error));
                    return Ok(Outcome::Refused);
                }
                w(out, &super::format::format_movement(&m));
                return Ok(Outcome::Ok);
            }
            if progress_shown() {
                let _ = write!(err, "\r{}", super::format::format_movement_progress(&m));
                let _ = err.flush();
            }
            std::thread::sleep(MOVEMENT_POLL);
            match self.call(|c| c.membership(proto::membership_request::Op::Status, "", false)) {
                Ok(next) => m = next,
                Err(Error::Io(_) | Error::Protocol(_)) if op == proto::membership_request::Op::Decommission => {
                    if progress_shown() {
                        let _ = write!(err, "\r{:100}\r", "");
                    }
                    w(out, &format!("decommissioned: {} keys ({}) handed over; the replica left the ring and exited", m.keys, m.bytes));
                    return Ok(Outcome::Ok);
                }
                Err(e) => return Err(e),
            }
        }
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
            Command::Get { key, to_file, level } => {
                let level = level.unwrap_or(self.default_level);
                match self.call(|c| c.get(&key, level))? {
                    Some(v) => match to_file {
                        Some(path) => {
                            if let Err(e) = std::fs::write(&path, &v) {
                                w(err, &format!("error: cannot write {}: {e}", path.display()));
                                return Ok(Outcome::BadInput);
                            }
                            w(out, &format!("{} bytes written to {}", v.len(), path.display()));
                        }
                        // The console shows text; a one-shot get writes the bytes as they are (and a newline, as redis-cli does).
                        None if self.console => w(out, &escaped(&v)),
                        None => {
                            let _ = out.write_all(&v);
                            let _ = out.write_all(b"\n");
                        }
                    },
                    None => {
                        if self.console {
                            w(out, "(not found)");
                        } else {
                            w(err, &format!("key {} not found", escaped(key.as_bytes())));
                        }
                        return Ok(Outcome::NotFound);
                    }
                }
            }
            Command::Put { key, value, level, condition } => {
                let Some(bytes) = read_value(value, err) else { return Ok(Outcome::BadInput) };
                if let Some(condition) = condition {
                    let expect = match condition {
                        Condition::Absent => Expect::Absent,
                        Condition::Equals(old) => match read_value(old, err) {
                            Some(old) => Expect::Equals(old.into_boxed_slice()),
                            None => return Ok(Outcome::BadInput),
                        },
                    };
                    let r = self.call(|c| c.put_if(&key, &bytes, expect))?;
                    return Ok(self.cas_result(r, out, err));
                }
                let level = level.unwrap_or(self.default_level);
                let r = self.call(|c| c.put(&key, &bytes, level))?;
                w(out, &format!("OK ({} acks at {level}, ts {})", r.acks, fmt_ts(r.micros, r.node)));
            }
            Command::Del { key, if_value: Some(old), .. } => {
                let Some(old) = read_value(old, err) else { return Ok(Outcome::BadInput) };
                let r = self.call(|c| c.delete_if(&key, &old))?;
                return Ok(self.cas_result(r, out, err));
            }
            Command::Txn { conditions, writes } => {
                let mut conds = Vec::with_capacity(conditions.len());
                for (k, c) in conditions {
                    let v = match c {
                        Condition::Absent => None,
                        Condition::Equals(v) => match read_value(v, err) {
                            Some(v) => Some(v),
                            None => return Ok(Outcome::BadInput),
                        },
                    };
                    conds.push((k.into_bytes(), v));
                }
                let mut ws = Vec::with_capacity(writes.len());
                for (k, v) in writes {
                    let v = match v {
                        None => None,
                        Some(v) => match read_value(v, err) {
                            Some(v) => Some(v),
                            None => return Ok(Outcome::BadInput),
                        },
                    };
                    ws.push((k.into_bytes(), v));
                }
                return Ok(match self.call(|c| c.txn(conds, ws))? {
                    TxnOutcome::Committed { micros, node } => {
                        w(out, &format!("committed (ts {})", fmt_ts(micros, node)));
                        Outcome::Ok
                    }
                    TxnOutcome::NotApplied { current } => {
                        let shown = |v: &Option<Vec<u8>>| v.as_ref().map_or_else(|| "none".to_string(), |v| format!("\"{}\"", escaped(v)));
                        let list: Vec<String> = current.iter().map(|(k, v)| format!("{} = {}", escaped(k), shown(v))).collect();
                        if self.console {
                            w(out, &format!("not applied (current: {})", list.join(", ")));
                        } else {
                            // For scripts: the compared keys' values, one a line (empty for none); the reason on stderr.
                            for (_, v) in &current {
                                let _ = out.write_all(v.as_deref().unwrap_or_default());
                                let _ = out.write_all(b"\n");
                            }
                            w(err, &format!("not applied (current: {})", list.join(", ")));
                        }
                        Outcome::NotApplied
                    }
                });
            }
            Command::MGet(keys) => {
                let values = self.call(|c| c.mget(keys.iter().map(|k| k.clone().into_bytes()).collect()))?;
                for v in &values {
                    match v {
                        Some(v) if self.console => w(out, &escaped(v)),
                        Some(v) => {
                            let _ = out.write_all(v);
                            let _ = out.write_all(b"\n");
                        }
                        None if self.console => w(out, "(not found)"),
                        None => w(out, ""),
                    }
                }
                if values.iter().all(Option::is_none) {
                    return Ok(Outcome::NotFound);
                }
            }
            Command::Del { key, level, .. } => {
                let level = level.unwrap_or(self.default_level);
                let r = self.call(|c| c.delete(&key, level))?;
                w(out, &format!("OK ({} acks at {level}, ts {})", r.acks, fmt_ts(r.micros, r.node)));
            }
            Command::Status => {
                let s = self.call(|c| c.status())?;
                w(out, &format_status(&s));
            }
            Command::Inspect(key) => {
                let i = self.call(|c| c.inspect(&key))?;
                w(out, &format_inspect(&i));
            }
            Command::Display => {
                let d = self.call(|c| c.display(40, 0))?;
                w(out, &format_display(&d));
            }
            Command::ISet { path, metadata } => {
                let h = self.call(|c| crate::client::images::iset(c, &path, &metadata))?;
                w(out, &h.to_hex());
            }
            Command::IGet { path } => match self.call(|c| crate::client::images::iget(c, &path))? {
                (_, Some(f)) if f.distance == 0 => w(out, &escaped(&f.metadata)),
                (h, Some(f)) => {
                    w(out, &escaped(&f.metadata));
                    w(err, &format!("(nearest stored image: hash {} at distance {} from {h})", f.hash, f.distance));
                }
                (h, None) => {
                    w(err, &format!("no stored image within distance {} of hash {h}", crate::client::images::MAX_DISTANCE));
                    return Ok(Outcome::NotFound);
                }
            },
            Command::Token(key) => {
                let t = self.call(|c| c.token(&key))?;
                if self.console {
                    w(out, &format_token(&t));
                } else {
                    // The token alone on the first line, for scripts; then the slot, then each replica.
                    w(out, &format!("{}\n{}", t.token, t.slot));
                    for r in &t.replicas {
                        w(out, r);
                    }
                }
            }
            Command::Repair => {
                let first = self.call(|c| c.repair(true))?;
                let id = first.pass;
                let mut r = first;
                while r.pass == id && r.running {
                    if progress_shown() {
                        let _ = write!(err, "\r{}", super::format::format_repair_progress(&r));
                        let _ = err.flush();
                    }
                    std::thread::sleep(REPAIR_POLL);
                    r = self.call(|c| c.repair(false))?;
                }
                if progress_shown() {
                    let _ = write!(err, "\r{:80}\r", "");
                }
                if r.pass != id {
                    w(out, &format!("repair pass {id} finished (the coordinator has run pass {} since)", r.pass));
                } else {
                    w(out, &super::format::format_repair(&r));
                }
            }
            Command::Decommission { force } => {
                return self.follow_movement(proto::membership_request::Op::Decommission, "", force, out, err);
            }
            Command::RemoveNode { name, force } => {
                return self.follow_movement(proto::membership_request::Op::RemoveNode, &name, force, out, err);
            }
            Command::Movement => {
                let m = self.call(|c| c.membership(proto::membership_request::Op::Status, "", false))?;
                w(out, &super::format::format_movement(&m));
            }
            Command::Ring { tokens } => {
                let s = self.call(|c| c.status())?;
                w(out, &format_ring(&s, tokens));
            }
            Command::Scan { cursor, count } if self.console => {
                let page = self.call(|c| c.scan(&cursor, count.unwrap_or(0)))?;
                for k in &page.keys {
                    w(out, &escaped(k));
                }
                if !page.unanswered.is_empty() {
                    w(err, &format!("warning: {} did not answer; keys written only to them may be missing", page.unanswered.join(", ")));
                }
                if page.done {
                    w(out, "(scan complete)");
                } else {
                    w(out, &format!("next cursor: {}", fmt_cursor(&page.cursor)));
                }
            }
            Command::Scan { mut cursor, count } => {
                // One-shot: every page, each key's bytes as they are and a newline.
                let mut silent: Vec<String> = Vec::new();
                loop {
                    let page = self.call(|c| c.scan(&cursor, count.unwrap_or(WALK_COUNT)))?;
                    for k in &page.keys {
                        let _ = out.write_all(k);
                        let _ = out.write_all(b"\n");
                    }
                    for name in page.unanswered {
                        if !silent.contains(&name) {
                            silent.push(name);
                        }
                    }
                    if page.done {
                        break;
                    }
                    if page.cursor.is_empty() {
                        return Err(Error::Protocol("a scan page that is not the last came without a cursor".into()));
                    }
                    cursor = page.cursor;
                }
                if !silent.is_empty() {
                    w(err, &format!("warning: {} did not answer some pages; keys written only to them may be missing", silent.join(", ")));
                }
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

impl Session {
    /// Prints a conditional write's outcome: `applied`, or `not applied
    /// (current: …)` in the console; one-shot, the current value's bytes alone.
    fn cas_result(&self, r: Cas, out: &mut dyn Write, err: &mut dyn Write) -> Outcome {
        let current = match r {
            Cas::Applied(_) => {
                let _ = writeln!(out, "applied");
                return Outcome::Ok;
            }
            Cas::NotApplied { current } => current,
        };
        let shown = current.as_ref().map_or_else(|| "none".to_string(), |v| format!("\"{}\"", escaped(v)));
        if self.console {
            let _ = writeln!(out, "not applied (current: {shown})");
        } else {
            // For scripts: the current value as it is on stdout (nothing if none), the reason on stderr.
            if let Some(v) = &current {
                let _ = out.write_all(v);
                let _ = out.write_all(b"\n");
            }
            let _ = writeln!(err, "not applied (current: {shown})");
        }
        Outcome::NotApplied
    }
}

/// A value's bytes: the text, or the file's (an error says why not).
fn read_value(value: Value, err: &mut dyn Write) -> Option<Vec<u8>> {
    match value {
        Value::Text(t) => Some(t.into_bytes()),
        Value::File(path) => match std::fs::read(&path) {
            Ok(b) => Some(b),
            Err(e) => {
                let _ = writeln!(err, "error: cannot read {}: {e}", path.display());
                None
            }
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exit_codes() {
        assert_eq!(Outcome::of(&Error::Unavailable("x".into())).exit_code(), 3);
        assert_eq!(Outcome::of(&Error::Timeout("x".into())).exit_code(), 3);
        assert_eq!(Outcome::of(&Error::InvalidRequest("x".into())).exit_code(), 2);
        assert_eq!(Outcome::of(&Error::Io("x".into())).exit_code(), 4);
        assert_eq!(Outcome::NotFound.exit_code(), 1);
        assert_eq!(Outcome::NotApplied.exit_code(), 5);
    }
}
