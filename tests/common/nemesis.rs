//! The nemesis harness: real replicas, concurrent clients, injected faults, and
//! a checker over the recorded history (in the manner of Jepsen and etcd's
//! robustness tests).
//!
//! [`run`] starts a durable cluster (5 replicas, RF 3, fault injection on;
//! byte-ordered, or murmur3 with thousands of keys: [`Config::murmur3`]),
//! runs client threads doing random `get`/`put`/`del` at ONE and QUORUM
//! through every coordinator, each written value unique, and records every
//! operation's start, end and outcome. Meanwhile the nemesis, on a schedule
//! drawn from the seed, kills and restarts replicas (SIGKILL), freezes them
//! (SIGSTOP/SIGCONT), partitions them from some or all peers and slows their
//! links (both through the replicas' fault injection). One fault is active at
//! a time: with 5 replicas and RF 3 every pair of replicas shares a key, so
//! that is what "never more than one replica of any key down" means here.
//!
//! With a spare member ([`Config::spare`]: the murmur3 run) the membership
//! changes too, as one more kind of fault: a [`Fault::Join`] starts a replica
//! that joins through a random member, a [`Fault::Decommission`] makes a
//! random member leave (it exits by itself); each lasts until every member
//! sees the movement done, and no other fault overlaps it. The clients pick
//! their coordinators among the members of the moment.
//!
//! After each fault is healed the nemesis waits until every replica sees every
//! other before the next. At the end it waits for convergence by hints (up to
//! 10 s), reads every key at QUORUM, and checks the history ([`check`]):
//!
//! 1. no lost writes: the final QUORUM value of a key comes from a write that
//!    did not end before an acknowledged QUORUM write to that key began;
//! 2. no invented values: every value read was written, by a write that began
//!    before the read ended;
//! 3. convergence: all replicas of every key hold the same version within 30 s
//!    of the heal (checked with `inspect`; no anti-entropy), and that version
//!    is no older than the final QUORUM read's and was written by a client.
//!    How many keys hints alone converged, before any read could repair them,
//!    is reported too;
//! 4. read-your-writes: a client's QUORUM read after its own acknowledged
//!    QUORUM write sees that write or one not older than it;
//! 5. no replica exited unless the nemesis killed it or decommissioned it
//!    (and none logged a panic, which the cluster's drop checks);
//! 6. with membership changes, a movement loses nothing: after each, every
//!    replica in the new ring of a sampled key holds a version no older than
//!    the one every replica of it held before ([`Config::murmur3`]). The
//!    checks above go through the final members: a decommissioned replica
//!    holds nothing and is gone.
//!
//! "Older" is real time: a write that ended before another began must end up
//! with the smaller timestamp, so last-write-wins keeps the later one — even
//! while the nemesis shifts a replica's clock by seconds (a coordinator whose
//! counted acks show a newer version re-stamps its write above it). Except a
//! ONE write made while a clock was shifted (or before the clocks caught up,
//! the shift after the heal): acknowledged by one replica, it need not be
//! held by any replica a later write's acks come from, so nothing tells the
//! later write to re-stamp, and the two are ordered by their timestamps only
//! (as the README says); such a ONE write is never "older" here. Writes that
//! were refused as `Unavailable` were never sent and count as not written; any
//! other failure (timeout, lost connection) may or may not have been applied.
//!
//! In the SERIAL run ([`Config::serial`]) the clients use SERIAL only: reads,
//! puts, deletes and compare-and-sets on a few keys. Besides the checks above
//! (of which only invented values and convergence apply), the SERIAL history
//! ([`serial_history`]: refused operations left out, unknown outcomes as such,
//! plus a final SERIAL read of each key) must be linearizable per key
//! ([`quorumkv::check`]); a search out of budget only warns.
//!
//! The summary names the seed; `QUORUMKV_NEMESIS_SEED=<seed>` replays the same
//! schedule and the same client choices (timing, being real, varies).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::Write as _;
use std::process::Command;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use quorumkv::Error;
use quorumkv::check;
use quorumkv::client::{Cas, Client, Expect, TxnOutcome};
use quorumkv::cluster::consistency::Consistency;
use quorumkv::proto::{FaultAction, FaultDirection, FaultRequest};

use super::{Cluster, slack, wait_for};

/// splitmix64: small, seedable, good enough for schedules.
#[derive(Clone)]
pub struct Rng(u64);

impl Rng {
    /// A generator for `seed`.
    pub fn new(seed: u64) -> Rng {
        Rng(seed)
    }

    /// The next 64 random bits.
    pub fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in `0..n`.
    pub fn below(&mut self, n: u64) -> u64 {
        self.next_u64() % n
    }

    /// Uniform duration in `lo..hi`.
    pub fn between(&mut self, lo: Duration, hi: Duration) -> Duration {
        lo + Duration::from_millis(self.below((hi - lo).as_millis().max(1) as u64))
    }

    /// True with probability `p`.
    pub fn chance(&mut self, p: f64) -> bool {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64 <= p
    }
}

/// What an operation did.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum OpKind {
    /// A read.
    Get,
    /// A write of this (unique) value.
    Put(String),
    /// A delete.
    Del,
    /// A SERIAL conditional put of this (unique) value, if the key holds the
    /// second (`None`: if it is absent).
    PutIf(String, Option<String>),
    /// A SERIAL conditional delete, if the key holds this value.
    DelIf(String),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// Acknowledged; a read's value (`None`: not found).
    Ok(Option<String>),
    /// Refused before anything was sent.
    Unavailable,
    /// The coordinator gave up waiting: a write may or may not have been applied.
    Timeout,
    /// Anything else (a lost connection, a failed replica): indeterminate.
    Failed(String),
    /// A conditional write whose condition did not hold, with the value it was
    /// checked against (`None`: absent): nothing was written.
    NotApplied(Option<String>),
    /// A SERIAL operation that timed out before proposing: not applied.
    NotProposed,
}

/// One operation in the history.
#[derive(Clone, Debug)]
pub struct Op {
    /// The client thread.
    pub client: usize,
    /// The coordinator it went through.
    pub coordinator: usize,
    /// Get, put or del.
    pub kind: OpKind,
    /// The key.
    pub key: u32,
    /// ONE or QUORUM.
    pub level: Consistency,
    /// When it was sent, since the run began.
    pub start: Duration,
    /// When its answer came (or the client gave up).
    pub end: Duration,
    /// What came back.
    pub outcome: Outcome,
}

impl Op {
    fn is_write(&self) -> bool {
        !matches!(self.kind, OpKind::Get)
    }

    /// A write that may have reached a replica (everything but a refusal, a
    /// condition that did not hold or a SERIAL timeout before proposing).
    fn may_have_written(&self) -> bool {
        self.is_write() && !matches!(self.outcome, Outcome::Unavailable | Outcome::NotApplied(_) | Outcome::NotProposed)
    }

    fn acked_quorum_write(&self) -> bool {
        self.is_write() && self.level == Consistency::Quorum && matches!(self.outcome, Outcome::Ok(_))
    }

    /// The value the write leaves (`None`: a tombstone).
    fn written(&self) -> Option<&str> {
        match &self.kind {
            OpKind::Put(v) | OpKind::PutIf(v, _) => Some(v),
            _ => None,
        }
    }
}

impl std::fmt::Display for Op {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "[{:>9.3}s..{:>9.3}s] client {} via r{} {:?} key {} at {} -> {:?}",
            self.start.as_secs_f64(),
            self.end.as_secs_f64(),
            self.client,
            self.coordinator,
            self.kind,
            self.key,
            self.level,
            self.outcome
        )
    }
}

/// Which writes to each key may have left which value, for the checks.
struct Writes<'a> {
    /// Each put by its (unique) value.
    by_value: HashMap<&'a str, &'a Op>,
    /// Per key, the deletes that may have been applied, by start, each with the
    /// latest end among it and those that started before it.
    deletes: HashMap<u32, Vec<(Duration, Duration)>>,
    /// Per key, the starts of deletes at ONE made while a clock was shifted
    /// (never "older": see the module docs).
    skewed_deletes: HashMap<u32, Vec<Duration>>,
    /// When clocks were shifted, each window stretched by the shift after its heal.
    skews: &'a [(Duration, Duration)],
}

/// The windows in which a ONE write is not ordered by real time: each clock
/// fault, stretched by its shift after the heal (the clocks that followed the
/// shifted one keep its lead that long).
pub fn skew_windows(faults: &[FaultRecord]) -> Vec<(Duration, Duration)> {
    faults.iter().filter(|f| f.fault == Fault::ClockSkew).map(|f| (f.start, f.end + f.shift)).collect()
}

