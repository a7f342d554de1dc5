//! The coordinator's read, write, repair and hint logic on the simulated
//! network, each over many seeds (one interleaving of deliveries per seed).

use super::*;
use crate::cluster::consistency::Consistency::{All, One, Quorum};
use crate::cluster::key::Key;
use crate::storage::cell::Version;

const SEEDS: u64 = 24;
/// Replicas n1, n2, n3 of a 4-node ring at RF 3; n0 coordinates without holding it.
const KEY: u8 = 70;

fn key() -> Key {
    Key::byte(KEY)
}

fn text(v: Box<[u8]>) -> String {
    String::from_utf8(v.into()).expect("the tests write text")
}

fn put(c: &Cluster, via: usize, value: &str, level: crate::cluster::consistency::Consistency) -> u64 {
    c.request(via, ClientRequest::Put { key: key(), value: value.into(), level, condition: None })
}

fn get(c: &Cluster, via: usize, level: crate::cluster::consistency::Consistency) -> u64 {
    c.request(via, ClientRequest::Get { key: key(), level })
}

fn value_at(c: &Cluster, i: usize) -> Option<String> {
    c.nodes[i].store.get(key().as_bytes()).and_then(|v: Version| v.value).map(text)
}

fn read_value(reply: Option<Reply>) -> Option<String> {
    match reply {
        Some(Reply::Read(v)) => v.and_then(|v| v.value).map(text),
        other => panic!("expected a read answer, got {other:?}"),
    }
}

fn cluster(seed: u64) -> Cluster {
    let c = Cluster::new(4, 3, seed);
    assert_eq!(c.replicas(KEY), vec![1, 2, 3]);
    c
}

#[test]
fn quorum_is_reached_with_one_replica_silent_and_the_silent_one_gets_a_hint() {
    for seed in 0..SEEDS {
        let c = cluster(seed);
        c.net.cut(c.id(0), c.id(3));
        let t = put(&c, 0, "v1", Quorum);
        c.net.run(&c);
        match c.client.reply(t) {
            Some(Reply::Write { acks, .. }) => assert_eq!(acks, 2, "seed {seed}"),
            other => panic!("seed {seed}: {other:?}"),
        }
        assert_eq!(value_at(&c, 3), None, "seed {seed}: the silent replica got nothing");
        assert_eq!(c.nodes[0].hints.count(c.id(3)), 0, "seed {seed}: no hint before the timeout");
        c.net.expire();
        assert_eq!(c.nodes[0].hints.count(c.id(3)), 1, "seed {seed}: the timed-out write is hinted");
        let t = get(&c, 0, Quorum);
        c.net.run(&c);
        assert_eq!(read_value(c.client.reply(t)), Some("v1".into()), "seed {seed}");
        // ALL cannot be had: refused before anything is sent.
        let sent = c.net.delivered();
        let t = get(&c, 0, All);
        assert!(matches!(c.client.reply(t), Some(Reply::Error(Error::Unavailable(_)))), "seed {seed}");
        assert_eq!(c.net.delivered(), sent);
    }
}

#[test]
fn a_hint_kept_for_a_dropped_write_is_replayed_after_the_heal() {
    for seed in 0..SEEDS {
        let c = cluster(seed);
        c.net.cut(c.id(0), c.id(2));
        let t = put(&c, 0, "hinted", Quorum);
        c.net.run(&c);
        assert!(matches!(c.client.reply(t), Some(Reply::Write { .. })), "seed {seed}");
        c.net.expire();
        assert_eq!(c.nodes[0].hints.count(c.id(2)), 1, "seed {seed}");
        // Still cut: a replay finds the peer down and keeps the hint.
        c.nodes[0].replay_hints(c.id(2));
        assert_eq!(c.nodes[0].hints.count(c.id(2)), 1, "seed {seed}");
        c.net.heal();
        std::thread::scope(|s| {
            let replay = s.spawn(|| c.nodes[0].replay_hints(c.id(2)));
            while !replay.is_finished() {
                c.net.run(&c);
                std::thread::yield_now();
            }
        });
        assert_eq!(value_at(&c, 2), Some("hinted".into()), "seed {seed}: the hint reached its replica");
        assert_eq!(c.nodes[0].hints.count(c.id(2)), 0, "seed {seed}: and was removed once acked");
    }
}

