//! Seed 002's coordinator cache: a write-through, set-associative cache of
//! the keys a coordinator holds no copy of, for reads at ONE.
//!
//! # Why, and only for ONE
//!
//! A replica answers a ONE read of a key it holds from its own memory; a
//! coordinator that holds no copy must ask a replica, a network round trip
//! (measured on this machine: p50 122 µs against 58 µs, half the reads a
//! second at 32 clients). This cache removes that round trip for hot keys.
//! It is off unless `--coordinator-cache-bytes` gives it room, because it
//! weakens ONE: a ONE read it answers may miss another coordinator's write
//! for up to `--coordinator-cache-ttl` — even a write at ALL, so `W=ALL,
//! R=ONE` no longer reads the latest value through a caching coordinator.
//! QUORUM, ALL and SERIAL reads never look at it (they must ask replicas to
//! keep their promises), and neither does a replica of the key (its own copy
//! is as fast). Cassandra keeps its row cache off by default for the same
//! kind of reason: memory for a gain only some workloads see.
//!
//! # What it promises
//!
//! 1. **Never older than this coordinator's own last acknowledged write of
//!    the key.** Every write this coordinator acknowledges goes through the
//!    cache (write-through): a plain write is stored with its timestamp, a
//!    SERIAL write or a transaction's commit drops the entry. An entry is
//!    only ever replaced by a newer version.
//! 2. **Bounded staleness for everybody else's writes:** an entry answers
//!    for `ttl` after it was stored or confirmed by a read, then is dropped.
//! 3. **Bounded memory:** `sets` sets of entries, each within `bytes / sets`
//!    bytes (keys, values and a fixed overhead counted); a full set evicts
//!    by the clock (second-chance) algorithm, as the seed's cache does.
//!
//! Promise 1 has a subtle case: once the entry holding this coordinator's
//! write is gone (evicted, expired, dropped), a later read may return an
//! *older* version from a replica that missed the write, and caching that
//! read would break the promise. So each set keeps **floors**: a small array
//! of timestamps indexed by the key's hash. An entry that leaves the cache
//! raises its key's floor to the timestamp of the coordinator's own write it
//! held (a SERIAL write or a commit raises it at once), and a read is cached
//! only if its version is at or above its key's floor. Keys that share a
//! floor only lose some caching, never correctness.
//!
//! A read that found nothing is cached as absent (below any write), so a hot
//! missing key is cheap too.

use std::hash::BuildHasher;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::key::Key;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// Floors per set (see the module docs).
const FLOORS: usize = 64;

/// Bytes charged per entry besides its key and value.
const ENTRY_OVERHEAD: usize = 64;

/// Bytes per set the cache aims for: a set is scanned whole on each lookup.
const SET_BYTES: usize = 16 << 10;

#[derive(Debug)]
struct Entry {
    hash: u64,
    key: Key,
    /// The version cached (`None`: absent when read).
    version: Option<Version>,
    /// The newest write of this key this coordinator acknowledged, if the entry holds one.
    own: Option<Timestamp>,
    /// When it was stored or last confirmed.
    at: Instant,
    /// Second-chance bit: set by a hit, cleared by the clock hand.
    referenced: bool,
}

impl Entry {
    fn ts(&self) -> Timestamp {
        self.version.as_ref().map_or_else(Timestamp::default, |v| v.ts)
    }

    fn charge(&self) -> usize {
        charge(&self.key, self.version.as_ref())
    }
}

fn charge(key: &Key, version: Option<&Version>) -> usize {
    key.as_bytes().len() + version.and_then(|v| v.value.as_ref()).map_or(0, |v| v.len()) + ENTRY_OVERHEAD
}

#[derive(Debug)]
struct Set {
    entries: Vec<Entry>,
    bytes: usize,
    hand: usize,
    floors: [Timestamp; FLOORS],
}

impl Set {
    fn find(&self, hash: u64, key: &Key) -> Option<usize> {
        self.entries.iter().position(|e| e.hash == hash && e.key == *key)
    }

    fn floor(&mut self, hash: u64) -> &mut Timestamp {
        // The low bits chose the set; the floor comes from the high ones.
        &mut self.floors[(hash >> 58) as usize % FLOORS]
    }

