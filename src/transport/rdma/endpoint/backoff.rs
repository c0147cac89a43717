//! Per-peer re-handshake backoff (beyond upstream; Mooncake issue #3299:
//! a flapping peer must not be hammered with handshakes). Pure: `now` is
//! always passed in. Owned by the driver per peer NIC path, so it outlives
//! the one-shot endpoints.

use std::collections::VecDeque;
use std::time::{Duration, Instant};

/// Backoff tuning.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct BackoffConfig {
    /// Delay after the first failure.
    pub initial: Duration,
    /// Largest delay between attempts.
    pub max: Duration,
    /// At most `max_attempts` handshakes start within any `window`.
    pub max_attempts: usize,
    pub window: Duration,
    /// A connection that stays up this long forgets earlier failures.
    pub stable_after: Duration,
}

impl Default for BackoffConfig {
    fn default() -> Self {
        BackoffConfig {
            initial: Duration::from_millis(50),
            max: Duration::from_secs(5),
            max_attempts: 20,
            window: Duration::from_secs(60),
            stable_after: Duration::from_secs(10),
        }
    }
}

/// May a handshake start now?
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BackoffDecision {
    /// Go ahead (then call `on_attempt`).
    Attempt,
    /// Backing off after failures until this instant.
    WaitUntil(Instant),
    /// Too many attempts in the window; allowed again at this instant.
    CappedUntil(Instant),
}

/// Re-handshake pacing for one peer.
#[derive(Debug, Clone)]
pub struct HandshakeBackoff {
    cfg: BackoffConfig,
    failures: u32,
    not_before: Option<Instant>,
    attempts: VecDeque<Instant>,
    up_since: Option<Instant>,
}

impl HandshakeBackoff {
    pub fn new(cfg: BackoffConfig) -> Self {
        HandshakeBackoff {
            cfg,
            failures: 0,
            not_before: None,
            attempts: VecDeque::new(),
            up_since: None,
        }
    }

    /// Consecutive failures counted so far.
    pub fn failures(&self) -> u32 {
        self.failures
    }

    /// Delay imposed after `failures` consecutive failures:
    /// `initial * 2^(failures-1)`, capped at `max`.
    pub fn delay_for(&self, failures: u32) -> Duration {
        if failures == 0 {
            return Duration::ZERO;
        }
        let shift = (failures - 1).min(31);
        self.cfg
            .initial
            .checked_mul(1u32 << shift)
            .map_or(self.cfg.max, |d| d.min(self.cfg.max))
    }

    pub fn check(&mut self, now: Instant) -> BackoffDecision {
        self.forget_if_stable(now);
        if let Some(t) = self.not_before {
            if now < t {
                return BackoffDecision::WaitUntil(t);
            }
        }
        self.expire_attempts(now);
        if self.cfg.max_attempts > 0 && self.attempts.len() >= self.cfg.max_attempts {
            if let Some(&oldest) = self.attempts.front() {
                return BackoffDecision::CappedUntil(oldest + self.cfg.window);
            }
        }
        BackoffDecision::Attempt
    }

    /// A handshake starts now.
    pub fn on_attempt(&mut self, now: Instant) {
        self.expire_attempts(now);
        self.attempts.push_back(now);
    }

    /// The handshake failed, or a connection died and needs a re-handshake.
    pub fn on_failure(&mut self, now: Instant) {
        self.forget_if_stable(now);
        self.up_since = None;
        self.failures = self.failures.saturating_add(1);
        self.not_before = Some(now + self.delay_for(self.failures));
    }

    /// The endpoint reached `Connected`.
    pub fn on_connected(&mut self, now: Instant) {
        self.up_since = Some(now);
    }

    fn forget_if_stable(&mut self, now: Instant) {
        if let Some(up) = self.up_since {
            if now.saturating_duration_since(up) >= self.cfg.stable_after {
                self.failures = 0;
                self.not_before = None;
                self.attempts.clear();
                self.up_since = None;
            }
        }
    }

