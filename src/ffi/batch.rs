//! Batches: allocate, submit, poll, free. These return POSITIVE status
//! codes (spec §1.3), unlike the rest of the API.

use std::ffi::c_int;

use super::INVALID_BATCH;
use super::{batch_id_t, notify_msg_t, transfer_engine_t, transfer_request, transfer_status};
use super::{engine_of, ffi_fn, ptr_addr, status_code, str_arg};
use crate::error::status::{INVALID_ARGUMENT, OK};
use crate::task::{Opcode, TransferRequest};

#[no_mangle]
pub extern "C" fn allocateBatchID(engine: transfer_engine_t, batch_size: usize) -> batch_id_t {
    const F: &str = "allocateBatchID";
    ffi_fn!("allocateBatchID", INVALID_BATCH, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_BATCH;
        };
        e.allocate_batch_id(batch_size)
    })
}

/// Decode the C request array; on bad input log and return the status code.
///
/// # Safety
/// `entries` is NULL or points to `count` requests.
unsafe fn decode_requests(
    entries: *const transfer_request,
    count: usize,
    func: &str,
) -> Result<Vec<TransferRequest>, c_int> {
    if count == 0 {
        return Ok(Vec::new());
    }
    if entries.is_null() {
        log::error!("{func}: NULL entries with count {count}");
        return Err(INVALID_ARGUMENT);
    }
    // SAFETY: non-NULL and the caller says it holds `count` requests.
    let raw = unsafe { std::slice::from_raw_parts(entries, count) };
    raw.iter()
        .enumerate()
        .map(|(i, r)| {
            if r.target_id < 0 {
                log::error!("{func}: entry {i}: negative target_id {}", r.target_id);
                return Err(INVALID_ARGUMENT);
            }
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
    const F: &str = "submitTransfer";
    ffi_fn!("submitTransfer", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        // SAFETY: forwarded caller contract.
        let requests = match unsafe { decode_requests(entries, count, F) } {
            Ok(r) => r,
            Err(code) => return code,
        };
        match e.submit_transfer(batch_id, &requests, None) {
            Ok(()) => OK,
            Err(err) => status_code(F, &err),
        }
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
    const F: &str = "submitTransferWithNotify";
    ffi_fn!("submitTransferWithNotify", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        if count == 0 {
            log::error!("{F}: count is 0 (the notify goes to entries[0].target_id)");
            return INVALID_ARGUMENT;
        }
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(name) = (unsafe { str_arg(notify_msg.name, F, "notify_msg.name") }) else {
            return INVALID_ARGUMENT;
        };
        // SAFETY: as above.
        let Some(msg) = (unsafe { str_arg(notify_msg.msg, F, "notify_msg.msg") }) else {
            return INVALID_ARGUMENT;
        };
        // SAFETY: forwarded caller contract.
        let requests = match unsafe { decode_requests(entries, count, F) } {
            Ok(r) => r,
            Err(code) => return code,
        };
        match e.submit_transfer(batch_id, &requests, Some((name, msg))) {
            Ok(()) => OK,
            Err(err) => status_code(F, &err),
        }
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
    const F: &str = "getTransferStatus";
    ffi_fn!("getTransferStatus", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        if status.is_null() {
            log::error!("{F}: NULL status pointer");
            return INVALID_ARGUMENT;
        }
        match e.transfer_status(batch_id, task_id) {
            Ok(s) => {
                let out = transfer_status {
                    // TaskStatus is repr(i32) with values 0..6 only.
                    status: s.status as c_int,
                    transferred_bytes: s.transferred_bytes,
                };
                // SAFETY: non-NULL and writable per the caller contract.
                unsafe { status.write(out) };
                OK
            }
            Err(err) => status_code(F, &err),
        }
    })
}

#[no_mangle]
pub extern "C" fn freeBatchID(engine: transfer_engine_t, batch_id: batch_id_t) -> c_int {
    const F: &str = "freeBatchID";
    ffi_fn!("freeBatchID", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        match e.free_batch_id(batch_id) {
            Ok(()) => OK,
            Err(err) => status_code(F, &err),
        }
    })
}
