//! Snapshots: rotating to a fresh log, writing the snapshot file atomically,
//! installing it (which deletes the logs it covers and clears a failure that
//! was waiting for it), and reading it back.

use std::fs::{self, File};
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use byteorder::{ByteOrder, LittleEndian};
use log::{info, warn};
use prost::Message;

use super::record::{LOG_MAGIC, RECORD_HEADER, SNAP_MAGIC, SNAP_MAGIC_V1, SNAP_MAGIC_V2, SNAP_MAGIC_V3, crc32c};
use super::{Wal, create_log, install_file, io_err, list_logs, log_path, tmp_path};
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
        self.install_snapshot_with(snapshot.next_log_seq, snapshot.taken_micros, snapshot.hints.clone(), |w| {
            w.paxos(snapshot.paxos.clone())?;
            w.txn(snapshot.txn.clone())?;
            w.cells(snapshot.cells.clone())
        })
    }

    /// Writes a snapshot atomically — its header (`next_log_seq`, `taken_micros`,
    /// `hints`), then what `fill` hands the [`SnapshotWriter`] chunk by chunk
    /// (Paxos states, then cells), then the end marker — and deletes the logs
    /// it covers. Returns its size.
    pub fn install_snapshot_with(
        &self,
        next_log_seq: u64,
        taken_micros: u64,
        hints: Vec<proto::HintAdd>,
        fill: impl FnOnce(&mut SnapshotWriter) -> Result<()>,
    ) -> Result<u64> {
        let header = proto::Snapshot { next_log_seq, taken_micros, ..Default::default() };
        let bytes = SnapshotWriter::write(&self.dir, header, |w| {
            w.hints(hints)?;
            fill(w)
        })?;
        for seq in list_logs(&self.dir)? {
            if seq < next_log_seq {
                let _ = fs::remove_file(log_path(&self.dir, seq));
            }
        }
        let mut st = self.state.lock();
        st.snapshot_micros = taken_micros;
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

/// Writes a snapshot file chunk by chunk (see the `Snapshot` message), so a
/// snapshot of millions of cells never sits in memory whole.
pub struct SnapshotWriter {
    out: BufWriter<File>,
    tmp: PathBuf,
    bytes: u64,
    /// `bytes` when the file was last synced.
    synced: u64,
    frame: Vec<u8>,
}

/// The largest chunk a snapshot file may hold (one cell of the largest value
/// and key, and room): the writer refuses to write more, the reader to read it.
const MAX_CHUNK: usize = 2 * CHUNK_BYTES + (64 << 20);

/// The snapshot file is synced every this many bytes as it is written.
const SYNC_EVERY: u64 = 8 << 20;

/// Cells per chunk of a snapshot file, at most.
const CHUNK_CELLS: usize = 4096;

/// Bytes of values per chunk, at most (a cell larger than this goes alone):
/// a chunk stays far below what a record may be.
const CHUNK_BYTES: usize = 4 << 20;

impl SnapshotWriter {
    fn write(dir: &Path, header: proto::Snapshot, fill: impl FnOnce(&mut SnapshotWriter) -> Result<()>) -> Result<u64> {
        let tmp = tmp_path(dir, SNAPSHOT_FILE);
        let file = File::create(&tmp).map_err(|e| io_err("cannot create", &tmp, e))?;
        let w = SnapshotWriter { out: BufWriter::with_capacity(1 << 20, file), tmp: tmp.clone(), bytes: 0, synced: 0, frame: Vec::new() };
        let bytes = match w.fill(header, fill) {
            Ok(b) => b,
            Err(e) => {
                let _ = fs::remove_file(&tmp);
                return Err(e);
            }
        };
        install_file(dir, &tmp, SNAPSHOT_FILE)?;
        Ok(bytes)
    }

    /// The magic, the header chunk, the cells, the end marker; then an fsync.
    fn fill(mut self, header: proto::Snapshot, fill: impl FnOnce(&mut SnapshotWriter) -> Result<()>) -> Result<u64> {
        self.raw(SNAP_MAGIC)?;
        self.chunk(&header)?;
        fill(&mut self)?;
        self.chunk(&proto::Snapshot { end: true, ..Default::default() })?;
        let file = self.out.into_inner().map_err(|e| io_err("cannot write", &self.tmp, e.into_error()))?;
        file.sync_all().map_err(|e| io_err("cannot sync", &self.tmp, e))?;
        Ok(self.bytes)
    }

    fn raw(&mut self, data: &[u8]) -> Result<()> {
        self.out.write_all(data).map_err(|e| io_err("cannot write", &self.tmp, e))?;
        self.bytes += data.len() as u64;
        // Written out and synced a few MiB at a time: dirty pages never pile up
        // into one long flush that the log's own fsyncs would queue behind.
        if self.bytes - self.synced >= SYNC_EVERY {
            self.synced = self.bytes;
            self.out.flush().and_then(|_| self.out.get_ref().sync_data()).map_err(|e| io_err("cannot sync", &self.tmp, e))?;
        }
        Ok(())
    }

    fn chunk(&mut self, chunk: &proto::Snapshot) -> Result<()> {
        self.frame.clear();
        self.frame.extend_from_slice(&[0; RECORD_HEADER]);
        chunk.encode(&mut self.frame).expect("a Vec grows as needed");
        let len = self.frame.len() - RECORD_HEADER;
        if len > MAX_CHUNK {
            // Never install a snapshot that could not be read back.
            return Err(Error::Storage(format!("a snapshot chunk of {len} bytes exceeds {MAX_CHUNK}")));
        }
        let crc = crc32c(&self.frame[RECORD_HEADER..]);
        LittleEndian::write_u32(&mut self.frame[..4], len as u32);
        LittleEndian::write_u32(&mut self.frame[4..8], crc);
        let frame = std::mem::take(&mut self.frame);
        let r = self.raw(&frame);
        self.frame = frame;
        r
    }

    /// Adds `hints` (in chunks of at most a few thousand hints and a few MiB).
    pub fn hints(&mut self, hints: Vec<proto::HintAdd>) -> Result<()> {
        let size = |h: &proto::HintAdd| h.key.len() + h.target.len() + h.version.as_ref().map_or(0, |v| v.value.len());
        self.chunked(hints, size, |hints| proto::Snapshot { hints, ..Default::default() })
    }

    /// Adds the Paxos acceptor's key states (in chunks of at most a few
    /// thousand states and a few MiB).
    pub fn paxos(&mut self, states: Vec<proto::PaxosKeyState>) -> Result<()> {
        let size =
            |s: &proto::PaxosKeyState| s.key.len() + s.accepted.as_ref().and_then(|a| a.version.as_ref()).map_or(0, |v| v.value.len());
        self.chunked(states, size, |paxos| proto::Snapshot { paxos, ..Default::default() })
    }

    /// Adds transaction intents and records, as the log records that make them.
    pub fn txn(&mut self, records: Vec<proto::LogRecord>) -> Result<()> {
        use prost::Message;
        self.chunked(records, |r: &proto::LogRecord| r.encoded_len(), |txn| proto::Snapshot { txn, ..Default::default() })
    }

    /// Adds `cells` (in chunks of at most a few thousand cells and a few MiB).
    pub fn cells(&mut self, cells: Vec<proto::CellWrite>) -> Result<()> {
        let size = |c: &proto::CellWrite| c.key.len() + c.version.as_ref().map_or(0, |v| v.value.len());
        self.chunked(cells, size, |cells| proto::Snapshot { cells, ..Default::default() })
    }

    /// Writes `items` in chunks of at most [`CHUNK_CELLS`] items and about
    /// [`CHUNK_BYTES`] (an item larger than that goes alone).
    fn chunked<T>(&mut self, items: Vec<T>, size: impl Fn(&T) -> usize, wrap: impl Fn(Vec<T>) -> proto::Snapshot) -> Result<()> {
        let mut chunk = Vec::new();
        let mut bytes = 0;
        for item in items {
            let n = size(&item);
            if !chunk.is_empty() && (chunk.len() == CHUNK_CELLS || bytes + n > CHUNK_BYTES) {
                self.chunk(&wrap(std::mem::take(&mut chunk)))?;
                bytes = 0;
            }
            bytes += n;
            chunk.push(item);
        }
        if !chunk.is_empty() {
            self.chunk(&wrap(chunk))?;
        }
        Ok(())
    }
}

/// Reads the snapshot at `path` chunk by chunk, handing each to `each`:
/// false if there is none, an error if it is damaged or cut short.
pub(super) fn read_snapshot(path: &Path, each: &mut dyn FnMut(proto::Snapshot)) -> Result<bool> {
    let file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(false),
        Err(e) => return Err(io_err("cannot open", path, e)),
    };
    let bad = |why: &str| Error::Storage(format!("{}: {why}; refusing to start (the logs it covered are gone)", path.display()));
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut magic = [0u8; 8];
    if r.read_exact(&mut magic).is_err() || ![SNAP_MAGIC, SNAP_MAGIC_V3, SNAP_MAGIC_V2, SNAP_MAGIC_V1].contains(&&magic) {
        return Err(bad("not a quorumkv snapshot of this version"));
    }
    let v1 = &magic == SNAP_MAGIC_V1;
    let mut body = Vec::new();
    loop {
        let mut header = [0u8; RECORD_HEADER];
        if r.read_exact(&mut header).is_err() {
            return Err(bad("truncated snapshot (no end marker)"));
        }
        let len = LittleEndian::read_u32(&header) as usize;
        let crc = LittleEndian::read_u32(&header[4..]);
        if !v1 && len > MAX_CHUNK {
            return Err(bad(&format!("impossible chunk length {len}")));
        }
        body.resize(len, 0);
        r.read_exact(&mut body).map_err(|_| bad("truncated snapshot"))?;
        if crc32c(&body) != crc {
            return Err(bad("snapshot checksum mismatch"));
        }
        let chunk = proto::Snapshot::decode(body.as_slice()).map_err(|e| bad(&format!("snapshot does not decode: {e}")))?;
        let end = chunk.end;
        each(chunk);
        if end || v1 {
            return Ok(true);
        }
    }
}

