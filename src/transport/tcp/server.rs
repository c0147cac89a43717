//! The data server: `MC_TCP_SERVER_THREADS` event loops (readiness I/O on
//! `mio`) serve every connection, so a thousand peers cost descriptors, not
//! threads. Loop 0 also owns the listener and deals accepted connections out
//! round-robin; it starts loop i with the first connection it deals to it,
//! so a fresh engine starts one server thread, not one per core. Each
//! connection is a `ServeConn` state machine.
//!
//! Payloads move straight between the socket and registered memory. Each
//! copy re-checks its range (the unregister fence, see `regions`): when
//! unregistering returns, no byte of the range is read or written again and
//! the requests still using it fail on their peers.
//!
//! Limits: total and per-source-IP connection caps, where a full server makes
//! room for an address below its fair share (`serving::admission`); a
//! connection that completes no header within
//! `MC_TCP_SERVER_HEADER_TIMEOUT_SEC` of its first byte (or of connecting) is
//! closed, one that stalls mid-request within `MC_TCP_STATUS_TIMEOUT_SEC`, one
//! busy below `MC_TCP_SERVER_MIN_RATE_KBPS` over a whole
//! `MC_TCP_SERVER_RATE_WINDOW_SEC`, an idle one after
//! `MC_TCP_SERVER_IDLE_TIMEOUT_SEC`.

use std::collections::HashMap;
use std::io;
use std::net::{SocketAddr, TcpListener};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Registry, Token, Waker};
use parking_lot::Mutex;

use super::config::TcpConfig;
use super::regions::Regions;
use super::server_conn::{Drive, Phase, ServeConn};
use crate::error::{Error, Result};
use crate::serving::{accept_ready, AcceptGate, Admission, AdmissionLimits, RateLimited, Ticket};
use crate::threads::ThreadCount;

const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);
const FIRST_CONN: usize = 2;

type Incoming = (mio::net::TcpStream, SocketAddr, Ticket);

struct Shared {
    regions: Arc<Regions>,
    cfg: TcpConfig,
    stop: AtomicBool,
    admission: Admission,
    /// Connections accepted by loop 0 for loop i.
    inboxes: Vec<Mutex<Vec<Incoming>>>,
    wakers: Vec<Arc<Waker>>,
    reclaimed: AtomicUsize,
    /// Running loops; `None` once shut down (no loop starts after that).
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    /// The transport's count, which holds each loop.
    count: ThreadCount,
}

pub struct DataServer {
    port: u16,
    shared: Arc<Shared>,
}

const PACE: &str = "slower than MC_TCP_SERVER_MIN_RATE_KBPS";

/// A connection quiet this long gives its input buffer back.
const BUFFER_KEEP: Duration = Duration::from_secs(1);

static RECLAIM_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(10));
/// Its own line: a pace cut is an attack sign worth seeing beside the rest.
static PACE_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(10));

fn sock_err(what: &str, e: io::Error) -> Error {
    Error::Socket(format!("tcp data server: {what}: {e}"))
}

