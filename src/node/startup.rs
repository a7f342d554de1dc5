//! Start-up: what the data folder holds, back into the store and the hints;
//! and snapshots, which fold the log into one file.

use std::path::Path;
use std::time::Duration;

use log::{debug, info};

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::paxos as paxos_wire;
use crate::message::txn as txn_wire;
use crate::node::Node;
use crate::node::paxos::AcceptorState;
use crate::paxos::acceptor::{Acceptor, PersistRecord};
use crate::proto;
use crate::storage::cell::Version;
use crate::storage::hints::HintStore;
use crate::storage::hlc::Timestamp;
use crate::storage::store::Store;
use crate::storage::wal::{FsyncMode, Replayed, Wal, check_partitioner, wall_micros};
use crate::txn::intents::{IntentRecord, IntentTable};
use crate::txn::record::RecordTable;

/// A logged record's key: its bytes, or for a record of a version 1 log (the
/// seed's integer keys, `key` empty) the integer in decimal. A legacy integer
/// out of range is skipped.
fn logged_key(key: Vec<u8>, legacy: u32) -> Option<Key> {
    if !key.is_empty() {
        return Some(Key::trusted(key));
    }
    u8::try_from(legacy).ok().map(Key::byte)
}

/// What recovery loaded.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Loaded {
    /// Cell writes loaded.
    pub cells: usize,
    /// Hint records loaded.
    pub hints: usize,
    /// The newest timestamp seen: writes after the restart must be stamped after it.
    pub newest: Timestamp,
    /// Log records replayed after the snapshot.
    pub records: usize,
    /// Keys with Paxos acceptor state.
    pub paxos_keys: usize,
    /// Transaction intents held.
    pub intents: usize,
}

/// Cells travel to the loader threads in batches of this many.
const LOAD_BATCH: usize = 4096;

/// Loads cells into `store`, counting them.
fn load_cells(store: &Store, cells: Vec<proto::CellWrite>, loaded: &mut Loaded) {
    for c in cells {
        if let (Some(key), Some(v)) = (logged_key(c.key, c.legacy_key), c.version) {
            let v = Version::from_proto(v);
            loaded.newest = loaded.newest.max(v.ts);
            store.load(key, v);
            loaded.cells += 1;
        }
    }
}