impl<'a> Writes<'a> {
    fn new(history: &'a [Op], skews: &'a [(Duration, Duration)]) -> Self {
        let mut w = Writes { by_value: HashMap::new(), deletes: HashMap::new(), skewed_deletes: HashMap::new(), skews };
        for op in history.iter().filter(|o| o.is_write()) {
            match op.written() {
                Some(val) => {
                    w.by_value.insert(val, op);
                }
                None if op.may_have_written() => {
                    w.deletes.entry(op.key).or_default().push((op.start, op.end));
                    if w.skewed(op) {
                        w.skewed_deletes.entry(op.key).or_default().push(op.start);
                    }
                }
                None => {}
            }
        }
        for d in w.deletes.values_mut() {
            d.sort();
            let mut latest = Duration::ZERO;
            for (_, end) in d.iter_mut() {
                latest = latest.max(*end);
                *end = latest;
            }
        }
        w
    }

    /// Whether `value` (a read of `key` that ended at `read_end`, `None` = not
    /// found) may follow the acknowledged write `w`: `w` itself left it, or a
    /// write that began before the read ended and did not end before `w` began.
    fn not_older_than(&self, key: u32, value: Option<&str>, w: &Op, read_end: Duration) -> bool {
        if w.written() == value {
            return true;
        }
        match value {
            Some(val) => self
                .by_value
                .get(val)
                .is_some_and(|x| x.key == key && x.may_have_written() && x.start <= read_end && (x.end >= w.start || self.skewed(x))),
            None => {
                let skewed = self.skewed_deletes.get(&key).is_some_and(|d| d.iter().any(|&start| start <= read_end));
                let Some(d) = self.deletes.get(&key) else { return false };
                let n = d.partition_point(|(start, _)| *start <= read_end);
                skewed || (n > 0 && d[n - 1].1 >= w.start)
            }
        }
    }

    /// A ONE write made in a window of shifted clocks: ordered by its timestamp only.
    fn skewed(&self, x: &Op) -> bool {
        x.level == Consistency::One && self.skews.iter().any(|&(from, to)| x.start <= to && x.end >= from)
    }
}

/// What the checker found.
#[derive(Default, Debug)]
pub struct Verdict {
    /// One line per violation, with the operations involved.
    pub violations: Vec<String>,
    /// Checks run, by name, with how many cases each looked at.
    pub checked: BTreeMap<&'static str, usize>,
}

/// Checks 1, 2 and 4 of the module docs over `history`, given the final QUORUM
/// read of each key (`final_reads[key]`, `None` = not found) and the windows
/// of shifted clocks ([`skew_windows`]).
pub fn check(history: &[Op], final_reads: &BTreeMap<u32, (Option<String>, Duration)>, skews: &[(Duration, Duration)]) -> Verdict {
    let mut v = Verdict::default();
    let writes = Writes::new(history, skews);
    let by_value = &writes.by_value;

    // 2. No invented values (in the history and in the final reads).
    let reads = history.iter().filter_map(|o| match (&o.kind, &o.outcome) {
        (OpKind::Get, Outcome::Ok(Some(val))) => Some((o.key, val.as_str(), o.end, o.to_string())),
        _ => None,
    });
    let finals =
        final_reads.iter().filter_map(|(&k, (val, end))| val.as_deref().map(|val| (k, val, *end, format!("final read of key {k}"))));
    let mut n = 0;
    for (key, val, end, what) in reads.chain(finals) {
        n += 1;
        match by_value.get(val) {
            Some(w) if w.key == key && w.may_have_written() && w.start <= end => {}
            Some(w) => v.violations.push(format!("invented value: {what} read {val:?}, but its write cannot have produced it: {w}")),
            None => v.violations.push(format!("invented value: {what} read {val:?}, which no client wrote")),
        }
    }
    v.checked.insert("no invented values (reads)", n);

    // 1. No lost writes.
    let mut n = 0;
    for w in history.iter().filter(|w| w.acked_quorum_write()) {
        let Some((val, read_end)) = final_reads.get(&w.key) else { continue };
        let key = w.key;
        {
            n += 1;
            if !writes.not_older_than(key, val.as_deref(), w, *read_end) {
                v.violations.push(format!("lost write: key {key} ends as {val:?}, older than the acknowledged {w}"));
            }
        }
    }
    v.checked.insert("no lost writes (acknowledged QUORUM writes)", n);

    // 4. Read-your-writes per client at QUORUM.
    let mut n = 0;
    let mut last_write: HashMap<(usize, u32), &Op> = HashMap::new();
    let mut own: Vec<&Op> = history.iter().collect();
    own.sort_by_key(|o| (o.client, o.start));
    for op in own {
        if op.acked_quorum_write() {
            last_write.insert((op.client, op.key), op);
            continue;
        }
        let (OpKind::Get, Outcome::Ok(val), Consistency::Quorum) = (&op.kind, &op.outcome, op.level) else { continue };
        if let Some(w) = last_write.get(&(op.client, op.key)) {
            n += 1;
            if !writes.not_older_than(op.key, val.as_deref(), w, op.end) {
                v.violations.push(format!("read-your-writes: {op}\n    after the same client's {w}"));
            }
        }
    }
    v.checked.insert("read-your-writes (QUORUM reads after own QUORUM write)", n);
    v
}

/// How a run is set up.
#[derive(Clone, Debug)]
pub struct Config {
    /// Drives the schedule and the clients' choices.
    pub seed: u64,
    /// How long clients and the nemesis run.
    pub duration: Duration,
    /// Client threads.
    pub clients: usize,
    /// Replicas (RF 3).
    pub replicas: usize,
    /// Keys the clients use, sent as decimal text (few, so that keys are written often;
    /// thousands on a murmur3 cluster, where any text is a key).
    pub keys: Vec<u32>,
    /// Settings lines of the cluster file (empty: the byte-ordered ring, keys 0-255).
    pub settings: &'static str,
    /// The kinds of fault drawn from.
    pub faults: Vec<Fault>,
    /// Clients use SERIAL only (get, put, delete, put_if, delete_if), and the
    /// history is checked for linearizability too ([`Config::serial`]).
    pub serial: bool,
    /// How many members beyond `replicas` may join ([`Fault::Join`]); 0 (the
    /// default) leaves the membership faults out of the draw. Only murmur3
    /// runs have a spare ([`Config::murmur3`]): the byte-ordered cluster's
    /// helpers (`Cluster::wait_all_up`) take status order for the cluster's
    /// index, which a join or decommission changes, and its SERIAL run would
    /// meet what is not done yet (Paxos acceptor state is not moved with the data).
    pub spare: usize,
    /// Accounts of the bank workload ([`Config::bank`]; 0: none).
    pub bank: usize,
}

impl Config {
    /// From the environment: `QUORUMKV_NEMESIS_SEED` (default: from the time),
    /// `QUORUMKV_NEMESIS_SECS` (default `default_secs`), `QUORUMKV_NEMESIS_FAULTS`
    /// (kinds to draw from, comma-separated as the summary names them, e.g.
    /// `ClockSkew,Kill` or `Join,Decommission`; default all; the membership
    /// ones only count with a spare, [`Config::spare`]).
    pub fn from_env(default_secs: u64) -> Config {
        let seed = std::env::var("QUORUMKV_NEMESIS_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
            std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_nanos() as u64 ^ std::process::id() as u64
        });
        let secs = std::env::var("QUORUMKV_NEMESIS_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(default_secs);
        let mut cfg = Config::new(seed, Duration::from_secs(secs));
        if let Ok(names) = std::env::var("QUORUMKV_NEMESIS_FAULTS") {
            cfg.faults =
                FAULTS.iter().copied().filter(|f| names.split(',').any(|n| n.trim().eq_ignore_ascii_case(&format!("{f:?}")))).collect();
            assert!(!cfg.faults.is_empty(), "QUORUMKV_NEMESIS_FAULTS={names:?} names no fault of {FAULTS:?}");
        }
        cfg
    }

    /// The standard run for `seed`.
    pub fn new(seed: u64, duration: Duration) -> Config {
        // 32 keys spread over the whole ring, so every replica owns some.
        Config {
            seed,
            duration,
            clients: 6,
            replicas: 5,
            keys: (0..32).map(|i| i * 8 + 3).collect(),
            settings: "",
            faults: FAULTS.to_vec(),
            serial: false,
            spare: 0,
            bank: 0,
        }
    }

