//! Socket I/O straight to and from raw memory: payloads are sent from and
//! received into the registered/source regions with no intermediate copy.
//!
//! Every send uses `MSG_NOSIGNAL`: the library lives inside C programs that
//! do not ignore SIGPIPE.

use std::io;
use std::net::{SocketAddr, TcpStream};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use socket2::{Domain, SockAddr, SockRef, Socket, Type};

/// A byte range of raw memory to send from or receive into.
#[derive(Clone, Copy, Debug)]
pub struct IoSpan {
    pub ptr: *mut u8,
    pub len: usize,
}

fn last_err() -> io::Error {
    io::Error::last_os_error()
}

/// iovecs per call (far below IOV_MAX); longer span lists take more calls.
pub const MAX_IOV: usize = 64;

/// The first `MAX_IOV` spans as iovecs, on the stack (no allocation per
/// syscall), and how many there are.
fn to_iovecs(spans: &[IoSpan]) -> ([libc::iovec; MAX_IOV], usize) {
    let mut iov = [libc::iovec {
        iov_base: std::ptr::null_mut(),
        iov_len: 0,
    }; MAX_IOV];
    let n = spans.len().min(MAX_IOV);
    for (v, s) in iov.iter_mut().zip(spans) {
        *v = libc::iovec {
            iov_base: s.ptr as *mut libc::c_void,
            iov_len: s.len,
        };
    }
    (iov, n)
}

/// One `sendmsg`/`recvmsg` over (up to `MAX_IOV` of) `spans`; `Ok(0)` is EOF on
/// a receive.
///
/// # Safety
/// Each span must be valid memory (readable to send, writable to receive)
/// for its whole length for the duration of the call.
unsafe fn msg_once(fd: RawFd, spans: &[IoSpan], send: bool, flags: i32) -> io::Result<usize> {
    let (mut iov, n) = to_iovecs(spans);
    // SAFETY: msghdr is plain data; zeroed is a valid empty message.
    let mut msg: libc::msghdr = unsafe { std::mem::zeroed() };
    msg.msg_iov = iov.as_mut_ptr();
    msg.msg_iovlen = n as _;
    // SAFETY: the iovecs point at memory the caller vouched for.
    let n = unsafe {
        if send {
            libc::sendmsg(fd, &msg, flags)
        } else {
            libc::recvmsg(fd, &mut msg, flags)
        }
    };
    if n < 0 {
        Err(last_err())
    } else {
        Ok(n as usize)
    }
}

fn peer_closed() -> io::Error {
    io::Error::new(io::ErrorKind::UnexpectedEof, "peer closed the connection")
}