/// Opens the log in `dir` and loads what it holds into `store` and `hints`,
/// and returns the Paxos acceptor its snapshot and records rebuild (a
/// commit's record also gives its cell to the store),
/// after checking that the folder's data was written under the store's
/// partitioner ([`check_partitioner`]: a folder of another one is refused
/// before anything in it is read or changed).
///
/// Cells are merged by last-write-wins, so the order in which they are loaded
/// does not matter: the thread reading (and checking, and decoding) the files
/// hands them in batches to loader threads, which fill the store's slots in
/// parallel. Hints are loaded in log order by the reading thread (a delivery
/// must follow the hint it removes).
pub(crate) fn recover(dir: &Path, fsync: FsyncMode, store: &Store, hints: &HintStore) -> Result<(Wal, Loaded, AcceptorState)> {
    check_partitioner(dir, store.partitioner())?;
    let loaders = std::thread::available_parallelism().map_or(2, |n| n.get()).clamp(1, 4);
    std::thread::scope(|scope| {
        let (tx, rx) = crossbeam_channel::bounded::<Vec<proto::CellWrite>>(4 * loaders);
        let workers: Vec<_> = (0..loaders)
            .map(|_| {
                let rx = rx.clone();
                scope.spawn(move || {
                    let mut loaded = Loaded::default();
                    for batch in rx {
                        load_cells(store, batch, &mut loaded);
                    }
                    loaded
                })
            })
            .collect();
        drop(rx);
        let mut batch = Vec::with_capacity(LOAD_BATCH);
        let mut loaded = Loaded::default();
        let mut acceptor = Acceptor::new();
        let mut intents = IntentTable::new();
        let mut records = RecordTable::new();
        // The first damaged Paxos record or state (the sink cannot fail; checked after).
        let mut damaged: Option<Error> = None;
        let mut paxos = |r: Result<PersistRecord>, acceptor: &mut Acceptor, loaded: &mut Loaded| match r {
            Ok(r) => {
                let ballot = match &r {
                    PersistRecord::Promise { ballot, .. } | PersistRecord::Withdraw { ballot, .. } => *ballot,
                    PersistRecord::Accept { proposal, .. } | PersistRecord::Commit { proposal, .. } => proposal.ballot,
                };
                loaded.newest = loaded.newest.max(ballot.0);
                acceptor.replay(&r);
            }
            Err(e) => {
                damaged.get_or_insert(e);
            }
        };
        let opened = Wal::open_with(dir, fsync, &mut |r| {
            use proto::log_record::Kind;
            match r {
                Replayed::Cells(cells) => {
                    let _ = tx.send(cells);
                }
                Replayed::Hints(hs) => {
                    for h in hs {
                        load_hint(hints, h, &mut loaded);
                    }
                }
                Replayed::Paxos(states) => {
                    for s in states {
                        match paxos_wire::state_from_proto(s) {
                            Ok((key, state)) => {
                                loaded.newest = loaded.newest.max(state.promised.0).max(state.committed.0);
                                acceptor.load(key, state);
                            }
                            Err(e) => paxos(Err(e), &mut acceptor, &mut loaded),
                        }
                    }
                }
                Replayed::Record(r) => match r.kind {
                    Some(Kind::Cell(c)) => {
                        batch.push(c);
                        if batch.len() == LOAD_BATCH {
                            let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH)));
                        }
                    }
                    Some(Kind::CellPage(page)) => {
                        for cell in crate::message::packed::Reader::new(&page) {
                            match cell {
                                Ok((key, v)) => {
                                    let version = Some(v.to_owned().into_proto());
                                    batch.push(proto::CellWrite { legacy_key: 0, key: key.to_vec(), version });
                                    if batch.len() == LOAD_BATCH {
                                        let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH)));
                                    }
                                }
                                Err(e) => {
                                    let e = Error::Storage(format!("a damaged page of cells in the log: {e}"));
                                    paxos(Err(e), &mut acceptor, &mut loaded);
                                }
                            }
                        }
                    }
                    Some(Kind::HintAdd(h)) => load_hint(hints, h, &mut loaded),
                    Some(Kind::TxnIntent(r)) => match txn_wire::intent_from_log(r) {
                        Ok((key, intent)) => intents.replay(&IntentRecord::Prepared { key, intent }),
                        Err(e) => paxos(Err(e), &mut acceptor, &mut loaded),
                    },
                    Some(Kind::TxnEnded(r)) => match txn_wire::ended_from_log(r) {
                        Ok((key, txn)) => intents.replay(&IntentRecord::Resolved { key, txn }),
                        Err(e) => paxos(Err(e), &mut acceptor, &mut loaded),
                    },
                    Some(Kind::TxnRecord(r)) => match txn_wire::record_from_log(r) {
                        Ok((state, true)) => records.drop_record(state.txn),
                        Ok((state, false)) => {
                            loaded.newest = loaded.newest.max(state.promised.0);
                            records.replay(state);
                        }
                        Err(e) => paxos(Err(e), &mut acceptor, &mut loaded),
                    },
                    Some(Kind::PaxosPromised(m)) => paxos(paxos_wire::promised_from_proto(m), &mut acceptor, &mut loaded),
                    Some(Kind::PaxosAccepted(m)) => paxos(paxos_wire::accepted_from_proto(m), &mut acceptor, &mut loaded),
                    Some(Kind::PaxosWithdrawn(m)) => paxos(paxos_wire::withdrawn_from_proto(m), &mut acceptor, &mut loaded),
                    Some(Kind::PaxosCommit(m)) => {
                        let r = paxos_wire::commit_from_proto(m);
                        if let Ok(PersistRecord::Commit { key, proposal }) = &r {
                            // The commit's cell, loaded like any other.
                            let version = Some(proposal.version().into_proto());
                            batch.push(proto::CellWrite { legacy_key: 0, key: key.to_vec(), version });
                            if batch.len() == LOAD_BATCH {
                                let _ = tx.send(std::mem::replace(&mut batch, Vec::with_capacity(LOAD_BATCH)));
                            }
                        }
                        paxos(r, &mut acceptor, &mut loaded);
                    }
                    Some(Kind::HintDone(d)) => {
                        if let Some(key) = logged_key(d.key, d.legacy_key) {
                            hints.load_delivered(&d.target, key.as_bytes(), Timestamp { micros: d.micros, node: d.node });
                        }
                    }
                    // A kind this version does not know (the magic should have
                    // stopped it): refuse rather than start without it.
                    None => {
                        paxos(Err(Error::Storage("a log record of a kind this version does not know".into())), &mut acceptor, &mut loaded);
                    }
                },
            }
        });
        if !batch.is_empty() {
            let _ = tx.send(batch);
        }
        drop(tx);
        for w in workers {
            let Ok(part) = w.join() else {
                return Err(Error::Internal("a loader thread failed while recovering the store".into()));
            };
            loaded.cells += part.cells;
            loaded.newest = loaded.newest.max(part.newest);
        }
        let (wal, replay) = opened?;
        if let Some(e) = damaged {
            return Err(Error::Storage(format!("{}: {e}; refusing to start", dir.display())));
        }
        loaded.records = replay.records;
        loaded.paxos_keys = acceptor.len();
        loaded.intents = intents.len();
        Ok((wal, loaded, AcceptorState::recovered(acceptor, intents, records)))
    })
}

