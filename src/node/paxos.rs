//! Serving a Paxos proposer: this replica's acceptor ([`crate::paxos`]).
//!
//! A request is handled under the acceptor's lock, in one step: the store's
//! current cell for the key is read, [`Acceptor::handle`] changes the state
//! and returns the record to persist, the record is appended to the log (a
//! commit's record carries its cell and is appended under the cell's slot
//! lock as the cell is written, like [`Store::apply`](crate::storage::store::Store::apply)),
//! and the lock is released. The reply goes back with a [`PendingAck`] whose
//! log position covers the record *and every paxos record appended before
//! it* (a request that needs no record, such as a repeated promise, waits
//! for the last one), so the server's group commit makes it durable before
//! the reply is written: persist, then apply, then reply. The lock is never
//! held across a commit or fsync.
//!
//! If the log refuses the record (a failed disk), the key's state (and the
//! cell) are put back and the reply is the storage error: nothing unlogged is
//! promised or acknowledged. A replica without a log (in memory) just applies
//! and answers.
//!
//! A ballot stamped more than `--max-clock-offset` ahead of this replica's
//! clock is refused (as a peer write is): a hostile or broken proposer's
//! `u64::MAX` ballot would otherwise make every later ballot for the key lose.
//! A sane one moves the clock up, so this node's own ballots come after it.

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::paxos::record_to_proto;
use crate::message::{PeerResponse, PeerResult};
use crate::node::{Node, PendingAck};
use crate::paxos::acceptor::{Acceptor, KeyState, PersistRecord};
use crate::paxos::{Ballot, Request};
use std::collections::HashMap;
use std::time::{Duration, Instant};

/// The node's acceptor and the log position of its last record.
#[derive(Debug, Default)]
pub struct AcceptorState {
    /// Every key's Paxos state.
    pub acceptor: Acceptor,
    /// The end of the last record appended for the acceptor (0: none this
    /// run): a reply that needs no record of its own still waits for it.
    pub(crate) last_pos: u64,
    /// Accepted proposals shown to a movement's copy ([`Node::paxos_states`]),
    /// the highest ballot of each key and when: another node may hold them
    /// now, so this node's own acceptance of one of them must not be
    /// withdrawn ([`Node::withdraw_own`]). Kept for [`SHOWN_FOR`], longer
    /// than any operation that proposed before the copy can still run.
    shown: HashMap<Key, (Ballot, Instant)>,
    /// The transactions' intents on keys of this replica.
    pub intents: crate::txn::intents::IntentTable,
    /// The transaction records this replica is an acceptor of.
    pub records: crate::txn::record::RecordTable,
}

/// How long an accepted proposal shown to a movement's copy stays
/// unwithdrawable (operations end at their deadline, `--request-timeout`,
/// well before).
const SHOWN_FOR: Duration = Duration::from_secs(600);

impl AcceptorState {
    /// The state around an acceptor (recovered, or new).
    pub fn new(acceptor: Acceptor) -> Self {
        AcceptorState { acceptor, ..Default::default() }
    }

    /// The state recovered from the log: the acceptor, the intents and the records.
    pub fn recovered(acceptor: Acceptor, intents: crate::txn::intents::IntentTable, records: crate::txn::record::RecordTable) -> Self {
        AcceptorState { acceptor, intents, records, ..Default::default() }
    }
}

