//! `MC_SLICE_TIMEOUT` without DMA hazards: a timed-out WR's slice ends only
//! once the NIC has let go of the WR (its flush completion after QP → ERR).

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Instant;

use super::endpoint_driver::Endpoint;
use super::inflight::Chain;
use super::worker::ContextWorkers;
use super::Shared;

/// `MC_SLICE_TIMEOUT`: a WR with no completion in time has its endpoint
/// retired (QPs to ERR, so the NIC flushes it) but stays in the in-flight
/// table: its slice fails when the flush arrives (`poll_once`), so no buffer
/// is reported free while the NIC may still move its bytes, and the QP lives
/// as long as the entry holds its endpoint. A completion that never comes
/// (dead device) ends the slice after `flush_grace`; the QP is then kept
/// until shutdown. The grace also bounds a chain cut short by a partial
/// post (`worker::take_back`), with or without `MC_SLICE_TIMEOUT`.
pub fn sweep(sh: &Shared, cw: &ContextWorkers) {
    let limit = sh.cfg.slice_timeout;
    let grace = sh.cfg.flush_grace;
    let now = Instant::now();
    let mut retire: Vec<Arc<Endpoint>> = Vec::new();
    let unflushed: Vec<(Chain, Arc<Endpoint>)> = {
        let mut infl = cw.inflight.lock();
        let mut gone = Vec::new();
        let mut timed_out = Vec::new();
        for (id, ch) in infl.chains.iter_mut() {
            match (ch.timed_out, limit) {
                (None, Some(limit)) if now.duration_since(ch.posted_at) > limit => {
                    ch.timed_out = Some(now);
                    sh.counters
                        .timeouts
                        .fetch_add(ch.slices.len() as u64, Ordering::Relaxed);
                    if let Some(s) = ch.slices.first() {
                        crate::warn_limited!(
                            "{} slice(s) to {}: no completion within {limit:?}; QP to ERR, waiting for the flush",
                            ch.slices.len(),
                            sh.paths.get(s.path)
                        );
                    }
                    if !timed_out.contains(&ch.ep) {
                        timed_out.push(ch.ep);
                    }
                }
                (Some(t), _) if now.duration_since(t) > grace => gone.push(*id),
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
    for (ch, ep) in unflushed {
        if let Some(s) = ch.slices.first() {
            log::error!(
                "{} slice(s) to {}: QP in ERR but no flush completion within {grace:?}; failed, QP kept until shutdown",
                ch.slices.len(),
                sh.paths.get(s.path)
            );
        }
        let mut keep = cw.unflushed.lock();
        if !keep.iter().any(|e| Arc::ptr_eq(e, &ep)) {
            keep.push(ep);
        }
        drop(keep);
        for s in ch.slices {
            sh.counters
                .timeouts_unflushed
                .fetch_add(1, Ordering::Relaxed);
            cw.ctx.stats.finished(s.length, false);
            sh.fail_slice(s);
        }
    }
}
