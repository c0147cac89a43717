//! Per-context worker pool (spec §6.5): posting threads own shards of
//! per-peer-path queues and ask each endpoint's gate what to do; one poller
//! per context maps completions back to slices. Idle threads block on a
//! condvar; nothing spins when no WR is in flight.

use std::collections::{HashMap, VecDeque};
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex};

use crate::metadata::SegmentId;
use crate::task::{Opcode, Task};

use super::context::RdmaContext;
use super::device::{Completion, CompletionStatus, WorkRequest};
use super::endpoint::{BackoffConfig, BackoffDecision, Gate, HandshakeBackoff};
use super::endpoint_driver::Endpoint;
use super::Shared;

/// One piece of a task on its way to the peer.
pub struct Slice {
    pub task: Arc<Task>,
    pub opcode: Opcode,
    pub source: u64,
    pub length: u64,
    pub dest: u64,
    pub target_id: SegmentId,
    /// Location of the local buffer (key into our priority matrix).
    pub location: Arc<str>,
    /// Attempts consumed so far.
    pub retry: u32,
    /// Routing, filled by `Shared::route`.
    pub local: usize,
    pub lkey: u32,
    pub peer_path: Arc<str>,
    pub rkey: u32,
}

/// A posted WR: the slice, the endpoint and QP it went out on.
pub struct Inflight {
    pub slice: Slice,
    pub ep: Arc<Endpoint>,
    pub qp: usize,
    pub posted_at: Instant,
    /// Past `MC_SLICE_TIMEOUT`: its QP was moved to ERR, and the slice ends
    /// when this WR's (flush) completion arrives, never before (the NIC may
    /// still be moving its bytes).
    pub timed_out: Option<Instant>,
}

/// Queues of one posting thread: peer NIC path → slices.
#[derive(Default)]
pub struct Worker {
    queues: Mutex<HashMap<Arc<str>, VecDeque<Slice>>>,
    cv: Condvar,
}

impl Worker {
    pub fn push(&self, s: Slice) {
        self.queues
            .lock()
            .entry(s.peer_path.clone())
            .or_default()
            .push_back(s);
        self.cv.notify_one();
    }

    pub fn push_many(&self, v: Vec<Slice>) {
        if v.is_empty() {
            return;
        }
        let mut q = self.queues.lock();
        let mut it = v.into_iter().peekable();
        while let Some(first) = it.next() {
            // One map lookup per run of slices to the same peer path.
            let e = q.entry(first.peer_path.clone()).or_default();
            let path = first.peer_path.clone();
            e.push_back(first);
            while let Some(s) = it.next_if(|s| Arc::ptr_eq(&s.peer_path, &path)) {
                e.push_back(s);
            }
        }
        drop(q);
        self.cv.notify_one();
    }

    pub fn wake(&self) {
        let _g = self.queues.lock();
        self.cv.notify_all();
    }

    /// Put slices that could not go yet back in front of newer ones.
    fn put_back(&self, path: Arc<str>, mut v: VecDeque<Slice>) {
        if v.is_empty() {
            return;
        }
        let mut q = self.queues.lock();
        let e = q.entry(path).or_default();
        v.append(e);
        *e = v;
    }

    pub fn drain(&self) -> Vec<Slice> {
        self.queues
            .lock()
            .drain()
            .flat_map(|(_, v)| v.into_iter())
            .collect()
    }

    pub fn queued(&self) -> usize {
        self.queues.lock().values().map(VecDeque::len).sum()
    }
}

/// FNV-1a of a peer NIC path: picks its posting thread.
pub fn path_hash(peer_path: &str) -> u64 {
    peer_path.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ b as u64).wrapping_mul(0x100_0000_01b3)
    })
}

/// Hasher for WR ids: they are unique sequential counters, so a single
/// multiply spreads them well enough; SipHash cost ~20% of a slice's CPU.
#[derive(Default)]
pub struct WrIdHasher(u64);

impl Hasher for WrIdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 ^ b as u64).wrapping_mul(0x100_0000_01b3);
        }
    }
    fn write_u64(&mut self, id: u64) {
        // Fibonacci hashing: the high bits (used by hashbrown's control
        // bytes) and the low bits (bucket index) both vary with `id`.
        self.0 = id.wrapping_mul(0x9e37_79b9_7f4a_7c15).rotate_left(32);
    }
}

