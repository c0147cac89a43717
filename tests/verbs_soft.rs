//! The soft RDMA fabric: QP rules, data movement, errors and injected faults.
//! Each test uses its own device names so faults stay local to it.

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::transport::rdma::verbs::soft::{fault, SoftProvider};
use transfer_engine::transport::rdma::verbs::*;

struct Side {
    ctx: Arc<dyn Context>,
    pd: Arc<dyn Pd>,
    cq: Arc<dyn Cq>,
    qp: Arc<dyn Qp>,
}

fn side(p: &SoftProvider, dev: &str, cq_depth: usize, max_wr: u32) -> Side {
    let ctx = p.open(dev, &OpenOptions::default()).unwrap();
    let pd = ctx.alloc_pd().unwrap();
    let cq = ctx.create_cq(cq_depth).unwrap();
    let caps = QpCaps {
        max_send_wr: max_wr,
        ..QpCaps::default()
    };
    let qp = pd.create_qp(&cq, &caps).unwrap();
    Side { ctx, pd, cq, qp }
}

fn rtr_to(peer: &Side, local: &Side) -> RtrAttrs {
    RtrAttrs {
        dest_qp_num: peer.qp.qp_num(),
        dgid: peer.ctx.port_info().gid,
        dlid: peer.ctx.port_info().lid,
        path_mtu: 4096,
        sgid_index: local.ctx.port_info().gid_index,
        ..RtrAttrs::default()
    }
}

/// RTS attributes of the tests: a 4.19 ms local ACK timeout (4.096 µs ×
/// 2^10), 3 retransmissions.
const FAST: RtsAttrs = RtsAttrs {
    timeout: 10,
    retry_cnt: 3,
    rnr_retry: 7,
    sq_psn: 0,
    max_rd_atomic: 16,
};

fn ack_timeout() -> Duration {
    Duration::from_nanos(4096 << FAST.timeout)
}

fn connect_one(local: &Side, peer: &Side) {
    connect_with(local, peer, &FAST);
}

fn connect_with(local: &Side, peer: &Side, rts: &RtsAttrs) {
    local.qp.modify_to_init(&InitAttrs::default()).unwrap();
    local.qp.modify_to_rtr(&rtr_to(peer, local)).unwrap();
    local.qp.modify_to_rts(rts).unwrap();
}

fn pair(devs: [&str; 2]) -> (SoftProvider, Side, Side) {
    let p = SoftProvider::with_devices(&devs);
    let a = side(&p, devs[0], 64, 16);
    let b = side(&p, devs[1], 64, 16);
    connect_one(&a, &b);
    connect_one(&b, &a);
    (p, a, b)
}

