//! Drives one endpoint (all RC QPs between a local device and one peer NIC
//! path) with real QPs and handshake RPCs. Every decision comes from the
//! pure state machine in `endpoint/`; this file only executes its actions
//! (QP transitions, RPCs, retirement) and feeds the results back.
//!
//! QP configuration runs under the endpoint lock, as the machine asks; a
//! worker asking for the gate uses `try_lock` and treats a busy endpoint as
//! `Wait`, so a slow handshake never stalls the worker's other peers. RPCs
//! run unlocked.

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, MutexGuard, RwLock};

use super::path_trust::PathTrust;
use crate::error::{Error, Result};
use crate::metadata::handshake::HandShakeDesc;
use crate::metadata::name;
use crate::metadata::Metadata;

use super::device::{parse_gid, Device, QueuePair, WorkRequest};
use super::endpoint::{
    Action, Endpoint as Machine, EndpointConfig, EndpointState, Gate, PeerQps, StartActive,
};

/// A worker that found the endpoint locked (a QP transition, a retirement)
/// asks again this soon; the long holders (handshakes) also wake it.
const BUSY_RECHECK: Duration = Duration::from_millis(1);

/// Handshake behaviour of this transport.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeMode {
    /// Act as a legacy peer: omit `ready_ack` from what we send and ignore
    /// it in what we receive (`MC_TE_RS_LEGACY_HANDSHAKE`, test switch).
    pub legacy: bool,
    /// `MC_READY_ACK_TIMEOUT_MS`.
    pub ack_timeout: Duration,
    /// Test hook: do not send the ready ACK but act as if it was accepted.
    pub drop_ack: bool,
    /// Test hook: sleep before sending the ready ACK.
    pub ack_delay: Duration,
    /// Test hook: the active side sleeps before moving its QPs to RTR, which
    /// opens the window the ready ACK closes (`MC_TE_RS_TEST_RTR_DELAY_MS`).
    pub rtr_delay: Duration,
    /// Test hook: send an empty `local_gid`, as some peers do; the other
    /// side takes it from our segment descriptor (`MC_TE_RS_TEST_EMPTY_GID`).
    pub empty_gid: bool,
}

/// Finds a peer's GID in its segment descriptor (for an empty `local_gid`).
pub type PeerGidLookup = Box<dyn Fn() -> Option<String> + Send + Sync>;

/// The GID of NIC path `peer_path`'s device in its segment descriptor
/// (fetched if not cached), as upstream does for an empty `local_gid`.
pub fn peer_gid_from_descriptor(meta: &Metadata, peer_path: &str) -> Option<String> {
    let (server, device) = name::split_nic_path(peer_path)?;
    let id = meta.open_segment(server).ok()?;
    let desc = meta.segment_desc(id)?;
    let dev = desc.devices.as_ref()?.iter().find(|d| d.name == device)?;
    Some(dev.gid.clone()).filter(|g| !g.is_empty())
}

/// The passive handler's verdict.
pub enum PassiveOutcome {
    Reply(HandShakeDesc),
    /// This endpoint is retired: handle the request once more on a fresh one.
    RetryFresh,
}

/// What executing a list of actions left for the caller.
#[derive(Default)]
struct Pending {
    reply: Option<HandShakeDesc>,
    retry_fresh: bool,
    /// An RPC to make unlocked: (generation, request, is_ready_ack).
    rpc: Option<(u64, HandShakeDesc, bool)>,
    done: Option<Result<()>>,
    timed_out: bool,
}

