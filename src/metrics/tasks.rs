//! Task, slice and byte counters by transport, opcode and outcome, and
//! submit → terminal latency histograms by opcode and size class. A task
//! carries a `TaskMeter` (its transport and peer series) and reports to
//! it once, on the slice that makes it terminal: relaxed adds, no lock.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use parking_lot::RwLock;

use super::exposition::Exposition;
use super::histogram::Histogram;
use super::peers::{PeerSeries, PeerTable};
use crate::metadata::SegmentId;
use crate::task::Opcode;

pub const TRANSPORTS: [&str; 2] = ["tcp", "rdma"];
pub const OPS: [&str; 2] = ["read", "write"];
/// Request size classes (upper bound in bytes, label).
pub const SIZE_CLASSES: [(u64, &str); 5] = [
    (4 << 10, "le_4KiB"),
    (64 << 10, "le_64KiB"),
    (1 << 20, "le_1MiB"),
    (16 << 20, "le_16MiB"),
    (u64::MAX, "gt_16MiB"),
];

fn op_index(op: Opcode) -> usize {
    match op {
        Opcode::Read => 0,
        Opcode::Write => 1,
    }
}

fn size_class(len: u64) -> usize {
    SIZE_CLASSES
        .iter()
        .position(|&(b, _)| len <= b)
        .unwrap_or(SIZE_CLASSES.len() - 1)
}

/// Counters of one transport and opcode.
#[derive(Default)]
struct Line {
    tasks_completed: AtomicU64,
    tasks_failed: AtomicU64,
    slices_succeeded: AtomicU64,
    slices_failed: AtomicU64,
    bytes_completed: AtomicU64,
    /// Bytes that landed in tasks that failed elsewhere.
    bytes_failed: AtomicU64,
}

pub struct Totals {
    lines: [[Line; 2]; 2],
    /// By opcode, then size class.
    latency: Vec<Histogram>,
}

impl Default for Totals {
    fn default() -> Self {
        Totals {
            lines: Default::default(),
            latency: (0..OPS.len() * SIZE_CLASSES.len())
                .map(|_| Histogram::new(&super::BUCKETS_US))
                .collect(),
        }
    }
}

/// How a task ended, as its meter records it.
pub struct Ending {
    pub op: Opcode,
    pub length: u64,
    pub slices_succeeded: u64,
    pub slices_failed: u64,
    pub bytes: u64,
    pub latency: Duration,
}

/// What a task reports to: its transport's line and its peer's series.
pub struct TaskMeter {
    totals: Arc<Totals>,
    transport: usize,
    peer: Arc<PeerSeries>,
}

impl std::fmt::Debug for TaskMeter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "TaskMeter({}, {})",
            TRANSPORTS[self.transport], self.peer.name
        )
    }
}

impl TaskMeter {
    /// The task ended (once per task).
    pub fn task_ended(&self, e: Ending) {
        let r = Ordering::Relaxed;
        let op = op_index(e.op);
        let line = &self.totals.lines[self.transport][op];
        let failed = e.slices_failed > 0;
        if failed {
            line.tasks_failed.fetch_add(1, r);
            line.bytes_failed.fetch_add(e.bytes, r);
            self.peer.tasks_failed.fetch_add(1, r);
            self.peer.slices_failed.fetch_add(e.slices_failed, r);
        } else {
            line.tasks_completed.fetch_add(1, r);
            line.bytes_completed.fetch_add(e.bytes, r);
        }
        line.slices_succeeded.fetch_add(e.slices_succeeded, r);
        line.slices_failed.fetch_add(e.slices_failed, r);
        self.peer.tasks.fetch_add(1, r);
        self.peer.bytes[op].fetch_add(e.bytes, r);
        self.totals.latency[op * SIZE_CLASSES.len() + size_class(e.length)].observe(e.latency);
    }
}

/// The engine's task metrics.
pub struct TaskMetrics {
    totals: Arc<Totals>,
    peers: PeerTable,
    /// One meter per (segment, transport), built on first use.
    meters: RwLock<HashMap<(SegmentId, usize), Arc<TaskMeter>>>,
}

