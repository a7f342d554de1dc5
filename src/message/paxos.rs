//! The wire and disk forms of Paxos messages ([`crate::paxos`]): ballots,
//! proposals, the proposer's requests and the acceptor's answers, and the
//! acceptor's persisted records.
//!
//! A request from the wire is checked like any peer request: the key through
//! the cluster's partitioner and key limit, a proposal's value against the
//! value limit (unless it is a delete), a ballot present and not 0, and a
//! proposal's origin present, not 0 and not above its ballot. An answer from
//! a peer is checked for its shape (every ballot present); a malformed one is
//! a protocol error naming the peer. Records read back from the log or a
//! snapshot were checked when they were served; a damaged one is refused
//! with [`Error::Storage`] naming what is missing.

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::Limits;
use crate::paxos::acceptor::{KeyState, PersistRecord};
use crate::paxos::{Ballot, Proposal, Request, Response};
use crate::proto;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// The wire form of a ballot.
pub fn ballot_to_proto(b: Ballot) -> proto::Ballot {
    proto::Ballot { micros: b.0.micros, node: b.0.node }
}

/// A ballot as sent, unchecked.
fn ballot_of(b: proto::Ballot) -> Ballot {
    Ballot(Timestamp { micros: b.micros, node: b.node })
}

/// The wire form of a proposal: its value as a [`Version`] stamped with the
/// ballot, and its origin.
pub fn proposal_to_proto(p: Proposal) -> proto::PaxosProposal {
    let version = Version { ts: p.ballot.0, value: p.value };
    proto::PaxosProposal { version: Some(version.into_proto()), origin: Some(ballot_to_proto(p.origin)) }
}

/// Checks a ballot from the wire: present, and not 0 ("none").
fn checked_ballot(b: Option<proto::Ballot>, what: &str) -> std::result::Result<Ballot, String> {
    let b = b.ok_or_else(|| format!("{what} without a ballot"))?;
    if b.micros == 0 {
        return Err(format!("{what} with ballot 0 (ballots are clock times, never 0)"));
    }
    Ok(ballot_of(b))
}

/// Checks a proposal's shape: a version (its stamp the ballot, not 0) and an
/// origin (not 0, not above the ballot). Sizes are not checked here.
fn checked_proposal(p: Option<proto::PaxosProposal>, what: &str) -> std::result::Result<Proposal, String> {
    let p = p.ok_or_else(|| format!("{what} without a proposal"))?;
    let v = p.version.ok_or_else(|| format!("{what} whose proposal has no version (ballot and value)"))?;
    let ballot = checked_ballot(Some(proto::Ballot { micros: v.micros, node: v.node }), &format!("{what}'s proposal"))?;
    let origin = checked_ballot(p.origin, &format!("{what}'s proposal origin"))?;
    if origin > ballot {
        return Err(format!("{what}'s proposal has origin {origin} above its ballot {ballot}"));
    }
    Ok(Proposal { ballot, origin, value: Version::from_proto(v).value })
}

/// Parses and checks a Paxos proposal from the wire against `limits`.
fn request_proposal(p: Option<proto::PaxosProposal>, limits: &Limits, what: &str) -> Result<Proposal> {
    let p = checked_proposal(p, what).map_err(Error::InvalidRequest)?;
    if let Some(v) = &p.value {
        limits.value(v)?;
    }
    Ok(p)
}

/// Acceptor states from a peer (a movement's copy), each key, ballot,
/// proposal and value checked against `limits`; at most [`MAX_BATCH`](crate::message::MAX_BATCH).
pub fn parse_states(states: Vec<proto::PaxosKeyState>, limits: &Limits, what: &str) -> Result<Vec<(Key, KeyState)>> {
    if states.len() > crate::message::MAX_BATCH {
        return Err(Error::InvalidRequest(format!(
            "{what} of {} acceptor states exceeds the limit of {}",
            states.len(),
            crate::message::MAX_BATCH
        )));
    }
    states
        .into_iter()
        .map(|m| {
            let key = limits.key(m.key)?;
            let accepted = m.accepted.map(|a| request_proposal(Some(a), limits, what)).transpose()?;
            let promised = m.promised.map_or(Ballot::ZERO, ballot_of);
            let committed = m.committed.map_or(Ballot::ZERO, ballot_of);
            Ok((key, KeyState { promised, accepted, committed }))
        })
        .collect()
}

