//! Output formats: how the replies to `status`, `ring`, `inspect`, `display`,
//! `token` and `scan` are shown, and the timestamp, size and age notation they
//! (and `put`/`del`) use.

use std::fmt::Write as _;

use crate::cluster::key::escaped;
use crate::proto;

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 10 << 20 => format!("{} MiB", b >> 20),
        b if b >= 10 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
}

/// `repair`'s progress line: a bar of the slots done, what was sent, the time.
pub fn format_repair_progress(r: &proto::RepairResult) -> String {
    const WIDTH: u32 = 30;
    let slots = r.slots.max(1);
    let filled = (r.slots_done.min(slots) * WIDTH / slots) as usize;
    let rate = if r.elapsed_secs > 0.0 { r.slots_done as f64 / r.elapsed_secs } else { 0.0 };
    let left = if rate > 0.0 { format!(", about {:.0} s left", f64::from(slots - r.slots_done.min(slots)) / rate) } else { String::new() };
    format!(
        "[{}{}] {}/{} slots, {} cells ({}) sent, {:.1} s{left}",
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        r.slots_done,
        r.slots,
        r.cells_sent,
        fmt_bytes(r.bytes_sent),
        r.elapsed_secs
    )
}

/// The progress line of a membership change.
pub fn format_movement_progress(m: &proto::MembershipResult) -> String {
    const WIDTH: u64 = 30;
    let total = m.transfers.max(1);
    let filled = (m.transfers_done.min(total) * WIDTH / total) as usize;
    let rate = if m.elapsed_secs > 0.0 { m.bytes as f64 / m.elapsed_secs } else { 0.0 };
    let left = if m.transfers_done > 0 && m.transfers_done < m.transfers {
        format!(", about {:.0} s left", m.elapsed_secs * (m.transfers - m.transfers_done) as f64 / m.transfers_done as f64)
    } else {
        String::new()
    };
    format!(
        "{} of {}: [{}{}] {}/{} stretches, {} keys ({}) moved, {}/s, {:.1} s{left}",
        m.kind,
        m.node,
        "#".repeat(filled),
        ".".repeat(WIDTH as usize - filled),
        m.transfers_done,
        m.transfers,
        m.keys,
        fmt_bytes(m.bytes),
        fmt_bytes(rate as u64),
        m.elapsed_secs
    )
}

/// A membership change, finished or not.
pub fn format_movement(m: &proto::MembershipResult) -> String {
    if m.kind.is_empty() {
        return "no membership change has run from this replica".into();
    }
    let state = if m.running {
        "under way".to_string()
    } else if m.error.is_empty() {
        format!("done at epoch {}", m.epoch)
    } else {
        format!("failed: {}", m.error)
    };
    format!(
        "{} of {}: {state}; {}/{} stretches, {} keys ({}) moved in {:.1} s",
        m.kind,
        m.node,
        m.transfers_done,
        m.transfers,
        m.keys,
        fmt_bytes(m.bytes),
        m.elapsed_secs
    )
}

/// A finished `repair` pass: what it compared and what it sent.
pub fn format_repair(r: &proto::RepairResult) -> String {
    let mut s = format!(
        "repair pass {}: {} slots, {} groups compared, {} differed; {} cells ({}) sent to replicas that lacked them; {} of trees and cells compared; {:.1} s",
        r.pass,
        r.slots_done,
        r.groups,
        r.differing,
        r.cells_sent,
        fmt_bytes(r.bytes_sent),
        fmt_bytes(r.bytes_compared),
        r.elapsed_secs
    );
    if r.skipped > 0 {
        let _ = write!(s, "\n{} groups skipped: fewer than two of their replicas answered (run repair again once they are up)", r.skipped);
    }
    if !r.error.is_empty() {
        let _ = write!(s, "\nstopped early: {}", r.error);
    }
    s
}

/// How long ago a wall-clock time in microseconds was (`never` for 0).
fn fmt_age(micros: u64) -> String {
    if micros == 0 {
        return "never".into();
    }
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_micros() as u64).unwrap_or(0);
    let secs = now.saturating_sub(micros) / 1_000_000;
    match secs {
        s if s < 120 => format!("{s} s ago"),
        s if s < 7200 => format!("{} min ago", s / 60),
        s => format!("{} h ago", s / 3600),
    }
}

