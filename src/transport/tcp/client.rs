//! The initiator side: routes each request to its peer's FIFO. `submit`
//! only enqueues (or, for a small request on an idle connection, sends it
//! at once); the shared event loops do the rest of the network work.

use std::collections::HashMap;
use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use super::client_loop::{ClientLoops, Placed};
use super::config::TcpConfig;
use super::peer::{Peer, PeerKey, Pending};
use super::queue::Job;
use crate::metadata::descriptor::SegmentDesc;
use crate::metadata::Metadata;
use crate::task::Opcode;
use crate::threads::ThreadCount;
use crate::transport::Submission;

/// Jobs bound for one segment, with its peer (`None`: no peer, so they fail).
type Run = (Arc<SegmentDesc>, Option<Arc<Peer>>, Vec<Job>);

/// What every peer of one client shares: settings, the event loops and the
/// connecting threads.
pub struct ClientShared {
    pub cfg: TcpConfig,
    pub metadata: Arc<Metadata>,
    pub stop: AtomicBool,
    /// Submissions sent on the short path.
    pub short_sends: AtomicU64,
    /// Requests re-sent because a pooled connection turned out dead.
    pub resent: AtomicU64,
    /// Peers found replaced by a new engine (a new incarnation).
    pub replaced: AtomicU64,
    pub counters: super::counters::TcpCounters,
    pub loops: ClientLoops,
    connectors: Mutex<Vec<JoinHandle<()>>>,
    /// The transport's count, which holds the loops and connecting threads.
    count: ThreadCount,
    /// One per data endpoint and owner incarnation.
    peers: Mutex<HashMap<PeerKey, Arc<Peer>>>,
}

impl ClientShared {
    /// Have loop `index` drive connection `token`.
    pub fn drive(&self, index: usize, token: usize) {
        self.loops.drive(index, token);
    }

    /// Connect on a thread of its own (the lookup may block on a store):
    /// that of a loop starting for this connection, which runs the loop
    /// afterwards, or else a short-lived one.
    /// `pending`: a connect already under way (see `Peer::open_here`).
    pub fn spawn_connector(&self, peer: Arc<Peer>, pending: Option<Pending>) -> io::Result<()> {
        let (i, connect) = match self.loops.place(move |i| peer.connect(i, pending))? {
            Placed::Started => return Ok(()),
            Placed::Running(i, connect) => (i, connect),
        };
        let mut g = self.connectors.lock();
        // Checked under the lock shutdown drains, so every connector is joined.
        if self.stop.load(Ordering::Acquire) {
            return Err(io::Error::other("transport shutting down"));
        }
        g.retain(|h| !h.is_finished());
        let h = self.count.spawn("te-tcp-connect", move || connect(i))?;
        g.push(h);
        Ok(())
    }

    /// The peer for `key`, made on first use; `None` after shutdown. A
    /// new key drops the peers retired because their owner was replaced.
    pub fn peer(self: &Arc<Self>, key: PeerKey) -> Option<Arc<Peer>> {
        let mut peers = self.peers.lock();
        // Checked under the lock shutdown drains, so no peer outlives it.
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        if let Some(p) = peers.get(&key) {
            return Some(p.clone());
        }
        peers.retain(|_, p| !p.is_retired());
        let p = Arc::new(Peer::new(key.clone(), self.cfg.clone(), self.clone()));
        peers.insert(key, p.clone());
        Some(p)
    }

    pub fn threads(&self) -> usize {
        let loops = self.loops.threads();
        let connecting = self
            .connectors
            .lock()
            .iter()
            .filter(|h| !h.is_finished())
            .count();
        loops + connecting
    }
}

pub struct TcpClient {
    shared: Arc<ClientShared>,
}

impl TcpClient {
    /// Its threads are counted in `count` (the transport's).
    pub fn new(cfg: TcpConfig, metadata: Arc<Metadata>, count: ThreadCount) -> TcpClient {
        TcpClient {
            shared: Arc::new(ClientShared {
                loops: ClientLoops::new(cfg.client_threads, cfg.status_timeout, count.clone()),
                cfg,
                metadata,
                stop: AtomicBool::new(false),
                short_sends: AtomicU64::new(0),
                resent: AtomicU64::new(0),
                replaced: AtomicU64::new(0),
                counters: Default::default(),
                connectors: Mutex::new(Vec::new()),
                count,
                peers: Mutex::new(HashMap::new()),
            }),
        }
    }

