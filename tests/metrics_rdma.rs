//! RDMA metrics and explained routing on the soft fabric: byte, task and
//! latency counts equal the workload, the handshake histogram counts the
//! handshakes, destination affinity hits and misses are counted and
//! explained in showLinks, and promtool accepts the exposition.

mod rdma_support;

use std::collections::HashMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use rdma_support::*;
use transfer_engine::metrics::exposition::samples;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

const T: Duration = Duration::from_secs(30);

fn metrics(e: &TransferEngine) -> HashMap<String, f64> {
    samples(&e.metrics_text()).into_iter().collect()
}

fn promtool_accepts(text: &str) {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian's prometheus package, scripts/deps.sh --test)");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}\n{text}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `n` verified writes of `len` bytes from `init` to `target`.
fn write_verified(init: &TransferEngine, target: &TransferEngine, n: usize, len: usize) {
    let src = Buf(pattern(9, len));
    let dst = Buf::new(len * n, 0);
    register(init, &src);
    register(target, &dst);
    let id = open(init, target);
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            req(
                Opcode::Write,
                src.addr(),
                id,
                dst.addr() + (i * len) as u64,
                len as u64,
            )
        })
        .collect();
    for st in run_batch(init, &reqs, T) {
        assert_eq!(st.status, TaskStatus::Completed);
    }
    for i in 0..n {
        assert!(
            dst.0[i * len..(i + 1) * len] == src.0[..],
            "write {i} landed wrong"
        );
    }
}

#[test]
fn rdma_counters_and_affinity_explained() {
    std::env::set_var("MC_ENABLE_DEST_DEVICE_AFFINITY", "1");
    let target = rdma_engine(&["met0", "met1"]);
    let hit = rdma_engine(&["met0"]);
    let miss = rdma_engine(&["met2"]);
    let (n, len) = (8usize, 16usize << 10);
    write_verified(&hit, &target, n, len);
    write_verified(&miss, &target, n, len);

    for (e, outcome) in [(&hit, "hit"), (&miss, "miss")] {
        let m = metrics(e);
        let slices = m[r#"te_slices_total{transport="rdma",op="write",outcome="succeeded"}"#];
        assert!(slices >= n as f64);
        assert_eq!(
            m[&format!(r#"te_rdma_affinity_total{{outcome="{outcome}"}}"#)],
            slices,
            "every first attempt of {outcome} engine"
        );
        assert_eq!(
            m[r#"te_bytes_total{transport="rdma",op="write",outcome="completed"}"#],
            (n * len) as f64
        );
        assert_eq!(
            m[r#"te_tasks_total{transport="rdma",op="write",outcome="completed"}"#],
            n as f64
        );
        assert_eq!(
            m[r#"te_task_latency_seconds_count{op="write",size="le_64KiB"}"#],
            n as f64
        );
        let handshakes = counter(e, "handshakes") as f64;
        assert!(handshakes >= 1.0);
        assert_eq!(m["te_rdma_handshake_seconds_count"], handshakes);
        assert_eq!(
            m[r#"te_connections_opened_total{transport="rdma"}"#],
            handshakes
        );
        promtool_accepts(&e.metrics_text());
    }
    // showLinks says why each rail was chosen.
    let why = |e: &TransferEngine| {
        links(e)["routing"]["rails"]
            .as_array()
            .unwrap()
            .iter()
            .map(|r| r["peer_choice"].as_str().unwrap().to_string())
            .collect::<Vec<_>>()
    };
    let hit_why = why(&hit);
    assert!(
        !hit_why.is_empty()
            && hit_why
                .iter()
                .all(|w| w.starts_with("destination affinity")),
        "{hit_why:?}"
    );
    let miss_why = why(&miss);
    assert!(
        !miss_why.is_empty() && miss_why.iter().all(|w| w.starts_with("affinity miss")),
        "{miss_why:?}"
    );
    let routing = &links(&miss)["routing"];
    assert_eq!(routing["dest_affinity"], true);
    assert_eq!(routing["locations"][0]["first_attempt_tier"], "preferred");
}
