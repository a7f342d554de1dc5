//! Bad input: every replica of a cluster gets at least 100,000 mutated frames
//! from several connections at once, then must still serve correct requests,
//! must not have grown its memory without bound, and must have logged the bad
//! requests without flooding its log.
//!
//! Per replica, four workers run at once; each owns a long-lived connection
//! (three are client connections, one is a replica link that did the
//! handshake) on which it pipelines mutated but correctly framed requests while
//! a reader thread drains the replies. Each reply is checked against an oracle:
//! the test decodes the frame itself and runs the library's own validation
//! (`quorumkv::message`), so it knows whether the replica must refuse it
//! (`INVALID_REQUEST` with exactly the message validation gives, or
//! `malformed request: <decode error>`) or serve it (a reply of the request's
//! kind, or an error of another kind such as a timeout). Framing-level damage
//! that desynchronises a stream (truncations, wrong or huge length prefixes,
//! garbage handshakes) goes on short-lived connections that must end with the
//! replica closing them, never hanging.
//!
//! The flood runs against a byte-ordered cluster (keys "0" to "255") and a
//! murmur3 one (keys of 1 to `--max-key-bytes` bytes, here 300), with the same
//! frames: text, binary and non-UTF-8 keys, empty keys, keys just over the
//! limit and up to the frame cap, integers past 255, the seed's integer key
//! field, malformed `ReplicaDump` slot lists; the oracle takes each cluster's
//! rules (`Limits`). Since the oracle is the library's own validation, the
//! outcomes the issue fixes are also pinned case by case
//! (`the_new_fields_get_the_outcomes_the_issue_gives`).
//!
//! The mutations are drawn from a seeded generator: `QUORUMKV_BADINPUT_SEED`
//! (decimal or 0x-hex) replays a run; the seed is in every failure message.

mod common;

use std::io::{ErrorKind as IoKind, Write};
use std::net::{Shutdown, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant};

use common::{Cluster, slack, under_tsan, wait_for};
use prost::Message;
use quorumkv::cluster::consistency::Consistency::Quorum;
use quorumkv::cluster::key::Partitioner;
use quorumkv::coordinator::readbatch::MAX_BATCH;
use quorumkv::message::{Limits, validate_peer_request, validate_request};
use quorumkv::net::frame::{FrameError, FrameReader};
use quorumkv::proto::{self, request::Body as B, response::Body as R};

/// The replicas run with a small value limit, so oversize values are cheap to send.
const MAX_VALUE: usize = 8192;
/// The replicas' `--max-key-bytes` (murmur3 keys; small, so oversize keys are cheap to send).
const MAX_KEY: usize = 300;
const REPLICAS: usize = 3;
const WORKERS: usize = 4;
/// Frames each replica must receive. ThreadSanitizer makes every frame 10–20
/// times slower (and the cluster shares two CPUs), so under it the flood is
/// scaled down to keep the run bounded; `make test` always sends the full count.
fn frames_per_replica() -> u64 {
    if under_tsan() { 12_000 } else { 100_000 }
}
/// Between two pipelined batches (16 frames on average), a short-lived
/// (framing-damage) connection one time in this many…
const SHORT_ONE_IN: usize = 5;
/// …which makes about one short-lived connection per this many frames.
const SHORT_EVERY: u64 = 90;
const DEFAULT_SEED: u64 = 0xBAD_1A9E_5EED;

/// The replica's frame cap, by the replica's own rule.
fn max_frame() -> usize {
    let mut cfg = quorumkv::config::NodeConfig::new("x", "127.0.0.1".parse().unwrap(), 1);
    cfg.max_value_bytes = MAX_VALUE;
    cfg.max_key_bytes = MAX_KEY;
    cfg.max_frame_bytes()
}

fn seed() -> u64 {
    match std::env::var("QUORUMKV_BADINPUT_SEED") {
        Ok(s) => {
            let s = s.trim();
            let parsed = match s.strip_prefix("0x") {
                Some(hex) => u64::from_str_radix(hex, 16),
                None => s.parse(),
            };
            parsed.unwrap_or_else(|_| panic!("QUORUMKV_BADINPUT_SEED={s} is not a number"))
        }
        Err(_) => DEFAULT_SEED,
    }
}

/// splitmix64: small, deterministic, no dependency.
struct Rng {
    state: u64,
    /// A `display` that a mutation leaves valid goes through one time in this many
    /// (else it becomes a `status`): against a murmur3 cluster, whose replicas come
    /// to hold and differ in thousands of keys, each one costs every replica a pass
    /// over its store and a dump of the differing slots.
    display_one_in: usize,
}

