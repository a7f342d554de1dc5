//! Anti-entropy: replicas of a slot compare hash trees and exchange only the
//! cells that differ, so they converge without anyone reading the keys.
//!
//! # Groups and trees
//!
//! A slot's cells fall into *groups*, one per replica set: in a byte-ordered
//! ring a slot is one key and one group; in a murmur3 ring a slot spans one
//! or more token ranges, each with its own replicas. Every replica keeps no
//! tree on disk: asked for one, it walks the slot once (under the slot's read
//! lock, nothing copied) and hashes each cell's key, timestamp and tombstone
//! flag ([`cell_hash`]) into one of [`LEAVES`] leaves — the leaf is the six
//! bits of the key's token below the slot's byte, so a leaf is a contiguous
//! stretch of the ring — by XOR. The root is the XOR of the leaves. Two
//! replicas hold the same cells of a group exactly when (but for a 2⁻⁶⁴
//! collision) their roots are equal; a leaf narrows a difference down to a
//! 64th of the group. XOR makes the tree independent of the order cells were
//! written in and costs one pass.
//!
//! # One slot's exchange, as a machine
//!
//! [`SyncMachine`] compares one slot among the live replicas of the groups
//! it was given, in three rounds:
//!
//! 1. **Roots.** Every replica sends its groups' roots (about 20 bytes a
//!    group). Groups whose replicas agree are done: that is the whole cost of
//!    a pass over replicas that already agree.
//! 2. **Leaves.** The replicas of groups that differ send their 64 leaves;
//!    the leaves that differ make a mask.
//! 3. **Cells.** The replicas send their cells of those leaves, whole, in key
//!    order, a page of about 1 MiB at a time. Only keys up to the smallest
//!    last key of the pages that stopped early are compared (past it, a
//!    replica's silence is not yet an absence); the newest version of each key
//!    goes, in [`PeerRequest::Apply`] batches, to every replica that holds an
//!    older one or none; the next page starts after that key.
//!
//! Versions merge by last-write-wins, so sending the newest version is always
//! safe: a replica that took a newer write meanwhile keeps it. A replica that
//! fails mid-exchange is left out of the rest of its group (its silence proves
//! nothing); a group with fewer than two replicas answering is skipped, and
//! counted so. The machine is I/O-free like the others: it returns the
//! messages to send; the node runs it in a [`Call`](crate::coordinator::call::Call),
//! and the simulated network drives it in tests.

use std::collections::{BTreeMap, BTreeSet};

use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::cluster::token::murmur3_x64_128;
use crate::coordinator::call::Machine;
use crate::coordinator::command::{Command, Outgoing, Route};
use crate::message::sync::{GroupTree, LEAVES};
use crate::message::{MAX_BATCH, MAX_PAGE_BYTES, PeerRequest, PeerResponse, PeerResult};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// A cell's contribution to its leaf: a hash of its key, timestamp and tombstone flag.
pub fn cell_hash(key: &[u8], ts: Timestamp, tombstone: bool) -> u64 {
    let seed = ts.micros.rotate_left(17) ^ u64::from(ts.node) ^ u64::from(tombstone);
    murmur3_x64_128(key, seed).0
}

/// One replica's trees of a slot, built cell by cell.
#[derive(Debug, Default)]
pub struct TreeBuilder {
    groups: BTreeMap<u32, (u64, [u64; LEAVES])>,
}

impl TreeBuilder {
    /// Adds a cell of group `range`, leaf `leaf`.
    pub fn add(&mut self, range: u32, leaf: u8, hash: u64) {
        let g = self.groups.entry(range).or_insert((0, [0; LEAVES]));
        g.0 += 1;
        g.1[leaf as usize % LEAVES] ^= hash;
    }

    /// The trees, with their leaves if `leaves`.
    pub fn finish(self, leaves: bool) -> Vec<GroupTree> {
        self.groups
            .into_iter()
            .map(|(range, (keys, l))| GroupTree {
                range,
                keys,
                root: l.iter().fold(0, |a, b| a ^ b),
                leaves: if leaves { l.to_vec() } else { Vec::new() },
            })
            .collect()
    }
}

