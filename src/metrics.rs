//! `MC_TE_METRIC=1`: upstream's per-interval report (transfer_engine_impl.cpp
//! metrics thread). Every `MC_TE_METRIC_INTERVAL_SECONDS` (default 5) one
//! INFO line with the bytes of the tasks first seen COMPLETED by
//! `getTransferStatus` in the interval (MB/s, 1 MB = 2^20 B as upstream) and
//! their submit-to-seen latency histogram over upstream's buckets; nothing
//! when the interval was idle.
//!
//! The Prometheus side lives in the submodules: `tasks` (task, slice, byte
//! counters and latency histograms, fed by `Task`), `peers` (capped
//! per-peer series), `histogram`, `exposition` (text format) and `http`
//! (the `MC_TE_METRIC_HTTP_PORT` endpoint).

pub mod exposition;
pub mod histogram;
pub mod http;
pub mod peers;
pub mod tasks;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use parking_lot::{Condvar, Mutex};

use crate::threads::ThreadCount;

/// Upper bounds (µs) of upstream's latency buckets; one more for overflow.
pub const BUCKETS_US: [u64; 19] = [
    10, 20, 50, 100, 200, 500, 1000, 2000, 5000, 10000, 20000, 50000, 100000, 200000, 500000,
    1000000, 2000000, 5000000, 10000000,
];

#[derive(Default)]
pub struct Counters {
    bytes: AtomicU64,
    buckets: [AtomicU64; BUCKETS_US.len() + 1],
}

impl Counters {
    /// One task seen COMPLETED for the first time.
    pub fn record(&self, bytes: u64, latency: Duration) {
        if bytes > 0 {
            self.bytes.fetch_add(bytes, Ordering::Relaxed);
        }
        let us = latency.as_micros() as u64;
        // Upstream's histogram: a value goes to the first bucket whose bound
        // is >= it.
        let i = BUCKETS_US
            .iter()
            .position(|&b| us <= b)
            .unwrap_or(BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Ordering::Relaxed);
    }

    /// Take the interval's numbers and start a new interval.
    fn take(&self) -> (u64, Vec<u64>) {
        let bytes = self.bytes.swap(0, Ordering::Relaxed);
        let counts = self
            .buckets
            .iter()
            .map(|b| b.swap(0, Ordering::Relaxed))
            .collect();
        (bytes, counts)
    }
}

/// Upstream's line, or `None` for an idle interval.
pub fn report_line(interval_secs: u64, bytes: u64, counts: &[u64]) -> Option<String> {
    let total: u64 = counts.iter().sum();
    if bytes == 0 && total == 0 {
        return None;
    }
    let mut line = format!("[Metrics] Transfer Engine Stats (over last {interval_secs}s):");
    if bytes > 0 {
        let mbps = bytes as f64 / (interval_secs as f64 * 1024.0 * 1024.0);
        line.push_str(&format!(" Throughput: {mbps:.2} MB/s"));
    }
    if total == 0 {
        return Some(line);
    }
    line.push_str(&format!(" | Latency Distribution (count={total}): "));
    let mut first = true;
    for (i, &count) in counts.iter().enumerate() {
        let pct = count as f64 * 100.0 / total as f64;
        if count == 0 || pct < 0.1 {
            continue;
        }
        if !first {
            line.push_str(", ");
        }
        first = false;
        if i >= BUCKETS_US.len() {
            line.push_str(&format!(">{}μs", BUCKETS_US[BUCKETS_US.len() - 1]));
        } else {
            let lower = if i == 0 { 0 } else { BUCKETS_US[i - 1] };
            line.push_str(&format!("{lower}-{}μs", BUCKETS_US[i]));
        }
        line.push_str(&format!(":{pct:.1}%"));
    }
    Some(line)
}

/// The reporting thread of one engine.
pub struct Reporter {
    pub counters: Arc<Counters>,
    stop: Arc<(Mutex<bool>, Condvar)>,
    thread: Mutex<Option<JoinHandle<()>>>,
    threads: ThreadCount,
}

