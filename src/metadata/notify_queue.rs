//! Received notifications until the application drains them
//! (`getNotifies`). Bounded: past `MC_NOTIFY_QUEUE_MAX` messages or
//! `MC_NOTIFY_QUEUE_MAX_MB` bytes, new ones are refused (the sender's notify
//! fails, so nothing is lost silently) and counted.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use crate::config::env_u64;
use crate::serving::RateLimited;

#[derive(Clone, Copy, Debug)]
pub struct NotifyLimits {
    pub max_count: usize,
    pub max_bytes: usize,
}

impl NotifyLimits {
    pub fn from_env() -> NotifyLimits {
        NotifyLimits {
            max_count: env_u64("MC_NOTIFY_QUEUE_MAX", 65536, 1, 1 << 24) as usize,
            max_bytes: (env_u64("MC_NOTIFY_QUEUE_MAX_MB", 16, 1, 1 << 16) as usize) << 20,
        }
    }
}

#[derive(Default)]
struct Inner {
    queue: VecDeque<(String, String)>,
    bytes: usize,
}

pub struct NotifyQueue {
    limits: NotifyLimits,
    inner: Mutex<Inner>,
    refused: AtomicU64,
    /// Notifications queued since start.
    received: AtomicU64,
    log: RateLimited,
}

impl NotifyQueue {
    pub fn new(limits: NotifyLimits) -> NotifyQueue {
        NotifyQueue {
            limits,
            inner: Mutex::new(Inner::default()),
            refused: AtomicU64::new(0),
            received: AtomicU64::new(0),
            log: RateLimited::new(module_path!(), Duration::from_secs(5)),
        }
    }

    /// Queue one notification, or say why it was refused.
    pub fn push(&self, name: String, msg: String) -> Result<(), String> {
        let size = name.len() + msg.len();
        let mut g = self.inner.lock();
        if g.queue.len() >= self.limits.max_count || g.bytes + size > self.limits.max_bytes {
            let (n, b) = (g.queue.len(), g.bytes);
            drop(g);
            let total = self.refused.fetch_add(1, Ordering::Relaxed) + 1;
            self.log.warn(format_args!(
                "notification from '{name}' ({size} bytes) refused: {n} messages / {b} bytes queued (MC_NOTIFY_QUEUE_MAX={}, MC_NOTIFY_QUEUE_MAX_MB={}); {total} refused so far",
                self.limits.max_count,
                self.limits.max_bytes >> 20
            ));
            return Err("notification queue full".into());
        }
        g.bytes += size;
        g.queue.push_back((name, msg));
        self.received.fetch_add(1, Ordering::Relaxed);
        Ok(())
    }

    /// Everything queued, in arrival order.
    pub fn take_all(&self) -> Vec<(String, String)> {
        let mut g = self.inner.lock();
        g.bytes = 0;
        std::mem::take(&mut g.queue).into()
    }

    /// Notifications queued since start.
    pub fn received(&self) -> u64 {
        self.received.load(Ordering::Relaxed)
    }

    /// Notifications waiting for `getNotifies` now.
    pub fn depth(&self) -> usize {
        self.inner.lock().queue.len()
    }

    /// Notifications refused since start.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_past_count_or_bytes_and_recovers_after_drain() {
        let q = NotifyQueue::new(NotifyLimits {
            max_count: 2,
            max_bytes: 10,
        });
        q.push("a".into(), "1234".into()).unwrap();
        assert!(q.push("b".into(), "123456".into()).is_err(), "bytes");
        q.push("c".into(), "1".into()).unwrap();
        assert!(q.push("d".into(), "".into()).is_err(), "count");
        assert_eq!(q.refused(), 2);
        let got = q.take_all();
        assert_eq!(
            got,
            vec![("a".into(), "1234".into()), ("c".into(), "1".into())]
        );
        q.push("e".into(), "123456789".into()).unwrap();
    }
}
