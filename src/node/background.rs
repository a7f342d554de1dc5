//! Work of the server's background threads: read repairs and hint replay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::Receiver;
use log::{debug, info};

use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::call::Call;
use crate::coordinator::command::{Executor, Outgoing, Route};
use crate::coordinator::gather::GatherMachine;
use crate::coordinator::peers::ReplySink;
use crate::error::Error;
use crate::message::{PeerRequest, PeerResponse, PeerResult};
use crate::node::Node;
use crate::storage::cell::Version;

/// Work for the repair thread.
pub enum RepairJob {
    /// A background read repair.
    Repair {
        /// The replica to repair.
        target: NodeId,
        /// The key.
        key: Key,
        /// The version to send.
        version: Version,
    },
    /// Messages a call asked for while a reply was being delivered (a blocking
    /// read repair), sent from the repair thread so that the thread that
    /// delivered the reply — often a link's reader — never blocks on a socket
    /// or the log (see [`Executor::send_later`]).
    Send {
        /// The call.
        sink: Arc<dyn ReplySink>,
        /// Its messages.
        sends: Vec<Outgoing>,
        /// The call's deadline.
        deadline: Instant,
    },
    /// Nothing but a wake-up: Paxos commits were queued (the thread sends
    /// them whenever it runs out of urgent work).
    Flush,
    /// A write refused for a stale epoch, to send again (see [`Command::Reroute`](crate::coordinator::command::Command::Reroute)).
    Reroute {
        /// The client to answer (`None`: answered already).
        to: Option<crate::coordinator::command::ReplyTo>,
        /// The key.
        key: Key,
        /// The version.
        version: Version,
        /// The write's level.
        level: crate::cluster::consistency::Consistency,
        /// The epoch it was routed at.
        epoch: u64,
        /// How many more reroutes are allowed.
        attempts: u8,
    },
}

/// Logs a repair that failed (the next read of the key tries again).
struct RepairOutcome {
    key: Key,
    target: String,
}

impl ReplySink for RepairOutcome {
    fn deliver(&self, _slot: usize, result: PeerResult) {
        if let Err(e) = result {
            debug!("read repair of key {} on {} failed: {e}", self.key, self.target);
        }
    }
}

impl Node {
    /// Does one job of the repair thread.
    pub fn send_repair(self: &Arc<Self>, job: RepairJob) {
        let ring = self.ring();
        match job {
            RepairJob::Repair { target, key, version } => {
                let name = ring.name(target);
                debug!("read repair: key {key} to {name}");
                let sink = Arc::new(RepairOutcome { key: key.clone(), target: name });
                let msg = PeerRequest::Write { key, version, epoch: 0 };
                self.send(sink, vec![Outgoing { slot: 0, to: target, msg, route: Route::Direct }], self.deadline());
            }
            RepairJob::Flush => {}
            RepairJob::Reroute { to, key, version, level, epoch, attempts } => self.reroute(to, key, version, level, epoch, attempts),
            RepairJob::Send { sink, sends, deadline } => {
                if Instant::now() >= deadline {
                    // Too late to be worth sending: the call hears so, as the sweep would tell it.
                    for s in sends {
                        sink.deliver(s.slot, Err(Error::Timeout(format!("{} was not asked in time", ring.name(s.to)))));
                    }
                } else {
                    self.send(sink, sends, deadline);
                }
            }
        }
    }

    /// The repair thread: the sends of blocking read repairs (a client waits on
    /// them) before background repairs, until the node drops its channels.
    pub fn repair_worker(self: &Arc<Self>, urgent: Receiver<RepairJob>, repairs: Receiver<RepairJob>) {
        loop {
            while let Ok(job) = urgent.try_recv() {
                self.send_repair(job);
            }
            // Out of urgent work: the Paxos commits queued meanwhile go now.
            self.send_commits(self.take_commits());
            let job = crossbeam_channel::select! {
                recv(urgent) -> job => job,
                recv(repairs) -> job => job,
            };
            match job {
                Ok(job) => self.send_repair(job),
                Err(_) => return,
            }
        }
    }

    /// Wakes the repair thread if it sleeps (see [`RepairJob::Flush`]).
    pub(crate) fn wake_repair_thread(&self) {
        // Fails only once the thread is gone (the node is stopping): a commit
        // left behind is completed by the key's next proposer.
        let _ = self.urgent_tx.send(RepairJob::Flush);
    }

    /// Replays the hints held for `target`, throttled; stops at the first failure.
    pub fn replay_hints(self: &Arc<Self>, target: NodeId) {
        if target == self.me || !self.peers.is_up(target) {
            return;
        }
        let hints = self.hints.pending(target);
        if hints.is_empty() {
            return;
        }
        let name = self.ring().name(target);
        info!("replaying {} hint(s) to {name}", hints.len());
        let pace = Duration::from_secs(1) / self.cfg.hint_rate.max(1);
        let mut delivered = 0;
        for (key, version) in hints {
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let ts = version.ts;
            let machine = GatherMachine::new(vec![target], PeerRequest::Write { key: key.clone(), version, epoch: 0 });
            let call = Call::new(machine, self.clone(), self.budget.clone(), self.deadline());
            call.start();
            let result = call.wait().take().pop().flatten();
            match result {
                Some(Ok(PeerResponse::WriteAck { .. })) => {
                    self.hints.delivered(target, key.as_bytes(), ts);
                    delivered += 1;
                }
                other => {
                    let why = match other {
                        Some(Ok(r)) => format!("unexpected reply {r:?}"),
                        Some(Err(e)) => e.to_string(),
                        None => Error::Timeout("no reply in time".into()).to_string(),
                    };
                    info!("hint replay to {name} paused after {delivered} hint(s): {why}");
                    return;
                }
            }
            if !pace.is_zero() {
                std::thread::sleep(pace);
            }
        }
        info!("replayed {delivered} hint(s) to {name}");
    }
}
