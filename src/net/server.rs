//! The replica server: owns every socket and every thread.
//!
//! [`run`] binds the listening socket and starts, inside one
//! `std::thread::scope`, the replica's long-lived threads:
//!
//! | thread | count | does |
//! |--------|-------|------|
//! | acceptor | 1 | accepts connections, hands them to the pool, refuses past the limit |
//! | connection workers | elastic, ≤ limit | serve one connection each until it closes, then wait for the next; idle ones retire |
//! | peer links | one per peer | connect, handshake, read replies to our requests, reconnect |
//! | maintenance | 1 | heartbeats, failure detection, request timeouts |
//! | repair worker | 1 | sends read repairs queued on a crossbeam channel |
//! | hint worker | 1 | replays hints when a peer comes up (and every second) |
//!
//! A connection that opens with `PeerHello` is a peer's link to us: its worker
//! answers replica requests, which only touch the local store, so they never
//! wait behind client requests or on other replicas. Any other connection is a
//! client: its worker coordinates each request, waiting on peer links (never on
//! another worker), so no cycle of waits can form however busy the pool is.
//! Peers get their own reserve of connection slots, so a flood of clients
//! cannot lock replicas out of each other.
//!
//! Each worker reads frames through its own buffer and batches replies: a
//! reply is written when no further request is already buffered, so a peer
//! pipelining many requests gets many replies per `write`.

use std::io::Write;
use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Scope;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError, Sender, bounded};
use log::{debug, error, info, warn};
use prost::Message;
use socket2::{Domain, Socket, Type};

use crate::cluster::ring::Ring;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::net::badlog::BadLog;
use crate::net::conn::{self, ClientConn};
use crate::net::fault::Received;
use crate::net::frame::{FrameError, FrameReader, append_frame, encode_frame};
use crate::net::link::LinkEnv;
use crate::node::{Answered, Deferred, Node, PeerReply, Unfinished, Workers};
use crate::proto::{self, request, response};
use crate::storage::wal::FsyncMode;

const WORKER_STACK: usize = 256 * 1024;
const WORKER_IDLE: Duration = Duration::from_secs(30);
const MIN_WORKERS: usize = 4;
const MAINTENANCE_TICK: Duration = Duration::from_millis(25);
/// Buffered replies are written once they reach this size.
const FLUSH_BYTES: usize = 256 * 1024;
/// At most one line per this interval about bad requests (and one about refused links).
const BAD_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Binds the replica's socket; fails with a clear error if the address is taken.
pub fn bind(cfg: &NodeConfig) -> Result<TcpListener> {
    let addr = SocketAddr::new(cfg.bind, cfg.port);
    let bind_err = |e: std::io::Error| Error::Config(format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)?;
    Ok(socket.into())
}

/// Runs replica `cfg.name` of `ring` until the process ends.
pub fn run(cfg: NodeConfig, ring: Ring) -> Result<()> {
    let listener = bind(&cfg)?;
    let (node, workers) = Node::new(cfg, ring)?;
    info!(
        "{} listening on {} (ring {}; mode {}; timeout {:?})",
        node.name(),
        listener.local_addr()?,
        node.ring.describe(),
        node.cfg.mode,
        node.cfg.request_timeout
    );
    serve(&node, listener, workers);
    Ok(())
}

/// Connection accounting for the elastic pool.
struct Pool {
    tx: Sender<TcpStream>,
    rx: Receiver<TcpStream>,
    workers: AtomicUsize,
    idle: AtomicUsize,
    connections: AtomicUsize,
    clients: AtomicUsize,
    client_limit: usize,
    total_limit: usize,
    /// Malformed and invalid requests, logged at most once a second.
    bad_requests: BadLog,
    /// Refused handshakes (a peer with another ring, or garbage), logged apart so a flood of bad requests cannot hide them.
    refused_links: BadLog,
}

