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

use pyo3::exceptions::PyAttributeError;
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

#[pymodule]
fn engine(m: &Bound<'_, PyModule>) -> PyResult<()> {
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
