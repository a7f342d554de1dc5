//! `status`, `inspect` and `display`: what a coordinator knows and what each replica holds.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use crate::cluster::key::Key;
use crate::cluster::ring::{NodeId, Ring};
use crate::coordinator::antientropy::cell_hash;
use crate::coordinator::call::Call;
use crate::coordinator::gather::GatherMachine;
use crate::message::{MAX_DUMP_CELLS, MAX_PAGE_BYTES, PeerRequest, PeerResponse, PeerResult};
use crate::node::Node;
use crate::proto;
use crate::storage::cell::Version;

/// Cuts `v` to at most `max` bytes; says whether it cut. (Values are bytes:
/// the console escapes whatever is not UTF-8, a cut character included.)
fn truncate(v: &mut Vec<u8>, max: usize) -> bool {
    if v.len() <= max {
        return false;
    }
    v.truncate(max);
    true
}

/// One replica's cells in the slots `display` looked into: key → (version, value cut).
type Listing = BTreeMap<Vec<u8>, (Version, bool)>;

/// `display` asks for the digests of this many slots at a time.
const DIGEST_SLOTS: usize = 16;

/// A version as an entry of `inspect` or `display`, its value cut to `max_value_len`.
fn entry(name: String, v: Option<&Version>, max_value_len: usize) -> proto::InspectEntry {
    let mut version = v.map(|v| v.to_proto());
    let truncated = version.as_mut().is_some_and(|pv| truncate(&mut pv.value, max_value_len));
    proto::InspectEntry { name, reachable: true, version, error: String::new(), truncated }
}

fn unreachable(name: String, why: String) -> proto::InspectEntry {
    proto::InspectEntry { name, error: why, ..Default::default() }
}

/// Why a gathered reply is not the one asked for.
pub(crate) fn why(r: Option<PeerResult>) -> String {
    match r {
        Some(Ok(other)) => format!("unexpected reply {other:?}"),
        Some(Err(e)) => e.message().to_string(),
        None => "no reply in time".into(),
    }
}

impl Node {
    /// Asks each of `targets` the same question; `None` where a target did not answer in time.
    pub fn gather(self: &Arc<Self>, targets: Vec<NodeId>, msg: PeerRequest) -> Vec<Option<PeerResult>> {
        self.gather_by(targets, msg, self.deadline())
    }

    /// [`gather`](Self::gather) with the answers waited for until `deadline` at most.
    pub fn gather_by(self: &Arc<Self>, targets: Vec<NodeId>, msg: PeerRequest, deadline: std::time::Instant) -> Vec<Option<PeerResult>> {
        let call = Call::new(GatherMachine::new(targets, msg), self.clone(), self.budget.clone(), deadline);
        call.start();
        call.wait().take()
    }

    /// Each replica of `key`: its version, or why it could not be asked.
    pub fn inspect(self: &Arc<Self>, key: &Key) -> proto::InspectResult {
        let ring = self.ring();
        let targets = ring.replicas(key.as_bytes()).to_vec();
        let results = self.gather(targets.clone(), PeerRequest::Read { key: key.clone() });
        let replicas = targets
            .iter()
            .zip(results)
            .map(|(&t, r)| match r {
                Some(Ok(PeerResponse::Read(v))) => entry(ring.name(t), v.as_ref(), usize::MAX),
                other => unreachable(ring.name(t), why(other)),
            })
            .collect();
        proto::InspectResult { key: key.to_vec(), replicas }
    }