pub(super) fn fmt_ts(micros: u64, node: u32) -> String {
    format!("{micros}.{node:08x}")
}

/// A value in quotes, UTF-8 as text and other bytes escaped; `…` if it was cut.
fn fmt_value(value: &[u8], cut: bool) -> String {
    format!("\"{}\"{}", escaped(value), if cut { "…" } else { "" })
}

fn fmt_version(v: &proto::Version, cut: bool) -> String {
    if v.tombstone {
        format!("deleted  ts={}", fmt_ts(v.micros, v.node))
    } else {
        format!("{}  ts={}", fmt_value(&v.value, cut), fmt_ts(v.micros, v.node))
    }
}

/// What a node owns: its byte-ordered range, or its token count and share of the data.
fn fmt_owns(murmur3: bool, range: (u32, u32), tokens: usize, share: f64) -> String {
    if murmur3 { format!("{tokens} tokens, {:.1}% of the data", share * 100.0) } else { format!("{}-{}", range.0, range.1) }
}

/// `status` output.
pub fn format_status(s: &proto::StatusResult) -> String {
    let murmur3 = s.partitioner == "murmur3";
    let partitioner = if s.partitioner.is_empty() { "byte-ordered" } else { &s.partitioner };
    let mut o = format!("coordinator {} (RF {}, {partitioner}, mode {}, ring epoch {})\n", s.coordinator, s.rf, s.mode, s.epoch);
    if !s.movement.is_empty() {
        let _ = writeln!(o, "under way: {} (writes also go to the new replicas; reads stay with the old ones until it ends)", s.movement);
    }
    let owns = if murmur3 { "TOKENS / SHARE" } else { "KEYS" };
    let width = if murmur3 { 16 } else { 9 };
    let _ = writeln!(
        o,
        "{:<12} {:<22} {:<5} {owns:<width$} {:>6}  {:<15} {:>10}  {:<14}",
        "NAME", "ADDRESS", "STATE", "HINTS", "FSYNC", "LOG", "LAST SNAPSHOT"
    );
    for r in &s.replicas {
        let keys =
            if murmur3 { format!("{} / {:.1}%", r.tokens.len(), r.share * 100.0) } else { format!("{}-{}", r.range_start, r.range_end) };
        let state = if r.up { "up" } else { "down" };
        let member = if r.member_state.is_empty() || r.member_state == "NORMAL" { String::new() } else { format!("  {}", r.member_state) };
        let me = if r.is_self { format!("{member}  (this coordinator)") } else { member };
        let (fsync, log, snap) = match &r.storage {
            None => ("?".to_string(), "?".to_string(), "?".to_string()),
            Some(st) if st.in_memory => ("in memory".to_string(), "-".to_string(), "-".to_string()),
            Some(st) => (st.fsync.clone(), fmt_bytes(st.log_bytes), fmt_age(st.snapshot_micros)),
        };
        let _ = writeln!(
            o,
            "{:<12} {:<22} {:<5} {keys:<width$} {:>6}  {fsync:<15} {log:>10}  {snap:<14}{me}",
            r.name, r.address, state, r.hints
        );
        if let Some(st) = r.storage.as_ref().filter(|st| !st.error.is_empty()) {
            let _ = writeln!(o, "{:<12} storage error: {}", "", st.error);
        }
    }
    o.pop();
    o
}

/// Tokens `ring` shows of each node before `…` (`ring tokens` lists them all).
const RING_TOKENS_SHOWN: usize = 3;

