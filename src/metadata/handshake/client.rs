//! Handshake RPC client (spec §4.1): one request/reply per TCP connection.

use std::net::{SocketAddr, TcpStream, ToSocketAddrs};
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use super::desc::{NotifyDesc, ProbeReply};
use super::frame::{self, Framing};
use super::{HandShakeDesc, MsgType};
use crate::error::{Error, Result};
use crate::metadata::json;

/// Timeouts of one call.
#[derive(Clone, Copy, Debug)]
pub struct CallOptions {
    /// `MC_HANDSHAKE_CONNECT_TIMEOUT` (default 5 s, 1..3599).
    pub connect_timeout: Duration,
    /// `MC_HANDSHAKE_REPLY_TIMEOUT_SEC` (default 60 s as upstream, 1..3599):
    /// the whole budget for sending the request and receiving the reply, so a
    /// stalled peer (stopped, or accepting and never answering) cannot hold a
    /// call longer, however it trickles bytes.
    pub read_timeout: Duration,
}

impl Default for CallOptions {
    fn default() -> Self {
        CallOptions {
            connect_timeout: crate::config::env_secs("MC_HANDSHAKE_CONNECT_TIMEOUT", 5, 1, 3599),
            read_timeout: reply_timeout(),
        }
    }
}

/// `MC_HANDSHAKE_REPLY_TIMEOUT_SEC`, read once per process.
pub fn reply_timeout() -> Duration {
    static T: std::sync::OnceLock<Duration> = std::sync::OnceLock::new();
    *T.get_or_init(|| crate::config::env_secs("MC_HANDSHAKE_REPLY_TIMEOUT_SEC", 60, 1, 3599))
}

/// One request/reply exchange with `host:port`; returns the reply JSON text.
pub fn call(host: &str, port: u16, kind: MsgType, json: &str) -> Result<String> {
    call_while(host, port, kind, json, &|| {})
}

/// `call`, running `while_waiting` each time the request is sent, while the
/// peer works on it (openSegment starts transport threads there).
pub fn call_while(
    host: &str,
    port: u16,
    kind: MsgType,
    json: &str,
    while_waiting: &dyn Fn(),
) -> Result<String> {
    let opts = CallOptions::default();
    call_each(host, port, Framing::Typed(kind), json, &opts, while_waiting)
}

/// `call` with explicit framing (legacy peers) and timeouts. Each resolved
/// address is tried in turn; a malformed reply stops the search (upstream).
pub fn call_with(
    host: &str,
    port: u16,
    framing: Framing,
    json: &str,
    opts: &CallOptions,
) -> Result<String> {
    call_each(host, port, framing, json, opts, &|| {})
}

fn call_each(
    host: &str,
    port: u16,
    framing: Framing,
    json: &str,
    opts: &CallOptions,
    while_waiting: &dyn Fn(),
) -> Result<String> {
    let addrs: Vec<SocketAddr> = (host, port)
        .to_socket_addrs()
        .map_err(|e| Error::Dns(format!("resolving {host}:{port}: {e}")))?
        .collect();
    if addrs.is_empty() {
        return Err(Error::Dns(format!("{host}:{port} resolved to no address")));
    }
    let mut last = None;
    for addr in addrs {
        match call_addr(addr, framing, json, opts, while_waiting) {
            Ok(reply) => return Ok(reply),
            Err(e @ Error::MalformedJson(_)) => {
                log::warn!("handshake with {addr}: {e}");
                return Err(e);
            }
            Err(e) => {
                log::warn!("handshake with {addr}: {e}");
                last = Some(e);
            }
        }
    }
    Err(last.unwrap_or_else(|| Error::Socket(format!("no address for {host}:{port}"))))
}

