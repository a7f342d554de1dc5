//! One load run: `clients` threads, one connection each, spread round-robin over the
//! coordinators, looping ping or a get/put mix until the duration or the operation
//! count is reached. Latencies go into a log-linear histogram per client thread (no
//! per-sample storage), merged into one [`Report`] at the end; a warm-up period is
//! not counted, and errors are counted by kind.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Barrier};
use std::time::{Duration, Instant};

use quorumkv::Error;
use quorumkv::client::Client;
use quorumkv::client::histogram::Histogram;
use quorumkv::cluster::consistency::Consistency;

use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ping,
    Mixed,
}

/// One load run.
#[derive(Clone)]
pub(crate) struct Load {
    pub(crate) op: Op,
    pub(crate) targets: Vec<(String, u16)>,
    pub(crate) clients: usize,
    pub(crate) duration: Option<Duration>,
    pub(crate) ops: Option<u64>,
    pub(crate) warmup: Duration,
    pub(crate) read_ratio: f64,
    pub(crate) level: Consistency,
    pub(crate) value_size: usize,
    pub(crate) keys: (u32, u32),
    pub(crate) zipf: Option<Arc<Vec<f64>>>,
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

pub(crate) fn zipf_cdf(n: usize, s: f64) -> Vec<f64> {
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

/// The next key in `keys` (inclusive): uniform, or by rank along the Zipf
/// distribution `zipf` (one uniform draw located in the cumulative
/// distribution: drawing anew at each step of the search would skew it).
fn next_key(keys: (u32, u32), zipf: Option<&[f64]>, rng: &mut Rng) -> u32 {
    match zipf {
        Some(cdf) => {
            let u = rng.unit();
            keys.0 + cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u32
        }
        None => keys.0 + (rng.next() % (keys.1 - keys.0 + 1) as u64) as u32,
    }
}

pub(crate) fn run(load: &Load) -> Report {
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
                while !stop.load(Ordering::Relaxed) {
                    let key = next_key(load.keys, load.zipf.as_deref().map(Vec::as_slice), &mut rng);
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

#[cfg(test)]
mod tests {
    use super::*;

    /// Each key is picked in proportion to its rank's weight 1/k^s (keys 10 to 19 here).
    #[test]
    fn zipf_keys_follow_the_distribution() {
        let (n, s, draws) = (10, 1.0, 200_000);
        let cdf = zipf_cdf(n, s);
        let mut rng = Rng(7);
        let mut counts = vec![0usize; n];
        for _ in 0..draws {
            counts[next_key((10, 19), Some(&cdf), &mut rng) as usize - 10] += 1;
        }
        let total: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
        for (k, &c) in counts.iter().enumerate() {
            let want = 1.0 / ((k + 1) as f64).powf(s) / total;
            let got = c as f64 / draws as f64;
            assert!((got - want).abs() < 0.01, "rank {k}: {got:.4} of the picks, want {want:.4}");
        }
    }
}
