//! A replica's settings: who it is, what it runs, and its limits.

use std::fmt;
use std::net::IpAddr;
use std::path::PathBuf;
use std::time::Duration;

use crate::error::{Error, Result};
use crate::storage::wal::FsyncMode;

/// Which repair mechanisms run, as the seed's `MODE` argument chooses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Read repair and hinted handoff (the default).
    Both,
    /// Read repair only: writes that miss a replica are not hinted.
    ReadRepair,
    /// Hinted handoff only: reads never repair.
    HintedHandoff,
    /// Neither: replicas converge by anti-entropy alone (for tests of it, and
    /// clusters that repair on a schedule).
    NoRepair,
}

impl Mode {
    /// Parses `READ-REPAIR` or `HINTED-HANDOFF` (any case, `_` for `-`).
    pub fn parse(s: &str) -> Result<Mode> {
        match s.to_ascii_uppercase().replace('_', "-").as_str() {
            "READ-REPAIR" => Ok(Mode::ReadRepair),
            "HINTED-HANDOFF" => Ok(Mode::HintedHandoff),
            "BOTH" => Ok(Mode::Both),
            "NONE" => Ok(Mode::NoRepair),
            _ => Err(Error::Config(format!("unknown mode {s:?}: use READ-REPAIR, HINTED-HANDOFF or NONE, or omit it for both"))),
        }
    }

    /// Whether reads repair stale replicas.
    pub fn read_repair(self) -> bool {
        matches!(self, Mode::Both | Mode::ReadRepair)
    }

    /// Whether missed writes are hinted.
    pub fn hinted_handoff(self) -> bool {
        matches!(self, Mode::Both | Mode::HintedHandoff)
    }
}

impl fmt::Display for Mode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Mode::Both => "READ-REPAIR+HINTED-HANDOFF",
            Mode::ReadRepair => "READ-REPAIR",
            Mode::HintedHandoff => "HINTED-HANDOFF",
            Mode::NoRepair => "NONE",
        })
    }
}

/// Everything a replica needs besides the ring.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This replica's name in the cluster file.
    pub name: String,
    /// Address to listen on.
    pub bind: IpAddr,
    /// Port to listen on.
    pub port: u16,
    /// Repair mechanisms.
    pub mode: Mode,
    /// With read repair, the share of ONE reads answered from this node's
    /// own copy that also ask the other replicas afterwards, to repair them
    /// (`--read-repair-chance`; 1: every one, the seed's behaviour; Cassandra
    /// asked 10 % of them, then none). QUORUM and ALL reads always repair.
    pub read_repair_chance: f64,
    /// How long a coordinator waits for acks.
    pub request_timeout: Duration,
    /// Hints older than this are dropped.
    pub hint_window: Duration,
    /// Bytes of hinted values held per target before new hints are refused.
    pub max_hint_bytes: usize,
    /// Hints replayed per second per target.
    pub hint_rate: u32,
    /// Largest value accepted, in bytes.
    pub max_value_bytes: usize,
    /// Largest key accepted in a murmur3 cluster, in bytes.
    pub max_key_bytes: usize,
    /// The most keys of a client's transaction or `mget`.
    pub max_txn_keys: usize,
    /// The most bytes of values of a client's transaction.
    pub max_txn_bytes: usize,
    /// Client connections served at once; more are refused.
    pub max_connections: usize,
    /// Interval between heartbeats to each peer.
    pub heartbeat_interval: Duration,
    /// A peer silent this long is marked down.
    pub down_after: Duration,
    /// Timeout for connecting to a peer and for its handshake.
    pub connect_timeout: Duration,
    /// A write timestamp further than this ahead of our clock is refused.
    pub max_clock_offset: Duration,
    /// A new connection must send its first frame within this time.
    pub first_frame_timeout: Duration,
    /// Bytes that answered calls may hold while their last replicas reply (see [`crate::coordinator::call::Budget`]).
    pub max_background_bytes: usize,
    /// Where the log and snapshots live; `None` keeps everything in memory.
    pub data_dir: Option<PathBuf>,
    /// When a logged write counts as durable.
    pub fsync: FsyncMode,
    /// A snapshot is taken when the log grows past this many bytes.
    pub snapshot_bytes: u64,
    /// Test hook: append `key micros node` to this file for every write this replica acknowledges.
    pub ack_log: Option<PathBuf>,
    /// Accept the admin requests that drop or delay messages and pause the replica (tests, demos).
    pub enable_fault_injection: bool,
    /// Test hook: a transaction coordinator kills this process at this point
    /// (see [`TxnCrashPoint`]).
    pub txn_crash: Option<TxnCrashPoint>,
    /// Test hook: the first send past this point (see [`TxnCrashPoint::at`])
    /// stops the whole process (SIGSTOP, as the nemesis pauses a replica)
    /// until something sends it SIGCONT.
    pub txn_pause: Option<TxnCrashPoint>,
    /// How often a background anti-entropy pass starts (zero: never; `repair` still runs one).
    pub anti_entropy_interval: Duration,
    /// An intent held longer than this is settled by its replica's recovery
    /// (the transaction's record is asked, or aborted).
    pub txn_timeout: Duration,
    /// The most bytes a second a movement this node runs copies (keys and values; 0: no limit).
    pub stream_throughput: u64,
    /// Room for the coordinator cache of keys this node holds no copy of
    /// (0: no cache; see [`crate::coordinator::cache`]).
    pub coordinator_cache_bytes: usize,
    /// How long a coordinator cache entry answers ONE reads after it was
    /// stored or confirmed: how stale it may be for other coordinators' writes.
    pub coordinator_cache_ttl: Duration,
    /// Whether a message a machine asks to send after a pause
    /// ([`Route::After`](crate::coordinator::command::Route::After)) waits
    /// for it on the timer thread; the simulated network, whose time is not
    /// the wall clock's, sends it at once.
    pub timed_sends: bool,
    /// The port of the Redis-protocol listener (`--resp-port`; none: no listener; see [`crate::resp`]).
    pub resp_port: Option<u16>,
    /// The consistency level a RESP connection starts at (`--resp-consistency`; QUORUM).
    pub resp_consistency: crate::cluster::consistency::Consistency,
}

