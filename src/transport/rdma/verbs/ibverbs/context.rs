//! An opened device (`ibv_open_device`), its port and GID, async events.

use std::ptr::NonNull;
use std::sync::Arc;

use parking_lot::Mutex;
use rdma_sys as ffi;

use super::cq::IbvCq;
use super::gid::read_gid_table;
use super::pd::IbvPd;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::{last_errno, verb_error};
use crate::transport::rdma::verbs::gid::select_gid;
use crate::transport::rdma::verbs::types::*;
use crate::transport::rdma::verbs::{Context, Cq, Pd};

/// Owns `ibv_context`; closed when the last PD/CQ/QP/MR using it is gone.
pub(super) struct ContextHandle {
    pub ctx: NonNull<ffi::ibv_context>,
    pub name: String,
    pub gid: Gid,
    /// CQs (as addresses) named by a `CQ_ERR` event: rxe drops completions
    /// that do not fit and says so only by that event, so `poll` reports it.
    overflowed_cqs: Mutex<Vec<usize>>,
}

impl ContextHandle {
    pub fn cq_overflowed(&self, cq: *mut ffi::ibv_cq) -> bool {
        self.overflowed_cqs.lock().contains(&(cq as usize))
    }

    /// The CQ is destroyed: its address may be reused.
    pub fn forget_cq(&self, cq: *mut ffi::ibv_cq) {
        self.overflowed_cqs.lock().retain(|c| *c != cq as usize);
    }
}

// SAFETY: libibverbs verbs are thread-safe on a context (rdma-core
// documents all ibv_* calls except the data path on one QP/CQ as
// thread-safe, and those providers lock internally); the handle is only
// closed in Drop, when no other reference exists.
unsafe impl Send for ContextHandle {}
// SAFETY: see Send; shared references only make thread-safe verbs calls.
unsafe impl Sync for ContextHandle {}

impl Drop for ContextHandle {
    fn drop(&mut self) {
        // SAFETY: `ctx` came from ibv_open_device and all objects created on
        // it hold an Arc to this handle, so none is alive any more.
        let rc = unsafe { ffi::ibv_close_device(self.ctx.as_ptr()) };
        if rc != 0 {
            log::warn!("ibv_close_device {}: rc {rc}", self.name);
        }
    }
}

pub(super) struct IbvContext {
    pub handle: Arc<ContextHandle>,
    port: PortInfo,
    limits: DeviceLimits,
    /// `ibv_device_attr::vendor_id`.
    vendor_id: u32,
    /// `MC_GID_INDEX` (None: automatic ranking), for `reselect_gid`.
    gid_choice: Option<u8>,
}

/// `ibv_query_device`: the limits the transport clamps its settings to,
/// and the vendor id.
fn query_limits(ctx: NonNull<ffi::ibv_context>, name: &str) -> Result<(DeviceLimits, u32)> {
    // SAFETY: ibv_device_attr is a plain C struct; all-zero is valid.
    let mut attr: ffi::ibv_device_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `ctx` is an open context and `attr` a valid out-parameter.
    let rc = unsafe { ffi::ibv_query_device(ctx.as_ptr(), &mut attr) };
    if rc != 0 {
        let errno = if rc > 0 { rc } else { last_errno() };
        return Err(verb_error("ibv_query_device", "open", errno, name));
    }
    let positive = |v: libc::c_int| if v > 0 { v as u32 } else { u32::MAX };
    let limits = DeviceLimits {
        max_qp: positive(attr.max_qp),
        max_qp_wr: positive(attr.max_qp_wr),
        max_sge: positive(attr.max_sge),
        max_cq: positive(attr.max_cq),
        max_cqe: positive(attr.max_cqe),
        max_mr_size: if attr.max_mr_size > 0 {
            attr.max_mr_size
        } else {
            u64::MAX
        },
    };
    Ok((limits, attr.vendor_id))
}

/// Vendor ids of the kernel's software RoCE drivers: rxe (`RXE_VENDOR_ID`)
/// and siw (`SIW_VENDOR_ID`, "bmt").
const SOFTWARE_ROCE_VENDORS: [u32; 2] = [0x00ff_ffff, 0x0062_6d74];

fn query_port_attr(
    ctx: NonNull<ffi::ibv_context>,
    name: &str,
    port: u8,
) -> Result<ffi::ibv_port_attr> {
    // SAFETY: ibv_port_attr is a plain C struct; all-zero is valid.
    let mut attr: ffi::ibv_port_attr = unsafe { std::mem::zeroed() };
    // SAFETY: `ctx` is an open context and `attr` a valid out-parameter.
    let rc = unsafe { ffi::___ibv_query_port(ctx.as_ptr(), port, &mut attr) };
    if rc != 0 {
        let errno = if rc > 0 { rc } else { last_errno() };
        return Err(verb_error(
            "ibv_query_port",
            "open",
            errno,
            &format!("{name} port {port}"),
        ));
    }
    Ok(attr)
}

