//! The network: the only code that touches sockets.
//!
//! * [`server`] — binds the listener, builds the links and the node, starts
//!   every long-lived thread in one `std::thread::scope`, and runs the elastic
//!   pool of connection workers.
//! * [`connection`] — one connection served by one worker: frames in, typed
//!   requests to the node, typed answers encoded back, replies batched.
//! * [`resp_conn`] — one connection on `--resp-port`: the Redis protocol,
//!   commands executed by a [`Session`](crate::resp::session::Session).
//! * [`conn`] — a client connection's reply side: deferred replies, sent by the
//!   thread that settles the call without blocking (the native protocol's
//!   [`Responder`](crate::coordinator::command::Responder)).
//! * [`link`] — one multiplexed connection per peer; [`links`] — all of them,
//!   as [`links::Links`], which implements the coordinator's
//!   [`Peers`](crate::coordinator::peers::Peers).
//! * [`threads`] — maintenance (timeouts, failure detection, heartbeats),
//!   delayed frames, the log's syncer and snapshots, hint replay.
//! * [`frame`] — length-prefixed protobuf frames.
//! * [`fault`] — injected faults (drop, delay, pause), consulted by the links
//!   and the connections with one relaxed atomic load when none is set.
//! * [`badlog`] — rate-limited logging of bad requests.
//! * [`fuzz`] — the body of the `frame_decode` fuzz target.

pub mod badlog;
pub mod conn;
pub mod connection;
pub mod fault;
pub mod frame;
pub mod fuzz;
pub mod link;
pub mod links;
mod pool;
pub mod resp_conn;
pub mod server;
pub mod threads;
