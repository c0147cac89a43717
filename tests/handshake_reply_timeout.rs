//! `MC_HANDSHAKE_REPLY_TIMEOUT_SEC` bounds `openSegment` to a stalled peer:
//! one that never accepts (a stopped process: the kernel completes the TCP
//! handshake from the listen backlog), one that accepts and never answers,
//! and one that trickles its reply a byte at a time. Each open fails within
//! 1.2x the configured timeout.

mod common;

use std::io::Write;
use std::net::TcpListener;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The configured timeout; the whole file runs with it.
const TIMEOUT_SECS: u64 = 2;

fn configure() {
    std::env::set_var("MC_HANDSHAKE_REPLY_TIMEOUT_SEC", TIMEOUT_SECS.to_string());
}

/// Open the segment at `port` and assert it fails within 1.2x the timeout.
fn open_fails_in_time(port: u16, what: &str) {
    configure();
    let e = common::p2p_engine();
    let start = Instant::now();
    let r = e.open_segment(&format!("127.0.0.1:{port}"));
    let took = start.elapsed();
    assert!(r.is_err(), "{what}: open of a stalled peer must fail");
    let limit = Duration::from_secs(TIMEOUT_SECS).mul_f64(1.2);
    assert!(
        took <= limit,
        "{what}: openSegment took {took:?}, more than 1.2x the {TIMEOUT_SECS} s timeout"
    );
    assert!(
        took >= Duration::from_secs(TIMEOUT_SECS).mul_f64(0.9),
        "{what}: openSegment failed after {took:?}, before the peer could have answered in time: {:?}",
        r.err()
    );
    e.shutdown();
}

#[test]
fn peer_that_never_accepts() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    open_fails_in_time(port, "never accepts");
    drop(l);
}

#[test]
fn peer_that_accepts_and_never_replies() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let held = std::thread::spawn(move || l.accept().map(|(s, _)| s));
    open_fails_in_time(port, "accepts, never replies");
    drop(held.join().unwrap());
}

#[test]
fn peer_that_trickles_its_reply() {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let stop = Arc::new(AtomicBool::new(false));
    let s2 = stop.clone();
    let peer = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        // A frame header announcing 1 MiB, then one byte every 100 ms: each
        // read gets something, so only a whole-call deadline ends it.
        let _ = s.write_all(&(1u64 << 20).to_ne_bytes());
        while !s2.load(Ordering::Relaxed) {
            if s.write_all(b" ").is_err() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    });
    open_fails_in_time(port, "trickles");
    stop.store(true, Ordering::Relaxed);
    peer.join().unwrap();
}

/// A peer that answers is not affected by the short timeout.
#[test]
fn live_peer_still_opens() {
    configure();
    let target = common::p2p_engine();
    let init = common::p2p_engine();
    init.open_segment(&target.local_server_name()).unwrap();
}
