//! The local store: a 256-slot array of ordered maps, each slot behind its own
//! `RwLock`, optionally logged.
//!
//! A key's slot is given by the cluster's [`Partitioner`]: the key itself in a
//! byte-ordered cluster (one key a slot, the seed's array), the top byte of its
//! Murmur3 token in a murmur3 cluster (so a slot holds one 256th of the ring,
//! in token order). Each slot is a `BTreeSet` of cells in key order, so a slot
//! can be walked in key order (`scan`) and copied on its own (snapshots), and a
//! writer locks one slot, never the store.
//!
//! Reads take the slot's read lock and clone the cell; writes take its write
//! lock and [`merge`](crate::storage::cell::merge) the incoming version by
//! last-write-wins, so an older version never replaces a newer one whatever
//! order writes, repairs and hint replays arrive in.
//!
//! With a write-ahead log ([`crate::storage::wal`]), a change is appended to
//! the log under the slot's write lock (so the log's order is each key's
//! order, and a snapshot taken after a log rotation holds every change logged
//! before it), and the caller [`commit`](Store::commit)s — waits for
//! durability — after releasing the lock, so concurrent writers share one
//! fsync. A change the log refuses (disk full) is not applied: the cell that
//! was swapped in is swapped back out before the lock is released.
//!
//! Memory: a cell is one `Entry` in its slot's `BTreeSet` — 40 bytes
//! holding the timestamp, the key's length and first eight bytes, and a
//! pointer to one allocation with the key's bytes followed by the value's. At
//! 10-byte keys and 100-byte values that is about 190 bytes a key with the
//! B-tree's nodes (see
//! `docs/PERFORMANCE.md`). A slot remembers the log position of its last
//! logged change instead of each cell's: an older write that loses to a newer
//! one waits for that position, which is at or after the newer one's record.

use std::borrow::Borrow;
use std::cmp::Ordering;
use std::collections::BTreeSet;
use std::sync::Arc;

use parking_lot::RwLock;

use crate::cluster::key::{KEYS, Key, Partitioner};
use crate::error::Result;
use crate::storage::cell::{Version, VersionRef};
use crate::storage::hlc::Timestamp;
use crate::storage::wal::Wal;

/// The outcome of [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The version was newer and replaced the cell.
    pub changed: bool,
    /// When it was not: the timestamp of the version the cell holds (as new
    /// or newer), which the coordinator compares with the write's.
    pub held: Option<Timestamp>,
    /// The log position the caller must [`commit`](Store::commit) before
    /// acknowledging: the record of this change, or, when the version was not
    /// newer, a position at or after the record of the version that superseded
    /// it (which may not be durable yet). 0 when nothing needs waiting for.
    pub pos: u64,
}

/// The top bit of [`Head::meta`]: the cell is a tombstone.
const TOMBSTONE: u32 = 1 << 31;

/// What orders a cell in its slot: its key, with the key's first eight bytes
/// also kept inline (big-endian, zero-padded) so a search compares integers
/// in the B-tree's own nodes and reads a key's bytes only on a tie.
struct Head {
    /// The key's first eight bytes as a big-endian integer (zero-padded).
    prefix: u64,
    /// The key's bytes, then the value's (none for a tombstone).
    data: Box<[u8]>,
    /// The key's length, and [`TOMBSTONE`].
    meta: u32,
    /// The node half of the cell's timestamp (here, where it packs without padding).
    node: u32,
}

fn prefix(key: &[u8]) -> u64 {
    let mut b = [0u8; 8];
    let n = key.len().min(8);
    b[..n].copy_from_slice(&key[..n]);
    u64::from_be_bytes(b)
}

impl Head {
    /// A head to search for `key` with.
    fn probe(key: &[u8]) -> Head {
        Head { prefix: prefix(key), data: key.into(), meta: key.len() as u32, node: 0 }
    }

    fn key_len(&self) -> usize {
        (self.meta & !TOMBSTONE) as usize
    }

    fn key(&self) -> &[u8] {
        &self.data[..self.key_len()]
    }
}

