//! Memory registration: single regions and batches.

use std::ffi::{c_char, c_int, c_void};

use super::{buffer_entry_t, transfer_engine_t};
use super::{engine_of, err_code, ffi_fn, ptr_addr, str_arg};
use crate::error::err::INVALID_ARGUMENT;

/// # Safety
/// `location` is NULL or NUL-terminated. `addr..addr+length` must stay
/// valid memory until it is unregistered.
#[no_mangle]
pub unsafe extern "C" fn registerLocalMemory(
    engine: transfer_engine_t,
    addr: *mut c_void,
    length: usize,
    location: *const c_char,
    remote_accessible: c_int,
) -> c_int {
    const F: &str = "registerLocalMemory";
    ffi_fn!("registerLocalMemory", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(location) = (unsafe { str_arg(location, F, "location") }) else {
            return INVALID_ARGUMENT;
        };
        if addr.is_null() {
            log::error!("{F}: NULL address");
            return INVALID_ARGUMENT;
        }
        match e.register_local_memory(
            ptr_addr(addr),
            length as u64,
            &location,
            remote_accessible != 0,
        ) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

#[no_mangle]
pub extern "C" fn unregisterLocalMemory(engine: transfer_engine_t, addr: *mut c_void) -> c_int {
    const F: &str = "unregisterLocalMemory";
    ffi_fn!("unregisterLocalMemory", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        match e.unregister_local_memory(ptr_addr(addr)) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

/// # Safety
/// `buffer_list` is NULL or points to `buffer_len` entries; `location` is
/// NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn registerLocalMemoryBatch(
    engine: transfer_engine_t,
    buffer_list: *mut buffer_entry_t,
    buffer_len: usize,
    location: *const c_char,
) -> c_int {
    const F: &str = "registerLocalMemoryBatch";
    ffi_fn!("registerLocalMemoryBatch", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(location) = (unsafe { str_arg(location, F, "location") }) else {
            return INVALID_ARGUMENT;
        };
        let entries: &[buffer_entry_t] = if buffer_len == 0 {
            &[]
        } else if buffer_list.is_null() {
            log::error!("{F}: NULL buffer_list with {buffer_len} entries");
            return INVALID_ARGUMENT;
        } else {
            // SAFETY: non-NULL and the caller says it holds buffer_len entries.
            unsafe { std::slice::from_raw_parts(buffer_list, buffer_len) }
        };
        if let Some(i) = entries.iter().position(|b| b.addr.is_null()) {
            log::error!("{F}: entry {i} has a NULL address");
            return INVALID_ARGUMENT;
        }
        let regions: Vec<(u64, u64)> = entries
            .iter()
            .map(|b| (ptr_addr(b.addr), b.length as u64))
            .collect();
        match e.register_local_memory_batch(&regions, &location) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

/// # Safety
/// `addr_list` is NULL or points to `addr_len` pointers.
#[no_mangle]
pub unsafe extern "C" fn unregisterLocalMemoryBatch(
    engine: transfer_engine_t,
    addr_list: *mut *mut c_void,
    addr_len: usize,
) -> c_int {
    const F: &str = "unregisterLocalMemoryBatch";
    ffi_fn!("unregisterLocalMemoryBatch", INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return INVALID_ARGUMENT;
        };
        let addrs: Vec<u64> = if addr_len == 0 {
            Vec::new()
        } else if addr_list.is_null() {
            log::error!("{F}: NULL addr_list with {addr_len} entries");
            return INVALID_ARGUMENT;
        } else {
            // SAFETY: non-NULL and the caller says it holds addr_len pointers.
            let list = unsafe { std::slice::from_raw_parts(addr_list, addr_len) };
            list.iter().map(|&p| ptr_addr(p)).collect()
        };
        match e.unregister_local_memory_batch(&addrs) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}
