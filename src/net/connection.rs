//! One connection, served by one pool worker until it closes.
//!
//! The first frame says what the connection is: a `PeerHello` makes it a
//! peer's link to this node (its requests only touch the local store), anything
//! else a client (its requests are coordinated). Each frame is decoded, parsed
//! once into a typed request ([`crate::message`]) and handed to the node; the
//! typed answer is encoded back into the native protocol here.
//!
//! Replies are batched: a reply is written when no further request is already
//! buffered, or when `FLUSH_BYTES` (256 KiB) of replies are pending, so a peer
//! pipelining many requests gets many replies per `write`, and the peer writes
//! among them are made durable by one commit before any is sent. A lone client
//! request whose answer must come from other replicas is *deferred*: the call
//! answers through the connection's [`Responder`] (see [`crate::net::conn`]).

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use log::debug;
use prost::Message;

use crate::cluster::ring::NodeId;
use crate::coordinator::command::Responder;
use crate::error::Error;
use crate::message::{ClientRequest, PeerRequest, Reply};
use crate::net::conn::{self, ClientConn};
use crate::net::fault::Received;
use crate::net::frame::{FrameError, FrameReader, append_frame, encode_frame};
use crate::net::pool::{Server, refuse};
use crate::node::{Answered, Deferred, PendingAck, Unfinished};
use crate::proto::{self, request, response};

/// Buffered replies are written once they reach this size.
const FLUSH_BYTES: usize = 256 * 1024;

/// What kind of connection a worker is serving.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Role {
    Unknown,
    Client,
    /// A link from this peer.
    Peer(NodeId),
}

/// A reply waiting in the batch.
struct Queued {
    id: u64,
    body: response::Body,
    /// A peer write: commit before sending.
    commit: Option<PendingAck>,
    /// Work to do once the reply is on the wire.
    after: Option<Deferred>,
}

impl Queued {
    fn new(id: u64, body: response::Body) -> Self {
        Queued { id, body, commit: None, after: None }
    }

    fn error(id: u64, e: Error) -> Self {
        Queued::new(id, response::Body::Error(e.to_proto()))
    }
}

/// What handling one frame came to.
enum Step {
    /// A reply for the batch.
    Reply(Queued),
    /// Nothing to add (a deferred reply, or a request lost to a fault).
    Nothing,
    /// Close the connection.
    Close(Result<(), String>),
}

/// The state of one connection.
struct Connection<'s, 'a> {
    srv: &'s Server<'a>,
    peer_addr: String,
    conn: Arc<ClientConn>,
    responder: Arc<dyn Responder>,
    role: Role,
    /// The call whose reply is deferred.
    unfinished: Option<Unfinished>,
    /// Whether reads time out to check on a deferred reply.
    polling: bool,
    out: Vec<u8>,
    /// Replies of the current batch; writes among them are committed together before any is sent.
    batch: Vec<Queued>,
    batch_bytes: usize,
    after: Vec<Deferred>,
}

