//! Hinted handoff: writes kept for replicas that missed them.
//!
//! When a replica does not ack a write — it is known down, it refused, the
//! connection broke, or it did not answer in time — the coordinator keeps a
//! *hint*: the target, the key and the version (value and original
//! timestamp). When the failure detector sees the target alive again, the
//! hint worker replays the hints to it, throttled, and removes each one only
//! after the target acked it. Any member can be a target, including one that
//! joined after this node started (each epoch installed adds its members):
//! a write to a joining replica whose link is not up yet is hinted too.
//!
//! Because replicas merge by last-write-wins, a hint can be replayed any number
//! of times and in any order with the same result. That lets the store keep at
//! most **one hint per (target, key)**: a newer missed write to the same key
//! replaces the older hint, which the target would discard anyway. Memory is
//! bounded by a byte cap per target on their keys and values
//! (`max_hint_bytes`); past the cap new hints are refused with a log line and
//! read repair is left to heal the key.
//!
//! Hints older than the hint window (default 3 h, as Cassandra's
//! `max_hint_window`) are dropped with a log line: a replica down that long
//! needs a full repair, not a trickle of hints.
//!
//! With a write-ahead log, every hint kept and every hint delivered is logged
//! (and snapshots hold the hints), so hints survive a restart of the replica
//! that holds them and are replayed afterwards, still subject to the window
//! (their creation time is wall-clock time).

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::Duration;

use log::{info, warn};
use parking_lot::{Mutex, RwLock};

use crate::cluster::ring::{Key, NodeId};
use crate::proto;
use crate::storage::cell::{Version, supersedes};
use crate::storage::hlc::Timestamp;
use crate::storage::wal::{Wal, wall_micros};

/// One missed write.
#[derive(Debug, Clone)]
struct Hint {
    version: Version,
    /// Wall-clock microseconds when the hint was made.
    created: u64,
}

#[derive(Default)]
struct TargetHints {
    by_key: BTreeMap<Key, Hint>,
    bytes: usize,
    refused: u64,
}

/// A node hints can be kept for: its id, its name (what the log records) and its hints.
struct Target {
    id: NodeId,
    name: String,
    hints: Mutex<TargetHints>,
}

/// Hints held by this node, per target node.
pub struct HintStore {
    /// The nodes hints can be kept for: the members when the store was made,
    /// and those that joined since ([`add_targets`](Self::add_targets)).
    targets: RwLock<Vec<Arc<Target>>>,
    window: Duration,
    max_bytes: usize,
    wal: Option<Arc<Wal>>,
}

/// The outcome of [`HintStore::add`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Added {
    /// The hint is stored (new, or replacing an older one for the same key).
    Stored,
    /// A hint at least as new was already held.
    AlreadyNewer,
    /// The target's byte cap is reached (or it is no known node); the hint was not kept.
    Refused,
}

fn cost(key: &[u8], v: &Version) -> usize {
    key.len() + v.value.as_ref().map_or(0, |v| v.len()) + 32
}

impl HintStore {
    /// A store for the nodes `targets` (id and name), logging to `wal` if given.
    pub fn new(targets: Vec<(NodeId, String)>, window: Duration, max_bytes: usize, wal: Option<Arc<Wal>>) -> Self {
        let store = HintStore { targets: RwLock::new(Vec::new()), window, max_bytes, wal };
        store.add_targets(targets);
        store
    }

    /// Makes the nodes of `targets` (id and name) ones hints can be kept for,
    /// those not already (members that joined after the store was made).
    pub fn add_targets(&self, targets: impl IntoIterator<Item = (NodeId, String)>) {
        let mut known = self.targets.write();
        for (id, name) in targets {
            if !known.iter().any(|t| t.id == id) {
                known.push(Arc::new(Target { id, name, hints: Mutex::new(TargetHints::default()) }));
            }
        }
    }

    /// Forgets the targets `keep` refuses, and their hints (members removed
    /// for good: nothing will ever replay to them).
    pub fn retain_targets(&self, keep: impl Fn(NodeId) -> bool) {
        self.targets.write().retain(|t| keep(t.id));
    }

    /// Logs every hint kept and delivered to `wal` from now on (after recovery has loaded the hints).
    pub fn set_wal(&mut self, wal: Option<Arc<Wal>>) {
        self.wal = wal;
    }

    fn target(&self, id: NodeId) -> Option<Arc<Target>> {
        self.targets.read().iter().find(|t| t.id == id).cloned()
    }

    fn named(&self, name: &str) -> Option<Arc<Target>> {
        self.targets.read().iter().find(|t| t.name == name).cloned()
    }

    fn log(&self, record: proto::log_record::Kind) -> crate::Result<()> {
        match &self.wal {
            Some(wal) => wal.append(&proto::LogRecord { kind: Some(record) }).map(|_| ()),
            None => Ok(()),
        }
    }

