//! The coordinator's view of the other replicas: a small interface that the
//! real peer links implement ([`crate::net::links::Links`]) and that the
//! simulated network of the tests implements too.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::ring::NodeId;
use crate::message::{PeerRequest, PeerResult};
use crate::proto;

/// Receives the outcome of a request sent to a peer.
pub trait ReplySink: Send + Sync {
    /// Delivers the reply (or failure) of the request sent for `slot`. Called exactly once per send.
    fn deliver(&self, slot: usize, result: PeerResult);
}

/// A sink that drops replies.
pub struct IgnoreReply;

impl ReplySink for IgnoreReply {
    fn deliver(&self, _slot: usize, _result: PeerResult) {}
}

/// How a node reaches its peers.
pub trait Peers: Send + Sync {
    /// Sends `msg` to `to`; its outcome reaches `sink.deliver(slot, …)` exactly
    /// once: the reply, a failure (peer down or unknown, connection lost) or a
    /// timeout after `deadline`. A failure to send may be delivered before this returns.
    fn send(&self, to: NodeId, msg: PeerRequest, sink: Arc<dyn ReplySink>, slot: usize, deadline: Instant);
    /// Sends several messages to `to` at once (one `write` where the
    /// transport can), each as [`send`](Self::send) would, in order: a message,
    /// the sink of its outcome and its slot.
    fn send_many(&self, to: NodeId, msgs: Vec<(PeerRequest, Arc<dyn ReplySink>, usize)>, deadline: Instant) {
        for (msg, sink, slot) in msgs {
            self.send(to, msg, sink, slot, deadline);
        }
    }
    /// Whether the failure detector believes `to` alive.
    fn is_up(&self, to: NodeId) -> bool;
    /// How long `to` has been down (zero while up).
    fn down_for(&self, to: NodeId) -> Duration;
    /// The storage state `to` reported last, if any.
    fn storage(&self, to: NodeId) -> Option<proto::StorageStats>;
}
