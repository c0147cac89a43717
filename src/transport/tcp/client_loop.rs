//! The client's event loops: `MC_TCP_CLIENT_THREADS` threads (readiness I/O
//! on `mio`, edge-triggered) drive every data connection to every peer, so
//! an initiator talking to a thousand targets costs descriptors, not
//! threads. Each starts with its first connection; the first loop also
//! while openSegment waits for a peer's descriptor (`start_first`), so its
//! thread start overlaps that wait instead of the first transfer's path.
//!
//! Other threads reach a loop through its inbox: `Adopt` a new connection
//! (dealt round-robin), `Drive` one that a push claimed or that broke on
//! the short path. A loop starts on the thread that makes the connection
//! it starts for: that connect runs first, then the loop (one thread start
//! on the way to a process's first transfer, not two). Each loop sweeps its connections every
//! `status_timeout / 20` (5 ms to 500 ms): a stalled one fails within
//! 1.05x the status timeout, an idle one closes after `lane_idle`.

use std::collections::HashMap;
use std::io;
use std::os::fd::RawFd;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use mio::unix::SourceFd;
use mio::{Events, Interest, Poll, Token, Waker};
use parking_lot::Mutex;

use super::client_conn::{ClientConn, Drive};
use crate::threads::ThreadCount;

const WAKER: Token = Token(0);

enum Msg {
    Adopt(Arc<ClientConn>),
    Drive(usize),
    /// Tasks were told to stop: fence their requests now (`abandon_stopped`).
    Abandon,
}

struct Slot {
    inbox: Mutex<Vec<Msg>>,
    waker: Waker,
    /// The loop ended (its epoll failed, or shutdown): nothing posted is
    /// driven any more.
    dead: AtomicBool,
    /// Its thread is still making the connection it started for: new
    /// connections go to other loops while one does.
    connecting: AtomicBool,
}

impl Slot {
    /// Mark the loop ended and take what was posted to it.
    fn close(&self) -> Vec<Msg> {
        let mut inbox = self.inbox.lock();
        self.dead.store(true, Ordering::Release);
        std::mem::take(&mut *inbox)
    }
}

/// Where `ClientLoops::place` put a new connection.
pub enum Placed<F> {
    /// A loop was started for it; its thread runs the connect first.
    Started,
    /// Loop `.0` runs already: the caller connects, then hands it over.
    Running(usize, F),
}

pub struct ClientLoops {
    /// Loop i's inbox and waker, once loop i runs.
    slots: Vec<OnceLock<Arc<Slot>>>,
    stop: Arc<AtomicBool>,
    /// Running loops; `None` once shut down (no loop starts after that).
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    /// The transport's count, which holds each loop.
    count: ThreadCount,
    sweep_every: Duration,
    next_loop: AtomicUsize,
    next_token: AtomicUsize,
}

impl ClientLoops {
    /// Up to `loops` loops, each started when it gets its first connection
    /// (a process that only serves, or talks to one peer, runs fewer),
    /// counted in `count`.
    pub fn new(loops: usize, status_timeout: Duration, count: ThreadCount) -> ClientLoops {
        ClientLoops {
            slots: (0..loops.max(1)).map(|_| OnceLock::new()).collect(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Some(Vec::new())),
            count,
            sweep_every: (status_timeout / 20)
                .clamp(Duration::from_millis(5), Duration::from_millis(500)),
            next_loop: AtomicUsize::new(0),
            next_token: AtomicUsize::new(1),
        }
    }

    /// Loop threads running.
    pub fn threads(&self) -> usize {
        self.threads.lock().as_ref().map_or(0, |t| t.len())
    }

    /// A token for a new connection.
    pub fn token(&self) -> usize {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Choose the loop for a new connection that `connect(loop index)`
    /// makes. If that loop does not run yet, it starts on a new thread that
    /// runs `connect` first. Loops that ended are passed over; loops still
    /// making their first connection too, while another loop can take it
    /// (a slow connect there would delay this one's adoption).
    pub fn place<F: FnOnce(usize) + Send + 'static>(&self, connect: F) -> io::Result<Placed<F>> {
        let i = self.choose()?;
        match self.slots[i].get() {
            Some(_) => Ok(Placed::Running(i, connect)),
            None => self.start(i, connect),
        }
    }