    /// The bank run: besides two clients making SERIAL operations on 4 keys
    /// (checked as [`Config::serial`] does), four clients move money between
    /// 8 accounts (keys spread over the ring, 100 each at the start) with
    /// conditional transactions, reading every balance with `mget` before each
    /// transfer. Checked besides the SERIAL checks: every `mget` sums to the
    /// total and shows no negative balance; after the heal the final balances
    /// sum to the total, and every account's replicas converge.
    pub fn bank(self) -> Config {
        Config { serial: true, keys: (0..4).map(|i| i * 64 + 9).collect(), bank: 8, ..self }
    }

    /// The bank's account keys.
    pub fn accounts(&self) -> Vec<u32> {
        (0..self.bank as u32).map(|i| i * 32 + 21).collect()
    }

    /// The SERIAL run: clients make SERIAL reads, writes and compare-and-sets
    /// on a few keys (6, spread over the ring, so that operations contend),
    /// and the history is also checked for linearizability
    /// ([`quorumkv::check`]).
    pub fn serial(self) -> Config {
        Config { serial: true, keys: (0..6).map(|i| i * 42 + 5).collect(), ..self }
    }

    /// The same run on a murmur3 cluster (16 tokens a replica) with `keys` keys,
    /// "0" to the last in decimal: most of them are no key of a byte-ordered ring.
    /// One spare member: joins and decommissions are among the faults, the
    /// cluster moving between its 5 replicas and 6.
    pub fn murmur3(self, keys: u32) -> Config {
        Config { keys: (0..keys).collect(), settings: super::MURMUR3, spare: 1, ..self }
    }

    /// The kinds of fault the schedule draws from, uniformly: [`Config::faults`],
    /// the membership ones left out without a spare and in twice with one (so
    /// that a 20 s run makes two or three membership changes among its faults).
    fn kinds(&self) -> Vec<Fault> {
        let membership = self.faults.iter().copied().filter(|f| f.is_membership() && self.spare > 0);
        self.faults.iter().copied().filter(|f| !f.is_membership()).chain(membership.clone()).chain(membership).collect()
    }
}

/// The kinds of fault the nemesis injects.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Fault {
    /// SIGKILL, then a restart from its log.
    Kill,
    /// SIGSTOP, then SIGCONT.
    Pause,
    /// Drops everything to and from every peer.
    Isolate,
    /// Drops everything to and from one peer.
    PartitionFromOne,
    /// Delays everything to and from every peer.
    SlowLinks,
    /// Shifts its wall clock ahead or behind (0.5 to 3 s), so the writes it
    /// coordinates are stamped from a skewed clock.
    ClockSkew,
    /// A new replica joins through a random member (`--join`); the fault
    /// lasts until its movement ended and every member saw it. Drawn only
    /// when [`Config::spare`] allows (murmur3 runs): while the cluster is at
    /// its largest, a decommission is made instead.
    Join,
    /// A random member is decommissioned (it hands its ranges over, leaves
    /// and exits); the fault lasts until it exited and every member saw it
    /// removed. Never below the starting size: there, a join is made instead.
    Decommission,
}

impl Fault {
    /// A membership change (join or decommission) rather than a fault healed in place.
    pub fn is_membership(self) -> bool {
        matches!(self, Fault::Join | Fault::Decommission)
    }
}

/// Every kind of fault. The membership ones come last, so a run without them
/// ([`Config::spare`] 0) draws the same schedule from a seed as before they existed.
const FAULTS: [Fault; 8] = [
    Fault::Kill,
    Fault::Pause,
    Fault::Isolate,
    Fault::PartitionFromOne,
    Fault::SlowLinks,
    Fault::ClockSkew,
    Fault::Join,
    Fault::Decommission,
];

/// What a run did and found.
pub struct Report {
    /// The run's settings.
    pub config: Config,
    /// Every operation.
    pub history: Vec<Op>,
    /// Faults injected, in order.
    pub faults: Vec<FaultRecord>,
    /// The checker's verdict (including convergence and crashes).
    pub verdict: Verdict,
    /// How long convergence took after the heal.
    pub converged_in: Option<Duration>,
    /// Keys whose replicas agreed before any read repair (hints alone, within 10 s).
    pub converged_by_hints: usize,
    /// The SERIAL run's linearizability check.
    pub serial: Option<SerialCheck>,
}

/// What the linearizability check of a SERIAL run found.
pub struct SerialCheck {
    /// SERIAL operations in the checked history (refused ones left out).
    pub operations: usize,
    /// Of those, operations with a definite answer from the checker.
    pub checked: usize,
    /// Of those, writes and compare-and-sets of unknown outcome.
    pub unknown: usize,
    /// Reads that failed (left out by the checker: they constrain nothing).
    pub failed_reads: usize,
    /// The checker's one-line report.
    pub line: String,
    /// Whether the budget ran out before every key was checked.
    pub budget_ran_out: bool,
}

/// How long the linearizability check may search.
const SERIAL_CHECK_BUDGET: Duration = Duration::from_secs(10);

/// Checks the SERIAL operations of `history` for linearizability; a violation
/// goes to `verdict` (with its explanation), a search out of budget only warns.
fn check_serial(history: &[Op], verdict: &mut Verdict) -> SerialCheck {
    let h = serial_history(history);
    let report = h.check(slack(SERIAL_CHECK_BUDGET));
    let keys = &report.keys;
    let checked = report.operations_checked();
    verdict.checked.insert("linearizable (SERIAL operations, per key)", checked);
    if let check::Verdict::NotLinearizable { explanation, .. } = &report.verdict {
        // The explanation begins "key N: ...", which names the key for the history printed.
        verdict.violations.push(format!("not linearizable: {explanation}"));
    }
    SerialCheck {
        operations: h.len(),
        checked,
        unknown: keys.iter().map(|k| k.unknown_outcomes).sum(),
        failed_reads: keys.iter().map(|k| k.dropped_reads).sum(),
        line: report.to_string(),
        budget_ran_out: matches!(report.verdict, check::Verdict::Unknown { .. }),
    }
}

/// One injected fault.
pub struct FaultRecord {
    /// When it began, since the run began.
    pub start: Duration,
    /// When it was healed and every replica saw every other again.
    pub end: Duration,
    /// The replica it hit (for a join, the new one).
    pub replica: usize,
    /// What it was.
    pub fault: Fault,
    /// Its parameters.
    pub detail: String,
    /// A clock fault's shift, either way (zero for the others).
    pub shift: Duration,
}

impl Report {
    /// Ops by kind, level and outcome; faults by kind; checks; the seed.
    pub fn summary(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(
            s,
            "nemesis: seed {} ({} s, {} clients, {} replicas{}, {} keys, {})",
            self.config.seed,
            self.config.duration.as_secs(),
            self.config.clients,
            self.config.replicas,
            if self.config.spare > 0 { format!(" and {} spare", self.config.spare) } else { String::new() },
            self.config.keys.len(),
            if self.config.settings.is_empty() { "byte-ordered" } else { "murmur3" }
        );
        let mut ops: BTreeMap<String, usize> = BTreeMap::new();
        for op in &self.history {
            let kind = match op.kind {
                OpKind::Get => "get",
                OpKind::Put(_) => "put",
                OpKind::Del => "del",
                OpKind::PutIf(..) => "put_if",
                OpKind::DelIf(_) => "del_if",
            };
            let outcome = match &op.outcome {
                Outcome::Ok(None) if op.kind == OpKind::Get => "not found".to_string(),
                Outcome::Ok(_) => "ok".to_string(),
                Outcome::Unavailable => "unavailable".to_string(),
                Outcome::Timeout => "timeout".to_string(),
                Outcome::Failed(k) => k.clone(),
                Outcome::NotApplied(_) => "not applied".to_string(),
                Outcome::NotProposed => "not proposed".to_string(),
            };
            *ops.entry(format!("{kind} {:<6} {outcome}", op.level.to_string())).or_default() += 1;
        }
        let _ = writeln!(s, "  operations: {}", self.history.len());
        for (k, n) in &ops {
            let _ = writeln!(s, "    {k:<32} {n}");
        }
        let mut faults: BTreeMap<Fault, usize> = BTreeMap::new();
        for f in &self.faults {
            *faults.entry(f.fault).or_default() += 1;
        }
        let _ = writeln!(s, "  faults injected: {}", self.faults.len());
        for (f, n) in &faults {
            let _ = writeln!(s, "    {:<32} {n}", format!("{f:?}"));
        }
        for f in self.faults.iter().filter(|f| f.fault.is_membership()) {
            let what = if f.fault == Fault::Join { "joined" } else { "decommissioned" };
            let _ = writeln!(s, "      {:>7.3}s..{:>7.3}s r{} {what} {}", f.start.as_secs_f64(), f.end.as_secs_f64(), f.replica, f.detail);
        }
        let _ = writeln!(s, "  checks:");
        for (c, n) in &self.verdict.checked {
            let _ = writeln!(s, "    {c:<60} {n} case(s)");
        }
        if let Some(sc) = &self.serial {
            let _ = writeln!(
                s,
                "  SERIAL: {} operations ({} of unknown outcome, {} failed reads); linearizability: {}",
                sc.operations, sc.unknown, sc.failed_reads, sc.line
            );
            if sc.budget_ran_out {
                let _ = writeln!(s, "  WARNING: the linearizability check ran out of budget; only {} operations were checked", sc.checked);
            }
        }
        let _ = writeln!(s, "  keys converged by hints alone (before any read): {} of {}", self.converged_by_hints, self.config.keys.len());
        match self.converged_in {
            Some(d) => {
                let _ = writeln!(s, "  converged {:.1} s after the heal", d.as_secs_f64());
            }
            None => {
                let _ = writeln!(s, "  did NOT converge");
            }
        }
        if self.verdict.violations.is_empty() {
            let _ = writeln!(s, "  all checks passed");
        } else {
            let _ = writeln!(s, "  {} VIOLATION(S); replay with QUORUMKV_NEMESIS_SEED={}", self.verdict.violations.len(), self.config.seed);
            for v in self.verdict.violations.iter().take(20) {
                let _ = writeln!(s, "  - {v}");
            }
        }
        s
    }
}

