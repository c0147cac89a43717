//! Ready-ACK gating end to end: waiting for the ACK costs no retry, a
//! ready-ACK timeout costs one; with randomized delays on the active side's
//! RTR/RTS no WR is lost while the gate is on. When the active side acts as
//! a legacy peer (no `ready_ack` key) the passive side posts before the
//! active QP is ready, and the verdict is what a NIC (Linux rxe) gives: an
//! RTR delay inside the retry budget (local ACK timeout × (retry_cnt + 1))
//! is recovered by retransmission, a longer one ends in retry-exceeded
//! losses.
//!
//! Tests here set per-engine env switches around `install_transport`, so
//! they are serialized.

mod rdma_support;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault::{self, Scope};
use transfer_engine::transport::rdma::verbs::QpState;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

static SERIAL: Mutex<()> = Mutex::new(());

/// An engine whose transport was installed with `vars` set.
fn engine_with(devs: &[&str], vars: &[(&str, &str)]) -> Arc<TransferEngine> {
    soft_env();
    for (k, v) in vars {
        std::env::set_var(k, v);
    }
    let e = rdma_engine(devs);
    for (k, _) in vars {
        std::env::remove_var(k);
    }
    e
}

fn endpoint_states(e: &TransferEngine) -> Vec<String> {
    links(e)["endpoints"]
        .as_array()
        .map(|v| {
            v.iter()
                .map(|x| x["state"].as_str().unwrap_or("").to_string())
                .collect()
        })
        .unwrap_or_default()
}

/// `a` (active) writes to `b`; as soon as `b` has the passive endpoint, `b`
/// writes back to `a` over it. Returns (b's batch statuses, bytes ok).
fn cross_write(
    a: &TransferEngine,
    b: &TransferEngine,
    len: usize,
    seed: u8,
) -> (Vec<TaskStatus>, bool) {
    let a_src = Buf(pattern(seed, len));
    let a_dst = Buf::new(len, 0);
    let b_src = Buf(pattern(seed.wrapping_add(1), len));
    let b_dst = Buf::new(len, 0);
    register(a, &a_src);
    register(a, &a_dst);
    register(b, &b_src);
    register(b, &b_dst);
    let sa = open(b, a);
    let sb = open(a, b);
    let ba = a.allocate_batch_id(1);
    a.submit_transfer(
        ba,
        &[req(
            Opcode::Write,
            a_src.addr(),
            sb,
            b_dst.addr(),
            len as u64,
        )],
        None,
    )
    .unwrap();
    assert!(
        wait_until(Duration::from_secs(10), || !endpoint_states(b).is_empty()),
        "passive endpoint never appeared"
    );
    let n = (len / 4096) as u64;
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            req(
                Opcode::Write,
                b_src.addr() + i * 4096,
                sa,
                a_dst.addr() + i * 4096,
                4096,
            )
        })
        .collect();
    let st = run_batch(b, &reqs, Duration::from_secs(30));
    let sta = wait_batch(a, ba, 1, Duration::from_secs(30));
    a.free_batch_id(ba).unwrap();
    assert_eq!(sta[0].status, TaskStatus::Completed);
    let ok = a_dst.0 == b_src.0 && b_dst.0 == a_src.0;
    for b_ in [&a_src, &a_dst] {
        a.unregister_local_memory(b_.addr()).unwrap();
    }
    for b_ in [&b_src, &b_dst] {
        b.unregister_local_memory(b_.addr()).unwrap();
    }
    (st.iter().map(|s| s.status).collect(), ok)
}

#[test]
fn waiting_for_the_ready_ack_consumes_no_retry() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = engine_with(&["ack0"], &[("MC_TE_RS_TEST_READY_ACK_DELAY_MS", "300")]);
    let b = rdma_engine(&["ack1"]);
    let (st, ok) = cross_write(&a, &b, 64 << 10, 3);
    assert!(st.iter().all(|s| *s == TaskStatus::Completed), "{st:?}");
    assert!(ok);
    assert_eq!(counter(&b, "retries"), 0, "waiting is free");
    assert_eq!(counter(&b, "error_completions"), 0);
    a.shutdown();
    b.shutdown();
}

#[test]
fn ready_ack_timeout_consumes_one_retry_per_slice() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let a = engine_with(&["ack0"], &[("MC_TE_RS_TEST_DROP_READY_ACK", "1")]);
    let b = engine_with(&["ack1"], &[("MC_READY_ACK_TIMEOUT_MS", "200")]);
    let (st, ok) = cross_write(&a, &b, 16 << 10, 7);
    assert!(st.iter().all(|s| *s == TaskStatus::Completed), "{st:?}");
    assert!(ok);
    let slices = 4;
    assert!(
        counter(&b, "retries") >= slices,
        "each waiting slice paid one retry: {}",
        counter(&b, "retries")
    );
    a.shutdown();
    b.shutdown();
}

