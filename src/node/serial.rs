//! Coordinating a SERIAL operation: one [`Proposer`] driven by the replies
//! that reach it, with no thread of its own.
//!
//! A SERIAL `get`, `put` or `del`, or a conditional put/delete, runs Paxos
//! among the key's replicas ([`crate::paxos`]). This node is the proposer:
//!
//! 1. **Unavailable** check (`Node::check_available` at SERIAL): fewer than a
//!    quorum of the key's replicas alive → refused before anything is sent.
//! 2. **One at a time per key here.** If another SERIAL operation on the key
//!    from this node is running, the new one waits for its turn (two of one
//!    coordinator's operations on a key would only duel: each one's prepare
//!    making the other's proposal fail). Then a thrifty [`Proposer`] over the
//!    key's replicas, this node first if it is one, and the live ones, its
//!    ballot the HLC's `now()` (unique: the clock's node id is in it), inside a
//!    `SerialCall`: the operation's state behind a mutex, which is also the
//!    [`ReplySink`] of everything it sends.
//! 3. Every [`Action::Send`] goes out as a [`PeerRequest::Paxos`] through
//!    [`Executor::send`]: to peers over their links, to this node through its
//!    own acceptor, answered once durable (as a write's local copy is). A
//!    round goes to a quorum only; it is widened to the other live replicas
//!    when one of those fails to answer, and by a timer check when it has
//!    waited 10 ms (`WIDEN_AFTER`). Each reply is tagged with the replica and the
//!    kind of message it answers (a failed prepare or commit says nothing
//!    about the operation's proposal).
//! 4. **Nobody waits.** A reply is handed to the proposer on the thread that
//!    delivers it (a link's reader, usually); sends it asks for then go
//!    through [`Executor::send_later`] (a link's reader must not write to
//!    another peer or wait for a commit). An error reply (peer down,
//!    connection lost, a refusal such as a ballot too far ahead) counts as no
//!    reply from that peer. On [`Action::RetryAfter`] the node's
//!    [timer](crate::node::timer) wakes the operation after the back-off; it
//!    observes [`Proposer::highest_seen`] in the clock and restarts with a
//!    fresh, higher ballot.
//! 5. On [`Action::Answer`] this node's own commit is applied (without
//!    waiting for the log: the value is chosen already), the client is
//!    answered (a deferred reply on its connection, or the waiting caller of
//!    [`Node::serial`]), and the commits to the other replicas are queued:
//!    they ride with the next message [`Executor::send`] writes to each, or
//!    leave when the repair thread runs out of urgent work — at once on an
//!    idle node, in batches (one write a peer) on a busy one.
//! 6. At the deadline (`--request-timeout`, also a timer), [`Proposer::on_timeout`]:
//!    `Timeout` if the operation's own proposal was never sent (nothing
//!    applied), otherwise the outcome is unknown ("may or may not have been
//!    applied"). Then the next operation waiting for the key here begins.
//!
//! **Epochs.** The replicas and the quorum are those of the node's view when
//! the operation starts; every prepare and propose carries its epoch, and an
//! acceptor holding a newer one refuses it (`StaleEpoch`: nothing promised or
//! accepted). Before anything was proposed, such a refusal stops the attempt
//! and the operation starts over once the node has caught up, with the newer
//! epoch's replicas and quorum; after, it counts as a refusal.
//!
//! A proposal refused by a majority ends the proposer with an unknown outcome;
//! if **every** replica it went to refused it, nothing holds it and it can
//! never be chosen, so the operation backs off and starts over with a fresh
//! proposer instead (see `Refusal`). Replies to an earlier attempt (another
//! ballot) are ignored by the proposer, which still learns the ballots they
//! show; the clock observes the highest ballot seen before every retry and at
//! the end, so this node's next ballot for any key is above everything it saw.
//!
//! Before this design the connection's worker blocked on a channel for the
//! operation's round trips and woke for every reply, every round went to
//! every replica and every commit was a message of its own: about 15 thread
//! switches an operation against 2 for a QUORUM write, which on a small
//! machine cost most of SERIAL's throughput (see `docs/PERFORMANCE.md`).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::call::Finish;
use crate::coordinator::command::{Executor, Outgoing, Responder, Route};
use crate::coordinator::peers::{IgnoreReply, ReplySink};
use crate::error::{Error, Result};
use crate::message::{PeerRequest, PeerResponse, PeerResult, Reply};
use crate::node::{Node, Unfinished};
use crate::paxos::proposer::{Action, Proposer};
use crate::paxos::{Ballot, Op, Outcome, PaxosError, Request, Response};

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

