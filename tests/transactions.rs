//! Transactions end to end (issue 15): cross-replica transactions through
//! every coordinator, conditional transactions racing on shared keys,
//! `mget` beside them, the console's `txn` and `mget`, and a coordinator
//! killed or paused between its phases whose transaction the replicas settle
//! without it.

mod common;

use std::time::{Duration, Instant};

use common::{Cluster, slack, stderr, stdout, wait_for};
use quorumkv::client::TxnOutcome;
use quorumkv::error::Error;

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn puts(kvs: &[(&str, &str)]) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    kvs.iter().map(|(k, v)| (b(k), Some(b(v)))).collect()
}

fn text(v: &Option<Vec<u8>>) -> Option<String> {
    v.as_ref().map(|v| String::from_utf8_lossy(v).into_owned())
}

/// Through every coordinator: a transaction over keys on different replicas
/// commits, every replica of every key holds its write, `mget` reads them
/// back; a failed condition writes nothing and shows the values compared.
#[test]
fn transactions_commit_across_replicas_through_every_coordinator() {
    let c = Cluster::start_murmur3(4, &[]);
    for via in 0..4 {
        let keys: Vec<String> = (0..6).map(|i| format!("acct:{via}:{i}")).collect();
        let writes: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "100")).collect();
        let mut client = c.client(via);
        let r = client.txn(vec![], puts(&writes)).unwrap();
        assert!(matches!(r, TxnOutcome::Committed { .. }), "{r:?}");
        for k in &keys {
            for name in c.replicas_of(via, k.as_bytes()) {
                assert_eq!(c.held(via, k.as_bytes(), &name).as_deref(), Some("100"), "{k} on {name}");
            }
        }
        let read = client.mget(keys.iter().map(|k| b(k)).collect()).unwrap();
        assert!(read.iter().all(|v| text(v).as_deref() == Some("100")), "{read:?}");
        // A transfer whose condition fails: nothing written, the compared values shown.
        let conds = vec![(b(&keys[0]), Some(b("99"))), (b(&keys[1]), Some(b("100")))];
        let r = client.txn(conds, puts(&[(&keys[0], "0"), (&keys[1], "200")])).unwrap();
        assert_eq!(r, TxnOutcome::NotApplied { current: vec![(b(&keys[0]), Some(b("100"))), (b(&keys[1]), Some(b("100")))] });
        let read = client.mget(vec![b(&keys[0]), b(&keys[1]), b("never-written")]).unwrap();
        assert_eq!(read, vec![Some(b("100")), Some(b("100")), None]);
    }
}