    fn expire_attempts(&mut self, now: Instant) {
        while let Some(&t) = self.attempts.front() {
            if now.saturating_duration_since(t) >= self.cfg.window {
                self.attempts.pop_front();
            } else {
                break;
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn first_attempt_is_immediate() {
        let t0 = Instant::now();
        let mut b = HandshakeBackoff::new(BackoffConfig::default());
        assert_eq!(b.check(t0), BackoffDecision::Attempt);
    }

    #[test]
    fn delay_doubles_from_50ms_to_5s() {
        let b = HandshakeBackoff::new(BackoffConfig::default());
        let got: Vec<_> = (1..=9).map(|f| b.delay_for(f)).collect();
        assert_eq!(
            got,
            vec![
                ms(50),
                ms(100),
                ms(200),
                ms(400),
                ms(800),
                ms(1600),
                ms(3200),
                ms(5000),
                ms(5000)
            ]
        );
        assert_eq!(b.delay_for(1000), ms(5000));
    }

    #[test]
    fn failures_space_attempts() {
        let t0 = Instant::now();
        let mut b = HandshakeBackoff::new(BackoffConfig::default());
        b.on_attempt(t0);
        b.on_failure(t0);
        assert_eq!(
            b.check(t0 + ms(49)),
            BackoffDecision::WaitUntil(t0 + ms(50))
        );
        assert_eq!(b.check(t0 + ms(50)), BackoffDecision::Attempt);
        let t1 = t0 + ms(50);
        b.on_attempt(t1);
        b.on_failure(t1);
        assert_eq!(
            b.check(t1 + ms(99)),
            BackoffDecision::WaitUntil(t1 + ms(100))
        );
        assert_eq!(b.check(t1 + ms(100)), BackoffDecision::Attempt);
        assert_eq!(b.failures(), 2);
    }

    #[test]
    fn attempts_are_capped_per_window() {
        let t0 = Instant::now();
        let cfg = BackoffConfig {
            initial: ms(1),
            max: ms(1),
            max_attempts: 3,
            window: Duration::from_secs(10),
            stable_after: Duration::from_secs(10),
        };
        let mut b = HandshakeBackoff::new(cfg);
        let mut t = t0;
        for _ in 0..3 {
            assert_eq!(b.check(t), BackoffDecision::Attempt);
            b.on_attempt(t);
            b.on_failure(t);
            t += ms(10);
        }
        assert_eq!(
            b.check(t),
            BackoffDecision::CappedUntil(t0 + Duration::from_secs(10))
        );
        // The oldest attempt leaves the window.
        assert_eq!(
            b.check(t0 + Duration::from_secs(10)),
            BackoffDecision::Attempt
        );
    }

    #[test]
    fn stable_connection_resets_backoff() {
        let t0 = Instant::now();
        let mut b = HandshakeBackoff::new(BackoffConfig::default());
        for i in 0..5 {
            b.on_attempt(t0 + ms(i));
            b.on_failure(t0 + ms(i));
        }
        assert_eq!(b.failures(), 5);
        let up = t0 + Duration::from_secs(1);
        b.on_connected(up);
        // Dies after 10 s of uptime: counts as the first failure again.
        b.on_failure(up + Duration::from_secs(10));
        assert_eq!(b.failures(), 1);
        assert_eq!(
            b.check(up + Duration::from_secs(10)),
            BackoffDecision::WaitUntil(up + Duration::from_secs(10) + ms(50))
        );
    }

    #[test]
    fn short_lived_connection_keeps_growing_backoff() {
        let t0 = Instant::now();
        let mut b = HandshakeBackoff::new(BackoffConfig::default());
        b.on_failure(t0);
        b.on_failure(t0);
        b.on_connected(t0 + ms(200));
        b.on_failure(t0 + ms(300));
        assert_eq!(b.failures(), 3);
        assert_eq!(
            b.check(t0 + ms(300)),
            BackoffDecision::WaitUntil(t0 + ms(500))
        );
    }
}
