//! Writing: the fsync modes, appending to the in-memory buffer, and
//! leader/follower group commit (`commit`, `sync`, `flush`).

use std::fs::File;
use std::io::{Seek, SeekFrom, Write};
use std::time::Duration;

use log::warn;

use super::record::{encode_cell_record, encode_page_record, encode_record};
use super::{State, Wal, log_path};
use crate::error::{Error, Result};
use crate::proto;
use crate::storage::cell::VersionRef;

/// When a write counts as durable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncMode {
    /// Acknowledge after fsync (group commit).
    Always,
    /// Acknowledge after `write`; fsync at least every window.
    Batch(Duration),
    /// Acknowledge after `write`; the OS decides when to sync.
    Never,
}

impl FsyncMode {
    /// Parses `always`, `batch` (with `window`) or `never`.
    pub fn parse(s: &str, window: Duration) -> std::result::Result<FsyncMode, String> {
        match s.to_ascii_lowercase().as_str() {
            "always" => Ok(FsyncMode::Always),
            "batch" => Ok(FsyncMode::Batch(window)),
            "never" => Ok(FsyncMode::Never),
            _ => Err(format!("unknown fsync mode {s:?}: use always, batch or never")),
        }
    }
}

impl std::fmt::Display for FsyncMode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FsyncMode::Always => f.write_str("always"),
            FsyncMode::Batch(w) => write!(f, "batch ({} ms)", w.as_millis()),
            FsyncMode::Never => f.write_str("never"),
        }
    }
}

impl Wal {
    /// Appends `record` to the buffer; returns its position for [`commit`](Self::commit).
    /// Refused while the log is failed, so nothing is applied that cannot be logged.
    pub fn append(&self, record: &proto::LogRecord) -> Result<u64> {
        self.push(|buf| encode_record(buf, record))
    }

    /// [`append`](Self::append) of the cell write `key` ← `v`, encoded
    /// without copying the key and value into a message first.
    pub fn append_cell(&self, key: &[u8], v: VersionRef<'_>) -> Result<u64> {
        self.push(|buf| encode_cell_record(buf, key, v))
    }

    /// [`append`](Self::append) of a packed page of cells (a movement's copy), one record.
    pub fn append_page(&self, page: &[u8]) -> Result<u64> {
        self.push(|buf| encode_page_record(buf, page))
    }