/// n1 misses a write (no hint replayed), then a QUORUM read that can only be
/// answered by n1 and n2 must bring n1 up to date before it answers.
#[test]
fn a_quorum_read_repairs_a_stale_replica_before_it_answers() {
    for seed in 0..SEEDS {
        let c = cluster(seed);
        c.net.cut(c.id(0), c.id(1));
        put(&c, 0, "new", Quorum);
        c.net.run(&c);
        c.net.expire();
        c.net.heal();
        assert_eq!(value_at(&c, 1), None, "seed {seed}: n1 is stale");
        c.net.cut(c.id(0), c.id(3));
        let t = get(&c, 0, Quorum);
        let n1 = c.id(1);
        // Everything but the repair write to n1.
        c.net.run_matching(&c, &|e| !(e.is_write() && e.to == n1));
        assert_eq!(c.client.reply(t), None, "seed {seed}: answered before the stale replica was repaired");
        assert_eq!(value_at(&c, 1), None, "seed {seed}");
        c.net.run(&c);
        assert_eq!(read_value(c.client.reply(t)), Some("new".into()), "seed {seed}");
        assert_eq!(value_at(&c, 1), Some("new".into()), "seed {seed}: repaired");
    }
}

/// A ONE read answered by a stale replica; the other replicas' replies come
/// after the answer, and the stale one is repaired in the background.
#[test]
fn replies_after_the_answer_still_repair() {
    for seed in 0..SEEDS {
        let c = cluster(seed);
        put(&c, 0, "old", All);
        c.net.run(&c);
        c.net.cut(c.id(0), c.id(1));
        put(&c, 0, "new", Quorum);
        c.net.run(&c);
        c.net.expire();
        c.net.heal();
        assert_eq!(value_at(&c, 1), Some("old".into()), "seed {seed}");
        let t = get(&c, 0, One);
        let (n0, n1) = (c.id(0), c.id(1));
        // Only n1 (asked directly: the first live replica) gets through at first.
        c.net.run_matching(&c, &|e| e.between(n0, n1));
        assert_eq!(read_value(c.client.reply(t)), Some("old".into()), "seed {seed}: ONE takes the first reply");
        assert!(c.net.pending() > 0, "seed {seed}: the other replicas have not answered yet");
        c.net.run(&c);
        assert_eq!(value_at(&c, 1), Some("new".into()), "seed {seed}: the late replies repaired n1");
        assert_eq!(read_value(c.client.reply(t)), Some("old".into()), "seed {seed}: answered once");
    }
}

/// The same seed gives the same interleaving: the same deliveries in the same
/// order and the same final cells (timestamps come from the simulated clock,
/// so even concurrent writes to one key resolve the same way).
#[test]
fn a_seed_replays_exactly() {
    let run = |seed: u64| {
        let c = Cluster::new(5, 3, seed);
        let mut pending = Vec::new();
        for i in 0..20u8 {
            let key = Key::byte(i.wrapping_mul(53));
            c.request(i as usize % 5, ClientRequest::Put { key: key.clone(), value: format!("a{i}").into(), level: One, condition: None });
            c.request((i as usize + 1) % 5, ClientRequest::Put { key, value: format!("b{i}").into(), level: One, condition: None });
            // Deliver a few events at a time, so requests overlap.
            for _ in 0..3 {
                c.net.step_matching(&|_| true);
            }
            pending.push(c.net.pending());
        }
        c.net.run(&c);
        let cells: Vec<Vec<Option<String>>> =
            c.nodes.iter().map(|n| n.store.snapshot().into_iter().map(|(_, v)| v.value.map(text)).collect()).collect();
        (c.net.trace(), pending, cells)
    };
    for seed in 0..8 {
        assert_eq!(run(seed), run(seed), "seed {seed}");
    }
    assert_ne!(run(1).0, run(2).0, "different seeds should give different interleavings");
}

/// The repair thread does not send a blocking repair whose call is already past
/// its deadline: the call hears of a timeout at once (nothing is registered for
/// the sweep to time out).
#[test]
fn a_repair_send_past_its_deadline_is_timed_out_not_sent() {
    use crate::coordinator::command::{Outgoing, Route};
    use crate::node::RepairJob;
    #[derive(Default)]
    struct Heard(Mutex<Vec<(usize, PeerResult)>>);
    impl ReplySink for Heard {
        fn deliver(&self, slot: usize, result: PeerResult) {
            self.0.lock().push((slot, result));
        }
    }
    let c = cluster(0);
    let version = Version::value(crate::storage::hlc::Timestamp { micros: 1, node: 1 }, "x");
    let send = |deadline: Instant| {
        let heard = Arc::new(Heard::default());
        let msg = PeerRequest::Write { key: key(), version: version.clone(), epoch: 0 };
        let sends = vec![Outgoing { slot: 3, to: c.id(2), msg, route: Route::Direct }];
        c.nodes[1].send_repair(RepairJob::Send { sink: heard.clone(), sends, deadline });
        heard
    };
    let late = send(Instant::now() - Duration::from_millis(1));
    assert_eq!(c.net.pending(), 0, "nothing was sent");
    assert!(matches!(late.0.lock().as_slice(), [(3, Err(Error::Timeout(_)))]), "{:?}", late.0.lock());
    let timely = send(Instant::now() + Duration::from_secs(60));
    assert_eq!(c.net.pending(), 1);
    c.net.run(&c);
    assert!(matches!(timely.0.lock().as_slice(), [(3, Ok(_))]), "{:?}", timely.0.lock());
}

