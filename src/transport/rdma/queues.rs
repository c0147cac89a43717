//! What a posting thread works from: its queues (peer NIC path → slices),
//! and the wake-up signal every thread of a context sleeps on.

use std::collections::VecDeque;
use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

use super::device::{Device, WorkRequest};
use super::names::NameId;
use crate::id_map::IdMap;
use crate::metadata::SegmentId;
use crate::task::{Opcode, Task};

/// One piece of a task on its way to the peer.
pub struct Slice {
    pub task: Arc<Task>,
    pub opcode: Opcode,
    pub source: u64,
    pub length: u64,
    pub dest: u64,
    pub target_id: SegmentId,
    /// Location of the local buffer (key into our priority matrix),
    /// interned in `Shared::locations`.
    pub location: NameId,
    /// Attempts consumed so far (`MC_RETRY_CNT` ≤ 127; 8 bits each keep
    /// a slice in one cache line).
    pub retry: u8,
    /// Times it was sent again because its QP died under it (a flush):
    /// free of `retry`, up to `MC_RETRY_CNT` times.
    pub resent: u8,
    /// The peer refused it once (remote access / invalid request): sent
    /// once more on a fresh endpoint, failed if refused again.
    pub refused: bool,
    /// Routing, filled by `Shared::route`.
    pub local: usize,
    pub lkey: u32,
    /// Peer NIC path, interned in `Shared::paths`.
    pub path: NameId,
    pub rkey: u32,
}

/// A wake-up that is never lost: `notify` sets a flag that a thread about
/// to sleep sees, so it sleeps only when nothing happened since it last
/// cleared the flag (`take`).
#[derive(Default)]
pub struct Signal {
    set: Mutex<bool>,
    /// `set`, readable without the lock: a `take` of an unset signal (a
    /// spinning poller's every turn) writes nothing the notifier's core
    /// must fetch back.
    hint: AtomicBool,
    cv: Condvar,
}

impl Signal {
    pub fn notify(&self) {
        let mut s = self.set.lock();
        if !*s {
            *s = true;
            self.hint.store(true, Ordering::Release);
            self.cv.notify_one();
        }
    }

    /// Clear the flag before looking for work; true if it was set. A
    /// notify racing with a `take` that saw the flag unset stays set, so
    /// the next `wait` returns at once: nothing is lost.
    pub fn take(&self) -> bool {
        if !self.hint.load(Ordering::Acquire) {
            return false;
        }
        let mut s = self.set.lock();
        self.hint.store(false, Ordering::Release);
        std::mem::take(&mut *s)
    }

    /// Sleep until notified (since the last `take`), `deadline`, or
    /// `stop` is set. `stop` is read under the signal's lock: a stop stored
    /// before the `notify` that announces it cannot be missed, even when a
    /// `take` cleared that notification in between.
    pub fn wait(&self, deadline: Option<Instant>, stop: &AtomicBool) {
        let mut s = self.set.lock();
        while !*s && !stop.load(Ordering::Acquire) {
            match deadline {
                Some(d) => {
                    if self.cv.wait_until(&mut s, d).timed_out() {
                        return;
                    }
                }
                None => self.cv.wait(&mut s),
            }
        }
    }
}

/// Buffers of one pass over a posting thread's queues. Whoever runs a
/// pass (the thread, or a submitter finding it between passes) holds them,
/// so passes over one set of queues never overlap.
#[derive(Default)]
pub struct PassScratch {
    pub paths: Vec<NameId>,
    pub wrs: Vec<WorkRequest>,
}

type PathQueues = IdMap<NameId, VecDeque<Slice>>;

/// Queues of one posting thread: peer NIC path → slices.
#[derive(Default)]
pub struct Worker {
    pub pass: Mutex<PassScratch>,
    queues: Mutex<PathQueues>,
    /// Set by every push and wake-up.
    pub signal: Signal,
    /// Slices wait for QP or CQ room: completions wake this thread.
    room_wanted: AtomicBool,
    /// Set when this thread also polls and may block on the CQ.
    cq: OnceLock<Arc<dyn Device>>,
}

impl Worker {
    pub fn push(&self, s: Slice) {
        self.queues.lock().entry(s.path).or_default().push_back(s);
        self.wake();
    }

    pub fn push_many(&self, v: Vec<Slice>) {
        if v.is_empty() {
            return;
        }
        self.push_quiet(v);
        self.wake();
    }

