//! RC queue pairs (`ibv_create_qp`, `ibv_modify_qp`, `ibv_post_send`).

use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::Mutex;
use rdma_sys as ffi;

use super::cq::CqHandle;
use super::pd::PdHandle;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::{last_errno, qp_error};
use crate::transport::rdma::verbs::types::*;
use crate::transport::rdma::verbs::Qp;

pub(super) struct IbvQp {
    qp: NonNull<ffi::ibv_qp>,
    pd: Arc<PdHandle>,
    _cq: Arc<CqHandle>,
    qpn: u32,
    caps: QpCaps,
    state: Mutex<QpState>,
}

// SAFETY: ibv_modify_qp/ibv_post_send are thread-safe in rdma-core
// providers (QP-level locks); our own state is behind a Mutex, which also
// serialises modify calls. The QP is destroyed only in Drop.
unsafe impl Send for IbvQp {}
// SAFETY: see Send.
unsafe impl Sync for IbvQp {}

impl IbvQp {
    pub fn create(pd: Arc<PdHandle>, cq: Arc<CqHandle>, caps: &QpCaps) -> Result<IbvQp> {
        // SAFETY: plain C struct; all-zero is a valid start.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        init.send_cq = cq.cq.as_ptr();
        init.recv_cq = cq.cq.as_ptr();
        init.cap = ffi::ibv_qp_cap {
            max_send_wr: caps.max_send_wr,
            max_recv_wr: caps.max_recv_wr,
            max_send_sge: caps.max_send_sge,
            max_recv_sge: caps.max_recv_sge,
            max_inline_data: caps.max_inline_data,
        };
        init.qp_type = ffi::ibv_qp_type::IBV_QPT_RC;
        init.sq_sig_all = 0;
        // SAFETY: live PD and CQ; `init` is fully initialised.
        let raw = unsafe { ffi::ibv_create_qp(pd.pd.as_ptr(), &mut init) };
        let qp = NonNull::new(raw).ok_or_else(|| {
            qp_error(
                "ibv_create_qp",
                "create",
                last_errno(),
                &format!(
                    "{} max_send_wr {} max_sge {}",
                    pd.ctx.name, caps.max_send_wr, caps.max_send_sge
                ),
            )
        })?;
        // SAFETY: fresh QP; reading a plain field.
        let qpn = unsafe { (*qp.as_ptr()).qp_num };
        Ok(IbvQp {
            qp,
            pd,
            _cq: cq,
            qpn,
            caps: *caps,
            state: Mutex::new(QpState::Reset),
        })
    }

    /// Run `ibv_modify_qp` to `to` with `attr`/`mask`, enforcing our view of
    /// the state machine first so the error names the real problem.
    fn modify(
        &self,
        to: QpState,
        attr: &mut ffi::ibv_qp_attr,
        mask: ffi::ibv_qp_attr_mask,
        detail: &str,
    ) -> Result<()> {
        let mut state = self.state.lock();
        // The kernel's state, not our last transition: a failed WR moves
        // the QP to ERR on its own.
        let from = self.query_state().unwrap_or(*state);
        let step = format!("{from}→{to}");
        if !from.can_move_to(to) {
            return Err(qp_error(
                "ibv_modify_qp",
                &step,
                libc::EINVAL,
                &format!("QP {} on {} is in state {from}", self.qpn, self.pd.ctx.name),
            ));
        }
        // SAFETY: live QP; `attr` is initialised for every bit in `mask`.
        let rc = unsafe { ffi::ibv_modify_qp(self.qp.as_ptr(), attr, mask.0 as libc::c_int) };
        if rc != 0 {
            let errno = if rc > 0 { rc } else { last_errno() };
            let detail = if detail.is_empty() {
                format!("QP {} on {}", self.qpn, self.pd.ctx.name)
            } else {
                format!("QP {} on {}, {detail}", self.qpn, self.pd.ctx.name)
            };
            return Err(qp_error("ibv_modify_qp", &step, errno, &detail));
        }
        *state = to;
        Ok(())
    }

    /// The state the device reports (`ibv_query_qp`); `None` if the query
    /// fails.
    fn query_state(&self) -> Option<QpState> {
        use ffi::ibv_qp_state as S;
        let mut attr = Self::zeroed_attr(S::IBV_QPS_RESET);
        // SAFETY: plain C struct; all-zero is valid.
        let mut init: ffi::ibv_qp_init_attr = unsafe { std::mem::zeroed() };
        // SAFETY: live QP; both out-parameters are valid for writes.
        let rc = unsafe {
            ffi::ibv_query_qp(
                self.qp.as_ptr(),
                &mut attr,
                ffi::ibv_qp_attr_mask::IBV_QP_STATE.0 as libc::c_int,
                &mut init,
            )
        };
        if rc != 0 {
            log::debug!("ibv_query_qp QP {}: rc {rc}", self.qpn);
            return None;
        }
        Some(match attr.qp_state {
            S::IBV_QPS_RESET => QpState::Reset,
            S::IBV_QPS_INIT => QpState::Init,
            S::IBV_QPS_RTR => QpState::Rtr,
            S::IBV_QPS_RTS => QpState::Rts,
            // ERR, SQE, and SQD (never requested here): not usable to send.
            _ => QpState::Err,
        })
    }

