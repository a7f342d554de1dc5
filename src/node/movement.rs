//! Membership changes in a replica: join, decommission and removenode, and
//! the streaming each does.
//!
//! Every change is two epochs (see [`crate::cluster::metadata`]): the first
//! makes the new member `JOINING` (or the old one `LEAVING`), and from then
//! on writes also reach the replicas-to-be; the data of the stretches they
//! gain is copied ([`Metadata::transfers`]); the second epoch ends the
//! movement, and reads move to the new replicas. The copying runs on the
//! membership thread of the node that does it:
//!
//! * **join** — the new member pulls each stretch from the replica that gives
//!   it up (CASSANDRA-2434: never from whichever replica is up), falling back
//!   to merging what the other old replicas hold if that one is down;
//! * **decommission** — the leaving member pushes its stretches to their new
//!   replicas, then leaves, and its process exits;
//! * **removenode** — the node asked merges each stretch from the live old
//!   replicas (newest version of every key) and pushes it to the new replica.
//!
//! Pages are about 1 MiB; cells merge by last-write-wins, so a copy never
//! undoes a write made meanwhile (which reached the new replica as a pending
//! one anyway). After a movement ends, every replica drops the cells it no
//! longer replicates.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::key::{KEYS, Key, Partitioner};
use crate::cluster::metadata::{Metadata, MoveKind, NodeState, Transfer, covered, in_range};
use crate::cluster::ring::{NodeId, NodeInfo};
use crate::cluster::token;
use crate::error::{Error, Result};
use crate::message::{Limits, MAX_BATCH, MAX_PAGE_BYTES, PeerRequest, PeerResponse, packed};
use crate::node::Node;
use crate::node::membership::Stored;
use crate::paxos::acceptor::{Acceptor, KeyState};
use crate::proto;
use crate::storage::cell::Version;

/// How many (slot, stretch) copies a movement runs at once.
const STREAM_WORKERS: usize = 8;

/// How long a movement waits for every live member to learn its epoch.
const EPOCH_WAIT: Duration = Duration::from_secs(30);

/// How long after a movement ends a replica keeps the cells it no longer
/// replicates: coordinators still at the previous epoch may read them meanwhile.
pub const CLEANUP_GRACE: Duration = Duration::from_secs(10);

/// A movement this node runs or ran: what it has copied.
#[derive(Debug, Clone, Default)]
pub struct Progress {
    kind: String,
    node: String,
    running: bool,
    epoch: u64,
    transfers: u64,
    transfers_done: u64,
    keys: u64,
    bytes: u64,
    started: Option<Instant>,
    elapsed: Duration,
    error: String,
}

impl Progress {
    fn report(&self) -> proto::MembershipResult {
        proto::MembershipResult {
            kind: self.kind.clone(),
            node: self.node.clone(),
            running: self.running,
            epoch: self.epoch,
            transfers: self.transfers,
            transfers_done: self.transfers_done,
            keys: self.keys,
            bytes: self.bytes,
            elapsed_secs: if self.running { self.started.map_or(0.0, |t| t.elapsed().as_secs_f64()) } else { self.elapsed.as_secs_f64() },
            error: self.error.clone(),
        }
    }
}

/// Work queued for the membership thread.
#[derive(Debug, Clone)]
pub enum Job {
    /// Decommission this node.
    Decommission {
        /// Allow fewer members owning data than the RF.
        force: bool,
    },
    /// Remove the dead member `name`.
    RemoveNode {
        /// Its name.
        name: String,
        /// Allow fewer members owning data than the RF.
        force: bool,
    },
}

/// The slots a stretch of tokens touches.
fn slots_of(t: &Transfer, byte_ordered: bool) -> Vec<u8> {
    if byte_ordered {
        return if t.lo == t.hi { (0..=255).collect() } else { (0..KEYS as i64).filter(|&k| t.contains(k)).map(|k| k as u8).collect() };
    }
    if t.lo == t.hi {
        return (0..=255).collect();
    }
    let (first, last) = (token::slot(t.lo.wrapping_add(1)), token::slot(t.hi));
    if first == last && t.lo > t.hi {
        return (0..=255).collect(); // wraps all the way round
    }
    let mut out = vec![first];
    let mut s = first;
    while s != last {
        s = s.wrapping_add(1);
        out.push(s);
    }
    out
}

/// A copied cell's key, checked like any peer's (they come from peers'
/// replies): a murmur3 key of an allowed size as it is, without a copy;
/// anything else as [`Limits::key`] takes it (or refuses it).
fn checked_key<'k>(limits: &Limits, k: &'k [u8]) -> Result<Cow<'k, [u8]>> {
    match limits.partitioner {
        Partitioner::Murmur3 if !k.is_empty() && k.len() <= limits.max_key_bytes => Ok(Cow::Borrowed(k)),
        _ => Ok(Cow::Owned(limits.key(k.to_vec())?.into_vec())),
    }
}

