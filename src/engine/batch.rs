//! Batches: a capacity, the tasks submitted so far, and an optional notify
//! to send once every task completed (spec §9).

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::{Mutex, RwLock, RwLockReadGuard};

use crate::error::{Error, Result};
use crate::id_map::IdMap;
use crate::metadata::SegmentId;
use crate::task::Task;

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

#[derive(Default)]
pub struct BatchTable {
    batches: RwLock<IdMap<u64, Arc<Batch>>>,
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
        map.remove(&id);
        Ok(())
    }
}
