//! Transactions on a replica (see [`crate::txn`] and
//! `docs/ARCHITECTURE.md`): the coordinator's side (a client's `txn`, run as
//! a [`TxnMachine`] call), the participant's (prepares, resolutions), the
//! record acceptor's, and recovery of intents held past `--txn-timeout`.
//!
//! Intents and records live beside the Paxos acceptor, under its lock, so a
//! prepare and a SERIAL round on the same key see each other: a prepare
//! votes no while a SERIAL proposal is accepted and not committed, and the
//! acceptor refuses SERIAL prepares and proposals on a key an intent holds
//! (the SERIAL operation backs off and retries). Each change is logged
//! before the answer, as the acceptor's are: the reply waits for its log
//! position (and every earlier one of the acceptor's) to be durable.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::call::{Call, Machine};
use crate::coordinator::command::ReplyTo;
use crate::coordinator::write::Restamp;
use crate::error::{Error, Result};
use crate::message::txn::{ended_log, intent_log, record_forget_log, record_log};
use crate::message::{PeerResponse, PeerResult, Reply};
use crate::node::coordinate::Later;
use crate::node::{Answered, Handled, Node, PendingAck};
use crate::paxos::Ballot;
use crate::storage::cell::Version;
use crate::txn::coordinator::{KeyPlan, RecoveryMachine, TxnMachine};
use crate::txn::intents::{Intent, IntentRecord, IntentWrite, Outcome};
use crate::txn::mget::{MGetMachine, Place, ReadPlan};
use crate::txn::record::{Decision, RecordRequest};
use crate::txn::{HeldBy, TxnId, TxnSpec};

/// How often the recovery thread looks for intents past the timeout.
pub const RECOVERY_TICK: Duration = Duration::from_millis(100);

/// The most transactions one recovery tick starts.
const RECOVERIES_PER_TICK: usize = 64;

/// A key to stand for a reply that wrote no cell (its ack is not noted).
fn no_key() -> Key {
    Key::trusted(vec![b'0'])
}

impl Node {
    fn restamp(self: &Arc<Self>) -> Restamp {
        let node = Arc::downgrade(self);
        Arc::new(move |newer| {
            let node = node.upgrade()?;
            node.clock.observe(newer, node.cfg.max_clock_offset).ok()?;
            Some(node.clock.now())
        })
    }

    /// Each key's replicas and quorum as a SERIAL operation on it would use
    /// them (a movement's pending replica counted in); `Unavailable` if fewer
    /// than a quorum of some key's replicas are alive.
    fn txn_plan(&self, spec: &TxnSpec) -> Result<(Vec<KeyPlan>, u64)> {
        let view = self.view();
        let mut plans = Vec::new();
        for key in spec.keys() {
            let (_, quorum) = self.check_available_in(&view.ring, &key.key, Consistency::Serial)?;
            let (replicas, pending) = view.write_targets(&key.key);
            plans.push(KeyPlan { key, replicas: replicas.to_vec(), quorum: quorum + pending });
        }
        Ok((plans, view.epoch()))
    }

    /// A client's transaction: answered by its call with `later`, otherwise waited for.
    pub(crate) fn txn_request(self: &Arc<Self>, spec: TxnSpec, later: Later<'_>) -> Result<Answered<Handled>> {
        spec.check(self.cfg.max_txn_keys, self.cfg.max_txn_bytes)?;
        let (plans, epoch) = self.txn_plan(&spec)?;
        let txn = TxnId(self.clock.now());
        let machine = TxnMachine::new(txn, plans, epoch, self.restamp(), self.cfg.mode.hinted_handoff());
        let late = || Error::Timeout(format!("{txn} was not decided by its deadline; it may or may not have been applied"));
        Ok(self.run_machine(machine, later, TxnMachine::reply_to, |m| m.answer().cloned(), late))
    }

