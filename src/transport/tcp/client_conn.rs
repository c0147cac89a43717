//! One persistent data connection to a peer as a non-blocking state
//! machine. A client event loop (`client_loop`) drives it on readiness; a
//! submitting thread may send a small request on it while it is idle (the
//! short path). Either way every send and receive is one non-blocking call
//! under the connection's lock, so settling a task never overlaps I/O on
//! its buffer: once a task is terminal its memory is the caller's again.
//!
//! Requests are pipelined up to `pipeline_depth` deep and answered in FIFO
//! order (the server handles them strictly in sequence). After any error
//! the connection is broken for good and its requests are settled by
//! `Fate`: a rejected or broken head request fails, the ones behind it are
//! retried on another connection, so a bad request never takes innocent
//! pipelined neighbours down with it.
//!
//! A pooled connection may be dead without our knowing yet: the peer
//! closed it while idle (its idle timeout) or was replaced, and its FIN is
//! still on the way. A request that goes out on it is not failed for that:
//! when such a connection ends (EOF or reset) before any byte of an answer
//! came back, its head request is re-sent on another connection (a bounded
//! number of times per request), as is a head request none of whose bytes
//! left. Nothing is re-sent after its task was settled, so a caller never
//! sees a request fail and then land; and a repeated READ, or WRITE of the
//! same bytes to the same range, is idempotent.

use std::collections::VecDeque;
use std::io;
use std::net::TcpStream;
use std::os::fd::{AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

use super::inbuf::{InBuf, INBUF_CAP};
use super::peer::Peer;
use super::queue::Job;
use super::sock::{self, IoSpan, MAX_IOV};
use super::wire::{Header, Status, HEADER_LEN, STATUS_LEN};
use crate::serving::RateLimited;

/// READ bodies at least this large are received straight into their
/// destination rather than through the receive buffer (no extra copy).
const DIRECT_READ: usize = 32 * 1024;
/// A connection stops pulling requests while this many bytes wait to be
/// sent: enough to fill a `sendmsg`, small enough that large requests
/// spread over the peer's connections.
pub const BATCH_BYTES: usize = 256 * 1024;
/// A connection stops pulling READs while this many body bytes are asked
/// and not yet received: a batch of large READs spreads over the peer's
/// connections (served in parallel by the peer's threads) instead of
/// queueing behind one stream. Well above a datacenter path's
/// bandwidth-delay product, so one connection alone still fills its path.
pub const READ_WINDOW: usize = 2 << 20;
/// Bytes moved per `drive` before the loop serves other connections.
const DRIVE_BUDGET: usize = 4 << 20;
/// A connection quiet this long gives its receive buffer back.
const BUFFER_KEEP: Duration = Duration::from_secs(1);
/// A connection open this long counts as pooled even if it never carried
/// a request (the peer may have closed it for want of one).
const POOLED_AFTER: Duration = Duration::from_secs(1);

/// A stalled connection is reset this long before its requests are
/// reported FAILED: the target's kernel learns of the reset first, and a
/// te-rs target re-checks for it at least every 10 ms before applying a
/// byte (`server_conn::ALIVE_RECHECK`).
const FENCE_GRACE: Duration = Duration::from_millis(100);
static FAIL_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));
static RESEND_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));

/// One request's bytes on their way out.
struct Out {
    header: [u8; HEADER_LEN],
    body_addr: u64,
    /// 0 for a READ.
    body_len: usize,
    sent: usize,
    /// A v1 WRITE: no answer, done once its bytes are handed over.
    unanswered: Option<Job>,
}

impl Out {
    fn total(&self) -> usize {
        HEADER_LEN + self.body_len
    }
}

