//! The regions the owner registered, in registration order (the order
//! descriptors list them in), with Mooncake's overlap rules.

use crate::error::{Error, Result};
use crate::transport::LocalBuffer;

#[derive(Default)]
pub struct MemoryRegistry {
    buffers: Vec<LocalBuffer>,
}

fn overlaps(a: u64, alen: u64, b: u64, blen: u64) -> bool {
    a < b.saturating_add(blen) && b < a.saturating_add(alen)
}

impl MemoryRegistry {
    pub fn buffers(&self) -> &[LocalBuffer] {
        &self.buffers
    }

    /// Check that `bufs` are valid, disjoint among themselves and from what
    /// is registered. Nothing is recorded.
    pub fn check_new(&self, bufs: &[LocalBuffer]) -> Result<()> {
        for (i, b) in bufs.iter().enumerate() {
            if b.length == 0 {
                return Err(Error::InvalidArgument(format!(
                    "zero-length region at {:#x}",
                    b.addr
                )));
            }
            if b.addr == 0 {
                return Err(Error::InvalidArgument("NULL region address".into()));
            }
            if b.addr.checked_add(b.length).is_none() {
                return Err(Error::InvalidArgument(format!(
                    "region {:#x}+{} wraps the address space",
                    b.addr, b.length
                )));
            }
            let clash = self
                .buffers
                .iter()
                .chain(bufs[..i].iter())
                .find(|o| overlaps(b.addr, b.length, o.addr, o.length));
            if let Some(o) = clash {
                return Err(Error::AddressOverlapped(format!(
                    "[{:#x}, +{}) overlaps registered [{:#x}, +{})",
                    b.addr, b.length, o.addr, o.length
                )));
            }
        }
        Ok(())
    }

    pub fn add(&mut self, buf: LocalBuffer) {
        self.buffers.push(buf);
    }

    pub fn find(&self, addr: u64) -> Option<&LocalBuffer> {
        self.buffers.iter().find(|b| b.addr == addr)
    }

    /// Remove the region that starts at `addr`.
    pub fn remove(&mut self, addr: u64) -> Result<LocalBuffer> {
        match self.buffers.iter().position(|b| b.addr == addr) {
            Some(i) => Ok(self.buffers.remove(i)),
            None => Err(Error::AddressNotRegistered(format!(
                "{addr:#x} is not the start of a registered region"
            ))),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn buf(addr: u64, length: u64) -> LocalBuffer {
        LocalBuffer {
            addr,
            length,
            location: "cpu:0".into(),
            remote_accessible: true,
        }
    }

    #[test]
    fn overlap_rules() {
        let mut r = MemoryRegistry::default();
        r.check_new(&[buf(0x1000, 0x1000)]).unwrap();
        r.add(buf(0x1000, 0x1000));
        assert!(matches!(
            r.check_new(&[buf(0x1800, 0x10)]),
            Err(Error::AddressOverlapped(_))
        ));
        assert!(matches!(
            r.check_new(&[buf(0x0800, 0x900)]),
            Err(Error::AddressOverlapped(_))
        ));
        r.check_new(&[buf(0x2000, 0x10)]).unwrap(); // adjacent is fine
        r.check_new(&[buf(0x0, 0x10)]).unwrap_err();
        assert!(matches!(
            r.check_new(&[buf(0x5000, 0)]),
            Err(Error::InvalidArgument(_))
        ));
        assert!(matches!(
            r.check_new(&[buf(0x5000, 0x100), buf(0x50f0, 0x100)]),
            Err(Error::AddressOverlapped(_))
        ));
        assert!(matches!(
            r.remove(0x1800),
            Err(Error::AddressNotRegistered(_))
        ));
        assert_eq!(r.remove(0x1000).unwrap().length, 0x1000);
        assert!(r.buffers().is_empty());
    }
}
