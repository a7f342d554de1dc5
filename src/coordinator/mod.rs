//! The coordinator: one client request as a state machine, and the glue that
//! waits on it.
//!
//! Any replica coordinates any key. A request becomes a *call*: a machine with
//! a *slot* per replica it asks. The machines hold no sockets, no clocks and
//! no node: given a typed reply ([`crate::message::PeerResponse`], or the error
//! that replaced it) they update their counts and push [`command::Command`]s —
//! *send this message to that replica*, *keep a hint*, *repair a replica*,
//! *answer the client*. Everything that touches the world is done by an
//! [`command::Executor`] (the node), through one fan-out loop for every kind of
//! call. This is the shape of raft-rs's `Ready`: the protocol says what to do,
//! the caller does it. Tests drive the machines with tables of replies, and
//! drive whole nodes over a simulated network.
//!
//! * [`write::WriteMachine`] — counts acks toward the level; a replica that
//!   fails or times out gets a hint, even after the client was answered.
//! * [`read::ReadMachine`] — keeps every replica's version, repairs stale
//!   replicas before answering at QUORUM and ALL, and in the background once
//!   every replica has replied or timed out.
//! * [`gather::GatherMachine`] — one question to several replicas, every
//!   answer kept (inspect, display, hint replay, scan).
//! * [`antientropy::SyncMachine`] — one slot's anti-entropy exchange among
//!   its replicas: roots, the leaves of groups that differ, then the cells of
//!   the leaves that differ, the newest version sent where it is missing.
//! * [`scan`] — the pure half of `scan`: merging the replicas' listings of a
//!   slot into a page, and the token ranges a slot spans.
//!
//! [`call::Call`] wraps a machine with a mutex and a condvar: replies reach it
//! from whichever thread received them (a link's reader, the timeout sweep,
//! the coordinator itself for the local replica); a coordinator that waits,
//! waits on it. When a client's reply is *deferred*, the machine answers
//! through a [`command::Responder`] (implemented by the client connection of
//! each protocol) the moment it settles, and nobody waits.
//!
//! [`peers::Peers`] is all the coordinator knows of the network: send a typed
//! message to a [`crate::cluster::ring::NodeId`], ask whether it is up. The
//! real links implement it, and so does the simulated network of the tests.
//! [`readbatch`] queues reads that are off the client's path per peer.
//! [`tally`] counts a call's replies toward the level (with the quorum tracker
//! of [`crate::cluster::consistency`]) and remembers why replicas failed.

pub mod antientropy;
pub mod cache;
pub mod call;
pub mod command;
pub mod gather;
pub mod peers;
pub mod read;
pub mod readbatch;
pub mod scan;
pub mod tally;
pub mod write;

#[cfg(test)]
mod tests;
