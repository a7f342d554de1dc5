//! The typed messages of anti-entropy (and, later, streaming): a replica's
//! hash trees of one slot, its cells of some of a group's leaves, and cells
//! for a replica to merge. Checked here once, like every peer message.

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::{Limits, MAX_BATCH};
use crate::proto;
use crate::storage::cell::Version;

/// Leaves of a group's hash tree.
pub const LEAVES: usize = 64;

/// A group's hash tree as one replica holds it: its root, and its leaves if asked for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GroupTree {
    /// The token range's index in the ring (0 in a byte-ordered ring).
    pub range: u32,
    /// Cells in the group (tombstones included).
    pub keys: u64,
    /// XOR of the leaves.
    pub root: u64,
    /// Empty, or exactly [`LEAVES`] hashes.
    pub leaves: Vec<u64>,
}

impl GroupTree {
    /// Bytes this tree takes in a reply (its field's tag and length included).
    pub fn wire_len(&self) -> u64 {
        use prost::Message as _;
        let p = proto::GroupTree { range: self.range, keys: self.keys, root: self.root, leaves: self.leaves.clone() };
        let n = p.encoded_len();
        (n + 1 + prost::encoding::encoded_len_varint(n as u64)) as u64
    }
}

/// A slot number from the wire.
pub(crate) fn slot(n: u32, what: &str) -> Result<u8> {
    u8::try_from(n).map_err(|_| Error::InvalidRequest(format!("{what} of slot {n}; slots are 0 to 255")))
}

/// An optional key from the wire (empty: none).
pub(crate) fn after(bytes: Vec<u8>, limits: &Limits) -> Result<Option<Key>> {
    if bytes.is_empty() { Ok(None) } else { limits.key(bytes).map(Some) }
}

/// Cells from the wire, each key and value checked against `limits`.
pub(crate) fn cells(cells: Vec<proto::KeyVersion>, limits: &Limits, what: &str) -> Result<Vec<(Key, Version)>> {
    if cells.len() > MAX_BATCH {
        return Err(Error::InvalidRequest(format!("{what} of {} cells exceeds the limit of {MAX_BATCH}", cells.len())));
    }
    cells
        .into_iter()
        .map(|c| {
            let key = limits.key(c.key)?;
            let v = c.version.ok_or_else(|| Error::InvalidRequest(format!("{what}: a cell of key {key} without a version")))?;
            if !v.tombstone {
                limits.value(&v.value)?;
            }
            Ok((key, Version::from_proto(v)))
        })
        .collect()
}

/// Cells for the wire.
pub(crate) fn cells_to_proto(cells: Vec<(Key, Version)>) -> Vec<proto::KeyVersion> {
    cells.into_iter().map(|(k, v)| proto::KeyVersion { key: k.into_vec(), version: Some(v.into_proto()), truncated: false }).collect()
}

/// A replica's trees from the wire: every tree has no leaves or exactly [`LEAVES`].
pub(crate) fn trees(t: proto::TreeResult, from: &str) -> Result<Vec<GroupTree>> {
    t.groups
        .into_iter()
        .map(|g| {
            if !g.leaves.is_empty() && g.leaves.len() != LEAVES {
                return Err(Error::Protocol(format!("{from} sent a hash tree of {} leaves; trees have {LEAVES}", g.leaves.len())));
            }
            Ok(GroupTree { range: g.range, keys: g.keys, root: g.root, leaves: g.leaves })
        })
        .collect()
}

/// Trees for the wire.
pub(crate) fn trees_to_proto(trees: Vec<GroupTree>) -> proto::TreeResult {
    proto::TreeResult {
        groups: trees.into_iter().map(|g| proto::GroupTree { range: g.range, keys: g.keys, root: g.root, leaves: g.leaves }).collect(),
    }
}
