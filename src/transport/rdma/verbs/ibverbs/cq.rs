//! Completion queues (`ibv_create_cq`, `ibv_poll_cq`) with a completion
//! channel (`ibv_create_comp_channel`, `ibv_req_notify_cq`,
//! `ibv_get_cq_event`) so an idle poller blocks instead of napping, and an
//! eventfd that interrupts the wait (shutdown, new work).

use std::any::Any;
use std::mem::MaybeUninit;
use std::ptr::NonNull;
use std::sync::Arc;
use std::time::Duration;

use rdma_sys as ffi;

use super::context::ContextHandle;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::{last_errno, verb_error};
use crate::transport::rdma::verbs::types::{Opcode, WcStatus, WorkCompletion};
use crate::transport::rdma::verbs::Cq;

/// Completions read per `ibv_poll_cq` call (a stack array of `ibv_wc`).
const POLL_CHUNK: usize = 32;

pub(super) struct CqHandle {
    pub cq: NonNull<ffi::ibv_cq>,
    pub ctx: Arc<ContextHandle>,
    /// `None`: the channel could not be made; `wait` then naps briefly.
    channel: Option<NonNull<ffi::ibv_comp_channel>>,
    /// eventfd written by `interrupt` (-1 without a channel).
    wake_fd: libc::c_int,
}

// SAFETY: ibv_poll_cq is thread-safe per CQ in rdma-core providers (they
// lock the CQ); the CQ is destroyed only in Drop. The channel and eventfd
// are file descriptors, safe to use from any thread.
unsafe impl Send for CqHandle {}
// SAFETY: see Send.
unsafe impl Sync for CqHandle {}

impl Drop for CqHandle {
    fn drop(&mut self) {
        self.ctx.forget_cq(self.cq.as_ptr());
        // SAFETY: created by ibv_create_cq; QPs using it hold an Arc to this
        // handle, so none is alive any more. Every CQ event we took was
        // acknowledged in `wait`, so the destroy does not block.
        let rc = unsafe { ffi::ibv_destroy_cq(self.cq.as_ptr()) };
        if rc != 0 {
            log::warn!("ibv_destroy_cq on {}: rc {rc}", self.ctx.name);
        }
        if let Some(ch) = self.channel {
            // SAFETY: created by ibv_create_comp_channel; its only CQ is
            // destroyed above.
            let rc = unsafe { ffi::ibv_destroy_comp_channel(ch.as_ptr()) };
            if rc != 0 {
                log::warn!("ibv_destroy_comp_channel on {}: rc {rc}", self.ctx.name);
            }
        }
        if self.wake_fd >= 0 {
            // SAFETY: our own eventfd, closed once.
            unsafe { libc::close(self.wake_fd) };
        }
    }
}

/// A non-blocking completion channel and its interrupting eventfd, or
/// `(None, -1)` if the device or the system refuses (logged).
fn make_channel(ctx: &ContextHandle) -> (Option<NonNull<ffi::ibv_comp_channel>>, libc::c_int) {
    // SAFETY: open context.
    let raw = unsafe { ffi::ibv_create_comp_channel(ctx.ctx.as_ptr()) };
    let Some(ch) = NonNull::new(raw) else {
        log::warn!(
            "ibv_create_comp_channel on {}: {}; the poller naps instead of blocking",
            ctx.name,
            crate::transport::rdma::verbs::errno_name(last_errno())
        );
        return (None, -1);
    };
    // SAFETY: a live channel; reading its fd field.
    let fd = unsafe { (*ch.as_ptr()).fd };
    // SAFETY: fcntl on a descriptor we own; non-blocking so that
    // ibv_get_cq_event after poll() never blocks.
    let ok = unsafe {
        let fl = libc::fcntl(fd, libc::F_GETFL);
        fl >= 0 && libc::fcntl(fd, libc::F_SETFL, fl | libc::O_NONBLOCK) == 0
    };
    // SAFETY: plain syscall.
    let wake = unsafe { libc::eventfd(0, libc::EFD_NONBLOCK | libc::EFD_CLOEXEC) };
    if !ok || wake < 0 {
        log::warn!(
            "completion channel of {}: cannot set up its descriptors; the poller naps instead of blocking",
            ctx.name
        );
        if wake >= 0 {
            // SAFETY: the eventfd just made.
            unsafe { libc::close(wake) };
        }
        // SAFETY: no CQ uses the channel yet.
        unsafe { ffi::ibv_destroy_comp_channel(ch.as_ptr()) };
        return (None, -1);
    }
    (Some(ch), wake)
}

pub(super) struct IbvCq {
    pub handle: Arc<CqHandle>,
    capacity: usize,
}

impl IbvCq {
    pub fn create(ctx: Arc<ContextHandle>, depth: usize) -> Result<IbvCq> {
        let cqe = libc::c_int::try_from(depth).unwrap_or(libc::c_int::MAX);
        let (channel, wake_fd) = make_channel(&ctx);
        let ch_ptr = channel.map_or(std::ptr::null_mut(), |c| c.as_ptr());
        // SAFETY: open context; `ch_ptr` is NULL or a live channel of it;
        // vector 0.
        let raw =
            unsafe { ffi::ibv_create_cq(ctx.ctx.as_ptr(), cqe, std::ptr::null_mut(), ch_ptr, 0) };
        let Some(cq) = NonNull::new(raw) else {
            let errno = last_errno();
            if let Some(ch) = channel {
                // SAFETY: the channel has no CQ; the eventfd is ours.
                unsafe {
                    ffi::ibv_destroy_comp_channel(ch.as_ptr());
                    libc::close(wake_fd);
                }
            }
            return Err(verb_error(
                "ibv_create_cq",
                "create",
                errno,
                &format!("{} depth {depth}", ctx.name),
            ));
        };
        // SAFETY: fresh CQ; `cqe` is the real capacity (≥ requested).
        let capacity = unsafe { (*cq.as_ptr()).cqe }.max(0) as usize;
        Ok(IbvCq {
            handle: Arc::new(CqHandle {
                cq,
                ctx,
                channel,
                wake_fd,
            }),
            capacity,
        })
    }

