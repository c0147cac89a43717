//! Diagnostics: NIC load and link report.

use std::ffi::{c_char, c_int};

use super::{engine_of, ensure, ffi_fn, write_c_str, ErrCode};
use super::{nic_load_stat_t, transfer_engine_t};

/// # Safety
/// `stats` is NULL or valid for `*count` entries; `count` is NULL or valid
/// for reads and writes.
#[no_mangle]
pub unsafe extern "C" fn getNicLoadStats(
    engine: transfer_engine_t,
    stats: *mut nic_load_stat_t,
    count: *mut usize,
) -> c_int {
    ffi_fn!(f = "getNicLoadStats", ErrCode, {
        let no_null = !stats.is_null() && !count.is_null();
        ensure!(f, no_null, "NULL stats or count (there is no size query)");
        let loads = engine_of(engine, f)?.nic_load_stats();
        // SAFETY: count is non-NULL and readable.
        let room = unsafe { count.read() };
        for (i, l) in loads.iter().take(room).enumerate() {
            let mut entry = nic_load_stat_t {
                device_name: [0; 64],
                inflight_bytes: l.inflight_bytes,
                ewma_bandwidth_bps: l.ewma_bandwidth_bps,
            };
            // SAFETY: device_name is a 64-byte local array.
            unsafe { write_c_str(entry.device_name.as_mut_ptr(), 64, &l.device) };
            // SAFETY: i < *count, which the caller made room for.
            unsafe { stats.add(i).write(entry) };
        }
        // SAFETY: count is non-NULL and writable.
        unsafe { count.write(loads.len()) };
        Ok(0)
    })
}

/// # Safety
/// `buf_out` is NULL or valid for `buf_len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn showLinks(
    engine: transfer_engine_t,
    buf_out: *mut c_char,
    buf_len: usize,
    json: c_int,
) -> c_int {
    ffi_fn!(f = "showLinks", ErrCode, {
        ensure!(
            f,
            !buf_out.is_null() && buf_len > 0,
            "NULL buffer or zero length"
        );
        let links = engine_of(engine, f)?.show_links(json != 0);
        // SAFETY: non-NULL, caller guarantees buf_len writable bytes.
        unsafe { write_c_str(buf_out, buf_len, &links) };
        Ok(0)
    })
}