struct State {
    out: VecDeque<Out>,
    unsent: usize,
    /// Requests sent (or being sent) whose answer is still to come.
    inflight: VecDeque<Job>,
    /// v1 WRITEs in `out`: they count against the depth too.
    unanswered: usize,
    /// Body bytes of the READs in `inflight` still to arrive (`READ_WINDOW`).
    read_bytes: usize,
    inb: InBuf,
    /// The front request's status frame, as far as it arrived.
    status: [u8; STATUS_LEN],
    status_got: usize,
    /// Bytes of the front READ's body received.
    body_got: usize,
    broken: bool,
    /// A receive in this `drive` found the socket empty (EAGAIN, or fewer
    /// bytes than asked): receiving again before the next readiness event
    /// would only return EAGAIN, a wasted syscall per wake-up.
    rx_drained: bool,
    /// Last byte moved either way, or when work arrived on an idle
    /// connection: the stall clock.
    last_progress: Instant,
    /// Last time requests were handed to this connection (idle close).
    last_used: Instant,
    /// A request on it was answered (the connection has been reused since).
    served: bool,
    /// What is outstanding went out on a pooled connection that had nothing
    /// outstanding, and no byte has come back since: if it ends now, the
    /// peer had most likely closed it before our requests reached it.
    pooled_burst: bool,
    /// Stalled: reset (RST) at this time, its requests failed once
    /// `FENCE_GRACE` has passed (see `sweep`).
    fencing: Option<Instant>,
    scratch: Vec<Job>,
}

impl State {
    fn new(now: Instant) -> State {
        State {
            out: VecDeque::new(),
            unsent: 0,
            inflight: VecDeque::new(),
            unanswered: 0,
            read_bytes: 0,
            inb: InBuf::new(INBUF_CAP),
            status: [0; STATUS_LEN],
            status_got: 0,
            body_got: 0,
            broken: false,
            rx_drained: false,
            last_progress: now,
            last_used: now,
            served: false,
            pooled_burst: false,
            fencing: None,
            scratch: Vec::new(),
        }
    }
}

/// What happens to a connection's requests when it ends.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Fate {
    /// Closed by our side (shutdown, idle): everything in flight fails.
    FailAll,
    /// The peer refused the head request, which fails; those behind it are
    /// retried on another connection. The server works strictly in order
    /// and stops at the failure, and a repeated READ/WRITE of the same
    /// range is idempotent.
    Rejected,
    /// The connection broke (I/O error, EOF, a malformed answer). As
    /// `Rejected`, except that the head request is re-sent instead of
    /// failed, up to the per-request bound, when none of its bytes left or
    /// when `stale`: the connection was pooled and ended before anything
    /// of an answer came back (see the module comment).
    Broken { stale: bool },
    /// The peer stopped moving bytes: fail in-flight and queued work.
    PeerDead,
    /// Closed by our side because requests on it belong to tasks told to
    /// stop (cancel, deadline): those fail, the others are re-sent on
    /// another connection (no re-send spent: the break was ours).
    Abandoned,
}

enum Fail {
    Rejected,
    Broken(String),
}

/// What `drive` tells the loop.
#[derive(Clone, Copy, PartialEq, Eq, Debug)]
pub enum Drive {
    /// Waiting for readiness (or for work).
    Blocked,
    /// The byte budget ran out with work left: drive again soon.
    More,
    /// Broken or retired: deregister and forget it.
    Closed,
}

/// Jobs to settle once the connection's lock is dropped.
#[derive(Default)]
struct Settle {
    ok: Vec<Job>,
    failed: Vec<Job>,
    retry: Vec<Job>,
    fail_queue: bool,
    /// Head requests among `retry` re-sent instead of failed.
    resent: usize,
}

impl Settle {
    fn apply(self, peer: &Peer) {
        if self.resent > 0 {
            peer.note_resent(self.resent);
        }
        self.ok.into_iter().for_each(Job::succeed);
        self.failed.into_iter().for_each(Job::fail);
        if !self.retry.is_empty() {
            peer.queue.requeue_front(self.retry);
        }
        if self.fail_queue {
            peer.queue.fail_queued();
        }
    }
}

