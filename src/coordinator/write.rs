//! The write machine: a version sent to every replica of a key.
//!
//! **Order that survives clock skew.** Last-write-wins orders writes by their
//! coordinators' clocks, so a coordinator whose clock lags would stamp a write
//! *below* one acknowledged before it started, and the newer write would be
//! silently lost. A replica's ack therefore says when the write did not
//! become its current version and what it holds instead. If an ack counted
//! toward the level shows a newer version, the machine does not answer: it
//! re-stamps the write above the newest timestamp it saw (the node's clock
//! observes it, then ticks) and sends it again to every replica, answering
//! when that second round reaches the level. One re-stamp suffices: a write
//! acknowledged before this one started is on a quorum, which meets this
//! write's quorum in some replica, so the first round's counted acks show it
//! (or something newer); anything newer the second round meets was not
//! acknowledged before this write started, so it is concurrent and either
//! order is right. At ONE no quorums meet, and the guarantee is only as good
//! as the replica that answered. Clocks that agree never cause a second round.
//!
//! **Epochs.** A write carries the cluster metadata epoch its replicas were
//! chosen at ([`WriteMachine::routed_at`]). A replica holding a newer epoch
//! refuses it ([`Error::StaleEpoch`]): the newer epoch may add a pending
//! replica (a range on the move) that this write's targets lack. Such a
//! refusal gets no hint (the replica is up) and makes the machine ask for a
//! [`Command::Reroute`]: the node catches up on the metadata and sends the
//! same version again to the new epoch's replicas. If the refusals kept the
//! write from its level, the client's answer is the rerouted write's; if it
//! reached its level anyway, the client is answered now and the reroute runs
//! in the background (the replicas that acked held the old epoch when they
//! applied it, so a movement's copy, which starts only once every live
//! replica holds the new epoch, carries their copies along).

use std::sync::Arc;
use std::time::Instant;

use crate::cluster::consistency::{Consistency, Decision};
use crate::cluster::key::Key;
use crate::cluster::ring::{NodeId, Ring};
use crate::coordinator::call::Machine;
use crate::coordinator::command::{Command, Outgoing, ReplyTo, Route};
use crate::coordinator::tally::{SlotSet, Tally};
use crate::error::{Error, Result};
use crate::message::{PeerRequest, PeerResponse, PeerResult, Reply};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// A write sent to every replica of a key: counts acks toward the level; a
/// replica that fails or times out gets a hint (when hinted handoff is on),
/// even if the failure arrives after the client was answered.
pub struct WriteMachine {
    key: Key,
    version: Version,
    answered: SlotSet,
    tally: Tally,
    hint: bool,
    reply_to: Option<ReplyTo>,
    restamp: Option<Restamp>,
    /// The newest timestamp above the write's that an ack of the first round reported.
    newer_held: Option<Timestamp>,
    /// A newer version the write could not be re-stamped above (too far ahead of the clock).
    superseded: Option<Timestamp>,
    /// The first slot of the current round: 0, then the replica count once re-stamped
    /// (replies to the first round, arriving later, are then ignored).
    round_base: usize,
    /// The metadata epoch the targets were chosen at (0: not checked by the replicas).
    epoch: u64,
    /// The level to reroute at, and how many more reroutes are allowed (see the module docs).
    reroute: Option<(Consistency, u8)>,
    /// Whether a replica refused the write as routed at an old epoch.
    stale: bool,
    /// Whether a reroute was asked for.
    rerouted: bool,
    /// Whether the machine answers the client itself ([`reply_to`](Self::reply_to)),
    /// rather than a coordinator waiting on the call.
    deferred: bool,
}

/// Gives a write a new timestamp above the one given (the node's clock
/// observes it, then ticks); `None` if the clock refuses it (too far ahead).
pub type Restamp = Arc<dyn Fn(Timestamp) -> Option<Timestamp> + Send + Sync>;

impl WriteMachine {
    /// A write of `version` to `targets` needing `required` acks; `hint` keeps hints for failed replicas.
    pub fn new(key: Key, version: Version, targets: impl Into<Arc<[NodeId]>>, ring: Arc<Ring>, required: usize, hint: bool) -> Self {
        let tally = Tally::new(targets, ring, required);
        WriteMachine {
            key,
            version,
            answered: SlotSet::new(tally.targets().len()),
            tally,
            hint,
            reply_to: None,
            restamp: None,
            newer_held: None,
            superseded: None,
            round_base: 0,
            epoch: 0,
            reroute: None,
            stale: false,
            rerouted: false,
            deferred: false,
        }
    }

    /// The targets were chosen at metadata epoch `epoch` for `level`: the
    /// replicas refuse the write if they hold a newer one, and the machine
    /// then asks for it to be sent again at the newer epoch, at most
    /// `attempts` more times (see the module docs).
    pub fn routed_at(mut self, epoch: u64, level: Consistency, attempts: u8) -> Self {
        self.epoch = epoch;
        self.reroute = Some((level, attempts));
        self
    }

    /// The metadata epoch the targets were chosen at.
    pub fn epoch(&self) -> u64 {
        self.epoch
    }

    /// Whether a replica refused the write as routed at an older epoch than it holds.
    pub fn stale(&self) -> bool {
        self.stale
    }

    /// The key written.
    pub fn key(&self) -> &Key {
        &self.key
    }

    /// Re-stamp the write with `restamp` and send it again when an ack shows a
    /// newer version (see the module docs).
    pub fn restamp_with(mut self, restamp: Restamp) -> Self {
        self.restamp = Some(restamp);
        self
    }

