//! Descriptor exhaustion: when accept fails with EMFILE the data server
//! neither spins nor floods the log, turns waiting peers away through its
//! spare descriptor, and serves again once descriptors are back.
//! Own test binary: it lowers the process's descriptor limit.

mod limits_support;
mod tcp_support;

use std::net::Ipv4Addr;
use std::os::fd::{FromRawFd, OwnedFd};
use std::time::Duration;

use limits_support::*;
use tcp_support::*;
use transfer_engine::task::TaskStatus;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::Transport;

fn open_fds() -> u64 {
    std::fs::read_dir("/proc/self/fd").unwrap().count() as u64
}

fn set_nofile(n: u64) {
    let mut r = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit/setrlimit with a pointer to a live rlimit.
    unsafe {
        libc::getrlimit(libc::RLIMIT_NOFILE, &mut r);
        r.rlim_cur = n.min(r.rlim_max);
        assert_eq!(libc::setrlimit(libc::RLIMIT_NOFILE, &r), 0);
    }
}

/// CPU time of the process (no descriptor needed: the limit is low).
fn cpu_seconds() -> f64 {
    // SAFETY: rusage is plain data; getrusage fills the live local.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: see above.
    unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut u) };
    let t = |v: libc::timeval| v.tv_sec as f64 + v.tv_usec as f64 / 1e6;
    t(u.ru_utime) + t(u.ru_stime)
}

#[test]
fn accept_backs_off_on_emfile_and_recovers() {
    capture_logs();
    let server = transport(TcpConfig::default());
    let client = transport(TcpConfig::default());
    let port = server.data_port();
    // Sockets made while descriptors are plenty, connected once they are not.
    let socks: Vec<OwnedFd> = (0..40)
        .map(|_| {
            // SAFETY: a plain socket, owned right away.
            let fd =
                unsafe { libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0) };
            assert!(fd >= 0);
            // SAFETY: `fd` is fresh and ours.
            unsafe { OwnedFd::from_raw_fd(fd) }
        })
        .collect();
    let saved = raise_nofile(0);
    set_nofile(open_fds() + 3);
    let addr = libc::sockaddr_in {
        sin_family: libc::AF_INET as libc::sa_family_t,
        sin_port: port.to_be(),
        sin_addr: libc::in_addr {
            s_addr: u32::from_ne_bytes(Ipv4Addr::LOCALHOST.octets()),
        },
        sin_zero: [0; 8],
    };
    for s in &socks {
        use std::os::fd::AsRawFd;
        // SAFETY: `addr` is a live sockaddr_in of the size passed.
        let rc = unsafe {
            libc::connect(
                s.as_raw_fd(),
                &addr as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
            )
        };
        assert_eq!(rc, 0, "loopback connect");
    }
    let cpu0 = cpu_seconds();
    std::thread::sleep(Duration::from_secs(2));
    let cpu = cpu_seconds() - cpu0;
    set_nofile(saved);
    let lines = logged("accept failed");
    assert!(!lines.is_empty(), "EMFILE is logged");
    assert!(lines.len() <= 2, "rate-limited, got {} lines", lines.len());
    assert!(cpu < 1.0, "{cpu:.2} s of CPU in 2 s: accept is spinning");
    drop(socks);
    // Descriptors are back: a peer is served again.
    let len = 64 << 10;
    let remote = Guarded::new(len, 0);
    register(&server, remote.addr(), len as u64);
    let src = pattern(len, 9);
    let tgt = target(port, 2);
    let t = submit(
        &client,
        &tgt,
        true,
        src.as_ptr() as u64,
        remote.addr(),
        len as u64,
    );
    assert_eq!(wait(&t, Duration::from_secs(20)), TaskStatus::Completed);
    assert!(remote.data() == &src[..]);
    server.unregister_memory(remote.addr()).unwrap();
    client.shutdown();
    server.shutdown();
}
