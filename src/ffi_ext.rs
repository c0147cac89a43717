//! te-rs's extension to the C API (`include/transfer_engine_ext.h`):
//! cancel, deadlines, a free that always succeeds, and a blocking wait.
//! A second thin front end beside `ffi/` (same helpers, same panic
//! boundary); kept out of `ffi/` so the upstream header's drift check
//! sees upstream's functions only. The shipped header is cbindgen's
//! rendering of this file (`cbindgen_ext.toml`), checked by
//! `tests/header_ext.rs`.
//!
//! Return values: 0 on success, `TE_EXT_TIMED_OUT` when a wait ended before
//! the tasks did, or a negative `ERR_*` (`ERR_INVALID_ARGUMENT` for a bad
//! handle, batch id or task id; the reason is logged).
#![allow(non_camel_case_types, non_snake_case)]

use std::ffi::c_int;
use std::time::Duration;

use crate::ffi::batch::decode_requests;
use crate::ffi::ErrCode;
use crate::ffi::{batch_id_t, engine_of, ensure, ffi_fn, transfer_engine_t, transfer_request_t};

/// Returned by `teWaitBatch`, `teCancelBatch` and `teCancelTransfer` when
/// `timeout_ms` passed before every task concerned ended.
pub const TE_EXT_TIMED_OUT: c_int = 1;

/// A `timeout_ms` that never ends.
pub const TE_EXT_FOREVER: u64 = u64::MAX;

fn waited(done: bool) -> c_int {
    if done {
        0
    } else {
        TE_EXT_TIMED_OUT
    }
}

fn millis(ms: u64) -> Duration {
    Duration::from_millis(ms)
}

/// Cancel every task of `batch_id` submitted so far and wait up to
/// `timeout_ms` for them to end. Slices not yet sent never go out; TCP
/// requests under way are abandoned (their connection is closed); RDMA
/// work requests already posted are waited for (a posted WR cannot be
/// recalled). Each task then reads `STATUS_CANCELED` in `getTransferStatus`,
/// or `STATUS_COMPLETED` / `STATUS_FAILED` if it ended first. Once this
/// returns 0, te-rs touches none of the batch's buffers again.
/// Returns 0, `TE_EXT_TIMED_OUT` (cancelled, still ending; wait again), or
/// a negative `ERR_*`.
#[no_mangle]
pub extern "C" fn teCancelBatch(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    timeout_ms: u64,
) -> c_int {
    ffi_fn!(f = "teCancelBatch", ErrCode, {
        let e = engine_of(engine, f)?;
        Ok(waited(e.cancel(batch_id, None, millis(timeout_ms))?))
    })
}

/// As `teCancelBatch`, for the one task `task_id` of `batch_id`.
#[no_mangle]
pub extern "C" fn teCancelTransfer(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    task_id: usize,
    timeout_ms: u64,
) -> c_int {
    ffi_fn!(f = "teCancelTransfer", ErrCode, {
        let e = engine_of(engine, f)?;
        Ok(waited(e.cancel(
            batch_id,
            Some(task_id),
            millis(timeout_ms),
        )?))
    })
}

/// `submitTransfer` whose tasks time out `deadline_ms` from now: a task
/// not ended by then is stopped as by a cancel and reads `STATUS_TIMEOUT`
/// once it ended. Deadlines are enforced by `teWaitBatch`, by
/// `getTransferStatus` and by the transports before sending. Returns 0 or
/// a negative `ERR_*`.
///
/// # Safety
/// `entries` is NULL or points to `count` requests.
#[no_mangle]
pub unsafe extern "C" fn teSubmitTransferWithDeadline(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    entries: *mut transfer_request_t,
    count: usize,
    deadline_ms: u64,
) -> c_int {
    ffi_fn!(f = "teSubmitTransferWithDeadline", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: forwarded caller contract.
        let requests = unsafe { decode_requests(entries, count, f) }?;
        e.submit_transfer_within(batch_id, &requests, millis(deadline_ms))?;
        Ok(0)
    })
}

/// Every task of `batch_id`, submitted so far or later, times out
/// `deadline_ms` from now (a later call replaces the deadline). Returns 0
/// or a negative `ERR_*`.
#[no_mangle]
pub extern "C" fn teSetBatchDeadline(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    deadline_ms: u64,
) -> c_int {
    ffi_fn!(f = "teSetBatchDeadline", ErrCode, {
        engine_of(engine, f)?.set_batch_deadline(batch_id, millis(deadline_ms))?;
        Ok(0)
    })
}

/// Free `batch_id` whatever its tasks' state: the id is invalid at once
/// (never a "busy" refusal), unfinished tasks are cancelled, and their
/// memory is released when the last piece in flight ends. Buffers of
/// unfinished tasks may still be in use until then: call `teCancelBatch`
/// first when they must be free on return. Returns 0, or
/// `ERR_INVALID_ARGUMENT` for an unknown id.
#[no_mangle]
pub extern "C" fn teReleaseBatchID(engine: transfer_engine_t, batch_id: batch_id_t) -> c_int {
    ffi_fn!(f = "teReleaseBatchID", ErrCode, {
        engine_of(engine, f)?.release_batch_id(batch_id)?;
        Ok(0)
    })
}

/// Block until every task of `batch_id` ended (COMPLETED, FAILED,
/// CANCELED or TIMEOUT) or `timeout_ms` passed (`TE_EXT_FOREVER`: no
/// limit). The thread sleeps meanwhile; a task's end wakes it. Returns 0,
/// `TE_EXT_TIMED_OUT`, or a negative `ERR_*`.
#[no_mangle]
pub extern "C" fn teWaitBatch(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    timeout_ms: u64,
) -> c_int {
    ffi_fn!(f = "teWaitBatch", ErrCode, {
        let e = engine_of(engine, f)?;
        Ok(waited(e.wait_batch(batch_id, millis(timeout_ms))?))
    })
}

/// Batch bookkeeping, for leak checks: `*batch_ids` gets the ids allocated
/// and not freed, `*batches_alive` those plus the released ones whose
/// pieces are still in flight. Either pointer may be NULL. Returns 0 or a
/// negative `ERR_*`.
///
/// # Safety
/// Each pointer is NULL or valid for one `size_t` write.
#[no_mangle]
pub unsafe extern "C" fn teBatchCounts(
    engine: transfer_engine_t,
    batch_ids: *mut usize,
    batches_alive: *mut usize,
) -> c_int {
    ffi_fn!(f = "teBatchCounts", ErrCode, {
        let (ids, alive) = engine_of(engine, f)?.batch_counts();
        ensure!(
            f,
            !batch_ids.is_null() || !batches_alive.is_null(),
            "both output pointers are NULL"
        );
        if !batch_ids.is_null() {
            // SAFETY: non-NULL and writable per the caller contract.
            unsafe { batch_ids.write(ids) };
        }
        if !batches_alive.is_null() {
            // SAFETY: as above.
            unsafe { batches_alive.write(alive) };
        }
        Ok(0)
    })
}
