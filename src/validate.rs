//! Request validation: every check a replica applies to a request's fields
//! before acting on it.
//!
//! These are pure functions of a decoded message and the replica's value
//! limit, with no sockets and no state, so the replica ([`crate::node`]), the
//! tests and the `frame_decode` fuzz target (`fuzz/`) apply exactly the same
//! rules. A request that passes may still be refused for reasons that depend
//! on the replica's state (too few replicas alive, a peer write stamped too far
//! ahead of the clock, fault injection disabled), never for its shape.
//!
//! | request | checked |
//! |---------|---------|
//! | `Get`, `Delete` | key in `0..=255`, consistency ONE/QUORUM/ALL (or unset) |
//! | `Put` | the same, and the value's size against `--max-value-bytes` |
//! | `Inspect` | key |
//! | `Ping`, `Status`, `Display` | nothing to check (`Display` cuts values itself) |
//! | `Fault` | nothing here: [`crate::net::fault`] refuses it unless enabled, then checks its fields against the ring |
//! | replica requests, `PeerHello` on a client connection | refused |
//! | `ReplicaRead` | key |
//! | `ReplicaWrite` | key, a version present, its value's size unless it is a tombstone |
//! | `ReplicaReadBatch` | at most [`MAX_BATCH`] keys, each in range |
//! | a second `PeerHello`, client requests (and `Fault`) on a replica link | refused |
//!
//! Strings are valid UTF-8 by construction: the decoder refuses anything else.

use crate::coordinator::consistency::Consistency;
use crate::coordinator::readbatch::MAX_BATCH;
use crate::error::{Error, Result};
use crate::proto::{self, request};
use crate::storage::store::KEYS;

/// Checks a key and returns it as the store's index.
pub fn validate_key(key: u32) -> Result<u8> {
    u8::try_from(key).map_err(|_| Error::InvalidRequest(format!("key {key} is out of range; keys are 0 to {}", KEYS - 1)))
}

/// Checks a value's size against the replica's limit.
pub fn validate_value(value: &str, max_value_bytes: usize) -> Result<()> {
    if value.len() > max_value_bytes {
        return Err(Error::InvalidRequest(format!("value of {} bytes exceeds the limit of {max_value_bytes} bytes", value.len())));
    }
    Ok(())
}

/// Checks a request as it arrives on a client connection (after its first
/// frame, which may instead be a peer's `PeerHello`): a body is present and
/// [`validate_client_body`] accepts it.
pub fn validate_request(req: &proto::Request, max_value_bytes: usize) -> Result<()> {
    match &req.body {
        None => Err(Error::InvalidRequest("empty request".into())),
        Some(body) => validate_client_body(body, max_value_bytes),
    }
}

/// Checks the fields of a request a client sent for this replica to coordinate.
pub fn validate_client_body(body: &request::Body, max_value_bytes: usize) -> Result<()> {
    use request::Body as B;
    match body {
        B::Ping(_) | B::Status(_) | B::Display(_) => Ok(()),
        B::Get(g) => validate_key(g.key).and(Consistency::from_proto(g.consistency)).map(drop),
        B::Put(p) => {
            validate_key(p.key)?;
            Consistency::from_proto(p.consistency)?;
            validate_value(&p.value, max_value_bytes)
        }
        B::Delete(d) => validate_key(d.key).and(Consistency::from_proto(d.consistency)).map(drop),
        B::Inspect(i) => validate_key(i.key).map(drop),
        B::Hello(_) | B::ReplicaRead(_) | B::ReplicaWrite(_) | B::Heartbeat(_) | B::ReplicaDump(_) | B::ReplicaReadBatch(_) => {
            Err(Error::InvalidRequest("replica-to-replica request on a client connection; a replica opens with PeerHello".into()))
        }
        // Fault injection checks its own fields (peer names need the ring), after
        // refusing everything when the replica runs without --enable-fault-injection.
        B::Fault(_) => Ok(()),
    }
}

/// Checks the fields of a request a peer sent on its replica link (after the
/// handshake). The clock check of a write needs the replica's clock and is
/// made by the replica.
pub fn validate_peer_request(req: &proto::Request, max_value_bytes: usize) -> Result<()> {
    match &req.body {
        None => Err(Error::InvalidRequest("empty request".into())),
        Some(body) => validate_peer_body(body, max_value_bytes),
    }
}

