//! `token` and `scan`: where a key lives, and a walk over every key.
//!
//! `token` is answered from the coordinator's ring alone. `scan` serves one
//! page of a walk over the store's slots (see [`crate::message::scan`] for the
//! cursor): for each slot it asks the replicas of the slot's token ranges
//! for their keys after the cursor ([`PeerRequest::Scan`], served from the
//! local store by [`Node::replica_scan`]), merges their listings
//! ([`crate::coordinator::scan::merge`]), and goes on to the next slot until
//! the page holds `count` keys, the walk ends, or the page has visited
//! [`MAX_SLOTS_PER_PAGE`] slots (so a page of a sparse cluster stays quick; it
//! may then hold fewer keys, or none, as Redis's SCAN pages may).
//!
//! Pages are bounded by bytes too, whatever the count and however long the
//! keys: a replica's listing and the coordinator's page each stop once the
//! keys they hold pass [`MAX_PAGE_BYTES`] (by at most their last key). A page
//! cut short ends at the last key it looked at, and its cursor goes on right
//! after it, so nothing is skipped or returned twice.
//!
//! # Replicas that do not answer
//!
//! Like a range read at ONE in Cassandra, a page needs one replica of every
//! token range it covers: each key lives on all of its range's replicas, so
//! one of them lists it. A replica the failure detector knows down is not
//! asked; one that fails or times out is not asked again for the rest of the
//! page. If some range of a slot has no replica that answered, the page is
//! refused as `Unavailable` (naming the slot, the replicas and why each
//! failed) and the client may retry the same cursor. Otherwise the page is
//! served and names the replicas that did not answer (`unanswered`): a key
//! written only to them (a write at ONE whose hints are still pending) may be
//! missing, as in Cassandra at ONE.

use std::collections::BTreeMap;
use std::sync::Arc;

use crate::cluster::key::{Key, Partitioner};
use crate::cluster::ring::{NodeId, Ring};
use crate::cluster::token;
use crate::coordinator::scan::{Listing, merge, slot_ranges};
use crate::error::{Error, Result};
use crate::message::{MAX_PAGE_BYTES, PeerRequest, PeerResponse, ScanCursor, Stamp};
use crate::node::Node;
use crate::node::admin::why;
use crate::proto;

/// The most slots one page visits.
pub const MAX_SLOTS_PER_PAGE: usize = 64;

impl Node {
    /// Where `key` lives: its token, its slot and its replicas, from the ring.
    pub fn token(&self, key: &Key) -> proto::TokenResult {
        let ring = self.ring();
        let partitioner = ring.partitioner();
        let (token, slot) = match partitioner {
            Partitioner::ByteOrdered => {
                let slot = partitioner.slot(key.as_bytes());
                (i64::from(slot), slot)
            }
            Partitioner::Murmur3 => {
                let t = token::token(key.as_bytes());
                (t, token::slot(t))
            }
        };
        proto::TokenResult {
            key: key.to_vec(),
            token,
            slot: slot.into(),
            replicas: ring.replicas(key.as_bytes()).iter().map(|&id| ring.name(id)).collect(),
            partitioner: partitioner.name().to_string(),
        }
    }

    /// The replica sets of the token ranges holding keys of `slot`.
    fn slot_groups(ring: &Ring, slot: u8) -> Vec<&[NodeId]> {
        match ring.partitioner() {
            Partitioner::ByteOrdered => vec![ring.group_replicas(slot, 0)],
            Partitioner::Murmur3 => slot_ranges(ring.sorted_tokens(), slot).into_iter().map(|r| ring.group_replicas(slot, r)).collect(),
        }
    }