    /// Keeps `version` of `key` for `target`.
    pub fn add(&self, id: NodeId, key: &Key, version: Version) -> Added {
        let Some(target) = self.target(id) else { return Added::Refused };
        let mut t = target.hints.lock();
        let old_cost = match t.by_key.get(key) {
            Some(h) if !supersedes(&version, Some(&h.version)) => return Added::AlreadyNewer,
            Some(h) => cost(key.as_bytes(), &h.version),
            None => 0,
        };
        let new_cost = cost(key.as_bytes(), &version);
        if t.bytes - old_cost + new_cost > self.max_bytes {
            t.refused += 1;
            if t.refused.is_power_of_two() {
                warn!(
                    "hints for {} are at their cap of {} bytes; refused {} hint(s) so far (read repair will heal key {key})",
                    target.name, self.max_bytes, t.refused
                );
            }
            return Added::Refused;
        }
        let created = wall_micros();
        let record = proto::HintAdd {
            target: target.name.clone(),
            legacy_key: 0,
            key: key.to_vec(),
            version: Some(version.to_proto()),
            created_micros: created,
        };
        if let Err(e) = self.log(proto::log_record::Kind::HintAdd(record)) {
            t.refused += 1;
            if t.refused.is_power_of_two() {
                warn!("cannot keep a hint for {} (key {key}): {e}", target.name);
            }
            return Added::Refused;
        }
        t.bytes = t.bytes - old_cost + new_cost;
        t.by_key.insert(key.clone(), Hint { version, created });
        Added::Stored
    }

    /// Restores a hint found in the log or a snapshot (not logged again).
    pub fn load(&self, target: &str, key: Key, version: Version, created: u64) {
        let Some(target) = self.named(target) else { return };
        let mut t = target.hints.lock();
        let old_cost = match t.by_key.get(&key) {
            Some(h) if !supersedes(&version, Some(&h.version)) => return,
            Some(h) => cost(key.as_bytes(), &h.version),
            None => 0,
        };
        t.bytes = t.bytes - old_cost + cost(key.as_bytes(), &version);
        t.by_key.insert(key, Hint { version, created });
    }

    /// Replays a delivery found in the log.
    pub fn load_delivered(&self, target: &str, key: &[u8], ts: Timestamp) {
        if let Some(target) = self.named(target) {
            Self::remove_if(&target, key, ts);
        }
    }

    /// Every hint held, for a snapshot.
    pub fn export(&self) -> Vec<proto::HintAdd> {
        let mut out = Vec::new();
        for t in self.targets.read().iter() {
            for (key, h) in &t.hints.lock().by_key {
                out.push(proto::HintAdd {
                    target: t.name.clone(),
                    legacy_key: 0,
                    key: key.to_vec(),
                    version: Some(h.version.to_proto()),
                    created_micros: h.created,
                });
            }
        }
        out
    }

    /// Hints held for `target`.
    pub fn count(&self, id: NodeId) -> usize {
        self.target(id).map_or(0, |target| target.hints.lock().by_key.len())
    }

    /// Hints held for all targets.
    pub fn total(&self) -> usize {
        self.targets.read().iter().map(|t| t.hints.lock().by_key.len()).sum()
    }

    /// The hints to replay to `target`, oldest key first, after dropping expired ones.
    pub fn pending(&self, id: NodeId) -> Vec<(Key, Version)> {
        let Some(target) = self.target(id) else { return Vec::new() };
        self.expire(id, wall_micros());
        target.hints.lock().by_key.iter().map(|(k, h)| (k.clone(), h.version.clone())).collect()
    }

    /// Removes the hint for `key` if it still carries timestamp `ts` (a newer one stays), and logs that.
    pub fn delivered(&self, id: NodeId, key: &[u8], ts: Timestamp) {
        let Some(target) = self.target(id) else { return };
        if Self::remove_if(&target, key, ts) {
            let record =
                proto::HintDone { target: target.name.clone(), legacy_key: 0, key: key.to_vec(), micros: ts.micros, node: ts.node };
            // If this cannot be logged the hint is replayed again after a restart: harmless.
            let _ = self.log(proto::log_record::Kind::HintDone(record));
        }
    }

    fn remove_if(target: &Target, key: &[u8], ts: Timestamp) -> bool {
        let mut t = target.hints.lock();
        if t.by_key.get(key).is_some_and(|h| h.version.ts == ts) {
            let h = t.by_key.remove(key).expect("checked above");
            t.bytes -= cost(key, &h.version);
            true
        } else {
            false
        }
    }

