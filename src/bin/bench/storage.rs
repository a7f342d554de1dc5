//! `bench memory`, `bench snapshot` and `bench storage` (both): how the storage
//! engine holds many keys, measured side by side within one run.
//!
//! * **memory and restart** — redis-server and a one-replica quorumkv cluster
//!   (`partitioner murmur3`, `rf 1`: one process holding every key, as one
//!   redis-server does) are given the same N keys (`k000000000` …, 10 bytes)
//!   with the same pseudo-random values, written in the same shuffled order:
//!   redis through pipelined `SET`s on one connection, quorumkv by
//!   `--load-clients` client threads at ONE. Each process's resident memory
//!   (`VmRSS`) is read before and after (quorumkv's after any snapshot it was
//!   taking has finished). Then each is killed with SIGKILL and started again:
//!   redis after a `SAVE`, timed until `DBSIZE` answers N (it answers
//!   `-LOADING` while it reads the RDB file); quorumkv with its data folder
//!   (`--fsync batch`: an acknowledged write has reached the OS, so SIGKILL
//!   loses none), timed until its `status` reply shows N keys held — it
//!   recovers before it serves, so the first reply already shows everything.
//!   A sample of the keys is read back afterwards.
//! * **snapshots** — three replicas at RF 3 (murmur3, `--snapshot-bytes`
//!   64 MiB by default, the replica's own default) hold N keys; one `put
//!   QUORUM` load runs for `--duration` (120 s: two or three snapshot cycles
//!   at 1M keys) while the replicas' logs cross the threshold again and again,
//!   and a watcher samples the data folders every 2 ms: a snapshot is in
//!   progress while a folder holds more than one log (the snapshot rotated the
//!   log and has not yet deleted the old one) or a `snapshot.tmp`. Each
//!   operation's latency goes to "a snapshot running" if one was in progress on
//!   any replica when it started or ended, else to "no snapshot running": both
//!   p99s come from the same minutes, interleaved, so a drift in the host's
//!   speed does not skew their ratio; each class must hold at least a tenth
//!   of the operations to be judged. The snapshot's operations are split once
//!   more: before `snapshot.tmp` appears it copies and encodes the cells (in
//!   memory), then it writes and syncs that file. The log's sequence numbers
//!   count the snapshots.
//!
//! The closing table judges quorumkv's RSS against redis' (at most 1.25x), its
//! restart against redis' RDB load (at most 2x), and the p99 during snapshots
//! against the p99 without (at most 2x).

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::time::{Duration, Instant};

use quorumkv::client::Client;
use quorumkv::client::histogram::Histogram;
use quorumkv::cluster::consistency::Consistency;
use quorumkv::proto;

use crate::Args;
use crate::cluster::{Cluster, ClusterOpts, dir_bytes, proc_kib};
use crate::load::{KeySpace, Load, PHASES, put_keys, retried_note, run, shuffled, string_key, value_of};
use crate::matrix::count_label;
use crate::redis::{self, INSTALL_HINT, Redis};
use crate::report::{Report, verdict};

/// `bench memory`: the memory and restart comparisons.
pub(crate) fn memory(args: &Args) -> Result<(), String> {
    let n = key_count(args)?;
    let mut table = Vec::new();
    memory_part(args, n, &mut table)?;
    print_table(&table);
    Ok(())
}

/// `bench snapshot`: put QUORUM p99 with and without snapshots.
pub(crate) fn snapshot(args: &Args) -> Result<(), String> {
    let n = key_count(args)?;
    let mut table = Vec::new();
    snapshot_part(args, n, &mut table)?;
    print_table(&table);
    Ok(())
}

/// `bench storage`: [`memory`] then [`snapshot`], one table.
pub(crate) fn storage(args: &Args) -> Result<(), String> {
    let n = key_count(args)?;
    let mut table = Vec::new();
    memory_part(args, n, &mut table)?;
    println!();
    snapshot_part(args, n, &mut table)?;
    print_table(&table);
    Ok(())
}

