//! State shared by the transport facade, its threads and handshakes, and
//! the endpoint store of each context (creation, eviction, retirement).

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};

use parking_lot::RwLock;

use crate::error::{Error, Result};
use crate::metadata::descriptor::PriorityMatrix;
use crate::metadata::name;
use crate::threads::ThreadCount;
use crate::transport::TransportContext;

use super::config::RdmaConfig;
use super::context::RdmaContext;
use super::endpoint::GENERATION_STRIDE;
use super::endpoint_driver::{self, Endpoint};
use super::memory::MemoryTable;
use super::names::Names;
use super::rail::RailBook;
use super::stats::Counters;
use super::worker::{ContextWorkers, Slice};
use super::{limits, liveness};

/// State shared by the transport facade, its threads and handshakes.
pub struct Shared {
    pub tctx: TransportContext,
    pub contexts: Vec<Arc<RdmaContext>>,
    pub workers: Vec<Arc<ContextWorkers>>,
    pub matrix: PriorityMatrix,
    pub memory: RwLock<MemoryTable>,
    pub cfg: RdmaConfig,
    pub counters: Counters,
    pub rails: RailBook,
    /// Peers found gone by a probe or a refused handshake.
    pub liveness: liveness::PeerLiveness,
    /// The TCP carrier for slices with no RDMA path left, and per peer the
    /// time new submissions skip RDMA (`fallback.rs`).
    pub fallback: super::fallback::Fallback,
    /// Who may replace a connected endpoint (`path_trust.rs`).
    pub trust: Arc<super::path_trust::PathTrust>,
    /// Peer NIC paths and buffer locations slices refer to by id.
    pub(super) paths: Names,
    pub(super) locations: Names,
    pub(super) next_generation: AtomicU64,
    pub(super) me: Weak<Shared>,
    /// Every thread of the transport: workers, pollers, event threads,
    /// handshake and probe threads.
    pub(super) threads: ThreadCount,
}

impl Shared {
    pub(super) fn nic_path(&self, device: &str) -> String {
        name::nic_path(
            &limits::rdma_server_name(&self.tctx.local_server_name),
            device,
        )
    }

    /// The endpoint of `ctx` towards `peer`, created if absent.
    pub fn endpoint(&self, ctx: &RdmaContext, peer: &str) -> Result<Arc<Endpoint>> {
        let dev = ctx
            .device
            .as_ref()
            .ok_or_else(|| Error::Context(format!("device {} is not open", ctx.name)))?;
        let mut eps = ctx.endpoints.lock();
        if let Some(e) = eps.get(peer) {
            return Ok(e.clone());
        }
        if eps.len() >= self.cfg.max_ep_per_ctx {
            self.evict_idle_endpoint(ctx, &mut eps);
        }
        let generation = self.next_generation.fetch_add(1, Ordering::Relaxed) * GENERATION_STRIDE;
        let ep = Arc::new(Endpoint::new(
            self.nic_path(&ctx.name),
            peer.to_string(),
            dev.clone(),
            self.cfg.num_qp_per_ep,
            self.cfg.max_wr,
            ctx.gid_string(),
            ctx.lid(),
            generation,
            self.cfg.handshake,
        )?);
        let (meta, path) = (self.tctx.metadata.clone(), peer.to_string());
        ep.set_peer_gid_lookup(Box::new(move || {
            endpoint_driver::peer_gid_from_descriptor(&meta, &path)
        }));
        eps.insert(peer.to_string(), ep.clone());
        Ok(ep)
    }

    /// Run the active handshake for `ep` off the worker thread.
    /// A weak handle for threads the transport spawns.
    pub fn me(&self) -> Weak<Shared> {
        self.me.clone()
    }

    /// The slice ended for good.
    pub fn fail_slice(&self, s: Slice) {
        self.counters.failed_slices.fetch_add(1, Ordering::Relaxed);
        s.task.slice_failed();
    }

    /// Make room under `MC_MAX_EP_PER_CTX`: retire one endpoint with no WR
    /// in flight. Endpoints with WRs in flight are never evicted (their QPs
    /// would flush them); if all are busy the store grows past the cap for
    /// now and the next insertion tries again.
    fn evict_idle_endpoint(&self, ctx: &RdmaContext, eps: &mut HashMap<String, Arc<Endpoint>>) {
        let victim = eps
            .iter()
            .find(|(_, e)| e.outstanding() == 0 && !e.handshake_running())
            .map(|(k, _)| k.clone());
        match victim.and_then(|k| eps.remove(&k).map(|e| (k, e))) {
            Some((peer, ep)) => {
                ep.retire("evicted: MC_MAX_EP_PER_CTX reached");
                self.counters.evictions.fetch_add(1, Ordering::Relaxed);
                log::debug!("RDMA context {}: evicted idle endpoint to {peer}", ctx.name);
            }
            None => log::warn!(
                "RDMA context {}: {} endpoints, all with WRs in flight; exceeding MC_MAX_EP_PER_CTX={} for now",
                ctx.name,
                eps.len(),
                self.cfg.max_ep_per_ctx
            ),
        }
    }

    pub fn retire_context_endpoints(&self, ctx: &RdmaContext, reason: &str) {
        let eps: Vec<Arc<Endpoint>> = ctx.endpoints.lock().drain().map(|(_, e)| e).collect();
        for e in eps {
            e.retire(reason);
        }
    }
}
