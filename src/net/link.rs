//! Links to peers: one multiplexed TCP connection per peer, reused by every request.
//!
//! A [`PeerLink`] is this node's outbound side of the conversation with one
//! peer. Any thread may [`send`](PeerLink::send) a request: it takes the
//! link's write lock just long enough to register the request id in the
//! pending table and write one frame (one `write` syscall). Replies come back
//! on the link's own long-lived thread ([`PeerLink::run`]), which matches each
//! to its pending entry by id and hands it to that request's [`ReplySink`].
//! The coordinator therefore never blocks on a slow peer: it waits on its own
//! call object, which is satisfied by whichever replies arrive first.
//!
//! Every pending entry has a deadline. The node's maintenance thread
//! [`sweeps`](PeerLink::sweep) expired entries and delivers a timeout, so a
//! peer that stops answering (SIGSTOP, a partition) neither leaks entries nor
//! leaves a write unhinted. When the connection breaks, every entry sent on it
//! fails at once.
//!
//! The same thread connects, performs the handshake (`PeerHello`, refused if
//! the two rings differ) and reconnects after a failure. The link is *up*
//! while a handshaken connection exists; the failure detector marks it down
//! when the connection breaks or heartbeats go unanswered for `down_after`.

use std::collections::HashMap;
use std::io::Write;
use std::net::{Shutdown, SocketAddr, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use crossbeam_channel::Sender;
use log::{debug, error, info, warn};
use parking_lot::{Condvar, Mutex};
use prost::Message;

use crate::cluster::ring::NodeId;
use crate::coordinator::peers::ReplySink;
use crate::error::Error;
use crate::message::{PeerResponse, PeerResult};
use crate::net::fault::{Faults, Received};
use crate::net::frame::{FrameReader, append_frame, encode_frame};
use crate::proto::{self, request, response};

/// Keeps the storage stats and metadata epoch a peer sends with each
/// heartbeat ack (any reply is also a sign of life).
#[derive(Default)]
struct HeartbeatSink {
    storage: Mutex<Option<proto::StorageStats>>,
    epoch: AtomicU64,
}

impl ReplySink for HeartbeatSink {
    fn deliver(&self, _slot: usize, result: PeerResult) {
        if let Ok(PeerResponse::Heartbeat { storage, epoch, .. }) = result {
            *self.storage.lock() = storage;
            self.epoch.fetch_max(epoch, Ordering::AcqRel);
        }
    }
}

struct Pending {
    sink: Arc<dyn ReplySink>,
    slot: usize,
    deadline: Instant,
    generation: u64,
}

/// The sending side of the current connection.
///
/// Sends are *flat-combined*: a sender appends its frame to `buf`; if no one is
/// writing it becomes the writer and writes everything buffered (its own frame
/// and any that others appended meanwhile) with one `write`, outside the lock,
/// until the buffer is empty. A sender that finds a writer at work returns at
/// once. Under load one syscall carries many frames and senders never park.
struct Outbox {
    conn: Option<(Arc<TcpStream>, u64)>,
    buf: Vec<u8>,
    writing: bool,
}

/// What a link needs from its node to connect.
pub struct LinkEnv<'a> {
    /// The node (its handshake, made at each connection: the epoch changes).
    pub node: &'a crate::node::Node,
    /// Connect and handshake timeout.
    pub connect_timeout: Duration,
    /// Pause between connection attempts.
    pub retry_interval: Duration,
    /// Largest reply frame accepted.
    pub max_frame: usize,
    /// Set when the node stops.
    pub shutdown: &'a AtomicBool,
    /// Told the peer's id each time its link comes up.
    pub on_up: Sender<NodeId>,
}

/// This node's connection to one peer.
pub struct PeerLink {
    /// The peer's id.
    pub id: NodeId,
    /// The peer's name.
    pub name: String,
    addr: SocketAddr,
    out: Mutex<Outbox>,
    pending: Mutex<HashMap<u64, Pending>>,
    next_id: AtomicU64,
    generation: AtomicU64,
    up: AtomicBool,
    epoch: Instant,
    last_heard_ms: AtomicU64,
    down_since: Mutex<Option<Instant>>,
    wake: (Mutex<()>, Condvar),
    heartbeats: Arc<HeartbeatSink>,
    faults: Arc<Faults>,
    retired: AtomicBool,
}

/// Why a connection attempt failed.
enum ConnectError {
    Io(String),
    Refused(Error),
}

