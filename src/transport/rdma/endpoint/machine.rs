//! The endpoint connection state machine (spec §5.3-§5.6), sans-IO.

use std::time::{Duration, Instant};

use log::{debug, info, warn};

use super::action::{Action, Gate, PeerQps, Role, StartActive};
use super::config::{reject_text, EndpointConfig};
use super::state::EndpointState;
use crate::error::{Error, Result};
use crate::metadata::handshake::desc::HandShakeDesc;

/// Generations of successive endpoints for one peer should not overlap:
/// start endpoint number *n* at `n * GENERATION_STRIDE` (resets add 1).
pub const GENERATION_STRIDE: u64 = 1 << 32;

/// Passive-side rejection texts (spec §4.4); any non-empty text rejects.
pub const MSG_ACK_UNCONNECTED: &str = "Received RDMA ready ACK for unconnected endpoint";
pub const MSG_ACK_STALE: &str = "Received stale RDMA ready ACK with mismatched peer QP numbers";
pub const MSG_QP_COUNT: &str =
    "QP count mismatch in peer and local endpoints, check MC_MAX_EP_PER_CTX";

/// Progress of this side's active attempt in the current generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ActivePhase {
    /// Waiting for the handshake RPC's reply.
    Reply,
    /// Waiting for our QPs to reach RTS.
    Configure,
    /// Waiting for the ready-ACK RPC to return.
    AckSent,
}

/// A QP configuration handed to the driver and not yet reported back.
#[derive(Debug, Clone)]
struct Configuring {
    role: Role,
    peer: PeerQps,
    peer_supports_ack: bool,
}

/// One RDMA endpoint's connection logic. No I/O, no clock reads, no locks:
/// the driver feeds events (with the generation they belong to) and
/// executes the returned [`Action`]s.
#[derive(Debug)]
pub struct Endpoint {
    cfg: EndpointConfig,
    state: EndpointState,
    /// Bumped by every reset/retire. Every I/O result carries the generation
    /// it was started in; results of an older generation are never applied.
    generation: u64,
    local_qpns: Vec<u32>,
    peer: Option<PeerQps>,
    has_connected: bool,
    peer_supports_ack: bool,
    /// Passive side only: when the ready-ACK wait began.
    ready_wait_start: Option<Instant>,
    active: Option<ActivePhase>,
    configuring: Option<Configuring>,
    /// A handshake reply that arrived while a QP configuration was running.
    deferred_reply: Option<(u64, Result<HandShakeDesc>)>,
}

impl Endpoint {
    /// A new endpoint whose QPs are still being created: report them with
    /// `on_qps_rebuilt(generation, ..)`. Give each endpoint a starting
    /// generation no earlier endpoint of the peer used (e.g. a per-context
    /// counter times [`GENERATION_STRIDE`]), so late results addressed to a
    /// retired predecessor can never match.
    pub fn new(cfg: EndpointConfig, generation: u64) -> Self {
        Endpoint {
            cfg,
            state: EndpointState::Initializing,
            generation,
            local_qpns: Vec::new(),
            peer: None,
            has_connected: false,
            peer_supports_ack: false,
            ready_wait_start: None,
            active: None,
            configuring: None,
            deferred_reply: None,
        }
    }

    /// A new endpoint whose QPs already exist: `Unconnected`.
    pub fn with_qps(cfg: EndpointConfig, generation: u64, local_qpns: Vec<u32>) -> Self {
        let mut ep = Endpoint::new(cfg, generation);
        ep.local_qpns = local_qpns;
        ep.state = EndpointState::Unconnected;
        ep
    }

    pub fn config(&self) -> &EndpointConfig {
        &self.cfg
    }
    pub fn state(&self) -> EndpointState {
        self.state
    }
    pub fn generation(&self) -> u64 {
        self.generation
    }
    pub fn local_qpns(&self) -> &[u32] {
        &self.local_qpns
    }
    /// The peer's QPNs once our QPs were configured against them.
    pub fn peer_qpns(&self) -> Option<&[u32]> {
        self.peer.as_ref().map(|p| p.qpns.as_slice())
    }
    pub fn has_connected(&self) -> bool {
        self.has_connected
    }
    pub fn peer_supports_ready_ack(&self) -> bool {
        self.peer_supports_ack
    }
    pub fn ready_wait_start(&self) -> Option<Instant> {
        self.ready_wait_start
    }
    pub fn connected(&self) -> bool {
        self.state.connected()
    }
    pub fn ready_to_send(&self) -> bool {
        self.state.ready_to_send()
    }

