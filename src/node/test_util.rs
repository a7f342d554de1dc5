//! Helpers shared by the tests of the roles.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::ring::NodeId;
use crate::coordinator::peers::{Peers, ReplySink};
use crate::error::Error;
use crate::message::PeerRequest;
use crate::proto;

/// Peers that are all down: a node on its own, answering from its own store only.
pub(crate) struct NoPeers;

impl Peers for NoPeers {
    fn send(&self, to: NodeId, _msg: PeerRequest, sink: Arc<dyn ReplySink>, slot: usize, _deadline: Instant) {
        sink.deliver(slot, Err(Error::Failure(format!("{to} is down"))));
    }
    fn is_up(&self, _to: NodeId) -> bool {
        false
    }
    fn down_for(&self, _to: NodeId) -> Duration {
        Duration::ZERO
    }
    fn storage(&self, _to: NodeId) -> Option<proto::StorageStats> {
        None
    }
}
