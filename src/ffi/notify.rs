//! Notifications. Buffers handed to C come from libc `malloc`, so callers
//! (and `freeNotifsMsgBuf`) release them with libc `free` (spec pitfall 18).

use std::ffi::{c_char, c_int, c_void};
use std::ptr;

use super::{engine_of, ensure, ffi_fn, notify_text_arg, refuse, ErrCode, Handle};
use super::{notify_msg, notify_msg_t, transfer_engine_t};
use crate::error::Error;

/// A malloc'd NUL-terminated copy of `s`, or NULL if malloc fails.
fn malloc_c_string(s: &str) -> *mut c_char {
    // SAFETY: plain allocation of len + 1 bytes.
    let p = unsafe { libc::malloc(s.len() + 1) } as *mut u8;
    if p.is_null() {
        return ptr::null_mut();
    }
    // SAFETY: p has len + 1 writable bytes and cannot overlap `s`.
    unsafe {
        ptr::copy_nonoverlapping(s.as_ptr(), p, s.len());
        *p.add(s.len()) = 0;
    }
    p as *mut c_char
}

/// Free `n` entries' strings and then the array itself.
///
/// # Safety
/// `arr` is NULL or a malloc'd array whose first `n` entries hold NULL or
/// malloc'd strings.
unsafe fn free_notify_array(arr: *mut notify_msg_t, n: usize) {
    if arr.is_null() {
        return;
    }
    for i in 0..n {
        // SAFETY: i < n entries, per the caller contract.
        let m = unsafe { &*arr.add(i) };
        // SAFETY: NULL or malloc'd; free(NULL) is a no-op.
        unsafe {
            libc::free(m.name as *mut c_void);
            libc::free(m.msg as *mut c_void);
        }
    }
    // SAFETY: the array itself came from malloc.
    unsafe { libc::free(arr as *mut c_void) };
}

/// # Safety
/// `size` is NULL or valid for one `int` write.
#[no_mangle]
pub unsafe extern "C" fn getNotifsFromEngine(
    engine: transfer_engine_t,
    size: *mut c_int,
) -> *mut notify_msg_t {
    ffi_fn!(f = "getNotifsFromEngine", Handle<notify_msg_t>, {
        ensure!(f, !size.is_null(), "NULL size pointer");
        // SAFETY: non-NULL and writable per the caller contract.
        unsafe { size.write(0) };
        let notes = engine_of(engine, f)?.take_notifies();
        if notes.is_empty() {
            return Ok(ptr::null_mut());
        }
        let n = c_int::try_from(notes.len()).map_err(|_| {
            let many = notes.len();
            refuse(
                f,
                format_args!("{many} notifications do not fit an int; dropped"),
            )
        })?;
        // SAFETY: zeroed allocation, so every entry starts as {NULL, NULL}.
        let arr = unsafe { libc::calloc(notes.len(), std::mem::size_of::<notify_msg_t>()) }
            as *mut notify_msg_t;
        ensure!(
            f,
            !arr.is_null(),
            "out of memory for {n} notifications; dropped"
        );
        for (i, (name, msg)) in notes.iter().enumerate() {
            let entry = notify_msg {
                name: malloc_c_string(name),
                msg: malloc_c_string(msg),
            };
            // SAFETY: i < len entries allocated above.
            unsafe { arr.add(i).write(entry) };
            if entry.name.is_null() || entry.msg.is_null() {
                // SAFETY: entries 0..=i hold NULL or malloc'd strings.
                unsafe { free_notify_array(arr, i + 1) };
                return Err(refuse(
                    f,
                    format_args!("out of memory copying notification {i}; all dropped"),
                ));
            }
        }
        // SAFETY: non-NULL and writable (checked above).
        unsafe { size.write(n) };
        Ok(arr)
    })
}

/// # Safety
/// `msg` is NULL or an array returned by `getNotifsFromEngine` with its
/// `size`, not yet freed.
#[no_mangle]
pub unsafe extern "C" fn freeNotifsMsgBuf(msg: *mut notify_msg_t, size: c_int) -> c_int {
    ffi_fn!(f = "freeNotifsMsgBuf", ErrCode, {
        let _ = f;
        let n = usize::try_from(size).unwrap_or(0);
        // SAFETY: forwarded caller contract.
        unsafe { free_notify_array(msg, n) };
        Ok(0)
    })
}

/// # Safety
/// `notify_msg.name` / `.msg` are NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn genNotifyInEngine(
    engine: transfer_engine_t,
    target_id: u64,
    notify_msg: notify_msg_t,
) -> c_int {
    ffi_fn!(f = "genNotifyInEngine", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let name = unsafe { notify_text_arg(notify_msg.name, f, "notify_msg.name") }?;
        // SAFETY: as above.
        let msg = unsafe { notify_text_arg(notify_msg.msg, f, "notify_msg.msg") }?;
        // Segment ids are int32; anything wider names no segment (ERR_METADATA,
        // as Mooncake reports for an unknown segment).
        let target = i32::try_from(target_id)
            .map_err(|_| Error::Metadata(format!("target_id {target_id} is not a segment id")))?;
        e.send_notify(target, &name, &msg)?;
        Ok(0)
    })
}