/// Coordinators race conditional increments of one counter, round after
/// round: at most one wins each round (the others see its value, or lose a
/// conflict and write nothing), so the counter moves by one at most, and its
/// twin key, written in the same transactions, always agrees with it. An
/// answer that did not come in time (a slow machine) is of unknown outcome:
/// the counter read after the round says what happened.
#[test]
fn racing_conditional_transactions_commit_at_most_one_per_round() {
    let c = Cluster::start_murmur3(3, &[]);
    let mut client = c.client(0);
    assert!(matches!(client.txn(vec![], puts(&[("ctr", "0"), ("twin", "0")])).unwrap(), TxnOutcome::Committed { .. }));
    let rounds = 15;
    let mut raced = 0;
    for round in 0..rounds {
        let barrier = std::sync::Barrier::new(3);
        let wins: usize = std::thread::scope(|s| {
            let handles: Vec<_> = (0..3)
                .map(|via| {
                    let (c, barrier) = (&c, &barrier);
                    s.spawn(move || {
                        let mut client = c.client(via);
                        barrier.wait();
                        let (now, next) = (round.to_string(), (round + 1).to_string());
                        let conds = vec![(b("ctr"), Some(b(&now)))];
                        match client.txn(conds, puts(&[("ctr", &next), ("twin", &next)])) {
                            Ok(TxnOutcome::Committed { .. }) => 1,
                            Ok(TxnOutcome::NotApplied { .. }) | Err(Error::Conflict(_) | Error::Timeout(_)) => 0,
                            Err(e) => panic!("round {round} via r{via}: {e}"),
                        }
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).sum()
        });
        assert!(wins <= 1, "round {round}: {wins} transactions committed");
        let read = |client: &mut quorumkv::client::Client| {
            let mut got = None;
            wait_for(slack(Duration::from_secs(10)), || {
                got = client.mget(vec![b("ctr"), b("twin")]).ok();
                got.is_some()
            });
            let v = got.expect("mget");
            assert_eq!(v[0], v[1], "round {round}: the counter and its twin disagree");
            text(&v[0]).unwrap().parse::<u32>().unwrap()
        };
        let mut now = read(&mut client);
        assert!(now == round || now == round + 1, "round {round}: the counter moved to {now}");
        assert!(wins == 0 || now == round + 1, "round {round}: a commit was answered but the counter is {now}");
        raced += usize::from(now == round + 1);
        // Nobody won (every one lost a conflict, or timed out unapplied): one more try, alone.
        while now == round {
            let conds = vec![(b("ctr"), Some(b(&round.to_string())))];
            let next = (round + 1).to_string();
            let _ = client.txn(conds, puts(&[("ctr", &next), ("twin", &next)]));
            now = read(&mut client);
        }
    }
    assert!(raced > 0, "some round was won by a racer");
    let read = client.mget(vec![b("ctr"), b("twin")]).unwrap();
    assert_eq!(read, vec![Some(b(&rounds.to_string())), Some(b(&rounds.to_string()))]);
}

/// The console's `txn` and `mget`, one-shot: committed prints and exits 0; a
/// failed condition prints the compared values and exits 5; `mget` prints a
/// value a line, an empty line for a missing key, and exits 1 only if all are missing.
#[test]
fn the_console_runs_txn_and_mget() {
    let c = Cluster::start_murmur3(3, &[]);
    let o = c.run_client(1, &["txn", "then", "put", "a", "10;", "put", "b", "5"], "");
    assert!(o.status.success() && stdout(&o).starts_with("committed"), "{}{}", stdout(&o), stderr(&o));
    let o = c.run_client(2, &["txn", "if", "a", "=", "10", "and", "b", "=", "6", "then", "put", "a", "7;", "put", "b", "8"], "");
    assert_eq!(o.status.code(), Some(5), "{}", stderr(&o));
    assert_eq!(stdout(&o), "10\n5\n");
    assert!(stderr(&o).contains("not applied"), "{}", stderr(&o));
    let o = c.run_client(0, &["txn", "if", "a", "=", "10", "and", "b", "=", "5", "then", "put", "a", "7;", "put", "b", "8"], "");
    assert!(o.status.success(), "{}", stderr(&o));
    let o = c.run_client(0, &["mget", "a", "missing", "b"], "");
    assert_eq!((o.status.code(), stdout(&o)), (Some(0), "7\n\n8\n".to_string()), "{}", stderr(&o));
    let o = c.run_client(0, &["mget", "x", "y"], "");
    assert_eq!((o.status.code(), stdout(&o)), (Some(1), "\n\n".to_string()));
    let o = c.run_client(0, &[], "txn if a = 7 then put a 1\nmget a b\n");
    let out = stdout(&o);
    assert!(out.contains("committed") && out.contains("1\n8"), "{out}");
    let o = c.run_client(0, &["txn", "then", "put", "a"], "");
    assert_eq!(o.status.code(), Some(2), "a malformed transaction is bad input: {}", stderr(&o));
}

/// A coordinator killed after the votes, before its decision: the replicas
/// abort the transaction after `--txn-timeout`, and the keys are free again
/// within the bound. Killed after its decision, before any resolution: the
/// replicas find the commit in the record and finish it. All or nothing each time.
#[test]
fn a_coordinator_killed_between_phases_never_blocks_its_keys() {
    for (point, committed) in [("record", false), ("resolve", true)] {
        let mut c = Cluster::start_murmur3(4, &["--txn-timeout", "1s"]);
        let keys: Vec<String> = (0..4).map(|i| format!("k{i}")).collect();
        let writes: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "old")).collect();
        assert!(matches!(c.client(1).txn(vec![], puts(&writes)).unwrap(), TxnOutcome::Committed { .. }));
        c.restart_with(0, &["--txn-crash-before", point]);
        c.wait_all_up();
        let writes: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "new")).collect();
        let r = c.client(0).txn(vec![], puts(&writes));
        assert!(r.is_err() || point == "resolve", "{point}: the coordinator died: {r:?}");
        let started = Instant::now();
        wait_for(slack(Duration::from_secs(5)), || !c.replicas[0].running());
        let want = if committed { "new" } else { "old" };
        // Within the bound, the keys are settled everywhere and free for the next transaction.
        let settled = wait_for(slack(Duration::from_secs(15)), || {
            let read = c.client(1).mget(keys.iter().map(|k| b(k)).collect());
            let free = c.client(2).txn(vec![(b("k0"), Some(b(want)))], puts(&[("k0", want)]));
            matches!(free, Ok(TxnOutcome::Committed { .. })) && read.is_ok_and(|r| r.iter().all(|v| text(v).as_deref() == Some(want)))
        });
        assert!(settled, "{point}: not settled to {want} in time; logs:\n{}", c.logs());
        assert!(started.elapsed() < slack(Duration::from_secs(15)));
        // Every live replica of every key holds it once its own recovery ran (each waits its turn).
        let everywhere = wait_for(slack(Duration::from_secs(10)), || {
            keys.iter().all(|k| {
                c.replicas_of(1, k.as_bytes()).iter().filter(|n| *n != "r0").all(|n| c.held(1, k.as_bytes(), n).as_deref() == Some(want))
            })
        });
        assert!(everywhere, "{point}: a live replica does not hold {want}; logs:\n{}", c.logs());
        c.kill(0);
    }
}

