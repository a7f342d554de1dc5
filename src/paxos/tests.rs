//! Unit tests of the acceptor and proposer, and a seeded simulated network
//! that runs several proposers against crashing acceptors and checks the
//! chosen history against every operation's outcome.

use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

use super::acceptor::{Acceptor, PersistRecord};
use super::proposer::{Action, Backoff, Proposer};
use super::*;
use crate::cluster::ring::NodeId;
use crate::storage::hlc::Timestamp;

fn b(micros: u64, node: u32) -> Ballot {
    Ballot(Timestamp { micros, node })
}

fn k(s: &str) -> Key {
    Key::trusted(s.as_bytes().to_vec())
}

fn val(s: &str) -> Option<Box<[u8]>> {
    Some(s.as_bytes().to_vec().into_boxed_slice())
}

fn prop(ballot: Ballot, v: &str) -> Proposal {
    Proposal { ballot, origin: ballot, value: val(v) }
}

// ---------------------------------------------------------------- acceptor

#[test]
fn acceptor_promises_only_higher_ballots() {
    let mut a = Acceptor::new();
    let key = k("k1");
    let (rec, reply) = a.on_prepare(&key, b(10, 1), None);
    assert_eq!(rec, Some(PersistRecord::Promise { key: key.clone(), ballot: b(10, 1) }));
    assert!(matches!(reply, Response::Promise { accepted: None, committed: None, .. }));
    // The same ballot again: promised again, nothing new to persist.
    let (rec, reply) = a.on_prepare(&key, b(10, 1), None);
    assert_eq!(rec, None);
    assert!(matches!(reply, Response::Promise { .. }));
    // Lower, and equal micros with a lower node: refused, with the floor.
    for low in [b(9, 9), b(10, 0)] {
        let (rec, reply) = a.on_prepare(&key, low, None);
        assert_eq!(rec, None);
        assert_eq!(reply, Response::Rejected { key: key.clone(), ballot: low, promised: b(10, 1) });
    }
    // At or below the store's cell: refused even with no promise.
    let cell = Version::value(Timestamp { micros: 50, node: 3 }, "x");
    let (rec, reply) = a.on_prepare(&k("k2"), b(50, 3), Some(&cell));
    assert_eq!(rec, None);
    assert!(matches!(reply, Response::Rejected { promised, .. } if promised == b(50, 3)));
    let (_, reply) = a.on_prepare(&k("k2"), b(51, 0), Some(&cell));
    assert!(matches!(reply, Response::Promise { committed: Some(c), .. } if c == cell));
}

#[test]
fn acceptor_never_accepts_below_its_promise() {
    let mut a = Acceptor::new();
    let key = k("k1");
    a.on_prepare(&key, b(20, 1), None);
    let (rec, reply) = a.on_propose(&key, prop(b(19, 9), "old"));
    assert_eq!(rec, None);
    assert!(matches!(reply, Response::Rejected { promised, .. } if promised == b(20, 1)));
    assert_eq!(a.state(&key).unwrap().accepted, None);
    // At the promise, and above it without a prepare: accepted.
    let (rec, reply) = a.on_propose(&key, prop(b(20, 1), "v1"));
    assert!(matches!(rec, Some(PersistRecord::Accept { .. })));
    assert_eq!(reply, Response::Accepted { key: key.clone(), ballot: b(20, 1) });
    let (rec, _) = a.on_propose(&key, prop(b(20, 1), "v1"));
    assert_eq!(rec, None, "a duplicate accept persists nothing");
    let (_, reply) = a.on_propose(&key, prop(b(30, 2), "v2"));
    assert!(matches!(reply, Response::Accepted { .. }));
    // The accept promised 30: a prepare at 25 is refused.
    assert!(matches!(a.on_prepare(&key, b(25, 1), None).1, Response::Rejected { .. }));
    // A promise reports the accepted proposal.
    let (_, reply) = a.on_prepare(&key, b(40, 1), None);
    assert!(matches!(reply, Response::Promise { accepted: Some(p), .. } if p == prop(b(30, 2), "v2")));
}

#[test]
fn acceptor_commit_applies_and_supersedes_accepted() {
    let mut a = Acceptor::new();
    let key = k("k1");
    a.on_propose(&key, prop(b(30, 2), "v2"));
    let (rec, apply, reply) = a.on_commit(&key, prop(b(30, 2), "v2"));
    assert!(matches!(rec, Some(PersistRecord::Commit { .. })));
    assert_eq!(apply, Some(Version::value(Timestamp { micros: 30, node: 2 }, "v2")));
    assert_eq!(reply, Response::Committed { key: key.clone(), ballot: b(30, 2) });
    assert_eq!(a.state(&key).unwrap().accepted, None);
    // An older commit arriving late writes nothing but is acknowledged.
    let (rec, apply, reply) = a.on_commit(&key, prop(b(20, 2), "v1"));
    assert_eq!((rec, apply), (None, None));
    assert!(matches!(reply, Response::Committed { .. }));
    // A proposal at or below the last commit is refused.
    assert!(matches!(a.on_propose(&key, prop(b(30, 2), "v2")).1, Response::Rejected { .. }));
}

