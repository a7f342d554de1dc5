//! The proposer: one SERIAL operation on one key as a state machine.
//!
//! [`Proposer::start`] returns the prepares to send; each reply goes to
//! [`Proposer::on_reply`], which returns [`Action`]s: more sends, the answer,
//! or a back-off after which the caller [`restart`](Proposer::restart)s the
//! machine with a higher ballot. [`Proposer::on_timeout`] ends it when the
//! caller's deadline passes. Phases:
//!
//! * **Preparing** — waits for a quorum of promises; decides from them what
//!   the current value is and what to propose (see the module essay).
//! * **Proposing** — waits for a quorum of accepts of its own proposal (the
//!   operation's value) or of a completion (someone else's in-flight value).
//! * **Repairing** — a read (or failed CAS) sends the freshest commit to
//!   replicas whose cell lags and answers once a quorum holds it.
//! * **Waiting** — backing off; the caller restarts it.
//! * **Done** — answered; commit acknowledgements are ignored.
//!
//! # Thrifty rounds
//!
//! A [`thrifty`](Proposer::thrifty) proposer sends each prepare and propose
//! to a quorum of the live replicas only (the first of `targets`, in the
//! caller's order of preference: a coordinator that is a replica puts itself
//! first, so a round costs it one message to one peer instead of two). If one
//! of them fails to answer, the caller [`widen`](Proposer::widen)s the round to
//! the others. Any quorum will do for Paxos, so this changes no outcome. A
//! rejected prepare still means a higher ballot and a back-off; a proposal
//! rejected where it went is widened first (a proposal refused for good
//! leaves its operation's outcome unknown, which the other replicas may still
//! avoid). Commits and repairs go to every live replica.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::paxos::{Ballot, Op, Outcome, PaxosError, Proposal, Request, Response, show};
use crate::storage::cell::Version;

/// What the caller must do.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send `msg` to `to`. Commits after an answer are fire-and-forget.
    Send {
        /// The replica.
        to: NodeId,
        /// The request.
        msg: Request,
    },
    /// The operation's outcome: answer the client (emitted once).
    Answer(Result<Outcome, PaxosError>),
    /// Contention (or a completed in-flight proposal): after this delay,
    /// observe [`Proposer::highest_seen`] in the HLC and call
    /// [`Proposer::restart`] with a new, higher ballot.
    RetryAfter(Duration),
}

/// The randomised exponential back-off: attempt `n` waits a uniform delay in
/// `[0, min(max, base * 2^n)]`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Backoff {
    /// The first attempt's bound.
    pub base: Duration,
    /// The largest bound.
    pub max: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff { base: Duration::from_millis(2), max: Duration::from_millis(200) }
    }
}

#[derive(Debug, Clone)]
enum Phase {
    Preparing { promises: BTreeMap<NodeId, (Option<Proposal>, Option<Version>)>, refused: BTreeSet<NodeId> },
    Proposing { proposal: Proposal, own: bool, accepted: BTreeSet<NodeId>, refused: BTreeSet<NodeId> },
    Repairing { cell: Version, holders: BTreeSet<NodeId>, answer: Outcome },
    Waiting,
    Done,
}

impl Phase {
    fn name(&self) -> &'static str {
        match self {
            Phase::Preparing { .. } => "prepare",
            Phase::Proposing { own: true, .. } => "propose",
            Phase::Proposing { own: false, .. } => "completing an in-flight proposal",
            Phase::Repairing { .. } => "repairing lagging replicas",
            Phase::Waiting => "back-off",
            Phase::Done => "done",
        }
    }
}

/// One SERIAL operation on one key.
#[derive(Debug, Clone)]
pub struct Proposer {
    key: Key,
    op: Op,
    replicas: Vec<NodeId>,
    targets: Vec<NodeId>,
    quorum: usize,
    thrifty: bool,
    /// Where the current round (prepare or propose) was sent.
    sent: Vec<NodeId>,
    /// Where the operation's own proposal was sent (the current proposer's).
    own_sent: Vec<NodeId>,
    ballot: Ballot,
    highest: Ballot,
    phase: Phase,
    rng: u64,
    backoff: Backoff,
    attempts: u32,
    round_trips: u32,
    own: Option<Ballot>,
    chosen: Option<Proposal>,
    outcome: Option<Result<Outcome, PaxosError>>,
}