/// String keys on a murmur3 ring: with one node cut off from a coordinator,
/// QUORUM writes of many keys succeed, the writes it missed are hinted, and
/// after the heal the hints bring every replica of every key up to date; a
/// QUORUM read of each key then returns what was written.
#[test]
fn murmur3_keys_are_hinted_and_replayed_to_the_replica_that_missed_them() {
    for seed in 0..8 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let keys: Vec<Key> = (0..40).map(|i| Key::trusted(format!("user:{i}").into_bytes())).collect();
        c.net.cut(c.id(0), c.id(4));
        let mut missed = 0;
        for (i, key) in keys.iter().enumerate() {
            let t = c.request(0, ClientRequest::Put { key: key.clone(), value: format!("v{i}").into(), level: Quorum, condition: None });
            c.net.run(&c);
            assert!(matches!(c.client.reply(t), Some(Reply::Write { .. })), "seed {seed} key {key}");
            missed += usize::from(c.replicas_of(key.as_bytes()).contains(&4));
        }
        assert!(missed > 5, "seed {seed}: n4 should hold some of the keys ({missed})");
        c.net.expire();
        assert_eq!(c.nodes[0].hints.count(c.id(4)), missed, "seed {seed}: one hint per key n4 missed");
        c.net.heal();
        std::thread::scope(|s| {
            let replay = s.spawn(|| c.nodes[0].replay_hints(c.id(4)));
            while !replay.is_finished() {
                c.net.run(&c);
                std::thread::yield_now();
            }
        });
        for (i, key) in keys.iter().enumerate() {
            for r in c.replicas_of(key.as_bytes()) {
                let held = c.nodes[r].store.get(key.as_bytes()).and_then(|v| v.value).map(text);
                assert_eq!(held, Some(format!("v{i}")), "seed {seed}: n{r} holds {key}");
            }
            let t = c.request(i % 5, ClientRequest::Get { key: key.clone(), level: Quorum });
            c.net.run(&c);
            assert_eq!(read_value(c.client.reply(t)), Some(format!("v{i}")), "seed {seed}: {key}");
        }
        assert_eq!(c.nodes[0].hints.count(c.id(4)), 0, "seed {seed}");
    }
}

/// Anti-entropy on whole nodes: a replica cut off while keys were written
/// (and a stale one) converges through one pass of exchanges, with no read
/// and no hint replayed; a second pass finds nothing to send and moves
/// nothing but roots.
#[test]
fn an_anti_entropy_pass_brings_every_replica_up_to_date_without_reads_or_hints() {
    for seed in 0..8 {
        let c = Cluster::murmur3(5, 3, 4, seed);
        let keys: Vec<Key> = (0..120).map(|i| Key::trusted(format!("user:{i}").into_bytes())).collect();
        let put = |key: &Key, value: String, via: usize| {
            let t = c.request(via, ClientRequest::Put { key: key.clone(), value: value.into(), level: Quorum, condition: None });
            c.net.run(&c);
            assert!(matches!(c.client.reply(t), Some(Reply::Write { .. })), "seed {seed} key {key}");
        };
        for key in &keys[..60] {
            put(key, "old".into(), 1);
        }
        // n4 misses every later write: the rest of the keys, and new values of some old ones.
        for other in 0..4 {
            c.net.cut(c.id(other), c.id(4));
        }
        for (i, key) in keys.iter().enumerate() {
            if i >= 60 || i.is_multiple_of(3) {
                put(key, format!("v{i}"), i % 4);
            }
        }
        c.net.expire();
        c.net.heal();
        let held = |r: usize, key: &Key| c.nodes[r].store.get(key.as_bytes()).and_then(|v| v.value).map(text);
        let want = |i: usize| if i >= 60 || i.is_multiple_of(3) { format!("v{i}") } else { "old".into() };
        let stale =
            keys.iter().enumerate().filter(|(i, k)| c.replicas_of(k.as_bytes()).contains(&4) && held(4, k) != Some(want(*i))).count();
        assert!(stale > 20, "seed {seed}: n4 should have missed many writes ({stale})");
        // One background pass of every node: each compares the groups it leads.
        let pass = |c: &Cluster| {
            let mut total = crate::coordinator::antientropy::SyncStats::default();
            for node in &c.nodes {
                for slot in 0..=255u8 {
                    if let Some(call) = node.start_sync(slot, false) {
                        c.net.run(c);
                        let m = call.wait();
                        assert!(m.done(), "seed {seed}: slot {slot} from {} finished", node.name());
                        total.add(&m.stats());
                    }
                }
            }
            total
        };
        let first = pass(&c);
        assert_eq!(first.skipped, 0, "seed {seed}");
        assert_eq!(first.cells_sent as usize, stale, "seed {seed}: exactly the cells n4 lacked were sent");
        for (i, key) in keys.iter().enumerate() {
            for r in c.replicas_of(key.as_bytes()) {
                assert_eq!(held(r, key), Some(want(i)), "seed {seed}: n{r} holds {key}");
            }
        }
        let second = pass(&c);
        assert_eq!((second.differing, second.cells_sent), (0, 0), "seed {seed}: nothing differs any more");
        // At most three roots a group (a replica sends none for a group it holds no cell of).
        assert!(second.bytes_compared <= 20 * 3 * second.groups, "seed {seed}: roots only ({} bytes)", second.bytes_compared);
        assert!(first.bytes_compared > second.bytes_compared, "seed {seed}");
    }
}

