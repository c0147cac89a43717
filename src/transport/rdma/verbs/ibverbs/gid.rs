//! Reading a port's GID table (`ibv_query_gid` + sysfs type and netdev).

use rdma_sys as ffi;

use crate::transport::rdma::verbs::gid::{GidCandidate, GidType};

fn sysfs_attr(device: &str, port: u8, what: &str, index: usize) -> Option<String> {
    std::fs::read_to_string(format!(
        "/sys/class/infiniband/{device}/ports/{port}/gid_attrs/{what}/{index}"
    ))
    .ok()
    .map(|s| s.trim().to_string())
}

/// `types/<i>` text → type; InfiniBand ports have no RoCE type file.
/// Without sysfs (containers) the GID itself decides: an IPv4-mapped GID
/// only exists as RoCE v2 (rdma-sys exposes no `ibv_query_gid_type`).
pub(super) fn parse_gid_type(text: Option<&str>, link_layer_ib: bool, gid: &[u8; 16]) -> GidType {
    let v4_mapped = gid[..10].iter().all(|b| *b == 0) && gid[10] == 0xff && gid[11] == 0xff;
    match text {
        _ if link_layer_ib => GidType::Ib,
        Some(t) if t.eq_ignore_ascii_case("RoCE v2") => GidType::RoceV2,
        Some(t) if t.to_ascii_lowercase().contains("roce") => GidType::RoceV1,
        None if v4_mapped => GidType::RoceV2,
        _ => GidType::Unknown,
    }
}

/// Non-null entries of the GID table of `port` (first 256).
pub(super) fn read_gid_table(
    ctx: *mut ffi::ibv_context,
    device: &str,
    port: u8,
    table_len: usize,
    link_layer_ib: bool,
) -> Vec<GidCandidate> {
    let mut out = Vec::new();
    for index in 0..table_len.min(256) {
        let mut gid = ffi::ibv_gid { raw: [0; 16] };
        // SAFETY: `ctx` is an open device context and `gid` a valid
        // out-parameter; index < gid_tbl_len of the port.
        let rc = unsafe { ffi::ibv_query_gid(ctx, port, index as libc::c_int, &mut gid) };
        if rc != 0 {
            continue;
        }
        // SAFETY: every bit pattern of the union is a valid `[u8; 16]`.
        let raw = unsafe { gid.raw };
        if raw.iter().all(|b| *b == 0) {
            continue;
        }
        let type_text = sysfs_attr(device, port, "types", index);
        out.push(GidCandidate {
            index: index as u8,
            gid: raw,
            gid_type: parse_gid_type(type_text.as_deref(), link_layer_ib, &raw),
            netdev: sysfs_attr(device, port, "ndevs", index).filter(|n| !n.is_empty()),
        });
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gid_type_text() {
        let v6 = [0xfe, 0x80, 0, 0, 0, 0, 0, 0, 1, 2, 3, 4, 5, 6, 7, 8];
        let v4 = [0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff, 10, 0, 0, 1];
        assert_eq!(parse_gid_type(Some("RoCE v2"), false, &v6), GidType::RoceV2);
        assert_eq!(
            parse_gid_type(Some("IB/RoCE v1"), false, &v4),
            GidType::RoceV1
        );
        assert_eq!(parse_gid_type(Some("IB/RoCE v1"), true, &v6), GidType::Ib);
        assert_eq!(parse_gid_type(None, true, &v4), GidType::Ib);
        assert_eq!(parse_gid_type(None, false, &v6), GidType::Unknown);
        // No sysfs (containers): an IPv4-mapped GID is RoCE v2.
        assert_eq!(parse_gid_type(None, false, &v4), GidType::RoceV2);
    }
}
