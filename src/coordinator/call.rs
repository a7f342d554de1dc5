//! One coordinated request as a state machine: replies in, decisions and commands out.
//!
//! A coordinator turns a client request into a *call*: it sends a message to
//! each replica of the key (a *slot* per replica) and waits. Replies reach the
//! call through [`ReplySink::deliver`] from whichever thread received them —
//! a link's reader, the maintenance thread's timeout sweep, or the coordinator
//! itself for the local replica. The machines here hold no sockets and do no
//! I/O: given a reply they update their counts and push [`Command`]s (keep a
//! hint, repair a replica) that the node executes. Tests drive them with
//! tables of replies.
//!
//! * [`WriteMachine`] — counts acks toward the level; a replica that fails or
//!   times out gets a hint (when hinted handoff is on), even if the failure
//!   arrives after the client was answered.
//! * [`ReadMachine`] — keeps every replica's version; once the client has been
//!   answered *and* every replica has replied or timed out, it commands a read
//!   repair of each replica that returned something older than the newest
//!   version seen (including replies that came after the answer).
//! * [`GatherMachine`] — waits for every slot (inspect, display).
//!
//! [`Call`] wraps a machine with a mutex and a condvar so the coordinator can
//! wait until the machine is *settled* or the deadline passes.

use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::coordinator::consistency::{Decision, QuorumTracker};
use crate::error::{Error, Result};
use crate::net::conn::ReplyTo;
use crate::net::link::{PeerResult, ReplySink};
use crate::proto::response;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// Side effects a machine asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Command {
    /// Keep a hint: `target` missed `version` of `key`.
    Hint {
        /// Node index.
        target: usize,
        /// The key.
        key: u8,
        /// The missed version.
        version: Version,
    },
    /// Send `version` of `key` to `target`, which returned something older.
    Repair {
        /// Node index.
        target: usize,
        /// The key.
        key: u8,
        /// The newest version seen.
        version: Version,
    },
    /// Answer a client whose reply was deferred (see [`crate::net::conn`]).
    Answer {
        /// Where the reply goes.
        to: ReplyTo,
        /// What it says.
        answer: Answer,
    },
}

/// The outcome of a call, for the client.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Answer {
    /// A read: the newest version among the replies (tombstones included).
    Read(Result<Option<Version>>),
    /// A write: its timestamp and the acks it got.
    Write(Result<(Timestamp, usize)>),
}

/// Carries out commands (the node: hint store, repair worker).
pub trait Executor: Send + Sync {
    /// Executes one command.
    fn execute(&self, command: Command);
}

/// A request's state machine.
pub trait Machine: Send {
    /// Records the outcome for `slot`; pushes commands to `out`. Later outcomes for a slot are ignored.
    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>);
    /// Whether the coordinator can stop waiting.
    fn settled(&self) -> bool;
    /// Whether every slot has its outcome (the call holds nothing more for anyone).
    fn complete(&self) -> bool;
    /// Bytes of values the machine holds (for the background budget).
    fn held_bytes(&self) -> usize;
}

/// Bytes that calls finishing in the background (answered, but some replicas
/// have not replied yet) may hold, node-wide.
///
/// Without a bound, a client that sends requests faster than the slowest
/// replica answers — by pipelining, or while a replica hangs before the failure
/// detector notices — would pile up calls and their values without limit. Past
/// the budget, a coordinator finishes its call (waits for the last replies or
/// the deadline) before taking the connection's next request: backpressure.
pub struct Budget {
    used: std::sync::atomic::AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget { used: std::sync::atomic::AtomicUsize::new(0), limit }
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(std::sync::atomic::Ordering::Acquire)
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        use std::sync::atomic::Ordering::*;
        self.used.fetch_update(AcqRel, Acquire, |u| (u + bytes <= self.limit).then_some(u + bytes)).is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, std::sync::atomic::Ordering::AcqRel);
    }
}

/// Fixed cost charged per background call besides its values.
const CALL_OVERHEAD: usize = 512;

/// A machine shared between the coordinator and the threads that deliver replies.
pub struct Call<M> {
    machine: Mutex<M>,
    changed: Condvar,
    exec: Arc<dyn Executor>,
    budget: Arc<Budget>,
    /// Bytes reserved from `budget` while finishing in the background (under `machine`'s lock).
    reserved: std::sync::atomic::AtomicUsize,
}

