//! A task is one transfer request inside a batch; transports complete it
//! slice by slice through atomic counters (the only way data flows back up).

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::batch_signal::BatchSignal;
use crate::metadata::SegmentId;
use crate::metrics::tasks::{Ending, TaskMeter};

/// Why a task was told to stop (`Task::stop_reason`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum StopReason {
    Canceled,
    DeadlinePassed,
}

const RUNNING: u8 = 0;
const CANCELED: u8 = 1;
const TIMED_OUT: u8 = 2;
const NO_DEADLINE: u64 = u64::MAX;

/// Mooncake's `STATUS_*` values (`transfer_status.status`); never outside 0..6.
#[repr(i32)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskStatus {
    Waiting = 0,
    Pending = 1,
    Invalid = 2,
    Canceled = 3,
    Completed = 4,
    Timeout = 5,
    Failed = 6,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Opcode {
    Read,
    Write,
}

impl Opcode {
    /// Mooncake casts the opcode unchecked; any value other than 0 is WRITE.
    pub fn from_raw(op: i32) -> Opcode {
        if op == 0 {
            Opcode::Read
        } else {
            Opcode::Write
        }
    }
}

/// One `struct transfer_request`, decoded. `target_offset` is the absolute
/// address in the target process (spec §1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct TransferRequest {
    pub opcode: Opcode,
    pub source: u64,
    pub target_id: SegmentId,
    pub target_offset: u64,
    pub length: u64,
}

/// Counters of one task. A transport first announces how many slices it cut
/// (`add_slices`, before any of them can finish), then reports each slice once.
#[derive(Debug)]
pub struct Task {
    pub request: TransferRequest,
    slices: AtomicU64,
    succeeded: AtomicU64,
    failed: AtomicU64,
    transferred: AtomicU64,
    /// Set once all slices are announced; until then the task is WAITING.
    sealed: AtomicBool,
    /// Set when `getTransferStatus` observed a terminal state (freeBatchID needs it).
    observed_terminal: AtomicBool,
    created: Instant,
    /// RUNNING, CANCELED or TIMED_OUT: transports stop moving its slices.
    stop: AtomicU8,
    /// Nanoseconds after `created` past which the task times out.
    deadline: AtomicU64,
    /// The batch's waiters, poked when a slice ends.
    signal: Option<Arc<BatchSignal>>,
    /// Where the task reports when it turns terminal (metrics), once.
    meter: Option<Arc<TaskMeter>>,
    metered: AtomicBool,
}

impl Task {
    pub fn new(request: TransferRequest) -> Task {
        Task::started_at(request, Instant::now())
    }

    /// A task created at `created` (a submit call reads the clock once for
    /// all its tasks: a clock read per task was a tenth of the RDMA submit path).
    pub fn started_at(request: TransferRequest, created: Instant) -> Task {
        Task::build(request, created, None, None)
    }

    /// A task whose slice ends poke `signal` (its batch's waiters).
    pub fn in_batch(
        request: TransferRequest,
        created: Instant,
        signal: Option<Arc<BatchSignal>>,
    ) -> Task {
        Task::build(request, created, signal, None)
    }

    /// `started_at` with a meter the task reports to when it ends.
    pub fn metered(
        request: TransferRequest,
        created: Instant,
        meter: Option<Arc<TaskMeter>>,
    ) -> Task {
        Task::build(request, created, None, meter)
    }

    /// A task poking `signal` as its slices end and reporting to `meter`
    /// when it turns terminal.
    pub fn build(
        request: TransferRequest,
        created: Instant,
        signal: Option<Arc<BatchSignal>>,
        meter: Option<Arc<TaskMeter>>,
    ) -> Task {
        Task {
            request,
            slices: AtomicU64::new(0),
            succeeded: AtomicU64::new(0),
            failed: AtomicU64::new(0),
            transferred: AtomicU64::new(0),
            sealed: AtomicBool::new(false),
            observed_terminal: AtomicBool::new(false),
            created,
            stop: AtomicU8::new(RUNNING),
            deadline: AtomicU64::new(NO_DEADLINE),
            signal,
            meter,
            metered: AtomicBool::new(false),
        }
    }

    /// Forget the batch's signal (a spare task kept for reuse must not
    /// keep its old batch alive).
    pub fn detach(&mut self) {
        self.signal = None;
    }

    fn poke(&self) {
        if let Some(s) = &self.signal {
            s.poke();
        }
    }

    /// Announce `n` more slices. Call before handing any of them to a worker.
    pub fn add_slices(&self, n: u64) {
        self.slices.fetch_add(n, Ordering::AcqRel);
    }

    /// All slices are announced; the task may now turn terminal.
    pub fn seal(&self) {
        self.sealed.swap(true, Ordering::SeqCst);
        self.poke();
        self.meter_if_ended();
    }

