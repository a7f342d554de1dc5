//! Durability end to end: acknowledged writes survive `kill -9`, torn and
//! corrupt logs, snapshots under load, durable hints, and a full disk.
//!
//! With four replicas `r0..r3` and RF 3: keys 0-63 on r0, r1, r2; 64-127 on
//! r1, r2, r3; 128-191 on r2, r3, r0; 192-255 on r3, r0, r1.

mod common;

use std::collections::HashMap;
use std::fs;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, bin, slack, wait_for};
use quorumkv::Error;
use quorumkv::client::Client;
use quorumkv::cluster::consistency::Consistency::{All, One, Quorum};

/// Replica `name`'s version (micros, node) of each of `keys` it holds, read through `inspect` at `via`.
fn versions_on(c: &Cluster, via: usize, name: &str, keys: impl IntoIterator<Item = u32>) -> HashMap<u32, (u64, u32)> {
    let mut client = c.client(via);
    let mut held = HashMap::new();
    for key in keys {
        let i = client.inspect(key).unwrap();
        let Some(e) = i.replicas.into_iter().find(|e| e.name == name) else { continue };
        assert!(e.reachable, "{name} unreachable: {}", e.error);
        if let Some(v) = e.version {
            held.insert(key, (v.micros, v.node));
        }
    }
    held
}

/// The (key, micros, node) lines of a replica's ack log.
fn ack_log(path: &std::path::Path) -> Vec<(u32, u64, u32)> {
    fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (f.len() == 3).then(|| (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap()))
        })
        .collect()
}

