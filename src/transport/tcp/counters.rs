//! What the TCP client counts for metrics: connections opened and failed,
//! and requests failed by reason. Relaxed adds where the event happens.

use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::exposition::{help, Exposition};

#[derive(Default)]
pub struct TcpCounters {
    /// Data connections opened to peers.
    pub connects: AtomicU64,
    /// Connects that failed (after their bounded retry).
    pub connect_failures: AtomicU64,
    /// Requests the peer refused: the range is not registered there.
    pub refused: AtomicU64,
    /// Connections that broke with requests outstanding.
    pub broken: AtomicU64,
    /// Connections failed for moving no byte for `MC_TCP_STATUS_TIMEOUT_SEC`.
    pub stalled: AtomicU64,
}

impl TcpCounters {
    pub fn write(&self, e: &mut Exposition) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        e.family(
            "te_connections_opened_total",
            "counter",
            help::CONNECTIONS_OPENED,
        );
        e.sample(
            "te_connections_opened_total",
            &[("transport", "tcp")],
            g(&self.connects),
        );
        e.family(
            "te_connection_failures_total",
            "counter",
            help::CONNECTION_FAILURES,
        );
        e.sample(
            "te_connection_failures_total",
            &[("transport", "tcp")],
            g(&self.connect_failures),
        );
        e.family("te_errors_total", "counter", help::ERRORS);
        for (reason, v) in [
            ("refused", &self.refused),
            ("connection", &self.broken),
            ("timeout", &self.stalled),
            ("connect", &self.connect_failures),
        ] {
            e.sample(
                "te_errors_total",
                &[("transport", "tcp"), ("reason", reason)],
                g(v),
            );
        }
    }

    pub fn json(&self) -> serde_json::Value {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        serde_json::json!({
            "connects": g(&self.connects),
            "connect_failures": g(&self.connect_failures),
            "refused": g(&self.refused),
            "broken": g(&self.broken),
            "stalled": g(&self.stalled),
        })
    }
}
