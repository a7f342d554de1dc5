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
//!    the key** (while the process runs: the cache starts empty, and what
//!    it remembers is not kept across a restart). Every write this
//!    coordinator acknowledges goes through the cache (write-through): a
//!    plain write, a SERIAL write (at its ballot) and a transaction's
//!    commit (at the commit timestamp) are stored. An entry is only ever
//!    replaced by a newer version.
//! 2. **Bounded staleness for everybody else's writes:** an entry answers
//!    for `ttl` counted from when the request that stored or confirmed it
//!    started (so a read in flight while another coordinator's write was
//!    acknowledged cannot keep its older answer for a whole TTL after it
//!    lands), then is dropped.
//! 3. **Bounded memory:** `sets` sets of entries, each within `bytes / sets`
//!    bytes (keys, values and a fixed overhead counted); a full set evicts
//!    by the clock (second-chance) algorithm, as the seed's cache does.
//!
//! Promise 1 has a subtle case: once the entry holding this coordinator's
//! write is gone (evicted, expired, dropped), a later read may return an
//! *older* version from a replica that missed the write, and caching that
//! read would break the promise. So each set remembers, for the keys whose
//! own-write entries left, the write's timestamp (**ghosts**, up to 32 a
//! set, exact by key hash), and a read is cached only at or above it. When
//! a set has more ghosts than that, the oldest folds into one of the set's
//! 64 **floors** (a timestamp shared by the keys whose hashes meet there):
//! keys that share a floor then lose some caching, never correctness. A new
//! entry of the key takes its ghost back. A view change may leave this node
//! without a copy of keys it wrote as a replica, writes the cache never
//! saw: the cache drops every entry, and a read of a key this node held in
//! one of the last four views it left is cached only at or above the clock
//! at that change (older changes: every key)
//! ([`view_changed`](CoordinatorCache::view_changed)).
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

/// Own writes remembered exactly per set once their entries left (see the module docs).
const GHOSTS: usize = 32;

/// View changes remembered with the ring they left (see [`CoordinatorCache::view_changed`]).
const MOVES: usize = 4;

/// The view changes this node saw: each with the read ring it left, this
/// node's id, and its clock then; older ones fold into one timestamp.
#[derive(Default)]
struct Moves {
    recent: std::collections::VecDeque<(std::sync::Arc<crate::cluster::ring::Ring>, crate::cluster::ring::NodeId, Timestamp)>,
    older: Timestamp,
}

/// Bytes charged per entry besides its key and value: the entry itself
/// (about 110 bytes) and its two allocations' headers.
const ENTRY_OVERHEAD: usize = 160;

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
    /// Own writes whose entries left, by key hash, oldest first.
    ghosts: std::collections::VecDeque<(u64, Timestamp)>,
    /// Where ghosts go when there are too many: a bar shared by the keys
    /// whose hashes meet here.
    floors: [Timestamp; FLOORS],
    /// The cache's generation when this set was last used: entries from an
    /// older one are dropped then (see [`CoordinatorCache::view_changed`]).
    generation: u64,
}

impl Set {
    fn new() -> Set {
        Set {
            entries: Vec::new(),
            bytes: 0,
            hand: 0,
            ghosts: std::collections::VecDeque::new(),
            floors: [Timestamp::default(); FLOORS],
            generation: 0,
        }
    }

    fn find(&self, hash: u64, key: &Key) -> Option<usize> {
        self.entries.iter().position(|e| e.hash == hash && e.key == *key)
    }

    fn floor(&mut self, hash: u64) -> &mut Timestamp {
        // The low bits chose the set; the floor comes from the next ones.
        &mut self.floors[(hash >> 32) as usize % FLOORS]
    }

    /// Below what a read of the key with `hash` may not be cached: its
    /// floor, its ghost, and (a hash shared with another key) any own write
    /// another entry of that hash stands for.
    fn bar(&mut self, hash: u64) -> Timestamp {
        let ghost = self.ghosts.iter().filter(|g| g.0 == hash).map(|g| g.1).max().unwrap_or_default();
        let shared = self.entries.iter().filter(|e| e.hash == hash).filter_map(|e| e.own).max().unwrap_or_default();
        (*self.floor(hash)).max(ghost).max(shared)
    }

    /// Remembers that an own write at `ts` of the key with `hash` is not in
    /// the cache: no older read of it is cached.
    fn keep_out(&mut self, hash: u64, ts: Timestamp) {
        if let Some(g) = self.ghosts.iter_mut().find(|g| g.0 == hash) {
            g.1 = g.1.max(ts);
            return;
        }
        if self.ghosts.len() == GHOSTS
            && let Some((h, t)) = self.ghosts.pop_front()
        {
            let floor = self.floor(h);
            *floor = (*floor).max(t);
        }
        self.ghosts.push_back((hash, ts));
    }

