//! `TransferEngine`: segments, memory registration, batches, installed
//! transports and notifications. The FFI layer calls only this type.

pub mod batch;
pub mod graceful;
pub mod memory;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Mutex, RwLock};

use crate::config::{env_i64, env_is_set, env_str};
use crate::error::{Error, Result};
use crate::metadata::descriptor::{
    new_incarnation, timestamp_now, PriorityMatrix, RpcMeta, SegmentDesc,
};
use crate::metadata::{name, Metadata, SegmentId};
use crate::net;
use crate::task::{StopReason, Task, TaskStatus, TransferRequest};
use crate::threads::ThreadCount;
use crate::topology;
use crate::transport::{LocalBuffer, Submission, Transport, TransportContext};
use batch::{BatchTable, PendingNotify};
use memory::MemoryRegistry;

pub use batch::Batch;

/// Status of one task as `getTransferStatus` reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferStatus {
    pub status: TaskStatus,
    pub transferred_bytes: u64,
}

/// One entry of `getNicLoadStats`.
#[derive(Clone, Debug, PartialEq)]
pub struct NicLoad {
    pub device: String,
    pub inflight_bytes: u64,
    pub ewma_bandwidth_bps: f64,
}

pub struct TransferEngine {
    metadata: Arc<Metadata>,
    /// `host:port` for `getLocalIpAndPort`.
    rpc: RpcMeta,
    /// Store modes: the pre-bound daemon socket, served once a transport is installed.
    pending_listener: Mutex<Option<std::net::TcpListener>>,
    transports: RwLock<Vec<Arc<dyn Transport>>>,
    memory: Mutex<MemoryRegistry>,
    batches: BatchTable,
    topology: Mutex<PriorityMatrix>,
    /// `MC_SLICE_TIMEOUT` (seconds): WAITING older than this reads TIMEOUT.
    slice_timeout: Option<Duration>,
    destroyed: AtomicBool,
    /// `MC_TE_RS_TCP_FALLBACK` (default on): with rdma and tcp installed,
    /// RDMA slices with no path left go over TCP to peers that offer it.
    tcp_fallback: bool,
    /// `MC_TE_METRIC`: the per-interval report.
    metrics: Option<crate::metrics::Reporter>,
    /// Task, slice and byte counters and latency histograms (always on).
    task_metrics: crate::metrics::tasks::TaskMetrics,
    /// `MC_TE_METRIC_HTTP_PORT`: the `/metrics` endpoint.
    metrics_http: Mutex<Option<crate::metrics::http::MetricsServer>>,
    /// Every thread of this engine: its metadata's, its transports', the
    /// reporter's (counted in children of it).
    threads: ThreadCount,
    /// Random per engine, published in our descriptor (`te_rs_incarnation`):
    /// peers tell this engine from an earlier one with the same name.
    incarnation: String,
}

