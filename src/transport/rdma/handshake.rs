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
use super::shared::Shared;
use super::worker::ContextWorkers;

impl Shared {
    /// Run the active handshake for `ep` off the worker thread.
    pub fn start_handshake(&self, cw: Arc<ContextWorkers>, ep: Arc<Endpoint>) {
        let meta = self.tctx.metadata.clone();
        let started = std::time::Instant::now();
        if ep.is_loopback() {
            // No RPC: QPs connect to themselves right here.
            let ok = ep.connect_active(&meta).is_ok();
            self.handshake_done(&cw, &ep, ok, started);
            ep.end_handshake();
            cw.wake_all();
            return;
        }
        let me = self.me.clone();
        let claimed = ep.clone();
        let spawned = self.threads.spawn("te-rdma-handshake", move || {
            let ok = ep.connect_active(&meta).is_ok();
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
            match ep.on_request(req) {
                PassiveOutcome::Reply(r) => {
                    if r.reply_msg.is_empty() {
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
}
