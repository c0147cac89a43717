//! Metadata connection strings and device filters, parsed the way upstream's
//! Python module parses them, and the transport choice at `initialize`.

use transfer_engine::config::{env_is_set, env_str};
use transfer_engine::metadata::descriptor::PriorityMatrix;
use transfer_engine::topology;
use transfer_engine::{Result, TransferEngine};

pub const P2PHANDSHAKE: &str = "P2PHANDSHAKE";

/// `initialize`'s split of `metadata_server` into (type, server): `P2PHANDSHAKE`
/// has no type, `scheme://rest` gives (scheme, rest), a bare `host:port` is etcd.
pub fn split_metadata_server(conn: &str) -> (String, String) {
    if let Some(i) = conn.find("://") {
        (conn[..i].to_string(), conn[i + 3..].to_string())
    } else if conn == P2PHANDSHAKE {
        (String::new(), P2PHANDSHAKE.to_string())
    } else {
        ("etcd".to_string(), conn.to_string())
    }
}

/// `initialize_ext`'s rebuild of the connection string the engine takes.
pub fn connection_string(metadata_type: &str, metadata_server: &str) -> String {
    if metadata_server == P2PHANDSHAKE || metadata_server.contains("://") {
        metadata_server.to_string()
    } else {
        format!("{metadata_type}://{metadata_server}")
    }
}

/// `device_name` as upstream reads it: comma-separated names, empty = all.
pub fn device_filter(device_name: &str) -> Vec<String> {
    device_name
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Protocols `initialize` accepts. Upstream installs whatever auto-discovery
/// finds (RDMA when a NIC is present, else TCP) for these; accelerator
/// transports do not exist in te-rs.
pub fn check_protocol(protocol: &str) -> std::result::Result<(), String> {
    match protocol {
        "rdma" | "tcp" | "" => Ok(()),
        other => Err(format!(
            "protocol '{other}' is not supported by te-rs (it moves host memory over tcp or rdma)"
        )),
    }
}

/// The NIC priority matrix auto-discovery yields: `MC_CUSTOM_TOPO_JSON`, or
/// every NIC the RDMA provider lists that passes `filter`.
pub fn discover_matrix(filter: &[String]) -> Result<PriorityMatrix> {
    if let Some(path) = env_str("MC_CUSTOM_TOPO_JSON") {
        match std::fs::read_to_string(&path) {
            Ok(text) => return topology::parse_matrix(&text),
            Err(e) => log::warn!("MC_CUSTOM_TOPO_JSON={path}: {e}; discovering NICs instead"),
        }
    }
    let devices: Vec<String> = transfer_engine::transport::rdma::discover_devices()
        .into_iter()
        .filter(|d| filter.is_empty() || filter.contains(d))
        .collect();
    Ok(topology::matrix_for(&devices))
}

/// Install the transport auto-discovery picks, as upstream's engine does:
/// RDMA when a NIC passes the filter (or `MC_FORCE_HCA`), else TCP.
/// `MC_FORCE_TCP` was already honoured by `TransferEngine::new`.
pub fn install_transport(engine: &TransferEngine, filter: &[String]) -> Result<()> {
    if !engine.installed_protocols().is_empty() {
        return Ok(());
    }
    let matrix = discover_matrix(filter)?;
    if !matrix.is_empty() || env_is_set("MC_FORCE_HCA") {
        let json = serde_json::to_string(&matrix)?;
        let arg = if matrix.is_empty() {
            None
        } else {
            Some(json.as_str())
        };
        engine.install_transport("rdma", arg)
    } else {
        engine.install_transport("tcp", None)
    }
}

/// `get_local_topology`: the matrix as a JSON object (`{}` without NICs).
pub fn topology_json(filter: &[String]) -> String {
    match discover_matrix(filter) {
        Ok(m) => serde_json::to_string_pretty(&m).unwrap_or_else(|_| "{}".into()),
        Err(e) => {
            log::error!("get_local_topology: {e}");
            "{}".into()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn conn_of(s: &str) -> String {
        let (kind, server) = split_metadata_server(s);
        connection_string(&kind, &server)
    }

    #[test]
    fn metadata_strings_as_upstream_reads_them() {
        assert_eq!(conn_of("P2PHANDSHAKE"), "P2PHANDSHAKE");
        assert_eq!(conn_of("10.0.0.1:2379"), "etcd://10.0.0.1:2379");
        assert_eq!(conn_of("etcd://h:2379"), "etcd://h:2379");
        assert_eq!(conn_of("redis://h:6379"), "redis://h:6379");
        assert_eq!(conn_of("http://h:8080/metadata"), "http://h:8080/metadata");
        assert_eq!(connection_string("redis", "h:6379"), "redis://h:6379");
        assert_eq!(connection_string("etcd", "P2PHANDSHAKE"), "P2PHANDSHAKE");
    }

    #[test]
    fn device_filters_and_protocols() {
        assert!(device_filter("").is_empty());
        assert_eq!(device_filter("mlx5_0,mlx5_1"), ["mlx5_0", "mlx5_1"]);
        assert!(check_protocol("rdma").is_ok() && check_protocol("tcp").is_ok());
        assert!(check_protocol("nvlink")
            .unwrap_err()
            .contains("not supported"));
    }
}
