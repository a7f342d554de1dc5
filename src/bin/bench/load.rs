//! One load run: `clients` threads, one connection each, spread round-robin over the
//! coordinators, looping ping or a get/put mix until the duration or the operation
//! count is reached. Latencies go into a log-linear histogram per client thread (no
//! per-sample storage), merged into one [`Report`] at the end; a warm-up period is
//! not counted, and errors are counted by kind.
//!
//! Keys are the integers of a range (a byte-ordered cluster's `"0"`..`"255"`) or
//! `N` string keys `k000000000`, `k000000001`, … (10 bytes each, a murmur3
//! cluster's). [`put_keys`] writes a set of string keys once each, from many
//! threads, to preload a cluster or fill it for the memory bench.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Barrier, Mutex};
use std::time::{Duration, Instant};

use quorumkv::Error;
use quorumkv::client::Cas;
use quorumkv::client::histogram::Histogram;
use quorumkv::client::{Client, ToKey};
use quorumkv::cluster::consistency::Consistency;
use quorumkv::paxos::Expect;

use crate::report::Report;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Op {
    Ping,
    Mixed,
    /// Compare-and-set: `put KEY NEW if CURRENT` (SERIAL), CURRENT the value
    /// the client last saw for the key (a SERIAL read first, if it saw none).
    Cas,
    /// A transaction writing this many distinct keys (an atomic batch); one
    /// that loses a conflict counts as aborted, not in the latencies.
    Txn(u8),
    /// A read-atomic `mget` of this many distinct keys.
    MGet(u8),
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
    pub(crate) keys: KeySpace,
    pub(crate) zipf: Option<Arc<Vec<f64>>>,
    /// If set, each measured operation also goes into [`Report::phases`]`[p]`, `p`
    /// the larger of this phase's value (below [`PHASES`]) when it started and when it ended.
    pub(crate) phase: Option<Arc<AtomicU8>>,
    /// Print each client's first error of each kind (to stderr).
    pub(crate) show_errors: bool,
}

impl Load {
    /// `put QUORUM` by `--clients` clients on `n` string keys for `d` (after
    /// `--warmup`), each operation's latency also sorted by `phase`.
    pub(crate) fn phased_quorum_puts(args: &crate::Args, targets: Vec<(String, u16)>, n: u32, d: Duration, phase: Arc<AtomicU8>) -> Load {
        Load {
            op: Op::Mixed,
            targets,
            clients: args.clients.max(1),
            duration: Some(d),
            ops: None,
            warmup: args.warmup,
            read_ratio: 0.0,
            level: Consistency::Quorum,
            value_size: args.value_size,
            keys: KeySpace::Strings(n),
            zipf: None,
            phase: Some(phase),
            show_errors: args.show_errors,
        }
    }
}

/// How many phases [`Load::phase`] tells apart.
pub(crate) const PHASES: usize = 3;

/// The keys a load picks from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum KeySpace {
    /// The integers `lo..=hi`, sent as decimal text (a byte-ordered cluster's keys).
    Range(u32, u32),
    /// `N` string keys, [`string_key`]`(0..N)` (a murmur3 cluster's).
    Strings(u32),
}

impl KeySpace {
    /// How many keys.
    pub(crate) fn len(self) -> usize {
        match self {
            KeySpace::Range(lo, hi) => (hi - lo) as usize + 1,
            KeySpace::Strings(n) => n as usize,
        }
    }

    /// The key of index `i` (`0..len()`).
    fn key(self, i: u32) -> BenchKey {
        match self {
            KeySpace::Range(lo, _) => BenchKey::Int(lo + i),
            KeySpace::Strings(_) => BenchKey::Str(string_key(i)),
        }
    }
}

/// The most string keys: [`string_key`] has nine digits.
pub(crate) const MAX_STRING_KEYS: u32 = 1_000_000_000;

/// String key `i` (below [`MAX_STRING_KEYS`]): `format!("k{i:09}")`, 10 bytes, without allocating.
pub(crate) fn string_key(i: u32) -> [u8; 10] {
    let mut k = *b"k000000000";
    let mut n = i;
    for d in k[1..].iter_mut().rev() {
        *d = b'0' + (n % 10) as u8;
        n /= 10;
    }
    k
}

/// One key of a load, as the client sends it.
enum BenchKey {
    Int(u32),
    Str([u8; 10]),
}

impl ToKey for BenchKey {
    fn to_key(&self) -> Vec<u8> {
        match self {
            BenchKey::Int(k) => k.to_key(),
            BenchKey::Str(k) => k.to_vec(),
        }
    }
}

