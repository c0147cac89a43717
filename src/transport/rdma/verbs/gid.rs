//! Automatic GID selection (spec §5.2; Mooncake's rdma_gid_probe.h): a pure
//! ranking over a port's GID table, so both providers pick the same way.

use super::types::Gid;

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum GidType {
    Ib,
    RoceV1,
    RoceV2,
    Unknown,
}

/// One populated entry of a port's GID table.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GidCandidate {
    pub index: u8,
    pub gid: Gid,
    pub gid_type: GidType,
    /// Net device the GID is bound to (RoCE), if any.
    pub netdev: Option<String>,
}

/// Rank classes, best first.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Class {
    NetdevRoutable,
    NoNetdevRoutable,
    NetdevPrivate,
    NetdevDegraded,
    NoNetdevPrivate,
    NoNetdevDegraded,
}

fn is_null(gid: &Gid) -> bool {
    gid.iter().all(|b| *b == 0)
}

/// The IPv4 address of an IPv4-mapped GID (`::ffff:a.b.c.d`).
fn mapped_ipv4(gid: &Gid) -> Option<[u8; 4]> {
    let prefix_ok = gid[..10].iter().all(|b| *b == 0) && gid[10] == 0xff && gid[11] == 0xff;
    prefix_ok.then(|| [gid[12], gid[13], gid[14], gid[15]])
}

fn is_private_ipv4(ip: [u8; 4]) -> bool {
    ip[0] == 10
        || (ip[0] == 172 && (16..32).contains(&ip[1]))
        || (ip[0] == 100 && (64..128).contains(&ip[1]))
}

fn is_overlay_netdev(name: &str) -> bool {
    ["flannel", "cni", "calico", "vxlan", "docker"]
        .iter()
        .any(|p| name.starts_with(p))
        || name == "tunl0"
}

/// `fe80::/10` (IPv6 only, as upstream's `IN6_IS_ADDR_LINKLOCAL`: an
/// IPv4-mapped 169.254/16 GID is an ordinary RoCE v2 address, and rxe on a
/// 169.254 netdev needs it picked over the fe80 GID).
fn is_link_local_ipv6(gid: &Gid) -> bool {
    mapped_ipv4(gid).is_none() && gid[0] == 0xfe && (gid[1] & 0xc0) == 0x80
}

fn classify(c: &GidCandidate) -> Option<Class> {
    if is_null(&c.gid) || !matches!(c.gid_type, GidType::RoceV2 | GidType::Ib) {
        return None;
    }
    // Demotions apply to RoCE v2 only: every IB GID is fe80-prefixed.
    let roce_v2 = c.gid_type == GidType::RoceV2;
    let netdev = c.netdev.as_deref().filter(|n| !n.is_empty());
    let degraded = roce_v2 && (is_link_local_ipv6(&c.gid) || netdev.is_some_and(is_overlay_netdev));
    let private = roce_v2 && mapped_ipv4(&c.gid).is_some_and(is_private_ipv4);
    Some(match (netdev.is_some(), degraded, private) {
        (true, true, _) => Class::NetdevDegraded,
        (true, false, true) => Class::NetdevPrivate,
        (true, false, false) => Class::NetdevRoutable,
        (false, true, _) => Class::NoNetdevDegraded,
        (false, false, true) => Class::NoNetdevPrivate,
        (false, false, false) => Class::NoNetdevRoutable,
    })
}

