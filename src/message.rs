//! Typed messages: every request and reply as the replica acts on it, parsed
//! and validated **once** from the wire.
//!
//! A frame decodes into a protobuf `Request`; [`ClientRequest::parse`] and
//! [`PeerRequest::parse`] turn its body into a typed request (a key as the
//! store's index, a consistency level, a value checked against the limit),
//! or refuse it with an `InvalidRequest` error that says what is wrong. The
//! node never looks at a wire body again. Replies travel the other way: the
//! coordinator answers with a typed [`Reply`], a replica with a typed
//! [`PeerResponse`]; the native protocol's encoding of each is here too, so a
//! second client protocol only adds an encoder of [`Reply`].
//!
//! The parsers are pure functions of a decoded message and the replica's value
//! limit, with no sockets and no state, so the replica, the tests and the
//! `frame_decode` fuzz target (`fuzz/`, whose body is [`crate::net::fuzz`]) apply exactly the same rules. A request
//! that passes may still be refused for reasons that depend on the replica's
//! state (too few replicas alive, a peer write stamped too far ahead of the
//! clock, fault injection disabled), never for its shape.
//!
//! | request | checked |
//! |---------|---------|
//! | `Get` | the key ([`Partitioner::key`]: `0..=255` byte-ordered, 1 to `--max-key-bytes` bytes murmur3), consistency ONE/QUORUM/ALL/SERIAL (or unset) |
//! | `Put` | the same, the value's size against `--max-value-bytes`; a condition: `if_value`'s size as a value's, `if_absent` true, the level SERIAL or unset (which then means SERIAL) |
//! | `Delete` | the key, the level; a condition (`if_value`) as for `Put` |
//! | `Inspect`, `Token` | key |
//! | `Scan` | the cursor ([`ScanCursor::parse`]: format, key, the key's slot), the count (0: 10; at most [`MAX_SCAN_COUNT`]) |
//! | `Ping`, `Status`, `Display` | nothing to check (`Display` values are cut to [`MAX_DISPLAY_VALUE`]) |
//! | `Fault` | nothing here: fault injection refuses it unless enabled, then checks its fields against the ring |
//! | replica requests, `PeerHello` on a client connection | refused |
//! | `ReplicaRead` | key |
//! | `ReplicaWrite` | key, a version present, its value's size unless it is a tombstone |
//! | `ReplicaReadBatch` | at most [`MAX_BATCH`] keys, each a key of the cluster |
//! | `ReplicaScan` | the slot (0 to 255), the key after which to start (if any), the count (1 to [`MAX_SCAN_COUNT`]) |
//! | `PaxosPrepare` | key, a ballot present and not 0 |
//! | `PaxosPropose`, `PaxosCommit` | key, a proposal present: its version (ballot not 0; its value's size unless a delete) and its origin (not 0, not above the ballot) ([`paxos`]) |
//! | a second `PeerHello`, client requests (and `Fault`) on a replica link | refused |
//!
//! Strings (names) are valid UTF-8 by construction: the decoder refuses
//! anything else. Keys and values are bytes.

pub mod packed;
pub mod paxos;
pub mod scan;
pub mod sync;
pub mod txn;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::{DEFAULT_MAX_KEY_BYTES, KEYS, Key, Partitioner};
use crate::error::{Error, Result};
use crate::paxos::Expect;
use crate::proto::{self, request, response};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

pub use scan::{DEFAULT_SCAN_COUNT, MAX_SCAN_COUNT, ScanCursor, Stamp};

/// The most keys in one `ReplicaReadBatch` (a replica refuses more).
pub const MAX_BATCH: usize = 1024;

/// `display` shows at most this many bytes of each value, so its listing
/// stays far below any frame limit.
pub const MAX_DISPLAY_VALUE: u32 = 1024;

/// `display` lists at most this many keys that differ between replicas by default.
pub const DEFAULT_DISPLAY_KEYS: u32 = 256;

/// The most differing keys `display` lists, whatever the client asks.
pub const MAX_DISPLAY_KEYS: u32 = 1024;

/// The most cells one replica sends `display` in one reply.
pub const MAX_DUMP_CELLS: u32 = 65_536;

/// A page of keys stops once what it holds passes about this many bytes, and
/// says there is more: a replica's page of cells for `display` (keys and
/// values cut to [`MAX_DISPLAY_VALUE`]), a replica's listing for `scan` and
/// the coordinator's `scan` page (keys). So a page stays far below any frame
/// limit whatever its count and however long the keys (`--max-key-bytes` is
/// up to 64 KiB); it passes the budget by at most its last key.
pub const MAX_PAGE_BYTES: usize = 1 << 20;

/// The most stretches one [`PeerRequest::Stream`] names.
pub const MAX_STREAM_RANGES: usize = 1024;

/// What a replica accepts: its cluster's keys, and its size limits.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Which keys the cluster takes.
    pub partitioner: Partitioner,
    /// The largest key of a murmur3 cluster (`--max-key-bytes`).
    pub max_key_bytes: usize,
    /// The largest value (`--max-value-bytes`).
    pub max_value_bytes: usize,
    /// The most keys of a client's transaction or `mget` (`--max-txn-keys`).
    pub max_txn_keys: usize,
    /// The most bytes of values of a client's transaction (`--max-txn-bytes`).
    pub max_txn_bytes: usize,
}

impl Limits {
    /// A byte-ordered cluster's limits with values up to `max_value_bytes` (the seed's).
    pub fn byte_ordered(max_value_bytes: usize) -> Limits {
        Limits {
            partitioner: Partitioner::ByteOrdered,
            max_key_bytes: DEFAULT_MAX_KEY_BYTES,
            max_value_bytes,
            max_txn_keys: crate::txn::DEFAULT_TXN_KEYS,
            max_txn_bytes: crate::txn::DEFAULT_TXN_BYTES,
        }
    }

    /// Checks a key from the wire.
    pub fn key(&self, bytes: Vec<u8>) -> Result<Key> {
        self.partitioner.key(bytes, self.max_key_bytes)
    }

    /// Checks a value's size.
    pub fn value(&self, value: &[u8]) -> Result<()> {
        if value.len() > self.max_value_bytes {
            return Err(Error::InvalidRequest(format!(
                "value of {} bytes exceeds the limit of {} bytes",
                value.len(),
                self.max_value_bytes
            )));
        }
        Ok(())
    }
}

const REPLICA_ON_CLIENT: &str = "replica-to-replica request on a client connection; a replica opens with PeerHello";
const CLIENT_ON_REPLICA: &str = "client request on a replica link; open a client connection";

