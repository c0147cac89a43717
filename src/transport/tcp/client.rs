//! The initiator side: routes each request to its peer's FIFO. `submit`
//! only enqueues; lanes do all network work.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::Mutex;

use super::config::TcpConfig;
use super::peer::{Peer, PeerKey};
use super::queue::Job;
use crate::metadata::descriptor::SegmentDesc;
use crate::metadata::Metadata;
use crate::task::Opcode;
use crate::transport::Submission;

/// Jobs bound for one segment, with its peer (`None`: no lanes, so they fail).
type Run = (Arc<SegmentDesc>, Option<Arc<Peer>>, Vec<Job>);

pub struct TcpClient {
    cfg: TcpConfig,
    metadata: Arc<Metadata>,
    stop: Arc<AtomicBool>,
    peers: Mutex<HashMap<PeerKey, Arc<Peer>>>,
    short_sends: Arc<AtomicU64>,
}

impl TcpClient {
    pub fn new(cfg: TcpConfig, metadata: Arc<Metadata>) -> TcpClient {
        TcpClient {
            cfg,
            metadata,
            stop: Arc::new(AtomicBool::new(false)),
            peers: Mutex::new(HashMap::new()),
            short_sends: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Each request is one slice; failures surface as FAILED tasks.
    pub fn submit(&self, subs: Vec<Submission>) {
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
            if self.stop.load(Ordering::Acquire) {
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
            };
            match &mut run {
                Some((t, _, jobs)) if Arc::ptr_eq(t, &s.target) => jobs.push(job),
                _ => {
                    if let Some(r) = run.take() {
                        Self::hand_over(r.1, r.2);
                    }
                    let key = PeerKey {
                        name: s.target.name.clone(),
                        port: s.target.tcp_data_port,
                        v2: s.target.tcp_proto_version >= 2 && !self.cfg.force_v1,
                    };
                    run = Some((s.target, self.peer(key), vec![job]));
                }
            }
        }
        if let Some(r) = run {
            Self::hand_over(r.1, r.2);
        }
    }

    fn hand_over(peer: Option<Arc<Peer>>, jobs: Vec<Job>) {
        match peer {
            Some(p) => p.push(jobs),
            None => jobs.into_iter().for_each(Job::fail),
        }
    }

    fn peer(&self, key: PeerKey) -> Option<Arc<Peer>> {
        let mut peers = self.peers.lock();
        // Checked under the lock shutdown drains, so no lanes outlive it.
        if self.stop.load(Ordering::Acquire) {
            return None;
        }
        if let Some(p) = peers.get(&key) {
            return Some(p.clone());
        }
        match Peer::start(
            key.clone(),
            self.cfg.clone(),
            self.metadata.clone(),
            self.stop.clone(),
            self.short_sends.clone(),
        ) {
            Ok(p) => {
                peers.insert(key, p.clone());
                Some(p)
            }
            Err(e) => {
                log::error!("tcp: cannot start lanes for {key:?}: {e}");
                None
            }
        }
    }

    /// Submissions the submitting thread sent itself (diagnostics, tests).
    pub fn short_path_sends(&self) -> u64 {
        self.short_sends.load(Ordering::Relaxed)
    }

    /// Lane threads running over all peers (diagnostics, tests).
    pub fn lane_threads(&self) -> usize {
        self.peers.lock().values().map(|p| p.live_lanes()).sum()
    }

    /// Number of peers with lanes (diagnostics).
    pub fn peer_count(&self) -> usize {
        self.peers.lock().len()
    }

    pub fn shutdown(&self) {
        self.stop.store(true, Ordering::Release);
        let peers: Vec<Arc<Peer>> = self.peers.lock().drain().map(|(_, p)| p).collect();
        for p in peers {
            p.shutdown();
        }
    }
}
