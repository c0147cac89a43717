//! Per-peer-NIC-path rail health (spec §6.6). `RailState` is pure (`now` is
//! passed in); `RailBook` is the locked view the transport's threads share.
//! A rail that keeps failing is paused so slices are routed to other peer
//! NICs; the pause ends by itself.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use parking_lot::Mutex;

/// Errors needed to pause a rail.
pub const RAIL_ERROR_THRESHOLD: u32 = 5;
/// Errors further apart than this do not accumulate.
pub const RAIL_ERROR_WINDOW: Duration = Duration::from_secs(5);
/// Default `MC_RDMA_RAIL_PAUSE_SECONDS`.
pub const DEFAULT_RAIL_PAUSE: Duration = Duration::from_secs(30);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct RailHealth {
    error_count: u32,
    pause_until: Option<Instant>,
    last_error: Instant,
}

/// Health of the rails (peer NIC paths) one local context sends to.
#[derive(Debug, Clone)]
pub struct RailState {
    pause: Duration,
    rails: HashMap<String, RailHealth>,
}

impl RailState {
    /// `pause`: how long a failing rail stays paused
    /// (`MC_RDMA_RAIL_PAUSE_SECONDS`, read by the caller).
    pub fn new(pause: Duration) -> Self {
        RailState {
            pause,
            rails: HashMap::new(),
        }
    }

    /// Count an error on `path`; `immediate` pauses it at once. True when
    /// this paused a rail that was not paused.
    pub fn mark_failed(&mut self, path: &str, immediate: bool, now: Instant) -> bool {
        let rail = self.rails.entry(path.to_string()).or_insert(RailHealth {
            error_count: 0,
            pause_until: None,
            last_error: now,
        });
        if now.saturating_duration_since(rail.last_error) > RAIL_ERROR_WINDOW {
            rail.error_count = 0;
        }
        rail.error_count = rail.error_count.saturating_add(1);
        if immediate {
            rail.error_count = rail.error_count.max(RAIL_ERROR_THRESHOLD);
        }
        rail.last_error = now;
        let mut newly = false;
        if rail.error_count >= RAIL_ERROR_THRESHOLD {
            if rail.pause_until.is_none_or(|t| t <= now) {
                newly = true;
                log::warn!(
                    "rail {path} paused for {:?} after {} errors",
                    self.pause,
                    rail.error_count
                );
            }
            rail.pause_until = Some(now + self.pause);
        }
        newly
    }

    /// Unknown rails are available; an expired pause resets the rail.
    pub fn is_available(&mut self, path: &str, now: Instant) -> bool {
        let Some(rail) = self.rails.get(path) else {
            return true;
        };
        match rail.pause_until {
            Some(until) if now < until => false,
            Some(_) => {
                self.rails.remove(path);
                log::info!("rail {path}: pause over, in use again");
                true
            }
            None => true,
        }
    }

    /// The rail works again: forget its errors.
    pub fn mark_ok(&mut self, path: &str) {
        self.rails.remove(path);
    }

    /// Errors currently counted for `path`.
    pub fn error_count(&self, path: &str) -> u32 {
        self.rails.get(path).map_or(0, |r| r.error_count)
    }

    /// Rails paused at `now`, sorted (for `showLinks`).
    pub fn paused(&self, now: Instant) -> Vec<String> {
        let mut v: Vec<String> = self
            .rails
            .iter()
            .filter(|(_, r)| r.pause_until.is_some_and(|t| t > now))
            .map(|(p, _)| p.clone())
            .collect();
        v.sort();
        v
    }
}

impl Default for RailState {
    fn default() -> Self {
        RailState::new(DEFAULT_RAIL_PAUSE)
    }
}

/// `RailState` shared by a transport's threads, on the wall clock.
pub struct RailBook {
    state: Mutex<RailState>,
    /// Times a rail was paused (metrics).
    pauses: std::sync::atomic::AtomicU64,
}

impl RailBook {
    pub fn new(pause: Duration) -> RailBook {
        RailBook {
            state: Mutex::new(RailState::new(pause)),
            pauses: Default::default(),
        }
    }

