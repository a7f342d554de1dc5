//! One long-lived thread that runs callbacks when they fall due: the back-offs
//! and deadlines of SERIAL operations, which wait on no socket of their own.
//!
//! [`Timer::at`] puts a callback in a heap ordered by due time (ties in the
//! order queued); the thread sleeps until the earliest is due. It is woken
//! only when a callback due before everything queued arrives: a deadline,
//! which is almost always later than the ones already queued, costs a heap
//! insertion and no thread switch. A callback runs on the timer thread, so it
//! must not block for long: SERIAL operations hand the sends it asks for to
//! the repair thread, and the only wait in one is for a withdrawal's log
//! record (see `node::serial`). A callback that panics is logged and the
//! thread goes on. The thread ends when the [`Timer`] is dropped; callbacks
//! still queued then are dropped unrun.

use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Instant;

use log::error;
use parking_lot::{Condvar, Mutex};

type Callback = Box<dyn FnOnce() + Send>;

struct Entry {
    at: Instant,
    seq: u64,
    f: Callback,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}

impl Eq for Entry {}

impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl Ord for Entry {
    /// Reversed, so the max-heap pops the earliest.
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}

#[derive(Default)]
struct Queue {
    heap: BinaryHeap<Entry>,
    seq: u64,
    /// The timer was dropped: the thread ends.
    closed: bool,
}

#[derive(Default)]
struct Shared {
    queue: Mutex<Queue>,
    changed: Condvar,
}

/// Runs callbacks at their due time on one thread (see the module docs).
pub struct Timer {
    shared: Arc<Shared>,
    running: bool,
}

impl Timer {
    /// Starts the thread, named `name`. If the thread cannot be started (the
    /// process is out of threads), that is logged and callbacks never run.
    pub fn new(name: &str) -> Timer {
        let shared = Arc::new(Shared::default());
        let theirs = shared.clone();
        let running = match std::thread::Builder::new().name(name.to_string()).spawn(move || run(&theirs)) {
            Ok(_) => true,
            Err(e) => {
                error!("cannot start the {name} thread: {e}; SERIAL operations will not time out or back off");
                false
            }
        };
        Timer { shared, running }
    }

    /// Whether its thread runs (callbacks run at all).
    pub fn running(&self) -> bool {
        self.running
    }

    /// Runs `f` on the timer thread once `at` has passed (soon if it has).
    pub fn at(&self, at: Instant, f: impl FnOnce() + Send + 'static) {
        let mut q = self.shared.queue.lock();
        let earliest = q.heap.peek().is_none_or(|e| at < e.at);
        q.seq += 1;
        let seq = q.seq;
        q.heap.push(Entry { at, seq, f: Box::new(f) });
        drop(q);
        if earliest {
            self.shared.changed.notify_one();
        }
    }
}

impl Drop for Timer {
    fn drop(&mut self) {
        self.shared.queue.lock().closed = true;
        self.shared.changed.notify_one();
    }
}

fn run(shared: &Shared) {
    let mut q = shared.queue.lock();
    loop {
        if q.closed {
            return;
        }
        let now = Instant::now();
        match q.heap.peek().map(|e| e.at) {
            Some(at) if at <= now => {
                let Some(e) = q.heap.pop() else { continue };
                drop(q);
                if catch_unwind(AssertUnwindSafe(e.f)).is_err() {
                    error!("a timer callback panicked; the timer goes on");
                }
                q = shared.queue.lock();
            }
            Some(at) => {
                shared.changed.wait_until(&mut q, at);
            }
            None => shared.changed.wait(&mut q),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// Callbacks run in due order (ties in the order queued), none before it is due.
    #[test]
    fn callbacks_run_in_due_order_and_not_early() {
        let timer = Timer::new("test-timer");
        let (tx, rx) = crossbeam_channel::unbounded();
        let start = Instant::now();
        for (i, ms) in [(0, 30u64), (1, 10), (2, 20), (3, 10)] {
            let tx = tx.clone();
            let at = start + Duration::from_millis(ms);
            timer.at(at, move || tx.send((i, at, Instant::now())).unwrap());
        }
        let got: Vec<_> = (0..4).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        assert_eq!(got.iter().map(|g| g.0).collect::<Vec<_>>(), vec![1, 3, 2, 0]);
        for (i, at, ran) in got {
            assert!(ran >= at, "callback {i} ran before it was due");
        }
    }

    /// A panicking callback does not stop the ones after it.
    #[test]
    fn a_panicking_callback_does_not_stop_the_timer() {
        let timer = Timer::new("test-timer");
        let (tx, rx) = crossbeam_channel::unbounded();
        timer.at(Instant::now(), || panic!("deliberately"));
        timer.at(Instant::now(), move || tx.send(()).unwrap());
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
    }
}