impl SerialDone {
    /// The client's answer to a finished `op`.
    pub fn reply(done: Result<SerialDone>) -> Reply {
        let done = match done {
            Ok(d) => d,
            Err(e) => return Reply::Error(e),
        };
        match (done.outcome, done.ballot) {
            (Outcome::Read(value), _) => Reply::SerialRead(value),
            (Outcome::Applied, Some(b)) => Reply::Write { ts: b.ts(), acks: done.quorum },
            (Outcome::NotApplied { current }, _) => Reply::NotApplied { current },
            (other, _) => Reply::Error(Error::Internal(format!("a SERIAL operation answered {other:?} without a ballot"))),
        }
    }
}

/// What the replicas said to the operation's own proposal, once the proposer
/// gave up on it as refused. If **every** replica it was sent to refused it,
/// no acceptor holds it (a refusal means a higher promise, which never goes
/// down), so it can never be chosen: the operation was not applied and may
/// start over. If the only acceptance is this node's own, it withdraws it
/// when it can (nobody was promised anything since, so nobody saw it:
/// [`Acceptor::withdraw`](crate::paxos::acceptor::Acceptor::withdraw)), and
/// then the same holds. Any other acceptance, or a replica that failed to
/// answer, leaves the outcome unknown.
#[derive(Default)]
struct Refusal {
    refused: Vec<NodeId>,
    accepted: Vec<NodeId>,
    unsure: bool,
}

impl Refusal {
    /// Notes `from`'s reply to the proposal at `own`.
    fn note(&mut self, from: NodeId, reply: &Response, own: Ballot) {
        match reply {
            Response::Rejected { ballot, .. } if *ballot == own && !self.refused.contains(&from) => self.refused.push(from),
            Response::Accepted { ballot, .. } if *ballot == own && !self.accepted.contains(&from) => self.accepted.push(from),
            _ => {}
        }
    }

    /// Whether every one of `targets` answered.
    fn all_answered(&self, targets: &[NodeId]) -> bool {
        targets.iter().all(|t| self.refused.contains(t) || self.accepted.contains(t))
    }
}

/// Where the operation is.
enum Stage {
    /// Waiting behind an earlier SERIAL operation on the same key from this
    /// coordinator: two of its own operations would only duel (each one's
    /// prepare making the other's proposal fail), so they take turns.
    Queued,
    /// A proposer is at work (or waiting for its retry timer).
    Running,
    /// The proposer gave up on its own refused proposal (the message): the
    /// other replicas' answers to it decide between unknown and starting over.
    Settling(String),
    /// Every replica refused the proposal: a fresh proposer starts when the
    /// back-off timer fires (the message, if the deadline comes first).
    BackingOff(String),
    /// Answered.
    Done,
}

/// What the timer wakes the operation for; stale wakes (an older generation) are ignored.
#[derive(Clone, Copy)]
enum Wake {
    /// The proposer's back-off is over: restart it with a fresh ballot.
    Retry(u64),
    /// The back-off after a wholly refused proposal is over: a fresh proposer.
    StartOver(u64),
    /// Thrifty round number `.0` may be waiting on a slow replica: widen it if so.
    Widen(u32),
}

/// Called once with the outcome.
pub(crate) type OnDone = Box<dyn FnOnce(Result<SerialDone>) + Send>;

/// I/O the state asked for, carried out once its lock is released.
#[derive(Default)]
struct Effects {
    sends: Vec<Outgoing>,
    /// A check that the thrifty round just sent (its number) was answered.
    widen: Option<u32>,
    /// The operation that held its key's turn here finished: the next may begin.
    next: Option<Key>,
    background: Vec<Outgoing>,
    timer: Option<(Instant, Wake)>,
    finished: Option<(OnDone, Result<SerialDone>)>,
}

/// One operation's proposer and what it needs between replies.
struct State {
    key: Key,
    op: Op,
    replicas: Vec<NodeId>,
    /// The replicas in the order rounds prefer them (see [`preference`]).
    preferred: Vec<NodeId>,
    live: Vec<NodeId>,
    quorum: usize,
    proposer: Proposer,
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
    stage: Stage,
    /// The generation of the one timer wake that counts.
    generation: u64,
    done: Option<OnDone>,
    /// The operation began (left [`Stage::Queued`]): it holds its key's turn
    /// at this coordinator until it finishes.
    active: bool,
    /// This node withdrew its acceptance of the refused proposal: the log
    /// position to make durable before starting over.
    withdrawn: Option<u64>,
    /// The metadata epoch the replicas and quorum were chosen at (every
    /// prepare and propose carries it; see [`State::restart_at_newer_epoch`]).
    epoch: u64,
    /// Bumped each time the replicas are chosen again: a reply's slot carries
    /// it, so one to the earlier replicas is told apart.
    view_gen: usize,
    /// A replica refused a prepare or propose as routed at an older epoch.
    stale: bool,
}

/// A SERIAL operation in flight: its state, and the sink of its replies.
pub(crate) struct SerialCall {
    node: Arc<Node>,
    key: Key,
    state: Mutex<State>,
    me: Weak<SerialCall>,
}