fn outcome_of<T>(r: &Result<T, Error>) -> Option<Outcome> {
    match r {
        Ok(_) => None,
        Err(Error::Unavailable(_)) => Some(Outcome::Unavailable),
        Err(Error::Timeout(_)) => Some(Outcome::Timeout),
        Err(Error::Io(m)) if m.contains("timed out") || m.contains("temporarily unavailable") => {
            Some(Outcome::Failed("client timeout".into()))
        }
        Err(Error::Io(_) | Error::Protocol(_)) => Some(Outcome::Failed("connection".into())),
        Err(Error::Failure(_)) => Some(Outcome::Failed("failure".into())),
        Err(e) => Some(Outcome::Failed(format!("{e}"))),
    }
}

/// [`outcome_of`], telling a SERIAL timeout before proposing (certainly not
/// applied) from one whose outcome is unknown (`Timeout: Unknown: ...`).
fn serial_outcome_of<T>(r: &Result<T, Error>) -> Option<Outcome> {
    match r {
        Err(Error::Timeout(m)) if (m.contains("nothing was proposed") || m.contains("so it was not applied")) && !m.contains("Unknown") => {
            Some(Outcome::NotProposed)
        }
        _ => outcome_of(r),
    }
}

fn cas_outcome(r: Result<Cas, Error>) -> Outcome {
    match r {
        Ok(Cas::Applied(_)) => Outcome::Ok(None),
        Ok(Cas::NotApplied { current }) => Outcome::NotApplied(current.map(|v| String::from_utf8_lossy(&v).into_owned())),
        Err(_) => serial_outcome_of(&r).expect("an error"),
    }
}

/// The SERIAL operations of `history` as a [`check::History`] of per-key
/// registers, times in nanoseconds since the run began: refused operations
/// (`Unavailable`, or timed out before proposing) were never applied and are
/// left out; any other failure is an unknown outcome (for a read: no constraint).
pub fn serial_history(history: &[Op]) -> check::History<u32> {
    let bytes = |v: &Option<String>| v.as_ref().map(|v| v.as_bytes().to_vec());
    let mut h = check::History::new();
    for op in history.iter().filter(|o| o.level == Consistency::Serial) {
        if matches!(op.outcome, Outcome::Unavailable | Outcome::NotProposed) {
            continue;
        }
        let call = match &op.kind {
            OpKind::Get => check::Call::Read,
            OpKind::Put(v) => check::Call::Write(Some(v.as_bytes().to_vec())),
            OpKind::Del => check::Call::Write(None),
            OpKind::PutIf(v, old) => check::Call::Cas {
                expect: old.as_ref().map_or(check::Expect::Absent, |o| check::Expect::Value(o.as_bytes().to_vec())),
                new: Some(v.as_bytes().to_vec()),
            },
            OpKind::DelIf(old) => check::Call::Cas { expect: check::Expect::Value(old.as_bytes().to_vec()), new: None },
        };
        let ret = match (&op.kind, &op.outcome) {
            (OpKind::Get, Outcome::Ok(v)) => Some(check::Ret::Read(bytes(v))),
            (OpKind::Put(_) | OpKind::Del, Outcome::Ok(_)) => Some(check::Ret::Written),
            (OpKind::PutIf(..) | OpKind::DelIf(_), Outcome::Ok(_)) => Some(check::Ret::Applied),
            (_, Outcome::NotApplied(current)) => Some(check::Ret::NotApplied { current: bytes(current) }),
            _ => None,
        };
        let id = h.invoke_at(op.client, op.key, call, op.start.as_nanos() as check::Time);
        match ret {
            Some(ret) => h.complete_at(id, ret, op.end.as_nanos() as check::Time),
            None => h.unknown(id),
        }
    }
    h
}

/// One client thread: random operations until `stop`, through random
/// coordinators of `pool` (each member's index and port; the nemesis adds a
/// joining member and takes out a leaving one, whose operations in flight
/// then end as failed: unknown outcomes).
fn client_loop(id: usize, cfg: &Config, pool: &Mutex<Vec<(usize, u16)>>, t0: Instant, stop: &AtomicBool, out: &Mutex<Vec<Op>>) {
    let (seed, keys, serial) = (cfg.seed, &cfg.keys, cfg.serial);
    let mut rng = Rng::new(seed ^ (id as u64 + 1).wrapping_mul(0xA076_1D64_78BD_642F));
    let mut conn: Option<(usize, Client)> = None;
    let mut seq = 0u64;
    let mut mine = Vec::new();
    let mut seen: HashMap<u32, Option<String>> = HashMap::new();
    while !stop.load(Ordering::Acquire) {
        // Mostly stay on one coordinator; sometimes move, as real clients do.
        if conn.is_none() || rng.chance(0.05) {
            conn = connect_any(pool, &mut rng);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50)); // it is down: try another soon
                continue;
            }
        }
        let (coordinator, client) = conn.as_mut().expect("connected above");
        let coordinator = *coordinator;
        let key = keys[rng.below(keys.len() as u64) as usize];
        let level = if serial {
            Consistency::Serial
        } else if rng.chance(0.5) {
            Consistency::One
        } else {
            Consistency::Quorum
        };
        let roll = rng.below(100);
        let kind = if serial {
            // Compare-and-sets expect what this client last saw of the key (a read's
            // answer or a refused condition's current value), so many of them apply.
            let seen = seen.get(&key).cloned().flatten();
            seq += 1;
            let v = format!("c{id}-{seq}");
            match (roll, seen) {
                (0..30, _) => OpKind::Get,
                (30..45, _) => OpKind::Put(v),
                (45..50, _) => OpKind::Del,
                (50..85, seen) => OpKind::PutIf(v, seen),
                (_, Some(old)) => OpKind::DelIf(old),
                (_, None) => OpKind::PutIf(v, None),
            }
        } else if roll < 50 {
            OpKind::Get
        } else if roll < 90 {
            seq += 1;
            OpKind::Put(format!("c{id}-{seq}"))
        } else {
            OpKind::Del
        };
        let start = t0.elapsed();
        let outcome = match &kind {
            OpKind::Get => {
                let r = client.get_text(key, level);
                serial_outcome_of(&r).unwrap_or_else(|| Outcome::Ok(r.unwrap()))
            }
            OpKind::Put(v) => {
                let r = client.put(key, v, level);
                serial_outcome_of(&r).unwrap_or(Outcome::Ok(None))
            }
            OpKind::Del => {
                let r = client.delete(key, level);
                serial_outcome_of(&r).unwrap_or(Outcome::Ok(None))
            }
            OpKind::PutIf(v, expect) => {
                let expect = match expect {
                    Some(old) => Expect::Equals(old.as_bytes().into()),
                    None => Expect::Absent,
                };
                cas_outcome(client.put_if(key, v, expect))
            }
            OpKind::DelIf(old) => cas_outcome(client.delete_if(key, old)),
        };
        let end = t0.elapsed();
        match (&kind, &outcome) {
            (OpKind::Get, Outcome::Ok(v)) | (_, Outcome::NotApplied(v)) => {
                seen.insert(key, v.clone());
            }
            (OpKind::Put(v) | OpKind::PutIf(v, _), Outcome::Ok(_)) => {
                seen.insert(key, Some(v.clone()));
            }
            (OpKind::Del | OpKind::DelIf(_), Outcome::Ok(_)) => {
                seen.insert(key, None);
            }
            _ => {}
        }
        if matches!(&outcome, Outcome::Failed(k) if k == "connection" || k == "client timeout") {
            conn = None; // a late reply must not be taken for the next request's
        }
        mine.push(Op { client: id, coordinator, kind, key, level, start, end, outcome });
    }
    out.lock().unwrap().extend(mine);
}

