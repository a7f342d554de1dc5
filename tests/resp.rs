//! The Redis protocol (`--resp-port`, issue 16) end to end: real replica
//! processes, spoken to with the library's small RESP client. Commands and
//! their reply shapes, pipelining and inline commands, `WATCH`/`MULTI`/`EXEC`
//! and `SET NX` races (exactly one winner), `SCAN`, the byte-ordered
//! cluster's keys, and bad input. The real Redis tools have their own file
//! (`resp_tools.rs`).

mod common;

use std::collections::BTreeSet;
use std::io::Read;
use std::sync::{Arc, Barrier};
use std::time::Duration;

use common::{Cluster, slack, under_tsan, wait_for};
use quorumkv::cluster::consistency::Consistency;
use quorumkv::resp::Reply;
use quorumkv::resp::client::Resp;

const RESP: &[&str] = &["--resp-port", "{resp}"];

fn connect(c: &Cluster, i: usize) -> Resp {
    Resp::connect(c.resp_port(i), slack(Duration::from_secs(10))).expect("connect to the RESP port")
}

fn cmd(r: &mut Resp, line: &str) -> Reply {
    let args = quorumkv::resp::split_args(line.as_bytes()).expect("balanced quotes");
    let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
    r.command(&refs).unwrap_or_else(|e| panic!("{line}: {e}"))
}

fn ok() -> Reply {
    Reply::Simple("OK".into())
}

fn bulk(s: &str) -> Reply {
    Reply::Bulk(Some(s.as_bytes().to_vec()))
}

fn nil() -> Reply {
    Reply::Bulk(None)
}

fn int(n: i64) -> Reply {
    Reply::Integer(n)
}

fn array(items: Vec<Reply>) -> Reply {
    Reply::Array(Some(items))
}

fn error_text(r: &Reply) -> &str {
    match r {
        Reply::Error(e) => e,
        other => panic!("expected an error, got {other:?}"),
    }
}

