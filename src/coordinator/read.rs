//! The read machine: every replica of a key asked for its version.
//!
//! 1. **Reading.** Replies are kept per slot and counted toward the level.
//! 2. **Repairing** (QUORUM and ALL with read repair on). Once the level is
//!    reached, replicas that replied with something older than the newest
//!    version are sent it, and the client is answered only when every one of
//!    them acked — blocking read repair, as Cassandra 4 does, so quorum reads
//!    are monotonic. A repair that fails or times out fails the read with a
//!    timeout (the value may be on fewer replicas than the level).
//! 3. **Answered.** Once the client has been answered *and* every replica has
//!    replied or timed out, each replica that returned something older than
//!    the newest version seen (including replies that came after the answer)
//!    gets a background [`Command::Repair`], unless a blocking repair already
//!    brought it to that version.

use std::sync::Arc;
use std::time::Instant;

use crate::cluster::consistency::Decision;
use crate::cluster::key::Key;
use crate::cluster::ring::{NodeId, Ring};
use crate::coordinator::call::Machine;
use crate::coordinator::command::{Command, Outgoing, ReplyTo, Route};
use crate::coordinator::tally::{SlotSet, Tally};
use crate::error::{Error, Result};
use crate::message::{PeerRequest, PeerResponse, PeerResult, Reply};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

fn repair_message(key: &Key, tally: &Tally) -> String {
    format!(
        "read repair of key {key}: {} of {} stale replicas acked in time{}",
        tally.acks(),
        tally.targets().len(),
        tally.failures().suffix()
    )
}

#[derive(Debug, Clone)]
enum Answer {
    Waiting,
    Replied(Option<Version>),
    Failed,
}

/// One replica's part in a read: its reply, and the timestamp a blocking repair brought it to.
#[derive(Debug, Clone)]
struct ReadSlot {
    reply: Answer,
    repaired: Option<Timestamp>,
}

/// How [`Machine::start`] sends the reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ReadRoute {
    /// Every replica directly.
    AllDirect,
    /// This slot directly, the others through the read batcher (a ONE read of
    /// a key this node does not hold: any reply answers, the batched ones are
    /// for repair or a fallback if the direct one is slow).
    OneDirect(usize),
    /// Every replica through the read batcher (a ONE read already answered
    /// from this node's copy: the others are asked only for repair).
    AllBatched,
}

/// Where the read stands. The answer is named by the slot whose reply it is, so
/// a call holds each value once (what the background budget counts).
enum Phase {
    Reading,
    Repairing {
        newest: usize,
        tally: Tally,
        stale: Vec<usize>,
        acked: SlotSet,
    },
    /// The answer: the newest reply's slot (`None`: no replica has the key).
    Ready(Option<usize>),
    Failed,
    RepairFailed(String),
}

/// A read sent to every replica of a key (see the module docs).
pub struct ReadMachine {
    key: Key,
    slots: Vec<ReadSlot>,
    tally: Tally,
    repair: bool,
    blocking: bool,
    route: ReadRoute,
    phase: Phase,
    answered: bool,
    repairs_issued: bool,
    reply_to: Option<ReplyTo>,
}

impl ReadMachine {
    /// A read of `key` from `targets` needing `required` replies; `repair`
    /// enables read repair, `blocking` repairs stale replicas before the answer.
    pub fn new(key: Key, targets: impl Into<Arc<[NodeId]>>, ring: Arc<Ring>, required: usize, repair: bool, blocking: bool) -> Self {
        let tally = Tally::new(targets, ring, required);
        ReadMachine {
            key,
            slots: vec![ReadSlot { reply: Answer::Waiting, repaired: None }; tally.targets().len()],
            tally,
            repair,
            blocking: blocking && repair,
            route: ReadRoute::AllDirect,
            phase: Phase::Reading,
            answered: false,
            repairs_issued: false,
            reply_to: None,
        }
    }

    /// The key read.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// How the reads are sent (all directly unless set).
    pub fn route(mut self, route: ReadRoute) -> Self {
        self.route = route;
        self
    }

