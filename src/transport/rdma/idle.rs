//! How the threads of a context wait: the polling thread's spin → arm →
//! block on the completion channel while WRs are in flight, a signal
//! (with the earliest deadline of parked slices) otherwise, and the
//! polling thread's periodic sweep.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::queues::Signal;
use super::worker::ContextWorkers;
use super::Shared;

/// How often a polling thread sweeps slice timeouts and stalled endpoints
/// while WRs are in flight.
const SWEEP_EVERY: Duration = Duration::from_millis(100);

/// While WRs are in flight, poll an empty CQ this long before blocking on
/// its completion channel: a completion a few µs away costs no wake-up.
const SPIN: Duration = Duration::from_micros(10);

/// Longest single block on the completion channel.
const MAX_BLOCK: Duration = Duration::from_millis(100);

/// The periodic checks of a polling thread.
pub(super) struct Sweep {
    last: Instant,
}

impl Sweep {
    pub(super) fn new() -> Sweep {
        Sweep {
            last: Instant::now(),
        }
    }

    /// Run the checks when due; returns when they are due next.
    pub(super) fn run_if_due(&mut self, sh: &Shared, cw: &Arc<ContextWorkers>) -> Instant {
        let now = Instant::now();
        if now.duration_since(self.last) >= SWEEP_EVERY {
            super::timeouts::sweep(sh, cw);
            super::poll::watch_stalled(sh, cw);
            self.last = now;
        }
        self.last + SWEEP_EVERY
    }
}

/// An idle thread's wait, the same for posters and pollers. While WRs are
/// in flight on the CQ this thread polls: spin for `SPIN`, then arm the
/// CQ, poll once more (the loop does), then block on the completion
/// channel until a completion, an interrupt or `deadline`. Otherwise sleep
/// on `signal` (slices queued, WRs posted, room freed, shutdown) until
/// `deadline`. Nothing naps on a timer.
#[derive(Default)]
pub(super) struct Idle {
    spin_until: Option<Instant>,
    armed: bool,
}

impl Idle {
    /// Something was done: the next idle step starts with a spin.
    pub(super) fn reset(&mut self) {
        self.spin_until = None;
        self.armed = false;
    }

    /// One turn of the spin: true if this thread polls, WRs are in
    /// flight and the spin window is open (it yielded; poll again).
    pub(super) fn spin(&mut self, cw: &ContextWorkers, polls: bool) -> bool {
        if !polls || !cw.has_inflight() || cw.ctx.device.is_none() || self.armed {
            return false;
        }
        let now = Instant::now();
        if now < *self.spin_until.get_or_insert(now + SPIN) {
            // Yield rather than pause: on a busy host the CPU goes to the
            // threads producing the completions (or the submitter).
            std::thread::yield_now();
            return true;
        }
        false
    }

    pub(super) fn step(
        &mut self,
        cw: &ContextWorkers,
        signal: &Signal,
        polls: bool,
        deadline: Option<Instant>,
    ) {
        let dev = match &cw.ctx.device {
            Some(d) if polls && cw.has_inflight() => d,
            _ => {
                self.reset();
                return signal.wait(deadline, &cw.stop);
            }
        };
        if self.spin(cw, polls) {
            return;
        }
        if !self.armed {
            // The caller polls once more before the block below.
            dev.arm_completions();
            self.armed = true;
            return;
        }
        let now = Instant::now();
        let left = deadline.map_or(MAX_BLOCK, |t| t.saturating_duration_since(now));
        dev.wait_completions(left.min(MAX_BLOCK));
        self.armed = false;
    }
}

pub(super) fn earliest(a: Option<Instant>, b: Option<Instant>) -> Option<Instant> {
    match (a, b) {
        (Some(x), Some(y)) => Some(x.min(y)),
        (x, None) => x,
        (None, y) => y,
    }
}