pub struct ClientConn {
    pub peer: Arc<Peer>,
    stream: TcpStream,
    /// The event loop that watches this connection, and its token there.
    pub loop_index: usize,
    pub token: usize,
    v2: bool,
    depth: usize,
    /// "segment (address)", for logs.
    name: String,
    state: Mutex<State>,
    /// Found the queue empty with room to spare: a push should drive it.
    hungry: AtomicBool,
    opened: Instant,
    /// Times one request may be re-sent after a connection it went out on
    /// broke (`Fate::Broken`): more than the peer's connections, each of
    /// which may be a stale pooled one.
    max_resends: u8,
}

impl ClientConn {
    pub fn new(
        peer: Arc<Peer>,
        stream: TcpStream,
        loop_index: usize,
        token: usize,
        name: String,
    ) -> ClientConn {
        let now = Instant::now();
        ClientConn {
            v2: peer.key.v2,
            depth: peer.cfg.pipeline_depth.max(1),
            max_resends: peer.cfg.lanes_per_peer.clamp(1, 16) as u8 + 1,
            opened: now,
            peer,
            stream,
            loop_index,
            token,
            name,
            state: Mutex::new(State::new(now)),
            hungry: AtomicBool::new(false),
        }
    }

    pub fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Claim the connection for a push if it is waiting for work.
    pub fn claim_hungry(&self) -> bool {
        self.hungry.swap(false, Ordering::SeqCst)
    }

    /// Receive what arrived, pull queued work while there is room, send
    /// what the socket takes. Called by the loop on readiness or when a
    /// push claimed this connection.
    pub fn drive(&self) -> Drive {
        let mut settle = Settle::default();
        let mut left_queued = false;
        let mut g = self.state.lock();
        if g.broken {
            return Drive::Closed;
        }
        if g.fencing.is_some() {
            // Reset by us; the sweep settles its requests.
            return Drive::Blocked;
        }
        // Called on readiness (or a push): whatever came since is unread.
        g.rx_drained = false;
        let d = match self.run(&mut g, &mut settle, &mut left_queued) {
            Ok(d) => d,
            Err(f) => {
                self.fail_locked(&mut g, f, &mut settle);
                Drive::Closed
            }
        };
        drop(g);
        settle.apply(&self.peer);
        if left_queued {
            self.peer.kick();
        }
        d
    }

    fn run(
        &self,
        g: &mut State,
        settle: &mut Settle,
        left_queued: &mut bool,
    ) -> Result<Drive, Fail> {
        let mut budget = DRIVE_BUDGET;
        loop {
            let answered = self.receive(g, settle, &mut budget)?;
            let pulled = self.pull(g, left_queued);
            self.flush(g, settle, &mut budget)?;
            if budget == 0 {
                return Ok(Drive::More);
            }
            if answered == 0 && !pulled {
                if !self.has_room(g) {
                    return Ok(Drive::Blocked);
                }
                // Out of work with room to spare: pushers drive us from now
                // on. Re-check the queue after saying so, so a push that
                // came between our last take and the flag is not missed.
                self.hungry.store(true, Ordering::SeqCst);
                if self.peer.queue.is_empty() {
                    return Ok(Drive::Blocked);
                }
                self.hungry.store(false, Ordering::SeqCst);
            }
        }
    }

    fn has_room(&self, g: &State) -> bool {
        g.inflight.len() + g.unanswered < self.depth
            && g.unsent < BATCH_BYTES
            && g.read_bytes < READ_WINDOW
    }