#[test]
fn acceptor_restored_from_records_keeps_its_promises() {
    let mut a = Acceptor::new();
    let mut log = Vec::new();
    let (key, key2) = (k("k1"), k("k2"));
    log.extend(a.on_prepare(&key, b(10, 1), None).0);
    log.extend(a.on_propose(&key, prop(b(10, 1), "v1")).0);
    log.extend(a.on_prepare(&key, b(20, 2), None).0);
    log.extend(a.on_propose(&key2, prop(b(5, 1), "w")).0);
    log.extend(a.on_commit(&key2, prop(b(5, 1), "w")).0);
    let mut r = Acceptor::restore(&log);
    assert_eq!(r.state(&key), a.state(&key));
    assert_eq!(r.state(&key2), a.state(&key2));
    assert!(matches!(r.on_prepare(&key, b(15, 9), None).1, Response::Rejected { .. }), "a restarted acceptor broke a promise");
    assert!(matches!(r.on_propose(&key, prop(b(15, 9), "x")).1, Response::Rejected { .. }));
    // Replaying twice changes nothing.
    let twice: Vec<_> = log.iter().chain(log.iter()).cloned().collect();
    assert_eq!(Acceptor::restore(&twice).state(&key), a.state(&key));
    // A lost tail: the unpersisted promise is gone, but it was never answered.
    let r = Acceptor::restore(&log[..2]);
    assert_eq!(r.state(&key).unwrap().promised, b(10, 1));
}

/// Withdrawing an acceptance: only of the proposal held, only while nothing
/// was promised since (nobody has been shown it); a withdrawn proposal is
/// reported by no later promise, and its record replays after the accept.
#[test]
fn acceptor_withdraws_only_an_acceptance_nobody_has_seen() {
    let mut a = Acceptor::new();
    let key = k("k1");
    let mut log = Vec::new();
    log.extend(a.on_prepare(&key, b(10, 1), None).0);
    log.extend(a.on_propose(&key, prop(b(10, 1), "mine")).0);
    assert_eq!(a.withdraw(&key, b(9, 1)), None, "not the ballot held");
    assert_eq!(a.withdraw(&k("other"), b(10, 1)), None, "no state");
    let rec = a.withdraw(&key, b(10, 1)).expect("nothing promised since the accept");
    assert_eq!(rec, PersistRecord::Withdraw { key: key.clone(), ballot: b(10, 1) });
    log.push(rec);
    assert_eq!(a.state(&key).unwrap().accepted, None);
    assert_eq!(a.state(&key).unwrap().promised, b(10, 1), "the promise stays");
    let (_, reply) = a.on_prepare(&key, b(20, 2), None);
    assert!(matches!(reply, Response::Promise { accepted: None, .. }), "a later prepare does not see it: {reply:?}");
    assert_eq!(Acceptor::restore(&log).state(&key).unwrap().accepted, None, "replayed after the accept");
    // Once a higher ballot was promised, the promise showed the acceptance: it stays.
    let mut a = Acceptor::new();
    a.on_propose(&key, prop(b(10, 1), "mine"));
    let (_, reply) = a.on_prepare(&key, b(20, 2), None);
    assert!(matches!(reply, Response::Promise { accepted: Some(_), .. }));
    assert_eq!(a.withdraw(&key, b(10, 1)), None, "someone may complete it now");
    assert!(a.state(&key).unwrap().accepted.is_some());
}

// ---------------------------------------------------------------- proposer

/// Replicas 1..=n on a perfect network; each holds an acceptor and a store.
struct Lan {
    acceptors: BTreeMap<NodeId, (Acceptor, HashMap<Key, Version>)>,
}

impl Lan {
    fn new(n: u32) -> Self {
        Lan { acceptors: (1..=n).map(|i| (NodeId(i), (Acceptor::new(), HashMap::new()))).collect() }
    }

    fn ids(&self) -> Vec<NodeId> {
        self.acceptors.keys().copied().collect()
    }

    fn handle(&mut self, to: NodeId, req: Request) -> Response {
        let (a, store) = self.acceptors.get_mut(&to).unwrap();
        let key = req.key().clone();
        let h = a.handle(req, store.get(&key));
        if let Some(v) = h.apply
            && crate::storage::cell::supersedes(&v, store.get(&key))
        {
            store.insert(key, v);
        }
        h.reply
    }

    /// Runs `p` to its answer, delivering only to `reach`; returns the commits sent after the answer.
    fn run(&mut self, p: &mut Proposer, reach: &[NodeId]) -> usize {
        let mut queue: Vec<(NodeId, Request)> = p.start();
        let mut after_answer = 0;
        let mut answered = false;
        while let Some((to, req)) = (!queue.is_empty()).then(|| queue.remove(0)) {
            if !reach.contains(&to) {
                continue;
            }
            let reply = self.handle(to, req);
            for act in p.on_reply(to, reply) {
                match act {
                    Action::Send { to, msg } => {
                        after_answer += usize::from(answered);
                        queue.push((to, msg));
                    }
                    Action::Answer(_) => answered = true,
                    Action::RetryAfter(_) => {
                        let next = Ballot(Timestamp { micros: p.highest_seen().0.micros + 1, node: 99 });
                        queue.extend(p.restart(next));
                    }
                }
            }
        }
        after_answer
    }
}

#[test]
fn uncontended_write_takes_two_round_trips_and_commits_after_answering() {
    let mut lan = Lan::new(3);
    let ids = lan.ids();
    let mut w = Proposer::new(k("k1"), Op::Write(val("v1")), &ids, &ids, b(100, 7), 1);
    let commits = lan.run(&mut w, &ids);
    assert_eq!(w.outcome(), Some(&Ok(Outcome::Applied)));
    assert_eq!(w.round_trips(), 2);
    assert_eq!(commits, 3, "the commit goes to every replica after the answer");
    for (a, store) in lan.acceptors.values() {
        assert_eq!(store[&k("k1")], Version::value(Timestamp { micros: 100, node: 7 }, "v1"));
        assert_eq!(a.state(&k("k1")), None, "a settled key's state is forgotten");
    }
    let mut r = Proposer::new(k("k1"), Op::Read, &ids, &ids, b(200, 7), 2);
    lan.run(&mut r, &ids);
    assert_eq!(r.outcome(), Some(&Ok(Outcome::Read(val("v1")))));
    assert_eq!(r.round_trips(), 1, "an uncontended read is one round trip");
}

