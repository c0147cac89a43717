//! Handshake RPC (spec §4): framing, a concurrent server and a client.

pub mod client;
pub mod desc;
pub mod frame;
pub mod server;

pub use desc::HandShakeDesc;
pub use frame::MsgType;
pub use server::{HandshakeHandler, HandshakeServer};
