//! One RDMA context per local device: the device (PD, CQ), its MRs, its
//! endpoint store and its load counters (spec §6.1).
//!
//! The transport talks to a provider through the small object-safe view
//! below (`Device`, `QueuePair`, `MemoryRegion`); `provider.rs` adapts the
//! verbs layer's providers to it. Everything above is provider-agnostic.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use crate::error::Result;
use crate::task::Opcode;

use super::endpoint_driver::Endpoint;
use super::stats::DeviceStats;

/// One signalled RDMA READ/WRITE with a single SGE.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkRequest {
    pub wr_id: u64,
    pub opcode: Opcode,
    pub local_addr: u64,
    pub length: u32,
    pub lkey: u32,
    pub remote_addr: u64,
    pub rkey: u32,
}

/// Outcome class of a work completion, as the worker acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionStatus {
    Success,
    /// The QP went to ERR (retirement): retry without a rail penalty.
    Flushed,
    /// Remote side failed (transport retries exceeded, remote access, ...).
    RemoteError,
    /// Local fault (protection, length, QP op).
    LocalError,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub status: CompletionStatus,
}

/// A device async event, as the transport acts on it (`events.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    PortDown,
    PortUp,
    Fatal,
    QpFatal(u32),
    /// The port's GID table changed (an address went or came).
    GidChange,
}

/// A registered memory region; dropping it deregisters.
pub trait MemoryRegion: Send + Sync {
    fn lkey(&self) -> u32;
    fn rkey(&self) -> u32;
}

/// An RC queue pair; dropping it destroys the QP.
pub trait QueuePair: Send + Sync {
    fn qp_num(&self) -> u32;
    /// RESET→INIT→RTR→RTS towards `peer_qpn` (PSNs 0).
    fn connect(&self, peer_qpn: u32, peer_gid: [u8; 16], peer_lid: u16) -> Result<()>;
    /// Move to ERR so outstanding WRs flush.
    fn set_error(&self);
    /// Post `wrs` as one chain; returns how many were accepted (a prefix).
    fn post(&self, wrs: &[WorkRequest]) -> Result<usize>;
}

/// An opened device with its PD and CQ.
pub trait Device: Send + Sync {
    fn name(&self) -> &str;
    fn gid(&self) -> [u8; 16];
    /// Read the GID table again and select as at open; true if the GID or
    /// its index changed (new endpoints then use it).
    fn refresh_gid(&self) -> bool;
    fn lid(&self) -> u16;
    /// Register `[addr, addr+len)`; `remote`: peers may read and write it.
    fn register(&self, addr: u64, len: u64, remote: bool) -> Result<Box<dyn MemoryRegion>>;
    fn create_qp(&self, max_wr: u32) -> Result<Box<dyn QueuePair>>;
    /// Append up to `max` completions to `out`; returns how many.
    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> usize;
    /// Block up to `timeout` until completions may be available.
    fn wait_completions(&self, timeout: Duration);
    /// The CQ failed: the device cannot be used (a plain flag, cheap).
    fn is_down(&self) -> bool;
    /// The port was ACTIVE when the device was opened.
    fn port_active(&self) -> bool;
    /// Block up to `timeout` for async events and append them to `out`
    /// (the context's event thread only).
    fn wait_events(&self, timeout: Duration, out: &mut Vec<DeviceEvent>);
}

/// The descriptor GID text format lives with the verbs types.
pub use super::verbs::{gid_from_string as parse_gid, gid_to_string};

/// A local device as the transport uses it.
pub struct RdmaContext {
    pub index: usize,
    pub name: String,
    /// `None`: the device failed to open (placeholder keeps indices aligned).
    pub device: Option<Arc<dyn Device>>,
    /// Port up (async events keep it current).
    active: AtomicBool,
    /// Device fatal: never used again.
    fatal: AtomicBool,
    /// MRs by region start address.
    pub mrs: Mutex<HashMap<u64, Box<dyn MemoryRegion>>>,
    /// Endpoints by peer NIC path.
    pub endpoints: Mutex<HashMap<String, Arc<Endpoint>>>,
    /// Caps on endpoints created by incoming Connection requests.
    pub passive: super::passive_cap::PassiveCap,
    pub stats: DeviceStats,
}

impl RdmaContext {
    pub fn new(index: usize, name: String, device: Option<Arc<dyn Device>>) -> RdmaContext {
        // A port that is down at start takes no slices until its
        // PORT_ACTIVE event (events.rs) brings the context up.
        let active = device.as_ref().is_some_and(|d| d.port_active());
        if device.is_some() && !active {
            log::warn!("RDMA device {name}: port not active; it is used once it comes up");
        }
        RdmaContext {
            index,
            name,
            device,
            active: AtomicBool::new(active),
            fatal: AtomicBool::new(false),
            mrs: Mutex::new(HashMap::new()),
            endpoints: Mutex::new(HashMap::new()),
            passive: super::passive_cap::PassiveCap::new(
                super::passive_cap::PassiveLimits::from_env(),
            ),
            stats: DeviceStats::default(),
        }
    }

    /// Usable for new slices: opened and not reported down.
    pub fn is_active(&self) -> bool {
        self.active.load(Ordering::Acquire)
            && !self.fatal.load(Ordering::Acquire)
            && !self.device.as_ref().is_some_and(|d| d.is_down())
    }

    pub fn deactivate(&self, why: &str) {
        if self.active.swap(false, Ordering::AcqRel) {
            log::warn!("RDMA context {} inactive: {why}", self.name);
        }
    }

    /// The port is up again: take slices again (not after a fatal error).
    pub fn reactivate(&self, why: &str) {
        if self.device.is_some()
            && !self.fatal.load(Ordering::Acquire)
            && !self.active.swap(true, Ordering::AcqRel)
        {
            log::warn!("RDMA context {} active again: {why}", self.name);
        }
    }

    pub fn set_fatal(&self, why: &str) {
        if !self.fatal.swap(true, Ordering::AcqRel) {
            log::error!("RDMA context {} down for good: {why}", self.name);
        }
    }

    pub fn gid_string(&self) -> String {
        match &self.device {
            Some(d) => gid_to_string(&d.gid()),
            None => gid_to_string(&[0; 16]),
        }
    }

    pub fn lid(&self) -> u16 {
        self.device.as_ref().map_or(0, |d| d.lid())
    }

    /// Remove `peer`'s endpoint if it is still `ep` (another may have replaced it).
    pub fn forget_endpoint(&self, peer: &str, ep: &Arc<Endpoint>) {
        let mut eps = self.endpoints.lock();
        if eps.get(peer).is_some_and(|e| Arc::ptr_eq(e, ep)) {
            eps.remove(peer);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_round_trip() {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[15] = 5;
        let s = gid_to_string(&g);
        assert_eq!(s, "00:00:00:00:00:00:00:00:00:00:ff:ff:00:00:00:05");
        assert_eq!(parse_gid(&s), Some(g));
        assert_eq!(parse_gid("00:11"), None);
        assert_eq!(parse_gid(&format!("{s}:00")), None);
        assert_eq!(parse_gid(&s.replace("ff", "zz")), None);
        assert_eq!(parse_gid(""), None);
    }
}
