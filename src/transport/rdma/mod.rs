//! RDMA transport: verbs providers (ibverbs, soft fabric), contexts, memory
//! regions, ready-ACK-gated endpoints, worker pool (spec §5, §6).
//!
//! Data path: `submit` cuts each request into slices (slicing.rs), routes
//! each slice to a local context and peer NIC (selection.rs) and queues it
//! on that context's posting thread for the peer NIC path (worker.rs). The
//! worker asks the endpoint's gate (endpoint_driver.rs) whether it may post;
//! the context's poller turns completions into task counters or retries.

pub mod context;
pub mod endpoint;
pub mod endpoint_driver;
pub mod events;
pub mod limits;
pub mod liveness;
pub mod memory;
pub mod passive_cap;
pub mod provider;
pub mod rail;
pub mod selection;
pub mod slicing;
pub mod stats;
pub mod timeouts;
pub mod verbs;
pub mod worker;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::config::{env_flag, env_i64, env_u64};
use crate::error::{Error, Result};
use crate::metadata::descriptor::{DeviceDesc, PriorityMatrix, SegmentDesc};
use crate::metadata::handshake::HandShakeDesc;
use crate::metadata::name;
use crate::topology::hca_list;
use crate::transport::{LocalBuffer, Submission, Transport, TransportContext};

use context::RdmaContext;
use endpoint::{BackoffConfig, GENERATION_STRIDE};
use endpoint_driver::{state_label, Endpoint, HandshakeMode, PassiveOutcome};
use memory::{MemoryTable, Region};
use rail::RailBook;
use selection::{select_device, select_peer_device, SelectionPolicy};
use slicing::{cut, CutError, SliceParams};
use stats::Counters;
use worker::{ContextWorkers, Slice};

/// Names of usable RDMA devices from the selected provider, in order.
pub fn discover_devices() -> Vec<String> {
    provider::discover()
}

/// Settings read once at install (Mooncake names and defaults, §8).
#[derive(Clone, Debug)]
pub struct RdmaConfig {
    pub num_qp_per_ep: usize,
    pub max_wr: u32,
    pub max_sge: u32,
    pub max_inline: u32,
    pub max_cqe: usize,
    /// `MC_MAX_MR_SIZE`: larger registrations are split (upstream #2644).
    pub max_mr_size: u64,
    pub workers_per_ctx: usize,
    /// `MC_MAX_EP_PER_CTX`: endpoints per context before idle ones are evicted.
    pub max_ep_per_ctx: usize,
    pub retry_cnt: u32,
    pub slice: SliceParams,
    pub rail_pause: Duration,
    pub slice_timeout: Option<Duration>,
    /// `MC_TE_RS_FLUSH_GRACE_MS`: how long a timed-out WR's flush may take.
    pub flush_grace: Duration,
    pub policy: SelectionPolicy,
    pub handshake: HandshakeMode,
    /// Re-handshake pacing per peer NIC path (beyond upstream, issue #3299).
    pub backoff: BackoffConfig,
}

