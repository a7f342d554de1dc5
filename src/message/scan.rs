//! The typed pieces of `scan`: the cursor, the page size, and the stamp of a
//! key's version that replicas send instead of the version itself.
//!
//! # The cursor
//!
//! A scan walks the store's 256 slots in order, and each slot's keys in byte
//! order, so every key has one place in the walk: `(slot, key)`. A page ends
//! at such a place and its cursor names it: a format byte
//! ([`CURSOR_FORMAT`]), the slot, then the last key the page looked at in
//! that slot (nothing: the page ended before the slot's first key). The next
//! page starts strictly after it, so no key is returned twice whatever is
//! written in between, and a key that exists for the whole scan is returned
//! exactly once. The cursor holds no state of the coordinator: any replica
//! continues a scan another one began.
//!
//! An empty cursor starts the scan; the last page answers `done` with an
//! empty cursor. A cursor from the wire is checked like a key: the format,
//! the key against the cluster's limits, and that the key lies in the slot.

use crate::cluster::key::Key;
use crate::error::{Error, Result};
use crate::message::Limits;
use crate::proto;
use crate::storage::cell::Version;
use crate::storage::hlc::Timestamp;

/// The keys a page looks at when the client asks for none (as Redis's `COUNT`).
pub const DEFAULT_SCAN_COUNT: u32 = 10;

/// The most keys one page (and one replica's answer) may hold; fewer once
/// their bytes pass [`MAX_PAGE_BYTES`](crate::message::MAX_PAGE_BYTES).
pub const MAX_SCAN_COUNT: u32 = 10_000;

/// The first byte of every cursor this version writes.
pub const CURSOR_FORMAT: u8 = 1;

/// Where a scan stands: after `after` in store slot `slot` (at the slot's start if `None`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct ScanCursor {
    /// The store slot the next page starts in.
    pub slot: u8,
    /// The last key looked at in that slot.
    pub after: Option<Key>,
}

impl ScanCursor {
    /// The start of a scan.
    pub const START: ScanCursor = ScanCursor { slot: 0, after: None };

    /// Reads a cursor from the wire (empty: [`START`](Self::START)), or says what is wrong with it.
    pub fn parse(bytes: Vec<u8>, limits: &Limits) -> Result<ScanCursor> {
        let bad = |why: String| Err(Error::InvalidRequest(format!("scan cursor {why}; pass the cursor a scan returned, or none to start")));
        match bytes.as_slice() {
            [] => return Ok(ScanCursor::START),
            [f, ..] if *f != CURSOR_FORMAT => return bad(format!("has format {f}, not {CURSOR_FORMAT}")),
            [_] => return bad("of 1 byte is cut short (a cursor is a format byte, a slot and a key)".into()),
            _ => {}
        }
        let slot = bytes[1];
        if bytes.len() == 2 {
            return Ok(ScanCursor { slot, after: None });
        }
        let key = match limits.key(bytes[2..].to_vec()) {
            Ok(k) => k,
            Err(e) => return bad(format!("names a key that is not one: {}", e.message())),
        };
        let of = limits.partitioner.slot(key.as_bytes());
        if of != slot {
            return bad(format!("names key {key} of slot {of} as a key of slot {slot}"));
        }
        Ok(ScanCursor { slot, after: Some(key) })
    }

    /// The wire form: the format byte, the slot, the key.
    pub fn encode(&self) -> Vec<u8> {
        let mut v = vec![CURSOR_FORMAT, self.slot];
        v.extend_from_slice(self.after.as_ref().map_or(&[][..], Key::as_bytes));
        v
    }
}

/// A client's page size: 0 means [`DEFAULT_SCAN_COUNT`]; above [`MAX_SCAN_COUNT`] is refused.
pub fn scan_count(count: u32) -> Result<u32> {
    match count {
        0 => Ok(DEFAULT_SCAN_COUNT),
        c if c > MAX_SCAN_COUNT => Err(Error::InvalidRequest(format!("scan count {c} exceeds the limit of {MAX_SCAN_COUNT} keys a page"))),
        c => Ok(c),
    }
}

/// A coordinator's question to a replica: 1 to [`MAX_SCAN_COUNT`] keys.
pub fn replica_scan_count(count: u32) -> Result<u32> {
    match count {
        0 => Err(Error::InvalidRequest("a replica scan of 0 keys; ask for 1 or more".into())),
        c if c > MAX_SCAN_COUNT => Err(Error::InvalidRequest(format!("a replica scan of {c} keys exceeds the limit of {MAX_SCAN_COUNT}"))),
        c => Ok(c),
    }
}

/// What a scan compares of a key's version: its timestamp, then whether it
/// is a tombstone (the order of [`Version`], without the value).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Stamp {
    /// The write's timestamp.
    pub ts: Timestamp,
    /// The version is a delete.
    pub tombstone: bool,
}

