//! Coordinating a SERIAL operation: one [`Proposer`] driven over the peer links.
//!
//! A SERIAL `get`, `put` or `del`, or a conditional put/delete, runs Paxos
//! among the key's replicas ([`crate::paxos`]). This node is the proposer:
//!
//! 1. **Unavailable** check (`Node::check_available` at SERIAL): fewer than a
//!    quorum of the key's replicas alive → refused before anything is sent.
//! 2. A [`Proposer`] over the key's replicas and the live ones, its ballot
//!    the HLC's `now()` (unique: the clock's node id is in it).
//! 3. Every [`Action::Send`] goes out as a [`PeerRequest::Paxos`] through
//!    [`Executor::send`]: to peers over their links, to this node through its
//!    own acceptor, answered once durable (as a write's local copy is). Each
//!    reply comes back through an `OpSink` into a channel of this operation
//!    alone, tagged with the replica and the kind of message it answers
//!    (a failed prepare or commit says nothing about the operation's proposal).
//! 4. The **waiting thread is the client connection's worker**: it blocks on
//!    the channel until the deadline (`--request-timeout`), handing each reply
//!    to the proposer. An error reply (peer down, connection lost, a refusal
//!    such as a ballot too far ahead) counts as no reply from that peer. On
//!    [`Action::RetryAfter`] it keeps receiving (learning ballots) until the
//!    back-off is over, observes [`Proposer::highest_seen`] in the clock and
//!    restarts with a fresh, higher ballot.
//! 5. On [`Action::Answer`] it returns; the commit sends that follow the
//!    answer go out in the background through the urgent repair thread
//!    ([`Executor::send_later`]), so the client does not wait for them.
//! 6. At the deadline, [`Proposer::on_timeout`]: `Timeout` if the operation's
//!    own proposal was never sent (nothing applied), otherwise the outcome is
//!    unknown ("may or may not have been applied").
//!
//! A reply that arrives after the operation ended finds its channel closed
//! and is dropped; replies to an earlier attempt (another ballot) are ignored
//! by the proposer, which still learns the ballots they show. The clock
//! observes the highest ballot seen before every retry and at the end, so this
//! node's next ballot for any key is above everything it saw.
//!
//! Blocking the worker for the operation's round trips is a simplification of
//! this step: a coordinator with many concurrent SERIAL operations holds as
//! many workers.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, unbounded};

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::command::{Executor, Outgoing, Route};
use crate::coordinator::peers::{IgnoreReply, ReplySink};
use crate::error::{Error, Result};
use crate::message::{PeerRequest, PeerResponse, PeerResult};
use crate::node::Node;
use crate::paxos::proposer::{Action, Proposer};
use crate::paxos::{Ballot, Op, Outcome, PaxosError, Request, Response};

/// Forwards the replies of one SERIAL operation into its channel. Once the
/// operation is over the receiver is gone and a late reply is dropped.
struct OpSink {
    tx: Sender<(usize, PeerResult)>,
}

impl ReplySink for OpSink {
    fn deliver(&self, slot: usize, result: PeerResult) {
        let _ = self.tx.send((slot, result));
    }
}

/// A finished SERIAL operation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SerialDone {
    /// The outcome.
    pub outcome: Outcome,
    /// The ballot of the operation's own proposal, if it made one: the
    /// timestamp of the cell an applied write committed.
    pub ballot: Option<Ballot>,
    /// Replicas that answered in the quorum (a quorum of the key's replicas).
    pub quorum: usize,
    /// Prepare, propose and repair rounds it took (retries included).
    pub round_trips: u32,
}

/// One operation's proposer and its channel.
struct Driver<'a> {
    node: &'a Arc<Node>,
    key: Key,
    op: Op,
    replicas: Vec<NodeId>,
    live: Vec<NodeId>,
    proposer: Proposer,
    sink: Arc<dyn ReplySink>,
    rx: Receiver<(usize, PeerResult)>,
    deadline: Instant,
    /// Round trips of earlier proposers of this operation (see [`Refusal`]).
    earlier_round_trips: u32,
    /// Fresh proposers started after a refusal that left nothing behind.
    retries: u32,
    rng: u64,
    /// The answers to the current proposer's own proposal.
    refusal: Refusal,
    /// The highest ballot seen in a reply the proposer did not see.
    highest: Ballot,
}

/// What the replicas said to the operation's own proposal, once the proposer
/// gave up on it as refused. If **every** replica it was sent to refused it,
/// no acceptor holds it (a refusal means a higher promise, which never goes
/// down), so it can never be chosen: the operation was not applied and may
/// start over. One acceptance, or one replica that failed to answer, leaves
/// the outcome unknown.
#[derive(Default)]
struct Refusal {
    refused: Vec<NodeId>,
    unsure: bool,
}