/// A request a client sent for this replica to coordinate.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientRequest {
    /// Liveness check.
    Ping,
    /// Read a key.
    Get {
        /// The key.
        key: Key,
        /// Replies needed.
        level: Consistency,
    },
    /// Write a value.
    Put {
        /// The key.
        key: Key,
        /// The value (within the limit).
        value: Vec<u8>,
        /// Acks needed (SERIAL: Paxos).
        level: Consistency,
        /// Apply only if the current value meets it (then `level` is SERIAL).
        condition: Option<Expect>,
    },
    /// Delete a key (write a tombstone).
    Delete {
        /// The key.
        key: Key,
        /// Acks needed (SERIAL: Paxos).
        level: Consistency,
        /// Delete only if the current value meets it (then `level` is SERIAL).
        condition: Option<Expect>,
    },
    /// The coordinator's view of the cluster.
    Status,
    /// Each replica's version of a key.
    Inspect {
        /// The key.
        key: Key,
    },
    /// Every replica's cells.
    Display {
        /// Values are cut to this many bytes (at most [`MAX_DISPLAY_VALUE`]).
        max_value_len: u32,
        /// At most this many differing keys are listed.
        max_keys: u32,
    },
    /// Fault injection (checked by the network layer, which owns the faults).
    Fault(proto::FaultRequest),
    /// Where a key lives: its token, slot and replicas (answered from the ring).
    Token {
        /// The key.
        key: Key,
    },
    /// One page of a walk over every key.
    Scan {
        /// Where the page starts.
        cursor: ScanCursor,
        /// The most keys the page looks at (1 to [`MAX_SCAN_COUNT`]).
        count: u32,
    },
    /// Anti-entropy now: start a full pass if `start` (unless one runs); report the latest.
    Repair {
        /// Start a pass.
        start: bool,
    },
    /// A new member asks to join.
    Join {
        /// Its name, address and port.
        info: crate::cluster::ring::NodeInfo,
        /// Without tokens: it only coordinates.
        proxy: bool,
        /// The cluster it means to join (checked against this one's).
        cluster_id: u64,
    },
    /// Decommission this replica, remove a dead member, or report the movement.
    Membership(proto::MembershipRequest),
    /// A transaction: if every condition holds, every write, atomically.
    Txn(crate::txn::TxnSpec),
    /// A read-atomic read of several keys at QUORUM.
    MGet {
        /// The keys, 1 to `MAX_TXN_KEYS`, each once.
        keys: Vec<Key>,
    },
}

/// A request a peer sent on its replica link.
#[derive(Debug, Clone, PartialEq)]
pub enum PeerRequest {
    /// Liveness check.
    Ping,
    /// Read the local version of a key.
    Read {
        /// The key.
        key: Key,
    },
    /// Merge a version into the local cell.
    Write {
        /// The key.
        key: Key,
        /// The version, merged by last-write-wins.
        version: Version,
        /// The metadata epoch the coordinator chose the replicas at (0: not
        /// checked). A replica at a newer epoch refuses it ([`Error::StaleEpoch`]).
        epoch: u64,
    },
    /// Read the local versions of several keys.
    ReadBatch {
        /// The keys, at most [`MAX_BATCH`].
        keys: Vec<Key>,
    },
    /// Failure detection.
    Heartbeat {
        /// The sender's name.
        from: String,
        /// The sender's clock (HLC microseconds; 0: not sent), for the receiver's clock to observe.
        micros: u64,
        /// The sender's metadata epoch (0: not sent).
        epoch: u64,
    },
    /// Every local cell.
    Dump {
        /// Values are cut to this many bytes (at most [`MAX_DISPLAY_VALUE`]).
        max_value_len: u32,
        /// Empty: totals and digests. Otherwise the cells of these slots.
        slots: Vec<u8>,
        /// At most this many cells (at most [`MAX_DUMP_CELLS`]).
        max_keys: u32,
        /// Start after this key (in the first slot).
        after: Option<Key>,
        /// With no `slots`: digest only these slots (empty: every slot).
        digest_slots: Vec<u8>,
    },
    /// The local keys of one store slot, in key order, with their stamps.
    Scan {
        /// The store slot.
        slot: u8,
        /// Start after this key (from the slot's start if `None`).
        after: Option<Key>,
        /// At most this many keys (1 to [`MAX_SCAN_COUNT`]).
        count: u32,
    },
    /// A Paxos proposer's request to this replica's acceptor, and the
    /// metadata epoch the proposer chose the key's replicas at (0: not
    /// checked); an acceptor at a newer epoch refuses a prepare or propose
    /// ([`Error::StaleEpoch`]).
    Paxos(crate::paxos::Request, u64),
    /// A request about the cluster metadata register (the next epoch) to this replica's metadata acceptor.
    MetaPaxos(crate::paxos::Request),
    /// The cluster metadata the replica holds.
    Metadata,
    /// The cells (values whole) of slot `slot` with tokens in any of the
    /// stretches (`lo`, `hi`] of `ranges`, in key order.
    Stream {
        /// The store slot.
        slot: u8,
        /// The stretches' bounds (see [`Transfer`](crate::cluster::metadata::Transfer)):
        /// 1 to [`MAX_STREAM_RANGES`].
        ranges: Vec<(i64, i64)>,
        /// Start after this key.
        after: Option<Key>,
        /// Answer with a [`PeerResponse::Packed`] page (a replica that
        /// predates packed pages answers with [`PeerResponse::Cells`]).
        packed: bool,
    },
    /// The hash trees of one slot's groups (anti-entropy).
    Tree {
        /// The store slot.
        slot: u8,
        /// Send every tree's leaves, not only its root.
        leaves: bool,
    },
    /// The cells (values whole) of some leaves of one group, in key order.
    Cells {
        /// The store slot.
        slot: u8,
        /// The group's token range in the ring.
        range: u32,
        /// Bit i: leaf i (0: every leaf).
        leaves: u64,
        /// Start after this key.
        after: Option<Key>,
    },
    /// Merge these cells by last-write-wins; acknowledged once durable.
    Apply {
        /// At most [`MAX_BATCH`] cells.
        cells: Vec<(Key, Version)>,
    },
    /// The Paxos acceptor states held for keys whose tokens are in any of
    /// the stretches (`lo`, `hi`] of `ranges`, in key order after `after`, a
    /// page of at most [`MAX_BATCH`] (a movement copies them with the data).
    PaxosStates {
        /// 1 to [`MAX_STREAM_RANGES`] stretches.
        ranges: Vec<(i64, i64)>,
        /// Start after this key.
        after: Option<Key>,
    },
    /// Merge these acceptor states (each field only moves forward);
    /// acknowledged once durable, with [`PeerResponse::Applied`].
    PaxosLoad {
        /// At most [`MAX_BATCH`] states.
        states: Vec<(Key, crate::paxos::acceptor::KeyState)>,
    },
    /// Hold these keys for a transaction and vote on each (see [`crate::txn`]).
    TxnPrepare {
        /// The transaction.
        txn: crate::txn::TxnId,
        /// The key whose replicas keep its record.
        anchor: Key,
        /// What it does to each key, 1 to `MAX_TXN_KEYS`.
        items: Vec<(Key, crate::txn::intents::IntentWrite)>,
        /// The metadata epoch the coordinator chose the replicas at (0: not checked).
        epoch: u64,
    },
    /// To a transaction record's acceptor.
    TxnRecord(crate::txn::record::RecordRequest),
    /// The cells of these keys, and the intents holding them (`mget`).
    TxnRead {
        /// 1 to `MAX_TXN_KEYS` keys.
        keys: Vec<Key>,
        /// The read's timestamp: the replica's clock observes it before reading.
        at: Timestamp,
    },
    /// End a transaction's hold on these keys, with its decision.
    TxnResolve {
        /// The transaction.
        txn: crate::txn::TxnId,
        /// Its outcome.
        decision: crate::txn::record::Decision,
        /// Its keys here and what it does to each, 1 to `MAX_TXN_KEYS`.
        items: Vec<(Key, crate::txn::intents::IntentWrite)>,
    },
}

