//! A million string keys on a murmur3 cluster survive `kill -9`.
//!
//! Two replicas with `rf 2`, so every key lives on both. 1,000,000 keys
//! (20,000 under ThreadSanitizer; `QUORUMKV_MILLION_KEYS` sets another count)
//! are written at ONE by six client threads that pipeline 128 requests each,
//! through both replicas. Once r1's `status` counts them all, one write at ALL
//! makes sure r1 has written out its log up to there (its log is written in
//! order, and it acknowledges that write only once the log holds it). Then r1
//! is killed with SIGKILL, r0 too, and r1 restarts alone: its own `status` must
//! count every key, and spot checks through `inspect` must find the value each
//! was sent — all from its own disk, since no other replica is up and nothing
//! was read.
//!
//! The size of the run is bound by the machine. Through debug binaries the two
//! replicas spend 35 to 65 µs of CPU between them on a write at ONE (the more
//! keys they hold, the more), about 65 CPU seconds for the million. On two idle
//! CPUs that is about 35 s of writing, and r1's restart (replaying a million
//! records, then folding them into a snapshot) about 10 s more. At QUORUM they
//! spend about three times as much per write, since a coordinator then answers
//! pipelined requests one by one as the acks come in rather than in batches;
//! hence ONE. The test has a file of its own, so cargo runs nothing beside it.

mod common;

use std::io::Write;
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use common::{Cluster, slack, under_tsan, wait_for};
use prost::Message;
use quorumkv::cluster::consistency::Consistency::{All, One};
use quorumkv::net::frame::{FrameReader, append_frame};
use quorumkv::proto::{self, request::Body as B, response::Body as R};

/// Keys written: a million, fewer under ThreadSanitizer (everything there is 10–20 times slower).
fn key_count() -> u64 {
    let default = if under_tsan() { 20_000 } else { 1_000_000 };
    std::env::var("QUORUMKV_MILLION_KEYS").ok().and_then(|s| s.parse().ok()).unwrap_or(default)
}

/// Client threads, each with one connection.
const THREADS: usize = 6;
/// Requests each client thread has in flight.
const WINDOW: u64 = 128;

/// Key `i`: mostly text, every 1000th binary (not UTF-8, with a zero byte).
fn key(i: u64) -> Vec<u8> {
    if i % 1000 == 999 {
        let mut k = vec![0xff, 0x00, 0xfe];
        k.extend_from_slice(&i.to_le_bytes());
        k
    } else {
        format!("user:{i:07}").into_bytes()
    }
}

fn value(i: u64) -> Vec<u8> {
    format!("v{i}-{:x}", i.wrapping_mul(0x9E37_79B9_7F4A_7C15) >> 40).into_bytes()
}

/// Takes the next `WINDOW` keys until all are taken, pipelines their writes at ONE
/// to the replica at `port` and checks the replies; the keys whose write was not
/// acknowledged go to `failed` (to be retried).
fn write_keys(port: u16, next: &AtomicU64, total: u64, failed: &Mutex<Vec<u64>>) {
    let mut stream = TcpStream::connect(("127.0.0.1", port)).expect("connect");
    stream.set_nodelay(true).unwrap();
    stream.set_read_timeout(Some(slack(Duration::from_secs(30)))).unwrap();
    let mut reader = FrameReader::new(stream.try_clone().unwrap(), 1 << 20);
    let mut buf = Vec::new();
    loop {
        let start = next.fetch_add(WINDOW, Ordering::Relaxed);
        if start >= total {
            return;
        }
        let end = (start + WINDOW).min(total);
        buf.clear();
        for i in start..end {
            let put = proto::Put { key: key(i), value: value(i), consistency: One.to_proto() as i32, condition: None };
            append_frame(&proto::Request { id: i, body: Some(B::Put(put)) }, &mut buf);
        }
        stream.write_all(&buf).expect("send a window of puts");
        for i in start..end {
            let frame = reader.read_frame().expect("read a reply").expect("a reply, not the end");
            let r = proto::Response::decode(frame).expect("decode a reply");
            assert_eq!(r.id, i, "replies come in order");
            match r.body {
                Some(R::Write(w)) => assert!(w.acks >= 1),
                _ => failed.lock().unwrap().push(i),
            }
        }
    }
}

