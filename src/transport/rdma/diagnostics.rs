//! What the transport shows about itself: per-device load, links and
//! endpoints (`showLinks`), counters.

use super::endpoint_driver::state_label;
use super::shared::Shared;

impl Shared {
    pub(super) fn nic_load(&self) -> Vec<(String, u64, f64)> {
        self.contexts
            .iter()
            .map(|c| {
                (
                    c.name.clone(),
                    c.stats.inflight_bytes(),
                    c.stats.bandwidth(),
                )
            })
            .collect()
    }

    pub(super) fn links(&self) -> serde_json::Value {
        let sh = self;
        let devices: Vec<serde_json::Value> = sh
            .contexts
            .iter()
            .map(|c| {
                serde_json::json!({
                    "name": c.name,
                    "nic_path": sh.nic_path(&c.name),
                    "active": c.is_active(),
                    "gid": c.gid_string(),
                    "lid": c.lid(),
                    "inflight_bytes": c.stats.inflight_bytes(),
                    "completed_bytes": c.stats.completed_bytes(),
                    "posted_slices": c.stats.posted_slices(),
                    "completions": c.stats.completions(),
                })
            })
            .collect();
        let mut endpoints = Vec::new();
        for c in &sh.contexts {
            let eps = c.endpoints.lock();
            let mut v: Vec<_> = eps.iter().collect();
            v.sort_by(|a, b| a.0.cmp(b.0));
            for (peer, ep) in v {
                endpoints.push(serde_json::json!({
                    "device": c.name,
                    "peer": peer,
                    "state": state_label(ep.state()),
                    "qpns": ep.qp_nums(),
                    "outstanding": ep.outstanding(),
                }));
            }
        }
        serde_json::json!({
            "devices": devices,
            "endpoints": endpoints,
            "paused_rails": sh.rails.paused(),
            "counters": sh.counters.snapshot(),
        })
    }

    /// Counters for diagnostics and tests (retries, error completions, ...).
    pub(super) fn counters_json(&self) -> serde_json::Value {
        self.counters.snapshot()
    }
}