impl Refusal {
    /// Notes `from`'s reply to the proposal at `own`.
    fn note(&mut self, from: NodeId, reply: &Response, own: Ballot) {
        match reply {
            Response::Rejected { ballot, .. } if *ballot == own && !self.refused.contains(&from) => self.refused.push(from),
            Response::Accepted { ballot, .. } if *ballot == own => self.unsure = true,
            _ => {}
        }
    }
}

impl Node {
    /// Runs `op` on `key` at SERIAL, blocking the calling thread until it is
    /// decided or the request timeout passes. `Unavailable` before sending if
    /// fewer than a quorum of the key's replicas are alive.
    pub fn serial(self: &Arc<Self>, key: Key, op: Op) -> Result<SerialDone> {
        let (replicas, quorum) = self.check_available(&key, Consistency::Serial)?;
        let replicas = replicas.to_vec();
        let live: Vec<NodeId> = replicas.iter().copied().filter(|&r| self.alive(r)).collect();
        let ballot = Ballot(self.clock.now());
        let seed = ballot.0.micros ^ (u64::from(self.me.0) << 48);
        let (tx, rx) = unbounded();
        let mut d = Driver {
            node: self,
            proposer: Proposer::new(key.clone(), op.clone(), &replicas, &live, ballot, seed),
            key,
            op,
            replicas,
            live,
            sink: Arc::new(OpSink { tx }),
            rx,
            deadline: self.deadline(),
            earlier_round_trips: 0,
            retries: 0,
            rng: seed,
            refusal: Refusal::default(),
            highest: ballot,
        };
        let first = d.proposer.start();
        if first.is_empty() {
            // Refused before sending (the failure detector changed its mind since the check).
            return match d.proposer.outcome() {
                Some(Err(e)) => Err(e.clone().into_error()),
                _ => Err(Error::Internal("a SERIAL operation started with nothing to send".into())),
            };
        }
        d.send(first.into_iter().map(|(to, msg)| Action::Send { to, msg }).collect());
        let outcome = d.run();
        let _ = self.clock.observe(d.highest().0, self.cfg.max_clock_offset);
        let outcome = outcome.map_err(|e| e.into_error())?;
        let round_trips = d.earlier_round_trips + d.proposer.round_trips();
        Ok(SerialDone { outcome, ballot: d.proposer.proposed(), quorum, round_trips })
    }
}