/// `ring` output (a view of `status`): each node's state, its share of the
/// data at the RF, the keys and bytes it last reported holding, and its
/// tokens (the first few; murmur3) or its key range (byte-ordered). With
/// `all_tokens`, every token in ring order with its node, like `nodetool ring`.
pub fn format_ring(s: &proto::StatusResult, all_tokens: bool) -> String {
    let murmur3 = s.partitioner == "murmur3";
    let partitioner = if s.partitioner.is_empty() { "byte-ordered" } else { &s.partitioner };
    let mut o =
        format!("ring of {} nodes ({partitioner}, RF {}, epoch {}) as {} sees it\n", s.replicas.len(), s.rf, s.epoch, s.coordinator);
    let w = s.replicas.iter().map(|r| r.name.len()).max().unwrap_or(0).max(4);
    if all_tokens {
        if !murmur3 {
            o.push_str("byte-ordered: each key (0-255) is its own token; each node owns a range of them\n");
            let _ = writeln!(o, "{:<9} NODE", "RANGE");
            for r in &s.replicas {
                let _ = writeln!(o, "{:<9} {}", format!("{}-{}", r.range_start, r.range_end), r.name);
            }
        } else {
            let mut all: Vec<(i64, &str)> = s.replicas.iter().flat_map(|r| r.tokens.iter().map(|&t| (t, r.name.as_str()))).collect();
            all.sort_unstable();
            let _ = writeln!(o, "{:<21} NODE", "TOKEN");
            for (t, name) in all {
                let _ = writeln!(o, "{t:<21} {name}");
            }
        }
        o.pop();
        return o;
    }
    let owns = if murmur3 { "TOKENS" } else { "RANGE" };
    let _ = writeln!(o, "{:<w$}  {:<5} {:>6}  {:>10}  {:>9}  {owns}", "NAME", "STATE", "SHARE", "KEYS", "BYTES");
    for r in &s.replicas {
        let (keys, bytes) = match &r.storage {
            Some(st) => (st.keys.to_string(), fmt_bytes(st.bytes)),
            None => ("?".into(), "?".into()),
        };
        let owned = if murmur3 {
            let shown: Vec<String> = r.tokens.iter().take(RING_TOKENS_SHOWN).map(i64::to_string).collect();
            let more = if r.tokens.len() > RING_TOKENS_SHOWN { " …" } else { "" };
            format!("{}: {}{more}", r.tokens.len(), shown.join(" "))
        } else {
            format!("{}-{}", r.range_start, r.range_end)
        };
        let state = if r.up { "up" } else { "down" };
        let owned = if r.member_state.is_empty() || r.member_state == "NORMAL" { owned } else { format!("{owned}  {}", r.member_state) };
        let share = format!("{:.1}%", r.share * 100.0);
        let _ = writeln!(o, "{:<w$}  {state:<5} {share:>6}  {keys:>10}  {bytes:>9}  {owned}", r.name);
    }
    if murmur3 && s.replicas.iter().any(|r| r.tokens.len() > RING_TOKENS_SHOWN) {
        o.push_str("(ring tokens lists every token)\n");
    }
    o.pop();
    o
}

/// `token` output in the console: the token, the slot, the replicas (owner first), labelled.
pub fn format_token(t: &proto::TokenResult) -> String {
    format!("token    {}\nslot     {}\nreplicas {} (owner first)", t.token, t.slot, t.replicas.join(", "))
}

/// A scan cursor as the console shows it and `scan` reads it back: hex digits.
pub fn fmt_cursor(cursor: &[u8]) -> String {
    cursor.iter().map(|b| format!("{b:02x}")).collect()
}

/// `inspect` output: one line per replica, starting with its name.
pub fn format_inspect(i: &proto::InspectResult) -> String {
    let width = i.replicas.iter().map(|r| r.name.len()).max().unwrap_or(0);
    let lines: Vec<String> = i
        .replicas
        .iter()
        .map(|r| {
            let what = match (&r.version, r.reachable) {
                (_, false) => format!("unreachable ({})", r.error),
                (Some(v), true) => fmt_version(v, r.truncated),
                (None, true) => "none".to_string(),
            };
            format!("{:<width$}  {what}", r.name)
        })
        .collect();
    lines.join("\n")
}

