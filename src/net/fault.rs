//! Fault injection: dropped and delayed messages, and pauses, on request.
//!
//! The kernel of the machines quorumkv is tested on has no `netem`, so network
//! faults are made in user space, by the replicas themselves. A replica started
//! with `--enable-fault-injection` accepts [`proto::FaultRequest`]s (the
//! console's `fault` commands); without the flag they are refused and nothing
//! here is ever consulted beyond one relaxed atomic load per message.
//!
//! A request changes only the behaviour of the replica that receives it, for
//! the messages it exchanges with the named peers (all of them if none are
//! named):
//!
//! | action | effect |
//! |--------|--------|
//! | `drop` *to* | requests and replies it sends to the peer are discarded; its new links to the peer fail to connect |
//! | `drop` *from* | requests and replies it receives from the peer are discarded unread; the peer's new links are closed at the handshake |
//! | `delay` *to* / *from* | those messages leave (or are handled) `delay_ms` later; their order is kept while the delay stays the same |
//! | `pause` | nothing it receives, from clients or peers, is handled for `pause_ms`; its failure detector stops too (as a `SIGSTOP` would) |
//! | `clock` | its wall clock reads `clock_offset_ms` ahead (or behind, if negative) of the system's, so its coordinator stamps writes from a skewed clock ([`ShiftedClock`]; at most a day either way) |
//! | `heal` | every drop and delay rule is removed and the clock put back (a pause ends on its own) |
//!
//! Dropping both ways on one replica is a full partition between it and the
//! peer: the peer's requests go unanswered, so the peer's failure detector
//! marks it down after `--down-after`, exactly as for a real partition; writes
//! that time out are hinted and replayed after the heal.
//!
//! Delays are made where the message is handled. Outbound requests on a link
//! go through a delay queue served by the `faults` thread, so the coordinator
//! that sends them is not held up (a slow link to one replica must not slow the
//! others). Inbound messages are held by the thread that reads them until
//! `delay` after the read that brought them in, so a burst read at once is
//! released at once (throughput is kept, latency grows by between one and two
//! delays). Replies a replica sends on a peer's link wait `delay` before their
//! `write`.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::cluster::ring::{NodeId, Ring};
use crate::error::{Error, Result};
use crate::proto::{self, FaultAction, FaultDirection};
use crate::storage::hlc::{SystemClock, WallClock};

/// The longest delay a request may set.
pub const MAX_DELAY: Duration = Duration::from_secs(60);
/// The longest pause a request may set.
pub const MAX_PAUSE: Duration = Duration::from_secs(600);

/// What this replica does to the messages it exchanges with one peer.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Rule {
    /// Discard what it sends to the peer.
    pub drop_to: bool,
    /// Discard what it receives from the peer.
    pub drop_from: bool,
    /// Hold what it sends to the peer this long.
    pub delay_to: Duration,
    /// Hold what it receives from the peer this long.
    pub delay_from: Duration,
}

impl Rule {
    /// No fault.
    pub const NONE: Rule = Rule { drop_to: false, drop_from: false, delay_to: Duration::ZERO, delay_from: Duration::ZERO };

    /// Whether either direction drops (the peer is partitioned away).
    pub fn drops(&self) -> bool {
        self.drop_to || self.drop_from
    }
}

/// What [`Faults::on_receive`] decided for a received message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Received {
    /// Handle it (after any pause or delay).
    Handle,
    /// Discard it unread: it never arrived.
    Drop,
}

/// A frame waiting in the delay queue.
struct Delayed {
    due: Instant,
    seq: u64,
    peer: NodeId,
    generation: u64,
    bytes: Vec<u8>,
}

impl PartialEq for Delayed {
    fn eq(&self, other: &Self) -> bool {
        (self.due, self.seq) == (other.due, other.seq)
    }
}
impl Eq for Delayed {}
impl PartialOrd for Delayed {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Delayed {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.due, self.seq).cmp(&(other.due, other.seq))
    }
}

struct State {
    /// Each peer's rule, in ring order.
    rules: Vec<(NodeId, Rule)>,
    paused_until: Option<Instant>,
    queue: BinaryHeap<Reverse<Delayed>>,
    seq: u64,
}

/// The largest clock shift a fault request may ask for.
pub const MAX_CLOCK_SHIFT: Duration = Duration::from_secs(24 * 3600);

