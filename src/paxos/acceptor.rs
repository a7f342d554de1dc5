//! The acceptor: per-key Paxos state on a replica, and its handlers.
//!
//! Handlers change the in-memory state and return the record that makes the
//! change durable together with the reply; the caller persists (group commit,
//! in order) before sending the reply. [`Acceptor::restore`] rebuilds the
//! state from the persisted records after a restart.
//!
//! # Bounded memory
//!
//! A key's state is dropped as soon as the store's cell says all of it: no
//! accepted proposal pending, and nothing promised or committed above the
//! cell's timestamp. [`Acceptor::handle`] (the path a replica serves) does
//! this after a commit, which normally leaves exactly that, so the acceptor
//! holds only keys with a round in flight. It is safe because `handle`
//! refuses a prepare *and a proposal* at or below the key's cell: a
//! forgotten state behaves as "promised = committed = the cell's timestamp",
//! which is at least as strict as what it forgot. (The `on_*` handlers alone
//! keep every state; they do not see the store.) A key's records go from the
//! log at the next snapshot, which holds only the states still kept.

use std::collections::HashMap;

use crate::cluster::key::Key;
use crate::paxos::{Ballot, Proposal, Request, Response};
use crate::storage::cell::Version;

/// What an acceptor holds for one key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KeyState {
    /// The highest ballot promised (an accept also promises its ballot).
    pub promised: Ballot,
    /// The newest accepted proposal not yet superseded by a commit here.
    pub accepted: Option<Proposal>,
    /// The ballot of the newest commit applied here.
    pub committed: Ballot,
}

/// A state change to make durable before the reply that goes with it is sent.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PersistRecord {
    /// `ballot` was promised for `key`.
    Promise {
        /// The key.
        key: Key,
        /// The promised ballot.
        ballot: Ballot,
    },
    /// `proposal` was accepted for `key`.
    Accept {
        /// The key.
        key: Key,
        /// The accepted proposal.
        proposal: Proposal,
    },
    /// `proposal` was committed for `key` (its cell is written too; the two
    /// can share one log record).
    Commit {
        /// The key.
        key: Key,
        /// The committed proposal.
        proposal: Proposal,
    },
    /// The acceptance of `ballot` for `key` was withdrawn (see
    /// [`Acceptor::withdraw`]). Replayed in log order, after the accept.
    Withdraw {
        /// The key.
        key: Key,
        /// The withdrawn proposal's ballot.
        ballot: Ballot,
    },
}

/// A handled request: persist `record` (if any), apply `apply` to the store
/// (if any), and only then send `reply`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Handled {
    /// The state change to persist first.
    pub record: Option<PersistRecord>,
    /// The cell to write to the store (a commit).
    pub apply: Option<Version>,
    /// The answer to the proposer.
    pub reply: Response,
}

/// The Paxos acceptor of one replica: the state of every key it has seen.
#[derive(Debug, Clone, Default)]
pub struct Acceptor {
    keys: HashMap<Key, KeyState>,
}

impl Acceptor {
    /// An acceptor that has promised nothing.
    pub fn new() -> Self {
        Self::default()
    }

