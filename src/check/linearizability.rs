//! The search: Wing & Gong's backtracking over the operations that may take
//! effect next, with Lowe's cache of configurations already explored, one key
//! at a time (see [`crate::check`] for the ideas; this file is the mechanics).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt::{self, Write as _};
use std::time::{Duration, Instant};

use super::history::{Call, Operation, Ret, Shown, Time};

/// The answer for a whole history.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict<K> {
    /// Every key's operations are linearizable.
    Linearizable,
    /// This key's operations are not (the first such key, in key order).
    NotLinearizable {
        /// The key.
        key: K,
        /// Which operations could not be placed, and the longest linearizable
        /// prefix found before them.
        explanation: String,
    },
    /// No key was found not linearizable, but this one (the first, in key
    /// order) was not fully checked before the budget ran out.
    Unknown {
        /// The key.
        key: K,
    },
}

/// The answer for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyVerdict {
    /// Its operations are linearizable.
    Linearizable,
    /// They are not; the explanation, as in [`Verdict::NotLinearizable`].
    NotLinearizable(String),
    /// The budget ran out first (perhaps before this key was started).
    Unknown,
}

/// What the check found for one key.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct KeyReport<K> {
    /// The key.
    pub key: K,
    /// The operations searched: all of the key's, less `dropped_reads`.
    pub operations: usize,
    /// How many of `operations` had an unknown outcome (writes and CAS).
    pub unknown_outcomes: usize,
    /// Reads of unknown outcome, left out because they constrain nothing.
    pub dropped_reads: usize,
    /// Distinct configurations (operations linearized, register contents) the
    /// search reached: a measure of its work.
    pub configurations: usize,
    /// The answer.
    pub verdict: KeyVerdict,
    /// Time spent on this key.
    pub elapsed: Duration,
}

/// What [`check`] found: the verdict, and a report per key (in key order).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Report<K> {
    /// The answer for the whole history.
    pub verdict: Verdict<K>,
    /// One report per key that has operations.
    pub keys: Vec<KeyReport<K>>,
    /// Time spent on the whole check.
    pub elapsed: Duration,
}

impl<K> Report<K> {
    /// Whether the whole history was found linearizable.
    pub fn is_linearizable(&self) -> bool {
        matches!(self.verdict, Verdict::Linearizable)
    }

    /// Operations on keys that got a definite answer (linearizable or not).
    pub fn operations_checked(&self) -> usize {
        self.keys.iter().filter(|k| k.verdict != KeyVerdict::Unknown).map(|k| k.operations + k.dropped_reads).sum()
    }
}

impl<K: fmt::Debug> fmt::Display for Report<K> {
    /// One line: the verdict and the counts (not the explanation).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let unknown_keys = self.keys.iter().filter(|k| k.verdict == KeyVerdict::Unknown).count();
        let verdict = match &self.verdict {
            Verdict::Linearizable => "linearizable".to_string(),
            Verdict::NotLinearizable { key, .. } => format!("NOT linearizable (key {key:?})"),
            Verdict::Unknown { key } => format!("unknown (budget ran out, first on key {key:?})"),
        };
        write!(
            f,
            "{verdict}: {} operations checked on {} of {} keys in {:.3} s",
            self.operations_checked(),
            self.keys.len() - unknown_keys,
            self.keys.len(),
            self.elapsed.as_secs_f64()
        )
    }
}

/// Checks `ops` key by key, each register starting with its `initial`
/// contents (absent if not given), giving up once `budget` has passed.
/// [`History::check`](super::History::check) is the usual way in.
pub fn check<K: Ord + Clone + fmt::Debug>(ops: &[Operation<K>], initial: &BTreeMap<K, Option<Vec<u8>>>, budget: Duration) -> Report<K> {
    let started = Instant::now();
    // A budget too large to add is as good as none.
    let deadline = started.checked_add(budget);
    let mut by_key: BTreeMap<&K, Vec<usize>> = BTreeMap::new();
    for (i, op) in ops.iter().enumerate() {
        by_key.entry(&op.key).or_default().push(i);
    }
    let keys: Vec<KeyReport<K>> = by_key
        .into_iter()
        .map(|(key, indices)| check_key(ops, key, &indices, initial.get(key).and_then(|v| v.as_deref()), deadline))
        .collect();
    let violation = keys.iter().find_map(|k| match &k.verdict {
        KeyVerdict::NotLinearizable(explanation) => Some(Verdict::NotLinearizable { key: k.key.clone(), explanation: explanation.clone() }),
        _ => None,
    });
    let verdict = violation
        .or_else(|| keys.iter().find(|k| k.verdict == KeyVerdict::Unknown).map(|k| Verdict::Unknown { key: k.key.clone() }))
        .unwrap_or(Verdict::Linearizable);
    Report { verdict, keys, elapsed: started.elapsed() }
}