impl Node {
    /// Serves a Paxos request. The reply must not be sent before its
    /// [`PendingAck`] is durable ([`commit_acks`](Self::commit_acks)).
    ///
    /// A prepare or propose whose proposer chose the key's replicas at an
    /// older metadata `epoch` than this replica holds is refused, nothing
    /// promised or accepted ([`Error::StaleEpoch`]): the newer epoch may count
    /// a pending replica in the key's quorum that the proposer left out. A
    /// commit is never refused (its value was chosen; applying it anywhere is safe).
    pub fn serve_paxos(&self, req: Request, epoch: u64) -> (PeerResult, Option<PendingAck>) {
        let ballot = match &req {
            Request::Prepare { ballot, .. } => *ballot,
            Request::Propose { proposal, .. } | Request::Commit { proposal, .. } => proposal.ballot,
        };
        // Under the view's lock: no epoch is installed between the check and the acceptor's step.
        let view = self.view.read();
        if !matches!(req, Request::Commit { .. })
            && let Err(e) = self.check_epoch(req.key(), epoch, view.epoch())
        {
            return (Err(e), None);
        }
        if let Err(e) = self.check_ballot(&req, ballot) {
            return (Err(e), None);
        }
        let key = req.key().clone();
        let mut st = self.paxos.lock();
        if !matches!(req, Request::Commit { .. }) && Node::held_by_txn(&st, &key) {
            // A transaction holds the key: its round waits until the intent is resolved.
            let refused = crate::paxos::Response::Rejected { key, ballot, promised: ballot };
            return (Ok(PeerResponse::Paxos(refused)), None);
        }
        let current = self.store.get(key.as_bytes());
        let before = st.acceptor.state(&key).cloned();
        let handled = st.acceptor.handle(req, current.as_ref());
        let pos = match self.persist(handled.record, handled.apply) {
            Ok(pos) => pos,
            Err(e) => {
                // Not logged, so not done: the next request sees the state as it was.
                st.acceptor.reset(&key, before);
                return (Err(e), None);
            }
        };
        st.last_pos = st.last_pos.max(pos);
        let pos = st.last_pos;
        drop(st);
        drop(view);
        (Ok(PeerResponse::Paxos(handled.reply)), Some(PendingAck { pos, key, ts: None }))
    }

    /// Withdraws this replica's own acceptance of its proposal at `ballot`
    /// for `key` ([`Acceptor::withdraw`]): the log position to make durable
    /// before the operation starts over (0 in memory), or `None` if it cannot
    /// (someone was promised a higher ballot since, or the log refused).
    pub(crate) fn withdraw_own(&self, key: &Key, ballot: Ballot) -> Option<u64> {
        let mut st = self.paxos.lock();
        if st.shown.get(key).is_some_and(|&(b, at)| b >= ballot && at.elapsed() < SHOWN_FOR) {
            // A movement's copy may have carried the acceptance to another replica.
            return None;
        }
        let before = st.acceptor.state(key).cloned();
        let record = st.acceptor.withdraw(key, ballot)?;
        let Some(wal) = &self.wal else { return Some(0) };
        match wal.append(&record_to_proto(record)) {
            Ok(pos) => {
                st.last_pos = st.last_pos.max(pos);
                Some(pos)
            }
            Err(_) => {
                st.acceptor.reset(key, before);
                None
            }
        }
    }

    /// The acceptor states held for keys whose tokens are in any stretch
    /// (`lo`, `hi`] of `ranges`, in key order after `after`: a page of at
    /// most [`MAX_BATCH`](crate::message::MAX_BATCH) states and about
    /// [`MAX_PAGE_BYTES`](crate::message::MAX_PAGE_BYTES). Only states that
    /// say something the cells do not: a promise or an accepted proposal (a
    /// commit's ballot alone is in its cell, which the movement copies). The
    /// acceptor holds only keys with a round in flight, so this is a scan of
    /// a few. Every accepted proposal sent is noted as shown: this node
    /// never withdraws its acceptance of it afterwards.
    pub fn paxos_states(&self, ranges: &[(i64, i64)], after: Option<&Key>) -> PeerResponse {
        use crate::message::{MAX_BATCH, MAX_PAGE_BYTES};
        let ring = self.ring();
        let mut st = self.paxos.lock();
        let mut states: Vec<(Key, KeyState)> = st
            .acceptor
            .states()
            .filter(|(k, s)| after.is_none_or(|a| *k > a) && (s.accepted.is_some() || s.promised > Ballot::ZERO))
            .filter(|(k, _)| {
                let t = ring.token_of(k.as_bytes());
                ranges.iter().any(|&(lo, hi)| crate::cluster::metadata::in_range(lo, hi, t))
            })
            .map(|(k, s)| (k.clone(), s.clone()))
            .collect();
        states.sort_by(|a, b| a.0.cmp(&b.0));
        let mut bytes = 0;
        let fits = states
            .iter()
            .position(|(k, s)| {
                bytes += k.len() + s.accepted.as_ref().and_then(|a| a.value.as_ref()).map_or(0, |v| v.len());
                bytes > MAX_PAGE_BYTES
            })
            .map_or(states.len(), |i| i.max(1));
        let cut = fits.min(MAX_BATCH);
        let more = states.len() > cut;
        states.truncate(cut);
        let now = Instant::now();
        st.shown.retain(|_, (_, at)| at.elapsed() < SHOWN_FOR);
        for (k, s) in &states {
            if let Some(a) = &s.accepted {
                let e = st.shown.entry(k.clone()).or_insert((a.ballot, now));
                *e = (e.0.max(a.ballot), now);
            }
        }
        PeerResponse::PaxosStates { states, more }
    }