impl Node {
    /// Runs `op` on `key` at SERIAL, blocking the calling thread until it is
    /// decided or the request timeout passes. `Unavailable` before sending if
    /// fewer than a quorum of the key's replicas are alive.
    pub fn serial(self: &Arc<Self>, key: Key, op: Op) -> Result<SerialDone> {
        let (tx, rx) = crossbeam_channel::bounded(1);
        let _call = self.start_serial(key, op, Box::new(move |done| drop(tx.send(done))))?;
        // The deadline's timer answers at the latest; the margin is for a stalled timer thread.
        rx.recv_timeout(self.cfg.request_timeout + Duration::from_secs(5))
            .unwrap_or_else(|_| Err(Error::Internal("a SERIAL operation was never answered".into())))
    }

    /// Starts `op` on `key` at SERIAL and defers the client's reply: the
    /// operation answers `token` on `responder` when it is decided.
    pub fn serial_later(self: &Arc<Self>, key: Key, op: Op, responder: &Arc<dyn Responder>, token: u64) -> Result<Unfinished> {
        let deadline = self.deadline();
        responder.defer(token);
        let to = responder.clone();
        let answer: OnDone = Box::new(move |done| to.answer(token, SerialDone::reply(done)));
        match self.start_serial(key, op, answer) {
            Ok(call) => Ok(Unfinished { call, deadline }),
            Err(e) => {
                responder.answer(token, Reply::Error(e));
                Ok(Unfinished { call: Arc::new(AlreadyAnswered), deadline })
            }
        }
    }

    /// Starts the operation; `done` is called once with its outcome (possibly
    /// before this returns). `Err` (and `done` never called) if it could not start.
    pub(crate) fn start_serial(self: &Arc<Self>, key: Key, op: Op, done: OnDone) -> Result<Arc<dyn Finish>> {
        let view = self.view();
        let (replicas, quorum) = self.serial_replicas(&view, &key)?;
        let live: Vec<NodeId> = replicas.iter().copied().filter(|&r| self.alive(r)).collect();
        let ballot = Ballot(self.clock.now());
        let seed = ballot.0.micros ^ (u64::from(self.me.0) << 48);
        let preferred = preference(&replicas, self.me, seed);
        let proposer = Proposer::new(key.clone(), op.clone(), &preferred, &live, ballot, seed).thrifty().with_quorum(quorum);
        let deadline = self.deadline();
        let state = State {
            key,
            op,
            replicas,
            preferred,
            live,
            quorum,
            proposer,
            deadline,
            earlier_round_trips: 0,
            retries: 0,
            rng: seed,
            refusal: Refusal::default(),
            highest: ballot,
            stage: Stage::Queued,
            generation: 0,
            done: Some(done),
            active: false,
            withdrawn: None,
            epoch: view.epoch(),
            view_gen: 0,
            stale: false,
        };
        let key = state.key.clone();
        let call = Arc::new_cyclic(|me| SerialCall { node: self.clone(), key, state: Mutex::new(state), me: me.clone() });
        // The deadline answers whatever is still undecided (and keeps the call
        // until then); deadlines share timer wake-ups (at most TIMER_GRAIN late).
        // The timer holds it weakly: the client's connection (or the waiting
        // caller) and the sends in flight keep it, so the node is not kept
        // alive by deadlines after its server stopped.
        let at_deadline = Arc::downgrade(&call);
        self.timer().at(coarse(deadline), move || {
            if let Some(call) = at_deadline.upgrade() {
                call.on_deadline();
            }
        });
        let first = {
            let mut keys = self.serial_keys.lock();
            match keys.get_mut(call.key()) {
                Some(waiting) => {
                    waiting.push_back(call.clone());
                    false
                }
                None => {
                    keys.insert(call.key().clone(), std::collections::VecDeque::new());
                    true
                }
            }
        };
        // The deadline may have passed already (a tiny --timeout): then the key's turn passes on.
        if first && !call.begin(false) {
            self.next_serial(call.key(), false);
        }
        Ok(call)
    }

    /// The replicas of a SERIAL operation on `key` at `view`, and its quorum;
    /// `Unavailable` if fewer than a quorum of its replicas are alive. During
    /// a movement the pending replicas take part too, and count as Cassandra
    /// counts them: the old replicas' quorum plus every pending one (so a
    /// quorum meets every majority of the old set and of the new).
    fn serial_replicas(&self, view: &super::membership::View, key: &Key) -> Result<(Vec<NodeId>, usize)> {
        let (_, quorum) = self.check_available_in(&view.ring, key, Consistency::Serial)?;
        let (replicas, pending) = view.write_targets(key);
        Ok((replicas.to_vec(), quorum + pending))
    }

