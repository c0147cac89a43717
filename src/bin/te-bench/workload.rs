//! The initiator workload of Mooncake's transfer_engine_bench: `threads`
//! workers, each submitting batches of `batch_size` blocks and polling every
//! task to COMPLETED, until the duration ends.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::{Opcode, SegmentId, TaskStatus, TransferEngine, TransferRequest};

use crate::region::{self, Region};

pub struct Case {
    pub op: Opcode,
    pub block: u64,
    pub batch_size: usize,
    pub threads: usize,
    pub duration: Duration,
    pub check: bool,
    pub progress: bool,
}

/// Where the target's memory is, and (loopback only) a view of it for checks.
pub struct Target<'a> {
    pub id: SegmentId,
    pub base: u64,
    pub local_view: Option<&'a Region>,
}

#[derive(Clone, Debug, Default)]
pub struct Outcome {
    pub bytes: u64,
    pub batches: u64,
    pub elapsed: f64,
    pub cpu_secs: f64,
    pub verified_bytes: u64,
}

pub fn cpu_time() -> f64 {
    // SAFETY: getrusage writes into the struct we own.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to `ru`.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Seed of the pattern a READ check expects in the target buffer.
pub const TARGET_SEED: u64 = 0x7e_5eed;

fn wait_task(engine: &TransferEngine, batch: u64, task: usize) -> Result<(), String> {
    let mut spins = 0u32;
    loop {
        let st = engine
            .transfer_status(batch, task)
            .map_err(|e| format!("getTransferStatus: {e}"))?;
        match st.status {
            TaskStatus::Completed => return Ok(()),
            TaskStatus::Failed
            | TaskStatus::Timeout
            | TaskStatus::Canceled
            | TaskStatus::Invalid => {
                return Err(format!(
                    "task {task} ended {:?} after {} bytes",
                    st.status, st.transferred_bytes
                ))
            }
            _ => {
                // Spin briefly, then sleep: on few cores, polling threads
                // that yield keep taking CPU the transport threads need.
                spins += 1;
                if spins < 32 {
                    std::hint::spin_loop();
                } else {
                    std::thread::sleep(Duration::from_micros(20));
                }
            }
        }
    }
}

#[allow(clippy::too_many_arguments)]
fn worker(
    engine: &TransferEngine,
    local: &Region,
    scratch: &Region,
    target: &Target,
    case: &Case,
    t: usize,
    stop: &AtomicBool,
    done_bytes: &AtomicU64,
) -> Result<(u64, u64), String> {
    let (block, threads, bs) = (case.block, case.threads as u64, case.batch_size);
    let mut batches = 0u64;
    let mut verified = 0u64;
    let mut iter = 0u64;
    while !stop.load(Ordering::Relaxed) {
        iter += 1;
        let seed = (t as u64) << 32 | iter;
        let offs: Vec<u64> = (0..bs as u64)
            .map(|i| block * (i * threads + t as u64))
            .collect();
        if case.check && case.op == Opcode::Write {
            for &o in &offs {
                region::fill(local.slice_mut(o as usize, block as usize), seed, o);
            }
        }
        let reqs: Vec<TransferRequest> = offs
            .iter()
            .map(|&o| TransferRequest {
                opcode: case.op,
                source: local.addr() + o,
                target_id: target.id,
                target_offset: target.base + o,
                length: block,
            })
            .collect();
        run_batch(engine, &reqs)?;
        if case.check {
            verified += verify(engine, local, scratch, target, case, &offs, seed)?;
        }
        batches += 1;
        done_bytes.fetch_add(block * bs as u64, Ordering::Relaxed);
    }
    Ok((batches, verified))
}

fn run_batch(engine: &TransferEngine, reqs: &[TransferRequest]) -> Result<(), String> {
    let batch = engine.allocate_batch_id(reqs.len());
    engine
        .submit_transfer(batch, reqs, None)
        .map_err(|e| format!("submitTransfer: {e}"))?;
    let mut result = Ok(());
    for i in 0..reqs.len() {
        if let Err(e) = wait_task(engine, batch, i) {
            result = result.and(Err(e));
        }
    }
    engine
        .free_batch_id(batch)
        .map_err(|e| format!("freeBatchID: {e}"))?;
    result
}

fn verify(
    engine: &TransferEngine,
    local: &Region,
    scratch: &Region,
    target: &Target,
    case: &Case,
    offs: &[u64],
    seed: u64,
) -> Result<u64, String> {
    let block = case.block as usize;
    let mut n = 0u64;
    for &o in offs {
        let (buf, seed, base) = match (case.op, target.local_view) {
            // WRITE, loopback: look straight at the target's memory.
            (Opcode::Write, Some(view)) => (view.slice_mut(o as usize, block), seed, o),
            // WRITE, remote: read the block back into scratch and compare.
            (Opcode::Write, None) => {
                let back = TransferRequest {
                    opcode: Opcode::Read,
                    source: scratch.addr() + o,
                    target_id: target.id,
                    target_offset: target.base + o,
                    length: case.block,
                };
                run_batch(engine, &[back])?;
                (scratch.slice_mut(o as usize, block), seed, o)
            }
            // READ: the target holds TARGET_SEED's pattern.
            (Opcode::Read, _) => (local.slice_mut(o as usize, block), TARGET_SEED, o),
        };
        if let Some(i) = region::first_mismatch(buf, seed, base) {
            return Err(format!(
                "data check failed: block at offset {o:#x}, byte {i} differs ({:?} of {} bytes)",
                case.op, block
            ));
        }
        n += block as u64;
    }
    Ok(n)
}

/// Run one case to its duration and measure it.
pub fn run(
    engine: &Arc<TransferEngine>,
    local: &Region,
    scratch: &Region,
    target: &Target,
    case: &Case,
) -> Result<Outcome, String> {
    let stop = AtomicBool::new(false);
    let done_bytes = AtomicU64::new(0);
    let cpu0 = cpu_time();
    let start = Instant::now();
    let results: Vec<Result<(u64, u64), String>> = std::thread::scope(|s| {
        let handles: Vec<_> = (0..case.threads)
            .map(|t| {
                let (stop, done_bytes) = (&stop, &done_bytes);
                s.spawn(move || worker(engine, local, scratch, target, case, t, stop, done_bytes))
            })
            .collect();
        let mut last = (Instant::now(), 0u64);
        while start.elapsed() < case.duration && !handles.iter().all(|h| h.is_finished()) {
            std::thread::sleep(Duration::from_millis(20));
            if case.progress && last.0.elapsed() >= Duration::from_secs(1) {
                let now = done_bytes.load(Ordering::Relaxed);
                let rate = (now - last.1) as f64 / last.0.elapsed().as_secs_f64() / 1e9;
                eprintln!(
                    "  [{:>5.1}s] {:?} {} B: {:.2} GB/s",
                    start.elapsed().as_secs_f64(),
                    case.op,
                    case.block,
                    rate
                );
                last = (Instant::now(), now);
            }
        }
        stop.store(true, Ordering::Relaxed);
        handles
            .into_iter()
            .map(|h| h.join().unwrap_or_else(|_| Err("worker panicked".into())))
            .collect()
    });
    let elapsed = start.elapsed().as_secs_f64();
    let cpu_secs = cpu_time() - cpu0;
    let mut out = Outcome {
        elapsed,
        cpu_secs,
        ..Default::default()
    };
    for r in results {
        let (batches, verified) = r?;
        out.batches += batches;
        out.verified_bytes += verified;
    }
    out.bytes = out.batches * case.batch_size as u64 * case.block;
    Ok(out)
}