impl DataServer {
    /// Serve requests arriving on `listener` (already bound) against
    /// `regions`; the loops are counted in `count` (the transport's).
    pub fn start(
        listener: TcpListener,
        regions: Arc<Regions>,
        cfg: TcpConfig,
        count: ThreadCount,
    ) -> Result<Self> {
        let port = listener
            .local_addr()
            .map_err(|e| sock_err("listener address", e))?
            .port();
        listener
            .set_nonblocking(true)
            .map_err(|e| sock_err("listener", e))?;
        let mut listener = Some(mio::net::TcpListener::from_std(listener));
        let loops = cfg.server_threads.max(1);
        let mut polls = Vec::with_capacity(loops);
        let mut wakers = Vec::with_capacity(loops);
        for _ in 0..loops {
            let poll = Poll::new().map_err(|e| sock_err("epoll", e))?;
            wakers.push(Arc::new(
                Waker::new(poll.registry(), WAKER).map_err(|e| sock_err("waker", e))?,
            ));
            polls.push(poll);
        }
        if let Some(l) = listener.as_mut() {
            polls[0]
                .registry()
                .register(l, LISTENER, Interest::READABLE)
                .map_err(|e| sock_err("registering listener", e))?;
        }
        let shared = Arc::new(Shared {
            regions,
            admission: Admission::new(AdmissionLimits {
                max_total: cfg.max_server_connections,
                max_per_ip: cfg.max_server_connections_per_ip,
            }),
            cfg,
            stop: AtomicBool::new(false),
            inboxes: (0..loops).map(|_| Mutex::new(Vec::new())).collect(),
            wakers,
            reclaimed: AtomicUsize::new(0),
            threads: Mutex::new(Some(Vec::new())),
            count,
        });
        let mut polls = polls.into_iter();
        let first = polls.next().expect("at least one loop");
        let others = std::iter::once(Other::Running)
            .chain(polls.map(Other::Unstarted))
            .collect();
        let h = spawn_loop(&shared, 0, first, listener.take(), others)
            .map_err(|e| sock_err("spawning event loop", e))?;
        if let Some(t) = shared.threads.lock().as_mut() {
            t.push(h);
        }
        log::info!("tcp data server listening on port {port} (up to {loops} event loops)");
        Ok(DataServer { port, shared })
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Connections currently served.
    pub fn open_connections(&self) -> usize {
        self.shared.admission.open()
    }

    /// Connections closed by the idle and stall sweeps so far.
    pub fn reclaimed_connections(&self) -> usize {
        self.shared.reclaimed.load(Ordering::Relaxed)
    }

    /// Close the listener and every connection, then join the loops.
    pub fn shutdown(&self) {
        if self.shared.stop.swap(true, Ordering::AcqRel) {
            return;
        }
        for w in &self.shared.wakers {
            let _ = w.wake();
        }
        // Taken before joining: loop 0 takes this lock to start a loop.
        let threads = self.shared.threads.lock().take().unwrap_or_default();
        for h in threads {
            let _ = h.join();
        }
        // Connections loop 0 dealt to a loop that stopped before taking
        // them: close them now (only loop 0 deals, and it has ended), or
        // their peers would wait for answers until their status timeout.
        for inbox in &self.shared.inboxes {
            inbox.lock().clear();
        }
        log::info!("tcp data server on port {} stopped", self.port);
    }
}

impl Drop for DataServer {
    fn drop(&mut self) {
        self.shutdown();
    }
}

/// Loop 0 gets the listener and every loop's state (`others`).
fn spawn_loop(
    shared: &Arc<Shared>,
    i: usize,
    poll: Poll,
    listener: Option<mio::net::TcpListener>,
    others: Vec<Other>,
) -> io::Result<JoinHandle<()>> {
    let s = shared.clone();
    shared.count.spawn(format!("te-tcp-serve-{i}"), move || {
        let mut l = EventLoop::new(i, poll, listener, s);
        l.others = others;
        l.run()
    })
}

struct EventLoop {
    index: usize,
    poll: Poll,
    listener: Option<mio::net::TcpListener>,
    shared: Arc<Shared>,
    conns: HashMap<usize, ServeConn>,
    next_token: usize,
    /// Connections whose drive ran out of budget with work left.
    pending: Vec<usize>,
    next_loop: usize,
    /// Loop 0: every loop's state (itself `Running`).
    others: Vec<Other>,
}

/// A loop as loop 0 sees it.
enum Other {
    /// Its epoll, until its first connection.
    Unstarted(Poll),
    Running,
    /// Could not start: loop 0 serves its connections.
    Failed,
}

impl EventLoop {
    fn new(
        index: usize,
        poll: Poll,
        listener: Option<mio::net::TcpListener>,
        shared: Arc<Shared>,
    ) -> Self {
        EventLoop {
            index,
            poll,
            listener,
            shared,
            conns: HashMap::new(),
            next_token: FIRST_CONN,
            pending: Vec::new(),
            next_loop: 0,
            others: Vec::new(),
        }
    }

    fn sweep_period(&self) -> Duration {
        (self.shared.cfg.server_header_timeout / 5)
            .clamp(Duration::from_millis(100), Duration::from_secs(1))
    }

