//! Handshake RPC server (spec §4.2), concurrent unlike upstream's: an accept
//! thread plus one thread per connection, so a slow or silent client never
//! blocks other handshakes.
//!
//! Per connection: read one frame, dispatch, reply with the request's framing,
//! `shutdown(SHUT_WR)`, wait (bounded) for the client's EOF, close. Invalid
//! frames are logged with the peer address and closed without a reply.

use std::collections::HashMap;
use std::io::{self, Read};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::desc::{NotifyDesc, ProbeReply};
use super::frame::{self, Frame, MsgType};
use super::HandShakeDesc;
use crate::error::{Error, Result};
use crate::metadata::json;

/// What the server asks its owner for each request type.
pub trait HandshakeHandler: Send + Sync {
    /// Connection (type 0, or legacy framing).
    fn on_connection(&self, req: HandShakeDesc) -> HandShakeDesc;
    /// Metadata (type 1): the reply JSON text (our local descriptor, or `null`).
    fn on_metadata(&self, requester_json: &str) -> String;
    /// Notify (type 2).
    fn on_notify(&self, name: String, msg: String);
}

/// Connections served at once; further ones are closed immediately.
const MAX_CONNECTIONS: usize = 256;
/// Socket read timeout per connection (upstream `SO_RCVTIMEO` 5 s).
const READ_TIMEOUT: Duration = Duration::from_secs(5);
/// Whole-connection budget, so a client trickling bytes cannot hold a thread.
const CONNECTION_DEADLINE: Duration = Duration::from_secs(30);
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
/// Accept-loop poll interval; bounds how long `stop` waits for the loop.
const ACCEPT_POLL: Duration = Duration::from_millis(20);

/// Open connections, so `stop` can shut their sockets and unblock readers.
#[derive(Default)]
struct Connections {
    next_id: AtomicU64,
    open: Mutex<HashMap<u64, TcpStream>>,
    threads: Mutex<Vec<JoinHandle<()>>>,
}

pub struct HandshakeServer {
    port: u16,
    stopping: Arc<AtomicBool>,
    accept_thread: Mutex<Option<JoinHandle<()>>>,
    conns: Arc<Connections>,
}

impl HandshakeServer {
    /// Serve `listener` on background threads until `stop`.
    pub fn start(listener: TcpListener, handler: Arc<dyn HandshakeHandler>) -> Result<Self> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let stopping = Arc::new(AtomicBool::new(false));
        let conns = Arc::new(Connections::default());
        let accept_thread = {
            let stopping = stopping.clone();
            let conns = conns.clone();
            std::thread::Builder::new()
                .name("te-handshake".into())
                .spawn(move || accept_loop(listener, handler, stopping, conns))
                .map_err(|e| Error::Socket(format!("spawning handshake accept thread: {e}")))?
        };
        log::info!("handshake daemon listening on port {port}");
        Ok(HandshakeServer {
            port,
            stopping,
            accept_thread: Mutex::new(Some(accept_thread)),
            conns,
        })
    }

    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Stop accepting, cut open connections, join threads. Idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        if let Some(t) = self.accept_thread.lock().take() {
            if t.join().is_err() {
                log::error!("handshake accept thread panicked");
            }
        }
        // The accept loop is gone, so no new connection can register now.
        for stream in self.conns.open.lock().values() {
            let _ = stream.shutdown(Shutdown::Both);
        }
        let threads = std::mem::take(&mut *self.conns.threads.lock());
        let me = std::thread::current().id();
        for t in threads {
            // A handler that stops its own daemon must not join itself.
            if t.thread().id() == me {
                continue;
            }
            if t.join().is_err() {
                log::error!("handshake connection thread panicked");
            }
        }
    }
}

impl Drop for HandshakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn accept_loop(
    listener: TcpListener,
    handler: Arc<dyn HandshakeHandler>,
    stopping: Arc<AtomicBool>,
    conns: Arc<Connections>,
) {
    while !stopping.load(Ordering::SeqCst) {
        match listener.accept() {
            Ok((stream, peer)) => spawn_connection(stream, peer, &handler, &conns),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::sleep(ACCEPT_POLL),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => {
                // e.g. EMFILE: back off instead of spinning.
                log::warn!("handshake accept failed: {e}");
                std::thread::sleep(ACCEPT_POLL * 5);
            }
        }
    }
}