    /// Announce `n` slices and seal in one step (the usual case), on a
    /// task nothing announced slices of yet. The transport cutting a task
    /// is its only writer here, so a store does (no read-modify-write).
    pub fn set_slices(&self, n: u64) {
        debug_assert_eq!(self.slices.load(Ordering::Relaxed), 0);
        self.slices.store(n, Ordering::Release);
        self.seal();
    }

    /// A slice's bytes are where they belong.
    pub fn slice_succeeded(&self, bytes: u64) {
        self.transferred.fetch_add(bytes, Ordering::AcqRel);
        // SeqCst: ordered against a waiter's registration (`BatchSignal::poke`).
        self.succeeded.fetch_add(1, Ordering::SeqCst);
        self.poke();
        self.meter_if_ended();
    }

    /// A slice ended for good without its bytes landing.
    pub fn slice_failed(&self) {
        self.failed.fetch_add(1, Ordering::SeqCst);
        self.poke();
        self.meter_if_ended();
    }

    /// Fail the whole task: every announced slice not yet finished fails.
    /// Used when a transport rejects a request before cutting it.
    pub fn fail_all(&self) {
        if !self.sealed.load(Ordering::Acquire) {
            self.slices.fetch_add(1, Ordering::AcqRel);
            self.seal();
        }
        let total = self.slices.load(Ordering::Acquire);
        let done = self.succeeded.load(Ordering::Acquire) + self.failed.load(Ordering::Acquire);
        if done < total {
            self.failed.fetch_add(total - done, Ordering::SeqCst);
            self.poke();
        }
        self.meter_if_ended();
    }

    /// Tell the transports to stop: slices not yet posted fail instead of
    /// going out, in-flight ones end as the transport can fence them. The
    /// first reason given sticks. True if this call set it.
    pub fn request_stop(&self, why: StopReason) -> bool {
        let v = match why {
            StopReason::Canceled => CANCELED,
            StopReason::DeadlinePassed => TIMED_OUT,
        };
        self.stop
            .compare_exchange(RUNNING, v, Ordering::AcqRel, Ordering::Acquire)
            .is_ok()
    }

    pub fn stop_reason(&self) -> Option<StopReason> {
        match self.stop.load(Ordering::Acquire) {
            CANCELED => Some(StopReason::Canceled),
            TIMED_OUT => Some(StopReason::DeadlinePassed),
            _ => None,
        }
    }

    /// Time out at `at` (a later call replaces an earlier deadline).
    pub fn set_deadline(&self, at: Instant) {
        let ns = at.saturating_duration_since(self.created).as_nanos();
        self.deadline.store(
            u64::try_from(ns).unwrap_or(NO_DEADLINE - 1),
            Ordering::Release,
        );
    }

    pub fn deadline(&self) -> Option<Instant> {
        match self.deadline.load(Ordering::Acquire) {
            NO_DEADLINE => None,
            ns => Some(self.created + Duration::from_nanos(ns)),
        }
    }

    /// What a transport asks before moving a slice: was the task told to
    /// stop, or is its deadline past (then it is told now)? One atomic load
    /// when neither.
    pub fn should_stop(&self, now: Instant) -> bool {
        if self.stop.load(Ordering::Acquire) != RUNNING {
            return true;
        }
        match self.deadline() {
            Some(d) if now >= d => {
                self.request_stop(StopReason::DeadlinePassed);
                true
            }
            _ => false,
        }
    }

    /// Report to the meter the first time the task is seen terminal
    /// (whichever of the racing slice ends or the seal sees it wins).
    fn meter_if_ended(&self) {
        let Some(m) = &self.meter else { return };
        if self.status() == TaskStatus::Waiting || self.metered.swap(true, Ordering::AcqRel) {
            return;
        }
        m.task_ended(Ending {
            op: self.request.opcode,
            length: self.request.length,
            slices_succeeded: self.succeeded.load(Ordering::Acquire),
            slices_failed: self.failed.load(Ordering::Acquire),
            bytes: self.transferred_bytes(),
            latency: self.created.elapsed(),
        });
    }

    pub fn transferred_bytes(&self) -> u64 {
        self.transferred.load(Ordering::Acquire)
    }

    pub fn age(&self) -> std::time::Duration {
        self.created.elapsed()
    }

    /// WAITING until all slices finished; then COMPLETED if every slice
    /// landed (also when it won a race with a cancel), else CANCELED or
    /// TIMEOUT for a task told to stop, else FAILED. So a task reads
    /// CANCELED only once no slice of it can still move a byte.
    pub fn status(&self) -> TaskStatus {
        if !self.sealed.load(Ordering::Acquire) {
            return TaskStatus::Waiting;
        }
        // Read the outcome counters before the total: they only grow, and the
        // total is fixed once sealed.
        let failed = self.failed.load(Ordering::Acquire);
        let ok = self.succeeded.load(Ordering::Acquire);
        let total = self.slices.load(Ordering::Acquire);
        debug_assert!(ok + failed <= total, "a slice of a task ended twice");
        if ok + failed < total {
            TaskStatus::Waiting
        } else if failed > 0 {
            match self.stop_reason() {
                Some(StopReason::Canceled) => TaskStatus::Canceled,
                Some(StopReason::DeadlinePassed) => TaskStatus::Timeout,
                None => TaskStatus::Failed,
            }
        } else {
            TaskStatus::Completed
        }
    }