/// A replica's answer to a [`PeerRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum PeerResponse {
    /// To [`PeerRequest::Ping`]: the replica's name.
    Pong(String),
    /// To [`PeerRequest::Read`]: the local version, if any.
    Read(Option<Version>),
    /// To [`PeerRequest::Write`]: whether the version changed the cell.
    WriteAck {
        /// The version was newer than the cell's.
        applied: bool,
        /// When it was not: the timestamp of the version the replica holds
        /// instead (the same as the write's for a repeated write, newer otherwise).
        held: Option<Timestamp>,
    },
    /// To [`PeerRequest::ReadBatch`]: one version per key, in order.
    ReadBatch(Vec<Option<Version>>),
    /// To [`PeerRequest::Heartbeat`].
    Heartbeat {
        /// The replica's name.
        name: String,
        /// Its storage state.
        storage: Option<proto::StorageStats>,
        /// Its metadata epoch (0: not sent).
        epoch: u64,
    },
    /// To [`PeerRequest::Dump`].
    Dump(proto::DumpResult),
    /// To [`PeerRequest::Scan`]: keys in key order with their versions' stamps.
    Scan {
        /// The keys.
        entries: Vec<(Key, Stamp)>,
        /// The replica holds more keys of the slot after the last one.
        more: bool,
    },
    /// To [`PeerRequest::Paxos`]: the acceptor's answer.
    Paxos(crate::paxos::Response),
    /// To [`PeerRequest::Tree`]: one tree per group the replica holds cells of.
    Tree(Vec<sync::GroupTree>),
    /// To [`PeerRequest::Cells`], and to [`PeerRequest::Stream`] not packed.
    Cells {
        /// The cells, in key order.
        cells: Vec<(Key, Version)>,
        /// The replica holds more after the last one.
        more: bool,
    },
    /// To [`PeerRequest::Stream`] packed: the cells in key order, as
    /// [`packed`] writes them (read with [`packed::Reader`]).
    Packed {
        /// The page.
        page: Vec<u8>,
        /// The replica holds more after the last one.
        more: bool,
    },
    /// To [`PeerRequest::Apply`]: how many cells changed the store (and to
    /// [`PeerRequest::PaxosLoad`]: how many states were merged).
    Applied(u32),
    /// To [`PeerRequest::PaxosStates`]: states in key order.
    PaxosStates {
        /// The keys and their states.
        states: Vec<(Key, crate::paxos::acceptor::KeyState)>,
        /// The replica holds more after the last one.
        more: bool,
    },
    /// To [`PeerRequest::Metadata`].
    Metadata(Box<crate::node::membership::Stored>),
    /// To [`PeerRequest::TxnPrepare`]: one vote an item, in order.
    TxnVotes(Vec<crate::txn::intents::Vote>, Timestamp),
    /// To [`PeerRequest::TxnRecord`].
    TxnRecord(crate::txn::record::RecordReply),
    /// To [`PeerRequest::TxnResolve`]: how many cells it changed.
    TxnResolved(u32),
    /// To [`PeerRequest::TxnRead`]: each key's cell and intent, in order.
    TxnRead(Vec<(Option<Version>, Option<crate::txn::HeldBy>)>),
}

/// A peer's reply, or why there is none.
pub type PeerResult = Result<PeerResponse>;

/// The coordinator's answer to a [`ClientRequest`].
#[derive(Debug, Clone, PartialEq)]
pub enum Reply {
    /// To `Ping`: this replica's name.
    Pong(String),
    /// To `Get`: the newest version found (a tombstone reads as not found).
    Read(Option<Version>),
    /// To `Put`/`Delete`: the write's timestamp and the acks it got (a
    /// SERIAL write: its ballot and the accepts of its proposal).
    Write {
        /// The write's timestamp.
        ts: Timestamp,
        /// Acks received when the client was answered.
        acks: usize,
    },
    /// To a conditional `Put`/`Delete` whose condition did not hold.
    NotApplied {
        /// The value the condition was checked against (`None`: no live value).
        current: Option<Box<[u8]>>,
    },
    /// To a SERIAL `Get`: the value (`None`: no live value).
    SerialRead(Option<Box<[u8]>>),
    /// To `Status`.
    Status(proto::StatusResult),
    /// To `Inspect`.
    Inspect(proto::InspectResult),
    /// To `Display`.
    Display(proto::DisplayResult),
    /// To `Fault`.
    Fault(proto::FaultResult),
    /// To `Token`.
    Token(proto::TokenResult),
    /// To `Scan`.
    Scan(proto::ScanResult),
    /// To `Repair`: the latest anti-entropy pass.
    Repair(proto::RepairResult),
    /// To `Join`: the metadata the new member joins at.
    Joined(Box<crate::node::membership::Stored>),
    /// To `Membership`: the movement's progress.
    Membership(proto::MembershipResult),
    /// To `Txn` whose conditions held: committed, every write stamped `ts`.
    TxnCommitted {
        /// The commit timestamp.
        ts: Timestamp,
    },
    /// To `Txn` whose condition failed: nothing written; the compared keys' values.
    TxnNotApplied {
        /// Each compared key with its live value (`None`: absent).
        current: Vec<(Key, Option<Box<[u8]>>)>,
    },
    /// To `MGet`: each key asked with its value, in order.
    Values(Vec<(Key, Option<Box<[u8]>>)>),
    /// The request failed.
    Error(Error),
}

impl From<Error> for Reply {
    fn from(e: Error) -> Self {
        Reply::Error(e)
    }
}

/// Checks a list of slots from the wire: at most 256, each below 256.
fn slot_list(slots: Vec<u32>, what: &str) -> Result<Vec<u8>> {
    if slots.len() > KEYS {
        return Err(Error::InvalidRequest(format!("{what} of {} slots; there are {KEYS}", slots.len())));
    }
    slots
        .into_iter()
        .map(|s| u8::try_from(s).map_err(|_| Error::InvalidRequest(format!("slot {s} is out of range; slots are 0 to 255"))))
        .collect()
}

/// The expected value of a conditional put or delete, checked like a value.
fn if_value(old: Vec<u8>, limits: &Limits, what: &str) -> Result<Expect> {
    limits.value(&old).map_err(|e| Error::InvalidRequest(format!("the expected value of a conditional {what}: {}", e.message())))?;
    Ok(Expect::Equals(old.into_boxed_slice()))
}

/// The level of a put or delete: a conditional one is SERIAL (unset implies
/// it); naming another level with a condition is refused.
fn level_of(raw: i32, conditional: bool, what: &str) -> Result<Consistency> {
    let level = Consistency::from_proto(raw)?;
    if !conditional || level == Consistency::Serial {
        return Ok(level);
    }
    if raw == proto::Consistency::Unspecified as i32 {
        return Ok(Consistency::Serial);
    }
    Err(Error::InvalidRequest(format!(
        "a conditional {what} is decided by Paxos and runs at SERIAL; it was sent at {level} (send SERIAL or no level)"
    )))
}

