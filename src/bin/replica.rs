//! `replica NAME PORT REPLICAS_FILE [READ-REPAIR|HINTED-HANDOFF]`: runs one replica.

use std::net::IpAddr;
use std::process::ExitCode;

use clap::Parser;
use log::{LevelFilter, error};
use quorumkv::cluster::key::DEFAULT_MAX_KEY_BYTES;
use quorumkv::cluster::ring::load_cluster_spec;
use quorumkv::config::{Mode, NodeConfig, parse_duration};
use quorumkv::storage::wal::FsyncMode;
use simplelog::{ColorChoice, ConfigBuilder, TermLogger, TerminalMode};

/// One replica of a quorumkv cluster.
///
/// With no MODE both read repair and hinted handoff run; READ-REPAIR or
/// HINTED-HANDOFF keeps only that mechanism.
#[derive(Parser, Debug)]
#[command(version, about)]
struct Args {
    /// This replica's name in the cluster file.
    name: String,
    /// Port to listen on; must match the cluster file.
    port: u16,
    /// The cluster file: `name host port` a line, in ring order, and optional
    /// `partitioner byte-ordered|murmur3`, `rf N`, `vnodes N` lines (only
    /// the first epoch; not needed with --join).
    replicas_file: Option<String>,
    /// READ-REPAIR, HINTED-HANDOFF or NONE (default: both; anti-entropy runs in every mode).
    mode: Option<String>,
    /// Replication factor (default 3); a cluster file's `rf` line sets it for every replica.
    #[arg(long)]
    rf: Option<usize>,
    /// How long a coordinator waits for replicas (e.g. 2s, 500ms).
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    timeout: std::time::Duration,
    /// Hints older than this are dropped (e.g. 3h).
    #[arg(long, default_value = "3h", value_parser = parse_duration)]
    hint_window: std::time::Duration,
    /// Bytes of hinted values held per unreachable replica.
    #[arg(long, default_value_t = 128 << 20)]
    max_hint_bytes: usize,
    /// Hints replayed per second to a recovered replica.
    #[arg(long, default_value_t = 2000)]
    hint_rate: u32,
    /// Largest value accepted, in bytes (at most 32 MiB: a log record must stay
    /// well within what recovery accepts).
    #[arg(long, default_value_t = 1 << 20, value_parser = clap::value_parser!(u64).range(0..=32 << 20))]
    max_value_bytes: u64,
    /// The most keys one transaction or `mget` may name (1 to 1024).
    #[arg(long, default_value_t = quorumkv::txn::DEFAULT_TXN_KEYS as u64, value_parser = clap::value_parser!(u64).range(1..=quorumkv::txn::MAX_TXN_KEYS as u64))]
    max_txn_keys: u64,
    /// The most bytes of values (written and compared) one transaction may
    /// carry (a transaction must also fit in one frame, about
    /// --max-value-bytes plus a batch of the largest keys).
    #[arg(long, default_value_t = quorumkv::txn::DEFAULT_TXN_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=64 << 20))]
    max_txn_bytes: u64,
    /// Largest key accepted in a murmur3 cluster, in bytes (1 to 65536).
    #[arg(long, default_value_t = DEFAULT_MAX_KEY_BYTES as u64, value_parser = clap::value_parser!(u64).range(1..=65536))]
    max_key_bytes: u64,
    /// Client connections served at once.
    #[arg(long, default_value_t = 2048)]
    max_connections: usize,
    /// Interval between heartbeats to each peer.
    #[arg(long, default_value = "200ms", value_parser = parse_duration)]
    heartbeat: std::time::Duration,
    /// A peer silent this long is marked down.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    down_after: std::time::Duration,
    /// Peer writes stamped further than this ahead of our clock are refused.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    max_clock_offset: std::time::Duration,
    /// A new connection must send its first frame within this time.
    #[arg(long, default_value = "5s", value_parser = parse_duration)]
    first_frame_timeout: std::time::Duration,
    /// Folder for the write-ahead log and snapshots (default: data/NAME).
    #[arg(long)]
    data_dir: Option<std::path::PathBuf>,
    /// Keep everything in memory (the seed's behaviour): nothing survives a restart.
    #[arg(long, conflicts_with = "data_dir")]
    in_memory: bool,
    /// When a write counts as durable: always (fsync, group commit), batch (fsync every window), never.
    #[arg(long, default_value = "batch")]
    fsync: String,
    /// The batch mode's fsync window.
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    fsync_window: std::time::Duration,
    /// Take a snapshot (and truncate the log) when the log grows past this many bytes.
    #[arg(long, default_value_t = 64 << 20)]
    snapshot_bytes: u64,
    /// Test hook: append `key micros node` to this file for every write this replica acknowledges.
    #[arg(long, hide = true)]
    ack_log: Option<std::path::PathBuf>,
    /// Accept fault-injection requests (drop or delay messages to chosen peers, pause): for tests
    /// and for breaking a local cluster by hand. Never on a production cluster.
    #[arg(long)]
    enable_fault_injection: bool,
    /// Tests only: a transaction this replica coordinates kills the process
    /// before it sends its decision to the record (`record`) or its
    /// resolutions (`resolve`).
    #[arg(long, hide = true, value_parser = quorumkv::config::TxnCrashPoint::parse)]
    txn_crash_before: Option<quorumkv::config::TxnCrashPoint>,
    /// Bytes for a write-through cache of the keys this replica holds no
    /// copy of (seed 002's coordinator cache; 0: none). It answers ONE reads
    /// of hot keys without a network round trip, never older than this
    /// replica's own last acknowledged write of the key, but up to
    /// --coordinator-cache-ttl behind other coordinators' writes (even ALL's).
    #[arg(long, default_value_t = 0)]
    coordinator_cache_bytes: usize,
    /// How long a coordinator cache entry answers after it was stored or
    /// confirmed by a read.
    #[arg(long, default_value = "1s", value_parser = parse_duration)]
    coordinator_cache_ttl: std::time::Duration,
    /// With read repair: the share (0 to 1) of ONE reads answered from this
    /// replica's own copy that also ask the other replicas, to repair them
    /// (1: every one; QUORUM and ALL reads always repair; anti-entropy and
    /// hints repair the rest).
    #[arg(long, default_value_t = 1.0, value_parser = parse_chance)]
    read_repair_chance: f64,
    /// Also speak the Redis protocol (RESP2, and RESP3 after HELLO 3) on this
    /// port, so redis-cli, redis-benchmark and Redis client libraries work
    /// against the cluster.
    #[arg(long)]
    resp_port: Option<u16>,
    /// The consistency level every RESP connection starts at (ONE, QUORUM,
    /// ALL or SERIAL; a connection changes its own with `CONSISTENCY level`).
    #[arg(long, default_value = "QUORUM", value_parser = parse_level)]
    resp_consistency: quorumkv::cluster::consistency::Consistency,
    /// Tests only: the first send past this point (`record` or `resolve`;
    /// a recovery's or an abort's resolutions count too) stops the process
    /// (SIGSTOP); a SIGCONT lets it carry on.
    #[arg(long, hide = true, value_parser = quorumkv::config::TxnCrashPoint::parse)]
    txn_pause_before: Option<quorumkv::config::TxnCrashPoint>,
    /// How often a background anti-entropy pass compares this replica's data
    /// with the other replicas' and repairs what differs (0: never; the console's `repair` runs one now).
    #[arg(long, default_value = "10m", value_parser = parse_duration)]
    anti_entropy_interval: std::time::Duration,
    /// A transaction's intent held longer than this is settled by this
    /// replica: it asks the transaction's record for the decision (or
    /// aborts the transaction if none was made) and finishes it. Bounds how
    /// long a dead coordinator keeps keys held.
    #[arg(long, default_value = "2s", value_parser = parse_duration)]
    txn_timeout: std::time::Duration,
    /// The most MiB a second a join, decommission or removenode run by this
    /// replica copies (0: no limit), like Cassandra's stream_throughput_outbound.
    #[arg(long, default_value_t = 0)]
    stream_throughput: u64,
    /// Join a running cluster through the member at HOST:PORT: this replica
    /// gets tokens that restore balance, copies the data of its ranges, then
    /// serves them. Ignored once the data folder holds the cluster's metadata.
    #[arg(long, value_name = "HOST:PORT")]
    join: Option<String>,
    /// With --join: take no tokens, hold no data, only coordinate (a proxy).
    #[arg(long, requires = "join")]
    no_tokens: bool,
    /// With --join: the host other replicas reach this one at.
    #[arg(long, default_value = "127.0.0.1", requires = "join")]
    host: String,
    /// Address to listen on (default: this replica's host in the cluster file).
    #[arg(long)]
    bind: Option<IpAddr>,
    /// error, warn, info, debug or trace.
    #[arg(long, default_value = "info")]
    log_level: LevelFilter,
}