/// The system clock shifted by an offset that a clock fault sets: the wall
/// clock of a replica's hybrid logical clock, so a test can make one replica's
/// clock run ahead or behind the others'.
#[derive(Default)]
pub struct ShiftedClock {
    offset_micros: std::sync::atomic::AtomicI64,
}

impl ShiftedClock {
    /// The current shift in milliseconds.
    pub fn offset_ms(&self) -> i64 {
        self.offset_micros.load(Ordering::Relaxed) / 1000
    }
}

impl WallClock for ShiftedClock {
    fn now_micros(&self) -> u64 {
        SystemClock.now_micros().saturating_add_signed(self.offset_micros.load(Ordering::Relaxed))
    }
}

/// One replica's faults (see the module docs).
pub struct Faults {
    enabled: bool,
    clock: Arc<ShiftedClock>,
    /// Set while any rule or pause is in force: the only thing the hot paths read.
    active: AtomicBool,
    state: Mutex<State>,
    cond: Condvar,
}

impl Faults {
    /// No faults, for the nodes `ids` (in ring order); requests are refused unless `enabled`.
    pub fn new(ids: impl IntoIterator<Item = NodeId>, enabled: bool) -> Self {
        let rules = ids.into_iter().map(|id| (id, Rule::NONE)).collect();
        Faults {
            enabled,
            clock: Arc::default(),
            active: AtomicBool::new(false),
            state: Mutex::new(State { rules, paused_until: None, queue: BinaryHeap::new(), seq: 0 }),
            cond: Condvar::new(),
        }
    }

    /// Whether fault requests are accepted.
    pub fn enabled(&self) -> bool {
        self.enabled
    }

    /// The rule for messages exchanged with `peer`.
    #[inline]
    pub fn rule(&self, peer: NodeId) -> Rule {
        if !self.active.load(Ordering::Relaxed) {
            return Rule::NONE;
        }
        self.state.lock().rules.iter().find(|(id, _)| *id == peer).map_or(Rule::NONE, |(_, r)| *r)
    }

    /// Whether a pause is in force.
    pub fn paused(&self) -> bool {
        if !self.active.load(Ordering::Relaxed) {
            return false;
        }
        let mut st = self.state.lock();
        self.expire(&mut st);
        st.paused_until.is_some()
    }

    /// Blocks while a pause is in force (or until `shutdown`).
    pub fn hold(&self, shutdown: &AtomicBool) {
        if !self.active.load(Ordering::Relaxed) {
            return;
        }
        let mut st = self.state.lock();
        loop {
            self.expire(&mut st);
            let Some(until) = st.paused_until else { return };
            if shutdown.load(Ordering::Acquire) {
                return;
            }
            // Bounded waits, so a shutdown is noticed.
            let _ = self.cond.wait_until(&mut st, until.min(Instant::now() + Duration::from_millis(100)));
        }
    }

    /// Ends a pause whose time is up, and clears `active` when nothing is left in force
    /// (so the hot paths are back to one atomic load).
    fn expire(&self, st: &mut State) {
        if st.paused_until.is_some_and(|t| t <= Instant::now()) {
            st.paused_until = None;
        }
        let active = st.paused_until.is_some() || st.rules.iter().any(|(_, r)| *r != Rule::NONE);
        self.active.store(active, Ordering::Relaxed);
    }

    /// Whether any rule or pause is in force (one relaxed load: the hot paths' whole cost).
    #[inline]
    pub fn active(&self) -> bool {
        self.active.load(Ordering::Relaxed)
    }

    /// What happens to a message just received (from `peer`, or from a client when `None`),
    /// brought in by a read at `read_at`: waits out a pause, then says whether to drop it,
    /// or holds it until `read_at` plus the peer's delay. For every thread that reads frames.
    #[inline]
    pub fn on_receive(&self, peer: Option<NodeId>, read_at: Instant, shutdown: &AtomicBool) -> Received {
        if !self.active() {
            return Received::Handle;
        }
        self.hold(shutdown);
        let Some(rule) = peer.map(|p| self.rule(p)) else { return Received::Handle };
        if rule.drop_from {
            return Received::Drop;
        }
        if let Some(left) = (read_at + rule.delay_from).checked_duration_since(Instant::now()) {
            std::thread::sleep(left);
        }
        Received::Handle
    }

