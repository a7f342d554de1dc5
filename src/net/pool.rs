//! What every thread of the server shares: the node, its links, and the
//! accounting of the elastic connection pool.

use std::io::Write;
use std::net::TcpStream;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use crossbeam_channel::{Receiver, Sender};

use crate::error::Error;
use crate::net::badlog::BadLog;
use crate::net::frame::encode_frame;
use crate::net::links::Links;
use crate::node::Node;
use crate::proto::{self, response};

/// Connection accounting for the elastic pool.
pub(super) struct Pool {
    pub(super) tx: Sender<Incoming>,
    pub(super) rx: Receiver<Incoming>,
    pub(super) workers: AtomicUsize,
    pub(super) idle: AtomicUsize,
    pub(super) connections: AtomicUsize,
    pub(super) clients: AtomicUsize,
    pub(super) client_limit: usize,
    pub(super) total_limit: usize,
    /// Malformed and invalid requests, logged at most once a second.
    pub(super) bad_requests: BadLog,
    /// Refused handshakes (a peer with another ring, or garbage), logged apart so a flood of bad requests cannot hide them.
    pub(super) refused_links: BadLog,
}

/// A connection accepted, for a worker: which listener it came from.
pub(super) enum Incoming {
    /// The replica's port: the native protocol (clients and peers).
    Native(TcpStream),
    /// `--resp-port`: the Redis protocol.
    Resp(TcpStream),
}

/// What every thread of the server shares.
pub(super) struct Server<'a> {
    pub(super) node: &'a Arc<Node>,
    pub(super) links: &'a Links,
    pub(super) pool: Pool,
    /// The RESP listener's shared state, when there is one.
    pub(super) resp: Option<crate::resp::session::Shared>,
}

/// Refuses a connection with an `Overloaded` error (best effort, never blocking long).
pub(super) fn refuse(mut stream: &TcpStream, why: &str) {
    let _ = stream.set_write_timeout(Some(Duration::from_millis(100)));
    let mut buf = Vec::new();
    let e = Error::Overloaded(why.into()).to_proto();
    encode_frame(&proto::Response { id: 0, body: Some(response::Body::Error(e)) }, &mut buf);
    let _ = stream.write_all(&buf);
}