    fn run(mut self) {
        let mut events = Events::with_capacity(1024);
        let mut gate = AcceptGate::new("tcp data server");
        let mut next_sweep = Instant::now() + self.sweep_period();
        loop {
            let now = Instant::now();
            let mut wake_at = next_sweep;
            if let Some(t) = gate.paused_until() {
                wake_at = wake_at.min(t);
            }
            let timeout = if self.pending.is_empty() {
                wake_at.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!(
                        "tcp data server: epoll failed: {e}; loop {} stops",
                        self.index
                    );
                    return;
                }
            }
            if self.shared.stop.load(Ordering::Acquire) {
                return;
            }
            let mut accept = gate.paused_until().is_some_and(|t| Instant::now() >= t);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.take_inbox(),
                    LISTENER => accept = true,
                    Token(t) => self.drive(t),
                }
            }
            if accept {
                self.accept(&mut gate);
            }
            for t in std::mem::take(&mut self.pending) {
                self.drive(t);
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + self.sweep_period();
            }
        }
    }

    fn accept(&mut self, gate: &mut AcceptGate) {
        let Some(listener) = self.listener.as_ref() else {
            return;
        };
        let loops = self.shared.inboxes.len();
        let mut mine = Vec::new();
        let mut theirs = Vec::new();
        accept_ready(listener, gate, &self.shared.admission, |s, peer, ticket| {
            let target = self.next_loop % loops;
            self.next_loop = self.next_loop.wrapping_add(1);
            if target == self.index {
                mine.push((s, peer, ticket));
            } else {
                theirs.push((target, (s, peer, ticket)));
            }
        });
        for (target, c) in theirs {
            if self.start_loop(target) {
                self.shared.inboxes[target].lock().push(c);
                let _ = self.shared.wakers[target].wake();
            } else {
                mine.push(c);
            }
        }
        for c in mine {
            self.adopt(c);
        }
    }

    /// Loop `i` runs, or starts now for its first connection. False if it
    /// cannot run (shutting down, no thread): this loop serves its share.
    fn start_loop(&mut self, i: usize) -> bool {
        let poll = match std::mem::replace(&mut self.others[i], Other::Failed) {
            Other::Unstarted(poll) => poll,
            other => {
                let running = matches!(other, Other::Running);
                self.others[i] = other;
                return running;
            }
        };
        let mut threads = self.shared.threads.lock();
        let Some(threads) = threads.as_mut() else {
            return false;
        };
        match spawn_loop(&self.shared, i, poll, None, Vec::new()) {
            Ok(h) => {
                threads.push(h);
                self.others[i] = Other::Running;
                true
            }
            Err(e) => {
                log::warn!(
                    "tcp data server: cannot start event loop {i}: {e}; loop 0 serves its share"
                );
                false
            }
        }
    }

    fn take_inbox(&mut self) {
        let incoming = std::mem::take(&mut *self.shared.inboxes[self.index].lock());
        for c in incoming {
            self.adopt(c);
        }
    }

    fn adopt(&mut self, (mut stream, peer, ticket): Incoming) {
        super::sock::tune(&stream, self.shared.cfg.socket_buffer);
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("tcp data server: cannot watch connection from {peer}: {e}");
            return;
        }
        self.conns
            .insert(token, ServeConn::new(stream, peer, ticket));
        // Bytes may have arrived before registration.
        self.drive(token);
    }

    fn drive(&mut self, token: usize) {
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        match c.drive(&self.shared.regions) {
            Drive::Blocked => {}
            Drive::More => self.pending.push(token),
            Drive::Close(why) => {
                log::debug!("tcp data server: closing connection from {}: {why}", c.peer);
                close(self.poll.registry(), &mut self.conns, token);
            }
        }
    }

    /// Close connections silent for longer than their phase allows.
    fn sweep(&mut self) {
        let cfg = &self.shared.cfg;
        let now = Instant::now();
        let window = cfg.server_rate_window;
        let min_bytes = cfg.server_min_rate.saturating_mul(window.as_secs());
        let mut silent = Vec::new();
        for (&t, c) in self.conns.iter_mut() {
            let idle = now.saturating_duration_since(c.last_progress);
            if idle >= BUFFER_KEEP {
                c.release_buffer();
            }
            let (limit, what, since) = match c.phase() {
                Phase::AwaitingHeader => (
                    cfg.server_header_timeout,
                    "no complete header",
                    c.awaiting_since,
                ),
                Phase::Busy => (cfg.status_timeout, "stalled mid-request", c.last_progress),
                Phase::Idle => (cfg.server_idle, "idle", c.last_progress),
            };
            if c.ticket.evicted() {
                // Admission logged it.
                silent.push((t, "", Duration::ZERO));
            } else if now.saturating_duration_since(since) >= limit {
                silent.push((t, what, limit));
            } else if min_bytes > 0 && !c.keeps_pace(now, window, min_bytes) {
                silent.push((t, PACE, window));
            }
        }
        for (t, what, limit) in silent {
            if let Some(c) = self.conns.get(&t).filter(|_| !what.is_empty()) {
                let log = if what == PACE {
                    &PACE_LOG
                } else {
                    &RECLAIM_LOG
                };
                log.warn(format_args!(
                    "tcp data server: closing connection from {}: {what} over {limit:?}",
                    c.peer
                ));
            }
            self.shared.reclaimed.fetch_add(1, Ordering::Relaxed);
            close(self.poll.registry(), &mut self.conns, t);
        }
    }
}

fn close(registry: &Registry, conns: &mut HashMap<usize, ServeConn>, token: usize) {
    if let Some(mut c) = conns.remove(&token) {
        let _ = registry.deregister(&mut c.stream);
    }
}
