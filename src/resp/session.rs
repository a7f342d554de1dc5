//! One RESP connection's state and its commands, executed on the node.
//!
//! A [`Session`] holds what Redis keeps per connection — the consistency
//! level (quorumkv's extension), the name, the watched keys and a `MULTI`
//! queue — and turns each [`Cmd`] into the node's own typed requests
//! ([`ClientRequest`]), through [`Node::handle_client`] like the native
//! protocol: the same checks, the same coordinator, the same caches and
//! transactions. Nothing here touches a socket; the connection
//! ([`crate::net::resp_conn`]) reads commands and writes the [`Outcome`]s.
//!
//! # What each command becomes
//!
//! | command | requests |
//! |---|---|
//! | `GET`, `TYPE` | one `Get` at the connection's level |
//! | `SET` | one `Put` at the level |
//! | `SET … NX`, `SETNX` | one `Put` at SERIAL if absent (a Paxos compare-and-set) |
//! | `SET … XX`, `SET … GET`, `GETSET` | a SERIAL read, then `Put`s at SERIAL if the value is still the one read, retried while it changes |
//! | `MGET`, `EXISTS` | one read-atomic `MGet` (QUORUM) |
//! | `DEL` | an `MGet`, then a transaction deleting the keys that exist if every key is still as read (so the count is exact and the delete atomic), retried while they change |
//! | `MSET` | a transaction of the writes (one key: a plain `Put`) |
//! | `MSETNX` | a transaction of the writes if every key is absent |
//! | `EXEC` | an `MGet` of the keys the queued commands read, then one transaction: the watched keys' values and the read keys' values as conditions, the queued writes as writes |
//!
//! Replies that one request answers may be *deferred* (the worker goes back
//! to the socket, the call answers; see [`crate::net::conn`]): the request's
//! token is then the [`Shape`] the reply takes. The others wait.
//!
//! `WATCH` remembers each key's value when it is watched; `EXEC` commits
//! only if every watched key still holds that value (a key changed and
//! changed back counts as unchanged: quorumkv compares values, as a
//! compare-and-set does). Transactions that lose to a concurrent one
//! ([`Error::Conflict`]) are retried with a growing pause, up to
//! [`CONFLICT_TRIES`] times, since Redis's `MSET` and `EXEC` never fail that way.

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::coordinator::command::Responder;
use crate::error::Error;
use crate::message::{ClientRequest, Limits, Reply as KvReply, ScanCursor};
use crate::node::{Answered, Deferred, Node, Unfinished};
use crate::paxos::Expect;
use crate::resp::Reply;
use crate::resp::command::{COMMANDS, ClientCmd, Cmd, CommandCmd, SetIf, Spec};
use crate::resp::glob::Glob;
use crate::txn::TxnSpec;

/// Compare-and-set rounds (`SET … XX`, `GETSET`, `DEL`, `EXEC` reads) before giving up with `TRYAGAIN`.
pub const CAS_TRIES: usize = 16;

/// Attempts of a transaction that keeps losing to concurrent ones.
pub const CONFLICT_TRIES: u32 = 12;

/// The most SCAN cursors a node remembers (the oldest go first).
const MAX_CURSORS: usize = 16_384;

/// Cursors at or above this are remembered positions; below 256, a slot's start.
const CURSOR_TABLE: u64 = 1 << 63;

/// What every RESP connection of a node shares.
pub struct Shared {
    started: Instant,
    next_id: AtomicU64,
    /// RESP connections open now.
    pub clients: AtomicUsize,
    cursors: Mutex<Cursors>,
    /// The RESP port (for `INFO`).
    pub port: u16,
}

/// SCAN positions inside a slot: a Redis cursor is a number, a quorumkv one
/// a slot and a key, so mid-slot positions are remembered by number.
struct Cursors {
    map: HashMap<u64, ScanCursor>,
    order: VecDeque<u64>,
    next: u64,
}

impl Shared {
    /// The state of a node's RESP listener on `port`.
    pub fn new(port: u16) -> Shared {
        // Numbers differ from process to process, so a cursor of another replica or an earlier run is refused, not misread.
        let mut seed = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_nanos() as u64)
            ^ u64::from(std::process::id());
        let next = crate::rand::splitmix64(&mut seed) >> 2;
        Shared {
            started: Instant::now(),
            next_id: AtomicU64::new(1),
            clients: AtomicUsize::new(0),
            cursors: Mutex::new(Cursors { map: HashMap::new(), order: VecDeque::new(), next }),
            port,
        }
    }

    fn remember(&self, c: ScanCursor) -> u64 {
        let mut t = self.cursors.lock();
        t.next = t.next.wrapping_add(1);
        let id = CURSOR_TABLE | t.next;
        t.map.insert(id, c);
        t.order.push_back(id);
        while t.order.len() > MAX_CURSORS {
            if let Some(old) = t.order.pop_front() {
                t.map.remove(&old);
            }
        }
        id
    }

    fn recall(&self, id: u64) -> Option<ScanCursor> {
        self.cursors.lock().map.get(&id).cloned()
    }
}

/// The token bit of a deferred reply to be encoded in RESP3.
const RESP3_TOKEN: u64 = 1 << 8;

/// How a reply of the node becomes a RESP reply: the token of a deferred one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u64)]
pub enum Shape {
    /// A value: bulk, or nil.
    Value = 1,
    /// A write: `+OK`.
    Ok = 2,
    /// A conditional write: `+OK`, or nil if not applied (`SET … NX`).
    OkOrNil = 3,
    /// A conditional write: `:1`, or `:0` if not applied (`SETNX`, `MSETNX`).
    Applied = 4,
    /// Values: an array of bulks (`MGET`).
    Values = 5,
    /// Values: how many there are (`EXISTS`).
    Count = 6,
    /// A value: `+string`, or `+none` (`TYPE`).
    Type = 7,
}

