//! A transaction's record: its outcome, decided once by single-decree Paxos
//! among the replicas of its anchor key (Gray & Lamport's Paxos Commit, with
//! the record's replicas as acceptors; CockroachDB's transaction record).
//!
//! # Why a record
//!
//! Classic two-phase commit blocks when its coordinator dies between the
//! votes and the decision: a participant holding a yes vote may neither
//! commit (another participant may have voted no) nor abort (the coordinator
//! may have committed). Here the decision is a value chosen by Paxos, so it
//! is durable on a quorum before anyone applies it, exactly one value is ever
//! chosen, and **anyone** can learn it, or settle it, without the coordinator:
//!
//! * The coordinator proposes `Committed(ts)` at ballot **zero**, which is
//!   its own (no other proposer ever uses it), so it skips phase 1: one
//!   round trip, an accept to each of the anchor's replicas ([`RecordProposer::fast`]).
//! * A participant whose intent outlived the timeout runs both phases at a
//!   fresh ballot ([`RecordProposer::new`]): it adopts a value some acceptor
//!   accepted (the highest ballot's), or else proposes `Aborted`. If the
//!   coordinator's zero-ballot accept was chosen, every quorum of promises
//!   reports it, so recovery commits too; if recovery's `Aborted` was chosen,
//!   the coordinator's accepts are refused (the acceptors promised a higher
//!   ballot) and the coordinator learns the abort the same way.
//! * A coordinator that decides to abort (a no vote, a failed condition)
//!   writes no record: only it ever proposes `Committed`, so `Aborted` is the
//!   only value that can still be chosen.
//!
//! # The acceptor
//!
//! [`RecordTable`] keeps, per transaction, the highest ballot promised and
//! the accepted decision. Every change returns the [`RecordState`] to make
//! durable before answering (the whole state: replay keeps the last). A
//! record is dropped once its coordinator saw every participant resolve
//! (`Forget`, logged, and kept a grace period for `mget`s that read an
//! intent before the resolution); one without an accepted commit also after
//! [`RECORD_RETENTION_MICROS`]. A committed record nobody forgot is kept: a
//! participant away longer than any retention must still find the commit
//! (a recovery that finds no record aborts).

use std::collections::HashMap;

use crate::cluster::ring::NodeId;
use crate::paxos::Ballot;
use crate::storage::hlc::Timestamp;
use crate::txn::TxnId;

/// How long an acceptor keeps a record nobody told it to forget (its
/// coordinator died before every participant resolved): far longer than
/// any recovery takes (`--txn-timeout` plus a Paxos round).
pub const RECORD_RETENTION_MICROS: u64 = 600_000_000;

/// How long an acceptor keeps a record after it was told to forget it: an
/// `mget` that read an intent before its resolution may still ask (its
/// deadline, `--request-timeout`, is far shorter).
pub const FORGET_GRACE_MICROS: u64 = 30_000_000;

/// A transaction's outcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Committed: every write is stamped with this timestamp.
    Committed(Timestamp),
    /// Aborted: nothing is written.
    Aborted,
}

/// The coordinator's own ballot: it alone proposes at it, so it needs no promises.
pub const ZERO: Ballot = Ballot(Timestamp { micros: 0, node: 0 });

/// A request to one record acceptor.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordRequest {
    /// Phase 1: promise `ballot` and say what you accepted.
    Prepare {
        /// The transaction.
        txn: TxnId,
        /// A ballot above zero.
        ballot: Ballot,
    },
    /// Phase 2: accept `decision` at `ballot`.
    Accept {
        /// The transaction.
        txn: TxnId,
        /// The ballot (zero: the coordinator's own).
        ballot: Ballot,
        /// The value.
        decision: Decision,
    },
    /// Every participant resolved the transaction: drop its record.
    Forget {
        /// The transaction.
        txn: TxnId,
    },
    /// What was accepted, if anything (a reader's question: nothing promised).
    Peek {
        /// The transaction.
        txn: TxnId,
    },
}

