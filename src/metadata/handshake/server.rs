//! Handshake RPC server (spec §4.2), concurrent unlike upstream's: one
//! event-loop thread (readiness I/O on `mio`) reads frames from every
//! connection and writes the replies; `MC_HANDSHAKE_WORKERS` threads run the
//! handler, started by the loop when the first request needs one (so an
//! engine that is never asked for a Connection or Notify costs one thread). A slow or silent client costs a descriptor, never a thread, and
//! a new connection is accepted the moment it arrives. Metadata and Probe
//! requests (a descriptor to serialise, a constant) are answered on the loop
//! itself: the hand-off to a worker and back would cost two thread wake-ups
//! on every `openSegment`.
//!
//! Per connection: read one frame, dispatch, reply with the request's framing,
//! `shutdown(SHUT_WR)`, wait (bounded) for the client's EOF, close. Invalid
//! frames are logged (rate-limited) with the peer address and closed without
//! a reply.

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::{Condvar, Mutex};

use super::desc::{NotifyDesc, ProbeReply};
use super::frame::{self, Frame, MsgType};
use super::server_conn::{HsConn, HsDrive, HsState};
use super::HandShakeDesc;
use crate::config::{env_secs, env_u64};
use crate::error::{Error, Result};
use crate::metadata::json;
use crate::serving::{accept_ready, AcceptGate, Admission, AdmissionLimits, RateLimited};
use crate::threads::ThreadCount;

/// What the server asks its owner for each request type.
pub trait HandshakeHandler: Send + Sync {
    /// Connection (type 0, or legacy framing).
    fn on_connection(&self, req: HandShakeDesc) -> HandShakeDesc;
    /// Metadata (type 1): the reply JSON text (our local descriptor, or `null`).
    fn on_metadata(&self, requester_json: &str) -> String;
    /// Notify (type 2).
    fn on_notify(&self, name: String, msg: String);
    /// Notify (type 2), with the right to refuse: `Err(why)` makes the
    /// reply carry an empty `notify_msg`, which senders report as refused.
    fn try_notify(&self, name: String, msg: String) -> std::result::Result<(), String> {
        self.on_notify(name, msg);
        Ok(())
    }
}

/// Limits of the handshake server (all `MC_HANDSHAKE_*`, see README).
#[derive(Clone, Debug)]
pub struct HandshakeServerConfig {
    /// `MC_HANDSHAKE_MAX_CONNECTIONS` (4096) and `..._PER_IP` (1024).
    pub limits: AdmissionLimits,
    /// `MC_HANDSHAKE_READ_TIMEOUT_SEC` (5, upstream's `SO_RCVTIMEO`): longest
    /// silence while a frame is read or the client's EOF awaited.
    pub read_timeout: Duration,
    /// `MC_HANDSHAKE_CONNECTION_DEADLINE_SEC` (30): whole-request budget, so a
    /// client trickling bytes cannot hold a connection.
    pub deadline: Duration,
    /// `MC_HANDSHAKE_WORKERS` (2): threads running the handler.
    pub workers: usize,
    /// `MC_HANDSHAKE_MAX_BUFFERED_MB` (32, at least two maximal frames):
    /// bytes of partly read frames held for all connections together.
    pub buffer_budget: usize,
}

impl HandshakeServerConfig {
    pub fn from_env() -> Self {
        let min_budget = 2 * frame::max_frame_len() as usize;
        HandshakeServerConfig {
            limits: AdmissionLimits {
                max_total: env_u64("MC_HANDSHAKE_MAX_CONNECTIONS", 4096, 1, 1 << 20) as usize,
                max_per_ip: env_u64("MC_HANDSHAKE_MAX_CONNECTIONS_PER_IP", 1024, 1, 1 << 20)
                    as usize,
            },
            read_timeout: env_secs("MC_HANDSHAKE_READ_TIMEOUT_SEC", 5, 1, 3600),
            deadline: env_secs("MC_HANDSHAKE_CONNECTION_DEADLINE_SEC", 30, 1, 3600),
            workers: env_u64("MC_HANDSHAKE_WORKERS", 2, 1, 64) as usize,
            buffer_budget: ((env_u64("MC_HANDSHAKE_MAX_BUFFERED_MB", 32, 1, 1 << 20) as usize)
                << 20)
                .max(min_budget),
        }
    }
}