    /// Queues `bytes` (frames for `peer`'s link of `generation`) to be written at `due`.
    pub fn delay_frames(&self, due: Instant, peer: NodeId, generation: u64, bytes: Vec<u8>) {
        let mut st = self.state.lock();
        st.seq += 1;
        let seq = st.seq;
        st.queue.push(Reverse(Delayed { due, seq, peer, generation, bytes }));
        self.cond.notify_all();
    }

    /// Waits for the next queued frames to fall due and returns `(peer, generation, bytes)`;
    /// `None` once `shutdown` is set. For the `faults` thread.
    pub fn next_due(&self, shutdown: &AtomicBool) -> Option<(NodeId, u64, Vec<u8>)> {
        let mut st = self.state.lock();
        loop {
            if shutdown.load(Ordering::Acquire) {
                return None;
            }
            let now = Instant::now();
            let wake = match st.queue.peek() {
                Some(Reverse(d)) if d.due <= now => {
                    let Reverse(d) = st.queue.pop().expect("peeked");
                    return Some((d.peer, d.generation, d.bytes));
                }
                Some(Reverse(d)) => d.due.min(now + Duration::from_millis(100)),
                None => now + Duration::from_millis(100),
            };
            let _ = self.cond.wait_until(&mut st, wake);
        }
    }

    /// Wakes the `faults` thread (for shutdown).
    pub fn wake(&self) {
        let _st = self.state.lock();
        self.cond.notify_all();
    }

    /// The wall clock a clock fault shifts: the node's clock must read it.
    pub fn clock(&self) -> Arc<ShiftedClock> {
        self.clock.clone()
    }

    /// Carries out a fault request received by node `me` of `ring`.
    pub fn handle(&self, req: proto::FaultRequest, ring: &Ring, me: NodeId) -> Result<proto::FaultResult> {
        let name = ring.name(me);
        if !self.enabled {
            return Err(Error::InvalidRequest(format!(
                "fault injection is disabled on {name}; start the replica with --enable-fault-injection"
            )));
        }
        let action =
            FaultAction::try_from(req.action).map_err(|_| Error::InvalidRequest(format!("unknown fault action {}", req.action)))?;
        let direction = FaultDirection::try_from(req.direction)
            .map_err(|_| Error::InvalidRequest(format!("unknown fault direction {}", req.direction)))?;
        let mut peers = Vec::with_capacity(req.peers.len());
        for p in &req.peers {
            match ring.id_of(p) {
                Some(id) if id == me => return Err(Error::InvalidRequest(format!("{p} is this replica; name its peers"))),
                Some(id) => peers.push(id),
                None => return Err(Error::InvalidRequest(format!("{p} is not in the ring"))),
            }
        }
        if peers.is_empty() {
            peers = ring.ids().filter(|&id| id != me).collect();
        }
        let (to, from) = match direction {
            FaultDirection::Both => (true, true),
            FaultDirection::To => (true, false),
            FaultDirection::From => (false, true),
        };
        let mut st = self.state.lock();
        match action {
            FaultAction::Show => {}
            FaultAction::Drop => {
                for (_, r) in st.rules.iter_mut().filter(|(id, _)| peers.contains(id)) {
                    r.drop_to |= to;
                    r.drop_from |= from;
                }
            }
            FaultAction::Delay => {
                let d = Duration::from_millis(req.delay_ms.into());
                if d > MAX_DELAY {
                    return Err(Error::InvalidRequest(format!(
                        "a delay of {} ms exceeds the limit of {} ms",
                        req.delay_ms,
                        MAX_DELAY.as_millis()
                    )));
                }
                for (_, r) in st.rules.iter_mut().filter(|(id, _)| peers.contains(id)) {
                    if to {
                        r.delay_to = d;
                    }
                    if from {
                        r.delay_from = d;
                    }
                }
            }
            FaultAction::Pause => {
                let d = Duration::from_millis(req.pause_ms.into());
                if d.is_zero() || d > MAX_PAUSE {
                    return Err(Error::InvalidRequest(format!(
                        "a pause must last from 1 to {} ms, not {}",
                        MAX_PAUSE.as_millis(),
                        req.pause_ms
                    )));
                }
                st.paused_until = Some(Instant::now() + d);
            }
            FaultAction::Heal => {
                st.rules.iter_mut().for_each(|(_, r)| *r = Rule::NONE);
                self.clock.offset_micros.store(0, Ordering::Relaxed);
            }
            FaultAction::Clock => {
                if req.clock_offset_ms.unsigned_abs() > MAX_CLOCK_SHIFT.as_millis() as u64 {
                    return Err(Error::InvalidRequest(format!(
                        "a clock shift of {} ms exceeds the limit of {} ms either way",
                        req.clock_offset_ms,
                        MAX_CLOCK_SHIFT.as_millis()
                    )));
                }
                self.clock.offset_micros.store(req.clock_offset_ms * 1000, Ordering::Relaxed);
            }
        }
        self.expire(&mut st);
        if action != FaultAction::Show {
            log::warn!("fault injection: {:?} {:?} {:?}; now: {:?}", action, direction, req.peers, describe(&st, ring));
        }
        self.cond.notify_all();
        let mut active = describe(&st, ring);
        match self.clock.offset_ms() {
            0 => {}
            ms => active.push(format!("clock shifted {ms:+} ms")),
        }
        Ok(proto::FaultResult { replica: name, active })
    }
}

