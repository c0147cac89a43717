//! Retransmission and the responder's checks on the soft fabric, as a NIC
//! (Linux rxe) behaves: a WR whose packets are lost (responder not ready,
//! not connected back to the sender, unreachable, dropped) is retransmitted
//! after each local ACK timeout (4.096 µs × 2^`timeout`) up to `retry_cnt`
//! times, then completes `RetryExceeded` with the sender QP in ERR.
//! Each test uses its own device names so counters and faults stay local.

mod soft_support;

use std::time::{Duration, Instant};

use soft_support::*;
use transfer_engine::transport::rdma::verbs::soft::{fault, SoftProvider};
use transfer_engine::transport::rdma::verbs::*;

#[test]
fn wr_to_peer_that_never_gets_ready_exhausts_retries_then_flushes() {
    let p = SoftProvider::with_devices(&["lost0", "lost1"]);
    let a = side(&p, "lost0", 16, 8);
    let b = side(&p, "lost1", 16, 8);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    connect_one(&a, &b);
    let mut src = vec![5u8; 64];
    let mut dst = vec![0u8; 64];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let started = Instant::now();
    a.qp.post_send(&[
        wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 64),
        wr(2, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 64),
    ])
    .unwrap();
    let wcs = wait_wcs(&a.cq, 2);
    // One transmission and retry_cnt retransmissions, each waiting one
    // local ACK timeout.
    let budget = ack_timeout() * (FAST.retry_cnt as u32 + 1);
    assert!(started.elapsed() >= budget, "{:?}", started.elapsed());
    assert_eq!(fault::retransmits("lost0").unwrap(), FAST.retry_cnt as u64);
    assert_eq!(wcs[0].wr_id, 1);
    assert_eq!(wcs[0].status, WcStatus::RetryExceeded);
    assert_eq!(wcs[1].wr_id, 2);
    assert_eq!(wcs[1].status, WcStatus::WrFlushError);
    assert_eq!(a.qp.state(), QpState::Err);
    // Later WRs on the ERR QP are accepted and flushed.
    a.qp.post_send(&[wr(3, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 64)])
        .unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::WrFlushError);
    // The peer getting ready after the retry budget revives nothing.
    b.qp.modify_to_rtr(&rtr_to(&a, &b)).unwrap();
    std::thread::sleep(budget);
    assert_eq!(a.cq.poll(8).unwrap(), vec![]);
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![0u8; 64]);
}

#[test]
fn peer_ready_within_the_retry_budget_gets_every_wr_in_order() {
    let p = SoftProvider::with_devices(&["late0", "late1"]);
    let a = side(&p, "late0", 16, 8);
    let b = side(&p, "late1", 16, 8);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    // 8 transmissions 16.8 ms apart (4.096 µs × 2^12): RTR lands after ~2.
    let patient = RtsAttrs {
        timeout: 12,
        retry_cnt: 7,
        ..FAST
    };
    connect_with(&a, &b, &patient);
    let mut src: Vec<u8> = (0..256u32).map(|i| i as u8).collect();
    let mut dst = vec![0u8; 256];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let wrs: Vec<_> = (0..4u64)
        .map(|i| {
            wr(
                10 + i,
                Opcode::Write,
                &*src_mr,
                i * 64,
                &*dst_mr,
                i * 64,
                64,
            )
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
    std::thread::sleep(Duration::from_nanos(4096 << patient.timeout) * 2);
    assert_eq!(a.cq.poll(8).unwrap(), vec![], "nothing completes yet");
    b.qp.modify_to_rtr(&rtr_to(&a, &b)).unwrap();
    let wcs = wait_wcs(&a.cq, 4);
    assert_eq!(
        wcs.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        (10..14).map(|i| (i, WcStatus::Success)).collect::<Vec<_>>()
    );
    let n = fault::retransmits("late0").unwrap();
    assert!((1..=7).contains(&n), "retransmitted {n} times");
    assert_eq!(a.qp.state(), QpState::Rts);
    drop((src_mr, dst_mr));
    assert_eq!(dst, src);
}

#[test]
fn zero_timeout_waits_forever_until_the_qp_is_moved_to_err() {
    let p = SoftProvider::with_devices(&["inf0", "inf1"]);
    let a = side(&p, "inf0", 16, 8);
    let b = side(&p, "inf1", 16, 8);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    connect_with(&a, &b, &RtsAttrs { timeout: 0, ..FAST });
    let mut src = vec![1u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*src_mr, 0, 16)])
        .unwrap();
    std::thread::sleep(ack_timeout() * 10);
    assert_eq!(a.cq.poll(8).unwrap(), vec![]);
    assert_eq!(fault::retransmits("inf0").unwrap(), 0);
    a.qp.modify_to_err().unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::WrFlushError);
    // Out-of-range attributes are refused, as the wire fields are 5 and 3 bits.
    let c = side(&p, "inf0", 4, 4);
    c.qp.modify_to_init(&InitAttrs::default()).unwrap();
    c.qp.modify_to_rtr(&rtr_to(&b, &c)).unwrap();
    for bad in [
        RtsAttrs {
            timeout: 32,
            ..FAST
        },
        RtsAttrs {
            retry_cnt: 8,
            ..FAST
        },
    ] {
        let e = c.qp.modify_to_rts(&bad).unwrap_err();
        assert!(e.to_string().contains("rtr→rts: EINVAL"), "{e}");
    }
    assert_eq!(c.qp.state(), QpState::Rtr);
}

