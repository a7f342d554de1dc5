//! Per-key Paxos for SERIAL reads, writes and compare-and-set (issue 13):
//! the I/O-free core.
//!
//! # Who takes part
//!
//! Each key runs its own Paxos among its `RF` replicas (3 or 5); a quorum is
//! `RF / 2 + 1`. Any node may propose. Every replica is an **acceptor**
//! ([`acceptor::Acceptor`]) keeping, per key, the highest ballot it promised,
//! the proposal it accepted and the ballot of the newest commit it applied. A
//! **proposer** ([`proposer::Proposer`]) runs one client operation as a state
//! machine. Neither does I/O: as in the coordinator's machines (raft-rs's
//! `Ready`), they take typed messages and return what to send, persist and
//! apply; the caller does it.
//!
//! Ballots ([`ballot::Ballot`]) are HLC timestamps: microseconds plus the
//! proposer's node id, unique and totally ordered. A proposer learns the
//! highest ballot it saw ([`proposer::Proposer::highest_seen`]); the caller
//! observes it in its HLC so its next ballot is higher.
//!
//! # The state is a register, not a log
//!
//! Paxos here decides a *sequence* of values for one key, one at a time, in
//! one acceptor state per key (as Cassandra does). A value chosen with ballot
//! `b` is committed by applying `Version { ts: b, value }` to the store, so it
//! becomes an ordinary cell and ONE/QUORUM reads see it. A new value is only
//! proposed by a proposer whose quorum of promises showed **no accepted
//! proposal newer than the newest commit** (nothing in flight); if something
//! is in flight, the proposer first *completes* it: re-proposes that value
//! with its own ballot (keeping the value's `origin`, the ballot it was first
//! proposed with), then commits it.
//!
//! # Round trips
//!
//! * **Write / CAS, uncontended: 2 round trips.** Prepare is combined with the
//!   read: each promise carries the acceptor's committed cell for the key (the
//!   caller passes it in from the store) and any accepted proposal. With a
//!   quorum of promises the proposer knows the current value, evaluates the
//!   condition, and proposes. A quorum of accepts makes the value chosen; the
//!   proposer answers `Applied` and *then* sends the commit to every replica,
//!   fire-and-forget ([`proposer::Action::Answer`] comes before the commit
//!   sends).
//! * **SERIAL read: 1 round trip** when the quorum of promises shows nothing
//!   in flight and every promiser reports the same newest commit. If the
//!   promisers' commits differ, the freshest is the answer, and the proposer
//!   first sends it as a commit to the lagging replicas and answers once a
//!   quorum holds it (a second round trip, repair). If a proposal is in
//!   flight, the read completes it (propose with the read's ballot, then
//!   commit) and returns its value. A failed CAS (`NotApplied`) is a read and
//!   follows the same rules.
//!
//! # Durability
//!
//! An acceptor never writes anything itself: each handler returns the
//! [`acceptor::PersistRecord`] to make durable together with the reply. The
//! caller appends the records in the order they were returned (group commit)
//! and sends a reply only once its record *and every record returned before
//! it* are durable — a repeated promise for the same ballot returns no record,
//! but must not overtake the first one. A crash that loses the unpersisted
//! tail therefore loses only promises and accepts nobody was told about.
//! [`acceptor::Acceptor::restore`] rebuilds the acceptor from the persisted
//! records, so a restarted replica never breaks a promise. A commit's record
//! and its cell write can be one log record.
//!
//! # Why it is safe
//!
//! 1. *One value per ballot*: a proposer proposes at most one value per
//!    ballot, and ballots are unique.
//! 2. *Classic Paxos*: if a proposal at `b` was chosen (accepted by a quorum),
//!    every proposal at a higher ballot `c` carries its effect. `c`'s promise
//!    quorum meets `b`'s accept quorum in some replica `R`. `R` accepted `b`
//!    before promising `c` (after promising `c` it refuses `b < c`), so `R`'s
//!    promise reports `b`, or a commit `>= b` (a commit `>= b` replaces the
//!    accepted proposal), or a later accepted proposal which by induction
//!    carries `b`'s effect. The proposer of `c` therefore either completes
//!    the newest in-flight proposal, or builds on a commit that already
//!    includes `b`.
//! 3. *Commits are in ballot order*: a value is chosen only above every
//!    earlier chosen ballot, and acceptors refuse to promise at or below the
//!    cell they hold, so the store's last-write-wins order is the commit order.
//! 4. *The 1-round-trip read is linearizable*: let `C` be the freshest commit
//!    in the read's promise quorum `Q`, with nothing newer accepted. Any value
//!    chosen at `b` below the read's ballot `r` was accepted by a replica of `Q`
//!    before it promised `r`, so that replica reports `b`, or a commit `>= b`:
//!    since nothing in `Q` is newer than `C`, `b <= C`, so `C` is the newest
//!    value chosen before the read's promises — and any write that finished
//!    before the read began holds promises of a quorum that meets `Q`, so it
//!    is `<= C` (or the read's prepare is refused and retried). What must
//!    hold of commits: an acceptor keeps an accepted proposal until a commit
//!    of that ballot or a newer one reaches *it* (its cell then holds the value
//!    or a newer one) — or until it is withdrawn, which only happens to a
//!    proposal that is not chosen (6.) — and a commit is only sent for a
//!    chosen value. The
//!    repair of lagging promisers (above) is not needed for SERIAL
//!    linearizability; it makes the value a SERIAL read returned visible to a
//!    later QUORUM read. (A SERIAL write's commit is in the background, so a
//!    QUORUM read right after `Applied` may not see it yet.)
//! 5. *Outcomes*: `Applied` only after a quorum accepted the operation's own
//!    proposal. After the own proposal was sent, a loss or a timeout is
//!    **Unknown** (a later proposer may still complete it); before any own
//!    proposal, a timeout is a plain `Timeout` and nothing was applied. A
//!    proposal every replica it went to refused is held by nobody and can
//!    never be chosen: the coordinator starts the operation over.
//! 6. *Withdrawal*: if every replica but the coordinator's own refused its
//!    proposal at `b` (they promised higher, so none will ever accept `b`),
//!    and its own acceptor has promised nothing since accepting `b` (so no
//!    promise reply has shown `b` to anyone), that acceptor drops `b`
//!    ([`acceptor::Acceptor::withdraw`], logged and durable before anything
//!    else is proposed). Then no replica holds `b` and no proposer knows it:
//!    `b` is not chosen and never will be, so the operation starts over
//!    instead of ending unknown. 2. is unharmed: `b` was never chosen, so no
//!    later ballot has to carry it.
//!
//! A plain ONE/QUORUM write to a key used at SERIAL is a cell nobody chose.
//! One operation at a time that is still ordered: acceptors refuse ballots at
//! or below the cell they hold, so a SERIAL operation after a QUORUM write
//! was acknowledged sees it and supersedes it. A plain write *concurrent* with
//! a SERIAL operation can land between its prepare and its commit and be
//! overwritten (or hide it), so linearizability holds only while plain writes
//! do not overlap SERIAL ones (the README says exactly what is promised).
//!
//! # Contention and thrifty rounds
//!
//! A proposer refused by enough replicas that no quorum can remain (a higher
//! promise exists) backs off: it returns [`proposer::Action::RetryAfter`]
//! with a randomised exponential delay drawn from the seed the caller gave,
//! and the caller [`proposer::Proposer::restart`]s it with a higher ballot.
//! After completing someone else's proposal, a write retries at once. A
//! [thrifty](proposer::Proposer::thrifty) proposer sends each round to a
//! quorum only and [widens](proposer::Proposer::widen) it to the other live
//! replicas when one of them fails to answer, is slow, or refuses a proposal;
//! any quorum does for the argument above. The coordinator also runs its own
//! operations on one key one at a time (`node::serial`), so they never duel.
//!
//! The tests (`tests.rs`) run acceptors and proposers over a seeded simulated
//! network with loss, duplication, reordering, delays and crashes, and check
//! the chosen history against every operation's outcome.

