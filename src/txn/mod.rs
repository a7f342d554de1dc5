//! Multi-key transactions (issue 15), built piece by piece as
//! `docs/TRANSACTIONS-PLAN.md` lays out; what is here so far is the
//! participants' side, I/O-free:
//!
//! * [`intents`]: the intents a replica holds for transactions in flight —
//!   a prepare takes a key (or is refused, naming who holds it), a
//!   resolution turns a committed intent into the cell to write and drops
//!   an aborted one, and the ones older than the timeout are listed for
//!   recovery. Every change returns the record that makes it durable; the
//!   caller logs it before answering, as with the Paxos acceptor.
//!
//! Not yet: the log records and their replay in a replica, the transaction
//! record decided by Paxos, the coordinator, recovery and `mget`.

pub mod intents;

use crate::storage::hlc::Timestamp;

/// A transaction's id: its coordinator's HLC timestamp when it began
/// (unique: the clock's node id is in it), which also orders transactions
/// by age for conflicts (the smaller, the older).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct TxnId(pub Timestamp);

impl std::fmt::Display for TxnId {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "txn {}.{}", self.0.micros, self.0.node)
    }
}
