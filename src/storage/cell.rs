//! Versioned cells and their last-write-wins merge.
//!
//! A [`Version`] is what a replica holds for a key: a value or a tombstone
//! (a delete), stamped with the [`Timestamp`] its coordinator gave the write.
//! Replicas never overwrite a version with an older one; they [`merge`].
//!
//! # The merge and its laws
//!
//! Versions are totally ordered by `(timestamp, tombstone, value)`:
//! the later timestamp wins; at an equal timestamp (which the HLC never issues
//! for two different writes, but a buggy or hostile peer might send) a tombstone
//! beats a value, and then the larger value wins. `merge(a, b)` is the maximum
//! of that order, so it is:
//!
//! * **commutative** — `merge(a, b) == merge(b, a)`,
//! * **associative** — `merge(merge(a, b), c) == merge(a, merge(b, c))`,
//! * **idempotent** — `merge(a, a) == a`,
//! * **newest wins** — the result carries the greatest timestamp seen,
//! * **tombstones win over older values**, and lose to newer ones.
//!
//! These laws are what make read repair and hint replay safe to repeat in any
//! order: replicas that have seen the same set of versions hold the same cell.

use std::cmp::Ordering;

use crate::proto;
use crate::storage::hlc::Timestamp;

/// One version of a key: a value or a tombstone, with its write timestamp.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Version {
    /// When the write happened (and which coordinator stamped it).
    pub ts: Timestamp,
    /// The value; `None` is a tombstone.
    pub value: Option<Box<[u8]>>,
}

/// A [`Version`] borrowed: its timestamp and value as a stored cell or a
/// packed page of cells holds them, with no copy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VersionRef<'a> {
    /// When the write happened.
    pub ts: Timestamp,
    /// The value; `None` is a tombstone.
    pub value: Option<&'a [u8]>,
}

impl VersionRef<'_> {
    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// An owned copy.
    pub fn to_owned(&self) -> Version {
        Version { ts: self.ts, value: self.value.map(Box::from) }
    }
}

impl Version {
    /// This version borrowed.
    pub fn borrowed(&self) -> VersionRef<'_> {
        VersionRef { ts: self.ts, value: self.value.as_deref() }
    }

    /// A live value.
    pub fn value(ts: Timestamp, value: impl Into<Vec<u8>>) -> Self {
        Version { ts, value: Some(value.into().into_boxed_slice()) }
    }

    /// A tombstone.
    pub fn tombstone(ts: Timestamp) -> Self {
        Version { ts, value: None }
    }

    /// Whether this version is a delete.
    pub fn is_tombstone(&self) -> bool {
        self.value.is_none()
    }

    /// The wire form.
    pub fn to_proto(&self) -> proto::Version {
        proto::Version {
            micros: self.ts.micros,
            node: self.ts.node,
            tombstone: self.value.is_none(),
            value: self.value.as_deref().map(<[u8]>::to_vec).unwrap_or_default(),
        }
    }

    /// The wire form, without copying the value.
    pub fn into_proto(self) -> proto::Version {
        let tombstone = self.value.is_none();
        proto::Version { micros: self.ts.micros, node: self.ts.node, tombstone, value: self.value.map(Vec::from).unwrap_or_default() }
    }

    /// From the wire form (a tombstone's value is ignored).
    pub fn from_proto(v: proto::Version) -> Self {
        let ts = Timestamp { micros: v.micros, node: v.node };
        if v.tombstone { Version::tombstone(ts) } else { Version::value(ts, v.value) }
    }
}

impl Ord for Version {
    fn cmp(&self, other: &Self) -> Ordering {
        self.ts.cmp(&other.ts).then_with(|| self.is_tombstone().cmp(&other.is_tombstone())).then_with(|| self.value.cmp(&other.value))
    }
}

impl PartialOrd for Version {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

/// Last-write-wins merge of two optional versions (`None`: never written).
pub fn merge<'a>(a: Option<&'a Version>, b: Option<&'a Version>) -> Option<&'a Version> {
    match (a, b) {
        (Some(a), Some(b)) => Some(if b > a { b } else { a }),
        (x, None) | (None, x) => x,
    }
}

/// Whether `incoming` should replace `current` under last-write-wins.
pub fn supersedes(incoming: &Version, current: Option<&Version>) -> bool {
    current.is_none_or(|c| incoming > c)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ts(micros: u64, node: u32) -> Timestamp {
        Timestamp { micros, node }
    }

    /// A spread of versions covering ties on every component.
    fn samples() -> Vec<Option<Version>> {
        vec![
            None,
            Some(Version::value(ts(1, 1), "a")),
            Some(Version::value(ts(1, 1), "b")),
            Some(Version::tombstone(ts(1, 1))),
            Some(Version::value(ts(1, 2), "a")),
            Some(Version::value(ts(2, 0), "")),
            Some(Version::tombstone(ts(3, 9))),
            Some(Version::value(ts(4, 0), "z")),
        ]
    }

    #[test]
    fn merge_is_commutative() {
        for a in samples() {
            for b in samples() {
                assert_eq!(merge(a.as_ref(), b.as_ref()), merge(b.as_ref(), a.as_ref()), "{a:?} {b:?}");
            }
        }
    }

    #[test]
    fn merge_is_associative() {
        for a in samples() {
            for b in samples() {
                for c in samples() {
                    let left = merge(merge(a.as_ref(), b.as_ref()), c.as_ref());
                    let right = merge(a.as_ref(), merge(b.as_ref(), c.as_ref()));
                    assert_eq!(left, right);
                }
            }
        }
    }

    #[test]
    fn merge_is_idempotent() {
        for a in samples() {
            assert_eq!(merge(a.as_ref(), a.as_ref()), a.as_ref());
        }
    }

    #[test]
    fn newest_wins() {
        let old = Version::value(ts(10, 5), "old");
        let new = Version::value(ts(11, 0), "new");
        assert_eq!(merge(Some(&old), Some(&new)), Some(&new));
        assert!(supersedes(&new, Some(&old)));
        assert!(!supersedes(&old, Some(&new)));
        assert!(!supersedes(&new, Some(&new)), "re-applying the same version changes nothing");
    }

    #[test]
    fn tombstone_wins_over_older_value_and_loses_to_newer() {
        let value = Version::value(ts(10, 1), "v");
        let del = Version::tombstone(ts(11, 1));
        let later = Version::value(ts(12, 1), "w");
        assert_eq!(merge(Some(&value), Some(&del)), Some(&del));
        assert_eq!(merge(Some(&del), Some(&later)), Some(&later));
        let tie = Version::tombstone(ts(10, 1));
        assert_eq!(merge(Some(&value), Some(&tie)), Some(&tie), "at an equal timestamp the delete wins");
    }

    #[test]
    fn proto_round_trip() {
        for v in samples().into_iter().flatten() {
            assert_eq!(Version::from_proto(v.to_proto()), v);
        }
    }
}