/// In-flight WRs of one context, by WR id.
pub type InflightMap = HashMap<u64, Inflight, BuildHasherDefault<WrIdHasher>>;

/// Everything the threads of one context share.
pub struct ContextWorkers {
    pub ctx: Arc<RdmaContext>,
    pub posters: Vec<Arc<Worker>>,
    pub inflight: Mutex<InflightMap>,
    /// Wakes the poller when WRs were posted.
    poll_cv: Condvar,
    poll_idle: Mutex<()>,
    next_wr_id: AtomicU64,
    pub stop: AtomicBool,
    /// Re-handshake pacing per peer NIC path (outlives one-shot endpoints).
    backoff: Mutex<HashMap<String, HandshakeBackoff>>,
    backoff_cfg: BackoffConfig,
    /// Endpoints whose timed-out WRs never completed: their QPs are kept
    /// (never destroyed under a WR that may still move bytes) until shutdown.
    pub unflushed: Mutex<Vec<Arc<Endpoint>>>,
}

impl ContextWorkers {
    pub fn new(ctx: Arc<RdmaContext>, posters: usize, backoff: BackoffConfig) -> ContextWorkers {
        ContextWorkers {
            ctx,
            posters: (0..posters.max(1))
                .map(|_| Arc::new(Worker::default()))
                .collect(),
            inflight: Mutex::new(InflightMap::default()),
            poll_cv: Condvar::new(),
            poll_idle: Mutex::new(()),
            next_wr_id: AtomicU64::new(1),
            stop: AtomicBool::new(false),
            backoff: Mutex::new(HashMap::new()),
            backoff_cfg: backoff,
            unflushed: Mutex::new(Vec::new()),
        }
    }

    fn with_backoff<R>(&self, peer: &str, f: impl FnOnce(&mut HandshakeBackoff) -> R) -> R {
        let mut m = self.backoff.lock();
        if let Some(b) = m.get_mut(peer) {
            return f(b);
        }
        f(m.entry(peer.to_string())
            .or_insert_with(|| HandshakeBackoff::new(self.backoff_cfg)))
    }

    /// May an active handshake to `peer` start now? An `Attempt` is counted.
    pub fn handshake_permit(&self, peer: &str, now: Instant) -> BackoffDecision {
        self.with_backoff(peer, |b| {
            let d = b.check(now);
            if d == BackoffDecision::Attempt {
                b.on_attempt(now);
            }
            d
        })
    }

    /// A handshake to `peer` failed, or its connection died.
    pub fn handshake_failed(&self, peer: &str, now: Instant) {
        self.with_backoff(peer, |b| b.on_failure(now));
    }

    /// The endpoint to `peer` reached `Connected`.
    pub fn handshake_connected(&self, peer: &str, now: Instant) {
        self.with_backoff(peer, |b| b.on_connected(now));
    }

    /// The posting thread that owns `peer_path`.
    pub fn worker_for(&self, peer_path: &str) -> &Arc<Worker> {
        &self.posters[(path_hash(peer_path) % self.posters.len() as u64) as usize]
    }

    pub fn wake_all(&self) {
        for w in &self.posters {
            w.wake();
        }
        let _g = self.poll_idle.lock();
        self.poll_cv.notify_all();
    }
}

/// Posting thread `k` of a context (with one worker it also polls).
pub fn run_poster(shared: Weak<Shared>, cw: Arc<ContextWorkers>, k: usize, also_poll: bool) {
    let me = cw.posters[k].clone();
    let mut bufs = PollBufs::default();
    let mut last_sweep = Instant::now();
    loop {
        if cw.stop.load(Ordering::Acquire) {
            return;
        }
        let Some(sh) = shared.upgrade() else { return };
        let mut progressed = false;
        let paths: Vec<Arc<str>> = me
            .queues
            .lock()
            .iter()
            .filter(|(_, v)| !v.is_empty())
            .map(|(k, _)| k.clone())
            .collect();
        let waiting = !paths.is_empty();
        for p in paths {
            progressed |= process_peer(&sh, &cw, &me, p);
        }
        if also_poll {
            progressed |= poll_once(&sh, &cw, &mut bufs);
            if last_sweep.elapsed() >= Duration::from_millis(100) {
                super::timeouts::sweep(&sh, &cw);
                watch_stalled(&sh, &cw);
                last_sweep = Instant::now();
            }
        }
        let inflight = also_poll && !cw.inflight.lock().is_empty();
        drop(sh);
        if progressed {
            continue;
        }
        if inflight {
            if let Some(d) = &cw.ctx.device {
                d.wait_completions(Duration::from_micros(200));
            }
            continue;
        }
        let mut q = me.queues.lock();
        if cw.stop.load(Ordering::Acquire) {
            return;
        }
        // Slices parked behind a gate: re-check soon (handshake progress
        // also wakes us); otherwise sleep until work arrives.
        let t = if waiting || q.values().any(|v| !v.is_empty()) {
            Duration::from_millis(5)
        } else {
            Duration::from_millis(200)
        };
        me.cv.wait_for(&mut q, t);
    }
}