impl Driver<'_> {
    /// Runs proposers until one answers for sure, or the deadline passes.
    fn run(&mut self) -> std::result::Result<Outcome, PaxosError> {
        loop {
            match self.run_one() {
                Err(PaxosError::Unknown(m)) if Instant::now() < self.deadline => {
                    if !self.nothing_left_behind() {
                        return Err(PaxosError::Unknown(m));
                    }
                    if !self.start_over() {
                        return Err(PaxosError::Unknown(m));
                    }
                }
                other => return other,
            }
        }
    }

    /// After the proposer gave up on its own refused proposal: waits for the
    /// other replicas' answers to it; true if every replica it went to
    /// refused it (so it was not applied).
    fn nothing_left_behind(&mut self) -> bool {
        let Some(own) = self.proposer.proposed() else { return false };
        let targets = self.proposer.targets().to_vec();
        while !self.refusal.unsure && !targets.iter().all(|t| self.refusal.refused.contains(t)) {
            match self.rx.recv_deadline(self.deadline) {
                Ok((slot, Ok(PeerResponse::Paxos(reply)))) => {
                    if let Some((from, _)) = self.replica_of(slot) {
                        self.learn(&reply);
                        self.refusal.note(from, &reply, own);
                    }
                }
                // A replica that failed to answer a proposal may or may not have
                // accepted it (a failed prepare or commit says nothing about it).
                Ok((slot, _)) => self.refusal.unsure |= self.replica_of(slot).is_none_or(|(_, propose)| propose),
                Err(_) => return false,
            }
        }
        !self.refusal.unsure
    }

    /// Learns the ballots a reply the proposer does not see shows.
    fn learn(&mut self, reply: &Response) {
        let seen = match reply {
            Response::Rejected { promised, .. } => *promised,
            other => other.ballot(),
        };
        self.highest = self.highest.max(seen);
    }

    /// The highest ballot seen by this operation.
    fn highest(&self) -> Ballot {
        self.highest.max(self.proposer.highest_seen())
    }

    /// For the back-off between proposers.
    fn next_random(&mut self) -> u64 {
        crate::rand::splitmix64(&mut self.rng)
    }

    /// A fresh proposer for the same operation, after a randomised back-off,
    /// with a ballot above everything seen; false if the deadline comes first.
    fn start_over(&mut self) -> bool {
        self.retries += 1;
        let bound = (2_000u64 << self.retries.min(7)).min(200_000);
        let wait = Duration::from_micros(self.next_random() % (bound + 1));
        let until = (Instant::now() + wait).min(self.deadline);
        // Keep learning ballots while backing off.
        while let Ok((slot, Ok(PeerResponse::Paxos(reply)))) = self.rx.recv_deadline(until) {
            if self.replica_of(slot).is_some() {
                self.learn(&reply);
            }
        }
        if Instant::now() >= self.deadline {
            return false;
        }
        let _ = self.node.clock.observe(self.highest().0, self.node.cfg.max_clock_offset);
        let ballot = Ballot(self.node.clock.now());
        self.earlier_round_trips += self.proposer.round_trips();
        let seed = self.next_random();
        self.proposer = Proposer::new(self.key.clone(), self.op.clone(), &self.replicas, &self.live, ballot, seed);
        self.refusal = Refusal::default();
        let sends = self.proposer.start();
        self.send(sends.into_iter().map(|(to, msg)| Action::Send { to, msg }).collect());
        true
    }

    /// Waits for replies until the proposer answers or the deadline passes.
    fn run_one(&mut self) -> std::result::Result<Outcome, PaxosError> {
        let mut retry_at: Option<Instant> = None;
        loop {
            let until = retry_at.map_or(self.deadline, |r| r.min(self.deadline));
            let actions = match self.rx.recv_deadline(until) {
                Ok((slot, result)) => match (self.replica_of(slot), result) {
                    (Some((from, _)), Ok(PeerResponse::Paxos(reply))) => {
                        if let Some(own) = self.proposer.proposed() {
                            self.refusal.note(from, &reply, own);
                        }
                        self.proposer.on_reply(from, reply)
                    }
                    // An error, or an answer that is not Paxos: no reply from that peer
                    // (and, if it answers a proposal once the own one is out, maybe an
                    // acceptance unheard; a failed prepare or commit says nothing of it).
                    (at, _) => {
                        self.refusal.unsure |= self.proposer.proposed().is_some() && at.is_none_or(|(_, propose)| propose);
                        Vec::new()
                    }
                },
                Err(RecvTimeoutError::Timeout) if Instant::now() >= self.deadline => self.proposer.on_timeout(),
                Err(RecvTimeoutError::Timeout) => {
                    // The back-off is over: a fresh ballot above everything seen.
                    retry_at = None;
                    let _ = self.node.clock.observe(self.highest().0, self.node.cfg.max_clock_offset);
                    let ballot = Ballot(self.node.clock.now());
                    self.proposer.restart(ballot).into_iter().map(|(to, msg)| Action::Send { to, msg }).collect()
                }
                Err(RecvTimeoutError::Disconnected) => self.proposer.on_timeout(),
            };
            let mut answer = None;
            let mut sends = Vec::new();
            let mut background = Vec::new();
            for a in actions {
                match a {
                    Action::Send { to, msg } if answer.is_some() => background.push((to, msg)),
                    Action::Send { to, msg } => sends.push(Action::Send { to, msg }),
                    Action::Answer(outcome) => answer = Some(outcome),
                    Action::RetryAfter(d) => retry_at = Some(Instant::now() + d),
                }
            }
            if !sends.is_empty() {
                self.send(sends);
            }
            if let Some(outcome) = answer {
                self.commit_in_background(background);
                return outcome;
            }
        }
    }
    fn outgoing(&self, to: NodeId, msg: Request) -> Option<Outgoing> {
        let replica = self.replicas.iter().position(|&r| r == to)?;
        let kind = match msg {
            Request::Prepare { .. } => 0,
            Request::Propose { .. } => 1,
            Request::Commit { .. } => 2,
        };
        Some(Outgoing { slot: replica + kind * self.replicas.len(), to, msg: PeerRequest::Paxos(msg), route: Route::Direct })
    }

    /// The replica a reply's slot stands for, and whether it answers a propose
    /// (slots are replica index plus replica count times the message kind).
    fn replica_of(&self, slot: usize) -> Option<(NodeId, bool)> {
        let n = self.replicas.len();
        let from = *self.replicas.get(slot % n.max(1))?;
        Some((from, slot / n.max(1) == 1))
    }

    /// Sends now: peers first, this node's own acceptor last (served here,
    /// once durable); every reply comes back on this operation's channel.
    fn send(&self, actions: Vec<Action>) {
        let sends: Vec<Outgoing> = actions
            .into_iter()
            .filter_map(|a| match a {
                Action::Send { to, msg } => self.outgoing(to, msg),
                _ => None,
            })
            .collect();
        Executor::send(&**self.node, self.sink.clone(), sends, self.deadline);
    }

    /// The commits of a chosen value, after the answer: nobody waits for them.
    fn commit_in_background(&self, commits: Vec<(NodeId, Request)>) {
        let sends: Vec<Outgoing> = commits.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)).collect();
        if !sends.is_empty() {
            self.node.send_later(Arc::new(IgnoreReply), sends, Instant::now() + self.node.cfg.request_timeout);
        }
    }
}