fn spawn_connection(
    stream: TcpStream,
    peer: SocketAddr,
    handler: &Arc<dyn HandshakeHandler>,
    conns: &Arc<Connections>,
) {
    let mut threads = conns.threads.lock();
    threads.retain(|t| !t.is_finished());
    if threads.len() >= MAX_CONNECTIONS {
        log::warn!("handshake from {peer} refused: {MAX_CONNECTIONS} connections already open");
        return;
    }
    let registered = match stream.try_clone() {
        Ok(s) => s,
        Err(e) => {
            log::warn!("handshake from {peer} dropped: {e}");
            return;
        }
    };
    let id = conns.next_id.fetch_add(1, Ordering::Relaxed);
    conns.open.lock().insert(id, registered);
    let guard = OpenGuard {
        id,
        conns: conns.clone(),
    };
    let handler = handler.clone();
    let spawned = std::thread::Builder::new()
        .name("te-handshake-conn".into())
        .spawn(move || {
            let _guard = guard;
            serve_connection(stream, peer, handler.as_ref());
        });
    match spawned {
        Ok(t) => threads.push(t),
        // The closure (and its guard) was dropped, deregistering the socket.
        Err(e) => log::warn!("handshake from {peer} dropped: cannot spawn thread: {e}"),
    }
}

/// Removes a connection from the open set however its thread ends.
struct OpenGuard {
    id: u64,
    conns: Arc<Connections>,
}

impl Drop for OpenGuard {
    fn drop(&mut self) {
        self.conns.open.lock().remove(&self.id);
    }
}

/// A reader that re-arms the socket timeout before each read so that neither
/// one read nor the whole connection exceeds its budget.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                "handshake connection deadline passed",
            ));
        }
        self.stream.set_read_timeout(Some(left.min(READ_TIMEOUT)))?;
        (&*self.stream).read(buf)
    }
}

fn serve_connection(stream: TcpStream, peer: SocketAddr, handler: &dyn HandshakeHandler) {
    let _ = stream.set_nodelay(true);
    let _ = stream.set_write_timeout(Some(WRITE_TIMEOUT));
    let mut reader = DeadlineReader {
        stream: &stream,
        deadline: Instant::now() + CONNECTION_DEADLINE,
    };
    let request = match frame::read_frame(&mut reader, frame::max_frame_len()) {
        Ok(f) => f,
        Err(e) => {
            log::warn!("handshake from {peer} rejected: {e}");
            return;
        }
    };
    let reply = match dispatch(&request, handler) {
        Ok(r) => r,
        Err(e) => {
            log::warn!("handshake from {peer} rejected: {e}");
            return;
        }
    };
    if let Err(e) = frame::write_frame(&mut &stream, request.framing, &reply) {
        log::warn!("handshake reply to {peer} failed: {e}");
        return;
    }
    // Half-close, then let the client close first (upstream does the same).
    let _ = stream.shutdown(Shutdown::Write);
    let mut sink = [0u8; 512];
    loop {
        match reader.read(&mut sink) {
            Ok(0) => break,
            Ok(_) => {}
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(_) => break,
        }
    }
}

/// The reply JSON for one request, or why there is none.
fn dispatch(request: &Frame, handler: &dyn HandshakeHandler) -> Result<String> {
    let text = request.text();
    match request.framing.msg_type() {
        MsgType::Connection => {
            let desc: HandShakeDesc = serde_json::from_str(text)
                .map_err(|e| Error::MalformedJson(format!("Connection request: {e}")))?;
            Ok(json::to_fast_writer(&handler.on_connection(desc)))
        }
        MsgType::Metadata => Ok(handler.on_metadata(text)),
        MsgType::Notify => {
            let n: NotifyDesc = serde_json::from_str(text)
                .map_err(|e| Error::MalformedJson(format!("Notify request: {e}")))?;
            handler.on_notify(n.name, n.notify_msg);
            Ok(json::to_fast_writer(&NotifyDesc::success()))
        }
        MsgType::Probe => Ok(json::to_fast_writer(&ProbeReply {
            status: "success".into(),
        })),
    }
}
