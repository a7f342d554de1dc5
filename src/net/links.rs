//! All of this node's links: the real network behind the coordinator's
//! [`Peers`] — a typed message becomes a frame on the link to its node.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::RwLock;

use crate::cluster::ring::{NodeId, Ring};
use crate::coordinator::peers::{Peers, ReplySink};
use crate::error::{Error, Result};
use crate::message::PeerRequest;
use crate::net::fault::Faults;
use crate::net::link::PeerLink;
use crate::proto;

/// This node's links to every peer: the real network behind [`Peers`].
///
/// The set of links follows the membership: a member that joins gets a link
/// (whose thread the membership thread starts), one that is removed loses
/// it (its thread sees the link retired and ends).
pub struct Links {
    links: RwLock<Vec<Arc<PeerLink>>>,
    me: NodeId,
    /// Injected faults, shared by the links and the server.
    pub faults: Arc<Faults>,
}

impl Links {
    /// A link (down) to each node of `ring` but `me`; `faults` may hold rules for them.
    pub fn new(ring: &Ring, me: NodeId, faults: Arc<Faults>) -> Result<Links> {
        let mut links = Vec::with_capacity(ring.len());
        for n in ring.nodes() {
            if n.id != me {
                // A member whose address does not resolve gets no link (it is then
                // down to this node) rather than keeping this node from starting.
                match n.socket_addr() {
                    Ok(addr) => links.push(Arc::new(PeerLink::new(n.id, n.name.clone(), addr, faults.clone()))),
                    Err(e) => log::error!("no link to {}: {e}", n.name),
                }
            }
        }
        Ok(Links { links: RwLock::new(links), me, faults })
    }

    /// The link to `id`.
    pub fn get(&self, id: NodeId) -> Option<Arc<PeerLink>> {
        self.links.read().iter().find(|l| l.id == id).cloned()
    }

    /// Every link, as they are now.
    pub fn iter(&self) -> Vec<Arc<PeerLink>> {
        self.links.read().clone()
    }

    /// Makes the links those of `ring`'s nodes: new links (returned, for
    /// their threads to be started) to nodes without one, and the links of
    /// nodes no longer in it retired. A node whose address is not resolvable
    /// is left without a link (logged).
    pub fn follow(&self, ring: &Ring) -> Vec<Arc<PeerLink>> {
        let mut links = self.links.write();
        let mut added = Vec::new();
        for n in ring.nodes() {
            if n.id == self.me || links.iter().any(|l| l.id == n.id) {
                continue;
            }
            match n.socket_addr() {
                Ok(addr) => {
                    let link = Arc::new(PeerLink::new(n.id, n.name.clone(), addr, self.faults.clone()));
                    links.push(link.clone());
                    added.push(link);
                }
                Err(e) => log::error!("no link to {}: {e}", n.name),
            }
        }
        links.retain(|l| {
            let keep = ring.get(l.id).is_some();
            if !keep {
                l.retire();
            }
            keep
        });
        added
    }

    /// Wakes every link's thread (for shutdown).
    pub fn wake(&self) {
        for l in self.links.read().iter() {
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
        self.get(to).is_some_and(|l| l.is_up())
    }

    fn down_for(&self, to: NodeId) -> Duration {
        self.get(to).map_or(Duration::ZERO, |l| l.down_for())
    }

    fn storage(&self, to: NodeId) -> Option<proto::StorageStats> {
        self.get(to).and_then(|l| l.storage())
    }
}
