//! The ibverbs provider on real kernel verbs: SoftRoCE (`rdma_rxe`) devices
//! rxe0 (on veth0, `$RXE_ADDR0`) and rxe1 (on veth1, `$RXE_ADDR1`) in the
//! QEMU guest of `scripts/rdma-vm.sh`. Every test is ignored on the host and
//! fails (never passes) when run with `--ignored` where rxe is missing.
//! Run: `scripts/rdma-vm.sh 'ulimit -l unlimited; verbs_rxe-HASH --ignored
//! --test-threads=1'` (one at a time: the kernel object counts are global).

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::transport::rdma::verbs::*;

/// Completions under TCG emulation take milliseconds; this only bounds "no hang".
const WC_DEADLINE: Duration = Duration::from_secs(30);

fn rxe() -> Arc<dyn Provider> {
    let p = provider_of(ProviderKind::Ibverbs);
    let names: Vec<String> = p
        .devices()
        .expect("listing devices")
        .into_iter()
        .map(|d| d.name)
        .collect();
    assert!(
        names.iter().any(|n| n == "rxe0") && names.iter().any(|n| n == "rxe1"),
        "needs SoftRoCE rxe0 and rxe1 (scripts/rxe-suite.sh runs this in the guest); found {names:?}"
    );
    p
}

/// `::ffff:a.b.c.d` of the guest address in `var`.
fn mapped_gid(var: &str) -> Gid {
    let addr: std::net::Ipv4Addr = std::env::var(var)
        .unwrap_or_else(|_| panic!("{var} is not set (run in the rdma-vm.sh guest)"))
        .parse()
        .expect("an IPv4 address");
    addr.to_ipv6_mapped().octets()
}

struct Side {
    ctx: Arc<dyn Context>,
    pd: Arc<dyn Pd>,
    cq: Arc<dyn Cq>,
    qp: Arc<dyn Qp>,
}

fn side(p: &Arc<dyn Provider>, dev: &str, cq_depth: usize, max_wr: u32) -> Side {
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
    let (mine, theirs) = (local.ctx.port_info(), peer.ctx.port_info());
    RtrAttrs {
        dest_qp_num: peer.qp.qp_num(),
        dgid: theirs.gid,
        dlid: theirs.lid,
        path_mtu: mine.active_mtu.min(theirs.active_mtu),
        sgid_index: mine.gid_index,
        ..RtrAttrs::default()
    }
}

fn connect_one(local: &Side, peer: &Side, rts: &RtsAttrs) {
    local.qp.modify_to_init(&InitAttrs::default()).unwrap();
    local.qp.modify_to_rtr(&rtr_to(peer, local)).unwrap();
    local.qp.modify_to_rts(rts).unwrap();
}

/// A connected QP pair: `a` on `dev_a`, `b` on `dev_b` (the same device
/// gives a loopback pair).
fn pair(p: &Arc<dyn Provider>, dev_a: &str, dev_b: &str) -> (Side, Side) {
    let a = side(p, dev_a, 64, 32);
    let b = side(p, dev_b, 64, 32);
    connect_one(&a, &b, &RtsAttrs::default());
    connect_one(&b, &a, &RtsAttrs::default());
    (a, b)
}