/// A register's contents, interned per key: 0 is absent, `n > 0` the n-th
/// distinct value seen in the key's history.
type Value = u32;

/// An operation as the search sees it: how it changes the register, given
/// what it returned.
#[derive(Clone, Copy, Debug)]
enum Step {
    /// A read that returned this.
    Read(Value),
    /// A write (known or unknown outcome): always fits.
    Write(Value),
    /// A CAS that applied — or, of unknown outcome, applied if it took effect
    /// at all (a CAS that took effect without applying changed nothing, which
    /// is the same as never taking effect).
    Applied { expect: Value, new: Value },
    /// A CAS that found `current`, which is not what it expected.
    NotApplied { expect: Value, current: Value },
}

impl Step {
    /// The contents after this step from `state`, or `None` if it cannot
    /// take effect then.
    fn apply(self, state: Value) -> Option<Value> {
        match self {
            Step::Read(v) => (state == v).then_some(state),
            Step::Write(v) => Some(v),
            Step::Applied { expect, new } => (state == expect).then_some(new),
            Step::NotApplied { expect, current } => (state != expect && state == current).then_some(state),
        }
    }
}

/// Interns a key's values, keeping their bytes for explanations.
struct Values<'a> {
    ids: HashMap<&'a [u8], Value>,
    bytes: Vec<Option<&'a [u8]>>,
}

impl<'a> Values<'a> {
    fn new() -> Self {
        Values { ids: HashMap::new(), bytes: vec![None] }
    }

    fn id(&mut self, value: Option<&'a [u8]>) -> Value {
        let Some(value) = value else { return 0 };
        let next = self.bytes.len() as Value;
        *self.ids.entry(value).or_insert_with(|| {
            self.bytes.push(Some(value));
            next
        })
    }

    fn show(&self, value: Value) -> Shown<'a> {
        Shown(self.bytes[value as usize])
    }
}

/// Where the search got stuck with the most operations linearized.
struct Stuck {
    /// The operations linearized, in order, each with the contents after it.
    prefix: Vec<(usize, Value)>,
    /// The contents after the prefix.
    state: Value,
    /// The operation whose return was reached (it must take effect before it).
    blocking: Option<usize>,
    /// The operations that could have gone next (invoked before that return).
    candidates: Vec<usize>,
}

enum Outcome {
    Linearizable,
    Violation(Stuck),
    OutOfTime,
}

/// Sentinel list nodes: before the first event and after the last.
const HEAD: usize = 0;
const NONE: usize = usize::MAX;

/// The search over one key's operations (`local` indices into `steps`).
struct Search {
    steps: Vec<Step>,
    /// Whether each operation returned (must be linearized) or not (may be).
    known: Vec<bool>,
    /// The doubly linked list of events still to place, in time order: node
    /// `HEAD`, then one node per call and per known return, then the tail.
    next: Vec<usize>,
    prev: Vec<usize>,
    /// Per node: its operation, and whether it is the call (or the return).
    node_op: Vec<usize>,
    node_is_call: Vec<bool>,
    /// Per operation: the node of its return, `NONE` if unknown.
    ret_node: Vec<usize>,
    tail: usize,
}

impl Search {
    fn new(steps: Vec<Step>, invoked: &[Time], returned: &[Option<Time>]) -> Self {
        let n = steps.len();
        // Calls sort before returns at the same time: operations that merely
        // touch count as concurrent, so a tie never produces a violation.
        let mut events: Vec<(Time, bool, usize)> = (0..n).map(|i| (invoked[i], false, i)).collect();
        events.extend(returned.iter().enumerate().filter_map(|(i, r)| r.map(|t| (t, true, i))));
        events.sort_unstable();
        let tail = events.len() + 1;
        let mut search = Search {
            steps,
            known: returned.iter().map(Option::is_some).collect(),
            next: (1..=tail + 1).collect(),
            prev: (0..=tail).map(|i| i.wrapping_sub(1)).collect(),
            node_op: vec![NONE; tail + 1],
            node_is_call: vec![false; tail + 1],
            ret_node: vec![NONE; n],
            tail,
        };
        for (i, &(_, is_return, op)) in events.iter().enumerate() {
            let node = i + 1;
            search.node_op[node] = op;
            search.node_is_call[node] = !is_return;
            if is_return {
                search.ret_node[op] = node;
            }
        }
        search
    }

