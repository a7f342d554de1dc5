//! Coordinating `get`, `put` and `del`, and the one loop that carries out
//! every call's commands.

use std::sync::Arc;
use std::time::{Duration, Instant};

use log::debug;

use crate::cluster::consistency::{Consistency, Decision};
use crate::cluster::key::Key;
use crate::coordinator::call::{Call, Machine};
use crate::coordinator::command::{Command, Executor, Outgoing, ReplyTo, Responder, Route};
use crate::coordinator::peers::{IgnoreReply, ReplySink};
use crate::coordinator::read::{ReadMachine, ReadRoute};
use crate::coordinator::readbatch::QueuedRead;
use crate::coordinator::write::WriteMachine;
use crate::error::Result;
use crate::message::{PeerRequest, PeerResponse, Reply};
use crate::node::{Answered, Deferred, Node, RepairJob, Unfinished};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// How many times a write refused for a stale epoch is sent again at a newer one.
const MAX_REROUTES: u8 = 2;

/// Where a deferred reply may go: the client's connection and the request's token.
pub type Later<'a> = Option<(&'a Arc<dyn Responder>, u64)>;

/// A started call: the caller waits on it, or its answer was deferred.
enum Started<M> {
    Waiting(Arc<Call<M>>),
    Deferred(Unfinished),
}

impl Node {
    fn executor(self: &Arc<Self>) -> Arc<dyn Executor> {
        self.clone()
    }

