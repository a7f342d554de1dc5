//! The wire and disk forms of transactions ([`crate::txn`]): a client's
//! transaction and `mget`, the participants' prepares, votes and
//! resolutions, the record acceptor's requests and answers, and the log
//! records of intents and records.
//!
//! Checked like every request: keys through the partitioner, values against
//! the value limit, 1 to [`MAX_TXN_KEYS`] items each naming a key once, a
//! transaction id present and not 0, a decision's commit timestamp present
//! and not 0, a record ballot present (0 only for the coordinator's accept).
//! A malformed answer from a peer is a protocol error.

use std::collections::HashSet;

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::paxos::ballot_to_proto;
use crate::message::{ClientRequest, Limits, PeerRequest, PeerResponse};
use crate::paxos::{Ballot, Expect};
use crate::proto::{self, request, response};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;
use crate::txn::intents::{Conflict, Intent, IntentWrite, Vote};
use crate::txn::record::{Decision, RecordReply, RecordRequest, RecordState};
use crate::txn::{HeldBy, MAX_TXN_KEYS, TxnId, TxnSpec};

fn bad(m: String) -> Error {
    Error::InvalidRequest(m)
}

/// The wire form of a transaction id.
pub fn txn_to_proto(t: TxnId) -> proto::Ballot {
    proto::Ballot { micros: t.0.micros, node: t.0.node }
}

fn ts_of(b: proto::Ballot) -> Timestamp {
    Timestamp { micros: b.micros, node: b.node }
}

/// A transaction id from the wire: present and not 0.
fn txn_of(b: Option<proto::Ballot>, what: &str) -> Result<TxnId> {
    match b {
        Some(b) if b.micros != 0 => Ok(TxnId(ts_of(b))),
        _ => Err(bad(format!("{what} without a transaction id (a clock time, never 0)"))),
    }
}

fn decision_to_proto(d: Decision) -> proto::TxnDecision {
    match d {
        Decision::Committed(ts) => proto::TxnDecision { committed: true, ts: Some(proto::Ballot { micros: ts.micros, node: ts.node }) },
        Decision::Aborted => proto::TxnDecision { committed: false, ts: None },
    }
}

fn decision_of(d: Option<proto::TxnDecision>, what: &str) -> Result<Decision> {
    let d = d.ok_or_else(|| bad(format!("{what} without a decision")))?;
    if !d.committed {
        return Ok(Decision::Aborted);
    }
    match d.ts {
        Some(ts) if ts.micros != 0 => Ok(Decision::Committed(ts_of(ts))),
        _ => Err(bad(format!("{what}: a commit without its timestamp"))),
    }
}

fn item_to_proto(key: Key, write: IntentWrite) -> proto::TxnItem {
    let (write, value) = match write {
        IntentWrite::Compare => (0, Vec::new()),
        IntentWrite::Put(v) => (1, v.into_vec()),
        IntentWrite::Delete => (2, Vec::new()),
    };
    proto::TxnItem { key: key.into_vec(), write, value }
}

fn write_of(write: u32, value: Vec<u8>, limits: &Limits) -> Result<IntentWrite> {
    match write {
        0 | 2 if !value.is_empty() => Err(bad("a transaction item that compares or deletes carries a value".into())),
        0 => Ok(IntentWrite::Compare),
        1 => {
            limits.value(&value)?;
            Ok(IntentWrite::Put(value.into_boxed_slice()))
        }
        2 => Ok(IntentWrite::Delete),
        w => Err(bad(format!("a transaction item with write {w}; 0 compares, 1 puts, 2 deletes"))),
    }
}

/// Items from the wire: 1 to [`MAX_TXN_KEYS`], each key once.
fn items_of(items: Vec<proto::TxnItem>, limits: &Limits, what: &str) -> Result<Vec<(Key, IntentWrite)>> {
    if items.is_empty() || items.len() > MAX_TXN_KEYS {
        return Err(bad(format!("{what} of {} keys; 1 to {MAX_TXN_KEYS}", items.len())));
    }
    let mut seen = HashSet::new();
    let mut out = Vec::with_capacity(items.len());
    for i in items {
        let key = limits.key(i.key)?;
        if !seen.insert(key.clone()) {
            return Err(bad(format!("{what} names key {key} twice")));
        }
        out.push((key, write_of(i.write, i.value, limits)?));
    }
    Ok(out)
}

