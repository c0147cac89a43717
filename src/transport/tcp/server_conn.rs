//! One data-server connection as a non-blocking state machine, driven by
//! readiness events (spec §7.3 server loop, same bytes on the wire).
//!
//! Requests are served strictly in order: headers are parsed from a small
//! buffer; a WRITE body lands straight in registered memory as it arrives;
//! a READ queues its status frame and a span of registered memory, sent when
//! the socket takes it. v2 status frames leave in request order, and a
//! WRITE's frame only after its last byte is in memory. A WRITE behind
//! unsent READ bodies waits until they are sent, so those READs return the
//! bytes as they were before it.
//!
//! Every copy between the socket and registered memory re-checks its range
//! under a `Pin` (see `regions`): a body whose region was unregistered is
//! abandoned and the connection closed, so the peer's request fails.
//!
//! A te-rs initiator that gives up on a stalled connection resets it (RST)
//! and reports its requests FAILED only `FENCE_GRACE` later. Bytes it sent
//! may still sit in our kernel (we were stopped, or slow): before copying
//! any into memory, a connection not confirmed alive within
//! `ALIVE_RECHECK` asks the kernel whether the peer reset it, and if so the
//! bytes are dropped unapplied. So a FAILED WRITE never lands later.

use std::collections::VecDeque;
use std::io;
use std::mem::MaybeUninit;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, RawFd};
use std::time::{Duration, Instant};

use mio::net::TcpStream;

use super::regions::{Checked, Regions};
use super::wire::{Header, Status, HEADER_LEN};
use crate::serving::{RateLimited, Ticket};

/// Input buffer size: a pipeline of headers plus small WRITE bodies.
const INBUF: usize = 64 * 1024;
/// WRITE bodies from this size on are received without the buffer.
const BIG_WRITE: usize = 16 * 1024;
/// Replies queued before the connection stops taking new requests
/// (backpressure: a peer that does not read its answers gets no more).
const MAX_QUEUED_REPLIES: usize = 256;
/// Bytes moved per `drive` call before other connections get their turn.
pub const DRIVE_BUDGET: usize = 4 << 20;
/// A copy into memory is preceded by a check, at most this old, that the
/// peer has not reset the connection (well below the initiator's
/// `FENCE_GRACE`, so a copy seen alive lands before the peer reports).
const ALIVE_RECHECK: Duration = Duration::from_millis(10);
/// `TCP_CLOSE` of the kernel's `tcp_states.h` (libc does not export it).
const TCP_STATE_CLOSE: u8 = 7;
const MAX_IOV: usize = 64;

static REJECT_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));
static FENCE_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));
static ABORTED_LOG: RateLimited = RateLimited::new(module_path!(), Duration::from_secs(5));

enum Reply {
    Status([u8; 8], usize),
    Body {
        ptr: *mut u8,
        left: usize,
        seen: Checked,
    },
}

/// A WRITE body still arriving.
#[derive(Clone, Copy)]
struct Body {
    next: *mut u8,
    left: usize,
    v2: bool,
    seen: Checked,
}

/// Where the connection stands, for the idle sweep.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Phase {
    /// Never sent a complete header, or a header is partly buffered.
    AwaitingHeader,
    /// A body is being received or replies are being sent.
    Busy,
    /// Between requests.
    Idle,
}

pub enum Drive {
    /// Nothing more can be done until the next readiness event.
    Blocked,
    /// The byte budget ran out with work left: drive again soon.
    More,
    Close(&'static str),
}

pub struct ServeConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub ticket: Ticket,
    /// Allocated on first input, not zeroed (bytes `start..end` were
    /// received); quiet connections give it back.
    buf: Option<Box<[MaybeUninit<u8>]>>,
    start: usize,
    end: usize,
    body: Option<Body>,
    replies: VecDeque<Reply>,
    /// READ bodies among `replies`.
    queued_bodies: usize,
    big_writes: bool,
    served_any: bool,
    /// Close once the queued replies are sent (rejection, peer EOF).
    closing: bool,
    pub last_progress: Instant,
    /// Since when a header is awaited: connecting, or the first byte of a
    /// header after the previous request (a trickle does not extend it).
    pub awaiting_since: Instant,
    /// Bytes moved in total, and the sweep's pace window (start, total then).
    moved_total: u64,
    window: Option<(Instant, u64)>,
    /// When the kernel last said the peer had not reset the connection.
    alive_at: Option<Instant>,
}