/// Parses and checks a Paxos prepare.
pub fn parse_prepare(m: proto::PaxosPrepare, limits: &Limits) -> Result<Request> {
    let key = limits.key(m.key)?;
    let ballot = checked_ballot(m.ballot, "a paxos prepare").map_err(Error::InvalidRequest)?;
    Ok(Request::Prepare { key, ballot })
}

/// Parses and checks a Paxos propose.
pub fn parse_propose(m: proto::PaxosPropose, limits: &Limits) -> Result<Request> {
    let key = limits.key(m.key)?;
    Ok(Request::Propose { key, proposal: request_proposal(m.proposal, limits, "a paxos propose")? })
}

/// Parses and checks a Paxos commit.
pub fn parse_commit(m: proto::PaxosCommit, limits: &Limits) -> Result<Request> {
    let key = limits.key(m.key)?;
    Ok(Request::Commit { key, proposal: request_proposal(m.proposal, limits, "a paxos commit")? })
}

/// The wire form of a request.
pub fn request_to_proto(r: Request, epoch: u64) -> proto::request::Body {
    wire_request(r, false, epoch)
}

/// The wire form of a request about the cluster metadata register.
pub fn meta_request_to_proto(r: Request) -> proto::request::Body {
    wire_request(r, true, 0)
}

fn wire_request(r: Request, cluster: bool, epoch: u64) -> proto::request::Body {
    use proto::request::Body as B;
    match r {
        Request::Prepare { key, ballot } => {
            B::PaxosPrepare(proto::PaxosPrepare { key: key.to_vec(), ballot: Some(ballot_to_proto(ballot)), cluster, epoch })
        }
        Request::Propose { key, proposal } => {
            B::PaxosPropose(proto::PaxosPropose { key: key.to_vec(), proposal: Some(proposal_to_proto(proposal)), cluster, epoch })
        }
        Request::Commit { key, proposal } => {
            B::PaxosCommit(proto::PaxosCommit { key: key.to_vec(), proposal: Some(proposal_to_proto(proposal)), cluster, epoch })
        }
    }
}

/// The key the cluster metadata register goes by in Paxos messages and
/// acceptors (never a store key: the register is not in the store).
pub fn meta_key() -> Key {
    Key::trusted(&b"\0cluster-metadata"[..])
}

/// The largest metadata record a replica accepts in a proposal (a few KiB for 32 members).
pub const MAX_METADATA_BYTES: usize = 256 << 10;

/// Parses and checks a Paxos request about the cluster metadata register:
/// its key is [`meta_key`] whatever was sent, a proposal's value at most
/// [`MAX_METADATA_BYTES`] and never a delete.
pub fn parse_meta(body: proto::request::Body) -> Result<Request> {
    use proto::request::Body as B;
    let value = |p: Proposal, what: &str| -> Result<Proposal> {
        match &p.value {
            None => Err(Error::InvalidRequest(format!("{what} of the cluster metadata deletes it"))),
            Some(v) if v.len() > MAX_METADATA_BYTES => Err(Error::InvalidRequest(format!(
                "{what} of {} bytes of cluster metadata exceeds the limit of {MAX_METADATA_BYTES} bytes",
                v.len()
            ))),
            Some(_) => Ok(p),
        }
    };
    Ok(match body {
        B::PaxosPrepare(m) => {
            Request::Prepare { key: meta_key(), ballot: checked_ballot(m.ballot, "a metadata prepare").map_err(Error::InvalidRequest)? }
        }
        B::PaxosPropose(m) => Request::Propose {
            key: meta_key(),
            proposal: value(checked_proposal(m.proposal, "a metadata propose").map_err(Error::InvalidRequest)?, "a proposal")?,
        },
        B::PaxosCommit(m) => Request::Commit {
            key: meta_key(),
            proposal: value(checked_proposal(m.proposal, "a metadata commit").map_err(Error::InvalidRequest)?, "a commit")?,
        },
        _ => return Err(Error::Internal("not a paxos request".into())),
    })
}

