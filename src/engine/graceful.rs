//! `enableGracefulShutdown`: a process-wide registry of engines that are
//! destroyed when the process gets SIGTERM or SIGINT (then `_exit(128+signo)`)
//! or exits normally (`atexit`), so their metadata keys are removed.
//!
//! The signal handler only writes the signal number to a pipe (async-signal
//! safe); a watcher thread does the real work outside signal context.

use std::sync::atomic::{AtomicI32, Ordering};
use std::sync::{Arc, Once, Weak};

use parking_lot::Mutex;

use super::TransferEngine;
use crate::error::{Error, Result};

static REGISTRY: Mutex<Vec<Weak<TransferEngine>>> = Mutex::new(Vec::new());
static INSTALL: Once = Once::new();
static INSTALL_ERROR: Mutex<Option<Error>> = Mutex::new(None);
/// Write end of the self-pipe; -1 until installed.
static PIPE_WRITE: AtomicI32 = AtomicI32::new(-1);

/// Register `engine` and install the handlers (once per process).
pub fn enable(engine: &Arc<TransferEngine>) -> Result<()> {
    register(engine);
    INSTALL.call_once(|| {
        if let Err(e) = install() {
            *INSTALL_ERROR.lock() = Some(e);
        }
    });
    match INSTALL_ERROR.lock().clone() {
        Some(e) => Err(e),
        None => Ok(()),
    }
}

/// Add `engine` to the registry (idempotent); dead entries are pruned.
pub fn register(engine: &Arc<TransferEngine>) {
    let mut reg = REGISTRY.lock();
    reg.retain(|w| w.strong_count() > 0);
    if !reg
        .iter()
        .any(|w| std::ptr::eq(w.as_ptr(), Arc::as_ptr(engine)))
    {
        reg.push(Arc::downgrade(engine));
    }
}

/// Number of registered engines still alive.
pub fn registered() -> usize {
    REGISTRY
        .lock()
        .iter()
        .filter(|w| w.strong_count() > 0)
        .count()
}

/// Destroy every registered engine that is still alive.
pub fn shutdown_registered() {
    let engines: Vec<Arc<TransferEngine>> = match REGISTRY.try_lock() {
        Some(mut reg) => reg.drain(..).filter_map(|w| w.upgrade()).collect(),
        None => {
            log::error!("graceful shutdown: engine registry is locked; skipping");
            return;
        }
    };
    for e in engines {
        e.shutdown();
    }
}

extern "C" fn on_signal(signo: libc::c_int) {
    let fd = PIPE_WRITE.load(Ordering::Relaxed);
    if fd >= 0 {
        let b = signo as u8;
        // SAFETY: write(2) is async-signal-safe; `b` lives for the call.
        unsafe {
            libc::write(fd, &b as *const u8 as *const libc::c_void, 1);
        }
    }
}

extern "C" fn on_exit() {
    // Nothing may unwind out of an atexit hook.
    let _ = std::panic::catch_unwind(shutdown_registered);
}

fn install() -> Result<()> {
    let mut fds = [0 as libc::c_int; 2];
    // SAFETY: fds has room for the two descriptors pipe2 writes.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(Error::Socket(format!(
            "graceful shutdown: pipe2: {}",
            std::io::Error::last_os_error()
        )));
    }
    let (read_fd, write_fd) = (fds[0], fds[1]);
    PIPE_WRITE.store(write_fd, Ordering::Release);
    crate::threads::spawn_process_wide("te-graceful", move || watch(read_fd))
        .map_err(|e| Error::Memory(format!("graceful shutdown: spawn watcher: {e}")))?;
    for signo in [libc::SIGTERM, libc::SIGINT] {
        // SAFETY: a zeroed sigaction is valid; we fill handler, mask and flags.
        let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
        sa.sa_sigaction = on_signal as *const () as libc::sighandler_t;
        sa.sa_flags = libc::SA_RESTART;
        // SAFETY: sa_mask is a valid sigset_t inside `sa`.
        unsafe { libc::sigemptyset(&mut sa.sa_mask) };
        // SAFETY: valid signal number and fully initialised sigaction.
        if unsafe { libc::sigaction(signo, &sa, std::ptr::null_mut()) } != 0 {
            return Err(Error::Socket(format!(
                "graceful shutdown: sigaction({signo}): {}",
                std::io::Error::last_os_error()
            )));
        }
    }
    // SAFETY: registering a plain extern "C" fn with no captured state.
    if unsafe { libc::atexit(on_exit) } != 0 {
        log::warn!("graceful shutdown: atexit registration failed");
    }
    log::info!("graceful shutdown enabled (SIGTERM/SIGINT)");
    Ok(())
}

fn watch(read_fd: libc::c_int) {
    let mut b = 0u8;
    loop {
        // SAFETY: reading one byte into a local from our own pipe.
        let n = unsafe { libc::read(read_fd, &mut b as *mut u8 as *mut libc::c_void, 1) };
        if n == 1 {
            break;
        }
        if n < 0 && std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted {
            continue;
        }
        log::error!("graceful shutdown: signal pipe closed; watcher stops");
        return;
    }
    let signo = b as libc::c_int;
    log::warn!("signal {signo} received: destroying registered transfer engines");
    let _ = std::panic::catch_unwind(shutdown_registered);
    // SAFETY: terminate immediately, as Mooncake does, without running
    // atexit hooks a second time.
    unsafe { libc::_exit(128 + signo) };
}
