//! `allocate_managed_buffer`: upstream's size classes (8 KiB .. 256 MiB,
//! powers of two) carved out of registered 2 GiB chunks by halving bigger
//! blocks; larger requests get a region of their own. Memory is anonymous
//! `mmap` (committed on first touch) and stays mapped until the engine goes.

use std::collections::HashMap;

/// Upstream's `kDefaultBufferCapacity`.
pub const CHUNK: u64 = 2 << 30;
const SMALLEST: u64 = 8 << 10;
const CLASSES: usize = 16;

fn class_size(class: usize) -> u64 {
    SMALLEST << class
}

/// Smallest class holding `len` bytes; `None` above 256 MiB.
pub fn class_of(len: u64) -> Option<usize> {
    (0..CLASSES).find(|&c| len <= class_size(c))
}

/// Bookkeeping only; `map`/`unmap` callbacks own the memory and registration.
#[derive(Default)]
pub struct Pool {
    free: [Vec<u64>; CLASSES],
    /// Every block handed out: address → class (`None` = own region of that length).
    live: HashMap<u64, (Option<usize>, u64)>,
    /// Chunks and own regions: (address, length), to unmap at the end.
    pub regions: Vec<(u64, u64)>,
}

impl Pool {
    /// A block of at least `len` bytes, or `None` when `map` fails.
    /// `map(len)` maps and registers a region and returns its address.
    pub fn allocate(&mut self, len: u64, mut map: impl FnMut(u64) -> Option<u64>) -> Option<u64> {
        let len = len.max(1);
        let Some(class) = class_of(len) else {
            let addr = map(len)?;
            self.regions.push((addr, len));
            self.live.insert(addr, (None, len));
            return Some(addr);
        };
        let mut c = class;
        while self.free[c].is_empty() {
            if c + 1 == CLASSES {
                let chunk = map(CHUNK)?;
                self.regions.push((chunk, CHUNK));
                let step = class_size(c);
                self.free[c].extend((0..CHUNK / step).rev().map(|i| chunk + i * step));
                break;
            }
            c += 1;
        }
        // Halve down from class c to the wanted class.
        while c > class {
            let block = self.free[c].pop().expect("non-empty by the loop above");
            c -= 1;
            self.free[c].push(block + class_size(c));
            self.free[c].push(block);
        }
        let addr = self.free[class].pop()?;
        self.live.insert(addr, (Some(class), class_size(class)));
        Some(addr)
    }

    /// Return a block. `Err` when `addr` is not a live block of this pool.
    /// An own region comes back as `Ok(Some((addr, len)))` for the caller to
    /// unregister and unmap.
    pub fn free(&mut self, addr: u64) -> Result<Option<(u64, u64)>, String> {
        match self.live.remove(&addr) {
            Some((Some(class), _)) => {
                self.free[class].push(addr);
                Ok(None)
            }
            Some((None, len)) => {
                self.regions.retain(|r| r.0 != addr);
                Ok(Some((addr, len)))
            }
            None => Err(format!(
                "{addr:#x} is not a buffer allocate_managed_buffer handed out (or it was freed already)"
            )),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_match_upstream() {
        assert_eq!(class_of(1), Some(0));
        assert_eq!(class_of(8 << 10), Some(0));
        assert_eq!(class_of((8 << 10) + 1), Some(1));
        assert_eq!(class_of(256 << 20), Some(15));
        assert_eq!(class_of((256 << 20) + 1), None);
    }

    #[test]
    fn blocks_are_disjoint_and_reused() {
        let mut p = Pool::default();
        let mut next = 0x1000_0000u64;
        let mut map = |len: u64| {
            let a = next;
            next += len;
            Some(a)
        };
        let a = p.allocate(4096, &mut map).unwrap();
        let b = p.allocate(4096, &mut map).unwrap();
        let c = p.allocate(1 << 20, &mut map).unwrap();
        assert_eq!(p.regions.len(), 1);
        assert!(a.abs_diff(b) >= 8 << 10);
        assert!(c + (1 << 20) <= a || c >= a + (8 << 10));
        assert_eq!(p.free(a), Ok(None));
        assert!(p.free(a).is_err());
        assert_eq!(p.allocate(100, &mut map), Some(a));
        let big = p.allocate(300 << 20, &mut map).unwrap();
        assert_eq!(p.free(big), Ok(Some((big, 300 << 20))));
    }
}