impl TransferEngine {
    /// `createTransferEngine`. `ip_or_host_name` and `rpc_port` are ignored,
    /// as in the classic C++ engine (spec §1.2).
    pub fn new(
        metadata_conn: &str,
        local_server_name: &str,
        auto_discover: bool,
    ) -> Result<Arc<Self>> {
        crate::logging::init();
        crate::settings::log_unread_once();
        if local_server_name.is_empty() {
            return Err(Error::InvalidArgument("empty local_server_name".into()));
        }
        let threads = ThreadCount::default();
        let metadata = Metadata::with_threads(metadata_conn, local_server_name, threads.child())?;
        let (host, port) = name::parse_host_port(local_server_name, name::default_handshake_port());
        let listener;
        let rpc;
        // Upstream's name for the binding, in its log line below.
        let binding;
        if metadata.is_p2p() {
            binding = "P2P handshake";
            let l = net::bind_in_rpc_range()?;
            let p = l.local_addr()?.port();
            metadata.set_local_name(&name::join_host_port(&host, p));
            rpc = RpcMeta {
                ip_or_host_name: host,
                rpc_port: p,
            };
            listener = Some(l);
        } else if net::legacy_rpc_binding() {
            binding = "legacy/P2P";
            rpc = RpcMeta {
                ip_or_host_name: host,
                rpc_port: port,
            };
            listener = Some(net::bind_exact(port)?);
        } else {
            binding = "new RPC mapping";
            let l = net::bind_in_rpc_range()?;
            rpc = RpcMeta {
                ip_or_host_name: net::advertised_ip(),
                rpc_port: l.local_addr()?.port(),
            };
            listener = Some(l);
        }
        // Upstream's exact line: its scripts (real_rdma_link_failover.sh)
        // read the target's segment name from it.
        log::info!(
            "Transfer Engine RPC using {binding}, listening on {}:{}",
            rpc.ip_or_host_name,
            rpc.rpc_port
        );
        net::raise_fd_limit();
        let engine = Arc::new(TransferEngine {
            metadata: metadata.clone(),
            rpc,
            pending_listener: Mutex::new(None),
            transports: RwLock::new(Vec::new()),
            memory: Mutex::new(MemoryRegistry::default()),
            batches: BatchTable::default(),
            topology: Mutex::new(PriorityMatrix::new()),
            slice_timeout: match env_i64("MC_SLICE_TIMEOUT", -1, 1, 65535) {
                s if s > 0 => Some(Duration::from_secs(s as u64)),
                _ => None,
            },
            destroyed: AtomicBool::new(false),
            tcp_fallback: tcp_fallback_enabled(),
            metrics: crate::metrics::Reporter::from_env(&threads),
            task_metrics: crate::metrics::tasks::TaskMetrics::from_env(),
            metrics_http: Mutex::new(None),
            threads,
            incarnation: new_incarnation(),
        });
        engine.start_metrics_endpoint();
        if metadata.is_p2p() {
            metadata.start_daemon(listener.expect("p2p listener"))?;
        } else {
            *engine.pending_listener.lock() = listener;
            metadata.publish_rpc_meta(&engine.rpc)?;
        }
        log::info!(
            "transfer engine '{}' up: metadata {}, rpc {}:{}",
            metadata.local_name(),
            metadata_conn,
            engine.rpc.ip_or_host_name,
            engine.rpc.rpc_port
        );
        if let Err(e) = engine.auto_install(auto_discover) {
            engine.shutdown();
            return Err(e);
        }
        Ok(engine)
    }

    fn auto_install(&self, auto_discover: bool) -> Result<()> {
        if env_is_set("MC_FORCE_TCP") {
            return self.install_transport("tcp", None);
        }
        if !auto_discover {
            return Ok(());
        }
        if let Some(path) = env_str("MC_CUSTOM_TOPO_JSON") {
            let text = std::fs::read_to_string(&path)
                .map_err(|e| Error::InvalidArgument(format!("MC_CUSTOM_TOPO_JSON={path}: {e}")))?;
            *self.topology.lock() = topology::parse_matrix(&text)?;
        } else {
            self.discover_topology()?;
        }
        let have_hca = !self.topology.lock().is_empty();
        if have_hca || env_is_set("MC_FORCE_HCA") {
            self.install_transport("rdma", None)
        } else {
            self.install_transport("tcp", None)
        }
    }

    pub fn metadata(&self) -> &Arc<Metadata> {
        &self.metadata
    }

    pub fn local_server_name(&self) -> String {
        self.metadata.local_name()
    }

    /// `getLocalIpAndPort`: `ip:port` without IPv6 brackets.
    pub fn local_ip_and_port(&self) -> String {
        format!("{}:{}", self.rpc.ip_or_host_name, self.rpc.rpc_port)
    }

    /// `discoverTopology`: replace the matrix with what the RDMA provider sees.
    pub fn discover_topology(&self) -> Result<()> {
        let devices = crate::transport::rdma::discover_devices();
        *self.topology.lock() = topology::matrix_for(&devices);
        Ok(())
    }

    pub fn topology(&self) -> PriorityMatrix {
        self.topology.lock().clone()
    }

    fn transport_by_protocol(&self, proto: &str) -> Option<Arc<dyn Transport>> {
        self.transports
            .read()
            .iter()
            .find(|t| t.protocol() == proto)
            .cloned()
    }

