//! The client's event loops: `MC_TCP_CLIENT_THREADS` threads (readiness I/O
//! on `mio`, edge-triggered) drive every data connection to every peer, so
//! an initiator talking to a thousand targets costs descriptors, not
//! threads. Each starts with its first connection.
//!
//! Other threads reach a loop through its inbox: `Adopt` a new connection
//! (dealt round-robin), `Drive` one that a push claimed or that broke on
//! the short path. Each loop sweeps its connections every
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

const WAKER: Token = Token(0);

enum Msg {
    Adopt(Arc<ClientConn>),
    Drive(usize),
}

struct Slot {
    inbox: Mutex<Vec<Msg>>,
    waker: Waker,
    /// The loop ended (its epoll failed, or shutdown): nothing posted is
    /// driven any more.
    dead: AtomicBool,
}

pub struct ClientLoops {
    /// Loop i's inbox and waker, once loop i runs.
    slots: Vec<OnceLock<Arc<Slot>>>,
    stop: Arc<AtomicBool>,
    /// Running loops; `None` once shut down (no loop starts after that).
    threads: Mutex<Option<Vec<JoinHandle<()>>>>,
    sweep_every: Duration,
    next_loop: AtomicUsize,
    next_token: AtomicUsize,
}

impl ClientLoops {
    /// Up to `loops` loops, each started when it gets its first connection
    /// (a process that only serves, or talks to one peer, runs fewer).
    pub fn new(loops: usize, status_timeout: Duration) -> ClientLoops {
        ClientLoops {
            slots: (0..loops.max(1)).map(|_| OnceLock::new()).collect(),
            stop: Arc::new(AtomicBool::new(false)),
            threads: Mutex::new(Some(Vec::new())),
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

    /// The loop and token for a new connection, starting that loop if it
    /// does not run yet.
    /// A loop that ended is passed over.
    pub fn place(&self) -> io::Result<(usize, usize)> {
        for _ in 0..self.slots.len() {
            let i = self.next_loop.fetch_add(1, Ordering::Relaxed) % self.slots.len();
            match self.slots[i].get() {
                Some(s) if s.dead.load(Ordering::Acquire) => continue,
                Some(_) => {}
                None => self.start(i)?,
            }
            return Ok((i, self.next_token.fetch_add(1, Ordering::Relaxed)));
        }
        Err(io::Error::other("every client event loop has ended"))
    }

    fn start(&self, i: usize) -> io::Result<()> {
        let mut threads = self.threads.lock();
        let Some(threads) = threads.as_mut() else {
            return Err(io::Error::other("transport shutting down"));
        };
        if self.slots[i].get().is_some() {
            return Ok(());
        }
        let poll = Poll::new()?;
        let slot = Arc::new(Slot {
            inbox: Mutex::new(Vec::new()),
            waker: Waker::new(poll.registry(), WAKER)?,
            dead: AtomicBool::new(false),
        });
        let l = EventLoop {
            poll,
            slot: slot.clone(),
            stop: self.stop.clone(),
            conns: HashMap::new(),
            pending: Vec::new(),
            sweep_every: self.sweep_every,
        };
        let h = std::thread::Builder::new()
            .name(format!("te-tcp-client-{i}"))
            .spawn(move || l.run())?;
        threads.push(h);
        let _ = self.slots[i].set(slot);
        log::debug!("tcp client: event loop {i} started");
        Ok(())
    }

    pub fn adopt(&self, conn: Arc<ClientConn>) {
        let i = conn.loop_index;
        self.post(i, Msg::Adopt(conn));
    }

    pub fn drive(&self, index: usize, token: usize) {
        self.post(index, Msg::Drive(token));
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
            }
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
        let left = {
            let mut inbox = self.slot.inbox.lock();
            self.slot.dead.store(true, Ordering::Release);
            std::mem::take(&mut *inbox)
        };
        for m in left {
            if let Msg::Adopt(c) = m {
                c.abort();
                c.peer.conn_closed(&c);
            }
        }
    }
}
