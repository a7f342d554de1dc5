//! Ballots: a hybrid-logical timestamp plus the proposer's node id.

use std::fmt;

use crate::storage::hlc::Timestamp;

/// A Paxos ballot. Ordered by HLC microseconds, then node id, so two
/// proposers never hold the same ballot and a proposer that observed a ballot
/// (through [`crate::storage::hlc::Hlc::observe`]) draws a higher one next.
///
/// The ballot that commits a value is also the value's cell timestamp, so
/// later commits win the store's last-write-wins merge.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Ballot(pub Timestamp);

impl Ballot {
    /// Below every real ballot: "nothing promised / accepted / committed".
    pub const ZERO: Ballot = Ballot(Timestamp { micros: 0, node: 0 });

    /// The ballot's timestamp (the commit's cell timestamp).
    pub fn ts(self) -> Timestamp {
        self.0
    }
}

impl fmt::Display for Ballot {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{:08x}", self.0.micros, self.0.node)
    }
}
