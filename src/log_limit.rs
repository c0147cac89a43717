//! Rate-limited warnings: a call site that may fire once per slice or per
//! connection logs at most once per interval and says how many it held back.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::Instant;

fn now_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

/// One per call site (the macros below make it a `static`).
pub struct LogLimiter {
    interval_ms: u64,
    /// `now_ms` of the last line logged; 0 before the first.
    last: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub const fn new(interval_ms: u64) -> Self {
        LogLimiter {
            interval_ms,
            last: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(lines held back since the last one)` when this line may be
    /// logged, `None` when it is to be held back.
    pub fn allow(&self) -> Option<u64> {
        let now = now_ms();
        let last = self.last.load(Ordering::Relaxed);
        if last != 0 && now.saturating_sub(last) < self.interval_ms {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        if self
            .last
            .compare_exchange(last, now, Ordering::AcqRel, Ordering::Relaxed)
            .is_err()
        {
            self.suppressed.fetch_add(1, Ordering::Relaxed);
            return None;
        }
        Some(self.suppressed.swap(0, Ordering::AcqRel))
    }
}

/// `log::warn!` at most once a second from this call site, with a count of
/// the lines held back.
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::log_limit::LogLimiter = $crate::log_limit::LogLimiter::new(1000);
        if let Some(held) = LIMIT.allow() {
            if held > 0 {
                log::warn!("{} ({held} similar lines suppressed)", format_args!($($arg)*));
            } else {
                log::warn!($($arg)*);
            }
        }
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn holds_back_within_the_interval_and_counts() {
        let l = LogLimiter::new(60_000);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), None);
        assert_eq!(l.allow(), None);
        assert_eq!(l.suppressed.load(Ordering::Relaxed), 2);
        let l = LogLimiter::new(0);
        assert_eq!(l.allow(), Some(0));
        assert_eq!(l.allow(), Some(0));
    }
}
