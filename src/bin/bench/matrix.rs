//! `bench matrix`: starts a cluster of release replicas on free loopback ports (pinned
//! with taskset if asked), once per mode, preloads every key and runs the standard
//! rows; in the default mode it also measures idle memory and 1000 idle connections,
//! and runs each row behind a target ratio in pairs with its ping reference. While
//! the default mode's byte-ordered cluster still runs, a murmur3 cluster with
//! `--murmur3-keys` string keys (preloaded) runs `get ONE` and `put QUORUM` at 32
//! clients, each run right after the same row on the byte-ordered cluster. It ends
//! with the SERIAL rows (each paired with the same load at QUORUM) and two
//! compare-and-set rows that report the share of CAS applied, and the
//! transaction rows (a 2-key transaction and `mget` paired with a QUORUM put
//! and get; transactions at 32 clients with their abort rate). Then it prints the
//! targets table. `--only serial` runs just the SERIAL and CAS rows.

use std::collections::BTreeMap;
use std::io::Write;
use std::time::Duration;

use quorumkv::client::Client;
use quorumkv::cluster::consistency::Consistency;

use crate::Args;
use crate::cluster::{Cluster, ClusterOpts};
use crate::load::{KeySpace, Load, Op, put_keys, retried_note, run};
use crate::report::{MURMUR3_TARGETS, Pair, Report, TARGETS, print_targets};

/// The median run by throughput.
fn median(mut runs: Vec<Report>) -> Report {
    runs.sort_by(|a, b| a.ops_per_sec().total_cmp(&b.ops_per_sec()));
    runs.swap_remove(runs.len() / 2)
}

