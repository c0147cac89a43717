//! Peer rail health (spec §6.6) as the workers use it: a rail (peer NIC
//! path) with 5 errors within 5 s, or one immediate error, is paused for
//! `MC_RDMA_RAIL_PAUSE_SECONDS`.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

const ERROR_THRESHOLD: u32 = 5;
const ERROR_WINDOW: Duration = Duration::from_secs(5);

#[derive(Clone, Copy, Debug)]
struct Rail {
    errors: u32,
    last_error: Instant,
    paused_until: Option<Instant>,
}

pub struct RailBook {
    pause: Mutex<Duration>,
    rails: Mutex<HashMap<String, Rail>>,
}

impl RailBook {
    pub fn new(pause: Duration) -> RailBook {
        RailBook {
            pause: Mutex::new(pause),
            rails: Mutex::new(HashMap::new()),
        }
    }

    pub fn set_pause(&self, pause: Duration) {
        *self.pause.lock() = pause;
    }

    /// Record an error on `path`; `immediate` pauses it at once.
    pub fn failed(&self, path: &str, immediate: bool) {
        let now = Instant::now();
        let pause = *self.pause.lock();
        let mut rails = self.rails.lock();
        let r = rails.entry(path.to_string()).or_insert(Rail {
            errors: 0,
            last_error: now,
            paused_until: None,
        });
        if now.duration_since(r.last_error) > ERROR_WINDOW {
            r.errors = 0;
        }
        r.last_error = now;
        r.errors += 1;
        if immediate {
            r.errors = r.errors.max(ERROR_THRESHOLD);
        }
        if r.errors >= ERROR_THRESHOLD && r.paused_until.is_none() {
            log::warn!("rail {path} paused for {pause:?} after {} errors", r.errors);
            r.paused_until = Some(now + pause);
        }
    }

    /// Unknown or recovered rails are usable.
    pub fn usable(&self, path: &str) -> bool {
        let mut rails = self.rails.lock();
        match rails.get(path).and_then(|r| r.paused_until) {
            None => true,
            Some(t) if Instant::now() >= t => {
                rails.remove(path);
                true
            }
            Some(_) => false,
        }
    }

    /// Rails currently paused.
    pub fn paused(&self) -> Vec<String> {
        let now = Instant::now();
        let mut v: Vec<String> = self
            .rails
            .lock()
            .iter()
            .filter(|(_, r)| r.paused_until.is_some_and(|t| t > now))
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pause_rules() {
        let b = RailBook::new(Duration::from_secs(30));
        assert!(b.usable("a@x"));
        for _ in 0..4 {
            b.failed("a@x", false);
        }
        assert!(b.usable("a@x"), "4 errors do not pause");
        b.failed("a@x", false);
        assert!(!b.usable("a@x"));
        b.failed("b@y", true);
        assert!(!b.usable("b@y"));
        assert!(b.usable("c@z"));
        assert_eq!(b.paused(), vec!["a@x".to_string(), "b@y".to_string()]);
    }

    #[test]
    fn pause_expires() {
        let b = RailBook::new(Duration::from_millis(10));
        b.failed("a@x", true);
        assert!(!b.usable("a@x"));
        std::thread::sleep(Duration::from_millis(20));
        assert!(b.usable("a@x"));
    }
}