impl Shape {
    /// A deferred reply's token: the shape, and the version to encode it in.
    pub fn token(self, version: crate::resp::Version) -> u64 {
        self as u64 | if version == crate::resp::Version::Resp3 { RESP3_TOKEN } else { 0 }
    }

    /// The shape and version a deferred reply's token names.
    pub fn of_token(t: u64) -> Option<(Shape, crate::resp::Version)> {
        let version = if t & RESP3_TOKEN != 0 { crate::resp::Version::Resp3 } else { crate::resp::Version::Resp2 };
        [Shape::Value, Shape::Ok, Shape::OkOrNil, Shape::Applied, Shape::Values, Shape::Count, Shape::Type]
            .into_iter()
            .find(|s| *s as u64 == t & !RESP3_TOKEN)
            .map(|s| (s, version))
    }

    /// The RESP reply to `r`.
    pub fn reply(self, r: KvReply) -> Reply {
        let bulk = |v: Option<Box<[u8]>>| Reply::Bulk(v.map(|v| v.into_vec()));
        match (self, r) {
            (_, KvReply::Error(e)) => error_reply(&e),
            (Shape::Value, KvReply::Read(v)) => Reply::Bulk(v.and_then(|v| v.value).map(|v| v.into_vec())),
            (Shape::Value, KvReply::SerialRead(v)) => bulk(v),
            (Shape::Type, KvReply::Read(v)) => Reply::Simple(if v.is_some_and(|v| v.value.is_some()) { "string" } else { "none" }.into()),
            (Shape::Type, KvReply::SerialRead(v)) => Reply::Simple(if v.is_some() { "string" } else { "none" }.into()),
            (Shape::Ok | Shape::OkOrNil, KvReply::Write { .. } | KvReply::TxnCommitted { .. }) => Reply::ok(),
            (Shape::OkOrNil, KvReply::NotApplied { .. } | KvReply::TxnNotApplied { .. }) => Reply::Bulk(None),
            (Shape::Applied, KvReply::Write { .. } | KvReply::TxnCommitted { .. }) => Reply::Integer(1),
            (Shape::Applied, KvReply::NotApplied { .. } | KvReply::TxnNotApplied { .. }) => Reply::Integer(0),
            (Shape::Values, KvReply::Values(kvs)) => Reply::Array(Some(kvs.into_iter().map(|(_, v)| bulk(v)).collect())),
            (Shape::Count, KvReply::Values(kvs)) => Reply::Integer(kvs.iter().filter(|(_, v)| v.is_some()).count() as i64),
            (s, r) => Reply::error("ERR", &format!("internal: a {s:?} reply cannot be made of {}", what(&r))),
        }
    }
}

fn what(r: &KvReply) -> &'static str {
    match r {
        KvReply::Read(_) => "a read",
        KvReply::Write { .. } => "a write",
        KvReply::NotApplied { .. } => "a refused write",
        KvReply::SerialRead(_) => "a serial read",
        KvReply::TxnCommitted { .. } => "a commit",
        KvReply::TxnNotApplied { .. } => "a refused transaction",
        KvReply::Values(_) => "values",
        _ => "another reply",
    }
}

/// A quorumkv error as a Redis-style error reply: the code says what a client can do.
pub fn error_reply(e: &Error) -> Reply {
    let code = match e {
        Error::InvalidRequest(_) | Error::Protocol(_) | Error::Config(_) | Error::RingMismatch(_) | Error::Internal(_) => "ERR",
        Error::Unavailable(_) => "UNAVAILABLE",
        Error::Timeout(_) => "TIMEOUT",
        Error::Failure(_) | Error::Io(_) => "FAILURE",
        Error::Storage(_) => "STORAGE",
        Error::Overloaded(_) | Error::StaleEpoch(_) | Error::Conflict(_) => "TRYAGAIN",
    };
    let text = match e {
        Error::Internal(m) => format!("internal: {m}"),
        Error::Storage(m) => format!("{m}; nothing was acknowledged"),
        m => m.message().to_string(),
    };
    Reply::error(code, &text)
}

/// What the connection does with a command's result.
pub enum Outcome {
    /// Write this reply (then run the work, if any).
    Reply(Reply, Option<Deferred>),
    /// The call answers through the responder; finish it once that reply is out.
    Later(Unfinished),
    /// Write this reply and close the connection.
    Close(Reply),
}

impl From<Reply> for Outcome {
    fn from(r: Reply) -> Self {
        Outcome::Reply(r, None)
    }
}

/// A command queued after `MULTI`, its keys and values already checked.
#[derive(Debug, Clone)]
enum Queued {
    Get(Key),
    Set(Key, Box<[u8]>),
    Del(Vec<Key>),
    Exists(Vec<Key>),
    MGet(Vec<Key>),
    MSet(Vec<(Key, Box<[u8]>)>),
    Ping(Option<Vec<u8>>),
    Echo(Vec<u8>),
}

impl Queued {
    /// How many keys it names.
    fn keys(&self) -> usize {
        match self {
            Queued::Get(_) | Queued::Set(..) => 1,
            Queued::Del(ks) | Queued::Exists(ks) | Queued::MGet(ks) => ks.len(),
            Queued::MSet(kvs) => kvs.len(),
            // Nothing to commit, but they take room: each counts as a key.
            Queued::Ping(_) | Queued::Echo(_) => 1,
        }
    }

    /// The bytes of values it writes (or echoes).
    fn bytes(&self) -> usize {
        match self {
            Queued::Set(_, v) => v.len(),
            Queued::MSet(kvs) => kvs.iter().map(|(_, v)| v.len()).sum(),
            Queued::Ping(Some(m)) | Queued::Echo(m) => m.len(),
            _ => 0,
        }
    }

