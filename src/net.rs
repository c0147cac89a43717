//! Local addresses and ports: RPC port probing in [MC_MIN_RPC_PORT,
//! MC_MAX_RPC_PORT], the advertised IP in store modes, RLIMIT_NOFILE.

use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, TcpListener};

use crate::config::{env_flag, env_i64, env_is_set, env_str};
use crate::error::{Error, Result};

/// The RPC port range, with Mooncake's validation (spec §8): 1024..65535
/// excluding 32768..60999, min ≤ max, else the defaults 15000..17000.
pub fn rpc_port_range() -> (u16, u16) {
    let get = |a: &str, b: &str, d: i64| {
        if env_is_set(a) {
            env_i64(a, d, 1024, 65535)
        } else {
            env_i64(b, d, 1024, 65535)
        }
    };
    let min = get("MC_MIN_RPC_PORT", "MC_MIN_PRC_PORT", 15000);
    let max = get("MC_MAX_RPC_PORT", "MC_MAX_PRC_PORT", 17000);
    let ephemeral = |p: i64| (32768..=60999).contains(&p);
    if min > max || ephemeral(min) || ephemeral(max) {
        (15000, 17000)
    } else {
        (min as u16, max as u16)
    }
}

fn use_ipv6() -> bool {
    env_is_set("MC_USE_IPV6")
}

/// A cheap, seed-varying pseudo random sequence (xorshift); no crate needed
/// for picking probe ports.
fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}

fn seed() -> u64 {
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default()
        .as_nanos() as u64;
    let mut s = t ^ ((std::process::id() as u64) << 32) ^ 0x9e37_79b9_7f4a_7c15;
    if s == 0 {
        s = 1;
    }
    s
}

/// Bind a listener on a random free port of the RPC range (up to 500 tries,
/// as upstream), on all interfaces.
pub fn bind_in_rpc_range() -> Result<TcpListener> {
    let (min, max) = rpc_port_range();
    let span = (max - min) as u64 + 1;
    let mut state = seed();
    for _ in 0..500 {
        let port = min + (next_random(&mut state) % span) as u16;
        let addr: SocketAddr = if use_ipv6() {
            (Ipv6Addr::UNSPECIFIED, port).into()
        } else {
            (Ipv4Addr::UNSPECIFIED, port).into()
        };
        if let Ok(l) = TcpListener::bind(addr) {
            return Ok(l);
        }
    }
    Err(Error::Socket(format!(
        "no free TCP port in [{min}, {max}] after 500 tries"
    )))
}

/// Bind `host:port` (legacy RPC binding).
pub fn bind_exact(port: u16) -> Result<TcpListener> {
    let addr: SocketAddr = if use_ipv6() {
        (Ipv6Addr::UNSPECIFIED, port).into()
    } else {
        (Ipv4Addr::UNSPECIFIED, port).into()
    };
    TcpListener::bind(addr).map_err(|e| Error::Socket(format!("binding RPC port {port}: {e}")))
}

/// The IP advertised in rpc_meta in store modes: `MC_TCP_BIND_ADDRESS`, else
/// the first UP+RUNNING non-loopback interface address, else loopback.
pub fn advertised_ip() -> String {
    if let Some(ip) = env_str("MC_TCP_BIND_ADDRESS").filter(|s| !s.is_empty()) {
        return ip;
    }
    let want_v6 = use_ipv6();
    let mut found = None;
    // SAFETY: getifaddrs allocates a list we only read and then free once.
    unsafe {
        let mut ifap: *mut libc::ifaddrs = std::ptr::null_mut();
        if libc::getifaddrs(&mut ifap) == 0 {
            let mut cur = ifap;
            while !cur.is_null() && found.is_none() {
                let ifa = &*cur;
                let flags = ifa.ifa_flags;
                let up =
                    flags & (libc::IFF_UP as u32) != 0 && flags & (libc::IFF_RUNNING as u32) != 0;
                let lo = flags & (libc::IFF_LOOPBACK as u32) != 0;
                if up && !lo && !ifa.ifa_addr.is_null() {
                    let fam = (*ifa.ifa_addr).sa_family as i32;
                    if fam == libc::AF_INET && !want_v6 {
                        let sin = &*(ifa.ifa_addr as *const libc::sockaddr_in);
                        found = Some(Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr)).to_string());
                    } else if fam == libc::AF_INET6 && want_v6 {
                        let sin6 = &*(ifa.ifa_addr as *const libc::sockaddr_in6);
                        found = Some(Ipv6Addr::from(sin6.sin6_addr.s6_addr).to_string());
                    }
                }
                cur = ifa.ifa_next;
            }
            libc::freeifaddrs(ifap);
        }
    }
    found.unwrap_or_else(|| {
        if want_v6 {
            "::1".into()
        } else {
            "127.0.0.1".into()
        }
    })
}

/// Raise the soft RLIMIT_NOFILE to the hard limit (upstream does at init).
pub fn raise_fd_limit() {
    // SAFETY: getrlimit/setrlimit only read/write the struct we own.
    unsafe {
        let mut lim: libc::rlimit = std::mem::zeroed();
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 && lim.rlim_cur < lim.rlim_max {
            lim.rlim_cur = lim.rlim_max;
            let _ = libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
        }
    }
}

/// `MC_LEGACY_RPC_PORT_BINDING`.
pub fn legacy_rpc_binding() -> bool {
    env_is_set("MC_LEGACY_RPC_PORT_BINDING") || env_flag("MC_LEGACY_RPC_PORT_BINDING")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binds_inside_range() {
        let l = bind_in_rpc_range().unwrap();
        let p = l.local_addr().unwrap().port();
        let (min, max) = rpc_port_range();
        assert!((min..=max).contains(&p));
    }
}
