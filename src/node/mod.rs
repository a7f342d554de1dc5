//! A replica's state and its coordinator.
//!
//! [`Node`] holds everything one replica has: its ring, clock, store, hints
//! and links to peers. It answers two kinds of requests, both as plain
//! functions of a decoded message (the sockets belong to [`crate::net::server`]):
//!
//! * **Peer requests** ([`Node::handle_peer`]) — read or write the local cell,
//!   heartbeat, dump. They touch only the local store and never wait on
//!   another replica, so a peer link can never be part of a wait cycle: two
//!   coordinators fanning out to each other cannot deadlock.
//! * **Client requests** ([`Node::handle_client`]) — `get`, `put`, `del` at a
//!   consistency level, plus `status`, `inspect` and `display`. Any replica
//!   coordinates any key, whether or not it holds it.
//!
//! # The path of a write (`put`/`del`)
//!
//! 1. Validate the key and value; find the key's replicas on the ring.
//! 2. **Unavailable** check: if the failure detector knows fewer live replicas
//!    than the level needs, refuse before sending anything.
//! 3. Stamp the write with the hybrid logical clock.
//! 4. Send it to every remote replica at once over the peer links, then apply
//!    it locally if this node is a replica.
//! 5. Wait until the level's acks arrive (answer at once) or the timeout.
//!    Replicas that fail or time out — now or after the answer — get a hint.
//!
//! # The path of a read (`get`)
//!
//! 1–2. As for a write.
//! 3. Ask every replica (remote first, then local) for its version.
//! 4. Wait for the level's replies; take the newest.
//! 5. At QUORUM and ALL, replicas that replied with something older are
//!    repaired *before* the answer (blocking read repair, as Cassandra 4), so
//!    quorum reads are monotonic.
//! 6. Once every replica replied or timed out, any other stale replica —
//!    including one whose reply came after the answer — is repaired in the
//!    background by the repair worker.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, unbounded};
use log::{debug, info};

use crate::cluster::ring::Ring;
use crate::config::NodeConfig;
use crate::coordinator::call::{Answer, Budget, Call, Command, Executor, GatherMachine, ReadMachine, WriteMachine};
use crate::coordinator::consistency::{Consistency, Decision};
use crate::coordinator::readbatch::{QueuedRead, ReadBatcher};
use crate::error::{Error, Result};
use crate::net::conn::{ClientConn, ReplyTo};
use crate::net::fault::Faults;
use crate::net::link::{IgnoreReply, PeerLink, ReplySink};
use crate::proto::{self, request, response};
use crate::storage::cell::Version;
use crate::storage::hints::HintStore;
use crate::storage::hlc::{Hlc, Timestamp};
use crate::storage::store::Store;
use crate::storage::wal::{Wal, wall_micros};
use crate::validate::{validate_client_body, validate_key, validate_peer_body};

/// A read repair for the repair worker.
#[derive(Debug, Clone)]
pub struct RepairJob {
    /// Node index to repair.
    pub target: usize,
    /// The key.
    pub key: u8,
    /// The version to send.
    pub version: Version,
}

/// A peer write applied to the store but not yet durable.
#[derive(Debug, Clone, Copy)]
pub struct PendingAck {
    /// Log position to commit.
    pub pos: u64,
    /// The key written.
    pub key: u8,
    /// The version's timestamp.
    pub ts: Timestamp,
}

/// The answer to a request.
pub struct PeerReply {
    /// The reply to send.
    pub body: response::Body,
    /// Set for peer writes: commit before sending.
    pub commit: Option<PendingAck>,
    /// Work to do once the reply is on the wire.
    pub after: Option<Deferred>,
}

/// A request's answer: now, or later from the call itself (see [`crate::net::conn`]).
pub enum Answered<T> {
    /// The coordinator has the answer.
    Now(T),
    /// The call will answer the client when it settles; the worker must
    /// [`finish`](Unfinished::finish) it once that reply is out.
    Later(Unfinished),
}

/// A call whose client reply was deferred.
pub enum Unfinished {
    /// A read.
    Read(Arc<Call<ReadMachine>>, Instant),
    /// A write.
    Write(Arc<Call<WriteMachine>>, Instant),
}

impl Unfinished {
    /// The call's deadline.
    pub fn deadline(&self) -> Instant {
        match self {
            Unfinished::Read(_, d) | Unfinished::Write(_, d) => *d,
        }
    }

    /// After the reply is out: lets the call finish in the background, or waits
    /// for it if the background budget is full (see [`Call::finish`]).
    pub fn finish(self) {
        match self {
            Unfinished::Read(call, deadline) => call.finish(deadline),
            Unfinished::Write(call, deadline) => call.finish(deadline),
        }
    }
}

/// Work a coordinator does after its reply has been written.
pub enum Deferred {
    /// A read at ONE answered from this replica's own copy still asks the other
    /// replicas, for read repair; sending after the reply keeps those sends off
    /// the client's latency.
    ReadFanout {
        /// The read's call (already answered).
        call: Arc<Call<ReadMachine>>,
        /// The key.
        key: u8,
        /// The read's deadline.
        deadline: Instant,
    },
}

