//! Helpers shared by the engine-level integration tests.
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::{
    Opcode, SegmentId, TaskStatus, TransferEngine, TransferRequest, TransferStatus,
};

/// A heap buffer with guard zones on both sides, so tests can prove that
/// nothing outside the registered range was written.
pub struct Guarded {
    mem: Vec<u8>,
    pub guard: usize,
    pub len: usize,
}

pub const GUARD_BYTE: u8 = 0xEE;

impl Guarded {
    pub fn new(len: usize) -> Guarded {
        let guard = 4096;
        Guarded {
            mem: vec![GUARD_BYTE; len + 2 * guard],
            guard,
            len,
        }
    }
    pub fn addr(&self) -> u64 {
        self.mem.as_ptr() as u64 + self.guard as u64
    }
    pub fn data(&self) -> &[u8] {
        &self.mem[self.guard..self.guard + self.len]
    }
    pub fn data_mut(&mut self) -> &mut [u8] {
        let g = self.guard;
        &mut self.mem[g..g + self.len]
    }
    pub fn guards_intact(&self) -> bool {
        self.mem[..self.guard].iter().all(|b| *b == GUARD_BYTE)
            && self.mem[self.guard + self.len..]
                .iter()
                .all(|b| *b == GUARD_BYTE)
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

pub fn p2p_engine() -> Arc<TransferEngine> {
    let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("create engine");
    e.install_transport("tcp", None).expect("install tcp");
    e
}

/// Submit `reqs` as one batch and wait (bounded) for every task to end.
pub fn run_batch(
    e: &TransferEngine,
    reqs: &[TransferRequest],
    timeout: Duration,
) -> Vec<TransferStatus> {
    let b = e.allocate_batch_id(reqs.len());
    e.submit_transfer(b, reqs, None).expect("submit");
    let out = wait_all(e, b, reqs.len(), timeout);
    e.free_batch_id(b)
        .expect("free after all tasks were observed terminal");
    out
}

pub fn wait_all(
    e: &TransferEngine,
    batch: u64,
    n: usize,
    timeout: Duration,
) -> Vec<TransferStatus> {
    let deadline = Instant::now() + timeout;
    (0..n)
        .map(|i| loop {
            let st = e.transfer_status(batch, i).expect("status");
            if matches!(st.status, TaskStatus::Completed | TaskStatus::Failed) {
                break st;
            }
            assert!(
                Instant::now() < deadline,
                "task {i} still {:?} after {timeout:?}",
                st.status
            );
            std::thread::sleep(Duration::from_micros(200));
        })
        .collect()
}

pub fn req(
    op: Opcode,
    source: u64,
    target_id: SegmentId,
    target_offset: u64,
    length: u64,
) -> TransferRequest {
    TransferRequest {
        opcode: op,
        source,
        target_id,
        target_offset,
        length,
    }
}

/// Number of open descriptors of this process.
pub fn open_fds() -> usize {
    std::fs::read_dir("/proc/self/fd")
        .map(|d| d.count())
        .unwrap_or(0)
}
