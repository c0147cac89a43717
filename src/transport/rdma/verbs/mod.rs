//! The verbs layer: one object-safe, thread-safe interface over RDMA verbs
//! with two providers, picked at run time by `MC_RDMA_PROVIDER`:
//!
//! * `ibverbs` (default): libibverbs through `rdma-sys`.
//! * `soft`: an in-process software fabric that enforces the QP rules that
//!   matter to the transport (states, keys, bounds, CQ depth, ordering) and can
//!   inject faults (see [`soft::fault`]).
//!
//! Everything above this module is identical for both providers. Errors name
//! the verb, the step and errno (see [`verb_error`]).

pub mod errno;
pub mod gid;
pub mod ibverbs;
pub mod soft;
mod types;

use std::any::Any;
use std::sync::Arc;

pub use errno::{errno_name, verb_error};
pub use gid::{select_gid, GidCandidate, GidType};
pub use types::*;

use crate::error::Result;

/// A source of RDMA devices (a verbs library or the soft fabric).
pub trait Provider: Send + Sync {
    /// `"ibverbs"` or `"soft"`.
    fn name(&self) -> &'static str;
    /// Devices this provider can open, in provider order. No device (or no
    /// kernel support) is `Ok(vec![])`, not an error.
    fn devices(&self) -> Result<Vec<DeviceInfo>>;
    /// Open `device` on `opts.port` and pick its GID (`opts.gid_index` or the
    /// automatic ranking of [`select_gid`]).
    fn open(&self, device: &str, opts: &OpenOptions) -> Result<Arc<dyn Context>>;
}

/// An opened device port (Mooncake's `RdmaContext` minus the worker pool).
pub trait Context: Send + Sync {
    fn device_name(&self) -> &str;
    /// Port number, GID (index), LID, active MTU, as selected at open time.
    fn port_info(&self) -> &PortInfo;
    /// The device's limits (`ibv_query_device`); providers without any
    /// report none.
    fn limits(&self) -> DeviceLimits {
        DeviceLimits::default()
    }
    /// RoCE done in software (Linux rxe or siw, or the soft fabric). Linux
    /// rxe can end a READ without its bytes and without an error completion
    /// (`soft::fault::silent_read_errors` models it), so the transport
    /// confirms READs on such devices (`MC_TE_RS_CONFIRM_READS`).
    fn software_roce(&self) -> bool {
        false
    }
    /// Read the GID table again (after `GID_CHANGE`) and pick as at open
    /// time (`MC_GID_INDEX` or the automatic ranking): `(gid, index)`.
    /// Providers whose GIDs never change return the selected one.
    fn reselect_gid(&self) -> Result<(Gid, u8)> {
        let p = self.port_info();
        Ok((p.gid, p.gid_index))
    }
    /// Query the port again (state, MTU, LID may change; GID is re-read at
    /// the selected index).
    fn query_port(&self) -> Result<PortInfo>;
    fn alloc_pd(&self) -> Result<Arc<dyn Pd>>;
    /// A completion queue of at least `depth` entries.
    fn create_cq(&self, depth: usize) -> Result<Arc<dyn Cq>>;
    /// Next async event, without blocking; `Ok(None)` when there is none.
    fn poll_async_event(&self) -> Result<Option<AsyncEvent>>;
    /// File descriptor that becomes readable when an async event is
    /// pending (ibverbs; for epoll). The soft provider has none.
    fn async_fd(&self) -> Option<i32>;
}

/// A protection domain: memory regions and QPs are created on it.
pub trait Pd: Send + Sync {
    /// Register `[addr, addr+len)`; dropping the returned region deregisters
    /// it.
    ///
    /// # Safety
    /// The range must be memory of this process that stays allocated until
    /// the region is dropped (or [`Mr::deregister`]ed). While registered, the
    /// device (or the soft fabric, with plain memcpy) may read and write it at
    /// any time as remote and local work requests direct.
    unsafe fn reg_mr(&self, addr: u64, len: usize, access: Access) -> Result<Box<dyn Mr>>;
    /// An RC QP whose send (and receive) completions go to `cq`. `cq` must
    /// come from the same provider.
    fn create_qp(&self, cq: &Arc<dyn Cq>, caps: &QpCaps) -> Result<Arc<dyn Qp>>;
}

