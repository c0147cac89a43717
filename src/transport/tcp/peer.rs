//! A peer's data endpoint (segment name, data port, framing) with its FIFO
//! and its connections. Connections live on the client's shared event
//! loops, so a peer costs descriptors, not threads. Connecting happens on
//! a thread of its own (the lookup may block on a metadata store), never on
//! a running loop: a short-lived one, or the thread of a loop that starts
//! for this connection, before it runs the loop. Only a peer's first
//! connection for a small request may start in `submit`, when it cannot
//! block (`open_here`).
//!
//! A peer starts with one connection and adds connections (up to
//! `lanes_per_peer`) while work waits in its FIFO that no connection has
//! room for. A connection idle for `lane_idle` closes; the next push opens
//! one again. Small requests skip the FIFO when a connection is idle: the
//! submitting thread sends them itself (`push`), which saves a wake-up.

use std::net::{IpAddr, SocketAddr, TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;

use super::client::ClientShared;
use super::client_conn::ClientConn;
use super::config::TcpConfig;
use super::queue::{Job, JobQueue};
use super::sock;
use crate::metadata::descriptor::SegmentDesc;
use crate::serving::RateLimited;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Segment name; the host comes from its rpc_meta.
    pub name: String,
    pub port: u16,
    pub v2: bool,
    /// The owner's `te_rs_incarnation` (te-rs peers): every new connection
    /// checks that the process behind the port is still this one.
    pub incarnation: Option<String>,
}

impl PeerKey {
    /// The data endpoint a descriptor names.
    pub fn of(desc: &SegmentDesc, force_v1: bool) -> PeerKey {
        PeerKey {
            name: desc.name.clone(),
            port: desc.tcp_data_port,
            v2: desc.tcp_proto_version >= 2 && !force_v1,
            incarnation: desc.te_rs_incarnation.clone(),
        }
    }
}

pub struct Peer {
    pub key: PeerKey,
    pub cfg: TcpConfig,
    client: Arc<ClientShared>,
    pub queue: JobQueue,
    links: Mutex<Links>,
    max_links: usize,
    /// A connection to the owner broke since it was last checked: jobs
    /// pushed now are marked `after_break`.
    broke: AtomicBool,
    /// The owner was replaced: this peer takes no more work.
    retired: AtomicBool,
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

/// A connect the submitting thread began, for a connecting thread to finish.
pub type Pending = (socket2::Socket, SocketAddr);

/// Attempts per connect round (a short bounded retry, then queued work fails).
const CONNECT_ATTEMPTS: u32 = 2;

static CONNECT_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));
static REPLACED_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(1));

impl Peer {
    pub fn new(key: PeerKey, cfg: TcpConfig, client: Arc<ClientShared>) -> Peer {
        Peer {
            key,
            max_links: cfg.lanes_per_peer.clamp(1, 16),
            cfg,
            client,
            queue: JobQueue::default(),
            links: Mutex::new(Links::default()),
            broke: AtomicBool::new(false),
            retired: AtomicBool::new(false),
        }
    }

    /// Open connections (diagnostics, tests).
    pub fn connections(&self) -> usize {
        self.links.lock().conns.len()
    }

    pub fn push(self: &Arc<Self>, mut jobs: Vec<Job>) {
        if self.retired.load(Ordering::Acquire) {
            REPLACED_LOG.error(format_args!(
                "tcp: segment '{}' was replaced by a new engine; {} request(s) submitted to the old one failed",
                self.key.name,
                jobs.len()
            ));
            return jobs.into_iter().for_each(Job::fail);
        }
        if self.broke.load(Ordering::Acquire) {
            jobs.iter_mut().for_each(|j| j.after_break = true);
        }
        let Some(jobs) = self.send_now(jobs) else {
            return;
        };
        self.queue.push_many(jobs);
        self.kick();
    }