    /// Drops entry `i`, raising its key's floor to the own write it held.
    fn remove(&mut self, i: usize) {
        let e = self.entries.swap_remove(i);
        self.bytes -= e.charge();
        if let Some(own) = e.own {
            let floor = self.floor(e.hash);
            *floor = (*floor).max(own);
        }
        if self.hand >= self.entries.len() {
            self.hand = 0;
        }
    }

    /// Makes room for `need` more bytes within `budget` (second chance).
    fn make_room(&mut self, need: usize, budget: usize) {
        while self.bytes + need > budget && !self.entries.is_empty() {
            let i = self.hand % self.entries.len();
            if self.entries[i].referenced {
                self.entries[i].referenced = false;
                self.hand = (i + 1) % self.entries.len();
            } else {
                self.remove(i);
            }
        }
    }
}

/// The cache (see the module docs).
pub struct CoordinatorCache {
    sets: Box<[Mutex<Set>]>,
    set_budget: usize,
    ttl: Duration,
    hasher: std::collections::hash_map::RandomState,
}

impl std::fmt::Debug for CoordinatorCache {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CoordinatorCache")
            .field("sets", &self.sets.len())
            .field("set_budget", &self.set_budget)
            .field("ttl", &self.ttl)
            .finish()
    }
}

impl CoordinatorCache {
    /// A cache of about `bytes` bytes whose entries answer for `ttl`; `None`
    /// when `bytes` is zero (no cache).
    pub fn new(bytes: usize, ttl: Duration) -> Option<CoordinatorCache> {
        if bytes == 0 {
            return None;
        }
        let sets = (bytes / SET_BYTES).clamp(1, 1 << 16).next_power_of_two();
        let set_budget = (bytes / sets).max(ENTRY_OVERHEAD * 4);
        let sets =
            (0..sets).map(|_| Mutex::new(Set { entries: Vec::new(), bytes: 0, hand: 0, floors: [Timestamp::default(); FLOORS] })).collect();
        Some(CoordinatorCache { sets, set_budget, ttl, hasher: std::collections::hash_map::RandomState::new() })
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    fn set(&self, hash: u64) -> &Mutex<Set> {
        &self.sets[hash as usize & (self.sets.len() - 1)]
    }

    /// Whether a value of this size may be cached at all (a quarter of a set at most).
    fn fits(&self, key: &Key, version: Option<&Version>) -> bool {
        charge(key, version) <= self.set_budget / 4
    }

    /// The cached version of `key` (`Some(None)`: cached as absent), if an
    /// entry stored or confirmed within the TTL holds it.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Option<Version>> {
        let hash = self.hash(key);
        let mut set = self.set(hash).lock();
        let i = set.find(hash, key)?;
        if now.saturating_duration_since(set.entries[i].at) >= self.ttl {
            set.remove(i);
            return None;
        }
        let e = &mut set.entries[i];
        e.referenced = true;
        Some(e.version.clone())
    }

    /// This coordinator acknowledged `version` of `key` (a plain write at any level).
    pub fn wrote(&self, key: &Key, version: &Version, now: Instant) {
        let hash = self.hash(key);
        let mut set = self.set(hash).lock();
        let found = set.find(hash, key);
        if let Some(i) = found
            && set.entries[i].ts() > version.ts
        {
            // A read already brought a newer version: it stays, and it now
            // stands for this write too.
            let e = &mut set.entries[i];
            e.own = Some(e.own.map_or(version.ts, |o| o.max(version.ts)));
            return;
        }
        let own = found.and_then(|i| set.entries[i].own).map_or(version.ts, |o| o.max(version.ts));
        if let Some(i) = found {
            // Its own timestamp moves to the new entry, not to the floor.
            set.entries[i].own = None;
            set.remove(i);
        }
        if !self.fits(key, Some(version)) {
            let floor = set.floor(hash);
            *floor = (*floor).max(own);
            return;
        }
        self.insert(&mut set, Entry { hash, key: key.clone(), version: Some(version.clone()), own: Some(own), at: now, referenced: false });
    }