    /// The keys whose values it needs.
    fn reads(&self) -> &[Key] {
        match self {
            Queued::Get(k) => std::slice::from_ref(k),
            Queued::Del(ks) | Queued::Exists(ks) | Queued::MGet(ks) => ks,
            _ => &[],
        }
    }
}

/// A `MULTI` under way.
#[derive(Default)]
struct Multi {
    queued: Vec<Queued>,
    /// A command was refused while queueing: `EXEC` discards the transaction.
    failed: bool,
    /// Keys named and bytes carried by the queue so far.
    keys: usize,
    bytes: usize,
}

/// One RESP connection's state.
pub struct Session<'a> {
    node: &'a Arc<Node>,
    shared: &'a Shared,
    id: u64,
    level: Consistency,
    name: Option<Vec<u8>>,
    /// Watched keys with their values when watched, in order.
    watched: Vec<(Key, Option<Box<[u8]>>)>,
    multi: Option<Multi>,
    /// For the back-off's jitter.
    rng: u64,
    /// The protocol version (`HELLO`).
    version: crate::resp::Version,
}

type Step<T> = std::result::Result<T, Reply>;

/// A transaction's writes (`None`: delete).
type Writes = Vec<(Key, Option<Box<[u8]>>)>;

/// Keys with their values (`None`: absent).
type Values = HashMap<Key, Option<Box<[u8]>>>;