/// The dedicated poller of a context (when it has ≥ 2 workers).
pub fn run_poller(shared: Weak<Shared>, cw: Arc<ContextWorkers>) {
    let mut bufs = PollBufs::default();
    let mut last_sweep = Instant::now();
    loop {
        if cw.stop.load(Ordering::Acquire) {
            return;
        }
        let Some(sh) = shared.upgrade() else { return };
        let progressed = poll_once(&sh, &cw, &mut bufs);
        if last_sweep.elapsed() >= Duration::from_millis(100) {
            super::timeouts::sweep(&sh, &cw);
            watch_stalled(&sh, &cw);
            last_sweep = Instant::now();
        }
        drop(sh);
        if progressed {
            continue;
        }
        if !cw.inflight.lock().is_empty() {
            if let Some(d) = &cw.ctx.device {
                d.wait_completions(Duration::from_millis(1));
            }
            continue;
        }
        let mut g = cw.poll_idle.lock();
        if cw.stop.load(Ordering::Acquire) {
            return;
        }
        if cw.inflight.lock().is_empty() {
            cw.poll_cv.wait_for(&mut g, Duration::from_millis(100));
        }
    }
}

/// Handle the queue of one peer path. Returns whether anything moved.
fn process_peer(sh: &Arc<Shared>, cw: &Arc<ContextWorkers>, me: &Worker, path: Arc<str>) -> bool {
    let Some(mut slices) = me.queues.lock().remove(&path) else {
        return false;
    };
    if slices.is_empty() {
        return false;
    }
    if !cw.ctx.is_active() {
        // Device down: move the slices to another context, no retry consumed.
        sh.retire_context_endpoints(&cw.ctx, "local device down");
        for s in slices {
            sh.reroute(s);
        }
        return true;
    }
    if !sh.rails.usable(&path) {
        for s in slices {
            sh.retry_or_fail(s, "rail paused");
        }
        return true;
    }
    let server = crate::metadata::name::split_nic_path(&path).map_or(&*path, |(s, _)| s);
    if sh.liveness.is_dead(server, Instant::now()) {
        // The peer process is gone: no handshake, no backoff, no retry.
        for s in slices {
            sh.fail_slice(s);
        }
        return true;
    }
    let ep = match sh.endpoint(&cw.ctx, &path) {
        Ok(ep) => ep,
        Err(e) => {
            log::warn!("no endpoint {} -> {path}: {e}", cw.ctx.name);
            for s in slices {
                sh.retry_or_fail(s, "endpoint creation failed");
            }
            return true;
        }
    };
    match ep.gate() {
        Gate::Post => {
            let posted = post_slices(sh, cw, &ep, &mut slices);
            me.put_back(path, slices);
            posted
        }
        Gate::Wait => {
            me.put_back(path, slices);
            false
        }
        // An attempt is already under way: wait for it.
        Gate::Connect if !ep.begin_handshake() => {
            me.put_back(path, slices);
            false
        }
        Gate::Connect => match cw.handshake_permit(&path, Instant::now()) {
            BackoffDecision::Attempt => {
                sh.counters
                    .handshake_attempts
                    .fetch_add(1, Ordering::Relaxed);
                me.put_back(path, slices);
                sh.start_handshake(cw.clone(), ep);
                true
            }
            // Backing off: the slices wait, no retry consumed.
            BackoffDecision::WaitUntil(_) => {
                ep.end_handshake();
                me.put_back(path, slices);
                false
            }
            // Too many handshakes to this peer lately: do not wait out the
            // window; use another rail, or fail the slices now.
            BackoffDecision::CappedUntil(until) => {
                ep.end_handshake();
                sh.counters
                    .handshakes_capped
                    .fetch_add(1, Ordering::Relaxed);
                log::warn!(
                    "handshakes {} -> {path} capped for {:?}; {} slice(s) rerouted or failed",
                    cw.ctx.name,
                    until.saturating_duration_since(Instant::now()),
                    slices.len()
                );
                let alternative = slices
                    .front()
                    .is_some_and(|s| sh.has_alternative_rail(s.target_id, &path));
                if alternative {
                    sh.rails.failed(&path, true);
                    for s in slices {
                        sh.retry_or_fail(s, "handshakes to the peer NIC capped");
                    }
                } else {
                    for s in slices {
                        sh.fail_slice(s);
                    }
                }
                true
            }
        },
        Gate::Fail => {
            cw.ctx.forget_endpoint(&path, &ep);
            if let Some(first) = slices.front() {
                sh.rails
                    .failed(&path, sh.has_alternative_rail(first.target_id, &path));
            }
            for s in slices {
                sh.retry_or_fail(s, "endpoint failed");
            }
            true
        }
    }
}

