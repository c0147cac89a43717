//! TCP transport settings (Mooncake variable names and defaults, spec §8).

use std::time::Duration;

use crate::config::{env_is_set, env_secs, env_str, env_u64};

#[derive(Clone, Debug)]
pub struct TcpConfig {
    /// Persistent connections per peer (`MC_TCP_LANES_PER_PEER`, alias
    /// `MC_TCP_MAX_CONNECTIONS_PER_PEER`; 4, max 16).
    pub lanes_per_peer: usize,
    /// `MC_TCP_PROTO=1`: speak v1 framing even to v2 peers.
    pub force_v1: bool,
    /// Longest wait for a status frame or for any progress on a body: the
    /// shorter of `MC_TCP_STATUS_TIMEOUT_SEC` and upstream's sliding
    /// `MC_TCP_PROGRESS_TIMEOUT_SEC` (30 s each), which te-rs keeps as one
    /// deadline that every byte moved re-arms.
    pub status_timeout: Duration,
    /// Bound on establishing a data connection.
    pub connect_timeout: Duration,
    /// Requests sent on one connection before the first one's answer is read.
    pub pipeline_depth: usize,
    /// A lane closes its connection after this long without work (the
    /// server closes idle connections later than this).
    pub lane_idle: Duration,
    /// The server closes a connection idle between requests for this long
    /// (`MC_TCP_SERVER_IDLE_TIMEOUT_SEC`, 120 s; lanes close theirs after 60 s).
    pub server_idle: Duration,
    /// The server closes a connection that has not completed a request
    /// header this long after connecting or after the header's last byte
    /// (`MC_TCP_SERVER_HEADER_TIMEOUT_SEC`, 5 s).
    pub server_header_timeout: Duration,
    /// A connection busy with a request (body arriving, answers leaving)
    /// must move at least `server_min_rate` bytes/s over each
    /// `server_rate_window`, or it is closed (`MC_TCP_SERVER_MIN_RATE_KBPS`,
    /// 32 KiB/s, 0 turns it off; `MC_TCP_SERVER_RATE_WINDOW_SEC`, 10 s).
    pub server_min_rate: u64,
    pub server_rate_window: Duration,
    /// Server-side cap on concurrently served connections
    /// (`MC_TCP_SERVER_MAX_CONNECTIONS`, 16384).
    pub max_server_connections: usize,
    /// ... from one source IP (`MC_TCP_SERVER_MAX_CONNECTIONS_PER_IP`, 4096).
    pub max_server_connections_per_ip: usize,
    /// Event-loop threads of the server (`MC_TCP_SERVER_THREADS`, up to 4).
    pub server_threads: usize,
    /// Event-loop threads driving the client's connections to every peer
    /// (`MC_TCP_CLIENT_THREADS`, 4: each starts with its first connection,
    /// so an engine runs at most as many as it has connections).
    pub client_threads: usize,
    /// SO_SNDBUF/SO_RCVBUF for data sockets; 0 keeps kernel autotuning.
    pub socket_buffer: usize,
}

impl Default for TcpConfig {
    fn default() -> Self {
        TcpConfig {
            lanes_per_peer: 4,
            force_v1: false,
            status_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pipeline_depth: 32,
            lane_idle: Duration::from_secs(60),
            server_idle: Duration::from_secs(120),
            server_header_timeout: Duration::from_secs(5),
            server_min_rate: 32 << 10,
            server_rate_window: Duration::from_secs(10),
            max_server_connections: 16384,
            max_server_connections_per_ip: 4096,
            server_threads: default_server_threads(),
            client_threads: 4,
            socket_buffer: 0,
        }
    }
}

impl TcpConfig {
    pub fn from_env() -> TcpConfig {
        let d = TcpConfig::default();
        let lanes_var = if env_is_set("MC_TCP_LANES_PER_PEER") {
            "MC_TCP_LANES_PER_PEER"
        } else {
            "MC_TCP_MAX_CONNECTIONS_PER_PEER"
        };
        TcpConfig {
            lanes_per_peer: env_u64(lanes_var, d.lanes_per_peer as u64, 1, 16) as usize,
            force_v1: env_str("MC_TCP_PROTO").is_some_and(|v| v.trim() == "1"),
            status_timeout: env_secs("MC_TCP_STATUS_TIMEOUT_SEC", 30, 1, 3600).min(env_secs(
                "MC_TCP_PROGRESS_TIMEOUT_SEC",
                30,
                1,
                3600,
            )),
            socket_buffer: env_u64("MC_TCP_SOCKET_BUFFER", 0, 0, 1 << 30) as usize,
            server_idle: env_secs("MC_TCP_SERVER_IDLE_TIMEOUT_SEC", 120, 1, 86400),
            server_header_timeout: env_secs("MC_TCP_SERVER_HEADER_TIMEOUT_SEC", 5, 1, 3600),
            server_min_rate: env_u64("MC_TCP_SERVER_MIN_RATE_KBPS", 32, 0, 1 << 30) << 10,
            server_rate_window: env_secs("MC_TCP_SERVER_RATE_WINDOW_SEC", 10, 1, 3600),
            max_server_connections: env_u64("MC_TCP_SERVER_MAX_CONNECTIONS", 16384, 1, 1 << 20)
                as usize,
            max_server_connections_per_ip: env_u64(
                "MC_TCP_SERVER_MAX_CONNECTIONS_PER_IP",
                4096,
                1,
                1 << 20,
            ) as usize,
            server_threads: env_u64(
                "MC_TCP_SERVER_THREADS",
                default_server_threads() as u64,
                1,
                64,
            ) as usize,
            client_threads: env_u64("MC_TCP_CLIENT_THREADS", 4, 1, 64) as usize,
            ..d
        }
    }
}

/// One event loop per core, at most four. Cores are the CPUs this process
/// may run on (its affinity mask): std's `available_parallelism` also parses
/// the cgroup files, a tenth of a fresh engine's creation, and with at most
/// four loops a CPU quota below that costs only idle threads.
fn default_server_threads() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    let cores = *CORES.get_or_init(|| {
        // SAFETY: `set` is a zeroed cpu_set_t of the size passed; the call
        // only writes into it.
        unsafe {
            let mut set: libc::cpu_set_t = std::mem::zeroed();
            if libc::sched_getaffinity(0, std::mem::size_of::<libc::cpu_set_t>(), &mut set) == 0 {
                libc::CPU_COUNT(&set) as usize
            } else {
                1
            }
        }
    });
    cores.clamp(1, 4)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn progress_and_status_timeouts_make_one_deadline() {
        // Both names are read only here; no other unit test sets them.
        std::env::set_var("MC_TCP_PROGRESS_TIMEOUT_SEC", "5");
        assert_eq!(TcpConfig::from_env().status_timeout, Duration::from_secs(5));
        std::env::set_var("MC_TCP_STATUS_TIMEOUT_SEC", "3");
        assert_eq!(TcpConfig::from_env().status_timeout, Duration::from_secs(3));
        std::env::set_var("MC_TCP_PROGRESS_TIMEOUT_SEC", "0"); // upstream: > 0 only
        assert_eq!(TcpConfig::from_env().status_timeout, Duration::from_secs(3));
        std::env::remove_var("MC_TCP_STATUS_TIMEOUT_SEC");
        assert_eq!(
            TcpConfig::from_env().status_timeout,
            Duration::from_secs(30)
        );
        std::env::remove_var("MC_TCP_PROGRESS_TIMEOUT_SEC");
    }
}