    /// Starts a call of `machine` due by `deadline`. With `later`, the
    /// connection's reply is deferred and the machine (told where by
    /// `reply_to`) answers it; otherwise the caller waits on the call.
    fn start<M: Machine + 'static>(
        self: &Arc<Self>,
        mut machine: M,
        later: Later<'_>,
        deadline: Instant,
        reply_to: fn(M, ReplyTo) -> M,
    ) -> Started<M> {
        let deferred = later.is_some();
        if let Some((responder, token)) = later {
            responder.defer(token);
            machine = reply_to(machine, ReplyTo { responder: responder.clone(), token, deadline });
        }
        let call = Call::new(machine, self.executor(), self.budget.clone(), deadline);
        call.start();
        if deferred { Started::Deferred(Unfinished { call, deadline }) } else { Started::Waiting(call) }
    }

    /// Writes `value` (`None`: delete) to `key` at `level`; returns the write's timestamp and acks.
    /// With `later` (a client connection and the request's token), the
    /// coordinator does not wait: the call answers the client when it
    /// settles, and this returns [`Answered::Later`].
    ///
    /// A replica holding a newer cluster metadata epoch than this node refuses
    /// the write; the node then catches up and sends it again to the newer
    /// epoch's replicas (see [`crate::coordinator::write`]).
    pub fn write(
        self: &Arc<Self>,
        key: Key,
        value: Option<Vec<u8>>,
        level: Consistency,
        later: Later<'_>,
    ) -> Result<Answered<(Timestamp, usize)>> {
        let mut version = Version { ts: self.clock.now(), value: value.map(Vec::into_boxed_slice) };
        let deadline = self.deadline();
        let mut key = key;
        let mut attempts = MAX_REROUTES;
        loop {
            let machine = self.write_machine(key, version, level, attempts)?;
            let call = match self.start(machine, later, deadline, WriteMachine::reply_to) {
                Started::Deferred(u) => return Ok(Answered::Later(u)),
                Started::Waiting(call) => call,
            };
            let m = call.wait();
            let result = m.result(false);
            // Kept from its level by replicas at a newer epoch (one that reached
            // it anyway is rerouted in the background by the machine).
            let kept = m.stale() && m.tally().decision() != Decision::Reached;
            let again = (kept && attempts > 0 && Instant::now() < deadline).then(|| (m.key().clone(), m.version().clone(), m.epoch()));
            drop(m);
            call.finish();
            let Some((k, v, epoch)) = again else { return result.map(Answered::Now) };
            // A replica holds a newer epoch: catch up, then write again at it
            // (unless this node cannot learn it: the same refusal again).
            if !self.caught_up_past(epoch, deadline) {
                return result.map(Answered::Now);
            }
            (key, version, attempts) = (k, v, attempts - 1);
        }
    }

    /// Whether this node holds an epoch past `epoch`, catching up from the
    /// voters (by `deadline`) if it does not yet.
    fn caught_up_past(self: &Arc<Self>, epoch: u64, deadline: Instant) -> bool {
        if self.epoch() <= epoch {
            self.catch_up_by(deadline);
        }
        self.epoch() > epoch
    }

    /// A write of `version` to `key` at `level`, to the replicas of the view
    /// this node holds now (the pending ones of a movement included), routed
    /// at its epoch; `Unavailable` if too few of them are alive.
    fn write_machine(self: &Arc<Self>, key: Key, version: Version, level: Consistency, attempts: u8) -> Result<WriteMachine> {
        let view = self.view();
        let (_, need) = self.check_available_in(&view.ring, &key, level)?;
        let (targets, pending) = view.write_targets(&key);
        let node = Arc::downgrade(self);
        let restamp = move |newer| {
            let node = node.upgrade()?;
            node.clock.observe(newer, node.cfg.max_clock_offset).ok()?;
            Some(node.clock.now())
        };
        let hint = self.cfg.mode.hinted_handoff();
        Ok(WriteMachine::new(key, version, targets, view.ring.clone(), need + pending, hint).restamp_with(Arc::new(restamp)).routed_at(
            view.epoch(),
            level,
            attempts,
        ))
    }

    /// Carries out a [`Command::Reroute`] (on the repair thread): catches up
    /// on the cluster metadata unless this node is already past `epoch`, then
    /// sends the write to the replicas of the newest epoch, answering `to`.
    pub(crate) fn reroute(self: &Arc<Self>, to: Option<ReplyTo>, key: Key, version: Version, level: Consistency, epoch: u64, attempts: u8) {
        let deadline = to.as_ref().map_or_else(|| self.deadline(), |t| t.deadline);
        let refused = |why: &str| {
            crate::error::Error::Failure(format!(
                "replicas of key {key} hold a newer cluster epoch than {epoch}, {why}; the write may or may not have been applied"
            ))
        };
        if Instant::now() >= deadline {
            if let Some(to) = to {
                to.responder.answer(to.token, Reply::Error(refused("and the request's deadline passed before it could be sent again")));
            }
            return;
        }
        if !self.caught_up_past(epoch, deadline) {
            if let Some(to) = to {
                to.responder.answer(to.token, Reply::Error(refused(&format!("which {} could not learn", self.cfg.name))));
            }
            return;
        }
        match self.write_machine(key, version, level, attempts) {
            Ok(machine) => {
                let machine = match to {
                    Some(to) => machine.reply_to(to),
                    None => machine,
                };
                let call = Call::new(machine, self.executor(), self.budget.clone(), deadline);
                call.start();
                call.finish();
            }
            Err(e) => {
                if let Some(to) = to {
                    to.responder.answer(to.token, Reply::Error(e));
                }
            }
        }
    }

    /// Whether this ONE read answered from the local copy also asks the other
    /// replicas, to repair them (a draw at `--read-repair-chance`).
    fn draw_read_repair(&self) -> bool {
        let chance = self.cfg.read_repair_chance;
        if chance >= 1.0 {
            return true;
        }
        let mut state = self.repair_draws.fetch_add(0x9E37_79B9_7F4A_7C15, std::sync::atomic::Ordering::Relaxed);
        let draw = crate::rand::splitmix64(&mut state);
        (draw >> 11) as f64 / ((1u64 << 53) as f64) < chance
    }

    /// Reads `key` at `level`; returns the newest version among the replies (tombstones included).
    /// At ONE on a replica of the key, the local copy answers and the other
    /// replicas are asked afterwards: the returned [`Deferred`] must be run once
    /// the reply is sent. With `later` (a client connection and the request's
    /// token), other reads are answered by the call when it settles ([`Answered::Later`]).
    pub fn read(self: &Arc<Self>, key: Key, level: Consistency, later: Later<'_>) -> Result<Answered<(Option<Version>, Option<Deferred>)>> {
        let ring = self.ring();
        let (replicas, need) = self.check_available(&key, level)?;
        let local_slot = replicas.iter().position(|&t| t == self.me);
        let repair = self.cfg.mode.read_repair() && (level != Consistency::One || local_slot.is_none() || self.draw_read_repair());
        let blocking = level != Consistency::One;
        let deadline = self.deadline();
        if let (Consistency::One, Some(_), false) = (level, local_slot, repair) {
            // Without read repair the other replicas' versions would change nothing.
            let version = self.store.get(key.as_bytes());
            if let Some(v) = &version {
                let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
            }
            return Ok(Answered::Now((version, None)));
        }
        let targets = ring.replica_set(key.as_bytes());
        let machine = ReadMachine::new(key, targets, ring.clone(), need, repair, blocking);
        if let (Consistency::One, Some(slot)) = (level, local_slot) {
            let version = self.store.get(machine.key().as_bytes());
            if let Some(v) = &version {
                let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
            }
            let call = Call::new(machine.route(ReadRoute::AllBatched), self.executor(), self.budget.clone(), deadline);
            call.deliver(slot, Ok(PeerResponse::Read(version.clone())));
            call.with(|m, out| m.answer(out));
            return Ok(Answered::Now((version, Some(Deferred(call)))));
        }
        // At ONE (this node holds no copy here) one live replica is asked
        // directly and the others through the read batcher: every replica is
        // still asked and any reply answers the client, but under load the
        // other reads ride in batches instead of costing a message each. If
        // the one asked directly (the first live one in ring order) is slow,
        // the batched replies answer: it costs the batcher's gather window,
        // not a timeout.
        let machine = match replicas.iter().position(|&t| self.alive(t)) {
            Some(direct) if level == Consistency::One => machine.route(ReadRoute::OneDirect(direct)),
            _ => machine,
        };
        let call = match self.start(machine, later, deadline, ReadMachine::reply_to) {
            Started::Deferred(u) => return Ok(Answered::Later(u)),
            Started::Waiting(call) => call,
        };
        // The answer is marked under the lock that read the result: a reply
        // arriving after it starts no blocking repair nobody would wait for.
        let result = call.wait_then(|m, out| {
            let result = m.result(false);
            m.answer(out);
            result
        });
        call.finish();
        let newest = result?;
        if let Some(newest) = &newest {
            // A later write through this coordinator must be stamped after what it read.
            let _ = self.clock.observe(newest.ts, self.cfg.max_clock_offset);
        }
        Ok(Answered::Now((newest, None)))
    }
}

