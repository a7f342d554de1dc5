//! `token`, `ring` and `scan` (issue 12) against real replica processes:
//! a scan in pages returns every key exactly once, also while writers add
//! and overwrite keys, never a deleted key, and goes on with a replica down;
//! `token` prints Cassandra's token; `ring` names each node's share and keys.

mod common;

use std::collections::{BTreeSet, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Duration;

use common::{Cluster, slack, stderr, stdout, under_tsan, wait_for};
use quorumkv::client::Client;
use quorumkv::cluster::consistency::Consistency::{All, Quorum};
use quorumkv::error::Error;

/// Keys the bigger tests write (fewer under ThreadSanitizer, which is many times slower).
fn many() -> usize {
    if under_tsan() { 300 } else { 3000 }
}

/// Writes `keys` through four clients at once (one per coordinator), at ALL.
fn put_all(c: &Cluster, keys: &[Vec<u8>]) {
    std::thread::scope(|s| {
        for (t, chunk) in keys.chunks(keys.len().div_ceil(4).max(1)).enumerate() {
            let mut client = c.client(t % c.replicas.len());
            s.spawn(move || {
                for k in chunk {
                    client.put(k, b"v0", All).unwrap();
                }
            });
        }
    });
}

/// Every page from the start, `count` keys at a time, each page through the next
/// coordinator in turn (a cursor needs no state on the coordinator that made it).
/// Returns the keys in the order they came and how many pages it took.
fn scan_all(c: &Cluster, count: u32) -> (Vec<Vec<u8>>, usize) {
    let mut clients: Vec<Client> = (0..c.replicas.len()).map(|i| c.client(i)).collect();
    let (mut keys, mut cursor, mut pages) = (Vec::new(), Vec::new(), 0);
    loop {
        let n = clients.len();
        let page = clients[pages % n].scan(&cursor, count).unwrap();
        pages += 1;
        assert!(page.keys.len() <= count as usize, "a page of {} keys for a count of {count}", page.keys.len());
        assert!(page.unanswered.is_empty(), "every replica is up: {:?}", page.unanswered);
        keys.extend(page.keys);
        if page.done {
            assert!(page.cursor.is_empty(), "the last page has no cursor");
            return (keys, pages);
        }
        assert!(!page.cursor.is_empty() && page.cursor != cursor, "page {pages} did not move on");
        cursor = page.cursor;
        assert!(pages < 1_000_000, "the scan does not end");
    }
}

fn text_keys(prefix: &str, n: usize) -> Vec<Vec<u8>> {
    (0..n).map(|i| format!("{prefix}:{i}").into_bytes()).collect()
}

/// Checks that `got` has no key twice and returns it as a set.
fn once(got: &[Vec<u8>]) -> BTreeSet<Vec<u8>> {
    let mut seen = HashSet::new();
    for k in got {
        assert!(seen.insert(k), "key {} came twice", String::from_utf8_lossy(k));
    }
    got.iter().cloned().collect()
}

#[test]
fn scan_in_pages_returns_every_key_exactly_once() {
    let c = Cluster::start_murmur3(4, &["--in-memory"]);
    let mut keys = text_keys("user", many());
    keys.push(vec![0xff, 0x00, b'k']); // not UTF-8: keys are bytes
    put_all(&c, &keys);
    let want: BTreeSet<Vec<u8>> = keys.iter().cloned().collect();
    for count in [1_000, 97, 7] {
        let (got, pages) = scan_all(&c, count);
        assert_eq!(once(&got), want, "count {count}");
        assert!(pages >= keys.len() / count as usize, "count {count}: {pages} pages");
    }
    // Redis's default page: 10 keys looked at.
    let page = c.client(2).scan(&[], 0).unwrap();
    assert_eq!(page.keys.len(), 10, "{page:?}");
}

#[test]
fn scan_while_writers_add_and_overwrite_keys() {
    let c = Cluster::start_murmur3(4, &["--in-memory"]);
    let base = text_keys("base", many());
    put_all(&c, &base);
    let stop = Arc::new(AtomicBool::new(false));
    let writes = Arc::new(AtomicU64::new(0));
    let (got, during) = std::thread::scope(|s| {
        for t in 0..2 {
            let (stop, writes, base) = (stop.clone(), writes.clone(), &base);
            let mut client = c.client(t + 2);
            s.spawn(move || {
                let mut i = 0usize;
                while !stop.load(Ordering::Relaxed) {
                    client.put(format!("new:{t}:{i}"), b"fresh", Quorum).unwrap();
                    client.put(&base[(i * 7 + t) % base.len()], format!("v{i}"), Quorum).unwrap();
                    writes.fetch_add(2, Ordering::Relaxed);
                    i += 1;
                }
            });
        }
        assert!(wait_for(slack(Duration::from_secs(10)), || writes.load(Ordering::Relaxed) >= 50), "the writers write");
        let before = writes.load(Ordering::Relaxed);
        let (got, _) = scan_all(&c, 25);
        let during = writes.load(Ordering::Relaxed) - before;
        stop.store(true, Ordering::Relaxed);
        (got, during)
    });
    assert!(during >= 10, "only {during} writes happened during the scan");
    let got = once(&got);
    let missing: Vec<String> = base.iter().filter(|k| !got.contains(*k)).map(|k| String::from_utf8_lossy(k).into_owned()).collect();
    assert!(missing.is_empty(), "{} keys that existed for the whole scan were not returned: {missing:?}", missing.len());
    assert!(got.iter().all(|k| k.starts_with(b"base:") || k.starts_with(b"new:")), "only keys that were written");
}

#[test]
fn deleted_keys_are_not_returned_and_one_shot_walks_every_page() {
    let c = Cluster::start_murmur3(4, &["--in-memory"]);
    let mut keys = text_keys("doc", many() / 3);
    keys.push(vec![b'b', 0xfe, 0xff]);
    put_all(&c, &keys);
    let mut client = c.client(1);
    let mut want = BTreeSet::new();
    for (i, k) in keys.iter().enumerate() {
        if i % 3 == 0 {
            client.delete(k, Quorum).unwrap();
        } else {
            want.insert(k.clone());
        }
    }
    let (got, _) = scan_all(&c, 50);
    assert_eq!(once(&got), want);
    // One-shot: every page, each key's bytes and a newline; a small page size makes many pages.
    let out = c.run_client(3, &["scan", "0", "17"], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<Vec<u8>> = out.stdout.split(|&b| b == b'\n').filter(|l| !l.is_empty()).map(<[u8]>::to_vec).collect();
    assert_eq!(once(&lines), want);
    let all = c.run_client(0, &["scan"], "");
    assert_eq!(all.stdout, out.stdout, "the default page size walks the same keys in the same order");
}

#[test]
fn console_scan_prints_keys_then_the_cursor_to_go_on_with() {
    let c = Cluster::start_murmur3(3, &["--in-memory"]);
    put_all(&c, &text_keys("k", 12));
    // Page by page through the console, feeding each printed cursor back. A page
    // visits at most 64 slots, so pages of this sparse cluster hold 0 to 5 keys.
    let (mut keys, mut cursor, mut pages) = (Vec::new(), "0".to_string(), 0);
    loop {
        let out = c.run_client(pages % 3, &[], &format!("scan {cursor} 5\n"));
        let text = stdout(&out);
        let mut lines: Vec<&str> = text.lines().collect();
        let last = lines.pop().unwrap_or_else(|| panic!("no output: {}", stderr(&out)));
        assert!(lines.len() <= 5 && lines.iter().all(|l| l.starts_with("k:")), "{text}");
        keys.extend(lines.iter().map(|l| l.to_string()));
        pages += 1;
        if last == "(scan complete)" {
            break;
        }
        cursor = last.strip_prefix("next cursor: ").unwrap_or_else(|| panic!("{text}")).to_string();
        assert!(cursor.len() > 2 && cursor.bytes().all(|b| b.is_ascii_hexdigit()), "{text}");
        assert!(pages < 100, "the console scan does not end");
    }
    let set: BTreeSet<&String> = keys.iter().collect();
    assert_eq!((keys.len(), set.len()), (12, 12), "{keys:?}");
    assert!(pages >= 4, "256 slots, at most 64 a page: {pages} pages");
    let errs = stderr(&c.run_client(1, &[], "scan 0 twice\nscan 0f00\n"));
    assert!(errs.contains("error: the count is a whole number"), "{errs}");
    assert!(errs.contains("error: Invalid request: scan cursor has format 15, not 1"), "{errs}");
    let bad = c.run_client(0, &["scan", "0", "20000"], "");
    assert_eq!(bad.status.code(), Some(2));
}

#[test]
fn scan_goes_on_with_a_replica_down_and_refuses_when_a_range_is_gone() {
    let mut c = Cluster::start_murmur3(4, &["--in-memory"]);
    let keys = text_keys("kept", many() / 3);
    put_all(&c, &keys);
    c.kill(3);
    c.wait_seen(0, 3, false);
    let mut client = c.client(0);
    let (mut got, mut cursor, mut silent) = (Vec::new(), Vec::new(), BTreeSet::new());
    loop {
        let page = client.scan(&cursor, 100).unwrap();
        got.extend(page.keys);
        silent.extend(page.unanswered);
        if page.done {
            break;
        }
        cursor = page.cursor;
    }
    assert_eq!(once(&got), keys.iter().cloned().collect(), "every key still has a replica up (RF 3)");
    assert_eq!(silent, BTreeSet::from(["r3".to_string()]));
    // With three of four nodes down, some token range has no replica left.
    c.kill(2);
    c.kill(1);
    c.wait_seen(0, 1, false);
    c.wait_seen(0, 2, false);
    match client.scan(&[], 1000) {
        Err(Error::Unavailable(m)) => assert!(m.contains("scan of slot") && m.contains("r1: down"), "{m}"),
        other => panic!("expected Unavailable, got {other:?}"),
    }
    let out = c.run_client(0, &["scan"], "");
    assert_eq!(out.status.code(), Some(3), "the store refused: {}", stderr(&out));
}

#[test]
fn token_prints_the_cassandra_token_then_the_slot_and_the_replicas() {
    let c = Cluster::start_murmur3(4, &["--in-memory"]);
    let out = c.run_client(1, &["token", "123"], "");
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let text = stdout(&out);
    let lines: Vec<&str> = text.lines().collect();
    assert_eq!(lines[0], "-7468325962851647638", "Cassandra's token of \"123\"");
    assert_eq!(lines[1], quorumkv::cluster::token::slot(-7468325962851647638).to_string());
    let t = c.client(3).token("123").unwrap();
    assert_eq!(lines[2..], t.replicas.iter().map(String::as_str).collect::<Vec<_>>()[..], "{text}");
    assert_eq!(lines[2..].iter().collect::<BTreeSet<_>>().len(), 3, "three distinct replicas: {text}");
    let console = stdout(&c.run_client(0, &[], "token 123\n"));
    assert!(console.starts_with("token    -7468325962851647638\nslot     "), "{console}");
    assert!(console.contains(&format!("replicas {} (owner first)", t.replicas.join(", "))), "{console}");
    let empty = c.run_client(0, &["token", ""], "");
    assert_eq!(empty.status.code(), Some(2));

    let b = Cluster::start(4, &["--in-memory"]);
    let out = b.run_client(0, &["token", "070"], "");
    assert_eq!(stdout(&out), "70\n70\nr1\nr2\nr3\n", "byte-ordered: the key is its token and its slot");
    let bad = b.run_client(0, &["token", "256"], "");
    assert_eq!(bad.status.code(), Some(2));
    assert!(stderr(&bad).contains("key 256 is out of range"), "{}", stderr(&bad));
}

#[test]
fn ring_names_each_node_with_its_share_and_keys() {
    let c = Cluster::start_murmur3(4, &["--in-memory"]);
    let keys = text_keys("ring", 400);
    put_all(&c, &keys);
    // Key counts travel with the heartbeats: poll until every node reports its part (RF 3 of 400 keys).
    let mut text = String::new();
    let counted = wait_for(slack(Duration::from_secs(10)), || {
        text = stdout(&c.run_client(0, &["ring"], ""));
        let rows: Vec<Vec<&str>> =
            text.lines().filter(|l| l.starts_with('r') && !l.starts_with("ring")).map(|l| l.split_whitespace().collect()).collect();
        rows.len() == 4 && rows.iter().map(|r| r[3].parse::<usize>().unwrap_or(0)).sum::<usize>() == 3 * keys.len()
    });
    assert!(counted, "{text}");
    assert!(text.starts_with("ring of 4 nodes (murmur3, RF 3, epoch "), "{text}");
    for (i, line) in text.lines().filter(|l| l.starts_with('r') && !l.starts_with("ring")).enumerate() {
        let cols: Vec<&str> = line.split_whitespace().collect();
        assert_eq!((cols[0], cols[1], cols[2]), (format!("r{i}").as_str(), "up", "75.0%"), "{text}");
        assert!(cols[3].parse::<usize>().unwrap() > keys.len() / 2, "{text}");
        assert!(line.contains("16: ") && line.ends_with(" …"), "16 vnodes each, the first few shown: {text}");
    }
    let tokens = stdout(&c.run_client(2, &["ring", "tokens"], ""));
    let listed: Vec<i64> = tokens.lines().skip(2).map(|l| l.split_whitespace().next().unwrap().parse().unwrap()).collect();
    assert_eq!(listed.len(), 64, "{tokens}");
    assert!(listed.windows(2).all(|w| w[0] < w[1]), "ring order: {tokens}");

    let b = Cluster::start(4, &["--in-memory"]);
    let text = stdout(&b.run_client(0, &["ring"], ""));
    assert!(text.lines().any(|l| l.starts_with("r1 ") && l.contains("75.0%") && l.ends_with("64-127")), "{text}");
}