/// Post as many queued slices as QP and CQ depth allow, spread over the QPs.
fn post_slices(
    sh: &Shared,
    cw: &ContextWorkers,
    ep: &Arc<Endpoint>,
    slices: &mut VecDeque<Slice>,
) -> bool {
    let cq_room = sh.cfg.max_cqe.saturating_sub(cw.inflight.lock().len());
    let mut budget = slices.len().min(cq_room);
    let nqp = ep.num_qps();
    let mut any = false;
    let mut wrs = Vec::new();
    for i in 0..nqp {
        if budget == 0 {
            break;
        }
        let share = budget.div_ceil(nqp - i);
        let n = share.min(ep.free_slots(i) as usize);
        if n == 0 {
            continue;
        }
        wrs.clear();
        let mut posted_bytes = 0;
        {
            let mut infl = cw.inflight.lock();
            let now = Instant::now();
            for _ in 0..n {
                let Some(s) = slices.pop_front() else { break };
                let wr_id = cw.next_wr_id.fetch_add(1, Ordering::Relaxed);
                wrs.push(WorkRequest {
                    wr_id,
                    opcode: s.opcode,
                    local_addr: s.source,
                    length: s.length as u32,
                    lkey: s.lkey,
                    remote_addr: s.dest,
                    rkey: s.rkey,
                    signaled: true,
                });
                posted_bytes += s.length;
                infl.insert(
                    wr_id,
                    Inflight {
                        slice: s,
                        ep: ep.clone(),
                        qp: i,
                        posted_at: now,
                        timed_out: None,
                    },
                );
            }
        }
        // Before the post: unaccepted WRs are subtracted again below.
        cw.ctx.stats.posted_many(posted_bytes, wrs.len() as u64);
        let accepted = match ep.post(i, &wrs) {
            Ok(k) => k.min(wrs.len()),
            Err(e) => {
                crate::warn_limited!("post on {} -> {}: {e}", cw.ctx.name, ep.peer_path);
                0
            }
        };
        budget -= accepted;
        any |= accepted > 0;
        // Unaccepted WRs go back to the queue front, in order.
        let mut back = Vec::new();
        {
            let mut infl = cw.inflight.lock();
            for w in &wrs[accepted..] {
                if let Some(f) = infl.remove(&w.wr_id) {
                    cw.ctx.stats.finished(f.slice.length, false);
                    back.push(f.slice);
                }
            }
        }
        for s in back.into_iter().rev() {
            slices.push_front(s);
        }
        if accepted < wrs.len() {
            break;
        }
    }
    if any {
        let _g = cw.poll_idle.lock();
        cw.poll_cv.notify_one();
    }
    any
}

/// Buffers a polling thread reuses across CQ polls (no allocation per poll).
#[derive(Default)]
pub struct PollBufs {
    comps: Vec<Completion>,
    done: Vec<(Completion, Inflight)>,
}

