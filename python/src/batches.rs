//! Batch ids handed to Python (`batch_transfer_async*`,
//! `transfer_submit_write`) and batches given up on. Upstream casts a batch
//! id back to a pointer; here an id that was never handed out, or was
//! already finished, is refused with -1 instead.

use std::collections::HashMap;
use std::sync::Arc;

use parking_lot::Mutex;
use transfer_engine::TransferEngine;

use crate::ratelog::log_error;
use crate::wait::{Pause, State, Tracker};

#[derive(Default)]
pub struct BatchBook {
    open: Mutex<HashMap<u64, Arc<Mutex<Tracker>>>>,
    /// Batches that timed out with tasks still running: the engine keeps
    /// them until every task ended, so they are freed on a later call.
    orphans: Mutex<Vec<Tracker>>,
}

/// Free an ended batch, or keep it for `reap` if a task still runs.
pub fn release(engine: &TransferEngine, book: &BatchBook, mut t: Tracker) {
    t.poll(engine);
    if t.ended() {
        if let Err(e) = engine.free_batch_id(t.batch) {
            log_error!("freeing batch {:#x}: {e}", t.batch);
        }
    } else {
        log::warn!(
            "batch {:#x} has tasks still running after its deadline; freed once they end",
            t.batch
        );
        book.orphans.lock().push(t);
    }
}

impl BatchBook {
    pub fn insert(&self, t: Tracker) {
        self.open.lock().insert(t.batch, Arc::new(Mutex::new(t)));
    }

    /// Free orphans whose tasks all ended. Cheap when there are none.
    pub fn reap(&self, engine: &TransferEngine) {
        let mut orphans = self.orphans.lock();
        orphans.retain_mut(|t| {
            t.poll(engine);
            if t.ended() {
                let _ = engine.free_batch_id(t.batch);
                false
            } else {
                true
            }
        });
    }

    /// The id was handed out and not yet finished.
    pub fn contains(&self, id: u64) -> bool {
        self.open.lock().contains_key(&id)
    }

    /// Stop tracking `id` (released in the engine); false if unknown.
    pub fn forget(&self, id: u64) -> bool {
        self.open.lock().remove(&id).is_some()
    }

    fn take(&self, id: u64) -> Option<Tracker> {
        let cell = self.open.lock().remove(&id)?;
        match Arc::try_unwrap(cell) {
            Ok(m) => Some(m.into_inner()),
            // Another thread polls it right now; it stays theirs.
            Err(cell) => {
                self.open.lock().insert(id, cell);
                None
            }
        }
    }

    /// `transfer_check_status`: 1 completed, 0 running, -1 failed, -2 timed out.
    /// Completed and failed batches are freed (their id is then unknown).
    pub fn check(&self, engine: &TransferEngine, id: u64) -> i32 {
        let Some(cell) = self.open.lock().get(&id).cloned() else {
            log_error!("transfer_check_status: unknown batch id {id:#x}");
            return -1;
        };
        let state = cell.lock().poll(engine);
        drop(cell);
        match state {
            State::Running => 0,
            State::TimedOut => -2,
            State::Completed | State::Failed => {
                if let Some(t) = self.take(id) {
                    let _ = engine.free_batch_id(t.batch);
                }
                if state == State::Completed {
                    1
                } else {
                    -1
                }
            }
        }
    }

    /// `get_batch_transfer_status`: wait for every batch in `ids`; 0 when all
    /// completed, else -1. Every batch named is finished afterwards.
    pub fn wait_all(&self, engine: &TransferEngine, ids: &[u64]) -> i32 {
        let mut pending = Vec::with_capacity(ids.len());
        let mut ok = true;
        let mut unique = ids.to_vec();
        unique.sort_unstable();
        unique.dedup();
        for id in unique {
            match self.take(id) {
                Some(t) => pending.push(t),
                None => {
                    log_error!("get_batch_transfer_status: unknown batch id {id:#x}");
                    ok = false;
                }
            }
        }
        let mut pause = Pause::new();
        while !pending.is_empty() {
            let mut i = 0;
            while i < pending.len() {
                match pending[i].poll(engine) {
                    State::Running => i += 1,
                    state => {
                        let t = pending.swap_remove(i);
                        if state != State::Completed {
                            log_error!("batch {:#x} ended {}", t.batch, t.describe(state));
                            ok = false;
                        }
                        release(engine, self, t);
                    }
                }
            }
            if !pending.is_empty() {
                pause.pause();
            }
        }
        if ok {
            0
        } else {
            -1
        }
    }
}
