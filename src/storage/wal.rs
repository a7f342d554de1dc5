//! Durability: a write-ahead log with group commit, snapshots, and recovery.
//!
//! # Files
//!
//! A replica's data folder holds `wal-<seq>.log` files and at most one
//! `snapshot`. Each log starts with the magic `QKVLOG01`, then records: a
//! `u32` length, a `u32` CRC-32C of the body, and the body, one protobuf
//! [`LogRecord`](crate::proto::LogRecord) (a cell write, a hint kept, a hint
//! delivered). The snapshot holds every cell and hint and the sequence number
//! of the first log it does *not* cover. The digits in the magics are the
//! format version; new record kinds are new fields of the `LogRecord` oneof.
//!
//! # Writing
//!
//! A change is [`append`](Wal::append)ed to an in-memory buffer (under the
//! lock of the state it changes, so the order in the log is the order of the
//! changes), then the writer [`commit`](Wal::commit)s: it waits until its
//! record has been written to the OS (`batch`, `never`) or also fsynced
//! (`always`). Commits use *leader/follower group commit*: the first waiter
//! takes the whole buffer, writes it with one `write` and, in `always` mode,
//! one `fdatasync`; every writer whose record was in that buffer is released
//! by the same sync. Under load, one fsync covers many writes.
//!
//! | mode | a write is acknowledged after | survives a process crash | survives a machine crash |
//! |------|------------------------------|--------------------------|--------------------------|
//! | `always` | `write` + `fdatasync` | yes | yes |
//! | `batch` (default, 10 ms) | `write`; a syncer fsyncs every window | yes | all but the last window |
//! | `never` | `write`; the OS syncs when it likes | yes | what the OS had flushed |
//!
//! # Snapshots
//!
//! When the log grows past a threshold, [`Wal::rotate`] starts a new log file;
//! the caller then captures every cell and hint and [`write_snapshot`]s them
//! (write a temporary file, fsync, rename, fsync the folder), after which the
//! logs before the rotation are deleted. Changes are appended under the lock
//! of the state they change, and the capture takes those locks after the
//! rotation, so the snapshot holds everything in the old logs. Replaying a
//! record that the snapshot already holds is harmless: cells merge by
//! last-write-wins, hints likewise.
//!
//! # Recovery
//!
//! [`Wal::open`] loads the snapshot, then replays the logs it does not cover,
//! in order. The last log may end in a torn record (the process died in the
//! middle of a write): it is cut at the last good record, with a log line
//! saying how many bytes were dropped. A bad record anywhere else — a checksum
//! mismatch followed by more data, or a bad record in an older log — stops the
//! start with an error: silently dropping acknowledged writes is worse than
//! not starting.
//!
//! # Disk errors
//!
//! If a write or sync fails (disk full, I/O error), the waiting writers get a
//! [`Error::Storage`] and are not acknowledged; the log is marked failed and
//! refuses new appends until a retry succeeds. The replica keeps serving
//! reads. Records already in memory are kept and retried; a snapshot, which
//! starts a fresh log, also clears the failure.

