//! Membership changes end to end, with real processes: members join
//! (`--join`), one is decommissioned, a dead one is removed (`removenode`),
//! while a client keeps writing at QUORUM; afterwards every acknowledged write
//! is readable, every key is held by exactly the replicas of the final ring,
//! and ownership is balanced.

mod common;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use common::{Cluster, slack, wait_for};
use quorumkv::check;
use quorumkv::client::{Cas, Client, Expect};
use quorumkv::cluster::consistency::Consistency::{Quorum, Serial};
use quorumkv::proto;

/// SERIAL reads and compare-and-sets on four keys through `ports` until
/// `stop`, each recorded in `history` (an error is an unknown outcome).
fn cas_client(id: usize, ports: Vec<u16>, stop: Arc<AtomicBool>, history: Arc<parking_lot::Mutex<check::History<u32>>>) {
    let mut x = id as u64 * 0x9E37_79B9 + 1;
    let mut next = move || {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        x
    };
    let mut client: Option<Client> = None;
    let mut seq = 0;
    while !stop.load(Ordering::Acquire) {
        let c = match &mut client {
            Some(c) => c,
            None => match Client::connect("127.0.0.1", ports[next() as usize % ports.len()], Duration::from_secs(1)) {
                Ok(mut c) => {
                    let _ = c.set_timeout(Some(Duration::from_secs(10)));
                    client.insert(c)
                }
                Err(_) => continue,
            },
        };
        let k = (next() % 4) as u32;
        let key = format!("cas:{k}");
        let op = history.lock().invoke(id, k, check::Call::Read);
        let seen = match c.get(key.as_str(), Serial) {
            Ok(v) => {
                history.lock().complete(op, check::Ret::Read(v.clone()));
                v
            }
            Err(_) => {
                history.lock().unknown(op);
                client = None;
                continue;
            }
        };
        seq += 1;
        let new = format!("{id}-{seq}");
        let (expect, want) = match &seen {
            Some(v) => (Expect::Equals(v.clone().into_boxed_slice()), check::Expect::Value(v.clone())),
            None => (Expect::Absent, check::Expect::Absent),
        };
        let op = history.lock().invoke(id, k, check::Call::Cas { expect: want, new: Some(new.clone().into_bytes()) });
        match c.put_if(key.as_str(), &new, expect) {
            Ok(Cas::Applied(_)) => history.lock().complete(op, check::Ret::Applied),
            Ok(Cas::NotApplied { current }) => history.lock().complete(op, check::Ret::NotApplied { current }),
            Err(_) => {
                history.lock().unknown(op);
                client = None;
            }
        }
    }
}

/// What a writer did to one key: the last value acknowledged, and the values
/// tried after it whose outcome is unknown (any of which may be the final one).
#[derive(Debug, Default, Clone)]
struct KeyLog {
    acked: Option<String>,
    maybe: Vec<String>,
}

/// Writes values to `keys` at QUORUM through `port` until `stop`, round after round.
fn writer(port: u16, keys: Vec<String>, stop: Arc<AtomicBool>) -> BTreeMap<String, KeyLog> {
    let mut log: BTreeMap<String, KeyLog> = keys.iter().map(|k| (k.clone(), KeyLog::default())).collect();
    let mut client = None;
    let mut round = 0u64;
    while !stop.load(Ordering::Acquire) {
        round += 1;
        for k in &keys {
            let value = format!("{k}@{round}");
            let c = match &mut client {
                Some(c) => c,
                None => match Client::connect("127.0.0.1", port, Duration::from_secs(1)) {
                    Ok(mut c) => {
                        let _ = c.set_timeout(Some(Duration::from_secs(10)));
                        client.insert(c)
                    }
                    Err(_) => continue,
                },
            };
            let entry = log.get_mut(k).unwrap();
            match c.put(k.as_str(), &value, Quorum) {
                Ok(_) => *entry = KeyLog { acked: Some(value), maybe: Vec::new() },
                Err(_) => {
                    entry.maybe.push(value);
                    client = None;
                }
            }
        }
    }
    log
}

