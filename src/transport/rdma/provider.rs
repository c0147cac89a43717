//! Adapts the verbs layer (`verbs::Provider`, ibverbs or soft) to the
//! transport's device view in `context.rs`: one PD and one CQ per device,
//! Mooncake's QP attributes, completion statuses classified for the worker.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};

use crate::config::{env_i64, env_u64};
use crate::error::{Error, Result};

use super::device::{
    Completion, CompletionStatus, Device, DeviceEvent, MemoryRegion, QueuePair, WorkRequest,
};
use super::verbs::{self, AsyncEventKind, WcStatus};

/// Name of the provider `MC_RDMA_PROVIDER` selects.
pub fn selected() -> &'static str {
    verbs::provider().name()
}

/// Devices of the selected provider with an active port, in provider order
/// (`MC_TE_FILTERS` narrows the list).
pub fn discover() -> Vec<String> {
    let filters: Option<Vec<String>> = crate::config::env_str("MC_TE_FILTERS").map(|f| {
        f.split(',')
            .map(|s| s.trim().to_string())
            .filter(|s| !s.is_empty())
            .collect()
    });
    match verbs::provider().devices() {
        Ok(devs) => devs
            .into_iter()
            .filter(|d| d.port_active)
            .map(|d| d.name)
            .filter(|n| filters.as_ref().is_none_or(|f| f.contains(n)))
            .collect(),
        Err(e) => {
            log::warn!("RDMA device discovery failed: {e}");
            Vec::new()
        }
    }
}

/// Open `name` with a PD and one CQ, clamping `cfg` to the device's limits
/// first (`limits.rs`; each lowered value is logged).
pub fn open(name: &str, cfg: &mut super::RdmaConfig) -> Result<Arc<dyn Device>> {
    let provider = verbs::provider();
    let ctx = provider.open(name, &verbs::OpenOptions::from_env())?;
    super::limits::clamp_and_log(cfg, name, &ctx.limits());
    let pd = ctx.alloc_pd()?;
    let cq = ctx.create_cq(cfg.max_cqe)?;
    let port = ctx.port_info().clone();
    let gid = Arc::new(RwLock::new((port.gid, port.gid_index)));
    let mut caps = verbs::QpCaps {
        max_send_wr: cfg.max_wr,
        max_recv_wr: cfg.max_wr,
        max_send_sge: cfg.max_sge,
        max_recv_sge: cfg.max_sge,
        max_inline_data: cfg.max_inline,
    };
    caps.max_inline_data = probe_inline(name, &pd, &cq, caps);
    let confirm_reads = confirm_reads(name, ctx.software_roce(), cfg.max_wr);
    Ok(Arc::new(VerbsDevice {
        name: name.to_string(),
        ctx,
        pd,
        cq,
        wcs: Mutex::new(Vec::with_capacity(64)),
        path_mtu: port.active_mtu.min(super::limits::mtu_setting()),
        port,
        gid,
        down: AtomicBool::new(false),
        caps,
        traffic_class: env_i64("MC_IB_TC", 0, 0, 255) as u8,
        sl: env_i64("MC_IB_SL", 0, 0, 15) as u8,
        pkey_index: super::limits::pkey_index(),
        rts: rts_from_env(),
        confirm_reads,
    }))
}

/// `MC_TE_RS_CONFIRM_READS`: `auto` (default: on software RoCE devices),
/// `1`/`on` or `0`/`off`. A confirming WR needs a second QP slot.
fn confirm_reads(name: &str, software: bool, max_wr: u32) -> bool {
    let v = crate::config::env_str("MC_TE_RS_CONFIRM_READS").map(|v| v.trim().to_ascii_lowercase());
    let on = match v.as_deref() {
        None | Some("") | Some("auto") => software,
        Some("1") | Some("on") | Some("true") | Some("yes") => true,
        Some("0") | Some("off") | Some("false") | Some("no") => false,
        Some(other) => {
            log::warn!("MC_TE_RS_CONFIRM_READS={other} is unknown (auto|1|0), using auto");
            software
        }
    };
    if on && max_wr < 2 {
        log::warn!("RDMA device {name}: READs are not confirmed: MC_MAX_WR={max_wr} leaves no slot for the confirming WR");
        return false;
    }
    if on {
        log::info!(
            "RDMA device {name}: chains ending in a READ are confirmed by a zero-length WRITE"
        );
    }
    on
}

