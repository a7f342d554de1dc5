//! The nemesis test: five durable replicas, concurrent clients, and a seeded
//! schedule of kills, pauses, partitions, slow links and clock skews (and, on
//! the murmur3 cluster, joins and decommissions); then the history is checked
//! for lost writes, invented values, read-your-writes and convergence (see
//! `tests/common/nemesis.rs`).
//!
//! `make test` runs it for about 60 s with a fresh seed (printed): 40 s on the
//! byte-ordered ring (32 keys) and 20 s on a murmur3 cluster (3,000 string
//! keys, "0" to "2999"), its checks unchanged. `make soak DURATION=600` runs the
//! first longer (`QUORUMKV_NEMESIS_SECS=600 cargo test --release --test
//! nemesis nemesis_murmur3` the second). Replay a failure with
//! `QUORUMKV_NEMESIS_SEED=<seed> cargo test --test nemesis -- --nocapture`.
//! Seeds that once failed are kept in `regression_seeds`.
//!
//! The murmur3 run (`nemesis_murmur3`) also changes the membership, one change
//! at a time among the other faults (never overlapping one): a `Join` starts
//! a new replica (`r5`, `r6`, ...) that joins through a random member and
//! coordinates for the clients at once; a `Decommission` makes a random
//! member (an original one as well as a joined one) hand its ranges over,
//! leave and exit, the clients connected to it finding out as it goes
//! (operations in flight then have unknown outcomes). The cluster moves
//! between 5 members and 6 (never below 5, so never below RF + 1); each change
//! lasts until every member sees it done. The checks follow the membership
//! (the final reads and convergence go through the final members, and
//! `inspect` lists the final ring's replicas), and one more applies: after
//! each change, every replica of a sampled key (every sixth) holds a version
//! no older than the one all its replicas held before the change. A 20 s run
//! makes one to four changes (a join of ~1,500 keys takes about a second in a
//! debug build, a decommission about as long) and lasts 23–35 s in all.
//! Its first runs found that hints for a member that joined after a replica
//! started were refused (the hint store knew only the members of its start):
//! a write to a joining replica whose link was not up yet never reached it,
//! and 1 to 3 keys (in 7 runs of 20) were left for read repair; the keys
//! hints alone converge are reported, not checked, so this showed in the
//! summary only (all 3,000 in the 6 runs since the fix).
//! Broken on purpose (not kept), a join that skips copying its ranges failed
//! it with seed 3 (115 keys "lost by a movement"; every other check passed,
//! reads having repaired the rest). A broken pending-write rule (writes
//! during a movement not sent to the replicas-to-be) was not caught by seeds
//! 2 and 3: with one fault at a time every old replica gets every write, so a
//! quorum of the new ring still holds it; that rule matters only when a
//! fault overlaps a movement, which the schedule does not do.
//!
//! The byte-ordered runs keep the faults they had: the harness's helpers
//! there take `status` order for a replica's index, and the SERIAL run would
//! meet what membership does not do yet (Paxos acceptor state is not copied
//! with the data).
//!
//! `nemesis_serial` (20 s; 10 under ThreadSanitizer) is the SERIAL run
//! ([`Config::serial`]): the clients make SERIAL reads, puts, deletes and
//! compare-and-sets (`put_if` on the value last seen or on absent,
//! `delete_if`) on 6 keys under every kind of fault, clock skew included; the
//! history (operations refused before sending or timed out before proposing
//! left out, unknown outcomes recorded as unknown, a final SERIAL read of each
//! key added) is checked for linearizability with `quorumkv::check` besides
//! the checks above. A 20 s run checks about 40,000–55,000 SERIAL operations,
//! about 2% of them of unknown outcome, in about a second. Broken on purpose
//! (not kept), a proposer that proceeds on one promise instead of a quorum, or
//! an acceptor that accepts below its promise, failed it within the first
//! second of a run with seeds 1 and 2 (e.g. two compare-and-sets from the same
//! value both applied).

mod common;

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::time::Duration;

use common::nemesis::{self, Config, Op, OpKind, Outcome};
use common::under_tsan;
use quorumkv::check::{Report, Verdict};
use quorumkv::cluster::consistency::Consistency::{One, Quorum, Serial};

/// The runs take turns: two 5-replica clusters at once on two CPUs would mostly measure the machine.
static ONE_AT_A_TIME: Mutex<()> = Mutex::new(());

#[test]
fn nemesis() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // ThreadSanitizer slows replicas several times; a shorter run keeps `make tsan` bounded.
    nemesis::run_and_check(Config::from_env(if under_tsan() { 20 } else { 40 }));
}

/// The same on a murmur3 cluster with thousands of string keys (fewer under
/// ThreadSanitizer, where the final checks of every key would take too long).
#[test]
fn nemesis_murmur3() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    let keys = if under_tsan() { 500 } else { 3000 };
    nemesis::run_and_check(Config::from_env(if under_tsan() { 10 } else { 20 }).murmur3(keys));
}

