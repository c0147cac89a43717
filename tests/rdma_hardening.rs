//! RDMA hardening on the soft fabric (issue 10): registrations split at
//! `max_mr_size` with every byte reachable by a peer, a slice timeout that
//! waits for its WR's flush before ending the slice, and a QP fatal event
//! that retires one endpoint only, and a buffer registered not remote-accessible
//! that local work uses but no peer can reach.

mod rdma_support;

use std::sync::Once;
use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault::{self, Scope};
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(30);
/// `MC_MAX_MR_SIZE` of this binary: not a power of two, so chunk ends fall
/// inside slices.
const MAX_MR: usize = 100_000;

static ENV: Once = Once::new();

fn env() {
    ENV.call_once(|| {
        std::env::set_var("MC_MAX_MR_SIZE", MAX_MR.to_string());
        std::env::set_var("MC_SLICE_TIMEOUT", "1");
    });
}

#[test]
fn registration_above_max_mr_size_is_split_and_every_byte_reachable() {
    env();
    let a = rdma_engine(&["load0"]);
    let b = rdma_engine(&["load1"]);
    let len = 1 << 20 | 12345;
    let mut src = Buf::new(len, 0);
    let dst = Buf::new(len, 0);
    let back = Buf::new(len, 0);
    register(&a, &src);
    register(&a, &back);
    register(&b, &dst);
    let seg = open(&a, &b);
    // The descriptor has one entry per chunk, contiguous, each <= max.
    let d = a.metadata().segment_desc(seg).expect("peer desc");
    assert_eq!(d.buffers.len(), len.div_ceil(MAX_MR), "{:?}", d.buffers);
    let mut at = dst.addr();
    for bd in &d.buffers {
        assert_eq!(bd.addr, at);
        assert!(bd.length as usize <= MAX_MR);
        assert_eq!(bd.rkey.as_ref().map(Vec::len), Some(1));
        at += bd.length;
    }
    assert_eq!(at, dst.addr() + len as u64);
    let rkeys: std::collections::HashSet<u32> = d
        .buffers
        .iter()
        .map(|b| b.rkey.as_ref().unwrap()[0])
        .collect();
    assert_eq!(rkeys.len(), d.buffers.len(), "one MR (rkey) per chunk");

    // Whole buffer: a peer writes and reads every byte.
    let p = pattern(9, len);
    src.0.copy_from_slice(&p);
    let st = run_batch(
        &a,
        &[req(Opcode::Write, src.addr(), seg, dst.addr(), len as u64)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(dst.0 == p, "write: remote bytes differ");
    let st = run_batch(
        &a,
        &[req(Opcode::Read, back.addr(), seg, dst.addr(), len as u64)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(back.0 == p, "read: local bytes differ");

    // Misaligned: local and remote chunk ends at different offsets.
    let skew = 777;
    let p = pattern(3, len - skew);
    src.0[skew..].copy_from_slice(&p);
    let st = run_batch(
        &a,
        &[req(
            Opcode::Write,
            src.addr() + skew as u64,
            seg,
            dst.addr(),
            (len - skew) as u64,
        )],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(
        dst.0[..len - skew] == p[..],
        "skewed write: remote bytes differ"
    );

    // Unregistering removes every chunk from the descriptor.
    b.unregister_local_memory(dst.addr()).expect("unregister");
    let d = b.metadata().local_desc().expect("own desc");
    assert!(d.buffers.is_empty(), "{:?}", d.buffers);
    a.shutdown();
    b.shutdown();
}

#[test]
fn slice_timeout_waits_for_the_flush_before_failing() {
    env();
    fault::set_retry_timeout(Duration::from_secs(20));
    let a = rdma_engine(&["dn0"]);
    let b = rdma_engine(&["dn1"]);
    let src = Buf::new(64 << 10, 7);
    let dst = Buf::new(64 << 10, 0);
    register(&a, &src);
    register(&b, &dst);
    let seg = open(&a, &b);
    // The first WR is lost: without a timeout it would stall for 20 s.
    fault::drop_next_packets(Scope::Device("dn0"), 1).unwrap();
    let t0 = Instant::now();
    let batch = a.allocate_batch_id(1);
    a.submit_transfer(
        batch,
        &[req(Opcode::Write, src.addr(), seg, dst.addr(), 64 << 10)],
        None,
    )
    .expect("submit");
    let mut completed_at_end = None;
    while t0.elapsed() < T {
        let st = a.transfer_status(batch, 0).expect("status");
        if matches!(st.status, TaskStatus::Failed | TaskStatus::Completed) {
            // Read right after the task ended: the flush must already be in.
            completed_at_end = Some((st.status, counter(&a, "timeouts_completed")));
            break;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    let took = t0.elapsed();
    let (status, flushed) = completed_at_end.expect("task never ended");
    assert_eq!(status, TaskStatus::Failed);
    assert!(
        took >= Duration::from_secs(1),
        "ended before MC_SLICE_TIMEOUT: {took:?}"
    );
    assert!(
        took < Duration::from_secs(10),
        "not bounded by the timeout: {took:?}"
    );
    assert_eq!(flushed, 1, "slice ended before its WR's flush completion");
    assert_eq!(counter(&a, "timeouts"), 1);
    assert_eq!(counter(&a, "timeouts_unflushed"), 0);
    a.free_batch_id(batch).expect("free");
    // The same engine reaches the peer again on a fresh endpoint.
    let st = run_batch(
        &a,
        &[req(Opcode::Write, src.addr(), seg, dst.addr(), 64 << 10)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(dst.0.iter().all(|&x| x == 7));
    a.shutdown();
    b.shutdown();
}

fn endpoint_qpns(e: &transfer_engine::TransferEngine, peer_server: &str) -> Option<Vec<u64>> {
    links(e)["endpoints"]
        .as_array()?
        .iter()
        .find(|ep| {
            ep["peer"]
                .as_str()
                .is_some_and(|p| p.starts_with(&format!("{peer_server}@")))
        })
        .map(|ep| {
            ep["qpns"]
                .as_array()
                .unwrap()
                .iter()
                .filter_map(|q| q.as_u64())
                .collect()
        })
}

#[test]
fn qp_fatal_retires_that_endpoint_only() {
    env();
    let a = rdma_engine(&["race0"]);
    let b = rdma_engine(&["race1"]);
    let c = rdma_engine(&["race1"]);
    let src = Buf::new(256 << 10, 5);
    let db = Buf::new(256 << 10, 0);
    let dc = Buf::new(256 << 10, 0);
    register(&a, &src);
    register(&b, &db);
    register(&c, &dc);
    let sb = open(&a, &b);
    let sc = open(&a, &c);
    for (seg, d) in [(sb, &db), (sc, &dc)] {
        let st = run_batch(
            &a,
            &[req(Opcode::Write, src.addr(), seg, d.addr(), 256 << 10)],
            T,
        );
        assert_eq!(st[0].status, TaskStatus::Completed);
    }
    let to_b = endpoint_qpns(&a, &b.local_server_name()).expect("endpoint to b");
    let to_c = endpoint_qpns(&a, &c.local_server_name()).expect("endpoint to c");
    let handshakes = counter(&a, "handshakes");
    fault::qp_fatal(to_b[0] as u32).unwrap();
    assert!(
        wait_until(Duration::from_secs(5), || endpoint_qpns(
            &a,
            &b.local_server_name()
        )
        .is_none()),
        "endpoint to b not retired: {}",
        links(&a)
    );
    assert_eq!(
        endpoint_qpns(&a, &c.local_server_name()).as_ref(),
        Some(&to_c),
        "the endpoint to c was touched"
    );
    // c goes on without a new handshake; b gets a fresh endpoint.
    let st = run_batch(
        &a,
        &[req(Opcode::Write, src.addr(), sc, dc.addr(), 256 << 10)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert_eq!(counter(&a, "handshakes"), handshakes);
    let st = run_batch(
        &a,
        &[req(Opcode::Write, src.addr(), sb, db.addr(), 256 << 10)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(db.0.iter().all(|&x| x == 5));
    let again = endpoint_qpns(&a, &b.local_server_name()).expect("new endpoint to b");
    assert_ne!(again, to_b);
    a.shutdown();
    b.shutdown();
    c.shutdown();
}

#[test]
fn local_only_buffer_serves_local_work_but_no_peer() {
    env();
    let a = rdma_engine(&["ack0"]);
    let b = rdma_engine(&["ack1"]);
    let len = 256 << 10;
    let local_only = Buf::new(len, 0);
    let shared = Buf(pattern(21, len));
    let private = Buf::new(len, 9);
    // Registered not remote-accessible: LOCAL_WRITE only, no rkey published.
    a.register_local_memory(local_only.addr(), len as u64, "cpu:0", false)
        .expect("register local-only");
    register(&b, &shared);
    b.register_local_memory(private.addr(), len as u64, "cpu:0", false)
        .expect("register private");
    let seg = open(&a, &b);
    // READ into the local-only buffer: the NIC writes it locally.
    let st = run_batch(
        &a,
        &[req(
            Opcode::Read,
            local_only.addr(),
            seg,
            shared.addr(),
            len as u64,
        )],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(local_only.0 == shared.0);
    // A peer cannot touch b's private buffer.
    let st = run_batch(
        &a,
        &[req(
            Opcode::Write,
            local_only.addr(),
            seg,
            private.addr(),
            len as u64,
        )],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Failed);
    assert!(private.0.iter().all(|&x| x == 9), "private bytes changed");
    let d = a.metadata().segment_desc(seg).expect("peer desc");
    let entry = d
        .buffers
        .iter()
        .find(|x| x.addr == private.addr())
        .expect("entry");
    assert_eq!(entry.rkey, Some(vec![]));
    a.shutdown();
    b.shutdown();
}
