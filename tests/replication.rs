//! Replication end to end: coordinators, consistency levels, hinted handoff,
//! read repair and monotonic quorum reads, on real replica processes.
//!
//! With four replicas `r0..r3` and RF 3, key 70 lives on r1, r2, r3 (r0 is
//! not a replica of it) and key 5 on r0, r1, r2.

mod common;

use std::collections::HashMap;
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use common::{Cluster, slack, wait_for};
use quorumkv::Error;
use quorumkv::cluster::consistency::Consistency::{All, One, Quorum};
use quorumkv::proto;

#[test]
fn quorum_put_is_read_back_through_every_coordinator() {
    let c = Cluster::start(4, &[]);
    for (key, via) in [(70u32, 0usize), (5, 3), (200, 2), (128, 1)] {
        let value = format!("value-{key}-via-{via}");
        let w = c.client(via).put(key, &value, Quorum).unwrap();
        assert!(w.acks >= 2);
        for reader in 0..4 {
            assert_eq!(c.client(reader).get_text(key, Quorum).unwrap().as_deref(), Some(value.as_str()), "key {key} read via r{reader}");
        }
    }
    // r0 is not a replica of key 70: it coordinated, but holds nothing.
    let i = c.client(0).inspect(70).unwrap();
    let names: Vec<&str> = i.replicas.iter().map(|e| e.name.as_str()).collect();
    assert_eq!(names, ["r1", "r2", "r3"]);
    assert!(i.replicas.iter().all(|e| e.version.as_ref().is_some_and(|v| v.value == b"value-70-via-0")));
}

#[test]
fn one_down_quorum_works_two_down_unavailable_and_all_needs_three() {
    let mut c = Cluster::start(4, &[]);
    c.kill(3); // key 70 on r1, r2, r3
    c.wait_seen(0, 3, false);
    c.client(0).put(70, "with-one-down", Quorum).unwrap();
    assert_eq!(c.client(0).get_text(70, Quorum).unwrap().as_deref(), Some("with-one-down"));
    match c.client(0).put(70, "all", All) {
        Err(Error::Unavailable(m)) => assert_eq!(m, "need 3 of 3 replicas for key 70, 2 alive"),
        other => panic!("ALL with a replica down must be Unavailable, got {other:?}"),
    }
    match c.client(0).get_text(70, All) {
        Err(Error::Unavailable(_)) => {}
        other => panic!("ALL read with a replica down must be Unavailable, got {other:?}"),
    }

    c.kill(2);
    c.wait_seen(0, 2, false);
    match c.client(0).put(70, "must-not-land", Quorum) {
        Err(Error::Unavailable(m)) => assert_eq!(m, "need 2 of 3 replicas for key 70, 1 alive"),
        other => panic!("QUORUM with two replicas down must be Unavailable, got {other:?}"),
    }
    // Nothing was written: r1, the one live replica, still holds the earlier value.
    assert_eq!(c.held(1, 70, "r1").as_deref(), Some("with-one-down"));
    // The console says the same with exit status 3.
    let out = c.run_client(0, &["-c", "quorum", "put", "70", "nope"], "");
    assert_eq!(out.status.code(), Some(3), "{}", common::stderr(&out));
    assert!(common::stderr(&out).starts_with("error: Unavailable: need 2 of 3 replicas for key 70, 1 alive"));
    assert_eq!(c.held(1, 70, "r1").as_deref(), Some("with-one-down"));
    // ONE still works with one live replica.
    c.client(0).put(70, "one-is-enough", One).unwrap();

    c.restart(2);
    c.restart(3);
    c.wait_all_up();
    c.client(0).put(70, "all-three", All).unwrap();
    for name in ["r1", "r2", "r3"] {
        assert_eq!(c.held(0, 70, name).as_deref(), Some("all-three"));
    }
}