/// CPU seconds (user + system) process `pid` has used.
fn cpu_seconds(pid: u32) -> f64 {
    let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
    let f: Vec<&str> = st.rsplit_once(')').unwrap().1.split_whitespace().collect();
    (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
}

#[test]
fn a_million_string_keys_survive_kill_9() {
    let total = key_count();
    let mut c = Cluster::start_with(2, "partitioner murmur3\nrf 2\n", &[]);
    let ports: Vec<u16> = c.replicas.iter().map(|r| r.port).collect();
    let t0 = Instant::now();
    let next = AtomicU64::new(0);
    let failed = Mutex::new(Vec::new());
    std::thread::scope(|s| {
        for t in 0..THREADS {
            let (next, failed, port) = (&next, &failed, ports[t % ports.len()]);
            s.spawn(move || write_keys(port, next, total, failed));
        }
    });
    // Writes refused under load (a timeout on a busy machine) are made again, one at a time.
    let retried = failed.into_inner().unwrap();
    let mut client = c.client(0);
    for &i in &retried {
        client.put(key(i), value(i), One).unwrap_or_else(|e| panic!("retry of key {i}: {e}"));
    }
    let written = t0.elapsed();
    let cpu: f64 = c.replicas.iter().map(|r| cpu_seconds(r.pid().unwrap())).sum();
    eprintln!(
        "{total} keys written at ONE in {written:.1?} ({:.0} a second; {} retried); the replicas used {cpu:.1} CPU s ({:.0} µs a key)",
        total as f64 / written.as_secs_f64(),
        retried.len(),
        cpu * 1e6 / total as f64,
    );

    // r1 gets every write (those it missed by hints), then acknowledges one more at ALL:
    // its log holds everything before that one, in order.
    let keys = |c: &Cluster| {
        let s = c.client(1).status().unwrap();
        let me = s.replicas.iter().find(|r| r.is_self).expect("r1 lists itself");
        me.storage.as_ref().map_or(0, |st| st.keys)
    };
    let all_there = wait_for(slack(Duration::from_secs(60)), || keys(&c) == total);
    assert!(all_there, "r1 holds {} of {total} keys; logs:\n{}", keys(&c), c.logs());
    c.client(0).put("the last one", "at ALL", All).unwrap();
    let total = total + 1;

    // It must keep them all through SIGKILL.
    c.kill(1);
    c.kill(0);
    let t1 = Instant::now();
    c.restart(1);
    let held = keys(&c);
    eprintln!("r1 restarted in {:.1?} holding {held} keys", t1.elapsed());
    assert_eq!(held, total, "r1 lost keys in the kill; logs:\n{}", c.logs());
    assert!(c.log(1).contains(&format!("recovered {total} cell write(s)")), "{}", c.log(1));

    // Spot checks: every 997th key (text and binary alike) holds the value it was sent.
    let mut inspect = c.client(1);
    let mut checked = 0;
    for i in (0..total - 1).step_by(997).chain([total - 2]) {
        let r = inspect.inspect(key(i)).unwrap();
        let mine = r.replicas.iter().find(|e| e.name == "r1").expect("r1 is a replica of every key");
        let v = mine.version.as_ref().unwrap_or_else(|| panic!("r1 lost key {i}"));
        assert_eq!(v.value, value(i), "key {i}");
        assert!(!v.tombstone);
        checked += 1;
    }
    assert_eq!(c.held(1, "the last one", "r1").as_deref(), Some("at ALL"));
    // Nothing was read, and r0 is down: r1 still holds exactly what it recovered.
    assert_eq!(keys(&c), total);
    eprintln!("{checked} keys spot-checked; {:.1?} in all", t0.elapsed());
}
