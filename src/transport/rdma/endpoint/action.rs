//! What the endpoint machine asks its driver to do.

use crate::error::Error;
use crate::metadata::handshake::desc::HandShakeDesc;

/// Which side of a handshake an operation belongs to.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// This side sent the Connection RPC.
    Active,
    /// This side is answering a Connection RPC.
    Passive,
}

/// The peer's QPs, as the handshake told us.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PeerQps {
    /// Peer QP numbers; local QP *i* connects to `qpns[i]`.
    pub qpns: Vec<u32>,
    /// Peer GID string; empty means "look it up in the peer's segment
    /// descriptor" (the driver does that, spec §5.3 step 6).
    pub gid: String,
    /// Peer port LID.
    pub lid: u16,
}

/// A decision for the driver. Every action that starts I/O names the
/// generation the result must be reported with.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Action {
    /// Send this Connection RPC to the peer's server; report with
    /// `on_handshake_reply(generation, ..)`.
    SendHandshake {
        generation: u64,
        request: HandShakeDesc,
    },
    /// Move local QP *i* RESET→INIT→RTR→RTS against `peer.qpns[i]`; report
    /// with `on_qps_configured(generation, role, ..)`. Run it while holding
    /// the endpoint's lock (as upstream does), so no other event interleaves.
    ConfigureQps {
        generation: u64,
        role: Role,
        peer: PeerQps,
    },
    /// Send the ready ACK (same QPNs, `ready_ack: true`); report with
    /// `on_ready_ack_sent(generation, ..)`.
    SendReadyAck {
        generation: u64,
        request: HandShakeDesc,
    },
    /// Answer the Connection RPC being handled with this desc.
    Reply(HandShakeDesc),
    /// Destroy and recreate the QPs (never-connected reset: fresh QPNs);
    /// report with `on_qps_rebuilt(generation, ..)`.
    RebuildQps { generation: u64 },
    /// The endpoint is retired: move its QPs to ERR (outstanding WRs flush),
    /// remove it from the store, destroy it once drained (`finish_destroy`).
    Retire,
    /// Passive side: this endpoint was retired (peer restarted) or already
    /// is; handle the same request once more on a fresh endpoint.
    RetryOnFreshEndpoint,
    /// The active connect attempt is over: `Ok` = connected (posting still
    /// follows `gate`), `Err` = fail the slices that waited for it.
    ActiveDone(Result<(), Error>),
    /// The ready-ACK wait timed out and the endpoint was reset: each queued
    /// slice consumes one retry.
    TimedOut,
}

/// What a worker with queued slices for this endpoint should do now.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Gate {
    /// `Connected`: post work requests.
    Post,
    /// Handshake or ready-ACK wait in progress: keep the slices queued, do
    /// not consume a retry.
    Wait,
    /// `Unconnected`: start an active handshake (`start_active`), subject to
    /// the per-peer re-handshake backoff.
    Connect,
    /// Retired or ready-ACK timed out: fail the slices (each consumes a retry).
    Fail,
}

/// Result of asking to connect actively.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartActive {
    /// Send this request; the endpoint is now `Connecting`.
    SendHandshake {
        generation: u64,
        request: HandShakeDesc,
    },
    /// Loopback (peer NIC path == own NIC path): no RPC, connect the QPs to
    /// themselves.
    Configure {
        generation: u64,
        role: Role,
        peer: PeerQps,
    },
    /// Connected already (possibly still waiting for the ACK; `gate` holds
    /// slices until ready).
    AlreadyConnected,
    /// Another handshake is running (or QPs are being rebuilt): wait for it
    /// (upstream: up to 10 s, then `reset`).
    WaitForHandshake,
}
