//! Batches: allocate, submit, poll, free. These return POSITIVE status
//! codes (spec §1.3), unlike the rest of the API.

use std::ffi::c_int;

use super::{batch_id_t, notify_msg_t, transfer_engine_t, transfer_request, transfer_status};
use super::{engine_of, ensure, ffi_fn, notify_text_arg, ptr_addr, slice_arg};
use super::{BatchHandle, Refusal, StatusCode};
use crate::error::status::OK;
use crate::task::{Opcode, TransferRequest};

#[no_mangle]
pub extern "C" fn allocateBatchID(engine: transfer_engine_t, batch_size: usize) -> batch_id_t {
    ffi_fn!(f = "allocateBatchID", BatchHandle, {
        Ok(engine_of(engine, f)?.allocate_batch_id(batch_size))
    })
}

/// Decode the C request array, refusing negative target ids.
///
/// # Safety
/// `entries` is NULL or points to `count` requests.
pub(crate) unsafe fn decode_requests(
    entries: *const transfer_request,
    count: usize,
    f: &str,
) -> Result<Vec<TransferRequest>, Refusal> {
    // SAFETY: forwarded caller contract.
    let raw = unsafe { slice_arg(entries, count, f, "entries") }?;
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            ensure!(
                f,
                r.target_id >= 0,
                "entry {i}: negative target_id {}",
                r.target_id
            );
            Ok(TransferRequest {
                opcode: Opcode::from_raw(r.opcode),
                source: ptr_addr(r.source),
                target_id: r.target_id,
                target_offset: r.target_offset,
                length: r.length,
            })
        })
        .collect()
}

/// # Safety
/// `entries` is NULL or points to `count` requests.
#[no_mangle]
pub unsafe extern "C" fn submitTransfer(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    entries: *mut transfer_request,
    count: usize,
) -> c_int {
    ffi_fn!(f = "submitTransfer", StatusCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: forwarded caller contract.
        let requests = unsafe { decode_requests(entries, count, f) }?;
        e.submit_transfer(batch_id, &requests, None)?;
        Ok(OK)
    })
}

/// # Safety
/// `entries` is NULL or points to `count` requests; `notify_msg.name` and
/// `notify_msg.msg` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn submitTransferWithNotify(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    entries: *mut transfer_request,
    count: usize,
    notify_msg: notify_msg_t,
) -> c_int {
    ffi_fn!(f = "submitTransferWithNotify", StatusCode, {
        let e = engine_of(engine, f)?;
        ensure!(
            f,
            count > 0,
            "count is 0 (the notify goes to entries[0].target_id)"
        );
        // SAFETY: NULL or NUL-terminated per the header contract.
        let name = unsafe { notify_text_arg(notify_msg.name, f, "notify_msg.name") }?;
        // SAFETY: as above.
        let msg = unsafe { notify_text_arg(notify_msg.msg, f, "notify_msg.msg") }?;
        // SAFETY: forwarded caller contract.
        let requests = unsafe { decode_requests(entries, count, f) }?;
        e.submit_transfer(batch_id, &requests, Some((name, msg)))?;
        Ok(OK)
    })
}

/// # Safety
/// `status` is NULL or valid for one `struct transfer_status` write.
#[no_mangle]
pub unsafe extern "C" fn getTransferStatus(
    engine: transfer_engine_t,
    batch_id: batch_id_t,
    task_id: usize,
    status: *mut transfer_status,
) -> c_int {
    ffi_fn!(f = "getTransferStatus", StatusCode, {
        let e = engine_of(engine, f)?;
        ensure!(f, !status.is_null(), "NULL status pointer");
        let s = e.transfer_status(batch_id, task_id)?;
        let out = transfer_status {
            // TaskStatus is repr(i32) with values 0..6 only.
            status: s.status as c_int,
            transferred_bytes: s.transferred_bytes,
        };
        // SAFETY: non-NULL and writable per the caller contract.
        unsafe { status.write(out) };
        Ok(OK)
    })
}

#[no_mangle]
pub extern "C" fn freeBatchID(engine: transfer_engine_t, batch_id: batch_id_t) -> c_int {
    ffi_fn!(f = "freeBatchID", StatusCode, {
        engine_of(engine, f)?.free_batch_id(batch_id)?;
        Ok(OK)
    })
}