fn main() -> ExitCode {
    let args = Args::parse();
    let log_config = ConfigBuilder::new().set_target_level(LevelFilter::Off).set_thread_level(LevelFilter::Off).build();
    let _ = TermLogger::init(args.log_level, log_config, TerminalMode::Stderr, ColorChoice::Never);
    match start(args) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            error!("{e}");
            eprintln!("error: {e}");
            ExitCode::from(2)
        }
    }
}

/// Settings from the arguments (the parts that do not depend on the cluster file).
fn config(args: &Args, bind: IpAddr) -> quorumkv::Result<NodeConfig> {
    use quorumkv::Error;
    let mut cfg = NodeConfig::new(args.name.clone(), bind, args.port);
    cfg.mode = args.mode.as_deref().map(Mode::parse).transpose()?.unwrap_or(Mode::Both);
    cfg.request_timeout = args.timeout;
    cfg.hint_window = args.hint_window;
    cfg.anti_entropy_interval = args.anti_entropy_interval;
    cfg.txn_timeout = args.txn_timeout;
    cfg.stream_throughput = args.stream_throughput.saturating_mul(1 << 20);
    cfg.max_hint_bytes = args.max_hint_bytes;
    cfg.hint_rate = args.hint_rate;
    cfg.max_value_bytes = args.max_value_bytes as usize;
    cfg.max_key_bytes = args.max_key_bytes as usize;
    cfg.max_txn_keys = args.max_txn_keys as usize;
    cfg.max_txn_bytes = args.max_txn_bytes as usize;
    cfg.max_connections = args.max_connections;
    cfg.heartbeat_interval = args.heartbeat;
    cfg.down_after = args.down_after;
    cfg.max_clock_offset = args.max_clock_offset;
    cfg.first_frame_timeout = args.first_frame_timeout;
    cfg.fsync = FsyncMode::parse(&args.fsync, args.fsync_window).map_err(Error::Config)?;
    cfg.data_dir =
        if args.in_memory { None } else { Some(args.data_dir.clone().unwrap_or_else(|| std::path::Path::new("data").join(&args.name))) };
    cfg.snapshot_bytes = args.snapshot_bytes;
    cfg.ack_log = args.ack_log.clone();
    cfg.enable_fault_injection = args.enable_fault_injection;
    cfg.txn_crash = args.txn_crash_before;
    cfg.txn_pause = args.txn_pause_before;
    cfg.coordinator_cache_bytes = args.coordinator_cache_bytes;
    cfg.coordinator_cache_ttl = args.coordinator_cache_ttl;
    cfg.resp_port = args.resp_port;
    cfg.read_repair_chance = args.read_repair_chance;
    cfg.resp_consistency = args.resp_consistency;
    Ok(cfg)
}