impl Reporter {
    /// A running reporter if `MC_TE_METRIC` is 1/true/yes/on (any case).
    /// Its thread is counted in `threads` (the engine's).
    pub fn from_env(threads: &ThreadCount) -> Option<Reporter> {
        if !crate::config::env_flag("MC_TE_METRIC") {
            log::info!("Metrics reporting is disabled (set MC_TE_METRIC=1 to enable)");
            return None;
        }
        let interval = match crate::config::env_str("MC_TE_METRIC_INTERVAL_SECONDS") {
            None => 5,
            Some(v) => match v.trim().parse::<i64>() {
                Ok(n) if n > 0 => {
                    log::info!("Metrics reporting interval set to {n} seconds");
                    n as u64
                }
                _ => {
                    log::warn!(
                        "Invalid MC_TE_METRIC_INTERVAL_SECONDS value: {v}, must be positive. Using default: 5"
                    );
                    5
                }
            },
        };
        Some(Self::start(interval, threads.child()))
    }

    pub fn start(interval_secs: u64, threads: ThreadCount) -> Reporter {
        let counters = Arc::new(Counters::default());
        let stop = Arc::new((Mutex::new(false), Condvar::new()));
        let (c, s) = (counters.clone(), stop.clone());
        let thread = threads
            .spawn("te-metrics", move || {
                log::info!("Metrics reporting thread started (interval: {interval_secs}s)");
                loop {
                    {
                        let mut stopped = s.0.lock();
                        if !*stopped {
                            s.1.wait_for(&mut stopped, Duration::from_secs(interval_secs));
                        }
                        if *stopped {
                            break;
                        }
                    }
                    let (bytes, counts) = c.take();
                    if let Some(line) = report_line(interval_secs, bytes, &counts) {
                        log::info!("{line}");
                    }
                }
                log::info!("Metrics reporting thread stopped");
            })
            .map_err(|e| log::warn!("MC_TE_METRIC: cannot start the reporting thread: {e}"))
            .ok();
        Reporter {
            counters,
            stop,
            thread: Mutex::new(thread),
            threads,
        }
    }

    /// 1 while the reporting thread runs.
    pub fn threads(&self) -> usize {
        self.threads.running()
    }

    /// Stop and join the thread. Idempotent.
    pub fn stop(&self) {
        *self.stop.0.lock() = true;
        self.stop.1.notify_all();
        if let Some(t) = self.thread.lock().take() {
            if t.thread().id() != std::thread::current().id() {
                let _ = t.join();
            }
        }
    }
}

impl Drop for Reporter {
    fn drop(&mut self) {
        self.stop();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn upstream_line_format() {
        let c = Counters::default();
        assert_eq!(report_line(5, 0, &c.take().1), None);
        for us in [5u64, 10, 15, 15, 20_000_000] {
            c.record(1 << 20, Duration::from_micros(us));
        }
        let (bytes, counts) = c.take();
        assert_eq!(
            report_line(5, bytes, &counts).unwrap(),
            "[Metrics] Transfer Engine Stats (over last 5s): Throughput: 1.00 MB/s | \
             Latency Distribution (count=5): 0-10μs:40.0%, 10-20μs:40.0%, >10000000μs:20.0%"
        );
        // The interval restarts.
        assert_eq!(c.take().0, 0);
        assert_eq!(
            report_line(2, 3 << 20, &[0; 20]).unwrap(),
            "[Metrics] Transfer Engine Stats (over last 2s): Throughput: 1.50 MB/s"
        );
        // Buckets under 0.1% are left out.
        let mut counts = vec![0u64; 20];
        counts[3] = 2000;
        counts[4] = 1;
        let line = report_line(1, 0, &counts).unwrap();
        assert!(line.ends_with("(count=2001): 50-100μs:100.0%"), "{line}");
    }

    #[test]
    fn reporter_stops_promptly() {
        let r = Reporter::start(3600, ThreadCount::default());
        let t = std::time::Instant::now();
        r.stop();
        assert!(t.elapsed() < Duration::from_secs(5));
    }
}
