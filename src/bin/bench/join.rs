//! `bench join`: how fast a joining node streams its data, against a plain
//! TCP copy of the same bytes, and what the streaming costs the writes the
//! cluster serves meanwhile — both measured side by side in one run.
//!
//! Three replicas (murmur3, RF 3) hold N keys (`--keys`, default 1M, 10-byte
//! keys with `--value-size` values, written at ALL). A fourth replica joins
//! the idle cluster through the first: it takes tokens for a quarter of the
//! ring and, at RF 3, streams about three quarters of every key from the
//! replicas giving the ranges up; that join gives the streaming rate. Then a
//! `put QUORUM` load by `--clients` clients runs against the four for
//! `--duration` (default 40 s), and a quarter of the way in a fifth replica
//! joins. Each operation's latency is counted "at rest" (before that join
//! started), "streaming" (while the joiner's movement runs) or "after" (the
//! join done), by when it started and ended. `--replica-flags` reach every
//! replica, the joiners too (e.g. `--stream-throughput 20`).
//!
//! The streaming rate is the bytes the joiner copied (keys and values, as
//! its movement status counts them) over the join's time (its movement
//! status: from the start of the movement, the wait for every member to hold
//! the new epoch included, to the epoch that ends it). The plain copy sends
//! the same number of bytes over one loopback TCP connection, 1 MiB writes,
//! into a file that is then synced (what `nc` into a file and `sync` do: the
//! join lands its data durably too); the rate of the same copy into memory
//! is shown beside it. Each plain copy runs three times once the joiner's
//! snapshot is over, and the fastest counts.
//!
//! Targets: the join streams at no less than a quarter of the plain copy's
//! rate; put QUORUM p99 while streaming stays within 3x its p99 at rest.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};
use std::time::{Duration, Instant};

use quorumkv::client::Client;
use quorumkv::cluster::consistency::Consistency;
use quorumkv::proto;

use crate::Args;
use crate::cluster::{Cluster, ClusterOpts};
use crate::load::{Load, put_keys, retried_note, run, shuffled};
use crate::report::{Report, verdict};
use crate::storage::{key_count, mib, num, print_table, wait_snapshot_done};

const AT_REST: u8 = 0;
const STREAMING: u8 = 1;
const AFTER: u8 = 2;

