//! te-bench: Mooncake's transfer_engine_bench rebuilt on te-rs, plus a
//! one-command loopback mode, byte checks, a raw-TCP baseline measured in
//! the same run, medians over runs and a JSON summary.

mod args;
mod baseline;
mod gflags;
mod latency;
mod region;
mod workload;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use args::{Args, Flavor};
use region::Region;
use transfer_engine::{Opcode, TransferEngine};
use workload::{Case, Outcome, Target};

static STOP: AtomicBool = AtomicBool::new(false);

extern "C" fn on_signal(_: libc::c_int) {
    STOP.store(true, Ordering::SeqCst);
}

fn fail(msg: impl std::fmt::Display) -> ! {
    eprintln!("te-bench: {msg}");
    std::process::exit(1);
}

fn install(engine: &TransferEngine, a: &Args) -> Result<(), String> {
    if a.auto_discovery {
        return Ok(());
    }
    let matrix = if !a.nic_priority_matrix.is_empty() {
        Some(
            std::fs::read_to_string(&a.nic_priority_matrix)
                .map_err(|e| format!("{}: {e}", a.nic_priority_matrix))?,
        )
    } else if !a.device_name.is_empty() {
        let devs: Vec<&str> = a.device_name.split(',').map(str::trim).collect();
        let entry = serde_json::json!([devs, Vec::<String>::new()]);
        Some(serde_json::json!({ "cpu:0": entry, "cpu:1": entry, "*": entry }).to_string())
    } else {
        if a.protocol == "rdma" {
            engine.discover_topology().map_err(|e| e.to_string())?;
        }
        None
    };
    engine
        .install_transport(&a.protocol, matrix.as_deref())
        .map_err(|e| format!("installTransport({}): {e}", a.protocol))
}

/// The engine's segment name. As upstream's transfer_engine_bench, a target
/// or initiator publishes `--local_server_name` as given, so another
/// process finds it with `--segment_id=NAME`; only loopback, which runs
/// both engines in one process, keeps them apart with a role suffix.
fn new_engine(a: &Args, role: &str) -> Arc<TransferEngine> {
    let name = if a.metadata_server == "P2PHANDSHAKE" || a.mode != "loopback" {
        a.local_server_name.clone()
    } else {
        format!("{}-{role}-{}", a.local_server_name, std::process::id())
    };
    let e = TransferEngine::new(&a.metadata_server, &name, a.auto_discovery)
        .unwrap_or_else(|e| fail(format!("createTransferEngine({}): {e}", a.metadata_server)));
    install(&e, a).unwrap_or_else(|e| fail(e));
    e
}

fn register(engine: &TransferEngine, r: &Region) {
    engine
        .register_local_memory(r.addr(), r.len() as u64, "cpu:0", true)
        .unwrap_or_else(|e| fail(format!("registerLocalMemory: {e}")));
}

fn buffer_len(a: &Args) -> usize {
    let max_block = a.block_sizes.iter().copied().max().unwrap_or(65536);
    let need = max_block * (a.batch_size * a.threads) as u64;
    if a.flavor == Flavor::Upstream && a.buffer_size < need {
        log::warn!("Invalid flag: buffer size is smaller than require_size, adjust to {need}");
    }
    a.buffer_size.max(need) as usize
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.partial_cmp(b).unwrap_or(std::cmp::Ordering::Equal));
    if v.is_empty() {
        0.0
    } else {
        v[v.len() / 2]
    }
}

struct Row {
    op: String,
    block: u64,
    runs: Vec<Outcome>,
    raw: Vec<f64>,
}

impl Row {
    fn rate(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|o| o.bytes as f64 / o.elapsed)
                .collect(),
        )
    }
    fn cores(&self) -> f64 {
        median(self.runs.iter().map(|o| o.cpu_secs / o.elapsed).collect())
    }
    fn cpu_per_gb(&self) -> f64 {
        median(
            self.runs
                .iter()
                .map(|o| {
                    if o.bytes == 0 {
                        0.0
                    } else {
                        o.cpu_secs / (o.bytes as f64 / 1e9)
                    }
                })
                .collect(),
        )
    }
}

fn run_cases(
    a: &Args,
    engine: &Arc<TransferEngine>,
    target: &Target,
    local: &Region,
    scratch: &Region,
) -> Vec<Row> {
    let mut rows = Vec::new();
    for op in &a.operations {
        for &block in &a.block_sizes {
            let opcode = if op == "read" {
                Opcode::Read
            } else {
                Opcode::Write
            };
            if a.check && opcode == Opcode::Read {
                if let Some(view) = target.local_view {
                    region::fill(view.slice_mut(0, view.len()), workload::TARGET_SEED, 0);
                }
            }
            let case = Case {
                op: opcode,
                block,
                batch_size: a.batch_size,
                threads: a.threads,
                duration: Duration::from_secs_f64(a.duration),
                check: a.check,
                progress: a.progress,
            };
            let mut row = Row {
                op: op.clone(),
                block,
                runs: Vec::new(),
                raw: Vec::new(),
            };
            for _ in 0..a.runs {
                let out = workload::run(engine, local, scratch, target, &case)
                    .unwrap_or_else(|e| fail(e));
                log_completed(a, block, &out);
                row.runs.push(out);
                if a.baseline {
                    let secs = a.duration.clamp(0.5, 3.0);
                    match baseline::raw_tcp_stream(block as usize, secs) {
                        Ok(r) => row.raw.push(r),
                        Err(e) => eprintln!("te-bench: raw TCP baseline failed: {e}"),
                    }
                }
            }
            if a.flavor == Flavor::TeBench {
                eprintln!(
                    "te-bench: {op} {block} B done: {:.3} GB/s (median of {})",
                    row.rate() / 1e9,
                    a.runs
                );
            }
            rows.push(row);
        }
    }
    rows
}

