//! The event-driven data server against a raw client: pipelined requests
//! answered strictly in order (v2 status frames included), a READ queued
//! before a WRITE returns the bytes from before it, large bodies in both
//! directions while the client reads nothing until it has sent everything
//! (backpressure, partial sends and receives), and a rejected request
//! answered after everything before it.

mod tcp_support;

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

use tcp_support::*;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::wire::{Header, Status, STATUS_LEN};
use transfer_engine::transport::Transport;

fn conn(port: u16) -> TcpStream {
    let s = TcpStream::connect(("127.0.0.1", port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
    s
}

fn status(s: &mut TcpStream) -> Status {
    let mut b = [0u8; STATUS_LEN];
    s.read_exact(&mut b).unwrap();
    Status::decode(&b).expect("magic")
}

fn body(s: &mut TcpStream, len: usize) -> Vec<u8> {
    let mut b = vec![0u8; len];
    s.read_exact(&mut b).unwrap();
    b
}

#[test]
fn pipelined_read_write_read_keeps_order_and_old_bytes() {
    let server = transport(TcpConfig::default());
    let len = 4096usize;
    let mem = Guarded::new(len, 0x11);
    register(&server, mem.addr(), len as u64);
    let new = pattern(len, 7);
    let mut msg = Vec::new();
    msg.extend(Header::new(false, true, mem.addr(), len as u64).encode());
    msg.extend(Header::new(true, true, mem.addr(), len as u64).encode());
    msg.extend(&new);
    msg.extend(Header::new(false, true, mem.addr(), len as u64).encode());
    let mut s = conn(server.data_port());
    s.write_all(&msg).unwrap();
    assert_eq!(status(&mut s), Status::Ok);
    assert_eq!(body(&mut s, len), vec![0x11; len], "READ before the WRITE");
    assert_eq!(status(&mut s), Status::Ok, "the WRITE's status");
    assert_eq!(status(&mut s), Status::Ok);
    assert_eq!(body(&mut s, len), new, "READ after the WRITE");
    assert!(mem.guards_intact());
    server.shutdown();
}

#[test]
fn large_bodies_with_a_client_that_reads_only_at_the_end() {
    let server = transport(TcpConfig::default());
    let len = 32usize << 20;
    let mem = Guarded::new(2 * len, 0);
    register(&server, mem.addr(), 2 * len as u64);
    let a = pattern(len, 1);
    let b = pattern(len, 2);
    let mut s = conn(server.data_port());
    // WRITE a, WRITE b, then 8 READs of the whole 64 MiB plus 100 small
    // READs: 512 MiB of answers the client does not read while it sends.
    let mut w = s.try_clone().unwrap();
    let (pa, pb) = (mem.addr(), mem.addr() + len as u64);
    let (a2, b2) = (a.clone(), b.clone());
    let sender = std::thread::spawn(move || {
        w.write_all(&Header::new(true, true, pa, len as u64).encode())
            .unwrap();
        w.write_all(&a2).unwrap();
        w.write_all(&Header::new(true, true, pb, len as u64).encode())
            .unwrap();
        w.write_all(&b2).unwrap();
        for _ in 0..8 {
            w.write_all(&Header::new(false, true, pa, 2 * len as u64).encode())
                .unwrap();
        }
        for i in 0..100u64 {
            w.write_all(&Header::new(false, true, pa + i * 16, 16).encode())
                .unwrap();
        }
    });
    // Let the server fill the socket and stall on us.
    std::thread::sleep(Duration::from_millis(300));
    assert_eq!(status(&mut s), Status::Ok);
    assert_eq!(status(&mut s), Status::Ok);
    for _ in 0..8 {
        assert_eq!(status(&mut s), Status::Ok);
        let got = body(&mut s, 2 * len);
        assert!(got[..len] == a[..] && got[len..] == b[..], "64 MiB READ");
    }
    for i in 0..100usize {
        assert_eq!(status(&mut s), Status::Ok);
        assert_eq!(body(&mut s, 16), a[i * 16..i * 16 + 16]);
    }
    sender.join().unwrap();
    assert!(mem.guards_intact());
    server.shutdown();
}

#[test]
fn rejected_request_is_answered_after_earlier_ones_then_closed() {
    let server = transport(TcpConfig::default());
    let len = 4096usize;
    let mem = Guarded::new(len, 0x22);
    register(&server, mem.addr(), len as u64);
    let mut msg = Vec::new();
    msg.extend(Header::new(false, true, mem.addr(), len as u64).encode());
    msg.extend(Header::new(false, true, mem.addr() + 1, len as u64).encode());
    msg.extend(Header::new(false, true, mem.addr(), len as u64).encode());
    let mut s = conn(server.data_port());
    s.write_all(&msg).unwrap();
    assert_eq!(status(&mut s), Status::Ok);
    assert_eq!(body(&mut s, len), vec![0x22; len]);
    assert_eq!(status(&mut s), Status::AddrRejected);
    let mut rest = Vec::new();
    let _ = s.read_to_end(&mut rest);
    assert!(
        rest.is_empty(),
        "nothing after the rejection: {} bytes",
        rest.len()
    );
    server.shutdown();
}
