//! `bench`: a load generator for quorumkv, in the spirit of cassandra-stress and redis-benchmark.
//!
//! * `bench --replicas replicas.txt [flags]` (or `--host H --port P`): get/put load.
//! * `bench ping [flags]`: round trips of `Ping`, which a replica answers without
//!   touching the store — the transport floor every other figure is judged against.
//! * `bench matrix`: starts a cluster of release replicas on free loopback ports,
//!   runs the standard matrix, prints one table with the targets, stops the cluster.
//!
//! Latencies go into a log-linear histogram per client thread (no per-sample
//! storage); a warm-up period is not counted.
//!
//! The parts: `load` runs one load (client threads, the get/put/ping loop, a
//! histogram per thread merged at the end); `matrix` starts the cluster and runs the
//! standard rows, the target rows in pairs with their ping; `report` renders a run
//! and judges the targets.

mod load;
mod matrix;
mod report;

use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use quorumkv::cluster::consistency::Consistency;
use quorumkv::cluster::ring::load_cluster_file;
use quorumkv::config::parse_duration;

use load::{Load, Op, run, zipf_cdf};
use matrix::matrix;

/// Load generator for quorumkv.
#[derive(Parser, Debug, Clone)]
#[command(version, about)]
struct Args {
    /// `ping` (transport floor), `matrix` (start a cluster and run the standard matrix), or omit for get/put load.
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
    /// How long to measure (after the warm-up).
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
    /// one, quorum or all.
    #[arg(long, default_value = "one", value_parser = parse_level)]
    consistency: Consistency,
    /// Bytes per value written.
    #[arg(long, default_value_t = 100)]
    value_size: usize,
    /// Key range, e.g. 0-255 or 0-63.
    #[arg(long, default_value = "0-255", value_parser = parse_keys)]
    keys: (u32, u32),
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
    #[arg(long, default_value_t = 3)]
    repeat: usize,
    /// matrix: how many times a row behind a target ratio runs, each time right
    /// after its ping reference; the target is judged on the median of the pairs' ratios.
    #[arg(long, default_value_t = 5)]
    pairs: usize,
    /// matrix: extra flags for every replica (e.g. "--fsync never").
    #[arg(long, default_value = "", allow_hyphen_values = true)]
    replica_flags: String,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
enum Distribution {
    Uniform,
    Zipf,
}

fn parse_level(s: &str) -> Result<Consistency, String> {
    Consistency::parse(s).ok_or_else(|| format!("unknown consistency level {s:?}: use one, quorum or all"))
}

fn parse_keys(s: &str) -> Result<(u32, u32), String> {
    let bad = || format!("{s:?} is not a key range like 0-255");
    let (a, b) = s.split_once('-').ok_or_else(bad)?;
    let (a, b): (u32, u32) = (a.trim().parse().map_err(|_| bad())?, b.trim().parse().map_err(|_| bad())?);
    if a > b || b > 255 { Err(bad()) } else { Ok((a, b)) }
}

fn main() -> ExitCode {
    let args = Args::parse();
    let result = match args.mode.as_deref() {
        Some("matrix") => matrix(&args),
        Some("ping") => single(&args, Op::Ping),
        None => single(&args, Op::Mixed),
        Some(other) => Err(format!("unknown mode {other:?}: use ping, matrix, or nothing for get/put load")),
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
    let n = (args.keys.1 - args.keys.0 + 1) as usize;
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
        keys: args.keys,
        zipf: (args.distribution == Distribution::Zipf).then(|| Arc::new(zipf_cdf(n, args.zipf_s))),
    }
}

fn single(args: &Args, op: Op) -> Result<(), String> {
    let load = load_of(args, op, targets_of(args)?);
    let report = run(&load);
    let label = match op {
        Op::Ping => format!("ping c={}", load.clients),
        Op::Mixed => format!("r={} {} c={}", load.read_ratio, load.level, load.clients),
    };
    if args.json {
        println!("{}", report.json(&label));
    } else {
        println!("{}", report.line(&label));
    }
    Ok(())
}
