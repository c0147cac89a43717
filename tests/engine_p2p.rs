//! Two engines in one process over P2PHANDSHAKE + TCP, through the Rust API:
//! data integrity, out-of-range requests, batch rules, notifications,
//! unreachable and killed peers, lifecycle leaks.

mod common;

use std::time::{Duration, Instant};

use common::*;
use transfer_engine::{Error, Opcode, TaskStatus, TransferEngine};

const T: Duration = Duration::from_secs(30);

#[test]
fn write_then_read_back_every_size() {
    let target = p2p_engine();
    let init = p2p_engine();
    let max = 64 << 20;
    let mut remote = Guarded::new(max);
    let mut local = Guarded::new(max);
    target
        .register_local_memory(remote.addr(), max as u64, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), max as u64, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    assert!(id > 0);
    for (i, &size) in [4096usize, 65536, 1 << 20, max].iter().enumerate() {
        let data = pattern(i as u8 + 1, size);
        local.data_mut()[..size].copy_from_slice(&data);
        let st = run_batch(
            &init,
            &[req(
                Opcode::Write,
                local.addr(),
                id,
                remote.addr(),
                size as u64,
            )],
            T,
        );
        assert_eq!(st[0].status, TaskStatus::Completed, "write {size}");
        assert_eq!(st[0].transferred_bytes, size as u64);
        assert!(
            remote.data()[..size] == data[..],
            "target bytes differ after write of {size}"
        );
        local.data_mut()[..size].fill(0);
        let st = run_batch(
            &init,
            &[req(
                Opcode::Read,
                local.addr(),
                id,
                remote.addr(),
                size as u64,
            )],
            T,
        );
        assert_eq!(st[0].status, TaskStatus::Completed, "read {size}");
        assert!(
            local.data()[..size] == data[..],
            "read-back bytes differ for {size}"
        );
    }
    assert!(remote.guards_intact() && local.guards_intact());
    let _ = remote.data_mut();
}

#[test]
fn many_tasks_in_one_batch_land_at_their_offsets() {
    let target = p2p_engine();
    let init = p2p_engine();
    let (n, block) = (64usize, 4096usize);
    let remote = Guarded::new(n * block);
    let mut local = Guarded::new(n * block);
    target
        .register_local_memory(remote.addr(), (n * block) as u64, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), (n * block) as u64, "cpu:0", true)
        .unwrap();
    let data = pattern(9, n * block);
    local.data_mut().copy_from_slice(&data);
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let reqs: Vec<_> = (0..n)
        .map(|i| {
            let o = (i * block) as u64;
            req(
                Opcode::Write,
                local.addr() + o,
                id,
                remote.addr() + o,
                block as u64,
            )
        })
        .collect();
    let st = run_batch(&init, &reqs, T);
    assert!(st.iter().all(|s| s.status == TaskStatus::Completed));
    assert!(remote.data() == &data[..]);
}

#[test]
fn out_of_range_requests_fail_and_touch_nothing() {
    let target = p2p_engine();
    let init = p2p_engine();
    let remote = Guarded::new(8192);
    let local = Guarded::new(65536);
    target
        .register_local_memory(remote.addr(), 8192, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), 65536, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let base = remote.addr();
    let cases = [
        (Opcode::Write, base + 8192 - 2048, 4096u64), // straddles the end
        (Opcode::Write, base - 1024, 4096),           // straddles the start
        (Opcode::Write, base + 65536, 4096),          // past the end
        (Opcode::Read, base + 8192, 16),              // just past the end
        (Opcode::Write, 0x10, 16),                    // nowhere
    ];
    for (op, addr, len) in cases {
        let st = run_batch(&init, &[req(op, local.addr(), id, addr, len)], T);
        assert_eq!(
            st[0].status,
            TaskStatus::Failed,
            "{op:?} at {addr:#x}+{len} must fail"
        );
        assert_eq!(st[0].transferred_bytes, 0);
    }
    assert!(
        remote.guards_intact(),
        "bytes around the registered range were written"
    );
    assert!(
        remote.data().iter().all(|b| *b == GUARD_BYTE),
        "registered range changed"
    );
}