impl PartialEq for Head {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl Eq for Head {}

impl PartialOrd for Head {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Head {
    /// The keys' order: a differing zero-padded prefix decides as the bytes
    /// would (a shorter key that is a prefix of the other sorts first either way).
    fn cmp(&self, other: &Self) -> Ordering {
        self.prefix.cmp(&other.prefix).then_with(|| self.key().cmp(other.key()))
    }
}

/// One cell, compactly (40 bytes): ordered and found by its [`Head`].
struct Entry {
    head: Head,
    micros: u64,
}

impl Entry {
    fn new(key: &[u8], v: VersionRef<'_>) -> Entry {
        let value = v.value.unwrap_or(&[]);
        let mut data = Vec::with_capacity(key.len() + value.len());
        data.extend_from_slice(key);
        data.extend_from_slice(value);
        let tomb = if v.is_tombstone() { TOMBSTONE } else { 0 };
        let head = Head { prefix: prefix(key), data: data.into_boxed_slice(), meta: key.len() as u32 | tomb, node: v.ts.node };
        Entry { head, micros: v.ts.micros }
    }

    fn key_len(&self) -> usize {
        self.head.key_len()
    }

    fn key(&self) -> &[u8] {
        self.head.key()
    }

    fn ts(&self) -> Timestamp {
        Timestamp { micros: self.micros, node: self.head.node }
    }

    fn is_tombstone(&self) -> bool {
        self.head.meta & TOMBSTONE != 0
    }

    fn value(&self) -> Option<&[u8]> {
        (!self.is_tombstone()).then(|| &self.head.data[self.key_len()..])
    }

    fn version(&self) -> Version {
        Version { ts: self.ts(), value: self.value().map(Box::from) }
    }

    /// Bytes of key and value.
    fn footprint(&self) -> u64 {
        self.head.data.len() as u64
    }

    /// How this cell's version compares with `v`, in the order of [`Version`]
    /// (timestamp, then tombstone, then value), without a copy.
    fn cmp_version(&self, v: VersionRef<'_>) -> Ordering {
        self.ts().cmp(&v.ts).then_with(|| self.is_tombstone().cmp(&v.is_tombstone())).then_with(|| self.value().cmp(&v.value))
    }
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.head == other.head
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        self.head.cmp(&other.head)
    }
}

impl Borrow<Head> for Entry {
    fn borrow(&self) -> &Head {
        &self.head
    }
}

/// One slot's cells, the bytes of their keys and values, and the log
/// position of its last logged change.
#[derive(Default)]
struct Slot {
    cells: BTreeSet<Entry>,
    bytes: u64,
    last_pos: u64,
}

impl Slot {
    /// Puts `entry` (holding version `v`) in if `v` is newer than its key's
    /// cell: `Ok` with the cell it replaced (if any), or `Err` with the
    /// timestamp of the cell, which stays as it was.
    ///
    /// One search of the B-tree in the usual case, where the version is
    /// newer: the entry is swapped in, and the old cell swapped back only if
    /// it was not older after all (a repeated or late write, which pays a
    /// second search).
    fn swap_in(&mut self, entry: Entry, v: VersionRef<'_>) -> std::result::Result<Option<Entry>, Timestamp> {
        let added = entry.footprint();
        let old = self.cells.replace(entry);
        if let Some(o) = &old
            && o.cmp_version(v) != Ordering::Less
        {
            let held = o.ts();
            self.cells.replace(old.expect("checked"));
            return Err(held);
        }
        self.bytes += added;
        if let Some(o) = &old {
            self.bytes -= o.footprint();
        }
        Ok(old)
    }

    /// Undoes [`swap_in`](Self::swap_in) of `key`'s cell, whose old cell was `old`.
    fn undo(&mut self, key: &[u8], old: Option<Entry>) {
        let new = match old {
            Some(o) => {
                self.bytes += o.footprint();
                self.cells.replace(o)
            }
            None => self.cells.take(&Head::probe(key)),
        };
        if let Some(n) = new {
            self.bytes -= n.footprint();
        }
    }
}

/// Cells in order, each one's key and value asked of the memory
/// [`AHEAD`] cells before it is reached. A slot's cells were allocated in
/// the order they were written, not in key order, so a scan in key order
/// otherwise waits on a cache miss per cell, one at a time (a stream of a
/// slot spent most of its time there); asked for early, the misses overlap.
struct Ahead<'a, I: Iterator<Item = &'a Entry>> {
    inner: I,
    window: std::collections::VecDeque<&'a Entry>,
}

/// How many cells [`Ahead`] reads ahead.
const AHEAD: usize = 16;

impl<'a, I: Iterator<Item = &'a Entry>> Ahead<'a, I> {
    fn new(inner: I) -> Self {
        Ahead { inner, window: std::collections::VecDeque::with_capacity(AHEAD) }
    }
}