impl RdmaConfig {
    pub fn from_env() -> RdmaConfig {
        RdmaConfig {
            num_qp_per_ep: env_u64("MC_NUM_QP_PER_EP", 2, 1, 255) as usize,
            max_wr: env_u64("MC_MAX_WR", 256, 1, 65535) as u32,
            max_sge: env_u64("MC_MAX_SGE", 4, 1, 65535) as u32,
            max_inline: env_u64("MC_MAX_INLINE", 64, 0, 65535) as u32,
            max_cqe: env_u64("MC_MAX_CQE_PER_CTX", 4096, 1, 65535) as usize,
            max_mr_size: env_u64("MC_MAX_MR_SIZE", 1 << 40, 1, u64::MAX >> 1),
            workers_per_ctx: env_u64("MC_WORKERS_PER_CTX", 2, 1, 8) as usize,
            max_ep_per_ctx: env_u64("MC_MAX_EP_PER_CTX", 65536, 1, 65536) as usize,
            retry_cnt: env_u64("MC_RETRY_CNT", 9, 1, 127) as u32,
            slice: SliceParams::from_env(),
            rail_pause: Duration::from_secs(env_u64("MC_RDMA_RAIL_PAUSE_SECONDS", 30, 1, 3599)),
            slice_timeout: match env_i64("MC_SLICE_TIMEOUT", -1, 1, 65535) {
                s if s > 0 => Some(Duration::from_secs(s as u64)),
                _ => None,
            },
            flush_grace: Duration::from_millis(env_u64(
                "MC_TE_RS_FLUSH_GRACE_MS",
                10_000,
                1,
                3_600_000,
            )),
            policy: SelectionPolicy::from_env(),
            backoff: backoff_from_env(),
            handshake: HandshakeMode {
                legacy: env_flag("MC_TE_RS_LEGACY_HANDSHAKE"),
                ack_timeout: Duration::from_millis(env_u64(
                    "MC_READY_ACK_TIMEOUT_MS",
                    10_000,
                    1,
                    3_600_000,
                )),
                drop_ack: env_flag("MC_TE_RS_TEST_DROP_READY_ACK"),
                ack_delay: Duration::from_millis(env_u64(
                    "MC_TE_RS_TEST_READY_ACK_DELAY_MS",
                    0,
                    0,
                    600_000,
                )),
                rtr_delay: Duration::from_millis(env_u64(
                    "MC_TE_RS_TEST_RTR_DELAY_MS",
                    0,
                    0,
                    600_000,
                )),
                empty_gid: env_flag("MC_TE_RS_TEST_EMPTY_GID"),
            },
        }
    }
}

/// `MC_TE_RS_HANDSHAKE_BACKOFF_MS` (first delay after a failed handshake),
/// `MC_TE_RS_HANDSHAKE_BACKOFF_MAX_MS`, `MC_TE_RS_HANDSHAKE_MAX_ATTEMPTS`
/// per `MC_TE_RS_HANDSHAKE_WINDOW_SECS` (0 attempts: no cap).
fn backoff_from_env() -> BackoffConfig {
    let d = BackoffConfig::default();
    let ms = |v: u64| Duration::from_millis(v);
    let initial = ms(env_u64(
        "MC_TE_RS_HANDSHAKE_BACKOFF_MS",
        d.initial.as_millis() as u64,
        0,
        60_000,
    ));
    BackoffConfig {
        initial,
        max: ms(env_u64(
            "MC_TE_RS_HANDSHAKE_BACKOFF_MAX_MS",
            d.max.as_millis() as u64,
            0,
            600_000,
        ))
        .max(initial),
        max_attempts: env_u64(
            "MC_TE_RS_HANDSHAKE_MAX_ATTEMPTS",
            d.max_attempts as u64,
            0,
            1_000_000,
        ) as usize,
        window: Duration::from_secs(env_u64(
            "MC_TE_RS_HANDSHAKE_WINDOW_SECS",
            d.window.as_secs(),
            1,
            86_400,
        )),
        stable_after: d.stable_after,
    }
}

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
    next_generation: std::sync::atomic::AtomicU64,
    me: Weak<Shared>,
}

