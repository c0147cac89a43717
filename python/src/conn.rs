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

/// `initialize`'s `protocol`, as upstream's module reads it: only for a
/// memory allocator, never for the transport, which auto-discovery picks
/// (RDMA when a NIC is present, else TCP). So any string is accepted but
/// `xgmi`, which upstream refuses with this text. Returns the lowercase
/// form the installed transports are compared with.
pub fn check_protocol(protocol: &str) -> std::result::Result<String, String> {
    if protocol == "xgmi" {
        return Err("Protocol 'xgmi' is not exposed in the Python API. Use 'hip' instead.".into());
    }
    Ok(protocol.to_ascii_lowercase())
}

/// Upstream's accelerator and fabric protocols, which te-rs has no
/// transport for (it moves host memory over tcp or rdma).
pub fn is_foreign_protocol(protocol: &str) -> bool {
    matches!(
        protocol,
        "nvlink" | "nvlink_intra" | "musa" | "hip" | "efa" | "cxi" | "ascend" | "hccs" | "ubshmem"
    )
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

/// `get_local_topology`: the matrix as a JSON object. Without a NIC, as
/// upstream: one `"cpu:N": [[], []]` per NUMA node under `sys_node`
/// (`/sys/devices/system/node`), `{}` when that cannot be read.
pub fn topology_json(filter: &[String], sys_node: &std::path::Path) -> String {
    let matrix = match discover_matrix(filter) {
        Ok(m) => m,
        Err(e) => {
            log::error!("get_local_topology: {e}");
            PriorityMatrix::new()
        }
    };
    let matrix = if matrix.is_empty() {
        numa_nodes(sys_node)
            .into_iter()
            .map(|n| (format!("cpu:{n}"), (Vec::new(), Vec::new())))
            .collect()
    } else {
        matrix
    };
    serde_json::to_string_pretty(&matrix).unwrap_or_else(|_| "{}".into())
}

/// NUMA node ids: the `nodeN` directories under `sys_node`.
fn numa_nodes(sys_node: &std::path::Path) -> Vec<u32> {
    let mut nodes: Vec<u32> = std::fs::read_dir(sys_node)
        .map(|d| {
            d.filter_map(|e| e.ok())
                .filter(|e| e.file_type().map(|t| t.is_dir()).unwrap_or(false))
                .filter_map(|e| e.file_name().to_str()?.strip_prefix("node")?.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    nodes.sort_unstable();
    nodes
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
        assert_eq!(check_protocol("TCP").unwrap(), "tcp");
        assert_eq!(check_protocol("Rdma").unwrap(), "rdma");
        assert_eq!(check_protocol("nvlink").unwrap(), "nvlink");
        assert!(check_protocol("xgmi")
            .unwrap_err()
            .contains("Use 'hip' instead"));
        assert!(is_foreign_protocol("efa") && !is_foreign_protocol("tcp"));
    }

    #[test]
    fn topology_without_nics_lists_numa_nodes_as_upstream() {
        let dir = std::env::temp_dir().join(format!("te-rs-numa-{}", std::process::id()));
        for sub in ["node1", "node0", "possible_not_a_node", "nodeX"] {
            std::fs::create_dir_all(dir.join(sub)).unwrap();
        }
        std::fs::write(dir.join("node7"), "a file, not a node").unwrap();
        assert_eq!(numa_nodes(&dir), [0, 1]);
        let _ = std::fs::remove_dir_all(&dir);
        assert!(numa_nodes(&dir).is_empty());
    }
}