fn member(name: &str, port: u16) -> crate::cluster::ring::NodeInfo {
    crate::cluster::ring::NodeInfo { id: crate::cluster::ring::node_id(name), name: name.into(), host: "127.0.0.1".into(), port }
}

type Change = Box<dyn Fn(&crate::cluster::metadata::Metadata) -> crate::Result<crate::cluster::metadata::Metadata>>;

/// What one node's metadata change came to on the simulated network.
#[derive(Debug, Clone, PartialEq)]
enum Changed {
    /// Chosen: the new epoch.
    Applied(u64),
    /// Another change was chosen first.
    Lost,
    /// `change` refused (after learning of another change).
    Refused(String),
}

/// Runs the metadata changes `changes` (node, change) at once on the
/// simulated network, as [`Node::change_metadata`] would but one delivery at
/// a time: a round that backs off restarts with a new ballot; one whose
/// outcome is unknown proposes again from what its node now holds (the
/// compare-and-set makes that safe). What each came to.
fn run_meta_changes(c: &Cluster, changes: Vec<(usize, Change)>) -> Vec<Changed> {
    use crate::node::membership::MetaStep;
    use crate::paxos::{Ballot, Outcome};
    let far = std::time::Instant::now() + Duration::from_secs(3600);
    type Round = (Arc<crate::coordinator::call::Call<crate::node::membership::MetaRound>>, u64);
    let mut rounds: Vec<Option<Round>> = Vec::new();
    let mut results: Vec<Option<Changed>> = vec![None; changes.len()];
    for (i, (node, change)) in changes.iter().enumerate() {
        match c.nodes[*node].meta_proposer(change) {
            Ok((next, p)) => rounds.push(Some((c.nodes[*node].start_meta_round(p, None, far), next.epoch))),
            Err(e) => {
                results[i] = Some(Changed::Refused(e.to_string()));
                rounds.push(None);
            }
        }
    }
    for _ in 0..200 {
        c.net.run(c);
        for (i, (node, change)) in changes.iter().enumerate() {
            let n = &c.nodes[*node];
            let Some((call, epoch)) = rounds[i].clone() else { continue };
            match call.with(|m, _| m.take_step()) {
                None => {}
                Some(MetaStep::Retry(_)) => {
                    let p = call.with(|m, _| m.proposer.clone());
                    let _ = n.clock.observe(p.highest_seen().0, Duration::from_secs(3600));
                    rounds[i] = Some((n.start_meta_round(p, Some(Ballot(n.clock.now())), far), epoch));
                }
                Some(MetaStep::Answer(Ok(Outcome::Applied))) => {
                    results[i] = Some(Changed::Applied(epoch));
                    rounds[i] = None;
                }
                Some(MetaStep::Answer(Ok(_))) => {
                    results[i] = Some(Changed::Lost);
                    rounds[i] = None;
                }
                Some(MetaStep::Answer(Err(_))) => match n.meta_proposer(change) {
                    Ok((next, p)) => rounds[i] = Some((n.start_meta_round(p, None, far), next.epoch)),
                    Err(e) => {
                        results[i] = Some(Changed::Refused(e.to_string()));
                        rounds[i] = None;
                    }
                },
            }
        }
        if results.iter().all(Option::is_some) {
            c.net.run(c); // the commits after the answers
            return results.into_iter().map(Option::unwrap).collect();
        }
    }
    panic!("metadata changes did not finish: {results:?}");
}

