//! The coordinator of one transaction: an I/O-free [`Machine`] that the node
//! drives with the replies as they arrive, like the read and write machines.
//!
//! # Phases
//!
//! 1. **Prepare.** One [`PeerRequest::TxnPrepare`] to every replica of any of
//!    the transaction's keys, naming the keys it holds there and what the
//!    transaction does to each. A participant logs an intent per key and
//!    votes yes with its cell, or no: another transaction holds the key, or
//!    a SERIAL round is in flight on it.
//! 2. **Decide,** as soon as every key has a quorum of yes votes (or as soon
//!    as some key cannot get one: abort). The conditions are judged on the
//!    newest cell among each key's yes votes. Nothing can change a key while
//!    a quorum of its replicas hold this transaction's intents: another
//!    transaction cannot get a quorum of yes votes there, and SERIAL
//!    acceptors refuse rounds on held keys. If every condition holds, the
//!    commit timestamp is the clock's next tick after every version seen,
//!    and the decision is made durable in the **record** (see
//!    [`record`](crate::txn::record)): `Committed(ts)` accepted at ballot zero
//!    by a quorum of the anchor key's replicas. If a participant's recovery
//!    got there first, the record says `Aborted`, and so does the answer.
//!    A condition that fails, or a key without a quorum, aborts without a
//!    record (only the coordinator ever proposes a commit).
//! 3. **Resolve:** a [`PeerRequest::TxnResolve`] to every replica of every
//!    key: a committed write becomes an ordinary cell stamped with the commit
//!    timestamp (so read repair, hints and anti-entropy carry it; a replica
//!    that missed the prepare applies it too), an aborted intent is dropped.
//!    A replica that misses a committed resolution gets a hint for each
//!    written key, and its intent is settled by its own recovery. Once every
//!    replica resolved a committed transaction, its record is forgotten.
//! 4. **Answer** the client: not applied (with the compared keys' values), a
//!    conflict or unavailable as soon as the votes say so; committed (with
//!    the timestamp) once a quorum of each written key's replicas applied
//!    the resolution, so that a QUORUM read after the answer sees every
//!    write (a plain read does not look at intents); or, when the record
//!    could not be settled in time, that the outcome is unknown.
//!
//! Three round trips before a commit is answered: the prepares, the
//! record's accepts, the resolutions. An abort is answered after the first.
//!
//! # Conflicts: wait-die
//!
//! A transaction's id is its start timestamp, so ids order transactions by
//! age. A prepare that finds its key held by another transaction is refused
//! with the holder's id, and the coordinator compares: an *older*
//! transaction waits for a younger holder (it sends that replica the
//! prepare again after [`wait_pause`], up to [`WAIT_ROUNDS`] times a
//! replica: about a quarter of a second); a *younger* one dies (the refusal
//! counts as a no, and the transaction aborts with a conflict the client
//! may retry). Waits only ever go from older to younger, so there is no
//! cycle of waiting and no deadlock; and the oldest transaction in
//! contention dies only if a younger holder outlasts its wait (one whose
//! coordinator died or stalled, settled within `--txn-timeout`), so while
//! holders finish, it commits: contention cannot livelock. A SERIAL round
//! in flight on a key, or a holder older than the prepare, aborts the
//! transaction at once. (The pause needs the timer; on the simulated
//! network the prepare goes again at once, each delivery a step.)

use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::call::Machine;
use crate::coordinator::command::{Command, Outgoing, ReplyTo};
use crate::coordinator::write::Restamp;
use crate::error::Error;
use crate::message::{PeerRequest, PeerResponse, PeerResult, Reply};
use crate::paxos::Ballot;
use crate::storage::cell::Version;
use crate::txn::intents::{Conflict, IntentWrite, Vote};
use crate::txn::record::{Decision, RecordProposer, RecordRequest, Stuck};
use crate::txn::{Sent, TxnId, TxnKey};

/// One key of the transaction with the replicas that vote on it.
#[derive(Debug, Clone)]
pub struct KeyPlan {
    /// The key, its write and its condition.
    pub key: TxnKey,
    /// Its replicas (at the coordinator's epoch).
    pub replicas: Vec<NodeId>,
    /// Yes votes needed.
    pub quorum: usize,
}

