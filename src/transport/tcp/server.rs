//! The data server: an acceptor thread and one thread per connection, each
//! serving requests sequentially (spec §7.3 server loop). Pipelined small
//! requests are parsed from one receive buffer and answered together.
//!
//! Payloads move straight between the socket and registered memory. The
//! region list is checked per request; unregistering a region while a
//! transfer into it runs only affects later requests. As upstream, the owner
//! must not free registered memory while peers may still transfer into it:
//! the bytes land wherever the (already validated) address points.

use std::collections::HashMap;
use std::io;
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::config::TcpConfig;
use super::inbuf::{InBuf, INBUF_CAP};
use super::regions::Regions;
use super::sock::{self, IoSpan};
use super::wire::{Header, Status, HEADER_LEN};
use crate::error::{Error, Result};

struct Shared {
    regions: Arc<Regions>,
    cfg: TcpConfig,
    stop: AtomicBool,
    /// Clones of live connections, so shutdown can wake their threads.
    conns: Mutex<HashMap<u64, TcpStream>>,
    /// Connection threads still running.
    live: Mutex<usize>,
    live_cv: Condvar,
    next_id: AtomicU64,
}

pub struct DataServer {
    port: u16,
    listener: TcpListener,
    shared: Arc<Shared>,
    acceptor: Mutex<Option<JoinHandle<()>>>,
}

impl DataServer {
    /// Serve requests arriving on `listener` (already bound) against `regions`.
    pub fn start(listener: TcpListener, regions: Arc<Regions>, cfg: TcpConfig) -> Result<Self> {
        let port = listener
            .local_addr()
            .map_err(|e| Error::Socket(format!("tcp data listener address: {e}")))?
            .port();
        let shared = Arc::new(Shared {
            regions,
            cfg,
            stop: AtomicBool::new(false),
            conns: Mutex::new(HashMap::new()),
            live: Mutex::new(0),
            live_cv: Condvar::new(),
            next_id: AtomicU64::new(0),
        });
        let l = listener
            .try_clone()
            .map_err(|e| Error::Socket(format!("tcp data listener: {e}")))?;
        let s = shared.clone();
        let acceptor = std::thread::Builder::new()
            .name(format!("te-tcp-accept-{port}"))
            .spawn(move || accept_loop(l, s))
            .map_err(|e| Error::Socket(format!("spawning tcp acceptor: {e}")))?;
        log::info!("tcp data server listening on port {port}");
        Ok(DataServer {
            port,
            listener,
            shared,
            acceptor: Mutex::new(Some(acceptor)),
        })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Close the listener and every connection, then join all threads.
    pub fn shutdown(&self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        // Wakes the blocked accept (Linux returns EINVAL); the poke below
        // covers systems where it does not.
        sock::shutdown_fd(self.listener.as_raw_fd());
        let _ = TcpStream::connect_timeout(
            &(std::net::Ipv4Addr::LOCALHOST, self.port).into(),
            Duration::from_millis(100),
        );
        if let Some(h) = self.acceptor.lock().take() {
            let _ = h.join();
        }
        for (_, c) in self.shared.conns.lock().drain() {
            sock::shutdown_fd(c.as_raw_fd());
        }
        let mut live = self.shared.live.lock();
        while *live > 0 {
            self.shared.live_cv.wait(&mut live);
        }
        log::info!("tcp data server on port {} stopped", self.port);
    }
}

impl Drop for DataServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Counts a connection thread as live until dropped.
struct LiveGuard(Arc<Shared>, u64);

impl Drop for LiveGuard {
    fn drop(&mut self) {
        self.0.conns.lock().remove(&self.1);
        let mut live = self.0.live.lock();
        *live -= 1;
        self.0.live_cv.notify_all();
    }
}

fn accept_loop(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let (stream, peer) = match listener.accept() {
            Ok(x) => x,
            Err(e) => {
                if shared.stop.load(Ordering::Acquire) {
                    return;
                }
                if e.kind() != io::ErrorKind::Interrupted {
                    log::warn!("tcp data server: accept failed: {e}");
                    std::thread::sleep(Duration::from_millis(10));
                }
                continue;
            }
        };
        if shared.stop.load(Ordering::Acquire) {
            return;
        }
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        {
            let mut live = shared.live.lock();
            if *live >= shared.cfg.max_server_connections {
                log::warn!(
                    "tcp data server: refusing {peer}: {} connections already served",
                    *live
                );
                continue;
            }
            let clone = match stream.try_clone() {
                Ok(c) => c,
                Err(e) => {
                    log::warn!("tcp data server: cannot track connection from {peer}: {e}");
                    continue;
                }
            };
            *live += 1;
            shared.conns.lock().insert(id, clone);
        }
        let guard = LiveGuard(shared.clone(), id);
        let s = shared.clone();
        let spawned = std::thread::Builder::new()
            .name("te-tcp-serve".into())
            .spawn(move || {
                let _guard = guard;
                if let Err(e) = serve(&s, &stream) {
                    log::debug!("tcp data server: connection from {peer} ended: {e}");
                }
            });
        if let Err(e) = spawned {
            // The closure (and its guard) was dropped, so the count is right.
            log::warn!("tcp data server: cannot spawn a thread for {peer}: {e}");
        }
    }
}

