//! A mergeable latency sketch with bounded relative error (DDSketch-style
//! logarithmic buckets), stored sparsely so that hundreds of per-second
//! slices per series stay small.
//!
//! A value v (µs) falls in bucket ceil(log_γ v) with γ = (1+α)/(1−α); the
//! bucket's representative value is within α = 1 % of every value in it, so
//! every reported percentile is within 1 % of a value actually observed at
//! that rank.

/// Relative accuracy of reported percentiles.
pub(crate) const RELATIVE_ACCURACY: f64 = 0.01;
/// Buckets cover 1 µs to over 24 h; larger values land in the last bucket.
const MAX_INDEX: u16 = 2200;

fn gamma() -> f64 {
    (1.0 + RELATIVE_ACCURACY) / (1.0 - RELATIVE_ACCURACY)
}

fn index_of(micros: f64) -> u16 {
    if micros <= 1.0 {
        return 0;
    }
    let i = (micros.ln() / gamma().ln()).ceil();
    if i >= f64::from(MAX_INDEX) {
        MAX_INDEX
    } else {
        i as u16
    }
}

fn value_of(index: u16) -> f64 {
    if index == 0 {
        return 1.0;
    }
    let g = gamma();
    // The point whose relative distance to both bucket bounds is equal.
    2.0 * g.powi(i32::from(index)) / (g + 1.0)
}

/// Sorted (bucket, count) pairs.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct Sketch {
    buckets: Vec<(u16, u32)>,
    count: u64,
}

impl Sketch {
    /// Adds a value; true when it took a new bucket (the sketch grew).
    pub(crate) fn add_micros(&mut self, micros: f64) -> bool {
        let i = index_of(micros);
        self.count += 1;
        match self.buckets.binary_search_by_key(&i, |(b, _)| *b) {
            Ok(p) => {
                self.buckets[p].1 = self.buckets[p].1.saturating_add(1);
                false
            }
            Err(p) => {
                self.buckets.insert(p, (i, 1));
                true
            }
        }
    }

    /// Bytes of one bucket, for memory accounting.
    pub(crate) const BUCKET_BYTES: usize = std::mem::size_of::<(u16, u32)>();

    pub(crate) fn buckets(&self) -> usize {
        self.buckets.len()
    }

    /// Approximate heap bytes held.
    pub(crate) fn heap_bytes(&self) -> usize {
        self.buckets.capacity() * std::mem::size_of::<(u16, u32)>()
    }
}

/// Merged view of several sketches, for percentile queries.
#[derive(Debug, Default)]
pub(crate) struct Merged {
    counts: Vec<u64>,
    total: u64,
}

impl Merged {
    pub(crate) fn add(&mut self, s: &Sketch) {
        if self.counts.is_empty() {
            self.counts = vec![0; usize::from(MAX_INDEX) + 1];
        }
        for (i, c) in &s.buckets {
            self.counts[usize::from(*i)] += u64::from(*c);
        }
        self.total += s.count;
    }

    /// The value (µs) at percentile `p` (0–100), or None when empty.
    pub(crate) fn percentile_micros(&self, p: f64) -> Option<f64> {
        if self.total == 0 {
            return None;
        }
        let rank = ((p / 100.0) * self.total as f64).ceil().max(1.0) as u64;
        let mut seen = 0;
        for (i, c) in self.counts.iter().enumerate() {
            seen += c;
            if seen >= rank {
                return Some(value_of(i as u16));
            }
        }
        Some(value_of(MAX_INDEX))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentiles_are_within_the_relative_error() {
        let mut s = Sketch::default();
        // 1 000 values: 1 ms … 1 000 ms.
        for v in 1..=1000 {
            s.add_micros(f64::from(v) * 1000.0);
        }
        let mut m = Merged::default();
        m.add(&s);
        for (p, exact) in [
            (50.0, 500_000.0),
            (95.0, 950_000.0),
            (99.0, 990_000.0),
            (100.0, 1_000_000.0),
        ] {
            let got = m.percentile_micros(p).expect("non-empty");
            assert!(
                (got - exact).abs() / exact <= RELATIVE_ACCURACY,
                "p{p}: {got} vs {exact}"
            );
        }
    }

    #[test]
    fn merging_equals_adding_to_one() {
        let (mut a, mut b, mut both) = (Sketch::default(), Sketch::default(), Sketch::default());
        for v in [10.0, 250.0, 3000.0, 3000.0, 1e7] {
            a.add_micros(v);
            both.add_micros(v);
        }
        for v in [7.0, 250.0, 8e5] {
            b.add_micros(v);
            both.add_micros(v);
        }
        let (mut m1, mut m2) = (Merged::default(), Merged::default());
        m1.add(&a);
        m1.add(&b);
        m2.add(&both);
        for p in [1.0, 50.0, 90.0, 99.0] {
            assert_eq!(m1.percentile_micros(p), m2.percentile_micros(p));
        }
    }

    #[test]
    fn extremes_do_not_panic() {
        let mut s = Sketch::default();
        for v in [0.0, -5.0, f64::NAN, f64::INFINITY, 1e30] {
            s.add_micros(v);
        }
        let mut m = Merged::default();
        m.add(&s);
        assert!(m.percentile_micros(99.0).is_some());
        assert_eq!(Merged::default().percentile_micros(50.0), None);
    }
}