fn call_addr(
    addr: SocketAddr,
    framing: Framing,
    json: &str,
    opts: &CallOptions,
    while_waiting: &dyn Fn(),
) -> Result<String> {
    let stream = TcpStream::connect_timeout(&addr, opts.connect_timeout)
        .map_err(|e| Error::Socket(format!("connecting to {addr}: {e}")))?;
    let deadline = Instant::now() + opts.read_timeout;
    let sock_err = |what: &str, e: Error| {
        if Instant::now() >= deadline {
            Error::Socket(format!(
                "{what} {addr}: no reply within {:?} (MC_HANDSHAKE_REPLY_TIMEOUT_SEC): {e}",
                opts.read_timeout
            ))
        } else {
            Error::Socket(format!("{what} {addr}: {e}"))
        }
    };
    let _ = stream.set_nodelay(true);
    stream
        .set_write_timeout(Some(opts.read_timeout))
        .map_err(|e| sock_err("configuring socket to", e.into()))?;
    frame::write_frame(&mut &stream, framing, json)
        .map_err(|e| sock_err("sending handshake to", e))?;
    while_waiting();
    spin_for_reply(&stream);
    let mut timed = DeadlineReader {
        stream: &stream,
        deadline,
    };
    let reply = frame::read_frame(&mut timed, frame::max_frame_len()).map_err(|e| match e {
        Error::MalformedJson(m) => Error::MalformedJson(format!("reply from {addr}: {m}")),
        e => sock_err("reading handshake reply from", e),
    })?;
    // Dropping the stream closes it right after the reply, as the server expects.
    drop(stream);
    if reply.framing != framing {
        return Err(Error::Socket(format!(
            "handshake reply from {addr} has framing {:?}, expected {framing:?}",
            reply.framing
        )));
    }
    String::from_utf8(reply.json)
        .map_err(|e| Error::MalformedJson(format!("reply from {addr}: {e}")))
}

/// Reads that end at `deadline`: each read waits at most what is left, so
/// a peer trickling its reply byte by byte cannot stretch the call.
struct DeadlineReader<'a> {
    stream: &'a TcpStream,
    deadline: Instant,
}

impl std::io::Read for DeadlineReader<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let left = self.deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(std::io::ErrorKind::TimedOut.into());
        }
        self.stream.set_read_timeout(Some(left))?;
        let mut stream = self.stream;
        std::io::Read::read(&mut stream, buf)
    }
}

/// How long a call waits for the reply spinning before it sleeps in the
/// read. A reply comes back within a few hundred µs; waking a sleeping
/// thread costs a large part of that where an idle CPU halts (VMs: ~0.1 ms
/// of a fresh engine's openSegment on a 2-core VM).
const REPLY_SPIN: Duration = Duration::from_micros(500);

/// Return once the reply starts to arrive or `REPLY_SPIN` is over, yielding
/// the CPU to anything runnable meanwhile; the read that follows takes the
/// reply or waits for it.
fn spin_for_reply(stream: &TcpStream) {
    let start = Instant::now();
    loop {
        let mut p = libc::pollfd {
            fd: stream.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        };
        // SAFETY: one valid pollfd; a zero timeout never blocks.
        let ready = unsafe { libc::poll(&mut p, 1, 0) } != 0;
        if ready || start.elapsed() >= REPLY_SPIN {
            return;
        }
        std::thread::yield_now();
    }
}

/// Connection RPC. A non-empty `reply_msg` is returned as `RejectHandshake`.
pub fn connection(host: &str, port: u16, req: &HandShakeDesc) -> Result<HandShakeDesc> {
    let text = call(host, port, MsgType::Connection, &json::to_fast_writer(req))?;
    let reply: HandShakeDesc = serde_json::from_str(&text)
        .map_err(|e| Error::MalformedJson(format!("Connection reply from {host}:{port}: {e}")))?;
    if !reply.reply_msg.is_empty() {
        return Err(Error::RejectHandshake(reply.reply_msg));
    }
    Ok(reply)
}

/// Notify RPC; returns the reply's `notify_msg` (`"success"` from a C++ or
/// te-rs peer; empty means the peer did not take it).
pub fn notify(host: &str, port: u16, name: &str, msg: &str) -> Result<String> {
    let req = NotifyDesc {
        name: name.to_string(),
        notify_msg: msg.to_string(),
    };
    let text = call(host, port, MsgType::Notify, &json::to_fast_writer(&req))?;
    let reply: NotifyDesc = serde_json::from_str(&text)
        .map_err(|e| Error::MalformedJson(format!("Notify reply from {host}:{port}: {e}")))?;
    Ok(reply.notify_msg)
}

/// Probe RPC: `Ok(())` when the peer answers `{"status":"success"}`.
pub fn probe(host: &str, port: u16) -> Result<()> {
    let text = call(host, port, MsgType::Probe, "{}\n")?;
    let reply: ProbeReply = serde_json::from_str(&text)
        .map_err(|e| Error::MalformedJson(format!("Probe reply from {host}:{port}: {e}")))?;
    if reply.status == "success" {
        Ok(())
    } else {
        Err(Error::Socket(format!(
            "probe of {host}:{port} answered status '{}'",
            reply.status
        )))
    }
}
