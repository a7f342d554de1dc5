//! Recording a history: operations on per-key registers, what each call
//! returned (or that its outcome is unknown), and when.

use std::collections::BTreeMap;
use std::fmt;
use std::time::Duration;

use super::linearizability::{self, Report};

/// A point in time. Any unit does (nanoseconds since a run began, or ticks of
/// the [`History`] counter): the checker only compares times.
pub type Time = u64;

/// What a compare-and-set expects the register to hold.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Expect {
    /// This value.
    Value(Vec<u8>),
    /// No value: the key is absent (never written, or deleted).
    Absent,
}

impl Expect {
    /// The expected register contents, `None` for absent.
    pub fn as_value(&self) -> Option<&[u8]> {
        match self {
            Expect::Value(v) => Some(v),
            Expect::Absent => None,
        }
    }
}

/// An operation's call: what a client asked of one key's register.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Call {
    /// Read the register.
    Read,
    /// Set the register: `Some` is a put, `None` a delete.
    Write(Option<Vec<u8>>),
    /// Set the register to `new` if it holds what `expect` says.
    Cas {
        /// The contents that let the change through.
        expect: Expect,
        /// The contents after a change: `Some` a value, `None` absent.
        new: Option<Vec<u8>>,
    },
}

/// What a completed call returned.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Ret {
    /// A [`Call::Read`]'s answer: the value, or `None` for absent.
    Read(Option<Vec<u8>>),
    /// A [`Call::Write`] was acknowledged.
    Written,
    /// A [`Call::Cas`] found what it expected and set the new contents.
    Applied,
    /// A [`Call::Cas`] found something else and changed nothing.
    NotApplied {
        /// The contents it found (`None`: absent).
        current: Option<Vec<u8>>,
    },
}

impl Ret {
    /// Whether this is a possible answer to `call`.
    pub fn answers(&self, call: &Call) -> bool {
        matches!(
            (call, self),
            (Call::Read, Ret::Read(_)) | (Call::Write(_), Ret::Written) | (Call::Cas { .. }, Ret::Applied | Ret::NotApplied { .. })
        )
    }
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Invoked, and neither completed nor marked unknown yet. The checker
    /// treats it exactly like [`Outcome::Unknown`].
    Pending,
    /// Completed at `at` with `ret`.
    Returned {
        /// When the answer came.
        at: Time,
        /// The answer.
        ret: Ret,
    },
    /// The client gave up (a timeout, a lost connection): the operation may
    /// have taken effect at any time after its invocation, or never.
    Unknown,
}

/// Identifies an operation recorded in a [`History`]: its position in
/// [`History::operations`], also shown as `#n` in explanations.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct OpId(usize);

impl OpId {
    /// The position of the operation in [`History::operations`].
    pub fn index(self) -> usize {
        self.0
    }
}

impl fmt::Display for OpId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "#{}", self.0)
    }
}

/// One client's call on one key, with its times and outcome. Made only by a
/// [`History`], which checks that the outcome fits the call and that it does
/// not return before it is invoked.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct Operation<K> {
    /// The client that made the call (only shown in explanations).
    pub client: usize,
    /// The key whose register it works on.
    pub key: K,
    /// What it asked.
    pub call: Call,
    /// When it was invoked.
    pub invoked: Time,
    /// How it ended.
    pub outcome: Outcome,
}

/// A history of operations on per-key registers, recorded as they happen.
///
/// Times come from the history's own counter ([`History::invoke`],
/// [`History::complete`]: each call is one tick later than anything recorded
/// before) or from the caller ([`History::invoke_at`],
/// [`History::complete_at`], e.g. nanoseconds since the run began). The two
/// can be mixed: the counter always moves past the latest explicit time.
///
/// The builder is not synchronised: concurrent clients share it behind a
/// `Mutex` (a `std::sync::Mutex<History<K>>`), and with counter times the
/// order in which they take the lock is the order of the events — so a client
/// must record its invocation before sending the request and its completion
/// after the answer arrived.
#[derive(Clone, Debug)]
pub struct History<K> {
    ops: Vec<Operation<K>>,
    initial: BTreeMap<K, Option<Vec<u8>>>,
    clock: Time,
}

impl<K> Default for History<K> {
    fn default() -> Self {
        History { ops: Vec::new(), initial: BTreeMap::new(), clock: 0 }
    }
}

impl<K: Ord + Clone + fmt::Debug> History<K> {
    /// An empty history; every key starts absent unless
    /// [`History::set_initial`] says otherwise.
    pub fn new() -> Self {
        Self::default()
    }

    /// Sets the contents of `key`'s register before the first operation.
    pub fn set_initial(&mut self, key: K, value: Option<Vec<u8>>) {
        self.initial.insert(key, value);
    }

    /// The initial contents set with [`History::set_initial`].
    pub fn initial(&self) -> &BTreeMap<K, Option<Vec<u8>>> {
        &self.initial
    }

    /// The next counter time: one past anything recorded so far.
    pub fn tick(&mut self) -> Time {
        self.clock += 1;
        self.clock
    }