impl<M: Machine> Call<M> {
    /// Wraps `machine`; commands go to `exec`; background completion is charged to `budget`.
    pub fn new(machine: M, exec: Arc<dyn Executor>, budget: Arc<Budget>) -> Arc<Self> {
        Arc::new(Call {
            machine: Mutex::new(machine),
            changed: Condvar::new(),
            exec,
            budget,
            reserved: std::sync::atomic::AtomicUsize::new(0),
        })
    }

    /// Blocks until the machine is settled or `deadline` passes; returns it locked.
    pub fn wait(&self, deadline: Instant) -> MutexGuard<'_, M> {
        let mut m = self.machine.lock();
        while !m.settled() {
            if self.changed.wait_until(&mut m, deadline).timed_out() {
                break;
            }
        }
        m
    }

    /// After the answer: lets the call finish in the background if the budget
    /// has room for what it holds, otherwise waits until it is complete (or `deadline`).
    pub fn finish(&self, deadline: Instant) {
        use std::sync::atomic::Ordering;
        let mut m = self.machine.lock();
        if m.complete() {
            return;
        }
        let bytes = m.held_bytes() + CALL_OVERHEAD;
        if self.budget.try_reserve(bytes) {
            self.reserved.store(bytes, Ordering::Release);
            return;
        }
        while !m.complete() {
            if self.changed.wait_until(&mut m, deadline).timed_out() {
                break;
            }
        }
    }

    /// Runs `f` on the machine, then executes the commands it pushed.
    pub fn with<R>(&self, f: impl FnOnce(&mut M, &mut Vec<Command>) -> R) -> R {
        let mut out = Vec::new();
        let r = f(&mut self.machine.lock(), &mut out);
        for c in out {
            self.exec.execute(c);
        }
        r
    }
}

impl<M: Machine> ReplySink for Call<M> {
    fn deliver(&self, slot: usize, result: PeerResult) {
        let mut out = Vec::new();
        {
            let mut m = self.machine.lock();
            m.on_reply(slot, result, &mut out);
            if m.complete() {
                let reserved = self.reserved.swap(0, std::sync::atomic::Ordering::AcqRel);
                if reserved > 0 {
                    self.budget.release(reserved);
                }
            }
        }
        self.changed.notify_all();
        for c in out {
            self.exec.execute(c);
        }
    }
}

/// Short reasons for failures, for error messages (`replica2: connection refused`).
#[derive(Debug, Default, Clone)]
pub struct Failures(Vec<String>);

impl Failures {
    fn push(&mut self, who: &str, e: &Error) {
        if self.0.len() < 4 {
            self.0.push(format!("{who}: {}", e.message()));
        }
    }

    /// `; a: why; b: why`, or empty.
    pub fn suffix(&self) -> String {
        if self.0.is_empty() { String::new() } else { format!(" ({})", self.0.join("; ")) }
    }
}

/// The replies of one call so far: acks and failures counted toward the level,
/// with the reasons for the failures. Shared by the read and write machines.
pub struct Tally {
    /// Every node's name, shared by all calls; looked up only to explain a failure.
    names: Arc<[String]>,
    /// Node index per slot (the ring's shared list for the key: no copy per call).
    targets: Arc<[usize]>,
    tracker: QuorumTracker,
    failures: Failures,
}

impl Tally {
    /// A tally over `targets` (node indexes into `names`) needing `required` acks.
    pub fn new(targets: impl Into<Arc<[usize]>>, names: Arc<[String]>, required: usize) -> Self {
        let targets = targets.into();
        let n = targets.len();
        Tally { names, targets, tracker: QuorumTracker::new(required, n), failures: Failures::default() }
    }

    fn ack(&mut self) {
        self.tracker.ack();
    }

    fn fail(&mut self, slot: usize, e: &Error) {
        self.tracker.fail();
        self.failures.push(&self.names[self.targets[slot]], e);
    }

    /// The tracker's verdict.
    pub fn decision(&self) -> Decision {
        self.tracker.decision()
    }

    /// Acks so far.
    pub fn acks(&self) -> usize {
        self.tracker.acks()
    }

    /// Why replicas failed.
    pub fn failures(&self) -> &Failures {
        &self.failures
    }

    /// Acks needed.
    pub fn required(&self) -> usize {
        self.tracker.required()
    }

    fn settled(&self) -> bool {
        self.decision() != Decision::Pending
    }