/// How many times the coordinator starts a fresh round on its record after
/// its accepts were outvoted (by a recovery's promises) before it reports
/// the outcome unknown.
const RECORD_ATTEMPTS: u32 = 3;

/// How many times, at most, the coordinator sends a key's prepare to one
/// replica again while a younger transaction holds the key there
/// (wait-die; see the module docs), each after [`wait_pause`]: about a
/// quarter of a second in all, well within `--txn-timeout` (so the waiting
/// transaction's own intents are not recovered away meanwhile), and far
/// longer than a live holder takes to commit or abort.
pub const WAIT_ROUNDS: u32 = 64;

/// The pause before the `n`th prepare sent again (from 1): 0.25 ms,
/// doubling to 4 ms.
pub fn wait_pause(n: u32) -> std::time::Duration {
    std::time::Duration::from_micros(250 << n.saturating_sub(1).min(4))
}

#[derive(Debug, Clone)]
enum What {
    Prepare(Vec<usize>),
    /// A request of record attempt `.0`, phase `.1` ([`RecordProposer::phase_id`]).
    Record(u32, u8),
    Resolve(Vec<usize>),
    Forget,
}

#[derive(Debug, Clone, Default)]
struct KeyVotes {
    yes: Vec<NodeId>,
    newest: Option<Version>,
    no: usize,
    conflict: Option<Conflict>,
    failure: Option<String>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Preparing,
    Recording,
    Resolving,
    Done,
}

/// One transaction's coordinator (see the module docs).
pub struct TxnMachine {
    txn: TxnId,
    anchor: Key,
    keys: Vec<KeyPlan>,
    record_replicas: Vec<NodeId>,
    record_quorum: usize,
    epoch: u64,
    restamp: Restamp,
    reply_to: Option<ReplyTo>,
    hint: bool,
    sent: Sent<What>,
    votes: Vec<KeyVotes>,
    phase: Phase,
    record: Option<RecordProposer>,
    record_attempts: u32,
    /// The commit timestamp proposed, once the votes allowed it.
    want: Option<Decision>,
    decision: Option<Decision>,
    answer: Option<Reply>,
    resolve_failed: bool,
    /// Replicas that applied each key's resolution.
    applied: Vec<usize>,
    /// The latest clock a vote reported: the commit timestamp comes after it.
    voters_clock: crate::storage::hlc::Timestamp,
    /// Prepares sent again per key and replica while a younger transaction held it.
    waits: std::collections::HashMap<(usize, NodeId), u32>,
}

impl TxnMachine {
    /// A transaction `txn` over `keys` (writes first; the first key is the
    /// anchor, whose replicas keep the record), routed at `epoch`.
    /// `restamp` gives the commit timestamp above the newest version seen;
    /// `hint` keeps hints for replicas that miss a committed write.
    pub fn new(txn: TxnId, keys: Vec<KeyPlan>, epoch: u64, restamp: Restamp, hint: bool) -> Self {
        assert!(!keys.is_empty(), "a transaction has keys");
        let anchor = keys[0].key.key.clone();
        let record_replicas = keys[0].replicas.clone();
        let record_quorum = keys[0].quorum;
        let votes = vec![KeyVotes::default(); keys.len()];
        let n = keys.len();
        TxnMachine {
            txn,
            anchor,
            keys,
            record_replicas,
            record_quorum,
            epoch,
            restamp,
            reply_to: None,
            hint,
            sent: Sent::new(),
            votes,
            phase: Phase::Preparing,
            record: None,
            record_attempts: 0,
            want: None,
            decision: None,
            answer: None,
            resolve_failed: false,
            applied: vec![0; n],
            voters_clock: txn.0,
            waits: std::collections::HashMap::new(),
        }
    }