impl Deferred {
    /// Does the work.
    pub fn run(self, node: &Node) {
        match self {
            Deferred::ReadFanout { call, key, deadline } => {
                for (slot, &t) in node.ring.replicas(key).iter().enumerate() {
                    if t != node.me {
                        node.read_batcher.push(t, QueuedRead { call: call.clone(), slot, key, deadline });
                    }
                }
                call.finish(deadline);
            }
        }
    }
}

impl PeerReply {
    /// A reply with nothing to commit.
    pub fn of(body: response::Body) -> Self {
        PeerReply { body, commit: None, after: None }
    }

    /// An error reply.
    pub fn error(e: Error) -> Self {
        PeerReply::of(response::Body::Error(e.to_proto()))
    }
}

/// The receiving ends of the node's background channels, for the server's workers.
pub struct Workers {
    /// Read repairs to send.
    pub repairs: Receiver<RepairJob>,
    /// Indexes of peers that just came up (hint replay).
    pub peer_up: Receiver<usize>,
}

/// One replica.
pub struct Node {
    /// Settings.
    pub cfg: NodeConfig,
    /// The ring.
    pub ring: Ring,
    /// This node's index in the ring.
    pub me: usize,
    /// The write clock.
    pub clock: Hlc,
    /// The local cells.
    pub store: Store,
    /// Hints held for peers.
    pub hints: HintStore,
    /// Links to peers, by ring index (`None` at `me`).
    pub links: Vec<Option<PeerLink>>,
    /// Set when the node stops.
    pub shutdown: AtomicBool,
    /// Bytes held by calls finishing in the background.
    pub budget: Arc<Budget>,
    /// Read-repair reads queued per peer.
    pub read_batcher: ReadBatcher,
    /// Injected faults (`--enable-fault-injection`).
    pub faults: Arc<Faults>,
    /// Every node's name by ring index, shared with calls for their error messages.
    names: Arc<[String]>,
    /// The write-ahead log (`None` in memory).
    pub wal: Option<Arc<Wal>>,
    ack_log: Option<parking_lot::Mutex<std::fs::File>>,
    repair_tx: Sender<RepairJob>,
    /// Sender side of the peer-up channel, handed to links.
    pub peer_up_tx: Sender<usize>,
    ignore: Arc<dyn ReplySink>,
}

/// `display` shows at most this many bytes of each value, so a dump of all 256
/// cells stays far below any frame limit.
pub const MAX_DISPLAY_VALUE: u32 = 1024;