/// Clients write at QUORUM through every coordinator while r1 is killed with
/// SIGKILL; after a restart — alone, so neither hints nor read repair can help
/// it — r1 must hold every write it acknowledged.
fn acked_writes_survive_kill_9(fsync: &str) {
    let mut c = Cluster::start(4, &["--fsync", fsync, "--ack-log", "{dir}/{name}.acks"]);
    let ports: Vec<u16> = c.replicas.iter().map(|r| r.port).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let acked = Arc::new(Mutex::new(0usize));
    let barrier = Arc::new(Barrier::new(9));
    let writers: Vec<_> = (0..8usize)
        .map(|t| {
            let (stop, acked, barrier, port) = (stop.clone(), acked.clone(), barrier.clone(), ports[t % 4]);
            std::thread::spawn(move || {
                let mut cl = Client::connect("127.0.0.1", port, Duration::from_secs(2)).unwrap();
                cl.set_timeout(Some(Duration::from_secs(10))).unwrap();
                barrier.wait();
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    i += 1;
                    let key = ((t * 37 + i * 11) % 256) as u32;
                    if cl.put(key, format!("t{t}-{i}"), Quorum).is_ok() {
                        *acked.lock().unwrap() += 1;
                    }
                }
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(slack(Duration::from_millis(600)));
    c.kill(1);
    std::thread::sleep(slack(Duration::from_millis(300)));
    stop.store(true, Ordering::Relaxed);
    for w in writers {
        w.join().unwrap();
    }
    let acks = ack_log(&c.dir().join("r1.acks"));
    assert!(acks.len() > 100, "r1 acknowledged only {} writes before it was killed", acks.len());
    assert!(*acked.lock().unwrap() > acks.len() / 3);
    // r1 comes back alone: what it holds is what its own disk kept.
    for i in [0, 2, 3] {
        c.kill(i);
    }
    c.restart(1);
    let keys: std::collections::BTreeSet<u32> = acks.iter().map(|&(k, _, _)| k).collect();
    let held = versions_on(&c, 1, "r1", keys);
    let lost: Vec<_> = acks.iter().filter(|(k, m, n)| held.get(k).is_none_or(|&have| have < (*m, *n))).take(5).collect();
    assert!(lost.is_empty(), "fsync {fsync}: r1 lost acknowledged writes, e.g. {lost:?} (of {} acks)\n{}", acks.len(), c.logs());
}

#[test]
fn acked_writes_survive_kill_9_with_fsync_always() {
    acked_writes_survive_kill_9("always");
}

#[test]
fn acked_writes_survive_kill_9_with_fsync_batch() {
    acked_writes_survive_kill_9("batch");
}

#[test]
fn acked_writes_survive_kill_9_with_fsync_never() {
    acked_writes_survive_kill_9("never");
}

#[test]
fn a_restarted_replica_alone_serves_its_own_data_at_one() {
    let mut c = Cluster::start(4, &[]);
    c.client(0).put(5, "kept", All).unwrap();
    c.client(0).delete(6, All).unwrap();
    for i in 0..4 {
        c.kill(i);
    }
    c.restart(0);
    assert_eq!(c.client(0).get_text(5, One).unwrap().as_deref(), Some("kept"));
    assert_eq!(c.client(0).get_text(6, One).unwrap(), None, "the tombstone survived too");
    assert!(matches!(c.client(0).get_text(5, Quorum), Err(Error::Unavailable(_))));
    assert!(matches!(c.client(0).get_text(70, One), Err(Error::Unavailable(_))), "r0 holds no replica of key 70");
}

#[test]
fn in_memory_replicas_forget_on_restart() {
    let mut c = Cluster::start(4, &["--in-memory"]);
    c.client(0).put(5, "gone", All).unwrap();
    for i in 0..4 {
        c.kill(i);
    }
    c.restart(0);
    assert_eq!(c.client(0).get_text(5, One).unwrap(), None);
}

/// The newest log file of replica `i` that holds records.
fn newest_log(c: &Cluster, i: usize) -> std::path::PathBuf {
    let mut logs: Vec<_> = fs::read_dir(c.data_dir(i))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "log") && fs::metadata(p).unwrap().len() > 8)
        .collect();
    logs.sort();
    logs.pop().expect("a log with records")
}

#[test]
fn a_torn_tail_is_cut_with_a_log_line() {
    let mut c = Cluster::start(4, &[]);
    c.client(0).put(5, "before-the-tear", All).unwrap();
    c.kill(0);
    // The process died in the middle of appending a record.
    let path = newest_log(&c, 0);
    let mut f = fs::OpenOptions::new().append(true).open(&path).unwrap();
    std::io::Write::write_all(&mut f, &[200, 0, 0, 0, 1, 2, 3, 4, 9, 9, 9]).unwrap();
    drop(f);
    c.restart(0);
    assert!(c.log(0).contains("torn record") && c.log(0).contains("dropping 11 byte(s)"), "{}", c.log(0));
    for i in 1..4 {
        c.kill(i);
    }
    assert_eq!(c.client(0).get_text(5, One).unwrap().as_deref(), Some("before-the-tear"));
}

#[test]
fn a_corrupt_middle_record_stops_the_start() {
    let mut c = Cluster::start(4, &["--fsync", "always"]);
    for (k, v) in [(5u32, "a"), (6, "b"), (7, "c")] {
        c.client(0).put(k, v, All).unwrap();
    }
    c.kill(0);
    let path = newest_log(&c, 0);
    let mut data = fs::read(&path).unwrap();
    data[8 + 8 + 3] ^= 0x55; // inside the first record's body; good records follow
    fs::write(&path, &data).unwrap();
    let out = Command::new(bin("replica"))
        .args(["r0", &c.replicas[0].port.to_string(), c.file.to_str().unwrap()])
        .args(c.replica_args(0))
        .stdin(Stdio::null())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("corrupt record at offset 8") && err.contains("refusing to start"), "{err}");
}