    /// Adds one framed record (`encode` appends it and returns its length) to the
    /// buffer the next group commit writes; its end position in the log.
    fn push(&self, encode: impl FnOnce(&mut Vec<u8>) -> usize) -> Result<u64> {
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(Error::Storage(format!("the log cannot be written: {e}")));
        }
        let framed = encode(&mut st.buf);
        st.appended += framed as u64;
        Ok(st.appended)
    }

    /// Waits until everything up to `pos` is durable as the mode requires.
    pub fn commit(&self, pos: u64) -> Result<()> {
        let mut st = self.state.lock();
        loop {
            let done = match self.mode {
                FsyncMode::Always => st.synced >= pos,
                _ => st.written >= pos,
            };
            if done {
                return Ok(());
            }
            if st.busy {
                self.cond.wait(&mut st);
                continue;
            }
            if let Some(e) = &st.failed {
                return Err(Error::Storage(format!("write not logged: {e}")));
            }
            self.lead(&mut st, self.mode == FsyncMode::Always);
        }
    }

    /// As the leader: writes the whole buffer (and syncs if `sync`), with the lock released during I/O.
    pub(super) fn lead(&self, st: &mut parking_lot::MutexGuard<'_, State>, sync: bool) {
        st.busy = true;
        let buf = std::mem::take(&mut st.buf);
        let target = st.appended;
        let mut file = st.file.take().expect("the log file is present when no leader runs");
        let before = st.file_bytes;
        let result = parking_lot::MutexGuard::unlocked(st, || {
            let mut r = file.write_all(&buf).map_err(|e| (e, false));
            if r.is_ok() && sync {
                r = file.sync_data().map_err(|e| (e, true));
            }
            if let Err((e, during_sync)) = r {
                // Cut a partial record so the file ends on a record boundary, and
                // write the retry there. If the cut fails too, a torn record may be
                // left in the file, and nothing may ever be written after it: as
                // after a failed fsync, only a snapshot (and a fresh log) goes on.
                let cut = file.set_len(before).and_then(|_| file.seek(SeekFrom::Start(before)));
                r = Err((e, during_sync || cut.is_err()));
            }
            (r, file, buf)
        });
        let (r, file, mut buf) = result;
        st.file = Some(file);
        st.busy = false;
        match r {
            Ok(()) => {
                st.file_bytes += buf.len() as u64;
                st.written = target;
                if sync {
                    st.synced = target;
                }
                if !st.sync_failed {
                    st.failed = None;
                }
                buf.clear();
                if buf.capacity() <= (1 << 20) && st.buf.is_empty() {
                    // Reuse the allocation.
                    std::mem::swap(&mut st.buf, &mut buf);
                }
            }
            Err((e, during_sync)) => {
                let what = format!("{}: {e}", log_path(&self.dir, st.seq).display());
                if st.failed.is_none() {
                    warn!("cannot write the log: {what}; refusing writes until it can");
                }
                st.sync_failed |= during_sync;
                st.failed = Some(what);
                // Keep the records, in order, for the retry.
                buf.extend_from_slice(&st.buf);
                st.buf = buf;
            }
        }
        self.cond.notify_all();
    }

    /// Writes and syncs whatever is buffered (the batch syncer, retries after a failure).
    /// The fsync runs on a duplicate of the file handle without holding the log,
    /// so writers keep appending and writing meanwhile.
    pub fn sync(&self) -> Result<()> {
        let mut st = self.state.lock();
        while st.busy {
            self.cond.wait(&mut st);
        }
        if st.synced >= st.appended && st.failed.is_none() {
            return Ok(());
        }
        if st.awaiting_snapshot.is_some() || st.sync_failed {
            return Err(Error::Storage("waiting for a snapshot to cover what the log could not hold".into()));
        }
        if !st.buf.is_empty() || st.failed.is_some() {
            self.lead(&mut st, false);
            if let Some(e) = &st.failed {
                return Err(Error::Storage(e.clone()));
            }
        }
        let target = st.written;
        let file = st.file.as_ref().map(File::try_clone);
        let seq = st.seq;
        drop(st);
        let result = match file {
            Some(Ok(f)) => f.sync_data(),
            Some(Err(e)) => Err(e),
            None => Ok(()),
        };
        let mut st = self.state.lock();
        match result {
            // A rotation meanwhile synced the old file itself before switching.
            Ok(()) => {
                st.synced = st.synced.max(target);
                self.cond.notify_all();
                Ok(())
            }
            Err(e) => {
                // After a failed fsync the page cache may have dropped the data: refuse
                // writes until a sync succeeds again (or a snapshot starts a fresh log).
                let what = format!("{}: {e}", log_path(&self.dir, seq).display());
                if st.failed.is_none() {
                    warn!("cannot sync the log: {what}; refusing writes until it can");
                }
                st.failed = Some(what.clone());
                st.sync_failed = true;
                self.cond.notify_all();
                Err(Error::Storage(what))
            }
        }
    }

    /// Writes (without syncing) whatever is buffered, so records nobody waits
    /// for (hints) reach the OS promptly.
    pub fn flush(&self) {
        let mut st = self.state.lock();
        while st.busy {
            self.cond.wait(&mut st);
        }
        if st.buf.is_empty() || st.failed.is_some() {
            return;
        }
        self.lead(&mut st, false);
    }
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::sync::Arc;
    use std::time::Duration;

    use super::super::test_util::{Dir, cell, keys};
    use super::super::{FsyncMode, Wal};

    #[test]
    fn records_survive_reopen_in_order() {
        let d = Dir::new("reopen");
        for mode in [FsyncMode::Always, FsyncMode::Batch(Duration::from_millis(5)), FsyncMode::Never] {
            let _ = fs::remove_dir_all(&d.0);
            {
                let (wal, rec) = Wal::open(&d.0, mode).unwrap();
                assert!(rec.records.is_empty());
                for k in 0..50 {
                    let pos = wal.append(&cell(k, k as u64, "v")).unwrap();
                    wal.commit(pos).unwrap();
                }
            }
            let (_wal, rec) = Wal::open(&d.0, mode).unwrap();
            assert_eq!(keys(&rec), (0..50).collect::<Vec<_>>(), "{mode}");
        }
    }

    /// A write that fails and whose partial record cannot be cut off (here the
    /// log is swapped for /dev/full, where writes fail and `set_len` is refused)
    /// leaves the log refusing writes until a snapshot, even once the disk works
    /// again: a retry written after a torn record would be unreadable.
    #[test]
    fn a_failed_write_that_cannot_be_cut_waits_for_a_snapshot() {
        let d = Dir::new("uncut");
        let (wal, _) = Wal::open(&d.0, FsyncMode::Never).unwrap();
        let Ok(full) = OpenOptions::new().write(true).open("/dev/full") else { return };
        let real = wal.state.lock().file.replace(full).unwrap();
        let pos = wal.append(&cell(1, 1, "lost")).unwrap();
        assert!(wal.commit(pos).is_err());
        // The disk works again.
        drop(wal.state.lock().file.replace(real));
        let e = wal.sync().unwrap_err().to_string();
        assert!(e.contains("snapshot"), "{e}");
        assert!(wal.append(&cell(2, 1, "later")).is_err());
    }

    /// Many threads committing at once share fsyncs and all their records are there afterwards.
    #[test]
    fn group_commit_under_concurrency_loses_nothing() {
        let d = Dir::new("group");
        let (wal, _) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        let wal = Arc::new(wal);
        let barrier = Arc::new(std::sync::Barrier::new(8));
        let threads: Vec<_> = (0..8u32)
            .map(|t| {
                let (wal, barrier) = (wal.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..50u32 {
                        let pos = wal.append(&cell(t * 1000 + i, 1, "x")).unwrap();
                        wal.commit(pos).unwrap();
                    }
                })
            })
            .collect();
        for t in threads {
            t.join().unwrap();
        }
        drop(wal);
        let (_w, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        let mut got = keys(&rec);
        got.sort_unstable();
        let mut want: Vec<u32> = (0..8).flat_map(|t| (0..50).map(move |i| t * 1000 + i)).collect();
        want.sort_unstable();
        assert_eq!(got, want);
    }
}
