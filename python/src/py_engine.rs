//! `mooncake.engine.TransferEngine`: upstream's method names, argument order,
//! keyword names, defaults and return values, on te-rs's engine. Arguments
//! upstream binds without a name (`arg0`, ...) are positional-only here too.
//! The GIL is released for every call into the engine.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Mutex, RwLock};
use pyo3::exceptions::{
    PyAttributeError, PyNotImplementedError, PyRuntimeError, PyTypeError, PyValueError,
};
use pyo3::prelude::*;
use pyo3::types::{PyByteArray, PyBytes, PyString};
use transfer_engine::task::Opcode;

use crate::conn;
use crate::ratelog::log_error;
use crate::session::{Session, Transfer};
use crate::types::{TransferNotify, TransferOpcode};

const CUDA_METHODS: [&str; 4] = [
    "transfer_write_on_cuda",
    "transfer_read_on_cuda",
    "batch_transfer_write_on_cuda",
    "batch_transfer_read_on_cuda",
];

#[pyclass(name = "TransferEngine", module = "mooncake.engine", frozen)]
pub struct PyTransferEngine {
    session: RwLock<Option<Arc<Session>>>,
    initializing: Mutex<()>,
}

impl PyTransferEngine {
    fn session(&self) -> PyResult<Arc<Session>> {
        self.session.read().clone().ok_or_else(|| {
            PyRuntimeError::new_err("TransferEngine is not initialized: call initialize() first")
        })
    }