    pub fn installed_protocols(&self) -> Vec<&'static str> {
        self.transports
            .read()
            .iter()
            .map(|t| t.protocol())
            .collect()
    }

    /// `installTransport`. `matrix_json` is args[0] (any protocol).
    pub fn install_transport(&self, proto: &str, matrix_json: Option<&str>) -> Result<()> {
        if self.transport_by_protocol(proto).is_some() {
            return Ok(());
        }
        if let Some(json) = matrix_json {
            *self.topology.lock() = topology::parse_matrix(json)?;
        }
        let ctx = TransportContext {
            local_server_name: self.metadata.local_name(),
            metadata: self.metadata.clone(),
            threads: self.threads.clone(),
        };
        let t: Arc<dyn Transport> = match proto {
            "tcp" => crate::transport::tcp::TcpTransport::install(ctx)?,
            "rdma" => crate::transport::rdma::RdmaTransport::install(ctx, self.topology())?,
            other => {
                return Err(Error::NotImplemented(format!(
                    "transport '{other}' is not supported (te-rs has tcp and rdma)"
                )))
            }
        };
        self.transports.write().push(t.clone());
        self.wire_fallback();
        let handler_target = t.clone();
        self.metadata
            .set_connection_handler(Some(Arc::new(move |req| handler_target.on_connection(req))));
        if let Some(l) = self.pending_listener.lock().take() {
            self.metadata.start_daemon(l)?;
        }
        // Replay earlier registrations, then publish (spec §1.2 installTransport).
        let buffers = self.memory.lock().buffers().to_vec();
        for b in &buffers {
            t.register_memory(b)?;
        }
        self.publish_local_desc()?;
        log::info!(
            "installed transport '{proto}' ({} regions replayed)",
            buffers.len()
        );
        Ok(())
    }

    /// With rdma and tcp both installed (either order) and
    /// `MC_TE_RS_TCP_FALLBACK` on, the tcp transport carries the RDMA
    /// slices that have no RDMA path left.
    fn wire_fallback(&self) {
        if !self.tcp_fallback {
            return;
        }
        let (Some(rdma), Some(tcp)) = (
            self.transport_by_protocol("rdma"),
            self.transport_by_protocol("tcp"),
        ) else {
            return;
        };
        if let Some(carrier) = tcp.carrier() {
            rdma.set_fallback(Some(carrier));
            log::info!("RDMA slices with no path left will go over TCP (MC_TE_RS_TCP_FALLBACK)");
        }
    }

    /// The TCP data port to advertise in an `rdma` descriptor as
    /// `tcp_fallback_port`: only with both transports installed and the
    /// failover on, so descriptors of single-transport engines keep their
    /// exact bytes.
    fn fallback_port(&self) -> Option<u16> {
        if !self.tcp_fallback || self.transport_by_protocol("rdma").is_none() {
            return None;
        }
        let port = self.transport_by_protocol("tcp")?.carrier()?.data_port();
        (port != 0).then_some(port)
    }

    /// `uninstallTransport`: a no-op upstream; kept so.
    pub fn uninstall_transport(&self, _proto: &str) -> Result<()> {
        Ok(())
    }

    /// Rebuild and publish the local descriptor from the last installed
    /// transport (the one whose `protocol` peers will use).
    fn publish_local_desc(&self) -> Result<()> {
        let primary = match self.transports.read().last() {
            Some(t) => t.clone(),
            None => return Ok(()),
        };
        let buffers = self.memory.lock().buffers().to_vec();
        let mut desc = SegmentDesc {
            name: self.metadata.local_name(),
            timestamp: timestamp_now(),
            te_rs_incarnation: Some(self.incarnation.clone()),
            ..Default::default()
        };
        primary.describe(&mut desc, &buffers);
        if desc.protocol == "rdma" {
            desc.tcp_fallback_port = self.fallback_port();
        }
        self.metadata.set_local_desc(desc)
    }

    // ---- segments -----------------------------------------------------------

    /// This engine's incarnation id (`te_rs_incarnation` in its descriptor).
    pub fn incarnation(&self) -> &str {
        &self.incarnation
    }

    pub fn open_segment(&self, name: &str) -> Result<SegmentId> {
        self.metadata
            .open_segment_while(name, &|| self.prepare_transports())
    }

    /// A peer's descriptor is on its way: let the transports start what a
    /// first transfer needs while the open waits on the network.
    fn prepare_transports(&self) {
        for t in self.transports.read().iter() {
            t.prepare_peer();
        }
    }

    /// `openSegmentNoCache`: refresh `name` if cached, then open it.
    pub fn open_segment_no_cache(&self, name: &str) -> Result<SegmentId> {
        self.metadata.sync_segment_cache(Some(name));
        self.metadata.open_segment(name)
    }

    pub fn close_segment(&self, _id: SegmentId) -> Result<()> {
        Ok(())
    }

    pub fn remove_local_segment(&self, name: &str) -> Result<()> {
        self.metadata.remove_segment(name)
    }

    pub fn sync_segment_cache(&self) {
        self.metadata.sync_segment_cache(None)
    }

    // ---- memory -------------------------------------------------------------

    pub fn register_local_memory(
        &self,
        addr: u64,
        length: u64,
        location: &str,
        remote_accessible: bool,
    ) -> Result<()> {
        let buf = LocalBuffer {
            addr,
            length,
            location: location.to_string(),
            remote_accessible,
        };
        self.register_buffers(vec![buf])
    }

    /// `registerLocalMemoryBatch`: all or nothing, one publish.
    pub fn register_local_memory_batch(
        &self,
        regions: &[(u64, u64)],
        location: &str,
    ) -> Result<()> {
        let bufs = regions
            .iter()
            .map(|&(addr, length)| LocalBuffer {
                addr,
                length,
                location: location.to_string(),
                remote_accessible: true,
            })
            .collect();
        self.register_buffers(bufs)
    }

    fn register_buffers(&self, bufs: Vec<LocalBuffer>) -> Result<()> {
        let mut mem = self.memory.lock();
        mem.check_new(&bufs)?;
        let transports = self.transports.read().clone();
        let mut done: Vec<(Arc<dyn Transport>, u64)> = Vec::new();
        for b in &bufs {
            for t in &transports {
                if let Err(e) = t.register_memory(b) {
                    for (t, addr) in done.iter().rev() {
                        let _ = t.unregister_memory(*addr);
                    }
                    return Err(e);
                }
                done.push((t.clone(), b.addr));
            }
        }
        for b in bufs {
            mem.add(b);
        }
        drop(mem);
        self.publish_local_desc()
    }

    pub fn unregister_local_memory(&self, addr: u64) -> Result<()> {
        self.unregister_local_memory_batch(&[addr])
    }

    /// Best effort over all addresses; the first error is returned.
    pub fn unregister_local_memory_batch(&self, addrs: &[u64]) -> Result<()> {
        let mut first_err = None;
        {
            let mut mem = self.memory.lock();
            let transports = self.transports.read().clone();
            for &addr in addrs {
                match mem.remove(addr) {
                    Ok(_) => {
                        for t in &transports {
                            if let Err(e) = t.unregister_memory(addr) {
                                first_err.get_or_insert(e);
                            }
                        }
                    }
                    Err(e) => {
                        first_err.get_or_insert(e);
                    }
                }
            }
        }
        let published = self.publish_local_desc();
        match first_err {
            Some(e) => Err(e),
            None => published,
        }
    }

    pub fn registered_buffers(&self) -> Vec<LocalBuffer> {
        self.memory.lock().buffers().to_vec()
    }

    // ---- batches ------------------------------------------------------------

    pub fn allocate_batch_id(&self, capacity: usize) -> u64 {
        self.batches.allocate(capacity)
    }

    /// `submitTransfer(WithNotify)`. Errors map to positive status codes.
    pub fn submit_transfer(
        &self,
        batch_id: u64,
        requests: &[TransferRequest],
        notify: Option<(String, String)>,
    ) -> Result<()> {
        self.submit(batch_id, requests, notify, None)
    }

    /// `teSubmitTransferWithDeadline`: as `submit_transfer`, and the tasks
    /// time out `within` from now (TIMEOUT, stopped as if cancelled).
    pub fn submit_transfer_within(
        &self,
        batch_id: u64,
        requests: &[TransferRequest],
        within: Duration,
    ) -> Result<()> {
        self.submit(batch_id, requests, None, Some(Instant::now() + within))
    }

    fn submit(
        &self,
        batch_id: u64,
        requests: &[TransferRequest],
        notify: Option<(String, String)>,
        deadline: Option<Instant>,
    ) -> Result<()> {
        let batch = self.batches.get(batch_id)?;
        let _guard = batch.submit_guard();
        if batch.len() + requests.len() > batch.capacity {
            return Err(Error::TooManyRequests(format!(
                "batch {batch_id:#x} holds {} of {} tasks, {} more requested",
                batch.len(),
                batch.capacity,
                requests.len()
            )));
        }
        // Route everything first: on a routing error no task is added.
        // Descriptor and transport per target id, looked up once per call
        // (a batch usually goes to one or a few segments); `which[i]` is
        // request i's entry.
        let mut targets: Vec<(SegmentId, Arc<SegmentDesc>, Arc<dyn Transport>)> = Vec::new();
        let mut which: Vec<usize> = Vec::with_capacity(requests.len());
        // The meter of each entry of `targets` (its transport and peer series).
        let mut meters = Vec::new();
        for r in requests {
            let ti = match targets.iter().rposition(|(id, _, _)| *id == r.target_id) {
                Some(i) => i,
                None => {
                    let target = self.metadata.segment_desc(r.target_id).ok_or_else(|| {
                        Error::InvalidArgument(format!(
                            "unknown segment id {} (call openSegment first)",
                            r.target_id
                        ))
                    })?;
                    let t = self
                        .transport_by_protocol(&target.protocol)
                        .ok_or_else(|| {
                            Error::NotSupportedTransport(format!(
                                "segment {} speaks '{}', which is not installed here",
                                r.target_id, target.protocol
                            ))
                        })?;
                    log::trace!(
                        "selectTransport route: target_id={} segment_protocol=\"{}\" chosen={}",
                        r.target_id,
                        target.protocol,
                        t.protocol()
                    );
                    meters.push(
                        self.task_metrics
                            .meter(r.target_id, &target.name, t.protocol()),
                    );
                    targets.push((r.target_id, target, t));
                    targets.len() - 1
                }
            };
            which.push(ti);
        }
        // One clock read per call: the tasks of a call start together.
        let now = Instant::now();
        // The earlier of the call's deadline and the batch's.
        let deadline = match (deadline, batch.deadline()) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        let tasks = self
            .batches
            .new_tasks(requests, now, &batch, deadline, |i| {
                meters[which[i]].clone()
            });
        let first_task = batch.len();
        batch.push_tasks(tasks.iter().cloned());
        if let (Some((name, msg)), Some(first)) = (notify, requests.first()) {
            batch.set_notify(PendingNotify {
                target: first.target_id,
                name,
                msg,
            });
        }
        // Hand each transport its share, keeping request order within it;
        // `group_of[i]` remembers where request i went. Submissions borrow
        // their target's descriptor from `targets` (no refcount per request).
        let mut groups: Vec<(&Arc<dyn Transport>, Vec<Submission<'_>>)> = Vec::new();
        let mut group_of: Vec<usize> = Vec::with_capacity(requests.len());
        for ((r, task), &ti) in requests.iter().zip(tasks).zip(&which) {
            let (_, target, t) = &targets[ti];
            let s = Submission {
                request: *r,
                task,
                target,
            };
            match groups.iter().position(|(g, _)| Arc::ptr_eq(g, t)) {
                Some(g) => {
                    groups[g].1.push(s);
                    group_of.push(g);
                }
                None => {
                    group_of.push(groups.len());
                    // Sized for the usual call: all requests to one transport.
                    let mut v = Vec::with_capacity(requests.len() + 1 - group_of.len());
                    v.push(s);
                    groups.push((t, v));
                }
            }
        }
        let mut first_err = None;
        for (g, (t, subs)) in groups.into_iter().enumerate() {
            if let Err(e) = t.submit(subs) {
                log::error!(
                    "submitTransfer: {} transport refused the requests: {e}",
                    t.protocol()
                );
                // An `Err` means none of them started: fail them all (not
                // under the tasks lock: a failure pokes the batch's waiters,
                // whose check reads the tasks).
                let ours: Vec<Arc<Task>> = batch.tasks()[first_task..]
                    .iter()
                    .zip(&group_of)
                    .filter(|(_, &og)| og == g)
                    .map(|(t, _)| t.clone())
                    .collect();
                ours.iter().for_each(|t| t.fail_all());
                first_err.get_or_insert(e);
            }
        }
        match first_err {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    /// `getTransferStatus`. Sends the batch's notify when it just completed.
    pub fn transfer_status(&self, batch_id: u64, task_id: usize) -> Result<TransferStatus> {
        let (status, notify, expired) = self.evaluate_task(batch_id, task_id)?;
        if expired {
            self.abandon_stopped();
        }
        if let Some(n) = notify {
            if let Err(e) = self.send_notify(n.target, &n.name, &n.msg) {
                log::error!("notify after batch {batch_id:#x} completed: {e}");
            }
        }
        Ok(status)
    }

    /// A task's status as the caller sees it (TIMEOUT past the slice
    /// timeout, terminal states marked observed), and the batch's notify
    /// if this poll saw the batch complete. Under the batch locks, which
    /// `transfer_status` drops before sending the notify.
    fn evaluate_task(
        &self,
        batch_id: u64,
        task_id: usize,
    ) -> Result<(TransferStatus, Option<PendingNotify>, bool)> {
        self.batches.with(batch_id, |batch| {
            let mut expired = false;
            let (status, bytes, all_done) = {
                let tasks = batch.tasks();
                let task = tasks.get(task_id).ok_or_else(|| {
                    Error::InvalidArgument(format!(
                        "task {task_id} out of range: batch {batch_id:#x} has {} tasks",
                        tasks.len()
                    ))
                })?;
                let mut status = task.status();
                match status {
                    TaskStatus::Completed if task.mark_observed_terminal() => {
                        if let Some(m) = &self.metrics {
                            m.counters.record(task.transferred_bytes(), task.age());
                        }
                    }
                    TaskStatus::Completed => {}
                    TaskStatus::Failed | TaskStatus::Canceled | TaskStatus::Timeout => {
                        task.mark_observed_terminal();
                    }
                    // Past its deadline (te-rs extension): stop it; it reads
                    // TIMEOUT once the transports let go of it.
                    TaskStatus::Waiting
                        if task.deadline().is_some() && task.should_stop(Instant::now()) =>
                    {
                        expired = true;
                    }
                    TaskStatus::Waiting if self.slice_timeout.is_some_and(|t| task.age() > t) => {
                        status = TaskStatus::Timeout;
                    }
                    _ => {}
                }
                let all_done = status == TaskStatus::Completed
                    && batch.has_notify()
                    && tasks.iter().all(|t| t.status() == TaskStatus::Completed);
                (status, task.transferred_bytes(), all_done)
            };
            let notify = if all_done { batch.take_notify() } else { None };
            Ok((
                TransferStatus {
                    status,
                    transferred_bytes: bytes,
                },
                notify,
                expired,
            ))
        })?
    }

    pub fn free_batch_id(&self, batch_id: u64) -> Result<()> {
        self.batches.free(batch_id)
    }

    // ---- cancel, deadlines, release, wait (te-rs extension) ---------------------

    /// Tasks were told to stop: every transport drops their queued slices
    /// and fences their in-flight ones now instead of at its next look.
    fn abandon_stopped(&self) {
        let transports: Vec<Arc<dyn Transport>> = self.transports.read().clone();
        for t in transports {
            t.abandon_stopped();
        }
    }

    /// Cancel task `task` of the batch (all: `None`) and wait up to
    /// `timeout` until it ended. True once every task concerned is
    /// terminal: CANCELED, or COMPLETED/FAILED if it ended first; from
    /// then on no transport touches its buffers.
    pub fn cancel(&self, batch_id: u64, task: Option<usize>, timeout: Duration) -> Result<bool> {
        let batch = self.batches.get(batch_id)?;
        if let Some(i) = task {
            let n = batch.len();
            if i >= n {
                return Err(Error::InvalidArgument(format!(
                    "task {i} out of range: batch {batch_id:#x} has {n} tasks"
                )));
            }
        }
        if batch.stop_tasks(task, StopReason::Canceled) > 0 {
            self.abandon_stopped();
        }
        self.wait_for(&batch, task, timeout)
    }

    /// Tasks of the batch, submitted so far and later, time out `within` from now.
    pub fn set_batch_deadline(&self, batch_id: u64, within: Duration) -> Result<()> {
        let batch = self.batches.get(batch_id)?;
        batch.set_deadline(Instant::now() + within);
        if batch.expire(Instant::now()).0 > 0 {
            self.abandon_stopped();
        }
        Ok(())
    }

    /// Wait up to `timeout` for every task of the batch to end (enforcing
    /// deadlines as they pass). True if they all did.
    pub fn wait_batch(&self, batch_id: u64, timeout: Duration) -> Result<bool> {
        let batch = self.batches.get(batch_id)?;
        self.wait_for(&batch, None, timeout)
    }

    fn wait_for(&self, batch: &Batch, task: Option<usize>, timeout: Duration) -> Result<bool> {
        let until = Instant::now().checked_add(timeout);
        loop {
            let (expired, next) = batch.expire(Instant::now());
            if expired > 0 {
                self.abandon_stopped();
            }
            let wake = match (until, next) {
                (Some(u), Some(n)) => Some(u.min(n)),
                (u, n) => u.or(n),
            };
            if batch.signal.wait_until(wake, || batch.ended(task)) {
                return Ok(true);
            }
            if until.is_some_and(|u| Instant::now() >= u) {
                return Ok(false);
            }
        }
    }

    /// Release the batch id now, whatever its tasks' state: unfinished
    /// tasks are cancelled, and their memory is freed when the last
    /// in-flight piece ends. Never `BatchBusy`.
    pub fn release_batch_id(&self, batch_id: u64) -> Result<()> {
        let batch = self.batches.release(batch_id)?;
        if batch.stop_tasks(None, StopReason::Canceled) > 0 {
            self.abandon_stopped();
        }
        self.batches.recycle(&batch);
        Ok(())
    }

    /// (batch ids in the table, batches alive: in the table or released
    /// with pieces still in flight).
    pub fn batch_counts(&self) -> (usize, usize) {
        (self.batches.len(), self.batches.live())
    }

    // ---- notifications --------------------------------------------------------

    /// `genNotifyInEngine`: one Notify RPC to the owner of `target`.
    pub fn send_notify(&self, target: SegmentId, name: &str, msg: &str) -> Result<()> {
        let server = self
            .metadata
            .segment_desc(target)
            .map(|d| d.name.clone())
            .ok_or_else(|| Error::Metadata(format!("unknown segment id {target}")))?;
        self.metadata.send_notify(&server, name, msg)
    }

    pub fn take_notifies(&self) -> Vec<(String, String)> {
        self.metadata.take_notifies()
    }

    // ---- diagnostics ------------------------------------------------------------

    pub fn nic_load_stats(&self) -> Vec<NicLoad> {
        self.transports
            .read()
            .iter()
            .flat_map(|t| t.nic_load())
            .map(|(device, inflight_bytes, ewma_bandwidth_bps)| NicLoad {
                device,
                inflight_bytes,
                ewma_bandwidth_bps,
            })
            .collect()
    }

    /// `showLinks`: local NICs, endpoints and the priority matrix.
    pub fn show_links(&self, json: bool) -> String {
        let transports: serde_json::Map<String, serde_json::Value> = self
            .transports
            .read()
            .iter()
            .map(|t| {
                let mut links = t.links();
                if let Some(m) = links.as_object_mut() {
                    let tasks = self.task_metrics.transport_json(t.protocol());
                    m.insert("tasks".into(), tasks);
                }
                (t.protocol().to_string(), links)
            })
            .collect();
        let topo = self.topology();
        if json {
            let v = serde_json::json!({
                "segment": self.metadata.local_name(),
                "transports": transports,
                "topology": topo,
            });
            serde_json::to_string_pretty(&v).unwrap_or_default()
        } else {
            let mut s = format!("=== Segment {} ===\n", self.metadata.local_name());
            for (proto, links) in &transports {
                s.push_str(&format!(
                    "=== Transport {proto} ===\n{}\n",
                    serde_json::to_string_pretty(links).unwrap_or_default()
                ));
            }
            s.push_str("=== Topology (NIC Selection) ===\n");
            for (loc, (pref, avail)) in &topo {
                s.push_str(&format!(
                    "  {loc} -> preferred: {pref:?}  available: {avail:?}\n"
                ));
            }
            s
        }
    }

    // ---- metrics ------------------------------------------------------------------

    /// Serve `/metrics` if `MC_TE_METRIC_HTTP_PORT` is set. The server
    /// holds the engine weakly, so it never keeps it alive.
    fn start_metrics_endpoint(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        let render: crate::metrics::http::Render = Arc::new(move |full| {
            let engine = weak.upgrade()?;
            if engine.is_destroyed() {
                return None;
            }
            Some(if full {
                engine.metrics_text()
            } else {
                String::new()
            })
        });
        let server = crate::metrics::http::MetricsServer::from_env(render, &self.threads);
        *self.metrics_http.lock() = server;
    }

    /// The port `/metrics` is served on, if it is.
    pub fn metrics_port(&self) -> Option<u16> {
        self.metrics_http.lock().as_ref().map(|s| s.port())
    }

    pub fn task_metrics(&self) -> &crate::metrics::tasks::TaskMetrics {
        &self.task_metrics
    }

    /// Every metric in Prometheus text format (what `/metrics` serves).
    pub fn metrics_text(&self) -> String {
        let mut e = crate::metrics::exposition::Exposition::default();
        e.single(
            "te_up",
            "gauge",
            "1 while the engine is up (0 after destroy).",
            if self.is_destroyed() { 0.0 } else { 1.0 },
        );
        e.family(
            "te_transport_installed",
            "gauge",
            "Transports installed, by protocol.",
        );
        let transports = self.transports.read().clone();
        for t in &transports {
            e.sample(
                "te_transport_installed",
                &[("transport", t.protocol())],
                1.0,
            );
        }
        self.task_metrics.write(&mut e);
        for t in &transports {
            t.write_metrics(&mut e);
        }
        self.metadata.write_metrics(&mut e);
        e.single(
            "te_engine_threads",
            "gauge",
            "Threads the engine has running.",
            self.threads() as f64,
        );
        e.finish()
    }

    // ---- teardown ---------------------------------------------------------------

    /// Stop every thread and close every socket; also unpublishes our keys.
    /// Idempotent.
    pub fn shutdown(&self) {
        if self.destroyed.swap(true, Ordering::AcqRel) {
            return;
        }
        self.metadata.remove_rpc_meta();
        let transports: Vec<Arc<dyn Transport>> = std::mem::take(&mut *self.transports.write());
        self.metadata.set_connection_handler(None);
        for t in &transports {
            t.shutdown();
        }
        if !transports.is_empty() {
            self.metadata.remove_local_desc();
        }
        self.metadata.shutdown();
        self.pending_listener.lock().take();
        if let Some(m) = &self.metrics {
            m.stop();
        }
        if let Some(s) = self.metrics_http.lock().take() {
            s.stop();
        }
        log::info!("transfer engine '{}' destroyed", self.metadata.local_name());
    }

    /// Threads this engine has running (handshake daemon, keeper, transports'
    /// threads, reporter), whatever else runs in the process; 0 once it is
    /// shut down and its threads have ended.
    pub fn threads(&self) -> usize {
        self.threads.running()
    }

    pub fn is_destroyed(&self) -> bool {
        self.destroyed.load(Ordering::Acquire)
    }
}

/// `MC_TE_RS_TCP_FALLBACK`: on unless `0`, `false`, `no` or `off`.
fn tcp_fallback_enabled() -> bool {
    !matches!(
        env_str("MC_TE_RS_TCP_FALLBACK")
            .map(|v| v.trim().to_ascii_lowercase())
            .as_deref(),
        Some("0" | "false" | "no" | "off")
    )
}

impl Drop for TransferEngine {
    fn drop(&mut self) {
        self.shutdown();
    }
}