    /// A read of `key` coordinated here returned `version` (`None`: absent
    /// everywhere asked): cached if at or above the key's floor and newer
    /// than what is cached; the same version confirms the entry (its TTL
    /// starts again).
    pub fn read(&self, key: &Key, version: Option<&Version>, now: Instant) {
        let ts = version.map_or_else(Timestamp::default, |v| v.ts);
        let hash = self.hash(key);
        let mut set = self.set(hash).lock();
        if ts < *set.floor(hash) {
            return;
        }
        let mut own = None;
        if let Some(i) = set.find(hash, key) {
            let e = &mut set.entries[i];
            if e.ts() > ts || (e.ts() == ts && version.is_some() == e.version.is_some()) {
                if e.ts() == ts {
                    e.at = now;
                }
                return;
            }
            own = e.own.take();
            set.remove(i);
        }
        if !self.fits(key, version) {
            if let Some(own) = own {
                let floor = set.floor(hash);
                *floor = (*floor).max(own);
            }
            return;
        }
        self.insert(&mut set, Entry { hash, key: key.clone(), version: version.cloned(), own, at: now, referenced: false });
    }

    /// Drops `key`'s entry; with `floor`, a write this coordinator
    /// acknowledged at that timestamp (a SERIAL write, a transaction's
    /// commit) that the cache does not hold: no older read is cached again.
    pub fn forget(&self, key: &Key, floor: Option<Timestamp>) {
        let hash = self.hash(key);
        let mut set = self.set(hash).lock();
        if let Some(i) = set.find(hash, key) {
            set.remove(i);
        }
        if let Some(ts) = floor {
            let f = set.floor(hash);
            *f = (*f).max(ts);
        }
    }

    fn insert(&self, set: &mut Set, entry: Entry) {
        set.make_room(entry.charge(), self.set_budget);
        set.bytes += entry.charge();
        set.entries.push(entry);
    }

