//! Handshake RPC client (placeholder; the handshake work replaces it).

use super::{HandShakeDesc, MsgType};
use crate::error::{Error, Result};

/// One request/reply exchange with `host:port`; returns the reply JSON text.
pub fn call(host: &str, port: u16, kind: MsgType, json: &str) -> Result<String> {
    let _ = (host, port, kind, json);
    Err(Error::NotImplemented("handshake client".into()))
}

/// Connection RPC. A non-empty `reply_msg` is returned as `RejectHandshake`.
pub fn connection(host: &str, port: u16, req: &HandShakeDesc) -> Result<HandShakeDesc> {
    let _ = (host, port, req);
    Err(Error::NotImplemented("handshake client".into()))
}