impl Rng {
    fn new(seed: u64, stream: u64) -> Rng {
        let mut r = Rng { state: seed ^ stream.wrapping_mul(0xD1B5_4A32_D192_ED03), display_one_in: 1 };
        r.next();
        r
    }
    fn next(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
    fn chance(&mut self, one_in: usize) -> bool {
        self.below(one_in) == 0
    }
    fn pick<T: Copy>(&mut self, items: &[T]) -> T {
        items[self.below(items.len())]
    }
    /// Random bytes, between `min` and `max` of them.
    fn bytes(&mut self, min: usize, max: usize) -> Vec<u8> {
        let n = min + self.below(max - min + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
}

// ---------------------------------------------------------------------------
// Hand-encoded protobuf, for what prost will not encode (invalid UTF-8,
// unknown fields, wrong wire types).

fn put_varint(out: &mut Vec<u8>, mut v: u64) {
    while v >= 0x80 {
        out.push(v as u8 | 0x80);
        v >>= 7;
    }
    out.push(v as u8);
}

fn put_tag(out: &mut Vec<u8>, field: u32, wire: u8) {
    put_varint(out, (u64::from(field) << 3) | u64::from(wire));
}

fn put_uint(out: &mut Vec<u8>, field: u32, v: u64) {
    put_tag(out, field, 0);
    put_varint(out, v);
}

fn put_bytes(out: &mut Vec<u8>, field: u32, bytes: &[u8]) {
    put_tag(out, field, 2);
    put_varint(out, bytes.len() as u64);
    out.extend_from_slice(bytes);
}

/// A request `{id, <field>: <message>}` around an already encoded message.
fn request_with(id: u64, field: u32, message: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    put_uint(&mut out, 1, id);
    put_bytes(&mut out, field, message);
    out
}

fn invalid_utf8(rng: &mut Rng) -> Vec<u8> {
    let bad: &[&[u8]] = &[
        b"\xff",
        b"\xc3",             // a two-byte sequence cut short
        b"\xe2\x82",         // a three-byte sequence cut short
        b"\xed\xa0\x80",     // a UTF-16 surrogate
        b"\xc0\x80",         // an overlong NUL
        b"\xf4\x90\x80\x80", // above U+10FFFF
        b"\xf8\x88\x80\x80\x80",
        b"\x80\x80",
    ];
    let mut s = b"abc".repeat(rng.below(4));
    s.extend_from_slice(rng.pick(bad));
    s.extend(b"xyz".repeat(rng.below(4)));
    s
}

// ---------------------------------------------------------------------------
// Requests to mutate.

/// A value: text, now and then with bytes that are not UTF-8 (values are bytes).
fn value(rng: &mut Rng) -> Vec<u8> {
    let parts: [&[u8]; 9] = [b"a", b"bc", "é".as_bytes(), "€".as_bytes(), "😀".as_bytes(), b"z", b"0", b"\xff", b"\x00"];
    (0..rng.below(24)).flat_map(|_| rng.pick(&parts).iter().copied()).collect()
}

/// A key the replicas may well hold: mostly an integer 0–255 in decimal (a key of
/// either cluster), otherwise one of a few hundred strings, some not UTF-8 (keys of
/// a murmur3 cluster only). Few distinct keys, so the stores stay small however
/// many writes are served.
fn base_key(rng: &mut Rng) -> Vec<u8> {
    match rng.below(10) {
        0..=6 => rng.below(256).to_string().into_bytes(),
        7 => format!("user:{}", rng.below(100)).into_bytes(),
        8 => format!("ключ-{}", rng.below(100)).into_bytes(),
        _ => vec![0xff, rng.below(100) as u8, 0x00],
    }
}

/// Any key: those of [`base_key`], and those one cluster or both refuse — integers
/// past 255, empty keys, keys over `--max-key-bytes` (mostly just over, now and then
/// up to the frame cap) — and keys of exactly the limit.
fn any_key(rng: &mut Rng) -> Vec<u8> {
    match rng.below(100) {
        0..=49 => base_key(rng),
        50..=59 => {
            let any = 256 + rng.below(1 << 20) as u32;
            rng.pick(&[256, 257, 1000, 65_536, 1 << 31, u32::MAX - 1, u32::MAX, any]).to_string().into_bytes()
        }
        60..=64 => invalid_utf8(rng),
        65..=74 => Vec::new(),
        75..=89 => {
            let mut k = rng.bytes(MAX_KEY + 1, MAX_KEY + 64);
            k[0] = b'K';
            k
        }
        90..=95 => {
            let mut k = vec![b'M'; MAX_KEY];
            k[MAX_KEY - 1] = b'0' + rng.below(8) as u8;
            k
        }
        96..=98 => vec![b'H'; MAX_KEY + 1 + rng.below(4 * MAX_KEY)],
        _ => vec![b'H'; MAX_KEY + 1 + rng.below(max_frame() - MAX_KEY - 1024)],
    }
}

fn version(rng: &mut Rng) -> proto::Version {
    // Small timestamps: a mutated write that is applied stays older than anything written later.
    proto::Version { micros: 1 + rng.below(1000) as u64, node: rng.below(4) as u32, tombstone: rng.chance(4), value: value(rng) }
}

fn consistency(rng: &mut Rng) -> i32 {
    rng.below(4) as i32
}

/// A well-formed client request (a valid level and value; a key of a murmur3
/// cluster, and mostly of a byte-ordered one too).
fn client_base(rng: &mut Rng) -> proto::Request {
    let key = base_key(rng);
    // Weighted towards the kinds that are cheap when a mutation leaves them valid:
    // the ones that ask other replicas (inspect, display above all) cost the most.
    let body = match rng.below(20) {
        0..=2 => B::Ping(proto::Ping {}),
        3..=6 => B::Get(proto::Get { key, consistency: consistency(rng) }),
        7..=10 => B::Put(proto::Put { key, value: value(rng), consistency: consistency(rng), condition: None }),
        11..=12 => B::Delete(proto::Delete { key, consistency: consistency(rng), condition: None }),
        13..=14 => B::Status(proto::StatusRequest {}),
        15 => B::Inspect(proto::InspectRequest { key }),
        16 if rng.chance(rng.display_one_in) => {
            B::Display(proto::DisplayRequest { max_value_len: rng.below(2000) as u32, max_keys: rng.below(2000) as u32 })
        }
        16 => B::Status(proto::StatusRequest {}),
        // Now and then a repair: a full pass is cheap on the flood's few keys.
        17 if rng.chance(4) => B::Repair(proto::RepairRequest { start: rng.chance(8) }),
        // Transactions and read-atomic reads: a few keys, conditions and writes of every kind.
        17 if rng.chance(2) => B::Txn(proto::TxnRequest {
            conditions: (0..rng.below(3))
                .map(|_| proto::TxnCondition { key: base_key(rng), equals: value(rng), absent: rng.chance(3) })
                .collect(),
            writes: (0..rng.pick(&[0, 1, 2, 3, 65])).map(|_| txn_item(rng)).collect(),
        }),
        17 => B::Mget(proto::MGetRequest { keys: (0..rng.pick(&[0, 1, 2, 5, 65])).map(|_| base_key(rng)).collect() }),
        _ => B::Fault(proto::FaultRequest {
            action: rng.below(7) as i32,
            peers: vec!["r1".into()],
            direction: rng.below(3) as i32,
            delay_ms: 10,
            pause_ms: 10,
            clock_offset_ms: rng.next() as i64,
        }),
    };
    proto::Request { id: rng.next() >> rng.below(64), body: Some(body) }
}

/// A well-formed replica-to-replica request.
fn peer_base(rng: &mut Rng) -> proto::Request {
    let key = base_key(rng);
    let body = match rng.below(16) {
        0 => B::Ping(proto::Ping {}),
        1 | 2 => B::ReplicaRead(proto::ReplicaRead { key }),
        3 | 4 => B::ReplicaWrite(proto::ReplicaWrite { key, version: Some(version(rng)), epoch: 0 }),
        5 => B::Heartbeat(proto::Heartbeat { from: "r1".into(), micros: rng.next() >> rng.below(64), epoch: rng.next() >> rng.below(64) }),
        6 => B::ReplicaDump(proto::ReplicaDump {
            max_value_len: rng.below(64) as u32,
            slots: (0..rng.below(3)).map(|_| rng.below(300) as u32).collect(),
            max_keys: rng.below(100) as u32,
            after: if rng.chance(3) { base_key(rng) } else { Vec::new() },
            digest_slots: (0..rng.below(3)).map(|_| rng.below(300) as u32).collect(),
        }),
        7 if rng.chance(2) => paxos_request(rng, key),
        8 => B::ReplicaTree(proto::ReplicaTree { slot: rng.below(300) as u32, leaves: rng.chance(2) }),
        9 => B::ReplicaCells(proto::ReplicaCells {
            slot: rng.below(300) as u32,
            range: rng.below(100) as u32,
            leaves: rng.next() >> rng.below(64),
            after: if rng.chance(3) { base_key(rng) } else { Vec::new() },
        }),
        10 => B::ReplicaApply(proto::ReplicaApply {
            cells: (0..rng.below(4))
                .map(|_| proto::KeyVersion {
                    key: base_key(rng),
                    version: if rng.chance(10) { None } else { Some(version(rng)) },
                    truncated: false,
                })
                .collect(),
        }),
        // Stretches: none, a few, an odd count of bounds, or past the limit.
        11 => B::ReplicaStream(proto::ReplicaStream {
            slot: rng.below(300) as u32,
            lo: (rng.next() >> rng.below(64)) as i64,
            hi: rng.next() as i64,
            after: if rng.chance(3) { base_key(rng) } else { Vec::new() },
            more: (0..rng.pick(&[0, 1, 2, 6, 2048, 2049])).map(|_| rng.next() as i64).collect(),
            packed: rng.chance(2),
        }),
        // Acceptor states of stretches: none, an odd count of bounds, or past the limit.
        12 => B::ReplicaPaxosStates(proto::ReplicaPaxosStates {
            ranges: (0..rng.pick(&[0, 1, 2, 4, 2048, 2050])).map(|_| rng.next() as i64).collect(),
            after: if rng.chance(3) { base_key(rng) } else { Vec::new() },
        }),
        // States to merge: keys, ballots and proposals as Paxos requests carry them.
        13 => B::ReplicaPaxosLoad(proto::ReplicaPaxosLoad {
            states: (0..rng.pick(&[0, 1, 3, 1025]))
                .map(|_| proto::PaxosKeyState {
                    key: base_key(rng),
                    promised: ballot(rng),
                    accepted: if rng.chance(2) { paxos_proposal(rng) } else { None },
                    committed: ballot(rng),
                })
                .collect(),
        }),
        // A transaction's messages: prepares, record requests, resolutions, reads of intents.
        14 => match rng.below(4) {
            0 => B::TxnPrepare(proto::TxnPrepare {
                txn: ballot(rng),
                anchor: base_key(rng),
                items: (0..rng.pick(&[0, 1, 2, 65])).map(|_| txn_item(rng)).collect(),
                epoch: 0,
            }),
            1 => B::TxnRecord(proto::TxnRecordRequest {
                txn: ballot(rng),
                op: rng.below(6) as u32,
                ballot: ballot(rng),
                decision: if rng.chance(5) { None } else { Some(proto::TxnDecision { committed: rng.chance(2), ts: ballot(rng) }) },
            }),
            2 => B::TxnResolve(proto::TxnResolve {
                txn: ballot(rng),
                decision: if rng.chance(5) { None } else { Some(proto::TxnDecision { committed: rng.chance(2), ts: ballot(rng) }) },
                items: (0..rng.pick(&[0, 1, 2, 65])).map(|_| txn_item(rng)).collect(),
            }),
            _ => B::TxnRead(proto::TxnRead { keys: (0..rng.pick(&[0, 1, 2, 65])).map(|_| base_key(rng)).collect(), at: ballot(rng) }),
        },
        _ => B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: (0..1 + rng.below(20)).map(|_| base_key(rng)).collect() }),
    };
    proto::Request { id: rng.next() >> rng.below(64), body: Some(body) }
}

/// A ballot: small (so a mutated promise never blocks later ones for long), now and then 0 or none.
/// A transaction item: compare (0), put (1) or delete (2), now and then an
/// unknown kind or a value where none belongs.
fn txn_item(rng: &mut Rng) -> proto::TxnItem {
    let write = rng.pick(&[0, 1, 1, 2, 3]);
    let value = if write == 1 || rng.chance(10) { value(rng) } else { Vec::new() };
    proto::TxnItem { key: base_key(rng), write, value }
}

fn ballot(rng: &mut Rng) -> Option<proto::Ballot> {
    match rng.below(20) {
        0 => None,
        1 => Some(proto::Ballot { micros: 0, node: 1 }),
        _ => Some(proto::Ballot { micros: 1 + rng.below(1000) as u64, node: rng.below(4) as u32 }),
    }
}

/// A Paxos proposal: a version and an origin, now and then missing one, or the origin above the ballot.
fn paxos_proposal(rng: &mut Rng) -> Option<proto::PaxosProposal> {
    let version = if rng.chance(15) { None } else { Some(version(rng)) };
    let origin = match rng.below(6) {
        0 => ballot(rng),
        _ => version.as_ref().map(|v| proto::Ballot { micros: v.micros, node: v.node }),
    };
    if rng.chance(20) { None } else { Some(proto::PaxosProposal { version, origin }) }
}

/// A Paxos request (prepare, propose or commit) for `key`.
fn paxos_request(rng: &mut Rng, key: Vec<u8>) -> B {
    match rng.below(3) {
        // Now and then about the cluster metadata register (its key is ignored).
        0 => {
            B::PaxosPrepare(proto::PaxosPrepare { key, ballot: ballot(rng), cluster: rng.chance(8), epoch: [0, 1, u64::MAX][rng.below(3)] })
        }
        1 => B::PaxosPropose(proto::PaxosPropose {
            key,
            proposal: paxos_proposal(rng),
            cluster: rng.chance(8),
            epoch: [0, 1, u64::MAX][rng.below(3)],
        }),
        _ => B::PaxosCommit(proto::PaxosCommit {
            key,
            proposal: paxos_proposal(rng),
            cluster: rng.chance(8),
            epoch: [0, 1, u64::MAX][rng.below(3)],
        }),
    }
}

/// The keys of a huge read batch: mostly just over the limit, now and then up to
/// 20,000 (about 40 KB of frame); keys below `range`, some past 255 when it allows.
fn batch_keys(rng: &mut Rng, range: u32) -> Vec<Vec<u8>> {
    let n = match rng.below(40) {
        0 => 20_000,
        1..=4 => 1 + rng.below(5000),
        5..=8 => MAX_BATCH,
        _ => MAX_BATCH + 1 + rng.below(64),
    };
    let step = 1 + rng.below(7) as u32;
    (0..n as u32).map(|i| ((i * step) % range).to_string().into_bytes()).collect()
}

fn hello(ring: &quorumkv::cluster::ring::Ring, name: &str) -> proto::PeerHello {
    proto::PeerHello {
        name: name.into(),
        ring_fingerprint: ring.fingerprint(),
        ring_description: ring.describe(),
        epoch: ring.epoch(),
        cluster_id: quorumkv::cluster::metadata::Metadata::from_ring(ring, 16).cluster_id,
    }
}

fn flip_bits(rng: &mut Rng, body: &mut [u8]) {
    if body.is_empty() {
        return;
    }
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(body.len());
        body[i] ^= 1 << rng.below(8);
    }
}

