//! Murmur3 clusters end to end: hinted handoff and read repair of string and
//! binary keys, replicas whose cluster files differ refusing each other at the
//! handshake, cluster files or arguments refused at start, and `display` of
//! replicas that differ in many keys.
//!
//! The hinted-handoff and read-repair clusters have four replicas `r0..r3`, 16
//! tokens each and RF 3: a key lives on three of the four, as its token says,
//! so the tests ask `inspect` which ones rather than assume.

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::{Cluster, MURMUR3, TempDir, slack, start_refused, wait_for};
use quorumkv::cluster::consistency::Consistency::{All, Quorum};

/// Keys of every shape a murmur3 cluster takes: text, UTF-8 beyond ASCII, binary
/// with zero bytes and bytes that are not UTF-8, one byte, and the longest allowed.
fn string_keys(n: usize) -> Vec<Vec<u8>> {
    (0..n)
        .map(|i| match i % 5 {
            0 => format!("user:{i}").into_bytes(),
            1 => format!("kremówki-{i}-żółć").into_bytes(),
            2 => vec![0xff, i as u8, 0x00, b'k', 0x80],
            3 if i < 5 => vec![b'!'],
            3 => format!("order/{i}/line/{}", i * 7).into_bytes(),
            _ => [vec![b'L'; 1020], (i as u32).to_be_bytes().to_vec()].concat(),
        })
        .collect()
}

/// A value that is not UTF-8 either, unique per key.
fn value_for(key: &[u8], tag: &str) -> Vec<u8> {
    [tag.as_bytes(), &[0xfe, 0x00], &key[..key.len().min(40)]].concat()
}

/// The keys (of `keys`) that `name` is a replica of, as `inspect` says.
fn keys_on(c: &Cluster, keys: &[Vec<u8>], name: &str) -> Vec<Vec<u8>> {
    keys.iter().filter(|k| c.replicas_of(0, k).iter().any(|n| n == name)).cloned().collect()
}

/// A replica down while string keys are written at QUORUM receives them by hinted
/// handoff once it is back: `inspect` finds every value on it, though no client read
/// any of those keys (and in HINTED-HANDOFF mode nothing else could have repaired it).
#[test]
fn hinted_handoff_delivers_string_keys_to_a_restarted_replica() {
    let mut c = Cluster::start_murmur3(4, &["HINTED-HANDOFF"]);
    let keys = string_keys(60);
    let missed = keys_on(&c, &keys, "r2");
    assert!(missed.len() >= 30, "r2 is a replica of only {} of 60 keys", missed.len());
    c.kill(2);
    for i in [0, 1, 3] {
        c.wait_seen(i, 2, false);
    }
    for (n, key) in keys.iter().enumerate() {
        let via = [0, 1, 3][n % 3];
        c.client(via).put(key, value_for(key, "hinted"), Quorum).unwrap_or_else(|e| panic!("put key {n} via r{via}: {e}"));
    }
    // One hint per key of r2's, kept by the coordinators, and none for the other keys.
    let hints = |c: &Cluster| [0, 1, 3].iter().map(|&i| c.client(i).status().unwrap().replicas[2].hints).sum::<u64>();
    let ok = wait_for(slack(Duration::from_secs(5)), || hints(&c) == missed.len() as u64);
    assert!(ok, "{} hints for r2, {} keys of its written", hints(&c), missed.len());

    c.restart(2);
    let restarted = Instant::now();
    let lacking = |c: &Cluster| -> Vec<String> {
        missed
            .iter()
            .filter(|k| c.held_bytes(1, k, "r2").as_deref() != Some(&value_for(k, "hinted")[..]))
            .map(|k| quorumkv::cluster::key::escaped(k))
            .collect()
    };
    let ok = wait_for(slack(Duration::from_secs(15)), || lacking(&c).is_empty());
    assert!(ok, "r2 still lacks {:?} {:?} after its restart; logs:\n{}", lacking(&c), restarted.elapsed(), c.logs());
    // Delivered hints are dropped, and `display` finds no key on which the replicas differ.
    assert!(wait_for(slack(Duration::from_secs(5)), || hints(&c) == 0), "{} hints left", hints(&c));
    let d = c.client(3).display(64, 1024).unwrap();
    assert!(d.differences.is_empty() && d.differing_slots == 0, "{:?}", d.differences);
    assert_eq!(d.partitioner, "murmur3");
}