/// The SERIAL run: SERIAL get/put/delete and compare-and-sets on 6 keys under
/// every kind of fault, the history also checked for linearizability.
#[test]
fn nemesis_serial() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    nemesis::run_and_check(Config::from_env(if under_tsan() { 10 } else { 20 }).serial());
}

/// The bank run: conditional transfers between 8 accounts and `mget`s of
/// every balance under every kind of fault, beside SERIAL clients (see
/// [`Config::bank`]): every read sums to the total, no balance goes
/// negative, the accounts converge, and the SERIAL history stays linearizable.
#[test]
fn nemesis_bank() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    nemesis::run_and_check(Config::from_env(if under_tsan() { 10 } else { 20 }).bank());
}

/// Seeds kept as regression cases, replayed briefly on every run (the schedule
/// and the clients' choices follow the seed; the timing of real processes does not).
///
/// - 1795297362642248369: caught a deliberately broken QUORUM (one ack) with
///   135 read-your-writes violations in 30 s; kept as a check that the run
///   still exercises that path.
const REGRESSION_SEEDS: &[u64] = &[1795297362642248369];

#[test]
fn regression_seeds() {
    let _turn = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    for &seed in REGRESSION_SEEDS {
        nemesis::run_and_check(Config::new(seed, Duration::from_secs(15)));
    }
}

// The checker itself, on small hand-made histories: each check must be able to fail.

fn op(client: usize, kind: OpKind, key: u32, quorum: bool, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
    Op {
        client,
        coordinator: 0,
        kind,
        key,
        level: if quorum { Quorum } else { One },
        start: Duration::from_millis(start_ms),
        end: Duration::from_millis(end_ms),
        outcome,
    }
}

fn put(client: usize, v: &str, start: u64, end: u64, outcome: Outcome) -> Op {
    op(client, OpKind::Put(v.into()), 7, true, start, end, outcome)
}

fn get(client: usize, start: u64, end: u64, v: Option<&str>) -> Op {
    op(client, OpKind::Get, 7, true, start, end, Outcome::Ok(v.map(String::from)))
}

fn finals(v: Option<&str>) -> BTreeMap<u32, (Option<String>, Duration)> {
    BTreeMap::from([(7, (v.map(String::from), Duration::from_secs(100)))])
}

#[test]
fn checker_accepts_a_correct_history() {
    let h = vec![
        put(0, "a", 0, 10, Outcome::Ok(None)),
        put(1, "b", 5, 15, Outcome::Timeout), // concurrent with a, indeterminate: may win
        get(0, 20, 25, Some("b")),
        put(1, "c", 30, 40, Outcome::Unavailable),
    ];
    let v = nemesis::check(&h, &finals(Some("b")), &[]);
    assert!(v.violations.is_empty(), "{:?}", v.violations);
}

#[test]
fn checker_finds_a_lost_write() {
    let h = vec![put(0, "a", 0, 10, Outcome::Ok(None)), put(1, "b", 20, 30, Outcome::Ok(None))];
    let v = nemesis::check(&h, &finals(Some("a")), &[]);
    assert!(v.violations.iter().any(|m| m.starts_with("lost write")), "{:?}", v.violations);
    // A delete acknowledged at QUORUM then a read of nothing is fine; of the older value it is lost.
    let h = vec![put(0, "a", 0, 10, Outcome::Ok(None)), op(1, OpKind::Del, 7, true, 20, 30, Outcome::Ok(None))];
    assert!(nemesis::check(&h, &finals(None), &[]).violations.is_empty());
    assert!(!nemesis::check(&h, &finals(Some("a")), &[]).violations.is_empty());
    // Not found although a QUORUM put was acknowledged and nothing deleted.
    assert!(!nemesis::check(&h[..1], &finals(None), &[]).violations.is_empty());
}

#[test]
fn checker_finds_invented_values() {
    let h = vec![put(0, "a", 0, 10, Outcome::Ok(None)), get(1, 20, 30, Some("zzz"))];
    let v = nemesis::check(&h, &finals(Some("a")), &[]);
    assert!(v.violations.iter().any(|m| m.contains("which no client wrote")), "{:?}", v.violations);
    // A value read before its write began, and a refused write's value.
    let h = vec![get(1, 0, 5, Some("a")), put(0, "a", 10, 20, Outcome::Ok(None)), put(0, "u", 30, 31, Outcome::Unavailable)];
    let v = nemesis::check(&h, &finals(Some("u")), &[]);
    let invented: Vec<_> = v.violations.iter().filter(|m| m.starts_with("invented value")).collect();
    assert_eq!(invented.len(), 2, "{:?}", v.violations);
}

