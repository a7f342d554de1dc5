//! One RESP connection (`--resp-port`), served by one pool worker until it
//! closes: bytes in, [`crate::resp::Parser`] cuts commands, the connection's
//! [`Session`] executes them on the node, replies go out in order.
//!
//! It follows the native connection ([`crate::net::connection`]): replies
//! of pipelined commands are batched into one `write` (when no further
//! command is buffered, or at `FLUSH_BYTES`); a lone command whose answer
//! must come from other replicas is deferred to the thread that settles its
//! call, through a [`Responder`] that encodes the node's reply as RESP (the
//! token is the reply's [`Shape`]).
//!
//! Bad input: a protocol error is answered with `-ERR Protocol error: …`
//! and closes the connection, as Redis does; a command refused (unknown,
//! wrong arguments, a key the cluster cannot take) is answered and the
//! connection goes on. The bytes buffered for one command are capped
//! (`max_query_bytes`): a client cannot make a replica hold more than one
//! command's worth of its input.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::debug;

use crate::coordinator::command::Responder;
use crate::message::Reply as KvReply;
use crate::net::conn::{self, ClientConn};
use crate::net::pool::Server;
use crate::node::{Deferred, Unfinished};
use crate::resp::session::{Outcome, Session, Shape, Shared};
use crate::resp::{Limits, Parser, Reply, Version};

/// Buffered replies are written once they reach this size.
const FLUSH_BYTES: usize = 256 * 1024;

/// Bytes read from the socket at a time.
const READ_CHUNK: usize = 16 * 1024;

/// The RESP protocol's responder: the token is the reply's [`Shape`].
struct RespResponder(Arc<ClientConn>);

impl Responder for RespResponder {
    fn defer(&self, _token: u64) {
        self.0.begin();
    }

    fn answer(&self, token: u64, reply: KvReply) {
        let (reply, version) = match Shape::of_token(token) {
            Some((shape, version)) => (shape.reply(reply), version),
            None => (Reply::error("ERR", &format!("internal: a deferred RESP reply with token {token}")), Version::Resp2),
        };
        self.0.answer_with(|out| reply.encode_as(out, version));
    }
}

/// The most bytes one command may take on the wire: the largest value, a
/// transaction's worth of values and keys, and room.
fn max_query_bytes(node: &crate::node::Node) -> usize {
    let c = &node.cfg;
    c.max_value_bytes + c.max_txn_bytes + c.max_txn_keys * (c.max_key_bytes + 32) + (64 << 10)
}

/// Refuses a connection with an error reply (best effort, never blocking long).
pub(super) fn refuse(mut stream: &TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut out = Vec::new();
    Reply::error("ERR", why).encode(&mut out);
    let _ = stream.write_all(&out);
}

/// Serves a RESP client on `stream` until it closes.
pub(super) fn serve_resp(srv: &Server<'_>, stream: TcpStream, shared: &Shared) {
    let pool = &srv.pool;
    let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
    let _ = stream.set_nodelay(true);
    if pool.clients.fetch_add(1, Ordering::AcqRel) >= pool.client_limit {
        pool.clients.fetch_sub(1, Ordering::AcqRel);
        refuse(&stream, "max number of clients reached");
        return;
    }
    shared.clients.fetch_add(1, Ordering::AcqRel);
    let outcome = Connection::new(srv, stream, shared).run();
    shared.clients.fetch_sub(1, Ordering::AcqRel);
    pool.clients.fetch_sub(1, Ordering::AcqRel);
    if let Err(why) = outcome {
        debug!("RESP connection from {peer_addr} closed: {why}");
    }
}

struct Connection<'s, 'a> {
    srv: &'s Server<'a>,
    conn: Arc<ClientConn>,
    responder: Arc<dyn Responder>,
    session: Session<'a>,
    /// Bytes read and not yet parsed: `buf[start..]`.
    buf: Vec<u8>,
    start: usize,
    out: Vec<u8>,
    after: Vec<Deferred>,
    unfinished: Option<Unfinished>,
    polling: bool,
    peer_addr: String,
}

impl<'s, 'a> Connection<'s, 'a> {
    fn new(srv: &'s Server<'a>, stream: TcpStream, shared: &'a Shared) -> Self {
        let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let conn = ClientConn::new(stream);
        Connection {
            srv,
            responder: Arc::new(RespResponder(conn.clone())),
            conn,
            session: Session::new(srv.node, shared),
            buf: Vec::with_capacity(READ_CHUNK),
            start: 0,
            out: Vec::with_capacity(4096),
            after: Vec::new(),
            unfinished: None,
            polling: false,
            peer_addr,
        }
    }

