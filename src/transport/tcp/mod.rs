//! TCP transport, wire-compatible with Mooncake's v1/v2 (spec §7).
//!
//! * `wire`: header and status-frame codec.
//! * `server` + `server_conn`: event loops serving peers' requests against `regions`.
//! * `client` → `peer` → `client_conn`: per-peer FIFO and persistent
//!   pipelined connections, driven by the shared `client_loop` threads.
//!
//! Caveat (as upstream): memory must not be freed or unregistered while
//! transfers into or out of it may still run; the transport validates
//! addresses per request but cannot stop bytes already on their way.

pub mod client;
pub mod client_conn;
pub mod client_loop;
pub mod config;
pub mod counters;
pub mod inbuf;
pub mod peer;
pub mod queue;
pub mod regions;
pub mod server;
pub mod server_conn;
pub mod sock;
pub mod wire;

use std::sync::Arc;

use crate::error::Result;
use crate::metadata::descriptor::{BufferDesc, SegmentDesc};
use crate::task::Opcode;
use crate::threads::ThreadCount;
use crate::transport::{
    CarriedSlice, LocalBuffer, SliceCarrier, Submission, Transport, TransportContext,
};
use client::TcpClient;
use config::TcpConfig;
use regions::Regions;
use server::DataServer;

/// The protocol version we advertise: we send status frames (v2).
pub const TCP_PROTO_VERSION: u32 = 2;

pub struct TcpTransport {
    ctx: TransportContext,
    regions: Arc<Regions>,
    server: DataServer,
    client: TcpClient,
    /// The data server's loops, the client's loops and connecting threads.
    threads: ThreadCount,
}

impl TcpTransport {
    /// Bind the data acceptor in the RPC port range and start serving.
    pub fn install(ctx: TransportContext) -> Result<Arc<TcpTransport>> {
        Self::install_with_config(ctx, TcpConfig::from_env())
    }

    /// `install` with explicit settings (tests, embedding).
    pub fn install_with_config(ctx: TransportContext, cfg: TcpConfig) -> Result<Arc<TcpTransport>> {
        let listener = crate::net::bind_in_rpc_range()?;
        let regions = Arc::new(Regions::default());
        let threads = ctx.threads.child();
        let server = DataServer::start(listener, regions.clone(), cfg.clone(), threads.clone())?;
        let client = TcpClient::new(cfg, ctx.metadata.clone(), threads.clone());
        Ok(Arc::new(TcpTransport {
            ctx,
            regions,
            server,
            client,
            threads,
        }))
    }

    /// The data port peers connect to (`tcp_data_port`).
    pub fn data_port(&self) -> u16 {
        self.server.port()
    }

    /// Connections the data server currently serves (diagnostics, tests).
    pub fn open_data_connections(&self) -> usize {
        self.server.open_connections()
    }

    /// Submissions sent by the submitting thread on an idle connection
    /// instead of through a lane (diagnostics, tests).
    pub fn short_path_sends(&self) -> u64 {
        self.client.short_path_sends()
    }

    /// Requests re-sent on a new connection because a pooled one turned
    /// out closed by the peer (idle timeout, replaced peer) before it
    /// answered them.
    pub fn resent_requests(&self) -> u64 {
        self.client.resent_requests()
    }

    /// Open client data connections over all peers (a peer idle for
    /// `lane_idle` has none).
    pub fn client_connections(&self) -> usize {
        self.client.connections()
    }

    /// Threads this transport has running: the data server's loops, the
    /// client's loops and connecting threads. Does not grow with peers or
    /// connections.
    pub fn threads(&self) -> usize {
        self.threads.running()
    }

    /// Client threads: the event loops plus connects under way. Does not
    /// grow with the number of peers.
    pub fn client_threads(&self) -> usize {
        self.client.threads()
    }

    /// Connections the data server closed for silence or stalls.
    pub fn reclaimed_data_connections(&self) -> usize {
        self.server.reclaimed_connections()
    }
}

impl Transport for TcpTransport {
    fn protocol(&self) -> &'static str {
        "tcp"
    }

    fn register_memory(&self, buf: &LocalBuffer) -> Result<()> {
        self.regions.add(buf.addr, buf.length);
        Ok(())
    }

    fn unregister_memory(&self, addr: u64) -> Result<()> {
        self.regions.remove(addr)
    }

    fn describe(&self, desc: &mut SegmentDesc, buffers: &[LocalBuffer]) {
        desc.protocol = "tcp".into();
        desc.tcp_data_port = self.data_port();
        desc.tcp_proto_version = TCP_PROTO_VERSION;
        desc.buffers = buffers
            .iter()
            .map(|b| BufferDesc {
                addr: b.addr,
                length: b.length,
                lkey: None,
                name: self.ctx.local_server_name.clone(),
                rkey: None,
            })
            .collect();
    }

    fn submit(&self, subs: Vec<Submission<'_>>) -> Result<()> {
        self.client.submit(subs);
        Ok(())
    }

    fn prepare_peer(&self) {
        self.client.start_first_loop();
    }

    fn carrier(self: Arc<Self>) -> Option<Arc<dyn SliceCarrier>> {
        Some(self)
    }

    fn links(&self) -> serde_json::Value {
        serde_json::json!({
            "protocol": "tcp",
            "tcp_data_port": self.data_port(),
            "peers": self.client.peer_count(),
            "client_connections": self.client.connections(),
            "client_threads": self.client.threads(),
            "short_path_sends": self.client.short_path_sends(),
            "resent_requests": self.client.resent_requests(),
            "replaced_owners": self.client.replaced_owners(),
            "server_connections": self.open_data_connections(),
            "events": self.client.counters().json(),
        })
    }

    fn abandon_stopped(&self) {
        self.client.abandon_stopped();
    }

    fn write_metrics(&self, e: &mut crate::metrics::exposition::Exposition) {
        self.client.counters().write(e);
        e.family(
            "te_tcp_connections",
            "gauge",
            "Open TCP data connections, by side (client: ours to peers; server: peers' to us).",
        );
        let n = self.client.connections() as f64;
        e.sample("te_tcp_connections", &[("side", "client")], n);
        let n = self.open_data_connections() as f64;
        e.sample("te_tcp_connections", &[("side", "server")], n);
        e.single(
            "te_tcp_peers",
            "gauge",
            "Peers the TCP client has state for.",
            self.client.peer_count() as f64,
        );
        e.single(
            "te_tcp_resent_requests_total",
            "counter",
            "Requests re-sent on a new connection because a pooled one was found closed.",
            self.client.resent_requests() as f64,
        );
    }

    fn shutdown(&self) {
        self.client.shutdown();
        self.server.shutdown();
    }
}

impl SliceCarrier for TcpTransport {
    fn data_port(&self) -> u16 {
        TcpTransport::data_port(self)
    }

    fn carry(&self, peer: &str, port: u16, slices: Vec<CarriedSlice>) {
        let jobs = slices
            .into_iter()
            .map(|s| queue::Job {
                task: s.task,
                write: s.opcode == Opcode::Write,
                local: s.source,
                remote: s.dest,
                len: s.length,
                resends: 0,
                after_break: false,
            })
            .collect();
        self.client.carry(peer, port, jobs);
    }
}

impl Drop for TcpTransport {
    fn drop(&mut self) {
        self.client.shutdown();
        self.server.shutdown();
    }
}
