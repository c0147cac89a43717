//! Start and stop: open the devices, start each context's threads; on
//! shutdown stop and join them, fail what is queued or in flight, then
//! release QPs and MRs.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::{Mutex, RwLock};

use crate::error::{Error, Result};
use crate::metadata::descriptor::PriorityMatrix;
use crate::threads::ThreadCount;
use crate::topology::hca_list;
use crate::transport::TransportContext;

use super::config::RdmaConfig;
use super::context::RdmaContext;
use super::memory::MemoryTable;
use super::rail::RailBook;
use super::shared::Shared;
use super::stats::Counters;
use super::worker::{self, ContextWorkers};
use super::{discover_devices, events, liveness, provider, RdmaTransport};

impl RdmaTransport {
    pub fn install(ctx: TransportContext, matrix: PriorityMatrix) -> Result<Arc<RdmaTransport>> {
        let mut cfg = RdmaConfig::from_env();
        let mut names = hca_list(&matrix);
        if names.is_empty() {
            names = discover_devices();
        }
        let contexts: Vec<Arc<RdmaContext>> = names
            .iter()
            .enumerate()
            .map(|(i, n)| {
                let dev = match provider::open(n, &mut cfg) {
                    Ok(d) => Some(d),
                    Err(e) => {
                        log::warn!(
                            "RDMA device {n} unusable, keeping an inactive placeholder: {e}"
                        );
                        None
                    }
                };
                Arc::new(RdmaContext::new(i, n.clone(), dev))
            })
            .collect();
        if !contexts.iter().any(|c| c.device.is_some()) {
            return Err(Error::DeviceNotFound(format!(
                "no usable RDMA device among {names:?} (provider {})",
                provider::selected()
            )));
        }
        let matrix = if matrix.is_empty() {
            crate::topology::matrix_for(&names)
        } else {
            matrix
        };
        let posters = if cfg.workers_per_ctx >= 2 {
            cfg.workers_per_ctx - 1
        } else {
            1
        };
        let workers: Vec<Arc<ContextWorkers>> = contexts
            .iter()
            .map(|c| Arc::new(ContextWorkers::new(c.clone(), posters, cfg.backoff)))
            .collect();
        let rails = RailBook::new(cfg.rail_pause);
        let threads = ctx.threads.child();
        let shared = Arc::new_cyclic(|me| Shared {
            tctx: ctx,
            contexts,
            workers,
            matrix,
            memory: RwLock::new(MemoryTable::default()),
            cfg,
            counters: Counters::default(),
            rails,
            liveness: liveness::PeerLiveness::from_env(),
            fallback: Default::default(),
            trust: Default::default(),
            paths: Default::default(),
            locations: Default::default(),
            next_generation: AtomicU64::new(1),
            me: me.clone(),
            threads,
        });
        let mut threads = Vec::new();
        for cw in &shared.workers {
            if cw.ctx.device.is_none() {
                continue;
            }
            let single = shared.cfg.workers_per_ctx < 2;
            for k in 0..cw.posters.len() {
                let (w, c) = (Arc::downgrade(&shared), cw.clone());
                threads.push(spawn(
                    &shared.threads,
                    format!("te-rdma-post-{}", cw.ctx.name),
                    move || worker::run_poster(w, c, k, single),
                )?);
            }
            if !single {
                let (w, c) = (Arc::downgrade(&shared), cw.clone());
                threads.push(spawn(
                    &shared.threads,
                    format!("te-rdma-poll-{}", cw.ctx.name),
                    move || worker::run_poller(w, c),
                )?);
            }
            let (w, c) = (Arc::downgrade(&shared), cw.clone());
            threads.push(spawn(
                &shared.threads,
                format!("te-rdma-event-{}", cw.ctx.name),
                move || events::run_events(w, c),
            )?);
        }
        log::info!(
            "RDMA transport up on {:?} ({} QPs/endpoint, {} workers/context)",
            shared.contexts.iter().map(|c| &c.name).collect::<Vec<_>>(),
            shared.cfg.num_qp_per_ep,
            shared.cfg.workers_per_ctx
        );
        Ok(Arc::new(RdmaTransport {
            shared,
            threads: Mutex::new(threads),
        }))
    }
}

fn spawn(
    count: &ThreadCount,
    name: String,
    f: impl FnOnce() + Send + 'static,
) -> Result<JoinHandle<()>> {
    count
        .spawn(name, f)
        .map_err(|e| Error::Context(format!("cannot start an RDMA worker thread: {e}")))
}

impl RdmaTransport {
    pub(super) fn stop(&self) {
        let sh = &self.shared;
        // From here on a slice with no RDMA path fails (the tcp transport
        // may be shutting down too).
        sh.fallback.set_carrier(None);
        for cw in &sh.workers {
            cw.stop.store(true, Ordering::Release);
            cw.wake_all();
        }
        for t in self.threads.lock().drain(..) {
            let _ = t.join();
        }
        for cw in &sh.workers {
            for w in &cw.posters {
                for s in w.drain() {
                    sh.fail_slice(s);
                }
            }
            let (infl, eps) = cw.inflight.lock().drain();
            for s in infl {
                sh.fail_slice(s);
            }
            drop(eps);
            sh.retire_context_endpoints(&cw.ctx, "transport shutdown");
            cw.unflushed.lock().clear();
            cw.ctx.mrs.lock().clear();
        }
        sh.memory.write().clear();
        log::info!("RDMA transport stopped");
    }
}