/// Replies not yet sent: status frames and READ bodies, gathered so that a
/// pipeline of small requests is answered with one `sendmsg`.
struct Replies {
    spans: Vec<IoSpan>,
    bytes: usize,
    /// A READ body is pending: its bytes are read from memory only when sent.
    has_body: bool,
}

/// Send pending replies once they reach this size (bounds the delay for the
/// first reply of a long pipeline).
const FLUSH_BYTES: usize = 256 * 1024;
/// ... or this many spans.
const FLUSH_SPANS: usize = 128;
/// WRITE bodies from this size on are received without the buffer.
const BIG_WRITE: usize = 16 * 1024;

impl Replies {
    fn push(&mut self, span: IoSpan) {
        if span.len > 0 {
            self.bytes += span.len;
            self.spans.push(span);
        }
    }

    fn flush(&mut self, fd: i32) -> io::Result<()> {
        if self.spans.is_empty() {
            return Ok(());
        }
        // SAFETY: status spans point at the caller's live status frames; body
        // spans lie inside registered regions (validated when queued), which
        // the owner keeps alive while peers may transfer; send only reads.
        let res = unsafe { sock::send_all(fd, &self.spans) };
        self.spans.clear();
        self.bytes = 0;
        self.has_body = false;
        res
    }
}

/// One connection: header, validate, move the payload, repeat. Headers are
/// read through a buffer; replies are flushed before waiting for input.
fn serve(shared: &Shared, stream: &TcpStream) -> io::Result<()> {
    sock::tune(stream, shared.cfg.status_timeout, shared.cfg.socket_buffer)?;
    let fd = stream.as_raw_fd();
    let ok = Status::Ok.encode();
    let mut inb = InBuf::new(INBUF_CAP);
    let mut out = Replies {
        spans: Vec::with_capacity(FLUSH_SPANS + 2),
        bytes: 0,
        has_body: false,
    };
    let mut big_writes = false;
    loop {
        let Some(raw) = inb.take::<HEADER_LEN>() else {
            // Never wait for the peer while it may be waiting for our answers.
            out.flush(fd)?;
            if inb.is_empty() && !sock::poll_readable(fd, shared.cfg.server_idle)? {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "idle connection closed",
                ));
            }
            if shared.stop.load(Ordering::Acquire) {
                return Ok(());
            }
            // After a large WRITE, expect another: read just the header so its
            // body goes straight to memory instead of through the buffer.
            let max = if big_writes {
                HEADER_LEN - inb.len()
            } else {
                INBUF_CAP
            };
            match inb.fill_max(fd, max) {
                Ok(_) => continue,
                // EOF between requests is the normal end of a session.
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof && inb.is_empty() => {
                    return Ok(())
                }
                Err(e) => return Err(e),
            }
        };
        let h = Header::decode(&raw);
        let v2 = h.is_v2();
        if !shared.regions.allows(h.addr, h.size) || h.size > isize::MAX as u64 {
            log::warn!(
                "tcp data server: rejecting {} of {} bytes at {:#x}: not inside one registered region",
                if h.is_write() { "WRITE" } else { "READ" },
                h.size,
                h.addr
            );
            out.flush(fd)?;
            if v2 {
                let _ = sock::send_bytes(fd, &Status::AddrRejected.encode());
            }
            return Ok(());
        }
        let body = IoSpan {
            ptr: h.addr as *mut u8,
            len: h.size as usize,
        };
        let status = IoSpan {
            ptr: ok.as_ptr() as *mut u8,
            len: if v2 { ok.len() } else { 0 },
        };
        big_writes = h.is_write() && body.len >= BIG_WRITE;
        if h.is_write() {
            // Earlier READs must send the bytes as they were before this WRITE.
            if out.has_body {
                out.flush(fd)?;
            }
            // SAFETY: the range lies inside a region the owner registered and
            // promised to keep alive while peers may transfer into it.
            unsafe { inb.read_into(fd, body)? };
            out.push(status);
        } else {
            out.push(status);
            out.push(body);
            out.has_body = true;
        }
        if out.bytes >= FLUSH_BYTES || out.spans.len() >= FLUSH_SPANS {
            out.flush(fd)?;
        }
    }
}
