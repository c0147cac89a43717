//! Transport failover on the soft fabric: two engines with two NICs each
//! and the tcp transport installed too keep a verified WRITE/READ workload
//! running while every rail is down: the slices go over TCP, no task
//! fails, every byte is in place. When the rails come back, new requests
//! go over RDMA again (the NICs post slices, TCP carries none).

mod rdma_support;

use std::sync::Once;
use std::time::{Duration, Instant};

use rdma_support::*;
use transfer_engine::transport::rdma::verbs::soft::fault;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

const BLOCK: usize = 64 << 10;
const BATCH: usize = 16;
/// A paused peer rail is tried again after 1 s (default 30): the
/// initiator learns of a peer NIC's return only by trying it.
fn short_rail_pause() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| std::env::set_var("MC_RDMA_RAIL_PAUSE_SECONDS", "1"));
    soft_env();
}

fn posted(e: &TransferEngine, ndev: usize) -> u64 {
    let l = links(e);
    (0..ndev)
        .map(|i| l["devices"][i]["posted_slices"].as_u64().unwrap_or(0))
        .sum()
}

fn carried(e: &TransferEngine) -> u64 {
    counter(e, "tcp_fallback_slices")
}

/// Engines `a` (NICs `a_devs`) and `b` (`b_devs`), both with tcp too, run
/// the workload from `a`; the ports of `down` go down, then up again.
fn outage_and_heal(a_devs: &[&str], b_devs: &[&str], down: &[&str]) {
    short_rail_pause();
    fault::set_ack_timeout(Some(Duration::from_millis(20)));
    let a = rdma_tcp_engine(a_devs);
    let b = rdma_tcp_engine(b_devs);
    let ndev = a_devs.len();
    let size = BLOCK * BATCH;
    let local = Buf::new(size, 0);
    let remote = Buf::new(size, 0);
    register(&a, &local);
    register(&b, &remote);
    let seg = open(&a, &b);
    let desc = a.metadata().segment_desc(seg).expect("peer descriptor");
    assert_eq!(desc.protocol, "rdma");
    assert!(
        desc.tcp_fallback_port.is_some_and(|p| p != 0),
        "a peer with rdma and tcp offers its TCP data port: {desc:?}"
    );
    let mut w = VerifiedWorkload::start(a.clone(), seg, &local, &remote, BLOCK, BATCH);
    let fail = |w: &mut VerifiedWorkload, what: &str| -> ! {
        panic!("{what} ({}): {}", w.why(), links(&a));
    };
    let wait_batches = |w: &mut VerifiedWorkload, n: u64| {
        if !w.wait_batches(n, Duration::from_secs(60)) {
            fail(w, "the workload made no progress or ended");
        }
    };

    // Over RDMA while the rails are up.
    wait_batches(&mut w, 3);
    if carried(&a) != 0 || posted(&a, ndev) == 0 {
        fail(&mut w, "slices went over TCP with RDMA up");
    }

    // Every rail down: the workload goes on over TCP, and RDMA is tried
    // again after each failover window (which fails over again, doubled).
    for d in down {
        fault::port_down(d, false).unwrap();
    }
    if !wait_until(Duration::from_secs(30), || {
        counter(&a, "tcp_fallback_windows") >= 3
    }) {
        fail(&mut w, "RDMA was not tried again after a failover window");
    }
    let during = carried(&a);
    wait_batches(&mut w, 4);
    if carried(&a) < during + 2 * BATCH as u64 {
        fail(&mut w, "batches completed during the outage without TCP");
    }

    // Rails back: new requests return to RDMA once the failover window
    // closes; then TCP carries nothing while the NICs post.
    for d in down {
        fault::port_up(d).unwrap();
    }
    for i in 0..ndev {
        if !wait_until(Duration::from_secs(10), || {
            links(&a)["devices"][i]["active"] == true
        }) {
            fail(&mut w, "a NIC is not active again");
        }
    }
    // Within a failover window (at most 4 s) plus a paused peer rail's
    // pause (1 s here).
    let deadline = Instant::now() + Duration::from_secs(30);
    let mut back = false;
    while !back && Instant::now() < deadline {
        let (c0, p0) = (carried(&a), posted(&a, ndev));
        wait_batches(&mut w, 2);
        back = carried(&a) == c0 && posted(&a, ndev) >= p0 + 2 * BATCH as u64;
    }
    w.finish().unwrap();
    assert!(back, "traffic did not return to RDMA: {}", links(&a));
    assert_eq!(counter(&a, "failed_slices"), 0, "{}", links(&a));
    println!(
        "{down:?} down: slices over TCP {}, posted on the NICs {}, failover windows {}",
        carried(&a),
        posted(&a, ndev),
        counter(&a, "tcp_fallback_windows")
    );
    fault::set_ack_timeout(None);
    a.shutdown();
    b.shutdown();
}

/// Both engines share two NICs; both go down (the initiator's contexts go
/// inactive: no route at all).
#[test]
fn every_rail_down_goes_over_tcp_and_back_to_rdma() {
    outage_and_heal(&["tfo0", "tfo1"], &["tfo0", "tfo1"], &["tfo0", "tfo1"]);
}

/// Only the peer's NIC goes down: the initiator's WRs are retransmitted
/// until they fail, re-handshakes fail, the rail is paused; the slices go
/// over TCP once RDMA has no attempt left.
#[test]
fn the_peers_nic_down_goes_over_tcp_and_back_to_rdma() {
    outage_and_heal(&["tfo3"], &["tfo4"], &["tfo4"]);
}

/// A peer with only rdma installed offers no TCP: its descriptor is as
/// before (no `tcp_fallback_port`), and an outage fails its tasks.
#[test]
fn a_peer_without_tcp_offers_no_failover() {
    short_rail_pause();
    let a = rdma_tcp_engine(&["tfo2"]);
    let b = rdma_engine(&["tfo2"]);
    let local = Buf::new(BLOCK, 1);
    let remote = Buf::new(BLOCK, 0);
    register(&a, &local);
    register(&b, &remote);
    let seg = open(&a, &b);
    let desc = a.metadata().segment_desc(seg).expect("peer descriptor");
    assert_eq!(desc.tcp_fallback_port, None);
    let bytes = serde_json::to_string(&*desc).unwrap();
    assert!(!bytes.contains("tcp_fallback_port"), "{bytes}");
    let r = [req(
        Opcode::Write,
        local.addr(),
        seg,
        remote.addr(),
        BLOCK as u64,
    )];
    let st = run_batch(&a, &r, Duration::from_secs(30));
    assert_eq!(st[0].status, TaskStatus::Completed);
    fault::port_down("tfo2", false).unwrap();
    let st = run_batch(&a, &r, Duration::from_secs(60));
    assert_eq!(st[0].status, TaskStatus::Failed, "{}", links(&a));
    assert_eq!(carried(&a), 0);
    fault::port_up("tfo2").unwrap();
    a.shutdown();
    b.shutdown();
}