#[test]
fn read_repairs_a_lagging_replica_and_completes_in_flight_proposals() {
    let mut lan = Lan::new(3);
    let ids = lan.ids();
    // A write whose commit reaches only replica 1 (2 and 3 accepted it).
    let mut w = Proposer::new(k("k1"), Op::Write(val("v1")), &ids, &ids, b(100, 7), 1);
    let mut sends = w.start();
    let mut commits = Vec::new();
    while let Some((to, req)) = sends.pop() {
        let reply = lan.handle(to, req);
        for act in w.on_reply(to, reply) {
            if let Action::Send { to, msg } = act {
                if matches!(msg, Request::Commit { .. }) { commits.push((to, msg)) } else { sends.push((to, msg)) }
            }
        }
    }
    assert_eq!(w.outcome(), Some(&Ok(Outcome::Applied)));
    for (to, msg) in commits.into_iter().filter(|(to, _)| *to == NodeId(1)) {
        lan.handle(to, msg);
    }
    // Replicas 1 and 2: 1 has the commit, 2 has it accepted only -> completes it.
    let mut r = Proposer::new(k("k1"), Op::Read, &ids, &ids, b(200, 7), 2);
    lan.run(&mut r, &[NodeId(1), NodeId(2)]);
    assert_eq!(r.outcome(), Some(&Ok(Outcome::Read(val("v1")))));
    // Now 1 and 2 hold a commit; 3 still has the old accepted proposal but
    // the newer commit at 200 supersedes it; a read of {1, 3}: 3 lags -> repair.
    let mut r = Proposer::new(k("k1"), Op::Read, &ids, &ids, b(300, 7), 3);
    lan.run(&mut r, &[NodeId(1), NodeId(3)]);
    assert_eq!(r.outcome(), Some(&Ok(Outcome::Read(val("v1")))));
    assert_eq!(r.round_trips(), 2, "a lagging replica in the quorum costs a repair round trip");
    assert!(lan.acceptors[&NodeId(3)].1.contains_key(&k("k1")));
}

#[test]
fn compare_and_set_variants() {
    let mut lan = Lan::new(5);
    let ids = lan.ids();
    let mut t = 100;
    let mut run = |op: Op, lan: &mut Lan| {
        t += 100;
        let mut p = Proposer::new(k("k"), op, &ids, &ids, b(t, 1), t);
        lan.run(&mut p, &ids);
        p.outcome().cloned().unwrap()
    };
    let cas = |e: Expect, n: Option<Box<[u8]>>| Op::CompareAndSet { expect: e, new: n };
    assert_eq!(run(cas(Expect::Equals(b"a".to_vec().into()), val("b")), &mut lan), Ok(Outcome::NotApplied { current: None }));
    assert_eq!(run(cas(Expect::Absent, val("a")), &mut lan), Ok(Outcome::Applied));
    assert_eq!(run(cas(Expect::Absent, val("z")), &mut lan), Ok(Outcome::NotApplied { current: val("a") }));
    assert_eq!(run(cas(Expect::Equals(b"a".to_vec().into()), val("b")), &mut lan), Ok(Outcome::Applied));
    assert_eq!(run(cas(Expect::Equals(b"a".to_vec().into()), None), &mut lan), Ok(Outcome::NotApplied { current: val("b") }));
    assert_eq!(run(cas(Expect::Equals(b"b".to_vec().into()), None), &mut lan), Ok(Outcome::Applied));
    assert_eq!(run(Op::Read, &mut lan), Ok(Outcome::Read(None)));
    assert_eq!(run(cas(Expect::Absent, val("c")), &mut lan), Ok(Outcome::Applied), "a deleted key is absent");
    assert_eq!(run(Op::Write(None), &mut lan), Ok(Outcome::Applied));
    assert_eq!(run(Op::Read, &mut lan), Ok(Outcome::Read(None)));
}

#[test]
fn errors_say_what_failed() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut p = Proposer::new(k("k1"), Op::Write(val("v")), &ids, &ids[..1], b(1, 1), 1);
    assert!(p.start().is_empty());
    let e = p.outcome().unwrap().clone().unwrap_err();
    assert!(e.to_string().starts_with("Unavailable: need 2 of 3 replicas for key k1, 1 alive"), "{e}");

    // Timeout before proposing: a plain timeout.
    let mut p = Proposer::new(k("k1"), Op::Write(val("v")), &ids, &ids, b(1, 1), 1);
    p.start();
    p.on_timeout();
    let e = p.outcome().unwrap().clone().unwrap_err();
    assert!(matches!(e, PaxosError::Timeout(_)) && e.to_string().contains("not applied"), "{e}");

    // Timeout after proposing: unknown.
    let mut lan = Lan::new(3);
    let mut p = Proposer::new(k("k1"), Op::Write(val("v")), &ids, &ids, b(1, 1), 1);
    for (to, req) in p.start() {
        let reply = lan.handle(to, req);
        p.on_reply(to, reply);
    }
    assert_eq!(p.proposed(), Some(b(1, 1)));
    p.on_timeout();
    let e = p.outcome().unwrap().clone().unwrap_err();
    assert!(e.to_string().starts_with("Unknown: the SERIAL write to key k1 may or may not have been applied"), "{e}");

    // Replies from a non-replica, for another key or an old ballot are ignored.
    let mut p = Proposer::new(k("k1"), Op::Read, &ids, &ids, b(5, 1), 1);
    p.start();
    let promise = |key: &str, ballot| Response::Promise { key: k(key), ballot, accepted: None, committed: None };
    assert!(p.on_reply(NodeId(9), promise("k1", b(5, 1))).is_empty());
    assert!(p.on_reply(NodeId(9), promise("k1", b(5, 1))).is_empty());
    assert!(p.on_reply(NodeId(1), promise("k2", b(5, 1))).is_empty());
    assert!(p.on_reply(NodeId(1), promise("k1", b(4, 1))).is_empty());
    assert!(p.on_reply(NodeId(1), promise("k1", b(5, 1))).is_empty());
    assert!(p.on_reply(NodeId(1), promise("k1", b(5, 1))).is_empty(), "a duplicate promise is counted once");
    assert_eq!(p.on_reply(NodeId(2), promise("k1", b(5, 1))), vec![Action::Answer(Ok(Outcome::Read(None)))]);
}