/// Checks a prepare from a peer.
pub fn parse_prepare(p: proto::TxnPrepare, limits: &Limits) -> Result<PeerRequest> {
    let txn = txn_of(p.txn, "a transaction prepare")?;
    let anchor = limits.key(p.anchor)?;
    Ok(PeerRequest::TxnPrepare { txn, anchor, items: items_of(p.items, limits, "a transaction prepare")?, epoch: p.epoch })
}

/// Checks a record request from a peer.
pub fn parse_record(r: proto::TxnRecordRequest) -> Result<PeerRequest> {
    let txn = txn_of(r.txn, "a transaction record request")?;
    let ballot = r.ballot.map(|b| Ballot(ts_of(b)));
    Ok(PeerRequest::TxnRecord(match r.op {
        1 => match ballot {
            Some(ballot) if ballot.0.micros != 0 => RecordRequest::Prepare { txn, ballot },
            _ => return Err(bad("a transaction record prepare without a ballot (never 0)".into())),
        },
        2 => {
            let ballot = ballot.ok_or_else(|| bad("a transaction record accept without a ballot".into()))?;
            RecordRequest::Accept { txn, ballot, decision: decision_of(r.decision, "a transaction record accept")? }
        }
        3 => RecordRequest::Forget { txn },
        4 => RecordRequest::Peek { txn },
        op => return Err(bad(format!("a transaction record request with op {op}; 1 prepares, 2 accepts, 3 forgets, 4 peeks"))),
    }))
}

/// Checks a resolution from a peer.
pub fn parse_resolve(r: proto::TxnResolve, limits: &Limits) -> Result<PeerRequest> {
    let txn = txn_of(r.txn, "a transaction resolution")?;
    let decision = decision_of(r.decision, "a transaction resolution")?;
    Ok(PeerRequest::TxnResolve { txn, decision, items: items_of(r.items, limits, "a transaction resolution")? })
}

/// The wire form of the three transaction peer requests (`None` for any other).
pub fn request_to_proto(req: PeerRequest) -> std::result::Result<request::Body, PeerRequest> {
    use request::Body as B;
    let items = |items: Vec<(Key, IntentWrite)>| items.into_iter().map(|(k, w)| item_to_proto(k, w)).collect();
    Ok(match req {
        PeerRequest::TxnPrepare { txn, anchor, items: i, epoch } => {
            B::TxnPrepare(proto::TxnPrepare { txn: Some(txn_to_proto(txn)), anchor: anchor.into_vec(), items: items(i), epoch })
        }
        PeerRequest::TxnResolve { txn, decision, items: i } => {
            B::TxnResolve(proto::TxnResolve { txn: Some(txn_to_proto(txn)), decision: Some(decision_to_proto(decision)), items: items(i) })
        }
        PeerRequest::TxnRecord(r) => B::TxnRecord(match r {
            RecordRequest::Prepare { txn, ballot } => {
                proto::TxnRecordRequest { txn: Some(txn_to_proto(txn)), op: 1, ballot: Some(ballot_to_proto(ballot)), decision: None }
            }
            RecordRequest::Accept { txn, ballot, decision } => proto::TxnRecordRequest {
                txn: Some(txn_to_proto(txn)),
                op: 2,
                ballot: Some(ballot_to_proto(ballot)),
                decision: Some(decision_to_proto(decision)),
            },
            RecordRequest::Forget { txn } => proto::TxnRecordRequest { txn: Some(txn_to_proto(txn)), op: 3, ballot: None, decision: None },
            RecordRequest::Peek { txn } => proto::TxnRecordRequest { txn: Some(txn_to_proto(txn)), op: 4, ballot: None, decision: None },
        }),
        PeerRequest::TxnRead { keys, at } => B::TxnRead(proto::TxnRead {
            keys: keys.into_iter().map(Key::into_vec).collect(),
            at: Some(proto::Ballot { micros: at.micros, node: at.node }),
        }),
        other => return Err(other),
    })
}

