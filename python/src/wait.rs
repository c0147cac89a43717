//! Waiting for batches. The engine reports progress only through task
//! counters, so a wait polls them: it yields for 200 µs first (loopback
//! transfers end in tens of microseconds), then naps that grow to 500 µs. Every wait has a
//! deadline: upstream's `MC_TRANSFER_TIMEOUT` (default 30 s, at least 5 s)
//! plus one nanosecond per byte (1 GiB/s).

use std::time::{Duration, Instant};

use transfer_engine::{TaskStatus, TransferEngine};

/// `MC_TRANSFER_TIMEOUT` in seconds, as upstream reads it (atoi, min 5).
pub fn transfer_timeout() -> Duration {
    let secs = std::env::var("MC_TRANSFER_TIMEOUT")
        .ok()
        .map(|v| v.trim().parse::<i64>().unwrap_or(0).max(5) as u64)
        .unwrap_or(30);
    Duration::from_secs(secs)
}

/// Where one batch stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Running,
    Completed,
    /// Every task ended and at least one did not move its bytes.
    Failed,
    /// A task reads TIMEOUT (`MC_SLICE_TIMEOUT`) or the deadline passed.
    TimedOut,
}

/// One submitted batch and which of its tasks already ended.
pub struct Tracker {
    pub batch: u64,
    ended: Vec<bool>,
    left: usize,
    failed: bool,
    pub deadline: Instant,
}

impl Tracker {
    pub fn new(batch: u64, tasks: usize, bytes: u64, timeout: Duration) -> Tracker {
        Tracker {
            batch,
            ended: vec![false; tasks],
            left: tasks,
            failed: false,
            deadline: Instant::now() + timeout + Duration::from_nanos(bytes),
        }
    }

    /// Poll every task not yet ended, once. Reading a task's end marks it
    /// observed in the engine, which is what lets the batch be freed.
    pub fn poll(&mut self, engine: &TransferEngine) -> State {
        let mut slice_timeout = false;
        for (i, ended) in self.ended.iter_mut().enumerate() {
            if *ended {
                continue;
            }
            match engine.transfer_status(self.batch, i) {
                Ok(s) => match s.status {
                    TaskStatus::Completed => *ended = true,
                    TaskStatus::Failed | TaskStatus::Canceled | TaskStatus::Invalid => {
                        *ended = true;
                        self.failed = true;
                    }
                    TaskStatus::Timeout => slice_timeout = true,
                    TaskStatus::Waiting | TaskStatus::Pending => {}
                },
                Err(e) => {
                    log::error!("batch {:#x} task {i}: {e}", self.batch);
                    *ended = true;
                    self.failed = true;
                }
            }
            if *ended {
                self.left -= 1;
            }
        }
        if self.left == 0 {
            if self.failed {
                State::Failed
            } else {
                State::Completed
            }
        } else if slice_timeout || Instant::now() >= self.deadline {
            State::TimedOut
        } else {
            State::Running
        }
    }

    /// Why a batch ended, for the log.
    pub fn describe(&self, state: State) -> String {
        match state {
            State::TimedOut if Instant::now() >= self.deadline => format!(
                "TIMEOUT: {} of {} tasks still running at the deadline (MC_TRANSFER_TIMEOUT={} s + 1 ns per byte)",
                self.left,
                self.ended.len(),
                transfer_timeout().as_secs()
            ),
            State::TimedOut => "TIMEOUT: a task read TIMEOUT (MC_SLICE_TIMEOUT)".to_string(),
            State::Failed => "FAILED: a task did not move its bytes".to_string(),
            other => format!("{other:?}"),
        }
    }

    /// All tasks ended (so the engine will free the batch).
    pub fn ended(&self) -> bool {
        self.left == 0
    }
}

/// Growing pause between polls: yields for the first [`YIELD_FOR`] (a
/// loopback or RDMA transfer ends within tens of µs, and a timed nap would
/// add the timer slack, 50 µs by default, to each), then naps growing from
/// 10 to 500 µs.
pub struct Pause {
    started: Instant,
    naps: u32,
}

/// How long a wait yields before it starts to nap.
const YIELD_FOR: Duration = Duration::from_micros(200);

impl Pause {
    pub fn new() -> Pause {
        Pause {
            started: Instant::now(),
            naps: 0,
        }
    }

    pub fn pause(&mut self) {
        if self.started.elapsed() < YIELD_FOR {
            std::thread::yield_now();
            return;
        }
        let us = 10u64 << self.naps.min(6);
        self.naps = self.naps.saturating_add(1);
        std::thread::sleep(Duration::from_micros(us.min(500)));
    }
}

/// Poll `tracker` until it leaves `Running`.
pub fn wait(engine: &TransferEngine, tracker: &mut Tracker) -> State {
    let mut pause = Pause::new();
    loop {
        match tracker.poll(engine) {
            State::Running => pause.pause(),
            end => return end,
        }
    }
}
