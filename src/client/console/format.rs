//! Output formats: how the replies to `status`, `inspect` and `display` are
//! shown, and the timestamp, size and age notation they (and `put`/`del`) use.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::proto;

fn fmt_bytes(b: u64) -> String {
    match b {
        b if b >= 10 << 20 => format!("{} MiB", b >> 20),
        b if b >= 10 << 10 => format!("{} KiB", b >> 10),
        b => format!("{b} B"),
    }
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

fn fmt_version(v: &proto::Version) -> String {
    if v.tombstone {
        format!("deleted  ts={}", fmt_ts(v.micros, v.node))
    } else {
        format!("{:?}  ts={}", v.value, fmt_ts(v.micros, v.node))
    }
}

/// `status` output.
pub fn format_status(s: &proto::StatusResult) -> String {
    let mut o = format!("coordinator {} (RF {}, mode {}, ring epoch {})\n", s.coordinator, s.rf, s.mode, s.epoch);
    let _ = writeln!(
        o,
        "{:<12} {:<22} {:<5} {:<9} {:>6}  {:<15} {:>10}  {:<14}",
        "NAME", "ADDRESS", "STATE", "KEYS", "HINTS", "FSYNC", "LOG", "LAST SNAPSHOT"
    );
    for r in &s.replicas {
        let keys = format!("{}-{}", r.range_start, r.range_end);
        let state = if r.up { "up" } else { "down" };
        let me = if r.is_self { "  (this coordinator)" } else { "" };
        let (fsync, log, snap) = match &r.storage {
            None => ("?".to_string(), "?".to_string(), "?".to_string()),
            Some(st) if st.in_memory => ("in memory".to_string(), "-".to_string(), "-".to_string()),
            Some(st) => (st.fsync.clone(), fmt_bytes(st.log_bytes), fmt_age(st.snapshot_micros)),
        };
        let _ =
            writeln!(o, "{:<12} {:<22} {:<5} {:<9} {:>6}  {fsync:<15} {log:>10}  {snap:<14}{me}", r.name, r.address, state, keys, r.hints);
        if let Some(st) = r.storage.as_ref().filter(|st| !st.error.is_empty()) {
            let _ = writeln!(o, "{:<12} storage error: {}", "", st.error);
        }
    }
    o.pop();
    o
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
                (Some(v), true) => fmt_version(v),
                (None, true) => "none".to_string(),
            };
            format!("{:<width$}  {what}", r.name)
        })
        .collect();
    lines.join("\n")
}

/// The replicas (indexes into `d.replicas`) of `key`, from the ranges and RF in a display result.
fn replicas_of(d: &proto::DisplayResult, key: u32) -> Vec<usize> {
    let n = d.replicas.len();
    let Some(owner) = d.replicas.iter().position(|r| (r.range_start..=r.range_end).contains(&key)) else { return Vec::new() };
    (0..(d.rf as usize).min(n)).map(|j| (owner + j) % n).collect()
}

/// `display` output: each replica's cells, then the keys whose replicas disagree.
pub fn format_display(d: &proto::DisplayResult) -> String {
    let mut o = String::new();
    let mut cells: Vec<std::collections::BTreeMap<u32, &proto::Version>> = Vec::new();
    for r in &d.replicas {
        let map: std::collections::BTreeMap<u32, &proto::Version> =
            r.cells.iter().filter_map(|c| c.version.as_ref().map(|v| (c.key, v))).collect();
        if !r.reachable {
            let _ = writeln!(o, "{} (owns {}-{}): unreachable ({})", r.name, r.range_start, r.range_end, r.error);
        } else {
            let _ = writeln!(o, "{} (owns {}-{}): {} key(s)", r.name, r.range_start, r.range_end, map.len());
            for c in &r.cells {
                if let Some(v) = &c.version {
                    let cut = if c.truncated { "…" } else { "" };
                    let shown = if v.tombstone { "deleted".to_string() } else { format!("{:?}{cut}", v.value) };
                    let _ = writeln!(o, "  {:>3}  {shown}  ts={}", c.key, fmt_ts(v.micros, v.node));
                }
            }
        }
        cells.push(map);
    }
    let keys: BTreeSet<u32> = cells.iter().flat_map(|m| m.keys().copied()).collect();
    let mut diffs = Vec::new();
    for key in keys {
        let reps = replicas_of(d, key);
        let reachable: Vec<usize> = reps.iter().copied().filter(|&i| d.replicas[i].reachable).collect();
        let stamp = |i: usize| cells[i].get(&key).map(|v| (v.micros, v.node, v.tombstone));
        let first = reachable.first().map(|&i| stamp(i));
        if reachable.iter().any(|&i| Some(stamp(i)) != first) {
            let parts: Vec<String> = reachable
                .iter()
                .map(|&i| {
                    let name = &d.replicas[i].name;
                    match cells[i].get(&key) {
                        Some(v) if v.tombstone => format!("{name} deleted@{}", v.micros),
                        Some(v) => format!("{name} {:?}@{}", v.value, v.micros),
                        None => format!("{name} none"),
                    }
                })
                .collect();
            diffs.push(format!("  key {key}: {}", parts.join(", ")));
        }
    }
    if diffs.is_empty() {
        o.push_str("All reachable replicas agree on every key.");
    } else {
        let _ = write!(o, "Keys that differ between replicas ({}):\n{}", diffs.len(), diffs.join("\n"));
    }
    o
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_flags_differing_keys() {
        let v = |micros, value: &str| proto::Version { micros, node: 1, tombstone: false, value: value.into() };
        let cell = |key, ver| proto::KeyVersion { key, version: Some(ver), truncated: false };
        let entry = |name: &str, s, e, cells| proto::ReplicaDumpEntry {
            name: name.into(),
            reachable: true,
            error: String::new(),
            cells,
            range_start: s,
            range_end: e,
        };
        let d = proto::DisplayResult {
            rf: 3,
            replicas: vec![
                entry("r0", 0, 63, vec![cell(5, v(2, "new")), cell(200, v(1, "x"))]),
                entry("r1", 64, 127, vec![cell(5, v(1, "old")), cell(200, v(1, "x"))]),
                entry("r2", 128, 191, vec![cell(5, v(2, "new"))]),
                entry("r3", 192, 255, vec![cell(200, v(1, "x"))]),
            ],
        };
        let out = format_display(&d);
        assert!(out.contains("key 5: r0 \"new\"@2, r1 \"old\"@1, r2 \"new\"@2"), "{out}");
        assert!(!out.contains("key 200"), "200 is on r3, r0, r1 which agree: {out}");
    }
}
