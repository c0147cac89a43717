//! The soft RDMA fabric: QP rules, data movement, errors and injected faults.
//! Each test uses its own device names so faults stay local to it.

mod soft_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use soft_support::*;
use transfer_engine::transport::rdma::verbs::soft::{fault, SoftProvider};
use transfer_engine::transport::rdma::verbs::*;

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

/// What selective signaling relies on (rxe does the same,
/// `tests/verbs_rxe.rs`): an unsignaled WR that fails completes anyway,
/// every WR after it flushes with a completion, and the unsignaled WRs
/// before it landed without one.
#[test]
fn an_unsignaled_wr_that_fails_completes_and_the_rest_flush() {
    let (_p, a, b) = pair(["us0", "us1"]);
    let mut src: Vec<u8> = (0..4096u32).map(|i| (i * 13) as u8).collect();
    let mut dst = vec![0u8; 4096];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let wrs: Vec<WorkRequest> = (0..4u64)
        .map(|i| {
            let mut w = wr(
                i,
                Opcode::Write,
                &*src_mr,
                i * 1024,
                &*dst_mr,
                i * 1024,
                1024,
            );
            w.signaled = i == 3;
            if i == 2 {
                w.rkey ^= 0x00ff_ff00;
            }
            w
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
    let wcs = wait_wcs(&a.cq, 2);
    assert_eq!(
        wcs.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        [
            (2, WcStatus::RemoteAccessError),
            (3, WcStatus::WrFlushError)
        ]
    );
    std::thread::sleep(Duration::from_millis(50));
    assert!(
        a.cq.poll(8).unwrap().is_empty(),
        "no completion for WRs 0, 1"
    );
    drop((src_mr, dst_mr));
    assert_eq!(dst[..2048], src[..2048], "the unsignaled WRs landed");
    assert_eq!(dst[2048..], [0u8; 2048], "nothing after the failed WR");
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
