//! The locally registered regions the data server accepts requests for, the
//! range check (spec §7.3 step 3, pitfall 17), and the unregister fence.
//!
//! The fence: every copy between a socket and registered memory runs under a
//! `Pin` (a read lock) after re-checking its range, and `remove` takes the
//! write lock. So when `remove` returns, no copy into or out of the removed
//! range is running and none will start: a removal waits at most for the
//! copies in progress, each one non-blocking syscall.

use std::sync::atomic::{AtomicU64, Ordering};

use parking_lot::{RwLock, RwLockReadGuard};

use crate::error::{Error, Result};

/// Registered `[addr, addr+length)` regions, in registration order.
#[derive(Default)]
pub struct Regions {
    list: RwLock<Vec<(u64, u64)>>,
    /// Bumped by every removal: a range checked at generation `g` is still
    /// registered while the generation is `g` (additions never revoke).
    removals: AtomicU64,
}

/// A range that was inside one region at generation `gen`.
#[derive(Clone, Copy, Debug)]
pub struct Checked {
    pub gen: u64,
}

/// Held while bytes move between a socket and registered memory: no
/// region can be removed meanwhile.
pub struct Pin<'a> {
    list: RwLockReadGuard<'a, Vec<(u64, u64)>>,
    gen: u64,
}

impl Pin<'_> {
    /// Whether `[addr, addr+size)`, checked at `seen`, is still registered;
    /// refreshes `seen` when a removal of another region intervened.
    pub fn still_allows(&self, seen: &mut Checked, addr: u64, size: u64) -> bool {
        if seen.gen == self.gen {
            return true;
        }
        if range_allowed(&self.list, addr, size) {
            seen.gen = self.gen;
            true
        } else {
            false
        }
    }

    pub fn check(&self, addr: u64, size: u64) -> Option<Checked> {
        range_allowed(&self.list, addr, size).then_some(Checked { gen: self.gen })
    }
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

    /// Remove the region at `addr`; returns once no copy into or out of it
    /// runs (see the module comment).
    pub fn remove(&self, addr: u64) -> Result<()> {
        let mut l = self.list.write();
        match l.iter().position(|&(a, _)| a == addr) {
            Some(i) => {
                l.remove(i);
                self.removals.fetch_add(1, Ordering::Release);
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

    /// Hold off removals while bytes move (keep it to one syscall).
    pub fn pin(&self) -> Pin<'_> {
        let list = self.list.read();
        // Removals bump it under the write lock, so it is stable here.
        let gen = self.removals.load(Ordering::Acquire);
        Pin { list, gen }
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

    #[test]
    fn a_removal_revokes_checked_ranges_of_that_region_only() {
        let r = Regions::default();
        r.add(10, 10);
        r.add(100, 10);
        let (mut a, mut b) = {
            let p = r.pin();
            (p.check(12, 3).unwrap(), p.check(100, 10).unwrap())
        };
        r.add(200, 10);
        assert!(
            r.pin().still_allows(&mut a, 12, 3),
            "an addition revokes nothing"
        );
        r.remove(10).unwrap();
        let p = r.pin();
        assert!(!p.still_allows(&mut a, 12, 3));
        assert!(p.still_allows(&mut b, 100, 10));
        assert_eq!(b.gen, p.gen, "re-checked once, then the fast path");
    }
}