    /// Our handshake desc: always advertises ready-ACK support.
    pub fn local_desc(&self, ready_ack: bool) -> HandShakeDesc {
        HandShakeDesc {
            local_gid: self.cfg.local_gid.clone(),
            local_lid: self.cfg.local_lid,
            local_nic_path: self.cfg.local_nic_path.clone(),
            payload: String::new(),
            peer_nic_path: self.cfg.peer_nic_path.clone(),
            qp_num: self.local_qpns.clone(),
            ready_ack: Some(ready_ack),
            reply_msg: String::new(),
            ..Default::default()
        }
    }

    /// True only in `ConnectedWaitReadyAck` with a started timer older than
    /// the timeout (spec §5.5).
    pub fn ready_ack_timed_out(&self, now: Instant) -> bool {
        self.poll_timeout().is_some_and(|deadline| now >= deadline)
    }

    /// The next instant at which [`Endpoint::handle_timeout`] acts: the
    /// first instant past the passive side's ready-ACK timeout, or `None`
    /// when no timer runs. Pure: a driver sleeps until it.
    pub fn poll_timeout(&self) -> Option<Instant> {
        if self.state != EndpointState::ConnectedWaitReadyAck {
            return None;
        }
        let start = self.ready_wait_start?;
        // "Older than the timeout": the deadline itself is not late yet.
        start.checked_add(self.cfg.ready_ack_timeout + Duration::from_nanos(1))
    }

    /// Sender gating for a worker holding slices for this endpoint.
    pub fn gate(&self, now: Instant) -> Gate {
        match self.state {
            EndpointState::Connected => Gate::Post,
            EndpointState::Unconnected => Gate::Connect,
            EndpointState::Initializing | EndpointState::Connecting => Gate::Wait,
            EndpointState::ConnectedWaitReadyAck => {
                if self.ready_ack_timed_out(now) {
                    Gate::Fail
                } else {
                    Gate::Wait
                }
            }
            EndpointState::Destroying | EndpointState::Destroyed => Gate::Fail,
        }
    }

    /// Act on the timers due at `now` (see [`Endpoint::poll_timeout`]): a
    /// timed-out ready-ACK wait resets (retires) the endpoint.
    pub fn handle_timeout(&mut self, now: Instant) -> Vec<Action> {
        if !self.ready_ack_timed_out(now) {
            return Vec::new();
        }
        warn!(
            "RDMA endpoint {} -> {}: ready ACK not received within {:?}, resetting",
            self.cfg.local_nic_path, self.cfg.peer_nic_path, self.cfg.ready_ack_timeout
        );
        let mut actions = self.reset("ready ACK timeout");
        actions.push(Action::TimedOut);
        actions
    }

    /// Begin an active handshake (spec §5.3 steps 1-3).
    pub fn start_active(&mut self) -> Result<StartActive> {
        match self.state {
            EndpointState::Connected | EndpointState::ConnectedWaitReadyAck => {
                Ok(StartActive::AlreadyConnected)
            }
            EndpointState::Initializing | EndpointState::Connecting => {
                Ok(StartActive::WaitForHandshake)
            }
            EndpointState::Destroying | EndpointState::Destroyed => Err(Error::Endpoint(format!(
                "endpoint {} -> {} is retired",
                self.cfg.local_nic_path, self.cfg.peer_nic_path
            ))),
            EndpointState::Unconnected if self.cfg.is_loopback() => {
                let peer = PeerQps {
                    qpns: self.local_qpns.clone(),
                    gid: self.cfg.local_gid.clone(),
                    lid: self.cfg.local_lid,
                };
                self.state = EndpointState::Connecting;
                self.active = Some(ActivePhase::Configure);
                self.configuring = Some(Configuring {
                    role: Role::Active,
                    peer: peer.clone(),
                    peer_supports_ack: false,
                });
                Ok(StartActive::Configure {
                    generation: self.generation,
                    role: Role::Active,
                    peer,
                })
            }
            EndpointState::Unconnected => {
                self.state = EndpointState::Connecting;
                self.active = Some(ActivePhase::Reply);
                Ok(StartActive::SendHandshake {
                    generation: self.generation,
                    request: self.local_desc(false),
                })
            }
        }
    }

