//! Creating and destroying engines leaks no threads and no descriptors.
//! Threads are counted per engine (`TransferEngine::threads`); descriptors
//! per process, so this runs alone in its own test binary.

mod common;

use std::time::{Duration, Instant};

use common::*;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

/// Poll `f` until it holds or 30 s pass (threads end and descriptors close
/// a little after the call that stops them returns).
fn settles(mut f: impl FnMut() -> bool) -> bool {
    let end = Instant::now() + Duration::from_secs(30);
    while Instant::now() < end {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    f()
}

/// Shut `e` down and wait for every thread it started to end.
fn shut_down(e: &TransferEngine, what: &str) {
    assert!(
        e.threads() > 0,
        "{what}: a running engine counts its threads"
    );
    e.shutdown();
    assert!(
        settles(|| e.threads() == 0),
        "{what}: {} threads still running after shutdown",
        e.threads()
    );
}

#[test]
fn hundred_engines_leak_nothing() {
    // Warm up once (logger, lazily created statics).
    {
        let a = p2p_engine();
        shut_down(&a, "warm-up engine");
    }
    let before = open_fds();
    for i in 0..100 {
        let a = p2p_engine();
        if i % 10 == 0 {
            // Exercise sockets and threads on some rounds.
            let b = p2p_engine();
            let m = Guarded::new(4096);
            let l = Guarded::new(4096);
            b.register_local_memory(m.addr(), 4096, "cpu:0", true)
                .unwrap();
            a.register_local_memory(l.addr(), 4096, "cpu:0", true)
                .unwrap();
            let id = a.open_segment(&b.local_server_name()).unwrap();
            let st = run_batch(
                &a,
                &[req(Opcode::Write, l.addr(), id, m.addr(), 4096)],
                Duration::from_secs(20),
            );
            assert_eq!(st[0].status, TaskStatus::Completed);
            a.send_notify(id, "n", "m").unwrap();
            shut_down(&b, &format!("round {i}: target"));
        }
        shut_down(&a, &format!("round {i}"));
        drop(a);
    }
    assert!(
        settles(|| open_fds() <= before),
        "descriptors leaked: {before} -> {}",
        open_fds()
    );
}