    /// Take queued requests while there is room; true if any were taken.
    fn pull(&self, g: &mut State, left_queued: &mut bool) -> bool {
        let mut pulled = false;
        let mut jobs = std::mem::take(&mut g.scratch);
        while self.has_room(g) {
            let room = self.depth - g.inflight.len() - g.unanswered;
            let bytes = (BATCH_BYTES - g.unsent).min(READ_WINDOW - g.read_bytes) as u64;
            self.peer.queue.take(room, bytes, &mut jobs);
            if jobs.is_empty() {
                break;
            }
            self.enqueue(g, jobs.drain(..));
            pulled = true;
        }
        g.scratch = jobs;
        // Full with work left behind: another connection can take it.
        if pulled && !self.has_room(g) && !self.peer.queue.is_empty() {
            *left_queued = true;
        }
        pulled
    }

    /// Frame requests into the out queue; each is then settled exactly once.
    fn enqueue(&self, g: &mut State, jobs: impl Iterator<Item = Job>) {
        let now = Instant::now();
        if g.inflight.is_empty() && g.out.is_empty() {
            // The stall clock starts when work arrives, not at the last
            // byte of the previous burst.
            g.last_progress = now;
            g.pooled_burst = g.served || now.saturating_duration_since(self.opened) >= POOLED_AFTER;
        }
        g.last_used = now;
        for j in jobs {
            let body_len = if j.write { j.len as usize } else { 0 };
            let mut o = Out {
                header: Header::new(j.write, self.v2, j.remote, j.len).encode(),
                body_addr: j.local,
                body_len,
                sent: 0,
                unanswered: None,
            };
            g.unsent += o.total();
            if !j.write {
                g.read_bytes += j.len as usize;
            }
            if self.v2 || !j.write {
                g.inflight.push_back(j);
            } else {
                g.unanswered += 1;
                o.unanswered = Some(j);
            }
            g.out.push_back(o);
        }
    }

    /// Send from the out queue until it is empty, the socket is full or the
    /// budget is spent.
    fn flush(&self, g: &mut State, settle: &mut Settle, budget: &mut usize) -> Result<(), Fail> {
        let fd = self.fd();
        while !g.out.is_empty() && *budget > 0 {
            let mut iov = [IoSpan {
                ptr: std::ptr::null_mut(),
                len: 0,
            }; MAX_IOV];
            let mut k = 0;
            for o in g.out.iter() {
                if k + 2 > MAX_IOV {
                    break;
                }
                if o.sent < HEADER_LEN {
                    iov[k] = IoSpan {
                        ptr: o.header[o.sent..].as_ptr() as *mut u8,
                        len: HEADER_LEN - o.sent,
                    };
                    k += 1;
                }
                let off = o.sent.saturating_sub(HEADER_LEN);
                if o.body_len > off {
                    iov[k] = IoSpan {
                        ptr: (o.body_addr + off as u64) as *mut u8,
                        len: o.body_len - off,
                    };
                    k += 1;
                }
            }
            // SAFETY: headers live in `g.out`, untouched during the call;
            // bodies are the callers' source ranges, valid until their tasks
            // are terminal (API contract), which cannot happen while we hold
            // the lock their settlement needs.
            let n = match unsafe { sock::send_nb(fd, &iov[..k]) } {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Ok(()),
                Err(e) => return Err(Fail::Broken(format!("send: {e}"))),
            };
            g.last_progress = Instant::now();
            *budget = budget.saturating_sub(n);
            g.unsent -= n;
            let mut n = n;
            while n > 0 {
                let Some(o) = g.out.front_mut() else { break };
                let left = o.total() - o.sent;
                if n < left {
                    o.sent += n;
                    break;
                }
                n -= left;
                if let Some(j) = g.out.pop_front().and_then(|o| o.unanswered) {
                    g.unanswered -= 1;
                    settle.ok.push(j);
                }
            }
        }
        Ok(())
    }