/// The cluster metadata by consensus, on the simulated network: two nodes
/// propose conflicting changes at once (each a different joining member);
/// exactly one is chosen, every voter that hears the commit moves to its
/// epoch, and the other finds the winner's movement under way. A node cut
/// off during the change catches up from a voter once healed, and an older
/// epoch arriving late never takes a node back.
#[test]
fn concurrent_metadata_changes_one_wins_and_a_node_that_missed_it_catches_up() {
    use crate::cluster::metadata::{Metadata, NodeState};
    for seed in 0..16 {
        let c = Cluster::new(5, 3, seed);
        for i in 0..4 {
            c.net.cut(c.id(i), c.id(4));
        }
        let join = |name: &'static str, port| -> Change { Box::new(move |m: &Metadata| m.begin_join(member(name, port), None, false)) };
        let results = run_meta_changes(&c, vec![(0, join("x", 100)), (1, join("y", 101))]);
        let won: Vec<usize> = (0..2).filter(|&i| matches!(results[i], Changed::Applied(_))).collect();
        assert_eq!(won.len(), 1, "seed {seed}: exactly one change wins: {results:?}");
        let (winner, loser) = if won[0] == 0 { ("x", 1) } else { ("y", 0) };
        assert!(
            results[loser] == Changed::Lost
                || matches!(&results[loser], Changed::Refused(e) if e.contains(&format!("a join of {winner} is under way"))),
            "seed {seed}: {results:?}"
        );
        assert_eq!(c.nodes[4].view().epoch(), 1, "seed {seed}: n4 was cut off");
        c.net.heal();
        std::thread::scope(|s| {
            let up = s.spawn(|| {
                let all: Vec<bool> = c.nodes.iter().map(|n| n.catch_up()).collect();
                all
            });
            while !up.is_finished() {
                c.net.run(&c);
                std::thread::yield_now();
            }
            assert!(up.join().unwrap().iter().all(|&a| a), "seed {seed}: every node heard from a voter");
        });
        for i in 0..5 {
            let v = c.nodes[i].view();
            assert_eq!(v.epoch(), 2, "seed {seed}: n{i} holds the new epoch");
            assert_eq!(v.meta.named(winner).map(|m| m.state), Some(NodeState::Joining), "seed {seed} n{i}");
            assert!(v.meta.named(if winner == "x" { "y" } else { "x" }).is_none(), "seed {seed} n{i}");
        }
        // The loser asked again: the winner's join is under way, one change at a time.
        let again = c.nodes[loser].meta_proposer(join("z", 102)).unwrap_err().to_string();
        assert!(again.contains(&format!("a join of {winner} is under way")), "seed {seed}: {again}");
        // The next epoch everywhere; then epoch 2 offered late: nobody goes back.
        let epoch2 = c.nodes[0].view().meta.clone();
        let finish: Change = Box::new(|m: &Metadata| m.finish());
        assert_eq!(run_meta_changes(&c, vec![(2, finish)]), vec![Changed::Applied(3)], "seed {seed}");
        for i in 0..5 {
            assert_eq!(c.nodes[i].view().epoch(), 3, "seed {seed}: n{i} at epoch 3");
            assert_eq!(c.nodes[i].view().meta.named(winner).map(|m| m.state), Some(NodeState::Normal));
        }
        assert!(!c.nodes[3].adopt(epoch2, crate::paxos::Ballot(c.nodes[3].clock.now())).unwrap());
        assert_eq!(c.nodes[3].view().epoch(), 3, "seed {seed}: an older epoch is never taken");
    }
}

/// `n` nodes where n0, cut off meanwhile, missed the epoch that starts n4's
/// decommission (epoch 2, chosen by the others); the network healed, n0
/// still at epoch 1. The cluster and n4's id.
fn n0_misses_a_decommission(n: usize, seed: u64) -> (Cluster, NodeId) {
    use crate::cluster::metadata::{Metadata, MoveKind};
    let c = Cluster::new(n, 3, seed);
    for i in 1..n {
        c.net.cut(c.id(0), c.id(i));
    }
    let leaver = c.id(4);
    let leave: Change = Box::new(move |m: &Metadata| m.begin_leave(leaver, MoveKind::Decommission, false));
    assert_eq!(run_meta_changes(&c, vec![(1, leave)]), vec![Changed::Applied(2)], "seed {seed}");
    c.net.heal();
    assert_eq!(c.nodes[0].view().epoch(), 1, "seed {seed}: n0 missed the change");
    (c, leaver)
}

