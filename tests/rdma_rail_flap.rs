//! Rail failover on the soft fabric: two engines with two NICs each keep a
//! verified WRITE/READ workload running while one rail's port goes down and
//! up five times. No task fails, every byte of every COMPLETED task is in
//! place, and after each port-down the workload goes on over the other rail.
//! Prints the time from each port-down to the next completed batch.

mod rdma_support;

use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault;

const BLOCK: usize = 64 << 10;
const BATCH: usize = 32;

#[test]
fn a_flapping_rail_fails_no_task_and_loses_no_byte() {
    soft_env();
    fault::set_ack_timeout(Some(Duration::from_millis(20)));
    let a = rdma_engine(&["fl0", "fl1"]);
    let b = rdma_engine(&["fl0", "fl1"]);
    let size = BLOCK * BATCH;
    let local = Buf::new(size, 0);
    let remote = Buf::new(size, 0);
    register(&a, &local);
    register(&b, &remote);
    let seg = open(&a, &b);
    let mut w = VerifiedWorkload::start(a.clone(), seg, &local, &remote, BLOCK, BATCH);
    let t = Duration::from_secs(60);
    let mut heal = Vec::new();
    for flap in 0..5 {
        if !w.wait_batches(4, t) {
            panic!(
                "flap {flap}: no progress before: {} ({})",
                links(&a),
                w.why()
            );
        }
        let down = Instant::now();
        fault::port_down("fl1", false).unwrap();
        if !w.wait_batches(4, t) {
            panic!(
                "flap {flap}: no progress while down: {} ({})",
                links(&a),
                w.why()
            );
        }
        heal.push(w.first_done_after(down).map(|t| t - down));
        fault::port_up("fl1").unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || links(&a)["devices"][1]
                ["active"]
                == true),
            "flap {flap}: fl1 not active again: {}",
            links(&a)
        );
    }
    // The rail came back and carries slices again.
    let before = links(&a)["devices"][1]["posted_slices"]
        .as_u64()
        .unwrap_or(0);
    if !w.wait_batches(4, t) {
        panic!("no progress after the flaps: {} ({})", links(&a), w.why());
    }
    let after = links(&a)["devices"][1]["posted_slices"]
        .as_u64()
        .unwrap_or(0);
    w.finish().unwrap();
    assert!(
        after > before,
        "fl1 took no slices after it came back: {}",
        links(&a)
    );
    assert_eq!(counter(&a, "failed_slices"), 0, "{}", links(&a));
    let ms: Vec<String> = heal
        .iter()
        .map(|d| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)))
        .collect();
    println!("port down -> next completed batch (ms): {}", ms.join(" "));
    fault::set_ack_timeout(None);
    a.shutdown();
    b.shutdown();
}
