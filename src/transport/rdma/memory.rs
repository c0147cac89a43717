//! Registered regions and their keys, one lkey/rkey per device in device
//! (context) order (spec §3.3, pitfall 11). The MR objects themselves live
//! in each device context; this table only maps addresses to keys.

use std::collections::BTreeMap;

use crate::metadata::descriptor::BufferDesc;
use crate::transport::LocalBuffer;

/// One registered region. `lkeys[i]`/`rkeys[i]` belong to device `i`; an
/// inactive device has key 0 (never used: its context takes no slices).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Region {
    pub buf: LocalBuffer,
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

    /// The region holding `addr`.
    pub fn find(&self, addr: u64) -> Option<&Region> {
        self.regions
            .range(..=addr)
            .next_back()
            .map(|(_, r)| r)
            .filter(|r| addr < r.end())
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
            lkeys: vec![1, 2],
            rkeys: vec![3, 4],
        }
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