fn load_hint(hints: &HintStore, h: proto::HintAdd, loaded: &mut Loaded) {
    if let (Some(key), Some(v)) = (logged_key(h.key, h.legacy_key), h.version) {
        hints.load(&h.target, key, Version::from_proto(v), h.created_micros);
        loaded.hints += 1;
    }
}

impl Node {
    /// After recovery: the clock moves past everything recovered, and a line says what was.
    pub(crate) fn recovered(&self, loaded: Loaded) {
        let Loaded { cells, hints, newest, paxos_keys, intents, .. } = loaded;
        let _ = self.clock.observe(newest, Duration::MAX);
        info!(
            "{}: recovered {cells} cell write(s) and {hints} hint record(s); {} hint(s) held; paxos state of {paxos_keys} key(s); \
             {intents} transaction intent(s)",
            self.cfg.name,
            self.hints.total()
        );
    }

    /// Takes a snapshot: rotates the log, writes every hint, the Paxos
    /// acceptor's state and every cell, drops the old logs.
    pub fn snapshot(&self) -> Result<u64> {
        let Some(wal) = &self.wal else { return Ok(0) };
        let next_log_seq = wal.rotate()?;
        let hints = self.hints.export();
        let hint_count = hints.len();
        let mut cells = 0;
        // Slot by slot: one slot's read lock at a time, one slot's copy in memory.
        // Paced: after each slot the thread rests as long as the slot took, so a
        // snapshot uses at most half a CPU and request threads keep theirs.
        let mut paxos_keys = 0;
        let bytes = wal.install_snapshot_with(next_log_seq, wall_micros(), hints, |w| {
            // Copied under the acceptor's lock, taken after the rotation: every
            // change whose record is in a log this snapshot deletes is in it.
            let (states, txn): (Vec<proto::PaxosKeyState>, Vec<proto::LogRecord>) = {
                let st = self.paxos.lock();
                let states = st.acceptor.states().map(|(k, s)| paxos_wire::state_to_proto(k, s)).collect();
                let intents = st.intents.intents().map(|(k, i)| txn_wire::intent_log(k, i));
                (states, intents.chain(st.records.records().map(txn_wire::record_log)).collect())
            };
            paxos_keys = states.len();
            w.paxos(states)?;
            w.txn(txn)?;
            for slot in 0..=255u8 {
                let started = std::time::Instant::now();
                let chunk: Vec<proto::CellWrite> = self
                    .store
                    .slot_cells(slot)
                    .into_iter()
                    .map(|(k, v)| proto::CellWrite { legacy_key: 0, key: k.to_vec(), version: Some(v.into_proto()) })
                    .collect();
                cells += chunk.len();
                w.cells(chunk)?;
                // No rest while writers wait for this snapshot (a failed log) or the node stops.
                if !self.shutdown.load(std::sync::atomic::Ordering::Acquire) && wal.failure().is_none() {
                    std::thread::sleep(started.elapsed().min(Duration::from_millis(50)));
                }
            }
            Ok(())
        })?;
        debug!(
            "snapshot of {cells} cell(s), {hint_count} hint(s) and the paxos state of {paxos_keys} key(s), {bytes} bytes; logs before {next_log_seq} removed"
        );
        Ok(bytes)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::{NodeId, NodeInfo, Ring};
    use crate::config::NodeConfig;
    use crate::coordinator::command::{Command, Executor};
    use crate::node::test_util::NoPeers;
    use crate::storage::wal::FsyncMode;
    use std::sync::Arc;
    use std::sync::Barrier;
    use std::sync::atomic::{AtomicBool, Ordering};

    fn ring() -> Ring {
        let nodes = (0..3)
            .map(|i| NodeInfo { name: format!("n{i}"), host: "127.0.0.1".into(), port: 1 + i as u16, id: NodeId(i as u32) })
            .collect();
        Ring::new(nodes, 3, 1).unwrap()
    }

    fn node(dir: &std::path::Path) -> Arc<Node> {
        let mut cfg = NodeConfig::new("n0", "127.0.0.1".parse().unwrap(), 1);
        cfg.data_dir = Some(dir.to_path_buf());
        cfg.fsync = FsyncMode::Never;
        Node::new(cfg, ring(), Arc::new(NoPeers)).unwrap().0
    }

    /// Writers, hint makers and a snapshot loop run at once; after a reopen every
    /// acknowledged write and every hint is there.
    #[test]
    fn snapshots_under_concurrent_writes_and_hints_lose_nothing() {
        let dir = std::env::temp_dir().join(format!("qkv-node-snap-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let n = node(&dir);
        let stop = Arc::new(AtomicBool::new(false));
        let barrier = Arc::new(Barrier::new(5));
        let writers: Vec<_> = (0..4u8)
            .map(|t| {
                let (n, barrier) = (n.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    for i in 0..300u64 {
                        let key = Key::byte(t * 64 + (i % 64) as u8);
                        let v = Version::value(Timestamp { micros: i + 1, node: t as u32 }, format!("{t}-{i}"));
                        n.apply_local(&key, v.clone()).unwrap();
                        if i % 10 == 0 {
                            n.execute(Command::Hint { target: NodeId(1 + (t as u32 % 2)), key, version: v });
                        }
                    }
                })
            })
            .collect();
        let snapper = {
            let (n, stop, barrier) = (n.clone(), stop.clone(), barrier.clone());
            std::thread::spawn(move || {
                barrier.wait();
                let mut taken = 0;
                while !stop.load(Ordering::Relaxed) {
                    n.snapshot().unwrap();
                    taken += 1;
                }
                taken
            })
        };
        for w in writers {
            w.join().unwrap();
        }
        stop.store(true, Ordering::Relaxed);
        assert!(snapper.join().unwrap() > 0);
        let cells = n.store.snapshot();
        let hints = (n.hints.count(NodeId(1)), n.hints.count(NodeId(2)));
        assert_eq!(cells.len(), 256);
        drop(n);
        let again = node(&dir);
        assert_eq!(again.store.snapshot(), cells, "every cell survives the reopen");
        assert_eq!((again.hints.count(NodeId(1)), again.hints.count(NodeId(2))), hints);
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }

    /// A page a movement copied in is applied whole or not at all (a cut
    /// page, keys of two slots), is logged as one record, and comes back
    /// from the log after a restart, merged with what the log held before.
    #[test]
    fn a_copied_page_is_applied_whole_and_recovered_from_the_log() {
        use crate::message::packed;
        use crate::storage::cell::VersionRef;
        let dir = std::env::temp_dir().join(format!("qkv-node-page-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        let n = node(&dir);
        let ts = |micros| Timestamp { micros, node: 1 };
        n.apply_local(&Key::byte(7), Version::value(ts(50), "newer")).unwrap();
        // (key, micros, value) each.
        type Cell<'a> = (&'a [u8], u64, Option<&'a [u8]>);
        let page = |cells: &[Cell]| {
            let mut out = Vec::new();
            for &(k, micros, value) in cells {
                packed::push(&mut out, k, VersionRef { ts: ts(micros), value });
            }
            out
        };
        let any = |_: &[u8]| Ok(());
        let mixed = page(&[(b"8", 10, Some(b"a")), (b"9", 10, Some(b"b"))]);
        assert!(n.store.apply_page(&mixed, any).unwrap_err().to_string().contains("slot 8 holds a key of slot 9"));
        let good = page(&[(b"8", 10, Some(b"copied")), (b"8", 11, None)]);
        assert!(n.store.apply_page(&good[..good.len() - 1], any).is_err(), "a cut page");
        let refused = n.store.apply_page(&good, |_| Err(crate::error::Error::InvalidRequest("no".into())));
        assert!(refused.is_err());
        assert_eq!(n.store.get(b"8"), None, "nothing of a refused page was applied");
        let applied = n.store.apply_page(&good, any).unwrap();
        assert_eq!((applied.cells, applied.last), (2, Some(Key::byte(8))));
        n.store.commit(applied.pos).unwrap();
        let older = n.store.apply_page(&page(&[(b"7", 10, Some(b"older"))]), any).unwrap();
        n.store.commit(older.pos).unwrap();
        let want = (n.store.get(b"7"), n.store.get(b"8"));
        assert_eq!(want.0.as_ref().and_then(|v| v.value.as_deref()), Some(&b"newer"[..]), "an older copied cell changes nothing");
        assert!(want.1.as_ref().is_some_and(Version::is_tombstone), "the newest of the page wins");
        drop(n);
        let again = node(&dir);
        assert_eq!((again.store.get(b"7"), again.store.get(b"8")), want, "the pages came back from the log");
        drop(again);
        let _ = std::fs::remove_dir_all(&dir);
    }
}