    /// Take every pending CQ event off the channel and acknowledge them.
    fn drain_events(&self, ch: NonNull<ffi::ibv_comp_channel>) {
        let mut n = 0u32;
        loop {
            let mut cq: *mut ffi::ibv_cq = std::ptr::null_mut();
            let mut ctx: *mut libc::c_void = std::ptr::null_mut();
            // SAFETY: live channel (non-blocking); valid out-pointers.
            let rc = unsafe { ffi::ibv_get_cq_event(ch.as_ptr(), &mut cq, &mut ctx) };
            if rc != 0 {
                break;
            }
            n += 1;
        }
        if n > 0 {
            // SAFETY: live CQ; `n` events were taken from its channel.
            unsafe { ffi::ibv_ack_cq_events(self.handle.cq.as_ptr(), n) };
        }
    }
}

impl Cq for IbvCq {
    fn poll_into(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        let mut left = max.min(self.capacity.max(1));
        let mut total = 0;
        let mut wcs = [const { MaybeUninit::<ffi::ibv_wc>::uninit() }; POLL_CHUNK];
        while left > 0 {
            let want = left.min(POLL_CHUNK) as i32;
            // SAFETY: the CQ is live and `wcs` has room for `want` entries.
            let n =
                unsafe { ffi::ibv_poll_cq(self.handle.cq.as_ptr(), want, wcs.as_mut_ptr().cast()) };
            if n < 0 {
                return Err(verb_error(
                    "ibv_poll_cq",
                    "poll",
                    last_errno(),
                    &self.handle.ctx.name,
                ));
            }
            out.extend(wcs[..n as usize].iter().map(|wc| {
                // SAFETY: ibv_poll_cq initialised the first `n` entries.
                let wc = unsafe { wc.assume_init_ref() };
                WorkCompletion {
                    wr_id: wc.wr_id,
                    status: WcStatus::from_ibv(wc.status),
                    opcode: if wc.opcode == ffi::ibv_wc_opcode::IBV_WC_RDMA_READ {
                        Opcode::Read
                    } else {
                        Opcode::Write
                    },
                    byte_len: wc.byte_len,
                    qp_num: wc.qp_num,
                    vendor_err: wc.vendor_err,
                }
            }));
            total += n as usize;
            left -= n as usize;
            if n < want {
                break;
            }
        }
        // Completions that made it are delivered first; once drained, an
        // overflowed CQ (some were lost) is an error, as on the soft fabric.
        if total == 0 && self.handle.ctx.cq_overflowed(self.handle.cq.as_ptr()) {
            return Err(verb_error(
                "ibv_poll_cq",
                "poll",
                libc::EOVERFLOW,
                &format!(
                    "CQ on {} overflowed its {} entries (CQ_ERR): completions lost",
                    self.handle.ctx.name, self.capacity
                ),
            ));
        }
        Ok(total)
    }

    fn arm(&self) {
        if self.handle.channel.is_none() {
            return;
        }
        // SAFETY: live CQ with a completion channel.
        let rc = unsafe { ffi::ibv_req_notify_cq(self.handle.cq.as_ptr(), 0) };
        if rc != 0 {
            log::debug!("ibv_req_notify_cq on {}: rc {rc}", self.handle.ctx.name);
        }
    }

    fn wait(&self, timeout: Duration) {
        let Some(ch) = self.handle.channel else {
            std::thread::sleep(timeout.min(Duration::from_micros(50)));
            return;
        };
        let mut fds = [
            libc::pollfd {
                // SAFETY: live channel; reading its fd field.
                fd: unsafe { (*ch.as_ptr()).fd },
                events: libc::POLLIN,
                revents: 0,
            },
            libc::pollfd {
                fd: self.handle.wake_fd,
                events: libc::POLLIN,
                revents: 0,
            },
        ];
        let ts = libc::timespec {
            tv_sec: timeout.as_secs() as libc::time_t,
            tv_nsec: timeout.subsec_nanos() as libc::c_long,
        };
        // SAFETY: two valid pollfds owned by this CQ; a valid timespec; no
        // signal mask change.
        let rc = unsafe { libc::ppoll(fds.as_mut_ptr(), 2, &ts, std::ptr::null()) };
        if rc <= 0 {
            return;
        }
        if fds[0].revents != 0 {
            self.drain_events(ch);
        }
        if fds[1].revents != 0 {
            let mut v = 0u64;
            // SAFETY: our eventfd (non-blocking); reading 8 bytes into `v`
            // resets its counter.
            unsafe { libc::read(self.handle.wake_fd, (&mut v as *mut u64).cast(), 8) };
        }
    }

    fn interrupt(&self) {
        if self.handle.wake_fd < 0 {
            return;
        }
        let v = 1u64;
        // SAFETY: our eventfd; writing 8 bytes adds 1 to its counter.
        unsafe { libc::write(self.handle.wake_fd, (&v as *const u64).cast(), 8) };
    }

    fn capacity(&self) -> usize {
        self.capacity
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