    /// Read answers until the socket is empty or the budget is spent;
    /// returns how many requests completed. A receive that gets fewer
    /// bytes than asked found the socket empty: with edge-triggered
    /// readiness any later byte raises a new event (the kernel signals
    /// every arrival), so the connection waits for it instead of asking
    /// again for an EAGAIN. On loopback that is two syscalls less per wake
    /// while a large READ body streams in.
    fn receive(
        &self,
        g: &mut State,
        settle: &mut Settle,
        budget: &mut usize,
    ) -> Result<usize, Fail> {
        let fd = self.fd();
        let st = g;
        let mut answered = 0;
        while *budget > 0 {
            let Some(front) = st.inflight.front() else {
                if st.rx_drained {
                    return Ok(answered);
                }
                // Nothing asked: only EOF (the server closed an idle
                // connection) or bytes nobody asked for can come.
                let mut byte = [0u8; 1];
                let span = IoSpan {
                    ptr: byte.as_mut_ptr(),
                    len: 1,
                };
                // SAFETY: a live local byte (no receive buffer for an idle
                // connection).
                return match unsafe { sock::recv_nb(fd, &[span]) } {
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                        st.rx_drained = true;
                        Ok(answered)
                    }
                    Err(e) => Err(Fail::Broken(e.to_string())),
                    Ok(_) => Err(Fail::Broken("unexpected bytes from the server".into())),
                };
            };
            let (write, local, len) = (front.write, front.local, front.len as usize);
            if self.v2 && st.status_got < STATUS_LEN {
                if st.inb.is_empty() {
                    // Buffered frames are handled first; the socket is
                    // asked again only while it may hold more.
                    if st.rx_drained {
                        return Ok(answered);
                    }
                    let r = if !write && len >= DIRECT_READ {
                        // Status and body in one call when they come together.
                        let spans = [
                            IoSpan {
                                ptr: st.status[st.status_got..].as_mut_ptr(),
                                len: STATUS_LEN - st.status_got,
                            },
                            IoSpan {
                                ptr: local as *mut u8,
                                len,
                            },
                        ];
                        let asked = spans[0].len + spans[1].len;
                        // SAFETY: `status` is ours; the body is the READ's
                        // destination, valid until the task is terminal,
                        // which needs this lock.
                        unsafe { sock::recv_nb(fd, &spans) }.map(|n| {
                            let s = n.min(STATUS_LEN - st.status_got);
                            st.status_got += s;
                            st.body_got += n - s;
                            (n, n < asked)
                        })
                    } else {
                        st.inb.fill_max(fd, usize::MAX)
                    };
                    self.received(st, r, budget)?;
                }
                let want = STATUS_LEN - st.status_got;
                let span = IoSpan {
                    ptr: st.status[st.status_got..].as_mut_ptr(),
                    len: want,
                };
                // SAFETY: the span is the unfilled tail of our status array.
                st.status_got += unsafe { st.inb.copy_out(span) };
                if st.status_got < STATUS_LEN {
                    continue;
                }
                check_status(&st.status)?;
            }
            if !write {
                while st.body_got < len {
                    let dst = IoSpan {
                        ptr: (local + st.body_got as u64) as *mut u8,
                        len: len - st.body_got,
                    };
                    if !st.inb.is_empty() {
                        // SAFETY: `dst` is the rest of the READ's destination
                        // (valid until the task is terminal, see above).
                        st.body_got += unsafe { st.inb.copy_out(dst) };
                        continue;
                    }
                    if st.rx_drained {
                        return Ok(answered);
                    }
                    let r = if dst.len >= DIRECT_READ {
                        // SAFETY: as above.
                        unsafe { sock::recv_nb(fd, &[dst]) }.map(|n| {
                            st.body_got += n;
                            (n, n < dst.len)
                        })
                    } else {
                        st.inb.fill_max(fd, usize::MAX)
                    };
                    self.received(st, r, budget)?;
                }
            }
            if let Some(j) = st.inflight.pop_front() {
                if !j.write {
                    st.read_bytes -= j.len as usize;
                }
                settle.ok.push(j);
            }
            st.served = true;
            st.status_got = 0;
            st.body_got = 0;
            answered += 1;
        }
        Ok(answered)
    }

    /// Account for one receive: bytes moved, or the socket found empty.
    fn received(
        &self,
        st: &mut State,
        r: io::Result<(usize, bool)>,
        budget: &mut usize,
    ) -> Result<(), Fail> {
        match r {
            Ok((n, short)) => {
                st.last_progress = Instant::now();
                // The peer answers: whatever ends this connection now, it
                // was alive when our requests came.
                st.pooled_burst = false;
                *budget = budget.saturating_sub(n);
                st.rx_drained = short;
                Ok(())
            }
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                st.rx_drained = true;
                Ok(())
            }
            Err(e) => Err(Fail::Broken(e.to_string())),
        }
    }

    /// The short path: send from the caller's thread if the connection is
    /// idle right now (nothing in flight, nobody driving it), else hand the
    /// jobs back at once. Saves a loop wake-up; the loop reads the answer.
    /// No syscall checks first whether the server closed it: the loop sees
    /// that close, and re-sends the requests (`Fate::Broken`).
    pub fn try_send_idle(&self, jobs: Vec<Job>) -> Result<(), Vec<Job>> {
        let now = Instant::now();
        let (stopped, jobs): (Vec<Job>, Vec<Job>) =
            jobs.into_iter().partition(|j| j.task.should_stop(now));
        stopped.into_iter().for_each(Job::fail);
        if jobs.is_empty() {
            return Ok(());
        }
        let Some(mut g) = self.state.try_lock() else {
            return Err(jobs);
        };
        if g.broken
            || g.fencing.is_some()
            || !g.inflight.is_empty()
            || !g.out.is_empty()
            || jobs.len() > self.depth
        {
            return Err(jobs);
        }
        self.enqueue(&mut g, jobs.into_iter());
        let mut settle = Settle::default();
        let mut budget = usize::MAX;
        let broke = match self.flush(&mut g, &mut settle, &mut budget) {
            Ok(()) => false,
            Err(f) => {
                self.fail_locked(&mut g, f, &mut settle);
                true
            }
        };
        drop(g);
        settle.apply(&self.peer);
        if broke {
            self.peer.conn_broke(self.loop_index, self.token);
        }
        Ok(())
    }

    /// The loop's periodic check: fail a stalled connection, retire an idle
    /// one. True when the connection is done for.
    pub fn sweep(&self, now: Instant) -> bool {
        let mut settle = Settle::default();
        let mut g = self.state.lock();
        if g.broken {
            return true;
        }
        let cfg = &self.peer.cfg;
        let busy = !g.inflight.is_empty() || !g.out.is_empty();
        let quiet = now.saturating_duration_since(g.last_progress);
        let done = if let Some(reset_at) = g.fencing {
            if now.saturating_duration_since(reset_at) < FENCE_GRACE {
                return false;
            }
            self.break_locked(&mut g, Fate::PeerDead, &mut settle);
            true
        } else if busy && quiet >= cfg.status_timeout {
            let what = if g.out.is_empty() {
                "sent no answer"
            } else {
                "took no request bytes"
            };
            FAIL_LOG.warn(format_args!(
                "tcp: {} {what} for {quiet:?} (MC_TCP_STATUS_TIMEOUT_SEC / MC_TCP_PROGRESS_TIMEOUT_SEC {:?}); resetting the connection and failing its requests and the peer's queued ones",
                self.name, cfg.status_timeout
            ));
            let c = &self.peer.counters().stalled;
            c.fetch_add(1, Ordering::Relaxed);
            // Reset first, fail after the grace: a te-rs target checks for
            // the reset before it applies any byte it still holds, so what
            // is reported FAILED never lands later (server_conn).
            self.hungry.store(false, Ordering::SeqCst);
            sock::reset_fd(self.fd());
            g.fencing = Some(now);
            false
        } else if !busy && now.saturating_duration_since(g.last_used) >= cfg.lane_idle {
            log::debug!("tcp: closing idle connection to {}", self.name);
            self.break_locked(&mut g, Fate::FailAll, &mut settle);
            true
        } else {
            if quiet >= BUFFER_KEEP {
                g.inb.release();
            }
            false
        };
        drop(g);
        settle.apply(&self.peer);
        done
    }

    /// Fence the requests of tasks told to stop: if any is on this
    /// connection, close it (nothing more is read into or sent from their
    /// buffers once this returns), fail them and re-queue the others. True
    /// when the connection is done for.
    pub fn abandon_stopped(&self, now: Instant) -> bool {
        let mut settle = Settle::default();
        let mut g = self.state.lock();
        if g.broken {
            return true;
        }
        let hit = g.inflight.iter().any(|j| j.task.should_stop(now))
            || g.out
                .iter()
                .filter_map(|o| o.unanswered.as_ref())
                .any(|j| j.task.should_stop(now));
        if !hit {
            return false;
        }
        log::debug!(
            "tcp: closing the connection to {}: it carries requests of cancelled or expired tasks",
            self.name
        );
        self.break_locked(&mut g, Fate::Abandoned, &mut settle);
        drop(g);
        settle.apply(&self.peer);
        true
    }

    /// Close from our side (shutdown): everything in flight fails.
    pub fn abort(&self) {
        let mut settle = Settle::default();
        let mut g = self.state.lock();
        if !g.broken {
            self.break_locked(&mut g, Fate::FailAll, &mut settle);
        }
        drop(g);
        settle.apply(&self.peer);
    }

    fn fail_locked(&self, g: &mut State, f: Fail, settle: &mut Settle) {
        let why = match f {
            Fail::Rejected => {
                let (op, len) = g
                    .inflight
                    .front()
                    .map(|j| (if j.write { "WRITE" } else { "READ" }, j.len))
                    .unwrap_or(("request", 0));
                FAIL_LOG.warn(format_args!(
                    "tcp: {} rejected {op} of {len} bytes: address range not registered there",
                    self.name
                ));
                self.peer.counters().refused.fetch_add(1, Ordering::Relaxed);
                return self.break_locked(g, Fate::Rejected, settle);
            }
            Fail::Broken(why) => why,
        };
        self.peer.note_broken();
        let idle = g.inflight.is_empty() && g.out.is_empty();
        if !idle {
            self.peer.counters().broken.fetch_add(1, Ordering::Relaxed);
        }
        let stale = g.pooled_burst;
        self.break_locked(g, Fate::Broken { stale }, settle);
        if idle {
            log::debug!("tcp: idle connection to {} ended: {why}", self.name);
        } else if settle.resent > 0 {
            RESEND_LOG.info(format_args!(
                "tcp: connection to {} ended before answering ({why}; the peer closed it while \
                 idle, or was replaced); re-sending its requests on a new connection",
                self.name
            ));
        } else {
            FAIL_LOG.warn(format_args!(
                "tcp: connection to {} failed: {why}",
                self.name
            ));
        }
    }

    /// Mark broken, stop the socket and hand every request to `settle`.
    fn break_locked(&self, g: &mut State, fate: Fate, settle: &mut Settle) {
        g.broken = true;
        self.hungry.store(false, Ordering::SeqCst);
        sock::shutdown_fd(self.fd());
        let head_left = head_bytes_left(g);
        let mut jobs: Vec<Job> = g.inflight.drain(..).collect();
        jobs.extend(g.out.drain(..).filter_map(|o| o.unanswered));
        g.unsent = 0;
        g.unanswered = 0;
        g.read_bytes = 0;
        g.inb.release();
        match fate {
            Fate::FailAll => settle.failed.extend(jobs),
            Fate::PeerDead => {
                settle.failed.extend(jobs);
                settle.fail_queue = true;
            }
            Fate::Rejected => {
                // No retry cap needed: the head failed, so this made progress.
                let mut it = jobs.into_iter();
                settle.failed.extend(it.next());
                settle.retry.extend(it);
            }
            Fate::Abandoned => {
                let now = Instant::now();
                let (stop, keep): (Vec<Job>, Vec<Job>) =
                    jobs.into_iter().partition(|j| j.task.should_stop(now));
                settle.failed.extend(stop);
                settle.retry.extend(keep);
            }
            Fate::Broken { stale } => {
                // Each break either fails the head or spends one of its
                // bounded re-sends, so this always makes progress.
                let mut it = jobs.into_iter();
                if let Some(mut head) = it.next() {
                    if (stale || !head_left) && head.resends < self.max_resends {
                        head.resends += 1;
                        settle.resent += 1;
                        settle.retry.push(head);
                    } else {
                        settle.failed.push(head);
                    }
                }
                settle.retry.extend(it);
            }
        }
    }
}

