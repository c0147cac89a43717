//! A receive buffer for small frames: one `recv` picks up many status frames
//! (and the small READ bodies behind them) at once instead of one syscall
//! per frame. Non-blocking: a fill that finds nothing says `WouldBlock`.
//! The buffer is allocated on first use and given back while a connection
//! is quiet, so thousands of idle connections cost no buffers. It is not
//! zeroed: a fresh connection's first answer faults in the pages its bytes
//! land on, not all sixteen (a zeroed one cost its thread ~30 µs).

use std::io;
use std::mem::MaybeUninit;
use std::os::fd::RawFd;

use super::sock::{self, IoSpan};

/// Default capacity: holds a pipeline of small answers, and bounds the
/// extra copy a large payload's first bytes may take.
pub const INBUF_CAP: usize = 64 * 1024;

pub struct InBuf {
    cap: usize,
    /// Bytes `start..end` were received; the rest is uninitialised.
    buf: Box<[MaybeUninit<u8>]>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub fn new(cap: usize) -> InBuf {
        InBuf {
            cap: cap.max(64),
            buf: Box::new([]),
            start: 0,
            end: 0,
        }
    }

    pub fn len(&self) -> usize {
        self.end - self.start
    }

    pub fn is_empty(&self) -> bool {
        self.start == self.end
    }

    /// Give the memory back if nothing is buffered.
    pub fn release(&mut self) {
        if self.is_empty() {
            self.buf = Box::new([]);
            self.start = 0;
            self.end = 0;
        }
    }

    /// One non-blocking `recv` appending whatever the socket has, at most
    /// `max` bytes (at least 1): lets a reader that expects a large payload
    /// next stop at the frame in front of it. `WouldBlock` when nothing
    /// waits, `UnexpectedEof` at EOF. Also says whether the socket gave
    /// less than asked: it is empty now (see `ClientConn::receive`).
    pub fn fill_max(&mut self, fd: RawFd, max: usize) -> io::Result<(usize, bool)> {
        if self.buf.is_empty() {
            self.buf = Box::new_uninit_slice(self.cap);
        }
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let span = IoSpan {
            ptr: self.buf[self.end..].as_mut_ptr().cast::<u8>(),
            len: (self.buf.len() - self.end).min(max.max(1)),
        };
        // SAFETY: the span is the free tail of our own buffer.
        let n = unsafe { sock::recv_nb(fd, &[span])? };
        self.end += n;
        Ok((n, n < span.len))
    }

    /// The next `N` buffered bytes; `None` when fewer are buffered.
    pub fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.len() < N {
            return None;
        }
        let mut b = [0u8; N];
        // SAFETY: bytes `start..end` (at least `N`) were written by `recv`.
        unsafe {
            std::ptr::copy_nonoverlapping(
                self.buf[self.start..].as_ptr().cast::<u8>(),
                b.as_mut_ptr(),
                N,
            )
        };
        self.start += N;
        Some(b)
    }

    /// Move up to `dst.len` buffered bytes into `dst`; returns how many.
    ///
    /// # Safety
    /// `dst` must be writable memory for its whole length during the call.
    pub unsafe fn copy_out(&mut self, dst: IoSpan) -> usize {
        let n = self.len().min(dst.len);
        // SAFETY: `n` bytes are buffered (written by `recv`) and fit in
        // `dst` (caller's promise); our buffer never overlaps caller memory.
        unsafe {
            std::ptr::copy_nonoverlapping(self.buf[self.start..].as_ptr().cast::<u8>(), dst.ptr, n)
        };
        self.start += n;
        n
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn frames_and_payload_without_blocking() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        let fd = rx.as_raw_fd();
        let mut b = InBuf::new(64);
        // Nothing sent yet: a fill says so instead of waiting.
        assert_eq!(
            b.fill_max(fd, usize::MAX).unwrap_err().kind(),
            io::ErrorKind::WouldBlock
        );
        let mut msg = Vec::new();
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(&2u64.to_le_bytes());
        msg.extend((0..40u32).map(|i| i as u8));
        tx.write_all(&msg).unwrap();
        while b.len() < msg.len() {
            match b.fill_max(fd, usize::MAX) {
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("{e}"),
            }
        }
        assert_eq!(b.take::<8>(), Some(1u64.to_le_bytes()));
        assert_eq!(b.take::<8>(), Some(2u64.to_le_bytes()));
        let mut dst = vec![0u8; 50];
        let span = IoSpan {
            ptr: dst.as_mut_ptr(),
            len: dst.len(),
        };
        // SAFETY: `dst` is a live Vec of `span.len` bytes.
        assert_eq!(unsafe { b.copy_out(span) }, 40);
        assert!(dst[..40].iter().enumerate().all(|(i, &v)| v == i as u8));
        assert!(b.is_empty());
        b.release();
        assert_eq!(b.take::<1>(), None);
        drop(tx);
        let eof = loop {
            match b.fill_max(fd, usize::MAX) {
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => std::thread::yield_now(),
                r => break r,
            }
        };
        assert_eq!(eof.unwrap_err().kind(), io::ErrorKind::UnexpectedEof);
    }
}