/// Serves `node` on `listener` with all its threads; returns when the node shuts down.
pub fn serve(node: &Arc<Node>, listener: TcpListener, workers: Workers) {
    let client_limit = node.cfg.max_connections;
    let (tx, rx) = bounded(1024);
    let pool = Pool {
        tx,
        rx,
        workers: AtomicUsize::new(0),
        idle: AtomicUsize::new(0),
        connections: AtomicUsize::new(0),
        clients: AtomicUsize::new(0),
        client_limit,
        // Peers reserve slots beyond the client limit: several links per peer.
        total_limit: client_limit + 4 * node.ring.len(),
        bad_requests: BadLog::new("bad request", BAD_LOG_INTERVAL),
        refused_links: BadLog::new("refusing replica link", BAD_LOG_INTERVAL),
    };
    let env = LinkEnv {
        hello: node.hello(),
        connect_timeout: node.cfg.connect_timeout,
        retry_interval: node.cfg.heartbeat_interval,
        max_frame: node.cfg.max_frame_bytes().max(64 << 20),
        shutdown: &node.shutdown,
        on_up: node.peer_up_tx.clone(),
    };
    std::thread::scope(|s| {
        for link in node.links.iter().flatten() {
            let env = &env;
            if !spawn_named(s, format!("link-{}", link.name), move || link.run(env)) {
                node.stop();
                return;
            }
        }
        let started = spawn_named(s, "maintenance".into(), || maintenance(node));
        let Workers { repairs, peer_up } = workers;
        let started = started
            & spawn_named(s, "repair".into(), move || {
                while let Ok(job) = repairs.recv() {
                    node.send_repair(job);
                }
            });
        let started = started & spawn_named(s, "hints".into(), move || hint_worker(node, peer_up));
        let started = started && spawn_named(s, "read-batcher".into(), || node.read_batcher.run(node));
        let started = started && (!node.faults.enabled() || spawn_named(s, "faults".into(), || delayer(node)));
        let started = started && (node.wal.is_none() || spawn_named(s, "syncer".into(), || syncer(node)));
        let started = started && (node.wal.is_none() || spawn_named(s, "snapshots".into(), || snapshotter(node)));
        if !started {
            error!("cannot start the background threads; stopping");
            node.stop();
            return;
        }
        accept_loop(s, node, &listener, &pool);
    });
}

/// Starts a scoped thread; logs and returns false if the system refuses.
fn spawn_named<'scope, F>(s: &'scope Scope<'scope, '_>, name: String, f: F) -> bool
where
    F: FnOnce() + Send + 'scope,
{
    match std::thread::Builder::new().name(name.clone()).stack_size(WORKER_STACK).spawn_scoped(s, f) {
        Ok(_) => true,
        Err(e) => {
            error!("cannot start thread {name}: {e}");
            false
        }
    }
}