    /// The Connection RPC started by `start_active` returned: `Ok(reply)`
    /// (possibly a rejection in `reply_msg`) or `Err` (RPC failure).
    pub fn on_handshake_reply(
        &mut self,
        generation: u64,
        reply: Result<HandShakeDesc>,
        now: Instant,
    ) -> Vec<Action> {
        if generation != self.generation {
            return vec![self.stale_active("handshake reply")];
        }
        if self.configuring.is_some() {
            // A passive configuration is running; apply this right after it.
            self.deferred_reply = Some((generation, reply));
            return Vec::new();
        }
        if self.active != Some(ActivePhase::Reply) {
            debug!(
                "RDMA endpoint {}: ignoring unexpected handshake reply",
                self.cfg.peer_nic_path
            );
            return Vec::new();
        }
        let _ = now;
        let reply = match reply {
            Ok(r) if r.reply_msg.is_empty() => r,
            failed => {
                let err = match failed {
                    Err(e) => e,
                    Ok(r) => Error::RejectHandshake(r.reply_msg),
                };
                if self.connected() {
                    // Meanwhile the peer's own handshake connected us with the
                    // QPNs we sent; the passive path governs readiness.
                    self.active = None;
                    info!(
                        "RDMA endpoint {}: handshake RPC failed ({err}) but a passive \
                         handshake connected the endpoint; reusing it",
                        self.cfg.peer_nic_path
                    );
                    return vec![Action::ActiveDone(Ok(()))];
                }
                warn!(
                    "RDMA endpoint {} -> {}: handshake failed: {err}",
                    self.cfg.local_nic_path, self.cfg.peer_nic_path
                );
                return self.fail_active(err, "handshake RPC failure");
            }
        };
        if self.connected() {
            return self.simultaneous_open(reply);
        }
        if let Err(e) = self.cfg.check_reply(self.local_qpns.len(), &reply) {
            warn!("RDMA endpoint {}: {e}", self.cfg.peer_nic_path);
            return self.fail_active(e, "invalid handshake reply");
        }
        let peer = PeerQps {
            qpns: reply.qp_num.clone(),
            gid: reply.local_gid.clone(),
            lid: reply.local_lid,
        };
        self.active = Some(ActivePhase::Configure);
        self.configuring = Some(Configuring {
            role: Role::Active,
            peer: peer.clone(),
            peer_supports_ack: reply.supports_ready_ack(),
        });
        vec![Action::ConfigureQps {
            generation: self.generation,
            role: Role::Active,
            peer,
        }]
    }

    /// Our reply arrived after the peer's own handshake already connected
    /// this endpoint (spec §5.5 "simultaneous open").
    fn simultaneous_open(&mut self, reply: HandShakeDesc) -> Vec<Action> {
        let same = self.peer_qpns() == Some(reply.qp_num.as_slice());
        if !same {
            warn!(
                "RDMA endpoint {}: simultaneous handshake with different peer QP numbers; \
                 retiring",
                self.cfg.peer_nic_path
            );
            return self.fail_active(
                Error::Endpoint("peer QP numbers changed during simultaneous handshake".into()),
                "simultaneous handshake mismatch",
            );
        }
        self.active_connected(reply.supports_ready_ack())
    }

    /// Active side: our QPs talk to the peer's. Send the ready ACK when the
    /// peer speaks it (the wait is the ACK RPC itself: no timer), else we
    /// are ready now.
    fn active_connected(&mut self, peer_supports_ack: bool) -> Vec<Action> {
        if !peer_supports_ack {
            self.active = None;
            self.promote();
            return vec![Action::ActiveDone(Ok(()))];
        }
        if !self.connected() {
            self.state = EndpointState::ConnectedWaitReadyAck;
        }
        self.active = Some(ActivePhase::AckSent);
        vec![Action::SendReadyAck {
            generation: self.generation,
            request: self.local_desc(true),
        }]
    }

    /// The driver finished (or failed) moving the QPs to RTS.
    pub fn on_qps_configured(
        &mut self,
        generation: u64,
        role: Role,
        result: Result<()>,
        now: Instant,
    ) -> Vec<Action> {
        let current = generation == self.generation
            && self.configuring.as_ref().is_some_and(|c| c.role == role);
        if !current {
            return vec![self.stale_for(role, "QP configuration")];
        }
        let Some(conf) = self.configuring.take() else {
            return vec![self.stale_for(role, "QP configuration")];
        };
        // Taken first: a failure below resets, which would drop it, and the
        // active worker waiting for it must still get its answer.
        let deferred = self.deferred_reply.take();
        let mut actions = match result {
            Err(e) => {
                warn!(
                    "RDMA endpoint {} -> {}: QP setup failed: {e}",
                    self.cfg.local_nic_path, self.cfg.peer_nic_path
                );
                let msg = e.to_string();
                let mut acts = self.reset("QP setup failure");
                match role {
                    Role::Active => acts.push(Action::ActiveDone(Err(e))),
                    Role::Passive => acts.push(Action::Reply(HandShakeDesc::rejected(msg))),
                }
                acts
            }
            Ok(()) => {
                self.peer = Some(conf.peer);
                self.has_connected = true;
                self.peer_supports_ack = conf.peer_supports_ack;
                match role {
                    Role::Active => self.active_connected(conf.peer_supports_ack),
                    Role::Passive => {
                        if conf.peer_supports_ack {
                            self.state = EndpointState::ConnectedWaitReadyAck;
                            self.ready_wait_start = Some(now);
                        } else {
                            self.promote();
                        }
                        vec![Action::Reply(self.local_desc(false))]
                    }
                }
            }
        };
        if let Some((gen, reply)) = deferred {
            actions.extend(self.on_handshake_reply(gen, reply, now));
        }
        actions
    }

