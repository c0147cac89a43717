//! Registered regions and their keys, one lkey/rkey per device in device
//! (context) order (spec §3.3, pitfall 11). The MR objects themselves live
//! in each device context; this table only maps addresses to keys.
//!
//! A registration larger than `max_mr_size` (the device's, or
//! `MC_MAX_MR_SIZE`) is split into chunks, each its own MR on every device
//! and its own descriptor entry, as upstream does (Mooncake PR #2644): a peer
//! of either implementation finds the keys of any byte by address range, and
//! slices never cross a chunk end (slicing cuts at region ends).

use std::collections::BTreeMap;
use std::sync::Arc;

use super::context::RdmaContext;
use crate::error::{Error, Result};
use crate::metadata::descriptor::BufferDesc;
use crate::transport::LocalBuffer;

/// `[addr, addr+len)` cut into pieces of at most `max` bytes.
pub fn chunks(addr: u64, len: u64, max: u64) -> Vec<(u64, u64)> {
    let max = max.max(1);
    let mut out = Vec::with_capacity(len.div_ceil(max).max(1) as usize);
    let mut off = 0;
    loop {
        let n = (len - off).min(max);
        out.push((addr + off, n));
        off += n;
        if off >= len {
            return out;
        }
    }
}

/// Register `buf` on every opened context, split at `max_mr_size`. On any
/// failure the MRs made so far are released and nothing is returned.
pub fn register(
    contexts: &[Arc<RdmaContext>],
    buf: &LocalBuffer,
    max_mr_size: u64,
) -> Result<Vec<Region>> {
    let pieces = chunks(buf.addr, buf.length, max_mr_size);
    if pieces.len() > 1 {
        log::warn!(
            "splitting registration {:#x}+{} into {} MRs of <= {max_mr_size} bytes (max_mr_size)",
            buf.addr,
            buf.length,
            pieces.len()
        );
    }
    let mut regions: Vec<Region> = Vec::with_capacity(pieces.len());
    for (addr, length) in pieces {
        let mut r = Region {
            buf: LocalBuffer {
                addr,
                length,
                ..buf.clone()
            },
            base: buf.addr,
            lkeys: Vec::with_capacity(contexts.len()),
            rkeys: Vec::with_capacity(contexts.len()),
        };
        for c in contexts {
            let Some(dev) = &c.device else {
                r.lkeys.push(0);
                r.rkeys.push(0);
                continue;
            };
            match dev.register(addr, length, buf.remote_accessible) {
                Ok(mr) => {
                    log::trace!(
                        "registerMemoryRegion: addr={addr:#x}, length={length}, context={}",
                        c.name
                    );
                    r.lkeys.push(mr.lkey());
                    r.rkeys.push(mr.rkey());
                    c.mrs.lock().insert(addr, mr);
                }
                Err(e) => {
                    regions.push(r);
                    release(contexts, &regions);
                    return Err(Error::Memory(format!(
                        "registering {addr:#x}+{length} (of {:#x}+{}) on {}: {e}",
                        buf.addr, buf.length, c.name
                    )));
                }
            }
        }
        regions.push(r);
    }
    Ok(regions)
}

/// Drop the MRs of `regions` on every context.
pub fn release(contexts: &[Arc<RdmaContext>], regions: &[Region]) {
    for c in contexts {
        let mut mrs = c.mrs.lock();
        for r in regions {
            mrs.remove(&r.buf.addr);
        }
    }
}

/// One registered region. `lkeys[i]`/`rkeys[i]` belong to device `i`; an
/// inactive device has key 0 (never used: its context takes no slices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    /// This chunk (the whole registration unless it was split).
    pub buf: LocalBuffer,
    /// Start address of the registration the chunk belongs to.
    pub base: u64,
    pub lkeys: Vec<u32>,
    pub rkeys: Vec<u32>,
}

impl Region {
    pub fn end(&self) -> u64 {
        self.buf.addr.saturating_add(self.buf.length)
    }

    /// The descriptor entry: `rkey` is `[]` for regions peers may not touch.
    pub fn describe(&self) -> BufferDesc {
        BufferDesc {
            addr: self.buf.addr,
            length: self.buf.length,
            name: self.buf.location.clone(),
            lkey: Some(self.lkeys.clone()),
            rkey: Some(if self.buf.remote_accessible {
                self.rkeys.clone()
            } else {
                Vec::new()
            }),
        }
    }
}

