//! The transport's view of an RDMA device: the small object-safe traits
//! (`Device`, `QueuePair`, `MemoryRegion`) that `provider.rs` implements on
//! the verbs layer. Below the endpoint driver and the contexts.

use std::time::Duration;

use crate::error::Result;

/// One RDMA READ/WRITE with a single SGE: the verbs layer's own type, used
/// as is from the worker to the provider (no conversion on a post).
pub use super::verbs::WorkRequest;
/// The descriptor GID text format lives with the verbs types.
pub use super::verbs::{gid_from_string as parse_gid, gid_to_string};

/// Outcome class of a work completion, as the worker acts on it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CompletionStatus {
    Success,
    /// The QP went to ERR (retirement): retry without a rail penalty.
    Flushed,
    /// The path to the peer failed (transport or RNR retries exceeded, a
    /// remote operation error, ...).
    RemoteError,
    /// The peer refused this request (remote access or invalid request:
    /// a stale rkey, an address outside its registered memory): the
    /// request's fault, not the rail's.
    RequestError,
    /// Local fault (protection, length, QP op).
    LocalError,
}

impl CompletionStatus {
    /// A failure of the WR itself (not a flush).
    pub fn is_error(self) -> bool {
        matches!(
            self,
            CompletionStatus::RemoteError
                | CompletionStatus::RequestError
                | CompletionStatus::LocalError
        )
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Completion {
    pub wr_id: u64,
    pub status: CompletionStatus,
}

/// A device async event, as the transport acts on it (`events.rs`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DeviceEvent {
    PortDown,
    PortUp,
    Fatal,
    QpFatal(u32),
    /// The port's GID table changed (an address went or came).
    GidChange,
}

/// A registered memory region; dropping it deregisters.
pub trait MemoryRegion: Send + Sync {
    fn lkey(&self) -> u32;
    fn rkey(&self) -> u32;
}

/// An RC queue pair; dropping it destroys the QP.
pub trait QueuePair: Send + Sync {
    fn qp_num(&self) -> u32;
    /// RESET→INIT→RTR→RTS towards `peer_qpn` (PSNs 0).
    fn connect(&self, peer_qpn: u32, peer_gid: [u8; 16], peer_lid: u16) -> Result<()>;
    /// Move to ERR so outstanding WRs flush.
    fn set_error(&self);
    /// Post `wrs` as one chain; returns how many were accepted (a prefix).
    fn post(&self, wrs: &[WorkRequest]) -> Result<usize>;
}

/// An opened device with its PD and CQ.
pub trait Device: Send + Sync {
    fn name(&self) -> &str;
    fn gid(&self) -> [u8; 16];
    /// Read the GID table again and select as at open; true if the GID or
    /// its index changed (new endpoints then use it).
    fn refresh_gid(&self) -> bool;
    fn lid(&self) -> u16;
    /// Register `[addr, addr+len)`; `remote`: peers may read and write it.
    fn register(&self, addr: u64, len: u64, remote: bool) -> Result<Box<dyn MemoryRegion>>;
    fn create_qp(&self, max_wr: u32) -> Result<Box<dyn QueuePair>>;
    /// Append up to `max` completions to `out`; returns how many.
    fn poll(&self, out: &mut Vec<Completion>, max: usize) -> usize;
    /// Ask to be woken by the next completion; poll once more before
    /// `wait_completions` (a completion that came in between raises no
    /// wake-up).
    fn arm_completions(&self);
    /// Block up to `timeout` until completions may be available (or
    /// `interrupt_completions`).
    fn wait_completions(&self, timeout: Duration);
    /// Wake the thread in `wait_completions` (or make its next wait return).
    fn interrupt_completions(&self);
    /// The CQ failed: the device cannot be used (a plain flag, cheap).
    fn is_down(&self) -> bool;
    /// The port was ACTIVE when the device was opened.
    fn port_active(&self) -> bool;
    /// A chain of WRs that ends in a READ gets a zero-length WRITE after
    /// it, which alone is signaled: its success confirms the READs
    /// (`MC_TE_RS_CONFIRM_READS`; see `inflight`).
    fn confirms_reads(&self) -> bool {
        false
    }
    /// Block up to `timeout` for async events and append them to `out`
    /// (the context's event thread only).
    fn wait_events(&self, timeout: Duration, out: &mut Vec<DeviceEvent>);
}
