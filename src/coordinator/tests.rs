//! The machines and calls driven by tables of typed replies.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::cluster::consistency::Decision;
use crate::cluster::key::Key;
use crate::cluster::ring::{NodeId, NodeInfo, Ring};
use crate::coordinator::call::{Budget, CALL_OVERHEAD, Call, Machine};
use crate::coordinator::command::{Command, Executor, Outgoing, ReplyTo, Responder, Route};
use crate::coordinator::gather::GatherMachine;
use crate::coordinator::peers::ReplySink;
use crate::coordinator::read::ReadMachine;
use crate::coordinator::write::WriteMachine;
use crate::error::Error;
use crate::message::{PeerRequest, PeerResponse, PeerResult, Reply};
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

fn k(i: u8) -> Key {
    Key::byte(i)
}

fn ts(m: u64) -> Timestamp {
    Timestamp { micros: m, node: 1 }
}

/// Ten nodes `r0`..`r9` with ids 0..9.
fn ring() -> Arc<Ring> {
    let nodes =
        (0..10).map(|i| NodeInfo { name: format!("r{i}"), host: "127.0.0.1".into(), port: 1000 + i as u16, id: NodeId(i) }).collect();
    Arc::new(Ring::new(nodes, 3, 1).unwrap())
}

fn ids(v: &[u32]) -> Vec<NodeId> {
    v.iter().map(|&i| NodeId(i)).collect()
}

fn read_reply(v: Option<Version>) -> PeerResult {
    Ok(PeerResponse::Read(v))
}

fn write_ack() -> PeerResult {
    Ok(PeerResponse::WriteAck { applied: true, held: None })
}

/// A responder that records what it was told.
#[derive(Default)]
struct Recorder(Mutex<Vec<(u64, Reply)>>);

impl Responder for Recorder {
    fn defer(&self, _token: u64) {}
    fn answer(&self, token: u64, reply: Reply) {
        self.0.lock().push((token, reply));
    }
}

/// A `ReplyTo` with a deadline `in_ms` from now (negative: past).
fn reply_to(token: u64, in_ms: i64) -> ReplyTo {
    let now = Instant::now();
    let d = Duration::from_millis(in_ms.unsigned_abs());
    let deadline = if in_ms >= 0 { now + d } else { now - d };
    ReplyTo { responder: Arc::new(Recorder::default()), token, deadline }
}

fn answers(out: &[Command]) -> Vec<(u64, Reply)> {
    out.iter()
        .filter_map(|c| match c {
            Command::Answer { to, reply } => Some((to.token, reply.clone())),
            _ => None,
        })
        .collect()
}

fn sends(out: &[Command]) -> Vec<Outgoing> {
    out.iter()
        .filter_map(|c| match c {
            Command::Send(s) => Some(s.clone()),
            _ => None,
        })
        .collect()
}

fn others(out: &[Command]) -> Vec<Command> {
    out.iter().filter(|c| !matches!(c, Command::Send(_) | Command::Answer { .. })).cloned().collect()
}

#[test]
fn machines_open_with_one_send_per_replica() {
    let v = Version::value(ts(1), "x");
    let out = WriteMachine::new(k(4), v.clone(), ids(&[1, 2, 3]), ring(), 2, true).start();
    let want: Vec<Outgoing> = (0..3)
        .map(|slot| Outgoing {
            slot,
            to: NodeId(slot as u32 + 1),
            msg: PeerRequest::Write { key: k(4), version: v.clone(), epoch: 0 },
            route: Route::Direct,
        })
        .collect();
    assert_eq!(out, want);
    let m = ReadMachine::new(k(4), ids(&[1, 2, 3]), ring(), 1, true, false);
    let mut m = m.route(crate::coordinator::read::ReadRoute::OneDirect(1));
    let routes: Vec<(usize, Route)> = m.start().iter().map(|s| (s.slot, s.route)).collect();
    assert_eq!(routes, vec![(0, Route::Batched), (1, Route::Direct), (2, Route::Batched)]);
}

