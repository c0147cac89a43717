//! `--latency`: one request at a time. Each run creates a fresh initiator
//! engine and times create → install → register → openSegment → first
//! request completed, then times warm requests one by one (allocate batch →
//! submit → status COMPLETED) for every op and block size.

use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::{Opcode, SegmentId, TaskStatus, TransferEngine, TransferRequest};

/// Samples of one (op, block) case over all runs.
pub struct LatencyRow {
    pub op: String,
    pub block: u64,
    /// Per run: p50, p99, mean (seconds) and the request count.
    pub runs: Vec<RunStats>,
}

#[derive(Clone, Copy, Debug)]
pub struct RunStats {
    pub p50: f64,
    pub p99: f64,
    pub mean: f64,
    pub count: usize,
}

impl RunStats {
    pub fn of(mut v: Vec<f64>) -> RunStats {
        v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
        let pick = |q: f64| v[((v.len() - 1) as f64 * q).round() as usize];
        RunStats {
            p50: pick(0.50),
            p99: pick(0.99),
            mean: v.iter().sum::<f64>() / v.len() as f64,
            count: v.len(),
        }
    }
}

/// Poll one task to a terminal state. Yields between polls: on few cores a
/// spinning poller would take the CPU the transport threads need, and a
/// sleep would add its timer slack to every completion.
pub fn wait(engine: &TransferEngine, batch: u64) -> Result<(), String> {
    loop {
        let st = engine
            .transfer_status(batch, 0)
            .map_err(|e| format!("getTransferStatus: {e}"))?;
        match st.status {
            TaskStatus::Completed => return Ok(()),
            TaskStatus::Waiting => std::thread::yield_now(),
            s => return Err(format!("request ended {s:?}")),
        }
    }
}

/// One request, timed from batch allocation to observed completion.
pub fn one(engine: &TransferEngine, req: &TransferRequest) -> Result<f64, String> {
    let t = Instant::now();
    let b = engine.allocate_batch_id(1);
    engine
        .submit_transfer(b, std::slice::from_ref(req), None)
        .map_err(|e| format!("submitTransfer: {e}"))?;
    let r = wait(engine, b);
    let took = t.elapsed().as_secs_f64();
    engine
        .free_batch_id(b)
        .map_err(|e| format!("freeBatchID: {e}"))?;
    r.map(|_| took)
}

pub struct Plan<'a> {
    pub ops: &'a [String],
    pub blocks: &'a [u64],
    pub duration: Duration,
    /// The local buffer requests use.
    pub local: u64,
}

fn opcode(op: &str) -> Opcode {
    if op == "read" {
        Opcode::Read
    } else {
        Opcode::Write
    }
}

/// Warm requests of every case on an opened segment; appends to `rows`.
pub fn warm_cases(
    engine: &TransferEngine,
    (id, remote): (SegmentId, u64),
    plan: &Plan,
    rows: &mut Vec<LatencyRow>,
) -> Result<(), String> {
    for op in plan.ops {
        for &block in plan.blocks {
            let req = TransferRequest {
                opcode: opcode(op),
                source: plan.local,
                target_id: id,
                target_offset: remote,
                length: block,
            };
            for _ in 0..20 {
                one(engine, &req)?;
            }
            let mut v = Vec::new();
            let start = Instant::now();
            while start.elapsed() < plan.duration || v.len() < 100 {
                v.push(one(engine, &req)?);
            }
            let stats = RunStats::of(v);
            match rows.iter_mut().find(|r| r.op == *op && r.block == block) {
                Some(r) => r.runs.push(stats),
                None => rows.push(LatencyRow {
                    op: op.clone(),
                    block,
                    runs: vec![stats],
                }),
            }
        }
    }
    Ok(())
}