/// The wire form of the transaction peer responses (`Err` for any other).
pub fn response_to_proto(r: PeerResponse) -> std::result::Result<response::Body, Box<PeerResponse>> {
    use response::Body as B;
    Ok(match r {
        PeerResponse::TxnVotes(votes, clock) => B::TxnVotes(proto::TxnVotes {
            votes: votes.into_iter().map(vote_to_proto).collect(),
            clock: Some(proto::Ballot { micros: clock.micros, node: clock.node }),
        }),
        PeerResponse::TxnResolved(changed) => B::TxnResolved(proto::TxnResolved { changed }),
        PeerResponse::TxnRecord(r) => B::TxnRecord(match r {
            RecordReply::Promised { ballot, accepted } => proto::TxnRecordReply {
                kind: 1,
                ballot: Some(ballot_to_proto(ballot)),
                accepted_ballot: accepted.map(|(b, _)| ballot_to_proto(b)),
                accepted: accepted.map(|(_, d)| decision_to_proto(d)),
                promised: None,
            },
            RecordReply::Accepted { ballot } => {
                proto::TxnRecordReply { kind: 2, ballot: Some(ballot_to_proto(ballot)), ..Default::default() }
            }
            RecordReply::Refused { ballot, promised } => proto::TxnRecordReply {
                kind: 3,
                ballot: Some(ballot_to_proto(ballot)),
                promised: Some(ballot_to_proto(promised)),
                ..Default::default()
            },
            RecordReply::Forgotten => proto::TxnRecordReply { kind: 4, ..Default::default() },
            RecordReply::State { accepted } => proto::TxnRecordReply {
                kind: 5,
                accepted_ballot: accepted.map(|(b, _)| ballot_to_proto(b)),
                accepted: accepted.map(|(_, d)| decision_to_proto(d)),
                ..Default::default()
            },
        }),
        PeerResponse::TxnRead(entries) => B::TxnRead(proto::TxnReadResult {
            entries: entries
                .into_iter()
                .map(|(cell, held)| match held {
                    None => proto::TxnReadEntry { cell: cell.map(Version::into_proto), ..Default::default() },
                    Some(h) => proto::TxnReadEntry {
                        cell: cell.map(Version::into_proto),
                        txn: Some(txn_to_proto(h.txn)),
                        anchor: h.anchor.to_vec(),
                        write: Some(item_to_proto(h.anchor, h.write)),
                    },
                })
                .collect(),
        }),
        other => return Err(Box::new(other)),
    })
}

fn vote_to_proto(v: Vote) -> proto::TxnVote {
    match v {
        Vote::Yes(cell) => proto::TxnVote { yes: true, cell: cell.map(Version::into_proto), ..Default::default() },
        Vote::No(Conflict::Serial) => proto::TxnVote { serial: true, ..Default::default() },
        Vote::No(Conflict::Ended) => proto::TxnVote::default(),
        Vote::No(Conflict::Held { by, anchor, .. }) => {
            proto::TxnVote { held_by: Some(txn_to_proto(by)), held_anchor: anchor.into_vec(), ..Default::default() }
        }
    }
}

fn protocol(what: &str) -> Error {
    Error::Protocol(format!("a malformed {what} from a peer"))
}

/// Checks the votes a peer sent.
pub fn votes_from_proto(v: proto::TxnVotes, limits: &Limits) -> Result<PeerResponse> {
    let mut out = Vec::with_capacity(v.votes.len());
    for v in v.votes {
        out.push(if v.yes {
            Vote::Yes(v.cell.map(Version::from_proto))
        } else if v.serial {
            Vote::No(Conflict::Serial)
        } else if v.held_by.is_none() {
            Vote::No(Conflict::Ended)
        } else {
            let by = txn_of(v.held_by, "a vote").map_err(|_| protocol("vote"))?;
            let anchor = limits.key(v.held_anchor).map_err(|_| protocol("vote"))?;
            Vote::No(Conflict::Held { by, anchor, since: 0 })
        });
    }
    let clock = v.clock.map(ts_of).ok_or_else(|| protocol("votes"))?;
    Ok(PeerResponse::TxnVotes(out, clock))
}

