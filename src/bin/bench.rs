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

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, ExitCode, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use clap::{Parser, ValueEnum};
use quorumkv::Error;
use quorumkv::client::Client;
use quorumkv::client::histogram::Histogram;
use quorumkv::cluster::ring::load_cluster_file;
use quorumkv::config::parse_duration;
use quorumkv::coordinator::consistency::Consistency;

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

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    Ping,
    Mixed,
}

/// One load run.
#[derive(Clone)]
struct Load {
    op: Op,
    targets: Vec<(String, u16)>,
    clients: usize,
    duration: Option<Duration>,
    ops: Option<u64>,
    warmup: Duration,
    read_ratio: f64,
    level: Consistency,
    value_size: usize,
    keys: (u32, u32),
    zipf: Option<Arc<Vec<f64>>>,
}

/// What a run measured.
#[derive(Default)]
struct Report {
    ops: u64,
    seconds: f64,
    hist: Histogram,
    errors: BTreeMap<&'static str, u64>,
}

impl Report {
    fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.ops as f64 / self.seconds } else { 0.0 }
    }

    /// Throughput, p50 and p99 (µs).
    fn figures(&self) -> (f64, u64, u64) {
        (self.ops_per_sec(), self.hist.percentile(0.5), self.hist.percentile(0.99))
    }

    fn json(&self, label: &str) -> String {
        let errors: Vec<String> = ["unavailable", "timeout", "connection", "other"]
            .iter()
            .map(|k| format!("\"{k}\":{}", self.errors.get(k).copied().unwrap_or(0)))
            .collect();
        format!(
            "{{\"label\":\"{label}\",\"ops\":{},\"seconds\":{:.3},\"ops_per_sec\":{:.1},\"p50_us\":{},\"p95_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"mean_us\":{:.1},\"errors\":{{{}}}}}",
            self.ops,
            self.seconds,
            self.ops_per_sec(),
            self.hist.percentile(0.5),
            self.hist.percentile(0.95),
            self.hist.percentile(0.99),
            self.hist.percentile(0.999),
            self.hist.max(),
            self.hist.mean(),
            errors.join(",")
        )
    }

    fn line(&self, label: &str) -> String {
        let errs: u64 = self.errors.values().sum();
        let err = if errs == 0 {
            String::new()
        } else {
            let parts: Vec<String> = self.errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
            format!("  errors: {}", parts.join(", "))
        };
        format!(
            "{label:<34} {:>9.0} ops/s  p50 {:>6}  p95 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>7} µs{err}",
            self.ops_per_sec(),
            self.hist.percentile(0.5),
            self.hist.percentile(0.95),
            self.hist.percentile(0.99),
            self.hist.percentile(0.999),
            self.hist.max()
        )
    }
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Unavailable(_) => "unavailable",
        Error::Timeout(_) => "timeout",
        Error::Io(_) | Error::Protocol(_) => "connection",
        _ => "other",
    }
}

/// xorshift64*: a small, fast generator per thread.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }

    fn unit(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
    let weights: Vec<f64> = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).collect();
    let total: f64 = weights.iter().sum();
    let mut acc = 0.0;
    weights
        .iter()
        .map(|w| {
            acc += w / total;
            acc
        })
        .collect()
}

