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
//! | repair worker | 1 | sends blocking read repairs' messages, then background read repairs, queued on crossbeam channels |
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

use std::net::{SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::thread::Scope;
use std::time::Duration;

use crossbeam_channel::{RecvTimeoutError, bounded};
use log::{error, info, warn};
use socket2::{Domain, Socket, Type};

use crate::cluster::metadata::Metadata;
use crate::config::NodeConfig;
use crate::error::{Error, Result};
use crate::net::badlog::BadLog;
use crate::net::connection::serve_connection;
use crate::net::fault::Faults;
use crate::net::link::LinkEnv;
use crate::net::links::Links;
use crate::net::pool::{Incoming, Pool, Server, refuse};
use crate::net::resp_conn::serve_resp;
use crate::net::threads::{delayer, hint_worker, maintenance, snapshotter, syncer};
use crate::node::{Node, Workers, membership};

const WORKER_STACK: usize = 256 * 1024;
const WORKER_IDLE: Duration = Duration::from_secs(30);
const MIN_WORKERS: usize = 4;
/// At most one line per this interval about bad requests (and one about refused links).
const BAD_LOG_INTERVAL: Duration = Duration::from_secs(1);

/// Binds the replica's socket; fails with a clear error if the address is taken.
pub fn bind(cfg: &NodeConfig) -> Result<TcpListener> {
    bind_port(cfg.bind, cfg.port)
}

fn bind_port(ip: std::net::IpAddr, port: u16) -> Result<TcpListener> {
    let addr = SocketAddr::new(ip, port);
    let bind_err = |e: std::io::Error| Error::Config(format!("cannot listen on {addr}: {e}"));
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, None).map_err(bind_err)?;
    socket.set_reuse_address(true).map_err(bind_err)?;
    socket.bind(&addr.into()).map_err(bind_err)?;
    socket.listen(1024).map_err(bind_err)?;
    Ok(socket.into())
}

/// Runs replica `cfg.name` of the cluster `initial` describes (the cluster
/// file's first epoch; the data folder's metadata wins if it has some) until
/// the process ends: binds, builds the links (the node's
/// [`Peers`](crate::coordinator::peers::Peers)) and the node, serves.
pub fn run(cfg: NodeConfig, initial: Metadata) -> Result<()> {
    let stored = membership::at_start(cfg.data_dir.as_deref(), initial)?;
    run_stored(cfg, stored)
}

/// [`run`] from metadata already at hand (a member that joined: its data
/// folder's, or what the member it joined through answered).
pub fn run_stored(cfg: NodeConfig, stored: membership::Stored) -> Result<()> {
    if let Some(m) = stored.meta.named(&cfg.name).filter(|m| m.state == crate::cluster::metadata::NodeState::Removed) {
        return Err(Error::Config(format!(
            "{} left the cluster (it is REMOVED at epoch {}); to add it again, empty its data folder and start it with --join HOST:PORT",
            m.info.name, stored.meta.epoch
        )));
    }
    let ring = stored.meta.read_ring()?;
    let listener = bind(&cfg)?;
    let resp = match cfg.resp_port {
        Some(port) => Some(bind_port(cfg.bind, port).map_err(|e| Error::Config(format!("--resp-port: {}", e.message())))?),
        None => None,
    };
    let me = Node::locate(&cfg, &ring)?;
    let faults = Arc::new(Faults::new(ring.ids(), cfg.enable_fault_injection));
    let clock = faults.clock();
    let links = Arc::new(Links::new(&ring, me, faults)?);
    let (node, workers) = Node::with_metadata(cfg, stored, links.clone(), clock)?;
    info!(
        "{} listening on {} (ring {}; mode {}; timeout {:?})",
        node.name(),
        listener.local_addr()?,
        node.ring().describe(),
        node.cfg.mode,
        node.cfg.request_timeout
    );
    if let Some(r) = &resp {
        info!("{} speaks the Redis protocol on {}", node.name(), r.local_addr()?);
    }
    serve(&node, &links, listener, resp, workers);
    Ok(())
}

/// Asks every thread of the node to stop.
fn stop(node: &Node, links: &Links) {
    node.shutdown.store(true, Ordering::Release);
    links.wake();
}

/// Serves `node` on `listener` (and the Redis protocol on `resp`, if given)
/// with all its threads; returns when the node shuts down.
pub fn serve(node: &Arc<Node>, links: &Links, listener: TcpListener, resp: Option<TcpListener>, workers: Workers) {
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
        total_limit: client_limit + 4 * node.ring().len(),
        bad_requests: BadLog::new("bad request", BAD_LOG_INTERVAL),
        refused_links: BadLog::new("refusing replica link", BAD_LOG_INTERVAL),
    };
    let resp_port = resp.as_ref().and_then(|l| l.local_addr().ok()).map_or(0, |a| a.port());
    let srv = Server { node, links, pool, resp: resp.as_ref().map(|_| crate::resp::session::Shared::new(resp_port)) };
    let env = LinkEnv {
        node,
        connect_timeout: node.cfg.connect_timeout,
        retry_interval: node.cfg.heartbeat_interval,
        max_frame: node.cfg.max_frame_bytes().max(64 << 20),
        shutdown: &node.shutdown,
        on_up: node.peer_up_tx.clone(),
    };
    std::thread::scope(|s| {
        for link in links.iter() {
            let env = &env;
            if !spawn_named(s, format!("link-{}", link.name), move || link.run(env)) {
                stop(node, links);
                return;
            }
        }
        let started = spawn_named(s, "maintenance".into(), || maintenance(node, links));
        let Workers { repairs, urgent, peer_up, repair_wake } = workers;
        let started = started & spawn_named(s, "repair".into(), move || node.repair_worker(urgent, repairs));
        let started = started & spawn_named(s, "hints".into(), move || hint_worker(node, peer_up));
        let started = started && spawn_named(s, "read-batcher".into(), || node.read_batcher.run(links, &node.shutdown));
        let started = started && (!links.faults.enabled() || spawn_named(s, "faults".into(), || delayer(node, links)));
        let started = started && (node.wal.is_none() || spawn_named(s, "syncer".into(), || syncer(node)));
        let started = started && (node.wal.is_none() || spawn_named(s, "snapshots".into(), || snapshotter(node)));
        let started = started && spawn_named(s, "anti-entropy".into(), move || node.anti_entropy_loop(&repair_wake));
        let started = started && spawn_named(s, "txn-recovery".into(), move || node.txn_recovery_loop());
        let env = &env;
        let started = started && spawn_named(s, "membership".into(), move || membership(node, links, s, env));
        if !started {
            error!("cannot start the background threads; stopping");
            stop(node, links);
            return;
        }
        let srv = &srv;
        if let Some(resp) = &resp
            && !spawn_named(s, "resp-accept".into(), move || accept_loop(s, srv, resp, Incoming::Resp))
        {
            error!("cannot start the RESP listener's thread; stopping");
            stop(node, links);
            return;
        }
        accept_loop(s, srv, &listener, Incoming::Native);
    });
}

