//! The fabric executor: one thread that carries out posted WRs in order per
//! QP, copies bytes, and delivers completions. A lost WR is retransmitted
//! when its QP's local ACK timer fires (4.096 µs × 2^`timeout`), at most
//! `retry_cnt` times, then completes `RetryExceeded` and moves its QP to ERR;
//! later WRs of the QP wait behind it, as on an RC connection. A QP waiting
//! for its timer costs nothing until then (the executor sleeps until the
//! earliest timer or a new post, after polling for `SPIN` past its last
//! work, as a NIC would never sleep).

use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use super::fabric::Fabric;
use super::path;
use super::qp::{QpShared, Retransmit};
use crate::transport::rdma::verbs::types::*;

/// Longest the executor sleeps without being woken.
const IDLE_WAIT: Duration = Duration::from_millis(200);

/// After work, poll for more this long before sleeping (a NIC does not
/// sleep: a post right after a completion should not pay a wake-up).
const SPIN: Duration = Duration::from_micros(50);

pub(crate) fn start(fabric: Weak<Fabric>) {
    let spawned = crate::threads::spawn_process_wide("te-soft-rdma", move || run(fabric));
    if let Err(e) = spawned {
        log::error!("soft RDMA fabric: cannot start the executor thread: {e}");
    }
}

fn run(weak: Weak<Fabric>) {
    // QPs whose head WR is stalled, with the instant to look at them again.
    let mut waiting: Vec<(Instant, Arc<QpShared>)> = Vec::new();
    let mut last_work = Instant::now();
    loop {
        let Some(fabric) = weak.upgrade() else { return };
        let mut batch = {
            let mut runnable = fabric.runnable.lock();
            if runnable.is_empty() && last_work.elapsed() < SPIN {
                // Spinning: due timers below are still served.
                drop(runnable);
                std::thread::yield_now();
                runnable = fabric.runnable.lock();
            } else if runnable.is_empty() {
                let now = Instant::now();
                let next = waiting.iter().map(|(t, _)| *t).min();
                let wait = next.map_or(IDLE_WAIT, |t| {
                    t.saturating_duration_since(now).min(IDLE_WAIT)
                });
                if !wait.is_zero() {
                    // Cleared by the post that wakes it, or here (timer).
                    fabric.executor_parked.store(true, Ordering::Relaxed);
                    fabric.wake.wait_for(&mut runnable, wait);
                    fabric.executor_parked.store(false, Ordering::Relaxed);
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
        if !batch.is_empty() {
            last_work = Instant::now();
        }
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
    Lost(String),
    /// rxe's silent READ error (`fault::silent_read_errors`): no bytes,
    /// status success, QP → ERR.
    SilentError,
}

/// What the head of a send queue needs next.
enum Head {
    /// Nothing to do until the QP is scheduled again.
    Idle,
    /// Its retransmit timer fires at this instant.
    WaitUntil(Instant),
    /// (Re)transmit it.
    Send(WorkRequest, u64, Option<RtrAttrs>, RtsAttrs),
    /// It completed (or was flushed); look at the next.
    Next,
}

/// Work through `qp`'s send queue; `Some(t)` when its head waits for a
/// retransmit timer until `t`.
fn progress(fabric: &Fabric, qp: &Arc<QpShared>) -> Option<Instant> {
    loop {
        let (wr, generation, rtr, rts) = match head(qp) {
            Head::Idle => return None,
            Head::WaitUntil(t) => return Some(t),
            Head::Next => continue,
            Head::Send(wr, generation, rtr, rts) => (wr, generation, rtr, rts),
        };
        let outcome = execute(fabric, qp, &wr, rtr.as_ref());
        let mut core = qp.core.lock();
        if core.generation != generation || core.sq.front() != Some(&wr) {
            continue;
        }
        match outcome {
            Outcome::Done(status) => {
                core.sq.pop_front();
                // An ACK: the next WR starts with the full retry budget.
                core.retransmit = None;
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
            Outcome::SilentError => {
                core.sq.pop_front();
                core.retransmit = None;
                log::warn!(
                    "soft QP {} on {}: wr_id {} READ ended silently (injected), QP → err",
                    qp.qpn,
                    qp.device.name,
                    wr.wr_id
                );
                core.state = QpState::Err;
                // Its flushes come from the next look at the queue.
                qp.complete(&wr, WcStatus::Success);
            }
            Outcome::Lost(why) => {
                let due = fabric.ack_timeout(rts.timeout).map(|d| Instant::now() + d);
                log::debug!(
                    "soft QP {} on {}: wr_id {} lost ({why}), retransmit at {due:?}",
                    qp.qpn,
                    qp.device.name,
                    wr.wr_id
                );
                match core.retransmit.as_mut() {
                    Some(r) => {
                        r.due = due;
                        r.why = why;
                    }
                    None => {
                        core.retransmit = Some(Retransmit {
                            due,
                            left: rts.retry_cnt,
                            forever: rts.retry_cnt == 7 && fabric.rxe_retry7(),
                            transmissions: 1,
                            why,
                        })
                    }
                }
            }
        }
    }
}

/// Decide about the head WR of `qp` under its lock: flush, wait for the
/// retransmit timer, give up (`RetryExceeded`), or send it.
fn head(qp: &QpShared) -> Head {
    let mut core = qp.core.lock();
    match core.state {
        QpState::Err => {
            core.retransmit = None;
            while let Some(wr) = core.sq.pop_front() {
                qp.complete(&wr, WcStatus::WrFlushError);
            }
            return Head::Idle;
        }
        QpState::Reset => return Head::Idle,
        _ => {}
    }
    let Some(wr) = core.sq.front().copied() else {
        return Head::Idle;
    };
    if let Some(r) = core.retransmit.as_mut() {
        match r.due {
            None => return Head::Idle,
            Some(t) if Instant::now() < t => return Head::WaitUntil(t),
            Some(_) => {}
        }
        if r.left > 0 {
            if !r.forever {
                r.left -= 1;
            }
            r.transmissions += 1;
            qp.device.retransmits.fetch_add(1, Ordering::Relaxed);
        } else {
            log::warn!(
                "soft QP {} on {}: wr_id {} retry exceeded after {} transmissions ({}), QP → err",
                qp.qpn,
                qp.device.name,
                wr.wr_id,
                r.transmissions,
                r.why
            );
            core.sq.pop_front();
            core.retransmit = None;
            core.state = QpState::Err;
            qp.complete(&wr, WcStatus::RetryExceeded);
            return Head::Next;
        }
    }
    let rts = core.rts.clone().unwrap_or_default();
    Head::Send(wr, core.generation, core.rtr.clone(), rts)
}

/// Carry out one transmission of `wr` (no QP lock held).
fn execute(fabric: &Fabric, qp: &QpShared, wr: &WorkRequest, rtr: Option<&RtrAttrs>) -> Outcome {
    let Some(rtr) = rtr else {
        return Outcome::Lost("no path".into());
    };
    let peer_dev = match path::responder(fabric, qp, rtr) {
        Ok(d) => d,
        Err(why) => return Outcome::Lost(why),
    };
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
    if wr.opcode == Opcode::Read
        && super::fault::take_silent_read_error(&mut qp.device.faults.lock())
    {
        return Outcome::SilentError;
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