/// `a` writes 16 bytes to `b` and waits for the completion.
fn write_status(a: &Side, b: &Side) -> (WcStatus, Vec<u8>) {
    let mut src = vec![7u8; 16];
    let mut dst = vec![0u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16)])
        .unwrap();
    let st = wait_wcs(&a.cq, 1)[0].status;
    drop((src_mr, dst_mr));
    (st, dst)
}

#[test]
fn responder_accepts_only_a_qp_connected_back_to_the_sender() {
    let p = SoftProvider::with_devices(&["cb0", "cb1", "cb2"]);
    // b's QP points at another QP (c) of a's device: a's WRs are dropped.
    let (a, b, c) = (
        side(&p, "cb0", 8, 4),
        side(&p, "cb1", 8, 4),
        side(&p, "cb0", 8, 4),
    );
    connect_one(&a, &b);
    connect_one(&b, &c);
    assert_eq!(
        write_status(&a, &b),
        (WcStatus::RetryExceeded, vec![0u8; 16])
    );
    assert_eq!(fault::retransmits("cb0").unwrap(), FAST.retry_cnt as u64);

    // b's QP points at a's QP number but at another device's GID.
    let (a, b, other) = (
        side(&p, "cb0", 8, 4),
        side(&p, "cb1", 8, 4),
        side(&p, "cb2", 8, 4),
    );
    connect_one(&a, &b);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    b.qp.modify_to_rtr(&RtrAttrs {
        dest_qp_num: a.qp.qp_num(),
        ..rtr_to(&other, &b)
    })
    .unwrap();
    assert_eq!(
        write_status(&a, &b),
        (WcStatus::RetryExceeded, vec![0u8; 16])
    );

    // a addresses b's link-local GID while b's QP is bound to its routable one.
    let (a, b) = (side(&p, "cb0", 8, 4), side(&p, "cb1", 8, 4));
    connect_one(&b, &a);
    a.qp.modify_to_init(&InitAttrs::default()).unwrap();
    let ll = p
        .open(
            "cb1",
            &OpenOptions {
                port: 1,
                gid_index: Some(0),
            },
        )
        .unwrap()
        .port_info()
        .gid;
    a.qp.modify_to_rtr(&RtrAttrs {
        dgid: ll,
        ..rtr_to(&b, &a)
    })
    .unwrap();
    a.qp.modify_to_rts(&FAST).unwrap();
    assert_eq!(
        write_status(&a, &b),
        (WcStatus::RetryExceeded, vec![0u8; 16])
    );

    // Connected both ways: the same write lands.
    let (a, b) = (side(&p, "cb0", 8, 4), side(&p, "cb1", 8, 4));
    connect_one(&a, &b);
    connect_one(&b, &a);
    assert_eq!(write_status(&a, &b), (WcStatus::Success, vec![7u8; 16]));
}

#[test]
fn gid_of_another_process_fabric_is_unreachable() {
    let p = SoftProvider::with_devices(&["fx0", "fx1"]);
    let (a, b) = (side(&p, "fx0", 8, 4), side(&p, "fx1", 8, 4));
    connect_one(&b, &a);
    // b's GID as another process's fabric would spell it: same device id
    // and QP number, another nonce and pid.
    let mut foreign = b.ctx.port_info().gid;
    foreign[4] ^= 0x5a;
    foreign[8..12].copy_from_slice(&(std::process::id() ^ 1).to_be_bytes());
    a.qp.modify_to_init(&InitAttrs::default()).unwrap();
    a.qp.modify_to_rtr(&RtrAttrs {
        dgid: foreign,
        ..rtr_to(&b, &a)
    })
    .unwrap();
    a.qp.modify_to_rts(&FAST).unwrap();
    assert_eq!(
        write_status(&a, &b),
        (WcStatus::RetryExceeded, vec![0u8; 16])
    );
    assert_eq!(a.qp.state(), QpState::Err);
}

