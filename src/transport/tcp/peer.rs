//! A peer's data endpoint (segment name, data port, framing) with its FIFO
//! and its lanes: threads that each own one persistent connection and feed
//! it requests from the FIFO. Connecting happens here, never in `submit`.
//!
//! A peer starts with one lane and adds lanes (up to `lanes_per_peer`)
//! while work waits in its FIFO, so a peer used one request at a time costs
//! two threads and its first request waits for one thread spawn, not four.
//! A lane idle for `lane_idle` closes its connection and ends its thread,
//! so a peer not used for a minute costs no thread at all; the next push
//! starts a lane again.
//! Small requests skip the FIFO when a connection is idle: the submitting
//! thread sends them itself (`push`), which saves the lane's wake-up.

use std::collections::HashMap;
use std::net::ToSocketAddrs;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::Mutex;

use super::config::TcpConfig;
use super::conn::{Conn, ConnHandle};
use super::queue::{Batch, Job, JobQueue};
use super::sock;
use crate::metadata::Metadata;

#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct PeerKey {
    /// Segment name; the host comes from its rpc_meta.
    pub name: String,
    pub port: u16,
    pub v2: bool,
}

pub struct Peer {
    key: PeerKey,
    cfg: TcpConfig,
    metadata: Arc<Metadata>,
    stop: Arc<AtomicBool>,
    pub queue: Arc<JobQueue>,
    /// Live connections, so shutdown can break them.
    conns: Mutex<HashMap<u64, Arc<Conn>>>,
    next_conn: AtomicU64,
    lanes: Mutex<Lanes>,
    max_lanes: usize,
    /// Submissions sent on the short path (shared by the client's peers).
    short_sends: Arc<AtomicU64>,
}

/// The lane threads of a peer: `live` are running (or about to); handles
/// of ended ones are joined at shutdown or dropped when a lane is added.
#[derive(Default)]
struct Lanes {
    handles: Vec<JoinHandle<()>>,
    live: usize,
}

/// A lane stops taking small requests once they carry this many bytes:
/// enough to fill one `sendmsg`, small enough that large requests still
/// spread over the lanes.
const BATCH_BYTES: u64 = 256 * 1024;

/// Requests up to this many bytes (in one submission) may be sent by the
/// submitting thread on an idle connection.
const SHORT_PATH_BYTES: u64 = 64 * 1024;

/// Attempts per connect round (a short bounded retry, then queued work fails).
const CONNECT_ATTEMPTS: u32 = 2;

impl Peer {
    pub fn start(
        key: PeerKey,
        cfg: TcpConfig,
        metadata: Arc<Metadata>,
        stop: Arc<AtomicBool>,
        short_sends: Arc<AtomicU64>,
    ) -> std::io::Result<Arc<Peer>> {
        let max_lanes = cfg.lanes_per_peer.clamp(1, 16);
        let peer = Arc::new(Peer {
            key,
            cfg,
            metadata,
            stop,
            queue: Arc::new(JobQueue::default()),
            conns: Mutex::new(HashMap::new()),
            next_conn: AtomicU64::new(0),
            lanes: Mutex::new(Lanes::default()),
            max_lanes,
            short_sends,
        });
        if let Err(e) = peer.add_lane() {
            peer.queue.stop();
            return Err(e);
        }
        Ok(peer)
    }

    /// Start one more lane unless all are running or the peer stopped.
    fn add_lane(self: &Arc<Self>) -> std::io::Result<()> {
        self.add_lane_locked(&mut self.lanes.lock())
    }

    fn add_lane_locked(self: &Arc<Self>, lanes: &mut Lanes) -> std::io::Result<()> {
        // `shutdown` stops the queue before draining `lanes`: a lane added
        // after the drain would never be joined.
        if lanes.live >= self.max_lanes || self.queue.is_stopped() {
            return Ok(());
        }
        lanes.handles.retain(|h| !h.is_finished());
        let p = self.clone();
        let h = std::thread::Builder::new()
            .name(format!("te-tcp-lane-{}", lanes.live))
            .spawn(move || {
                if !p.lane_loop() {
                    let mut lanes = p.lanes.lock();
                    lanes.live = lanes.live.saturating_sub(1);
                }
            })?;
        lanes.handles.push(h);
        lanes.live += 1;
        Ok(())
    }

    /// Lane threads running now (diagnostics, tests).
    pub fn live_lanes(&self) -> usize {
        self.lanes.lock().live
    }

    /// An idle lane without a connection may end if no work waits. Under
    /// the lanes lock, which `push` takes after queuing: either this sees
    /// the work, or `push` sees one lane fewer and starts one.
    fn lane_may_end(&self) -> bool {
        let mut lanes = self.lanes.lock();
        if !self.queue.is_empty() {
            return false;
        }
        // Counted down here, not at thread exit, so `push` never relies
        // on a lane that is on its way out.
        lanes.live = lanes.live.saturating_sub(1);
        true
    }

    pub fn push(self: &Arc<Self>, jobs: Vec<Job>) {
        let Some(jobs) = self.send_now(jobs) else {
            return;
        };
        self.queue.push_many(jobs);
        let mut lanes = self.lanes.lock();
        if lanes.live == 0 {
            if let Err(e) = self.add_lane_locked(&mut lanes) {
                drop(lanes);
                let n = self.queue.fail_queued();
                log::error!(
                    "tcp: cannot start a lane for {:?}: {e}; {n} request(s) failed",
                    self.key
                );
            }
        }
    }

