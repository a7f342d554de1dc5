//! The reply side of a client connection, shared by its worker and the threads
//! that may answer for it.
//!
//! A connection's worker normally coordinates a request, waits for the
//! replicas and writes the reply. When the answer can only come from other
//! replicas — a write, a read at QUORUM or ALL, or a read at ONE of a key this
//! node does not hold — that wait costs the worker a sleep and a wakeup on top of the peers' round
//! trip, and on a small machine those wakeups are most of the cost. Instead,
//! the worker [`begin`](ClientConn::begin)s a *deferred reply*, hands the
//! call a `ReplyTo` naming this connection (as its [`Responder`]), and goes
//! back to reading the socket. Whichever thread settles the call (usually the peer link's reader)
//! [`answer`](ClientConn::answer_body)s with one non-blocking `send`.
//!
//! Rules that keep this safe:
//!
//! * **Nothing blocks on a client but its own worker.** The answering thread
//!   never waits on the socket: if the socket cannot take the whole reply (a
//!   huge value, or a client that stopped reading), the rest is *stashed* and
//!   the worker writes it. While a reply is deferred the worker reads with a
//!   short timeout ([`POLL`]) so it finds a stash soon even if the client sends
//!   nothing more.
//! * **Replies stay in request order.** Before the worker takes the next
//!   request it [`settle`](ClientConn::settle)s: waits until the deferred reply
//!   is out (for a client that waits for each reply, it always is) and writes
//!   any stash. Only one reply is ever deferred per connection.
//! * **Every deferred reply is answered.** A call always settles: each replica
//!   replies, fails, or is timed out by the maintenance sweep.