/// READ-REPAIR mode: a replica that missed writes of string keys is stale after
/// its restart (`inspect` and `display` show it); one read of each key, at QUORUM
/// or ALL through any coordinator (the stale one included), returns the newest
/// value and repairs it — at ALL before the answer.
#[test]
fn read_repair_fixes_string_keys_on_a_stale_replica() {
    let mut c = Cluster::start_murmur3(4, &["READ-REPAIR"]);
    let keys = string_keys(40);
    let stale = keys_on(&c, &keys, "r2");
    assert!(stale.len() >= 20, "r2 is a replica of only {} of 40 keys", stale.len());
    c.kill(2);
    for i in [0, 1, 3] {
        c.wait_seen(i, 2, false);
    }
    for (n, key) in stale.iter().enumerate() {
        c.client([0, 1, 3][n % 3]).put(key, value_for(key, "fresh"), Quorum).unwrap();
    }
    for i in [0, 1, 3] {
        assert_eq!(c.client(i).status().unwrap().replicas[2].hints, 0, "READ-REPAIR mode keeps no hints");
    }
    c.restart(2);
    c.wait_all_up();
    // Stale: r2 holds none of them, and `display` lists each key with r2's copy missing.
    for key in &stale {
        assert_eq!(c.held_bytes(0, key, "r2"), None, "r2 must start stale");
    }
    let d = c.client(0).display(16, 1024).unwrap();
    let listed: BTreeSet<&[u8]> = d.differences.iter().map(|k| k.key.as_slice()).collect();
    for key in &stale {
        assert!(listed.contains(key.as_slice()), "display does not list {}: {listed:?}", quorumkv::cluster::key::escaped(key));
    }
    for diff in &d.differences {
        let r2 = diff.replicas.iter().find(|e| e.name == "r2").expect("r2 is a replica of each listed key");
        assert!(r2.reachable && r2.version.is_none(), "{diff:?}");
    }

    for (n, key) in stale.iter().enumerate() {
        let via = n % 4;
        let level = if n % 2 == 0 { All } else { Quorum };
        let want = value_for(key, "fresh");
        let got = c.client(via).get(key, level).unwrap();
        assert_eq!(got.as_deref(), Some(&want[..]), "{level} read via r{via} returned an old value");
        if level == All {
            // Every replica replied, so r2's stale copy was among them: repaired before the answer.
            assert_eq!(c.held_bytes(0, key, "r2").as_deref(), Some(&want[..]), "ALL read via r{via} answered before repairing r2");
        } else {
            let ok = wait_for(slack(Duration::from_secs(3)), || c.held_bytes(0, key, "r2").as_deref() == Some(&want[..]));
            assert!(ok, "r2 not repaired within 3 s of a QUORUM read via r{via}; logs:\n{}", c.logs());
        }
    }
    let d = c.client(1).display(16, 1024).unwrap();
    assert!(d.differences.is_empty() && d.differing_slots == 0, "{:?}", d.differences);
}

// ---------------------------------------------------------------------------
// Cluster files that disagree.