pub(crate) fn key_count(args: &Args) -> Result<u32, String> {
    match args.keys {
        None => Ok(1_000_000),
        Some(KeySpace::Strings(n)) => Ok(n),
        Some(KeySpace::Range(..)) => Err("memory, snapshot and storage take a count of string keys, such as --keys 1000000".into()),
    }
}

pub(crate) fn print_table(table: &[String]) {
    println!("\n== targets");
    for row in table {
        println!("{row}");
    }
}

pub(crate) fn mib(kib: u64) -> String {
    format!("{:.1} MiB", kib as f64 / 1024.0)
}

/// Bytes a key: `kib` (KiB) over `n` keys.
fn per_key(kib: u64, n: u32) -> f64 {
    kib as f64 * 1024.0 / f64::from(n)
}

/// A JSON number, `null` if not measured.
pub(crate) fn num(v: Option<f64>) -> String {
    match v {
        Some(x) if x.is_finite() => format!("{x:.3}"),
        _ => "null".into(),
    }
}

/// What redis-server did with the keys.
struct RedisFigures {
    idle_kib: u64,
    rss_kib: u64,
    used_memory: u64,
    load: Duration,
    rdb_bytes: u64,
}

/// What the quorumkv replica did with them.
struct QuorumkvFigures {
    idle_kib: u64,
    rss_kib: u64,
    payload_bytes: u64,
    load: Duration,
    data_bytes: u64,
    snapshot_bytes: u64,
    log_bytes: u64,
}

/// The restart rounds: each round restarts redis (from its RDB file), then the
/// replica from the data folder its load left (a snapshot and a log tail), then
/// the replica again (its folder then a snapshot alone).
#[derive(Default)]
struct Restarts {
    redis: Vec<Duration>,
    tail: Vec<Duration>,
    snapshot_only: Vec<Duration>,
    /// Resident memory after the first round's restarts (KiB): redis, the replica
    /// after the log tail, its peak then, and after the snapshot alone.
    redis_kib: u64,
    tail_kib: u64,
    tail_peak_kib: u64,
    snapshot_only_kib: u64,
}

/// The median of `values` (0 for none).
fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => 0.0,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn secs(d: &[Duration]) -> Vec<f64> {
    d.iter().map(Duration::as_secs_f64).collect()
}

/// Copies the files of `from` into `to`, which is emptied first.
fn copy_files(from: &Path, to: &Path) -> Result<(), String> {
    let _ = std::fs::remove_dir_all(to);
    std::fs::create_dir_all(to).map_err(|e| format!("cannot create {}: {e}", to.display()))?;
    for e in std::fs::read_dir(from).map_err(|e| format!("cannot read {}: {e}", from.display()))?.flatten() {
        if e.file_type().is_ok_and(|t| t.is_file()) {
            std::fs::copy(e.path(), to.join(e.file_name())).map_err(|err| format!("cannot copy {}: {err}", e.path().display()))?;
        }
    }
    Ok(())
}