impl ClientRequest {
    /// Parses and checks a request a client sent (after the connection's first
    /// frame, which may instead be a peer's `PeerHello`).
    pub fn parse(body: request::Body, limits: &Limits) -> Result<ClientRequest> {
        use request::Body as B;
        Ok(match body {
            B::Ping(_) => ClientRequest::Ping,
            B::Status(_) => ClientRequest::Status,
            B::Display(d) => ClientRequest::Display {
                max_value_len: d.max_value_len.min(MAX_DISPLAY_VALUE),
                max_keys: if d.max_keys == 0 { DEFAULT_DISPLAY_KEYS } else { d.max_keys.min(MAX_DISPLAY_KEYS) },
            },
            B::Get(g) => ClientRequest::Get { key: limits.key(g.key)?, level: Consistency::from_proto(g.consistency)? },
            B::Put(p) => {
                let key = limits.key(p.key)?;
                limits.value(&p.value)?;
                let condition = match p.condition {
                    None => None,
                    Some(proto::put::Condition::IfValue(old)) => Some(if_value(old, limits, "put")?),
                    Some(proto::put::Condition::IfAbsent(true)) => Some(Expect::Absent),
                    Some(proto::put::Condition::IfAbsent(false)) => {
                        return Err(Error::InvalidRequest(
                            "a put with if_absent false: the condition is `if absent` (true); send no condition for an ordinary put".into(),
                        ));
                    }
                };
                let level = level_of(p.consistency, condition.is_some(), "put")?;
                ClientRequest::Put { key, value: p.value, level, condition }
            }
            B::Delete(d) => {
                let key = limits.key(d.key)?;
                let condition = match d.condition {
                    None => None,
                    Some(proto::delete::Condition::IfValue(old)) => Some(if_value(old, limits, "delete")?),
                };
                let level = level_of(d.consistency, condition.is_some(), "delete")?;
                ClientRequest::Delete { key, level, condition }
            }
            B::Inspect(i) => ClientRequest::Inspect { key: limits.key(i.key)? },
            B::Token(t) => ClientRequest::Token { key: limits.key(t.key)? },
            B::Scan(s) => ClientRequest::Scan { cursor: ScanCursor::parse(s.cursor, limits)?, count: scan::scan_count(s.count)? },
            B::Repair(r) => ClientRequest::Repair { start: r.start },
            B::Join(j) => {
                let bad = |what: &str| Error::InvalidRequest(format!("a join request {what}"));
                if j.name.is_empty() || j.name.len() > 255 || j.name.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad("needs a name of 1 to 255 characters without spaces"));
                }
                if j.host.is_empty() || j.host.len() > 255 || j.host.chars().any(|c| c.is_whitespace() || c.is_control()) {
                    return Err(bad("needs a host of 1 to 255 characters without spaces"));
                }
                let port = u16::try_from(j.port).ok().filter(|&p| p != 0).ok_or_else(|| bad("needs a port of 1 to 65535"))?;
                let info = crate::cluster::ring::NodeInfo { id: crate::cluster::ring::node_id(&j.name), name: j.name, host: j.host, port };
                ClientRequest::Join { info, proxy: j.proxy, cluster_id: j.cluster_id }
            }
            B::Membership(m) => {
                if m.name.len() > 255 {
                    return Err(Error::InvalidRequest("a member's name is at most 255 bytes".into()));
                }
                if proto::membership_request::Op::try_from(m.op).is_err() {
                    return Err(Error::InvalidRequest(format!("unknown membership operation {}", m.op)));
                }
                ClientRequest::Membership(m)
            }
            // Fault injection checks its own fields (peer names need the ring), after
            // refusing everything when the replica runs without --enable-fault-injection.
            B::Fault(f) => ClientRequest::Fault(f),
            B::Txn(t) => txn::parse_client_txn(t, limits)?,
            B::Mget(m) => txn::parse_mget(m, limits)?,
            B::Hello(_)
            | B::TxnPrepare(_)
            | B::TxnRecord(_)
            | B::TxnResolve(_)
            | B::TxnRead(_)
            | B::ReplicaRead(_)
            | B::ReplicaWrite(_)
            | B::Heartbeat(_)
            | B::ReplicaDump(_)
            | B::ReplicaReadBatch(_)
            | B::ReplicaScan(_)
            | B::PaxosPrepare(_)
            | B::PaxosPropose(_)
            | B::PaxosCommit(_)
            | B::ReplicaTree(_)
            | B::ReplicaCells(_)
            | B::ReplicaApply(_)
            | B::Metadata(_)
            | B::ReplicaStream(_)
            | B::ReplicaPaxosStates(_)
            | B::ReplicaPaxosLoad(_) => {
                return Err(Error::InvalidRequest(REPLICA_ON_CLIENT.into()));
            }
        })
    }
}

impl PeerRequest {
    /// Parses and checks a request a peer sent on its replica link (after the
    /// handshake). The clock check of a write needs the replica's clock and is
    /// made by the replica.
    pub fn parse(body: request::Body, limits: &Limits) -> Result<PeerRequest> {
        use request::Body as B;
        Ok(match body {
            B::Ping(_) => PeerRequest::Ping,
            B::Heartbeat(h) => PeerRequest::Heartbeat { from: h.from, micros: h.micros, epoch: h.epoch },
            B::ReplicaDump(d) => {
                let slots = slot_list(d.slots, "a dump")?;
                let after = if d.after.is_empty() { None } else { Some(limits.key(d.after)?) };
                let digest_slots = slot_list(d.digest_slots, "digests")?;
                PeerRequest::Dump {
                    max_value_len: d.max_value_len.min(MAX_DISPLAY_VALUE),
                    slots,
                    max_keys: d.max_keys.min(MAX_DUMP_CELLS),
                    after,
                    digest_slots,
                }
            }
            B::ReplicaRead(r) => PeerRequest::Read { key: limits.key(r.key)? },
            B::ReplicaWrite(w) => {
                let key = limits.key(w.key)?;
                let v = w.version.ok_or_else(|| Error::InvalidRequest("replica write without a version".into()))?;
                if !v.tombstone {
                    limits.value(&v.value)?;
                }
                PeerRequest::Write { key, version: Version::from_proto(v), epoch: w.epoch }
            }
            B::ReplicaReadBatch(b) => {
                if b.keys.len() > MAX_BATCH {
                    return Err(Error::InvalidRequest(format!("a read batch of {} keys exceeds the limit of {MAX_BATCH}", b.keys.len())));
                }
                PeerRequest::ReadBatch { keys: b.keys.into_iter().map(|k| limits.key(k)).collect::<Result<_>>()? }
            }
            B::ReplicaScan(r) => {
                let slot = u8::try_from(r.slot)
                    .map_err(|_| Error::InvalidRequest(format!("replica scan of slot {}; slots are 0 to 255", r.slot)))?;
                let after = if r.after.is_empty() { None } else { Some(limits.key(r.after)?) };
                PeerRequest::Scan { slot, after, count: scan::replica_scan_count(r.count)? }
            }
            b @ (B::PaxosPrepare(proto::PaxosPrepare { cluster: true, .. })
            | B::PaxosPropose(proto::PaxosPropose { cluster: true, .. })
            | B::PaxosCommit(proto::PaxosCommit { cluster: true, .. })) => PeerRequest::MetaPaxos(paxos::parse_meta(b)?),
            B::PaxosPrepare(m) => {
                let epoch = m.epoch;
                PeerRequest::Paxos(paxos::parse_prepare(m, limits)?, epoch)
            }
            B::PaxosPropose(m) => {
                let epoch = m.epoch;
                PeerRequest::Paxos(paxos::parse_propose(m, limits)?, epoch)
            }
            B::PaxosCommit(m) => {
                let epoch = m.epoch;
                PeerRequest::Paxos(paxos::parse_commit(m, limits)?, epoch)
            }
            B::ReplicaTree(t) => PeerRequest::Tree { slot: sync::slot(t.slot, "hash trees")?, leaves: t.leaves },
            B::ReplicaCells(c) => PeerRequest::Cells {
                slot: sync::slot(c.slot, "cells")?,
                range: c.range,
                leaves: c.leaves,
                after: sync::after(c.after, limits)?,
            },
            B::ReplicaApply(a) => PeerRequest::Apply { cells: sync::cells(a.cells, limits, "a replica apply")? },
            B::Metadata(_) => PeerRequest::Metadata,
            B::ReplicaStream(r) => {
                if r.more.len() % 2 != 0 || r.more.len() / 2 >= MAX_STREAM_RANGES {
                    return Err(Error::InvalidRequest(format!(
                        "a stream of {} further bounds; give (lo, hi) pairs, at most {} stretches in all",
                        r.more.len(),
                        MAX_STREAM_RANGES
                    )));
                }
                let ranges = std::iter::once((r.lo, r.hi)).chain(r.more.chunks(2).map(|p| (p[0], p[1]))).collect();
                PeerRequest::Stream {
                    slot: sync::slot(r.slot, "a stream")?,
                    ranges,
                    after: sync::after(r.after, limits)?,
                    packed: r.packed,
                }
            }
            B::ReplicaPaxosStates(r) => {
                if r.ranges.is_empty() || r.ranges.len() % 2 != 0 || r.ranges.len() / 2 > MAX_STREAM_RANGES {
                    return Err(Error::InvalidRequest(format!(
                        "acceptor states asked for {} bounds; give 1 to {MAX_STREAM_RANGES} (lo, hi) pairs",
                        r.ranges.len()
                    )));
                }
                let ranges = r.ranges.chunks(2).map(|p| (p[0], p[1])).collect();
                PeerRequest::PaxosStates { ranges, after: sync::after(r.after, limits)? }
            }
            B::ReplicaPaxosLoad(l) => PeerRequest::PaxosLoad { states: paxos::parse_states(l.states, limits, "a paxos load")? },
            B::TxnPrepare(p) => txn::parse_prepare(p, limits)?,
            B::TxnRecord(r) => txn::parse_record(r)?,
            B::TxnResolve(r) => txn::parse_resolve(r, limits)?,
            B::TxnRead(r) => txn::parse_read(r, limits)?,
            B::Hello(_) => return Err(Error::InvalidRequest("second PeerHello on one link".into())),
            B::Txn(_)
            | B::Mget(_)
            | B::Get(_)
            | B::Put(_)
            | B::Delete(_)
            | B::Status(_)
            | B::Inspect(_)
            | B::Display(_)
            | B::Fault(_)
            | B::Token(_)
            | B::Scan(_)
            | B::Repair(_)
            | B::Join(_)
            | B::Membership(_) => {
                return Err(Error::InvalidRequest(CLIENT_ON_REPLICA.into()));
            }
        })
    }