use std::fs::{self, File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::time::Duration;

use byteorder::{ByteOrder, LittleEndian};
use log::{info, warn};
use parking_lot::{Condvar, Mutex};
use prost::Message;

use crate::error::{Error, Result};
use crate::proto;

const LOG_MAGIC: &[u8; 8] = b"QKVLOG01";
const SNAP_MAGIC: &[u8; 8] = b"QKVSNAP1";
const RECORD_HEADER: usize = 8;
/// A record longer than this is garbage (values are at most a few MiB).
const MAX_RECORD: usize = 64 << 20;
const SNAPSHOT_FILE: &str = "snapshot";

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

/// CRC-32C (Castagnoli), table-driven.
pub fn crc32c(data: &[u8]) -> u32 {
    static TABLE: std::sync::OnceLock<[u32; 256]> = std::sync::OnceLock::new();
    let table = TABLE.get_or_init(|| {
        let mut t = [0u32; 256];
        for (i, e) in t.iter_mut().enumerate() {
            let mut c = i as u32;
            for _ in 0..8 {
                c = if c & 1 != 0 { 0x82F6_3B78 ^ (c >> 1) } else { c >> 1 };
            }
            *e = c;
        }
        t
    });
    let mut crc = !0u32;
    for &b in data {
        crc = table[((crc ^ b as u32) & 0xFF) as usize] ^ (crc >> 8);
    }
    !crc
}

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

/// What [`Wal::open`] found on disk.
pub struct Recovered {
    /// The snapshot, if any.
    pub snapshot: Option<proto::Snapshot>,
    /// Log records after it, in order.
    pub records: Vec<proto::LogRecord>,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and recovers what it holds.
    pub fn open(dir: &Path, mode: FsyncMode) -> Result<(Wal, Recovered)> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create data folder", dir, e))?;
        let snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE))?;
        let covered = snapshot.as_ref().map_or(0, |s| s.next_log_seq);
        let mut seqs = list_logs(dir)?;
        seqs.sort_unstable();
        // Logs that never got a record (a start that died early, a failed rotation) are
        // dropped, so the newest log that holds records is the one whose tail may be torn.
        while let Some(&seq) = seqs.last() {
            let path = log_path(dir, seq);
            let len = fs::metadata(&path).map_err(|e| io_err("cannot stat", &path, e))?.len();
            if len > LOG_MAGIC.len() as u64 {
                break;
            }
            let head = fs::read(&path).map_err(|e| io_err("cannot read", &path, e))?;
            if !LOG_MAGIC.starts_with(&head) {
                break;
            }
            fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
            seqs.pop();
        }
        let mut records = Vec::new();
        let mut last_seq = covered;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = log_path(dir, seq);
            if seq < covered {
                // Left over from a crash between a snapshot and the deletion of its logs.
                let _ = fs::remove_file(&path);
                continue;
            }
            let is_last = i + 1 == seqs.len();
            replay_log(&path, is_last, &mut records)?;
            // What was replayed may still be only in the page cache (the previous run
            // died before syncing): make it durable before writing after it.
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| io_err("cannot sync", &path, e))?;
            last_seq = seq + 1;
        }
        let seq = last_seq.max(covered);
        let file = create_log(dir, seq)?;
        let (snapshot_micros, snapshot_bytes) = match &snapshot {
            Some(s) => (s.taken_micros, fs::metadata(dir.join(SNAPSHOT_FILE)).map(|m| m.len()).unwrap_or(0)),
            None => (0, 0),
        };
        info!(
            "recovered {} from {}: {} log record(s) after {}",
            dir.display(),
            if snapshot.is_some() { "a snapshot" } else { "no snapshot" },
            records.len(),
            if snapshot.is_some() { "the snapshot" } else { "the start" }
        );
        let state = State {
            buf: Vec::with_capacity(64 * 1024),
            file: Some(file),
            seq,
            file_bytes: LOG_MAGIC.len() as u64,
            appended: 0,
            written: 0,
            synced: 0,
            busy: false,
            failed: None,
            awaiting_snapshot: None,
            sync_failed: false,
            snapshot_micros,
            snapshot_bytes,
        };
        let wal = Wal { dir: dir.to_path_buf(), mode, state: Mutex::new(state), cond: Condvar::new() };
        Ok((wal, Recovered { snapshot, records }))
    }

    /// The fsync mode.
    pub fn mode(&self) -> FsyncMode {
        self.mode
    }

    /// Appends `record` to the buffer; returns its position for [`commit`](Self::commit).
    /// Refused while the log is failed, so nothing is applied that cannot be logged.
    pub fn append(&self, record: &proto::LogRecord) -> Result<u64> {
        let mut st = self.state.lock();
        if let Some(e) = &st.failed {
            return Err(Error::Storage(format!("the log cannot be written: {e}")));
        }
        let start = st.buf.len();
        st.buf.extend_from_slice(&[0u8; RECORD_HEADER]);
        record.encode(&mut st.buf).expect("a Vec grows as needed");
        let len = st.buf.len() - start - RECORD_HEADER;
        let crc = crc32c(&st.buf[start + RECORD_HEADER..]);
        LittleEndian::write_u32(&mut st.buf[start..], len as u32);
        LittleEndian::write_u32(&mut st.buf[start + 4..], crc);
        st.appended += (RECORD_HEADER + len) as u64;
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
    fn lead(&self, st: &mut parking_lot::MutexGuard<'_, State>, sync: bool) {
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
            if r.is_err() {
                // Cut a partial record so the file ends on a record boundary, and
                // write the retry there.
                let _ = file.set_len(before);
                let _ = file.seek(SeekFrom::Start(before));
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

    /// Bytes in the current log (on disk and buffered).
    pub fn log_bytes(&self) -> u64 {
        let st = self.state.lock();
        st.file_bytes + st.buf.len() as u64
    }

    /// The current failure, if the log cannot be written.
    pub fn failure(&self) -> Option<String> {
        self.state.lock().failed.clone()
    }

    /// Starts a new log file; returns its sequence number. Everything appended
    /// before the call is in older logs, or — if they cannot be written — is
    /// held back: its writers are released only once the snapshot that
    /// follows (which holds those changes) is installed.
    pub fn rotate(&self) -> Result<u64> {
        // Only the snapshot thread rotates, so the sequence cannot move meanwhile;
        // creating the file (two fsyncs) outside the lock keeps writers going.
        let seq = self.state.lock().seq + 1;
        let file = create_log(&self.dir, seq)?;
        let mut st = self.state.lock();
        while st.busy {
            self.cond.wait(&mut st);
        }
        if !st.buf.is_empty() && st.failed.is_none() {
            self.lead(&mut st, true);
        } else if st.failed.is_none() {
            let r = st.file.as_ref().map_or(Ok(()), |f| f.sync_data());
            if let Err(e) = r {
                warn!("cannot sync {}: {e}", log_path(&self.dir, st.seq).display());
                st.failed = Some(e.to_string());
                st.sync_failed = true;
            }
        }
        if st.failed.is_some() {
            // The old log may not hold what was appended: the snapshot taken next does.
            st.buf.clear();
            st.awaiting_snapshot = Some(st.appended);
        }
        st.file = Some(file);
        st.seq = seq;
        st.file_bytes = LOG_MAGIC.len() as u64;
        Ok(seq)
    }

    /// Writes `snapshot` atomically, then deletes the logs it covers.
    pub fn install_snapshot(&self, snapshot: &proto::Snapshot) -> Result<u64> {
        let bytes = write_snapshot(&self.dir, snapshot)?;
        for seq in list_logs(&self.dir)? {
            if seq < snapshot.next_log_seq {
                let _ = fs::remove_file(log_path(&self.dir, seq));
            }
        }
        let mut st = self.state.lock();
        st.snapshot_micros = snapshot.taken_micros;
        st.snapshot_bytes = bytes;
        if let Some(pos) = st.awaiting_snapshot.take() {
            st.written = st.written.max(pos);
            st.synced = st.synced.max(pos);
            st.failed = None;
            st.sync_failed = false;
            info!("the log can be written again (new log {})", st.seq);
            self.cond.notify_all();
        }
        Ok(bytes)
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
        }
    }
}

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

/// Replays one log into `out`. A torn tail of the last log is cut; any other damage is an error.
fn replay_log(path: &Path, is_last: bool, out: &mut Vec<proto::LogRecord>) -> Result<()> {
    let mut data = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io_err("cannot read", path, e))?;
    if data.len() < LOG_MAGIC.len() {
        if LOG_MAGIC.starts_with(&data) {
            // The process died while creating this log: it never held a record.
            warn!("{}: the log's header is torn ({} bytes); removing the empty log", path.display(), data.len());
            return fs::remove_file(path).map_err(|e| io_err("cannot remove", path, e));
        }
        return Err(Error::Storage(format!("{}: too short to be a log ({} bytes) and not a torn header", path.display(), data.len())));
    }
    if &data[..LOG_MAGIC.len()] != LOG_MAGIC {
        return Err(Error::Storage(format!("{}: not a quorumkv log of this version (bad magic)", path.display())));
    }
    let mut pos = LOG_MAGIC.len();
    while pos < data.len() {
        let bad = match check_record(&data, pos) {
            Ok(end) => {
                let body = &data[pos + RECORD_HEADER..end];
                let record = proto::LogRecord::decode(body)
                    .map_err(|e| Error::Storage(format!("{}: record at offset {pos} does not decode: {e}", path.display())))?;
                if record.kind.is_none() {
                    return Err(Error::Storage(format!(
                        "{}: record at offset {pos} is of a kind this version does not know (written by a newer quorumkv?)",
                        path.display()
                    )));
                }
                out.push(record);
                pos = end;
                continue;
            }
            Err(why) => why,
        };
        // A damaged record in the last log is a torn tail if no valid record follows it
        // (the process died mid-write), or if it starts a zero-filled hole (a machine
        // crash wrote later pages before this one: none of it was ever fsynced, so
        // none of it was acknowledged in `always` mode, and `batch`/`never` do not
        // promise unsynced writes across a machine crash).
        let rest = &data[pos..];
        let hole = rest.len() >= RECORD_HEADER && rest[..RECORD_HEADER].iter().all(|&b| b == 0);
        let torn = is_last && (hole || find_valid_record(&data, pos + 1).is_none());
        if torn {
            warn!(
                "{}: torn record at offset {pos} ({}); cutting the log there and dropping {} byte(s)",
                path.display(),
                bad.why,
                rest.len()
            );
            return truncate(path, pos as u64);
        }
        return Err(Error::Storage(format!(
            "{}: corrupt record at offset {pos} ({}) with {} byte(s) after it; refusing to start rather than lose \
             acknowledged writes. Restore the file, or move it aside to start without its records",
            path.display(),
            bad.why,
            rest.len()
        )));
    }
    Ok(())
}