#[test]
fn redis_commands_answer_with_redis_s_reply_shapes() {
    let c = Cluster::start_murmur3(4, RESP);
    let mut r = connect(&c, 0);
    let mut other = connect(&c, 2);
    assert_eq!(cmd(&mut r, "PING"), Reply::Simple("PONG".into()));
    assert_eq!(cmd(&mut r, "ping hi"), bulk("hi"));
    assert_eq!(cmd(&mut r, "ECHO 'a b'"), bulk("a b"));
    assert_eq!(cmd(&mut r, "GET missing"), nil());
    assert_eq!(cmd(&mut r, "SET user:1 alice"), ok());
    assert_eq!(cmd(&mut other, "GET user:1"), bulk("alice"), "another replica reads the write");
    // The native protocol sees the same store.
    let mut native = c.client(3);
    assert_eq!(native.get_text("user:1", Consistency::Quorum).unwrap().as_deref(), Some("alice"));

    // Conditional writes (SERIAL compare-and-set).
    assert_eq!(cmd(&mut r, "SET user:1 bob NX"), nil());
    assert_eq!(cmd(&mut r, "SET user:2 bob NX"), ok());
    assert_eq!(cmd(&mut r, "SET user:3 carol XX"), nil());
    assert_eq!(cmd(&mut r, "GET user:3"), nil(), "XX wrote an absent key");
    assert_eq!(cmd(&mut r, "SET user:2 bobby XX"), ok());
    assert_eq!(cmd(&mut r, "SET user:2 robert GET"), bulk("bobby"));
    assert_eq!(cmd(&mut r, "SET user:2 x NX GET"), bulk("robert"), "NX GET: the old value, nothing set");
    assert_eq!(cmd(&mut r, "SET user:9 y NX GET"), nil());
    assert_eq!(cmd(&mut r, "GET user:9"), bulk("y"));
    assert_eq!(cmd(&mut r, "SETNX user:2 z"), int(0));
    assert_eq!(cmd(&mut r, "SETNX user:4 dave"), int(1));
    assert_eq!(cmd(&mut r, "GETSET user:4 dan"), bulk("dave"));
    assert_eq!(cmd(&mut r, "GETSET user:5 eve"), nil());
    assert_eq!(cmd(&mut other, "GET user:4"), bulk("dan"));
    assert_eq!(cmd(&mut r, "TYPE user:4"), Reply::Simple("string".into()));
    assert_eq!(cmd(&mut r, "TYPE nothing"), Reply::Simple("none".into()));

    // Several keys.
    assert_eq!(cmd(&mut r, "MSET a 1 b 2 c 3 a 4"), ok());
    assert_eq!(cmd(&mut other, "MGET a b c d a"), array(vec![bulk("4"), bulk("2"), bulk("3"), nil(), bulk("4")]));
    assert_eq!(cmd(&mut r, "EXISTS a b d a"), int(3));
    assert_eq!(cmd(&mut r, "MSETNX c 9 e 5"), int(0));
    assert_eq!(cmd(&mut r, "GET e"), nil(), "MSETNX is all or nothing");
    assert_eq!(cmd(&mut r, "MSETNX e 5 f 6"), int(1));
    assert_eq!(cmd(&mut r, "DEL a b nothing a"), int(2));
    assert_eq!(cmd(&mut r, "DEL a"), int(0));
    assert_eq!(cmd(&mut other, "MGET a b c"), array(vec![nil(), nil(), bulk("3")]));

    // Connection commands.
    assert_eq!(cmd(&mut r, "SELECT 0"), ok());
    assert_eq!(error_text(&cmd(&mut r, "SELECT 1")), "ERR DB index is out of range");
    assert_eq!(cmd(&mut r, "CLIENT GETNAME"), nil());
    assert_eq!(cmd(&mut r, "CLIENT SETNAME app"), ok());
    assert_eq!(cmd(&mut r, "CLIENT GETNAME"), bulk("app"));
    assert!(matches!(cmd(&mut r, "CLIENT ID"), Reply::Integer(n) if n > 0));
    match cmd(&mut r, "HELLO 2") {
        Reply::Array(Some(items)) => assert!(items.contains(&bulk("proto")) && items.contains(&int(2)), "{items:?}"),
        other => panic!("HELLO: {other:?}"),
    }
    assert!(error_text(&cmd(&mut r, "HELLO 4")).starts_with("NOPROTO"));
    // RESP3 after HELLO 3 (redis-py 8 asks for it): a map, and `_` for nil.
    let mut r3 = connect(&c, 1);
    match cmd(&mut r3, "HELLO 3") {
        Reply::Map(pairs) => assert!(pairs.contains(&(bulk("proto"), int(3))), "{pairs:?}"),
        other => panic!("HELLO 3: {other:?}"),
    }
    r3.send_raw(b"GET missing\r\nGET user:1\r\n").unwrap();
    let mut raw = [0u8; 3];
    std::io::Read::read_exact(&mut r3.stream(), &mut raw).unwrap();
    assert_eq!(&raw, b"_\r\n", "RESP3's nil");
    assert_eq!(r3.read().unwrap(), bulk("alice"));
    assert!(matches!(cmd(&mut r, "COMMAND COUNT"), Reply::Integer(n) if n >= 20));
    assert!(matches!(cmd(&mut r, "COMMAND"), Reply::Array(Some(v)) if v.len() >= 20));
    assert_eq!(cmd(&mut r, "COMMAND DOCS"), array(vec![]));
    assert_eq!(cmd(&mut r, "CONFIG GET appendonly"), array(vec![bulk("appendonly"), bulk("yes")]));
    assert_eq!(error_text(&cmd(&mut r, "FLUSHALL")), "ERR unknown command 'FLUSHALL', with args beginning with: ");
    assert_eq!(error_text(&cmd(&mut r, "GET")), "ERR wrong number of arguments for 'get' command");
    assert_eq!(error_text(&cmd(&mut r, "SET k v EX 10")), "ERR SET EX: quorumkv keys do not expire");
    assert_eq!(error_text(&cmd(&mut r, "EXEC")), "ERR EXEC without MULTI");

    // The consistency level, per connection and in INFO.
    assert_eq!(cmd(&mut r, "CONSISTENCY"), Reply::Simple("QUORUM".into()));
    assert_eq!(cmd(&mut r, "CONSISTENCY one"), ok());
    assert_eq!(cmd(&mut r, "CONSISTENCY"), Reply::Simple("ONE".into()));
    assert_eq!(cmd(&mut r, "GET user:1"), bulk("alice"));
    assert_eq!(cmd(&mut r, "CONSISTENCY serial"), ok());
    assert_eq!(cmd(&mut r, "SET s 1"), ok());
    assert_eq!(cmd(&mut r, "GET s"), bulk("1"));
    let info = match cmd(&mut r, "INFO") {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("INFO: {other:?}"),
    };
    for field in
        ["redis_version:", "# Clients", "connected_clients:", "quorumkv_consistency:SERIAL", "# Keyspace", "db0:keys=", "role:master"]
    {
        assert!(info.contains(field), "INFO lacks {field}:\n{info}");
    }
    let keys = match cmd(&mut r, "INFO keyspace") {
        Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap(),
        other => panic!("INFO keyspace: {other:?}"),
    };
    assert!(!keys.contains("# Server"), "INFO keyspace gave every section");

    // DBSIZE is approximate (replicas' key counts, tombstones included, over RF): it sees the keys.
    assert!(
        wait_for(slack(Duration::from_secs(10)), || matches!(cmd(&mut other, "DBSIZE"), Reply::Integer(n) if n >= 8)),
        "DBSIZE never counted the keys written"
    );
    assert_eq!(cmd(&mut r, "QUIT"), ok());
    let mut rest = Vec::new();
    let _ = r.stream().read_to_end(&mut rest);
    assert!(rest.is_empty(), "QUIT left the connection open");
}