/// Tiny snapshot threshold: snapshots and log truncations happen all the time
/// while writers run; after a crash of every replica nothing acknowledged is missing.
#[test]
fn snapshot_cycles_under_load_lose_nothing() {
    let mut c = Cluster::start(4, &["--snapshot-bytes", "4096"]);
    let ports: Vec<u16> = c.replicas.iter().map(|r| r.port).collect();
    let ops = if common::under_tsan() { 60 } else { 300 };
    // Each writer owns 8 keys and writes increasing numbers to them; it remembers the last acked.
    let threads: Vec<_> = (0..8u32)
        .map(|t| {
            let port = ports[t as usize % 4];
            std::thread::spawn(move || {
                let mut cl = Client::connect("127.0.0.1", port, Duration::from_secs(2)).unwrap();
                cl.set_timeout(Some(Duration::from_secs(10))).unwrap();
                let mut last = HashMap::new();
                for i in 0..ops {
                    let key = t * 32 + (i % 8);
                    cl.put(key, format!("{i:06}"), Quorum).unwrap();
                    last.insert(key, i);
                }
                last
            })
        })
        .collect();
    let mut last: HashMap<u32, u32> = HashMap::new();
    for t in threads {
        last.extend(t.join().unwrap());
    }
    // Snapshots run in the background, paced; the last one may still be writing when the
    // writers stop (slow under ThreadSanitizer), so wait for each replica's to appear.
    let snapshots = || (0..4).filter(|&i| c.data_dir(i).join("snapshot").exists()).count();
    common::wait_for(Duration::from_secs(60), || snapshots() == 4);
    assert_eq!(snapshots(), 4, "every replica took snapshots");
    let logs =
        || fs::read_dir(c.data_dir(0)).unwrap().filter(|e| e.as_ref().unwrap().path().extension().is_some_and(|x| x == "log")).count();
    common::wait_for(Duration::from_secs(60), || logs() <= 3);
    assert!(logs() <= 3, "old logs are removed after each snapshot ({} left)", logs());
    for i in 0..4 {
        c.kill(i);
    }
    for i in 0..4 {
        c.restart(i);
    }
    c.wait_all_up();
    for (key, i) in last {
        let got: u32 = c.client(key as usize % 4).get_text(key, Quorum).unwrap().expect("value").parse().unwrap();
        assert!(got >= i, "key {key}: read {got}, but {i} was acknowledged");
    }
}

/// r0 keeps hints for a dead r3, is itself killed and restarted, and still delivers them.
#[test]
fn hints_survive_their_holders_restart() {
    let mut c = Cluster::start(4, &["HINTED-HANDOFF"]);
    c.kill(3);
    c.wait_seen(0, 3, false);
    for key in [70u32, 80, 150, 200] {
        c.client(0).put(key, format!("hinted-{key}"), Quorum).unwrap();
    }
    assert!(wait_for(slack(Duration::from_secs(5)), || c.client(0).status().unwrap().replicas[3].hints == 4));
    c.kill(0);
    // Only r0 holds these hints: the other coordinators never saw the writes.
    for i in [1, 2] {
        assert_eq!(c.client(i).status().unwrap().replicas[3].hints, 0);
    }
    c.restart(0);
    assert_eq!(c.client(0).status().unwrap().replicas[3].hints, 4, "hints recovered from r0's log");
    c.restart(3);
    let ok = wait_for(slack(Duration::from_secs(10)), || {
        [70u32, 80, 150, 200].iter().all(|&k| {
            let i = c.client(1).inspect(k).unwrap();
            i.replicas
                .iter()
                .find(|e| e.name == "r3")
                .and_then(|e| e.version.clone())
                .is_some_and(|v| v.value == format!("hinted-{k}").into_bytes())
        })
    });
    assert!(ok, "r3 did not get the hints after r0's restart\n{}", c.logs());
    assert!(wait_for(slack(Duration::from_secs(5)), || c.client(0).status().unwrap().replicas[3].hints == 0));
}

