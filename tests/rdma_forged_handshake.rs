//! A forged Connection RPC for a live peer NIC path (other QP numbers, as a
//! restarted peer would send) does not retire the live endpoint between
//! te-rs engines: the request is refused, the endpoint keeps its QPs, and
//! transfers go on without a new handshake. Soft fabric.

mod rdma_support;

use std::time::Duration;

use rdma_support::*;
use transfer_engine::metadata::handshake::{client, HandShakeDesc};
use transfer_engine::{Error, Opcode, TaskStatus};

const T: Duration = Duration::from_secs(20);

/// (peer path, qpns, state) of each endpoint in `links`.
fn endpoints(links: &serde_json::Value) -> Vec<(String, Vec<u64>, String)> {
    links["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| {
            (
                e["peer"].as_str().unwrap().to_string(),
                e["qpns"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|q| q.as_u64().unwrap())
                    .collect(),
                e["state"].as_str().unwrap().to_string(),
            )
        })
        .collect()
}

#[test]
fn a_forged_connection_rpc_does_not_retire_a_live_endpoint() {
    let target = rdma_engine(&["soft0"]);
    let init = rdma_engine(&["soft0"]);
    let remote = Buf::new(1 << 16, 0);
    let local = Buf::new(1 << 16, 0);
    register(&target, &remote);
    register(&init, &local);
    let id = open(&init, &target);
    let write = |seed: u8| {
        let data = pattern(seed, 1 << 16);
        // SAFETY: `local` is ours and nothing reads it concurrently.
        unsafe {
            std::ptr::copy_nonoverlapping(data.as_ptr(), local.addr() as *mut u8, data.len())
        };
        let st = run_batch(
            &init,
            &[req(Opcode::Write, local.addr(), id, remote.addr(), 1 << 16)],
            T,
        );
        assert_eq!(st[0].status, TaskStatus::Completed, "WRITE {seed}");
        assert!(remote.0 == data, "WRITE {seed}: bytes");
    };
    write(1);

    let before = endpoints(&links(&target));
    assert_eq!(before.len(), 1, "{before:?}");
    let (init_path, qpns, _) = before[0].clone();
    let target_path = endpoints(&links(&init))[0].0.clone();
    let handshakes = (counter(&target, "handshakes"), counter(&init, "handshakes"));

    let name = target.local_server_name();
    let (host, port) = name.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let forged = |incarnation: Option<&str>| HandShakeDesc {
        local_gid: "fe80:0000:0000:0000:0000:0000:0000:0001".into(),
        local_nic_path: init_path.clone(),
        peer_nic_path: target_path.clone(),
        qp_num: qpns.iter().map(|q| *q as u32 + 1000).collect(),
        ready_ack: Some(false),
        te_rs_incarnation: incarnation.map(str::to_string),
        ..Default::default()
    };
    // No incarnation, the peer's own (public) one without the path secret,
    // and a made-up new one its descriptor does not publish: all refused.
    let claims = [
        None,
        init.metadata()
            .local_desc()
            .unwrap()
            .te_rs_incarnation
            .clone(),
        Some("0123456789abcdef".to_string()),
    ];
    for claim in &claims {
        match client::connection(host, port, &forged(claim.as_deref())) {
            Err(Error::RejectHandshake(m)) => assert!(m.contains("not believed"), "{m}"),
            other => panic!("forged handshake ({claim:?}) was not refused: {other:?}"),
        }
    }

    assert_eq!(
        endpoints(&links(&target)),
        before,
        "the live endpoint keeps its QPs"
    );
    write(2);
    assert_eq!(
        (counter(&target, "handshakes"), counter(&init, "handshakes")),
        handshakes,
        "no new handshake was needed"
    );
    init.shutdown();
    target.shutdown();
}