/// Epochs on requests: a coordinator that missed the epoch starting a
/// decommission chooses a key's replicas at the old epoch, so its write lacks
/// the pending replica the new epoch adds. The replicas at the new epoch
/// refuse it as stale; the coordinator catches up from a voter and sends it
/// again, now to the pending replica too, and the client hears the rerouted
/// write's outcome. Through a deferred reply (even seeds) and a waiting
/// coordinator (odd seeds).
#[test]
fn a_write_routed_at_an_old_epoch_is_refused_and_sent_again_at_the_new_one() {
    for seed in 0..8 {
        let (c, leaver) = n0_misses_a_decommission(5, seed);
        // A key n4 holds whose new replica is neither n0 nor one of its old replicas.
        let new_view = c.nodes[1].view();
        let (k, pending) = (0..=255u8)
            .find_map(|k| {
                let (targets, n) = new_view.write_targets(&Key::byte(k));
                let pending = *targets.last()?;
                (n == 1 && targets.contains(&leaver) && pending != c.id(0)).then_some((k, pending))
            })
            .expect("a key moves off n4");
        let key = Key::byte(k);
        let value = format!("v{seed}");
        let stop = std::sync::atomic::AtomicBool::new(false);
        let token = std::thread::scope(|s| {
            let background = s.spawn(|| {
                while !stop.load(std::sync::atomic::Ordering::Acquire) {
                    c.background();
                    std::thread::yield_now();
                }
            });
            let (token, waiting) = if seed % 2 == 0 {
                let put = ClientRequest::Put { key: key.clone(), value: value.clone().into(), level: Quorum, condition: None };
                (Some(c.request(0, put)), None)
            } else {
                let node = c.nodes[0].clone();
                let (key, value) = (key.clone(), value.clone().into_bytes());
                (None, Some(s.spawn(move || node.write(key, Some(value), Quorum, None).map(|_| ()))))
            };
            let done = || match (token, &waiting) {
                (Some(t), _) => c.client.reply(t).is_some(),
                (None, Some(w)) => w.is_finished(),
                _ => unreachable!(),
            };
            let give_up = std::time::Instant::now() + Duration::from_secs(30);
            while std::time::Instant::now() < give_up {
                if done() {
                    break;
                }
                // Deliveries only: the background thread carries out the
                // reroute, whose catch-up waits on these deliveries.
                while c.net.step_matching(&|_| true) {}
                std::thread::yield_now();
            }
            stop.store(true, std::sync::atomic::Ordering::Release);
            background.join().unwrap();
            if let Some(w) = waiting {
                assert!(w.is_finished(), "seed {seed}: the write settled");
                w.join().unwrap().unwrap_or_else(|e| panic!("seed {seed}: {e}"));
            }
            token
        });
        if let Some(t) = token {
            assert!(matches!(c.client.reply(t), Some(Reply::Write { .. })), "seed {seed}: {:?}", c.client.reply(t));
        }
        c.net.run(&c);
        let p = c.nodes.iter().position(|n| n.me == pending).unwrap();
        let held = c.nodes[p].store.get(key.as_bytes()).and_then(|v| v.value).map(|v| v.to_vec());
        assert_eq!(held, Some(value.into_bytes()), "seed {seed}: the pending replica n{p} of key {k} holds the write");
        assert_eq!(c.nodes[0].view().epoch(), 2, "seed {seed}: n0 caught up");
    }
}

/// SERIAL through a coordinator that missed the epoch starting a
/// decommission: its prepares go to the key's old replicas only, with the old
/// quorum, leaving out the pending replica the new epoch counts in. The
/// replicas at the new epoch refuse them as stale (nothing promised); the
/// operation starts over once its node has caught up, now with the pending
/// replica among its replicas and in its quorum, and is applied. With the
/// acceptors' check off it is decided by the old quorum alone and the
/// pending replica never hears of it.
#[test]
fn a_serial_operation_routed_at_an_old_epoch_starts_over_at_the_new_one() {
    use crate::cluster::consistency::Consistency::Serial;
    for seed in 0..4 {
        let (c, leaver) = n0_misses_a_decommission(6, seed);
        let new_view = c.nodes[1].view();
        // A key n4 holds, n0 does not, whose new replica is not n0.
        let (k, pending) = (0..=255u8)
            .find_map(|k| {
                let (targets, n) = new_view.write_targets(&Key::byte(k));
                let pending = *targets.last()?;
                (n == 1 && targets.contains(&leaver) && !targets.contains(&c.id(0))).then_some((k, pending))
            })
            .expect("a key moves off n4");
        let p = c.nodes.iter().position(|n| n.me == pending).unwrap();
        let before = c.net.trace().len();
        let put = ClientRequest::Put { key: Key::byte(k), value: format!("s{seed}").into(), level: Serial, condition: None };
        let token = c.request(0, put);
        await_reply(&c, token);
        assert!(matches!(c.client.reply(token), Some(Reply::Write { .. })), "seed {seed}: {:?}", c.client.reply(token));
        let asked_pending = c.net.trace()[before..].iter().any(|&(from, to, request)| from == c.id(0) && to == pending && request);
        assert!(asked_pending, "seed {seed}: the pending replica n{p} of key {k} took part");
        assert_eq!(c.nodes[0].view().epoch(), 2, "seed {seed}: n0 caught up");
        c.nodes[0].send_commits(c.nodes[0].take_commits());
        c.net.run(&c);
        let held = c.nodes[p].store.get(Key::byte(k).as_bytes()).and_then(|v| v.value).map(text);
        assert_eq!(held, Some(format!("s{seed}")), "seed {seed}: the commit reached n{p}");
    }
}