fn memory_part(args: &Args, n: u32, table: &mut Vec<String>) -> Result<(), String> {
    let order = shuffled(n);
    let pin = if args.pin_replicas.is_empty() { "not pinned".into() } else { format!("servers pinned to CPU {}", args.pin_replicas) };
    println!(
        "== memory and restart: {n} keys of 10 bytes with {}-byte values (pseudo-random, the same in both stores), \
         written in one shuffled order; {pin}",
        args.value_size
    );
    let mut redis = match redis::find(&args.redis_server) {
        None => {
            println!("redis-server not found ({:?}): {INSTALL_HINT}; the redis comparisons are skipped", args.redis_server);
            None
        }
        Some(exe) => Some(redis_side(&exe, args, n, &order)?),
    };
    let (mut cluster, q) = quorumkv_side(args, n, &order)?;
    let rounds = args.repeat.max(1);
    let r = restart_rounds(&mut cluster, redis.as_mut().map(|(r, _)| r), args, n, rounds)?;
    drop(cluster);
    let redis = redis.map(|(_, f)| f);
    let ratios: Vec<f64> = r.tail.iter().zip(&r.redis).map(|(q, r)| q.as_secs_f64() / r.as_secs_f64().max(1e-6)).collect();
    let only_ratios: Vec<f64> = r.snapshot_only.iter().zip(&r.redis).map(|(q, r)| q.as_secs_f64() / r.as_secs_f64().max(1e-6)).collect();
    let (rss_ratio, key_ratio, restart_ratio) = match &redis {
        Some(f) => (
            Some(q.rss_kib as f64 / f.rss_kib.max(1) as f64),
            Some(per_key(q.rss_kib.saturating_sub(q.idle_kib), n) / per_key(f.rss_kib.saturating_sub(f.idle_kib).max(1), n)),
            Some(median(&ratios)),
        ),
        None => (None, None, None),
    };
    let keys = count_label(u64::from(n));
    let list = |v: &[f64]| v.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
    match (&redis, rss_ratio, key_ratio, restart_ratio) {
        (Some(f), Some(rss), Some(per), Some(restart)) => {
            table.push(verdict(
                &format!("replica resident memory / redis-server's, {keys} keys"),
                rss,
                "<=",
                1.25,
                &format!(
                    "({} vs {}; a key over the idle process: {:.0} vs {:.0} bytes, {per:.2}x; restarted from a snapshot alone: {}, {:.2}x)",
                    mib(q.rss_kib),
                    mib(f.rss_kib),
                    per_key(q.rss_kib.saturating_sub(q.idle_kib), n),
                    per_key(f.rss_kib.saturating_sub(f.idle_kib), n),
                    mib(r.snapshot_only_kib),
                    r.snapshot_only_kib as f64 / f.rss_kib.max(1) as f64
                ),
            ));
            table.push(verdict(
                &format!("restart until {keys} keys served / redis RDB load"),
                restart,
                "<=",
                2.0,
                &format!(
                    "(median of {rounds} rounds: {}; {:.2} vs {:.2} s; from a snapshot alone {:.2}x: {})",
                    list(&ratios),
                    median(&secs(&r.tail)),
                    median(&secs(&r.redis)),
                    median(&only_ratios),
                    list(&only_ratios)
                ),
            ));
        }
        _ => {
            for what in ["replica resident memory / redis-server's", "restart / redis RDB load"] {
                table.push(format!("{what:<52} not measured: redis-server is not installed ({INSTALL_HINT})"));
            }
        }
    }
    if args.json {
        let f = redis.as_ref();
        let int = |v: Option<u64>| v.map_or("null".to_string(), |x| x.to_string());
        let redis_secs = (!r.redis.is_empty()).then(|| median(&secs(&r.redis)));
        println!(
            "{{\"label\":\"memory\",\"keys\":{n},\"value_size\":{},\"redis_idle_kib\":{},\"redis_rss_kib\":{},\"redis_bytes_per_key\":{},\
             \"redis_raw_bytes_per_key\":{},\"redis_used_memory_bytes\":{},\"redis_load_seconds\":{},\"quorumkv_idle_kib\":{},\
             \"quorumkv_rss_kib\":{},\"quorumkv_bytes_per_key\":{},\"quorumkv_raw_bytes_per_key\":{},\"quorumkv_payload_bytes_per_key\":{},\
             \"quorumkv_load_seconds\":{},\"quorumkv_snapshot_only_rss_kib\":{},\"rss_ratio\":{},\"per_key_ratio\":{}}}",
            args.value_size,
            int(f.map(|f| f.idle_kib)),
            int(f.map(|f| f.rss_kib)),
            num(f.map(|f| per_key(f.rss_kib.saturating_sub(f.idle_kib), n))),
            num(f.map(|f| per_key(f.rss_kib, n))),
            int(f.map(|f| f.used_memory)),
            num(f.map(|f| f.load.as_secs_f64())),
            q.idle_kib,
            q.rss_kib,
            num(Some(per_key(q.rss_kib.saturating_sub(q.idle_kib), n))),
            num(Some(per_key(q.rss_kib, n))),
            num(Some(q.payload_bytes as f64 / f64::from(n))),
            num(Some(q.load.as_secs_f64())),
            r.snapshot_only_kib,
            num(rss_ratio),
            num(key_ratio),
        );
        println!(
            "{{\"label\":\"restart\",\"keys\":{n},\"rounds\":{rounds},\"redis_rdb_bytes\":{},\"redis_restart_seconds\":{},\
             \"redis_restarted_rss_kib\":{},\"quorumkv_data_bytes\":{},\"quorumkv_snapshot_bytes\":{},\"quorumkv_log_bytes\":{},\
             \"quorumkv_restart_seconds\":{},\"quorumkv_restarted_rss_kib\":{},\"quorumkv_restarted_peak_kib\":{},\
             \"quorumkv_snapshot_only_restart_seconds\":{},\"restart_ratio\":{},\"snapshot_only_restart_ratio\":{}}}",
            int(f.map(|f| f.rdb_bytes)),
            num(redis_secs),
            int(f.map(|_| r.redis_kib)),
            q.data_bytes,
            q.snapshot_bytes,
            q.log_bytes,
            num(Some(median(&secs(&r.tail)))),
            r.tail_kib,
            r.tail_peak_kib,
            num(Some(median(&secs(&r.snapshot_only)))),
            num(restart_ratio),
            num(redis_secs.map(|_| median(&only_ratios))),
        );
    }
    Ok(())
}

