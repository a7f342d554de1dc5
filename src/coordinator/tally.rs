//! Counting one call's replies toward its level, and why replicas failed.

use std::sync::Arc;

use crate::cluster::consistency::{Decision, QuorumTracker};
use crate::cluster::ring::{NodeId, Ring};
use crate::error::Error;

/// Short reasons for failures, for error messages (`replica2: connection refused`).
#[derive(Debug, Default, Clone)]
pub struct Failures(Vec<String>);

impl Failures {
    fn push(&mut self, who: &str, e: &Error) {
        if self.0.len() < 4 {
            self.0.push(format!("{who}: {}", e.message()));
        }
    }

    /// `; a: why; b: why`, or empty.
    pub fn suffix(&self) -> String {
        if self.0.is_empty() { String::new() } else { format!(" ({})", self.0.join("; ")) }
    }
}

/// The replies of one call so far: acks and failures counted toward the level,
/// with the reasons for the failures. Shared by the read and write machines.
pub struct Tally {
    /// The ring, to name a replica that failed (looked up only then).
    ring: Arc<Ring>,
    /// The replica of each slot (the ring's shared list for the key: no copy per call).
    targets: Arc<[NodeId]>,
    tracker: QuorumTracker,
    failures: Failures,
}

impl Tally {
    /// A tally over `targets` needing `required` acks; `ring` names them in errors.
    pub fn new(targets: impl Into<Arc<[NodeId]>>, ring: Arc<Ring>, required: usize) -> Self {
        let targets = targets.into();
        let n = targets.len();
        Tally { ring, targets, tracker: QuorumTracker::new(required, n), failures: Failures::default() }
    }

    pub(crate) fn ack(&mut self) {
        self.tracker.ack();
    }

    pub(crate) fn fail(&mut self, slot: usize, e: &Error) {
        self.tracker.fail();
        let name = self.ring.name(self.targets[slot]);
        self.failures.push(&name, e);
    }

    /// The replica of `slot`.
    pub fn target(&self, slot: usize) -> NodeId {
        self.targets[slot]
    }

    /// Every slot's replica.
    pub fn targets(&self) -> &[NodeId] {
        &self.targets
    }

    /// The ring the targets belong to.
    pub fn ring(&self) -> &Arc<Ring> {
        &self.ring
    }

    /// The tracker's verdict.
    pub fn decision(&self) -> Decision {
        self.tracker.decision()
    }

    /// Acks so far.
    pub fn acks(&self) -> usize {
        self.tracker.acks()
    }

    /// Why replicas failed.
    pub fn failures(&self) -> &Failures {
        &self.failures
    }

    /// Acks needed.
    pub fn required(&self) -> usize {
        self.tracker.required()
    }

    /// Whether the outcome is known.
    pub fn settled(&self) -> bool {
        self.decision() != Decision::Pending
    }

    /// Whether every slot has an outcome.
    pub fn complete(&self) -> bool {
        self.tracker.complete()
    }
}

/// Which slots are in a set: a bitmask up to 128 slots (every real RF), so a call allocates nothing for it.
#[derive(Debug, Clone)]
pub enum SlotSet {
    /// Up to 128 slots.
    Small(u128),
    /// More.
    Large(Vec<bool>),
}

impl SlotSet {
    /// An empty set over `slots` slots.
    pub fn new(slots: usize) -> Self {
        if slots <= 128 { SlotSet::Small(0) } else { SlotSet::Large(vec![false; slots]) }
    }

    /// Adds `slot`; false if it was already in.
    pub fn insert(&mut self, slot: usize) -> bool {
        match self {
            SlotSet::Small(bits) => {
                let bit = 1u128 << slot;
                let new = *bits & bit == 0;
                *bits |= bit;
                new
            }
            SlotSet::Large(v) => !std::mem::replace(&mut v[slot], true),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slot_sets_report_each_slot_once_small_and_large() {
        for slots in [1, 3, 64, 127, 128, 129, 256] {
            let mut set = SlotSet::new(slots);
            assert_eq!(matches!(set, SlotSet::Small(_)), slots <= 128, "{slots} slots");
            let mut picked = vec![0, slots / 2, slots - 1];
            picked.dedup();
            for &slot in &picked {
                assert!(set.insert(slot), "slot {slot} of {slots}: first insert");
            }
            for &slot in &picked {
                assert!(!set.insert(slot), "slot {slot} of {slots}: second insert");
            }
            if slots > 3 {
                // Slot 1 is none of the picked ones: inserting the others did not set it.
                assert!(set.insert(1), "slot 1 of {slots} was never inserted");
            }
        }
    }
}
