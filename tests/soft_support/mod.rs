//! Helpers for the soft fabric's verbs-level tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::transport::rdma::verbs::soft::SoftProvider;
use transfer_engine::transport::rdma::verbs::*;

pub struct Side {
    pub ctx: Arc<dyn Context>,
    pub pd: Arc<dyn Pd>,
    pub cq: Arc<dyn Cq>,
    pub qp: Arc<dyn Qp>,
}

pub fn side(p: &SoftProvider, dev: &str, cq_depth: usize, max_wr: u32) -> Side {
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

pub fn rtr_to(peer: &Side, local: &Side) -> RtrAttrs {
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
pub const FAST: RtsAttrs = RtsAttrs {
    timeout: 10,
    retry_cnt: 3,
    rnr_retry: 7,
    sq_psn: 0,
    max_rd_atomic: 16,
};

pub fn ack_timeout() -> Duration {
    Duration::from_nanos(4096 << FAST.timeout)
}

pub fn connect_one(local: &Side, peer: &Side) {
    connect_with(local, peer, &FAST);
}

pub fn connect_with(local: &Side, peer: &Side, rts: &RtsAttrs) {
    local.qp.modify_to_init(&InitAttrs::default()).unwrap();
    local.qp.modify_to_rtr(&rtr_to(peer, local)).unwrap();
    local.qp.modify_to_rts(rts).unwrap();
}

pub fn pair(devs: [&str; 2]) -> (SoftProvider, Side, Side) {
    let p = SoftProvider::with_devices(&devs);
    let a = side(&p, devs[0], 64, 16);
    let b = side(&p, devs[1], 64, 16);
    connect_one(&a, &b);
    connect_one(&b, &a);
    (p, a, b)
}

/// Poll until `n` completions arrived (bounded).
pub fn wait_wcs(cq: &Arc<dyn Cq>, n: usize) -> Vec<WorkCompletion> {
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut out = Vec::new();
    while out.len() < n {
        out.extend(cq.poll(n - out.len()).unwrap());
        assert!(Instant::now() < deadline, "timed out with {out:?}");
        std::thread::sleep(Duration::from_millis(1));
    }
    out
}

pub fn reg(pd: &Arc<dyn Pd>, buf: &mut [u8], access: Access) -> Box<dyn Mr> {
    // SAFETY: every test keeps `buf` alive until the region is dropped.
    unsafe { pd.reg_mr(buf.as_mut_ptr() as u64, buf.len(), access) }.unwrap()
}

pub fn wr(
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