use std::io::{self, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::coordinator::command::Responder;
use crate::message::Reply;
use crate::net::frame::append_frame;
use crate::proto::{self, response};

/// How often a worker with a deferred reply checks for a stash while its client is silent.
pub const POLL: Duration = Duration::from_millis(10);

/// Whether replies can be deferred on this platform (a non-blocking `send` is needed).
pub const SUPPORTED: bool = cfg!(target_os = "linux");

#[cfg(target_os = "linux")]
const SEND_FLAGS: std::os::raw::c_int = 0x40 /* MSG_DONTWAIT */ | 0x4000 /* MSG_NOSIGNAL */;
#[cfg(not(target_os = "linux"))]
const SEND_FLAGS: std::os::raw::c_int = 0;

#[derive(Default)]
struct State {
    /// A reply has been deferred and not yet answered.
    deferred: bool,
    /// The frame being sent, reused from reply to reply.
    frame: Vec<u8>,
    /// Bytes of `frame` already sent; those after it are the stash.
    sent: usize,
}

/// A client connection's socket, with its deferred reply (see the module docs).
pub struct ClientConn {
    stream: TcpStream,
    state: Mutex<State>,
    answered: Condvar,
}

impl ClientConn {
    /// Wraps the connection's socket (the worker writes its own replies through [`stream`](Self::stream)).
    pub fn new(stream: TcpStream) -> Arc<Self> {
        Arc::new(ClientConn { stream, state: Mutex::new(State::default()), answered: Condvar::new() })
    }

    /// The socket.
    pub fn stream(&self) -> &TcpStream {
        &self.stream
    }

    /// Marks a reply as deferred; the call will answer it.
    pub fn begin(&self) {
        let mut s = self.state.lock();
        debug_assert!(!s.deferred && s.sent == s.frame.len(), "one deferred reply at a time");
        s.deferred = true;
    }

    /// Sends the deferred reply without blocking; whatever the socket does not
    /// take is left for the worker. A second answer, or one never begun, is ignored.
    pub fn answer_body(&self, id: u64, body: response::Body) {
        self.answer_with(|frame| append_frame(&proto::Response { id, body: Some(body) }, frame));
    }

    /// Sends the deferred reply `encode` appends to an empty buffer, as
    /// [`answer_body`](Self::answer_body) does (any protocol's encoding).
    pub fn answer_with(&self, encode: impl FnOnce(&mut Vec<u8>)) {
        let mut s = self.state.lock();
        if !s.deferred {
            return;
        }
        s.deferred = false;
        s.frame.clear();
        s.sent = 0;
        encode(&mut s.frame);
        let sock = socket2::SockRef::from(&self.stream);
        while s.sent < s.frame.len() {
            match sock.send_with_flags(&s.frame[s.sent..], SEND_FLAGS) {
                Ok(n) => s.sent += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => {
                    // The client is gone; its worker finds out on its next read.
                    s.sent = s.frame.len();
                }
            }
        }
        drop(s);
        self.answered.notify_all();
    }

    /// Whether a deferred reply is still unanswered.
    pub fn is_deferred(&self) -> bool {
        self.state.lock().deferred
    }

    /// Whether a deferred reply is still unanswered or partly unsent.
    pub fn pending(&self) -> bool {
        let s = self.state.lock();
        s.deferred || s.sent < s.frame.len()
    }

    /// The worker, before its next reply: waits (until `give_up`) for the
    /// deferred reply to be answered, then writes whatever of it is stashed.
    /// Fails if the wait times out (the connection should be closed) or the write fails.
    pub fn settle(&self, give_up: Instant) -> io::Result<()> {
        let mut s = self.state.lock();
        while s.deferred {
            if self.answered.wait_until(&mut s, give_up).timed_out() && s.deferred {
                return Err(io::Error::new(io::ErrorKind::TimedOut, "a deferred reply was never answered"));
            }
        }
        if s.sent == s.frame.len() {
            return Ok(());
        }
        // The stash: write it outside the lock (nobody else touches it until the next `begin`).
        let frame = std::mem::take(&mut s.frame);
        let from = s.sent;
        drop(s);
        let result = (&self.stream).write_all(&frame[from..]);
        let mut s = self.state.lock();
        s.sent = frame.len();
        s.frame = frame;
        result
    }
}

/// Writes a connection's batched replies `out` (emptied, its room given back
/// past 1 MiB), then runs `after`: the work that waits for them to be on the wire.
pub fn write_replies(mut stream: &TcpStream, out: &mut Vec<u8>, after: &mut Vec<crate::node::Deferred>) -> Result<(), String> {
    let written = if out.is_empty() { Ok(()) } else { stream.write_all(out) };
    for work in after.drain(..) {
        work.run();
    }
    out.clear();
    if out.capacity() > 1 << 20 {
        *out = Vec::with_capacity(4096);
    }
    written.map_err(|e| format!("write failed: {e}"))
}

/// Waits for the deferred reply of `u` to be answered (until its deadline and
/// the sweep's tick: every call settles by then), writes what of it is
/// stashed, and finishes the call. Fails if it is never answered or the write fails.
pub fn settle_call(conn: &ClientConn, u: crate::node::Unfinished) -> io::Result<()> {
    let result = conn.settle(u.deadline() + Duration::from_secs(1));
    u.finish();
    result
}

/// The native protocol's responder: a deferred reply is the request's id and
/// the reply's protobuf encoding.
impl Responder for ClientConn {
    fn defer(&self, _token: u64) {
        self.begin();
    }

    fn answer(&self, token: u64, reply: Reply) {
        self.answer_body(token, reply.into_proto());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::FrameReader;
    use prost::Message;
    use std::io::Read;
    use std::net::TcpListener;

    fn pair() -> (Arc<ClientConn>, TcpStream) {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let client = TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (server, _) = l.accept().unwrap();
        (ClientConn::new(server), client)
    }

    fn pong(name: &str) -> response::Body {
        response::Body::Pong(proto::Pong { name: name.into() })
    }

    fn read(client: &TcpStream) -> proto::Response {
        let mut r = FrameReader::new(client.try_clone().unwrap(), 64 << 20);
        proto::Response::decode(r.read_frame().unwrap().unwrap()).unwrap()
    }

    #[test]
    fn an_answer_goes_out_at_once_and_only_once() {
        let (conn, client) = pair();
        assert!(!conn.pending());
        conn.begin();
        assert!(conn.pending());
        conn.answer_body(7, pong("a"));
        conn.answer_body(8, pong("b")); // not deferred any more: ignored
        assert!(!conn.pending());
        conn.settle(Instant::now()).unwrap();
        let r = read(&client);
        assert_eq!((r.id, r.body), (7, Some(pong("a"))));
        client.set_nonblocking(true).unwrap();
        assert!(matches!((&client).read(&mut [0u8; 1]), Err(e) if e.kind() == io::ErrorKind::WouldBlock), "a second frame was sent");
    }

    #[test]
    fn settle_waits_for_the_answer_from_another_thread() {
        let (conn, client) = pair();
        conn.begin();
        let barrier = std::sync::Barrier::new(2);
        std::thread::scope(|s| {
            s.spawn(|| {
                barrier.wait();
                conn.answer_body(1, pong("late"));
            });
            barrier.wait();
            conn.settle(Instant::now() + Duration::from_secs(10)).unwrap();
            assert!(!conn.pending());
        });
        assert_eq!(read(&client).body, Some(pong("late")));
    }

    #[test]
    fn settle_gives_up_on_an_answer_that_never_comes() {
        let (conn, _client) = pair();
        conn.begin();
        let e = conn.settle(Instant::now() + Duration::from_millis(20)).unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn what_the_socket_cannot_take_is_stashed_and_written_by_settle() {
        let (conn, client) = pair();
        // Far more than a socket buffer, while the client reads nothing.
        let big = "x".repeat(16 << 20);
        conn.begin();
        conn.answer_body(3, pong(&big));
        assert!(conn.pending(), "16 MiB went out without blocking: the stash path was not taken");
        std::thread::scope(|s| {
            let reader = s.spawn(|| read(&client));
            conn.settle(Instant::now()).unwrap();
            let r = reader.join().unwrap();
            assert_eq!(r.id, 3);
            assert_eq!(r.body, Some(pong(&big)));
        });
        assert!(!conn.pending());
    }
}
