//! Settings the RDMA transport reads once at install (Mooncake names and
//! defaults, spec §8), and the re-handshake pacing settings.

use std::time::Duration;

use crate::config::{env_flag, env_i64, env_u64};

use super::endpoint::BackoffConfig;
use super::endpoint_driver::HandshakeMode;
use super::selection::SelectionPolicy;
use super::slicing::SliceParams;

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
