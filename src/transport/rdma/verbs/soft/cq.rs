//! Soft completion queues with a real depth: overflowing one puts it in
//! error and raises `CQ_ERR` on its device.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::device::SoftDevice;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::verb_error;
use crate::transport::rdma::verbs::types::{AsyncEvent, AsyncEventKind, WorkCompletion};
use crate::transport::rdma::verbs::Cq;

#[derive(Default)]
struct CqState {
    queue: VecDeque<WorkCompletion>,
    /// Outstanding-WR counter of each QP on this CQ, by QP number: a polled
    /// completion frees a send-queue slot of its QP. Looked up by number
    /// rather than carried per completion, so a completion costs no
    /// refcount traffic between the executor and the polling thread.
    slots: Vec<(u32, Arc<AtomicUsize>)>,
    overflowed: bool,
    /// `interrupt` was called and no `wait` has returned since.
    interrupted: bool,
}

pub(crate) struct CqShared {
    capacity: usize,
    device: Arc<SoftDevice>,
    state: Mutex<CqState>,
    /// Set under `state`'s lock while a poll has something to report (a
    /// completion or the overflow): an empty poll reads this line and
    /// leaves the lock's line to the executor, as a poll of a real CQ reads
    /// the next CQE's owner bit.
    pollable: AtomicBool,
    /// A completion queue's "completion channel": pushes wake `wait`.
    ready: Condvar,
}

impl CqShared {
    pub fn new(capacity: usize, device: Arc<SoftDevice>) -> CqShared {
        CqShared {
            capacity,
            device,
            state: Mutex::new(CqState::default()),
            pollable: AtomicBool::new(false),
            ready: Condvar::new(),
        }
    }

    /// QP `qpn` on this CQ counts its outstanding WRs in `slot`.
    pub fn attach(&self, qpn: u32, slot: Arc<AtomicUsize>) {
        self.state.lock().slots.push((qpn, slot));
    }

    /// QP `qpn` is destroyed: its completions still queued free nothing.
    pub fn detach(&self, qpn: u32) {
        self.state.lock().slots.retain(|(q, _)| *q != qpn);
    }

    /// Deliver `wc`; `slot` is its QP's outstanding counter, released when
    /// the completion is polled (or now, when it is lost to an overflow).
    pub fn push(&self, wc: WorkCompletion, slot: &AtomicUsize) {
        let mut st = self.state.lock();
        if st.overflowed {
            slot.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        if st.queue.len() >= self.capacity {
            st.overflowed = true;
            self.pollable.store(true, Ordering::Release);
            slot.fetch_sub(1, Ordering::AcqRel);
            drop(st);
            // A waiting poller must see the error.
            self.ready.notify_one();
            log::error!(
                "soft CQ on {} overflowed (capacity {}); completion of wr_id {} lost",
                self.device.name,
                self.capacity,
                wc.wr_id
            );
            self.device.raise(AsyncEvent {
                kind: AsyncEventKind::CqErr,
                port: 0,
                qp_num: None,
            });
            return;
        }
        st.queue.push_back(wc);
        // Written only when it changes: while the poller has not drained
        // the queue, pushes leave the line it reads alone.
        if !self.pollable.load(Ordering::Relaxed) {
            self.pollable.store(true, Ordering::Release);
        }
        drop(st);
        self.ready.notify_one();
    }
}

pub(crate) struct SoftCq {
    pub shared: Arc<CqShared>,
}

impl Cq for SoftCq {
    fn poll_into(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        // The executor holds the lock for a push: report nothing rather than
        // park (a park and its wake-up cost both threads a syscall). A poll
        // is a snapshot; `wait` takes the lock and sees what was pushed.
        if !self.shared.pollable.load(Ordering::Acquire) {
            return Ok(0);
        }
        let Some(mut st) = self.shared.state.try_lock() else {
            return Ok(0);
        };
        if st.overflowed {
            return Err(verb_error(
                "ibv_poll_cq",
                "poll",
                libc::EOVERFLOW,
                &format!(
                    "CQ on {} overflowed its {} entries",
                    self.shared.device.name, self.shared.capacity
                ),
            ));
        }
        let n = max.min(st.queue.len());
        let start = out.len();
        out.extend(st.queue.drain(..n));
        if st.queue.is_empty() {
            self.shared.pollable.store(false, Ordering::Release);
        }
        // One release per run of completions of the same QP.
        let mut polled = &out[start..];
        while let Some(first) = polled.first() {
            let qpn = first.qp_num;
            let run = polled.iter().take_while(|w| w.qp_num == qpn).count();
            if let Some((_, slot)) = st.slots.iter().find(|(q, _)| *q == qpn) {
                slot.fetch_sub(run, Ordering::AcqRel);
            }
            polled = &polled[run..];
        }
        Ok(n)
    }

    // No `arm`: `wait` checks the queue under the lock pushes take, so no
    // completion can slip in between the check and the sleep.
    fn wait(&self, timeout: Duration) {
        let sh = &self.shared;
        let mut st = sh.state.lock();
        if st.queue.is_empty() && !st.overflowed && !st.interrupted {
            sh.ready.wait_for(&mut st, timeout);
        }
        st.interrupted = false;
    }

    fn interrupt(&self) {
        let sh = &self.shared;
        sh.state.lock().interrupted = true;
        sh.ready.notify_all();
    }

    fn capacity(&self) -> usize {
        self.shared.capacity
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}
