//! Ready-ACK gating end to end: waiting for the ACK costs no retry, a
//! ready-ACK timeout costs one; with randomized delays on the active side's
//! RTR/RTS no WR is lost while the gate is on, and the same scenario loses
//! WRs when the active side acts as a legacy peer (no `ready_ack` key).
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

/// Rounds of fresh engine pairs with a random RTR/RTS delay on the active
/// side; returns the passive side's error completions summed over rounds.
fn race_rounds(legacy: bool, rounds: u32) -> u64 {
    fault::set_retry_timeout(Duration::from_millis(20));
    let mut lost = 0;
    let mut seed = 0x1234_5678u32 ^ legacy as u32;
    for r in 0..rounds {
        seed = seed.wrapping_mul(1_103_515_245).wrapping_add(12345);
        let rtr = Duration::from_millis(80 + (seed >> 16) as u64 % 120);
        let rts = Duration::from_millis((seed >> 8) as u64 % 40);
        let vars: &[(&str, &str)] = if legacy {
            &[("MC_TE_RS_LEGACY_HANDSHAKE", "1")]
        } else {
            &[]
        };
        let a = engine_with(&["race0"], vars);
        let b = rdma_engine(&["race1"]);
        // After install: the fabric creates the device when it is opened.
        fault::delay_transition(Scope::Device("race0"), QpState::Rtr, Some(rtr)).unwrap();
        fault::delay_transition(Scope::Device("race0"), QpState::Rts, Some(rts)).unwrap();
        let (st, ok) = cross_write(&a, &b, 256 << 10, r as u8);
        fault::clear(Scope::Device("race0")).unwrap();
        let errs = counter(&b, "error_completions");
        if !legacy {
            assert!(
                st.iter().all(|s| *s == TaskStatus::Completed),
                "round {r}: {st:?}"
            );
            assert!(ok, "round {r}: bytes differ");
            assert_eq!(errs, 0, "round {r}: gate on, yet WRs were lost");
            assert_eq!(counter(&b, "retries"), 0, "round {r}");
        }
        lost += errs;
        a.shutdown();
        b.shutdown();
    }
    lost
}

#[test]
fn active_side_delays_lose_nothing_with_the_gate_and_lose_wrs_without() {
    let _g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    assert_eq!(race_rounds(false, 4), 0);
    let lost = race_rounds(true, 3);
    assert!(lost > 0, "legacy mode must show the race (lost WRs)");
}
