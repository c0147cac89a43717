//! Whether a WR's packets reach a responder that accepts them, as a RoCE
//! responder (Linux rxe's `check_addr`/`check_type_state`) decides: the
//! destination GID must name a reachable device of this process's fabric,
//! the destination QP must exist there, be in RTR or RTS, and be connected
//! back to the sender (its destination QPN and GID are the sender's, its
//! source GID is the one the sender addressed). Anything else is a lost
//! packet, which the sender retransmits.

use std::sync::Arc;

use super::device::SoftDevice;
use super::fabric::Fabric;
use super::fault::take_drop;
use super::qp::QpShared;
use crate::transport::rdma::verbs::types::{gid_to_string, QpState, RtrAttrs};

/// The responder's device, or why the packet was lost.
pub(crate) fn responder(
    fabric: &Fabric,
    qp: &QpShared,
    rtr: &RtrAttrs,
) -> Result<Arc<SoftDevice>, String> {
    if !qp.device.is_up() {
        return Err("local port down".into());
    }
    if take_drop(&mut qp.device.faults.lock()) {
        return Err("dropped (injected)".into());
    }
    let Some(peer_dev) = fabric.device_by_gid(&rtr.dgid) else {
        return Err(fabric.id.unreachable_reason(&rtr.dgid));
    };
    if !peer_dev.is_up() {
        return Err("peer port down".into());
    }
    if peer_dev.id != qp.device.id && take_drop(&mut peer_dev.faults.lock()) {
        return Err("dropped at peer (injected)".into());
    }
    let Some(peer) = fabric
        .qp(rtr.dest_qp_num)
        .filter(|p| p.device.id == peer_dev.id)
    else {
        return Err(format!(
            "destination QP {} does not exist on {}",
            rtr.dest_qp_num, peer_dev.name
        ));
    };
    let core = peer.core.lock();
    if !matches!(core.state, QpState::Rtr | QpState::Rts) {
        return Err(format!(
            "destination QP {} is in state {}, not ready to receive",
            peer.qpn, core.state
        ));
    }
    let Some(back) = core.rtr.as_ref() else {
        return Err(format!("destination QP {} has no path", peer.qpn));
    };
    let sender_gid = qp.device.gids.get(rtr.sgid_index as usize).map(|c| c.gid);
    let responder_gid = peer_dev.gids.get(back.sgid_index as usize).map(|c| c.gid);
    if back.dest_qp_num != qp.qpn {
        return Err(format!(
            "destination QP {} is connected to QP {}, not to this QP {}",
            peer.qpn, back.dest_qp_num, qp.qpn
        ));
    }
    if sender_gid != Some(back.dgid) {
        return Err(format!(
            "destination QP {} is connected to GID {}, not to this QP's GID {}",
            peer.qpn,
            gid_to_string(&back.dgid),
            sender_gid.map_or_else(|| "?".into(), |g| gid_to_string(&g))
        ));
    }
    if responder_gid != Some(rtr.dgid) {
        return Err(format!(
            "destination QP {} is bound to another GID of {} than {}",
            peer.qpn,
            peer_dev.name,
            gid_to_string(&rtr.dgid)
        ));
    }
    Ok(peer_dev)
}