impl<'a> Session<'a> {
    /// A new connection's session.
    pub fn new(node: &'a Arc<Node>, shared: &'a Shared) -> Session<'a> {
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        Session {
            node,
            shared,
            id,
            level: node.cfg.resp_consistency,
            name: None,
            watched: Vec::new(),
            multi: None,
            rng: id,
            version: crate::resp::Version::Resp2,
        }
    }

    /// The connection's consistency level.
    pub fn level(&self) -> Consistency {
        self.level
    }

    /// The protocol version replies are encoded in.
    pub fn version(&self) -> crate::resp::Version {
        self.version
    }

    fn limits(&self) -> Limits {
        self.node.limits()
    }

    fn key(&self, raw: Vec<u8>) -> Step<Key> {
        self.limits().key(raw).map_err(|e| error_reply(&e))
    }

    fn keys(&self, raw: Vec<Vec<u8>>) -> Step<Vec<Key>> {
        let limits = self.limits();
        raw.into_iter().map(|k| limits.key(k).map_err(|e| error_reply(&e))).collect()
    }

    fn value(&self, v: Vec<u8>) -> Step<Box<[u8]>> {
        self.limits().value(&v).map_err(|e| error_reply(&e))?;
        Ok(v.into_boxed_slice())
    }

    /// Executes one command. With `later`, a reply one request answers may be
    /// deferred to that responder ([`Outcome::Later`]).
    /// The responder's token is `tag` plus the reply's [`Shape`] token (below bit 16).
    pub fn execute(&mut self, args: Vec<Vec<u8>>, later: Option<(&Arc<dyn Responder>, u64)>) -> Outcome {
        let cmd = match Cmd::parse(args) {
            Ok(c) => c,
            Err(refusal) => {
                if let Some(m) = &mut self.multi {
                    m.failed = true;
                }
                return Reply::Error(refusal).into();
            }
        };
        if self.multi.is_some() {
            return self.in_multi(cmd);
        }
        match self.run(cmd, later) {
            Ok(o) => o,
            Err(r) => r.into(),
        }
    }

    fn run(&mut self, cmd: Cmd, later: Option<(&Arc<dyn Responder>, u64)>) -> Step<Outcome> {
        let level = self.level;
        Ok(match cmd {
            Cmd::Get(k) => self.call(ClientRequest::Get { key: self.key(k)?, level }, Shape::Value, later),
            Cmd::Type(k) => self.call(ClientRequest::Get { key: self.key(k)?, level }, Shape::Type, later),
            Cmd::Set { key, value, only, get } => {
                let (key, value) = (self.key(key)?, self.value(value)?);
                match (only, get) {
                    (SetIf::Always, false) => {
                        self.call(ClientRequest::Put { key, value: value.into_vec(), level, condition: None }, Shape::Ok, later)
                    }
                    (SetIf::Absent, false) => self.call(put_if_absent(key, value), Shape::OkOrNil, later),
                    (SetIf::Absent, true) => match self.wait(put_if_absent(key, value)) {
                        KvReply::Write { .. } => Reply::Bulk(None).into(),
                        KvReply::NotApplied { current } => Reply::Bulk(current.map(|v| v.into_vec())).into(),
                        r => Shape::Ok.reply(r).into(),
                    },
                    (SetIf::Always | SetIf::Present, get) => {
                        let (old, applied) = self.swap(key, &value, only == SetIf::Present)?;
                        if get {
                            Reply::Bulk(old.map(|v| v.into_vec())).into()
                        } else if applied {
                            Reply::ok().into()
                        } else {
                            Reply::Bulk(None).into()
                        }
                    }
                }
            }
            Cmd::SetNx(key, value) => self.call(put_if_absent(self.key(key)?, self.value(value)?), Shape::Applied, later),
            Cmd::GetSet(key, value) => Reply::Bulk(self.swap(self.key(key)?, &self.value(value)?, false)?.0.map(|v| v.into_vec())).into(),
            Cmd::Del(keys) => Reply::Integer(self.del(distinct(self.keys(keys)?))? as i64).into(),
            Cmd::Exists(keys) => {
                let keys = self.keys(keys)?;
                let unique = distinct(keys.clone());
                if unique.len() == keys.len() {
                    self.call(self.mget(unique)?, Shape::Count, later)
                } else {
                    let found = self.values(unique)?;
                    Reply::Integer(keys.iter().filter(|k| found.get(*k).is_some_and(Option::is_some)).count() as i64).into()
                }
            }
            Cmd::MGet(keys) => {
                let keys = self.keys(keys)?;
                let unique = distinct(keys.clone());
                if unique.len() == keys.len() {
                    self.call(self.mget(unique)?, Shape::Values, later)
                } else {
                    let found = self.values(unique)?;
                    Reply::Array(Some(keys.iter().map(|k| Reply::Bulk(found.get(k).cloned().flatten().map(|v| v.into_vec()))).collect()))
                        .into()
                }
            }
            Cmd::MSet(pairs) => {
                let writes = self.pairs(pairs)?;
                if let [(key, value)] = &writes[..] {
                    // One key: a plain write is atomic already.
                    let req = ClientRequest::Put { key: key.clone(), value: value.to_vec(), level, condition: None };
                    return Ok(self.call(req, Shape::Ok, later));
                }
                let spec = TxnSpec { conditions: Vec::new(), writes: writes.into_iter().map(|(k, v)| (k, Some(v))).collect() };
                Shape::Ok.reply(self.txn(spec)?).into()
            }
            Cmd::MSetNx(pairs) => {
                let writes = self.pairs(pairs)?;
                let spec = TxnSpec {
                    conditions: writes.iter().map(|(k, _)| (k.clone(), Expect::Absent)).collect(),
                    writes: writes.into_iter().map(|(k, v)| (k, Some(v))).collect(),
                };
                Shape::Applied.reply(self.txn(spec)?).into()
            }
            Cmd::Watch(keys) => {
                let keys = distinct(self.keys(keys)?);
                let fresh: Vec<Key> = keys.into_iter().filter(|k| !self.watched.iter().any(|(w, _)| w == k)).collect();
                let limit = self.limits().max_txn_keys;
                if self.watched.len() + fresh.len() > limit {
                    return Err(Reply::error(
                        "ERR",
                        &format!("WATCH of more than {limit} keys: EXEC could not commit them (--max-txn-keys)"),
                    ));
                }
                if !fresh.is_empty() {
                    let found = self.values(fresh.clone())?;
                    self.watched.extend(fresh.into_iter().map(|k| {
                        let v = found.get(&k).cloned().flatten();
                        (k, v)
                    }));
                }
                Reply::ok().into()
            }
            Cmd::Unwatch => {
                self.watched.clear();
                Reply::ok().into()
            }
            Cmd::Multi => {
                self.multi = Some(Multi::default());
                Reply::ok().into()
            }
            Cmd::Exec => Reply::error("ERR", "EXEC without MULTI").into(),
            Cmd::Discard => Reply::error("ERR", "DISCARD without MULTI").into(),
            Cmd::Scan { cursor, pattern, count } => self.scan(cursor, pattern, count)?.into(),
            Cmd::DbSize => Reply::Integer(self.dbsize() as i64).into(),
            Cmd::Ping(None) => Reply::Simple("PONG".into()).into(),
            Cmd::Ping(Some(m)) | Cmd::Echo(m) => Reply::Bulk(Some(m)).into(),
            Cmd::Select => Reply::ok().into(),
            Cmd::Quit => Outcome::Close(Reply::ok()),
            Cmd::Hello { version, name } => {
                if name.is_some() {
                    self.name = name;
                }
                if let Some(v) = version {
                    self.version = v;
                }
                self.hello().into()
            }
            Cmd::Client(c) => match c {
                ClientCmd::SetName(n) => {
                    self.name = if n.is_empty() { None } else { Some(n) };
                    Reply::ok()
                }
                ClientCmd::GetName => Reply::Bulk(self.name.clone()),
                ClientCmd::Id => Reply::Integer(self.id as i64),
                ClientCmd::SetInfo => Reply::ok(),
            }
            .into(),
            Cmd::Info(sections) => Reply::Bulk(Some(self.info(&sections).into_bytes())).into(),
            Cmd::Command(c) => match c {
                CommandCmd::All => Reply::Array(Some(COMMANDS.iter().map(command_info).collect())),
                CommandCmd::Count => Reply::Integer(COMMANDS.len() as i64),
                CommandCmd::Info(names) => Reply::Array(Some(
                    names.iter().map(|n| crate::resp::command::lookup(n).map_or(Reply::Array(None), command_info)).collect(),
                )),
                CommandCmd::Docs => Reply::Array(Some(Vec::new())),
            }
            .into(),
            Cmd::ConfigGet(params) => {
                // What redis-benchmark and friends ask: quorumkv's answers in Redis's terms.
                let known: [(&str, &str); 4] = [("save", ""), ("appendonly", "yes"), ("databases", "1"), ("maxmemory", "0")];
                let mut out = Vec::new();
                for (name, value) in known {
                    if params.iter().any(|p| Glob::new(&p.to_ascii_lowercase()).matches(name.as_bytes())) {
                        out.push((Reply::Bulk(Some(name.as_bytes().to_vec())), Reply::Bulk(Some(value.as_bytes().to_vec()))));
                    }
                }
                Reply::Map(out).into()
            }
            Cmd::Consistency(None) => Reply::Simple(self.level.to_string()).into(),
            Cmd::Consistency(Some(l)) => {
                self.level = l;
                Reply::ok().into()
            }
        })
    }

    /// A command after `MULTI`: queued, or `EXEC`/`DISCARD`.
    fn in_multi(&mut self, cmd: Cmd) -> Outcome {
        let queued = match cmd {
            Cmd::Exec => {
                let m = self.multi.take().unwrap_or_default();
                let watched = std::mem::take(&mut self.watched);
                if m.failed {
                    return Reply::error("EXECABORT", "Transaction discarded because of previous errors.").into();
                }
                return match self.exec(m.queued, watched) {
                    Ok(r) | Err(r) => r.into(),
                };
            }
            Cmd::Discard => {
                self.multi = None;
                self.watched.clear();
                return Reply::ok().into();
            }
            Cmd::Multi => return Reply::error("ERR", "MULTI calls can not be nested").into(),
            Cmd::Watch(_) => return Reply::error("ERR", "WATCH inside MULTI is not allowed").into(),
            Cmd::Quit => return Outcome::Close(Reply::ok()),
            Cmd::Get(k) => self.key(k).map(Queued::Get),
            Cmd::Set { key, value, only: SetIf::Always, get: false } => self.key(key).and_then(|k| Ok(Queued::Set(k, self.value(value)?))),
            Cmd::Del(keys) => self.keys(keys).map(|k| Queued::Del(distinct(k))),
            Cmd::Exists(keys) => self.keys(keys).map(Queued::Exists),
            Cmd::MGet(keys) => self.keys(keys).map(Queued::MGet),
            Cmd::MSet(pairs) => self.pairs(pairs).map(Queued::MSet),
            Cmd::Ping(m) => Ok(Queued::Ping(m)),
            Cmd::Echo(m) => Ok(Queued::Echo(m)),
            other => Err(Reply::error(
                "ERR",
                &format!(
                    "{} cannot be queued in a quorumkv transaction (it has no all-or-nothing meaning there); \
                     MULTI takes GET, SET without options, DEL, EXISTS, MGET, MSET, PING and ECHO",
                    cmd_name(&other)
                ),
            )),
        };
        let limits = self.limits();
        let Some(m) = &mut self.multi else { return Reply::error("ERR", "internal: no MULTI").into() };
        match queued {
            Ok(_) if m.failed => Reply::Simple("QUEUED".into()).into(), // EXEC will discard it anyway
            Ok(q) => {
                // The queue is bounded by what one transaction may carry (keys named
                // more than once count each time, up to four times the key limit).
                m.keys += q.keys();
                m.bytes += q.bytes();
                m.queued.push(q);
                let (keys, bytes) = (m.keys, m.bytes);
                if keys > 4 * limits.max_txn_keys || bytes > limits.max_txn_bytes {
                    m.failed = true;
                    m.queued.clear();
                    return Reply::error(
                        "ERR",
                        &format!(
                            "the queued commands name {keys} keys and {bytes} bytes of values, more than one transaction may carry \
                             (--max-txn-keys {}, --max-txn-bytes {}); EXEC will discard the transaction",
                            limits.max_txn_keys, limits.max_txn_bytes
                        ),
                    )
                    .into();
                }
                Reply::Simple("QUEUED".into()).into()
            }
            Err(e) => {
                m.failed = true;
                e.into()
            }
        }
    }

    /// One request; deferred with `later` when the node can.
    fn call(&self, req: ClientRequest, shape: Shape, later: Option<(&Arc<dyn Responder>, u64)>) -> Outcome {
        match self.node.handle_client(req, later.map(|(r, tag)| (r, tag | shape.token(self.version)))) {
            Answered::Now(h) => Outcome::Reply(shape.reply(h.reply), h.after),
            Answered::Later(u) => Outcome::Later(u),
        }
    }

    /// One request, waited for.
    fn wait(&self, req: ClientRequest) -> KvReply {
        match self.node.handle_client(req, None) {
            Answered::Now(h) => {
                if let Some(after) = h.after {
                    after.run();
                }
                h.reply
            }
            Answered::Later(u) => {
                u.finish();
                KvReply::Error(Error::Internal("a request without a responder was deferred".into()))
            }
        }
    }

    fn mget(&self, keys: Vec<Key>) -> Step<ClientRequest> {
        crate::message::txn::mget_of(keys.into_iter().map(Key::into_vec).collect(), &self.limits()).map_err(|e| error_reply(&e))
    }

    /// The values of `keys` (distinct), read-atomically.
    fn values(&self, keys: Vec<Key>) -> Step<Values> {
        match self.wait(self.mget(keys)?) {
            KvReply::Values(kvs) => Ok(kvs.into_iter().collect()),
            r => Err(Shape::Values.reply(r)),
        }
    }

    fn pairs(&self, pairs: crate::resp::command::Pairs) -> Step<Vec<(Key, Box<[u8]>)>> {
        // The last value of a key named twice wins, as in Redis.
        let mut out: Vec<(Key, Box<[u8]>)> = Vec::with_capacity(pairs.len());
        let mut at: HashMap<Key, usize> = HashMap::new();
        for (k, v) in pairs {
            let (k, v) = (self.key(k)?, self.value(v)?);
            match at.get(&k) {
                Some(&i) => out[i].1 = v,
                None => {
                    at.insert(k.clone(), out.len());
                    out.push((k, v));
                }
            }
        }
        Ok(out)
    }

    /// A transaction, retried while it loses to concurrent ones.
    fn txn(&mut self, spec: TxnSpec) -> Step<KvReply> {
        let limits = self.limits();
        spec.check(limits.max_txn_keys, limits.max_txn_bytes).map_err(|e| error_reply(&e))?;
        let mut pause = Duration::from_micros(500);
        for attempt in 1..=CONFLICT_TRIES {
            match self.wait(ClientRequest::Txn(spec.clone())) {
                KvReply::Error(Error::Conflict(m)) if attempt < CONFLICT_TRIES => {
                    log::debug!("RESP transaction retried after a conflict: {m}");
                    let jitter = crate::rand::splitmix64(&mut self.rng) % (pause.as_micros() as u64 + 1);
                    std::thread::sleep(pause + Duration::from_micros(jitter));
                    pause = (pause * 2).min(Duration::from_millis(32));
                }
                r => return Ok(r),
            }
        }
        Err(Reply::error("TRYAGAIN", "the transaction kept conflicting with others"))
    }

    /// Writes `value` if the key holds a value (`present_only`) or always, by
    /// compare-and-set at SERIAL: the old value, and whether it was written.
    fn swap(&self, key: Key, value: &[u8], present_only: bool) -> Step<(Option<Box<[u8]>>, bool)> {
        let mut guess = match self.wait(ClientRequest::Get { key: key.clone(), level: Consistency::Serial }) {
            KvReply::SerialRead(v) => v,
            r => return Err(Shape::Value.reply(r)),
        };
        for _ in 0..CAS_TRIES {
            if present_only && guess.is_none() {
                return Ok((None, false));
            }
            let condition = Some(guess.clone().map_or(Expect::Absent, Expect::Equals));
            let req = ClientRequest::Put { key: key.clone(), value: value.to_vec(), level: Consistency::Serial, condition };
            match self.wait(req) {
                KvReply::Write { .. } => return Ok((guess, true)),
                KvReply::NotApplied { current } => guess = current,
                r => return Err(Shape::Ok.reply(r)),
            }
        }
        Err(Reply::error("TRYAGAIN", &format!("key {key} changed {CAS_TRIES} times while it was being set")))
    }

    /// Deletes the keys that exist, atomically: how many did.
    fn del(&mut self, keys: Vec<Key>) -> Step<usize> {
        if let [key] = &keys[..] {
            return self.del_one(key.clone());
        }
        let mut known = self.values(keys.clone())?;
        let max_bytes = self.limits().max_txn_bytes;
        for _ in 0..CAS_TRIES {
            let existing: Vec<&Key> = keys.iter().filter(|k| known.get(*k).is_some_and(Option::is_some)).collect();
            if existing.is_empty() {
                return Ok(0);
            }
            let compared: usize = known.values().flatten().map(|v| v.len()).sum();
            if compared > max_bytes {
                // The values are too large to compare in one transaction: delete
                // every key named, atomically; the count is of the keys seen.
                let spec = TxnSpec { conditions: Vec::new(), writes: keys.iter().map(|k| (k.clone(), None)).collect() };
                let n = existing.len();
                return match self.txn(spec)? {
                    KvReply::TxnCommitted { .. } => Ok(n),
                    r => Err(Shape::Ok.reply(r)),
                };
            }
            let spec = TxnSpec {
                conditions: keys
                    .iter()
                    .map(|k| (k.clone(), known.get(k).cloned().flatten().map_or(Expect::Absent, Expect::Equals)))
                    .collect(),
                writes: existing.iter().map(|k| ((*k).clone(), None)).collect(),
            };
            let n = existing.len();
            match self.txn(spec)? {
                KvReply::TxnCommitted { .. } => return Ok(n),
                KvReply::TxnNotApplied { current } => known.extend(current),
                r => return Err(Shape::Ok.reply(r)),
            }
        }
        Err(Reply::error("TRYAGAIN", &format!("the keys changed {CAS_TRIES} times while they were being deleted")))
    }

    /// `DEL` of one key: a SERIAL read, then a delete at SERIAL if the value
    /// is still the one read (no transaction: any value size).
    fn del_one(&self, key: Key) -> Step<usize> {
        let mut guess = match self.wait(ClientRequest::Get { key: key.clone(), level: Consistency::Serial }) {
            KvReply::SerialRead(v) => v,
            r => return Err(Shape::Value.reply(r)),
        };
        for _ in 0..CAS_TRIES {
            let Some(value) = guess else { return Ok(0) };
            let req = ClientRequest::Delete { key: key.clone(), level: Consistency::Serial, condition: Some(Expect::Equals(value)) };
            match self.wait(req) {
                KvReply::Write { .. } => return Ok(1),
                KvReply::NotApplied { current } => guess = current,
                r => return Err(Shape::Ok.reply(r)),
            }
        }
        Err(Reply::error("TRYAGAIN", &format!("key {key} changed {CAS_TRIES} times while it was being deleted")))
    }

    /// `EXEC`: the queued commands as one transaction; nil if a watched key changed.
    fn exec(&mut self, queued: Vec<Queued>, watched: Vec<(Key, Option<Box<[u8]>>)>) -> Step<Reply> {
        let watched_map: HashMap<&Key, &Option<Box<[u8]>>> = watched.iter().map(|(k, v)| (k, v)).collect();
        let mut seen: HashSet<&Key> = HashSet::new();
        let to_read: Vec<Key> = queued.iter().flat_map(Queued::reads).filter(|k| seen.insert(*k)).cloned().collect();
        for _ in 0..CAS_TRIES {
            let mut base: Values = if to_read.is_empty() { HashMap::new() } else { self.values(to_read.clone())? };
            // A watched key read now with another value than when watched has changed.
            for (k, v) in &watched {
                match base.get(k) {
                    Some(now) if now != v => return Ok(Reply::Array(None)),
                    _ => {
                        base.insert(k.clone(), v.clone());
                    }
                }
            }
            let (replies, writes) = simulate(&queued, base.clone());
            if writes.is_empty() && watched.is_empty() {
                return Ok(Reply::Array(Some(replies)));
            }
            let spec = TxnSpec {
                conditions: base.iter().map(|(k, v)| (k.clone(), v.clone().map_or(Expect::Absent, Expect::Equals))).collect(),
                writes,
            };
            match self.txn(spec)? {
                KvReply::TxnCommitted { .. } => return Ok(Reply::Array(Some(replies))),
                KvReply::TxnNotApplied { current } => {
                    if current.iter().any(|(k, v)| watched_map.get(k).is_some_and(|w| *w != v)) {
                        return Ok(Reply::Array(None));
                    }
                    // Only keys the commands read changed: read them again.
                }
                r => return Err(Shape::Ok.reply(r)),
            }
        }
        Err(Reply::error("TRYAGAIN", &format!("the keys this transaction reads changed {CAS_TRIES} times while it ran")))
    }

    fn scan(&self, cursor: u64, pattern: Option<Vec<u8>>, count: u32) -> Step<Reply> {
        let invalid = || Reply::error("ERR", "invalid cursor");
        let from = match cursor {
            0 => ScanCursor::START,
            1..=255 => ScanCursor { slot: cursor as u8, after: None },
            c if c >= CURSOR_TABLE => self.shared.recall(c).ok_or_else(|| {
                Reply::error("ERR", "invalid cursor (a scan's place is remembered by the replica that gave it, for its latest 16384 pages; start again from 0)")
            })?,
            _ => return Err(invalid()),
        };
        let page = self.node.scan(from, count).map_err(|e| error_reply(&e))?;
        let next = if page.done {
            0
        } else {
            match ScanCursor::parse(page.cursor, &self.limits()).map_err(|e| error_reply(&e))? {
                ScanCursor { slot, after: None } if slot > 0 => u64::from(slot),
                c => self.shared.remember(c),
            }
        };
        let glob = pattern.map(|p| Glob::new(&p));
        let keys = page.keys.into_iter().filter(|k| glob.as_ref().is_none_or(|g| g.matches(k))).map(|k| Reply::Bulk(Some(k))).collect();
        Ok(Reply::Array(Some(vec![Reply::Bulk(Some(next.to_string().into_bytes())), Reply::Array(Some(keys))])))
    }

    /// About how many live keys the cluster holds: every replica's keys
    /// (tombstones included), over the replication factor.
    fn dbsize(&self) -> u64 {
        let status = self.node.status();
        let held: u64 = status.replicas.iter().filter_map(|r| r.storage.as_ref()).map(|s| s.keys).sum();
        held / u64::from(status.rf.max(1))
    }

    fn hello(&self) -> Reply {
        let s = |t: &str| Reply::Bulk(Some(t.as_bytes().to_vec()));
        let proto = if self.version == crate::resp::Version::Resp3 { 3 } else { 2 };
        Reply::Map(vec![
            (s("server"), s("redis")),
            (s("version"), s(REDIS_VERSION)),
            (s("proto"), Reply::Integer(proto)),
            (s("id"), Reply::Integer(self.id as i64)),
            (s("mode"), s("standalone")),
            (s("role"), s("master")),
            (s("modules"), Reply::Array(Some(Vec::new()))),
        ])
    }

    fn info(&self, sections: &[String]) -> String {
        let all = sections.is_empty() || sections.iter().any(|s| s == "all" || s == "everything" || s == "default");
        let want = |s: &str| all || sections.iter().any(|x| x == s);
        let node = self.node;
        let mut out = String::new();
        if want("server") {
            out += &format!(
                "# Server\r\nredis_version:{REDIS_VERSION}\r\nredis_mode:standalone\r\nserver_name:quorumkv\r\nquorumkv_version:{}\r\n\
                 quorumkv_node:{}\r\nos:{}\r\narch_bits:64\r\nprocess_id:{}\r\ntcp_port:{}\r\nuptime_in_seconds:{}\r\n\r\n",
                env!("CARGO_PKG_VERSION"),
                node.name(),
                std::env::consts::OS,
                std::process::id(),
                self.shared.port,
                self.shared.started.elapsed().as_secs()
            );
        }
        if want("clients") {
            out += &format!(
                "# Clients\r\nconnected_clients:{}\r\nquorumkv_consistency:{}\r\nquorumkv_default_consistency:{}\r\n\r\n",
                self.shared.clients.load(Ordering::Relaxed),
                self.level,
                node.cfg.resp_consistency
            );
        }
        if want("replication") || want("keyspace") {
            let status = node.status();
            if want("replication") {
                let up = status.replicas.iter().filter(|r| r.up).count();
                out += &format!(
                    "# Replication\r\nrole:master\r\nconnected_slaves:0\r\nquorumkv_replication_factor:{}\r\nquorumkv_replicas:{}\r\n\
                     quorumkv_replicas_up:{up}\r\nquorumkv_partitioner:{}\r\nquorumkv_epoch:{}\r\nquorumkv_cluster_id:{:016x}\r\n\r\n",
                    status.rf,
                    status.replicas.len(),
                    status.partitioner,
                    status.epoch,
                    status.cluster_id
                );
            }
            if want("keyspace") {
                let held: u64 = status.replicas.iter().filter_map(|r| r.storage.as_ref()).map(|s| s.keys).sum();
                out += &format!("# Keyspace\r\ndb0:keys={},expires=0,avg_ttl=0\r\n\r\n", held / u64::from(status.rf.max(1)));
            }
        }
        out
    }
}

