//! One persistent data connection to a peer, full duplex: the lane thread
//! sends requests, a reader thread takes the answers in FIFO order (the
//! server handles requests strictly in sequence). Requests are pipelined up
//! to `pipeline_depth` deep.
//!
//! After any error the connection is broken for good: the reader waits until
//! no body is being sent from a source buffer (so callers may free it once
//! the task is terminal), then settles every in-flight request: the head one
//! fails, the ones behind it are retried on a fresh connection (see
//! `Fate`). A rejected request therefore never takes innocent pipelined
//! neighbours down with it, even when the server's close turns into a RST.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::{Condvar, Mutex, MutexGuard};

use super::inbuf::{InBuf, INBUF_CAP};
use super::queue::{Job, JobQueue};
use super::sock::{self, IoSpan};
use super::wire::{Header, Status, HEADER_LEN, STATUS_LEN};

/// READ bodies at least this large skip the receive buffer when nothing
/// is buffered ahead of them (no extra copy).
const DIRECT_READ: usize = 32 * 1024;

struct State {
    /// Requests sent (or being sent) whose answer is still to be read.
    inflight: VecDeque<Job>,
    broken: bool,
    /// The lane thread is inside a send on this socket.
    sending: bool,
    /// A send made no progress within the status timeout: the peer is
    /// unresponsive (its close must not count as an ordinary break, which
    /// would retry the requests behind the head on a new connection).
    send_timed_out: bool,
    /// When requests were last handed to the socket (idle close).
    last_send: Instant,
}

pub struct Conn {
    stream: TcpStream,
    v2: bool,
    depth: usize,
    peer: String,
    state: Mutex<State>,
    cv: Condvar,
}

enum ReadFail {
    Rejected,
    /// No answer within the status timeout: the peer is unresponsive.
    TimedOut,
    Broken(String),
}

/// What happens to in-flight requests when a connection ends.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fate {
    /// Closed by our side (shutdown, idle): everything in flight fails.
    FailAll,
    /// The head request failed; those behind it are retried on a new
    /// connection. The server works strictly in order and stops at the
    /// failure, and a repeated READ/WRITE of the same range is idempotent.
    RetryBehindHead,
    /// The peer stopped answering: fail in-flight and queued work.
    PeerDead,
}

impl Conn {
    pub fn new(stream: TcpStream, v2: bool, depth: usize, peer: String) -> Conn {
        Conn {
            stream,
            v2,
            depth: depth.max(1),
            peer,
            state: Mutex::new(State {
                inflight: VecDeque::new(),
                broken: false,
                sending: false,
                send_timed_out: false,
                last_send: Instant::now(),
            }),
            cv: Condvar::new(),
        }
    }

    fn fd(&self) -> i32 {
        self.stream.as_raw_fd()
    }

    /// Mark broken and wake everything blocked on the socket or the state.
    pub fn abort(&self) {
        self.state.lock().broken = true;
        sock::shutdown_fd(self.fd());
        self.cv.notify_all();
    }

    /// Not worth sending on: broken, or idle yet readable (the server closed
    /// it, or sent bytes nobody asked for).
    pub fn is_stale(&self) -> bool {
        let g = self.state.lock();
        if g.broken {
            return true;
        }
        g.inflight.is_empty()
            && !g.sending
            && sock::poll_readable(self.fd(), Duration::ZERO).unwrap_or(true)
    }

    /// Mark the connection broken if nothing is in flight and nothing was
    /// sent for `idle`; once marked no sender can claim it, so closing it
    /// cannot fail a request.
    pub fn retire_if_idle(&self, idle: Duration) -> bool {
        let mut g = self.state.lock();
        let idle = g.inflight.is_empty() && !g.sending && g.last_send.elapsed() >= idle;
        if idle {
            g.broken = true;
        }
        idle
    }

    /// Free pipeline slots, waiting until there is at least one (0 when
    /// the connection is broken).
    pub fn wait_capacity(&self) -> usize {
        let mut g = self.state.lock();
        while !g.broken && g.inflight.len() >= self.depth {
            self.cv.wait(&mut g);
        }
        if g.broken {
            0
        } else {
            self.depth - g.inflight.len()
        }
    }

    /// Send requests, all headers and WRITE bodies in as few `sendmsg` calls
    /// as the kernel allows. `Err(jobs)` hands the jobs back untouched when
    /// the connection was already broken; otherwise they are owned by this
    /// connection and each is completed or failed exactly once.
    pub fn send(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        let mut g = self.state.lock();
        let n = jobs.len().min(self.depth);
        // One sender at a time: the lane, or a submitter on the short path.
        while !g.broken && (g.sending || g.inflight.len() + n > self.depth) {
            self.cv.wait(&mut g);
        }
        if g.broken {
            return Err(jobs);
        }
        self.transmit(g, jobs);
        Ok(())
    }