    fn complete(&self) -> bool {
        self.tracker.complete()
    }
}

/// A write sent to every replica of a key.
pub struct WriteMachine {
    key: u8,
    version: Version,
    answered: SlotSet,
    tally: Tally,
    hint: bool,
    reply_to: Option<ReplyTo>,
}

impl WriteMachine {
    /// A write of `version` to `targets` (node indexes into `names`) needing `required` acks.
    pub fn new(key: u8, version: Version, targets: impl Into<Arc<[usize]>>, names: Arc<[String]>, required: usize, hint: bool) -> Self {
        let tally = Tally::new(targets, names, required);
        WriteMachine { key, version, answered: SlotSet::new(tally.targets.len()), tally, hint, reply_to: None }
    }

    /// Acks and failures so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// Answer `to` as soon as the write settles (instead of a coordinator waiting).
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self
    }

    /// The write's outcome for the client: its timestamp and acks once the level
    /// is reached; otherwise a failure, or a timeout if `timed_out` or still pending.
    pub fn result(&self, timed_out: bool) -> Result<(Timestamp, usize)> {
        let (acks, need, key) = (self.tally.acks(), self.tally.required(), self.key);
        match self.tally.decision() {
            Decision::Reached => Ok((self.version.ts, acks)),
            Decision::Impossible if !timed_out => Err(Error::Failure(format!(
                "{acks} of {need} acks for key {key}; the write may or may not have been applied{}",
                self.tally.failures().suffix()
            ))),
            _ => Err(Error::Timeout(format!("{acks} of {need} acks for key {key}; the write may or may not have been applied"))),
        }
    }
}

impl Machine for WriteMachine {
    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        if !self.answered.insert(slot) {
            return;
        }
        let err = match result {
            Ok(response::Body::ReplicaWrite(_)) => None,
            Ok(other) => Some(Error::Protocol(format!("unexpected reply to a write: {other:?}"))),
            Err(e) => Some(e),
        };
        match err {
            None => self.tally.ack(),
            Some(err) => {
                self.tally.fail(slot, &err);
                if self.hint {
                    out.push(Command::Hint { target: self.tally.targets[slot], key: self.key, version: self.version.clone() });
                }
            }
        }
        if self.tally.settled()
            && let Some(to) = self.reply_to.take()
        {
            let answer = Answer::Write(self.result(Instant::now() >= to.deadline));
            out.push(Command::Answer { to, answer });
        }
    }

    fn settled(&self) -> bool {
        self.tally.settled()
    }

    fn complete(&self) -> bool {
        self.tally.complete()
    }

    fn held_bytes(&self) -> usize {
        self.version.value.as_ref().map_or(0, String::len)
    }
}

/// Which slots are in a set: a bitmask up to 128 slots (every real RF), so a call allocates nothing for it.
#[derive(Debug, Clone)]
enum SlotSet {
    Small(u128),
    Large(Vec<bool>),
}

impl SlotSet {
    fn new(slots: usize) -> Self {
        if slots <= 128 { SlotSet::Small(0) } else { SlotSet::Large(vec![false; slots]) }
    }

    /// Adds `slot`; false if it was already in.
    fn insert(&mut self, slot: usize) -> bool {
        match self {
            SlotSet::Small(bits) => {
                let bit = 1u128 << slot;
                let new = *bits & bit == 0;
                *bits |= bit;
                new
            }
            SlotSet::Large(v) => !std::mem::replace(&mut v[slot], true),
        }
    }
}

#[derive(Debug, Clone)]
enum Reply {
    Waiting,
    Replied(Option<Version>),
    Failed,
}

/// One replica's part in a read: its reply, and the timestamp a blocking repair brought it to.
#[derive(Debug, Clone)]
struct ReadSlot {
    reply: Reply,
    repaired: Option<Timestamp>,
}

/// A read sent to every replica of a key.
pub struct ReadMachine {
    key: u8,
    slots: Vec<ReadSlot>,
    tally: Tally,
    repair: bool,
    answered: bool,
    repairs_issued: bool,
    reply_to: Option<ReplyTo>,
}

