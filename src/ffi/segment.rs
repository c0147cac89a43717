//! Segments: open (name -> id), close, remove from the cache, resync.

use std::ffi::{c_char, c_int};

use super::{engine_of, err_code, ffi_fn, str_arg};
use super::{segment_id_t, transfer_engine_t};

/// # Safety
/// `segment_name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn openSegment(
    engine: transfer_engine_t,
    segment_name: *const c_char,
) -> segment_id_t {
    const F: &str = "openSegment";
    ffi_fn!("openSegment", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(name) = (unsafe { str_arg(segment_name, F, "segment_name") }) else {
            return -1;
        };
        match e.open_segment(&name) {
            Ok(id) => id,
            Err(err) => {
                log::error!("{F}: '{name}': {err}");
                -1
            }
        }
    })
}

/// # Safety
/// `segment_name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn openSegmentNoCache(
    engine: transfer_engine_t,
    segment_name: *const c_char,
) -> segment_id_t {
    const F: &str = "openSegmentNoCache";
    ffi_fn!("openSegmentNoCache", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(name) = (unsafe { str_arg(segment_name, F, "segment_name") }) else {
            return -1;
        };
        match e.open_segment_no_cache(&name) {
            Ok(id) => id,
            Err(err) => {
                log::error!("{F}: '{name}': {err}");
                -1
            }
        }
    })
}

#[no_mangle]
pub extern "C" fn closeSegment(engine: transfer_engine_t, segment_id: segment_id_t) -> c_int {
    const F: &str = "closeSegment";
    ffi_fn!("closeSegment", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        match e.close_segment(segment_id) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

/// EFA is not part of te-rs; like a non-EFA Mooncake build this is a no-op
/// that returns 0 without looking at its arguments.
#[no_mangle]
pub extern "C" fn warmupEfaSegment(
    engine: transfer_engine_t,
    segment_name: *const c_char,
) -> c_int {
    let _ = (engine, segment_name);
    0
}

/// # Safety
/// `segment_name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn removeLocalSegment(
    engine: transfer_engine_t,
    segment_name: *const c_char,
) -> c_int {
    const F: &str = "removeLocalSegment";
    ffi_fn!("removeLocalSegment", crate::error::err::INVALID_ARGUMENT, {
        let Some(e) = engine_of(engine, F) else {
            return crate::error::err::INVALID_ARGUMENT;
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(name) = (unsafe { str_arg(segment_name, F, "segment_name") }) else {
            return crate::error::err::INVALID_ARGUMENT;
        };
        match e.remove_local_segment(&name) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

#[no_mangle]
pub extern "C" fn syncSegmentCache(engine: transfer_engine_t) -> c_int {
    const F: &str = "syncSegmentCache";
    ffi_fn!("syncSegmentCache", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        e.sync_segment_cache();
        0
    })
}
