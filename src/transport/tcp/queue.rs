//! One request on its way to a peer, and the per-peer FIFO its connections
//! pull from.

use parking_lot::Mutex;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Instant;

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
    /// Times it was re-sent because the connection it went out on turned
    /// out dead (see `client_conn::Fate::Broken`); bounded per job.
    pub resends: u8,
    /// Pushed after a connection to its peer broke (see
    /// `Peer::owner_replaced`): if the owner turns out replaced, this
    /// request was meant for whoever owns the segment now.
    pub after_break: bool,
}

impl Job {
    pub fn succeed(self) {
        self.task.slice_succeeded(self.len);
    }

    pub fn fail(self) {
        self.task.slice_failed();
    }
}

struct Inner {
    jobs: VecDeque<Job>,
    stopped: bool,
}

/// A peer's FIFO. Connections pull from it when they have room; nobody
/// blocks on it (pushers wake a connection instead, see `Peer::kick`).
pub struct JobQueue {
    inner: Mutex<Inner>,
}

impl Default for JobQueue {
    fn default() -> Self {
        JobQueue {
            inner: Mutex::new(Inner {
                jobs: VecDeque::new(),
                stopped: false,
            }),
        }
    }
}

impl JobQueue {
    /// Enqueue several jobs under one lock; after `stop` they fail at once.
    pub fn push_many(&self, jobs: Vec<Job>) {
        let mut g = self.inner.lock();
        if g.stopped {
            drop(g);
            jobs.into_iter().for_each(Job::fail);
            return;
        }
        g.jobs.extend(jobs);
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
    }

    /// Up to `max_jobs` jobs, stopping early once they carry `max_bytes`
    /// (a first job larger than that still comes): many small requests go
    /// out in one send, while large ones spread over the connections.
    /// Jobs of tasks told to stop (cancelled, past their deadline) fail
    /// here instead: they never go out.
    pub fn take(&self, max_jobs: usize, max_bytes: u64, out: &mut Vec<Job>) {
        let now = Instant::now();
        let mut stopped = Vec::new();
        let mut g = self.inner.lock();
        let mut bytes = 0u64;
        let mut n = 0;
        while n < max_jobs && (n == 0 || bytes < max_bytes) {
            let Some(j) = g.jobs.pop_front() else { break };
            if j.task.should_stop(now) {
                stopped.push(j);
                continue;
            }
            bytes += j.len;
            n += 1;
            out.push(j);
        }
        drop(g);
        stopped.into_iter().for_each(Job::fail);
    }

    /// Fail the queued jobs of tasks told to stop; returns how many.
    pub fn fail_stopped(&self) -> usize {
        let now = Instant::now();
        let stopped: Vec<Job> = {
            let mut g = self.inner.lock();
            let (stop, keep): (VecDeque<Job>, VecDeque<Job>) = std::mem::take(&mut g.jobs)
                .into_iter()
                .partition(|j| j.task.should_stop(now));
            g.jobs = keep;
            stop.into()
        };
        let n = stopped.len();
        stopped.into_iter().for_each(Job::fail);
        n
    }

    pub fn is_empty(&self) -> bool {
        self.inner.lock().jobs.is_empty()
    }

    /// Fail everything queued (peer unreachable); returns how many.
    pub fn fail_queued(&self) -> usize {
        let jobs: Vec<Job> = self.inner.lock().jobs.drain(..).collect();
        let n = jobs.len();
        jobs.into_iter().for_each(Job::fail);
        n
    }

    /// Take every queued job out.
    pub fn take_all(&self) -> Vec<Job> {
        self.inner.lock().jobs.drain(..).collect()
    }

    /// Refuse new work and fail what is queued.
    pub fn stop(&self) {
        self.inner.lock().stopped = true;
        self.fail_queued();
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
                resends: 0,
                after_break: false,
            },
            task,
        )
    }

    fn take(q: &JobQueue, max_jobs: usize, max_bytes: u64) -> Vec<u64> {
        let mut v = Vec::new();
        q.take(max_jobs, max_bytes, &mut v);
        v.iter().map(|j| j.len).collect()
    }

    #[test]
    fn fifo_requeue_and_stop() {
        let q = JobQueue::default();
        let (a, _) = job(1);
        let (b, _) = job(2);
        let (c, tc) = job(3);
        q.push_many(vec![a, b]);
        let mut first = Vec::new();
        q.take(1, 0, &mut first);
        assert_eq!(first[0].len, 1);
        q.requeue_front(first);
        assert_eq!(take(&q, 1, 0), [1]);
        q.push_many(vec![c]);
        q.stop();
        assert_eq!(tc.status(), TaskStatus::Failed);
        assert!(q.is_empty());
        let (d, td) = job(4);
        q.push_many(vec![d]);
        assert_eq!(td.status(), TaskStatus::Failed);
    }

    #[test]
    fn jobs_of_stopped_tasks_never_go_out() {
        use crate::task::StopReason;
        let q = JobQueue::default();
        let (a, ta) = job(1);
        let (b, tb) = job(2);
        let (c, tc) = job(3);
        q.push_many(vec![a, b, c]);
        tb.request_stop(StopReason::Canceled);
        assert_eq!(take(&q, 10, 1000), [1, 3]);
        assert_eq!(tb.status(), TaskStatus::Canceled);
        let (d, td) = job(4);
        q.push_many(vec![d]);
        td.request_stop(StopReason::DeadlinePassed);
        assert_eq!(q.fail_stopped(), 1);
        assert_eq!(td.status(), TaskStatus::Timeout);
        assert!(q.is_empty());
        assert_eq!(ta.status(), TaskStatus::Waiting);
        assert_eq!(tc.status(), TaskStatus::Waiting);
    }

    #[test]
    fn batches_stop_at_count_or_bytes() {
        let q = JobQueue::default();
        q.push_many((1..=6).map(|i| job(i * 10).0).collect());
        assert_eq!(take(&q, 2, 1000), [10, 20]);
        // 30 + 40 reach 60 bytes: the batch ends there.
        assert_eq!(take(&q, 10, 60), [30, 40]);
        // A single job larger than the byte budget still goes out.
        assert_eq!(take(&q, 10, 1), [50]);
        assert_eq!(take(&q, 0, 1000), [] as [u64; 0]);
        assert_eq!(take(&q, 10, 1000), [60]);
        assert_eq!(take(&q, 10, 1000), [] as [u64; 0]);
    }
}
