//! Anti-entropy end to end: a replica whose data folder was wiped holds every
//! key again through background passes alone (read repair and hinted handoff
//! off, nobody reading), and `repair` does the same at once, with a report.

mod common;

use std::fs;
use std::time::{Duration, Instant};

use common::{Cluster, slack, wait_for};
use quorumkv::cluster::consistency::Consistency::All;

/// How many keys replica `i` holds, as its own `status` says.
fn keys_held(c: &Cluster, i: usize) -> Option<u64> {
    let s = c.client(i).status().ok()?;
    s.replicas.iter().find(|r| r.is_self).and_then(|r| r.storage.as_ref()).map(|st| st.keys)
}

/// Kills replica `i`, removes its data folder, starts it again empty.
fn wipe(c: &mut Cluster, i: usize) {
    c.kill(i);
    fs::remove_dir_all(c.data_dir(i)).unwrap();
    c.restart(i);
    assert_eq!(keys_held(c, i), Some(0), "r{i} starts empty");
}

/// Four murmur3 replicas in mode NONE (no read repair, no hints) with a
/// background pass every second. r2's folder is wiped after 1,500 keys were
/// written at ALL; it holds all of its keys again, with the values written,
/// within a bound, though no client reads any key until it does.
#[test]
fn a_wiped_replica_converges_by_background_anti_entropy_alone() {
    let mut c = Cluster::start_murmur3(4, &["NONE", "--anti-entropy-interval", "1s"]);
    let keys: Vec<String> = (0..1500).map(|i| format!("user:{i}")).collect();
    let mut client = c.client(0);
    for k in &keys {
        client.put(k, format!("v-{k}"), All).unwrap_or_else(|e| panic!("put {k}: {e}"));
    }
    let mine: Vec<&String> = keys.iter().filter(|k| c.replicas_of(1, k.as_str()).iter().any(|n| n == "r2")).collect();
    assert!(mine.len() > 800, "r2 is a replica of {} keys", mine.len());
    wipe(&mut c, 2);
    let started = Instant::now();
    c.wait_all_up();
    let ok = wait_for(slack(Duration::from_secs(60)), || keys_held(&c, 2) == Some(mine.len() as u64));
    let took = started.elapsed();
    assert!(ok, "r2 holds {:?} of its {} keys after {took:?}; logs:\n{}", keys_held(&c, 2), mine.len(), c.logs());
    eprintln!("a wiped replica held all {} of its keys again {:.1} s after its restart (passes every 1 s)", mine.len(), took.as_secs_f64());
    for k in &mine {
        assert_eq!(c.held(0, k.as_str(), "r2"), Some(format!("v-{k}")), "r2's copy of {k}");
    }
}

/// `repair` (one-shot) runs a full pass at once, with background passes off:
/// the wiped replica of a byte-ordered cluster holds every key of its ranges
/// when it returns, and a second `repair` finds nothing to send.
#[test]
fn repair_brings_a_wiped_replica_back_at_once_and_then_finds_nothing() {
    let mut c = Cluster::start(4, &["NONE", "--anti-entropy-interval", "0"]);
    let mut client = c.client(0);
    for k in 0..=255u32 {
        client.put(k, format!("value {k}"), All).unwrap();
    }
    wipe(&mut c, 1);
    c.wait_all_up();
    let mine: Vec<u32> = (0..=255u32).filter(|&k| c.replicas_of(0, k).iter().any(|n| n == "r1")).collect();
    assert_eq!(mine.len(), 192, "r1 holds three quarters of the keys at RF 3 of 4");
    assert_eq!(c.held(0, mine[0], "r1"), None, "nothing repaired r1 before the repair");
    let out = c.run_client(2, &["repair"], "");
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "repair failed: {stdout}\n{}", String::from_utf8_lossy(&out.stderr));
    assert!(stdout.contains("repair pass") && stdout.contains("192 cells"), "{stdout}");
    assert_eq!(keys_held(&c, 1), Some(192));
    for &k in &mine {
        assert_eq!(c.held(0, k, "r1"), Some(format!("value {k}")), "r1's copy of key {k}");
    }
    let again = c.run_client(3, &["repair"], "");
    let stdout = String::from_utf8_lossy(&again.stdout);
    assert!(stdout.contains("0 differed; 0 cells"), "a second repair sends nothing: {stdout}");
}