    /// Starts `machine`: with `later`, the connection's reply is deferred and
    /// the machine (told where by `reply_to`) answers it; otherwise this
    /// waits for its answer (`late()` if none came by the deadline).
    fn run_machine<M: Machine + 'static>(
        self: &Arc<Self>,
        machine: M,
        later: Later<'_>,
        reply_to: fn(M, ReplyTo) -> M,
        answer: fn(&M) -> Option<Reply>,
        late: impl FnOnce() -> Error,
    ) -> Answered<Handled> {
        let deadline = self.deadline();
        if let Some((responder, token)) = later {
            responder.defer(token);
            let machine = reply_to(machine, ReplyTo { responder: responder.clone(), token, deadline });
            let call = Call::new(machine, self.clone(), self.budget.clone(), deadline);
            call.start();
            return Answered::Later(crate::node::Unfinished { call, deadline });
        }
        let call = Call::new(machine, self.clone(), self.budget.clone(), deadline);
        call.start();
        let reply = answer(&call.wait());
        call.finish();
        Answered::Now(Handled::of(reply.unwrap_or_else(|| Reply::Error(late()))))
    }

    /// A participant's prepare: holds each key for `txn` (logging an intent)
    /// or votes no; one vote an item.
    pub(crate) fn serve_txn_prepare(
        &self,
        txn: TxnId,
        anchor: Key,
        items: Vec<(Key, IntentWrite)>,
        epoch: u64,
    ) -> (PeerResult, Option<PendingAck>) {
        let view = self.view.read();
        for (key, _) in &items {
            if let Err(e) = self.check_epoch(key, epoch, view.epoch()) {
                return (Err(e), None);
            }
        }
        let since = self.clock.now().micros;
        let mut st = self.paxos.lock();
        let mut votes = Vec::with_capacity(items.len());
        let mut taken = Vec::new();
        for (key, write) in items {
            // A SERIAL proposal accepted here and not yet committed or superseded is in flight.
            let cell = self.store.get(key.as_bytes());
            let serial = st.acceptor.state(&key).is_some_and(|s| self.serial_in_flight(&key, s, cell.as_ref()));
            let intent = Intent { txn, anchor: anchor.clone(), write, since };
            let (vote, record) = st.intents.prepare(&key, intent, serial, cell.as_ref());
            if let Some(IntentRecord::Prepared { key, intent }) = record {
                if let Some(wal) = &self.wal {
                    match wal.append(&intent_log(&key, &intent)) {
                        Ok(pos) => st.last_pos = st.last_pos.max(pos),
                        Err(e) => {
                            // Nothing unlogged is held: let go of this request's keys.
                            st.intents.resolve(&key, txn, Outcome::Aborted);
                            for k in taken {
                                st.intents.resolve(&k, txn, Outcome::Aborted);
                            }
                            return (Err(e), None);
                        }
                    }
                }
                taken.push(key);
            }
            votes.push(vote);
        }
        let pos = st.last_pos;
        // Read under the lock, after the intents were taken: a read served here
        // before them observed its timestamp already, so this is after it.
        let clock = self.clock.now();
        (Ok(PeerResponse::TxnVotes(votes, clock)), Some(PendingAck { pos, key: no_key(), ts: None }))
    }

    /// Refuses a stamp (a record's ballot, a commit timestamp) further ahead
    /// of this replica's clock than `--max-clock-offset`, as a peer write's:
    /// a broken or hostile peer's `u64::MAX` ballot would otherwise make a
    /// record unsettleable, and its commit timestamp would win every later write.
    fn check_stamp(&self, ts: crate::storage::hlc::Timestamp, what: &str) -> Result<()> {
        self.clock.observe(ts, self.cfg.max_clock_offset).map_err(|ahead| {
            Error::InvalidRequest(format!(
                "{what} stamped {} ms ahead of {}'s clock (the limit is {} ms); check the clocks",
                ahead.as_millis(),
                self.cfg.name,
                self.cfg.max_clock_offset.as_millis()
            ))
        })
    }

    /// A record acceptor's request.
    pub(crate) fn serve_txn_record(&self, req: RecordRequest) -> (PeerResult, Option<PendingAck>) {
        let txn = req.txn();
        let ballot = match req {
            RecordRequest::Prepare { ballot, .. } | RecordRequest::Accept { ballot, .. } => Some(ballot),
            RecordRequest::Forget { .. } | RecordRequest::Peek { .. } => None,
        };
        if let Some(b) = ballot
            && let Err(e) = self.check_stamp(b.0, &format!("a record request of {txn}"))
        {
            return (Err(e), None);
        }
        if let RecordRequest::Accept { decision: Decision::Committed(ts), .. } = req
            && let Err(e) = self.check_stamp(ts, &format!("the commit of {txn}"))
        {
            return (Err(e), None);
        }
        let mut st = self.paxos.lock();
        let before = st.records.get(txn).copied();
        let (reply, state) = st.records.handle(req, self.clock.now().micros);
        if let (RecordRequest::Forget { .. }, Some(before), Some(wal)) = (req, before, &self.wal) {
            // Logged, so a restart does not bring back a record nobody will ask about.
            match wal.append(&record_forget_log(&before)) {
                Ok(pos) => st.last_pos = st.last_pos.max(pos),
                Err(e) => return (Err(e), None),
            }
        }
        if let (Some(state), Some(wal)) = (state, &self.wal) {
            match wal.append(&record_log(&state)) {
                Ok(pos) => st.last_pos = st.last_pos.max(pos),
                Err(e) => {
                    st.records.reset(txn, before);
                    return (Err(e), None);
                }
            }
        }
        let pos = st.last_pos;
        (Ok(PeerResponse::TxnRecord(reply)), Some(PendingAck { pos, key: no_key(), ts: None }))
    }

    /// A resolution: a committed write becomes a cell (held here or not), an
    /// intent of `txn` ends.
    pub(crate) fn serve_txn_resolve(
        &self,
        txn: TxnId,
        decision: Decision,
        items: Vec<(Key, IntentWrite)>,
    ) -> (PeerResult, Option<PendingAck>) {
        let outcome = match decision {
            Decision::Committed(ts) => Outcome::Committed(ts),
            Decision::Aborted => Outcome::Aborted,
        };
        if let Decision::Committed(ts) = decision
            && let Err(e) = self.check_stamp(ts, &format!("the commit of {txn}"))
        {
            return (Err(e), None);
        }
        let now = self.clock.now().micros;
        let mut st = self.paxos.lock();
        st.intents.note_ended(txn, now);
        let mut changed = 0;
        let mut pos = st.last_pos;
        for (key, write) in items {
            if let Decision::Committed(ts) = decision {
                let version = match write {
                    IntentWrite::Put(v) => Some(Version { ts, value: Some(v) }),
                    IntentWrite::Delete => Some(Version::tombstone(ts)),
                    IntentWrite::Compare => None,
                };
                if let Some(version) = version {
                    match self.store.apply(&key, version) {
                        Ok(applied) => {
                            pos = pos.max(applied.pos);
                            changed += u32::from(applied.changed);
                        }
                        // The intent stays: recovery resolves it again.
                        Err(e) => return (Err(e), None),
                    }
                }
            }
            let (_, record) = st.intents.resolve(&key, txn, outcome);
            if let (Some(IntentRecord::Resolved { key, txn }), Some(wal)) = (record, &self.wal) {
                match wal.append(&ended_log(&key, txn)) {
                    Ok(p) => pos = pos.max(p),
                    Err(e) => return (Err(e), None),
                }
            }
        }
        st.last_pos = st.last_pos.max(pos);
        let pos = st.last_pos;
        (Ok(PeerResponse::TxnResolved(changed)), Some(PendingAck { pos, key: no_key(), ts: None }))
    }

    /// Each key's cell and the intent holding it (read together, under the
    /// acceptor's lock: a resolution writes the cell and ends the intent
    /// under it, so a read sees one or the other).
    pub(crate) fn serve_txn_read(&self, keys: &[Key], at: crate::storage::hlc::Timestamp) -> PeerResult {
        // The clock passes the read's timestamp first: a vote this replica
        // gives after this read is stamped after it (see `txn::mget`).
        self.check_stamp(at, "an mget's read")?;
        let st = self.paxos.lock();
        Ok(PeerResponse::TxnRead(
            keys.iter()
                .map(|k| {
                    let held = st.intents.holder(k).map(|i| HeldBy { txn: i.txn, anchor: i.anchor.clone(), write: i.write.clone() });
                    (self.store.get(k.as_bytes()), held)
                })
                .collect(),
        ))
    }

    /// The replicas of `key` and their quorum, as a transaction's record uses them.
    fn record_place(&self, key: &Key) -> (Vec<NodeId>, usize) {
        let view = self.view();
        let (replicas, pending) = view.write_targets(key);
        let quorum = replicas.len().saturating_sub(pending) / 2 + 1 + pending;
        (replicas.to_vec(), quorum)
    }

    /// A client's `mget`: answered by its call with `later`, otherwise waited for.
    pub(crate) fn mget_request(self: &Arc<Self>, keys: Vec<Key>, later: Later<'_>) -> Result<Answered<Handled>> {
        let view = self.view();
        let mut plans = Vec::with_capacity(keys.len());
        for key in keys {
            let (_, quorum) = self.check_available_in(&view.ring, &key, Consistency::Quorum)?;
            let (replicas, pending) = view.write_targets(&key);
            // Reads use the old set while a range moves: the pending replica is not asked.
            let replicas: Vec<NodeId> = replicas[..replicas.len() - pending].to_vec();
            plans.push(ReadPlan { key, replicas, quorum });
        }
        let node = Arc::downgrade(self);
        let place: Place = Arc::new(move |k: &Key| node.upgrade().map_or_else(|| (Vec::new(), 1), |n| n.record_place(k)));
        let machine = MGetMachine::new(plans, self.clock.now(), place, self.restamp());
        let late = || Error::Timeout("the mget was not answered by its deadline".into());
        Ok(self.run_machine(machine, later, MGetMachine::reply_to, |m| m.answer().cloned(), late))
    }

    /// Whether an intent holds `key` (the acceptor refuses SERIAL rounds on it).
    pub(crate) fn held_by_txn(st: &crate::node::paxos::AcceptorState, key: &Key) -> bool {
        st.intents.holder(key).is_some()
    }

    /// One recovery tick: for each transaction holding keys here past
    /// `--txn-timeout` (and not being recovered already), settles its
    /// record and resolves its intents here; drops records past their retention.
    pub fn recover_txns(self: &Arc<Self>) {
        let now = self.clock.now().micros;
        let timeout = u64::try_from(self.cfg.txn_timeout.as_micros()).unwrap_or(u64::MAX);
        let grace = self.forget_grace();
        let (old, stuck) = {
            let mut st = self.paxos.lock();
            st.records.expire(now, grace);
            st.intents.forget_ended(now.saturating_sub(grace));
            // SERIAL proposals accepted here long ago and never committed (their
            // proposer died): while one stands, a prepare of its key votes no.
            let stuck: Vec<Key> = st
                .acceptor
                .states()
                .filter(|(k, s)| {
                    s.accepted.as_ref().is_some_and(|p| p.ballot.0.micros < now.saturating_sub(timeout))
                        && self.serial_in_flight(k, s, self.store.get(k.as_bytes()).as_ref())
                })
                .map(|(k, _)| k.clone())
                .take(RECOVERIES_PER_TICK)
                .collect();
            (st.intents.older_than(now.saturating_sub(timeout)), stuck)
        };
        self.complete_stuck_proposals(stuck);
        // A finished recovery (decided, or outvoted) makes room for the next attempt.
        self.recovering.lock().retain(|_, call| !call.with(|m, _| m.complete()));
        if old.is_empty() {
            return;
        }
        let mut by_txn: BTreeMap<TxnId, Held> = BTreeMap::new();
        for (key, intent) in old {
            let e = by_txn.entry(intent.txn).or_insert_with(|| (intent.anchor.clone(), Vec::new(), intent.since));
            e.1.push((key, intent.write));
            e.2 = e.2.min(intent.since);
        }
        let due: Vec<(TxnId, Held)> = {
            let started = self.recovering.lock();
            by_txn
                .into_iter()
                .filter(|(txn, (_, _, since))| !started.contains_key(txn) && self.recovery_due(*txn, *since, now, timeout))
                .take(RECOVERIES_PER_TICK)
                .collect()
        };
        for (txn, (anchor, items, _)) in due {
            let place = self.record_place(&anchor);
            let mut resolve: Vec<(NodeId, Vec<(Key, IntentWrite)>)> = Vec::new();
            for (key, write) in items {
                for &r in self.view().write_targets(&key).0.iter() {
                    match resolve.iter_mut().find(|(n, _)| *n == r) {
                        Some((_, its)) => its.push((key.clone(), write.clone())),
                        None => resolve.push((r, vec![(key.clone(), write.clone())])),
                    }
                }
            }
            let machine = RecoveryMachine::new(txn, resolve, place, Ballot(self.clock.now()), self.restamp());
            let call = Call::new(machine, self.clone(), self.budget.clone(), self.deadline());
            self.recovering.lock().insert(txn, call.clone());
            call.start();
            // Outside the map's lock: it may wait for the call when the background budget is full.
            call.finish();
        }
    }

    /// How long a forgotten record, and a resolution remembered against a
    /// late prepare, are kept: well past any request's deadline.
    fn forget_grace(&self) -> u64 {
        let timeout = u64::try_from(self.cfg.request_timeout.as_micros()).unwrap_or(u64::MAX);
        crate::txn::record::FORGET_GRACE_MICROS.max(timeout.saturating_mul(4))
    }

    /// Whether a SERIAL round is in flight on `key` as this acceptor sees
    /// it: a proposal accepted above both its last commit and the cell held
    /// (a proposal the cell already supersedes, which a transaction's
    /// resolution or a repair may have brought, is over).
    fn serial_in_flight(&self, _key: &Key, s: &crate::paxos::acceptor::KeyState, cell: Option<&Version>) -> bool {
        s.accepted.as_ref().is_some_and(|p| p.ballot > s.committed && cell.is_none_or(|c| p.ballot.0 > c.ts))
    }

    /// Completes SERIAL proposals left accepted and uncommitted past the
    /// timeout with a SERIAL read of their keys (a read completes an
    /// in-flight proposal before it answers), so a transaction is never kept
    /// off a key by a dead SERIAL proposer. Only the first live replica of
    /// the key does it (several would outbid one another), at most one read a
    /// key every `--request-timeout`.
    fn complete_stuck_proposals(self: &Arc<Self>, keys: Vec<Key>) {
        let mut started = self.completing.lock();
        let again = self.cfg.request_timeout;
        started.retain(|_, at| at.elapsed() < again);
        let view = self.view();
        for key in keys {
            let first = view.write_targets(&key).0.iter().copied().find(|&r| self.alive(r));
            if started.contains_key(&key) || first != Some(self.me) {
                continue;
            }
            started.insert(key.clone(), std::time::Instant::now());
            // Unavailable (too few replicas alive): the next tick tries again.
            let _ = self.start_serial(key, crate::paxos::Op::Read, Box::new(|_| {}));
        }
    }

    /// Whether this node's turn to recover `txn` came: the replicas holding
    /// its intents would otherwise all start at once and outbid one another,
    /// so each waits past the timeout a further delay of up to half the
    /// timeout, drawn from its id and the transaction's, and again after each
    /// attempt (the clock moved on, so the draw differs).
    fn recovery_due(&self, txn: TxnId, since: u64, now: u64, timeout: u64) -> bool {
        let mut x = (u64::from(self.me.0) << 32) ^ txn.0.micros ^ (now / (timeout / 2).max(1));
        x = (x ^ (x >> 31)).wrapping_mul(0x9E37_79B9_7F4A_7C15);
        let delay = (x >> 11) % (timeout / 2).max(1);
        since.saturating_add(timeout).saturating_add(delay) <= now
    }

    /// The recovery thread: a tick every [`RECOVERY_TICK`] until shutdown.
    pub fn txn_recovery_loop(self: &Arc<Self>) {
        while !self.shutdown.load(std::sync::atomic::Ordering::Acquire) {
            std::thread::sleep(RECOVERY_TICK);
            self.recover_txns();
        }
    }
}