    /// The ready-ACK RPC returned (`Ok(reply)` possibly rejected, or `Err`).
    pub fn on_ready_ack_sent(
        &mut self,
        generation: u64,
        result: Result<HandShakeDesc>,
        now: Instant,
    ) -> Vec<Action> {
        let _ = now;
        if generation != self.generation {
            // Reset (and maybe reconnected) while the ACK was in flight: the
            // result belongs to QPs that no longer exist.
            return vec![self.stale_active("ready ACK")];
        }
        if self.active != Some(ActivePhase::AckSent) {
            debug!(
                "RDMA endpoint {}: ignoring duplicate ready ACK completion",
                self.cfg.peer_nic_path
            );
            return Vec::new();
        }
        self.active = None;
        let err = match result {
            Ok(r) if r.reply_msg.is_empty() => None,
            Ok(r) => Some(Error::RejectHandshake(r.reply_msg)),
            Err(e) => Some(e),
        };
        if let Some(e) = err {
            warn!(
                "RDMA endpoint {} -> {}: ready ACK failed: {e}",
                self.cfg.local_nic_path, self.cfg.peer_nic_path
            );
            return self.fail_active(e, "ready ACK failure");
        }
        if !self.connected() {
            return vec![Action::ActiveDone(Err(Error::Endpoint(
                "endpoint no longer connected after ready ACK".into(),
            )))];
        }
        self.promote();
        vec![Action::ActiveDone(Ok(()))]
    }

    /// A Connection RPC from the peer (spec §5.4).
    pub fn on_handshake_request(&mut self, req: &HandShakeDesc, now: Instant) -> Vec<Action> {
        let _ = now;
        if req.is_ready_ack() {
            return vec![Action::Reply(self.on_ready_ack(req))];
        }
        match self.state {
            EndpointState::Destroying | EndpointState::Destroyed => {
                return vec![Action::RetryOnFreshEndpoint];
            }
            EndpointState::Initializing => {
                return vec![Action::Reply(HandShakeDesc::rejected(format!(
                    "Local RDMA endpoint unavailable for {}",
                    self.cfg.peer_nic_path
                )))];
            }
            _ => {}
        }
        if self.configuring.is_some() {
            return vec![Action::Reply(HandShakeDesc::rejected(format!(
                "RDMA handshake already in progress for {}",
                self.cfg.peer_nic_path
            )))];
        }
        if self.connected() {
            if self.peer_qpns() == Some(req.qp_num.as_slice()) {
                if !req.supports_ready_ack() {
                    self.peer_supports_ack = false;
                    self.promote();
                }
                return vec![Action::Reply(self.local_desc(false))];
            }
            info!(
                "RDMA endpoint {}: peer QP numbers changed (peer restarted); retiring",
                self.cfg.peer_nic_path
            );
            let mut acts = self.reset("peer QP numbers changed");
            acts.push(Action::RetryOnFreshEndpoint);
            return acts;
        }
        if let Err(e) = self.cfg.check_request(self.local_qpns.len(), req) {
            warn!("RDMA endpoint {}: {e}", self.cfg.peer_nic_path);
            return vec![Action::Reply(HandShakeDesc::rejected(reject_text(&e)))];
        }
        let peer = PeerQps {
            qpns: req.qp_num.clone(),
            gid: req.local_gid.clone(),
            lid: req.local_lid,
        };
        self.state = EndpointState::Connecting;
        self.configuring = Some(Configuring {
            role: Role::Passive,
            peer: peer.clone(),
            peer_supports_ack: req.supports_ready_ack(),
        });
        vec![Action::ConfigureQps {
            generation: self.generation,
            role: Role::Passive,
            peer,
        }]
    }