/// The wire form of an answer.
pub fn response_to_proto(r: Response) -> proto::response::Body {
    use proto::response::Body as B;
    match r {
        Response::Promise { key, ballot, accepted, committed } => B::PaxosPromise(proto::PaxosPromise {
            key: key.to_vec(),
            ballot: Some(ballot_to_proto(ballot)),
            accepted: accepted.map(proposal_to_proto),
            committed: committed.map(Version::into_proto),
        }),
        Response::Rejected { key, ballot, promised } => B::PaxosRejected(proto::PaxosRejected {
            key: key.to_vec(),
            ballot: Some(ballot_to_proto(ballot)),
            promised: Some(ballot_to_proto(promised)),
        }),
        Response::Accepted { key, ballot } => {
            B::PaxosAccepted(proto::PaxosAccepted { key: key.to_vec(), ballot: Some(ballot_to_proto(ballot)) })
        }
        Response::Committed { key, ballot } => {
            B::PaxosCommitted(proto::PaxosCommitted { key: key.to_vec(), ballot: Some(ballot_to_proto(ballot)) })
        }
    }
}

/// An answer from the wire, checked for its shape. A malformed one, or one
/// that is not a Paxos answer, is a protocol error naming `from`.
pub fn response_from_proto(body: proto::response::Body, from: &str) -> Result<Response> {
    use proto::response::Body as B;
    let bad = |why: String| Error::Protocol(format!("{from} sent a malformed paxos answer: {why}"));
    let key = |k: Vec<u8>, what: &str| if k.is_empty() { Err(format!("{what} without a key")) } else { Ok(Key::trusted(k)) };
    let parsed = match body {
        B::PaxosPromise(p) => (|| {
            Ok(Response::Promise {
                key: key(p.key, "a promise")?,
                ballot: checked_ballot(p.ballot, "a promise")?,
                accepted: p.accepted.map(|a| checked_proposal(Some(a), "a promise's accepted")).transpose()?,
                committed: p.committed.map(Version::from_proto),
            })
        })(),
        B::PaxosRejected(r) => (|| {
            // A floor of 0 is possible (a refused ballot 0 would be), so it need not be set.
            let promised = r.promised.map_or(Ballot::ZERO, ballot_of);
            Ok(Response::Rejected { key: key(r.key, "a rejection")?, ballot: checked_ballot(r.ballot, "a rejection")?, promised })
        })(),
        B::PaxosAccepted(a) => {
            (|| Ok(Response::Accepted { key: key(a.key, "an accept")?, ballot: checked_ballot(a.ballot, "an accept")? }))()
        }
        B::PaxosCommitted(c) => {
            (|| Ok(Response::Committed { key: key(c.key, "a commit ack")?, ballot: checked_ballot(c.ballot, "a commit ack")? }))()
        }
        other => Err(format!("not a paxos answer: {other:?}")),
    };
    parsed.map_err(bad)
}

/// The log record of an acceptor's change. A commit's record is the commit
/// itself: it carries the cell the commit writes.
pub fn record_to_proto(r: PersistRecord) -> proto::LogRecord {
    use proto::log_record::Kind;
    let kind = match r {
        PersistRecord::Promise { key, ballot } => {
            Kind::PaxosPromised(proto::PaxosPromised { key: key.to_vec(), ballot: Some(ballot_to_proto(ballot)) })
        }
        PersistRecord::Accept { key, proposal } => {
            Kind::PaxosAccepted(proto::PaxosAcceptedRecord { key: key.to_vec(), proposal: Some(proposal_to_proto(proposal)) })
        }
        PersistRecord::Commit { key, proposal } => Kind::PaxosCommit(proto::PaxosCommit {
            key: key.to_vec(),
            proposal: Some(proposal_to_proto(proposal)),
            cluster: false,
            epoch: 0,
        }),
        PersistRecord::Withdraw { key, ballot } => {
            Kind::PaxosWithdrawn(proto::PaxosWithdrawn { key: key.to_vec(), ballot: Some(ballot_to_proto(ballot)) })
        }
    };
    proto::LogRecord { kind: Some(kind) }
}

fn damaged(why: String) -> Error {
    Error::Storage(format!("a damaged paxos record: {why}"))
}

fn stored_key(k: Vec<u8>, what: &str) -> Result<Key> {
    if k.is_empty() {
        return Err(damaged(format!("{what} without a key")));
    }
    Ok(Key::trusted(k))
}

/// A promise record read back from the log.
pub fn promised_from_proto(m: proto::PaxosPromised) -> Result<PersistRecord> {
    Ok(PersistRecord::Promise { key: stored_key(m.key, "a promise")?, ballot: checked_ballot(m.ballot, "a promise").map_err(damaged)? })
}

