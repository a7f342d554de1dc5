//! Snapshots: rotating to a fresh log, writing the snapshot file atomically,
//! installing it (which deletes the logs it covers and clears a failure that
//! was waiting for it), and reading it back.

use std::fs::{self, File};
use std::io::{self, Read, Write};
use std::path::Path;

use byteorder::{ByteOrder, LittleEndian};
use log::{info, warn};
use prost::Message;

use super::record::{LOG_MAGIC, RECORD_HEADER, SNAP_MAGIC, SNAP_MAGIC_V1, crc32c};
use super::{Wal, create_log, io_err, list_logs, log_path, sync_dir};
use crate::error::{Error, Result};
use crate::proto;

/// The name of the snapshot file in the data folder.
pub(super) const SNAPSHOT_FILE: &str = "snapshot";

impl Wal {
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
}

/// Reads the snapshot at `path`: `None` if there is none, an error if it is damaged.
pub(super) fn read_snapshot(path: &Path) -> Result<Option<proto::Snapshot>> {
    let mut data = Vec::new();
    match File::open(path) {
        Ok(mut f) => f.read_to_end(&mut data).map_err(|e| io_err("cannot read", path, e))?,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(io_err("cannot open", path, e)),
    };
    let bad = |why: &str| Error::Storage(format!("{}: {why}; refusing to start (the logs it covered are gone)", path.display()));
    if data.len() < SNAP_MAGIC.len() + RECORD_HEADER
        || (&data[..SNAP_MAGIC.len()] != SNAP_MAGIC && &data[..SNAP_MAGIC.len()] != SNAP_MAGIC_V1)
    {
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

#[cfg(test)]
mod tests {
    use std::fs;
    use std::time::Duration;

    use super::super::test_util::{Dir, cell, keys};
    use super::super::{FsyncMode, Wal, list_logs};
    use super::*;

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
            cells: (0..10).map(|k| proto::CellWrite { legacy_key: 0, key: vec![k], version: None }).collect(),
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
}