/// A file size limit stands in for a full disk: writes r1 cannot log are refused
/// with a storage error, r1 keeps serving reads, and writes work again once a
/// snapshot has started a fresh log.
#[test]
fn a_full_disk_refuses_writes_but_keeps_the_replica_up() {
    let mut c = Cluster::start(4, &["--fsync", "always"]);
    c.wrap(1, "ulimit -f 200; trap '' XFSZ;"); // 200 KiB per file
    c.restart(1);
    c.wait_all_up();
    let big = "x".repeat(60_000);
    // Key 100 lives on r1, r2, r3. Each write adds 60 KB to r1's log.
    let mut refused = None;
    for n in 0..20 {
        match c.client(0).put(100, format!("{n}{big}"), All) {
            Ok(_) => {}
            Err(e) => {
                refused = Some(e);
                break;
            }
        }
    }
    let e = refused.expect("a write must be refused once r1's log hits the limit");
    assert!(matches!(e, Error::Failure(_)), "{e}");
    let m = e.to_string();
    assert!(m.contains("r1") && m.contains("log") && m.contains("File too large"), "{m}");
    // r1 is up and serves reads.
    assert!(c.client(1).get_text(100, One).unwrap().is_some());
    assert!(c.client(1).status().is_ok());
    // It recovers: a snapshot (one 60 KB cell) starts a fresh log and writes are logged again.
    let t = Instant::now();
    let ok = wait_for(slack(Duration::from_secs(10)), || c.client(0).put(100, "small-again", All).is_ok());
    assert!(ok, "r1 never accepted writes again\n{}", c.logs());
    assert_eq!(c.client(1).get_text(100, One).unwrap().as_deref(), Some("small-again"));
    eprintln!("recovered after {:?}", t.elapsed());
    assert!(c.log(1).contains("cannot write the log") && c.log(1).contains("can be written again"), "{}", c.log(1));
}

#[test]
fn status_shows_storage_of_every_replica() {
    let c = Cluster::start(4, &["--fsync", "never"]);
    c.client(0).put(5, "x", All).unwrap(); // r0, r1, r2
    c.client(0).put(200, "y", All).unwrap(); // r3, r0, r1
    let ok = wait_for(slack(Duration::from_secs(5)), || {
        c.client(0).status().unwrap().replicas.iter().all(|r| r.storage.as_ref().is_some_and(|s| s.fsync == "never" && s.log_bytes > 8))
    });
    assert!(ok, "{:?}", c.client(0).status());
    let out = c.run_client(0, &["status"], "");
    let text = common::stdout(&out);
    assert!(text.contains("FSYNC") && text.contains("LOG") && text.contains("LAST SNAPSHOT"), "{text}");
    assert!(text.contains("never"), "{text}");
}

/// One framed record (`u32` LE length, `u32` LE CRC-32C, body) as the log and the snapshot write them.
fn framed_record(body: &[u8]) -> Vec<u8> {
    let mut out = (body.len() as u32).to_le_bytes().to_vec();
    out.extend_from_slice(&quorumkv::storage::wal::crc32c(body).to_le_bytes());
    out.extend_from_slice(body);
    out
}

