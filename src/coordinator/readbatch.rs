//! Batched reads.
//!
//! A read at ONE that this replica answers from its own copy must still ask
//! the key's other replicas for their versions, so stale ones get repaired.
//! A read at ONE of a key this replica does not hold asks one replica directly
//! and needs the others only for repair, or if that one is slow. Those reads
//! are off the client's path (or a fallback on it), so instead of one message
//! per read per peer they are queued per peer and sent by the batcher thread,
//! every [`GATHER`], as one `ReplicaReadBatch` holding every key queued
//! meanwhile. The peer answers
//! with one `ReadBatchResult`; [`BatchSink`] hands each result to the read's
//! own call, which then repairs exactly as if the read had been sent alone
//! (including the timeout sweep and connection failures, which reach every
//! read of the batch).
//!
//! This turns two messages (and four thread wakeups) per queued read into two
//! per batch. Waiting before each send also keeps the batches from competing
//! for the CPU with the requests that follow the one just answered.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::coordinator::call::{Call, ReadMachine};
use crate::error::Error;
use crate::net::link::{PeerResult, ReplySink};
use crate::node::Node;
use crate::proto::{self, request, response};

/// One read waiting to be sent to one peer.
pub struct QueuedRead {
    /// The read's call.
    pub call: Arc<Call<ReadMachine>>,
    /// The peer's slot in the call.
    pub slot: usize,
    /// The key.
    pub key: u8,
    /// The read's deadline.
    pub deadline: Instant,
}

/// Per-peer queues of reads and the batcher's wake-up.
pub struct ReadBatcher {
    queues: Vec<Mutex<Vec<QueuedRead>>>,
    wake: Mutex<bool>,
    cond: Condvar,
}

/// The most keys in one batch (the peer refuses more).
pub const MAX_BATCH: usize = 1024;

/// How long the batcher lets reads gather before sending them.
pub const GATHER: Duration = Duration::from_millis(5);

impl ReadBatcher {
    /// Queues for `n` nodes.
    pub fn new(n: usize) -> Self {
        ReadBatcher { queues: (0..n).map(|_| Mutex::new(Vec::new())).collect(), wake: Mutex::new(false), cond: Condvar::new() }
    }

    /// Queues a read for `target` and wakes the batcher.
    pub fn push(&self, target: usize, read: QueuedRead) {
        self.queues[target].lock().push(read);
        let mut w = self.wake.lock();
        if !*w {
            *w = true;
            self.cond.notify_one();
        }
    }

    /// The batcher thread: sends whatever is queued, one batch per peer, until the node stops.
    pub fn run(&self, node: &Node) {
        while !node.shutdown.load(Ordering::Acquire) {
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
            for (target, queue) in self.queues.iter().enumerate() {
                loop {
                    let batch: Vec<QueuedRead> = {
                        let mut q = queue.lock();
                        if q.is_empty() {
                            break;
                        }
                        let n = q.len().min(MAX_BATCH);
                        q.drain(..n).collect()
                    };
                    self.send(node, target, batch);
                }
            }
        }
    }

    fn send(&self, node: &Node, target: usize, batch: Vec<QueuedRead>) {
        let deadline = batch.iter().map(|r| r.deadline).min().expect("a batch is never empty");
        let keys = batch.iter().map(|r| r.key as u32).collect();
        let sink = Arc::new(BatchSink { reads: batch });
        match node.link(target) {
            Some(link) => link.send(request::Body::ReplicaReadBatch(proto::ReplicaReadBatch { keys }), sink, 0, deadline),
            None => sink.deliver(0, Err(Error::Internal("a read batch addressed to this node".into()))),
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
            Ok(response::Body::ReplicaReadBatch(r)) if r.results.len() == self.reads.len() => {
                for (read, rr) in self.reads.iter().zip(r.results) {
                    read.call.deliver(read.slot, Ok(response::Body::ReplicaRead(rr)));
                }
            }
            Ok(other) => {
                let e = Error::Protocol(format!("unexpected reply to a read batch of {}: {other:?}", self.reads.len()));
                for read in &self.reads {
                    read.call.deliver(read.slot, Err(e.clone()));
                }
            }
            Err(e) => {
                for read in &self.reads {
                    read.call.deliver(read.slot, Err(e.clone()));
                }
            }
        }
    }
}
