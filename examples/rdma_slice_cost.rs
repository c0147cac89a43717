//! Software CPU cost per RDMA slice on the soft fabric, with the data copy
//! excluded: process CPU time (all threads) for N 4 KiB WRITE slices, minus
//! the CPU time of copying the same bytes with plain memcpy.
//!
//! `MC_RDMA_PROVIDER=soft cargo run --release --example rdma_slice_cost [slices] [block]`

use std::time::{Duration, Instant};

use transfer_engine::{Opcode, TaskStatus, TransferEngine, TransferRequest};

fn cpu_time() -> Duration {
    // SAFETY: `ru` is plain data filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn main() {
    if std::env::var_os("MC_RDMA_PROVIDER").is_none() {
        std::env::set_var("MC_RDMA_PROVIDER", "soft");
    }
    if std::env::var_os("MC_LOG_LEVEL").is_none() {
        std::env::set_var("MC_LOG_LEVEL", "WARNING");
    }
    let args: Vec<String> = std::env::args().collect();
    let slices: u64 = args.get(1).and_then(|s| s.parse().ok()).unwrap_or(200_000);
    let block: u64 = args.get(2).and_then(|s| s.parse().ok()).unwrap_or(4096);
    let batch = 256u64;
    let m = r#"{"cpu:0":[["soft0"],[]],"*":[["soft0"],[]]}"#;
    let mk = || {
        let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("engine");
        e.install_transport("rdma", Some(m)).expect("rdma");
        e
    };
    let (a, b) = (mk(), mk());
    let len = (block * batch) as usize;
    let src = vec![7u8; len];
    let mut dst = vec![0u8; len];
    a.register_local_memory(src.as_ptr() as u64, len as u64, "cpu:0", true)
        .unwrap();
    b.register_local_memory(dst.as_ptr() as u64, len as u64, "cpu:0", true)
        .unwrap();
    let seg = a.open_segment(&b.local_server_name()).unwrap();
    let reqs: Vec<TransferRequest> = (0..batch)
        .map(|i| TransferRequest {
            opcode: Opcode::Write,
            source: src.as_ptr() as u64 + i * block,
            target_id: seg,
            target_offset: dst.as_ptr() as u64 + i * block,
            length: block,
        })
        .collect();
    let run = |n: u64| {
        for _ in 0..n / batch {
            let id = a.allocate_batch_id(reqs.len());
            a.submit_transfer(id, &reqs, None).unwrap();
            loop {
                let done = (0..reqs.len()).all(|i| {
                    matches!(
                        a.transfer_status(id, i).unwrap().status,
                        TaskStatus::Completed | TaskStatus::Failed
                    )
                });
                if done {
                    break;
                }
                std::thread::yield_now();
            }
            a.free_batch_id(id).unwrap();
        }
    };
    run(batch * 20); // warm up: handshake, caches
    let (c0, t0) = (cpu_time(), Instant::now());
    run(slices);
    let (cpu, wall) = (cpu_time() - c0, t0.elapsed());
    // The soft fabric's data movement, measured alone.
    let c1 = cpu_time();
    for _ in 0..slices / batch {
        for i in 0..batch as usize {
            let r = i * block as usize..(i + 1) * block as usize;
            dst[r.clone()].copy_from_slice(&src[r]);
        }
        std::hint::black_box(&dst);
    }
    let copy = cpu_time() - c1;
    let n = (slices / batch * batch) as f64;
    println!(
        "{n} slices of {block} B in {:.3} s wall: process CPU {:.3} s, memcpy alone {:.3} s",
        wall.as_secs_f64(),
        cpu.as_secs_f64(),
        copy.as_secs_f64()
    );
    println!(
        "software CPU per slice (copy excluded): {:.2} us  (with copy: {:.2} us)",
        (cpu.saturating_sub(copy)).as_secs_f64() * 1e6 / n,
        cpu.as_secs_f64() * 1e6 / n
    );
    a.shutdown();
    b.shutdown();
}