    fn run(&mut self) -> Result<(), String> {
        let node = self.srv.node;
        let parser = Parser::new(Limits::for_values(node.cfg.max_value_bytes));
        let max_query = max_query_bytes(node);
        let result = loop {
            let parsed = parser.parse(&self.buf[self.start..]);
            match parsed {
                Ok(Some((args, used))) => {
                    self.start += used;
                    if args.is_empty() {
                        continue; // an empty line or `*0`: Redis ignores it
                    }
                    // Replies go out in order: the deferred one first.
                    if let Err(e) = self.settle() {
                        break Err(format!("deferred reply: {e}"));
                    }
                    let buffered = self.start < self.buf.len();
                    let lone = conn::SUPPORTED && self.out.is_empty() && !buffered;
                    let later = if lone { Some(&self.responder) } else { None };
                    match self.session.execute(args, later) {
                        Outcome::Reply(r, after) => {
                            r.encode_as(&mut self.out, self.session.version());
                            self.after.extend(after);
                        }
                        Outcome::Later(u) => {
                            self.unfinished = Some(u);
                            if !self.polling {
                                self.polling = true;
                                let _ = self.conn.stream().set_read_timeout(Some(conn::POLL));
                            }
                        }
                        Outcome::Close(r) => {
                            r.encode_as(&mut self.out, self.session.version());
                            break self.flush();
                        }
                    }
                    if (!buffered || self.out.len() >= FLUSH_BYTES)
                        && let Err(e) = self.flush()
                    {
                        break Err(e);
                    }
                }
                Ok(None) => {
                    // The rest of a command may come only once the client has its replies.
                    if let Err(e) = self.flush() {
                        break Err(e);
                    }
                    if self.buf.len() - self.start > max_query {
                        let why = format!("a command of more than {max_query} bytes (the value and transaction limits allow no more)");
                        break self.refuse(&why);
                    }
                    match self.fill() {
                        Ok(true) => {}
                        Ok(false) => break Ok(()),
                        Err(e) => break Err(e),
                    }
                }
                Err(e) => break self.refuse(&e.0),
            }
        };
        result.and(self.settle().map_err(|e| format!("deferred reply: {e}")))
    }

    /// Answers a protocol error (after the replies before it) and closes.
    fn refuse(&mut self, why: &str) -> Result<(), String> {
        self.srv.pool.bad_requests.note(&self.peer_addr, &why);
        self.settle().map_err(|e| format!("deferred reply: {e}"))?;
        Reply::error("ERR", &format!("Protocol error: {why}")).encode(&mut self.out);
        self.flush()?;
        Err(format!("protocol error: {why}"))
    }

    /// Reads more bytes; false at the end of the stream.
    fn fill(&mut self) -> Result<bool, String> {
        if self.start > 0 {
            self.buf.drain(..self.start);
            self.start = 0;
        }
        let len = self.buf.len();
        self.buf.resize(len + READ_CHUNK, 0);
        let conn = self.conn.clone();
        loop {
            let mut stream = conn.stream();
            match stream.read(&mut self.buf[len..]) {
                Ok(n) => {
                    self.buf.truncate(len + n);
                    if self.buf.capacity() > 4 << 20 && self.buf.len() < READ_CHUNK {
                        self.buf.shrink_to(READ_CHUNK * 2);
                    }
                    return Ok(n > 0);
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) if self.polling && matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                    // The client is quiet: write a deferred reply's stash if it has one,
                    // and stop polling once nothing is deferred.
                    if !self.conn.is_deferred() {
                        self.settle().map_err(|e| format!("deferred reply: {e}"))?;
                        self.polling = false;
                        let _ = self.conn.stream().set_read_timeout(None);
                    }
                }
                Err(e) => {
                    self.buf.truncate(len);
                    return Err(format!("read failed: {e}"));
                }
            }
        }
    }

    /// Writes the batched replies, then runs the work that waits for them.
    fn flush(&mut self) -> Result<(), String> {
        let written = if self.out.is_empty() {
            Ok(())
        } else {
            {
                let mut stream = self.conn.stream();
                stream.write_all(&self.out)
            }
        };
        for work in self.after.drain(..) {
            work.run();
        }
        self.out.clear();
        if self.out.capacity() > 1 << 20 {
            self.out = Vec::with_capacity(4096);
        }
        written.map_err(|e| format!("write failed: {e}"))
    }

    /// Waits for the deferred reply (if any), writes what of it is stashed, finishes its call.
    fn settle(&mut self) -> std::io::Result<()> {
        let Some(u) = self.unfinished.take() else { return Ok(()) };
        let result = self.conn.settle(u.deadline() + Duration::from_secs(1));
        u.finish();
        result
    }
}