impl<'a, I: Iterator<Item = &'a Entry>> Iterator for Ahead<'a, I> {
    type Item = &'a Entry;

    fn next(&mut self) -> Option<&'a Entry> {
        while self.window.len() < AHEAD {
            let Some(e) = self.inner.next() else { break };
            prefetch(e.head.data.as_ptr());
            self.window.push_back(e);
        }
        self.window.pop_front()
    }
}

/// Asks the processor to start loading the cache line at `p` into its
/// caches (a hint: nothing elsewhere than x86-64).
#[inline(always)]
fn prefetch(p: *const u8) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch only hints; it never faults, whatever the address.
    unsafe {
        std::arch::x86_64::_mm_prefetch::<{ std::arch::x86_64::_MM_HINT_T0 }>(p.cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// What [`Store::apply_page`] did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PageApplied {
    /// Cells in the page.
    pub cells: u64,
    /// Bytes of their keys and values.
    pub bytes: u64,
    /// The page's last key.
    pub last: Option<Key>,
    /// The newest timestamp in the page.
    pub newest: Option<Timestamp>,
    /// The log position of the page's record (0: nothing logged).
    pub pos: u64,
}

/// A cell as [`Store::list_cut`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Listed {
    /// The key.
    pub key: Key,
    /// The version's timestamp.
    pub ts: Timestamp,
    /// The value, cut to the length asked for; `None` for a tombstone.
    pub value: Option<Vec<u8>>,
    /// The value was cut.
    pub cut: bool,
}

/// Per-slot counts, for `status`, `ring` and `display`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct SlotStats {
    /// Keys held, tombstones included.
    pub keys: u64,
    /// Bytes of keys and values held.
    pub bytes: u64,
}

/// A replica's cells.
pub struct Store {
    slots: Box<[RwLock<Slot>]>,
    partitioner: Partitioner,
    wal: Option<Arc<Wal>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(None, Partitioner::ByteOrdered)
    }
}

impl Store {
    /// An empty store for keys of `partitioner`, logging to `wal` if given.
    pub fn new(wal: Option<Arc<Wal>>, partitioner: Partitioner) -> Self {
        Store { slots: (0..KEYS).map(|_| RwLock::new(Slot::default())).collect(), partitioner, wal }
    }

    /// The partitioner that gives each key its slot.
    pub fn partitioner(&self) -> Partitioner {
        self.partitioner
    }

    /// Logs every change to `wal` from now on (after recovery has loaded the store).
    pub fn set_wal(&mut self, wal: Option<Arc<Wal>>) {
        self.wal = wal;
    }

    fn slot(&self, key: &[u8]) -> &RwLock<Slot> {
        &self.slots[self.partitioner.slot(key) as usize]
    }

    /// The cell of `key`, if any (a tombstone included).
    pub fn get(&self, key: &[u8]) -> Option<Version> {
        let probe = Head::probe(key);
        self.slot(key).read().cells.get(&probe).map(Entry::version)
    }

    /// Merges `version` into `key`'s cell and, if it changed, appends the change
    /// to the log (not yet durable: see [`Applied::pos`]).
    pub fn apply(&self, key: &Key, version: Version) -> Result<Applied> {
        self.apply_borrowed(key.as_bytes(), version.borrowed())
    }

    /// [`apply`](Self::apply) of a borrowed key and version (a packed page's
    /// cell: no copy but the one the store keeps). The key must be one
    /// [`Limits::key`](crate::message::Limits::key) would take, as a
    /// [`Key`]'s is.
    pub fn apply_borrowed(&self, key: &[u8], version: VersionRef<'_>) -> Result<Applied> {
        self.apply_ref(key, version, |wal| wal.append_cell(key, version))
    }

