//! Transactions on the simulated network: all-or-nothing at every crash
//! point of the coordinator, conflicts, recovery, and `mget`'s atomicity.

use std::time::Duration;

use super::{Cluster, Event, Kind};
use crate::cluster::key::{Key, Partitioner};
use crate::error::Error;
use crate::message::{ClientRequest, PeerRequest, PeerResponse, Reply};
use crate::paxos::Expect;
use crate::storage::hlc::Timestamp;
use crate::txn::TxnSpec;

fn k(s: &str) -> Key {
    Partitioner::Murmur3.key(s.as_bytes().to_vec(), 64).unwrap()
}

fn spec(conditions: &[(&str, Option<&str>)], writes: &[(&str, Option<&str>)]) -> TxnSpec {
    TxnSpec {
        conditions: conditions.iter().map(|(key, v)| (k(key), v.map_or(Expect::Absent, |v| Expect::Equals(v.as_bytes().into())))).collect(),
        writes: writes.iter().map(|(key, v)| (k(key), v.map(|v| v.as_bytes().into()))).collect(),
    }
}

/// Node `i`'s cell of `key`: its value (`None` for a tombstone) and stamp.
fn cell(c: &Cluster, i: usize, key: &str) -> Option<(Option<String>, Timestamp)> {
    c.nodes[i].store.get(k(key).as_bytes()).map(|v| (v.value.map(|b| String::from_utf8(b.into_vec()).unwrap()), v.ts))
}

fn intents(c: &Cluster, live: &[usize]) -> usize {
    live.iter().map(|&i| c.nodes[i].paxos.lock().intents.len()).sum()
}

/// Two keys with different replica sets, and a node holding neither (to
/// coordinate and die without taking a replica with it).
fn layout(c: &Cluster) -> (String, String, usize) {
    for a in 0..100 {
        for b in a + 1..100 {
            let (ka, kb) = (format!("k{a}"), format!("k{b}"));
            let (ra, rb) = (c.replicas_of(ka.as_bytes()), c.replicas_of(kb.as_bytes()));
            if ra.iter().collect::<std::collections::BTreeSet<_>>() == rb.iter().collect() {
                continue;
            }
            if let Some(free) = (0..c.nodes.len()).find(|i| !ra.contains(i) && !rb.contains(i)) {
                return (ka, kb, free);
            }
        }
    }
    panic!("no layout");
}

fn is_prepare(e: &Event) -> bool {
    matches!(e.kind, Kind::Request(PeerRequest::TxnPrepare { .. }))
}

fn is_vote(e: &Event) -> bool {
    matches!(e.kind, Kind::Reply(Ok(PeerResponse::TxnVotes(..))))
}

fn is_record_request(e: &Event) -> bool {
    matches!(e.kind, Kind::Request(PeerRequest::TxnRecord(_)))
}

fn is_resolve(e: &Event) -> bool {
    matches!(e.kind, Kind::Request(PeerRequest::TxnResolve { .. }))
}

/// The state of `keys` on the live replicas: every one holds the same
/// thing (so all-or-nothing holds across replicas); `Some(values)` if the
/// transaction's writes are there, `None` if none of them is.
fn all_or_nothing(c: &Cluster, keys: &[(&str, &str)], live: &[usize]) -> bool {
    let mut seen = Vec::new();
    for (key, value) in keys {
        for i in c.replicas_of(key.as_bytes()) {
            if !live.contains(&i) {
                continue;
            }
            let has = cell(c, i, key).is_some_and(|(v, _)| v.as_deref() == Some(*value));
            seen.push(has);
        }
    }
    assert!(seen.iter().all(|&h| h) || seen.iter().all(|&h| !h), "some replicas hold the writes and some do not: {seen:?}");
    seen[0]
}