    /// One page of a scan from `cursor`: at most `count` keys looked at, and
    /// live keys up to about [`MAX_PAGE_BYTES`] (see the module docs).
    pub fn scan(self: &Arc<Self>, cursor: ScanCursor, count: u32) -> Result<proto::ScanResult> {
        let ring = self.ring();
        let mut out = proto::ScanResult::default();
        // Replicas that did not answer during this page, and why.
        let mut silent: BTreeMap<NodeId, String> = BTreeMap::new();
        let ScanCursor { mut slot, mut after } = cursor;
        let mut left = count.max(1) as usize;
        // Bytes of keys the page may still take.
        let mut room = MAX_PAGE_BYTES;
        let mut visited = 0;
        let next = loop {
            let groups = Node::slot_groups(&ring, slot);
            let mut targets: Vec<NodeId> = Vec::new();
            for &id in groups.iter().flat_map(|g| g.iter()) {
                if targets.contains(&id) || silent.contains_key(&id) {
                    continue;
                }
                if self.alive(id) {
                    targets.push(id);
                } else {
                    silent.insert(id, "down".into());
                }
            }
            let msg = PeerRequest::Scan { slot, after: after.clone(), count: left as u32 };
            let results = if targets.is_empty() { Vec::new() } else { self.gather(targets.clone(), msg) };
            let mut listings = Vec::with_capacity(targets.len());
            let mut answered = Vec::with_capacity(targets.len());
            for (&t, r) in targets.iter().zip(results) {
                match r {
                    Some(Ok(PeerResponse::Scan { mut entries, more })) => {
                        // Only keys of this cluster in their canonical form and of this slot
                        // count: a reply is checked, not trusted (its keys go into the cursor).
                        let limits = self.limits();
                        entries.retain(|(k, _)| limits.key(k.to_vec()).is_ok_and(|c| &c == k) && ring.slot(k.as_bytes()) == slot);
                        listings.push(Listing { entries, more });
                        answered.push(t);
                    }
                    other => {
                        silent.insert(t, why(other));
                    }
                }
            }
            if let Some(group) = groups.iter().find(|g| !g.iter().any(|id| answered.contains(id))) {
                return Err(self.uncovered(slot, group, &silent));
            }
            let page = merge(listings, after.as_ref(), left, room);
            out.keys.extend(page.live.iter().map(Key::to_vec));
            left -= page.examined;
            room = room.saturating_sub(page.bytes);
            visited += 1;
            if !page.exhausted {
                break Some(ScanCursor { slot, after: page.last.or(after) });
            }
            if slot == u8::MAX {
                break None;
            }
            (slot, after) = (slot + 1, None);
            if left == 0 || room == 0 || visited >= MAX_SLOTS_PER_PAGE {
                break Some(ScanCursor { slot, after: None });
            }
        };
        match next {
            Some(c) => out.cursor = c.encode(),
            None => out.done = true,
        }
        out.unanswered = silent.keys().map(|&id| ring.name(id)).collect();
        Ok(out)
    }

    /// The error of a page that cannot see a token range of `slot`: no replica of `group` answered.
    fn uncovered(&self, slot: u8, group: &[NodeId], silent: &BTreeMap<NodeId, String>) -> Error {
        let each: Vec<String> =
            group.iter().map(|id| format!("{}: {}", self.ring().name(*id), silent.get(id).map_or("not asked", String::as_str))).collect();
        Error::Unavailable(format!(
            "scan of slot {slot} needs a replica of each token range in it, and no replica of one range answered ({}); \
             retry the same cursor once one is back",
            each.join("; ")
        ))
    }

