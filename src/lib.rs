//! quorumkv: a distributed key-value store in the Dynamo/Cassandra family.
//!
//! Keys are the integers `0..=255`, values UTF-8 strings. A byte-ordered ring
//! ([`ring`]) places each key on `RF` replicas; any replica coordinates a
//! request ([`node`]) at the consistency level the client picks
//! ([`consistency`]); replicas that missed writes are brought back by read
//! repair ([`call`]) and hinted handoff ([`hints`]). [`server`] owns the
//! sockets and threads, [`link`] the connections between replicas, [`client`]
//! the client side. See `docs/ARCHITECTURE.md` for the modules, the threads
//! and the path of a request.
#![warn(missing_docs)]

pub mod badlog;
pub mod call;
pub mod cell;
pub mod client;
pub mod config;
pub mod conn;
pub mod consistency;
pub mod console;
pub mod error;
pub mod fault;
pub mod frame;
pub mod hints;
pub mod histogram;
pub mod hlc;
pub mod link;
pub mod node;
pub mod readbatch;
pub mod ring;
pub mod server;
pub mod store;
pub mod validate;
pub mod wal;

/// Messages generated from `proto/quorumkv.proto` by `build.rs`.
#[allow(missing_docs, clippy::all)]
pub mod proto {
    include!(concat!(env!("OUT_DIR"), "/quorumkv.rs"));
}

pub use error::{Error, Result};
