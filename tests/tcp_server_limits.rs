//! The TCP data server under many and hostile connections, and stalled
//! peers seen from the client: idle sockets cost no threads, per-IP cap,
//! header-timeout reclaim, and stalls that fail within 1.2x the timeout.

mod limits_support;
mod tcp_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream};
use std::time::{Duration, Instant};

use limits_support::*;
use tcp_support::*;
use transfer_engine::task::TaskStatus;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::wire::{Header, Status, HEADER_LEN};
use transfer_engine::transport::tcp::TcpTransport;
use transfer_engine::transport::Transport;

const LIMIT: Duration = Duration::from_secs(30);

fn data_addr(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// WRITE `len` bytes, READ them back, and compare.
fn round_trip(server: &TcpTransport, client: &TcpTransport, len: usize, seed: u64) {
    let remote = Guarded::new(len, 0);
    register(server, remote.addr(), len as u64);
    let tgt = target(server.data_port(), 2);
    let src = pattern(len, seed);
    let t = submit(
        client,
        &tgt,
        true,
        src.as_ptr() as u64,
        remote.addr(),
        len as u64,
    );
    assert_eq!(wait(&t, LIMIT), TaskStatus::Completed, "write");
    let mut back = vec![0u8; len];
    let t = submit(
        client,
        &tgt,
        false,
        back.as_mut_ptr() as u64,
        remote.addr(),
        len as u64,
    );
    assert_eq!(wait(&t, LIMIT), TaskStatus::Completed, "read");
    assert!(back == src && remote.data() == &src[..], "bytes differ");
    assert!(remote.guards_intact());
    server.unregister_memory(remote.addr()).unwrap();
}

#[test]
fn thousands_of_idle_connections_cost_no_threads_and_peers_still_transfer() {
    let _serial = serial();
    capture_logs();
    assert!(raise_nofile(16384) >= 8192, "needs 8192 descriptors");
    // Slow connects (SYN retries against earlier runs' TIME_WAIT) must not
    // let the header timeout reclaim the first sockets before the last.
    let server = transport(TcpConfig {
        server_header_timeout: Duration::from_secs(120),
        ..TcpConfig::default()
    });
    let client = transport(TcpConfig::default());
    round_trip(&server, &client, 1 << 20, 1);
    // The server's own threads (its loops), not the process's.
    let before = server.threads();
    let idle: Vec<TcpStream> = (0..2000)
        .map(|i| {
            let from = Ipv4Addr::new(127, 0, 0, 2 + (i % 8) as u8);
            connect_from(from, data_addr(server.data_port())).unwrap()
        })
        .collect();
    assert!(
        eventually(LIMIT, || server.open_data_connections() >= 2000),
        "server saw {} of 2000 connections; warnings: {:?}",
        server.open_data_connections(),
        logged("")
    );
    // Server loops after the first start with their first connection.
    let loops = TcpConfig::default().server_threads;
    assert!(
        server.threads() <= loops,
        "server threads went from {before} to {} with 2000 connections (at most {loops} loops)",
        server.threads()
    );
    for i in 0..5 {
        round_trip(&server, &client, 256 << 10, 10 + i);
    }
    drop(idle);
    client.shutdown();
    server.shutdown();
}

/// An initiator busy with many peers at once, several connections each:
/// its connections live on the shared client loops, so its threads do not
/// grow with peers or connections, and every byte still arrives.
#[test]
fn an_initiator_with_many_busy_peers_costs_a_fixed_number_of_threads() {
    let _serial = serial();
    capture_logs();
    const PEERS: usize = 24;
    const REQS: usize = 8;
    const LEN: usize = 256 * 1024;
    let one_loop = TcpConfig {
        server_threads: 1,
        ..TcpConfig::default()
    };
    let servers: Vec<_> = (0..PEERS).map(|_| transport(one_loop.clone())).collect();
    let client_cfg = TcpConfig {
        client_threads: 2,
        ..TcpConfig::default()
    };
    let client = transport(client_cfg.clone());
    // The client transport's own threads (its data server's loop), not the
    // process's: other tests of this binary start and stop theirs meanwhile.
    let before = client.threads();
    let mut dsts = Vec::new();
    let mut tasks = Vec::new();
    let srcs: Vec<Vec<u8>> = (0..REQS).map(|i| pattern(LEN, i as u64 + 40)).collect();
    for s in &servers {
        let dst = Guarded::new(LEN * REQS, 0);
        register(s, dst.addr(), (LEN * REQS) as u64);
        let tgt = target(s.data_port(), 2);
        for (i, src) in srcs.iter().enumerate() {
            let t = submit(
                &client,
                &tgt,
                true,
                src.as_ptr() as u64,
                dst.addr() + (i * LEN) as u64,
                LEN as u64,
            );
            tasks.push(t);
        }
        dsts.push(dst);
    }
    for t in &tasks {
        assert_eq!(wait(t, LIMIT), TaskStatus::Completed);
    }
    for dst in &dsts {
        for (i, src) in srcs.iter().enumerate() {
            assert!(
                dst.data()[i * LEN..(i + 1) * LEN] == src[..],
                "bytes differ"
            );
        }
        assert!(dst.guards_intact());
    }
    let conns = client.client_connections();
    assert!(
        conns > PEERS,
        "expected several connections per busy peer, got {conns} for {PEERS} peers"
    );
    // Connecting threads end; what stays is the client's event loops.
    let want = before + client_cfg.client_threads;
    let settled = eventually(LIMIT, || client.threads() == want);
    assert!(
        settled,
        "{conns} connections to {PEERS} peers: threads went from {before} to {} (want {want})",
        client.threads()
    );
    assert_eq!(client.client_threads(), client_cfg.client_threads);
    // Each peer serves its connections on its one loop.
    for s in &servers {
        assert_eq!(s.threads(), 1, "a peer's server threads");
    }
    client.shutdown();
    for s in &servers {
        s.shutdown();
    }
}

#[test]
fn per_ip_cap_refuses_extra_connections_with_a_log() {
    let _serial = serial();
    capture_logs();
    let cfg = TcpConfig {
        max_server_connections_per_ip: 8,
        ..TcpConfig::default()
    };
    let server = transport(cfg);
    let client = transport(TcpConfig::default());
    let other = Ipv4Addr::new(127, 0, 0, 2);
    let socks: Vec<TcpStream> = (0..20)
        .map(|_| connect_from(other, data_addr(server.data_port())).unwrap())
        .collect();
    let refused = socks
        .iter()
        .filter(|s| closed_by_peer(s, Duration::from_millis(300)))
        .count();
    assert_eq!(refused, 12, "20 connections from one address, cap 8");
    assert!(!logged("per-IP cap").is_empty(), "the refusal is logged");
    // Another address is not affected.
    round_trip(&server, &client, 64 << 10, 3);
    drop(socks);
    client.shutdown();
    server.shutdown();
}

#[test]
fn sockets_without_a_complete_header_are_reclaimed_in_seconds() {
    let _serial = serial();
    capture_logs();
    let cfg = TcpConfig {
        server_header_timeout: Duration::from_secs(1),
        ..TcpConfig::default()
    };
    let server = transport(cfg);
    let client = transport(TcpConfig::default());
    round_trip(&server, &client, 64 << 10, 4);
    let mut socks: Vec<TcpStream> = (0..100)
        .map(|i| {
            let from = Ipv4Addr::new(127, 0, 0, 10 + (i % 8) as u8);
            connect_from(from, data_addr(server.data_port())).unwrap()
        })
        .collect();
    for s in socks.iter_mut().take(20) {
        s.write_all(&[1u8; 10]).unwrap();
    }
    // Header timeout 1 s, swept every 200 ms: each goes within seconds.
    for s in &socks {
        assert!(closed_by_peer(s, Duration::from_secs(5)), "not reclaimed");
    }
    assert!(
        eventually(Duration::from_secs(5), || server
            .reclaimed_data_connections()
            >= 100),
        "reclaimed {}",
        server.reclaimed_data_connections()
    );
    // The lane that served a request is idle, not header-less: still usable.
    round_trip(&server, &client, 64 << 10, 5);
    client.shutdown();
    server.shutdown();
}

/// A fake target that reads each request header, lets `answer` act on the
/// socket, then holds it open without another byte.
fn stalling_peer(answer: fn(&mut TcpStream, &Header)) -> u16 {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    std::thread::spawn(move || {
        for s in l.incoming() {
            let Ok(mut s) = s else { return };
            std::thread::spawn(move || {
                let mut hb = [0u8; HEADER_LEN];
                if s.read_exact(&mut hb).is_ok() {
                    answer(&mut s, &Header::decode(&hb));
                }
                // Hold until the client gives up (it closes; we see EOF or
                // keep failing to read a body we never drain).
                let _ = s.set_read_timeout(Some(Duration::from_secs(30)));
                std::thread::sleep(Duration::from_secs(30));
            });
        }
    });
    port
}

const TIMEOUT: Duration = Duration::from_secs(2);

fn stall_cfg() -> TcpConfig {
    TcpConfig {
        status_timeout: TIMEOUT,
        ..TcpConfig::default()
    }
}

fn assert_within_1_2x(start: Instant, what: &str) {
    let took = start.elapsed();
    assert!(
        took >= TIMEOUT.mul_f64(0.9) && took <= TIMEOUT.mul_f64(1.2),
        "{what}: failed after {took:?}, timeout {TIMEOUT:?}"
    );
}

#[test]
fn read_stalled_mid_body_fails_within_1_2x_the_status_timeout() {
    let _serial = serial();
    capture_logs();
    let port = stalling_peer(|s, _| {
        // Status and the first MiB of an 8 MiB body, then silence.
        let _ = s.write_all(&Status::Ok.encode());
        let _ = s.write_all(&vec![7u8; 1 << 20]);
    });
    let client = transport(stall_cfg());
    let tgt = target(port, 2);
    let mut dst = vec![0u8; 8 << 20];
    let start = Instant::now();
    let t = submit(
        &client,
        &tgt,
        false,
        dst.as_mut_ptr() as u64,
        0x10000,
        8 << 20,
    );
    assert_eq!(wait(&t, LIMIT), TaskStatus::Failed);
    assert_within_1_2x(start, "stalled READ");
    dst[0] = 0;
    client.shutdown();
}

#[test]
fn writes_to_a_target_that_stops_reading_fail_within_1_2x_the_status_timeout() {
    let _serial = serial();
    capture_logs();
    // Never drains the bodies: the sender blocks once the socket buffers fill.
    let port = stalling_peer(|_, _| {});
    let client = transport(stall_cfg());
    let tgt = target(port, 2);
    let len = 64usize << 20;
    let src = vec![5u8; len];
    let start = Instant::now();
    let tasks: Vec<_> = (0..3)
        .map(|i| {
            submit(
                &client,
                &tgt,
                true,
                src.as_ptr() as u64,
                0x10000 + i * len as u64,
                len as u64,
            )
        })
        .collect();
    for t in &tasks {
        assert_eq!(wait(t, LIMIT), TaskStatus::Failed);
    }
    assert_within_1_2x(start, "stalled WRITEs");
    client.shutdown();
}

/// A header trickled one byte every 200 ms would take ~5 s to complete: the
/// header timeout (1 s) counts from its first byte, so the trickle does not
/// extend it.
#[test]
fn a_trickled_header_is_closed_within_the_header_timeout_of_its_first_byte() {
    let _serial = serial();
    capture_logs();
    let server = transport(TcpConfig {
        server_header_timeout: Duration::from_secs(1),
        ..TcpConfig::default()
    });
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 5), data_addr(server.data_port())).unwrap();
    let header = Header::new(true, true, 0x1000, 8).encode();
    let start = Instant::now();
    let mut sent = 0;
    for b in header {
        if s.write_all(&[b]).is_err() || closed_by_peer(&s, Duration::from_millis(200)) {
            break;
        }
        sent += 1;
    }
    let took = start.elapsed();
    assert!(
        sent < HEADER_LEN && took < Duration::from_secs(4),
        "trickled header held the connection for {took:?} ({sent} of {HEADER_LEN} bytes)"
    );
    server.shutdown();
}