#[test]
fn a_refused_proposer_backs_off_and_learns_the_higher_ballot() {
    let ids = [NodeId(1), NodeId(2), NodeId(3)];
    let mut p = Proposer::new(k("k1"), Op::Read, &ids, &ids, b(5, 1), 42)
        .with_backoff(Backoff { base: Duration::from_millis(1), max: Duration::from_millis(8) });
    let mut delays = Vec::new();
    for attempt in 0..6u64 {
        if attempt > 0 {
            assert_eq!(p.restart(b(p.highest_seen().0.micros + 1, 1)).len(), 3);
        } else {
            p.start();
        }
        let ballot = p.ballot();
        let refuse = |to| Response::Rejected { key: k("k1"), ballot, promised: b(1000 + attempt, to) };
        assert!(p.on_reply(NodeId(1), refuse(1)).is_empty());
        let acts = p.on_reply(NodeId(2), refuse(2));
        let [Action::RetryAfter(d)] = acts[..] else { panic!("{acts:?}") };
        assert_eq!(p.highest_seen(), b(1000 + attempt, 2));
        delays.push(d);
    }
    assert!(delays.iter().all(|d| *d <= Duration::from_millis(8)), "{delays:?}");
    assert!(delays.windows(2).any(|w| w[0] != w[1]), "randomised: {delays:?}");
}

// ---------------------------------------------------------------- simulation

/// splitmix64: the simulation's only source of randomness.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        crate::rand::splitmix64(&mut self.0)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n.max(1)
    }
    fn chance(&mut self, per_mille: u32) -> bool {
        self.below(1000) < u64::from(per_mille)
    }
}

/// One step of simulated time, in microseconds (for ballots and back-off).
const STEP_MICROS: u64 = 100;

struct Replica {
    id: NodeId,
    down_until: Option<u64>,
    acceptor: Acceptor,
    store: HashMap<Key, Version>,
    log: Vec<PersistRecord>,
    durable_store: HashMap<Key, Version>,
    /// Handled but not yet durable: record, cell, reply (lost by a crash).
    pending: Vec<Pending>,
}

/// A handled request not yet durable: record, cell, and the reply.
type Pending = (Option<PersistRecord>, Option<(Key, Version)>, NodeId, Response);

/// A read-like answer: operation index, record, value returned.
type ReadSeen<'a> = (usize, &'a OpRecord, Option<Box<[u8]>>);

fn merge_into(store: &mut HashMap<Key, Version>, key: Key, v: Version) {
    if crate::storage::cell::supersedes(&v, store.get(&key)) {
        store.insert(key, v);
    }
}

impl Replica {
    fn handle(&mut self, from: NodeId, req: Request) {
        let key = req.key().clone();
        let h = self.acceptor.handle(req, self.store.get(&key));
        if let Some(v) = &h.apply {
            merge_into(&mut self.store, key.clone(), v.clone());
        }
        self.pending.push((h.record, h.apply.map(|v| (key, v)), from, h.reply));
    }

    /// Group commit: everything pending becomes durable, then the replies go.
    fn flush(&mut self) -> Vec<(NodeId, Response)> {
        let mut out = Vec::new();
        for (rec, cell, to, reply) in self.pending.drain(..) {
            self.log.extend(rec);
            if let Some((key, v)) = cell {
                merge_into(&mut self.durable_store, key, v);
            }
            out.push((to, reply));
        }
        out
    }

    fn crash(&mut self, until: u64) {
        self.pending.clear();
        self.down_until = Some(until);
    }

    fn recover(&mut self) {
        self.acceptor = Acceptor::restore(&self.log);
        self.store = self.durable_store.clone();
        self.down_until = None;
    }
}

#[derive(Clone)]
enum Body {
    Req(Request),
    Resp(Response),
}

struct Packet {
    from: NodeId,
    to: NodeId,
    body: Body,
    due: u64,
}

struct Running {
    p: Proposer,
    record: usize,
    deadline: u64,
    retry_at: Option<u64>,
    /// The round the proposer is in and the step it began (thrifty: widened
    /// once it has waited [`WIDEN_STEPS`]).
    round: (u32, u64),
}

/// How long a thrifty round waits for its quorum before going to every replica.
const WIDEN_STEPS: u64 = 60;

struct Client {
    id: NodeId,
    rng: Rng,
    left: usize,
    next_at: u64,
    running: Option<Running>,
    last_ballot: u64,
    seen: HashMap<Key, Option<Box<[u8]>>>,
    made: usize,
}

