//! Rate-limited warnings: at most one line per interval per call site, and
//! the next line that gets through says how many were suppressed meanwhile.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use parking_lot::Mutex;

pub struct RateLimited {
    /// Log target: the module that owns this call site.
    target: &'static str,
    interval: Duration,
    last: Mutex<Option<Instant>>,
    suppressed: AtomicU64,
}

impl RateLimited {
    /// `target` is the log target, normally `module_path!()`.
    pub const fn new(target: &'static str, interval: Duration) -> RateLimited {
        RateLimited {
            target,
            interval,
            last: Mutex::new(None),
            suppressed: AtomicU64::new(0),
        }
    }

    /// `Some(suppressed since the last line)` when a line may be logged now.
    pub fn allow(&self) -> Option<u64> {
        let now = Instant::now();
        let mut last = self.last.lock();
        match *last {
            Some(t) if now.duration_since(t) < self.interval => {
                self.suppressed.fetch_add(1, Ordering::Relaxed);
                None
            }
            _ => {
                *last = Some(now);
                Some(self.suppressed.swap(0, Ordering::Relaxed))
            }
        }
    }

    /// Log `msg` at warn level unless rate-limited.
    pub fn warn(&self, msg: std::fmt::Arguments<'_>) {
        self.log(log::Level::Warn, msg);
    }

    /// Log `msg` at info level unless rate-limited.
    pub fn info(&self, msg: std::fmt::Arguments<'_>) {
        self.log(log::Level::Info, msg);
    }

    /// Log `msg` at error level unless rate-limited.
    pub fn error(&self, msg: std::fmt::Arguments<'_>) {
        self.log(log::Level::Error, msg);
    }

    fn log(&self, level: log::Level, msg: std::fmt::Arguments<'_>) {
        if let Some(n) = self.allow() {
            if n > 0 {
                log::log!(target: self.target, level, "{msg} ({n} similar messages suppressed)");
            } else {
                log::log!(target: self.target, level, "{msg}");
            }
        }
    }
}

/// `log::warn!` at most once a second from this call site, with a count of
/// the lines held back (for warnings that may fire per slice or per peer).
#[macro_export]
macro_rules! warn_limited {
    ($($arg:tt)*) => {{
        static LIMIT: $crate::serving::ratelog::RateLimited = $crate::serving::ratelog::RateLimited::new(
            module_path!(),
            std::time::Duration::from_secs(1),
        );
        LIMIT.warn(format_args!($($arg)*));
    }};
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_line_per_interval_then_the_suppressed_count() {
        let r = RateLimited::new(module_path!(), Duration::from_millis(50));
        assert_eq!(r.allow(), Some(0));
        assert_eq!(r.allow(), None);
        assert_eq!(r.allow(), None);
        std::thread::sleep(Duration::from_millis(60));
        assert_eq!(r.allow(), Some(2));
        assert_eq!(r.allow(), None);
    }
}
