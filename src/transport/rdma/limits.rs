//! Settings clamped to what a device supports (upstream `updateGlobalConfig`
//! in config.cpp): an env value above a device's limit lowers the setting,
//! with one log line per lowered value, instead of making every QP, CQ or MR
//! creation fail.

use std::fmt;
use std::sync::OnceLock;

use super::verbs::{mtu_from_bytes, DeviceLimits};
use super::RdmaConfig;

/// One setting a device lowered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Lowered {
    pub setting: &'static str,
    pub from: u64,
    pub to: u64,
}

impl fmt::Display for Lowered {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}={} lowered to {}", self.setting, self.from, self.to)
    }
}

fn lower(out: &mut Vec<Lowered>, setting: &'static str, value: &mut u64, limit: u64) {
    if *value > limit {
        out.push(Lowered {
            setting,
            from: *value,
            to: limit,
        });
        *value = limit;
    }
}

/// Clamp `cfg` to `lim` (pure; the caller logs). Applied once per opened
/// device, so the result fits every device of the transport.
pub fn clamp(cfg: &mut RdmaConfig, lim: &DeviceLimits) -> Vec<Lowered> {
    let mut out = Vec::new();
    let mut v = cfg.max_wr as u64;
    lower(&mut out, "MC_MAX_WR", &mut v, lim.max_qp_wr.max(1) as u64);
    cfg.max_wr = v as u32;
    let mut v = cfg.max_sge as u64;
    lower(&mut out, "MC_MAX_SGE", &mut v, lim.max_sge.max(1) as u64);
    cfg.max_sge = v as u32;
    let mut v = cfg.max_cqe as u64;
    lower(
        &mut out,
        "MC_MAX_CQE_PER_CTX",
        &mut v,
        lim.max_cqe.max(1) as u64,
    );
    cfg.max_cqe = v as usize;
    lower(
        &mut out,
        "MC_MAX_MR_SIZE",
        &mut cfg.max_mr_size,
        lim.max_mr_size,
    );
    // QPs per endpoint first (one endpoint must fit), then endpoints.
    let mut v = cfg.num_qp_per_ep as u64;
    lower(
        &mut out,
        "MC_NUM_QP_PER_EP",
        &mut v,
        lim.max_qp.max(1) as u64,
    );
    cfg.num_qp_per_ep = v as usize;
    let mut v = cfg.max_ep_per_ctx as u64;
    let eps = (lim.max_qp as u64 / cfg.num_qp_per_ep.max(1) as u64).max(1);
    lower(&mut out, "MC_MAX_EP_PER_CTX", &mut v, eps);
    cfg.max_ep_per_ctx = v as usize;
    out
}

/// [`clamp`] and log each lowered value (once: later devices only log what
/// they lower further).
pub fn clamp_and_log(cfg: &mut RdmaConfig, device: &str, lim: &DeviceLimits) {
    for l in clamp(cfg, lim) {
        log::warn!("RDMA device {device}: {l} (the device's limit)");
    }
}

/// Inline sizes to try when a device refuses `max_inline` at QP creation
/// (ibv_query_device does not report the limit): halving down to 0.
pub fn inline_fallbacks(max_inline: u32) -> impl Iterator<Item = u32> {
    std::iter::successors(Some(max_inline / 2), |&v| (v > 0).then_some(v / 2))
}

/// `MC_MTU` in bytes: one of the IB MTUs (256, 512, 1024, 2048, 4096);
/// anything else is refused with a warning and the default 4096 is used.
/// The path MTU is the smaller of this and the port's active MTU.
pub fn mtu_setting() -> u32 {
    static MTU: OnceLock<u32> = OnceLock::new();
    *MTU.get_or_init(|| parse_mtu(crate::config::env_str("MC_MTU").as_deref()))
}

fn parse_mtu(v: Option<&str>) -> u32 {
    let Some(v) = v.map(str::trim).filter(|v| !v.is_empty()) else {
        return 4096;
    };
    match v
        .parse::<u32>()
        .ok()
        .filter(|b| mtu_from_bytes(*b).is_some())
    {
        Some(b) => b,
        None => {
            log::warn!("MC_MTU={v} is not an IB MTU (256|512|1024|2048|4096), using 4096");
            4096
        }
    }
}

/// `MC_PKEY_INDEX` (0): the P_Key index QPs are moved to INIT with.
pub fn pkey_index() -> u16 {
    crate::config::env_i64("MC_PKEY_INDEX", 0, 0, 65535) as u16
}

/// The server name in our NIC paths and descriptor: `MC_RDMA_BIND_ADDRESS`
/// with the port of `local` (dual-NIC hosts: RDMA on one address, RPC on
/// another, as upstream), else `local`.
pub fn rdma_server_name(local: &str) -> String {
    match crate::config::env_str("MC_RDMA_BIND_ADDRESS").map(|v| v.trim().to_string()) {
        Some(bind) if !bind.is_empty() => bind_name(&bind, local),
        _ => local.to_string(),
    }
}