#[derive(Debug, Clone)]
struct OpRecord {
    #[allow(dead_code)] // shown in failure messages
    client: NodeId,
    key: Key,
    op: Op,
    start: u64,
    end: Option<u64>,
    result: Option<Result<Outcome, PaxosError>>,
    own: Option<Ballot>,
    after_heal: bool,
}

#[derive(Clone, Copy, Debug)]
struct Scenario {
    name: &'static str,
    replicas: u32,
    clients: u32,
    keys: u32,
    ops: usize,
    loss: u32,
    dup: u32,
    delay: u32,
    crash: u32,
    chaos_steps: u64,
    /// Proposers send each round to a quorum only and widen it when it stalls.
    thrifty: bool,
}

#[derive(Default, Debug)]
struct Stats {
    applied: usize,
    not_applied: usize,
    reads: usize,
    unknown: usize,
    timeout: usize,
    unavailable: usize,
    chosen: usize,
    steps: u64,
}

const OP_DEADLINE: u64 = 3_000;
const MAX_STEPS: u64 = 200_000;

struct Sim {
    sc: Scenario,
    rng: Rng,
    step: u64,
    replicas: Vec<Replica>,
    clients: Vec<Client>,
    net: Vec<Packet>,
    ops: Vec<OpRecord>,
    keys: Vec<Key>,
}

impl Sim {
    fn new(sc: Scenario, seed: u64) -> Self {
        let mut rng = Rng(seed ^ 0x5EED);
        let replicas = (1..=sc.replicas)
            .map(|i| Replica {
                id: NodeId(i),
                down_until: None,
                acceptor: Acceptor::new(),
                store: HashMap::new(),
                log: Vec::new(),
                durable_store: HashMap::new(),
                pending: Vec::new(),
            })
            .collect();
        let clients = (0..sc.clients)
            .map(|i| Client {
                id: NodeId(100 + i),
                rng: Rng(rng.next()),
                left: sc.ops,
                next_at: 0,
                running: None,
                last_ballot: 0,
                seen: HashMap::new(),
                made: 0,
            })
            .collect();
        let keys = (0..sc.keys).map(|i| k(&format!("k{i}"))).collect();
        Sim { sc, rng, step: 0, replicas, clients, net: Vec::new(), ops: Vec::new(), keys }
    }

    fn chaos(&self) -> bool {
        self.step < self.sc.chaos_steps
    }

    fn send(&mut self, from: NodeId, to: NodeId, body: Body) {
        let mut due = self.step;
        if self.chaos() && self.rng.chance(self.sc.delay) {
            due += 20 + self.rng.below(400);
        }
        self.net.push(Packet { from, to, body, due });
    }

    fn replica_ids(&self) -> Vec<NodeId> {
        self.replicas.iter().map(|r| r.id).collect()
    }

    fn live(&self) -> Vec<NodeId> {
        self.replicas.iter().filter(|r| r.down_until.is_none()).map(|r| r.id).collect()
    }

    fn run(&mut self) -> Result<Stats, String> {
        loop {
            self.step += 1;
            if self.step > MAX_STEPS {
                return Err(format!("liveness: not finished after {MAX_STEPS} steps"));
            }
            self.faults();
            for c in 0..self.clients.len() {
                self.tick_client(c);
            }
            if self.rng.chance(400) {
                let r = self.rng.below(self.replicas.len() as u64) as usize;
                if self.replicas[r].down_until.is_none() {
                    let from = self.replicas[r].id;
                    for (to, reply) in self.replicas[r].flush() {
                        self.send(from, to, Body::Resp(reply));
                    }
                }
            }
            for _ in 0..2 {
                self.deliver_one();
            }
            let idle = self.clients.iter().all(|c| c.left == 0 && c.running.is_none());
            if idle && self.net.is_empty() && self.replicas.iter().all(|r| r.pending.is_empty()) && !self.chaos() {
                break;
            }
        }
        self.check()
    }

    fn faults(&mut self) {
        if self.step == self.sc.chaos_steps {
            for r in &mut self.replicas {
                if r.down_until.is_some() {
                    r.recover();
                }
            }
        }
        if self.chaos() && self.rng.chance(self.sc.crash) {
            let r = self.rng.below(self.replicas.len() as u64) as usize;
            if self.replicas[r].down_until.is_none() {
                let until = self.step + 20 + self.rng.below(300);
                self.replicas[r].crash(until);
            }
        }
        let step = self.step;
        for r in &mut self.replicas {
            if r.down_until.is_some_and(|u| step >= u) {
                r.recover();
            }
        }
    }

    fn deliver_one(&mut self) {
        if self.net.is_empty() {
            return;
        }
        let i = self.rng.below(self.net.len() as u64) as usize;
        if self.net[i].due > self.step {
            return;
        }
        let p = self.net.swap_remove(i);
        if self.chaos() {
            if self.rng.chance(self.sc.loss) {
                return;
            }
            if self.rng.chance(self.sc.dup) {
                let copy = Packet { from: p.from, to: p.to, body: p.body.clone(), due: self.step + self.rng.below(50) };
                self.net.push(copy);
            }
        }
        match p.body {
            Body::Req(req) => {
                if let Some(r) = self.replicas.iter_mut().find(|r| r.id == p.to && r.down_until.is_none()) {
                    r.handle(p.from, req);
                }
            }
            Body::Resp(resp) => {
                if let Some(c) = self.clients.iter().position(|c| c.id == p.to)
                    && let Some(run) = self.clients[c].running.as_mut()
                {
                    let acts = run.p.on_reply(p.from, resp);
                    self.act(c, acts);
                }
            }
        }
    }