    /// What every node holds, summed up, and the keys whose replicas disagree
    /// (at most `max_keys`, values cut to `max_value_len` bytes).
    ///
    /// Two rounds: every node sends its totals and a digest of each group of
    /// cells sharing a slot and a replica set; the replicas of a group whose
    /// digests differ are then asked for those slots' cells, and the cells are
    /// compared key by key. Work and replies grow with the differences, not
    /// with the keys held.
    pub fn display(self: &Arc<Self>, max_value_len: u32, max_keys: u32) -> proto::DisplayResult {
        let ring = self.ring();
        let targets: Vec<NodeId> = ring.ids().collect();
        // Digests a few slots at a time: a replica's answer walks a sixteenth of its
        // cells, so the other requests on its link (heartbeats among them) wait little.
        let mut results: Vec<Option<PeerResult>> = Vec::new();
        for first in (0..=255u8).step_by(DIGEST_SLOTS) {
            let digest_slots = (first..=first.saturating_add(DIGEST_SLOTS as u8 - 1)).collect();
            let msg = PeerRequest::Dump { max_value_len, slots: Vec::new(), max_keys: 0, after: None, digest_slots };
            let page = self.gather(targets.clone(), msg);
            if results.is_empty() {
                results = page;
                continue;
            }
            for (r, p) in results.iter_mut().zip(page) {
                match (r, p) {
                    (Some(Ok(PeerResponse::Dump(d))), Some(Ok(PeerResponse::Dump(more)))) => d.digests.extend(more.digests),
                    (r @ Some(Ok(_)), other) => *r = other,
                    _ => {}
                }
            }
        }
        let mut digests: Vec<Option<HashMap<(u32, u32), u64>>> = Vec::with_capacity(targets.len());
        let mut replicas = Vec::with_capacity(targets.len());
        for ((i, &t), r) in targets.iter().enumerate().zip(results) {
            let (range_start, range_end) = ring.range(i).unwrap_or((0, 0));
            let mut e = proto::ReplicaDumpEntry {
                name: ring.name(t),
                range_start: range_start as u32,
                range_end: range_end as u32,
                tokens: ring.tokens_of(i).len() as u32,
                share: ring.share(i),
                ..Default::default()
            };
            match r {
                Some(Ok(PeerResponse::Dump(d))) => {
                    (e.reachable, e.keys, e.bytes) = (true, d.keys, d.bytes);
                    digests.push(Some(d.digests.iter().map(|g| ((g.slot, g.range), g.digest)).collect()));
                }
                other => {
                    e.error = why(other);
                    digests.push(None);
                }
            }
            replicas.push(e);
        }
        // Groups whose reachable replicas disagree; a replica without the group holds none of it.
        let groups: BTreeSet<(u32, u32)> = digests.iter().flatten().flat_map(|d| d.keys().copied()).collect();
        let mut differing: BTreeSet<u8> = BTreeSet::new();
        // The replicas (ring positions) to compare in each slot.
        let mut asked: Vec<BTreeSet<usize>> = vec![BTreeSet::new(); 256];
        for &(slot, range) in &groups {
            let Ok(slot8) = u8::try_from(slot) else { continue };
            let holders: Vec<usize> =
                ring.group_replicas(slot8, range).iter().filter_map(|&id| ring.position(id)).filter(|&i| digests[i].is_some()).collect();
            let of = |i: usize| digests[i].as_ref().and_then(|d| d.get(&(slot, range)).copied()).unwrap_or(0);
            if holders.iter().any(|&i| of(i) != of(holders[0])) {
                differing.insert(slot8);
                asked[slot as usize].extend(holders);
            }
        }
        let mut out = proto::DisplayResult {
            replicas,
            rf: ring.rf() as u32,
            partitioner: ring.partitioner().name().to_string(),
            differing_slots: differing.len() as u32,
            differences: Vec::new(),
            more: false,
        };
        if differing.is_empty() {
            return out;
        }
        for slot in differing {
            if !self.differences_in(&ring, slot, &asked[slot as usize], max_value_len, max_keys, &mut out) {
                out.more = true;
                break;
            }
        }
        out
    }

    /// Marks replica `i` unreachable in `out`: it did not answer for `slot`,
    /// so keys it alone differs in may not be listed.
    fn lost(out: &mut proto::DisplayResult, i: usize, slot: u8, r: Option<PeerResult>) {
        let e = &mut out.replicas[i];
        if e.reachable {
            e.reachable = false;
            e.error = format!("did not list slot {slot}: {}; its differences may be missing", why(r));
        }
    }