impl Shared {
    fn nic_path(&self, device: &str) -> String {
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
    pub fn start_handshake(&self, cw: Arc<ContextWorkers>, ep: Arc<Endpoint>) {
        let meta = self.tctx.metadata.clone();
        if ep.is_loopback() {
            // No RPC: QPs connect to themselves right here.
            let ok = ep.connect_active(&meta).is_ok();
            self.handshake_done(&cw, &ep, ok);
            ep.end_handshake();
            cw.wake_all();
            return;
        }
        let me = self.me.clone();
        let claimed = ep.clone();
        let spawned = std::thread::Builder::new()
            .name("te-rdma-handshake".into())
            .spawn(move || {
                let ok = ep.connect_active(&meta).is_ok();
                if let Some(sh) = me.upgrade() {
                    sh.handshake_done(&cw, &ep, ok);
                }
                ep.end_handshake();
                cw.wake_all();
            });
        if let Err(e) = spawned {
            log::error!("cannot start a handshake thread: {e}");
            claimed.end_handshake();
        }
    }

    /// A weak handle for threads the transport spawns.
    pub fn me(&self) -> Weak<Shared> {
        self.me.clone()
    }

    /// Feed an active attempt's outcome to the counters and the backoff.
    fn handshake_done(&self, cw: &ContextWorkers, ep: &Endpoint, ok: bool) {
        let now = std::time::Instant::now();
        let server = name::split_nic_path(&ep.peer_path).map(|(s, _)| s);
        if !ok {
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
        if ep.state() == endpoint::EndpointState::Connected {
            cw.handshake_connected(&ep.peer_path, now);
        }
    }

    /// Whether a rail of the peer other than `path` is usable now.
    pub fn has_alternative_rail(&self, target_id: crate::metadata::SegmentId, path: &str) -> bool {
        let Some(desc) = self.tctx.metadata.segment_desc(target_id) else {
            return false;
        };
        let server = desc.rdma_server_name.as_deref().unwrap_or(&desc.name);
        desc.devices.as_deref().unwrap_or(&[]).iter().any(|d| {
            let p = name::nic_path(server, &d.name);
            p != path && self.rails.usable(&p)
        })
    }

    /// Route (or re-route) a slice: local context and peer rail for its
    /// current retry count. `None` if no route exists.
    fn route(&self, s: &mut Slice) -> bool {
        let Some(desc) = self.tctx.metadata.segment_desc(s.target_id) else {
            return false;
        };
        let Some((bi, _)) = desc.find_buffer(s.dest, s.length) else {
            return false;
        };
        let Some(local) = self.pick_local(&s.location, s.retry) else {
            return false;
        };
        let lkey = match self.memory.read().find(s.source) {
            Some(r) => r.lkeys.get(local).copied().unwrap_or(0),
            None => return false,
        };
        let server = desc.rdma_server_name.as_deref().unwrap_or(&desc.name);
        let devices = desc.devices.as_deref().unwrap_or(&[]);
        let local_name = &self.contexts[local].name;
        let peer = select_peer_device(&desc, bi, s.retry, local_name, self.cfg.policy, |i| {
            self.rails.usable(&name::nic_path(server, &devices[i].name))
        });
        let Some(pi) = peer else { return false };
        let rkey = desc.buffers[bi]
            .rkey
            .as_ref()
            .and_then(|k| k.get(pi).copied());
        let Some(rkey) = rkey else { return false };
        s.local = local;
        s.lkey = lkey;
        s.rkey = rkey;
        s.peer_path = Arc::from(name::nic_path(server, &devices[pi].name));
        true
    }

    /// `route` for a first attempt, with the per-target lookups in `pr` and
    /// the local context chosen per request. Returns the posting thread.
    fn route_first(
        &self,
        s: &mut Slice,
        desc: &SegmentDesc,
        pr: &PeerRoutes,
        local: Option<usize>,
        mem: &MemoryTable,
    ) -> Option<usize> {
        let local = local?;
        let (bi, _) = desc.find_buffer(s.dest, s.length)?;
        let lkey = mem.find(s.source)?.lkeys.get(local).copied().unwrap_or(0);
        let local_name = &self.contexts[local].name;
        let pi = select_peer_device(desc, bi, 0, local_name, self.cfg.policy, |i| {
            pr.usable.get(i).copied().unwrap_or(false)
        })?;
        let rkey = desc.buffers[bi].rkey.as_ref()?.get(pi).copied()?;
        s.local = local;
        s.lkey = lkey;
        s.rkey = rkey;
        s.peer_path = pr.paths.get(pi)?.clone();
        let posters = self.workers[local].posters.len() as u64;
        Some((pr.hashes[pi] % posters) as usize)
    }

    /// An active local context for `location` at attempt `retry`.
    fn pick_local(&self, location: &str, retry: u32) -> Option<usize> {
        let by_name = |n: &str| {
            self.contexts
                .iter()
                .position(|c| c.name == n)
                .filter(|&i| self.contexts[i].is_active())
        };
        if let Some(i) = select_device(&self.matrix, location, retry, self.cfg.policy.round_robin)
            .and_then(by_name)
        {
            return Some(i);
        }
        let n = self.contexts.len() as u32;
        (1..=n.max(1) + retry)
            .filter_map(|r| select_device(&self.matrix, location, retry + r, false))
            .find_map(by_name)
            .or_else(|| self.contexts.iter().position(|c| c.is_active()))
    }

    fn enqueue(&self, s: Slice) {
        let cw = &self.workers[s.local];
        cw.worker_for(&s.peer_path).push(s);
    }

    /// The slice ended for good.
    pub fn fail_slice(&self, s: Slice) {
        self.counters.failed_slices.fetch_add(1, Ordering::Relaxed);
        s.task.slice_failed();
    }

    /// Consume one attempt; route again or fail when the budget is spent.
    pub fn retry_or_fail(&self, mut s: Slice, why: &str) {
        s.retry += 1;
        self.counters.retries.fetch_add(1, Ordering::Relaxed);
        if s.retry >= self.cfg.retry_cnt {
            crate::warn_limited!(
                "slice to {} failed after {} attempts ({why})",
                s.peer_path,
                s.retry
            );
            return self.fail_slice(s);
        }
        if self.route(&mut s) {
            self.enqueue(s);
        } else {
            crate::warn_limited!("slice to {}: no route left ({why})", s.peer_path);
            self.fail_slice(s);
        }
    }

    /// Move a slice off an inactive context without consuming an attempt.
    pub fn reroute(&self, mut s: Slice) {
        if self.route(&mut s) && self.contexts[s.local].is_active() {
            self.enqueue(s);
        } else {
            self.retry_or_fail(s, "local device down");
        }
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

/// Peer NIC paths of one target segment, computed once per submit call.
struct PeerRoutes {
    target_id: crate::metadata::SegmentId,
    paths: Vec<Arc<str>>,
    hashes: Vec<u64>,
    usable: Vec<bool>,
    empty: Arc<str>,
}

impl PeerRoutes {
    fn new(sh: &Shared, target_id: crate::metadata::SegmentId, desc: &SegmentDesc) -> Self {
        let server = desc.rdma_server_name.as_deref().unwrap_or(&desc.name);
        let paths: Vec<Arc<str>> = desc
            .devices
            .as_deref()
            .unwrap_or(&[])
            .iter()
            .map(|d| Arc::from(name::nic_path(server, &d.name)))
            .collect();
        PeerRoutes {
            target_id,
            hashes: paths.iter().map(|p| worker::path_hash(p)).collect(),
            usable: paths.iter().map(|p| sh.rails.usable(p)).collect(),
            paths,
            empty: Arc::from(""),
        }
    }
}

pub struct RdmaTransport {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

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
            next_generation: std::sync::atomic::AtomicU64::new(1),
            me: me.clone(),
        });
        let mut threads = Vec::new();
        for cw in &shared.workers {
            if cw.ctx.device.is_none() {
                continue;
            }
            let single = shared.cfg.workers_per_ctx < 2;
            for k in 0..cw.posters.len() {
                let (w, c) = (Arc::downgrade(&shared), cw.clone());
                threads.push(spawn(format!("te-rdma-post-{}", cw.ctx.name), move || {
                    worker::run_poster(w, c, k, single)
                })?);
            }
            if !single {
                let (w, c) = (Arc::downgrade(&shared), cw.clone());
                threads.push(spawn(format!("te-rdma-poll-{}", cw.ctx.name), move || {
                    worker::run_poller(w, c)
                })?);
            }
            let (w, c) = (Arc::downgrade(&shared), cw.clone());
            threads.push(spawn(
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

    /// Counters for diagnostics and tests (retries, error completions, ...).
    pub fn counters(&self) -> serde_json::Value {
        self.shared.counters.snapshot()
    }
}

fn spawn(name: String, f: impl FnOnce() + Send + 'static) -> Result<JoinHandle<()>> {
    std::thread::Builder::new()
        .name(name)
        .spawn(f)
        .map_err(|e| Error::Context(format!("cannot start an RDMA worker thread: {e}")))
}

impl Transport for RdmaTransport {
    fn protocol(&self) -> &'static str {
        "rdma"
    }

    fn register_memory(&self, buf: &LocalBuffer) -> Result<()> {
        let sh = &self.shared;
        let regions = memory::register(&sh.contexts, buf, sh.cfg.max_mr_size)?;
        let mut mem = sh.memory.write();
        for r in regions {
            mem.insert(r);
        }
        Ok(())
    }

    fn unregister_memory(&self, addr: u64) -> Result<()> {
        let sh = &self.shared;
        let gone = sh.memory.write().remove_registration(addr);
        memory::release(&sh.contexts, &gone);
        Ok(())
    }

    fn describe(&self, desc: &mut SegmentDesc, buffers: &[LocalBuffer]) {
        let sh = &self.shared;
        desc.protocol = "rdma".into();
        let rdma_name = limits::rdma_server_name(&sh.tctx.local_server_name);
        if rdma_name != sh.tctx.local_server_name {
            desc.rdma_server_name = Some(rdma_name);
        }
        desc.tcp_data_port = 0;
        desc.tcp_proto_version = 1;
        desc.devices = Some(
            sh.contexts
                .iter()
                .map(|c| DeviceDesc {
                    gid: c.gid_string(),
                    lid: c.lid(),
                    name: c.name.clone(),
                })
                .collect(),
        );
        desc.priority_matrix = Some(if sh.matrix.is_empty() {
            None
        } else {
            Some(sh.matrix.clone())
        });
        let mem = sh.memory.read();
        desc.buffers = buffers
            .iter()
            .flat_map(|b| mem.chunks_of(b.addr).map(Region::describe))
            .collect();
    }

    fn submit(&self, subs: Vec<Submission>) -> Result<()> {
        let sh = &self.shared;
        // Cut everything first: an unregistered source refuses the call.
        let mut cuts = Vec::with_capacity(subs.len());
        let mut locations: Vec<Arc<str>> = Vec::new();
        {
            let mem = sh.memory.read();
            for s in &subs {
                let r = s.request;
                let pieces = cut(
                    sh.cfg.slice,
                    r.source,
                    r.target_offset,
                    r.length,
                    |a| mem.find(a).map(|m| m.end()),
                    |a| {
                        s.target
                            .buffers
                            .iter()
                            .find(|b| a >= b.addr && a < b.end())
                            .map(|b| b.end())
                    },
                );
                match pieces {
                    Err(CutError::LocalNotRegistered(off)) => {
                        return Err(Error::AddressNotRegistered(format!(
                            "local address {:#x} is in no registered region",
                            r.source.wrapping_add(off)
                        )))
                    }
                    other => {
                        let name = mem.find(r.source).map_or("*", |m| m.buf.location.as_str());
                        // One shared string per distinct location per call,
                        // not one allocation per request.
                        let location = match locations.iter().find(|l| &***l == name) {
                            Some(l) => l.clone(),
                            None => {
                                let l: Arc<str> = Arc::from(name);
                                locations.push(l.clone());
                                l
                            }
                        };
                        cuts.push((other, location));
                    }
                }
            }
        }
        let nposters = sh
            .workers
            .iter()
            .map(|w| w.posters.len())
            .max()
            .unwrap_or(1);
        let mut per: Vec<Vec<Slice>> = (0..sh.contexts.len() * nposters)
            .map(|_| Vec::new())
            .collect();
        let mut routes: Vec<PeerRoutes> = Vec::new();
        for (s, (pieces, location)) in subs.into_iter().zip(cuts) {
            let r = s.request;
            let pieces = match pieces {
                Ok(p) => p,
                Err(e) => {
                    log::error!(
                        "request to segment {} [{:#x}, +{}) is outside its buffers: {e:?}",
                        r.target_id,
                        r.target_offset,
                        r.length
                    );
                    s.task.fail_all();
                    continue;
                }
            };
            s.task.set_slices(pieces.len() as u64);
            // Per target: peer NIC paths, rail state and posting thread,
            // looked up once per call instead of once per slice.
            let ri = match routes.iter().position(|p| p.target_id == r.target_id) {
                Some(i) => i,
                None => {
                    routes.push(PeerRoutes::new(sh, r.target_id, &s.target));
                    routes.len() - 1
                }
            };
            let pr = &routes[ri];
            let local = sh.pick_local(&location, 0);
            let mem = sh.memory.read();
            for p in pieces {
                let mut slice = Slice {
                    task: s.task.clone(),
                    opcode: r.opcode,
                    source: r.source + p.offset,
                    length: p.len,
                    dest: r.target_offset + p.offset,
                    target_id: r.target_id,
                    location: location.clone(),
                    retry: 0,
                    local: 0,
                    lkey: 0,
                    peer_path: pr.empty.clone(),
                    rkey: 0,
                };
                match sh.route_first(&mut slice, &s.target, pr, local, &mem) {
                    Some(k) => per[slice.local * nposters + k].push(slice),
                    None => {
                        log::error!(
                            "no RDMA route to segment {} for {:#x}",
                            r.target_id,
                            slice.dest
                        );
                        sh.fail_slice(slice);
                    }
                }
            }
        }
        // One queue lock and one wake-up per posting thread per call.
        for (i, v) in per.into_iter().enumerate() {
            if !v.is_empty() {
                sh.workers[i / nposters].posters[i % nposters].push_many(v);
            }
        }
        Ok(())
    }

    fn on_connection(&self, req: &HandShakeDesc) -> HandShakeDesc {
        let sh = &self.shared;
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

    fn nic_load(&self) -> Vec<(String, u64, f64)> {
        self.shared
            .contexts
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.stats.inflight_bytes(),
                    c.stats.bandwidth(),
                )
            })
            .collect()
    }

    fn links(&self) -> serde_json::Value {
        let sh = &self.shared;
        let devices: Vec<serde_json::Value> = sh
            .contexts
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "nic_path": sh.nic_path(&c.name),
                    "active": c.is_active(),
                    "gid": c.gid_string(),
                    "lid": c.lid(),
                    "inflight_bytes": c.stats.inflight_bytes(),
                    "completed_bytes": c.stats.completed_bytes(),
                    "posted_slices": c.stats.posted_slices(),
                })
            })
            .collect();
        let mut endpoints = Vec::new();
        for c in &sh.contexts {
            let eps = c.endpoints.lock();
            let mut v: Vec<_> = eps.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            for (peer, ep) in v {
                endpoints.push(serde_json::json!({
                    "device": c.name,
                    "peer": peer,
                    "state": state_label(ep.state()),
                    "qpns": ep.qp_nums(),
                    "outstanding": ep.outstanding(),
                }));
            }
        }
        serde_json::json!({
            "devices": devices,
            "endpoints": endpoints,
            "paused_rails": sh.rails.paused(),
            "counters": sh.counters.snapshot(),
        })
    }

    fn shutdown(&self) {
        let sh = &self.shared;
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
            let infl: Vec<_> = cw.inflight.lock().drain().map(|(_, f)| f).collect();
            for f in infl {
                sh.fail_slice(f.slice);
            }
            sh.retire_context_endpoints(&cw.ctx, "transport shutdown");
            cw.unflushed.lock().clear();
            cw.ctx.mrs.lock().clear();
        }
        sh.memory.write().clear();
        log::info!("RDMA transport stopped");
    }
}
