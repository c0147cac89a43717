//! Engine-level limits: idle sockets on both ports while legitimate peers
//! open segments and transfer; the bounded notification queue; the
//! handshake server's per-IP cap and silent-socket reclaim.

mod common;
mod limits_support;

use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::sync::Arc;
use std::time::Duration;

use common::*;
use limits_support::*;
use transfer_engine::metadata::handshake::client;
use transfer_engine::metadata::handshake::{
    HandShakeDesc, HandshakeHandler, HandshakeServer, HandshakeServerConfig,
};
use transfer_engine::serving::AdmissionLimits;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(30);

fn port_of(name: &str) -> u16 {
    name.rsplit(':').next().unwrap().parse().unwrap()
}

#[test]
fn idle_sockets_on_both_ports_do_not_stop_peers_from_opening_and_transferring() {
    let _serial = serial();
    capture_logs();
    assert!(raise_nofile(16384) >= 8192, "needs 8192 descriptors");
    let target = p2p_engine();
    let len = 256 << 10;
    let mut remote = Guarded::new(len);
    target
        .register_local_memory(remote.addr(), len as u64, "cpu:0", true)
        .unwrap();
    let hs_port = port_of(&target.local_server_name());
    let data_port = target
        .metadata()
        .local_desc()
        .expect("descriptor")
        .tcp_data_port;
    // The target engine's own threads, not the process's.
    let before = target.threads();
    let mut idle = Vec::new();
    // 2,000 on each port, from 8 addresses (the handshake server's per-IP
    // cap is 1,024 by default).
    for i in 0..2000u32 {
        let from = Ipv4Addr::new(127, 0, 1, 2 + (i % 8) as u8);
        for port in [hs_port, data_port] {
            let to: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
            idle.push(connect_from(from, to).unwrap());
        }
    }
    // Data server loops after the first start with their first connection;
    // silent sockets start no handshake handler.
    let later_loops = TcpConfig::from_env().server_threads - 1;
    assert!(
        target.threads() <= before + later_loops,
        "target threads went from {before} to {} with 4000 idle sockets",
        target.threads()
    );
    for round in 0..5u8 {
        let init = p2p_engine();
        let mut local = Guarded::new(len);
        init.register_local_memory(local.addr(), len as u64, "cpu:0", true)
            .unwrap();
        let id = init
            .open_segment(&target.local_server_name())
            .expect("openSegment while 4000 idle sockets are held");
        let data = pattern(round + 1, len);
        local.data_mut().copy_from_slice(&data);
        let st = run_batch(
            &init,
            &[req(
                Opcode::Write,
                local.addr(),
                id,
                remote.addr(),
                len as u64,
            )],
            T,
        );
        assert_eq!(st[0].status, TaskStatus::Completed, "round {round}");
        assert!(remote.data() == &data[..]);
        init.shutdown();
    }
    drop(idle);
    let _ = remote.data_mut();
    target.shutdown();
}

#[test]
fn notifications_are_bounded_and_refused_senders_are_told() {
    let _serial = serial();
    capture_logs();
    let a = p2p_engine();
    let b = p2p_engine();
    let ab = a.open_segment(&b.local_server_name()).unwrap();
    // Just under the 1 MiB default frame limit.
    let msg = "n".repeat((1 << 20) - 4096);
    let rss0 = rss_kib();
    let mut ok = 0;
    let mut refused = 0;
    for _ in 0..400 {
        match a.send_notify(ab, "big", &msg) {
            Ok(()) => ok += 1,
            Err(_) => refused += 1,
        }
    }
    let grown_mib = rss_kib().saturating_sub(rss0) / 1024;
    assert!(grown_mib < 64, "RSS grew by {grown_mib} MiB");
    assert!(ok > 0 && ok <= 16, "{ok} accepted of 400 (16 MiB queue)");
    assert_eq!(ok + refused, 400);
    assert_eq!(b.metadata().refused_notifies(), refused as u64);
    assert!(
        !logged("notification from 'big'").is_empty(),
        "refusal logged"
    );
    let got = b.take_notifies();
    assert_eq!(got.len(), ok);
    assert!(got.iter().all(|(n, m)| n == "big" && *m == msg));
    // Drained: accepted again.
    a.send_notify(ab, "small", "after").unwrap();
    assert_eq!(b.take_notifies(), vec![("small".into(), "after".into())]);
}

struct Probe;

impl HandshakeHandler for Probe {
    fn on_connection(&self, _req: HandShakeDesc) -> HandShakeDesc {
        HandShakeDesc::default()
    }
    fn on_metadata(&self, _requester_json: &str) -> String {
        "null\n".into()
    }
    fn on_notify(&self, _name: String, _msg: String) {}
}

#[test]
fn handshake_per_ip_cap_and_silent_sockets_are_reclaimed() {
    let _serial = serial();
    capture_logs();
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let cfg = HandshakeServerConfig {
        limits: AdmissionLimits {
            max_total: 100,
            max_per_ip: 4,
        },
        read_timeout: Duration::from_secs(2),
        ..HandshakeServerConfig::from_env()
    };
    let server = HandshakeServer::start_with_config(listener, Arc::new(Probe), cfg).unwrap();
    let to: SocketAddr = (Ipv4Addr::LOCALHOST, port).into();
    let from = Ipv4Addr::new(127, 0, 0, 3);
    let socks: Vec<TcpStream> = (0..10).map(|_| connect_from(from, to).unwrap()).collect();
    let refused = socks
        .iter()
        .filter(|s| closed_by_peer(s, Duration::from_millis(100)))
        .count();
    assert_eq!(refused, 6, "10 connections from one address, cap 4");
    assert!(!logged("per-IP cap").is_empty());
    client::probe("127.0.0.1", port).expect("another address is served");
    // The 4 admitted but silent sockets go away after the read timeout.
    for s in &socks {
        assert!(closed_by_peer(s, Duration::from_secs(5)));
    }
    client::probe("127.0.0.1", port).unwrap();
    server.stop();
}
