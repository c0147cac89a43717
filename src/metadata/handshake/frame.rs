//! Handshake frame codec: `u64 length (native endian, counts the type byte)
//! ‖ u8 type ‖ JSON`, or legacy `u64 length ‖ JSON` (spec §4.1).

use crate::error::{Error, Result};

#[repr(u8)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MsgType {
    Connection = 0,
    Metadata = 1,
    Notify = 2,
    Probe = 3,
}

/// How a frame was framed; a reply uses the request's framing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Framing {
    Typed(MsgType),
    /// No type byte; always a Connection request.
    Legacy,
}

impl Framing {
    pub fn msg_type(self) -> MsgType {
        match self {
            Framing::Typed(t) => t,
            Framing::Legacy => MsgType::Connection,
        }
    }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Frame {
    pub framing: Framing,
    pub json: Vec<u8>,
}

/// Encode one frame.
pub fn encode(framing: Framing, json: &str) -> Vec<u8> {
    let _ = (framing, json);
    Vec::new()
}

/// Decode one whole frame held in `buf`.
pub fn decode(buf: &[u8], max_len: u64) -> Result<Frame> {
    let _ = (buf, max_len);
    Err(Error::NotImplemented("handshake frame decode".into()))
}