/// Poll until `n` completions arrived (bounded).
fn wait_wcs(cq: &Arc<dyn Cq>, n: usize) -> Vec<WorkCompletion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(cq.poll(n - out.len()).unwrap());
        assert!(Instant::now() < deadline, "timed out with {out:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

fn reg(pd: &Arc<dyn Pd>, buf: &mut [u8], access: Access) -> Box<dyn Mr> {
    // SAFETY: every test keeps `buf` alive until the region is dropped.
    unsafe { pd.reg_mr(buf.as_mut_ptr() as u64, buf.len(), access) }.unwrap()
}

fn wr(
    id: u64,
    op: Opcode,
    local: &dyn Mr,
    loff: u64,
    remote: &dyn Mr,
    roff: u64,
    len: u32,
) -> WorkRequest {
    WorkRequest {
        wr_id: id,
        opcode: op,
        local_addr: local.addr() + loff,
        length: len,
        lkey: local.lkey(),
        remote_addr: remote.addr() + roff,
        rkey: remote.rkey(),
        signaled: true,
    }
}

#[test]
fn devices_have_unique_routable_gids() {
    let p = SoftProvider::with_devices(&["g0", "g1"]);
    let d = p.devices().unwrap();
    assert_eq!(d.len(), 2);
    assert!(d
        .iter()
        .all(|d| d.port_active && d.active_mtu == 4096 && d.lid == 0));
    assert_ne!(d[0].gid, d[1].gid);
    // The automatic ranking skips the link-local GID at index 0.
    assert_eq!(d[0].gid_index, 1);
    // fd73:6f66:<nonce>:<pid>:<device>: the GID names this process.
    assert_eq!(&d[0].gid[..4], &[0xfd, 0x73, 0x6f, 0x66]);
    assert_eq!(&d[0].gid[8..12], &std::process::id().to_be_bytes());
    assert_eq!(d[0].gid[..12], d[1].gid[..12]);
    let err = p.open("nope", &OpenOptions::default()).err().unwrap();
    assert_eq!(err.err_code(), -6);
    let explicit = p
        .open(
            "g0",
            &OpenOptions {
                port: 1,
                gid_index: Some(0),
            },
        )
        .unwrap();
    assert_eq!(explicit.port_info().gid[0], 0xfe);
    assert!(p
        .open(
            "g0",
            &OpenOptions {
                port: 1,
                gid_index: Some(9)
            }
        )
        .is_err());
}

#[test]
fn qp_state_machine_refuses_invalid_transitions() {
    let p = SoftProvider::with_devices(&["st0", "st1"]);
    let a = side(&p, "st0", 8, 4);
    let b = side(&p, "st1", 8, 4);
    assert_eq!(a.qp.state(), QpState::Reset);
    let e = a.qp.modify_to_rtr(&rtr_to(&b, &a)).unwrap_err();
    assert!(
        e.to_string().contains("ibv_modify_qp: reset→rtr: EINVAL"),
        "{e}"
    );
    assert!(a.qp.modify_to_rts(&RtsAttrs::default()).is_err());
    a.qp.modify_to_init(&InitAttrs::default()).unwrap();
    assert!(a.qp.modify_to_rts(&RtsAttrs::default()).is_err());
    a.qp.modify_to_rtr(&rtr_to(&b, &a)).unwrap();
    assert_eq!(a.qp.state(), QpState::Rtr);
    // Not in RTS yet: posting is refused.
    let mut buf = vec![0u8; 8];
    let mr = reg(&a.pd, &mut buf, Access::ALL);
    let err =
        a.qp.post_send(&[wr(1, Opcode::Write, &*mr, 0, &*mr, 0, 8)])
            .unwrap_err();
    assert_eq!(err.posted, 0);
    assert!(
        err.error.to_string().contains("ibv_post_send"),
        "{}",
        err.error
    );
    a.qp.modify_to_rts(&RtsAttrs::default()).unwrap();
    assert!(a.qp.modify_to_rtr(&rtr_to(&b, &a)).is_err());
    a.qp.modify_to_err().unwrap();
    assert!(a.qp.modify_to_rts(&RtsAttrs::default()).is_err());
    a.qp.reset().unwrap();
    assert_eq!(a.qp.state(), QpState::Reset);
    a.qp.modify_to_init(&InitAttrs::default()).unwrap();
    assert_ne!(a.qp.qp_num(), b.qp.qp_num());
}

#[test]
fn write_and_read_move_bytes_in_order() {
    let (_p, a, b) = pair(["rw0", "rw1"]);
    let mut src: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
    let mut dst = vec![0u8; 4096];
    let mut back = vec![0u8; 4096];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let back_mr = reg(&a.pd, &mut back, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let wrs: Vec<WorkRequest> = (0..4)
        .map(|i| {
            wr(
                100 + i,
                Opcode::Write,
                &*src_mr,
                i * 1024,
                &*dst_mr,
                i * 1024,
                1024,
            )
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
    let wcs = wait_wcs(&a.cq, 4);
    assert_eq!(
        wcs.iter().map(|w| w.wr_id).collect::<Vec<_>>(),
        vec![100, 101, 102, 103]
    );
    assert!(wcs
        .iter()
        .all(|w| w.status == WcStatus::Success && w.byte_len == 1024));
    assert!(wcs
        .iter()
        .all(|w| w.qp_num == a.qp.qp_num() && w.opcode == Opcode::Write));
    drop(dst_mr);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    a.qp.post_send(&[wr(7, Opcode::Read, &*back_mr, 0, &*dst_mr, 0, 4096)])
        .unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!(
        (wc.wr_id, wc.status, wc.opcode),
        (7, WcStatus::Success, Opcode::Read)
    );
    drop((src_mr, back_mr, dst_mr));
    assert_eq!(dst, src);
    assert_eq!(back, src);
}

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
        .map(|i| wr(10 + i, Opcode::Write, &*src_mr, i * 64, &*dst_mr, i * 64, 64))
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
        RtsAttrs { timeout: 32, ..FAST },
        RtsAttrs { retry_cnt: 8, ..FAST },
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
    let (a, b, c) = (side(&p, "cb0", 8, 4), side(&p, "cb1", 8, 4), side(&p, "cb0", 8, 4));
    connect_one(&a, &b);
    connect_one(&b, &c);
    assert_eq!(write_status(&a, &b), (WcStatus::RetryExceeded, vec![0u8; 16]));
    assert_eq!(fault::retransmits("cb0").unwrap(), FAST.retry_cnt as u64);

    // b's QP points at a's QP number but at another device's GID.
    let (a, b, other) = (side(&p, "cb0", 8, 4), side(&p, "cb1", 8, 4), side(&p, "cb2", 8, 4));
    connect_one(&a, &b);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    b.qp.modify_to_rtr(&RtrAttrs {
        dest_qp_num: a.qp.qp_num(),
        ..rtr_to(&other, &b)
    })
    .unwrap();
    assert_eq!(write_status(&a, &b), (WcStatus::RetryExceeded, vec![0u8; 16]));

    // a addresses b's link-local GID while b's QP is bound to its routable one.
    let (a, b) = (side(&p, "cb0", 8, 4), side(&p, "cb1", 8, 4));
    connect_one(&b, &a);
    a.qp.modify_to_init(&InitAttrs::default()).unwrap();
    let ll = p
        .open("cb1", &OpenOptions { port: 1, gid_index: Some(0) })
        .unwrap()
        .port_info()
        .gid;
    a.qp.modify_to_rtr(&RtrAttrs { dgid: ll, ..rtr_to(&b, &a) }).unwrap();
    a.qp.modify_to_rts(&FAST).unwrap();
    assert_eq!(write_status(&a, &b), (WcStatus::RetryExceeded, vec![0u8; 16]));

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
    a.qp.modify_to_rtr(&RtrAttrs { dgid: foreign, ..rtr_to(&b, &a) }).unwrap();
    a.qp.modify_to_rts(&FAST).unwrap();
    assert_eq!(write_status(&a, &b), (WcStatus::RetryExceeded, vec![0u8; 16]));
    assert_eq!(a.qp.state(), QpState::Err);
}

#[test]
fn bad_rkey_and_out_of_bounds_are_remote_access_errors() {
    let (_p, a, b) = pair(["rk0", "rk1"]);
    let mut src = vec![1u8; 256];
    let mut dst = vec![0u8; 128];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    // Remote range runs past the end of the region.
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 64, 128)])
        .unwrap();
    let wcs = wait_wcs(&a.cq, 1);
    assert_eq!(wcs[0].status, WcStatus::RemoteAccessError);
    assert_eq!(a.qp.state(), QpState::Err);

    let (_p, c, d) = pair(["rk2", "rk3"]);
    let mut ro = vec![0u8; 128];
    let src2 = reg(&c.pd, &mut src, Access::ALL);
    let ro_mr = reg(&d.pd, &mut ro, Access::LOCAL_WRITE | Access::REMOTE_READ);
    let mut bad = wr(2, Opcode::Write, &*src2, 0, &*ro_mr, 0, 16);
    c.qp.post_send(&[bad]).unwrap();
    assert_eq!(wait_wcs(&c.cq, 1)[0].status, WcStatus::RemoteAccessError);
    // An rkey from the wrong device is refused too.
    let (_p, e, f) = pair(["rk4", "rk5"]);
    let src3 = reg(&e.pd, &mut src, Access::ALL);
    bad = wr(3, Opcode::Write, &*src3, 0, &*src3, 0, 16);
    e.qp.post_send(&[bad]).unwrap();
    assert_eq!(wait_wcs(&e.cq, 1)[0].status, WcStatus::RemoteAccessError);
    let _ = f;
    drop((src_mr, dst_mr, src2, ro_mr, src3));
    assert_eq!(dst, vec![0u8; 128]);
    assert_eq!(ro, vec![0u8; 128]);
}