#[test]
fn pipelined_and_inline_commands_answer_in_order() {
    let c = Cluster::start_murmur3(3, RESP);
    let mut r = connect(&c, 1);
    let mut commands = Vec::new();
    for i in 0..2000 {
        commands.push(vec![b"SET".to_vec(), format!("p{i}").into_bytes(), format!("v{i}").into_bytes()]);
        commands.push(vec![b"GET".to_vec(), format!("p{i}").into_bytes()]);
    }
    let replies = r.pipeline(&commands).unwrap();
    for i in 0..2000 {
        assert_eq!(replies[2 * i], ok(), "SET p{i}");
        assert_eq!(replies[2 * i + 1], bulk(&format!("v{i}")), "GET p{i}");
    }
    // Runs that go side by side keep the pipeline's order: the last SET of a key wins,
    // a GET after a SET of its key sees it, GETs of distinct keys answer in order.
    let mut commands: Vec<Vec<Vec<u8>>> = (0..300).map(|i| vec![b"SET".to_vec(), b"same".to_vec(), format!("{i}").into_bytes()]).collect();
    commands.push(vec![b"GET".to_vec(), b"same".to_vec()]);
    commands.extend((0..300).map(|i| vec![b"GET".to_vec(), format!("p{i}").into_bytes()]));
    commands.push(vec![b"GET".to_vec(), b"same".to_vec()]);
    commands.push(vec![b"SET".to_vec(), b"same".to_vec(), b"last".to_vec()]);
    commands.push(vec![b"GET".to_vec(), b"same".to_vec()]);
    let replies = r.pipeline(&commands).unwrap();
    assert!(replies[..300].iter().all(|x| *x == ok()), "{:?}", &replies[..300]);
    assert_eq!(replies[300], bulk("299"));
    for i in 0..300 {
        assert_eq!(replies[301 + i], bulk(&format!("v{i}")));
    }
    assert_eq!(replies[601..], [bulk("299"), ok(), bulk("last")]);
    // Inline commands, as telnet or nc send them; an empty line is ignored.
    r.send_raw(b"SET inline \"a b\\x41\"\r\n\r\nGET inline\nPING\r\n").unwrap();
    assert_eq!(r.read().unwrap(), ok());
    assert_eq!(r.read().unwrap(), bulk("a bA"));
    assert_eq!(r.read().unwrap(), Reply::Simple("PONG".into()));
    // A command split over many writes.
    let mut raw = Vec::new();
    quorumkv::resp::encode_command(&mut raw, &[b"SET", b"split", &vec![b'x'; 100_000]]);
    for chunk in raw.chunks(777) {
        r.send_raw(chunk).unwrap();
    }
    assert_eq!(r.read().unwrap(), ok());
    assert_eq!(cmd(&mut r, "GET split"), Reply::Bulk(Some(vec![b'x'; 100_000])));
}

