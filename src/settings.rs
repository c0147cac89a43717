//! Every `MC_*` variable upstream's transfer engine reads (mooncake-transfer-engine
//! and mooncake-common, TENT included) and what te-rs does with it. README's
//! settings table lists the same names (tests/settings_table.rs checks both
//! against each other and against the source).

use std::sync::Once;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Support {
    /// Read with upstream's meaning.
    Honoured,
    /// Not read: te-rs gets the effect another way (the note says how).
    Differently,
    /// Not read: the feature is not in te-rs (the note says which).
    NotApplicable,
}

use Support::*;

/// Name, support, and for the variables te-rs does not read, why.
pub const UPSTREAM: &[(&str, Support, &str)] = &[
    ("MC_AUTO_GID_MAX_RETRIES", Honoured, ""),
    ("MC_CONN_PAUSE_TTL_MS", Differently, "failed handshakes back off per MC_TE_RS_HANDSHAKE_BACKOFF_MS / _BACKOFF_MAX_MS instead"),
    ("MC_CUSTOM_TOPO_JSON", Honoured, ""),
    ("MC_CXL_DEV_PATH", NotApplicable, "no CXL transport"),
    ("MC_CXL_DEV_SIZE", NotApplicable, "no CXL transport"),
    ("MC_DISABLE_GPU_DIRECT_RDMA", NotApplicable, "TENT backend; no GPU memory"),
    ("MC_DISABLE_HIP", NotApplicable, "no HIP (AMD GPU) transport"),
    ("MC_DISABLE_MACA", NotApplicable, "no MACA GPU transport"),
    ("MC_DISABLE_METACACHE", Honoured, ""),
    ("MC_DISABLE_MUSA", NotApplicable, "no MUSA GPU transport"),
    ("MC_EFA_CQ_THREADS", NotApplicable, "no EFA transport"),
    ("MC_EFA_NIC_SELECTION", NotApplicable, "no EFA transport"),
    ("MC_ENABLE_DEST_DEVICE_AFFINITY", Honoured, ""),
    ("MC_ENABLE_HCA_PEER_AFFINITY", NotApplicable, "HCA peer-affinity tables not implemented (MC_ENABLE_DEST_DEVICE_AFFINITY is)"),
    ("MC_ENABLE_MNNVL", NotApplicable, "TENT backend; no multi-node NVLink"),
    ("MC_ENABLE_PARALLEL_REG_MR", NotApplicable, "memory is registered on each device in turn"),
    ("MC_ENDPOINT_STORE_TYPE", Differently, "one LRU endpoint store, bounded by MC_MAX_EP_PER_CTX"),
    ("MC_FORCE_HCA", Honoured, ""),
    ("MC_FORCE_MNNVL", NotApplicable, "no multi-node NVLink"),
    ("MC_FORCE_MUSA", NotApplicable, "no MUSA GPU transport"),
    ("MC_FORCE_TCP", Honoured, ""),
    ("MC_FRAGMENT_RATIO", Honoured, ""),
    ("MC_GID_INDEX", Honoured, ""),
    ("MC_HANDSHAKE_CONNECT_TIMEOUT", Honoured, ""),
    ("MC_HANDSHAKE_LISTEN_BACKLOG", Differently, "the handshake listener keeps Rust std's listen backlog"),
    ("MC_HANDSHAKE_MAX_LENGTH", Honoured, ""),
    ("MC_HANDSHAKE_PORT", Honoured, ""),
    ("MC_HIP_NUM_EVENTS", NotApplicable, "no HIP (AMD GPU) transport"),
    ("MC_HIP_NUM_STREAMS", NotApplicable, "no HIP (AMD GPU) transport"),
    ("MC_IB_PCI_RELAXED_ORDERING", Honoured, ""),
    ("MC_IB_PORT", Honoured, ""),
    ("MC_IB_SL", Honoured, ""),
    ("MC_IB_TC", Honoured, ""),
    ("MC_INTRANODE_NVLINK", NotApplicable, "no NVLink transport"),
    ("MC_INTRA_NVLINK", NotApplicable, "no NVLink transport"),
    ("MC_LEGACY_RPC_PORT_BINDING", Honoured, ""),
    ("MC_LOG_DIR", Honoured, ""),
    ("MC_LOG_LEVEL", Honoured, ""),
    ("MC_LOG_RDMA_SLICE_AFFINITY", Differently, "slice routing is logged at MC_LOG_LEVEL=TRACE"),
    ("MC_MACA_BATCHFLAG_MIN_BYTES", NotApplicable, "no MACA GPU transport"),
    ("MC_MACA_CALLER_SYNC", NotApplicable, "no MACA GPU transport"),
    ("MC_MACA_COPY_API", NotApplicable, "no MACA GPU transport"),
    ("MC_MACA_HOST_TRANSPORT", NotApplicable, "no MACA GPU transport"),
    ("MC_MAX_CONCURRENT_REG_MR", NotApplicable, "memory is registered on each device in turn"),
    ("MC_MAX_CQE_PER_CTX", Honoured, ""),
    ("MC_MAX_EP_PER_CTX", Honoured, ""),
    ("MC_MAX_INLINE", Honoured, ""),
    ("MC_MAX_MR_SIZE", Honoured, ""),
    ("MC_MAX_PRC_PORT", Honoured, ""),
    ("MC_MAX_RPC_PORT", Honoured, ""),
    ("MC_MAX_SGE", Honoured, ""),
    ("MC_MAX_WR", Honoured, ""),
    ("MC_METADATA_CLUSTER_ID", Honoured, ""),
    ("MC_MIN_PRC_PORT", Honoured, ""),
    ("MC_MIN_REG_SIZE", NotApplicable, "a buffer is registered as one memory region"),
    ("MC_MIN_RPC_PORT", Honoured, ""),
    ("MC_MLX5_QP_LAG_PORT_BALANCE", NotApplicable, "no mlx5 direct-verbs tuning"),
    ("MC_MLX5_QP_UDP_SPORTS", NotApplicable, "no mlx5 direct-verbs tuning"),
    ("MC_MTU", Honoured, ""),
    ("MC_MUSA_COPY_API", NotApplicable, "no MUSA GPU transport"),
    ("MC_MUSA_IPC_OPEN_DEVICE", NotApplicable, "no MUSA GPU transport"),
    ("MC_MUSA_TRANSFER_BATCH_MIN_BYTES", NotApplicable, "no MUSA GPU transport"),
    ("MC_NIC_PEER_AFFINITY", NotApplicable, "NIC peer-affinity tables not implemented (the priority matrix is)"),
    ("MC_NUM_COMP_CHANNELS_PER_CTX", NotApplicable, "completions are polled, no completion channels"),
    ("MC_NUM_CQ_PER_CTX", Differently, "one CQ per device context, polled by MC_WORKERS_PER_CTX workers"),
    ("MC_NUM_QP_PER_EP", Honoured, ""),
    ("MC_PATH_ROUNDROBIN", Honoured, ""),
    ("MC_PKEY_INDEX", Honoured, ""),
    ("MC_RDMA_BIND_ADDRESS", Honoured, ""),
    ("MC_RDMA_NOTIFY_BUFFER_SIZE", NotApplicable, "no rdma_twosided transport; notifications go over the handshake RPC"),
    ("MC_RDMA_NOTIFY_ENABLED", NotApplicable, "no rdma_twosided transport; notifications go over the handshake RPC"),
    ("MC_RDMA_NOTIFY_MAX_PENDING_SENDS", NotApplicable, "no rdma_twosided transport; notifications go over the handshake RPC"),
    ("MC_RDMA_NOTIFY_OOB_FALLBACK", NotApplicable, "no rdma_twosided transport; notifications go over the handshake RPC"),
    ("MC_RDMA_NOTIFY_RECV_COUNT", NotApplicable, "no rdma_twosided transport; notifications go over the handshake RPC"),
    ("MC_RDMA_RAIL_PAUSE_SECONDS", Honoured, ""),
    ("MC_REDIS_DB_INDEX", Honoured, ""),
    ("MC_REDIS_PASSWORD", Honoured, ""),
    ("MC_REDIS_USERNAME", Honoured, ""),
    ("MC_RETRY_CNT", Honoured, ""),
    ("MC_RPC_CLIENT_IO_THREADS", NotApplicable, "no ylt coro_rpc; handshakes use blocking sockets"),
    ("MC_RPC_PROTOCOL", NotApplicable, "no ylt coro_rpc communicator"),
    ("MC_SLICE_SIZE", Honoured, ""),
    ("MC_SLICE_TIMEOUT", Honoured, ""),
    ("MC_STORE_RPC_CLIENT_IO_THREADS", NotApplicable, "Mooncake Store setting"),
    ("MC_TANGRT_LIB_ARCH", NotApplicable, "no Sunrise-link transport"),
    ("MC_TANGRT_LIB_DIR", NotApplicable, "no Sunrise-link transport"),
    ("MC_TANGRT_ROOT", NotApplicable, "no Sunrise-link transport"),
    ("MC_TCP_ADMISSION_TIMEOUT_MS", Differently, "no admission queue; per-peer lanes (MC_TCP_LANES_PER_PEER) bound concurrency"),
    ("MC_TCP_BIND_ADDRESS", Honoured, ""),
    ("MC_TCP_ENABLE_CONNECTION_POOL", Differently, "connections are always pooled: MC_TCP_LANES_PER_PEER persistent lanes per peer"),
    ("MC_TCP_LANES_PER_PEER", Honoured, ""),
    ("MC_TCP_MAX_CONNECTIONS_PER_PEER", Honoured, ""),
    ("MC_TCP_MAX_PENDING_ADMISSIONS_PER_PEER", Differently, "no admission queue; per-peer lanes (MC_TCP_LANES_PER_PEER) bound concurrency"),
    ("MC_TCP_MAX_QUEUED_TRANSFERS_PER_PEER", Differently, "no admission queue; per-peer lanes (MC_TCP_LANES_PER_PEER) bound concurrency"),
    ("MC_TCP_PROGRESS_TIMEOUT_SEC", Honoured, ""),
    ("MC_TCP_PROTO", Honoured, ""),
    ("MC_TCP_SLICE_SIZE", Differently, "TCP frames requests in its own chunks, not configurable"),
    ("MC_TCP_STATUS_TIMEOUT_SEC", Honoured, ""),
    ("MC_TENT_CONF", NotApplicable, "TENT backend"),
    ("MC_TENT_RPC_THREADS", NotApplicable, "TENT backend"),
    ("MC_TE_FILTERS", Honoured, ""),
    ("MC_TE_FILTERS_EXCLUDE", NotApplicable, "TENT backend (MC_TE_FILTERS is honoured)"),
    ("MC_TE_METADATA_REFRESH_INTERVAL_SECONDS", Differently, "descriptors are re-read on demand; the keeper re-publishes ours every MC_TE_METADATA_KEEPALIVE_MS"),
    ("MC_TE_METRIC", Honoured, ""),
    ("MC_TE_METRIC_INTERVAL_SECONDS", Honoured, ""),
    ("MC_TE_RPC_CLIENT_IO_THREADS", NotApplicable, "no ylt coro_rpc; handshakes use blocking sockets"),
    ("MC_TPU_PJRT_LIB", NotApplicable, "TENT backend; no TPU memory"),
    ("MC_TRACK_RDMA_POSTED_SLICES", NotApplicable, "debug tracking of posted slices not implemented; flushed work requests still retry or fail their slices"),
    ("MC_UBSHMEM_GET_STREAM_TIMEOUT", NotApplicable, "no Ascend UBShmem transport"),
    ("MC_UBSHMEM_MAX_STREAMS", NotApplicable, "no Ascend UBShmem transport"),
    ("MC_UBSHMEM_STREAMS_PER_TRANSFER", NotApplicable, "no Ascend UBShmem transport"),
    ("MC_UBSHMEM_THREAD_POOL_SIZE", NotApplicable, "no Ascend UBShmem transport"),
    ("MC_USE_HIP_IPC", NotApplicable, "no HIP (AMD GPU) transport"),
    ("MC_USE_IPV6", Honoured, ""),
    ("MC_USE_NVLINK_IPC", NotApplicable, "no NVLink transport"),
    ("MC_USE_RDMA_TWOSIDED", NotApplicable, "no rdma_twosided transport; notifications go over the handshake RPC"),
    ("MC_USE_TENT", NotApplicable, "TENT backend; te-rs is the classic engine"),
    ("MC_USE_TEV1", NotApplicable, "TENT backend; te-rs is the classic engine"),
    ("MC_USE_UBSHMEM_IPC", NotApplicable, "no Ascend UBShmem transport"),
    ("MC_WORKERS_PER_CTX", Honoured, ""),
    ("MC_YLT_LOG_LEVEL", NotApplicable, "no ylt library"),
];