    fn unlink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = n;
        self.prev[n] = p;
    }

    fn relink(&mut self, node: usize) {
        let (p, n) = (self.prev[node], self.next[node]);
        self.next[p] = node;
        self.prev[n] = node;
    }

    /// Takes an operation's call (and return, if any) out of the list.
    fn lift(&mut self, call: usize) {
        self.unlink(call);
        let ret = self.ret_node[self.node_op[call]];
        if ret != NONE {
            self.unlink(ret);
        }
    }

    /// Puts back what [`Search::lift`] took out (in reverse order).
    fn unlift(&mut self, call: usize) {
        let ret = self.ret_node[self.node_op[call]];
        if ret != NONE {
            self.relink(ret);
        }
        self.relink(call);
    }

    /// Runs the search from `initial`; also returns the configurations seen.
    fn run(&mut self, initial: Value, deadline: Option<Instant>) -> (Outcome, usize) {
        let n = self.steps.len();
        let words = n.div_ceil(64);
        // The configuration: a bit per linearized operation, then the contents.
        let mut config = vec![0u64; words + 1];
        let mut seen: HashSet<Box<[u64]>> = HashSet::new();
        // The linearized calls, each with the contents before it.
        let mut stack: Vec<(usize, Value)> = Vec::new();
        let mut state = initial;
        let mut remaining = self.known.iter().filter(|&&k| k).count();
        let mut best: Option<Stuck> = None;
        let mut node = self.next[HEAD];
        let mut steps: u64 = 0;
        loop {
            // Operations of unknown outcome left over never took effect.
            if remaining == 0 {
                return (Outcome::Linearizable, seen.len());
            }
            steps += 1;
            if steps.is_multiple_of(1024) && deadline.is_some_and(|d| Instant::now() >= d) {
                return (Outcome::OutOfTime, seen.len());
            }
            if node != self.tail && self.node_is_call[node] {
                let op = self.node_op[node];
                if let Some(after) = self.steps[op].apply(state) {
                    config[op / 64] |= 1 << (op % 64);
                    config[words] = u64::from(after);
                    if !seen.contains(&config[..]) {
                        seen.insert(config.clone().into_boxed_slice());
                        stack.push((node, state));
                        state = after;
                        self.lift(node);
                        remaining -= usize::from(self.known[op]);
                        node = self.next[HEAD];
                        continue;
                    }
                    config[op / 64] &= !(1 << (op % 64));
                }
                node = self.next[node];
            } else {
                // A return (or, impossibly, the end): the operation returning
                // here has to take effect before anything after it, and
                // nothing before it can go next. Note the deepest such point.
                if best.as_ref().is_none_or(|b| stack.len() > b.prefix.len()) {
                    best = Some(self.stuck(&stack, state, node));
                }
                let Some((call, before)) = stack.pop() else {
                    return (Outcome::Violation(best.expect("noted just above")), seen.len());
                };
                let op = self.node_op[call];
                config[op / 64] &= !(1 << (op % 64));
                state = before;
                self.unlift(call);
                remaining += usize::from(self.known[op]);
                node = self.next[call];
            }
        }
    }

    fn stuck(&self, stack: &[(usize, Value)], state: Value, at: usize) -> Stuck {
        let prefix = stack
            .iter()
            .enumerate()
            .map(|(i, &(call, _))| (self.node_op[call], stack.get(i + 1).map_or(state, |&(_, before)| before)))
            .collect();
        let mut candidates = Vec::new();
        let mut node = self.next[HEAD];
        while node != at && node != self.tail {
            if self.node_is_call[node] {
                candidates.push(self.node_op[node]);
            }
            node = self.next[node];
        }
        let blocking = (at != self.tail).then(|| self.node_op[at]);
        Stuck { prefix, state, blocking, candidates }
    }
}