pub mod acceptor;
pub mod ballot;
pub mod proposer;

#[cfg(test)]
mod tests;

use std::fmt;

use crate::cluster::key::{Key, escaped};
use crate::storage::cell::Version;

pub use ballot::Ballot;

/// A proposed value for one key: the value (`None` deletes) and its ballot.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Proposal {
    /// The ballot it is proposed (or was accepted, or is committed) with.
    pub ballot: Ballot,
    /// The ballot the value was first proposed with; a completion keeps it.
    /// Identifies the operation that wrote the value.
    pub origin: Ballot,
    /// The new value; `None` is a delete (a tombstone).
    pub value: Option<Box<[u8]>>,
}

impl Proposal {
    /// The cell a commit of this proposal writes: timestamp = ballot.
    pub fn version(&self) -> Version {
        Version { ts: self.ballot.0, value: self.value.clone() }
    }

    /// Bytes of value held.
    pub fn len(&self) -> usize {
        self.value.as_ref().map_or(0, |v| v.len())
    }

    /// Whether the value is empty or a delete.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A proposer's request to an acceptor.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    /// Phase 1: promise `ballot`, and tell me what you hold for `key`.
    Prepare {
        /// The key.
        key: Key,
        /// The ballot to promise.
        ballot: Ballot,
    },
    /// Phase 2: accept this proposal.
    Propose {
        /// The key.
        key: Key,
        /// The proposal (its ballot is the proposer's).
        proposal: Proposal,
    },
    /// Apply a chosen proposal to the store (also sent as repair).
    Commit {
        /// The key.
        key: Key,
        /// The chosen proposal.
        proposal: Proposal,
    },
}

impl Request {
    /// The key it is about.
    pub fn key(&self) -> &Key {
        match self {
            Request::Prepare { key, .. } | Request::Propose { key, .. } | Request::Commit { key, .. } => key,
        }
    }
}