/// transfer_engine_bench's result line (an INFO log line, as upstream's
/// `LOG(INFO) << "Test completed: ..."`), which scripts parse.
fn log_completed(a: &Args, block: u64, out: &Outcome) {
    let bytes = out.batches * a.batch_size as u64 * block;
    log::info!(
        "Test completed: duration {:.2}, batch count {}, throughput {}",
        out.elapsed,
        out.batches,
        a.rate_text(bytes, out.elapsed)
    );
}

fn report(a: &Args, rows: &[Row]) {
    if a.flavor == Flavor::Upstream {
        return;
    }
    let unit = a.unit_bytes();
    let p = a.report_precision;
    println!(
        "\nte-bench: protocol {} | metadata {} | threads {} x batch {} | {} s per run | median of {} run(s){}",
        a.protocol,
        a.metadata_server,
        a.threads,
        a.batch_size,
        a.duration,
        a.runs,
        if a.check { " | every byte verified" } else { "" }
    );
    println!(
        "| op    | block    | te-rs {u}/s | raw TCP {u}/s | te-rs/raw | CPU cores | CPU s per GB | batches |",
        u = a.report_unit
    );
    println!("|-------|----------|-------------|---------------|-----------|-----------|--------------|---------|");
    for r in rows {
        let raw = median(r.raw.clone());
        let ratio = if raw > 0.0 {
            format!("{:.2}", r.rate() / raw)
        } else {
            "-".into()
        };
        let raw_s = if raw > 0.0 {
            format!("{:.p$}", raw / unit)
        } else {
            "-".into()
        };
        println!(
            "| {:<5} | {:>8} | {:>11.p$} | {:>13} | {:>9} | {:>9.2} | {:>12.3} | {:>7} |",
            r.op,
            human(r.block),
            r.rate() / unit,
            raw_s,
            ratio,
            r.cores(),
            r.cpu_per_gb(),
            r.runs.iter().map(|o| o.batches).sum::<u64>() / r.runs.len() as u64,
        );
    }
    if let Some(dest) = &a.json {
        let cases: Vec<serde_json::Value> = rows
            .iter()
            .map(|r| {
                serde_json::json!({
                    "operation": r.op,
                    "block_size": r.block,
                    "throughput_bps": r.rate(),
                    "raw_tcp_bps": median(r.raw.clone()),
                    "ratio_vs_raw": if r.raw.is_empty() { serde_json::Value::Null } else { (r.rate() / median(r.raw.clone())).into() },
                    "cpu_cores": r.cores(),
                    "cpu_secs_per_gb": r.cpu_per_gb(),
                    "runs": r.runs.iter().map(|o| serde_json::json!({
                        "bytes": o.bytes, "batches": o.batches, "elapsed_s": o.elapsed,
                        "cpu_s": o.cpu_secs, "verified_bytes": o.verified_bytes,
                    })).collect::<Vec<_>>(),
                    "raw_tcp_runs_bps": r.raw,
                })
            })
            .collect();
        let summary = serde_json::json!({
            "tool": "te-bench",
            "protocol": a.protocol,
            "metadata_server": a.metadata_server,
            "threads": a.threads,
            "batch_size": a.batch_size,
            "duration_s": a.duration,
            "check": a.check,
            "cases": cases,
        });
        write_json(dest, &summary);
    }
}

fn human(b: u64) -> String {
    if b >= 1 << 20 && b % (1 << 20) == 0 {
        format!("{} MiB", b >> 20)
    } else if b >= 1024 && b % 1024 == 0 {
        format!("{} KiB", b >> 10)
    } else {
        format!("{b} B")
    }
}

/// `--latency`: per run a fresh initiator engine against `segment`.
fn run_latency(a: &Args, segment: &str) {
    let max_block = a.block_sizes.iter().copied().max().unwrap_or(4096) as usize;
    let local = Region::new(max_block).unwrap_or_else(|e| fail(e));
    let plan = latency::Plan {
        ops: &a.operations,
        blocks: &a.block_sizes,
        duration: Duration::from_secs_f64(a.duration),
        local: local.addr(),
    };
    let (mut firsts, mut rows) = (Vec::new(), Vec::new());
    for _ in 0..a.runs {
        let setup = || {
            let e = new_engine(a, "initiator");
            register(&e, &local);
            e
        };
        let f = latency::first(setup, segment, &plan).unwrap_or_else(|e| fail(e));
        latency::warm_cases(&f.engine, f.target, &plan, &mut rows).unwrap_or_else(|e| fail(e));
        f.engine.shutdown();
        firsts.push(f);
    }
    let summary = latency::report(&firsts, &rows, a.runs);
    if let Some(dest) = &a.json {
        let v = serde_json::json!({
            "tool": "te-bench",
            "protocol": a.protocol,
            "metadata_server": a.metadata_server,
            "latency": summary,
        });
        write_json(dest, &v);
    }
}