/// The largest inline size (≤ `caps.max_inline_data`) the device accepts
/// at QP creation, found with one probe QP: ibv_query_device does not
/// report it, and a refused value would fail every endpoint.
fn probe_inline(
    name: &str,
    pd: &Arc<dyn verbs::Pd>,
    cq: &Arc<dyn verbs::Cq>,
    caps: verbs::QpCaps,
) -> u32 {
    let first = match pd.create_qp(cq, &caps) {
        Ok(_) => return caps.max_inline_data,
        Err(e) => e,
    };
    for v in super::limits::inline_fallbacks(caps.max_inline_data) {
        let c = verbs::QpCaps {
            max_inline_data: v,
            ..caps
        };
        if pd.create_qp(cq, &c).is_ok() {
            log::warn!(
                "RDMA device {name}: MC_MAX_INLINE={} lowered to {v} (the device refuses more: {first})",
                caps.max_inline_data
            );
            return v;
        }
    }
    // Not an inline problem: endpoint creation reports the real error.
    caps.max_inline_data
}

/// Mooncake's RTS attributes (timeout 14 ≈ 67 ms local ACK timeout,
/// retry_cnt 7); `MC_IB_TIMEOUT` (1..31; 0, infinite, is refused so a lost WR
/// cannot hang) and `MC_IB_RETRY_CNT` (0..7) override them.
fn rts_from_env() -> verbs::RtsAttrs {
    let d = verbs::RtsAttrs::default();
    verbs::RtsAttrs {
        timeout: env_u64("MC_IB_TIMEOUT", d.timeout as u64, 1, 31) as u8,
        retry_cnt: env_u64("MC_IB_RETRY_CNT", d.retry_cnt as u64, 0, 7) as u8,
        ..d
    }
}

struct VerbsDevice {
    name: String,
    ctx: Arc<dyn verbs::Context>,
    pd: Arc<dyn verbs::Pd>,
    cq: Arc<dyn verbs::Cq>,
    /// Completions as the verbs layer returns them, reused across polls.
    wcs: Mutex<Vec<verbs::WorkCompletion>>,
    port: verbs::PortInfo,
    /// Selected (GID, index); re-read on `GID_CHANGE`.
    gid: Arc<RwLock<(verbs::Gid, u8)>>,
    path_mtu: u32,
    down: AtomicBool,
    caps: verbs::QpCaps,
    traffic_class: u8,
    sl: u8,
    rts: verbs::RtsAttrs,
    confirm_reads: bool,
    pkey_index: u16,
}

struct VerbsMr(Box<dyn verbs::Mr>);

impl MemoryRegion for VerbsMr {
    fn lkey(&self) -> u32 {
        self.0.lkey()
    }
    fn rkey(&self) -> u32 {
        self.0.rkey()
    }
}

struct VerbsQp {
    qp: Arc<dyn verbs::Qp>,
    ctx: Arc<dyn verbs::Context>,
    device: String,
    port: u8,
    /// The device's current selection (read at each connect).
    gid: Arc<RwLock<(verbs::Gid, u8)>>,
    path_mtu: u32,
    traffic_class: u8,
    sl: u8,
    rts: verbs::RtsAttrs,
    pkey_index: u16,
}

impl QueuePair for VerbsQp {
    fn qp_num(&self) -> u32 {
        self.qp.qp_num()
    }

