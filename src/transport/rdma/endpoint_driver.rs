//! Drives one endpoint (all RC QPs between a local device and one peer NIC
//! path) with real QPs and handshake RPCs (spec §5.3-§5.6).
//!
//! Connection decisions (may we post, must we wait, connect or give up)
//! come from the endpoint's state; QP transitions and RPCs happen here
//! without holding the state lock, so a worker asking for the gate is never
//! blocked behind a slow handshake.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use crate::error::{Error, Result};
use crate::metadata::handshake::HandShakeDesc;
use crate::metadata::name;
use crate::metadata::Metadata;

use super::context::{parse_gid, QueuePair, WorkRequest};

/// What a worker may do with slices queued for an endpoint.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Gate {
    /// Connected and ready: post.
    Post,
    /// Connecting or waiting for the peer's ready ACK: keep slices queued,
    /// consuming no retry.
    Wait,
    /// Never connected: this caller must start the active handshake.
    Connect,
    /// Retired, failed, or the ready ACK timed out: slices consume a retry.
    Fail,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EpState {
    Unconnected,
    Connecting,
    /// Our QPs are in RTS; the peer has not confirmed its own (ready ACK).
    /// `since` is set on the passive side only (active never times out).
    WaitReadyAck {
        since: Option<Instant>,
    },
    Connected,
    /// Retired: QPs in ERR, destroyed once the last WR completed.
    Retired,
}

impl EpState {
    pub fn label(&self) -> &'static str {
        match self {
            EpState::Unconnected => "unconnected",
            EpState::Connecting => "connecting",
            EpState::WaitReadyAck { .. } => "wait_ready_ack",
            EpState::Connected => "connected",
            EpState::Retired => "retired",
        }
    }

    fn connected(&self) -> bool {
        matches!(self, EpState::WaitReadyAck { .. } | EpState::Connected)
    }
}

/// Handshake behaviour of this transport.
#[derive(Clone, Copy, Debug)]
pub struct HandshakeMode {
    /// Omit `ready_ack` (legacy peer behaviour; `MC_TE_RS_LEGACY_HANDSHAKE`).
    pub legacy: bool,
    /// `MC_READY_ACK_TIMEOUT_MS`.
    pub ack_timeout: Duration,
    /// Test hook: do not send the ready ACK but act as if it was sent.
    pub drop_ack: bool,
    /// Test hook: sleep before sending the ready ACK.
    pub ack_delay: Duration,
}

struct Inner {
    state: EpState,
    peer_qpns: Vec<u32>,
}

pub struct Endpoint {
    pub local_path: String,
    pub peer_path: String,
    qps: Vec<Box<dyn QueuePair>>,
    /// WRs posted and not yet completed, per QP.
    outstanding: Vec<AtomicU32>,
    max_wr: u32,
    gid: String,
    lid: u16,
    inner: Mutex<Inner>,
    /// Serializes QP transitions (active and passive setup may overlap).
    setup: Mutex<()>,
}

/// The passive handler's verdict.
pub enum PassiveOutcome {
    Reply(HandShakeDesc),
    /// The endpoint was connected to an older QP generation of the peer
    /// and is now retired: retry once on a fresh endpoint.
    RetryFresh,
}

impl Endpoint {
    pub fn new(
        local_path: String,
        peer_path: String,
        qps: Vec<Box<dyn QueuePair>>,
        max_wr: u32,
        gid: String,
        lid: u16,
    ) -> Endpoint {
        let outstanding = qps.iter().map(|_| AtomicU32::new(0)).collect();
        Endpoint {
            local_path,
            peer_path,
            qps,
            outstanding,
            max_wr,
            gid,
            lid,
            inner: Mutex::new(Inner {
                state: EpState::Unconnected,
                peer_qpns: Vec::new(),
            }),
            setup: Mutex::new(()),
        }
    }

    pub fn state(&self) -> EpState {
        self.inner.lock().state
    }

    pub fn qp_nums(&self) -> Vec<u32> {
        self.qps.iter().map(|q| q.qp_num()).collect()
    }

    pub fn is_loopback(&self) -> bool {
        self.local_path == self.peer_path
    }

    /// Decide for queued slices; `Connect` is returned to exactly one caller
    /// (the state moves to Connecting atomically).
    pub fn gate(&self, ack_timeout: Duration) -> Gate {
        let mut g = self.inner.lock();
        match g.state {
            EpState::Connected => Gate::Post,
            EpState::Connecting => Gate::Wait,
            EpState::WaitReadyAck { since: Some(t) } if t.elapsed() >= ack_timeout => {
                log::warn!(
                    "endpoint {} -> {}: no ready ACK within {:?}, retiring it",
                    self.local_path,
                    self.peer_path,
                    ack_timeout
                );
                self.retire_locked(&mut g);
                Gate::Fail
            }
            EpState::WaitReadyAck { .. } => Gate::Wait,
            EpState::Unconnected => {
                g.state = EpState::Connecting;
                Gate::Connect
            }
            EpState::Retired => Gate::Fail,
        }
    }

