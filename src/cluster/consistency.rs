//! Consistency levels and the quorum tracker.
//!
//! A client names a level per request; the level fixes how many of the key's
//! `RF` replicas must answer before the coordinator replies:
//!
//! | level  | replies needed | with RF 3 |
//! |--------|----------------|-----------|
//! | ONE    | 1              | 1         |
//! | QUORUM | RF / 2 + 1     | 2         |
//! | ALL    | RF             | 3         |
//! | SERIAL | RF / 2 + 1     | 2         |
//!
//! Reads and writes at QUORUM overlap in at least one replica (`2 * (RF/2+1) >
//! RF`), which with blocking read repair gives read-your-writes and monotonic
//! reads. ONE trades that for latency and availability.
//!
//! SERIAL is not counted by a tracker: the operation runs Paxos among the
//! key's replicas ([`crate::paxos`], [`crate::node::serial`]), which needs
//! promises and accepts from a quorum. It is linearizable per key, and the
//! only level of a conditional put or delete (compare-and-set).
//!
//! [`QuorumTracker`] counts acks and failures for one request and says when the
//! outcome is known, independent of any transport — the coordinator feeds it
//! whatever the network brings, tests feed it tables.

use std::fmt;

use crate::error::{Error, Result};
use crate::proto;

/// A consistency level.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub enum Consistency {
    /// One replica.
    #[default]
    One,
    /// A majority of the key's replicas.
    Quorum,
    /// Every replica of the key.
    All,
    /// Paxos among the key's replicas: a quorum of promises (and accepts).
    Serial,
}

impl Consistency {
    /// Replies needed with replication factor `rf`.
    pub fn required(self, rf: usize) -> usize {
        match self {
            Consistency::One => 1.min(rf),
            Consistency::Quorum => rf / 2 + 1,
            Consistency::All => rf,
            Consistency::Serial => rf / 2 + 1,
        }
    }

    /// Parses `one`, `quorum`, `all` or `serial`, in any case.
    pub fn parse(s: &str) -> Option<Consistency> {
        match s.to_ascii_lowercase().as_str() {
            "one" => Some(Consistency::One),
            "quorum" => Some(Consistency::Quorum),
            "all" => Some(Consistency::All),
            "serial" => Some(Consistency::Serial),
            _ => None,
        }
    }

    /// The wire value.
    pub fn to_proto(self) -> proto::Consistency {
        match self {
            Consistency::One => proto::Consistency::One,
            Consistency::Quorum => proto::Consistency::Quorum,
            Consistency::All => proto::Consistency::All,
            Consistency::Serial => proto::Consistency::Serial,
        }
    }

    /// From the wire value; unset means ONE, an unknown number is refused.
    pub fn from_proto(raw: i32) -> Result<Consistency> {
        match proto::Consistency::try_from(raw) {
            Ok(proto::Consistency::Unspecified | proto::Consistency::One) => Ok(Consistency::One),
            Ok(proto::Consistency::Quorum) => Ok(Consistency::Quorum),
            Ok(proto::Consistency::All) => Ok(Consistency::All),
            Ok(proto::Consistency::Serial) => Ok(Consistency::Serial),
            Err(_) => Err(Error::InvalidRequest(format!("unknown consistency level {raw}; use ONE, QUORUM, ALL or SERIAL"))),
        }
    }
}

impl fmt::Display for Consistency {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Consistency::One => "ONE",
            Consistency::Quorum => "QUORUM",
            Consistency::All => "ALL",
            Consistency::Serial => "SERIAL",
        })
    }
}

/// What a tracker knows so far.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Neither enough acks nor enough failures yet.
    Pending,
    /// `required` acks arrived.
    Reached,
    /// So many replicas failed that `required` acks can no longer arrive.
    Impossible,
}

/// Counts acks and failures of one request among `total` replicas.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct QuorumTracker {
    required: usize,
    total: usize,
    acks: usize,
    failures: usize,
}

