//! What an endpoint is: one local NIC path to one peer NIC path, with the
//! values it advertises and its ready-ACK timeout; the checks a peer's
//! handshake must pass against it.

use std::time::Duration;

use super::machine::MSG_QP_COUNT;
use crate::error::{Error, Result};
use crate::metadata::handshake::desc::HandShakeDesc;

/// Upstream `kReadyAckTimeoutNano`.
pub const DEFAULT_READY_ACK_TIMEOUT: Duration = Duration::from_secs(10);

/// Identity of an endpoint: one local NIC ↔ one peer NIC path.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointConfig {
    /// Our NIC path `<server_name>@<device>`.
    pub local_nic_path: String,
    /// The peer NIC path this endpoint talks to.
    pub peer_nic_path: String,
    /// Our GID string, advertised in handshakes.
    pub local_gid: String,
    /// Our port LID, advertised in handshakes.
    pub local_lid: u16,
    /// How long the passive side waits for the ready ACK
    /// (`MC_READY_ACK_TIMEOUT_MS`, read by the caller).
    pub ready_ack_timeout: Duration,
}

impl EndpointConfig {
    pub fn new(
        local_nic_path: impl Into<String>,
        peer_nic_path: impl Into<String>,
        local_gid: impl Into<String>,
        local_lid: u16,
    ) -> Self {
        EndpointConfig {
            local_nic_path: local_nic_path.into(),
            peer_nic_path: peer_nic_path.into(),
            local_gid: local_gid.into(),
            local_lid,
            ready_ack_timeout: DEFAULT_READY_ACK_TIMEOUT,
        }
    }

    pub fn with_ready_ack_timeout(mut self, timeout: Duration) -> Self {
        self.ready_ack_timeout = timeout;
        self
    }

    /// The endpoint connects a NIC to itself.
    pub fn is_loopback(&self) -> bool {
        self.local_nic_path == self.peer_nic_path
    }

    /// Active side: the reply must come from the NIC we addressed, for us,
    /// with as many QPs as we have (`local_qps`).
    pub fn check_reply(&self, local_qps: usize, reply: &HandShakeDesc) -> Result<()> {
        if reply.local_nic_path != self.peer_nic_path || reply.peer_nic_path != self.local_nic_path
        {
            return Err(Error::RejectHandshake(self.path_mismatch(reply)));
        }
        check_qp_count(local_qps, reply)
    }

    /// Passive side: the request must be addressed to us from our peer.
    pub fn check_request(&self, local_qps: usize, req: &HandShakeDesc) -> Result<()> {
        if req.peer_nic_path != self.local_nic_path || req.local_nic_path != self.peer_nic_path {
            return Err(Error::RejectHandshake(self.path_mismatch(req)));
        }
        check_qp_count(local_qps, req)
    }

    fn path_mismatch(&self, d: &HandShakeDesc) -> String {
        format!(
            "Invalid argument: peer nic path inconsistency, expect {} + {}, while got {} + {}",
            self.local_nic_path, self.peer_nic_path, d.peer_nic_path, d.local_nic_path
        )
    }
}

fn check_qp_count(local_qps: usize, d: &HandShakeDesc) -> Result<()> {
    if d.qp_num.len() != local_qps {
        return Err(Error::RejectHandshake(MSG_QP_COUNT.into()));
    }
    Ok(())
}

/// The bare text for a `reply_msg` (without our error-kind prefix).
pub(super) fn reject_text(e: &Error) -> String {
    match e {
        Error::RejectHandshake(m) => m.clone(),
        other => other.to_string(),
    }
}
