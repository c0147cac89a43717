//! Pooled TCP data connections that died while idle (upstream Mooncake
//! #4209: the first transfer after an idle gap fails). A request that had
//! not reached the peer must never fail because the connection it was given
//! turned out dead: it is re-sent on a fresh connection.
//!
//! The peers are real te-rs data servers (no fake server): one whose idle
//! timeout (`server_idle`, `MC_TCP_SERVER_IDLE_TIMEOUT_SEC`) is set low so
//! it closes the client's pooled connections between rounds, and whole
//! engines replaced by new ones on the same ports.

mod common;
mod tcp_support;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tcp_support::*;
use transfer_engine::metadata::descriptor::SegmentDesc;
use transfer_engine::task::{Opcode, TaskStatus};
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::TcpTransport;
use transfer_engine::transport::Transport;
use transfer_engine::TransferEngine;

const LIMIT: Duration = Duration::from_secs(30);
const ROUNDS: u64 = 20;

fn eventually(limit: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + limit;
    while !f() {
        if Instant::now() >= deadline {
            return false;
        }
        std::thread::sleep(Duration::from_millis(2));
    }
    true
}

/// One process-wide lock: the replaced-peer test narrows the RPC port range
/// through the environment while it creates engines.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn serial() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// A te-rs data server that closes connections idle for 300 ms (sweeping
/// every 100 ms).
fn idle_closing_server() -> Arc<TcpTransport> {
    transport(TcpConfig {
        server_idle: Duration::from_millis(300),
        // The server sweeps every fifth of this (at least 100 ms).
        server_header_timeout: Duration::from_millis(500),
        ..TcpConfig::default()
    })
}

/// `ROUNDS` rounds against `server`, reached at `tgt`. Each round: the
/// server has closed every pooled connection of the client (idle timeout)
/// and the client submits at once. Small requests (sent by the submitting
/// thread on an idle connection), a pipelined run, and large ones (through
/// the queue, over up to two connections), then a READ back.
fn rounds_after_idle_closes(server: &TcpTransport, client: &TcpTransport, tgt: &Arc<SegmentDesc>) {
    const BIG: usize = 1 << 20;
    let mut dst = Guarded::new(2 * BIG, 0);
    register(server, dst.addr(), 2 * BIG as u64);
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let src = pattern(2 * BIG, round + 1);
        dst.data_mut().fill(0);
        let reqs: Vec<(bool, u64, u64, u64)> = match round % 3 {
            0 => vec![(true, src.as_ptr() as u64, dst.addr(), 4096)],
            1 => (0..8u64)
                .map(|i| {
                    (
                        true,
                        src.as_ptr() as u64 + i * 4096,
                        dst.addr() + i * 4096,
                        4096,
                    )
                })
                .collect(),
            _ => (0..2u64)
                .map(|i| {
                    let off = i * BIG as u64;
                    (
                        true,
                        src.as_ptr() as u64 + off,
                        dst.addr() + off,
                        BIG as u64,
                    )
                })
                .collect(),
        };
        let tasks = submit_all(client, tgt, &reqs);
        let mut ok = true;
        for (i, t) in tasks.iter().enumerate() {
            if wait(t, LIMIT) != TaskStatus::Completed {
                failures.push(format!("round {round} request {i}"));
                ok = false;
            }
        }
        let bytes: usize = reqs.iter().map(|r| r.3 as usize).sum();
        if ok {
            assert!(
                dst.data()[..bytes] == src[..bytes],
                "round {round}: bytes differ"
            );
        }
        let mut back = vec![0u8; 4096];
        let t = submit(
            client,
            tgt,
            false,
            back.as_mut_ptr() as u64,
            dst.addr(),
            4096,
        );
        if wait(&t, LIMIT) != TaskStatus::Completed {
            failures.push(format!("round {round} read"));
        } else {
            assert!(
                back[..] == dst.data()[..4096],
                "round {round}: read bytes differ"
            );
        }
        // The idle gap: the server closes every connection of ours.
        assert!(
            eventually(LIMIT, || server.open_data_connections() == 0),
            "round {round}: the server kept {} idle connection(s)",
            server.open_data_connections()
        );
    }
    assert!(dst.guards_intact());
    assert!(
        failures.is_empty(),
        "requests failed after an idle gap ({} rounds): {failures:?}",
        ROUNDS
    );
    server.unregister_memory(dst.addr()).unwrap();
}

/// On loopback the server's FIN reaches the client at once: the client's
/// event loop (or the short path) usually sees the close before the next
/// request goes out.
#[test]
fn transfers_after_the_server_closed_idle_connections_complete() {
    let _serial = serial();
    let server = idle_closing_server();
    let client = transport(TcpConfig::default());
    let tgt = target(server.data_port(), 2);
    rounds_after_idle_closes(&server, &client, &tgt);
    eprintln!("re-sent requests: {}", client.resent_requests());
    client.shutdown();
    server.shutdown();
}