impl IbvContext {
    pub fn open_raw(
        name: &str,
        dev: *mut ffi::ibv_device,
        opts: &OpenOptions,
    ) -> Result<IbvContext> {
        // SAFETY: `dev` is an entry of a live device list.
        let raw = unsafe { ffi::ibv_open_device(dev) };
        let ctx = NonNull::new(raw)
            .ok_or_else(|| verb_error("ibv_open_device", "open", last_errno(), name))?;
        let mut handle = ContextHandle {
            ctx,
            name: name.to_string(),
            gid: [0; 16],
            overflowed_cqs: Mutex::new(Vec::new()),
        };
        // Async events are polled, never waited for.
        // SAFETY: `ctx` is open; async_fd is a valid descriptor it owns.
        unsafe {
            let fd = (*ctx.as_ptr()).async_fd;
            let flags = libc::fcntl(fd, libc::F_GETFL);
            if flags < 0 || libc::fcntl(fd, libc::F_SETFL, flags | libc::O_NONBLOCK) < 0 {
                log::warn!("{name}: cannot make the async event fd non-blocking");
            }
        }
        let (limits, vendor_id) = query_limits(ctx, name)?;
        let attr = query_port_attr(ctx, name, opts.port)?;
        let (gid, gid_index) = pick_gid(ctx, name, opts.port, &attr, opts.gid_index)?;
        handle.gid = gid;
        let port = PortInfo {
            port: opts.port,
            active: attr.state == ffi::ibv_port_state::IBV_PORT_ACTIVE,
            lid: attr.lid,
            gid,
            gid_index,
            active_mtu: mtu_to_bytes(attr.active_mtu),
        };
        log::info!(
            "RDMA device {name} port {}: GID[{gid_index}] {} lid {} MTU {} {}",
            port.port,
            gid_to_string(&gid),
            port.lid,
            port.active_mtu,
            if port.active { "active" } else { "NOT active" }
        );
        Ok(IbvContext {
            handle: Arc::new(handle),
            port,
            limits,
            vendor_id,
            gid_choice: opts.gid_index,
        })
    }
}

/// The GID of `port` to use: `choice` (`MC_GID_INDEX`) or the automatic
/// ranking of the current table.
fn pick_gid(
    ctx: NonNull<ffi::ibv_context>,
    name: &str,
    port: u8,
    attr: &ffi::ibv_port_attr,
    choice: Option<u8>,
) -> Result<(Gid, u8)> {
    let table = read_gid_table(
        ctx.as_ptr(),
        name,
        port,
        attr.gid_tbl_len.max(0) as usize,
        attr.link_layer == 1,
    );
    let gid_index = match choice {
        Some(i) => i,
        None => select_gid(&table).ok_or_else(|| {
            verb_error(
                "ibv_query_gid",
                "open",
                libc::ENODEV,
                &format!("{name} port {port} has no usable GID"),
            )
        })?,
    };
    let gid = table
        .iter()
        .find(|c| c.index == gid_index)
        .map(|c| c.gid)
        .ok_or_else(|| {
            verb_error(
                "ibv_query_gid",
                "open",
                libc::EINVAL,
                &format!("{name} port {port} GID index {gid_index} is empty"),
            )
        })?;
    Ok((gid, gid_index))
}

fn event_kind(t: ffi::ibv_event_type) -> AsyncEventKind {
    use ffi::ibv_event_type::*;
    match t {
        IBV_EVENT_CQ_ERR => AsyncEventKind::CqErr,
        IBV_EVENT_QP_FATAL => AsyncEventKind::QpFatal,
        IBV_EVENT_QP_REQ_ERR => AsyncEventKind::QpReqErr,
        IBV_EVENT_QP_ACCESS_ERR => AsyncEventKind::QpAccessErr,
        IBV_EVENT_COMM_EST => AsyncEventKind::CommEst,
        IBV_EVENT_DEVICE_FATAL => AsyncEventKind::DeviceFatal,
        IBV_EVENT_PORT_ACTIVE => AsyncEventKind::PortActive,
        IBV_EVENT_PORT_ERR => AsyncEventKind::PortErr,
        IBV_EVENT_LID_CHANGE => AsyncEventKind::LidChange,
        IBV_EVENT_PKEY_CHANGE => AsyncEventKind::PkeyChange,
        IBV_EVENT_GID_CHANGE => AsyncEventKind::GidChange,
        IBV_EVENT_WQ_FATAL => AsyncEventKind::WqFatal,
        other => AsyncEventKind::Other(other as u32),
    }
}

