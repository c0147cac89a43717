//! Selective signaling on the soft fabric: a posted chain of WRs costs one
//! completion, and a WR that fails mid-chain still reports the WRs before
//! it (which completed without a completion of their own) as done.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::{Opcode, SegmentId, TaskStatus, TransferRequest};

const T: Duration = Duration::from_secs(30);

/// Completions polled on the engine's one device.
fn completions(e: &transfer_engine::TransferEngine) -> u64 {
    links(e)["devices"][0]["completions"].as_u64().unwrap_or(0)
}

/// `n` WRITEs of `len` bytes, the i-th from `src + i·len` to `dst + i·len`.
fn writes(src: &Buf, seg: SegmentId, dst: &Buf, n: usize, len: usize) -> Vec<TransferRequest> {
    (0..n)
        .map(|i| {
            let off = (i * len) as u64;
            let (from, to) = (src.addr() + off, dst.addr() + off);
            req(Opcode::Write, from, seg, to, len as u64)
        })
        .collect()
}

/// One small WRITE, so the endpoint is connected before what is measured.
fn connect(a: &transfer_engine::TransferEngine, src: &Buf, seg: SegmentId, dst: &Buf) {
    let st = run_batch(a, &[req(Opcode::Write, src.addr(), seg, dst.addr(), 8)], T);
    assert_eq!(st[0].status, TaskStatus::Completed, "first transfer");
}

#[test]
fn a_batch_costs_a_completion_per_chain_not_per_slice() {
    let a = rdma_engine(&["sig0"]);
    let b = rdma_engine(&["sig1"]);
    let (n, len) = (64usize, 4096usize);
    let mut src = Buf::new(n * len, 0);
    src.0.copy_from_slice(&pattern(9, n * len));
    let dst = Buf::new(n * len, 0);
    register(&a, &src);
    register(&b, &dst);
    let seg = open(&a, &b);
    connect(&a, &src, seg, &dst);
    let before = completions(&a);
    let st = run_batch(&a, &writes(&src, seg, &dst, n, len), T);
    assert!(
        st.iter().all(|s| s.status == TaskStatus::Completed),
        "{st:?}"
    );
    assert!(dst.0 == src.0, "remote bytes differ");
    let polled = completions(&a) - before;
    // 64 WRs over the endpoint's QPs, in chains of up to half a QP's
    // slots: a completion each, a few at most, never one per WR.
    assert!(
        (1..=8).contains(&polled),
        "{polled} completions for {n} WRs: {}",
        links(&a)
    );
    a.shutdown();
    b.shutdown();
}

#[test]
fn slices_before_a_failed_wr_of_their_chain_complete() {
    let a = rdma_engine(&["sig0"]);
    let b = rdma_engine(&["sig1"]);
    let (n, len) = (8usize, 4096usize);
    let mut src = Buf::new(n * len, 0);
    src.0.copy_from_slice(&pattern(4, n * len));
    let good = Buf::new(n * len, 0);
    let gone = Buf::new(len, 0);
    register(&a, &src);
    register(&b, &good);
    register(&b, &gone);
    let seg = open(&a, &b);
    connect(&a, &src, seg, &good);
    // The peer deregisters `gone`; our descriptor still names it, so the
    // last WR of the chain meets a remote access error on the wire.
    b.unregister_local_memory(gone.addr()).expect("unregister");
    let mut reqs = writes(&src, seg, &good, n - 1, len);
    let last = ((n - 1) * len) as u64;
    reqs.push(req(
        Opcode::Write,
        src.addr() + last,
        seg,
        gone.addr(),
        len as u64,
    ));
    let st = run_batch(&a, &reqs, T);
    for (i, s) in st[..n - 1].iter().enumerate() {
        assert_eq!(s.status, TaskStatus::Completed, "slice {i}: {st:?}");
        assert_eq!(s.transferred_bytes, len as u64);
    }
    assert_eq!(st[n - 1].status, TaskStatus::Failed, "{st:?}");
    assert!(
        good.0[..(n - 1) * len] == src.0[..(n - 1) * len],
        "remote bytes differ"
    );
    assert!(counter(&a, "error_completions") >= 1);
    // The peer refused that one request (its buffer is gone): it was
    // sent once more (rxe refuses valid requests now and then), refused
    // again and failed; the rail, which serves every other request well,
    // was not paused (the only rail: a pause would fail the next transfers).
    assert_eq!(counter(&a, "request_errors"), 2, "{}", links(&a));
    assert_eq!(counter(&a, "retries"), 1, "{}", links(&a));
    assert!(
        links(&a)["paused_rails"].as_array().unwrap().is_empty(),
        "{}",
        links(&a)
    );
    for round in 0..6 {
        let st = run_batch(&a, &writes(&src, seg, &good, n, len), T);
        assert!(
            st.iter().all(|s| s.status == TaskStatus::Completed),
            "round {round}: {st:?}"
        );
        // The same stale request again: refused again, nothing else hurt.
        let st = run_batch(&a, &reqs[n - 1..], T);
        assert_eq!(st[0].status, TaskStatus::Failed);
    }
    assert!(
        links(&a)["paused_rails"].as_array().unwrap().is_empty(),
        "{}",
        links(&a)
    );
    a.shutdown();
    b.shutdown();
}