/// Notes one source's page of a copy merged from several: if the source
/// holds more past its page's `last` key, the merged page can only go up to
/// the lowest such key (`bound`).
fn note_page(bound: &mut Option<Key>, any_more: &mut bool, more: bool, last: Option<&Key>) {
    if more {
        *any_more = true;
        if let Some(last) = last
            && bound.as_ref().is_none_or(|b| last < b)
        {
            *bound = Some(last.clone());
        }
    }
}

/// Where a copy's next page starts: after `bound` if a source holds more
/// (`None`: the copy is done). "More" without a page past the last one is a
/// source that cannot be followed: an error, so the copy never passes for done.
fn next_page(after: Option<&Key>, bound: Option<Key>, any_more: bool, what: &str) -> Result<Option<Key>> {
    match bound {
        Some(b) if any_more && after.is_none_or(|a| &b > a) => Ok(Some(b)),
        _ if any_more => Err(Error::Protocol(format!("a source said it holds more {what} but sent none past {after:?}"))),
        _ => Ok(None),
    }
}

/// Hands `items` to `send` in batches of at most [`MAX_BATCH`] items and
/// about [`MAX_PAGE_BYTES`] (by `size`), as a peer takes them.
fn in_batches<T>(items: Vec<T>, size: impl Fn(&T) -> usize, mut send: impl FnMut(Vec<T>) -> Result<()>) -> Result<()> {
    let (mut batch, mut bytes) = (Vec::new(), 0);
    for item in items {
        bytes += size(&item);
        batch.push(item);
        if batch.len() >= MAX_BATCH || bytes >= MAX_PAGE_BYTES {
            send(std::mem::take(&mut batch))?;
            bytes = 0;
        }
    }
    if batch.is_empty() { Ok(()) } else { send(batch) }
}

/// A packed page's cells, owned (the page came from a peer; its keys are
/// checked where the cells are applied).
fn unpack(page: &[u8]) -> Result<Vec<(Key, Version)>> {
    packed::Reader::new(page).map(|c| c.map(|(k, v)| (Key::trusted(k), v.to_owned()))).collect()
}

impl Node {
    /// This replica's cells of slot `slot` whose tokens are in any stretch
    /// (`lo`, `hi`] of `ranges`, after `after`, a page of about
    /// [`MAX_PAGE_BYTES`]: packed if `packed`.
    pub fn stream_cells(&self, slot: u8, ranges: &[(i64, i64)], after: Option<&Key>, packed: bool) -> PeerResponse {
        let ring = self.ring();
        // Usually the stretches cover the whole slot: then no key needs hashing.
        let (first, last) = ring.slot_span(slot);
        let whole = covered(ranges, first, last);
        let keep = |key: &[u8]| {
            whole || {
                let t = ring.token_of(key);
                ranges.iter().any(|&(lo, hi)| in_range(lo, hi, t))
            }
        };
        let after = after.map(Key::as_bytes);
        if packed {
            let mut page = Vec::with_capacity(MAX_PAGE_BYTES + MAX_PAGE_BYTES / 8);
            let (_, more) = self.store.pack_where(slot, after, MAX_PAGE_BYTES, keep, &mut page);
            return PeerResponse::Packed { page, more };
        }
        let (cells, more) = self.store.cells_where(slot, after, MAX_PAGE_BYTES, keep);
        PeerResponse::Cells { cells, more }
    }

    /// A new member's request to join: the next epoch with it `JOINING`, by
    /// consensus; what it must start from.
    pub fn join_member(self: &Arc<Self>, info: NodeInfo, proxy: bool) -> Result<Stored> {
        let name = info.name.clone();
        let meta = self.change_metadata(|m| m.begin_join(info.clone(), None, proxy))?;
        log::info!(
            "{}: {name} joins at epoch {} ({})",
            self.cfg.name,
            meta.epoch,
            if proxy { "no tokens" } else { "its tokens restore balance" }
        );
        Ok(self.stored_metadata())
    }