/// `n` as the tables show it: `100k`, `1M`, or the number.
pub(crate) fn count_label(n: u64) -> String {
    match n {
        n if n >= 1_000_000 && n.is_multiple_of(1_000_000) => format!("{}M", n / 1_000_000),
        n if n >= 1000 && n.is_multiple_of(1000) => format!("{}k", n / 1000),
        n => n.to_string(),
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
    let serial_only = match args.only.as_deref() {
        None => false,
        Some("serial") => true,
        Some(other) => return Err(format!("--only {other:?}: the matrix can run only `serial` (its SERIAL and CAS rows)")),
    };
    let modes: &[Option<&str>] = if serial_only { &[None] } else { &[None, Some("HINTED-HANDOFF")] };
    for &mode in modes {
        let tag = format!("matrix-{}", mode.unwrap_or("default"));
        let cluster = Cluster::start(ClusterOpts::new(args, 4, mode, "", &tag))?;
        println!("\n== mode {}", mode.unwrap_or("READ-REPAIR+HINTED-HANDOFF (default)"));
        if mode.is_none() && !serial_only {
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
        let mut pre = Client::connect("127.0.0.1", cluster.port(0), Duration::from_secs(2)).map_err(|e| e.to_string())?;
        let v = "v".repeat(args.value_size);
        for k in 0..=255 {
            pre.put(k, &v, Consistency::All).map_err(|e| format!("preload: {e}"))?;
        }
        let all = cluster.targets();
        let first = vec![all[0].clone()];
        let base = |op, targets: Vec<(String, u16)>, clients, read_ratio, level, (lo, hi): (u32, u32)| Load {
            op,
            targets,
            clients,
            duration: Some(d),
            ops: None,
            warmup: args.warmup,
            read_ratio,
            level,
            value_size: args.value_size,
            keys: KeySpace::Range(lo, hi),
            zipf: None,
            phase: None,
            show_errors: args.show_errors,
        };
        use Consistency::{One, Quorum, Serial};
        let own = (0, 63); // keys the first coordinator holds
        let everything = (0, 255);
        let mut rows: Vec<(String, Load)> = Vec::new();
        if mode.is_none() && !serial_only {
            rows.push(("ping c=1".into(), base(Op::Ping, first.clone(), 1, 0.0, One, own)));
            rows.push(("ping c=32".into(), base(Op::Ping, all.clone(), 32, 0.0, One, everything)));
        }
        if !serial_only {
            rows.push(("get ONE c=1 (local key)".into(), base(Op::Mixed, first.clone(), 1, 1.0, One, own)));
            rows.push(("get ONE c=32".into(), base(Op::Mixed, all.clone(), 32, 1.0, One, everything)));
            rows.push(("get QUORUM c=1".into(), base(Op::Mixed, first.clone(), 1, 1.0, Quorum, everything)));
            rows.push(("get QUORUM c=32".into(), base(Op::Mixed, all.clone(), 32, 1.0, Quorum, everything)));
        }
        if mode.is_none() && !serial_only {
            rows.push(("put ONE c=1".into(), base(Op::Mixed, first.clone(), 1, 0.0, One, everything)));
            rows.push(("put ONE c=32".into(), base(Op::Mixed, all.clone(), 32, 0.0, One, everything)));
            rows.push(("put QUORUM c=1".into(), base(Op::Mixed, first.clone(), 1, 0.0, Quorum, everything)));
            rows.push(("put QUORUM c=32".into(), base(Op::Mixed, all.clone(), 32, 0.0, Quorum, everything)));
        }
        if !serial_only {
            rows.push(("50/50 QUORUM c=32".into(), base(Op::Mixed, all.clone(), 32, 0.5, Quorum, everything)));
        }
        // The ping each target ratio is judged against, run alternately with the row.
        let reference = |label: &str| match TARGETS.iter().find(|t| t.row == label) {
            Some(t) if mode.is_none() && t.clients == 1 => Some(base(Op::Ping, first.clone(), 1, 0.0, One, own)),
            Some(_) if mode.is_none() => Some(base(Op::Ping, all.clone(), 32, 0.0, One, everything)),
            _ => None,
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
        if mode.is_none() && args.murmur3_keys > 0 && !serial_only {
            let byte_ordered = [
                ("get ONE c=32", base(Op::Mixed, all.clone(), 32, 1.0, One, everything)),
                ("put QUORUM c=32", base(Op::Mixed, all.clone(), 32, 0.0, Quorum, everything)),
            ];
            murmur3_rows(args, &byte_ordered, &mut results, &mut pairs)?;
        }
        if mode.is_none() {
            println!(
                "\n== SERIAL (Paxos per key) on the same cluster; each row runs {} times, each right after the same load at \
                 QUORUM (\"QUORUM alongside\")",
                args.pairs.max(1)
            );
            let serial = [
                (
                    "get SERIAL c=1",
                    base(Op::Mixed, first.clone(), 1, 1.0, Serial, everything),
                    base(Op::Mixed, first.clone(), 1, 1.0, Quorum, everything),
                ),
                (
                    "put SERIAL c=1",
                    base(Op::Mixed, first.clone(), 1, 0.0, Serial, everything),
                    base(Op::Mixed, first.clone(), 1, 0.0, Quorum, everything),
                ),
                (
                    "put SERIAL c=32",
                    base(Op::Mixed, all.clone(), 32, 0.0, Serial, everything),
                    base(Op::Mixed, all.clone(), 32, 0.0, Quorum, everything),
                ),
            ];
            for (label, load, reference) in &serial {
                paired_row(args, label, load, reference, "QUORUM alongside", &mut results, &mut pairs);
            }
            // Not targets: compare-and-set, on one key by 8 clients (contention) and on
            // every key by 32; each reports its share of applied compare-and-sets.
            for (label, keys, clients) in [("CAS SERIAL c=8 (one key)", (0, 0), 8), ("CAS SERIAL c=32", everything, 32)] {
                let r = median((0..args.repeat.max(1)).map(|_| run(&base(Op::Cas, all.clone(), clients, 0.0, Serial, keys))).collect());
                println!("{}", r.line(label));
                if args.json {
                    println!("{}", r.json(label));
                }
                results.insert(label.to_string(), r.figures());
            }
        }
        if mode.is_none() && !serial_only {
            println!(
                "\n== transactions on the same cluster; the 1-client rows run {} times, each right after a QUORUM put or get \
                 by the same client",
                args.pairs.max(1)
            );
            let rows = [
                ("txn 2 keys c=1", Op::Txn(2), 0.0, "QUORUM put alongside"),
                ("mget 2 keys c=1", Op::MGet(2), 1.0, "QUORUM get alongside"),
            ];
            for (label, op, ratio, name) in rows {
                let reference = base(Op::Mixed, first.clone(), 1, ratio, Quorum, everything);
                paired_row(args, label, &base(op, first.clone(), 1, 0.0, Quorum, everything), &reference, name, &mut results, &mut pairs);
            }
            // Not targets: 32 clients, with the share aborted by conflicts.
            let zipf = Some(std::sync::Arc::new(crate::load::zipf_cdf(256, args.zipf_s)));
            for (label, keys, skewed) in [("txn 2 keys c=32", 2, false), ("txn 2 keys c=32 zipf", 2, true), ("txn 4 keys c=32", 4, false)] {
                let load = Load {
                    zipf: if skewed { zipf.clone() } else { None },
                    ..base(Op::Txn(keys), all.clone(), 32, 0.0, Quorum, everything)
                };
                let r = median((0..args.repeat.max(1)).map(|_| run(&load)).collect());
                println!("{}", r.line(label));
                if args.json {
                    println!("{}", r.json(label));
                }
                results.insert(label.to_string(), r.figures());
            }
        }
    }
    print_targets(&results, &pairs, args.murmur3_keys > 0 && !serial_only, serial_only);
    Ok(())
}

/// The murmur3 rows: a 4-replica murmur3 cluster (RF 3, 16 tokens a node) with
/// `--murmur3-keys` string keys, preloaded at ALL; each row runs `--pairs` times,
/// each time right after `byte_ordered`'s load of the same row (on the
/// byte-ordered cluster, which still runs), and is judged on the pairs' ratios.
fn murmur3_rows(
    args: &Args,
    byte_ordered: &[(&str, Load)],
    results: &mut BTreeMap<String, (f64, u64, u64)>,
    pairs: &mut BTreeMap<String, Vec<Pair>>,
) -> Result<(), String> {
    let n = args.murmur3_keys;
    let cluster = Cluster::start(ClusterOpts::new(args, 4, None, "partitioner murmur3\n", "matrix-murmur3"))?;
    let order: Vec<u32> = (0..n).collect();
    let (took, retried) =
        put_keys(&cluster.targets(), &order, args.value_size, Consistency::All, 32).map_err(|e| format!("preload: {e}"))?;
    println!(
        "\n== murmur3: 4 replicas, RF 3, 16 tokens each, {n} string keys of 10 bytes (preloaded at ALL in {:.1} s{}); \
         each row runs {} times, each right after the same row on the byte-ordered cluster (\"byte-ordered alongside\")",
        took.as_secs_f64(),
        retried_note(retried),
        args.pairs.max(1)
    );
    for (row, reference) in byte_ordered {
        let label = format!("{row} murmur3");
        debug_assert!(MURMUR3_TARGETS.iter().any(|t| t.row == label));
        let load = Load { targets: cluster.targets(), keys: KeySpace::Strings(n), ..reference.clone() };
        paired_row(args, &label, &load, reference, "byte-ordered alongside", results, pairs);
    }
    // Not a target: the same rows on only 256 of the murmur3 keys, as many as the
    // byte-ordered cluster holds, so both touch a working set that fits in the caches.
    // The ratio is then the murmur3 code's own cost; the gap to the rows above is
    // what 100,000 keys cost in memory stalls (see docs/PERFORMANCE.md).
    for (row, reference) in byte_ordered {
        let load = Load { targets: cluster.targets(), keys: KeySpace::Strings(256), ..reference.clone() };
        let mut ratios = Vec::new();
        for _ in 0..args.pairs.max(1) {
            let b = run(reference).ops_per_sec();
            ratios.push(run(&load).ops_per_sec() / b.max(1.0));
        }
        ratios.sort_by(f64::total_cmp);
        println!(
            "{row} murmur3 on 256 of its keys / byte-ordered alongside: {:.2}x (median of {}; not a target: the code's own cost)",
            ratios[ratios.len() / 2],
            ratios.len()
        );
    }
    Ok(())
}

/// A row judged against `reference`: `--pairs` times the reference, then the
/// row; prints the medians and keeps each pair for the targets table.
fn paired_row(
    args: &Args,
    label: &str,
    load: &Load,
    reference: &Load,
    reference_name: &str,
    results: &mut BTreeMap<String, (f64, u64, u64)>,
    pairs: &mut BTreeMap<String, Vec<Pair>>,
) {
    let (mut runs, mut refs) = (Vec::new(), Vec::new());
    for _ in 0..args.pairs.max(1) {
        refs.push(run(reference));
        runs.push(run(load));
    }
    let each = runs.iter().zip(&refs).map(|(r, p)| Pair { row: r.figures(), ping: p.figures() });
    pairs.insert(label.to_string(), each.collect());
    let (r, b) = (median(runs), median(refs));
    println!("{}", r.line(label));
    if args.json {
        println!("{}", r.json(label));
    }
    println!("{}", b.line(&format!("  {reference_name}")));
    results.insert(label.to_string(), r.figures());
    results.insert(format!("{reference_name} {label}"), b.figures());
    let _ = std::io::stdout().flush();
}

/// Opens `n` client connections to the first replica, each sending a ping, then a
/// ping on every one of them; returns the replica's resident memory meanwhile.
fn idle_connections(cluster: &Cluster, n: usize) -> Result<u64, String> {
    let port = cluster.port(0);
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