/// Connects to a coordinator drawn from `pool` (`None`: it is down).
fn connect_any(pool: &Mutex<Vec<(usize, u16)>>, rng: &mut Rng) -> Option<(usize, Client)> {
    let (c, port) = {
        let pool = pool.lock().unwrap();
        pool[rng.below(pool.len() as u64) as usize]
    };
    Client::connect("127.0.0.1", port, Duration::from_millis(500))
        .and_then(|mut cl| cl.set_timeout(Some(slack(Duration::from_secs(4)))).map(|_| cl))
        .ok()
        .map(|cl| (c, cl))
}

/// What the bank clients did and saw ([`Config::bank`]).
#[derive(Default)]
pub struct BankLog {
    /// `mget`s of every balance that were answered.
    pub reads: usize,
    /// `mget`s that failed (refused, timed out, connection lost).
    pub failed_reads: usize,
    /// Reads that broke the invariant (a wrong total, a negative or missing balance).
    pub bad: Vec<String>,
    /// Transfers committed.
    pub committed: usize,
    /// Transfers whose balances had changed since the read (nothing written).
    pub not_applied: usize,
    /// Transfers that lost a conflict (nothing written).
    pub conflicts: usize,
    /// Transfers refused before anything was sent.
    pub refused: usize,
    /// Transfers of unknown outcome (a timeout, a lost connection).
    pub unknown: usize,
}

/// The starting balance of every account.
const OPENING_BALANCE: i64 = 100;

/// A bank client: reads every balance with `mget` (checking the total),
/// then moves a random amount between two random accounts with a
/// transaction conditioned on both balances it read.
fn bank_loop(id: usize, cfg: &Config, pool: &Mutex<Vec<(usize, u16)>>, t0: Instant, stop: &AtomicBool, out: &Mutex<BankLog>) {
    let keys: Vec<Vec<u8>> = cfg.accounts().iter().map(|k| k.to_string().into_bytes()).collect();
    let total = OPENING_BALANCE * keys.len() as i64;
    let mut rng = Rng::new(cfg.seed ^ (id as u64 + 101).wrapping_mul(0xE703_7ED1_A0B4_28DB));
    let mut conn: Option<(usize, Client)> = None;
    let mut log = BankLog::default();
    let text = |n: i64| Some(n.to_string().into_bytes());
    while !stop.load(Ordering::Acquire) {
        if conn.is_none() || rng.chance(0.05) {
            conn = connect_any(pool, &mut rng);
            if conn.is_none() {
                std::thread::sleep(Duration::from_millis(50));
                continue;
            }
        }
        let (via, client) = conn.as_mut().expect("connected above");
        let via = *via;
        let at = t0.elapsed().as_secs_f64();
        let read = match client.mget(keys.clone()) {
            Ok(v) => v,
            Err(e) => {
                log.failed_reads += 1;
                if matches!(e, Error::Io(_) | Error::Protocol(_)) {
                    conn = None;
                }
                continue;
            }
        };
        log.reads += 1;
        let parsed: Option<Vec<i64>> = read.iter().map(|b| std::str::from_utf8(b.as_deref()?).ok()?.parse().ok()).collect();
        let Some(bal) = parsed else {
            log.bad.push(format!("{at:.3}s client {id} via r{via}: an mget shows a missing or unreadable balance: {read:?}"));
            continue;
        };
        let sum: i64 = bal.iter().sum();
        if sum != total || bal.iter().any(|&b| b < 0) {
            log.bad.push(format!("{at:.3}s client {id} via r{via}: an mget shows {bal:?}, summing to {sum} (the total is {total})"));
        }
        let n = keys.len() as u64;
        let a = rng.below(n) as usize;
        let b = ((a as u64 + 1 + rng.below(n - 1)) % n) as usize;
        if bal[a] <= 0 {
            continue;
        }
        let x = 1 + rng.below(bal[a] as u64) as i64;
        let conditions = vec![(keys[a].clone(), text(bal[a])), (keys[b].clone(), text(bal[b]))];
        let writes = vec![(keys[a].clone(), text(bal[a] - x)), (keys[b].clone(), text(bal[b] + x))];
        match client.txn(conditions, writes) {
            Ok(TxnOutcome::Committed { .. }) => log.committed += 1,
            Ok(TxnOutcome::NotApplied { .. }) => log.not_applied += 1,
            Err(Error::Conflict(_)) => log.conflicts += 1,
            Err(Error::Unavailable(_)) => log.refused += 1,
            Err(e) => {
                log.unknown += 1;
                if matches!(e, Error::Io(_) | Error::Protocol(_)) {
                    conn = None;
                }
            }
        }
    }
    let mut all = out.lock().unwrap();
    all.reads += log.reads;
    all.failed_reads += log.failed_reads;
    all.bad.extend(log.bad);
    all.committed += log.committed;
    all.not_applied += log.not_applied;
    all.conflicts += log.conflicts;
    all.refused += log.refused;
    all.unknown += log.unknown;
}

/// Opens every account with [`OPENING_BALANCE`] in one transaction (retried until it commits).
fn open_accounts(c: &Cluster, cfg: &Config) {
    let writes: Vec<(Vec<u8>, Option<Vec<u8>>)> =
        cfg.accounts().iter().map(|k| (k.to_string().into_bytes(), Some(OPENING_BALANCE.to_string().into_bytes()))).collect();
    let opened =
        wait_for(slack(Duration::from_secs(10)), || matches!(c.client(0).txn(vec![], writes.clone()), Ok(TxnOutcome::Committed { .. })));
    assert!(opened, "the accounts could not be opened; logs:\n{}", c.logs());
}

/// The bank's checks after the heal: every read's total, the final
/// balances' total through every member, and the accounts' convergence.
fn check_bank(c: &Cluster, cfg: &Config, members: &[usize], log: &BankLog, verdict: &mut Verdict, deadline: Instant) {
    let accounts = cfg.accounts();
    let keys: Vec<Vec<u8>> = accounts.iter().map(|k| k.to_string().into_bytes()).collect();
    let total = OPENING_BALANCE * keys.len() as i64;
    verdict.checked.insert("bank: every mget sums to the total, no balance negative (reads)", log.reads);
    verdict.violations.extend(log.bad.iter().take(20).cloned());
    if log.bad.len() > 20 {
        verdict.violations.push(format!("bank: {} more reads broke the invariant", log.bad.len() - 20));
    }
    let mut finals = Vec::new();
    for &m in members {
        let mut got = None;
        wait_for(slack(Duration::from_secs(10)), || {
            got = c.client(m).mget(keys.clone()).ok();
            got.is_some()
        });
        let Some(read) = got else {
            verdict.violations.push(format!("bank: the final mget through r{m} kept failing"));
            continue;
        };
        let bal: Vec<Option<i64>> = read.iter().map(|b| std::str::from_utf8(b.as_deref()?).ok()?.parse().ok()).collect();
        if bal.iter().any(|b| b.is_none_or(|b| b < 0)) || bal.iter().flatten().sum::<i64>() != total {
            verdict.violations.push(format!("bank: the final balances through r{m} are {bal:?} (the total is {total})"));
        }
        finals.push(bal);
    }
    if finals.windows(2).any(|w| w[0] != w[1]) {
        verdict.violations.push(format!("bank: the members' final mgets disagree: {finals:?}"));
    }
    verdict.checked.insert("bank: the final balances sum to the total (members)", finals.len());
    let mut differing = Vec::new();
    replica_versions(c, members, &accounts, &mut differing);
    while !differing.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        replica_versions(c, members, &accounts, &mut differing);
    }
    verdict.checked.insert("bank: accounts converge within 30 s of the heal (accounts)", accounts.len());
    if !differing.is_empty() {
        verdict.violations.push(format!("bank: accounts did not converge within 30 s of the heal: {}", differing.join("; ")));
    }
    eprintln!(
        "bank: {} mgets ({} failed); transfers: {} committed, {} not applied (balances moved), {} lost a conflict, \
         {} refused, {} of unknown outcome",
        log.reads, log.failed_reads, log.committed, log.not_applied, log.conflicts, log.refused, log.unknown
    );
}