/// Writes `snapshot` (everything in one value: for tests and small stores) to `dir` atomically; returns its size.
pub fn write_snapshot(dir: &Path, snapshot: &proto::Snapshot) -> Result<u64> {
    let header = proto::Snapshot { cells: Vec::new(), hints: Vec::new(), paxos: Vec::new(), ..snapshot.clone() };
    SnapshotWriter::write(dir, header, |w| {
        w.hints(snapshot.hints.clone())?;
        w.paxos(snapshot.paxos.clone())?;
        w.txn(snapshot.txn.clone())?;
        w.cells(snapshot.cells.clone())
    })
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
            end: false,
            paxos: Vec::new(),
            txn: Vec::new(),
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

    fn cells(n: u32) -> Vec<proto::CellWrite> {
        (0..n)
            .map(|k| proto::CellWrite {
                legacy_key: 0,
                key: format!("key{k}").into_bytes(),
                version: Some(proto::Version { micros: 1, node: 1, tombstone: false, value: vec![7; 20] }),
            })
            .collect()
    }

    /// A snapshot of more cells than one chunk holds is written and read back
    /// chunk by chunk, every cell once; cut before its end marker it is refused.
    #[test]
    fn chunked_snapshots_round_trip_and_a_cut_one_is_refused() {
        let d = Dir::new("chunked");
        fs::create_dir_all(&d.0).unwrap();
        let n = 3 * CHUNK_CELLS as u32 + 5;
        let snap = proto::Snapshot { next_log_seq: 4, cells: cells(n), taken_micros: 9, ..Default::default() };
        write_snapshot(&d.0, &snap).unwrap();
        let mut chunks = 0;
        let mut got = Vec::new();
        assert!(
            read_snapshot(&d.0.join(SNAPSHOT_FILE), &mut |c| {
                chunks += 1;
                got.extend(c.cells);
            })
            .unwrap()
        );
        assert_eq!(chunks, 1 + 4 + 1, "header, four chunks of cells, end");
        assert_eq!(got, snap.cells);
        // Cut after the last cell chunk (the end marker is an 8-byte header and a 2-byte body).
        let p = d.0.join(SNAPSHOT_FILE);
        let data = fs::read(&p).unwrap();
        fs::write(&p, &data[..data.len() - 10]).unwrap();
        let err = read_snapshot(&p, &mut |_| {}).unwrap_err().to_string();
        assert!(err.contains("truncated snapshot"), "{err}");
    }

    /// Large values make small chunks: a chunk stays within a few MiB.
    #[test]
    fn chunks_are_bounded_by_bytes_too() {
        let d = Dir::new("bigchunks");
        fs::create_dir_all(&d.0).unwrap();
        let big = |k: u8| proto::CellWrite {
            legacy_key: 0,
            key: vec![k],
            version: Some(proto::Version { micros: 1, node: 1, tombstone: false, value: vec![k; 3 << 20] }),
        };
        let snap = proto::Snapshot { next_log_seq: 1, cells: (0..3).map(big).collect(), ..Default::default() };
        write_snapshot(&d.0, &snap).unwrap();
        let mut sizes = Vec::new();
        read_snapshot(&d.0.join(SNAPSHOT_FILE), &mut |c| sizes.push(c.cells.len())).unwrap();
        assert_eq!(sizes, [0, 1, 1, 1, 0], "header, one 3 MiB cell a chunk, end");
    }

    /// Hints are chunked like cells: however many a replica holds, no chunk
    /// outgrows what the reader accepts, and every hint is read back.
    #[test]
    fn hints_are_chunked_too() {
        let d = Dir::new("hintchunks");
        fs::create_dir_all(&d.0).unwrap();
        let hint = |k: u32| proto::HintAdd {
            target: "r1".into(),
            legacy_key: 0,
            key: k.to_string().into_bytes(),
            version: Some(proto::Version { micros: 1, node: 1, tombstone: false, value: vec![1; 2000] }),
            created_micros: 5,
        };
        let n = 2 * CHUNK_CELLS as u32 + 3;
        let snap = proto::Snapshot { next_log_seq: 2, hints: (0..n).map(hint).collect(), ..Default::default() };
        write_snapshot(&d.0, &snap).unwrap();
        let mut chunks = Vec::new();
        read_snapshot(&d.0.join(SNAPSHOT_FILE), &mut |c| chunks.push(c.hints.len())).unwrap();
        assert!(chunks.len() > 3 && chunks.iter().all(|&c| c <= CHUNK_CELLS), "{chunks:?}");
        assert_eq!(chunks.iter().sum::<usize>(), n as usize);
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(rec.snapshot.unwrap().hints, snap.hints);
    }

    /// Paxos key states are chunked like cells, between the hints and the
    /// cells, and read back whole; a snapshot without them reads as none.
    #[test]
    fn paxos_states_are_chunked_and_read_back() {
        let d = Dir::new("paxoschunks");
        fs::create_dir_all(&d.0).unwrap();
        let ballot = |micros| Some(proto::Ballot { micros, node: 1 });
        let state = |k: u32| proto::PaxosKeyState {
            key: format!("key{k}").into_bytes(),
            promised: ballot(9),
            accepted: Some(proto::PaxosProposal {
                version: Some(proto::Version { micros: 8, node: 1, tombstone: false, value: vec![3; 1000] }),
                origin: ballot(7),
            }),
            committed: ballot(6),
        };
        let n = CHUNK_CELLS as u32 + 2;
        let snap = proto::Snapshot { next_log_seq: 2, paxos: (0..n).map(state).collect(), cells: cells(3), ..Default::default() };
        write_snapshot(&d.0, &snap).unwrap();
        let mut chunks = Vec::new();
        read_snapshot(&d.0.join(SNAPSHOT_FILE), &mut |c| chunks.push((c.paxos.len(), c.cells.len()))).unwrap();
        assert_eq!(chunks, [(0, 0), (CHUNK_CELLS, 0), (2, 0), (0, 3), (0, 0)], "header, two chunks of states, the cells, end");
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        assert_eq!(rec.snapshot.unwrap().paxos, snap.paxos);
        let d2 = Dir::new("nopaxos");
        fs::create_dir_all(&d2.0).unwrap();
        write_snapshot(&d2.0, &proto::Snapshot { next_log_seq: 2, cells: cells(3), ..Default::default() }).unwrap();
        let (_wal, rec) = Wal::open(&d2.0, FsyncMode::Always).unwrap();
        assert!(rec.snapshot.unwrap().paxos.is_empty());
    }

    /// A version 1 snapshot (one chunk, magic QKVSNAP1) is still read.
    #[test]
    fn version_1_snapshots_are_read() {
        let d = Dir::new("snapv1");
        fs::create_dir_all(&d.0).unwrap();
        let snap = proto::Snapshot { next_log_seq: 3, cells: cells(10), ..Default::default() };
        let body = snap.encode_to_vec();
        let mut data = SNAP_MAGIC_V1.to_vec();
        data.extend_from_slice(&(body.len() as u32).to_le_bytes());
        data.extend_from_slice(&crc32c(&body).to_le_bytes());
        data.extend_from_slice(&body);
        fs::write(d.0.join(SNAPSHOT_FILE), data).unwrap();
        let (_wal, rec) = Wal::open(&d.0, FsyncMode::Always).unwrap();
        let got = rec.snapshot.unwrap();
        assert_eq!((got.next_log_seq, got.cells.len()), (3, 10));
    }
}
