//! Handshakes as the transport runs them: the active attempt (off the
//! worker thread, its outcome fed to the backoff and liveness) and the
//! passive entry that answers a peer's Connection RPC.

use std::sync::atomic::Ordering;
use std::sync::Arc;

use crate::metadata::handshake::HandShakeDesc;
use crate::metadata::name;

use super::endpoint;
use super::endpoint_driver::{Endpoint, PassiveOutcome};
use super::liveness;
use super::path_trust::Verdict;
use super::shared::Shared;
use super::worker::ContextWorkers;

impl Shared {
    /// Run the active handshake for `ep` off the worker thread.
    pub fn start_handshake(&self, cw: Arc<ContextWorkers>, ep: Arc<Endpoint>) {
        let meta = self.tctx.metadata.clone();
        let trust = self.trust.clone();
        let started = std::time::Instant::now();
        if ep.is_loopback() {
            // No RPC: QPs connect to themselves right here.
            let ok = ep.connect_active(&meta, &trust).is_ok();
            self.handshake_done(&cw, &ep, ok, started);
            ep.end_handshake();
            cw.wake_all();
            return;
        }
        let me = self.me.clone();
        let claimed = ep.clone();
        let spawned = self.threads.spawn("te-rdma-handshake", move || {
            let ok = ep.connect_active(&meta, &trust).is_ok();
            if let Some(sh) = me.upgrade() {
                sh.handshake_done(&cw, &ep, ok, started);
            }
            ep.end_handshake();
            cw.wake_all();
        });
        if let Err(e) = spawned {
            log::error!("cannot start a handshake thread: {e}");
            claimed.end_handshake();
        }
    }

    /// Feed an active attempt's outcome to the counters and the backoff.
    fn handshake_done(
        &self,
        cw: &ContextWorkers,
        ep: &Endpoint,
        ok: bool,
        started: std::time::Instant,
    ) {
        let now = std::time::Instant::now();
        let server = name::split_nic_path(&ep.peer_path).map(|(s, _)| s);
        if !ok {
            self.counters
                .handshake_failures
                .fetch_add(1, Ordering::Relaxed);
            cw.handshake_failed(&ep.peer_path, now);
            // A refused connection means the peer process is gone: its
            // slices must not wait out the re-handshake backoff.
            if let Some(server) = server {
                let timeout = self.liveness.connect_timeout;
                if let liveness::Probe::Gone(why) =
                    liveness::probe(&self.tctx.metadata, server, timeout)
                {
                    self.liveness.mark_dead(server, &why, now);
                }
            }
            return;
        }
        if let Some(server) = server {
            self.liveness.mark_alive(server);
        }
        self.counters.handshakes.fetch_add(1, Ordering::Relaxed);
        let took = now.saturating_duration_since(started);
        self.counters.handshake_latency.observe(took);
        if ep.state() == endpoint::EndpointState::Connected {
            cw.handshake_connected(&ep.peer_path, now);
        }
    }

    /// The passive side: answer a Connection RPC from a peer (the
    /// handshake server calls this through `Transport::on_connection`).
    pub(super) fn on_connection(&self, req: &HandShakeDesc) -> HandShakeDesc {
        let sh = self;
        let Some((_, dev)) = name::split_nic_path(&req.peer_nic_path) else {
            return HandShakeDesc::rejected(format!(
                "Invalid peer_nic_path in handshake: {}",
                req.peer_nic_path
            ));
        };
        let Some(ctx) = sh.contexts.iter().find(|c| c.name == dev && c.is_active()) else {
            return HandShakeDesc::rejected(format!(
                "Local RDMA context not found for handshake NIC: {dev}"
            ));
        };
        if name::split_nic_path(&req.local_nic_path).is_none() {
            return HandShakeDesc::rejected(format!(
                "Parse peer nic path failed: {}",
                req.local_nic_path
            ));
        }
        for _ in 0..2 {
            // A request may create an endpoint: capped (passive_cap.rs).
            let made = ctx.passive.endpoint(ctx, &req.local_nic_path, || {
                sh.endpoint(ctx, &req.local_nic_path)
            });
            let ep = match made {
                Ok(e) => e,
                Err(e) => {
                    return HandShakeDesc::rejected(format!(
                        "Local RDMA endpoint unavailable for {}: {e}",
                        req.local_nic_path
                    ))
                }
            };
            if let Some(why) = sh.refuse_replacement(&ep, req) {
                crate::warn_limited!(
                    "rejected handshake from {} claiming to replace the live endpoint {} -> {}: {why}",
                    req.local_nic_path,
                    ep.local_path,
                    ep.peer_path
                );
                return HandShakeDesc::rejected(format!(
                    "handshake for the live endpoint of {} not believed: {why}",
                    req.local_nic_path
                ));
            }
            match ep.on_request(req) {
                PassiveOutcome::Reply(mut r) => {
                    if r.reply_msg.is_empty() {
                        if !req.is_ready_ack() {
                            sh.trust
                                .accepted_request(&ep.local_path, &ep.peer_path, req);
                            r.te_rs_incarnation = sh.our_incarnation();
                        }
                        sh.counters.handshakes.fetch_add(1, Ordering::Relaxed);
                    } else {
                        log::warn!(
                            "rejected handshake from {}: {}",
                            req.local_nic_path,
                            r.reply_msg
                        );
                    }
                    sh.workers[ctx.index].wake_all();
                    return r;
                }
                PassiveOutcome::RetryFresh => ctx.forget_endpoint(&req.local_nic_path, &ep),
            }
        }
        HandShakeDesc::rejected(format!(
            "Local RDMA endpoint unavailable for {}",
            req.local_nic_path
        ))
    }

    /// Our engine's incarnation, as our descriptor publishes it.
    fn our_incarnation(&self) -> Option<String> {
        self.tctx
            .metadata
            .local_desc()
            .and_then(|d| d.te_rs_incarnation.clone())
    }

    /// Why `req` may not replace `ep`, when it would (the endpoint is
    /// connected and the request names other QPs) and does not prove it
    /// comes from the peer (`path_trust.rs`). `None`: go ahead.
    fn refuse_replacement(&self, ep: &Endpoint, req: &HandShakeDesc) -> Option<String> {
        if req.is_ready_ack() || !ep.state().connected() {
            return None;
        }
        if ep.peer_qpns().is_none_or(|q| q == req.qp_num) {
            return None;
        }
        match self.trust.judge(&ep.local_path, &ep.peer_path, req) {
            Verdict::Believe => None,
            Verdict::Reject(why) => Some(why.to_string()),
            Verdict::IfPublished(claimed) => {
                let server = name::split_nic_path(&req.local_nic_path).map(|(s, _)| s)?;
                let segment = self.tctx.metadata.segment_name_of_rdma_server(server);
                match self.tctx.metadata.reread_desc(&segment) {
                    Ok(d) if d.te_rs_incarnation.as_deref() == Some(claimed.as_str()) => {
                        log::info!(
                            "RDMA peer {} restarted (incarnation {claimed} published); replacing its endpoint",
                            req.local_nic_path
                        );
                        None
                    }
                    Ok(d) => Some(format!(
                        "it claims incarnation {claimed}, the peer publishes {}",
                        d.te_rs_incarnation.as_deref().unwrap_or("none")
                    )),
                    Err(e) => Some(format!("cannot read the peer's descriptor: {e}")),
                }
            }
        }
    }
}