fn fault_request(action: FaultAction, peers: Vec<String>, delay_ms: u32) -> FaultRequest {
    FaultRequest { action: action as i32, peers, direction: FaultDirection::Both as i32, delay_ms, pause_ms: 0, clock_offset_ms: 0 }
}

/// Sends a fault request to replica `i`, retrying while it is briefly unreachable.
fn admin(c: &Cluster, i: usize, req: FaultRequest) {
    let ok = wait_for(slack(Duration::from_secs(10)), || {
        Client::connect("127.0.0.1", c.replicas[i].port, Duration::from_millis(500))
            .and_then(|mut cl| {
                cl.set_timeout(Some(slack(Duration::from_secs(3))))?;
                cl.fault(req.clone())
            })
            .is_ok()
    });
    assert!(ok, "fault request {req:?} to r{i} kept failing; logs:\n{}", c.logs());
}

fn signal(pid: u32, sig: &str) {
    let ok = Command::new("kill").arg(sig).arg(pid.to_string()).status().map(|s| s.success()).unwrap_or(false);
    assert!(ok, "kill {sig} {pid} failed");
}

/// Sets the flag when dropped: a panicking nemesis still stops the clients (else the scope would wait forever).
struct StopOnDrop<'a>(&'a AtomicBool);

impl Drop for StopOnDrop<'_> {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Release);
    }
}

/// Replicas that are not running although the nemesis did not kill them (a
/// decommissioned one, in `removed`, exits by itself).
fn exited(c: &mut Cluster, removed: &[usize], when: &str) -> Vec<String> {
    let mut out = Vec::new();
    for (i, r) in c.replicas.iter_mut().enumerate() {
        if !removed.contains(&i) && !r.running() {
            out.push(format!("r{i} exited on its own ({when})"));
        }
    }
    out
}

/// A version as `inspect` shows it: micros, node, tombstone, value.
type Stamp = (u64, u32, bool, Vec<u8>);

/// Connections to every replica, made when first needed and dropped after an error.
struct Conns<'a> {
    c: &'a Cluster,
    clients: Vec<Option<Client>>,
}

impl Conns<'_> {
    /// Runs `f` on a connection to replica `i`.
    fn with<T>(&mut self, i: usize, f: impl FnOnce(&mut Client) -> Result<T, Error>) -> Result<T, Error> {
        if self.clients[i].is_none() {
            let mut cl = Client::connect("127.0.0.1", self.c.replicas[i].port, Duration::from_secs(2))?;
            cl.set_timeout(Some(slack(Duration::from_secs(15))))?;
            self.clients[i] = Some(cl);
        }
        let r = f(self.clients[i].as_mut().expect("connected above"));
        if r.is_err() {
            self.clients[i] = None; // a late reply must not be taken for the next request's
        }
        r
    }
}

/// `f(connections, n, key)` for the `n`th of `keys`, on a few threads at once (thousands
/// of keys one at a time would take longer than the run); the results in key order.
fn per_key<T: Send>(c: &Cluster, keys: &[u32], f: impl Fn(&mut Conns, usize, u32) -> T + Sync) -> Vec<T> {
    const THREADS: usize = 6;
    let chunk = keys.len().div_ceil(THREADS).max(1);
    std::thread::scope(|s| {
        let f = &f;
        let handles: Vec<_> = keys
            .chunks(chunk)
            .enumerate()
            .map(|(t, part)| {
                s.spawn(move || {
                    let mut conns = Conns { c, clients: (0..c.replicas.len()).map(|_| None).collect() };
                    part.iter().enumerate().map(|(j, &key)| f(&mut conns, t * chunk + j, key)).collect::<Vec<T>>()
                })
            })
            .collect();
        handles.into_iter().flat_map(|h| h.join().expect("a checker thread panicked")).collect()
    })
}

/// The version each replica of each key holds, as `inspect` through the
/// `members` reports it (the replicas of the members' ring: a decommissioned
/// replica is none); the keys whose replicas differ (or are unreachable) go to `differing`.
fn replica_versions(
    c: &Cluster,
    members: &[usize],
    keys: &[u32],
    differing: &mut Vec<String>,
) -> BTreeMap<u32, Option<quorumkv::proto::Version>> {
    differing.clear();
    let mut agreed = BTreeMap::new();
    let inspected = per_key(c, keys, |conns, n, key| conns.with(members[n % members.len()], |cl| cl.inspect(key)));
    for (&key, i) in keys.iter().zip(inspected) {
        let Ok(i) = i else {
            differing.push(format!("key {key}: inspect failed"));
            continue;
        };
        let versions: HashSet<Option<Stamp>> =
            i.replicas.iter().map(|e| e.version.as_ref().map(|v| (v.micros, v.node, v.tombstone, v.value.clone()))).collect();
        if versions.len() != 1 || i.replicas.iter().any(|e| !e.reachable) {
            differing.push(format!("key {key}: {:?}", i.replicas));
        } else {
            agreed.insert(key, i.replicas[0].version.clone());
        }
    }
    agreed
}

/// A version's order: micros, node.
type At = (u64, u32);

/// For each key whose replicas (as `inspect` through the `members` lists
/// them) all answered and all hold a version, the oldest of those versions:
/// one every replica held when asked (a replica's version only grows).
fn held_by_all(c: &Cluster, members: &[usize], keys: &[u32]) -> BTreeMap<u32, At> {
    let inspected = per_key(c, keys, |conns, n, key| conns.with(members[n % members.len()], |cl| cl.inspect(key)));
    let mut out = BTreeMap::new();
    for (&key, i) in keys.iter().zip(inspected) {
        let Ok(i) = i else { continue };
        let versions: Option<Vec<At>> = i.replicas.iter().map(|e| e.version.as_ref().map(|v| (v.micros, v.node))).collect();
        if let Some(oldest) = versions.and_then(|v| v.into_iter().min())
            && i.replicas.iter().all(|e| e.reachable)
        {
            out.insert(key, oldest);
        }
    }
    out
}

/// Check 6 after a movement: every replica of each key in the new ring (as
/// `inspect` through the `members` lists them) that answers holds a version
/// no older than `before[key]`, the one every replica held before the
/// movement began (copying merges by last-write-wins, so a movement may only
/// add). Reads repair too, so a replica the movement skipped is caught only
/// if no read of the key reached it first. How many replicas were compared;
/// violations go to `violations`.
fn kept(c: &Cluster, members: &[usize], before: &BTreeMap<u32, At>, what: &str, violations: &mut Vec<String>) -> usize {
    let keys: Vec<u32> = before.keys().copied().collect();
    let inspected = per_key(c, &keys, |conns, n, key| conns.with(members[n % members.len()], |cl| cl.inspect(key)));
    let mut compared = 0;
    for (key, i) in keys.iter().zip(inspected) {
        let Ok(i) = i else { continue };
        let had = before[key];
        for e in i.replicas.iter().filter(|e| e.reachable) {
            compared += 1;
            if e.version.as_ref().is_none_or(|v| (v.micros, v.node) < had) {
                violations.push(format!(
                    "lost by a movement: key {key}: after {what}, {} holds {:?}, older than the version {had:?} all of its replicas held before",
                    e.name,
                    e.version.as_ref().map(|v| (v.micros, v.node, v.tombstone, String::from_utf8_lossy(&v.value).into_owned()))
                ));
            }
        }
    }
    compared
}

/// Polls every one of `members` until each sees no movement under way, every
/// member up and NORMAL, and every one of `removed` REMOVED (by name: a join
/// or a decommission changes the order `status` lists them in). Why not, if
/// that did not happen within 60 s.
fn settle(c: &Cluster, members: &[usize], removed: &[usize]) -> Result<(), String> {
    let names = |ix: &[usize]| ix.iter().map(|&i| c.replicas[i].name.clone()).collect::<Vec<_>>();
    let (live, gone) = (names(members), names(removed));
    let mut last = String::new();
    let ok = wait_for(slack(Duration::from_secs(60)), || {
        members.iter().all(|&i| {
            let status = Client::connect("127.0.0.1", c.replicas[i].port, Duration::from_millis(500)).and_then(|mut cl| {
                cl.set_timeout(Some(slack(Duration::from_secs(5))))?;
                cl.status()
            });
            let s = match status {
                Ok(s) => s,
                Err(e) => {
                    last = format!("r{i}'s status failed: {e}");
                    return false;
                }
            };
            let has = |n: &String, ok: &dyn Fn(&quorumkv::proto::ReplicaStatus) -> bool| s.replicas.iter().any(|r| &r.name == n && ok(r));
            let settled = s.movement.is_empty()
                && live.iter().all(|n| has(n, &|r| r.up && r.member_state == "NORMAL"))
                && gone.iter().all(|n| has(n, &|r| r.member_state == "REMOVED"));
            if !settled {
                let seen: Vec<String> =
                    s.replicas.iter().map(|r| format!("{} {}{}", r.name, r.member_state, if r.up { " up" } else { "" })).collect();
                last = format!("r{i} at epoch {} sees movement {:?}, members {seen:?}", s.epoch, s.movement);
            }
            settled
        })
    });
    if ok { Ok(()) } else { Err(format!("the members {live:?} did not settle within 60 s ({gone:?} removed): {last}")) }
}

