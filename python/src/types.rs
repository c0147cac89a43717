//! `TransferOpcode` and `TransferNotify`, as upstream's module defines them.

use pyo3::exceptions::{PyTypeError, PyValueError};
use pyo3::prelude::*;
use pyo3::pyclass::CompareOp;
use pyo3::types::{PyBool, PyDict, PyString};
use transfer_engine::Opcode;

/// `TransferOpcode.Read` (0) and `TransferOpcode.Write` (1), behaving as
/// upstream's pybind11 enum (`py::arithmetic`): `.name`, `.value`,
/// `__members__`, hashable, `int()`/`__index__`, ordered among themselves,
/// never equal to a plain int, picklable. Where pybind11 makes a nameless
/// member (`TransferOpcode(5)`), te-rs raises `ValueError`.
#[pyclass(frozen, module = "mooncake.engine", from_py_object)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferOpcode {
    value: u8,
}

const NAMES: [&str; 2] = ["Read", "Write"];

#[allow(non_upper_case_globals)]
impl TransferOpcode {
    pub const Read: TransferOpcode = TransferOpcode { value: 0 };
    pub const Write: TransferOpcode = TransferOpcode { value: 1 };

    pub fn opcode(self) -> Opcode {
        if self.value == 0 {
            Opcode::Read
        } else {
            Opcode::Write
        }
    }

    fn name_str(&self) -> &'static str {
        NAMES[self.value as usize]
    }
}

#[pymethods]
impl TransferOpcode {
    /// `TransferOpcode(0)` / `TransferOpcode(1)` (bools too, as int).
    #[new]
    fn new(value: &Bound<'_, PyAny>) -> PyResult<Self> {
        if value.is_instance_of::<PyString>() {
            return Err(PyTypeError::new_err(
                "TransferOpcode(value: int): a name is not a value; use TransferOpcode.__members__[name]",
            ));
        }
        let v: i64 = value.extract()?;
        match v {
            0 | 1 => Ok(TransferOpcode { value: v as u8 }),
            _ => Err(PyValueError::new_err(format!(
                "{v} is not a TransferOpcode (Read = 0, Write = 1)"
            ))),
        }
    }

    #[classattr]
    #[pyo3(name = "Read")]
    fn read_member() -> Self {
        Self::Read
    }

    #[classattr]
    #[pyo3(name = "Write")]
    fn write_member() -> Self {
        Self::Write
    }

    /// `{name: member}`, a plain dict as pybind11's.
    #[classattr]
    fn __members__(py: Python<'_>) -> PyResult<Py<PyDict>> {
        let d = PyDict::new(py);
        d.set_item("Read", Self::Read)?;
        d.set_item("Write", Self::Write)?;
        Ok(d.unbind())
    }

    #[getter]
    fn name(&self) -> &'static str {
        self.name_str()
    }

    #[getter]
    fn value(&self) -> u8 {
        self.value
    }

    fn __int__(&self) -> u8 {
        self.value
    }

    fn __index__(&self) -> u8 {
        self.value
    }

    fn __hash__(&self) -> u64 {
        self.value as u64
    }

    fn __repr__(&self) -> String {
        format!("<TransferOpcode.{}: {}>", self.name_str(), self.value)
    }

    fn __str__(&self) -> String {
        format!("TransferOpcode.{}", self.name_str())
    }

    /// Equal only to the same member; ordered only against members.
    fn __richcmp__(&self, other: &Bound<'_, PyAny>, op: CompareOp) -> PyResult<Py<PyAny>> {
        let py = other.py();
        let Ok(o) = other.cast::<TransferOpcode>() else {
            return match op {
                CompareOp::Eq | CompareOp::Ne => Ok(py.NotImplemented()),
                _ => Err(PyTypeError::new_err(
                    "Expected an enumeration of matching type!",
                )),
            };
        };
        let b = op.matches(self.value.cmp(&o.get().value));
        Ok(PyBool::new(py, b).to_owned().into_any().unbind())
    }

    fn __reduce__(slf: &Bound<'_, Self>) -> PyResult<(Py<PyAny>, (u8,))> {
        Ok((slf.get_type().into_any().unbind(), (slf.get().value,)))
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