#[test]
fn bad_lkey_is_local_protection_error() {
    let (_p, a, b) = pair(["lk0", "lk1"]);
    let mut src = vec![1u8; 64];
    let mut dst = vec![0u8; 64];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let mut w = wr(9, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 64);
    w.lkey ^= 0x00ff_0000;
    a.qp.post_send(&[w]).unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!(wc.status, WcStatus::LocalProtectionError);
    assert!(wc.status.is_local_fault());
    assert_eq!(a.qp.state(), QpState::Err);
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![0u8; 64]);
}

#[test]
fn device_down_fails_wrs_and_raises_async_events() {
    let (_p, a, b) = pair(["dn0", "dn1"]);
    let mut src = vec![3u8; 32];
    let mut dst = vec![0u8; 32];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    assert_eq!(b.ctx.poll_async_event().unwrap(), None);
    fault::port_down("dn1", false).unwrap();
    let ev = b.ctx.poll_async_event().unwrap().unwrap();
    assert_eq!(ev.kind, AsyncEventKind::PortErr);
    assert!(!b.ctx.query_port().unwrap().active);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 32)])
        .unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::RetryExceeded);
    fault::port_up("dn1").unwrap();
    assert_eq!(
        b.ctx.poll_async_event().unwrap().unwrap().kind,
        AsyncEventKind::PortActive
    );
    assert!(b.ctx.query_port().unwrap().active);
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![0u8; 32]);
}

