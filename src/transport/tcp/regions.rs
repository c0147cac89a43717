//! The locally registered regions the data server accepts requests for, and
//! the range check (spec §7.3 step 3, pitfall 17).

use parking_lot::RwLock;

use crate::error::{Error, Result};

/// Registered `[addr, addr+length)` regions, in registration order.
#[derive(Default)]
pub struct Regions {
    list: RwLock<Vec<(u64, u64)>>,
}

/// Whether `[addr, addr+size)` lies inside ONE of `regions`, with `size > 0`
/// and no overflow.
pub fn range_allowed(regions: &[(u64, u64)], addr: u64, size: u64) -> bool {
    let Some(end) = addr.checked_add(size) else {
        return false;
    };
    size > 0
        && regions.iter().any(|&(base, len)| {
            // A region reaching past u64::MAX ends at u64::MAX.
            let r_end = base.saturating_add(len);
            addr >= base && end <= r_end
        })
}

impl Regions {
    pub fn add(&self, addr: u64, length: u64) {
        self.list.write().push((addr, length));
    }

    pub fn remove(&self, addr: u64) -> Result<()> {
        let mut l = self.list.write();
        match l.iter().position(|&(a, _)| a == addr) {
            Some(i) => {
                l.remove(i);
                Ok(())
            }
            None => Err(Error::AddressNotRegistered(format!(
                "tcp: no region registered at {addr:#x}"
            ))),
        }
    }

    pub fn allows(&self, addr: u64, size: u64) -> bool {
        range_allowed(&self.list.read(), addr, size)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inside_and_exact_are_accepted() {
        let r = [(1000, 100)];
        assert!(range_allowed(&r, 1000, 100));
        assert!(range_allowed(&r, 1010, 10));
        assert!(range_allowed(&r, 1099, 1));
    }

    #[test]
    fn outside_partial_zero_overflow_are_rejected() {
        let r = [(1000, 100)];
        assert!(!range_allowed(&r, 900, 50));
        assert!(!range_allowed(&r, 990, 20), "straddles start");
        assert!(!range_allowed(&r, 1090, 20), "straddles end");
        assert!(!range_allowed(&r, 1100, 1), "just past end");
        assert!(!range_allowed(&r, 1000, 0), "zero size");
        assert!(!range_allowed(&r, u64::MAX, 2), "overflow");
        assert!(!range_allowed(&[], 1000, 1), "empty list");
    }

    #[test]
    fn spanning_two_adjacent_regions_is_rejected() {
        let r = [(1000, 100), (1100, 100)];
        assert!(range_allowed(&r, 1100, 100));
        assert!(!range_allowed(&r, 1050, 100));
    }

    #[test]
    fn whole_address_space_region() {
        let r = [(0, u64::MAX)];
        assert!(range_allowed(&r, 0, u64::MAX));
        assert!(!range_allowed(&r, 1, u64::MAX));
    }

    #[test]
    fn add_remove() {
        let r = Regions::default();
        r.add(10, 10);
        assert!(r.allows(12, 3));
        assert!(r.remove(99).is_err());
        r.remove(10).unwrap();
        assert!(!r.allows(12, 3));
    }
}