fn mutate_bytes(rng: &mut Rng, body: &mut Vec<u8>) {
    for _ in 0..1 + rng.below(3) {
        let i = rng.below(body.len() + 1);
        match rng.below(6) {
            0 if i < body.len() => body[i] = rng.next() as u8,
            1 => body.insert(i, rng.next() as u8),
            2 if i < body.len() => {
                body.remove(i);
            }
            3 => body.truncate(i),
            4 if !body.is_empty() => {
                let j = rng.below(body.len());
                let (a, b) = (i.min(j), i.max(j));
                let chunk = body[a..b].to_vec();
                body.splice(i..i, chunk);
            }
            _ => body.extend(rng.bytes(1, 8)),
        }
    }
}

/// Body of one request that arrives on a client connection: mutated, crafted invalid, or of the wrong kind.
fn client_frame(rng: &mut Rng, ring: &quorumkv::cluster::ring::Ring) -> Vec<u8> {
    let id = rng.next() >> rng.below(64);
    match rng.below(100) {
        // Flipped bits in a valid request of any kind.
        0..=39 => {
            let mut body = if rng.chance(5) { peer_base(rng) } else { client_base(rng) }.encode_to_vec();
            flip_bits(rng, &mut body);
            body
        }
        // Bytes replaced, inserted, removed, duplicated; the request cut short.
        40..=49 => {
            let mut body = client_base(rng).encode_to_vec();
            mutate_bytes(rng, &mut body);
            body
        }
        // Keys one cluster or both refuse: integers past 255 (a murmur3 cluster takes them),
        // strings and bytes that are not UTF-8 (a byte-ordered cluster refuses them), empty
        // keys, keys over --max-key-bytes up to the frame cap.
        50..=56 => {
            let key = any_key(rng);
            let body = match rng.below(4) {
                0 => B::Get(proto::Get { key, consistency: consistency(rng) }),
                1 => B::Put(proto::Put { key, value: value(rng), consistency: consistency(rng), condition: None }),
                2 => B::Delete(proto::Delete { key, consistency: consistency(rng), condition: None }),
                _ => B::Inspect(proto::InspectRequest { key }),
            };
            proto::Request { id, body: Some(body) }.encode_to_vec()
        }
        // Consistency levels that do not exist.
        57..=63 => {
            let any = 4 + rng.below(1 << 30) as i32;
            let c = rng.pick(&[4, 5, 7, 100, -1, -2, i32::MIN, i32::MAX, any]);
            let key = rng.below(256).to_string().into_bytes();
            let body = match rng.below(3) {
                0 => B::Get(proto::Get { key, consistency: c }),
                1 => B::Put(proto::Put { key, value: value(rng), consistency: c, condition: None }),
                _ => B::Delete(proto::Delete { key, consistency: c, condition: None }),
            };
            proto::Request { id, body: Some(body) }.encode_to_vec()
        }
        // Values above the replica's limit (mostly just above; some up to the frame cap).
        64..=68 => {
            let extra = if rng.chance(20) { rng.below(max_frame() - MAX_VALUE - 64) } else { rng.below(2000) };
            let put = proto::Put {
                key: rng.below(256).to_string().into_bytes(),
                value: vec![b'v'; MAX_VALUE + 1 + extra],
                consistency: consistency(rng),
                condition: None,
            };
            proto::Request { id, body: Some(B::Put(put)) }.encode_to_vec()
        }
        // Bytes that are not UTF-8: refused in every string field a request has (names),
        // taken in values (by either cluster) and keys (by a murmur3 cluster).
        69..=74 => {
            let bad = invalid_utf8(rng);
            let mut m = Vec::new();
            match rng.below(9) {
                0 => {
                    put_bytes(&mut m, 4, &base_key(rng));
                    put_bytes(&mut m, 2, &bad);
                    put_uint(&mut m, 3, 2);
                    request_with(id, 4, &m) // Put.value: a write like any other
                }
                1 => {
                    put_bytes(&mut m, 4, &bad);
                    put_bytes(&mut m, 2, b"v");
                    put_uint(&mut m, 3, 1);
                    request_with(id, 4, &m) // Put.key
                }
                2 => {
                    put_bytes(&mut m, 3, &bad);
                    put_uint(&mut m, 2, 2);
                    request_with(id, 3, &m) // Get.key
                }
                3 => {
                    // The seed's Put: the key an integer in field 1, now reserved (so no key at all).
                    put_uint(&mut m, 1, rng.below(256) as u64);
                    put_bytes(&mut m, 2, &bad);
                    put_uint(&mut m, 3, 2);
                    request_with(id, 4, &m)
                }
                4 => {
                    put_bytes(&mut m, 1, &bad);
                    request_with(id, 23, &m) // Heartbeat.from
                }
                5 => {
                    put_bytes(&mut m, rng.pick(&[1, 3]), &bad);
                    request_with(id, 20, &m) // PeerHello.name / ring_description
                }
                6 => {
                    let mut v = Vec::new();
                    put_uint(&mut v, 1, 5);
                    put_bytes(&mut v, 4, &bad);
                    put_bytes(&mut m, 3, &bad);
                    put_bytes(&mut m, 2, &v);
                    request_with(id, 22, &m) // ReplicaWrite.key and .version.value (a replica request on a client connection)
                }
                7 => {
                    put_bytes(&mut m, 2, &bad);
                    request_with(id, 9, &m) // FaultRequest.peers
                }
                _ => {
                    let mut h = Vec::new();
                    put_bytes(&mut h, 1, b"r1");
                    put_uint(&mut h, 2, ring.fingerprint());
                    put_bytes(&mut h, 3, &bad);
                    request_with(id, 20, &h)
                }
            }
        }
        // Fields the schema does not have: unknown oneof tags (wire types good and bad),
        // field number 0, a known field with the wrong wire type.
        75..=80 => {
            let mut out = Vec::new();
            put_uint(&mut out, 1, id);
            let any = 26 + rng.below(1 << 20) as u32;
            let field = rng.pick(&[10, 11, 15, 19, 26, 27, 99, 1000, 536_870_911, any]);
            match rng.below(7) {
                0 => put_uint(&mut out, field, rng.next()),
                1 => put_bytes(&mut out, field, &rng.bytes(0, 40)),
                2 => {
                    put_tag(&mut out, field, 5);
                    out.extend(rng.bytes(4, 4));
                }
                3 => {
                    put_tag(&mut out, field, 1);
                    out.extend(rng.bytes(8, 8));
                }
                4 => {
                    put_tag(&mut out, field, rng.pick(&[3, 4, 6, 7]));
                    out.extend(rng.bytes(0, 6));
                }
                5 => put_uint(&mut out, 0, 1),
                _ => {
                    // The id as bytes; a Get or Put as garbage.
                    let field = rng.pick(&[1, 3, 4]);
                    put_bytes(&mut out, field, &rng.bytes(0, 6))
                }
            }
            if rng.chance(3) {
                // A known body after the unknown field.
                out.extend(client_base(rng).encode_to_vec());
            }
            out
        }
        // Valid requests of the wrong kind: replica-to-replica requests and a second PeerHello on a client connection.
        81..=88 => {
            let body = match rng.below(8) {
                6 => {
                    let key = rng.below(256).to_string().into_bytes();
                    paxos_request(rng, key)
                }
                0 => B::ReplicaWrite(proto::ReplicaWrite {
                    key: rng.below(256).to_string().into_bytes(),
                    version: Some(version(rng)),
                    epoch: 0,
                }),
                1 => B::ReplicaRead(proto::ReplicaRead { key: rng.below(300).to_string().into_bytes() }),
                2 => B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: batch_keys(rng, 300) }),
                3 => B::Heartbeat(proto::Heartbeat { from: "r1".into(), micros: rng.next() >> rng.below(64), epoch: 1 }),
                4 => B::ReplicaDump(proto::ReplicaDump {
                    max_value_len: u32::MAX,
                    slots: vec![],
                    max_keys: u32::MAX,
                    after: Vec::new(),
                    digest_slots: Vec::new(),
                }),
                _ => B::Hello(hello(ring, rng.pick(&["r0", "r1", "r2", "r9"]))),
            };
            proto::Request { id, body: Some(body) }.encode_to_vec()
        }
        // A response sent as a request.
        89..=93 => response(rng).encode_to_vec(),
        // Zero-length frames.
        94..=96 => Vec::new(),
        // Random bytes.
        _ => rng.bytes(1, 200),
    }
}

fn response(rng: &mut Rng) -> proto::Response {
    let body = match rng.below(10) {
        0 => R::Error(proto::Error { kind: rng.below(9) as i32, message: "boom".into() }),
        1 => R::Pong(proto::Pong { name: "r0".into() }),
        2 => R::Get(proto::GetResult { value: Some(value(rng)), version: Some(version(rng)) }),
        3 => R::Write(proto::WriteResult { micros: rng.next(), node: 1, acks: 2, ..Default::default() }),
        4 => R::Hello(proto::HelloAck { name: "r1".into(), epoch: 1 }),
        5 => R::ReplicaRead(proto::ReadResult { version: Some(version(rng)) }),
        6 => R::ReplicaWrite(proto::WriteAck { applied: rng.below(2) == 0, held_micros: rng.next(), held_node: rng.next() as u32 }),
        7 => R::ReplicaReadBatch(proto::ReadBatchResult { results: vec![proto::ReadResult { version: Some(version(rng)) }; 3] }),
        8 => R::Heartbeat(proto::HeartbeatAck { name: "r2".into(), storage: Some(proto::StorageStats::default()), epoch: 1 }),
        _ => R::Inspect(proto::InspectResult { key: b"3".to_vec(), replicas: vec![proto::InspectEntry::default()] }),
    };
    proto::Response { id: rng.next(), body: Some(body) }
}