    /// The short path: send from the caller's thread if the connection is
    /// idle right now (nothing in flight, nobody sending, not closed by the
    /// server), else hand the jobs back at once. Saves the lane's wake-up.
    pub fn try_send_idle(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        let Some(g) = self.state.try_lock() else {
            return Err(jobs);
        };
        if g.broken || g.sending || !g.inflight.is_empty() || jobs.len() > self.depth {
            return Err(jobs);
        }
        // Idle yet readable: the server closed it (the lane reconnects).
        if sock::poll_readable(self.fd(), Duration::ZERO).unwrap_or(true) {
            return Err(jobs);
        }
        self.transmit(g, jobs);
        Ok(())
    }

    /// Send claimed jobs; each is then completed or failed exactly once.
    fn transmit(&self, mut g: MutexGuard<'_, State>, jobs: Vec<Job>) {
        let headers: Vec<[u8; HEADER_LEN]> = jobs
            .iter()
            .map(|j| Header::new(j.write, self.v2, j.remote, j.len).encode())
            .collect();
        let mut spans = Vec::with_capacity(jobs.len() * 2);
        for (j, h) in jobs.iter().zip(&headers) {
            spans.push(IoSpan {
                ptr: h.as_ptr() as *mut u8,
                len: h.len(),
            });
            if j.write {
                spans.push(IoSpan {
                    ptr: j.local as *mut u8,
                    len: j.len as usize,
                });
            }
        }
        // v1 WRITEs have no answer: they complete once the bodies are handed over.
        let mut unanswered = Vec::new();
        for j in jobs {
            if self.v2 || !j.write {
                g.inflight.push_back(j);
            } else {
                unanswered.push(j);
            }
        }
        g.sending = true;
        g.last_send = Instant::now();
        drop(g);
        self.cv.notify_all();
        // SAFETY: `headers` is a live local; bodies are the callers' source
        // ranges, which stay valid until their tasks are terminal (API
        // contract), and no task here can turn terminal while `sending` is set.
        let res = unsafe { sock::send_all(self.fd(), &spans) };
        let mut g = self.state.lock();
        g.sending = false;
        if let Err(e) = &res {
            g.broken = true;
            g.send_timed_out = e.kind() == io::ErrorKind::TimedOut;
        }
        drop(g);
        self.cv.notify_all();
        match res {
            Ok(()) => unanswered.into_iter().for_each(Job::succeed),
            Err(e) => {
                log::warn!("tcp: sending to {} failed: {e}", self.peer);
                sock::shutdown_fd(self.fd());
                unanswered.into_iter().for_each(Job::fail);
            }
        }
    }

    /// The reader thread: answers in FIFO order until the connection breaks.
    pub fn read_loop(&self, queue: &JobQueue) {
        let mut inb = InBuf::new(INBUF_CAP);
        loop {
            let (write, local, len) = {
                let mut g = self.state.lock();
                while g.inflight.is_empty() && !g.broken {
                    self.cv.wait(&mut g);
                }
                // Even once broken (e.g. the sender hit a reset), answers
                // already queued in the socket are still read: they may
                // complete requests the server did finish.
                match g.inflight.front() {
                    Some(j) => (j.write, j.local, j.len),
                    None => break,
                }
            };
            match self.read_answer(&mut inb, write, local, len) {
                Ok(()) => {
                    let j = self.state.lock().inflight.pop_front();
                    self.cv.notify_all();
                    if let Some(j) = j {
                        j.succeed();
                    }
                }
                Err(ReadFail::Rejected) => {
                    log::warn!(
                        "tcp: {} rejected {} of {len} bytes: address range not registered there",
                        self.peer,
                        if write { "WRITE" } else { "READ" }
                    );
                    self.finish(queue, Fate::RetryBehindHead);
                    return;
                }
                Err(ReadFail::Broken(_)) if self.state.lock().send_timed_out => {
                    log::warn!(
                        "tcp: {} took no request bytes within the status timeout; failing its queued requests",
                        self.peer
                    );
                    self.finish(queue, Fate::PeerDead);
                    return;
                }
                Err(ReadFail::TimedOut) => {
                    log::warn!(
                        "tcp: {} sent no answer within the status timeout; failing its queued requests",
                        self.peer
                    );
                    self.finish(queue, Fate::PeerDead);
                    return;
                }
                Err(ReadFail::Broken(why)) => {
                    log::warn!("tcp: connection to {} failed: {why}", self.peer);
                    self.finish(queue, Fate::RetryBehindHead);
                    return;
                }
            }
        }
        self.finish(queue, Fate::FailAll);
    }