    /// The SERIAL operation on `key` that was running here finished: starts
    /// the next one waiting for the key, if any (see [`Stage::Queued`]).
    fn next_serial(&self, key: &Key, delivering: bool) {
        loop {
            let next = {
                let mut keys = self.serial_keys.lock();
                let Some(waiting) = keys.get_mut(key) else { return };
                match waiting.pop_front() {
                    Some(call) => call,
                    None => {
                        keys.remove(key);
                        return;
                    }
                }
            };
            // One that timed out while it waited is skipped.
            if next.begin(delivering) {
                return;
            }
        }
    }
}

/// A reply slot's bits below this are the replica and message kind; above,
/// the generation of the replicas chosen (see `State::replica_of`).
const VIEW_GEN_SHIFT: u32 = 16;

/// How often an operation refused for a stale epoch looks whether its node caught up.
const STALE_RECHECK: Duration = Duration::from_millis(20);

/// How long a thrifty round waits for its quorum before it is sent to the
/// other live replicas too (a failure to answer widens it at once).
const WIDEN_AFTER: Duration = Duration::from_millis(10);

/// Timer wake-ups of deadlines and round checks are shared: their due times
/// are rounded up to a multiple of this.
const TIMER_GRAIN: Duration = Duration::from_millis(5);

/// `at`, rounded up to a multiple of [`TIMER_GRAIN`] since an arbitrary
/// process-wide origin, so timers due close together fire in one wake-up.
fn coarse(at: Instant) -> Instant {
    static ORIGIN: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
    let origin = *ORIGIN.get_or_init(Instant::now);
    let grain = TIMER_GRAIN.as_nanos();
    let since = at.saturating_duration_since(origin).as_nanos();
    let rounded = since.div_ceil(grain) * grain;
    origin + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

/// The replicas in the order a thrifty round prefers them: this node first
/// if it is one (its own acceptor costs no message), then the others in ring
/// order rotated by `seed`, so coordinators spread their rounds over them.
fn preference(replicas: &[NodeId], me: NodeId, seed: u64) -> Vec<NodeId> {
    let mut others: Vec<NodeId> = replicas.iter().copied().filter(|&r| r != me).collect();
    if !others.is_empty() {
        let n = others.len();
        others.rotate_left((seed % n as u64) as usize);
    }
    let mut order = Vec::with_capacity(replicas.len());
    if replicas.contains(&me) {
        order.push(me);
    }
    order.extend(others);
    order
}

impl Node {
    /// Queues Paxos commits to peers: they go out with the next message
    /// [`Executor::send`] writes to their peer, or when the repair thread next
    /// runs out of work (woken for it if it sleeps: an idle node sends them
    /// at once, a busy one in batches).
    fn commit_later(&self, commits: Vec<Outgoing>) {
        let first = {
            let mut q = self.commits.lock();
            let first = q.is_empty();
            q.extend(commits);
            self.commits_queued.store(true, Ordering::Release);
            first
        };
        if first {
            self.wake_repair_thread();
        }
    }

    /// The queued commits, taken (none, without a lock, when there are none).
    pub(crate) fn take_commits(&self) -> Vec<Outgoing> {
        if !self.commits_queued.load(Ordering::Acquire) {
            return Vec::new();
        }
        let mut q = self.commits.lock();
        self.commits_queued.store(false, Ordering::Release);
        std::mem::take(&mut *q)
    }

    /// Sends commits, each peer's with one `write`; replies are ignored (a
    /// commit that is lost is completed by the key's next proposer).
    pub(crate) fn send_commits(&self, mut commits: Vec<Outgoing>) {
        if commits.is_empty() {
            return;
        }
        commits.sort_by_key(|c| c.to);
        let deadline = self.deadline();
        let sink: Arc<dyn ReplySink> = Arc::new(IgnoreReply);
        let mut commits = commits.into_iter().peekable();
        while let Some(first) = commits.next() {
            let to = first.to;
            let mut msgs = vec![(first.msg, sink.clone(), 0)];
            while let Some(c) = commits.next_if(|c| c.to == to) {
                msgs.push((c.msg, sink.clone(), 0));
            }
            if to == self.me {
                for (msg, ..) in msgs {
                    let _ = self.serve_peer(msg);
                }
            } else {
                self.peers.send_many(to, msgs, deadline);
            }
        }
    }
}

/// A deferred reply that was answered before anything was sent.
struct AlreadyAnswered;

impl Finish for AlreadyAnswered {
    fn finish(&self) {}
    fn start(&self) {}
}

impl Finish for SerialCall {
    /// Nothing to finish: the commits after the answer need no waiting.
    fn finish(&self) {}
    /// Everything was sent when the operation started.
    fn start(&self) {}
}

impl ReplySink for SerialCall {
    fn deliver(&self, slot: usize, result: PeerResult) {
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            st.on_result(&self.node, slot, result, &mut fx);
            st.watch(&mut fx);
        }
        if let Some(me) = self.me.upgrade() {
            me.perform(fx, true);
        }
    }
}

