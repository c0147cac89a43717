//! One RDMA context per local device: the device (PD, CQ), its MRs, its
//! endpoint store and its load counters (spec §6.1).
//!
//! The device itself is seen through `device.rs` (provider-agnostic); the
//! endpoints are driven by `endpoint_driver.rs`, which knows nothing of
//! contexts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::endpoint_driver::Endpoint;
use super::stats::DeviceStats;

use super::device::{gid_to_string, Device, MemoryRegion};

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
    use super::super::device::{gid_to_string, parse_gid};

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
