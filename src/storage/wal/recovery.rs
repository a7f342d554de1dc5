//! Recovery: opening the data folder, loading the snapshot, replaying the logs
//! it does not cover, cutting a torn tail, and refusing any other damage.

use std::fs::{self, File, OpenOptions};
use std::io::Read;
use std::path::Path;

use log::{info, warn};
use parking_lot::{Condvar, Mutex};
use prost::Message;

use super::record::{LOG_MAGIC, RECORD_HEADER, check_record, find_valid_record, log_magic_prefix};
use super::snapshot::{SNAPSHOT_FILE, read_snapshot};
use super::{FsyncMode, State, Wal, create_log, io_err, list_logs, log_path};
use crate::error::{Error, Result};
use crate::proto;

/// What [`Wal::open`] found on disk, collected.
pub struct Recovered {
    /// The snapshot, if any (its chunks joined).
    pub snapshot: Option<proto::Snapshot>,
    /// Log records after it, in order.
    pub records: Vec<proto::LogRecord>,
}

/// What [`Wal::open_with`] hands its caller, in order: the snapshot's hints,
/// Paxos states and cells chunk by chunk, then every log record after it.
pub enum Replayed {
    /// Hints of the snapshot.
    Hints(Vec<proto::HintAdd>),
    /// A chunk of the snapshot's cells.
    Cells(Vec<proto::CellWrite>),
    /// A chunk of the snapshot's Paxos acceptor states.
    Paxos(Vec<proto::PaxosKeyState>),
    /// A log record the snapshot does not cover.
    Record(proto::LogRecord),
}

/// How much [`Wal::open_with`] replayed.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Replay {
    /// A snapshot was loaded.
    pub snapshot: bool,
    /// Log records replayed after it.
    pub records: usize,
    /// The snapshot's first log not covered (0 without a snapshot).
    pub next_log_seq: u64,
    /// When the snapshot was taken (0 without a snapshot).
    pub taken_micros: u64,
}

impl Wal {
    /// Opens (creating if needed) the log in `dir` and collects what it holds
    /// (for tests and small stores; a replica streams with [`open_with`](Self::open_with)).
    pub fn open(dir: &Path, mode: FsyncMode) -> Result<(Wal, Recovered)> {
        let mut snapshot: Option<proto::Snapshot> = None;
        let mut records = Vec::new();
        let (wal, replay) = Wal::open_with(dir, mode, &mut |r| match r {
            Replayed::Hints(h) => snapshot.get_or_insert_with(Default::default).hints.extend(h),
            Replayed::Cells(c) => snapshot.get_or_insert_with(Default::default).cells.extend(c),
            Replayed::Paxos(p) => snapshot.get_or_insert_with(Default::default).paxos.extend(p),
            Replayed::Record(r) => records.push(r),
        })?;
        if replay.snapshot {
            let s = snapshot.get_or_insert_with(Default::default);
            (s.next_log_seq, s.taken_micros) = (replay.next_log_seq, replay.taken_micros);
        }
        Ok((wal, Recovered { snapshot, records }))
    }

    /// Opens (creating if needed) the log in `dir` and hands `sink` what it
    /// holds, in order, without collecting it: the snapshot chunk by chunk,
    /// then the log records after it.
    pub fn open_with(dir: &Path, mode: FsyncMode, sink: &mut dyn FnMut(Replayed)) -> Result<(Wal, Replay)> {
        fs::create_dir_all(dir).map_err(|e| io_err("cannot create data folder", dir, e))?;
        let (mut covered, mut taken_micros) = (0, 0);
        let mut first = true;
        let had_snapshot = read_snapshot(&dir.join(SNAPSHOT_FILE), &mut |chunk| {
            if first {
                (covered, taken_micros, first) = (chunk.next_log_seq, chunk.taken_micros, false);
            }
            if !chunk.hints.is_empty() {
                sink(Replayed::Hints(chunk.hints));
            }
            if !chunk.paxos.is_empty() {
                sink(Replayed::Paxos(chunk.paxos));
            }
            for r in chunk.txn {
                sink(Replayed::Record(r));
            }
            if !chunk.cells.is_empty() {
                sink(Replayed::Cells(chunk.cells));
            }
        })?;
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
            if !log_magic_prefix(&head) {
                break;
            }
            fs::remove_file(&path).map_err(|e| io_err("cannot remove", &path, e))?;
            seqs.pop();
        }
        let mut records = 0;
        let mut last_seq = covered;
        for (i, &seq) in seqs.iter().enumerate() {
            let path = log_path(dir, seq);
            if seq < covered {
                // Left over from a crash between a snapshot and the deletion of its logs.
                let _ = fs::remove_file(&path);
                continue;
            }
            let is_last = i + 1 == seqs.len();
            records += replay_log(&path, is_last, sink)?;
            // What was replayed may still be only in the page cache (the previous run
            // died before syncing): make it durable before writing after it.
            File::open(&path).and_then(|f| f.sync_all()).map_err(|e| io_err("cannot sync", &path, e))?;
            last_seq = seq + 1;
        }
        let seq = last_seq.max(covered);
        let file = create_log(dir, seq)?;
        let (snapshot_micros, snapshot_bytes) = match had_snapshot {
            true => (taken_micros, fs::metadata(dir.join(SNAPSHOT_FILE)).map(|m| m.len()).unwrap_or(0)),
            false => (0, 0),
        };
        info!(
            "recovered {} from {}: {records} log record(s) after {}",
            dir.display(),
            if had_snapshot { "a snapshot" } else { "no snapshot" },
            if had_snapshot { "the snapshot" } else { "the start" }
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
        Ok((wal, Replay { snapshot: had_snapshot, records, next_log_seq: covered, taken_micros }))
    }
}