/// Serves `stream` until it closes.
pub(super) fn serve_connection(srv: &Server<'_>, stream: TcpStream) {
    let node = srv.node;
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
    let mut c = Connection {
        srv,
        peer_addr,
        responder: conn.clone(),
        conn,
        role: Role::Unknown,
        unfinished: None,
        polling: false,
        out: Vec::with_capacity(4096),
        batch: Vec::new(),
        batch_bytes: 0,
        after: Vec::new(),
    };
    let mut read_at = Instant::now();
    let outcome = loop {
        let buffered = reader.has_frame();
        let frame = match reader.read_frame() {
            Ok(Some(f)) => f,
            Err(e) if c.polling && e.is_timeout() => {
                // The client is quiet: write a deferred reply's stash if it has one,
                // and stop polling once nothing is deferred.
                if !c.conn.is_deferred() {
                    if let Err(e) = c.settle() {
                        break Err(format!("deferred reply: {e}"));
                    }
                    c.polling = false;
                    let _ = c.conn.stream().set_read_timeout(None);
                }
                continue;
            }
            Ok(None) => break Ok(()),
            Err(e @ FrameError::TooLarge { .. }) => {
                srv.pool.bad_requests.note(&c.peer_addr, &e);
                // The refusal follows the replies to the requests before it, a deferred one included.
                if let Err(e) = c.settle() {
                    break Err(format!("deferred reply: {e}"));
                }
                let mut buf = Vec::new();
                encode_frame(&error_response(0, Error::InvalidRequest(e.to_string())), &mut buf);
                let _ = c.conn.stream().write_all(&buf);
                break Err(e.to_string());
            }
            Err(e @ FrameError::Truncated { .. }) => {
                srv.pool.bad_requests.note(&c.peer_addr, &e);
                break Err(e.to_string());
            }
            Err(e) => break Err(e.to_string()),
        };
        if !buffered && srv.links.faults.active() {
            read_at = Instant::now();
        }
        // Replies go out in request order: the deferred one first.
        if let Err(e) = c.settle() {
            break Err(format!("deferred reply: {e}"));
        }
        let peer = if let Role::Peer(p) = c.role { Some(p) } else { None };
        if srv.links.faults.on_receive(peer, read_at, &node.shutdown) == Received::Drop {
            // Injected fault: the peer's request never arrived. Replies not yet
            // written are lost with it (else they would wait for a frame that
            // never comes); nothing was acknowledged, so nothing needs committing.
            c.batch.clear();
            c.batch_bytes = 0;
            continue;
        }
        let decoded = proto::Request::decode(frame);
        // Defer only a lone request: replies already batched must not be overtaken.
        let lone = conn::SUPPORTED && c.batch.is_empty() && !reader.has_frame();
        let step = match decoded {
            Err(e) => Step::Reply(Queued::error(0, Error::InvalidRequest(format!("malformed request: {e}")))),
            Ok(req) => c.handle(req, lone),
        };
        match step {
            Step::Reply(q) => c.push(q),
            Step::Nothing => continue,
            Step::Close(outcome) => break outcome,
        }
        // Answer when no request is waiting, or when replies pile up: a client
        // pipelining reads of large values must not grow this buffer without bound.
        if (!reader.has_frame() || c.batch_bytes >= FLUSH_BYTES)
            && let Err(e) = c.flush()
        {
            break Err(e);
        }
    };
    // A client that closed its sending side may still be waiting for the deferred reply.
    let outcome = outcome.and(c.settle().map_err(|e| format!("deferred reply: {e}")));
    if c.role == Role::Client {
        srv.pool.clients.fetch_sub(1, Ordering::AcqRel);
    }
    if let Err(why) = outcome {
        debug!("connection from {} closed: {why}", c.peer_addr);
    }
}

impl Connection<'_, '_> {
    /// One decoded request, by the connection's role.
    fn handle(&mut self, req: proto::Request, lone: bool) -> Step {
        let node = self.srv.node;
        let id = req.id;
        let limits = node.limits();
        match (req.body, self.role) {
            (None, _) => Step::Reply(Queued::error(id, Error::InvalidRequest("empty request".into()))),
            (Some(request::Body::Hello(h)), Role::Unknown) => self.hello(id, h),
            (Some(body), Role::Peer(_)) => Step::Reply(match PeerRequest::parse(body, &limits) {
                Err(e) => Queued::error(id, e),
                Ok(req) => {
                    let (result, commit) = node.serve_peer(req);
                    let body = match result {
                        Ok(r) => r.into_proto(),
                        Err(e) => response::Body::Error(e.to_proto()),
                    };
                    Queued { id, body, commit, after: None }
                }
            }),
            (Some(body), _) => {
                if self.role == Role::Unknown {
                    self.role = Role::Client;
                    let _ = self.conn.stream().set_read_timeout(None);
                    let pool = &self.srv.pool;
                    if pool.clients.fetch_add(1, Ordering::AcqRel) >= pool.client_limit {
                        pool.clients.fetch_sub(1, Ordering::AcqRel);
                        self.role = Role::Unknown; // its slot is given back already
                        refuse(self.conn.stream(), &format!("too many client connections (limit {})", pool.client_limit));
                        return Step::Close(Ok(()));
                    }
                }
                let req = match ClientRequest::parse(body, &limits) {
                    Ok(r) => r,
                    Err(e) => return Step::Reply(Queued::error(id, e)),
                };
                if let ClientRequest::Fault(f) = req {
                    // Faults belong to the network layer.
                    let reply = match self.srv.links.faults.handle(f, &node.ring(), node.me) {
                        Ok(r) => Reply::Fault(r),
                        Err(e) => Reply::Error(e),
                    };
                    return Step::Reply(Queued::new(id, reply.into_proto()));
                }
                let later = if lone { Some((&self.responder, id)) } else { None };
                match node.handle_client(req, later) {
                    Answered::Now(h) => Step::Reply(Queued { id, body: h.reply.into_proto(), commit: None, after: h.after }),
                    Answered::Later(u) => {
                        self.unfinished = Some(u);
                        if !self.polling {
                            self.polling = true;
                            let _ = self.conn.stream().set_read_timeout(Some(conn::POLL));
                        }
                        Step::Nothing
                    }
                }
            }
        }
    }

