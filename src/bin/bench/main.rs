//! `bench`: a load generator for quorumkv, in the spirit of cassandra-stress and redis-benchmark.
//!
//! * `bench --replicas replicas.txt [flags]` (or `--host H --port P`): get/put load;
//!   `--keys 0-255` (integer keys, a byte-ordered cluster) or `--keys N` (N string
//!   keys of 10 bytes, a murmur3 cluster), `--preload` to write every key first.
//! * `bench ping [flags]`: round trips of `Ping`, which a replica answers without
//!   touching the store — the transport floor every other figure is judged against.
//! * `bench matrix`: starts a cluster of release replicas on free loopback ports,
//!   runs the standard matrix (and the murmur3 rows on a second cluster, and the
//!   SERIAL and compare-and-set rows), prints one table with the targets, stops
//!   the clusters; `--only serial` runs the SERIAL and compare-and-set rows alone.
//! * `bench --cas`: compare-and-set load (`put KEY NEW if CURRENT` at SERIAL), with
//!   the share of them applied.
//! * `bench memory --keys N`: redis-server and a one-replica quorumkv cluster
//!   hold the same N keys: resident memory, then the time each takes to serve
//!   them all again after a kill (redis from its RDB file, quorumkv from its
//!   data folder).
//! * `bench snapshot --keys N`: `put QUORUM` p99 on a 3-replica cluster holding
//!   N keys, while no snapshot runs and while one does (within one load).
//! * `bench storage --keys N`: `memory` then `snapshot`, one targets table.
//! * `bench join --keys N`: a fourth replica joins three holding N keys: its
//!   streaming rate against a plain TCP copy of the same bytes, and `put
//!   QUORUM` p99 while it streams against at rest.
//! * `bench --txn K` / `bench --mget K`: transactions writing K keys (with
//!   the share aborted by conflicts) / read-atomic reads of K keys.
//! * `bench txn`: starts a cluster; an uncontended 2-key transaction against
//!   a QUORUM put and a 2-key `mget` against a QUORUM get (p50, in pairs),
//!   then transactions of 2 and 4 keys at 32 clients, uniform and zipf.
//! * `bench resp`: `redis-benchmark` against redis-server (AOF everysec) and
//!   against a 4-replica cluster's RESP port, SET and GET, with and without
//!   pipelining, the ratios against the targets (`respbench`).
//!
//! Latencies go into a log-linear histogram per client thread (no per-sample
//! storage); a warm-up period is not counted.
//!
//! The clusters the bench starts live in a temporary folder it removes at the
//! end; with `BENCH_KEEP` set in the environment it keeps it (the replicas'
//! logs say, for instance, how long a join spent copying and waiting).
//!
//! The parts: `load` runs one load (client threads, the get/put/ping loop, a
//! histogram per thread merged at the end) and writes key sets; `cluster` starts
//! replicas the bench owns; `matrix` runs the standard rows, the target rows in
//! pairs with their ping; `storage` runs the memory, restart and snapshot
//! comparisons, against a redis-server (`redis`, spoken to through `resp`);
//! `report` renders a run and judges the targets.

mod cluster;
mod join;
mod load;
mod matrix;
mod redis;
mod report;
mod resp;
mod respbench;
mod storage;
mod txn;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use quorumkv::cluster::consistency::Consistency;
use quorumkv::cluster::ring::load_cluster_file;
use quorumkv::config::parse_duration;

use load::{KeySpace, Load, MAX_STRING_KEYS, Op, put_keys, run, shuffled, zipf_cdf};
use matrix::matrix;

