//! Per-context worker pool (spec §6.5): posting threads own shards of
//! per-peer-path queues (queues.rs) and ask each endpoint's gate what to
//! do; one poller per context maps completions back to slices (poll.rs).
//! An idle thread sleeps until an event wakes it (slices queued, WRs
//! posted, room freed, a handshake's end, shutdown) or until the earliest
//! deadline its parked slices have; nothing re-polls on a timer.

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::Instant;

use parking_lot::Mutex;

use super::context::RdmaContext;
use super::device::WorkRequest;
use super::endpoint::{BackoffConfig, BackoffDecision, Gate, HandshakeBackoff};
use super::endpoint_driver::Endpoint;
use super::idle::{earliest, Idle, Sweep};
use super::inflight::{chain_len, split, wr_id, Chain, InflightTable};
use super::names::NameId;
use super::poll::{poll_once, PollBufs};
use super::queues::Signal;
use super::Shared;
use crate::task::Opcode;

use super::queues::PassScratch;
pub use super::queues::{Slice, Worker};

/// Everything the threads of one context share.
pub struct ContextWorkers {
    pub ctx: Arc<RdmaContext>,
    pub posters: Vec<Arc<Worker>>,
    pub inflight: InflightTable,
    /// Wakes the poller at shutdown when it has no device to block on (with
    /// one it waits on the completion channel, which shutdown interrupts).
    pub poll_signal: Signal,
    /// Chain ids (`inflight::wr_id` puts a WR's index below them).
    next_chain: AtomicU64,
    pub stop: AtomicBool,
    /// Re-handshake pacing per peer NIC path (outlives one-shot endpoints).
    backoff: Mutex<HashMap<String, HandshakeBackoff>>,
    backoff_cfg: BackoffConfig,
    /// Chains ending in a READ get a confirming WR
    /// (`Device::confirms_reads`).
    pub confirm_reads: bool,
    /// Endpoints whose timed-out WRs never completed: their QPs are kept
    /// (never destroyed under a WR that may still move bytes) until shutdown.
    pub unflushed: Mutex<Vec<Arc<Endpoint>>>,
}

