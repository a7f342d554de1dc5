//! Durability: a write-ahead log with group commit, snapshots, and recovery.
//!
//! Every change a replica makes to its state — a cell write, a hint kept, a
//! hint delivered — is first appended to this log, and a write is
//! acknowledged only once its record is as durable as the [`FsyncMode`]
//! promises. After a crash, [`Wal::open`] gives back everything that was
//! acknowledged: the latest snapshot plus the log records written after it.
//!
//! # Files
//!
//! A replica's data folder holds `wal-<seq>.log` files (`<seq>` is a
//! zero-padded, 16-digit sequence number that only grows) and at most one
//! `snapshot`. Only the newest log is written to; older ones wait for a
//! snapshot to cover them and are then deleted. A `snapshot.tmp` may exist
//! briefly while a snapshot is written. A small text file, `partitioner`,
//! records the partitioner of the cluster the folder's keys belong to
//! ([`check_partitioner`]: a start under another partitioner is refused).
//!
//! # Record format
//!
//! Each log starts with the magic `QKVLOG06` (`QKVLOG05`, without transactions' records, `QKVLOG04`, without the page of copied cells, `QKVLOG03`, without the Paxos withdrawal record, `QKVLOG02`, without Paxos records, and `QKVLOG01`, the seed's integer keys, are still read), then records:
//!
//! ```text
//! +----------------+----------------+---------------------------+
//! | length: u32 LE | crc32c: u32 LE | body: `length` bytes      |
//! +----------------+----------------+---------------------------+
//! ```
//!
//! The CRC-32C ([`crc32c`]) covers the body only. The body is one protobuf
//! [`LogRecord`](crate::proto::LogRecord) (a cell write, a hint kept, a hint
//! delivered, a Paxos promise, accept or commit — the commit carrying its cell). A length of zero or of more than 64 MiB is impossible and
//! marks the record as damaged. The snapshot file is framed the same way
//! behind the magic `QKVSNAP4` (or the older `QKVSNAP3`, without transactions, `QKVSNAP2` and `QKVSNAP1`): one length, one checksum, one protobuf
//! [`Snapshot`](crate::proto::Snapshot) holding every cell, hint and Paxos key state and the
//! sequence number of the first log it does *not* cover (`next_log_seq`).
//!
//! The digits in the magics are the format version: a file with another
//! magic is refused. New record kinds are new fields of the `LogRecord`
//! oneof; a record whose kind this version does not know (written by a newer
//! quorumkv) is refused too, rather than silently skipped.
//!
//! # Writing: group commit
//!
//! A change is [`append`](Wal::append)ed to an in-memory buffer (under the
//! lock of the state it changes, so the order in the log is the order of the
//! changes); `append` returns the record's end as a position in the stream of
//! every byte ever appended. The writer then [`commit`](Wal::commit)s that
//! position: it waits until its record has been written to the OS (`batch`,
//! `never`) or also fsynced (`always`).
//!
//! Commits use *leader/follower group commit*. The log tracks three
//! positions — `appended`, `written` and `synced` — and a `busy` flag. The
//! first waiter that finds nobody busy becomes the leader: it takes the whole
//! buffer and the file, releases the lock, writes the buffer with one `write`
//! and, in `always` mode, one `fdatasync`, then takes the lock back, advances
//! `written` (and `synced`) to what it took and wakes everyone. Every writer
//! whose record was in that buffer is released by the same sync; writers who
//! appended meanwhile form the next group. Under load, one fsync covers many
//! writes.
//!
//! Two more entry points write the buffer without a waiting writer:
//! [`Wal::flush`] writes it (records nobody waits for, such as hints, reach
//! the OS promptly), and [`Wal::sync`] writes it and then fsyncs a duplicate
//! of the file handle without holding the lock, so writers keep going during
//! the fsync. The replica's syncer thread calls `flush` every few
//! milliseconds and, in `batch` mode, `sync` once per window.
//!
//! # Fsync modes
//!
//! | mode | a write is acknowledged after | survives a process crash | survives a machine crash |
//! |------|------------------------------|--------------------------|--------------------------|
//! | `always` | `write` + `fdatasync` | yes | yes |
//! | `batch` (default, 10 ms) | `write`; a syncer fsyncs every window | yes | all but the last window |
//! | `never` | `write`; the OS syncs when it likes | yes | what the OS had flushed |
//!
//! # Rotation and snapshots
//!
//! When the log grows past a threshold, [`Wal::rotate`] starts a new log
//! file: it creates the file (fsyncing it and its folder) outside the lock,
//! then writes and fsyncs what the old log still needs and switches to the
//! new one. The caller then captures every
//! cell and hint and [`install_snapshot`](Wal::install_snapshot)s them:
//! [`write_snapshot`] writes a temporary file, fsyncs it, renames it over
//! `snapshot` and fsyncs the folder, after which the logs before the
//! rotation are deleted. Changes are appended under the lock of the state
//! they change, and the capture takes those locks after the rotation, so the
//! snapshot holds everything in the old logs. Replaying a record that the
//! snapshot already holds is harmless: cells merge by last-write-wins, hints
//! likewise.
//!
//! # Recovery
//!
//! [`Wal::open`] loads the snapshot (any damage to it stops the start: the
//! logs it covered are gone), then replays the logs it does not cover, in
//! order, into [`Recovered`]. Logs older than the snapshot (left over from a
//! crash between a snapshot and the deletion of its logs) are deleted. Logs
//! at the end that never got a record (a start that died early, a failed
//! rotation) are deleted first, so the newest remaining log is the only one
//! whose tail may be torn.
//!
//! That last log may end in a torn record (the process died in the middle of
//! a write): it is cut at the last good record, with a log line saying how
//! many bytes were dropped. A damaged record that starts a zero-filled hole
//! is torn too, even with data after it: a machine crash wrote later pages
//! before this one, and none of it was ever fsynced, so none of it was
//! acknowledged in `always` mode. A bad record anywhere else — a checksum
//! mismatch followed by more valid data, or a bad record in an older log —
//! stops the start with an error: silently dropping acknowledged writes is
//! worse than not starting. Every replayed log is fsynced before the new
//! log is created, since the previous run may have died before syncing it.
//!
//! # Failure state
//!
//! If a write or sync fails (disk full, I/O error), the waiting writers get a
//! [`Error::Storage`] and are not acknowledged; the log is marked failed
//! ([`Wal::failure`]) and refuses new appends until a retry succeeds. The
//! replica keeps serving reads. A failed `write` is cut back (best effort)
//! to the last record boundary, and the records stay in memory, in order,
//! for the retry ([`Wal::sync`]).
//!
//! A failed fsync is stickier: the kernel may have dropped the unsynced pages
//! and reports that only once, so a later successful fsync of the same file
//! proves nothing. Only a snapshot clears it. A rotation while the log is
//! failed drops the buffered records (the old log may not hold them; the
//! snapshot taken next does) and remembers how far they reached; writers
//! who commit before the snapshot is installed get an error. Once it is
//! installed, everything up to there counts as written and synced, and the
//! fresh log is writable again.
//!
//! # Where the code lives
//!
//! - `mod.rs`: the [`Wal`] handle and its shared state, file naming and the
//!   small read-only accessors ([`Wal::mode`], [`Wal::log_bytes`],
//!   [`Wal::failure`], [`Wal::stats`]).
//! - `record.rs`: the magics, record framing, [`crc32c`], and the checks
//!   that decide whether bytes are a whole record.
//! - `commit.rs`: [`FsyncMode`], [`Wal::append`], group commit
//!   ([`Wal::commit`]), [`Wal::sync`] and [`Wal::flush`].
//! - `snapshot.rs`: [`Wal::rotate`], [`Wal::install_snapshot`],
//!   [`write_snapshot`] and reading the snapshot back.
//! - `recovery.rs`: [`Wal::open`], log replay, the torn-tail cut and the
//!   refusal of any other damage.
//! - `partitioner.rs`: the folder's partitioner record, checked before
//!   recovery ([`check_partitioner`]).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};