/// Starts three replicas: r0 and r1 with the cluster file `agreed` makes, r2 with
/// the one `odd` makes (each from the node lines). Then r2 must be refused by both
/// and refuse them, no side may ever see the other up, and the refusals must be
/// logged with both rings, each log line containing all of `want` (`{i}`: the refuser's number).
fn refused_at_handshake(agreed: impl Fn(&[String]) -> String, odd: impl Fn(&[String]) -> String, want: &[&str]) -> Cluster {
    let c = Cluster::start_no_wait_each(3, &[], |i, nodes| if i == 2 { odd(nodes) } else { agreed(nodes) });
    let refusal = |log: &str| log.lines().find(|l| l.contains("refusing replica link") && l.contains("r2 has ring")).map(String::from);
    let ok = wait_for(slack(Duration::from_secs(15)), || {
        refusal(&c.log(0)).is_some()
            && refusal(&c.log(1)).is_some()
            && c.log(2).contains("peer r0 at")
            && c.log(2).contains("peer r1 at")
            && c.log(2).contains("refused our handshake")
    });
    assert!(ok, "the refusals were not logged; logs:\n{}", c.logs());
    for i in [0, 1] {
        let line = refusal(&c.log(i)).unwrap();
        for w in want {
            let w = w.replace("{i}", &i.to_string());
            assert!(line.contains(&w), "r{i}'s refusal does not say {w:?}: {line}");
        }
    }
    let theirs = c.log(2).lines().find(|l| l.contains("refused our handshake")).unwrap().to_string();
    assert!(theirs.contains("Ring mismatch") && theirs.contains("r2 has ring ["), "{theirs}");
    // r0 and r1 agree with each other; r2 with nobody, for as long as we look.
    c.wait_seen(0, 1, true);
    c.wait_seen(1, 0, true);
    let until = Instant::now() + slack(Duration::from_millis(1500));
    while Instant::now() < until {
        for i in 0..3 {
            let s = c.client(i).status().unwrap();
            let up: Vec<bool> = s.replicas.iter().map(|r| r.up).collect();
            let expected = if i == 2 { [false, false, true] } else { [true, true, false] };
            assert_eq!(up, expected, "r{i}'s view; logs:\n{}", c.logs());
        }
        std::thread::sleep(Duration::from_millis(100));
    }
    c
}

fn with(settings: &'static str) -> impl Fn(&[String]) -> String {
    move |nodes| format!("{settings}{}\n", nodes.join("\n"))
}

/// `tokens=` for every node: three each, spread over the ring, the `shift`ed ones moved.
fn with_tokens(settings: &'static str, shift: i64) -> impl Fn(&[String]) -> String {
    move |nodes| {
        let step = u64::MAX / 9;
        let mut text = settings.to_string();
        for (i, line) in nodes.iter().enumerate() {
            let tokens: Vec<String> = (0..3)
                .map(|j| (i64::MIN.wrapping_add(((3 * j + i) as u64 * step) as i64) + if i == 0 && j == 1 { shift } else { 0 }).to_string())
                .collect();
            text += &format!("{line} tokens={}\n", tokens.join(","));
        }
        text
    }
}

#[test]
fn replicas_disagreeing_on_the_partitioner_refuse_each_other() {
    // r2 is byte-ordered: its ring has no tokens at all.
    refused_at_handshake(
        with(MURMUR3),
        with(""),
        &["r2 has ring [epoch 1 rf 3: r0=", "] but r{i} has [epoch 1 rf 3 murmur3 48 tokens: r0="],
    );
}

#[test]
fn replicas_disagreeing_on_vnodes_refuse_each_other() {
    refused_at_handshake(
        with("partitioner murmur3\nvnodes 16\n"),
        with("partitioner murmur3\nvnodes 8\n"),
        &["r2 has ring [epoch 1 rf 3 murmur3 24 tokens:", "has [epoch 1 rf 3 murmur3 48 tokens:"],
    );
}

#[test]
fn replicas_disagreeing_on_the_tokens_refuse_each_other_and_say_so() {
    // The same nodes, settings and number of tokens: only one token of r0's differs.
    let c = refused_at_handshake(
        with_tokens(MURMUR3, 0),
        with_tokens(MURMUR3, 1),
        &["rf 3 murmur3 9 tokens:", "(the same nodes, but their tokens differ)"],
    );
    assert!(c.log(2).contains("(the same nodes, but their tokens differ)"), "{}", c.log(2));
}