/// Budget a connection may need for its next read (its read chunk).
const READ_CHUNK: usize = 16 * 1024;
/// A half-received frame older than a newer request by this much gives up
/// its share of a spent frame budget (`make_room`).
const ROOM_MIN_AGE: Duration = Duration::from_secs(1);

/// Reply write budget (upstream 5 s).
const WRITE_TIMEOUT: Duration = Duration::from_secs(5);
const WAKER: Token = Token(0);
const LISTENER: Token = Token(1);

static REJECT_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));
static SWEEP_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(10));

/// A frame to answer: connection token, request, peer (for the log).
type Job = (usize, Frame, String);

/// Frames waiting for a worker (and the stop flag), and replies waiting
/// for the loop.
struct Dispatch {
    jobs: Mutex<(VecDeque<Job>, bool)>,
    jobs_cv: Condvar,
    done: Mutex<Vec<(usize, Option<Vec<u8>>)>>,
    waker: Waker,
}

pub struct HandshakeServer {
    port: u16,
    stopping: Arc<AtomicBool>,
    dispatch: Arc<Dispatch>,
    event_loop: Mutex<Option<JoinHandle<()>>>,
    /// Handler threads, started by the loop (`HsLoop::start_workers`).
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    /// The loop and its handler threads.
    threads: ThreadCount,
}

impl HandshakeServer {
    /// Serve `listener` on background threads until `stop`.
    pub fn start(listener: TcpListener, handler: Arc<dyn HandshakeHandler>) -> Result<Self> {
        Self::start_with_config(listener, handler, HandshakeServerConfig::from_env())
    }

    pub fn start_with_config(
        listener: TcpListener,
        handler: Arc<dyn HandshakeHandler>,
        cfg: HandshakeServerConfig,
    ) -> Result<Self> {
        Self::start_counted(listener, handler, cfg, ThreadCount::default())
    }

    /// `start_with_config` with its threads counted in `threads` (its owner's).
    pub fn start_counted(
        listener: TcpListener,
        handler: Arc<dyn HandshakeHandler>,
        cfg: HandshakeServerConfig,
        threads: ThreadCount,
    ) -> Result<Self> {
        let port = listener.local_addr()?.port();
        listener.set_nonblocking(true)?;
        let mut listener = mio::net::TcpListener::from_std(listener);
        let poll = Poll::new()?;
        poll.registry()
            .register(&mut listener, LISTENER, Interest::READABLE)?;
        let dispatch = Arc::new(Dispatch {
            jobs: Mutex::new((VecDeque::new(), false)),
            jobs_cv: Condvar::new(),
            done: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKER)?,
        });
        let stopping = Arc::new(AtomicBool::new(false));
        let workers = Arc::new(Mutex::new(Vec::new()));
        let lp = HsLoop {
            poll,
            listener,
            cfg,
            conns: HashMap::new(),
            next_token: 2,
            buffered: 0,
            dispatch: dispatch.clone(),
            handler,
            workers: workers.clone(),
            workers_started: false,
            stopping: stopping.clone(),
            threads: threads.clone(),
        };
        let t = threads
            .spawn("te-handshake", move || lp.run())
            .map_err(|e| Error::Socket(format!("spawning handshake loop: {e}")))?;
        let server = HandshakeServer {
            port,
            stopping,
            dispatch,
            event_loop: Mutex::new(Some(t)),
            workers,
            threads,
        };
        log::info!("handshake daemon listening on port {port}");
        Ok(server)
    }

    pub fn local_port(&self) -> u16 {
        self.port
    }

    /// Threads running in its count: the event loop and the handler threads
    /// (and, for `start_counted`, the other threads of its owner).
    pub fn threads(&self) -> usize {
        self.threads.running()
    }

    /// Stop accepting, close open connections, join threads. Idempotent.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
        self.dispatch.jobs.lock().1 = true;
        self.dispatch.jobs_cv.notify_all();
        let _ = self.dispatch.waker.wake();
        // The loop first: it is the only one that starts workers.
        let me = std::thread::current().id();
        let event_loop: Vec<JoinHandle<()>> = self.event_loop.lock().take().into_iter().collect();
        let joined = |threads: Vec<JoinHandle<()>>| {
            for t in threads {
                // A handler that stops its own daemon must not join itself.
                if t.thread().id() == me {
                    continue;
                }
                if t.join().is_err() {
                    log::error!("handshake server thread panicked");
                }
            }
        };
        joined(event_loop);
        joined(std::mem::take(&mut *self.workers.lock()));
    }
}