impl PeerLink {
    /// A link to `name` at `addr`, initially down; `faults` are this node's injected faults.
    pub fn new(id: NodeId, name: String, addr: SocketAddr, faults: Arc<Faults>) -> Self {
        PeerLink {
            id,
            name,
            addr,
            out: Mutex::new(Outbox { conn: None, buf: Vec::with_capacity(4096), writing: false }),
            pending: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            generation: AtomicU64::new(0),
            up: AtomicBool::new(false),
            epoch: Instant::now(),
            last_heard_ms: AtomicU64::new(0),
            down_since: Mutex::new(Some(Instant::now())),
            wake: (Mutex::new(()), Condvar::new()),
            heartbeats: Arc::new(HeartbeatSink::default()),
            faults,
            retired: AtomicBool::new(false),
        }
    }

    /// Whether a handshaken connection is open.
    pub fn is_up(&self) -> bool {
        self.up.load(Ordering::Acquire)
    }

    /// How long the link has been down (zero while up).
    pub fn down_for(&self) -> Duration {
        self.down_since.lock().map_or(Duration::ZERO, |t| t.elapsed())
    }

    /// Requests awaiting a reply.
    pub fn in_flight(&self) -> usize {
        self.pending.lock().len()
    }

    /// Sends `body`; its outcome reaches `sink.deliver(slot, …)` exactly once:
    /// the reply, a failure (link down, write failed, connection lost) or a
    /// timeout after `deadline`. A failure to send is delivered before this returns.
    pub fn send(&self, body: request::Body, sink: Arc<dyn ReplySink>, slot: usize, deadline: Instant) {
        let mut o = self.out.lock();
        let Some((_, generation)) = o.conn else {
            drop(o);
            sink.deliver(slot, Err(Error::Failure(format!("{} is down", self.name))));
            return;
        };
        let id = self.next_id.fetch_add(1, Ordering::Relaxed);
        self.pending.lock().insert(id, Pending { sink, slot, deadline, generation });
        let rule = self.faults.rule(self.id);
        if rule.drop_to {
            return; // injected fault: lost on the way; the sweep times the request out
        }
        let request = proto::Request { id, body: Some(body) };
        if !rule.delay_to.is_zero() {
            drop(o);
            let mut bytes = Vec::new();
            append_frame(&request, &mut bytes);
            self.faults.delay_frames(Instant::now() + rule.delay_to, self.id, generation, bytes);
            return;
        }
        append_frame(&request, &mut o.buf);
        self.write_out(o);
    }

    /// Sends each `(body, sink, slot)` as [`send`](Self::send) would, in
    /// order, appending their frames together so that one `write` carries them.
    pub fn send_many(&self, msgs: Vec<(request::Body, Arc<dyn ReplySink>, usize)>, deadline: Instant) {
        let rule = self.faults.rule(self.id);
        if rule.drop_to || !rule.delay_to.is_zero() {
            // Injected faults treat each frame on its own.
            for (body, sink, slot) in msgs {
                self.send(body, sink, slot, deadline);
            }
            return;
        }
        let mut o = self.out.lock();
        let Some((_, generation)) = o.conn else {
            drop(o);
            for (_, sink, slot) in msgs {
                sink.deliver(slot, Err(Error::Failure(format!("{} is down", self.name))));
            }
            return;
        };
        {
            let mut pending = self.pending.lock();
            for (body, sink, slot) in msgs {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                pending.insert(id, Pending { sink, slot, deadline, generation });
                append_frame(&proto::Request { id, body: Some(body) }, &mut o.buf);
            }
        }
        self.write_out(o);
    }

    /// Writes frames delayed by fault injection, if the connection they were made for is still open.
    pub fn send_delayed(&self, generation: u64, bytes: &[u8]) {
        if self.faults.rule(self.id).drop_to {
            return; // a partition made meanwhile loses what was on its way
        }
        let mut o = self.out.lock();
        if o.conn.as_ref().is_some_and(|(_, g)| *g == generation) {
            o.buf.extend_from_slice(bytes);
            self.write_out(o);
        }
    }