/// The Redis version quorumkv reports (`INFO`, `HELLO`): the command set it follows.
pub const REDIS_VERSION: &str = "7.0.0";

fn put_if_absent(key: Key, value: Box<[u8]>) -> ClientRequest {
    ClientRequest::Put { key, value: value.into_vec(), level: Consistency::Serial, condition: Some(Expect::Absent) }
}

/// `keys` without repeats, in first-seen order.
fn distinct(keys: Vec<Key>) -> Vec<Key> {
    let mut seen = HashSet::new();
    keys.into_iter().filter(|k| seen.insert(k.clone())).collect()
}

fn cmd_name(c: &Cmd) -> &'static str {
    match c {
        Cmd::Set { .. } => "SET with NX, XX or GET",
        Cmd::SetNx(..) => "SETNX",
        Cmd::GetSet(..) => "GETSET",
        Cmd::MSetNx(_) => "MSETNX",
        Cmd::Type(_) => "TYPE",
        Cmd::Scan { .. } => "SCAN",
        Cmd::Unwatch => "UNWATCH",
        _ => "this command",
    }
}

/// `COMMAND`'s description of one command (Redis 6's six fields).
fn command_info(s: &Spec) -> Reply {
    Reply::Array(Some(vec![
        Reply::Bulk(Some(s.name.as_bytes().to_vec())),
        Reply::Integer(s.arity),
        Reply::Array(Some(s.flags.iter().map(|f| Reply::Simple((*f).into())).collect())),
        Reply::Integer(s.first_key),
        Reply::Integer(s.last_key),
        Reply::Integer(s.step),
    ]))
}