    /// The short path: small requests with nothing queued ahead of them go
    /// out from this thread on an idle connection. Hands back what it did
    /// not send.
    fn send_now(&self, mut jobs: Vec<Job>) -> Option<Vec<Job>> {
        let bytes: u64 = jobs.iter().map(|j| j.len).sum();
        if bytes > SHORT_PATH_BYTES || !self.queue.is_empty() {
            return Some(jobs);
        }
        let conns: Vec<Arc<Conn>> = self.conns.lock().values().cloned().collect();
        for c in conns {
            match c.try_send_idle(jobs) {
                Ok(()) => {
                    self.short_sends.fetch_add(1, Ordering::Relaxed);
                    return None;
                }
                Err(back) => jobs = back,
            }
        }
        Some(jobs)
    }

    /// Fail queued work, break every connection (failing in-flight work) and
    /// join the lanes.
    pub fn shutdown(&self) {
        self.queue.stop();
        for c in self.conns.lock().values() {
            c.abort();
        }
        let lanes: Vec<JoinHandle<()>> = self.lanes.lock().handles.drain(..).collect();
        for h in lanes {
            let _ = h.join();
        }
    }

    /// Returns true if the lane ended idle (`lane_may_end` counted it out).
    fn lane_loop(self: &Arc<Self>) -> bool {
        let mut conn: Option<ConnHandle> = None;
        let depth = self.cfg.pipeline_depth.max(1);
        loop {
            // Take only what the connection can pipeline now, so queued work
            // stays available to the other lanes.
            let room = match conn.as_ref() {
                Some(c) => match c.conn.wait_capacity() {
                    0 => depth,
                    n => n,
                },
                None => depth,
            };
            let mut jobs = match self.queue.next_batch(room, BATCH_BYTES, self.cfg.lane_idle) {
                Batch::Jobs(j) => j,
                Batch::Idle => {
                    let idle = self.cfg.lane_idle;
                    if conn.as_ref().is_some_and(|c| c.conn.retire_if_idle(idle)) {
                        self.drop_conn(&mut conn);
                    }
                    if conn.is_none() && self.lane_may_end() {
                        return true;
                    }
                    continue;
                }
                Batch::Stop => break,
            };
            // Work left behind this batch: another lane can take it.
            if !self.queue.is_empty() {
                if let Err(e) = self.add_lane() {
                    log::warn!("tcp: cannot add a lane to {:?}: {e}", self.key);
                }
            }
            let mut tries = 0;
            loop {
                if conn.as_ref().is_some_and(|c| c.conn.is_stale()) {
                    self.drop_conn(&mut conn);
                }
                if conn.is_none() {
                    match self.open() {
                        Ok(c) => conn = Some(c),
                        Err(why) => {
                            let queued = self.queue.fail_queued();
                            log::error!(
                                "tcp: cannot connect to segment '{}' data port {}: {why}; failing {} request(s) and {queued} queued",
                                self.key.name,
                                self.key.port,
                                jobs.len()
                            );
                            jobs.into_iter().for_each(Job::fail);
                            break;
                        }
                    }
                }
                let Some(c) = conn.as_ref() else { break };
                match c.conn.send(jobs) {
                    Ok(()) => break,
                    Err(back) => {
                        // Broke before these requests were taken: retry once
                        // on a fresh connection.
                        self.drop_conn(&mut conn);
                        tries += 1;
                        if tries >= 2 {
                            back.into_iter().for_each(Job::fail);
                            break;
                        }
                        jobs = back;
                    }
                }
            }
        }
        self.drop_conn(&mut conn);
        false
    }

    fn drop_conn(&self, conn: &mut Option<ConnHandle>) {
        if let Some(c) = conn.take() {
            self.conns.lock().remove(&c.id);
            c.close();
        }
    }

    fn open(&self) -> Result<ConnHandle, String> {
        let meta = self
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
                if self.stop.load(Ordering::Acquire) {
                    return Err("transport shutting down".into());
                }
                let stream = match sock::connect(a, self.cfg.connect_timeout, &self.stop) {
                    Ok(s) => s,
                    Err(e) => {
                        last = format!("{a}: {e}");
                        continue;
                    }
                };
                sock::tune(&stream, self.cfg.status_timeout, self.cfg.socket_buffer)
                    .map_err(|e| format!("{a}: socket options: {e}"))?;
                let conn = Arc::new(Conn::new(
                    stream,
                    self.key.v2,
                    self.cfg.pipeline_depth,
                    format!("{} ({a})", self.key.name),
                ));
                let id = self.next_conn.fetch_add(1, Ordering::Relaxed);
                self.conns.lock().insert(id, conn.clone());
                // Shutdown either saw the registration or we see its flag.
                if self.stop.load(Ordering::Acquire) {
                    conn.abort();
                }
                return ConnHandle::spawn(conn, id, self.queue.clone()).map_err(|e| {
                    self.conns.lock().remove(&id);
                    format!("spawning reader: {e}")
                });
            }
        }
        Err(last)
    }
}