    /// Retire: QPs to ERR so outstanding WRs flush; QPs are destroyed when
    /// the last `Arc<Endpoint>` (held by in-flight WRs) goes away.
    pub fn retire(&self) {
        let mut g = self.inner.lock();
        self.retire_locked(&mut g);
    }

    fn retire_locked(&self, g: &mut Inner) {
        if g.state == EpState::Retired {
            return;
        }
        g.state = EpState::Retired;
        for q in &self.qps {
            q.set_error();
        }
    }

    fn desc(&self, mode: HandshakeMode, ready_ack: bool) -> HandShakeDesc {
        HandShakeDesc {
            local_gid: self.gid.clone(),
            local_lid: self.lid,
            local_nic_path: self.local_path.clone(),
            peer_nic_path: self.peer_path.clone(),
            qp_num: self.qp_nums(),
            ready_ack: if mode.legacy { None } else { Some(ready_ack) },
            ..Default::default()
        }
    }

    fn connect_qps(&self, peer_qpns: &[u32], gid: [u8; 16], lid: u16) -> Result<()> {
        let _s = self.setup.lock();
        for (q, &peer) in self.qps.iter().zip(peer_qpns) {
            q.connect(peer, gid, lid).map_err(|e| {
                Error::Endpoint(format!(
                    "{} -> {}: QP {} to peer QP {peer}: {e}",
                    self.local_path,
                    self.peer_path,
                    q.qp_num()
                ))
            })?;
        }
        Ok(())
    }

    /// Loopback: each QP connects to itself, no RPC.
    pub fn connect_loopback(&self, gid: [u8; 16], lid: u16) -> Result<()> {
        let own = self.qp_nums();
        let r = self.connect_qps(&own, gid, lid);
        let mut g = self.inner.lock();
        match r {
            Ok(()) if g.state == EpState::Connecting => {
                g.peer_qpns = own;
                g.state = EpState::Connected;
                Ok(())
            }
            Ok(()) => Err(Error::Endpoint(
                "endpoint retired during loopback setup".into(),
            )),
            Err(e) => {
                self.retire_locked(&mut g);
                Err(e)
            }
        }
    }

    /// Active setup (§5.3), run on a handshake thread after `gate` said
    /// `Connect`. On failure the endpoint is retired.
    pub fn connect_active(&self, meta: &Metadata, mode: HandshakeMode) -> Result<()> {
        let r = self.connect_active_inner(meta, mode);
        if let Err(e) = &r {
            log::warn!(
                "handshake {} -> {} failed: {e}",
                self.local_path,
                self.peer_path
            );
            self.retire();
        }
        r
    }

    fn connect_active_inner(&self, meta: &Metadata, mode: HandshakeMode) -> Result<()> {
        let (server, _) = name::split_nic_path(&self.peer_path)
            .ok_or_else(|| Error::InvalidArgument(format!("bad NIC path {}", self.peer_path)))?;
        let req = self.desc(mode, false);
        let reply = meta.send_handshake(server, &req)?;
        if !reply.reply_msg.is_empty() {
            return Err(Error::RejectHandshake(reply.reply_msg));
        }
        if reply.local_nic_path != self.peer_path || reply.peer_nic_path != self.local_path {
            return Err(Error::RejectHandshake(format!(
                "peer NIC path mismatch: expected {} + {}, got {} + {}",
                self.peer_path, self.local_path, reply.local_nic_path, reply.peer_nic_path
            )));
        }
        if reply.qp_num.len() != self.qps.len() {
            return Err(Error::RejectHandshake(format!(
                "peer has {} QPs per endpoint, we have {} (MC_NUM_QP_PER_EP must match)",
                reply.qp_num.len(),
                self.qps.len()
            )));
        }
        let gid = parse_gid(&reply.local_gid).ok_or_else(|| {
            Error::RejectHandshake(format!("invalid peer GID '{}'", reply.local_gid))
        })?;
        let wants_ack = reply.supports_ready_ack() && !mode.legacy;
        {
            let g = self.inner.lock();
            match g.state {
                EpState::Retired => return Err(Error::Endpoint("retired during handshake".into())),
                // Simultaneous open: the peer's own handshake configured us.
                s if s.connected() && g.peer_qpns != reply.qp_num => {
                    return Err(Error::Endpoint(
                        "simultaneous open with different peer QPs".into(),
                    ))
                }
                _ => {}
            }
        }
        let already = self.inner.lock().state.connected();
        if !already {
            self.connect_qps(&reply.qp_num, gid, reply.local_lid)?;
        }
        {
            let mut g = self.inner.lock();
            if g.state == EpState::Retired {
                return Err(Error::Endpoint("retired during QP setup".into()));
            }
            g.peer_qpns = reply.qp_num.clone();
            g.state = if wants_ack {
                EpState::WaitReadyAck { since: None }
            } else {
                EpState::Connected
            };
        }
        if wants_ack {
            if !mode.ack_delay.is_zero() {
                std::thread::sleep(mode.ack_delay);
            }
            if !mode.drop_ack {
                let ack = meta.send_handshake(server, &self.desc(mode, true))?;
                if !ack.reply_msg.is_empty() {
                    return Err(Error::RejectHandshake(ack.reply_msg));
                }
            }
            let mut g = self.inner.lock();
            if !g.state.connected() {
                return Err(Error::Endpoint(
                    "reset while the ready ACK was in flight".into(),
                ));
            }
            g.state = EpState::Connected;
        }
        Ok(())
    }

