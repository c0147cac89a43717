//! Batches: a capacity, the tasks submitted so far, and an optional notify
//! to send once every task completed (spec §9).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::id_map::IdMap;
use crate::metadata::SegmentId;
use crate::metrics::tasks::TaskMeter;
use crate::task::{Task, TransferRequest};

/// A `submitTransferWithNotify` message waiting for its batch to complete.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PendingNotify {
    pub target: SegmentId,
    pub name: String,
    pub msg: String,
}

pub struct Batch {
    pub capacity: usize,
    tasks: RwLock<Vec<Arc<Task>>>,
    /// Serialises submitters so task ids stay consecutive.
    submit_lock: Mutex<()>,
    notify: Mutex<Option<PendingNotify>>,
    /// Mirrors `notify.is_some()` so the status poll path takes no lock.
    has_notify: AtomicBool,
}

impl Batch {
    fn new(capacity: usize) -> Batch {
        Batch {
            capacity,
            tasks: RwLock::new(Vec::new()),
            submit_lock: Mutex::new(()),
            notify: Mutex::new(None),
            has_notify: AtomicBool::new(false),
        }
    }

    pub fn submit_guard(&self) -> parking_lot::MutexGuard<'_, ()> {
        self.submit_lock.lock()
    }

    pub fn len(&self) -> usize {
        self.tasks.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    pub fn push_tasks(&self, tasks: impl Iterator<Item = Arc<Task>>) {
        self.tasks.write().extend(tasks);
    }

    /// The tasks, read-locked (a status poll clones no `Arc`). Do not call
    /// other `Batch` methods while holding it.
    pub fn tasks(&self) -> RwLockReadGuard<'_, Vec<Arc<Task>>> {
        self.tasks.read()
    }

    pub fn all_observed_terminal(&self) -> bool {
        self.tasks.read().iter().all(|t| t.observed_terminal())
    }

    pub fn set_notify(&self, n: PendingNotify) {
        // The flag changes under the lock, so it always agrees with `notify`.
        let mut g = self.notify.lock();
        *g = Some(n);
        self.has_notify.store(true, Ordering::Release);
    }

    /// Take the pending notify (so it is sent at most once).
    pub fn take_notify(&self) -> Option<PendingNotify> {
        let mut g = self.notify.lock();
        self.has_notify.store(false, Ordering::Release);
        g.take()
    }

    pub fn has_notify(&self) -> bool {
        self.has_notify.load(Ordering::Acquire)
    }
}

/// Batch ids are opaque: a process-wide counter, so an id from another
/// engine, a freed id or garbage fails the lookup instead of being followed.
static NEXT_BATCH_ID: AtomicU64 = AtomicU64::new(0x7e00_0000_0000_0001);

/// Most tasks kept for reuse (about 110 bytes each).
const SPARE_TASKS: usize = 16 * 1024;

#[derive(Default)]
pub struct BatchTable {
    batches: RwLock<IdMap<u64, Arc<Batch>>>,
    /// Tasks of freed batches that nothing else holds, for the next
    /// submits: a task costs no allocation on the submit path (one was a
    /// sixth of an RDMA slice's submit cost).
    spare: Mutex<Vec<Arc<Task>>>,
}

fn unknown(id: u64) -> Error {
    Error::InvalidArgument(format!("unknown batch id {id:#x}"))
}

impl BatchTable {
    pub fn allocate(&self, capacity: usize) -> u64 {
        let id = NEXT_BATCH_ID.fetch_add(1, Ordering::Relaxed);
        self.batches
            .write()
            .insert(id, Arc::new(Batch::new(capacity)));
        id
    }

    pub fn get(&self, id: u64) -> Result<Arc<Batch>> {
        self.batches
            .read()
            .get(&id)
            .cloned()
            .ok_or_else(|| unknown(id))
    }

    /// Run `f` on batch `id` under the table's read lock: the status poll
    /// path, with no reference-count traffic on a shared line.
    pub fn with<R>(&self, id: u64, f: impl FnOnce(&Batch) -> R) -> Result<R> {
        let map = self.batches.read();
        map.get(&id).map(|b| f(b)).ok_or_else(|| unknown(id))
    }