#[test]
fn hinted_handoff_delivers_missed_writes_after_restart() {
    let mut c = Cluster::start(4, &["HINTED-HANDOFF"]);
    c.kill(2); // replica of keys 0-191 (r0's, r1's and r2's ranges)
    c.wait_seen(0, 2, false);
    c.wait_seen(1, 2, false);
    c.wait_seen(3, 2, false);
    let mut expected = HashMap::new();
    for (n, key) in [3u32, 60, 64, 100, 130, 190, 5, 70].into_iter().enumerate() {
        let via = n % 4;
        let via = if via == 2 { 0 } else { via };
        let value = format!("missed-{key}-{n}");
        c.client(via).put(key, &value, Quorum).unwrap();
        expected.insert(key, value);
    }
    // The coordinators hold hints for r2.
    let hints: u64 = [0, 1, 3].iter().map(|&i| c.client(i).status().unwrap().replicas[2].hints).sum();
    assert!(hints >= expected.len() as u64, "expected a hint per missed key, got {hints}");

    let restarted = Instant::now();
    c.restart(2);
    let ok = wait_for(Duration::from_secs(10), || expected.iter().all(|(&k, v)| c.held(2, k, "r2").as_deref() == Some(v)));
    let missing: Vec<u32> = expected.iter().filter(|(k, v)| c.held(2, **k, "r2").as_deref() != Some(v)).map(|(k, _)| *k).collect();
    assert!(ok, "r2 still misses keys {missing:?} {:?} after restart; logs:\n{}", restarted.elapsed(), c.logs());
    // Hints are removed once delivered.
    assert!(wait_for(slack(Duration::from_secs(5)), || [0, 1, 3].iter().all(|&i| c.client(i).status().unwrap().replicas[2].hints == 0)));
}

#[test]
fn read_repair_fixes_a_stale_replica_after_one_read_at_one() {
    let mut c = Cluster::start(4, &["READ-REPAIR"]);
    c.kill(2);
    c.wait_seen(0, 2, false);
    c.wait_seen(1, 2, false);
    c.wait_seen(3, 2, false);
    // Keys whose replicas include r2, each to be read through a different coordinator.
    let cases = [(10u32, 0usize), (70, 1), (150, 3), (20, 2), (100, 2)];
    for (key, _) in cases {
        c.client(0).put(key, format!("fresh-{key}"), Quorum).unwrap();
    }
    for i in [0, 1, 3] {
        assert_eq!(c.client(i).status().unwrap().replicas[2].hints, 0, "READ-REPAIR mode keeps no hints");
    }
    c.restart(2);
    c.wait_all_up();
    for (key, via) in cases {
        assert_eq!(c.held(0, key, "r2"), None, "r2 must start stale for key {key}");
        // One read at ONE through `via` (r2 itself for some keys: its own stale copy answers first).
        let _ = c.client(via).get_text(key, One).unwrap();
        let want = format!("fresh-{key}");
        let ok = wait_for(slack(Duration::from_secs(2)), || c.held(0, key, "r2").as_deref() == Some(want.as_str()));
        assert!(ok, "r2 not repaired for key {key} within 2 s of a read via r{via}; logs:\n{}", c.logs());
    }
}

/// A QUORUM read coordinated by a stale replica: its own (older) copy answers
/// first, yet the newest version among the replies is returned, and the stale
/// copy is repaired. (That the repair happens *before* the answer is what
/// `quorum_reads_are_monotonic` checks: without it that test fails.)
#[test]
fn quorum_read_through_a_stale_replica_returns_the_newest_value() {
    let mut c = Cluster::start(4, &["READ-REPAIR"]);
    c.kill(1); // key 5 on r0, r1, r2
    c.wait_seen(0, 1, false);
    c.client(0).put(5, "new", Quorum).unwrap();
    c.restart(1);
    c.wait_all_up();
    assert_eq!(c.held(0, 5, "r1"), None);
    assert_eq!(c.client(1).get_text(5, Quorum).unwrap().as_deref(), Some("new"));
    assert!(wait_for(slack(Duration::from_secs(2)), || c.held(0, 5, "r1").as_deref() == Some("new")));
}