#[test]
fn a_deferred_read_is_answered_once_when_settled_and_still_repairs() {
    let old = Version::value(ts(1), "old");
    let new = Version::value(ts(2), "new");
    let mut m = ReadMachine::new(k(3), ids(&[7, 8, 9]), ring(), 1, true, false).reply_to(reply_to(41, 10_000));
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(old.clone())), &mut out);
    assert_eq!(answers(&out), vec![(41, Reply::Read(Some(old)))]);
    out.clear();
    // The answer counts as the client's reply: once all are in, the stale one is repaired.
    m.on_reply(1, read_reply(Some(new.clone())), &mut out);
    m.on_reply(2, read_reply(Some(new.clone())), &mut out);
    assert_eq!(out, vec![Command::Repair { target: NodeId(7), key: k(3), version: new }]);
}

#[test]
fn deferred_answers_name_failures_and_timeouts() {
    // (deadline in ms from now, expected answer) for a QUORUM write whose replicas all fail.
    let cases: [(i64, Error); 2] = [
        (10_000, Error::Failure("0 of 2 acks for key 4; the write may or may not have been applied (r0: refused; r1: refused)".into())),
        (-1, Error::Timeout("0 of 2 acks for key 4; the write may or may not have been applied".into())),
    ];
    for (in_ms, expected) in cases {
        let mut m = WriteMachine::new(k(4), Version::value(ts(3), "w"), ids(&[0, 1, 2]), ring(), 2, false).reply_to(reply_to(5, in_ms));
        let mut out = Vec::new();
        m.on_reply(0, Err(Error::Failure("refused".into())), &mut out);
        assert!(answers(&out).is_empty(), "not settled yet");
        m.on_reply(1, Err(Error::Failure("refused".into())), &mut out);
        m.on_reply(2, write_ack(), &mut out);
        assert_eq!(answers(&out), vec![(5, Reply::Error(expected))]);
    }
    // Reached: the timestamp and the acks at the time of settling.
    let mut m = WriteMachine::new(k(4), Version::value(ts(3), "w"), ids(&[0, 1, 2]), ring(), 2, false).reply_to(reply_to(6, 10_000));
    let mut out = Vec::new();
    m.on_reply(2, write_ack(), &mut out);
    m.on_reply(0, write_ack(), &mut out);
    m.on_reply(1, write_ack(), &mut out);
    assert_eq!(answers(&out), vec![(6, Reply::Write { ts: ts(3), acks: 2 })]);
    // A read that gets no reply at all in time.
    let mut m = ReadMachine::new(k(8), ids(&[0, 1, 2]), ring(), 1, true, false).reply_to(reply_to(7, -1));
    let mut out = Vec::new();
    for slot in 0..3 {
        m.on_reply(slot, Err(Error::Timeout("r: did not answer in time".into())), &mut out);
    }
    assert_eq!(answers(&out), vec![(7, Reply::Error(Error::Timeout("0 of 1 replies for key 8".into())))]);
}

#[test]
fn write_hints_every_failed_replica_even_after_success() {
    let v = Version::value(ts(5), "x");
    let mut m = WriteMachine::new(k(9), v.clone(), ids(&[4, 5, 6]), ring(), 1, true);
    let mut out = Vec::new();
    m.on_reply(0, write_ack(), &mut out);
    assert!(m.settled());
    assert_eq!(m.tally().decision(), Decision::Reached);
    m.on_reply(1, Err(Error::Timeout("slow".into())), &mut out);
    m.on_reply(2, Err(Error::Failure("down".into())), &mut out);
    m.on_reply(2, write_ack(), &mut out); // a duplicate outcome is ignored
    assert_eq!(
        out,
        vec![
            Command::Hint { target: NodeId(5), key: k(9), version: v.clone() },
            Command::Hint { target: NodeId(6), key: k(9), version: v }
        ]
    );
    assert_eq!(m.tally().acks(), 1);
}

#[test]
fn write_without_hints_and_impossible_quorum() {
    let v = Version::value(ts(5), "x");
    let mut m = WriteMachine::new(k(1), v, ids(&[0, 1, 2]), ring(), 2, false);
    let mut out = Vec::new();
    m.on_reply(0, Err(Error::Failure("refused".into())), &mut out);
    assert!(!m.settled());
    m.on_reply(1, Err(Error::Failure("refused".into())), &mut out);
    assert_eq!(m.tally().decision(), Decision::Impossible);
    assert!(out.is_empty());
    assert!(m.tally().failures().suffix().contains("r0: refused"));
}