use parking_lot::{Condvar, Mutex};

use crate::error::{Error, Result};
use crate::proto;

mod commit;
mod partitioner;
mod record;
mod recovery;
mod snapshot;

pub use commit::FsyncMode;
pub use partitioner::{PARTITIONER_FILE, check_partitioner};
pub use record::crc32c;
pub use recovery::{Recovered, Replay, Replayed};
pub use snapshot::{SnapshotWriter, write_snapshot};

use record::LOG_MAGIC;

fn io_err(what: &str, path: &Path, e: io::Error) -> Error {
    Error::Storage(format!("{what} {}: {e}", path.display()))
}

fn log_path(dir: &Path, seq: u64) -> PathBuf {
    dir.join(format!("wal-{seq:016}.log"))
}

fn now_micros() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
}

/// Fsyncs a folder so a file created or renamed in it survives a machine crash.
fn sync_dir(dir: &Path) -> Result<()> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(|e| io_err("cannot sync folder", dir, e))
}

/// The temporary file a new `dir/name` is written to before it is renamed over `name`.
fn tmp_path(dir: &Path, name: &str) -> PathBuf {
    dir.join(format!("{name}.tmp"))
}

/// Renames `tmp` (written and fsynced) over `dir/name` and fsyncs the folder:
/// after a crash the folder holds the whole new file or the whole old one.
fn install_file(dir: &Path, tmp: &Path, name: &str) -> Result<()> {
    fs::rename(tmp, dir.join(name)).map_err(|e| io_err("cannot rename", tmp, e))?;
    sync_dir(dir)
}

/// Writes `data` to `dir/name` atomically: to a temporary file, fsynced, then
/// renamed over `name`, and the folder fsynced (as the snapshot is written).
fn write_atomically(dir: &Path, name: &str, data: &[u8]) -> Result<()> {
    let tmp = tmp_path(dir, name);
    let written = File::create(&tmp)
        .and_then(|mut f| f.write_all(data).and_then(|_| f.sync_all()))
        .map_err(|e| io_err("cannot write", &tmp, e))
        .and_then(|_| install_file(dir, &tmp, name));
    if written.is_err() {
        let _ = fs::remove_file(&tmp);
    }
    written
}

