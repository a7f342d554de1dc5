//! The body of the `frame_decode` fuzz target: arbitrary bytes read as frames
//! the way a replica reads them, decoded, and parsed as both a client's and a
//! peer's request ([`crate::message`]).

use crate::cluster::key::Partitioner;
use crate::error::Error;
use crate::message::{Limits, validate_peer_request, validate_request};
use crate::proto;

/// What [`fuzz_frames`] saw, for tests that want to know it did something.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct FuzzStats {
    /// Frames read whole.
    pub frames: usize,
    /// Frames that decoded as a `Request`.
    pub decoded: usize,
    /// Decoded requests that passed client validation.
    pub valid_client: usize,
    /// Decoded requests that passed peer validation.
    pub valid_peer: usize,
}

/// The body of the `frame_decode` fuzz target (and of the unit test that runs
/// it over deterministic inputs): reads `data` as a stream of frames capped at
/// `max_frame` bytes, decodes each as a `Request` and validates it both as a
/// client's and as a peer's request, as the replica would. It must never
/// panic, hang or allocate more than the cap per frame. A frame that decodes
/// is re-encoded and decoded again, and must come back equal.
pub fn fuzz_frames(data: &[u8], max_frame: usize, max_value_bytes: usize) -> FuzzStats {
    use crate::net::frame::{FrameError, FrameReader};
    use prost::Message;
    let mut stats = FuzzStats::default();
    let mut reader = FrameReader::new(std::io::Cursor::new(data), max_frame);
    loop {
        let frame = match reader.read_frame() {
            Ok(Some(f)) => f,
            Ok(None) => break,
            Err(FrameError::TooLarge { len, max }) => {
                assert!(len > max as u64, "TooLarge for a frame of {len} bytes within the cap {max}");
                break;
            }
            Err(FrameError::Truncated { got }) => {
                assert!(got > 0, "a truncated frame has at least one byte");
                break;
            }
            Err(FrameError::Io(e)) => panic!("a Cursor cannot fail: {e}"),
        };
        assert!(frame.len() <= max_frame, "frame of {} bytes above the cap {max_frame}", frame.len());
        stats.frames += 1;
        let Ok(req) = proto::Request::decode(frame) else { continue };
        stats.decoded += 1;
        // Both partitioners' rules: a byte-ordered and a murmur3 replica.
        let bytes = Limits::byte_ordered(max_value_bytes);
        let murmur = Limits { partitioner: Partitioner::Murmur3, max_key_bytes: 64, ..Limits::byte_ordered(max_value_bytes) };
        let client = validate_request(&req, &bytes);
        let peer = validate_peer_request(&req, &bytes);
        let others = [validate_request(&req, &murmur), validate_peer_request(&req, &murmur)];
        for e in [&client, &peer].into_iter().chain(&others).filter_map(|r| r.as_ref().err()) {
            assert!(matches!(e, Error::InvalidRequest(m) if !m.is_empty()), "validation must refuse with a message: {e:?}");
        }
        stats.valid_client += client.is_ok() as usize;
        stats.valid_peer += peer.is_ok() as usize;
        let again = proto::Request::decode(req.encode_to_vec().as_slice()).expect("a decoded request re-encodes to something decodable");
        assert_eq!(again, req, "re-encoding changed the request");
    }
    stats
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::net::frame::encode_frame;
    use crate::proto::request::Body as B;
    use prost::Message;

    const MAX_VALUE: usize = 100;

    /// splitmix64: deterministic inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            crate::rand::splitmix64(&mut self.0)
        }
        fn below(&mut self, n: usize) -> usize {
            (self.next() % n as u64) as usize
        }
    }

    /// Valid encodings of every request kind, to mutate.
    fn seeds() -> Vec<Vec<u8>> {
        let v = Some(proto::Version { micros: 5, node: 1, tombstone: false, value: "héllo".into() });
        let bodies = vec![
            B::Ping(proto::Ping {}),
            B::Get(proto::Get { key: b"70".to_vec(), consistency: 2 }),
            B::Get(proto::Get { key: b"user:42".to_vec(), consistency: 2 }),
            B::Put(proto::Put { key: b"7".to_vec(), value: "value".into(), consistency: 3, condition: None }),
            B::Put(proto::Put { key: vec![0xff, 0, 0x80], value: vec![0xc3, 0x28], consistency: 3, condition: None }),
            B::Put(proto::Put { key: b"7".to_vec(), value: "v".repeat(MAX_VALUE + 1).into(), consistency: 1, condition: None }),
            B::Put(proto::Put { key: vec![b'k'; 65], value: "v".into(), consistency: 1, condition: None }),
            B::Delete(proto::Delete { key: b"255".to_vec(), consistency: 1, condition: None }),
            B::Delete(proto::Delete { key: Vec::new(), consistency: 1, condition: None }),
            B::Status(proto::StatusRequest {}),
            B::Inspect(proto::InspectRequest { key: b"256".to_vec() }),
            B::Display(proto::DisplayRequest { max_value_len: 10, max_keys: 3 }),
            B::Hello(proto::PeerHello {
                name: "r1".into(),
                ring_fingerprint: 99,
                ring_description: "ring".into(),
                epoch: 1,
                cluster_id: 7,
            }),
            B::ReplicaRead(proto::ReplicaRead { key: b"3".to_vec() }),
            B::ReplicaWrite(proto::ReplicaWrite { key: b"3".to_vec(), version: v.clone(), epoch: u64::MAX }),
            B::Heartbeat(proto::Heartbeat { from: "r2".into(), micros: u64::MAX, epoch: u64::MAX }),
            B::ReplicaDump(proto::ReplicaDump {
                max_value_len: 4,
                slots: vec![1, 300],
                max_keys: 5,
                after: b"user:1".to_vec(),
                digest_slots: vec![3, 999],
            }),
            B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: (0..40).map(|i: u32| i.to_string().into_bytes()).collect() }),
            B::Token(proto::TokenRequest { key: b"123".to_vec() }),
            B::Scan(proto::ScanRequest { cursor: Vec::new(), count: 0 }),
            B::Scan(proto::ScanRequest { cursor: vec![1, 70, b'7', b'0'], count: 10_000 }),
            B::Scan(proto::ScanRequest { cursor: vec![1, 24, b'1', b'2', b'3'], count: 10_001 }),
            B::ReplicaScan(proto::ReplicaScan { slot: 70, after: b"70".to_vec(), count: 10 }),
            B::ReplicaScan(proto::ReplicaScan { slot: 256, after: Vec::new(), count: 0 }),
            B::PaxosPrepare(proto::PaxosPrepare {
                key: b"7".to_vec(),
                ballot: Some(proto::Ballot { micros: 5, node: 1 }),
                cluster: false,
                epoch: 0,
            }),
            B::PaxosPrepare(proto::PaxosPrepare { key: b"7".to_vec(), ballot: None, cluster: false, epoch: 0 }),
            B::PaxosPropose(proto::PaxosPropose {
                key: b"7".to_vec(),
                proposal: Some(proto::PaxosProposal { version: v.clone(), origin: Some(proto::Ballot { micros: 4, node: 2 }) }),
                cluster: false,
                epoch: u64::MAX,
            }),
            B::PaxosPropose(proto::PaxosPropose {
                key: Vec::new(),
                proposal: Some(proto::PaxosProposal { version: v.clone(), origin: Some(proto::Ballot { micros: 4, node: 2 }) }),
                cluster: true,
                epoch: 0,
            }),
            B::PaxosPropose(proto::PaxosPropose {
                key: b"7".to_vec(),
                proposal: Some(proto::PaxosProposal { version: v.clone(), origin: Some(proto::Ballot { micros: 9, node: 2 }) }),
                cluster: false,
                epoch: 1,
            }),
            B::PaxosCommit(proto::PaxosCommit {
                key: b"7".to_vec(),
                proposal: Some(proto::PaxosProposal { version: v, origin: None }),
                cluster: false,
                epoch: 0,
            }),
        ];
        bodies.into_iter().map(|b| proto::Request { id: 77, body: Some(b) }.encode_to_vec()).collect()
    }

    /// An input: a few frames, each a seed mutated (or random bytes), with a
    /// right, wrong or oversize length prefix.
    fn input(rng: &mut Rng, seeds: &[Vec<u8>], max_frame: usize) -> Vec<u8> {
        let mut out = Vec::new();
        for _ in 0..1 + rng.below(4) {
            let mut body = if rng.below(8) == 0 {
                (0..rng.below(64)).map(|_| rng.next() as u8).collect()
            } else {
                seeds[rng.below(seeds.len())].clone()
            };
            for _ in 0..rng.below(4) {
                if body.is_empty() {
                    break;
                }
                let i = rng.below(body.len());
                match rng.below(4) {
                    0 => body[i] ^= 1 << rng.below(8),
                    1 => body[i] = rng.next() as u8,
                    2 => body.truncate(i),
                    _ => body.insert(i, rng.next() as u8),
                }
            }
            let len = match rng.below(16) {
                0 => body.len() as u32 + 1 + rng.below(8) as u32,
                1 => (body.len() as u32).saturating_sub(1 + rng.below(8) as u32),
                2 => (max_frame + 1) as u32,
                3 => u32::MAX,
                _ => body.len() as u32,
            };
            out.extend_from_slice(&len.to_be_bytes());
            out.extend_from_slice(&body);
        }
        if rng.below(8) == 0 {
            let cut = rng.below(out.len() + 1);
            out.truncate(cut);
        }
        out
    }

    /// What the fuzz target does, over 200,000 deterministic inputs, so every
    /// test run exercises it; and proof that the inputs reach every outcome.
    #[test]
    fn fuzz_body_survives_deterministic_mutations() {
        let seeds = seeds();
        let max_frame = 1024;
        let mut rng = Rng(0x5EED_F0CC);
        let mut total = FuzzStats::default();
        for _ in 0..200_000 {
            let s = fuzz_frames(&input(&mut rng, &seeds, max_frame), max_frame, MAX_VALUE);
            total.frames += s.frames;
            total.decoded += s.decoded;
            total.valid_client += s.valid_client;
            total.valid_peer += s.valid_peer;
        }
        assert!(total.frames > 200_000, "{total:?}");
        assert!(total.decoded > total.frames / 4 && total.decoded < total.frames, "{total:?}");
        assert!(total.valid_client > 1000 && total.valid_client < total.decoded, "{total:?}");
        assert!(total.valid_peer > 1000 && total.valid_peer < total.decoded, "{total:?}");
    }

    #[test]
    fn fuzz_body_reads_every_frame_of_a_stream() {
        let mut stream = Vec::new();
        let mut buf = Vec::new();
        for body in [B::Ping(proto::Ping {}), B::Get(proto::Get { key: b"300".to_vec(), consistency: 1 })] {
            encode_frame(&proto::Request { id: 1, body: Some(body) }, &mut buf);
            stream.extend_from_slice(&buf);
        }
        stream.extend_from_slice(&[0, 0, 0, 0]); // an empty frame: decodes, has no body
        let s = fuzz_frames(&stream, 64, MAX_VALUE);
        assert_eq!(s, FuzzStats { frames: 3, decoded: 3, valid_client: 1, valid_peer: 1 });
    }
}
