//! All of this node's links: the real network behind the coordinator's
//! [`Peers`] — a typed message becomes a frame on the link to its node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::cluster::ring::{NodeId, Ring};
use crate::coordinator::peers::{Peers, ReplySink};
use crate::error::{Error, Result};
use crate::message::PeerRequest;
use crate::net::fault::Faults;
use crate::net::link::PeerLink;
use crate::proto;

/// This node's links to every peer: the real network behind [`Peers`].
pub struct Links {
    links: Vec<PeerLink>,
    /// Injected faults, shared by the links and the server.
    pub faults: Arc<Faults>,
}

impl Links {
    /// A link (down) to each node of `ring` but `me`; `faults` may hold rules for them.
    pub fn new(ring: &Ring, me: NodeId, faults: Arc<Faults>) -> Result<Links> {
        let mut links = Vec::with_capacity(ring.len());
        for n in ring.nodes() {
            if n.id != me {
                links.push(PeerLink::new(n.id, n.name.clone(), n.socket_addr()?, faults.clone()));
            }
        }
        Ok(Links { links, faults })
    }

    /// The link to `id`.
    pub fn get(&self, id: NodeId) -> Option<&PeerLink> {
        self.links.iter().find(|l| l.id == id)
    }

    /// Every link.
    pub fn iter(&self) -> impl Iterator<Item = &PeerLink> {
        self.links.iter()
    }

    /// Wakes every link's thread (for shutdown).
    pub fn wake(&self) {
        for l in &self.links {
            l.wake();
        }
        self.faults.wake();
    }
}

impl Peers for Links {
    fn send(&self, to: NodeId, msg: PeerRequest, sink: Arc<dyn ReplySink>, slot: usize, deadline: Instant) {
        match self.get(to) {
            Some(link) => link.send(msg.into_proto(), sink, slot, deadline),
            None => sink.deliver(slot, Err(Error::Failure(format!("{to} is not a peer of this node")))),
        }
    }

    fn send_many(&self, to: NodeId, msgs: Vec<(PeerRequest, Arc<dyn ReplySink>, usize)>, deadline: Instant) {
        match self.get(to) {
            Some(link) => link.send_many(msgs.into_iter().map(|(m, sink, slot)| (m.into_proto(), sink, slot)).collect(), deadline),
            None => {
                for (_, sink, slot) in msgs {
                    sink.deliver(slot, Err(Error::Failure(format!("{to} is not a peer of this node"))));
                }
            }
        }
    }

    fn is_up(&self, to: NodeId) -> bool {
        self.get(to).is_some_and(PeerLink::is_up)
    }

    fn down_for(&self, to: NodeId) -> Duration {
        self.get(to).map_or(Duration::ZERO, PeerLink::down_for)
    }

    fn storage(&self, to: NodeId) -> Option<proto::StorageStats> {
        self.get(to).and_then(PeerLink::storage)
    }
}