    /// [`apply`](Self::apply) with the change logged by `log` instead of as a
    /// cell write (a Paxos commit's record, which carries the cell): `log`
    /// appends the record and returns its position; it is called under the
    /// slot's lock, only if the version is newer and there is a log. If it
    /// fails, the cell is put back and its error returned.
    pub fn apply_with(&self, key: &Key, version: Version, log: impl FnOnce(&Wal, &[u8], &Version) -> Result<u64>) -> Result<Applied> {
        self.apply_ref(key.as_bytes(), version.borrowed(), |wal| log(wal, key.as_bytes(), &version))
    }

    fn apply_ref(&self, key: &[u8], version: VersionRef<'_>, log: impl FnOnce(&Wal) -> Result<u64>) -> Result<Applied> {
        // Built before the lock is taken; wasted only when the version is not newer.
        let entry = Entry::new(key, version);
        let mut slot = self.slot(key).write();
        let old = match slot.swap_in(entry, version) {
            Ok(old) => old,
            Err(held) => return Ok(Applied { changed: false, held: Some(held), pos: slot.last_pos }),
        };
        let pos = match &self.wal {
            Some(wal) => match log(wal) {
                Ok(pos) => pos,
                Err(e) => {
                    // Not logged, so not applied: readers never saw it (the lock is held).
                    slot.undo(key, old);
                    return Err(e);
                }
            },
            None => 0,
        };
        slot.last_pos = slot.last_pos.max(pos);
        drop(slot);
        drop(old); // freed after the lock is released
        Ok(Applied { changed: true, held: None, pos })
    }

    /// Merges a packed page of cells (see [`packed`](crate::message::packed);
    /// a movement's copy) by last-write-wins, all under one lock of their
    /// slot, and logs the page as one record (replay merges it cell by cell
    /// again, so the cells that were not newer do no harm there). `check`
    /// vets each key first (the page came from a peer); every key must be of
    /// one slot. Nothing is applied unless everything is: a page that is not
    /// well formed, a key refused, keys of two slots, or a log that refuses
    /// the record.
    pub fn apply_page(&self, page: &[u8], mut check: impl FnMut(&[u8]) -> Result<()>) -> Result<PageApplied> {
        use crate::message::packed::Reader;
        let mut cells = Vec::new();
        let mut out = PageApplied::default();
        let mut slot = None;
        for cell in Reader::new(page) {
            let (key, v) = cell?;
            check(key)?;
            let s = self.partitioner.slot(key);
            if *slot.get_or_insert(s) != s {
                return Err(crate::error::Error::Protocol(format!(
                    "a page of cells of slot {} holds a key of slot {s}",
                    slot.unwrap_or(s)
                )));
            }
            out.cells += 1;
            out.bytes += (key.len() + v.value.map_or(0, <[u8]>::len)) as u64;
            out.newest = out.newest.max(Some(v.ts));
            cells.push((Entry::new(key, v), key, v));
        }
        out.last = cells.last().map(|(_, k, _)| Key::trusted(*k));
        let Some(slot) = slot else { return Ok(out) };
        let mut map = self.slots[slot as usize].write();
        let mut undo = Vec::with_capacity(cells.len());
        for (entry, key, v) in cells {
            if let Ok(old) = map.swap_in(entry, v) {
                undo.push((key, old));
            }
        }
        if let Some(wal) = &self.wal {
            match wal.append_page(page) {
                Ok(pos) => out.pos = pos,
                Err(e) => {
                    // Not logged, so not applied: readers never saw any of it (the lock is held).
                    for (key, old) in undo.into_iter().rev() {
                        map.undo(key, old);
                    }
                    return Err(e);
                }
            }
        }
        map.last_pos = map.last_pos.max(out.pos);
        drop(map);
        drop(undo); // the replaced cells, freed after the lock is released
        Ok(out)
    }

    /// Waits until the log holds everything up to `pos` durably (per the fsync mode).
    pub fn commit(&self, pos: u64) -> Result<()> {
        match (&self.wal, pos) {
            (Some(wal), p) if p > 0 => wal.commit(p),
            _ => Ok(()),
        }
    }

