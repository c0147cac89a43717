//! Memory registration: single regions and batches.

use std::ffi::{c_char, c_int, c_void};

use super::{buffer_entry_t, transfer_engine_t};
use super::{engine_of, ensure, ffi_fn, ptr_addr, refuse, slice_arg, str_arg, ErrCode};

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
    ffi_fn!(f = "registerLocalMemory", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let location = unsafe { str_arg(location, f, "location") }?;
        ensure!(f, !addr.is_null(), "NULL address");
        let (addr, len) = (ptr_addr(addr), length as u64);
        e.register_local_memory(addr, len, &location, remote_accessible != 0)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn unregisterLocalMemory(engine: transfer_engine_t, addr: *mut c_void) -> c_int {
    ffi_fn!(f = "unregisterLocalMemory", ErrCode, {
        engine_of(engine, f)?.unregister_local_memory(ptr_addr(addr))?;
        Ok(0)
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
    ffi_fn!(f = "registerLocalMemoryBatch", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let location = unsafe { str_arg(location, f, "location") }?;
        // SAFETY: NULL or `buffer_len` entries per the header contract.
        let entries = unsafe { slice_arg(buffer_list, buffer_len, f, "buffer_list") }?;
        if let Some(i) = entries.iter().position(|b| b.addr.is_null()) {
            return Err(refuse(f, format_args!("entry {i} has a NULL address")));
        }
        let regions: Vec<(u64, u64)> = entries
            .iter()
            .map(|b| (ptr_addr(b.addr), b.length as u64))
            .collect();
        e.register_local_memory_batch(&regions, &location)?;
        Ok(0)
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
    ffi_fn!(f = "unregisterLocalMemoryBatch", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or `addr_len` pointers per the header contract.
        let list = unsafe { slice_arg(addr_list, addr_len, f, "addr_list") }?;
        let addrs: Vec<u64> = list.iter().map(|&p| ptr_addr(p)).collect();
        e.unregister_local_memory_batch(&addrs)?;
        Ok(0)
    })
}