#[test]
fn batch_rules_match_mooncake() {
    let target = p2p_engine();
    let init = p2p_engine();
    let remote = Guarded::new(4096);
    let local = Guarded::new(4096);
    target
        .register_local_memory(remote.addr(), 4096, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), 4096, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let r = req(Opcode::Write, local.addr(), id, remote.addr(), 4096);
    let b = init.allocate_batch_id(1);
    assert!(matches!(
        init.submit_transfer(b, &[r, r], None),
        Err(Error::TooManyRequests(_))
    ));
    // Unknown segment id: nothing is added.
    let bad = req(Opcode::Write, local.addr(), 999, remote.addr(), 4096);
    assert_eq!(
        init.submit_transfer(b, &[bad], None)
            .unwrap_err()
            .status_code(),
        1
    );
    init.submit_transfer(b, &[r], None).unwrap();
    assert_eq!(
        init.submit_transfer(b, &[r], None)
            .unwrap_err()
            .status_code(),
        2
    );
    assert_eq!(init.transfer_status(b, 1).unwrap_err().status_code(), 1);
    // Not yet observed terminal: busy, until getTransferStatus saw it end.
    let deadline = Instant::now() + T;
    loop {
        assert!(
            matches!(init.free_batch_id(b), Err(Error::BatchBusy(_))),
            "free before observing the task terminal must be busy"
        );
        if init.transfer_status(b, 0).unwrap().status == TaskStatus::Completed {
            break;
        }
        assert!(Instant::now() < deadline);
    }
    init.free_batch_id(b).unwrap();
    assert_eq!(
        init.free_batch_id(b).unwrap_err().status_code(),
        1,
        "double free is refused"
    );
    assert_eq!(init.transfer_status(b, 0).unwrap_err().status_code(), 1);
}

#[test]
fn registration_rules() {
    let e = p2p_engine();
    let m = Guarded::new(8192);
    assert_eq!(
        e.register_local_memory(m.addr(), 0, "cpu:0", true)
            .unwrap_err()
            .err_code(),
        -1
    );
    e.register_local_memory(m.addr(), 4096, "cpu:0", true)
        .unwrap();
    assert_eq!(
        e.register_local_memory(m.addr() + 100, 16, "cpu:0", true)
            .unwrap_err()
            .err_code(),
        -7
    );
    assert_eq!(
        e.unregister_local_memory(m.addr() + 1)
            .unwrap_err()
            .err_code(),
        -3
    );
    e.unregister_local_memory(m.addr()).unwrap();
    assert_eq!(
        e.unregister_local_memory(m.addr()).unwrap_err().err_code(),
        -3
    );
    // Batch registration is all or nothing.
    let err = e
        .register_local_memory_batch(&[(m.addr(), 1024), (m.addr() + 512, 1024)], "cpu:0")
        .unwrap_err();
    assert_eq!(err.err_code(), -7);
    assert!(e.registered_buffers().is_empty());
    e.register_local_memory_batch(&[(m.addr(), 1024), (m.addr() + 4096, 1024)], "cpu:0")
        .unwrap();
    let desc = e.metadata().local_desc().unwrap();
    assert_eq!(desc.buffers.len(), 2, "descriptor advertises both regions");
    e.unregister_local_memory_batch(&[m.addr(), m.addr() + 4096])
        .unwrap();
    assert!(e.metadata().local_desc().unwrap().buffers.is_empty());
}