    /// Record an error on `path`; `immediate` pauses it at once.
    pub fn failed(&self, path: &str, immediate: bool) {
        let paused = self
            .state
            .lock()
            .mark_failed(path, immediate, Instant::now());
        if paused {
            self.pauses
                .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
    }

    /// Times a rail was paused since start.
    pub fn pauses(&self) -> u64 {
        self.pauses.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Unknown or recovered rails are usable.
    pub fn usable(&self, path: &str) -> bool {
        self.state.lock().is_available(path, Instant::now())
    }

    /// Rails currently paused, sorted.
    pub fn paused(&self) -> Vec<String> {
        self.state.lock().paused(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const A: &str = "10.0.0.2:15000@mlx5_0";
    const B: &str = "10.0.0.2:15000@mlx5_1";

    fn secs(n: u64) -> Duration {
        Duration::from_secs(n)
    }

    #[test]
    fn unknown_rail_is_available() {
        let mut r = RailState::default();
        assert!(r.is_available(A, Instant::now()));
    }

    #[test]
    fn four_errors_do_not_pause() {
        let t0 = Instant::now();
        let mut r = RailState::default();
        for _ in 0..4 {
            r.mark_failed(A, false, t0);
        }
        assert!(r.is_available(A, t0));
        assert_eq!(r.error_count(A), 4);
    }

    #[test]
    fn five_errors_pause_for_the_pause_duration() {
        let t0 = Instant::now();
        let mut r = RailState::new(secs(30));
        for i in 0..5 {
            r.mark_failed(A, false, t0 + Duration::from_millis(i * 100));
        }
        let last = t0 + Duration::from_millis(400);
        assert!(!r.is_available(A, last));
        assert!(!r.is_available(A, last + secs(29)));
        // Expired: available again and the count starts over.
        assert!(r.is_available(A, last + secs(30)));
        assert_eq!(r.error_count(A), 0);
        r.mark_failed(A, false, last + secs(31));
        assert!(r.is_available(A, last + secs(31)));
    }

    #[test]
    fn one_immediate_error_pauses() {
        let t0 = Instant::now();
        let mut r = RailState::new(secs(30));
        r.mark_failed(A, true, t0);
        assert!(!r.is_available(A, t0 + secs(1)));
        assert_eq!(r.error_count(A), RAIL_ERROR_THRESHOLD);
    }

    #[test]
    fn errors_spaced_beyond_the_window_never_accumulate() {
        let t0 = Instant::now();
        let mut r = RailState::default();
        for i in 0..20 {
            r.mark_failed(A, false, t0 + secs(6 * i));
            assert_eq!(r.error_count(A), 1);
        }
        assert!(r.is_available(A, t0 + secs(6 * 20)));
    }

    #[test]
    fn errors_within_the_window_accumulate() {
        let t0 = Instant::now();
        let mut r = RailState::default();
        // Each error within 5 s of the previous one, 20 s overall.
        for i in 0..5 {
            r.mark_failed(A, false, t0 + secs(4 * i));
        }
        assert!(!r.is_available(A, t0 + secs(16)));
    }

    #[test]
    fn pausing_one_peer_leaves_another_available() {
        let t0 = Instant::now();
        let mut r = RailState::default();
        r.mark_failed(A, true, t0);
        assert!(!r.is_available(A, t0));
        assert!(r.is_available(B, t0));
    }

    #[test]
    fn mark_ok_resumes_a_paused_rail() {
        let t0 = Instant::now();
        let mut r = RailState::default();
        r.mark_failed(A, true, t0);
        r.mark_ok(A);
        assert!(r.is_available(A, t0));
        assert_eq!(r.error_count(A), 0);
    }

    #[test]
    fn paused_lists_only_paused_rails_sorted() {
        let t0 = Instant::now();
        let mut r = RailState::new(secs(30));
        r.mark_failed(B, true, t0);
        r.mark_failed(A, true, t0);
        r.mark_failed("c@z", false, t0);
        assert_eq!(r.paused(t0), vec![A.to_string(), B.to_string()]);
        assert!(r.paused(t0 + secs(30)).is_empty());
    }

    #[test]
    fn rail_book_pause_rules() {
        let b = RailBook::new(secs(30));
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
}