    /// Answers `to` with a [`Command::Answer`] when settled.
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self
    }

    /// The transaction's id.
    pub fn txn(&self) -> TxnId {
        self.txn
    }

    /// The answer, once there is one.
    pub fn answer(&self) -> Option<&Reply> {
        self.answer.as_ref()
    }

    /// The decision, once known here.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    fn send(&mut self, to: NodeId, what: What, msg: PeerRequest) {
        self.sent.send(to, what, msg);
    }

    /// Every node of any key's replicas, in first-seen order, with the indexes of its keys.
    fn by_node(&self) -> Vec<(NodeId, Vec<usize>)> {
        crate::txn::by_node(self.keys.iter().map(|k| &k.replicas[..]))
    }

    fn items(&self, idx: &[usize]) -> Vec<(Key, IntentWrite)> {
        idx.iter().map(|&i| (self.keys[i].key.key.clone(), self.keys[i].key.write.clone())).collect()
    }

    fn give_answer(&mut self, reply: Reply, out: &mut Vec<Command>) {
        crate::txn::answer_once(&mut self.answer, &self.reply_to, reply, out);
    }

    fn drain(&mut self, out: &mut Vec<Command>) {
        out.extend(self.sent.drain().into_iter().map(Command::Send));
    }

    fn on_votes(&mut self, from: NodeId, idx: &[usize], result: PeerResult) {
        let votes = match result {
            Ok(PeerResponse::TxnVotes(v, clock)) if v.len() == idx.len() => {
                self.voters_clock = self.voters_clock.max(clock);
                Ok(v)
            }
            Ok(other) => Err(format!("{from} answered a prepare with {other:?}")),
            Err(e) => Err(format!("{from}: {e}")),
        };
        match votes {
            Ok(votes) => {
                let mut again = Vec::new();
                for (&i, vote) in idx.iter().zip(votes) {
                    let kv = &mut self.votes[i];
                    match vote {
                        Vote::Yes(cell) => {
                            if !kv.yes.contains(&from) {
                                kv.yes.push(from);
                            }
                            if cell.as_ref().map(|c| c.ts) > kv.newest.as_ref().map(|c| c.ts) {
                                kv.newest = cell;
                            }
                        }
                        // Wait-die: held by a younger transaction, this older one waits (boundedly).
                        Vote::No(Conflict::Held { by, .. })
                            if by > self.txn && self.waits.get(&(i, from)).is_none_or(|&w| w < WAIT_ROUNDS) =>
                        {
                            let w = self.waits.entry((i, from)).or_insert(0);
                            *w += 1;
                            again.push((i, *w));
                        }
                        Vote::No(c) => {
                            kv.no += 1;
                            kv.conflict = Some(c);
                        }
                    }
                }
                if !again.is_empty() {
                    let pause = again.iter().map(|&(_, w)| wait_pause(w)).max().unwrap_or_default();
                    let idx: Vec<usize> = again.into_iter().map(|(i, _)| i).collect();
                    let items = self.items(&idx);
                    let msg = PeerRequest::TxnPrepare { txn: self.txn, anchor: self.anchor.clone(), items, epoch: self.epoch };
                    self.sent.send_after(from, What::Prepare(idx), msg, pause);
                }
            }
            Err(why) => {
                for &i in idx {
                    self.votes[i].no += 1;
                    self.votes[i].failure = Some(why.clone());
                }
            }
        }
    }

    /// After a vote: decide if every key has its quorum, abort if one cannot.
    fn after_votes(&mut self, out: &mut Vec<Command>) {
        for (i, k) in self.keys.iter().enumerate() {
            let v = &self.votes[i];
            if v.no > k.replicas.len().saturating_sub(k.quorum) {
                let key = &k.key.key;
                let err = match &v.conflict {
                    Some(Conflict::Held { by, .. }) => Error::Conflict(format!(
                        "key {key} is held by {by}, which is still deciding; {} was aborted, nothing was written (retry)",
                        self.txn
                    )),
                    Some(Conflict::Serial) => Error::Conflict(format!(
                        "a SERIAL operation is in flight on key {key}; {} was aborted, nothing was written (retry)",
                        self.txn
                    )),
                    Some(Conflict::Ended) => Error::Conflict(format!(
                        "a replica of key {key} had resolved {} already (its prepare came late); nothing was written (retry)",
                        self.txn
                    )),
                    None => Error::Unavailable(format!(
                        "need {} of {} replicas' votes for key {key}, {} yes ({}); {} was aborted, nothing was written",
                        k.quorum,
                        k.replicas.len(),
                        v.yes.len(),
                        v.failure.as_deref().unwrap_or("no answer"),
                        self.txn
                    )),
                };
                self.give_answer(Reply::Error(err), out);
                self.resolve(Decision::Aborted);
                return;
            }
        }
        if self.keys.iter().zip(&self.votes).any(|(k, v)| v.yes.len() < k.quorum) {
            return;
        }
        // Every key is held by a quorum: judge the conditions.
        let live = |v: &KeyVotes| v.newest.as_ref().and_then(|c| c.value.clone());
        let failed = self.keys.iter().zip(&self.votes).any(|(k, v)| k.key.condition.as_ref().is_some_and(|c| !c.holds(live(v).as_deref())));
        if failed {
            let current = self
                .keys
                .iter()
                .zip(&self.votes)
                .filter(|(k, _)| k.key.condition.is_some())
                .map(|(k, v)| (k.key.key.clone(), live(v)))
                .collect();
            self.give_answer(Reply::TxnNotApplied { current }, out);
            self.resolve(Decision::Aborted);
            return;
        }
        // After every version seen and every voter's clock (`txn::mget` needs the latter).
        let newest = self.votes.iter().filter_map(|v| v.newest.as_ref().map(|c| c.ts)).max().unwrap_or(self.txn.0).max(self.txn.0);
        let newest = newest.max(self.voters_clock);
        let Some(ts) = (self.restamp)(newest) else {
            let err = Error::Failure(format!(
                "a key of {} holds a version stamped too far ahead of this coordinator's clock; aborted, nothing was written",
                self.txn
            ));
            self.give_answer(Reply::Error(err), out);
            self.resolve(Decision::Aborted);
            return;
        };
        let want = Decision::Committed(ts);
        self.want = Some(want);
        self.phase = Phase::Recording;
        let proposer = RecordProposer::fast(self.txn, &self.record_replicas, self.record_quorum, want);
        self.start_record(proposer);
    }

    fn start_record(&mut self, proposer: RecordProposer) {
        self.record_attempts += 1;
        let phase = proposer.phase_id();
        for (to, req) in proposer.start() {
            self.send(to, What::Record(self.record_attempts, phase), PeerRequest::TxnRecord(req));
        }
        self.record = Some(proposer);
    }

    fn on_record(&mut self, from: NodeId, (attempt, phase): (u32, u8), result: PeerResult, out: &mut Vec<Command>) {
        let Some(p) = self.record.as_mut() else { return };
        // Only the outcomes of the current attempt's current phase count.
        if attempt != self.record_attempts {
            return;
        }
        let Some((next, phase)) = record_step(p, from, phase, result) else { return };
        for (to, req) in next {
            self.send(to, What::Record(self.record_attempts, phase), PeerRequest::TxnRecord(req));
        }
        let Some(outcome) = self.record.as_ref().and_then(|p| p.outcome()) else { return };
        match outcome {
            Ok(decision) => {
                self.decision = Some(decision);
                // A commit is answered once a quorum of each written key's
                // replicas applied it (see `on_resolved`): a QUORUM read after
                // the answer sees it.
                if decision == Decision::Aborted {
                    let err = Error::Conflict(format!(
                        "{} was aborted by a participant's recovery before its commit was recorded; nothing was written (retry)",
                        self.txn
                    ));
                    self.give_answer(Reply::Error(err), out);
                }
                self.resolve(decision);
            }
            Err(Stuck::Outvoted(highest)) if self.record_attempts < RECORD_ATTEMPTS => {
                let want = self.want.expect("recording after a decision to commit");
                match (self.restamp)(highest.0) {
                    Some(ballot) => {
                        let proposer = RecordProposer::new(self.txn, Ballot(ballot), &self.record_replicas, self.record_quorum, want);
                        self.start_record(proposer);
                    }
                    None => self.unknown(out),
                }
            }
            Err(_) => self.unknown(out),
        }
    }

    /// The record could not be settled: the participants' recovery will.
    fn unknown(&mut self, out: &mut Vec<Command>) {
        let err = Error::Timeout(format!(
            "{}: its record (at key {}) could not be settled in time; the transaction may or may not have been applied \
             (the replicas settle it within --txn-timeout)",
            self.txn, self.anchor
        ));
        self.give_answer(Reply::Error(err), out);
        self.phase = Phase::Done;
    }

    fn resolve(&mut self, decision: Decision) {
        self.decision = Some(decision);
        self.phase = Phase::Resolving;
        for (node, idx) in self.by_node() {
            let items = self.items(&idx);
            self.send(node, What::Resolve(idx), PeerRequest::TxnResolve { txn: self.txn, decision, items });
        }
    }

    fn on_resolved(&mut self, from: NodeId, idx: &[usize], result: PeerResult, out: &mut Vec<Command>) {
        if let Some(Decision::Committed(ts)) = self.decision {
            if result.is_ok() {
                for &i in idx {
                    self.applied[i] += 1;
                }
            }
            // Visible at QUORUM everywhere, or as visible as it will be before the replicas' recovery.
            let visible = self.keys.iter().zip(&self.applied).all(|(k, &n)| matches!(k.key.write, IntentWrite::Compare) || n >= k.quorum);
            if visible || !self.resolves_pending() {
                self.give_answer(Reply::TxnCommitted { ts }, out);
            }
        }
        if result.is_ok() {
            return;
        }
        self.resolve_failed = true;
        let Some(Decision::Committed(ts)) = self.decision else { return };
        if !self.hint {
            return;
        }
        for &i in idx {
            let version = match &self.keys[i].key.write {
                IntentWrite::Put(v) => Version { ts, value: Some(v.clone()) },
                IntentWrite::Delete => Version::tombstone(ts),
                IntentWrite::Compare => continue,
            };
            out.push(Command::Hint { target: from, key: self.keys[i].key.key.clone(), version });
        }
    }

    fn resolves_pending(&self) -> bool {
        self.sent.pending(|w| matches!(w, What::Resolve(_)))
    }
}