/// Loads the keys into a new redis-server and saves them; returns it running, and what it took.
fn redis_side(exe: &Path, args: &Args, n: u32, order: &[u32]) -> Result<(Redis, RedisFigures), String> {
    let version = redis::version(exe);
    let r = Redis::start(exe, &args.pin_replicas, "redis")?;
    let idle_kib = r.rss_kib();
    let started = Instant::now();
    {
        let mut c = r.connect()?;
        let mut value = Vec::with_capacity(args.value_size);
        for chunk in order.chunks(1000) {
            for &i in chunk {
                value_of(i, args.value_size, &mut value);
                c.queue(&[b"SET", &string_key(i), &value]);
            }
            c.send_queued(chunk.len()).map_err(|e| format!("redis SET: {e}"))?;
        }
    }
    let load = started.elapsed();
    let held = r.dbsize()?;
    if held != u64::from(n) {
        return Err(format!("redis holds {held} keys after {n} SETs"));
    }
    let rss_kib = r.rss_kib();
    let used_memory = r.info_number("used_memory").unwrap_or(0);
    let rdb_bytes = r.save()?;
    println!("{version}");
    println!(
        "redis: {n} keys written in {:.1} s (pipelined SET, 1000 a batch); resident memory {} idle, {} holding them: \
         {:.0} bytes a key over the idle process ({:.0} raw; used_memory says {:.0}); SAVE wrote a {} RDB file",
        load.as_secs_f64(),
        mib(idle_kib),
        mib(rss_kib),
        per_key(rss_kib.saturating_sub(idle_kib), n),
        per_key(rss_kib, n),
        used_memory as f64 / f64::from(n),
        mib(rdb_bytes / 1024)
    );
    Ok((r, RedisFigures { idle_kib, rss_kib, used_memory, load, rdb_bytes }))
}