// `SOURCE_NAMES`: every `MC_*` name te-rs's source mentions (but this file).
include!(concat!(env!("OUT_DIR"), "/mc_names.rs"));

/// `MC_*` names of other Mooncake components (Store, NVMe-oF, the Rust
/// binding's tests) and of upstream's Python binding, set in the same
/// environments: known, so never reported as misspelt.
const ELSEWHERE_PREFIXES: &[&str] = &[
    "MC_STORE_",
    "MC_MS_",
    "MC_NOF_",
    "MC_NVME_",
    "MC_RUST_",
    "MC_TEST_",
    "MC_TE_RS_TEST_",
];
const ELSEWHERE: &[&str] = &[
    "MC_BENCH_PROMOTION_LATENCY",
    "MC_DISABLE_MMAP_ARENA",
    "MC_FILEREAD_WORKERS",
    "MC_INITIATOR_DEVICE_NAME",
    "MC_INITIATOR_SERVER_NAME",
    "MC_LOCAL_SERVER_NAME",
    "MC_MASTER_ADDR",
    "MC_METADATA_SERVER",
    "MC_MMAP_ARENA_POOL_SIZE",
    "MC_RPC_CONNECT_TIMEOUT_MS",
    "MC_RPC_TIMEOUT_MS",
    "MC_TARGET_DEVICE_NAME",
    "MC_TARGET_SERVER_NAME",
    "MC_TRANSFER_TIMEOUT",
];

