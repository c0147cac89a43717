//! Maps keyed by ids this process issues itself (WR ids, batch ids,
//! interned names): the keys are sequential counters no peer chooses, so a
//! single multiply spreads them well and SipHash's flood resistance buys
//! nothing (SipHash cost ~20% of an RDMA slice's CPU).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

#[derive(Default)]
pub struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        self.0 = fnv_fold(self.0, bytes);
    }
    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits (used by hashbrown's control
        // bytes) and the low bits (bucket index) both vary with `id`.
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(32);
    }
}

/// FNV-1a of `bytes`: a stable hash of a name (picks its posting thread).
pub fn fnv1a(bytes: &[u8]) -> u64 {
    fnv_fold(0xcbf2_9ce4_8422_2325, bytes)
}

fn fnv_fold(h: u64, bytes: &[u8]) -> u64 {
    bytes
        .iter()
        .fold(h, |h, &b| (h ^ b as u64).wrapping_mul(0x100_0000_01b3))
}

/// A `HashMap` keyed by self-issued ids.
pub type IdMap<K, V> = HashMap<K, V, BuildHasherDefault<IdHasher>>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sequential_ids_spread_over_buckets_and_control_bytes() {
        let hash = |id: u64| {
            let mut h = IdHasher::default();
            h.write_u64(id);
            h.finish()
        };
        let low: std::collections::HashSet<u64> = (0..1024).map(|i| hash(i) & 1023).collect();
        let high: std::collections::HashSet<u64> = (0..1024).map(|i| hash(i) >> 57).collect();
        assert!(low.len() > 600, "low bits: {} distinct", low.len());
        assert_eq!(high.len(), 128);
    }
}