    /// The short path: small requests with nothing queued ahead of them go
    /// out from this thread on an idle connection. Hands back what it did
    /// not send.
    fn send_now(self: &Arc<Self>, mut jobs: Vec<Job>) -> Option<Vec<Job>> {
        let bytes: u64 = jobs.iter().map(|j| j.len).sum();
        if bytes > SHORT_PATH_BYTES || !self.queue.is_empty() {
            return Some(jobs);
        }
        let mut links = self.links.lock();
        // A te-rs owner is checked before a new connection carries bytes,
        // which takes a connecting thread: no sending from here then.
        if links.conns.is_empty() && links.connecting == 0 && self.key.incarnation.is_none() {
            links.connecting += 1;
            drop(links);
            return self.open_here(jobs);
        }
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

    /// The first connection, for a small request: connect from this thread
    /// when that cannot block (the address needs no lookup and is an IP, as
    /// with P2PHANDSHAKE) and send the request at once, before any thread
    /// starts; the loop (started meanwhile if need be) reads the answer. A
    /// connect not decided at once (a real network) is finished on a
    /// connecting thread. The caller counted this connect in `connecting`.
    fn open_here(self: &Arc<Self>, jobs: Vec<Job>) -> Option<Vec<Job>> {
        let addr = self
            .client
            .metadata
            .rpc_meta_cached(&self.key.name)
            .and_then(|m| m.ip_or_host_name.parse::<IpAddr>().ok())
            .map(|ip| SocketAddr::new(ip, self.key.port));
        let (begun, addr) = match addr.map(|a| (sock::begin_connect(&a), a)) {
            Some((Ok(b), a)) => (b, a),
            // A lookup or a failed connect: the connecting thread tries,
            // retries and reports.
            _ => {
                self.links.lock().connecting -= 1;
                return Some(jobs);
            }
        };
        let stream = match begun {
            sock::Begun::Connected(s) => s,
            sock::Begun::Pending(s) => {
                self.queue.push_many(jobs);
                if let Err(e) = self.client.spawn_connector(self.clone(), Some((s, addr))) {
                    self.connect_failed(&format!("cannot start a connecting thread: {e}"));
                }
                return None;
            }
        };
        sock::tune(&stream, self.cfg.socket_buffer);
        let index = match self.client.loops.choose() {
            Ok(i) => i,
            Err(e) => {
                self.queue.push_many(jobs);
                self.connect_failed(&format!("cannot start an event loop: {e}"));
                return None;
            }
        };
        let conn = self.new_conn(stream, index, addr);
        if let Err(back) = conn.try_send_idle(jobs) {
            // The loop sends them once it has the connection.
            self.queue.push_many(back);
        } else {
            self.client.short_sends.fetch_add(1, Ordering::Relaxed);
        }
        // The request is out: the loop's thread may start now.
        if let Err(e) = self.client.loops.ensure(index) {
            CONNECT_LOG.error(format_args!(
                "tcp: cannot start an event loop for segment '{}': {e}",
                self.key.name
            ));
            conn.abort();
            self.conn_closed(&conn);
            return None;
        }
        self.client.loops.adopt(conn);
        None
    }

    /// Count a new connection in (it was counted in `connecting`).
    /// The client's counters (shared by all peers).
    pub fn counters(&self) -> &super::counters::TcpCounters {
        &self.client.counters
    }

    fn new_conn(self: &Arc<Self>, s: TcpStream, index: usize, a: SocketAddr) -> Arc<ClientConn> {
        self.client
            .counters
            .connects
            .fetch_add(1, Ordering::Relaxed);
        let conn = Arc::new(ClientConn::new(
            self.clone(),
            s,
            index,
            self.client.loops.token(),
            format!("{} ({a})", self.key.name),
        ));
        let mut links = self.links.lock();
        links.connecting -= 1;
        links.conns.push(conn.clone());
        conn
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
        if let Err(e) = self.client.spawn_connector(self.clone(), None) {
            self.connect_failed(&format!("cannot start a connecting thread: {e}"));
        }
    }

    /// Requests re-sent after the connection they went out on broke.
    pub fn note_resent(&self, n: usize) {
        self.client.resent.fetch_add(n as u64, Ordering::Relaxed);
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

    /// A connecting thread's work: connect (or finish `pending`), check
    /// the owner, and hand the socket to loop `index`.
    pub fn connect(self: Arc<Self>, index: usize, pending: Option<Pending>) {
        let (stream, addr) = match self.open(pending) {
            Ok(s) => s,
            Err(why) => return self.connect_failed(&why),
        };
        if let Some(ours) = &self.key.incarnation {
            // Connected first, then asked: a process that took the port
            // before our connect has published its descriptor by now, and
            // one that takes it later cannot have our connection.
            match self.client.metadata.reread_desc(&self.key.name) {
                Ok(d) if d.te_rs_incarnation.as_ref() == Some(ours) => {
                    self.broke.store(false, Ordering::Release);
                }
                Ok(d) => {
                    drop(stream);
                    return self.owner_replaced(&d);
                }
                Err(e) => {
                    return self.connect_failed(&format!("cannot check the owner: {e}"));
                }
            }
        }
        let conn = self.new_conn(stream, index, addr);
        self.client.loops.adopt(conn);
    }

    /// A connection to the owner broke (EOF, reset, I/O error).
    pub fn note_broken(&self) {
        self.broke.store(true, Ordering::Release);
    }

    pub fn is_retired(&self) -> bool {
        self.retired.load(Ordering::Acquire)
    }

    /// A new process owns the segment (`now` is its descriptor). Nothing
    /// sent to the old one may land in it: the old owner's connections are
    /// closed and its queued requests fail, except those pushed after a
    /// connection to it broke (submitted when it was already gone) whose
    /// range the new owner registered: they go to the new owner. Later
    /// submits see the new descriptor (`reread_desc` cached it).
    fn owner_replaced(self: &Arc<Self>, now: &SegmentDesc) {
        let old_conns: Vec<Arc<ClientConn>> = {
            let mut links = self.links.lock();
            links.connecting -= 1;
            std::mem::take(&mut links.conns)
        };
        if self.retired.swap(true, Ordering::AcqRel) {
            return; // another connect found it first and settled the queue
        }
        self.client.replaced.fetch_add(1, Ordering::Relaxed);
        for c in &old_conns {
            c.abort();
        }
        let (go_on, failed): (Vec<Job>, Vec<Job>) =
            self.queue.take_all().into_iter().partition(|j| {
                j.after_break
                    && now.tcp_data_port != 0
                    && now.find_buffer(j.remote, j.len).is_some()
            });
        REPLACED_LOG.error(format_args!(
            "tcp: segment '{}' was replaced by a new engine (incarnation {} -> {}): \
             {} request(s) submitted to the old one failed, {} submitted after it went away go to the new one",
            self.key.name,
            self.key.incarnation.as_deref().unwrap_or("?"),
            now.te_rs_incarnation.as_deref().unwrap_or("none"),
            failed.len(),
            go_on.len()
        ));
        failed.into_iter().for_each(Job::fail);
        if go_on.is_empty() {
            return;
        }
        match self.client.peer(PeerKey::of(now, !self.key.v2)) {
            Some(p) => p.push(go_on),
            None => go_on.into_iter().for_each(Job::fail),
        }
    }

    /// A connect failed: queued work fails unless another connection to
    /// this peer is open or on its way (it will take the work).
    fn connect_failed(&self, why: &str) {
        let c = &self.client.counters;
        c.connect_failures.fetch_add(1, Ordering::Relaxed);
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
    fn open(&self, pending: Option<Pending>) -> Result<(TcpStream, SocketAddr), String> {
        let stop = &self.client.stop;
        if let Some((s, a)) = pending {
            match sock::finish_connect(s, &a, self.cfg.connect_timeout, stop) {
                Ok(s) => {
                    sock::tune(&s, self.cfg.socket_buffer);
                    return Ok((s, a));
                }
                // Counts as the first attempt's failure: retried below.
                Err(e) => log::debug!("tcp: connect to {a}: {e}; retrying"),
            }
        }
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
