//! A blocking client for one coordinator.
//!
//! One TCP connection, one request at a time. Used by the console, by tests
//! and by tools. Every call returns the store's answer or an [`Error`] whose
//! variant says whether the store refused (`Unavailable`, `Timeout`,
//! `Failure`), the request was bad (`InvalidRequest`) or the connection failed
//! (`Io`, `Protocol`).

pub mod console;
pub mod histogram;
pub mod images;

use std::io::Write;
use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::time::Duration;

use prost::Message;

use crate::cluster::consistency::Consistency;
use crate::error::{Error, Result};
use crate::net::frame::{FrameReader, encode_frame};
pub use crate::paxos::Expect;
use crate::proto::{self, request, response};

/// Largest reply a client accepts (a `display` of a full cluster stays far below).
const MAX_REPLY: usize = 256 << 20;

/// A connection to one coordinator.
pub struct Client {
    stream: TcpStream,
    reader: FrameReader<TcpStream>,
    buf: Vec<u8>,
    next_id: u64,
    addr: SocketAddr,
}

impl Client {
    /// Connects to `host:port`, waiting at most `timeout` for the connection.
    pub fn connect(host: &str, port: u16, timeout: Duration) -> Result<Client> {
        let addrs: Vec<SocketAddr> =
            (host, port).to_socket_addrs().map_err(|e| Error::Io(format!("cannot resolve {host}:{port}: {e}")))?.collect();
        let mut last = Error::Io(format!("{host}:{port} resolves to no address"));
        for addr in addrs {
            match TcpStream::connect_timeout(&addr, timeout) {
                Ok(stream) => return Client::from_stream(stream, addr),
                Err(e) => last = Error::Io(format!("cannot connect to {addr}: {e}")),
            }
        }
        Err(last)
    }

    fn from_stream(stream: TcpStream, addr: SocketAddr) -> Result<Client> {
        stream.set_nodelay(true)?;
        let reader = FrameReader::new(stream.try_clone()?, MAX_REPLY);
        Ok(Client { stream, reader, buf: Vec::with_capacity(256), next_id: 1, addr })
    }

    /// The coordinator's address.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Sets how long a request may wait for its reply (`None`: forever).
    pub fn set_timeout(&mut self, timeout: Option<Duration>) -> Result<()> {
        self.stream.set_read_timeout(timeout)?;
        self.stream.set_write_timeout(timeout)?;
        Ok(())
    }

