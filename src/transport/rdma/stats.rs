//! Per-device load counters for `getNicLoadStats` and transport-wide event
//! counters (retries, error completions) for diagnostics and tests.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use parking_lot::Mutex;

/// Weight of the newest sample in the bandwidth EWMA.
const EWMA_ALPHA: f64 = 0.3;
/// Shorter windows are folded into the next sample.
const MIN_SAMPLE_SECS: f64 = 0.01;

struct Ewma {
    last_at: Instant,
    last_completed: u64,
    bps: f64,
}

/// Load of one local device.
pub struct DeviceStats {
    inflight: AtomicU64,
    completed: AtomicU64,
    posted_slices: AtomicU64,
    /// Completions polled from the CQ (one per chain of WRs, or per WR
    /// that failed or flushed).
    completions: AtomicU64,
    ewma: Mutex<Ewma>,
}

impl Default for DeviceStats {
    fn default() -> Self {
        DeviceStats {
            inflight: AtomicU64::new(0),
            completed: AtomicU64::new(0),
            posted_slices: AtomicU64::new(0),
            completions: AtomicU64::new(0),
            ewma: Mutex::new(Ewma {
                last_at: Instant::now(),
                last_completed: 0,
                bps: 0.0,
            }),
        }
    }
}

impl DeviceStats {
    pub fn posted(&self, bytes: u64) {
        self.inflight.fetch_add(bytes, Ordering::Relaxed);
        self.posted_slices.fetch_add(1, Ordering::Relaxed);
    }

    /// `slices` WRs carrying `bytes` in total were posted (one update per batch).
    pub fn posted_many(&self, bytes: u64, slices: u64) {
        if slices == 0 {
            return;
        }
        self.inflight.fetch_add(bytes, Ordering::Relaxed);
        self.posted_slices.fetch_add(slices, Ordering::Relaxed);
    }

    /// `completions` polled finished posted WRs: `bytes` in total, of which
    /// `ok_bytes` moved.
    pub fn finished_many(&self, completions: u64, bytes: u64, ok_bytes: u64) {
        self.completions.fetch_add(completions, Ordering::Relaxed);
        if bytes != 0 {
            self.inflight.fetch_sub(bytes, Ordering::Relaxed);
        }
        if ok_bytes != 0 {
            self.completed.fetch_add(ok_bytes, Ordering::Relaxed);
        }
    }

    /// A posted WR completed (`ok`: its bytes moved).
    pub fn finished(&self, bytes: u64, ok: bool) {
        self.inflight.fetch_sub(bytes, Ordering::Relaxed);
        if ok {
            self.completed.fetch_add(bytes, Ordering::Relaxed);
        }
    }

    pub fn inflight_bytes(&self) -> u64 {
        self.inflight.load(Ordering::Relaxed)
    }

    pub fn completed_bytes(&self) -> u64 {
        self.completed.load(Ordering::Relaxed)
    }

    pub fn posted_slices(&self) -> u64 {
        self.posted_slices.load(Ordering::Relaxed)
    }

    pub fn completions(&self) -> u64 {
        self.completions.load(Ordering::Relaxed)
    }

    /// Fold the bytes completed since the last sample into the EWMA and
    /// return it (bytes/s).
    pub fn bandwidth(&self) -> f64 {
        let mut e = self.ewma.lock();
        let now = Instant::now();
        let dt = now.duration_since(e.last_at).as_secs_f64();
        if dt >= MIN_SAMPLE_SECS {
            let done = self.completed_bytes();
            let rate = (done - e.last_completed) as f64 / dt;
            e.bps = if e.last_completed == 0 && e.bps == 0.0 {
                rate
            } else {
                EWMA_ALPHA * rate + (1.0 - EWMA_ALPHA) * e.bps
            };
            e.last_at = now;
            e.last_completed = done;
        }
        e.bps
    }
}

