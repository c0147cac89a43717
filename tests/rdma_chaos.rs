//! Chaos on the soft fabric: two engines with two NICs each keep a verified
//! WRITE/READ workload running while a seeded schedule of faults hits them:
//! one rail's port down and up, a QP fatal on one of the initiator's QPs,
//! a READ that ends silently without its bytes (rxe's way), and lost
//! packets. After every fault the workload must make progress again; at the
//! end no task failed and no COMPLETED task had a wrong byte. Prints the
//! time from each fault to the next verified batch.
//!
//! Short form (the README's test command): 24 faults. Long form:
//!   TE_CHAOS_FAULTS=1000 TE_CHAOS_SEED=7 cargo test --release --test rdma_chaos -- --nocapture
//! Own test binary: the settings are read from the process environment.

mod rdma_support;

use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault::{self, Scope};

const BLOCK: usize = 64 << 10;
const BATCH: usize = 16;

/// xorshift64*: a seeded schedule, the same on every machine.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Debug, Clone, Copy)]
enum Fault {
    PortFlap,
    QpFatal,
    SilentRead(u64),
    LostPackets(u64),
}

fn env_u64(name: &str, default: u64) -> u64 {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

/// QP numbers of `e`'s connected endpoints.
fn qpns(e: &transfer_engine::TransferEngine) -> Vec<u32> {
    links(e)["endpoints"]
        .as_array()
        .map(|eps| {
            eps.iter()
                .filter(|ep| ep["state"] == "connected")
                .flat_map(|ep| ep["qpns"].as_array().cloned().unwrap_or_default())
                .filter_map(|q| q.as_u64().map(|q| q as u32))
                .collect()
        })
        .unwrap_or_default()
}

#[test]
fn a_verified_workload_heals_through_a_seeded_fault_schedule() {
    // Every QP fatal and silent READ error costs a re-handshake; the long
    // form makes more of them per minute than the default cap allows.
    std::env::set_var("MC_TE_RS_HANDSHAKE_MAX_ATTEMPTS", "0");
    soft_env();
    fault::set_ack_timeout(Some(Duration::from_millis(10)));
    let faults = env_u64("TE_CHAOS_FAULTS", 24);
    let seed = env_u64("TE_CHAOS_SEED", 0x7e_5eed);
    let mut rng = Rng(seed | 1);
    let a = rdma_engine(&["ch0", "ch1"]);
    let b = rdma_engine(&["ch0", "ch1"]);
    let local = Buf::new(BLOCK * BATCH, 0);
    let remote = Buf::new(BLOCK * BATCH, 0);
    register(&a, &local);
    register(&b, &remote);
    let seg = open(&a, &b);
    let mut w = VerifiedWorkload::start(a.clone(), seg, &local, &remote, BLOCK, BATCH);
    let t = Duration::from_secs(60);
    let mut heal: Vec<(Fault, Duration)> = Vec::new();
    for i in 0..faults {
        if !w.wait_batches(2, t) {
            panic!(
                "fault {i}: no progress before it: {} ({})",
                links(&a),
                w.why()
            );
        }
        let f = match rng.below(4) {
            0 => Fault::PortFlap,
            1 => Fault::QpFatal,
            2 => Fault::SilentRead(1 + rng.below(2)),
            _ => Fault::LostPackets(1 + rng.below(3)),
        };
        let at = Instant::now();
        match f {
            Fault::PortFlap => fault::port_down("ch1", false).unwrap(),
            Fault::QpFatal => {
                let q = qpns(&a);
                if !q.is_empty() {
                    // A QP gone since the list was read is no fault.
                    let _ = fault::qp_fatal(q[rng.below(q.len() as u64) as usize]);
                }
            }
            Fault::SilentRead(n) => fault::silent_read_errors(Scope::Device("ch0"), n).unwrap(),
            Fault::LostPackets(n) => fault::drop_next_packets(Scope::Device("ch0"), n).unwrap(),
        }
        if !w.wait_batches(2, t) {
            panic!(
                "fault {i} {f:?}: no progress after it: {} ({})",
                links(&a),
                w.why()
            );
        }
        heal.push((f, w.first_done_after(at).map_or(t, |d| d - at)));
        if let Fault::PortFlap = f {
            fault::port_up("ch1").unwrap();
            assert!(
                wait_until(Duration::from_secs(10), || links(&a)["devices"][1]
                    ["active"]
                    == true),
                "fault {i}: ch1 not active again: {}",
                links(&a)
            );
        }
    }
    let batches = w
        .finish()
        .unwrap_or_else(|e| panic!("seed {seed}: {e}\n{}", links(&a)));
    fault::clear(Scope::All).unwrap();
    assert_eq!(counter(&a, "failed_slices"), 0, "{}", links(&a));
    let mut ms: Vec<f64> = heal.iter().map(|(_, d)| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(|x, y| x.total_cmp(y));
    let q = |p: f64| ms[((ms.len() - 1) as f64 * p).round() as usize];
    println!(
        "chaos seed {seed}: {faults} faults, {batches} verified batches of {BATCH} x {} KiB, 0 failed; fault -> next verified batch ms: p50 {:.1} p90 {:.1} max {:.1}",
        BLOCK >> 10,
        q(0.5),
        q(0.9),
        q(1.0)
    );
    println!("counters: {}", links(&a)["counters"]);
    fault::set_ack_timeout(None);
    a.shutdown();
    b.shutdown();
}
