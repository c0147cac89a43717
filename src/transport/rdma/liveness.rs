//! Peer liveness. A NIC retransmits to a vanished peer for as long as its
//! retry settings allow, and rxe never gives up with upstream's
//! `retry_cnt = 7`, so WRs to a killed process could stay in flight forever.
//! The transport therefore probes the peer's RPC port (one TCP connect) when
//! an endpoint with WRs in flight makes no progress for
//! `MC_TE_RS_RDMA_PROBE_MS`, and remembers a peer that refused for
//! `MC_TE_RS_RDMA_DEAD_HOLD_MS`, so its queued slices fail at once instead of
//! waiting out re-handshake backoff. A peer that answers while an endpoint
//! still gets no completion for `MC_TE_RS_RDMA_STALL_MS` is alive but its
//! QP is not (restarted on the same address, endpoint replaced): that
//! endpoint is retired and its slices go on through a fresh handshake.

use std::collections::HashMap;
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::config::env_u64;
use crate::metadata::Metadata;

/// Milliseconds since the first call in this process: a cheap clock that
/// fits an atomic.
pub fn coarse_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64
}

/// What one probe of a peer's RPC port found.
#[derive(Debug, PartialEq, Eq)]
pub enum Probe {
    Alive,
    /// Refused, unreachable or unresolvable: the peer process is gone.
    Gone(String),
}

/// Connect to the RPC (handshake) port of `server` and close again.
pub fn probe(meta: &Metadata, server: &str, timeout: Duration) -> Probe {
    let rpc = match meta.rpc_meta(server) {
        Ok(m) => m,
        Err(e) => return Probe::Gone(format!("no RPC address: {e}")),
    };
    let addrs = match (rpc.ip_or_host_name.as_str(), rpc.rpc_port).to_socket_addrs() {
        Ok(a) => a.collect::<Vec<_>>(),
        Err(e) => return Probe::Gone(format!("resolving {}: {e}", rpc.ip_or_host_name)),
    };
    let mut why = format!("{}:{} has no address", rpc.ip_or_host_name, rpc.rpc_port);
    for a in addrs {
        match TcpStream::connect_timeout(&a, timeout) {
            Ok(_) => return Probe::Alive,
            Err(e) => why = format!("connecting to {a}: {e}"),
        }
    }
    Probe::Gone(why)
}

/// Peers found gone recently, by server (segment) name.
pub struct PeerLiveness {
    dead: Mutex<HashMap<String, Instant>>,
    /// Entries in `dead`: the posting path reads only this while no peer
    /// is gone (no lock per peer queue).
    marked: AtomicUsize,
    /// No progress this long with WRs in flight: probe the peer.
    pub probe_after: Duration,
    /// No completion this long with WRs in flight: retire the endpoint,
    /// whatever probes say.
    pub stall_after: Duration,
    /// A gone peer's slices fail at once for this long; then a handshake is
    /// tried again (a restarted peer is found).
    pub hold: Duration,
    pub connect_timeout: Duration,
}

impl PeerLiveness {
    pub fn new(
        probe_after: Duration,
        stall_after: Duration,
        hold: Duration,
        connect_timeout: Duration,
    ) -> Self {
        PeerLiveness {
            dead: Mutex::new(HashMap::new()),
            marked: AtomicUsize::new(0),
            probe_after,
            stall_after,
            hold,
            connect_timeout,
        }
    }

    /// `MC_TE_RS_RDMA_PROBE_MS` (1000), `MC_TE_RS_RDMA_STALL_MS` (8000),
    /// `MC_TE_RS_RDMA_DEAD_HOLD_MS` (2000),
    /// connect timeout `MC_HANDSHAKE_CONNECT_TIMEOUT` (upstream's, 5 s).
    pub fn from_env() -> Self {
        let ms = |name, d, lo, hi| Duration::from_millis(env_u64(name, d, lo, hi));
        PeerLiveness::new(
            ms("MC_TE_RS_RDMA_PROBE_MS", 1000, 10, 3_600_000),
            ms("MC_TE_RS_RDMA_STALL_MS", 8000, 10, 3_600_000),
            ms("MC_TE_RS_RDMA_DEAD_HOLD_MS", 2000, 0, 3_600_000),
            crate::config::env_secs("MC_HANDSHAKE_CONNECT_TIMEOUT", 5, 1, 3599),
        )
    }

    /// `server` was found gone less than `hold` ago.
    pub fn is_dead(&self, server: &str, now: Instant) -> bool {
        if self.marked.load(Ordering::Acquire) == 0 {
            return false;
        }
        let mut d = self.dead.lock();
        let r = match d.get(server) {
            Some(t) if now.saturating_duration_since(*t) < self.hold => true,
            Some(_) => {
                d.remove(server);
                false
            }
            None => false,
        };
        self.marked.store(d.len(), Ordering::Release);
        r
    }

    /// Remember `server` as gone; logs once per finding.
    pub fn mark_dead(&self, server: &str, why: &str, now: Instant) {
        let mut d = self.dead.lock();
        let new = d.insert(server.to_string(), now).is_none();
        self.marked.store(d.len(), Ordering::Release);
        drop(d);
        if new {
            log::warn!("RDMA peer {server} is gone ({why}): its slices fail at once");
        }
    }

    /// A handshake with `server` succeeded.
    pub fn mark_alive(&self, server: &str) {
        let mut d = self.dead.lock();
        d.remove(server);
        self.marked.store(d.len(), Ordering::Release);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dead_mark_holds_then_expires() {
        let l = PeerLiveness::new(
            Duration::from_millis(10),
            Duration::from_secs(8),
            Duration::from_millis(50),
            Duration::from_secs(1),
        );
        let t = Instant::now();
        assert!(!l.is_dead("p:1", t));
        l.mark_dead("p:1", "refused", t);
        assert!(l.is_dead("p:1", t + Duration::from_millis(49)));
        assert!(!l.is_dead("p:2", t));
        assert!(!l.is_dead("p:1", t + Duration::from_millis(50)));
        l.mark_dead("p:1", "refused", t);
        l.mark_alive("p:1");
        assert!(!l.is_dead("p:1", t));
    }

    #[test]
    fn probe_tells_a_closed_port_from_a_listening_one() {
        let meta = Metadata::new("P2PHANDSHAKE", "127.0.0.1").unwrap();
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let alive = format!("127.0.0.1:{port}");
        assert_eq!(probe(&meta, &alive, Duration::from_secs(1)), Probe::Alive);
        drop(listener);
        match probe(&meta, &alive, Duration::from_secs(1)) {
            Probe::Gone(why) => assert!(why.contains("refused"), "{why}"),
            Probe::Alive => panic!("a closed port probed alive"),
        }
    }
}
