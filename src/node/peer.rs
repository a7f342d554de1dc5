//! Serving a peer's request: local work only.
//!
//! A peer request touches only this replica's store (and clock), never waits
//! on another replica, so a peer link can never be part of a wait cycle: two
//! coordinators fanning out to each other cannot deadlock. A peer write is
//! applied at once but acknowledged only once durable: the server commits a
//! whole batch of them with one [`Node::commit_acks`] before writing any reply.

use std::io::Write as _;

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::{PeerRequest, PeerResponse, PeerResult};
use crate::node::Node;
use crate::proto;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;
use crate::storage::store::Applied;

/// A peer write (or Paxos request) served but not yet durable.
#[derive(Debug, Clone)]
pub struct PendingAck {
    /// Log position to commit.
    pub pos: u64,
    /// The key written.
    pub key: Key,
    /// A write's timestamp, for the ack log (`None`: a Paxos request, not noted).
    pub ts: Option<Timestamp>,
}

impl Node {
    /// Answers a peer's request. A write's reply must not be sent before its
    /// [`PendingAck`] is durable ([`commit_acks`](Self::commit_acks)).
    pub fn serve_peer(&self, req: PeerRequest) -> (PeerResult, Option<PendingAck>) {
        let result = match req {
            PeerRequest::Read { key } => Ok(PeerResponse::Read(self.store.get(key.as_bytes()))),
            PeerRequest::Write { key, version, epoch } => {
                // The check and the apply under the view's lock: no epoch is
                // installed between them (a movement's copy, which starts once
                // every replica holds its epoch, then sees every write this
                // replica took at the epoch before).
                let view = self.view.read();
                if let Err(e) = self.check_epoch(&key, epoch, view.epoch()) {
                    return (Err(e), None);
                }
                if let Err(ahead) = self.clock.observe(version.ts, self.cfg.max_clock_offset) {
                    return (
                        Err(Error::InvalidRequest(format!(
                            "write to key {key} is stamped {} ms ahead of {}'s clock (the limit is {} ms); check the clocks",
                            ahead.as_millis(),
                            self.cfg.name,
                            self.cfg.max_clock_offset.as_millis()
                        ))),
                        None,
                    );
                }
                let ts = version.ts;
                let applied = self.store.apply(&key, version);
                drop(view);
                return match applied {
                    Ok(applied) => (
                        Ok(PeerResponse::WriteAck { applied: applied.changed, held: applied.held }),
                        Some(PendingAck { pos: applied.pos, key, ts: Some(ts) }),
                    ),
                    Err(e) => (Err(e), None),
                };
            }
            PeerRequest::Heartbeat { micros, epoch, .. } => {
                self.saw_epoch(epoch);
                // Keep up with the fastest live clock (a wild one, past
                // --max-clock-offset, is not followed; its writes are refused).
                if micros != 0 {
                    let _ = self.clock.observe(Timestamp { micros, node: 0 }, self.cfg.max_clock_offset);
                }
                Ok(PeerResponse::Heartbeat { name: self.cfg.name.clone(), storage: Some(self.storage_stats()), epoch: self.view().epoch() })
            }
            PeerRequest::Dump { max_value_len, slots, max_keys, after, digest_slots } => {
                Ok(PeerResponse::Dump(self.dump(max_value_len, &slots, max_keys, after.as_ref(), &digest_slots)))
            }
            PeerRequest::ReadBatch { keys } => Ok(PeerResponse::ReadBatch(keys.iter().map(|k| self.store.get(k.as_bytes())).collect())),
            PeerRequest::Scan { slot, after, count } => Ok(self.replica_scan(slot, after, count)),
            PeerRequest::Ping => Ok(PeerResponse::Pong(self.cfg.name.clone())),
            PeerRequest::Paxos(req, epoch) => return self.serve_paxos(req, epoch),
            PeerRequest::Tree { slot, leaves } => Ok(PeerResponse::Tree(self.tree(slot, leaves))),
            PeerRequest::Cells { slot, range, leaves, after } => Ok(self.cells_of(slot, range, leaves, after.as_ref())),
            PeerRequest::Apply { cells } => return self.apply_cells(cells),
            PeerRequest::MetaPaxos(req) => self.serve_meta_paxos(req),
            PeerRequest::Metadata => Ok(PeerResponse::Metadata(Box::new(self.stored_metadata()))),
            PeerRequest::Stream { slot, ranges, after, packed } => Ok(self.stream_cells(slot, &ranges, after.as_ref(), packed)),
            PeerRequest::PaxosStates { ranges, after } => Ok(self.paxos_states(&ranges, after.as_ref())),
            PeerRequest::PaxosLoad { states } => return self.load_paxos_states(states),
            PeerRequest::TxnPrepare { txn, anchor, items, epoch } => return self.serve_txn_prepare(txn, anchor, items, epoch),
            PeerRequest::TxnRecord(req) => return self.serve_txn_record(req),
            PeerRequest::TxnResolve { txn, decision, items } => return self.serve_txn_resolve(txn, decision, items),
            PeerRequest::TxnRead { keys, at } => self.serve_txn_read(&keys, at),
        };
        (result, None)
    }

