//! A READ that a provider ends without its bytes and without an error
//! completion (Linux rxe 6.1 does so when it takes a retried READ
//! response out of sequence: status success, QP to ERR) is never reported
//! COMPLETED: the transport notices the dead QP, retires its endpoint and
//! does the READ again on a fresh one. Every byte of every COMPLETED task
//! is checked.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault::{self, Scope};
use transfer_engine::{Opcode, SegmentId, TaskStatus};

const T: Duration = Duration::from_secs(30);

/// `n` READs of `len` bytes, the i-th from `src + i·len` into `dst + i·len`.
fn reads(
    dst: &Buf,
    seg: SegmentId,
    src: &Buf,
    n: usize,
    len: usize,
) -> Vec<transfer_engine::TransferRequest> {
    (0..n)
        .map(|i| {
            let off = (i * len) as u64;
            req(
                Opcode::Read,
                dst.addr() + off,
                seg,
                src.addr() + off,
                len as u64,
            )
        })
        .collect()
}

/// Initiator `a` on `dev_a` reading from `b`'s `n·len` bytes of pattern.
struct Pair {
    a: std::sync::Arc<transfer_engine::TransferEngine>,
    b: std::sync::Arc<transfer_engine::TransferEngine>,
    remote: Buf,
    local: Buf,
    seg: SegmentId,
}

impl Pair {
    fn new(dev_a: &str, dev_b: &str, seed: u8, size: usize) -> Pair {
        let a = rdma_engine(&[dev_a]);
        let b = rdma_engine(&[dev_b]);
        let remote = Buf(pattern(seed, size));
        let local = Buf::new(size, 0);
        register(&a, &local);
        register(&b, &remote);
        let seg = open(&a, &b);
        // Connected before the fault is armed: the fault hits a live QP.
        let st = run_batch(&a, &reads(&local, seg, &remote, 1, 8), T);
        assert_eq!(st[0].status, TaskStatus::Completed, "first transfer");
        Pair {
            a,
            b,
            remote,
            local,
            seg,
        }
    }

    /// Read everything in `n` slices; every task COMPLETED and every byte
    /// in place.
    fn read_all_and_check(&mut self, n: usize) {
        self.local.0.fill(0);
        let len = self.remote.len() / n;
        let st = run_batch(
            &self.a,
            &reads(&self.local, self.seg, &self.remote, n, len),
            T,
        );
        for (i, s) in st.iter().enumerate() {
            assert_eq!(s.status, TaskStatus::Completed, "task {i}: {st:?}");
        }
        if let Some(i) = (0..n).find(|&i| {
            self.local.0[i * len..(i + 1) * len] != self.remote.0[i * len..(i + 1) * len]
        }) {
            panic!("task {i} COMPLETED without its bytes");
        }
    }
}

#[test]
fn a_read_ending_silently_mid_chain_is_done_again() {
    let mut p = Pair::new("sre0", "sre1", 3, 16 * 4096);
    // The first READ of the batch ends silently; the seven after it on its
    // QP flush. Its success must not be inferred from their flushes.
    fault::silent_read_errors(Scope::Device("sre0"), 1).unwrap();
    p.read_all_and_check(16);
    assert!(counter(&p.a, "qp_deaths") >= 1, "{}", links(&p.a));
    // The endpoint that died was replaced: transfers go on at once.
    p.read_all_and_check(16);
    p.a.shutdown();
    p.b.shutdown();
}

#[test]
fn a_lone_signaled_read_ending_silently_is_done_again() {
    let mut p = Pair::new("sre2", "sre3", 5, 64 * 1024);
    // One READ, the signaled last WR of its chain: the provider reports
    // it successful. Only the WR after it can tell that its QP died.
    fault::silent_read_errors(Scope::Device("sre2"), 1).unwrap();
    p.read_all_and_check(1);
    p.read_all_and_check(1);
    p.a.shutdown();
    p.b.shutdown();
}

#[test]
fn reads_keep_their_bytes_through_repeated_silent_errors() {
    let mut p = Pair::new("sre4", "sre5", 7, 32 * 4096);
    // Each silent error costs a handshake: stay under the default cap of
    // 20 per peer NIC per minute (MC_TE_RS_HANDSHAKE_MAX_ATTEMPTS).
    for round in 0..8u64 {
        fault::silent_read_errors(Scope::Device("sre4"), 1 + round % 2).unwrap();
        p.read_all_and_check(if round % 2 == 0 { 32 } else { 1 });
    }
    p.a.shutdown();
    p.b.shutdown();
}