#[test]
fn watch_multi_exec_commit_atomically_and_abort_when_a_watched_key_changes() {
    let c = Cluster::start_murmur3(3, RESP);
    let mut a = connect(&c, 0);
    let mut b = connect(&c, 1);
    // A transaction: replies of every queued command, in order, and reads see earlier queued writes.
    assert_eq!(cmd(&mut a, "SET x 1"), ok());
    assert_eq!(cmd(&mut a, "MULTI"), ok());
    assert_eq!(cmd(&mut a, "GET x"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "SET x 2"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "MSET y 3 z 4"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "MGET x y w"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "DEL z w"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut b, "GET y"), nil(), "queued writes are applied before EXEC");
    assert_eq!(cmd(&mut a, "EXEC"), array(vec![bulk("1"), ok(), ok(), array(vec![bulk("2"), bulk("3"), nil()]), int(1)]));
    assert_eq!(cmd(&mut b, "MGET x y z"), array(vec![bulk("2"), bulk("3"), nil()]));

    // A watched key changed by another client: EXEC answers nil and writes nothing.
    assert_eq!(cmd(&mut a, "WATCH x"), ok());
    assert_eq!(cmd(&mut b, "SET x changed"), ok());
    assert_eq!(cmd(&mut a, "MULTI"), ok());
    assert_eq!(cmd(&mut a, "SET y lost"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "EXEC"), Reply::Array(None));
    assert_eq!(cmd(&mut b, "GET y"), bulk("3"));
    // EXEC unwatched: the next transaction commits.
    assert_eq!(cmd(&mut a, "MULTI"), ok());
    assert_eq!(cmd(&mut a, "SET y won"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "EXEC"), array(vec![ok()]));
    // A watched key nobody changed: commits.
    assert_eq!(cmd(&mut a, "WATCH x y"), ok());
    assert_eq!(cmd(&mut a, "MULTI"), ok());
    assert_eq!(cmd(&mut a, "SET y again"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "EXEC"), array(vec![ok()]));
    assert_eq!(cmd(&mut b, "GET y"), bulk("again"));

    // A command refused while queueing discards the transaction, as in Redis.
    assert_eq!(cmd(&mut a, "MULTI"), ok());
    assert_eq!(cmd(&mut a, "SET y never"), Reply::Simple("QUEUED".into()));
    assert!(error_text(&cmd(&mut a, "SETNX y never")).contains("cannot be queued"));
    assert!(error_text(&cmd(&mut a, "GET")).starts_with("ERR wrong number"));
    assert!(error_text(&cmd(&mut a, "MULTI")).contains("nested"));
    assert!(error_text(&cmd(&mut a, "EXEC")).starts_with("EXECABORT"));
    assert_eq!(cmd(&mut b, "GET y"), bulk("again"));
    // DISCARD drops the queue and the watches.
    assert_eq!(cmd(&mut a, "WATCH y"), ok());
    assert_eq!(cmd(&mut a, "MULTI"), ok());
    assert_eq!(cmd(&mut a, "SET y never"), Reply::Simple("QUEUED".into()));
    assert_eq!(cmd(&mut a, "DISCARD"), ok());
    assert_eq!(error_text(&cmd(&mut a, "DISCARD")), "ERR DISCARD without MULTI");
    assert_eq!(cmd(&mut b, "GET y"), bulk("again"));
}

