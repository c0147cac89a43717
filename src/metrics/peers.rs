//! Per-peer series, capped at `MC_TE_METRIC_MAX_PEERS` (default 128): the
//! first peers seen get a series each; later ones share the `_overflow`
//! series and are counted, so a thousand peers cost a bounded scrape.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use parking_lot::RwLock;

use crate::serving::RateLimited;

/// The label of the series peers past the cap share.
pub const OVERFLOW: &str = "_overflow";

static CAP_LOG: RateLimited = RateLimited::new(module_path!(), std::time::Duration::from_secs(60));

/// What one peer segment (or the overflow) has seen.
#[derive(Debug, Default)]
pub struct PeerSeries {
    pub name: String,
    /// Bytes moved, by opcode (0 read, 1 write).
    pub bytes: [AtomicU64; 2],
    pub tasks: AtomicU64,
    pub tasks_failed: AtomicU64,
    pub slices_failed: AtomicU64,
}

pub struct PeerTable {
    cap: usize,
    series: RwLock<HashMap<String, Arc<PeerSeries>>>,
    overflow: Arc<PeerSeries>,
    /// Distinct peers that got no series of their own.
    overflowed: AtomicU64,
}

impl PeerTable {
    pub fn new(cap: usize) -> PeerTable {
        PeerTable {
            cap,
            series: RwLock::new(HashMap::new()),
            overflow: Arc::new(PeerSeries {
                name: OVERFLOW.into(),
                ..Default::default()
            }),
            overflowed: AtomicU64::new(0),
        }
    }

    pub fn from_env() -> PeerTable {
        Self::new(crate::config::env_u64("MC_TE_METRIC_MAX_PEERS", 128, 0, 100_000) as usize)
    }

    pub fn cap(&self) -> usize {
        self.cap
    }

    /// The series of peer `name`. Called once per new (segment, transport)
    /// pair; a peer past the cap gets the overflow series.
    pub fn series(&self, name: &str) -> Arc<PeerSeries> {
        if let Some(s) = self.series.read().get(name) {
            return s.clone();
        }
        let mut map = self.series.write();
        if let Some(s) = map.get(name) {
            return s.clone();
        }
        if map.len() >= self.cap {
            let n = self.overflowed.fetch_add(1, Ordering::Relaxed) + 1;
            CAP_LOG.warn(format_args!(
                "metrics: peer '{name}' shares the '{OVERFLOW}' series: MC_TE_METRIC_MAX_PEERS={} \
                 peers have series already ({n} peers past the cap so far)",
                self.cap
            ));
            return self.overflow.clone();
        }
        let s = Arc::new(PeerSeries {
            name: name.to_string(),
            ..Default::default()
        });
        map.insert(name.to_string(), s.clone());
        s
    }

    /// Peers past the cap, each counted once.
    pub fn overflowed(&self) -> u64 {
        self.overflowed.load(Ordering::Relaxed)
    }

    /// Every series, sorted by name, the overflow last.
    pub fn all(&self) -> Vec<Arc<PeerSeries>> {
        let mut v: Vec<_> = self.series.read().values().cloned().collect();
        v.sort_by(|a, b| a.name.cmp(&b.name));
        v.push(self.overflow.clone());
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn peers_past_the_cap_share_one_series() {
        let t = PeerTable::new(2);
        let a = t.series("a");
        assert!(Arc::ptr_eq(&a, &t.series("a")));
        t.series("b");
        let c = t.series("c");
        assert_eq!(c.name, OVERFLOW);
        assert!(Arc::ptr_eq(&c, &t.series("d")));
        assert_eq!(t.overflowed(), 2);
        assert_eq!(t.all().len(), 3);
    }
}