/// RTS attributes of the race tests: Mooncake's timeout 14 (a local ACK
/// timeout of 4.096 µs × 2^14 = 67 ms) with retry_cnt 6, so a WR to a QP that
/// is not ready is sent 7 times, the last at 6 × 67 = 403 ms, and fails at
/// 470 ms. Not Mooncake's retry_cnt 7: Linux rxe retransmits forever at 7
/// (`rxe_comp.c` never counts 7 down), so only below 7 do rxe, hardware and
/// the soft fabric give the same verdicts.
const RACE_RTS: [(&str, &str); 2] = [("MC_IB_TIMEOUT", "14"), ("MC_IB_RETRY_CNT", "6")];
const LAST_RETRANSMIT: Duration = Duration::from_nanos(6 * (4096 << 14));

/// Active-side transition delays (ms) of the race rounds. The active side
/// brings its 2 QPs (`MC_NUM_QP_PER_EP`) up one after the other, so its
/// last QP is ready `2 × rtr + rts` after it got the peer's reply.
#[derive(Clone, Copy, Debug)]
struct Delays {
    rtr_min: u64,
    rtr_spread: u64,
    rts_max: u64,
}

impl Delays {
    fn first_qp_ready_min(&self) -> Duration {
        Duration::from_millis(self.rtr_min)
    }
    fn last_qp_ready_max(&self) -> Duration {
        Duration::from_millis(2 * (self.rtr_min + self.rtr_spread) + self.rts_max)
    }
}

/// Well inside the retry budget: a retransmission comes after the RTR.
const SHORT: Delays = Delays {
    rtr_min: 20,
    rtr_spread: 30,
    rts_max: 10,
};
/// Well beyond it: every transmission reaches a QP that is not ready.
const LONG: Delays = Delays {
    rtr_min: 650,
    rtr_spread: 50,
    rts_max: 10,
};

/// What the passive side saw over some rounds.
#[derive(Debug, Default)]
struct Verdict {
    /// Error completions (WRs lost for good: retry exceeded).
    lost: u64,
    /// Rounds in which some WR was lost.
    rounds_with_loss: u32,
    /// Retransmissions by the passive side's device.
    retransmits: u64,
    /// Slice retries the passive engine paid.
    retries: u64,
    /// Every task COMPLETED and every byte arrived, in every round.
    all_completed: bool,
}

/// Rounds of fresh engine pairs with a random RTR/RTS delay on the active
/// side (`legacy`: it acts as a peer without the ready ACK).
fn race_rounds(legacy: bool, delays: Delays, rounds: u32) -> Verdict {
    let mut v = Verdict {
        all_completed: true,
        ..Verdict::default()
    };
    let mut seed = 0x1234_5678u32 ^ legacy as u32 ^ delays.rtr_min as u32;
    for r in 0..rounds {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let rtr = Duration::from_millis(delays.rtr_min + (seed >> 16) as u64 % delays.rtr_spread);
        let rts = Duration::from_millis((seed >> 8) as u64 % (delays.rts_max + 1));
        let mut vars = RACE_RTS.to_vec();
        if legacy {
            vars.push(("MC_TE_RS_LEGACY_HANDSHAKE", "1"));
        }
        let a = engine_with(&["race0"], &vars);
        let b = engine_with(&["race1"], &RACE_RTS);
        let before = fault::retransmits("race1").unwrap();
        // After install: the fabric creates the device when it is opened.
        fault::delay_transition(Scope::Device("race0"), QpState::Rtr, Some(rtr)).unwrap();
        fault::delay_transition(Scope::Device("race0"), QpState::Rts, Some(rts)).unwrap();
        let (st, ok) = cross_write(&a, &b, 256 << 10, r as u8);
        fault::clear(Scope::Device("race0")).unwrap();
        let errs = counter(&b, "error_completions");
        v.lost += errs;
        v.rounds_with_loss += (errs > 0) as u32;
        v.retransmits += fault::retransmits("race1").unwrap() - before;
        v.retries += counter(&b, "retries");
        v.all_completed &= ok && st.iter().all(|s| *s == TaskStatus::Completed);
        a.shutdown();
        b.shutdown();
    }
    v
}

#[test]
fn with_the_gate_active_side_delays_lose_nothing_and_cost_nothing() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    for delays in [SHORT, LONG] {
        let v = race_rounds(false, delays, 2);
        assert!(v.all_completed, "{v:?}");
        assert_eq!(v.lost, 0, "gate on, yet WRs were lost: {v:?}");
        assert_eq!(v.retries, 0, "{v:?}");
        assert_eq!(v.retransmits, 0, "the passive side posted too early: {v:?}");
    }
}

#[test]
fn legacy_peer_rtr_delay_inside_the_retry_budget_is_recovered_by_retransmission() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(SHORT.last_qp_ready_max() * 2 < LAST_RETRANSMIT, "{SHORT:?}");
    let v = race_rounds(true, SHORT, 3);
    assert!(v.retransmits > 0, "the race never happened: {v:?}");
    assert_eq!(v.lost, 0, "{v:?}");
    assert!(v.all_completed, "{v:?}");
}

#[test]
fn legacy_peer_rtr_delay_beyond_the_retry_budget_loses_wrs() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert!(
        LONG.first_qp_ready_min() > LAST_RETRANSMIT * 3 / 2,
        "{LONG:?}"
    );
    let rounds = 2;
    let v = race_rounds(true, LONG, rounds);
    assert_eq!(
        v.rounds_with_loss, rounds,
        "retry exceeded every round: {v:?}"
    );
    assert!(v.retransmits >= 6, "retransmitted before giving up: {v:?}");
}
