//! Batches: a capacity, the tasks submitted so far, and an optional notify
//! to send once every task completed (spec §9); the signal its waiters
//! sleep on and the deadline its later submits inherit (te-rs extension).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Instant;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::batch_signal::BatchSignal;
use crate::error::{Error, Result};
use crate::id_map::IdMap;
use crate::metadata::SegmentId;
use crate::metrics::tasks::TaskMeter;
use crate::task::{StopReason, Task, TaskStatus, TransferRequest};

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
    /// Poked by its tasks' slice ends; `wait` sleeps on it.
    pub signal: Arc<BatchSignal>,
    /// Given to tasks submitted from now on (`set_deadline`).
    deadline: Mutex<Option<Instant>>,
}

impl Batch {
    fn new(capacity: usize, live: Arc<AtomicUsize>) -> Batch {
        Batch {
            capacity,
            tasks: RwLock::new(Vec::new()),
            submit_lock: Mutex::new(()),
            notify: Mutex::new(None),
            has_notify: AtomicBool::new(false),
            signal: Arc::new(BatchSignal::new(live)),
            deadline: Mutex::new(None),
        }
    }

    /// Every task submitted so far, and every later one, times out at `at`.
    pub fn set_deadline(&self, at: Instant) {
        *self.deadline.lock() = Some(at);
        for t in self.tasks.read_recursive().iter() {
            t.set_deadline(at);
        }
    }

    pub fn deadline(&self) -> Option<Instant> {
        *self.deadline.lock()
    }

    /// Tell tasks `range` (all: `None`) to stop; how many were running.
    pub fn stop_tasks(&self, range: Option<usize>, why: StopReason) -> usize {
        let tasks = self.tasks.read_recursive();
        let pick: &[Arc<Task>] = match range {
            Some(i) => tasks.get(i..=i).unwrap_or(&[]),
            None => &tasks,
        };
        pick.iter()
            .filter(|t| t.status() == TaskStatus::Waiting && t.request_stop(why))
            .count()
    }

    /// Time out the unfinished tasks whose deadline is past; returns how
    /// many were told to stop and the earliest deadline still ahead.
    pub fn expire(&self, now: Instant) -> (usize, Option<Instant>) {
        let mut stopped = 0;
        let mut next: Option<Instant> = None;
        for t in self.tasks.read_recursive().iter() {
            if t.stop_reason().is_some() || t.status() != TaskStatus::Waiting {
                continue;
            }
            match t.deadline() {
                Some(d) if d <= now => {
                    stopped += usize::from(t.request_stop(StopReason::DeadlinePassed));
                }
                Some(d) => next = Some(next.map_or(d, |n| n.min(d))),
                None => {}
            }
        }
        (stopped, next)
    }

    /// True once task `one` (all: `None`) ended. Reads the tasks without
    /// queuing behind a submitter (`read_recursive`): it runs under the
    /// signal's lock, which a slice end may take while a reader holds the tasks.
    pub fn ended(&self, one: Option<usize>) -> bool {
        let tasks = self.tasks.read_recursive();
        match one {
            Some(i) => tasks
                .get(i)
                .is_none_or(|t| t.status() != TaskStatus::Waiting),
            None => tasks.iter().all(|t| t.status() != TaskStatus::Waiting),
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
    /// Batches alive: in the table, or released with tasks still held by a
    /// transport (each batch's signal counts itself here).
    live: Arc<AtomicUsize>,
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
            .insert(id, Arc::new(Batch::new(capacity, self.live.clone())));
        id
    }

    /// Batch ids in the table.
    pub fn len(&self) -> usize {
        self.batches.read().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Batches alive: in the table or released with pieces still in flight.
    pub fn live(&self) -> usize {
        self.live.load(Ordering::Acquire)
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

    /// Take `id` out of the table whatever its tasks' state (the id is
    /// invalid from now on). The caller stops its tasks; their memory goes
    /// when the last transport holding one lets go.
    pub fn release(&self, id: u64) -> Result<Arc<Batch>> {
        let batch = self
            .batches
            .write()
            .remove(&id)
            .ok_or_else(|| unknown(id))?;
        // A submit running on this batch finishes first; its tasks are in.
        drop(batch.submit_guard());
        Ok(batch)
    }

    /// After `release` and stopping the tasks: keep the ones nothing holds.
    pub fn recycle(&self, batch: &Batch) {
        self.keep_spare(std::mem::take(&mut *batch.tasks.write()));
    }

    /// Keep the tasks no transport holds any more (a transport may still
    /// drop its reference to a finished task a moment later: those go).
    fn keep_spare(&self, tasks: Vec<Arc<Task>>) {
        let mut spare = self.spare.lock();
        let room = SPARE_TASKS.saturating_sub(spare.len());
        spare.extend(
            tasks
                .into_iter()
                .filter_map(|mut t| {
                    // Held nowhere else: it drops its batch's signal.
                    Arc::get_mut(&mut t)?.detach();
                    Some(t)
                })
                .take(room),
        );
    }

    /// A task for each request of `batch`, started at `now`, timing out at
    /// `deadline`, task `i` reporting to `meter(i)` when it ends: reused
    /// where the spares allow, allocated otherwise.
    pub fn new_tasks(
        &self,
        requests: &[TransferRequest],
        now: Instant,
        batch: &Batch,
        deadline: Option<Instant>,
        meter: impl Fn(usize) -> Option<Arc<TaskMeter>>,
    ) -> Vec<Arc<Task>> {
        let mut reused = {
            let mut spare = self.spare.lock();
            let from = spare.len().saturating_sub(requests.len());
            spare.split_off(from)
        };
        let mut out = Vec::with_capacity(requests.len());
        for (i, r) in requests.iter().enumerate() {
            let fresh = Task::build(*r, now, Some(batch.signal.clone()), meter(i));
            if let Some(d) = deadline {
                fresh.set_deadline(d);
            }
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
        let b = t.get(id).unwrap();
        let tasks = t.new_tasks(&reqs(n), Instant::now(), &b, None, |_| None);
        let ptrs = tasks.iter().map(Arc::as_ptr).collect();
        if let Some(k) = keep {
            k.push(tasks[0].clone());
        }
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
        let b = t.get(t.allocate(4)).unwrap();
        let again = t.new_tasks(&reqs(4), Instant::now(), &b, None, |_| None);
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
    fn a_released_batch_lives_until_its_last_task_is_let_go() {
        let t = BatchTable::default();
        let id = t.allocate(2);
        let b = t.get(id).unwrap();
        let tasks = t.new_tasks(&reqs(2), Instant::now(), &b, None, |_| None);
        b.push_tasks(tasks.iter().cloned());
        tasks.iter().for_each(|task| task.set_slices(1));
        drop(b);
        // A transport still holds task 1.
        let held = tasks[1].clone();
        drop(tasks);
        assert_eq!((t.len(), t.live()), (1, 1));
        let b = t.release(id).unwrap();
        assert_eq!(b.stop_tasks(None, StopReason::Canceled), 2);
        t.recycle(&b);
        drop(b);
        assert!(t.get(id).is_err() && t.release(id).is_err());
        assert_eq!((t.len(), t.live()), (0, 1), "task 1 keeps its batch alive");
        held.slice_failed();
        assert_eq!(held.status(), TaskStatus::Canceled);
        drop(held);
        assert_eq!((t.len(), t.live()), (0, 0));
    }

    #[test]
    fn the_spare_list_is_bounded() {
        let t = BatchTable::default();
        run_and_free(&t, SPARE_TASKS + 10, None);
        assert_eq!(t.spare.lock().len(), SPARE_TASKS);
    }
}
