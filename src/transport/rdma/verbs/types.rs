//! Plain values exchanged with the verbs providers.

use std::fmt;

use crate::config::{env_i64, env_is_set};
use crate::error::Error;

/// A 16-byte GID as it travels in handshakes.
pub type Gid = [u8; 16];

/// `aa:bb:...` (16 bytes, lower-case hex), Mooncake's GID text form.
pub fn gid_to_string(gid: &Gid) -> String {
    gid.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Parse Mooncake's GID text: exactly 16 `:`-separated hex bytes.
pub fn gid_from_string(s: &str) -> Option<Gid> {
    let mut gid = [0u8; 16];
    let mut n = 0;
    for part in s.split(':') {
        if n == 16 || part.is_empty() || part.len() > 2 {
            return None;
        }
        gid[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 16).then_some(gid)
}

/// One device as a provider lists it (GID/LID/MTU of `MC_IB_PORT`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeviceInfo {
    pub name: String,
    pub port_active: bool,
    pub gid: Gid,
    pub gid_index: u8,
    pub lid: u16,
    /// Bytes (256..4096); 0 when the port could not be queried.
    pub active_mtu: u32,
    /// -1 when unknown.
    pub numa_node: i32,
}

/// How to open a device.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct OpenOptions {
    pub port: u8,
    /// `None`: automatic GID ranking.
    pub gid_index: Option<u8>,
}

impl Default for OpenOptions {
    fn default() -> Self {
        OpenOptions {
            port: 1,
            gid_index: None,
        }
    }
}

impl OpenOptions {
    /// `MC_IB_PORT` (1), `MC_GID_INDEX` or else `NCCL_IB_GID_INDEX` (auto).
    pub fn from_env() -> OpenOptions {
        let port = env_i64("MC_IB_PORT", 1, 1, 255) as u8;
        let gid_index = ["MC_GID_INDEX", "NCCL_IB_GID_INDEX"]
            .iter()
            .find(|name| env_is_set(name))
            .map(|name| env_i64(name, -1, 0, 255))
            .filter(|v| *v >= 0)
            .map(|v| v as u8);
        OpenOptions { port, gid_index }
    }
}

/// A port as the context selected it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortInfo {
    pub port: u8,
    pub active: bool,
    pub lid: u16,
    pub gid: Gid,
    pub gid_index: u8,
    /// Bytes.
    pub active_mtu: u32,
}

/// What `ibv_query_device` says the device supports (the values the
/// transport clamps its settings to). `Default` is "no limit known".
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DeviceLimits {
    pub max_qp: u32,
    pub max_qp_wr: u32,
    pub max_sge: u32,
    pub max_cq: u32,
    pub max_cqe: u32,
    pub max_mr_size: u64,
}

impl Default for DeviceLimits {
    fn default() -> Self {
        DeviceLimits {
            max_qp: u32::MAX,
            max_qp_wr: u32::MAX,
            max_sge: u32::MAX,
            max_cq: u32::MAX,
            max_cqe: u32::MAX,
            max_mr_size: u64::MAX,
        }
    }
}

/// Memory-region access rights (IBV_ACCESS_* bit values).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Access(pub u32);

impl Access {
    pub const LOCAL_WRITE: Access = Access(1);
    pub const REMOTE_WRITE: Access = Access(2);
    pub const REMOTE_READ: Access = Access(4);
    pub const REMOTE_ATOMIC: Access = Access(8);
    /// `IBV_ACCESS_RELAXED_ORDERING`: an optional bit, dropped by
    /// libibverbs where the device does not support it.
    pub const RELAXED_ORDERING: Access = Access(1 << 20);
    /// What Mooncake registers remote-accessible buffers and QPs with
    /// (never REMOTE_ATOMIC: providers without atomics reject it).
    pub const ALL: Access = Access(1 | 2 | 4);

    pub fn contains(self, other: Access) -> bool {
        self.0 & other.0 == other.0
    }
}

impl std::ops::BitOr for Access {
    type Output = Access;
    fn bitor(self, rhs: Access) -> Access {
        Access(self.0 | rhs.0)
    }
}

/// QP capacities (Mooncake: `MC_MAX_WR`, `MC_MAX_SGE`, `MC_MAX_INLINE`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct QpCaps {
    pub max_send_wr: u32,
    pub max_recv_wr: u32,
    pub max_send_sge: u32,
    pub max_recv_sge: u32,
    pub max_inline_data: u32,
}