/// An accept record read back from the log.
pub fn accepted_from_proto(m: proto::PaxosAcceptedRecord) -> Result<PersistRecord> {
    let key = stored_key(m.key, "an accept")?;
    Ok(PersistRecord::Accept { key, proposal: checked_proposal(m.proposal, "an accept").map_err(damaged)? })
}

/// A withdrawal record read back from the log.
pub fn withdrawn_from_proto(m: proto::PaxosWithdrawn) -> Result<PersistRecord> {
    let key = stored_key(m.key, "a withdrawal")?;
    Ok(PersistRecord::Withdraw { key, ballot: checked_ballot(m.ballot, "a withdrawal").map_err(damaged)? })
}

/// A commit record read back from the log.
pub fn commit_from_proto(m: proto::PaxosCommit) -> Result<PersistRecord> {
    let key = stored_key(m.key, "a commit")?;
    Ok(PersistRecord::Commit { key, proposal: checked_proposal(m.proposal, "a commit").map_err(damaged)? })
}

/// A key's acceptor state as a snapshot holds it.
pub fn state_to_proto(key: &Key, s: &KeyState) -> proto::PaxosKeyState {
    proto::PaxosKeyState {
        key: key.to_vec(),
        promised: Some(ballot_to_proto(s.promised)),
        accepted: s.accepted.clone().map(proposal_to_proto),
        committed: Some(ballot_to_proto(s.committed)),
    }
}