    fn connect(&self, peer_qpn: u32, peer_gid: [u8; 16], peer_lid: u16) -> Result<()> {
        if self.qp.state() != verbs::QpState::Reset {
            self.qp.reset()?;
        }
        self.qp.modify_to_init(&verbs::InitAttrs {
            port: self.port,
            pkey_index: self.pkey_index,
            ..Default::default()
        })?;
        let rtr = |sgid_index: u8| {
            self.qp.modify_to_rtr(&verbs::RtrAttrs {
                dest_qp_num: peer_qpn,
                dgid: peer_gid,
                dlid: peer_lid,
                path_mtu: self.path_mtu,
                sgid_index,
                port: self.port,
                traffic_class: self.traffic_class,
                sl: self.sl,
                ..Default::default()
            })
        };
        let mut tried = self.gid.read().1;
        let mut result = rtr(tried);
        // The GID table may have changed under us (an address removed and
        // re-added moves its GID): re-probe and retry, as upstream's
        // MC_AUTO_GID_MAX_RETRIES.
        for attempt in 1..=super::limits::auto_gid_retries() {
            let Err(e) = &result else { break };
            if !refresh_gid(&*self.ctx, &self.gid, &self.device) {
                break;
            }
            let now = self.gid.read().1;
            if now == tried {
                break;
            }
            log::warn!(
                "RDMA device {}: RTR with GID[{tried}] failed ({e}); retrying with GID[{now}] (attempt {attempt})",
                self.device
            );
            tried = now;
            result = rtr(now);
        }
        result?;
        self.qp.modify_to_rts(&self.rts)
    }

    fn set_error(&self) {
        if let Err(e) = self.qp.modify_to_err() {
            log::debug!("QP {} to ERR: {e}", self.qp.qp_num());
        }
    }

    fn post(&self, wrs: &[WorkRequest]) -> Result<usize> {
        match self.qp.post_send(wrs) {
            Ok(()) => Ok(wrs.len()),
            Err(e) if e.posted > 0 => {
                log::warn!("post_send on QP {}: {e}", self.qp.qp_num());
                Ok(e.posted)
            }
            Err(e) => Err(e.error),
        }
    }
}

/// Re-select the GID of `ctx` into `cur`; true if it changed.
fn refresh_gid(ctx: &dyn verbs::Context, cur: &RwLock<(verbs::Gid, u8)>, name: &str) -> bool {
    match ctx.reselect_gid() {
        Ok(now) => {
            let mut cur = cur.write();
            if *cur == now {
                return false;
            }
            log::warn!(
                "RDMA device {name}: GID[{}] {} replaces GID[{}] {}",
                now.1,
                verbs::gid_to_string(&now.0),
                cur.1,
                verbs::gid_to_string(&cur.0)
            );
            *cur = now;
            true
        }
        Err(e) => {
            log::warn!("RDMA device {name}: GIDs not re-read: {e}");
            false
        }
    }
}

/// Upstream's rights: LOCAL_WRITE, plus REMOTE_WRITE | REMOTE_READ only for
/// a remote-accessible buffer, plus relaxed ordering (an optional bit that
/// libibverbs drops where unsupported) unless `MC_IB_PCI_RELAXED_ORDERING=0`.
fn access(remote: bool) -> verbs::Access {
    let mut a = verbs::Access::LOCAL_WRITE;
    if remote {
        a = a | verbs::Access::REMOTE_WRITE | verbs::Access::REMOTE_READ;
    }
    if super::limits::relaxed_ordering() {
        a = a | verbs::Access::RELAXED_ORDERING;
    }
    a
}

fn classify(s: WcStatus) -> CompletionStatus {
    match s {
        WcStatus::Success => CompletionStatus::Success,
        WcStatus::WrFlushError => CompletionStatus::Flushed,
        s if s.is_local_fault() => CompletionStatus::LocalError,
        WcStatus::RemoteAccessError | WcStatus::RemoteInvalidRequestError => {
            CompletionStatus::RequestError
        }
        _ => CompletionStatus::RemoteError,
    }
}

impl Device for VerbsDevice {
    fn name(&self) -> &str {
        &self.name
    }

    fn gid(&self) -> [u8; 16] {
        self.gid.read().0
    }

    fn refresh_gid(&self) -> bool {
        refresh_gid(&*self.ctx, &self.gid, &self.name)
    }

    fn lid(&self) -> u16 {
        self.port.lid
    }