/// A data folder of the previous format — a `QKVSNAP1` snapshot and a `QKVLOG01`
/// log after it, every record keyed by `legacy_key` (an integer) with `key` empty —
/// is recovered by a byte-ordered replica: the integers become the decimal keys
/// (key 0 too, which protobuf leaves out of the record), later records win, a
/// tombstone stays a tombstone, a key past 255 is skipped, and the hints (for
/// keys given the same way) are still held and delivered.
#[test]
fn a_version_1_data_folder_with_integer_keys_is_recovered() {
    use prost::Message;
    use quorumkv::proto::{self, log_record::Kind};
    let version = |micros: u64, value: Option<&str>| proto::Version {
        micros,
        node: 7,
        tombstone: value.is_none(),
        value: value.unwrap_or("").as_bytes().to_vec(),
    };
    let cell = |key: u32, micros: u64, value: Option<&str>| proto::CellWrite {
        legacy_key: key,
        key: Vec::new(),
        version: Some(version(micros, value)),
    };
    let hint = |key: u32, value: &str| proto::HintAdd {
        target: "r3".into(),
        legacy_key: key,
        key: Vec::new(),
        version: Some(version(100, Some(value))),
        created_micros: quorumkv::storage::wal::wall_micros(),
    };
    let mut c = Cluster::start(4, &["HINTED-HANDOFF"]);
    c.kill(0);
    let dir = c.data_dir(0);
    fs::remove_dir_all(&dir).unwrap();
    fs::create_dir_all(&dir).unwrap();
    // The snapshot covers logs before 3.
    let snap = proto::Snapshot {
        next_log_seq: 3,
        cells: vec![cell(10, 90, Some("from-the-snapshot")), cell(5, 50, Some("five-old"))],
        hints: vec![hint(130, "hinted-130")],
        taken_micros: 1,
        end: false,
        paxos: Vec::new(),
        txn: Vec::new(),
    };
    let mut data = b"QKVSNAP1".to_vec();
    data.extend(framed_record(&snap.encode_to_vec()));
    fs::write(dir.join("snapshot"), data).unwrap();
    let records = [
        Kind::Cell(cell(5, 100, Some("five"))),
        Kind::Cell(cell(0, 100, Some("zero"))),
        Kind::Cell(cell(255, 100, Some("top"))),
        Kind::Cell(cell(200, 100, Some("old"))),
        Kind::Cell(cell(200, 200, Some("new"))),
        Kind::Cell(cell(6, 100, Some("gone"))),
        Kind::Cell(cell(6, 150, None)),
        Kind::Cell(cell(300, 100, Some("out of range"))),
        Kind::HintAdd(hint(70, "hinted-70")),
        Kind::HintAdd(hint(80, "hinted-80")),
        Kind::HintDone(proto::HintDone { target: "r3".into(), legacy_key: 80, key: Vec::new(), micros: 100, node: 7 }),
    ];
    let mut log = b"QKVLOG01".to_vec();
    for r in records {
        log.extend(framed_record(&proto::LogRecord { kind: Some(r) }.encode_to_vec()));
    }
    fs::write(dir.join("wal-0000000000000003.log"), log).unwrap();

    // r0 alone: what it serves comes from these files.
    for i in 1..4 {
        c.kill(i);
    }
    c.restart(0);
    assert!(c.log(0).contains("recovered 9 cell write(s) and 3 hint record(s); 2 hint(s) held"), "{}", c.log(0));
    let mut r0 = c.client(0);
    for (key, want) in
        [(5u32, Some("five")), (0, Some("zero")), (255, Some("top")), (200, Some("new")), (10, Some("from-the-snapshot")), (6, None)]
    {
        assert_eq!(r0.get_text(key, One).unwrap().as_deref(), want, "key {key}");
    }
    let i = r0.inspect(6).unwrap();
    let v = i.replicas.iter().find(|e| e.name == "r0").and_then(|e| e.version.clone()).expect("r0 holds key 6's tombstone");
    assert!(v.tombstone && v.micros == 150 && v.node == 7, "{v:?}");
    assert_eq!(r0.status().unwrap().replicas[3].hints, 2, "the hints of keys 130 and 70 (80's was delivered)");
    // The folder now records the partitioner its version 1 files imply.
    let record = fs::read_to_string(dir.join("partitioner")).unwrap();
    assert!(record.lines().any(|l| l == "partitioner byte-ordered"), "{record}");
    // Soon after the start, the old files are folded into a snapshot of the current format and a fresh log.
    let files_now = || {
        let mut files: Vec<String> = fs::read_dir(&dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .filter(|f| f != "partitioner" && f != "cluster.meta")
            .collect();
        files.sort();
        files
    };
    assert!(wait_for(slack(Duration::from_secs(5)), || files_now().len() == 2), "{:?}", files_now());
    let files = files_now();
    assert!(files[0] == "snapshot" && files[1].starts_with("wal-") && files[1].as_str() > "wal-0000000000000003.log", "{files:?}");
    assert_eq!(&fs::read(dir.join("snapshot")).unwrap()[..8], b"QKVSNAP4");
    r0.put(7, "written-after", One).unwrap();
    assert!(wait_for(slack(Duration::from_secs(5)), || fs::read(dir.join(&files[1])).unwrap().len() > 8));
    assert_eq!(&fs::read(dir.join(&files[1])).unwrap()[..8], b"QKVLOG06");
    // And that recovers too.
    c.restart(0);
    let mut r0 = c.client(0);
    assert_eq!(r0.get_text(5, One).unwrap().as_deref(), Some("five"));
    assert_eq!(r0.get_text(7, One).unwrap().as_deref(), Some("written-after"));
    // r3 comes back: the hints are delivered under the decimal keys.
    c.restart(3);
    let ok = wait_for(slack(Duration::from_secs(10)), || {
        c.held(0, 70, "r3").as_deref() == Some("hinted-70") && c.held(0, 130, "r3").as_deref() == Some("hinted-130")
    });
    assert!(ok, "r3 did not get the hints of the old log; logs:\n{}", c.logs());
    assert_eq!(c.held(0, 80, "r3"), None, "the delivered hint is not sent again");
}

/// Every file in `dir` with its contents, by name.
fn folder_contents(dir: &std::path::Path) -> Vec<(String, Vec<u8>)> {
    let mut files: Vec<_> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap())
        .map(|e| (e.file_name().to_string_lossy().into_owned(), fs::read(e.path()).unwrap()))
        .collect();
    files.sort();
    files
}