impl Executor for Node {
    fn execute(&self, command: Command) {
        match command {
            Command::Hint { target, key, version } => {
                let down_for = if target == self.me { Duration::ZERO } else { self.peers.down_for(target) };
                if down_for > self.cfg.hint_window {
                    debug!("not hinting key {key} for {}: down for {down_for:?}, past the hint window", self.ring().name(target));
                    return;
                }
                if self.hints.add(target, &key, version) == crate::storage::hints::Added::Stored {
                    // Hints are rare; write each one out at once so a crash right after keeps it.
                    if let Some(wal) = &self.wal {
                        wal.flush();
                    }
                }
            }
            Command::Repair { target, key, version } => {
                let _ = self.repair_tx.send(RepairJob::Repair { target, key, version });
            }
            Command::Reroute { to, key, version, level, epoch, attempts } => {
                // Catching up waits on the network: not on the thread delivering a
                // reply. One a client waits for goes ahead of the background work.
                let queue = if to.is_some() { &self.urgent_tx } else { &self.repair_tx };
                if let Err(crossbeam_channel::SendError(RepairJob::Reroute { to: Some(to), .. })) =
                    queue.send(RepairJob::Reroute { to, key, version, level, epoch, attempts })
                {
                    to.responder.answer(to.token, Reply::Error(crate::error::Error::Failure(format!("{} is stopping", self.cfg.name))));
                }
            }
            Command::Answer { to, reply } => {
                if let Reply::Read(Some(v)) = &reply {
                    // A later write through this coordinator must be stamped after what it read.
                    let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
                }
                to.responder.answer(to.token, reply);
            }
            Command::Send(s) => {
                debug_assert!(false, "a call executes its own sends: {s:?}");
                self.send(Arc::new(IgnoreReply), vec![s], self.deadline());
            }
        }
    }