    /// Start loop `i` if it does not run (for a connection made without
    /// `place`'s thread, once it is ready to hand over).
    pub fn ensure(&self, i: usize) -> io::Result<()> {
        match self.slots[i].get() {
            Some(s) if s.dead.load(Ordering::Acquire) => {
                Err(io::Error::other("the client event loop has ended"))
            }
            Some(_) => Ok(()),
            None => self.start(i, |_| {}).map(|_| ()),
        }
    }

    /// Start the loop the next new connection goes to if no loop runs yet.
    pub fn start_first(&self) -> io::Result<()> {
        if self.slots.iter().any(|s| s.get().is_some()) {
            return Ok(());
        }
        let i = self.next_loop.load(Ordering::Relaxed) % self.slots.len();
        self.start(i, |_| {}).map(|_| ())
    }

    /// The loop for a new connection (see `place`), not started yet.
    pub fn choose(&self) -> io::Result<usize> {
        let n = self.slots.len();
        let first = self.next_loop.fetch_add(1, Ordering::Relaxed);
        let mut busy = None;
        for k in 0..n {
            let i = (first + k) % n;
            match self.slots[i].get() {
                Some(s) if s.dead.load(Ordering::Acquire) => {}
                Some(s) if s.connecting.load(Ordering::Acquire) => {
                    busy.get_or_insert(i);
                }
                Some(_) | None => return Ok(i),
            }
        }
        busy.ok_or_else(|| io::Error::other("every client event loop has ended"))
    }

    fn start<F: FnOnce(usize) + Send + 'static>(
        &self,
        i: usize,
        connect: F,
    ) -> io::Result<Placed<F>> {
        let mut guard = self.threads.lock();
        let Some(threads) = guard.as_mut() else {
            return Err(io::Error::other("transport shutting down"));
        };
        if self.slots[i].get().is_some() {
            return Ok(Placed::Running(i, connect));
        }
        let poll = Poll::new()?;
        let slot = Arc::new(Slot {
            inbox: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKER)?,
            dead: AtomicBool::new(false),
            connecting: AtomicBool::new(true),
        });
        let l = EventLoop {
            poll,
            slot: slot.clone(),
            stop: self.stop.clone(),
            conns: HashMap::new(),
            pending: Vec::new(),
            sweep_every: self.sweep_every,
        };
        // Published before the thread runs: its connect adopts into it.
        let _ = self.slots[i].set(slot.clone());
        let spawned = self.count.spawn(format!("te-tcp-client-{i}"), move || {
            connect(i);
            l.slot.connecting.store(false, Ordering::Release);
            l.run()
        });
        match spawned {
            Ok(h) => threads.push(h),
            Err(e) => {
                // Whatever was posted meanwhile fails (without our lock: a
                // failed connection may start a connect); later posts see
                // `dead`.
                drop(guard);
                fail_posted(slot.close());
                return Err(e);
            }
        }
        log::debug!("tcp client: event loop {i} started");
        Ok(Placed::Started)
    }

    pub fn adopt(&self, conn: Arc<ClientConn>) {
        let i = conn.loop_index;
        self.post(i, Msg::Adopt(conn));
    }

    pub fn drive(&self, index: usize, token: usize) {
        self.post(index, Msg::Drive(token));
    }

    /// Every loop fences the requests of stopped tasks on its connections.
    pub fn abandon_stopped(&self) {
        for i in 0..self.slots.len() {
            self.post(i, Msg::Abandon);
        }
    }

    fn post(&self, index: usize, msg: Msg) {
        let Some(slot) = self.slots.get(index).and_then(|s| s.get()) else {
            return;
        };
        let mut inbox = slot.inbox.lock();
        // Checked under the inbox lock the ending loop empties last, so a
        // connection is either failed by the loop or here, never stranded.
        if slot.dead.load(Ordering::Acquire) {
            drop(inbox);
            if let Msg::Adopt(c) = msg {
                c.abort();
                c.peer.conn_closed(&c);
            }
            return;
        }
        let was_empty = inbox.is_empty();
        inbox.push(msg);
        drop(inbox);
        // The loop empties its whole inbox per wake-up: one wake per batch.
        if was_empty {
            let _ = slot.waker.wake();
        }
    }

    /// Stop the loops; each fails what its connections had in flight.
    pub fn shutdown(&self) {
        let Some(threads) = self.threads.lock().take() else {
            return;
        };
        self.stop.store(true, Ordering::Release);
        for s in self.slots.iter().filter_map(|s| s.get()) {
            let _ = s.waker.wake();
        }
        for h in threads {
            let _ = h.join();
        }
    }
}