#[test]
fn a_dropped_packet_is_retransmitted_all_dropped_end_retry_exceeded() {
    let (_p, a, b) = pair(["dp0", "dp1"]);
    let mut src = vec![1u8; 16];
    let mut dst = vec![0u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    // One lost packet: the retransmission gets through.
    fault::drop_next_packets(fault::Scope::Device("dp1"), 1).unwrap();
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16)])
        .unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::Success);
    assert_eq!(fault::retransmits("dp0").unwrap(), 1);
    // Every transmission lost: retry exceeded, QP → ERR, nothing written.
    dst_mr.deregister().unwrap();
    dst.fill(0);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    fault::drop_next_packets(fault::Scope::Device("dp1"), FAST.retry_cnt as u64 + 1).unwrap();
    a.qp.post_send(&[wr(2, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16)])
        .unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::RetryExceeded);
    assert_eq!(a.qp.state(), QpState::Err);
    // Reconnected, A → B works again: the credits were used up.
    a.qp.reset().unwrap();
    connect_one(&a, &b);
    let mut dst2 = vec![0u8; 16];
    let dst2_mr = reg(&b.pd, &mut dst2, Access::ALL);
    a.qp.post_send(&[wr(3, Opcode::Write, &*src_mr, 0, &*dst2_mr, 0, 16)])
        .unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::Success);
    drop((src_mr, dst_mr, dst2_mr));
    assert_eq!(dst, vec![0u8; 16]);
    assert_eq!(dst2, vec![1u8; 16]);
}

/// CPU ticks (user + system) of this process's fabric executor thread.
fn executor_ticks() -> u64 {
    for task in std::fs::read_dir("/proc/self/task").unwrap() {
        let dir = task.unwrap().path();
        let comm = std::fs::read_to_string(dir.join("comm")).unwrap_or_default();
        if comm.trim() == "te-soft-rdma" {
            let stat = std::fs::read_to_string(dir.join("stat")).unwrap();
            // Fields after the ")" that ends the name: utime and stime are
            // the 12th and 13th.
            let after = &stat[stat.rfind(')').unwrap() + 2..];
            let f: Vec<&str> = after.split(' ').collect();
            return f[11].parse::<u64>().unwrap() + f[12].parse::<u64>().unwrap();
        }
    }
    panic!("no te-soft-rdma thread");
}

#[test]
fn waiting_for_a_retransmit_timer_does_not_spin() {
    let p = SoftProvider::with_devices(&["spin0", "spin1"]);
    let a = side(&p, "spin0", 8, 4);
    let b = side(&p, "spin1", 8, 4);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    // 4.096 µs × 2^18 = 1.07 s between transmissions.
    connect_with(
        &a,
        &b,
        &RtsAttrs {
            timeout: 18,
            ..FAST
        },
    );
    let mut src = vec![1u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*src_mr, 0, 16)])
        .unwrap();
    let before = executor_ticks();
    std::thread::sleep(Duration::from_millis(600));
    let spent = executor_ticks() - before;
    // A spinning executor burns ~60 ticks (at 100 Hz) in 600 ms.
    assert!(spent <= 10, "executor used {spent} ticks while waiting");
    assert_eq!(a.cq.poll(4).unwrap(), vec![]);
    a.qp.modify_to_err().unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::WrFlushError);
}

/// Linux rxe never counts down a retry_cnt of 7 (rxe_comp.c), so with
/// Mooncake's value a WR to a QP that never answers is retransmitted forever
/// there; the fabric can emulate that. (Sole user of the knob in this binary.)
#[test]
fn rxe_emulation_retransmits_forever_at_retry_cnt_7() {
    let p = SoftProvider::with_devices(&["rxe0", "rxe1"]);
    let a = side(&p, "rxe0", 8, 4);
    let b = side(&p, "rxe1", 8, 4);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    fault::emulate_rxe_retry7(true);
    connect_with(
        &a,
        &b,
        &RtsAttrs {
            retry_cnt: 7,
            ..FAST
        },
    );
    let (mut src, mut dst) = (vec![3u8; 16], vec![0u8; 16]);
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16)])
        .unwrap();
    // Far past the spec's 8 transmissions: still retransmitting.
    let deadline = Instant::now() + Duration::from_secs(10);
    while fault::retransmits("rxe0").unwrap() < 12 {
        assert!(Instant::now() < deadline, "retransmission stopped");
        std::thread::sleep(ack_timeout());
    }
    fault::emulate_rxe_retry7(false);
    assert_eq!(a.cq.poll(4).unwrap(), vec![]);
    // The peer finally gets ready: the WR lands.
    b.qp.modify_to_rtr(&rtr_to(&a, &b)).unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::Success);
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![3u8; 16]);
}
