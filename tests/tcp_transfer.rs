//! Two TCP transports over loopback: data integrity, concurrency, v1/v2.

mod tcp_support;

use std::sync::Arc;
use std::time::{Duration, Instant};

use tcp_support::*;
use transfer_engine::task::{Opcode, Task, TaskStatus, TransferRequest};
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::{Submission, Transport};

const LIMIT: Duration = Duration::from_secs(30);

fn round_trip(version: u32, cfg: TcpConfig, sizes: &[usize]) {
    let server = transport(TcpConfig::default());
    let client = transport(cfg);
    let max = *sizes.iter().max().unwrap();
    let mut dst = Guarded::new(max, 0);
    register(&server, dst.addr(), max as u64);
    let tgt = target(server.data_port(), version);
    for (i, &len) in sizes.iter().enumerate() {
        let src = pattern(len, i as u64 + 1);
        dst.data_mut().fill(0);
        let t = submit(
            &client,
            &tgt,
            true,
            src.as_ptr() as u64,
            dst.addr(),
            len as u64,
        );
        assert_eq!(wait(&t, LIMIT), TaskStatus::Completed, "WRITE {len}");
        assert_eq!(t.transferred_bytes(), len as u64);
        if version >= 2 {
            // v2: COMPLETED means the bytes are in the target's memory.
            assert!(
                dst.data()[..len] == src[..],
                "WRITE {len}: target bytes differ"
            );
        } else {
            // v1 completes when sent; a READ on the same FIFO peer comes after.
        }
        let mut back = vec![0u8; len];
        let t = submit(
            &client,
            &tgt,
            false,
            back.as_mut_ptr() as u64,
            dst.addr(),
            len as u64,
        );
        assert_eq!(wait(&t, LIMIT), TaskStatus::Completed, "READ {len}");
        assert_eq!(t.transferred_bytes(), len as u64);
        if version >= 2 {
            assert!(back == src, "READ {len}: bytes differ");
        } else {
            // Lanes may reorder a v1 WRITE and the READ; settle then compare memory.
            let deadline = Instant::now() + LIMIT;
            while dst.data()[..len] != src[..] {
                assert!(Instant::now() < deadline, "v1 WRITE {len} never landed");
                std::thread::sleep(Duration::from_millis(1));
            }
        }
        assert!(dst.guards_intact());
    }
    client.shutdown();
    server.shutdown();
}

#[test]
fn v2_write_and_read_4k_to_64m() {
    round_trip(
        2,
        TcpConfig::default(),
        &[4096, 65536, 1 << 20, 16 << 20, 64 << 20, 4097, 1],
    );
}

#[test]
fn v1_framing_to_v1_descriptor() {
    round_trip(1, TcpConfig::default(), &[4096, 1 << 20, 3]);
}

#[test]
fn forced_v1_against_v2_descriptor() {
    let cfg = TcpConfig {
        force_v1: true,
        ..TcpConfig::default()
    };
    round_trip(1, cfg.clone(), &[4096, 1 << 20]);
}

#[test]
fn loopback_to_itself_and_zero_length() {
    let t = transport(TcpConfig::default());
    let mut dst = Guarded::new(8192, 0);
    register(&t, dst.addr(), 8192);
    let tgt = target(t.data_port(), 2);
    let src = pattern(8192, 9);
    let task = submit(&t, &tgt, true, src.as_ptr() as u64, dst.addr(), 8192);
    assert_eq!(wait(&task, LIMIT), TaskStatus::Completed);
    assert!(dst.data() == &src[..]);
    // Zero length completes with no I/O, even to an unreachable port.
    let nowhere = target(1, 2);
    let z = submit(&t, &nowhere, true, src.as_ptr() as u64, 0, 0);
    assert_eq!(z.status(), TaskStatus::Completed);
    assert_eq!(z.transferred_bytes(), 0);
    dst.data_mut()[0] = 0;
    t.shutdown();
}