#[test]
fn registration_before_install_is_replayed() {
    let target = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).unwrap();
    let mut remote = Guarded::new(4096);
    target
        .register_local_memory(remote.addr(), 4096, "cpu:0", true)
        .unwrap();
    target.install_transport("tcp", None).unwrap();
    let init = p2p_engine();
    let local = Guarded::new(4096);
    init.register_local_memory(local.addr(), 4096, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    remote.data_mut().copy_from_slice(&pattern(3, 4096));
    let st = run_batch(
        &init,
        &[req(Opcode::Read, local.addr(), id, remote.addr(), 4096)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert_eq!(local.data(), &pattern(3, 4096)[..]);
}

#[test]
fn segments_open_close_and_errors() {
    let a = p2p_engine();
    let b = p2p_engine();
    assert_eq!(
        a.open_segment(&a.local_server_name()).unwrap(),
        0,
        "own name is LOCAL_SEGMENT"
    );
    let id = a.open_segment(&b.local_server_name()).unwrap();
    assert_eq!(
        a.open_segment(&format!("/{}", b.local_server_name()))
            .unwrap(),
        id,
        "leading / stripped, cached"
    );
    assert_eq!(a.open_segment_no_cache(&b.local_server_name()).unwrap(), id);
    assert!(matches!(
        a.open_segment("///"),
        Err(Error::InvalidArgument(_))
    ));
    // Nobody listens there: a clear error, quickly.
    let start = Instant::now();
    assert!(a.open_segment("127.0.0.1:1").is_err());
    assert!(start.elapsed() < Duration::from_secs(10));
    a.remove_local_segment(&b.local_server_name()).unwrap();
    let id2 = a.open_segment(&b.local_server_name()).unwrap();
    assert!(id2 > id, "ids are never reused");
    // A P2P engine without a transport cannot open peers (its descriptor is the request body).
    let bare = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).unwrap();
    assert!(bare.open_segment(&b.local_server_name()).is_err());
}

#[test]
fn notifications_flow_both_ways() {
    let a = p2p_engine();
    let b = p2p_engine();
    let ab = a.open_segment(&b.local_server_name()).unwrap();
    let ba = b.open_segment(&a.local_server_name()).unwrap();
    a.send_notify(ab, "from-a", "hello \"b\"\n€").unwrap();
    b.send_notify(ba, "from-b", "hi").unwrap();
    assert_eq!(
        b.take_notifies(),
        vec![("from-a".to_string(), "hello \"b\"\n€".to_string())]
    );
    assert_eq!(
        a.take_notifies(),
        vec![("from-b".to_string(), "hi".to_string())]
    );
    assert!(a.take_notifies().is_empty(), "drained");
    // submitTransferWithNotify: sent once the whole batch completed.
    let remote = Guarded::new(8192);
    let local = Guarded::new(8192);
    b.register_local_memory(remote.addr(), 8192, "cpu:0", true)
        .unwrap();
    a.register_local_memory(local.addr(), 8192, "cpu:0", true)
        .unwrap();
    let ab = a.open_segment_no_cache(&b.local_server_name()).unwrap();
    let batch = a.allocate_batch_id(2);
    let reqs = [
        req(Opcode::Write, local.addr(), ab, remote.addr(), 4096),
        req(
            Opcode::Write,
            local.addr() + 4096,
            ab,
            remote.addr() + 4096,
            4096,
        ),
    ];
    a.submit_transfer(batch, &reqs, Some(("batch-done".into(), "2 blocks".into())))
        .unwrap();
    wait_all(&a, batch, 2, T);
    a.free_batch_id(batch).unwrap();
    assert_eq!(
        b.take_notifies(),
        vec![("batch-done".to_string(), "2 blocks".to_string())]
    );
    // Unknown segment: ERR_METADATA.
    assert_eq!(a.send_notify(4242, "x", "y").unwrap_err().err_code(), -200);
}

#[test]
fn killed_peer_fails_tasks_in_bounded_time() {
    let target = p2p_engine();
    let init = p2p_engine();
    let size = 64usize << 20;
    let remote = Guarded::new(size);
    let local = Guarded::new(size);
    target
        .register_local_memory(remote.addr(), size as u64, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), size as u64, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let reqs: Vec<_> = (0..16)
        .map(|_| req(Opcode::Write, local.addr(), id, remote.addr(), size as u64))
        .collect();
    let b = init.allocate_batch_id(reqs.len());
    init.submit_transfer(b, &reqs, None).unwrap();
    std::thread::sleep(Duration::from_millis(20));
    target.shutdown();
    let start = Instant::now();
    let st = wait_all(&init, b, reqs.len(), Duration::from_secs(40));
    assert!(start.elapsed() < Duration::from_secs(40));
    assert!(
        st.iter().any(|s| s.status == TaskStatus::Failed),
        "some tasks must fail after the peer died"
    );
    init.free_batch_id(b).unwrap();
    // The engine keeps working for other peers afterwards.
    let other = p2p_engine();
    let m2 = Guarded::new(4096);
    other
        .register_local_memory(m2.addr(), 4096, "cpu:0", true)
        .unwrap();
    let id2 = init.open_segment(&other.local_server_name()).unwrap();
    let st = run_batch(
        &init,
        &[req(Opcode::Write, local.addr(), id2, m2.addr(), 4096)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
}

#[test]
fn unknown_metadata_url_is_refused_not_fatal() {
    for url in ["ftp://127.0.0.1:1/x", "bogus://", "zk://host:1"] {
        assert!(
            TransferEngine::new(url, "127.0.0.1", false).is_err(),
            "{url}"
        );
    }
    let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).unwrap();
    assert!(e.install_transport("nvmeof", None).is_err());
    assert!(e.install_transport("rdma", Some("not json")).is_err());
    assert!(e.local_ip_and_port().starts_with("127.0.0.1:"));
    assert_eq!(e.local_ip_and_port(), e.local_server_name());
}

#[test]
fn auto_discover_without_rdma_devices_installs_tcp() {
    // No RDMA device here (ibverbs reports none): upstream installs "tcp".
    let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", true).unwrap();
    assert_eq!(e.installed_protocols(), vec!["tcp"]);
    assert_eq!(e.metadata().local_desc().unwrap().protocol, "tcp");
    let plain = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).unwrap();
    assert!(
        plain.installed_protocols().is_empty(),
        "auto_discover=0 installs nothing"
    );
}

#[test]
fn an_rdma_twosided_control_handshake_is_refused_and_its_notify_fallback_arrives() {
    // What a C++ engine with rdma_twosided installed (Mooncake #3440) sends
    // to open its notify channel, in jsoncpp's FastWriter layout.
    use transfer_engine::metadata::handshake::{client, MsgType};
    let target = p2p_engine();
    let name = target.local_server_name();
    let (host, port) = name.rsplit_once(':').unwrap();
    let port: u16 = port.parse().unwrap();
    let ctrl = concat!(
        r#"{"ctrl_channel":true,"local_gid":"00:00:00:00:00:00:00:00:00:00:ff:ff:0a:00:00:05","#,
        r#""local_lid":0,"local_nic_path":"10.0.0.5:15001@mlx5_0","notify_qp_num":1234,"#,
        r#""notify_rq_depth":64,"peer_nic_path":"__ctrl__","qp_num":[],"ready_ack":false,"#,
        r#""reply_msg":""}"#,
        "\n"
    );
    let reply = client::call(host, port, MsgType::Connection, ctrl).unwrap();
    let reply: serde_json::Value = serde_json::from_str(&reply).unwrap();
    // A non-empty reply_msg: the C++ side's sendHandshake fails, so its
    // CtrlChannel gives up and the notify goes over the handshake RPC.
    let why = reply["reply_msg"].as_str().unwrap();
    assert!(why.contains("rdma_twosided"), "{reply}");
    assert!(reply.get("notify_qp_num").is_none(), "{reply}");
    assert_eq!(
        client::notify(host, port, "cpp-peer", "over the fallback").unwrap(),
        "success"
    );
    let deadline = Instant::now() + T;
    let mut got = Vec::new();
    while got.is_empty() && Instant::now() < deadline {
        got = target.take_notifies();
        std::thread::sleep(Duration::from_millis(5));
    }
    assert_eq!(got, [("cpp-peer".into(), "over the fallback".into())]);
}