/// One non-blocking `sendmsg` of (up to `MAX_IOV` of) `spans`: the bytes the
/// kernel took, or `WouldBlock` when the socket buffer is full.
///
/// # Safety
/// Each span must be readable memory for its whole length for the duration
/// of the call.
pub unsafe fn send_nb(fd: RawFd, spans: &[IoSpan]) -> io::Result<usize> {
    loop {
        // SAFETY: the spans are readable per the caller.
        match unsafe { msg_once(fd, spans, true, libc::MSG_NOSIGNAL | libc::MSG_DONTWAIT) } {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// One non-blocking `recvmsg` into `spans`: the bytes received (at least
/// one), `WouldBlock` when none are waiting, `UnexpectedEof` at EOF.
///
/// # Safety
/// Each span must be writable memory for its whole length for the duration
/// of the call.
pub unsafe fn recv_nb(fd: RawFd, spans: &[IoSpan]) -> io::Result<usize> {
    loop {
        // SAFETY: the spans are writable per the caller.
        match unsafe { msg_once(fd, spans, false, libc::MSG_DONTWAIT) } {
            Ok(0) => return Err(peer_closed()),
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            r => return r,
        }
    }
}

/// Wake every thread blocked on `fd` (recv returns 0, send fails); the fd
/// itself stays open until its owner drops it.
pub fn shutdown_fd(fd: RawFd) {
    // SAFETY: shutdown on a (possibly already shut) socket fd has no memory effects.
    unsafe {
        libc::shutdown(fd, libc::SHUT_RDWR);
    }
}

/// Abort a connection with a reset (RST), keeping the descriptor: a TCP
/// `connect` to `AF_UNSPEC` disconnects, and an established socket with
/// data in flight is reset, so the peer's kernel knows at once.
pub fn reset_fd(fd: RawFd) {
    // SO_LINGER 0 makes the disconnect a reset whatever is unsent.
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    // SAFETY: setsockopt reads a `linger` of the size passed; connect reads
    // a sockaddr of the size passed; neither touches other memory.
    unsafe {
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_LINGER,
            (&linger as *const libc::linger).cast(),
            std::mem::size_of::<libc::linger>() as libc::socklen_t,
        );
        let mut unspec: libc::sockaddr = std::mem::zeroed();
        unspec.sa_family = libc::AF_UNSPEC as libc::sa_family_t;
        libc::connect(
            fd,
            &unspec,
            std::mem::size_of::<libc::sockaddr>() as libc::socklen_t,
        );
    }
}

/// NODELAY and optional buffer sizes for a data socket (client or server).
pub fn tune<S: AsFd>(sock: &S, buf: usize) {
    let s = SockRef::from(sock);
    let _ = s.set_nodelay(true);
    if buf > 0 {
        // Best effort, as `MC_TCP_*_BUF` always was: the kernel clamps it.
        let _ = s.set_send_buffer_size(buf);
        let _ = s.set_recv_buffer_size(buf);
    }
}

/// Connect with a deadline, giving up early when `stop` is raised (so a
/// transport shutdown never waits for a slow connect). The stream is left
/// non-blocking, for an event loop.
pub fn connect(addr: &SocketAddr, timeout: Duration, stop: &AtomicBool) -> io::Result<TcpStream> {
    match begin_connect(addr)? {
        Begun::Connected(s) => Ok(s),
        Begun::Pending(s) => finish_connect(s, addr, timeout, stop),
    }
}

/// A connect started without waiting.
pub enum Begun {
    Connected(TcpStream),
    /// Still under way (`finish_connect` waits for it).
    Pending(Socket),
}

/// Start a non-blocking connect and look once, without waiting, whether it
/// is decided: to a local address the handshake completes inside the
/// `connect` call.
pub fn begin_connect(addr: &SocketAddr) -> io::Result<Begun> {
    // close-on-exec, as socket2 creates every socket on Linux.
    let sock = Socket::new(Domain::for_address(*addr), Type::STREAM, None)?;
    sock.set_nonblocking(true)?;
    match sock.connect(&SockAddr::from(*addr)) {
        Ok(()) => Ok(Begun::Connected(sock.into())),
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {
            let mut p = libc::pollfd {
                fd: sock.as_raw_fd(),
                events: libc::POLLOUT,
                revents: 0,
            };
            // SAFETY: one valid pollfd; a zero timeout never blocks.
            if unsafe { libc::poll(&mut p, 1, 0) } <= 0 {
                return Ok(Begun::Pending(sock));
            }
            match sock.take_error()? {
                Some(e) => Err(e),
                None => Ok(Begun::Connected(sock.into())),
            }
        }
        Err(e) => Err(e),
    }
}

/// Wait for a connect `begin_connect` left under way.
pub fn finish_connect(
    sock: Socket,
    addr: &SocketAddr,
    timeout: Duration,
    stop: &AtomicBool,
) -> io::Result<TcpStream> {
    wait_connected(sock.as_raw_fd(), addr, timeout, stop)?;
    if let Some(e) = sock.take_error()? {
        return Err(e);
    }
    Ok(sock.into())
}

/// Wait until a non-blocking connect on `fd` is decided (writable), in
/// steps of at most 100 ms so `stop` is seen.
fn wait_connected(
    fd: RawFd,
    addr: &SocketAddr,
    timeout: Duration,
    stop: &AtomicBool,
) -> io::Result<()> {
    let deadline = Instant::now() + timeout;
    loop {
        if stop.load(Ordering::Acquire) {
            return Err(io::Error::new(
                io::ErrorKind::Interrupted,
                "transport shutting down",
            ));
        }
        let now = Instant::now();
        if now >= deadline {
            return Err(io::Error::new(
                io::ErrorKind::TimedOut,
                format!("connect to {addr} timed out after {timeout:?}"),
            ));
        }
        let step = (deadline - now).min(Duration::from_millis(100));
        let mut p = libc::pollfd {
            fd,
            events: libc::POLLOUT,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, step.as_millis().max(1) as i32) };
        if n > 0 {
            return Ok(());
        }
        if n < 0 {
            let e = last_err();
            if e.kind() != io::ErrorKind::Interrupted {
                return Err(e);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refused_connect_fails_fast() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let addr = l.local_addr().unwrap();
        drop(l);
        let stop = AtomicBool::new(false);
        let t = Instant::now();
        assert!(connect(&addr, Duration::from_secs(5), &stop).is_err());
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
