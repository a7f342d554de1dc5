//! A replica: its state, and the roles it plays.
//!
//! [`Node`] holds everything one replica has: its ring, clock, store, hints,
//! and a handle on its peers ([`Peers`]: the real links, or a simulated network
//! in tests). It does no I/O of its own: requests arrive typed
//! ([`crate::message`]) from whoever owns the sockets ([`crate::net`]), and it
//! reaches other replicas only through [`Peers`]. Its roles, one file each:
//!
//! * [`dispatch`] — a client's request, parsed once into a
//!   [`ClientRequest`](crate::message::ClientRequest), to the role that serves it; the handshake.
//! * [`coordinate`] — `get`, `put` and `del` at a consistency level: a call per
//!   request ([`crate::coordinator`]), and the one loop that executes every
//!   call's commands (fan-out to peers or the local store, hints, repairs, answers).
//! * [`peer`] — a peer's request: local work only, never waiting on another
//!   replica, so two coordinators fanning out to each other cannot deadlock.
//! * [`paxos`] — a Paxos proposer's request to this replica's acceptor:
//!   handled, logged and applied in order, answered once durable.
//! * [`serial`] — a SERIAL `get`/`put`/`del` or a conditional write: this
//!   node proposes, driving a [`Proposer`](crate::paxos::proposer::Proposer)
//!   from the replies as they arrive, answering the client when it decides.
//! * [`timer`] — one thread for the SERIAL operations' back-offs and deadlines.
//! * [`admin`] — `status`, `inspect` and `display`.
//! * [`scan`] — `token` (where a key lives) and `scan` (a walk over every key, in pages).
//! * [`antientropy`] — anti-entropy: this replica's hash trees and cells for
//!   another's exchange, the exchanges it runs, background passes and `repair`.
//! * [`background`] — read repairs and hint replay, for the server's long-lived threads.
//! * [`startup`] — recovery from the log and snapshots.
//!
//! # The path of a write (`put`/`del`)
//!
//! 1. The request was parsed and validated into a typed request.
//! 2. **Unavailable** check: if the failure detector knows fewer live replicas
//!    than the level needs, refuse before sending anything.
//! 3. Stamp the write with the hybrid logical clock.
//! 4. Start a [`WriteMachine`](crate::coordinator::write::WriteMachine) call: it
//!    sends the version to every replica (this node's own copy, if it holds
//!    the key, is applied first and made durable after the remote sends).
//! 5. Answer once the level's acks arrive, or at the timeout. Replicas that fail
//!    or time out — now or after the answer — get a hint.
//!
//! # The path of a read (`get`)
//!
//! 1–2. As for a write.
//! 3. At ONE on a replica of the key, the local copy answers at once; the other
//!    replicas are asked after the reply is written, for read repair.
//! 4. Otherwise a [`ReadMachine`](crate::coordinator::read::ReadMachine) asks
//!    every replica (at ONE, one directly and the others through the read
//!    batcher) and answers with the newest version once the level's replies
//!    are in — at QUORUM and ALL after repairing the stale ones (blocking read
//!    repair), so quorum reads are monotonic.
//! 5. Once every replica replied or timed out, any other stale replica —
//!    including one whose reply came after the answer — is repaired in the
//!    background by the repair worker.

pub mod admin;
pub mod antientropy;
pub mod background;
pub mod cache;
pub mod coordinate;
pub mod dispatch;
pub mod membership;
pub mod movement;
pub mod paxos;
pub mod peer;
pub mod scan;
pub mod serial;
pub mod startup;
#[cfg(test)]
pub(crate) mod test_util;
pub mod timer;
pub mod txn;

use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Instant;

use crossbeam_channel::{Receiver, Sender, unbounded};

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::cluster::ring::{NodeId, Ring};
use crate::config::NodeConfig;
use crate::coordinator::call::{Budget, Finish};
use crate::coordinator::command::Outgoing;
use crate::coordinator::peers::Peers;
use crate::coordinator::readbatch::ReadBatcher;
use crate::error::{Error, Result};
use crate::message::Limits;
use crate::message::Reply;
use crate::storage::hints::HintStore;
use crate::storage::hlc::{Hlc, SystemClock, WallClock};
use crate::storage::store::Store;
use crate::storage::wal::Wal;

pub use crate::message::MAX_DISPLAY_VALUE;
pub use background::RepairJob;
pub use paxos::AcceptorState;
pub use peer::PendingAck;

/// A request's answer: now, or later from the call itself (see [`crate::net::conn`]).
pub enum Answered<T> {
    /// The coordinator has the answer.
    Now(T),
    /// The call will answer the client when it settles; the worker must
    /// [`finish`](Unfinished::finish) it once that reply is out.
    Later(Unfinished),
}

