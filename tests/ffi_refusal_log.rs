//! Refused C calls are logged rate-limited: a thread polling a destroyed
//! engine handle a million times writes less than 1 MB of log, and the lines
//! that do get through say how many were held back.
//!
//! `TE_REFUSAL_CALLS` sets the number of calls (default 1,000,000).

use std::ffi::{c_char, CString};
use std::path::{Path, PathBuf};
use std::ptr;
use std::time::{Duration, Instant};

use transfer_engine::ffi::batch::*;
use transfer_engine::ffi::engine::*;
use transfer_engine::ffi::segment::*;

/// Bytes of the log files in `dir` (the severity links are not counted).
fn log_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.is_symlink())
        .map(|p| std::fs::metadata(p).unwrap().len())
        .sum()
}

fn log_text(dir: &Path) -> String {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| !p.is_symlink())
        .map(|p| std::fs::read_to_string(p).unwrap_or_default())
        .collect()
}

#[test]
fn a_million_refused_calls_write_under_a_megabyte() {
    let dir: PathBuf = std::env::temp_dir().join(format!("te-refusal-log-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // Before the first C call: logging reads it once.
    std::env::set_var("MC_LOG_DIR", &dir);
    let calls: usize = std::env::var("TE_REFUSAL_CALLS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(1_000_000);

    let (conn, name) = (
        CString::new("P2PHANDSHAKE").unwrap(),
        CString::new("127.0.0.1").unwrap(),
    );
    // SAFETY: valid NUL-terminated strings; NULL ip is ignored.
    let e = unsafe { createTransferEngine(conn.as_ptr(), name.as_ptr(), ptr::null(), 0, 0) };
    assert!(!e.is_null());
    destroyTransferEngine(e);
    let before = log_bytes(&dir);

    let seg = CString::new("127.0.0.1:1").unwrap();
    let mut buf = [0 as c_char; 64];
    let start = Instant::now();
    for i in 0..calls {
        // SAFETY: buf has 64 writable bytes; seg is NUL-terminated; the
        // handle is destroyed, which each function must refuse.
        let rc = unsafe {
            match i % 4 {
                0 => discoverTopology(e),
                1 => getLocalIpAndPort(e, buf.as_mut_ptr(), buf.len()),
                2 => openSegment(e, seg.as_ptr()),
                _ => freeBatchID(e, 1),
            }
        };
        assert_ne!(rc, 0, "call {i} on a destroyed handle was not refused");
    }
    let took = start.elapsed();
    let written = log_bytes(&dir) - before;
    println!("{calls} refused calls in {took:?} wrote {written} bytes of log");
    assert!(
        written < 1_000_000,
        "{calls} refused calls wrote {written} bytes of log"
    );
    assert!(
        log_text(&dir).contains("is not a live engine handle"),
        "the refusal is still logged"
    );

    // Once the interval has passed, the next line carries the count of the
    // held-back ones (polled: the limiter runs on the wall clock).
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        assert_eq!(discoverTopology(e), -1);
        if log_text(&dir).contains("similar messages suppressed") {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "no line with the suppressed count within 10 s"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_dir_all(&dir);
}