/// A transaction over keys on different replicas is applied on every
/// replica of every key with one timestamp, leaves no intent behind, and a
/// second one conditioned on the first's values commits too.
#[test]
fn a_transaction_writes_every_key_on_every_replica_with_one_stamp() {
    for seed in 0..10 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, via) = layout(&c);
        let t = c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("1")), (&b, Some("2"))])));
        c.net.run(&c);
        let Some(Reply::TxnCommitted { ts }) = c.client.reply(t) else { panic!("seed {seed}: {:?}", c.client.reply(t)) };
        for (key, value) in [(&a, "1"), (&b, "2")] {
            for i in c.replicas_of(key.as_bytes()) {
                assert_eq!(cell(&c, i, key), Some((Some(value.into()), ts)), "seed {seed}: node {i}, key {key}");
            }
        }
        assert_eq!(intents(&c, &[0, 1, 2, 3, 4]), 0);
        let next = spec(&[(&a, Some("1")), (&b, Some("2"))], &[(&a, None), (&b, Some("3"))]);
        let t = c.request((via + 1) % 5, ClientRequest::Txn(next));
        c.net.run(&c);
        assert!(matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. })), "seed {seed}: {:?}", c.client.reply(t));
        for i in c.replicas_of(a.as_bytes()) {
            assert_eq!(cell(&c, i, &a).unwrap().0, None, "deleted");
        }
    }
}

/// A failed condition writes nothing, answers the compared keys' values,
/// and lets go of every key.
#[test]
fn a_failed_condition_writes_nothing_and_shows_the_values_compared() {
    let c = Cluster::murmur3(5, 3, 4, 3);
    let (a, b, via) = layout(&c);
    let t = c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("10"))])));
    c.net.run(&c);
    assert!(matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. })));
    let t = c.request(via, ClientRequest::Txn(spec(&[(&a, Some("11")), (&b, None)], &[(&a, Some("0")), (&b, Some("1"))])));
    c.net.run(&c);
    let want = vec![(k(&a), Some(b"10".to_vec().into_boxed_slice())), (k(&b), None)];
    assert_eq!(c.client.reply(t), Some(Reply::TxnNotApplied { current: want }));
    assert!(!all_or_nothing(&c, &[(&a, "0"), (&b, "1")], &[0, 1, 2, 3, 4]));
    assert_eq!(intents(&c, &[0, 1, 2, 3, 4]), 0);
}

/// Two transactions racing on the same condition from different
/// coordinators, in every delivery order a seed picks: exactly one commits
/// (the other sees its write, or loses the conflict), and no intent stays.
#[test]
fn racing_conditional_transactions_commit_exactly_one() {
    let mut conflicts = 0;
    for seed in 0..40 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, _) = layout(&c);
        let t1 = c.request(0, ClientRequest::Txn(spec(&[(&a, None)], &[(&a, Some("x")), (&b, Some("x"))])));
        let t2 = c.request(1, ClientRequest::Txn(spec(&[(&a, None)], &[(&a, Some("y")), (&b, Some("y"))])));
        c.net.run(&c);
        let (r1, r2) = (c.client.reply(t1).unwrap(), c.client.reply(t2).unwrap());
        let won: Vec<&str> =
            [(&r1, "x"), (&r2, "y")].iter().filter(|(r, _)| matches!(r, Reply::TxnCommitted { .. })).map(|(_, v)| *v).collect();
        assert!(won.len() <= 1, "seed {seed}: both committed");
        for r in [&r1, &r2] {
            match r {
                Reply::TxnCommitted { .. } | Reply::TxnNotApplied { .. } => {}
                Reply::Error(Error::Conflict(_)) => conflicts += 1,
                other => panic!("seed {seed}: {other:?}"),
            }
        }
        assert_eq!(intents(&c, &[0, 1, 2, 3, 4]), 0, "seed {seed}");
        if let Some(v) = won.first() {
            assert!(all_or_nothing(&c, &[(&a, v), (&b, v)], &[0, 1, 2, 3, 4]));
        }
    }
    assert!(conflicts > 0, "some seed raced the prepares");
}

/// Past the timeout, recovery ticks on the `live` nodes (each a fifth of a
/// second later) until every intent is settled (at most 40).
fn settle(c: &Cluster, live: &[usize]) {
    c.clock.advance(Duration::from_secs(2));
    for _ in 0..40 {
        if intents(c, live) == 0 {
            break;
        }
        c.clock.advance(Duration::from_millis(200));
        for &i in live {
            c.nodes[i].recover_txns();
        }
        c.net.run(c);
    }
}