    /// Compares slot `slot`'s cells on `holders` (ring positions), page by
    /// page, adding the keys that differ to `out`; false once `max_keys` are
    /// listed and more differ.
    ///
    /// Each replica answers a page of at most about 1 MiB (a page stops early
    /// and says so); only keys up to the smallest last key of the pages that
    /// stopped early can be compared (past it, a replica's silence is not yet
    /// an absence), and the next page starts after that key.
    fn differences_in(
        self: &Arc<Self>,
        ring: &Ring,
        slot: u8,
        holders: &BTreeSet<usize>,
        max_value_len: u32,
        max_keys: u32,
        out: &mut proto::DisplayResult,
    ) -> bool {
        // The ring `display` started with: `holders` are positions in it.
        let targets: Vec<NodeId> = ring.ids().collect();
        let asked: Vec<usize> = holders.iter().copied().collect();
        let mut after: Option<Key> = None;
        loop {
            let msg = PeerRequest::Dump {
                max_value_len,
                slots: vec![slot],
                max_keys: MAX_DUMP_CELLS,
                after: after.clone(),
                digest_slots: Vec::new(),
            };
            let results = self.gather(asked.iter().map(|&i| targets[i]).collect(), msg);
            // Every asked replica's cells, by key; None where it did not answer this time.
            let mut cells: Vec<Option<Listing>> = vec![None; targets.len()];
            let mut bound: Option<Vec<u8>> = None;
            for (&i, r) in asked.iter().zip(results) {
                if !matches!(r, Some(Ok(PeerResponse::Dump(_)))) {
                    Node::lost(out, i, slot, r);
                    continue;
                }
                if let Some(Ok(PeerResponse::Dump(d))) = r {
                    if d.more
                        && let Some(last) = d.cells.last()
                        && bound.as_ref().is_none_or(|b| &last.key < b)
                    {
                        bound = Some(last.key.clone());
                    }
                    cells[i] = Some(
                        d.cells.into_iter().filter_map(|c| c.version.map(|v| (c.key, (Version::from_proto(v), c.truncated)))).collect(),
                    );
                }
            }
            let keys: BTreeSet<&Vec<u8>> = cells
                .iter()
                .flatten()
                .flat_map(|m| m.keys())
                .filter(|k| bound.as_ref().is_none_or(|b| *k <= b) && after.as_ref().is_none_or(|a| k.as_slice() > a.as_bytes()))
                .collect();
            for key in keys {
                let holders: Vec<usize> =
                    ring.replicas(key).iter().filter_map(|&id| ring.position(id)).filter(|&i| cells[i].is_some()).collect();
                let of = |i: usize| cells[i].as_ref().and_then(|m| m.get(key)).map(|(v, _)| (v.ts, v.is_tombstone()));
                if holders.iter().all(|&i| of(i) == of(holders[0])) {
                    continue;
                }
                if out.differences.len() >= max_keys as usize {
                    return false;
                }
                let replicas = holders
                    .iter()
                    .map(|&i| {
                        let found = cells[i].as_ref().and_then(|m| m.get(key));
                        let mut e = entry(ring.name(targets[i]), found.map(|(v, _)| v), max_value_len as usize);
                        e.truncated |= found.is_some_and(|(_, cut)| *cut);
                        e
                    })
                    .collect();
                out.differences.push(proto::KeyDifference { key: key.clone(), replicas });
            }
            match bound {
                // Pages must move on: a reply that would start the next page at or
                // before this one's start (a broken peer) ends the slot here.
                Some(b) if after.as_ref().is_none_or(|a| b.as_slice() > a.as_bytes()) => after = Some(Key::trusted(b)),
                _ => return true,
            }
        }
    }

