//! Store modes: a thread that notices when the store lost our keys (a
//! metadata server restarted without persistence) and publishes them again.

use std::sync::{Arc, Weak};
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use super::Metadata;
use crate::threads::ThreadCount;

pub struct Keeper {
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Option<JoinHandle<()>>,
}

/// `MC_TE_METADATA_KEEPALIVE_MS`: how often the keys are checked (default 2 s).
fn interval() -> Duration {
    Duration::from_millis(crate::config::env_u64(
        "MC_TE_METADATA_KEEPALIVE_MS",
        2000,
        50,
        3_600_000,
    ))
}

impl Keeper {
    /// Its thread is counted in `threads` (the metadata's).
    pub fn start(md: Weak<Metadata>, threads: ThreadCount) -> Keeper {
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let s2 = stop.clone();
        let every = interval();
        let thread = threads
            .spawn("te-md-keeper", move || loop {
                {
                    let mut stopped = s2.0.lock();
                    if !*stopped {
                        s2.1.wait_for(&mut stopped, every);
                    }
                    if *stopped {
                        return;
                    }
                }
                let Some(md) = md.upgrade() else { return };
                if let Err(e) = md.restore_lost_keys() {
                    log::debug!("metadata keeper: store unreachable: {e}");
                }
            })
            .ok();
        Keeper { stop, thread }
    }

    pub fn stop(mut self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}