fn parse_chance(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(p) if (0.0..=1.0).contains(&p) => Ok(p),
        _ => Err(format!("{s} is not a share from 0 to 1")),
    }
}

fn parse_level(s: &str) -> Result<quorumkv::cluster::consistency::Consistency, String> {
    quorumkv::cluster::consistency::Consistency::parse(s).ok_or_else(|| format!("{s} is not a level; ONE, QUORUM, ALL or SERIAL"))
}

/// Starts a replica that joins through the member at `seed`: the metadata it
/// joins at comes from that member (or from its data folder, once joined).
fn start_joining(mut args: Args, seed: String) -> quorumkv::Result<()> {
    use quorumkv::Error;
    use quorumkv::node::membership;
    // `replica NAME PORT --join H:P MODE`: the mode is the first positional left.
    if args.mode.is_none() && args.replicas_file.as_deref().is_some_and(|f| Mode::parse(f).is_ok()) {
        args.mode = args.replicas_file.take();
    }
    let bind = args.bind.unwrap_or(IpAddr::from([127, 0, 0, 1]));
    let cfg = config(&args, bind)?;
    if let Some(dir) = &cfg.data_dir
        && let Some(stored) = membership::load(dir)?
    {
        return quorumkv::net::server::run_stored(cfg, stored);
    }
    let (host, port) = seed
        .rsplit_once(':')
        .and_then(|(h, p)| p.parse::<u16>().ok().map(|p| (h.trim_start_matches('[').trim_end_matches(']').to_string(), p)))
        .ok_or_else(|| Error::Config(format!("--join {seed:?} is not HOST:PORT")))?;
    let mut client = quorumkv::client::Client::connect(&host, port, std::time::Duration::from_secs(3))?;
    client.set_timeout(Some(std::time::Duration::from_secs(30)))?;
    // The join names the cluster (its id, from status): a stray frame never adds a member.
    let cluster_id = client.status()?.cluster_id;
    let req = quorumkv::proto::JoinRequest {
        name: args.name.clone(),
        host: args.host.clone(),
        port: args.port.into(),
        proxy: args.no_tokens,
        cluster_id,
    };
    let stored = match client.request(quorumkv::proto::request::Body::Join(req))? {
        quorumkv::proto::response::Body::Metadata(m) => membership::Stored::from_proto(*m)?,
        quorumkv::proto::response::Body::Error(e) => return Err(Error::from_proto(e)),
        other => return Err(Error::Protocol(format!("{seed} answered the join with {other:?}"))),
    };
    if let Some(dir) = &cfg.data_dir {
        std::fs::create_dir_all(dir).map_err(|e| Error::Storage(format!("cannot create {}: {e}", dir.display())))?;
        quorumkv::storage::wal::check_partitioner(dir, stored.meta.partitioner)?;
        membership::store(dir, &stored)?;
    }
    quorumkv::net::server::run_stored(cfg, stored)
}