    /// Writes what is buffered, unless a writer is already at work (see [`Outbox`]).
    fn write_out<'a>(&'a self, mut o: parking_lot::MutexGuard<'a, Outbox>) {
        if o.writing {
            return; // the writer at work will send it
        }
        o.writing = true;
        let mut spare = Vec::new();
        loop {
            let Some((stream, generation)) = o.conn.clone() else {
                o.buf.clear();
                o.writing = false;
                return;
            };
            let buf = std::mem::replace(&mut o.buf, std::mem::take(&mut spare));
            drop(o);
            let result = (&*stream).write_all(&buf);
            spare = buf;
            spare.clear();
            o = self.out.lock();
            if let Err(e) = result {
                o.writing = false;
                drop(o);
                self.teardown(generation, &format!("write failed: {e}"));
                return;
            }
            if o.buf.is_empty() {
                o.writing = false;
                if o.buf.capacity() < spare.capacity() && spare.capacity() <= 1 << 20 {
                    o.buf = spare;
                }
                return;
            }
        }
    }

    /// Sends a heartbeat carrying the sender's clock (`micros`); any reply counts as a sign of life.
    pub fn heartbeat(&self, from: &str, micros: u64, epoch: u64, deadline: Instant) {
        if self.is_up() {
            let body = request::Body::Heartbeat(proto::Heartbeat { from: from.to_string(), micros, epoch });
            self.send(body, self.heartbeats.clone(), 0, deadline);
        }
    }

    /// The newest metadata epoch this peer mentioned in a heartbeat ack (and forgets it).
    pub fn heard_epoch(&self) -> u64 {
        self.heartbeats.epoch.swap(0, Ordering::AcqRel)
    }

    /// The storage state the peer reported last, if any.
    pub fn storage(&self) -> Option<proto::StorageStats> {
        self.heartbeats.storage.lock().clone()
    }

    /// Time since the peer last sent anything.
    pub fn silent_for(&self) -> Duration {
        let now = self.epoch.elapsed().as_millis() as u64;
        Duration::from_millis(now.saturating_sub(self.last_heard_ms.load(Ordering::Relaxed)))
    }

    fn heard(&self) {
        self.last_heard_ms.store(self.epoch.elapsed().as_millis() as u64, Ordering::Relaxed);
    }

    /// Marks the link down if the peer has been silent longer than `down_after`.
    pub fn check_liveness(&self, down_after: Duration) {
        // Read the generation first: if the link reconnects meanwhile, the
        // teardown below names the old connection and leaves the new one alone.
        let generation = self.generation.load(Ordering::Acquire);
        if self.is_up() && self.silent_for() > down_after {
            self.teardown(generation, &format!("no reply for {} ms", self.silent_for().as_millis()));
        }
    }

    /// Fails every pending request whose deadline has passed.
    pub fn sweep(&self, now: Instant) {
        let mut expired = Vec::new();
        {
            let mut pending = self.pending.lock();
            if pending.is_empty() {
                return;
            }
            pending.retain(|_, p| {
                let keep = p.deadline > now;
                if !keep {
                    expired.push((p.sink.clone(), p.slot));
                }
                keep
            });
        }
        for (sink, slot) in expired {
            sink.deliver(slot, Err(Error::Timeout(format!("{} did not answer in time", self.name))));
        }
    }

    /// Closes the connection of `generation` (if still current) and fails its pending requests.
    fn teardown(&self, generation: u64, reason: &str) {
        {
            let mut o = self.out.lock();
            match o.conn.as_ref() {
                Some((stream, g)) if *g == generation => {
                    let _ = stream.shutdown(Shutdown::Both);
                    o.conn = None;
                    // Frames not yet written belong to this connection; their requests fail below.
                    o.buf.clear();
                    if self.up.swap(false, Ordering::AcqRel) {
                        warn!("peer {} at {} is down: {reason}", self.name, self.addr);
                        *self.down_since.lock() = Some(Instant::now());
                    }
                }
                _ => {}
            }
        }
        let mut failed = Vec::new();
        self.pending.lock().retain(|_, p| {
            let keep = p.generation != generation;
            if !keep {
                failed.push((p.sink.clone(), p.slot));
            }
            keep
        });
        for (sink, slot) in failed {
            sink.deliver(slot, Err(Error::Failure(format!("connection to {} lost: {reason}", self.name))));
        }
    }

    /// Ends the link: its peer left the cluster. Its thread ends.
    pub fn retire(&self) {
        self.retired.store(true, Ordering::Release);
        self.wake();
    }

    /// Wakes the link's thread, closing its connection (for shutdown and retirement).
    pub fn wake(&self) {
        let _g = self.wake.0.lock();
        self.wake.1.notify_all();
        if let Some((stream, _)) = self.out.lock().conn.as_ref() {
            let _ = stream.shutdown(Shutdown::Both);
        }
    }

    /// The link's thread: connect, handshake, read replies until the connection breaks, repeat.
    pub fn run(&self, env: &LinkEnv<'_>) {
        let mut quiet_failures = false;
        while !env.shutdown.load(Ordering::Acquire) && !self.retired.load(Ordering::Acquire) {
            let pause = match self.connect(env) {
                Ok((stream, reader)) => {
                    quiet_failures = false;
                    self.read_replies(stream, reader, env.shutdown);
                    env.retry_interval
                }
                Err(ConnectError::Io(e)) => {
                    if !quiet_failures {
                        info!("cannot reach peer {} at {}: {e} (retrying every {:?})", self.name, self.addr, env.retry_interval);
                        quiet_failures = true;
                    } else {
                        debug!("cannot reach peer {} at {}: {e}", self.name, self.addr);
                    }
                    env.retry_interval
                }
                Err(ConnectError::Refused(e @ Error::Overloaded(_))) => {
                    warn!("peer {} at {} is overloaded: {e}", self.name, self.addr);
                    env.retry_interval
                }
                // A peer behind on epochs refuses a member it does not know yet, until it catches up.
                Err(ConnectError::Refused(e)) if e.to_string().contains("catching up") => {
                    info!("peer {} at {} does not know us yet: {e}", self.name, self.addr);
                    env.retry_interval.max(Duration::from_millis(500))
                }
                Err(ConnectError::Refused(e)) => {
                    error!("peer {} at {} refused our handshake: {e}", self.name, self.addr);
                    Duration::from_secs(5)
                }
            };
            let mut g = self.wake.0.lock();
            if !env.shutdown.load(Ordering::Acquire) {
                self.wake.1.wait_for(&mut g, pause);
            }
        }
    }

    fn connect(&self, env: &LinkEnv<'_>) -> std::result::Result<(TcpStream, FrameReader<TcpStream>), ConnectError> {
        let io = |e: std::io::Error| ConnectError::Io(e.to_string());
        if self.faults.rule(self.id).drops() {
            return Err(ConnectError::Io("partitioned by fault injection".into()));
        }
        let stream = TcpStream::connect_timeout(&self.addr, env.connect_timeout).map_err(io)?;
        stream.set_nodelay(true).map_err(io)?;
        stream.set_read_timeout(Some(env.connect_timeout)).map_err(io)?;
        stream.set_write_timeout(Some(env.connect_timeout)).map_err(io)?;
        let mut buf = Vec::new();
        let hello = proto::Request { id: 0, body: Some(request::Body::Hello(env.node.hello())) };
        encode_frame(&hello, &mut buf);
        (&stream).write_all(&buf).map_err(io)?;
        let mut reader = FrameReader::new(stream.try_clone().map_err(io)?, env.max_frame);
        let reply = match reader.read_frame() {
            Ok(Some(frame)) => proto::Response::decode(frame).map_err(|e| ConnectError::Io(format!("bad handshake reply: {e}")))?,
            Ok(None) => return Err(ConnectError::Io("closed during handshake".into())),
            Err(e) => return Err(ConnectError::Io(format!("handshake: {e}"))),
        };
        match reply.body {
            Some(response::Body::Hello(ack)) => env.node.saw_epoch(ack.epoch),
            Some(response::Body::Error(e)) => return Err(ConnectError::Refused(Error::from_proto(e))),
            other => return Err(ConnectError::Io(format!("unexpected handshake reply {other:?}"))),
        }
        stream.set_read_timeout(None).map_err(io)?;
        // Writes may block only briefly: a peer that stops reading is torn down, not waited on.
        stream.set_write_timeout(Some(env.connect_timeout.max(Duration::from_millis(500)))).map_err(io)?;
        let generation = self.generation.fetch_add(1, Ordering::AcqRel) + 1;
        let writer_stream = stream.try_clone().map_err(io)?;
        self.out.lock().conn = Some((Arc::new(writer_stream), generation));
        self.heard();
        *self.down_since.lock() = None;
        self.up.store(true, Ordering::Release);
        info!("peer {} at {} is up", self.name, self.addr);
        let _ = env.on_up.send(self.id);
        Ok((stream, reader))
    }

    fn read_replies(&self, stream: TcpStream, mut reader: FrameReader<TcpStream>, shutdown: &AtomicBool) {
        let generation = self.generation.load(Ordering::Acquire);
        let mut read_at = Instant::now();
        let reason = loop {
            let buffered = reader.has_frame();
            let frame = match reader.read_frame() {
                Ok(Some(f)) => f,
                Ok(None) => break "peer closed the connection".to_string(),
                Err(e) => break e.to_string(),
            };
            if !buffered && self.faults.active() {
                read_at = Instant::now();
            }
            if self.faults.on_receive(Some(self.id), read_at, shutdown) == Received::Drop {
                continue; // injected fault: never arrived (and is no sign of life)
            }
            self.heard();
            let resp = match proto::Response::decode(frame) {
                Ok(r) => r,
                Err(e) => break format!("undecodable reply: {e}"),
            };
            let entry = self.pending.lock().remove(&resp.id);
            if let Some(p) = entry {
                p.sink.deliver(p.slot, PeerResponse::from_proto(resp.body, &self.name));
            }
        };
        drop(stream);
        self.teardown(generation, &reason);
    }
}
