//! `mget`: a read-atomic read of several keys — of every transaction, all
//! of its writes or none (RAMP's guarantee; the plan's piece 6).
//!
//! # One round when no transaction is in flight
//!
//! The coordinator takes a **read timestamp** `r` (its clock's now). Every
//! replica of any key gets one [`PeerRequest::TxnRead`] naming its keys and
//! `r`; its clock observes `r` first, then it answers each key's cell **and
//! the intent holding it**, if any. Once every key has a quorum of answers, a
//! key's value is the newest cell among them. If no cell is newer than `r`
//! and no answer showed an intent, that is the answer.
//!
//! # Why a timestamp, and why votes carry the voter's clock
//!
//! A participant's yes vote carries its clock, and a transaction's commit
//! timestamp comes after every clock its counted votes carried. Take a
//! committed transaction `T` and a key `k` it writes that the `mget` reads.
//! `T`'s yes voters on `k` and the replicas that answered the read of `k` are
//! both quorums of `k`'s replicas, so some replica `R` is in both. If `R`
//! answered the read before it voted, its clock had passed `r`, so `T`'s
//! commit timestamp is above `r`. Otherwise `R` held `T`'s intent (or its
//! cell, or a newer one) when it answered. So:
//!
//! * a transaction committed at or below `r` shows on **every** key it writes
//!   that the `mget` reads, as an intent or as a cell;
//! * one committed above `r` is shown nowhere: its cells are newer than `r`,
//!   and if the answers hold any cell newer than `r` the `mget` starts over
//!   with a read timestamp above it (at most [`ATTEMPTS`] rounds; a plain
//!   write stamped ahead of this coordinator's clock costs one more round),
//!   and its intents are left out.
//!
//! (A first version without the timestamp answered with whatever the
//! record said when asked. The simulated bank, `sim/txn_tests.rs`, caught it
//! showing half a transfer: a key read before the transfer's prepares
//! reached it, another read while they held it, the record committed by the
//! time it was asked.)
//!
//! # Intents: ask the record
//!
//! For each transaction whose intent showed and whose id is not above `r`
//! (its commit timestamp is above its id), the machine asks its record's
//! replicas what they accepted ([`RecordRequest::Peek`]: no promise, so it
//! never disturbs the transaction):
//!
//! * a quorum accepted the same decision at the same ballot: it is chosen.
//!   `Committed(ts)` with `ts` not above `r` puts the intent's write on its
//!   key, unless a newer cell was read;
//! * a quorum answered and none accepted `Committed`: not committed when
//!   asked (a chosen commit is accepted by a quorum, which meets this one),
//!   so its writes are left out (if it commits later, it commits after the
//!   reads: none of its cells was read, and none of its writes is shown);
//! * otherwise (a replica did not answer, or a commit accepted by too few):
//!   a Paxos round on the record settles it ([`RecordProposer`], proposing
//!   `Aborted` unless a promise shows an accepted decision), as recovery does.

use std::collections::BTreeMap;

use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::call::Machine;
use crate::coordinator::command::{Command, Outgoing, ReplyTo};
use crate::coordinator::write::Restamp;
use crate::error::Error;
use crate::message::{PeerRequest, PeerResponse, PeerResult, Reply};
use crate::paxos::Ballot;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;
use crate::txn::intents::IntentWrite;
use crate::txn::record::{Decision, RecordProposer, RecordReply, RecordRequest};
use crate::txn::{HeldBy, Sent, TxnId};

/// One key to read, with its replicas and the answers needed.
#[derive(Debug, Clone)]
pub struct ReadPlan {
    /// The key.
    pub key: Key,
    /// Its replicas.
    pub replicas: Vec<NodeId>,
    /// Answers needed.
    pub quorum: usize,
}

/// Where a transaction's record lives: its anchor's replicas and their quorum.
pub type Place = std::sync::Arc<dyn Fn(&Key) -> (Vec<NodeId>, usize) + Send + Sync>;

#[derive(Debug, Clone, Default)]
struct KeyRead {
    answers: usize,
    failed: usize,
    newest: Option<Version>,
    held: Vec<HeldBy>,
}

struct Check {
    replicas: Vec<NodeId>,
    quorum: usize,
    answers: Vec<Option<(Ballot, Decision)>>,
    failed: usize,
    proposer: Option<RecordProposer>,
    outcome: Option<Option<Decision>>,
}

