//! The coordinator cache's glue (see [`crate::coordinator::cache`] for what
//! it promises): which requests consult it, and how every write this node
//! acknowledges goes through it.
//!
//! Only a node that holds no copy of a key caches it. A ONE read there is
//! answered from the cache when an entry is fresh; every other read of such
//! a key (a miss, QUORUM, ALL) fills the cache with what it returned. Every
//! write it coordinates of such a key — plain, SERIAL, or a transaction's —
//! is stored once acknowledged, at the answer's timestamp (the commit's, the
//! ballot's); one whose outcome is unknown drops the key. A write of a key
//! this node holds teaches nothing, unless the view changed while it ran:
//! then the key is kept out below the write (a view change bars every key
//! below the clock: the node may no longer hold keys it wrote as a
//! replica). A deferred request learns its answer through a [`Responder`]
//! that wraps the connection's: the cache is updated before the client
//! hears the answer.

use std::sync::Arc;
use std::time::Instant;

use crate::cluster::consistency::Consistency;
use crate::cluster::key::Key;
use crate::coordinator::cache::CoordinatorCache;
use crate::coordinator::command::Responder;
use crate::message::Reply;
use crate::node::Node;
use crate::node::coordinate::Later;
use crate::storage::cell::Version;

/// A value a write makes, as the cache is taught it.
pub(crate) enum Value {
    /// A put of these bytes.
    Put(Box<[u8]>),
    /// A delete.
    Delete,
    /// A put too large to cache (not copied): only kept out below it.
    TooBig,
}

/// One key a request writes if it succeeds.
pub(crate) struct Written {
    key: Key,
    value: Value,
    /// Whether this node held the key when the request started.
    held: bool,
}

/// What the request is.
pub(crate) enum What {
    /// A read of this key: the version found is cached.
    Read(Key),
    /// Writes (a plain or SERIAL write, or a transaction's).
    Writes(Vec<Written>),
}

/// What an answer teaches the cache: the request, when it started, and the
/// cache's generation then.
pub(crate) struct Lesson {
    what: What,
    started: Instant,
    generation: u64,
}

impl Lesson {
    /// Updates `cache` from `reply`, the answer to the request this lesson is about.
    pub(crate) fn learn(&self, cache: &CoordinatorCache, reply: &Reply) {
        match (&self.what, reply) {
            (What::Read(key), Reply::Read(v)) => cache.read(key, v.as_ref(), self.started),
            (What::Read(_), _) => {}
            (What::Writes(writes), Reply::Write { ts, .. } | Reply::TxnCommitted { ts }) => {
                let moved = cache.generation() != self.generation;
                for w in writes {
                    match (&w.value, w.held) {
                        (_, true) if moved => cache.forget(&w.key, Some(*ts)),
                        (_, true) => {}
                        (Value::Put(v), false) => cache.wrote(&w.key, &Version { ts: *ts, value: Some(v.clone()) }, self.started),
                        (Value::Delete, false) => cache.wrote(&w.key, &Version::tombstone(*ts), self.started),
                        (Value::TooBig, false) => cache.forget(&w.key, Some(*ts)),
                    }
                }
            }
            // Nothing was written.
            (What::Writes(_), Reply::NotApplied { .. } | Reply::TxnNotApplied { .. }) => {}
            // An error: the write may or may not have been applied.
            (What::Writes(writes), _) => writes.iter().filter(|w| !w.held).for_each(|w| cache.forget(&w.key, None)),
        }
    }
}

/// A connection's responder that teaches the cache each answer before passing it on.
struct Teaching {
    inner: Arc<dyn Responder>,
    cache: Arc<CoordinatorCache>,
    lesson: Lesson,
}

impl Responder for Teaching {
    fn defer(&self, token: u64) {
        self.inner.defer(token);
    }

    fn answer(&self, token: u64, reply: Reply) {
        self.lesson.learn(&self.cache, &reply);
        self.inner.answer(token, reply);
    }
}

