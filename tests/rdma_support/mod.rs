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
    "soft0,soft1,bad0,good0,dn0,dn1,ack0,ack1,race0,race1,load0,load1,sig0,sig1,sre0,sre1,sre2,sre3,sre4,sre5,stl0,stl1,stl2,fl0,fl1,ch0,ch1,tfo0,tfo1,tfo2,tfo3,tfo4,tfo5,met0,met1,met2";

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

/// A verified WRITE/READ workload on its own thread: batches of `batch`
/// blocks of `block` bytes between `local` (registered on the initiator)
/// and `remote` (on the peer, segment `seg`), alternating WRITE and READ,
/// each with a fresh pattern, every byte checked after every batch. Stops
/// at the first task that is not COMPLETED or the first wrong byte.
pub struct VerifiedWorkload {
    stop: Arc<std::sync::atomic::AtomicBool>,
    batches: Arc<std::sync::atomic::AtomicU64>,
    done_at: Arc<std::sync::Mutex<Vec<Instant>>>,
    thread: Option<std::thread::JoinHandle<Result<(), String>>>,
}

impl VerifiedWorkload {
    /// `local` and `remote` must outlive the workload (`finish` joins it)
    /// and must not be touched by anyone else meanwhile.
    pub fn start(
        e: Arc<TransferEngine>,
        seg: SegmentId,
        local: &Buf,
        remote: &Buf,
        block: usize,
        batch: usize,
    ) -> VerifiedWorkload {
        use std::sync::atomic::Ordering;
        let size = block * batch;
        assert!(local.len() >= size && remote.len() >= size);
        let (local_addr, remote_addr) = (local.addr(), remote.addr());
        let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let batches = Arc::new(std::sync::atomic::AtomicU64::new(0));
        let done_at = Arc::new(std::sync::Mutex::new(Vec::new()));
        let (s, b, d) = (stop.clone(), batches.clone(), done_at.clone());
        let thread = std::thread::spawn(move || -> Result<(), String> {
            // SAFETY: the caller keeps both buffers alive until `finish`
            // joined this thread, and leaves them to it; no transfer runs
            // on them while this thread reads or writes them (it fills
            // them before a batch and checks them after).
            let local = unsafe { std::slice::from_raw_parts_mut(local_addr as *mut u8, size) };
            // SAFETY: as above.
            let remote = unsafe { std::slice::from_raw_parts_mut(remote_addr as *mut u8, size) };
            let mut round = 0u64;
            while !s.load(Ordering::Acquire) {
                round += 1;
                let want = pattern((round % 251) as u8, size);
                let op = if round % 2 == 0 {
                    Opcode::Write
                } else {
                    Opcode::Read
                };
                match op {
                    Opcode::Write => local.copy_from_slice(&want),
                    Opcode::Read => remote.copy_from_slice(&want),
                }
                let reqs: Vec<_> = (0..batch)
                    .map(|i| {
                        let off = (i * block) as u64;
                        req(op, local_addr + off, seg, remote_addr + off, block as u64)
                    })
                    .collect();
                let st = run_batch(&e, &reqs, Duration::from_secs(60));
                if let Some(i) = st.iter().position(|s| s.status != TaskStatus::Completed) {
                    return Err(format!("round {round} {op:?}: task {i} {:?}", st[i].status));
                }
                let landed = match op {
                    Opcode::Write => &*remote,
                    Opcode::Read => &*local,
                };
                if let Some(i) = (0..batch).find(|&i| {
                    landed[i * block..(i + 1) * block] != want[i * block..(i + 1) * block]
                }) {
                    return Err(format!(
                        "round {round} {op:?}: task {i} COMPLETED with wrong bytes"
                    ));
                }
                d.lock().unwrap().push(Instant::now());
                b.fetch_add(1, Ordering::Release);
            }
            Ok(())
        });
        VerifiedWorkload {
            stop,
            batches,
            done_at,
            thread: Some(thread),
        }
    }

    /// Batches verified so far.
    pub fn batches(&self) -> u64 {
        self.batches.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Wait (bounded) until `n` more batches were verified; false if the
    /// workload stopped (a failure: see `finish`) or made no progress.
    pub fn wait_batches(&self, n: u64, timeout: Duration) -> bool {
        let target = self.batches() + n;
        wait_until(timeout, || {
            self.batches() >= target || self.thread.as_ref().is_none_or(|t| t.is_finished())
        }) && self.batches() >= target
    }

    /// Why the workload stopped (joins it when it has), or that it is
    /// still running.
    pub fn why(&mut self) -> String {
        match self.thread.take() {
            Some(t) if t.is_finished() => match t.join() {
                Ok(Ok(())) => "stopped".into(),
                Ok(Err(e)) => e,
                Err(_) => "workload thread panicked".into(),
            },
            t => {
                self.thread = t;
                "still running, no progress".into()
            }
        }
    }

    /// When the first batch after `t` was verified.
    pub fn first_done_after(&self, t: Instant) -> Option<Instant> {
        self.done_at
            .lock()
            .unwrap()
            .iter()
            .copied()
            .find(|d| *d > t)
    }

    /// Stop and join: the first failure, if any.
    pub fn finish(mut self) -> Result<u64, String> {
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        let r = self.thread.take().expect("joined once").join();
        r.map_err(|_| "workload thread panicked".to_string())??;
        Ok(self.batches())
    }
}

impl Drop for VerifiedWorkload {
    fn drop(&mut self) {
        // Never leave the thread running on buffers about to be freed.
        self.stop.store(true, std::sync::atomic::Ordering::Release);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
