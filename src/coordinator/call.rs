//! A machine shared between the coordinator and the threads that deliver its
//! replies, and the node-wide budget of calls finishing in the background.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::{Condvar, Mutex, MutexGuard};

use crate::coordinator::command::{Command, Executor, Outgoing};
use crate::coordinator::peers::ReplySink;
use crate::message::PeerResult;

/// A request's state machine: I/O-free, it takes typed replies and pushes [`Command`]s.
pub trait Machine: Send {
    /// The messages that open the call (one for each slot still waiting).
    fn start(&mut self) -> Vec<Outgoing>;
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
    used: AtomicUsize,
    limit: usize,
}

impl Budget {
    /// A budget of `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Budget { used: AtomicUsize::new(0), limit }
    }

    /// Bytes in use.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }

    fn try_reserve(&self, bytes: usize) -> bool {
        self.used.fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| (u + bytes <= self.limit).then_some(u + bytes)).is_ok()
    }

    fn release(&self, bytes: usize) {
        self.used.fetch_sub(bytes, Ordering::AcqRel);
    }
}

/// Fixed cost charged per background call besides its values.
pub const CALL_OVERHEAD: usize = 512;

/// A machine shared between the coordinator and the threads that deliver replies.
///
/// Commands the machine pushes are executed after its lock is released: sends
/// go to the [`Executor`]'s one fan-out loop with this call as their sink, the
/// rest (hint, repair, answer) to [`Executor::execute`].
pub struct Call<M> {
    machine: Mutex<M>,
    changed: Condvar,
    exec: Arc<dyn Executor>,
    budget: Arc<Budget>,
    deadline: Instant,
    /// Bytes reserved from `budget` while finishing in the background (under `machine`'s lock).
    reserved: AtomicUsize,
    me: Weak<Call<M>>,
}

/// A call seen from the connection that waits to finish it, whatever its machine.
pub trait Finish: Send + Sync {
    /// See [`Call::finish`].
    fn finish(&self);
    /// See [`Call::start`].
    fn start(&self);
}

impl<M: Machine + 'static> Call<M> {
    /// Wraps `machine`, due by `deadline`; commands go to `exec`; background
    /// completion is charged to `budget`. Nothing is sent until [`start`](Self::start).
    pub fn new(machine: M, exec: Arc<dyn Executor>, budget: Arc<Budget>, deadline: Instant) -> Arc<Self> {
        Arc::new_cyclic(|me| Call {
            machine: Mutex::new(machine),
            changed: Condvar::new(),
            exec,
            budget,
            deadline,
            reserved: AtomicUsize::new(0),
            me: me.clone(),
        })
    }

    /// The call's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// Sends the machine's opening messages (through [`Executor::send`]).
    pub fn start(&self) {
        let sends = self.machine.lock().start();
        if !sends.is_empty()
            && let Some(me) = self.me.upgrade()
        {
            self.exec.send(me, sends, self.deadline);
        }
    }

    /// Blocks until the machine is settled or the deadline passes; returns it locked.
    pub fn wait(&self) -> MutexGuard<'_, M> {
        let mut m = self.machine.lock();
        while !m.settled() {
            if self.changed.wait_until(&mut m, self.deadline).timed_out() {
                break;
            }
        }
        m
    }

    /// [`wait`](Self::wait), then runs `f` on the machine under the same lock
    /// (no reply can come between) and executes the commands it pushed.
    pub fn wait_then<R>(&self, f: impl FnOnce(&mut M, &mut Vec<Command>) -> R) -> R {
        let mut out = Vec::new();
        let r = f(&mut self.wait(), &mut out);
        self.run(out, false);
        r
    }

    /// After the answer: lets the call finish in the background if the budget
    /// has room for what it holds, otherwise waits until it is complete (or the deadline).
    pub fn finish(&self) {
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
            if self.changed.wait_until(&mut m, self.deadline).timed_out() {
                break;
            }
        }
    }

    /// Runs `f` on the machine, then executes the commands it pushed.
    pub fn with<R>(&self, f: impl FnOnce(&mut M, &mut Vec<Command>) -> R) -> R {
        let mut out = Vec::new();
        let r = f(&mut self.machine.lock(), &mut out);
        self.run(out, false);
        r
    }

    /// Executes commands; sends asked for while delivering a reply go to [`Executor::send_later`].
    fn run(&self, out: Vec<Command>, delivering: bool) {
        if out.is_empty() {
            return;
        }
        let mut sends = Vec::new();
        for c in out {
            match c {
                Command::Send(s) => sends.push(s),
                other => self.exec.execute(other),
            }
        }
        if !sends.is_empty()
            && let Some(me) = self.me.upgrade()
        {
            if delivering {
                self.exec.send_later(me, sends, self.deadline);
            } else {
                self.exec.send(me, sends, self.deadline);
            }
        }
    }
}

impl<M: Machine + 'static> Finish for Call<M> {
    fn finish(&self) {
        Call::finish(self)
    }

    fn start(&self) {
        Call::start(self)
    }
}

impl<M: Machine + 'static> ReplySink for Call<M> {
    fn deliver(&self, slot: usize, result: PeerResult) {
        let mut out = Vec::new();
        {
            let mut m = self.machine.lock();
            m.on_reply(slot, result, &mut out);
            if m.complete() {
                let reserved = self.reserved.swap(0, Ordering::AcqRel);
                if reserved > 0 {
                    self.budget.release(reserved);
                }
            }
        }
        self.changed.notify_all();
        self.run(out, true);
    }
}
