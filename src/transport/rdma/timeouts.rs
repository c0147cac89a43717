//! `MC_SLICE_TIMEOUT` without DMA hazards: a timed-out WR's slice ends only
//! once the NIC has let go of the WR (its flush completion after QP → ERR).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::endpoint_driver::Endpoint;
use super::worker::{ContextWorkers, Inflight};
use super::Shared;

/// `MC_SLICE_TIMEOUT`: a WR with no completion in time has its endpoint
/// retired (QPs to ERR, so the NIC flushes it) but stays in the in-flight
/// table: its slice fails when the flush arrives (`poll_once`), so no buffer
/// is reported free while the NIC may still move its bytes, and the QP lives
/// as long as the entry holds its endpoint. A completion that never comes
/// (dead device) ends the slice after `flush_grace`; the QP is then kept
/// until shutdown.
pub fn sweep(sh: &Shared, cw: &ContextWorkers) {
    let Some(limit) = sh.cfg.slice_timeout else {
        return;
    };
    let grace = sh.cfg.flush_grace;
    let now = Instant::now();
    let mut retire: Vec<Arc<Endpoint>> = Vec::new();
    let unflushed: Vec<(Inflight, Arc<Endpoint>)> = {
        let mut infl = cw.inflight.lock();
        let mut gone = Vec::new();
        let mut timed_out = Vec::new();
        for (id, f) in infl.wrs.iter_mut() {
            match f.timed_out {
                None if now.duration_since(f.posted_at) > limit => {
                    f.timed_out = Some(now);
                    sh.counters.timeouts.fetch_add(1, Ordering::Relaxed);
                    crate::warn_limited!(
                        "slice to {}: no completion within {limit:?}; QP to ERR, waiting for its flush",
                        sh.paths.get(f.slice.path)
                    );
                    if !timed_out.contains(&f.ep) {
                        timed_out.push(f.ep);
                    }
                }
                Some(t) if now.duration_since(t) > grace => gone.push(*id),
                _ => {}
            }
        }
        retire.extend(timed_out.iter().filter_map(|&r| infl.endpoint(r).cloned()));
        gone.into_iter().filter_map(|id| infl.take(id)).collect()
    };
    for ep in retire {
        ep.retire("slice timeout");
        cw.ctx.forget_endpoint(&ep.peer_path, &ep);
    }
    for (f, ep) in unflushed {
        log::error!(
            "slice to {}: QP in ERR but no flush completion within {grace:?}; slice failed, QP kept until shutdown",
            sh.paths.get(f.slice.path)
        );
        sh.counters
            .timeouts_unflushed
            .fetch_add(1, Ordering::Relaxed);
        cw.ctx.stats.finished(f.slice.length, false);
        let mut keep = cw.unflushed.lock();
        if !keep.iter().any(|e| Arc::ptr_eq(e, &ep)) {
            keep.push(ep);
        }
        drop(keep);
        sh.fail_slice(f.slice);
    }
}