/// `bench join`.
pub(crate) fn join(args: &Args) -> Result<(), String> {
    let n = key_count(args)?;
    let mut cluster = Cluster::start(ClusterOpts::new(args, 3, None, "partitioner murmur3\nrf 3\n", "join"))?;
    let (took, retried) = put_keys(&cluster.targets(), &shuffled(n), args.value_size, Consistency::All, args.load_clients)?;
    for i in 0..3 {
        wait_snapshot_done(&cluster.data_dir(i), Duration::from_secs(300))?;
    }
    let d = args.duration.unwrap_or(Duration::from_secs(40));
    println!(
        "== join: 3 replicas, RF 3, murmur3, {n} keys of 10 bytes with {}-byte values (written at ALL by {} clients in {:.1} s{}); \
         a 4th replica joins the idle cluster; then put QUORUM by {} clients for {d:?} after a {:?} warm-up, and a 5th replica \
         joins a quarter of the way in",
        args.value_size,
        args.load_clients,
        took.as_secs_f64(),
        retried_note(retried),
        args.clients,
        args.warmup
    );
    // Anti-entropy between replicas that agree: digests, not data.
    let pass = repair_pass(&cluster)?;
    println!(
        "a full anti-entropy pass over the 3 agreeing replicas ({n} keys): {} groups compared in {:.2} s, {} of trees and \
         cells received, {} cells ({} bytes) sent, {} groups differing",
        pass.groups,
        pass.elapsed_secs,
        if pass.bytes_compared < 1 << 20 {
            format!("{:.1} KiB", pass.bytes_compared as f64 / 1024.0)
        } else {
            mib(pass.bytes_compared / 1024)
        },
        pass.cells_sent,
        pass.bytes_sent,
        pass.differing
    );
    // The rate: a 4th replica joins the idle cluster.
    let movement = join_one(&mut cluster)?;
    let bytes = movement.bytes;
    let join_secs = movement.elapsed_secs.max(1e-6);
    let join_rate = bytes as f64 / join_secs;
    let dir = std::env::temp_dir().join(format!("quorumkv-bench-{}-copy", std::process::id()));
    std::fs::create_dir_all(&dir).map_err(|e| format!("cannot create {}: {e}", dir.display()))?;
    // The plain copies run on a quiet machine (the joiner's snapshot of what
    // it received over), three times each, and the fastest counts: the
    // comparison never gains from a slow copy.
    wait_snapshot_done(&cluster.data_dir(3), Duration::from_secs(300))?;
    let fastest = |file: Option<&Path>| -> Result<Duration, String> {
        (0..3).map(|_| tcp_copy(bytes, file)).try_fold(Duration::MAX, |best, t| Ok(best.min(t?)))
    };
    let to_file = fastest(Some(&dir.join("copy")));
    let to_memory = fastest(None);
    let _ = std::fs::remove_dir_all(&dir);
    let (to_file, to_memory) = (to_file?, to_memory?);
    let rate = |t: Duration| bytes as f64 / t.as_secs_f64().max(1e-9);
    println!(
        "a 4th replica joins the idle cluster: {} keys, {} streamed in {join_secs:.2} s ({}/s); plain TCP copy of the same bytes \
         into a synced file {:.2} s ({}/s), into memory {:.3} s ({}/s)",
        movement.keys,
        mib(bytes / 1024),
        mib(join_rate as u64 / 1024),
        to_file.as_secs_f64(),
        mib(rate(to_file) as u64 / 1024),
        to_memory.as_secs_f64(),
        mib(rate(to_memory) as u64 / 1024)
    );
    let phase = Arc::new(AtomicU8::new(AT_REST));
    let load = Load::phased_quorum_puts(args, cluster.targets(), n, d, phase.clone());
    let (report, loaded) = std::thread::scope(|s| {
        let load_thread = s.spawn(|| run(&load));
        // The schedule of the run (not a synchronisation): a quarter at rest first.
        std::thread::sleep(args.warmup + d / 4);
        phase.store(STREAMING, Ordering::Relaxed);
        let joined = join_one(&mut cluster);
        phase.store(AFTER, Ordering::Relaxed);
        (load_thread.join().expect("load thread"), joined)
    });
    let loaded = loaded?;
    println!(
        "a 5th replica joins under the load: {} keys, {} streamed in {:.2} s ({}/s)",
        loaded.keys,
        mib(loaded.bytes / 1024),
        loaded.elapsed_secs,
        mib((loaded.bytes as f64 / loaded.elapsed_secs.max(1e-6)) as u64 / 1024)
    );
    let [rest, streaming, after] = report.phases.clone();
    let class = |hist: quorumkv::client::histogram::Histogram| Report { ops: hist.count(), seconds: 0.0, hist, ..Default::default() };
    let (rest, streaming, after) = (class(rest), class(streaming), class(after));
    println!("{}", rest.line("put QUORUM, at rest"));
    println!("{}", streaming.line("put QUORUM, while the joiner streams"));
    println!("{}", after.line("put QUORUM, after the join"));
    let errors: u64 = report.errors.values().sum();
    if errors > 0 {
        println!("  {errors} operation(s) failed: {:?}", report.errors);
    }
    let mut table = Vec::new();
    let stream_ratio = join_rate / rate(to_file);
    table.push(verdict(
        "join streaming rate / plain TCP copy (synced file)",
        stream_ratio,
        ">=",
        0.25,
        &format!(
            "({}/s vs {}/s; into memory {}/s)",
            mib(join_rate as u64 / 1024),
            mib(rate(to_file) as u64 / 1024),
            mib(rate(to_memory) as u64 / 1024)
        ),
    ));
    let (r99, s99) = (rest.hist.percentile(0.99), streaming.hist.percentile(0.99));
    let p99_ratio = if rest.ops >= 1000 && streaming.ops >= 1000 {
        let r = s99 as f64 / r99.max(1) as f64;
        table.push(verdict("put QUORUM p99 while a node joins / at rest", r, "<=", 3.0, &format!("({s99} vs {r99} µs)")));
        Some(r)
    } else {
        let why = format!("too few operations: {} at rest, {} while streaming; raise --keys or --duration", rest.ops, streaming.ops);
        table.push(verdict("put QUORUM p99 while a node joins / at rest", f64::NAN, "<=", 3.0, &format!("(not measured: {why})")));
        None
    };
    if args.json {
        println!(
            "{{\"label\":\"join\",\"keys\":{n},\"streamed_keys\":{},\"streamed_bytes\":{bytes},\"join_seconds\":{join_secs:.3},\
             \"copy_file_seconds\":{:.3},\"copy_memory_seconds\":{:.3},\"stream_ratio\":{stream_ratio:.3},\"rest_ops\":{},\
             \"rest_p99_us\":{r99},\"streaming_ops\":{},\"streaming_p99_us\":{s99},\"p99_ratio\":{},\"errors\":{errors}}}",
            movement.keys,
            to_file.as_secs_f64(),
            to_memory.as_secs_f64(),
            rest.ops,
            streaming.ops,
            num(p99_ratio)
        );
    }
    print_table(&table);
    Ok(())
}