/// Starts a decommission of replica `v` and follows it until the replica
/// exited; what it reported last (keys handed over, time), or why it failed.
fn decommission(c: &mut Cluster, v: usize) -> Result<quorumkv::proto::MembershipResult, String> {
    use quorumkv::proto::membership_request::Op as M;
    let mut cl = Client::connect("127.0.0.1", c.replicas[v].port, Duration::from_secs(2)).map_err(|e| format!("r{v}: {e}"))?;
    cl.set_timeout(Some(slack(Duration::from_secs(15)))).map_err(|e| format!("r{v}: {e}"))?;
    let mut m = cl.membership(M::Decommission, "", false).map_err(|e| format!("the decommission of r{v} was refused: {e}"))?;
    // Until it reports the end, or its connection closes as it exits.
    let ended = wait_for(slack(Duration::from_secs(60)), || {
        if !m.running {
            return true;
        }
        match cl.membership(M::Status, "", false) {
            Ok(next) => {
                m = next;
                !m.running
            }
            Err(_) => true, // it exited (or is exiting: the end)
        }
    });
    if !ended {
        return Err(format!("the decommission of r{v} was still running after 60 s: {m:?}"));
    }
    if !m.error.is_empty() {
        return Err(format!("the decommission of r{v} failed: {}", m.error));
    }
    if !wait_for(slack(Duration::from_secs(20)), || !c.replicas[v].running()) {
        return Err(format!("r{v} did not exit after its decommission ({m:?})"));
    }
    Ok(m)
}

