//! The replica's long-lived background threads (besides the links, the
//! connection workers and the read batcher): maintenance, delayed frames,
//! the log's syncer and snapshots, hint replay.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, RecvTimeoutError};
use log::warn;

use crate::cluster::ring::NodeId;
use crate::net::links::Links;
use crate::node::Node;
use crate::storage::wal::FsyncMode;

const MAINTENANCE_TICK: Duration = Duration::from_millis(25);

/// Every tick: expire pending requests, mark silent peers down, send heartbeats.
pub(super) fn maintenance(node: &Node, links: &Links) {
    let mut last_heartbeat = Instant::now() - node.cfg.heartbeat_interval;
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(MAINTENANCE_TICK);
        if links.faults.paused() {
            continue; // an injected pause stops everything, the failure detector included
        }
        let now = Instant::now();
        let beat = now.duration_since(last_heartbeat) >= node.cfg.heartbeat_interval;
        if beat {
            last_heartbeat = now;
        }
        for link in links.iter() {
            link.sweep(now);
            link.check_liveness(node.cfg.down_after);
            if beat {
                link.heartbeat(node.name(), node.clock.now().micros, node.view().epoch(), now + node.cfg.down_after);
                node.saw_epoch(link.heard_epoch());
            }
        }
    }
}

/// Sends the frames fault injection delayed, when they fall due.
pub(super) fn delayer(node: &Node, links: &Links) {
    while let Some((peer, generation, bytes)) = links.faults.next_due(&node.shutdown) {
        if let Some(link) = links.get(peer) {
            link.send_delayed(generation, &bytes);
        }
    }
}

/// Writes out what writers have not (hints) and, in `batch` mode, fsyncs every window.
pub(super) fn syncer(node: &Node) {
    let Some(wal) = &node.wal else { return };
    let (tick, window) = match wal.mode() {
        FsyncMode::Batch(w) => (w.min(Duration::from_millis(10)).max(Duration::from_millis(1)), Some(w)),
        _ => (Duration::from_millis(10), None),
    };
    let mut last_sync = Instant::now();
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(tick);
        if wal.failure().is_some() {
            continue; // the snapshotter retries
        }
        match window {
            Some(w) if last_sync.elapsed() >= w => {
                last_sync = Instant::now();
                let _ = wal.sync();
            }
            _ => wal.flush(),
        }
    }
}

/// Takes a snapshot when the log grows past `--snapshot-bytes`, and retries a failed log
/// (a snapshot starts a fresh log, which is how a full disk that was freed, or a log
/// that hit a size limit, gets going again).
pub(super) fn snapshotter(node: &Node) {
    let Some(wal) = &node.wal else { return };
    let mut last_retry = Instant::now();
    let mut failures = 0u64;
    while !node.shutdown.load(Ordering::Acquire) {
        std::thread::sleep(Duration::from_millis(20));
        let failed = wal.failure().is_some();
        if failed && last_retry.elapsed() < Duration::from_millis(500) {
            continue;
        }
        if failed {
            last_retry = Instant::now();
            if wal.sync().is_ok() {
                continue;
            }
        } else if wal.log_bytes() < snapshot_limit(node) && !node.fold.swap(false, Ordering::AcqRel) {
            continue;
        }
        match node.snapshot() {
            Ok(_) => failures = 0,
            Err(e) => {
                failures += 1;
                if failures.is_power_of_two() {
                    warn!("snapshot failed ({failures} time(s) so far): {e}");
                }
                std::thread::sleep(Duration::from_millis(500));
            }
        }
    }
}

/// The log size that starts a snapshot: `--snapshot-bytes`, or more while a
/// movement copies into the node.
fn snapshot_limit(node: &Node) -> u64 {
    match node.copying.load(Ordering::Acquire) {
        true => node.cfg.snapshot_bytes.saturating_mul(crate::node::COPY_SNAPSHOT_FACTOR),
        false => node.cfg.snapshot_bytes,
    }
}

/// Replays hints to a peer that came up, and every second to any peer with hints.
pub(super) fn hint_worker(node: &Arc<Node>, peer_up: Receiver<NodeId>) {
    if !node.cfg.mode.hinted_handoff() {
        // Drain peer-up notices so the channel does not grow.
        while peer_up.recv().is_ok() {}
        return;
    }
    loop {
        match peer_up.recv_timeout(Duration::from_secs(1)) {
            Ok(target) => node.replay_hints(target),
            Err(RecvTimeoutError::Timeout) => {
                for target in node.hints.targets_with_hints() {
                    node.replay_hints(target);
                }
            }
            Err(RecvTimeoutError::Disconnected) => return,
        }
        if node.shutdown.load(Ordering::Acquire) {
            return;
        }
    }
}
