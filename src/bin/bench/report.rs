//! What a run measured and how it is shown: a table line or one JSON object per run,
//! and the targets table that closes the matrix — each target ratio judged on the
//! median of its row's pairs with their ping (the murmur3 rows: with the same row
//! on the byte-ordered cluster), plus the tail and memory targets.

use std::collections::BTreeMap;

use quorumkv::client::histogram::Histogram;

use crate::load::CasCounts;

/// What a run measured.
#[derive(Default)]
pub(crate) struct Report {
    pub(crate) ops: u64,
    pub(crate) seconds: f64,
    pub(crate) hist: Histogram,
    pub(crate) errors: BTreeMap<&'static str, u64>,
    /// With a phase flag ([`Load::phase`](crate::load::Load::phase)): the latencies of
    /// the operations in each phase.
    pub(crate) phases: [Histogram; crate::load::PHASES],
    /// A compare-and-set load: how its measured attempts ended (a
    /// transaction load: committed, and aborted by a conflict).
    pub(crate) cas: crate::load::CasCounts,
    /// A transaction load (the counts above are commits and aborts).
    pub(crate) txn: bool,
}

impl Report {
    pub(crate) fn ops_per_sec(&self) -> f64 {
        if self.seconds > 0.0 { self.ops as f64 / self.seconds } else { 0.0 }
    }

    /// Throughput, p50 and p99 (µs).
    pub(crate) fn figures(&self) -> (f64, u64, u64) {
        (self.ops_per_sec(), self.hist.percentile(0.5), self.hist.percentile(0.99))
    }

    pub(crate) fn json(&self, label: &str) -> String {
        let errors: Vec<String> = ["unavailable", "timeout", "unknown", "connection", "other"]
            .iter()
            .map(|k| format!("\"{k}\":{}", self.errors.get(k).copied().unwrap_or(0)))
            .collect();
        format!(
            "{{\"label\":\"{label}\",{}\"ops\":{},\"seconds\":{:.3},\"ops_per_sec\":{:.1},\"p50_us\":{},\"p95_us\":{},\"p99_us\":{},\"p999_us\":{},\"max_us\":{},\"mean_us\":{:.1},\"errors\":{{{}}}}}",
            self.cas_json(),
            self.ops,
            self.seconds,
            self.ops_per_sec(),
            self.hist.percentile(0.5),
            self.hist.percentile(0.95),
            self.hist.percentile(0.99),
            self.hist.percentile(0.999),
            self.hist.max(),
            self.hist.mean(),
            errors.join(",")
        )
    }

    /// Of the measured compare-and-sets (none: `None`), the share applied and applied ones a second.
    pub(crate) fn cas_rate(&self) -> Option<(f64, f64)> {
        let CasCounts { applied, not_applied } = self.cas;
        let decided = applied + not_applied;
        (decided > 0).then(|| (applied as f64 / decided as f64, if self.seconds > 0.0 { applied as f64 / self.seconds } else { 0.0 }))
    }

    fn cas_json(&self) -> String {
        match self.cas_rate() {
            None => String::new(),
            Some((share, per_sec)) => format!(
                "\"cas_applied\":{},\"cas_not_applied\":{},\"cas_applied_share\":{share:.4},\"cas_applied_per_sec\":{per_sec:.1},",
                self.cas.applied, self.cas.not_applied
            ),
        }
    }

    pub(crate) fn line(&self, label: &str) -> String {
        let errs: u64 = self.errors.values().sum();
        let err = if errs == 0 {
            String::new()
        } else {
            let parts: Vec<String> = self.errors.iter().filter(|(_, n)| **n > 0).map(|(k, n)| format!("{k} {n}")).collect();
            format!("  errors: {}", parts.join(", "))
        };
        let cas = match self.cas_rate() {
            None => String::new(),
            Some((share, per_sec)) if self.txn => format!(
                "\n{:<34} committed {} of {} transactions ({:.1} % aborted by a conflict), {per_sec:.0} committed/s",
                "",
                self.cas.applied,
                self.cas.applied + self.cas.not_applied,
                (1.0 - share) * 100.0
            ),
            Some((share, per_sec)) => format!(
                "\n{:<34} CAS applied {} of {} decided ({:.1} %), {per_sec:.0} applied/s; the rest found the value changed by another client",
                "",
                self.cas.applied,
                self.cas.applied + self.cas.not_applied,
                share * 100.0
            ),
        };
        format!(
            "{label:<34} {:>9.0} ops/s  p50 {:>6}  p95 {:>6}  p99 {:>6}  p99.9 {:>6}  max {:>7} µs{err}{cas}",
            self.ops_per_sec(),
            self.hist.percentile(0.5),
            self.hist.percentile(0.95),
            self.hist.percentile(0.99),
            self.hist.percentile(0.999),
            self.hist.max()
        )
    }
}