    fn next_ballot(&mut self, c: usize, highest: Ballot) -> Ballot {
        let cl = &mut self.clients[c];
        let micros = (self.step * STEP_MICROS).max(cl.last_ballot + 1).max(highest.0.micros + 1);
        cl.last_ballot = micros;
        Ballot(Timestamp { micros, node: cl.id.0 })
    }

    fn tick_client(&mut self, c: usize) {
        let step = self.step;
        if let Some(run) = self.clients[c].running.as_mut() {
            if run.p.round_trips() != run.round.0 {
                run.round = (run.p.round_trips(), step);
            } else if step - run.round.1 >= WIDEN_STEPS && run.p.can_widen() {
                let sends = run.p.widen();
                let from = self.clients[c].id;
                for (to, req) in sends {
                    self.send(from, to, Body::Req(req));
                }
                return;
            }
            if step >= run.deadline {
                let acts = run.p.on_timeout();
                self.act(c, acts);
            } else if run.retry_at.is_some_and(|t| step >= t) {
                run.retry_at = None;
                let highest = run.p.highest_seen();
                let ballot = self.next_ballot(c, highest);
                let run = self.clients[c].running.as_mut().unwrap();
                let sends = run.p.restart(ballot);
                let from = self.clients[c].id;
                for (to, req) in sends {
                    self.send(from, to, Body::Req(req));
                }
            }
            return;
        }
        if self.clients[c].left == 0 || step < self.clients[c].next_at {
            return;
        }
        self.clients[c].left -= 1;
        let key = self.keys[self.clients[c].rng.below(self.keys.len() as u64) as usize].clone();
        let op = self.make_op(c, &key);
        let ballot = self.next_ballot(c, Ballot::ZERO);
        let seed = self.clients[c].rng.next();
        let (mut ids, live) = (self.replica_ids(), self.live());
        let backoff = Backoff { base: Duration::from_micros(10 * STEP_MICROS), max: Duration::from_micros(300 * STEP_MICROS) };
        let mut p = if self.sc.thrifty {
            // Each client prefers its own rotation of the replicas, as coordinators do.
            let n = ids.len();
            ids.rotate_left((seed % n as u64) as usize);
            Proposer::new(key.clone(), op.clone(), &ids, &live, ballot, seed).with_backoff(backoff).thrifty()
        } else {
            Proposer::new(key.clone(), op.clone(), &ids, &live, ballot, seed).with_backoff(backoff)
        };
        let sends = p.start();
        let client = self.clients[c].id;
        let after_heal = !self.chaos();
        self.ops.push(OpRecord { client, key, op, start: step, end: None, result: None, own: None, after_heal });
        let record = self.ops.len() - 1;
        let done = p.outcome().cloned();
        let round = (p.round_trips(), step);
        self.clients[c].running = Some(Running { p, record, deadline: step + OP_DEADLINE, retry_at: None, round });
        if let Some(out) = done {
            self.act(c, vec![Action::Answer(out)]);
        }
        for (to, req) in sends {
            self.send(client, to, Body::Req(req));
        }
    }

    fn make_op(&mut self, c: usize, key: &Key) -> Op {
        let cl = &mut self.clients[c];
        cl.made += 1;
        let fresh: Option<Box<[u8]>> = Some(format!("c{}-{}", cl.id.0, cl.made).into_bytes().into_boxed_slice());
        let seen = cl.seen.get(key).cloned().flatten();
        let expect_seen = || match &seen {
            Some(v) => Expect::Equals(v.clone()),
            None => Expect::Absent,
        };
        match cl.rng.below(100) {
            0..30 => Op::Read,
            30..50 => Op::Write(fresh),
            50..55 => Op::Write(None),
            55..80 => Op::CompareAndSet { expect: expect_seen(), new: fresh },
            80..90 => Op::CompareAndSet { expect: Expect::Absent, new: fresh },
            _ if seen.is_some() => Op::CompareAndSet { expect: expect_seen(), new: None },
            _ => Op::Read,
        }
    }

    fn act(&mut self, c: usize, acts: Vec<Action>) {
        let from = self.clients[c].id;
        for a in acts {
            match a {
                Action::Send { to, msg } => self.send(from, to, Body::Req(msg)),
                Action::RetryAfter(d) => {
                    let steps = (d.as_micros() as u64).div_ceil(STEP_MICROS).max(1);
                    if let Some(run) = self.clients[c].running.as_mut() {
                        run.retry_at = Some(self.step + steps);
                    }
                }
                Action::Answer(out) => {
                    let Some(run) = self.clients[c].running.take() else { continue };
                    let rec = &mut self.ops[run.record];
                    rec.end = Some(self.step);
                    rec.own = run.p.proposed();
                    match &out {
                        Ok(Outcome::Read(v)) | Ok(Outcome::NotApplied { current: v }) => {
                            self.clients[c].seen.insert(rec.key.clone(), v.clone());
                        }
                        Ok(Outcome::Applied) => {
                            let v = match &rec.op {
                                Op::Write(v) | Op::CompareAndSet { new: v, .. } => v.clone(),
                                Op::Read => None,
                            };
                            self.clients[c].seen.insert(rec.key.clone(), v);
                        }
                        Err(_) => {}
                    }
                    rec.result = Some(out);
                    let gap = self.clients[c].rng.below(20);
                    self.clients[c].next_at = self.step + gap;
                }
            }
        }
    }