    /// Drops `target`'s hints created before `now - window` (wall-clock microseconds); returns how many.
    pub fn expire(&self, id: NodeId, now: u64) -> usize {
        let Some(target) = self.target(id) else { return 0 };
        let mut t = target.hints.lock();
        let window = self.window;
        let before = t.by_key.len();
        let mut freed = 0;
        t.by_key.retain(|k, h| {
            let keep = now.saturating_sub(h.created) <= window.as_micros() as u64;
            if !keep {
                freed += cost(k.as_bytes(), &h.version);
            }
            keep
        });
        t.bytes -= freed;
        let dropped = before - t.by_key.len();
        if dropped > 0 {
            info!("dropped {dropped} hint(s) for {} older than the hint window of {:?}", target.name, window);
        }
        dropped
    }

    /// Targets that have hints.
    pub fn targets_with_hints(&self) -> Vec<NodeId> {
        self.targets.read().iter().filter(|t| !t.hints.lock().by_key.is_empty()).map(|t| t.id).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn k(i: u8) -> Key {
        Key::byte(i)
    }

    fn v(micros: u64, s: &str) -> Version {
        Version::value(Timestamp { micros, node: 1 }, s)
    }

    fn store(window: Duration, max: usize) -> HintStore {
        HintStore::new(vec![(NodeId(0), "a".into()), (NodeId(1), "b".into())], window, max, None)
    }

    #[test]
    fn one_hint_per_key_newest_kept() {
        let h = store(Duration::from_secs(60), 1 << 20);
        assert_eq!(h.add(NodeId(1), &k(5), v(10, "x")), Added::Stored);
        assert_eq!(h.add(NodeId(1), &k(5), v(9, "older")), Added::AlreadyNewer);
        assert_eq!(h.add(NodeId(1), &k(5), v(11, "y")), Added::Stored);
        assert_eq!(h.add(NodeId(1), &k(6), v(3, "z")), Added::Stored);
        assert_eq!(h.count(NodeId(1)), 2);
        assert_eq!(h.count(NodeId(0)), 0);
        let p = h.pending(NodeId(1));
        assert_eq!(p, vec![(k(5), v(11, "y")), (k(6), v(3, "z"))]);
    }

    #[test]
    fn delivered_removes_only_the_same_version() {
        let h = store(Duration::from_secs(60), 1 << 20);
        h.add(NodeId(0), &k(1), v(10, "x"));
        h.add(NodeId(0), &k(1), v(12, "newer")); // arrives while 10 is being replayed
        h.delivered(NodeId(0), k(1).as_bytes(), Timestamp { micros: 10, node: 1 });
        assert_eq!(h.count(NodeId(0)), 1, "the newer hint must survive delivery of the older");
        h.delivered(NodeId(0), k(1).as_bytes(), Timestamp { micros: 12, node: 1 });
        assert_eq!(h.count(NodeId(0)), 0);
        assert_eq!(h.targets.read()[0].hints.lock().bytes, 0);
    }

    #[test]
    fn byte_cap_refuses() {
        let h = store(Duration::from_secs(60), 101);
        assert_eq!(h.add(NodeId(0), &k(1), v(1, &"x".repeat(60))), Added::Stored);
        assert_eq!(h.add(NodeId(0), &k(2), v(1, &"x".repeat(60))), Added::Refused);
        assert_eq!(h.add(NodeId(0), &k(1), v(2, "short")), Added::Stored, "replacing within the cap is fine");
        assert_eq!(h.add(NodeId(0), &k(2), v(1, "short")), Added::Stored);
    }

    /// A member that joined after the store was made: its hints were refused
    /// (found by the nemesis's joins: a write to a joining replica whose link
    /// was not up yet was acknowledged and never hinted).
    #[test]
    fn a_target_added_later_keeps_hints() {
        let h = store(Duration::from_secs(60), 1 << 20);
        assert_eq!(h.add(NodeId(7), &k(1), v(1, "x")), Added::Refused, "no such node");
        h.add_targets([(NodeId(0), "a".to_string()), (NodeId(7), "joined".to_string())]);
        assert_eq!(h.add(NodeId(7), &k(1), v(1, "x")), Added::Stored);
        assert_eq!(h.targets_with_hints(), vec![NodeId(7)]);
        assert_eq!(h.export()[0].target, "joined");
        assert_eq!(h.targets.read().len(), 3, "a known node is not added twice");
        h.retain_targets(|id| id != NodeId(7));
        assert!(h.targets_with_hints().is_empty(), "a removed member's hints are gone");
        assert_eq!(h.targets.read().len(), 2);
    }

    #[test]
    fn old_hints_expire() {
        let h = store(Duration::from_millis(50), 1 << 20);
        h.add(NodeId(0), &k(1), v(1, "x"));
        assert_eq!(h.expire(NodeId(0), wall_micros()), 0);
        assert_eq!(h.expire(NodeId(0), wall_micros() + 1_000_000), 1);
        assert_eq!(h.count(NodeId(0)), 0);
        assert_eq!(h.targets.read()[0].hints.lock().bytes, 0);
    }
}