    /// `decommission`, `removenode` and the movement's progress.
    pub fn membership_request(self: &Arc<Self>, req: proto::MembershipRequest) -> Result<proto::MembershipResult> {
        use proto::membership_request::Op;
        let job = match Op::try_from(req.op) {
            Ok(Op::Status) | Ok(Op::Unspecified) => return Ok(self.progress.lock().report()),
            Ok(Op::Decommission) => {
                self.check_cluster(req.cluster_id, "decommission")?;
                Job::Decommission { force: req.force }
            }
            Ok(Op::RemoveNode) => {
                self.check_cluster(req.cluster_id, "removenode")?;
                let view = self.view();
                let Some(m) = view.meta.named(&req.name) else {
                    return Err(Error::InvalidRequest(format!("{} is not a member", req.name)));
                };
                if m.info.id == self.me {
                    return Err(Error::InvalidRequest(format!("{} is this replica; decommission it instead", req.name)));
                }
                if self.alive(m.info.id) && m.state == NodeState::Normal {
                    return Err(Error::InvalidRequest(format!(
                        "{} is up; removenode is for dead members (decommission it instead)",
                        req.name
                    )));
                }
                if m.state == NodeState::Joining {
                    // A join that will not finish (its node died): abandon it, at once.
                    let id = m.info.id;
                    let meta = self.change_metadata(|md| md.abort_join(id))?;
                    log::info!("{}: abandoned the join of {} at epoch {}", self.cfg.name, req.name, meta.epoch);
                    return Ok(proto::MembershipResult {
                        kind: "removenode".into(),
                        node: req.name,
                        epoch: meta.epoch,
                        ..Default::default()
                    });
                }
                Job::RemoveNode { name: req.name, force: req.force }
            }
            Err(_) => return Err(Error::InvalidRequest(format!("unknown membership operation {}", req.op))),
        };
        let mut p = self.progress.lock();
        if p.running {
            return Err(Error::InvalidRequest(format!("a {} of {} is under way here", p.kind, p.node)));
        }
        let (kind, node) = match &job {
            Job::Decommission { .. } => ("decommission", self.cfg.name.clone()),
            Job::RemoveNode { name, .. } => ("removenode", name.clone()),
        };
        *p = Progress { kind: kind.into(), node, running: true, started: Some(Instant::now()), ..Default::default() };
        let report = p.report();
        drop(p);
        self.jobs.lock().push(job);
        Ok(report)
    }

    fn progress_error(&self, e: &Error) {
        let mut p = self.progress.lock();
        p.running = false;
        p.error = e.to_string();
        p.elapsed = p.started.map_or(Duration::ZERO, |t| t.elapsed());
        log::error!("{}: {} of {} failed: {e}", self.cfg.name, p.kind, p.node);
    }

    /// The membership thread's work, between its other duties: a queued
    /// decommission or removenode, or this node's own join (after a start
    /// as a joining member, or a restart in the middle of one).
    pub fn membership_work(self: &Arc<Self>) {
        let job = self.jobs.lock().pop();
        let result = match job {
            Some(Job::Decommission { force }) => self.decommission(force),
            Some(Job::RemoveNode { name, force }) => self.remove_node(&name, force),
            None => {
                let view = self.view();
                match view.meta.moving {
                    Some((id, MoveKind::Join)) if id == self.me => {
                        {
                            let mut p = self.progress.lock();
                            if !p.running {
                                *p = Progress {
                                    kind: "join".into(),
                                    node: self.cfg.name.clone(),
                                    running: true,
                                    started: Some(Instant::now()),
                                    ..Default::default()
                                };
                            }
                        }
                        self.bootstrap()
                    }
                    _ => Ok(()),
                }
            }
        };
        if let Err(e) = result {
            self.progress_error(&e);
            // A join retries from its membership thread (the epoch still says JOINING).
            std::thread::sleep(Duration::from_secs(1));
        }
    }

