//! Engine lifecycle: create, destroy, topology, transports, graceful shutdown.

use std::ffi::{c_char, c_int, c_void};
use std::ptr;

use super::{engine_of, err_code, ffi_fn, insert_engine, remove_engine, str_arg, write_c_str};
use super::{transfer_engine_t, transport_t};
use crate::engine::{graceful, TransferEngine};

/// Opaque `transport_t` tokens: addresses of private statics, never NULL.
static TCP_TRANSPORT_TOKEN: u8 = 0;
static RDMA_TRANSPORT_TOKEN: u8 = 0;
static OTHER_TRANSPORT_TOKEN: u8 = 0;

fn transport_token(proto: &str) -> transport_t {
    let r: &'static u8 = match proto {
        "tcp" => &TCP_TRANSPORT_TOKEN,
        "rdma" => &RDMA_TRANSPORT_TOKEN,
        _ => &OTHER_TRANSPORT_TOKEN,
    };
    r as *const u8 as transport_t
}

/// # Safety
/// String arguments are NULL or NUL-terminated (header contract).
#[no_mangle]
pub unsafe extern "C" fn createTransferEngine(
    metadata_conn_string: *const c_char,
    local_server_name: *const c_char,
    ip_or_host_name: *const c_char,
    rpc_port: u64,
    auto_discover: c_int,
) -> transfer_engine_t {
    const F: &str = "createTransferEngine";
    ffi_fn!("createTransferEngine", ptr::null_mut(), {
        // SAFETY: caller passes NULL or NUL-terminated strings.
        let Some(conn) = (unsafe { str_arg(metadata_conn_string, F, "metadata_conn_string") })
        else {
            return ptr::null_mut();
        };
        // SAFETY: as above.
        let Some(name) = (unsafe { str_arg(local_server_name, F, "local_server_name") }) else {
            return ptr::null_mut();
        };
        // Ignored by the classic engine (spec §1.2); only logged.
        let _ = (ip_or_host_name, rpc_port);
        match TransferEngine::new(&conn, &name, auto_discover != 0) {
            Ok(engine) => insert_engine(engine),
            Err(e) => {
                log::error!("{F}: metadata '{conn}', server '{name}': {e}");
                ptr::null_mut()
            }
        }
    })
}

/// Destroys the engine: joins its threads and unpublishes its keys.
/// A NULL, destroyed or foreign handle is logged and ignored.
#[no_mangle]
pub extern "C" fn destroyTransferEngine(engine: transfer_engine_t) {
    ffi_fn!("destroyTransferEngine", (), {
        if let Some(e) = remove_engine(engine, "destroyTransferEngine") {
            e.shutdown();
        }
    })
}

#[no_mangle]
pub extern "C" fn discoverTopology(engine: transfer_engine_t) -> c_int {
    const F: &str = "discoverTopology";
    ffi_fn!("discoverTopology", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        match e.discover_topology() {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

/// # Safety
/// `buf_out` is NULL or valid for `buf_len` bytes of writes.
#[no_mangle]
pub unsafe extern "C" fn getLocalIpAndPort(
    engine: transfer_engine_t,
    buf_out: *mut c_char,
    buf_len: usize,
) -> c_int {
    const F: &str = "getLocalIpAndPort";
    ffi_fn!("getLocalIpAndPort", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        if buf_len == 0 {
            return 0; // snprintf(buf, 0, ...) writes nothing
        }
        if buf_out.is_null() {
            log::error!("{F}: NULL buffer with length {buf_len}");
            return -1;
        }
        // SAFETY: non-NULL, caller guarantees buf_len writable bytes.
        unsafe { write_c_str(buf_out, buf_len, &e.local_ip_and_port()) };
        0
    })
}

/// # Safety
/// `proto` is NULL or NUL-terminated; `args` is NULL or points to at least
/// one pointer, which is NULL or a NUL-terminated JSON string.
#[no_mangle]
pub unsafe extern "C" fn installTransport(
    engine: transfer_engine_t,
    proto: *const c_char,
    args: *mut *mut c_void,
) -> transport_t {
    const F: &str = "installTransport";
    ffi_fn!("installTransport", ptr::null_mut(), {
        let Some(e) = engine_of(engine, F) else {
            return ptr::null_mut();
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(proto) = (unsafe { str_arg(proto, F, "proto") }) else {
            return ptr::null_mut();
        };
        let matrix = if args.is_null() {
            None
        } else {
            // SAFETY: a non-NULL `args` points to at least args[0].
            let first = unsafe { *args };
            if first.is_null() {
                None
            } else {
                // SAFETY: args[0] is a NUL-terminated JSON string.
                match unsafe { str_arg(first as *const c_char, F, "args[0] (NIC priority matrix)") }
                {
                    Some(m) => Some(m),
                    None => return ptr::null_mut(),
                }
            }
        };
        match e.install_transport(&proto, matrix.as_deref()) {
            Ok(()) => transport_token(&proto),
            Err(err) => {
                log::error!("{F}: '{proto}': {err}");
                ptr::null_mut()
            }
        }
    })
}

/// # Safety
/// `proto` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn uninstallTransport(
    engine: transfer_engine_t,
    proto: *const c_char,
) -> c_int {
    const F: &str = "uninstallTransport";
    ffi_fn!("uninstallTransport", -1, {
        let Some(e) = engine_of(engine, F) else {
            return -1;
        };
        // SAFETY: NULL or NUL-terminated per the header contract.
        let Some(proto) = (unsafe { str_arg(proto, F, "proto") }) else {
            return -1;
        };
        match e.uninstall_transport(&proto) {
            Ok(()) => 0,
            Err(err) => err_code(F, &err),
        }
    })
}

/// Registers the engine for destruction on SIGTERM/SIGINT. Idempotent.
#[no_mangle]
pub extern "C" fn enableGracefulShutdown(engine: transfer_engine_t) {
    const F: &str = "enableGracefulShutdown";
    ffi_fn!("enableGracefulShutdown", (), {
        if let Some(e) = engine_of(engine, F) {
            if let Err(err) = graceful::enable(&e) {
                log::error!("{F}: {err}");
            }
        }
    })
}
