//! Handshake RPC (spec §4): framing, an event-driven server and a client.

pub mod client;
pub mod desc;
pub mod frame;
pub mod server;
pub mod server_conn;

pub use desc::HandShakeDesc;
pub use frame::MsgType;
pub use server::{HandshakeHandler, HandshakeServer, HandshakeServerConfig};
