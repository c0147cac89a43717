//! Handshake RPC server (placeholder; the handshake work replaces it).

use std::net::TcpListener;
use std::sync::Arc;

use super::HandShakeDesc;
use crate::error::{Error, Result};

/// What the server asks its owner for each request type.
pub trait HandshakeHandler: Send + Sync {
    /// Connection (type 0, or legacy framing).
    fn on_connection(&self, req: HandShakeDesc) -> HandShakeDesc;
    /// Metadata (type 1): the reply JSON text (our local descriptor, or `null`).
    fn on_metadata(&self, requester_json: &str) -> String;
    /// Notify (type 2).
    fn on_notify(&self, name: String, msg: String);
}

pub struct HandshakeServer {
    port: u16,
}

impl HandshakeServer {
    /// Serve `listener` on background threads until `stop`.
    pub fn start(listener: TcpListener, handler: Arc<dyn HandshakeHandler>) -> Result<Self> {
        let _ = (listener, handler);
        Err(Error::NotImplemented("handshake server".into()))
    }

    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Stop accepting, finish or drop in-flight connections, join threads. Idempotent.
    pub fn stop(&self) {}
}
