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
            let n = end.wrs;
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
        end.slices.iter().enumerate().fold(acc, |(b, ok), (k, s)| {
            let moved = landed(*status, end.by_confirm, k + 1 == end.slices.len());
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
        chain_part_ended(sh, cw, bufs, status, end);
    }
    bufs.done = done;
    // May drop the last reference to an endpoint (and destroy its QPs):
    // its WRs are all done.
    bufs.eps.clear();
    true
}

/// Did slice `k` of `end` land? A success says so for its WR and every
/// WR before it; an error, for the WRs before it; a flush, for none
/// (see `inflight`).
fn landed(status: CompletionStatus, by_confirm: bool, last: bool) -> bool {
    let named = !by_confirm && last;
    match status {
        CompletionStatus::Success => true,
        CompletionStatus::Flushed => false,
        CompletionStatus::RemoteError
        | CompletionStatus::RequestError
        | CompletionStatus::LocalError => !named,
    }
}

/// A completion ended the slices of `end`: done, sent again or failed.
fn chain_part_ended(
    sh: &Shared,
    cw: &ContextWorkers,
    bufs: &PollBufs,
    status: CompletionStatus,
    end: Ended,
) {
    if status == CompletionStatus::Flushed {
        sh.counters.flushed.fetch_add(1, Ordering::Relaxed);
        if !end.timed_out {
            qp_died(sh, cw, bufs.endpoint(end.ep));
        }
    }
    if end.by_confirm && status.is_error() && !end.timed_out {
        // The confirming WR itself failed; the READs before it landed.
        sh.counters
            .error_completions
            .fetch_add(1, Ordering::Relaxed);
        if let Some(ep) = bufs.endpoint(end.ep) {
            ep.retire("confirming WR failed");
            cw.ctx.forget_endpoint(&ep.peer_path, ep);
        }
    }
    let (n, by_confirm) = (end.slices.len(), end.by_confirm);
    for (k, slice) in end.slices.into_iter().enumerate() {
        if landed(status, by_confirm, k + 1 == n) {
            if end.timed_out {
                sh.counters
                    .timeouts_completed
                    .fetch_add(1, Ordering::Relaxed);
            }
            slice.task.slice_succeeded(slice.length);
        } else if end.timed_out {
            // Its QP was moved to ERR past the timeout: this is its
            // flush (or error). Only now may the slice end.
            sh.counters
                .timeouts_completed
                .fetch_add(1, Ordering::Relaxed);
            sh.fail_slice(slice);
        } else if status == CompletionStatus::Flushed {
            // Its QP died under it: not its fault, and maybe not even
            // sent (a flush proves nothing about the WR before it).
            sh.resend(slice, "flushed");
        } else {
            wr_failed(sh, cw, bufs, status, slice, end.ep);
        }
    }
}

/// A flush on an endpoint still taken as connected: its QP went to ERR
/// without an error completion we saw (rxe's silent READ error, a
/// responder-side error, a peer that reset its QP). Retire it at once, or
/// every slice posted on it flushes in turn.
fn qp_died(sh: &Shared, cw: &ContextWorkers, ep: Option<&Arc<Endpoint>>) {
    let Some(ep) = ep else { return };
    if !ep.state().connected() {
        return;
    }
    sh.counters.qp_deaths.fetch_add(1, Ordering::Relaxed);
    crate::warn_limited!(
        "RDMA endpoint {} -> {}: a QP is in ERR with no error completion; retired, its slices go on through a fresh handshake",
        cw.ctx.name,
        ep.peer_path
    );
    ep.retire("QP in ERR without an error completion");
    cw.ctx.forget_endpoint(&ep.peer_path, ep);
}

/// A slice's own WR completed in error: its endpoint is retired and the
/// slice retried (one attempt consumed) or failed.
fn wr_failed(
    sh: &Shared,
    cw: &ContextWorkers,
    bufs: &PollBufs,
    status: CompletionStatus,
    slice: Slice,
    ep: EpRef,
) {
    sh.counters
        .error_completions
        .fetch_add(1, Ordering::Relaxed);
    let path = sh.paths.get(slice.path);
    if status == CompletionStatus::RequestError {
        // The peer refused this request (its rkey or range). A stale key
        // is refused again, and the rail serves other requests well: no
        // pause. But rxe (kernel 6.1) also refuses a valid WRITE now and
        // then (its responder's state after retransmissions), so the
        // request gets one more try on a fresh endpoint before it fails.
        // Its QP went to ERR: a fresh endpoint, no pacing.
        sh.counters.request_errors.fetch_add(1, Ordering::Relaxed);
        let again = !slice.refused;
        crate::warn_limited!(
            "RDMA {:?} to {path} from {}: the peer refused it (remote access or invalid request; \
             remote {:#x}+{}, rkey {:#x}); {}",
            slice.opcode,
            cw.ctx.name,
            slice.dest,
            slice.length,
            slice.rkey,
            if again {
                "sent once more"
            } else {
                "refused twice, failed"
            }
        );
        if let Some(ep) = bufs.endpoint(ep) {
            ep.retire("request refused by the peer");
            cw.ctx.forget_endpoint(&path, ep);
        }
        if again {
            let mut slice = slice;
            slice.refused = true;
            return sh.retry_or_fail(slice, "refused by the peer");
        }
        return sh.fail_slice(slice);
    }
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

/// Probe the peer of every endpoint whose WRs made no progress for
/// `MC_TE_RS_RDMA_PROBE_MS`; a gone peer's endpoint is retired (its QPs go
/// to ERR and flush every WR, so no buffer is released while the NIC may
/// still touch it), and its slices then fail at once (see `liveness`).
pub fn watch_stalled(sh: &Shared, cw: &Arc<ContextWorkers>) {
    let now_ms = super::liveness::coarse_ms();
    let limit = sh.liveness.probe_after.as_millis() as u64;
    let stuck_limit = sh.liveness.stall_after.as_millis() as u64;
    let stuck: Vec<(String, Arc<Endpoint>)> = cw
        .ctx
        .endpoints
        .lock()
        .iter()
        .filter(|(_, ep)| ep.stuck_ms(now_ms) >= stuck_limit)
        .map(|(p, ep)| (p.clone(), ep.clone()))
        .collect();
    for (path, ep) in stuck {
        // A live peer whose QP is gone (restarted on the same address, or
        // its endpoint replaced) answers probes while our WRs go nowhere,
        // and rxe retransmits to it forever: start over on a fresh
        // endpoint. Its WRs flush and are sent again.
        sh.counters.stalls.fetch_add(1, Ordering::Relaxed);
        crate::warn_limited!(
            "RDMA endpoint {} -> {path}: no completion for {} ms with WRs in flight (MC_TE_RS_RDMA_STALL_MS); retired, its slices go on through a fresh handshake",
            cw.ctx.name,
            ep.stuck_ms(now_ms)
        );
        ep.retire("no completion within MC_TE_RS_RDMA_STALL_MS");
        cw.ctx.forget_endpoint(&path, &ep);
        cw.wake_all();
    }
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
                    super::liveness::Probe::Alive => ep.probed_alive(super::liveness::coarse_ms()),
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
