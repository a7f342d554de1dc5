//! `iset` / `iget` (seed 004): image metadata stored under the image's
//! average hash, and found again from a copy of the image.
//!
//! `iset IMAGE METADATA…` hashes the image ([`crate::image`]: ImageHash's
//! `average_hash`) and writes the whole metadata at SERIAL under
//! `img:HASH` (16 hex digits). `iget IMAGE` hashes its image and reads that
//! key; with no exact match it looks for the stored image whose hash is
//! nearest, within [`MAX_DISTANCE`] bits, so a resized or re-encoded copy
//! finds its original.
//!
//! **The nearest hash without a scan.** The 64 bits are cut into five
//! blocks (13, 13, 13, 13 and 12 bits). Two hashes at most four bits apart
//! differ in at most four blocks, so at least one of the five blocks is
//! equal (pigeonhole): multi-index hashing. `iset` adds the hash to five
//! index keys, `imgidx:B:VALUE` for each block `B` and that block's value,
//! each holding the hashes that have that block, one per line; `iget` reads
//! its five index keys (five reads, whatever the store's size), measures
//! every hash found, and keeps the nearest. An index key is updated by
//! compare-and-set at SERIAL, so concurrent `iset`s never lose each other's
//! entries. With the default 8 KiB value limit an index key holds about 480
//! hashes: a store of millions of images spread over 8,192 values a block.
//!
//! Image keys are strings, so both commands need a murmur3 cluster.

use std::path::Path;

use crate::client::{Cas, Client};
use crate::cluster::consistency::Consistency::Serial;
use crate::error::{Error, Result};
use crate::image::AverageHash;
use crate::paxos::Expect;

/// The largest Hamming distance at which `iget` reports a stored image as a match.
pub const MAX_DISTANCE: u32 = 4;

/// The bits of each index block: (shift, width), covering the 64 bits.
const BLOCKS: [(u32, u32); 5] = [(51, 13), (38, 13), (25, 13), (12, 13), (0, 12)];

/// How many times an index update retries a compare-and-set that lost a race.
const INDEX_RETRIES: usize = 50;

/// The key holding an image's metadata.
pub fn metadata_key(h: AverageHash) -> String {
    format!("img:{}", h.to_hex())
}

/// The index keys of `h`: one per block, named by the block and its value.
pub fn index_keys(h: AverageHash) -> Vec<String> {
    BLOCKS.iter().enumerate().map(|(i, &(shift, width))| format!("imgidx:{i}:{:04x}", (h.0 >> shift) & ((1 << width) - 1))).collect()
}

/// What `iget` found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Found {
    /// The stored image's hash.
    pub hash: AverageHash,
    /// Bits between it and the image asked about (0: the same hash).
    pub distance: u32,
    /// Its metadata.
    pub metadata: Vec<u8>,
}

fn need_murmur3(client: &mut Client, what: &str) -> Result<()> {
    let p = client.status()?.partitioner;
    if p == "murmur3" {
        return Ok(());
    }
    Err(Error::InvalidRequest(format!(
        "{what} needs a murmur3 cluster (image keys are strings), but this one is {p}; start one with \
         `make run-replicas REPLICAS=cluster-murmur3.txt RUN_DIR=run-murmur3`"
    )))
}

/// Stores `metadata` for the image at `path` (SERIAL) and indexes its hash;
/// returns the hash.
pub fn iset(client: &mut Client, path: &Path, metadata: &str) -> Result<AverageHash> {
    let h = crate::image::hash_file(path)?;
    need_murmur3(client, "iset")?;
    client.put(metadata_key(h), metadata, Serial)?;
    let me = h.to_hex();
    for key in index_keys(h) {
        add_to_index(client, &key, &me)?;
    }
    Ok(h)
}

/// Adds `hash` (hex) to the list held by `key`, by compare-and-set.
fn add_to_index(client: &mut Client, key: &str, hash: &str) -> Result<()> {
    let mut current = client.get(key, Serial)?;
    for _ in 0..INDEX_RETRIES {
        let listed = current.as_deref().map(|v| String::from_utf8_lossy(v).into_owned()).unwrap_or_default();
        if listed.lines().any(|l| l == hash) {
            return Ok(());
        }
        let mut next = listed;
        next.push_str(hash);
        next.push('\n');
        let expect = match current.take() {
            Some(old) => Expect::Equals(old.into_boxed_slice()),
            None => Expect::Absent,
        };
        match client.put_if(key, next, expect)? {
            Cas::Applied(_) => return Ok(()),
            Cas::NotApplied { current: now } => current = now,
        }
    }
    Err(Error::Failure(format!(
        "the index key {key} kept changing: {INDEX_RETRIES} compare-and-set attempts lost; the metadata is stored but not yet findable by a near hash"
    )))
}

/// Finds the metadata of the image at `path`: its own hash's, or the nearest
/// stored hash within [`MAX_DISTANCE`] bits (ties: the smaller hash). `None` if none is.
pub fn iget(client: &mut Client, path: &Path) -> Result<(AverageHash, Option<Found>)> {
    let h = crate::image::hash_file(path)?;
    need_murmur3(client, "iget")?;
    if let Some(metadata) = client.get(metadata_key(h), Serial)? {
        return Ok((h, Some(Found { hash: h, distance: 0, metadata })));
    }
    let mut candidates: Vec<AverageHash> = Vec::new();
    for key in index_keys(h) {
        if let Some(v) = client.get(&key, Serial)? {
            candidates.extend(String::from_utf8_lossy(&v).lines().filter_map(|l| AverageHash::from_hex(l).ok()));
        }
    }
    candidates.sort_by_key(|c| (c.distance(h), c.0));
    candidates.dedup();
    for c in candidates.into_iter().take_while(|c| c.distance(h) <= MAX_DISTANCE) {
        // An index entry whose metadata is gone (deleted) is passed over.
        if let Some(metadata) = client.get(metadata_key(c), Serial)? {
            return Ok((h, Some(Found { hash: c, distance: c.distance(h), metadata })));
        }
    }
    Ok((h, None))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The blocks cover the 64 bits once each, so any two hashes at most
    /// four bits apart share one block's value.
    #[test]
    fn blocks_partition_the_hash_and_near_hashes_share_an_index_key() {
        let mut covered = 0u64;
        for (shift, width) in BLOCKS {
            let mask = ((1u64 << width) - 1) << shift;
            assert_eq!(covered & mask, 0, "blocks overlap");
            covered |= mask;
        }
        assert_eq!(covered, u64::MAX);
        let h = AverageHash(0xffd7_9181_81c9_ffff);
        let mut x = 0x9e37_79b9_7f4a_7c15u64;
        for _ in 0..2000 {
            let mut other = h.0;
            for _ in 0..4 {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                other ^= 1 << (x % 64);
            }
            let (a, b) = (index_keys(h), index_keys(AverageHash(other)));
            assert!(a.iter().zip(&b).any(|(p, q)| p == q), "{other:016x} shares no index key with {h}");
        }
        assert_eq!(metadata_key(h), "img:ffd7918181c9ffff");
    }
}