/// The first offset at or after `from` where a whole record with a valid checksum starts.
fn find_valid_record(data: &[u8], from: usize) -> Option<usize> {
    (from..data.len().saturating_sub(RECORD_HEADER)).find(|&p| check_record(data, p).is_ok())
}

struct BadRecord {
    why: String,
}

/// Checks the record at `pos`; returns its end.
fn check_record(data: &[u8], pos: usize) -> std::result::Result<usize, BadRecord> {
    let avail = data.len() - pos;
    if avail < RECORD_HEADER {
        return Err(BadRecord { why: format!("only {avail} byte(s) of a record header") });
    }
    let len = LittleEndian::read_u32(&data[pos..]) as usize;
    let crc = LittleEndian::read_u32(&data[pos + 4..]);
    if len == 0 || len > MAX_RECORD {
        return Err(BadRecord { why: format!("impossible length {len}") });
    }
    let end = pos + RECORD_HEADER + len;
    if end > data.len() {
        return Err(BadRecord { why: format!("{len}-byte record with only {} byte(s) present", avail - RECORD_HEADER) });
    }
    if crc32c(&data[pos + RECORD_HEADER..end]) != crc {
        return Err(BadRecord { why: "checksum mismatch".into() });
    }
    Ok(end)
}

fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| io_err("cannot open", path, e))?;
    f.set_len(len).and_then(|_| f.sync_all()).map_err(|e| io_err("cannot cut", path, e))
}