    /// True the first time (the metric counts a task once).
    pub fn mark_observed_terminal(&self) -> bool {
        !self.observed_terminal.swap(true, Ordering::AcqRel)
    }

    pub fn observed_terminal(&self) -> bool {
        self.observed_terminal.load(Ordering::Acquire)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req() -> TransferRequest {
        TransferRequest {
            opcode: Opcode::Write,
            source: 0,
            target_id: 1,
            target_offset: 0,
            length: 10,
        }
    }

    #[test]
    fn waits_until_sealed_and_all_slices_done() {
        let t = Task::new(req());
        assert_eq!(t.status(), TaskStatus::Waiting);
        t.add_slices(2);
        t.slice_succeeded(5);
        t.slice_succeeded(5);
        assert_eq!(t.status(), TaskStatus::Waiting, "not sealed yet");
        t.seal();
        assert_eq!(t.status(), TaskStatus::Completed);
        assert_eq!(t.transferred_bytes(), 10);
    }

    #[test]
    fn one_failed_slice_fails_the_task() {
        let t = Task::new(req());
        t.set_slices(3);
        t.slice_succeeded(4);
        t.slice_failed();
        assert_eq!(t.status(), TaskStatus::Waiting);
        t.slice_succeeded(4);
        assert_eq!(t.status(), TaskStatus::Failed);
        assert_eq!(t.transferred_bytes(), 8);
    }

    #[test]
    fn zero_slices_complete_at_once_and_fail_all_is_terminal() {
        let t = Task::new(req());
        t.set_slices(0);
        assert_eq!(t.status(), TaskStatus::Completed);
        let u = Task::new(req());
        u.fail_all();
        assert_eq!(u.status(), TaskStatus::Failed);
        let v = Task::new(req());
        v.set_slices(4);
        v.slice_succeeded(1);
        v.fail_all();
        assert_eq!(v.status(), TaskStatus::Failed);
    }

    #[test]
    fn a_stopped_task_reads_canceled_or_timeout_only_once_every_slice_ended() {
        let t = Task::new(req());
        t.set_slices(2);
        assert!(t.request_stop(StopReason::Canceled));
        assert!(
            !t.request_stop(StopReason::DeadlinePassed),
            "the first reason sticks"
        );
        t.slice_failed();
        assert_eq!(
            t.status(),
            TaskStatus::Waiting,
            "a slice may still move bytes"
        );
        t.slice_succeeded(5);
        assert_eq!(t.status(), TaskStatus::Canceled);
        // Every slice landed before the stop took: it won the race.
        let u = Task::new(req());
        u.set_slices(1);
        u.request_stop(StopReason::Canceled);
        u.slice_succeeded(10);
        assert_eq!(u.status(), TaskStatus::Completed);
        // A deadline: noticed by `should_stop`, read as TIMEOUT.
        let v = Task::new(req());
        v.set_slices(1);
        let now = Instant::now();
        v.set_deadline(now + Duration::from_secs(3600));
        assert!(!v.should_stop(now));
        v.set_deadline(now);
        assert!(v.should_stop(now));
        v.slice_failed();
        assert_eq!(v.status(), TaskStatus::Timeout);
    }

    #[test]
    fn a_metered_task_reports_once_when_it_ends() {
        use crate::metrics::peers::PeerTable;
        use crate::metrics::tasks::TaskMetrics;
        let m = TaskMetrics::new(PeerTable::new(4));
        let meter = m.meter(1, "peer", "tcp");
        let t = Task::metered(req(), Instant::now(), meter.clone());
        t.add_slices(2);
        t.slice_succeeded(5);
        t.slice_failed();
        assert_eq!(m.tasks_ended("tcp"), 0, "not sealed: not ended");
        t.seal();
        assert_eq!(m.tasks_ended("tcp"), 1);
        t.fail_all();
        t.seal();
        assert_eq!(m.tasks_ended("tcp"), 1, "counted once");
        let z = Task::metered(req(), Instant::now(), meter);
        z.set_slices(0);
        assert_eq!(m.tasks_ended("tcp"), 2, "zero slices end at the seal");
    }

    #[test]
    fn opcode_is_write_unless_zero() {
        assert_eq!(Opcode::from_raw(0), Opcode::Read);
        assert_eq!(Opcode::from_raw(1), Opcode::Write);
        assert_eq!(Opcode::from_raw(7), Opcode::Write);
    }
}