/// Checks a record acceptor's answer.
pub fn record_reply_from_proto(r: proto::TxnRecordReply) -> Result<PeerResponse> {
    let ballot = r.ballot.map(|b| Ballot(ts_of(b)));
    Ok(PeerResponse::TxnRecord(match (r.kind, ballot) {
        (1, Some(ballot)) => {
            let accepted = match (r.accepted_ballot, r.accepted) {
                (Some(b), Some(d)) => {
                    Some((Ballot(ts_of(b)), decision_of(Some(d), "a record promise").map_err(|_| protocol("record promise"))?))
                }
                _ => None,
            };
            RecordReply::Promised { ballot, accepted }
        }
        (2, Some(ballot)) => RecordReply::Accepted { ballot },
        (3, Some(ballot)) => {
            RecordReply::Refused { ballot, promised: r.promised.map(|b| Ballot(ts_of(b))).ok_or_else(|| protocol("record refusal"))? }
        }
        (4, _) => RecordReply::Forgotten,
        (5, _) => RecordReply::State {
            accepted: match (r.accepted_ballot, r.accepted) {
                (Some(b), Some(d)) => {
                    Some((Ballot(ts_of(b)), decision_of(Some(d), "a record state").map_err(|_| protocol("record state"))?))
                }
                _ => None,
            },
        },
        _ => return Err(protocol("record answer")),
    }))
}

/// Checks a read of keys and intents from a peer.
pub fn parse_read(r: proto::TxnRead, limits: &Limits) -> Result<PeerRequest> {
    if r.keys.is_empty() || r.keys.len() > MAX_TXN_KEYS {
        return Err(bad(format!("a transaction read of {} keys; 1 to {MAX_TXN_KEYS}", r.keys.len())));
    }
    let at = match r.at {
        Some(at) if at.micros != 0 => ts_of(at),
        _ => return Err(bad("a transaction read without its timestamp (never 0)".into())),
    };
    Ok(PeerRequest::TxnRead { keys: r.keys.into_iter().map(|k| limits.key(k)).collect::<Result<_>>()?, at })
}

/// Checks the shape of a peer's answer to a read of keys and intents (its
/// keys and values are trusted as its store holds them).
pub fn read_from_proto(r: proto::TxnReadResult) -> Result<PeerResponse> {
    let mut out = Vec::with_capacity(r.entries.len());
    for e in r.entries {
        let cell = e.cell.map(Version::from_proto);
        let held = match e.txn {
            None => None,
            Some(t) => {
                let txn = txn_of(Some(t), "").map_err(|_| protocol("read"))?;
                let w = e.write.ok_or_else(|| protocol("read"))?;
                let write = match w.write {
                    0 => IntentWrite::Compare,
                    1 => IntentWrite::Put(w.value.into_boxed_slice()),
                    2 => IntentWrite::Delete,
                    _ => return Err(protocol("read")),
                };
                if e.anchor.is_empty() {
                    return Err(protocol("read"));
                }
                Some(HeldBy { txn, anchor: Key::trusted(e.anchor), write })
            }
        };
        out.push((cell, held));
    }
    Ok(PeerResponse::TxnRead(out))
}

/// Checks a client's transaction.
pub fn parse_client_txn(t: proto::TxnRequest, limits: &Limits) -> Result<ClientRequest> {
    let mut spec = TxnSpec::default();
    for c in t.conditions {
        let key = limits.key(c.key)?;
        let expect = match (c.absent, c.equals) {
            (true, v) if v.is_empty() => Expect::Absent,
            (true, _) => return Err(bad(format!("the condition on key {key} expects both a value and absence"))),
            (false, v) => {
                limits.value(&v)?;
                Expect::Equals(v.into_boxed_slice())
            }
        };
        spec.conditions.push((key, expect));
    }
    for w in t.writes {
        let key = limits.key(w.key)?;
        let value = match write_of(w.write, w.value, limits)? {
            IntentWrite::Put(v) => Some(v),
            IntentWrite::Delete => None,
            IntentWrite::Compare => return Err(bad(format!("the write of key {key} is neither a put (1) nor a delete (2)"))),
        };
        spec.writes.push((key, value));
    }
    spec.check(limits.max_txn_keys, limits.max_txn_bytes)?;
    Ok(ClientRequest::Txn(spec))
}

