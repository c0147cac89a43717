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
/// The longest window; see `Idle`.
const SPIN: Duration = Duration::from_micros(10);

/// The shortest spin window (a poll or two).
const MIN_SPIN: Duration = Duration::from_micros(1);

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
/// in flight on the CQ this thread polls (and, for the dedicated poller,
/// always): spin within the window, then arm the CQ, poll once more (the
/// loop does), then block on the completion channel until a completion,
/// an interrupt or `deadline`. Otherwise sleep on `signal` (slices queued,
/// room freed, shutdown) until `deadline`. Nothing naps on a timer.
///
/// The spin window adapts, as an adaptive mutex's spin does: a spin that
/// ends without a completion halves it (down to `MIN_SPIN`), one that finds
/// a completion doubles it (up to `SPIN`). A posting thread that slept on
/// its signal starts at `SPIN`: it spins for the completion of what it
/// posts next, which on a NIC comes a few µs later. The dedicated poller
/// needs no such start: with nothing in flight it blocks on the completion
/// channel, so a first completion wakes it; it spins only for the next
/// ones, and completions further apart than the window cost it a block
/// each instead of a spin (spinning CPU is a slice's cost).
pub(super) struct Idle {
    spin_until: Option<Instant>,
    /// The current spin ended without a completion.
    spun_out: bool,
    armed: bool,
    window: Duration,
    /// Block on the completion channel even with nothing in flight (a
    /// thread that only polls: a completion is the only work that can come
    /// its way, so a post need not wake it; the NIC's event does).
    on_cq_when_idle: bool,
}

impl Default for Idle {
    fn default() -> Self {
        Idle {
            spin_until: None,
            spun_out: false,
            armed: false,
            window: SPIN,
            on_cq_when_idle: false,
        }
    }
}

impl Idle {
    /// The wait of a thread that only polls (see `on_cq_when_idle`).
    pub(super) fn polling_only() -> Idle {
        Idle {
            on_cq_when_idle: true,
            ..Idle::default()
        }
    }

    /// Something was done: the next idle step starts with a spin.
    pub(super) fn reset(&mut self) {
        if self.spin_until.is_some() && !self.spun_out {
            // The spin found work: spinning pays, spin as long or longer.
            self.window = (self.window * 2).min(SPIN);
        }
        self.spin_until = None;
        self.spun_out = false;
        self.armed = false;
    }

    /// One turn of the spin: true if this thread polls, WRs are in
    /// flight and the spin window is open (it yielded; poll again).
    pub(super) fn spin(&mut self, cw: &ContextWorkers, polls: bool) -> bool {
        if !polls || !cw.has_inflight() || cw.ctx.device.is_none() || self.armed {
            return false;
        }
        if self.spun_out {
            return false;
        }
        let now = Instant::now();
        if now < *self.spin_until.get_or_insert(now + self.window) {
            // Yield rather than pause: on a busy host the CPU goes to the
            // threads producing the completions (or the submitter).
            std::thread::yield_now();
            return true;
        }
        self.spun_out = true;
        self.window = (self.window / 2).max(MIN_SPIN);
        false
    }

    pub(super) fn step(
        &mut self,
        cw: &ContextWorkers,
        signal: &Signal,
        polls: bool,
        deadline: Option<Instant>,
    ) {
        let inflight = cw.has_inflight();
        let dev = match &cw.ctx.device {
            Some(d) if polls && (inflight || self.on_cq_when_idle) => d,
            _ => {
                self.reset();
                // Whatever comes next starts a new run: spin in full.
                self.window = SPIN;
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