    /// Answer `to` as soon as the read settles (instead of a coordinator waiting).
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self
    }

    /// The read's outcome for the client: the newest version once enough
    /// replicas replied (and stale ones were repaired); otherwise a failure, or
    /// a timeout if `timed_out` or still pending.
    pub fn result(&self, timed_out: bool) -> Result<Option<Version>> {
        let (replied, need, key) = (self.tally.acks(), self.tally.required(), &self.key);
        match &self.phase {
            Phase::Ready(slot) => Ok(slot.and_then(|i| self.replied(i).cloned())),
            Phase::RepairFailed(m) => Err(Error::Timeout(m.clone())),
            Phase::Repairing { tally, .. } => Err(Error::Timeout(repair_message(&self.key, tally))),
            Phase::Failed if !timed_out => {
                Err(Error::Failure(format!("{replied} of {need} replies for key {key}{}", self.tally.failures().suffix())))
            }
            _ => Err(Error::Timeout(format!("{replied} of {need} replies for key {key}"))),
        }
    }

    /// Replies and failures so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    fn replied(&self, slot: usize) -> Option<&Version> {
        if let Answer::Replied(Some(v)) = &self.slots[slot].reply { Some(v) } else { None }
    }

    /// The slot of the newest version among the replies so far.
    fn newest_slot(&self) -> Option<usize> {
        (0..self.slots.len()).filter(|&i| self.replied(i).is_some()).max_by(|&a, &b| self.replied(a).cmp(&self.replied(b)))
    }

    /// The newest version among the replies so far.
    pub fn newest(&self) -> Option<&Version> {
        self.newest_slot().and_then(|i| self.replied(i))
    }

    /// Slots that replied with something older than [`newest`](Self::newest), with their replica.
    pub fn stale_replied(&self) -> Vec<(usize, NodeId)> {
        let Some(newest) = self.newest() else { return Vec::new() };
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(&s.reply, Answer::Replied(v) if v.as_ref() < Some(newest)))
            .map(|(i, _)| (i, self.tally.target(i)))
            .collect()
    }

    /// Whether a blocking read repair is under way.
    pub fn repairing(&self) -> bool {
        matches!(self.phase, Phase::Repairing { .. })
    }

    /// The client has been answered: from now on (or now, if every reply is in) background repairs go out.
    pub fn answer(&mut self, out: &mut Vec<Command>) {
        self.answered = true;
        self.issue_repairs(out);
    }

    /// The level is reached or impossible: answer, or first repair the stale replicas.
    fn settle_reads(&mut self, out: &mut Vec<Command>) {
        match self.tally.decision() {
            Decision::Pending => {}
            Decision::Impossible => self.phase = Phase::Failed,
            Decision::Reached => {
                let newest = self.newest_slot();
                // A read already answered (a waiting coordinator gave up at its
                // deadline) leaves its stale replicas to the background repair.
                if let (true, false, Some(newest)) = (self.blocking, self.answered, newest) {
                    let version = self.replied(newest).expect("the newest slot replied").clone();
                    let stale: Vec<usize> = self.stale_replied().into_iter().map(|(slot, _)| slot).collect();
                    if !stale.is_empty() {
                        let n = self.slots.len();
                        let targets: Vec<NodeId> = stale.iter().map(|&s| self.tally.target(s)).collect();
                        for (i, &to) in targets.iter().enumerate() {
                            let msg = PeerRequest::Write { key: self.key.clone(), version: version.clone(), epoch: 0 };
                            out.push(Command::Send(Outgoing { slot: n + i, to, msg, route: Route::Direct }));
                        }
                        let tally = Tally::new(targets, self.tally.ring().clone(), stale.len());
                        let acked = SlotSet::new(stale.len());
                        self.phase = Phase::Repairing { newest, tally, stale, acked };
                        return;
                    }
                }
                self.phase = Phase::Ready(newest);
            }
        }
    }

    fn on_repair_reply(&mut self, i: usize, result: PeerResult) {
        let Phase::Repairing { newest, tally, stale, acked } = &mut self.phase else { return };
        if i >= stale.len() || !acked.insert(i) {
            return;
        }
        let newest = *newest;
        match result {
            Ok(PeerResponse::WriteAck { .. }) => {
                tally.ack();
                let ts = match &self.slots[newest].reply {
                    Answer::Replied(Some(v)) => v.ts,
                    _ => unreachable!("the newest slot replied"),
                };
                self.slots[stale[i]].repaired = Some(ts);
            }
            Ok(other) => tally.fail(i, &Error::Protocol(format!("unexpected reply to a repair: {other:?}"))),
            Err(e) => tally.fail(i, &e),
        }
        let next = match tally.decision() {
            Decision::Pending => return,
            Decision::Reached => Phase::Ready(Some(newest)),
            Decision::Impossible => Phase::RepairFailed(repair_message(&self.key, tally)),
        };
        self.phase = next;
    }

    fn issue_repairs(&mut self, out: &mut Vec<Command>) {
        if !self.repair || !self.answered || self.repairs_issued || !self.tally.complete() {
            return;
        }
        self.repairs_issued = true;
        let Some(newest) = self.newest().cloned() else { return };
        for (slot, target) in self.stale_replied() {
            if self.slots[slot].repaired != Some(newest.ts) {
                out.push(Command::Repair { target, key: self.key.clone(), version: newest.clone() });
            }
        }
    }
}

