//! Endpoints created by incoming Connection requests. Anyone who reaches the
//! handshake port can send one, and each would create an endpoint with its
//! QPs, so they are capped per context: `MC_MAX_PASSIVE_EP_PER_PEER` per peer
//! server and `MC_MAX_PASSIVE_EP_PER_CTX` in total. At a cap, the oldest idle
//! passively created endpoint (no WR in flight, no handshake running) is
//! retired to make room (its peer re-handshakes on its next transfer, as
//! after any eviction); when none is idle, the request is rejected.

use std::collections::VecDeque;
use std::sync::{Arc, Weak};
use std::time::Duration;

use parking_lot::Mutex;

use super::context::RdmaContext;
use super::endpoint_driver::Endpoint;
use crate::config::env_u64;
use crate::serving::RateLimited;

#[derive(Clone, Copy, Debug)]
pub struct PassiveLimits {
    pub per_peer: usize,
    pub per_ctx: usize,
}

impl PassiveLimits {
    pub fn from_env() -> PassiveLimits {
        PassiveLimits {
            per_peer: env_u64("MC_MAX_PASSIVE_EP_PER_PEER", 64, 1, 65536) as usize,
            per_ctx: env_u64("MC_MAX_PASSIVE_EP_PER_CTX", 4096, 1, 65536) as usize,
        }
    }
}

struct Entry {
    /// Peer NIC path (`server@device`) and its server part.
    path: String,
    server: String,
    ep: Weak<Endpoint>,
}

/// The passively created endpoints of one context, oldest first.
pub struct PassiveCap {
    limits: PassiveLimits,
    entries: Mutex<VecDeque<Entry>>,
    log: RateLimited,
}

fn server_of(path: &str) -> &str {
    path.rsplit_once('@').map_or(path, |(s, _)| s)
}

impl PassiveCap {
    pub fn new(limits: PassiveLimits) -> PassiveCap {
        PassiveCap {
            limits,
            entries: Mutex::new(VecDeque::new()),
            log: RateLimited::new(module_path!(), Duration::from_secs(5)),
        }
    }

    /// The endpoint towards `path`: the existing one, or a new one made by
    /// `create` once there is room under the caps.
    pub fn endpoint(
        &self,
        ctx: &RdmaContext,
        path: &str,
        create: impl FnOnce() -> crate::error::Result<Arc<Endpoint>>,
    ) -> std::result::Result<Arc<Endpoint>, String> {
        if let Some(e) = ctx.endpoints.lock().get(path) {
            return Ok(e.clone());
        }
        let mut entries = self.entries.lock();
        // Forget endpoints that were evicted, retired or replaced meanwhile.
        {
            let eps = ctx.endpoints.lock();
            entries.retain(|en| {
                en.ep
                    .upgrade()
                    .is_some_and(|ep| eps.get(&en.path).is_some_and(|cur| Arc::ptr_eq(cur, &ep)))
            });
        }
        let server = server_of(path);
        let same_peer = entries.iter().filter(|e| e.server == server).count();
        if same_peer >= self.limits.per_peer {
            self.make_room(
                ctx,
                &mut entries,
                Some(server),
                "MC_MAX_PASSIVE_EP_PER_PEER",
            )?;
        }
        if entries.len() >= self.limits.per_ctx {
            self.make_room(ctx, &mut entries, None, "MC_MAX_PASSIVE_EP_PER_CTX")?;
        }
        let ep = create().map_err(|e| e.to_string())?;
        entries.push_back(Entry {
            path: path.to_string(),
            server: server.to_string(),
            ep: Arc::downgrade(&ep),
        });
        Ok(ep)
    }

    /// Retire the oldest idle entry (of `server`, when given).
    fn make_room(
        &self,
        ctx: &RdmaContext,
        entries: &mut VecDeque<Entry>,
        server: Option<&str>,
        cap: &str,
    ) -> std::result::Result<(), String> {
        let victim = entries.iter().position(|e| {
            server.is_none_or(|s| e.server == s)
                && e.ep
                    .upgrade()
                    .is_some_and(|ep| ep.outstanding() == 0 && !ep.handshake_running())
        });
        let Some(i) = victim else {
            let why = format!(
                "{cap} reached on {} and no passive endpoint is idle",
                ctx.name
            );
            self.log
                .warn(format_args!("RDMA: rejecting handshake: {why}"));
            return Err(why);
        };
        let en = entries.remove(i).expect("victim index");
        if let Some(ep) = en.ep.upgrade() {
            ctx.forget_endpoint(&en.path, &ep);
            ep.retire(&format!("evicted: {cap} reached"));
        }
        self.log.warn(format_args!(
            "RDMA context {}: {cap} reached; retired the idle passive endpoint to {}",
            ctx.name, en.path
        ));
        Ok(())
    }
}
