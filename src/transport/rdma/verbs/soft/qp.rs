//! Soft RC queue pairs: the state machine and the send queue the executor
//! drains.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::Mutex;

use super::cq::CqShared;
use super::device::{SoftDevice, SOFT_MTU};
use super::fabric::fabric;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::qp_error;
use crate::transport::rdma::verbs::types::*;
use crate::transport::rdma::verbs::Qp;

/// The head WR was lost (no ACK came back) and waits for its next
/// transmission, as a requester's retransmit timer does.
pub(crate) struct Retransmit {
    /// When the local ACK timer fires; `None`: never (timeout attribute 0).
    pub due: Option<Instant>,
    /// Retransmissions left (from `retry_cnt`); at 0 the next timer expiry
    /// completes the WR `RetryExceeded`.
    pub left: u8,
    /// Linux rxe never counts down a `retry_cnt` of 7 (see
    /// `fault::emulate_rxe_retry7`).
    pub forever: bool,
    pub transmissions: u32,
    /// Why the last transmission was lost.
    pub why: String,
}

pub(crate) struct QpCore {
    pub state: QpState,
    pub rtr: Option<RtrAttrs>,
    /// Set by the RTS transition: `timeout` and `retry_cnt` drive
    /// retransmission.
    pub rts: Option<RtsAttrs>,
    pub sq: VecDeque<WorkRequest>,
    pub retransmit: Option<Retransmit>,
    /// Bumped by reset/destroy so the executor drops results for WRs that
    /// were discarded while it worked on them.
    pub generation: u64,
}

pub(crate) struct QpShared {
    pub qpn: u32,
    pub device: Arc<SoftDevice>,
    pub cq: Arc<CqShared>,
    pub caps: QpCaps,
    /// WRs posted and not yet polled from the CQ (or discarded).
    pub outstanding: Arc<AtomicUsize>,
    pub core: Mutex<QpCore>,
}

impl QpShared {
    /// Deliver the completion of `wr` (errors are always delivered,
    /// successes only when signaled).
    pub fn complete(&self, wr: &WorkRequest, status: WcStatus) {
        if status == WcStatus::Success && !wr.signaled {
            self.outstanding.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        let wc = WorkCompletion {
            wr_id: wr.wr_id,
            status,
            opcode: wr.opcode,
            byte_len: if status == WcStatus::Success {
                wr.length
            } else {
                0
            },
            qp_num: self.qpn,
            vendor_err: 0,
        };
        self.cq.push(wc, &self.outstanding);
    }

    /// Drop queued WRs without completions (reset/destroy).
    fn discard_queue(&self, core: &mut QpCore) {
        let n = core.sq.len();
        core.sq.clear();
        core.retransmit = None;
        core.generation += 1;
        self.outstanding.fetch_sub(n, Ordering::AcqRel);
    }
}

pub(crate) struct SoftQp {
    shared: Arc<QpShared>,
}

impl SoftQp {
    pub fn create(device: Arc<SoftDevice>, cq: Arc<CqShared>, caps: QpCaps) -> SoftQp {
        let fabric = fabric();
        let qpn = fabric.alloc_qpn();
        let outstanding = Arc::new(AtomicUsize::new(0));
        cq.attach(qpn, outstanding.clone());
        let shared = Arc::new(QpShared {
            qpn,
            device,
            cq,
            caps,
            outstanding,
            core: Mutex::new(QpCore {
                state: QpState::Reset,
                rtr: None,
                rts: None,
                sq: VecDeque::new(),
                retransmit: None,
                generation: 0,
            }),
        });
        fabric.qps.lock().insert(qpn, Arc::downgrade(&shared));
        SoftQp { shared }
    }

    fn step(from: QpState, to: QpState) -> String {
        format!("{from}→{to}")
    }

    /// Apply the injected faults of this QP's device (and of the fabric) to a
    /// transition to `to`: a one-shot errno, or a delay.
    fn injected(&self, to: QpState) -> Result<()> {
        let fabric = fabric();
        let (errno, delay) = {
            let mut dev = self.shared.device.faults.lock();
            let mut all = fabric.all_faults.lock();
            let errno = dev
                .fail_next_modify
                .take()
                .or_else(|| all.fail_next_modify.take());
            let delay = match to {
                QpState::Rtr => dev.rtr_delay.or(all.rtr_delay),
                QpState::Rts => dev.rts_delay.or(all.rts_delay),
                _ => None,
            };
            (errno, delay)
        };
        if let Some(errno) = errno {
            let from = self.state();
            return Err(qp_error(
                "ibv_modify_qp",
                &Self::step(from, to),
                errno,
                &format!(
                    "QP {} on {}: injected fault",
                    self.shared.qpn, self.shared.device.name
                ),
            ));
        }
        if let Some(d) = delay {
            log::debug!(
                "soft QP {}: delaying transition to {to} by {d:?} (injected)",
                self.shared.qpn
            );
            std::thread::sleep(d);
        }
        Ok(())
    }

