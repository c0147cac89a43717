//! Completion queues (`ibv_create_cq`, `ibv_poll_cq`).

use std::any::Any;
use std::ptr::NonNull;
use std::sync::Arc;

use rdma_sys as ffi;

use super::context::ContextHandle;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::{last_errno, verb_error};
use crate::transport::rdma::verbs::types::{Opcode, WcStatus, WorkCompletion};
use crate::transport::rdma::verbs::Cq;

pub(super) struct CqHandle {
    pub cq: NonNull<ffi::ibv_cq>,
    pub ctx: Arc<ContextHandle>,
}

// SAFETY: ibv_poll_cq is thread-safe per CQ in rdma-core providers (they
// lock the CQ); the CQ is destroyed only in Drop.
unsafe impl Send for CqHandle {}
// SAFETY: see Send.
unsafe impl Sync for CqHandle {}

impl Drop for CqHandle {
    fn drop(&mut self) {
        self.ctx.forget_cq(self.cq.as_ptr());
        // SAFETY: created by ibv_create_cq; QPs using it hold an Arc to this
        // handle, so none is alive any more.
        let rc = unsafe { ffi::ibv_destroy_cq(self.cq.as_ptr()) };
        if rc != 0 {
            log::warn!("ibv_destroy_cq on {}: rc {rc}", self.ctx.name);
        }
    }
}

pub(super) struct IbvCq {
    pub handle: Arc<CqHandle>,
    capacity: usize,
}

impl IbvCq {
    pub fn create(ctx: Arc<ContextHandle>, depth: usize) -> Result<IbvCq> {
        let cqe = libc::c_int::try_from(depth).unwrap_or(libc::c_int::MAX);
        // SAFETY: open context; no completion channel, vector 0.
        let raw = unsafe {
            ffi::ibv_create_cq(
                ctx.ctx.as_ptr(),
                cqe,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                0,
            )
        };
        let cq = NonNull::new(raw).ok_or_else(|| {
            verb_error(
                "ibv_create_cq",
                "create",
                last_errno(),
                &format!("{} depth {depth}", ctx.name),
            )
        })?;
        // SAFETY: fresh CQ; `cqe` is the real capacity (≥ requested).
        let capacity = unsafe { (*cq.as_ptr()).cqe }.max(0) as usize;
        Ok(IbvCq {
            handle: Arc::new(CqHandle { cq, ctx }),
            capacity,
        })
    }
}

impl Cq for IbvCq {
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>> {
        let max = max.min(self.capacity.max(1)).min(i32::MAX as usize);
        let mut wcs: Vec<ffi::ibv_wc> = Vec::with_capacity(max);
        // SAFETY: the CQ is live and `wcs` has room for `max` entries.
        let n = unsafe { ffi::ibv_poll_cq(self.handle.cq.as_ptr(), max as i32, wcs.as_mut_ptr()) };
        if n < 0 {
            return Err(verb_error(
                "ibv_poll_cq",
                "poll",
                last_errno(),
                &self.handle.ctx.name,
            ));
        }
        // Completions that made it are delivered first; once drained, an
        // overflowed CQ (some were lost) is an error, as on the soft fabric.
        if n == 0 && self.handle.ctx.cq_overflowed(self.handle.cq.as_ptr()) {
            return Err(verb_error(
                "ibv_poll_cq",
                "poll",
                libc::EOVERFLOW,
                &format!(
                    "CQ on {} overflowed its {} entries (CQ_ERR): completions lost",
                    self.handle.ctx.name, self.capacity
                ),
            ));
        }
        // SAFETY: ibv_poll_cq initialised the first `n` (≤ max) entries;
        // ibv_wc has no drop glue.
        unsafe { wcs.set_len(n as usize) };
        Ok(wcs
            .iter()
            .map(|wc| WorkCompletion {
                wr_id: wc.wr_id,
                status: WcStatus::from_ibv(wc.status),
                opcode: if wc.opcode == ffi::ibv_wc_opcode::IBV_WC_RDMA_READ {
                    Opcode::Read
                } else {
                    Opcode::Write
                },
                byte_len: wc.byte_len,
                qp_num: wc.qp_num,
                vendor_err: wc.vendor_err,
            })
            .collect())
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