    /// Sends `body` and returns the reply's body; an error reply becomes `Err`.
    pub fn request(&mut self, body: request::Body) -> Result<response::Body> {
        let id = self.next_id;
        self.next_id += 1;
        encode_frame(&proto::Request { id, body: Some(body) }, &mut self.buf);
        self.stream.write_all(&self.buf).map_err(|e| Error::Io(format!("sending to {}: {e}", self.addr)))?;
        let frame = match self.reader.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => return Err(Error::Io(format!("{} closed the connection", self.addr))),
            Err(e) => return Err(Error::Io(format!("reading from {}: {e}", self.addr))),
        };
        let resp = proto::Response::decode(frame)?;
        match resp.body {
            Some(response::Body::Error(e)) => Err(Error::from_proto(e)),
            Some(_) if resp.id != id => Err(Error::Protocol(format!("reply for request {} while waiting for {id}", resp.id))),
            Some(b) => Ok(b),
            None => Err(Error::Protocol("empty reply".into())),
        }
    }

    /// Round trip without touching the store; returns the replica's name.
    pub fn ping(&mut self) -> Result<String> {
        match self.request(request::Body::Ping(proto::Ping {}))? {
            response::Body::Pong(p) => Ok(p.name),
            other => Err(unexpected(other)),
        }
    }

    /// Reads `key`; `None` if no replica that answered holds it (at SERIAL:
    /// the linearizable value, or `None` if the key has no live value).
    pub fn get(&mut self, key: impl ToKey, level: Consistency) -> Result<Option<Vec<u8>>> {
        Ok(self.get_versioned(key, level)?.value)
    }

    /// [`get`](Self::get) for text values: the value as UTF-8 (invalid bytes replaced).
    pub fn get_text(&mut self, key: impl ToKey, level: Consistency) -> Result<Option<String>> {
        Ok(self.get(key, level)?.map(|v| String::from_utf8_lossy(&v).into_owned()))
    }

    /// Reads `key` with the version's timestamp.
    pub fn get_versioned(&mut self, key: impl ToKey, level: Consistency) -> Result<proto::GetResult> {
        match self.request(request::Body::Get(proto::Get { key: key.to_key(), consistency: level.to_proto() as i32 }))? {
            response::Body::Get(g) => Ok(g),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `value` to `key` (at SERIAL: through Paxos, always applied).
    pub fn put(&mut self, key: impl ToKey, value: impl AsRef<[u8]>, level: Consistency) -> Result<proto::WriteResult> {
        let body = request::Body::Put(proto::Put {
            key: key.to_key(),
            value: value.as_ref().to_vec(),
            consistency: level.to_proto() as i32,
            condition: None,
        });
        match self.request(body)? {
            response::Body::Write(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    /// Deletes `key` (writes a tombstone).
    pub fn delete(&mut self, key: impl ToKey, level: Consistency) -> Result<proto::WriteResult> {
        match self.request(request::Body::Delete(proto::Delete {
            key: key.to_key(),
            consistency: level.to_proto() as i32,
            condition: None,
        }))? {
            response::Body::Write(w) => Ok(w),
            other => Err(unexpected(other)),
        }
    }

    /// Writes `value` to `key` only if its current value meets `expect`
    /// (`Expect::Equals(old)`: `if OLD`; `Expect::Absent`: `if absent`),
    /// decided by Paxos at SERIAL (a compare-and-set).
    pub fn put_if(&mut self, key: impl ToKey, value: impl AsRef<[u8]>, expect: Expect) -> Result<Cas> {
        let condition = Some(match expect {
            Expect::Equals(old) => proto::put::Condition::IfValue(old.into_vec()),
            Expect::Absent => proto::put::Condition::IfAbsent(true),
        });
        let body = request::Body::Put(proto::Put {
            key: key.to_key(),
            value: value.as_ref().to_vec(),
            consistency: Consistency::Serial.to_proto() as i32,
            condition,
        });
        cas(self.request(body)?)
    }

    /// Deletes `key` only if it holds exactly `old` (SERIAL, a compare-and-set).
    pub fn delete_if(&mut self, key: impl ToKey, old: impl AsRef<[u8]>) -> Result<Cas> {
        let body = request::Body::Delete(proto::Delete {
            key: key.to_key(),
            consistency: Consistency::Serial.to_proto() as i32,
            condition: Some(proto::delete::Condition::IfValue(old.as_ref().to_vec())),
        });
        cas(self.request(body)?)
    }

    /// A transaction: if every condition holds (`Some(v)`: the key holds
    /// `v`; `None`: it is absent), every write (`Some(v)`: put `v`; `None`:
    /// delete), atomically; otherwise nothing.
    pub fn txn(&mut self, conditions: Vec<(Vec<u8>, Option<Vec<u8>>)>, writes: Vec<(Vec<u8>, Option<Vec<u8>>)>) -> Result<TxnOutcome> {
        let conditions = conditions
            .into_iter()
            .map(|(key, v)| match v {
                Some(v) => proto::TxnCondition { key, equals: v, absent: false },
                None => proto::TxnCondition { key, equals: Vec::new(), absent: true },
            })
            .collect();
        let writes = writes
            .into_iter()
            .map(|(key, v)| match v {
                Some(value) => proto::TxnItem { key, write: 1, value },
                None => proto::TxnItem { key, write: 2, value: Vec::new() },
            })
            .collect();
        match self.request(request::Body::Txn(proto::TxnRequest { conditions, writes }))? {
            response::Body::Txn(t) if t.committed => Ok(TxnOutcome::Committed { micros: t.micros, node: t.node }),
            response::Body::Txn(t) => Ok(TxnOutcome::NotApplied { current: key_values(t.current) }),
            other => Err(unexpected(other)),
        }
    }

    /// Reads `keys` at QUORUM, read atomic (of every transaction, all of its
    /// writes or none): each key's value in order (`None`: absent).
    pub fn mget(&mut self, keys: Vec<Vec<u8>>) -> Result<Vec<Option<Vec<u8>>>> {
        match self.request(request::Body::Mget(proto::MGetRequest { keys }))? {
            response::Body::Mget(m) => Ok(key_values(m.values).into_iter().map(|(_, v)| v).collect()),
            other => Err(unexpected(other)),
        }
    }

    /// The coordinator's view of the cluster.
    pub fn status(&mut self) -> Result<proto::StatusResult> {
        match self.request(request::Body::Status(proto::StatusRequest {}))? {
            response::Body::Status(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// What each replica of `key` holds.
    pub fn inspect(&mut self, key: impl ToKey) -> Result<proto::InspectResult> {
        match self.request(request::Body::Inspect(proto::InspectRequest { key: key.to_key() }))? {
            response::Body::Inspect(i) => Ok(i),
            other => Err(unexpected(other)),
        }
    }

    /// What every replica holds, summed up, and up to `max_keys` keys whose
    /// replicas disagree (0: the replica's default), values cut to `max_value_len` bytes.
    pub fn display(&mut self, max_value_len: u32, max_keys: u32) -> Result<proto::DisplayResult> {
        match self.request(request::Body::Display(proto::DisplayRequest { max_value_len, max_keys }))? {
            response::Body::Display(d) => Ok(d),
            other => Err(unexpected(other)),
        }
    }
}

impl Client {
    /// Where `key` lives: its token, its slot and its replicas (owner first),
    /// as the coordinator's ring places it.
    pub fn token(&mut self, key: impl ToKey) -> Result<proto::TokenResult> {
        match self.request(request::Body::Token(proto::TokenRequest { key: key.to_key() }))? {
            response::Body::Token(t) => Ok(t),
            other => Err(unexpected(other)),
        }
    }

    /// One page of a walk over every key: from `cursor` (empty: the start), at
    /// most `count` keys looked at (0: the coordinator's default of 10; at most
    /// 10,000). Pass the reply's `cursor` to the next call until it says `done`;
    /// a key that exists for the whole walk comes back exactly once.
    pub fn scan(&mut self, cursor: &[u8], count: u32) -> Result<proto::ScanResult> {
        match self.request(request::Body::Scan(proto::ScanRequest { cursor: cursor.to_vec(), count }))? {
            response::Body::Scan(s) => Ok(s),
            other => Err(unexpected(other)),
        }
    }

    /// Anti-entropy: with `start`, asks the coordinator for a full pass over
    /// every group of the cluster (unless one runs already); either way
    /// answers with the pass to follow (its id, progress and totals).
    pub fn repair(&mut self, start: bool) -> Result<proto::RepairResult> {
        match self.request(request::Body::Repair(proto::RepairRequest { start }))? {
            response::Body::Repair(r) => Ok(r),
            other => Err(unexpected(other)),
        }
    }

    /// A membership request to the replica this client is connected to:
    /// decommission it, remove a dead member, or report the movement it runs.
    /// Decommission and removenode name the cluster: its id is asked first (`status`).
    pub fn membership(&mut self, op: proto::membership_request::Op, name: &str, force: bool) -> Result<proto::MembershipResult> {
        let cluster_id = if op == proto::membership_request::Op::Status { 0 } else { self.status()?.cluster_id };
        let req = proto::MembershipRequest { op: op as i32, name: name.to_string(), force, cluster_id };
        match self.request(request::Body::Membership(req))? {
            response::Body::Membership(m) => Ok(m),
            other => Err(unexpected(other)),
        }
    }

    /// A fault-injection request to the replica this client is connected to (refused unless it
    /// runs with `--enable-fault-injection`); answers with the faults now active there.
    pub fn fault(&mut self, req: proto::FaultRequest) -> Result<proto::FaultResult> {
        match self.request(request::Body::Fault(req))? {
            response::Body::Fault(f) => Ok(f),
            other => Err(unexpected(other)),
        }
    }
}

/// Anything a key can be written as: bytes or text as they are, an integer in
/// decimal (the keys of a byte-ordered cluster: `put(70, …)` is key `"70"`).
pub trait ToKey {
    /// The key's bytes.
    fn to_key(&self) -> Vec<u8>;
}

macro_rules! integer_keys {
    ($($t:ty),*) => {$(
        impl ToKey for $t {
            fn to_key(&self) -> Vec<u8> {
                self.to_string().into_bytes()
            }
        }
    )*};
}
integer_keys!(u8, u16, u32, u64, usize, i32, i64);

impl ToKey for str {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl ToKey for [u8] {
    fn to_key(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl<const N: usize> ToKey for [u8; N] {
    fn to_key(&self) -> Vec<u8> {
        self.to_vec()
    }
}

impl ToKey for String {
    fn to_key(&self) -> Vec<u8> {
        self.as_bytes().to_vec()
    }
}

impl ToKey for Vec<u8> {
    fn to_key(&self) -> Vec<u8> {
        self.clone()
    }
}

impl<T: ToKey + ?Sized> ToKey for &T {
    fn to_key(&self) -> Vec<u8> {
        (**self).to_key()
    }
}

/// The outcome of a transaction.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum TxnOutcome {
    /// Every condition held and every write was applied, stamped with this timestamp.
    Committed {
        /// The commit timestamp's microseconds.
        micros: u64,
        /// The commit timestamp's node.
        node: u32,
    },
    /// A condition did not hold; nothing was written.
    NotApplied {
        /// Each compared key with its value (`None`: absent).
        current: Vec<(Vec<u8>, Option<Vec<u8>>)>,
    },
}

/// The outcome of a conditional put or delete.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cas {
    /// The condition held and the write was applied (chosen by a quorum).
    Applied(proto::WriteResult),
    /// The condition did not hold; nothing was written.
    NotApplied {
        /// The value the condition was checked against (`None`: no live value).
        current: Option<Vec<u8>>,
    },
}

impl Cas {
    /// Whether the write was applied.
    pub fn applied(&self) -> bool {
        matches!(self, Cas::Applied(_))
    }
}

fn cas(body: response::Body) -> Result<Cas> {
    match body {
        response::Body::Write(w) if w.applied == Some(false) => Ok(Cas::NotApplied { current: w.current }),
        response::Body::Write(w) => Ok(Cas::Applied(w)),
        other => Err(unexpected(other)),
    }
}

fn key_values(kvs: Vec<proto::KeyValue>) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    kvs.into_iter().map(|kv| (kv.key, kv.found.then_some(kv.value))).collect()
}

fn unexpected(body: response::Body) -> Error {
    Error::Protocol(format!("unexpected reply {body:?}"))
}