    /// Each request is one slice; failures surface as FAILED tasks.
    pub fn submit(&self, subs: Vec<Submission<'_>>) {
        // Consecutive requests to one segment go to its FIFO together (one
        // lock, one wake-up); the peer is looked up once per run.
        let mut run: Option<Run> = None;
        for s in subs {
            let task = s.task;
            task.set_slices(1);
            let req = s.request;
            if req.length == 0 {
                task.slice_succeeded(0);
                continue;
            }
            if self.shared.stop.load(Ordering::Acquire) {
                log::warn!("tcp: request submitted after shutdown");
                task.slice_failed();
                continue;
            }
            if s.target.tcp_data_port == 0 {
                log::error!(
                    "tcp: segment '{}' advertises no tcp_data_port",
                    s.target.name
                );
                task.slice_failed();
                continue;
            }
            let job = Job {
                task,
                write: req.opcode == Opcode::Write,
                local: req.source,
                remote: req.target_offset,
                len: req.length,
                resends: 0,
                after_break: false,
            };
            match &mut run {
                Some((t, _, jobs)) if Arc::ptr_eq(t, s.target) => jobs.push(job),
                _ => {
                    if let Some(r) = run.take() {
                        Self::hand_over(r.1, r.2);
                    }
                    let key = PeerKey::of(s.target, self.shared.cfg.force_v1);
                    run = Some((s.target.clone(), self.peer(key), vec![job]));
                }
            }
        }
        if let Some(r) = run {
            Self::hand_over(r.1, r.2);
        }
    }

    /// Jobs whose tasks already count them as slices (another transport's,
    /// failing over) to segment `name`, data port `port`. The peer is a
    /// te-rs engine (it advertised the port for this), so it speaks v2.
    pub fn carry(&self, name: &str, port: u16, jobs: Vec<Job>) {
        if jobs.is_empty() {
            return;
        }
        if port == 0 || self.shared.stop.load(Ordering::Acquire) {
            return jobs.into_iter().for_each(Job::fail);
        }
        let key = PeerKey {
            name: name.to_string(),
            port,
            v2: !self.shared.cfg.force_v1,
            // RDMA's fallback slices: the RDMA side checks the owner.
            incarnation: None,
        };
        Self::hand_over(self.peer(key), jobs);
    }

    fn hand_over(peer: Option<Arc<Peer>>, jobs: Vec<Job>) {
        match peer {
            Some(p) => p.push(jobs),
            None => jobs.into_iter().for_each(Job::fail),
        }
    }

    fn peer(&self, key: PeerKey) -> Option<Arc<Peer>> {
        self.shared.peer(key)
    }

    /// openSegment waits for a peer's descriptor: start the first event
    /// loop now, while it waits, instead of on the first transfer's path.
    pub fn start_first_loop(&self) {
        if self.shared.stop.load(Ordering::Acquire) {
            return;
        }
        if let Err(e) = self.shared.loops.start_first() {
            log::warn!("tcp client: cannot start an event loop: {e}");
        }
    }

    /// Submissions the submitting thread sent itself (diagnostics, tests).
    pub fn short_path_sends(&self) -> u64 {
        self.shared.short_sends.load(Ordering::Relaxed)
    }

    /// Requests re-sent on a new connection because the one they went out
    /// on ended before answering (diagnostics, tests).
    pub fn resent_requests(&self) -> u64 {
        self.shared.resent.load(Ordering::Relaxed)
    }

    /// Peers whose owner turned out replaced by a new engine.
    pub fn replaced_owners(&self) -> u64 {
        self.shared.replaced.load(Ordering::Relaxed)
    }

    /// Fail the queued requests of tasks told to stop, and have the loops
    /// close the connections that carry any of theirs.
    pub fn abandon_stopped(&self) {
        let peers: Vec<Arc<Peer>> = self.shared.peers.lock().values().cloned().collect();
        for p in peers {
            p.queue.fail_stopped();
        }
        self.shared.loops.abandon_stopped();
    }

    /// Open data connections over all peers (diagnostics, tests).
    pub fn connections(&self) -> usize {
        self.shared
            .peers
            .lock()
            .values()
            .map(|p| p.connections())
            .sum()
    }

    /// Client threads running: event loops and connecting threads. Does
    /// not grow with the number of peers.
    pub fn threads(&self) -> usize {
        self.shared.threads()
    }

    /// Number of peers seen (diagnostics).
    pub fn counters(&self) -> &super::counters::TcpCounters {
        &self.shared.counters
    }

    pub fn peer_count(&self) -> usize {
        self.shared.peers.lock().len()
    }

    /// Fail queued work, join the connecting threads, then stop the loops,
    /// which fail what is in flight.
    pub fn shutdown(&self) {
        self.shared.stop.store(true, Ordering::Release);
        let peers: Vec<Arc<Peer>> = self.shared.peers.lock().drain().map(|(_, p)| p).collect();
        for p in &peers {
            p.queue.stop();
        }
        let connectors: Vec<JoinHandle<()>> = self.shared.connectors.lock().drain(..).collect();
        for h in connectors {
            let _ = h.join();
        }
        self.shared.loops.shutdown();
    }
}