/// Runs a transaction coordinated by a node that dies at a crash point
/// (after `deliver` events were delivered), then lets the live replicas'
/// recovery settle it: all-or-nothing on every live replica, no intent
/// left, and the keys free for the next transaction. Returns whether it was applied.
fn crash_coordinator(seed: u64, deliver: &dyn Fn(&Cluster)) -> bool {
    let c = Cluster::murmur3(5, 3, 4, seed);
    let (a, b, via) = layout(&c);
    c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("1")), (&b, Some("2"))])));
    deliver(&c);
    c.net.kill(c.id(via));
    c.net.expire();
    let live: Vec<usize> = (0..5).filter(|&i| i != via).collect();
    c.net.run(&c);
    settle(&c, &live);
    assert_eq!(intents(&c, &live), 0, "seed {seed}: recovery resolved every intent");
    let applied = all_or_nothing(&c, &[(&a, "1"), (&b, "2")], &live);
    let t = c.request(live[0], ClientRequest::Txn(spec(&[], &[(&a, Some("3")), (&b, Some("4"))])));
    c.net.run(&c);
    assert!(matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. })), "seed {seed}: the keys are free: {:?}", c.client.reply(t));
    applied
}

/// The coordinator dies after its prepares reached the participants: they
/// hold intents, nobody recorded a decision; recovery aborts it.
#[test]
fn a_coordinator_dead_after_its_prepares_is_aborted_by_recovery() {
    for seed in 0..10 {
        let applied = crash_coordinator(seed, &|c| c.net.run_matching(c, &is_prepare));
        assert!(!applied, "seed {seed}");
    }
}

/// The coordinator dies after its commit reached the record's replicas
/// (before any answer came back): the decision is chosen, so recovery
/// commits it everywhere.
#[test]
fn a_coordinator_dead_after_recording_its_commit_is_committed_by_recovery() {
    for seed in 0..10 {
        let applied = crash_coordinator(seed, &|c| {
            c.net.run_matching(c, &|e| is_prepare(e) || is_vote(e));
            c.net.run_matching(c, &is_record_request);
        });
        assert!(applied, "seed {seed}");
    }
}

/// The coordinator dies at any point a seed picks (after a random number of
/// deliveries): whatever happened, all-or-nothing and no intent left.
#[test]
fn a_coordinator_dead_at_any_point_leaves_all_or_nothing() {
    let mut outcomes = [0, 0];
    for seed in 0..60 {
        let steps = (seed * 7919) % 40;
        let applied = crash_coordinator(seed, &|c| {
            for _ in 0..steps {
                c.background();
                if !c.net.step_matching(&|_| true) {
                    break;
                }
            }
        });
        outcomes[usize::from(applied)] += 1;
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "both outcomes reached: {outcomes:?}");
}

/// Some replicas never got the resolution (the coordinator died after it
/// answered): they still hold intents, and recovery finishes the commit.
#[test]
fn a_resolution_lost_with_the_coordinator_is_finished_by_recovery() {
    for seed in 0..10 {
        let applied = crash_coordinator(seed, &|c| {
            c.net.run_matching(c, &|e| !is_resolve(e));
            // Half of the resolutions arrive.
            let n = c.net.count_matching(&is_resolve) / 2;
            for _ in 0..n {
                c.net.step_matching(&is_resolve);
            }
        });
        assert!(applied, "seed {seed}");
    }
}

/// `mget` of a transaction's keys, racing it in every order a seed picks,
/// sees all of its writes or none of them.
#[test]
fn an_mget_sees_all_of_a_transaction_or_none() {
    let mut seen = [0, 0];
    for seed in 0..60 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, via) = layout(&c);
        let t = c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("1")), (&b, Some("1"))])));
        c.net.run(&c);
        assert!(matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. })));
        c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("2")), (&b, Some("2"))])));
        // Part of the transaction happens, then the mget starts, then all of it.
        let steps = (seed * 31) % 30;
        for _ in 0..steps {
            c.background();
            if !c.net.step_matching(&|_| true) {
                break;
            }
        }
        let m = c.request((via + 1 + seed as usize % 4) % 5, ClientRequest::MGet { keys: vec![k(&a), k(&b)] });
        c.net.run(&c);
        let Some(Reply::Values(values)) = c.client.reply(m) else { panic!("seed {seed}: {:?}", c.client.reply(m)) };
        let values: Vec<String> = values.into_iter().map(|(_, v)| String::from_utf8(v.unwrap().into_vec()).unwrap()).collect();
        assert!(values[0] == values[1], "seed {seed}: the mget saw part of a transaction: {values:?}");
        seen[usize::from(values[0] == "2")] += 1;
    }
    assert!(seen[0] > 0 && seen[1] > 0, "both before and after were seen: {seen:?}");
}