impl Node {
    /// The cache, if this node has one and holds no copy of `key`.
    pub(crate) fn cache_for(&self, key: &Key) -> Option<Arc<CoordinatorCache>> {
        let cache = self.cache.as_ref()?;
        (!self.holds(key)).then(|| cache.clone())
    }

    /// Whether this node holds a copy of `key` (at its current view).
    fn holds(&self, key: &Key) -> bool {
        self.ring().replica_set(key.as_bytes()).contains(&self.me)
    }

    /// What writes of `writes` (each key with its value, `None`: a delete)
    /// teach the cache, if this node has one. Values are copied only for
    /// keys this node holds no copy of, and only if they fit in the cache.
    pub(crate) fn write_lesson<'v>(
        &self,
        writes: impl IntoIterator<Item = (&'v Key, Option<&'v [u8]>)>,
    ) -> Option<(Arc<CoordinatorCache>, Lesson)> {
        let cache = self.cache.clone()?;
        let generation = cache.generation();
        let writes = writes
            .into_iter()
            .map(|(key, value)| {
                let held = self.holds(key);
                let value = match value {
                    _ if held => Value::TooBig,
                    None => Value::Delete,
                    Some(v) if cache.fits_value(key, v.len()) => Value::Put(v.into()),
                    Some(_) => Value::TooBig,
                };
                Written { key: key.clone(), value, held }
            })
            .collect();
        Some((cache, Lesson { what: What::Writes(writes), started: Instant::now(), generation }))
    }

    /// A read of `key` at `level` as the cache sees it: answered from it
    /// (`Ok`: a ONE read of a fresh entry), or what the read, sent to the
    /// replicas, teaches it (`Err`: none if this node has no cache or holds
    /// a copy of `key`).
    pub(crate) fn cached_read(&self, key: &Key, level: Consistency) -> Result<Option<Version>, Option<(Arc<CoordinatorCache>, Lesson)>> {
        let Some(cache) = self.cache_for(key) else { return Err(None) };
        let now = Instant::now();
        if level == Consistency::One
            && let Some(found) = cache.get(key, now)
        {
            if let Some(v) = &found {
                // A later write through this coordinator must be stamped after what it read.
                let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
            }
            return Ok(found);
        }
        let generation = cache.generation();
        Err(Some((cache, Lesson { what: What::Read(key.clone()), started: now, generation })))
    }

    /// Runs `request` with `later` wrapped so that its answer teaches the
    /// cache the lesson (when this node caches the request's keys: `teach`),
    /// and teaches it an answer given at once as well.
    pub(crate) fn teaching(
        teach: Option<(Arc<CoordinatorCache>, Lesson)>,
        later: Later<'_>,
        request: impl FnOnce(Later<'_>) -> crate::error::Result<crate::node::Answered<crate::node::Handled>>,
    ) -> crate::error::Result<crate::node::Answered<crate::node::Handled>> {
        let Some((cache, lesson)) = teach else { return request(later) };
        let Some((responder, token)) = later else {
            let answered = request(None);
            learn_now(&lesson, &cache, &answered);
            return answered;
        };
        let teaching = Arc::new(Teaching { inner: responder.clone(), cache, lesson });
        let wrapped: Arc<dyn Responder> = teaching.clone();
        let answered = request(Some((&wrapped, token)));
        learn_now(&teaching.lesson, &teaching.cache, &answered);
        answered
    }
}

/// Teaches the cache an answer given at once (or a refusal before the
/// request started: nothing was written, but a write's entry is dropped all
/// the same), not through the responder.
fn learn_now(lesson: &Lesson, cache: &CoordinatorCache, answered: &crate::error::Result<crate::node::Answered<crate::node::Handled>>) {
    match answered {
        Ok(crate::node::Answered::Now(h)) => lesson.learn(cache, &h.reply),
        Ok(crate::node::Answered::Later(_)) => {}
        Err(e) => lesson.learn(cache, &Reply::Error(e.clone())),
    }
}