/// Transport-wide counters.
#[derive(Default)]
pub struct Counters {
    /// Slices that went back to a queue for another attempt (retry consumed).
    pub retries: AtomicU64,
    /// Completions with an error status other than a flush.
    pub error_completions: AtomicU64,
    /// Error completions for requests the peer refused (remote access,
    /// invalid request): failed at once, no rail paused.
    pub request_errors: AtomicU64,
    /// Endpoints retired after no completion for `MC_TE_RS_RDMA_STALL_MS`
    /// with WRs in flight.
    pub stalls: AtomicU64,
    /// Flush completions.
    pub flushed: AtomicU64,
    /// Slices sent again, free of their retry budget, because their QP
    /// died under them.
    pub resent: AtomicU64,
    /// Endpoints retired because a QP of theirs was found in ERR (a flush)
    /// that no error completion and no retirement of ours explained.
    pub qp_deaths: AtomicU64,
    /// Slices failed for good.
    pub failed_slices: AtomicU64,
    /// Handshakes completed (active or passive).
    pub handshakes: AtomicU64,
    /// Active handshakes started (after the backoff allowed them).
    pub handshake_attempts: AtomicU64,
    /// Times a peer's handshake cap made its queued slices fail or reroute.
    pub handshakes_capped: AtomicU64,
    /// Idle endpoints retired to stay under `MC_MAX_EP_PER_CTX`.
    pub evictions: AtomicU64,
    /// Stalled endpoints whose peer a probe found gone.
    pub peers_gone: AtomicU64,
    /// WRs past `MC_SLICE_TIMEOUT` whose QP was moved to ERR.
    pub timeouts: AtomicU64,
    /// Of those, WRs whose flush (or late) completion came back, ending
    /// their slice only then.
    pub timeouts_completed: AtomicU64,
    /// Of those, WRs whose completion never came within the flush grace:
    /// slice ended, QP kept alive until shutdown.
    pub timeouts_unflushed: AtomicU64,
    /// Slices with no RDMA path left that went over the TCP transport
    /// instead (failover), at give-up or at submit in a failover window.
    pub tcp_fallback: AtomicU64,
    /// Times a peer failed over to TCP with no failover window open (each
    /// opens one: new submissions skip RDMA until it closes).
    pub tcp_fallback_windows: AtomicU64,
    /// First attempts under `MC_ENABLE_DEST_DEVICE_AFFINITY` that went to
    /// the peer NIC named like the local one.
    pub affinity_hits: AtomicU64,
    /// ... that could not (the peer has no such NIC, or it is paused).
    pub affinity_misses: AtomicU64,
    /// Active handshakes that failed.
    pub handshake_failures: AtomicU64,
    /// Time of active handshakes that connected (start to QPs ready).
    pub handshake_latency: crate::metrics::histogram::Histogram,
}

impl Counters {
    pub fn snapshot(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "retries": g(&self.retries),
            "error_completions": g(&self.error_completions),
            "request_errors": g(&self.request_errors),
            "stalls": g(&self.stalls),
            "flushed": g(&self.flushed),
            "resent": g(&self.resent),
            "qp_deaths": g(&self.qp_deaths),
            "failed_slices": g(&self.failed_slices),
            "handshakes": g(&self.handshakes),
            "evictions": g(&self.evictions),
            "handshake_attempts": g(&self.handshake_attempts),
            "handshakes_capped": g(&self.handshakes_capped),
            "peers_gone": g(&self.peers_gone),
            "timeouts": g(&self.timeouts),
            "timeouts_completed": g(&self.timeouts_completed),
            "timeouts_unflushed": g(&self.timeouts_unflushed),
            "tcp_fallback_slices": g(&self.tcp_fallback),
            "tcp_fallback_windows": g(&self.tcp_fallback_windows),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn inflight_and_completed_bytes() {
        let s = DeviceStats::default();
        s.posted(100);
        s.posted(50);
        assert_eq!(s.inflight_bytes(), 150);
        s.finished(100, true);
        s.finished(50, false);
        assert_eq!(s.inflight_bytes(), 0);
        assert_eq!(s.completed_bytes(), 100);
        assert_eq!(s.posted_slices(), 2);
    }

    #[test]
    fn batched_updates_match_per_slice_ones() {
        let s = DeviceStats::default();
        s.posted_many(150, 2);
        s.posted_many(0, 0);
        assert_eq!(s.inflight_bytes(), 150);
        assert_eq!(s.posted_slices(), 2);
        s.finished_many(1, 150, 100);
        assert_eq!(s.inflight_bytes(), 0);
        assert_eq!(s.completed_bytes(), 100);
        assert_eq!(s.completions(), 1);
    }

    #[test]
    fn bandwidth_reflects_completed_bytes() {
        let s = DeviceStats::default();
        s.posted(1 << 20);
        s.finished(1 << 20, true);
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert!(s.bandwidth() > 0.0);
        let idle = DeviceStats::default();
        std::thread::sleep(std::time::Duration::from_millis(20));
        assert_eq!(idle.bandwidth(), 0.0);
    }
}