#[test]
fn many_concurrent_small_requests_from_several_threads() {
    const THREADS: usize = 4;
    const PER_THREAD: usize = 400;
    const BLOCK: usize = 4096;
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig::default());
    let total = THREADS * PER_THREAD * BLOCK;
    let dst = Guarded::new(total, 0);
    register(&server, dst.addr(), total as u64);
    let tgt = target(server.data_port(), 2);
    let base = dst.addr();
    let handles: Vec<_> = (0..THREADS)
        .map(|th| {
            let client = client.clone();
            let tgt = tgt.clone();
            std::thread::spawn(move || {
                let src = pattern(PER_THREAD * BLOCK, th as u64 + 100);
                let tasks: Vec<_> = (0..PER_THREAD)
                    .map(|i| {
                        let off = (th * PER_THREAD + i) * BLOCK;
                        submit(
                            &client,
                            &tgt,
                            true,
                            src[i * BLOCK..].as_ptr() as u64,
                            base + off as u64,
                            BLOCK as u64,
                        )
                    })
                    .collect();
                let mut bytes = 0;
                for t in &tasks {
                    assert_eq!(wait(t, LIMIT), TaskStatus::Completed);
                    bytes += t.transferred_bytes();
                }
                // Read everything back with small READs too.
                let mut back = vec![0u8; PER_THREAD * BLOCK];
                let reads: Vec<_> = (0..PER_THREAD)
                    .map(|i| {
                        let off = (th * PER_THREAD + i) * BLOCK;
                        submit(
                            &client,
                            &tgt,
                            false,
                            back[i * BLOCK..].as_mut_ptr() as u64,
                            base + off as u64,
                            BLOCK as u64,
                        )
                    })
                    .collect();
                for t in &reads {
                    assert_eq!(wait(t, LIMIT), TaskStatus::Completed);
                    bytes += t.transferred_bytes();
                }
                assert!(back == src, "thread {th}: read-back differs");
                (src, bytes)
            })
        })
        .collect();
    let mut total_bytes = 0;
    for (th, h) in handles.into_iter().enumerate() {
        let (src, bytes) = h.join().expect("worker thread");
        let off = th * PER_THREAD * BLOCK;
        assert!(dst.data()[off..off + src.len()] == src[..], "thread {th}");
        total_bytes += bytes;
    }
    assert_eq!(total_bytes as usize, 2 * total);
    assert!(dst.guards_intact());
    client.shutdown();
    server.shutdown();
}

/// Requests issued one at a time (the latency case): the submitting thread
/// sends each on the idle connection itself, all on one connection (the
/// peer never grew a second lane), bytes exact; a rejected one fails alone
/// and the next one still completes.
#[test]
fn one_at_a_time_small_requests_take_the_short_path_on_one_connection() {
    const N: usize = 200;
    const BLOCK: usize = 4096;
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig::default());
    let mut dst = Guarded::new(N * BLOCK, 0);
    register(&server, dst.addr(), (N * BLOCK) as u64);
    let tgt = target(server.data_port(), 2);
    let src = pattern(N * BLOCK, 7);
    let mut back = vec![0u8; BLOCK];
    for i in 0..N {
        let off = i * BLOCK;
        let (s, r) = (src[off..].as_ptr() as u64, dst.addr() + off as u64);
        let w = submit(&client, &tgt, true, s, r, BLOCK as u64);
        assert_eq!(wait(&w, LIMIT), TaskStatus::Completed, "WRITE #{i}");
        assert!(dst.data()[off..off + BLOCK] == src[off..off + BLOCK]);
        let rd = submit(
            &client,
            &tgt,
            false,
            back.as_mut_ptr() as u64,
            r,
            BLOCK as u64,
        );
        assert_eq!(wait(&rd, LIMIT), TaskStatus::Completed, "READ #{i}");
        assert!(back[..] == src[off..off + BLOCK], "READ #{i} bytes");
    }
    // Only the first request had to wait for a lane to connect.
    assert!(
        client.short_path_sends() >= N as u64,
        "{} of {} requests took the short path",
        client.short_path_sends(),
        2 * N
    );
    assert_eq!(server.open_data_connections(), 1);
    let bad = submit(&client, &tgt, true, src.as_ptr() as u64, 0x1000, 16);
    assert_eq!(wait(&bad, LIMIT), TaskStatus::Failed);
    dst.data_mut()[..BLOCK].fill(0);
    let good = submit(
        &client,
        &tgt,
        true,
        src.as_ptr() as u64,
        dst.addr(),
        BLOCK as u64,
    );
    assert_eq!(wait(&good, LIMIT), TaskStatus::Completed);
    assert!(dst.data()[..BLOCK] == src[..BLOCK] && dst.guards_intact());
    client.shutdown();
    server.shutdown();
}

#[test]
fn shutdown_is_prompt_with_idle_lanes() {
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig::default());
    let dst = Guarded::new(4096, 0);
    register(&server, dst.addr(), 4096);
    let tgt = target(server.data_port(), 2);
    let src = vec![7u8; 4096];
    let t = submit(&client, &tgt, true, src.as_ptr() as u64, dst.addr(), 4096);
    assert_eq!(wait(&t, LIMIT), TaskStatus::Completed);
    let start = Instant::now();
    client.shutdown();
    server.shutdown();
    assert!(
        start.elapsed() < Duration::from_secs(2),
        "shutdown took {:?}",
        start.elapsed()
    );
    // After shutdown, new work fails instead of hanging.
    let late = submit(&client, &tgt, true, src.as_ptr() as u64, dst.addr(), 4096);
    assert_eq!(wait(&late, LIMIT), TaskStatus::Failed);
    let _ = Arc::strong_count(&client);
}

