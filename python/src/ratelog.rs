//! Rate-limited error logging: a caller that retries a failing transfer in a
//! tight loop gets at most `PER_SECOND` lines a second, plus a count of what
//! was left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

const PER_SECOND: u64 = 20;

static WINDOW: AtomicU64 = AtomicU64::new(0);
static COUNT: AtomicU64 = AtomicU64::new(0);
static DROPPED: AtomicU64 = AtomicU64::new(0);

/// Log `msg` at error level unless this second's budget is spent.
pub fn error(msg: std::fmt::Arguments<'_>) {
    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    if WINDOW.swap(now, Ordering::AcqRel) != now {
        COUNT.store(0, Ordering::Release);
        let dropped = DROPPED.swap(0, Ordering::AcqRel);
        if dropped > 0 {
            log::error!("mooncake.engine: {dropped} similar errors not logged in the last second");
        }
    }
    if COUNT.fetch_add(1, Ordering::AcqRel) < PER_SECOND {
        log::error!("mooncake.engine: {msg}");
    } else {
        DROPPED.fetch_add(1, Ordering::AcqRel);
    }
}

macro_rules! log_error {
    ($($arg:tt)*) => { $crate::ratelog::error(format_args!($($arg)*)) };
}
pub(crate) use log_error;