fn bind_name(bind: &str, local: &str) -> String {
    match local.rsplit_once(':') {
        Some((_, port)) if port.parse::<u16>().is_ok() => format!("{bind}:{port}"),
        _ => bind.to_string(),
    }
}

/// `MC_AUTO_GID_MAX_RETRIES` (upstream: 0..=16, default 2): RTR retries
/// with a re-probed GID when the automatic selection is in use.
pub fn auto_gid_retries() -> u32 {
    static N: OnceLock<u32> = OnceLock::new();
    *N.get_or_init(|| crate::config::env_i64("MC_AUTO_GID_MAX_RETRIES", 2, 0, 16) as u32)
}

/// `MC_IB_PCI_RELAXED_ORDERING`: 0 off, 1 or 2 (default) request relaxed
/// ordering on every MR (dropped by libibverbs where unsupported).
pub fn relaxed_ordering() -> bool {
    static ON: OnceLock<bool> = OnceLock::new();
    *ON.get_or_init(|| crate::config::env_i64("MC_IB_PCI_RELAXED_ORDERING", 2, 0, 2) != 0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn rxe_like() -> DeviceLimits {
        DeviceLimits {
            max_qp: 64,
            max_qp_wr: 16384,
            max_sge: 32,
            max_cq: 16384,
            max_cqe: 32767,
            max_mr_size: 1 << 20,
        }
    }

    #[test]
    fn values_above_the_device_are_lowered_and_reported() {
        let mut cfg = RdmaConfig::from_env();
        cfg.max_wr = 65535;
        cfg.max_sge = 64;
        cfg.max_cqe = 65535;
        cfg.num_qp_per_ep = 2;
        cfg.max_ep_per_ctx = 65536;
        cfg.max_mr_size = u64::MAX;
        let low = clamp(&mut cfg, &rxe_like());
        assert_eq!(cfg.max_wr, 16384);
        assert_eq!(cfg.max_sge, 32);
        assert_eq!(cfg.max_cqe, 32767);
        assert_eq!(cfg.max_mr_size, 1 << 20);
        assert_eq!(cfg.max_ep_per_ctx, 32);
        let names: Vec<_> = low.iter().map(|l| l.setting).collect();
        assert_eq!(
            names,
            [
                "MC_MAX_WR",
                "MC_MAX_SGE",
                "MC_MAX_CQE_PER_CTX",
                "MC_MAX_MR_SIZE",
                "MC_MAX_EP_PER_CTX"
            ]
        );
        assert_eq!(
            low[2].to_string(),
            "MC_MAX_CQE_PER_CTX=65535 lowered to 32767"
        );
        // A second device with the same limits lowers nothing more.
        assert!(clamp(&mut cfg, &rxe_like()).is_empty());
    }

    #[test]
    fn values_within_the_device_are_kept() {
        let mut cfg = RdmaConfig::from_env();
        let before = format!("{cfg:?}");
        assert!(clamp(&mut cfg, &DeviceLimits::default()).is_empty());
        assert_eq!(format!("{cfg:?}"), before);
    }

    #[test]
    fn one_endpoint_always_fits() {
        let mut cfg = RdmaConfig::from_env();
        cfg.num_qp_per_ep = 8;
        let lim = DeviceLimits {
            max_qp: 4,
            ..DeviceLimits::default()
        };
        clamp(&mut cfg, &lim);
        assert_eq!(cfg.num_qp_per_ep, 4);
        assert_eq!(cfg.max_ep_per_ctx, 1);
    }

    #[test]
    fn mtu_takes_only_ib_values() {
        assert_eq!(parse_mtu(None), 4096);
        assert_eq!(parse_mtu(Some("1024")), 1024);
        assert_eq!(parse_mtu(Some(" 256 ")), 256);
        assert_eq!(parse_mtu(Some("1500")), 4096);
        assert_eq!(parse_mtu(Some("9000")), 4096);
        assert_eq!(parse_mtu(Some("junk")), 4096);
    }

    #[test]
    fn bind_address_keeps_the_rpc_port() {
        assert_eq!(bind_name("10.0.0.7", "192.168.1.2:15001"), "10.0.0.7:15001");
        assert_eq!(bind_name("10.0.0.7", "node-a"), "10.0.0.7");
    }

    #[test]
    fn inline_fallbacks_halve_to_zero() {
        assert_eq!(
            inline_fallbacks(1000).collect::<Vec<_>>(),
            [500, 250, 125, 62, 31, 15, 7, 3, 1, 0]
        );
        assert_eq!(inline_fallbacks(0).collect::<Vec<_>>(), [0]);
    }
}
