//! A simulated network for tests: whole nodes in one process, messages
//! delivered one at a time in an order drawn from a seed.
//!
//! In the spirit of toydb's script tests and stateright: every node is a real
//! [`Node`] (coordinator, store, hints, read batcher), but its
//! [`Peers`] is a [`SimPeers`] handle on a [`SimNet`] instead of sockets. A
//! request to a peer and the peer's reply are two *events*; the test decides
//! when events happen — all of them ([`SimNet::run`]), or only those matching a
//! filter ([`SimNet::run_matching`]) — and the net picks among the pending
//! ones with a seeded generator, so each seed is one interleaving and a failing
//! seed replays exactly. Faults:
//!
//! * **partition** ([`SimNet::cut`]) — messages between two nodes are lost on
//!   the way; [`SimNet::expire`] then times them out, as the real sweep does
//!   after the deadline. The failure detector sees a cut peer as down.
//! * **kill** ([`SimNet::kill`]) — a node that is down: sends to it fail at once.
//! * **delay** — simply not delivering some events yet (`run_matching`).
//!
//! Every node reads the same simulated clock ([`SimClock`]), so timestamps,
//! like deliveries, follow from the seed alone.
//!
//! Clients are [`Responder`]s that record their answers ([`Client`]). Read
//! repairs the machines command go through each node's repair channel, which
//! [`SimNet::run`] drains like the repair thread would.

#![allow(missing_docs)]

use std::collections::BTreeSet;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::ring::{NodeId, NodeInfo, Ring};
use crate::config::NodeConfig;
use crate::coordinator::command::Responder;
use crate::coordinator::peers::{Peers, ReplySink};
use crate::error::Error;
use crate::message::{ClientRequest, PeerRequest, PeerResult, Reply};
use crate::node::{Answered, Node, Workers};
use crate::proto;
use crate::storage::hlc::WallClock;

#[cfg(test)]
mod tests;
#[cfg(test)]
mod txn_tests;

/// What is on the wire.
pub enum Kind {
    /// A request from `from` to `to`.
    Request(PeerRequest),
    /// `to`'s reply... travelling back from `from` (the replica) to `to` (the coordinator).
    Reply(PeerResult),
}

/// One message in flight.
pub struct Event {
    pub from: NodeId,
    pub to: NodeId,
    pub kind: Kind,
    sink: Arc<dyn ReplySink>,
    slot: usize,
}

impl Event {
    /// Whether this is a request (rather than a reply).
    pub fn is_request(&self) -> bool {
        matches!(self.kind, Kind::Request(_))
    }

    /// Whether the event travels between `a` and `b`, either way.
    pub fn between(&self, a: NodeId, b: NodeId) -> bool {
        (self.from == a && self.to == b) || (self.from == b && self.to == a)
    }

    /// Whether the event is a write request.
    pub fn is_write(&self) -> bool {
        matches!(self.kind, Kind::Request(PeerRequest::Write { .. }))
    }
}

struct State {
    rng: u64,
    nodes: Vec<(NodeId, Weak<Node>)>,
    in_flight: Vec<Event>,
    /// Messages lost to a partition, timed out by [`SimNet::expire`].
    lost: Vec<(Arc<dyn ReplySink>, usize, NodeId)>,
    cuts: BTreeSet<(NodeId, NodeId)>,
    killed: BTreeSet<NodeId>,
    delivered: usize,
    /// Every delivery so far: (from, to, whether a request).
    trace: Vec<(NodeId, NodeId, bool)>,
}

/// The simulated network (see the module docs).
pub struct SimNet {
    state: Mutex<State>,
}

fn pair(a: NodeId, b: NodeId) -> (NodeId, NodeId) {
    if a < b { (a, b) } else { (b, a) }
}

impl SimNet {
    /// An empty network whose choices follow `seed`.
    pub fn new(seed: u64) -> Arc<SimNet> {
        Arc::new(SimNet {
            state: Mutex::new(State {
                rng: seed ^ 0x9E37_79B9_7F4A_7C15,
                nodes: Vec::new(),
                in_flight: Vec::new(),
                lost: Vec::new(),
                cuts: BTreeSet::new(),
                killed: BTreeSet::new(),
                delivered: 0,
                trace: Vec::new(),
            }),
        })
    }

    fn node(&self, id: NodeId) -> Option<Arc<Node>> {
        self.state.lock().nodes.iter().find(|(i, _)| *i == id).and_then(|(_, n)| n.upgrade())
    }

    fn enqueue(&self, from: NodeId, to: NodeId, kind: Kind, sink: Arc<dyn ReplySink>, slot: usize) {
        let mut s = self.state.lock();
        if s.killed.contains(&to) {
            drop(s);
            sink.deliver(slot, Err(Error::Failure(format!("{to} is down"))));
        } else if s.cuts.contains(&pair(from, to)) {
            s.lost.push((sink, slot, to));
        } else {
            s.in_flight.push(Event { from, to, kind, sink, slot });
        }
    }

    /// Cuts the links between `a` and `b` (messages on them are lost).
    pub fn cut(&self, a: NodeId, b: NodeId) {
        self.state.lock().cuts.insert(pair(a, b));
    }

