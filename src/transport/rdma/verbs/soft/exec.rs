//! The fabric executor: one thread that carries out posted WRs in order per
//! QP, copies bytes, and delivers completions.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::fabric::Fabric;
use super::fault::take_drop;
use super::qp::QpShared;
use crate::transport::rdma::verbs::types::*;

/// Longest the executor sleeps without being woken.
const IDLE_WAIT: Duration = Duration::from_millis(200);

pub(crate) fn start(fabric: Weak<Fabric>) {
    let spawned = std::thread::Builder::new()
        .name("te-soft-rdma".into())
        .spawn(move || run(fabric));
    if let Err(e) = spawned {
        log::error!("soft RDMA fabric: cannot start the executor thread: {e}");
    }
}

fn run(weak: Weak<Fabric>) {
    // QPs whose head WR is stalled, with the instant to look at them again.
    let mut waiting: Vec<(Instant, Arc<QpShared>)> = Vec::new();
    loop {
        let Some(fabric) = weak.upgrade() else { return };
        let mut batch = {
            let mut runnable = fabric.runnable.lock();
            if runnable.is_empty() {
                let now = Instant::now();
                let next = waiting.iter().map(|(t, _)| *t).min();
                let wait = next.map_or(IDLE_WAIT, |t| {
                    t.saturating_duration_since(now).min(IDLE_WAIT)
                });
                if !wait.is_zero() {
                    fabric.wake.wait_for(&mut runnable, wait);
                }
            }
            std::mem::take(&mut *runnable)
        };
        let now = Instant::now();
        let (due, later): (Vec<_>, Vec<_>) = waiting.drain(..).partition(|(t, _)| *t <= now);
        waiting = later;
        batch.extend(due.into_iter().map(|(_, qp)| qp));
        batch.sort_by_key(|qp| qp.qpn);
        batch.dedup_by_key(|qp| qp.qpn);
        for qp in batch {
            // A QP already waiting is re-examined now (e.g. moved to ERR).
            waiting.retain(|(_, w)| w.qpn != qp.qpn);
            if let Some(at) = progress(&fabric, &qp) {
                waiting.push((at, qp));
            }
        }
    }
}

enum Outcome {
    Done(WcStatus),
    Lost(&'static str),
}

/// Work through `qp`'s send queue; `Some(t)` when its head is stalled
/// until `t`.
fn progress(fabric: &Fabric, qp: &Arc<QpShared>) -> Option<Instant> {
    loop {
        let (wr, generation, rtr) = {
            let mut core = qp.core.lock();
            match core.state {
                QpState::Err => {
                    core.stalled_until = None;
                    while let Some(wr) = core.sq.pop_front() {
                        qp.complete(&wr, WcStatus::WrFlushError);
                    }
                    return None;
                }
                QpState::Reset => return None,
                _ => {}
            }
            let wr = *core.sq.front()?;
            if let Some(t) = core.stalled_until {
                if Instant::now() < t {
                    return Some(t);
                }
                core.sq.pop_front();
                core.stalled_until = None;
                core.state = QpState::Err;
                log::warn!(
                    "soft QP {} on {}: wr_id {} retry exceeded, QP → err",
                    qp.qpn,
                    qp.device.name,
                    wr.wr_id
                );
                qp.complete(&wr, WcStatus::RetryExceeded);
                continue;
            }
            (wr, core.generation, core.rtr.clone())
        };
        let outcome = execute(fabric, qp, &wr, rtr.as_ref());
        let mut core = qp.core.lock();
        if core.generation != generation || core.sq.front() != Some(&wr) {
            continue;
        }
        match outcome {
            Outcome::Done(status) => {
                core.sq.pop_front();
                if status != WcStatus::Success {
                    log::warn!(
                        "soft QP {} on {}: wr_id {} {}, QP → err",
                        qp.qpn,
                        qp.device.name,
                        wr.wr_id,
                        status.as_str()
                    );
                    core.state = QpState::Err;
                }
                qp.complete(&wr, status);
            }
            Outcome::Lost(why) => {
                log::debug!(
                    "soft QP {} on {}: wr_id {} lost ({why})",
                    qp.qpn,
                    qp.device.name,
                    wr.wr_id
                );
                core.stalled_until = Some(Instant::now() + fabric.retry_timeout());
            }
        }
    }
}

/// Carry out one WR (no QP lock held).
fn execute(fabric: &Fabric, qp: &QpShared, wr: &WorkRequest, rtr: Option<&RtrAttrs>) -> Outcome {
    if !qp.device.is_up() {
        return Outcome::Lost("local port down");
    }
    if take_drop(&mut qp.device.faults.lock()) {
        return Outcome::Lost("dropped (injected)");
    }
    let Some(rtr) = rtr else {
        return Outcome::Lost("no path");
    };
    let Some(peer_dev) = fabric.device_by_gid(&rtr.dgid) else {
        return Outcome::Lost("no device has the destination GID");
    };
    if !peer_dev.is_up() {
        return Outcome::Lost("peer port down");
    }
    if peer_dev.id != qp.device.id && take_drop(&mut peer_dev.faults.lock()) {
        return Outcome::Lost("dropped at peer (injected)");
    }
    let Some(peer) = fabric
        .qp(rtr.dest_qp_num)
        .filter(|p| p.device.id == peer_dev.id)
    else {
        return Outcome::Lost("destination QP does not exist");
    };
    if !matches!(peer.core.lock().state, QpState::Rtr | QpState::Rts) {
        return Outcome::Lost("destination QP is not ready to receive");
    }
    if wr.length > (1u32 << 31) {
        return Outcome::Done(WcStatus::LocalLengthError);
    }
    let len = wr.length as u64;
    let mrs = fabric.mrs.read();
    let local_need = match wr.opcode {
        Opcode::Read => Access::LOCAL_WRITE,
        Opcode::Write => Access(0),
    };
    let local_ok = mrs.get(&wr.lkey).is_some_and(|m| {
        m.device_id == qp.device.id
            && m.contains(wr.local_addr, len)
            && m.access.contains(local_need)
    });
    if !local_ok {
        return Outcome::Done(WcStatus::LocalProtectionError);
    }
    let remote_need = match wr.opcode {
        Opcode::Read => Access::REMOTE_READ,
        Opcode::Write => Access::REMOTE_WRITE,
    };
    let remote_ok = mrs.get(&wr.rkey).is_some_and(|m| {
        m.device_id == peer_dev.id
            && m.contains(wr.remote_addr, len)
            && m.access.contains(remote_need)
    });
    if !remote_ok {
        return Outcome::Done(WcStatus::RemoteAccessError);
    }
    let (src, dst) = match wr.opcode {
        Opcode::Write => (wr.local_addr, wr.remote_addr),
        Opcode::Read => (wr.remote_addr, wr.local_addr),
    };
    if len > 0 {
        // SAFETY: both ranges lie inside regions registered through
        // `Pd::reg_mr`, whose contract keeps them allocated and writable by
        // the fabric until deregistered; `mrs` is read-locked, so neither can
        // be deregistered during the copy. `ptr::copy` allows overlap
        // (a QP looped back onto the same region).
        unsafe {
            std::ptr::copy(
                src as usize as *const u8,
                dst as usize as *mut u8,
                len as usize,
            );
        }
    }
    Outcome::Done(WcStatus::Success)
}