fn read_snapshot(path: &Path) -> Result<Option<proto::Snapshot>> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut data).map_err(|e| io_err("cannot read", path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open", path, e)),
    };
    let bad = |why: &str| Error::Storage(format!("{}: {why}; refusing to start (the logs it covered are gone)", path.display()));
    if data.len() < SNAP_MAGIC.len() + RECORD_HEADER || &data[..SNAP_MAGIC.len()] != SNAP_MAGIC {
        return Err(bad("not a quorumkv snapshot of this version"));
    }
    let h = SNAP_MAGIC.len();
    let len = LittleEndian::read_u32(&data[h..]) as usize;
    let crc = LittleEndian::read_u32(&data[h + 4..]);
    let body = data.get(h + RECORD_HEADER..h + RECORD_HEADER + len).ok_or_else(|| bad("truncated snapshot"))?;
    if crc32c(body) != crc {
        return Err(bad("snapshot checksum mismatch"));
    }
    proto::Snapshot::decode(body).map(Some).map_err(|e| bad(&format!("snapshot does not decode: {e}")))
}

/// Writes `snapshot` to `dir` atomically; returns its size.
pub fn write_snapshot(dir: &Path, snapshot: &proto::Snapshot) -> Result<u64> {
    let body = snapshot.encode_to_vec();
    let mut data = Vec::with_capacity(SNAP_MAGIC.len() + RECORD_HEADER + body.len());
    data.extend_from_slice(SNAP_MAGIC);
    data.extend_from_slice(&(body.len() as u32).to_le_bytes());
    data.extend_from_slice(&crc32c(&body).to_le_bytes());
    data.extend_from_slice(&body);
    let tmp = dir.join("snapshot.tmp");
    let fin = dir.join(SNAPSHOT_FILE);
    let mut f = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
    f.write_all(&data).and_then(|_| f.sync_all()).map_err(|e| {
        let _ = fs::remove_file(&tmp);
        io_err("cannot write", &tmp, e)
    })?;
    fs::rename(&tmp, &fin).map_err(|e| io_err("cannot rename", &tmp, e))?;
    sync_dir(dir)?;
    Ok(data.len() as u64)
}