    /// Waits until every live member holds epoch `epoch` or a newer one, so
    /// that no coordinator still writes without the pending replicas when
    /// the copying starts (a write it missed would not be copied either). A
    /// member that is down catches up before it coordinates again.
    fn wait_epoch_everywhere(self: &Arc<Self>, epoch: u64) -> Result<()> {
        let deadline = Instant::now() + EPOCH_WAIT;
        loop {
            let view = self.view();
            let others: Vec<NodeId> = view.meta.voters().into_iter().filter(|&v| v != self.me && self.alive(v)).collect();
            let behind: Vec<String> = others
                .iter()
                .zip(self.gather(others.clone(), PeerRequest::Metadata))
                .filter(|(_, r)| !matches!(r, Some(Ok(PeerResponse::Metadata(s))) if s.meta.epoch >= epoch))
                .map(|(&id, _)| view.ring.name(id))
                .collect();
            if behind.is_empty() {
                return Ok(());
            }
            if Instant::now() >= deadline {
                return Err(Error::Timeout(format!("{} did not reach epoch {epoch} in time", behind.join(", "))));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Copies every stretch this joining node gains, then ends the join.
    fn bootstrap(self: &Arc<Self>) -> Result<()> {
        let t0 = Instant::now();
        self.wait_epoch_everywhere(self.view().epoch())?;
        let t1 = Instant::now();
        let view = self.view();
        let transfers: Vec<Transfer> = view.meta.transfers()?.into_iter().filter(|t| t.to == self.me).collect();
        self.progress.lock().transfers = transfers.len() as u64;
        self.progress.lock().epoch = view.epoch();
        let mut sources = Vec::new();
        for t in &transfers {
            let live: Vec<NodeId> = t.from.iter().copied().filter(|&f| self.alive(f)).collect();
            if live.is_empty() {
                return Err(Error::Unavailable(format!("no replica of tokens ({}, {}] is up to copy them from", t.lo, t.hi)));
            }
            // The giver alone if it is up (its copy is the one the range had); otherwise the others merged.
            sources.push(if live[0] == t.from[0] { vec![live[0]] } else { live });
        }
        let pos = self.copy_transfers(&transfers, &sources, view.ring.sorted_tokens().is_empty())?;
        let t2 = Instant::now();
        // What was copied here is durable (one sync for all of it) before the join ends.
        self.sync_copied(pos)?;
        let t3 = Instant::now();
        let r = self.finish_movement(MoveKind::Join);
        log::info!(
            "{}: join copied its data in {:.3} s (waited {:.3} s for every member to hold the epoch; synced in {:.3} s; ended in {:.3} s)",
            self.cfg.name,
            (t2 - t1).as_secs_f64(),
            (t1 - t0).as_secs_f64(),
            (t3 - t2).as_secs_f64(),
            t3.elapsed().as_secs_f64()
        );
        r
    }

    /// Makes what a movement copied into this node (up to log position `pos`)
    /// reach the disk, whatever `--fsync` says: once the movement ends this
    /// node may be the only new owner of it, and nothing would copy it again.
    fn sync_copied(&self, pos: u64) -> Result<()> {
        self.store.commit(pos)?;
        match &self.wal {
            Some(wal) if pos > 0 => wal.sync(),
            _ => Ok(()),
        }
    }

    /// Copies every transfer `transfers[i]` from `sources[i]` to its new
    /// replica, slot by slot: the stretches of one slot with the same sources
    /// and receiver in one scan of the slot, [`STREAM_WORKERS`] slots at a
    /// time, so the sources' scans, the wire and the receiver's merge overlap.
    /// The highest log position written here (cells copied to this node are
    /// applied but not yet synced: the caller commits them once).
    fn copy_transfers(self: &Arc<Self>, transfers: &[Transfer], sources: &[Vec<NodeId>], byte_ordered: bool) -> Result<u64> {
        use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
        let paxos_pos = self.copy_paxos_states(transfers, sources)?;
        type Job = (u8, Vec<NodeId>, NodeId);
        let mut grouped: BTreeMap<Job, Vec<usize>> = BTreeMap::new();
        let mut left: Vec<AtomicUsize> = Vec::new();
        for (i, t) in transfers.iter().enumerate() {
            let slots = slots_of(t, byte_ordered);
            if slots.is_empty() {
                self.progress.lock().transfers_done += 1;
            }
            left.push(AtomicUsize::new(slots.len()));
            for slot in slots {
                grouped.entry((slot, sources[i].clone(), t.to)).or_default().push(i);
            }
        }
        // A job names at most MAX_STREAM_RANGES stretches.
        let jobs: Vec<(Job, Vec<usize>)> = grouped
            .into_iter()
            .flat_map(|(job, ts)| ts.chunks(crate::message::MAX_STREAM_RANGES).map(|c| (job.clone(), c.to_vec())).collect::<Vec<_>>())
            .collect();
        let next = AtomicUsize::new(0);
        let pos = AtomicU64::new(0);
        *self.stream_pace.lock() = (Instant::now(), 0);
        // Snapshots wait (up to a bound) until the copy is over, however it ends.
        struct Copying<'n>(&'n Node);
        impl Drop for Copying<'_> {
            fn drop(&mut self) {
                self.0.copying.store(false, Ordering::Release);
            }
        }
        self.copying.store(true, Ordering::Release);
        let _copying = Copying(self);
        let failed: parking_lot::Mutex<Option<Error>> = parking_lot::Mutex::new(None);
        std::thread::scope(|s| {
            for _ in 0..STREAM_WORKERS.min(jobs.len()) {
                s.spawn(|| {
                    loop {
                        let j = next.fetch_add(1, Ordering::Relaxed);
                        if j >= jobs.len() || failed.lock().is_some() || self.shutdown.load(Ordering::Acquire) {
                            return;
                        }
                        let ((slot, from, to), ts) = &jobs[j];
                        let ranges: Vec<(i64, i64)> = ts.iter().map(|&i| (transfers[i].lo, transfers[i].hi)).collect();
                        match self.copy_stretch(*slot, &ranges, from, *to) {
                            Ok(p) => {
                                pos.fetch_max(p, Ordering::AcqRel);
                                for &i in ts {
                                    if left[i].fetch_sub(1, Ordering::AcqRel) == 1 {
                                        self.progress.lock().transfers_done += 1;
                                    }
                                }
                            }
                            Err(e) => {
                                failed.lock().get_or_insert(e);
                                return;
                            }
                        }
                    }
                });
            }
        });
        if let Some(e) = failed.into_inner() {
            return Err(e);
        }
        if self.shutdown.load(Ordering::Acquire) {
            return Err(Error::Failure(format!("{} is stopping", self.cfg.name)));
        }
        Ok(pos.into_inner().max(paxos_pos))
    }

    /// Copies the Paxos acceptor state of the keys of every transfer from
    /// its sources (merged: each field only moves forward) to its new
    /// replica, before the cells. A value accepted by a quorum of the old
    /// replicas is chosen (its client may have been answered) though its
    /// commits may not have arrived; if the replica that gives the range up
    /// held it, only that replica's state can carry it to its successor, and
    /// without it a quorum of the new replica set (the others that missed it
    /// and the new replica) would not see it: a SERIAL read would then miss
    /// a write it was told succeeded. This runs once every live member holds
    /// the movement's epoch, so every later proposal for these keys counts
    /// the new replica in. The highest log position written here.
    fn copy_paxos_states(self: &Arc<Self>, transfers: &[Transfer], sources: &[Vec<NodeId>]) -> Result<u64> {
        // The stretches of each (sources, receiver) pair.
        type Pair = (Vec<NodeId>, NodeId);
        let mut grouped: BTreeMap<Pair, Vec<(i64, i64)>> = BTreeMap::new();
        for (i, t) in transfers.iter().enumerate() {
            grouped.entry((sources[i].clone(), t.to)).or_default().push((t.lo, t.hi));
        }
        let mut pos = 0;
        for ((from, to), ranges) in grouped {
            for chunk in ranges.chunks(crate::message::MAX_STREAM_RANGES) {
                let mut after: Option<Key> = None;
                loop {
                    let msg = PeerRequest::PaxosStates { ranges: chunk.to_vec(), after: after.clone() };
                    let mut merged = Acceptor::new();
                    let (mut bound, mut any_more): (Option<Key>, bool) = (None, false);
                    for (f, r) in from.iter().zip(self.gather(from.clone(), msg)) {
                        match r {
                            Some(Ok(PeerResponse::PaxosStates { states, more })) => {
                                note_page(&mut bound, &mut any_more, more, states.last().map(|(k, _)| k));
                                for (k, s) in states {
                                    merged.load(k, s);
                                }
                            }
                            other => {
                                return Err(Error::Failure(format!(
                                    "copying the acceptor state of {} stretch(es) from {}: {}",
                                    chunk.len(),
                                    self.ring().name(*f),
                                    crate::node::admin::why(other)
                                )));
                            }
                        }
                    }
                    let states: Vec<(Key, KeyState)> = merged
                        .states()
                        .filter(|(k, _)| bound.as_ref().is_none_or(|b| *k <= b))
                        .map(|(k, s)| (k.clone(), s.clone()))
                        .collect();
                    pos = pos.max(self.deliver_states(to, states)?);
                    match next_page(after.as_ref(), bound, any_more, "acceptor states")? {
                        Some(b) => after = Some(b),
                        None => break,
                    }
                }
            }
        }
        Ok(pos)
    }

    /// Merges acceptor `states` into `to`'s: here, logged (the position
    /// returned for the caller to commit); elsewhere in batches, durable
    /// when it returns.
    fn deliver_states(self: &Arc<Self>, to: NodeId, states: Vec<(Key, KeyState)>) -> Result<u64> {
        if states.is_empty() {
            return Ok(0);
        }
        if to == self.me {
            let (result, ack) = self.load_paxos_states(states);
            result?;
            return Ok(ack.map_or(0, |a| a.pos));
        }
        let send = |batch: Vec<(Key, KeyState)>| -> Result<()> {
            match self.gather(vec![to], PeerRequest::PaxosLoad { states: batch }).pop().flatten() {
                Some(Ok(PeerResponse::Applied(_))) => Ok(()),
                other => {
                    Err(Error::Failure(format!("sending acceptor states to {}: {}", self.ring().name(to), crate::node::admin::why(other))))
                }
            }
        };
        in_batches(states, |(k, s)| k.len() + s.accepted.as_ref().and_then(|a| a.value.as_ref()).map_or(0, |v| v.len()), send)?;
        Ok(0)
    }

    /// Copies the cells of slot `slot` in the stretches `ranges` from `from`
    /// (merged: the newest version of each key) to `to` (this node: applied
    /// here, not synced; the highest log position written is returned for the
    /// caller to commit).
    fn copy_stretch(self: &Arc<Self>, slot: u8, ranges: &[(i64, i64)], from: &[NodeId], to: NodeId) -> Result<u64> {
        debug_assert!(!ranges.is_empty(), "a stream names its stretches");
        let mut after: Option<Key> = None;
        let mut pos = 0;
        loop {
            if self.shutdown.load(std::sync::atomic::Ordering::Acquire) {
                return Err(Error::Failure(format!("{} is stopping", self.cfg.name)));
            }
            let msg = PeerRequest::Stream { slot, ranges: ranges.to_vec(), after: after.clone(), packed: true };
            let mut merged: BTreeMap<Key, Version> = BTreeMap::new();
            let mut bound: Option<Key> = None;
            let mut any_more = false;
            let mut single = None;
            let mut applied = None;
            for (f, r) in from.iter().zip(self.gather(from.to_vec(), msg)) {
                let failed = |why: String| {
                    let stretches: Vec<String> = ranges.iter().map(|(lo, hi)| format!("({lo}, {hi}]")).collect();
                    Error::Failure(format!("copying tokens {} of slot {slot} from {}: {why}", stretches.join(" "), self.ring().name(*f)))
                };
                let (cells, more) = match r {
                    // One source, to this node: its page applied as it is read (in key order, nothing to merge).
                    Some(Ok(PeerResponse::Packed { page, more })) if from.len() == 1 && to == self.me => {
                        let (n, bytes, last, p) = self.apply_page(&page).map_err(|e| failed(e.to_string()))?;
                        any_more = more;
                        bound = if more { last } else { None };
                        applied = Some((n, bytes, p));
                        continue;
                    }
                    Some(Ok(PeerResponse::Packed { page, more })) => (unpack(&page).map_err(|e| failed(e.to_string()))?, more),
                    Some(Ok(PeerResponse::Cells { cells, more })) => (cells, more),
                    other => return Err(failed(crate::node::admin::why(other))),
                };
                if from.len() == 1 {
                    // One source: its page as it is (in key order, nothing to merge).
                    any_more = more;
                    bound = if more { cells.last().map(|(k, _)| k.clone()) } else { None };
                    single = Some(cells);
                } else {
                    note_page(&mut bound, &mut any_more, more, cells.last().map(|(k, _)| k));
                    for (k, v) in cells {
                        match merged.get(&k) {
                            Some(old) if *old >= v => {}
                            _ => {
                                merged.insert(k, v);
                            }
                        }
                    }
                }
            }
            let (n, bytes) = match applied {
                Some((n, bytes, p)) => {
                    pos = pos.max(p);
                    (n, bytes)
                }
                None => {
                    let cells: Vec<(Key, Version)> = match single {
                        Some(cells) => cells,
                        None => merged.into_iter().filter(|(k, _)| bound.as_ref().is_none_or(|b| k <= b)).collect(),
                    };
                    let bytes: u64 = cells.iter().map(|(k, v)| (k.len() + v.value.as_ref().map_or(0, |b| b.len())) as u64).sum();
                    let n = cells.len() as u64;
                    pos = pos.max(self.deliver_cells(to, cells)?);
                    (n, bytes)
                }
            };
            {
                let mut p = self.progress.lock();
                p.keys += n;
                p.bytes += bytes;
            }
            self.pace_stream(bytes);
            match next_page(after.as_ref(), bound, any_more, &format!("cells of slot {slot}"))? {
                Some(b) => after = Some(b),
                None => return Ok(pos),
            }
        }
    }

    /// Applies a packed page's cells here (applied, not synced; the page
    /// logged as one record): how many, their bytes, the last key and the
    /// log position written. Nothing applied if any cell is not well formed.
    fn apply_page(&self, page: &[u8]) -> Result<(u64, u64, Option<Key>, u64)> {
        let limits = self.limits();
        // Every key as the store holds it already (a byte-ordered key in its one spelling).
        let applied = self.store.apply_page(page, |k| match checked_key(&limits, k)? {
            Cow::Borrowed(_) => Ok(()),
            Cow::Owned(o) if o == k => Ok(()),
            Cow::Owned(o) => Err(Error::Protocol(format!("a copied key {:?} is not written as the cluster writes it ({:?})", k, o))),
        })?;
        if let Some(ts) = applied.newest {
            let _ = self.clock.observe(ts, self.cfg.max_clock_offset);
        }
        Ok((applied.cells, applied.bytes, applied.last, applied.pos))
    }

    /// Keeps the movement's copying under `--stream-throughput`: after a page
    /// of `bytes`, waits until the bytes copied since the movement began are
    /// due at that rate.
    fn pace_stream(&self, bytes: u64) {
        let rate = self.cfg.stream_throughput;
        if rate == 0 {
            return;
        }
        let due = {
            let mut pace = self.stream_pace.lock();
            pace.1 += bytes;
            pace.0 + Duration::from_secs_f64(pace.1 as f64 / rate as f64)
        };
        // In short naps, so a stopping node does not wait for a slow pace.
        while Instant::now() < due && !self.shutdown.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep((due - Instant::now()).min(Duration::from_millis(100)));
        }
    }

