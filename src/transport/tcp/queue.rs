//! One request on its way to a peer, and the per-peer FIFO the lanes pull
//! from.

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::task::Task;

/// One request = one slice of its task.
pub struct Job {
    pub task: Arc<Task>,
    pub write: bool,
    /// Local (source) address.
    pub local: u64,
    /// Absolute address in the peer's memory.
    pub remote: u64,
    pub len: u64,
}

impl Job {
    pub fn succeed(self) {
        self.task.slice_succeeded(self.len);
    }

    pub fn fail(self) {
        self.task.slice_failed();
    }
}

/// What `next_batch` hands a lane.
pub enum Batch {
    Jobs(Vec<Job>),
    Idle,
    Stop,
}

pub enum Next {
    Job(Job),
    /// Nothing arrived within the idle period.
    Idle,
    /// The transport is shutting down.
    Stop,
}

struct Inner {
    jobs: VecDeque<Job>,
    stopped: bool,
}

pub struct JobQueue {
    inner: Mutex<Inner>,
    cv: Condvar,
}

impl Default for JobQueue {
    fn default() -> Self {
        JobQueue {
            inner: Mutex::new(Inner {
                jobs: VecDeque::new(),
                stopped: false,
            }),
            cv: Condvar::new(),
        }
    }
}

impl JobQueue {
    /// Enqueue; after `stop` the job fails at once.
    pub fn push(&self, job: Job) {
        self.push_many(vec![job]);
    }

    /// Enqueue several jobs under one lock and one wake-up: the woken lane
    /// wakes the next one if work is left (see `next_batch`).
    pub fn push_many(&self, jobs: Vec<Job>) {
        let mut g = self.inner.lock();
        if g.stopped {
            drop(g);
            jobs.into_iter().for_each(Job::fail);
            return;
        }
        g.jobs.extend(jobs);
        drop(g);
        self.cv.notify_one();
    }

    /// Put jobs that never reached the peer back at the head, in order.
    pub fn requeue_front(&self, jobs: Vec<Job>) {
        let mut g = self.inner.lock();
        if g.stopped {
            drop(g);
            jobs.into_iter().for_each(Job::fail);
            return;
        }
        for j in jobs.into_iter().rev() {
            g.jobs.push_front(j);
        }
        drop(g);
        self.cv.notify_all();
    }

    pub fn next(&self, idle: Duration) -> Next {
        match self.next_batch(1, 0, idle) {
            Batch::Jobs(mut v) => match v.pop() {
                Some(j) => Next::Job(j),
                None => Next::Idle,
            },
            Batch::Idle => Next::Idle,
            Batch::Stop => Next::Stop,
        }
    }

    /// Up to `max_jobs` jobs (at least one), stopping early once they carry
    /// `max_bytes`: many small requests go out in one send, while large
    /// ones still spread over the lanes.
    pub fn next_batch(&self, max_jobs: usize, max_bytes: u64, idle: Duration) -> Batch {
        let mut g = self.inner.lock();
        loop {
            if g.stopped {
                return Batch::Stop;
            }
            if !g.jobs.is_empty() {
                let mut out = Vec::new();
                let mut bytes = 0u64;
                while out.len() < max_jobs.max(1) && (out.is_empty() || bytes < max_bytes) {
                    let Some(j) = g.jobs.pop_front() else { break };
                    bytes += j.len;
                    out.push(j);
                }
                let more = !g.jobs.is_empty();
                drop(g);
                if more {
                    self.cv.notify_one();
                }
                return Batch::Jobs(out);
            }
            if self.cv.wait_for(&mut g, idle).timed_out() && g.jobs.is_empty() {
                return if g.stopped { Batch::Stop } else { Batch::Idle };
            }
        }
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().jobs.is_empty()
    }

    pub fn is_stopped(&self) -> bool {
        self.inner.lock().stopped
    }

    /// Fail everything queued (peer unreachable); returns how many.
    pub fn fail_queued(&self) -> usize {
        let jobs: Vec<Job> = self.inner.lock().jobs.drain(..).collect();
        let n = jobs.len();
        jobs.into_iter().for_each(Job::fail);
        n
    }

    /// Refuse new work, fail what is queued and wake every lane.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        self.fail_queued();
        self.cv.notify_all();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::task::{Opcode, TaskStatus, TransferRequest};

    fn job(len: u64) -> (Job, Arc<Task>) {
        let task = Arc::new(Task::new(TransferRequest {
            opcode: Opcode::Write,
            source: 0,
            target_id: 1,
            target_offset: 0,
            length: len,
        }));
        task.set_slices(1);
        (
            Job {
                task: task.clone(),
                write: true,
                local: 0,
                remote: 0,
                len,
            },
            task,
        )
    }

    #[test]
    fn fifo_requeue_and_stop() {
        let q = JobQueue::default();
        let (a, _) = job(1);
        let (b, _) = job(2);
        let (c, tc) = job(3);
        q.push(a);
        q.push(b);
        let Next::Job(first) = q.next(Duration::from_millis(1)) else {
            panic!("expected a job")
        };
        assert_eq!(first.len, 1);
        q.requeue_front(vec![first]);
        let Next::Job(again) = q.next(Duration::from_millis(1)) else {
            panic!("expected a job")
        };
        assert_eq!(again.len, 1);
        q.push(c);
        q.stop();
        assert_eq!(tc.status(), TaskStatus::Failed);
        assert!(matches!(q.next(Duration::from_millis(1)), Next::Stop));
        let (d, td) = job(4);
        q.push(d);
        assert_eq!(td.status(), TaskStatus::Failed);
    }

    #[test]
    fn batches_stop_at_count_or_bytes() {
        let q = JobQueue::default();
        q.push_many((1..=6).map(|i| job(i * 10).0).collect());
        let Batch::Jobs(a) = q.next_batch(2, 1000, Duration::from_millis(1)) else {
            panic!("expected jobs")
        };
        assert_eq!(a.iter().map(|j| j.len).collect::<Vec<_>>(), [10, 20]);
        // 30 + 40 reach 60 bytes: the batch ends there.
        let Batch::Jobs(b) = q.next_batch(10, 60, Duration::from_millis(1)) else {
            panic!("expected jobs")
        };
        assert_eq!(b.iter().map(|j| j.len).collect::<Vec<_>>(), [30, 40]);
        // A single job larger than the byte budget still goes out.
        let Batch::Jobs(c) = q.next_batch(10, 1, Duration::from_millis(1)) else {
            panic!("expected jobs")
        };
        assert_eq!(c.iter().map(|j| j.len).collect::<Vec<_>>(), [50]);
    }

    #[test]
    fn idle_when_empty() {
        let q = JobQueue::default();
        assert!(matches!(q.next(Duration::from_millis(5)), Next::Idle));
    }
}
