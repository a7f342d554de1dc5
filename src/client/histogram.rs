//! A log-linear latency histogram (HdrHistogram-style), fixed size, no allocation per sample.
//!
//! Values (microseconds) are bucketed by their power of two, each power split
//! into [`SUB`] linear sub-buckets, so every recorded value is within
//! 1/[`SUB`] (about 1.6 %) of its bucket's lower bound, from 1 µs to hours.
//! Recording is an index computation and an increment; histograms of several
//! threads [`merge`](Histogram::merge).

/// Linear sub-buckets per power of two.
pub const SUB: usize = 64;
const SUB_BITS: u32 = SUB.trailing_zeros();
/// Powers of two covered (values up to 2^40 µs, about 12 days).
const POWERS: usize = 40;

/// Counts of values by bucket.
#[derive(Clone)]
pub struct Histogram {
    counts: Vec<u64>,
    total: u64,
    max: u64,
    min: u64,
    sum: u128,
}

impl Default for Histogram {
    fn default() -> Self {
        Self::new()
    }
}

impl std::fmt::Debug for Histogram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Histogram {{ n: {}, p50: {}, max: {} }}", self.total, self.percentile(0.5), self.max)
    }
}

fn index(v: u64) -> usize {
    if v < SUB as u64 {
        return v as usize;
    }
    let power = 63 - v.leading_zeros(); // >= SUB_BITS
    let shift = power - SUB_BITS;
    let sub = (v >> shift) as usize - SUB; // 0..SUB
    let i = (power - SUB_BITS + 1) as usize * SUB + sub;
    i.min(POWERS * SUB - 1)
}

/// The smallest value that lands in bucket `i`.
fn lower_bound(i: usize) -> u64 {
    if i < SUB {
        return i as u64;
    }
    let group = i / SUB; // >= 1
    let sub = (i % SUB) as u64;
    let shift = group as u32 - 1;
    (SUB as u64 + sub) << shift
}

impl Histogram {
    /// An empty histogram.
    pub fn new() -> Self {
        Histogram { counts: vec![0; POWERS * SUB], total: 0, max: 0, min: u64::MAX, sum: 0 }
    }

    /// Records one value.
    pub fn record(&mut self, v: u64) {
        self.counts[index(v)] += 1;
        self.total += 1;
        self.max = self.max.max(v);
        self.min = self.min.min(v);
        self.sum += v as u128;
    }

    /// Adds `other`'s counts.
    pub fn merge(&mut self, other: &Histogram) {
        for (a, b) in self.counts.iter_mut().zip(&other.counts) {
            *a += b;
        }
        self.total += other.total;
        self.max = self.max.max(other.max);
        self.min = self.min.min(other.min);
        self.sum += other.sum;
    }

    /// Values recorded.
    pub fn count(&self) -> u64 {
        self.total
    }

    /// Largest value recorded (0 if none).
    pub fn max(&self) -> u64 {
        self.max
    }

    /// Mean of the values recorded (0 if none).
    pub fn mean(&self) -> f64 {
        if self.total == 0 { 0.0 } else { self.sum as f64 / self.total as f64 }
    }

    /// The value at quantile `q` (0..=1): the lower bound of the bucket holding it,
    /// never above the maximum recorded.
    pub fn percentile(&self, q: f64) -> u64 {
        if self.total == 0 {
            return 0;
        }
        let rank = ((q.clamp(0.0, 1.0) * self.total as f64).ceil() as u64).max(1);
        if rank >= self.total {
            return self.max;
        }
        let mut seen = 0;
        for (i, &c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return lower_bound(i).max(self.min).min(self.max);
            }
        }
        self.max
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_are_within_two_percent() {
        for v in (0..100_000u64).chain([1 << 20, 123_456_789, 1 << 39]) {
            let lb = lower_bound(index(v));
            assert!(lb <= v, "{v}: bucket starts at {lb}");
            assert!((v - lb) as f64 <= v as f64 / SUB as f64 + 1.0, "{v}: bucket at {lb} too coarse");
        }
    }

    #[test]
    fn percentiles_of_a_known_distribution() {
        let mut h = Histogram::new();
        for v in 1..=10_000u64 {
            h.record(v);
        }
        for (q, want) in [(0.5, 5000.0), (0.95, 9500.0), (0.99, 9900.0), (0.999, 9990.0)] {
            let got = h.percentile(q) as f64;
            assert!((got - want).abs() / want < 0.02, "p{q}: {got} vs {want}");
        }
        assert_eq!(h.max(), 10_000);
        assert_eq!(h.percentile(1.0), 10_000);
        assert_eq!(h.count(), 10_000);
        assert!((h.mean() - 5000.5).abs() < 1e-9);
    }

    #[test]
    fn merge_adds_up() {
        let (mut a, mut b) = (Histogram::new(), Histogram::new());
        for v in 0..100 {
            a.record(v);
            b.record(v + 1000);
        }
        a.merge(&b);
        assert_eq!(a.count(), 200);
        assert_eq!(a.max(), 1099);
        assert!(a.percentile(0.25) < 100 && a.percentile(0.75) >= 1000);
        assert_eq!(Histogram::new().percentile(0.5), 0);
    }
}