/// Body of one request that arrives on a replica link.
fn peer_frame(rng: &mut Rng, ring: &quorumkv::cluster::ring::Ring) -> Vec<u8> {
    let id = rng.next() >> rng.below(64);
    let key = base_key(rng);
    let body = match rng.below(100) {
        0..=41 => {
            let mut body = peer_base(rng).encode_to_vec();
            flip_bits(rng, &mut body);
            return body;
        }
        42..=51 => {
            let mut body = peer_base(rng).encode_to_vec();
            mutate_bytes(rng, &mut body);
            return body;
        }
        52..=56 => B::ReplicaRead(proto::ReplicaRead { key: any_key(rng) }),
        77..=79 => {
            // Paxos: any key, a value past the limit, or a ballot far ahead of the replica's clock.
            let key = any_key(rng);
            let key_len = key.len();
            let mut body = paxos_request(rng, key);
            if let B::PaxosPropose(proto::PaxosPropose { proposal: Some(p), .. })
            | B::PaxosCommit(proto::PaxosCommit { proposal: Some(p), .. }) = &mut body
                && let Some(v) = &mut p.version
            {
                match rng.below(3) {
                    // Within the frame limit (a frame past it is refused for its size, not its value).
                    0 if key_len + MAX_VALUE + 4096 < max_frame() => {
                        (v.tombstone, v.value) = (false, vec![b'w'; MAX_VALUE + 1 + rng.below(3000)])
                    }
                    1 => v.micros = rng.pick(&[u64::MAX, 1 << 62]),
                    _ => {}
                }
            }
            if let B::PaxosPrepare(proto::PaxosPrepare { ballot: Some(b), .. }) = &mut body
                && rng.chance(2)
            {
                b.micros = rng.pick(&[u64::MAX, 1 << 62]);
            }
            body
        }
        // Any epoch: an old one is refused as stale, a future one makes the replica ask the voters.
        57..=61 => {
            B::ReplicaWrite(proto::ReplicaWrite { key: any_key(rng), version: Some(version(rng)), epoch: [0, 1, u64::MAX][rng.below(3)] })
        }
        62..=63 => B::ReplicaWrite(proto::ReplicaWrite { key, version: None, epoch: 0 }),
        64..=67 => return dump_with_bad_slots(rng, id),
        68..=71 => {
            let mut v = version(rng);
            v.tombstone = false;
            v.value = vec![b'w'; MAX_VALUE + 1 + rng.below(3000)];
            B::ReplicaWrite(proto::ReplicaWrite { key, version: Some(v), epoch: 0 })
        }
        72..=74 => {
            // Stamped far ahead of the replica's clock.
            let mut v = version(rng);
            v.micros = rng.pick(&[u64::MAX, u64::MAX / 2, 1 << 62]);
            B::ReplicaWrite(proto::ReplicaWrite { key, version: Some(v), epoch: 0 })
        }
        75..=76 => {
            let mut keys = batch_keys(rng, 256);
            if keys.len() <= MAX_BATCH {
                keys.resize(MAX_BATCH + 1 + rng.below(8), b"7".to_vec());
            }
            B::ReplicaReadBatch(proto::ReplicaReadBatch { keys })
        }
        80..=81 => B::ReplicaReadBatch(proto::ReplicaReadBatch {
            keys: vec![b"1".to_vec(), base_key(rng), any_key(rng), rng.pick(&[256, u32::MAX]).to_string().into_bytes()],
        }),
        82..=85 => return client_base(rng).encode_to_vec(),
        86..=87 => B::Hello(hello(ring, "r1")),
        88..=91 => {
            let mut m = Vec::new();
            put_bytes(&mut m, 1, &invalid_utf8(rng));
            return request_with(id, 23, &m);
        }
        92..=94 => return response(rng).encode_to_vec(),
        95..=96 => return Vec::new(),
        _ => return rng.bytes(1, 200),
    };
    proto::Request { id, body: Some(body) }.encode_to_vec()
}

/// A `ReplicaDump` whose slots list is malformed or merely odd: slots past 255,
/// more slots than there are (up to 20,000), every slot (and some twice), the list
/// unpacked (one field per slot, which protobuf allows), a packed list cut in the
/// middle of a number, the list with the wrong wire type.
fn dump_with_bad_slots(rng: &mut Rng, id: u64) -> Vec<u8> {
    let (max_value_len, max_keys) = (rng.below(70) as u32, rng.pick(&[0, 1, 100, u32::MAX]));
    let dump = |slots: Vec<u32>| proto::Request {
        id,
        body: Some(B::ReplicaDump(proto::ReplicaDump { max_value_len, slots, max_keys, after: Vec::new(), digest_slots: Vec::new() })),
    };
    match rng.below(8) {
        0 => {
            let mut slots: Vec<u32> = (0..rng.below(5)).map(|_| rng.below(256) as u32).collect();
            let any = 256 + rng.below(1 << 24) as u32;
            slots.insert(rng.below(slots.len() + 1), rng.pick(&[256, 300, 65_535, u32::MAX, any]));
            dump(slots).encode_to_vec()
        }
        1 => dump((0..257 + rng.below(2000)).map(|i| i as u32 % 256).collect()).encode_to_vec(),
        2 => dump(vec![7; 20_000]).encode_to_vec(),
        3 => dump((0..256).chain(0..rng.below(4) as u32).collect()).encode_to_vec(),
        4 => {
            let mut m = Vec::new();
            for _ in 0..1 + rng.below(6) {
                put_uint(&mut m, 2, rng.pick(&[0, 5, 255, 256, 1 << 32, u64::MAX]));
            }
            put_uint(&mut m, 3, 10);
            request_with(id, 24, &m)
        }
        5 => {
            let mut packed = Vec::new();
            for _ in 0..rng.below(4) {
                put_varint(&mut packed, rng.below(256) as u64);
            }
            packed.push(0x80 | rng.below(128) as u8); // a varint that never ends
            let mut m = Vec::new();
            put_bytes(&mut m, 2, &packed);
            request_with(id, 24, &m)
        }
        6 => {
            let mut m = Vec::new();
            put_tag(&mut m, 2, rng.pick(&[1, 5]));
            m.extend(rng.bytes(8, 8));
            request_with(id, 24, &m)
        }
        _ => {
            // A packed list of numbers past u32 (protobuf truncates them to 32 bits).
            let mut packed = Vec::new();
            for _ in 0..1 + rng.below(4) {
                put_varint(&mut packed, rng.pick(&[1 << 32, (1 << 32) + 5, u64::MAX]));
            }
            let mut m = Vec::new();
            put_bytes(&mut m, 2, &packed);
            request_with(id, 24, &m)
        }
    }
}

fn framed(body: &[u8]) -> Vec<u8> {
    let mut v = (body.len() as u32).to_be_bytes().to_vec();
    v.extend_from_slice(body);
    v
}

// ---------------------------------------------------------------------------
// The oracle.

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum Role {
    Client,
    Peer,
}

/// What the replica must answer to one well-framed request.
#[derive(Debug)]
enum Want {
    /// `INVALID_REQUEST` with exactly this message.
    Refused(String),
    /// `INVALID_REQUEST` with some message (fault requests: fault injection is off).
    RefusedAny,
    /// A reply of the request's kind, or an error of another kind (unavailable, timeout…);
    /// a replica write may also be refused for its clock.
    Served(B),
}

struct Expect {
    id: u64,
    want: Want,
    frame: Vec<u8>,
}

fn expect(role: Role, body: &[u8], limits: &Limits) -> Expect {
    let (id, want) = match proto::Request::decode(body) {
        Err(e) => (0, Want::Refused(format!("malformed request: {e}"))),
        Ok(req) => {
            let checked = match role {
                Role::Client => validate_request(&req, limits),
                Role::Peer => validate_peer_request(&req, limits),
            };
            let want = match (checked, req.body) {
                (Err(e), _) => Want::Refused(e.message().to_string()),
                (Ok(()), Some(B::Fault(_))) => Want::RefusedAny,
                (Ok(()), Some(b)) => Want::Served(b),
                (Ok(()), None) => unreachable!("validation refuses an empty request"),
            };
            (req.id, want)
        }
    };
    Expect { id, want, frame: body.to_vec() }
}