    /// Merges `cells` into `to`'s store: elsewhere in `Apply` batches, durable
    /// when it returns; here directly, applied but not synced: the highest log
    /// position written, for the caller to commit.
    fn deliver_cells(self: &Arc<Self>, to: NodeId, cells: Vec<(Key, Version)>) -> Result<u64> {
        if cells.is_empty() {
            return Ok(0);
        }
        if to == self.me {
            let limits = self.limits();
            let mut last = 0;
            let mut newest = None;
            for (k, v) in &cells {
                newest = newest.max(Some(v.ts));
                last = last.max(self.store.apply_borrowed(&checked_key(&limits, k.as_bytes())?, v.borrowed())?.pos);
            }
            if let Some(ts) = newest {
                let _ = self.clock.observe(ts, self.cfg.max_clock_offset);
            }
            return Ok(last);
        }
        let send = |batch: Vec<(Key, Version)>| -> Result<()> {
            match self.gather(vec![to], PeerRequest::Apply { cells: batch }).pop().flatten() {
                Some(Ok(PeerResponse::Applied(_))) => Ok(()),
                other => Err(Error::Failure(format!("sending cells to {}: {}", self.ring().name(to), crate::node::admin::why(other)))),
            }
        };
        in_batches(cells, |(k, v)| k.len() + v.value.as_ref().map_or(0, |b| b.len()), send)?;
        Ok(0)
    }