/// A group to compare: its token range and the replicas to compare it among.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Group {
    /// The token range's index in the ring.
    pub range: u32,
    /// Its replicas (those believed alive when the exchange started).
    pub replicas: Vec<NodeId>,
}

/// What an exchange did (summed over a pass by the node).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SyncStats {
    /// Groups compared.
    pub groups: u64,
    /// Groups whose replicas differed.
    pub differing: u64,
    /// Groups with fewer than two replicas answering.
    pub skipped: u64,
    /// Cells sent to replicas that lacked them (or held older versions).
    pub cells_sent: u64,
    /// Bytes of keys and values in those cells.
    pub bytes_sent: u64,
    /// Bytes of trees and cells received to compare.
    pub bytes_compared: u64,
    /// Apply batches that failed (the replica keeps its older cells until the next pass).
    pub failed_applies: u64,
}

impl SyncStats {
    /// Adds `o` to these.
    pub fn add(&mut self, o: &SyncStats) {
        self.groups += o.groups;
        self.differing += o.differing;
        self.skipped += o.skipped;
        self.cells_sent += o.cells_sent;
        self.bytes_sent += o.bytes_sent;
        self.bytes_compared += o.bytes_compared;
        self.failed_applies += o.failed_applies;
    }
}

/// What a send of the machine waits for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Asked {
    Roots,
    Leaves,
    Cells,
    Apply,
}

/// A differing group whose cells are being compared.
#[derive(Debug)]
struct Work {
    range: u32,
    holders: Vec<NodeId>,
    mask: u64,
    after: Option<Key>,
}

#[derive(Debug, PartialEq, Eq)]
enum Phase {
    Roots,
    Leaves,
    Cells,
    Done,
}

/// The exchange of one slot (see the module's essay).
#[derive(Debug)]
pub struct SyncMachine {
    slot: u8,
    groups: Vec<Group>,
    phase: Phase,
    /// Per send (its call slot): to whom, and what for.
    sent: Vec<(NodeId, Asked, bool)>,
    /// Replies of the current round, by node: `None` if it failed.
    round: BTreeMap<NodeId, Option<PeerResponse>>,
    waiting: usize,
    applies_waiting: usize,
    roots: BTreeMap<NodeId, Vec<GroupTree>>,
    work: Vec<Work>,
    out: Vec<Outgoing>,
    stats: SyncStats,
}

fn tree_of(trees: Option<&Vec<GroupTree>>, range: u32) -> Option<&GroupTree> {
    trees.and_then(|t| t.iter().find(|g| g.range == range))
}

fn page_bytes(cells: &[(Key, Version)]) -> u64 {
    cells.iter().map(|(k, v)| (k.len() + v.value.as_ref().map_or(0, |b| b.len())) as u64).sum()
}

impl SyncMachine {
    /// Compares slot `slot`'s `groups` (each with at least two replicas to be worth it).
    pub fn new(slot: u8, groups: Vec<Group>) -> Self {
        SyncMachine {
            slot,
            groups,
            phase: Phase::Roots,
            sent: Vec::new(),
            round: BTreeMap::new(),
            waiting: 0,
            applies_waiting: 0,
            roots: BTreeMap::new(),
            work: Vec::new(),
            out: Vec::new(),
            stats: SyncStats::default(),
        }
    }

    /// What the exchange did so far.
    pub fn stats(&self) -> SyncStats {
        self.stats
    }

    /// Whether the exchange ran to its end (not cut by its deadline).
    pub fn done(&self) -> bool {
        self.phase == Phase::Done && self.applies_waiting == 0
    }

    fn ask(&mut self, to: NodeId, msg: PeerRequest, what: Asked) {
        let slot = self.sent.len();
        self.sent.push((to, what, false));
        if what == Asked::Apply {
            self.applies_waiting += 1;
        } else {
            self.waiting += 1;
        }
        self.out.push(Outgoing { slot, to, msg, route: Route::Direct });
    }