impl TaskMetrics {
    pub fn new(peers: PeerTable) -> TaskMetrics {
        TaskMetrics {
            totals: Arc::default(),
            peers,
            meters: RwLock::new(HashMap::new()),
        }
    }

    pub fn from_env() -> TaskMetrics {
        Self::new(PeerTable::from_env())
    }

    /// The meter of tasks to segment `id` (named `name`) over `transport`
    /// (`None` for a transport without counters of its own).
    pub fn meter(&self, id: SegmentId, name: &str, transport: &str) -> Option<Arc<TaskMeter>> {
        let t = TRANSPORTS.iter().position(|&p| p == transport)?;
        if let Some(m) = self.meters.read().get(&(id, t)) {
            return Some(m.clone());
        }
        let peer = self.peers.series(name);
        let m = self
            .meters
            .write()
            .entry((id, t))
            .or_insert_with(|| {
                Arc::new(TaskMeter {
                    totals: self.totals.clone(),
                    transport: t,
                    peer,
                })
            })
            .clone();
        Some(m)
    }

    pub fn peers(&self) -> &PeerTable {
        &self.peers
    }

    /// Tasks ended, by transport name (tests, `showLinks`).
    pub fn tasks_ended(&self, transport: &str) -> u64 {
        let Some(t) = TRANSPORTS.iter().position(|&p| p == transport) else {
            return 0;
        };
        self.totals.lines[t]
            .iter()
            .map(|l| {
                l.tasks_completed.load(Ordering::Relaxed) + l.tasks_failed.load(Ordering::Relaxed)
            })
            .sum()
    }

