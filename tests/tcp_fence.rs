//! Unregister and shutdown are fences for the TCP data server: once
//! `unregister_memory` (or the transport's shutdown, which
//! `destroyTransferEngine` runs) returns, no byte of the range is written
//! from, or sent to, a peer again, even by a request that was mid-body.
//! Hostile peers are raw sockets in the test: one trickles a WRITE body,
//! one reads a READ reply slowly.

mod limits_support;
mod tcp_support;

use std::io::{Read, Write};
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use limits_support::*;
use tcp_support::*;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::wire::{Header, Status, STATUS_LEN};
use transfer_engine::transport::tcp::TcpTransport;
use transfer_engine::transport::Transport;

const LIMIT: Duration = Duration::from_secs(20);
const LEN: usize = 8 << 20;
/// What the hostile writer sends, and what the owner writes after the fence.
const HOSTILE: u8 = 0xAB;
const FRESH: u8 = 0x5C;

fn data_addr(port: u16) -> SocketAddr {
    (Ipv4Addr::LOCALHOST, port).into()
}

/// How the owner stops serving the range.
#[derive(Clone, Copy, Debug)]
enum Fence {
    Unregister,
    Shutdown,
}

fn fence(server: &TcpTransport, buf: u64, how: Fence) {
    match how {
        Fence::Unregister => server.unregister_memory(buf).expect("unregister"),
        Fence::Shutdown => server.shutdown(),
    }
}

/// A peer that sends a v2 WRITE header for the whole buffer, the first MiB
/// of its body at once, then 4 KiB every 5 ms until the server closes.
/// Returns the socket (to read the answer) and the trickling thread.
fn trickling_writer(port: u16, addr: u64) -> (TcpStream, Arc<AtomicBool>, JoinHandle<usize>) {
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 3), data_addr(port)).unwrap();
    s.write_all(&Header::new(true, true, addr, LEN as u64).encode())
        .unwrap();
    s.write_all(&vec![HOSTILE; 1 << 20]).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let mut w = s.try_clone().unwrap();
    let st = stop.clone();
    let h = std::thread::spawn(move || {
        let mut sent = 1 << 20;
        while !st.load(Ordering::Relaxed) && sent < LEN - 4096 {
            if w.write_all(&[HOSTILE; 4096]).is_err() {
                break;
            }
            sent += 4096;
            std::thread::sleep(Duration::from_millis(5));
        }
        sent
    });
    (s, stop, h)
}

fn trickled_write_is_fenced(how: Fence) {
    let _serial = serial();
    capture_logs();
    let server = transport(TcpConfig::default());
    let mut buf = Guarded::new(LEN, 0);
    register(&server, buf.addr(), LEN as u64);
    let (mut s, stop, trickler) = trickling_writer(server.data_port(), buf.addr());
    // The body is landing: the first MiB is in, trickled bytes follow.
    assert!(
        eventually(LIMIT, || buf.data()[(1 << 20) + 4096] == HOSTILE),
        "the WRITE body never reached memory"
    );
    fence(&server, buf.addr(), how);
    // The owner reuses the memory at once.
    buf.data_mut().fill(FRESH);
    // The server closes the connection with no OK for the WRITE.
    s.set_read_timeout(Some(LIMIT)).unwrap();
    let mut answer = [0u8; STATUS_LEN];
    let got = s.read(&mut answer);
    assert!(
        !matches!(got, Ok(STATUS_LEN) if Status::decode(&answer) == Some(Status::Ok)),
        "{how:?}: the abandoned WRITE was answered OK"
    );
    // Keep trickling a while after the close was seen: nothing lands.
    let trickle_until = Instant::now() + Duration::from_millis(300);
    while Instant::now() < trickle_until {
        let _ = s.write_all(&[HOSTILE; 4096]);
        std::thread::sleep(Duration::from_millis(5));
    }
    stop.store(true, Ordering::Relaxed);
    let sent = trickler.join().unwrap();
    let changed = buf.data().iter().filter(|&&b| b != FRESH).count();
    assert_eq!(
        changed, 0,
        "{how:?}: {changed} bytes changed after the fence returned ({sent} bytes sent)"
    );
    assert!(buf.guards_intact());
    if matches!(how, Fence::Unregister) {
        assert!(
            !logged("unregistered meanwhile").is_empty(),
            "the abandon is logged"
        );
        // The server still serves: other regions work.
        let client = transport(TcpConfig::default());
        let other = Guarded::new(64 << 10, 0);
        register(&server, other.addr(), 64 << 10);
        let src = pattern(64 << 10, 9);
        let t = submit(
            &client,
            &target(server.data_port(), 2),
            true,
            src.as_ptr() as u64,
            other.addr(),
            64 << 10,
        );
        assert_eq!(
            wait(&t, LIMIT),
            transfer_engine::task::TaskStatus::Completed
        );
        assert_eq!(other.data(), &src[..]);
        client.shutdown();
    }
    server.shutdown();
}

#[test]
fn unregister_abandons_a_trickled_write_body() {
    trickled_write_is_fenced(Fence::Unregister);
}

#[test]
fn shutdown_abandons_a_trickled_write_body() {
    trickled_write_is_fenced(Fence::Shutdown);
}

/// A peer READs 64 MiB and reads the reply slowly; the owner fences the
/// range and writes a fresh pattern: not one byte of it reaches the peer.
fn slow_read_is_fenced(how: Fence) {
    let _serial = serial();
    capture_logs();
    const BIG: usize = 64 << 20;
    let server = transport(TcpConfig::default());
    let mut buf = Guarded::new(BIG, 0x11);
    register(&server, buf.addr(), BIG as u64);
    let mut s = connect_from(Ipv4Addr::new(127, 0, 0, 4), data_addr(server.data_port())).unwrap();
    s.write_all(&Header::new(false, true, buf.addr(), BIG as u64).encode())
        .unwrap();
    // Read the status and a first MiB: the reply is under way, far from done
    // (socket buffers hold a few MiB at most).
    let mut first = vec![0u8; STATUS_LEN + (1 << 20)];
    s.set_read_timeout(Some(LIMIT)).unwrap();
    s.read_exact(&mut first).unwrap();
    assert!(first[STATUS_LEN..].iter().all(|&b| b == 0x11));
    fence(&server, buf.addr(), how);
    buf.data_mut().fill(FRESH);
    // Now read everything the server still sends, slowly at first.
    let mut got = first.len() - STATUS_LEN;
    let mut fresh = 0usize;
    let mut chunk = vec![0u8; 64 << 10];
    let mut reads = 0;
    loop {
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => break,
            Ok(n) => {
                got += n;
                fresh += chunk[..n].iter().filter(|&&b| b == FRESH).count();
            }
        }
        reads += 1;
        if reads < 20 {
            std::thread::sleep(Duration::from_millis(5));
        }
    }
    assert_eq!(
        fresh, 0,
        "{how:?}: bytes written after the fence reached the peer"
    );
    assert!(
        got < BIG,
        "{how:?}: the whole reply went out ({got} bytes) although the range was fenced"
    );
    assert!(buf.guards_intact());
    server.shutdown();
}

#[test]
fn unregister_abandons_a_slowly_read_reply() {
    slow_read_is_fenced(Fence::Unregister);
}

#[test]
fn shutdown_abandons_a_slowly_read_reply() {
    slow_read_is_fenced(Fence::Shutdown);
}