#[test]
fn replicas_disagreeing_on_the_replication_factor_refuse_each_other() {
    refused_at_handshake(
        with("partitioner murmur3\nrf 3\n"),
        with("partitioner murmur3\nrf 2\n"),
        &["r2 has ring [epoch 1 rf 2 murmur3", "has [epoch 1 rf 3 murmur3"],
    );
}

/// The control for the tests above: files that say the same thing in other words
/// (defaults spelt out, comments, the same tokens) are no difference.
#[test]
fn equivalent_cluster_files_agree() {
    let c = Cluster::start_no_wait_each(3, &[], |i, nodes| {
        if i == 2 {
            format!("# spelt out\npartitioner murmur3  # keys by token\nrf 3\nvnodes 16\n\n{}\n", nodes.join("\n"))
        } else {
            format!("{MURMUR3}{}\n", nodes.join("\n"))
        }
    });
    c.wait_all_up();
    c.client(2).put("agreed", "yes", All).unwrap();
    assert_eq!(c.client(0).get_text("agreed", All).unwrap().as_deref(), Some("yes"));
    let t =
        Cluster::start_no_wait_each(3, &[], |i, nodes| with_tokens(if i == 1 { "partitioner murmur3\nrf 3\n" } else { MURMUR3 }, 0)(nodes));
    t.wait_all_up();
    assert_eq!(t.client(0).status().unwrap().replicas[1].tokens.len(), 3);
}

// ---------------------------------------------------------------------------
// Refused at start.