    /// Merges acceptor states copied from the replicas a range moves from
    /// (each field only moves forward, as a snapshot's states load): an
    /// accepted proposal the old replicas hold, chosen perhaps but not yet
    /// committed everywhere, is then held by the new replica too, so every
    /// quorum of the new replica set still meets it. Logged as a promise and
    /// an accept before the answer (the [`PendingAck`] to commit).
    pub fn load_paxos_states(&self, states: Vec<(Key, KeyState)>) -> (PeerResult, Option<PendingAck>) {
        let limits = self.limits();
        let mut st = self.paxos.lock();
        let mut merged = 0u32;
        let mut last = None;
        for (key, state) in states {
            // Checked again here: the node's own movement hands it states from peers' replies.
            let key = match limits.key(key.to_vec()) {
                Ok(k) => k,
                Err(e) => return (Err(e), last),
            };
            // Ballots as a proposer's are checked: one far ahead of the clock would block the key.
            for b in [Some(state.promised), state.accepted.as_ref().map(|a| a.ballot)].into_iter().flatten() {
                if self.clock.observe(b.0, self.cfg.max_clock_offset).is_err() {
                    let e = Error::InvalidRequest(format!(
                        "a copied acceptor state for key {key} has ballot {b}, ahead of {}'s clock by more than {} ms; check the clocks",
                        self.cfg.name,
                        self.cfg.max_clock_offset.as_millis()
                    ));
                    return (Err(e), last);
                }
            }
            let before = st.acceptor.state(&key).cloned();
            st.acceptor.load(key.clone(), state);
            let after = st.acceptor.state(&key).cloned().unwrap_or_default();
            let old = before.clone().unwrap_or_default();
            // What the merge changed, logged as the records a prepare and a propose would
            // leave (a promise of ballot 0 is none, and is never logged).
            let mut records = Vec::new();
            if after.promised > old.promised && after.promised > Ballot::ZERO {
                records.push(PersistRecord::Promise { key: key.clone(), ballot: after.promised });
            }
            if after.accepted != old.accepted
                && let Some(proposal) = after.accepted
            {
                records.push(PersistRecord::Accept { key: key.clone(), proposal });
            }
            if records.is_empty() {
                continue;
            }
            merged += 1;
            for record in records {
                match self.persist(Some(record), None) {
                    Ok(pos) => {
                        st.last_pos = st.last_pos.max(pos);
                        if pos > 0 {
                            last = Some(PendingAck { pos: st.last_pos, key: key.clone(), ts: None });
                        }
                    }
                    Err(e) => {
                        st.acceptor.reset(&key, before);
                        return (Err(e), last);
                    }
                }
            }
        }
        (Ok(PeerResponse::Applied(merged)), last)
    }

    /// Refuses a ballot too far ahead of this replica's clock; moves the clock up to a sane one.
    fn check_ballot(&self, req: &Request, ballot: Ballot) -> Result<()> {
        self.clock.observe(ballot.0, self.cfg.max_clock_offset).map_err(|ahead| {
            let what = match req {
                Request::Prepare { .. } => "prepare",
                Request::Propose { .. } => "propose",
                Request::Commit { .. } => "commit",
            };
            Error::InvalidRequest(format!(
                "paxos {what} for key {} has ballot {ballot}, {} ms ahead of {}'s clock (the limit is {} ms); check the clocks",
                req.key(),
                ahead.as_millis(),
                self.cfg.name,
                self.cfg.max_clock_offset.as_millis()
            ))
        })
    }