/// Poll until `n` completions arrived (bounded: a hang fails the test).
fn wait_wcs(cq: &Arc<dyn Cq>, n: usize) -> Vec<WorkCompletion> {
    let deadline = Instant::now() + WC_DEADLINE;
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(cq.poll(n - out.len()).unwrap());
        assert!(Instant::now() < deadline, "timed out with {out:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

/// No further completion shows within `for_`.
fn assert_no_more_wcs(cq: &Arc<dyn Cq>, for_: Duration) {
    let end = Instant::now() + for_;
    while Instant::now() < end {
        let extra = cq.poll(16).unwrap();
        assert!(extra.is_empty(), "unexpected completions {extra:?}");
        std::thread::sleep(Duration::from_millis(5));
    }
}

fn reg(pd: &Arc<dyn Pd>, buf: &mut [u8], access: Access) -> Box<dyn Mr> {
    // SAFETY: every test keeps `buf` alive (and unmoved) until the region
    // is dropped.
    unsafe { pd.reg_mr(buf.as_mut_ptr() as u64, buf.len(), access) }.unwrap()
}

fn wr(id: u64, op: Opcode, local: &dyn Mr, remote: &dyn Mr, off: u64, len: u32) -> WorkRequest {
    WorkRequest {
        wr_id: id,
        opcode: op,
        local_addr: local.addr() + off,
        length: len,
        lkey: local.lkey(),
        remote_addr: remote.addr() + off,
        rkey: remote.rkey(),
        signaled: true,
    }
}

fn ids(wcs: &[WorkCompletion]) -> Vec<u64> {
    wcs.iter().map(|w| w.wr_id).collect()
}

fn pattern(len: usize, seed: u32) -> Vec<u8> {
    (0..len as u32)
        .map(|i| (i.wrapping_mul(2_654_435_761) >> 13).wrapping_add(seed) as u8)
        .collect()
}

/// `rdma resource show` counts of `dev` (pd, cq, qp, mr, ...).
fn kernel_objects(dev: &str) -> std::collections::HashMap<String, u64> {
    let out = std::process::Command::new("rdma")
        .args(["resource", "show"])
        .output()
        .expect("run `rdma resource show`");
    let text = String::from_utf8_lossy(&out.stdout);
    let line = text
        .lines()
        .find(|l| l.split_whitespace().nth(1) == Some(&format!("{dev}:")))
        .unwrap_or_else(|| panic!("no {dev} in `rdma resource show`: {text}"));
    let words: Vec<&str> = line.split_whitespace().skip(2).collect();
    words
        .chunks(2)
        .filter_map(|kv| Some((kv[0].to_string(), kv.get(1)?.parse().ok()?)))
        .collect()
}

/// `r` failed with an error containing `want` (verb, step, errno).
fn refused<T>(r: transfer_engine::Result<T>, want: &str) {
    let e = r.err().unwrap_or_else(|| panic!("not refused: {want}"));
    assert!(e.to_string().contains(want), "want {want}: {e}");
}

fn opts(port: u8, gid_index: Option<u8>) -> OpenOptions {
    OpenOptions { port, gid_index }
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn devices_ports_and_auto_gid_are_rxe_facts() {
    let p = rxe();
    let devices = p.devices().unwrap();
    for (dev, var) in [("rxe0", "RXE_ADDR0"), ("rxe1", "RXE_ADDR1")] {
        let d = devices.iter().find(|d| d.name == dev).unwrap();
        assert!(d.port_active, "{d:?}");
        // 1500-byte veth: RoCE headers leave room for a 1024-byte IB MTU.
        assert_eq!(d.active_mtu, 1024, "{d:?}");
        assert_eq!(d.lid, 0, "RoCE has no LID: {d:?}");
        // Auto GID: the RoCE v2 IPv4-mapped GID of the netdev address
        // (index 1), not the fe80:: GID at index 0.
        assert_eq!(gid_to_string(&d.gid), gid_to_string(&mapped_gid(var)));
        assert_eq!(d.gid_index, 1, "{d:?}");
        let ctx = p.open(dev, &OpenOptions::default()).unwrap();
        assert_eq!(ctx.device_name(), dev);
        let port = ctx.port_info().clone();
        assert_eq!((port.port, port.gid, port.gid_index), (1, d.gid, 1));
        assert!(port.active && port.active_mtu == 1024);
        assert_eq!(ctx.query_port().unwrap(), port);
        assert!(ctx.async_fd().is_some_and(|fd| fd >= 0));
        assert_eq!(ctx.poll_async_event().unwrap(), None);
        // An explicit index is honoured; GID[0] is the netdev's fe80:: one.
        let ll = p.open(dev, &opts(1, Some(0))).unwrap();
        assert_eq!(ll.port_info().gid_index, 0);
        assert_eq!(&ll.port_info().gid[..2], &[0xfe, 0x80]);
        refused(
            p.open(dev, &opts(1, Some(7))),
            "ibv_query_gid: open: EINVAL",
        );
        refused(p.open(dev, &opts(2, None)), "ibv_query_port: open: ");
    }
    let e = p.open("mlx5_9", &OpenOptions::default()).err().unwrap();
    assert_eq!(e.err_code(), -6, "{e}");
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn pd_mr_cq_qp_lifecycle_releases_kernel_objects() {
    let p = rxe();
    let before = kernel_objects("rxe0");
    let s = side(&p, "rxe0", 100, 64);
    assert!(s.cq.capacity() >= 100, "{}", s.cq.capacity());
    assert_eq!(s.qp.state(), QpState::Reset);
    assert_eq!(s.qp.caps().max_send_wr, 64);
    let mut buf = vec![0u8; 1 << 16];
    let mr = reg(&s.pd, &mut buf, Access::ALL);
    assert_eq!((mr.addr(), mr.len()), (buf.as_ptr() as u64, 1 << 16));
    assert_ne!(mr.lkey(), 0);
    let mr2 = reg(&s.pd, &mut buf[..4096], Access::LOCAL_WRITE);
    assert_ne!(mr2.lkey(), mr.lkey());
    let live = kernel_objects("rxe0");
    for (k, n) in [("pd", 1), ("cq", 1), ("qp", 1), ("mr", 2)] {
        assert_eq!(live[k], before[k] + n, "{k}: {before:?} → {live:?}");
    }
    // Remote write without local write is refused by the verbs layer.
    // SAFETY: `buf` outlives the call; the registration fails anyway.
    let r = unsafe { s.pd.reg_mr(buf.as_ptr() as u64, 64, Access::REMOTE_WRITE) };
    refused(r, "ibv_reg_mr: register: EINVAL");
    let huge = QpCaps {
        max_send_wr: 1 << 30,
        ..QpCaps::default()
    };
    refused(s.pd.create_qp(&s.cq, &huge), "ibv_create_qp: create: ");
    // A CQ of another provider is refused before any verb runs.
    let soft = soft::SoftProvider::with_devices(&["rxesoft0"]);
    let soft_cq = soft
        .open("rxesoft0", &opts(1, None))
        .unwrap()
        .create_cq(4)
        .unwrap();
    refused(
        s.pd.create_qp(&soft_cq, &QpCaps::default()),
        "does not belong to the ibverbs",
    );
    mr2.deregister().unwrap();
    assert_eq!(kernel_objects("rxe0")["mr"], before["mr"] + 1);
    // QP holds its CQ and PD: dropping our handles first still frees all.
    let Side { ctx, pd, cq, qp } = s;
    drop((ctx, pd, cq, mr));
    assert_eq!(kernel_objects("rxe0")["qp"], before["qp"] + 1);
    drop(qp);
    let after = kernel_objects("rxe0");
    for k in ["pd", "cq", "qp", "mr", "ctx"] {
        assert_eq!(after[k], before[k], "{k}: {before:?} → {after:?}");
    }
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn qp_walks_every_transition_and_refuses_invalid_ones() {
    let p = rxe();
    let a = side(&p, "rxe0", 16, 8);
    let b = side(&p, "rxe1", 16, 8);
    let (init, rts) = (InitAttrs::default(), RtsAttrs::default());
    let mut early = vec![0u8; 64];
    let early_mr = reg(&a.pd, &mut early, Access::ALL);
    // Not in RTS: refused, and never completes later (rxe's own doorbell
    // failure leaves the WR queued; the provider refuses before it).
    let post_early = |id| {
        let e =
            a.qp.post_send(&[wr(id, Opcode::Write, &*early_mr, &*early_mr, 0, 64)]);
        let e = e.expect_err("post before RTS");
        assert_eq!((e.posted, e.errno), (0, libc::EINVAL), "{}", e.error);
        refused::<()>(Err(e.error), "ibv_post_send: post: EINVAL");
    };
    assert_eq!(a.qp.state(), QpState::Reset);
    post_early(5);
    refused(
        a.qp.modify_to_rtr(&rtr_to(&b, &a)),
        "ibv_modify_qp: reset→rtr: EINVAL",
    );
    refused(a.qp.modify_to_rts(&rts), "ibv_modify_qp: reset→rts: EINVAL");
    a.qp.modify_to_init(&init).unwrap();
    assert_eq!(a.qp.state(), QpState::Init);
    a.qp.modify_to_init(&init).unwrap(); // INIT→INIT is legal
    post_early(6);
    refused(a.qp.modify_to_rts(&rts), "ibv_modify_qp: init→rts: EINVAL");
    // Refused by the kernel (empty source GID) and by the provider (not an
    // IB MTU): the QP stays in INIT.
    let bad_gid = RtrAttrs {
        sgid_index: 9,
        ..rtr_to(&b, &a)
    };
    refused(a.qp.modify_to_rtr(&bad_gid), "ibv_modify_qp: init→rtr: ");
    let e = a.qp.modify_to_rtr(&bad_gid).unwrap_err().to_string();
    assert!(e.contains("sgid_index 9") && e.contains("peer QP"), "{e}");
    let bad_mtu = RtrAttrs {
        path_mtu: 1500,
        ..rtr_to(&b, &a)
    };
    refused(
        a.qp.modify_to_rtr(&bad_mtu),
        "ibv_modify_qp: init→rtr: EINVAL",
    );
    assert_eq!(a.qp.state(), QpState::Init);
    a.qp.modify_to_rtr(&rtr_to(&b, &a)).unwrap();
    assert_eq!(a.qp.state(), QpState::Rtr);
    post_early(7);
    refused(
        a.qp.modify_to_rtr(&rtr_to(&b, &a)),
        "ibv_modify_qp: rtr→rtr: EINVAL",
    );
    a.qp.modify_to_rts(&rts).unwrap();
    assert_eq!(a.qp.state(), QpState::Rts);
    refused(
        a.qp.modify_to_rtr(&rtr_to(&b, &a)),
        "ibv_modify_qp: rts→rtr: EINVAL",
    );
    refused(
        a.qp.modify_to_init(&init),
        "ibv_modify_qp: rts→init: EINVAL",
    );
    a.qp.modify_to_err().unwrap();
    assert_eq!(a.qp.state(), QpState::Err);
    refused(a.qp.modify_to_rts(&rts), "ibv_modify_qp: err→rts: EINVAL");
    a.qp.modify_to_err().unwrap(); // ERR→ERR is legal
    a.qp.reset().unwrap();
    assert_eq!(a.qp.state(), QpState::Reset);
    // After RESET the same QP reconnects and carries data; nothing posted
    // before RTS ever completes.
    connect_one(&a, &b, &rts);
    connect_one(&b, &a, &rts);
    let mut src = pattern(4096, 1);
    let mut dst = vec![0u8; 4096];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    a.qp.post_send(&[wr(1, Opcode::Write, &*src_mr, &*dst_mr, 0, 4096)])
        .unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!(
        (wc.wr_id, wc.status, wc.byte_len),
        (1, WcStatus::Success, 4096),
        "{wc:?}"
    );
    assert_no_more_wcs(&a.cq, Duration::from_millis(200));
    drop((src_mr, dst_mr, early_mr));
    assert_eq!(dst, src);
    assert_eq!(early, vec![0u8; 64]);
}

/// WRITE in chunks (unsignaled ones included), READ back, both verified.
fn write_then_read(dev_a: &str, dev_b: &str) {
    let p = rxe();
    let (a, b) = pair(&p, dev_a, dev_b);
    const LEN: usize = 256 << 10;
    let mut src = pattern(LEN, 7);
    let mut remote = vec![0u8; LEN];
    let mut back = vec![0u8; LEN];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let back_mr = reg(&a.pd, &mut back, Access::ALL);
    let remote_mr = reg(&b.pd, &mut remote, Access::ALL);
    // 16 × 16 KiB; only every 4th is signaled: one completion per group.
    let chunk = (LEN / 16) as u32;
    let wrs: Vec<WorkRequest> = (0..16u64)
        .map(|i| WorkRequest {
            signaled: i % 4 == 3,
            ..wr(
                100 + i,
                Opcode::Write,
                &*src_mr,
                &*remote_mr,
                i * chunk as u64,
                chunk,
            )
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
    let wcs = wait_wcs(&a.cq, 4);
    assert_eq!(ids(&wcs), [103, 107, 111, 115]);
    for w in &wcs {
        assert_eq!(
            (w.status, w.opcode, w.qp_num),
            (WcStatus::Success, Opcode::Write, a.qp.qp_num())
        );
    }
    assert_no_more_wcs(&a.cq, Duration::from_millis(100));
    // One READ of everything, one odd-sized READ from an odd offset.
    let mut odd = vec![0u8; 3333];
    let odd_mr = reg(&a.pd, &mut odd, Access::ALL);
    let tail = WorkRequest {
        local_addr: odd_mr.addr(),
        lkey: odd_mr.lkey(),
        ..wr(2, Opcode::Read, &*back_mr, &*remote_mr, 1001, 3333)
    };
    let whole = wr(1, Opcode::Read, &*back_mr, &*remote_mr, 0, LEN as u32);
    a.qp.post_send(&[whole, tail]).unwrap();
    let wcs = wait_wcs(&a.cq, 2);
    assert_eq!(ids(&wcs), [1, 2]);
    let ok = |w: &WorkCompletion| w.status == WcStatus::Success && w.opcode == Opcode::Read;
    assert!(wcs.iter().all(ok), "{wcs:?}");
    assert_eq!(wcs[0].byte_len, LEN as u32, "READ reports its length");
    drop((src_mr, back_mr, remote_mr, odd_mr));
    assert!(remote == src, "WRITE bytes differ");
    assert!(back == src, "READ bytes differ");
    assert!(odd[..] == src[1001..4334], "odd READ bytes differ");
    assert_eq!((a.qp.state(), b.qp.state()), (QpState::Rts, QpState::Rts));
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn write_and_read_on_one_device() {
    write_then_read("rxe0", "rxe0");
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn write_and_read_across_devices() {
    write_then_read("rxe0", "rxe1");
    write_then_read("rxe1", "rxe0");
}

/// Post `bad`, then `good`: `bad` ends RemoteAccessError, both QPs go to
/// ERR, `good` is accepted and flushed.
fn remote_access_error(a: &Side, b: &Side, bad: WorkRequest, good: WorkRequest) {
    a.qp.post_send(&[bad]).unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!(
        (wc.wr_id, wc.status),
        (bad.wr_id, WcStatus::RemoteAccessError),
        "{wc:?}"
    );
    assert!(!wc.status.is_local_fault());
    assert_eq!(a.qp.state(), QpState::Err);
    // rxe: the responder moves its QP to ERR too.
    let deadline = Instant::now() + WC_DEADLINE;
    while b.qp.state() != QpState::Err {
        assert!(
            Instant::now() < deadline,
            "responder QP stays {}",
            b.qp.state()
        );
        std::thread::sleep(Duration::from_millis(5));
    }
    // Later WRs are accepted and flushed.
    a.qp.post_send(&[good]).unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!(
        (wc.wr_id, wc.status),
        (good.wr_id, WcStatus::WrFlushError),
        "{wc:?}"
    );
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn bad_rkey_ends_remote_access_error_and_flushes() {
    let p = rxe();
    let mut src = pattern(4096, 3);
    let mut dst = vec![0u8; 4096];
    for op in [Opcode::Write, Opcode::Read] {
        let (a, b) = pair(&p, "rxe0", "rxe1");
        let src_mr = reg(&a.pd, &mut src, Access::ALL);
        let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
        // The rkey of a region already deregistered.
        let gone = reg(&b.pd, &mut dst, Access::ALL);
        let gone_rkey = gone.rkey();
        gone.deregister().unwrap();
        let bad = WorkRequest {
            rkey: gone_rkey,
            ..wr(1, op, &*src_mr, &*dst_mr, 0, 4096)
        };
        remote_access_error(&a, &b, bad, wr(2, op, &*src_mr, &*dst_mr, 0, 4096));
        drop((src_mr, dst_mr));
        assert_eq!(dst, vec![0u8; 4096], "{op:?}: remote bytes changed");
        assert_eq!(src, pattern(4096, 3), "{op:?}: local bytes changed");
    }
}

/// What the transport's selective signaling relies on: an unsignaled WR
/// that fails completes anyway (RemoteAccessError), every WR after it
/// flushes with a completion, signaled or not, and the unsignaled WRs
/// before it landed without one.
#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn an_unsignaled_wr_that_fails_completes_and_the_rest_flush() {
    let p = rxe();
    let (a, b) = pair(&p, "rxe0", "rxe1");
    let mut src = pattern(6 * 1024, 11);
    let mut dst = vec![0u8; 6 * 1024];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    // WRs 0, 1 good; 2 a bad rkey; 3, 4 good; only 5 signaled.
    let wrs: Vec<WorkRequest> = (0..6u64)
        .map(|i| {
            let mut w = wr(i, Opcode::Write, &*src_mr, &*dst_mr, i * 1024, 1024);
            w.signaled = i == 5;
            if i == 2 {
                w.rkey ^= 0x00ff_ff00;
            }
            w
        })
        .collect();
    a.qp.post_send(&wrs).unwrap();
    let wcs = wait_wcs(&a.cq, 4);
    assert_eq!(
        wcs.iter().map(|w| (w.wr_id, w.status)).collect::<Vec<_>>(),
        [
            (2, WcStatus::RemoteAccessError),
            (3, WcStatus::WrFlushError),
            (4, WcStatus::WrFlushError),
            (5, WcStatus::WrFlushError)
        ]
    );
    assert_no_more_wcs(&a.cq, Duration::from_millis(200));
    drop((src_mr, dst_mr));
    assert!(dst[..2048] == src[..2048], "the unsignaled WRs landed");
    assert!(
        dst[2048..].iter().all(|&b| b == 0),
        "nothing after the failed WR"
    );
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn out_of_bounds_and_forbidden_remote_access_are_remote_access_errors() {
    let p = rxe();
    let mut src = pattern(8192, 5);
    let mut dst = vec![0u8; 4096];
    // One byte past the end of the remote region, WRITE and READ.
    for op in [Opcode::Write, Opcode::Read] {
        let (a, b) = pair(&p, "rxe0", "rxe1");
        let src_mr = reg(&a.pd, &mut src, Access::ALL);
        let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
        let bad = wr(1, op, &*src_mr, &*dst_mr, 1, 4096);
        remote_access_error(&a, &b, bad, wr(2, op, &*src_mr, &*dst_mr, 0, 16));
        drop((src_mr, dst_mr));
    }
    // WRITE into a region registered for remote READ only.
    let (a, b) = pair(&p, "rxe0", "rxe0");
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let ro_mr = reg(&b.pd, &mut dst, Access::LOCAL_WRITE | Access::REMOTE_READ);
    let bad = wr(1, Opcode::Write, &*src_mr, &*ro_mr, 0, 64);
    remote_access_error(&a, &b, bad, wr(2, Opcode::Read, &*src_mr, &*ro_mr, 0, 64));
    drop((src_mr, ro_mr));
    assert_eq!(dst, vec![0u8; 4096], "remote bytes changed");
    // A bad lkey is the local side's fault.
    let (a, b) = pair(&p, "rxe0", "rxe1");
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let mut bad = wr(3, Opcode::Write, &*src_mr, &*dst_mr, 0, 64);
    bad.lkey ^= 0x00ff_ff00;
    a.qp.post_send(&[bad]).unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    // rxe says LocalQpOpError (the soft fabric LocalProtectionError): both
    // are the local side's fault, which is what the transport acts on.
    assert_eq!(wc.wr_id, 3);
    assert!(wc.status.is_local_fault(), "{wc:?}");
    assert_eq!(a.qp.state(), QpState::Err);
    drop((src_mr, dst_mr));
    assert_eq!(dst, vec![0u8; 4096], "remote bytes changed");
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn modify_to_err_flushes_and_reset_discards_outstanding_wrs() {
    let p = rxe();
    let a = side(&p, "rxe0", 128, 16);
    let b = side(&p, "rxe1", 64, 16);
    // The peer never leaves INIT and each retry waits ~4 s (timeout 20):
    // the WRs are still outstanding when the QP is moved to ERR.
    b.qp.modify_to_init(&InitAttrs::default()).unwrap();
    let slow = RtsAttrs {
        timeout: 20,
        ..RtsAttrs::default()
    };
    connect_one(&a, &b, &slow);
    let mut src = pattern(4096, 9);
    let mut dst = vec![0u8; 4096];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    // More WRs than the send queue holds: a prefix is posted (rxe rounds
    // the queue up, so at least max_send_wr), and exactly it completes.
    let wrs: Vec<_> = (0..64)
        .map(|i| wr(i, Opcode::Write, &*src_mr, &*dst_mr, i * 64, 64))
        .collect();
    let e = a.qp.post_send(&wrs).unwrap_err();
    let n = e.posted;
    assert!((16..64).contains(&n) && e.errno == libc::ENOMEM, "{e}");
    refused::<()>(
        Err(e.error),
        &format!("ibv_post_send: post: ENOMEM (QP {}", a.qp.qp_num()),
    );
    // Nothing completes against an INIT peer...
    assert_no_more_wcs(&a.cq, Duration::from_millis(200));
    // ...until ERR flushes everything, promptly and in order.
    let t = Instant::now();
    a.qp.modify_to_err().unwrap();
    let wcs = wait_wcs(&a.cq, n);
    let took = t.elapsed();
    assert!(took < Duration::from_secs(3), "flush took {took:?}");
    assert_eq!(ids(&wcs), (0..n as u64).collect::<Vec<_>>());
    let flushed = |w: &WorkCompletion| w.status == WcStatus::WrFlushError;
    assert!(wcs.iter().all(flushed), "{wcs:?}");
    assert_no_more_wcs(&a.cq, Duration::from_millis(200));
    // RESET discards outstanding WRs without completions.
    a.qp.reset().unwrap();
    connect_one(&a, &b, &slow);
    a.qp.post_send(&wrs[..4]).unwrap();
    std::thread::sleep(Duration::from_millis(100));
    a.qp.reset().unwrap();
    assert_no_more_wcs(&a.cq, Duration::from_millis(300));
    // Peer connected: only the new WR completes.
    b.qp.modify_to_rtr(&rtr_to(&a, &b)).unwrap();
    b.qp.modify_to_rts(&RtsAttrs::default()).unwrap();
    connect_one(&a, &b, &RtsAttrs::default());
    a.qp.post_send(&[wr(42, Opcode::Write, &*src_mr, &*dst_mr, 0, 4096)])
        .unwrap();
    let wc = wait_wcs(&a.cq, 1)[0];
    assert_eq!((wc.wr_id, wc.status), (42, WcStatus::Success));
    assert_no_more_wcs(&a.cq, Duration::from_millis(200));
    drop((src_mr, dst_mr));
    assert_eq!(dst, src);
}

#[test]
#[ignore = "needs SoftRoCE: run in the guest by scripts/rxe-suite.sh"]
fn cq_overflow_is_reported_not_hung() {
    let p = rxe();
    let a = side(&p, "rxe0", 2, 16);
    let b = side(&p, "rxe1", 16, 16);
    connect_one(&a, &b, &RtsAttrs::default());
    connect_one(&b, &a, &RtsAttrs::default());
    let cap = a.cq.capacity();
    assert!((2..16).contains(&cap), "capacity {cap}");
    let mut src = pattern(16 * 256, 4);
    let mut dst = vec![0u8; 16 * 256];
    let src_mr = reg(&a.pd, &mut src, Access::ALL);
    let dst_mr = reg(&b.pd, &mut dst, Access::ALL);
    let wrs: Vec<_> = (0..16)
        .map(|i| wr(i, Opcode::Write, &*src_mr, &*dst_mr, i * 256, 256))
        .collect();
    a.qp.post_send(&wrs).unwrap();
    // The overflow raises CQ_ERR on the device's async events.
    let deadline = Instant::now() + WC_DEADLINE;
    let ev = loop {
        if let Some(ev) = a.ctx.poll_async_event().unwrap() {
            break ev;
        }
        assert!(
            Instant::now() < deadline,
            "no async event after the overflow"
        );
        std::thread::sleep(Duration::from_millis(5));
    };
    assert_eq!(ev.kind, AsyncEventKind::CqErr, "{ev:?}");
    // rxe keeps the completions that fit and drops the rest: those come
    // first, then polling the drained CQ is an error, never a silent wait.
    let wcs = a.cq.poll(64).unwrap();
    assert_eq!(ids(&wcs), (0..cap as u64).collect::<Vec<_>>(), "{wcs:?}");
    assert!(wcs.iter().all(|w| w.status == WcStatus::Success), "{wcs:?}");
    refused(a.cq.poll(64), "ibv_poll_cq: poll: EOVERFLOW");
    assert!(a.cq.poll(64).is_err(), "the overflow is sticky");
    // rxe does not fail the QP for it.
    assert_eq!(a.qp.state(), QpState::Rts);
    drop((src_mr, dst_mr));
    assert_eq!(dst, src, "the WRITEs themselves landed");
}