/// One line per active fault.
fn describe(st: &State, ring: &Ring) -> Vec<String> {
    let mut lines = Vec::new();
    if let Some(left) = st.paused_until.and_then(|t| t.checked_duration_since(Instant::now())) {
        lines.push(format!("paused for {} ms more", left.as_millis()));
    }
    for (id, r) in &st.rules {
        let peer = ring.name(*id);
        match (r.drop_to, r.drop_from) {
            (true, true) => lines.push(format!("drop to and from {peer}")),
            (true, false) => lines.push(format!("drop to {peer}")),
            (false, true) => lines.push(format!("drop from {peer}")),
            _ => {}
        }
        if !r.delay_to.is_zero() {
            lines.push(format!("delay {} ms to {peer}", r.delay_to.as_millis()));
        }
        if !r.delay_from.is_zero() {
            lines.push(format!("delay {} ms from {peer}", r.delay_from.as_millis()));
        }
    }
    lines
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::NodeInfo;

    fn ids() -> Vec<NodeId> {
        (0..4).map(NodeId).collect()
    }

    fn ring() -> Ring {
        let nodes = (0..4)
            .map(|i| NodeInfo { name: format!("r{i}"), host: "127.0.0.1".into(), port: 9000 + i as u16, id: NodeId(i as u32) })
            .collect();
        Ring::new(nodes, 3, 1).unwrap()
    }

    fn req(action: FaultAction, peers: &[&str], direction: FaultDirection) -> proto::FaultRequest {
        proto::FaultRequest {
            action: action as i32,
            peers: peers.iter().map(|s| s.to_string()).collect(),
            direction: direction as i32,
            delay_ms: 0,
            pause_ms: 0,
            clock_offset_ms: 0,
        }
    }

    #[test]
    fn refused_unless_enabled() {
        let f = Faults::new(ids(), false);
        let e = f.handle(req(FaultAction::Drop, &["r1"], FaultDirection::Both), &ring(), NodeId(0)).unwrap_err();
        assert!(e.to_string().contains("--enable-fault-injection"), "{e}");
        assert_eq!(f.rule(NodeId(1)), Rule::NONE);
    }

    #[test]
    fn drop_delay_heal_by_peer_and_direction() {
        let (f, r) = (Faults::new(ids(), true), ring());
        f.handle(req(FaultAction::Drop, &["r1"], FaultDirection::To), &r, NodeId(0)).unwrap();
        assert_eq!(f.rule(NodeId(1)), Rule { drop_to: true, ..Rule::NONE });
        assert_eq!(f.rule(NodeId(2)), Rule::NONE);
        let mut d = req(FaultAction::Delay, &[], FaultDirection::From);
        d.delay_ms = 250;
        let shown = f.handle(d, &r, NodeId(0)).unwrap();
        // No peers named: every peer but this replica.
        for i in 1..4 {
            assert_eq!(f.rule(NodeId(i)).delay_from, Duration::from_millis(250));
        }
        assert_eq!(f.rule(NodeId(0)), Rule::NONE);
        assert!(shown.active.contains(&"drop to r1".to_string()), "{:?}", shown.active);
        assert!(shown.active.contains(&"delay 250 ms from r3".to_string()), "{:?}", shown.active);
        let healed = f.handle(req(FaultAction::Heal, &[], FaultDirection::Both), &r, NodeId(0)).unwrap();
        assert!(healed.active.is_empty(), "{:?}", healed.active);
        assert!((0..4).all(|i| f.rule(NodeId(i)) == Rule::NONE));
        assert!(!f.active.load(Ordering::Relaxed));
    }

    #[test]
    fn bad_requests_say_what_is_wrong() {
        let (f, r) = (Faults::new(ids(), true), ring());
        let cases: Vec<(proto::FaultRequest, &str)> = vec![
            (req(FaultAction::Drop, &["r0"], FaultDirection::Both), "is this replica"),
            (req(FaultAction::Drop, &["nobody"], FaultDirection::Both), "not in the ring"),
            (proto::FaultRequest { action: 99, ..req(FaultAction::Show, &[], FaultDirection::Both) }, "unknown fault action"),
            (proto::FaultRequest { direction: 7, ..req(FaultAction::Drop, &[], FaultDirection::Both) }, "unknown fault direction"),
            (proto::FaultRequest { delay_ms: 60_001, ..req(FaultAction::Delay, &[], FaultDirection::Both) }, "exceeds the limit"),
            (req(FaultAction::Pause, &[], FaultDirection::Both), "a pause must last"),
            (
                proto::FaultRequest { clock_offset_ms: -86_400_001, ..req(FaultAction::Clock, &[], FaultDirection::Both) },
                "exceeds the limit",
            ),
            (proto::FaultRequest { clock_offset_ms: i64::MIN, ..req(FaultAction::Clock, &[], FaultDirection::Both) }, "exceeds the limit"),
        ];
        for (q, want) in cases {
            let e = f.handle(q.clone(), &r, NodeId(0)).unwrap_err();
            assert!(e.to_string().contains(want), "{q:?}: {e}");
        }
        assert!(!f.active.load(Ordering::Relaxed), "refused requests change nothing");
        assert_eq!(f.clock().offset_ms(), 0, "refused requests change nothing");
    }

    /// A clock fault shifts the clock the node reads, shows, and is put back by `heal`.
    #[test]
    fn a_clock_shift_moves_the_wall_clock_until_healed() {
        let (f, r) = (Faults::new(ids(), true), ring());
        let clock = f.clock();
        let shift = proto::FaultRequest { clock_offset_ms: -2000, ..req(FaultAction::Clock, &[], FaultDirection::Both) };
        let shown = f.handle(shift, &r, NodeId(0)).unwrap();
        assert_eq!(shown.active, vec!["clock shifted -2000 ms".to_string()]);
        let behind = SystemClock.now_micros() - clock.now_micros();
        assert!((1_990_000..=2_010_000).contains(&behind), "{behind} µs behind");
        assert!(f.handle(req(FaultAction::Heal, &[], FaultDirection::Both), &r, NodeId(0)).unwrap().active.is_empty());
        assert!(SystemClock.now_micros().abs_diff(clock.now_micros()) < 10_000);
    }

    #[test]
    fn pause_holds_until_it_ends() {
        let (f, r) = (Faults::new(ids(), true), ring());
        let mut p = req(FaultAction::Pause, &[], FaultDirection::Both);
        p.pause_ms = 150;
        let start = Instant::now();
        f.handle(p, &r, NodeId(0)).unwrap();
        assert!(f.paused());
        f.hold(&AtomicBool::new(false));
        assert!(start.elapsed() >= Duration::from_millis(150));
        assert!(!f.paused());
        assert!(!f.active.load(Ordering::Relaxed), "an ended pause leaves the hot paths alone");
    }

    #[test]
    fn delayed_frames_come_out_in_due_order() {
        let f = Faults::new(ids(), true);
        let now = Instant::now();
        f.delay_frames(now + Duration::from_millis(30), NodeId(1), 7, b"second".to_vec());
        f.delay_frames(now + Duration::from_millis(10), NodeId(2), 7, b"first".to_vec());
        let stop = AtomicBool::new(false);
        assert_eq!(f.next_due(&stop), Some((NodeId(2), 7, b"first".to_vec())));
        assert_eq!(f.next_due(&stop), Some((NodeId(1), 7, b"second".to_vec())));
        assert!(now.elapsed() >= Duration::from_millis(30));
        stop.store(true, Ordering::Release);
        assert_eq!(f.next_due(&stop), None);
    }
}
