//! A hybrid logical clock for write timestamps.
//!
//! Every write is stamped by its coordinator with a [`Timestamp`]: microseconds
//! since the Unix epoch plus the coordinator's node id. The clock never goes
//! backwards: each tick is `max(wall_now, last + 1)`, so two writes from one
//! coordinator always get increasing timestamps even when the wall clock steps
//! back (NTP) or two writes land in the same microsecond. When a replica sees a
//! timestamp from elsewhere (a write it applies, a version it reads) it calls
//! [`Hlc::observe`], so a later write through *this* node is stamped after what
//! it has seen, even if its wall clock lags: causality across coordinators is
//! kept as long as the write's coordinator has seen the earlier version.
//!
//! Ties between coordinators are broken by node id, so no two distinct writes
//! ever carry the same timestamp.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// A write's timestamp: ordered by `micros`, then `node`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Timestamp {
    /// Hybrid-logical microseconds since the Unix epoch.
    pub micros: u64,
    /// Id of the coordinator that stamped the write (tie-breaker).
    pub node: u32,
}

/// The source of wall-clock time; injectable so tests can move it backwards.
pub trait WallClock: Send + Sync {
    /// Microseconds since the Unix epoch.
    fn now_micros(&self) -> u64;
}

/// The system clock.
#[derive(Debug, Default, Clone, Copy)]
pub struct SystemClock;

impl WallClock for SystemClock {
    fn now_micros(&self) -> u64 {
        SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0)
    }
}

impl<W: WallClock + ?Sized> WallClock for std::sync::Arc<W> {
    fn now_micros(&self) -> u64 {
        (**self).now_micros()
    }
}

/// A hybrid logical clock owned by one node.
pub struct Hlc<C: WallClock = SystemClock> {
    wall: C,
    node: u32,
    last: AtomicU64,
}

impl Hlc<SystemClock> {
    /// A clock for `node` on the system wall clock.
    pub fn new(node: u32) -> Self {
        Self::with_clock(node, SystemClock)
    }
}

impl<C: WallClock> Hlc<C> {
    /// A clock for `node` on the given wall clock.
    pub fn with_clock(node: u32, wall: C) -> Self {
        Hlc { wall, node, last: AtomicU64::new(0) }
    }

    /// The node id stamped on this clock's timestamps.
    pub fn node(&self) -> u32 {
        self.node
    }

    /// A new timestamp, strictly greater than every one this clock issued or observed.
    pub fn now(&self) -> Timestamp {
        let wall = self.wall.now_micros();
        let mut last = self.last.load(Ordering::Relaxed);
        loop {
            let next = wall.max(last.saturating_add(1));
            match self.last.compare_exchange_weak(last, next, Ordering::AcqRel, Ordering::Relaxed) {
                Ok(_) => return Timestamp { micros: next, node: self.node },
                Err(current) => last = current,
            }
        }
    }

    /// Records a timestamp seen from elsewhere so later ticks come after it.
    ///
    /// A timestamp more than `max_offset` ahead of this node's wall clock is
    /// refused (and not observed): a peer with a wild clock, or a hostile
    /// one sending `u64::MAX`, must not drag this clock into the future, where
    /// every later write would lose to the bogus one. Returns how far ahead it was.
    pub fn observe(&self, ts: Timestamp, max_offset: Duration) -> Result<(), Duration> {
        let wall = self.wall.now_micros();
        let ahead = ts.micros.saturating_sub(wall);
        if ahead > max_offset.as_micros() as u64 {
            return Err(Duration::from_micros(ahead));
        }
        self.last.fetch_max(ts.micros, Ordering::AcqRel);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use std::sync::atomic::AtomicU64;

    struct FakeClock(Arc<AtomicU64>);
    impl WallClock for FakeClock {
        fn now_micros(&self) -> u64 {
            self.0.load(Ordering::SeqCst)
        }
    }

    #[test]
    fn monotonic_when_wall_clock_goes_backwards() {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let hlc = Hlc::with_clock(7, FakeClock(wall.clone()));
        let a = hlc.now();
        assert_eq!(a.micros, 1_000_000);
        wall.store(500_000, Ordering::SeqCst); // NTP steps back half a second
        let b = hlc.now();
        let c = hlc.now();
        assert!(b > a && c > b, "{a:?} {b:?} {c:?}");
        assert_eq!(b.micros, 1_000_001);
        wall.store(2_000_000, Ordering::SeqCst);
        let d = hlc.now();
        assert_eq!(d.micros, 2_000_000, "follows the wall clock again once it is ahead");
    }

    #[test]
    fn same_microsecond_still_increases() {
        let wall = Arc::new(AtomicU64::new(42));
        let hlc = Hlc::with_clock(1, FakeClock(wall));
        let ts: Vec<_> = (0..100).map(|_| hlc.now()).collect();
        assert!(ts.windows(2).all(|w| w[0] < w[1]));
    }

    #[test]
    fn observe_moves_the_clock_past_remote_time() {
        let wall = Arc::new(AtomicU64::new(100));
        let hlc = Hlc::with_clock(1, FakeClock(wall));
        hlc.observe(Timestamp { micros: 9_000, node: 2 }, Duration::from_secs(1)).unwrap();
        let t = hlc.now();
        assert!(t > Timestamp { micros: 9_000, node: 2 });
    }

    #[test]
    fn observe_refuses_timestamps_too_far_ahead() {
        let wall = Arc::new(AtomicU64::new(1_000_000));
        let hlc = Hlc::with_clock(1, FakeClock(wall));
        let bogus = Timestamp { micros: u64::MAX, node: 2 };
        assert!(hlc.observe(bogus, Duration::from_secs(5)).is_err());
        let ahead = Timestamp { micros: 1_000_000 + 6_000_000, node: 2 };
        assert_eq!(hlc.observe(ahead, Duration::from_secs(5)), Err(Duration::from_secs(6)));
        assert_eq!(hlc.now().micros, 1_000_000, "a refused timestamp leaves the clock alone");
        let near = Timestamp { micros: 1_000_000 + 4_000_000, node: 2 };
        hlc.observe(near, Duration::from_secs(5)).unwrap();
        assert_eq!(hlc.now().micros, 5_000_001);
    }

    #[test]
    fn ties_broken_by_node() {
        let a = Timestamp { micros: 5, node: 1 };
        let b = Timestamp { micros: 5, node: 2 };
        assert!(a < b);
    }

    #[test]
    fn concurrent_ticks_are_unique() {
        let hlc = Arc::new(Hlc::with_clock(1, FakeClock(Arc::new(AtomicU64::new(7)))));
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let handles: Vec<_> = (0..4)
            .map(|_| {
                let (hlc, barrier) = (hlc.clone(), barrier.clone());
                std::thread::spawn(move || {
                    barrier.wait();
                    (0..1000).map(|_| hlc.now().micros).collect::<Vec<_>>()
                })
            })
            .collect();
        let mut all: Vec<u64> = handles.into_iter().flat_map(|h| h.join().unwrap()).collect();
        let n = all.len();
        all.sort_unstable();
        all.dedup();
        assert_eq!(all.len(), n, "two ticks got the same timestamp");
    }
}