impl RecordRequest {
    /// The transaction it is about.
    pub fn txn(&self) -> TxnId {
        match self {
            RecordRequest::Prepare { txn, .. }
            | RecordRequest::Accept { txn, .. }
            | RecordRequest::Forget { txn }
            | RecordRequest::Peek { txn } => *txn,
        }
    }
}

/// A record acceptor's answer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RecordReply {
    /// `ballot` is promised; the decision accepted so far, with its ballot.
    Promised {
        /// The promised ballot.
        ballot: Ballot,
        /// What was accepted before, if anything.
        accepted: Option<(Ballot, Decision)>,
    },
    /// The decision at `ballot` is accepted.
    Accepted {
        /// Its ballot.
        ballot: Ballot,
    },
    /// `ballot` is refused: `promised` is at or above it.
    Refused {
        /// The refused ballot.
        ballot: Ballot,
        /// The acceptor's promise.
        promised: Ballot,
    },
    /// The record is dropped.
    Forgotten,
    /// To a peek: what was accepted, if anything.
    State {
        /// The accepted decision and its ballot.
        accepted: Option<(Ballot, Decision)>,
    },
}

/// One transaction's record at one acceptor: also what is logged.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RecordState {
    /// The transaction.
    pub txn: TxnId,
    /// The highest ballot promised (zero: none).
    pub promised: Ballot,
    /// The accepted decision and its ballot.
    pub accepted: Option<(Ballot, Decision)>,
    /// When this acceptor first heard of it (its clock), for the retention.
    pub since: u64,
}

/// The records one replica keeps as an acceptor.
#[derive(Debug, Clone, Default)]
pub struct RecordTable {
    records: HashMap<TxnId, RecordState>,
    /// Records asked to be forgotten, and when (kept for [`FORGET_GRACE_MICROS`]).
    forgotten: HashMap<TxnId, u64>,
}

impl RecordTable {
    /// No records.
    pub fn new() -> Self {
        Self::default()
    }

    /// Handles `req` at `now` (this replica's clock): the reply, and the
    /// state to make durable first, if it changed.
    pub fn handle(&mut self, req: RecordRequest, now: u64) -> (RecordReply, Option<RecordState>) {
        let txn = req.txn();
        match req {
            RecordRequest::Forget { .. } => {
                if self.records.contains_key(&txn) {
                    self.forgotten.entry(txn).or_insert(now);
                }
                return (RecordReply::Forgotten, None);
            }
            RecordRequest::Peek { .. } => return (RecordReply::State { accepted: self.records.get(&txn).and_then(|r| r.accepted) }, None),
            _ => {}
        }
        let fresh = RecordState { txn, promised: ZERO, accepted: None, since: now };
        let state = self.records.get(&txn).copied().unwrap_or(fresh);
        let (reply, next) = match req {
            RecordRequest::Prepare { ballot, .. } if ballot > state.promised => {
                (RecordReply::Promised { ballot, accepted: state.accepted }, Some(RecordState { promised: ballot, ..state }))
            }
            RecordRequest::Prepare { ballot, .. } if ballot == state.promised && ballot != ZERO => {
                (RecordReply::Promised { ballot, accepted: state.accepted }, None)
            }
            RecordRequest::Accept { ballot, decision, .. } if ballot >= state.promised => {
                let next = RecordState { promised: ballot, accepted: Some((ballot, decision)), ..state };
                (RecordReply::Accepted { ballot }, (next != state).then_some(next))
            }
            RecordRequest::Prepare { ballot, .. } | RecordRequest::Accept { ballot, .. } => {
                (RecordReply::Refused { ballot, promised: state.promised }, None)
            }
            RecordRequest::Forget { .. } | RecordRequest::Peek { .. } => unreachable!("answered above"),
        };
        if let Some(next) = next {
            self.records.insert(txn, next);
        }
        (reply, next)
    }

    /// Applies a logged state (the last one of a transaction wins).
    pub fn replay(&mut self, state: RecordState) {
        self.records.insert(state.txn, state);
    }

