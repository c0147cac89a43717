//! The wake-up a batch's waiters sleep on. Each task of a batch holds it
//! and pokes it when a slice of the task ends; a poke costs one atomic load
//! unless someone waits (then a lock and a condvar broadcast). It also
//! counts itself in its table's gauge while alive, so a freed batch whose
//! tasks are still held by a transport stays visible until they let go.

use std::sync::atomic::{fence, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Condvar, Mutex};

pub struct BatchSignal {
    lock: Mutex<()>,
    cv: Condvar,
    waiters: AtomicUsize,
    /// The owning table's count of live signals (batches not yet dropped).
    live: Arc<AtomicUsize>,
}

impl BatchSignal {
    pub fn new(live: Arc<AtomicUsize>) -> BatchSignal {
        live.fetch_add(1, Ordering::AcqRel);
        BatchSignal {
            lock: Mutex::new(()),
            cv: Condvar::new(),
            waiters: AtomicUsize::new(0),
            live,
        }
    }

    /// Something a waiter checks changed. The caller's change is a SeqCst
    /// read-modify-write, so this load and a waiter's registration are
    /// totally ordered: either it sees the waiter or the waiter sees the change.
    pub fn poke(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let _g = self.lock.lock();
            self.cv.notify_all();
        }
    }

    /// Block until `done()` holds or `until` passes (`None`: no limit);
    /// `done` is re-checked after every poke and at `until`. Returns
    /// `done()`'s last verdict. No spinning: the thread sleeps in between.
    pub fn wait_until(&self, until: Option<Instant>, mut done: impl FnMut() -> bool) -> bool {
        let mut g = self.lock.lock();
        self.waiters.fetch_add(1, Ordering::SeqCst);
        fence(Ordering::SeqCst);
        let verdict = loop {
            if done() {
                break true;
            }
            match until {
                Some(t) => {
                    if Instant::now() >= t {
                        break done();
                    }
                    self.cv.wait_until(&mut g, t);
                }
                None => self.cv.wait(&mut g),
            }
        };
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        verdict
    }
}

impl std::fmt::Debug for BatchSignal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BatchSignal")
            .field("waiters", &self.waiters.load(Ordering::Relaxed))
            .finish()
    }
}

impl Drop for BatchSignal {
    fn drop(&mut self) {
        self.live.fetch_sub(1, Ordering::AcqRel);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::AtomicBool;
    use std::time::Duration;

    #[test]
    fn a_poke_wakes_the_waiter_and_the_gauge_counts_live_signals() {
        let live = Arc::new(AtomicUsize::new(0));
        let s = Arc::new(BatchSignal::new(live.clone()));
        assert_eq!(live.load(Ordering::Acquire), 1);
        let flag = Arc::new(AtomicBool::new(false));
        let (s2, f2) = (s.clone(), flag.clone());
        let h = std::thread::spawn(move || {
            std::thread::sleep(Duration::from_millis(20));
            f2.store(true, Ordering::SeqCst);
            s2.poke();
        });
        let t0 = Instant::now();
        let far = t0 + Duration::from_secs(60);
        assert!(s.wait_until(Some(far), || flag.load(Ordering::SeqCst)));
        assert!(t0.elapsed() < Duration::from_secs(30));
        h.join().unwrap();
        // A wait whose condition never holds ends at its limit, false.
        let soon = Instant::now() + Duration::from_millis(10);
        assert!(!s.wait_until(Some(soon), || false));
        drop(s);
        assert_eq!(live.load(Ordering::Acquire), 0);
    }
}
