//! Batched reads.
//!
//! A read at ONE that this replica answers from its own copy must still ask
//! the key's other replicas for their versions, so stale ones get repaired.
//! A read at ONE of a key this replica does not hold asks one replica directly
//! and needs the others only for repair, or if that one is slow. Those reads
//! are off the client's path (or a fallback on it), so instead of one message
//! per read per peer they are queued per peer ([`Route::Batched`]) and sent by
//! the batcher thread, every [`GATHER`], as one `ReadBatch` holding every key
//! queued meanwhile. The peer answers with one batch of versions; [`BatchSink`]
//! hands each to the read's own call, which then repairs exactly as if the
//! read had been sent alone (including the timeout sweep and connection
//! failures, which reach every read of the batch).
//!
//! This turns two messages (and four thread wakeups) per queued read into two
//! per batch. Waiting before each send also keeps the batches from competing
//! for the CPU with the requests that follow the one just answered.
//!
//! [`Route::Batched`]: crate::coordinator::command::Route::Batched

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::cluster::key::Key;
use crate::cluster::ring::NodeId;
use crate::coordinator::peers::{Peers, ReplySink};
use crate::error::Error;
use crate::message::{PeerRequest, PeerResponse, PeerResult};

pub use crate::message::MAX_BATCH;

/// One read waiting to be sent to one peer.
pub struct QueuedRead {
    /// The read's call.
    pub sink: Arc<dyn ReplySink>,
    /// The peer's slot in the call.
    pub slot: usize,
    /// The key.
    pub key: Key,
    /// The read's deadline.
    pub deadline: Instant,
}

/// The reads waiting for one peer.
type Queue = Arc<Mutex<Vec<QueuedRead>>>;

/// Per-peer queues of reads and the batcher's wake-up.
pub struct ReadBatcher {
    /// One queue per node, in ring order (so a flush is deterministic), then
    /// members that joined later in the order they appeared.
    queues: parking_lot::RwLock<Vec<(NodeId, Queue)>>,
    wake: Mutex<bool>,
    cond: Condvar,
}

/// How long the batcher lets reads gather before sending them.
pub const GATHER: Duration = Duration::from_millis(5);

impl ReadBatcher {
    /// Queues for the nodes `ids`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>) -> Self {
        ReadBatcher {
            queues: parking_lot::RwLock::new(ids.into_iter().map(|id| (id, Arc::new(Mutex::new(Vec::new())))).collect()),
            wake: Mutex::new(false),
            cond: Condvar::new(),
        }
    }

    /// Adds queues for the nodes of `ids` it has none for (members that joined since).
    pub fn add(&self, ids: impl IntoIterator<Item = NodeId>) {
        let mut queues = self.queues.write();
        for id in ids {
            if !queues.iter().any(|(q, _)| *q == id) {
                queues.push((id, Arc::new(Mutex::new(Vec::new()))));
            }
        }
    }

    /// Queues a read for `target` and wakes the batcher (a target it has no
    /// queue for fails the read at once).
    pub fn push(&self, target: NodeId, read: QueuedRead) {
        let queue = self.queues.read().iter().find(|(id, _)| *id == target).map(|(_, q)| q.clone());
        let Some(queue) = queue else {
            read.sink.deliver(read.slot, Err(Error::Failure(format!("{target} is not in the ring"))));
            return;
        };
        queue.lock().push(read);
        let mut w = self.wake.lock();
        if !*w {
            *w = true;
            self.cond.notify_one();
        }
    }

    /// The batcher thread: sends whatever is queued, one batch per peer, until `shutdown`.
    pub fn run(&self, peers: &dyn Peers, shutdown: &AtomicBool) {
        while !shutdown.load(Ordering::Acquire) {
            {
                let mut w = self.wake.lock();
                if !*w {
                    self.cond.wait_for(&mut w, Duration::from_millis(100));
                }
                *w = false;
            }
            // Let more reads join before sending: a fuller batch saves messages and
            // wakeups, and sending later keeps this work from competing with the
            // clients' own requests for the CPU.
            std::thread::sleep(GATHER);
            self.flush(peers);
        }
    }

    /// Sends everything queued now, one batch (of at most [`MAX_BATCH`]) per peer.
    pub fn flush(&self, peers: &dyn Peers) {
        let queues = self.queues.read().clone();
        for (target, queue) in &queues {
            let target = *target;
            loop {
                let batch: Vec<QueuedRead> = {
                    let mut q = queue.lock();
                    if q.is_empty() {
                        break;
                    }
                    let n = q.len().min(MAX_BATCH);
                    q.drain(..n).collect()
                };
                let deadline = batch.iter().map(|r| r.deadline).min().expect("a batch is never empty");
                let keys = batch.iter().map(|r| r.key.clone()).collect();
                peers.send(target, PeerRequest::ReadBatch { keys }, Arc::new(BatchSink { reads: batch }), 0, deadline);
            }
        }
    }
}

/// Hands each result of a batch to its read.
pub struct BatchSink {
    reads: Vec<QueuedRead>,
}

impl ReplySink for BatchSink {
    fn deliver(&self, _slot: usize, result: PeerResult) {
        match result {
            Ok(PeerResponse::ReadBatch(r)) if r.len() == self.reads.len() => {
                for (read, v) in self.reads.iter().zip(r) {
                    read.sink.deliver(read.slot, Ok(PeerResponse::Read(v)));
                }
            }
            Ok(other) => {
                let e = Error::Protocol(format!("unexpected reply to a read batch of {}: {other:?}", self.reads.len()));
                for read in &self.reads {
                    read.sink.deliver(read.slot, Err(e.clone()));
                }
            }
            Err(e) => {
                for read in &self.reads {
                    read.sink.deliver(read.slot, Err(e.clone()));
                }
            }
        }
    }
}