#[test]
fn delayed_rtr_and_injected_modify_failure() {
    let p = SoftProvider::with_devices(&["dl0", "dl1"]);
    let a = side(&p, "dl0", 8, 4);
    let b = side(&p, "dl1", 8, 4);
    fault::delay_transition(
        fault::Scope::Device("dl1"),
        QpState::Rtr,
        Some(Duration::from_millis(100)),
    )
    .unwrap();
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    let t = Instant::now();
    b.qp.modify_to_rtr(&rtr_to(&a, &b)).unwrap();
    assert!(t.elapsed() >= Duration::from_millis(100));
    assert_eq!(b.qp.state(), QpState::Rtr);
    fault::fail_next_modify(fault::Scope::Device("dl1"), libc::ETIMEDOUT).unwrap();
    let e = b.qp.modify_to_rts(&RtsAttrs::default()).unwrap_err();
    assert!(
        e.to_string().contains("ibv_modify_qp: rtr→rts: ETIMEDOUT"),
        "{e}"
    );
    assert_eq!(b.qp.state(), QpState::Rtr);
    b.qp.modify_to_rts(&RtsAttrs::default()).unwrap();
    fault::clear(fault::Scope::Device("dl1")).unwrap();
    connect_one(&a, &b);
    // Both sides up: traffic flows.
    let mut src = vec![4u8; 16];
    let mut dst = vec![0u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16)])
        .unwrap();
    assert_eq!(wait_wcs(&a.cq, 1)[0].status, WcStatus::Success);
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![4u8; 16]);
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

