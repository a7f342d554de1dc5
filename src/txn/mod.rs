//! Multi-key transactions (issue 15), built piece by piece as
//! `docs/TRANSACTIONS-PLAN.md` lays out; what is here so far is the
//! participants' side, I/O-free:
//!
//! * [`intents`]: the intents a replica holds for transactions in flight —
//!   a prepare takes a key (or is refused, naming who holds it), a
//!   resolution turns a committed intent into the cell to write and drops
//!   an aborted one, and the ones older than the timeout are listed for
//!   recovery. Every change returns the record that makes it durable; the
//!   caller logs it before answering, as with the Paxos acceptor.
//!
//! * [`record`]: the transaction record, whose outcome is decided once by
//!   Paxos among the anchor key's replicas, so no participant ever waits on a
//!   dead coordinator.
//! * [`coordinator`]: the coordinator's machine: prepares, votes, the record,
//!   the answer, the resolutions.

pub mod coordinator;
pub mod intents;
pub mod mget;
pub mod record;

use std::collections::HashSet;

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::paxos::Expect;
use crate::storage::hlc::Timestamp;
use crate::txn::intents::IntentWrite;

/// The most keys a transaction or `mget` may name, whatever `--max-txn-keys`
/// says (and the most items a replica takes in one transaction message).
pub const MAX_TXN_KEYS: usize = 1024;

/// The default of `--max-txn-keys`: the most keys one client transaction
/// (or `mget`) names.
pub const DEFAULT_TXN_KEYS: usize = 64;

/// The default of `--max-txn-bytes`: the most bytes of values (written and
/// compared) one client transaction carries.
pub const DEFAULT_TXN_BYTES: usize = 1 << 20;

/// A client's transaction: if every condition holds on the keys' latest
/// committed values, every write, atomically; otherwise nothing.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct TxnSpec {
    /// Keys compared, each at most once.
    pub conditions: Vec<(Key, Expect)>,
    /// Keys written (`None`: deleted), each at most once.
    pub writes: Vec<(Key, Option<Box<[u8]>>)>,
}

/// One key of a transaction: what it writes there and what it expects there.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TxnKey {
    /// The key.
    pub key: Key,
    /// The write (or [`IntentWrite::Compare`] for a key only compared).
    pub write: IntentWrite,
    /// The condition on it, if any.
    pub condition: Option<Expect>,
}

impl TxnSpec {
    /// Checks the shape: at least one write or condition, each key written
    /// and compared at most once, at most `max_keys` keys (`--max-txn-keys`)
    /// and `max_bytes` of values (`--max-txn-bytes`).
    pub fn check(&self, max_keys: usize, max_bytes: usize) -> Result<()> {
        if self.writes.is_empty() && self.conditions.is_empty() {
            return Err(Error::InvalidRequest("a transaction needs at least one write or condition".into()));
        }
        let mut seen = HashSet::new();
        for (k, _) in &self.writes {
            if !seen.insert(k) {
                return Err(Error::InvalidRequest(format!("key {k} is written twice in one transaction")));
            }
        }
        let mut compared = HashSet::new();
        for (k, _) in &self.conditions {
            if !compared.insert(k) {
                return Err(Error::InvalidRequest(format!("key {k} is compared twice in one transaction")));
            }
        }
        let keys = seen.union(&compared).count();
        if keys > max_keys {
            return Err(Error::InvalidRequest(format!("a transaction of {keys} keys exceeds the limit of {max_keys} (--max-txn-keys)")));
        }
        let bytes: usize = self.writes.iter().map(|(_, v)| v.as_ref().map_or(0, |v| v.len())).sum::<usize>()
            + self.conditions.iter().map(|(_, e)| if let Expect::Equals(v) = e { v.len() } else { 0 }).sum::<usize>();
        if bytes > max_bytes {
            return Err(Error::InvalidRequest(format!(
                "a transaction of {bytes} bytes of values exceeds the limit of {max_bytes} (--max-txn-bytes)"
            )));
        }
        Ok(())
    }

    /// Every key once, writes first (in order), then keys only compared.
    pub fn keys(&self) -> Vec<TxnKey> {
        let condition = |k: &Key| self.conditions.iter().find(|(c, _)| c == k).map(|(_, e)| e.clone());
        let mut out: Vec<TxnKey> = self
            .writes
            .iter()
            .map(|(k, v)| TxnKey {
                key: k.clone(),
                write: match v {
                    Some(v) => IntentWrite::Put(v.clone()),
                    None => IntentWrite::Delete,
                },
                condition: condition(k),
            })
            .collect();
        for (k, e) in &self.conditions {
            if !self.writes.iter().any(|(w, _)| w == k) {
                out.push(TxnKey { key: k.clone(), write: IntentWrite::Compare, condition: Some(e.clone()) });
            }
        }
        out
    }
}