/// How many rounds of reads an `mget` makes before it gives up on keys
/// that keep getting cells newer than its read timestamp.
pub const ATTEMPTS: u32 = 4;

#[derive(Debug, Clone)]
enum What {
    /// A read of the keys at these indexes, in read round `.0`.
    Read(u32, Vec<usize>),
    Peek(TxnId),
    /// A settling round's request, in the proposer's phase `.1`.
    Round(TxnId, u8),
    /// A write-back of the key at this index (a committed write shown from an intent).
    WriteBack(usize),
}

/// Keys with their values, as an `mget` answers them.
type KeyValues = Vec<(Key, Option<Box<[u8]>>)>;

/// A committed write the answer shows from an intent, written back to the key's replicas.
struct WriteBack {
    idx: usize,
    acks: usize,
    failed: usize,
}

/// One `mget` (see the module docs).
pub struct MGetMachine {
    keys: Vec<ReadPlan>,
    reads: Vec<KeyRead>,
    /// The read timestamp of the current round.
    at: Timestamp,
    /// The current read round (1 first).
    round: u32,
    place: Place,
    restamp: Restamp,
    reply_to: Option<ReplyTo>,
    sent: Sent<What>,
    checks: BTreeMap<TxnId, Check>,
    checking: bool,
    /// The values decided, while their write-backs reach a quorum.
    decided: Option<KeyValues>,
    write_backs: Vec<WriteBack>,
    answer: Option<Reply>,
}

impl MGetMachine {
    /// An `mget` of `keys` at read timestamp `at`; `place` says where a
    /// record lives; `restamp` gives a timestamp above the one given (a
    /// later round's read timestamp, a settling round's ballot).
    pub fn new(keys: Vec<ReadPlan>, at: Timestamp, place: Place, restamp: Restamp) -> Self {
        let reads = vec![KeyRead::default(); keys.len()];
        MGetMachine {
            keys,
            reads,
            at,
            round: 1,
            place,
            restamp,
            reply_to: None,
            sent: Sent::new(),
            checks: BTreeMap::new(),
            checking: false,
            decided: None,
            write_backs: Vec::new(),
            answer: None,
        }
    }