impl Proposer {
    /// An operation `op` on `key` whose replicas are `replicas` (RF of them),
    /// of which `live` are believed up, with first ballot `ballot`; `seed`
    /// drives the back-off's randomness. Nothing is sent until [`start`](Self::start).
    pub fn new(key: Key, op: Op, replicas: &[NodeId], live: &[NodeId], ballot: Ballot, seed: u64) -> Self {
        let mut replicas = replicas.to_vec();
        replicas.dedup();
        let targets = replicas.iter().copied().filter(|r| live.contains(r)).collect();
        let quorum = replicas.len() / 2 + 1;
        Proposer {
            key,
            op,
            replicas,
            targets,
            quorum,
            thrifty: false,
            sent: Vec::new(),
            own_sent: Vec::new(),
            ballot,
            highest: ballot,
            phase: Phase::Waiting,
            rng: seed,
            backoff: Backoff::default(),
            attempts: 0,
            round_trips: 0,
            own: None,
            chosen: None,
            outcome: None,
        }
    }

    /// Counts `quorum` replies as a quorum instead of a majority of the
    /// replicas (during a membership change: the old replicas' quorum plus
    /// every pending replica, as Cassandra counts them).
    pub fn with_quorum(mut self, quorum: usize) -> Self {
        self.quorum = quorum.clamp(1, self.replicas.len().max(1));
        self
    }

    /// Sends each round to a quorum only, the first live ones in the order of
    /// `replicas` (see the module essay).
    pub fn thrifty(mut self) -> Self {
        self.thrifty = true;
        self
    }

    /// Where a new round goes: a quorum of the targets if thrifty, else all.
    fn round_targets(&self) -> Vec<NodeId> {
        let n = if self.thrifty { self.quorum } else { self.targets.len() };
        self.targets.iter().copied().take(n).collect()
    }

    /// Sends the current prepare or propose to the live replicas it has not
    /// gone to (after one of those it went to failed to answer, or took too
    /// long). Nothing in other phases, or once it went to every one.
    pub fn widen(&mut self) -> Vec<(NodeId, Request)> {
        let rest: Vec<NodeId> = self.targets.iter().copied().filter(|t| !self.sent.contains(t)).collect();
        if rest.is_empty() {
            return Vec::new();
        }
        let msg = match &self.phase {
            Phase::Preparing { .. } => Request::Prepare { key: self.key.clone(), ballot: self.ballot },
            Phase::Proposing { proposal, .. } => Request::Propose { key: self.key.clone(), proposal: proposal.clone() },
            _ => return Vec::new(),
        };
        if matches!(self.phase, Phase::Proposing { own: true, .. }) {
            self.own_sent.extend(&rest);
        }
        self.sent.extend(&rest);
        rest.into_iter().map(|t| (t, msg.clone())).collect()
    }

    /// Whether the current round waits on replicas it has not gone to all of.
    pub fn can_widen(&self) -> bool {
        matches!(self.phase, Phase::Preparing { .. } | Phase::Proposing { .. }) && self.sent.len() < self.targets.len()
    }

    /// Where the current round went.
    pub fn sent_to(&self) -> &[NodeId] {
        &self.sent
    }

    /// Where the operation's own proposal went (empty until it is sent).
    pub fn proposal_sent_to(&self) -> &[NodeId] {
        &self.own_sent
    }

    /// Uses `backoff` instead of the default (2 ms doubling up to 200 ms).
    pub fn with_backoff(mut self, backoff: Backoff) -> Self {
        self.backoff = backoff;
        self
    }

