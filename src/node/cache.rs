//! The coordinator cache's glue (see [`crate::coordinator::cache`] for what
//! it promises): which requests consult it, and how every write this node
//! acknowledges goes through it.
//!
//! Only a node that holds no copy of a key caches it. A ONE read there is
//! answered from the cache when an entry is fresh; every other read of such
//! a key (a miss, QUORUM, ALL) fills the cache with what it returned. A plain
//! write it coordinates is stored once acknowledged; a SERIAL write or a
//! transaction drops the keys it wrote (raising their floors to the commit's
//! timestamp), and one whose outcome is unknown drops them too. A write of a
//! key this node does hold raises the key's floor as well, so that if the
//! key's range later moves away from this node, a read older than the write
//! is not cached. A deferred
//! request learns its answer through a [`Responder`] that wraps the
//! connection's: the cache is updated before the client hears the answer.

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

/// What an answer teaches the cache.
pub(crate) enum Lesson {
    /// A read's answer: the version found.
    Read(Key),
    /// A plain write of this value (`None`: a delete): stored at the answer's timestamp.
    Wrote(Key, Option<Box<[u8]>>),
    /// A SERIAL write or a transaction writing these keys: dropped, floors raised on success.
    Dropped(Vec<Key>),
}

impl Lesson {
    /// Updates `cache` from `reply`, the answer to the request this lesson is about.
    pub(crate) fn learn(&self, cache: &CoordinatorCache, reply: &Reply) {
        let now = Instant::now();
        match (self, reply) {
            (Lesson::Read(key), Reply::Read(v)) => cache.read(key, v.as_ref(), now),
            (Lesson::Read(_), _) => {}
            (Lesson::Wrote(key, value), Reply::Write { ts, .. }) => cache.wrote(key, &Version { ts: *ts, value: value.clone() }, now),
            (Lesson::Dropped(keys), Reply::Write { ts, .. } | Reply::TxnCommitted { ts }) => {
                keys.iter().for_each(|k| cache.forget(k, Some(*ts)));
            }
            // Nothing was written.
            (Lesson::Dropped(_), Reply::NotApplied { .. } | Reply::TxnNotApplied { .. }) => {}
            // An error: the write may or may not have been applied.
            (Lesson::Wrote(key, _), _) => cache.forget(key, None),
            (Lesson::Dropped(keys), _) => keys.iter().for_each(|k| cache.forget(k, None)),
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
        (!self.ring().replica_set(key.as_bytes()).contains(&self.me)).then(|| cache.clone())
    }

    /// What a plain write of `key` teaches the cache, if this node has one:
    /// the value (`value()`), where it holds no copy; where it does, only
    /// the floor (should the key's range move away from this node, a read
    /// older than this write is not cached then).
    pub(crate) fn write_lesson(&self, key: &Key, value: impl FnOnce() -> Option<Box<[u8]>>) -> Option<(Arc<CoordinatorCache>, Lesson)> {
        let cache = self.cache.as_ref()?;
        let lesson = if self.ring().replica_set(key.as_bytes()).contains(&self.me) {
            Lesson::Dropped(vec![key.clone()])
        } else {
            Lesson::Wrote(key.clone(), value())
        };
        Some((cache.clone(), lesson))
    }

    /// A ONE read of `key` answered by the cache, if it may be.
    pub(crate) fn cached_read(&self, key: &Key, level: Consistency) -> Option<Option<Version>> {
        if level != Consistency::One {
            return None;
        }
        let found = self.cache_for(key)?.get(key, Instant::now())?;
        if let Some(v) = &found {
            // A later write through this coordinator must be stamped after what it read.
            let _ = self.clock.observe(v.ts, self.cfg.max_clock_offset);
        }
        Some(found)
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