/// Cuts `s` to at most `max` bytes on a character boundary; says whether it cut.
fn truncate(s: &mut String, max: usize) -> bool {
    if s.len() <= max {
        return false;
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    s.truncate(end);
    true
}

impl Node {
    /// Builds the node `cfg.name` of `ring`; its links start down.
    pub fn new(cfg: NodeConfig, ring: Ring) -> Result<(Arc<Node>, Workers)> {
        let me = ring.index_of(&cfg.name).ok_or_else(|| {
            let names: Vec<&str> = ring.nodes().iter().map(|n| n.name.as_str()).collect();
            Error::Config(format!("{} is not in the cluster file (it lists {})", cfg.name, names.join(", ")))
        })?;
        let faults = Arc::new(Faults::new(ring.len(), cfg.enable_fault_injection));
        let mut links = Vec::with_capacity(ring.len());
        for (i, n) in ring.nodes().iter().enumerate() {
            links.push(if i == me { None } else { Some(PeerLink::new(i, n.name.clone(), n.socket_addr()?, faults.clone())) });
        }
        let (repair_tx, repairs) = unbounded();
        let (peer_up_tx, peer_up) = unbounded();
        let names: Vec<String> = ring.nodes().iter().map(|n| n.name.clone()).collect();
        let (wal, recovered) = match &cfg.data_dir {
            Some(dir) => {
                let (wal, rec) = Wal::open(dir, cfg.fsync)?;
                (Some(Arc::new(wal)), Some(rec))
            }
            None => (None, None),
        };
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
            names: names.iter().cloned().collect(),
            read_batcher: ReadBatcher::new(ring.len()),
            faults,
            budget: Arc::new(Budget::new(cfg.max_background_bytes)),
            clock: Hlc::new(ring.node(me).id),
            store: Store::new(wal.clone()),
            hints: HintStore::new(names, cfg.hint_window, cfg.max_hint_bytes, wal.clone()),
            wal,
            ack_log,
            links,
            me,
            ring,
            cfg,
            shutdown: AtomicBool::new(false),
            repair_tx,
            peer_up_tx,
            ignore: Arc::new(IgnoreReply),
        };
        if let Some(rec) = recovered {
            let replayed = !rec.records.is_empty();
            node.recover(rec);
            // Fold what was replayed into a snapshot, so the logs of earlier runs go away
            // instead of piling up (and being replayed) start after start.
            if replayed {
                node.snapshot()?;
            }
        }
        Ok((Arc::new(node), Workers { repairs, peer_up }))
    }

    /// Loads what the log and snapshot hold into the store and hints.
    fn recover(&self, rec: crate::storage::wal::Recovered) {
        use proto::log_record::Kind;
        let mut cells = 0;
        let mut newest = Timestamp::default();
        let mut load_cell = |c: proto::CellWrite| {
            if let (Ok(key), Some(v)) = (u8::try_from(c.key), c.version) {
                let v = Version::from_proto(v);
                newest = newest.max(v.ts);
                self.store.load(key, v);
                cells += 1;
            }
        };
        let mut hints = 0;
        let mut load_hint = |h: proto::HintAdd| {
            if let (Ok(key), Some(v)) = (u8::try_from(h.key), h.version) {
                self.hints.load(&h.target, key, Version::from_proto(v), h.created_micros);
                hints += 1;
            }
        };
        if let Some(snap) = rec.snapshot {
            for c in snap.cells {
                load_cell(c);
            }
            for h in snap.hints {
                load_hint(h);
            }
        }
        for r in rec.records {
            match r.kind {
                Some(Kind::Cell(c)) => load_cell(c),
                Some(Kind::HintAdd(h)) => load_hint(h),
                Some(Kind::HintDone(d)) => {
                    if let Ok(key) = u8::try_from(d.key) {
                        self.hints.load_delivered(&d.target, key, Timestamp { micros: d.micros, node: d.node });
                    }
                }
                None => {}
            }
        }
        // Writes after a restart must be stamped after what this node wrote before it.
        let _ = self.clock.observe(newest, Duration::MAX);
        info!("{}: recovered {cells} cell write(s) and {hints} hint record(s); {} hint(s) held", self.cfg.name, self.hints.total());
    }

    /// Takes a snapshot: rotates the log, writes every cell and hint, drops the old logs.
    pub fn snapshot(&self) -> Result<u64> {
        let Some(wal) = &self.wal else { return Ok(0) };
        let next_log_seq = wal.rotate()?;
        let cells =
            self.store.snapshot().into_iter().map(|(k, v)| proto::CellWrite { key: k as u32, version: Some(v.to_proto()) }).collect();
        let snap = proto::Snapshot { next_log_seq, cells, hints: self.hints.export(), taken_micros: wall_micros() };
        let bytes = wal.install_snapshot(&snap)?;
        debug!(
            "snapshot of {} cell(s) and {} hint(s), {bytes} bytes; logs before {next_log_seq} removed",
            snap.cells.len(),
            snap.hints.len()
        );
        Ok(bytes)
    }

    /// This replica's storage, as `status` shows it.
    pub fn storage_stats(&self) -> proto::StorageStats {
        match &self.wal {
            Some(wal) => wal.stats(),
            None => proto::StorageStats { in_memory: true, ..Default::default() },
        }
    }

    /// Applies a write to the local store and waits until it is durable.
    pub fn apply_local(&self, key: u8, version: Version) -> Result<bool> {
        let ts = version.ts;
        let changed = self.store.apply_durably(key, version)?;
        self.note_ack(key, ts);
        Ok(changed)
    }

    /// Test hook: records that this replica acknowledged `ts` for `key` (after it was durable).
    pub fn note_ack(&self, key: u8, ts: Timestamp) {
        if let Some(f) = &self.ack_log {
            use std::io::Write;
            let _ = writeln!(f.lock(), "{key} {} {}", ts.micros, ts.node);
        }
    }

    /// Asks every thread of the node to stop.
    pub fn stop(&self) {
        self.shutdown.store(true, Ordering::Release);
        for link in self.links.iter().flatten() {
            link.wake();
        }
        self.faults.wake();
    }

    /// This node's name.
    pub fn name(&self) -> &str {
        &self.cfg.name
    }

    /// The link to node `i` (`None` for this node).
    pub fn link(&self, i: usize) -> Option<&PeerLink> {
        self.links[i].as_ref()
    }

    /// Whether the failure detector believes node `i` alive (this node always is).
    pub fn alive(&self, i: usize) -> bool {
        self.link(i).is_none_or(PeerLink::is_up)
    }

    fn names_of(&self, targets: &[usize]) -> Vec<&str> {
        targets.iter().map(|&t| self.ring.node(t).name.as_str()).collect()
    }

    fn check_available(&self, key: u8, level: Consistency) -> Result<(&[usize], usize)> {
        let replicas = self.ring.replicas(key);
        let need = level.required(replicas.len());
        let alive = replicas.iter().filter(|&&r| self.alive(r)).count();
        if alive < need {
            return Err(Error::Unavailable(format!("need {need} of {} replicas for key {key}, {alive} alive", replicas.len())));
        }
        Ok((replicas, need))
    }

    fn deadline(&self) -> Instant {
        Instant::now() + self.cfg.request_timeout
    }

    /// Marks the connection's reply as deferred and says where it goes.
    fn defer(&self, later: Option<(&Arc<ClientConn>, u64)>, deadline: Instant) -> Option<ReplyTo> {
        let (conn, id) = later?;
        conn.begin();
        Some(ReplyTo { conn: conn.clone(), id, deadline })
    }

    /// Writes `value` (`None`: delete) to `key` at `level`; returns the write's timestamp and acks.
    /// With `later` (a client connection and the request's id), the
    /// coordinator does not wait: the call answers the client when it
    /// settles, and this returns [`Answered::Later`].
    pub fn write(
        self: &Arc<Self>,
        key: u8,
        value: Option<String>,
        level: Consistency,
        later: Option<(&Arc<ClientConn>, u64)>,
    ) -> Result<Answered<(Timestamp, usize)>> {
        let (replicas, need) = self.check_available(key, level)?;
        let version = Version { ts: self.clock.now(), value };
        let hint = self.cfg.mode.hinted_handoff();
        let mut machine = WriteMachine::new(key, version.clone(), self.ring.replica_set(key), self.names.clone(), need, hint);
        let deadline = self.deadline();
        let deferred = later.is_some();
        if let Some(to) = self.defer(later, deadline) {
            machine = machine.reply_to(to);
        }
        let call = Call::new(machine, self.clone() as Arc<dyn Executor>, self.budget.clone());
        self.fan_out_write(&call, replicas, key, &version, deadline);
        if deferred {
            return Ok(Answered::Later(Unfinished::Write(call, deadline)));
        }
        let result = call.wait(deadline).result(false);
        call.finish(deadline);
        result.map(Answered::Now)
    }

    /// Sends `version` to each of `targets` (slot = position), remote ones first.
    fn fan_out_write<M: crate::coordinator::call::Machine + 'static>(
        &self,
        call: &Arc<Call<M>>,
        targets: &[usize],
        key: u8,
        version: &Version,
        deadline: Instant,
    ) {
        let mut local = None;
        for (slot, &t) in targets.iter().enumerate() {
            match self.link(t) {
                Some(link) => {
                    let body = request::Body::ReplicaWrite(proto::ReplicaWrite { key: key as u32, version: Some(version.to_proto()) });
                    link.send(body, call.clone(), slot, deadline);
                }
                None => local = Some(slot),
            }
        }
        if let Some(slot) = local {
            let result = self.apply_local(key, version.clone()).map(|applied| response::Body::ReplicaWrite(proto::WriteAck { applied }));
            call.deliver(slot, result);
        }
    }

    /// Reads `key` at `level`; returns the newest version among the replies (tombstones included).
    /// At ONE on a replica of the key, the local copy answers and the other
    /// replicas are asked afterwards: the returned [`Deferred`] must be run once
    /// the reply is sent. With `later` (a client connection and the request's
    /// id), a read at ONE of a key this node does not hold is answered by the
    /// call when it settles ([`Answered::Later`]); other reads ignore `later`.
    pub fn read(
        self: &Arc<Self>,
        key: u8,
        level: Consistency,
        later: Option<(&Arc<ClientConn>, u64)>,
    ) -> Result<Answered<(Option<Version>, Option<Deferred>)>> {
        let (replicas, need) = self.check_available(key, level)?;
        let repair = self.cfg.mode.read_repair();
        let mut machine = ReadMachine::new(key, self.ring.replica_set(key), self.names.clone(), need, repair);
        let local_slot = replicas.iter().position(|&t| t == self.me);
        if let (Consistency::One, Some(slot)) = (level, local_slot) {
            let version = self.store.get(key);
            if let Some(v) = &version {
                let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
            }
            if !repair {
                // Without read repair the other replicas' versions would change nothing.
                return Ok(Answered::Now((version, None)));
            }
            let call = Call::new(machine, self.clone() as Arc<dyn Executor>, self.budget.clone());
            let deadline = self.deadline();
            call.deliver(slot, Ok(response::Body::ReplicaRead(proto::ReadResult { version: version.as_ref().map(Version::to_proto) })));
            call.with(|m, out| m.answer(out));
            return Ok(Answered::Now((version, Some(Deferred::ReadFanout { call, key, deadline }))));
        }
        let later = later.filter(|_| level == Consistency::One);
        let deadline = self.deadline();
        let deferred = later.is_some();
        if let Some(to) = self.defer(later, deadline) {
            machine = machine.reply_to(to);
        }
        let call = Call::new(machine, self.clone() as Arc<dyn Executor>, self.budget.clone());
        // At ONE (this node holds no copy here) one live replica is asked
        // directly and the others through the read batcher: every replica is
        // still asked and any reply answers the client, but under load the
        // other reads ride in batches instead of costing a message each. If
        // the one asked directly (the first live one in ring order) is slow,
        // the batched replies answer: it costs the batcher's gather window,
        // not a timeout.
        let direct = if level == Consistency::One { replicas.iter().position(|&t| self.alive(t)) } else { None };
        for (slot, &t) in replicas.iter().enumerate() {
            match self.link(t) {
                Some(_) if direct.is_some_and(|d| d != slot) => {
                    self.read_batcher.push(t, QueuedRead { call: call.clone(), slot, key, deadline });
                }
                Some(link) => link.send(request::Body::ReplicaRead(proto::ReplicaRead { key: key as u32 }), call.clone(), slot, deadline),
                None => {}
            }
        }
        if let Some(slot) = local_slot {
            let version = self.store.get(key).map(|v| v.to_proto());
            call.deliver(slot, Ok(response::Body::ReplicaRead(proto::ReadResult { version })));
        }
        if deferred {
            return Ok(Answered::Later(Unfinished::Read(call, deadline)));
        }
        let m = call.wait(deadline);
        let outcome = m.result(false).map(|newest| {
            let stale = if repair && level != Consistency::One && newest.is_some() { m.stale_replied() } else { Vec::new() };
            (newest, stale)
        });
        drop(m);
        let (newest, stale) = match outcome {
            Ok(x) => x,
            Err(e) => {
                call.with(|m, out| m.answer(out));
                call.finish(deadline);
                return Err(e);
            }
        };
        if let Some(newest) = &newest {
            // A later write through this coordinator must be stamped after what it read.
            let _ = self.clock.observe(newest.ts, self.cfg.max_clock_offset);
        }
        if let (Some(newest), false) = (&newest, stale.is_empty()) {
            let targets: Vec<usize> = stale.iter().map(|&(_, t)| t).collect();
            if let Err(e) = self.blocking_repair(key, newest, &targets, deadline) {
                // Not marked repaired: the background pass will try these replicas again.
                call.with(|m, out| m.answer(out));
                call.finish(deadline);
                return Err(e);
            }
            call.with(|m, out| {
                for &(slot, _) in &stale {
                    m.mark_repaired(slot, newest.ts);
                }
                m.answer(out)
            });
        } else {
            call.with(|m, out| m.answer(out));
        }
        call.finish(deadline);
        Ok(Answered::Now((newest, None)))
    }

    /// Writes `version` to every one of `targets` and waits for all their acks (no hints).
    fn blocking_repair(self: &Arc<Self>, key: u8, version: &Version, targets: &[usize], deadline: Instant) -> Result<()> {
        debug!("blocking read repair of key {key} on {:?}", self.names_of(targets));
        let machine = WriteMachine::new(key, version.clone(), targets.to_vec(), self.names.clone(), targets.len(), false);
        let call = Call::new(machine, self.clone() as Arc<dyn Executor>, self.budget.clone());
        self.fan_out_write(&call, targets, key, version, deadline);
        let m = call.wait(deadline);
        match m.tally().decision() {
            Decision::Reached => Ok(()),
            _ => Err(Error::Timeout(format!(
                "read repair of key {key}: {} of {} stale replicas acked in time{}",
                m.tally().acks(),
                targets.len(),
                m.tally().failures().suffix()
            ))),
        }
    }

    /// Asks each of `targets` the same question; `None` where a target did not answer in time.
    fn gather(
        self: &Arc<Self>,
        targets: &[usize],
        body: &request::Body,
        local: impl FnOnce() -> response::Body,
    ) -> Vec<Option<crate::net::link::PeerResult>> {
        let call = Call::new(GatherMachine::new(targets.len()), self.clone() as Arc<dyn Executor>, self.budget.clone());
        let deadline = self.deadline();
        let mut local_slot = None;
        for (slot, &t) in targets.iter().enumerate() {
            match self.link(t) {
                Some(link) => link.send(body.clone(), call.clone(), slot, deadline),
                None => local_slot = Some(slot),
            }
        }
        if let Some(slot) = local_slot {
            call.deliver(slot, Ok(local()));
        }
        call.wait(deadline).take()
    }

    /// Each replica of `key`: its version, or why it could not be asked.
    pub fn inspect(self: &Arc<Self>, key: u8) -> proto::InspectResult {
        let targets = self.ring.replicas(key).to_vec();
        let body = request::Body::ReplicaRead(proto::ReplicaRead { key: key as u32 });
        let results = self.gather(&targets, &body, || {
            response::Body::ReplicaRead(proto::ReadResult { version: self.store.get(key).map(|v| v.to_proto()) })
        });
        let replicas = targets
            .iter()
            .zip(results)
            .map(|(&t, r)| {
                let name = self.ring.node(t).name.clone();
                match r {
                    Some(Ok(response::Body::ReplicaRead(rr))) => {
                        proto::InspectEntry { name, reachable: true, version: rr.version, error: String::new() }
                    }
                    Some(Ok(other)) => proto::InspectEntry { name, error: format!("unexpected reply {other:?}"), ..Default::default() },
                    Some(Err(e)) => proto::InspectEntry { name, error: e.message().to_string(), ..Default::default() },
                    None => proto::InspectEntry { name, error: "no reply in time".into(), ..Default::default() },
                }
            })
            .collect();
        proto::InspectResult { key: key as u32, replicas }
    }

    /// What every node holds.
    pub fn display(self: &Arc<Self>, max_value_len: u32) -> proto::DisplayResult {
        let targets: Vec<usize> = (0..self.ring.len()).collect();
        let body = request::Body::ReplicaDump(proto::ReplicaDump { max_value_len });
        let results = self.gather(&targets, &body, || response::Body::ReplicaDump(self.dump(max_value_len)));
        let replicas = targets
            .iter()
            .zip(results)
            .map(|(&t, r)| {
                let (range_start, range_end) = self.ring.range(t);
                let mut e = proto::ReplicaDumpEntry {
                    name: self.ring.node(t).name.clone(),
                    range_start: range_start as u32,
                    range_end: range_end as u32,
                    ..Default::default()
                };
                match r {
                    Some(Ok(response::Body::ReplicaDump(d))) => {
                        e.reachable = true;
                        e.cells = d.cells;
                    }
                    Some(Ok(other)) => e.error = format!("unexpected reply {other:?}"),
                    Some(Err(err)) => e.error = err.message().to_string(),
                    None => e.error = "no reply in time".into(),
                }
                e
            })
            .collect();
        proto::DisplayResult { replicas, rf: self.ring.rf() as u32 }
    }

    fn dump(&self, max_value_len: u32) -> proto::DumpResult {
        let cells = self
            .store
            .snapshot()
            .into_iter()
            .map(|(key, v)| {
                let mut pv = v.to_proto();
                let truncated = truncate(&mut pv.value, max_value_len as usize);
                proto::KeyVersion { key: key as u32, version: Some(pv), truncated }
            })
            .collect();
        proto::DumpResult { cells }
    }

    /// The coordinator's view of the cluster.
    pub fn status(&self) -> proto::StatusResult {
        let replicas = self
            .ring
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (s, e) = self.ring.range(i);
                let storage = if i == self.me { Some(self.storage_stats()) } else { self.link(i).and_then(PeerLink::storage) };
                proto::ReplicaStatus {
                    storage,
                    name: n.name.clone(),
                    address: n.address(),
                    up: self.alive(i),
                    range_start: s as u32,
                    range_end: e as u32,
                    hints: self.hints.count(i) as u64,
                    is_self: i == self.me,
                }
            })
            .collect();
        proto::StatusResult {
            coordinator: self.cfg.name.clone(),
            rf: self.ring.rf() as u32,
            epoch: self.ring.epoch(),
            mode: self.cfg.mode.to_string(),
            replicas,
        }
    }

    /// Answers a client request (this node coordinates).
    /// With `later` (the client's connection and the request's id), a request
    /// whose answer must come from other replicas may be answered by its call
    /// instead ([`Answered::Later`]; see [`crate::net::conn`]).
    pub fn handle_client(self: &Arc<Self>, body: request::Body, later: Option<(&Arc<ClientConn>, u64)>) -> Answered<PeerReply> {
        match self.client_request(body, later) {
            Ok(r) => r,
            Err(e) => Answered::Now(PeerReply::error(e)),
        }
    }

    fn client_request(self: &Arc<Self>, body: request::Body, later: Option<(&Arc<ClientConn>, u64)>) -> Result<Answered<PeerReply>> {
        use request::Body as B;
        // Every field check lives in `validate`, shared with the tests and the fuzz target.
        validate_client_body(&body, self.cfg.max_value_bytes)?;
        let mut after = None;
        let body = match body {
            B::Ping(_) => response::Body::Pong(proto::Pong { name: self.cfg.name.clone() }),
            B::Get(g) => {
                let key = validate_key(g.key)?;
                let level = Consistency::from_proto(g.consistency)?;
                let (found, deferred) = match self.read(key, level, later)? {
                    Answered::Now(x) => x,
                    Answered::Later(u) => return Ok(Answered::Later(u)),
                };
                after = deferred;
                get_body(found)
            }
            B::Put(p) => {
                let key = validate_key(p.key)?;
                let level = Consistency::from_proto(p.consistency)?;
                match self.write(key, Some(p.value), level, later)? {
                    Answered::Now((ts, acks)) => write_body(ts, acks),
                    Answered::Later(u) => return Ok(Answered::Later(u)),
                }
            }
            B::Delete(d) => {
                let key = validate_key(d.key)?;
                let level = Consistency::from_proto(d.consistency)?;
                match self.write(key, None, level, later)? {
                    Answered::Now((ts, acks)) => write_body(ts, acks),
                    Answered::Later(u) => return Ok(Answered::Later(u)),
                }
            }
            B::Status(_) => response::Body::Status(self.status()),
            B::Inspect(i) => response::Body::Inspect(self.inspect(validate_key(i.key)?)),
            B::Display(d) => response::Body::Display(self.display(d.max_value_len.min(MAX_DISPLAY_VALUE))),
            B::Fault(f) => response::Body::Fault(self.faults.handle(f, &self.ring, self.me)?),
            B::Hello(_) | B::ReplicaRead(_) | B::ReplicaWrite(_) | B::Heartbeat(_) | B::ReplicaDump(_) | B::ReplicaReadBatch(_) => {
                return Err(Error::InvalidRequest(
                    "replica-to-replica request on a client connection; a replica opens with PeerHello".into(),
                ));
            }
        };
        Ok(Answered::Now(PeerReply { body, commit: None, after }))
    }

    /// Checks a peer's handshake: same ring, a known name that is not ours.
    pub fn check_hello(&self, h: &proto::PeerHello) -> Result<()> {
        if h.ring_fingerprint != self.ring.fingerprint() || h.epoch != self.ring.epoch() {
            return Err(Error::RingMismatch(format!(
                "{} has ring [{}] but {} has [{}]",
                h.name,
                h.ring_description,
                self.cfg.name,
                self.ring.describe()
            )));
        }
        match self.ring.index_of(&h.name) {
            Some(i) if i != self.me => Ok(()),
            Some(_) => Err(Error::RingMismatch(format!("peer claims to be {}, which is this replica", h.name))),
            None => Err(Error::RingMismatch(format!("{} is not in the ring", h.name))),
        }
    }

    /// Our handshake.
    pub fn hello(&self) -> proto::PeerHello {
        proto::PeerHello {
            name: self.cfg.name.clone(),
            ring_fingerprint: self.ring.fingerprint(),
            ring_description: self.ring.describe(),
            epoch: self.ring.epoch(),
        }
    }

    /// Answers a peer request: local work only, never waits on another replica.
    /// A write's reply must not be sent before [`PeerReply::commit`] is durable.
    pub fn handle_peer(&self, body: request::Body) -> PeerReply {
        match self.peer_request(body) {
            Ok(r) => r,
            Err(e) => PeerReply::error(e),
        }
    }

    fn peer_request(&self, body: request::Body) -> Result<PeerReply> {
        use request::Body as B;
        validate_peer_body(&body, self.cfg.max_value_bytes)?;
        let body = match body {
            B::ReplicaRead(r) => {
                let key = validate_key(r.key)?;
                response::Body::ReplicaRead(proto::ReadResult { version: self.store.get(key).map(|v| v.to_proto()) })
            }
            B::ReplicaWrite(w) => {
                let key = validate_key(w.key)?;
                let v = w.version.ok_or_else(|| Error::InvalidRequest("replica write without a version".into()))?;
                let version = Version::from_proto(v);
                if let Err(ahead) = self.clock.observe(version.ts, self.cfg.max_clock_offset) {
                    return Err(Error::InvalidRequest(format!(
                        "write to key {key} is stamped {} ms ahead of {}'s clock (the limit is {} ms); check the clocks",
                        ahead.as_millis(),
                        self.cfg.name,
                        self.cfg.max_clock_offset.as_millis()
                    )));
                }
                let ts = version.ts;
                let applied = self.store.apply(key, version)?;
                return Ok(PeerReply {
                    body: response::Body::ReplicaWrite(proto::WriteAck { applied: applied.changed }),
                    commit: Some(PendingAck { pos: applied.pos, key, ts }),
                    after: None,
                });
            }
            B::Heartbeat(_) => {
                response::Body::Heartbeat(proto::HeartbeatAck { name: self.cfg.name.clone(), storage: Some(self.storage_stats()) })
            }
            B::ReplicaDump(d) => response::Body::ReplicaDump(self.dump(d.max_value_len.min(MAX_DISPLAY_VALUE))),
            B::ReplicaReadBatch(b) => {
                let results = b
                    .keys
                    .iter()
                    .map(|&k| validate_key(k).map(|key| proto::ReadResult { version: self.store.get(key).map(|v| v.to_proto()) }))
                    .collect::<Result<Vec<_>>>()?;
                response::Body::ReplicaReadBatch(proto::ReadBatchResult { results })
            }
            B::Ping(_) => response::Body::Pong(proto::Pong { name: self.cfg.name.clone() }),
            B::Hello(_) => return Err(Error::InvalidRequest("second PeerHello on one link".into())),
            B::Get(_) | B::Put(_) | B::Delete(_) | B::Status(_) | B::Inspect(_) | B::Display(_) | B::Fault(_) => {
                return Err(Error::InvalidRequest("client request on a replica link; open a client connection".into()));
            }
        };
        Ok(PeerReply::of(body))
    }

    /// Makes a batch of peer writes durable (one commit for all), then records their acks.
    /// On failure each write's reply becomes the storage error: nothing unlogged is acknowledged.
    pub fn commit_peer_replies(&self, replies: &mut [(u64, PeerReply)]) {
        let pos = replies.iter().filter_map(|(_, r)| r.commit.map(|c| c.pos)).max().unwrap_or(0);
        if !replies.iter().any(|(_, r)| r.commit.is_some()) {
            return;
        }
        match self.store.commit(pos) {
            Ok(()) => {
                for (_, r) in replies.iter() {
                    if let Some(c) = r.commit {
                        self.note_ack(c.key, c.ts);
                    }
                }
            }
            Err(e) => {
                for (_, r) in replies.iter_mut() {
                    if r.commit.take().is_some() {
                        r.body = response::Body::Error(e.to_proto());
                    }
                }
            }
        }
    }

    /// Sends one read repair (the repair worker's job).
    pub fn send_repair(&self, job: RepairJob) {
        match self.link(job.target) {
            None => {
                if let Err(e) = self.apply_local(job.key, job.version) {
                    debug!("read repair of key {} on this replica failed: {e}", job.key);
                }
            }
            Some(link) => {
                debug!("read repair: key {} to {}", job.key, link.name);
                let body = request::Body::ReplicaWrite(proto::ReplicaWrite { key: job.key as u32, version: Some(job.version.to_proto()) });
                link.send(body, self.ignore.clone(), 0, self.deadline());
            }
        }
    }

    /// Replays the hints held for `target`, throttled; stops at the first failure.
    pub fn replay_hints(self: &Arc<Self>, target: usize) {
        let Some(link) = self.link(target) else { return };
        if !link.is_up() {
            return;
        }
        let hints = self.hints.pending(target);
        if hints.is_empty() {
            return;
        }
        info!("replaying {} hint(s) to {}", hints.len(), link.name);
        let pace = Duration::from_secs(1) / self.cfg.hint_rate.max(1);
        let mut delivered = 0;
        for (key, version) in hints {
            if self.shutdown.load(Ordering::Acquire) {
                return;
            }
            let call = Call::new(GatherMachine::new(1), self.clone() as Arc<dyn Executor>, self.budget.clone());
            let body = request::Body::ReplicaWrite(proto::ReplicaWrite { key: key as u32, version: Some(version.to_proto()) });
            let deadline = self.deadline();
            link.send(body, call.clone(), 0, deadline);
            let result = call.wait(deadline).take().pop().flatten();
            match result {
                Some(Ok(response::Body::ReplicaWrite(_))) => {
                    self.hints.delivered(target, key, version.ts);
                    delivered += 1;
                }
                other => {
                    info!("hint replay to {} paused after {delivered} hint(s): {other:?}", link.name);
                    return;
                }
            }
            std::thread::sleep(pace);
        }
        info!("replayed {delivered} hint(s) to {}", link.name);
    }
}

