//! `bench matrix`: starts a cluster of release replicas on free loopback ports (pinned
//! with taskset if asked), once per mode, preloads every key and runs the standard
//! rows; in the default mode it also measures idle memory and 1000 idle connections,
//! and runs each row behind a target ratio in pairs with its ping reference. Then it
//! prints the targets table.

use std::collections::BTreeMap;
use std::io::Write;
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use quorumkv::client::Client;
use quorumkv::cluster::consistency::Consistency;

use crate::Args;
use crate::load::{Load, Op, run};
use crate::report::{Pair, Report, TARGETS, print_targets};

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

pub(crate) fn matrix(args: &Args) -> Result<(), String> {
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
