//! The I/O-free half of `scan`: merging the replicas' listings of one slot
//! into a page, and which token ranges a slot spans.
//!
//! For one slot of one page the coordinator asks each replica of the slot for
//! up to `count` keys after the cursor; each answers with its keys in order,
//! their versions' [`Stamp`]s, and whether it holds more ([`Listing`]).
//! [`merge`] then decides the page:
//!
//! * A replica that holds more keys than it sent knows nothing past its last
//!   key, so only keys up to the smallest such last key (the *bound*) are
//!   decided: every answering replica listed all its keys up to there.
//! * Among them the page takes the first `count` in key order, each with the
//!   newest stamp any replica sent (last write wins); a key whose newest
//!   version is a tombstone is looked at — the cursor moves past it — but
//!   not returned. It stops early once the live keys it took pass its byte
//!   budget (so it passes the budget by at most its last key), and the
//!   cursor goes on right after the last key it looked at.
//! * The slot is done when no replica holds more and the page took every key.
//!
//! The page always moves on: the listing that sets the bound has at least one
//! key after the cursor and up to the bound. Replies are checked, not trusted:
//! keys at or before the cursor are dropped, and a listing that claims more
//! keys but sends none counts as finished, so a broken replica cannot stall a
//! scan.

use std::collections::BTreeMap;

use crate::cluster::key::Key;
use crate::cluster::token::{self, Token};
use crate::message::Stamp;

/// One replica's keys of a slot after the cursor.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Listing {
    /// Keys with their versions' stamps (in key order; sorted again here).
    pub entries: Vec<(Key, Stamp)>,
    /// The replica holds more keys of the slot after the last one.
    pub more: bool,
}

/// What a page took from one slot.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Merged {
    /// Keys looked at (live and deleted), at most the count asked for.
    pub examined: usize,
    /// The live keys among them, in key order.
    pub live: Vec<Key>,
    /// The bytes of the live keys.
    pub bytes: usize,
    /// The last key looked at: where the next page starts in this slot.
    pub last: Option<Key>,
    /// No answering replica holds a key of the slot after `last` (or after the cursor, if none was looked at).
    pub exhausted: bool,
}

/// Merges the listings of one slot after `after` into at most `count` keys,
/// stopping once the live ones pass `max_bytes` (see the module docs).
pub fn merge(listings: Vec<Listing>, after: Option<&Key>, count: usize, max_bytes: usize) -> Merged {
    let past_cursor = |k: &Key| after.is_none_or(|a| k > a);
    let mut bound: Option<Key> = None;
    let mut newest: BTreeMap<Key, Stamp> = BTreeMap::new();
    let mut lists = Vec::with_capacity(listings.len());
    for l in listings {
        let mut entries: Vec<(Key, Stamp)> = l.entries.into_iter().filter(|(k, _)| past_cursor(k)).collect();
        entries.sort();
        if l.more
            && let Some((last, _)) = entries.last()
            && bound.as_ref().is_none_or(|b| last < b)
        {
            bound = Some(last.clone());
        }
        lists.push(entries);
    }
    for (k, s) in lists.into_iter().flatten() {
        if bound.as_ref().is_some_and(|b| &k > b) {
            continue;
        }
        let e = newest.entry(k).or_insert(s);
        *e = (*e).max(s);
    }
    let decided = newest.len();
    let mut out = Merged::default();
    for (k, s) in newest {
        if out.examined == count || out.bytes >= max_bytes {
            break;
        }
        out.examined += 1;
        if !s.tombstone {
            out.bytes += k.len();
            out.live.push(k.clone());
        }
        out.last = Some(k);
    }
    out.exhausted = bound.is_none() && out.examined == decided;
    out
}

