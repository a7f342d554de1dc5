//! Storage: cells, the store, hints, the clock and the write-ahead log.

pub mod cell;
pub mod hints;
pub mod hlc;
pub mod store;
pub mod wal;