/// The membership thread: catches up when a peer mentions a newer epoch,
/// makes the links follow the members of each new epoch (starting the
/// threads of new ones), and runs the node's membership work.
fn membership<'scope, 'env>(node: &'env Arc<Node>, links: &'env Links, s: &'scope Scope<'scope, 'env>, env: &'env LinkEnv<'env>) {
    let mut epoch = node.view().epoch();
    let mut last_catch_up: Option<std::time::Instant> = None;
    // Cells a restart replayed that a finished movement had dropped go again
    // (soon; a movement may have ended just before the restart).
    let mut cleanup_at = Some(std::time::Instant::now() + crate::node::movement::CLEANUP_GRACE);
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(MEMBERSHIP_TICK);
        if node.behind() && last_catch_up.is_none_or(|t| t.elapsed() >= CATCH_UP_EVERY) {
            last_catch_up = Some(std::time::Instant::now());
            node.catch_up();
        }
        let view = node.view();
        if view.epoch() != epoch {
            epoch = view.epoch();
            for link in links.follow(&view.ring) {
                // (spawn_named logs a refusal; the link stays down until a restart.)
                spawn_named(s, format!("link-{}", link.name), move || link.run(env));
            }
            cleanup_at = Some(std::time::Instant::now() + crate::node::movement::CLEANUP_GRACE);
        }
        if cleanup_at.is_some_and(|t| std::time::Instant::now() >= t) {
            cleanup_at = None;
            node.cleanup();
        }
        node.membership_work();
    }
    // A decommissioned node's process ends (its data now lives elsewhere);
    // the log is synced first, and the replies in flight get a moment.
    if node.view().meta.member(node.me).is_some_and(|m| m.state == crate::cluster::metadata::NodeState::Removed) {
        if let Some(wal) = &node.wal {
            let _ = wal.sync();
        }
        std::thread::sleep(Duration::from_millis(300));
        info!("{} left the cluster; exiting", node.name());
        std::process::exit(0);
    }
    stop(node, links);
}

/// How often the membership thread looks for work.
const MEMBERSHIP_TICK: Duration = Duration::from_millis(50);

/// The least time between two catch-ups (a peer may keep mentioning an epoch nobody can give).
const CATCH_UP_EVERY: Duration = Duration::from_millis(500);

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

fn accept_loop<'scope>(s: &'scope Scope<'scope, '_>, srv: &'scope Server<'scope>, listener: &TcpListener, kind: fn(TcpStream) -> Incoming) {
    let (node, pool) = (srv.node, &srv.pool);
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
            match kind(stream) {
                Incoming::Native(stream) => refuse(&stream, "too many connections"),
                Incoming::Resp(stream) => crate::net::resp_conn::refuse(&stream, "max number of clients reached"),
            }
            continue;
        }
        pool.connections.fetch_add(1, Ordering::AcqRel);
        // Claim a waiting worker, or start one with this connection in hand.
        let incoming = kind(stream);
        if pool.idle.fetch_update(Ordering::AcqRel, Ordering::Acquire, |i| i.checked_sub(1)).is_ok() {
            if pool.tx.send(incoming).is_err() {
                return;
            }
        } else {
            pool.workers.fetch_add(1, Ordering::AcqRel);
            if !spawn_named(s, "conn".into(), move || worker(srv, incoming)) {
                // The closure (and the connection with it) was dropped: give the slot back.
                pool.workers.fetch_sub(1, Ordering::AcqRel);
                pool.connections.fetch_sub(1, Ordering::AcqRel);
            }
        }
    }
}

/// A pool worker: serves `first`, then waits for more connections.
///
/// Invariant: `idle` = workers waiting − connections queued in the channel.
/// The acceptor queues a connection only after taking one from `idle`, so every
/// queued connection has a waiting worker; a waiting worker retires only by
/// taking itself out of `idle`, which fails when a connection is queued for it.
fn worker(srv: &Server<'_>, first: Incoming) {
    let pool = &srv.pool;
    serve_incoming(srv, first);
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
        serve_incoming(srv, stream);
        pool.connections.fetch_sub(1, Ordering::AcqRel);
    }
}

fn serve_incoming(srv: &Server<'_>, incoming: Incoming) {
    match incoming {
        Incoming::Native(stream) => serve_connection(srv, stream),
        Incoming::Resp(stream) => match &srv.resp {
            Some(shared) => serve_resp(srv, stream, shared),
            None => error!("a RESP connection without a RESP listener"),
        },
    }
}