    fn zeroed_attr(state: ffi::ibv_qp_state::Type) -> ffi::ibv_qp_attr {
        // SAFETY: plain C struct; all-zero is valid.
        let mut attr: ffi::ibv_qp_attr = unsafe { std::mem::zeroed() };
        attr.qp_state = state;
        attr
    }
}

impl Qp for IbvQp {
    fn qp_num(&self) -> u32 {
        self.qpn
    }

    fn state(&self) -> QpState {
        let mut cached = self.state.lock();
        if let Some(now) = self.query_state() {
            *cached = now;
        }
        *cached
    }

    fn caps(&self) -> QpCaps {
        self.caps
    }

    fn modify_to_init(&self, attrs: &InitAttrs) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let mut attr = Self::zeroed_attr(ffi::ibv_qp_state::IBV_QPS_INIT);
        attr.port_num = attrs.port;
        attr.pkey_index = attrs.pkey_index;
        attr.qp_access_flags = attrs.access.0;
        let mask = M::IBV_QP_STATE | M::IBV_QP_PKEY_INDEX | M::IBV_QP_PORT | M::IBV_QP_ACCESS_FLAGS;
        self.modify(
            QpState::Init,
            &mut attr,
            mask,
            &format!("port {}", attrs.port),
        )
    }

    fn modify_to_rtr(&self, attrs: &RtrAttrs) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let detail = format!(
            "local GID {}, peer GID {}, peer QP {}, peer LID {}, MTU {}, sgid_index {}",
            gid_to_string(&self.pd.ctx.gid),
            gid_to_string(&attrs.dgid),
            attrs.dest_qp_num,
            attrs.dlid,
            attrs.path_mtu,
            attrs.sgid_index
        );
        let Some(mtu) = mtu_from_bytes(attrs.path_mtu) else {
            return Err(qp_error("ibv_modify_qp", "init→rtr", libc::EINVAL, &detail));
        };
        let mut attr = Self::zeroed_attr(ffi::ibv_qp_state::IBV_QPS_RTR);
        attr.path_mtu = mtu;
        attr.dest_qp_num = attrs.dest_qp_num;
        attr.rq_psn = attrs.rq_psn;
        attr.max_dest_rd_atomic = attrs.max_dest_rd_atomic;
        attr.min_rnr_timer = attrs.min_rnr_timer;
        attr.ah_attr.is_global = 1;
        attr.ah_attr.grh.dgid = ffi::ibv_gid { raw: attrs.dgid };
        attr.ah_attr.grh.sgid_index = attrs.sgid_index;
        attr.ah_attr.grh.hop_limit = attrs.hop_limit;
        attr.ah_attr.grh.traffic_class = attrs.traffic_class;
        attr.ah_attr.dlid = attrs.dlid;
        attr.ah_attr.sl = attrs.sl;
        attr.ah_attr.src_path_bits = 0;
        attr.ah_attr.static_rate = 0;
        attr.ah_attr.port_num = attrs.port;
        let mask = M::IBV_QP_STATE
            | M::IBV_QP_AV
            | M::IBV_QP_PATH_MTU
            | M::IBV_QP_DEST_QPN
            | M::IBV_QP_RQ_PSN
            | M::IBV_QP_MAX_DEST_RD_ATOMIC
            | M::IBV_QP_MIN_RNR_TIMER;
        self.modify(QpState::Rtr, &mut attr, mask, &detail)
    }

    fn modify_to_rts(&self, attrs: &RtsAttrs) -> Result<()> {
        use ffi::ibv_qp_attr_mask as M;
        let mut attr = Self::zeroed_attr(ffi::ibv_qp_state::IBV_QPS_RTS);
        attr.timeout = attrs.timeout;
        attr.retry_cnt = attrs.retry_cnt;
        attr.rnr_retry = attrs.rnr_retry;
        attr.sq_psn = attrs.sq_psn;
        attr.max_rd_atomic = attrs.max_rd_atomic;
        let mask = M::IBV_QP_STATE
            | M::IBV_QP_TIMEOUT
            | M::IBV_QP_RETRY_CNT
            | M::IBV_QP_RNR_RETRY
            | M::IBV_QP_SQ_PSN
            | M::IBV_QP_MAX_QP_RD_ATOMIC;
        self.modify(QpState::Rts, &mut attr, mask, "")
    }

    fn modify_to_err(&self) -> Result<()> {
        let mut attr = Self::zeroed_attr(ffi::ibv_qp_state::IBV_QPS_ERR);
        self.modify(
            QpState::Err,
            &mut attr,
            ffi::ibv_qp_attr_mask::IBV_QP_STATE,
            "",
        )
    }

    fn reset(&self) -> Result<()> {
        let mut attr = Self::zeroed_attr(ffi::ibv_qp_state::IBV_QPS_RESET);
        self.modify(
            QpState::Reset,
            &mut attr,
            ffi::ibv_qp_attr_mask::IBV_QP_STATE,
            "",
        )
    }

    fn post_send(&self, wrs: &[WorkRequest]) -> std::result::Result<(), PostSendError> {
        if wrs.is_empty() {
            return Ok(());
        }
        // Refuse before the verb: rxe fails the doorbell of a QP not yet in
        // RTS with EINVAL but keeps the WRs queued, and they complete later
        // (flushed) although reported as not posted. Posting in ERR is
        // accepted: the WRs flush, as the trait says.
        let state = *self.state.lock();
        if matches!(state, QpState::Reset | QpState::Init | QpState::Rtr) {
            return Err(PostSendError {
                posted: 0,
                errno: libc::EINVAL,
                error: qp_error(
                    "ibv_post_send",
                    "post",
                    libc::EINVAL,
                    &format!(
                        "QP {} on {} is in state {state}, not rts",
                        self.qpn, self.pd.ctx.name
                    ),
                ),
            });
        }
        let mut done = 0;
        for chunk in wrs.chunks(POST_CHUNK) {
            if let Err(mut e) = self.post_chain(chunk) {
                e.posted += done;
                return Err(e);
            }
            done += chunk.len();
        }
        Ok(())
    }
}