    /// The own write remembered for `hash`, taken back by a new entry of it.
    fn take_ghost(&mut self, hash: u64) -> Option<Timestamp> {
        let i = self.ghosts.iter().position(|g| g.0 == hash)?;
        self.ghosts.remove(i).map(|g| g.1)
    }

    /// Drops entry `i`; the own write it held is remembered.
    fn remove(&mut self, i: usize) {
        let e = self.entries.swap_remove(i);
        self.bytes -= e.charge();
        if let Some(own) = e.own {
            self.keep_out(e.hash, own);
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
    /// Bumped by [`view_changed`](Self::view_changed).
    generation: std::sync::atomic::AtomicU64,
    moves: Mutex<Moves>,
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
        let sets = (0..sets).map(|_| Mutex::new(Set::new())).collect();
        Some(CoordinatorCache {
            sets,
            set_budget,
            ttl,
            hasher: std::collections::hash_map::RandomState::new(),
            generation: std::sync::atomic::AtomicU64::new(0),
            moves: Mutex::new(Moves::default()),
        })
    }

    fn hash(&self, key: &Key) -> u64 {
        self.hasher.hash_one(key)
    }

    /// The set of `hash`, locked; its entries dropped first if a view
    /// change came since it was last used.
    fn lock_set(&self, hash: u64) -> parking_lot::MutexGuard<'_, Set> {
        let mut set = self.sets[hash as usize & (self.sets.len() - 1)].lock();
        let generation = self.generation();
        if set.generation != generation {
            set.entries.clear();
            set.bytes = 0;
            set.hand = 0;
            set.generation = generation;
        }
        set
    }

    /// Below what a read of `key` may not be cached because of a view
    /// change: the clock at each recent change whose ring left this node a
    /// replica of the key, and the clock at every older one.
    fn moved_bar(&self, key: &Key) -> Timestamp {
        let moves = self.moves.lock();
        moves
            .recent
            .iter()
            .filter(|(ring, me, _)| ring.replicas(key.as_bytes()).contains(me))
            .map(|m| m.2)
            .fold(moves.older, Timestamp::max)
    }

    /// Whether a value of this size may be cached at all (a quarter of a set at most).
    fn fits(&self, key: &Key, version: Option<&Version>) -> bool {
        charge(key, version) <= self.set_budget / 4
    }

    /// Whether a value of `len` bytes of `key` may be cached (a larger one
    /// need not be copied to teach the cache a write).
    pub fn fits_value(&self, key: &Key, len: usize) -> bool {
        key.len() + len + ENTRY_OVERHEAD <= self.set_budget / 4
    }

    /// The cached version of `key` (`Some(None)`: cached as absent), if an
    /// entry stored or confirmed within the TTL holds it.
    pub fn get(&self, key: &Key, now: Instant) -> Option<Option<Version>> {
        let hash = self.hash(key);
        let mut set = self.lock_set(hash);
        let i = set.find(hash, key)?;
        if now.saturating_duration_since(set.entries[i].at) >= self.ttl {
            set.remove(i);
            return None;
        }
        let e = &mut set.entries[i];
        e.referenced = true;
        Some(e.version.clone())
    }

    /// This coordinator acknowledged `version` of `key` (a plain write at
    /// any level) asked for at `started`.
    pub fn wrote(&self, key: &Key, version: &Version, started: Instant) {
        let moved = self.moved_bar(key);
        let hash = self.hash(key);
        let mut set = self.lock_set(hash);
        let found = set.find(hash, key);
        let ghost = set.take_ghost(hash);
        if let Some(i) = found
            && set.entries[i].ts() > version.ts
        {
            // A read already brought a newer version: it stays, and it now
            // stands for this write too.
            let e = &mut set.entries[i];
            e.own = Some(e.own.map_or(version.ts, |o| o.max(version.ts)).max(ghost.unwrap_or_default()));
            return;
        }
        let own = found.and_then(|i| set.entries[i].own).map_or(version.ts, |o| o.max(version.ts)).max(ghost.unwrap_or_default());
        if let Some(i) = found {
            // Its own timestamp moves to the new entry, not to the floor.
            set.entries[i].own = None;
            set.remove(i);
        }
        // Older than another own write of the key that left (two writes
        // acknowledged out of order), or than a view change's bar: not cached.
        if version.ts < own || version.ts < moved || version.ts < set.bar(hash) || !self.fits(key, Some(version)) {
            set.keep_out(hash, own);
            return;
        }
        self.insert(
            &mut set,
            Entry { hash, key: key.clone(), version: Some(version.clone()), own: Some(own), at: started, referenced: false },
        );
    }

