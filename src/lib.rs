//! quorumkv: a distributed key-value store in the Dynamo/Cassandra family.
//!
//! Keys and values are bytes. A ring ([`cluster`]) places each key on `RF`
//! replicas: byte-ordered (the seed's keys, the integers `0..=255`) or by
//! each key's Murmur3 token among the nodes' tokens (any key of up to
//! `--max-key-bytes`), as the cluster file says; any replica coordinates a
//! request ([`node`]) at the consistency level the client picks; the request
//! machines of [`coordinator`] turn replies into answers, read repairs and
//! hints; [`storage`] keeps cells, hints and the write-ahead log; [`net`] owns
//! every socket and thread; [`client`] is the client side; [`txn`] holds the
//! pieces of multi-key transactions built so far. See
//! `docs/ARCHITECTURE.md` for the folders, the threads and the path of a
//! request.
#![warn(missing_docs)]

pub mod check;
pub mod client;
pub mod cluster;
pub mod config;
pub mod coordinator;
pub mod error;
pub mod image;
pub mod message;
pub mod net;
pub mod node;
pub mod paxos;
pub mod rand;
pub mod resp;
#[cfg(test)]
pub mod sim;
pub mod storage;
pub mod txn;

/// Messages generated from `proto/quorumkv.proto` by `build.rs`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/quorumkv.rs"));
}

pub use error::{Error, Result};