/// A target judged against the ping run alongside its row.
pub(crate) struct Target {
    /// How the table names it.
    name: &'static str,
    /// The matrix row it judges.
    pub(crate) row: &'static str,
    /// Clients of the row (and of its ping).
    pub(crate) clients: usize,
    /// p50 latency ratio (at most `target`) rather than throughput ratio (at least `target`).
    latency: bool,
    target: f64,
}

pub(crate) const TARGETS: [Target; 4] = [
    Target { name: "1 client get ONE (local key) p50 / ping p50", row: "get ONE c=1 (local key)", clients: 1, latency: true, target: 1.5 },
    Target { name: "1 client put QUORUM p50 / ping p50", row: "put QUORUM c=1", clients: 1, latency: true, target: 3.0 },
    Target { name: "32 clients get ONE ops/s / ping ops/s", row: "get ONE c=32", clients: 32, latency: false, target: 0.5 },
    Target { name: "32 clients put QUORUM ops/s / ping ops/s", row: "put QUORUM c=32", clients: 32, latency: false, target: 0.25 },
];

/// The murmur3 rows (100,000 string keys by default), each judged against the same
/// load on the byte-ordered cluster run just before it.
pub(crate) const MURMUR3_TARGETS: [Target; 2] = [
    Target {
        name: "murmur3 32 clients get ONE ops/s / byte-ordered",
        row: "get ONE c=32 murmur3",
        clients: 32,
        latency: false,
        target: 0.9,
    },
    Target {
        name: "murmur3 32 clients put QUORUM ops/s / byte-ordered",
        row: "put QUORUM c=32 murmur3",
        clients: 32,
        latency: false,
        target: 0.9,
    },
];

/// The SERIAL rows (issue 13), each judged against the same load at QUORUM run just before it.
pub(crate) const SERIAL_TARGETS: [Target; 3] = [
    Target { name: "1 client put SERIAL p50 / put QUORUM p50", row: "put SERIAL c=1", clients: 1, latency: true, target: 2.5 },
    Target { name: "1 client get SERIAL p50 / get QUORUM p50", row: "get SERIAL c=1", clients: 1, latency: true, target: 1.5 },
    Target { name: "32 clients put SERIAL ops/s / put QUORUM ops/s", row: "put SERIAL c=32", clients: 32, latency: false, target: 0.4 },
];

/// The transaction rows (issue 15), each judged against the same client's
/// QUORUM put or get run just before it.
pub(crate) const TXN_TARGETS: [Target; 2] = [
    Target { name: "1 client 2-key txn p50 / put QUORUM p50", row: "txn 2 keys c=1", clients: 1, latency: true, target: 3.0 },
    Target { name: "1 client 2-key mget p50 / get QUORUM p50", row: "mget 2 keys c=1", clients: 1, latency: true, target: 1.5 },
];

/// One line of a targets table: `value` against `target` (`cmp` is `<=` or `>=`);
/// NaN (not measured) is never met.
pub(crate) fn verdict(name: &str, value: f64, cmp: &str, target: f64, detail: &str) -> String {
    let ok = if cmp == "<=" { value <= target } else { value >= target };
    format!("{:<52} {:>7.2}x  target {cmp} {target}x  {}  {detail}", name, value, if ok { "met" } else { "NOT MET" })
}

/// A target row's run and the ping run just before it: (ops/s, p50 µs, p99 µs) each.
pub(crate) struct Pair {
    pub(crate) row: (f64, u64, u64),
    pub(crate) ping: (f64, u64, u64),
}

impl Target {
    /// The figure the target compares: the row's p50 over its ping's, or its throughput over its ping's.
    fn ratio(&self, row: (f64, u64, u64), ping: (f64, u64, u64)) -> f64 {
        if self.latency { row.1 as f64 / ping.1.max(1) as f64 } else { row.0 / ping.0.max(1.0) }
    }
}