/// One writer writes increasing numbers to a key at ONE through changing coordinators
/// while a replica flaps, so replicas diverge; readers at QUORUM through every
/// coordinator must never see the number go down once some read returned it.
#[test]
fn quorum_reads_are_monotonic() {
    let mut c = Cluster::start(4, &[]);
    let key = 70u32;
    c.client(1).put(key, "0", All).unwrap();
    let ports: Vec<u16> = c.replicas.iter().map(|r| r.port).collect();
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    // (start, end, value) of every successful read.
    let reads: Arc<Mutex<Vec<(Instant, Instant, u64)>>> = Arc::default();
    let barrier = Arc::new(Barrier::new(5));
    let mut threads = Vec::new();
    {
        let (stop, barrier, ports) = (stop.clone(), barrier.clone(), ports.clone());
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            let mut n = 1u64;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                let port = ports[(n as usize) % ports.len()];
                if let Ok(mut cl) = quorumkv::client::Client::connect("127.0.0.1", port, Duration::from_millis(500)) {
                    let _ = cl.set_timeout(Some(Duration::from_secs(5)));
                    let _ = cl.put(key, n.to_string(), One);
                }
                n += 1;
            }
        }));
    }
    for r in 0..4usize {
        let (stop, barrier, ports, reads) = (stop.clone(), barrier.clone(), ports.clone(), reads.clone());
        threads.push(std::thread::spawn(move || {
            barrier.wait();
            let mut i = r;
            while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                i += 1;
                let Ok(mut cl) = quorumkv::client::Client::connect("127.0.0.1", ports[i % ports.len()], Duration::from_millis(500)) else {
                    continue;
                };
                let _ = cl.set_timeout(Some(Duration::from_secs(5)));
                let start = Instant::now();
                if let Ok(Some(v)) = cl.get_text(key, Quorum) {
                    reads.lock().unwrap().push((start, Instant::now(), v.parse().unwrap()));
                }
            }
        }));
    }
    // Flap r3 (a replica of key 70) twice while the load runs.
    for _ in 0..2 {
        std::thread::sleep(slack(Duration::from_millis(700)));
        c.kill(3);
        std::thread::sleep(slack(Duration::from_millis(700)));
        c.restart(3);
    }
    std::thread::sleep(slack(Duration::from_millis(700)));
    stop.store(true, std::sync::atomic::Ordering::Relaxed);
    for t in threads {
        t.join().unwrap();
    }
    let mut reads = reads.lock().unwrap().clone();
    assert!(reads.len() > 50, "too few reads completed: {}", reads.len());
    reads.sort_by_key(|r| r.1);
    // For each read, the largest value returned by any read that ended before it started.
    let mut violations = Vec::new();
    let mut max_done: Vec<(Instant, u64)> = Vec::new(); // (end, running max)
    let mut best = 0;
    for &(_, end, v) in &reads {
        best = best.max(v);
        max_done.push((end, best));
    }
    for &(start, _, v) in &reads {
        let idx = max_done.partition_point(|(end, _)| *end < start);
        if idx > 0 && max_done[idx - 1].1 > v {
            violations.push((v, max_done[idx - 1].1));
        }
    }
    assert!(
        violations.is_empty(),
        "{} non-monotonic reads of {}, e.g. {:?}",
        violations.len(),
        reads.len(),
        &violations[..violations.len().min(5)]
    );
}

#[test]
fn deletes_are_tombstones_that_win_over_older_values() {
    let c = Cluster::start(4, &[]);
    c.client(0).put(200, "here", Quorum).unwrap();
    c.client(1).delete(200, Quorum).unwrap();
    for i in 0..4 {
        assert_eq!(c.client(i).get_text(200, Quorum).unwrap(), None);
    }
    let i = c.client(2).inspect(200).unwrap();
    assert!(i.replicas.iter().filter(|e| e.version.as_ref().is_some_and(|v| v.tombstone)).count() >= 2);
    c.client(3).put(200, "back", One).unwrap();
    assert_eq!(c.client(3).get_text(200, One).unwrap().as_deref(), Some("back"));
}

#[test]
fn inspect_shows_unreachable_replicas_and_status_shows_ranges() {
    let mut c = Cluster::start(4, &[]);
    let s: proto::StatusResult = c.client(0).status().unwrap();
    let ranges: Vec<(u32, u32)> = s.replicas.iter().map(|r| (r.range_start, r.range_end)).collect();
    assert_eq!(ranges, [(0, 63), (64, 127), (128, 191), (192, 255)]);
    assert!(s.replicas[0].is_self && s.replicas.iter().all(|r| r.up));
    c.kill(3);
    c.wait_seen(0, 3, false);
    let out = c.run_client(0, &["inspect", "70"], "");
    let text = common::stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines.len(), 3, "{text}");
    assert!(lines[0].starts_with("r1") && lines[1].starts_with("r2") && lines[2].starts_with("r3"));
    assert!(lines[2].contains("unreachable"), "{text}");
    assert!(lines[0].contains("none"), "{text}");
}

