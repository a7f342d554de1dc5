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
//! (`max_query_bytes`), and a command arriving in pieces is resumed where it
//! stopped ([`Partial`]); replies are written once `FLUSH_BYTES` pile up, and
//! at most `MAX_IN_FLIGHT` pipelined commands are in flight: a client cannot
//! make a replica hold more than about twice a command's worth of its input
//! (the bytes, and the arguments taken from them so far) and a bounded batch
//! of replies.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use log::debug;

use crate::cluster::consistency::Consistency;
use crate::coordinator::command::Responder;
use crate::message::Reply as KvReply;
use crate::net::conn::{self, ClientConn};
use crate::net::pool::Server;
use crate::node::{Deferred, Unfinished};
use crate::resp::session::{Outcome, Session, Shape, Shared};
use crate::resp::{Limits, Parser, Partial, Reply, Version};
use parking_lot::{Condvar, Mutex};

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

/// The most pipelined commands in flight at once on one connection (with
/// `FLUSH_BYTES`, what bounds the replies a connection holds: at most this
/// many values, each within the value limit).
const MAX_IN_FLIGHT: usize = 32;

/// Bits of a batched reply's token below its slot (the [`Shape`]'s token).
const SLOT_SHIFT: u32 = 16;

/// Pipelined commands in flight: their encoded replies, in order, filled
/// by whichever thread answers each.
#[derive(Default)]
struct Batch {
    slots: Mutex<Vec<Option<Vec<u8>>>>,
    filled: Condvar,
}

/// The responder of pipelined commands: the token is the slot, then the shape.
struct BatchResponder(Arc<Batch>);

impl Responder for BatchResponder {
    fn defer(&self, _token: u64) {}

    fn answer(&self, token: u64, reply: KvReply) {
        let (reply, version) = match Shape::of_token(token & ((1 << SLOT_SHIFT) - 1)) {
            Some((shape, version)) => (shape.reply(reply), version),
            None => (Reply::error("ERR", &format!("internal: a batched RESP reply with token {token}")), Version::Resp2),
        };
        let mut bytes = Vec::new();
        reply.encode_as(&mut bytes, version);
        let mut slots = self.0.slots.lock();
        if let Some(slot @ None) = slots.get_mut((token >> SLOT_SHIFT) as usize) {
            *slot = Some(bytes);
        }
        drop(slots);
        self.0.filled.notify_all();
    }
}

/// Which pipelined commands may run side by side: a run of plain `GET`s, or
/// a run of plain `SET`s, of distinct keys, below SERIAL. Any other command,
/// a change of kind, or a second command on a key in flight waits for those
/// in flight: for each key, a pipeline keeps the meaning it has when its
/// commands run one by one (a read after a write of its key sees it, the
/// last write of a key wins, two reads of a key never go back in time).
/// Across keys it does not: another client may see the second `SET` of a
/// run before the first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Reads,
    Writes,
}

