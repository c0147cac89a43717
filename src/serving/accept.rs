//! Accept every waiting connection of a readiness-driven listener, apply the
//! admission caps, and survive descriptor exhaustion: on `EMFILE`/`ENFILE`
//! a spare descriptor is released to accept-and-close one waiting peer (so
//! it sees a close instead of hanging in the backlog), and accepting pauses
//! briefly instead of spinning.

use std::io;
use std::net::SocketAddr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::{Duration, Instant};

use mio::net::{TcpListener, TcpStream};

use super::admission::{Admission, Ticket};
use super::ratelog::RateLimited;

/// How long accepting pauses after running out of descriptors.
const EMFILE_BACKOFF: Duration = Duration::from_millis(100);

pub struct AcceptGate {
    what: &'static str,
    spare: Option<OwnedFd>,
    paused_until: Option<Instant>,
    refused_log: RateLimited,
    emfile_log: RateLimited,
}

fn open_spare() -> Option<OwnedFd> {
    // SAFETY: open() of a constant NUL-terminated path; the fd is owned below.
    let fd = unsafe { libc::open(c"/dev/null".as_ptr(), libc::O_RDONLY | libc::O_CLOEXEC) };
    // SAFETY: `fd` is a fresh descriptor nobody else owns.
    (fd >= 0).then(|| unsafe { OwnedFd::from_raw_fd(fd) })
}

impl AcceptGate {
    pub fn new(what: &'static str) -> AcceptGate {
        AcceptGate {
            what,
            spare: open_spare(),
            paused_until: None,
            refused_log: RateLimited::new(module_path!(), Duration::from_secs(5)),
            emfile_log: RateLimited::new(module_path!(), Duration::from_secs(5)),
        }
    }

    /// When accepting resumes after a descriptor shortage (`None`: not paused).
    pub fn paused_until(&self) -> Option<Instant> {
        self.paused_until
    }

    fn on_exhausted(&mut self, listener: &TcpListener, e: &io::Error) {
        self.spare = None;
        let shed = listener.accept().is_ok();
        self.spare = open_spare();
        self.paused_until = Some(Instant::now() + EMFILE_BACKOFF);
        self.emfile_log.warn(format_args!(
            "{}: accept failed: {e}; {}pausing accepts for {EMFILE_BACKOFF:?} (raise `ulimit -n`)",
            self.what,
            if shed {
                "closed one waiting connection, "
            } else {
                ""
            },
        ));
    }
}

/// Accept until the backlog is empty (or descriptors run out). Each admitted
/// connection is handed to `admitted` with its ticket; refused ones are
/// closed at once, with a rate-limited warning.
pub fn accept_ready(
    listener: &TcpListener,
    gate: &mut AcceptGate,
    admission: &Admission,
    mut admitted: impl FnMut(TcpStream, SocketAddr, Ticket),
) {
    if gate.paused_until.is_some_and(|t| Instant::now() < t) {
        return;
    }
    gate.paused_until = None;
    loop {
        match listener.accept() {
            Ok((stream, peer)) => match admission.admit(peer.ip()) {
                Ok(ticket) => admitted(stream, peer, ticket),
                Err(why) => gate
                    .refused_log
                    .warn(format_args!("{}: refusing {peer}: {why}", gate.what)),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) if matches!(e.raw_os_error(), Some(libc::EMFILE | libc::ENFILE)) => {
                gate.on_exhausted(listener, &e);
                return;
            }
            Err(e) => {
                // ECONNABORTED and friends: that peer is gone, the rest wait.
                gate.emfile_log
                    .warn(format_args!("{}: accept failed: {e}", gate.what));
                if matches!(e.raw_os_error(), Some(libc::ENOBUFS | libc::ENOMEM)) {
                    gate.paused_until = Some(Instant::now() + EMFILE_BACKOFF);
                    return;
                }
            }
        }
    }
}