/// WRs linked into one `ibv_post_send` chain (stack arrays, no allocation
/// per post).
const POST_CHUNK: usize = 32;

impl IbvQp {
    /// Post at most `POST_CHUNK` WRs as one chain.
    fn post_chain(&self, wrs: &[WorkRequest]) -> std::result::Result<(), PostSendError> {
        debug_assert!(wrs.len() <= POST_CHUNK);
        // SAFETY: plain C structs of integers, raw pointers and unions of
        // those; all-zero is valid.
        let mut sges: [ffi::ibv_sge; POST_CHUNK] = unsafe { std::mem::zeroed() };
        // SAFETY: as above.
        let mut list: [ffi::ibv_send_wr; POST_CHUNK] = unsafe { std::mem::zeroed() };
        let base = list.as_mut_ptr();
        for (i, w) in wrs.iter().enumerate() {
            sges[i] = ffi::ibv_sge {
                addr: w.local_addr,
                length: w.length,
                lkey: w.lkey,
            };
            let wr = &mut list[i];
            wr.wr_id = w.wr_id;
            // A zero-length WR (a READ's confirmation) carries no SGE.
            wr.num_sge = i32::from(w.length > 0);
            wr.opcode = match w.opcode {
                Opcode::Read => ffi::ibv_wr_opcode::IBV_WR_RDMA_READ,
                Opcode::Write => ffi::ibv_wr_opcode::IBV_WR_RDMA_WRITE,
            };
            wr.send_flags = if w.signaled {
                ffi::ibv_send_flags::IBV_SEND_SIGNALED.0
            } else {
                0
            };
            wr.wr.rdma = ffi::rdma_t {
                remote_addr: w.remote_addr,
                rkey: w.rkey,
            };
            wr.sg_list = &mut sges[i];
            wr.next = if i + 1 < wrs.len() {
                // SAFETY: i + 1 < len ≤ POST_CHUNK: in bounds of `list`.
                unsafe { base.add(i + 1) }
            } else {
                std::ptr::null_mut()
            };
        }
        let mut bad: *mut ffi::ibv_send_wr = std::ptr::null_mut();
        // SAFETY: live QP; `list` starts a NULL-terminated chain of
        // initialised WRs whose SGEs point into `sges`; both arrays live on
        // this stack frame across the call.
        let rc = unsafe { ffi::ibv_post_send(self.qp.as_ptr(), base, &mut bad) };
        if rc == 0 {
            return Ok(());
        }
        let errno = if rc > 0 { rc } else { last_errno() };
        let posted = if bad.is_null() {
            0
        } else {
            // SAFETY: libibverbs sets `bad` to an element of our chain.
            let off = unsafe { bad.offset_from(list.as_ptr()) };
            usize::try_from(off).unwrap_or(0).min(wrs.len())
        };
        Err(PostSendError {
            posted,
            errno,
            error: qp_error(
                "ibv_post_send",
                "post",
                errno,
                &format!(
                    "QP {} on {}, WR {posted} of {}",
                    self.qpn,
                    self.pd.ctx.name,
                    wrs.len()
                ),
            ),
        })
    }
}

impl Drop for IbvQp {
    fn drop(&mut self) {
        // SAFETY: created by ibv_create_qp and destroyed once; the PD and CQ
        // it uses are kept alive by our Arcs until after this call.
        let rc = unsafe { ffi::ibv_destroy_qp(self.qp.as_ptr()) };
        if rc != 0 {
            log::warn!(
                "ibv_destroy_qp {} on {}: rc {rc}",
                self.qpn,
                self.pd.ctx.name
            );
        }
    }
}