impl Drop for HandshakeServer {
    fn drop(&mut self) {
        self.stop();
    }
}

fn worker(d: &Dispatch, handler: &dyn HandshakeHandler) {
    loop {
        let (token, frame, peer) = {
            let mut g = d.jobs.lock();
            loop {
                if g.1 {
                    return;
                }
                if let Some(j) = g.0.pop_front() {
                    break j;
                }
                d.jobs_cv.wait(&mut g);
            }
        };
        let reply = answer(&frame, &peer, handler);
        d.done.lock().push((token, reply));
        let _ = d.waker.wake();
    }
}

struct HsLoop {
    poll: Poll,
    listener: mio::net::TcpListener,
    cfg: HandshakeServerConfig,
    conns: HashMap<usize, HsConn>,
    next_token: usize,
    /// Bytes of frames held for all connections.
    buffered: usize,
    dispatch: Arc<Dispatch>,
    handler: Arc<dyn HandshakeHandler>,
    workers: Arc<Mutex<Vec<JoinHandle<()>>>>,
    workers_started: bool,
    stopping: Arc<AtomicBool>,
    threads: ThreadCount,
}

/// The encoded reply to `frame`, or `None` (logged) when it has none.
fn answer(frame: &Frame, peer: &str, handler: &dyn HandshakeHandler) -> Option<Vec<u8>> {
    match dispatch(frame, handler) {
        Ok(r) => Some(frame::encode(frame.framing, &r)),
        Err(e) => {
            REJECT_LOG.warn(format_args!("handshake from {peer} rejected: {e}"));
            None
        }
    }
}

impl HsLoop {
    /// Start the handler threads (once). `false` if none could start: the
    /// caller then answers on the loop.
    fn start_workers(&mut self) -> bool {
        if !self.workers_started {
            self.workers_started = true;
            let mut workers = self.workers.lock();
            for i in 0..self.cfg.workers.max(1) {
                let d = self.dispatch.clone();
                let h = self.handler.clone();
                match self
                    .threads
                    .spawn(format!("te-handshake-w{i}"), move || worker(&d, h.as_ref()))
                {
                    Ok(t) => workers.push(t),
                    Err(e) => {
                        log::error!("handshake server: spawning worker {i}: {e}");
                        break;
                    }
                }
            }
        }
        !self.workers.lock().is_empty()
    }