#[test]
fn read_returns_newest_and_repairs_stale_after_all_replies() {
    let old = Version::value(ts(1), "old");
    let new = Version::value(ts(2), "new");
    let mut m = ReadMachine::new(k(3), ids(&[7, 8, 9]), ring(), 1, true, false);
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(old.clone())), &mut out);
    assert!(m.settled());
    assert_eq!(m.newest(), Some(&old));
    m.answer(&mut out);
    assert!(out.is_empty(), "not every replica has replied yet");
    // A late reply reveals a newer version: the replica answered first is stale.
    m.on_reply(1, read_reply(Some(new.clone())), &mut out);
    assert!(out.is_empty());
    m.on_reply(2, read_reply(None), &mut out);
    assert_eq!(
        out,
        vec![
            Command::Repair { target: NodeId(7), key: k(3), version: new.clone() },
            Command::Repair { target: NodeId(9), key: k(3), version: new }
        ]
    );
}

#[test]
fn a_quorum_read_repairs_stale_replicas_before_it_answers() {
    let old = Version::value(ts(1), "old");
    let new = Version::value(ts(2), "new");
    let mut m = ReadMachine::new(k(3), ids(&[0, 1, 2]), ring(), 2, true, true).reply_to(reply_to(9, 10_000));
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(new.clone())), &mut out);
    m.on_reply(1, read_reply(Some(old)), &mut out);
    assert_eq!(m.stale_replied(), vec![(1, NodeId(1))]);
    // The level is reached, but the stale replica is repaired first: a write in
    // repair slot 3 (the read slots' count plus its place among the stale ones).
    assert!(!m.settled() && m.repairing());
    let want =
        Outgoing { slot: 3, to: NodeId(1), msg: PeerRequest::Write { key: k(3), version: new.clone(), epoch: 0 }, route: Route::Direct };
    assert_eq!(sends(&out), vec![want]);
    assert!(answers(&out).is_empty());
    out.clear();
    m.on_reply(3, write_ack(), &mut out);
    assert_eq!(answers(&out), vec![(9, Reply::Read(Some(new)))]);
    out.clear();
    // Slot 1 was repaired before the answer, slot 2 never replied: nothing left to repair.
    m.on_reply(2, Err(Error::Timeout("t".into())), &mut out);
    assert!(others(&out).is_empty(), "{out:?}");
    assert!(m.complete());
}

#[test]
fn a_failed_blocking_repair_fails_the_read_with_a_timeout() {
    let old = Version::value(ts(1), "old");
    let new = Version::value(ts(2), "new");
    let mut m = ReadMachine::new(k(5), ids(&[0, 1, 2]), ring(), 2, true, true);
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(old)), &mut out);
    m.on_reply(1, read_reply(Some(new)), &mut out);
    assert!(m.repairing());
    assert_eq!(
        m.result(true),
        Err(Error::Timeout("read repair of key 5: 0 of 1 stale replicas acked in time".into())),
        "a deadline during the repair"
    );
    m.on_reply(3, Err(Error::Failure("refused".into())), &mut out);
    assert!(m.settled());
    assert_eq!(m.result(false), Err(Error::Timeout("read repair of key 5: 0 of 1 stale replicas acked in time (r0: refused)".into())));
}

#[test]
fn a_read_answered_at_its_deadline_leaves_stale_replicas_to_the_background() {
    let old = Version::value(ts(1), "old");
    let new = Version::value(ts(2), "new");
    let mut m = ReadMachine::new(k(6), ids(&[0, 1, 2]), ring(), 2, true, true);
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(old)), &mut out);
    // The waiting coordinator's deadline passed at one reply of two: it answered with a timeout.
    assert!(m.result(true).is_err());
    m.answer(&mut out);
    m.on_reply(1, read_reply(Some(new.clone())), &mut out);
    m.on_reply(2, read_reply(Some(new.clone())), &mut out);
    assert!(sends(&out).is_empty(), "no blocking repair after the answer: {out:?}");
    assert_eq!(out, vec![Command::Repair { target: NodeId(0), key: k(6), version: new }]);
    assert!(m.complete());
}

#[test]
fn read_without_repair_never_commands() {
    let mut m = ReadMachine::new(k(3), ids(&[0, 1, 2]), ring(), 1, false, true);
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(Version::value(ts(2), "a"))), &mut out);
    m.on_reply(1, read_reply(None), &mut out);
    m.on_reply(2, read_reply(None), &mut out);
    m.answer(&mut out);
    assert!(out.is_empty());
}

