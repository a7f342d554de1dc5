//! Arbitrary bytes through the replica's frame decoder and request validation.
//!
//! The input is read as a stream of length-prefixed frames with a small cap
//! (so oversize prefixes are common); each whole frame is decoded as a
//! `proto::Request` and validated as a client's and as a peer's request, with
//! the checks the replica applies (`quorumkv::message`). Nothing may panic,
//! hang or allocate beyond the cap. The body is `quorumkv::net::fuzz::fuzz_frames`,
//! which the library's unit tests also run over 200,000 deterministic inputs.
//!
//! Run: `cargo +nightly fuzz run frame_decode` (from the repository root).
#![no_main]

use libfuzzer_sys::fuzz_target;

/// Frame cap: small, so the fuzzer reaches "too large" as easily as whole frames.
const MAX_FRAME: usize = 4096;
/// Value limit for validation: below the cap, so oversize values fit in a frame.
const MAX_VALUE_BYTES: usize = 1024;

fuzz_target!(|data: &[u8]| {
    quorumkv::net::fuzz::fuzz_frames(data, MAX_FRAME, MAX_VALUE_BYTES);
});