/// Informal throughput figure, printed only (no speed assertion).
#[test]
fn report_loopback_throughput() {
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig::default());
    const LEN: usize = 64 << 20;
    let dst = Guarded::new(LEN, 0);
    register(&server, dst.addr(), LEN as u64);
    let tgt = target(server.data_port(), 2);
    let src = pattern(LEN, 5);
    for (label, block) in [("64MiB", LEN), ("1MiB", 1 << 20), ("4KiB", 4096)] {
        let n = (LEN / block).min(16384);
        let start = Instant::now();
        let tasks: Vec<_> = (0..n)
            .map(|i| {
                submit(
                    &client,
                    &tgt,
                    true,
                    src[i * block..].as_ptr() as u64,
                    dst.addr() + (i * block) as u64,
                    block as u64,
                )
            })
            .collect();
        for t in &tasks {
            assert_eq!(wait(t, LIMIT), TaskStatus::Completed);
        }
        let secs = start.elapsed().as_secs_f64();
        eprintln!(
            "tcp loopback WRITE {label} blocks: {n} requests, {:.0} MiB/s, {:.0} req/s",
            (n * block) as f64 / secs / (1 << 20) as f64,
            n as f64 / secs
        );
    }
    assert!(dst.data() == &src[..]);
    client.shutdown();
    server.shutdown();
}

#[test]
fn a_batch_of_large_reads_spreads_over_the_peers_connections() {
    // One connection must not swallow a whole batch of large READs (it has
    // pipeline room for 32): served behind one stream, the peer's other
    // threads idle and the batch takes longer than it needs to.
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig::default());
    const N: usize = 16;
    const LEN: usize = 1 << 20;
    let src = pattern(N * LEN, 11);
    register(&server, src.as_ptr() as u64, (N * LEN) as u64);
    let tgt = target(server.data_port(), 2);
    let mut back = vec![0u8; N * LEN];
    // A first READ opens a connection that then waits for work.
    let t = submit(
        &client,
        &tgt,
        false,
        back.as_mut_ptr() as u64,
        src.as_ptr() as u64,
        4096,
    );
    assert_eq!(wait(&t, LIMIT), TaskStatus::Completed);
    assert_eq!(client.client_connections(), 1);
    // The batch arrives in one call, as `submitTransfer` hands it over.
    let (subs, tasks): (Vec<_>, Vec<_>) = (0..N)
        .map(|i| {
            let off = (i * LEN) as u64;
            let request = TransferRequest {
                opcode: Opcode::Read,
                source: back.as_mut_ptr() as u64 + off,
                target_id: 1,
                target_offset: src.as_ptr() as u64 + off,
                length: LEN as u64,
            };
            let task = Arc::new(Task::new(request));
            let sub = Submission {
                request,
                task: task.clone(),
                target: &tgt,
            };
            (sub, task)
        })
        .unzip();
    client.submit(subs).expect("submit");
    for (i, t) in tasks.iter().enumerate() {
        assert_eq!(wait(t, LIMIT), TaskStatus::Completed, "READ {i}");
    }
    assert!(back == src, "bytes differ");
    let conns = client.client_connections();
    assert!(
        conns >= 2,
        "{N} x 1 MiB READs went over {conns} connection(s)"
    );
    client.shutdown();
    server.shutdown();
}

#[test]
fn an_idle_peer_costs_no_connection_and_comes_back() {
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig {
        lane_idle: Duration::from_millis(200),
        ..TcpConfig::default()
    });
    let mut dst = Guarded::new(8192, 0);
    register(&server, dst.addr(), 8192);
    let tgt = target(server.data_port(), 2);
    for round in 0..2u64 {
        let src = pattern(8192, round + 7);
        dst.data_mut().fill(0);
        let sent_here = client.short_path_sends();
        let t = submit(&client, &tgt, true, src.as_ptr() as u64, dst.addr(), 8192);
        assert_eq!(wait(&t, LIMIT), TaskStatus::Completed, "round {round}");
        assert!(dst.data() == &src[..], "round {round}: target bytes differ");
        assert!(client.client_connections() >= 1);
        // The first connection to a loopback peer is made, and the small
        // request sent, by the submitting thread: no thread start first.
        assert_eq!(client.short_path_sends(), sent_here + 1, "round {round}");
        // Idle past `lane_idle`: the connection closes.
        let deadline = Instant::now() + LIMIT;
        while client.client_connections() > 0 {
            assert!(Instant::now() < deadline, "connection still open when idle");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
    client.shutdown();
    server.shutdown();
}
