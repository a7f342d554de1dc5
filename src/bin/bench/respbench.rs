//! `bench resp`: the same tool, `redis-benchmark`, against `redis-server`
//! (an append-only file fsynced every second) and against quorumkv's RESP
//! port (4 replicas of a murmur3 cluster, the default fsync; SET at QUORUM,
//! GET at ONE through `--resp-consistency one`), in one run: 50 clients,
//! 100-byte values, random keys among 100,000, without pipelining and with
//! `-P 16`. The two servers take turns, several rounds; each row is the
//! median of its rounds, and the ratio is quorumkv's over redis's. Skipped,
//! with a note, where redis-server or redis-benchmark is missing.

use std::process::Command;

use crate::Args;
use crate::cluster::{Cluster, ClusterOpts};
use crate::redis::{INSTALL_HINT, Redis, find, version};

/// The issue's targets: (test, pipeline, quorumkv's least share of redis's rate).
const TARGETS: [(&str, u32, f64); 4] = [("SET", 1, 0.5), ("GET", 1, 0.8), ("SET", 16, 0.3), ("GET", 16, 0.3)];

/// Rounds of each (server, pipeline) pair; the median is reported.
const ROUNDS: usize = 3;

/// `redis-benchmark -t set,get` at `pipeline` against `port`: (SET, GET) requests a second.
fn run_benchmark(exe: &std::path::Path, port: u16, pipeline: u32, requests: u32) -> Result<(f64, f64), String> {
    let out = Command::new(exe)
        .args(["-h", "127.0.0.1", "-p", &port.to_string(), "-t", "set,get", "-c", "50", "-d", "100", "-r", "100000", "-q"])
        .args(["-n", &requests.to_string(), "-P", &pipeline.to_string()])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", exe.display()))?;
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    if !out.status.success() || text.contains("Error") {
        return Err(format!("redis-benchmark against port {port} failed: {text}{}", String::from_utf8_lossy(&out.stderr)));
    }
    // Progress lines end in CR; each result is the last, `SET: 12345.67 requests per second, …`.
    let rate = |test: &str| {
        text.split(['\r', '\n'])
            .filter_map(|l| l.trim_start().strip_prefix(test)?.strip_prefix(": ")?.split_whitespace().next()?.parse::<f64>().ok())
            .next_back()
            .ok_or_else(|| format!("no {test} result from redis-benchmark: {text}"))
    };
    Ok((rate("SET")?, rate("GET")?))
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v[v.len() / 2]
}

/// `bench resp` (see the module docs).
pub(crate) fn resp(args: &Args) -> Result<(), String> {
    let (Some(server), Some(benchmark)) = (find(&args.redis_server), find("redis-benchmark")) else {
        println!("bench resp: SKIPPED, redis-server or redis-benchmark is not installed ({INSTALL_HINT})");
        return Ok(());
    };
    println!("== redis-benchmark: redis-server ({}) against quorumkv's RESP port", version(&server));
    println!("   50 clients, 100-byte values, random keys among 100,000; redis: appendonly everysec;");
    println!("   quorumkv: 4 replicas (murmur3, RF 3), default fsync, SET at QUORUM, GET at ONE (--resp-consistency one)");
    let redis = Redis::start_as(&server, &args.pin_replicas, "resp-redis", true)?;
    let mut opts = ClusterOpts::new(args, 4, None, "partitioner murmur3\n", "resp");
    opts.flags.extend(["--resp-consistency".to_string(), "one".to_string()]);
    let cluster = Cluster::start_resp(opts, Vec::new())?;
    let qport = cluster.resp_port().ok_or("the bench cluster has no RESP port")?;
    let mut rows = Vec::new();
    for pipeline in [1u32, 16] {
        let requests = if pipeline == 1 { 100_000 } else { 400_000 };
        let (mut r_set, mut r_get, mut q_set, mut q_get) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let (s, g) = run_benchmark(&benchmark, redis.port(), pipeline, requests)?;
            r_set.push(s);
            r_get.push(g);
            let (s, g) = run_benchmark(&benchmark, qport, pipeline, requests)?;
            q_set.push(s);
            q_get.push(g);
        }
        rows.push(("SET", pipeline, median(r_set), median(q_set)));
        rows.push(("GET", pipeline, median(r_get), median(q_get)));
    }
    println!("\n{:<6} {:>3} {:>12} {:>12} {:>7} {:>8}", "test", "-P", "redis/s", "quorumkv/s", "ratio", "target");
    for (test, pipeline, r, q) in &rows {
        let target = TARGETS.iter().find(|(t, p, _)| t == test && p == pipeline).map_or(0.0, |t| t.2);
        let ratio = q / r;
        let verdict = if ratio >= target { "met" } else { "MISSED" };
        println!("{test:<6} {pipeline:>3} {r:>12.0} {q:>12.0} {ratio:>6.2}x {:>5.2}x {verdict}", target);
    }
    Ok(())
}
