//! The process-wide fabric: device registry, QP and MR tables, and the
//! queue of QPs with work for the executor thread.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use super::device::SoftDevice;
use super::fault::FaultSet;
use super::qp::QpShared;
use crate::config::env_u64;
use crate::transport::rdma::verbs::types::{Access, Gid};

pub const DEFAULT_RETRY_TIMEOUT_MS: u64 = 50;

/// A registered region as the fabric checks keys against it.
#[derive(Clone, Debug)]
pub(crate) struct MrEntry {
    pub device_id: u32,
    pub addr: u64,
    pub len: u64,
    pub access: Access,
}

impl MrEntry {
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        addr >= self.addr
            && addr
                .checked_add(len)
                .is_some_and(|end| end <= self.addr + self.len)
    }
}

pub(crate) struct Fabric {
    devices: Mutex<Vec<Arc<SoftDevice>>>,
    pub qps: Mutex<HashMap<u32, Weak<QpShared>>>,
    /// key (lkey == rkey) → region. Held for reading during copies so a
    /// region cannot be deregistered (and freed by its owner) mid-copy.
    pub mrs: RwLock<HashMap<u32, MrEntry>>,
    next_qpn: AtomicU32,
    next_key: AtomicU32,
    next_device_id: AtomicU32,
    pub retry_timeout: Mutex<Duration>,
    /// Faults that apply to every device.
    pub all_faults: Mutex<FaultSet>,
    /// QPs with queued WRs, for the executor.
    pub runnable: Mutex<Vec<Arc<QpShared>>>,
    pub wake: Condvar,
}

static FABRIC: OnceLock<Arc<Fabric>> = OnceLock::new();

/// The process's fabric; the first call starts the executor thread.
pub(crate) fn fabric() -> &'static Arc<Fabric> {
    FABRIC.get_or_init(|| {
        let timeout = env_u64(
            "MC_SOFT_RDMA_RETRY_TIMEOUT_MS",
            DEFAULT_RETRY_TIMEOUT_MS,
            1,
            600_000,
        );
        let fabric = Arc::new(Fabric {
            devices: Mutex::new(Vec::new()),
            qps: Mutex::new(HashMap::new()),
            mrs: RwLock::new(HashMap::new()),
            next_qpn: AtomicU32::new(0x100),
            next_key: AtomicU32::new(0x1000),
            next_device_id: AtomicU32::new(1),
            retry_timeout: Mutex::new(Duration::from_millis(timeout)),
            all_faults: Mutex::new(FaultSet::default()),
            runnable: Mutex::new(Vec::new()),
            wake: Condvar::new(),
        });
        super::exec::start(Arc::downgrade(&fabric));
        fabric
    })
}

impl Fabric {
    pub fn device(&self, name: &str) -> Option<Arc<SoftDevice>> {
        self.devices.lock().iter().find(|d| d.name == name).cloned()
    }

    pub fn device_or_create(&self, name: &str) -> Arc<SoftDevice> {
        let mut devices = self.devices.lock();
        if let Some(d) = devices.iter().find(|d| d.name == name) {
            return d.clone();
        }
        let id = self.next_device_id.fetch_add(1, Ordering::Relaxed);
        let dev = Arc::new(SoftDevice::new(id, name));
        log::info!(
            "soft RDMA fabric: device {name} (GID {})",
            crate::transport::rdma::verbs::types::gid_to_string(&dev.routable_gid())
        );
        devices.push(dev.clone());
        dev
    }

    /// The device that owns `gid` (at any index).
    pub fn device_by_gid(&self, gid: &Gid) -> Option<Arc<SoftDevice>> {
        self.devices
            .lock()
            .iter()
            .find(|d| d.gids.iter().any(|c| c.gid == *gid))
            .cloned()
    }

    pub fn alloc_qpn(&self) -> u32 {
        // 24-bit QP numbers, as on hardware.
        self.next_qpn.fetch_add(1, Ordering::Relaxed) & 0x00ff_ffff
    }

    pub fn alloc_key(&self) -> u32 {
        self.next_key.fetch_add(1, Ordering::Relaxed)
    }

    pub fn qp(&self, qpn: u32) -> Option<Arc<QpShared>> {
        self.qps.lock().get(&qpn).and_then(Weak::upgrade)
    }

    pub fn retry_timeout(&self) -> Duration {
        *self.retry_timeout.lock()
    }

    /// Hand `qp` to the executor.
    pub fn schedule(&self, qp: Arc<QpShared>) {
        self.runnable.lock().push(qp);
        self.wake.notify_one();
    }
}