/// An `mget` that shows a committed transaction's write before its
/// resolutions arrived writes it back to a quorum first, so a plain QUORUM
/// `get` after the `mget` sees it too. (Without the write-back, a client that
/// watched a key with `mget` and then read it with `get` saw an older value,
/// and the RESP `WATCH`/`GET`/`EXEC` counter lost updates.)
#[test]
fn a_get_after_an_mget_sees_what_the_mget_saw() {
    let mut shown = 0;
    for seed in 0..40 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, via) = layout(&c);
        c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("1")), (&b, Some("1"))])));
        c.net.run(&c);
        c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("2")), (&b, Some("2"))])));
        // Everything but the resolutions: the record decides, no cell is written.
        c.net.run_matching(&c, &|e| !is_resolve(e));
        let reader = (via + 1 + seed as usize % 4) % 5;
        let m = c.request(reader, ClientRequest::MGet { keys: vec![k(&a), k(&b)] });
        c.net.run_matching(&c, &|e| !is_resolve(e));
        let Some(Reply::Values(values)) = c.client.reply(m) else { panic!("seed {seed}: {:?}", c.client.reply(m)) };
        let seen: Vec<Option<Box<[u8]>>> = values.into_iter().map(|(_, v)| v).collect();
        if seen[0].as_deref() != Some(b"2") {
            continue;
        }
        shown += 1;
        for key in [&a, &b] {
            let g = c.request(reader, ClientRequest::Get { key: k(key), level: crate::cluster::consistency::Consistency::Quorum });
            c.net.run_matching(&c, &|e| !is_resolve(e));
            match c.client.reply(g) {
                Some(Reply::Read(Some(v))) => {
                    assert_eq!(v.value.as_deref(), Some(&b"2"[..]), "seed {seed}: get {key} after the mget saw 2")
                }
                other => panic!("seed {seed}: get {key}: {other:?}"),
            }
        }
    }
    assert!(shown > 0, "no seed had the mget show the unresolved commit");
}

/// A commit is answered only once a quorum of every written key's replicas
/// hold its cell, so a QUORUM read right after the answer sees it.
#[test]
fn a_commit_is_answered_once_a_quorum_of_each_key_holds_it() {
    for seed in 0..20 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, via) = layout(&c);
        let t = c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("1")), (&b, Some("2"))])));
        while c.client.reply(t).is_none() {
            c.background();
            assert!(c.net.step_matching(&|_| true), "seed {seed}: never answered");
        }
        let Some(Reply::TxnCommitted { ts }) = c.client.reply(t) else { panic!("seed {seed}") };
        for (key, value) in [(&a, "1"), (&b, "2")] {
            let holding = c.replicas_of(key.as_bytes()).into_iter().filter(|&i| cell(&c, i, key) == Some((Some(value.into()), ts))).count();
            assert!(holding >= 2, "seed {seed}: {key} on {holding} replicas at the answer");
        }
    }
}

