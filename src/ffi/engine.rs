//! Engine lifecycle: create, destroy, topology, transports, graceful shutdown.

use std::ffi::{c_char, c_int, c_void};

use super::{engine_of, ensure, ffi_fn, insert_engine, remove_engine, str_arg, write_c_str};
use super::{transfer_engine_t, transport_t};
use super::{About, ErrCode, Handle, NoValue};
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
    ffi_fn!(f = "createTransferEngine", Handle<c_void>, {
        // SAFETY: caller passes NULL or NUL-terminated strings.
        let conn = unsafe { str_arg(metadata_conn_string, f, "metadata_conn_string") }?;
        // SAFETY: as above.
        let name = unsafe { str_arg(local_server_name, f, "local_server_name") }?;
        // Ignored by the classic engine (spec §1.2).
        let _ = (ip_or_host_name, rpc_port);
        let engine = TransferEngine::new(&conn, &name, auto_discover != 0)
            .about(&format!("metadata {conn}, server {name}"))?;
        Ok(insert_engine(engine))
    })
}

/// Destroys the engine: joins its threads and unpublishes its keys.
/// A NULL, destroyed or foreign handle is logged and ignored.
#[no_mangle]
pub extern "C" fn destroyTransferEngine(engine: transfer_engine_t) {
    ffi_fn!(f = "destroyTransferEngine", NoValue, {
        remove_engine(engine, f)?.shutdown();
        Ok(())
    })
}

#[no_mangle]
pub extern "C" fn discoverTopology(engine: transfer_engine_t) -> c_int {
    ffi_fn!(f = "discoverTopology", ErrCode, {
        engine_of(engine, f)?.discover_topology()?;
        Ok(0)
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
    ffi_fn!(f = "getLocalIpAndPort", ErrCode, {
        let e = engine_of(engine, f)?;
        if buf_len == 0 {
            return Ok(0); // snprintf(buf, 0, ...) writes nothing
        }
        ensure!(f, !buf_out.is_null(), "NULL buffer with length {buf_len}");
        // SAFETY: non-NULL, caller guarantees buf_len writable bytes.
        unsafe { write_c_str(buf_out, buf_len, &e.local_ip_and_port()) };
        Ok(0)
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
    ffi_fn!(f = "installTransport", Handle<c_void>, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let proto = unsafe { str_arg(proto, f, "proto") }?;
        // SAFETY: a non-NULL `args` points to at least args[0].
        let first = if args.is_null() {
            None
        } else {
            Some(unsafe { *args })
        };
        let matrix = match first {
            Some(m) if !m.is_null() => {
                // SAFETY: args[0] is a NUL-terminated JSON string.
                Some(unsafe { str_arg(m as *const c_char, f, "args[0] (NIC priority matrix)") }?)
            }
            _ => None,
        };
        e.install_transport(&proto, matrix.as_deref())
            .about(&proto)?;
        Ok(transport_token(&proto))
    })
}

/// # Safety
/// `proto` is NULL or NUL-terminated.
#[no_mangle]
pub unsafe extern "C" fn uninstallTransport(
    engine: transfer_engine_t,
    proto: *const c_char,
) -> c_int {
    ffi_fn!(f = "uninstallTransport", ErrCode, {
        let e = engine_of(engine, f)?;
        // SAFETY: NULL or NUL-terminated per the header contract.
        let proto = unsafe { str_arg(proto, f, "proto") }?;
        e.uninstall_transport(&proto)?;
        Ok(0)
    })
}

/// Registers the engine for destruction on SIGTERM/SIGINT. Idempotent.
#[no_mangle]
pub extern "C" fn enableGracefulShutdown(engine: transfer_engine_t) {
    ffi_fn!(f = "enableGracefulShutdown", NoValue, {
        graceful::enable(&engine_of(engine, f)?)?;
        Ok(())
    })
}