    /// Free `id` if every task was observed terminal, else `BatchBusy`.
    pub fn free(&self, id: u64) -> Result<()> {
        let mut map = self.batches.write();
        let batch = map.get(&id).ok_or_else(|| unknown(id))?;
        if !batch.all_observed_terminal() {
            return Err(Error::BatchBusy(format!(
                "batch {id:#x} has tasks not yet seen COMPLETED/FAILED by getTransferStatus"
            )));
        }
        let batch = map.remove(&id);
        drop(map);
        if let Some(b) = batch {
            self.keep_spare(std::mem::take(&mut *b.tasks.write()));
        }
        Ok(())
    }

    /// Keep the tasks no transport holds any more (a transport may still
    /// drop its reference to a finished task a moment later: those go).
    fn keep_spare(&self, tasks: Vec<Arc<Task>>) {
        let mut spare = self.spare.lock();
        let room = SPARE_TASKS.saturating_sub(spare.len());
        spare.extend(
            tasks
                .into_iter()
                .filter(|t| Arc::strong_count(t) == 1)
                .take(room),
        );
    }

    /// A task for each request, started at `now`: reused where the spares
    /// allow, allocated otherwise.
    pub fn new_tasks(&self, requests: &[TransferRequest], now: Instant) -> Vec<Arc<Task>> {
        self.new_metered_tasks(requests, now, |_| None)
    }

    /// `new_tasks` whose task `i` reports to `meter(i)` when it ends.
    pub fn new_metered_tasks(
        &self,
        requests: &[TransferRequest],
        now: Instant,
        meter: impl Fn(usize) -> Option<Arc<TaskMeter>>,
    ) -> Vec<Arc<Task>> {
        let mut reused = {
            let mut spare = self.spare.lock();
            let from = spare.len().saturating_sub(requests.len());
            spare.split_off(from)
        };
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let fresh = Task::metered(*r, now, meter(i));
            match reused.pop() {
                Some(mut t) => match Arc::get_mut(&mut t) {
                    Some(slot) => {
                        *slot = fresh;
                        out.push(t);
                    }
                    None => out.push(Arc::new(fresh)),
                },
                None => out.push(Arc::new(fresh)),
            }
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Opcode, TaskStatus};

    fn reqs(n: usize) -> Vec<TransferRequest> {
        (0..n)
            .map(|i| TransferRequest {
                opcode: Opcode::Write,
                source: i as u64,
                target_id: 1,
                target_offset: 0,
                length: 4,
            })
            .collect()
    }

    /// Submit `n` tasks into a new batch, finish and observe them all, free it.
    fn run_and_free(
        t: &BatchTable,
        n: usize,
        keep: Option<&mut Vec<Arc<Task>>>,
    ) -> Vec<*const Task> {
        let id = t.allocate(n);
        let tasks = t.new_tasks(&reqs(n), Instant::now());
        let ptrs = tasks.iter().map(Arc::as_ptr).collect();
        if let Some(k) = keep {
            k.push(tasks[0].clone());
        }
        let b = t.get(id).unwrap();
        b.push_tasks(tasks.into_iter());
        for task in b.tasks().iter() {
            task.set_slices(1);
            task.slice_succeeded(4);
            assert_eq!(task.status(), TaskStatus::Completed);
            task.mark_observed_terminal();
        }
        drop(b);
        t.free(id).unwrap();
        ptrs
    }

    #[test]
    fn freed_tasks_come_back_fresh_and_held_ones_do_not() {
        let t = BatchTable::default();
        let mut held = Vec::new();
        let first = run_and_free(&t, 4, Some(&mut held));
        // Three were free to reuse; the one still held elsewhere is not.
        let again = t.new_tasks(&reqs(4), Instant::now());
        let reused = again
            .iter()
            .filter(|a| first.contains(&Arc::as_ptr(a)))
            .count();
        assert_eq!(reused, 3);
        assert!(again.iter().all(|a| !Arc::ptr_eq(a, &held[0])));
        for (a, r) in again.iter().zip(reqs(4)) {
            assert_eq!(a.request, r);
            assert_eq!(a.status(), TaskStatus::Waiting);
            assert_eq!(a.transferred_bytes(), 0);
            assert!(!a.observed_terminal());
        }
        // The held one is untouched by the reuse.
        assert_eq!(held[0].status(), TaskStatus::Completed);
    }

    #[test]
    fn the_spare_list_is_bounded() {
        let t = BatchTable::default();
        run_and_free(&t, SPARE_TASKS + 10, None);
        assert_eq!(t.spare.lock().len(), SPARE_TASKS);
    }
}