/// Runs `work` on a thread of its own (a node's membership thread) while
/// this one delivers messages and another runs the nodes' background work
/// (the repair thread, and the membership thread's catch-up of a node that
/// heard of a newer epoch, as a replica runs them), until it returns (at
/// most 60 s).
fn drive<T: Send>(c: &Cluster, work: impl FnOnce() -> T + Send) -> T {
    let stop = std::sync::atomic::AtomicBool::new(false);
    std::thread::scope(|s| {
        let worker = s.spawn(work);
        let background = s.spawn(|| {
            while !stop.load(std::sync::atomic::Ordering::Acquire) {
                c.background();
                for n in &c.nodes {
                    if n.behind() {
                        n.catch_up();
                    }
                }
                std::thread::yield_now();
            }
        });
        // The work ends by itself (a movement's waits and a request's deadline are bounded).
        let give_up = std::time::Instant::now() + Duration::from_secs(60);
        while !worker.is_finished() && std::time::Instant::now() < give_up {
            while c.net.step_matching(&|_| true) {}
            std::thread::yield_now();
        }
        stop.store(true, std::sync::atomic::Ordering::Release);
        background.join().unwrap();
        assert!(worker.is_finished(), "the work finished within 60 s");
        worker.join().unwrap()
    })
}

/// A movement copies the Paxos acceptor state with the data. A value
/// accepted by a quorum of a key's replicas — the leaving n4 and one other,
/// x — is chosen (its client was told so) though no commit has arrived
/// anywhere. n4 is decommissioned: its successor p takes its place among
/// the key's replicas. A SERIAL read through p, cut off from x, is decided
/// by p and the third old replica y, which never heard of the value: only
/// the acceptor state p was given (n4's and x's, merged) makes the read
/// find the chosen value, complete it and return it. Without the copy it
/// returns nothing — a write its client was told had succeeded, lost.
#[test]
fn a_chosen_value_whose_commits_never_arrived_survives_a_decommission() {
    use crate::cluster::consistency::Consistency::Serial;
    use crate::cluster::metadata::{Metadata, MoveKind};
    use crate::paxos::{Ballot, Proposal, Request};
    for seed in 0..4 {
        let c = Cluster::new(5, 3, seed);
        let leaver = c.id(4);
        let leave: Change = Box::new(move |m: &Metadata| m.begin_leave(leaver, MoveKind::Decommission, false));
        assert_eq!(run_meta_changes(&c, vec![(1, leave)]), vec![Changed::Applied(2)], "seed {seed}");
        let view = c.nodes[0].view();
        let index = |id: NodeId| c.nodes.iter().position(|n| n.me == id).unwrap();
        // A key n4 holds, with its pending replica p and the other two, x and y.
        let (k, p, x, y) = (0..=255u8)
            .find_map(|k| {
                let (targets, n) = view.write_targets(&Key::byte(k));
                let pending = *targets.last()?;
                let others: Vec<NodeId> = targets[..targets.len() - 1].iter().copied().filter(|&t| t != leaver).collect();
                (n == 1 && targets.contains(&leaver) && others.len() == 2).then(|| (k, pending, others[0], others[1]))
            })
            .expect("a key moves off n4");
        let (p, x, y) = (index(p), index(x), index(y));
        let key = Key::byte(k);
        // Accepted by n4 and x, as a proposer whose commits were all lost would leave it.
        let ballot = Ballot(c.nodes[4].clock.now());
        let proposal = Proposal { ballot, origin: ballot, value: Some(b"chosen".to_vec().into_boxed_slice()) };
        for i in [4, x] {
            let (r, _) = c.nodes[i].serve_paxos(Request::Prepare { key: key.clone(), ballot }, 2);
            assert!(matches!(r, Ok(crate::message::PeerResponse::Paxos(crate::paxos::Response::Promise { .. }))), "seed {seed}: {r:?}");
            let (r, _) = c.nodes[i].serve_paxos(Request::Propose { key: key.clone(), proposal: proposal.clone() }, 2);
            assert!(matches!(r, Ok(crate::message::PeerResponse::Paxos(crate::paxos::Response::Accepted { .. }))), "seed {seed}: {r:?}");
        }
        let cluster_id = view.meta.cluster_id;
        let op = proto::membership_request::Op::Decommission as i32;
        c.nodes[4].membership_request(proto::MembershipRequest { op, cluster_id, ..Default::default() }).unwrap();
        drive(&c, || c.nodes[4].membership_work());
        let report = c.nodes[4].membership_request(proto::MembershipRequest::default()).unwrap();
        assert!(!report.running && report.error.is_empty(), "seed {seed}: {report:?}");
        c.net.run(&c);
        let state = c.nodes[0].view().meta.named("n4").map(|m| m.state);
        assert_eq!(state, Some(crate::cluster::metadata::NodeState::Removed), "seed {seed}: n4 left");
        assert!(c.nodes[0].view().ring.replicas(key.as_bytes()).contains(&c.id(p)), "seed {seed}: n{p} holds key {k} now");
        assert_eq!(value_of(&c, p, &key), None, "seed {seed}: nothing was committed, so no cell was copied");
        c.net.cut(c.id(p), c.id(x));
        let t = c.request(p, ClientRequest::Get { key: key.clone(), level: Serial });
        await_reply(&c, t);
        let read = match c.client.reply(t) {
            Some(Reply::SerialRead(v)) => v.map(|v| String::from_utf8_lossy(&v).into_owned()),
            other => panic!("seed {seed}: {other:?}"),
        };
        assert_eq!(read, Some("chosen".into()), "seed {seed}: the SERIAL read through n{p} and n{y}");
        c.nodes[p].send_commits(c.nodes[p].take_commits());
        c.net.run(&c);
        assert_eq!(value_of(&c, y, &key), Some("chosen".into()), "seed {seed}: the read completed it on n{y}");
    }
}