    /// Break the connection, wait for the sender to leave the socket, then
    /// settle every in-flight request.
    fn finish(&self, queue: &JobQueue, fate: Fate) {
        let mut g = self.state.lock();
        g.broken = true;
        drop(g);
        sock::shutdown_fd(self.fd());
        self.cv.notify_all();
        let mut g = self.state.lock();
        while g.sending {
            self.cv.wait(&mut g);
        }
        let jobs: Vec<Job> = g.inflight.drain(..).collect();
        drop(g);
        self.cv.notify_all();
        let mut it = jobs.into_iter();
        match fate {
            Fate::FailAll => it.for_each(Job::fail),
            Fate::PeerDead => {
                it.for_each(Job::fail);
                queue.fail_queued();
            }
            Fate::RetryBehindHead => {
                if let Some(head) = it.next() {
                    head.fail();
                }
                // No retry cap needed: every broken connection fails its
                // head request, so this always makes progress.
                let retry: Vec<Job> = it.collect();
                if !retry.is_empty() {
                    queue.requeue_front(retry);
                }
            }
        }
    }

    /// Answers are read through `inb`, so one `recv` takes in a run of
    /// small answers; a large READ body with nothing buffered ahead of it is
    /// received straight into its destination.
    fn read_answer(
        &self,
        inb: &mut InBuf,
        write: bool,
        local: u64,
        len: u64,
    ) -> Result<(), ReadFail> {
        let fd = self.fd();
        let io_err = io_fail;
        let body = IoSpan {
            ptr: local as *mut u8,
            len: len as usize,
        };
        if self.v2 && !write && inb.is_empty() && body.len >= DIRECT_READ {
            return self.read_direct(body);
        }
        if self.v2 {
            // Only v2 WRITEs are in flight; READs start with a status too.
            inb.fill_to(fd, STATUS_LEN).map_err(io_err)?;
            let b = inb
                .take::<STATUS_LEN>()
                .ok_or_else(|| ReadFail::Broken("status frame missing after fill".into()))?;
            check_status(&b)?;
        }
        if write {
            return Ok(());
        }
        // SAFETY: the READ destination is the caller's source range, valid
        // until the task is terminal (API contract).
        unsafe { inb.read_into(fd, body) }.map_err(io_err)
    }

    /// Status and body of a large v2 READ, in one call when they arrive
    /// together.
    fn read_direct(&self, body: IoSpan) -> Result<(), ReadFail> {
        let fd = self.fd();
        let mut status = [0u8; STATUS_LEN];
        let mut got = 0usize;
        let mut spans = vec![
            IoSpan {
                ptr: status.as_mut_ptr(),
                len: STATUS_LEN,
            },
            body,
        ];
        while got < STATUS_LEN {
            // SAFETY: `status` is a live local; `body` is the caller's READ
            // destination, valid until the task is terminal (API contract).
            let n = unsafe { sock::recv_some(fd, &spans) }.map_err(io_fail)?;
            got += n;
            sock::skip(&mut spans, n);
        }
        check_status(&status)?;
        // SAFETY: the remaining spans lie inside `body` (see above).
        unsafe { sock::recv_all(fd, &spans) }.map_err(io_fail)
    }
}

fn io_fail(e: io::Error) -> ReadFail {
    if e.kind() == io::ErrorKind::TimedOut {
        ReadFail::TimedOut
    } else {
        ReadFail::Broken(e.to_string())
    }
}

fn check_status(b: &[u8; STATUS_LEN]) -> Result<(), ReadFail> {
    match Status::decode(b) {
        Some(Status::Ok) => Ok(()),
        Some(Status::AddrRejected) => Err(ReadFail::Rejected),
        Some(Status::Other(c)) => Err(ReadFail::Broken(format!("unknown status code {c}"))),
        None => Err(ReadFail::Broken(format!(
            "malformed status frame {:016x}",
            u64::from_le_bytes(*b)
        ))),
    }
}

/// A connection plus its reader thread, owned by one lane.
pub struct ConnHandle {
    pub conn: Arc<Conn>,
    pub id: u64,
    reader: Option<std::thread::JoinHandle<()>>,
}

impl ConnHandle {
    pub fn spawn(conn: Arc<Conn>, id: u64, queue: Arc<JobQueue>) -> io::Result<ConnHandle> {
        let c = conn.clone();
        let reader = std::thread::Builder::new()
            .name("te-tcp-reader".into())
            .spawn(move || c.read_loop(&queue))?;
        Ok(ConnHandle {
            conn,
            id,
            reader: Some(reader),
        })
    }

    /// Abort the connection and wait until every in-flight request settled.
    pub fn close(self) {
        drop(self);
    }
}

impl Drop for ConnHandle {
    fn drop(&mut self) {
        self.conn.abort();
        if let Some(h) = self.reader.take() {
            let _ = h.join();
        }
    }
}