fn os_err() -> io::Error {
    io::Error::last_os_error()
}

impl ServeConn {
    pub fn new(stream: TcpStream, peer: SocketAddr, ticket: Ticket) -> ServeConn {
        ServeConn {
            stream,
            peer,
            ticket,
            buf: None,
            start: 0,
            end: 0,
            body: None,
            replies: VecDeque::new(),
            queued_bodies: 0,
            big_writes: false,
            served_any: false,
            closing: false,
            last_progress: Instant::now(),
            awaiting_since: Instant::now(),
            moved_total: 0,
            window: None,
            // Never confirmed: it may have waited in the accept backlog
            // while we were stopped, and been reset there.
            alive_at: None,
        }
    }

    fn fd(&self) -> RawFd {
        self.stream.as_raw_fd()
    }

    /// Whether the peer may still want its WRITE applied: false once it
    /// reset the connection (it gave up and will report FAILED).
    fn peer_waits(&mut self) -> bool {
        let now = Instant::now();
        if self
            .alive_at
            .is_some_and(|t| now.saturating_duration_since(t) < ALIVE_RECHECK)
        {
            return true;
        }
        // `tcpi_state` is the first byte of `struct tcp_info`.
        let mut info = [0u8; 8];
        let mut len = info.len() as libc::socklen_t;
        // SAFETY: getsockopt writes at most `len` bytes into `info`.
        let rc = unsafe {
            libc::getsockopt(
                self.fd(),
                libc::IPPROTO_TCP,
                libc::TCP_INFO,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        // TCP_CLOSE: reset by the peer (a FIN leaves CLOSE_WAIT: the peer
        // still wants what it sent).
        if rc == 0 && info[0] == TCP_STATE_CLOSE {
            ABORTED_LOG.warn(format_args!(
                "tcp data server: {} reset the connection (it gave up on its requests); dropping its WRITE bytes unapplied",
                self.peer
            ));
            return false;
        }
        self.alive_at = Some(now);
        true
    }

    pub fn phase(&self) -> Phase {
        if self.body.is_some() || !self.replies.is_empty() {
            Phase::Busy
        } else if !self.served_any || self.end > self.start {
            Phase::AwaitingHeader
        } else {
            Phase::Idle
        }
    }

    /// Give the input buffer back while nothing is buffered (the sweep calls
    /// this for quiet connections, so busy ones keep theirs).
    pub fn release_buffer(&mut self) {
        if self.end == self.start {
            self.buf = None;
        }
    }

    /// For the sweep: false when the connection stayed busy for a whole
    /// `window` and moved fewer than `min_bytes` in it (a slow sender or a
    /// slow reader of its answers). Busy time is sampled at each sweep.
    pub fn keeps_pace(&mut self, now: Instant, window: Duration, min_bytes: u64) -> bool {
        if self.phase() != Phase::Busy {
            self.window = None;
            return true;
        }
        match self.window {
            None => {
                self.window = Some((now, self.moved_total));
                true
            }
            Some((since, at)) if now.saturating_duration_since(since) >= window => {
                self.window = Some((now, self.moved_total));
                self.moved_total - at >= min_bytes
            }
            Some(_) => true,
        }
    }

    /// Make all the progress the socket allows now, within the budget.
    pub fn drive(&mut self, regions: &Regions) -> Drive {
        let mut moved = 0usize;
        let d = self.drive_moving(regions, &mut moved);
        self.moved_total += moved as u64;
        d
    }

    fn drive_moving(&mut self, regions: &Regions, moved: &mut usize) -> Drive {
        loop {
            let mut progress = false;
            match self.send_replies(regions) {
                Ok(n) => {
                    *moved += n;
                    progress |= n > 0;
                }
                Err(e) => return self.io_close(e),
            }
            if self.closing {
                return if self.replies.is_empty() {
                    Drive::Close("closed after its last answer")
                } else {
                    Drive::Blocked
                };
            }
            if self.body.is_some() {
                match self.recv_body(regions) {
                    Ok(n) => {
                        *moved += n;
                        progress |= n > 0;
                    }
                    Err(e) => return self.io_close(e),
                }
            }
            if self.body.is_none() {
                progress |= self.parse(regions);
                if self.needs_input() {
                    match self.fill() {
                        Ok(n) => {
                            *moved += n;
                            progress |= n > 0;
                        }
                        Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                            if self.end > self.start {
                                return Drive::Close("peer closed inside a header");
                            }
                            // Answer what was asked, then close.
                            self.closing = true;
                            continue;
                        }
                        Err(e) => return self.io_close(e),
                    }
                }
            }
            if progress {
                self.last_progress = Instant::now();
            }
            if self.closing {
                continue;
            }
            if !progress {
                return Drive::Blocked;
            }
            if *moved >= DRIVE_BUDGET {
                return Drive::More;
            }
        }
    }

    fn io_close(&self, e: io::Error) -> Drive {
        log::debug!("tcp data server: connection from {} ended: {e}", self.peer);
        Drive::Close("socket error")
    }

    /// More header bytes are needed and there is room to take them.
    fn needs_input(&self) -> bool {
        !self.closing
            && self.body.is_none()
            && self.end - self.start < HEADER_LEN
            && self.replies.len() < MAX_QUEUED_REPLIES
    }

    /// Serve every complete header buffered; true when one was consumed.
    fn parse(&mut self, regions: &Regions) -> bool {
        let Some(buf) = self.buf.take() else {
            return false;
        };
        let mut any = false;
        while self.body.is_none()
            && !self.closing
            && self.replies.len() < MAX_QUEUED_REPLIES
            && self.end - self.start >= HEADER_LEN
        {
            let mut raw = [0u8; HEADER_LEN];
            // SAFETY: bytes `start..end` (a header's worth) were received.
            unsafe {
                std::ptr::copy_nonoverlapping(
                    buf[self.start..].as_ptr().cast::<u8>(),
                    raw.as_mut_ptr(),
                    HEADER_LEN,
                )
            };
            let h = Header::decode(&raw);
            if h.is_write() && self.queued_bodies > 0 {
                // Earlier READs must leave with the bytes as they were.
                break;
            }
            self.start += HEADER_LEN;
            self.served_any = true;
            any = true;
            let v2 = h.is_v2();
            let pin = regions.pin();
            let checked = pin.check(h.addr, h.size);
            let Some(seen) = checked.filter(|_| h.size <= isize::MAX as u64) else {
                REJECT_LOG.warn(format_args!(
                    "tcp data server: rejecting {} of {} bytes at {:#x} from {}: not inside one registered region",
                    if h.is_write() { "WRITE" } else { "READ" },
                    h.size,
                    h.addr,
                    self.peer
                ));
                if v2 {
                    self.push_status(Status::AddrRejected);
                }
                self.closing = true;
                self.end = self.start;
                break;
            };
            let ptr = h.addr as *mut u8;
            let len = h.size as usize;
            if h.is_write() {
                self.big_writes = len >= BIG_WRITE;
                let n = (self.end - self.start).min(len);
                if n > 0 && !self.peer_waits() {
                    self.closing = true;
                    self.replies.clear();
                    self.queued_bodies = 0;
                    self.end = self.start;
                    break;
                }
                // SAFETY: `[addr, addr+len)` lies inside a region the owner
                // registered, and `pin` holds off its removal; `n` buffered
                // (received) bytes fit in it and our buffer never overlaps it.
                unsafe {
                    std::ptr::copy_nonoverlapping(buf[self.start..].as_ptr().cast::<u8>(), ptr, n)
                };
                drop(pin);
                self.start += n;
                if n == len {
                    self.write_done(v2);
                } else {
                    self.body = Some(Body {
                        // SAFETY: `n < len`, so the pointer stays inside the range.
                        next: unsafe { ptr.add(n) },
                        left: len - n,
                        v2,
                        seen,
                    });
                }
            } else {
                self.big_writes = false;
                if v2 {
                    self.push_status(Status::Ok);
                }
                self.replies.push_back(Reply::Body {
                    ptr,
                    left: len,
                    seen,
                });
                self.queued_bodies += 1;
            }
        }
        if self.start == self.end {
            self.start = 0;
            self.end = 0;
        }
        if any {
            self.awaiting_since = Instant::now();
        }
        self.buf = Some(buf);
        any
    }

    fn push_status(&mut self, s: Status) {
        self.replies.push_back(Reply::Status(s.encode(), 0));
    }

    fn write_done(&mut self, v2: bool) {
        if v2 {
            self.push_status(Status::Ok);
        }
    }

    /// One `recv` into the buffer. After a large WRITE only the next header
    /// is taken, so its body goes straight to memory.
    fn fill(&mut self) -> io::Result<usize> {
        let buf = self.buf.get_or_insert_with(|| Box::new_uninit_slice(INBUF));
        if self.start > 0 {
            buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let room = if self.big_writes {
            HEADER_LEN - self.end
        } else {
            INBUF - self.end
        };
        // SAFETY: the span is the free tail of our own buffer.
        let n = unsafe {
            recv_raw(
                self.stream.as_raw_fd(),
                buf[self.end..].as_mut_ptr().cast::<u8>(),
                room,
            )
        }?;
        if self.end == 0 && n > 0 {
            self.awaiting_since = Instant::now();
        }
        self.end += n;
        Ok(n)
    }

    fn recv_body(&mut self, regions: &Regions) -> io::Result<usize> {
        let Some(Body {
            next: ptr,
            left,
            v2,
            mut seen,
        }) = self.body
        else {
            return Ok(0);
        };
        if !self.peer_waits() {
            return Err(io::Error::new(
                io::ErrorKind::ConnectionReset,
                "peer reset the connection mid-WRITE",
            ));
        }
        let pin = regions.pin();
        if !pin.still_allows(&mut seen, ptr as u64, left as u64) {
            return Err(self.fenced("WRITE into", left));
        }
        // SAFETY: `[ptr, ptr+left)` is the rest of a WRITE range still
        // registered, and `pin` holds off its removal during the copy.
        let received = unsafe { recv_raw(self.fd(), ptr, left) };
        drop(pin);
        let n = match received {
            Ok(n) => n,
            Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => {
                return Err(io::Error::new(e.kind(), "peer closed inside a WRITE body"))
            }
            Err(e) => return Err(e),
        };
        if n == left {
            self.body = None;
            self.write_done(v2);
        } else {
            self.body = Some(Body {
                // SAFETY: `n < left`, so the pointer stays inside the range.
                next: unsafe { ptr.add(n) },
                left: left - n,
                v2,
                seen,
            });
        }
        Ok(n)
    }

    /// The unregister fence bit: log (rate-limited) and end the connection.
    fn fenced(&self, what: &str, left: usize) -> io::Error {
        FENCE_LOG.warn(format_args!(
            "tcp data server: abandoning a {what} memory unregistered meanwhile ({left} bytes left); closing the connection from {}",
            self.peer
        ));
        io::Error::other("region unregistered mid-request")
    }

    /// Send queued replies until the socket is full; bytes sent.
    fn send_replies(&mut self, regions: &Regions) -> io::Result<usize> {
        let mut total = 0;
        while !self.replies.is_empty() {
            let mut iov: [libc::iovec; MAX_IOV] = [libc::iovec {
                iov_base: std::ptr::null_mut(),
                iov_len: 0,
            }; MAX_IOV];
            let mut k = 0;
            let pin = regions.pin();
            let mut revoked = None;
            for r in self.replies.iter_mut().take(MAX_IOV) {
                iov[k] = match r {
                    Reply::Status(b, off) => libc::iovec {
                        iov_base: b[*off..].as_mut_ptr() as *mut libc::c_void,
                        iov_len: 8 - *off,
                    },
                    Reply::Body { ptr, left, seen } => {
                        if !pin.still_allows(seen, *ptr as u64, *left as u64) {
                            revoked = Some(*left);
                            break;
                        }
                        libc::iovec {
                            iov_base: *ptr as *mut libc::c_void,
                            iov_len: *left,
                        }
                    }
                };
                k += 1;
            }
            if let Some(left) = revoked {
                // Answers before it could still go, but a READ must not end
                // short in silence: close now, the peer fails what is open.
                drop(pin);
                return Err(self.fenced("READ reply from", left));
            }
            // SAFETY: msghdr is plain data; zeroed is a valid empty message.
            let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
            msg.msg_iov = iov.as_mut_ptr();
            msg.msg_iovlen = k as _;
            // SAFETY: status iovecs point into our queued frames; body iovecs
            // lie inside registered regions (re-checked above) whose removal
            // `pin` holds off until sendmsg returns; sendmsg only reads.
            let n = unsafe { libc::sendmsg(self.fd(), &msg, libc::MSG_NOSIGNAL) };
            drop(pin);
            if n < 0 {
                let e = os_err();
                match e.kind() {
                    io::ErrorKind::WouldBlock => return Ok(total),
                    io::ErrorKind::Interrupted => continue,
                    _ => return Err(e),
                }
            }
            let mut n = n as usize;
            total += n;
            while n > 0 {
                let Some(front) = self.replies.front_mut() else {
                    break;
                };
                let (done, used) = match front {
                    Reply::Status(_, off) => {
                        let used = (8 - *off).min(n);
                        *off += used;
                        (*off == 8, used)
                    }
                    Reply::Body { ptr, left, .. } => {
                        let used = (*left).min(n);
                        // SAFETY: `used <= left`: stays inside (or one past) the span.
                        *ptr = unsafe { ptr.add(used) };
                        *left -= used;
                        (*left == 0, used)
                    }
                };
                n -= used;
                if done && matches!(self.replies.pop_front(), Some(Reply::Body { .. })) {
                    self.queued_bodies -= 1;
                }
            }
            if total >= DRIVE_BUDGET {
                return Ok(total);
            }
        }
        Ok(total)
    }
}

/// One non-blocking `recv`: `Ok(0)` when nothing is waiting, EOF is
/// `UnexpectedEof`.
///
/// # Safety
/// `[ptr, ptr+len)` must be writable memory.
unsafe fn recv_raw(fd: RawFd, ptr: *mut u8, len: usize) -> io::Result<usize> {
    if len == 0 {
        return Ok(0);
    }
    loop {
        // SAFETY: the caller vouches for the span.
        let n = unsafe { libc::recv(fd, ptr as *mut libc::c_void, len, 0) };
        if n > 0 {
            return Ok(n as usize);
        }
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "peer closed the connection",
            ));
        }
        let e = os_err();
        match e.kind() {
            io::ErrorKind::WouldBlock => return Ok(0),
            io::ErrorKind::Interrupted => continue,
            _ => return Err(e),
        }
    }
}