#[test]
fn send_queue_and_cq_depth_are_enforced() {
    let p = SoftProvider::with_devices(&["cq0", "cq1"]);
    let a = side(&p, "cq0", 2, 4);
    let b = side(&p, "cq1", 8, 4);
    connect_one(&a, &b);
    connect_one(&b, &a);
    let mut src = vec![1u8; 16];
    let mut dst = vec![0u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let wrs: Vec<_> = (0..6)
        .map(|i| wr(i, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16))
        .collect();
    let err = a.qp.post_send(&wrs).unwrap_err();
    assert_eq!(err.posted, 4, "{}", err.error);
    assert_eq!(err.errno, libc::ENOMEM);
    // 4 completions into a CQ of 2: it overflows, poll errors, CQ_ERR raised.
    let deadline = Instant::now() + Duration::from_secs(5);
    let mut saw_event = false;
    while Instant::now() < deadline && !saw_event {
        saw_event = matches!(a.ctx.poll_async_event().unwrap(), Some(ev) if ev.kind == AsyncEventKind::CqErr);
        std::thread::sleep(Duration::from_millis(2));
    }
    assert!(saw_event);
    assert!(a.cq.poll(8).is_err());
    assert_eq!(a.cq.capacity(), 2);
    drop((src_mr, dst_mr));
}

#[test]
fn reset_discards_and_frees_the_send_queue() {
    let p = SoftProvider::with_devices(&["rs0", "rs1"]);
    let a = side(&p, "rs0", 16, 2);
    let b = side(&p, "rs1", 16, 2);
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    connect_one(&a, &b);
    let mut src = vec![1u8; 16];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let w = wr(1, Opcode::Write, &*src_mr, 0, &*src_mr, 0, 16);
    a.qp.post_send(&[w, w]).unwrap();
    assert_eq!(a.qp.post_send(&[w]).unwrap_err().posted, 0);
    a.qp.reset().unwrap();
    connect_one(&a, &b);
    // Slots are free again; nothing from before the reset completes.
    assert_eq!(a.cq.poll(8).unwrap(), vec![]);
    b.qp.modify_to_rtr(&rtr_to(&a, &b)).unwrap();
    let mut dst = vec![0u8; 16];
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    a.qp.post_send(&[wr(5, Opcode::Write, &*src_mr, 0, &*dst_mr, 0, 16)])
        .unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!((wc.wr_id, wc.status), (5, WcStatus::Success));
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![1u8; 16]);
}

#[test]
fn many_threads_post_concurrently() {
    let (_p, a, b) = pair(["mt0", "mt1"]);
    let a = Arc::new(a);
    let mut src = vec![9u8; 1 << 16];
    let mut dst = vec![0u8; 1 << 16];
    let src_mr: Arc<dyn Mr> = Arc::from(reg(&a.pd, &mut src, Access::ALL));
    let dst_mr: Arc<dyn Mr> = Arc::from(reg(&b.pd, &mut dst, Access::ALL));
    let threads: Vec<_> = (0..4u64)
        .map(|t| {
            let (a, s, d) = (a.clone(), src_mr.clone(), dst_mr.clone());
            std::thread::spawn(move || {
                for i in 0..4u64 {
                    let off = (t * 4 + i) * 4096;
                    loop {
                        match a.qp.post_send(&[wr(
                            t * 100 + i,
                            Opcode::Write,
                            &*s,
                            off,
                            &*d,
                            off,
                            4096,
                        )]) {
                            Ok(()) => break,
                            Err(e) if e.errno == libc::ENOMEM => {
                                std::thread::sleep(Duration::from_millis(1))
                            }
                            Err(e) => panic!("{}", e.error),
                        }
                    }
                }
            })
        })
        .collect();
    let poller = {
        let a = a.clone();
        std::thread::spawn(move || wait_wcs(&a.cq, 16))
    };
    for t in threads {
        t.join().unwrap();
    }
    let wcs = poller.join().unwrap();
    assert!(wcs.iter().all(|w| w.status == WcStatus::Success));
    drop((src_mr, dst_mr));
    assert_eq!(dst, src);
}