#[test]
fn tombstone_is_newest_when_newer() {
    let mut m = ReadMachine::new(k(3), ids(&[0, 1, 2]), ring(), 2, true, false);
    let mut out = Vec::new();
    m.on_reply(0, read_reply(Some(Version::value(ts(1), "a"))), &mut out);
    m.on_reply(1, read_reply(Some(Version::tombstone(ts(2)))), &mut out);
    assert!(m.newest().unwrap().is_tombstone());
}

/// An executor that records what it is asked to send and drops the rest.
#[derive(Default)]
struct NoExec(Mutex<Vec<Outgoing>>);
impl Executor for NoExec {
    fn execute(&self, _c: Command) {}
    fn send(&self, _sink: Arc<dyn ReplySink>, sends: Vec<Outgoing>, _deadline: Instant) {
        self.0.lock().extend(sends);
    }
}

#[test]
fn a_started_call_hands_its_sends_to_the_executor() {
    let exec = Arc::new(NoExec::default());
    let call = Call::new(GatherMachine::new(ids(&[3, 4]), PeerRequest::Ping), exec.clone(), Arc::new(Budget::new(1)), Instant::now());
    call.start();
    assert_eq!(exec.0.lock().iter().map(|s| (s.slot, s.to)).collect::<Vec<_>>(), vec![(0, NodeId(3)), (1, NodeId(4))]);
}

#[test]
fn background_calls_are_charged_to_the_budget_until_complete() {
    let budget = Arc::new(Budget::new(10_000));
    let v = Version::value(ts(1), "x".repeat(4000));
    let write = |deadline| {
        let m = WriteMachine::new(k(1), v.clone(), ids(&[0, 1, 2]), ring(), 1, false);
        Call::new(m, Arc::new(NoExec::default()), budget.clone(), deadline)
    };
    let call = write(Instant::now());
    call.deliver(0, write_ack());
    call.finish(); // two replies outstanding: finishes in the background
    assert_eq!(budget.used(), 4000 + CALL_OVERHEAD);
    // A second such call still fits; a third would not, so it waits (here: until its deadline).
    let second = write(Instant::now());
    second.deliver(0, write_ack());
    second.finish();
    assert_eq!(budget.used(), 2 * (4000 + CALL_OVERHEAD));
    let third = write(Instant::now() + Duration::from_millis(20));
    third.deliver(0, write_ack());
    third.finish();
    assert_eq!(budget.used(), 2 * (4000 + CALL_OVERHEAD), "over budget: not charged, waited instead");
    call.deliver(1, write_ack());
    assert_eq!(budget.used(), 2 * (4000 + CALL_OVERHEAD), "still one reply outstanding");
    call.deliver(2, Err(Error::Timeout("t".into())));
    assert_eq!(budget.used(), 4000 + CALL_OVERHEAD, "released when complete");
    second.deliver(1, write_ack());
    second.deliver(2, write_ack());
    assert_eq!(budget.used(), 0);
}

/// A read finishing in the background is charged for the replies still to
/// come (at the largest value seen), not only for what it holds: the budget
/// bounds what background reads come to hold.
#[test]
fn a_background_read_is_charged_for_the_replies_to_come() {
    let budget = Arc::new(Budget::new(1 << 20));
    let m = ReadMachine::new(k(1), ids(&[0, 1, 2]), ring(), 1, true, false);
    let call = Call::new(m, Arc::new(NoExec::default()), budget.clone(), Instant::now());
    call.deliver(0, read_reply(Some(Version::value(ts(1), "x".repeat(4000)))));
    call.finish();
    assert_eq!(budget.used(), 3 * 4000 + CALL_OVERHEAD, "one value held, two to come");
    call.deliver(1, read_reply(None));
    call.deliver(2, read_reply(Some(Version::value(ts(1), "x".repeat(4000)))));
    assert_eq!(budget.used(), 0, "released when complete");
}

#[test]
fn call_wait_returns_when_settled_by_another_thread() {
    let call = Call::new(
        GatherMachine::new(ids(&[0, 1]), PeerRequest::Ping),
        Arc::new(NoExec::default()),
        Arc::new(Budget::new(1 << 20)),
        Instant::now() + Duration::from_secs(30),
    );
    let c2 = call.clone();
    let barrier = Arc::new(std::sync::Barrier::new(2));
    let b2 = barrier.clone();
    let t = std::thread::spawn(move || {
        b2.wait();
        c2.deliver(0, Ok(PeerResponse::Pong("r0".into())));
        c2.deliver(1, Err(Error::Timeout("x".into())));
    });
    barrier.wait();
    let mut m = call.wait();
    assert!(m.settled());
    assert_eq!(m.take().len(), 2);
    drop(m);
    t.join().unwrap();
}

