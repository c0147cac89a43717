//! Memory regions (`ibv_reg_mr`), deregistered on drop.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::pd::PdHandle;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::{last_errno, verb_error};
use crate::transport::rdma::verbs::types::Access;
use crate::transport::rdma::verbs::Mr;

pub(super) struct IbvMr {
    mr: Option<NonNull<ffi::ibv_mr>>,
    _pd: Arc<PdHandle>,
    addr: u64,
    len: usize,
    lkey: u32,
    rkey: u32,
}

// SAFETY: the MR is only read (keys copied at registration) and
// deregistered once; libibverbs allows that from any thread.
unsafe impl Send for IbvMr {}
// SAFETY: shared references only read copied fields.
unsafe impl Sync for IbvMr {}

impl IbvMr {
    /// # Safety
    /// As `Pd::reg_mr`: the range stays allocated while registered.
    pub unsafe fn register(
        pd: Arc<PdHandle>,
        addr: u64,
        len: usize,
        access: Access,
    ) -> Result<IbvMr> {
        // SAFETY: the PD is live; the caller guarantees the range (the NIC
        // pins it). `ibv_reg_mr_iova2` (iova = addr, as ibv_reg_mr) drops
        // optional bits such as RELAXED_ORDERING where the kernel lacks them.
        let raw = unsafe {
            ffi::ibv_reg_mr_iova2(
                pd.pd.as_ptr(),
                addr as usize as *mut libc::c_void,
                len,
                addr,
                access.0 as libc::c_uint,
            )
        };
        let mr = NonNull::new(raw).ok_or_else(|| {
            verb_error(
                "ibv_reg_mr",
                "register",
                last_errno(),
                &format!(
                    "{} addr {addr:#x} len {len} access {:#x}",
                    pd.ctx.name, access.0
                ),
            )
        })?;
        // SAFETY: a freshly registered MR; reading its key fields.
        let (lkey, rkey) = unsafe { ((*mr.as_ptr()).lkey, (*mr.as_ptr()).rkey) };
        Ok(IbvMr {
            mr: Some(mr),
            _pd: pd,
            addr,
            len,
            lkey,
            rkey,
        })
    }

    fn release(&mut self) -> Result<()> {
        let Some(mr) = self.mr.take() else {
            return Ok(());
        };
        // SAFETY: registered by ibv_reg_mr and deregistered exactly once.
        let rc = unsafe { ffi::ibv_dereg_mr(mr.as_ptr()) };
        if rc != 0 {
            return Err(verb_error(
                "ibv_dereg_mr",
                "deregister",
                rc,
                &format!("addr {:#x} len {}", self.addr, self.len),
            ));
        }
        Ok(())
    }
}

impl Mr for IbvMr {
    fn addr(&self) -> u64 {
        self.addr
    }
    fn len(&self) -> usize {
        self.len
    }
    fn lkey(&self) -> u32 {
        self.lkey
    }
    fn rkey(&self) -> u32 {
        self.rkey
    }
    fn deregister(mut self: Box<Self>) -> Result<()> {
        self.release()
    }
}

impl Drop for IbvMr {
    fn drop(&mut self) {
        if let Err(e) = self.release() {
            log::warn!("{e}");
        }
    }
}
