//! Creating and destroying engines leaks no threads and no descriptors.
//! Runs alone in its own test binary so other tests' threads don't count.

mod common;

use common::*;
use transfer_engine::{Opcode, TaskStatus};

#[test]
fn hundred_engines_leak_nothing() {
    // Warm up once (logger, lazily created statics).
    {
        let a = p2p_engine();
        a.shutdown();
    }
    std::thread::sleep(std::time::Duration::from_millis(200));
    let before = threads_and_fds();
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
                std::time::Duration::from_secs(20),
            );
            assert_eq!(st[0].status, TaskStatus::Completed);
            a.send_notify(id, "n", "m").unwrap();
            b.shutdown();
        }
        a.shutdown();
        drop(a);
    }
    std::thread::sleep(std::time::Duration::from_millis(500));
    let after = threads_and_fds();
    assert!(
        after.0 <= before.0,
        "threads leaked: {before:?} -> {after:?}"
    );
    assert!(
        after.1 <= before.1,
        "descriptors leaked: {before:?} -> {after:?}"
    );
}