    /// Answers `to` with a [`Command::Answer`] when settled.
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self
    }

    /// The answer, once there is one.
    pub fn answer(&self) -> Option<&Reply> {
        self.answer.as_ref()
    }

    fn send(&mut self, to: NodeId, what: What, msg: PeerRequest) {
        self.sent.send(to, what, msg);
    }

    fn give(&mut self, reply: Reply, out: &mut Vec<Command>) {
        crate::txn::answer_once(&mut self.answer, &self.reply_to, reply, out);
    }

    fn on_read(&mut self, idx: &[usize], result: PeerResult, out: &mut Vec<Command>) {
        // The snapshot is taken once every key has its quorum: a later answer
        // (possibly newer than the read timestamp) must not change it.
        if self.checking || self.answer.is_some() {
            return;
        }
        match result {
            Ok(PeerResponse::TxnRead(entries)) if entries.len() == idx.len() => {
                for (&i, (cell, held)) in idx.iter().zip(entries) {
                    let r = &mut self.reads[i];
                    r.answers += 1;
                    if cell.as_ref().map(|c| c.ts) > r.newest.as_ref().map(|c| c.ts) {
                        r.newest = cell;
                    }
                    if let Some(h) = held
                        && !matches!(h.write, IntentWrite::Compare)
                        && !r.held.iter().any(|x| x.txn == h.txn)
                    {
                        r.held.push(h);
                    }
                }
            }
            _ => idx.iter().for_each(|&i| self.reads[i].failed += 1),
        }
        for (k, r) in self.keys.iter().zip(&self.reads) {
            if r.failed > k.replicas.len().saturating_sub(k.quorum) {
                let err = Error::Unavailable(format!(
                    "need {} of {} replicas for key {}, {} answered; the mget read nothing",
                    k.quorum,
                    k.replicas.len(),
                    k.key,
                    r.answers
                ));
                self.give(Reply::Error(err), out);
                return;
            }
        }
        if self.keys.iter().zip(&self.reads).any(|(k, r)| r.answers < k.quorum) {
            return;
        }
        // Every key has its quorum. A cell newer than the read timestamp: read again above it.
        let newest = self.reads.iter().filter_map(|r| r.newest.as_ref().map(|c| c.ts)).max();
        if let Some(newest) = newest.filter(|&n| n > self.at) {
            if self.round >= ATTEMPTS {
                let err = Error::Timeout(format!(
                    "the mget's keys kept getting newer writes through {} rounds of reads; it read nothing (retry)",
                    self.round
                ));
                self.give(Reply::Error(err), out);
                return;
            }
            match (self.restamp)(newest) {
                Some(at) => {
                    self.at = at;
                    self.round += 1;
                    self.reads = vec![KeyRead::default(); self.keys.len()];
                    self.send_reads();
                }
                None => {
                    let err = Error::Failure("a key the mget read holds a write stamped too far ahead of this coordinator's clock".into());
                    self.give(Reply::Error(err), out);
                }
            }
            return;
        }
        // Check the transactions whose intents showed (those begun after the
        // read timestamp commit after it: left out without asking).
        self.checking = true;
        let mut txns: BTreeMap<TxnId, Key> = BTreeMap::new();
        for r in &self.reads {
            for h in r.held.iter().filter(|h| h.txn.0 <= self.at) {
                txns.entry(h.txn).or_insert_with(|| h.anchor.clone());
            }
        }
        for (txn, anchor) in txns {
            let (replicas, quorum) = (self.place)(&anchor);
            for &to in &replicas {
                self.send(to, What::Peek(txn), PeerRequest::TxnRecord(RecordRequest::Peek { txn }));
            }
            let check = Check { replicas, quorum, answers: Vec::new(), failed: 0, proposer: None, outcome: None };
            self.checks.insert(txn, check);
        }
        self.maybe_answer(out);
    }

    fn on_peek(&mut self, txn: TxnId, result: PeerResult) {
        let Some(c) = self.checks.get_mut(&txn) else { return };
        if c.outcome.is_some() || c.proposer.is_some() {
            return;
        }
        match result {
            Ok(PeerResponse::TxnRecord(RecordReply::State { accepted })) => c.answers.push(accepted),
            _ => c.failed += 1,
        }
        let chosen = c.answers.iter().flatten().find(|a| c.answers.iter().filter(|b| b.as_ref() == Some(a)).count() >= c.quorum);
        if let Some(&(_, d)) = chosen {
            c.outcome = Some(Some(d));
            return;
        }
        // A quorum showing no accepted commit: not chosen when asked (a chosen
        // commit is accepted by a quorum, which meets this one).
        let any_commit = c.answers.iter().flatten().any(|(_, d)| matches!(d, Decision::Committed(_)));
        if !any_commit && c.answers.len() >= c.quorum {
            c.outcome = Some(None);
            return;
        }
        if c.answers.len() + c.failed < c.replicas.len() {
            return;
        }
        // Unclear: settle it by a round of its own.
        let highest = c.answers.iter().flatten().map(|(b, _)| *b).max().unwrap_or(Ballot(txn.0)).max(Ballot(txn.0));
        match (self.restamp)(highest.0) {
            Some(ts) => {
                let p = RecordProposer::new(txn, Ballot(ts), &c.replicas, c.quorum, Decision::Aborted);
                let (first, phase) = (p.start(), p.phase_id());
                c.proposer = Some(p);
                for (to, req) in first {
                    self.send(to, What::Round(txn, phase), PeerRequest::TxnRecord(req));
                }
            }
            None => c.outcome = Some(None),
        }
    }

    fn on_round(&mut self, txn: TxnId, phase: u8, from: NodeId, result: PeerResult, out: &mut Vec<Command>) {
        let Some(c) = self.checks.get_mut(&txn) else { return };
        let Some(p) = c.proposer.as_mut() else { return };
        let Some((next, phase)) = crate::txn::coordinator::record_step(p, from, phase, result) else { return };
        match p.outcome() {
            Some(Ok(d)) => c.outcome = Some(Some(d)),
            Some(Err(_)) => {
                let err = Error::Timeout(format!(
                    "the mget met an intent of {txn}, whose outcome could not be settled in time; the mget read nothing (retry)"
                ));
                self.give(Reply::Error(err), out);
                return;
            }
            None => {}
        }
        for (to, req) in next {
            self.send(to, What::Round(txn, phase), PeerRequest::TxnRecord(req));
        }
    }

    fn maybe_answer(&mut self, out: &mut Vec<Command>) {
        if self.answer.is_some() {
            return;
        }
        if self.decided.is_some() {
            for w in &self.write_backs {
                let k = &self.keys[w.idx];
                if w.failed > k.replicas.len().saturating_sub(k.quorum) {
                    let err = Error::Timeout(format!(
                        "the mget read a committed transaction's write of key {} that it could not write back to {} of its {} replicas; retry",
                        k.key,
                        k.quorum,
                        k.replicas.len()
                    ));
                    self.give(Reply::Error(err), out);
                    return;
                }
                if w.acks < k.quorum {
                    return;
                }
            }
            let values = self.decided.take().unwrap_or_default();
            self.give(Reply::Values(values), out);
            return;
        }
        if self.checks.values().any(|c| c.outcome.is_none()) {
            return;
        }
        let committed: BTreeMap<TxnId, Timestamp> = self
            .checks
            .iter()
            .filter_map(|(t, c)| match c.outcome {
                Some(Some(Decision::Committed(ts))) if ts <= self.at => Some((*t, ts)),
                _ => None,
            })
            .collect();
        let mut values = Vec::with_capacity(self.keys.len());
        let mut write_backs = Vec::new();
        for (i, (k, r)) in self.keys.iter().zip(&self.reads).enumerate() {
            let mut best = r.newest.clone();
            let mut from_intent = false;
            for h in &r.held {
                let Some(&ts) = committed.get(&h.txn) else { continue };
                if best.as_ref().is_none_or(|b| b.ts < ts) {
                    best = Some(match &h.write {
                        IntentWrite::Put(v) => Version { ts, value: Some(v.clone()) },
                        _ => Version::tombstone(ts),
                    });
                    from_intent = true;
                }
            }
            if from_intent && let Some(v) = &best {
                write_backs.push((i, v.clone()));
            }
            values.push((k.key.clone(), best.and_then(|v| v.value)));
        }
        if write_backs.is_empty() {
            self.give(Reply::Values(values), out);
            return;
        }
        // A committed write that a quorum of its key's replicas may not hold
        // yet (its resolutions are on the way): write it back first, as a
        // blocking read repair does, so a plain read after this answer sees
        // it too (reads stay monotonic across `mget` and `get`).
        for (i, version) in write_backs {
            let key = self.keys[i].key.clone();
            for to in self.keys[i].replicas.clone() {
                self.send(to, What::WriteBack(i), PeerRequest::Write { key: key.clone(), version: version.clone(), epoch: 0 });
            }
            self.write_backs.push(WriteBack { idx: i, acks: 0, failed: 0 });
        }
        self.decided = Some(values);
    }

    fn on_write_back(&mut self, idx: usize, result: PeerResult) {
        let Some(w) = self.write_backs.iter_mut().find(|w| w.idx == idx) else { return };
        match result {
            Ok(PeerResponse::WriteAck { .. }) => w.acks += 1,
            _ => w.failed += 1,
        }
    }
}