    /// A read of `key` started here at `started` returned `version`
    /// (`None`: absent everywhere asked): cached if at or above what the key
    /// is barred below and newer than what is cached; the same version
    /// confirms the entry (its TTL counts from `started`, when the replicas
    /// were asked, so an entry is never more than the TTL behind a write
    /// acknowledged before that).
    pub fn read(&self, key: &Key, version: Option<&Version>, started: Instant) {
        let ts = version.map_or_else(Timestamp::default, |v| v.ts);
        if ts < self.moved_bar(key) {
            return;
        }
        let hash = self.hash(key);
        let mut set = self.lock_set(hash);
        let found = set.find(hash, key);
        if let Some(i) = found {
            let e = &mut set.entries[i];
            debug_assert!(e.own.is_none_or(|o| o <= e.ts()), "an entry older than its own write");
            if e.ts() > ts || (e.ts() == ts && version.is_some() == e.version.is_some()) {
                if e.ts() == ts {
                    e.at = e.at.max(started);
                }
                return;
            }
        } else if ts < set.bar(hash) {
            return;
        }
        // Newer than the entry (whose own write the bar includes), or above the bar.
        let mut own = found.and_then(|i| set.entries[i].own.take());
        if let Some(i) = found {
            set.remove(i);
        }
        if let Some(g) = set.take_ghost(hash) {
            own = Some(own.unwrap_or_default().max(g));
        }
        if !self.fits(key, version) {
            if let Some(own) = own {
                set.keep_out(hash, own);
            }
            return;
        }
        self.insert(&mut set, Entry { hash, key: key.clone(), version: version.cloned(), own, at: started, referenced: false });
    }

    /// Drops `key`'s entry; with `floor`, a write this coordinator
    /// acknowledged at that timestamp (a SERIAL write, a transaction's
    /// commit) that the cache does not hold: no older read is cached again.
    pub fn forget(&self, key: &Key, floor: Option<Timestamp>) {
        let hash = self.hash(key);
        let mut set = self.lock_set(hash);
        if let Some(i) = set.find(hash, key) {
            set.remove(i);
        }
        if let Some(ts) = floor {
            set.keep_out(hash, ts);
        }
    }

    /// This node's view changed, leaving the read ring `old`, in which this
    /// node was `me`: it may hold no copy now of keys it wrote as a replica
    /// there, writes the cache never saw. Those keys are barred below the
    /// clock (`now`, read after the generation moved on: after every write
    /// this node stamped that a lesson of the old generation may miss); the
    /// generation moves on (see [`generation`](Self::generation)) and each
    /// set drops its entries when next used. Constant work: the caller holds
    /// the view's lock.
    pub fn view_changed(
        &self,
        old: std::sync::Arc<crate::cluster::ring::Ring>,
        me: crate::cluster::ring::NodeId,
        now: impl FnOnce() -> Timestamp,
    ) {
        self.generation.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        let now = now();
        let mut moves = self.moves.lock();
        moves.recent.push_back((old, me, now));
        if moves.recent.len() > MOVES
            && let Some((_, _, t)) = moves.recent.pop_front()
        {
            moves.older = moves.older.max(t);
        }
    }

    /// How many times [`view_changed`](Self::view_changed) ran: a write of a key
    /// this node held when it started, acknowledged after the view changed,
    /// is remembered (it may be of a key the node no longer holds).
    pub fn generation(&self) -> u64 {
        self.generation.load(std::sync::atomic::Ordering::Acquire)
    }

    fn insert(&self, set: &mut Set, entry: Entry) {
        set.make_room(entry.charge(), self.set_budget);
        set.bytes += entry.charge();
        set.entries.push(entry);
    }

    /// Entries and bytes held.
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