/// Whether process `pid` is stopped (SIGSTOP): state `T` in /proc.
fn stopped(pid: u32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat"))
        .ok()
        .and_then(|s| s.rsplit_once(')').map(|(_, rest)| rest.trim_start().starts_with('T')))
        .unwrap_or(false)
}

/// A coordinator paused (SIGSTOP) between two phases, for longer than
/// `--txn-timeout`: the other replicas settle its transaction without it —
/// abort it when it was paused before its decision, finish the commit when
/// paused after — and once it wakes up, its late messages change nothing.
/// Its client hears an answer that agrees with the outcome (or that the
/// outcome is unknown), and every replica, the paused one too, ends holding
/// all of the transaction's writes or none.
#[test]
fn a_coordinator_paused_between_phases_cannot_undo_the_replicas_decision() {
    for (point, committed) in [("record", false), ("resolve", true)] {
        let mut c = Cluster::start_murmur3(4, &["--txn-timeout", "1s"]);
        let keys: Vec<String> = (0..4).map(|i| format!("p{i}")).collect();
        let writes: Vec<(&str, &str)> = keys.iter().map(|k| (k.as_str(), "old")).collect();
        assert!(matches!(c.client(1).txn(vec![], puts(&writes)).unwrap(), TxnOutcome::Committed { .. }));
        c.restart_with(0, &["--txn-pause-before", point]);
        c.wait_all_up();
        let pid = c.replicas[0].pid().unwrap();
        let mut client = c.client(0);
        let new: Vec<(String, String)> = keys.iter().map(|k| (k.clone(), "new".to_string())).collect();
        let answer = std::thread::spawn(move || {
            let writes: Vec<(&str, &str)> = new.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
            client.txn(vec![], puts(&writes))
        });
        assert!(wait_for(slack(Duration::from_secs(5)), || stopped(pid)), "{point}: the coordinator did not pause; logs:\n{}", c.logs());
        let want = if committed { "new" } else { "old" };
        // While it sleeps, the others settle the transaction and free its keys.
        let settled = wait_for(slack(Duration::from_secs(15)), || {
            let read = c.client(1).mget(keys.iter().map(|k| b(k)).collect());
            let free = c.client(2).txn(vec![(b("p0"), Some(b(want)))], puts(&[("p0", want)]));
            matches!(free, Ok(TxnOutcome::Committed { .. })) && read.is_ok_and(|r| r.iter().all(|v| text(v).as_deref() == Some(want)))
        });
        assert!(settled, "{point}: not settled to {want} while the coordinator slept; logs:\n{}", c.logs());
        assert!(stopped(pid), "{point}: the coordinator woke up too early");
        c.resume(0);
        let answer = answer.join().unwrap();
        eprintln!("{point}: the woken coordinator answered {answer:?}");
        match (&answer, committed) {
            (Ok(TxnOutcome::Committed { .. }), true) | (Err(Error::Conflict(_)), false) => {}
            // An answer that came too late for the client, or an outcome the coordinator could not learn.
            (Err(Error::Timeout(_) | Error::Io(_) | Error::Unavailable(_)), _) => {}
            (other, _) => panic!("{point}: the coordinator answered {other:?}, but the replicas decided {want}; logs:\n{}", c.logs()),
        }
        // Its late messages change nothing: every replica of every key, the
        // woken coordinator's too, holds the decided value, and the woken
        // coordinator serves transactions again.
        let everywhere = wait_for(slack(Duration::from_secs(10)), || {
            keys.iter().all(|k| c.replicas_of(1, k.as_bytes()).iter().all(|n| c.held(1, k.as_bytes(), n).as_deref() == Some(want)))
        });
        assert!(everywhere, "{point}: a replica does not hold {want}; logs:\n{}", c.logs());
        // (Once it has heard from its peers again: asleep, it heard nothing.)
        let mut read = Err(Error::Unavailable(String::new()));
        wait_for(slack(Duration::from_secs(10)), || {
            read = c.client(0).mget(keys.iter().map(|k| b(k)).collect());
            read.is_ok()
        });
        assert!(read.as_ref().is_ok_and(|r| r.iter().all(|v| text(v).as_deref() == Some(want))), "{point}: {read:?}");
        let next = c.client(0).txn(vec![(b("p1"), Some(b(want)))], puts(&[("p1", "after")]));
        assert!(matches!(next, Ok(TxnOutcome::Committed { .. })), "{point}: {next:?}");
        c.kill(0);
    }
}
