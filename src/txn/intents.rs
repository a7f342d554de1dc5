//! The intents one replica holds: the participants' half of two-phase
//! commit (see `docs/TRANSACTIONS-PLAN.md`).
//!
//! A **prepare** asks the replica to hold key `k` for transaction `T`: `T`'s
//! id, the anchor key whose replicas keep `T`'s record, and what `T` writes
//! to `k` (a value, a delete, or nothing when `T` only compares `k`). The
//! replica takes the key unless another transaction holds it, or a SERIAL
//! round is in flight on it (an accepted proposal not yet committed); then
//! it votes no and says why (naming the holder), and the coordinator
//! decides by wait-die: an older transaction asks again later, a younger
//! one aborts (see `txn::coordinator`). A yes vote carries the replica's cell,
//! so the coordinator judges the conditions on the newest version among a
//! quorum while the intents keep everyone else off the keys.
//!
//! A **resolution** ends `T`'s hold on `k`: on commit the intent's write
//! becomes the cell to store, stamped with the commit timestamp; on abort
//! it is dropped. Resolving a key `T` does not hold (already resolved,
//! never prepared here, or held by another) changes nothing, so
//! resolutions may be repeated and may arrive in any order.
//!
//! Every change returns its [`IntentRecord`]; the caller makes it durable
//! before it answers, and [`IntentTable::replay`] rebuilds the table from
//! those records after a restart (in log order).

use std::collections::HashMap;

use crate::cluster::key::Key;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;
use crate::txn::TxnId;

/// What a transaction does to a key it holds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentWrite {
    /// Writes this value.
    Put(Box<[u8]>),
    /// Deletes the key.
    Delete,
    /// Only compares the key (a condition): holds it, writes nothing.
    Compare,
}

/// One transaction's hold on one key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Intent {
    /// The transaction.
    pub txn: TxnId,
    /// The key whose replicas keep the transaction's record.
    pub anchor: Key,
    /// What the transaction does to the key.
    pub write: IntentWrite,
    /// When this replica took it (its clock's microseconds), for the timeout.
    pub since: u64,
}

/// Why a prepare was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Conflict {
    /// Another transaction holds the key (its id, its record's anchor, since when).
    Held {
        /// The holder.
        by: TxnId,
        /// The holder's record's anchor key.
        anchor: Key,
        /// When this replica gave it the key.
        since: u64,
    },
    /// A SERIAL round is in flight on the key (a proposal accepted, not committed).
    Serial,
    /// The transaction was resolved here already: a prepare that arrives
    /// after its resolution (overtaken on another link) takes nothing.
    Ended,
}

/// A replica's answer to a prepare.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Vote {
    /// The key is held for the transaction; the replica's cell of it.
    Yes(Option<Version>),
    /// Refused, and why.
    No(Conflict),
}

/// A change to make durable before answering.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IntentRecord {
    /// `key` is held by `intent`.
    Prepared {
        /// The key.
        key: Key,
        /// The intent.
        intent: Intent,
    },
    /// `txn`'s hold on `key` ended (its write, if committed, is a cell logged apart).
    Resolved {
        /// The key.
        key: Key,
        /// The transaction.
        txn: TxnId,
    },
}

/// How a transaction ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Committed at this timestamp: every write of it is stamped with it.
    Committed(Timestamp),
    /// Aborted: nothing of it is written.
    Aborted,
}

/// The intents a replica holds, by key (at most one a key).
#[derive(Debug, Clone, Default)]
pub struct IntentTable {
    keys: HashMap<Key, Intent>,
    /// Transactions resolved here, and when (this replica's clock): kept for
    /// a while (see [`forget_ended`](Self::forget_ended)), in memory only.
    ended: HashMap<TxnId, u64>,
}

impl IntentTable {
    /// A table holding nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// Asks to hold `key` for `intent`'s transaction. `serial` says whether
    /// a SERIAL round is in flight on the key; `cell` is the replica's cell
    /// of it. Idempotent: a repeated prepare of the holder votes yes again
    /// and records nothing (the first one's record stands).
    pub fn prepare(&mut self, key: &Key, intent: Intent, serial: bool, cell: Option<&Version>) -> (Vote, Option<IntentRecord>) {
        if let Some(held) = self.keys.get(key) {
            if held.txn == intent.txn {
                return (Vote::Yes(cell.cloned()), None);
            }
            if self.ended.contains_key(&intent.txn) {
                return (Vote::No(Conflict::Ended), None);
            }
            let conflict = Conflict::Held { by: held.txn, anchor: held.anchor.clone(), since: held.since };
            return (Vote::No(conflict), None);
        }
        if self.ended.contains_key(&intent.txn) {
            return (Vote::No(Conflict::Ended), None);
        }
        if serial {
            return (Vote::No(Conflict::Serial), None);
        }
        let record = IntentRecord::Prepared { key: key.clone(), intent: intent.clone() };
        self.keys.insert(key.clone(), intent);
        (Vote::Yes(cell.cloned()), Some(record))
    }