/// A data folder remembers its cluster's partitioner (as Cassandra's system
/// keyspace does): a replica written to under a byte-ordered cluster file
/// refuses to start on the same folder once the file says `partitioner
/// murmur3` — its keys would land in the wrong slots — naming the folder, both
/// partitioners and what to do, and leaves the folder untouched; with its old
/// file it starts again and serves its data.
#[test]
fn a_data_folder_refuses_a_cluster_file_of_another_partitioner() {
    let mut c = Cluster::start_with(1, "rf 1\n", &[]);
    c.client(0).put(5, "written-byte-ordered", One).unwrap();
    c.kill(0);
    let dir = c.data_dir(0);
    let record = fs::read_to_string(dir.join("partitioner")).unwrap();
    assert!(record.lines().any(|l| l == "partitioner byte-ordered"), "{record}");
    let before = folder_contents(&dir);
    let murmur3 = c.dir().join("murmur3.txt");
    fs::write(&murmur3, format!("partitioner murmur3\nrf 1\n{}\n", c.node_lines().join("\n"))).unwrap();
    let port = c.replicas[0].port.to_string();
    let mut argv = vec!["r0".to_string(), port, murmur3.to_string_lossy().into_owned()];
    argv.extend(c.replica_args(0));
    let argv: Vec<&str> = argv.iter().map(String::as_str).collect();
    let (code, err) = common::start_refused(c.dir(), &argv);
    assert_eq!(code, Some(2), "{err}");
    for want in [
        format!("data folder {}", dir.display()),
        "holds the data of a byte-ordered cluster".into(),
        format!("recorded in {}", dir.join("partitioner").display()),
        "the cluster file says `partitioner murmur3`".into(),
        "refusing to start".into(),
        "point --data-dir at an empty folder".into(),
        "restore the old cluster file (`partitioner byte-ordered`)".into(),
    ] {
        assert!(err.contains(&want), "want {want:?} in\n{err}");
    }
    assert_eq!(folder_contents(&dir), before, "the refused start changed the data folder");
    // With the cluster file it was written under, it starts and has its data.
    c.restart(0);
    assert_eq!(c.client(0).get_text(5, One).unwrap().as_deref(), Some("written-byte-ordered"));
}