/// The first request of a fresh engine: `setup` creates and prepares it
/// (create, install, register); then openSegment and one request of the
/// first op and block into the segment's first buffer. Returns the engine,
/// the segment id and buffer address, and the seconds from before `setup`
/// to the first completion.
pub fn first<F>(setup: F, segment: &str, plan: &Plan) -> Result<First, String>
where
    F: FnOnce() -> Arc<TransferEngine>,
{
    let t = Instant::now();
    let engine = setup();
    let t_setup = Instant::now();
    let id = engine
        .open_segment(segment)
        .map_err(|e| format!("openSegment({segment}): {e}"))?;
    let t_open = Instant::now();
    let remote = engine
        .metadata()
        .segment_desc(id)
        .and_then(|d| d.buffers.first().map(|b| b.addr))
        .ok_or_else(|| format!("segment {segment} has no registered buffer"))?;
    let req = TransferRequest {
        opcode: opcode(plan.ops.first().map(String::as_str).unwrap_or("write")),
        source: plan.local,
        target_id: id,
        target_offset: remote,
        length: plan.blocks.first().copied().unwrap_or(4096),
    };
    let b = engine.allocate_batch_id(1);
    engine
        .submit_transfer(b, &[req], None)
        .map_err(|e| format!("submitTransfer: {e}"))?;
    wait(&engine, b)?;
    let done = Instant::now();
    let _ = engine.free_batch_id(b);
    Ok(First {
        engine,
        target: (id, remote),
        secs: (done - t).as_secs_f64(),
        phases: [
            (t_setup - t).as_secs_f64(),
            (t_open - t_setup).as_secs_f64(),
            (done - t_open).as_secs_f64(),
        ],
    })
}

pub struct First {
    pub engine: Arc<TransferEngine>,
    pub target: (SegmentId, u64),
    pub secs: f64,
    /// Create + install + register, openSegment, first request.
    pub phases: [f64; 3],
}

pub fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

/// The markdown table and the JSON value of a latency run.
pub fn report(first: &[First], rows: &[LatencyRow], runs: usize) -> serde_json::Value {
    let phase = |i: usize| median(first.iter().map(|f| f.phases[i]).collect());
    let first: Vec<f64> = first.iter().map(|f| f.secs).collect();
    let first = &first[..];
    let us = |s: f64| s * 1e6;
    println!(
        "\nte-bench latency: one request at a time | median over {runs} run(s), each a fresh initiator engine"
    );
    println!(
        "create → openSegment → first completion: {:.3} ms (runs: {})",
        median(first.to_vec()) * 1e3,
        first
            .iter()
            .map(|s| format!("{:.3}", s * 1e3))
            .collect::<Vec<_>>()
            .join(", ")
    );
    println!(
        "  phase medians: create+install+register {:.3} ms, openSegment {:.3} ms, first request {:.3} ms",
        phase(0) * 1e3,
        phase(1) * 1e3,
        phase(2) * 1e3
    );
    println!("| op    | block    | p50 µs  | p99 µs  | mean µs | requests per run |");
    println!("|-------|----------|---------|---------|---------|------------------|");
    for r in rows {
        let m = |f: fn(&RunStats) -> f64| median(r.runs.iter().map(f).collect());
        println!(
            "| {:<5} | {:>8} | {:>7.1} | {:>7.1} | {:>7.1} | {:>16} |",
            r.op,
            crate::human(r.block),
            us(m(|s| s.p50)),
            us(m(|s| s.p99)),
            us(m(|s| s.mean)),
            r.runs.iter().map(|s| s.count).sum::<usize>() / r.runs.len().max(1)
        );
    }
    serde_json::json!({
        "create_to_first_completion_s": median(first.to_vec()),
        "create_to_first_completion_runs_s": first,
        "first_phases_s": {
            "create_install_register": phase(0),
            "open_segment": phase(1),
            "first_request": phase(2),
        },
        "cases": rows.iter().map(|r| {
            let m = |f: fn(&RunStats) -> f64| median(r.runs.iter().map(f).collect());
            serde_json::json!({
                "operation": r.op,
                "block_size": r.block,
                "p50_s": m(|s| s.p50),
                "p99_s": m(|s| s.p99),
                "mean_s": m(|s| s.mean),
                "runs": r.runs.iter().map(|s| serde_json::json!({
                    "p50_s": s.p50, "p99_s": s.p99, "mean_s": s.mean, "requests": s.count,
                })).collect::<Vec<_>>(),
            })
        }).collect::<Vec<_>>(),
    })
}