    /// A `PeerHello` as the first frame: the connection becomes that peer's link, or is refused.
    fn hello(&mut self, id: u64, h: proto::PeerHello) -> Step {
        let node = self.srv.node;
        match node.check_hello(&h) {
            Ok(peer) => {
                if self.srv.links.faults.rule(peer).drops() {
                    return Step::Close(Err(format!("{} is partitioned away by fault injection", h.name)));
                }
                self.role = Role::Peer(peer);
                let _ = self.conn.stream().set_read_timeout(None);
                debug!("{} opened a replica link from {}", h.name, self.peer_addr);
                Step::Reply(Queued::new(
                    id,
                    response::Body::Hello(proto::HelloAck { name: node.name().to_string(), epoch: node.view().epoch() }),
                ))
            }
            Err(e) => {
                self.srv.pool.refused_links.note(&self.peer_addr, &e);
                // Answer what came before it (errors only: the connection had no role yet), then refuse.
                for q in self.batch.drain(..) {
                    append_frame(&proto::Response { id: q.id, body: Some(q.body) }, &mut self.out);
                }
                append_frame(&error_response(id, e), &mut self.out);
                let _ = self.conn.stream().write_all(&self.out);
                Step::Close(Err("handshake refused".into()))
            }
        }
    }

    fn push(&mut self, q: Queued) {
        // Malformed, empty and invalid requests alike; a request that succeeded costs one comparison here.
        if let response::Body::Error(e) = &q.body
            && e.kind == proto::ErrorKind::InvalidRequest as i32
        {
            self.srv.pool.bad_requests.note(&self.peer_addr, &e.message);
        }
        self.batch_bytes += q.body.encoded_len();
        self.batch.push(q);
    }

    /// Commits the batch's peer writes, then writes every reply of the batch.
    fn flush(&mut self) -> Result<(), String> {
        if let Err(e) = self.srv.node.commit_acks(self.batch.iter().filter_map(|q| q.commit.as_ref())) {
            // Nothing unlogged is acknowledged: each write's reply becomes the storage error.
            for q in self.batch.iter_mut().filter(|q| q.commit.is_some()) {
                q.commit = None;
                q.body = response::Body::Error(e.to_proto());
            }
        }
        for q in self.batch.drain(..) {
            append_frame(&proto::Response { id: q.id, body: Some(q.body) }, &mut self.out);
            self.after.extend(q.after);
        }
        self.batch_bytes = 0;
        if let Role::Peer(p) = self.role {
            let rule = self.srv.links.faults.rule(p);
            if rule.drop_to {
                self.out.clear(); // injected fault: the replies are lost on the way
            }
            if !rule.delay_to.is_zero() {
                std::thread::sleep(rule.delay_to);
            }
        }
        conn::write_replies(self.conn.stream(), &mut self.out, &mut self.after)
    }

    /// Waits for the deferred reply (if any) to be answered, writes what of it is
    /// stashed, and finishes its call. Fails if it is never answered or the write fails.
    fn settle(&mut self) -> std::io::Result<()> {
        let Some(u) = self.unfinished.take() else { return Ok(()) };
        conn::settle_call(&self.conn, u)
    }
}

fn error_response(id: u64, e: Error) -> proto::Response {
    proto::Response { id, body: Some(response::Body::Error(e.to_proto())) }
}