    fn send_later(&self, sink: Arc<dyn ReplySink>, mut sends: Vec<Outgoing>, deadline: Instant) {
        if sends.iter().any(|s| matches!(s.route, Route::After(_))) {
            let (paused, now): (Vec<Outgoing>, Vec<Outgoing>) = sends.into_iter().partition(|s| matches!(s.route, Route::After(_)));
            self.send_paused(sink.clone(), paused, deadline);
            if now.is_empty() {
                return;
            }
            sends = now;
        }
        if let Err(crossbeam_channel::SendError(RepairJob::Send { sink, sends, .. })) =
            self.urgent_tx.send(RepairJob::Send { sink, sends, deadline })
        {
            // The repair thread is gone (the node is stopping): the call hears so at once.
            for s in sends {
                sink.deliver(s.slot, Err(crate::error::Error::Failure(format!("{} is stopping", self.cfg.name))));
            }
        }
    }

    fn send(&self, sink: Arc<dyn ReplySink>, mut sends: Vec<Outgoing>, deadline: Instant) {
        if let Some(point) = self.cfg.txn_crash
            && sends.iter().any(|s| point.at(&s.msg))
        {
            log::error!("{}: --txn-crash-before {point:?}: dying as a transaction's coordinator", self.cfg.name);
            std::process::abort();
        }
        if let Some(point) = self.cfg.txn_pause
            && sends.iter().any(|s| point.at(&s.msg))
        {
            pause_once(&self.cfg.name, point);
        }
        if sends.iter().any(|s| matches!(s.route, Route::After(_))) {
            let (paused, now): (Vec<Outgoing>, Vec<Outgoing>) = sends.into_iter().partition(|s| matches!(s.route, Route::After(_)));
            sends = now;
            self.send_paused(sink.clone(), paused, deadline);
        }
        // A write is sent to a node at most once in a call. A write to its own
        // store is applied before anything is sent, so it is visible here by
        // the time any replica's ack can answer the client, and made durable
        // after the sends, overlapping the peers' round trip.
        let (mine, others): (Vec<Outgoing>, Vec<Outgoing>) = sends.into_iter().partition(|s| s.to == self.me);
        sends = others;
        let local: Vec<_> = mine
            .into_iter()
            .map(|s| match s.msg {
                PeerRequest::Write { key, version, epoch } => {
                    // Checked like a peer's write, under the view's lock (see `serve_peer`).
                    let view = self.view.read();
                    if let Err(e) = self.check_epoch(&key, epoch, view.epoch()) {
                        return (s.slot, Ok((key, version.ts, Err(e))));
                    }
                    let ts = version.ts;
                    let applied = self.store.apply(&key, version);
                    drop(view);
                    (s.slot, Ok((key, ts, applied)))
                }
                msg => (s.slot, Err(msg)),
            })
            .collect();
        // Paxos commits waiting to ride along go first, in the same write.
        let mut commits = self.take_commits();
        for s in sends {
            match (s.route, s.msg) {
                (Route::Batched, PeerRequest::Read { key }) => {
                    self.read_batcher.push(s.to, QueuedRead { sink: sink.clone(), slot: s.slot, key, deadline });
                }
                (_, msg) if commits.iter().any(|c| c.to == s.to) => {
                    let ignore: Arc<dyn ReplySink> = Arc::new(IgnoreReply);
                    let mut batch: Vec<_> = commits.extract_if(.., |c| c.to == s.to).map(|c| (c.msg, ignore.clone(), 0)).collect();
                    batch.push((msg, sink.clone(), s.slot));
                    self.peers.send_many(s.to, batch, deadline);
                }
                (_, msg) => self.peers.send(s.to, msg, sink.clone(), s.slot, deadline),
            }
        }
        if !commits.is_empty() {
            self.send_commits(commits);
        }
        for local in local {
            match local {
                (slot, Ok((key, ts, applied))) => {
                    let result = self.commit_local(&key, ts, applied).map(|a| PeerResponse::WriteAck { applied: a.changed, held: a.held });
                    sink.deliver(slot, result);
                }
                // Not a write (matched above): served as a peer would, and
                // answered once durable (a Paxos request's record).
                (slot, Err(msg)) => sink.deliver(slot, self.serve_peer_durably(msg)),
            }
        }
    }
}