    /// Ends `txn`'s hold on `key` with `outcome`: on commit, the cell its
    /// write becomes (none for a compared key), and the record to log. A key
    /// `txn` does not hold: nothing.
    pub fn resolve(&mut self, key: &Key, txn: TxnId, outcome: Outcome) -> (Option<Version>, Option<IntentRecord>) {
        if self.keys.get(key).is_none_or(|held| held.txn != txn) {
            return (None, None);
        }
        let intent = self.keys.remove(key).expect("checked above");
        let cell = match (outcome, intent.write) {
            (Outcome::Committed(ts), IntentWrite::Put(value)) => Some(Version { ts, value: Some(value) }),
            (Outcome::Committed(ts), IntentWrite::Delete) => Some(Version::tombstone(ts)),
            (Outcome::Committed(_), IntentWrite::Compare) | (Outcome::Aborted, _) => None,
        };
        (cell, Some(IntentRecord::Resolved { key: key.clone(), txn }))
    }

    /// Notes that `txn` was resolved here at `now`: a prepare of it that
    /// arrives later takes nothing.
    pub fn note_ended(&mut self, txn: TxnId, now: u64) {
        self.ended.entry(txn).or_insert(now);
    }

    /// Forgets the resolutions noted before `micros` (a prepare is never
    /// that late: its coordinator's deadline passed long before).
    pub fn forget_ended(&mut self, micros: u64) {
        self.ended.retain(|_, &mut at| at >= micros);
    }

    /// The intent holding `key`, if any (a read returns it beside the cell).
    pub fn holder(&self, key: &Key) -> Option<&Intent> {
        self.keys.get(key)
    }

    /// The keys held since before `micros` (this replica's clock), with their
    /// intents: the ones recovery asks the records about.
    pub fn older_than(&self, micros: u64) -> Vec<(Key, Intent)> {
        let mut out: Vec<(Key, Intent)> = self.keys.iter().filter(|(_, i)| i.since < micros).map(|(k, i)| (k.clone(), i.clone())).collect();
        out.sort_by(|a, b| a.1.since.cmp(&b.1.since).then_with(|| a.0.cmp(&b.0)));
        out
    }

    /// Applies one logged record (in log order: a key's resolution comes
    /// after its prepare).
    pub fn replay(&mut self, record: &IntentRecord) {
        match record {
            IntentRecord::Prepared { key, intent } => {
                self.keys.insert(key.clone(), intent.clone());
            }
            IntentRecord::Resolved { key, txn } => {
                if self.keys.get(key).is_some_and(|held| held.txn == *txn) {
                    self.keys.remove(key);
                }
            }
        }
    }

    /// Every intent, in no particular order (for a snapshot).
    pub fn intents(&self) -> impl Iterator<Item = (&Key, &Intent)> {
        self.keys.iter()
    }

