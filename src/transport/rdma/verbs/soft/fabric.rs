//! The process-wide fabric: device registry, QP and MR tables, and the
//! queue of QPs with work for the executor thread.
//!
//! Every GID carries this fabric's identity (a per-process nonce and the
//! pid), so a GID published by another process's fabric never resolves to a
//! local device: the soft fabric is in-process, and a WR addressed to another
//! process is unreachable (retransmitted, then `RetryExceeded`), never carried
//! out on colliding local QP numbers, keys or addresses.

use std::collections::HashMap;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, OnceLock, Weak};
use std::time::Duration;

use parking_lot::{Condvar, Mutex, RwLock};

use super::device::SoftDevice;
use super::fault::FaultSet;
use super::qp::QpShared;
use crate::config::env_flag;
use crate::transport::rdma::verbs::types::{gid_to_string, Access, Gid};

/// First bytes of a soft fabric's routable GIDs (`fd73:6f66::/32`, a
/// unique-local prefix spelling "\xfdsof").
pub(crate) const GID_PREFIX: [u8; 4] = [0xfd, 0x73, 0x6f, 0x66];

/// Who this fabric is, as written into its GIDs.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) struct FabricId {
    /// Random per process, so a reused pid (or one in another PID
    /// namespace) still names a different fabric.
    pub nonce: u32,
    pub pid: u32,
}

impl FabricId {
    fn this_process() -> FabricId {
        let mut h = std::collections::hash_map::RandomState::new().build_hasher();
        h.write_u32(std::process::id());
        if let Ok(t) = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH) {
            h.write_u128(t.as_nanos());
        }
        FabricId {
            nonce: h.finish() as u32,
            pid: std::process::id(),
        }
    }

    /// `fd73:6f66:<nonce>:<pid>:<device id>`.
    pub fn routable_gid(&self, device_id: u32) -> Gid {
        let mut g = [0u8; 16];
        g[..4].copy_from_slice(&GID_PREFIX);
        g[4..8].copy_from_slice(&self.nonce.to_be_bytes());
        g[8..12].copy_from_slice(&self.pid.to_be_bytes());
        g[12..].copy_from_slice(&device_id.to_be_bytes());
        g
    }

    /// `fe80::<nonce>:<device id>`.
    pub fn link_local_gid(&self, device_id: u32) -> Gid {
        let mut g = [0u8; 16];
        g[0] = 0xfe;
        g[1] = 0x80;
        g[8..12].copy_from_slice(&self.nonce.to_be_bytes());
        g[12..].copy_from_slice(&device_id.to_be_bytes());
        g
    }

    /// Why `gid` names no device here: another process's soft fabric, or
    /// nothing on this fabric.
    pub fn unreachable_reason(&self, gid: &Gid) -> String {
        let nonce = self.nonce.to_be_bytes();
        let routable_elsewhere = gid[..4] == GID_PREFIX && gid[4..8] != nonce;
        let link_local_elsewhere =
            gid[..2] == [0xfe, 0x80] && gid[2..8].iter().all(|b| *b == 0) && gid[8..12] != nonce;
        if routable_elsewhere || link_local_elsewhere {
            let owner = if routable_elsewhere {
                let pid = u32::from_be_bytes([gid[8], gid[9], gid[10], gid[11]]);
                format!("another process (pid {pid})")
            } else {
                "another process".to_string()
            };
            format!(
                "destination GID {} belongs to the soft RDMA fabric of {owner}; \
                 the soft fabric is in-process only (this is pid {})",
                gid_to_string(gid),
                self.pid
            )
        } else {
            format!(
                "no device of this process's soft RDMA fabric has GID {}",
                gid_to_string(gid)
            )
        }
    }
}

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

/// 4.096 µs × 2^`attr` (IB spec 11.2.4.2); `None` for 0 (no timer).
pub(crate) fn ack_timeout_of(attr: u8) -> Option<Duration> {
    (attr != 0).then(|| Duration::from_nanos(4096u64 << attr.min(31)))
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
    pub id: FabricId,
    /// Test knob: every QP's local ACK timeout, instead of its `timeout`
    /// attribute.
    pub ack_timeout_override: Mutex<Option<Duration>>,
    /// `MC_SOFT_RDMA_RXE_RETRY7`: a `retry_cnt` of 7 retransmits forever, as
    /// Linux rxe does (`rxe_comp.c` never counts 7 down); the IB spec and
    /// hardware NICs give up after 7 retransmissions (the default here).
    pub rxe_retry7: AtomicBool,
    /// Faults that apply to every device.
    pub all_faults: Mutex<FaultSet>,
    /// QPs with queued WRs, for the executor.
    pub runnable: Mutex<Vec<Arc<QpShared>>>,
    pub wake: Condvar,
    /// The executor sleeps on `wake` (written under `runnable`'s lock).
    pub executor_parked: AtomicBool,
    /// The posts that had to wake the parked executor, and the CPU time
    /// they spent doing it: the emulated NIC's cost, not the transport's (a
    /// NIC's doorbell is one MMIO write; here it is a futex wake-up, which
    /// on a VM costs the waker an inter-processor interrupt).
    pub doorbell_wakes: AtomicU64,
    pub doorbell_wake_ns: AtomicU64,
}