impl Node {
    /// Sends `paused` (each `Route::After(d)`) once the longest pause among
    /// them has passed: the timer hands them to the repair thread, which
    /// sends them as a delivering thread's (or answers the call that they
    /// came too late). The simulated network sends them at once.
    fn send_paused(&self, sink: Arc<dyn ReplySink>, mut paused: Vec<Outgoing>, deadline: Instant) {
        let pause = paused.iter().map(|s| if let Route::After(d) = s.route { d } else { Duration::ZERO }).max().unwrap_or_default();
        paused.iter_mut().for_each(|s| s.route = Route::Direct);
        // Without a timer thread (out of threads), at once rather than never.
        if !self.cfg.timed_sends || pause.is_zero() || !self.timer().running() {
            return self.send_later(sink, paused, deadline);
        }
        let tx = self.urgent_tx.clone();
        let name = self.cfg.name.clone();
        self.timer().at(Instant::now() + pause, move || {
            if let Err(crossbeam_channel::SendError(RepairJob::Send { sink, sends, .. })) =
                tx.send(RepairJob::Send { sink, sends: paused, deadline })
            {
                for s in sends {
                    sink.deliver(s.slot, Err(crate::error::Error::Failure(format!("{name} is stopping"))));
                }
            }
        });
    }
}

/// The `--txn-pause-before` hook: the first time, stops this whole process
/// with SIGSTOP (sent by `kill`, as the nemesis would) and carries on once
/// something sends SIGCONT. Later sends pass.
fn pause_once(name: &str, point: crate::config::TxnCrashPoint) {
    static PAUSED: std::sync::atomic::AtomicBool = std::sync::atomic::AtomicBool::new(false);
    if PAUSED.swap(true, std::sync::atomic::Ordering::SeqCst) {
        return;
    }
    log::error!("{name}: --txn-pause-before {point:?}: stopping as a transaction's coordinator");
    let pid = std::process::id().to_string();
    // `kill` (procps), else the shell's builtin.
    let stopped = std::process::Command::new("kill")
        .args(["-STOP", &pid])
        .status()
        .or_else(|_| std::process::Command::new("sh").args(["-c", &format!("kill -STOP {pid}")]).status());
    // kill(2) queued the SIGSTOP before `kill` exited, but the stop lands
    // asynchronously: this thread could run on and send before it does (a
    // test saw the record's accepts go out, 1 run in 7). Wait until the
    // signal has been taken (it leaves the process's pending set as the
    // process stops), so this thread goes on only after a SIGCONT.
    for _ in 0..100_000 {
        let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
        let pending = status.lines().find_map(|l| l.strip_prefix("ShdPnd:")).and_then(|h| u64::from_str_radix(h.trim(), 16).ok());
        match pending {
            Some(set) if set & (1 << (19 - 1)) != 0 => std::thread::yield_now(), // SIGSTOP is signal 19
            _ => break,
        }
    }
    match stopped {
        Ok(_) => log::error!("{name}: --txn-pause-before {point:?}: resumed"),
        Err(e) => log::error!("{name}: --txn-pause-before: cannot run kill: {e}"),
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use crate::cluster::consistency::Consistency;
    use crate::cluster::key::Key;
    use crate::cluster::ring::{NodeId, NodeInfo, Ring};
    use crate::config::NodeConfig;
    use crate::node::test_util::NoPeers;
    use crate::node::{Answered, Node};

    fn node(chance: f64) -> Arc<Node> {
        let nodes = (0..2).map(|i| NodeInfo { name: format!("r{i}"), host: "127.0.0.1".into(), port: 1 + i, id: NodeId(i.into()) });
        let ring = Ring::new(nodes.collect(), 2, 1).unwrap();
        let mut cfg = NodeConfig::new("r0", "127.0.0.1".parse().unwrap(), 1);
        cfg.read_repair_chance = chance;
        Node::new(cfg, ring, Arc::new(NoPeers)).unwrap().0
    }

    /// `--read-repair-chance`: the share of ONE reads of a local copy that ask
    /// the other replicas afterwards (the deferred work after the answer).
    #[test]
    fn one_reads_of_a_local_copy_repair_at_the_chance_given() {
        let repairs = |chance: f64, reads: usize| {
            let n = node(chance);
            (0..reads)
                .filter(|_| match n.read(Key::byte(7), Consistency::One, None) {
                    Ok(Answered::Now((_, after))) => after.map(|a| a.run()).is_some(),
                    _ => panic!("a ONE read of a local copy answers at once"),
                })
                .count()
        };
        assert_eq!(repairs(1.0, 200), 200);
        assert_eq!(repairs(0.0, 200), 0);
        let some = repairs(0.1, 4000);
        assert!((250..=550).contains(&some), "{some} of 4000 at 0.1");
    }
}
