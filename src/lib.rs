//! te-rs: the Mooncake Transfer Engine rebuilt in Rust, shipped as
//! `libtransfer_engine` behind Mooncake's C ABI (`include/transfer_engine_c.h`).
//!
//! Layers (see ARCHITECTURE.md): `ffi` → `engine` → `metadata` + `transport`.

// Threads start only through `threads` (see clippy.toml), so each is counted.
#![cfg_attr(not(test), warn(clippy::disallowed_methods))]

pub mod batch_signal;
pub mod config;
pub mod engine;
pub mod error;
pub mod ffi;
pub mod ffi_ext;
pub mod id_map;
pub mod logging;
pub mod metadata;
pub mod metrics;
pub mod net;
pub mod serving;
pub mod settings;
pub mod task;
pub mod threads;
pub mod topology;
pub mod transport;

pub use engine::{TransferEngine, TransferStatus};
pub use error::{Error, Result};
pub use metadata::SegmentId;
pub use task::{Opcode, TaskStatus, TransferRequest};