    /// [`apply`](Self::apply) then [`commit`](Self::commit); whether the cell changed.
    pub fn apply_durably(&self, key: &Key, version: Version) -> Result<bool> {
        let a = self.apply(key, version)?;
        self.commit(a.pos)?;
        Ok(a.changed)
    }

    /// Restores a version found in the log or a snapshot (not logged again).
    pub fn load(&self, key: Key, version: Version) {
        let entry = Entry::new(key.as_bytes(), version.borrowed());
        let old = self.slot(key.as_bytes()).write().swap_in(entry, version.borrowed());
        drop(old); // freed after the lock is released (a losing entry too)
    }

    /// A copy of slot `slot`'s cells in key order (one slot locked at a time,
    /// so writers to other slots never wait).
    pub fn slot_cells(&self, slot: u8) -> Vec<(Key, Version)> {
        self.slots[slot as usize].read().cells.iter().map(|e| (Key::trusted(e.key()), e.version())).collect()
    }

    /// Up to `count` cells of slot `slot` after key `after` (from its start if
    /// `None`), in key order.
    pub fn scan_slot(&self, slot: u8, after: Option<&[u8]>, count: usize) -> Vec<(Key, Version)> {
        use std::ops::Bound;
        let probe = after.map(Head::probe);
        let lower = probe.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let map = self.slots[slot as usize].read();
        map.cells.range::<Head, _>((lower, Bound::Unbounded)).take(count).map(|e| (Key::trusted(e.key()), e.version())).collect()
    }

    /// Up to `count` keys of slot `slot` after key `after` (from its start if
    /// `None`), in key order, with their timestamps and tombstone flags
    /// (nothing copied but the keys), stopping early once the keys listed
    /// reach `max_key_bytes`; and whether the slot holds keys past the last one listed.
    pub fn scan_stamps(&self, slot: u8, after: Option<&[u8]>, count: usize, max_key_bytes: usize) -> (Vec<(Key, Timestamp, bool)>, bool) {
        use std::ops::Bound;
        let probe = after.map(Head::probe);
        let lower = probe.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let map = self.slots[slot as usize].read();
        let mut cells = map.cells.range::<Head, _>((lower, Bound::Unbounded));
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < count && bytes < max_key_bytes {
            let Some(e) = cells.next() else { return (out, false) };
            bytes += e.key_len();
            out.push((Key::trusted(e.key()), e.ts(), e.is_tombstone()));
        }
        let more = cells.next().is_some();
        (out, more)
    }

    /// Up to `count` cells of slot `slot` after key `after`, in key order, each
    /// value cut to `max_value` bytes (nothing longer is copied), stopping
    /// once the keys and values listed reach `max_bytes`; and whether the slot
    /// holds cells past the last one listed.
    pub fn list_cut(&self, slot: u8, after: Option<&[u8]>, count: usize, max_value: usize, max_bytes: usize) -> (Vec<Listed>, bool) {
        use std::ops::Bound;
        let probe = after.map(Head::probe);
        let lower = probe.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let map = self.slots[slot as usize].read();
        let mut cells = map.cells.range::<Head, _>((lower, Bound::Unbounded));
        let mut out = Vec::new();
        let mut bytes = 0;
        while out.len() < count && bytes < max_bytes {
            let Some(e) = cells.next() else { return (out, false) };
            let value = e.value().map(|v| v[..v.len().min(max_value)].to_vec());
            let cut = e.value().is_some_and(|v| v.len() > max_value);
            bytes += e.key_len() + value.as_ref().map_or(0, Vec::len);
            out.push(Listed { key: Key::trusted(e.key()), ts: e.ts(), value, cut });
        }
        let more = cells.next().is_some();
        (out, more)
    }