    fn nodes(&self) -> BTreeSet<NodeId> {
        self.groups.iter().flat_map(|g| g.replicas.iter().copied()).collect()
    }

    /// Round 1 is in: groups whose replicas' roots differ go to round 2.
    fn after_roots(&mut self) {
        self.roots = std::mem::take(&mut self.round)
            .into_iter()
            .filter_map(|(n, r)| match r {
                Some(PeerResponse::Tree(t)) => Some((n, t)),
                _ => None,
            })
            .collect();
        let mut leaves_from = BTreeSet::new();
        let mut differing = Vec::new();
        for g in &self.groups {
            self.stats.groups += 1;
            let holders: Vec<NodeId> = g.replicas.iter().copied().filter(|n| self.roots.contains_key(n)).collect();
            if holders.len() < 2 {
                self.stats.skipped += 1;
                continue;
            }
            let root = |n: &NodeId| tree_of(self.roots.get(n), g.range).map_or(0, |t| t.root);
            if holders.iter().all(|n| root(n) == root(&holders[0])) {
                continue;
            }
            self.stats.differing += 1;
            leaves_from.extend(holders.iter().copied());
            differing.push(Work { range: g.range, holders, mask: 0, after: None });
        }
        self.work = differing;
        if self.work.is_empty() {
            self.phase = Phase::Done;
            return;
        }
        self.phase = Phase::Leaves;
        for n in leaves_from {
            self.ask(n, PeerRequest::Tree { slot: self.slot, leaves: true }, Asked::Leaves);
        }
    }

    /// Round 2 is in: each differing group's mask of differing leaves.
    fn after_leaves(&mut self) {
        let trees: BTreeMap<NodeId, Vec<GroupTree>> = std::mem::take(&mut self.round)
            .into_iter()
            .filter_map(|(n, r)| match r {
                Some(PeerResponse::Tree(t)) => Some((n, t)),
                _ => None,
            })
            .collect();
        for w in &mut self.work {
            w.holders.retain(|n| trees.contains_key(n));
            let leaf = |n: &NodeId, i: usize| tree_of(trees.get(n), w.range).map_or(0, |t| t.leaves.get(i).copied().unwrap_or(0));
            for i in 0..LEAVES {
                if w.holders.iter().any(|n| leaf(n, i) != leaf(&w.holders[0], i)) {
                    w.mask |= 1 << i;
                }
            }
        }
        let before = self.work.len();
        // A group that now agrees (written meanwhile) or lost a replica is left.
        self.work.retain(|w| w.holders.len() >= 2 && w.mask != 0);
        self.stats.skipped += before.saturating_sub(self.work.len()) as u64;
        self.work.reverse(); // taken from the end, in range order
        self.phase = Phase::Cells;
        self.next_page();
    }

    /// Asks the holders of the current group for their next page, or ends.
    fn next_page(&mut self) {
        let Some(w) = self.work.last() else {
            self.phase = Phase::Done;
            return;
        };
        let msg = PeerRequest::Cells { slot: self.slot, range: w.range, leaves: w.mask, after: w.after.clone() };
        for n in w.holders.clone() {
            self.ask(n, msg.clone(), Asked::Cells);
        }
    }