/// The status `via` reports.
fn status(c: &Cluster, via: usize) -> proto::StatusResult {
    c.client(via).status().expect("status")
}

/// Waits until `via` sees no movement under way and every member in `want` with the state given.
fn wait_members(c: &Cluster, via: usize, want: &[(&str, &str)]) {
    let ok = wait_for(slack(Duration::from_secs(60)), || {
        let Ok(s) = c.client(via).status() else { return false };
        s.movement.is_empty() && want.iter().all(|(name, state)| s.replicas.iter().any(|r| r.name == *name && r.member_state == *state))
    });
    assert!(ok, "members never reached {want:?}: {:?}\n{}", c.client(via).status().map(|s| s.replicas), c.logs());
}

/// Waits until every replica of `live` sees the others of `live` up.
fn wait_up(c: &Cluster, live: &[usize]) {
    let names: Vec<String> = live.iter().map(|&i| c.replicas[i].name.clone()).collect();
    let ok = wait_for(slack(Duration::from_secs(20)), || {
        live.iter().all(|&i| c.client(i).status().is_ok_and(|s| names.iter().all(|n| s.replicas.iter().any(|r| &r.name == n && r.up))))
    });
    assert!(ok, "{names:?} never all saw each other up\n{}", c.logs());
}

/// A murmur3 cluster of four grows to six (two joins), loses one by
/// decommission and one by `kill -9` and `removenode`, and ends with four,
/// while a writer puts 200 keys at QUORUM throughout.
#[test]
fn joins_decommission_and_removenode_lose_no_acknowledged_write() {
    let mut c = Cluster::start_murmur3(4, &[]);
    let keys: Vec<String> = (0..200).map(|i| format!("user:{i}")).collect();
    let stop = Arc::new(AtomicBool::new(false));
    let w = {
        let (port, keys, stop) = (c.replicas[0].port, keys.clone(), stop.clone());
        std::thread::spawn(move || writer(port, keys, stop))
    };
    // SERIAL compare-and-sets through the two members that stay throughout.
    let history = Arc::new(parking_lot::Mutex::new(check::History::new()));
    let cas: Vec<_> = (0..3)
        .map(|id| {
            let (ports, stop, history) = (vec![c.replicas[0].port, c.replicas[3].port], stop.clone(), history.clone());
            std::thread::spawn(move || cas_client(id, ports, stop, history))
        })
        .collect();
    let r4 = c.join("r4", 0);
    wait_members(&c, 0, &[("r4", "NORMAL")]);
    let r5 = c.join("r5", 1);
    wait_members(&c, 0, &[("r4", "NORMAL"), ("r5", "NORMAL")]);
    // Balance after each join (every node within 10 % of the mean share).
    let s = status(&c, 0);
    let owners: Vec<f64> = s.replicas.iter().filter(|r| r.member_state == "NORMAL").map(|r| r.share).collect();
    assert_eq!(owners.len(), 6);
    let mean = 3.0 / 6.0;
    assert!(owners.iter().all(|s| (s / mean - 1.0).abs() < 0.10), "shares after two joins: {owners:?}");

    let out = c.run_client(1, &["decommission"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("decommission"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(wait_for(slack(Duration::from_secs(20)), || !c.replicas[1].running()), "r1 exits after its decommission");
    wait_members(&c, 0, &[("r1", "REMOVED")]);

    c.kill(2);
    // The survivors up as r0 sees them (under load a heartbeat can be late):
    // removenode copies from them.
    wait_up(&c, &[0, 3, r4, r5]);
    assert!(wait_for(slack(Duration::from_secs(15)), || status(&c, 0).replicas.iter().any(|r| r.name == "r2" && !r.up)));
    let out = c.run_client(0, &["removenode", "r2"], "");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success() && text.contains("removenode of r2: done"), "{text}\n{}", String::from_utf8_lossy(&out.stderr));
    wait_members(&c, 0, &[("r2", "REMOVED"), ("r0", "NORMAL"), ("r3", "NORMAL"), ("r4", "NORMAL"), ("r5", "NORMAL")]);

    stop.store(true, Ordering::Release);
    let log = w.join().unwrap();
    for t in cas {
        t.join().unwrap();
    }
    let history = history.lock();
    let applied =
        history.operations().iter().filter(|o| matches!(o.outcome, check::Outcome::Returned { ret: check::Ret::Applied, .. })).count();
    assert!(applied > 10, "the SERIAL clients got {applied} compare-and-sets applied");
    let report = history.check(slack(Duration::from_secs(30)));
    assert!(report.is_linearizable(), "the SERIAL history of {} operations is not linearizable: {:?}", history.len(), report.verdict);
    assert!(log.values().all(|l| l.acked.is_some()), "every key was written at least once");

    let live = [0usize, 3, r4, r5];
    wait_up(&c, &live);
    // Every key on exactly its three replicas in the final ring, all agreeing.
    let names: Vec<String> = live.iter().map(|&i| c.replicas[i].name.clone()).collect();
    let mut held = 0;
    let cas_keys: Vec<String> = (0..4).map(|k| format!("cas:{k}")).collect();
    for k in keys.iter().chain(&cas_keys) {
        let i = c.client(0).inspect(k.as_str()).unwrap();
        assert_eq!(i.replicas.len(), 3, "{k}");
        let versions: Vec<_> = i.replicas.iter().map(|e| e.version.clone()).collect();
        if cas_keys.contains(k) && versions.iter().all(Option::is_none) {
            continue; // no compare-and-set on it applied
        }
        assert!(versions.iter().all(|v| v.is_some() && *v == versions[0]), "{k}: {:?}", i.replicas);
        assert!(i.replicas.iter().all(|e| names.contains(&e.name)), "{k} placed on {:?}", i.replicas);
        held += 3;
    }
    // Every acknowledged write is readable at QUORUM (or a later attempt is);
    // after the copies were compared, since these reads repair.
    let mut client = c.client(3);
    for (k, l) in &log {
        let got = client.get_text(k.as_str(), Quorum).unwrap();
        let ok = got.as_ref() == l.acked.as_ref() || got.as_ref().is_some_and(|g| l.maybe.contains(g));
        assert!(ok, "{k}: read {got:?}, last acknowledged {:?}, unknown after it {:?}", l.acked, l.maybe);
    }
    // No other copies: the keys every node holds add up to three per key.
    let total = || -> u64 {
        live.iter().map(|&i| status(&c, i).replicas.iter().find(|r| r.is_self).and_then(|r| r.storage.as_ref()).map_or(0, |s| s.keys)).sum()
    };
    // (Each replica drops what it no longer holds 10 s after the last movement.)
    assert!(wait_for(slack(Duration::from_secs(30)), || total() == held), "{} copies held, {held} expected", total());
    let s = status(&c, 0);
    let shares: Vec<f64> = s.replicas.iter().filter(|r| r.member_state == "NORMAL").map(|r| r.share).collect();
    assert_eq!(shares.len(), 4);
    let mean = 3.0 / 4.0;
    assert!(shares.iter().all(|s| (s / mean - 1.0).abs() < 0.10), "final shares: {shares:?}");
}

/// A member that joins without tokens (seed 003's proxy) coordinates reads
/// and writes but holds no data; the others' ranges do not change.
#[test]
fn a_proxy_joins_without_tokens_and_holds_nothing() {
    let mut c = Cluster::start(3, &[]);
    let before = status(&c, 0);
    let p = c.join_with("proxy", 1, &["--no-tokens"]);
    wait_members(&c, 0, &[("proxy", "NORMAL")]);
    wait_up(&c, &[0, 1, 2, p]);
    let mut via = c.client(p);
    for k in 0..=255u32 {
        via.put(k, format!("through the proxy {k}"), Quorum).unwrap();
    }
    for k in [0u32, 100, 255] {
        assert_eq!(c.client(2).get_text(k, Quorum).unwrap(), Some(format!("through the proxy {k}")));
        assert!(!c.replicas_of(0, k).iter().any(|n| n == "proxy"), "key {k} is not on the proxy");
    }
    let after = status(&c, p);
    let me = after.replicas.iter().find(|r| r.is_self).unwrap();
    assert_eq!((me.share, me.storage.as_ref().map(|s| s.keys)), (0.0, Some(0)), "the proxy holds nothing");
    for r in before.replicas {
        let now = after.replicas.iter().find(|x| x.name == r.name).unwrap();
        assert_eq!((now.range_start, now.range_end), (r.range_start, r.range_end), "{}'s range is unchanged", r.name);
    }
}

/// A byte-ordered cluster grows too: a join splits the largest range, and
/// the keys of the new member's ranges are on it when it serves them.
#[test]
fn a_byte_ordered_join_splits_the_largest_range_and_copies_its_keys() {
    let mut c = Cluster::start(3, &[]);
    let mut client = c.client(0);
    for k in 0..=255u32 {
        client.put(k, format!("v{k}"), quorumkv::cluster::consistency::Consistency::All).unwrap();
    }
    let r3 = c.join("r3", 2);
    wait_members(&c, 0, &[("r3", "NORMAL")]);
    wait_up(&c, &[0, 1, 2, r3]);
    let s = status(&c, 0);
    let me = s.replicas.iter().find(|r| r.name == "r3").unwrap();
    assert_eq!((me.range_start, me.range_end), (0, 42), "the first half of 0-85, the largest range");
    for k in 0..=255u32 {
        let reps = c.replicas_of(0, k);
        if reps.iter().any(|n| n == "r3") {
            assert_eq!(c.held(0, k, "r3"), Some(format!("v{k}")), "key {k}");
        }
    }
}

/// `--stream-throughput` paces a join's copying: a joiner limited to 1 MiB/s
/// that copies about 2 MiB takes at least as long as that rate allows (a
/// lower bound only, which a slow machine cannot break), and still copies
/// every key of its ranges.
#[test]
fn a_join_is_paced_by_stream_throughput() {
    let mut c = Cluster::start_murmur3(3, &[]);
    let mut client = c.client(0);
    let value = "x".repeat(10_000);
    for k in 0..300 {
        client.put(format!("big{k}"), &value, quorumkv::cluster::consistency::Consistency::All).unwrap();
    }
    let j = c.join_with("r3", 0, &["--stream-throughput", "1"]);
    wait_members(&c, 0, &[("r3", "NORMAL")]);
    // The epoch that ends the join is seen before the joiner's status says so: poll (bounded).
    let status = || c.client(j).membership(proto::membership_request::Op::Status, "", false).expect("movement status");
    let until = std::time::Instant::now() + std::time::Duration::from_secs(30);
    let mut m = status();
    while m.running && std::time::Instant::now() < until {
        std::thread::sleep(std::time::Duration::from_millis(20));
        m = status();
    }
    assert!(m.error.is_empty() && !m.running && m.bytes > 1 << 20, "the join copied over 1 MiB: {m:?}");
    let floor = m.bytes as f64 / f64::from(1 << 20);
    assert!(m.elapsed_secs >= floor, "{} bytes copied in {:.2} s: faster than 1 MiB/s", m.bytes, m.elapsed_secs);
    for k in 0..300 {
        let key = format!("big{k}");
        if c.replicas_of(0, key.as_str()).iter().any(|n| n == "r3") {
            assert_eq!(c.held(0, key.as_str(), "r3").map(|v| v.len()), Some(10_000), "key {key}");
        }
    }
}