/// Checks the fields of a request body a peer sent on its replica link.
pub fn validate_peer_body(body: &request::Body, max_value_bytes: usize) -> Result<()> {
    use request::Body as B;
    match body {
        B::Ping(_) | B::Heartbeat(_) | B::ReplicaDump(_) => Ok(()),
        B::ReplicaRead(r) => validate_key(r.key).map(drop),
        B::ReplicaWrite(w) => {
            validate_key(w.key)?;
            let v = w.version.as_ref().ok_or_else(|| Error::InvalidRequest("replica write without a version".into()))?;
            if v.tombstone { Ok(()) } else { validate_value(&v.value, max_value_bytes) }
        }
        B::ReplicaReadBatch(b) => {
            if b.keys.len() > MAX_BATCH {
                return Err(Error::InvalidRequest(format!("a read batch of {} keys exceeds the limit of {MAX_BATCH}", b.keys.len())));
            }
            b.keys.iter().try_for_each(|&k| validate_key(k).map(drop))
        }
        B::Hello(_) => Err(Error::InvalidRequest("second PeerHello on one link".into())),
        B::Get(_) | B::Put(_) | B::Delete(_) | B::Status(_) | B::Inspect(_) | B::Display(_) | B::Fault(_) => {
            Err(Error::InvalidRequest("client request on a replica link; open a client connection".into()))
        }
    }
}

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
        let client = validate_request(&req, max_value_bytes);
        let peer = validate_peer_request(&req, max_value_bytes);
        for e in [&client, &peer].into_iter().filter_map(|r| r.as_ref().err()) {
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

    fn client(body: B) -> Result<()> {
        validate_request(&proto::Request { id: 1, body: Some(body) }, MAX_VALUE)
    }

    fn peer(body: B) -> Result<()> {
        validate_peer_request(&proto::Request { id: 1, body: Some(body) }, MAX_VALUE)
    }

    fn refused(r: Result<()>, needle: &str) {
        match r {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(needle), "{m:?} should mention {needle:?}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn client_requests_are_checked_field_by_field() {
        assert!(client(B::Get(proto::Get { key: 255, consistency: 2 })).is_ok());
        refused(client(B::Get(proto::Get { key: 256, consistency: 2 })), "key 256 is out of range");
        refused(client(B::Get(proto::Get { key: u32::MAX, consistency: 0 })), "out of range");
        refused(client(B::Get(proto::Get { key: 1, consistency: 4 })), "unknown consistency level 4");
        refused(client(B::Delete(proto::Delete { key: 1, consistency: -1 })), "unknown consistency level -1");
        refused(client(B::Delete(proto::Delete { key: 300, consistency: 1 })), "out of range");
        assert!(client(B::Put(proto::Put { key: 0, value: "v".repeat(MAX_VALUE), consistency: 3 })).is_ok());
        refused(client(B::Put(proto::Put { key: 0, value: "v".repeat(MAX_VALUE + 1), consistency: 3 })), "exceeds the limit of 100");
        refused(client(B::Put(proto::Put { key: 0, value: String::new(), consistency: 9 })), "consistency");
        refused(client(B::Inspect(proto::InspectRequest { key: 1000 })), "out of range");
        assert!(client(B::Display(proto::DisplayRequest { max_value_len: u32::MAX })).is_ok());
        refused(validate_request(&proto::Request { id: 3, body: None }, MAX_VALUE), "empty request");
        for replica_only in [
            B::Hello(proto::PeerHello::default()),
            B::ReplicaRead(proto::ReplicaRead { key: 1 }),
            B::ReplicaWrite(proto::ReplicaWrite::default()),
            B::Heartbeat(proto::Heartbeat::default()),
            B::ReplicaDump(proto::ReplicaDump::default()),
            B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![1] }),
        ] {
            refused(client(replica_only), "replica-to-replica request on a client connection");
        }
    }

    #[test]
    fn peer_requests_are_checked_field_by_field() {
        let v = |tombstone, value: &str| Some(proto::Version { micros: 1, node: 0, tombstone, value: value.into() });
        assert!(peer(B::ReplicaWrite(proto::ReplicaWrite { key: 3, version: v(false, "x") })).is_ok());
        refused(peer(B::ReplicaWrite(proto::ReplicaWrite { key: 3, version: None })), "without a version");
        refused(peer(B::ReplicaWrite(proto::ReplicaWrite { key: 256, version: v(false, "x") })), "out of range");
        refused(peer(B::ReplicaWrite(proto::ReplicaWrite { key: 3, version: v(false, &"x".repeat(MAX_VALUE + 1)) })), "exceeds");
        assert!(peer(B::ReplicaWrite(proto::ReplicaWrite { key: 3, version: v(true, "") })).is_ok());
        refused(peer(B::ReplicaRead(proto::ReplicaRead { key: 256 })), "out of range");
        assert!(peer(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![255; MAX_BATCH] })).is_ok());
        refused(peer(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![0; MAX_BATCH + 1] })), "exceeds the limit");
        refused(peer(B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: vec![0, 256] })), "out of range");
        refused(peer(B::Hello(proto::PeerHello::default())), "second PeerHello");
        refused(peer(B::Get(proto::Get::default())), "client request on a replica link");
        assert!(peer(B::Heartbeat(proto::Heartbeat { from: "r1".into() })).is_ok());
    }

    /// splitmix64: deterministic inputs without a dependency.
    struct Rng(u64);
    impl Rng {
        fn next(&mut self) -> u64 {
            self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = self.0;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            z ^ (z >> 31)
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
            B::Get(proto::Get { key: 70, consistency: 2 }),
            B::Put(proto::Put { key: 7, value: "value".into(), consistency: 3 }),
            B::Put(proto::Put { key: 7, value: "v".repeat(MAX_VALUE + 1), consistency: 1 }),
            B::Delete(proto::Delete { key: 255, consistency: 1 }),
            B::Status(proto::StatusRequest {}),
            B::Inspect(proto::InspectRequest { key: 256 }),
            B::Display(proto::DisplayRequest { max_value_len: 10 }),
            B::Hello(proto::PeerHello { name: "r1".into(), ring_fingerprint: 99, ring_description: "ring".into(), epoch: 1 }),
            B::ReplicaRead(proto::ReplicaRead { key: 3 }),
            B::ReplicaWrite(proto::ReplicaWrite { key: 3, version: v }),
            B::Heartbeat(proto::Heartbeat { from: "r2".into() }),
            B::ReplicaDump(proto::ReplicaDump { max_value_len: 4 }),
            B::ReplicaReadBatch(proto::ReplicaReadBatch { keys: (0..40).collect() }),
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
        for body in [B::Ping(proto::Ping {}), B::Get(proto::Get { key: 300, consistency: 1 })] {
            encode_frame(&proto::Request { id: 1, body: Some(body) }, &mut buf);
            stream.extend_from_slice(&buf);
        }
        stream.extend_from_slice(&[0, 0, 0, 0]); // an empty frame: decodes, has no body
        let s = fuzz_frames(&stream, 64, MAX_VALUE);
        assert_eq!(s, FuzzStats { frames: 3, decoded: 3, valid_client: 1, valid_peer: 1 });
    }
}