    /// Per-transport totals as JSON (for `showLinks`).
    pub fn transport_json(&self, transport: &str) -> serde_json::Value {
        let Some(t) = TRANSPORTS.iter().position(|&p| p == transport) else {
            return serde_json::Value::Null;
        };
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed);
        let mut m = serde_json::Map::new();
        for (op, line) in OPS.iter().zip(&self.totals.lines[t]) {
            m.insert(
                op.to_string(),
                serde_json::json!({
                    "tasks_completed": g(&line.tasks_completed),
                    "tasks_failed": g(&line.tasks_failed),
                    "slices_succeeded": g(&line.slices_succeeded),
                    "slices_failed": g(&line.slices_failed),
                    "bytes": g(&line.bytes_completed) + g(&line.bytes_failed),
                }),
            );
        }
        serde_json::Value::Object(m)
    }

    pub fn write(&self, e: &mut Exposition) {
        let g = |a: &AtomicU64| a.load(Ordering::Relaxed) as f64;
        type Pick = fn(&Line) -> [(&'static str, &AtomicU64); 2];
        let fams: [(&'static str, &str, Pick); 3] = [
            (
                "te_tasks_total",
                "Tasks ended, by transport, opcode and outcome (completed: every slice landed).",
                |l| {
                    [
                        ("completed", &l.tasks_completed),
                        ("failed", &l.tasks_failed),
                    ]
                },
            ),
            (
                "te_slices_total",
                "Slices of ended tasks, by transport, opcode and outcome.",
                |l| {
                    [
                        ("succeeded", &l.slices_succeeded),
                        ("failed", &l.slices_failed),
                    ]
                },
            ),
            (
                "te_bytes_total",
                "Bytes that landed, by transport, opcode and the outcome of their task.",
                |l| {
                    [
                        ("completed", &l.bytes_completed),
                        ("failed", &l.bytes_failed),
                    ]
                },
            ),
        ];
        for (name, help, pick) in fams {
            e.family(name, "counter", help);
            for (t, lines) in TRANSPORTS.iter().zip(&self.totals.lines) {
                for (op, line) in OPS.iter().zip(lines) {
                    for (outcome, v) in pick(line) {
                        e.sample(
                            name,
                            &[("transport", t), ("op", op), ("outcome", outcome)],
                            g(v),
                        );
                    }
                }
            }
        }
        let name = "te_task_latency_seconds";
        e.family(
            name,
            "histogram",
            "Submit to terminal time of ended tasks, by opcode and request size class.",
        );
        for (o, op) in OPS.iter().enumerate() {
            for (s, (_, class)) in SIZE_CLASSES.iter().enumerate() {
                let h = &self.totals.latency[o * SIZE_CLASSES.len() + s];
                e.histogram(name, &[("op", op), ("size", class)], h);
            }
        }
        let peers = self.peers.all();
        e.family(
            "te_peer_bytes_total",
            "counter",
            "Bytes that landed, by peer segment and opcode (peers past MC_TE_METRIC_MAX_PEERS share peer=\"_overflow\").",
        );
        for p in &peers {
            for (op, b) in OPS.iter().zip(&p.bytes) {
                e.sample(
                    "te_peer_bytes_total",
                    &[("peer", &p.name), ("op", op)],
                    g(b),
                );
            }
        }
        e.family(
            "te_peer_tasks_total",
            "counter",
            "Tasks ended, by peer segment.",
        );
        for p in &peers {
            e.sample("te_peer_tasks_total", &[("peer", &p.name)], g(&p.tasks));
        }
        e.family(
            "te_peer_tasks_failed_total",
            "counter",
            "Tasks failed, by peer segment.",
        );
        for p in &peers {
            e.sample(
                "te_peer_tasks_failed_total",
                &[("peer", &p.name)],
                g(&p.tasks_failed),
            );
        }
        e.family(
            "te_peer_slices_failed_total",
            "counter",
            "Slices failed, by peer segment.",
        );
        for p in &peers {
            e.sample(
                "te_peer_slices_failed_total",
                &[("peer", &p.name)],
                g(&p.slices_failed),
            );
        }
        e.single(
            "te_peer_series_overflow_total",
            "counter",
            "Peers that got no series of their own (past MC_TE_METRIC_MAX_PEERS).",
            self.peers.overflowed() as f64,
        );
        e.single(
            "te_peer_series_max",
            "gauge",
            "MC_TE_METRIC_MAX_PEERS: per-peer series at most (plus _overflow).",
            self.peers.cap() as f64,
        );
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ended_task_counts_once_in_each_view() {
        let m = TaskMetrics::new(PeerTable::new(4));
        assert!(m.meter(1, "p", "nvlink").is_none());
        let meter = m.meter(1, "p", "tcp").unwrap();
        meter.task_ended(Ending {
            op: Opcode::Write,
            length: 100,
            slices_succeeded: 1,
            slices_failed: 0,
            bytes: 100,
            latency: Duration::from_micros(30),
        });
        meter.task_ended(Ending {
            op: Opcode::Read,
            length: 1 << 20,
            slices_succeeded: 0,
            slices_failed: 2,
            bytes: 0,
            latency: Duration::from_millis(3),
        });
        let mut e = Exposition::default();
        m.write(&mut e);
        let text = e.finish();
        for want in [
            "te_tasks_total{transport=\"tcp\",op=\"write\",outcome=\"completed\"} 1\n",
            "te_tasks_total{transport=\"tcp\",op=\"read\",outcome=\"failed\"} 1\n",
            "te_slices_total{transport=\"tcp\",op=\"read\",outcome=\"failed\"} 2\n",
            "te_bytes_total{transport=\"tcp\",op=\"write\",outcome=\"completed\"} 100\n",
            "te_task_latency_seconds_count{op=\"write\",size=\"le_4KiB\"} 1\n",
            "te_task_latency_seconds_count{op=\"read\",size=\"le_1MiB\"} 1\n",
            "te_peer_bytes_total{peer=\"p\",op=\"write\"} 100\n",
            "te_peer_tasks_failed_total{peer=\"p\"} 1\n",
        ] {
            assert!(text.contains(want), "{want} missing from\n{text}");
        }
        assert_eq!(m.tasks_ended("tcp"), 2);
    }
}