/// Regions by start address (they never overlap: the engine checks).
#[derive(Default, Debug)]
pub struct MemoryTable {
    regions: BTreeMap<u64, Region>,
}

impl MemoryTable {
    pub fn insert(&mut self, region: Region) {
        self.regions.insert(region.buf.addr, region);
    }

    pub fn remove(&mut self, addr: u64) -> Option<Region> {
        self.regions.remove(&addr)
    }

    /// Remove every chunk of the registration that starts at `base`.
    pub fn remove_registration(&mut self, base: u64) -> Vec<Region> {
        let keys: Vec<u64> = self.chunks_of(base).map(|r| r.buf.addr).collect();
        keys.iter().filter_map(|k| self.regions.remove(k)).collect()
    }

    /// The chunks of the registration that starts at `base`, in order.
    pub fn chunks_of(&self, base: u64) -> impl Iterator<Item = &Region> {
        self.regions
            .range(base..)
            .map(|(_, r)| r)
            .take_while(move |r| r.base == base)
    }

    /// The region holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&Region> {
        self.regions
            .range(..=addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| addr < r.end())
    }

    /// `find`, trying `hint` first (a request's pieces mostly lie in the
    /// region its start lies in: one tree search per request, not per use).
    pub fn find_near<'a>(&'a self, addr: u64, hint: Option<&'a Region>) -> Option<&'a Region> {
        match hint {
            Some(r) if addr >= r.buf.addr && addr < r.end() => Some(r),
            _ => self.find(addr),
        }
    }

    pub fn get(&self, addr: u64) -> Option<&Region> {
        self.regions.get(&addr)
    }

    pub fn clear(&mut self) {
        self.regions.clear();
    }

    pub fn len(&self) -> usize {
        self.regions.len()
    }

    pub fn is_empty(&self) -> bool {
        self.regions.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn region(addr: u64, len: u64, remote: bool) -> Region {
        Region {
            buf: LocalBuffer {
                addr,
                length: len,
                location: "cpu:0".into(),
                remote_accessible: remote,
            },
            base: addr,
            lkeys: vec![1, 2],
            rkeys: vec![3, 4],
        }
    }

    #[test]
    fn chunks_cover_the_range_at_most_max_each() {
        assert_eq!(
            chunks(0x1000, 10, 4),
            [(0x1000, 4), (0x1004, 4), (0x1008, 2)]
        );
        assert_eq!(chunks(0x1000, 8, 4), [(0x1000, 4), (0x1004, 4)]);
        assert_eq!(chunks(0x1000, 3, 4), [(0x1000, 3)]);
        assert_eq!(chunks(0x1000, 0, 4), [(0x1000, 0)]);
    }

    #[test]
    fn a_split_registration_is_removed_whole() {
        let mut t = MemoryTable::default();
        for (a, n) in chunks(0x1000, 0x300, 0x100) {
            let mut r = region(a, n, true);
            r.base = 0x1000;
            t.insert(r);
        }
        t.insert(region(0x1300, 0x10, true));
        assert_eq!(t.chunks_of(0x1000).count(), 3);
        assert_eq!(t.find(0x12ff).map(|r| r.end()), Some(0x1300));
        assert_eq!(t.remove_registration(0x1000).len(), 3);
        assert!(t.find(0x1000).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn finds_the_region_holding_an_address() {
        let mut t = MemoryTable::default();
        t.insert(region(0x1000, 0x1000, true));
        t.insert(region(0x4000, 0x100, true));
        assert_eq!(t.find(0x1000).map(|r| r.buf.addr), Some(0x1000));
        assert_eq!(t.find(0x1fff).map(|r| r.buf.addr), Some(0x1000));
        assert!(t.find(0x2000).is_none());
        assert!(t.find(0xfff).is_none());
        assert_eq!(t.find(0x40ff).map(|r| r.buf.addr), Some(0x4000));
        assert!(t.remove(0x1000).is_some());
        assert!(t.find(0x1800).is_none());
        assert_eq!(t.len(), 1);
    }

    #[test]
    fn describe_hides_rkeys_of_private_regions() {
        let d = region(0x1000, 0x10, false).describe();
        assert_eq!(d.rkey, Some(vec![]));
        assert_eq!(d.lkey, Some(vec![1, 2]));
        let d = region(0x1000, 0x10, true).describe();
        assert_eq!(d.rkey, Some(vec![3, 4]));
        assert_eq!(d.name, "cpu:0");
    }
}
