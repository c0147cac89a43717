//! A receive buffer for small frames: one `recv` picks up many request
//! headers or status frames at once instead of one syscall per frame.
//! Payload bytes that arrived along with them are copied out; the rest of a
//! payload goes straight from the socket into its memory.

use std::io;
use std::os::fd::RawFd;

use super::sock::{self, IoSpan};

/// Default capacity: holds a pipeline of small answers or headers, and
/// bounds the extra copy a large payload's first bytes may take.
pub const INBUF_CAP: usize = 64 * 1024;

pub struct InBuf {
    buf: Box<[u8]>,
    start: usize,
    end: usize,
}

impl InBuf {
    pub fn new(cap: usize) -> InBuf {
        InBuf {
            buf: vec![0u8; cap.max(64)].into_boxed_slice(),
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

    /// One `recv` appending whatever the socket has (at least one byte).
    /// EOF is `UnexpectedEof`.
    pub fn fill(&mut self, fd: RawFd) -> io::Result<usize> {
        self.fill_max(fd, usize::MAX)
    }

    /// `fill`, taking at most `max` bytes (at least 1): lets a reader that
    /// expects a large payload next stop at the frame in front of it.
    pub fn fill_max(&mut self, fd: RawFd, max: usize) -> io::Result<usize> {
        if self.is_empty() {
            self.start = 0;
            self.end = 0;
        } else if self.end == self.buf.len() {
            self.buf.copy_within(self.start..self.end, 0);
            self.end -= self.start;
            self.start = 0;
        }
        let span = IoSpan {
            ptr: self.buf[self.end..].as_mut_ptr(),
            len: (self.buf.len() - self.end).min(max.max(1)),
        };
        // SAFETY: the span is the free tail of our own buffer.
        let n = unsafe { sock::recv_some(fd, &[span])? };
        self.end += n;
        Ok(n)
    }

    /// Receive until at least `n` bytes are buffered (`n` <= capacity).
    pub fn fill_to(&mut self, fd: RawFd, n: usize) -> io::Result<()> {
        while self.len() < n {
            self.fill(fd)?;
        }
        Ok(())
    }

    /// The next `N` buffered bytes; `None` when fewer are buffered.
    pub fn take<const N: usize>(&mut self) -> Option<[u8; N]> {
        if self.len() < N {
            return None;
        }
        let mut b = [0u8; N];
        b.copy_from_slice(&self.buf[self.start..self.start + N]);
        self.start += N;
        Some(b)
    }

    /// Fill `dst` with the next `dst.len` bytes of the stream: buffered
    /// bytes first, then straight from the socket.
    ///
    /// # Safety
    /// `dst` must be writable memory for its whole length during the call.
    pub unsafe fn read_into(&mut self, fd: RawFd, dst: IoSpan) -> io::Result<()> {
        let n = self.len().min(dst.len);
        // SAFETY: `n` bytes are buffered and fit in `dst` (caller's promise);
        // our buffer never overlaps caller memory.
        unsafe { std::ptr::copy_nonoverlapping(self.buf[self.start..].as_ptr(), dst.ptr, n) };
        self.start += n;
        if n == dst.len {
            return Ok(());
        }
        let rest = IoSpan {
            // SAFETY: `n < dst.len`, so the pointer stays inside `dst`.
            ptr: unsafe { dst.ptr.add(n) },
            len: dst.len - n,
        };
        // SAFETY: `rest` lies inside `dst` (see above).
        unsafe { sock::recv_all(fd, &[rest]) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;
    use std::os::fd::AsRawFd;

    #[test]
    fn frames_and_payload_across_buffer_and_socket() {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut tx = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (rx, _) = l.accept().unwrap();
        // Two 8-byte frames then a 200-byte payload, with a 64-byte buffer:
        // the payload is partly buffered, partly read directly.
        let mut msg = Vec::new();
        msg.extend_from_slice(&1u64.to_le_bytes());
        msg.extend_from_slice(&2u64.to_le_bytes());
        msg.extend((0..200u32).map(|i| i as u8));
        tx.write_all(&msg).unwrap();
        let mut b = InBuf::new(64);
        b.fill_to(rx.as_raw_fd(), 16).unwrap();
        assert_eq!(b.take::<8>(), Some(1u64.to_le_bytes()));
        assert_eq!(b.take::<8>(), Some(2u64.to_le_bytes()));
        let mut dst = vec![0u8; 200];
        let span = IoSpan {
            ptr: dst.as_mut_ptr(),
            len: dst.len(),
        };
        // SAFETY: `dst` is a live Vec of `span.len` bytes.
        unsafe { b.read_into(rx.as_raw_fd(), span).unwrap() };
        assert!(dst.iter().enumerate().all(|(i, &v)| v == i as u8));
        assert!(b.is_empty());
        assert_eq!(b.take::<1>(), None);
        drop(tx);
        assert_eq!(
            b.fill(rx.as_raw_fd()).unwrap_err().kind(),
            io::ErrorKind::UnexpectedEof
        );
    }
}
