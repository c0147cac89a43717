//! RDMA transport: verbs providers (ibverbs, soft fabric), contexts, memory
//! regions, ready-ACK-gated endpoints, worker pool (spec §5, §6).
//! PLACEHOLDER until the RDMA work lands.

pub mod endpoint;
pub mod rail;

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::metadata::descriptor::{PriorityMatrix, SegmentDesc};
use crate::transport::{LocalBuffer, Submission, Transport, TransportContext};

/// Names of usable RDMA devices from the selected provider, in order.
pub fn discover_devices() -> Vec<String> {
    Vec::new()
}

pub struct RdmaTransport {
    _ctx: TransportContext,
}

impl RdmaTransport {
    pub fn install(ctx: TransportContext, matrix: PriorityMatrix) -> Result<Arc<RdmaTransport>> {
        let _ = (ctx, matrix);
        Err(Error::NotImplemented("rdma transport".into()))
    }
}

impl Transport for RdmaTransport {
    fn protocol(&self) -> &'static str {
        "rdma"
    }
    fn register_memory(&self, _buf: &LocalBuffer) -> Result<()> {
        Ok(())
    }
    fn unregister_memory(&self, _addr: u64) -> Result<()> {
        Ok(())
    }
    fn describe(&self, desc: &mut SegmentDesc, _buffers: &[LocalBuffer]) {
        desc.protocol = "rdma".into();
    }
    fn submit(&self, _subs: Vec<Submission>) -> Result<()> {
        Err(Error::NotImplemented("rdma transport".into()))
    }
    fn shutdown(&self) {}
}
