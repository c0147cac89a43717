//! The soft provider: an in-process RDMA fabric (`MC_RDMA_PROVIDER=soft`).
//!
//! All engines of a process share one fabric (QP numbers and keys are
//! fabric-unique). Devices come from `MC_SOFT_RDMA_DEVICES` (a count `N`
//! gives `soft0..soft{N-1}`, or a comma-separated list of names; default 2).
//! A fabric executor thread carries out posted WRs in order per QP and moves
//! real bytes between registered regions, so posting never waits on a copy.
//! Rules enforced: QP states, lkey/rkey, access rights and bounds, CQ depth,
//! `max_send_wr`, ordered completions per QP; a responder accepts a WR only
//! in RTR/RTS and only if its QP is connected back to the sender (QPN and
//! GIDs, [`path`]); a lost WR is retransmitted after the QP's local ACK
//! timeout (4.096 µs × 2^`timeout`) up to `retry_cnt` times, then ends
//! `RetryExceeded` and moves the sender QP to ERR ([`exec`]). GIDs name the
//! process, so a descriptor from another process is unreachable, never
//! resolved to local QPs, keys or addresses ([`fabric`]). Faults are
//! injected through [`fault`].

mod cq;
mod device;
mod exec;
mod fabric;
pub mod fault;
mod mr;
mod path;
mod qp;

use std::sync::Arc;

use crate::config::env_str;
use crate::error::{Error, Result};

use super::{Context, DeviceInfo, OpenOptions, Provider};

/// The posts that found the fabric's executor asleep and woke it, and the
/// CPU time they spent on it (the emulated NIC's cost, which benchmarks of
/// the transport's own CPU leave out with the executor's).
pub fn doorbell_wakes() -> (u64, std::time::Duration) {
    let f = fabric::fabric();
    (
        f.doorbell_wakes.load(std::sync::atomic::Ordering::Relaxed),
        std::time::Duration::from_nanos(
            f.doorbell_wake_ns
                .load(std::sync::atomic::Ordering::Relaxed),
        ),
    )
}

/// Device names from `MC_SOFT_RDMA_DEVICES`.
pub fn device_names_from_env() -> Vec<String> {
    parse_device_names(env_str("MC_SOFT_RDMA_DEVICES").as_deref())
}

/// `None`/empty → `soft0, soft1`; `N` → `soft0..soft{N-1}` (N ≤ 64); else a
/// comma-separated list of names.
pub fn parse_device_names(value: Option<&str>) -> Vec<String> {
    let count = |n: usize| (0..n).map(|i| format!("soft{i}")).collect();
    let Some(v) = value.map(str::trim).filter(|v| !v.is_empty()) else {
        return count(2);
    };
    if let Ok(n) = v.parse::<usize>() {
        if n > 64 {
            log::warn!("MC_SOFT_RDMA_DEVICES={n} is too many, using 64");
        }
        return count(n.min(64));
    }
    let mut names: Vec<String> = Vec::new();
    for name in v.split(',').map(str::trim).filter(|n| !n.is_empty()) {
        if !names.iter().any(|n| n == name) {
            names.push(name.to_string());
        }
    }
    names
}

/// The soft provider, listing a fixed set of fabric devices.
pub struct SoftProvider {
    names: Vec<String>,
}

impl SoftProvider {
    /// Devices named by `MC_SOFT_RDMA_DEVICES`.
    pub fn from_env() -> SoftProvider {
        SoftProvider::with_devices(&device_names_from_env())
    }

    /// Exactly these devices (created on the fabric if new). Tests use
    /// their own names so faults injected on them stay local.
    pub fn with_devices<S: AsRef<str>>(names: &[S]) -> SoftProvider {
        let names: Vec<String> = names.iter().map(|n| n.as_ref().to_string()).collect();
        for n in &names {
            fabric::fabric().device_or_create(n);
        }
        SoftProvider { names }
    }
}

impl Provider for SoftProvider {
    fn name(&self) -> &'static str {
        "soft"
    }

    fn devices(&self) -> Result<Vec<DeviceInfo>> {
        let fabric = fabric::fabric();
        Ok(self
            .names
            .iter()
            .map(|n| fabric.device_or_create(n).info())
            .collect())
    }

    fn open(&self, device: &str, opts: &OpenOptions) -> Result<Arc<dyn Context>> {
        if !self.names.iter().any(|n| n == device) {
            return Err(Error::DeviceNotFound(format!(
                "ibv_open_device: open: ENODEV (soft device {device} is not one of {:?})",
                self.names
            )));
        }
        let dev = fabric::fabric().device_or_create(device);
        Ok(Arc::new(device::SoftContext::open(dev, opts)?))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_names_parse_counts_and_lists() {
        assert_eq!(parse_device_names(None), vec!["soft0", "soft1"]);
        assert_eq!(parse_device_names(Some(" ")), vec!["soft0", "soft1"]);
        assert_eq!(
            parse_device_names(Some("3")),
            vec!["soft0", "soft1", "soft2"]
        );
        assert!(parse_device_names(Some("0")).is_empty());
        assert_eq!(
            parse_device_names(Some("mlx5_0, mlx5_1,,mlx5_0")),
            vec!["mlx5_0", "mlx5_1"]
        );
        assert_eq!(parse_device_names(Some("1000")).len(), 64);
    }
}