/// A transaction's intents on this node: its anchor, its keys and writes
/// here, and since when the oldest was held.
type Held = (Key, Vec<(Key, IntentWrite)>, u64);

/// Recovery attempts running, by transaction (so a tick does not start a
/// second one while the first runs).
pub type Recovering = parking_lot::Mutex<HashMap<TxnId, Arc<Call<RecoveryMachine>>>>;

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::cluster::ring::{NodeInfo, Ring};
    use crate::config::NodeConfig;
    use crate::message::PeerRequest;
    use crate::node::test_util::NoPeers;
    use crate::paxos::{Proposal, Request, Response};
    use crate::storage::hlc::Timestamp;
    use crate::storage::wal::FsyncMode;
    use crate::txn::intents::{Conflict, Vote};
    use crate::txn::record::{RecordReply, ZERO};

    fn node(dir: &Path) -> Arc<Node> {
        let nodes = (0..3)
            .map(|i| NodeInfo { name: format!("n{i}"), host: "127.0.0.1".into(), port: 1 + i as u16, id: NodeId(i as u32) })
            .collect();
        let mut cfg = NodeConfig::new("n0", "127.0.0.1".parse().unwrap(), 1);
        cfg.data_dir = Some(dir.to_path_buf());
        cfg.fsync = FsyncMode::Never;
        Node::new(cfg, Ring::new(nodes, 3, 1).unwrap(), Arc::new(NoPeers)).unwrap().0
    }

    struct Dir(PathBuf);
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    fn dir(tag: &str) -> Dir {
        let p = std::env::temp_dir().join(format!("qkv-txn-{tag}-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&p);
        Dir(p)
    }

    fn txn(micros: u64) -> TxnId {
        TxnId(Timestamp { micros, node: 9 })
    }

    fn put(v: &str) -> IntentWrite {
        IntentWrite::Put(v.as_bytes().into())
    }

    fn prepare(n: &Node, t: TxnId, items: Vec<(Key, IntentWrite)>) -> Vec<Vote> {
        match n.serve_peer_durably(PeerRequest::TxnPrepare { txn: t, anchor: Key::byte(1), items, epoch: 0 }) {
            Ok(PeerResponse::TxnVotes(v, _)) => v,
            other => panic!("{other:?}"),
        }
    }

    fn holders(n: &Node) -> Vec<(Key, TxnId)> {
        let mut h: Vec<(Key, TxnId)> = n.paxos.lock().intents.intents().map(|(k, i)| (k.clone(), i.txn)).collect();
        h.sort();
        h
    }

    /// Intents and records are logged before the answer and come back after
    /// a restart, from the log and then from a snapshot; a resolution's end
    /// of an intent and its cell come back too.
    #[test]
    fn intents_and_records_survive_restarts_and_snapshots() {
        let d = dir("restart");
        let commit = Decision::Committed(Timestamp { micros: 50, node: 9 });
        let (t1, t2, t9) = (txn(10), txn(20), txn(90));
        let b = Ballot(Timestamp { micros: 70, node: 3 });
        {
            let n = node(&d.0);
            let votes = prepare(&n, t1, vec![(Key::byte(1), put("one")), (Key::byte(2), IntentWrite::Compare)]);
            assert!(votes.iter().all(|v| matches!(v, Vote::Yes(None))));
            prepare(&n, t2, vec![(Key::byte(3), IntentWrite::Delete)]);
            let accept = RecordRequest::Accept { txn: t1, ballot: ZERO, decision: commit };
            assert_eq!(
                n.serve_peer_durably(PeerRequest::TxnRecord(accept)).unwrap(),
                PeerResponse::TxnRecord(RecordReply::Accepted { ballot: ZERO })
            );
            n.serve_peer_durably(PeerRequest::TxnRecord(RecordRequest::Prepare { txn: t9, ballot: b })).unwrap();
            let resolve =
                PeerRequest::TxnResolve { txn: t2, decision: Decision::Aborted, items: vec![(Key::byte(3), IntentWrite::Delete)] };
            n.serve_peer_durably(resolve).unwrap();
        }
        let check = |n: &Node| {
            assert_eq!(holders(n), vec![(Key::byte(1), t1), (Key::byte(2), t1)], "t2's intent ended");
            let st = n.paxos.lock();
            assert_eq!(st.records.get(t1).unwrap().accepted, Some((ZERO, commit)));
            assert_eq!(st.records.get(t9).unwrap().promised, b);
        };
        let n = node(&d.0);
        check(&n);
        n.snapshot().unwrap();
        drop(n);
        let n = node(&d.0);
        check(&n);
        let resolve = PeerRequest::TxnResolve {
            txn: t1,
            decision: commit,
            items: vec![(Key::byte(1), put("one")), (Key::byte(2), IntentWrite::Compare)],
        };
        assert_eq!(n.serve_peer_durably(resolve).unwrap(), PeerResponse::TxnResolved(1));
        drop(n);
        let n = node(&d.0);
        assert!(holders(&n).is_empty());
        let cell = n.store.get(Key::byte(1).as_bytes()).unwrap();
        assert_eq!((cell.ts, cell.value.as_deref()), (Timestamp { micros: 50, node: 9 }, Some(&b"one"[..])));
        assert!(n.store.get(Key::byte(2).as_bytes()).is_none(), "a compared key writes nothing");
    }

    /// A SERIAL proposal accepted here that a newer cell superseded (a
    /// transaction's resolution brought it; the proposal's own commit never
    /// came) is over: prepares vote yes. (Found by a review: the first
    /// version voted no on the key for as long as the acceptor kept it.)
    #[test]
    fn a_proposal_a_newer_cell_superseded_does_not_refuse_transactions() {
        let d = dir("superseded");
        let n = node(&d.0);
        let k = Key::byte(5);
        let now = n.clock.now().micros;
        let b1 = Ballot(Timestamp { micros: now + 10, node: 1 });
        let paxos = |req: Request| match n.serve_peer_durably(PeerRequest::Paxos(req, 0)) {
            Ok(PeerResponse::Paxos(r)) => r,
            other => panic!("{other:?}"),
        };
        paxos(Request::Prepare { key: k.clone(), ballot: b1 });
        let p = Proposal { ballot: b1, origin: b1, value: Some(b"s".to_vec().into()) };
        assert!(matches!(paxos(Request::Propose { key: k.clone(), proposal: p }), Response::Accepted { .. }));
        let ts = Timestamp { micros: now + 20, node: 9 };
        let resolve = PeerRequest::TxnResolve { txn: txn(1), decision: Decision::Committed(ts), items: vec![(k.clone(), put("t"))] };
        n.serve_peer_durably(resolve).unwrap();
        let votes = prepare(&n, txn(2), vec![(k.clone(), put("u"))]);
        assert_eq!(votes, vec![Vote::Yes(n.store.get(k.as_bytes()))]);
    }

    /// A SERIAL proposal accepted and not committed makes a prepare vote no;
    /// a key an intent holds makes the acceptor refuse SERIAL prepares and
    /// proposals until the intent ends; a late prepare of a resolved
    /// transaction takes nothing.
    #[test]
    fn serial_rounds_and_transactions_exclude_each_other_key_by_key() {
        let d = dir("serial");
        let n = node(&d.0);
        let k = Key::byte(5);
        let b = |after: u64| Ballot(Timestamp { micros: n.clock.now().micros + after, node: 1 });
        let paxos = |req: Request| match n.serve_peer_durably(PeerRequest::Paxos(req, 0)) {
            Ok(PeerResponse::Paxos(r)) => r,
            other => panic!("{other:?}"),
        };
        let b1 = b(10);
        let p = Proposal { ballot: b1, origin: b1, value: Some(b"s".to_vec().into()) };
        paxos(Request::Prepare { key: k.clone(), ballot: b1 });
        assert!(matches!(paxos(Request::Propose { key: k.clone(), proposal: p.clone() }), Response::Accepted { .. }));
        assert_eq!(prepare(&n, txn(1), vec![(k.clone(), put("t"))]), vec![Vote::No(Conflict::Serial)]);
        paxos(Request::Commit { key: k.clone(), proposal: p });
        let votes = prepare(&n, txn(2), vec![(k.clone(), put("t"))]);
        assert!(matches!(&votes[0], Vote::Yes(Some(v)) if v.ts == b1.0), "yes, with the committed cell");
        let b2 = b(20);
        assert!(matches!(paxos(Request::Prepare { key: k.clone(), ballot: b2 }), Response::Rejected { .. }), "held");
        let items = vec![(k.clone(), put("t"))];
        n.serve_peer_durably(PeerRequest::TxnResolve { txn: txn(2), decision: Decision::Aborted, items: items.clone() }).unwrap();
        assert!(matches!(paxos(Request::Prepare { key: k.clone(), ballot: b(30) }), Response::Promise { .. }), "free again");
        assert_eq!(prepare(&n, txn(2), items), vec![Vote::No(Conflict::Ended)], "a late prepare takes nothing");
        assert!(holders(&n).is_empty());
        // Stamps far ahead of the clock are refused, nothing kept.
        let far = Timestamp { micros: n.clock.now().micros + 3_600_000_000, node: 1 };
        let wild = RecordRequest::Prepare { txn: txn(7), ballot: Ballot(far) };
        assert!(n.serve_peer_durably(PeerRequest::TxnRecord(wild)).unwrap_err().to_string().contains("ahead of"));
        assert!(n.paxos.lock().records.get(txn(7)).is_none());
        let resolve = PeerRequest::TxnResolve { txn: txn(7), decision: Decision::Committed(far), items: vec![(k.clone(), put("x"))] };
        assert!(n.serve_peer_durably(resolve).unwrap_err().to_string().contains("ahead of"));
    }
}