pub struct Endpoint {
    pub local_path: String,
    pub peer_path: String,
    device: Arc<dyn Device>,
    qps: RwLock<Vec<Box<dyn QueuePair>>>,
    /// WRs posted and not yet completed, per QP (fixed count: `num_qp`).
    outstanding: Vec<std::sync::atomic::AtomicU32>,
    max_wr: u32,
    machine: Mutex<Machine>,
    mode: HandshakeMode,
    /// The last active attempt failed: the slices that waited for it pay
    /// one retry (told once through the gate).
    handshake_failed: std::sync::atomic::AtomicBool,
    /// An active handshake thread owns this endpoint's next attempt.
    handshake_running: std::sync::atomic::AtomicBool,
    /// `liveness::coarse_ms` of the last completion (or of the first post
    /// after idling): the stall watchdog probes the peer when it lags.
    last_progress_ms: std::sync::atomic::AtomicU64,
    /// `coarse_ms` of the last completion (or first post after idling)
    /// alone: a probe that finds the peer alive does not move it.
    last_completion_ms: std::sync::atomic::AtomicU64,
    /// A liveness probe of the peer is running.
    probing: std::sync::atomic::AtomicBool,
    peer_gid_lookup: std::sync::OnceLock<PeerGidLookup>,
}

fn create_qps(dev: &dyn Device, n: usize, max_wr: u32) -> Result<Vec<Box<dyn QueuePair>>> {
    (0..n).map(|_| dev.create_qp(max_wr)).collect()
}