/// Every mistake in a cluster file's settings is refused at start with its line
/// number and what is wrong, and so is an `--rf` that contradicts the file.
#[test]
fn bad_settings_and_contradicting_arguments_are_refused_at_start() {
    let dir = TempDir::new("settings");
    let nodes = "a 127.0.0.1 1\nb 127.0.0.1 2\nc 127.0.0.1 3\n";
    let cases: &[(&str, &[&str], &str)] = &[
        ("partitioner murmur3\nvnodes 0\n", &[], "line 2: vnodes \"0\" is not a whole number from 1 to 1024"),
        ("partitioner murmur3\nvnodes 1025\n", &[], "line 2: vnodes \"1025\""),
        ("# three\n\npartitioner murmur3\nrf 4\n", &[], "line 4: rf 4 is more than the 3 node(s) listed"),
        ("rf two\n", &[], "line 1: rf \"two\" is not a whole number of at least 1"),
        ("rf 0\n", &[], "line 1: rf \"0\""),
        ("partitioner murmur3\npartitioner byte-ordered\n", &[], "line 2: `partitioner` is set twice"),
        ("partitioner Murmur3\n", &[], "line 1: unknown partitioner \"Murmur3\"; use byte-ordered or murmur3"),
        ("partitioner murmur3\nvnodes 16 17\n", &[], "line 2: expected `vnodes VALUE`, found 3 field(s)"),
        ("partitioner murmur3\nrf 3\n", &["--rf", "2"], "--rf 2 disagrees with `rf 3` in"),
        ("rf 1\n", &["--rf", "3"], "--rf 3 disagrees with `rf 1` in"),
        ("partitioner murmur3\n", &["--rf", "4"], "replication factor 4 must be between 1 and the number of replicas owning data (3)"),
        ("partitioner murmur3\n", &["--max-key-bytes", "0"], "--max-key-bytes"),
        ("partitioner murmur3\n", &["--max-key-bytes", "65537"], "65537"),
    ];
    for (n, (settings, args, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{n}.txt"));
        std::fs::write(&file, format!("{settings}{nodes}")).unwrap();
        let mut argv = vec!["a", "1", file.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap()];
        argv.extend_from_slice(args);
        let (code, err) = start_refused(dir.path(), &argv);
        assert_eq!(code, Some(2), "case {n} {settings:?} {args:?} should be refused:\n{err}");
        assert!(err.contains(want), "case {n} {settings:?} {args:?}: want {want:?} in\n{err}");
    }
    // Token lines: the line of the offending token, even when it is a node line.
    let tokens = [
        ("partitioner murmur3\na 127.0.0.1 1 tokens=1,2\nb 127.0.0.1 2 tokens=3,1\n", "line 3: token 1 is claimed twice (also by a)"),
        ("partitioner murmur3\na 127.0.0.1 1 tokens=1,,2\n", "line 2: token \"\" is not a signed 64-bit integer"),
        ("partitioner murmur3\na 127.0.0.1 1 tokens=9223372036854775808\n", "line 2: token \"9223372036854775808\""),
        ("a 127.0.0.1 1 tokens=5\n", "line 1: tokens= needs `partitioner murmur3`"),
    ];
    for (n, (text, want)) in tokens.iter().enumerate() {
        let file = dir.path().join(format!("tokens{n}.txt"));
        std::fs::write(&file, text).unwrap();
        let (code, err) = start_refused(dir.path(), &["a", "1", file.to_str().unwrap(), "--data-dir", dir.path().to_str().unwrap()]);
        assert!(code == Some(2) && err.contains(want), "{text:?}: want {want:?} in\n{err}");
    }
    // The same RF twice is no contradiction.
    let c = Cluster::start_with(2, "partitioner murmur3\nrf 2\n", &["--rf", "2"]);
    c.client(0).put("both", "agree", All).unwrap();
}

/// `display` on a murmur3 cluster whose replicas differ in many long keys: a replica
/// missed 36,000 writes of 1,000-byte keys with 1,100-byte values (default limits),
/// so every slot differs. The listing is capped (`max_keys`), yet each replica is
/// asked for every cell of the differing slots, values cut to 1 KiB: about 74 MB
/// from each replica that holds them, more than a replica link takes in one frame
/// (64 MiB). The answer must still come from every replica, and no link may break.
#[test]
fn display_of_many_differing_long_keys_keeps_every_link_up() {
    let mut c = Cluster::start_murmur3(3, &["READ-REPAIR"]);
    c.kill(2);
    c.wait_seen(0, 2, false);
    c.wait_seen(1, 2, false);
    // Under ThreadSanitizer a third (a 25 MB dump, slow enough there to starve the heartbeats too).
    let keys = if common::under_tsan() { 12_000 } else { 36_000 };
    let key = |i: usize| format!("{i:06}{}", "k".repeat(994)).into_bytes();
    let next = std::sync::atomic::AtomicUsize::new(0);
    std::thread::scope(|s| {
        for t in 0..8 {
            let (c, next, keys) = (&c, &next, keys);
            s.spawn(move || {
                let mut cl = c.client(t % 2);
                let value = vec![b'v'; 1100];
                loop {
                    let i = next.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if i >= keys {
                        return;
                    }
                    cl.put(key(i), &value, Quorum).unwrap_or_else(|e| panic!("put {i}: {e}"));
                }
            });
        }
    });
    c.restart(2);
    c.wait_all_up();
    let lines_before: Vec<usize> = (0..3).map(|i| c.log(i).lines().count()).collect();
    let d = c.client(2).display(1024, 10).unwrap();
    for e in &d.replicas {
        assert!(e.reachable, "{} unreachable: {}; logs:\n{}", e.name, e.error, c.logs());
    }
    assert_eq!(d.differing_slots, 256);
    // Ten keys listed (r2 lacks each), and more to come.
    assert_eq!((d.differences.len(), d.more), (10, true), "{} differences listed; logs:\n{}", d.differences.len(), c.logs());
    for diff in &d.differences {
        let r2 = diff.replicas.iter().find(|e| e.name == "r2").expect("r2 is a replica of every key");
        assert!(r2.reachable && r2.version.is_none(), "{diff:?}");
    }
    for (i, &before) in lines_before.iter().enumerate() {
        let log = c.log(i);
        let down: Vec<&str> = log.lines().skip(before).filter(|l| l.contains(" is down: ")).collect();
        assert!(down.is_empty(), "r{i} saw a link go down during the display: {down:?}");
    }
}