    /// Move to `to` if the state machine allows it; `apply` runs under the
    /// lock after the check.
    fn transition(&self, to: QpState, detail: &str, apply: impl FnOnce(&mut QpCore)) -> Result<()> {
        self.injected(to)?;
        let mut core = self.shared.core.lock();
        let from = core.state;
        if !from.can_move_to(to) {
            return Err(qp_error(
                "ibv_modify_qp",
                &Self::step(from, to),
                libc::EINVAL,
                &format!(
                    "QP {} on {} is in state {from}{}",
                    self.shared.qpn,
                    self.shared.device.name,
                    if detail.is_empty() {
                        String::new()
                    } else {
                        format!(", {detail}")
                    }
                ),
            ));
        }
        apply(&mut core);
        core.state = to;
        Ok(())
    }
}

impl Qp for SoftQp {
    fn qp_num(&self) -> u32 {
        self.shared.qpn
    }

    fn state(&self) -> QpState {
        self.shared.core.lock().state
    }

    fn caps(&self) -> QpCaps {
        self.shared.caps
    }

    fn modify_to_init(&self, attrs: &InitAttrs) -> Result<()> {
        if attrs.port != 1 {
            return Err(qp_error(
                "ibv_modify_qp",
                "reset→init",
                libc::EINVAL,
                &format!(
                    "port {} does not exist on {}",
                    attrs.port, self.shared.device.name
                ),
            ));
        }
        self.transition(QpState::Init, "", |_| {})
    }

    fn modify_to_rtr(&self, attrs: &RtrAttrs) -> Result<()> {
        let detail = format!(
            "local GID {}, peer GID {}, peer QP {}, MTU {}",
            gid_to_string(&self.shared.device.gids[1].gid),
            gid_to_string(&attrs.dgid),
            attrs.dest_qp_num,
            attrs.path_mtu
        );
        if mtu_from_bytes(attrs.path_mtu).is_none() || attrs.path_mtu > SOFT_MTU {
            return Err(qp_error("ibv_modify_qp", "init→rtr", libc::EINVAL, &detail));
        }
        if attrs.sgid_index as usize >= self.shared.device.gids.len() {
            return Err(qp_error("ibv_modify_qp", "init→rtr", libc::EINVAL, &detail));
        }
        let attrs = attrs.clone();
        self.transition(QpState::Rtr, &detail, move |core| core.rtr = Some(attrs))
    }

    fn modify_to_rts(&self, attrs: &RtsAttrs) -> Result<()> {
        // 5-bit and 3-bit fields on the wire (IB spec 9.7.6.1, 11.2.4.2).
        if attrs.timeout > 31 || attrs.retry_cnt > 7 || attrs.rnr_retry > 7 {
            return Err(qp_error(
                "ibv_modify_qp",
                "rtr→rts",
                libc::EINVAL,
                &format!(
                    "QP {}: timeout {} (max 31), retry_cnt {} (max 7), rnr_retry {} (max 7)",
                    self.shared.qpn, attrs.timeout, attrs.retry_cnt, attrs.rnr_retry
                ),
            ));
        }
        let attrs = attrs.clone();
        self.transition(QpState::Rts, "", move |core| core.rts = Some(attrs))
    }

    fn modify_to_err(&self) -> Result<()> {
        self.transition(QpState::Err, "", |_| {})?;
        // Queued WRs complete with WrFlushError.
        fabric().schedule(self.shared.clone());
        Ok(())
    }

    fn reset(&self) -> Result<()> {
        let shared = &self.shared;
        self.transition(QpState::Reset, "", |core| {
            shared.discard_queue(core);
            core.rtr = None;
            core.rts = None;
        })
    }

    fn post_send(&self, wrs: &[WorkRequest]) -> std::result::Result<(), PostSendError> {
        let shared = &self.shared;
        let mut failure = None;
        let posted;
        {
            let mut core = shared.core.lock();
            // Posting to an ERR QP is accepted and flushed, as on hardware.
            if !matches!(core.state, QpState::Rts | QpState::Err) {
                return Err(PostSendError {
                    posted: 0,
                    errno: libc::EINVAL,
                    error: qp_error(
                        "ibv_post_send",
                        "post",
                        libc::EINVAL,
                        &format!(
                            "QP {} on {} is in state {}, not rts",
                            shared.qpn, shared.device.name, core.state
                        ),
                    ),
                });
            }
            // The room is read once: completions only add to it meanwhile.
            let used = shared.outstanding.load(Ordering::Acquire);
            let room = (shared.caps.max_send_wr as usize).saturating_sub(used);
            posted = wrs.len().min(room);
            if posted < wrs.len() {
                failure = Some(PostSendError {
                    posted,
                    errno: libc::ENOMEM,
                    error: qp_error(
                        "ibv_post_send",
                        "post",
                        libc::ENOMEM,
                        &format!(
                            "QP {} send queue full: {} outstanding of max_send_wr {}",
                            shared.qpn,
                            used + posted,
                            shared.caps.max_send_wr
                        ),
                    ),
                });
            }
            shared.outstanding.fetch_add(posted, Ordering::AcqRel);
            core.sq.extend(wrs[..posted].iter().copied());
        }
        if posted > 0 {
            fabric().schedule(shared.clone());
        }
        match failure {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }
}

impl Drop for SoftQp {
    fn drop(&mut self) {
        // ibv_destroy_qp: the QP number disappears and queued WRs vanish.
        fabric().qps.lock().remove(&self.shared.qpn);
        self.shared.cq.detach(self.shared.qpn);
        let mut core = self.shared.core.lock();
        self.shared.discard_queue(&mut core);
        core.state = QpState::Reset;
    }
}