fn accept_loop<'scope>(s: &'scope Scope<'scope, '_>, node: &'scope Arc<Node>, listener: &TcpListener, pool: &'scope Pool) {
    let mut refused: u64 = 0;
    loop {
        let stream = match listener.accept() {
            Ok((stream, _)) => stream,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                warn!("accept failed: {e}");
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        };
        if node.shutdown.load(Ordering::Acquire) {
            return;
        }
        if pool.connections.load(Ordering::Acquire) >= pool.total_limit {
            refused += 1;
            if refused.is_power_of_two() {
                warn!("refusing connections: {} open, the limit; {refused} refused so far", pool.total_limit);
            }
            refuse(&stream, "too many connections");
            continue;
        }
        pool.connections.fetch_add(1, Ordering::AcqRel);
        // Claim a waiting worker, or start one with this connection in hand.
        if pool.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| i.checked_sub(1)).is_ok() {
            if pool.tx.send(stream).is_err() {
                return;
            }
        } else {
            pool.workers.fetch_add(1, Ordering::AcqRel);
            if !spawn_named(s, "conn".into(), move || worker(node, pool, stream)) {
                // The closure (and the connection with it) was dropped: give the slot back.
                pool.workers.fetch_sub(1, Ordering::AcqRel);
                pool.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

fn refuse(mut stream: &TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let e = Error::Overloaded(why.into()).to_proto();
    encode_frame(&proto::Response { id: 0, body: Some(response::Body::Error(e)) }, &mut buf);
    let _ = stream.write_all(&buf);
}

/// A pool worker: serves `first`, then waits for more connections.
///
/// Invariant: `idle` = workers waiting − connections queued in the channel.
/// The acceptor queues a connection only after taking one from `idle`, so every
/// queued connection has a waiting worker; a waiting worker retires only by
/// taking itself out of `idle`, which fails when a connection is queued for it.
fn worker(node: &Arc<Node>, pool: &Pool, first: TcpStream) {
    serve_connection(node, first, pool);
    pool.connections.fetch_sub(1, Ordering::AcqRel);
    loop {
        pool.idle.fetch_add(1, Ordering::AcqRel);
        let stream = match pool.rx.recv_timeout(WORKER_IDLE) {
            Ok(s) => s,
            Err(RecvTimeoutError::Timeout) => {
                if pool.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| i.checked_sub(1)).is_ok() {
                    if pool.workers.load(Ordering::Acquire) > MIN_WORKERS {
                        pool.workers.fetch_sub(1, Ordering::AcqRel);
                        return;
                    }
                    continue;
                }
                // A connection was queued for a waiting worker: take it.
                match pool.rx.recv() {
                    Ok(s) => s,
                    Err(_) => return,
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        };
        serve_connection(node, stream, pool);
        pool.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

/// What kind of connection a worker is serving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Unknown,
    Client,
    /// A link from the peer of this ring index.
    Peer(usize),
}

fn serve_connection(node: &Arc<Node>, stream: TcpStream, pool: &Pool) {
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    // Until it says what it is, a connection must speak within the deadline:
    // silent sockets cannot hold the slots reserved for peers.
    let _ = stream.set_read_timeout(Some(node.cfg.first_frame_timeout));
    let Ok(read_half) = stream.try_clone() else { return };
    let mut reader = FrameReader::new(read_half, node.cfg.max_frame_bytes());
    // Replies are written through `conn`; a client's may also be deferred to
    // the thread that settles its call (see `conn`).
    let conn = ClientConn::new(stream);
    let mut writer = conn.stream();
    // The call whose reply is deferred, and whether reads time out to check on it.
    let mut unfinished: Option<Unfinished> = None;
    let mut polling = false;
    let mut out = Vec::with_capacity(4096);
    let mut frame_buf = Vec::new();
    // Replies of the current batch; writes among them are committed together before any is sent.
    let mut batch: Vec<(u64, PeerReply)> = Vec::new();
    let mut after: Vec<Deferred> = Vec::new();
    let mut batch_bytes = 0usize;
    let mut role = Role::Unknown;
    let mut read_at = Instant::now();
    let outcome = loop {
        let buffered = reader.has_frame();
        let frame = match reader.read_frame() {
            Ok(Some(f)) => f,
            Err(e) if polling && e.is_timeout() => {
                // The client is quiet: write a deferred reply's stash if it has one,
                // and stop polling once nothing is deferred.
                if !conn.is_deferred() {
                    if let Err(e) = settle(&conn, &mut unfinished) {
                        break Err(format!("deferred reply: {e}"));
                    }
                    polling = false;
                    let _ = writer.set_read_timeout(None);
                }
                continue;
            }
            Ok(None) => break Ok(()),
            Err(e @ FrameError::TooLarge { .. }) => {
                pool.bad_requests.note(&peer_addr, &e);
                let resp = error_response(0, Error::InvalidRequest(e.to_string()));
                encode_frame(&resp, &mut frame_buf);
                let _ = writer.write_all(&frame_buf);
                break Err(e.to_string());
            }
            Err(e @ FrameError::Truncated { .. }) => {
                pool.bad_requests.note(&peer_addr, &e);
                break Err(e.to_string());
            }
            Err(e) => break Err(e.to_string()),
        };
        if !buffered && node.faults.active() {
            read_at = Instant::now();
        }
        // Replies go out in request order: the deferred one first.
        if let Err(e) = settle(&conn, &mut unfinished) {
            break Err(format!("deferred reply: {e}"));
        }
        let peer = if let Role::Peer(p) = role { Some(p) } else { None };
        if node.faults.on_receive(peer, read_at, &node.shutdown) == Received::Drop {
            // Injected fault: the peer's request never arrived. Replies not yet
            // written are lost with it (else they would wait for a frame that
            // never comes); nothing was acknowledged, so nothing needs committing.
            batch.clear();
            batch_bytes = 0;
            continue;
        }
        let (id, reply) = match proto::Request::decode(frame) {
            Err(e) => (0, PeerReply::error(Error::InvalidRequest(format!("malformed request: {e}")))),
            Ok(req) => {
                let id = req.id;
                let reply = match (req.body, role) {
                    (None, _) => PeerReply::error(Error::InvalidRequest("empty request".into())),
                    (Some(request::Body::Hello(h)), Role::Unknown) => match node.check_hello(&h) {
                        Ok(()) => {
                            let p = node.ring.index_of(&h.name).expect("check_hello found it");
                            if node.faults.rule(p).drops() {
                                break Err(format!("{} is partitioned away by fault injection", h.name));
                            }
                            role = Role::Peer(p);
                            let _ = writer.set_read_timeout(None);
                            debug!("{} opened a replica link from {peer_addr}", h.name);
                            PeerReply::of(response::Body::Hello(proto::HelloAck { name: node.name().to_string() }))
                        }
                        Err(e) => {
                            pool.refused_links.note(&peer_addr, &e);
                            // Answer what came before it (errors only: the connection had no role yet), then refuse.
                            for (id, reply) in batch.drain(..) {
                                append_frame(&proto::Response { id, body: Some(reply.body) }, &mut out);
                            }
                            append_frame(&error_response(id, e), &mut out);
                            let _ = writer.write_all(&out);
                            break Err("handshake refused".into());
                        }
                    },
                    (Some(body), Role::Peer(_)) => node.handle_peer(body),
                    (Some(body), _) => {
                        if role == Role::Unknown {
                            role = Role::Client;
                            let _ = writer.set_read_timeout(None);
                            if pool.clients.fetch_add(1, Ordering::AcqRel) >= pool.client_limit {
                                pool.clients.fetch_sub(1, Ordering::AcqRel);
                                refuse(writer, &format!("too many client connections (limit {})", pool.client_limit));
                                return;
                            }
                        }
                        // Defer only a lone request: replies already batched must not be overtaken.
                        let later = (conn::SUPPORTED && batch.is_empty() && !reader.has_frame()).then_some((&conn, id));
                        match node.handle_client(body, later) {
                            Answered::Now(reply) => reply,
                            Answered::Later(u) => {
                                unfinished = Some(u);
                                if !polling {
                                    polling = true;
                                    let _ = writer.set_read_timeout(Some(conn::POLL));
                                }
                                continue;
                            }
                        }
                    }
                };
                (id, reply)
            }
        };
        // Malformed, empty and invalid requests alike; a request that succeeded costs one comparison here.
        if let response::Body::Error(e) = &reply.body
            && e.kind == proto::ErrorKind::InvalidRequest as i32
        {
            pool.bad_requests.note(&peer_addr, &e.message);
        }
        batch_bytes += reply.body.encoded_len();
        batch.push((id, reply));
        // Answer when no request is waiting, or when replies pile up: a client
        // pipelining reads of large values must not grow this buffer without bound.
        if !reader.has_frame() || batch_bytes >= FLUSH_BYTES {
            node.commit_peer_replies(&mut batch);
            for (id, reply) in batch.drain(..) {
                append_frame(&proto::Response { id, body: Some(reply.body) }, &mut out);
                after.extend(reply.after);
            }
            batch_bytes = 0;
            if let Role::Peer(p) = role {
                let rule = node.faults.rule(p);
                if rule.drop_to {
                    out.clear(); // injected fault: the replies are lost on the way
                }
                if !rule.delay_to.is_zero() {
                    std::thread::sleep(rule.delay_to);
                }
            }
            let written = writer.write_all(&out);
            for work in after.drain(..) {
                work.run(node);
            }
            if let Err(e) = written {
                break Err(format!("write failed: {e}"));
            }
            out.clear();
            if out.capacity() > 1 << 20 {
                out = Vec::with_capacity(4096);
            }
        }
    };
    // A client that closed its sending side may still be waiting for the deferred reply.
    let outcome = outcome.and(settle(&conn, &mut unfinished).map_err(|e| format!("deferred reply: {e}")));
    if role == Role::Client {
        pool.clients.fetch_sub(1, Ordering::AcqRel);
    }
    if let Err(why) = outcome {
        debug!("connection from {peer_addr} closed: {why}");
    }
}

/// Waits for the deferred reply (if any) to be answered, writes what of it is
/// stashed, and finishes its call. Fails if it is never answered or the write fails.
fn settle(conn: &ClientConn, unfinished: &mut Option<Unfinished>) -> std::io::Result<()> {
    let Some(u) = unfinished.take() else { return Ok(()) };
    // Every call settles by its deadline (the sweep times out what is left); allow for the sweep's tick.
    let result = conn.settle(u.deadline() + Duration::from_secs(1));
    u.finish();
    result
}

fn error_response(id: u64, e: Error) -> proto::Response {
    proto::Response { id, body: Some(response::Body::Error(e.to_proto())) }
}

fn maintenance(node: &Arc<Node>) {
    let mut last_heartbeat = Instant::now() - node.cfg.heartbeat_interval;
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(MAINTENANCE_TICK);
        if node.faults.paused() {
            continue; // an injected pause stops everything, the failure detector included
        }
        let now = Instant::now();
        let beat = now.duration_since(last_heartbeat) >= node.cfg.heartbeat_interval;
        if beat {
            last_heartbeat = now;
        }
        for link in node.links.iter().flatten() {
            link.sweep(now);
            link.check_liveness(node.cfg.down_after);
            if beat {
                link.heartbeat(node.name(), now + node.cfg.down_after);
            }
        }
    }
}

/// Sends the frames fault injection delayed, when they fall due.
fn delayer(node: &Arc<Node>) {
    while let Some((peer, generation, bytes)) = node.faults.next_due(&node.shutdown) {
        if let Some(link) = node.link(peer) {
            link.send_delayed(generation, &bytes);
        }
    }
}

/// Writes out what writers have not (hints) and, in `batch` mode, fsyncs every window.
fn syncer(node: &Arc<Node>) {
    let Some(wal) = &node.wal else { return };
    let (tick, window) = match wal.mode() {
        FsyncMode::Batch(w) => (w.min(Duration::from_millis(10)).max(Duration::from_millis(1)), Some(w)),
        _ => (Duration::from_millis(10), None),
    };
    let mut last_sync = Instant::now();
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        if wal.failure().is_some() {
            continue; // the snapshotter retries
        }
        match window {
            Some(w) if last_sync.elapsed() >= w => {
                last_sync = Instant::now();
                let _ = wal.sync();
            }
            _ => wal.flush(),
        }
    }
}

/// Takes a snapshot when the log grows past `--snapshot-bytes`, and retries a failed log
/// (a snapshot starts a fresh log, which is how a full disk that was freed, or a log
/// that hit a size limit, gets going again).
fn snapshotter(node: &Arc<Node>) {
    let Some(wal) = &node.wal else { return };
    let mut last_retry = Instant::now();
    let mut failures = 0u64;
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        let failed = wal.failure().is_some();
        if failed && last_retry.elapsed() < Duration::from_millis(500) {
            continue;
        }
        if failed {
            last_retry = Instant::now();
            if wal.sync().is_ok() {
                continue;
            }
        } else if wal.log_bytes() < node.cfg.snapshot_bytes {
            continue;
        }
        match node.snapshot() {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    warn!("snapshot failed ({failures} time(s) so far): {e}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

fn hint_worker(node: &Arc<Node>, peer_up: Receiver<usize>) {
    if !node.cfg.mode.hinted_handoff() {
        // Drain peer-up notices so the channel does not grow.
        while peer_up.recv().is_ok() {}
        return;
    }
    loop {
        match peer_up.recv_timeout(Duration::from_secs(1)) {
            Ok(target) => node.replay_hints(target),
            Err(RecvTimeoutError::Timeout) => {
                for target in node.hints.targets_with_hints() {
                    node.replay_hints(target);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if node.shutdown.load(Ordering::Acquire) {
            return;
        }
    }
}