    /// The wire form.
    pub fn into_proto(self) -> request::Body {
        use request::Body as B;
        match self {
            PeerRequest::Ping => B::Ping(proto::Ping {}),
            PeerRequest::Read { key } => B::ReplicaRead(proto::ReplicaRead { key: key.to_vec() }),
            PeerRequest::Write { key, version, epoch } => {
                B::ReplicaWrite(proto::ReplicaWrite { key: key.to_vec(), version: Some(version.into_proto()), epoch })
            }
            PeerRequest::ReadBatch { keys } => {
                B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: keys.iter().map(Key::to_vec).collect() })
            }
            PeerRequest::Heartbeat { from, micros, epoch } => B::Heartbeat(proto::Heartbeat { from, micros, epoch }),
            PeerRequest::Dump { max_value_len, slots, max_keys, after, digest_slots } => B::ReplicaDump(proto::ReplicaDump {
                max_value_len,
                slots: slots.into_iter().map(u32::from).collect(),
                max_keys,
                after: after.map(|k| k.to_vec()).unwrap_or_default(),
                digest_slots: digest_slots.into_iter().map(u32::from).collect(),
            }),
            PeerRequest::Scan { slot, after, count } => {
                B::ReplicaScan(proto::ReplicaScan { slot: slot.into(), after: after.map(|k| k.to_vec()).unwrap_or_default(), count })
            }
            PeerRequest::Paxos(r, epoch) => paxos::request_to_proto(r, epoch),
            PeerRequest::MetaPaxos(r) => paxos::meta_request_to_proto(r),
            PeerRequest::Tree { slot, leaves } => B::ReplicaTree(proto::ReplicaTree { slot: slot.into(), leaves }),
            PeerRequest::Cells { slot, range, leaves, after } => B::ReplicaCells(proto::ReplicaCells {
                slot: slot.into(),
                range,
                leaves,
                after: after.map(|k| k.to_vec()).unwrap_or_default(),
            }),
            PeerRequest::Apply { cells } => B::ReplicaApply(proto::ReplicaApply { cells: sync::cells_to_proto(cells) }),
            PeerRequest::Metadata => B::Metadata(proto::MetadataRequest {}),
            PeerRequest::Stream { slot, ranges, after, packed } => {
                let (lo, hi) = ranges.first().copied().unwrap_or((0, 0));
                let more = ranges.iter().skip(1).flat_map(|&(lo, hi)| [lo, hi]).collect();
                B::ReplicaStream(proto::ReplicaStream {
                    slot: slot.into(),
                    lo,
                    hi,
                    after: after.map(|k| k.to_vec()).unwrap_or_default(),
                    more,
                    packed,
                })
            }
            PeerRequest::PaxosStates { ranges, after } => B::ReplicaPaxosStates(proto::ReplicaPaxosStates {
                ranges: ranges.iter().flat_map(|&(lo, hi)| [lo, hi]).collect(),
                after: after.map(Key::into_vec).unwrap_or_default(),
            }),
            PeerRequest::PaxosLoad { states } => {
                B::ReplicaPaxosLoad(proto::ReplicaPaxosLoad { states: states.iter().map(|(k, s)| paxos::state_to_proto(k, s)).collect() })
            }
            t @ (PeerRequest::TxnPrepare { .. }
            | PeerRequest::TxnRecord(_)
            | PeerRequest::TxnResolve { .. }
            | PeerRequest::TxnRead { .. }) => txn::request_to_proto(t).unwrap_or_else(|_| unreachable!("a transaction request")),
        }
    }
}

fn read_result(v: Option<Version>) -> proto::ReadResult {
    proto::ReadResult { version: v.map(Version::into_proto) }
}

impl PeerResponse {
    /// The wire form.
    pub fn into_proto(self) -> response::Body {
        use response::Body as B;
        match self {
            PeerResponse::Pong(name) => B::Pong(proto::Pong { name }),
            PeerResponse::Read(v) => B::ReplicaRead(read_result(v)),
            PeerResponse::WriteAck { applied, held } => B::ReplicaWrite(proto::WriteAck {
                applied,
                held_micros: held.map_or(0, |t| t.micros),
                held_node: held.map_or(0, |t| t.node),
            }),
            PeerResponse::ReadBatch(vs) => {
                B::ReplicaReadBatch(proto::ReadBatchResult { results: vs.into_iter().map(read_result).collect() })
            }
            PeerResponse::Heartbeat { name, storage, epoch } => B::Heartbeat(proto::HeartbeatAck { name, storage, epoch }),
            PeerResponse::Dump(d) => B::ReplicaDump(d),
            PeerResponse::Scan { entries, more } => {
                B::ReplicaScan(proto::ReplicaScanResult { entries: entries.into_iter().map(scan::entry_to_proto).collect(), more })
            }
            PeerResponse::Paxos(r) => paxos::response_to_proto(r),
            PeerResponse::Tree(t) => B::ReplicaTree(sync::trees_to_proto(t)),
            PeerResponse::Cells { cells, more } => {
                B::ReplicaCells(proto::CellsResult { cells: sync::cells_to_proto(cells), more, packed: Vec::new() })
            }
            PeerResponse::Packed { page, more } => B::ReplicaCells(proto::CellsResult { cells: Vec::new(), more, packed: page }),
            PeerResponse::Applied(changed) => B::ReplicaApply(proto::ApplyResult { changed }),
            PeerResponse::PaxosStates { states, more } => B::ReplicaPaxosStates(proto::PaxosStatesResult {
                states: states.iter().map(|(k, s)| paxos::state_to_proto(k, s)).collect(),
                more,
            }),
            PeerResponse::Metadata(stored) => B::Metadata(Box::new(stored.to_proto())),
            t @ (PeerResponse::TxnVotes(..) | PeerResponse::TxnRecord(_) | PeerResponse::TxnResolved(_) | PeerResponse::TxnRead(_)) => {
                txn::response_to_proto(t).unwrap_or_else(|_| unreachable!("a transaction response"))
            }
        }
    }