/// The median of `values` (the mean of the middle two for an even count); 0 for none.
fn median_of(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    match values.len() {
        0 => 0.0,
        n if n % 2 == 1 => values[n / 2],
        n => (values[n / 2 - 1] + values[n / 2]) / 2.0,
    }
}

/// Prints the targets table; the murmur3 targets if `murmur3` (the rows ran, or
/// should have); only the SERIAL ones if `serial_only` (`bench matrix --only serial`).
pub(crate) fn print_targets(r: &BTreeMap<String, (f64, u64, u64)>, pairs: &BTreeMap<String, Vec<Pair>>, murmur3: bool, serial_only: bool) {
    let get = |k: &str| r.get(k).copied().unwrap_or_default();
    let mut rows = Vec::new();
    let mut ratio_row = |name: &str, value: f64, cmp: &str, target: f64, detail: String| {
        rows.push(verdict(name, value, cmp, target, &detail));
    };
    let murmur3_targets = if murmur3 { &MURMUR3_TARGETS[..] } else { &[] };
    let standard = if serial_only { &[][..] } else { &TARGETS[..] };
    let txn = if serial_only { &[][..] } else { &TXN_TARGETS[..] };
    for t in standard.iter().chain(murmur3_targets).chain(&SERIAL_TARGETS).chain(txn) {
        // Every target row runs in pairs with its ping (at least one).
        let mut ratios: Vec<f64> = pairs.get(t.row).map_or(&[][..], Vec::as_slice).iter().map(|p| t.ratio(p.row, p.ping)).collect();
        let value = median_of(&mut ratios);
        let each = ratios.iter().map(|x| format!("{x:.2}")).collect::<Vec<_>>().join(" ");
        let cmp = if t.latency { "<=" } else { ">=" };
        if ratios.is_empty() {
            // Not measured (the matrix stopped early): never "met".
            ratio_row(t.name, f64::NAN, cmp, t.target, "(not measured)".into());
        } else {
            ratio_row(t.name, value, cmp, t.target, format!("(median of {} pairs: {each})", ratios.len()));
        }
    }
    if serial_only {
        println!("\n== targets (SERIAL only)");
        for row in rows {
            println!("{row}");
        }
        return;
    }
    let p32 = get("put QUORUM c=32");
    ratio_row(
        "32 clients put QUORUM p99 / its p50",
        p32.2 as f64 / p32.1.max(1) as f64,
        "<=",
        10.0,
        format!("({} vs {} µs)", p32.2, p32.1),
    );
    println!("\n== targets");
    for row in rows {
        println!("{row}");
    }
    let idle = get("idle_rss").1;
    println!(
        "{:<52} {:>7} KiB  target <= 16384 KiB  {}",
        "idle replica resident memory",
        idle,
        if idle > 0 && idle <= 16384 { "met" } else { "NOT MET" }
    );
    let conns = r.get("idle_conns_rss").map(|v| v.1);
    match conns {
        Some(k) => println!(
            "{:<52} {:>7} KiB  target <= 65536 KiB  {}",
            "1000 idle connections, resident memory",
            k,
            if k <= 65536 { "met" } else { "NOT MET" }
        ),
        None => println!("{:<52} NOT MET (connections were not all served)", "1000 idle connections"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_of_odd_even_and_empty() {
        for (values, want) in [
            (vec![], 0.0),
            (vec![2.5], 2.5),
            (vec![3.0, 1.0, 2.0], 2.0),
            (vec![4.0, 1.0, 3.0, 2.0], 2.5),
            (vec![2.9, 2.1, 3.4, 2.4, 2.2], 2.4),
        ] {
            let mut v = values.clone();
            assert_eq!(median_of(&mut v), want, "{values:?}");
        }
    }

    #[test]
    fn targets_compare_latency_or_throughput_with_their_ping() {
        let latency = &TARGETS[1];
        let throughput = &TARGETS[3];
        assert!(latency.latency && !throughput.latency);
        // p50 60 µs against a ping's 20 µs: 3x; throughput 25k against 100k: 0.25x.
        assert_eq!(latency.ratio((10_000.0, 60, 100), (40_000.0, 20, 30)), 3.0);
        assert_eq!(throughput.ratio((25_000.0, 900, 2_000), (100_000.0, 300, 800)), 0.25);
        // A ping with no samples does not divide by zero.
        assert_eq!(latency.ratio((1.0, 50, 60), (0.0, 0, 0)), 50.0);
    }
}