/// A bank on the simulated network: transfers between four accounts from
/// every coordinator and `mget`s of every balance, their messages delivered
/// in the order a seed picks, some coordinators dying midway: every `mget`
/// sums to the total, and so do the balances once recovery settled everything.
/// (It caught two versions of `mget` showing half a transfer: one that took
/// the record's word when asked, with no read timestamp, with seed 13; one
/// that let an answer arriving after its snapshot change it, with seed 9.)
#[test]
fn a_bank_keeps_its_total_in_every_mget() {
    let accounts = ["a0", "a1", "a2", "a3"];
    for seed in 0..200 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let open: Vec<(&str, Option<&str>)> = accounts.iter().map(|a| (*a, Some("10"))).collect();
        let t = c.request(0, ClientRequest::Txn(spec(&[], &open)));
        c.net.run(&c);
        assert!(matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. })));
        let mut rng = seed.wrapping_mul(0x9E37_79B9_7F4A_7C15) | 1;
        let mut next = |n: u64| {
            rng ^= rng << 13;
            rng ^= rng >> 7;
            rng ^= rng << 17;
            rng % n
        };
        let mut mgets = Vec::new();
        let killed = (seed % 3 == 0).then(|| next(5) as usize);
        for round in 0..12 {
            let (a, b) = (next(4) as usize, next(3) as usize);
            let b = (a + 1 + b) % 4;
            // Unconditional moves of 1 (the read-modify-write is the condition's job elsewhere):
            // each transfer sets both balances from the values an mget read.
            let via = next(5) as usize;
            if Some(via) == killed && round > 6 {
                continue;
            }
            let m = c.request(via, ClientRequest::MGet { keys: accounts.iter().map(|a| k(a)).collect() });
            mgets.push(m);
            for _ in 0..next(25) {
                c.background();
                if !c.net.step_matching(&|_| true) {
                    break;
                }
            }
            if let Some(Reply::Values(v)) = c.client.reply(m) {
                let bal: Vec<i64> = v.iter().map(|(_, v)| std::str::from_utf8(v.as_deref().unwrap()).unwrap().parse().unwrap()).collect();
                if bal[a] > 0 {
                    let (na, nb) = ((bal[a] - 1).to_string(), (bal[b] + 1).to_string());
                    let (sa, sb) = (bal[a].to_string(), bal[b].to_string());
                    let t =
                        spec(&[(accounts[a], Some(&sa)), (accounts[b], Some(&sb))], &[(accounts[a], Some(&na)), (accounts[b], Some(&nb))]);
                    c.request((via + 1) % 5, ClientRequest::Txn(t));
                }
            }
            if Some(via) == killed && round == 6 {
                c.net.kill(c.id(via));
            }
            for _ in 0..next(25) {
                c.background();
                if !c.net.step_matching(&|_| true) {
                    break;
                }
            }
        }
        c.net.expire();
        c.net.run(&c);
        let live: Vec<usize> = (0..5).filter(|&i| Some(i) != killed).collect();
        settle(&c, &live);
        let fin = c.request(live[0], ClientRequest::MGet { keys: accounts.iter().map(|a| k(a)).collect() });
        c.net.run(&c);
        mgets.push(fin);
        for m in mgets {
            let Some(Reply::Values(v)) = c.client.reply(m) else { continue };
            let bal: Vec<i64> = v.iter().map(|(_, v)| std::str::from_utf8(v.as_deref().unwrap()).unwrap().parse().unwrap()).collect();
            assert_eq!(bal.iter().sum::<i64>(), 40, "seed {seed}: an mget saw {bal:?}");
        }
    }
}

/// A SERIAL proposal accepted by the replicas whose proposer died before
/// committing it keeps transactions off its key (prepares vote no) only
/// until a recovery tick past the timeout completes it with a SERIAL read:
/// then a transaction conditioned on the proposal's value commits.
#[test]
fn a_dead_serial_proposer_does_not_keep_transactions_off_its_key() {
    use crate::paxos::{Request, Response};
    for seed in 0..10 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, _, via) = layout(&c);
        let put = ClientRequest::Put {
            key: k(&a),
            value: b"s".to_vec(),
            level: crate::cluster::consistency::Consistency::Serial,
            condition: None,
        };
        c.request(via, put);
        // Everything but the accepts' answers and the commits: the value is chosen, nobody knows.
        c.net.run_matching(&c, &|e| {
            !matches!(e.kind, Kind::Request(PeerRequest::Paxos(Request::Commit { .. }, _)))
                && !matches!(e.kind, Kind::Reply(Ok(PeerResponse::Paxos(Response::Accepted { .. }))))
        });
        c.net.kill(c.id(via));
        c.net.expire();
        c.net.run(&c);
        let live: Vec<usize> = (0..5).filter(|&i| i != via).collect();
        let txn = || ClientRequest::Txn(spec(&[(&a, Some("s"))], &[(&a, Some("t"))]));
        let t = c.request(live[0], txn());
        c.net.run(&c);
        assert!(matches!(c.client.reply(t), Some(Reply::Error(Error::Conflict(_)))), "seed {seed}: {:?}", c.client.reply(t));
        c.clock.advance(Duration::from_secs(3));
        for &i in &live {
            c.nodes[i].recover_txns();
        }
        c.net.run(&c);
        let t = c.request(live[0], txn());
        c.net.run(&c);
        assert!(matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. })), "seed {seed}: {:?}", c.client.reply(t));
    }
}