    /// Entries and bytes held (for tests and status).
    pub fn usage(&self) -> (usize, usize) {
        self.sets.iter().map(|s| s.lock()).fold((0, 0), |(n, b), s| (n + s.entries.len(), b + s.bytes))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(micros: u64, value: &str) -> Version {
        Version { ts: Timestamp { micros, node: 1 }, value: Some(value.as_bytes().to_vec().into_boxed_slice()) }
    }

    fn key(k: &str) -> Key {
        Key::trusted(k.as_bytes().to_vec())
    }

    fn value(c: &CoordinatorCache, k: &str, now: Instant) -> Option<Option<String>> {
        c.get(&key(k), now).map(|v| v.and_then(|v| v.value).map(|b| String::from_utf8_lossy(&b).into_owned()))
    }

    #[test]
    fn writes_go_through_and_only_newer_versions_replace() {
        let c = CoordinatorCache::new(1 << 20, Duration::from_secs(1)).unwrap();
        let now = Instant::now();
        assert_eq!(value(&c, "a", now), None);
        c.wrote(&key("a"), &v(10, "ten"), now);
        assert_eq!(value(&c, "a", now), Some(Some("ten".into())));
        // An older read (a replica that missed the write) changes nothing.
        c.read(&key("a"), Some(&v(5, "five")), now);
        assert_eq!(value(&c, "a", now), Some(Some("ten".into())));
        c.read(&key("a"), None, now);
        assert_eq!(value(&c, "a", now), Some(Some("ten".into())));
        // A newer one (another coordinator's write) replaces it.
        c.read(&key("a"), Some(&v(20, "twenty")), now);
        assert_eq!(value(&c, "a", now), Some(Some("twenty".into())));
        // An own write older than what a read brought leaves the newer value.
        c.wrote(&key("a"), &v(15, "fifteen"), now);
        assert_eq!(value(&c, "a", now), Some(Some("twenty".into())));
        // Absent keys are cached as absent, below any version.
        c.read(&key("b"), None, now);
        assert_eq!(value(&c, "b", now), Some(None));
        c.read(&key("b"), Some(&v(1, "one")), now);
        assert_eq!(value(&c, "b", now), Some(Some("one".into())));
    }

    #[test]
    fn entries_expire_after_the_ttl_and_a_read_of_the_same_version_renews_them() {
        let c = CoordinatorCache::new(1 << 20, Duration::from_millis(100)).unwrap();
        let t0 = Instant::now();
        c.read(&key("a"), Some(&v(10, "ten")), t0);
        assert!(value(&c, "a", t0 + Duration::from_millis(99)).is_some());
        c.read(&key("a"), Some(&v(10, "ten")), t0 + Duration::from_millis(50));
        assert!(value(&c, "a", t0 + Duration::from_millis(149)).is_some());
        assert_eq!(value(&c, "a", t0 + Duration::from_millis(150)), None);
        assert_eq!(c.usage().0, 0, "an expired entry is dropped");
    }

    /// Promise 1 across evictions, expiry and SERIAL writes: once the
    /// entry holding an own write is gone, an older read is not cached.
    #[test]
    fn an_own_write_that_left_the_cache_keeps_older_reads_out() {
        let ttl = Duration::from_millis(100);
        let c = CoordinatorCache::new(1 << 20, ttl).unwrap();
        let t0 = Instant::now();
        c.wrote(&key("a"), &v(10, "mine"), t0);
        // Expired: the next read goes to replicas, and one that missed the write answers.
        let later = t0 + ttl;
        assert_eq!(value(&c, "a", later), None);
        c.read(&key("a"), Some(&v(5, "stale")), later);
        assert_eq!(value(&c, "a", later), None, "a version older than the coordinator's own write was cached");
        c.read(&key("a"), None, later);
        assert_eq!(value(&c, "a", later), None);
        c.read(&key("a"), Some(&v(10, "mine")), later);
        assert_eq!(value(&c, "a", later), Some(Some("mine".into())));
        // A SERIAL write or a commit: dropped, and older reads kept out.
        c.forget(&key("a"), Some(Timestamp { micros: 30, node: 1 }));
        c.read(&key("a"), Some(&v(10, "mine")), later);
        assert_eq!(value(&c, "a", later), None);
        c.read(&key("a"), Some(&v(30, "serial")), later);
        assert_eq!(value(&c, "a", later), Some(Some("serial".into())));
    }

    #[test]
    fn a_full_set_evicts_and_keeps_its_promises() {
        // One set (the smallest cache): about 4 KiB.
        let c = CoordinatorCache::new(4096, Duration::from_secs(60)).unwrap();
        assert_eq!(c.sets.len(), 1);
        let now = Instant::now();
        let big = "x".repeat(200);
        for i in 0..100u64 {
            c.wrote(&key(&format!("k{i}")), &v(100 + i, &big), now);
            let (_, bytes) = c.usage();
            assert!(bytes <= c.set_budget, "{bytes} bytes held, {} allowed", c.set_budget);
        }
        let (held, _) = c.usage();
        assert!(held > 0 && held < 100);
        // Every evicted own write still keeps older reads out.
        for i in 0..100u64 {
            let k = format!("k{i}");
            if value(&c, &k, now).is_none() {
                c.read(&key(&k), Some(&v(1, "old")), now);
                assert_eq!(value(&c, &k, now), None, "{k}: an evicted own write let an older read in");
            }
        }
        // A value too large for a set is not cached, and still counts.
        let huge = "y".repeat(4096);
        c.wrote(&key("huge"), &v(500, &huge), now);
        assert_eq!(value(&c, "huge", now), None);
        c.read(&key("huge"), Some(&v(400, "older")), now);
        assert_eq!(value(&c, "huge", now), None);
    }

    #[test]
    fn second_chance_keeps_a_hot_entry() {
        let c = CoordinatorCache::new(4096, Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        let val = "z".repeat(300);
        c.read(&key("hot"), Some(&v(1, &val)), now);
        for i in 0..50u64 {
            assert!(value(&c, "hot", now).is_some(), "the hot entry was evicted after {i} inserts");
            c.read(&key(&format!("cold{i}")), Some(&v(1, &val)), now);
        }
    }

    #[test]
    fn no_room_means_no_cache() {
        assert!(CoordinatorCache::new(0, Duration::from_secs(1)).is_none());
    }
}
