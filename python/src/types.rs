//! `TransferOpcode` and `TransferNotify`, as upstream's module defines them.

use pyo3::exceptions::PyTypeError;
use pyo3::prelude::*;
use transfer_engine::Opcode;

/// `TransferOpcode.Read` (0) and `TransferOpcode.Write` (1).
#[pyclass(eq, eq_int, module = "mooncake.engine", from_py_object)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TransferOpcode {
    Read = 0,
    Write = 1,
}

impl TransferOpcode {
    pub fn opcode(self) -> Opcode {
        match self {
            TransferOpcode::Read => Opcode::Read,
            TransferOpcode::Write => Opcode::Write,
        }
    }
}

/// A notification: sent with a transfer (`notify=`), received by `get_notifies`.
#[pyclass(module = "mooncake.engine", get_all, set_all)]
#[derive(Clone, Debug, Default)]
pub struct TransferNotify {
    pub name: String,
    pub msg: String,
}

#[pymethods]
impl TransferNotify {
    /// `TransferNotify()` or `TransferNotify(name, msg)`.
    #[new]
    #[pyo3(signature = (name = None, msg = None))]
    fn new(name: Option<String>, msg: Option<String>) -> PyResult<Self> {
        match (name, msg) {
            (None, None) => Ok(Self::default()),
            (Some(name), Some(msg)) => Ok(TransferNotify { name, msg }),
            _ => Err(PyTypeError::new_err(
                "TransferNotify() takes no arguments or both name and msg",
            )),
        }
    }

    fn __repr__(&self) -> String {
        format!("TransferNotify(name={:?}, msg={:?})", self.name, self.msg)
    }
}