fn served_kind(req: &B, resp: &R) -> bool {
    match (req, resp) {
        (B::Ping(_), R::Pong(_))
        | (B::Get(_), R::Get(_))
        | (B::Put(_) | B::Delete(_), R::Write(_))
        | (B::Status(_), R::Status(_))
        | (B::Inspect(_), R::Inspect(_))
        | (B::Display(_), R::Display(_))
        | (B::ReplicaRead(_), R::ReplicaRead(_))
        | (B::ReplicaWrite(_), R::ReplicaWrite(_))
        | (B::Heartbeat(_), R::Heartbeat(_))
        | (B::ReplicaDump(_), R::ReplicaDump(_))
        | (B::Token(_), R::Token(_))
        | (B::Scan(_), R::Scan(_))
        | (B::ReplicaScan(_), R::ReplicaScan(_))
        | (B::PaxosPrepare(_), R::PaxosPromise(_) | R::PaxosRejected(_))
        | (B::PaxosPropose(_), R::PaxosAccepted(_) | R::PaxosRejected(_))
        | (B::PaxosCommit(_), R::PaxosCommitted(_))
        | (B::Repair(_), R::Repair(_))
        | (B::ReplicaTree(_), R::ReplicaTree(_))
        | (B::ReplicaCells(_), R::ReplicaCells(_))
        | (B::ReplicaApply(_), R::ReplicaApply(_))
        | (B::Metadata(_), R::Metadata(_))
        | (B::Membership(_), R::Membership(_))
        | (B::ReplicaStream(_), R::ReplicaCells(_))
        | (B::ReplicaPaxosStates(_), R::ReplicaPaxosStates(_))
        | (B::ReplicaPaxosLoad(_), R::ReplicaApply(_))
        | (B::Join(_), R::Metadata(_))
        | (B::Txn(_), R::Txn(_))
        | (B::TxnPrepare(_), R::TxnVotes(_))
        | (B::TxnRecord(_), R::TxnRecord(_))
        | (B::TxnResolve(_), R::TxnResolved(_)) => true,
        (B::Mget(m), R::Mget(r)) => m.keys.len() == r.values.len(),
        (B::TxnRead(q), R::TxnRead(r)) => q.keys.len() == r.entries.len(),
        (B::ReplicaReadBatch(b), R::ReplicaReadBatch(r)) => b.keys.len() == r.results.len(),
        _ => false,
    }
}

fn check(e: &Expect, resp: &proto::Response) -> Result<(), String> {
    let invalid = proto::ErrorKind::InvalidRequest as i32;
    let ok = resp.id == e.id
        && match (&e.want, &resp.body) {
            (Want::Refused(m), Some(R::Error(err))) => err.kind == invalid && &err.message == m,
            (Want::RefusedAny, Some(R::Error(err))) => err.kind == invalid && err.message.len() > 10,
            (Want::Served(B::ReplicaWrite(_) | B::PaxosPrepare(_) | B::PaxosPropose(_) | B::PaxosCommit(_)), Some(R::Error(err)))
                if err.kind == invalid =>
            {
                err.message.contains("ahead of")
            }
            (Want::Served(_), Some(R::Error(err))) => err.kind != invalid && !err.message.is_empty(),
            (Want::Served(req), Some(r)) => served_kind(req, r),
            _ => false,
        };
    if ok {
        return Ok(());
    }
    let want = match &e.want {
        Want::Served(b) => format!("Served({})", short(&format!("{b:?}"))),
        other => short(&format!("{other:?}")),
    };
    Err(format!("request frame {} (id {}): wanted {want}, got id {} {}", hex(&e.frame), e.id, resp.id, short(&format!("{:?}", resp.body))))
}

fn short(s: &str) -> String {
    if s.len() <= 300 { s.to_string() } else { format!("{}… ({} bytes)", &s[..s.floor_char_boundary(300)], s.len()) }
}

fn hex(b: &[u8]) -> String {
    let h: String = b.iter().take(120).map(|x| format!("{x:02x}")).collect();
    if b.len() > 120 { format!("{h}… ({} bytes)", b.len()) } else { h }
}

// ---------------------------------------------------------------------------
// Workers.

/// Everything a worker needs, shared.
struct Ctx {
    seed: u64,
    ports: Vec<u16>,
    ring: quorumkv::cluster::ring::Ring,
    /// What the replicas accept (the oracle's rules).
    limits: Limits,
    /// Set on the first failure: everyone stops.
    failed: AtomicBool,
    half: Phase,
}

/// A rendezvous with a deadline (a failed worker must not hang the others).
struct Phase {
    arrived: AtomicUsize,
    go: AtomicBool,
}

impl Phase {
    fn arrive_and_wait(&self, ctx: &Ctx) -> Result<(), String> {
        self.arrived.fetch_add(1, Ordering::AcqRel);
        if wait_for(slack(Duration::from_secs(120)), || self.go.load(Ordering::Acquire) || ctx.failed.load(Ordering::Acquire)) {
            Ok(())
        } else {
            Err("the halfway rendezvous never opened".into())
        }
    }
}

#[derive(Default, Debug, Clone, Copy)]
struct Stats {
    frames: u64,
    replies_checked: u64,
    short_replies_checked: u64,
    refused: u64,
    served: u64,
    short_conns: u64,
    oversize_refused: u64,
    hellos_refused: u64,
    resets: u64,
}

impl std::ops::AddAssign for Stats {
    fn add_assign(&mut self, o: Stats) {
        self.frames += o.frames;
        self.replies_checked += o.replies_checked;
        self.short_replies_checked += o.short_replies_checked;
        self.refused += o.refused;
        self.served += o.served;
        self.short_conns += o.short_conns;
        self.oversize_refused += o.oversize_refused;
        self.hellos_refused += o.hellos_refused;
        self.resets += o.resets;
    }
}

fn connect(port: u16) -> Result<TcpStream, String> {
    let s = TcpStream::connect(("127.0.0.1", port)).map_err(|e| format!("connect to {port}: {e}"))?;
    s.set_nodelay(true).map_err(|e| e.to_string())?;
    s.set_read_timeout(Some(slack(Duration::from_secs(30)))).map_err(|e| e.to_string())?;
    s.set_write_timeout(Some(slack(Duration::from_secs(30)))).map_err(|e| e.to_string())?;
    Ok(s)
}

fn reply_reader(s: &TcpStream) -> Result<FrameReader<TcpStream>, String> {
    Ok(FrameReader::new(s.try_clone().map_err(|e| e.to_string())?, 64 << 20))
}

/// A peer link to replica `i`, handshaken as the next replica.
fn peer_connection(ctx: &Ctx, i: usize) -> Result<TcpStream, String> {
    let mut s = connect(ctx.ports[i])?;
    let h = hello(&ctx.ring, &format!("r{}", (i + 1) % REPLICAS));
    s.write_all(&framed(&proto::Request { id: 1, body: Some(B::Hello(h)) }.encode_to_vec())).map_err(|e| e.to_string())?;
    let mut r = reply_reader(&s)?;
    match r.read_frame() {
        Ok(Some(f)) if matches!(proto::Response::decode(f).map(|r| r.body), Ok(Some(R::Hello(_)))) => Ok(s),
        other => Err(format!("peer handshake with r{i} failed: {other:?}")),
    }
}

/// One worker: a long-lived pipelined connection (a reader thread checks every
/// reply), with short-lived connections for framing damage in between.
fn worker(ctx: &Ctx, replica: usize, w: usize, quota: u64) -> Result<Stats, String> {
    let mut rng = Rng::new(ctx.seed, (replica * WORKERS + w) as u64);
    if ctx.limits.partitioner == Partitioner::Murmur3 {
        rng.display_one_in = 10;
    }
    let role = if w == WORKERS - 1 { Role::Peer } else { Role::Client };
    let port = ctx.ports[replica];
    let mut stream = match role {
        Role::Peer => peer_connection(ctx, replica)?,
        Role::Client => {
            // A ping first, so the connection is a client's.
            let mut s = connect(port)?;
            s.write_all(&framed(&proto::Request { id: 0, body: Some(B::Ping(proto::Ping {})) }.encode_to_vec()))
                .map_err(|e| e.to_string())?;
            match reply_reader(&s)?.read_frame() {
                Ok(Some(_)) => s,
                other => return Err(format!("first ping to r{replica}: {other:?}")),
            }
        }
    };
    let (tx, rx) = mpsc::channel::<Vec<Expect>>();
    let checked = Arc::new(AtomicU64::new(0));
    let reader_failed = Arc::new(AtomicBool::new(false));
    let reader = {
        let (s, checked, reader_failed) = (stream.try_clone().map_err(|e| e.to_string())?, checked.clone(), reader_failed.clone());
        std::thread::Builder::new()
            .name(format!("reader-r{replica}-{w}"))
            .spawn(move || {
                let r = drain(s, rx, &checked);
                reader_failed.store(r.is_err(), Ordering::Release);
                r
            })
            .map_err(|e| e.to_string())?
    };
    let mut stats = Stats::default();
    let mut sent_pipelined = 0u64;
    let mut halfway_done = false;
    let mut result = Ok(());
    let mut buf = Vec::new();
    while stats.frames < quota && !ctx.failed.load(Ordering::Relaxed) && !reader_failed.load(Ordering::Acquire) {
        if !halfway_done && stats.frames >= quota / 2 {
            halfway_done = true;
            // Let the replica finish what it was sent, so the measurement sees it idle.
            let drained = wait_for(slack(Duration::from_secs(60)), || {
                checked.load(Ordering::Acquire) >= sent_pipelined
                    || reader_failed.load(Ordering::Acquire)
                    || ctx.failed.load(Ordering::Relaxed)
            });
            if !drained {
                result = Err(format!("r{replica} did not answer {sent_pipelined} pipelined requests"));
                break;
            }
            if let Err(e) = ctx.half.arrive_and_wait(ctx) {
                result = Err(e);
                break;
            }
        }
        if rng.chance(SHORT_ONE_IN) {
            match short_lived(ctx, &mut rng, port) {
                Ok(s) => stats += s,
                Err(e) => {
                    result = Err(format!("r{replica} short-lived connection: {e}"));
                    break;
                }
            }
            continue;
        }
        let n = 1 + rng.below(32);
        let mut expects = Vec::with_capacity(n);
        buf.clear();
        for _ in 0..n {
            let body = match role {
                Role::Client => client_frame(&mut rng, &ctx.ring),
                Role::Peer => peer_frame(&mut rng, &ctx.ring),
            };
            buf.extend_from_slice(&framed(&body));
            expects.push(expect(role, &body, &ctx.limits));
        }
        stats.frames += n as u64;
        sent_pipelined += n as u64;
        let _ = tx.send(expects);
        if let Err(e) = stream.write_all(&buf) {
            result = Err(format!("r{replica} write failed after {} frames: {e}", stats.frames));
            break;
        }
    }
    drop(tx);
    let drained = reader.join().map_err(|_| "reader panicked".to_string())?;
    let _ = stream.shutdown(Shutdown::Both);
    if result.is_err() && !halfway_done {
        ctx.half.arrived.fetch_add(1, Ordering::AcqRel); // do not keep the others waiting
    }
    let replies = match drained {
        Ok(r) => r,
        Err(e) => return Err(format!("r{replica} worker {w} ({role:?}): {e}")),
    };
    result?;
    stats += replies;
    if stats.replies_checked != sent_pipelined {
        return Err(format!("r{replica} worker {w}: {sent_pipelined} pipelined frames but {} replies", stats.replies_checked));
    }
    Ok(stats)
}