impl Machine for ReadMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        let mut out = Vec::with_capacity(self.slots.len());
        for (slot, s) in self.slots.iter().enumerate() {
            if !matches!(s.reply, Answer::Waiting) {
                continue;
            }
            let route = match self.route {
                ReadRoute::AllDirect => Route::Direct,
                ReadRoute::OneDirect(d) if d == slot => Route::Direct,
                ReadRoute::OneDirect(_) | ReadRoute::AllBatched => Route::Batched,
            };
            out.push(Outgoing { slot, to: self.tally.target(slot), msg: PeerRequest::Read { key: self.key.clone() }, route });
        }
        out
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let n = self.slots.len();
        if slot >= n {
            self.on_repair_reply(slot - n, result);
        } else {
            if !matches!(self.slots[slot].reply, Answer::Waiting) {
                return;
            }
            match result {
                Ok(PeerResponse::Read(v)) => {
                    self.slots[slot].reply = Answer::Replied(v);
                    self.tally.ack();
                }
                Ok(other) => {
                    self.slots[slot].reply = Answer::Failed;
                    self.tally.fail(slot, &Error::Protocol(format!("unexpected reply to a read: {other:?}")));
                }
                Err(e) => {
                    self.slots[slot].reply = Answer::Failed;
                    self.tally.fail(slot, &e);
                }
            }
            if matches!(self.phase, Phase::Reading) {
                self.settle_reads(out);
            }
        }
        if self.settled()
            && let Some(to) = self.reply_to.take()
        {
            let reply = match self.result(Instant::now() >= to.deadline) {
                Ok(v) => Reply::Read(v),
                Err(e) => Reply::Error(e),
            };
            out.push(Command::Answer { to, reply });
            self.answered = true;
        }
        self.issue_repairs(out);
    }

    fn settled(&self) -> bool {
        !matches!(self.phase, Phase::Reading | Phase::Repairing { .. })
    }

    fn complete(&self) -> bool {
        self.tally.complete() && !self.repairing()
    }

    /// The values held, plus the replies still to come charged at the largest
    /// value seen: a read finishing in the background will likely hold one
    /// copy per replica, and the budget must bound what it comes to hold, not
    /// only what it holds when it is charged.
    fn held_bytes(&self) -> usize {
        let (mut held, mut largest, mut waiting) = (0, 0, 0);
        for s in &self.slots {
            match &s.reply {
                Answer::Replied(Some(v)) => {
                    let n = v.value.as_ref().map_or(0, |v| v.len());
                    held += n;
                    largest = largest.max(n);
                }
                Answer::Waiting => waiting += 1,
                _ => {}
            }
        }
        held + waiting * largest
    }
}