/// Whether any byte of the head request (the first one `break_locked`
/// settles: the front of `inflight`, else of `out`) was handed to the
/// socket. Only looked at when a connection ends.
fn head_bytes_left(g: &State) -> bool {
    if g.inflight.is_empty() {
        // Only unanswered (v1) WRITEs wait in `out`.
        return g.out.front().is_some_and(|o| o.sent > 0);
    }
    // The answered requests still in `out` are the tail of `inflight`: if
    // fewer than all, the head was sent whole.
    let mut queued = g.out.iter().filter(|o| o.unanswered.is_none());
    if queued.clone().count() < g.inflight.len() {
        return true;
    }
    queued.next().is_some_and(|o| o.sent > 0)
}

fn check_status(b: &[u8; STATUS_LEN]) -> Result<(), Fail> {
    match Status::decode(b) {
        Some(Status::Ok) => Ok(()),
        Some(Status::AddrRejected) => Err(Fail::Rejected),
        Some(Status::Other(c)) => Err(Fail::Broken(format!("unknown status code {c}"))),
        None => Err(Fail::Broken(format!(
            "malformed status frame {:016x}",
            u64::from_le_bytes(*b)
        ))),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Opcode, Task, TransferRequest};

    fn job(write: bool) -> Job {
        let task = Arc::new(Task::new(TransferRequest {
            opcode: if write { Opcode::Write } else { Opcode::Read },
            source: 0,
            target_id: 1,
            target_offset: 0,
            length: 64,
        }));
        task.set_slices(1);
        Job {
            task,
            write,
            local: 0,
            remote: 0,
            len: 64,
            resends: 0,
            after_break: false,
        }
    }

    fn out(sent: usize, unanswered: Option<Job>) -> Out {
        Out {
            header: [0; HEADER_LEN],
            body_addr: 0,
            body_len: 64,
            sent,
            unanswered,
        }
    }

    #[test]
    fn head_bytes_left_follows_the_head_request() {
        let mut g = State::new(Instant::now());
        assert!(!head_bytes_left(&g), "nothing at all");
        // v2: two requests in flight, both still wholly in `out`.
        g.inflight.extend([job(true), job(false)]);
        g.out.extend([out(0, None), out(0, None)]);
        assert!(!head_bytes_left(&g), "no byte of the head left");
        g.out[0].sent = 3;
        assert!(head_bytes_left(&g), "part of the head left");
        // The head sent whole: only the second is still in `out`.
        g.out.pop_front();
        g.out[0].sent = 0;
        assert!(head_bytes_left(&g), "head sent, its answer pending");
        // v1 WRITEs only: the head is the front of `out`.
        let mut g = State::new(Instant::now());
        g.out
            .extend([out(0, Some(job(true))), out(0, Some(job(true)))]);
        assert!(!head_bytes_left(&g));
        g.out[0].sent = 1;
        assert!(head_bytes_left(&g));
    }
}