/// The current wall-clock time in microseconds (for snapshot and hint times).
pub fn wall_micros() -> u64 {
    now_micros()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    struct Dir(PathBuf);
    impl Dir {
        fn new(tag: &str) -> Dir {
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

    fn cell(key: u32, micros: u64, value: &str) -> proto::LogRecord {
        proto::LogRecord {
            kind: Some(proto::log_record::Kind::Cell(proto::CellWrite {
                key,
                version: Some(proto::Version { micros, node: 1, tombstone: false, value: value.into() }),
            })),
        }
    }

    fn keys(r: &Recovered) -> Vec<u32> {
        r.records
            .iter()
            .map(|r| match &r.kind {
                Some(proto::log_record::Kind::Cell(c)) => c.key,
                _ => 999,
            })
            .collect()
    }

    #[test]
    fn crc32c_known_answer() {
        assert_eq!(crc32c(b"123456789"), 0xE306_9283);
        assert_eq!(crc32c(b""), 0);
    }

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

    fn last_log(dir: &Path) -> PathBuf {
        let mut seqs = list_logs(dir).unwrap();
        seqs.sort_unstable();
        // The newest log is the empty one opened after recovery; the data is in the one before.
        let with_data = seqs.iter().rev().find(|&&s| fs::metadata(log_path(dir, s)).unwrap().len() > LOG_MAGIC.len() as u64);
        log_path(dir, *with_data.unwrap())
    }

    fn write_three(dir: &Path) -> PathBuf {
        let (wal, _) = Wal::open(dir, FsyncMode::Always).unwrap();
        for k in 0..3 {
            let pos = wal.append(&cell(k, 1, "value")).unwrap();
            wal.commit(pos).unwrap();
        }
        drop(wal);
        last_log(dir)
    }

    #[test]
    fn torn_tail_is_cut_at_the_last_good_record() {
        let d = Dir::new("torn");
        let path = write_three(&d.0);
        let full = fs::metadata(&path).unwrap().len();
        // The process died in the middle of writing the third record.
        truncate(&path, full - 3).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), [0, 1]);
        let cut = fs::metadata(&path).unwrap().len();
        assert!(cut < full - 3, "the torn record was cut off");
    }

    #[test]
    fn a_corrupt_length_in_the_last_log_with_records_after_it_refuses() {
        let d = Dir::new("badlen");
        let path = write_three(&d.0);
        let mut data = fs::read(&path).unwrap();
        // The first record's length now points past the end of the file.
        data[LOG_MAGIC.len() + 3] = 0x7F;
        fs::write(&path, &data).unwrap();
        let err = Wal::open(&d.0, FsyncMode::Always).err().expect("valid records follow: must refuse").to_string();
        assert!(err.contains("corrupt record at offset 8"), "{err}");
        assert_eq!(fs::read(&path).unwrap(), data, "nothing was cut");
    }

    #[test]
    fn a_zero_hole_in_the_last_log_is_cut_even_with_data_after() {
        // A machine crash: the pages of a later write reached the disk, an earlier one did not.
        let d = Dir::new("hole");
        let path = write_three(&d.0);
        let mut data = fs::read(&path).unwrap();
        let second = LOG_MAGIC.len() + RECORD_HEADER + LittleEndian::read_u32(&data[LOG_MAGIC.len()..]) as usize;
        let len2 = RECORD_HEADER + LittleEndian::read_u32(&data[second..]) as usize;
        data[second..second + len2].fill(0);
        fs::write(&path, &data).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), [0]);
    }

    #[test]
    fn zero_filled_tail_is_torn_too() {
        // A machine crash after the file grew but before its data reached the disk.
        let d = Dir::new("zeros");
        let path = write_three(&d.0);
        let mut f = OpenOptions::new().append(true).open(&path).unwrap();
        f.write_all(&[0u8; 100]).unwrap();
        drop(f);
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), [0, 1, 2]);
    }

    #[test]
    fn a_log_whose_header_is_torn_is_removed() {
        let d = Dir::new("header");
        let path = write_three(&d.0);
        // A later start died while creating its log.
        let torn = log_path(&d.0, 99);
        fs::write(&torn, &LOG_MAGIC[..3]).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), [0, 1, 2]);
        assert!(!torn.exists());
        assert!(path.exists());
    }

    #[test]
    fn corrupt_middle_record_refuses_to_open() {
        let d = Dir::new("corrupt");
        let path = write_three(&d.0);
        let mut data = fs::read(&path).unwrap();
        // Flip a byte in the first record's body: two good records follow it.
        data[LOG_MAGIC.len() + RECORD_HEADER + 2] ^= 0xFF;
        fs::write(&path, &data).unwrap();
        let err = Wal::open(&d.0, FsyncMode::Always).err().expect("must refuse").to_string();
        assert!(err.contains("corrupt record at offset 8") && err.contains("refusing to start"), "{err}");
    }

    #[test]
    fn damage_in_an_older_log_refuses_to_open() {
        let d = Dir::new("older");
        let path = write_three(&d.0);
        // A newer log exists (opened by the next start), so this one is not the last.
        {
            let (wal, _) = Wal::open(&d.0, FsyncMode::Always).unwrap();
            let pos = wal.append(&cell(9, 1, "x")).unwrap();
            wal.commit(pos).unwrap();
        }
        let len = fs::metadata(&path).unwrap().len();
        truncate(&path, len - 2).unwrap();
        assert!(Wal::open(&d.0, FsyncMode::Always).is_err());
    }

    #[test]
    fn snapshot_then_rotate_drops_old_logs() {
        let d = Dir::new("snap");
        let (wal, _) = Wal::open(&d.0, FsyncMode::Batch(Duration::from_millis(1))).unwrap();
        for k in 0..10 {
            let pos = wal.append(&cell(k, 1, "v")).unwrap();
            wal.commit(pos).unwrap();
        }
        let next = wal.rotate().unwrap();
        let pos = wal.append(&cell(42, 2, "after")).unwrap();
        wal.commit(pos).unwrap();
        let snap = proto::Snapshot {
            next_log_seq: next,
            cells: (0..10).map(|k| proto::CellWrite { key: k, version: None }).collect(),
            hints: vec![],
            taken_micros: 7,
        };
        wal.install_snapshot(&snap).unwrap();
        assert!(list_logs(&d.0).unwrap().iter().all(|&s| s >= next));
        drop(wal);
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(rec.snapshot.as_ref().unwrap().cells.len(), 10);
        assert_eq!(keys(&rec), [42]);
    }

    #[test]
    fn corrupt_snapshot_refuses_to_open() {
        let d = Dir::new("badsnap");
        fs::create_dir_all(&d.0).unwrap();
        write_snapshot(&d.0, &proto::Snapshot { next_log_seq: 1, ..Default::default() }).unwrap();
        let p = d.0.join(SNAPSHOT_FILE);
        let mut data = fs::read(&p).unwrap();
        let last = data.len() - 1;
        data[last] ^= 1;
        fs::write(&p, data).unwrap();
        assert!(Wal::open(&d.0, FsyncMode::Always).err().unwrap().to_string().contains("snapshot"));
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
