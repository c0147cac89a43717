//! RDMA endpoint connection logic as a pure state machine (spec §5), in the
//! style of quinn-proto's `Connection`: events in, [`Action`]s out. No
//! sockets, verbs, threads or clock reads: time comes in as `Instant`.
//!
//! Driving it (the transport holds one lock per endpoint around each call
//! and runs `ConfigureQps` under that lock, as upstream does):
//! * Create with [`Endpoint::with_qps`] (or [`Endpoint::new`] +
//!   [`Endpoint::on_qps_rebuilt`]).
//! * Worker with queued slices: [`Endpoint::handle_timeout`], then
//!   [`Endpoint::gate`]; when it waits, it sleeps until
//!   [`Endpoint::poll_timeout`] (the next deadline) or an event wakes it.
//!   `Post` → post; `Wait` → keep queued, no retry used;
//!   `Fail` → fail the slices (one retry each); `Connect` → check the peer's
//!   [`HandshakeBackoff`], then [`Endpoint::start_active`].
//! * Active: `SendHandshake` → RPC (unlocked) → [`Endpoint::on_handshake_reply`]
//!   → `ConfigureQps` → [`Endpoint::on_qps_configured`] → `SendReadyAck` (peer
//!   speaks ready-ACK) → RPC → [`Endpoint::on_ready_ack_sent`] →
//!   `ActiveDone(result)`. Every active attempt ends with one `ActiveDone`.
//! * Passive: [`Endpoint::on_handshake_request`] → `Reply` at once, or
//!   `ConfigureQps` → [`Endpoint::on_qps_configured`] → `Reply`;
//!   `RetryOnFreshEndpoint` → drop this endpoint, handle the request once
//!   more on a fresh one.
//! * `RebuildQps` → recreate QPs → [`Endpoint::on_qps_rebuilt`]; `Retire` →
//!   QPs to ERR, remove from the store, later [`Endpoint::finish_destroy`].
//!
//! Every I/O action carries the endpoint's generation and its result must be
//! reported with it. Resets bump the generation, so a result that belongs to
//! QPs that were reset or retired is never applied (the race the review of
//! Mooncake PR #2625 found, and the residual one fixed by PR #3584).

mod action;
mod backoff;
mod config;
mod machine;
mod state;

#[cfg(test)]
mod model_tests;
#[cfg(test)]
mod tests;

pub use action::{Action, Gate, PeerQps, Role, StartActive};
pub use backoff::{BackoffConfig, BackoffDecision, HandshakeBackoff};
pub use config::{EndpointConfig, DEFAULT_READY_ACK_TIMEOUT};
pub use machine::{Endpoint, GENERATION_STRIDE, MSG_ACK_STALE, MSG_ACK_UNCONNECTED, MSG_QP_COUNT};
pub use state::EndpointState;