impl SerialCall {
    /// Carries out what the state asked for. `delivering`: on a thread that
    /// delivers replies, which hands its sends to [`Executor::send_later`].
    fn perform(self: &Arc<Self>, fx: Effects, delivering: bool) {
        let node = &self.node;
        if let Some((at, wake)) = fx.timer {
            let me = self.clone();
            node.timer().at(at, move || me.wake(wake));
        }
        if let Some(round) = fx.widen {
            let me = self.me.clone();
            node.timer().at(coarse(Instant::now() + WIDEN_AFTER), move || {
                if let Some(me) = me.upgrade() {
                    me.wake(Wake::Widen(round));
                }
            });
        }
        if !fx.sends.is_empty() {
            let deadline = self.state.lock().deadline;
            let sink: Arc<dyn ReplySink> = self.clone();
            if delivering {
                node.send_later(sink, fx.sends, deadline);
            } else {
                Executor::send(&**node, sink, fx.sends, deadline);
            }
        }
        let (local, remote): (Vec<Outgoing>, Vec<Outgoing>) = fx.background.into_iter().partition(|o| o.to == node.me);
        for commit in local {
            // Before the answer, so a read at ONE here sees the value; nobody
            // waits for its durability (a commit only makes a chosen value a cell).
            let _ = node.serve_peer(commit.msg);
        }
        if !remote.is_empty() {
            // Queued before the next operation on the key begins, so they ride with its prepare.
            node.commit_later(remote);
        }
        if let Some((done, result)) = fx.finished {
            done(result);
        }
        if let Some(key) = fx.next {
            node.next_serial(&key, delivering);
        }
    }

    fn key(&self) -> &Key {
        &self.key
    }

    /// Starts the operation: a fresh ballot, the first round's sends. False
    /// (nothing done) if it already finished (its deadline passed while it waited).
    fn begin(self: &Arc<Self>, delivering: bool) -> bool {
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            if !matches!(st.stage, Stage::Queued) {
                return false;
            }
            st.begin(&self.node, &mut fx);
            st.watch(&mut fx);
        }
        self.perform(fx, delivering);
        true
    }

    /// On the timer thread. Its sends go through the repair thread like a
    /// delivering thread's, so the timer never writes to a peer or serves
    /// this node's acceptor (which waits for the log) while deadlines wait.
    fn wake(self: Arc<Self>, wake: Wake) {
        if let Wake::StartOver(_) = wake {
            self.make_withdrawal_durable();
        }
        let mut fx = Effects::default();
        {
            let mut st = self.state.lock();
            st.on_wake(&self.node, wake, &mut fx);
            st.watch(&mut fx);
        }
        self.perform(fx, true);
    }

    fn on_deadline(self: Arc<Self>) {
        self.make_withdrawal_durable();
        let mut fx = Effects::default();
        self.state.lock().on_deadline(&self.node, &mut fx);
        self.perform(fx, true);
    }

    /// While backing off after withdrawing its own acceptance: waits for the
    /// withdrawal's record to be durable (outside the state's lock, so
    /// replies are not held up), then marks it so (position 0), or leaves it
    /// pending if the log failed (the operation then ends unknown).
    fn make_withdrawal_durable(&self) {
        let pos = {
            let st = self.state.lock();
            match st.stage {
                Stage::BackingOff(_) => st.withdrawn.filter(|&p| p > 0),
                _ => None,
            }
        };
        if let Some(pos) = pos
            && self.node.store.commit(pos).is_ok()
        {
            let mut st = self.state.lock();
            if st.withdrawn == Some(pos) {
                st.withdrawn = Some(0);
            }
        }
    }
}