    /// From the wire: an error reply becomes the error it carries; a reply no
    /// peer request has is a protocol error naming `from`.
    pub fn from_proto(body: Option<response::Body>, from: &str) -> PeerResult {
        use response::Body as B;
        Ok(match body {
            Some(B::Error(e)) => return Err(Error::from_proto(e)),
            None => return Err(Error::Protocol(format!("{from} sent an empty reply"))),
            Some(B::Pong(p)) => PeerResponse::Pong(p.name),
            Some(B::ReplicaRead(r)) => PeerResponse::Read(r.version.map(Version::from_proto)),
            Some(B::ReplicaWrite(w)) => {
                // An older replica sends no timestamp: nothing to compare, as before.
                let held = (!w.applied && w.held_micros != 0).then_some(Timestamp { micros: w.held_micros, node: w.held_node });
                PeerResponse::WriteAck { applied: w.applied, held }
            }
            Some(B::ReplicaReadBatch(b)) => {
                PeerResponse::ReadBatch(b.results.into_iter().map(|r| r.version.map(Version::from_proto)).collect())
            }
            Some(B::Heartbeat(h)) => PeerResponse::Heartbeat { name: h.name, storage: h.storage, epoch: h.epoch },
            Some(B::ReplicaDump(d)) => PeerResponse::Dump(d),
            Some(B::ReplicaScan(r)) => {
                PeerResponse::Scan { entries: r.entries.into_iter().map(scan::entry_from_proto).collect(), more: r.more }
            }
            Some(p @ (B::PaxosPromise(_) | B::PaxosRejected(_) | B::PaxosAccepted(_) | B::PaxosCommitted(_))) => {
                PeerResponse::Paxos(paxos::response_from_proto(p, from)?)
            }
            Some(B::ReplicaTree(t)) => PeerResponse::Tree(sync::trees(t, from)?),
            Some(B::ReplicaCells(c)) if !c.packed.is_empty() => PeerResponse::Packed { page: c.packed, more: c.more },
            Some(B::ReplicaCells(c)) => PeerResponse::Cells {
                // A peer's cells are trusted as its store holds them (checked when they were written).
                cells: c
                    .cells
                    .into_iter()
                    .map(|c| {
                        let v = c.version.ok_or_else(|| Error::Protocol(format!("{from} sent a cell without a version")))?;
                        Ok((Key::trusted(c.key), Version::from_proto(v)))
                    })
                    .collect::<Result<_>>()?,
                more: c.more,
            },
            Some(B::ReplicaApply(a)) => PeerResponse::Applied(a.changed),
            Some(B::ReplicaPaxosStates(r)) => PeerResponse::PaxosStates {
                // Shapes checked here; keys and values where they are merged.
                states: r
                    .states
                    .into_iter()
                    .map(|s| paxos::state_from_proto(s).map_err(|e| Error::Protocol(format!("{from} sent an acceptor state: {e}"))))
                    .collect::<Result<_>>()?,
                more: r.more,
            },
            Some(B::Metadata(m)) => PeerResponse::Metadata(
                crate::node::membership::Stored::from_proto(*m)
                    .map(Box::new)
                    .map_err(|e| Error::Protocol(format!("{from} sent bad cluster metadata: {e}")))?,
            ),
            // Keys in votes are checked as any key of a cluster of either partitioner would be.
            Some(B::TxnVotes(v)) => txn::votes_from_proto(
                v,
                &Limits { partitioner: crate::cluster::key::Partitioner::Murmur3, ..Limits::byte_ordered(usize::MAX) },
            )
            .map_err(|e| Error::Protocol(format!("{from}: {}", e.message())))?,
            Some(B::TxnRecord(r)) => txn::record_reply_from_proto(r).map_err(|e| Error::Protocol(format!("{from}: {}", e.message())))?,
            Some(B::TxnResolved(r)) => PeerResponse::TxnResolved(r.changed),
            Some(B::TxnRead(r)) => txn::read_from_proto(r).map_err(|e| Error::Protocol(format!("{from}: {}", e.message())))?,
            Some(other) => return Err(Error::Protocol(format!("{from} sent a reply no replica request has: {other:?}"))),
        })
    }
}

impl Reply {
    /// The native protocol's encoding of the reply.
    pub fn into_proto(self) -> response::Body {
        use response::Body as B;
        match self {
            Reply::Pong(name) => B::Pong(proto::Pong { name }),
            Reply::Read(found) => {
                // A tombstone is nothing to a client.
                match found.filter(|v| !v.is_tombstone()) {
                    None => B::Get(proto::GetResult { value: None, version: None }),
                    Some(v) => B::Get(proto::GetResult {
                        version: Some(proto::Version { micros: v.ts.micros, node: v.ts.node, tombstone: false, value: Vec::new() }),
                        value: v.value.map(Vec::from),
                    }),
                }
            }
            Reply::Write { ts, acks } => {
                B::Write(proto::WriteResult { micros: ts.micros, node: ts.node, acks: acks as u32, applied: Some(true), current: None })
            }
            Reply::NotApplied { current } => {
                B::Write(proto::WriteResult { applied: Some(false), current: current.map(Vec::from), ..Default::default() })
            }
            Reply::SerialRead(value) => B::Get(proto::GetResult { value: value.map(Vec::from), version: None }),
            Reply::Status(s) => B::Status(s),
            Reply::Inspect(i) => B::Inspect(i),
            Reply::Display(d) => B::Display(d),
            Reply::Fault(f) => B::Fault(f),
            Reply::Token(t) => B::Token(t),
            Reply::Scan(s) => B::Scan(s),
            Reply::Repair(r) => B::Repair(r),
            Reply::Joined(s) => B::Metadata(Box::new(s.to_proto())),
            Reply::Membership(m) => B::Membership(m),
            Reply::TxnCommitted { ts } => {
                B::Txn(proto::TxnResult { committed: true, micros: ts.micros, node: ts.node, current: Vec::new() })
            }
            Reply::TxnNotApplied { current } => {
                B::Txn(proto::TxnResult { current: txn::key_values_to_proto(current), ..Default::default() })
            }
            Reply::Values(values) => B::Mget(proto::MGetResult { values: txn::key_values_to_proto(values) }),
            Reply::Error(e) => B::Error(e.to_proto()),
        }
    }
}

/// Checks a request as it arrives on a client connection (after its first
/// frame, which may instead be a peer's `PeerHello`): a body is present and
/// [`ClientRequest::parse`] accepts it.
pub fn validate_request(req: &proto::Request, limits: &Limits) -> Result<()> {
    match &req.body {
        None => Err(Error::InvalidRequest("empty request".into())),
        Some(body) => ClientRequest::parse(body.clone(), limits).map(drop),
    }
}