/// Index of the best GID: routable and bound to a netdev first, link-local
/// or overlay last, ties by lower index; if no RoCEv2/IB GID qualifies, the
/// first non-null entry. `None` when every entry is null.
pub fn select_gid(candidates: &[GidCandidate]) -> Option<u8> {
    candidates
        .iter()
        .filter_map(|c| classify(c).map(|class| (class, c.index)))
        .min()
        .map(|(_, index)| index)
        .or_else(|| {
            candidates
                .iter()
                .filter(|c| !is_null(&c.gid))
                .map(|c| c.index)
                .min()
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn v4(ip: [u8; 4]) -> Gid {
        let mut g = [0u8; 16];
        g[10] = 0xff;
        g[11] = 0xff;
        g[12..].copy_from_slice(&ip);
        g
    }

    fn link_local() -> Gid {
        let mut g = [0u8; 16];
        g[0] = 0xfe;
        g[1] = 0x80;
        g[15] = 1;
        g
    }

    fn cand(index: u8, gid: Gid, t: GidType, netdev: Option<&str>) -> GidCandidate {
        GidCandidate {
            index,
            gid,
            gid_type: t,
            netdev: netdev.map(str::to_string),
        }
    }

    #[test]
    fn routable_with_netdev_beats_link_local() {
        let c = [
            cand(0, link_local(), GidType::RoceV2, Some("eth0")),
            cand(1, link_local(), GidType::RoceV1, Some("eth0")),
            cand(2, v4([10, 0, 0, 5]), GidType::RoceV1, Some("eth0")),
            cand(3, v4([203, 0, 113, 5]), GidType::RoceV2, Some("eth0")),
        ];
        assert_eq!(select_gid(&c), Some(3));
    }

    #[test]
    fn class_order_is_spec_order() {
        let routable_no_netdev = cand(1, v4([198, 51, 100, 1]), GidType::RoceV2, None);
        let private_netdev = cand(0, v4([10, 1, 2, 3]), GidType::RoceV2, Some("eth1"));
        assert_eq!(
            select_gid(&[private_netdev.clone(), routable_no_netdev.clone()]),
            Some(1)
        );
        let overlay = v4([198, 51, 100, 9]);
        let overlay2 = cand(4, overlay, GidType::RoceV2, Some("docker0"));
        let private2 = cand(5, private_netdev.gid, GidType::RoceV2, Some("eth1"));
        assert_eq!(select_gid(&[overlay2.clone(), private2.clone()]), Some(5));
        let private_no_netdev = cand(2, v4([172, 16, 0, 1]), GidType::RoceV2, None);
        assert_eq!(select_gid(&[private_no_netdev.clone(), overlay2]), Some(4));
        let ll_no_netdev = cand(1, link_local(), GidType::RoceV2, None);
        assert_eq!(select_gid(&[ll_no_netdev, private_no_netdev]), Some(2));
    }

    #[test]
    fn ties_break_by_lower_index() {
        let c = [
            cand(7, v4([198, 51, 100, 2]), GidType::RoceV2, Some("eth0")),
            cand(3, v4([198, 51, 100, 3]), GidType::RoceV2, Some("eth1")),
        ];
        assert_eq!(select_gid(&c), Some(3));
    }

    #[test]
    fn only_roce_v1_falls_back_to_first_non_null() {
        let c = [
            cand(0, [0; 16], GidType::RoceV2, Some("eth0")),
            cand(1, v4([198, 51, 100, 2]), GidType::RoceV1, Some("eth0")),
            cand(2, link_local(), GidType::RoceV1, Some("eth0")),
        ];
        assert_eq!(select_gid(&c), Some(1));
    }

    #[test]
    fn all_null_selects_nothing() {
        assert_eq!(select_gid(&[cand(0, [0; 16], GidType::Ib, None)]), None);
        assert_eq!(select_gid(&[]), None);
    }

    #[test]
    fn ipv4_link_local_mapped_gid_beats_fe80() {
        // rxe on a 169.254.77.1/24 veth: GID[0] fe80::, GID[1] ::ffff:169.254.77.1.
        let c = [
            cand(0, link_local(), GidType::RoceV2, Some("veth0")),
            cand(1, v4([169, 254, 77, 1]), GidType::RoceV2, Some("veth0")),
        ];
        assert_eq!(select_gid(&c), Some(1));
    }

    #[test]
    fn ib_gids_are_never_demoted() {
        let mut ib = link_local();
        ib[15] = 2;
        let c = [
            cand(0, link_local(), GidType::RoceV2, Some("eth0")),
            cand(1, ib, GidType::Ib, None),
        ];
        assert_eq!(select_gid(&c), Some(1));
    }

    #[test]
    fn ib_link_local_gid_is_still_chosen_when_alone() {
        assert_eq!(
            select_gid(&[cand(0, link_local(), GidType::Ib, None)]),
            Some(0)
        );
    }
}
