//! Storage: what one replica keeps, and how it survives a crash.
//!
//! * [`cell`] — a [`Version`](cell::Version) (a value or a tombstone, stamped
//!   with a timestamp) and the last-write-wins merge, whose laws (commutative,
//!   associative, idempotent) make read repair and hint replay safe to repeat
//!   in any order.
//! * [`hlc`] — the hybrid logical clock that stamps writes: `max(wall,
//!   last + 1)`, moved forward by the timestamps a replica sees, refusing ones
//!   too far ahead.
//! * [`store`] — the 256 cells behind one `RwLock`; a change is merged and
//!   appended to the log under the same lock, so log order is state order.
//! * [`hints`] — writes kept for replicas (by [`NodeId`](crate::cluster::ring::NodeId))
//!   that missed them, one per target and key, bounded in bytes and in age.
//! * [`wal`] — the write-ahead log: records, group commit, snapshots, recovery.
//!
//! Nothing here knows about the network or other replicas: the node decides
//! what to store, this folder stores it durably and gives it back after a restart.

pub mod cell;
pub mod hints;
pub mod hlc;
pub mod store;
pub mod wal;