    /// The version being written (its timestamp changes if the write is re-stamped).
    pub fn version(&self) -> &Version {
        &self.version
    }

    /// Whether the write was re-stamped and sent again.
    pub fn restamped(&self) -> bool {
        self.round_base > 0
    }

    /// The messages of the current round, one for each replica whose slot has no outcome yet.
    fn sends(&self) -> Vec<Outgoing> {
        let write = |(i, &to)| {
            let msg = PeerRequest::Write { key: self.key.clone(), version: self.version.clone(), epoch: self.epoch };
            Outgoing { slot: self.round_base + i, to, msg, route: Route::Direct }
        };
        self.tally.targets().iter().enumerate().map(write).collect()
    }

    /// After the first round reached its level: starts the second round if an
    /// ack showed a newer version and the clock gives a timestamp above it.
    fn second_round(&mut self, out: &mut Vec<Command>) -> bool {
        let (Some(newer), Some(restamp), 0) = (self.newer_held, &self.restamp, self.round_base) else { return false };
        let Some(ts) = restamp(newer) else {
            // The clock will not go that far ahead (past --max-clock-offset):
            // the write stays where it is, and the client hears it was superseded.
            self.superseded = Some(newer);
            return false;
        };
        self.version.ts = ts;
        let n = self.tally.targets().len();
        self.round_base = n;
        self.answered = SlotSet::new(n);
        self.tally = Tally::new(self.tally.targets().to_vec(), self.tally.ring().clone(), self.tally.required());
        out.extend(self.sends().into_iter().map(Command::Send));
        true
    }

    /// Acks and failures so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Answer `to` as soon as the write settles (instead of a coordinator waiting).
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self.deferred = true;
        self
    }

    /// The write's outcome for the client: its timestamp and acks once the level
    /// is reached; otherwise a failure, or a timeout if `timed_out` or still pending.
    pub fn result(&self, timed_out: bool) -> Result<(Timestamp, usize)> {
        let (acks, need, key) = (self.tally.acks(), self.tally.required(), &self.key);
        match self.tally.decision() {
            Decision::Reached => match self.superseded {
                None => Ok((self.version.ts, acks)),
                Some(newer) => Err(Error::Failure(format!(
                    "the write to key {key} was applied ({acks} of {need} acks) but a version stamped {} ms after it, \
                     too far ahead of this coordinator's clock to re-stamp above (--max-clock-offset), stays current; check the clocks",
                    newer.micros.saturating_sub(self.version.ts.micros) / 1000
                ))),
            },
            Decision::Impossible if !timed_out => Err(Error::Failure(format!(
                "{acks} of {need} acks for key {key}; the write may or may not have been applied{}",
                self.tally.failures().suffix()
            ))),
            _ => Err(Error::Timeout(format!("{acks} of {need} acks for key {key}; the write may or may not have been applied"))),
        }
    }
}

impl Machine for WriteMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        self.sends()
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let Some(slot) = slot.checked_sub(self.round_base) else { return };
        if slot >= self.tally.targets().len() || !self.answered.insert(slot) {
            return;
        }
        let err = match result {
            Ok(PeerResponse::WriteAck { held, .. }) => {
                if let Some(h) = held.filter(|&h| h > self.version.ts && self.round_base == 0 && !self.tally.settled()) {
                    self.newer_held = self.newer_held.max(Some(h));
                }
                None
            }
            Ok(other) => Some(Error::Protocol(format!("unexpected reply to a write: {other:?}"))),
            Err(e) => Some(e),
        };
        match err {
            None => self.tally.ack(),
            Some(err @ Error::StaleEpoch(_)) if self.reroute.is_some() => {
                // Up, and newer: no hint; the write goes again at its epoch.
                self.stale = true;
                self.tally.fail(slot, &err);
            }
            Some(err) => {
                self.tally.fail(slot, &err);
                if self.hint {
                    out.push(Command::Hint { target: self.tally.target(slot), key: self.key.clone(), version: self.version.clone() });
                }
            }
        }
        if self.tally.settled() && self.tally.decision() == Decision::Reached && self.second_round(out) {
            return;
        }
        if self.stale && !self.rerouted && self.tally.settled() {
            let reached = self.tally.decision() == Decision::Reached;
            let (level, attempts) = self.reroute.expect("stale only when rerouting");
            if !reached && !self.deferred {
                // A coordinator waits on this call: it reroutes itself.
                return;
            }
            let (key, version, epoch) = (self.key.clone(), self.version.clone(), self.epoch);
            if attempts > 0 {
                self.rerouted = true;
                // Kept from its level: the rerouted write answers the client
                // (if not answered yet); reached anyway: rerouted in the background.
                let to = if reached { None } else { self.reply_to.take() };
                out.push(Command::Reroute { to, key, version, level, epoch, attempts: attempts - 1 });
                if !reached {
                    return;
                }
            }
        }
        if self.tally.settled()
            && let Some(to) = self.reply_to.take()
        {
            let reply = match self.result(Instant::now() >= to.deadline) {
                Ok((ts, acks)) => Reply::Write { ts, acks },
                Err(e) => Reply::Error(e),
            };
            out.push(Command::Answer { to, reply });
        }
    }

    fn settled(&self) -> bool {
        self.tally.settled()
    }

    fn complete(&self) -> bool {
        self.tally.complete()
    }

    fn held_bytes(&self) -> usize {
        self.version.value.as_ref().map_or(0, |v| v.len())
    }
}