/// A call whose client reply was deferred.
pub struct Unfinished {
    call: Arc<dyn Finish>,
    deadline: Instant,
}

impl Unfinished {
    /// The call's deadline.
    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// After the reply is out: lets the call finish in the background, or waits
    /// for it if the background budget is full (see [`Call::finish`](crate::coordinator::call::Call::finish)).
    pub fn finish(self) {
        self.call.finish();
    }
}

/// Work a coordinator does after its reply has been written: a read at ONE
/// answered from this replica's own copy still asks the other replicas, for
/// read repair; sending after the reply keeps those sends off the client's latency.
pub struct Deferred(Arc<dyn Finish>);

impl Deferred {
    /// Does the work: starts the call's remaining sends, then lets it finish.
    pub fn run(self) {
        self.0.start();
        self.0.finish();
    }
}

/// A client request's answer, and what to do once it is written.
pub struct Handled {
    /// The answer.
    pub reply: Reply,
    /// Work for after the reply is on the wire.
    pub after: Option<Deferred>,
}

impl Handled {
    /// An answer with nothing after it.
    pub fn of(reply: Reply) -> Self {
        Handled { reply, after: None }
    }
}

/// The receiving ends of the node's background channels, for the server's workers.
pub struct Workers {
    /// Background read repairs, for the repair thread.
    pub repairs: Receiver<RepairJob>,
    /// Sends of blocking read repairs, which the repair thread takes first.
    pub urgent: Receiver<RepairJob>,
    /// Peers that just came up (hint replay).
    pub peer_up: Receiver<NodeId>,
    /// `repair` asked for a pass (the anti-entropy thread).
    pub repair_wake: Receiver<()>,
}

/// How far past `--snapshot-bytes` the log may grow while a movement copies
/// into a node (see [`Node::copying`]).
pub const COPY_SNAPSHOT_FACTOR: u64 = 4;

/// One replica.
pub struct Node {
    /// Settings.
    pub cfg: NodeConfig,
    /// The cluster at the newest epoch this node knows (see [`membership`]).
    view: parking_lot::RwLock<Arc<membership::View>>,
    /// The view's epoch, readable without the view's lock (a peer write checks it).
    epoch: std::sync::atomic::AtomicU64,
    /// The movement this node runs or ran, and what it copied.
    progress: parking_lot::Mutex<movement::Progress>,
    /// When the movement under way began copying, and the bytes it copied (for `--stream-throughput`).
    stream_pace: parking_lot::Mutex<(Instant, u64)>,
    /// Decommission and removenode requests, for the membership thread.
    jobs: parking_lot::Mutex<Vec<movement::Job>>,
    /// The newest epoch a peer mentioned (heartbeats, handshakes), for the membership thread.
    newest_seen: std::sync::atomic::AtomicU64,
    /// The metadata register's acceptor (held while a request is served and its state stored).
    meta: parking_lot::Mutex<membership::MetaAcceptor>,
    /// This node's id.
    pub me: NodeId,
    /// Seed 002's coordinator cache of keys this node holds no copy of
    /// (`--coordinator-cache-bytes`; none by default).
    pub cache: Option<Arc<crate::coordinator::cache::CoordinatorCache>>,
    /// The write clock (on the system clock; the simulated network gives its nodes one it controls).
    pub clock: Hlc<Arc<dyn WallClock>>,
    /// The local cells.
    pub store: Store,
    /// Hints held for peers.
    pub hints: HintStore,
    /// How this node reaches the others.
    pub peers: Arc<dyn Peers>,
    /// Set when the node stops.
    pub shutdown: AtomicBool,
    /// Set when recovery replayed log records: the snapshot thread folds them
    /// into a snapshot soon after the start (so the logs of earlier runs go away
    /// instead of piling up and being replayed start after start).
    pub fold: AtomicBool,
    /// Set while a movement copies cells into this node: the snapshot thread
    /// lets the log grow to [`COPY_SNAPSHOT_FACTOR`] times `--snapshot-bytes`
    /// before it takes a snapshot (one taken in the middle of a copy competes
    /// with it for the processor and is soon out of date; the first after it
    /// holds everything copied).
    pub copying: AtomicBool,
    /// Bytes held by calls finishing in the background.
    pub budget: Arc<Budget>,
    /// The state of the draws of `--read-repair-chance`.
    repair_draws: std::sync::atomic::AtomicU64,
    /// Reads queued per peer.
    pub read_batcher: ReadBatcher,
    /// The write-ahead log (`None` in memory).
    pub wal: Option<Arc<Wal>>,
    /// The Paxos acceptor (every key's promise, accepted proposal and last
    /// commit). Held only while a request is handled and its record appended
    /// (never across a commit or fsync), and by a snapshot while it copies it.
    pub paxos: parking_lot::Mutex<AcceptorState>,
    /// Back-offs and deadlines of SERIAL operations (started at the first).
    timer: std::sync::OnceLock<timer::Timer>,
    /// Paxos commits to peers waiting to ride along with the next message to
    /// each (see [`serial`]), and whether any are.
    commits: parking_lot::Mutex<Vec<Outgoing>>,
    commits_queued: AtomicBool,
    /// Keys with a SERIAL operation running from here, and the ones waiting
    /// for it (see [`serial`]).
    serial_keys: parking_lot::Mutex<std::collections::HashMap<Key, std::collections::VecDeque<Arc<serial::SerialCall>>>>,
    /// Transactions this node is recovering (see [`txn`]).
    recovering: txn::Recovering,
    /// Keys whose stuck SERIAL proposal this node is completing, and since when.
    completing: parking_lot::Mutex<std::collections::HashMap<Key, std::time::Instant>>,
    ack_log: Option<parking_lot::Mutex<std::fs::File>>,
    repair_tx: Sender<RepairJob>,
    urgent_tx: Sender<RepairJob>,
    /// Sender side of the peer-up channel, handed to the links.
    pub peer_up_tx: Sender<NodeId>,
    /// Anti-entropy passes: running, last, asked for.
    passes: parking_lot::Mutex<antientropy::Passes>,
    repair_wake: Sender<()>,
}

