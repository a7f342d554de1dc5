//! What the request machines ask for, and the interfaces that carry it out.

use std::sync::Arc;
use std::time::Instant;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::peers::ReplySink;
use crate::message::{PeerRequest, Reply};
use crate::storage::cell::Version;

/// How a message to a replica travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Route {
    /// One message of its own, at once.
    Direct,
    /// Queued for the read batcher, which sends one batch per peer every few
    /// milliseconds (reads only; for replies that are only a fallback or for repair).
    Batched,
    /// Sent once this long has passed (a request tried again after a
    /// back-off: a transaction waiting for a younger holder).
    After(std::time::Duration),
}

/// One message of a call to one replica.
#[derive(Debug, Clone, PartialEq)]
pub struct Outgoing {
    /// The call's slot for this replica; the reply comes back with it.
    pub slot: usize,
    /// The replica (possibly this node: the driver then serves it locally).
    pub to: NodeId,
    /// What to ask.
    pub msg: PeerRequest,
    /// How it travels.
    pub route: Route,
}

/// Side effects a machine asks for.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Send a message for one of the call's slots.
    Send(Outgoing),
    /// Keep a hint: `target` missed `version` of `key`.
    Hint {
        /// The replica that missed it.
        target: NodeId,
        /// The key.
        key: Key,
        /// The missed version.
        version: Version,
    },
    /// Send `version` of `key` to `target`, which returned something older (in the background).
    Repair {
        /// The stale replica.
        target: NodeId,
        /// The key.
        key: Key,
        /// The newest version seen.
        version: Version,
    },
    /// Send a write again at the newest epoch the node can learn: a replica
    /// refused it as routed at an older one (see [`crate::coordinator::write`]).
    /// The node catches up on the cluster metadata first.
    Reroute {
        /// The client to answer with the rerouted write's outcome (`None`: it was answered already).
        to: Option<ReplyTo>,
        /// The key.
        key: Key,
        /// The version, sent again unchanged.
        version: Version,
        /// The write's level.
        level: Consistency,
        /// The epoch it was routed at.
        epoch: u64,
        /// How many more times it may be rerouted.
        attempts: u8,
    },
    /// Answer a client whose reply was deferred.
    Answer {
        /// Where the reply goes.
        to: ReplyTo,
        /// What it says.
        reply: Reply,
    },
}

/// Answers clients whose reply was deferred: implemented by a client
/// connection of each client protocol, so the coordinator knows none of them.
pub trait Responder: Send + Sync {
    /// The request `token` will be answered later, through [`answer`](Self::answer).
    fn defer(&self, token: u64);
    /// Answers the deferred request `token`; must not block. A second answer is ignored.
    fn answer(&self, token: u64, reply: Reply);
}

/// Where a deferred reply goes.
#[derive(Clone)]
pub struct ReplyTo {
    /// The client's connection.
    pub responder: Arc<dyn Responder>,
    /// The request, as the connection knows it (the native protocol: its id).
    pub token: u64,
    /// The request's deadline: an answer settled after it reports a timeout.
    pub deadline: Instant,
}

impl std::fmt::Debug for ReplyTo {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "ReplyTo {{ token: {} }}", self.token)
    }
}

impl PartialEq for ReplyTo {
    fn eq(&self, other: &Self) -> bool {
        std::ptr::addr_eq(Arc::as_ptr(&self.responder), Arc::as_ptr(&other.responder))
            && self.token == other.token
            && self.deadline == other.deadline
    }
}

/// Carries out commands: the node (hint store, repair worker, peers, responders).
pub trait Executor: Send + Sync {
    /// Executes one command other than [`Command::Send`].
    fn execute(&self, command: Command);
    /// Sends each message of one call (the only fan-out loop): remote ones
    /// first, then any addressed to this node, served locally. Every outcome
    /// reaches `sink`.
    fn send(&self, sink: Arc<dyn ReplySink>, sends: Vec<Outgoing>, deadline: Instant);
    /// As [`send`](Self::send), for messages a machine asks for while a reply
    /// is being delivered (a blocking read repair): the delivering thread may
    /// be a link's reader, which must not write to another peer's socket or
    /// wait for a commit, so an executor may hand them to another thread.
    fn send_later(&self, sink: Arc<dyn ReplySink>, sends: Vec<Outgoing>, deadline: Instant) {
        self.send(sink, sends, deadline);
    }
}