/// Where a transaction coordinator dies or pauses when told to (hidden test
/// flags, `--txn-crash-before` and `--txn-pause-before`): between two of its
/// phases, to show that the replicas settle the transaction without it, and
/// that a paused coordinator which wakes up late cannot undo their decision.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TxnCrashPoint {
    /// After every vote came in, before the decision is sent to the record.
    Record,
    /// After the decision was recorded, before any resolution is sent (a
    /// commit is answered after its resolutions, so its client hears nothing).
    Resolve,
}

impl TxnCrashPoint {
    /// `record` or `resolve`.
    pub fn parse(s: &str) -> std::result::Result<TxnCrashPoint, String> {
        match s {
            "record" => Ok(TxnCrashPoint::Record),
            "resolve" => Ok(TxnCrashPoint::Resolve),
            other => Err(format!("unknown transaction crash point {other:?}: record or resolve")),
        }
    }

    /// Whether sending `msg` passes this point (any resolution a coordinator
    /// sends, an abort's too; a recovering replica's own resolutions as well,
    /// so a replica started with this flag is only ever a coordinator to kill).
    pub fn at(self, msg: &crate::message::PeerRequest) -> bool {
        use crate::message::PeerRequest as P;
        use crate::txn::record::RecordRequest as R;
        match self {
            TxnCrashPoint::Record => matches!(msg, P::TxnRecord(R::Accept { .. })),
            TxnCrashPoint::Resolve => matches!(msg, P::TxnResolve { .. }),
        }
    }
}

impl NodeConfig {
    /// Defaults for a replica named `name` listening on `bind:port`.
    pub fn new(name: impl Into<String>, bind: IpAddr, port: u16) -> Self {
        NodeConfig {
            name: name.into(),
            bind,
            port,
            mode: Mode::Both,
            request_timeout: Duration::from_millis(2000),
            hint_window: Duration::from_secs(3 * 3600),
            max_hint_bytes: 128 << 20,
            hint_rate: 2000,
            max_value_bytes: 1 << 20,
            max_key_bytes: crate::cluster::key::DEFAULT_MAX_KEY_BYTES,
            max_txn_keys: crate::txn::DEFAULT_TXN_KEYS,
            max_txn_bytes: crate::txn::DEFAULT_TXN_BYTES,
            max_connections: 2048,
            heartbeat_interval: Duration::from_millis(200),
            down_after: Duration::from_millis(1000),
            connect_timeout: Duration::from_millis(500),
            max_clock_offset: Duration::from_secs(5),
            first_frame_timeout: Duration::from_secs(5),
            max_background_bytes: 32 << 20,
            data_dir: None,
            fsync: FsyncMode::Batch(Duration::from_millis(10)),
            snapshot_bytes: 64 << 20,
            ack_log: None,
            enable_fault_injection: false,
            txn_crash: None,
            txn_pause: None,
            anti_entropy_interval: Duration::from_secs(600),
            txn_timeout: Duration::from_secs(2),
            stream_throughput: 0,
            coordinator_cache_bytes: 0,
            coordinator_cache_ttl: Duration::from_secs(1),
            resp_port: None,
            read_repair_chance: 1.0,
            resp_consistency: crate::cluster::consistency::Consistency::Quorum,
            timed_sends: true,
        }
    }

    /// The largest frame a replica accepts: the largest value, a full read
    /// batch of the largest keys, and room for the envelope.
    pub fn max_frame_bytes(&self) -> usize {
        self.max_value_bytes + (crate::message::MAX_BATCH + 1) * (self.max_key_bytes + 8) + 64 * 1024
    }
}

/// Parses a duration such as `250ms`, `10s`, `5m`, `3h` (a bare number is seconds).
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let s = s.trim();
    let split = s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len());
    let (num, unit) = s.split_at(split);
    let n: u64 = num.parse().map_err(|_| format!("{s:?} is not a duration like 250ms, 10s, 5m or 3h"))?;
    let d = match unit {
        "ms" => Duration::from_millis(n),
        "" | "s" => Duration::from_secs(n),
        "m" => Duration::from_secs(n * 60),
        "h" => Duration::from_secs(n * 3600),
        _ => return Err(format!("{s:?}: unknown unit {unit:?}; use ms, s, m or h")),
    };
    Ok(d)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modes() {
        assert_eq!(Mode::parse("read-repair").unwrap(), Mode::ReadRepair);
        assert_eq!(Mode::parse("HINTED_HANDOFF").unwrap(), Mode::HintedHandoff);
        assert!(Mode::parse("BOGUS").is_err());
        assert!(!Mode::ReadRepair.hinted_handoff() && Mode::ReadRepair.read_repair());
        assert!(Mode::HintedHandoff.hinted_handoff() && !Mode::HintedHandoff.read_repair());
    }

    #[test]
    fn durations() {
        assert_eq!(parse_duration("250ms").unwrap(), Duration::from_millis(250));
        assert_eq!(parse_duration("3h").unwrap(), Duration::from_secs(10800));
        assert_eq!(parse_duration("7").unwrap(), Duration::from_secs(7));
        assert!(parse_duration("3 days").is_err());
        assert!(parse_duration("ms").is_err());
    }
}
