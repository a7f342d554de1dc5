//! A linearizability checker for histories of key-value operations.
//!
//! # What linearizability is
//!
//! A test records a *history*: every operation a client made, with the time
//! it was invoked, the time its answer came and the answer. The store is
//! *linearizable* (Herlihy & Wing, 1990) if each operation can be given a
//! single instant — its *linearization point* — somewhere between its
//! invocation and its response, such that replaying the operations one at a
//! time in the order of those instants on a plain sequential register gives
//! exactly the answers recorded. Equivalently: there is a total order of the
//! operations that (a) respects real time — if A returned before B was
//! invoked, A comes first — and (b) is a legal sequential history of the
//! model. Operations that overlap in time may be ordered either way; that
//! freedom is what makes the check a search.
//!
//! The model here is one register per key holding bytes or nothing (absent,
//! the state of a key never written or deleted). The operations are
//! [`Call::Read`] (answers the contents), [`Call::Write`] (a put, or with
//! `None` a delete) and [`Call::Cas`] (sets `new` only if the contents match
//! its [`Expect`]; answers [`Ret::Applied`], or [`Ret::NotApplied`] with the
//! contents it found). Each key starts absent unless the caller says
//! otherwise ([`History::set_initial`]).
//!
//! # The algorithm
//!
//! Wing & Gong (1993) search for such an order directly. Lay out the calls
//! and returns of all operations in time order. At any moment the operations
//! that may be linearized next are those whose call comes before the first
//! return of an operation not yet linearized (that operation's point must lie
//! before its return, so nothing invoked later can precede it). Try each such
//! candidate in turn: if the model accepts it (a read must see the current
//! contents, an applied CAS must find what it expected, and so on), apply it,
//! take its call and return out of the list and search on from the start; if
//! none fits, undo the last choice and try the next candidate after it. When
//! every operation has been placed the history is linearizable; when the
//! first choice has been undone with no candidate left, it is not.
//!
//! Plain backtracking is exponential in the number of overlapping operations.
//! Lowe ("Testing for linearizability", 2017) observed that two partial
//! searches that have linearized the *same set* of operations and left the
//! register in the *same state* have the same future, so a cache of the
//! configurations (set of linearized operations as a bitset, register
//! contents) already explored cuts every repeated one. This is the search of
//! Knossos' and Porcupine's checkers, written afresh here: a doubly linked
//! list of events that choices lift out and put back in place, a stack of
//! choices, and a hash set of configurations, with values interned per key
//! so a configuration is a few machine words.
//!
//! # Partitioning
//!
//! Linearizability is *local* (Herlihy & Wing): a history is linearizable if
//! and only if the sub-history of each object is. Every operation here
//! touches one key, so each key's operations are checked on their own
//! ([`check`] walks the keys in order). That turns one search over n
//! operations into many small ones — its cost depends on how many operations
//! on the *same key* overlap, not on the length of the history — and it names
//! the key of a violation.
//!
//! # The time budget
//!
//! Some histories are beyond any search: many overlapping writes, with a
//! violation at the end, force it through every order of them. So the check
//! takes a budget, a [`Duration`](std::time::Duration) for the whole history.
//! The search looks at the clock every thousand steps; once the budget is
//! spent, the key being searched and every key not yet started are reported
//! as [`KeyVerdict::Unknown`]. The overall [`Verdict`] is the first key found
//! not linearizable if any (that answer is certain whatever happened to the
//! other keys), else [`Verdict::Unknown`] naming the first key left
//! unchecked, else [`Verdict::Linearizable`]. [`Report::operations_checked`]
//! counts the operations of keys with a definite answer.
//!
//! # Unknown outcomes
//!
//! A client that times out does not know whether its write was applied: it
//! may take effect at any moment after its invocation — even long after the
//! client gave up — or never. Such an operation ([`History::unknown`], or one
//! left pending) has a response time of infinity: its call goes into the list
//! but no return, so it stays a candidate from its invocation on and never
//! holds the search back. The search succeeds as soon as every operation that
//! *did* return has been placed; unknown ones still unplaced then are those
//! that never took effect. (An unknown write could as well be placed after
//! the last known operation, where nothing observes it; "never" matters for a
//! CAS whose expected contents never came.) An unknown CAS is modelled as
//! applied (it needs its
//! expected contents): one that took effect without applying changed nothing,
//! which is the same as never taking effect. An unknown read constrains
//! nothing and is dropped before the search. Operations that certainly did
//! not take effect (refused before anything was sent) should not be recorded
//! at all.
//!
//! Times are plain numbers ([`Time`]); calls sort before returns at the same
//! time, so operations that merely touch count as concurrent.
//!
//! # Cost
//!
//! With the cache, the search is close to linear when few operations on a key
//! overlap: 10,000 operations of 8 clients over 100 keys take about 3 ms in a
//! release build (about 80 ms unoptimised). Each configuration costs a hash of
//! the bitset, so one key with thousands of operations costs more: 10,000
//! operations of 10 clients on one key, 10% of unknown outcome, reach about
//! 156,000 configurations: about 0.6 s in a release build (3 s unoptimised).
//!
//! # Using it
//!
//! ```
//! use std::time::Duration;
//! use quorumkv::check::{Call, History, Ret, Verdict};
//!
//! let mut h = History::new();
//! let w = h.invoke(1, "k", Call::Write(Some(b"a".to_vec())));
//! let r = h.invoke(2, "k", Call::Read); // overlaps the write
//! h.complete(w, Ret::Written);
//! h.complete(r, Ret::Read(Some(b"a".to_vec())));
//! let stale = h.invoke(2, "k", Call::Read); // after the write returned
//! h.complete(stale, Ret::Read(None));
//! let report = h.check(Duration::from_secs(5));
//! assert!(matches!(report.verdict, Verdict::NotLinearizable { key: "k", .. }));
//! ```

mod history;
mod linearizability;
#[cfg(test)]
mod tests;

pub use history::{Call, Expect, History, OpId, Operation, Outcome, Ret, Time};
pub use linearizability::{KeyReport, KeyVerdict, Report, Verdict, check};
