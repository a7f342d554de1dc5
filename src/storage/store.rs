//! The local store: 256 versioned cells behind one `RwLock`, optionally logged.
//!
//! Keys are `0..=255`, so the store is a fixed array indexed by key. Reads
//! take the read lock and clone the cell; writes take the write lock and
//! [`merge`](crate::storage::cell::merge) the incoming version by last-write-wins, so an
//! older version never replaces a newer one whatever order writes, repairs and
//! hint replays arrive in.
//!
//! With a write-ahead log ([`crate::storage::wal`]), a change is appended to the log
//! under the same write lock (so the log's order is the store's order, and a
//! snapshot taken after a log rotation holds every logged change), and the
//! caller [`commit`](Store::commit)s — waits for durability — after releasing
//! the lock, so concurrent writers share one fsync. A change the log refuses
//! (disk full) is not applied.

use std::sync::Arc;

use parking_lot::RwLock;

use crate::error::Result;
use crate::proto;
use crate::storage::cell::{Version, supersedes};
use crate::storage::wal::Wal;

pub use crate::cluster::ring::KEYS;

/// The outcome of [`Store::apply`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Applied {
    /// The version was newer and replaced the cell.
    pub changed: bool,
    /// Log position to [`Store::commit`] before acknowledging (0: nothing to wait for).
    pub pos: u64,
}

/// A cell: its version and the log position of the record that holds it.
type Cell = Option<(Version, u64)>;

/// 256 versioned cells.
pub struct Store {
    cells: RwLock<Vec<Cell>>,
    wal: Option<Arc<Wal>>,
}

impl Default for Store {
    fn default() -> Self {
        Self::new(None)
    }
}

impl Store {
    /// An empty store, logging to `wal` if given.
    pub fn new(wal: Option<Arc<Wal>>) -> Self {
        Store { cells: RwLock::new(vec![None; KEYS]), wal }
    }

    /// The version held for `key`, if any (tombstones included).
    pub fn get(&self, key: u8) -> Option<Version> {
        self.cells.read()[key as usize].as_ref().map(|(v, _)| v.clone())
    }

    /// Merges `version` into `key`'s cell and logs it if it changed the cell.
    /// The change is visible at once; it is durable after [`commit`](Self::commit)`(pos)`.
    ///
    /// A version that is not newer changes nothing, but its ack still promises
    /// that the replica holds it *or something newer*: `pos` is then the
    /// position of the record holding the current cell, which may not be
    /// durable yet.
    pub fn apply(&self, key: u8, version: Version) -> Result<Applied> {
        let mut cells = self.cells.write();
        let slot = &mut cells[key as usize];
        if !supersedes(&version, slot.as_ref().map(|(v, _)| v)) {
            return Ok(Applied { changed: false, pos: slot.as_ref().map_or(0, |(_, pos)| *pos) });
        }
        let pos = match &self.wal {
            Some(wal) => {
                let record = proto::LogRecord {
                    kind: Some(proto::log_record::Kind::Cell(proto::CellWrite { key: key as u32, version: Some(version.to_proto()) })),
                };
                wal.append(&record)?
            }
            None => 0,
        };
        *slot = Some((version, pos));
        Ok(Applied { changed: true, pos })
    }

    /// Waits until the change at `pos` is durable.
    pub fn commit(&self, pos: u64) -> Result<()> {
        match (&self.wal, pos) {
            (Some(wal), p) if p > 0 => wal.commit(p),
            _ => Ok(()),
        }
    }

    /// [`apply`](Self::apply) then [`commit`](Self::commit); returns whether the cell changed.
    pub fn apply_durably(&self, key: u8, version: Version) -> Result<bool> {
        let a = self.apply(key, version)?;
        self.commit(a.pos)?;
        Ok(a.changed)
    }

    /// Merges a recovered version without logging it.
    pub fn load(&self, key: u8, version: Version) {
        let mut cells = self.cells.write();
        let slot = &mut cells[key as usize];
        if supersedes(&version, slot.as_ref().map(|(v, _)| v)) {
            *slot = Some((version, 0));
        }
    }

    /// Every cell that holds a version, in key order.
    pub fn snapshot(&self) -> Vec<(u8, Version)> {
        let cells = self.cells.read();
        cells.iter().enumerate().filter_map(|(k, c)| c.as_ref().map(|(v, _)| (k as u8, v.clone()))).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::hlc::Timestamp;
    use crate::storage::wal::Wal;
    use std::sync::Barrier;

    fn v(micros: u64, value: &str) -> Version {
        Version::value(Timestamp { micros, node: 0 }, value)
    }

    #[test]
    fn older_never_replaces_newer() {
        let s = Store::default();
        assert!(s.apply_durably(3, v(10, "new")).unwrap());
        assert!(!s.apply_durably(3, v(5, "old")).unwrap());
        assert_eq!(s.get(3).unwrap().value.as_deref(), Some("new"));
        assert!(s.get(4).is_none());
    }

    /// A write that loses to the current cell is acknowledged only once the
    /// record holding the current cell is durable.
    #[test]
    fn an_older_write_waits_for_the_record_that_covers_it() {
        let dir = std::env::temp_dir().join(format!("qkv-store-cover-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let (wal, _) = Wal::open(&dir, crate::storage::wal::FsyncMode::Always).unwrap();
        let s = Store::new(Some(Arc::new(wal)));
        let newer = s.apply(7, v(20, "v2")).unwrap();
        assert!(newer.changed && newer.pos > 0);
        let older = s.apply(7, v(10, "v1")).unwrap();
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
                        s.apply_durably((i % 256) as u8, v(i * 4 + t, "x")).unwrap();
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