    /// How many keys are held.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key is held.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn txn(micros: u64) -> TxnId {
        TxnId(Timestamp { micros, node: 1 })
    }

    fn intent(t: u64, write: IntentWrite, since: u64) -> Intent {
        Intent { txn: txn(t), anchor: Key::byte(1), write, since }
    }

    fn put(v: &str) -> IntentWrite {
        IntentWrite::Put(v.as_bytes().into())
    }

    fn cell(micros: u64, v: &str) -> Version {
        Version::value(Timestamp { micros, node: 2 }, v)
    }

    /// A key is held by one transaction at a time: a second is refused and
    /// told who holds it; the holder's repeated prepare votes yes again and
    /// logs nothing; a SERIAL round in flight refuses any; a yes vote
    /// carries the cell.
    #[test]
    fn one_transaction_holds_a_key_at_a_time() {
        let mut t = IntentTable::new();
        let k = Key::byte(5);
        let (vote, record) = t.prepare(&k, intent(10, put("a"), 100), false, Some(&cell(3, "old")));
        assert_eq!(vote, Vote::Yes(Some(cell(3, "old"))));
        assert_eq!(record, Some(IntentRecord::Prepared { key: k.clone(), intent: intent(10, put("a"), 100) }));
        let (vote, record) = t.prepare(&k, intent(11, put("b"), 101), false, None);
        assert_eq!(vote, Vote::No(Conflict::Held { by: txn(10), anchor: Key::byte(1), since: 100 }));
        assert_eq!(record, None);
        assert_eq!(t.prepare(&k, intent(10, put("a"), 102), true, None), (Vote::Yes(None), None), "the holder again");
        assert_eq!(t.holder(&k), Some(&intent(10, put("a"), 100)), "the first prepare stands");
        let other = Key::byte(6);
        assert_eq!(t.prepare(&other, intent(12, IntentWrite::Delete, 103), true, None), (Vote::No(Conflict::Serial), None));
        assert_eq!(t.holder(&other), None);
    }

    /// A commit turns a write into the cell stamped with the commit
    /// timestamp (a compared key writes nothing); an abort drops it; either
    /// frees the key; a resolution of a key the transaction does not hold
    /// changes nothing, however often it comes.
    #[test]
    fn a_resolution_applies_a_committed_write_and_frees_the_key() {
        let at = Timestamp { micros: 50, node: 1 };
        let (a, b, c, d) = (Key::byte(1), Key::byte(2), Key::byte(3), Key::byte(4));
        let mut t = IntentTable::new();
        t.prepare(&a, intent(10, put("x"), 1), false, None);
        t.prepare(&b, intent(10, IntentWrite::Delete, 1), false, None);
        t.prepare(&c, intent(10, IntentWrite::Compare, 1), false, None);
        t.prepare(&d, intent(20, put("y"), 1), false, None);
        let committed = Outcome::Committed(at);
        assert_eq!(t.resolve(&a, txn(10), committed).0, Some(Version::value(at, "x")));
        assert_eq!(t.resolve(&b, txn(10), committed).0, Some(Version::tombstone(at)));
        let (none, record) = t.resolve(&c, txn(10), committed);
        assert_eq!((none, record), (None, Some(IntentRecord::Resolved { key: c.clone(), txn: txn(10) })));
        assert_eq!(t.resolve(&d, txn(10), committed), (None, None), "held by another");
        assert_eq!(t.resolve(&a, txn(10), committed), (None, None), "resolved already");
        assert_eq!(t.resolve(&d, txn(20), Outcome::Aborted).0, None);
        assert!(t.is_empty());
        assert!(matches!(t.prepare(&a, intent(30, put("z"), 2), false, None).0, Vote::Yes(_)), "free again");
    }

    /// The records rebuild the table (prepares, resolutions, a prepare of a
    /// key after another transaction's resolution of it), and the timeout
    /// lists the oldest first.
    #[test]
    fn the_records_rebuild_the_table_and_old_intents_are_listed() {
        let mut t = IntentTable::new();
        let mut log = Vec::new();
        let keys: Vec<Key> = (0..6).map(Key::byte).collect();
        for (i, k) in keys.iter().enumerate() {
            log.extend(t.prepare(k, intent(10 + i as u64, put("v"), 100 - i as u64), false, None).1);
        }
        log.extend(t.resolve(&keys[2], txn(12), Outcome::Aborted).1);
        log.extend(t.prepare(&keys[2], intent(40, put("w"), 200), false, None).1);
        log.extend(t.resolve(&keys[4], txn(14), Outcome::Committed(Timestamp { micros: 60, node: 1 })).1);
        let mut again = IntentTable::new();
        for r in &log {
            again.replay(r);
        }
        let mut held: Vec<(Key, Intent)> = again.intents().map(|(k, i)| (k.clone(), i.clone())).collect();
        held.sort_by(|a, b| a.0.cmp(&b.0));
        let mut want: Vec<(Key, Intent)> = t.intents().map(|(k, i)| (k.clone(), i.clone())).collect();
        want.sort_by(|a, b| a.0.cmp(&b.0));
        assert_eq!(held, want);
        assert_eq!(again.len(), 5);
        let old: Vec<u64> = again.older_than(100).iter().map(|(_, i)| i.since).collect();
        assert_eq!(old, vec![95, 97, 99], "keys 5, 3 and 1 (key 4 resolved, key 2 taken again later, key 0 not older)");
    }
}