    /// The prepares that open the operation, or none (and the outcome
    /// `Unavailable`) if fewer than a quorum of replicas are alive.
    pub fn start(&mut self) -> Vec<(NodeId, Request)> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        if self.targets.len() < self.quorum {
            let msg = format!(
                "need {} of {} replicas for key {}, {} alive; the SERIAL {} was not sent",
                self.quorum,
                self.replicas.len(),
                self.key,
                self.targets.len(),
                self.op.name()
            );
            self.finish(Err(PaxosError::Unavailable(msg)));
            return Vec::new();
        }
        self.prepare()
    }

    /// After [`Action::RetryAfter`]: starts over with `ballot` (which should
    /// be above [`highest_seen`](Self::highest_seen), or it will be refused
    /// again). Ignored unless the machine is backing off.
    pub fn restart(&mut self, ballot: Ballot) -> Vec<(NodeId, Request)> {
        if !matches!(self.phase, Phase::Waiting) || self.outcome.is_some() || self.round_trips == 0 {
            return Vec::new();
        }
        self.ballot = ballot;
        self.highest = self.highest.max(ballot);
        self.prepare()
    }

    fn prepare(&mut self) -> Vec<(NodeId, Request)> {
        self.round_trips += 1;
        self.phase = Phase::Preparing { promises: BTreeMap::new(), refused: BTreeSet::new() };
        self.sent = self.round_targets();
        let (key, ballot) = (&self.key, self.ballot);
        self.sent.iter().map(|&t| (t, Request::Prepare { key: key.clone(), ballot })).collect()
    }

    /// The current ballot.
    pub fn ballot(&self) -> Ballot {
        self.ballot
    }

    /// The highest ballot seen in any reply (promised, accepted or committed
    /// elsewhere): the caller's HLC should observe it before the next ballot.
    pub fn highest_seen(&self) -> Ballot {
        self.highest
    }

    /// Round trips started so far (each prepare, proposal or repair is one).
    pub fn round_trips(&self) -> u32 {
        self.round_trips
    }

    /// The ballot of the operation's own proposal, once sent.
    pub fn proposed(&self) -> Option<Ballot> {
        self.own
    }

    /// The outcome, once decided.
    pub fn outcome(&self) -> Option<&Result<Outcome, PaxosError>> {
        self.outcome.as_ref()
    }

    /// The replicas a quorum is counted among (the live ones).
    pub fn targets(&self) -> &[NodeId] {
        &self.targets
    }

    /// A reply from `from`. Replies from non-replicas, for another key, or for
    /// another ballot (a previous attempt) are ignored, but any ballot they
    /// show is learned.
    pub fn on_reply(&mut self, from: NodeId, reply: Response) -> Vec<Action> {
        if !self.targets.contains(&from) || reply.key() != &self.key {
            return Vec::new();
        }
        self.learn(&reply);
        if reply.ballot() != self.ballot && !matches!(reply, Response::Committed { .. }) {
            return Vec::new();
        }
        // A round can still reach a quorum among the replicas it went to while
        // no more than `n - quorum` of them refused.
        let (quorum, n) = (self.quorum, self.sent.len());
        match (&mut self.phase, reply) {
            (Phase::Preparing { promises, .. }, Response::Promise { accepted, committed, .. }) => {
                promises.entry(from).or_insert((accepted, committed));
                if promises.len() >= quorum {
                    return self.decide();
                }
            }
            (Phase::Preparing { refused, .. }, Response::Rejected { .. }) => {
                refused.insert(from);
                if refused.len() > n - quorum {
                    return self.back_off();
                }
            }
            (Phase::Proposing { accepted, refused, .. }, Response::Accepted { .. }) => {
                if !refused.contains(&from) {
                    accepted.insert(from);
                }
                if accepted.len() >= quorum {
                    return self.chosen();
                }
            }
            (Phase::Proposing { accepted, refused, own, proposal }, Response::Rejected { promised, .. }) => {
                if !accepted.contains(&from) {
                    refused.insert(from);
                }
                if refused.len() > n - quorum && n < self.targets.len() {
                    // A thrifty proposal that can no longer reach a quorum where it
                    // went: the other live replicas may still accept it.
                    return self.widen().into_iter().map(|(to, msg)| Action::Send { to, msg }).collect();
                }
                if refused.len() > n - quorum {
                    if *own {
                        let msg = format!(
                            "the SERIAL {} to key {} may or may not have been applied: {} of {} replicas refused its proposal at ballot {} \
                             (a higher ballot {} was promised); another proposer may still complete it",
                            self.op.name(),
                            self.key,
                            refused.len(),
                            n,
                            proposal.ballot,
                            promised
                        );
                        return self.finish(Err(PaxosError::Unknown(msg)));
                    }
                    return self.back_off();
                }
            }
            (Phase::Repairing { cell, holders, .. }, Response::Committed { ballot, .. }) => {
                if ballot >= Ballot(cell.ts) {
                    holders.insert(from);
                }
                if holders.len() >= quorum
                    && let Phase::Repairing { answer, .. } = std::mem::replace(&mut self.phase, Phase::Done)
                {
                    return self.finish(Ok(answer));
                }
            }
            _ => {}
        }
        Vec::new()
    }

    /// The caller's deadline passed: the operation ends as `Unknown` if its
    /// own proposal was sent, otherwise as `Timeout` (nothing applied).
    pub fn on_timeout(&mut self) -> Vec<Action> {
        if self.outcome.is_some() {
            return Vec::new();
        }
        let (op, key, phase) = (self.op.name(), &self.key, self.phase.name());
        let progress = match &self.phase {
            Phase::Preparing { promises, .. } => format!("{} of {} promises", promises.len(), self.quorum),
            Phase::Proposing { accepted, .. } => format!("{} of {} accepts", accepted.len(), self.quorum),
            Phase::Repairing { holders, .. } => format!("{} of {} replicas hold the value", holders.len(), self.quorum),
            _ => format!("attempt {}", self.attempts + 1),
        };
        let err = match self.own {
            Some(b) => PaxosError::Unknown(format!(
                "the SERIAL {op} to key {key} may or may not have been applied: timed out in {phase} with {progress} (its proposal at ballot {b} was sent)"
            )),
            None => PaxosError::Timeout(format!(
                "the SERIAL {op} of key {key} timed out in {phase} with {progress}; nothing was proposed, so it was not applied"
            )),
        };
        self.finish(Err(err))
    }

    fn learn(&mut self, reply: &Response) {
        let mut seen = reply.ballot();
        match reply {
            Response::Rejected { promised, .. } => seen = seen.max(*promised),
            Response::Promise { accepted, committed, .. } => {
                if let Some(a) = accepted {
                    seen = seen.max(a.ballot);
                }
                if let Some(c) = committed {
                    seen = seen.max(Ballot(c.ts));
                }
            }
            _ => {}
        }
        self.highest = self.highest.max(seen);
    }

    /// A quorum of promises: find the current value and act on it.
    fn decide(&mut self) -> Vec<Action> {
        let Phase::Preparing { promises, .. } = std::mem::replace(&mut self.phase, Phase::Waiting) else {
            return Vec::new();
        };
        let mut freshest: Option<Version> = promises.values().filter_map(|(_, c)| c.clone()).max();
        if let Some(c) = &self.chosen
            && freshest.as_ref().is_none_or(|f| c.version() > *f)
        {
            freshest = Some(c.version());
        }
        let floor = freshest.as_ref().map_or(Ballot::ZERO, |f| Ballot(f.ts));
        if floor >= self.ballot {
            return self.back_off();
        }
        let in_flight = promises.values().filter_map(|(a, _)| a.as_ref()).filter(|a| a.ballot > floor).max_by_key(|a| a.ballot).cloned();
        if let Some(p) = in_flight {
            if p.ballot >= self.ballot {
                return self.back_off();
            }
            let completion = Proposal { ballot: self.ballot, origin: p.origin, value: p.value };
            return self.propose(completion, false);
        }
        let current = freshest.as_ref().and_then(|f| f.value.clone());
        let answer = match &self.op {
            Op::Read => Outcome::Read(current),
            Op::Write(v) => return self.propose_own(v.clone()),
            Op::CompareAndSet { expect, new } => {
                if expect.holds(current.as_deref()) {
                    return self.propose_own(new.clone());
                }
                Outcome::NotApplied { current }
            }
        };
        // A read-like answer: make sure a quorum holds the freshest cell.
        let Some(cell) = freshest else { return self.finish(Ok(answer)) };
        let holders: BTreeSet<NodeId> =
            promises.iter().filter(|(_, (_, c))| c.as_ref().is_some_and(|c| c.ts >= cell.ts)).map(|(n, _)| *n).collect();
        if holders.len() >= self.quorum {
            return self.finish(Ok(answer));
        }
        self.round_trips += 1;
        let commit = Proposal { ballot: Ballot(cell.ts), origin: Ballot(cell.ts), value: cell.value.clone() };
        let sends = self
            .targets
            .iter()
            .filter(|t| !holders.contains(t))
            .map(|&to| Action::Send { to, msg: Request::Commit { key: self.key.clone(), proposal: commit.clone() } })
            .collect();
        self.phase = Phase::Repairing { cell, holders, answer };
        sends
    }

    fn propose_own(&mut self, value: Option<Box<[u8]>>) -> Vec<Action> {
        self.own = Some(self.ballot);
        self.propose(Proposal { ballot: self.ballot, origin: self.ballot, value }, true)
    }

    fn propose(&mut self, proposal: Proposal, own: bool) -> Vec<Action> {
        self.round_trips += 1;
        self.sent = self.round_targets();
        if own {
            self.own_sent = self.sent.clone();
        }
        let sends = self
            .sent
            .iter()
            .map(|&to| Action::Send { to, msg: Request::Propose { key: self.key.clone(), proposal: proposal.clone() } })
            .collect();
        self.phase = Phase::Proposing { proposal, own, accepted: BTreeSet::new(), refused: BTreeSet::new() };
        sends
    }

    /// A quorum accepted: the proposal is chosen. Answer (if it was ours, or
    /// we are a read), then send the commits in the background.
    fn chosen(&mut self) -> Vec<Action> {
        let Phase::Proposing { proposal, own, .. } = std::mem::replace(&mut self.phase, Phase::Waiting) else {
            return Vec::new();
        };
        let commits: Vec<Action> = self
            .targets
            .iter()
            .map(|&to| Action::Send { to, msg: Request::Commit { key: self.key.clone(), proposal: proposal.clone() } })
            .collect();
        let value = proposal.value.clone();
        self.chosen = Some(proposal);
        let mut out = if own {
            self.finish(Ok(Outcome::Applied))
        } else if self.op == Op::Read {
            self.finish(Ok(Outcome::Read(value)))
        } else {
            // Someone else's value is now chosen; our own needs a new ballot.
            self.phase = Phase::Waiting;
            vec![Action::RetryAfter(Duration::ZERO)]
        };
        out.extend(commits);
        out
    }

    fn back_off(&mut self) -> Vec<Action> {
        self.phase = Phase::Waiting;
        let bound = self.backoff.base.saturating_mul(1u32 << self.attempts.min(20)).min(self.backoff.max);
        self.attempts += 1;
        let micros = bound.as_micros() as u64;
        let delay = if micros == 0 { 0 } else { self.next_random() % (micros + 1) };
        vec![Action::RetryAfter(Duration::from_micros(delay))]
    }

    fn finish(&mut self, outcome: Result<Outcome, PaxosError>) -> Vec<Action> {
        self.phase = Phase::Done;
        self.outcome = Some(outcome.clone());
        vec![Action::Answer(outcome)]
    }

    fn next_random(&mut self) -> u64 {
        crate::rand::splitmix64(&mut self.rng)
    }
}

/// A short description of an outcome for logs and consoles.
pub fn describe(outcome: &Result<Outcome, PaxosError>) -> String {
    match outcome {
        Ok(Outcome::Read(v)) => format!("read {}", show(v.as_deref())),
        Ok(Outcome::Applied) => "applied".to_string(),
        Ok(Outcome::NotApplied { current }) => format!("not applied (current value {})", show(current.as_deref())),
        Err(e) => e.to_string(),
    }
}
