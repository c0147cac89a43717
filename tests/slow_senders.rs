//! Slow senders are cut off and cannot crowd peers out: trickling data
//! connections from several source addresses fill the TCP data server, and
//! trickling handshake connections hold the handshake frame budget, while
//! new peers open the segment and transfer verified bytes.
//!
//! CI size: 2,000 data connections from 10 addresses against a server capped
//! at 1,800 (so it is full) and 48 handshake connections of ~1 MiB frames
//! against the 32 MiB frame budget; the pace window is 6 s so that the rate
//! rule bites within the test. The long form of issue 24 is
//! `TE_SLOW_DATA_CONNS=16384 TE_SLOW_HS_CONNS=64 cargo test --test slow_senders`
//! (needs `ulimit -n` of 40,000).

mod common;
mod limits_support;

use std::io::Write;
use std::net::{Ipv4Addr, SocketAddr, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use limits_support::*;
use transfer_engine::transport::tcp::wire::Header;
use transfer_engine::{Opcode, TaskStatus};

const T: Duration = Duration::from_secs(20);
const ATTACK_ADDRS: u8 = 10;
/// Bytes a hostile handshake frame claims and buffers before trickling.
const HS_FRAME: usize = 1 << 20;

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

fn port_of(name: &str) -> u16 {
    name.rsplit(':').next().unwrap().parse().unwrap()
}

/// One hostile socket and how to (re)start it.
struct Hostile {
    from: Ipv4Addr,
    to: SocketAddr,
    opening: Vec<u8>,
    sock: Option<TcpStream>,
}

impl Hostile {
    fn connect(&mut self) {
        self.sock = connect_from(self.from, self.to).ok().and_then(|mut s| {
            // The whole opening (a header, or most of a large frame), then
            // trickle. A refused or dropped connection fails here or at the
            // next trickle round, which reconnects.
            s.set_write_timeout(Some(Duration::from_secs(2))).ok()?;
            s.write_all(&self.opening).ok()?;
            s.set_nonblocking(true).ok()?;
            Some(s)
        });
    }

    /// One trickled byte; reconnect when the server cut us off.
    fn trickle(&mut self) {
        let alive = match self.sock.as_mut() {
            Some(s) => match s.write(&[0x42]) {
                Ok(_) => true,
                Err(e) => e.kind() == std::io::ErrorKind::WouldBlock,
            },
            None => false,
        };
        if !alive {
            self.connect();
        }
    }
}

#[test]
fn peers_open_and_transfer_while_slow_senders_hold_both_servers() {
    let _serial = serial();
    capture_logs();
    let data_conns = env_usize("TE_SLOW_DATA_CONNS", 2000);
    let hs_conns = env_usize("TE_SLOW_HS_CONNS", 48);
    let want_fds = (2 * (data_conns + hs_conns) + 1024) as u64;
    assert!(
        raise_nofile(want_fds) >= want_fds,
        "needs {want_fds} descriptors"
    );
    // Before the engines exist: the server is full once the attack is in,
    // and the pace window is short enough to bite within the test.
    let cap = data_conns * 9 / 10;
    std::env::set_var("MC_TCP_SERVER_MAX_CONNECTIONS", cap.to_string());
    std::env::set_var("MC_TCP_SERVER_RATE_WINDOW_SEC", "6");

    let target = p2p_engine();
    let len = 256 << 10;
    let remote = Guarded::new(len);
    target
        .register_local_memory(remote.addr(), len as u64, "cpu:0", true)
        .unwrap();
    // What the hostile WRITEs aim at (so they are served, not rejected).
    let bait = Guarded::new(1 << 20);
    target
        .register_local_memory(bait.addr(), 1 << 20, "cpu:0", true)
        .unwrap();
    let hs_port = port_of(&target.local_server_name());
    let data_port = target.metadata().local_desc().unwrap().tcp_data_port;

    let write_header = Header::new(true, true, bait.addr(), 1 << 20)
        .encode()
        .to_vec();
    let mut hs_opening = (HS_FRAME as u64).to_ne_bytes().to_vec();
    hs_opening.push(1); // Metadata
    hs_opening.extend(std::iter::repeat_n(b' ', HS_FRAME - 1024));
    let mut hostile: Vec<Hostile> = (0..data_conns)
        .map(|i| Hostile {
            from: Ipv4Addr::new(127, 0, 3, 10 + (i % ATTACK_ADDRS as usize) as u8),
            to: (Ipv4Addr::LOCALHOST, data_port).into(),
            opening: write_header.clone(),
            sock: None,
        })
        .chain((0..hs_conns).map(|i| Hostile {
            from: Ipv4Addr::new(127, 0, 4, 10 + (i % ATTACK_ADDRS as usize) as u8),
            to: (Ipv4Addr::LOCALHOST, hs_port).into(),
            opening: hs_opening.clone(),
            sock: None,
        }))
        .collect();
    let t0 = Instant::now();
    // In parallel: a connect whose SYN met a full backlog waits a second.
    std::thread::scope(|sc| {
        for chunk in hostile.chunks_mut(64) {
            sc.spawn(move || chunk.iter_mut().for_each(Hostile::connect));
        }
    });
    assert!(
        eventually(T, || !logged("total cap").is_empty()),
        "{data_conns} trickling connections never filled a server capped at {cap}"
    );
    let filled = t0.elapsed();
    // The attack goes on (one byte per socket every 500 ms, reconnecting
    // when cut off) while the peers come.
    let stop = Arc::new(AtomicBool::new(false));
    let rounds = Arc::new(AtomicUsize::new(0));
    let attacker = {
        let stop = stop.clone();
        let rounds = rounds.clone();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                for h in hostile.iter_mut() {
                    h.trickle();
                }
                rounds.fetch_add(1, Ordering::Relaxed);
                let spent = t0.elapsed();
                std::thread::sleep(Duration::from_millis(500).saturating_sub(spent));
            }
            hostile
        })
    };

    let mut served = 0;
    let mut failures = Vec::new();
    for round in 0..10u8 {
        let init = p2p_engine();
        let mut local = Guarded::new(len);
        init.register_local_memory(local.addr(), len as u64, "cpu:0", true)
            .unwrap();
        let id = match init.open_segment(&target.local_server_name()) {
            Ok(id) => id,
            Err(e) => {
                failures.push(format!("peer {round}: openSegment: {e}"));
                continue;
            }
        };
        let data = pattern(round + 1, len);
        local.data_mut().copy_from_slice(&data);
        let w = run_batch(
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
        local.data_mut().fill(0);
        let r = run_batch(
            &init,
            &[req(
                Opcode::Read,
                local.addr(),
                id,
                remote.addr(),
                len as u64,
            )],
            T,
        );
        if w[0].status == TaskStatus::Completed
            && r[0].status == TaskStatus::Completed
            && local.data() == &data[..]
            && remote.data() == &data[..]
        {
            served += 1;
        } else {
            failures.push(format!(
                "peer {round}: write {:?}, read {:?}",
                w[0].status, r[0].status
            ));
        }
        init.shutdown();
    }
    let attack_rounds = rounds.load(Ordering::Relaxed);
    // The attack stays on until the pace rule and the frame-budget reclaim
    // have each bitten at least once (attackers cut off reconnect and
    // claim budget anew).
    assert!(
        eventually(T, || !logged("held the frame budget").is_empty()),
        "the trickled handshake frames never had to give up the budget"
    );
    assert!(
        eventually(T, || !logged("MC_TCP_SERVER_MIN_RATE_KBPS").is_empty()),
        "trickling data connections were never cut for their pace"
    );
    stop.store(true, Ordering::Relaxed);
    let hostile = attacker.join().unwrap();
    assert!(
        served >= 9,
        "{served} of 10 peers served during the attack (server full after {filled:?}, {attack_rounds} attack rounds): {failures:?}"
    );
    assert!(
        !logged("fair share").is_empty(),
        "a full data server never made room for a peer: {:?}",
        logged("").iter().take(12).collect::<Vec<_>>()
    );
    assert!(remote.guards_intact() && bait.guards_intact());
    drop(hostile);
    target.shutdown();
}