/// A TCP relay standing for a network path on which the target's FIN takes
/// `fin_delay` to reach the initiator (upstream #4209's setting: the client
/// writes its request before it can know). Bytes are copied both ways as
/// they come; when the target ends its side, the initiator's side is closed
/// `fin_delay` later, so a request sent meanwhile reaches a closed socket
/// and is never served. The relay parses nothing.
fn slow_fin_relay(to: u16, fin_delay: Duration) -> u16 {
    use std::io::{Read, Write};
    use std::net::{Shutdown, TcpStream};
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for c in l.incoming() {
            let Ok(c) = c else { return };
            let Ok(s) = TcpStream::connect(("127.0.0.1", to)) else {
                continue;
            };
            let _ = c.set_nodelay(true);
            let _ = s.set_nodelay(true);
            let (mut c_in, mut s_out) = (c.try_clone().unwrap(), s.try_clone().unwrap());
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match c_in.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            let _ = s_out.shutdown(Shutdown::Write);
                            return;
                        }
                        Ok(n) => {
                            if s_out.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
            let (mut s_in, mut c_out) = (s, c);
            std::thread::spawn(move || {
                let mut buf = vec![0u8; 256 << 10];
                loop {
                    match s_in.read(&mut buf) {
                        Ok(0) | Err(_) => {
                            // The target's FIN (or reset) on its way.
                            std::thread::sleep(fin_delay);
                            let _ = c_out.shutdown(Shutdown::Both);
                            return;
                        }
                        Ok(n) => {
                            if c_out.write_all(&buf[..n]).is_err() {
                                return;
                            }
                        }
                    }
                }
            });
        }
    });
    port
}

/// The same rounds where the server's close takes 500 ms to reach the
/// client: every round's first requests go out on connections the server
/// has already closed, and must be re-sent, not failed.
#[test]
fn requests_sent_before_the_servers_close_arrived_are_resent() {
    let _serial = serial();
    let server = idle_closing_server();
    let client = transport(TcpConfig::default());
    let relay = slow_fin_relay(server.data_port(), Duration::from_millis(500));
    let tgt = target(relay, 2);
    rounds_after_idle_closes(&server, &client, &tgt);
    eprintln!("re-sent requests: {}", client.resent_requests());
    // Rounds after the first meet a dead pooled connection (unless this
    // thread was held off the CPU for the whole delay).
    assert!(
        client.resent_requests() >= ROUNDS / 2,
        "re-sent {} requests in {ROUNDS} rounds",
        client.resent_requests()
    );
    client.shutdown();
    server.shutdown();
}

/// Two adjacent free ports (a range of two for `MC_MIN/MAX_RPC_PORT`).
fn free_port_pair() -> u16 {
    for p in (21000..31000u16).step_by(7) {
        if TcpListener::bind(("0.0.0.0", p)).is_ok()
            && TcpListener::bind(("0.0.0.0", p + 1)).is_ok()
        {
            return p;
        }
    }
    panic!("no two adjacent free ports");
}

/// An engine with its RPC and TCP data ports in `[p, p + 1]`: `want`
/// (segment name, data port) if given, which may take a few attempts (the
/// two ports are picked at random in the range).
fn engine_on(p: u16, want: Option<(&str, u16)>) -> Arc<TransferEngine> {
    std::env::set_var("MC_MIN_RPC_PORT", p.to_string());
    std::env::set_var("MC_MAX_RPC_PORT", (p + 1).to_string());
    let mut made = None;
    for _ in 0..200 {
        let e = match TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false) {
            Ok(e) => e,
            // The other port of the pair may still be held by a closing socket.
            Err(_) => continue,
        };
        if e.install_transport("tcp", None).is_err() {
            e.shutdown();
            continue;
        }
        let port = data_port(&e);
        match want {
            Some((name, dp)) if e.local_server_name() != name || port != dp => e.shutdown(),
            _ => {
                made = Some(e);
                break;
            }
        }
    }
    std::env::remove_var("MC_MIN_RPC_PORT");
    std::env::remove_var("MC_MAX_RPC_PORT");
    made.expect("an engine on the wanted ports")
}

fn data_port(e: &TransferEngine) -> u16 {
    e.metadata()
        .local_desc()
        .map(|d| d.tcp_data_port)
        .unwrap_or(0)
}

/// The target engine is destroyed and a new one takes its name and ports;
/// the initiator (same segment handle, descriptor refreshed with
/// `openSegmentNoCache` since the new engine registered new memory) keeps
/// transferring: no request fails on a connection pooled to the old one.
#[test]
fn a_replaced_peer_on_the_same_ports_gets_the_next_transfer() {
    let _serial = serial();
    let init = common::p2p_engine();
    let local = common::Guarded::new(64 << 10);
    init.register_local_memory(local.addr(), 64 << 10, "cpu:0", true)
        .unwrap();
    let p = free_port_pair();
    let mut target = engine_on(p, None);
    let name = target.local_server_name();
    let port = data_port(&target);
    let mut remote = common::Guarded::new(64 << 10);
    target
        .register_local_memory(remote.addr(), 64 << 10, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&name).unwrap();
    let mut failures = Vec::new();
    for round in 0..ROUNDS {
        let reqs: Vec<_> = (0..4u64)
            .map(|i| {
                common::req(
                    Opcode::Write,
                    local.addr() + i * 4096,
                    id,
                    remote.addr() + i * 4096,
                    4096,
                )
            })
            .collect();
        let st = common::run_batch(&init, &reqs, LIMIT);
        if st.iter().any(|s| s.status != TaskStatus::Completed) {
            failures.push(round);
        } else {
            assert!(remote.data()[..4 * 4096] == local.data()[..4 * 4096]);
        }
        // Replace the target: same name, same data port, new memory.
        target.shutdown();
        drop(target);
        target = engine_on(p, Some((&name, port)));
        remote = common::Guarded::new(64 << 10);
        target
            .register_local_memory(remote.addr(), 64 << 10, "cpu:0", true)
            .unwrap();
        assert_eq!(
            init.open_segment_no_cache(&name).unwrap(),
            id,
            "same handle"
        );
    }
    assert!(
        failures.is_empty(),
        "{} of {ROUNDS} transfers to a replaced peer failed: rounds {failures:?}",
        failures.len()
    );
    let _ = remote.data_mut();
    target.shutdown();
    init.shutdown();
}
