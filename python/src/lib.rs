//! `mooncake.engine` on te-rs: the Python module vLLM's and SGLang's Mooncake
//! connectors import, backed by te-rs's Rust engine (no C++ inside).
//!
//! `py_engine` and `types` are the Python surface; `session` holds one
//! initialized engine; `batches` and `wait` track and wait for batches;
//! `pool` is the managed-buffer allocator; `conn` parses metadata strings.

mod batches;
mod conn;
mod mem;
mod memory;
mod pool;
mod py_engine;
mod ranges;
mod ratelog;
mod session;
mod types;
mod wait;

use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

use pyo3::exceptions::{PyAttributeError, PyRuntimeWarning};
use pyo3::prelude::*;

/// Names of upstream's module that te-rs does not provide.
const ABSENT: [&str; 7] = [
    "InnerTransferEngine",
    "RpcInterface",
    "CoroRPCInterface",
    "ReceivedData",
    "ReceivedTensor",
    "SharedSegment",
    "create_rpc_client",
];

/// Module `__getattr__` (PEP 562): a clear message for upstream's extras.
#[pyfunction]
#[pyo3(name = "__getattr__")]
fn module_getattr(name: &str) -> PyResult<Py<PyAny>> {
    if ABSENT.contains(&name) || name == "create_rpc_server" {
        return Err(PyAttributeError::new_err(format!(
            "mooncake.engine.{name} is not provided by te-rs (it offers TransferEngine, TransferOpcode, TransferNotify)"
        )));
    }
    Err(PyAttributeError::new_err(format!(
        "module 'mooncake.engine' has no attribute '{name}'"
    )))
}

/// Files upstream's wheels put in the `mooncake` folder.
const UPSTREAM_FILES: [&str; 3] = ["engine.so", "store.so", "transfer_engine_bench"];

/// Upstream's files beside this module: both packages were installed into
/// one environment (they share the `mooncake` folder, and Python loads
/// te-rs's `engine.cpython-*.so` before upstream's `engine.so`).
fn upstream_beside(module: &Path) -> Vec<String> {
    let (Some(dir), Some(own)) = (module.parent(), module.file_name()) else {
        return Vec::new();
    };
    UPSTREAM_FILES
        .iter()
        .filter(|f| own != std::ffi::OsStr::new(f) && dir.join(f).exists())
        .map(|f| f.to_string())
        .collect()
}

/// This extension's own file, from the dynamic loader.
fn own_path() -> Option<PathBuf> {
    // SAFETY: dladdr reads the loader's tables for an address inside this
    // library and fills `info`, which we own; dli_fname, when not null,
    // points at a NUL-terminated string that lives as long as the library.
    unsafe {
        let mut info: libc::Dl_info = std::mem::zeroed();
        if libc::dladdr(own_path as *const libc::c_void, &mut info) == 0 || info.dli_fname.is_null()
        {
            return None;
        }
        let name = std::ffi::CStr::from_ptr(info.dli_fname);
        Some(PathBuf::from(std::ffi::OsStr::from_bytes(name.to_bytes())))
    }
}

/// A `RuntimeWarning` (shown by default) and a log line when upstream's
/// package shares this module's folder.
fn warn_if_mixed(py: Python<'_>) -> PyResult<()> {
    let Some(path) = own_path() else {
        return Ok(());
    };
    let found = upstream_beside(&path);
    if found.is_empty() {
        return Ok(());
    }
    let msg = format!(
        "mooncake.engine: te-rs's package (mooncake-te-rs) and upstream's (mooncake-transfer-engine*, found {}) are installed in the same folder {}; Python loads te-rs's module {}. Uninstall one of them (pip uninstall mooncake-te-rs, or pip uninstall mooncake-transfer-engine-non-cuda), or give each its own virtualenv",
        found.join(", "),
        path.parent().unwrap_or(&path).display(),
        path.display()
    );
    log::warn!("{msg}");
    let cat = py.get_type::<PyRuntimeWarning>();
    let cmsg = std::ffi::CString::new(msg).unwrap_or_default();
    PyErr::warn(py, &cat, &cmsg, 1)
}

#[pymodule]
fn engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
    warn_if_mixed(m.py())?;
    m.add_class::<types::TransferOpcode>()?;
    m.add_class::<types::TransferNotify>()?;
    m.add_class::<py_engine::PyTransferEngine>()?;
    m.add("Read", types::TransferOpcode::Read)?;
    m.add("Write", types::TransferOpcode::Write)?;
    for flag in [
        "SUPPORT_CUDA",
        "SUPPORT_EFA",
        "SUPPORT_HIP",
        "SUPPORT_MNNVL",
        "SUPPORT_MUSA",
        "SUPPORT_INTRA_NVLINK",
    ] {
        m.add(flag, false)?;
    }
    m.add("BACKEND", "te-rs")?;
    m.add_function(wrap_pyfunction!(module_getattr, m)?)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_files_beside_the_module_are_found() {
        let dir = std::env::temp_dir().join(format!("te-rs-mixed-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let own = dir.join("engine.cpython-311-x86_64-linux-gnu.so");
        std::fs::write(&own, "").unwrap();
        assert!(upstream_beside(&own).is_empty());
        std::fs::write(dir.join("engine.so"), "").unwrap();
        std::fs::write(dir.join("transfer_engine_bench"), "").unwrap();
        assert_eq!(
            upstream_beside(&own),
            ["engine.so", "transfer_engine_bench"]
        );
        // te-rs's module under upstream's file name is not a second package.
        assert_eq!(
            upstream_beside(&dir.join("engine.so")),
            ["transfer_engine_bench"]
        );
        let _ = std::fs::remove_dir_all(&dir);
    }
}
