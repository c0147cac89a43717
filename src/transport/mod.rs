//! The `Transport` trait and what every transport is handed at install.
//!
//! The engine routes each request to the transport named by the *target*
//! descriptor's `protocol` (spec §6.0). A transport cuts tasks into slices,
//! moves them on its own threads and reports back only through `Task`
//! counters.

pub mod rdma;
pub mod tcp;

use std::sync::Arc;

use crate::error::Result;
use crate::metadata::descriptor::SegmentDesc;
use crate::metadata::handshake::HandShakeDesc;
use crate::metadata::Metadata;
use crate::task::{Opcode, Task, TransferRequest};
use crate::threads::ThreadCount;

/// A region the owner registered, as the engine records it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LocalBuffer {
    pub addr: u64,
    pub length: u64,
    /// `cpu:0`, `cuda:0`, `*`, ...
    pub location: String,
    pub remote_accessible: bool,
}

/// What a transport gets from the engine when it is installed.
#[derive(Clone)]
pub struct TransportContext {
    /// The local segment name (P2P: `host:port`).
    pub local_server_name: String,
    pub metadata: Arc<Metadata>,
    /// The owner's thread count (the engine's): the transport counts its
    /// threads in a child of it.
    pub threads: ThreadCount,
}

/// One request routed to a transport, with the task it completes and the
/// target's descriptor as it was when the request was submitted. The
/// descriptor is borrowed from the submit call (one per target, not a
/// refcount round trip per request); a transport that keeps it clones it.
pub struct Submission<'a> {
    pub request: TransferRequest,
    pub task: Arc<Task>,
    pub target: &'a Arc<SegmentDesc>,
}

/// A piece of a task another transport could not move, handed to a
/// carrier (RDMA → TCP failover). Its task already counts it as a slice;
/// the carrier ends it exactly once (`slice_succeeded` / `slice_failed`).
pub struct CarriedSlice {
    pub task: Arc<Task>,
    pub opcode: Opcode,
    /// Local address.
    pub source: u64,
    /// Absolute address in the peer's memory.
    pub dest: u64,
    pub length: u64,
}

/// A transport that can move other transports' slices to a peer (TCP).
pub trait SliceCarrier: Send + Sync {
    /// The port peers reach it on (advertised as `tcp_fallback_port`).
    fn data_port(&self) -> u16;

    /// Move `slices` to segment `peer`, whose carrier listens on `port`.
    /// Never blocks on the network; failures end slices as failed.
    fn carry(&self, peer: &str, port: u16, slices: Vec<CarriedSlice>);
}

pub trait Transport: Send + Sync {
    /// `"tcp"`, `"rdma"`: the value written into `protocol` of descriptors.
    fn protocol(&self) -> &'static str;

    /// Make `buf` usable by this transport (RDMA: register MRs).
    fn register_memory(&self, buf: &LocalBuffer) -> Result<()>;

    /// Undo `register_memory` for the region starting at `addr`.
    fn unregister_memory(&self, addr: u64) -> Result<()>;

    /// Fill the protocol-specific parts of the local descriptor (protocol,
    /// ports, devices, matrix) and one `buffers[]` entry per registered region,
    /// in registration order (`buffers` is passed in that order).
    fn describe(&self, desc: &mut SegmentDesc, buffers: &[LocalBuffer]);

    /// Start moving `subs`. Never blocks on the network: failures surface as
    /// FAILED tasks. An `Err` means nothing of this call was started.
    fn submit(&self, subs: Vec<Submission<'_>>) -> Result<()>;

    /// openSegment waits for a peer's descriptor (a network round trip):
    /// start what a first transfer needs, so it overlaps the wait. Must not
    /// block.
    fn prepare_peer(&self) {}

    /// Answer a Connection (type 0) handshake. TCP answers an empty desc.
    fn on_connection(&self, _req: &HandShakeDesc) -> HandShakeDesc {
        HandShakeDesc::default()
    }

    /// Per-device load for `getNicLoadStats`: (device, inflight bytes, EWMA B/s).
    fn nic_load(&self) -> Vec<(String, u64, f64)> {
        Vec::new()
    }

    /// Human/JSON diagnostics for `showLinks`.
    fn links(&self) -> serde_json::Value {
        serde_json::Value::Null
    }

    /// Its own metrics (connections, endpoints, errors by reason, ...) in
    /// Prometheus text; the engine writes task, slice and byte counters.
    fn write_metrics(&self, _e: &mut crate::metrics::exposition::Exposition) {}

    /// This transport as a carrier of other transports' slices, if it is one.
    fn carrier(self: Arc<Self>) -> Option<Arc<dyn SliceCarrier>> {
        None
    }

    /// A carrier for the slices this transport has no path for (`None`:
    /// they fail, as without one). Transports without failover ignore it.
    fn set_fallback(&self, _carrier: Option<Arc<dyn SliceCarrier>>) {}

    /// Some tasks were told to stop (`Task::should_stop`): drop their
    /// queued slices and fence their in-flight ones now rather than at the
    /// transport's next look. Must not block on the network.
    fn abandon_stopped(&self) {}

    /// Stop threads and close sockets; called once by the engine on destroy.
    fn shutdown(&self);
}