/// `transfer_engine_bench` when installed (or linked) under that name.
fn flavor_of(argv0: &str) -> Flavor {
    let name = std::path::Path::new(argv0)
        .file_name()
        .map(|n| n.to_string_lossy().into_owned())
        .unwrap_or_default();
    if name == "transfer_engine_bench" {
        Flavor::Upstream
    } else {
        Flavor::TeBench
    }
}

fn main() {
    transfer_engine::logging::init();
    let mut argv = std::env::args();
    let flavor = flavor_of(&argv.next().unwrap_or_default());
    let argv: Vec<String> = argv.collect();
    let a = match Args::parse_as(flavor, &argv) {
        Ok(a) => a,
        Err(e) if e.is_empty() => {
            print!("{}", args::USAGE);
            return;
        }
        Err(e) => {
            eprint!("te-bench: {e}\n\n{}", args::USAGE);
            std::process::exit(2);
        }
    };
    let len = buffer_len(&a);
    match a.mode.as_str() {
        "target" => {
            let engine = new_engine(&a, "target");
            let buf = Region::new(len).unwrap_or_else(|e| fail(e));
            if a.check {
                region::fill(buf.slice_mut(0, len), workload::TARGET_SEED, 0);
            }
            register(&engine, &buf);
            // SAFETY: installs an async-signal-safe handler (one atomic store).
            unsafe {
                libc::signal(libc::SIGINT, on_signal as *const () as libc::sighandler_t);
                libc::signal(libc::SIGTERM, on_signal as *const () as libc::sighandler_t);
            }
            // An initiator elsewhere (te-rs or C++) needs both.
            println!(
                "te-bench target ready: segment {} buffer {:#x} length {}",
                engine.local_server_name(),
                buf.addr(),
                buf.len()
            );
            while !STOP.load(Ordering::SeqCst) {
                std::thread::sleep(Duration::from_millis(100));
            }
            let _ = engine.unregister_local_memory(buf.addr());
            engine.shutdown();
        }
        "initiator" if a.latency => run_latency(&a, &a.segment_id),
        "initiator" => {
            let engine = new_engine(&a, "initiator");
            let local = Region::new(len).unwrap_or_else(|e| fail(e));
            let scratch = Region::new(len).unwrap_or_else(|e| fail(e));
            register(&engine, &local);
            register(&engine, &scratch);
            let id = engine
                .open_segment(&a.segment_id)
                .unwrap_or_else(|e| fail(format!("openSegment({}): {e}", a.segment_id)));
            let desc = engine
                .metadata()
                .segment_desc(id)
                .unwrap_or_else(|| fail("segment descriptor vanished"));
            let remote = desc.buffers.first().unwrap_or_else(|| {
                fail(format!("segment {} has no registered buffer", a.segment_id))
            });
            if (remote.length as usize) < len {
                fail(format!(
                    "target buffer has {} bytes, the workload needs {len}",
                    remote.length
                ));
            }
            let target = Target {
                id,
                base: remote.addr,
                local_view: None,
            };
            let rows = run_cases(&a, &engine, &target, &local, &scratch);
            report(&a, &rows);
            engine.shutdown();
        }
        _ => {
            let target_engine = new_engine(&a, "target");
            let target_buf = Region::new(len).unwrap_or_else(|e| fail(e));
            register(&target_engine, &target_buf);
            if a.latency {
                run_latency(&a, &target_engine.local_server_name());
                target_engine.shutdown();
                return;
            }
            let engine = new_engine(&a, "initiator");
            let local = Region::new(len).unwrap_or_else(|e| fail(e));
            let scratch = Region::new(len).unwrap_or_else(|e| fail(e));
            register(&engine, &local);
            register(&engine, &scratch);
            let id = engine
                .open_segment(&target_engine.local_server_name())
                .unwrap_or_else(|e| fail(format!("openSegment: {e}")));
            let target = Target {
                id,
                base: target_buf.addr(),
                local_view: Some(&target_buf),
            };
            let rows = run_cases(&a, &engine, &target, &local, &scratch);
            report(&a, &rows);
            engine.shutdown();
            target_engine.shutdown();
        }
    }
}

/// `--json=DEST`: pretty JSON to stdout (`-`) or to a file.
fn write_json(dest: &str, v: &serde_json::Value) {
    let text = serde_json::to_string_pretty(v).unwrap_or_default();
    if dest == "-" {
        println!("{text}");
    } else if let Err(e) = std::fs::write(dest, text) {
        fail(format!("writing {dest}: {e}"));
    }
}