    /// Puts `txn`'s record back as it was (a log that refused the change).
    pub fn reset(&mut self, txn: TxnId, before: Option<RecordState>) {
        match before {
            Some(s) => self.records.insert(txn, s),
            None => self.records.remove(&txn),
        };
    }

    /// `txn`'s record here, if any.
    pub fn get(&self, txn: TxnId) -> Option<&RecordState> {
        self.records.get(&txn)
    }

    /// At `now`: drops the records forgotten more than `grace` ago, and
    /// those heard of more than [`RECORD_RETENTION_MICROS`] ago **unless they
    /// hold an accepted commit**: a commit is kept until every participant
    /// resolved it (`Forget`), or a participant that was away longer than the
    /// retention would find no record and abort a committed transaction.
    pub fn expire(&mut self, now: u64, grace: u64) {
        let grace = now.saturating_sub(grace);
        let gone: Vec<TxnId> = self.forgotten.iter().filter(|&(_, &at)| at < grace).map(|(t, _)| *t).collect();
        for t in gone {
            self.forgotten.remove(&t);
            self.records.remove(&t);
        }
        let retention = now.saturating_sub(RECORD_RETENTION_MICROS);
        self.records.retain(|_, r| r.since >= retention || matches!(r.accepted, Some((_, Decision::Committed(_)))));
        let records = &self.records;
        self.forgotten.retain(|t, _| records.contains_key(t));
    }

    /// Drops `txn`'s record at once (a logged forget, replayed).
    pub fn drop_record(&mut self, txn: TxnId) {
        self.records.remove(&txn);
        self.forgotten.remove(&txn);
    }

    /// Every record, in no particular order (for a snapshot).
    pub fn records(&self) -> impl Iterator<Item = &RecordState> {
        self.records.values()
    }

    /// How many records are kept.
    pub fn len(&self) -> usize {
        self.records.len()
    }

    /// Whether none is kept.
    pub fn is_empty(&self) -> bool {
        self.records.is_empty()
    }
}

/// Why a proposer stopped without a decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Stuck {
    /// Too many acceptors refused or failed for a quorum: a higher ballot
    /// (at least the one given) may try again.
    Outvoted(Ballot),
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Promising,
    Accepting,
    Done,
}

/// Settles one transaction's record: a round of promises then accepts, or
/// the coordinator's accepts alone at ballot zero. I/O-free: it returns the
/// requests to send and takes the replies (or failures) as they come.
#[derive(Debug, Clone)]
pub struct RecordProposer {
    txn: TxnId,
    ballot: Ballot,
    acceptors: Vec<NodeId>,
    quorum: usize,
    /// What to propose if no acceptor accepted anything.
    want: Decision,
    phase: Phase,
    /// Acceptors that answered this phase (and how).
    yes: Vec<NodeId>,
    no: Vec<NodeId>,
    /// The highest accepted decision a promise reported.
    adopted: Option<(Ballot, Decision)>,
    highest: Ballot,
    outcome: Option<Result<Decision, Stuck>>,
}

impl RecordProposer {
    /// A proposer that runs both phases at `ballot` (above zero), proposing
    /// `want` unless a promise shows an accepted decision.
    pub fn new(txn: TxnId, ballot: Ballot, acceptors: &[NodeId], quorum: usize, want: Decision) -> Self {
        RecordProposer {
            txn,
            ballot,
            acceptors: acceptors.to_vec(),
            quorum,
            want,
            phase: Phase::Promising,
            yes: Vec::new(),
            no: Vec::new(),
            adopted: None,
            highest: ballot,
            outcome: None,
        }
    }

    /// The coordinator's proposer: `want` at ballot zero, accepts only.
    pub fn fast(txn: TxnId, acceptors: &[NodeId], quorum: usize, want: Decision) -> Self {
        RecordProposer { phase: Phase::Accepting, ..Self::new(txn, ZERO, acceptors, quorum, want) }
    }