/// Replays one log into `sink`; returns how many records it held. A torn tail
/// of the last log is cut; any other damage is an error.
fn replay_log(path: &Path, is_last: bool, sink: &mut dyn FnMut(Replayed)) -> Result<usize> {
    let mut replayed = 0;
    let mut data = Vec::new();
    File::open(path).and_then(|mut f| f.read_to_end(&mut data)).map_err(|e| io_err("cannot read", path, e))?;
    if data.len() < LOG_MAGIC.len() {
        if log_magic_prefix(&data) {
            // The process died while creating this log: it never held a record.
            warn!("{}: the log's header is torn ({} bytes); removing the empty log", path.display(), data.len());
            return fs::remove_file(path).map(|_| 0).map_err(|e| io_err("cannot remove", path, e));
        }
        return Err(Error::Storage(format!("{}: too short to be a log ({} bytes) and not a torn header", path.display(), data.len())));
    }
    if !log_magic_prefix(&data[..LOG_MAGIC.len()]) {
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
                sink(Replayed::Record(record));
                replayed += 1;
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
            return truncate(path, pos as u64).map(|_| replayed);
        }
        return Err(Error::Storage(format!(
            "{}: corrupt record at offset {pos} ({}) with {} byte(s) after it; refusing to start rather than lose \
             acknowledged writes. Restore the file, or move it aside to start without its records",
            path.display(),
            bad.why,
            rest.len()
        )));
    }
    Ok(replayed)
}

/// Cuts the file at `path` to `len` bytes and syncs it.
fn truncate(path: &Path, len: u64) -> Result<()> {
    let f = OpenOptions::new().write(true).open(path).map_err(|e| io_err("cannot open", path, e))?;
    f.set_len(len).and_then(|_| f.sync_all()).map_err(|e| io_err("cannot cut", path, e))
}

#[cfg(test)]
mod tests {
    use std::fs::{self, OpenOptions};
    use std::io::Write;
    use std::path::{Path, PathBuf};

    use byteorder::{ByteOrder, LittleEndian};

    use super::super::test_util::{Dir, cell, keys};
    use super::*;

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

    /// Logs of the versions before Paxos (`QKVLOG02`), before its
    /// withdrawal record (`QKVLOG03`) and before the page of copied cells
    /// (`QKVLOG04`) and before transactions (`QKVLOG05`) are still read; a file with a magic
    /// this version does not know is refused.
    #[test]
    fn an_older_log_is_read_and_an_unknown_one_refused() {
        let d = Dir::new("v2");
        let path = write_three(&d.0);
        let mut data = fs::read(&path).unwrap();
        data[..8].copy_from_slice(b"QKVLOG02");
        fs::write(&path, &data).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), vec![0, 1, 2]);
        drop(_wal);
        data[..8].copy_from_slice(b"QKVLOG03");
        fs::write(&path, &data).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), vec![0, 1, 2], "version 3, before the withdrawal record");
        drop(_wal);
        data[..8].copy_from_slice(b"QKVLOG04");
        fs::write(&path, &data).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), vec![0, 1, 2], "version 4, before the page of copied cells");
        drop(_wal);
        data[..8].copy_from_slice(b"QKVLOG05");
        fs::write(&path, &data).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(keys(&rec), vec![0, 1, 2], "version 5, before transactions");
        drop(_wal);
        data[..8].copy_from_slice(b"QKVLOG07");
        fs::write(&path, &data).unwrap();
        let e = Wal::open(&d.0, FsyncMode::Always).err().expect("an unknown version is refused").to_string();
        assert!(e.contains("bad magic"), "{e}");
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
}