    /// The safety and liveness checks over the whole run.
    fn check(&self) -> Result<Stats, String> {
        let quorum = self.replicas.len() / 2 + 1;
        let mut stats = Stats { steps: self.step, ..Stats::default() };
        // Every durable accept, by (key, ballot): one value per ballot.
        let mut accepts: BTreeMap<(Key, Ballot), (Proposal, usize)> = BTreeMap::new();
        for r in &self.replicas {
            for rec in &r.log {
                if let PersistRecord::Accept { key, proposal } = rec {
                    let e = accepts.entry((key.clone(), proposal.ballot)).or_insert((proposal.clone(), 0));
                    if e.0 != *proposal {
                        return Err(format!("two proposals at ballot {} for {key}: {:?} and {proposal:?}", proposal.ballot, e.0));
                    }
                    e.1 += 1;
                }
            }
        }
        // Each replica's durable log has at most one accept per ballot, so the count is of replicas.
        let chosen: BTreeMap<(Key, Ballot), Proposal> =
            accepts.into_iter().filter(|(_, (_, n))| *n >= quorum).map(|(kb, (p, _))| (kb, p)).collect();
        stats.chosen = chosen.len();
        // Every commit is of a chosen proposal, with its value.
        for r in &self.replicas {
            for rec in &r.log {
                if let PersistRecord::Commit { key, proposal } = rec {
                    match chosen.get(&(key.clone(), proposal.ballot)) {
                        Some(c) if c.value == proposal.value => {}
                        other => return Err(format!("{} committed {proposal:?} for {key}, chosen there: {other:?}", r.id)),
                    }
                }
            }
        }
        // Each replica's cell is a chosen value.
        for r in &self.replicas {
            for (key, v) in &r.durable_store {
                match chosen.get(&(key.clone(), Ballot(v.ts))) {
                    Some(c) if c.value == v.value => {}
                    other => return Err(format!("{}'s cell {v:?} for {key} was not chosen: {other:?}", r.id)),
                }
            }
        }
        let by_own: HashMap<Ballot, usize> = self.ops.iter().enumerate().filter_map(|(i, o)| o.own.map(|b| (b, i))).collect();
        for key in &self.keys {
            // The logical history: chosen proposals in ballot order, a completion folded into its origin.
            let mut history: Vec<&Proposal> = Vec::new();
            for ((_, _), p) in chosen.range((key.clone(), Ballot::ZERO)..).take_while(|((kk, _), _)| kk == key) {
                if history.last().is_some_and(|h| h.origin == p.origin) {
                    if history.last().unwrap().value != p.value {
                        return Err(format!("a completion of {} changed the value for {key}", p.origin));
                    }
                    continue;
                }
                if history.iter().any(|h| h.origin == p.origin) {
                    return Err(format!("the value of origin {} for {key} was chosen twice, apart", p.origin));
                }
                history.push(p);
            }
            let value_at = |i: isize| if i < 0 { None } else { history[i as usize].value.clone() };
            // Each entry comes from an operation that proposed exactly it, in order.
            let mut pos: HashMap<usize, isize> = HashMap::new();
            for (i, h) in history.iter().enumerate() {
                let Some(&o) = by_own.get(&h.origin) else {
                    return Err(format!("{key}: chosen value {:?} at origin {} was proposed by no operation", h.value, h.origin));
                };
                let op = &self.ops[o];
                let (proposed, expect) = match &op.op {
                    Op::Write(v) => (v, None),
                    Op::CompareAndSet { expect, new } => (new, Some(expect)),
                    Op::Read => return Err(format!("{key}: a read proposed {:?}", h.value)),
                };
                if *proposed != h.value || op.key != *key {
                    return Err(format!("{key}: origin {} holds {:?}, its operation proposed {proposed:?}", h.origin, h.value));
                }
                if !matches!(op.result, Some(Ok(Outcome::Applied)) | Some(Err(PaxosError::Unknown(_))) | None) {
                    return Err(format!("{key}: {op:?} was chosen but answered {:?}", op.result));
                }
                let prev = value_at(i as isize - 1);
                if let Some(e) = expect
                    && !e.holds(prev.as_deref())
                {
                    return Err(format!("{key}: CAS {op:?} was chosen after {prev:?}, which does not meet its condition"));
                }
                pos.insert(o, i as isize);
            }
            let ops: Vec<(usize, &OpRecord)> = self.ops.iter().enumerate().filter(|(_, o)| o.key == *key).collect();
            for (i, o) in &ops {
                if matches!(o.result, Some(Ok(Outcome::Applied))) && !pos.contains_key(i) {
                    return Err(format!("{key}: {o:?} answered Applied but is not in the chosen history"));
                }
            }
            // Real time: a write that finished before another operation began comes first.
            // An Unknown operation may take effect after it answered: it has not "finished".
            let end = |i: usize| match self.ops[i].result {
                Some(Ok(_)) => self.ops[i].end.unwrap_or(u64::MAX),
                _ => u64::MAX,
            };
            for (&a, &pa) in &pos {
                for (&bb, &pb) in &pos {
                    if end(a) < self.ops[bb].start && pa >= pb {
                        return Err(format!("{key}: {:?} finished before {:?} began but is not before it", self.ops[a], self.ops[bb]));
                    }
                }
            }
            // Reads (and failed CASes): some history position with their value,
            // after everything that finished before they began, before every write that began after they ended.
            let mut reads: Vec<ReadSeen> = ops
                .iter()
                .filter_map(|(i, o)| match &o.result {
                    Some(Ok(Outcome::Read(v))) | Some(Ok(Outcome::NotApplied { current: v })) => Some((*i, *o, v.clone())),
                    _ => None,
                })
                .collect();
            reads.sort_by_key(|(_, o, _)| o.start);
            for (i, o, v) in reads {
                if let (Op::CompareAndSet { expect, .. }, Some(Ok(Outcome::NotApplied { current }))) = (&o.op, &o.result)
                    && expect.holds(current.as_deref())
                {
                    return Err(format!("{key}: {o:?} was not applied although its condition held"));
                }
                let lower = pos.iter().filter(|(j, _)| end(**j) < o.start).map(|(_, p)| *p).max().unwrap_or(-1);
                let upper = pos
                    .iter()
                    .filter(|(j, _)| self.ops[**j].start > o.end.unwrap_or(0) && self.ops[**j].own.is_some())
                    .map(|(_, p)| *p)
                    .min()
                    .unwrap_or(history.len() as isize);
                let Some(at) = (lower..upper).find(|&p| value_at(p) == v) else {
                    return Err(format!(
                        "{key}: {o:?} returned {v:?}, not the value at any history position in [{lower}, {upper}); history {:?}",
                        history.iter().map(|h| &h.value).collect::<Vec<_>>()
                    ));
                };
                pos.insert(i, at);
            }
        }
        for o in &self.ops {
            match &o.result {
                Some(Ok(Outcome::Applied)) => stats.applied += 1,
                Some(Ok(Outcome::NotApplied { .. })) => stats.not_applied += 1,
                Some(Ok(Outcome::Read(_))) => stats.reads += 1,
                Some(Err(PaxosError::Unknown(_))) => stats.unknown += 1,
                Some(Err(PaxosError::Timeout(_))) => stats.timeout += 1,
                Some(Err(PaxosError::Unavailable(_))) => stats.unavailable += 1,
                None => return Err(format!("liveness: {o:?} never finished")),
            }
            if o.after_heal {
                let took = o.end.unwrap_or(u64::MAX) - o.start;
                if matches!(o.result, Some(Err(PaxosError::Timeout(_)) | Err(PaxosError::Unavailable(_)))) || took > OP_DEADLINE {
                    return Err(format!("liveness: after the heal {o:?} took {took} steps"));
                }
            }
        }
        Ok(stats)
    }
}

