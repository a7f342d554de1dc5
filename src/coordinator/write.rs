//! The write machine: a version sent to every replica of a key.

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
}

impl WriteMachine {
    /// A write of `version` to `targets` needing `required` acks; `hint` keeps hints for failed replicas.
    pub fn new(key: Key, version: Version, targets: impl Into<Arc<[NodeId]>>, ring: Arc<Ring>, required: usize, hint: bool) -> Self {
        let tally = Tally::new(targets, ring, required);
        WriteMachine { key, version, answered: SlotSet::new(tally.targets().len()), tally, hint, reply_to: None }
    }

    /// Acks and failures so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Answer `to` as soon as the write settles (instead of a coordinator waiting).
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self
    }

    /// The write's outcome for the client: its timestamp and acks once the level
    /// is reached; otherwise a failure, or a timeout if `timed_out` or still pending.
    pub fn result(&self, timed_out: bool) -> Result<(Timestamp, usize)> {
        let (acks, need, key) = (self.tally.acks(), self.tally.required(), &self.key);
        match self.tally.decision() {
            Decision::Reached => Ok((self.version.ts, acks)),
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
        let write = |(slot, &to)| {
            let msg = PeerRequest::Write { key: self.key.clone(), version: self.version.clone() };
            Outgoing { slot, to, msg, route: Route::Direct }
        };
        self.tally.targets().iter().enumerate().map(write).collect()
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        if !self.answered.insert(slot) {
            return;
        }
        let err = match result {
            Ok(PeerResponse::WriteAck { .. }) => None,
            Ok(other) => Some(Error::Protocol(format!("unexpected reply to a write: {other:?}"))),
            Err(e) => Some(e),
        };
        match err {
            None => self.tally.ack(),
            Some(err) => {
                self.tally.fail(slot, &err);
                if self.hint {
                    out.push(Command::Hint { target: self.tally.target(slot), key: self.key.clone(), version: self.version.clone() });
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
