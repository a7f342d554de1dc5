//! SERIAL reads, writes and compare-and-set through real replicas: every
//! coordinator proposes, conditions are checked, a CAS race has exactly one
//! winner per round, the value reaches QUORUM reads, an RF 5 cluster serves
//! with 2 nodes down and refuses with 3, and the console prints `applied` /
//! `not applied` (one-shot: exit status 5).

mod common;

use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use common::{Cluster, slack, stderr, stdout, wait_for};
use quorumkv::client::{Cas, Client, Expect};
use quorumkv::cluster::consistency::Consistency::{All, Quorum, Serial};
use quorumkv::error::Error;

fn text(v: Option<Vec<u8>>) -> Option<String> {
    v.map(|v| String::from_utf8(v).unwrap())
}

fn eq(v: &str) -> Expect {
    Expect::Equals(v.as_bytes().into())
}

/// A SERIAL put through each coordinator is read back by a SERIAL get through
/// every coordinator, in a byte-ordered and a murmur3 cluster.
#[test]
fn serial_put_then_serial_get_through_every_coordinator() {
    for (c, keys) in [(Cluster::start(4, &[]), ["7", "130", "200", "255"]), (Cluster::start_murmur3(4, &[]), ["a", "user:1", "k", "zz"])] {
        for (i, key) in keys.iter().enumerate() {
            let value = format!("v{i}");
            let w = c.client(i).put(key, &value, Serial).unwrap_or_else(|e| panic!("put {key} via r{i}: {e}\n{}", c.logs()));
            assert_eq!(w.applied, Some(true));
            assert_eq!(w.acks, 2, "the accepts of a quorum of 3");
            for j in 0..4 {
                assert_eq!(text(c.client(j).get(key, Serial).unwrap()), Some(value.clone()), "key {key} via r{j}");
            }
            c.client(i).delete(key, Serial).unwrap();
            assert_eq!(c.client((i + 1) % 4).get(key, Serial).unwrap(), None, "a SERIAL delete of {key}");
        }
    }
}

/// `if absent`, `if OLD` (right and wrong), `del if OLD`.
#[test]
fn compare_and_set_semantics() {
    let c = Cluster::start(3, &[]);
    let mut a = c.client(0);
    let mut b = c.client(1);
    assert!(a.put_if(5, "first", Expect::Absent).unwrap().applied(), "a new key is absent");
    assert_eq!(b.put_if(5, "second", Expect::Absent).unwrap(), Cas::NotApplied { current: Some(b"first".to_vec()) });
    assert_eq!(b.put_if(5, "second", eq("wrong")).unwrap(), Cas::NotApplied { current: Some(b"first".to_vec()) });
    assert!(b.put_if(5, "second", eq("first")).unwrap().applied());
    assert_eq!(text(a.get(5, Serial).unwrap()).as_deref(), Some("second"));
    assert_eq!(a.delete_if(5, "first").unwrap(), Cas::NotApplied { current: Some(b"second".to_vec()) });
    assert!(a.delete_if(5, "second").unwrap().applied());
    assert_eq!(b.get(5, Serial).unwrap(), None);
    assert_eq!(b.delete_if(5, "second").unwrap(), Cas::NotApplied { current: None }, "nothing to delete");
    assert!(b.put_if(5, "again", Expect::Absent).unwrap().applied(), "a deleted key is absent");
    // An empty value is a value, not absence.
    assert!(a.put_if(6, "", Expect::Absent).unwrap().applied());
    assert_eq!(a.put_if(6, "x", Expect::Absent).unwrap(), Cas::NotApplied { current: Some(Vec::new()) });
    assert!(a.put_if(6, "x", eq("")).unwrap().applied());
    // A condition at another level is refused, naming why.
    let put = quorumkv::proto::Put {
        key: b"5".to_vec(),
        value: b"v".to_vec(),
        consistency: Quorum.to_proto() as i32,
        condition: Some(quorumkv::proto::put::Condition::IfAbsent(true)),
    };
    match a.request(quorumkv::proto::request::Body::Put(put)) {
        Err(Error::InvalidRequest(m)) => assert!(m.contains("runs at SERIAL; it was sent at QUORUM"), "{m}"),
        other => panic!("a conditional QUORUM put was not refused: {other:?}"),
    }
}