impl Context for IbvContext {
    fn device_name(&self) -> &str {
        &self.handle.name
    }

    fn port_info(&self) -> &PortInfo {
        &self.port
    }

    fn limits(&self) -> DeviceLimits {
        self.limits
    }

    fn software_roce(&self) -> bool {
        SOFTWARE_ROCE_VENDORS.contains(&self.vendor_id)
    }

    fn reselect_gid(&self) -> Result<(Gid, u8)> {
        let attr = query_port_attr(self.handle.ctx, &self.handle.name, self.port.port)?;
        pick_gid(
            self.handle.ctx,
            &self.handle.name,
            self.port.port,
            &attr,
            self.gid_choice,
        )
    }

    fn query_port(&self) -> Result<PortInfo> {
        let attr = query_port_attr(self.handle.ctx, &self.handle.name, self.port.port)?;
        let mut gid = ffi::ibv_gid { raw: [0; 16] };
        // SAFETY: open context, valid out-parameter.
        let rc = unsafe {
            ffi::ibv_query_gid(
                self.handle.ctx.as_ptr(),
                self.port.port,
                self.port.gid_index as i32,
                &mut gid,
            )
        };
        if rc != 0 {
            return Err(verb_error(
                "ibv_query_gid",
                "query",
                last_errno(),
                &self.handle.name,
            ));
        }
        Ok(PortInfo {
            port: self.port.port,
            active: attr.state == ffi::ibv_port_state::IBV_PORT_ACTIVE,
            lid: attr.lid,
            // SAFETY: any bit pattern is a valid byte array.
            gid: unsafe { gid.raw },
            gid_index: self.port.gid_index,
            active_mtu: mtu_to_bytes(attr.active_mtu),
        })
    }

    fn alloc_pd(&self) -> Result<Arc<dyn Pd>> {
        Ok(Arc::new(IbvPd::alloc(self.handle.clone())?))
    }

    fn create_cq(&self, depth: usize) -> Result<Arc<dyn Cq>> {
        Ok(Arc::new(IbvCq::create(self.handle.clone(), depth)?))
    }

    fn poll_async_event(&self) -> Result<Option<AsyncEvent>> {
        // SAFETY: the struct is plain data filled by libibverbs; zero is a
        // valid initial value.
        let mut ev: ffi::ibv_async_event = unsafe { std::mem::zeroed() };
        // SAFETY: open context, valid out-parameter; the fd is non-blocking.
        let rc = unsafe { ffi::ibv_get_async_event(self.handle.ctx.as_ptr(), &mut ev) };
        if rc != 0 {
            let errno = last_errno();
            if errno == libc::EAGAIN {
                return Ok(None);
            }
            return Err(verb_error(
                "ibv_get_async_event",
                "poll",
                errno,
                &self.handle.name,
            ));
        }
        let kind = event_kind(ev.event_type);
        let (port, qp_num) = match kind {
            AsyncEventKind::PortActive
            | AsyncEventKind::PortErr
            | AsyncEventKind::LidChange
            | AsyncEventKind::PkeyChange
            | AsyncEventKind::GidChange => {
                // SAFETY: port events carry `port_num` in the union.
                (unsafe { ev.element.port_num } as u8, None)
            }
            AsyncEventKind::QpFatal
            | AsyncEventKind::QpReqErr
            | AsyncEventKind::QpAccessErr
            | AsyncEventKind::CommEst => {
                // SAFETY: QP events carry a live `qp` pointer until acked.
                let qp = unsafe { ev.element.qp };
                // SAFETY: checked non-NULL; the QP lives until the event is acked.
                (0, (!qp.is_null()).then(|| unsafe { (*qp).qp_num }))
            }
            AsyncEventKind::CqErr => {
                // SAFETY: CQ events carry the CQ pointer in the union.
                let cq = unsafe { ev.element.cq };
                log::warn!(
                    "RDMA device {}: CQ overflow, completions lost",
                    self.handle.name
                );
                self.handle.overflowed_cqs.lock().push(cq as usize);
                (0, None)
            }
            _ => (0, None),
        };
        // SAFETY: `ev` was returned by ibv_get_async_event and is acked once.
        unsafe { ffi::ibv_ack_async_event(&mut ev) };
        Ok(Some(AsyncEvent { kind, port, qp_num }))
    }

    fn async_fd(&self) -> Option<i32> {
        // SAFETY: open context; reading a plain field.
        Some(unsafe { (*self.handle.ctx.as_ptr()).async_fd })
    }
}