    /// Heals every cut.
    pub fn heal(&self) {
        self.state.lock().cuts.clear();
    }

    /// Takes `id` down: messages to it fail at once; those in flight to or from it are lost.
    pub fn kill(&self, id: NodeId) {
        let mut s = self.state.lock();
        s.killed.insert(id);
        let (gone, kept): (Vec<Event>, Vec<Event>) = s.in_flight.drain(..).partition(|e| e.to == id || e.from == id);
        s.in_flight = kept;
        for e in gone {
            s.lost.push((e.sink, e.slot, e.to));
        }
    }

    /// Times out every lost message, as the sweep does once their deadline passed.
    pub fn expire(&self) {
        let lost = std::mem::take(&mut self.state.lock().lost);
        for (sink, slot, to) in lost {
            sink.deliver(slot, Err(Error::Timeout(format!("{to} did not answer in time"))));
        }
    }

    /// Messages in flight.
    pub fn pending(&self) -> usize {
        self.state.lock().in_flight.len()
    }

    /// Messages in flight that `f` picks.
    pub fn count_matching(&self, f: &dyn Fn(&Event) -> bool) -> usize {
        self.state.lock().in_flight.iter().filter(|e| f(e)).count()
    }

    /// Messages delivered so far.
    pub fn delivered(&self) -> usize {
        self.state.lock().delivered
    }

    /// Every delivery so far, in order: (from, to, whether a request).
    pub fn trace(&self) -> Vec<(NodeId, NodeId, bool)> {
        self.state.lock().trace.clone()
    }

    /// Delivers one event matching `f`, picked by the seed; false if there is none.
    pub fn step_matching(&self, f: &dyn Fn(&Event) -> bool) -> bool {
        let event = {
            let mut s = self.state.lock();
            let candidates: Vec<usize> = (0..s.in_flight.len()).filter(|&i| f(&s.in_flight[i])).collect();
            if candidates.is_empty() {
                return false;
            }
            let pick = candidates[(splitmix(&mut s.rng) % candidates.len() as u64) as usize];
            s.delivered += 1;
            let e = s.in_flight.swap_remove(pick);
            s.trace.push((e.from, e.to, e.is_request()));
            e
        };
        match event.kind {
            Kind::Request(req) => {
                let result = match self.node(event.to) {
                    Some(node) => node.serve_peer_durably(req),
                    None => Err(Error::Failure(format!("{} is gone", event.to))),
                };
                self.enqueue(event.to, event.from, Kind::Reply(result), event.sink, event.slot);
            }
            Kind::Reply(result) => event.sink.deliver(event.slot, result),
        }
        true
    }

    /// Delivers events matching `f` until none is left (flushing the read
    /// batchers and carrying out the repairs the nodes queue as it goes).
    pub fn run_matching(&self, cluster: &Cluster, f: &dyn Fn(&Event) -> bool) {
        loop {
            cluster.background();
            if !self.step_matching(f) {
                cluster.background();
                if !self.step_matching(f) {
                    return;
                }
            }
        }
    }

    /// Delivers every event until the network is quiet.
    pub fn run(&self, cluster: &Cluster) {
        self.run_matching(cluster, &|_| true);
    }
}

fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// The nodes' wall clock: one counter, a microsecond further at each reading,
/// so no two writes tie and a run does not depend on the real clock.
pub struct SimClock(std::sync::atomic::AtomicU64);

impl SimClock {
    /// Moves the clock `by` ahead (a timeout passing).
    pub fn advance(&self, by: Duration) {
        self.0.fetch_add(by.as_micros() as u64, std::sync::atomic::Ordering::Relaxed);
    }
}

impl WallClock for SimClock {
    fn now_micros(&self) -> u64 {
        self.0.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }
}

/// One node's handle on the network: its [`Peers`].
pub struct SimPeers {
    net: Arc<SimNet>,
    me: NodeId,
}

impl Peers for SimPeers {
    fn send(&self, to: NodeId, msg: PeerRequest, sink: Arc<dyn ReplySink>, slot: usize, _deadline: Instant) {
        self.net.enqueue(self.me, to, Kind::Request(msg), sink, slot);
    }

    fn is_up(&self, to: NodeId) -> bool {
        let s = self.net.state.lock();
        !s.killed.contains(&to) && !s.cuts.contains(&pair(self.me, to))
    }

    fn down_for(&self, to: NodeId) -> Duration {
        if self.is_up(to) { Duration::ZERO } else { Duration::from_secs(1) }
    }

    fn storage(&self, _to: NodeId) -> Option<proto::StorageStats> {
        None
    }
}

/// A client: records the answers to its requests.
#[derive(Default)]
pub struct Client {
    answers: Mutex<Vec<(u64, Reply)>>,
}

impl Responder for Client {
    fn defer(&self, _token: u64) {}
    fn answer(&self, token: u64, reply: Reply) {
        self.answers.lock().push((token, reply));
    }
}

impl Client {
    /// The answer to request `token`, if it came.
    pub fn reply(&self, token: u64) -> Option<Reply> {
        self.answers.lock().iter().find(|(t, _)| *t == token).map(|(_, r)| r.clone())
    }
}