/// A machine's requests: the target and purpose of each slot, whether its
/// outcome came, and the messages not yet handed out (the bookkeeping the
/// transaction, recovery and `mget` machines share).
pub(crate) struct Sent<W> {
    slots: Vec<(crate::cluster::ring::NodeId, W, bool)>,
    waiting: usize,
    out: Vec<crate::coordinator::command::Outgoing>,
}

impl<W: Clone> Sent<W> {
    pub(crate) fn new() -> Self {
        Sent { slots: Vec::new(), waiting: 0, out: Vec::new() }
    }

    /// Queues `msg` to `to`, for `what`.
    pub(crate) fn send(&mut self, to: crate::cluster::ring::NodeId, what: W, msg: crate::message::PeerRequest) {
        use crate::coordinator::command::{Outgoing, Route};
        self.out.push(Outgoing { slot: self.slots.len(), to, msg, route: Route::Direct });
        self.slots.push((to, what, false));
        self.waiting += 1;
    }

    /// Queues `msg` to `to`, for `what`, to be sent after `delay`.
    pub(crate) fn send_after(
        &mut self,
        to: crate::cluster::ring::NodeId,
        what: W,
        msg: crate::message::PeerRequest,
        delay: std::time::Duration,
    ) {
        self.send(to, what, msg);
        if let Some(last) = self.out.last_mut() {
            last.route = crate::coordinator::command::Route::After(delay);
        }
    }

    /// The slot's target and purpose when its outcome first comes (`None`
    /// for a slot never used or answered already).
    pub(crate) fn arrived(&mut self, slot: usize) -> Option<(crate::cluster::ring::NodeId, W)> {
        let (to, what, done) = self.slots.get_mut(slot)?;
        if *done {
            return None;
        }
        *done = true;
        self.waiting -= 1;
        Some((*to, what.clone()))
    }

    /// Whether every slot has its outcome.
    pub(crate) fn all_arrived(&self) -> bool {
        self.waiting == 0
    }

    /// Whether a slot `f` picks still waits for its outcome.
    pub(crate) fn pending(&self, f: impl Fn(&W) -> bool) -> bool {
        self.slots.iter().any(|(_, w, done)| !done && f(w))
    }

    /// The messages queued since the last call.
    pub(crate) fn drain(&mut self) -> Vec<crate::coordinator::command::Outgoing> {
        std::mem::take(&mut self.out)
    }
}

/// Every node of the replica lists, in first-seen order, with the indexes
/// of the lists (the keys) it is in: one message a node.
pub(crate) fn by_node<'a>(
    lists: impl Iterator<Item = &'a [crate::cluster::ring::NodeId]>,
) -> Vec<(crate::cluster::ring::NodeId, Vec<usize>)> {
    let mut nodes: Vec<(crate::cluster::ring::NodeId, Vec<usize>)> = Vec::new();
    for (i, replicas) in lists.enumerate() {
        for &r in replicas {
            match nodes.iter_mut().find(|(n, _)| *n == r) {
                Some((_, idx)) => idx.push(i),
                None => nodes.push((r, vec![i])),
            }
        }
    }
    nodes
}

/// Sets a machine's answer, once: a later one is dropped; a deferred
/// client (`reply_to`) is answered with a [`Command::Answer`](crate::coordinator::command::Command::Answer).
pub(crate) fn answer_once(
    answer: &mut Option<crate::message::Reply>,
    reply_to: &Option<crate::coordinator::command::ReplyTo>,
    reply: crate::message::Reply,
    out: &mut Vec<crate::coordinator::command::Command>,
) {
    if answer.is_some() {
        return;
    }
    if let Some(to) = reply_to.clone() {
        out.push(crate::coordinator::command::Command::Answer { to, reply: reply.clone() });
    }
    *answer = Some(reply);
}

/// An intent as a read sees it: the transaction, its record's anchor, its write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct HeldBy {
    /// The transaction holding the key.
    pub txn: TxnId,
    /// Its record's anchor key.
    pub anchor: Key,
    /// What it writes to the key.
    pub write: IntentWrite,
}

/// A transaction's id: its coordinator's HLC timestamp when it began
/// (unique: the clock's node id is in it), which also orders transactions
/// by age for conflicts (the smaller, the older).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub Timestamp);

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "txn {}.{}", self.0.micros, self.0.node)
    }
}
