//! Segments: open (name -> id), close, remove from the cache, resync.

use std::ffi::{c_char, c_int};

use super::{engine_of, ffi_fn, str_arg, About, ErrCode, SegmentHandle};
use super::{segment_id_t, transfer_engine_t};

/// # Safety
/// `segment_name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn openSegment(
    engine: transfer_engine_t,
    segment_name: *const c_char,
) -> segment_id_t {
    ffi_fn!(f = "openSegment", SegmentHandle, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let name = unsafe { str_arg(segment_name, f, "segment_name") }?;
        e.open_segment(&name).about(&name)
    })
}

/// # Safety
/// `segment_name` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn openSegmentNoCache(
    engine: transfer_engine_t,
    segment_name: *const c_char,
) -> segment_id_t {
    ffi_fn!(f = "openSegmentNoCache", SegmentHandle, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let name = unsafe { str_arg(segment_name, f, "segment_name") }?;
        e.open_segment_no_cache(&name).about(&name)
    })
}

#[no_mangle]
pub extern "C" fn closeSegment(engine: transfer_engine_t, segment_id: segment_id_t) -> c_int {
    ffi_fn!(f = "closeSegment", ErrCode, {
        engine_of(engine, f)?.close_segment(segment_id)?;
        Ok(0)
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
    ffi_fn!(f = "removeLocalSegment", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let name = unsafe { str_arg(segment_name, f, "segment_name") }?;
        e.remove_local_segment(&name)?;
        Ok(0)
    })
}

#[no_mangle]
pub extern "C" fn syncSegmentCache(engine: transfer_engine_t) -> c_int {
    ffi_fn!(f = "syncSegmentCache", ErrCode, {
        engine_of(engine, f)?.sync_segment_cache();
        Ok(0)
    })
}