impl Node {
    /// The id of `cfg.name` in `ring`, or why it is not there.
    pub fn locate(cfg: &NodeConfig, ring: &Ring) -> Result<NodeId> {
        ring.id_of(&cfg.name).ok_or_else(|| {
            let names: Vec<&str> = ring.nodes().iter().map(|n| n.name.as_str()).collect();
            Error::Config(format!("{} is not in the cluster file (it lists {})", cfg.name, names.join(", ")))
        })
    }

    /// Builds the node `cfg.name` of `ring`, reaching the others through `peers`;
    /// recovers what its data folder holds.
    pub fn new(cfg: NodeConfig, ring: Ring, peers: Arc<dyn Peers>) -> Result<(Arc<Node>, Workers)> {
        Node::with_clock(cfg, ring, peers, Arc::new(SystemClock))
    }

    /// [`Node::new`] with its clock on `wall`.
    pub fn with_clock(cfg: NodeConfig, ring: Ring, peers: Arc<dyn Peers>, wall: Arc<dyn WallClock>) -> Result<(Arc<Node>, Workers)> {
        let meta = crate::cluster::metadata::Metadata::from_ring(&ring, crate::cluster::file::DEFAULT_VNODES);
        Node::with_metadata(cfg, membership::Stored::first(meta), peers, wall)
    }