/// A registered memory region. Dropping it deregisters.
pub trait Mr: Send + Sync {
    fn addr(&self) -> u64;
    fn len(&self) -> usize;
    fn lkey(&self) -> u32;
    fn rkey(&self) -> u32;
    fn is_empty(&self) -> bool {
        self.len() == 0
    }
    /// Deregister now and report failure (dropping only logs it).
    fn deregister(self: Box<Self>) -> Result<()>;
}

/// An RC queue pair. Each transition is a named method; invalid transitions
/// are refused with an error naming the verb and the step.
pub trait Qp: Send + Sync {
    fn qp_num(&self) -> u32;
    /// Current state as the device (ibverbs: `ibv_query_qp`) or the fabric
    /// sees it, so ERR reached through a failed WR shows too.
    fn state(&self) -> QpState;
    fn caps(&self) -> QpCaps;
    /// RESET → INIT.
    fn modify_to_init(&self, attrs: &InitAttrs) -> Result<()>;
    /// INIT → RTR.
    fn modify_to_rtr(&self, attrs: &RtrAttrs) -> Result<()>;
    /// RTR → RTS.
    fn modify_to_rts(&self, attrs: &RtsAttrs) -> Result<()>;
    /// Any → ERR: outstanding WRs complete with `WrFlushError`.
    fn modify_to_err(&self) -> Result<()>;
    /// Any → RESET: outstanding WRs are discarded without completions.
    fn reset(&self) -> Result<()>;
    /// Post `wrs` in order. On error, `PostSendError::posted` WRs (a prefix)
    /// were accepted and will complete; the rest were not posted.
    fn post_send(&self, wrs: &[WorkRequest]) -> std::result::Result<(), PostSendError>;
}

/// A completion queue.
pub trait Cq: Send + Sync {
    /// Append up to `max` completions to `out`, oldest first; returns how
    /// many. No allocation beyond `out`'s growth. An overflowed CQ is an
    /// error.
    fn poll_into(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize>;
    /// Up to `max` completions, oldest first (a fresh `Vec`).
    fn poll(&self, max: usize) -> Result<Vec<WorkCompletion>> {
        let mut v = Vec::new();
        self.poll_into(&mut v, max)?;
        Ok(v)
    }
    /// Ask to be woken by the next completion (`ibv_req_notify_cq`). Poll
    /// once more after arming and before `wait`: a completion that came
    /// in between raises no event.
    fn arm(&self) {}
    /// Block until a completion may be pending (one arrived after `arm`),
    /// `interrupt` was called, or `timeout` passed.
    fn wait(&self, timeout: std::time::Duration);
    /// Wake a thread blocked in `wait` now, or make its next `wait` return
    /// at once (shutdown, new work for a thread that also posts).
    fn interrupt(&self);
    /// Entries the CQ can hold.
    fn capacity(&self) -> usize;
    /// For providers to recover their concrete type in `create_qp`.
    fn as_any(&self) -> &dyn Any;
}

/// Which provider `MC_RDMA_PROVIDER` asks for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ProviderKind {
    Ibverbs,
    Soft,
}

impl ProviderKind {
    /// `MC_RDMA_PROVIDER`: `soft` or `ibverbs` (default; unknown values warn
    /// and fall back to ibverbs).
    pub fn from_env() -> ProviderKind {
        match crate::config::env_str("MC_RDMA_PROVIDER")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref()
        {
            Some("soft") => ProviderKind::Soft,
            None | Some("") | Some("ibverbs") | Some("verbs") => ProviderKind::Ibverbs,
            Some(other) => {
                log::warn!("MC_RDMA_PROVIDER={other} is unknown (soft|ibverbs), using ibverbs");
                ProviderKind::Ibverbs
            }
        }
    }
}

/// The provider of `kind`.
pub fn provider_of(kind: ProviderKind) -> Arc<dyn Provider> {
    match kind {
        ProviderKind::Ibverbs => Arc::new(ibverbs::IbvProvider::new()),
        ProviderKind::Soft => Arc::new(soft::SoftProvider::from_env()),
    }
}

/// The provider selected by `MC_RDMA_PROVIDER`.
pub fn provider() -> Arc<dyn Provider> {
    provider_of(ProviderKind::from_env())
}