    /// Ends the movement under way (if it is still `kind` of this node's
    /// doing): the next epoch, by consensus.
    fn finish_movement(self: &Arc<Self>, kind: MoveKind) -> Result<()> {
        let before = self.view().meta.moving;
        let meta = self.change_metadata(|m: &Metadata| {
            if m.moving != before {
                return Err(Error::InvalidRequest(format!("the {kind} is no longer the movement under way")));
            }
            m.finish()
        })?;
        let mut p = self.progress.lock();
        p.running = false;
        p.epoch = meta.epoch;
        p.elapsed = p.started.map_or(Duration::ZERO, |t| t.elapsed());
        log::info!(
            "{}: {} of {} done at epoch {}: {} keys ({} bytes) copied in {:.1} s",
            self.cfg.name,
            p.kind,
            p.node,
            meta.epoch,
            p.keys,
            p.bytes,
            p.elapsed.as_secs_f64()
        );
        Ok(())
    }

    /// Hands this node's stretches to their new replicas, then leaves the ring
    /// and stops the node.
    fn decommission(self: &Arc<Self>, force: bool) -> Result<()> {
        self.leave(self.me, MoveKind::Decommission, force)?;
        log::info!("{}: decommissioned; stopping", self.cfg.name);
        self.shutdown.store(true, std::sync::atomic::Ordering::Release);
        Ok(())
    }