/// Nodes `n0`, `n1`, … on one [`SimNet`], in memory.
pub struct Cluster {
    pub net: Arc<SimNet>,
    pub nodes: Vec<Arc<Node>>,
    workers: Vec<Workers>,
    pub client: Arc<Client>,
    /// The nodes' one clock.
    pub clock: Arc<SimClock>,
    next_token: Mutex<u64>,
}

impl Cluster {
    /// `n` nodes with replication factor `rf`, choices following `seed`.
    pub fn new(n: usize, rf: usize, seed: u64) -> Cluster {
        Cluster::build(n, seed, |infos| Ring::new(infos, rf, 1).unwrap())
    }

    /// `n` nodes on a murmur3 ring (string keys; `vnodes` balanced tokens each) with replication factor `rf`.
    pub fn murmur3(n: usize, rf: usize, vnodes: usize, seed: u64) -> Cluster {
        Cluster::build(n, seed, |infos| Ring::murmur3(infos, &[], vnodes, rf, 1).unwrap())
    }

    fn build(n: usize, seed: u64, ring: impl FnOnce(Vec<NodeInfo>) -> Ring) -> Cluster {
        let net = SimNet::new(seed);
        let infos: Vec<NodeInfo> = (0..n)
            .map(|i| NodeInfo {
                name: format!("n{i}"),
                host: "127.0.0.1".into(),
                port: 1 + i as u16,
                id: crate::cluster::ring::node_id(&format!("n{i}")),
            })
            .collect();
        let ring = ring(infos.clone());
        let mut nodes = Vec::new();
        let mut workers = Vec::new();
        let clock = Arc::new(SimClock(std::sync::atomic::AtomicU64::new(1_800_000_000_000_000)));
        for info in &infos {
            let mut cfg = NodeConfig::new(info.name.clone(), "127.0.0.1".parse().unwrap(), info.port);
            cfg.hint_rate = u32::MAX; // no pause between replayed hints
            cfg.request_timeout = Duration::from_secs(60);
            cfg.timed_sends = false; // the sim's time is not the timer's
            let peers = Arc::new(SimPeers { net: net.clone(), me: info.id });
            let (node, w) = Node::with_clock(cfg, ring.clone(), peers, clock.clone()).unwrap();
            net.state.lock().nodes.push((info.id, Arc::downgrade(&node)));
            nodes.push(node);
            workers.push(w);
        }
        Cluster { net, nodes, workers, client: Arc::new(Client::default()), clock, next_token: Mutex::new(1) }
    }

    /// Node `i`'s id.
    pub fn id(&self, i: usize) -> NodeId {
        self.nodes[i].me
    }

    /// The nodes (indexes) holding byte-ordered key `key`, owner first.
    pub fn replicas(&self, key: u8) -> Vec<usize> {
        self.replicas_of(crate::cluster::key::Key::byte(key).as_bytes())
    }

    /// The nodes (indexes) holding `key`, owner first.
    pub fn replicas_of(&self, key: &[u8]) -> Vec<usize> {
        self.nodes[0].ring().replicas(key).iter().map(|id| self.nodes.iter().position(|n| n.me == *id).unwrap()).collect()
    }

    /// Sends `req` to node `i` to coordinate; returns its token (see [`Client::reply`]).
    pub fn request(&self, i: usize, req: ClientRequest) -> u64 {
        let token = {
            let mut t = self.next_token.lock();
            *t += 1;
            *t
        };
        let responder: Arc<dyn Responder> = self.client.clone();
        match self.nodes[i].handle_client(req, Some((&responder, token))) {
            Answered::Now(h) => {
                Responder::answer(&*self.client, token, h.reply);
                if let Some(after) = h.after {
                    after.run();
                }
            }
            Answered::Later(u) => u.finish(),
        }
        token
    }

    /// Flushes the read batchers and carries out queued read repairs (and the
    /// sends of blocking read repairs, and the queued Paxos commits, which the
    /// repair thread makes in a replica).
    pub fn background(&self) {
        for (node, w) in self.nodes.iter().zip(&self.workers) {
            node.read_batcher.flush(&*node.peers);
            while let Ok(job) = w.urgent.try_recv().or_else(|_| w.repairs.try_recv()) {
                node.send_repair(job);
            }
            // Out of work, as the repair thread is: the Paxos commits queued meanwhile go.
            node.send_commits(node.take_commits());
        }
    }
}

impl Drop for Cluster {
    /// Calls in flight hold their node, which holds the net that holds them:
    /// let go of every message so the nodes are freed with the cluster.
    fn drop(&mut self) {
        for (node, w) in self.nodes.iter().zip(&self.workers) {
            node.read_batcher.flush(&*node.peers);
            drop(w.repairs.try_iter().chain(w.urgent.try_iter()).collect::<Vec<_>>());
        }
        let (in_flight, lost) = {
            let mut s = self.net.state.lock();
            (std::mem::take(&mut s.in_flight), std::mem::take(&mut s.lost))
        };
        drop((in_flight, lost));
    }
}