/// Delivers messages and runs the background work (see [`drive`]) until the
/// client request `token` is answered, or 50 s have passed (the caller's
/// assertion on the reply then fails).
fn await_reply(c: &Cluster, token: u64) {
    let give_up = std::time::Instant::now() + Duration::from_secs(50);
    drive(c, || {
        while c.client.reply(token).is_none() && std::time::Instant::now() < give_up {
            std::thread::yield_now();
        }
    });
}

fn value_of(c: &Cluster, i: usize, key: &Key) -> Option<String> {
    c.nodes[i].store.get(key.as_bytes()).and_then(|v: Version| v.value).map(text)
}

/// A SERIAL operation whose prepares were promised at the old epoch, and
/// whose proposals then reach replicas that have moved on to the epoch
/// starting a decommission: every replica it proposed to refuses the
/// proposal as stale (nothing accepted), so nothing holds it; the operation
/// starts over once its node has caught up, now with the pending replica
/// among its replicas, and is applied, its commit reaching the pending
/// replica.
#[test]
fn a_serial_proposal_refused_as_stale_after_its_promises_starts_over_at_the_new_epoch() {
    use crate::cluster::consistency::Consistency::Serial;
    use crate::cluster::metadata::MoveKind;
    use crate::paxos::Ballot;
    for seed in 0..4 {
        let c = Cluster::new(6, 3, seed);
        let leaver = c.id(4);
        let next = c.nodes[1].view().meta.begin_leave(leaver, MoveKind::Decommission, false).unwrap();
        // A key n4 holds and n0 (the coordinator) does not.
        let k = (0..=255u8).find(|&k| c.replicas(k).contains(&4) && !c.replicas(k).contains(&0)).expect("a key");
        let key = Key::byte(k);
        let token = c.request(0, ClientRequest::Put { key: key.clone(), value: format!("s{seed}").into(), level: Serial, condition: None });
        let propose = |e: &Event| matches!(&e.kind, Kind::Request(PeerRequest::Paxos(crate::paxos::Request::Propose { .. }, _)));
        // The prepares and their promises, at epoch 1 (the sends a reply
        // asks for leave from the background); the proposals held back.
        for _ in 0..100 {
            while c.net.step_matching(&|e| !propose(e)) {}
            c.background();
            if c.net.count_matching(&|e| !propose(e)) == 0 && c.net.count_matching(&propose) > 0 {
                break;
            }
        }
        let held = c.net.count_matching(&propose);
        assert!(held >= 2, "seed {seed}: the proposals wait ({held})");
        // Meanwhile every replica but n0 moves to the epoch starting n4's decommission.
        for n in &c.nodes[1..] {
            assert!(n.adopt(next.clone(), Ballot(n.clock.now())).unwrap(), "seed {seed}");
        }
        let (targets, pending) = c.nodes[1].view().write_targets(&key);
        assert_eq!(pending, 1, "seed {seed}: key {k} gains a pending replica");
        let p = c.nodes.iter().position(|n| Some(&n.me) == targets.last()).unwrap();
        let before = c.net.trace().len();
        await_reply(&c, token);
        assert!(matches!(c.client.reply(token), Some(Reply::Write { .. })), "seed {seed}: {:?}", c.client.reply(token));
        assert_eq!(c.nodes[0].view().epoch(), 2, "seed {seed}: n0 caught up");
        let asked_pending = c.net.trace()[before..].iter().any(|&(from, to, request)| from == c.id(0) && to == c.id(p) && request);
        assert!(asked_pending, "seed {seed}: the pending replica n{p} took part");
        c.nodes[0].send_commits(c.nodes[0].take_commits());
        c.net.run(&c);
        assert_eq!(value_of(&c, p, &key), Some(format!("s{seed}")), "seed {seed}: the commit reached n{p}");
    }
}