impl State {
    /// A reply (or a failure to get one) for `slot`.
    fn on_result(&mut self, node: &Node, slot: usize, result: PeerResult, fx: &mut Effects) {
        let from = self.replica_of(slot);
        if from.is_none() && slot >> VIEW_GEN_SHIFT != self.view_gen {
            // To replicas chosen at an earlier epoch: only the ballots it shows count.
            if let Ok(PeerResponse::Paxos(reply)) = &result {
                self.learn(reply);
            }
            return;
        }
        if matches!(result, Err(Error::StaleEpoch(_))) && matches!(self.stage, Stage::Running | Stage::Settling(_)) {
            self.on_stale(node, from, fx);
            match self.stage {
                Stage::Settling(_) => self.settle(node, fx),
                // Proposing already: the round goes to the other live replicas now.
                Stage::Running => {
                    if from.is_some_and(|(f, _)| self.proposer.sent_to().contains(&f)) {
                        let sends = self.proposer.widen();
                        fx.sends.extend(sends.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)));
                    }
                    self.settle_if_stale_refused(node, fx);
                }
                _ => {}
            }
            return;
        }
        match (&self.stage, from, result) {
            (Stage::Done | Stage::Queued, ..) => {}
            (Stage::Running, Some((from, propose)), Ok(PeerResponse::Paxos(reply))) => {
                if let Some(own) = self.proposer.proposed().filter(|_| propose) {
                    self.refusal.note(from, &reply, own);
                }
                let actions = self.proposer.on_reply(from, reply);
                self.act(node, actions, fx);
                self.settle_if_stale_refused(node, fx);
            }
            // An error, or an answer that is not Paxos: no reply from that peer
            // (and, if it answers a proposal once the own one is out, maybe an
            // acceptance unheard; a failed prepare or commit says nothing of it).
            (Stage::Running, at, _) => {
                self.refusal.unsure |= self.proposer.proposed().is_some() && at.is_none_or(|(_, propose)| propose);
                // A replica of the round failed to answer: ask the others now.
                if at.is_some_and(|(from, _)| self.proposer.sent_to().contains(&from)) {
                    let sends = self.proposer.widen();
                    fx.sends.extend(sends.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)));
                }
            }
            (Stage::Settling(_), Some((from, propose)), Ok(PeerResponse::Paxos(reply))) => {
                self.learn(&reply);
                if let Some(own) = self.proposer.proposed().filter(|_| propose) {
                    self.refusal.note(from, &reply, own);
                }
                self.settle(node, fx);
            }
            (Stage::Settling(_), at, _) => {
                self.refusal.unsure |= at.is_none_or(|(_, propose)| propose);
                self.settle(node, fx);
            }
            (Stage::BackingOff(_), Some(_), Ok(PeerResponse::Paxos(reply))) => self.learn(&reply),
            (Stage::BackingOff(_), ..) => {}
        }
    }

    /// Carries out the proposer's actions: sends before its answer go now,
    /// sends after it (commits) in the background.
    fn act(&mut self, node: &Node, actions: Vec<Action>, fx: &mut Effects) {
        let mut answer = None;
        for a in actions {
            match a {
                Action::Send { to, msg } => {
                    let out = if answer.is_some() { &mut fx.background } else { &mut fx.sends };
                    out.extend(self.outgoing(to, msg));
                }
                Action::Answer(outcome) => answer = Some(outcome),
                Action::RetryAfter(d) => {
                    self.generation += 1;
                    fx.timer = Some(((Instant::now() + d).min(self.deadline), Wake::Retry(self.generation)));
                }
            }
        }
        match answer {
            Some(Err(PaxosError::Unknown(m))) if Instant::now() < self.deadline && self.proposer.proposed().is_some() => {
                self.stage = Stage::Settling(m);
                self.settle(node, fx);
            }
            Some(outcome) => self.finish(node, outcome, fx),
            None => {}
        }
    }

    /// While settling: once every replica the proposal went to answered, a
    /// back-off and a fresh proposer if none holds it (or only this node,
    /// which withdraws it); otherwise, or if one failed to answer, unknown.
    fn settle(&mut self, node: &Node, fx: &mut Effects) {
        let Stage::Settling(m) = &self.stage else { return };
        let unknown = |st: &mut Self, fx: &mut Effects| {
            let Stage::Settling(m) = &st.stage else { return };
            let m = m.clone();
            st.finish(node, Err(PaxosError::Unknown(m)), fx);
        };
        if self.refusal.unsure || self.refusal.accepted.iter().any(|&a| a != node.me) {
            return unknown(self, fx);
        }
        if !self.refusal.all_answered(self.proposer.proposal_sent_to()) {
            return;
        }
        let m = m.clone();
        self.withdrawn = None;
        if !self.refusal.accepted.is_empty() {
            // Only this node's own acceptor holds it.
            let own = self.proposer.proposed().unwrap_or(Ballot::ZERO);
            match node.withdraw_own(&self.key, own) {
                Some(pos) => self.withdrawn = Some(pos),
                None => return unknown(self, fx),
            }
        }
        self.retries += 1;
        let bound = (2_000u64 << self.retries.min(7)).min(200_000);
        let wait = Duration::from_micros(crate::rand::splitmix64(&mut self.rng) % (bound + 1));
        self.stage = Stage::BackingOff(m);
        self.generation += 1;
        fx.timer = Some(((Instant::now() + wait).min(self.deadline), Wake::StartOver(self.generation)));
    }

    fn on_wake(&mut self, node: &Node, wake: Wake, fx: &mut Effects) {
        let now = Instant::now();
        match (wake, &self.stage) {
            (Wake::Retry(g), Stage::Running) if g == self.generation && now < self.deadline => {
                // The back-off is over: a fresh ballot above everything seen.
                let ballot = self.next_ballot(node);
                let sends = self.proposer.restart(ballot);
                fx.sends.extend(sends.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)));
            }
            (Wake::StartOver(g), Stage::BackingOff(m)) if g == self.generation => {
                let m = m.clone();
                if now >= self.deadline {
                    let e = self.refused_for_good(m);
                    return self.finish(node, Err(e), fx);
                }
                if !self.restart_at_newer_epoch(node) {
                    // Refused for a stale epoch and not caught up yet: look again shortly.
                    self.generation += 1;
                    fx.timer = Some(((now + STALE_RECHECK).min(self.deadline), Wake::StartOver(self.generation)));
                    return;
                }
                // A withdrawal must be durable before anything new is proposed
                // (`make_withdrawal_durable` waited for it; still pending: the log failed).
                if self.withdrawn.take().is_some_and(|pos| pos > 0) {
                    return self.finish(node, Err(PaxosError::Unknown(m)), fx);
                }
                let ballot = self.next_ballot(node);
                self.earlier_round_trips += self.proposer.round_trips();
                let seed = crate::rand::splitmix64(&mut self.rng);
                self.proposer = Proposer::new(self.key.clone(), self.op.clone(), &self.preferred, &self.live, ballot, seed)
                    .thrifty()
                    .with_quorum(self.quorum);
                self.refusal = Refusal::default();
                self.stage = Stage::Running;
                let sends = self.proposer.start();
                if sends.is_empty() {
                    // Refused before sending (fewer than the quorum alive, the
                    // replicas chosen again at a newer epoch): answered now.
                    return self.finish_unsent(node, fx);
                }
                fx.sends.extend(sends.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)));
            }
            (Wake::Widen(round), Stage::Running) if round == self.proposer.round_trips() => {
                let sends = self.proposer.widen();
                fx.sends.extend(sends.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)));
            }
            _ => {}
        }
    }

    /// After sending a thrifty round: check on it after [`WIDEN_AFTER`].
    fn watch(&self, fx: &mut Effects) {
        if matches!(self.stage, Stage::Running) && !fx.sends.is_empty() && self.proposer.can_widen() {
            fx.widen = Some(self.proposer.round_trips());
        }
    }

    /// Leaves [`Stage::Queued`]: a proposer with a fresh ballot over the
    /// replicas alive now, and its first round.
    fn begin(&mut self, node: &Node, fx: &mut Effects) {
        self.active = true;
        self.stage = Stage::Running;
        self.live = self.replicas.iter().copied().filter(|&r| node.alive(r)).collect();
        let ballot = self.next_ballot(node);
        let seed = crate::rand::splitmix64(&mut self.rng);
        self.proposer =
            Proposer::new(self.key.clone(), self.op.clone(), &self.preferred, &self.live, ballot, seed).thrifty().with_quorum(self.quorum);
        let first = self.proposer.start();
        if first.is_empty() {
            // Refused before sending: fewer than a quorum alive.
            return self.finish_unsent(node, fx);
        }
        fx.sends.extend(first.into_iter().filter_map(|(to, msg)| self.outgoing(to, msg)));
    }

    fn on_deadline(&mut self, node: &Node, fx: &mut Effects) {
        match &self.stage {
            Stage::Done => {}
            Stage::Queued => {
                let m = format!(
                    "the SERIAL {} of key {} waited until its deadline behind earlier SERIAL operations on the key at this \
                     coordinator; nothing was proposed, so it was not applied",
                    self.op.name(),
                    self.key
                );
                self.finish(node, Err(PaxosError::Timeout(m)), fx);
            }
            Stage::Running => {
                let actions = self.proposer.on_timeout();
                self.act(node, actions, fx);
            }
            Stage::Settling(m) => {
                let m = m.clone();
                self.finish(node, Err(PaxosError::Unknown(m)), fx);
            }
            Stage::BackingOff(m) => {
                let m = m.clone();
                let e = self.refused_for_good(m);
                self.finish(node, Err(e), fx);
            }
        }
    }

    /// The deadline passed while backing off after a proposal nobody holds:
    /// not applied (a `Timeout`) if this node's withdrawal of it (if any) is
    /// durable (see `make_withdrawal_durable`); otherwise unknown (`m`).
    fn refused_for_good(&mut self, m: String) -> PaxosError {
        if self.withdrawn.take().is_none_or(|pos| pos == 0) {
            PaxosError::Timeout(format!(
                "the SERIAL {} of key {} was refused by every replica (so it was not applied) and timed out before it could \
                 start over",
                self.op.name(),
                self.key
            ))
        } else {
            PaxosError::Unknown(m)
        }
    }

    /// Finishes with the outcome of a proposer that sent nothing (fewer than a quorum alive).
    fn finish_unsent(&mut self, node: &Node, fx: &mut Effects) {
        let outcome = self.proposer.outcome().cloned().unwrap_or_else(|| {
            Err(PaxosError::Unavailable(format!("the SERIAL {} of key {} had nothing to send", self.op.name(), self.key)))
        });
        self.finish(node, outcome, fx)
    }

    /// A ballot above everything this operation saw.
    fn next_ballot(&self, node: &Node) -> Ballot {
        let _ = node.clock.observe(self.highest().0, node.cfg.max_clock_offset);
        Ballot(node.clock.now())
    }

    fn finish(&mut self, node: &Node, outcome: std::result::Result<Outcome, PaxosError>, fx: &mut Effects) {
        self.stage = Stage::Done;
        if std::mem::take(&mut self.active) {
            fx.next = Some(self.key.clone());
        }
        let _ = node.clock.observe(self.highest().0, node.cfg.max_clock_offset);
        let result = outcome.map_err(PaxosError::into_error).map(|outcome| SerialDone {
            outcome,
            ballot: self.proposer.proposed(),
            quorum: self.quorum,
            round_trips: self.earlier_round_trips + self.proposer.round_trips(),
        });
        if let Some(done) = self.done.take() {
            fx.finished = Some((done, result));
        }
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

    fn outgoing(&self, to: NodeId, msg: Request) -> Option<Outgoing> {
        let replica = self.replicas.iter().position(|&r| r == to)?;
        let kind = match msg {
            Request::Prepare { .. } => 0,
            Request::Propose { .. } => 1,
            Request::Commit { .. } => 2,
        };
        let slot = (self.view_gen << VIEW_GEN_SHIFT) + replica + kind * self.replicas.len();
        Some(Outgoing { slot, to, msg: PeerRequest::Paxos(msg, self.epoch), route: Route::Direct })
    }

    /// The replica a reply's slot stands for, and whether it answers a propose
    /// (slots are replica index plus replica count times the message kind,
    /// plus the replicas' generation shifted by [`VIEW_GEN_SHIFT`]); `None`
    /// for a reply to replicas chosen earlier.
    fn replica_of(&self, slot: usize) -> Option<(NodeId, bool)> {
        if slot >> VIEW_GEN_SHIFT != self.view_gen {
            return None;
        }
        let slot = slot & ((1 << VIEW_GEN_SHIFT) - 1);
        let n = self.replicas.len();
        let from = *self.replicas.get(slot % n.max(1))?;
        Some((from, slot / n.max(1) == 1))
    }

    /// A replica refused this operation's prepare or propose as routed at an
    /// older epoch than it holds: nothing was promised or accepted there.
    /// Before this operation proposed anything, its attempt stops at once and
    /// starts over (as after a wholly refused proposal) once this node has
    /// caught up, with the replicas and quorum of the newer epoch; after, the
    /// refusal counts as one, and the proposal's other answers decide as
    /// before. The node's membership thread catches up meanwhile.
    fn on_stale(&mut self, node: &Node, from: Option<(NodeId, bool)>, fx: &mut Effects) {
        self.stale = true;
        node.saw_epoch(self.epoch + 1);
        if self.proposer.proposed().is_none() {
            let m = format!(
                "the SERIAL {} of key {} was routed at cluster epoch {} and replicas hold a newer one",
                self.op.name(),
                self.key,
                self.epoch
            );
            self.stage = Stage::BackingOff(m);
            self.generation += 1;
            fx.timer = Some(((Instant::now() + STALE_RECHECK).min(self.deadline), Wake::StartOver(self.generation)));
        } else if let Some((from, true)) = from
            && !self.refusal.refused.contains(&from)
        {
            // A refused propose: that acceptor does not hold the proposal (a
            // refused prepare or commit says nothing of it).
            self.refusal.refused.push(from);
        }
    }

    /// After a stale refusal of the proposal: the proposer does not count it,
    /// so once every replica the proposal went to has answered it and there
    /// is no one left to widen to, the proposal's answers decide here (as
    /// when the proposer gives up on a refused proposal): start over if
    /// nobody else holds it, else unknown.
    fn settle_if_stale_refused(&mut self, node: &Node, fx: &mut Effects) {
        if !self.stale || !matches!(self.stage, Stage::Running) || self.proposer.proposed().is_none() || !fx.sends.is_empty() {
            return;
        }
        if !self.refusal.all_answered(self.proposer.proposal_sent_to()) || self.proposer.can_widen() {
            return;
        }
        let m = format!(
            "the SERIAL {} of key {} was refused by replicas at a newer cluster epoch than {} after it was proposed; it may or \
             may not have been applied",
            self.op.name(),
            self.key,
            self.epoch
        );
        self.stage = Stage::Settling(m);
        self.settle(node, fx);
    }

    /// Before a fresh proposer: if this node now holds a newer epoch than the
    /// one the replicas were chosen at, chooses them again at it (the
    /// replicas, the live ones, the order and the quorum). False if a stale
    /// refusal was heard and this node has not caught up yet.
    fn restart_at_newer_epoch(&mut self, node: &Node) -> bool {
        let view = node.view();
        if view.epoch() <= self.epoch {
            return !self.stale;
        }
        let Ok((replicas, quorum)) = node.serial_replicas(&view, &self.key) else { return !self.stale };
        self.preferred = preference(&replicas, node.me, self.rng);
        self.live = replicas.iter().copied().filter(|&r| node.alive(r)).collect();
        self.replicas = replicas;
        self.quorum = quorum;
        self.epoch = view.epoch();
        self.view_gen += 1;
        self.stale = false;
        true
    }
}
