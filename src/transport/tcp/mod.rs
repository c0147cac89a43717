//! TCP transport, wire-compatible with Mooncake's v1/v2 (spec §7).
//! PLACEHOLDER until the TCP transport work lands.

use std::sync::Arc;

use crate::error::{Error, Result};
use crate::metadata::descriptor::SegmentDesc;
use crate::transport::{LocalBuffer, Submission, Transport, TransportContext};

pub struct TcpTransport {
    _ctx: TransportContext,
}

impl TcpTransport {
    pub fn install(ctx: TransportContext) -> Result<Arc<TcpTransport>> {
        let _ = ctx;
        Err(Error::NotImplemented("tcp transport".into()))
    }
}

impl Transport for TcpTransport {
    fn protocol(&self) -> &'static str {
        "tcp"
    }
    fn register_memory(&self, _buf: &LocalBuffer) -> Result<()> {
        Ok(())
    }
    fn unregister_memory(&self, _addr: u64) -> Result<()> {
        Ok(())
    }
    fn describe(&self, desc: &mut SegmentDesc, _buffers: &[LocalBuffer]) {
        desc.protocol = "tcp".into();
    }
    fn submit(&self, _subs: Vec<Submission>) -> Result<()> {
        Err(Error::NotImplemented("tcp transport".into()))
    }
    fn shutdown(&self) {}
}