struct EventLoop {
    poll: Poll,
    slot: Arc<Slot>,
    stop: Arc<AtomicBool>,
    conns: HashMap<usize, Arc<ClientConn>>,
    /// Connections whose drive ran out of budget with work left.
    pending: Vec<Arc<ClientConn>>,
    sweep_every: Duration,
}

impl EventLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(256);
        let mut next_sweep = Instant::now() + self.sweep_every;
        loop {
            let timeout = if !self.pending.is_empty() {
                Some(Duration::ZERO)
            } else if self.conns.is_empty() {
                None
            } else {
                Some(next_sweep.saturating_duration_since(Instant::now()))
            };
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() != io::ErrorKind::Interrupted {
                    log::error!("tcp client: epoll failed: {e}; failing this loop's connections");
                    break;
                }
            }
            if self.stop.load(Ordering::Acquire) {
                break;
            }
            for ev in events.iter() {
                match ev.token() {
                    WAKER => self.take_inbox(),
                    Token(t) => {
                        if let Some(c) = self.conns.get(&t).cloned() {
                            self.drive(&c);
                        }
                    }
                }
            }
            for c in std::mem::take(&mut self.pending) {
                self.drive(&c);
            }
            let now = Instant::now();
            if now >= next_sweep {
                self.abandon_stopped(now);
                let done: Vec<Arc<ClientConn>> = self
                    .conns
                    .values()
                    .filter(|c| c.sweep(now))
                    .cloned()
                    .collect();
                for c in done {
                    self.close(&c);
                }
                next_sweep = now + self.sweep_every;
            }
        }
        self.fail_all();
    }

    fn take_inbox(&mut self) {
        let msgs = std::mem::take(&mut *self.slot.inbox.lock());
        for m in msgs {
            match m {
                Msg::Adopt(c) => self.adopt(c),
                Msg::Drive(t) => {
                    if let Some(c) = self.conns.get(&t).cloned() {
                        self.drive(&c);
                    }
                }
                Msg::Abandon => self.abandon_stopped(Instant::now()),
            }
        }
    }

    /// Close the connections that carry requests of stopped tasks (also
    /// at each sweep, so a deadline bites with nobody watching).
    fn abandon_stopped(&mut self, now: Instant) {
        let done: Vec<Arc<ClientConn>> = self
            .conns
            .values()
            .filter(|c| c.abandon_stopped(now))
            .cloned()
            .collect();
        for c in done {
            self.close(&c);
        }
    }

    fn adopt(&mut self, c: Arc<ClientConn>) {
        let fd: RawFd = c.fd();
        if let Err(e) = self.poll.registry().register(
            &mut SourceFd(&fd),
            Token(c.token),
            Interest::READABLE | Interest::WRITABLE,
        ) {
            log::warn!("tcp client: cannot watch a new connection: {e}");
            c.abort();
            c.peer.conn_closed(&c);
            return;
        }
        self.conns.insert(c.token, c.clone());
        // Work queued while it connected goes out now.
        self.drive(&c);
    }

    fn drive(&mut self, c: &Arc<ClientConn>) {
        match c.drive() {
            Drive::Blocked => {}
            Drive::More => self.pending.push(c.clone()),
            Drive::Closed => self.close(c),
        }
    }

    fn close(&mut self, c: &Arc<ClientConn>) {
        if self.conns.remove(&c.token).is_none() {
            return;
        }
        let fd: RawFd = c.fd();
        let _ = self.poll.registry().deregister(&mut SourceFd(&fd));
        c.peer.conn_closed(c);
    }

    /// Shutdown (or a dead epoll): every connection and every connection
    /// still in the inbox fails what it carries.
    fn fail_all(&mut self) {
        let conns: Vec<Arc<ClientConn>> = self.conns.drain().map(|(_, c)| c).collect();
        for c in conns {
            c.abort();
            c.peer.conn_closed(&c);
        }
        fail_posted(self.slot.close());
    }
}

/// Connections handed to a loop that ended fail what they carry.
fn fail_posted(msgs: Vec<Msg>) {
    for m in msgs {
        if let Msg::Adopt(c) = m {
            c.abort();
            c.peer.conn_closed(&c);
        }
    }
}
