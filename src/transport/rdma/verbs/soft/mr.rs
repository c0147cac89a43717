//! Soft memory regions: one fabric-unique key serves as lkey and rkey.

use super::fabric::fabric;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::verb_error;
use crate::transport::rdma::verbs::Mr;

pub(crate) struct SoftMr {
    pub key: u32,
    pub addr: u64,
    pub len: usize,
    pub released: bool,
}

impl SoftMr {
    fn release(&mut self) -> bool {
        if self.released {
            return true;
        }
        self.released = true;
        // The write lock waits for copies in flight that use this region.
        fabric().mrs.write().remove(&self.key).is_some()
    }
}

impl Mr for SoftMr {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn lkey(&self) -> u32 {
        self.key
    }
    fn rkey(&self) -> u32 {
        self.key
    }
    fn deregister(mut self: Box<Self>) -> Result<()> {
        if self.release() {
            Ok(())
        } else {
            Err(verb_error(
                "ibv_dereg_mr",
                "deregister",
                libc::EINVAL,
                &format!("key {:#x} is not registered", self.key),
            ))
        }
    }
}

impl Drop for SoftMr {
    fn drop(&mut self) {
        if !self.release() {
            log::warn!("ibv_dereg_mr: key {:#x} was already gone", self.key);
        }
    }
}
