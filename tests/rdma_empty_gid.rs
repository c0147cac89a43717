//! Peers whose handshakes carry an empty `local_gid` (some upstream builds
//! send none): each side takes the other's GID from its segment descriptor,
//! as upstream does. Both engines of this binary send empty GIDs
//! (`MC_TE_RS_TEST_EMPTY_GID`), so both the active and the passive side use
//! the descriptor.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::{Opcode, TaskStatus};

#[test]
fn empty_local_gid_is_taken_from_the_segment_descriptor() {
    std::env::set_var("MC_TE_RS_TEST_EMPTY_GID", "1");
    let a = rdma_engine(&["soft0"]);
    let b = rdma_engine(&["soft1"]);
    let len = 1 << 20;
    let src = Buf(pattern(17, len));
    let dst = Buf::new(len, 0);
    let back = Buf::new(len, 0);
    register(&a, &src);
    register(&a, &back);
    register(&b, &dst);
    let seg = open(&a, &b);
    let t = Duration::from_secs(30);
    let st = run_batch(
        &a,
        &[req(Opcode::Write, src.addr(), seg, dst.addr(), len as u64)],
        t,
    );
    assert_eq!(st[0].status, TaskStatus::Completed, "{}", links(&a));
    assert!(dst.0 == src.0);
    let st = run_batch(
        &a,
        &[req(Opcode::Read, back.addr(), seg, dst.addr(), len as u64)],
        t,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(back.0 == src.0);
    // b answers a's handshakes too (passive side used a's descriptor).
    let sa = open(&b, &a);
    let st = run_batch(
        &b,
        &[req(Opcode::Read, dst.addr(), sa, src.addr(), len as u64)],
        t,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    a.shutdown();
    b.shutdown();
}