/// A name te-rs reads, upstream's engine reads, or another Mooncake part uses.
pub fn is_known(name: &str) -> bool {
    SOURCE_NAMES.contains(&name)
        || UPSTREAM.iter().any(|(n, _, _)| *n == name)
        || ELSEWHERE.contains(&name)
        || ELSEWHERE_PREFIXES.iter().any(|p| name.starts_with(p))
}

/// The known name closest to `name` (edit distance), for a typo hint.
pub fn nearest_known(name: &str) -> &'static str {
    SOURCE_NAMES
        .iter()
        .chain(UPSTREAM.iter().map(|(n, _, _)| n))
        .chain(ELSEWHERE.iter())
        .min_by_key(|k| edit_distance(name, k))
        .copied()
        .unwrap_or("MC_LOG_LEVEL")
}

/// Levenshtein distance over bytes (names are ASCII).
fn edit_distance(a: &str, b: &str) -> usize {
    let (a, b) = (a.as_bytes(), b.as_bytes());
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut cur = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            let swap = prev[j] + usize::from(ca != cb);
            cur[j + 1] = swap.min(prev[j + 1] + 1).min(cur[j] + 1);
        }
        prev = cur;
    }
    prev[b.len()]
}

/// Set `MC_*` variables no part of te-rs or Mooncake reads, each with the
/// nearest known name.
pub fn set_but_unknown() -> Vec<(String, &'static str)> {
    let mut out: Vec<(String, &'static str)> = std::env::vars_os()
        .filter_map(|(k, _)| k.into_string().ok())
        .filter(|k| k.starts_with("MC_") && !is_known(k))
        .map(|k| {
            let near = nearest_known(&k);
            (k, near)
        })
        .collect();
    out.sort();
    out
}

/// The variables that are set but that te-rs does not read, with the note.
pub fn set_but_unread() -> Vec<(&'static str, Support, &'static str)> {
    UPSTREAM
        .iter()
        .filter(|(name, s, _)| *s != Honoured && std::env::var_os(name).is_some())
        .copied()
        .collect()
}

static CHECKED: Once = Once::new();

/// Say once per process which set variables te-rs does not read, and which
/// are no setting at all (likely misspelt), called at engine creation.
pub fn log_unread_once() {
    CHECKED.call_once(|| {
        for (name, near) in set_but_unknown() {
            log::warn!(
                "{name} is set but no setting of te-rs or Mooncake has this name; did you mean {near}?"
            );
        }
        for (name, support, note) in set_but_unread() {
            match support {
                Differently => log::warn!("{name} is set but not read by te-rs: {note}"),
                _ => log::warn!("{name} is set but not applicable to te-rs: {note}"),
            }
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sorted_unique_and_explained() {
        for w in UPSTREAM.windows(2) {
            assert!(w[0].0 < w[1].0, "{} / {}", w[0].0, w[1].0);
        }
        for (name, s, note) in UPSTREAM {
            assert!(name.starts_with("MC_"));
            assert_eq!(*s == Honoured, note.is_empty(), "{name}");
        }
    }

    #[test]
    fn misspelt_names_get_the_nearest_known_one() {
        assert!(
            SOURCE_NAMES.contains(&"MC_SLICE_SIZE"),
            "build.rs collected src/"
        );
        assert!(is_known("MC_SLICE_SIZE") && is_known("MC_USE_TENT"));
        assert!(is_known("MC_STORE_MEMCPY") && is_known("MC_TRANSFER_TIMEOUT"));
        assert!(!is_known("MC_SLICE_SIZ") && !is_known("MC_FORCETCP"));
        assert_eq!(nearest_known("MC_SLICE_SIZ"), "MC_SLICE_SIZE");
        assert_eq!(nearest_known("MC_FORCETCP"), "MC_FORCE_TCP");
        assert_eq!(nearest_known("MC_TCP_BIND_ADRESS"), "MC_TCP_BIND_ADDRESS");
        assert_eq!(nearest_known("MC_LOG_LEVLE"), "MC_LOG_LEVEL");
        assert_eq!(edit_distance("abc", "abc"), 0);
        assert_eq!(edit_distance("abc", "ab"), 1);
        assert_eq!(edit_distance("", "xy"), 2);
    }

    #[test]
    fn set_unread_variables_are_reported() {
        std::env::set_var("MC_USE_TENT", "1");
        std::env::set_var("MC_TE_METRIC_INTERVAL_SECONDS", "5");
        let unread = set_but_unread();
        assert!(unread
            .iter()
            .any(|(n, s, _)| *n == "MC_USE_TENT" && *s == NotApplicable));
        assert!(!unread
            .iter()
            .any(|(n, _, _)| *n == "MC_TE_METRIC_INTERVAL_SECONDS"));
        std::env::remove_var("MC_USE_TENT");
    }
}