fn run(load: &Load) -> Report {
    let stop = Arc::new(AtomicBool::new(false));
    let measuring = Arc::new(AtomicBool::new(false));
    let done_ops = Arc::new(AtomicU64::new(0));
    let barrier = Arc::new(Barrier::new(load.clients + 1));
    let value = "v".repeat(load.value_size);
    let threads: Vec<_> = (0..load.clients)
        .map(|t| {
            let (stop, measuring, done_ops, barrier) = (stop.clone(), measuring.clone(), done_ops.clone(), barrier.clone());
            let (host, port) = load.targets[t % load.targets.len()].clone();
            let load = load.clone();
            let value = value.clone();
            std::thread::spawn(move || {
                let mut hist = Histogram::new();
                let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678_9ABC));
                let connect = || {
                    Client::connect(&host, port, Duration::from_secs(2)).and_then(|mut c| {
                        c.set_timeout(Some(Duration::from_secs(10)))?;
                        Ok(c)
                    })
                };
                let mut client = connect().ok();
                barrier.wait();
                let span = (load.keys.1 - load.keys.0 + 1) as u64;
                while !stop.load(Ordering::Relaxed) {
                    let key = match &load.zipf {
                        Some(cdf) => load.keys.0 + cdf.partition_point(|&c| c < rng.unit()).min(cdf.len() - 1) as u32,
                        None => load.keys.0 + (rng.next() % span) as u32,
                    };
                    let read = rng.unit() < load.read_ratio;
                    let Some(c) = client.as_mut() else {
                        *errors.entry("connection").or_default() += 1;
                        std::thread::sleep(Duration::from_millis(10));
                        client = connect().ok();
                        continue;
                    };
                    let start = Instant::now();
                    let result = match load.op {
                        Op::Ping => c.ping().map(|_| ()),
                        Op::Mixed if read => c.get(key, load.level).map(|_| ()),
                        Op::Mixed => c.put(key, &value, load.level).map(|_| ()),
                    };
                    let us = start.elapsed().as_micros() as u64;
                    let counted = measuring.load(Ordering::Relaxed);
                    match result {
                        Ok(()) if counted => {
                            hist.record(us);
                            if let Some(limit) = load.ops
                                && done_ops.fetch_add(1, Ordering::Relaxed) + 1 >= limit
                            {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(()) => {}
                        Err(e) => {
                            if counted {
                                *errors.entry(error_kind(&e)).or_default() += 1;
                            }
                            if matches!(e, Error::Io(_) | Error::Protocol(_)) {
                                client = None;
                            }
                        }
                    }
                }
                (hist, errors)
            })
        })
        .collect();
    barrier.wait();
    std::thread::sleep(load.warmup);
    measuring.store(true, Ordering::Relaxed);
    let started = Instant::now();
    match (load.duration, load.ops) {
        (_, Some(_)) => {
            while !stop.load(Ordering::Relaxed) {
                std::thread::sleep(Duration::from_millis(5));
            }
        }
        (d, None) => {
            std::thread::sleep(d.unwrap_or(Duration::from_secs(10)));
            stop.store(true, Ordering::Relaxed);
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let mut report = Report { seconds, ..Default::default() };
    for t in threads {
        let (h, e) = t.join().expect("client thread");
        report.hist.merge(&h);
        for (k, n) in e {
            *report.errors.entry(k).or_default() += n;
        }
    }
    report.ops = report.hist.count();
    report
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

/// A cluster of release replicas on free loopback ports, stopped on drop.
struct Cluster {
    children: Vec<Child>,
    ports: Vec<u16>,
    dir: PathBuf,
}

impl Cluster {
    fn start(n: usize, mode: Option<&str>, args: &Args) -> Result<Cluster, String> {
        let dir = std::env::temp_dir().join(format!("quorumkv-bench-{}-{}", std::process::id(), mode.unwrap_or("default")));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let mut held = Vec::new();
        let mut ports = Vec::new();
        let mut candidate = 20000 + (std::process::id() % 10000) as u16;
        while ports.len() < n {
            candidate = if candidate >= 32000 { 20000 } else { candidate + 1 };
            if let Ok(l) = TcpListener::bind(("127.0.0.1", candidate)) {
                ports.push(candidate);
                held.push(l);
            }
        }
        drop(held);
        let file = dir.join("replicas.txt");
        let text: String = ports.iter().enumerate().map(|(i, p)| format!("b{i} 127.0.0.1 {p}\n")).collect();
        std::fs::write(&file, text).map_err(|e| e.to_string())?;
        let exe = std::env::current_exe().map_err(|e| e.to_string())?;
        let replica = exe.with_file_name("replica");
        let mut children = Vec::new();
        for (i, port) in ports.iter().enumerate() {
            let mut cmd = if args.pin_replicas.is_empty() {
                Command::new(&replica)
            } else {
                let mut c = Command::new("taskset");
                c.arg("-c").arg(&args.pin_replicas).arg(&replica);
                c
            };
            cmd.arg(format!("b{i}")).arg(port.to_string()).arg(&file);
            if let Some(m) = mode {
                cmd.arg(m);
            }
            cmd.arg("--data-dir").arg(dir.join(format!("b{i}")));
            cmd.args(args.replica_flags.split_whitespace());
            let log = std::fs::File::create(dir.join(format!("b{i}.log"))).map_err(|e| e.to_string())?;
            children.push(
                cmd.stdin(Stdio::null())
                    .stdout(Stdio::null())
                    .stderr(log)
                    .spawn()
                    .map_err(|e| format!("cannot start {}: {e}", replica.display()))?,
            );
        }
        let c = Cluster { children, ports, dir };
        // Wait until every replica sees every other up.
        let deadline = Instant::now() + Duration::from_secs(20);
        loop {
            let all_up = c.ports.iter().all(|&p| {
                Client::connect("127.0.0.1", p, Duration::from_millis(300))
                    .and_then(|mut cl| cl.status())
                    .is_ok_and(|s| s.replicas.iter().all(|r| r.up))
            });
            if all_up {
                return Ok(c);
            }
            if Instant::now() > deadline {
                return Err(format!("the bench cluster did not come up; logs in {}", c.dir.display()));
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    fn targets(&self) -> Vec<(String, u16)> {
        self.ports.iter().map(|&p| ("127.0.0.1".to_string(), p)).collect()
    }

    fn rss_kib(&self, i: usize) -> u64 {
        let pid = self.children[i].id();
        // Under taskset the child is taskset until it execs the replica: same pid.
        std::fs::read_to_string(format!("/proc/{pid}/status"))
            .ok()
            .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse().ok()))
            .unwrap_or(0)
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        for c in &mut self.children {
            let _ = c.kill();
            let _ = c.wait();
        }
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn matrix(args: &Args) -> Result<(), String> {
    let d = args.duration.unwrap_or(Duration::from_secs(3));
    let pin = if args.pin_replicas.is_empty() { "not pinned".to_string() } else { format!("replicas pinned to CPU {}", args.pin_replicas) };
    println!(
        "quorumkv bench matrix: 4 replicas, RF 3, {} per run after a {:?} warm-up, {}-byte values, median of {} run(s) per row; {pin}",
        humantime(d),
        args.warmup,
        args.value_size,
        args.repeat.max(1)
    );
    println!(
        "rows behind a target ratio run {} times, each right after its ping reference (\"ping alongside\"); a target \
         is judged on the median of those pairs' ratios, so a drift in the host's speed does not skew it",
        args.pairs.max(1)
    );
    if !args.replica_flags.is_empty() {
        println!("replica flags: {}", args.replica_flags);
    }
    let mut results: BTreeMap<String, (f64, u64, u64)> = BTreeMap::new();
    // Per target row: each run's figures with those of the ping run just before it.
    let mut pairs: BTreeMap<String, Vec<Pair>> = BTreeMap::new();
    for mode in [None, Some("HINTED-HANDOFF")] {
        let cluster = Cluster::start(4, mode, args)?;
        println!("\n== mode {}", mode.unwrap_or("READ-REPAIR+HINTED-HANDOFF (default)"));
        if mode.is_none() {
            let idle: Vec<u64> = (0..4).map(|i| cluster.rss_kib(i)).collect();
            println!(
                "idle replica resident memory: {} KiB (max {} KiB)",
                idle.iter().map(u64::to_string).collect::<Vec<_>>().join(", "),
                idle.iter().max().unwrap()
            );
            results.insert("idle_rss".into(), (0.0, *idle.iter().max().unwrap(), 0));
            let conns = idle_connections(&cluster, 1000);
            match conns {
                Ok(rss) => {
                    println!("1000 idle client connections on one replica: all served, resident memory {rss} KiB");
                    results.insert("idle_conns_rss".into(), (0.0, rss, 0));
                }
                Err(e) => println!("1000 idle client connections: FAILED: {e}"),
            }
        }
        // Every key holds a value before reads are measured.
        let mut pre = Client::connect("127.0.0.1", cluster.ports[0], Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let v = "v".repeat(args.value_size);
        for k in 0..=255 {
            pre.put(k, &v, Consistency::All).map_err(|e| format!("preload: {e}"))?;
        }
        let all = cluster.targets();
        let first = vec![all[0].clone()];
        let base = |op, targets: Vec<(String, u16)>, clients, read_ratio, level, keys| Load {
            op,
            targets,
            clients,
            duration: Some(d),
            ops: None,
            warmup: args.warmup,
            read_ratio,
            level,
            value_size: args.value_size,
            keys,
            zipf: None,
        };
        use Consistency::{One, Quorum};
        let own = (0, 63); // keys the first coordinator holds
        let everything = (0, 255);
        let mut rows: Vec<(String, Load)> = Vec::new();
        if mode.is_none() {
            rows.push(("ping c=1".into(), base(Op::Ping, first.clone(), 1, 0.0, One, own)));
            rows.push(("ping c=32".into(), base(Op::Ping, all.clone(), 32, 0.0, One, everything)));
        }
        rows.push(("get ONE c=1 (local key)".into(), base(Op::Mixed, first.clone(), 1, 1.0, One, own)));
        rows.push(("get ONE c=32".into(), base(Op::Mixed, all.clone(), 32, 1.0, One, everything)));
        rows.push(("get QUORUM c=1".into(), base(Op::Mixed, first.clone(), 1, 1.0, Quorum, everything)));
        rows.push(("get QUORUM c=32".into(), base(Op::Mixed, all.clone(), 32, 1.0, Quorum, everything)));
        if mode.is_none() {
            rows.push(("put ONE c=1".into(), base(Op::Mixed, first.clone(), 1, 0.0, One, everything)));
            rows.push(("put ONE c=32".into(), base(Op::Mixed, all.clone(), 32, 0.0, One, everything)));
            rows.push(("put QUORUM c=1".into(), base(Op::Mixed, first.clone(), 1, 0.0, Quorum, everything)));
            rows.push(("put QUORUM c=32".into(), base(Op::Mixed, all.clone(), 32, 0.0, Quorum, everything)));
        }
        rows.push(("50/50 QUORUM c=32".into(), base(Op::Mixed, all.clone(), 32, 0.5, Quorum, everything)));
        // The ping each target ratio is judged against, run alternately with the row.
        let reference = |label: &str| match TARGETS.iter().find(|t| t.row == label) {
            Some(t) if mode.is_none() && t.clients == 1 => Some(base(Op::Ping, first.clone(), 1, 0.0, One, own)),
            Some(_) if mode.is_none() => Some(base(Op::Ping, all.clone(), 32, 0.0, One, everything)),
            _ => None,
        };
        let median = |mut runs: Vec<Report>| {
            runs.sort_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()));
            runs.swap_remove(runs.len() / 2)
        };
        for (label, load) in rows {
            let reference = reference(&label);
            let (mut runs, mut pings) = (Vec::new(), Vec::new());
            let times = if reference.is_some() { args.pairs.max(1) } else { args.repeat.max(1) };
            for _ in 0..times {
                if let Some(ping) = &reference {
                    pings.push(run(ping));
                }
                runs.push(run(&load));
            }
            // Run i of the row came right after ping i.
            if !pings.is_empty() {
                let each = runs.iter().zip(&pings).map(|(r, p)| Pair { row: r.figures(), ping: p.figures() });
                pairs.insert(label.clone(), each.collect());
            }
            let r = median(runs);
            println!("{}", r.line(&label));
            if args.json {
                println!("{}", r.json(&label));
            }
            let key = match mode {
                None => label.clone(),
                Some(m) => format!("{label} [{m}]"),
            };
            results.insert(key, r.figures());
            if !pings.is_empty() {
                let p = median(pings);
                println!("{}", p.line("  ping alongside"));
                results.insert(format!("ping alongside {label}"), p.figures());
            }
            let _ = std::io::stdout().flush();
        }
    }
    print_targets(&results, &pairs);
    Ok(())
}

/// Opens `n` client connections to the first replica, each sending a ping, then a
/// ping on every one of them; returns the replica's resident memory meanwhile.
fn idle_connections(cluster: &Cluster, n: usize) -> Result<u64, String> {
    let port = cluster.ports[0];
    let mut conns = Vec::with_capacity(n);
    for i in 0..n {
        let mut c = Client::connect("127.0.0.1", port, Duration::from_secs(2)).map_err(|e| format!("connection {i}: {e}"))?;
        c.set_timeout(Some(Duration::from_secs(5))).map_err(|e| e.to_string())?;
        c.ping().map_err(|e| format!("connection {i}: {e}"))?;
        conns.push(c);
    }
    for (i, c) in conns.iter_mut().enumerate() {
        c.ping().map_err(|e| format!("connection {i} (second ping): {e}"))?;
    }
    Ok(cluster.rss_kib(0))
}

fn humantime(d: Duration) -> String {
    if d.as_millis().is_multiple_of(1000) { format!("{} s", d.as_secs()) } else { format!("{} ms", d.as_millis()) }
}

/// A target judged against the ping run alongside its row.
struct Target {
    /// How the table names it.
    name: &'static str,
    /// The matrix row it judges.
    row: &'static str,
    /// Clients of the row (and of its ping).
    clients: usize,
    /// p50 latency ratio (at most `target`) rather than throughput ratio (at least `target`).
    latency: bool,
    target: f64,
}

const TARGETS: [Target; 4] = [
    Target { name: "1 client get ONE (local key) p50 / ping p50", row: "get ONE c=1 (local key)", clients: 1, latency: true, target: 1.5 },
    Target { name: "1 client put QUORUM p50 / ping p50", row: "put QUORUM c=1", clients: 1, latency: true, target: 3.0 },
    Target { name: "32 clients get ONE ops/s / ping ops/s", row: "get ONE c=32", clients: 32, latency: false, target: 0.5 },
    Target { name: "32 clients put QUORUM ops/s / ping ops/s", row: "put QUORUM c=32", clients: 32, latency: false, target: 0.25 },
];

/// A target row's run and the ping run just before it: (ops/s, p50 µs, p99 µs) each.
struct Pair {
    row: (f64, u64, u64),
    ping: (f64, u64, u64),
}

impl Target {
    /// The figure the target compares: the row's p50 over its ping's, or its throughput over its ping's.
    fn ratio(&self, row: (f64, u64, u64), ping: (f64, u64, u64)) -> f64 {
        if self.latency { row.1 as f64 / ping.1.max(1) as f64 } else { row.0 / ping.0.max(1.0) }
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

fn print_targets(r: &BTreeMap<String, (f64, u64, u64)>, pairs: &BTreeMap<String, Vec<Pair>>) {
    let get = |k: &str| r.get(k).copied().unwrap_or_default();
    let mut rows = Vec::new();
    let mut ratio_row = |name: &str, value: f64, cmp: &str, target: f64, detail: String| {
        let ok = if cmp == "<=" { value <= target } else { value >= target };
        rows.push(format!("{:<52} {:>7.2}x  target {cmp} {target}x  {}  {detail}", name, value, if ok { "met" } else { "NOT MET" }));
    };
    for t in &TARGETS {
        // Every target row runs in pairs with its ping (at least one).
        let mut ratios: Vec<f64> = pairs.get(t.row).map_or(&[][..], Vec::as_slice).iter().map(|p| t.ratio(p.row, p.ping)).collect();
        let value = median_of(&mut ratios);
        let each = ratios.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
        let cmp = if t.latency { "<=" } else { ">=" };
        if ratios.is_empty() {
            // Not measured (the matrix stopped early): never "met".
            ratio_row(t.name, f64::NAN, cmp, t.target, "(not measured)".into());
        } else {
            ratio_row(t.name, value, cmp, t.target, format!("(median of {} pairs: {each})", ratios.len()));
        }
    }
    let p32 = get("put QUORUM c=32");
    ratio_row(
        "32 clients put QUORUM p99 / its p50",
        p32.2 as f64 / p32.1.max(1) as f64,
        "<=",
        10.0,
        format!("({} vs {} µs)", p32.2, p32.1),
    );
    println!("\n== targets");
    for row in rows {
        println!("{row}");
    }
    let idle = get("idle_rss").1;
    println!(
        "{:<52} {:>7} KiB  target <= 16384 KiB  {}",
        "idle replica resident memory",
        idle,
        if idle > 0 && idle <= 16384 { "met" } else { "NOT MET" }
    );
    let conns = r.get("idle_conns_rss").map(|v| v.1);
    match conns {
        Some(k) => println!(
            "{:<52} {:>7} KiB  target <= 65536 KiB  {}",
            "1000 idle connections, resident memory",
            k,
            if k <= 65536 { "met" } else { "NOT MET" }
        ),
        None => println!("{:<52} NOT MET (connections were not all served)", "1000 idle connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        for (values, want) in [
            (vec![], 0.0),
            (vec![2.5], 2.5),
            (vec![3.0, 1.0, 2.0], 2.0),
            (vec![4.0, 1.0, 3.0, 2.0], 2.5),
            (vec![2.9, 2.1, 3.4, 2.4, 2.2], 2.4),
        ] {
            let mut v = values.clone();
            assert_eq!(median_of(&mut v), want, "{values:?}");
        }
    }

    #[test]
    fn targets_compare_latency_or_throughput_with_their_ping() {
        let latency = &TARGETS[1];
        let throughput = &TARGETS[3];
        assert!(latency.latency && !throughput.latency);
        // p50 60 µs against a ping's 20 µs: 3x; throughput 25k against 100k: 0.25x.
        assert_eq!(latency.ratio((10_000.0, 60, 100), (40_000.0, 20, 30)), 3.0);
        assert_eq!(throughput.ratio((25_000.0, 900, 2_000), (100_000.0, 300, 800)), 0.25);
        // A ping with no samples does not divide by zero.
        assert_eq!(latency.ratio((1.0, 50, 60), (0.0, 0, 0)), 50.0);
    }
}
