//! The completion side of a context: poll the CQ, map each completion back
//! to its slice (success, retry, fail), and watch endpoints whose WRs stall.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::device::{Completion, CompletionStatus};
use super::endpoint_driver::Endpoint;
use super::inflight::{Ended, EpRef};
use super::worker::{ContextWorkers, Slice};
use super::Shared;

/// Buffers a polling thread reuses across CQ polls (no allocation per poll).
#[derive(Default)]
pub struct PollBufs {
    comps: Vec<Completion>,
    /// What each completion ended, with its status.
    done: Vec<(CompletionStatus, Ended)>,
    /// The endpoints this poll's chains went out on, per QP, with how many
    /// WRs ended: one reference and one counter update per endpoint and QP
    /// per poll.
    eps: Vec<(EpRef, usize, Arc<Endpoint>, usize)>,
}

impl PollBufs {
    fn endpoint(&self, r: EpRef) -> Option<&Arc<Endpoint>> {
        self.eps.iter().find(|e| e.0 == r).map(|e| &e.2)
    }
}

/// Poll the context's CQ once; returns whether completions were handled.
pub fn poll_once(sh: &Shared, cw: &ContextWorkers, bufs: &mut PollBufs) -> bool {
    let Some(dev) = &cw.ctx.device else {
        return false;
    };
    bufs.comps.clear();
    if dev.poll(&mut bufs.comps, 64) == 0 {
        return false;
    }
    {
        let mut infl = cw.inflight.lock();
        for c in &bufs.comps {
            let Some(end) = infl.resolve(c.wr_id) else {
                continue;
            };
            let n = end.slices.len();
            match bufs.eps.iter_mut().find(|e| e.0 == end.ep && e.1 == end.qp) {
                Some(e) => e.3 += n,
                None => {
                    if let Some(ep) = infl.endpoint(end.ep) {
                        bufs.eps.push((end.ep, end.qp, ep.clone(), n));
                    }
                }
            }
            // Never the last reference: `bufs.eps` holds the endpoint
            // until the completions are handled (outside this lock).
            if end.chain_done {
                infl.release(end.ep);
            }
            bufs.done.push((c.status, end));
        }
    }
    // One stats update per poll, before tasks can be seen complete.
    let (bytes, ok_bytes) = bufs.done.iter().fold((0, 0), |acc, (status, end)| {
        let last = end.slices.len().saturating_sub(1);
        end.slices.iter().enumerate().fold(acc, |(b, ok), (k, s)| {
            let moved = k < last || *status == CompletionStatus::Success;
            (b + s.length, ok + if moved { s.length } else { 0 })
        })
    });
    let polled = bufs.comps.len() as u64;
    cw.ctx.stats.finished_many(polled, bytes, ok_bytes);
    // QP slots and CQ room are free again: wake posters that wait for them.
    for w in &cw.posters {
        w.room_freed();
    }
    let now_ms = super::liveness::coarse_ms();
    for (_, qp, ep, n) in &bufs.eps {
        ep.touch(now_ms);
        ep.completed(*qp, *n);
    }
    let mut done = std::mem::take(&mut bufs.done);
    for (status, end) in done.drain(..) {
        let last = end.slices.len().saturating_sub(1);
        for (k, slice) in end.slices.into_iter().enumerate() {
            // WRs before the one completed succeeded without a completion.
            let status = if k < last {
                CompletionStatus::Success
            } else {
                status
            };
            slice_ended(sh, cw, bufs, status, slice, end.ep, end.timed_out);
        }
    }
    bufs.done = done;
    // May drop the last reference to an endpoint (and destroy its QPs):
    // its WRs are all done.
    bufs.eps.clear();
    true
}

/// One slice's WR ended with `status`: done, retried or failed.
fn slice_ended(
    sh: &Shared,
    cw: &ContextWorkers,
    bufs: &PollBufs,
    status: CompletionStatus,
    slice: Slice,
    ep: EpRef,
    timed_out: bool,
) {
    if timed_out {
        // The QP of a timed-out WR is in ERR: this is its flush (or a
        // late success). Only now may the slice end.
        sh.counters
            .timeouts_completed
            .fetch_add(1, Ordering::Relaxed);
        return match status {
            CompletionStatus::Success => slice.task.slice_succeeded(slice.length),
            _ => sh.fail_slice(slice),
        };
    }
    match status {
        CompletionStatus::Success => slice.task.slice_succeeded(slice.length),
        CompletionStatus::Flushed => {
            log::trace!("Worker: WR flush error, redispatching if retry allows");
            sh.counters.flushed.fetch_add(1, Ordering::Relaxed);
            sh.retry_or_fail(slice, "flushed");
        }
        CompletionStatus::RemoteError | CompletionStatus::LocalError => {
            sh.counters
                .error_completions
                .fetch_add(1, Ordering::Relaxed);
            let path = sh.paths.get(slice.path);
            if let Some(ep) = bufs.endpoint(ep) {
                if ep.state().connected() {
                    // A dead connection needs a re-handshake: pace it.
                    cw.handshake_failed(&path, Instant::now());
                }
                ep.retire("work completion error");
                cw.ctx.forget_endpoint(&path, ep);
            }
            // A dead local device is not the peer rail's fault.
            let local_fault = status == CompletionStatus::LocalError || !cw.ctx.is_active();
            if !local_fault {
                sh.rails
                    .failed(&path, sh.has_alternative_rail(slice.target_id, &path));
            }
            sh.retry_or_fail(slice, "work completion error");
        }
    }
}

/// Probe the peer of every endpoint whose WRs made no progress for
/// `MC_TE_RS_RDMA_PROBE_MS`; a gone peer's endpoint is retired (its QPs go
/// to ERR and flush every WR, so no buffer is released while the NIC may
/// still touch it), and its slices then fail at once (see `liveness`).
pub fn watch_stalled(sh: &Shared, cw: &Arc<ContextWorkers>) {
    let now_ms = super::liveness::coarse_ms();
    let limit = sh.liveness.probe_after.as_millis() as u64;
    let stalled: Vec<(String, Arc<Endpoint>)> = cw
        .ctx
        .endpoints
        .lock()
        .iter()
        .filter(|(_, ep)| ep.stalled_ms(now_ms) >= limit && !ep.is_loopback())
        .map(|(p, ep)| (p.clone(), ep.clone()))
        .collect();
    for (path, ep) in stalled {
        if !ep.begin_probe() {
            continue;
        }
        let Some(server) = crate::metadata::name::split_nic_path(&path).map(|(s, _)| s.to_string())
        else {
            ep.end_probe();
            continue;
        };
        let (me, cw) = (sh.me(), cw.clone());
        let spawned = sh.threads.spawn("te-rdma-probe", move || {
            if let Some(sh) = me.upgrade() {
                let timeout = sh.liveness.connect_timeout;
                match super::liveness::probe(&sh.tctx.metadata, &server, timeout) {
                    super::liveness::Probe::Alive => ep.touch(super::liveness::coarse_ms()),
                    super::liveness::Probe::Gone(why) => {
                        sh.counters.peers_gone.fetch_add(1, Ordering::Relaxed);
                        sh.liveness.mark_dead(&server, &why, Instant::now());
                        ep.retire("peer gone");
                        cw.ctx.forget_endpoint(&path, &ep);
                        cw.wake_all();
                    }
                }
            }
            ep.end_probe();
        });
        if let Err(e) = spawned {
            log::error!("cannot start a liveness probe thread: {e}");
        }
    }
}
