//! What the transport shows about itself: per-device load, links and
//! endpoints (`showLinks`), counters.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};

use crate::metrics::exposition::{help, Exposition};

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
            "routing": sh.routing(),
            "counters": sh.counters.snapshot(),
        })
    }

    /// Why each rail in use was chosen: the local device's topology tier
    /// per buffer location, the peer NIC's rule (destination affinity or
    /// the peer's matrix), and whether it is paused now.
    fn routing(&self) -> serde_json::Value {
        let policy = self.cfg.policy;
        let active = |d: &String| self.contexts.iter().any(|c| &c.name == d && c.is_active());
        let locations: Vec<serde_json::Value> = self
            .matrix
            .iter()
            .map(|(loc, (pref, avail))| {
                let tier = if pref.is_empty() { avail } else { pref };
                let down: Vec<&String> = tier.iter().filter(|d| !active(d)).collect();
                serde_json::json!({
                    "location": loc,
                    "first_attempt_tier": if pref.is_empty() { "available" } else { "preferred" },
                    "devices": tier,
                    "inactive": down,
                    "note": if down.is_empty() { "first attempts pick among these at random (round robin with MC_PATH_ROUNDROBIN)" }
                            else { "inactive devices are skipped: their slices walk the matrix to the next active device" },
                })
            })
            .collect();
        let mut rails = Vec::new();
        for c in &self.contexts {
            let tiers: Vec<String> = self
                .matrix
                .iter()
                .filter_map(|(loc, (pref, avail))| {
                    if pref.contains(&c.name) {
                        Some(format!("preferred for {loc}"))
                    } else if avail.contains(&c.name) {
                        Some(format!("available for {loc}"))
                    } else {
                        None
                    }
                })
                .collect();
            let mut eps: Vec<(String, &'static str, u32)> = c
                .endpoints
                .lock()
                .iter()
                .map(|(p, ep)| (p.to_string(), state_label(ep.state()), ep.outstanding()))
                .collect();
            eps.sort();
            for (peer, state, outstanding) in eps {
                let peer_dev = crate::metadata::name::split_nic_path(&peer).map_or("", |(_, d)| d);
                let why = match (policy.dest_affinity, peer_dev == c.name) {
                    (true, true) => "destination affinity: the peer NIC named like ours",
                    (true, false) => "affinity miss: no usable peer NIC named like ours; chosen by the peer's topology matrix",
                    (false, _) => "the peer's topology matrix for the target buffer (first tier at random; retries walk the tiers)",
                };
                rails.push(serde_json::json!({
                    "local": c.name,
                    "local_tier": tiers,
                    "peer_nic": peer,
                    "peer_choice": why,
                    "paused": !self.rails.usable(&peer),
                    "state": state,
                    "outstanding": outstanding,
                }));
            }
        }
        serde_json::json!({
            "dest_affinity": policy.dest_affinity,
            "round_robin": policy.round_robin,
            "locations": locations,
            "rails": rails,
            "affinity_hits": self.counters.affinity_hits.load(Ordering::Relaxed),
            "affinity_misses": self.counters.affinity_misses.load(Ordering::Relaxed),
            "failover_slices": self.counters.tcp_fallback.load(Ordering::Relaxed),
        })
    }

    /// Devices, endpoints by state, events and errors by reason, in
    /// Prometheus text. Endpoint maps are locked briefly per device (as
    /// `showLinks` does); nothing on the posting path is.
    pub(super) fn write_metrics(&self, e: &mut Exposition) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        type DevPick = fn(&super::stats::DeviceStats) -> u64;
        let per_device: [(&'static str, &str, &str, DevPick); 4] = [
            (
                "te_rdma_device_bytes_total",
                "counter",
                "Bytes of WRs completed successfully, by local device.",
                |s| s.completed_bytes(),
            ),
            (
                "te_rdma_device_inflight_bytes",
                "gauge",
                "Bytes of WRs posted and not yet completed, by local device (its queue depth).",
                |s| s.inflight_bytes(),
            ),
            (
                "te_rdma_device_posted_slices_total",
                "counter",
                "Slices (WRs) posted, by local device.",
                |s| s.posted_slices(),
            ),
            (
                "te_rdma_device_completions_total",
                "counter",
                "Completions polled, by local device.",
                |s| s.completions(),
            ),
        ];
        for (name, kind, help, pick) in per_device {
            e.family(name, kind, help);
            for c in &self.contexts {
                e.sample(name, &[("device", &c.name)], pick(&c.stats) as f64);
            }
        }
        e.family(
            "te_rdma_device_active",
            "gauge",
            "1 while the local device's port is usable.",
        );
        for c in &self.contexts {
            let v = if c.is_active() { 1.0 } else { 0.0 };
            e.sample("te_rdma_device_active", &[("device", &c.name)], v);
        }
        let name = "te_rdma_endpoints";
        e.family(name, "gauge", "RDMA endpoints, by local device and state.");
        for c in &self.contexts {
            let mut by_state: BTreeMap<&'static str, u64> = BTreeMap::new();
            for s in ["connected", "connecting", "wait_ready_ack", "unconnected"] {
                by_state.insert(s, 0);
            }
            for ep in c.endpoints.lock().values() {
                *by_state.entry(state_label(ep.state())).or_default() += 1;
            }
            for (state, n) in by_state {
                e.sample(name, &[("device", &c.name), ("state", state)], n as f64);
            }
        }
        let k = &self.counters;
        e.family(
            "te_connections_opened_total",
            "counter",
            help::CONNECTIONS_OPENED,
        );
        e.sample(
            "te_connections_opened_total",
            &[("transport", "rdma")],
            g(&k.handshakes),
        );
        e.family(
            "te_connection_failures_total",
            "counter",
            help::CONNECTION_FAILURES,
        );
        e.sample(
            "te_connection_failures_total",
            &[("transport", "rdma")],
            g(&k.handshake_failures),
        );
        e.family("te_errors_total", "counter", help::ERRORS);
        let other_errors = k
            .error_completions
            .load(Ordering::Relaxed)
            .saturating_sub(k.request_errors.load(Ordering::Relaxed));
        for (reason, v) in [
            ("timeout", g(&k.timeouts)),
            ("remote_access", g(&k.request_errors)),
            ("flush", g(&k.flushed)),
            ("completion_error", other_errors as f64),
            ("peer_gone", g(&k.peers_gone)),
            ("stall", g(&k.stalls)),
            ("connect", g(&k.handshake_failures)),
        ] {
            e.sample(
                "te_errors_total",
                &[("transport", "rdma"), ("reason", reason)],
                v,
            );
        }
        e.family("te_rdma_affinity_total", "counter", "First attempts under MC_ENABLE_DEST_DEVICE_AFFINITY, by outcome (miss: no usable peer NIC named like the local one).");
        e.sample(
            "te_rdma_affinity_total",
            &[("outcome", "hit")],
            g(&k.affinity_hits),
        );
        e.sample(
            "te_rdma_affinity_total",
            &[("outcome", "miss")],
            g(&k.affinity_misses),
        );
        e.single(
            "te_rdma_retries_total",
            "counter",
            "Slices sent again with one of MC_RETRY_CNT spent.",
            g(&k.retries),
        );
        e.single(
            "te_rdma_resent_total",
            "counter",
            "Slices sent again free of the retry budget (their QP died under them).",
            g(&k.resent),
        );
        e.single(
            "te_rdma_failover_slices_total",
            "counter",
            "Slices with no RDMA path left carried over TCP instead.",
            g(&k.tcp_fallback),
        );
        e.single(
            "te_rdma_failover_windows_total",
            "counter",
            "Times a peer failed over to TCP (each opens a window of TCP-only submits).",
            g(&k.tcp_fallback_windows),
        );
        e.single(
            "te_rdma_rail_pauses_total",
            "counter",
            "Times a rail (peer NIC path) was paused after errors (MC_RDMA_RAIL_PAUSE_SECONDS).",
            self.rails.pauses() as f64,
        );
        e.single(
            "te_rdma_rails_paused",
            "gauge",
            "Rails paused now.",
            self.rails.paused().len() as f64,
        );
        e.single(
            "te_rdma_endpoint_evictions_total",
            "counter",
            "Idle endpoints retired to stay under MC_MAX_EP_PER_CTX.",
            g(&k.evictions),
        );
        e.single(
            "te_rdma_qp_deaths_total",
            "counter",
            "Endpoints retired because a QP died without an error completion.",
            g(&k.qp_deaths),
        );
        e.single(
            "te_rdma_handshakes_capped_total",
            "counter",
            "Times a peer's handshake cap made its queued slices fail or reroute.",
            g(&k.handshakes_capped),
        );
        e.family(
            "te_rdma_handshake_seconds",
            "histogram",
            "Active handshakes that connected: start to QPs ready.",
        );
        e.histogram("te_rdma_handshake_seconds", &[], &k.handshake_latency);
    }

    /// Counters for diagnostics and tests (retries, error completions, ...).
    pub(super) fn counters_json(&self) -> serde_json::Value {
        self.counters.snapshot()
    }
}
