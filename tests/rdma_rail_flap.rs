//! Rail failover on the soft fabric: two engines with two NICs each keep a
//! verified WRITE/READ workload running while one rail's port goes down and
//! up five times. No task fails, every byte of every COMPLETED task is in
//! place, and after each port-down the workload goes on over the other rail.
//! Prints the time from each port-down to the next completed batch.

mod rdma_support;

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault;
use transfer_engine::{Opcode, TaskStatus};

const BLOCK: usize = 64 << 10;
const BATCH: usize = 32;

#[test]
fn a_flapping_rail_fails_no_task_and_loses_no_byte() {
    soft_env();
    fault::set_ack_timeout(Some(Duration::from_millis(20)));
    let a = rdma_engine(&["fl0", "fl1"]);
    let b = rdma_engine(&["fl0", "fl1"]);
    let size = BLOCK * BATCH;
    let local = Buf::new(size, 0);
    let remote = Buf::new(size, 0);
    register(&a, &local);
    register(&b, &remote);
    let seg = open(&a, &b);
    let (local_addr, remote_addr) = (local.addr(), remote.addr());

    let stop = Arc::new(AtomicBool::new(false));
    let batches = Arc::new(AtomicU64::new(0));
    // Instants at which batches completed.
    let done_at = Arc::new(Mutex::new(Vec::<Instant>::new()));
    let worker = {
        let (a, stop, batches, done_at) =
            (a.clone(), stop.clone(), batches.clone(), done_at.clone());
        std::thread::spawn(move || -> Result<(), String> {
            let local = unsafe_slice(local_addr, size);
            let remote = unsafe_slice(remote_addr, size);
            let mut round = 0u64;
            while !stop.load(Ordering::Acquire) {
                round += 1;
                let want = pattern((round % 251) as u8, size);
                let op = if round % 2 == 0 {
                    Opcode::Write
                } else {
                    Opcode::Read
                };
                // WRITE: ours → theirs; READ: theirs (filled first) → ours.
                match op {
                    Opcode::Write => local.copy_from_slice(&want),
                    Opcode::Read => remote.copy_from_slice(&want),
                }
                let reqs: Vec<_> = (0..BATCH)
                    .map(|i| {
                        let off = (i * BLOCK) as u64;
                        req(op, local_addr + off, seg, remote_addr + off, BLOCK as u64)
                    })
                    .collect();
                let st = run_batch(&a, &reqs, Duration::from_secs(60));
                if let Some(i) = st.iter().position(|s| s.status != TaskStatus::Completed) {
                    return Err(format!("round {round} {op:?}: task {i} {:?}", st[i].status));
                }
                let landed = match op {
                    Opcode::Write => &*remote,
                    Opcode::Read => &*local,
                };
                if landed != &want[..] {
                    return Err(format!("round {round} {op:?}: COMPLETED with wrong bytes"));
                }
                done_at.lock().unwrap().push(Instant::now());
                batches.fetch_add(1, Ordering::Release);
            }
            Ok(())
        })
    };

    let wait_batches = |n: u64| {
        let target = batches.load(Ordering::Acquire) + n;
        assert!(
            wait_until(Duration::from_secs(60), || batches.load(Ordering::Acquire)
                >= target
                || worker.is_finished()),
            "the workload made no progress: {}",
            links(&a)
        );
    };
    let mut heal = Vec::new();
    for flap in 0..5 {
        wait_batches(4);
        let down = Instant::now();
        fault::port_down("fl1", false).unwrap();
        wait_batches(4);
        let first = done_at.lock().unwrap().iter().copied().find(|t| *t > down);
        heal.push(first.map(|t| t - down));
        fault::port_up("fl1").unwrap();
        assert!(
            wait_until(Duration::from_secs(10), || links(&a)["devices"][1]
                ["active"]
                == true),
            "flap {flap}: fl1 not active again: {}",
            links(&a)
        );
    }
    // The rail came back and carries slices again.
    let before = links(&a)["devices"][1]["posted_slices"]
        .as_u64()
        .unwrap_or(0);
    wait_batches(4);
    stop.store(true, Ordering::Release);
    let r = worker.join().expect("workload thread");
    let after = links(&a)["devices"][1]["posted_slices"]
        .as_u64()
        .unwrap_or(0);
    r.unwrap();
    assert!(
        after > before,
        "fl1 took no slices after it came back: {}",
        links(&a)
    );
    assert_eq!(counter(&a, "failed_slices"), 0, "{}", links(&a));
    let ms: Vec<String> = heal
        .iter()
        .map(|d| d.map_or("-".into(), |d| format!("{:.1}", d.as_secs_f64() * 1e3)))
        .collect();
    println!("port down -> next completed batch (ms): {}", ms.join(" "));
    fault::set_ack_timeout(None);
    a.shutdown();
    b.shutdown();
}

/// The registered buffer at `addr` as a slice the workload thread owns
/// while the transfers on it are quiet (it writes before a batch and reads
/// after it, never during).
fn unsafe_slice(addr: u64, len: usize) -> &'static mut [u8] {
    // SAFETY: `addr..addr+len` is a live Vec of the test that outlives the
    // worker thread (joined before the buffers drop), and no transfer on it
    // runs while the thread touches it.
    unsafe { std::slice::from_raw_parts_mut(addr as *mut u8, len) }
}