impl ContextWorkers {
    pub fn new(ctx: Arc<RdmaContext>, posters: usize, backoff: BackoffConfig) -> ContextWorkers {
        ContextWorkers {
            confirm_reads: ctx.device.as_ref().is_some_and(|d| d.confirms_reads()),
            ctx,
            posters: (0..posters.max(1))
                .map(|_| Arc::new(Worker::default()))
                .collect(),
            inflight: InflightTable::default(),
            poll_signal: Signal::default(),
            next_chain: AtomicU64::new(1),
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

    /// The posting thread that owns the peer path with hash `path_hash`.
    pub fn worker_for(&self, path_hash: u64) -> &Arc<Worker> {
        &self.posters[(path_hash % self.posters.len() as u64) as usize]
    }

    pub fn wake_all(&self) {
        for w in &self.posters {
            w.wake();
        }
        self.poll_signal.notify();
        if let Some(d) = &self.ctx.device {
            d.interrupt_completions();
        }
    }

    /// WRs are posted and not yet completed.
    pub fn has_inflight(&self) -> bool {
        self.inflight.len() != 0
    }
}

/// What handling one peer path's queue did.
enum Step {
    /// Nothing was queued.
    Empty,
    /// Slices moved (posted, failed, rerouted) or a handshake started.
    Progress,
    /// The slices wait: for an event that wakes this thread, or the
    /// deadline (a backoff, a ready-ACK timeout, a busy endpoint).
    Parked(Option<Instant>),
}

/// What one pass over a posting thread's queues did.
struct Pass {
    progressed: bool,
    /// Some slices wait (for an event or `deadline`).
    parked: bool,
    deadline: Option<Instant>,
}

/// One pass over `me`'s queues (the caller holds `me.pass`).
fn run_pass(sh: &Arc<Shared>, cw: &Arc<ContextWorkers>, me: &Worker, s: &mut PassScratch) -> Pass {
    let mut pass = Pass {
        progressed: false,
        parked: false,
        deadline: None,
    };
    me.begin_pass(&mut s.paths);
    let mut paths = std::mem::take(&mut s.paths);
    let mut wants_room = false;
    for p in paths.drain(..) {
        match process_peer(sh, cw, me, p, &mut s.wrs, &mut wants_room) {
            Step::Empty => {}
            Step::Progress => pass.progressed = true,
            Step::Parked(d) => {
                pass.parked = true;
                pass.deadline = earliest(pass.deadline, d);
            }
        }
    }
    s.paths = paths;
    if !wants_room {
        // Every posted path's slices all went: completions need not wake
        // this thread (a futex wake-up per submit call otherwise).
        me.room_not_wanted();
    }
    pass
}

/// Queue `v` on posting thread `k` of `cw`. If that thread is between
/// passes, the submitting thread runs the pass itself: a small transfer
/// goes to the wire without a thread hand-off. Slices left waiting are the
/// thread's again (it is woken to sleep until their deadline).
pub fn submit_to(sh: &Arc<Shared>, cw: &Arc<ContextWorkers>, k: usize, v: Vec<Slice>) {
    let me = &cw.posters[k];
    if me.also_polls() {
        return me.push_many(v);
    }
    me.push_quiet(v);
    let Some(mut scratch) = me.pass.try_lock() else {
        // A pass is running: it may have listed its paths already.
        return me.wake();
    };
    let pass = run_pass(sh, cw, me, &mut scratch);
    drop(scratch);
    if pass.parked {
        me.wake();
    }
}

/// Posting thread `k` of a context (with one worker it also polls).
pub fn run_poster(shared: Weak<Shared>, cw: Arc<ContextWorkers>, k: usize, also_poll: bool) {
    let me = cw.posters[k].clone();
    let mut bufs = PollBufs::default();
    let mut sweep = Sweep::new();
    let mut idle = Idle::default();
    if also_poll {
        // This thread may block on the CQ: new slices must interrupt it.
        if let Some(d) = &cw.ctx.device {
            me.interrupt_cq_on_push(d.clone());
        }
    }
    loop {
        if cw.stop.load(Ordering::Acquire) {
            return;
        }
        let Some(sh) = shared.upgrade() else { return };
        let pass = run_pass(&sh, &cw, &me, &mut me.pass.lock());
        let (mut progressed, mut deadline) = (pass.progressed, pass.deadline);
        if also_poll {
            progressed |= poll_once(&sh, &cw, &mut bufs);
            let next_sweep = sweep.run_if_due(&sh, &cw);
            deadline = earliest(deadline, cw.has_inflight().then_some(next_sweep));
        }
        drop(sh);
        if progressed {
            idle.reset();
        } else {
            idle.step(&cw, &me.signal, also_poll, deadline);
        }
    }
}

/// The dedicated poller of a context (when it has ≥ 2 workers).
pub fn run_poller(shared: Weak<Shared>, cw: Arc<ContextWorkers>) {
    let mut idle = Idle::polling_only();
    let mut bufs = PollBufs::default();
    let mut sweep = Sweep::new();
    loop {
        if cw.stop.load(Ordering::Acquire) {
            return;
        }
        let Some(sh) = shared.upgrade() else { return };
        // `sh` is held while completions come and while spinning (bounded
        // by the spin window): a turn costs no refcount round trip.
        let next_sweep = loop {
            cw.poll_signal.take();
            let progressed = poll_once(&sh, &cw, &mut bufs);
            let next_sweep = sweep.run_if_due(&sh, &cw);
            if progressed {
                idle.reset();
            } else if !idle.spin(&cw, true) {
                break next_sweep;
            }
            if cw.stop.load(Ordering::Acquire) {
                return;
            }
        };
        drop(sh);
        // Blocks on the completion channel: a completion wakes us (posts
        // need not), or the next sweep while WRs are in flight.
        let deadline = cw.has_inflight().then_some(next_sweep);
        idle.step(&cw, &cw.poll_signal, true, deadline);
    }
}

/// Handle the queue of one peer path.
fn process_peer(
    sh: &Arc<Shared>,
    cw: &Arc<ContextWorkers>,
    me: &Worker,
    id: NameId,
    wrs: &mut Vec<WorkRequest>,
    wants_room: &mut bool,
) -> Step {
    let Some(mut slices) = me.take(id) else {
        return Step::Empty;
    };
    // Slices of tasks told to stop (cancel, deadline) are never posted.
    // Their WRs already posted end at their completion: a posted WR cannot
    // be recalled, and its buffer is in use until then.
    let now = Instant::now();
    if slices.iter().any(|s| s.task.should_stop(now)) {
        let (stop, keep): (VecDeque<Slice>, VecDeque<Slice>) =
            slices.into_iter().partition(|s| s.task.should_stop(now));
        stop.into_iter().for_each(|s| sh.fail_slice(s));
        slices = keep;
    }
    if slices.is_empty() {
        return Step::Progress;
    }
    let path = sh.paths.get(id);
    if !cw.ctx.is_active() {
        // Device down: move the slices to another context, no retry consumed.
        sh.retire_context_endpoints(&cw.ctx, "local device down");
        for s in slices {
            sh.reroute(s);
        }
        return Step::Progress;
    }
    if !sh.rails.usable(&path) {
        for s in slices {
            sh.retry_or_fail(s, "rail paused");
        }
        return Step::Progress;
    }
    let server = crate::metadata::name::split_nic_path(&path).map_or(&*path, |(s, _)| s);
    if sh.liveness.is_dead(server, Instant::now()) {
        // The peer process is gone: no handshake, no backoff, no retry.
        for s in slices {
            sh.fail_slice(s);
        }
        return Step::Progress;
    }
    let ep = match sh.endpoint(&cw.ctx, &path) {
        Ok(ep) => ep,
        Err(e) => {
            log::warn!("no endpoint {} -> {path}: {e}", cw.ctx.name);
            for s in slices {
                sh.retry_or_fail(s, "endpoint creation failed");
            }
            return Step::Progress;
        }
    };
    let (gate, deadline) = ep.gate();
    match gate {
        Gate::Post => {
            // Room freed from here on wakes us if the slices do not all go.
            me.want_room();
            let posted = post_slices(sh, cw, &ep, &mut slices, wrs);
            *wants_room |= !slices.is_empty();
            me.put_back(id, slices);
            if posted {
                Step::Progress
            } else {
                Step::Parked(None)
            }
        }
        // Handshake or ready-ACK wait: its end wakes us, or its deadline.
        Gate::Wait => {
            me.put_back(id, slices);
            Step::Parked(deadline)
        }
        // An attempt is already under way: its end wakes us.
        Gate::Connect if !ep.begin_handshake() => {
            me.put_back(id, slices);
            Step::Parked(None)
        }
        Gate::Connect => match cw.handshake_permit(&path, Instant::now()) {
            BackoffDecision::Attempt => {
                sh.counters
                    .handshake_attempts
                    .fetch_add(1, Ordering::Relaxed);
                me.put_back(id, slices);
                sh.start_handshake(cw.clone(), ep);
                Step::Progress
            }
            // Backing off: the slices wait, no retry consumed. Handshakes
            // to this NIC are failing: with no other rail, the slices the
            // peer lets go over TCP go now instead of waiting it out.
            BackoffDecision::WaitUntil(until) => {
                ep.end_handshake();
                let alone = sh.fallback.has_carrier()
                    && slices
                        .front()
                        .is_some_and(|s| !sh.has_alternative_rail(s.target_id, &path));
                if alone {
                    let why = "handshakes to the peer NIC failing";
                    slices = slices
                        .into_iter()
                        .filter_map(|s| sh.try_carry(s, why))
                        .collect();
                    if slices.is_empty() {
                        return Step::Progress;
                    }
                }
                me.put_back(id, slices);
                Step::Parked(Some(until))
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
                        sh.give_up(s, "handshakes to the peer NIC capped");
                    }
                }
                Step::Progress
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
            Step::Progress
        }
    }
}

/// Post as many queued slices as QP and CQ depth allow, spread over the
/// QPs, in chains whose last WR alone is signaled (`inflight`). With
/// `confirm_reads`, a chain ending in a READ is followed by its confirming
/// WR, which takes a slot of its own.
fn post_slices(
    sh: &Shared,
    cw: &ContextWorkers,
    ep: &Arc<Endpoint>,
    slices: &mut VecDeque<Slice>,
    wrs: &mut Vec<WorkRequest>,
) -> bool {
    let chain_max = chain_len(sh.cfg.max_wr);
    let confirm = cw.confirm_reads;
    // Slices that fit in `room` WR slots, each chain keeping one for its
    // confirming WR when READs are confirmed.
    let fits = |room: usize| {
        if confirm {
            room - room.div_ceil(chain_max + 1)
        } else {
            room
        }
    };
    let cq_room = sh.cfg.max_cqe.saturating_sub(cw.inflight.len());
    let mut budget = slices.len().min(fits(cq_room));
    let nqp = ep.num_qps();
    // Everything queued goes out now (the usual case): chains are cut
    // from the back, so the last one is what is left of the queue's
    // buffer, moved as it is (the buffer of a submit call's Vec).
    let all_go = budget == slices.len()
        && (0..nqp)
            .map(|i| fits(ep.free_slots(i) as usize))
            .sum::<usize>()
            >= budget;
    let mut any = false;
    for i in 0..nqp {
        if budget == 0 {
            break;
        }
        let share = budget.div_ceil(nqp - i);
        let n = share.min(fits(ep.free_slots(i) as usize)).min(slices.len());
        if n == 0 {
            continue;
        }
        wrs.clear();
        let nchains = n.div_ceil(chain_max);
        // One atomic per post: the counter's line is shared with the
        // other posting threads.
        let base = cw.next_chain.fetch_add(nchains as u64, Ordering::Relaxed);
        let mut posted_bytes = 0;
        {
            let mut infl = cw.inflight.lock();
            let now = Instant::now();
            for c in 0..nchains {
                let len = chain_max.min(n - c * chain_max);
                let chain: Vec<Slice> = if len == slices.len() {
                    Vec::from(std::mem::take(slices))
                } else if all_go {
                    Vec::from(slices.split_off(slices.len() - len))
                } else {
                    slices.drain(..len).collect()
                };
                let confirmed = confirm && chain.last().is_some_and(|s| s.opcode == Opcode::Read);
                if log::log_enabled!(log::Level::Trace) {
                    for s in &chain {
                        log::trace!(
                            "post {:?} {} -> {} qp {i}: {:#x}+{} rkey {:#x} (slice path {})",
                            s.opcode,
                            cw.ctx.name,
                            ep.peer_path,
                            s.dest,
                            s.length,
                            s.rkey,
                            sh.paths.get(s.path)
                        );
                    }
                }
                for (k, s) in chain.iter().enumerate() {
                    wrs.push(WorkRequest {
                        wr_id: wr_id(base + c as u64, k),
                        opcode: s.opcode,
                        local_addr: s.source,
                        length: s.length as u32,
                        lkey: s.lkey,
                        remote_addr: s.dest,
                        rkey: s.rkey,
                        signaled: k + 1 == len && !confirmed,
                    });
                    posted_bytes += s.length;
                }
                if let Some(last) = chain.last().filter(|_| confirmed) {
                    // Zero bytes at an address the chain already uses.
                    wrs.push(WorkRequest {
                        wr_id: wr_id(base + c as u64, len),
                        opcode: Opcode::Write,
                        local_addr: last.source,
                        length: 0,
                        lkey: last.lkey,
                        remote_addr: last.dest,
                        rkey: last.rkey,
                        signaled: true,
                    });
                }
                let held = infl.hold(ep);
                infl.insert(
                    base + c as u64,
                    Chain {
                        slices: chain,
                        first: 0,
                        ep: held,
                        qp: i,
                        posted_at: now,
                        confirm: confirmed,
                        timed_out: None,
                    },
                );
            }
        }
        // Before the post: unaccepted WRs are subtracted again below.
        cw.ctx.stats.posted_many(posted_bytes, n as u64);
        let accepted = match ep.post(i, wrs) {
            Ok(k) => k.min(wrs.len()),
            Err(e) => {
                crate::warn_limited!("post on {} -> {}: {e}", cw.ctx.name, ep.peer_path);
                0
            }
        };
        budget -= n;
        any |= accepted > 0;
        if accepted < wrs.len() {
            take_back(cw, ep, base, wrs, accepted, slices);
            break;
        }
    }
    any
}

/// A post on `ep` took only the first `accepted` of `wrs`, the WRs of
/// chains `base..`: the slices not taken go back to the queue front, in
/// order. A chain cut short has no signaled WR on the QP: its QP goes to
/// ERR so that its WRs still queued flush (completing them), and it ends
/// at those flushes or after `flush_grace` (its WRs that completed
/// silently before the ERR count as failed then: never a success not
/// seen).
fn take_back(
    cw: &ContextWorkers,
    ep: &Arc<Endpoint>,
    base: u64,
    wrs: &[WorkRequest],
    accepted: usize,
    slices: &mut VecDeque<Slice>,
) {
    let mut cut_short = false;
    let mut back: Vec<Slice> = Vec::new();
    {
        let mut infl = cw.inflight.lock();
        // The first WR of each chain, from the last chain back.
        let starts = wrs
            .iter()
            .enumerate()
            .map(|(k, w)| (k, split(w.wr_id)))
            .filter(|(_, (_, index))| *index == 0)
            .map(|(k, (id, _))| (k, id))
            .collect::<Vec<_>>();
        for &(start, id) in starts.iter().rev() {
            debug_assert!(id >= base);
            if start >= accepted {
                if let Some((ch, _)) = infl.take(id) {
                    back.splice(0..0, ch.slices);
                }
                continue;
            }
            let had = infl
                .chains
                .get(&id)
                .map_or(0, |c| c.slices.len() + usize::from(c.confirm));
            if accepted - start < had {
                let tail = infl.split_off(id, accepted - start);
                cut_short = true;
                if let Some(ch) = infl.chains.get_mut(&id) {
                    ch.timed_out = Some(Instant::now());
                }
                back.splice(0..0, tail);
            }
            break;
        }
    }
    for s in back.iter() {
        cw.ctx.stats.finished(s.length, false);
    }
    for s in back.into_iter().rev() {
        slices.push_front(s);
    }
    if cut_short {
        log::warn!(
            "post on {} -> {} took {accepted} of {} WRs; its QPs go to ERR to flush the rest",
            cw.ctx.name,
            ep.peer_path,
            wrs.len()
        );
        ep.retire("post accepted in part");
        cw.ctx.forget_endpoint(&ep.peer_path, ep);
    }
}
