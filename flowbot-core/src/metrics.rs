//! Small lock-free counters and histograms the pipeline and workers keep, for an exporter
//! (the server renders them in the Prometheus text format).

use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds of the latency buckets, in seconds.
pub const LATENCY_BUCKETS: [f64; 14] = [
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0,
];

/// A latency histogram with fixed buckets ([`LATENCY_BUCKETS`]).
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS.len()],
    count: AtomicU64,
    sum_micros: AtomicU64,
}

/// A copy of a histogram's values.
#[derive(Debug, Clone, PartialEq)]
pub struct HistogramSnapshot {
    /// Cumulative counts per bucket of [`LATENCY_BUCKETS`] (observations ≤ the bound).
    pub cumulative: Vec<u64>,
    /// Number of observations.
    pub count: u64,
    /// Sum of observations in seconds.
    pub sum_seconds: f64,
}

impl Histogram {
    /// Record one observation.
    pub fn observe(&self, d: Duration) {
        let secs = d.as_secs_f64();
        if let Some(i) = LATENCY_BUCKETS.iter().position(|b| secs <= *b) {
            self.buckets[i].fetch_add(1, Ordering::Relaxed);
        }
        self.count.fetch_add(1, Ordering::Relaxed);
        self.sum_micros.fetch_add(
            u64::try_from(d.as_micros()).unwrap_or(u64::MAX),
            Ordering::Relaxed,
        );
    }

    /// The current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        let mut total = 0;
        let cumulative = self
            .buckets
            .iter()
            .map(|b| {
                total += b.load(Ordering::Relaxed);
                total
            })
            .collect();
        HistogramSnapshot {
            cumulative,
            count: self.count.load(Ordering::Relaxed),
            sum_seconds: self.sum_micros.load(Ordering::Relaxed) as f64 / 1e6,
        }
    }
}

/// Counters kept per label value (e.g. per channel).
#[derive(Debug, Default)]
pub struct LabeledCounter {
    values: Mutex<HashMap<String, u64>>,
}

impl LabeledCounter {
    /// Add one for `label`.
    pub fn inc(&self, label: &str) {
        let mut v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        match v.get_mut(label) {
            Some(n) => *n += 1,
            None => {
                v.insert(label.to_owned(), 1);
            }
        }
    }

    /// Every label and its count, sorted by label.
    pub fn snapshot(&self) -> Vec<(String, u64)> {
        let v = self.values.lock().unwrap_or_else(|p| p.into_inner());
        let mut out: Vec<(String, u64)> = v.iter().map(|(k, n)| (k.clone(), *n)).collect();
        out.sort();
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative() {
        let h = Histogram::default();
        h.observe(Duration::from_micros(300));
        h.observe(Duration::from_millis(3));
        h.observe(Duration::from_secs(60));
        let s = h.snapshot();
        assert_eq!(s.count, 3);
        assert_eq!(s.cumulative[0], 1);
        assert_eq!(s.cumulative[3], 2);
        assert_eq!(
            *s.cumulative.last().expect("buckets"),
            2,
            "60 s is only in +Inf"
        );
        assert!((s.sum_seconds - 60.0033).abs() < 1e-6);
    }
}