fn start(args: Args) -> quorumkv::Result<()> {
    use quorumkv::Error;
    if let Some(seed) = args.join.clone() {
        return start_joining(args, seed);
    }
    let Some(replicas_file) = args.replicas_file.clone() else {
        return Err(Error::Config("give the cluster file (or --join HOST:PORT to join a running cluster)".into()));
    };
    let spec = load_cluster_spec(&replicas_file)?;
    let nodes = &spec.nodes;
    let Some(me) = nodes.iter().find(|n| n.name == args.name) else {
        let names: Vec<&str> = nodes.iter().map(|n| n.name.as_str()).collect();
        return Err(Error::Config(format!("{} is not in {} (it lists {})", args.name, replicas_file, names.join(", "))));
    };
    if me.port != args.port {
        return Err(Error::Config(format!("port {} does not match {}'s port {} in {}", args.port, args.name, me.port, replicas_file)));
    }
    let bind = match args.bind {
        Some(ip) => ip,
        None => me.socket_addr()?.ip(),
    };
    let cfg = config(&args, bind)?;
    let rf = match (spec.rf, args.rf) {
        (Some(file), Some(flag)) if file != flag => {
            return Err(Error::Config(format!("--rf {flag} disagrees with `rf {file}` in {}; drop one", replicas_file)));
        }
        (file, flag) => file.or(flag).unwrap_or(3),
    };
    let meta = quorumkv::cluster::metadata::Metadata::initial(&spec, rf)?;
    quorumkv::net::server::run(cfg, meta)
}