impl Machine for TxnMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        for (node, idx) in self.by_node() {
            let items = self.items(&idx);
            let msg = PeerRequest::TxnPrepare { txn: self.txn, anchor: self.anchor.clone(), items, epoch: self.epoch };
            self.send(node, What::Prepare(idx), msg);
        }
        self.sent.drain()
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let Some((from, what)) = self.sent.arrived(slot) else { return };
        match what {
            What::Prepare(idx) if self.phase == Phase::Preparing => {
                self.on_votes(from, &idx, result);
                self.after_votes(out);
            }
            // Votes after the decision: the resolution went to every replica.
            What::Prepare(_) => {}
            What::Record(attempt, phase) if self.phase == Phase::Recording => self.on_record(from, (attempt, phase), result, out),
            What::Record(..) => {}
            What::Resolve(idx) => {
                self.on_resolved(from, &idx, result, out);
                let committed = matches!(self.decision, Some(Decision::Committed(_)));
                if !self.resolves_pending() && self.phase == Phase::Resolving {
                    self.phase = Phase::Done;
                    if committed && !self.resolve_failed {
                        // Every replica resolved it: nobody will ask the record again.
                        for to in self.record_replicas.clone() {
                            self.send(to, What::Forget, PeerRequest::TxnRecord(RecordRequest::Forget { txn: self.txn }));
                        }
                    }
                }
            }
            What::Forget => {}
        }
        self.drain(out);
    }

    fn settled(&self) -> bool {
        self.answer.is_some()
    }

    fn complete(&self) -> bool {
        self.sent.all_arrived() && self.phase == Phase::Done
    }

    fn held_bytes(&self) -> usize {
        self.keys.iter().map(|k| k.key.key.len() + if let IntentWrite::Put(v) = &k.key.write { v.len() } else { 0 }).sum()
    }
}