    /// Appends `record` (if any) and writes `apply`'s cell (a commit's)
    /// to the store; the record's log position (0: nothing logged).
    fn persist(&self, record: Option<PersistRecord>, apply: Option<crate::storage::cell::Version>) -> Result<u64> {
        let Some(record) = record else { return Ok(0) };
        let Some(wal) = &self.wal else {
            // In memory: nothing to log; a commit's cell is written as is.
            if let (PersistRecord::Commit { key, .. }, Some(cell)) = (&record, apply) {
                self.store.apply(key, cell)?;
            }
            return Ok(0);
        };
        match (&record, apply) {
            (PersistRecord::Commit { key, .. }, Some(cell)) => {
                let key = key.clone();
                let rec = record_to_proto(record);
                // The cell and its record go in together under the slot's lock,
                // so a snapshot never holds the commit without its cell.
                let applied = self.store.apply_with(&key, cell, |wal, _, _| wal.append(&rec))?;
                if applied.changed {
                    return Ok(applied.pos);
                }
                // The store holds this cell or a newer one already: the record
                // still makes the commit durable for the acceptor.
                Ok(wal.append(&rec)?.max(applied.pos))
            }
            _ => wal.append(&record_to_proto(record)),
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};
    use std::sync::Arc;

    use super::*;
    use crate::cluster::key::Key;
    use crate::cluster::ring::{NodeId, NodeInfo, Ring};
    use crate::config::NodeConfig;
    use crate::message::PeerRequest;
    use crate::node::test_util::NoPeers;
    use crate::paxos::{Proposal, Response};
    use crate::storage::cell::Version;
    use crate::storage::hlc::Timestamp;
    use crate::storage::wal::FsyncMode;

    fn ring() -> Ring {
        let nodes = (0..3)
            .map(|i| NodeInfo { name: format!("n{i}"), host: "127.0.0.1".into(), port: 1 + i as u16, id: NodeId(i as u32) })
            .collect();
        Ring::new(nodes, 3, 1).unwrap()
    }

    fn node(dir: Option<&Path>) -> Arc<Node> {
        let mut cfg = NodeConfig::new("n0", "127.0.0.1".parse().unwrap(), 1);
        cfg.data_dir = dir.map(Path::to_path_buf);
        cfg.fsync = FsyncMode::Never;
        Node::new(cfg, ring(), Arc::new(NoPeers)).unwrap().0
    }

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
            let p = std::env::temp_dir().join(format!("qkv-paxos-{tag}-{}", std::process::id()));
            let _ = std::fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }

    /// A ballot just after the clock's now (a real proposer's would be): not refused as ahead.
    fn ballot(n: &Node, after: u64) -> Ballot {
        Ballot(Timestamp { micros: n.clock.now().micros + after, node: 1 })
    }

    fn key() -> Key {
        Key::byte(7)
    }

    /// Serves `req` as the server does: the reply, after its log position is committed.
    fn serve(n: &Node, req: Request) -> Response {
        match n.serve_peer_durably(PeerRequest::Paxos(req, 0)) {
            Ok(PeerResponse::Paxos(r)) => r,
            other => panic!("not a paxos answer: {other:?}"),
        }
    }

    fn prepare(n: &Node, b: Ballot) -> Response {
        serve(n, Request::Prepare { key: key(), ballot: b })
    }

    fn proposal(b: Ballot, value: &str) -> Proposal {
        Proposal { ballot: b, origin: b, value: Some(value.as_bytes().into()) }
    }

    /// Prepare → a promise carrying the store's cell; a lower prepare → rejected;
    /// propose → accepted (and reported by the next promise); commit → the
    /// cell is in the store, and a promise carries it.
    #[test]
    fn an_in_memory_node_serves_prepare_propose_and_commit() {
        let n = node(None);
        let old = Version::value(Timestamp { micros: 5, node: 2 }, "old");
        n.store.apply(&key(), old.clone()).unwrap();
        let (low, b1, b2) = (ballot(&n, 10), ballot(&n, 20), ballot(&n, 30));
        assert_eq!(prepare(&n, b1), Response::Promise { key: key(), ballot: b1, accepted: None, committed: Some(old.clone()) });
        assert_eq!(prepare(&n, low), Response::Rejected { key: key(), ballot: low, promised: b1 });
        let p = proposal(b1, "new");
        assert_eq!(serve(&n, Request::Propose { key: key(), proposal: p.clone() }), Response::Accepted { key: key(), ballot: b1 });
        assert_eq!(prepare(&n, b2), Response::Promise { key: key(), ballot: b2, accepted: Some(p.clone()), committed: Some(old) });
        assert_eq!(serve(&n, Request::Commit { key: key(), proposal: p.clone() }), Response::Committed { key: key(), ballot: b1 });
        assert_eq!(n.store.get(key().as_bytes()), Some(p.version()), "the commit's cell is in the store");
        let b3 = ballot(&n, 40);
        assert_eq!(prepare(&n, b3), Response::Promise { key: key(), ballot: b3, accepted: None, committed: Some(p.version()) });
    }

