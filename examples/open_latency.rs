//! Create → openSegment → first 4 KiB WRITE completed, from fresh initiator
//! engines against one target: median of N unloaded, then again while
//! `idle` sockets that never send a byte are held open on each of the
//! target's two ports (handshake and data; the data server's header timeout
//! is raised so they stay).
//!
//! `cargo run --release --example open_latency [rounds] [idle]` (20, 2000)
//! It also prints the median of each phase (create, install, register,
//! openSegment, first WRITE).

use std::net::{Ipv4Addr, TcpStream};
use std::os::fd::FromRawFd;
use std::time::{Duration, Instant};

use transfer_engine::{Opcode, TaskStatus, TransferEngine, TransferRequest};

fn raise_nofile() {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = r.rlim_max;
        libc::setrlimit(libc::RLIMIT_NOFILE, &r);
    }
}

/// A connection to `127.0.0.1:port` from `from` (another loopback address, as
/// an attacker on another host would be: per-IP caps do not mix them up).
fn connect_from(from: Ipv4Addr, port: u16) -> Option<TcpStream> {
    let sin = |ip: Ipv4Addr, port: u16| libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(ip.octets()),
        },
        sin_zero: [0; 8],
    };
    let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
    // SAFETY: a plain socket, owned by the TcpStream right away.
    let fd = unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
    if fd < 0 {
        return None;
    }
    // SAFETY: `fd` is a fresh socket nobody else owns.
    let s = unsafe { TcpStream::from_raw_fd(fd) };
    let (local, remote) = (sin(from, 0), sin(Ipv4Addr::LOCALHOST, port));
    // SAFETY: both addresses are live sockaddr_in values of `len` bytes.
    let ok = unsafe {
        libc::bind(fd, &local as *const _ as *const libc::sockaddr, len) == 0
            && libc::connect(fd, &remote as *const _ as *const libc::sockaddr, len) == 0
    };
    ok.then_some(s)
}

/// Phases of one first WRITE: create, install, register, openSegment,
/// submit → completed (cumulative instants are turned into durations).
const PHASES: [&str; 5] = [
    "create",
    "install tcp",
    "register",
    "openSegment",
    "first WRITE",
];

/// One fresh initiator's time to its first completed 4 KiB WRITE, and the
/// time each phase took.
fn first_write(target: &str, remote: u64) -> (Duration, [Duration; 5]) {
    let src = vec![7u8; 4096];
    let t = Instant::now();
    let mut marks = [t; 5];
    let e = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("engine");
    marks[0] = Instant::now();
    e.install_transport("tcp", None).expect("tcp");
    marks[1] = Instant::now();
    e.register_local_memory(src.as_ptr() as u64, 4096, "cpu:0", true)
        .expect("register");
    marks[2] = Instant::now();
    let id = e.open_segment(target).expect("openSegment");
    marks[3] = Instant::now();
    let b = e.allocate_batch_id(1);
    let r = TransferRequest {
        opcode: Opcode::Write,
        source: src.as_ptr() as u64,
        target_id: id,
        target_offset: remote,
        length: 4096,
    };
    e.submit_transfer(b, &[r], None).expect("submit");
    loop {
        match e.transfer_status(b, 0).expect("status").status {
            // Yield, not spin: on a 2-core machine a spinning poller takes
            // the core the lane, reader and server threads need.
            TaskStatus::Waiting => std::thread::yield_now(),
            TaskStatus::Completed => break,
            s => panic!("first WRITE ended {s:?}"),
        }
    }
    marks[4] = Instant::now();
    let took = t.elapsed();
    e.free_batch_id(b).ok();
    e.shutdown();
    let mut phases = [Duration::ZERO; 5];
    let mut prev = t;
    for (p, m) in phases.iter_mut().zip(marks) {
        *p = m - prev;
        prev = m;
    }
    (took, phases)
}

/// Median total of `rounds` fresh initiators, and the median of each phase.
fn median(rounds: usize, target: &str, remote: u64) -> (Duration, [Duration; 5]) {
    let runs: Vec<(Duration, [Duration; 5])> =
        (0..rounds).map(|_| first_write(target, remote)).collect();
    let mid = |mut v: Vec<Duration>| {
        v.sort();
        v[v.len() / 2]
    };
    let mut phases = [Duration::ZERO; 5];
    for (i, p) in phases.iter_mut().enumerate() {
        *p = mid(runs.iter().map(|r| r.1[i]).collect());
    }
    (mid(runs.iter().map(|r| r.0).collect()), phases)
}

fn phase_text(p: &[Duration; 5]) -> String {
    PHASES
        .iter()
        .zip(p)
        .map(|(n, d)| format!("{n} {:.3}", d.as_secs_f64() * 1e3))
        .collect::<Vec<_>>()
        .join(", ")
}

fn main() {
    let args: Vec<usize> = std::env::args()
        .skip(1)
        .filter_map(|a| a.parse().ok())
        .collect();
    let rounds = args.first().copied().unwrap_or(20).max(1);
    let idle = args.get(1).copied().unwrap_or(2000);
    raise_nofile();
    // Worst case: idle sockets stay (by default the data server reclaims a
    // socket without a complete header after 5 s).
    std::env::set_var("MC_TCP_SERVER_HEADER_TIMEOUT_SEC", "600");
    let target = TransferEngine::new("P2PHANDSHAKE", "127.0.0.1", false).expect("target");
    target.install_transport("tcp", None).expect("tcp");
    let mem = vec![0u8; 4096];
    target
        .register_local_memory(mem.as_ptr() as u64, 4096, "cpu:0", true)
        .expect("register");
    let name = target.local_server_name();
    let hs_port: u16 = name.rsplit(':').next().unwrap().parse().unwrap();
    let data_port = target.metadata().local_desc().expect("desc").tcp_data_port;
    let remote = mem.as_ptr() as u64;
    let (quiet, quiet_phases) = median(rounds, &name, remote);
    let mut held = Vec::with_capacity(2 * idle);
    for i in 0..idle {
        let from = Ipv4Addr::new(127, 0, 2, 2 + (i % 8) as u8);
        for port in [hs_port, data_port] {
            held.extend(connect_from(from, port));
        }
    }
    let (loaded, loaded_phases) = median(rounds, &name, remote);
    println!(
        "open_latency: create→openSegment→first 4 KiB WRITE, median of {rounds}: {:.2} ms unloaded, {:.2} ms with {} idle sockets held ({:.1}×)",
        quiet.as_secs_f64() * 1e3,
        loaded.as_secs_f64() * 1e3,
        held.len(),
        loaded.as_secs_f64() / quiet.as_secs_f64()
    );
    println!(
        "  phase medians (ms), unloaded: {}\n  with idle sockets: {}",
        phase_text(&quiet_phases),
        phase_text(&loaded_phases)
    );
    drop(held);
    target.shutdown();
}
