//! Reconnect-storm protection (beyond upstream; Mooncake issue #3299): a
//! peer whose handshakes always fail gets a bounded number of handshake
//! attempts, its tasks fail in bounded time, and a healthy peer in the same
//! batches is unaffected.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::{Opcode, TaskStatus};

const MAX_ATTEMPTS: u64 = 3;

#[test]
fn unreachable_peer_gets_bounded_handshakes_healthy_peer_completes() {
    // Own test binary: the backoff settings are process-wide.
    std::env::set_var("MC_TE_RS_HANDSHAKE_MAX_ATTEMPTS", MAX_ATTEMPTS.to_string());
    std::env::set_var("MC_TE_RS_HANDSHAKE_WINDOW_SECS", "600");
    std::env::set_var("MC_TE_RS_HANDSHAKE_BACKOFF_MS", "20");
    // The cap is what this test is about: do not let the gone-peer fast
    // path (tests/rdma_peer_gone.rs) fail the slices before it bites.
    std::env::set_var("MC_TE_RS_RDMA_DEAD_HOLD_MS", "0");
    let len = 1usize << 20;
    // The dead peer went away after we cached its descriptor: every
    // handshake RPC to it fails.
    let DeadAndGood {
        a,
        good,
        src,
        dead_dst,
        good_dst,
        sd,
        sg,
    } = DeadAndGood::new(31, len);

    let rounds = 6u64;
    let chunk = len as u64 / rounds;
    for round in 0..rounds {
        let off = round * chunk;
        let reqs = vec![
            req(
                Opcode::Write,
                src.addr() + off,
                sd,
                dead_dst.addr() + off,
                chunk,
            ),
            req(
                Opcode::Write,
                src.addr() + off,
                sg,
                good_dst.addr() + off,
                chunk,
            ),
            req(
                Opcode::Write,
                src.addr() + off,
                sd,
                dead_dst.addr() + off,
                chunk,
            ),
        ];
        // Bounded: run_batch panics if a task is not terminal in time.
        let st = run_batch(&a, &reqs, Duration::from_secs(30));
        let got: Vec<_> = st.iter().map(|s| s.status).collect();
        assert_eq!(
            got,
            vec![
                TaskStatus::Failed,
                TaskStatus::Completed,
                TaskStatus::Failed
            ],
            "round {round}"
        );
    }
    let n = (rounds * chunk) as usize;
    assert!(good_dst.0[..n] == src.0[..n], "healthy peer got every byte");
    assert!(dead_dst.0.iter().all(|&x| x == 0));
    // One handshake to the healthy peer, at most MAX_ATTEMPTS to the dead
    // one (without pacing every round would hand-shake again: rail pauses
    // alone allow 5 per batch).
    let attempts = counter(&a, "handshake_attempts");
    assert_eq!(
        attempts,
        1 + MAX_ATTEMPTS,
        "handshake attempts: {}",
        links(&a)
    );
    assert!(counter(&a, "handshakes_capped") >= 1);
    a.shutdown();
    good.shutdown();
}
