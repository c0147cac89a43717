//! One worker per context (`MC_WORKERS_PER_CTX=1`): the posting thread also
//! polls the CQ and blocks on it while WRs are in flight, so slices queued
//! meanwhile must wake it. Every byte verified.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(30);

#[test]
fn one_worker_per_context_moves_every_batch_submitted_while_others_fly() {
    std::env::set_var("MC_WORKERS_PER_CTX", "1");
    let a = rdma_engine(&["soft0"]);
    let b = rdma_engine(&["soft1"]);
    let n = 8usize;
    let len = 4 << 20;
    let mut src = Buf::new(n * len, 0);
    let dst = Buf::new(n * len, 0);
    register(&a, &src);
    register(&b, &dst);
    let seg = open(&a, &b);
    for i in 0..n {
        let p = pattern(i as u8 + 7, len);
        src.0[i * len..(i + 1) * len].copy_from_slice(&p);
    }
    // Batches submitted back to back: each one lands while the one before
    // is still in flight (4 MiB each: many slices).
    let batches: Vec<u64> = (0..n)
        .map(|i| {
            let off = (i * len) as u64;
            let id = a.allocate_batch_id(1);
            let r = req(
                Opcode::Write,
                src.addr() + off,
                seg,
                dst.addr() + off,
                len as u64,
            );
            a.submit_transfer(id, &[r], None).unwrap();
            id
        })
        .collect();
    for (i, id) in batches.into_iter().enumerate() {
        let st = wait_batch(&a, id, 1, T);
        assert_eq!(st[0].status, TaskStatus::Completed, "batch {i}");
        assert!(
            dst.0[i * len..(i + 1) * len] == src.0[i * len..(i + 1) * len],
            "batch {i}: remote bytes differ"
        );
    }
    // After an idle spell (nothing in flight), one small transfer still goes.
    std::thread::sleep(Duration::from_millis(50));
    let st = run_batch(
        &a,
        &[req(Opcode::Read, src.addr(), seg, dst.addr(), 4096)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    a.shutdown();
    b.shutdown();
}