/// CPU time of the calling thread, in ns.
fn thread_cpu_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid clock id and a pointer to a live timespec.
    unsafe { libc::clock_gettime(libc::CLOCK_THREAD_CPUTIME_ID, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

static FABRIC: OnceLock<Arc<Fabric>> = OnceLock::new();

/// The process's fabric; the first call starts the executor thread.
pub(crate) fn fabric() -> &'static Arc<Fabric> {
    FABRIC.get_or_init(|| {
        let fabric = Arc::new(Fabric {
            devices: Mutex::new(Vec::new()),
            qps: Mutex::new(HashMap::new()),
            mrs: RwLock::new(HashMap::new()),
            next_qpn: AtomicU32::new(0x100),
            next_key: AtomicU32::new(0x1000),
            next_device_id: AtomicU32::new(1),
            id: FabricId::this_process(),
            ack_timeout_override: Mutex::new(None),
            rxe_retry7: AtomicBool::new(env_flag("MC_SOFT_RDMA_RXE_RETRY7")),
            all_faults: Mutex::new(FaultSet::default()),
            runnable: Mutex::new(Vec::new()),
            wake: Condvar::new(),
            executor_parked: AtomicBool::new(false),
            doorbell_wakes: AtomicU64::new(0),
            doorbell_wake_ns: AtomicU64::new(0),
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
        let dev = Arc::new(SoftDevice::new(id, name, &self.id));
        log::info!(
            "soft RDMA fabric of pid {}: device {name} (GID {})",
            self.id.pid,
            gid_to_string(&dev.routable_gid())
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

    /// The local ACK timeout of a QP whose RTS `timeout` attribute is
    /// `attr`: 4.096 µs × 2^attr; `None` (attr 0) is infinite, as the IB
    /// spec says: a lost WR then waits until the QP is moved to ERR/RESET.
    pub fn ack_timeout(&self, attr: u8) -> Option<Duration> {
        match *self.ack_timeout_override.lock() {
            Some(d) => Some(d),
            None => ack_timeout_of(attr),
        }
    }

    pub fn rxe_retry7(&self) -> bool {
        self.rxe_retry7.load(Ordering::Relaxed)
    }

    /// Hand `qp` to the executor (the doorbell).
    pub fn schedule(&self, qp: Arc<QpShared>) {
        let parked = {
            let mut r = self.runnable.lock();
            r.push(qp);
            // This post wakes it; posts behind it find it awake.
            self.executor_parked.swap(false, Ordering::Relaxed)
        };
        if !parked {
            // No waiter: no system call.
            self.wake.notify_one();
            return;
        }
        let t0 = thread_cpu_ns();
        self.wake.notify_one();
        let spent = thread_cpu_ns().saturating_sub(t0);
        self.doorbell_wakes.fetch_add(1, Ordering::Relaxed);
        self.doorbell_wake_ns.fetch_add(spent, Ordering::Relaxed);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ack_timeout_is_4096_ns_times_two_to_the_attribute() {
        assert_eq!(ack_timeout_of(0), None);
        assert_eq!(ack_timeout_of(1), Some(Duration::from_nanos(8192)));
        // Mooncake's 14: 67.1 ms, so 8 transmissions take 537 ms.
        assert_eq!(ack_timeout_of(14), Some(Duration::from_nanos(67_108_864)));
        assert_eq!(
            ack_timeout_of(31),
            Some(Duration::from_nanos(4096 * (1u64 << 31)))
        );
    }

    #[test]
    fn gids_name_the_process_and_foreign_ones_are_recognised() {
        let me = FabricId {
            nonce: 0x0102_0304,
            pid: 4242,
        };
        let other = FabricId {
            nonce: 0x0a0b_0c0d,
            pid: 77,
        };
        let g = me.routable_gid(5);
        assert_eq!(&g[..4], &GID_PREFIX);
        assert_eq!(&g[8..12], &4242u32.to_be_bytes());
        assert_eq!(&g[12..], &5u32.to_be_bytes());
        assert_ne!(g, other.routable_gid(5), "same device id, other process");
        assert_ne!(me.link_local_gid(5), other.link_local_gid(5));
        let why = me.unreachable_reason(&other.routable_gid(5));
        assert!(why.contains("another process (pid 77)"), "{why}");
        assert!(why.contains("in-process only"), "{why}");
        let why = me.unreachable_reason(&other.link_local_gid(5));
        assert!(why.contains("another process"), "{why}");
        // Our own fabric's GID of a device that does not exist.
        let why = me.unreachable_reason(&me.routable_gid(99));
        assert!(why.contains("no device of this process"), "{why}");
        let mut v4 = [0u8; 16];
        v4[10..].copy_from_slice(&[0xff, 0xff, 127, 0, 0, 1]);
        assert!(me.unreachable_reason(&v4).contains("no device"));
    }
}
