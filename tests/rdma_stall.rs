//! A live peer whose QP is gone: the target evicted its idle endpoint to
//! an initiator (MC_MAX_EP_PER_CTX) without telling it. The initiator's
//! next WRITE goes to a QP that no longer exists, its RPC port still
//! answers probes, and a NIC that retransmits forever (rxe at retry_cnt
//! 7) never fails the WR: the endpoint is retired after
//! MC_TE_RS_RDMA_STALL_MS without a completion, and the WRITE completes
//! through a fresh handshake. Own test binary: the settings are read from
//! the process environment, and the rxe emulation is fabric-wide.

mod rdma_support;

use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault;
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(60);

#[test]
fn a_write_to_a_peer_qp_that_is_gone_completes_on_a_fresh_endpoint() {
    std::env::set_var("MC_MAX_EP_PER_CTX", "1");
    std::env::set_var("MC_TE_RS_RDMA_STALL_MS", "1500");
    fault::emulate_rxe_retry7(true);
    let t = rdma_engine(&["stl0"]);
    let a = rdma_engine(&["stl1"]);
    let b = rdma_engine(&["stl2"]);
    let len = 64usize << 10;
    let src_a = Buf(pattern(3, len));
    let src_b = Buf(pattern(4, len));
    let dst = Buf::new(2 * len, 0);
    register(&a, &src_a);
    register(&b, &src_b);
    register(&t, &dst);
    let (sa, sb) = (open(&a, &t), open(&b, &t));
    let write = |e: &transfer_engine::TransferEngine, seg, src: &Buf, at: usize| {
        let r = req(
            Opcode::Write,
            src.addr(),
            seg,
            dst.addr() + at as u64,
            len as u64,
        );
        run_batch(e, &[r], T)[0].status
    };
    assert_eq!(write(&a, sa, &src_a, 0), TaskStatus::Completed);
    // B's endpoint evicts A's idle one at the target (capped at 1).
    assert_eq!(write(&b, sb, &src_b, len), TaskStatus::Completed);
    assert!(counter(&t, "evictions") >= 1, "{}", links(&t));

    let started = Instant::now();
    assert_eq!(write(&a, sa, &src_a, 0), TaskStatus::Completed);
    let took = started.elapsed();
    assert!(counter(&a, "stalls") >= 1, "{}", links(&a));
    // The bound a user can count on: the stall limit, a handshake, a
    // resend; far below the minutes rxe would retransmit for.
    assert!(took < Duration::from_secs(20), "took {took:?}");
    assert_eq!(&dst.0[..len], &src_a.0[..]);
    assert_eq!(&dst.0[len..], &src_b.0[..]);
    a.shutdown();
    b.shutdown();
    t.shutdown();
}