    /// A ballot far ahead of the clock is refused and promises nothing.
    #[test]
    fn a_ballot_far_ahead_of_the_clock_is_refused() {
        let n = node(None);
        let wild = Ballot(Timestamp { micros: u64::MAX, node: 1 });
        let (result, ack) = n.serve_peer(PeerRequest::Paxos(Request::Prepare { key: key(), ballot: wild }, 0));
        let err = result.unwrap_err().to_string();
        assert!(err.contains("paxos prepare for key 7") && err.contains("ahead of n0's clock"), "{err}");
        assert!(ack.is_none());
        assert!(n.paxos.lock().acceptor.state(&key()).is_none());
    }

    /// A repeated promise needs no record but must not overtake the first
    /// one: its reply waits for the last paxos record's position.
    #[test]
    fn a_reply_without_a_record_waits_for_the_records_before_it() {
        let d = Dir::new("order");
        let n = node(Some(&d.0));
        let b = ballot(&n, 10);
        let (r, first) = n.serve_peer(PeerRequest::Paxos(Request::Prepare { key: key(), ballot: b }, 0));
        assert!(matches!(r, Ok(PeerResponse::Paxos(Response::Promise { .. }))));
        let first = first.unwrap();
        assert!(first.pos > 0, "the promise's record is in the log");
        let (r, again) = n.serve_peer(PeerRequest::Paxos(Request::Prepare { key: key(), ballot: b }, 0));
        assert!(matches!(r, Ok(PeerResponse::Paxos(Response::Promise { .. }))), "a repeat is promised again");
        assert_eq!(again.unwrap().pos, first.pos, "the repeat waits for the first promise's record");
    }

    /// A record the log refuses is not promised: the error goes back and the state is as before.
    #[test]
    fn a_record_the_log_refuses_changes_nothing() {
        let d = Dir::new("refused");
        let n = node(Some(&d.0));
        let b = ballot(&n, 10);
        n.wal.as_ref().unwrap().fail_for_test("disk full");
        let (r, ack) = n.serve_peer(PeerRequest::Paxos(Request::Prepare { key: key(), ballot: b }, 0));
        assert!(r.unwrap_err().to_string().contains("disk full"));
        assert!(ack.is_none());
        assert!(n.paxos.lock().acceptor.state(&key()).is_none(), "nothing promised");
        let (r, _) = n.serve_peer(PeerRequest::Paxos(Request::Commit { key: key(), proposal: proposal(b, "v") }, 0));
        assert!(r.is_err());
        assert_eq!(n.store.get(key().as_bytes()), None, "the commit's cell was put back");
        assert!(n.paxos.lock().acceptor.state(&key()).is_none());
    }

