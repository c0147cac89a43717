//! Software CPU cost per RDMA slice on the soft fabric: CPU time of the RDMA
//! transport's own threads (posting and polling workers, `te-rdma-*`) plus
//! the submitting thread's time inside `submit_transfer`, per 4 KiB WRITE (or READ)
//! slice. Excluded: the soft fabric's executor thread (`te-soft-rdma`, the
//! "NIC": it copies the bytes and generates completions), and the CPU a post
//! spends waking that thread when it sleeps (`soft::doorbell_wakes`: a NIC's
//! doorbell is an MMIO write, here a futex wake-up; printed apart, and
//! the total with it). The submitter's
//! `getTransferStatus` polls are printed apart (it sleeps between sweeps,
//! so waiting is not counted), and whole-process CPU for reference.
//!
//! Then the completion latency of one-at-a-time transfers: one `block`-byte
//! WRITE (or READ) submitted, its status polled until COMPLETED, the next one after
//! it; p50/p99 of submit → completion seen.
//!
//! `MC_RDMA_PROVIDER=soft cargo run --release --example rdma_slice_cost [slices] [block] [latency_samples] [write|read]`
//!
//! READ chains carry a confirming zero-length WRITE on the soft fabric
//! (`MC_TE_RS_CONFIRM_READS`, auto: on for software RoCE); compare with
//! `MC_TE_RS_CONFIRM_READS=0` for its cost.

use std::time::{Duration, Instant};

use transfer_engine::transport::rdma::verbs::soft;
use transfer_engine::{Opcode, TaskStatus, TransferEngine, TransferRequest};