/// Checks a request a peer sent on its replica link (after the handshake):
/// a body is present and [`PeerRequest::parse`] accepts it.
pub fn validate_peer_request(req: &proto::Request, limits: &Limits) -> Result<()> {
    match &req.body {
        None => Err(Error::InvalidRequest("empty request".into())),
        Some(body) => PeerRequest::parse(body.clone(), limits).map(drop),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto::request::Body as B;
    use crate::proto::response::Body as B2;

    const MAX_VALUE: usize = 100;
    const BYTES: Limits = Limits {
        partitioner: Partitioner::ByteOrdered,
        max_key_bytes: 8,
        max_value_bytes: MAX_VALUE,
        max_txn_keys: 64,
        max_txn_bytes: 1 << 20,
    };
    const MURMUR: Limits = Limits { partitioner: Partitioner::Murmur3, ..BYTES };

    fn client(body: B) -> Result<()> {
        validate_request(&proto::Request { id: 1, body: Some(body) }, &BYTES)
    }

    fn peer(body: B) -> Result<()> {
        validate_peer_request(&proto::Request { id: 1, body: Some(body) }, &BYTES)
    }

    fn refused(r: Result<()>, needle: &str) {
        match r {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }

    fn k(s: &str) -> Vec<u8> {
        s.as_bytes().to_vec()
    }

    #[test]
    fn client_requests_are_checked_field_by_field() {
        assert!(client(B::Get(proto::Get { key: k("255"), consistency: 2 })).is_ok());
        refused(client(B::Get(proto::Get { key: k("256"), consistency: 2 })), "key 256 is out of range");
        refused(client(B::Get(proto::Get { key: k("4294967295"), consistency: 0 })), "out of range");
        refused(client(B::Get(proto::Get { key: k("user:1"), consistency: 0 })), "partitioner murmur3");
        refused(client(B::Get(proto::Get { key: k("1"), consistency: 5 })), "unknown consistency level 5");
        refused(client(B::Delete(proto::Delete { key: k("1"), consistency: -1, condition: None })), "unknown consistency level -1");
        refused(client(B::Delete(proto::Delete { key: k("300"), consistency: 1, condition: None })), "out of range");
        assert!(client(B::Put(proto::Put { key: k("0"), value: vec![b'v'; MAX_VALUE], consistency: 3, condition: None })).is_ok());
        refused(
            client(B::Put(proto::Put { key: k("0"), value: vec![b'v'; MAX_VALUE + 1], consistency: 3, condition: None })),
            "exceeds the limit of 100",
        );
        refused(client(B::Put(proto::Put { key: k("0"), value: Vec::new(), consistency: 9, condition: None })), "consistency");
        refused(client(B::Inspect(proto::InspectRequest { key: k("1000") })), "out of range");
        assert!(client(B::Display(proto::DisplayRequest { max_value_len: u32::MAX, max_keys: u32::MAX })).is_ok());
        refused(validate_request(&proto::Request { id: 3, body: None }, &BYTES), "empty request");
        for replica_only in [
            B::Hello(proto::PeerHello::default()),
            B::ReplicaRead(proto::ReplicaRead { key: k("1") }),
            B::ReplicaWrite(proto::ReplicaWrite::default()),
            B::Heartbeat(proto::Heartbeat::default()),
            B::ReplicaDump(proto::ReplicaDump::default()),
            B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![k("1")] }),
            B::ReplicaScan(proto::ReplicaScan { slot: 1, after: Vec::new(), count: 1 }),
            paxos::request_to_proto(
                crate::paxos::Request::Prepare { key: Key::byte(1), ballot: crate::paxos::Ballot(Timestamp { micros: 1, node: 0 }) },
                0,
            ),
            B::PaxosPropose(proto::PaxosPropose::default()),
            B::PaxosCommit(proto::PaxosCommit::default()),
            B::ReplicaTree(proto::ReplicaTree::default()),
            B::ReplicaCells(proto::ReplicaCells::default()),
            B::ReplicaApply(proto::ReplicaApply::default()),
        ] {
            refused(client(replica_only), "replica-to-replica request on a client connection");
        }
    }

    /// A condition makes a put or delete SERIAL (unset implies it); another
    /// level is refused, and the expected value is checked like a value.
    #[test]
    fn conditional_writes_are_serial_and_checked() {
        use proto::{delete, put};
        let parse = |body| ClientRequest::parse(body, &BYTES);
        let put = |consistency, condition| B::Put(proto::Put { key: k("5"), value: k("new"), consistency, condition });
        let serial = proto::Consistency::Serial as i32;
        let if_old = |v: &str| Some(put::Condition::IfValue(k(v)));
        let want = |level, condition| ClientRequest::Put { key: Key::byte(5), value: k("new"), level, condition };
        let old = Some(Expect::Equals(k("old").into_boxed_slice()));
        assert_eq!(parse(put(serial, if_old("old"))).unwrap(), want(Consistency::Serial, old.clone()));
        assert_eq!(parse(put(0, if_old("old"))).unwrap(), want(Consistency::Serial, old.clone()), "unset implies SERIAL");
        let absent = Some(put::Condition::IfAbsent(true));
        assert_eq!(parse(put(0, absent)).unwrap(), want(Consistency::Serial, Some(Expect::Absent)));
        assert_eq!(parse(put(serial, None)).unwrap(), want(Consistency::Serial, None), "a plain SERIAL put");
        assert_eq!(parse(put(1, None)).unwrap(), want(Consistency::One, None));
        refused(parse(put(2, if_old("old"))).map(drop), "a conditional put is decided by Paxos and runs at SERIAL; it was sent at QUORUM");
        refused(parse(put(1, if_old("old"))).map(drop), "sent at ONE");
        refused(parse(put(0, Some(put::Condition::IfAbsent(false)))).map(drop), "if_absent false");
        refused(parse(put(0, if_old(&"x".repeat(MAX_VALUE + 1)))).map(drop), "expected value of a conditional put");
        assert!(parse(put(0, if_old(""))).is_ok(), "an empty expected value is a value");
        let del = |consistency, old: &str| {
            B::Delete(proto::Delete { key: k("5"), consistency, condition: Some(delete::Condition::IfValue(k(old))) })
        };
        assert_eq!(parse(del(0, "old")).unwrap(), ClientRequest::Delete { key: Key::byte(5), level: Consistency::Serial, condition: old });
        refused(parse(del(3, "old")).map(drop), "a conditional delete is decided by Paxos and runs at SERIAL; it was sent at ALL");
        refused(parse(del(0, &"x".repeat(MAX_VALUE + 1))).map(drop), "expected value of a conditional delete");
        let get = parse(B::Get(proto::Get { key: k("5"), consistency: serial })).unwrap();
        assert_eq!(get, ClientRequest::Get { key: Key::byte(5), level: Consistency::Serial });
        // The replies: an ordinary write says applied; a failed condition carries the current value.
        let ts = Timestamp { micros: 3, node: 1 };
        let B2::Write(w) = (Reply::Write { ts, acks: 2 }).into_proto() else { panic!("a write result") };
        assert_eq!((w.applied, w.current), (Some(true), None));
        let B2::Write(w) = (Reply::NotApplied { current: Some(k("v1").into()) }).into_proto() else { panic!("a write result") };
        assert_eq!((w.applied, w.current), (Some(false), Some(k("v1"))));
        let B2::Write(w) = (Reply::NotApplied { current: None }).into_proto() else { panic!("a write result") };
        assert_eq!((w.applied, w.current), (Some(false), None));
    }

    #[test]
    fn murmur3_keys_are_bytes_within_the_limit() {
        let parse = |body| ClientRequest::parse(body, &MURMUR);
        let got = parse(B::Put(proto::Put { key: vec![0xff, 0, b'k'], value: vec![0x80, 0], consistency: 2, condition: None })).unwrap();
        assert_eq!(
            got,
            ClientRequest::Put {
                key: Key::trusted(vec![0xff, 0, b'k']),
                value: vec![0x80, 0],
                level: Consistency::Quorum,
                condition: None
            }
        );
        let refuse = |body, needle: &str| refused(parse(body).map(drop), needle);
        refuse(B::Get(proto::Get { key: Vec::new(), consistency: 1 }), "the key is empty");
        refuse(B::Get(proto::Get { key: vec![b'x'; 9], consistency: 1 }), "key of 9 bytes exceeds the limit of 8 bytes");
        assert!(parse(B::Get(proto::Get { key: vec![b'x'; 8], consistency: 1 })).is_ok());
        let batch = PeerRequest::parse(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![k("a"), Vec::new()] }), &MURMUR);
        refused(batch.map(drop), "the key is empty");
    }

    #[test]
    fn peer_requests_are_checked_field_by_field() {
        let v = |tombstone, value: &str| Some(proto::Version { micros: 1, node: 0, tombstone, value: k(value) });
        assert!(peer(B::ReplicaWrite(proto::ReplicaWrite { key: k("3"), version: v(false, "x"), epoch: 0 })).is_ok());
        refused(peer(B::ReplicaWrite(proto::ReplicaWrite { key: k("3"), version: None, epoch: 0 })), "without a version");
        refused(peer(B::ReplicaWrite(proto::ReplicaWrite { key: k("256"), version: v(false, "x"), epoch: 0 })), "out of range");
        refused(
            peer(B::ReplicaWrite(proto::ReplicaWrite { key: k("3"), version: v(false, &"x".repeat(MAX_VALUE + 1)), epoch: 0 })),
            "exceeds",
        );
        assert!(peer(B::ReplicaWrite(proto::ReplicaWrite { key: k("3"), version: v(true, ""), epoch: 0 })).is_ok());
        refused(peer(B::ReplicaRead(proto::ReplicaRead { key: k("256") })), "out of range");
        assert!(peer(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![k("255"); MAX_BATCH] })).is_ok());
        refused(peer(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![k("0"); MAX_BATCH + 1] })), "exceeds the limit");
        refused(peer(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![k("0"), k("256")] })), "out of range");
        refused(peer(B::Hello(proto::PeerHello::default())), "second PeerHello");
        refused(peer(B::Get(proto::Get::default())), "client request on a replica link");
        assert!(peer(B::Heartbeat(proto::Heartbeat { from: "r1".into(), micros: 7, epoch: 1 })).is_ok());
        let stream =
            |more: Vec<i64>| B::ReplicaStream(proto::ReplicaStream { slot: 3, lo: 1, hi: 2, after: Vec::new(), more, packed: true });
        refused(peer(stream(vec![5])), "(lo, hi) pairs");
        refused(peer(stream(vec![0; 2 * MAX_STREAM_RANGES])), "at most 1024");
        let ranges = match PeerRequest::parse(stream(vec![5, 6, -9, -7]), &BYTES) {
            Ok(PeerRequest::Stream { ranges, .. }) => ranges,
            other => panic!("{other:?}"),
        };
        assert_eq!(ranges, vec![(1, 2), (5, 6), (-9, -7)]);
        let back = PeerRequest::Stream { slot: 3, ranges, after: None, packed: true }.into_proto();
        assert_eq!(back, stream(vec![5, 6, -9, -7]));

        // Paxos requests are parsed by `paxos` (tested there); on a link they are typed and read back.
        let ballot = crate::paxos::Ballot(Timestamp { micros: 5, node: 1 });
        let prepare = PeerRequest::Paxos(crate::paxos::Request::Prepare { key: Key::byte(3), ballot }, 0);
        assert_eq!(PeerRequest::parse(prepare.clone().into_proto(), &BYTES).unwrap(), prepare);
        refused(peer(B::PaxosPrepare(proto::PaxosPrepare { key: k("256"), ballot: None, cluster: false, epoch: 0 })), "out of range");
        refused(peer(B::PaxosPropose(proto::PaxosPropose { key: k("3"), proposal: None, cluster: false, epoch: 0 })), "without a proposal");
        let answer = PeerResponse::Paxos(crate::paxos::Response::Accepted { key: Key::byte(3), ballot });
        assert_eq!(PeerResponse::from_proto(Some(answer.clone().into_proto()), "r1").unwrap(), answer);
    }

    #[test]
    fn token_and_scan_requests_are_checked_field_by_field() {
        let token = |key: Vec<u8>| B::Token(proto::TokenRequest { key });
        let scan = |cursor: Vec<u8>, count| B::Scan(proto::ScanRequest { cursor, count });
        assert_eq!(ClientRequest::parse(token(k("070")), &BYTES).unwrap(), ClientRequest::Token { key: Key::byte(70) });
        refused(client(token(k("256"))), "key 256 is out of range");
        refused(ClientRequest::parse(token(Vec::new()), &MURMUR).map(drop), "the key is empty");
        let start = ClientRequest::Scan { cursor: ScanCursor::START, count: DEFAULT_SCAN_COUNT };
        assert_eq!(ClientRequest::parse(scan(Vec::new(), 0), &MURMUR).unwrap(), start);
        let at = ScanCursor { slot: 9, after: None };
        assert_eq!(ClientRequest::parse(scan(at.encode(), 500), &MURMUR).unwrap(), ClientRequest::Scan { cursor: at, count: 500 });
        refused(client(scan(Vec::new(), MAX_SCAN_COUNT + 1)), "scan count 10001 exceeds the limit of 10000");
        refused(client(scan(vec![2, 0], 1)), "scan cursor has format 2");
        refused(client(scan(vec![1, 5, b'6'], 1)), "key 6 of slot 6 as a key of slot 5");
        refused(peer(token(k("1"))), "client request on a replica link");
        refused(peer(scan(Vec::new(), 1)), "client request on a replica link");

        let replica_scan = |slot, after: &str, count| B::ReplicaScan(proto::ReplicaScan { slot, after: k(after), count });
        let asked = PeerRequest::parse(replica_scan(255, "user", MAX_SCAN_COUNT), &MURMUR).unwrap();
        assert_eq!(asked, PeerRequest::Scan { slot: 255, after: Some(Key::trusted(*b"user")), count: MAX_SCAN_COUNT });
        assert_eq!(PeerRequest::parse(asked.clone().into_proto(), &MURMUR).unwrap(), asked, "the wire form reads back");
        assert_eq!(PeerRequest::parse(replica_scan(0, "", 1), &BYTES).unwrap(), PeerRequest::Scan { slot: 0, after: None, count: 1 });
        refused(peer(replica_scan(256, "", 1)), "replica scan of slot 256; slots are 0 to 255");
        refused(peer(replica_scan(0, "", 0)), "a replica scan of 0 keys");
        refused(peer(replica_scan(0, "", MAX_SCAN_COUNT + 1)), "exceeds the limit of 10000");
        refused(peer(replica_scan(0, "300", 1)), "key 300 is out of range");

        let stamp = Stamp { ts: Timestamp { micros: 9, node: 2 }, tombstone: true };
        let answer = PeerResponse::Scan { entries: vec![(Key::trusted(*b"a"), stamp)], more: true };
        assert_eq!(PeerResponse::from_proto(Some(answer.clone().into_proto()), "r1").unwrap(), answer);
    }
}