/// The wire form of a client's transaction.
pub fn client_txn_to_proto(spec: TxnSpec) -> proto::TxnRequest {
    proto::TxnRequest {
        conditions: spec
            .conditions
            .into_iter()
            .map(|(k, e)| match e {
                Expect::Equals(v) => proto::TxnCondition { key: k.into_vec(), equals: v.into_vec(), absent: false },
                Expect::Absent => proto::TxnCondition { key: k.into_vec(), equals: Vec::new(), absent: true },
            })
            .collect(),
        writes: spec
            .writes
            .into_iter()
            .map(|(k, v)| match v {
                Some(v) => item_to_proto(k, IntentWrite::Put(v)),
                None => item_to_proto(k, IntentWrite::Delete),
            })
            .collect(),
    }
}

/// Checks a client's `mget`: 1 to `--max-txn-keys` keys, each once.
pub fn parse_mget(m: proto::MGetRequest, limits: &Limits) -> Result<ClientRequest> {
    mget_of(m.keys, limits)
}

/// An `mget` of these keys, checked: 1 to `--max-txn-keys` keys, each a key of the cluster, each once.
pub fn mget_of(raw: Vec<Vec<u8>>, limits: &Limits) -> Result<ClientRequest> {
    if raw.is_empty() || raw.len() > limits.max_txn_keys {
        return Err(bad(format!("an mget of {} keys; 1 to {} (--max-txn-keys)", raw.len(), limits.max_txn_keys)));
    }
    let mut seen = HashSet::new();
    let mut keys = Vec::with_capacity(raw.len());
    for k in raw {
        let key = limits.key(k)?;
        if !seen.insert(key.clone()) {
            return Err(bad(format!("an mget names key {key} twice")));
        }
        keys.push(key);
    }
    Ok(ClientRequest::MGet { keys })
}

/// The wire form of keys with their values.
pub fn key_values_to_proto(kvs: Vec<(Key, Option<Box<[u8]>>)>) -> Vec<proto::KeyValue> {
    kvs.into_iter()
        .map(|(k, v)| proto::KeyValue { key: k.into_vec(), found: v.is_some(), value: v.map(|v| v.into_vec()).unwrap_or_default() })
        .collect()
}

/// The log record of an intent taken.
pub fn intent_log(key: &Key, intent: &Intent) -> proto::LogRecord {
    let item = item_to_proto(key.clone(), intent.write.clone());
    let kind =
        proto::TxnIntentLog { txn: Some(txn_to_proto(intent.txn)), anchor: intent.anchor.to_vec(), item: Some(item), since: intent.since };
    proto::LogRecord { kind: Some(proto::log_record::Kind::TxnIntent(kind)) }
}

/// The log record of an intent ended.
pub fn ended_log(key: &Key, txn: TxnId) -> proto::LogRecord {
    let kind = proto::TxnEndedLog { txn: Some(txn_to_proto(txn)), key: key.to_vec() };
    proto::LogRecord { kind: Some(proto::log_record::Kind::TxnEnded(kind)) }
}

/// The log record of a record acceptor's state.
pub fn record_log(r: &RecordState) -> proto::LogRecord {
    let kind = proto::TxnRecordLog {
        txn: Some(txn_to_proto(r.txn)),
        promised: Some(ballot_to_proto(r.promised)),
        accepted_ballot: r.accepted.map(|(b, _)| ballot_to_proto(b)),
        accepted: r.accepted.map(|(_, d)| decision_to_proto(d)),
        since: r.since,
        forgotten: false,
    };
    proto::LogRecord { kind: Some(proto::log_record::Kind::TxnRecord(kind)) }
}

/// The log record of a record forgotten (replay drops it).
pub fn record_forget_log(r: &RecordState) -> proto::LogRecord {
    let mut rec = record_log(r);
    if let Some(proto::log_record::Kind::TxnRecord(k)) = &mut rec.kind {
        k.forgotten = true;
    }
    rec
}

fn logged(key: Vec<u8>, what: &str) -> Result<Key> {
    if key.is_empty() {
        return Err(damaged(what));
    }
    Ok(Key::trusted(key))
}