/// Fills `out` with `size` pseudo-random bytes that depend only on key index `i`
/// (the same value for the same key in every store; incompressible, so neither
/// store's files are helped by compression).
pub(crate) fn value_of(i: u32, size: usize, out: &mut Vec<u8>) {
    out.clear();
    let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ (u64::from(i) + 1).wrapping_mul(0xD6E8_FEB8_6659_FD93));
    while out.len() < size {
        let word = rng.next().to_le_bytes();
        out.extend_from_slice(&word[..(size - out.len()).min(8)]);
    }
}

/// `0..n` in a shuffled order (the same for every run).
pub(crate) fn shuffled(n: u32) -> Vec<u32> {
    let mut order: Vec<u32> = (0..n).collect();
    let mut rng = Rng(0x2545_F491_4F6C_DD1D);
    for i in (1..order.len()).rev() {
        order.swap(i, (rng.next() % (i as u64 + 1)) as usize);
    }
    order
}

/// `"; N write(s) retried …"` for [`put_keys`]' retry count, empty for none.
pub(crate) fn retried_note(retried: u64) -> String {
    if retried == 0 { String::new() } else { format!("; {retried} write(s) retried: a replica was briefly unavailable") }
}

/// How long [`put_keys`] retries one key: longer than a replica that missed a few
/// heartbeats on a saturated CPU takes to be seen up again.
const PATIENCE: Duration = Duration::from_secs(30);

/// Writes string key `i` with [`value_of`]`(i)` once for each `i` of `order`, at
/// `level`, from `clients` threads (one connection each, spread over `targets`;
/// each thread takes the next chunk of `order`). A write that fails is retried
/// (on a new connection if the old one broke) for up to [`PATIENCE`]; returns how
/// long it took and how many writes failed at least once (e.g. `Unavailable` while
/// a replica starved of CPU was believed down), or the first error that outlived
/// its retries.
pub(crate) fn put_keys(
    targets: &[(String, u16)],
    order: &[u32],
    value_size: usize,
    level: Consistency,
    clients: usize,
) -> Result<(Duration, u64), String> {
    const CHUNK: usize = 64;
    let started = Instant::now();
    let next = AtomicUsize::new(0);
    let retried = AtomicU64::new(0);
    let failed: Mutex<Option<String>> = Mutex::new(None);
    std::thread::scope(|s| {
        for t in 0..clients.max(1) {
            let (host, port) = targets[t % targets.len()].clone();
            let (next, failed, retried) = (&next, &failed, &retried);
            s.spawn(move || {
                let connect = || {
                    Client::connect(&host, port, Duration::from_secs(2)).and_then(|mut c| {
                        c.set_timeout(Some(Duration::from_secs(30)))?;
                        Ok(c)
                    })
                };
                let mut client = None;
                let mut value = Vec::with_capacity(value_size);
                loop {
                    let at = next.fetch_add(CHUNK, Ordering::Relaxed);
                    if at >= order.len() || failed.lock().unwrap().is_some() {
                        return;
                    }
                    for &i in &order[at..(at + CHUNK).min(order.len())] {
                        value_of(i, value_size, &mut value);
                        let mut error = None;
                        let give_up = Instant::now() + PATIENCE;
                        for attempt in 0u32.. {
                            if attempt > 0 {
                                if attempt == 1 {
                                    retried.fetch_add(1, Ordering::Relaxed);
                                }
                                if Instant::now() > give_up {
                                    break;
                                }
                                std::thread::sleep(Duration::from_millis(10 << attempt.min(4)));
                            }
                            if client.is_none() {
                                match connect() {
                                    Ok(c) => client = Some(c),
                                    Err(e) => {
                                        error = Some(e);
                                        continue;
                                    }
                                }
                            }
                            let Some(c) = client.as_mut() else { continue };
                            match c.put(string_key(i), &value, level) {
                                Ok(_) => {
                                    error = None;
                                    break;
                                }
                                Err(e) => {
                                    if matches!(e, Error::Io(_) | Error::Protocol(_)) {
                                        client = None;
                                    }
                                    error = Some(e);
                                }
                            }
                        }
                        if let Some(e) = error {
                            failed.lock().unwrap().get_or_insert(format!("writing key {}: {e}", String::from_utf8_lossy(&string_key(i))));
                            return;
                        }
                    }
                }
            });
        }
    });
    match failed.into_inner().unwrap() {
        Some(e) => Err(e),
        None => Ok((started.elapsed(), retried.into_inner())),
    }
}

