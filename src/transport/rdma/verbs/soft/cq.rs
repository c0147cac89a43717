//! Soft completion queues with a real depth: overflowing one puts it in
//! error and raises `CQ_ERR` on its device.

use std::any::Any;
use std::collections::VecDeque;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::device::SoftDevice;
use crate::error::Result;
use crate::transport::rdma::verbs::errno::verb_error;
use crate::transport::rdma::verbs::types::{AsyncEvent, AsyncEventKind, WorkCompletion};
use crate::transport::rdma::verbs::Cq;

/// A completion and the send-queue slot it frees when polled.
type Entry = (WorkCompletion, Arc<AtomicUsize>);

#[derive(Default)]
struct CqState {
    queue: VecDeque<Entry>,
    overflowed: bool,
    /// `interrupt` was called and no `wait` has returned since.
    interrupted: bool,
}

pub(crate) struct CqShared {
    capacity: usize,
    device: Arc<SoftDevice>,
    state: Mutex<CqState>,
    /// A completion queue's "completion channel": pushes wake `wait`.
    ready: Condvar,
}

impl CqShared {
    pub fn new(capacity: usize, device: Arc<SoftDevice>) -> CqShared {
        CqShared {
            capacity,
            device,
            state: Mutex::new(CqState::default()),
            ready: Condvar::new(),
        }
    }

    /// Deliver `wc`; `slot` is the QP's outstanding counter, released when
    /// the completion is polled (or dropped on overflow).
    pub fn push(&self, wc: WorkCompletion, slot: Arc<AtomicUsize>) {
        let mut st = self.state.lock();
        if st.overflowed {
            slot.fetch_sub(1, Ordering::AcqRel);
            return;
        }
        if st.queue.len() >= self.capacity {
            st.overflowed = true;
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
        st.queue.push_back((wc, slot));
        drop(st);
        self.ready.notify_one();
    }
}

pub(crate) struct SoftCq {
    pub shared: Arc<CqShared>,
}

impl Cq for SoftCq {
    fn poll_into(&self, out: &mut Vec<WorkCompletion>, max: usize) -> Result<usize> {
        let mut st = self.shared.state.lock();
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
        out.extend(st.queue.drain(..n).map(|(wc, slot)| {
            slot.fetch_sub(1, Ordering::AcqRel);
            wc
        }));
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
