//! Seed 002's coordinator cache end to end (`--coordinator-cache-bytes`):
//! a replica that holds no copy of a key answers ONE reads of it from its
//! cache, its own writes go through the cache, and its SERIAL writes and
//! transactions drop what it cached. The cache's promises in detail (never
//! older than the coordinator's own acknowledged write, across evictions and
//! expiry; the TTL; the memory bound) are unit-tested in
//! `quorumkv::coordinator::cache`.

mod common;

use std::time::Duration;

use common::{Cluster, slack};
use quorumkv::client::TxnOutcome;
use quorumkv::cluster::consistency::Consistency;

/// A key `r0` holds no copy of, and the indexes of the replicas that do.
fn foreign_key(c: &Cluster, prefix: &str) -> (String, Vec<usize>) {
    (0..1000)
        .map(|i| format!("{prefix}{i}"))
        .find_map(|k| {
            let replicas = c.replicas_of(1, k.as_bytes());
            (!replicas.iter().any(|n| n == "r0")).then(|| (k, replicas.iter().map(|n| n[1..].parse().unwrap()).collect()))
        })
        .expect("a key r0 does not hold")
}

/// With its cache, `r0` answers a ONE read of a key it does not hold even
/// while every replica of the key is frozen (SIGSTOP): the value is its own
/// acknowledged write. Without the cache it could not answer at all.
#[test]
fn a_coordinator_answers_one_reads_of_its_own_writes_from_its_cache() {
    let c = Cluster::start_murmur3(4, &["--coordinator-cache-bytes", "1048576", "--coordinator-cache-ttl", "60s"]);
    let (key, replicas) = foreign_key(&c, "hot");
    c.client(0).put(key.as_str(), "mine", Consistency::Quorum).unwrap();
    for &r in &replicas {
        c.pause(r);
    }
    let read = c.client(0).get_text(key.as_str(), Consistency::One);
    for &r in &replicas {
        c.resume(r);
    }
    assert_eq!(read.unwrap().as_deref(), Some("mine"), "not answered from the cache");
    // QUORUM never looks at the cache: it asks the replicas (frozen: no answer).
    for &r in &replicas {
        c.pause(r);
    }
    let mut client = c.client(0);
    client.set_timeout(Some(slack(Duration::from_secs(10)))).unwrap();
    let quorum = client.get_text(key.as_str(), Consistency::Quorum);
    for &r in &replicas {
        c.resume(r);
    }
    assert!(quorum.is_err(), "a QUORUM read was answered without its replicas: {quorum:?}");
}

/// Another coordinator's write is not seen through the cache until the
/// entry expires (the documented staleness), but this coordinator's own
/// writes of every kind are, at once: each goes through the cache (a plain
/// write, a SERIAL write, a transaction, a delete). The TTL is long, so
/// only the write-through can make the new value show.
#[test]
fn a_coordinators_writes_of_every_kind_go_through_its_cache() {
    let c = Cluster::start_murmur3(4, &["--coordinator-cache-bytes", "1048576", "--coordinator-cache-ttl", "60s"]);
    let (key, _) = foreign_key(&c, "w");
    let k = key.as_str();
    let one = |c: &Cluster| c.client(0).get_text(k, Consistency::One).unwrap();
    c.client(0).put(k, "v1", Consistency::All).unwrap();
    assert_eq!(one(&c).as_deref(), Some("v1"));
    // Someone else's write, at ALL: the cache still answers v1 (for up to the TTL).
    c.client(1).put(k, "other", Consistency::All).unwrap();
    assert_eq!(one(&c).as_deref(), Some("v1"), "the cache was not consulted");
    // Its own plain write replaces the entry.
    c.client(0).put(k, "v2", Consistency::Quorum).unwrap();
    assert_eq!(one(&c).as_deref(), Some("v2"));
    // Its own SERIAL write.
    c.client(0).put(k, "serial", Consistency::Serial).unwrap();
    assert_eq!(one(&c).as_deref(), Some("serial"), "a SERIAL write left the cache stale");
    c.client(1).put(k, "other2", Consistency::All).unwrap();
    assert_eq!(one(&c).as_deref(), Some("serial"), "the SERIAL write was not cached");
    // Its own transaction.
    let done = c.client(0).txn(vec![], vec![(key.as_bytes().to_vec(), Some(b"txn".to_vec()))]).unwrap();
    assert!(matches!(done, TxnOutcome::Committed { .. }));
    assert_eq!(one(&c).as_deref(), Some("txn"), "a transaction left the cache stale");
    c.client(1).put(k, "other3", Consistency::All).unwrap();
    assert_eq!(one(&c).as_deref(), Some("txn"), "the transaction's write was not cached");
    // Its own delete, cached as a tombstone.
    c.client(0).delete(k, Consistency::Quorum).unwrap();
    c.client(1).put(k, "other4", Consistency::All).unwrap();
    assert_eq!(one(&c), None, "the delete was not cached");
}