/// How the compare-and-sets of a run ended (errors aside).
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub(crate) struct CasCounts {
    /// The condition held: written.
    pub(crate) applied: u64,
    /// The condition did not hold (another client changed the key first).
    pub(crate) not_applied: u64,
}

/// A value no other compare-and-set writes: client `t`'s `n`th, padded to `size` bytes.
fn cas_value(t: usize, n: u64, size: usize) -> Vec<u8> {
    let mut v = format!("c{t}.{n}.").into_bytes();
    v.resize(size.max(v.len()), b'v');
    v
}

fn error_kind(e: &Error) -> &'static str {
    match e {
        Error::Unavailable(_) => "unavailable",
        // A SERIAL operation whose proposal went out: may or may not have been applied.
        Error::Timeout(m) if m.starts_with("Unknown:") => "unknown",
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

/// The index (`0..n`) of the next key: uniform, or by rank along the Zipf
/// distribution `zipf` (one uniform draw located in the cumulative
/// distribution: drawing anew at each step of the search would skew it).
fn next_index(n: usize, zipf: Option<&[f64]>, rng: &mut Rng) -> u32 {
    match zipf {
        Some(cdf) => {
            let u = rng.unit();
            cdf.partition_point(|&c| c < u).min(cdf.len() - 1) as u32
        }
        None => (rng.next() % n as u64) as u32,
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
                let mut phases: [Histogram; PHASES] = Default::default();
                let phase_now = || load.phase.as_ref().map_or(0, |p| usize::from(p.load(Ordering::Relaxed)).min(PHASES - 1));
                let mut errors: BTreeMap<&'static str, u64> = BTreeMap::new();
                let mut rng = Rng(0x9E37_79B9_7F4A_7C15 ^ ((t as u64 + 1) * 0x1234_5678_9ABC));
                let connect = || {
                    Client::connect(&host, port, Duration::from_secs(2)).and_then(|mut c| {
                        c.set_timeout(Some(Duration::from_secs(10)))?;
                        Ok(c)
                    })
                };
                let mut client = connect().ok();
                // Op::Cas: the value last seen per key index (outer None: not known).
                let mut seen: std::collections::HashMap<u32, Option<Vec<u8>>> = std::collections::HashMap::new();
                let mut cas = CasCounts::default();
                let mut serial = 0u64;
                barrier.wait();
                while !stop.load(Ordering::Relaxed) {
                    let index = next_index(load.keys.len(), load.zipf.as_deref().map(Vec::as_slice), &mut rng);
                    let key = load.keys.key(index);
                    let read = rng.unit() < load.read_ratio;
                    let Some(c) = client.as_mut() else {
                        *errors.entry("connection").or_default() += 1;
                        std::thread::sleep(Duration::from_millis(10));
                        client = connect().ok();
                        continue;
                    };
                    let phase_at_start = phase_now();
                    let start = Instant::now();
                    // Distinct keys for a transaction or an mget (the first is the one drawn above).
                    let several = |n: u8, rng: &mut Rng| {
                        let mut picked = vec![index];
                        while picked.len() < usize::from(n).min(load.keys.len()) {
                            let i = next_index(load.keys.len(), load.zipf.as_deref().map(Vec::as_slice), rng);
                            if !picked.contains(&i) {
                                picked.push(i);
                            }
                        }
                        picked.into_iter().map(|i| load.keys.key(i).to_key()).collect::<Vec<Vec<u8>>>()
                    };
                    let mut aborted = false;
                    let result = match load.op {
                        Op::Ping => c.ping().map(|_| ()),
                        Op::Txn(n) => {
                            let writes = several(n, &mut rng).into_iter().map(|k| (k, Some(value.as_bytes().to_vec()))).collect();
                            match c.txn(Vec::new(), writes) {
                                Ok(_) => Ok(()),
                                Err(Error::Conflict(_)) => {
                                    aborted = true;
                                    Ok(())
                                }
                                Err(e) => Err(e),
                            }
                        }
                        Op::MGet(n) => c.mget(several(n, &mut rng)).map(|_| ()),
                        Op::Mixed if read => c.get(&key, load.level).map(|_| ()),
                        Op::Mixed => c.put(&key, &value, load.level).map(|_| ()),
                        Op::Cas => {
                            let counted = measuring.load(Ordering::Relaxed);
                            let mut attempt = || -> Result<(), Error> {
                                let expect = match seen.get(&index) {
                                    Some(v) => v.clone(),
                                    None => c.get(&key, Consistency::Serial)?,
                                };
                                serial += 1;
                                let new = cas_value(t, serial, load.value_size);
                                let condition = expect.map_or(Expect::Absent, |v| Expect::Equals(v.into()));
                                match c.put_if(&key, &new, condition)? {
                                    Cas::Applied(_) => {
                                        seen.insert(index, Some(new));
                                        cas.applied += u64::from(counted);
                                    }
                                    Cas::NotApplied { current } => {
                                        seen.insert(index, current);
                                        cas.not_applied += u64::from(counted);
                                    }
                                }
                                Ok(())
                            };
                            let r = attempt();
                            if r.is_err() {
                                seen.remove(&index);
                            }
                            r
                        }
                    };
                    let us = start.elapsed().as_micros() as u64;
                    let counted = measuring.load(Ordering::Relaxed);
                    if let Op::Txn(_) = load.op
                        && counted
                        && result.is_ok()
                    {
                        if aborted {
                            cas.not_applied += 1;
                            continue;
                        }
                        cas.applied += 1;
                    }
                    match result {
                        Ok(()) if counted => {
                            hist.record(us);
                            if load.phase.is_some() {
                                phases[phase_at_start.max(phase_now())].record(us);
                            }
                            if let Some(limit) = load.ops
                                && done_ops.fetch_add(1, Ordering::Relaxed) + 1 >= limit
                            {
                                stop.store(true, Ordering::Relaxed);
                            }
                        }
                        Ok(()) => {}
                        Err(e) => {
                            if counted {
                                if load.show_errors && !errors.contains_key(error_kind(&e)) {
                                    eprintln!("client {t}: {e}");
                                }
                                *errors.entry(error_kind(&e)).or_default() += 1;
                            }
                            if matches!(e, Error::Io(_) | Error::Protocol(_)) {
                                client = None;
                            }
                        }
                    }
                }
                (hist, phases, errors, cas)
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
    let mut report = Report { seconds, txn: matches!(load.op, Op::Txn(_)), ..Default::default() };
    for t in threads {
        let (h, phases, e, cas) = t.join().expect("client thread");
        report.cas.applied += cas.applied;
        report.cas.not_applied += cas.not_applied;
        report.hist.merge(&h);
        for (all, mine) in report.phases.iter_mut().zip(&phases) {
            all.merge(mine);
        }
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

    /// Each key is picked in proportion to its rank's weight 1/k^s.
    #[test]
    fn zipf_keys_follow_the_distribution() {
        let (n, s, draws) = (10, 1.0, 200_000);
        let cdf = zipf_cdf(n, s);
        let mut rng = Rng(7);
        let mut counts = vec![0usize; n];
        for _ in 0..draws {
            counts[next_index(n, Some(&cdf), &mut rng) as usize] += 1;
        }
        let total: f64 = (1..=n).map(|k| 1.0 / (k as f64).powf(s)).sum();
        for (k, &c) in counts.iter().enumerate() {
            let want = 1.0 / ((k + 1) as f64).powf(s) / total;
            let got = c as f64 / draws as f64;
            assert!((got - want).abs() < 0.01, "rank {k}: {got:.4} of the picks, want {want:.4}");
        }
    }

    #[test]
    fn string_keys_are_ten_bytes_in_order() {
        for i in [0, 7, 42, 99_999, 1_000_000, MAX_STRING_KEYS - 1] {
            assert_eq!(string_key(i).to_vec(), format!("k{i:09}").into_bytes());
        }
        assert_eq!(KeySpace::Strings(5).key(3).to_key(), b"k000000003");
        assert_eq!(KeySpace::Range(64, 127).key(3).to_key(), b"67");
        assert_eq!((KeySpace::Range(64, 127).len(), KeySpace::Strings(5).len()), (64, 5));
    }

    #[test]
    fn values_depend_on_the_key_only_and_orders_are_permutations() {
        let (mut a, mut b) = (Vec::new(), Vec::new());
        value_of(12, 100, &mut a);
        value_of(12, 100, &mut b);
        assert_eq!((a.len(), &a), (100, &b));
        value_of(13, 100, &mut b);
        assert_ne!(a, b);
        value_of(13, 3, &mut b);
        assert_eq!(b.len(), 3);
        let mut order = shuffled(1000);
        assert_ne!(order[..10], (0..10).collect::<Vec<u32>>()[..]);
        order.sort_unstable();
        assert_eq!(order, (0..1000).collect::<Vec<u32>>());
    }
}