/// `rounds` restart rounds (see [`Restarts`]); each restart is a SIGKILL and a
/// new process, timed from its spawn until it serves all `n` keys.
fn restart_rounds(cluster: &mut Cluster, mut redis: Option<&mut Redis>, args: &Args, n: u32, rounds: usize) -> Result<Restarts, String> {
    let mut r = Restarts::default();
    let data = cluster.data_dir(0);
    let saved = data.with_file_name("b0-after-load");
    cluster.kill(0);
    copy_files(&data, &saved)?;
    for round in 0..rounds {
        if let Some(redis) = redis.as_deref_mut() {
            r.redis.push(redis.restart_timed(u64::from(n))?);
            if round == 0 {
                r.redis_kib = redis.rss_kib();
            }
        }
        cluster.kill(0);
        if round > 0 {
            copy_files(&saved, &data)?;
        }
        let started = cluster.restart(0)?;
        r.tail.push(cluster.wait_keys(0, u64::from(n), started, Duration::from_secs(600))?);
        if round == 0 {
            r.tail_kib = cluster.rss_kib(0);
            r.tail_peak_kib = cluster.pid(0).map_or(0, |p| proc_kib(p, "VmHWM"));
            check_sample(cluster, 0, n, args.value_size, 1000)?;
        }
        // That start folded the log into a snapshot, and nothing was written since.
        let started = cluster.restart(0)?;
        r.snapshot_only.push(cluster.wait_keys(0, u64::from(n), started, Duration::from_secs(600))?);
        if round == 0 {
            r.snapshot_only_kib = cluster.rss_kib(0);
        }
        let redis_part = r.redis.last().map_or(String::new(), |d| format!("redis {:.3} s, ", d.as_secs_f64()));
        println!(
            "restart round {}: {redis_part}quorumkv {:.3} s (from a snapshot alone {:.3} s)",
            round + 1,
            r.tail[round].as_secs_f64(),
            r.snapshot_only[round].as_secs_f64()
        );
    }
    println!(
        "after the first round's restarts: redis resident {}; quorumkv resident {} (peak {}; 1000 keys read back), \
         from a snapshot alone {}",
        mib(r.redis_kib),
        mib(r.tail_kib),
        mib(r.tail_peak_kib),
        mib(r.snapshot_only_kib)
    );
    Ok(r)
}

/// The storage figures replica `i` reports for itself.
fn storage_of(cluster: &Cluster, i: usize) -> Result<proto::StorageStats, String> {
    let mut c = Client::connect("127.0.0.1", cluster.port(i), Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let s = c.status().map_err(|e| e.to_string())?;
    s.replicas.into_iter().find(|r| r.is_self).and_then(|r| r.storage).ok_or_else(|| "status without storage figures".into())
}

/// No snapshot in progress, one copying and encoding the cells (in memory), one writing its file.
const NO_SNAPSHOT: u8 = 0;
const SNAPSHOT_IN_MEMORY: u8 = 1;
const SNAPSHOT_FILE: u8 = 2;

/// The snapshot phase of a data folder and the newest log's sequence number. A
/// snapshot rotates the log first, so from then on the folder holds two logs
/// until the snapshot is installed and the old one deleted; it writes
/// `snapshot.tmp` once the cells are captured and encoded.
fn snapshot_state(dir: &Path) -> (u8, u64) {
    let (mut logs, mut tmp, mut newest) = (0, false, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "snapshot.tmp" {
            tmp = true;
        } else if let Some(seq) = name.strip_prefix("wal-").and_then(|r| r.strip_suffix(".log")).and_then(|s| s.parse::<u64>().ok()) {
            logs += 1;
            newest = newest.max(seq);
        }
    }
    let phase = match (tmp, logs > 1) {
        (true, _) => SNAPSHOT_FILE,
        (false, true) => SNAPSHOT_IN_MEMORY,
        (false, false) => NO_SNAPSHOT,
    };
    (phase, newest)
}

/// The bytes of a data folder's snapshot and of its logs, and how many logs.
fn folder_files(dir: &Path) -> (u64, u64, usize) {
    let (mut snapshot, mut logs, mut count) = (0, 0, 0);
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        let len = e.metadata().map_or(0, |m| m.len());
        let name = e.file_name();
        let name = name.to_string_lossy();
        if name == "snapshot" {
            snapshot = len;
        } else if name.starts_with("wal-") && name.ends_with(".log") {
            logs += len;
            count += 1;
        }
    }
    (snapshot, logs, count)
}