impl MGetMachine {
    /// One read a replica, of every key it holds, at the current round's timestamp.
    fn send_reads(&mut self) {
        for (to, idx) in crate::txn::by_node(self.keys.iter().map(|k| &k.replicas[..])) {
            let keys = idx.iter().map(|&i| self.keys[i].key.clone()).collect();
            self.send(to, What::Read(self.round, idx), PeerRequest::TxnRead { keys, at: self.at });
        }
    }
}

impl Machine for MGetMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        self.send_reads();
        self.sent.drain()
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let Some((from, what)) = self.sent.arrived(slot) else { return };
        match what {
            What::Read(round, idx) if round == self.round => self.on_read(&idx, result, out),
            What::Read(..) => {}
            What::Peek(txn) => {
                self.on_peek(txn, result);
                self.maybe_answer(out);
            }
            What::Round(txn, phase) => {
                self.on_round(txn, phase, from, result, out);
                self.maybe_answer(out);
            }
            What::WriteBack(idx) => {
                self.on_write_back(idx, result);
                self.maybe_answer(out);
            }
        }
        out.extend(self.sent.drain().into_iter().map(Command::Send));
    }

    fn settled(&self) -> bool {
        self.answer.is_some()
    }

    fn complete(&self) -> bool {
        self.sent.all_arrived()
    }

    fn held_bytes(&self) -> usize {
        0
    }
}