    /// The acceptor rebuilt from the records it persisted, in log order.
    pub fn restore<'a>(records: impl IntoIterator<Item = &'a PersistRecord>) -> Self {
        let mut a = Acceptor::new();
        for r in records {
            a.replay(r);
        }
        a
    }

    /// Applies one persisted record (idempotent; order-insensitive for safety
    /// — every field only moves forward — except a withdrawal, which logs
    /// replay in their order, after the accept it withdraws).
    pub fn replay(&mut self, record: &PersistRecord) {
        match record {
            PersistRecord::Promise { key, ballot } => {
                let s = self.keys.entry(key.clone()).or_default();
                s.promised = s.promised.max(*ballot);
            }
            PersistRecord::Accept { key, proposal } => {
                let s = self.keys.entry(key.clone()).or_default();
                s.promised = s.promised.max(proposal.ballot);
                if proposal.ballot > s.committed && s.accepted.as_ref().is_none_or(|a| proposal.ballot > a.ballot) {
                    s.accepted = Some(proposal.clone());
                }
            }
            PersistRecord::Commit { key, proposal } => {
                let s = self.keys.entry(key.clone()).or_default();
                s.committed = s.committed.max(proposal.ballot);
                if s.accepted.as_ref().is_some_and(|a| a.ballot <= s.committed) {
                    s.accepted = None;
                }
            }
            PersistRecord::Withdraw { key, ballot } => {
                if let Some(s) = self.keys.get_mut(key)
                    && s.accepted.as_ref().is_some_and(|a| a.ballot == *ballot)
                {
                    s.accepted = None;
                }
            }
        }
    }

    /// Withdraws this acceptor's acceptance of the proposal at `ballot` for
    /// `key`, if it still holds it and has promised nothing above it since:
    /// then no proposer has been shown it (a promise reply carries the
    /// accepted proposal, and every promise after the accept would be of a
    /// higher ballot). The proposer's own node calls it when every other
    /// replica refused that proposal: they promised higher, so none will ever
    /// accept it, and with this acceptance gone nobody can complete it — it
    /// is certainly not chosen, and its operation may start over. Returns the
    /// record to persist (before starting over), or `None` if it cannot.
    pub fn withdraw(&mut self, key: &Key, ballot: Ballot) -> Option<PersistRecord> {
        let s = self.keys.get(key)?;
        if s.promised != ballot || s.accepted.as_ref().is_none_or(|a| a.ballot != ballot) {
            return None;
        }
        let r = PersistRecord::Withdraw { key: key.clone(), ballot };
        self.replay(&r);
        Some(r)
    }

    /// The state held for `key`, if any.
    pub fn state(&self, key: &Key) -> Option<&KeyState> {
        self.keys.get(key)
    }

    /// Every key's state, in no particular order (for a snapshot).
    pub fn states(&self) -> impl Iterator<Item = (&Key, &KeyState)> {
        self.keys.iter()
    }

    /// Merges a key's state read back from a snapshot (idempotent; every
    /// field only moves forward, as in [`replay`](Self::replay)).
    pub fn load(&mut self, key: Key, state: KeyState) {
        let s = self.keys.entry(key).or_default();
        s.promised = s.promised.max(state.promised);
        s.committed = s.committed.max(state.committed);
        if let Some(a) = state.accepted
            && s.accepted.as_ref().is_none_or(|held| a.ballot > held.ballot)
        {
            s.accepted = Some(a);
        }
        if s.accepted.as_ref().is_some_and(|a| a.ballot <= s.committed) {
            s.accepted = None;
        }
    }

    /// Puts `key`'s state back as it was (`None`: no state), undoing a
    /// handled request whose record could not be logged.
    pub fn reset(&mut self, key: &Key, state: Option<KeyState>) {
        match state {
            Some(s) => {
                self.keys.insert(key.clone(), s);
            }
            None => {
                self.keys.remove(key);
            }
        }
    }

    /// Keys with state (for memory accounting).
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether no key has state.
    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    /// Drops `key`'s state if the cell at ballot `cell` says all of it (see the module essay).
    fn forget_if_settled(&mut self, key: &Key, cell: Ballot) {
        if self.keys.get(key).is_some_and(|s| s.accepted.is_none() && s.promised <= cell && s.committed <= cell) {
            self.keys.remove(key);
        }
    }

    /// Handles any request; `current` is the store's cell for the request's
    /// key. Refuses a proposal at or below that cell, and forgets a key's
    /// state once a commit leaves nothing the cell does not say.
    pub fn handle(&mut self, request: Request, current: Option<&Version>) -> Handled {
        match request {
            Request::Prepare { key, ballot } => {
                let (record, reply) = self.on_prepare(&key, ballot, current);
                Handled { record, apply: None, reply }
            }
            Request::Propose { key, proposal } => {
                let cell = current.map_or(Ballot::ZERO, |v| Ballot(v.ts));
                if proposal.ballot <= cell {
                    // At or below a cell the store holds: a newer value is there (and
                    // a forgotten state's promise is the cell's timestamp).
                    let s = self.keys.get(&key).cloned().unwrap_or_default();
                    let promised = s.promised.max(s.committed).max(cell);
                    return Handled { record: None, apply: None, reply: Response::Rejected { key, ballot: proposal.ballot, promised } };
                }
                let (record, reply) = self.on_propose(&key, proposal);
                Handled { record, apply: None, reply }
            }
            Request::Commit { key, proposal } => {
                let (record, apply, reply) = self.on_commit(&key, proposal);
                // The store's cell once the commit is applied (last write wins).
                let cell = [current, apply.as_ref()].into_iter().flatten().map(|v| Ballot(v.ts)).max().unwrap_or(Ballot::ZERO);
                self.forget_if_settled(&key, cell);
                Handled { record, apply, reply }
            }
        }
    }

    /// Phase 1. Promises `ballot` if it is above everything promised,
    /// committed, or held in the store (`current`, the key's cell); a repeat
    /// of the promised ballot is promised again (no new record). The promise
    /// carries `current` and any accepted proposal newer than the last commit.
    pub fn on_prepare(&mut self, key: &Key, ballot: Ballot, current: Option<&Version>) -> (Option<PersistRecord>, Response) {
        let s = self.keys.get(key).cloned().unwrap_or_default();
        let cell = current.map_or(Ballot::ZERO, |v| Ballot(v.ts));
        let floor = s.promised.max(s.committed).max(cell);
        let above_commits = ballot > s.committed.max(cell);
        let record = if ballot > floor {
            let r = PersistRecord::Promise { key: key.clone(), ballot };
            self.replay(&r);
            Some(r)
        } else if ballot == s.promised && above_commits {
            None
        } else {
            return (None, Response::Rejected { key: key.clone(), ballot, promised: floor });
        };
        let s = &self.keys[key];
        let accepted = s.accepted.clone().filter(|a| a.ballot > s.committed.max(cell));
        (record, Response::Promise { key: key.clone(), ballot, accepted, committed: current.cloned() })
    }

    /// Phase 2. Accepts `proposal` unless a higher ballot was promised or a
    /// newer commit applied; a repeat of the accepted proposal is accepted
    /// again (no new record).
    pub fn on_propose(&mut self, key: &Key, proposal: Proposal) -> (Option<PersistRecord>, Response) {
        let s = self.keys.get(key).cloned().unwrap_or_default();
        let ballot = proposal.ballot;
        if ballot < s.promised || ballot <= s.committed {
            return (None, Response::Rejected { key: key.clone(), ballot, promised: s.promised.max(s.committed) });
        }
        if s.accepted.as_ref().is_some_and(|a| a.ballot == ballot) {
            return (None, Response::Accepted { key: key.clone(), ballot });
        }
        let r = PersistRecord::Accept { key: key.clone(), proposal };
        self.replay(&r);
        (Some(r), Response::Accepted { key: key.clone(), ballot })
    }

    /// Commit: always applied (a commit is only sent for a chosen value, so
    /// it needs no promise). Returns the cell to write; a commit at or below
    /// the last one here writes nothing and is acknowledged.
    pub fn on_commit(&mut self, key: &Key, proposal: Proposal) -> (Option<PersistRecord>, Option<Version>, Response) {
        let ballot = proposal.ballot;
        let reply = Response::Committed { key: key.clone(), ballot };
        if self.keys.get(key).is_some_and(|s| s.committed >= ballot) {
            return (None, None, reply);
        }
        let cell = proposal.version();
        let r = PersistRecord::Commit { key: key.clone(), proposal };
        self.replay(&r);
        (Some(r), Some(cell), reply)
    }
}
