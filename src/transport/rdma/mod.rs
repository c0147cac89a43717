//! RDMA transport: verbs providers (ibverbs, soft fabric), contexts, memory
//! regions, ready-ACK-gated endpoints, worker pool (spec §5, §6).
//!
//! Data path: `submit` (submit.rs) cuts each request into slices
//! (slicing.rs), routes each slice to a local context and peer NIC
//! (routing.rs, selection.rs) and queues it on that context's posting thread
//! for the peer NIC path (worker.rs). The worker asks the endpoint's gate
//! (endpoint_driver.rs) whether it may post; the context's poller turns
//! completions into task counters or retries.
//!
//! Layers inside: `device.rs` is the transport's view of a provider (below
//! everything here); `endpoint_driver.rs` drives one endpoint on it;
//! `context.rs` owns a device's endpoints; `shared.rs` ties contexts, workers
//! and settings (config.rs) together for the threads.

pub mod config;
pub mod context;
pub mod device;
mod diagnostics;
pub mod endpoint;
pub mod endpoint_driver;
pub mod events;
pub mod fallback;
mod handshake;
mod idle;
mod inflight;
mod lifecycle;
pub mod limits;
pub mod liveness;
pub mod memory;
mod names;
pub mod passive_cap;
pub mod path_trust;
mod poll;
pub mod provider;
mod queues;
pub mod rail;
mod registration;
mod routing;
pub mod selection;
pub mod shared;
pub mod slicing;
pub mod stats;
mod submit;
pub mod timeouts;
pub mod verbs;
pub mod worker;

use std::sync::Arc;
use std::thread::JoinHandle;

use parking_lot::Mutex;

use crate::error::Result;
use crate::metadata::descriptor::SegmentDesc;
use crate::metadata::handshake::HandShakeDesc;
use crate::transport::{LocalBuffer, SliceCarrier, Submission, Transport};

pub use config::RdmaConfig;
pub use shared::Shared;

/// Names of usable RDMA devices from the selected provider, in order.
pub fn discover_devices() -> Vec<String> {
    provider::discover()
}

/// The RDMA transport: `install` (lifecycle.rs) starts it, the `Transport`
/// methods below hand each call to the file of its concern.
pub struct RdmaTransport {
    shared: Arc<Shared>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

impl RdmaTransport {
    /// Counters for diagnostics and tests (retries, error completions, ...).
    pub fn counters(&self) -> serde_json::Value {
        self.shared.counters_json()
    }

    /// Threads this transport has running: per context its posting, polling
    /// and event threads, plus handshake and probe threads under way.
    pub fn threads(&self) -> usize {
        self.shared.threads.running()
    }
}

impl Transport for RdmaTransport {
    fn protocol(&self) -> &'static str {
        "rdma"
    }

    fn register_memory(&self, buf: &LocalBuffer) -> Result<()> {
        self.shared.register_memory(buf)
    }

    fn unregister_memory(&self, addr: u64) -> Result<()> {
        self.shared.unregister_memory(addr)
    }

    fn describe(&self, desc: &mut SegmentDesc, buffers: &[LocalBuffer]) {
        self.shared.describe(desc, buffers)
    }

    fn submit(&self, subs: Vec<Submission<'_>>) -> Result<()> {
        self.shared.submit(subs)
    }

    fn on_connection(&self, req: &HandShakeDesc) -> HandShakeDesc {
        self.shared.on_connection(req)
    }

    fn nic_load(&self) -> Vec<(String, u64, f64)> {
        self.shared.nic_load()
    }

    fn links(&self) -> serde_json::Value {
        self.shared.links()
    }

    fn write_metrics(&self, e: &mut crate::metrics::exposition::Exposition) {
        self.shared.write_metrics(e)
    }

    fn set_fallback(&self, carrier: Option<Arc<dyn SliceCarrier>>) {
        self.shared.fallback.set_carrier(carrier);
    }

    /// Wake every posting thread: its next pass fails the queued slices of
    /// stopped tasks (posted WRs end at their completions).
    fn abandon_stopped(&self) {
        for cw in &self.shared.workers {
            cw.wake_all();
        }
    }

    fn shutdown(&self) {
        self.stop()
    }
}