fn cpu_time() -> Duration {
    // SAFETY: `ru` is plain data filled by getrusage.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer to a rusage struct.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) };
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

fn clock(id: libc::clockid_t) -> Option<Duration> {
    // SAFETY: `ts` is plain data filled by clock_gettime.
    let mut ts: libc::timespec = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer; an invalid clock id returns an error, no UB.
    let rc = unsafe { libc::clock_gettime(id, &mut ts) };
    (rc == 0).then(|| Duration::new(ts.tv_sec as u64, ts.tv_nsec as u32))
}

/// CPU time of this thread (ns resolution).
fn thread_cpu() -> Duration {
    clock(libc::CLOCK_THREAD_CPUTIME_ID).unwrap_or_default()
}

/// Sum of the CPU clocks of this process's threads whose name starts with
/// `prefix` (per-thread clock of tid: `(!tid << 3) | CPUCLOCK_PERTHREAD |
/// CPUCLOCK_SCHED`, what glibc's pthread_getcpuclockid builds).
fn threads_cpu(prefix: &str) -> (Duration, usize) {
    let mut sum = Duration::ZERO;
    let mut n = 0;
    let Ok(dir) = std::fs::read_dir("/proc/self/task") else {
        return (sum, n);
    };
    for e in dir.flatten() {
        let Some(tid) = e.file_name().to_str().and_then(|s| s.parse::<i32>().ok()) else {
            continue;
        };
        let comm = std::fs::read_to_string(e.path().join("comm")).unwrap_or_default();
        if !comm.trim_end().starts_with(prefix) {
            continue;
        }
        if let Some(t) = clock((!tid << 3) | 6) {
            sum += t;
            n += 1;
        }
    }
    (sum, n)
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
    let opcode = match args.get(4).map(String::as_str) {
        Some("read") => Opcode::Read,
        _ => Opcode::Write,
    };
    let m = r#"{"cpu:0":[["soft0"],[]],"*":[["soft0"],[]]}"#;
    let mk = || {
        let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("engine");
        e.install_transport("rdma", Some(m)).expect("rdma");
        e
    };
    let (a, b) = (mk(), mk());
    let len = (block * batch) as usize;
    let src = vec![7u8; len];
    let dst = vec![0u8; len];
    a.register_local_memory(src.as_ptr() as u64, len as u64, "cpu:0", true)
        .unwrap();
    b.register_local_memory(dst.as_ptr() as u64, len as u64, "cpu:0", true)
        .unwrap();
    let seg = a.open_segment(&b.local_server_name()).unwrap();
    let reqs: Vec<TransferRequest> = (0..batch)
        .map(|i| TransferRequest {
            opcode,
            source: src.as_ptr() as u64 + i * block,
            target_id: seg,
            target_offset: dst.as_ptr() as u64 + i * block,
            length: block,
        })
        .collect();
    // Returns the submitting thread's CPU time in submit_transfer, and in
    // all (submit and status polls).
    let run = |n: u64| {
        let mut submit = Duration::ZERO;
        let start = thread_cpu();
        for _ in 0..n / batch {
            let id = a.allocate_batch_id(reqs.len());
            let c = thread_cpu();
            a.submit_transfer(id, &reqs, None).unwrap();
            submit += thread_cpu() - c;
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
                std::thread::sleep(Duration::from_micros(20));
            }
            a.free_batch_id(id).unwrap();
        }
        (submit, thread_cpu() - start)
    };
    run(batch * 20); // warm up: handshake, caches
    let (p0, w0, f0) = (
        cpu_time(),
        threads_cpu("te-rdma-"),
        threads_cpu("te-soft-rdma"),
    );
    let (post0, poll0) = (threads_cpu("te-rdma-post"), threads_cpu("te-rdma-poll"));
    let bell0 = soft::doorbell_wakes();
    let t0 = Instant::now();
    let (submit, submitter) = run(slices);
    let polls = submitter.saturating_sub(submit);
    let wall = t0.elapsed();
    let (p1, w1, f1) = (
        cpu_time(),
        threads_cpu("te-rdma-"),
        threads_cpu("te-soft-rdma"),
    );
    let (post1, poll1) = (threads_cpu("te-rdma-post"), threads_cpu("te-rdma-poll"));
    let bell1 = soft::doorbell_wakes();
    let bell = bell1.1.saturating_sub(bell0.1);
    let workers = w1.0.saturating_sub(w0.0);
    let fabric = f1.0.saturating_sub(f0.0);
    let n = (slices / batch * batch) as f64;
    let per = |d: Duration| d.as_secs_f64() * 1e9 / n;
    println!(
        "{n} slices of {block} B in {:.3} s wall; process CPU {:.3} s ({:.0} ns/slice)",
        wall.as_secs_f64(),
        (p1 - p0).as_secs_f64(),
        per(p1 - p0)
    );
    println!(
        "  transport workers ({} threads): {:.0} ns/slice; submit path: {:.0} ns/slice; status polls: {:.0} ns/slice; soft fabric executor (excluded): {:.0} ns/slice",
        w1.1,
        per(workers),
        per(submit),
        per(polls),
        per(fabric)
    );
    println!(
        "    of which posting threads: {:.0} ns/slice, polling threads: {:.0} ns/slice",
        per(post1.0.saturating_sub(post0.0)),
        per(poll1.0.saturating_sub(poll0.0))
    );
    println!(
        "    waking the sleeping soft executor from posts (the emulated NIC's doorbell, excluded): {:.0} ns/slice ({} wake-ups)",
        per(bell),
        bell1.0 - bell0.0
    );
    let own = (workers + submit).saturating_sub(bell);
    println!(
        "software CPU per slice (transport threads + submit, soft executor and its wake-ups excluded): {:.0} ns; with the wake-ups: {:.0} ns; with status polls too: {:.0} ns",
        per(own),
        per(workers + submit),
        per(workers + submitter)
    );
    let samples: usize = args.get(3).and_then(|s| s.parse().ok()).unwrap_or(5000);
    let mut lat = latencies(&a, &reqs[..1], samples);
    lat.sort();
    let pct = |p: usize| lat[(lat.len() - 1) * p / 100].as_secs_f64() * 1e6;
    println!(
        "one-at-a-time {block} B {opcode:?}, submit -> completion seen ({samples} samples): p50 {:.1} us, p90 {:.1} us, p99 {:.1} us",
        pct(50),
        pct(90),
        pct(99)
    );
    a.shutdown();
    b.shutdown();
}

/// Submit `req` alone, poll its status until it ends, `n` times; each
/// sample is submit → completion seen by the caller.
fn latencies(e: &TransferEngine, req: &[TransferRequest], n: usize) -> Vec<Duration> {
    let mut out = Vec::with_capacity(n);
    for i in 0..n + n / 10 {
        let id = e.allocate_batch_id(1);
        let t = Instant::now();
        e.submit_transfer(id, req, None).unwrap();
        while !matches!(
            e.transfer_status(id, 0).unwrap().status,
            TaskStatus::Completed | TaskStatus::Failed
        ) {
            // Polite polling: on a host with fewer cores than busy threads
            // a pure spin starves the thread that produces the completion.
            std::thread::yield_now();
        }
        let d = t.elapsed();
        e.free_batch_id(id).unwrap();
        // The first tenth warms up (and lets earlier batches drain).
        if i >= n / 10 {
            out.push(d);
        }
    }
    out
}