/// 8 clients race `put K vI if V` from the same value V in rounds: exactly
/// one client's value wins each round (the value moves on every round: no
/// livelock, in bounded time); a client told `applied` is that one; a client
/// told `not applied` sees the winner's value. A client whose proposal was
/// refused after a replica may have accepted it is told the outcome is
/// unknown (the proposer cannot tell whether another proposer completed it);
/// those stay few.
#[test]
fn a_cas_race_has_exactly_one_winner_per_round() {
    const CLIENTS: usize = 8;
    const ROUNDS: usize = 10;
    let c = Cluster::start(3, &["--timeout", "10s"]);
    let mut setup = c.client(0);
    assert!(setup.put_if("9", "r0", Expect::Absent).unwrap().applied());
    let barrier = Arc::new(Barrier::new(CLIENTS));
    let started = Instant::now();
    let results: Vec<Vec<(String, Result<Cas, Error>)>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..CLIENTS)
            .map(|t| {
                let barrier = barrier.clone();
                let mut client: Client = c.client(t % 3);
                s.spawn(move || {
                    (0..ROUNDS)
                        .map(|round| {
                            barrier.wait();
                            let seen = text(client.get("9", Serial).unwrap()).expect("a value");
                            barrier.wait();
                            let mine = format!("r{}-c{t}", round + 1);
                            let r = client.put_if("9", &mine, eq(&seen));
                            (seen, r)
                        })
                        .collect()
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    });
    let took = started.elapsed();
    let mut unknown = 0;
    for round in 0..ROUNDS {
        let outcomes: Vec<&(String, Result<Cas, Error>)> = results.iter().map(|r| &r[round]).collect();
        let before = &outcomes[0].0;
        assert!(outcomes.iter().all(|(seen, _)| seen == before), "round {round}: every client read the same value: {outcomes:?}");
        // The value every client read at the start of the next round (or at the end) is this round's winner's.
        let after = match results[0].get(round + 1) {
            Some((seen, _)) => seen.clone(),
            None => text(setup.get("9", Serial).unwrap()).unwrap(),
        };
        let prefix = format!("r{}-c", round + 1);
        let winner: usize = after.strip_prefix(&prefix).and_then(|t| t.parse().ok()).unwrap_or_else(|| {
            panic!("round {round}: the value went from {before:?} to {after:?}, not to one of this round's: {outcomes:?}")
        });
        for (t, (_, r)) in outcomes.iter().enumerate() {
            match r {
                Ok(Cas::Applied(_)) => assert_eq!(t, winner, "round {round}: client {t} was told applied, but {after:?} won"),
                Ok(Cas::NotApplied { current }) => {
                    assert_ne!(t, winner, "round {round}: the winner was told not applied");
                    assert_eq!(
                        current.as_deref(),
                        Some(after.as_bytes()),
                        "round {round} client {t}: not applied shows the winner's value"
                    );
                }
                // Its proposal was refused after some replica may have accepted it: honest, and rare.
                Err(Error::Timeout(m)) if m.contains("may or may not have been applied") => unknown += 1,
                Err(e) => panic!("round {round} client {t}: {e}\n{}", c.logs()),
            }
        }
    }
    eprintln!("{ROUNDS} rounds of {CLIENTS} clients in {took:?}; {unknown} of {} outcomes unknown", ROUNDS * CLIENTS);
    assert!(unknown <= ROUNDS * CLIENTS / 4, "{unknown} of {} outcomes were unknown", ROUNDS * CLIENTS);
    assert!(took < slack(Duration::from_secs(60)), "{ROUNDS} rounds of {CLIENTS} clients took {took:?}");
}

/// A SERIAL write reaches QUORUM reads: at once after a SERIAL read (which
/// makes sure a quorum holds the value), and eventually after the write
/// alone (its commit is sent after the answer).
#[test]
fn a_serial_value_is_visible_to_quorum_reads() {
    let c = Cluster::start(3, &[]);
    c.client(0).put(20, "paxos", Serial).unwrap();
    let seen = wait_for(slack(Duration::from_secs(5)), || text(c.client(1).get(20, Quorum).unwrap()).as_deref() == Some("paxos"));
    assert!(seen, "the background commit never reached a quorum");
    for i in 0..10 {
        let v = format!("v{i}");
        c.client(i % 3).put(21, &v, Serial).unwrap();
        assert_eq!(text(c.client((i + 1) % 3).get(21, Serial).unwrap()), Some(v.clone()));
        assert_eq!(text(c.client((i + 2) % 3).get(21, Quorum).unwrap()), Some(v), "a QUORUM read right after a SERIAL read");
    }
}

/// Levels mixed on one key, one operation at a time — what the README
/// promises: a SERIAL operation that starts after a QUORUM or ALL write was
/// acknowledged sees that write (reads it, checks its condition against it,
/// supersedes it), and a QUORUM write made after a SERIAL write was
/// acknowledged supersedes it. Every operation goes through another
/// coordinator than the one before it.
#[test]
fn levels_mixed_one_operation_at_a_time_stay_in_order() {
    let c = Cluster::start(3, &[]);
    for i in 0..15 {
        let (a, b, d) = (i % 3, (i + 1) % 3, (i + 2) % 3);
        let plain = format!("plain{i}");
        c.client(a).put(30, &plain, if i % 2 == 0 { Quorum } else { All }).unwrap();
        assert_eq!(text(c.client(b).get(30, Serial).unwrap()), Some(plain.clone()), "a SERIAL read after a plain write");
        let cas = format!("cas{i}");
        assert!(c.client(d).put_if(30, &cas, eq(&plain)).unwrap().applied(), "a CAS checked against the plain write");
        let after = format!("after{i}");
        c.client(a).put(30, &after, Quorum).unwrap();
        assert_eq!(text(c.client(b).get(30, Serial).unwrap()), Some(after.clone()), "a QUORUM write after a CAS supersedes it");
        let refused = c.client(d).put_if(30, "stale", eq(&cas)).unwrap();
        assert_eq!(refused, Cas::NotApplied { current: Some(after.into_bytes()) }, "a CAS against the overwritten value");
    }
}

/// RF 5: with 2 of 5 nodes killed SERIAL still works; with 3 it is refused
/// as Unavailable before anything is sent.
#[test]
fn rf5_serves_serial_with_two_down_and_refuses_with_three() {
    let mut c = Cluster::start_with(5, "rf 5\n", &[]);
    c.client(0).put(1, "before", Serial).unwrap();
    c.kill(3);
    c.kill(4);
    c.wait_seen(0, 3, false);
    c.wait_seen(0, 4, false);
    let mut a = c.client(0);
    assert_eq!(text(a.get(1, Serial).unwrap()).as_deref(), Some("before"));
    assert!(a.put_if(1, "after", eq("before")).unwrap().applied());
    assert_eq!(text(c.client(2).get(1, Serial).unwrap()).as_deref(), Some("after"));
    let w = a.put(2, "three of five", Serial).unwrap();
    assert_eq!(w.acks, 3);
    c.kill(2);
    c.wait_seen(0, 2, false);
    let t = Instant::now();
    for r in [a.put(1, "x", Serial).map(drop), a.get(1, Serial).map(drop), a.put_if(1, "y", eq("after")).map(drop)] {
        match r {
            Err(Error::Unavailable(m)) => assert!(m.contains("need 3 of 5 replicas for key 1, 2 alive"), "{m}"),
            other => panic!("expected Unavailable, got {other:?}"),
        }
    }
    assert!(t.elapsed() < Duration::from_secs(1), "refused before sending, not after a timeout: {:?}", t.elapsed());
    assert!(matches!(a.get(1, Quorum), Err(Error::Unavailable(_))), "QUORUM (3 of 5) is refused too");
}

/// The console prints `applied` / `not applied (current: …)`; one-shot, a
/// condition that does not hold exits 5 with the current value on stdout.
#[test]
fn console_prints_applied_and_one_shot_exits_5() {
    let c = Cluster::start(3, &[]);
    let script = "\
put 5 first if absent
put 5 second if absent
put 5 second if first
get 5 serial
del 5 if wrong
del 5 if second
put 5 again if x
consistency serial
put 6 \"a\\nb\"
get 6
put 6 c if zzz
";
    let out = c.run_client(1, &[], script);
    assert_eq!(out.status.code(), Some(0), "{}", stderr(&out));
    let lines: Vec<String> = stdout(&out).lines().map(str::to_string).collect();
    assert_eq!(
        lines[..7],
        [
            "applied",
            "not applied (current: \"first\")",
            "applied",
            "second",
            "not applied (current: \"second\")",
            "applied",
            "not applied (current: none)"
        ],
        "{lines:#?}"
    );
    assert_eq!(lines[7], "Consistency level set to SERIAL.");
    assert!(lines[8].starts_with("OK (2 acks at SERIAL, ts "), "{}", lines[8]);
    assert_eq!(lines[10], format!("not applied (current: \"{}\")", lines[9]), "escaped as `get` shows it");
    assert_eq!(lines.len(), 11, "{lines:#?}");
    assert_eq!(stderr(&out), "");

    let applied = c.run_client(0, &["put", "8", "one", "if", "absent"], "");
    assert_eq!((applied.status.code(), stdout(&applied)), (Some(0), "applied\n".to_string()), "{}", stderr(&applied));
    let refused = c.run_client(2, &["put", "8", "two", "if", "absent"], "");
    assert_eq!(refused.status.code(), Some(5), "{}", stderr(&refused));
    assert_eq!(stdout(&refused), "one\n", "the current value alone on stdout");
    assert!(stderr(&refused).contains("not applied (current: \"one\")"), "{}", stderr(&refused));
    let gone = c.run_client(2, &["del", "9", "if", "x"], "");
    assert_eq!((gone.status.code(), stdout(&gone)), (Some(5), String::new()), "no value: nothing on stdout");
    let read = c.run_client(1, &["-c", "serial", "get", "8"], "");
    assert_eq!((read.status.code(), stdout(&read)), (Some(0), "one\n".to_string()));
}