/// Poll the context's CQ once; returns whether completions were handled.
fn poll_once(sh: &Shared, cw: &ContextWorkers, bufs: &mut PollBufs) -> bool {
    let Some(dev) = &cw.ctx.device else {
        return false;
    };
    bufs.comps.clear();
    if dev.poll(&mut bufs.comps, 64) == 0 {
        return false;
    }
    {
        let mut infl = cw.inflight.lock();
        bufs.done.extend(
            bufs.comps
                .iter()
                .filter_map(|c| infl.remove(&c.wr_id).map(|f| (*c, f))),
        );
    }
    // One stats update per poll, before tasks can be seen complete.
    let (bytes, ok_bytes) = bufs.done.iter().fold((0, 0), |(b, ok), (c, f)| {
        let n = f.slice.length;
        let moved = if c.status == CompletionStatus::Success {
            n
        } else {
            0
        };
        (b + n, ok + moved)
    });
    cw.ctx.stats.finished_many(bytes, ok_bytes);
    let now_ms = super::liveness::coarse_ms();
    for (c, f) in bufs.done.drain(..) {
        f.ep.touch(now_ms);
        f.ep.completed(f.qp);
        if f.timed_out.is_some() {
            // The QP of a timed-out WR is in ERR: this is its flush (or a
            // late success). Only now may the slice end.
            sh.counters
                .timeouts_completed
                .fetch_add(1, Ordering::Relaxed);
            match c.status {
                CompletionStatus::Success => f.slice.task.slice_succeeded(f.slice.length),
                _ => sh.fail_slice(f.slice),
            }
            continue;
        }
        match c.status {
            CompletionStatus::Success => f.slice.task.slice_succeeded(f.slice.length),
            CompletionStatus::Flushed => {
                log::trace!("Worker: WR flush error, redispatching if retry allows");
                sh.counters.flushed.fetch_add(1, Ordering::Relaxed);
                sh.retry_or_fail(f.slice, "flushed");
            }
            CompletionStatus::RemoteError | CompletionStatus::LocalError => {
                sh.counters
                    .error_completions
                    .fetch_add(1, Ordering::Relaxed);
                let path = f.slice.peer_path.clone();
                if f.ep.state().connected() {
                    // A dead connection needs a re-handshake: pace it.
                    cw.handshake_failed(&path, Instant::now());
                }
                f.ep.retire("work completion error");
                cw.ctx.forget_endpoint(&path, &f.ep);
                // A dead local device is not the peer rail's fault.
                let local_fault = c.status == CompletionStatus::LocalError || !cw.ctx.is_active();
                if !local_fault {
                    sh.rails
                        .failed(&path, sh.has_alternative_rail(f.slice.target_id, &path));
                }
                sh.retry_or_fail(f.slice, "work completion error");
            }
        }
    }
    true
}

/// Probe the peer of every endpoint whose WRs made no progress for
/// `MC_TE_RS_RDMA_PROBE_MS`; a gone peer's endpoint is retired (its QPs go
/// to ERR and flush every WR, so no buffer is released while the NIC may
/// still touch it), and its slices then fail at once (see `liveness`).
fn watch_stalled(sh: &Shared, cw: &Arc<ContextWorkers>) {
    let now_ms = super::liveness::coarse_ms();
    let limit = sh.liveness.probe_after.as_millis() as u64;
    let stalled: Vec<(String, Arc<Endpoint>)> = cw
        .ctx
        .endpoints
        .lock()
        .iter()
        .filter(|(_, ep)| ep.stalled_ms(now_ms) >= limit && !ep.is_loopback())
        .map(|(p, ep)| (p.clone(), ep.clone()))
        .collect();
    for (path, ep) in stalled {
        if !ep.begin_probe() {
            continue;
        }
        let Some(server) = crate::metadata::name::split_nic_path(&path).map(|(s, _)| s.to_string())
        else {
            ep.end_probe();
            continue;
        };
        let (me, cw) = (sh.me(), cw.clone());
        let spawned = std::thread::Builder::new()
            .name("te-rdma-probe".into())
            .spawn(move || {
                if let Some(sh) = me.upgrade() {
                    let timeout = sh.liveness.connect_timeout;
                    match super::liveness::probe(&sh.tctx.metadata, &server, timeout) {
                        super::liveness::Probe::Alive => ep.touch(super::liveness::coarse_ms()),
                        super::liveness::Probe::Gone(why) => {
                            sh.counters.peers_gone.fetch_add(1, Ordering::Relaxed);
                            sh.liveness.mark_dead(&server, &why, Instant::now());
                            ep.retire("peer gone");
                            cw.ctx.forget_endpoint(&path, &ep);
                            cw.wake_all();
                        }
                    }
                }
                ep.end_probe();
            });
        if let Err(e) = spawned {
            log::error!("cannot start a liveness probe thread: {e}");
        }
    }
}