/// `threads` clients on every replica, released together by a barrier, each
/// running `attempt(client, index)`; the results.
fn race<T: Send>(c: &Cluster, threads: usize, attempt: impl Fn(&mut Resp, usize) -> T + Sync) -> Vec<T> {
    let barrier = Barrier::new(threads);
    let mut clients: Vec<Resp> = (0..threads).map(|i| connect(c, i % c.replicas.len())).collect();
    std::thread::scope(|s| {
        let handles: Vec<_> = clients
            .iter_mut()
            .enumerate()
            .map(|(i, r)| {
                let (barrier, attempt) = (&barrier, &attempt);
                s.spawn(move || {
                    barrier.wait();
                    attempt(r, i)
                })
            })
            .collect();
        handles.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

/// Whether `r` is an error that says the outcome is unknown (a compare-and-set
/// or a commit that lost its quorum mid-way: it may have been applied).
fn unknown_outcome(r: &Reply) -> bool {
    matches!(r, Reply::Error(e) if e.starts_with("TIMEOUT") && e.contains("may or may not"))
}

/// Checks a race's replies: the key holds one racer's value, that racer was
/// told it won (`won`) or that its outcome is unknown, no other racer was told
/// it won, and the others were told they lost (`lost`) or that their outcome is unknown.
fn one_winner(what: &str, replies: &[Reply], won: &Reply, lost: &Reply, value: Reply) {
    let Reply::Bulk(Some(v)) = &value else { panic!("{what}: the key holds {value:?}; replies {replies:?}") };
    let w: usize = String::from_utf8_lossy(v).trim_start_matches('t').parse().expect("a racer's value");
    assert!(replies[w] == *won || unknown_outcome(&replies[w]), "{what}: t{w} holds the key but was told {:?}", replies[w]);
    for (i, r) in replies.iter().enumerate().filter(|(i, _)| *i != w) {
        assert!(r == lost || unknown_outcome(r), "{what}: t{i} was told {r:?} but t{w} holds the key; replies {replies:?}");
    }
    let unknown = replies.iter().filter(|r| unknown_outcome(r)).count();
    assert!(unknown * 2 <= replies.len(), "{what}: most outcomes unknown: {replies:?}");
}

/// The key's value at SERIAL (a write whose outcome was unknown is settled first).
fn serial_get(c: &Cluster, key: &str) -> Reply {
    let mut r = connect(c, 1);
    assert_eq!(cmd(&mut r, "CONSISTENCY SERIAL"), ok());
    cmd(&mut r, &format!("GET {key}"))
}

#[test]
fn racing_transactions_and_set_nx_have_exactly_one_winner() {
    let c = Cluster::start_murmur3(3, RESP);
    let threads = 6;
    let rounds = if under_tsan() { 3 } else { 10 };
    for round in 0..rounds {
        // SET NX: one OK, the others nil.
        let key = format!("nx{round}");
        let replies = race(&c, threads, |r, i| cmd(r, &format!("SET {key} t{i} NX")));
        let value = serial_get(&c, &key);
        one_winner(&format!("round {round}: SET NX"), &replies, &ok(), &nil(), value);

        // WATCH/MULTI/EXEC on one key, all watching the same value: one commits, the others get nil.
        let key = format!("w{round}");
        assert_eq!(cmd(&mut connect(&c, 0), &format!("SET {key} start")), ok());
        let barrier = Arc::new(Barrier::new(threads));
        let replies = race(&c, threads, |r, i| {
            assert_eq!(cmd(r, &format!("WATCH {key}")), ok());
            assert_eq!(cmd(r, &format!("GET {key}")), bulk("start"));
            barrier.wait(); // every one has watched "start"
            assert_eq!(cmd(r, "MULTI"), ok());
            assert_eq!(cmd(r, &format!("SET {key} t{i}")), Reply::Simple("QUEUED".into()));
            cmd(r, "EXEC")
        });
        let value = serial_get(&c, &key);
        one_winner(&format!("round {round}: EXEC"), &replies, &array(vec![ok()]), &Reply::Array(None), value);
    }
}

#[test]
fn watched_increments_lose_no_update() {
    // The classic optimistic counter: WATCH, GET, MULTI, SET n+1, EXEC, retried on nil.
    let c = Cluster::start_murmur3(3, RESP);
    let (threads, each) = (4, if under_tsan() { 5 } else { 25 });
    assert_eq!(cmd(&mut connect(&c, 0), "SET counter 0"), ok());
    race(&c, threads, |r, _| {
        for _ in 0..each {
            loop {
                assert_eq!(cmd(r, "WATCH counter"), ok());
                let n: i64 = match cmd(r, "GET counter") {
                    Reply::Bulk(Some(b)) => String::from_utf8(b).unwrap().parse().unwrap(),
                    other => panic!("GET counter: {other:?}"),
                };
                assert_eq!(cmd(r, "MULTI"), ok());
                assert_eq!(cmd(r, &format!("SET counter {}", n + 1)), Reply::Simple("QUEUED".into()));
                match cmd(r, "EXEC") {
                    Reply::Array(Some(_)) => break,
                    Reply::Array(None) => continue,
                    other => panic!("EXEC: {other:?}"),
                }
            }
        }
    });
    assert_eq!(cmd(&mut connect(&c, 2), "GET counter"), bulk(&(threads * each).to_string()));
}

#[test]
fn scan_visits_every_key_with_redis_s_numeric_cursors() {
    let c = Cluster::start_murmur3(3, RESP);
    let mut r = connect(&c, 0);
    let mut written = BTreeSet::new();
    for batch in 0..10 {
        let mut args = vec![b"MSET".to_vec()];
        for i in 0..50 {
            let key = format!("{}:{batch}:{i}", if i % 5 == 0 { "odd" } else { "key" });
            args.push(key.clone().into_bytes());
            args.push(b"v".to_vec());
            written.insert(key);
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        assert_eq!(r.command(&refs).unwrap(), ok());
    }
    let walk = |r: &mut Resp, pattern: Option<&str>| {
        let mut seen = BTreeSet::new();
        let mut cursor = "0".to_string();
        let mut pages = 0;
        loop {
            let line = match pattern {
                Some(p) => format!("SCAN {cursor} MATCH {p} COUNT 37"),
                None => format!("SCAN {cursor} COUNT 37"),
            };
            match cmd(r, &line) {
                Reply::Array(Some(mut v)) if v.len() == 2 => {
                    let Reply::Array(Some(keys)) = v.pop().unwrap() else { panic!("keys") };
                    let Reply::Bulk(Some(next)) = v.pop().unwrap() else { panic!("cursor") };
                    cursor = String::from_utf8(next).unwrap();
                    assert!(cursor.parse::<u64>().is_ok(), "cursor {cursor} is not a number");
                    for k in keys {
                        let Reply::Bulk(Some(k)) = k else { panic!("key") };
                        seen.insert(String::from_utf8(k).unwrap());
                    }
                }
                other => panic!("SCAN: {other:?}"),
            }
            pages += 1;
            assert!(pages < 10_000, "SCAN never ended");
            if cursor == "0" {
                return (seen, pages);
            }
        }
    };
    let (all, pages) = walk(&mut r, None);
    assert_eq!(all, written);
    assert!(pages > 5, "{pages} pages for 500 keys at COUNT 37");
    let (odd, _) = walk(&mut r, Some("odd:*"));
    assert_eq!(odd, written.iter().filter(|k| k.starts_with("odd:")).cloned().collect());
    assert_eq!(error_text(&cmd(&mut r, "SCAN 12345")), "ERR invalid cursor");
    assert_eq!(error_text(&cmd(&mut r, "SCAN abc")), "ERR invalid cursor");
}

#[test]
fn a_byte_ordered_cluster_takes_integer_keys_and_says_so() {
    let c = Cluster::start(4, RESP);
    let mut r = connect(&c, 3);
    assert_eq!(cmd(&mut r, "SET 70 seventy"), ok());
    assert_eq!(cmd(&mut r, "GET 70"), bulk("seventy"));
    assert_eq!(c.client(0).get_text(70u8, Consistency::Quorum).unwrap().as_deref(), Some("seventy"));
    let e = cmd(&mut r, "SET user:1 x");
    assert!(error_text(&e).starts_with("ERR ") && error_text(&e).contains("0") && error_text(&e).contains("255"), "{e:?}");
    let e = cmd(&mut r, "MGET 1 300");
    assert!(error_text(&e).contains("255"), "{e:?}");
}

#[test]
fn unavailable_and_timeouts_are_redis_errors_a_client_can_act_on() {
    let mut c = Cluster::start_murmur3(3, &["--resp-port", "{resp}", "--timeout", "500ms"]);
    let mut r = connect(&c, 0);
    assert_eq!(cmd(&mut r, "SET k v"), ok());
    c.kill(1);
    c.kill(2);
    c.wait_seen(0, 1, false);
    c.wait_seen(0, 2, false);
    let e = cmd(&mut r, "SET k w");
    assert!(error_text(&e).starts_with("UNAVAILABLE need 2 of 3 replicas"), "{e:?}");
    assert_eq!(cmd(&mut r, "CONSISTENCY one"), ok());
    assert_eq!(cmd(&mut r, "GET k"), bulk("v"), "ONE reads the one replica alive");
    assert_eq!(cmd(&mut r, "PING"), Reply::Simple("PONG".into()));
}

/// Bad input on the RESP port: protocol errors are answered and close the
/// connection, refused commands are answered and the connection goes on,
/// nothing crashes, other clients keep being served.
#[test]
fn bad_input_on_the_resp_port_is_answered_and_never_crashes_the_replica() {
    let mut c = Cluster::start_murmur3(3, &["--resp-port", "{resp}", "--max-value-bytes", "4096"]);
    let port = c.resp_port(0);
    let protocol_error = |bytes: &[u8]| {
        let mut r = Resp::connect(port, slack(Duration::from_secs(10))).unwrap();
        r.send_raw(bytes).unwrap();
        let reply = r.read().unwrap();
        let mut rest = Vec::new();
        let _ = r.stream().read_to_end(&mut rest);
        (reply, rest)
    };
    for (bytes, text) in [
        (&b"*2\r\n$3\r\nGET\r\n:1\r\n"[..], "ERR Protocol error: expected '$', got ':'"),
        (b"*1\r\n$99999999\r\n", "ERR Protocol error: invalid bulk length"),
        (b"*99999999\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"*x\r\n", "ERR Protocol error: invalid multibulk length"),
        (b"SET \"unbalanced\r\n", "ERR Protocol error: unbalanced quotes in request"),
        (b"*1\r\n$3\r\nGETxx", "ERR Protocol error: bulk string not followed by CRLF"),
    ] {
        let (reply, rest) = protocol_error(bytes);
        assert_eq!(reply, Reply::Error(text.into()), "{:?}", String::from_utf8_lossy(bytes));
        assert!(rest.is_empty(), "the connection stayed open after a protocol error");
    }
    // An inline line longer than Redis's 64 KiB.
    let (reply, _) = protocol_error(&vec![b'a'; 70_000]);
    assert_eq!(reply, Reply::Error("ERR Protocol error: too big inline request".into()));

    // Refused commands: answered, and the connection goes on.
    let mut r = connect(&c, 0);
    let big = vec![b'v'; 5000];
    assert!(error_text(&r.command(&[b"SET", b"k", &big]).unwrap()).contains("exceeds the limit of 4096"));
    assert!(error_text(&r.command(&[b"GET", b""]).unwrap()).contains("empty"));
    assert!(error_text(&r.command(&[b"\xff\x00"]).unwrap()).starts_with("ERR unknown command"));
    assert_eq!(cmd(&mut r, "PING"), Reply::Simple("PONG".into()));

    // A flood of mutated commands from several connections at once, while a client keeps working.
    let seeds = if under_tsan() { 200 } else { 2000 };
    std::thread::scope(|s| {
        for t in 0..4u64 {
            s.spawn(move || {
                let mut state = 0x5eed ^ t;
                for _ in 0..seeds / 4 {
                    let Ok(mut conn) = Resp::connect(port, slack(Duration::from_secs(10))) else { continue };
                    let mut bytes = Vec::new();
                    for _ in 0..8 {
                        let n = quorumkv::rand::splitmix64(&mut state);
                        let key = format!("f{}", n % 50).into_bytes();
                        quorumkv::resp::encode_command(&mut bytes, &[b"SET", &key, b"x"]);
                        quorumkv::resp::encode_command(
                            &mut bytes,
                            &[[&b"GET"[..], b"MGET", b"DEL", b"MULTI", b"EXEC", b"SCAN"][(n % 6) as usize], &key],
                        );
                    }
                    // Mutate: flip, cut or insert bytes.
                    for _ in 0..(quorumkv::rand::splitmix64(&mut state) % 6) {
                        let n = quorumkv::rand::splitmix64(&mut state);
                        if bytes.is_empty() {
                            break;
                        }
                        let at = (n as usize / 7) % bytes.len();
                        match n % 3 {
                            0 => bytes[at] = (n >> 24) as u8,
                            1 => bytes.truncate(at),
                            _ => bytes.insert(at, b"*$\r\n-1:"[(n >> 32) as usize % 7]),
                        }
                    }
                    let _ = conn.stream().set_read_timeout(Some(slack(Duration::from_secs(20))));
                    let _ = conn.send_raw(&bytes);
                    let _ = conn.stream().shutdown(std::net::Shutdown::Write);
                    // The replica answers what it can and closes: reading ends (never hangs).
                    let mut out = Vec::new();
                    let read = conn.stream().read_to_end(&mut out);
                    assert!(read.is_ok(), "a mutated stream was never closed: {read:?}");
                }
            });
        }
        s.spawn(|| {
            let mut r = connect(&c, 0);
            for i in 0..200 {
                assert_eq!(cmd(&mut r, &format!("SET steady{i} {i}")), ok());
                assert_eq!(cmd(&mut r, &format!("GET steady{i}")), bulk(&i.to_string()));
            }
        });
    });
    assert!(c.replicas[0].running(), "the replica died:\n{}", c.log(0));
    assert_eq!(cmd(&mut connect(&c, 0), "GET steady199"), bulk("199"));

    // A protocol error is answered after the replies to the commands before it.
    let mut r = connect(&c, 0);
    r.send_raw(b"GET nothing1\r\nGET nothing2\r\n*x\r\n").unwrap();
    assert_eq!(r.read().unwrap(), nil());
    assert_eq!(r.read().unwrap(), nil());
    assert_eq!(r.read().unwrap(), Reply::Error("ERR Protocol error: invalid multibulk length".into()));
}

/// What one connection makes a replica hold is bounded: a few KiB of
/// pipelined GETs of a large value, a MULTI queue, and a DEL of large values.
#[test]
fn a_connection_cannot_make_a_replica_hold_unbounded_replies_or_queues() {
    let c = Cluster::start_murmur3(3, RESP);
    let mut r = connect(&c, 0);
    let big = vec![b'x'; 1 << 20];
    assert_eq!(r.command(&[b"SET", b"big", &big]).unwrap(), ok());
    // 1,000 GETs of a 1 MiB value in 9 KB: a gigabyte of replies if they piled up.
    let gets = if under_tsan() { 200 } else { 1000 };
    r.send_raw(&b"GET big\r\n".repeat(gets)).unwrap();
    for i in 0..gets {
        assert_eq!(r.read().unwrap(), Reply::Bulk(Some(big.clone())), "reply {i}");
    }
    let peak_mib = c.replicas[0].peak_rss_kib() / 1024;
    assert!(peak_mib < 400, "the replica peaked at {peak_mib} MiB serving a pipeline of GETs");

    // A MULTI queue past what a transaction may carry is refused, and EXEC discards it.
    let half = vec![b'y'; 600 << 10];
    assert_eq!(cmd(&mut r, "MULTI"), ok());
    assert_eq!(r.command(&[b"SET", b"q1", &half]).unwrap(), Reply::Simple("QUEUED".into()));
    assert!(error_text(&r.command(&[b"SET", b"q2", &half]).unwrap()).contains("more than one transaction may carry"));
    assert!(error_text(&cmd(&mut r, "EXEC")).starts_with("EXECABORT"));
    assert_eq!(cmd(&mut r, "EXISTS q1 q2"), int(0));
    // ECHOes take room too.
    assert_eq!(cmd(&mut r, "MULTI"), ok());
    assert_eq!(r.command(&[b"ECHO", &half]).unwrap(), Reply::Simple("QUEUED".into()));
    assert!(error_text(&r.command(&[b"ECHO", &half]).unwrap()).contains("more than one transaction may carry"));
    assert!(error_text(&cmd(&mut r, "EXEC")).starts_with("EXECABORT"));

    // DEL of values too large to compare in one transaction still deletes them, and counts them.
    assert_eq!(r.command(&[b"SET", b"d1", &half]).unwrap(), ok());
    assert_eq!(r.command(&[b"SET", b"d2", &half]).unwrap(), ok());
    assert_eq!(cmd(&mut r, "DEL d1 d2 d3"), int(2));
    assert_eq!(r.command(&[b"SET", b"d1", &big]).unwrap(), ok());
    assert_eq!(cmd(&mut r, "DEL d1"), int(1));
    assert_eq!(cmd(&mut r, "EXISTS d1 d2"), int(0));
}