/// A key's acceptor state read back from a snapshot.
pub fn state_from_proto(m: proto::PaxosKeyState) -> Result<(Key, KeyState)> {
    let key = stored_key(m.key, "a key state")?;
    let accepted = m.accepted.map(|a| checked_proposal(Some(a), "a key state's accepted")).transpose().map_err(damaged)?;
    let promised = m.promised.map_or(Ballot::ZERO, ballot_of);
    let committed = m.committed.map_or(Ballot::ZERO, ballot_of);
    Ok((key, KeyState { promised, accepted, committed }))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::key::Partitioner;
    use crate::proto::request::Body as B;

    const LIMITS: Limits =
        Limits { partitioner: Partitioner::ByteOrdered, max_key_bytes: 8, max_value_bytes: 10, max_txn_keys: 64, max_txn_bytes: 1024 };

    fn b(micros: u64, node: u32) -> Ballot {
        Ballot(Timestamp { micros, node })
    }

    fn proposal(ballot: Ballot, value: Option<&str>) -> Proposal {
        Proposal { ballot, origin: ballot, value: value.map(|v| v.as_bytes().into()) }
    }

    fn refused(r: Result<Request>, needle: &str) {
        match r {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn requests_round_trip() {
        let key = Key::byte(7);
        let completion = Proposal { ballot: b(9, 2), origin: b(5, 1), value: Some((*b"v").into()) };
        for r in [
            Request::Prepare { key: key.clone(), ballot: b(3, 1) },
            Request::Propose { key: key.clone(), proposal: completion.clone() },
            Request::Propose { key: key.clone(), proposal: proposal(b(4, 1), None) },
            Request::Commit { key: key.clone(), proposal: completion },
            Request::Commit { key: key.clone(), proposal: proposal(b(4, 1), Some("")) },
        ] {
            let parsed = match request_to_proto(r.clone(), 0) {
                B::PaxosPrepare(m) => parse_prepare(m, &LIMITS),
                B::PaxosPropose(m) => parse_propose(m, &LIMITS),
                B::PaxosCommit(m) => parse_commit(m, &LIMITS),
                other => panic!("not a paxos body: {other:?}"),
            };
            assert_eq!(parsed.unwrap(), r);
        }
    }

    #[test]
    fn responses_round_trip() {
        let key = Key::byte(7);
        let cell = Version::value(Timestamp { micros: 2, node: 1 }, "old");
        for r in [
            Response::Promise { key: key.clone(), ballot: b(3, 1), accepted: None, committed: None },
            Response::Promise { key: key.clone(), ballot: b(3, 1), accepted: Some(proposal(b(2, 9), None)), committed: Some(cell.clone()) },
            Response::Rejected { key: key.clone(), ballot: b(3, 1), promised: b(8, 0) },
            Response::Rejected { key: key.clone(), ballot: b(3, 1), promised: Ballot::ZERO },
            Response::Accepted { key: key.clone(), ballot: b(3, 1) },
            Response::Committed { key: key.clone(), ballot: b(3, 1) },
        ] {
            assert_eq!(response_from_proto(response_to_proto(r.clone()), "r1").unwrap(), r);
        }
        assert!(response_from_proto(proto::response::Body::Pong(proto::Pong::default()), "r1").is_err());
        let no_ballot = proto::response::Body::PaxosAccepted(proto::PaxosAccepted { key: b"7".to_vec(), ballot: None });
        let err = response_from_proto(no_ballot, "r1").unwrap_err().to_string();
        assert!(err.contains("r1 sent a malformed paxos answer: an accept without a ballot"), "{err}");
    }

    #[test]
    fn every_field_of_a_request_is_checked() {
        let ballot = Some(proto::Ballot { micros: 5, node: 1 });
        let prepare = |key: &str, ballot| parse_prepare(proto::PaxosPrepare { key: key.into(), ballot, cluster: false, epoch: 0 }, &LIMITS);
        assert!(prepare("255", ballot).is_ok());
        refused(prepare("256", ballot), "key 256 is out of range");
        refused(prepare("x", ballot), "partitioner");
        refused(prepare("1", None), "a paxos prepare without a ballot");
        refused(prepare("1", Some(proto::Ballot { micros: 0, node: 3 })), "ballot 0");

        let version = |micros, value: &str, tombstone| Some(proto::Version { micros, node: 1, tombstone, value: value.into() });
        let with = |version, origin| Some(proto::PaxosProposal { version, origin });
        let propose = |p| parse_propose(proto::PaxosPropose { key: b"3".to_vec(), proposal: p, cluster: false, epoch: 0 }, &LIMITS);
        let commit = |p| parse_commit(proto::PaxosCommit { key: b"3".to_vec(), proposal: p, cluster: false, epoch: 0 }, &LIMITS);
        assert!(propose(with(version(5, "0123456789", false), ballot)).is_ok());
        refused(propose(with(version(5, "0123456789x", false), ballot)), "value of 11 bytes exceeds the limit of 10 bytes");
        assert!(propose(with(version(5, "0123456789x", true), ballot)).is_ok(), "a delete's value is ignored");
        refused(propose(None), "a paxos propose without a proposal");
        refused(propose(with(None, ballot)), "has no version");
        refused(propose(with(version(0, "v", false), ballot)), "proposal with ballot 0");
        refused(propose(with(version(5, "v", false), None)), "proposal origin without a ballot");
        refused(propose(with(version(4, "v", false), ballot)), "origin 5.00000001 above its ballot 4.00000001");
        refused(commit(with(version(5, &"v".repeat(11), false), ballot)), "exceeds the limit");
        refused(commit(with(version(5, "v", false), Some(proto::Ballot { micros: 0, node: 0 }))), "origin with ballot 0");
        refused(
            parse_commit(
                proto::PaxosCommit { key: b"300".to_vec(), proposal: with(version(5, "v", false), ballot), cluster: false, epoch: 0 },
                &LIMITS,
            ),
            "out of range",
        );
    }

    #[test]
    fn records_and_states_round_trip() {
        use proto::log_record::Kind;
        let key = Key::trusted(*b"k");
        for r in [
            PersistRecord::Promise { key: key.clone(), ballot: b(3, 1) },
            PersistRecord::Accept { key: key.clone(), proposal: Proposal { ballot: b(4, 1), origin: b(2, 2), value: None } },
            PersistRecord::Commit { key: key.clone(), proposal: proposal(b(4, 1), Some("v")) },
            PersistRecord::Withdraw { key: key.clone(), ballot: b(4, 1) },
        ] {
            let back = match record_to_proto(r.clone()).kind.unwrap() {
                Kind::PaxosPromised(m) => promised_from_proto(m),
                Kind::PaxosAccepted(m) => accepted_from_proto(m),
                Kind::PaxosCommit(m) => commit_from_proto(m),
                Kind::PaxosWithdrawn(m) => withdrawn_from_proto(m),
                other => panic!("not a paxos record: {other:?}"),
            };
            assert_eq!(back.unwrap(), r);
        }
        let state = KeyState { promised: b(9, 1), accepted: Some(proposal(b(8, 1), Some("x"))), committed: b(7, 1) };
        assert_eq!(state_from_proto(state_to_proto(&key, &state)).unwrap(), (key, state));
        let err = promised_from_proto(proto::PaxosPromised { key: Vec::new(), ballot: None }).unwrap_err().to_string();
        assert!(err.contains("a promise without a key"), "{err}");
    }
}
