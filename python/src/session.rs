//! One initialized engine and what the Python class keeps beside it. Every
//! method here runs without the GIL and returns upstream's value: 0 or a
//! negative code, a batch id or 0.

use std::sync::Arc;
use std::time::Duration;

use parking_lot::Mutex;
use transfer_engine::error::err;
use transfer_engine::metadata::handshake::client;
use transfer_engine::task::{Opcode, TransferRequest};
use transfer_engine::{SegmentId, TransferEngine};

use crate::batches::{release, BatchBook};
use crate::conn;
use crate::memory::code;
use crate::pool::Pool;
use crate::ratelog::log_error;
use crate::wait::{self, State, Tracker};

pub struct Session {
    pub engine: Arc<TransferEngine>,
    pub(crate) pool: Mutex<Pool>,
    book: BatchBook,
    timeout: Duration,
}

/// What one transfer call moves.
pub struct Transfer<'a> {
    pub target: &'a str,
    pub opcode: Opcode,
    pub buffers: &'a [u64],
    pub peer_addresses: &'a [u64],
    pub lengths: &'a [u64],
}

impl Session {
    pub fn start(
        local_hostname: &str,
        conn_string: &str,
        protocol: &str,
        filter: &[String],
    ) -> Option<Session> {
        let engine = match TransferEngine::new(conn_string, local_hostname, false) {
            Ok(e) => e,
            Err(e) => {
                log_error!("initialize: metadata '{conn_string}', host '{local_hostname}': {e}");
                return None;
            }
        };
        if let Err(e) = conn::install_transport(&engine, filter) {
            log_error!("initialize: installing a transport: {e}");
            engine.shutdown();
            return None;
        }
        let installed = engine.installed_protocols();
        log::info!(
            "mooncake.engine on te-rs: segment '{}', transports {installed:?}",
            engine.local_server_name()
        );
        // Upstream, too, installs what auto-discovery finds, whatever `protocol` says.
        if conn::is_foreign_protocol(protocol) {
            log::warn!(
                "initialize: protocol '{protocol}' has no transport in te-rs (it moves host memory over tcp or rdma); {installed:?} installed, as upstream installs what auto-discovery finds"
            );
        } else if !protocol.is_empty() && !installed.contains(&protocol) {
            log::warn!(
                "initialize: protocol '{protocol}' asked, {installed:?} installed (the transport is what auto-discovery finds, as upstream: RDMA needs a NIC that passes device_name {filter:?}; MC_FORCE_TCP forces tcp)"
            );
        }
        Some(Session {
            engine,
            pool: Mutex::new(Pool::default()),
            book: BatchBook::default(),
            timeout: wait::transfer_timeout(),
        })
    }

    pub fn rpc_port(&self) -> i32 {
        let ip_port = self.engine.local_ip_and_port();
        ip_port
            .rsplit(':')
            .next()
            .and_then(|p| p.parse().ok())
            .unwrap_or(-1)
    }

    fn open(&self, target: &str) -> Option<SegmentId> {
        match self.engine.open_segment(target) {
            Ok(id) => Some(id),
            Err(e) => {
                log_error!("cannot open segment '{target}': {e}");
                None
            }
        }
    }