impl ReadMachine {
    /// A read of `key` from `targets` (node indexes into `names`) needing `required` replies; `repair` enables read repair.
    pub fn new(key: u8, targets: impl Into<Arc<[usize]>>, names: Arc<[String]>, required: usize, repair: bool) -> Self {
        let tally = Tally::new(targets, names, required);
        ReadMachine {
            key,
            slots: vec![ReadSlot { reply: Reply::Waiting, repaired: None }; tally.targets.len()],
            tally,
            repair,
            answered: false,
            repairs_issued: false,
            reply_to: None,
        }
    }

    /// Answer `to` as soon as the read settles (instead of a coordinator
    /// waiting). Only for reads that repair nothing before answering (ONE).
    pub fn reply_to(mut self, to: ReplyTo) -> Self {
        self.reply_to = Some(to);
        self
    }

    /// The read's outcome for the client: the newest version once enough
    /// replicas replied; otherwise a failure, or a timeout if `timed_out` or still pending.
    pub fn result(&self, timed_out: bool) -> Result<Option<Version>> {
        let (replied, need, key) = (self.tally.acks(), self.tally.required(), self.key);
        match self.tally.decision() {
            Decision::Reached => Ok(self.newest().cloned()),
            Decision::Impossible if !timed_out => {
                Err(Error::Failure(format!("{replied} of {need} replies for key {key}{}", self.tally.failures().suffix())))
            }
            _ => Err(Error::Timeout(format!("{replied} of {need} replies for key {key}"))),
        }
    }

    /// Replies and failures so far.
    pub fn tally(&self) -> &Tally {
        &self.tally
    }

    /// The newest version among the replies so far.
    pub fn newest(&self) -> Option<&Version> {
        self.slots.iter().filter_map(|s| if let Reply::Replied(Some(v)) = &s.reply { Some(v) } else { None }).max()
    }

    /// Slots that replied with something older than [`newest`](Self::newest), with their node index.
    pub fn stale_replied(&self) -> Vec<(usize, usize)> {
        let Some(newest) = self.newest() else { return Vec::new() };
        self.slots
            .iter()
            .enumerate()
            .filter(|(_, s)| matches!(&s.reply, Reply::Replied(v) if v.as_ref() < Some(newest)))
            .map(|(i, _)| (i, self.tally.targets[i]))
            .collect()
    }

    /// Records that `slot` was brought up to `ts` before the answer.
    pub fn mark_repaired(&mut self, slot: usize, ts: Timestamp) {
        self.slots[slot].repaired = Some(ts);
    }

    /// The client has been answered: from now on (or now, if every reply is in) background repairs go out.
    pub fn answer(&mut self, out: &mut Vec<Command>) {
        self.answered = true;
        self.issue_repairs(out);
    }

    fn issue_repairs(&mut self, out: &mut Vec<Command>) {
        if !self.repair || !self.answered || self.repairs_issued || !self.tally.complete() {
            return;
        }
        self.repairs_issued = true;
        let Some(newest) = self.newest().cloned() else { return };
        for (slot, target) in self.stale_replied() {
            if self.slots[slot].repaired != Some(newest.ts) {
                out.push(Command::Repair { target, key: self.key, version: newest.clone() });
            }
        }
    }
}

impl Machine for ReadMachine {
    fn on_reply(&mut self, slot: usize, result: PeerResult, out: &mut Vec<Command>) {
        if !matches!(self.slots[slot].reply, Reply::Waiting) {
            return;
        }
        match result {
            Ok(response::Body::ReplicaRead(r)) => {
                self.slots[slot].reply = Reply::Replied(r.version.map(Version::from_proto));
                self.tally.ack();
            }
            Ok(other) => {
                self.slots[slot].reply = Reply::Failed;
                self.tally.fail(slot, &Error::Protocol(format!("unexpected reply to a read: {other:?}")));
            }
            Err(e) => {
                self.slots[slot].reply = Reply::Failed;
                self.tally.fail(slot, &e);
            }
        }
        if self.tally.settled()
            && let Some(to) = self.reply_to.take()
        {
            let answer = Answer::Read(self.result(Instant::now() >= to.deadline));
            out.push(Command::Answer { to, answer });
            self.answered = true;
        }
        self.issue_repairs(out);
    }

    fn settled(&self) -> bool {
        self.tally.settled()
    }

    fn complete(&self) -> bool {
        self.tally.complete()
    }

    fn held_bytes(&self) -> usize {
        self.slots
            .iter()
            .map(|s| match &s.reply {
                Reply::Replied(Some(v)) => v.value.as_ref().map_or(0, String::len),
                _ => 0,
            })
            .sum()
    }
}

