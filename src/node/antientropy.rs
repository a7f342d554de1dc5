//! Anti-entropy in a replica: its side of an exchange (trees, cells, applying
//! cells), the exchanges it runs (one [`SyncMachine`] per slot), the
//! background pass, and `repair`.
//!
//! # Passes
//!
//! A *pass* runs one exchange per slot, slot after slot. In a background pass
//! (every `--anti-entropy-interval`, from the start) a node compares only the
//! groups it *leads* — those whose first live replica it is — so each group
//! is compared once a pass however many replicas run passes; the slots are
//! paced over half the interval, so the walk of the store the trees cost is
//! spread out. `repair` runs a pass at once, unpaced, over every group of the
//! cluster (a background pass running then gives way to it). A pass's
//! progress and totals are kept for `repair` to report.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};

use crate::cluster::key::Key;
use crate::coordinator::antientropy::{Group, SyncMachine, SyncStats, TreeBuilder, cell_hash};
use crate::coordinator::call::Call;
use crate::coordinator::scan::slot_ranges;
use crate::message::sync::GroupTree;
use crate::message::{MAX_PAGE_BYTES, PeerResponse, PeerResult};
use crate::node::{Node, PendingAck};
use crate::proto;
use crate::storage::cell::Version;

/// How long one slot's exchange may take before the pass moves on (what it
/// did not finish, the next pass does).
const SLOT_DEADLINE: Duration = Duration::from_secs(30);

/// The longest pause between two slots of a background pass.
const MAX_PAUSE: Duration = Duration::from_secs(2);

/// One pass: what it did so far.
#[derive(Debug, Clone, Default)]
struct Pass {
    id: u64,
    manual: bool,
    running: bool,
    slots_done: u32,
    stats: SyncStats,
    started: Option<Instant>,
    elapsed: Duration,
    error: String,
}

impl Pass {
    fn report(&self) -> proto::RepairResult {
        let s = &self.stats;
        proto::RepairResult {
            running: self.running,
            pass: self.id,
            slots_done: self.slots_done,
            slots: 256,
            groups: s.groups,
            differing: s.differing,
            cells_sent: s.cells_sent,
            bytes_sent: s.bytes_sent,
            bytes_compared: s.bytes_compared,
            skipped: s.skipped,
            elapsed_secs: if self.running { self.started.map_or(0.0, |t| t.elapsed().as_secs_f64()) } else { self.elapsed.as_secs_f64() },
            error: self.error.clone(),
        }
    }
}

/// The passes of one node: the one running, the last one finished, and a
/// `repair` asked for but not started yet.
#[derive(Debug, Default)]
pub struct Passes {
    ids: u64,
    current: Option<Pass>,
    last: Option<Pass>,
    requested: Option<u64>,
}

impl Node {
    /// This replica's trees of slot `slot`: one per group it holds cells of.
    pub fn tree(&self, slot: u8, leaves: bool) -> Vec<GroupTree> {
        let mut b = TreeBuilder::default();
        // Taken before the slot's lock: never the view's lock under a slot's
        // (a peer write holds the view's while it takes a slot's).
        let ring = self.ring();
        self.store.for_each_stamp(slot, |key, ts, tombstone| {
            let (range, leaf) = ring.group_leaf(key);
            b.add(range, leaf, cell_hash(key, ts, tombstone));
        });
        b.finish(leaves)
    }

    /// This replica's cells of group `range` of slot `slot` in the leaves of
    /// `mask` (0: all), after `after`, a page of about [`MAX_PAGE_BYTES`].
    pub fn cells_of(&self, slot: u8, range: u32, mask: u64, after: Option<&Key>) -> PeerResponse {
        let ring = self.ring();
        let (cells, more) = self.store.cells_where(slot, after.map(Key::as_bytes), MAX_PAGE_BYTES, |key| {
            let (r, leaf) = ring.group_leaf(key);
            r == range && (mask == 0 || mask >> leaf & 1 == 1)
        });
        PeerResponse::Cells { cells, more }
    }

    /// Merges `cells` into the store; the reply waits for the returned ack to be durable.
    pub fn apply_cells(&self, cells: Vec<(Key, Version)>) -> (PeerResult, Option<PendingAck>) {
        let limits = self.limits();
        let mut changed = 0u32;
        let mut last = None;
        for (key, version) in cells {
            // Checked again here: the node's own exchanges hand it cells from peers' replies.
            let key = match limits.key(key.to_vec()) {
                Ok(k) => k,
                Err(e) => return (Err(e), last),
            };
            // Data that some replica already holds: the clock follows it (a
            // wild stamp is kept but not followed, as a peer write's would be refused).
            let _ = self.clock.observe(version.ts, self.cfg.max_clock_offset);
            match self.store.apply(&key, version) {
                Ok(a) => {
                    changed += u32::from(a.changed);
                    if a.pos > 0 {
                        last = Some(PendingAck { pos: a.pos, key, ts: None });
                    }
                }
                Err(e) => return (Err(e), last),
            }
        }
        (Ok(PeerResponse::Applied(changed)), last)
    }

    /// The groups of slot `slot` to compare from here, with their live
    /// replicas: every group (`all`), or the ones this node leads.
    fn sync_groups(&self, slot: u8, all: bool) -> Vec<Group> {
        let ring = self.ring();
        let ranges = if ring.sorted_tokens().is_empty() { vec![0] } else { slot_ranges(ring.sorted_tokens(), slot) };
        ranges
            .into_iter()
            .filter_map(|range| {
                let replicas: Vec<_> = ring.group_replicas(slot, range).iter().copied().filter(|&r| self.alive(r)).collect();
                let leads = replicas.first() == Some(&self.me);
                (replicas.len() >= 2 && (all || leads)).then_some(Group { range, replicas })
            })
            .collect()
    }