impl Stamp {
    /// The stamp of `v`.
    pub fn of(v: &Version) -> Stamp {
        Stamp { ts: v.ts, tombstone: v.is_tombstone() }
    }
}

/// A key and its stamp as a replica sends them.
pub fn entry_to_proto((key, s): (Key, Stamp)) -> proto::ScanEntry {
    proto::ScanEntry { key: key.to_vec(), micros: s.ts.micros, node: s.ts.node, tombstone: s.tombstone }
}

/// A key and its stamp from a replica's answer (checked by the coordinator's merge).
pub fn entry_from_proto(e: proto::ScanEntry) -> (Key, Stamp) {
    (Key::trusted(e.key), Stamp { ts: Timestamp { micros: e.micros, node: e.node }, tombstone: e.tombstone })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::key::Partitioner;
    use crate::cluster::token;

    const MURMUR: Limits =
        Limits { partitioner: Partitioner::Murmur3, max_key_bytes: 8, max_value_bytes: 10, max_txn_keys: 64, max_txn_bytes: 1024 };
    const BYTES: Limits =
        Limits { partitioner: Partitioner::ByteOrdered, max_key_bytes: 8, max_value_bytes: 10, max_txn_keys: 64, max_txn_bytes: 1024 };

    fn refused(r: Result<ScanCursor>, needle: &str) {
        match r {
            Err(Error::InvalidRequest(m)) => assert!(m.contains(needle) && m.contains("scan cursor"), "{m:?} should mention {needle:?}"),
            other => panic!("expected a refusal mentioning {needle:?}, got {other:?}"),
        }
    }

    #[test]
    fn cursors_round_trip_and_bad_ones_are_refused() {
        assert_eq!(ScanCursor::parse(Vec::new(), &MURMUR).unwrap(), ScanCursor::START);
        let slot = token::slot(token::token(b"user:1"));
        let c = ScanCursor { slot, after: Some(Key::trusted(*b"user:1")) };
        assert_eq!(c.encode()[..2], [CURSOR_FORMAT, slot]);
        assert_eq!(ScanCursor::parse(c.encode(), &MURMUR).unwrap(), c);
        let bare = ScanCursor { slot: 200, after: None };
        assert_eq!(bare.encode(), vec![1, 200]);
        assert_eq!(ScanCursor::parse(bare.encode(), &MURMUR).unwrap(), bare);
        refused(ScanCursor::parse(vec![7, 1], &MURMUR), "has format 7, not 1");
        refused(ScanCursor::parse(vec![1], &MURMUR), "cut short");
        refused(ScanCursor::parse([&[1, slot][..], &[b'k'; 9]].concat(), &MURMUR), "exceeds the limit of 8 bytes");
        refused(ScanCursor::parse(vec![1, slot.wrapping_add(1), b'u', b's', b'e', b'r', b':', b'1'], &MURMUR), "of slot");
        // Byte-ordered: the key is its slot; "070" is key 70.
        assert_eq!(ScanCursor::parse(vec![1, 70, b'0', b'7', b'0'], &BYTES).unwrap().after, Some(Key::byte(70)));
        refused(ScanCursor::parse(vec![1, 70, b'7', b'1'], &BYTES), "key 71 of slot 71 as a key of slot 70");
        refused(ScanCursor::parse(vec![1, 3, b'x'], &BYTES), "not one");
    }

    #[test]
    fn counts_are_bounded() {
        assert_eq!(scan_count(0).unwrap(), DEFAULT_SCAN_COUNT);
        assert_eq!(scan_count(MAX_SCAN_COUNT).unwrap(), MAX_SCAN_COUNT);
        assert!(matches!(scan_count(MAX_SCAN_COUNT + 1), Err(Error::InvalidRequest(m)) if m.contains("exceeds the limit of 10000")));
        assert!(matches!(replica_scan_count(0), Err(Error::InvalidRequest(m)) if m.contains("0 keys")));
        assert!(replica_scan_count(u32::MAX).is_err());
        assert_eq!(replica_scan_count(1).unwrap(), 1);
    }

    #[test]
    fn stamps_order_like_versions() {
        let ts = |micros| Timestamp { micros, node: 1 };
        let (old, new) = (Version::value(ts(1), "a"), Version::tombstone(ts(2)));
        assert!(Stamp::of(&new) > Stamp::of(&old));
        assert!(Stamp::of(&Version::tombstone(ts(1))) > Stamp::of(&old), "at one timestamp the tombstone wins, as in the merge");
        let e = (Key::trusted(*b"k"), Stamp::of(&new));
        assert_eq!(entry_from_proto(entry_to_proto(e.clone())), e);
    }
}