/// Runs a full anti-entropy pass from the first replica (the console's
/// `repair`) and waits for its report.
fn repair_pass(cluster: &Cluster) -> Result<proto::RepairResult, String> {
    let mut c = Client::connect("127.0.0.1", cluster.port(0), Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let started = c.repair(true).map_err(|e| format!("repair: {e}"))?;
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let r = c.repair(false).map_err(|e| format!("repair: {e}"))?;
        if r.pass == started.pass && !r.running {
            return if r.error.is_empty() { Ok(r) } else { Err(format!("the anti-entropy pass stopped: {}", r.error)) };
        }
        if Instant::now() > deadline {
            return Err("the anti-entropy pass did not finish in 600 s".into());
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Starts a replica that joins through the first and waits until its
/// movement is over; its movement status then.
fn join_one(cluster: &mut Cluster) -> Result<proto::MembershipResult, String> {
    let (i, started) = cluster.join(0)?;
    let port = cluster.port(i);
    let deadline = started + Duration::from_secs(600);
    let mut last = String::from("no answer");
    loop {
        if let Ok(mut c) = Client::connect("127.0.0.1", port, Duration::from_millis(200)) {
            match c.membership(proto::membership_request::Op::Status, "", false) {
                Ok(m) if m.kind == "join" && !m.running && m.error.is_empty() => return Ok(m),
                Ok(m) if !m.error.is_empty() => return Err(format!("the join failed: {}", m.error)),
                Ok(m) => last = format!("{} of {} transfers, {} keys", m.transfers_done, m.transfers, m.keys),
                Err(e) => last = e.to_string(),
            }
        }
        if Instant::now() > deadline {
            return Err(format!("the join did not finish in 600 s ({last}); its log ends:\n{}", cluster.log_tail(i)));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// Sends `bytes` bytes over one loopback TCP connection in 1 MiB writes;
/// the receiver writes them into `file` and syncs it (or drops them, with no
/// file). How long from the connection until the receiver is done.
fn tcp_copy(bytes: u64, file: Option<&Path>) -> Result<Duration, String> {
    let listener = TcpListener::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let addr = listener.local_addr().map_err(|e| e.to_string())?;
    let chunk: Vec<u8> = (0..1 << 20).map(|i: u32| (i.wrapping_mul(2_654_435_761) >> 13) as u8).collect();
    std::thread::scope(|s| {
        let receiver = s.spawn(move || -> Result<u64, String> {
            let (mut conn, _) = listener.accept().map_err(|e| e.to_string())?;
            let mut out = match file {
                Some(p) => Some(std::fs::File::create(p).map_err(|e| format!("cannot create {}: {e}", p.display()))?),
                None => None,
            };
            let mut buf = vec![0u8; 1 << 20];
            let mut got = 0u64;
            loop {
                let k = conn.read(&mut buf).map_err(|e| e.to_string())?;
                if k == 0 {
                    break;
                }
                got += k as u64;
                if let Some(f) = out.as_mut() {
                    f.write_all(&buf[..k]).map_err(|e| e.to_string())?;
                }
            }
            if let Some(f) = out {
                f.sync_all().map_err(|e| e.to_string())?;
            }
            Ok(got)
        });
        let started = Instant::now();
        let mut conn = TcpStream::connect(addr).map_err(|e| e.to_string())?;
        let mut left = bytes;
        while left > 0 {
            let k = left.min(chunk.len() as u64) as usize;
            conn.write_all(&chunk[..k]).map_err(|e| e.to_string())?;
            left -= k as u64;
        }
        conn.shutdown(std::net::Shutdown::Write).map_err(|e| e.to_string())?;
        let got = receiver.join().map_err(|_| "the copy's receiver panicked".to_string())??;
        if got != bytes {
            return Err(format!("the plain copy received {got} of {bytes} bytes"));
        }
        Ok(started.elapsed())
    })
}