/// The reader thread: one reply per request, in order, each as the oracle says.
fn drain(s: TcpStream, rx: mpsc::Receiver<Vec<Expect>>, checked: &AtomicU64) -> Result<Stats, String> {
    let mut reader = FrameReader::new(s.try_clone().map_err(|e| e.to_string())?, 64 << 20);
    let mut stats = Stats::default();
    let fail = |e: String| {
        let _ = s.shutdown(Shutdown::Both); // unblock the writer
        Err(e)
    };
    for batch in rx {
        for e in batch {
            let resp = match reader.read_frame() {
                Ok(Some(f)) => match proto::Response::decode(f) {
                    Ok(r) => r,
                    Err(err) => return fail(format!("undecodable reply {err} to {}", hex(&e.frame))),
                },
                Ok(None) => return fail(format!("connection closed before the reply to {}", hex(&e.frame))),
                Err(err) => return fail(format!("no reply to {}: {err}", hex(&e.frame))),
            };
            if let Err(m) = check(&e, &resp) {
                return fail(m);
            }
            match e.want {
                Want::Served(_) => stats.served += 1,
                _ => stats.refused += 1,
            }
            stats.replies_checked += 1;
            checked.fetch_add(1, Ordering::Release);
        }
    }
    Ok(stats)
}

/// A short-lived connection: a few well-framed bad requests (each answered as
/// the oracle says), then damage to the framing itself, then the replica must
/// close the connection.
fn short_lived(ctx: &Ctx, rng: &mut Rng, port: u16) -> Result<Stats, String> {
    let mut stats = Stats { short_conns: 1, ..Default::default() };
    let mut s = connect(port)?;
    let mut out = Vec::new();
    let mut expects = Vec::new();
    let case = rng.below(7);
    let mut hello_first = false;
    if case == 6 {
        // A handshake that is garbage or claims another ring: refused, connection closed.
        // Frames without a request before it leave the connection without a role, so
        // the handshake is still its first request; they are answered before the refusal.
        hello_first = true;
        for _ in 0..rng.below(3) {
            let body: &[u8] = rng.pick(&[&b""[..], b"\xff\xff", b"\x08\x01", b"\x0a"]);
            out.extend(framed(body));
            expects.push(expect(Role::Client, body, &ctx.limits));
            stats.frames += 1;
        }
        let mut h = hello(&ctx.ring, "r1");
        match rng.below(5) {
            0 => h.cluster_id ^= 1 << rng.below(64),
            // A newer epoch is no reason to refuse a member, but a stranger from one is.
            1 => {
                h.epoch += 1 + rng.below(10) as u64;
                h.name = "r9".into();
            }
            2 => h.name = rng.pick(&["r9", "", "r0 r1", "\u{202e}r1"]).to_string(),
            3 => {
                h.cluster_id = rng.next();
                h.ring_description = "[huge] ".repeat(6000); // 42 KB that a refusal might quote
            }
            _ => h.name = format!("r{}", 3 + rng.below(100)),
        }
        out.extend(framed(&proto::Request { id: 7, body: Some(B::Hello(h)) }.encode_to_vec()));
        stats.frames += 1;
        if rng.chance(2) {
            out.extend(framed(&client_frame(rng, &ctx.ring)));
            stats.frames += 1;
        }
    } else {
        // Until a request with a body arrives, the connection could still become a
        // replica link: leave out a PeerHello until then (the handshake has its own case).
        let mut client = false;
        for _ in 0..rng.below(6) {
            let body = client_frame(rng, &ctx.ring);
            match proto::Request::decode(&body[..]).map(|r| r.body) {
                Ok(Some(B::Hello(_))) if !client => continue,
                Ok(Some(_)) => client = true,
                _ => {}
            }
            out.extend(framed(&body));
            expects.push(expect(Role::Client, &body, &ctx.limits));
            stats.frames += 1;
        }
        let body = client_base(rng).encode_to_vec();
        let len = body.len();
        stats.frames += 1;
        match case {
            // Half a frame (or less), then close.
            0 => {
                let f = framed(&body);
                out.extend_from_slice(&f[..1 + rng.below(f.len() - 1)]);
            }
            // The prefix says less than the body: the rest is read as frames of its own.
            1 => {
                out.extend((rng.below(len) as u32).to_be_bytes());
                out.extend(&body);
                if rng.chance(2) {
                    out.extend(framed(&client_frame(rng, &ctx.ring)));
                }
            }
            // The prefix says more than comes.
            2 => {
                out.extend(((len + 1 + rng.below(1000)) as u32).to_be_bytes());
                out.extend(&body);
            }
            // Over the frame limit, up to 4 GiB: refused before anything is allocated.
            3 => {
                let over = max_frame() as u32 + 1;
                let any = over + rng.below(1 << 20) as u32;
                let huge = rng.pick(&[over, any, 1 << 31, u32::MAX]);
                out.extend(huge.to_be_bytes());
                out.extend(rng.bytes(0, 64));
            }
            // Flipped bits in the prefix.
            4 => {
                let mut f = framed(&body);
                let bit = rng.below(32);
                f[bit / 8] ^= 0x80 >> (bit % 8);
                out.extend(f);
            }
            // A zero prefix followed by a body (the body's first bytes become the next prefix).
            _ => {
                out.extend([0, 0, 0, 0]);
                out.extend(&body);
            }
        }
    }
    s.write_all(&out).map_err(|e| format!("write: {e}"))?;
    let _ = s.shutdown(Shutdown::Write);
    let mut reader = reply_reader(&s)?;
    let mut replies = Vec::new();
    loop {
        match reader.read_frame() {
            Ok(Some(f)) => replies.push(proto::Response::decode(f).map_err(|e| format!("undecodable reply: {e}"))?),
            Ok(None) => break,
            Err(FrameError::Io(e)) if e.kind() == IoKind::ConnectionReset => {
                // The replica closed with bytes of ours unread (after a refused prefix): a reset, not a hang.
                stats.resets += 1;
                break;
            }
            Err(e) => return Err(format!("after {} replies: {e} (sent {})", replies.len(), hex(&out))),
        }
    }
    if replies.len() < expects.len() {
        return Err(format!("{} replies to {} well-framed requests before the damage (sent {})", replies.len(), expects.len(), hex(&out)));
    }
    for (e, r) in expects.iter().zip(&replies) {
        check(e, r)?;
        stats.short_replies_checked += 1;
    }
    let last_error = replies.last().and_then(|r| match &r.body {
        Some(R::Error(e)) => Some(e.clone()),
        _ => None,
    });
    if case == 3
        && replies.len() > expects.len()
        && let Some(e) = &last_error
    {
        if !(e.kind == proto::ErrorKind::InvalidRequest as i32 && e.message.contains("exceeds the limit")) {
            return Err(format!("an oversize prefix got {e:?}"));
        }
        stats.oversize_refused += 1;
    }
    if hello_first {
        // Every handshake of this case names another ring or a stranger: refused, then closed.
        match &replies.get(expects.len()).map(|r| &r.body) {
            Some(Some(R::Error(e))) if e.kind == proto::ErrorKind::RingMismatch as i32 => stats.hellos_refused += 1,
            other => return Err(format!("a bad handshake got {}", short(&format!("{other:?}")))),
        }
        if replies.len() > expects.len() + 1 {
            return Err(format!("{} replies after a refused handshake", replies.len() - expects.len() - 1));
        }
    }
    Ok(stats)
}

// ---------------------------------------------------------------------------

/// A request whose outcome the issue fixes: `Ok` served, `Err` refused with a
/// message containing the text.
struct Pinned {
    what: &'static str,
    role: Role,
    frame: Vec<u8>,
    want: Result<(), String>,
}