#[test]
fn checker_finds_a_client_not_reading_its_own_write() {
    let h = vec![
        put(1, "old", 0, 5, Outcome::Ok(None)),
        put(0, "mine", 10, 20, Outcome::Ok(None)),
        get(0, 30, 40, Some("old")),
        put(1, "new", 50, 60, Outcome::Ok(None)),
    ];
    let v = nemesis::check(&h, &finals(Some("new")), &[]);
    assert!(v.violations.iter().any(|m| m.starts_with("read-your-writes")), "{:?}", v.violations);
    // Not found after one's own put is excused only by a delete that began before the read ended.
    let h3 = vec![put(0, "mine", 0, 10, Outcome::Ok(None)), get(0, 20, 30, None), op(1, OpKind::Del, 7, true, 40, 50, Outcome::Ok(None))];
    let v = nemesis::check(&h3, &finals(None), &[]);
    assert!(v.violations.iter().any(|m| m.starts_with("read-your-writes")), "{:?}", v.violations);
    let mut concurrent = h3.clone();
    concurrent[2].start = Duration::from_millis(25);
    assert!(nemesis::check(&concurrent, &finals(None), &[]).violations.is_empty());
    // At ONE the same read is allowed to be stale.
    let mut h2 = h.clone();
    h2[2].level = One;
    assert!(nemesis::check(&h2, &finals(Some("new")), &[]).violations.is_empty());
}

/// The failure the nemesis found with seed 1796225199768973935: a delete at
/// ONE through a replica whose clock ran 1 s ahead ended just before a
/// client's QUORUM put began, and the client's QUORUM read then found the
/// delete (its timestamp is the later). Outside a window of shifted clocks
/// that is a violation; inside one a ONE write is ordered by its timestamp
/// only (README); a QUORUM delete there still is not.
#[test]
fn a_one_write_during_clock_skew_is_ordered_by_its_timestamp_only() {
    let del = |quorum| op(1, OpKind::Del, 7, quorum, 100, 110, Outcome::Ok(None));
    let h = |quorum| vec![del(quorum), put(0, "mine", 111, 120, Outcome::Ok(None)), get(0, 121, 130, None)];
    let skew = [(Duration::from_millis(50), Duration::from_millis(2000))];
    let rw = |v: nemesis::Verdict| v.violations.iter().any(|m| m.starts_with("read-your-writes"));
    assert!(rw(nemesis::check(&h(false), &finals(Some("mine")), &[])), "no skew: the delete was older");
    assert!(!rw(nemesis::check(&h(false), &finals(Some("mine")), &skew)), "a ONE delete while clocks were shifted");
    assert!(rw(nemesis::check(&h(true), &finals(Some("mine")), &skew)), "a QUORUM delete is ordered even then");
    let late = [(Duration::from_millis(115), Duration::from_millis(2000))];
    assert!(rw(nemesis::check(&h(false), &finals(Some("mine")), &late)), "a ONE delete before the window");
}

// The SERIAL history as the linearizability checker sees it.

fn serial(client: usize, kind: OpKind, start_ms: u64, end_ms: u64, outcome: Outcome) -> Op {
    Op { level: Serial, ..op(client, kind, 7, true, start_ms, end_ms, outcome) }
}

fn lin(h: &[Op]) -> Report<u32> {
    nemesis::serial_history(h).check(Duration::from_secs(5))
}

#[test]
fn serial_history_maps_outcomes() {
    let w = |v: &str| OpKind::Put(v.into());
    let cas = |v: &str, old: Option<&str>| OpKind::PutIf(v.into(), old.map(String::from));
    let ok = || Outcome::Ok(None);
    let read = |v: Option<&str>| Outcome::Ok(v.map(String::from));
    // A CAS that applied after a write, a refused one that saw the CAS's value, a read of it.
    let good = vec![
        serial(0, w("a"), 0, 10, ok()),
        serial(1, cas("b", Some("a")), 20, 30, ok()),
        serial(2, cas("c", Some("a")), 40, 50, Outcome::NotApplied(Some("b".into()))),
        serial(0, OpKind::Get, 60, 70, read(Some("b"))),
    ];
    assert!(lin(&good).is_linearizable());
    // A stale read after the CAS returned is not linearizable.
    let mut stale = good.clone();
    stale[3].outcome = read(Some("a"));
    assert!(matches!(lin(&stale).verdict, Verdict::NotLinearizable { key: 7, .. }));
    // Two CAS from "a" both applied: one must have lost.
    let mut twice = good.clone();
    twice[2].outcome = ok();
    assert!(!lin(&twice).is_linearizable());
    // A write that timed out may have been applied, later: a read of it is fine...
    let mut late = good.clone();
    late.insert(3, serial(1, w("x"), 35, 40, Outcome::Timeout));
    late[4].outcome = read(Some("x"));
    assert!(lin(&late).is_linearizable());
    // ...but one refused before sending, or timed out before proposing, was never applied.
    for never in [Outcome::Unavailable, Outcome::NotProposed] {
        late[3].outcome = never;
        assert!(!lin(&late).is_linearizable());
    }
    // Operations at other levels are not in the SERIAL history.
    let mut quorum = stale.clone();
    quorum[3].level = Quorum;
    assert!(lin(&quorum).is_linearizable());
}