    /// The first requests, one an acceptor.
    pub fn start(&self) -> Vec<(NodeId, RecordRequest)> {
        let req = match self.phase {
            Phase::Promising => RecordRequest::Prepare { txn: self.txn, ballot: self.ballot },
            _ => RecordRequest::Accept { txn: self.txn, ballot: self.ballot, decision: self.want },
        };
        self.acceptors.iter().map(|&a| (a, req)).collect()
    }

    /// The decision, or why there is none, once settled.
    pub fn outcome(&self) -> Option<Result<Decision, Stuck>> {
        self.outcome
    }

    /// Which phase the requests returned now belong to (0, then 1 after the
    /// promises): a caller hands [`on_reply`](Self::on_reply) only the
    /// outcomes of the current phase's requests, so that an earlier
    /// request's failure is not taken for a refusal of this one.
    pub fn phase_id(&self) -> u8 {
        match self.phase {
            Phase::Promising => 0,
            Phase::Accepting | Phase::Done => 1,
        }
    }

    /// The highest ballot seen (a refusal's promise), for the next attempt.
    pub fn highest_seen(&self) -> Ballot {
        self.highest
    }

    /// `from`'s reply; `None` for a failure (down, lost, timed out). The next
    /// requests to send, if the phase moved on.
    pub fn on_reply(&mut self, from: NodeId, reply: Option<RecordReply>) -> Vec<(NodeId, RecordRequest)> {
        if self.phase == Phase::Done || self.yes.contains(&from) || self.no.contains(&from) || !self.acceptors.contains(&from) {
            return Vec::new();
        }
        match (self.phase, reply) {
            (Phase::Promising, Some(RecordReply::Promised { ballot, accepted })) if ballot == self.ballot => {
                if let Some((b, d)) = accepted
                    && self.adopted.is_none_or(|(a, _)| b > a)
                {
                    self.adopted = Some((b, d));
                }
                self.yes.push(from);
            }
            (Phase::Accepting, Some(RecordReply::Accepted { ballot })) if ballot == self.ballot => self.yes.push(from),
            (_, Some(RecordReply::Refused { ballot, promised })) if ballot == self.ballot => {
                self.highest = self.highest.max(promised);
                self.no.push(from);
            }
            (_, Some(RecordReply::Refused { promised, .. })) => {
                self.highest = self.highest.max(promised);
                return Vec::new();
            }
            // A failure: no vote from it (callers hand over only the
            // outcomes of this phase's requests: see `phase_id`).
            (_, None) => self.no.push(from),
            // An answer to another request (a late promise): says nothing of this phase.
            _ => return Vec::new(),
        }
        if self.yes.len() >= self.quorum {
            return self.advance();
        }
        if self.no.len() > self.acceptors.len() - self.quorum.min(self.acceptors.len()) {
            self.phase = Phase::Done;
            self.outcome = Some(Err(Stuck::Outvoted(self.highest)));
        }
        Vec::new()
    }