/// An acceptor's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    /// `ballot` is promised; what the acceptor holds for the key.
    Promise {
        /// The key.
        key: Key,
        /// The promised ballot (the request's).
        ballot: Ballot,
        /// An accepted proposal newer than the acceptor's last commit, if any.
        accepted: Option<Proposal>,
        /// The acceptor's current cell for the key (its newest commit), if any.
        committed: Option<Version>,
    },
    /// A prepare or proposal at `ballot` was refused: `promised` is higher.
    Rejected {
        /// The key.
        key: Key,
        /// The refused ballot (the request's).
        ballot: Ballot,
        /// The acceptor's floor: every ballot at or below it is refused.
        promised: Ballot,
    },
    /// The proposal at `ballot` was accepted.
    Accepted {
        /// The key.
        key: Key,
        /// The accepted ballot.
        ballot: Ballot,
    },
    /// The acceptor has applied a commit at `ballot` or newer.
    Committed {
        /// The key.
        key: Key,
        /// The commit's ballot.
        ballot: Ballot,
    },
}

impl Response {
    /// The key it is about.
    pub fn key(&self) -> &Key {
        match self {
            Response::Promise { key, .. }
            | Response::Rejected { key, .. }
            | Response::Accepted { key, .. }
            | Response::Committed { key, .. } => key,
        }
    }

    /// The ballot of the request it answers.
    pub fn ballot(&self) -> Ballot {
        match self {
            Response::Promise { ballot, .. }
            | Response::Rejected { ballot, .. }
            | Response::Accepted { ballot, .. }
            | Response::Committed { ballot, .. } => *ballot,
        }
    }
}

/// What a compare-and-set expects of the current value.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Expect {
    /// The key holds exactly this value.
    Equals(Box<[u8]>),
    /// The key has no live value (never written, or deleted).
    Absent,
}

impl Expect {
    /// Whether `current` (the live value, `None` if absent) meets it.
    pub fn holds(&self, current: Option<&[u8]>) -> bool {
        match self {
            Expect::Equals(v) => current == Some(&v[..]),
            Expect::Absent => current.is_none(),
        }
    }
}

/// A SERIAL operation on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    /// Read the current value.
    Read,
    /// Put a value (`Some`) or delete (`None`) unconditionally.
    Write(Option<Box<[u8]>>),
    /// Put `new` (or delete, if `None`) only if the current value meets `expect`:
    /// `if OLD` is `Expect::Equals(OLD)`, `if absent` is `Expect::Absent`,
    /// delete-if-OLD is `Expect::Equals(OLD)` with `new: None`.
    CompareAndSet {
        /// The condition.
        expect: Expect,
        /// The value to write if it holds; `None` deletes.
        new: Option<Box<[u8]>>,
    },
}

impl Op {
    /// A put (`Some`) or delete (`None`) of `value`: unconditional, or only if `condition` holds.
    pub fn of(value: Option<Box<[u8]>>, condition: Option<Expect>) -> Op {
        match condition {
            None => Op::Write(value),
            Some(expect) => Op::CompareAndSet { expect, new: value },
        }
    }

    /// What the operation is, for messages: `read`, `write`, `delete` or `compare-and-set`.
    pub fn name(&self) -> &'static str {
        match self {
            Op::Read => "read",
            Op::Write(Some(_)) => "write",
            Op::Write(None) => "delete",
            Op::CompareAndSet { .. } => "compare-and-set",
        }
    }
}

/// A finished operation's answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    /// A read's value (`None`: no live value).
    Read(Option<Box<[u8]>>),
    /// The write or CAS was chosen (committed in the background).
    Applied,
    /// The CAS condition did not hold; the value it was checked against.
    NotApplied {
        /// The current value (`None`: no live value).
        current: Option<Box<[u8]>>,
    },
}

/// Why an operation failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PaxosError {
    /// Too few replicas alive for a quorum; nothing was sent.
    Unavailable(String),
    /// Timed out before proposing the operation's own value: not applied.
    Timeout(String),
    /// Timed out or lost after proposing: may or may not have been applied.
    Unknown(String),
}

impl PaxosError {
    /// The crate-wide error (Unknown maps to `Timeout`, whose meaning is
    /// "may or may not have been applied"; its message says so).
    pub fn into_error(self) -> crate::Error {
        match self {
            PaxosError::Unavailable(m) => crate::Error::Unavailable(m),
            PaxosError::Timeout(m) => crate::Error::Timeout(m),
            PaxosError::Unknown(m) => crate::Error::Timeout(format!("Unknown: {m}")),
        }
    }
}

impl fmt::Display for PaxosError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PaxosError::Unavailable(m) => write!(f, "Unavailable: {m}"),
            PaxosError::Timeout(m) => write!(f, "Timeout: {m}"),
            PaxosError::Unknown(m) => write!(f, "Unknown: {m}"),
        }
    }
}

impl std::error::Error for PaxosError {}

/// A value for messages: UTF-8 as text, other bytes escaped, `none` for absent.
fn show(v: Option<&[u8]>) -> String {
    v.map_or_else(|| "none".to_string(), |v| format!("{:?}", escaped(v)))
}
