//! `bench txn`: what transactions cost (issue 15's speed targets), on a
//! cluster of release replicas the bench starts (4 replicas, RF 3, keys 0–255
//! preloaded).
//!
//! 1. **Uncontended, one client**, in pairs run back to back: a QUORUM put
//!    then a 2-key transaction (an atomic batch), a QUORUM get then a 2-key
//!    `mget`; each pair's p50 ratio, judged on the median of the pairs
//!    (the targets: at most 3x and 1.5x).
//! 2. **32 clients**: transactions of 2 and 4 keys, uniform and zipf, with
//!    the share aborted by conflicts, beside a QUORUM put and a 2-key `mget`.

use std::sync::Arc;
use std::time::Duration;

use quorumkv::client::Client;
use quorumkv::cluster::consistency::Consistency::{self, All, Quorum};

use crate::Args;
use crate::cluster::{Cluster, ClusterOpts};
use crate::load::{KeySpace, Load, Op, run, zipf_cdf};
use crate::report::verdict;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    if v.is_empty() { f64::NAN } else { v[v.len() / 2] }
}

pub(crate) fn txn(args: &Args) -> Result<(), String> {
    let d = args.duration.unwrap_or(Duration::from_secs(3));
    let cluster = Cluster::start(ClusterOpts::new(args, 4, None, "", "txn"))?;
    let mut pre = Client::connect("127.0.0.1", cluster.port(0), Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let v = "v".repeat(args.value_size);
    for k in 0..=255 {
        pre.put(k, &v, All).map_err(|e| format!("preload: {e}"))?;
    }
    println!(
        "quorumkv bench txn: 4 replicas, RF 3, keys 0-255, {}-byte values, {:?} per run after a {:?} warm-up",
        args.value_size, d, args.warmup
    );
    let all = cluster.targets();
    let load = |op: Op, clients: usize, read_ratio: f64, level: Consistency, zipf: bool| Load {
        op,
        targets: all.clone(),
        clients,
        duration: Some(d),
        ops: None,
        warmup: args.warmup,
        read_ratio,
        level,
        value_size: args.value_size,
        keys: KeySpace::Range(0, 255),
        zipf: zipf.then(|| Arc::new(zipf_cdf(256, args.zipf_s))),
        phase: None,
        show_errors: args.show_errors,
    };
    let (mut txn_ratios, mut mget_ratios) = (Vec::new(), Vec::new());
    for pair in 0..args.pairs.max(1) {
        let put = run(&load(Op::Mixed, 1, 0.0, Quorum, false));
        let txn = run(&load(Op::Txn(2), 1, 0.0, Quorum, false));
        let get = run(&load(Op::Mixed, 1, 1.0, Quorum, false));
        let mget = run(&load(Op::MGet(2), 1, 0.0, Quorum, false));
        println!("-- pair {}", pair + 1);
        println!("{}", put.line("put QUORUM c=1"));
        println!("{}", txn.line("txn 2 keys c=1"));
        println!("{}", get.line("get QUORUM c=1"));
        println!("{}", mget.line("mget 2 keys c=1"));
        txn_ratios.push(txn.hist.percentile(0.5) as f64 / put.hist.percentile(0.5).max(1) as f64);
        mget_ratios.push(mget.hist.percentile(0.5) as f64 / get.hist.percentile(0.5).max(1) as f64);
    }
    println!("-- 32 clients");
    println!("{}", run(&load(Op::Mixed, 32, 0.0, Quorum, false)).line("put QUORUM c=32"));
    for (k, zipf) in [(2, false), (2, true), (4, false), (4, true)] {
        let label = format!("txn {k} keys c=32 {}", if zipf { "zipf" } else { "uniform" });
        println!("{}", run(&load(Op::Txn(k), 32, 0.0, Quorum, zipf)).line(&label));
    }
    println!("{}", run(&load(Op::MGet(2), 32, 0.0, Quorum, false)).line("mget 2 keys c=32"));
    println!("-- targets (median of {} pairs)", txn_ratios.len());
    let shown = |v: &[f64]| v.iter().map(|r| format!("{r:.2}")).collect::<Vec<_>>().join(", ");
    println!("{}", verdict("1 client 2-key txn p50 / put QUORUM p50", median(txn_ratios.clone()), "<=", 3.0, &shown(&txn_ratios)));
    println!("{}", verdict("1 client 2-key mget p50 / get QUORUM p50", median(mget_ratios.clone()), "<=", 1.5, &shown(&mget_ratios)));
    Ok(())
}