    /// Promises, accepts and commits survive a restart from the log alone
    /// (no snapshot): a lower ballot is refused after it, the accepted
    /// proposal is still reported, and a commit's cell and state are back.
    #[test]
    fn copied_acceptor_states_merge_forward_and_are_recovered_from_the_log() {
        let d = Dir::new("load");
        let (b1, b2, b3) = {
            let n = node(Some(&d.0));
            let (b1, b2, b3) = (ballot(&n, 10), ballot(&n, 20), ballot(&n, 30));
            // This replica promised b2 already; a copy with an older promise and an accept at b1 merges in.
            assert!(matches!(prepare(&n, b2), Response::Promise { .. }));
            let copied = KeyState { promised: b1, accepted: Some(proposal(b1, "v1")), committed: Ballot::ZERO };
            let (r, ack) = n.load_paxos_states(vec![(key(), copied.clone())]);
            assert_eq!(r.unwrap(), PeerResponse::Applied(1));
            let pos = ack.map_or(0, |a| a.pos);
            assert!(pos > 0, "the merge is logged");
            n.store.commit(pos).unwrap(); // as the connection does before it answers
            let held = n.paxos.lock().acceptor.state(&key()).cloned().unwrap();
            assert_eq!((held.promised, held.accepted), (b2, Some(proposal(b1, "v1"))), "each field moved forward only");
            // The same copy again changes nothing.
            assert_eq!(n.load_paxos_states(vec![(key(), copied)]).0.unwrap(), PeerResponse::Applied(0));
            // A state that only says a commit's ballot (promised 0, "none") logs nothing: a
            // promise of 0 in the log would be refused as damaged at the next start.
            let committed_only = KeyState { promised: Ballot::ZERO, accepted: None, committed: b1 };
            let (r, ack) = n.load_paxos_states(vec![(Key::byte(8), committed_only)]);
            assert_eq!((r.unwrap(), ack.map(|a| a.pos)), (PeerResponse::Applied(0), None));
            // An accepted proposal without a promise logs the accept alone.
            let accepted_only = KeyState { promised: Ballot::ZERO, accepted: Some(proposal(b1, "v9")), committed: Ballot::ZERO };
            let (r, ack) = n.load_paxos_states(vec![(Key::byte(9), accepted_only)]);
            assert_eq!(r.unwrap(), PeerResponse::Applied(1));
            n.store.commit(ack.unwrap().pos).unwrap();
            // A ballot far ahead of the clock is refused, nothing merged.
            let far = Ballot(Timestamp { micros: n.clock.now().micros + 3_600_000_000, node: 1 });
            let wild = KeyState { promised: far, accepted: None, committed: Ballot::ZERO };
            assert!(n.load_paxos_states(vec![(Key::byte(10), wild)]).0.unwrap_err().to_string().contains("ahead of"));
            assert!(n.paxos.lock().acceptor.state(&Key::byte(10)).is_none());
            (b1, b2, b3)
        };
        let n = node(Some(&d.0));
        assert_eq!(prepare(&n, b1), Response::Rejected { key: key(), ballot: b1, promised: b2 });
        assert_eq!(prepare(&n, b3), Response::Promise { key: key(), ballot: b3, accepted: Some(proposal(b1, "v1")), committed: None });
        let nine = n.paxos.lock().acceptor.state(&Key::byte(9)).cloned().unwrap();
        assert_eq!(nine.accepted, Some(proposal(b1, "v9")), "the lone accept came back too");
    }

    /// A movement's copy of the acceptor state shows this node's acceptance
    /// of its own proposal to another replica: from then on the node may not
    /// withdraw it (the new replica may complete it), whereas before it could.
    #[test]
    fn an_acceptance_shown_to_a_movement_is_never_withdrawn() {
        for shown in [false, true] {
            let n = node(None);
            let b = ballot(&n, 10);
            assert!(matches!(prepare(&n, b), Response::Promise { .. }));
            assert!(matches!(serve(&n, Request::Propose { key: key(), proposal: proposal(b, "v") }), Response::Accepted { .. }));
            if shown {
                let PeerResponse::PaxosStates { states, more } = n.paxos_states(&[(0, 0)], None) else { panic!() };
                assert_eq!((states.len(), more), (1, false));
                assert_eq!(states[0].1.accepted, Some(proposal(b, "v")));
            }
            assert_eq!(n.withdraw_own(&key(), b).is_some(), !shown, "shown to a movement: {shown}");
        }
    }

    #[test]
    fn promises_accepts_and_commits_are_recovered_from_the_log() {
        let d = Dir::new("log");
        let other = Key::byte(9);
        let (low, b1, b2, c) = {
            let n = node(Some(&d.0));
            let (low, b1, b2, c) = (ballot(&n, 10), ballot(&n, 20), ballot(&n, 30), ballot(&n, 40));
            assert!(matches!(prepare(&n, b1), Response::Promise { .. }));
            assert!(matches!(serve(&n, Request::Propose { key: key(), proposal: proposal(b1, "v1") }), Response::Accepted { .. }));
            assert!(matches!(prepare(&n, b2), Response::Promise { .. }));
            let committed = Request::Commit { key: other.clone(), proposal: proposal(c, "done") };
            assert!(matches!(serve(&n, committed), Response::Committed { .. }));
            (low, b1, b2, c)
        };
        let n = node(Some(&d.0));
        assert_eq!(prepare(&n, low), Response::Rejected { key: key(), ballot: low, promised: b2 }, "the promise of b2 survived");
        assert_eq!(prepare(&n, b1), Response::Rejected { key: key(), ballot: b1, promised: b2 });
        let b3 = ballot(&n, 50).max(Ballot(Timestamp { micros: b2.0.micros + 1, node: 1 }));
        let promise = prepare(&n, b3);
        assert_eq!(promise, Response::Promise { key: key(), ballot: b3, accepted: Some(proposal(b1, "v1")), committed: None });
        assert_eq!(n.store.get(other.as_bytes()), Some(proposal(c, "done").version()), "the commit's cell came back from its record");
        assert_eq!(n.paxos.lock().acceptor.state(&other).map(|s| s.committed), Some(c));
        assert!(n.clock.now() > c.0, "the clock moved past what was recovered");
    }