    /// This replica's side of `scan`: up to `count` of its keys of `slot` after
    /// `after`, in key order, with their stamps; fewer once their keys pass
    /// [`MAX_PAGE_BYTES`] (values are never read: a listing carries keys and
    /// timestamps). `more` says whether it holds keys past the last one.
    pub fn replica_scan(&self, slot: u8, after: Option<Key>, count: u32) -> PeerResponse {
        let (listed, more) = self.store.scan_stamps(slot, after.as_ref().map(Key::as_bytes), count as usize, MAX_PAGE_BYTES);
        let entries = listed.into_iter().map(|(key, ts, tombstone)| (key, Stamp { ts, tombstone })).collect();
        PeerResponse::Scan { entries, more }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cluster::ring::{NodeInfo, Ring};
    use crate::config::NodeConfig;
    use crate::message::MAX_SCAN_COUNT;
    use crate::node::test_util::NoPeers;
    use crate::sim;
    use crate::storage::cell::Version;
    use crate::storage::hlc::Timestamp;

    /// m0 of a three-node murmur3 ring (RF 2) whose peers are all down.
    fn murmur3_node() -> Arc<Node> {
        let nodes =
            (0..3).map(|i| NodeInfo { name: format!("m{i}"), host: "127.0.0.1".into(), port: 1 + i, id: NodeId(i.into()) }).collect();
        let ring = Ring::murmur3(nodes, &[vec![], vec![], vec![]], 4, 2, 1).unwrap();
        Node::new(NodeConfig::new("m0", "127.0.0.1".parse().unwrap(), 1), ring, Arc::new(NoPeers)).unwrap().0
    }

    fn v(micros: u64, value: Option<&[u8]>) -> Version {
        let ts = Timestamp { micros, node: 1 };
        value.map_or(Version::tombstone(ts), |value| Version::value(ts, value))
    }

    #[test]
    fn token_names_the_cassandra_token_the_slot_and_the_replicas() {
        let n = murmur3_node();
        let t = n.token(&Key::trusted(*b"123"));
        assert_eq!((t.token, t.slot), (-7468325962851647638, u32::from(token::slot(-7468325962851647638))));
        let want: Vec<String> = n.ring().replicas(b"123").iter().map(|&id| n.ring().name(id)).collect();
        assert_eq!((t.replicas, t.partitioner.as_str()), (want, "murmur3"));
        let c = sim::Cluster::new(4, 3, 1);
        let t = c.nodes[2].token(&Key::byte(70));
        assert_eq!((t.token, t.slot, t.replicas), (70, 70, vec!["n1".to_string(), "n2".into(), "n3".into()]));
    }

    #[test]
    fn a_replica_lists_its_slot_in_order_and_says_when_it_holds_more() {
        let n = murmur3_node();
        let keys: Vec<Key> = (0..3000).map(|i| Key::trusted(format!("user:{i}").into_bytes())).collect();
        for (i, k) in keys.iter().enumerate() {
            let value = if i % 10 == 0 { None } else { Some(&b"x"[..]) };
            n.store.apply_durably(k, v(i as u64 + 1, value)).unwrap();
        }
        let slot = n.ring().slot(b"user:7");
        let mut want: Vec<&Key> = keys.iter().filter(|k| n.ring().slot(k.as_bytes()) == slot).collect();
        want.sort();
        assert!(want.len() > 5, "{} keys in slot {slot}", want.len());
        let listed = |after: Option<Key>, count| match n.replica_scan(slot, after, count) {
            PeerResponse::Scan { entries, more } => (entries, more),
            other => panic!("{other:?}"),
        };
        let (all, more) = listed(None, MAX_SCAN_COUNT);
        assert!(!more);
        assert_eq!(all.iter().map(|(k, _)| k).collect::<Vec<_>>(), want, "every key of the slot, in key order");
        assert!(all.iter().any(|(_, s)| s.tombstone) && all.iter().any(|(_, s)| !s.tombstone), "stamps say which are deleted");
        let (page, more) = listed(None, 3);
        assert_eq!((page.len(), more), (3, true));
        let (rest, more) = listed(Some(page[2].0.clone()), want.len() as u32);
        assert_eq!((rest.len(), more), (want.len() - 3, false), "exactly the rest: nothing more");
        let (_, more) = listed(Some(page[2].0.clone()), want.len() as u32 - 3);
        assert!(!more, "the count reached with the slot's last key");
    }

    #[test]
    fn a_replica_answer_stays_small_whatever_the_values() {
        let n = murmur3_node();
        let slot = n.ring().slot(b"big:0");
        let big = vec![b'v'; 1 << 20];
        // Values are never read: eight 1 MiB values make an answer of eight short keys.
        let mut stored = 0;
        for i in 0.. {
            let k = Key::trusted(format!("big:{i}").into_bytes());
            if n.ring().slot(k.as_bytes()) == slot {
                n.store.apply_durably(&k, v(1, Some(&big))).unwrap();
                stored += 1;
                if stored == 8 {
                    break;
                }
            }
        }
        match n.replica_scan(slot, None, 100) {
            PeerResponse::Scan { entries, more } => assert_eq!((entries.len(), more), (8, false)),
            other => panic!("{other:?}"),
        }
    }

    /// A page of long keys stops at the byte budget, however many keys were
    /// asked for, and its cursor goes on right after its last key: walked page
    /// by page, every live key comes back once, in the walk's order.
    #[test]
    fn a_page_stops_at_the_byte_budget_and_its_cursor_goes_on_after_its_last_key() {
        // A one-node ring (RF 1): this replica holds every range, and takes keys of up to 64 KiB.
        let nodes = vec![NodeInfo { name: "m0".into(), host: "127.0.0.1".into(), port: 1, id: NodeId(0) }];
        let mut cfg = NodeConfig::new("m0", "127.0.0.1".parse().unwrap(), 1);
        cfg.max_key_bytes = 65536;
        let n = Node::new(cfg, Ring::murmur3(nodes, &[vec![]], 16, 1, 1).unwrap(), Arc::new(NoPeers)).unwrap().0;
        // 600 keys of 20,000 bytes (12 MB, about two keys a slot); every tenth deleted.
        const LONG: usize = 20_000;
        let mut want: Vec<(u8, Vec<u8>)> = Vec::new();
        for i in 0..600u32 {
            let mut k = format!("{i:04}:").into_bytes();
            k.resize(LONG, b'k');
            let live = i % 10 != 0;
            n.store.apply_durably(&Key::trusted(k.clone()), v(1, live.then_some(&b"x"[..]))).unwrap();
            if live {
                want.push((n.ring().slot(&k), k));
            }
        }
        want.sort();
        let (mut got, mut cursor, mut pages, mut cut_in_a_slot) = (Vec::new(), ScanCursor::START, 0, 0);
        loop {
            let page = n.scan(cursor, MAX_SCAN_COUNT).unwrap();
            pages += 1;
            assert!(pages < 1000, "the scan does not end");
            let bytes: usize = page.keys.iter().map(Vec::len).sum();
            // Under the budget until its last key, which may pass it.
            assert!(bytes.saturating_sub(LONG) < MAX_PAGE_BYTES, "page {pages}: {bytes} bytes of keys");
            if page.done {
                got.extend(page.keys);
                break;
            }
            let next = ScanCursor::parse(page.cursor, &n.limits()).unwrap();
            assert!(bytes >= MAX_PAGE_BYTES, "page {pages} of {} keys ({bytes} bytes) stopped before the budget", page.keys.len());
            // Cut inside a slot, the cursor names the page's last key; cut at a slot's end, the next slot.
            let last = page.keys.last().unwrap();
            match &next.after {
                Some(after) => {
                    assert_eq!(after.as_bytes(), &last[..], "page {pages}: the cursor is the page's last key");
                    cut_in_a_slot += 1;
                }
                None => assert_eq!(next.slot, n.ring().slot(last) + 1, "page {pages}"),
            }
            got.extend(page.keys);
            cursor = next;
        }
        let want: Vec<Vec<u8>> = want.into_iter().map(|(_, k)| k).collect();
        assert!(got == want, "{} keys back of {}: a gap, a duplicate or another order", got.len(), want.len());
        assert!(pages > 10 && cut_in_a_slot > 0, "{pages} pages, {cut_in_a_slot} cut inside a slot");
    }

    /// One page through node `via`, stepping the simulated network until it is served.
    fn page(c: &sim::Cluster, via: usize, cursor: ScanCursor, count: u32) -> Result<proto::ScanResult> {
        std::thread::scope(|s| {
            let h = s.spawn(|| c.nodes[via].scan(cursor, count));
            while !h.is_finished() {
                c.net.run(c);
                c.net.expire();
                std::thread::yield_now();
            }
            h.join().unwrap()
        })
    }

    /// Every page from the start; the keys as integers, and the replicas that did not answer.
    fn walk(c: &sim::Cluster, via: usize, count: u32) -> Result<(Vec<u8>, Vec<String>)> {
        let (mut keys, mut silent, mut cursor) = (Vec::new(), Vec::new(), ScanCursor::START);
        loop {
            let p = page(c, via, cursor, count)?;
            keys.extend(p.keys.iter().map(|k| std::str::from_utf8(k).unwrap().parse::<u8>().unwrap()));
            silent.extend(p.unanswered);
            if p.done {
                assert!(p.cursor.is_empty());
                return Ok((keys, silent));
            }
            cursor = ScanCursor::parse(p.cursor, &c.nodes[via].limits()).unwrap();
        }
    }

    #[test]
    fn pages_walk_every_live_key_once_and_survive_a_silent_replica() {
        let c = sim::Cluster::new(5, 3, 7);
        let at = |key: u8, pos: usize, version: Version| {
            let i = c.replicas(key)[pos];
            c.nodes[i].store.apply_durably(&Key::byte(key), version).unwrap();
        };
        let mut want = Vec::new();
        for key in (0..=255u8).filter(|k| k % 3 != 0) {
            for pos in 0..3 {
                at(key, pos, v(10, Some(b"x")));
            }
            want.push(key);
        }
        at(3, 2, v(10, Some(b"x"))); // written at ONE: only its third replica holds it
        at(6, 0, v(20, None)); // deleted on one replica after its write everywhere
        want.retain(|&k| k != 6 && k != 9);
        want.push(3);
        want.sort();
        at(9, 1, v(30, None)); // key 9: the newest version is a tombstone
        for count in [1, 4, 10, 300] {
            let (keys, silent) = walk(&c, count as usize % 5, count).unwrap();
            assert_eq!(keys, want, "count {count}");
            assert!(silent.is_empty(), "{silent:?}");
        }
        // One replica down: every range still has one that answers.
        let down = c.replicas(100)[0];
        c.net.kill(c.id(down));
        let (keys, silent) = walk(&c, (down + 1) % 5, 25).unwrap();
        assert_eq!(keys, want.iter().copied().filter(|&k| k != 3 || c.replicas(3)[2] != down).collect::<Vec<_>>());
        assert_eq!(silent.iter().collect::<std::collections::BTreeSet<_>>().len(), 1, "{silent:?}");
        assert!(silent.iter().all(|s| *s == format!("n{down}")));
        // Every replica of key 100 down: its slot cannot be seen.
        for &i in &c.replicas(100)[1..] {
            c.net.kill(c.id(i));
        }
        let via = (0..5).find(|i| !c.replicas(100).contains(i)).unwrap();
        let e = walk(&c, via, 300).unwrap_err();
        assert!(matches!(&e, Error::Unavailable(m) if m.contains("scan of slot") && m.contains(": down")), "{e}");
    }
}