/// A client's `Get` reply: the value and its version, or nothing (a tombstone is nothing).
fn get_body(found: Option<Version>) -> response::Body {
    let found = found.filter(|v| !v.is_tombstone());
    response::Body::Get(proto::GetResult {
        value: found.as_ref().and_then(|v| v.value.clone()),
        version: found.map(|v| proto::Version { value: String::new(), ..v.to_proto() }),
    })
}

/// A client's `Put`/`Delete` reply.
fn write_body(ts: Timestamp, acks: usize) -> response::Body {
    response::Body::Write(proto::WriteResult { micros: ts.micros, node: ts.node, acks: acks as u32 })
}

impl Executor for Node {
    fn execute(&self, command: Command) {
        match command {
            Command::Hint { target, key, version } => {
                let down_for = self.link(target).map_or(Duration::ZERO, PeerLink::down_for);
                if down_for > self.cfg.hint_window {
                    debug!("not hinting key {key} for {}: down for {down_for:?}, past the hint window", self.ring.node(target).name);
                    return;
                }
                if self.hints.add(target, key, version) == crate::storage::hints::Added::Stored {
                    // Hints are rare; write each one out at once so a crash right after keeps it.
                    if let Some(wal) = &self.wal {
                        wal.flush();
                    }
                }
            }
            Command::Repair { target, key, version } => {
                let _ = self.repair_tx.send(RepairJob { target, key, version });
            }
            Command::Answer { to, answer } => {
                let body = match answer {
                    Answer::Read(Ok(found)) => {
                        if let Some(v) = &found {
                            // A later write through this coordinator must be stamped after what it read.
                            let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
                        }
                        get_body(found)
                    }
                    Answer::Write(Ok((ts, acks))) => write_body(ts, acks),
                    Answer::Read(Err(e)) | Answer::Write(Err(e)) => response::Body::Error(e.to_proto()),
                };
                to.conn.answer(to.id, body);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::NodeInfo;
    use crate::storage::wal::FsyncMode;
    use std::sync::Barrier;

    fn ring() -> Ring {
        let nodes =
            (0..3).map(|i| NodeInfo { name: format!("n{i}"), host: "127.0.0.1".into(), port: 1 + i as u16, id: i as u32 }).collect();
        Ring::new(nodes, 3, 1).unwrap()
    }

    fn node(dir: &std::path::Path) -> Arc<Node> {
        let mut cfg = NodeConfig::new("n0", "127.0.0.1".parse().unwrap(), 1);
        cfg.data_dir = Some(dir.to_path_buf());
        cfg.fsync = FsyncMode::Never;
        Node::new(cfg, ring()).unwrap().0
    }

    /// Writers, hint makers and a snapshot loop run at once; after a reopen every
    /// acknowledged write and every hint is there.
    #[test]
    fn snapshots_under_concurrent_writes_and_hints_lose_nothing() {
        let dir = std::env::temp_dir().join(format!("qkv-node-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let n = node(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let barrier = Arc::new(Barrier::new(5));
        let writers: Vec<_> = (0..4u8)
            .map(|t| {
                let (n, barrier) = (n.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..300u64 {
                        let key = t * 64 + (i % 64) as u8;
                        let v = Version::value(Timestamp { micros: i + 1, node: t as u32 }, format!("{t}-{i}"));
                        n.apply_local(key, v.clone()).unwrap();
                        if i % 10 == 0 {
                            n.execute(Command::Hint { target: 1 + (t as usize % 2), key, version: v });
                        }
                    }
                })
            })
            .collect();
        let snapper = {
            let (n, stop, barrier) = (n.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut taken = 0;
                while !stop.load(Ordering::Relaxed) {
                    n.snapshot().unwrap();
                    taken += 1;
                }
                taken
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(snapper.join().unwrap() > 0);
        let cells = n.store.snapshot();
        let hints = (n.hints.count(1), n.hints.count(2));
        assert_eq!(cells.len(), 256);
        drop(n);
        let again = node(&dir);
        assert_eq!(again.store.snapshot(), cells, "every cell survives the reopen");
        assert_eq!((again.hints.count(1), again.hints.count(2)), hints);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