    /// Queue without waking the thread (the caller runs a pass itself).
    pub fn push_quiet(&self, v: Vec<Slice>) {
        let mut q = self.queues.lock();
        // The usual call: all to one peer path whose queue a pass emptied.
        // The buffer becomes the queue (no move per slice, no growing).
        if let Some(path) = v.first().map(|s| s.path) {
            if v.iter().all(|s| s.path == path) {
                let e = q.entry(path).or_default();
                if e.is_empty() {
                    *e = VecDeque::from(v);
                } else {
                    e.extend(v);
                }
                return;
            }
        }
        let mut it = v.into_iter().peekable();
        while let Some(first) = it.next() {
            // One map lookup per run of slices to the same peer path.
            let path = first.path;
            let e = q.entry(path).or_default();
            e.push_back(first);
            while let Some(s) = it.next_if(|s| s.path == path) {
                e.push_back(s);
            }
        }
    }

    pub fn wake(&self) {
        self.signal.notify();
        if let Some(d) = self.cq.get() {
            d.interrupt_completions();
        }
    }

    /// This thread also polls `dev` and may block on its CQ: pushes must
    /// interrupt that wait too.
    pub fn interrupt_cq_on_push(&self, dev: Arc<dyn Device>) {
        let _ = self.cq.set(dev);
    }

    /// The thread also polls the CQ (one worker per context).
    pub fn also_polls(&self) -> bool {
        self.cq.get().is_some()
    }

    /// Start a pass: clear the signal, then list the paths with slices.
    pub fn begin_pass(&self, out: &mut Vec<NameId>) {
        self.signal.take();
        out.clear();
        out.extend(
            self.queues
                .lock()
                .iter()
                .filter(|(_, v)| !v.is_empty())
                .map(|(k, _)| *k),
        );
    }

    /// Take the slices queued for `path`.
    pub fn take(&self, path: NameId) -> Option<VecDeque<Slice>> {
        self.queues.lock().remove(&path)
    }

    /// Put slices that could not go yet back in front of newer ones.
    pub fn put_back(&self, path: NameId, mut v: VecDeque<Slice>) {
        if v.is_empty() {
            return;
        }
        let mut q = self.queues.lock();
        let e = q.entry(path).or_default();
        v.append(e);
        *e = v;
    }

    pub fn drain(&self) -> Vec<Slice> {
        self.queues
            .lock()
            .drain()
            .flat_map(|(_, v)| v.into_iter())
            .collect()
    }

    pub fn queued(&self) -> usize {
        self.queues.lock().values().map(VecDeque::len).sum()
    }

    /// Before looking for QP or CQ room: a completion from now on wakes
    /// this thread (pairs with `room_freed`).
    pub fn want_room(&self) {
        self.room_wanted.store(true, Ordering::SeqCst);
        fence(Ordering::SeqCst);
    }

    /// The last pass left no slice waiting for room.
    pub fn room_not_wanted(&self) {
        self.room_wanted.store(false, Ordering::Relaxed);
    }

    /// Completions freed room (call after releasing it).
    pub fn room_freed(&self) {
        fence(Ordering::SeqCst);
        if self.room_wanted.load(Ordering::Relaxed)
            && self.room_wanted.swap(false, Ordering::SeqCst)
        {
            self.signal.notify();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::mpsc;
    use std::time::Duration;

    /// Run `wait` on another thread; true if it returned (bounded, so a
    /// lost wake-up fails the test instead of hanging it).
    fn returns(f: impl FnOnce() + Send + 'static) -> bool {
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            f();
            let _ = tx.send(());
        });
        rx.recv_timeout(Duration::from_secs(10)).is_ok()
    }

    #[test]
    fn a_notify_before_the_wait_is_not_lost() {
        let s = Arc::new(Signal::default());
        s.notify();
        let w = s.clone();
        assert!(returns(move || w.wait(None, &AtomicBool::new(false))));
        // `take` consumes it: the next wait sleeps until its deadline.
        assert!(s.take());
        assert!(!s.take());
        let soon = Instant::now() + Duration::from_millis(20);
        s.wait(Some(soon), &AtomicBool::new(false));
        assert!(Instant::now() >= soon);
    }

    #[test]
    fn a_stop_whose_notify_was_taken_still_ends_the_wait() {
        // Shutdown stores stop, then notifies; a pass starting in between
        // clears the notification. The thread must still not sleep.
        let s = Arc::new(Signal::default());
        let stop = Arc::new(AtomicBool::new(true));
        s.notify();
        s.take();
        let (w, st) = (s.clone(), stop.clone());
        assert!(returns(move || w.wait(None, &st)));
    }

    #[test]
    fn a_notify_wakes_a_sleeping_waiter() {
        let s = Arc::new(Signal::default());
        let w = s.clone();
        let (tx, rx) = mpsc::channel();
        std::thread::spawn(move || {
            w.wait(None, &AtomicBool::new(false));
            let _ = tx.send(());
        });
        std::thread::sleep(Duration::from_millis(20));
        s.notify();
        assert!(rx.recv_timeout(Duration::from_secs(10)).is_ok());
    }
}
