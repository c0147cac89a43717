//! Local address checks. Upstream's TCP path copies from any address it is
//! given, so a wrong one takes the interpreter down; here a local range must
//! lie inside one region registered with the engine.

use transfer_engine::transport::LocalBuffer;

/// Registered regions as sorted, disjoint `[start, end)` pairs.
pub struct Ranges(Vec<(u64, u64)>);

impl Ranges {
    pub fn new(buffers: &[LocalBuffer]) -> Ranges {
        let mut v: Vec<(u64, u64)> = buffers
            .iter()
            .map(|b| (b.addr, b.addr.saturating_add(b.length)))
            .collect();
        v.sort_unstable();
        Ranges(v)
    }

    /// `[addr, addr + len)` inside one region (`len` > 0).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        let Some(end) = addr.checked_add(len) else {
            return false;
        };
        let i = self.0.partition_point(|r| r.0 <= addr);
        i > 0 && end <= self.0[i - 1].1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(addr: u64, length: u64) -> LocalBuffer {
        LocalBuffer {
            addr,
            length,
            location: "*".into(),
            remote_accessible: true,
        }
    }

    #[test]
    fn inside_one_region_only() {
        let r = Ranges::new(&[buf(5000, 100), buf(1000, 100)]);
        assert!(r.contains(1000, 100));
        assert!(r.contains(1050, 1));
        assert!(!r.contains(1050, 51));
        assert!(!r.contains(999, 2));
        assert!(!r.contains(1100, 1));
        assert!(r.contains(5099, 1));
        assert!(!r.contains(u64::MAX, 2));
        assert!(!Ranges::new(&[]).contains(1, 1));
    }
}