    /// Rebuilds the stretches of dead member `name` on their new replicas
    /// from the surviving ones, then removes it from the ring.
    fn remove_node(self: &Arc<Self>, name: &str, force: bool) -> Result<()> {
        let id = self.view().meta.named(name).map(|m| m.info.id).ok_or_else(|| Error::InvalidRequest(format!("{name} is not a member")))?;
        self.leave(id, MoveKind::RemoveNode, force)
    }

    /// Member `id` leaves by `kind`: the epoch that makes it LEAVING (unless
    /// under way already), every stretch it gives up copied to its new replica
    /// merged from the live old replicas (the leaving one too if it is this
    /// node; a leave's token hand-over can change more than its place in a
    /// replica set, so a write it missed but the others acknowledged must not
    /// be lost), then the epoch that removes it.
    fn leave(self: &Arc<Self>, id: NodeId, kind: MoveKind, force: bool) -> Result<()> {
        if self.view().meta.moving != Some((id, kind)) {
            self.change_metadata(|m| m.begin_leave(id, kind, force))?;
        }
        self.wait_epoch_everywhere(self.view().epoch())?;
        let view = self.view();
        let transfers: Vec<Transfer> = view.meta.transfers()?;
        {
            let mut p = self.progress.lock();
            p.transfers = transfers.len() as u64;
            p.epoch = view.epoch();
        }
        let mut sources = Vec::new();
        for t in &transfers {
            let live: Vec<NodeId> = t.from.iter().copied().filter(|&f| f == self.me || (f != id && self.alive(f))).collect();
            if live.is_empty() {
                return Err(Error::Unavailable(format!("no surviving replica of tokens ({}, {}] is up", t.lo, t.hi)));
            }
            sources.push(live);
        }
        let pos = self.copy_transfers(&transfers, &sources, view.ring.sorted_tokens().is_empty())?;
        // Stretches this node gained (a removenode run here) are durable before the leave ends.
        self.sync_copied(pos)?;
        self.finish_movement(kind)
    }

