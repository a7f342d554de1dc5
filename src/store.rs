//! The local store: 256 versioned cells behind one `RwLock`.
//!
//! Keys are `0..=255`, so the store is a fixed array indexed by key. Reads
//! take the read lock and clone the cell; writes take the write lock and
//! [`merge`](crate::cell::merge) the incoming version by last-write-wins, so an
//! older version never replaces a newer one whatever order writes, repairs and
//! hint replays arrive in. Critical sections are a compare and a move; nothing
//! blocking ever happens under the lock.
//!
//! Durability (issue 3) will wrap [`Store::apply`] with a write-ahead log: the
//! store itself stays the in-memory image.

use parking_lot::RwLock;

use crate::cell::{Version, supersedes};

/// Number of keys, and of cells.
pub const KEYS: usize = 256;

/// 256 versioned cells.
pub struct Store {
    cells: RwLock<Vec<Option<Version>>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new()
    }
}

impl Store {
    /// An empty store.
    pub fn new() -> Self {
        Store { cells: RwLock::new(vec![None; KEYS]) }
    }

    /// The version held for `key`, if any (tombstones included).
    pub fn get(&self, key: u8) -> Option<Version> {
        self.cells.read()[key as usize].clone()
    }

    /// Merges `version` into `key`'s cell; returns whether it replaced what was there.
    pub fn apply(&self, key: u8, version: Version) -> bool {
        let mut cells = self.cells.write();
        let slot = &mut cells[key as usize];
        if supersedes(&version, slot.as_ref()) {
            *slot = Some(version);
            true
        } else {
            false
        }
    }

    /// Every cell that holds a version, in key order.
    pub fn snapshot(&self) -> Vec<(u8, Version)> {
        let cells = self.cells.read();
        cells.iter().enumerate().filter_map(|(k, v)| v.clone().map(|v| (k as u8, v))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::hlc::Timestamp;
    use std::sync::{Arc, Barrier};

    fn v(micros: u64, value: &str) -> Version {
        Version::value(Timestamp { micros, node: 0 }, value)
    }

    #[test]
    fn older_never_replaces_newer() {
        let s = Store::new();
        assert!(s.apply(3, v(10, "new")));
        assert!(!s.apply(3, v(5, "old")));
        assert_eq!(s.get(3).unwrap().value.as_deref(), Some("new"));
        assert!(s.get(4).is_none());
    }

    #[test]
    fn concurrent_writers_converge_on_the_newest() {
        let s = Arc::new(Store::new());
        let barrier = Arc::new(Barrier::new(4));
        let threads: Vec<_> = (0..4u64)
            .map(|t| {
                let (s, barrier) = (s.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..2000u64 {
                        s.apply((i % 256) as u8, v(i * 4 + t, "x"));
                        let _ = s.get(((i + 7) % 256) as u8);
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        for key in 0..=255u8 {
            let newest = (0..2000u64).filter(|i| i % 256 == key as u64).max().map(|i| i * 4 + 3);
            assert_eq!(s.get(key).map(|c| c.ts.micros), newest, "key {key}");
        }
    }
}