    /// Own writes that left the cache are remembered exactly (per set, up
    /// to GHOSTS): many other keys' writes do not bar reads of keys never
    /// written here.
    #[test]
    fn own_writes_that_left_bar_only_their_own_keys() {
        let c = CoordinatorCache::new(4096, Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        for i in 0..20u64 {
            c.forget(&key(&format!("serial{i}")), Some(Timestamp { micros: 1000 + i, node: 1 }));
        }
        // A key written long ago by others is cached, absent keys too.
        c.read(&key("cold"), Some(&v(5, "old")), now);
        assert_eq!(value(&c, "cold", now), Some(Some("old".into())));
        c.read(&key("missing"), None, now);
        assert_eq!(value(&c, "missing", now), Some(None));
        // The keys written here are barred below their writes.
        c.read(&key("serial3"), Some(&v(500, "stale")), now);
        assert_eq!(value(&c, "serial3", now), None);
        c.read(&key("serial3"), Some(&v(1003, "fresh")), now);
        assert_eq!(value(&c, "serial3", now), Some(Some("fresh".into())));
        // Taken back by its entry: evicted again, it is remembered again.
        c.forget(&key("serial3"), None);
        c.read(&key("serial3"), Some(&v(500, "stale")), now);
        assert_eq!(value(&c, "serial3", now), None);
    }

    /// The TTL counts from when the replicas were asked: a read that was in
    /// flight while another coordinator's write was acknowledged cannot keep
    /// its older answer for a whole TTL after it lands.
    #[test]
    fn the_ttl_counts_from_the_start_of_the_read() {
        let ttl = Duration::from_millis(100);
        let c = CoordinatorCache::new(1 << 20, ttl).unwrap();
        let started = Instant::now();
        let landed = started + Duration::from_millis(80);
        c.read(&key("a"), Some(&v(10, "ten")), started);
        assert!(value(&c, "a", landed).is_some());
        assert_eq!(value(&c, "a", started + ttl), None, "the entry outlived the TTL counted from the read's start");
        // A renewal from an older start does not move the entry back.
        c.read(&key("a"), Some(&v(10, "ten")), landed);
        c.read(&key("a"), Some(&v(10, "ten")), started);
        assert!(value(&c, "a", landed + ttl - Duration::from_millis(1)).is_some());
    }

    /// A view change drops every entry, and bars below the clock the keys
    /// this node held in the ring it left (it may have written them as a
    /// replica): other keys are cached as before. Past the last few changes,
    /// every key is barred below the oldest forgotten one.
    #[test]
    fn a_view_change_bars_the_keys_this_node_held_below_the_clock() {
        use crate::cluster::ring::{NodeId, NodeInfo, Ring};
        let nodes =
            (0..4).map(|i| NodeInfo { name: format!("r{i}"), host: "127.0.0.1".into(), port: 1000 + i as u16, id: NodeId(i) }).collect();
        let ring = std::sync::Arc::new(Ring::new(nodes, 3, 1).unwrap());
        let me = NodeId(0);
        let held = Key::byte((0..=255).find(|&k| ring.replicas(Key::byte(k).as_bytes()).contains(&me)).unwrap());
        let free = Key::byte((0..=255).find(|&k| !ring.replicas(Key::byte(k).as_bytes()).contains(&me)).unwrap());
        let c = CoordinatorCache::new(1 << 20, Duration::from_secs(60)).unwrap();
        let now = Instant::now();
        let cached = |k: &Key| c.get(k, now).is_some();
        c.read(&free, Some(&v(10, "ten")), now);
        let g = c.generation();
        c.view_changed(ring.clone(), me, || Timestamp { micros: 50, node: 1 });
        assert_ne!(c.generation(), g);
        assert!(!cached(&free), "an entry survived the view change");
        c.read(&held, Some(&v(10, "ten")), now);
        assert!(!cached(&held), "a version older than the view change was cached for a key this node held");
        c.wrote(&held, &v(20, "twenty"), now);
        assert!(!cached(&held), "an own write older than the view change was cached for a key this node held");
        c.read(&held, Some(&v(60, "sixty")), now);
        assert!(cached(&held));
        c.read(&free, Some(&v(10, "ten")), now);
        assert!(cached(&free), "a key this node did not hold is barred");
        // Four more changes: the first folds into the bar every key shares.
        for t in 0..4 {
            c.view_changed(ring.clone(), NodeId(99), || Timestamp { micros: 70 + t, node: 1 });
        }
        c.read(&free, Some(&v(10, "ten")), now);
        assert!(!cached(&free), "the forgotten change bars nothing");
        c.read(&free, Some(&v(55, "fifty-five")), now);
        assert!(cached(&free));
    }

    /// Two own writes acknowledged out of order: the older one, learned
    /// after the newer left the cache, is not cached over it.
    #[test]
    fn an_own_write_learned_late_does_not_go_under_a_newer_one() {
        let c = CoordinatorCache::new(1 << 20, Duration::from_millis(100)).unwrap();
        let t0 = Instant::now();
        c.wrote(&key("a"), &v(100, "b"), t0);
        // It expires (or is evicted): remembered as a ghost.
        assert_eq!(value(&c, "a", t0 + Duration::from_millis(100)), None);
        c.wrote(&key("a"), &v(50, "a"), t0 + Duration::from_millis(100));
        assert_eq!(value(&c, "a", t0 + Duration::from_millis(100)), None, "the older own write was cached");
        c.read(&key("a"), Some(&v(70, "between")), t0 + Duration::from_millis(100));
        assert_eq!(value(&c, "a", t0 + Duration::from_millis(100)), None);
        c.read(&key("a"), Some(&v(100, "b")), t0 + Duration::from_millis(100));
        assert_eq!(value(&c, "a", t0 + Duration::from_millis(100)), Some(Some("b".into())));
    }

    #[test]
    fn no_room_means_no_cache() {
        assert!(CoordinatorCache::new(0, Duration::from_secs(1)).is_none());
    }
}