fn held_ack(applied: bool, held: Option<Timestamp>) -> PeerResult {
    Ok(PeerResponse::WriteAck { applied, held })
}

/// A restamp that observes and ticks like a node's clock (a counter here).
fn restamper(calls: Arc<Mutex<Vec<Timestamp>>>) -> crate::coordinator::write::Restamp {
    Arc::new(move |newer: Timestamp| {
        calls.lock().push(newer);
        Some(Timestamp { micros: newer.micros + 1, node: 1 })
    })
}

/// A write stamped below a version a counted ack reports is re-stamped above
/// it and sent again to every replica; the client hears of the second round only.
#[test]
fn a_write_behind_a_newer_version_is_restamped_and_sent_again() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let v = Version::value(ts(10), "late");
    let mut m =
        WriteMachine::new(k(4), v, ids(&[1, 2, 3]), ring(), 2, true).restamp_with(restamper(calls.clone())).reply_to(reply_to(7, 10_000));
    m.start();
    let mut out = Vec::new();
    m.on_reply(0, held_ack(false, Some(ts(50))), &mut out);
    m.on_reply(1, held_ack(false, Some(ts(40))), &mut out);
    // The level is reached, but behind ts 50: no answer, a second round above it.
    assert!(answers(&out).is_empty());
    assert_eq!(*calls.lock(), vec![ts(50)]);
    let second = sends(&out);
    assert_eq!(second.iter().map(|s| (s.slot, s.to)).collect::<Vec<_>>(), vec![(3, NodeId(1)), (4, NodeId(2)), (5, NodeId(3))]);
    for s in &second {
        assert!(
            matches!(&s.msg, PeerRequest::Write { version, .. } if version.ts == ts(51) && version.value.as_deref() == Some(&b"late"[..]))
        );
    }
    assert!(m.restamped() && !m.settled());
    out.clear();
    // The first round's last reply, late, changes nothing.
    m.on_reply(2, held_ack(false, Some(ts(60))), &mut out);
    assert!(out.is_empty() && !m.settled());
    m.on_reply(3, held_ack(true, None), &mut out);
    m.on_reply(5, held_ack(true, None), &mut out);
    assert_eq!(answers(&out), vec![(7, Reply::Write { ts: ts(51), acks: 2 })]);
    assert_eq!(*calls.lock(), vec![ts(50)], "one re-stamp at most");
    assert_eq!(m.result(false).unwrap(), (ts(51), 2));
}

/// Nothing newer among the counted acks (a repeated write holds its own
/// timestamp; a newer version reported after the level was reached is
/// concurrent): answered after one round, no re-stamp. A version too far
/// ahead to re-stamp above is reported, not hidden.
#[test]
fn a_write_is_not_restamped_for_its_own_version_or_a_late_ack() {
    let calls = Arc::new(Mutex::new(Vec::new()));
    let v = Version::value(ts(10), "x");
    let mut m =
        WriteMachine::new(k(4), v, ids(&[1, 2, 3]), ring(), 2, true).restamp_with(restamper(calls.clone())).reply_to(reply_to(8, 10_000));
    let mut out = Vec::new();
    m.on_reply(0, held_ack(false, Some(ts(10))), &mut out);
    m.on_reply(1, held_ack(true, None), &mut out);
    assert_eq!(answers(&out), vec![(8, Reply::Write { ts: ts(10), acks: 2 })]);
    out.clear();
    m.on_reply(2, held_ack(false, Some(ts(99))), &mut out);
    assert!(sends(&out).is_empty() && calls.lock().is_empty() && !m.restamped());
    // A refused re-stamp (the clock will not jump that far ahead) answers as before.
    let refuse: crate::coordinator::write::Restamp = Arc::new(|_| None);
    let mut m = WriteMachine::new(k(4), Version::value(ts(10), "x"), ids(&[1, 2, 3]), ring(), 2, true).restamp_with(refuse);
    m.on_reply(0, held_ack(false, Some(ts(u64::MAX))), &mut out);
    m.on_reply(1, held_ack(true, None), &mut out);
    assert!(m.settled() && !m.restamped());
    let e = m.result(false).unwrap_err().to_string();
    assert!(e.contains("was applied") && e.contains("check the clocks"), "{e}");
}