    /// A snapshot deletes the logs that held the records; the acceptor's
    /// state is in the snapshot and comes back from it.
    #[test]
    fn the_acceptor_state_survives_a_snapshot_and_the_log_truncation() {
        let d = Dir::new("snap");
        let other = Key::byte(9);
        let (b1, b2, c, state) = {
            let n = node(Some(&d.0));
            let (b1, b2, c) = (ballot(&n, 20), ballot(&n, 30), ballot(&n, 40));
            prepare(&n, b1);
            serve(&n, Request::Propose { key: key(), proposal: proposal(b1, "v1") });
            prepare(&n, b2);
            serve(&n, Request::Commit { key: other.clone(), proposal: proposal(c, "done") });
            n.snapshot().unwrap();
            let state = n.paxos.lock().acceptor.state(&key()).cloned().unwrap();
            (b1, b2, c, state)
        };
        let n = node(Some(&d.0));
        assert!(!n.fold.load(std::sync::atomic::Ordering::Relaxed), "no log records were left to replay: the snapshot holds it all");
        assert_eq!(n.paxos.lock().acceptor.state(&key()), Some(&state));
        assert_eq!(state.promised, b2);
        assert_eq!(prepare(&n, b1), Response::Rejected { key: key(), ballot: b1, promised: b2 });
        assert_eq!(n.store.get(other.as_bytes()), Some(proposal(c, "done").version()));
        // The committed key's state was forgotten (its cell says it all): not
        // in the snapshot, and its cell still refuses the committed ballot.
        assert!(n.paxos.lock().acceptor.state(&other).is_none());
        assert_eq!(
            serve(&n, Request::Prepare { key: other.clone(), ballot: c }),
            Response::Rejected { key: other, ballot: c, promised: c }
        );
    }

    /// A commit that leaves nothing pending forgets the key's state; the
    /// store's cell then refuses what the state would have: a prepare or a
    /// proposal at or below the commit. A key with a higher promise keeps it.
    #[test]
    fn a_settled_key_is_forgotten_and_its_cell_keeps_the_promises() {
        let n = node(None);
        let (b1, b2, b3) = (ballot(&n, 10), ballot(&n, 20), ballot(&n, 30));
        assert!(matches!(prepare(&n, b1), Response::Promise { .. }));
        assert!(matches!(serve(&n, Request::Propose { key: key(), proposal: proposal(b1, "v1") }), Response::Accepted { .. }));
        assert!(matches!(serve(&n, Request::Commit { key: key(), proposal: proposal(b1, "v1") }), Response::Committed { .. }));
        assert!(n.paxos.lock().acceptor.is_empty(), "nothing pending: forgotten");
        assert_eq!(prepare(&n, b1), Response::Rejected { key: key(), ballot: b1, promised: b1 });
        let late = serve(&n, Request::Propose { key: key(), proposal: proposal(b1, "again") });
        assert_eq!(late, Response::Rejected { key: key(), ballot: b1, promised: b1 });
        // A promise above the commit is kept through the next commit of a lower ballot.
        assert!(matches!(prepare(&n, b3), Response::Promise { .. }));
        let other = Request::Commit { key: key(), proposal: proposal(b2, "v2") };
        assert!(matches!(serve(&n, other), Response::Committed { .. }));
        assert_eq!(n.paxos.lock().acceptor.state(&key()).map(|s| s.promised), Some(b3), "a higher promise is kept");
        assert_eq!(prepare(&n, b2), Response::Rejected { key: key(), ballot: b2, promised: b3 });
    }
}
