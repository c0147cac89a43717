//! One handshake connection as a non-blocking state machine: read one frame
//! (bounded, incrementally), hand it to a worker, send the reply with the
//! request's framing, `shutdown(SHUT_WR)`, wait for the client's EOF, close.

use std::io::{self, Read, Write};
use std::net::{Shutdown, SocketAddr};
use std::time::Instant;

use mio::net::TcpStream;

use super::frame::{self, Frame};
use crate::serving::Ticket;

#[derive(Debug, PartialEq, Eq)]
pub enum HsState {
    Reading,
    /// A worker is computing the reply.
    Dispatched,
    Replying,
    /// Reply sent and write side shut: waiting for the client to close.
    Draining,
}

pub enum HsDrive {
    Blocked,
    /// A complete, valid frame: dispatch it.
    Frame(Frame),
    /// Close now; `Some(why)` is worth a (rate-limited) warning.
    Close(Option<String>),
}

pub struct HsConn {
    pub stream: TcpStream,
    pub peer: SocketAddr,
    pub ticket: Ticket,
    pub state: HsState,
    buf: Vec<u8>,
    /// Whole frame size once its header is in.
    want: Option<usize>,
    out: Vec<u8>,
    sent: usize,
    pub started: Instant,
    pub last_progress: Instant,
    /// Bytes this connection holds against the server's buffer budget.
    pub accounted: usize,
}

impl HsConn {
    pub fn new(stream: TcpStream, peer: SocketAddr, ticket: Ticket) -> HsConn {
        let now = Instant::now();
        HsConn {
            stream,
            peer,
            ticket,
            state: HsState::Reading,
            buf: Vec::new(),
            want: None,
            out: Vec::new(),
            sent: 0,
            started: now,
            last_progress: now,
            accounted: 0,
        }
    }

    /// The worker's reply (already framed); `None`: close without a reply.
    pub fn set_reply(&mut self, reply: Vec<u8>) {
        self.out = reply;
        self.sent = 0;
        self.state = HsState::Replying;
    }

    /// Progress as far as the socket allows. `budget_left` is what the
    /// server may still buffer for all connections.
    pub fn drive(&mut self, max_len: u64, budget_left: usize) -> HsDrive {
        match self.state {
            HsState::Reading => self.read(max_len, budget_left),
            HsState::Dispatched => HsDrive::Blocked,
            HsState::Replying => self.write(),
            HsState::Draining => self.drain(),
        }
    }

    fn read(&mut self, max_len: u64, budget_left: usize) -> HsDrive {
        let mut chunk = [0u8; 16 * 1024];
        loop {
            let need = match self.want {
                Some(w) => w - self.buf.len(),
                None => frame::HEADER_LEN - self.buf.len(),
            };
            let take = need.min(chunk.len());
            if self.buf.len() + take > self.accounted + budget_left {
                return HsDrive::Close(Some(format!(
                    "handshake from {} dropped: the server's frame buffer budget is spent",
                    self.peer
                )));
            }
            match self.stream.read(&mut chunk[..take]) {
                Ok(0) => {
                    return HsDrive::Close(Some(format!(
                    "handshake from {} rejected: connection closed after {} bytes, inside a frame",
                    self.peer,
                    self.buf.len()
                )))
                }
                Ok(n) => {
                    self.buf.extend_from_slice(&chunk[..n]);
                    self.accounted = self.accounted.max(self.buf.len());
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HsDrive::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => {
                    return HsDrive::Close(Some(format!(
                        "handshake from {} rejected: {e}",
                        self.peer
                    )))
                }
            }
            if self.want.is_none() && self.buf.len() == frame::HEADER_LEN {
                let len = u64::from_ne_bytes(self.buf[..8].try_into().expect("8 bytes"));
                if len == 0 || len > max_len {
                    let why = frame::decode(&self.buf, max_len)
                        .err()
                        .map_or_else(|| "invalid frame".to_string(), |e| e.to_string());
                    return HsDrive::Close(Some(format!(
                        "handshake from {} rejected: {why}",
                        self.peer
                    )));
                }
                self.want = Some(frame::HEADER_LEN + len as usize);
            }
            if self.want == Some(self.buf.len()) {
                let bytes = std::mem::take(&mut self.buf);
                self.state = HsState::Dispatched;
                return match frame::decode(&bytes, max_len) {
                    Ok(f) => HsDrive::Frame(f),
                    Err(e) => {
                        HsDrive::Close(Some(format!("handshake from {} rejected: {e}", self.peer)))
                    }
                };
            }
        }
    }

    fn write(&mut self) -> HsDrive {
        while self.sent < self.out.len() {
            match self.stream.write(&self.out[self.sent..]) {
                Ok(n) => {
                    self.sent += n;
                    self.last_progress = Instant::now();
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HsDrive::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return HsDrive::Close(Some(format!(
                        "handshake reply to {} failed: {e}",
                        self.peer
                    )))
                }
            }
        }
        self.out = Vec::new();
        // Half-close, then let the client close first (upstream does the same).
        let _ = self.stream.shutdown(Shutdown::Write);
        self.state = HsState::Draining;
        self.drain()
    }

    fn drain(&mut self) -> HsDrive {
        let mut sink = [0u8; 512];
        loop {
            match self.stream.read(&mut sink) {
                Ok(0) => return HsDrive::Close(None),
                Ok(_) => self.last_progress = Instant::now(),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return HsDrive::Blocked,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(_) => return HsDrive::Close(None),
            }
        }
    }
}