/// Whether `e` is part of the transaction coordinated by `by`: its requests, and the replies to them.
fn traffic_of(c: &Cluster, by: usize) -> impl Fn(&Event) -> bool {
    let id = c.id(by);
    move |e: &Event| if e.is_request() { e.from == id } else { e.to == id }
}

/// Wait-die. An older transaction whose keys a younger one holds waits (its
/// prepares are sent again) and commits once the younger one is resolved,
/// after it; a younger one that meets an older holder dies at once with a
/// conflict, without sending its prepares again.
#[test]
fn an_older_transaction_waits_for_a_younger_holder_and_a_younger_one_dies() {
    for seed in 0..20 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, _) = layout(&c);
        // The older one (its id is the earlier clock reading) waits.
        let old = c.request(0, ClientRequest::Txn(spec(&[], &[(&a, Some("old")), (&b, Some("old"))])));
        let young = c.request(1, ClientRequest::Txn(spec(&[], &[(&a, Some("young")), (&b, Some("young"))])));
        let of_young = traffic_of(&c, 1);
        // The younger one's prepares and votes go first: it holds every key.
        c.net.run_matching(&c, &|e| of_young(e) && (is_prepare(e) || is_vote(e)));
        // Then everything, in the seed's order: the older one's prepares meet the holder.
        c.net.run(&c);
        let (r_old, r_young) = (c.client.reply(old).unwrap(), c.client.reply(young).unwrap());
        assert!(matches!(r_young, Reply::TxnCommitted { .. }), "seed {seed}: the younger holder: {r_young:?}");
        assert!(matches!(r_old, Reply::TxnCommitted { .. }), "seed {seed}: the older one did not wait: {r_old:?}");
        assert!(
            all_or_nothing(&c, &[(&a, "old"), (&b, "old")], &[0, 1, 2, 3, 4]),
            "seed {seed}: the older one, committed last, is not what every replica holds"
        );
        assert_eq!(intents(&c, &[0, 1, 2, 3, 4]), 0, "seed {seed}");

        // The other way round: the older one holds; the younger one dies.
        let c = Cluster::murmur3(5, 3, 4, seed);
        let old = c.request(0, ClientRequest::Txn(spec(&[], &[(&a, Some("old")), (&b, Some("old"))])));
        let young = c.request(1, ClientRequest::Txn(spec(&[], &[(&a, Some("young")), (&b, Some("young"))])));
        let (of_old, of_young) = (traffic_of(&c, 0), traffic_of(&c, 1));
        c.net.run_matching(&c, &|e| of_old(e) && (is_prepare(e) || is_vote(e)));
        let prepares = c.net.count_matching(&|e| of_young(e) && is_prepare(e));
        c.net.run_matching(&c, &|e| of_young(e) && (is_prepare(e) || is_vote(e)));
        let r_young = c.client.reply(young);
        assert!(matches!(r_young, Some(Reply::Error(Error::Conflict(_)))), "seed {seed}: the younger one did not die: {r_young:?}");
        let sent_young = c.net.trace().iter().filter(|(from, _, request)| *request && *from == c.id(1)).count();
        assert_eq!(sent_young, prepares, "seed {seed}: the younger one sent prepares again");
        c.net.run(&c);
        assert!(matches!(c.client.reply(old), Some(Reply::TxnCommitted { .. })), "seed {seed}");
        assert!(all_or_nothing(&c, &[(&a, "old"), (&b, "old")], &[0, 1, 2, 3, 4]), "seed {seed}");
    }
}