/// Runs the queued commands in order over `view` (the values read):
/// their replies, and the writes they leave (each key once, last wins).
fn simulate(queued: &[Queued], mut view: Values) -> (Vec<Reply>, Writes) {
    let mut written: Vec<Key> = Vec::new();
    let mut write = |view: &mut Values, k: &Key, v: Option<Box<[u8]>>| {
        if !written.contains(k) {
            written.push(k.clone());
        }
        view.insert(k.clone(), v);
    };
    let get = |view: &Values, k: &Key| view.get(k).cloned().flatten();
    let mut replies = Vec::with_capacity(queued.len());
    for q in queued {
        replies.push(match q {
            Queued::Get(k) => Reply::Bulk(get(&view, k).map(|v| v.into_vec())),
            Queued::Set(k, v) => {
                write(&mut view, k, Some(v.clone()));
                Reply::ok()
            }
            Queued::Del(ks) => {
                let mut n = 0;
                for k in ks {
                    if get(&view, k).is_some() {
                        n += 1;
                        write(&mut view, k, None);
                    }
                }
                Reply::Integer(n)
            }
            Queued::Exists(ks) => Reply::Integer(ks.iter().filter(|k| get(&view, k).is_some()).count() as i64),
            Queued::MGet(ks) => Reply::Array(Some(ks.iter().map(|k| Reply::Bulk(get(&view, k).map(|v| v.into_vec()))).collect())),
            Queued::MSet(kvs) => {
                for (k, v) in kvs {
                    write(&mut view, k, Some(v.clone()));
                }
                Reply::ok()
            }
            Queued::Ping(None) => Reply::Simple("PONG".into()),
            Queued::Ping(Some(m)) | Queued::Echo(m) => Reply::Bulk(Some(m.clone())),
        });
    }
    let writes = written.into_iter().map(|k| (k.clone(), view.get(&k).cloned().flatten())).collect();
    (replies, writes)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(s: &str) -> Key {
        crate::cluster::key::Partitioner::Murmur3.key(s.as_bytes().to_vec(), 100).unwrap()
    }

    fn v(s: &str) -> Option<Box<[u8]>> {
        Some(s.as_bytes().to_vec().into_boxed_slice())
    }

    fn bulk(s: &str) -> Reply {
        Reply::Bulk(Some(s.as_bytes().to_vec()))
    }

    #[test]
    fn queued_commands_see_the_writes_before_them() {
        let base: Values = [(k("a"), v("1")), (k("b"), None)].into_iter().collect();
        let queued = vec![
            Queued::Get(k("a")),
            Queued::Set(k("b"), v("2").unwrap()),
            Queued::MGet(vec![k("a"), k("b")]),
            Queued::Del(vec![k("a"), k("c")]),
            Queued::Exists(vec![k("a"), k("b"), k("b")]),
            Queued::MSet(vec![(k("a"), v("3").unwrap()), (k("b"), v("4").unwrap())]),
            Queued::Echo(b"e".to_vec()),
        ];
        let (replies, writes) = simulate(&queued, base);
        assert_eq!(
            replies,
            vec![
                bulk("1"),
                Reply::ok(),
                Reply::Array(Some(vec![bulk("1"), bulk("2")])),
                Reply::Integer(1),
                Reply::Integer(2),
                Reply::ok(),
                bulk("e"),
            ]
        );
        assert_eq!(writes, vec![(k("b"), v("4")), (k("a"), v("3"))]);
    }

    #[test]
    fn a_delete_of_what_is_absent_writes_nothing() {
        let (replies, writes) = simulate(&[Queued::Del(vec![k("x")])], HashMap::new());
        assert_eq!(replies, vec![Reply::Integer(0)]);
        assert!(writes.is_empty());
    }

    #[test]
    fn replies_take_their_command_s_shape() {
        use crate::storage::hlc::Timestamp;
        let ts = Timestamp { micros: 1, node: 1 };
        assert_eq!(Shape::Ok.reply(KvReply::Write { ts, acks: 2 }), Reply::ok());
        assert_eq!(Shape::OkOrNil.reply(KvReply::NotApplied { current: v("x") }), Reply::Bulk(None));
        assert_eq!(Shape::Applied.reply(KvReply::TxnNotApplied { current: vec![] }), Reply::Integer(0));
        assert_eq!(Shape::Applied.reply(KvReply::TxnCommitted { ts }), Reply::Integer(1));
        assert_eq!(Shape::Value.reply(KvReply::SerialRead(None)), Reply::Bulk(None));
        assert_eq!(Shape::Count.reply(KvReply::Values(vec![(k("a"), v("1")), (k("b"), None)])), Reply::Integer(1));
        assert_eq!(Shape::Type.reply(KvReply::SerialRead(v("1"))), Reply::Simple("string".into()));
        assert_eq!(
            Shape::Value.reply(KvReply::Error(Error::Unavailable("need 2 of 3 replicas for key 70, 1 alive".into()))),
            Reply::Error("UNAVAILABLE need 2 of 3 replicas for key 70, 1 alive".into())
        );
        assert_eq!(Shape::Ok.reply(KvReply::Error(Error::Conflict("held".into()))), Reply::Error("TRYAGAIN held".into()));
        assert!(matches!(Shape::Ok.reply(KvReply::Values(vec![])), Reply::Error(e) if e.starts_with("ERR internal")));
        for s in [Shape::Value, Shape::Ok, Shape::OkOrNil, Shape::Applied, Shape::Values, Shape::Count, Shape::Type] {
            for v in [crate::resp::Version::Resp2, crate::resp::Version::Resp3] {
                assert_eq!(Shape::of_token(s.token(v)), Some((s, v)));
            }
        }
        assert_eq!(Shape::of_token(0), None);
    }
}