/// Hands `from`'s outcome of a request of proposer phase `phase` to `p`,
/// if that is `p`'s current phase (an earlier phase's outcome says nothing
/// of this one): the requests to send next, and their phase.
pub(crate) fn record_step(
    p: &mut RecordProposer,
    from: NodeId,
    phase: u8,
    result: PeerResult,
) -> Option<(Vec<(NodeId, RecordRequest)>, u8)> {
    if phase != p.phase_id() {
        return None;
    }
    let reply = match result {
        Ok(PeerResponse::TxnRecord(r)) => Some(r),
        _ => None,
    };
    let next = p.on_reply(from, reply);
    Some((next, p.phase_id()))
}

/// A participant's recovery of one transaction whose intents it has held
/// past `--txn-timeout`: it settles the record (adopting what was accepted,
/// or aborting), then resolves its intents' keys by the decision on every
/// replica of them ([`PeerRequest::TxnResolve`]), so a replica that missed
/// both the prepare and the resolution gets a committed write too.
pub struct RecoveryMachine {
    txn: TxnId,
    resolve: Vec<(NodeId, Vec<(Key, IntentWrite)>)>,
    restamp: Restamp,
    proposer: RecordProposer,
    /// Each slot's proposer phase (a resolution: none).
    sent: Sent<Option<u8>>,
    decision: Option<Decision>,
    gave_up: bool,
}