/// Requests whose outcome the issue fixes, each sent to a replica and put to the
/// oracle: both must give the outcome written here, so neither can drift unnoticed.
fn pinned_cases(ctx: &Ctx) {
    let murmur = ctx.limits.partitioner == Partitioner::Murmur3;
    let not_int = "is not an integer 0 to 255: this cluster is byte-ordered";
    // What a murmur3 cluster does with a key; a byte-ordered one refuses every key but an integer.
    let key = |murmur3: Result<(), &str>| if murmur { murmur3.map_err(String::from) } else { Err(not_int.to_string()) };
    let case = |what, role, frame, want| Pinned { what, role, frame, want };
    let request = |body| proto::Request { id: 1, body: Some(body) }.encode_to_vec();
    let put = |key: &[u8], value: &[u8]| {
        request(B::Put(proto::Put { key: key.to_vec(), value: value.to_vec(), consistency: 2, condition: None }))
    };
    let get = |key: Vec<u8>| request(B::Get(proto::Get { key, consistency: 1 }));
    let dump = |slots: Vec<u32>| {
        request(B::ReplicaDump(proto::ReplicaDump { max_value_len: 8, slots, max_keys: 4, after: Vec::new(), digest_slots: Vec::new() }))
    };
    let legacy_put = {
        let mut m = Vec::new();
        put_uint(&mut m, 1, 70);
        put_bytes(&mut m, 2, b"seed-era");
        put_uint(&mut m, 3, 2);
        request_with(1, 4, &m)
    };
    let cut_slots = {
        let mut m = Vec::new();
        put_bytes(&mut m, 2, &[3, 0x80]);
        request_with(1, 24, &m)
    };
    let binary_write = {
        let v = proto::Version { micros: 1, node: 0, tombstone: false, value: vec![0xff] };
        request(B::ReplicaWrite(proto::ReplicaWrite { key: vec![0xfe, 0], version: Some(v), epoch: 0 }))
    };
    let huge = max_frame() - 100;
    let over = format!("key of {} bytes exceeds the limit of {MAX_KEY} bytes (--max-key-bytes)", MAX_KEY + 1);
    let huge_over = format!("key of {huge} bytes exceeds the limit of {MAX_KEY} bytes");
    let cases = [
        case("a value that is not UTF-8", Role::Client, put(b"5", b"\xff\xfe\x00 not UTF-8"), Ok(())),
        case("an empty value", Role::Client, put(b"6", b""), Ok(())),
        case("a key that is not UTF-8", Role::Client, put(b"\xff\x00k", b"v"), key(Ok(()))),
        case("a text key", Role::Client, get(b"user:42".to_vec()), key(Ok(()))),
        case("an empty key", Role::Client, put(b"", b"v"), key(Err("the key is empty"))),
        case("a key of --max-key-bytes", Role::Client, get(vec![b'M'; MAX_KEY]), key(Ok(()))),
        case("a key one byte over", Role::Client, get(vec![b'K'; MAX_KEY + 1]), key(Err(&over))),
        case("a key up to the frame cap", Role::Client, get(vec![b'H'; huge]), key(Err(&huge_over))),
        case(
            "key 256",
            Role::Client,
            get(b"256".to_vec()),
            if murmur { Ok(()) } else { Err("key 256 is out of range; keys are 0 to 255".into()) },
        ),
        case("the seed's Put (its integer key in field 1)", Role::Client, legacy_put, key(Err("the key is empty"))),
        case("a replica write of a binary key", Role::Peer, binary_write, key(Ok(()))),
        case(
            "a read batch with an empty key",
            Role::Peer,
            request(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![b"1".to_vec(), Vec::new()] })),
            key(Err("the key is empty")),
        ),
        case("a dump of every slot", Role::Peer, dump((0..256).collect()), Ok(())),
        case("a dump of slot 256", Role::Peer, dump(vec![3, 256]), Err("slot 256 is out of range; slots are 0 to 255".into())),
        case(
            "a dump of 257 slots",
            Role::Peer,
            dump((0..257).map(|i| i % 256).collect()),
            Err("a dump of 257 slots; there are 256".into()),
        ),
        case("a dump whose slots end mid-number", Role::Peer, cut_slots, Err("malformed request: ".into())),
    ];
    let mut client = connect(ctx.ports[0]).unwrap();
    let mut peer = peer_connection(ctx, 0).unwrap();
    for Pinned { what, role, frame, want } in cases {
        // The oracle agrees…
        let e = expect(role, &frame, &ctx.limits);
        let oracle_ok = match (&e.want, &want) {
            (Want::Served(_), Ok(())) => true,
            (Want::Refused(m), Err(needle)) => m.contains(needle.as_str()),
            _ => false,
        };
        assert!(oracle_ok, "{what}: the oracle says {}, the issue {want:?}", short(&format!("{:?}", e.want)));
        // …and so does the replica.
        let s = if role == Role::Client { &mut client } else { &mut peer };
        s.write_all(&framed(&frame)).unwrap();
        let mut r = FrameReader::new(s.try_clone().unwrap(), 64 << 20);
        let resp = proto::Response::decode(r.read_frame().unwrap().expect("a reply")).unwrap();
        check(&e, &resp).unwrap_or_else(|m| panic!("{what}: {m}"));
        if let (Err(needle), Some(R::Error(err))) = (&want, &resp.body) {
            assert!(err.message.contains(needle.as_str()), "{what}: {}", short(&err.message));
        }
    }
}

/// A small cluster of each kind for the checks below, and the context they need.
fn small_cluster(partitioner: Partitioner) -> (Cluster, Ctx) {
    let settings = format!("partitioner {}\n", partitioner.name());
    let c =
        Cluster::start_with(REPLICAS, &settings, &["--max-value-bytes", &MAX_VALUE.to_string(), "--max-key-bytes", &MAX_KEY.to_string()]);
    let spec = quorumkv::cluster::ring::load_cluster_spec(c.file.to_str().unwrap()).unwrap();
    let ctx = Ctx {
        seed: 0,
        ports: c.replicas.iter().map(|r| r.port).collect(),
        ring: quorumkv::cluster::ring::Ring::from_spec(&spec, 3, 1).unwrap(),
        limits: Limits { partitioner, max_key_bytes: MAX_KEY, ..Limits::byte_ordered(MAX_VALUE) },
        failed: AtomicBool::new(false),
        half: Phase { arrived: AtomicUsize::new(0), go: AtomicBool::new(false) },
    };
    (c, ctx)
}

/// The new fields, case by case, against both kinds of cluster: values and murmur3
/// keys are bytes, empty and oversize keys are refused, the seed's integer key field
/// is no key, malformed `ReplicaDump` slot lists are refused.
#[test]
fn the_new_fields_get_the_outcomes_the_issue_gives() {
    for p in [Partitioner::ByteOrdered, Partitioner::Murmur3] {
        let (_c, ctx) = small_cluster(p);
        pinned_cases(&ctx);
    }
}

/// A refused key is not sent back whole: a key up to the frame cap (here about
/// 380 KB; 2 MB with the default limits), every byte of it escaped as `\xNN`, would
/// make the refusal four times the request.
#[test]
fn a_refused_key_is_not_echoed_back_whole() {
    for p in [Partitioner::ByteOrdered, Partitioner::Murmur3] {
        let (_c, ctx) = small_cluster(p);
        let mut s = connect(ctx.ports[0]).unwrap();
        let mut r = FrameReader::new(s.try_clone().unwrap(), 64 << 20);
        for key in [vec![0xff; max_frame() - 100], vec![b'9'; max_frame() - 100], vec![b'k'; max_frame() - 100]] {
            let get = proto::Request { id: 9, body: Some(B::Get(proto::Get { key, consistency: 1 })) };
            s.write_all(&framed(&get.encode_to_vec())).unwrap();
            let resp = proto::Response::decode(r.read_frame().unwrap().expect("a reply")).unwrap();
            let Some(R::Error(err)) = resp.body else { panic!("{p:?}: a {} byte key was not refused", max_frame() - 100) };
            assert_eq!(err.kind, proto::ErrorKind::InvalidRequest as i32);
            assert!(
                err.message.len() < 4096,
                "{p:?}: the refusal of a {}-byte key is {} bytes: {}",
                max_frame() - 100,
                err.message.len(),
                short(&err.message)
            );
        }
    }
}

fn rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("read /proc/PID/status");
    let line = status.lines().find(|l| l.starts_with("VmRSS:")).expect("VmRSS");
    line.split_whitespace().nth(1).unwrap().parse().unwrap()
}

#[test]
fn every_replica_survives_a_flood_of_mutated_frames() {
    flood(Partitioner::ByteOrdered);
}

/// The same flood against a murmur3 cluster, where keys are any 1 to `--max-key-bytes`
/// bytes: string and binary keys are served, empty and oversize ones refused.
#[test]
fn every_murmur3_replica_survives_a_flood_of_mutated_frames() {
    flood(Partitioner::Murmur3);
}

