//! The C ABI of `include/transfer_engine_c.h`.
//!
//! Every exported function is a few lines: check the arguments, call one
//! `TransferEngine` method, return its value. [`ffi_fn!`] wraps each body in
//! `catch_unwind` and names the function's return family (`family.rs`),
//! which alone turns a refused argument, an engine error or a caught panic
//! into Mooncake's value for it (spec §1.3); nothing unwinds into C.
//!
//! Engine handles are opaque tokens looked up in a process-wide registry:
//! a NULL, destroyed or foreign handle is refused, never dereferenced.

use std::collections::HashMap;
use std::ffi::{c_char, c_void, CStr};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, LazyLock};

use parking_lot::RwLock;

use crate::engine::TransferEngine;

pub mod batch;
pub mod diagnostics;
pub mod engine;
mod family;
pub mod memory;
pub mod notify;
pub mod segment;
pub mod types;

pub use types::*;

pub(crate) use family::{
    refuse, refused, About, BatchHandle, ErrCode, Handle, NoValue, Outcome, Refusal, ReturnFamily,
    SegmentHandle, StatusCode,
};

/// Run `$body` under `catch_unwind` as the C function `$name`, bound to
/// `$f` for log lines. The body returns `Result<Ret, Refusal>`; the
/// function's [`ReturnFamily`] turns a refusal or a caught panic into the
/// value C sees, so nothing unwinds into C and no body states its own error
/// value.
macro_rules! ffi_fn {
    ($f:ident = $name:literal, $family:ty, $body:block) => {{
        $crate::logging::init();
        let $f: &'static str = $name;
        let run = || -> $crate::ffi::Outcome<$family> { $body };
        match ::std::panic::catch_unwind(::std::panic::AssertUnwindSafe(run)) {
            Ok(Ok(v)) => v,
            Ok(Err(refusal)) => $crate::ffi::refused::<$family>($f, refusal),
            Err(payload) => {
                $crate::ffi::log_panic($f, payload.as_ref());
                <$family as $crate::ffi::ReturnFamily>::invalid()
            }
        }
    }};
}
pub(crate) use ffi_fn;

/// Refuse the call (logged as `$f: ...`) unless `$cond` holds.
macro_rules! ensure {
    ($f:expr, $cond:expr, $($why:tt)+) => {
        if !$cond {
            return Err($crate::ffi::refuse($f, format_args!($($why)+)));
        }
    };
}
pub(crate) use ensure;

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
pub(crate) fn remove_engine(
    handle: transfer_engine_t,
    func: &str,
) -> Result<Arc<TransferEngine>, Refusal> {
    ensure!(func, !handle.is_null(), "NULL engine handle");
    let e = ENGINES.write().remove(&(handle as usize));
    e.ok_or_else(|| not_live(handle, func))
}

/// Resolve a handle to its engine, or refuse it.
pub(crate) fn engine_of(
    handle: transfer_engine_t,
    func: &str,
) -> Result<Arc<TransferEngine>, Refusal> {
    ensure!(func, !handle.is_null(), "NULL engine handle");
    let e = ENGINES.read().get(&(handle as usize)).cloned();
    e.ok_or_else(|| not_live(handle, func))
}

fn not_live(handle: transfer_engine_t, func: &str) -> Refusal {
    refuse(
        func,
        format_args!("{handle:p} is not a live engine handle (destroyed or foreign)"),
    )
}

/// Copy a C string argument. NULL or non-UTF-8 is refused.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for this call.
pub(crate) unsafe fn str_arg(p: *const c_char, func: &str, what: &str) -> Result<String, Refusal> {
    ensure!(func, !p.is_null(), "{what} is NULL");
    // SAFETY: non-NULL and NUL-terminated per the header contract.
    let s = unsafe { CStr::from_ptr(p) };
    s.to_str()
        .map(str::to_owned)
        .map_err(|e| refuse(func, format_args!("{what} is not valid UTF-8: {e}")))
}

/// Copy a notification's name or message. Bytes that are not UTF-8 do not
/// refuse the call: each invalid sequence becomes U+FFFD, which is what the
/// C++ engine's JSON writer (jsoncpp) puts on the wire for them, so the
/// notification and its transfer go through as they do there.
///
/// # Safety
/// `p` is NULL or points to a NUL-terminated string valid for this call.
pub(crate) unsafe fn notify_text_arg(
    p: *const c_char,
    func: &str,
    what: &str,
) -> Result<String, Refusal> {
    static NOT_UTF8: crate::serving::RateLimited =
        crate::serving::RateLimited::new(module_path!(), std::time::Duration::from_secs(10));
    ensure!(func, !p.is_null(), "{what} is NULL");
    // SAFETY: non-NULL and NUL-terminated per the header contract.
    let s = unsafe { CStr::from_ptr(p) };
    Ok(match s.to_str() {
        Ok(t) => t.to_owned(),
        Err(e) => {
            NOT_UTF8.warn(format_args!(
                "{func}: {what} is not UTF-8 ({e}); sent with U+FFFD for the invalid bytes, as the C++ engine sends it"
            ));
            s.to_string_lossy().into_owned()
        }
    })
}

/// Borrow a C array argument: empty when `len` is 0 (whatever `p` is),
/// refused when NULL with a length.
///
/// # Safety
/// `p` is NULL or points to `len` initialised values that outlive the call.
pub(crate) unsafe fn slice_arg<'a, T>(
    p: *const T,
    len: usize,
    func: &str,
    what: &str,
) -> Result<&'a [T], Refusal> {
    if len == 0 {
        return Ok(&[]);
    }
    ensure!(func, !p.is_null(), "NULL {what} with {len} entries");
    // SAFETY: non-NULL and the caller says it holds `len` values.
    Ok(unsafe { std::slice::from_raw_parts(p, len) })
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

/// Address of a C pointer as the engine's `u64`.
pub(crate) fn ptr_addr(p: *const c_void) -> u64 {
    p as usize as u64
}
