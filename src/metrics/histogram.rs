//! A lock-free histogram over fixed bounds (µs): one relaxed add per
//! bucket and one for the sum per observation; a scrape reads without
//! stopping writers (a scrape may see a count before its sum, never a torn
//! value).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

pub struct Histogram {
    bounds_us: &'static [u64],
    /// One per bound, then the overflow bucket.
    counts: Box<[AtomicU64]>,
    sum_us: AtomicU64,
}

/// What a scrape reads.
pub struct Snapshot {
    pub bounds_us: &'static [u64],
    /// Per bucket (not cumulative), overflow last.
    pub counts: Vec<u64>,
    pub sum_us: u64,
}

/// Over upstream's `MC_TE_METRIC` buckets.
impl Default for Histogram {
    fn default() -> Self {
        Histogram::new(&super::BUCKETS_US)
    }
}

impl Histogram {
    pub fn new(bounds_us: &'static [u64]) -> Histogram {
        Histogram {
            bounds_us,
            counts: (0..=bounds_us.len()).map(|_| AtomicU64::new(0)).collect(),
            sum_us: AtomicU64::new(0),
        }
    }

    pub fn observe(&self, d: Duration) {
        self.observe_us(d.as_micros().min(u64::MAX as u128) as u64);
    }

    /// A value goes to the first bucket whose bound is >= it.
    pub fn observe_us(&self, us: u64) {
        let i = self.bounds_us.partition_point(|&b| b < us);
        self.counts[i].fetch_add(1, Ordering::Relaxed);
        self.sum_us.fetch_add(us, Ordering::Relaxed);
    }

    pub fn count(&self) -> u64 {
        self.counts.iter().map(|c| c.load(Ordering::Relaxed)).sum()
    }

    pub fn snapshot(&self) -> Snapshot {
        Snapshot {
            bounds_us: self.bounds_us,
            counts: self
                .counts
                .iter()
                .map(|c| c.load(Ordering::Relaxed))
                .collect(),
            sum_us: self.sum_us.load(Ordering::Relaxed),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_land_in_the_first_bound_at_or_above() {
        let h = Histogram::new(&[10, 20]);
        for us in [0, 10, 11, 20, 21] {
            h.observe_us(us);
        }
        let s = h.snapshot();
        assert_eq!(s.counts, vec![2, 2, 1]);
        assert_eq!(s.sum_us, 62);
        assert_eq!(h.count(), 5);
    }
}