    /// The cells of slot `slot` after key `after` that `keep` accepts, in key
    /// order, values whole, stopping once the keys and values listed reach
    /// `max_bytes`; and whether the slot holds more past the last one listed
    /// (true may be said of a slot whose remaining cells `keep` would refuse).
    pub fn cells_where(
        &self,
        slot: u8,
        after: Option<&[u8]>,
        max_bytes: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
    ) -> (Vec<(Key, Version)>, bool) {
        use std::ops::Bound;
        let probe = after.map(Head::probe);
        let lower = probe.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let map = self.slots[slot as usize].read();
        let mut cells = map.cells.range::<Head, _>((lower, Bound::Unbounded)).filter(|e| keep(e.key()));
        let mut out = Vec::new();
        let mut bytes = 0;
        while bytes < max_bytes {
            let Some(e) = cells.next() else { return (out, false) };
            bytes += e.footprint() as usize;
            out.push((Key::trusted(e.key()), e.version()));
        }
        let more = cells.next().is_some();
        (out, more)
    }

    /// [`cells_where`](Self::cells_where) written as a packed page into
    /// `page` (see [`packed`](crate::message::packed)), straight from the
    /// store: how many cells, and whether the slot holds more past the last.
    pub fn pack_where(
        &self,
        slot: u8,
        after: Option<&[u8]>,
        max_bytes: usize,
        mut keep: impl FnMut(&[u8]) -> bool,
        page: &mut Vec<u8>,
    ) -> (usize, bool) {
        use std::ops::Bound;
        let probe = after.map(Head::probe);
        let lower = probe.as_ref().map_or(Bound::Unbounded, Bound::Excluded);
        let map = self.slots[slot as usize].read();
        let mut cells = Ahead::new(map.cells.range::<Head, _>((lower, Bound::Unbounded))).filter(|e| keep(e.key()));
        let mut n = 0;
        let mut bytes = 0;
        while bytes < max_bytes {
            let Some(e) = cells.next() else { return (n, false) };
            bytes += e.footprint() as usize;
            crate::message::packed::push(page, e.key(), VersionRef { ts: e.ts(), value: e.value() });
            n += 1;
        }
        (n, cells.next().is_some())
    }

    /// Drops the cells of slot `slot` whose keys `drop` picks (cells this
    /// replica no longer holds after a membership change); how many. Not
    /// logged: a restart drops them again.
    pub fn drop_where(&self, slot: u8, mut drop: impl FnMut(&[u8]) -> bool) -> usize {
        let mut s = self.slots[slot as usize].write();
        let before = s.cells.len();
        let mut freed = 0;
        s.cells.retain(|e| {
            let d = drop(e.key());
            if d {
                freed += e.footprint();
            }
            !d
        });
        s.bytes -= freed;
        before - s.cells.len()
    }

    /// Calls `f` with the key, timestamp and tombstone flag of every cell of
    /// slot `slot`, in key order, under its read lock (nothing copied; `f`
    /// must be quick: writers to this slot wait).
    pub fn for_each_stamp(&self, slot: u8, mut f: impl FnMut(&[u8], Timestamp, bool)) {
        for e in &self.slots[slot as usize].read().cells {
            f(e.key(), e.ts(), e.is_tombstone());
        }
    }

    /// Every cell, slot by slot (for tests and small stores).
    pub fn snapshot(&self) -> Vec<(Key, Version)> {
        (0..KEYS).flat_map(|s| self.slot_cells(s as u8)).collect()
    }

    /// Keys and bytes held in each slot (kept as the cells change: no walk).
    pub fn stats(&self) -> Vec<SlotStats> {
        self.slots
            .iter()
            .map(|slot| {
                let slot = slot.read();
                SlotStats { keys: slot.cells.len() as u64, bytes: slot.bytes }
            })
            .collect()
    }

