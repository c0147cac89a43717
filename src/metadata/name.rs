//! Server names: `host:port`, `[v6]:port`, bare hosts (spec §3.2), and NIC
//! paths `<server_name>@<device>` (spec pitfall 12).

/// Port used when a server name carries none (`MC_HANDSHAKE_PORT`).
pub fn default_handshake_port() -> u16 {
    crate::config::env_u64("MC_HANDSHAKE_PORT", 12001, 1, 65535) as u16
}

/// Split a server name into host and port, as Mooncake's
/// `parseHostNameWithPort`: `[v6]:port`, bare IPv6, else split at the last
/// `:`; a missing or invalid port gives `default_port`.
pub fn parse_host_port(name: &str, default_port: u16) -> (String, u16) {
    if let Some(rest) = name.strip_prefix('[') {
        if let Some(close) = rest.find(']') {
            let host = rest[..close].to_string();
            let port = rest[close + 1..]
                .strip_prefix(':')
                .and_then(|p| p.parse::<u16>().ok())
                .filter(|p| *p != 0)
                .unwrap_or(default_port);
            return (host, port);
        }
    }
    // Bare IPv6 (more than one ':') has no port.
    if name.matches(':').count() > 1 && !name.contains('%') {
        return (name.to_string(), default_port);
    }
    match name.rfind(':') {
        Some(i) => match name[i + 1..].parse::<u16>() {
            Ok(p) if p != 0 => (name[..i].to_string(), p),
            _ => (name[..i].to_string(), default_port),
        },
        None => (name.to_string(), default_port),
    }
}

/// `maybeWrapIpV6`: bracket an IPv6 literal so `host:port` stays parseable.
pub fn join_host_port(host: &str, port: u16) -> String {
    if host.contains(':') && !host.starts_with('[') {
        format!("[{host}]:{port}")
    } else {
        format!("{host}:{port}")
    }
}

/// `<server>@<device>`.
pub fn nic_path(server: &str, device: &str) -> String {
    format!("{server}@{device}")
}

/// Split a NIC path at its last `@` into (server name, device).
pub fn split_nic_path(path: &str) -> Option<(&str, &str)> {
    let i = path.rfind('@')?;
    let (server, device) = (&path[..i], &path[i + 1..]);
    if server.is_empty() || device.is_empty() {
        None
    } else {
        Some((server, device))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn host_port_forms() {
        assert_eq!(
            parse_host_port("127.0.0.1:15000", 1),
            ("127.0.0.1".into(), 15000)
        );
        assert_eq!(parse_host_port("node01", 12001), ("node01".into(), 12001));
        assert_eq!(
            parse_host_port("node01:abc", 12001),
            ("node01".into(), 12001)
        );
        assert_eq!(parse_host_port("[::1]:16000", 1), ("::1".into(), 16000));
        assert_eq!(parse_host_port("fe80::1", 7), ("fe80::1".into(), 7));
        assert_eq!(join_host_port("::1", 5), "[::1]:5");
        assert_eq!(join_host_port("10.0.0.1", 5), "10.0.0.1:5");
    }

    #[test]
    fn nic_paths() {
        assert_eq!(
            split_nic_path("10.0.0.5:15873@mlx5_0"),
            Some(("10.0.0.5:15873", "mlx5_0"))
        );
        assert_eq!(split_nic_path("nodevice@"), None);
        assert_eq!(split_nic_path("plain"), None);
        assert_eq!(nic_path("a:1", "soft0"), "a:1@soft0");
    }
}