    /// A round of pages is in: compare what all of them cover, send the
    /// newest versions where they are missing, move on.
    fn after_cells(&mut self) {
        let round = std::mem::take(&mut self.round);
        let Some(mut w) = self.work.pop() else { return };
        let mut pages: BTreeMap<NodeId, BTreeMap<Key, Version>> = BTreeMap::new();
        let mut bound: Option<Key> = None;
        for (n, r) in round {
            if let Some(PeerResponse::Cells { cells, more }) = r {
                self.stats.bytes_compared += page_bytes(&cells);
                if more
                    && let Some((last, _)) = cells.last()
                    && bound.as_ref().is_none_or(|b| last < b)
                {
                    bound = Some(last.clone());
                }
                pages.insert(n, cells.into_iter().collect());
            }
        }
        w.holders.retain(|n| pages.contains_key(n));
        if w.holders.len() < 2 {
            self.stats.skipped += 1;
            self.next_page();
            return;
        }
        let keys: BTreeSet<&Key> = pages
            .values()
            .flat_map(|p| p.keys())
            .filter(|k| bound.as_ref().is_none_or(|b| *k <= b) && w.after.as_ref().is_none_or(|a| *k > a))
            .collect();
        let mut to_send: BTreeMap<NodeId, Vec<(Key, Version)>> = BTreeMap::new();
        for key in keys {
            let newest = w.holders.iter().filter_map(|n| pages[n].get(key)).max().expect("a listed key");
            for n in &w.holders {
                if pages[n].get(key).is_none_or(|v| v < newest) {
                    to_send.entry(*n).or_default().push((key.clone(), newest.clone()));
                }
            }
        }
        for (n, cells) in to_send {
            self.send_cells(n, cells);
        }
        match bound {
            // Pages must move on: a page that would not (a broken peer) ends the group.
            Some(b) if w.after.as_ref().is_none_or(|a| &b > a) => {
                w.after = Some(b);
                self.work.push(w);
            }
            _ => {}
        }
        self.next_page();
    }

    /// Sends `cells` to `to` in batches of at most [`MAX_BATCH`] cells and about [`MAX_PAGE_BYTES`].
    fn send_cells(&mut self, to: NodeId, cells: Vec<(Key, Version)>) {
        let mut batch = Vec::new();
        let mut bytes = 0;
        for c in cells {
            let b = page_bytes(std::slice::from_ref(&c));
            self.stats.cells_sent += 1;
            self.stats.bytes_sent += b;
            bytes += b as usize;
            batch.push(c);
            if batch.len() >= MAX_BATCH || bytes >= MAX_PAGE_BYTES {
                self.ask(to, PeerRequest::Apply { cells: std::mem::take(&mut batch) }, Asked::Apply);
                bytes = 0;
            }
        }
        if !batch.is_empty() {
            self.ask(to, PeerRequest::Apply { cells: batch }, Asked::Apply);
        }
    }
}