    /// Requests for `t`, after checking its lists and local ranges.
    fn requests(&self, t: &Transfer<'_>, seg: SegmentId) -> Option<Vec<TransferRequest>> {
        let n = t.buffers.len();
        if t.peer_addresses.len() != n || t.lengths.len() != n {
            log_error!(
                "buffers, peer_buffer_addresses and lengths have different sizes ({n}, {}, {})",
                t.peer_addresses.len(),
                t.lengths.len()
            );
            return None;
        }
        let local = crate::ranges::Ranges::new(&self.engine.registered_buffers());
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let (addr, len) = (t.buffers[i], t.lengths[i]);
            if len > 0 && !local.contains(addr, len) {
                log_error!(
                    "request {i}: local buffer [{addr:#x}, +{len}) is not inside memory registered with this engine"
                );
                return None;
            }
            out.push(TransferRequest {
                opcode: t.opcode,
                source: addr,
                target_id: seg,
                target_offset: t.peer_addresses[i],
                length: len,
            });
        }
        Some(out)
    }

    /// Submit `t` as one batch; the tracker on success.
    fn submit(&self, t: &Transfer<'_>, notify: Option<(String, String)>) -> Option<Tracker> {
        self.book.reap(&self.engine);
        let seg = self.open(t.target)?;
        let reqs = self.requests(t, seg)?;
        let bytes = t.lengths.iter().fold(0u64, |a, &l| a.saturating_add(l));
        let batch = self.engine.allocate_batch_id(reqs.len());
        let tracker = Tracker::new(batch, reqs.len(), bytes, self.timeout);
        if let Err(e) = self.engine.submit_transfer(batch, &reqs, notify) {
            log_error!("submitting {} requests to '{}': {e}", reqs.len(), t.target);
            release(&self.engine, &self.book, tracker);
            // Upstream drops the cached descriptor so the next call refetches it.
            let _ = self.engine.remove_local_segment(t.target);
            return None;
        }
        Some(tracker)
    }

    /// `transfer_sync*` / `batch_transfer_sync*`: 0 when every byte moved.
    pub fn transfer_sync(&self, t: &Transfer<'_>, notify: Option<(String, String)>) -> i32 {
        let Some(mut tracker) = self.submit(t, notify) else {
            return -1;
        };
        let state = wait::wait(&self.engine, &mut tracker);
        if state != State::Completed {
            log_error!(
                "transfer of {} requests to '{}' ended {}",
                t.buffers.len(),
                t.target,
                tracker.describe(state)
            );
        }
        release(&self.engine, &self.book, tracker);
        if state == State::Completed {
            0
        } else {
            -1
        }
    }

    /// `batch_transfer_async*` / `transfer_submit_write`: a batch id, 0 on failure.
    pub fn transfer_async(&self, t: &Transfer<'_>) -> u64 {
        match self.submit(t, None) {
            Some(tracker) => {
                let id = tracker.batch;
                self.book.insert(tracker);
                id
            }
            None => 0,
        }
    }

    /// `cancel_batch` / `cancel_transfer`: 0 once the tasks ended, 1 if
    /// `timeout` passed first, -1 for an unknown batch or task.
    pub fn cancel(&self, id: u64, task: Option<usize>, timeout: Duration) -> i32 {
        self.ext("cancel", id, |e| e.cancel(id, task, timeout).map(waited))
    }

    /// `wait_batch`: 0 once every task ended, 1 if `timeout` passed first.
    pub fn wait(&self, id: u64, timeout: Duration) -> i32 {
        self.ext("wait_batch", id, |e| e.wait_batch(id, timeout).map(waited))
    }

    /// `set_batch_deadline`: the batch's tasks time out `within` from now.
    pub fn set_deadline(&self, id: u64, within: Duration) -> i32 {
        self.ext("set_batch_deadline", id, |e| {
            e.set_batch_deadline(id, within).map(|()| 0)
        })
    }

    /// `release_batch`: the id is gone at once; running tasks are cancelled.
    pub fn release(&self, id: u64) -> i32 {
        if !self.book.forget(id) {
            log_error!("release_batch: unknown batch id {id:#x}");
            return -1;
        }
        match self.engine.release_batch_id(id) {
            Ok(()) => 0,
            Err(e) => {
                log_error!("release_batch: {e}");
                -1
            }
        }
    }

    /// `get_batch_task_status`: each task's `STATUS_*` value (empty if unknown).
    pub fn task_states(&self, id: u64) -> Vec<i32> {
        if !self.book.contains(id) {
            log_error!("get_batch_task_status: unknown batch id {id:#x}");
            return Vec::new();
        }
        (0..)
            .map_while(|i| self.engine.transfer_status(id, i).ok())
            .map(|s| s.status as i32)
            .collect()
    }

    fn ext(
        &self,
        what: &str,
        id: u64,
        f: impl FnOnce(&TransferEngine) -> transfer_engine::Result<i32>,
    ) -> i32 {
        if !self.book.contains(id) {
            log_error!("{what}: unknown batch id {id:#x}");
            return -1;
        }
        match f(&self.engine) {
            Ok(v) => v,
            Err(e) => {
                log_error!("{what}: {e}");
                -1
            }
        }
    }

    pub fn check_status(&self, id: u64) -> i32 {
        self.book.check(&self.engine, id)
    }

    pub fn wait_batches(&self, ids: &[u64]) -> i32 {
        self.book.wait_all(&self.engine, ids)
    }

    /// `get_first_buffer_address`: the first buffer `name` registered, 0 if none.
    pub fn first_buffer_address(&self, name: &str) -> u64 {
        let Some(id) = self.open(name) else {
            return 0;
        };
        self.engine
            .metadata()
            .segment_desc(id)
            .and_then(|d| d.buffers.first().map(|b| b.addr))
            .unwrap_or(0)
    }

    /// `send_probe`: 0 when the peer's handshake daemon answers.
    pub fn probe(&self, name: &str) -> i32 {
        match self.engine.metadata().rpc_meta(name) {
            Ok(m) => code(client::probe(&m.ip_or_host_name, m.rpc_port), "send_probe"),
            Err(e) => {
                log_error!("send_probe: no RPC address for '{name}': {e}");
                err::METADATA
            }
        }
    }
}

impl Drop for Session {
    /// Stop the engine (and its threads) before its managed memory goes.
    fn drop(&mut self) {
        self.engine.shutdown();
        for (addr, len) in std::mem::take(&mut self.pool.lock().regions) {
            crate::mem::unmap(addr, len);
        }
    }
}

fn waited(done: bool) -> i32 {
    if done {
        0
    } else {
        1
    }
}