    /// Passive setup (§5.4) for a request addressed to this endpoint.
    pub fn on_request(&self, req: &HandShakeDesc, mode: HandshakeMode) -> PassiveOutcome {
        if req.is_ready_ack() {
            let mut g = self.inner.lock();
            if !g.state.connected() {
                return PassiveOutcome::Reply(HandShakeDesc::rejected(
                    "Received RDMA ready ACK for unconnected endpoint",
                ));
            }
            if g.peer_qpns != req.qp_num {
                return PassiveOutcome::Reply(HandShakeDesc::rejected(
                    "Received stale RDMA ready ACK with mismatched peer QP numbers",
                ));
            }
            g.state = EpState::Connected;
            return PassiveOutcome::Reply(HandShakeDesc::default());
        }
        let peer_acks = req.supports_ready_ack() && !mode.legacy;
        {
            let mut g = self.inner.lock();
            if g.state.connected() {
                if g.peer_qpns == req.qp_num {
                    if !peer_acks {
                        g.state = EpState::Connected;
                    }
                    return PassiveOutcome::Reply(self.desc(mode, false));
                }
                self.retire_locked(&mut g);
                return PassiveOutcome::RetryFresh;
            }
            if g.state == EpState::Retired {
                return PassiveOutcome::RetryFresh;
            }
            if req.peer_nic_path != self.local_path || req.local_nic_path != self.peer_path {
                return PassiveOutcome::Reply(HandShakeDesc::rejected(format!(
                    "Invalid argument: peer nic path inconsistency, expect {} + {}, while got {} + {}",
                    self.local_path, self.peer_path, req.peer_nic_path, req.local_nic_path
                )));
            }
            if req.qp_num.len() != self.qps.len() {
                return PassiveOutcome::Reply(HandShakeDesc::rejected(
                    "QP count mismatch in peer and local endpoints, check MC_MAX_EP_PER_CTX",
                ));
            }
            g.state = EpState::Connecting;
        }
        let gid = match parse_gid(&req.local_gid) {
            Some(g) => g,
            None => {
                self.inner.lock().state = EpState::Unconnected;
                return PassiveOutcome::Reply(HandShakeDesc::rejected(format!(
                    "Invalid peer GID: {}",
                    req.local_gid
                )));
            }
        };
        if let Err(e) = self.connect_qps(&req.qp_num, gid, req.local_lid) {
            self.retire();
            return PassiveOutcome::Reply(HandShakeDesc::rejected(format!(
                "Failed to modify QP: {e}"
            )));
        }
        let mut g = self.inner.lock();
        if g.state == EpState::Retired {
            return PassiveOutcome::RetryFresh;
        }
        g.peer_qpns = req.qp_num.clone();
        g.state = if peer_acks {
            EpState::WaitReadyAck {
                since: Some(Instant::now()),
            }
        } else {
            EpState::Connected
        };
        PassiveOutcome::Reply(self.desc(mode, false))
    }

    /// Free WR slots on QP `i`.
    pub fn free_slots(&self, i: usize) -> u32 {
        self.max_wr
            .saturating_sub(self.outstanding[i].load(Ordering::Acquire))
    }

    pub fn num_qps(&self) -> usize {
        self.qps.len()
    }

    /// Post a chain on QP `i`; returns how many WRs were accepted.
    pub fn post(&self, i: usize, wrs: &[WorkRequest]) -> Result<usize> {
        self.outstanding[i].fetch_add(wrs.len() as u32, Ordering::AcqRel);
        let r = self.qps[i].post(wrs);
        let accepted = *r.as_ref().unwrap_or(&0);
        let rejected = wrs.len() - accepted.min(wrs.len());
        if rejected > 0 {
            self.outstanding[i].fetch_sub(rejected as u32, Ordering::AcqRel);
        }
        r
    }

    /// A WR posted on QP `i` completed.
    pub fn completed(&self, i: usize) {
        self.outstanding[i].fetch_sub(1, Ordering::AcqRel);
    }

    pub fn outstanding(&self) -> u32 {
        self.outstanding
            .iter()
            .map(|o| o.load(Ordering::Acquire))
            .sum()
    }
}