impl QuorumTracker {
    /// A tracker that needs `required` of `total` acks.
    pub fn new(required: usize, total: usize) -> Self {
        QuorumTracker { required, total, acks: 0, failures: 0 }
    }

    /// Records an ack.
    pub fn ack(&mut self) -> Decision {
        self.acks += 1;
        self.decision()
    }

    /// Records a failure (error, refused, lost connection, timed out).
    pub fn fail(&mut self) -> Decision {
        self.failures += 1;
        self.decision()
    }

    /// The current decision. Once `Reached` or `Impossible`, it stays so.
    pub fn decision(&self) -> Decision {
        if self.acks >= self.required {
            Decision::Reached
        } else if self.total.saturating_sub(self.failures) < self.required {
            Decision::Impossible
        } else {
            Decision::Pending
        }
    }

    /// Acks so far.
    pub fn acks(&self) -> usize {
        self.acks
    }

    /// Failures so far.
    pub fn failures(&self) -> usize {
        self.failures
    }

    /// Acks needed.
    pub fn required(&self) -> usize {
        self.required
    }

    /// Whether every replica has answered one way or the other.
    pub fn complete(&self) -> bool {
        self.acks + self.failures >= self.total
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use Consistency::*;

    #[test]
    fn required_table() {
        let table = [(1, [1, 1, 1]), (2, [1, 2, 2]), (3, [1, 2, 3]), (4, [1, 3, 4]), (5, [1, 3, 5]), (7, [1, 4, 7])];
        for (rf, [one, quorum, all]) in table {
            assert_eq!(One.required(rf), one, "ONE rf={rf}");
            assert_eq!(Quorum.required(rf), quorum, "QUORUM rf={rf}");
            assert_eq!(All.required(rf), all, "ALL rf={rf}");
            assert!(2 * Quorum.required(rf) > rf, "quorums overlap at rf={rf}");
        }
    }

    /// Each row: level, then a sequence of replies (`a` ack, `f` fail), then the
    /// decision after each reply.
    #[test]
    fn tracker_table() {
        use Decision::*;
        let table: &[(Consistency, &str, &[Decision])] = &[
            (One, "a", &[Reached]),
            (One, "ffa", &[Pending, Pending, Reached]),
            (One, "fff", &[Pending, Pending, Impossible]),
            (Quorum, "aa", &[Pending, Reached]),
            (Quorum, "faa", &[Pending, Pending, Reached]),
            (Quorum, "aff", &[Pending, Pending, Impossible]),
            (Quorum, "ff", &[Pending, Impossible]),
            (All, "aaa", &[Pending, Pending, Reached]),
            (All, "aaf", &[Pending, Pending, Impossible]),
            (All, "f", &[Impossible]),
        ];
        for (level, replies, want) in table {
            let mut t = QuorumTracker::new(level.required(3), 3);
            let got: Vec<Decision> = replies.chars().map(|c| if c == 'a' { t.ack() } else { t.fail() }).collect();
            assert_eq!(&got, want, "{level} {replies}");
        }
    }

    #[test]
    fn reached_is_sticky() {
        let mut t = QuorumTracker::new(1, 3);
        assert_eq!(t.ack(), Decision::Reached);
        assert_eq!(t.fail(), Decision::Reached);
        assert_eq!(t.fail(), Decision::Reached);
        assert!(t.complete());
    }

    #[test]
    fn parse_and_wire() {
        assert_eq!(Consistency::parse("QuOrUm"), Some(Quorum));
        assert_eq!(Consistency::parse("two"), None);
        assert_eq!(Consistency::parse("Serial"), Some(Serial));
        assert_eq!(Serial.required(5), 3);
        for c in [One, Quorum, All, Serial] {
            assert_eq!(Consistency::from_proto(c.to_proto() as i32).unwrap(), c);
        }
        assert_eq!(Consistency::from_proto(0).unwrap(), One);
        assert!(Consistency::from_proto(99).is_err());
    }
}