impl Default for QpCaps {
    fn default() -> Self {
        QpCaps {
            max_send_wr: 256,
            max_recv_wr: 256,
            max_send_sge: 4,
            max_recv_sge: 4,
            max_inline_data: 64,
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum QpState {
    Reset,
    Init,
    Rtr,
    Rts,
    Err,
}

impl QpState {
    pub fn as_str(self) -> &'static str {
        match self {
            QpState::Reset => "reset",
            QpState::Init => "init",
            QpState::Rtr => "rtr",
            QpState::Rts => "rts",
            QpState::Err => "err",
        }
    }

    /// The transitions ibverbs accepts for an RC QP (the subset we use).
    pub fn can_move_to(self, to: QpState) -> bool {
        matches!(
            (self, to),
            (_, QpState::Reset)
                | (_, QpState::Err)
                | (QpState::Reset, QpState::Init)
                | (QpState::Init, QpState::Init)
                | (QpState::Init, QpState::Rtr)
                | (QpState::Rtr, QpState::Rts)
                | (QpState::Rts, QpState::Rts)
        )
    }
}

impl fmt::Display for QpState {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// RESET → INIT attributes (spec §5.2).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct InitAttrs {
    pub port: u8,
    pub pkey_index: u16,
    pub access: Access,
}

impl Default for InitAttrs {
    fn default() -> Self {
        InitAttrs {
            port: 1,
            pkey_index: 0,
            access: Access::ALL,
        }
    }
}

/// INIT → RTR attributes (spec §5.2; defaults are Mooncake's constants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtrAttrs {
    pub dest_qp_num: u32,
    pub dgid: Gid,
    pub dlid: u16,
    /// Bytes (256..4096): min(port active MTU, `MC_MTU`).
    pub path_mtu: u32,
    pub sgid_index: u8,
    pub port: u8,
    pub rq_psn: u32,
    pub max_dest_rd_atomic: u8,
    pub min_rnr_timer: u8,
    pub hop_limit: u8,
    pub traffic_class: u8,
    pub sl: u8,
}

impl Default for RtrAttrs {
    fn default() -> Self {
        RtrAttrs {
            dest_qp_num: 0,
            dgid: [0; 16],
            dlid: 0,
            path_mtu: 4096,
            sgid_index: 0,
            port: 1,
            rq_psn: 0,
            max_dest_rd_atomic: 16,
            min_rnr_timer: 12,
            hop_limit: 16,
            traffic_class: 0,
            sl: 0,
        }
    }
}

/// RTR → RTS attributes (spec §5.2 constants).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RtsAttrs {
    pub timeout: u8,
    pub retry_cnt: u8,
    pub rnr_retry: u8,
    pub sq_psn: u32,
    pub max_rd_atomic: u8,
}

impl Default for RtsAttrs {
    fn default() -> Self {
        RtsAttrs {
            timeout: 14,
            retry_cnt: 7,
            rnr_retry: 7,
            sq_psn: 0,
            max_rd_atomic: 16,
        }
    }
}

/// RDMA READ (remote → local) or WRITE (local → remote): the task's own
/// opcode, so a slice's WR needs no conversion.
pub use crate::task::Opcode;

/// One RDMA READ/WRITE with a single SGE (Mooncake never uses more).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkRequest {
    pub wr_id: u64,
    pub opcode: Opcode,
    pub local_addr: u64,
    pub length: u32,
    pub lkey: u32,
    pub remote_addr: u64,
    pub rkey: u32,
    pub signaled: bool,
}

/// Completion status (`ibv_wc_status`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum WcStatus {
    Success,
    LocalLengthError,
    LocalQpOpError,
    LocalProtectionError,
    WrFlushError,
    MwBindError,
    BadResponseError,
    LocalAccessError,
    RemoteInvalidRequestError,
    RemoteAccessError,
    RemoteOperationError,
    RetryExceeded,
    RnrRetryExceeded,
    FatalError,
    ResponseTimeoutError,
    GeneralError,
    /// Any other `ibv_wc_status` value.
    Other(u32),
}

impl WcStatus {
    pub fn from_ibv(v: u32) -> WcStatus {
        match v {
            0 => WcStatus::Success,
            1 => WcStatus::LocalLengthError,
            2 => WcStatus::LocalQpOpError,
            4 => WcStatus::LocalProtectionError,
            5 => WcStatus::WrFlushError,
            6 => WcStatus::MwBindError,
            7 => WcStatus::BadResponseError,
            8 => WcStatus::LocalAccessError,
            9 => WcStatus::RemoteInvalidRequestError,
            10 => WcStatus::RemoteAccessError,
            11 => WcStatus::RemoteOperationError,
            12 => WcStatus::RetryExceeded,
            13 => WcStatus::RnrRetryExceeded,
            19 => WcStatus::FatalError,
            20 => WcStatus::ResponseTimeoutError,
            21 => WcStatus::GeneralError,
            other => WcStatus::Other(other),
        }
    }