/// Checks one key's operations (`indices` into `all`).
fn check_key<K: Clone + fmt::Debug>(
    all: &[Operation<K>],
    key: &K,
    indices: &[usize],
    initial: Option<&[u8]>,
    deadline: Option<Instant>,
) -> KeyReport<K> {
    let started = Instant::now();
    // A read of unknown outcome constrains nothing.
    let ops: Vec<usize> = indices.iter().copied().filter(|&i| !(all[i].call == Call::Read && all[i].ret().is_none())).collect();
    let unknown_outcomes = ops.iter().filter(|&&i| all[i].ret().is_none()).count();
    let mut report = KeyReport {
        key: key.clone(),
        operations: ops.len(),
        unknown_outcomes,
        dropped_reads: indices.len() - ops.len(),
        configurations: 0,
        verdict: KeyVerdict::Unknown,
        elapsed: Duration::ZERO,
    };
    if deadline.is_some_and(|d| started >= d) {
        return report;
    }
    let mut values = Values::new();
    let initial = values.id(initial);
    let steps: Vec<Step> = ops
        .iter()
        .map(|&i| {
            let op = &all[i];
            match (&op.call, op.ret()) {
                (Call::Read, Some(Ret::Read(v))) => Step::Read(values.id(v.as_deref())),
                (Call::Write(v), _) => Step::Write(values.id(v.as_deref())),
                (Call::Cas { expect, new }, None | Some(Ret::Applied)) => {
                    Step::Applied { expect: values.id(expect.as_value()), new: values.id(new.as_deref()) }
                }
                (Call::Cas { expect, .. }, Some(Ret::NotApplied { current })) => {
                    Step::NotApplied { expect: values.id(expect.as_value()), current: values.id(current.as_deref()) }
                }
                (call, ret) => unreachable!("History only records answers that fit: {call:?} -> {ret:?}"),
            }
        })
        .collect();
    let invoked: Vec<Time> = ops.iter().map(|&i| all[i].invoked).collect();
    let returned: Vec<Option<Time>> = ops.iter().map(|&i| all[i].returned()).collect();
    let mut search = Search::new(steps, &invoked, &returned);
    let (outcome, configurations) = search.run(initial, deadline);
    report.configurations = configurations;
    report.verdict = match outcome {
        Outcome::Linearizable => KeyVerdict::Linearizable,
        Outcome::OutOfTime => KeyVerdict::Unknown,
        Outcome::Violation(stuck) => KeyVerdict::NotLinearizable(explain(all, key, &ops, &search, &values, initial, &stuck)),
    };
    report.elapsed = started.elapsed();
    report
}

/// The most operations of a key listed in full in an explanation.
const LIST_LIMIT: usize = 60;

/// Describes a violation: the deepest point the search reached, which
/// operation's return it could not get past, and why no candidate fits.
fn explain<K: fmt::Debug>(
    all: &[Operation<K>],
    key: &K,
    ops: &[usize],
    search: &Search,
    values: &Values<'_>,
    initial: Value,
    stuck: &Stuck,
) -> String {
    let id = |local: usize| ops[local];
    let mut s = String::new();
    let unknown = ops.iter().filter(|&&i| all[i].ret().is_none()).count();
    // Writing to a String cannot fail.
    let _ = writeln!(
        s,
        "key {key:?}: no order of its {} operations ({unknown} of unknown outcome) fits both their real-time order and a register \
         starting {}.",
        ops.len(),
        values.show(initial)
    );
    let _ = writeln!(s, "The longest linearizable prefix found ({} operations):", stuck.prefix.len());
    for &(op, after) in &stuck.prefix {
        let _ = writeln!(s, "  #{} {}   => {}", id(op), all[id(op)], values.show(after));
    }
    match stuck.blocking {
        Some(blocking) => {
            let _ = writeln!(
                s,
                "Then the register holds {}, and #{} must take effect before it returns, but none of the operations that may \
                 go next can:",
                values.show(stuck.state),
                id(blocking)
            );
        }
        None => {
            let _ = writeln!(s, "Then the register holds {}, and none of the operations that may go next can:", values.show(stuck.state));
        }
    }
    for &op in &stuck.candidates {
        let why = match search.steps[op].apply(stuck.state) {
            None => format!("cannot take effect when the register holds {}", values.show(stuck.state)),
            Some(_) => "could take effect, but then the rest cannot be ordered".to_string(),
        };
        let _ = writeln!(s, "  #{} {}   : {why}", id(op), all[id(op)]);
    }
    if ops.len() <= LIST_LIMIT {
        let _ = writeln!(s, "All operations on key {key:?}:");
        for &i in ops {
            let _ = writeln!(s, "  #{i} {}", all[i]);
        }
    }
    s
}