impl RecoveryMachine {
    /// Recovers `txn` (record at the replicas given, with their quorum) at
    /// `ballot`, then sends each node of `resolve` the decision on its keys.
    pub fn new(
        txn: TxnId,
        resolve: Vec<(NodeId, Vec<(Key, IntentWrite)>)>,
        (record_replicas, record_quorum): (Vec<NodeId>, usize),
        ballot: Ballot,
        restamp: Restamp,
    ) -> Self {
        let proposer = RecordProposer::new(txn, ballot, &record_replicas, record_quorum, Decision::Aborted);
        RecoveryMachine { txn, resolve, restamp, proposer, sent: Sent::new(), decision: None, gave_up: false }
    }

    /// The decision, once settled.
    pub fn decision(&self) -> Option<Decision> {
        self.decision
    }

    /// Sends `msg` to `to`, tagged with the proposer's phase (a resolution: none).
    fn send(&mut self, to: NodeId, msg: PeerRequest, phase: Option<u8>) {
        self.sent.send(to, phase, msg);
    }

    fn send_round(&mut self, reqs: Vec<(NodeId, RecordRequest)>) {
        let phase = Some(self.proposer.phase_id());
        for (to, req) in reqs {
            self.send(to, PeerRequest::TxnRecord(req), phase);
        }
    }
}

impl Machine for RecoveryMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        let first = self.proposer.start();
        self.send_round(first);
        self.sent.drain()
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let Some((from, phase)) = self.sent.arrived(slot) else { return };
        // A resolution's outcome (no phase) changes nothing.
        let (Some(phase), false) = (phase, self.decision.is_some() || self.gave_up) else { return };
        let Some((next, _)) = record_step(&mut self.proposer, from, phase, result) else { return };
        self.send_round(next);
        match self.proposer.outcome() {
            None => {}
            Some(Ok(decision)) => {
                self.decision = Some(decision);
                for (to, items) in std::mem::take(&mut self.resolve) {
                    self.send(to, PeerRequest::TxnResolve { txn: self.txn, decision, items }, None);
                }
            }
            // Outvoted (another replica's recovery, or the coordinator, went
            // higher): the next tick tries again, after its own delay, so
            // that recoveries of one transaction do not duel.
            Some(Err(Stuck::Outvoted(highest))) => {
                let _ = (self.restamp)(highest.0);
                self.gave_up = true;
            }
        }
        out.extend(self.sent.drain().into_iter().map(Command::Send));
    }

    fn settled(&self) -> bool {
        self.decision.is_some() || self.gave_up
    }

    fn complete(&self) -> bool {
        self.sent.all_arrived()
    }

    fn held_bytes(&self) -> usize {
        let item = |(k, w): &(Key, IntentWrite)| k.len() + if let IntentWrite::Put(v) = w { v.len() } else { 0 };
        self.resolve.iter().flat_map(|(_, items)| items.iter().map(item)).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The wait a refused older transaction allows a younger holder: paced,
    /// about a quarter of a second in all, well inside `--txn-timeout` (2 s).
    #[test]
    fn the_wait_for_a_younger_holder_is_paced_and_bounded() {
        assert_eq!(wait_pause(1), std::time::Duration::from_micros(250));
        assert_eq!(wait_pause(2), std::time::Duration::from_micros(500));
        assert_eq!(wait_pause(100), std::time::Duration::from_millis(4));
        let total: std::time::Duration = (1..=WAIT_ROUNDS).map(wait_pause).sum();
        assert!(total > std::time::Duration::from_millis(200) && total < std::time::Duration::from_millis(300), "{total:?}");
    }
}
