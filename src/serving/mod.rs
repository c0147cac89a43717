//! Pieces shared by the event-driven servers (TCP data server, handshake
//! server): connection admission (total and per-source-IP caps), accepting
//! that survives `EMFILE`, and rate-limited warnings.

pub mod accept;
pub mod admission;
pub mod ratelog;

pub use accept::{accept_ready, AcceptGate};
pub use admission::{Admission, AdmissionLimits, Ticket};
pub use ratelog::RateLimited;
