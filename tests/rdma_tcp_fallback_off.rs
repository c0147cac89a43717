//! `MC_TE_RS_TCP_FALLBACK=0` (its own binary: the setting is read when an
//! engine is created): two engines with rdma and tcp installed behave as
//! before the failover existed. Their descriptors offer no TCP port, and
//! an outage of every rail fails the tasks instead of moving them to TCP.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault;
use transfer_engine::{Opcode, TaskStatus};

const LEN: u64 = 64 << 10;

#[test]
fn with_the_failover_off_an_outage_fails_the_tasks() {
    std::env::set_var("MC_TE_RS_TCP_FALLBACK", "0");
    let a = rdma_tcp_engine(&["tfo5"]);
    let b = rdma_tcp_engine(&["tfo5"]);
    let local = Buf::new(LEN as usize, 3);
    let remote = Buf::new(LEN as usize, 0);
    register(&a, &local);
    register(&b, &remote);
    let seg = open(&a, &b);
    let desc = a.metadata().segment_desc(seg).expect("peer descriptor");
    assert_eq!(desc.protocol, "rdma");
    assert_eq!(desc.tcp_fallback_port, None, "{desc:?}");
    let r = [req(Opcode::Write, local.addr(), seg, remote.addr(), LEN)];
    let st = run_batch(&a, &r, Duration::from_secs(30));
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert_eq!(remote.0, local.0);

    fault::port_down("tfo5", false).unwrap();
    for op in [Opcode::Write, Opcode::Read] {
        let r = [req(op, local.addr(), seg, remote.addr(), LEN)];
        let st = run_batch(&a, &r, Duration::from_secs(60));
        assert_eq!(st[0].status, TaskStatus::Failed, "{op:?}: {}", links(&a));
    }
    assert_eq!(counter(&a, "tcp_fallback_slices"), 0, "{}", links(&a));
    assert!(counter(&a, "failed_slices") > 0, "{}", links(&a));
    fault::port_up("tfo5").unwrap();
    a.shutdown();
    b.shutdown();
}