/// A peer that READs 64 MiB and takes its reply 1 KiB per 100 ms is busy
/// below `server_min_rate` and is cut after one pace window, though it never
/// stalls for the status timeout.
#[test]
fn a_slowly_read_reply_is_cut_by_the_pace_rule() {
    let _serial = serial();
    capture_logs();
    let server = transport(TcpConfig {
        server_rate_window: Duration::from_secs(1),
        ..TcpConfig::default()
    });
    const BIG: usize = 64 << 20;
    let buf = Guarded::new(BIG, 1);
    register(&server, buf.addr(), BIG as u64);
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 6), data_addr(server.data_port())).unwrap();
    // A small fixed receive buffer, so the server's pace is our reading pace.
    let small: libc::c_int = 64 << 10;
    // SAFETY: setsockopt on our own socket with a c_int option value.
    let rc = unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&s),
            libc::SOL_SOCKET,
            libc::SO_RCVBUF,
            (&small as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0);
    s.write_all(&Header::new(false, true, buf.addr(), BIG as u64).encode())
        .unwrap();
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let start = Instant::now();
    let mut chunk = [0u8; 64 << 10];
    let mut got = 0usize;
    // Drain what the socket buffers held, then go slow (10 KiB/s) until
    // the server lets go of us (what it had already handed to its kernel
    // still trickles in afterwards).
    let before = server.reclaimed_data_connections();
    while server.reclaimed_data_connections() == before {
        let want = if got > 8 << 20 { 1024 } else { chunk.len() };
        match s.read(&mut chunk[..want]) {
            Ok(0) | Err(_) => break,
            Ok(n) => got += n,
        }
        if got > 8 << 20 {
            std::thread::sleep(Duration::from_millis(100));
        }
        assert!(start.elapsed() < LIMIT, "still served after {LIMIT:?}");
    }
    assert!(got < BIG, "the whole reply went out");
    assert_eq!(server.open_data_connections(), 0);
    assert!(
        start.elapsed() < Duration::from_secs(10),
        "cut after {:?} with a 1 s pace window",
        start.elapsed()
    );
    server.unregister_memory(buf.addr()).unwrap();
    server.shutdown();
}