    /// Records that `client` invoked `call` on `key` now (the next counter time).
    pub fn invoke(&mut self, client: usize, key: K, call: Call) -> OpId {
        let at = self.tick();
        self.invoke_at(client, key, call, at)
    }

    /// Records that `client` invoked `call` on `key` at `at`.
    pub fn invoke_at(&mut self, client: usize, key: K, call: Call, at: Time) -> OpId {
        self.clock = self.clock.max(at);
        self.ops.push(Operation { client, key, call, invoked: at, outcome: Outcome::Pending });
        OpId(self.ops.len() - 1)
    }

    /// Records that operation `id` returned `ret` now (the next counter time).
    ///
    /// # Panics
    ///
    /// As [`History::complete_at`].
    pub fn complete(&mut self, id: OpId, ret: Ret) {
        let at = self.tick();
        self.complete_at(id, ret, at)
    }

    /// Records that operation `id` returned `ret` at `at`.
    ///
    /// # Panics
    ///
    /// If `id` is not from this history, has already ended, `ret` is not an
    /// answer to its call (a read's answer to a write, say), or `at` is before
    /// its invocation: all mistakes of the recording test, not of the system
    /// under test.
    pub fn complete_at(&mut self, id: OpId, ret: Ret, at: Time) {
        self.clock = self.clock.max(at);
        let op = self.pending(id);
        assert!(ret.answers(&op.call), "operation {id}: {ret:?} does not answer {:?}", op.call);
        assert!(at >= op.invoked, "operation {id} returns at {at}, before its invocation at {}", op.invoked);
        op.outcome = Outcome::Returned { at, ret };
    }

    /// Records that the outcome of operation `id` is unknown: it may have taken
    /// effect at any time after its invocation, or never. (An operation left
    /// pending is treated the same.)
    ///
    /// # Panics
    ///
    /// If `id` is not from this history or has already ended.
    pub fn unknown(&mut self, id: OpId) {
        self.pending(id).outcome = Outcome::Unknown;
    }

    fn pending(&mut self, id: OpId) -> &mut Operation<K> {
        let len = self.ops.len();
        let op = self.ops.get_mut(id.0).unwrap_or_else(|| panic!("operation {id} is not in this history of {len}"));
        assert!(op.outcome == Outcome::Pending, "operation {id} has already ended: {:?}", op.outcome);
        op
    }

    /// The operations in the order they were invoked (by [`OpId`]).
    pub fn operations(&self) -> &[Operation<K>] {
        &self.ops
    }

    /// The number of operations recorded.
    pub fn len(&self) -> usize {
        self.ops.len()
    }

    /// Whether nothing has been recorded.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }

    /// Checks that the history is linearizable, key by key, giving up after
    /// about `budget` (see [`crate::check`]).
    pub fn check(&self, budget: Duration) -> Report<K> {
        linearizability::check(&self.ops, &self.initial, budget)
    }
}

/// Shows bytes as an escaped, quoted string (`"a\x00b"`), `None` as `absent`.
pub(crate) struct Shown<'a>(pub(crate) Option<&'a [u8]>);

impl fmt::Display for Shown<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.0 {
            None => f.write_str("absent"),
            Some(bytes) => write!(f, "\"{}\"", bytes.escape_ascii()),
        }
    }
}

impl fmt::Display for Call {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Call::Read => f.write_str("read"),
            Call::Write(Some(v)) => write!(f, "write {}", Shown(Some(v))),
            Call::Write(None) => f.write_str("delete"),
            Call::Cas { expect, new } => write!(f, "cas {} -> {}", Shown(expect.as_value()), Shown(new.as_deref())),
        }
    }
}

impl fmt::Display for Ret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Ret::Read(v) => write!(f, "{}", Shown(v.as_deref())),
            Ret::Written => f.write_str("ok"),
            Ret::Applied => f.write_str("applied"),
            Ret::NotApplied { current } => write!(f, "not applied (current {})", Shown(current.as_deref())),
        }
    }
}

impl<K> Operation<K> {
    /// When it returned; `None` (later than any time) if it did not.
    pub fn returned(&self) -> Option<Time> {
        match self.outcome {
            Outcome::Returned { at, .. } => Some(at),
            Outcome::Pending | Outcome::Unknown => None,
        }
    }

    /// Its answer, if it returned one.
    pub fn ret(&self) -> Option<&Ret> {
        match &self.outcome {
            Outcome::Returned { ret, .. } => Some(ret),
            Outcome::Pending | Outcome::Unknown => None,
        }
    }
}

impl<K> fmt::Display for Operation<K> {
    /// `client 2 [10, 14] write "a" -> ok`; an unknown outcome shows as
    /// `[10, inf) ... -> unknown`. (The key and the id are not shown.)
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match &self.outcome {
            Outcome::Returned { at, ret } => write!(f, "client {} [{}, {}] {} -> {}", self.client, self.invoked, at, self.call, ret),
            Outcome::Pending | Outcome::Unknown => write!(f, "client {} [{}, inf) {} -> unknown", self.client, self.invoked, self.call),
        }
    }
}