/// A replica at a newer metadata epoch refuses a write: it gets no hint (it
/// is up). A write those refusals keep from its level asks to be rerouted,
/// carrying the client's reply; one that reached its level anyway is answered
/// and rerouted in the background; with no reroutes left, or not routed at
/// an epoch, the refusal is an ordinary failure.
#[test]
fn a_stale_epoch_refusal_reroutes_the_write() {
    use crate::cluster::consistency::Consistency::Quorum;
    let v = Version::value(ts(1), "x");
    let stale = || Err(Error::StaleEpoch("r2 holds cluster epoch 3; the write to key 4 was routed at epoch 2".into()));
    let machine = |attempts| WriteMachine::new(k(4), v.clone(), ids(&[1, 2, 3]), ring(), 2, true).routed_at(2, Quorum, attempts);
    let run = |mut m: WriteMachine, replies: Vec<PeerResult>| {
        assert!(m.start().iter().all(|s| matches!(s.msg, PeerRequest::Write { epoch: 2, .. })), "the sends carry the epoch");
        let mut out = Vec::new();
        for (slot, r) in replies.into_iter().enumerate() {
            m.on_reply(slot, r, &mut out);
        }
        (m, out)
    };
    let (m, out) = run(machine(2).reply_to(reply_to(7, 1000)), vec![write_ack(), stale(), stale()]);
    assert!(m.stale());
    assert!(answers(&out).is_empty(), "the rerouted write answers: {out:?}");
    assert!(
        matches!(&others(&out)[..], [Command::Reroute { to: Some(t), epoch: 2, attempts: 1, level: Quorum, .. }] if t.token == 7),
        "{out:?}"
    );
    let (_, out) = run(machine(2).reply_to(reply_to(7, 1000)), vec![write_ack(), write_ack(), stale()]);
    assert!(matches!(&answers(&out)[..], [(7, Reply::Write { acks: 2, .. })]), "{out:?}");
    assert!(matches!(&others(&out)[..], [Command::Reroute { to: None, attempts: 1, .. }]), "{out:?}");
    // A background reroute does not reroute again once its attempts are spent.
    let (_, out) = run(machine(0), vec![write_ack(), write_ack(), stale()]);
    assert!(others(&out).is_empty(), "{out:?}");
    let (_, out) = run(machine(0).reply_to(reply_to(7, 1000)), vec![write_ack(), stale(), stale()]);
    assert!(matches!(&answers(&out)[..], [(7, Reply::Error(Error::Failure(m)))] if m.contains("epoch 3")), "{out:?}");
    assert!(others(&out).is_empty(), "no hint for a replica that is up: {out:?}");
    // A waiting coordinator reroutes itself: the machine only says the write was stale.
    let (m, out) = run(machine(2), vec![write_ack(), stale(), stale()]);
    assert!(m.stale() && m.result(false).is_err() && others(&out).is_empty(), "{out:?}");
    // Not routed at an epoch: an ordinary failure, hinted.
    let mut m = WriteMachine::new(k(4), v.clone(), ids(&[1, 2, 3]), ring(), 2, true);
    m.start();
    let mut out = Vec::new();
    m.on_reply(1, stale(), &mut out);
    assert!(matches!(&others(&out)[..], [Command::Hint { target: NodeId(2), .. }]), "{out:?}");
}

/// The read batcher queues reads for the members it was made with and for
/// those added since (members that joined); a read for any other node fails
/// at once.
#[test]
fn the_read_batcher_takes_members_added_later() {
    use crate::coordinator::readbatch::{QueuedRead, ReadBatcher};
    #[derive(Default)]
    struct Heard(Mutex<Vec<(usize, bool)>>);
    impl ReplySink for Heard {
        fn deliver(&self, slot: usize, result: PeerResult) {
            self.0.lock().push((slot, result.is_ok()));
        }
    }
    let heard = Arc::new(Heard::default());
    let read = |slot| QueuedRead { sink: heard.clone(), slot, key: k(1), deadline: Instant::now() + Duration::from_secs(5) };
    let b = ReadBatcher::new([NodeId(1)]);
    b.push(NodeId(7), read(0));
    assert_eq!(*heard.0.lock(), vec![(0, false)], "not a member: failed at once");
    b.add([NodeId(1), NodeId(7)]);
    b.push(NodeId(7), read(1));
    assert_eq!(heard.0.lock().len(), 1, "queued for the member that joined");
}
