//! The C ABI of `include/transfer_engine_c.h`.
//!
//! Every exported function is a few lines: check the arguments, call one
//! `TransferEngine` method, map the result to Mooncake's return family
//! (spec §1.3). [`ffi_fn!`] wraps each body in `catch_unwind`, so a panic
//! becomes the function's error value and never unwinds into C.
//!
//! Engine handles are opaque tokens looked up in a process-wide registry:
//! a NULL, destroyed or foreign handle is refused, never dereferenced.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

use crate::engine::TransferEngine;
use crate::error::Error;

pub mod batch;
pub mod diagnostics;
pub mod engine;
pub mod memory;
pub mod notify;
pub mod segment;
pub mod types;

pub use types::*;

/// Run `$body` (a block evaluating to the return value) under
/// `catch_unwind`; on panic log it and return `$on_panic`.
macro_rules! ffi_fn {
    ($func:literal, $on_panic:expr, $body:block) => {{
        $crate::logging::init();
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(|| $body)) {
            Ok(v) => v,
            Err(payload) => {
                $crate::ffi::log_panic($func, payload.as_ref());
                $on_panic
            }
        }
    }};
}
pub(crate) use ffi_fn;

pub(crate) fn log_panic(func: &str, payload: &(dyn std::any::Any + Send)) {
    let what = payload
        .downcast_ref::<&str>()
        .map(|s| s.to_string())
        .or_else(|| payload.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "non-string panic payload".to_string());
    log::error!("{func}: internal panic caught at the C boundary: {what}");
}

/// Live engines by token. The token is what C sees as `transfer_engine_t`.
static ENGINES: LazyLock<RwLock<HashMap<usize, Arc<TransferEngine>>>> =
    LazyLock::new(|| RwLock::new(HashMap::new()));

/// Tokens look like aligned pointers but point nowhere; they are never reused.
static NEXT_TOKEN: AtomicUsize = AtomicUsize::new(0x7e5e_0000_1000);

/// Register an engine and return its handle.
pub(crate) fn insert_engine(engine: Arc<TransferEngine>) -> transfer_engine_t {
    let token = NEXT_TOKEN.fetch_add(0x10, Ordering::Relaxed);
    ENGINES.write().insert(token, engine);
    token as transfer_engine_t
}

/// Remove a handle from the registry (destroyTransferEngine).
pub(crate) fn remove_engine(handle: transfer_engine_t, func: &str) -> Option<Arc<TransferEngine>> {
    if handle.is_null() {
        log::error!("{func}: NULL engine handle");
        return None;
    }
    let e = ENGINES.write().remove(&(handle as usize));
    if e.is_none() {
        log::error!("{func}: {handle:p} is not a live engine handle (destroyed or foreign)");
    }
    e
}

/// Resolve a handle to its engine, or log why not.
pub(crate) fn engine_of(handle: transfer_engine_t, func: &str) -> Option<Arc<TransferEngine>> {
    if handle.is_null() {
        log::error!("{func}: NULL engine handle");
        return None;
    }
    let e = ENGINES.read().get(&(handle as usize)).cloned();
    if e.is_none() {
        log::error!("{func}: {handle:p} is not a live engine handle (destroyed or foreign)");
    }
    e
}

/// Copy a C string argument. NULL or non-UTF-8 is refused with a log line.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for this call.
pub(crate) unsafe fn str_arg(p: *const c_char, func: &str, what: &str) -> Option<String> {
    if p.is_null() {
        log::error!("{func}: {what} is NULL");
        return None;
    }
    // SAFETY: non-NULL and NUL-terminated per the header contract.
    let s = unsafe { CStr::from_ptr(p) };
    match s.to_str() {
        Ok(s) => Some(s.to_owned()),
        Err(e) => {
            log::error!("{func}: {what} is not valid UTF-8: {e}");
            None
        }
    }
}

/// Write `s` NUL-terminated into `buf[..len]`, truncating silently.
///
/// # Safety
/// `buf` is valid for `len` bytes of writes; `len > 0`.
pub(crate) unsafe fn write_c_str(buf: *mut c_char, len: usize, s: &str) {
    let n = s.len().min(len - 1);
    // SAFETY: n + 1 <= len bytes fit in the caller's buffer; `s` does not
    // overlap it (it is our own String).
    unsafe {
        std::ptr::copy_nonoverlapping(s.as_ptr(), buf as *mut u8, n);
        *buf.add(n) = 0;
    }
}

/// Log an engine error and return its negative `ERR_*` code.
pub(crate) fn err_code(func: &str, e: &Error) -> i32 {
    log::error!("{func}: {e}");
    e.err_code()
}

/// Log an engine error and return its positive status code.
pub(crate) fn status_code(func: &str, e: &Error) -> i32 {
    log::error!("{func}: {e}");
    e.status_code()
}

/// Address of a C pointer as the engine's `u64`.
pub(crate) fn ptr_addr(p: *const c_void) -> u64 {
    p as usize as u64
}