    fn register(&self, addr: u64, len: u64, remote: bool) -> Result<Box<dyn MemoryRegion>> {
        let len = usize::try_from(len)
            .map_err(|_| Error::InvalidArgument(format!("region length {len} too large")))?;
        // SAFETY: the engine's registration contract: the caller keeps
        // `[addr, addr+len)` allocated until it unregisters the region, and
        // unregistering drops this MR (context.mrs) before returning.
        let mr = unsafe { self.pd.reg_mr(addr, len, access(remote))? };
        Ok(Box::new(VerbsMr(mr)))
    }

    fn create_qp(&self, max_wr: u32) -> Result<Box<dyn QueuePair>> {
        let caps = verbs::QpCaps {
            max_send_wr: max_wr,
            max_recv_wr: max_wr,
            ..self.caps
        };
        let qp = self.pd.create_qp(&self.cq, &caps)?;
        Ok(Box::new(VerbsQp {
            qp,
            ctx: self.ctx.clone(),
            device: self.name.clone(),
            port: self.port.port,
            gid: self.gid.clone(),
            path_mtu: self.path_mtu,
            traffic_class: self.traffic_class,
            sl: self.sl,
            rts: self.rts.clone(),
            pkey_index: self.pkey_index,
        }))
    }

    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> usize {
        // One polling thread per device: the lock is uncontended; the
        // buffer is reused, so a poll allocates nothing.
        let mut wcs = self.wcs.lock();
        wcs.clear();
        match self.cq.poll_into(&mut wcs, max) {
            Ok(n) => {
                out.extend(wcs.iter().map(|wc| Completion {
                    wr_id: wc.wr_id,
                    status: classify(wc.status),
                }));
                n
            }
            Err(e) => {
                // An overflowed CQ stays in error: say so once, not per poll.
                if !self.down.swap(true, Ordering::AcqRel) {
                    log::error!("CQ of {}: {e}", self.name);
                }
                0
            }
        }
    }

    fn arm_completions(&self) {
        self.cq.arm();
    }

    fn wait_completions(&self, timeout: Duration) {
        self.cq.wait(timeout);
    }

    fn interrupt_completions(&self) {
        self.cq.interrupt();
    }

    fn is_down(&self) -> bool {
        self.down.load(Ordering::Acquire)
    }

    fn confirms_reads(&self) -> bool {
        self.confirm_reads
    }

    fn port_active(&self) -> bool {
        self.port.active
    }

    fn wait_events(&self, timeout: Duration, out: &mut Vec<DeviceEvent>) {
        match self.ctx.async_fd() {
            Some(fd) => {
                let mut pfd = libc::pollfd {
                    fd,
                    events: libc::POLLIN,
                    revents: 0,
                };
                // SAFETY: one valid pollfd; the fd belongs to the open
                // device context, which outlives this call.
                unsafe { libc::poll(&mut pfd, 1, timeout.as_millis() as libc::c_int) };
            }
            // The soft fabric queues events in memory: check at a short pace.
            None => std::thread::sleep(timeout.min(Duration::from_millis(10))),
        }
        loop {
            let ev = match self.ctx.poll_async_event() {
                Ok(Some(ev)) => ev,
                Ok(None) => break,
                Err(e) => {
                    log::warn!("async events of {}: {e}", self.name);
                    break;
                }
            };
            let mapped = match ev.kind {
                AsyncEventKind::PortErr => Some(DeviceEvent::PortDown),
                AsyncEventKind::PortActive => Some(DeviceEvent::PortUp),
                AsyncEventKind::DeviceFatal | AsyncEventKind::CqErr | AsyncEventKind::WqFatal => {
                    Some(DeviceEvent::Fatal)
                }
                AsyncEventKind::QpFatal
                | AsyncEventKind::QpReqErr
                | AsyncEventKind::QpAccessErr => ev.qp_num.map(DeviceEvent::QpFatal),
                AsyncEventKind::GidChange => Some(DeviceEvent::GidChange),
                _ => None,
            };
            match mapped {
                Some(_) => log::warn!("RDMA device {}: async event {:?}", self.name, ev.kind),
                None => log::info!("RDMA device {}: async event {:?}", self.name, ev.kind),
            }
            out.extend(mapped);
        }
    }
}