    /// Drops the cells this node no longer replicates (after a movement
    /// ended; nothing while one is under way). How many.
    pub fn cleanup(&self) -> usize {
        let view = self.view();
        if view.meta.moving.is_some() {
            return 0;
        }
        let ring = view.ring.clone();
        let me = self.me;
        let mut dropped = 0;
        for slot in 0..=255u8 {
            // Under the view's read lock: no new epoch (which might make this
            // node a pending replica of these keys) is installed meanwhile.
            let now = self.view.read();
            if now.epoch() != view.epoch() {
                break;
            }
            dropped += self.store.drop_where(slot, |key| !ring.replicas(key).contains(&me));
            drop(now);
        }
        if dropped > 0 {
            log::info!("{}: dropped {dropped} cells it no longer replicates (epoch {})", self.cfg.name, view.epoch());
        }
        dropped
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::Ring;
    use crate::config::NodeConfig;
    use crate::node::test_util::NoPeers;
    use crate::storage::hlc::Timestamp;

    /// A murmur3 node on its own holding `keys` (small values) and 40 keys
    /// of 40 KiB in slot 77, so that slot takes two pages.
    fn node_with_cells() -> Arc<Node> {
        let infos =
            (0..3).map(|i| NodeInfo { name: format!("n{i}"), host: "127.0.0.1".into(), port: 1 + i as u16, id: NodeId(i) }).collect();
        let ring = Ring::murmur3(infos, &[], 4, 3, 1).unwrap();
        let node = Node::new(NodeConfig::new("n0", "127.0.0.1".parse().unwrap(), 1), ring, Arc::new(NoPeers)).unwrap().0;
        let ts = |i: u64| Timestamp { micros: 1000 + i, node: 1 };
        let (mut big, mut i) = (0, 0u64);
        while i < 3000 || big < 40 {
            let key = Key::trusted(format!("key:{i}").into_bytes());
            let slot = node.ring().slot(key.as_bytes());
            let version = match (slot, i % 7) {
                (77, _) if big < 40 => {
                    big += 1;
                    Version::value(ts(i), vec![i as u8; 40 << 10])
                }
                (_, 0) => Version::tombstone(ts(i)),
                _ if i < 3000 => Version::value(ts(i), format!("v{i}")),
                _ => {
                    i += 1;
                    continue;
                }
            };
            node.store.load(key, version);
            i += 1;
        }
        node
    }

    /// What a stream of slot `slot` over `ranges` sends, page after page,
    /// packed or not.
    fn streamed(node: &Node, slot: u8, ranges: &[(i64, i64)], packed: bool) -> (Vec<(Key, Version)>, usize) {
        let (mut out, mut pages, mut after) = (Vec::new(), 0, None);
        loop {
            pages += 1;
            let (cells, more) = match node.stream_cells(slot, ranges, after.as_ref(), packed) {
                PeerResponse::Packed { page, more } if packed => (unpack(&page).unwrap(), more),
                PeerResponse::Cells { cells, more } if !packed => (cells, more),
                other => panic!("packed {packed}: {other:?}"),
            };
            after = cells.last().map(|(k, _)| k.clone());
            out.extend(cells);
            if !more {
                return (out, pages);
            }
        }
    }

    /// A stream sends exactly the slot's cells whose tokens are in its
    /// stretches, in key order, over pages, packed or not: for the whole
    /// slot, part of it, adjacent parts that together cover it (no key
    /// hashed), a stretch wrapping round the ring, and one missing it.
    #[test]
    fn a_stream_sends_the_cells_of_its_stretches_packed_or_not() {
        let node = node_with_cells();
        let ring = node.ring();
        for slot in [0u8, 77, 128, 255] {
            let (a, b) = token::slot_span(slot);
            let mid = a + (b - a) / 3;
            let cases: Vec<Vec<(i64, i64)>> = vec![
                vec![(a.wrapping_sub(1), b)],
                vec![(a.wrapping_sub(1), mid)],
                vec![(mid, b)],
                vec![(mid, b), (a.wrapping_sub(1), mid)],
                vec![(b, a + (b - a) / 2)],
                vec![(b, a.wrapping_sub(1))],
                vec![(a.wrapping_sub(1), mid), (mid + (b - mid) / 2, b)],
            ];
            for ranges in cases {
                let want: Vec<(Key, Version)> = node
                    .store
                    .slot_cells(slot)
                    .into_iter()
                    .filter(|(k, _)| ranges.iter().any(|&(lo, hi)| in_range(lo, hi, ring.token_of(k.as_bytes()))))
                    .collect();
                let (packed, pages) = streamed(&node, slot, &ranges, true);
                assert_eq!(packed, want, "slot {slot} {ranges:?} packed");
                let (cells, _) = streamed(&node, slot, &ranges, false);
                assert_eq!(cells, want, "slot {slot} {ranges:?}");
                if slot == 77 && ranges.len() == 1 && ranges[0] == (a.wrapping_sub(1), b) {
                    assert!(pages >= 2, "slot 77 takes more than one page: {pages}");
                }
            }
        }
    }
}
