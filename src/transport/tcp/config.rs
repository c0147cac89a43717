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
    /// Longest wait for a status frame or for any progress on a body
    /// (`MC_TCP_STATUS_TIMEOUT_SEC`, 30 s).
    pub status_timeout: Duration,
    /// Bound on establishing a data connection.
    pub connect_timeout: Duration,
    /// Requests sent on one connection before the first one's answer is read.
    pub pipeline_depth: usize,
    /// A lane closes its connection after this long without work (the
    /// server closes idle connections later than this).
    pub lane_idle: Duration,
    /// The server closes a connection that sends no header for this long.
    pub server_idle: Duration,
    /// Server-side cap on concurrently served connections.
    pub max_server_connections: usize,
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
            server_idle: Duration::from_secs(600),
            max_server_connections: 1024,
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
            status_timeout: env_secs("MC_TCP_STATUS_TIMEOUT_SEC", 30, 1, 3600),
            socket_buffer: env_u64("MC_TCP_SOCKET_BUFFER", 0, 0, 1 << 30) as usize,
            ..d
        }
    }
}
