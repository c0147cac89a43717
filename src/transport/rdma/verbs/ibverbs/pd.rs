//! Protection domains (`ibv_alloc_pd`): memory regions and QPs live on one.

use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::context::ContextHandle;
use super::cq::IbvCq;
use super::mr::IbvMr;
use super::qp::IbvQp;
use crate::error::{Error, Result};
use crate::transport::rdma::verbs::errno::{last_errno, verb_error};
use crate::transport::rdma::verbs::types::{Access, QpCaps};
use crate::transport::rdma::verbs::{Cq, Mr, Pd, Qp};

pub(super) struct PdHandle {
    pub pd: NonNull<ffi::ibv_pd>,
    pub ctx: Arc<ContextHandle>,
}

// SAFETY: PD verbs (reg_mr, create_qp, dealloc) are thread-safe in
// libibverbs; the PD is deallocated only in Drop.
unsafe impl Send for PdHandle {}
// SAFETY: see Send.
unsafe impl Sync for PdHandle {}

impl Drop for PdHandle {
    fn drop(&mut self) {
        // SAFETY: allocated by ibv_alloc_pd; MRs and QPs hold an Arc to this
        // handle, so none is alive any more.
        let rc = unsafe { ffi::ibv_dealloc_pd(self.pd.as_ptr()) };
        if rc != 0 {
            log::warn!("ibv_dealloc_pd on {}: rc {rc}", self.ctx.name);
        }
    }
}

pub(super) struct IbvPd {
    handle: Arc<PdHandle>,
}

impl IbvPd {
    pub fn alloc(ctx: Arc<ContextHandle>) -> Result<IbvPd> {
        // SAFETY: `ctx` is an open context.
        let raw = unsafe { ffi::ibv_alloc_pd(ctx.ctx.as_ptr()) };
        let pd = NonNull::new(raw)
            .ok_or_else(|| verb_error("ibv_alloc_pd", "open", last_errno(), &ctx.name))?;
        Ok(IbvPd {
            handle: Arc::new(PdHandle { pd, ctx }),
        })
    }
}

impl Pd for IbvPd {
    unsafe fn reg_mr(&self, addr: u64, len: usize, access: Access) -> Result<Box<dyn Mr>> {
        Ok(Box::new(IbvMr::register(
            self.handle.clone(),
            addr,
            len,
            access,
        )?))
    }

    fn create_qp(&self, cq: &Arc<dyn Cq>, caps: &QpCaps) -> Result<Arc<dyn Qp>> {
        let Some(ib_cq) = cq.as_any().downcast_ref::<IbvCq>() else {
            return Err(Error::InvalidArgument(
                "ibv_create_qp: create: the CQ does not belong to the ibverbs provider".into(),
            ));
        };
        Ok(Arc::new(IbvQp::create(
            self.handle.clone(),
            ib_cq.handle.clone(),
            caps,
        )?))
    }
}