/// Waits until no snapshot has been in progress in `dir` for 200 ms: longer than
/// the replica's snapshot thread waits between two looks at its log, so a log
/// that is still past `--snapshot-bytes` has had its snapshot started meanwhile.
pub(crate) fn wait_snapshot_done(dir: &Path, timeout: Duration) -> Result<(), String> {
    let deadline = Instant::now() + timeout;
    let mut quiet_since = Instant::now();
    loop {
        if snapshot_state(dir).0 != NO_SNAPSHOT {
            quiet_since = Instant::now();
        } else if quiet_since.elapsed() >= Duration::from_millis(200) {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("snapshots in {} did not stop within {timeout:?}", dir.display()));
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

/// Reads `samples` keys spread over `0..n` back from replica `i` at ONE and checks their values.
fn check_sample(cluster: &Cluster, i: usize, n: u32, value_size: usize, samples: u32) -> Result<(), String> {
    let mut c = Client::connect("127.0.0.1", cluster.port(i), Duration::from_secs(2)).map_err(|e| e.to_string())?;
    let mut want = Vec::new();
    for s in 0..samples.min(n) {
        let k = (u64::from(s) * u64::from(n) / u64::from(samples.min(n))) as u32;
        value_of(k, value_size, &mut want);
        let got = c.get(string_key(k), Consistency::One).map_err(|e| format!("reading back key {k}: {e}"))?;
        if got.as_deref() != Some(&want[..]) {
            return Err(format!("key {} read back wrong after the restart: {got:?}", String::from_utf8_lossy(&string_key(k))));
        }
    }
    Ok(())
}

/// Loads the keys into a new one-replica cluster; returns it running, and what it took.
fn quorumkv_side(args: &Args, n: u32, order: &[u32]) -> Result<(Cluster, QuorumkvFigures), String> {
    let cluster = Cluster::start(ClusterOpts::new(args, 1, None, "partitioner murmur3\nrf 1\n", "memory"))?;
    let idle_kib = cluster.rss_kib(0);
    let (load, retried) = put_keys(&cluster.targets(), order, args.value_size, Consistency::One, args.load_clients)?;
    wait_snapshot_done(&cluster.data_dir(0), Duration::from_secs(300))?;
    let rss_kib = cluster.rss_kib(0);
    let st = storage_of(&cluster, 0)?;
    if st.keys != u64::from(n) {
        return Err(format!("the replica holds {} keys after {n} writes", st.keys));
    }
    let data_bytes = dir_bytes(&cluster.data_dir(0));
    let (snapshot_bytes, log_bytes, logs) = folder_files(&cluster.data_dir(0));
    println!(
        "quorumkv (one replica, rf 1, murmur3): {n} keys written at ONE by {} clients in {:.1} s{}; resident memory {} idle, \
         {} holding them: {:.0} bytes a key over the idle process ({:.0} raw; keys and values are {:.0}); \
         data folder {} (snapshot {}, {logs} log(s) {})",
        args.load_clients,
        load.as_secs_f64(),
        retried_note(retried),
        mib(idle_kib),
        mib(rss_kib),
        per_key(rss_kib.saturating_sub(idle_kib), n),
        per_key(rss_kib, n),
        st.bytes as f64 / f64::from(n),
        mib(data_bytes / 1024),
        mib(snapshot_bytes / 1024),
        mib(log_bytes / 1024)
    );
    Ok((cluster, QuorumkvFigures { idle_kib, rss_kib, payload_bytes: st.bytes, load, data_bytes, snapshot_bytes, log_bytes }))
}

/// What the watcher saw during a load.
#[derive(Default)]
struct Watch {
    /// Time in each snapshot phase (the furthest along of any replica).
    time: [Duration; PHASES],
    /// Snapshots started (log rotations), all replicas.
    snapshots: u64,
    /// Each replica's largest resident memory, KiB.
    max_rss_kib: Vec<u64>,
}

impl Watch {
    /// The share of the time in `phase`.
    fn share(&self, phase: u8) -> f64 {
        let total: Duration = self.time.iter().sum();
        self.time[usize::from(phase)].as_secs_f64() / total.as_secs_f64().max(1e-9)
    }

    /// The share of the time with a snapshot in progress.
    fn coverage(&self) -> f64 {
        1.0 - self.share(NO_SNAPSHOT)
    }
}

/// Runs `load` while a watcher samples the replicas' data folders every 2 ms
/// and sets `phase` to the furthest snapshot phase of any of them (the load
/// sorts its latencies by it), and samples their memory every 50 ms.
fn watched(cluster: &Cluster, load: &Load, phase: &AtomicU8) -> (Report, Watch) {
    let n = cluster.targets().len();
    let dirs: Vec<_> = (0..n).map(|i| cluster.data_dir(i)).collect();
    let pids: Vec<_> = (0..n).map(|i| cluster.pid(i)).collect();
    let stop = AtomicBool::new(false);
    std::thread::scope(|s| {
        let watcher = s.spawn(|| {
            let first: Vec<u64> = dirs.iter().map(|d| snapshot_state(d).1).collect();
            let mut w = Watch { max_rss_kib: vec![0; n], ..Default::default() };
            let mut last = first.clone();
            let mut at = Instant::now();
            let mut seen = NO_SNAPSHOT;
            for round in 0u64.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                // The interval since the last sample counts as the phase seen then.
                let now = Instant::now();
                w.time[usize::from(seen)] += now - at;
                at = now;
                seen = NO_SNAPSHOT;
                for (i, d) in dirs.iter().enumerate() {
                    let (p, seq) = snapshot_state(d);
                    seen = seen.max(p);
                    last[i] = last[i].max(seq);
                    if round % 25 == 0 {
                        w.max_rss_kib[i] = w.max_rss_kib[i].max(pids[i].map_or(0, |p| proc_kib(p, "VmRSS")));
                    }
                }
                phase.store(seen, Ordering::Relaxed);
                std::thread::sleep(Duration::from_millis(2));
            }
            w.snapshots = last.iter().zip(&first).map(|(l, f)| l - f).sum();
            w
        });
        let report = run(load);
        stop.store(true, Ordering::Relaxed);
        (report, watcher.join().expect("watcher"))
    })
}

/// Fewest operations a class needs for its p99 to count, and the least share of all.
const MIN_CLASS_OPS: u64 = 1000;
const MIN_CLASS_SHARE: f64 = 0.1;

fn snapshot_part(args: &Args, n: u32, table: &mut Vec<String>) -> Result<(), String> {
    let opts = ClusterOpts::new(args, 3, None, "partitioner murmur3\nrf 3\n", "snapshot");
    let cluster = Cluster::start_with(opts, vec!["--snapshot-bytes".into(), args.snapshot_bytes.to_string()])?;
    let (took, retried) = put_keys(&cluster.targets(), &shuffled(n), args.value_size, Consistency::All, args.load_clients)?;
    for i in 0..3 {
        wait_snapshot_done(&cluster.data_dir(i), Duration::from_secs(300))?;
    }
    let d = args.duration.unwrap_or(Duration::from_secs(120));
    println!(
        "== snapshots: 3 replicas, RF 3, murmur3, --snapshot-bytes {}, {n} keys of 10 bytes with {}-byte values (written at ALL \
         by {} clients in {:.1} s{}); put QUORUM by {} clients for {:?} after a {:?} warm-up; each operation is counted as \
         \"a snapshot running\" if one was in progress on any replica when it started or ended (the data folders sampled every 2 ms)",
        args.snapshot_bytes,
        args.value_size,
        args.load_clients,
        took.as_secs_f64(),
        retried_note(retried),
        args.clients,
        d,
        args.warmup
    );
    let phase = Arc::new(AtomicU8::new(NO_SNAPSHOT));
    let load = Load::phased_quorum_puts(args, cluster.targets(), n, d, phase.clone());
    let (report, w) = watched(&cluster, &load, &phase);
    let coverage = w.coverage();
    let [quiet, in_memory, file] = report.phases.clone();
    let mut busy = in_memory.clone();
    busy.merge(&file);
    let class = |hist: Histogram, share: f64| Report { ops: hist.count(), seconds: report.seconds * share, hist, ..Default::default() };
    let (quiet, busy) = (class(quiet, 1.0 - coverage), class(busy, coverage));
    let (in_memory, file) = (class(in_memory, w.share(SNAPSHOT_IN_MEMORY)), class(file, w.share(SNAPSHOT_FILE)));
    let (quiet_label, busy_label) = ("put QUORUM c=32, no snapshot running", "put QUORUM c=32, a snapshot running");
    println!("{}", quiet.line(quiet_label));
    println!("{}", busy.line(busy_label));
    println!("{}", in_memory.line("  copying and encoding the cells"));
    println!("{}", file.line("  writing the snapshot file"));
    let errors: u64 = report.errors.values().sum();
    println!(
        "  {} snapshot(s) started across the replicas, one in progress {:.0} % of the time; replica resident memory up to {}{}",
        w.snapshots,
        coverage * 100.0,
        w.max_rss_kib.iter().map(|&k| mib(k)).collect::<Vec<_>>().join(", "),
        if errors > 0 { format!("; {errors} operation(s) failed") } else { String::new() }
    );
    let (q99, b99) = (quiet.hist.percentile(0.99), busy.hist.percentile(0.99));
    let name = "put QUORUM p99 while a snapshot runs / without";
    let enough = |ops: u64| ops >= MIN_CLASS_OPS && ops as f64 >= MIN_CLASS_SHARE * (quiet.ops + busy.ops) as f64;
    let ratio = if enough(quiet.ops) && enough(busy.ops) {
        let r = b99 as f64 / q99.max(1) as f64;
        let detail = format!("({b99} vs {q99} µs; {} snapshots, in progress {:.0} % of the time)", w.snapshots, coverage * 100.0);
        table.push(verdict(name, r, "<=", 2.0, &detail));
        Some(r)
    } else {
        let why = if !enough(busy.ops) {
            "too few operations while a snapshot ran: lower --snapshot-bytes or lengthen --duration"
        } else {
            "too few operations without a snapshot: raise --snapshot-bytes or lengthen --duration"
        };
        table.push(verdict(name, f64::NAN, "<=", 2.0, &format!("(not measured: {why}; {} and {} operations)", busy.ops, quiet.ops)));
        None
    };
    if args.json {
        println!("{}", quiet.json(quiet_label));
        println!("{}", busy.json(busy_label));
        println!(
            "{{\"label\":\"snapshot\",\"keys\":{n},\"snapshot_bytes\":{},\"ops_per_sec\":{:.1},\"errors\":{errors},\"quiet_ops\":{},\
             \"quiet_p50_us\":{},\"quiet_p99_us\":{q99},\"busy_ops\":{},\"busy_p50_us\":{},\"busy_p99_us\":{b99},\"snapshots\":{},\
             \"coverage\":{coverage:.3},\"in_memory_ops\":{},\"in_memory_p99_us\":{},\"in_memory_share\":{:.3},\"file_ops\":{},\
             \"file_p99_us\":{},\"file_share\":{:.3},\"max_rss_kib\":{},\"p99_ratio\":{}}}",
            args.snapshot_bytes,
            report.ops_per_sec(),
            quiet.ops,
            quiet.hist.percentile(0.5),
            busy.ops,
            busy.hist.percentile(0.5),
            w.snapshots,
            in_memory.ops,
            in_memory.hist.percentile(0.99),
            w.share(SNAPSHOT_IN_MEMORY),
            file.ops,
            file.hist.percentile(0.99),
            w.share(SNAPSHOT_FILE),
            w.max_rss_kib.iter().max().copied().unwrap_or(0),
            num(ratio),
        );
    }
    Ok(())
}
