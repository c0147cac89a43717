//! Forged Connection requests cannot pile up endpoints: at most
//! MC_MAX_PASSIVE_EP_PER_CTX passively created endpoints exist (and
//! MC_MAX_PASSIVE_EP_PER_PEER per peer server), and a legitimate peer still
//! connects and transfers. Own test binary: the caps are read at install.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::metadata::handshake::{client, HandShakeDesc};
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(30);

fn endpoints(e: &transfer_engine::TransferEngine) -> usize {
    links(e)["endpoints"].as_array().map_or(0, |a| a.len())
}

#[test]
fn forged_connection_requests_are_capped_and_peers_unaffected() {
    std::env::set_var("MC_MAX_PASSIVE_EP_PER_CTX", "16");
    std::env::set_var("MC_MAX_PASSIVE_EP_PER_PEER", "4");
    let target = rdma_engine(&["soft1"]);
    let init = rdma_engine(&["soft0"]);
    let name = target.local_server_name();
    let (host, port) = name.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let forge = |server: String, i: u32| HandShakeDesc {
        local_gid: "fe80:0000:0000:0000:0000:0000:0000:0001".into(),
        local_nic_path: format!("{server}@mlx5_{i}"),
        peer_nic_path: format!("{name}@soft1"),
        qp_num: vec![1000 + i, 2000 + i],
        ..Default::default()
    };
    // 1,000 forged peers, then 20 NICs claimed by one forged server.
    for i in 0..1000u32 {
        let server = format!("10.{}.{}.{}:12001", i >> 16, (i >> 8) & 255, i & 255);
        let _ = client::connection(host, port, &forge(server, 0));
    }
    assert!(endpoints(&target) <= 16, "{} endpoints", endpoints(&target));
    for i in 0..20u32 {
        let _ = client::connection(host, port, &forge("10.200.0.1:12001".into(), i));
    }
    let eps = links(&target)["endpoints"].clone();
    let same = eps
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e.to_string().contains("10.200.0.1:12001"))
        .count();
    assert!(same <= 4, "{same} endpoints for one forged server: {eps}");
    assert!(endpoints(&target) <= 16);

    // A legitimate peer connects (evicting an idle forged endpoint) and its
    // bytes land.
    let len = 256usize << 10;
    let src = Buf(pattern(3, len));
    let dst = Buf::new(len, 0);
    register(&init, &src);
    register(&target, &dst);
    let seg = open(&init, &target);
    let st = run_batch(
        &init,
        &[req(Opcode::Write, src.addr(), seg, dst.addr(), len as u64)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert_eq!(&dst.0[..], &src.0[..]);
    assert!(endpoints(&target) <= 16);
}