    fn init(&self, py: Python<'_>, host: &str, conn: String, proto: &str, dev: &str) -> i32 {
        let proto = match conn::check_protocol(proto) {
            Ok(p) => p,
            Err(e) => {
                log_error!("initialize: {e}");
                return -1;
            }
        };
        // Never block on a lock while holding the GIL that its holder needs.
        let Some(_running) = self.initializing.try_lock() else {
            log_error!("initialize: already running in another thread");
            return -1;
        };
        if self.session.read().is_some() {
            log_error!("initialize: this TransferEngine is already initialized");
            return -1;
        }
        let (host, filter) = (host.to_string(), conn::device_filter(dev));
        match py.detach(|| Session::start(&host, &conn, &proto, &filter)) {
            Some(s) => {
                *self.session.write() = Some(Arc::new(s));
                0
            }
            None => -1,
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn sync(
        &self,
        py: Python<'_>,
        target: &str,
        opcode: Opcode,
        buffers: &[u64],
        peers: &[u64],
        lengths: &[u64],
        notify: Option<(String, String)>,
    ) -> PyResult<i32> {
        let s = self.session()?;
        let target = target.to_string();
        Ok(py.detach(|| {
            let t = Transfer {
                target: &target,
                opcode,
                buffers,
                peer_addresses: peers,
                lengths,
            };
            s.transfer_sync(&t, notify)
        }))
    }

    fn submit(
        &self,
        py: Python<'_>,
        target: &str,
        opcode: Opcode,
        buffers: &[u64],
        peers: &[u64],
        lengths: &[u64],
    ) -> PyResult<u64> {
        let s = self.session()?;
        let target = target.to_string();
        Ok(py.detach(|| {
            let t = Transfer {
                target: &target,
                opcode,
                buffers,
                peer_addresses: peers,
                lengths,
            };
            s.transfer_async(&t)
        }))
    }
}

/// Milliseconds from Python; negative: no limit.
fn ms(v: i64) -> Duration {
    u64::try_from(v).map_or(Duration::MAX, Duration::from_millis)
}

fn notify_of(n: Option<PyRef<'_, TransferNotify>>) -> Option<(String, String)> {
    n.map(|n| (n.name.clone(), n.msg.clone()))
}

#[pymethods]
impl PyTransferEngine {
    #[new]
    fn new() -> Self {
        PyTransferEngine {
            session: RwLock::new(None),
            initializing: Mutex::new(()),
        }
    }

    #[pyo3(signature = (local_hostname, metadata_server, protocol, device_name, /))]
    fn initialize(
        &self,
        py: Python<'_>,
        local_hostname: &str,
        metadata_server: &str,
        protocol: &str,
        device_name: Option<&str>,
    ) -> i32 {
        let (kind, server) = conn::split_metadata_server(metadata_server);
        let conn = conn::connection_string(&kind, &server);
        self.init(
            py,
            local_hostname,
            conn,
            protocol,
            device_name.unwrap_or(""),
        )
    }

    #[pyo3(signature = (local_hostname, metadata_server, protocol, device_name, metadata_type, /))]
    fn initialize_ext(
        &self,
        py: Python<'_>,
        local_hostname: &str,
        metadata_server: &str,
        protocol: &str,
        device_name: Option<&str>,
        metadata_type: &str,
    ) -> i32 {
        let conn = conn::connection_string(metadata_type, metadata_server);
        self.init(
            py,
            local_hostname,
            conn,
            protocol,
            device_name.unwrap_or(""),
        )
    }

    fn get_rpc_port(&self) -> PyResult<i32> {
        Ok(self.session()?.rpc_port())
    }

    #[pyo3(signature = (length, /))]
    fn allocate_managed_buffer(&self, py: Python<'_>, length: u64) -> PyResult<u64> {
        let s = self.session()?;
        Ok(py.detach(|| s.allocate_managed(length)))
    }

    #[pyo3(signature = (buffer_addr, length, /))]
    fn free_managed_buffer(&self, py: Python<'_>, buffer_addr: u64, length: u64) -> PyResult<i32> {
        let _ = length; // the pool remembers each block's size
        let s = self.session()?;
        Ok(py.detach(|| s.free_managed(buffer_addr)))
    }

    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, transport_hint = ""))]
    fn transfer_sync_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: u64,
        peer_buffer_address: u64,
        length: u64,
        transport_hint: &str,
    ) -> PyResult<i32> {
        let _ = transport_hint; // ignored, as in upstream's classic engine
        let (b, p, l) = ([buffer], [peer_buffer_address], [length]);
        self.sync(py, target_hostname, Opcode::Write, &b, &p, &l, None)
    }

    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, transport_hint = ""))]
    fn transfer_sync_read(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: u64,
        peer_buffer_address: u64,
        length: u64,
        transport_hint: &str,
    ) -> PyResult<i32> {
        let _ = transport_hint;
        let (b, p, l) = ([buffer], [peer_buffer_address], [length]);
        self.sync(py, target_hostname, Opcode::Read, &b, &p, &l, None)
    }

    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint = ""))]
    fn batch_transfer_sync_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: Vec<u64>,
        peer_buffer_addresses: Vec<u64>,
        lengths: Vec<u64>,
        transport_hint: &str,
    ) -> PyResult<i32> {
        let _ = transport_hint;
        let (b, p, l) = (&buffers, &peer_buffer_addresses, &lengths);
        self.sync(py, target_hostname, Opcode::Write, b, p, l, None)
    }

    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint = ""))]
    fn batch_transfer_sync_read(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: Vec<u64>,
        peer_buffer_addresses: Vec<u64>,
        lengths: Vec<u64>,
        transport_hint: &str,
    ) -> PyResult<i32> {
        let _ = transport_hint;
        let (b, p, l) = (&buffers, &peer_buffer_addresses, &lengths);
        self.sync(py, target_hostname, Opcode::Read, b, p, l, None)
    }

    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint = ""))]
    fn batch_transfer_async_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: Vec<u64>,
        peer_buffer_addresses: Vec<u64>,
        lengths: Vec<u64>,
        transport_hint: &str,
    ) -> PyResult<u64> {
        let _ = transport_hint;
        let (b, p, l) = (&buffers, &peer_buffer_addresses, &lengths);
        self.submit(py, target_hostname, Opcode::Write, b, p, l)
    }

    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, transport_hint = ""))]
    fn batch_transfer_async_read(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: Vec<u64>,
        peer_buffer_addresses: Vec<u64>,
        lengths: Vec<u64>,
        transport_hint: &str,
    ) -> PyResult<u64> {
        let _ = transport_hint;
        let (b, p, l) = (&buffers, &peer_buffer_addresses, &lengths);
        self.submit(py, target_hostname, Opcode::Read, b, p, l)
    }

    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, opcode, notify = None, transport_hint = ""))]
    #[allow(clippy::too_many_arguments)]
    fn transfer_sync(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: u64,
        peer_buffer_address: u64,
        length: u64,
        opcode: TransferOpcode,
        notify: Option<PyRef<'_, TransferNotify>>,
        transport_hint: &str,
    ) -> PyResult<i32> {
        let _ = transport_hint;
        let (b, p, l) = ([buffer], [peer_buffer_address], [length]);
        let n = notify_of(notify);
        self.sync(py, target_hostname, opcode.opcode(), &b, &p, &l, n)
    }

    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, opcode, notify = None, transport_hint = ""))]
    #[allow(clippy::too_many_arguments)]
    fn batch_transfer_sync(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: Vec<u64>,
        peer_buffer_addresses: Vec<u64>,
        lengths: Vec<u64>,
        opcode: TransferOpcode,
        notify: Option<PyRef<'_, TransferNotify>>,
        transport_hint: &str,
    ) -> PyResult<i32> {
        let _ = transport_hint;
        let n = notify_of(notify);
        let (b, p, l) = (&buffers, &peer_buffer_addresses, &lengths);
        self.sync(py, target_hostname, opcode.opcode(), b, p, l, n)
    }

    #[pyo3(signature = (target_hostname, buffers, peer_buffer_addresses, lengths, opcode, transport_hint = ""))]
    #[allow(clippy::too_many_arguments)]
    fn batch_transfer_async(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffers: Vec<u64>,
        peer_buffer_addresses: Vec<u64>,
        lengths: Vec<u64>,
        opcode: TransferOpcode,
        transport_hint: &str,
    ) -> PyResult<u64> {
        let _ = transport_hint;
        let (b, p, l) = (&buffers, &peer_buffer_addresses, &lengths);
        self.submit(py, target_hostname, opcode.opcode(), b, p, l)
    }

    #[pyo3(signature = (batch_ids, /))]
    fn get_batch_transfer_status(&self, py: Python<'_>, batch_ids: Vec<u64>) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.wait_batches(&batch_ids)))
    }

    #[pyo3(signature = (target_hostname, buffer, peer_buffer_address, length, transport_hint = ""))]
    fn transfer_submit_write(
        &self,
        py: Python<'_>,
        target_hostname: &str,
        buffer: u64,
        peer_buffer_address: u64,
        length: u64,
        transport_hint: &str,
    ) -> PyResult<u64> {
        let _ = transport_hint;
        let (b, p, l) = ([buffer], [peer_buffer_address], [length]);
        self.submit(py, target_hostname, Opcode::Write, &b, &p, &l)
    }

    #[pyo3(signature = (batch_id, /))]
    fn transfer_check_status(&self, py: Python<'_>, batch_id: u64) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.check_status(batch_id)))
    }

    // ---- te-rs extension: cancel, deadlines, release, wait --------------------
    // A timeout or deadline in milliseconds; a negative timeout never ends.
    // Each returns 0, 1 when the timeout passed first, -1 for an unknown id.

    /// Cancel the batch's tasks and wait (GIL released) until they ended:
    /// each then reads CANCELED (3), or COMPLETED/FAILED if it ended first,
    /// and te-rs touches none of their buffers again.
    #[pyo3(signature = (batch_id, timeout_ms = -1))]
    fn cancel_batch(&self, py: Python<'_>, batch_id: u64, timeout_ms: i64) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.cancel(batch_id, None, ms(timeout_ms))))
    }

    /// As `cancel_batch`, for task `task_id` of the batch.
    #[pyo3(signature = (batch_id, task_id, timeout_ms = -1))]
    fn cancel_transfer(
        &self,
        py: Python<'_>,
        batch_id: u64,
        task_id: usize,
        timeout_ms: i64,
    ) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.cancel(batch_id, Some(task_id), ms(timeout_ms))))
    }

    /// The batch's tasks time out `deadline_ms` from now (TIMEOUT, 5).
    #[pyo3(signature = (batch_id, deadline_ms))]
    fn set_batch_deadline(&self, py: Python<'_>, batch_id: u64, deadline_ms: u64) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.set_deadline(batch_id, Duration::from_millis(deadline_ms))))
    }

    /// Block (GIL released, no polling) until every task of the batch ended.
    #[pyo3(signature = (batch_id, timeout_ms = -1))]
    fn wait_batch(&self, py: Python<'_>, batch_id: u64, timeout_ms: i64) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.wait(batch_id, ms(timeout_ms))))
    }

    /// Free the batch id now whatever its state; running tasks are cancelled
    /// and their memory freed when their last piece in flight ends.
    #[pyo3(signature = (batch_id))]
    fn release_batch(&self, py: Python<'_>, batch_id: u64) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.release(batch_id)))
    }

    /// Each task's status (upstream's STATUS_* values), in submit order.
    #[pyo3(signature = (batch_id))]
    fn get_batch_task_status(&self, py: Python<'_>, batch_id: u64) -> PyResult<Vec<i32>> {
        let s = self.session()?;
        Ok(py.detach(|| s.task_states(batch_id)))
    }

    /// Copy `length` bytes of `src` (bytes, bytearray or str) to `dest_address`,
    /// which must lie in memory registered with this engine.
    #[pyo3(signature = (dest_address, src, length, /))]
    fn write_bytes_to_buffer(
        &self,
        dest_address: u64,
        src: &Bound<'_, PyAny>,
        length: u64,
    ) -> PyResult<i32> {
        let s = self.session()?;
        let bytes: Vec<u8> = if let Ok(b) = src.cast::<PyBytes>() {
            b.as_bytes().to_vec()
        } else if let Ok(t) = src.cast::<PyString>() {
            t.to_str()?.as_bytes().to_vec()
        } else if let Ok(a) = src.cast::<PyByteArray>() {
            a.to_vec()
        } else {
            return Err(PyTypeError::new_err(format!(
                "write_bytes_to_buffer: src must be bytes, bytearray or str, not {}",
                src.get_type().name()?
            )));
        };
        let Some(head) = usize::try_from(length).ok().and_then(|n| bytes.get(..n)) else {
            return Err(PyValueError::new_err(format!(
                "write_bytes_to_buffer: src has {} bytes, length is {length}",
                bytes.len()
            )));
        };
        s.copy_in(dest_address, head)
            .map(|()| 0)
            .map_err(|e| PyValueError::new_err(format!("write_bytes_to_buffer: {e}")))
    }

    /// `length` bytes at `source_address` (registered memory) as `bytes`.
    #[pyo3(signature = (source_address, length, /))]
    fn read_bytes_from_buffer<'py>(
        &self,
        py: Python<'py>,
        source_address: u64,
        length: u64,
    ) -> PyResult<Bound<'py, PyBytes>> {
        let s = self.session()?;
        let len = usize::try_from(length).map_err(|_| PyValueError::new_err("length too large"))?;
        PyBytes::new_with(py, len, |out| {
            s.copy_out(source_address, out)
                .map_err(|e| PyValueError::new_err(format!("read_bytes_from_buffer: {e}")))
        })
    }

    #[pyo3(signature = (buffer_addr, capacity, location = "*"))]
    fn register_memory(
        &self,
        py: Python<'_>,
        buffer_addr: u64,
        capacity: u64,
        location: &str,
    ) -> PyResult<i32> {
        let s = self.session()?;
        let loc = location.to_string();
        Ok(py.detach(|| s.register(&[buffer_addr], &[capacity], &loc)))
    }

    #[pyo3(signature = (buffer_addr, /))]
    fn unregister_memory(&self, py: Python<'_>, buffer_addr: u64) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.unregister(&[buffer_addr])))
    }

    #[pyo3(signature = (buffer_addresses, capacities, location = "*"))]
    fn batch_register_memory(
        &self,
        py: Python<'_>,
        buffer_addresses: Vec<u64>,
        capacities: Vec<u64>,
        location: &str,
    ) -> PyResult<i32> {
        let s = self.session()?;
        let loc = location.to_string();
        Ok(py.detach(|| s.register(&buffer_addresses, &capacities, &loc)))
    }

    #[pyo3(signature = (buffer_addresses, /))]
    fn batch_unregister_memory(&self, py: Python<'_>, buffer_addresses: Vec<u64>) -> PyResult<i32> {
        let s = self.session()?;
        Ok(py.detach(|| s.unregister(&buffer_addresses)))
    }

    #[pyo3(signature = (device_name = None))]
    fn get_local_topology(&self, py: Python<'_>, device_name: Option<&str>) -> String {
        let filter = conn::device_filter(device_name.unwrap_or(""));
        py.detach(|| conn::topology_json(&filter, std::path::Path::new("/sys/devices/system/node")))
    }

    /// Address of the first buffer `segment_name` registered, 0 if none.
    #[pyo3(signature = (segment_name, /))]
    fn get_first_buffer_address(&self, py: Python<'_>, segment_name: &str) -> PyResult<u64> {
        let s = self.session()?;
        let name = segment_name.to_string();
        Ok(py.detach(|| s.first_buffer_address(&name)))
    }

    /// No EFA transport in te-rs: nothing to warm up (upstream's non-EFA value).
    #[pyo3(signature = (segment_name))]
    fn warmup_efa_segment(&self, segment_name: &str) -> i32 {
        let _ = segment_name;
        0
    }

    fn get_notifies(&self, py: Python<'_>) -> PyResult<Vec<TransferNotify>> {
        let s = self.session()?;
        let notes = py.detach(|| s.engine.take_notifies());
        Ok(notes
            .into_iter()
            .map(|(name, msg)| TransferNotify { name, msg })
            .collect())
    }

    /// Send a Probe RPC to the peer; 0 when it answers, else a negative code.
    #[pyo3(signature = (peer_server_name))]
    fn send_probe(&self, py: Python<'_>, peer_server_name: &str) -> PyResult<i32> {
        let s = self.session()?;
        let name = peer_server_name.to_string();
        Ok(py.detach(|| s.probe(&name)))
    }

    /// te-rs: every metric in Prometheus text format (what
    /// `MC_TE_METRIC_HTTP_PORT`'s `/metrics` serves).
    fn get_metrics_text(&self, py: Python<'_>) -> PyResult<String> {
        let s = self.session()?;
        Ok(py.detach(|| s.engine.metrics_text()))
    }

    /// te-rs: the same numbers as a dict, series (`te_bytes_total{...}`,
    /// as PromQL writes it) to value.
    fn get_metrics(&self, py: Python<'_>) -> PyResult<std::collections::HashMap<String, f64>> {
        let s = self.session()?;
        let text = py.detach(|| s.engine.metrics_text());
        Ok(transfer_engine::metrics::exposition::samples(&text)
            .into_iter()
            .collect())
    }

    /// te-rs: `showLinks` (devices, endpoints, routing, per-transport
    /// task counters), as JSON text by default.
    #[pyo3(signature = (json = true))]
    fn show_links(&self, py: Python<'_>, json: bool) -> PyResult<String> {
        let s = self.session()?;
        Ok(py.detach(|| s.engine.show_links(json)))
    }

    fn get_engine(&self) -> PyResult<()> {
        Err(PyNotImplementedError::new_err(
            "get_engine: te-rs has no C++ TransferEngine object to hand out",
        ))
    }

    fn get_engine_ptr(&self) -> PyResult<u64> {
        Err(PyNotImplementedError::new_err(
            "get_engine_ptr: te-rs has no C++ TransferEngine object to point to",
        ))
    }

    /// Only called for names the class lacks: the CUDA-stream methods get a
    /// message saying why (they are absent, as in upstream's non-CUDA build).
    fn __getattr__(&self, name: &str) -> PyResult<Py<PyAny>> {
        if CUDA_METHODS.contains(&name) {
            return Err(PyAttributeError::new_err(format!(
                "TransferEngine.{name} is not available: te-rs moves host memory only (SUPPORT_CUDA is False)"
            )));
        }
        Err(PyAttributeError::new_err(format!(
            "'TransferEngine' object has no attribute '{name}'"
        )))
    }

    #[classattr]
    #[pyo3(name = "TransferOpcode")]
    fn transfer_opcode(py: Python<'_>) -> Py<PyAny> {
        py.get_type::<TransferOpcode>().into_any().unbind()
    }
}