    /// Keys and bytes held in all.
    pub fn totals(&self) -> SlotStats {
        self.stats().into_iter().fold(SlotStats::default(), |a, b| SlotStats { keys: a.keys + b.keys, bytes: a.bytes + b.bytes })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::hlc::Timestamp;
    use crate::storage::wal::Wal;
    use std::sync::Barrier;

    fn k(i: u8) -> Key {
        Key::byte(i)
    }

    fn v(micros: u64, value: &str) -> Version {
        Version::value(Timestamp { micros, node: 0 }, value)
    }

    #[test]
    fn older_never_replaces_newer() {
        let s = Store::default();
        assert!(s.apply_durably(&k(3), v(10, "new")).unwrap());
        assert!(!s.apply_durably(&k(3), v(5, "old")).unwrap());
        assert_eq!(s.get(b"3").unwrap().value.as_deref(), Some(&b"new"[..]));
        assert!(s.get(b"4").is_none());
    }

    /// A change the log refuses is not applied: a new key stays absent, an
    /// existing cell keeps its version, and the byte counts do not move.
    #[test]
    fn a_change_the_log_refuses_is_not_applied() {
        let dir = std::env::temp_dir().join(format!("qkv-store-refused-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (wal, _) = Wal::open(&dir, crate::storage::wal::FsyncMode::Never).unwrap();
        let wal = Arc::new(wal);
        let s = Store::new(Some(wal.clone()), Partitioner::ByteOrdered);
        s.apply_durably(&k(3), v(10, "kept")).unwrap();
        let before = s.totals();
        wal.fail_for_test("disk full");
        assert!(s.apply(&k(3), v(20, "refused, longer")).is_err());
        assert!(s.apply(&k(4), v(20, "refused")).is_err());
        assert_eq!(s.get(b"3").unwrap().value.as_deref(), Some(&b"kept"[..]));
        assert!(s.get(b"4").is_none());
        assert_eq!(s.totals(), before);
        // A write that loses is answered without the log.
        assert!(!s.apply(&k(3), v(5, "older")).unwrap().changed);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A write that loses to the current cell is acknowledged only once the
    /// record holding the current cell is durable.
    #[test]
    fn an_older_write_waits_for_the_record_that_covers_it() {
        let dir = std::env::temp_dir().join(format!("qkv-store-cover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (wal, _) = Wal::open(&dir, crate::storage::wal::FsyncMode::Always).unwrap();
        let s = Store::new(Some(Arc::new(wal)), Partitioner::ByteOrdered);
        let newer = s.apply(&k(7), v(20, "v2")).unwrap();
        assert!(newer.changed && newer.pos > 0);
        let older = s.apply(&k(7), v(10, "v1")).unwrap();
        assert!(!older.changed);
        assert_eq!(older.pos, newer.pos, "the older write's ack must wait for v2's record");
        s.commit(older.pos).unwrap();
        drop(s);
        let _ = std::fs::remove_dir_all(&dir);
    }

    #[test]
    fn concurrent_writers_converge_on_the_newest() {
        let s = Arc::new(Store::default());
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..2000u64 {
                        s.apply_durably(&k((i % 256) as u8), v(i * 4 + t, "x")).unwrap();
                        let _ = s.get(k(((i + 7) % 256) as u8).as_bytes());
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for key in 0..=255u8 {
            let newest = (0..2000u64).filter(|i| i % 256 == key as u64).max().map(|i| i * 4 + 3);
            assert_eq!(s.get(k(key).as_bytes()).map(|c| c.ts.micros), newest, "key {key}");
        }
    }

    #[test]
    fn murmur3_keys_fill_slots_in_key_order_and_scan_resumes() {
        let s = Store::new(None, Partitioner::Murmur3);
        for i in 0..2000u32 {
            let key = Key::trusted(format!("user:{i}").into_bytes());
            assert!(s.apply_durably(&key, v(1, "xy")).unwrap());
            assert!(s.apply_durably(&key, v(2, "x")).unwrap(), "a newer, shorter value");
        }
        s.load(Key::trusted(*b"user:0"), v(1, "stale"));
        assert_eq!(s.get(b"user:1999").unwrap().value.as_deref(), Some(&b"x"[..]));
        assert!(s.get(b"user:2000").is_none());
        let stats = s.stats();
        assert_eq!(stats.iter().map(|st| st.keys).sum::<u64>(), 2000);
        assert!(stats.iter().filter(|st| st.keys > 0).count() > 200, "keys spread over the slots");
        assert_eq!(stats.iter().map(|st| st.bytes).sum::<u64>(), (0..2000).map(|i| format!("user:{i}").len() as u64 + 1).sum());
        // Walk every slot in pages of 3: every key once, in key order within a slot.
        let mut seen = Vec::new();
        for slot in 0..=255u8 {
            let mut after: Option<Key> = None;
            loop {
                let page = s.scan_slot(slot, after.as_ref().map(Key::as_bytes), 3);
                if page.is_empty() {
                    break;
                }
                for (key, _) in &page {
                    assert_eq!(Partitioner::Murmur3.slot(key.as_bytes()), slot);
                    assert!(after.as_ref().is_none_or(|a| a < key), "key order within a slot");
                }
                after = Some(page.last().unwrap().0.clone());
                seen.extend(page.into_iter().map(|(k, _)| k));
            }
        }
        seen.sort();
        seen.dedup();
        assert_eq!(seen.len(), 2000);
    }

    /// A listing of keys and stamps stops at the count or the key bytes, and says whether more follow.
    #[test]
    fn stamps_are_listed_in_key_order_within_bounds() {
        let s = Store::new(None, Partitioner::ByteOrdered);
        // Byte-ordered: key "7" is alone in slot 7.
        s.apply_durably(&k(7), v(3, "x")).unwrap();
        s.apply_durably(&k(7), Version::tombstone(Timestamp { micros: 4, node: 0 })).unwrap();
        assert_eq!(s.scan_stamps(7, None, 10, 100), (vec![(k(7), Timestamp { micros: 4, node: 0 }, true)], false));
        assert_eq!(s.scan_stamps(7, Some(b"7"), 10, 100), (vec![], false));
        let m = Store::new(None, Partitioner::Murmur3);
        let slot = Partitioner::Murmur3.slot(b"a0");
        let keys: Vec<Key> = (0..20_000)
            .map(|i| Key::trusted(format!("a{i}").into_bytes()))
            .filter(|k| Partitioner::Murmur3.slot(k.as_bytes()) == slot)
            .collect();
        assert!(keys.len() > 40);
        for key in &keys {
            m.apply_durably(key, v(1, "value")).unwrap();
        }
        let (page, more) = m.scan_stamps(slot, None, 5, 1000);
        assert_eq!((page.len(), more), (5, true));
        assert!(page.windows(2).all(|w| w[0].0 < w[1].0));
        let (all, more) = m.scan_stamps(slot, None, 10_000, 1 << 20);
        assert_eq!((all.len(), more), (keys.len(), false));
        // 12 bytes of keys: stops after the key that reaches it.
        let (capped, more) = m.scan_stamps(slot, None, 10_000, 12);
        let bytes: usize = capped.iter().map(|(k, _, _)| k.len()).sum();
        assert!(more && bytes >= 12 && bytes - capped.last().unwrap().0.len() < 12, "{capped:?}");
        let (rest, _) = m.scan_stamps(slot, Some(page[4].0.as_bytes()), 10_000, 1 << 20);
        assert_eq!(rest.len(), keys.len() - 5, "resumes after the last key listed");
    }

    /// Ordering by the inline prefix, then the bytes, is exactly the keys' byte order.
    #[test]
    fn heads_order_as_the_keys_do() {
        let mut keys: Vec<Vec<u8>> = vec![
            vec![],
            vec![0],
            vec![0, 0],
            b"ab".to_vec(),
            b"ab\0".to_vec(),
            b"ab\0\0\0\0\0\0\0".to_vec(),
            b"abcdefgh".to_vec(),
            b"abcdefgh\0".to_vec(),
            b"abcdefghi".to_vec(),
            b"abcdefgi".to_vec(),
            vec![0xff; 9],
            vec![0xff; 8],
        ];
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 12) as usize;
            keys.push((0..len).map(|i| [0u8, 1, b'a', b'b', 0xff][((x >> (i * 3)) % 5) as usize]).collect());
        }
        let mut by_head: Vec<&Vec<u8>> = keys.iter().collect();
        by_head.sort_by(|a, b| Head::probe(a).cmp(&Head::probe(b)));
        let mut by_bytes: Vec<&Vec<u8>> = keys.iter().collect();
        by_bytes.sort();
        assert_eq!(by_head, by_bytes);
        for a in &keys {
            for b in keys.iter().take(50) {
                assert_eq!(Head::probe(a) == Head::probe(b), a == b);
            }
        }
    }
}