    /// The reply to a ready ACK; stale ACKs never change state.
    fn on_ready_ack(&mut self, req: &HandShakeDesc) -> HandShakeDesc {
        if !self.connected() {
            return HandShakeDesc::rejected(MSG_ACK_UNCONNECTED);
        }
        if self.peer_qpns() != Some(req.qp_num.as_slice()) {
            warn!(
                "RDMA endpoint {}: stale ready ACK (QPNs {:?}, expected {:?})",
                self.cfg.peer_nic_path,
                req.qp_num,
                self.peer_qpns()
            );
            return HandShakeDesc::rejected(MSG_ACK_STALE);
        }
        self.promote();
        HandShakeDesc::default()
    }

    /// Upstream `resetConnection`: a no-op unless connecting or connected.
    /// Never-connected → rebuild QPs (fresh QPNs); ever-connected → retire.
    pub fn reset(&mut self, reason: &str) -> Vec<Action> {
        match self.state {
            EndpointState::Connecting
            | EndpointState::ConnectedWaitReadyAck
            | EndpointState::Connected => {}
            _ => return Vec::new(),
        }
        if self.has_connected {
            return self.retire(reason);
        }
        info!(
            "RDMA endpoint {} -> {}: reset ({reason}); rebuilding QPs",
            self.cfg.local_nic_path, self.cfg.peer_nic_path
        );
        self.clear_attempt();
        self.state = EndpointState::Initializing;
        self.local_qpns.clear();
        vec![Action::RebuildQps {
            generation: self.generation,
        }]
    }

    /// Retire unconditionally (eviction, QP fatal event, shutdown).
    pub fn retire(&mut self, reason: &str) -> Vec<Action> {
        if self.state.retired() {
            return Vec::new();
        }
        info!(
            "RDMA endpoint {} -> {}: retiring ({reason})",
            self.cfg.local_nic_path, self.cfg.peer_nic_path
        );
        self.clear_attempt();
        self.state = EndpointState::Destroying;
        vec![Action::Retire]
    }

    /// The driver destroyed the retired QPs.
    pub fn finish_destroy(&mut self) {
        if self.state == EndpointState::Destroying {
            self.state = EndpointState::Destroyed;
        }
    }

    /// The QPs asked for by `new` / `RebuildQps` exist now (or could not be
    /// created: the endpoint is retired).
    pub fn on_qps_rebuilt(&mut self, generation: u64, qpns: Result<Vec<u32>>) -> Vec<Action> {
        if generation != self.generation || self.state != EndpointState::Initializing {
            debug!(
                "RDMA endpoint {}: ignoring stale QP rebuild",
                self.cfg.peer_nic_path
            );
            return Vec::new();
        }
        match qpns {
            Ok(qpns) => {
                self.local_qpns = qpns;
                self.state = EndpointState::Unconnected;
                Vec::new()
            }
            Err(e) => {
                warn!(
                    "RDMA endpoint {}: QP rebuild failed: {e}",
                    self.cfg.peer_nic_path
                );
                self.retire("QP rebuild failure")
            }
        }
    }

    /// Readiness: `Connected`, timer cleared.
    fn promote(&mut self) {
        self.state = EndpointState::Connected;
        self.ready_wait_start = None;
    }

    /// Every reset starts a new generation and forgets the running attempt.
    fn clear_attempt(&mut self) {
        self.generation = self.generation.wrapping_add(1);
        self.ready_wait_start = None;
        self.active = None;
        self.configuring = None;
        self.deferred_reply = None;
        self.peer = None;
    }

    fn fail_active(&mut self, err: Error, reason: &str) -> Vec<Action> {
        self.active = None;
        let mut acts = self.reset(reason);
        acts.push(Action::ActiveDone(Err(err)));
        acts
    }

    fn stale_active(&self, what: &str) -> Action {
        debug!(
            "RDMA endpoint {}: discarding {what} of an older generation",
            self.cfg.peer_nic_path
        );
        Action::ActiveDone(Err(Error::Endpoint(format!(
            "endpoint {} was reset while the {what} was in flight",
            self.cfg.peer_nic_path
        ))))
    }

    fn stale_for(&self, role: Role, what: &str) -> Action {
        match role {
            Role::Active => self.stale_active(what),
            Role::Passive => Action::Reply(HandShakeDesc::rejected(format!(
                "Local RDMA endpoint unavailable for {} (reset during handshake)",
                self.cfg.peer_nic_path
            ))),
        }
    }
}