/// Collects one reply per slot, whatever they are.
pub struct GatherMachine {
    results: Vec<Option<PeerResult>>,
}

impl GatherMachine {
    /// A gather over `n` slots.
    pub fn new(n: usize) -> Self {
        GatherMachine { results: (0..n).map(|_| None).collect() }
    }

    /// Takes the results; `None` for slots that did not answer.
    pub fn take(&mut self) -> Vec<Option<PeerResult>> {
        std::mem::take(&mut self.results)
    }
}

impl Machine for GatherMachine {
    fn on_reply(&mut self, slot: usize, result: PeerResult, _out: &mut Vec<Command>) {
        if let Some(r) = self.results.get_mut(slot).filter(|r| r.is_none()) {
            *r = Some(result);
        }
    }

    fn settled(&self) -> bool {
        self.results.iter().all(Option::is_some)
    }

    fn complete(&self) -> bool {
        self.settled()
    }

    fn held_bytes(&self) -> usize {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proto;

    fn ts(m: u64) -> Timestamp {
        Timestamp { micros: m, node: 1 }
    }

    fn names() -> Arc<[String]> {
        (0..10).map(|i| format!("r{i}")).collect()
    }

    fn read_reply(v: Option<Version>) -> PeerResult {
        Ok(response::Body::ReplicaRead(proto::ReadResult { version: v.map(|v| v.to_proto()) }))
    }

    fn write_ack() -> PeerResult {
        Ok(response::Body::ReplicaWrite(proto::WriteAck { applied: true }))
    }

    /// A `ReplyTo` on a real (unused) loopback connection, with a deadline `in_ms` from now (negative: past).
    fn reply_to(id: u64, in_ms: i64) -> (ReplyTo, std::net::TcpStream) {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let client = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let now = Instant::now();
        let d = std::time::Duration::from_millis(in_ms.unsigned_abs());
        let deadline = if in_ms >= 0 { now + d } else { now - d };
        (ReplyTo { conn: crate::net::conn::ClientConn::new(l.accept().unwrap().0), id, deadline }, client)
    }

    fn answers(out: &[Command]) -> Vec<(u64, Answer)> {
        out.iter()
            .filter_map(|c| match c {
                Command::Answer { to, answer } => Some((to.id, answer.clone())),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn slot_sets_report_each_slot_once_small_and_large() {
        for slots in [1, 3, 64, 127, 128, 129, 256] {
            let mut set = SlotSet::new(slots);
            assert_eq!(matches!(set, SlotSet::Small(_)), slots <= 128, "{slots} slots");
            let mut picked = vec![0, slots / 2, slots - 1];
            picked.dedup();
            for &slot in &picked {
                assert!(set.insert(slot), "slot {slot} of {slots}: first insert");
            }
            for &slot in &picked {
                assert!(!set.insert(slot), "slot {slot} of {slots}: second insert");
            }
            if slots > 3 {
                // Slot 1 is none of the picked ones: inserting the others did not set it.
                assert!(set.insert(1), "slot 1 of {slots} was never inserted");
            }
        }
    }
    #[test]
    fn a_deferred_read_is_answered_once_when_settled_and_still_repairs() {
        let old = Version::value(ts(1), "old");
        let new = Version::value(ts(2), "new");
        let (to, _client) = reply_to(41, 10_000);
        let mut m = ReadMachine::new(3, vec![7, 8, 9], names(), 1, true).reply_to(to);
        let mut out = Vec::new();
        m.on_reply(0, read_reply(Some(old.clone())), &mut out);
        assert_eq!(answers(&out), vec![(41, Answer::Read(Ok(Some(old))))]);
        out.clear();
        // The answer counts as the client's reply: once all are in, the stale one is repaired.
        m.on_reply(1, read_reply(Some(new.clone())), &mut out);
        m.on_reply(2, read_reply(Some(new.clone())), &mut out);
        assert_eq!(out, vec![Command::Repair { target: 7, key: 3, version: new }]);
    }

    #[test]
    fn deferred_answers_name_failures_and_timeouts() {
        // (deadline in ms from now, expected answer) for a QUORUM write whose replicas all fail.
        let cases: [(i64, Error); 2] = [
            (10_000, Error::Failure("0 of 2 acks for key 4; the write may or may not have been applied (r0: refused; r1: refused)".into())),
            (-1, Error::Timeout("0 of 2 acks for key 4; the write may or may not have been applied".into())),
        ];
        for (in_ms, expected) in cases {
            let (to, _client) = reply_to(5, in_ms);
            let mut m = WriteMachine::new(4, Version::value(ts(3), "w"), vec![0, 1, 2], names(), 2, false).reply_to(to);
            let mut out = Vec::new();
            m.on_reply(0, Err(Error::Failure("refused".into())), &mut out);
            assert!(answers(&out).is_empty(), "not settled yet");
            m.on_reply(1, Err(Error::Failure("refused".into())), &mut out);
            m.on_reply(2, write_ack(), &mut out);
            assert_eq!(answers(&out), vec![(5, Answer::Write(Err(expected)))]);
        }
        // Reached: the timestamp and the acks at the time of settling.
        let (to, _client) = reply_to(6, 10_000);
        let mut m = WriteMachine::new(4, Version::value(ts(3), "w"), vec![0, 1, 2], names(), 2, false).reply_to(to);
        let mut out = Vec::new();
        m.on_reply(2, write_ack(), &mut out);
        m.on_reply(0, write_ack(), &mut out);
        m.on_reply(1, write_ack(), &mut out);
        assert_eq!(answers(&out), vec![(6, Answer::Write(Ok((ts(3), 2))))]);
        // A read that gets no reply at all in time.
        let (to, _client) = reply_to(7, -1);
        let mut m = ReadMachine::new(8, vec![0, 1, 2], names(), 1, true).reply_to(to);
        let mut out = Vec::new();
        for slot in 0..3 {
            m.on_reply(slot, Err(Error::Timeout("r: did not answer in time".into())), &mut out);
        }
        assert_eq!(answers(&out), vec![(7, Answer::Read(Err(Error::Timeout("0 of 1 replies for key 8".into()))))]);
    }

    #[test]
    fn write_hints_every_failed_replica_even_after_success() {
        let v = Version::value(ts(5), "x");
        let mut m = WriteMachine::new(9, v.clone(), vec![4, 5, 6], names(), 1, true);
        let mut out = Vec::new();
        m.on_reply(0, write_ack(), &mut out);
        assert!(m.settled());
        assert_eq!(m.tally().decision(), Decision::Reached);
        m.on_reply(1, Err(Error::Timeout("slow".into())), &mut out);
        m.on_reply(2, Err(Error::Failure("down".into())), &mut out);
        m.on_reply(2, write_ack(), &mut out); // a duplicate outcome is ignored
        assert_eq!(out, vec![Command::Hint { target: 5, key: 9, version: v.clone() }, Command::Hint { target: 6, key: 9, version: v }]);
        assert_eq!(m.tally().acks(), 1);
    }

    #[test]
    fn write_without_hints_and_impossible_quorum() {
        let v = Version::value(ts(5), "x");
        let mut m = WriteMachine::new(1, v, vec![0, 1, 2], names(), 2, false);
        let mut out = Vec::new();
        m.on_reply(0, Err(Error::Failure("refused".into())), &mut out);
        assert!(!m.settled());
        m.on_reply(1, Err(Error::Failure("refused".into())), &mut out);
        assert_eq!(m.tally().decision(), Decision::Impossible);
        assert!(out.is_empty());
        assert!(m.tally().failures().suffix().contains("r0: refused"));
    }

    #[test]
    fn read_returns_newest_and_repairs_stale_after_all_replies() {
        let old = Version::value(ts(1), "old");
        let new = Version::value(ts(2), "new");
        let mut m = ReadMachine::new(3, vec![7, 8, 9], names(), 1, true);
        let mut out = Vec::new();
        m.on_reply(0, read_reply(Some(old.clone())), &mut out);
        assert!(m.settled());
        assert_eq!(m.newest(), Some(&old));
        m.answer(&mut out);
        assert!(out.is_empty(), "not every replica has replied yet");
        // A late reply reveals a newer version: the replica answered first is stale.
        m.on_reply(1, read_reply(Some(new.clone())), &mut out);
        assert!(out.is_empty());
        m.on_reply(2, read_reply(None), &mut out);
        assert_eq!(
            out,
            vec![Command::Repair { target: 7, key: 3, version: new.clone() }, Command::Repair { target: 9, key: 3, version: new }]
        );
    }

    #[test]
    fn read_skips_replicas_already_repaired_and_failed_ones() {
        let old = Version::value(ts(1), "old");
        let new = Version::value(ts(2), "new");
        let mut m = ReadMachine::new(3, vec![0, 1, 2], names(), 2, true);
        let mut out = Vec::new();
        m.on_reply(0, read_reply(Some(new.clone())), &mut out);
        m.on_reply(1, read_reply(Some(old)), &mut out);
        assert_eq!(m.stale_replied(), vec![(1, 1)]);
        m.mark_repaired(1, new.ts);
        m.on_reply(2, Err(Error::Timeout("t".into())), &mut out);
        m.answer(&mut out);
        assert!(out.is_empty(), "slot 1 was repaired before the answer, slot 2 never replied: {out:?}");
    }

    #[test]
    fn read_without_repair_never_commands() {
        let mut m = ReadMachine::new(3, vec![0, 1, 2], names(), 1, false);
        let mut out = Vec::new();
        m.on_reply(0, read_reply(Some(Version::value(ts(2), "a"))), &mut out);
        m.on_reply(1, read_reply(None), &mut out);
        m.on_reply(2, read_reply(None), &mut out);
        m.answer(&mut out);
        assert!(out.is_empty());
    }

    #[test]
    fn tombstone_is_newest_when_newer() {
        let mut m = ReadMachine::new(3, vec![0, 1, 2], names(), 2, true);
        let mut out = Vec::new();
        m.on_reply(0, read_reply(Some(Version::value(ts(1), "a"))), &mut out);
        m.on_reply(1, read_reply(Some(Version::tombstone(ts(2)))), &mut out);
        assert!(m.newest().unwrap().is_tombstone());
    }

    struct NoExec;
    impl Executor for NoExec {
        fn execute(&self, _c: Command) {}
    }

    #[test]
    fn background_calls_are_charged_to_the_budget_until_complete() {
        let budget = Arc::new(Budget::new(10_000));
        let v = Version::value(ts(1), "x".repeat(4000));
        let call = Call::new(WriteMachine::new(1, v.clone(), vec![0, 1, 2], names(), 1, false), Arc::new(NoExec), budget.clone());
        call.deliver(0, write_ack());
        call.finish(Instant::now()); // two replies outstanding: finishes in the background
        assert_eq!(budget.used(), 4000 + CALL_OVERHEAD);
        // A second such call still fits; a third would not, so it waits (here: until its deadline).
        let second = Call::new(WriteMachine::new(1, v.clone(), vec![0, 1, 2], names(), 1, false), Arc::new(NoExec), budget.clone());
        second.deliver(0, write_ack());
        second.finish(Instant::now());
        assert_eq!(budget.used(), 2 * (4000 + CALL_OVERHEAD));
        let third = Call::new(WriteMachine::new(1, v, vec![0, 1, 2], names(), 1, false), Arc::new(NoExec), budget.clone());
        third.deliver(0, write_ack());
        third.finish(Instant::now() + std::time::Duration::from_millis(20));
        assert_eq!(budget.used(), 2 * (4000 + CALL_OVERHEAD), "over budget: not charged, waited instead");
        call.deliver(1, write_ack());
        assert_eq!(budget.used(), 2 * (4000 + CALL_OVERHEAD), "still one reply outstanding");
        call.deliver(2, Err(Error::Timeout("t".into())));
        assert_eq!(budget.used(), 4000 + CALL_OVERHEAD, "released when complete");
        second.deliver(1, write_ack());
        second.deliver(2, write_ack());
        assert_eq!(budget.used(), 0);
    }

    #[test]
    fn call_wait_returns_when_settled_by_another_thread() {
        struct Nothing;
        impl Executor for Nothing {
            fn execute(&self, _c: Command) {}
        }
        let call = Call::new(GatherMachine::new(2), Arc::new(Nothing), Arc::new(Budget::new(1 << 20)));
        let c2 = call.clone();
        let t = std::thread::spawn(move || {
            c2.deliver(0, Ok(response::Body::Pong(proto::Pong::default())));
            c2.deliver(1, Err(Error::Timeout("x".into())));
        });
        let mut m = call.wait(Instant::now() + std::time::Duration::from_secs(30));
        assert!(m.settled());
        assert_eq!(m.take().len(), 2);
        drop(m);
        t.join().unwrap();
    }
}