/// Creates log `seq` (replacing any file of that name), writes its magic and
/// makes both it and its folder entry durable.
fn create_log(dir: &Path, seq: u64) -> Result<File> {
    let path = log_path(dir, seq);
    let mut f = OpenOptions::new().create(true).write(true).truncate(true).open(&path).map_err(|e| io_err("cannot create", &path, e))?;
    let r = f.write_all(LOG_MAGIC).and_then(|_| f.sync_data()).map_err(|e| io_err("cannot write", &path, e)).and_then(|_| sync_dir(dir));
    if let Err(e) = r {
        let _ = fs::remove_file(&path);
        return Err(e);
    }
    Ok(f)
}

/// The sequence numbers of the logs in `dir`, in no particular order.
fn list_logs(dir: &Path) -> Result<Vec<u64>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(|e| io_err("cannot list", dir, e))? {
        let name = entry.map_err(|e| io_err("cannot list", dir, e))?.file_name();
        let name = name.to_string_lossy();
        if let Some(seq) = name.strip_prefix("wal-").and_then(|r| r.strip_suffix(".log")).and_then(|n| n.parse().ok()) {
            out.push(seq);
        }
    }
    Ok(out)
}

/// The current wall-clock time in microseconds (for snapshot and hint times).
pub fn wall_micros() -> u64 {
    now_micros()
}

struct State {
    /// Records appended but not yet written.
    buf: Vec<u8>,
    /// The open log file; `None` while a leader writes to it.
    file: Option<File>,
    seq: u64,
    /// Bytes in the current log file on disk (written).
    file_bytes: u64,
    /// Positions in the stream of all bytes ever appended.
    appended: u64,
    written: u64,
    synced: u64,
    /// A leader is writing.
    busy: bool,
    failed: Option<String>,
    /// Records up to here could not be logged before a rotation; they are
    /// durable once the snapshot that follows is installed.
    awaiting_snapshot: Option<u64>,
    /// An fsync of the current file failed. The kernel may have dropped the
    /// unsynced pages and reports that only once, so a later successful fsync
    /// proves nothing: only a snapshot (and a fresh log) clears this.
    sync_failed: bool,
    snapshot_micros: u64,
    snapshot_bytes: u64,
}

/// The write-ahead log of one replica.
pub struct Wal {
    dir: PathBuf,
    mode: FsyncMode,
    state: Mutex<State>,
    cond: Condvar,
}

impl Wal {
    /// The fsync mode.
    pub fn mode(&self) -> FsyncMode {
        self.mode
    }

    /// Bytes in the current log (on disk and buffered).
    pub fn log_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.file_bytes + st.buf.len() as u64
    }

    /// The current failure, if the log cannot be written.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    /// Makes the log refuse appends as a failed disk would (for tests).
    #[cfg(test)]
    pub(crate) fn fail_for_test(&self, why: &str) {
        self.state.lock().failed = Some(why.to_string());
    }

    /// What `status` shows.
    pub fn stats(&self) -> proto::StorageStats {
        let st = self.state.lock();
        proto::StorageStats {
            in_memory: false,
            fsync: self.mode.to_string(),
            log_bytes: st.file_bytes + st.buf.len() as u64,
            snapshot_micros: st.snapshot_micros,
            snapshot_bytes: st.snapshot_bytes,
            error: st.failed.clone().unwrap_or_default(),
            keys: 0,
            bytes: 0,
        }
    }
}

/// Helpers shared by the tests of the submodules.
#[cfg(test)]
mod test_util {
    use std::fs;
    use std::path::PathBuf;

    use super::Recovered;
    use crate::proto;

    pub(super) struct Dir(pub(super) PathBuf);
    impl Dir {
        pub(super) fn new(tag: &str) -> Dir {
            static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
            let p = std::env::temp_dir().join(format!("qkv-wal-{tag}-{}-{n}", std::process::id()));
            let _ = fs::remove_dir_all(&p);
            Dir(p)
        }
    }
    impl Drop for Dir {
        fn drop(&mut self) {
            let _ = fs::remove_dir_all(&self.0);
        }
    }

    pub(super) fn cell(key: u32, micros: u64, value: &str) -> proto::LogRecord {
        proto::LogRecord {
            kind: Some(proto::log_record::Kind::Cell(proto::CellWrite {
                legacy_key: 0,
                key: key.to_string().into_bytes(),
                version: Some(proto::Version { micros, node: 1, tombstone: false, value: value.into() }),
            })),
        }
    }

    pub(super) fn keys(r: &Recovered) -> Vec<u32> {
        r.records
            .iter()
            .map(|r| match &r.kind {
                Some(proto::log_record::Kind::Cell(c)) => String::from_utf8_lossy(&c.key).parse().unwrap_or(998),
                _ => 999,
            })
            .collect()
    }
}