fn flood(partitioner: Partitioner) {
    let seed = seed();
    eprintln!("badinput seed {seed:#x} against a {} cluster (replay with QUORUMKV_BADINPUT_SEED={seed:#x})", partitioner.name());
    let settings = format!("partitioner {}\n", partitioner.name());
    let (value, key) = (MAX_VALUE.to_string(), MAX_KEY.to_string());
    let mut args = vec!["--max-value-bytes", &value, "--max-key-bytes", &key];
    // Under ThreadSanitizer a flooded replica can take longer than the default
    // 5 s to read a connection's first frame (a 92 KB one timed out there).
    if common::under_tsan() {
        args.extend(["--first-frame-timeout", "60s"]);
    }
    let mut c = Cluster::start_with(REPLICAS, &settings, &args);
    let spec = quorumkv::cluster::ring::load_cluster_spec(c.file.to_str().unwrap()).unwrap();
    let ctx = Arc::new(Ctx {
        seed,
        ports: c.replicas.iter().map(|r| r.port).collect(),
        ring: quorumkv::cluster::ring::Ring::from_spec(&spec, 3, 1).unwrap(),
        limits: Limits { partitioner, max_key_bytes: MAX_KEY, ..Limits::byte_ordered(MAX_VALUE) },
        failed: AtomicBool::new(false),
        half: Phase { arrived: AtomicUsize::new(0), go: AtomicBool::new(false) },
    });
    assert_eq!(partitioner, ctx.ring.partitioner());
    let pids: Vec<u32> = c.replicas.iter().map(|r| r.pid().unwrap()).collect();
    let log_lines_before: Vec<usize> = (0..REPLICAS).map(|i| c.log(i).lines().count()).collect();
    let rss_before: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();

    let started = Instant::now();
    let per_replica = frames_per_replica();
    let quota = per_replica.div_ceil(WORKERS as u64);
    let handles: Vec<_> = (0..REPLICAS)
        .flat_map(|i| (0..WORKERS).map(move |w| (i, w)))
        .map(|(i, w)| {
            let ctx = ctx.clone();
            std::thread::Builder::new()
                .name(format!("flood-r{i}-{w}"))
                .spawn(move || {
                    let r = worker(&ctx, i, w, quota);
                    if r.is_err() {
                        ctx.failed.store(true, Ordering::Release);
                    }
                    r
                })
                .unwrap()
        })
        .collect();
    // Halfway: every worker has stopped sending and seen every reply.
    let all = REPLICAS * WORKERS;
    let met =
        wait_for(slack(Duration::from_secs(120)), || ctx.half.arrived.load(Ordering::Acquire) >= all || ctx.failed.load(Ordering::Acquire));
    let rss_half: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    let halfway = started.elapsed();
    ctx.half.go.store(true, Ordering::Release);
    let results: Vec<Result<Stats, String>> = handles.into_iter().map(|h| h.join().expect("worker panicked")).collect();
    let flood = started.elapsed();
    let errors: Vec<&String> = results.iter().filter_map(|r| r.as_ref().err()).collect();
    assert!(
        errors.is_empty(),
        "seed {seed:#x}: {} worker(s) failed:\n{}\n{}",
        errors.len(),
        errors.iter().map(|e| e.as_str()).collect::<Vec<_>>().join("\n"),
        c.logs()
    );
    assert!(met, "seed {seed:#x}: the workers never all reached halfway");

    let mut per: Vec<Stats> = vec![Stats::default(); REPLICAS];
    for (k, r) in results.iter().enumerate() {
        per[k / WORKERS] += *r.as_ref().unwrap();
    }
    let rss_after: Vec<u64> = pids.iter().map(|&p| rss_kib(p)).collect();
    for (i, s) in per.iter().enumerate() {
        eprintln!(
            "r{i}: {s:?}; RSS {} -> {} (half) -> {} KiB, peak {} KiB",
            rss_before[i],
            rss_half[i],
            rss_after[i],
            c.replicas[i].peak_rss_kib()
        );
    }
    // CPU seconds so far (utime + stime, in clock ticks of 1/100 s), to tell load from slowness.
    let cpu = |pid: &str| {
        let st = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap();
        let f: Vec<&str> = st.rsplit_once(')').unwrap().1.split_whitespace().collect();
        (f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap()) as f64 / 100.0
    };
    eprintln!("CPU s: test {} replicas {:?}", cpu("self"), pids.iter().map(|p| cpu(&p.to_string())).collect::<Vec<_>>());
    eprintln!("flood took {flood:?} (halfway at {halfway:?})");

    for (i, s) in per.iter().enumerate() {
        assert!(s.frames >= per_replica, "r{i} got only {} frames", s.frames);
        // The mix reaches every outcome.
        assert!(s.refused > s.frames / 2 && s.served > 100, "r{i}: {s:?}");
        assert!(s.short_conns > per_replica / SHORT_EVERY / 2, "r{i}: {s:?}");
        assert!(s.oversize_refused > 0 && s.hellos_refused > 0, "r{i}: {s:?}");
    }

    // (a) Every replica still serves correct requests: a write through each, read back through another.
    // (First every replica must see the others up again: a loaded machine can starve heartbeats.)
    c.wait_all_up();
    for i in 0..REPLICAS {
        assert!(c.replicas[i].running(), "r{i} died; logs:\n{}", c.logs());
        let mut keys = vec![(200 + i).to_string().into_bytes()];
        if partitioner == Partitioner::Murmur3 {
            keys.extend([format!("after the flood {i}").into_bytes(), vec![0xff, i as u8, 0], vec![b'M'; MAX_KEY]]);
        }
        for key in keys {
            let v = format!("after the flood via r{i} ({seed:#x})");
            c.client(i).put(&key, &v, Quorum).unwrap_or_else(|e| panic!("put through r{i}: {e}\n{}", c.logs()));
            let j = (i + 1) % REPLICAS;
            assert_eq!(c.client(j).get_text(&key, Quorum).unwrap().as_deref(), Some(v.as_str()), "read through r{j}");
        }
    }

    // (b) Memory. What a replica may legitimately hold for this flood: per connection a
    // frame buffer up to the frame cap (380 KiB here, for a read batch of 1,025 keys of
    // 300 bytes) and up to 256 KiB of batched replies, for about a dozen connections at
    // once (~8 MiB); the store: byte-ordered, at most 256 values of 8 KiB (2 MiB); murmur3,
    // the few hundred keys the generator picks plus those that mutations make up, small
    // cells, some tens of thousands at most (a few MiB; about 5 MiB seen); worker stacks of
    // 256 KiB; the 32 MiB background budget of calls answered early; and allocator slack.
    // That stays well under 64 MiB, while a leak of even ~670 bytes per bad frame would
    // pass it over 100,000 frames. The second half of the flood repeats the first, so it
    // must not grow memory by more than noise and the keys it adds (16 MiB catches a leak
    // of ~340 bytes per frame over the second 50,000).
    // Under ThreadSanitizer resident memory includes shadow memory for everything touched,
    // so the bounds only mean something in a normal build.
    if !under_tsan() {
        for i in 0..REPLICAS {
            let grown = rss_after[i].saturating_sub(rss_before[i]) / 1024;
            let second_half = rss_after[i].saturating_sub(rss_half[i]) / 1024;
            assert!(grown < 64, "r{i} grew by {grown} MiB over the flood");
            assert!(second_half < 16, "r{i} grew by {second_half} MiB over the second half of the flood");
        }
    }

    // (c) Logged, without flooding: one line a second at most about bad requests (and
    // about refused handshakes), naming the sender and the reason; nothing else per frame.
    let secs = started.elapsed().as_secs() + 1;
    for i in 0..REPLICAS {
        let log = c.log(i);
        let new: Vec<&str> = log.lines().skip(log_lines_before[i]).collect();
        let bad: Vec<&&str> = new.iter().filter(|l| l.contains("bad request from 127.0.0.1:")).collect();
        let links: Vec<&&str> = new.iter().filter(|l| l.contains("refusing replica link from 127.0.0.1:")).collect();
        let sample = new.iter().take(20).copied().collect::<Vec<_>>().join("\n");
        // Nothing is logged per frame: besides the two rate-limited lines a second, anything
        // else is rare (a link flapping under the load), so 50 lines of slack, far below one per frame.
        assert!(
            new.len() < 2 * secs as usize + 50 && new.len() < 1000,
            "r{i}: {} log lines for {} frames:\n{sample}",
            new.len(),
            per[i].frames
        );
        let longest = new.iter().map(|l| l.len()).max().unwrap_or(0);
        assert!(longest < 2048, "r{i} logged a line of {longest} bytes: {}", short(new.iter().max_by_key(|l| l.len()).unwrap()));
        assert!(!bad.is_empty(), "r{i} logged no bad request:\n{sample}");
        assert!(bad.iter().any(|l| l.contains("so far")), "r{i}: {bad:?}");
        assert!(!links.is_empty(), "r{i} logged no refused handshake:\n{sample}");
        assert!(bad.len() as u64 <= secs + 1, "r{i}: {} bad-request lines in {secs} s:\n{sample}", bad.len());
        assert!(links.len() as u64 <= secs + 1, "r{i}: {} refused-link lines in {secs} s:\n{sample}", links.len());
    }
    // The harness checks on drop that no replica panicked or raced.
}

/// A cluster file whose partitioner line is garbage is refused at start, with the
/// line and the reason, before the replica listens or touches its data folder.
#[test]
fn a_cluster_file_with_an_unknown_partitioner_is_refused_at_start() {
    let dir = common::TempDir::new("partitioner");
    let ports = common::free_ports(3);
    let port = ports[0];
    let nodes: String = ports.iter().enumerate().map(|(i, p)| format!("r{i} 127.0.0.1 {p}\n")).collect();
    let cases: Vec<(Vec<u8>, &str)> = vec![
        (b"partitioner random\n".to_vec(), "line 1: unknown partitioner \"random\"; use byte-ordered or murmur3"),
        (b"# Cassandra's name\npartitioner org.apache.cassandra.dht.Murmur3Partitioner\n".to_vec(), "line 2: unknown partitioner"),
        (b"partitioner MURMUR3\n".to_vec(), "line 1: unknown partitioner \"MURMUR3\""),
        ("partitioner murmur3\u{202e}\n".as_bytes().to_vec(), "line 1: unknown partitioner"),
        (b"partitioner\n".to_vec(), "line 1: expected `partitioner VALUE`, found 1 field(s)"),
        (b"partitioner murmur3 byte-ordered\n".to_vec(), "line 1: expected `partitioner VALUE`, found 3 field(s)"),
        (b"partitioner murmur3\npartitioner murmur3\n".to_vec(), "line 2: `partitioner` is set twice"),
        (b"partitioner murmur\xff3\n".to_vec(), "stream did not contain valid UTF-8"),
        ([b"partitioner ".to_vec(), vec![b'x'; 100_000], b"\n".to_vec()].concat(), "line 1: unknown partitioner \"xxxx"),
    ];
    for (n, (settings, want)) in cases.iter().enumerate() {
        let file = dir.path().join(format!("case{n}.txt"));
        std::fs::write(&file, [settings.as_slice(), nodes.as_bytes()].concat()).unwrap();
        let (data, log) = (dir.path().join(format!("data{n}")), dir.path().join(format!("case{n}.log")));
        let mut child = std::process::Command::new(common::bin("replica"))
            .args(["r0", &port.to_string(), file.to_str().unwrap(), "--data-dir", data.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .unwrap();
        // One that took the file would run until killed.
        if !wait_for(slack(Duration::from_secs(10)), || child.try_wait().unwrap().is_some()) {
            let _ = std::process::Command::new("kill").arg("-9").arg(child.id().to_string()).status();
        }
        let status = child.wait().unwrap();
        let err = std::fs::read_to_string(&log).unwrap();
        assert_eq!(status.code(), Some(2), "case {n}: {}", short(&err));
        assert!(err.contains(want), "case {n}: want {want:?} in {}", short(&err));
        assert!(!err.contains("listening on") && !data.exists(), "case {n}: the replica got as far as its data: {}", short(&err));
    }
}
