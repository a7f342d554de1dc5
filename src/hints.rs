//! Hinted handoff: writes kept for replicas that missed them.
//!
//! When a replica does not ack a write — it is known down, it refused, the
//! connection broke, or it did not answer in time — the coordinator keeps a
//! *hint*: the target, the key and the version (value and original
//! timestamp). When the failure detector sees the target alive again, the
//! hint worker replays the hints to it, throttled, and removes each one only
//! after the target acked it.
//!
//! Because replicas merge by last-write-wins, a hint can be replayed any number
//! of times and in any order with the same result. That lets the store keep at
//! most **one hint per (target, key)**: a newer missed write to the same key
//! replaces the older hint, which the target would discard anyway. Memory is
//! bounded by 256 hints per target and by a byte cap on their values
//! (`max_hint_bytes`); past the cap new hints are refused with a log line and
//! read repair is left to heal the key.
//!
//! Hints older than the hint window (default 3 h, as Cassandra's
//! `max_hint_window`) are dropped with a log line: a replica down that long
//! needs a full repair, not a trickle of hints.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use log::{info, warn};
use parking_lot::Mutex;

use crate::cell::{Version, supersedes};
use crate::hlc::Timestamp;

/// One missed write.
#[derive(Debug, Clone)]
struct Hint {
    version: Version,
    created: Instant,
}

#[derive(Default)]
struct TargetHints {
    by_key: BTreeMap<u8, Hint>,
    bytes: usize,
    refused: u64,
}

/// Hints held by this node, per target node.
pub struct HintStore {
    targets: Vec<Mutex<TargetHints>>,
    names: Vec<String>,
    window: Duration,
    max_bytes: usize,
}

/// The outcome of [`HintStore::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The hint is stored (new, or replacing an older one for the same key).
    Stored,
    /// A hint at least as new was already held.
    AlreadyNewer,
    /// The target's byte cap is reached; the hint was not kept.
    Refused,
}

fn cost(v: &Version) -> usize {
    v.value.as_ref().map_or(0, String::len) + 32
}

impl HintStore {
    /// A store for the nodes named `names` (index = ring index).
    pub fn new(names: Vec<String>, window: Duration, max_bytes: usize) -> Self {
        HintStore { targets: names.iter().map(|_| Mutex::new(TargetHints::default())).collect(), names, window, max_bytes }
    }

    /// Keeps `version` of `key` for `target`.
    pub fn add(&self, target: usize, key: u8, version: Version) -> Added {
        let mut t = self.targets[target].lock();
        let old_cost = match t.by_key.get(&key) {
            Some(h) if !supersedes(&version, Some(&h.version)) => return Added::AlreadyNewer,
            Some(h) => cost(&h.version),
            None => 0,
        };
        let new_cost = cost(&version);
        if t.bytes - old_cost + new_cost > self.max_bytes {
            t.refused += 1;
            if t.refused.is_power_of_two() {
                warn!(
                    "hints for {} are at their cap of {} bytes; refused {} hint(s) so far (read repair will heal key {key})",
                    self.names[target], self.max_bytes, t.refused
                );
            }
            return Added::Refused;
        }
        t.bytes = t.bytes - old_cost + new_cost;
        t.by_key.insert(key, Hint { version, created: Instant::now() });
        Added::Stored
    }

    /// Hints held for `target`.
    pub fn count(&self, target: usize) -> usize {
        self.targets[target].lock().by_key.len()
    }

    /// Hints held for all targets.
    pub fn total(&self) -> usize {
        self.targets.iter().map(|t| t.lock().by_key.len()).sum()
    }

    /// The hints to replay to `target`, oldest key first, after dropping expired ones.
    pub fn pending(&self, target: usize) -> Vec<(u8, Version)> {
        self.expire(target, Instant::now());
        self.targets[target].lock().by_key.iter().map(|(k, h)| (*k, h.version.clone())).collect()
    }

    /// Removes the hint for `key` if it still carries timestamp `ts` (a newer one stays).
    pub fn delivered(&self, target: usize, key: u8, ts: Timestamp) {
        let mut t = self.targets[target].lock();
        if t.by_key.get(&key).is_some_and(|h| h.version.ts == ts) {
            let h = t.by_key.remove(&key).expect("checked above");
            t.bytes -= cost(&h.version);
        }
    }

    /// Drops `target`'s hints created before `now - window`; returns how many.
    pub fn expire(&self, target: usize, now: Instant) -> usize {
        let mut t = self.targets[target].lock();
        let window = self.window;
        let before = t.by_key.len();
        let mut freed = 0;
        t.by_key.retain(|_, h| {
            let keep = now.saturating_duration_since(h.created) <= window;
            if !keep {
                freed += cost(&h.version);
            }
            keep
        });
        t.bytes -= freed;
        let dropped = before - t.by_key.len();
        if dropped > 0 {
            info!("dropped {dropped} hint(s) for {} older than the hint window of {:?}", self.names[target], window);
        }
        dropped
    }

    /// Targets that have hints.
    pub fn targets_with_hints(&self) -> Vec<usize> {
        (0..self.targets.len()).filter(|&i| !self.targets[i].lock().by_key.is_empty()).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v(micros: u64, s: &str) -> Version {
        Version::value(Timestamp { micros, node: 1 }, s)
    }

    fn store(window: Duration, max: usize) -> HintStore {
        HintStore::new(vec!["a".into(), "b".into()], window, max)
    }

    #[test]
    fn one_hint_per_key_newest_kept() {
        let h = store(Duration::from_secs(60), 1 << 20);
        assert_eq!(h.add(1, 5, v(10, "x")), Added::Stored);
        assert_eq!(h.add(1, 5, v(9, "older")), Added::AlreadyNewer);
        assert_eq!(h.add(1, 5, v(11, "y")), Added::Stored);
        assert_eq!(h.add(1, 6, v(3, "z")), Added::Stored);
        assert_eq!(h.count(1), 2);
        assert_eq!(h.count(0), 0);
        let p = h.pending(1);
        assert_eq!(p, vec![(5, v(11, "y")), (6, v(3, "z"))]);
    }

    #[test]
    fn delivered_removes_only_the_same_version() {
        let h = store(Duration::from_secs(60), 1 << 20);
        h.add(0, 1, v(10, "x"));
        h.add(0, 1, v(12, "newer")); // arrives while 10 is being replayed
        h.delivered(0, 1, Timestamp { micros: 10, node: 1 });
        assert_eq!(h.count(0), 1, "the newer hint must survive delivery of the older");
        h.delivered(0, 1, Timestamp { micros: 12, node: 1 });
        assert_eq!(h.count(0), 0);
        assert_eq!(h.targets[0].lock().bytes, 0);
    }

    #[test]
    fn byte_cap_refuses() {
        let h = store(Duration::from_secs(60), 100);
        assert_eq!(h.add(0, 1, v(1, &"x".repeat(60))), Added::Stored);
        assert_eq!(h.add(0, 2, v(1, &"x".repeat(60))), Added::Refused);
        assert_eq!(h.add(0, 1, v(2, "short")), Added::Stored, "replacing within the cap is fine");
        assert_eq!(h.add(0, 2, v(1, "short")), Added::Stored);
    }

    #[test]
    fn old_hints_expire() {
        let h = store(Duration::from_millis(50), 1 << 20);
        h.add(0, 1, v(1, "x"));
        assert_eq!(h.expire(0, Instant::now()), 0);
        assert_eq!(h.expire(0, Instant::now() + Duration::from_secs(1)), 1);
        assert_eq!(h.count(0), 0);
        assert_eq!(h.targets[0].lock().bytes, 0);
    }
}