    fn run(mut self) {
        let admission = Admission::new(self.cfg.limits);
        let mut gate = AcceptGate::new("handshake server");
        let mut events = Events::with_capacity(256);
        let period =
            (self.cfg.read_timeout / 5).clamp(Duration::from_millis(100), Duration::from_secs(1));
        let mut next_sweep = Instant::now() + period;
        loop {
            let mut wake_at = next_sweep;
            if let Some(t) = gate.paused_until() {
                wake_at = wake_at.min(t);
            }
            let timeout = wake_at.saturating_duration_since(Instant::now());
            if let Err(e) = self.poll.poll(&mut events, Some(timeout)) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("handshake server: epoll failed: {e}; it stops");
                    return;
                }
            }
            if self.stopping.load(Ordering::SeqCst) {
                return;
            }
            let mut accept = gate.paused_until().is_some_and(|t| Instant::now() >= t);
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.take_replies(),
                    LISTENER => accept = true,
                    Token(t) => self.drive(t),
                }
            }
            if accept {
                let mut fresh = Vec::new();
                accept_ready(&self.listener, &mut gate, &admission, |s, peer, ticket| {
                    fresh.push(HsConn::new(s, peer, ticket))
                });
                for c in fresh {
                    self.adopt(c);
                }
            }
            if Instant::now() >= next_sweep {
                self.sweep();
                next_sweep = Instant::now() + period;
            }
        }
    }

    fn adopt(&mut self, mut c: HsConn) {
        let _ = c.stream.set_nodelay(true);
        let token = self.next_token;
        self.next_token += 1;
        if let Err(e) = self.poll.registry().register(
            &mut c.stream,
            Token(token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("handshake from {} dropped: {e}", c.peer);
            return;
        }
        self.conns.insert(token, c);
        self.drive(token);
    }

    fn take_replies(&mut self) {
        let done = std::mem::take(&mut *self.dispatch.done.lock());
        for (token, reply) in done {
            match reply {
                Some(r) => {
                    if let Some(c) = self.conns.get_mut(&token) {
                        c.set_reply(r);
                        self.drive(token);
                    }
                }
                None => self.close(token),
            }
        }
    }

    fn drive(&mut self, token: usize) {
        let max_len = frame::max_frame_len();
        while self.cfg.buffer_budget.saturating_sub(self.buffered) < READ_CHUNK
            && self.make_room(token)
        {}
        let left = self.cfg.buffer_budget.saturating_sub(self.buffered);
        let Some(c) = self.conns.get_mut(&token) else {
            return;
        };
        let before = c.accounted;
        let outcome = c.drive(max_len, left);
        self.buffered += c.accounted - before;
        match outcome {
            HsDrive::Blocked => {}
            HsDrive::Frame(f) => {
                let peer = c.peer.to_string();
                let quick = matches!(f.framing.msg_type(), MsgType::Metadata | MsgType::Probe);
                // Quick requests, or no worker could start: answer here.
                if quick || !self.start_workers() {
                    match answer(&f, &peer, self.handler.as_ref()) {
                        Some(r) => {
                            if let Some(c) = self.conns.get_mut(&token) {
                                c.set_reply(r);
                            }
                            self.drive(token);
                        }
                        None => self.close(token),
                    }
                    return;
                }
                self.dispatch.jobs.lock().0.push_back((token, f, peer));
                self.dispatch.jobs_cv.notify_one();
            }
            HsDrive::Close(why) => {
                if let Some(w) = why {
                    REJECT_LOG.warn(format_args!("{w}"));
                }
                self.close(token);
            }
        }
    }

    /// The frame budget is spent and `token` needs some: close the oldest
    /// connection still reading a frame, if it started `ROOM_MIN_AGE` before
    /// `token` (a legitimate frame arrives in milliseconds). So a handful of
    /// trickling connections cannot hold the budget against newer peers.
    fn make_room(&mut self, token: usize) -> bool {
        let Some(me) = self.conns.get(&token).map(|c| c.started) else {
            return false;
        };
        let oldest = self
            .conns
            .iter()
            .filter(|(&t, c)| t != token && c.state == HsState::Reading && c.accounted > 0)
            .min_by_key(|(_, c)| c.started)
            .filter(|(_, c)| me.saturating_duration_since(c.started) >= ROOM_MIN_AGE)
            .map(|(&t, c)| (t, c.peer, c.accounted));
        let Some((victim, peer, held)) = oldest else {
            return false;
        };
        SWEEP_LOG.warn(format_args!(
            "handshake from {peer} closed: its half-received frame ({held} bytes) held the frame budget (MC_HANDSHAKE_MAX_BUFFERED_MB) for {ROOM_MIN_AGE:?}+ while a newer request waited"
        ));
        self.close(victim);
        true
    }

    fn close(&mut self, token: usize) {
        if let Some(mut c) = self.conns.remove(&token) {
            self.buffered -= c.accounted;
            let _ = self.poll.registry().deregister(&mut c.stream);
        }
    }

    /// Close connections past their read, write or whole-request budget.
    fn sweep(&mut self) {
        let now = Instant::now();
        let cfg = &self.cfg;
        let expired: Vec<(usize, &'static str)> = self
            .conns
            .iter()
            .filter_map(|(&t, c)| {
                let quiet = now.saturating_duration_since(c.last_progress);
                let why = match c.state {
                    _ if c.ticket.evicted() => "evicted to admit an address below its fair share",
                    HsState::Reading
                        if now.saturating_duration_since(c.started) >= cfg.deadline =>
                    {
                        "request deadline passed"
                    }
                    HsState::Reading | HsState::Draining if quiet >= cfg.read_timeout => {
                        "silent past the read timeout"
                    }
                    HsState::Replying if quiet >= WRITE_TIMEOUT => "reply not taken",
                    _ => return None,
                };
                Some((t, why))
            })
            .collect();
        for (t, why) in expired {
            if let Some(c) = self.conns.get(&t) {
                if c.state == HsState::Reading {
                    SWEEP_LOG.warn(format_args!("handshake from {} closed: {why}", c.peer));
                }
            }
            self.close(t);
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
            Ok(match handler.try_notify(n.name, n.notify_msg) {
                Ok(()) => json::to_fast_writer(&NotifyDesc::success()),
                Err(why) => json::to_fast_writer(&NotifyDesc {
                    name: why,
                    notify_msg: String::new(),
                }),
            })
        }
        MsgType::Probe => Ok(json::to_fast_writer(&ProbeReply {
            status: "success".into(),
        })),
    }
}
