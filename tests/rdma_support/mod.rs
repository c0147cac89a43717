//! Helpers for the RDMA integration tests (soft provider, two engines in
//! one process over loopback handshakes).
#![allow(dead_code)]

use std::sync::{Arc, Once};
use std::time::{Duration, Instant};

use transfer_engine::{
    Opcode, SegmentId, TaskStatus, TransferEngine, TransferRequest, TransferStatus,
};

/// Soft devices every RDMA test binary may use; faults are injected per
/// device, so tests that inject faults use their own names.
pub const DEVICES: &str =
    "soft0,soft1,bad0,good0,dn0,dn1,ack0,ack1,race0,race1,load0,load1,sig0,sig1,sre0,sre1,sre2,sre3,sre4,sre5,stl0,stl1,stl2,fl0,fl1,tfo0,tfo1,tfo2,tfo3,tfo4,tfo5";

static ENV: Once = Once::new();

/// Select the soft provider (process-wide, once per test binary).
pub fn soft_env() {
    ENV.call_once(|| {
        std::env::set_var("MC_RDMA_PROVIDER", "soft");
        std::env::set_var("MC_SOFT_RDMA_DEVICES", DEVICES);
    });
}

pub fn matrix(devs: &[&str]) -> String {
    let list = serde_json::json!([devs, Vec::<String>::new()]);
    serde_json::json!({ "cpu:0": list, "*": list }).to_string()
}

pub fn rdma_engine(devs: &[&str]) -> Arc<TransferEngine> {
    soft_env();
    let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("create engine");
    e.install_transport("rdma", Some(&matrix(devs)))
        .expect("install rdma");
    e
}

/// An engine with the tcp transport and then rdma (the last installed is
/// the one its descriptor names, so peers reach it over RDMA and may fail
/// over to its TCP data port).
pub fn rdma_tcp_engine(devs: &[&str]) -> Arc<TransferEngine> {
    soft_env();
    let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("create engine");
    e.install_transport("tcp", None).expect("install tcp");
    e.install_transport("rdma", Some(&matrix(devs)))
        .expect("install rdma");
    e
}

/// A page-aligned-ish heap buffer that stays put.
pub struct Buf(pub Vec<u8>);

impl Buf {
    pub fn new(len: usize, fill: u8) -> Buf {
        Buf(vec![fill; len])
    }
    pub fn addr(&self) -> u64 {
        self.0.as_ptr() as u64
    }
    pub fn len(&self) -> usize {
        self.0.len()
    }
}

pub fn pattern(seed: u8, len: usize) -> Vec<u8> {
    (0..len)
        .map(|i| {
            (i as u32)
                .wrapping_mul(2654435761)
                .rotate_left(seed as u32 % 31) as u8
                ^ seed
        })
        .collect()
}

pub fn register(e: &TransferEngine, b: &Buf) {
    e.register_local_memory(b.addr(), b.len() as u64, "cpu:0", true)
        .expect("register");
}

pub fn open(e: &TransferEngine, peer: &TransferEngine) -> SegmentId {
    e.open_segment(&peer.local_server_name())
        .expect("open segment")
}

pub fn req(op: Opcode, source: u64, target: SegmentId, offset: u64, len: u64) -> TransferRequest {
    TransferRequest {
        opcode: op,
        source,
        target_id: target,
        target_offset: offset,
        length: len,
    }
}

/// Submit one batch and wait (bounded) until every task is terminal.
pub fn run_batch(
    e: &TransferEngine,
    reqs: &[TransferRequest],
    timeout: Duration,
) -> Vec<TransferStatus> {
    let b = e.allocate_batch_id(reqs.len());
    e.submit_transfer(b, reqs, None).expect("submit");
    let out = wait_batch(e, b, reqs.len(), timeout);
    e.free_batch_id(b).expect("free batch");
    out
}

pub fn wait_batch(e: &TransferEngine, b: u64, n: usize, timeout: Duration) -> Vec<TransferStatus> {
    let deadline = Instant::now() + timeout;
    loop {
        let st: Vec<TransferStatus> = (0..n)
            .map(|i| e.transfer_status(b, i).expect("status"))
            .collect();
        if st
            .iter()
            .all(|s| matches!(s.status, TaskStatus::Completed | TaskStatus::Failed))
        {
            return st;
        }
        assert!(
            Instant::now() < deadline,
            "batch not done within {timeout:?}: {:?}\nlinks: {}",
            st.iter().map(|s| s.status).collect::<Vec<_>>(),
            links(e)
        );
        std::thread::sleep(Duration::from_millis(2));
    }
}

/// The rdma transport's `showLinks` section.
pub fn links(e: &TransferEngine) -> serde_json::Value {
    let v: serde_json::Value = serde_json::from_str(&e.show_links(true)).expect("links json");
    v["transports"]["rdma"].clone()
}

pub fn counter(e: &TransferEngine, name: &str) -> u64 {
    links(e)["counters"][name].as_u64().unwrap_or(0)
}

/// Wait until `f` holds (bounded).
pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    f()
}

/// An initiator `a` with segments of two peers: `dead` (shut down after its
/// descriptor was cached, so every handshake to it fails) and `good`.
pub struct DeadAndGood {
    pub a: Arc<TransferEngine>,
    pub good: Arc<TransferEngine>,
    pub src: Buf,
    pub dead_dst: Buf,
    pub good_dst: Buf,
    pub sd: SegmentId,
    pub sg: SegmentId,
}

impl DeadAndGood {
    pub fn new(seed: u8, len: usize) -> DeadAndGood {
        let a = rdma_engine(&["soft0"]);
        let dead = rdma_engine(&["bad0"]);
        let good = rdma_engine(&["good0"]);
        let src = Buf(pattern(seed, len));
        let dead_dst = Buf::new(len, 0);
        let good_dst = Buf::new(len, 0);
        register(&a, &src);
        register(&dead, &dead_dst);
        register(&good, &good_dst);
        let sd = open(&a, &dead);
        let sg = open(&a, &good);
        dead.shutdown();
        DeadAndGood {
            a,
            good,
            src,
            dead_dst,
            good_dst,
            sd,
            sg,
        }
    }
}
