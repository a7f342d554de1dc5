//! Rate-limited logging of bad requests.
//!
//! A replica answers every malformed or invalid request with an error, and an
//! operator wants to know it is receiving them — but a client (or an attacker)
//! sending a hundred thousand bad frames a second must not turn that into a
//! hundred thousand log lines. A [`BadLog`] writes **at most one `warn!` line
//! per interval** (one second for the replica): the first bad request is
//! logged at once, with its reason and the sender's address; those that follow
//! within the interval are only counted, and the next line that is written says
//! how many were left out and how many there were in all:
//!
//! ```text
//! bad request from 127.0.0.1:40522: malformed request: … (84213 so far; 21053 not logged since the last line)
//! ```
//!
//! So a flood costs one line per second however long it lasts, and a bad
//! request that comes alone, long after a flood, is still logged at once
//! (a power-of-two schedule would have stayed silent until the count doubled).
//! Reasons are cut to [`MAX_REASON`] bytes (room for two rings of a large
//! cluster in a handshake refusal): they can quote what the sender sent (a
//! peer's ring description, up to a frame's megabyte), and a line must stay
//! a line.
//!
//! Counting is a few atomic operations, with no lock and no allocation unless
//! a line is written; it is called only on error paths.

use std::fmt;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::warn;

/// Longest reason, in bytes, a logged line quotes.
pub const MAX_REASON: usize = 1024;

/// Counts bad requests of one kind and logs at most one line per interval.
pub struct BadLog {
    /// What is counted, as the line starts (`bad request`, `refusing replica link`).
    what: &'static str,
    start: Instant,
    interval: Duration,
    /// Microseconds after `start` before which no line is written.
    next_line: AtomicU64,
    total: AtomicU64,
    /// Counted since the last line and not logged.
    suppressed: AtomicU64,
}

/// A line [`BadLog::note_at`] decided to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Line {
    /// Bad requests counted so far, this one included.
    pub total: u64,
    /// Bad requests counted since the previous line and not logged.
    pub suppressed: u64,
}

impl BadLog {
    /// A log of `what` writing at most one line per `interval`.
    pub fn new(what: &'static str, interval: Duration) -> Self {
        BadLog {
            what,
            start: Instant::now(),
            interval,
            next_line: AtomicU64::new(0),
            total: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// Bad requests counted so far.
    pub fn total(&self) -> u64 {
        self.total.load(Ordering::Relaxed)
    }

    /// Counts one bad request from `peer` refused for `reason`; logs it if no line was written in the last interval.
    pub fn note(&self, peer: &str, reason: &dyn fmt::Display) {
        if let Some(line) = self.note_at(Instant::now()) {
            warn!("{}", self.text(peer, &reason.to_string(), &line));
        }
    }

    /// The text of `line` about a request from `peer` refused for `reason` (cut to [`MAX_REASON`] bytes).
    pub fn text(&self, peer: &str, reason: &str, line: &Line) -> String {
        let mut end = reason.len().min(MAX_REASON);
        while !reason.is_char_boundary(end) {
            end -= 1;
        }
        let cut = if end < reason.len() { "…" } else { "" };
        let reason = &reason[..end];
        match line.suppressed {
            0 => format!("{} from {peer}: {reason}{cut} ({} so far)", self.what, line.total),
            n => format!("{} from {peer}: {reason}{cut} ({} so far; {n} not logged since the last line)", self.what, line.total),
        }
    }

    /// Counts one bad request at `now`; returns the line to write, if one is due.
    /// Of many threads noting at once, at most one per interval gets a line.
    pub fn note_at(&self, now: Instant) -> Option<Line> {
        let total = self.total.fetch_add(1, Ordering::Relaxed) + 1;
        let at = now.saturating_duration_since(self.start).as_micros() as u64;
        let due = self.next_line.load(Ordering::Relaxed);
        let next = at + self.interval.as_micros() as u64;
        if at >= due && self.next_line.compare_exchange(due, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            Some(Line { total, suppressed: self.suppressed.swap(0, Ordering::Relaxed) })
        } else {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[test]
    fn first_is_logged_then_one_line_per_interval_with_the_count_left_out() {
        let log = BadLog::new("bad request", Duration::from_secs(1));
        let t0 = log.start;
        assert_eq!(log.note_at(t0), Some(Line { total: 1, suppressed: 0 }));
        for i in 0..10_000 {
            assert_eq!(log.note_at(t0 + Duration::from_micros(i * 99)), None, "within the first second");
        }
        assert_eq!(log.note_at(t0 + Duration::from_secs(1)), Some(Line { total: 10_002, suppressed: 10_000 }));
        assert_eq!(log.note_at(t0 + Duration::from_millis(1500)), None);
        // Quiet for a long time, then one alone: logged at once.
        assert_eq!(log.note_at(t0 + Duration::from_secs(3600)), Some(Line { total: 10_004, suppressed: 1 }));
        assert_eq!(log.total(), 10_004);
    }

    #[test]
    fn concurrent_noters_get_one_line_per_interval_and_lose_no_count() {
        let log = Arc::new(BadLog::new("bad request", Duration::from_secs(3600)));
        let threads: Vec<_> = (0..4)
            .map(|_| {
                let log = log.clone();
                std::thread::spawn(move || (0..20_000).filter(|_| log.note_at(Instant::now()).is_some()).count())
            })
            .collect();
        let lines: usize = threads.into_iter().map(|t| t.join().unwrap()).sum();
        assert_eq!(lines, 1, "one interval, one line");
        assert_eq!(log.total(), 80_000);
        assert_eq!(log.suppressed.load(Ordering::Relaxed), 79_999);
    }

    #[test]
    fn long_reasons_are_cut_on_a_character_boundary() {
        let log = BadLog::new("bad request", Duration::ZERO);
        let line = Line { total: 7, suppressed: 0 };
        let short = log.text("127.0.0.1:1", "malformed request: x", &line);
        assert_eq!(short, "bad request from 127.0.0.1:1: malformed request: x (7 so far)");
        let long = log.text("127.0.0.1:1", &format!("a{}", "é".repeat(10 * MAX_REASON)), &Line { total: 9, suppressed: 3 });
        assert!(long.len() < MAX_REASON + 100, "{} bytes", long.len());
        assert!(long.ends_with("é… (9 so far; 3 not logged since the last line)"), "{long}");
        // The logging path itself (no logger is installed: it must still count and not panic).
        log.note("127.0.0.1:1", &"é".repeat(MAX_REASON));
        assert_eq!(log.total(), 1);
    }
}