impl Machine for SyncMachine {
    fn start(&mut self) -> Vec<Outgoing> {
        if self.groups.is_empty() {
            self.phase = Phase::Done;
            return Vec::new();
        }
        for n in self.nodes() {
            self.ask(n, PeerRequest::Tree { slot: self.slot, leaves: false }, Asked::Roots);
        }
        std::mem::take(&mut self.out)
    }

    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        let Some((from, what, answered)) = self.sent.get_mut(slot) else { return };
        if *answered {
            return;
        }
        *answered = true;
        let (from, what) = (*from, *what);
        if what == Asked::Apply {
            self.applies_waiting -= 1;
            if !matches!(result, Ok(PeerResponse::Applied(_))) {
                self.stats.failed_applies += 1;
            }
            return;
        }
        if let Ok(PeerResponse::Tree(t)) = &result {
            self.stats.bytes_compared += t.iter().map(GroupTree::wire_len).sum::<u64>();
        }
        self.round.insert(from, result.ok());
        self.waiting -= 1;
        if self.waiting == 0 {
            match what {
                Asked::Roots => self.after_roots(),
                Asked::Leaves => self.after_leaves(),
                Asked::Cells => self.after_cells(),
                Asked::Apply => {}
            }
        }
        out.extend(std::mem::take(&mut self.out).into_iter().map(Command::Send));
    }

    fn settled(&self) -> bool {
        self.done()
    }

    fn complete(&self) -> bool {
        self.done()
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::error::Error;

    fn n(i: u32) -> NodeId {
        NodeId(i)
    }

    fn v(micros: u64, value: &str) -> Version {
        Version::value(Timestamp { micros, node: 1 }, value.as_bytes().to_vec())
    }

    fn k(s: &str) -> Key {
        Key::trusted(s.as_bytes())
    }

    /// A replica's cells, as a tree and pages would show them (leaf: the key's first byte % 64).
    fn trees(cells: &[(Key, Version)], leaves: bool) -> Vec<GroupTree> {
        let mut b = TreeBuilder::default();
        for (key, ver) in cells {
            b.add(0, key.as_bytes()[0] % 64, cell_hash(key.as_bytes(), ver.ts, ver.is_tombstone()));
        }
        b.finish(leaves)
    }

    /// Serves the machine's sends from in-memory replicas until it settles;
    /// `fail` names a node whose every reply is an error. Pages hold `page` cells.
    fn drive(m: &mut SyncMachine, stores: &mut BTreeMap<NodeId, BTreeMap<Key, Version>>, fail: Option<NodeId>, page: usize) {
        let mut queue: Vec<Outgoing> = m.start();
        while let Some(o) = queue.pop() {
            let result = if Some(o.to) == fail {
                Err(Error::Failure("down".into()))
            } else {
                let s = stores.get_mut(&o.to).unwrap();
                Ok(match o.msg {
                    PeerRequest::Tree { leaves, .. } => {
                        PeerResponse::Tree(trees(&s.iter().map(|(k, v)| (k.clone(), v.clone())).collect::<Vec<_>>(), leaves))
                    }
                    PeerRequest::Cells { leaves, after, .. } => {
                        let all: Vec<(Key, Version)> = s
                            .iter()
                            .filter(|(k, _)| after.as_ref().is_none_or(|a| *k > a))
                            .filter(|(k, _)| leaves == 0 || leaves >> (k.as_bytes()[0] % 64) & 1 == 1)
                            .map(|(k, v)| (k.clone(), v.clone()))
                            .collect();
                        let more = all.len() > page;
                        PeerResponse::Cells { cells: all.into_iter().take(page).collect(), more }
                    }
                    PeerRequest::Apply { cells } => {
                        let mut changed = 0;
                        for (key, ver) in cells {
                            if s.get(&key).is_none_or(|old| *old < ver) {
                                s.insert(key, ver);
                                changed += 1;
                            }
                        }
                        PeerResponse::Applied(changed)
                    }
                    other => panic!("unexpected {other:?}"),
                })
            };
            let mut out = Vec::new();
            m.on_reply(o.slot, result, &mut out);
            for c in out {
                match c {
                    Command::Send(s) => queue.insert(0, s),
                    other => panic!("unexpected {other:?}"),
                }
            }
        }
        assert!(m.settled(), "the machine waits for nothing more");
    }

    fn group(ids: &[u32]) -> Vec<Group> {
        vec![Group { range: 0, replicas: ids.iter().map(|&i| n(i)).collect() }]
    }

    #[test]
    fn replicas_that_agree_exchange_roots_only() {
        let cells: BTreeMap<Key, Version> = (0..50).map(|i| (k(&format!("key{i}")), v(i, "x"))).collect();
        let mut stores: BTreeMap<NodeId, _> = (1..=3).map(|i| (n(i), cells.clone())).collect();
        let mut m = SyncMachine::new(7, group(&[1, 2, 3]));
        drive(&mut m, &mut stores, None, 10);
        let s = m.stats();
        assert_eq!((s.groups, s.differing, s.cells_sent), (1, 0, 0));
        let root = trees(&cells.into_iter().collect::<Vec<_>>(), false)[0].wire_len();
        assert!(root < 20, "a root takes {root} bytes");
        assert_eq!(s.bytes_compared, 3 * root, "three roots, nothing else");
    }

    #[test]
    fn a_wiped_replica_gets_every_cell_and_a_stale_one_the_newer_versions() {
        let full: BTreeMap<Key, Version> =
            (0..200).map(|i| (k(&format!("{}key{i}", (b'a' + (i % 26) as u8) as char)), v(10, "old"))).collect();
        let mut newer = full.clone();
        let changed: Vec<Key> = full.keys().step_by(7).cloned().collect();
        for key in &changed {
            newer.insert(key.clone(), v(20, "new"));
        }
        let tomb = full.keys().nth(3).unwrap().clone();
        newer.insert(tomb.clone(), Version::tombstone(Timestamp { micros: 30, node: 2 }));
        let mut stores = BTreeMap::from([(n(1), full.clone()), (n(2), newer.clone()), (n(3), BTreeMap::new())]);
        let mut m = SyncMachine::new(0, group(&[1, 2, 3]));
        drive(&mut m, &mut stores, None, 16);
        assert_eq!(stores[&n(1)], newer, "the stale replica took the newer versions and the tombstone");
        assert_eq!(stores[&n(3)], newer, "the wiped replica took every cell, in pages");
        let s = m.stats();
        assert_eq!(s.cells_sent, (changed.len() + 1 + 200) as u64);
        assert_eq!((s.differing, s.skipped, s.failed_applies), (1, 0, 0));
    }

    #[test]
    fn only_the_leaves_that_differ_are_listed() {
        // Keys over 26 leaves (first letters a-z); one key differs.
        let full: BTreeMap<Key, Version> = (0..260).map(|i| (k(&format!("{}{i}", (b'a' + (i % 26) as u8) as char)), v(10, "v"))).collect();
        let mut other = full.clone();
        other.insert(k("q16"), v(11, "w"));
        let mut stores = BTreeMap::from([(n(1), full), (n(2), other.clone())]);
        let mut m = SyncMachine::new(0, group(&[1, 2]));
        drive(&mut m, &mut stores, None, 1000);
        assert_eq!(stores[&n(1)], other);
        let s = m.stats();
        // Roots, leaves, then the ten cells of one leaf from each replica.
        let leaf_cells = 10 * (3 + 1) * 2;
        // Listing every cell would add 260 keys' worth from each replica (about 2 KB).
        assert!(s.bytes_compared < 2 * 20 + 2 * 600 + 2 * leaf_cells as u64, "compared {} bytes", s.bytes_compared);
        assert_eq!(s.cells_sent, 1);
    }

    #[test]
    fn a_replica_that_fails_is_left_out_and_the_others_still_converge() {
        let a: BTreeMap<Key, Version> = (0..30).map(|i| (k(&format!("k{i}")), v(5, "a"))).collect();
        let mut stores = BTreeMap::from([(n(1), a.clone()), (n(2), BTreeMap::new()), (n(3), BTreeMap::new())]);
        let mut m = SyncMachine::new(0, group(&[1, 2, 3]));
        drive(&mut m, &mut stores, Some(n(3)), 7);
        assert_eq!(stores[&n(2)], a);
        assert!(stores[&n(3)].is_empty(), "nothing was sent to the failed replica");
        // With only one replica answering, there is nothing to compare.
        let mut m = SyncMachine::new(0, group(&[1, 3]));
        drive(&mut m, &mut stores, Some(n(3)), 7);
        assert_eq!((m.stats().skipped, m.stats().cells_sent), (1, 0));
    }

    #[test]
    fn a_change_to_one_cell_changes_its_leaf_and_the_root() {
        let base = [(k("a1"), v(1, "x")), (k("b1"), v(1, "x"))];
        let changed = [(k("a1"), v(2, "x")), (k("b1"), v(1, "x"))];
        let (t1, t2) = (trees(&base, true), trees(&changed, true));
        assert_ne!(t1[0].root, t2[0].root);
        let differing: Vec<usize> = (0..LEAVES).filter(|&i| t1[0].leaves[i] != t2[0].leaves[i]).collect();
        assert_eq!(differing, vec![(b'a' % 64) as usize]);
        let tomb = [(k("a1"), Version::tombstone(Timestamp { micros: 1, node: 1 })), (k("b1"), v(1, "x"))];
        assert_ne!(trees(&tomb, false)[0].root, t1[0].root, "a tombstone of the same stamp differs");
    }
}