fn concurrent_kind(args: &[Vec<u8>]) -> Option<Kind> {
    match (args.first(), args.len()) {
        (Some(name), 2) if name.eq_ignore_ascii_case(b"get") => Some(Kind::Reads),
        (Some(name), 3) if name.eq_ignore_ascii_case(b"set") => Some(Kind::Writes),
        _ => None,
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
    /// What one read takes (copied to `buf`: no zeroing of fresh room on every read).
    chunk: Box<[u8]>,
    start: usize,
    out: Vec<u8>,
    after: Vec<Deferred>,
    unfinished: Option<Unfinished>,
    polling: bool,
    peer_addr: String,
    /// Pipelined commands in flight.
    batch: Arc<Batch>,
    batch_responder: Arc<dyn Responder>,
    /// Their calls, finished once their replies are out, and what runs after.
    in_flight: Vec<Unfinished>,
    in_flight_after: Vec<Deferred>,
    in_flight_kind: Option<Kind>,
    /// The keys of the commands in flight.
    in_flight_keys: std::collections::HashSet<Vec<u8>>,
    /// Calls of pipelined commands answered, to finish once their replies are written.
    finish_after_write: Vec<Unfinished>,
    /// The command being read in part.
    partial: Partial,
}

impl<'s, 'a> Connection<'s, 'a> {
    fn new(srv: &'s Server<'a>, stream: TcpStream, shared: &'a Shared) -> Self {
        let peer_addr = stream.peer_addr().map(|a| a.to_string()).unwrap_or_else(|_| "?".into());
        let conn = ClientConn::new(stream);
        let batch = Arc::new(Batch::default());
        Connection {
            batch_responder: Arc::new(BatchResponder(batch.clone())),
            batch,
            in_flight: Vec::new(),
            in_flight_after: Vec::new(),
            in_flight_kind: None,
            in_flight_keys: std::collections::HashSet::new(),
            finish_after_write: Vec::new(),
            partial: Partial::default(),
            srv,
            responder: Arc::new(RespResponder(conn.clone())),
            conn,
            session: Session::new(srv.node, shared),
            buf: Vec::with_capacity(READ_CHUNK),
            chunk: vec![0; READ_CHUNK].into_boxed_slice(),
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
            let parsed = parser.parse_more(&self.buf[self.start..], &mut self.partial);
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
                    let kind = concurrent_kind(&args).filter(|_| self.session.level() != Consistency::Serial);
                    let batching = !self.batch.slots.lock().is_empty();
                    let again = kind.is_some() && self.in_flight_keys.contains(&args[1]);
                    if batching && (kind.is_none() || kind != self.in_flight_kind || again) {
                        // This command runs after those in flight.
                        if let Err(e) = self.drain() {
                            break Err(e);
                        }
                        // Replies do not pile up: a pipeline of large values is written as it goes.
                        if self.out.len() >= FLUSH_BYTES
                            && let Err(e) = self.write_out()
                        {
                            break Err(e);
                        }
                    }
                    if kind.is_some() && (buffered || !self.batch.slots.lock().is_empty()) {
                        // Pipelined: runs beside the others of its kind.
                        self.in_flight_kind = kind;
                        self.in_flight_keys.insert(args[1].clone());
                        self.start_in_flight(args);
                        let full = self.batch.slots.lock().len() >= MAX_IN_FLIGHT;
                        if (!buffered || full)
                            && let Err(e) = self.flush()
                        {
                            break Err(e);
                        }
                        continue;
                    }
                    let lone = conn::SUPPORTED && self.out.is_empty() && !buffered;
                    let later = if lone { Some((&self.responder, 0)) } else { None };
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
        // After the replies to the commands before it, those in flight included.
        self.drain()?;
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
        let conn = self.conn.clone();
        loop {
            let mut stream = conn.stream();
            match stream.read(&mut self.chunk) {
                Ok(n) => {
                    self.buf.extend_from_slice(&self.chunk[..n]);
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
                Err(e) => return Err(format!("read failed: {e}")),
            }
        }
    }

    /// Starts a pipelined command beside those in flight; its reply goes to its slot.
    fn start_in_flight(&mut self, args: Vec<Vec<u8>>) {
        let slot = {
            let mut slots = self.batch.slots.lock();
            slots.push(None);
            slots.len() - 1
        };
        let version = self.session.version();
        match self.session.execute(args, Some((&self.batch_responder, (slot as u64) << SLOT_SHIFT))) {
            // (A GET or SET never closes the connection.)
            Outcome::Reply(r, after) => {
                let mut bytes = Vec::new();
                r.encode_as(&mut bytes, version);
                self.batch.slots.lock()[slot] = Some(bytes);
                self.in_flight_after.extend(after);
            }
            Outcome::Close(r) => {
                let mut bytes = Vec::new();
                r.encode_as(&mut bytes, version);
                self.batch.slots.lock()[slot] = Some(bytes);
            }
            Outcome::Later(u) => self.in_flight.push(u),
        }
    }

    /// Waits for every pipelined command in flight to be answered, appends
    /// their replies to the batch in order, and finishes their calls.
    fn drain(&mut self) -> Result<(), String> {
        let give_up = self.in_flight.iter().map(Unfinished::deadline).max().map(|d| d + Duration::from_secs(1));
        // Their calls finish once the replies are written (or the connection fails).
        self.finish_after_write.append(&mut self.in_flight);
        let mut slots = self.batch.slots.lock();
        while slots.iter().any(Option::is_none) {
            let Some(give_up) = give_up else { break };
            if self.batch.filled.wait_until(&mut slots, give_up).timed_out() && slots.iter().any(Option::is_none) {
                slots.clear();
                drop(slots);
                self.finish_calls();
                return Err("a pipelined command was never answered".into());
            }
        }
        for reply in slots.drain(..) {
            self.out.extend_from_slice(&reply.unwrap_or_default());
        }
        drop(slots);
        self.after.append(&mut self.in_flight_after);
        self.in_flight_kind = None;
        self.in_flight_keys.clear();
        Ok(())
    }

    /// Writes the batched replies (those in flight first answered), then runs the work that waits for them.
    fn flush(&mut self) -> Result<(), String> {
        self.drain()?;
        self.write_out()
    }

    /// Finishes the calls of pipelined commands whose replies are out.
    fn finish_calls(&mut self) {
        for u in self.finish_after_write.drain(..) {
            u.finish();
        }
    }

    /// Writes what is batched in `out`, then runs the work that waits for it.
    fn write_out(&mut self) -> Result<(), String> {
        let written = conn::write_replies(self.conn.stream(), &mut self.out, &mut self.after);
        self.finish_calls();
        written
    }

    /// Waits for the deferred reply (if any), writes what of it is stashed, finishes its call.
    fn settle(&mut self) -> std::io::Result<()> {
        let Some(u) = self.unfinished.take() else { return Ok(()) };
        conn::settle_call(&self.conn, u)
    }
}