/// No livelock: five coordinators start transactions on the same two keys
/// at once, round after round, in the seed's delivery order. Without
/// waiting, each can take some replicas and all die; with wait-die the
/// oldest of a round waits out the others, so every round commits one.
#[test]
fn contending_transactions_commit_one_every_round() {
    let mut committed = 0;
    for seed in 0..30 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, _) = layout(&c);
        for round in 0..10 {
            let value = format!("{round}");
            let tokens: Vec<u64> =
                (0..5).map(|i| c.request(i, ClientRequest::Txn(spec(&[], &[(&a, Some(&value)), (&b, Some(&value))])))).collect();
            c.net.run(&c);
            let wins = tokens.iter().filter(|&&t| matches!(c.client.reply(t), Some(Reply::TxnCommitted { .. }))).count();
            for &t in &tokens {
                let r = c.client.reply(t);
                assert!(
                    matches!(r, Some(Reply::TxnCommitted { .. } | Reply::Error(Error::Conflict(_)))),
                    "seed {seed} round {round}: {r:?}"
                );
            }
            assert!(wins >= 1, "seed {seed} round {round}: all five aborted (livelock)");
            committed += wins;
            assert_eq!(intents(&c, &[0, 1, 2, 3, 4]), 0, "seed {seed} round {round}");
            assert!(all_or_nothing(&c, &[(&a, &value), (&b, &value)], &[0, 1, 2, 3, 4]), "seed {seed} round {round}");
        }
    }
    // Some rounds commit more than one: the oldest waited out a younger one that committed first.
    assert!(committed > 300, "{committed} commits in 300 rounds: no round committed two");
}

/// A participant dies and the link between two nodes starts losing every
/// message, at a point each seed picks (after some deliveries, in the
/// seed's order): the transaction commits on the quorums left or aborts;
/// after the heal and the replicas' recovery the live replicas hold all of
/// it or none, as the client was told (when it was told), and no intent is left.
#[test]
fn a_participant_dead_and_messages_lost_at_any_point_leave_all_or_nothing() {
    let mut outcomes = [0, 0];
    for seed in 0..80u64 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let (a, b, via) = layout(&c);
        let t = c.request(via, ClientRequest::Txn(spec(&[], &[(&a, Some("1")), (&b, Some("2"))])));
        let victims: Vec<usize> =
            c.replicas_of(a.as_bytes()).into_iter().chain(c.replicas_of(b.as_bytes())).filter(|&i| i != via).collect();
        let victim = victims[(seed as usize / 3) % victims.len()];
        let (x, y) = (seed as usize % 5, (seed as usize / 5) % 5);
        for _ in 0..(seed * 7919) % 30 {
            c.background();
            if !c.net.step_matching(&|_| true) {
                break;
            }
        }
        c.net.kill(c.id(victim));
        if x != y {
            c.net.cut(c.id(x), c.id(y));
        }
        for _ in 0..4 {
            c.net.run(&c);
            c.net.expire();
        }
        c.net.heal();
        c.net.run(&c);
        let live: Vec<usize> = (0..5).filter(|&i| i != victim).collect();
        settle(&c, &live);
        assert_eq!(intents(&c, &live), 0, "seed {seed}: intents left after the heal");
        let applied = all_or_nothing(&c, &[(&a, "1"), (&b, "2")], &live);
        match c.client.reply(t) {
            Some(Reply::TxnCommitted { .. }) => assert!(applied, "seed {seed}: told committed, not applied"),
            Some(Reply::Error(e @ (Error::Conflict(_) | Error::Unavailable(_)))) => assert!(!applied, "seed {seed}: told {e:?}, applied"),
            // The outcome was unknown to the coordinator (a timeout): either is right.
            Some(Reply::Error(Error::Timeout(_))) => {}
            other => panic!("seed {seed}: the client was answered {other:?}"),
        }
        outcomes[usize::from(applied)] += 1;
    }
    assert!(outcomes[0] > 0 && outcomes[1] > 0, "both outcomes reached: {outcomes:?}");
}