    fn advance(&mut self) -> Vec<(NodeId, RecordRequest)> {
        self.yes.clear();
        self.no.clear();
        match self.phase {
            Phase::Promising => {
                if let Some((_, d)) = self.adopted {
                    self.want = d;
                }
                self.phase = Phase::Accepting;
                self.start()
            }
            _ => {
                self.phase = Phase::Done;
                self.outcome = Some(Ok(self.want));
                Vec::new()
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn() -> TxnId {
        TxnId(Timestamp { micros: 7, node: 1 })
    }

    fn b(micros: u64) -> Ballot {
        Ballot(Timestamp { micros, node: 2 })
    }

    const COMMIT: Decision = Decision::Committed(Timestamp { micros: 9, node: 1 });

    /// Drives `p` against `tables` (acceptor i is node i), answering only
    /// the acceptors in `up`: what it decided.
    fn run(p: &mut RecordProposer, tables: &mut [RecordTable], up: &[usize]) -> Option<Result<Decision, Stuck>> {
        let mut queue = p.start();
        while let Some((to, req)) = queue.pop() {
            let i = to.0 as usize;
            let reply = up.contains(&i).then(|| tables[i].handle(req, 100).0);
            queue.extend(p.on_reply(to, reply));
        }
        p.outcome()
    }

    fn nodes() -> Vec<NodeId> {
        (0..3).map(NodeId).collect()
    }

    /// The coordinator's accepts at ballot zero decide in one round; a
    /// recovery afterwards finds the commit in any quorum and keeps it.
    #[test]
    fn a_fast_commit_is_found_by_any_later_recovery() {
        let mut t = vec![RecordTable::new(), RecordTable::new(), RecordTable::new()];
        let mut fast = RecordProposer::fast(txn(), &nodes(), 2, COMMIT);
        assert_eq!(run(&mut fast, &mut t, &[0, 1]), Some(Ok(COMMIT)), "two of three accept");
        for up in [[0, 2], [1, 2]] {
            let mut rec = RecordProposer::new(txn(), b(50), &nodes(), 2, Decision::Aborted);
            assert_eq!(run(&mut rec, &mut t, &up), Some(Ok(COMMIT)), "recovery through {up:?} adopts the commit");
        }
    }

    /// A recovery that aborts first wins: the coordinator's late accepts are
    /// refused, and its own recovery round then learns the abort.
    #[test]
    fn a_recovery_abort_refuses_the_late_coordinator() {
        let mut t = vec![RecordTable::new(), RecordTable::new(), RecordTable::new()];
        let mut rec = RecordProposer::new(txn(), b(50), &nodes(), 2, Decision::Aborted);
        assert_eq!(run(&mut rec, &mut t, &[1, 2]), Some(Ok(Decision::Aborted)));
        let mut fast = RecordProposer::fast(txn(), &nodes(), 2, COMMIT);
        let out = run(&mut fast, &mut t, &[0, 1, 2]);
        assert_eq!(out, Some(Err(Stuck::Outvoted(b(50)))), "acceptor 0 alone accepts: no quorum");
        let mut again = RecordProposer::new(txn(), b(60), &nodes(), 2, COMMIT);
        assert_eq!(run(&mut again, &mut t, &[0, 1]), Some(Ok(Decision::Aborted)), "the higher accepted ballot wins");
    }

    /// A fast accept that reached one acceptor only may be completed or
    /// aborted by recovery, whichever quorum it meets; and once a value is
    /// chosen every later recovery returns it.
    #[test]
    fn a_partial_fast_accept_is_settled_once() {
        let mut t = vec![RecordTable::new(), RecordTable::new(), RecordTable::new()];
        let mut fast = RecordProposer::fast(txn(), &nodes(), 2, COMMIT);
        assert!(matches!(run(&mut fast, &mut t, &[0]), Some(Err(_))));
        let mut rec = RecordProposer::new(txn(), b(50), &nodes(), 2, Decision::Aborted);
        assert_eq!(run(&mut rec, &mut t, &[1, 2]), Some(Ok(Decision::Aborted)), "the quorum without it aborts");
        let mut later = RecordProposer::new(txn(), b(70), &nodes(), 2, COMMIT);
        assert_eq!(run(&mut later, &mut t, &[0, 1]), Some(Ok(Decision::Aborted)));
        let mut t = vec![RecordTable::new(), RecordTable::new(), RecordTable::new()];
        let mut fast = RecordProposer::fast(txn(), &nodes(), 2, COMMIT);
        run(&mut fast, &mut t, &[0]);
        let mut rec = RecordProposer::new(txn(), b(50), &nodes(), 2, Decision::Aborted);
        assert_eq!(run(&mut rec, &mut t, &[0, 1]), Some(Ok(COMMIT)), "the quorum with it completes it");
    }

    /// The acceptor logs only changes, refuses lower ballots, forgets on
    /// request and after the retention; replay restores the last state.
    #[test]
    fn the_acceptor_logs_changes_and_forgets() {
        let mut t = RecordTable::new();
        let (r, log) = t.handle(RecordRequest::Prepare { txn: txn(), ballot: b(5) }, 10);
        assert_eq!(r, RecordReply::Promised { ballot: b(5), accepted: None });
        let first = log.unwrap();
        assert_eq!(t.handle(RecordRequest::Prepare { txn: txn(), ballot: b(5) }, 11), (r, None), "a repeat logs nothing");
        let refused = t.handle(RecordRequest::Accept { txn: txn(), ballot: ZERO, decision: COMMIT }, 12);
        assert_eq!(refused, (RecordReply::Refused { ballot: ZERO, promised: b(5) }, None));
        let (_, log) = t.handle(RecordRequest::Accept { txn: txn(), ballot: b(5), decision: Decision::Aborted }, 13);
        let last = log.unwrap();
        assert_eq!(last.accepted, Some((b(5), Decision::Aborted)));
        assert_eq!(last.since, 10, "heard of first at 10");
        let mut again = RecordTable::new();
        again.replay(first);
        again.replay(last);
        assert_eq!(again.get(txn()), t.get(txn()));
        again.expire(10 + RECORD_RETENTION_MICROS, FORGET_GRACE_MICROS);
        assert_eq!(again.len(), 1, "not older than the retention");
        again.expire(11 + RECORD_RETENTION_MICROS, FORGET_GRACE_MICROS);
        assert!(again.is_empty());
        assert_eq!(t.handle(RecordRequest::Forget { txn: txn() }, 20), (RecordReply::Forgotten, None));
        let peek = t.handle(RecordRequest::Peek { txn: txn() }, 21).0;
        assert_eq!(peek, RecordReply::State { accepted: Some((b(5), Decision::Aborted)) }, "kept through the grace");
        t.expire(20 + FORGET_GRACE_MICROS, FORGET_GRACE_MICROS);
        assert_eq!(t.len(), 1);
        t.expire(21 + FORGET_GRACE_MICROS, FORGET_GRACE_MICROS);
        assert!(t.is_empty());
    }

    /// A record holding an accepted commit outlives the retention (until
    /// its coordinator says every participant resolved it): a recovery long
    /// after still finds the commit, rather than aborting a committed
    /// transaction. (Found by a review: the first version dropped it.)
    #[test]
    fn a_commit_outlives_the_retention_until_forgotten() {
        let mut t = vec![RecordTable::new(), RecordTable::new(), RecordTable::new()];
        let mut fast = RecordProposer::fast(txn(), &nodes(), 2, COMMIT);
        assert_eq!(run(&mut fast, &mut t, &[0, 1, 2]), Some(Ok(COMMIT)));
        for x in &mut t {
            x.expire(101 + RECORD_RETENTION_MICROS, FORGET_GRACE_MICROS);
        }
        let mut rec = RecordProposer::new(txn(), b(50), &nodes(), 2, Decision::Aborted);
        assert_eq!(run(&mut rec, &mut t, &[0, 1, 2]), Some(Ok(COMMIT)), "the chosen commit is kept");
    }

    /// A promise that arrives after the proposer moved on to its accepts
    /// says nothing of them: the acceptor's accept still counts. (Found by a
    /// review: the first version took it for a refusal.)
    #[test]
    fn a_late_promise_is_not_a_refusal() {
        let mut t = [RecordTable::new(), RecordTable::new(), RecordTable::new()];
        let mut p = RecordProposer::new(txn(), b(50), &nodes(), 2, Decision::Aborted);
        let promises: Vec<_> = p.start().iter().map(|(to, r)| (*to, t[to.0 as usize].handle(*r, 100).0)).collect();
        assert!(p.on_reply(promises[0].0, Some(promises[0].1)).is_empty());
        let accepts = p.on_reply(promises[1].0, Some(promises[1].1));
        assert_eq!((accepts.len(), p.phase_id()), (3, 1), "on to the accepts");
        p.on_reply(promises[2].0, Some(promises[2].1));
        p.on_reply(NodeId(0), None);
        for i in [1, 2] {
            let r = t[i].handle(accepts[i].1, 101).0;
            p.on_reply(NodeId(i as u32), Some(r));
        }
        assert_eq!(p.outcome(), Some(Ok(Decision::Aborted)), "two of three accepted");
    }
}
