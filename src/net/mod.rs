//! The network: the only code that touches sockets.
//!
//! * [`frame`] — length-prefixed protobuf frames.
//! * [`link`] — one multiplexed connection per peer.
//! * [`conn`] — a client connection's reply side (deferred replies).
//! * [`server`] — the listener, the connection pool and the replica's threads.
//! * [`fault`] — injected network faults.
//! * [`badlog`] — rate-limited logging of bad requests.

pub mod badlog;
pub mod conn;
pub mod fault;
pub mod frame;
pub mod link;
pub mod server;