/// Load generator for quorumkv.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// `ping` (transport floor), `matrix` (start a cluster and run the standard matrix),
    /// `memory`, `snapshot` or `storage` (memory, restart and snapshot comparisons), `join` (streaming
    /// of a joining node), or omit for get/put load.
    mode: Option<String>,
    /// Cluster file; clients are spread round-robin over its replicas.
    #[arg(long)]
    replicas: Option<String>,
    /// One coordinator's host (with --port).
    #[arg(long, default_value = "127.0.0.1")]
    host: String,
    /// One coordinator's port.
    #[arg(long)]
    port: Option<u16>,
    /// Concurrent clients, one connection each.
    #[arg(long, default_value_t = 32)]
    clients: usize,
    /// How long to measure (after the warm-up); default 10 s, matrix 3 s a run, snapshot 120 s.
    #[arg(long, value_parser = parse_duration)]
    duration: Option<Duration>,
    /// Stop after this many measured operations instead.
    #[arg(long)]
    ops: Option<u64>,
    /// Not measured: lets connections, caches and the clock settle.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    warmup: Duration,
    /// Fraction of gets: 0 = all puts, 1 = all gets.
    #[arg(long, default_value_t = 0.5)]
    read_ratio: f64,
    /// one, quorum, all or serial (Paxos per key).
    #[arg(long, default_value = "one", value_parser = parse_level)]
    consistency: Consistency,
    /// Compare-and-set load instead of get/put: each operation is `put KEY NEW if
    /// CURRENT` at SERIAL, CURRENT the value the client last saw for the key (read at
    /// SERIAL the first time); reports the share of them applied. `--keys 0-0
    /// --clients 8`: eight clients racing on one key.
    #[arg(long)]
    cas: bool,
    /// Transaction load instead of get/put: each operation is a transaction
    /// writing K distinct keys (an atomic batch; `--distribution zipf` for
    /// contention); reports transactions a second and the share aborted by a conflict.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
    txn: Option<u8>,
    /// Read-atomic `mget` load of K distinct keys a read.
    #[arg(long, value_parser = clap::value_parser!(u8).range(1..=64))]
    mget: Option<u8>,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Keys: a range of integer keys such as 0-255 or 0-63 (a byte-ordered cluster; the
    /// default), or a count N (100000, 100k, 1M): N string keys of 10 bytes, k000000000 …
    /// (a murmur3 cluster; memory, snapshot and storage default to 1M).
    #[arg(long, value_parser = parse_keys)]
    keys: Option<KeySpace>,
    /// Write every key once (at ALL, in a shuffled order) before the load.
    #[arg(long)]
    preload: bool,
    /// How keys are chosen.
    #[arg(long, value_enum, default_value_t = Distribution::Uniform)]
    distribution: Distribution,
    /// Zipf exponent.
    #[arg(long, default_value_t = 0.99)]
    zipf_s: f64,
    /// One JSON object instead of a table line.
    #[arg(long)]
    json: bool,
    /// matrix: CPUs for the replicas (taskset list, e.g. 0); empty: no pinning.
    #[arg(long, default_value = "")]
    pin_replicas: String,
    /// matrix: runs per row; the run with the median throughput is reported (loopback
    /// latency on small VMs is bimodal, a single run can land on either mode).
    /// memory: restart rounds (redis, then quorumkv), judged on the median ratio.
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// matrix: how many times a row behind a target ratio runs, each time right
    /// after its ping reference; the target is judged on the median of the pairs' ratios.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// matrix: extra flags for every replica (e.g. "--fsync never").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    replica_flags: String,
    /// matrix: string keys of the murmur3 rows (preloaded); 0 skips them.
    #[arg(long, default_value_t = 100_000)]
    murmur3_keys: u32,
    /// Print each client's first error of each kind on stderr (what "unknown" or "timeout" said).
    #[arg(long)]
    show_errors: bool,
    /// matrix: run only these rows: `serial` (the SERIAL rows and their targets, the CAS rows).
    #[arg(long)]
    only: Option<String>,
    /// memory, snapshot, --preload: client threads that write the keys.
    #[arg(long, default_value_t = 32)]
    load_clients: usize,
    /// snapshot: the replicas' --snapshot-bytes (their default): a replica snapshots each time
    /// its log grows past it (at 1M keys under put QUORUM load: every 35-45 s, for about 20 s).
    #[arg(long, default_value_t = 64 << 20)]
    snapshot_bytes: u64,
    /// memory: the redis-server to compare with (a path, or a name looked up on PATH).
    #[arg(long, default_value = "redis-server")]
    redis_server: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Distribution {
    Uniform,
    Zipf,
}

fn parse_level(s: &str) -> Result<Consistency, String> {
    Consistency::parse(s).ok_or_else(|| format!("unknown consistency level {s:?}: use one, quorum, all or serial"))
}

/// `A-B` (integer keys, at most 255) or a count `N`, `Nk`, `NM` (string keys).
fn parse_keys(s: &str) -> Result<KeySpace, String> {
    if let Some((a, b)) = s.split_once('-') {
        let bad = || format!("{s:?} is not a key range like 0-255");
        let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
        return if a > b || b > 255 { Err(bad()) } else { Ok(KeySpace::Range(a, b)) };
    }
    let bad = || format!("{s:?} is neither a key range like 0-255 nor a key count like 100000, 100k or 1M");
    let (digits, scale) = match s.trim() {
        t if t.ends_with(['k', 'K']) => (&t[..t.len() - 1], 1_000),
        t if t.ends_with('M') => (&t[..t.len() - 1], 1_000_000),
        t => (t, 1),
    };
    let n = digits.parse::<u64>().map_err(|_| bad())?.saturating_mul(scale);
    match u32::try_from(n) {
        Ok(n) if (1..=MAX_STRING_KEYS).contains(&n) => Ok(KeySpace::Strings(n)),
        _ => Err(format!("{s:?}: the count of string keys must be from 1 to {MAX_STRING_KEYS}")),
    }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.mode.as_deref() {
        Some("matrix") => matrix(&args),
        Some("ping") => single(&args, Op::Ping),
        Some("memory") => storage::memory(&args),
        Some("snapshot") => storage::snapshot(&args),
        Some("storage") => storage::storage(&args),
        Some("join") => join::join(&args),
        Some("txn") => txn::txn(&args),
        Some("resp") => respbench::resp(&args),
        None if args.cas => single(&args, Op::Cas),
        None if args.txn.is_some() => single(&args, Op::Txn(args.txn.unwrap_or(2))),
        None if args.mget.is_some() => single(&args, Op::MGet(args.mget.unwrap_or(2))),
        None => single(&args, Op::Mixed),
        Some(other) => Err(format!(
            "unknown mode {other:?}: use ping, matrix, memory, snapshot, storage, join, txn, resp, or nothing for get/put load"
        )),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

fn targets_of(args: &Args) -> Result<Vec<(String, u16)>, String> {
    match (&args.replicas, args.port) {
        (Some(file), None) => Ok(load_cluster_file(file).map_err(|e| e.to_string())?.into_iter().map(|n| (n.host, n.port)).collect()),
        (None, Some(port)) => Ok(vec![(args.host.clone(), port)]),
        _ => Err("name the coordinators with --replicas FILE or one with --host H --port P".into()),
    }
}

fn load_of(args: &Args, op: Op, targets: Vec<(String, u16)>) -> Load {
    let keys = args.keys.unwrap_or(KeySpace::Range(0, 255));
    let n = keys.len();
    Load {
        op,
        targets,
        clients: args.clients.max(1),
        duration: args.duration,
        ops: args.ops,
        warmup: args.warmup,
        read_ratio: args.read_ratio,
        level: args.consistency,
        value_size: args.value_size,
        keys,
        zipf: (args.distribution == Distribution::Zipf).then(|| Arc::new(zipf_cdf(n, args.zipf_s))),
        phase: None,
        show_errors: args.show_errors,
    }
}

/// An error unless the cluster at `target` places string keys (murmur3).
fn check_murmur3(target: &(String, u16)) -> Result<(), String> {
    let mut c = quorumkv::client::Client::connect(&target.0, target.1, Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let partitioner = c.status().map_err(|e| format!("status of {}:{}: {e}", target.0, target.1))?.partitioner;
    if partitioner == "murmur3" {
        Ok(())
    } else {
        Err(format!(
            "--keys N (string keys) needs a murmur3 cluster (`partitioner murmur3` in its cluster file), and {}:{} is {partitioner}; \
             use a range such as --keys 0-255",
            target.0, target.1
        ))
    }
}

fn single(args: &Args, op: Op) -> Result<(), String> {
    let load = load_of(args, op, targets_of(args)?);
    if op != Op::Ping {
        if let KeySpace::Strings(_) = load.keys {
            check_murmur3(&load.targets[0])?;
        }
        if args.preload {
            let (took, retried) = match load.keys {
                KeySpace::Strings(n) => put_keys(&load.targets, &shuffled(n), load.value_size, Consistency::All, args.load_clients)?,
                KeySpace::Range(lo, hi) => {
                    let started = std::time::Instant::now();
                    let (host, port) = &load.targets[0];
                    let mut c = quorumkv::client::Client::connect(host, *port, Duration::from_secs(2)).map_err(|e| e.to_string())?;
                    let v = "v".repeat(load.value_size);
                    for k in lo..=hi {
                        c.put(k, &v, Consistency::All).map_err(|e| format!("preload of key {k}: {e}"))?;
                    }
                    (started.elapsed(), 0)
                }
            };
            eprintln!("preloaded {} keys in {:.1} s{}", load.keys.len(), took.as_secs_f64(), load::retried_note(retried));
        }
    }
    let report = run(&load);
    let label = match op {
        Op::Ping => format!("ping c={}", load.clients),
        Op::Mixed => format!("r={} {} c={}", load.read_ratio, load.level, load.clients),
        Op::Cas => format!("CAS SERIAL c={}", load.clients),
        Op::Txn(k) => format!("txn {k} keys {:?} c={}", args.distribution, load.clients).to_lowercase(),
        Op::MGet(k) => format!("mget {k} keys c={}", load.clients),
    };
    if args.json {
        println!("{}", report.json(&label));
    } else {
        println!("{}", report.line(&label));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_are_a_range_or_a_count() {
        assert_eq!(parse_keys("0-255"), Ok(KeySpace::Range(0, 255)));
        assert_eq!(parse_keys("64-127"), Ok(KeySpace::Range(64, 127)));
        assert_eq!(parse_keys("100000"), Ok(KeySpace::Strings(100_000)));
        assert_eq!(parse_keys("100k"), Ok(KeySpace::Strings(100_000)));
        assert_eq!(parse_keys("1M"), Ok(KeySpace::Strings(1_000_000)));
        assert_eq!(parse_keys("1000M"), Ok(KeySpace::Strings(MAX_STRING_KEYS)));
        for bad in ["0-256", "9-3", "a-b", "", "0", "1001M", "99999999999999999999", "18446744073709551615M", "1G", "-5"] {
            assert!(parse_keys(bad).is_err(), "{bad:?}");
        }
    }
}
