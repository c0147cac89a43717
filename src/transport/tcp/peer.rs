//! A peer's data endpoint (segment name, data port, framing) with its FIFO
//! and its connections. Connections live on the client's shared event
//! loops, so a peer costs descriptors, not threads; connecting happens on a
//! short-lived thread (the lookup may block on a metadata store), never in
//! `submit` and never on a loop.
//!
//! A peer starts with one connection and adds connections (up to
//! `lanes_per_peer`) while work waits in its FIFO that no connection has
//! room for. A connection idle for `lane_idle` closes; the next push opens
//! one again. Small requests skip the FIFO when a connection is idle: the
//! submitting thread sends them itself (`push`), which saves a wake-up.

use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::client::ClientShared;
use super::client_conn::ClientConn;
use super::config::TcpConfig;
use super::queue::{Job, JobQueue};
use super::sock;
use crate::serving::RateLimited;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Segment name; the host comes from its rpc_meta.
    pub name: String,
    pub port: u16,
    pub v2: bool,
}

pub struct Peer {
    pub key: PeerKey,
    pub cfg: TcpConfig,
    client: Arc<ClientShared>,
    pub queue: JobQueue,
    links: Mutex<Links>,
    max_links: usize,
}

/// Open connections, and connects under way.
#[derive(Default)]
struct Links {
    conns: Vec<Arc<ClientConn>>,
    connecting: usize,
}

/// Requests up to this many bytes (in one submission) may be sent by the
/// submitting thread on an idle connection.
const SHORT_PATH_BYTES: u64 = 64 * 1024;

/// Attempts per connect round (a short bounded retry, then queued work fails).
const CONNECT_ATTEMPTS: u32 = 2;

static CONNECT_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));

impl Peer {
    pub fn new(key: PeerKey, cfg: TcpConfig, client: Arc<ClientShared>) -> Peer {
        Peer {
            key,
            max_links: cfg.lanes_per_peer.clamp(1, 16),
            cfg,
            client,
            queue: JobQueue::default(),
            links: Mutex::new(Links::default()),
        }
    }

    /// Open connections (diagnostics, tests).
    pub fn connections(&self) -> usize {
        self.links.lock().conns.len()
    }

    pub fn push(self: &Arc<Self>, jobs: Vec<Job>) {
        let Some(jobs) = self.send_now(jobs) else {
            return;
        };
        self.queue.push_many(jobs);
        self.kick();
    }

    /// The short path: small requests with nothing queued ahead of them go
    /// out from this thread on an idle connection. Hands back what it did
    /// not send.
    fn send_now(&self, mut jobs: Vec<Job>) -> Option<Vec<Job>> {
        let bytes: u64 = jobs.iter().map(|j| j.len).sum();
        if bytes > SHORT_PATH_BYTES || !self.queue.is_empty() {
            return Some(jobs);
        }
        let links = self.links.lock();
        for c in &links.conns {
            match c.try_send_idle(jobs) {
                Ok(()) => {
                    self.client.short_sends.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Err(back) => jobs = back,
            }
        }
        Some(jobs)
    }

    /// Work is queued: have a connection with room take it, or open one
    /// more. Connections that run out of work say so (`hungry`) before
    /// re-checking the queue, so between the two sides no push is missed.
    pub fn kick(self: &Arc<Self>) {
        if self.queue.is_empty() {
            return;
        }
        let mut links = self.links.lock();
        for c in &links.conns {
            if c.claim_hungry() {
                self.client.drive(c.loop_index, c.token);
                return;
            }
        }
        if links.conns.len() + links.connecting >= self.max_links {
            return;
        }
        links.connecting += 1;
        drop(links);
        if let Err(e) = self.client.spawn_connector(self.clone()) {
            self.connect_failed(&format!("cannot start a connecting thread: {e}"));
        }
    }

    /// A connection on the short path broke: have its loop close it.
    pub fn conn_broke(&self, loop_index: usize, token: usize) {
        self.client.drive(loop_index, token);
    }

    /// The loop closed `conn`: forget it, and reconnect if work waits.
    pub fn conn_closed(self: &Arc<Self>, conn: &Arc<ClientConn>) {
        self.links.lock().conns.retain(|c| !Arc::ptr_eq(c, conn));
        self.kick();
    }

    /// The connecting thread's work: connect and hand the socket to a loop.
    pub fn connect(self: Arc<Self>) {
        let stream = match self.open() {
            Ok(s) => s,
            Err(why) => return self.connect_failed(&why),
        };
        let (index, token) = match self.client.loops.place() {
            Ok(p) => p,
            Err(e) => return self.connect_failed(&format!("cannot start an event loop: {e}")),
        };
        let conn = Arc::new(ClientConn::new(
            self.clone(),
            stream.0,
            index,
            token,
            format!("{} ({})", self.key.name, stream.1),
        ));
        let mut links = self.links.lock();
        links.connecting -= 1;
        links.conns.push(conn.clone());
        drop(links);
        self.client.loops.adopt(conn);
    }

    /// A connect failed: queued work fails unless another connection to
    /// this peer is open or on its way (it will take the work).
    fn connect_failed(&self, why: &str) {
        let mut links = self.links.lock();
        links.connecting -= 1;
        let alone = links.conns.is_empty() && links.connecting == 0;
        drop(links);
        if alone {
            let n = self.queue.fail_queued();
            CONNECT_LOG.error(format_args!(
                "tcp: cannot connect to segment '{}' data port {}: {why}; {n} request(s) failed",
                self.key.name, self.key.port
            ));
        } else {
            CONNECT_LOG.warn(format_args!(
                "tcp: cannot add a connection to segment '{}' data port {}: {why}",
                self.key.name, self.key.port
            ));
        }
    }

    /// Resolve the peer's host and connect, with a short bounded retry.
    fn open(&self) -> Result<(TcpStream, std::net::SocketAddr), String> {
        let stop = &self.client.stop;
        let meta = self
            .client
            .metadata
            .rpc_meta(&self.key.name)
            .map_err(|e| format!("rpc_meta lookup: {e}"))?;
        let host = meta.ip_or_host_name;
        let addrs: Vec<_> = (host.as_str(), self.key.port)
            .to_socket_addrs()
            .map_err(|e| format!("resolving {host}: {e}"))?
            .collect();
        let mut last = format!("{host} resolved to no address");
        for attempt in 0..CONNECT_ATTEMPTS {
            if attempt > 0 {
                std::thread::sleep(Duration::from_millis(50));
            }
            for a in &addrs {
                if stop.load(Ordering::Acquire) {
                    return Err("transport shutting down".into());
                }
                match sock::connect(a, self.cfg.connect_timeout, stop) {
                    Ok(s) => {
                        sock::tune(&s, self.cfg.socket_buffer);
                        return Ok((s, *a));
                    }
                    Err(e) => last = format!("{a}: {e}"),
                }
            }
        }
        Err(last)
    }
}