const SCENARIOS: &[Scenario] = &[
    Scenario {
        name: "calm-3",
        replicas: 3,
        clients: 4,
        keys: 1,
        ops: 12,
        loss: 0,
        dup: 0,
        delay: 0,
        crash: 0,
        chaos_steps: 0,
        thrifty: false,
    },
    Scenario {
        name: "contended-5x8",
        replicas: 5,
        clients: 8,
        keys: 1,
        ops: 8,
        loss: 0,
        dup: 0,
        delay: 0,
        crash: 0,
        chaos_steps: 0,
        thrifty: false,
    },
    Scenario {
        name: "lossy-3",
        replicas: 3,
        clients: 4,
        keys: 2,
        ops: 14,
        loss: 150,
        dup: 100,
        delay: 50,
        crash: 0,
        chaos_steps: 3_000,
        thrifty: false,
    },
    Scenario {
        name: "delayed-5",
        replicas: 5,
        clients: 6,
        keys: 1,
        ops: 10,
        loss: 50,
        dup: 50,
        delay: 300,
        crash: 0,
        chaos_steps: 3_000,
        thrifty: false,
    },
    Scenario {
        name: "crashy-3",
        replicas: 3,
        clients: 5,
        keys: 1,
        ops: 12,
        loss: 50,
        dup: 50,
        delay: 50,
        crash: 15,
        chaos_steps: 4_000,
        thrifty: false,
    },
    Scenario {
        name: "crashy-5",
        replicas: 5,
        clients: 6,
        keys: 2,
        ops: 12,
        loss: 100,
        dup: 100,
        delay: 100,
        crash: 20,
        chaos_steps: 4_000,
        thrifty: false,
    },
    Scenario {
        name: "storm-5x8",
        replicas: 5,
        clients: 8,
        keys: 1,
        ops: 8,
        loss: 200,
        dup: 150,
        delay: 200,
        crash: 25,
        chaos_steps: 3_000,
        thrifty: false,
    },
];

fn run_scenario(sc: &Scenario, seeds: u64) -> Stats {
    let mut total = Stats::default();
    for seed in 0..seeds {
        match Sim::new(*sc, seed).run() {
            Ok(s) => {
                total.applied += s.applied;
                total.not_applied += s.not_applied;
                total.reads += s.reads;
                total.unknown += s.unknown;
                total.timeout += s.timeout;
                total.unavailable += s.unavailable;
                total.chosen += s.chosen;
                total.steps = total.steps.max(s.steps);
            }
            Err(e) => panic!("scenario {} seed {seed}: {e}", sc.name),
        }
    }
    eprintln!("{}: {total:?}", sc.name);
    total
}

#[test]
fn simulated_network_scenarios() {
    for sc in SCENARIOS {
        let t = run_scenario(sc, 200);
        assert!(t.applied > 0 && t.reads > 0 && t.not_applied > 0, "{}: {t:?}", sc.name);
    }
}

/// The same scenarios with thrifty proposers (each round to a quorum only,
/// widened when a reply is slow or lost): the same checks hold.
#[test]
fn simulated_network_scenarios_with_thrifty_rounds() {
    for sc in SCENARIOS {
        let sc = Scenario { thrifty: true, ..*sc };
        let t = run_scenario(&sc, 200);
        assert!(t.applied > 0 && t.reads > 0 && t.not_applied > 0, "{} (thrifty): {t:?}", sc.name);
    }
}

#[test]
fn a_seed_replays_exactly() {
    let sc = SCENARIOS[5];
    let a = Sim::new(sc, 7);
    let mut a = a;
    a.run().unwrap();
    let mut b = Sim::new(sc, 7);
    b.run().unwrap();
    assert_eq!(format!("{:?}", a.ops), format!("{:?}", b.ops));
}