fn damaged(what: &str) -> Error {
    Error::Storage(format!("a damaged {what} record in the log"))
}

/// An intent back from the log.
pub fn intent_from_log(r: proto::TxnIntentLog) -> Result<(Key, Intent)> {
    let txn = txn_of(r.txn, "").map_err(|_| damaged("transaction intent"))?;
    let item = r.item.ok_or_else(|| damaged("transaction intent"))?;
    let key = logged(item.key, "transaction intent")?;
    let anchor = logged(r.anchor, "transaction intent")?;
    let write = match item.write {
        0 => IntentWrite::Compare,
        1 => IntentWrite::Put(item.value.into_boxed_slice()),
        2 => IntentWrite::Delete,
        _ => return Err(damaged("transaction intent")),
    };
    Ok((key, Intent { txn, anchor, write, since: r.since }))
}

/// An ended intent back from the log.
pub fn ended_from_log(r: proto::TxnEndedLog) -> Result<(Key, TxnId)> {
    let txn = txn_of(r.txn, "").map_err(|_| damaged("transaction end"))?;
    Ok((logged(r.key, "transaction end")?, txn))
}

/// A record acceptor's state back from the log, and whether it was forgotten.
pub fn record_from_log(r: proto::TxnRecordLog) -> Result<(RecordState, bool)> {
    let forgotten = r.forgotten;
    Ok((record_state_from_log(r)?, forgotten))
}

fn record_state_from_log(r: proto::TxnRecordLog) -> Result<RecordState> {
    let txn = txn_of(r.txn, "").map_err(|_| damaged("transaction record"))?;
    let promised = Ballot(ts_of(r.promised.ok_or_else(|| damaged("transaction record"))?));
    let accepted = match (r.accepted_ballot, r.accepted) {
        (Some(b), Some(d)) => Some((Ballot(ts_of(b)), decision_of(Some(d), "").map_err(|_| damaged("transaction record"))?)),
        (None, None) => None,
        _ => return Err(damaged("transaction record")),
    };
    Ok(RecordState { txn, promised, accepted, since: r.since })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn item(k: usize) -> proto::TxnItem {
        proto::TxnItem { key: k.to_string().into_bytes(), write: 1, value: b"v".to_vec() }
    }

    /// A client's transaction and `mget` are held to `--max-txn-keys` and
    /// `--max-txn-bytes`, and the refusal names the flag; a peer's prepare
    /// may carry up to the hard limit.
    #[test]
    fn transactions_are_held_to_the_limits_of_the_flags() {
        let limits = Limits { max_txn_keys: 3, max_txn_bytes: 10, ..Limits::byte_ordered(100) };
        let txn = |n: usize, v: usize| proto::TxnRequest {
            conditions: Vec::new(),
            writes: (0..n).map(|k| proto::TxnItem { value: vec![b'v'; v], ..item(k) }).collect(),
        };
        assert!(parse_client_txn(txn(3, 3), &limits).is_ok());
        let e = parse_client_txn(txn(4, 1), &limits).unwrap_err().to_string();
        assert!(e.contains("4 keys") && e.contains("--max-txn-keys"), "{e}");
        let e = parse_client_txn(txn(2, 6), &limits).unwrap_err().to_string();
        assert!(e.contains("12 bytes") && e.contains("--max-txn-bytes"), "{e}");
        let mget = |n: usize| proto::MGetRequest { keys: (0..n).map(|k| k.to_string().into_bytes()).collect() };
        assert!(parse_mget(mget(3), &limits).is_ok());
        assert!(parse_mget(mget(4), &limits).unwrap_err().to_string().contains("--max-txn-keys"));
        let prepare = |n: usize| proto::TxnPrepare {
            txn: Some(proto::Ballot { micros: 1, node: 1 }),
            anchor: b"0".to_vec(),
            items: (0..n).map(item).collect(),
            epoch: 0,
        };
        let wide = Limits { partitioner: crate::cluster::key::Partitioner::Murmur3, ..limits };
        assert!(parse_prepare(prepare(MAX_TXN_KEYS), &wide).is_ok());
        assert!(parse_prepare(prepare(MAX_TXN_KEYS + 1), &wide).is_err());
    }
}