    /// Builds the node `cfg.name` of the cluster `stored` describes (with
    /// what its acceptor promised for the next epoch), its clock on `wall`.
    pub fn with_metadata(
        cfg: NodeConfig,
        stored: membership::Stored,
        peers: Arc<dyn Peers>,
        wall: Arc<dyn WallClock>,
    ) -> Result<(Arc<Node>, Workers)> {
        let view = membership::View::of(stored.meta.clone())?;
        let ring = view.ring.clone();
        let me = Node::locate(&cfg, &ring)?;
        let (repair_tx, repairs) = unbounded();
        let (urgent_tx, urgent) = unbounded();
        let (peer_up_tx, peer_up) = unbounded();
        let (repair_wake, repair_wake_rx) = unbounded();
        let others: Vec<(NodeId, String)> = ring.nodes().iter().map(|n| (n.id, n.name.clone())).collect();
        let mut store = Store::new(None, ring.partitioner());
        let mut hints = HintStore::new(others, cfg.hint_window, cfg.max_hint_bytes, None);
        let (wal, loaded, acceptor) = match &cfg.data_dir {
            Some(dir) => {
                let (wal, loaded, acceptor) = startup::recover(dir, cfg.fsync, &store, &hints)?;
                (Some(Arc::new(wal)), Some(loaded), acceptor)
            }
            None => (None, None, AcceptorState::default()),
        };
        let replayed = loaded.is_some_and(|l| l.records > 0);
        store.set_wal(wal.clone());
        hints.set_wal(wal.clone());
        let ack_log = match &cfg.ack_log {
            Some(p) => Some(parking_lot::Mutex::new(
                std::fs::OpenOptions::new()
                    .create(true)
                    .append(true)
                    .open(p)
                    .map_err(|e| Error::Config(format!("cannot open ack log {}: {e}", p.display())))?,
            )),
            None => None,
        };
        let node = Node {
            read_batcher: ReadBatcher::new(ring.ids().filter(|&id| id != me)),
            budget: Arc::new(Budget::new(cfg.max_background_bytes)),
            repair_draws: std::sync::atomic::AtomicU64::new(u64::from(me.0)),
            clock: Hlc::with_clock(me.0, wall),
            store,
            hints,
            fold: AtomicBool::new(replayed),
            copying: AtomicBool::new(false),
            wal,
            paxos: parking_lot::Mutex::new(acceptor),
            timer: std::sync::OnceLock::new(),
            commits: parking_lot::Mutex::new(Vec::new()),
            commits_queued: AtomicBool::new(false),
            serial_keys: parking_lot::Mutex::new(std::collections::HashMap::new()),
            recovering: parking_lot::Mutex::new(std::collections::HashMap::new()),
            completing: parking_lot::Mutex::new(std::collections::HashMap::new()),
            ack_log,
            peers,
            me,
            cache: crate::coordinator::cache::CoordinatorCache::new(cfg.coordinator_cache_bytes, cfg.coordinator_cache_ttl).map(Arc::new),
            epoch: std::sync::atomic::AtomicU64::new(view.epoch()),
            view: parking_lot::RwLock::new(Arc::new(view)),
            meta: parking_lot::Mutex::new(membership::MetaAcceptor::of(&stored)),
            newest_seen: std::sync::atomic::AtomicU64::new(0),
            progress: parking_lot::Mutex::new(movement::Progress::default()),
            jobs: parking_lot::Mutex::new(Vec::new()),
            stream_pace: parking_lot::Mutex::new((Instant::now(), 0)),
            cfg,
            shutdown: AtomicBool::new(false),
            repair_tx,
            urgent_tx,
            peer_up_tx,
            passes: parking_lot::Mutex::new(antientropy::Passes::default()),
            repair_wake,
        };
        if let Some(loaded) = loaded {
            node.recovered(loaded);
        }
        Ok((Arc::new(node), Workers { repairs, urgent, peer_up, repair_wake: repair_wake_rx }))
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// Whether the failure detector believes node `id` alive (this node always is).
    pub fn alive(&self, id: NodeId) -> bool {
        id == self.me || self.peers.is_up(id)
    }

    /// What this replica accepts from the wire: its cluster's keys and its size limits.
    pub fn limits(&self) -> Limits {
        Limits {
            partitioner: self.ring().partitioner(),
            max_key_bytes: self.cfg.max_key_bytes,
            max_value_bytes: self.cfg.max_value_bytes,
            max_txn_keys: self.cfg.max_txn_keys,
            max_txn_bytes: self.cfg.max_txn_bytes,
        }
    }

    /// The timer thread of SERIAL operations.
    fn timer(&self) -> &timer::Timer {
        self.timer.get_or_init(|| timer::Timer::new(&format!("timer-{}", self.cfg.name)))
    }

    /// A deadline for a request started now.
    pub fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    /// The replicas a write of `key` goes to: its replicas in the read ring,
    /// then, while a movement is under way, those of the write ring not among
    /// them (pending); and how many are pending. A write waits for the
    /// level's acks plus one from each pending replica, as Cassandra counts,
    /// so a write acknowledged during a movement is on enough replicas of
    /// either ring.
    pub fn write_targets(&self, key: &Key) -> (Arc<[NodeId]>, usize) {
        self.view().write_targets(key)
    }

    /// The replicas of `key` and the replies `level` needs, or `Unavailable`
    /// if fewer of them are alive (decided before anything is sent).
    fn check_available(&self, key: &Key, level: Consistency) -> Result<(Arc<[NodeId]>, usize)> {
        self.check_available_in(&self.ring(), key, level)
    }

    /// [`check_available`](Self::check_available) on `ring`.
    fn check_available_in(&self, ring: &Ring, key: &Key, level: Consistency) -> Result<(Arc<[NodeId]>, usize)> {
        let replicas = ring.replica_set(key.as_bytes());
        let need = level.required(replicas.len());
        let alive = replicas.iter().filter(|&&r| self.alive(r)).count();
        if alive < need {
            return Err(Error::Unavailable(format!("need {need} of {} replicas for key {key}, {alive} alive", replicas.len())));
        }
        Ok((replicas, need))
    }
}