/// Runs the whole scenario for `cfg` and returns what it found (it does not panic on violations).
pub fn run(cfg: Config) -> Report {
    eprintln!("nemesis: seed {} for {} s (replay with QUORUMKV_NEMESIS_SEED={})", cfg.seed, cfg.duration.as_secs(), cfg.seed);
    let kinds = cfg.kinds();
    assert!(!kinds.is_empty(), "no fault to draw from {:?} without a spare member", cfg.faults);
    assert!(cfg.spare == 0 || cfg.replicas > 3, "a decommission must leave more members than the RF (3)");
    let mut c = Cluster::start_with(cfg.replicas, cfg.settings, &["--enable-fault-injection"]);
    // The members by cluster index (a joined one is added, a decommissioned one
    // moves to `removed`), and those the clients may connect to.
    let mut members: Vec<usize> = (0..cfg.replicas).collect();
    let mut removed: Vec<usize> = Vec::new();
    let pool = Mutex::new(c.replicas.iter().enumerate().map(|(i, r)| (i, r.port)).collect::<Vec<_>>());
    let stop = AtomicBool::new(false);
    let history = Mutex::new(Vec::new());
    let bank = Mutex::new(BankLog::default());
    if cfg.bank > 0 {
        open_accounts(&c, &cfg);
    }
    let t0 = Instant::now();
    let mut faults = Vec::new();
    let mut crashed = Vec::new();
    // Check 6: what the movements lost, and how many replicas of keys were compared,
    // on every sixth key (inspecting them all before and after would take seconds).
    let (mut moved, mut moved_keys) = (Vec::new(), 0);
    let sample: Vec<u32> = cfg.keys.iter().copied().step_by(6).collect();
    std::thread::scope(|s| {
        let _stop = StopOnDrop(&stop);
        for id in 0..cfg.clients {
            let (cfg, pool, stop, history, bank) = (&cfg, &pool, &stop, &history, &bank);
            // The bank run: two clients on the SERIAL keys, the others on the accounts.
            if cfg.bank > 0 && id >= 2 {
                s.spawn(move || bank_loop(id, cfg, pool, t0, stop, bank));
            } else {
                s.spawn(move || client_loop(id, cfg, pool, t0, stop, history));
            }
        }
        // The nemesis runs on this thread, one fault at a time: each is healed, and the
        // cluster seen whole again by every replica, before the next begins.
        let mut rng = Rng::new(cfg.seed);
        while t0.elapsed() < cfg.duration {
            std::thread::sleep(rng.between(Duration::from_millis(300), Duration::from_millis(1500)));
            if t0.elapsed() >= cfg.duration {
                break;
            }
            let mut victim = members[rng.below(members.len() as u64) as usize];
            let mut fault = kinds[rng.below(kinds.len() as u64) as usize];
            let hold = rng.between(Duration::from_millis(500), Duration::from_millis(3000));
            // A membership change the size does not allow becomes the other one.
            let (can_join, can_leave) = (members.len() < cfg.replicas + cfg.spare, members.len() > cfg.replicas);
            fault = match fault {
                Fault::Join if !can_join => Fault::Decommission,
                Fault::Decommission if !can_leave => Fault::Join,
                f => f,
            };
            // No replica may have exited on its own (checked before a kill could hide it).
            crashed = exited(&mut c, &removed, &format!("before fault {}", faults.len() + 1));
            if !crashed.is_empty() {
                break;
            }
            let started = t0.elapsed();
            let mut shift = Duration::ZERO;
            let detail = match fault {
                Fault::Join => {
                    // `victim` is the member it joins through; the record names the new one.
                    let through = victim;
                    let name = format!("r{}", c.replicas.len());
                    let before = held_by_all(&c, &members, &sample);
                    victim = c.join(&name, through);
                    // It coordinates from now on, while it copies too.
                    pool.lock().unwrap().push((victim, c.replicas[victim].port));
                    members.push(victim);
                    match settle(&c, &members, &removed) {
                        Ok(()) => moved_keys += kept(&c, &members, &before, &format!("the join of {name}"), &mut moved),
                        Err(e) => crashed.push(format!("the join of {name}: {e}")),
                    }
                    let copied = Client::connect("127.0.0.1", c.replicas[victim].port, Duration::from_secs(2))
                        .and_then(|mut cl| cl.membership(quorumkv::proto::membership_request::Op::Status, "", false));
                    match copied {
                        Ok(m) => format!("through r{through}: {} keys copied in {:.1} s", m.keys, m.elapsed_secs),
                        Err(e) => format!("through r{through} (its movement report: {e})"),
                    }
                }
                Fault::Decommission => {
                    // New clients go elsewhere; those connected to it find out as it leaves.
                    let before = held_by_all(&c, &members, &sample);
                    pool.lock().unwrap().retain(|&(i, _)| i != victim);
                    members.retain(|&i| i != victim);
                    removed.push(victim);
                    match decommission(&mut c, victim).and_then(|m| settle(&c, &members, &removed).map(|()| m)) {
                        Ok(m) => {
                            moved_keys += kept(&c, &members, &before, &format!("the decommission of r{victim}"), &mut moved);
                            format!("{} keys handed over in {:.1} s", m.keys, m.elapsed_secs)
                        }
                        Err(e) => {
                            crashed.push(e);
                            "failed".to_string()
                        }
                    }
                }
                Fault::Kill => {
                    c.kill(victim);
                    std::thread::sleep(hold);
                    c.restart(victim);
                    format!("down {} ms", hold.as_millis())
                }
                Fault::Pause => {
                    let pid = c.replicas[victim].pid().expect("running");
                    signal(pid, "-STOP");
                    std::thread::sleep(hold);
                    signal(pid, "-CONT");
                    format!("stopped {} ms", hold.as_millis())
                }
                Fault::ClockSkew => {
                    let ms = (500 + rng.below(2500)) as i64 * if rng.chance(0.5) { 1 } else { -1 };
                    shift = Duration::from_millis(ms.unsigned_abs());
                    admin(&c, victim, FaultRequest { clock_offset_ms: ms, ..fault_request(FaultAction::Clock, vec![], 0) });
                    std::thread::sleep(hold);
                    admin(&c, victim, fault_request(FaultAction::Heal, vec![], 0));
                    format!("clock {ms:+} ms, {} ms", hold.as_millis())
                }
                Fault::Isolate | Fault::PartitionFromOne | Fault::SlowLinks => {
                    let (req, detail) = match fault {
                        Fault::Isolate => (fault_request(FaultAction::Drop, vec![], 0), "from every peer".to_string()),
                        Fault::PartitionFromOne => {
                            let at = members.iter().position(|&m| m == victim).expect("a member");
                            let other = members[(at + 1 + rng.below(members.len() as u64 - 1) as usize) % members.len()];
                            (fault_request(FaultAction::Drop, vec![c.replicas[other].name.clone()], 0), format!("from r{other}"))
                        }
                        _ => {
                            let ms = 20 + rng.below(280) as u32;
                            (fault_request(FaultAction::Delay, vec![], ms), format!("{ms} ms each way"))
                        }
                    };
                    admin(&c, victim, req);
                    std::thread::sleep(hold);
                    admin(&c, victim, fault_request(FaultAction::Heal, vec![], 0));
                    format!("{detail}, {} ms", hold.as_millis())
                }
            };
            if crashed.is_empty() {
                crashed = exited(&mut c, &removed, &format!("during fault {} on r{victim}", faults.len() + 1));
            }
            if crashed.is_empty() && cfg.spare == 0 {
                c.wait_all_up();
            } else if crashed.is_empty()
                && let Err(e) = settle(&c, &members, &removed)
            {
                crashed.push(format!("after fault {} on r{victim}: {e}", faults.len() + 1));
            }
            faults.push(FaultRecord { start: started, end: t0.elapsed(), replica: victim, fault, detail, shift });
            if !crashed.is_empty() {
                break;
            }
        }
    });
    let mut history = history.into_inner().unwrap();
    history.sort_by_key(|o| o.start);
    if crashed.is_empty() {
        crashed = exited(&mut c, &removed, "at the end");
    }
    if !crashed.is_empty() {
        let verdict = Verdict { violations: crashed.into_iter().chain(moved).collect(), ..Verdict::default() };
        let report = Report { config: cfg, history, faults, verdict, converged_in: None, converged_by_hints: 0, serial: None };
        eprintln!("{}\nreplica logs:\n{}", report.summary(), c.logs());
        return report;
    }
    // Every fault is healed and every member sees every other (the loop waited for it);
    // from here on the checks go through the final members only.
    let healed_at = Instant::now();
    let deadline = healed_at + Duration::from_secs(30);
    let mut differing = Vec::new();

    // 3a. What hints alone converge (reported; read repair has not run yet).
    let mut by_hints = replica_versions(&c, &members, &cfg.keys, &mut differing);
    while !differing.is_empty() && healed_at.elapsed() < Duration::from_secs(10) {
        std::thread::sleep(Duration::from_millis(100));
        by_hints = replica_versions(&c, &members, &cfg.keys, &mut differing);
    }
    let converged_by_hints = by_hints.len();

    // A final SERIAL read of every key (of the SERIAL run), recorded as one more client's:
    // it pins down what the unknown writes left.
    if cfg.serial {
        let reads = per_key(&c, &cfg.keys, |conns, n, key| {
            let via = members[n % members.len()];
            let mut got = None;
            wait_for(slack(Duration::from_secs(10)), || {
                let start = t0.elapsed();
                let r = conns.with(via, |cl| cl.get_text(key, Consistency::Serial));
                let end = t0.elapsed();
                if let Ok(v) = r {
                    got = Some(Op {
                        client: cfg.clients,
                        coordinator: via,
                        kind: OpKind::Get,
                        key,
                        level: Consistency::Serial,
                        start,
                        end,
                        outcome: Outcome::Ok(v),
                    });
                }
                got.is_some()
            });
            got
        });
        history.extend(reads.into_iter().flatten());
    }

    // Final QUORUM reads (these repair what they find stale).
    let mut final_reads = BTreeMap::new();
    let mut final_versions = BTreeMap::new();
    let reads = per_key(&c, &cfg.keys, |conns, n, key| {
        let via = members[n % members.len()];
        let mut last = None;
        let mut got = None;
        wait_for(slack(Duration::from_secs(10)), || match conns.with(via, |cl| cl.get_versioned(key, Consistency::Quorum)) {
            Ok(r) => {
                got = Some((r, t0.elapsed()));
                true
            }
            Err(e) => {
                last = Some(e);
                false
            }
        });
        got.ok_or_else(|| format!("final QUORUM read of key {key} via r{via} kept failing: {last:?}"))
    });
    for (&key, read) in cfg.keys.iter().zip(reads) {
        let (r, end) = read.unwrap_or_else(|e| panic!("{e}; logs:\n{}", c.logs()));
        final_reads.insert(key, (r.value.map(|v| String::from_utf8_lossy(&v).into_owned()), end));
        final_versions.insert(key, r.version);
    }
    let mut verdict = check(&history, &final_reads, &skew_windows(&faults));
    if cfg.spare > 0 {
        verdict.checked.insert("movements lost nothing every replica held (replicas of keys)", moved_keys);
        verdict.violations.extend(moved);
    }
    let serial = cfg.serial.then(|| check_serial(&history, &mut verdict));

    // 3b. Convergence within 30 s of the heal, on a version no older than the final read's.
    let mut agreed = replica_versions(&c, &members, &cfg.keys, &mut differing);
    while !differing.is_empty() && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(100));
        agreed = replica_versions(&c, &members, &cfg.keys, &mut differing);
    }
    verdict.checked.insert("convergence within 30 s of the heal (keys)", cfg.keys.len());
    let converged_in = differing.is_empty().then(|| healed_at.elapsed());
    if !differing.is_empty() {
        verdict.violations.push(format!("replicas did not converge within 30 s of the heal: {}", differing.join("; ")));
    }
    let written: HashSet<&str> = history.iter().filter(|o| o.may_have_written()).filter_map(|o| o.written()).collect();
    for (key, v) in &agreed {
        let read = final_versions.get(key).cloned().flatten();
        match (v, read) {
            (Some(v), Some(r)) if (v.micros, v.node) < (r.micros, r.node) => {
                verdict.violations.push(format!("key {key}: the replicas agree on {v:?}, older than the final QUORUM read's {r:?}"))
            }
            (Some(v), _) if !v.tombstone && !written.contains(String::from_utf8_lossy(&v.value).as_ref()) => {
                verdict.violations.push(format!("invented value: key {key}'s replicas agree on {:?}, which no client wrote", v.value))
            }
            (None, Some(r)) => verdict.violations.push(format!("key {key}: the replicas hold nothing, but the final read found {r:?}")),
            _ => {}
        }
    }
    if cfg.bank > 0 {
        check_bank(&c, &cfg, &members, &bank.into_inner().unwrap(), &mut verdict, deadline);
    }
    verdict.checked.insert("no replica exited unless killed or decommissioned (replicas)", c.replicas.len());
    let report = Report { config: cfg, history, faults, verdict, converged_in, converged_by_hints, serial };
    // Print before the cluster's drop scans the logs (which panics on a panic or sanitizer report);
    // straight to stderr, past the test harness's capture, so `make test` shows it too.
    let _ = std::io::Write::write_all(&mut std::io::stderr(), report.summary().as_bytes());
    if !report.verdict.violations.is_empty() {
        eprintln!("replica logs:\n{}", c.logs());
    }
    drop(c);
    report
}

/// Runs `cfg` (which prints the summary) and fails the test on any violation (naming the seed).
pub fn run_and_check(cfg: Config) {
    let report = run(cfg);
    if !report.verdict.violations.is_empty() {
        let keys: HashSet<u32> = report
            .verdict
            .violations
            .iter()
            .filter_map(|v| v.split("key ").nth(1).and_then(|r| r.split(|ch: char| !ch.is_ascii_digit()).next()?.parse().ok()))
            .collect();
        for key in keys.iter().take(3) {
            eprintln!("history of key {key}:");
            for op in report.history.iter().filter(|o| o.key == *key) {
                eprintln!("  {op}");
            }
        }
        eprintln!("faults:");
        for f in &report.faults {
            eprintln!("  {:>8.3}s..{:>8.3}s r{} {:?} {}", f.start.as_secs_f64(), f.end.as_secs_f64(), f.replica, f.fault, f.detail);
        }
        let path = std::env::temp_dir().join(format!("quorumkv-nemesis-{}.history", report.config.seed));
        let text: String = report.history.iter().map(|o| format!("{o}\n")).collect();
        if std::fs::write(&path, text).is_ok() {
            eprintln!("whole history written to {}", path.display());
        }
        panic!("nemesis found violations; replay with QUORUMKV_NEMESIS_SEED={}\n{}", report.config.seed, report.summary());
    }
}
