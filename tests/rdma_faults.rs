//! RDMA failover on the soft fabric: a device going down mid-transfer, a
//! peer whose packets are all lost next to a healthy one.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault::{self, Scope};
use transfer_engine::{Opcode, TaskStatus};

#[test]
fn device_down_mid_transfer_completes_on_the_other() {
    soft_env();
    fault::set_retry_timeout(Duration::from_millis(20));
    let a = rdma_engine(&["dn0", "dn1"]);
    let b = rdma_engine(&["dn0", "dn1"]);
    let len = 32usize << 20;
    let src = Buf(pattern(11, len));
    let dst = Buf::new(len, 0);
    register(&a, &src);
    register(&b, &dst);
    let seg = open(&a, &b);
    let n = 64u64;
    let chunk = len as u64 / n;
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            req(
                Opcode::Write,
                src.addr() + i * chunk,
                seg,
                dst.addr() + i * chunk,
                chunk,
            )
        })
        .collect();
    let batch = a.allocate_batch_id(reqs.len());
    a.submit_transfer(batch, &reqs, None).unwrap();
    // Let part of it move, then lose dn1 (both engines' dn1: one fabric).
    wait_until(Duration::from_secs(5), || {
        links(&a)["devices"][1]["posted_slices"]
            .as_u64()
            .unwrap_or(0)
            > 0
    });
    fault::port_down("dn1", false).unwrap();
    let st = wait_batch(&a, batch, reqs.len(), Duration::from_secs(30));
    a.free_batch_id(batch).unwrap();
    let l = links(&a);
    assert_eq!(l["devices"][1]["active"], false, "dn1 is inactive: {l}");
    assert!(
        st.iter().all(|s| s.status == TaskStatus::Completed),
        "{:?}",
        st.iter().map(|s| s.status).collect::<Vec<_>>()
    );
    assert!(dst.0 == src.0, "every byte landed");
    // Port active again: the same engine takes dn1 back (events.rs).
    fault::port_up("dn1").unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || links(&a)["devices"][1]["active"]
            == true),
        "dn1 active again: {}",
        links(&a)
    );
    a.shutdown();
    b.shutdown();
}

#[test]
fn lossy_peer_fails_within_budget_healthy_peer_completes() {
    soft_env();
    fault::set_retry_timeout(Duration::from_millis(20));
    let a = rdma_engine(&["soft0"]);
    let bad = rdma_engine(&["bad0"]);
    let good = rdma_engine(&["good0"]);
    let src = Buf(pattern(21, 1 << 20));
    let bad_dst = Buf::new(1 << 20, 0);
    let good_dst = Buf::new(1 << 20, 0);
    register(&a, &src);
    register(&bad, &bad_dst);
    register(&good, &good_dst);
    let sb = open(&a, &bad);
    let sg = open(&a, &good);
    fault::drop_next_packets(Scope::Device("bad0"), u64::MAX / 2).unwrap();
    let mut reqs = Vec::new();
    for i in 0..4u64 {
        let off = i * (256 << 10);
        reqs.push(req(
            Opcode::Write,
            src.addr() + off,
            sb,
            bad_dst.addr() + off,
            256 << 10,
        ));
        reqs.push(req(
            Opcode::Write,
            src.addr() + off,
            sg,
            good_dst.addr() + off,
            256 << 10,
        ));
    }
    let st = run_batch(&a, &reqs, Duration::from_secs(30));
    fault::clear(Scope::Device("bad0")).unwrap();
    for (i, s) in st.iter().enumerate() {
        let want = if i % 2 == 0 {
            TaskStatus::Failed
        } else {
            TaskStatus::Completed
        };
        assert_eq!(s.status, want, "task {i}");
    }
    assert!(good_dst.0 == src.0);
    assert!(bad_dst.0.iter().all(|&x| x == 0));
    // Bad slices ended within the retry budget (a paused sole rail ends them early).
    assert!(counter(&a, "failed_slices") >= 16);
    assert!(counter(&a, "error_completions") > 0);
    a.shutdown();
    bad.shutdown();
    good.shutdown();
}