/// The indexes of the token ranges (as [`Ring::range_index`](crate::cluster::ring::Ring::range_index)
/// numbers them) that hold tokens of store slot `slot`, given the ring's sorted tokens.
/// Range `i` ends at `tokens[i]`; range 0 also wraps past the largest token.
pub fn slot_ranges(tokens: &[Token], slot: u8) -> Vec<u32> {
    if tokens.is_empty() {
        return vec![0];
    }
    // The slot's tokens are those whose top byte (in ring order) is `slot`.
    let lo = ((u64::from(slot) << 56) ^ (1 << 63)) as i64;
    let hi = lo + ((1i64 << 56) - 1);
    let first = tokens.partition_point(|&t| t < lo);
    let last = tokens.partition_point(|&t| t < hi);
    let mut ranges: Vec<u32> = (first..=last).map(|i| if i == tokens.len() { 0 } else { i as u32 }).collect();
    ranges.sort_unstable();
    ranges.dedup();
    debug_assert!(token::slot(lo) == slot && token::slot(hi) == slot);
    ranges
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::storage::hlc::Timestamp;

    fn key(s: &str) -> Key {
        Key::trusted(s.as_bytes())
    }

    fn stamp(micros: u64, tombstone: bool) -> Stamp {
        Stamp { ts: Timestamp { micros, node: 1 }, tombstone }
    }

    /// A listing of `keys` (all live at micros 1), `more` as given.
    fn listing(keys: &[&str], more: bool) -> Listing {
        Listing { entries: keys.iter().map(|k| (key(k), stamp(1, false))).collect(), more }
    }

    fn live(m: &Merged) -> Vec<&str> {
        m.live.iter().map(|k| std::str::from_utf8(k.as_bytes()).unwrap()).collect()
    }

    #[test]
    fn union_in_key_order_each_key_once() {
        let m = merge(vec![listing(&["a", "c", "e"], false), listing(&["b", "c"], false), listing(&[], false)], None, 10, usize::MAX);
        assert_eq!(live(&m), ["a", "b", "c", "e"]);
        assert_eq!((m.examined, m.last, m.exhausted), (4, Some(key("e")), true));
    }

    #[test]
    fn a_truncated_listing_bounds_the_page() {
        // r0 stopped at "c" (it holds more); r1 listed everything up to "z". A key r0 holds
        // between "c" and "z" (say "d") is unknown, so the page must stop at "c".
        let m = merge(vec![listing(&["a", "c"], true), listing(&["b", "x", "z"], false)], None, 10, usize::MAX);
        assert_eq!(live(&m), ["a", "b", "c"]);
        assert_eq!((m.last.clone(), m.exhausted), (Some(key("c")), false));
        // The next page starts after "c" and sees r0's "d" and r1's "x", "z".
        let m = merge(vec![listing(&["d"], false), listing(&["x", "z"], false)], m.last.as_ref(), 10, usize::MAX);
        assert_eq!(live(&m), ["d", "x", "z"]);
        assert!(m.exhausted);
    }

    #[test]
    fn the_count_caps_the_page_and_the_slot_goes_on() {
        let m = merge(vec![listing(&["a", "b"], false), listing(&["c", "d"], false)], None, 3, usize::MAX);
        assert_eq!(live(&m), ["a", "b", "c"]);
        assert_eq!((m.last, m.exhausted), (Some(key("c")), false));
        let exact = merge(vec![listing(&["a", "b"], false), listing(&["b", "c"], false)], None, 3, usize::MAX);
        assert!(exact.exhausted, "three keys, three asked, nobody holds more");
    }

    #[test]
    fn the_byte_budget_cuts_the_page_after_the_key_that_passes_it() {
        // Two-byte keys, a budget of 3: "aa" leaves the page under it, "bb" passes it.
        let m = merge(vec![listing(&["aa", "bb", "cc"], false), listing(&["dd"], false)], None, 10, 3);
        assert_eq!(live(&m), ["aa", "bb"]);
        assert_eq!((m.bytes, m.examined, m.last.clone(), m.exhausted), (4, 2, Some(key("bb")), false));
        // The next page starts right after "bb": nothing skipped, nothing twice.
        let m = merge(vec![listing(&["cc"], false), listing(&["dd"], false)], m.last.as_ref(), 10, 3);
        assert_eq!((live(&m), m.exhausted), (vec!["cc", "dd"], true), "the budget passed with the slot's last key");
        // A tombstone is looked at but holds no bytes of the page.
        let dead =
            Listing { entries: vec![(key("aa"), stamp(1, true)), (key("bb"), stamp(1, false)), (key("cc"), stamp(1, false))], more: false };
        let m = merge(vec![dead], None, 10, 2);
        assert_eq!((live(&m), m.bytes, m.examined, m.last.clone()), (vec!["bb"], 2, 2, Some(key("bb"))));
    }

    #[test]
    fn the_newest_version_decides_and_tombstones_are_passed_over() {
        let newer_delete = Listing { entries: vec![(key("a"), stamp(5, true)), (key("b"), stamp(1, true))], more: false };
        let older_values = Listing { entries: vec![(key("a"), stamp(4, false)), (key("b"), stamp(2, false))], more: false };
        let m = merge(vec![newer_delete, older_values], None, 10, usize::MAX);
        assert_eq!(live(&m), ["b"], "a was deleted after its write; b was written again after its delete");
        let only_deleted = merge(vec![Listing { entries: vec![(key("a"), stamp(5, true))], more: true }], None, 1, usize::MAX);
        assert_eq!((only_deleted.examined, only_deleted.live.len()), (1, 0));
        assert_eq!((only_deleted.last, only_deleted.exhausted), (Some(key("a")), false), "the cursor moves past a tombstone");
    }

    #[test]
    fn broken_answers_cannot_stall_or_rewind_the_scan() {
        // Keys at or before the cursor are dropped; an unsorted listing is sorted.
        let m = merge(vec![listing(&["m", "b", "z", "k"], false)], Some(&key("k")), 10, usize::MAX);
        assert_eq!(live(&m), ["m", "z"]);
        // "More" with nothing past the cursor would never move on: it counts as finished.
        let m = merge(vec![listing(&["a"], true), listing(&["q"], false)], Some(&key("k")), 10, usize::MAX);
        assert_eq!((live(&m), m.exhausted), (vec!["q"], true));
        let none = merge(Vec::new(), None, 10, usize::MAX);
        assert_eq!((none.examined, none.last, none.exhausted), (0, None, true));
    }

    #[test]
    fn paging_through_random_listings_returns_every_key_once() {
        // Three replicas, each holding a different subset of 300 keys, served in
        // pages of every size from 1 to 40 and byte budgets of every size, each
        // replica sending between 1 and `count` keys (as a byte budget cuts
        // answers short): the union comes back exactly once, in order.
        let all: Vec<String> = (0..300).map(|i| format!("k{i:03}")).collect();
        let held: Vec<Vec<&String>> =
            (0..3).map(|r| all.iter().enumerate().filter(|(i, _)| (i + r) % 3 != 0).map(|(_, k)| k).collect()).collect();
        let mut rng = 0x5CA7_u64;
        for count in 1..=40 {
            let mut after: Option<Key> = None;
            let mut seen = Vec::new();
            loop {
                let listings = held
                    .iter()
                    .map(|keys| {
                        rng = rng.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
                        let cut = 1 + (rng >> 33) as usize % count;
                        let past: Vec<&&String> = keys.iter().filter(|k| after.as_ref().is_none_or(|a| key(k) > *a)).collect();
                        let sent: Vec<&str> = past.iter().take(cut).map(|k| k.as_str()).collect();
                        listing(&sent, past.len() > cut)
                    })
                    .collect();
                // A byte budget of one to fifty keys (every key is 4 bytes) cuts pages short too.
                let budget = 1 + (rng >> 40) as usize % 200;
                let m = merge(listings, after.as_ref(), count, budget);
                assert!(m.examined <= count);
                assert!(m.bytes < budget + 4, "{} bytes for a budget of {budget}: past it by more than its last key", m.bytes);
                seen.extend(m.live.iter().map(|k| String::from_utf8(k.to_vec()).unwrap()));
                if m.exhausted {
                    break;
                }
                assert!(m.last > after, "the page moved on");
                after = m.last;
            }
            assert_eq!(seen, all, "count {count}");
        }
    }

    #[test]
    fn a_slot_spans_the_ranges_that_hold_its_tokens() {
        let lo = |s: u8| ((u64::from(s) << 56) ^ (1 << 63)) as i64;
        // Tokens inside slots 10 and 20: slot 10 holds the ends of ranges 0 (up to the
        // token) and 1 (after it); slots 11..=20 lie in range 1; past 20 is the wrap range 0.
        let tokens = [lo(10) + 5, lo(20) + 7];
        assert_eq!(slot_ranges(&tokens, 10), [0, 1]);
        assert_eq!(slot_ranges(&tokens, 15), [1]);
        assert_eq!(slot_ranges(&tokens, 20), [0, 1]);
        assert_eq!(slot_ranges(&tokens, 255), [0]);
        assert_eq!(slot_ranges(&tokens, 0), [0]);
        // A token at the very start of a slot ends the range before it.
        assert_eq!(slot_ranges(&[lo(3), lo(4)], 3), [0, 1]);
        assert_eq!(slot_ranges(&[], 7), [0]);
        // Every key's range is among its slot's ranges.
        let tokens: Vec<i64> = (0..64i128).map(|i| (i128::from(i64::MIN) + 1000 + i * i128::from(u64::MAX / 64)) as i64).collect();
        for i in 0..2000 {
            let t = token::token(format!("user:{i}").as_bytes());
            let range = match tokens.partition_point(|&x| x < t) {
                n if n == tokens.len() => 0,
                n => n as u32,
            };
            assert!(slot_ranges(&tokens, token::slot(t)).contains(&range), "user:{i}");
        }
    }
}