    /// Runs one exchange of slot `slot` (see [`SyncMachine`]) and waits for
    /// it; what it did, and whether it ran to its end.
    pub fn sync_slot(self: &Arc<Self>, slot: u8, all: bool) -> (SyncStats, bool) {
        match self.start_sync(slot, all) {
            None => (SyncStats::default(), true),
            Some(call) => {
                let m = call.wait();
                (m.stats(), m.done())
            }
        }
    }

    /// Starts one exchange of slot `slot` (`None`: nothing to compare from
    /// here); its replies drive it from then on.
    pub fn start_sync(self: &Arc<Self>, slot: u8, all: bool) -> Option<Arc<Call<SyncMachine>>> {
        let groups = self.sync_groups(slot, all);
        if groups.is_empty() {
            return None;
        }
        let call = Call::new(SyncMachine::new(slot, groups), self.clone(), self.budget.clone(), Instant::now() + SLOT_DEADLINE);
        call.start();
        Some(call)
    }

    /// `repair`: starts a full pass unless one is running or asked for
    /// (`start`), and reports the pass the client should follow.
    pub fn repair(&self, start: bool) -> proto::RepairResult {
        let mut p = self.passes.lock();
        let manual_running = p.current.as_ref().is_some_and(|c| c.manual);
        if start && !manual_running && p.requested.is_none() {
            p.ids += 1;
            p.requested = Some(p.ids);
            let _ = self.repair_wake.send(());
        }
        if let Some(id) = p.requested {
            return proto::RepairResult { running: true, pass: id, slots: 256, ..Default::default() };
        }
        p.current.as_ref().or(p.last.as_ref()).map(Pass::report).unwrap_or_default()
    }

    fn stopping(&self) -> bool {
        self.shutdown.load(std::sync::atomic::Ordering::Acquire)
    }

    /// The anti-entropy thread: a background pass every
    /// `--anti-entropy-interval`, and a full pass whenever `repair` asks.
    pub fn anti_entropy_loop(self: &Arc<Self>, wake: &Receiver<()>) {
        let interval = self.cfg.anti_entropy_interval;
        let mut next = (!interval.is_zero()).then(|| Instant::now() + interval);
        while !self.stopping() {
            let wait =
                next.map_or(Duration::from_millis(200), |n| n.saturating_duration_since(Instant::now()).min(Duration::from_millis(200)));
            let manual = match wake.recv_timeout(wait) {
                Ok(()) => true,
                Err(RecvTimeoutError::Timeout) if next.is_some_and(|n| Instant::now() >= n) => false,
                Err(RecvTimeoutError::Timeout) => continue,
                Err(RecvTimeoutError::Disconnected) => return,
            };
            let started = Instant::now();
            if !self.run_pass(manual, wake) {
                // A `repair` interrupted a background pass: run it now.
                self.run_pass(true, wake);
            }
            if !manual {
                next = Some(started + interval);
            }
        }
    }

    /// Runs one pass; false if a background pass gave way to a `repair` (asked for by `wake`).
    fn run_pass(self: &Arc<Self>, manual: bool, wake: &Receiver<()>) -> bool {
        {
            let mut p = self.passes.lock();
            let id = match (manual, p.requested.take()) {
                (true, Some(id)) => id,
                (_, requested) => {
                    p.requested = requested;
                    p.ids += 1;
                    p.ids
                }
            };
            p.current = Some(Pass { id, manual, running: true, started: Some(Instant::now()), ..Default::default() });
        }
        let pause = if manual { Duration::ZERO } else { (self.cfg.anti_entropy_interval / 512).min(MAX_PAUSE) };
        let mut completed = true;
        for slot in 0..=255u8 {
            if self.stopping() {
                completed = false;
                break;
            }
            if !manual && (self.passes.lock().requested.is_some() || wake.try_recv().is_ok()) {
                self.finish_pass("gave way to a repair".into());
                return false;
            }
            let (stats, done) = self.sync_slot(slot, manual);
            let mut p = self.passes.lock();
            if let Some(c) = p.current.as_mut() {
                c.stats.add(&stats);
                c.slots_done += 1;
                if !done && c.error.is_empty() {
                    c.error = format!("slot {slot} did not finish in {} s; the next pass continues it", SLOT_DEADLINE.as_secs());
                }
            }
            drop(p);
            if !pause.is_zero() && wake.recv_timeout(pause).is_ok() {
                // `repair` while paused: the next check hands over.
                let mut p = self.passes.lock();
                if p.requested.is_none() {
                    p.ids += 1;
                    p.requested = Some(p.ids);
                }
            }
        }
        self.finish_pass(if completed { String::new() } else { "the node is stopping".into() });
        if manual || self.passes.lock().last.as_ref().is_some_and(|l| l.stats.differing > 0) {
            let l = self.passes.lock().last.clone().unwrap_or_default();
            log::info!(
                "{}: anti-entropy pass {} ({}): {} groups, {} differed, {} cells ({} bytes) sent, {} bytes compared, {} skipped, in {:.1} s",
                self.cfg.name,
                l.id,
                if manual { "repair" } else { "background" },
                l.stats.groups,
                l.stats.differing,
                l.stats.cells_sent,
                l.stats.bytes_sent,
                l.stats.bytes_compared,
                l.stats.skipped,
                l.elapsed.as_secs_f64()
            );
        }
        true
    }

    fn finish_pass(&self, error: String) {
        let mut p = self.passes.lock();
        if let Some(mut c) = p.current.take() {
            c.running = false;
            c.elapsed = c.started.map_or(Duration::ZERO, |t| t.elapsed());
            if c.error.is_empty() {
                c.error = error;
            }
            p.last = Some(c);
        }
    }
}