impl Endpoint {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        local_path: String,
        peer_path: String,
        device: Arc<dyn Device>,
        num_qp: usize,
        max_wr: u32,
        gid: String,
        lid: u16,
        generation: u64,
        mode: HandshakeMode,
    ) -> Result<Endpoint> {
        let qps = create_qps(device.as_ref(), num_qp, max_wr)?;
        let qpns = qps.iter().map(|q| q.qp_num()).collect();
        let cfg = EndpointConfig::new(local_path.clone(), peer_path.clone(), gid, lid)
            .with_ready_ack_timeout(mode.ack_timeout);
        Ok(Endpoint {
            local_path,
            peer_path,
            device,
            qps: RwLock::new(qps),
            outstanding: (0..num_qp)
                .map(|_| std::sync::atomic::AtomicU32::new(0))
                .collect(),
            max_wr,
            machine: Mutex::new(Machine::with_qps(cfg, generation, qpns)),
            mode,
            handshake_failed: std::sync::atomic::AtomicBool::new(false),
            handshake_running: std::sync::atomic::AtomicBool::new(false),
            last_progress_ms: std::sync::atomic::AtomicU64::new(0),
            last_completion_ms: std::sync::atomic::AtomicU64::new(0),
            probing: std::sync::atomic::AtomicBool::new(false),
            peer_gid_lookup: std::sync::OnceLock::new(),
        })
    }

    /// How to find the peer's GID when its handshake carries none.
    pub fn set_peer_gid_lookup(&self, f: PeerGidLookup) {
        let _ = self.peer_gid_lookup.set(f);
    }

    pub fn state(&self) -> EndpointState {
        self.machine.lock().state()
    }

    /// The peer's QP numbers while connected or connecting with them.
    pub fn peer_qpns(&self) -> Option<Vec<u32>> {
        self.machine.lock().peer_qpns().map(<[u32]>::to_vec)
    }

    pub fn qp_nums(&self) -> Vec<u32> {
        self.qps.read().iter().map(|q| q.qp_num()).collect()
    }

    /// Claim the next active attempt; false while one is already running
    /// (the worker then keeps its slices queued).
    pub fn begin_handshake(&self) -> bool {
        !self
            .handshake_running
            .swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    /// The claimed attempt is over.
    pub fn end_handshake(&self) {
        self.handshake_running
            .store(false, std::sync::atomic::Ordering::Release);
    }

    /// An active attempt is in progress (such an endpoint is not idle).
    pub fn handshake_running(&self) -> bool {
        self.handshake_running
            .load(std::sync::atomic::Ordering::Acquire)
    }

    pub fn is_loopback(&self) -> bool {
        self.local_path == self.peer_path
    }

    fn outgoing(&self, mut d: HandShakeDesc) -> HandShakeDesc {
        if self.mode.legacy {
            d.ready_ack = None;
        }
        if self.mode.empty_gid {
            d.local_gid.clear();
        }
        d
    }

    /// Run the machine's actions; RPCs are handed back to the caller.
    fn execute(&self, m: &mut MutexGuard<'_, Machine>, actions: Vec<Action>, p: &mut Pending) {
        let mut queue: std::collections::VecDeque<Action> = actions.into();
        while let Some(a) = queue.pop_front() {
            match a {
                Action::SendHandshake {
                    generation,
                    request,
                } => p.rpc = Some((generation, self.outgoing(request), false)),
                Action::SendReadyAck {
                    generation,
                    request,
                } => p.rpc = Some((generation, self.outgoing(request), true)),
                Action::ConfigureQps {
                    generation,
                    role,
                    peer,
                } => {
                    if role == super::endpoint::Role::Active && !self.mode.rtr_delay.is_zero() {
                        std::thread::sleep(self.mode.rtr_delay);
                    }
                    let r = self.configure(&peer);
                    queue.extend(m.on_qps_configured(generation, role, r, Instant::now()));
                }
                Action::Reply(d) => p.reply = Some(self.outgoing(d)),
                Action::RebuildQps { generation } => {
                    let n = self.outstanding.len();
                    let r = create_qps(self.device.as_ref(), n, self.max_wr).map(|v| {
                        let qpns = v.iter().map(|q| q.qp_num()).collect();
                        *self.qps.write() = v;
                        qpns
                    });
                    queue.extend(m.on_qps_rebuilt(generation, r));
                }
                Action::Retire => {
                    for q in self.qps.read().iter() {
                        q.set_error();
                    }
                }
                Action::RetryOnFreshEndpoint => p.retry_fresh = true,
                Action::ActiveDone(r) => p.done = Some(r),
                Action::TimedOut => p.timed_out = true,
            }
        }
    }

    /// QP i → peer QP i, RESET→INIT→RTR→RTS.
    fn configure(&self, peer: &PeerQps) -> Result<()> {
        // An empty GID: the peer's segment descriptor has it (upstream).
        let text = match peer.gid.as_str() {
            "" => self
                .peer_gid_lookup
                .get()
                .and_then(|f| f())
                .unwrap_or_default(),
            g => g.to_string(),
        };
        let gid = parse_gid(&text)
            .ok_or_else(|| Error::RejectHandshake(format!("Invalid peer GID: {text:?}")))?;
        let qps = self.qps.read();
        if qps.len() != peer.qpns.len() {
            return Err(Error::RejectHandshake(format!(
                "peer has {} QPs, we have {}",
                peer.qpns.len(),
                qps.len()
            )));
        }
        for (q, &pq) in qps.iter().zip(&peer.qpns) {
            q.connect(pq, gid, peer.lid).map_err(|e| {
                Error::Endpoint(format!(
                    "{} -> {}: QP {} to peer QP {pq}: {e}",
                    self.local_path,
                    self.peer_path,
                    q.qp_num()
                ))
            })?;
        }
        Ok(())
    }

    /// Gate for a worker with queued slices, and when to ask again if it
    /// says `Wait`: the machine's next deadline (`poll_timeout`), or
    /// `BUSY_RECHECK` from now when the endpoint was busy. Without a
    /// deadline, whatever ends the wait (handshake, ready ACK) wakes the
    /// workers.
    pub fn gate(&self) -> (Gate, Option<Instant>) {
        if self
            .handshake_failed
            .swap(false, std::sync::atomic::Ordering::AcqRel)
        {
            return (Gate::Fail, None);
        }
        let Some(mut m) = self.machine.try_lock() else {
            return (Gate::Wait, Some(Instant::now() + BUSY_RECHECK));
        };
        let now = Instant::now();
        let acts = m.handle_timeout(now);
        if !acts.is_empty() {
            let mut p = Pending::default();
            self.execute(&mut m, acts, &mut p);
            if p.timed_out {
                return (Gate::Fail, None);
            }
        }
        (m.gate(now), m.poll_timeout())
    }

    /// Retire (QPs to ERR; destroyed when the last in-flight WR released
    /// its `Arc<Endpoint>`).
    pub fn retire(&self, reason: &str) {
        let mut m = self.machine.lock();
        let acts = m.retire(reason);
        self.execute(&mut m, acts, &mut Pending::default());
    }

    /// Active connect, run on a handshake thread after the gate said
    /// `Connect`. Returns when the attempt is over.
    pub fn connect_active(&self, meta: &Metadata, trust: &PathTrust) -> Result<()> {
        let ours = meta.local_desc().and_then(|d| d.te_rs_incarnation.clone());
        let mut p = Pending::default();
        {
            let mut m = self.machine.lock();
            match m.start_active()? {
                StartActive::SendHandshake {
                    generation,
                    request,
                } => p.rpc = Some((generation, self.outgoing(request), false)),
                StartActive::Configure {
                    generation,
                    role,
                    peer,
                } => {
                    let acts = vec![Action::ConfigureQps {
                        generation,
                        role,
                        peer,
                    }];
                    self.execute(&mut m, acts, &mut p);
                }
                StartActive::AlreadyConnected | StartActive::WaitForHandshake => return Ok(()),
            }
        }
        let server = name::split_nic_path(&self.peer_path)
            .map(|(s, _)| s.to_string())
            .ok_or_else(|| Error::InvalidArgument(format!("bad NIC path {}", self.peer_path)))?;
        while let Some((generation, req, is_ack)) = p.rpc.take() {
            let reply = if is_ack {
                if !self.mode.ack_delay.is_zero() {
                    std::thread::sleep(self.mode.ack_delay);
                }
                if self.mode.drop_ack {
                    Ok(HandShakeDesc::default())
                } else {
                    meta.send_handshake(&server, &req)
                }
            } else {
                let mut req = req;
                trust.stamp(&self.local_path, &self.peer_path, ours.as_deref(), &mut req);
                meta.send_handshake(&server, &req).map(|mut r| {
                    if self.mode.legacy {
                        r.ready_ack = None;
                    }
                    trust.accepted_reply(&self.local_path, &self.peer_path, &r);
                    r
                })
            };
            if is_ack && reply.is_ok() && !self.mode.drop_ack {
                log::info!(
                    "sent RDMA ready ACK {} -> {}",
                    self.local_path,
                    self.peer_path
                );
            }
            let mut m = self.machine.lock();
            let acts = if is_ack {
                m.on_ready_ack_sent(generation, reply, Instant::now())
            } else {
                m.on_handshake_reply(generation, reply, Instant::now())
            };
            self.execute(&mut m, acts, &mut p);
        }
        let r = p.done.unwrap_or(Ok(()));
        if let Err(e) = &r {
            self.handshake_failed
                .store(true, std::sync::atomic::Ordering::Release);
            log::warn!(
                "handshake {} -> {} failed: {e}",
                self.local_path,
                self.peer_path
            );
        }
        r
    }

    /// Passive side: answer a Connection RPC addressed to this endpoint.
    pub fn on_request(&self, req: &HandShakeDesc) -> PassiveOutcome {
        let mut req = req.clone();
        if self.mode.legacy {
            req.ready_ack = None;
        }
        let mut m = self.machine.lock();
        let was_waiting = m.state() == EndpointState::ConnectedWaitReadyAck;
        let acts = m.on_handshake_request(&req, Instant::now());
        let mut p = Pending::default();
        self.execute(&mut m, acts, &mut p);
        if was_waiting && req.ready_ack == Some(true) && m.state() == EndpointState::Connected {
            log::info!(
                "received RDMA ready ACK {} -> {}",
                self.peer_path,
                self.local_path
            );
        }
        if p.retry_fresh {
            return PassiveOutcome::RetryFresh;
        }
        if let (Some(r), true) = (p.reply.as_mut(), self.mode.empty_gid) {
            r.local_gid.clear();
        }
        PassiveOutcome::Reply(p.reply.unwrap_or_else(|| {
            HandShakeDesc::rejected(format!(
                "Local RDMA endpoint unavailable for {}",
                self.peer_path
            ))
        }))
    }

    /// Free WR slots on QP `i`.
    pub fn free_slots(&self, i: usize) -> u32 {
        self.max_wr
            .saturating_sub(self.outstanding[i].load(std::sync::atomic::Ordering::Acquire))
    }

    pub fn num_qps(&self) -> usize {
        self.outstanding.len()
    }

    /// Post a chain on QP `i`; returns how many WRs were accepted.
    pub fn post(&self, i: usize, wrs: &[WorkRequest]) -> Result<usize> {
        use std::sync::atomic::Ordering;
        if self.outstanding() == 0 {
            self.touch(super::liveness::coarse_ms());
        }
        self.outstanding[i].fetch_add(wrs.len() as u32, Ordering::AcqRel);
        let r = match self.qps.read().get(i) {
            Some(q) => q.post(wrs),
            None => Err(Error::Endpoint(format!("no QP {i}"))),
        };
        let accepted = *r.as_ref().unwrap_or(&0);
        let rejected = wrs.len() - accepted.min(wrs.len());
        if rejected > 0 {
            self.outstanding[i].fetch_sub(rejected as u32, Ordering::AcqRel);
        }
        r
    }

    /// `n` WRs posted on QP `i` completed.
    pub fn completed(&self, i: usize, n: usize) {
        self.outstanding[i].fetch_sub(n as u32, std::sync::atomic::Ordering::AcqRel);
    }

    /// Progress was seen at `now_ms` (`liveness::coarse_ms`): a
    /// completion, or a first post after idling.
    pub fn touch(&self, now_ms: u64) {
        use std::sync::atomic::Ordering::Relaxed;
        self.last_progress_ms.store(now_ms, Relaxed);
        self.last_completion_ms.store(now_ms, Relaxed);
    }

    /// A probe found the peer alive at `now_ms`: the next probe waits a
    /// probe period again (`stuck_ms` keeps counting).
    pub fn probed_alive(&self, now_ms: u64) {
        self.last_progress_ms
            .store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// Milliseconds without progress or a probe while WRs are in flight (0
    /// when idle).
    pub fn stalled_ms(&self, now_ms: u64) -> u64 {
        if self.outstanding() == 0 {
            return 0;
        }
        now_ms.saturating_sub(
            self.last_progress_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Milliseconds without a completion while WRs are in flight (0 when
    /// idle), whatever probes found.
    pub fn stuck_ms(&self, now_ms: u64) -> u64 {
        if self.outstanding() == 0 {
            return 0;
        }
        now_ms.saturating_sub(
            self.last_completion_ms
                .load(std::sync::atomic::Ordering::Relaxed),
        )
    }

    /// Claim the endpoint's one liveness probe; false while one runs.
    pub fn begin_probe(&self) -> bool {
        !self.probing.swap(true, std::sync::atomic::Ordering::AcqRel)
    }

    pub fn end_probe(&self) {
        self.probing
            .store(false, std::sync::atomic::Ordering::Release);
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding
            .iter()
            .map(|o| o.load(std::sync::atomic::Ordering::Acquire))
            .sum()
    }
}

/// Label for `showLinks`.
pub fn state_label(s: EndpointState) -> &'static str {
    match s {
        EndpointState::Initializing => "initializing",
        EndpointState::Unconnected => "unconnected",
        EndpointState::Connecting => "connecting",
        EndpointState::ConnectedWaitReadyAck => "wait_ready_ack",
        EndpointState::Connected => "connected",
        EndpointState::Destroying => "destroying",
        EndpointState::Destroyed => "destroyed",
    }
}