    /// Whether a write routed at `epoch` may be applied by this replica, at
    /// epoch `mine`: not if its coordinator chose the replicas at an older
    /// epoch (a replica the newer one adds, a pending one during a movement,
    /// may be missing from its targets); the coordinator then catches up and
    /// sends it again. Epoch 0: not checked (hints, repairs).
    pub(crate) fn check_epoch(&self, key: &crate::cluster::key::Key, epoch: u64, mine: u64) -> Result<()> {
        if epoch != 0 && epoch < mine {
            return Err(Error::StaleEpoch(format!(
                "{} holds cluster epoch {mine}; the request for key {key} was routed at epoch {epoch}",
                self.cfg.name
            )));
        }
        // A coordinator ahead of this replica: the membership thread catches up
        // (noted only then: an atomic write on every request would cost the hot path).
        if epoch > mine {
            self.saw_epoch(epoch);
        }
        Ok(())
    }

    /// [`serve_peer`](Self::serve_peer), then waits until what it did is
    /// durable before returning the reply (for the node's own requests, and
    /// the simulated network).
    pub fn serve_peer_durably(&self, req: PeerRequest) -> PeerResult {
        match self.serve_peer(req) {
            (Ok(r), Some(ack)) => self.commit_acks([ack].iter()).map(|()| r),
            (result, _) => result,
        }
    }

    /// Makes a batch of peer writes durable (one commit for all), then records their acks.
    /// On failure nothing unlogged may be acknowledged: the caller turns each write's reply into the error.
    pub fn commit_acks<'a>(&self, acks: impl Iterator<Item = &'a PendingAck> + Clone) -> Result<()> {
        let Some(pos) = acks.clone().map(|a| a.pos).max() else { return Ok(()) };
        self.store.commit(pos)?;
        for a in acks {
            if let Some(ts) = a.ts {
                self.note_ack(&a.key, ts);
            }
        }
        Ok(())
    }

    /// Applies a write to the local store and waits until it is durable.
    pub fn apply_local(&self, key: &Key, version: Version) -> Result<bool> {
        let ts = version.ts;
        self.commit_local(key, ts, self.store.apply(key, version)).map(|a| a.changed)
    }

    /// The second half of [`apply_local`](Self::apply_local), for a write
    /// already applied (the fan-out loop applies its own replica's write before
    /// the remote sends and commits it after): waits until it is durable, then
    /// records the ack. Returns whether the cell changed.
    pub fn commit_local(&self, key: &Key, ts: Timestamp, applied: Result<Applied>) -> Result<Applied> {
        let a = applied?;
        self.store.commit(a.pos)?;
        self.note_ack(key, ts);
        Ok(a)
    }

    /// Test hook: records that this replica acknowledged `ts` for `key` (after it was durable).
    pub fn note_ack(&self, key: &Key, ts: Timestamp) {
        if let Some(log) = &self.ack_log {
            let _ = writeln!(log.lock(), "{key} {} {}", ts.micros, ts.node);
        }
    }

    /// This replica's storage, as `status` shows it.
    pub fn storage_stats(&self) -> proto::StorageStats {
        let totals = self.store.totals();
        let stats = match &self.wal {
            Some(wal) => wal.stats(),
            None => proto::StorageStats { in_memory: true, ..Default::default() },
        };
        proto::StorageStats { keys: totals.keys, bytes: totals.bytes, ..stats }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::cluster::ring::{NodeId, NodeInfo, Ring};
    use crate::config::NodeConfig;
    use crate::message::PeerRequest;
    use crate::node::Node;
    use crate::node::test_util::NoPeers;
    use crate::storage::hlc::{SystemClock, WallClock};

    /// A heartbeat from a clock ahead pulls this node's clock up to it; one
    /// past --max-clock-offset (or a hostile u64::MAX) is not followed.
    #[test]
    fn a_heartbeat_moves_the_clock_up_to_a_sane_peer_clock() {
        let nodes = (0..2).map(|i| NodeInfo { name: format!("r{i}"), host: "127.0.0.1".into(), port: 1 + i, id: NodeId(i.into()) });
        let ring = Ring::new(nodes.collect(), 2, 1).unwrap();
        let node = Node::new(NodeConfig::new("r0", "127.0.0.1".parse().unwrap(), 1), ring, Arc::new(NoPeers)).unwrap().0;
        let beat = |micros| node.serve_peer(PeerRequest::Heartbeat { from: "r1".into(), micros, epoch: 1 }).0.unwrap();
        beat(u64::MAX);
        let ahead = SystemClock.now_micros() + 2_000_000;
        assert!(node.clock.now().micros < ahead, "a wild clock is not followed");
        beat(ahead);
        assert!(node.clock.now().micros > ahead, "a clock 2 s ahead is");
    }
}
