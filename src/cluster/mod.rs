//! The cluster: who the replicas are, and where each key lives.
//!
//! * [the file module](self::file) — the cluster file: `name host port` lines, and the settings
//!   of issue 12 (`partitioner`, `rf`, `vnodes`, `tokens=`), read and checked
//!   line by line.
//! * [`ring`] — the stable
//!   [`NodeId`](ring::NodeId) of each node (derived from its name, so state
//!   keyed by it survives a change of the ring), and the byte-ordered ring:
//!   keys `0..=255` in contiguous ranges, each key on its owner and the next
//!   `RF - 1` nodes clockwise. A ring is immutable and carries an epoch; a
//!   membership change will make a new ring, never mutate this one.
//! * [`consistency`] — the levels a request may ask for (ONE, QUORUM, ALL),
//!   how many of a key's replicas each needs, and the tracker that counts acks
//!   and failures toward it.
//!
//! * [`token`] — Cassandra's Murmur3 token of a key and a ring of node tokens
//!   with balanced token allocation: the placement of the murmur3
//!   partitioner.
//! * [`key`] — keys as bytes, and the [`Partitioner`](key::Partitioner) that
//!   checks them (byte-ordered: the integers 0–255; murmur3: 1 to
//!   `--max-key-bytes` bytes) and gives each its store slot.
//!
//! * [`metadata`] — the cluster's members, their tokens and states, by epoch:
//!   the changes a join, decommission or removenode makes, and the read and
//!   write rings while data moves.

pub mod consistency;
pub mod file;
pub mod key;
pub mod metadata;
pub mod ring;
pub mod token;