    /// This replica's side of `display`: with no `slots`, its totals and the
    /// digest of every group of its cells; otherwise the cells of `slots`
    /// after `after` (in the first slot), in order, values cut to
    /// `max_value_len` bytes, at most `max_keys` of them and about
    /// [`MAX_PAGE_BYTES`], with `more` set if it stopped early.
    pub fn dump(&self, max_value_len: u32, slots: &[u8], max_keys: u32, after: Option<&Key>, digest_slots: &[u8]) -> proto::DumpResult {
        let totals = self.store.totals();
        let mut d = proto::DumpResult { keys: totals.keys, bytes: totals.bytes, ..Default::default() };
        // Taken before any slot's lock: never the view's lock under a slot's
        // (a peer write holds the view's while it takes a slot's).
        let ring = self.ring();
        if slots.is_empty() {
            let every: Vec<u8> = (0..=255).collect();
            for &slot in if digest_slots.is_empty() { &every[..] } else { digest_slots } {
                let mut groups: BTreeMap<u32, (u64, u64)> = BTreeMap::new();
                self.store.for_each_stamp(slot, |k, ts, tombstone| {
                    let g = groups.entry(ring.range_index(k)).or_default();
                    g.0 += 1;
                    g.1 ^= cell_hash(k, ts, tombstone);
                });
                d.digests.extend(groups.into_iter().map(|(range, (keys, digest))| proto::SlotDigest {
                    slot: slot as u32,
                    range,
                    keys,
                    digest,
                }));
            }
            return d;
        }
        let mut bytes = 0;
        for (n, &slot) in slots.iter().enumerate() {
            let start = if n == 0 { after.map(Key::as_bytes) } else { None };
            let room = (max_keys as usize).saturating_sub(d.cells.len());
            let (cells, more) = self.store.list_cut(slot, start, room, max_value_len as usize, MAX_PAGE_BYTES.saturating_sub(bytes));
            for c in cells {
                bytes += c.key.len() + c.value.as_ref().map_or(0, Vec::len);
                let version = proto::Version {
                    micros: c.ts.micros,
                    node: c.ts.node,
                    tombstone: c.value.is_none(),
                    value: c.value.unwrap_or_default(),
                };
                d.cells.push(proto::KeyVersion { key: c.key.to_vec(), version: Some(version), truncated: c.cut });
            }
            if more || (d.cells.len() >= max_keys as usize || bytes >= MAX_PAGE_BYTES) && n + 1 < slots.len() {
                d.more = true;
                break;
            }
        }
        d
    }

    /// The coordinator's view of the cluster.
    pub fn status(&self) -> proto::StatusResult {
        let view = self.view();
        let ring = view.ring.clone();
        let mut replicas: Vec<proto::ReplicaStatus> = ring
            .nodes()
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let (s, e) = ring.range(i).unwrap_or((0, 0));
                let is_self = n.id == self.me;
                let storage = if is_self { Some(self.storage_stats()) } else { self.peers.storage(n.id) };
                proto::ReplicaStatus {
                    storage,
                    name: n.name.clone(),
                    address: n.address(),
                    up: self.alive(n.id),
                    range_start: s as u32,
                    range_end: e as u32,
                    hints: self.hints.count(n.id) as u64,
                    is_self,
                    tokens: if ring.partitioner() == crate::cluster::key::Partitioner::Murmur3 {
                        view.meta.member(n.id).map(|m| m.tokens.clone()).unwrap_or_default()
                    } else {
                        Vec::new()
                    },
                    share: ring.share(i),
                    member_state: view.meta.member(n.id).map(|m| m.state.to_string()).unwrap_or_default(),
                }
            })
            .collect();
        // Removed members, for the record.
        for m in view.meta.members.iter().filter(|m| m.state == crate::cluster::metadata::NodeState::Removed) {
            replicas.push(proto::ReplicaStatus {
                name: m.info.name.clone(),
                address: m.info.address(),
                member_state: m.state.to_string(),
                ..Default::default()
            });
        }
        let movement = view
            .meta
            .moving
            .map(|(id, kind)| format!("{kind} of {}", view.meta.member(id).map_or_else(|| id.to_string(), |m| m.info.name.clone())))
            .unwrap_or_default();
        proto::StatusResult {
            movement,
            cluster_id: view.meta.cluster_id,
            coordinator: self.cfg.name.clone(),
            rf: ring.rf() as u32,
            epoch: ring.epoch(),
            mode: self.cfg.mode.to_string(),
            replicas,
            partitioner: ring.partitioner().name().to_string(),
        }
    }
}