    /// Faults of the local side (worker_pool.cpp:1424-1449): retry on
    /// another local NIC rather than blaming the peer rail.
    pub fn is_local_fault(self) -> bool {
        matches!(
            self,
            WcStatus::LocalLengthError
                | WcStatus::LocalQpOpError
                | WcStatus::LocalProtectionError
                | WcStatus::MwBindError
                | WcStatus::LocalAccessError
        )
    }

    /// `ibv_wc_status_str`-style name for logs.
    pub fn as_str(self) -> &'static str {
        match self {
            WcStatus::Success => "success",
            WcStatus::LocalLengthError => "local length error",
            WcStatus::LocalQpOpError => "local QP operation error",
            WcStatus::LocalProtectionError => "local protection error",
            WcStatus::WrFlushError => "Work Request Flushed Error",
            WcStatus::MwBindError => "memory window bind error",
            WcStatus::BadResponseError => "bad response error",
            WcStatus::LocalAccessError => "local access error",
            WcStatus::RemoteInvalidRequestError => "remote invalid request error",
            WcStatus::RemoteAccessError => "remote access error",
            WcStatus::RemoteOperationError => "remote operation error",
            WcStatus::RetryExceeded => "transport retry counter exceeded",
            WcStatus::RnrRetryExceeded => "RNR retry counter exceeded",
            WcStatus::FatalError => "fatal error",
            WcStatus::ResponseTimeoutError => "response timeout error",
            WcStatus::GeneralError => "general error",
            WcStatus::Other(_) => "unknown",
        }
    }
}

/// One work completion.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct WorkCompletion {
    pub wr_id: u64,
    pub status: WcStatus,
    /// Only meaningful on success (hardware leaves it undefined on errors).
    pub opcode: Opcode,
    pub byte_len: u32,
    pub qp_num: u32,
    pub vendor_err: u32,
}

/// Async event types the transport reacts to (spec §6.7).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum AsyncEventKind {
    CqErr,
    QpFatal,
    QpReqErr,
    QpAccessErr,
    CommEst,
    DeviceFatal,
    PortActive,
    PortErr,
    LidChange,
    PkeyChange,
    GidChange,
    WqFatal,
    Other(u32),
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    pub kind: AsyncEventKind,
    /// Port events: the port; others 0.
    pub port: u8,
    /// QP events: the QP number.
    pub qp_num: Option<u32>,
}

/// `ibv_post_send` failed after accepting `posted` WRs (a prefix).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PostSendError {
    pub posted: usize,
    pub errno: i32,
    pub error: Error,
}

impl fmt::Display for PostSendError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} (posted {})", self.error, self.posted)
    }
}

impl std::error::Error for PostSendError {}

impl From<PostSendError> for Error {
    fn from(e: PostSendError) -> Error {
        e.error
    }
}

/// `ibv_mtu` enum value (1..=5) → bytes.
pub fn mtu_to_bytes(ibv_mtu: u32) -> u32 {
    match ibv_mtu {
        1 => 256,
        2 => 512,
        3 => 1024,
        4 => 2048,
        5 => 4096,
        _ => 0,
    }
}

/// Bytes → `ibv_mtu` enum value, `None` if not a valid IB MTU.
pub fn mtu_from_bytes(bytes: u32) -> Option<u32> {
    match bytes {
        256 => Some(1),
        512 => Some(2),
        1024 => Some(3),
        2048 => Some(4),
        4096 => Some(5),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_text_round_trip_and_rejects_bad_forms() {
        let gid: Gid = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 192, 168, 1, 7];
        let s = gid_to_string(&gid);
        assert_eq!(s, "00:00:00:00:00:00:00:00:00:00:ff:ff:c0:a8:01:07");
        assert_eq!(gid_from_string(&s), Some(gid));
        assert_eq!(gid_from_string("00:11"), None);
        assert_eq!(gid_from_string(&format!("{s}:00")), None);
        assert_eq!(gid_from_string(&s.replace("c0", "zz")), None);
        assert_eq!(gid_from_string(&s.replace("c0", "")), None);
    }

    #[test]
    fn qp_transitions_follow_ibverbs() {
        use QpState::*;
        assert!(Reset.can_move_to(Init));
        assert!(Init.can_move_to(Rtr));
        assert!(Rtr.can_move_to(Rts));
        assert!(Rts.can_move_to(Err));
        assert!(Err.can_move_to(Reset));
        assert!(!Reset.can_move_to(Rtr));
        assert!(!Reset.can_move_to(Rts));
        assert!(!Init.can_move_to(Rts));
        assert!(!Err.can_move_to(Rts));
        assert!(!Rts.can_move_to(Rtr));
    }

    #[test]
    fn mtu_conversions() {
        assert_eq!(mtu_to_bytes(5), 4096);
        assert_eq!(mtu_from_bytes(1024), Some(3));
        assert_eq!(mtu_from_bytes(1000), None);
        assert_eq!(mtu_to_bytes(9), 0);
    }
}