/// `display` output: each replica's keys and bytes, then the keys whose replicas disagree.
pub fn format_display(d: &proto::DisplayResult) -> String {
    let murmur3 = d.partitioner == "murmur3";
    let mut o = String::new();
    for r in &d.replicas {
        let owns = fmt_owns(murmur3, (r.range_start, r.range_end), r.tokens as usize, r.share);
        if r.reachable {
            let _ = writeln!(o, "{} (owns {owns}): {} key(s), {}", r.name, r.keys, fmt_bytes(r.bytes));
        } else {
            let _ = writeln!(o, "{} (owns {owns}): unreachable ({})", r.name, r.error);
        }
    }
    if d.differing_slots == 0 {
        o.push_str("All reachable replicas agree on every key.");
        return o;
    }
    let listed = d.differences.len();
    let more = if d.more { format!(", the first {listed} listed") } else { String::new() };
    let _ = write!(o, "Keys that differ between replicas ({listed}{more}; in {} slot(s)):", d.differing_slots);
    for k in &d.differences {
        let parts: Vec<String> = k
            .replicas
            .iter()
            .map(|e| match &e.version {
                Some(v) if v.tombstone => format!("{} deleted@{}", e.name, v.micros),
                Some(v) => format!("{} {}@{}", e.name, fmt_value(&v.value, e.truncated), v.micros),
                None => format!("{} none", e.name),
            })
            .collect();
        let _ = write!(o, "\n  key {}: {}", escaped(&k.key), parts.join(", "));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_lists_differing_keys_with_escaped_values() {
        let v = |micros, value: &[u8]| proto::Version { micros, node: 1, tombstone: false, value: value.to_vec() };
        let at = |name: &str, version| proto::InspectEntry { name: name.into(), reachable: true, version, ..Default::default() };
        let entry = |name: &str, keys| proto::ReplicaDumpEntry {
            name: name.into(),
            reachable: true,
            keys,
            bytes: keys * 10,
            tokens: 16,
            share: 0.75,
            ..Default::default()
        };
        let d = proto::DisplayResult {
            rf: 3,
            partitioner: "murmur3".into(),
            replicas: vec![entry("r0", 2), entry("r1", 1)],
            differing_slots: 1,
            differences: vec![proto::KeyDifference {
                key: b"user:\xff".to_vec(),
                replicas: vec![at("r0", Some(v(2, b"new\n"))), at("r1", None)],
            }],
            more: true,
        };
        let out = format_display(&d);
        assert!(out.contains("r0 (owns 16 tokens, 75.0% of the data): 2 key(s), 20 B"), "{out}");
        assert!(out.contains("(1, the first 1 listed; in 1 slot(s))"), "{out}");
        assert!(out.contains("key user:\\xff: r0 \"new\\n\"@2, r1 none"), "{out}");
    }

    fn status(partitioner: &str) -> proto::StatusResult {
        let replica = |i: i64, keys| proto::ReplicaStatus {
            name: format!("r{i}"),
            up: i != 1,
            range_start: 128 * i as u32,
            range_end: 128 * i as u32 + 127,
            storage: (i == 0).then(|| proto::StorageStats { keys, bytes: keys * 100, ..Default::default() }),
            tokens: if partitioner == "murmur3" { (0..5).map(|t| t * 10 - i).collect() } else { Vec::new() },
            share: 0.5,
            ..Default::default()
        };
        proto::StatusResult {
            coordinator: "r0".into(),
            rf: 1,
            epoch: 1,
            partitioner: partitioner.into(),
            replicas: vec![replica(0, 1234), replica(1, 0)],
            ..Default::default()
        }
    }

    #[test]
    fn ring_shows_shares_keys_and_tokens() {
        let out = format_ring(&status("murmur3"), false);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines[0], "ring of 2 nodes (murmur3, RF 1, epoch 1) as r0 sees it");
        assert_eq!(
            lines[2].split_whitespace().collect::<Vec<_>>(),
            ["r0", "up", "50.0%", "1234", "120", "KiB", "5:", "0", "10", "20", "…"]
        );
        assert_eq!(lines[3].split_whitespace().take(5).collect::<Vec<_>>(), ["r1", "down", "50.0%", "?", "?"], "{out}");
        assert_eq!(lines[4], "(ring tokens lists every token)");
        let all = format_ring(&status("murmur3"), true);
        let tokens: Vec<Vec<&str>> = all.lines().skip(2).map(|l| l.split_whitespace().collect()).collect();
        assert_eq!(tokens.len(), 10);
        assert_eq!((tokens[0].clone(), tokens[1].clone()), (vec!["-1", "r1"], vec!["0", "r0"]), "ring order, with the node");
        let bytes = format_ring(&status("byte-ordered"), false);
        assert!(bytes.lines().nth(2).unwrap().ends_with("0-127") && bytes.lines().nth(3).unwrap().ends_with("128-255"), "{bytes}");
        assert!(format_ring(&status("byte-ordered"), true).contains("128-255   r1"));
    }

    #[test]
    fn token_and_cursor_notation() {
        let t = proto::TokenResult { token: -7, slot: 3, replicas: vec!["a".into(), "b".into()], ..Default::default() };
        assert_eq!(format_token(&t), "token    -7\nslot     3\nreplicas a, b (owner first)");
        assert_eq!(fmt_cursor(&[1, 0x2a, 0xff]), "012aff");
    }
}
