//! A peer whose process is gone (its RPC port refuses): the first refused
//! handshake marks it gone, and its slices fail at once instead of waiting
//! out a long re-handshake backoff once per retry. A healthy peer in the
//! same batches is unaffected. (On rxe, tests/rxe/suite.py "kill" covers a
//! peer killed with WRs in flight.)

mod rdma_support;

use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::{Opcode, TaskStatus};

#[test]
fn gone_peer_fails_at_once_despite_long_backoff() {
    // Own test binary: the settings are process-wide. Without the fast
    // path each of the 9 retries would wait >= 5 s of backoff.
    std::env::set_var("MC_TE_RS_HANDSHAKE_BACKOFF_MS", "5000");
    std::env::set_var("MC_TE_RS_RDMA_DEAD_HOLD_MS", "60000");
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
    } = DeadAndGood::new(41, len);

    let t0 = Instant::now();
    for round in 0..4u64 {
        let off = round * (len as u64 / 4);
        let n = len as u64 / 4;
        let reqs = vec![
            req(
                Opcode::Write,
                src.addr() + off,
                sd,
                dead_dst.addr() + off,
                n,
            ),
            req(
                Opcode::Write,
                src.addr() + off,
                sg,
                good_dst.addr() + off,
                n,
            ),
        ];
        let st = run_batch(&a, &reqs, Duration::from_secs(30));
        let got: Vec<_> = st.iter().map(|s| s.status).collect();
        assert_eq!(
            got,
            vec![TaskStatus::Failed, TaskStatus::Completed],
            "round {round}"
        );
    }
    // Generous: one refused connect per batch at most, no backoff waits.
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(4), "4 batches took {took:?}");
    assert!(good_dst.0 == src.0, "healthy peer got every byte");
    assert!(dead_dst.0.iter().all(|&x| x == 0));
    // One handshake to each peer: the gone one is not retried while marked.
    assert_eq!(counter(&a, "handshake_attempts"), 2, "{}", links(&a));
    a.shutdown();
    good.shutdown();
}