/// A replica that hangs (SIGSTOP: its sockets stay open, nothing answers) must
/// not delay QUORUM answers, and the write it misses is hinted once it times out.
#[test]
fn a_hung_replica_never_delays_the_answer_and_gets_a_hint() {
    // The request timeout is well above what a QUORUM answer may take here.
    let timeout = slack(Duration::from_millis(1500));
    let c = Cluster::start(4, &["--down-after", "30s", "--timeout", &format!("{}ms", timeout.as_millis())]);
    c.pause(3); // key 70 on r1, r2, r3
    let t = Instant::now();
    c.client(0).put(70, "despite-r3", Quorum).unwrap();
    assert_eq!(c.client(1).get_text(70, Quorum).unwrap().as_deref(), Some("despite-r3"));
    let took = t.elapsed();
    assert!(took < timeout / 2, "QUORUM waited on the hung replica: {took:?}");
    // r3's ack never comes: after the timeout r0 keeps a hint for it.
    let ok = wait_for(slack(Duration::from_secs(5)), || c.client(0).status().unwrap().replicas[3].hints == 1);
    assert!(
        ok,
        "r0 holds hints {:?} (one per replica), {:?} after the put",
        c.client(0).status().unwrap().replicas.iter().map(|r| r.hints).collect::<Vec<_>>(),
        t.elapsed()
    );
    c.resume(3);
    // Once r3 answers again the hint is delivered.
    assert!(wait_for(slack(Duration::from_secs(10)), || c.held(0, 70, "r3").as_deref() == Some("despite-r3")), "{}", c.logs());
}

#[test]
fn too_few_acks_in_time_is_a_timeout() {
    // Peers are only marked down after 10 s, so the coordinator sends and waits.
    let c = Cluster::start(4, &["--down-after", "10s", "--timeout", "300ms"]);
    c.pause(2);
    c.pause(3); // key 70 on r1, r2, r3: only r1 answers
    let out = c.run_client(1, &["-c", "quorum", "put", "70", "late"], "");
    assert_eq!(out.status.code(), Some(3));
    assert_eq!(common::stderr(&out).trim(), "error: Timeout: 1 of 2 acks for key 70; the write may or may not have been applied");
    match c.client(0).get_text(70, Quorum) {
        Err(Error::Timeout(m)) => assert_eq!(m, "1 of 2 replies for key 70"),
        other => panic!("expected a read timeout, got {other:?}"),
    }
    c.resume(2);
    c.resume(3);
}

/// A murmur3 cluster: text and binary keys and values, written and read through
/// every coordinator at every level, land on the replicas the token ring names.
#[test]
fn murmur3_cluster_serves_string_and_binary_keys_everywhere() {
    let c = Cluster::start_murmur3(4, &[]);
    let keys: Vec<Vec<u8>> = vec![b"user:42".to_vec(), "kremówki".as_bytes().to_vec(), vec![0xff, 0x00, 0x80, b'k'], vec![b'x'; 1024]];
    for (n, key) in keys.iter().enumerate() {
        for (via, level) in [(0, One), (1, Quorum), (2, All), (3, Quorum)] {
            let value: Vec<u8> = [key.as_slice(), &[0xfe, n as u8, via as u8]].concat();
            c.client(via).put(key, &value, level).unwrap();
            for reader in 0..4 {
                assert_eq!(c.client(reader).get(key, All).unwrap().as_deref(), Some(value.as_slice()), "key {n} via r{reader}");
            }
        }
        // Exactly RF replicas hold it, and they agree.
        let i = c.client(0).inspect(key).unwrap();
        assert_eq!(i.replicas.len(), 3);
        assert!(i.replicas.iter().all(|e| e.reachable && e.version.is_some()), "{i:?}");
    }
    // Too long, empty: refused with a reason, nothing written.
    let err = c.client(0).put(vec![b'y'; 1025], "v", Quorum).unwrap_err().to_string();
    assert!(err.contains("key of 1025 bytes exceeds the limit of 1024 bytes"), "{err}");
    let err = c.client(0).put("", "v", Quorum).unwrap_err().to_string();
    assert!(err.contains("the key is empty"), "{err}");
    // A byte-ordered cluster refuses string keys and says how to get them.
    let b = Cluster::start(3, &[]);
    let err = b.client(0).put("user:42", "v", Quorum).unwrap_err().to_string();
    assert!(err.contains("byte-ordered") && err.contains("partitioner murmur3"), "{err}");
}
