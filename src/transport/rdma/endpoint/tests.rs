//! Transition tests for the endpoint machine, both roles.

use std::time::{Duration, Instant};

use super::*;
use crate::error::Error;
use crate::metadata::handshake::desc::HandShakeDesc;

const A: &str = "10.0.0.1:15000@mlx5_0";
const B: &str = "10.0.0.2:15000@mlx5_0";
const QA: [u32; 2] = [11, 22];
const QB: [u32; 2] = [33, 44];

fn cfg(local: &str, peer: &str) -> EndpointConfig {
    EndpointConfig::new(local, peer, format!("gid-{local}"), 7)
}

/// A's endpoint towards B.
fn ep_a() -> Endpoint {
    Endpoint::with_qps(cfg(A, B), 0, QA.to_vec())
}

/// B's endpoint towards A.
fn ep_b() -> Endpoint {
    Endpoint::with_qps(cfg(B, A), 1000, QB.to_vec())
}

/// A desc sent by `from` to `to`.
fn desc(from: &str, to: &str, qpns: &[u32], ready_ack: Option<bool>) -> HandShakeDesc {
    HandShakeDesc {
        local_gid: format!("gid-{from}"),
        local_lid: 9,
        local_nic_path: from.into(),
        payload: String::new(),
        peer_nic_path: to.into(),
        qp_num: qpns.to_vec(),
        ready_ack,
        reply_msg: String::new(),
        ..Default::default()
    }
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn send_handshake(ep: &mut Endpoint) -> (u64, HandShakeDesc) {
    match ep.start_active().expect("start_active") {
        StartActive::SendHandshake {
            generation,
            request,
        } => (generation, request),
        other => panic!("expected SendHandshake, got {other:?}"),
    }
}

/// Find the single `ConfigureQps` in `acts`.
fn configure_of(acts: &[Action]) -> (u64, Role, PeerQps) {
    match acts {
        [Action::ConfigureQps {
            generation,
            role,
            peer,
        }] => (*generation, *role, peer.clone()),
        other => panic!("expected one ConfigureQps, got {other:?}"),
    }
}

fn ack_of(acts: &[Action]) -> (u64, HandShakeDesc) {
    let found = acts.iter().find_map(|a| match a {
        Action::SendReadyAck {
            generation,
            request,
        } => Some((*generation, request.clone())),
        _ => None,
    });
    found.unwrap_or_else(|| panic!("expected SendReadyAck in {acts:?}"))
}

fn reply_of(acts: &[Action]) -> HandShakeDesc {
    let found = acts.iter().find_map(|a| match a {
        Action::Reply(d) => Some(d.clone()),
        _ => None,
    });
    found.unwrap_or_else(|| panic!("expected Reply in {acts:?}"))
}

fn is_endpoint_err(a: &Action) -> bool {
    matches!(a, Action::ActiveDone(Err(Error::Endpoint(_))))
}

/// Active A up to `ConnectedWaitReadyAck` with its ACK in flight.
fn active_waiting_for_ack(t0: Instant) -> (Endpoint, u64, HandShakeDesc) {
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let acts = a.on_handshake_reply(g, Ok(desc(B, A, &QB, Some(false))), t0);
    let (g2, role, _) = configure_of(&acts);
    let acts = a.on_qps_configured(g2, role, Ok(()), t0);
    let (g3, ack) = ack_of(&acts);
    (a, g3, ack)
}

/// Passive B configured against A's QPs, waiting for the ACK since `t0`.
fn passive_waiting_for_ack(t0: Instant) -> Endpoint {
    let mut b = ep_b();
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0);
    let (g, role, _) = configure_of(&acts);
    b.on_qps_configured(g, role, Ok(()), t0);
    assert_eq!(b.state(), EndpointState::ConnectedWaitReadyAck);
    b
}

// ---------------------------------------------------------------- active

#[test]
fn active_start_sends_request_advertising_ready_ack() {
    let mut a = ep_a();
    assert_eq!(a.gate(Instant::now()), Gate::Connect);
    let (g, req) = send_handshake(&mut a);
    assert_eq!(g, 0);
    assert_eq!(req.ready_ack, Some(false));
    assert!(req.supports_ready_ack() && !req.is_ready_ack());
    assert_eq!(req.qp_num, QA.to_vec());
    assert_eq!(req.local_nic_path, A);
    assert_eq!(req.peer_nic_path, B);
    assert_eq!(req.local_gid, format!("gid-{A}"));
    assert_eq!(req.local_lid, 7);
    assert!(req.reply_msg.is_empty());
    assert_eq!(a.state(), EndpointState::Connecting);
    assert_eq!(a.gate(Instant::now()), Gate::Wait);
}

#[test]
fn active_start_in_other_states() {
    let t0 = Instant::now();
    let mut a = ep_a();
    send_handshake(&mut a);
    assert_eq!(a.start_active().unwrap(), StartActive::WaitForHandshake);

    let mut init = Endpoint::new(cfg(A, B), 5);
    assert_eq!(init.state(), EndpointState::Initializing);
    assert_eq!(init.start_active().unwrap(), StartActive::WaitForHandshake);
    assert_eq!(init.gate(t0), Gate::Wait);

    let (mut w, _, _) = active_waiting_for_ack(t0);
    assert_eq!(w.start_active().unwrap(), StartActive::AlreadyConnected);
    let mut p = passive_waiting_for_ack(t0);
    assert_eq!(p.start_active().unwrap(), StartActive::AlreadyConnected);
    assert_eq!(p.state(), EndpointState::ConnectedWaitReadyAck);

    let mut c = connected_pair(t0).0;
    assert_eq!(c.start_active().unwrap(), StartActive::AlreadyConnected);

    c.retire("test");
    assert!(matches!(c.start_active(), Err(Error::Endpoint(_))));
    c.finish_destroy();
    assert!(matches!(c.start_active(), Err(Error::Endpoint(_))));
}

#[test]
fn active_reply_configures_qps_with_peer_qpns_gid_lid() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let acts = a.on_handshake_reply(g, Ok(desc(B, A, &QB, Some(false))), t0);
    let (g2, role, peer) = configure_of(&acts);
    assert_eq!((g2, role), (g, Role::Active));
    assert_eq!(
        peer,
        PeerQps {
            qpns: QB.to_vec(),
            gid: format!("gid-{B}"),
            lid: 9
        }
    );
    assert_eq!(a.state(), EndpointState::Connecting);
    assert_eq!(a.gate(t0), Gate::Wait);
}

#[test]
fn active_with_ready_ack_peer_sends_ack_with_same_qpns_and_no_timer() {
    let t0 = Instant::now();
    let (a, g, ack) = active_waiting_for_ack(t0);
    assert_eq!(g, a.generation());
    assert_eq!(ack.ready_ack, Some(true));
    assert_eq!(ack.qp_num, QA.to_vec());
    assert_eq!(ack.local_nic_path, A);
    assert_eq!(ack.peer_nic_path, B);
    assert_eq!(a.state(), EndpointState::ConnectedWaitReadyAck);
    assert!(a.connected() && !a.ready_to_send());
    assert!(a.has_connected());
    assert_eq!(a.peer_qpns(), Some(&QB[..]));
    // The active side's wait is synchronous: no timer, never times out.
    assert_eq!(a.ready_wait_start(), None);
    assert_eq!(a.gate(t0 + secs(3600)), Gate::Wait);
}

#[test]
fn active_becomes_connected_when_ack_delivered() {
    let t0 = Instant::now();
    let (mut a, g, _) = active_waiting_for_ack(t0);
    let acts = a.on_ready_ack_sent(g, Ok(HandShakeDesc::default()), t0);
    assert_eq!(acts, vec![Action::ActiveDone(Ok(()))]);
    assert_eq!(a.state(), EndpointState::Connected);
    assert_eq!(a.gate(t0), Gate::Post);
    // A duplicate completion changes nothing.
    assert!(a
        .on_ready_ack_sent(g, Ok(HandShakeDesc::default()), t0)
        .is_empty());
    assert_eq!(a.state(), EndpointState::Connected);
}

#[test]
fn active_with_legacy_peer_connects_without_ack() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let acts = a.on_handshake_reply(g, Ok(desc(B, A, &QB, None)), t0);
    let (g, role, _) = configure_of(&acts);
    let acts = a.on_qps_configured(g, role, Ok(()), t0);
    assert_eq!(acts, vec![Action::ActiveDone(Ok(()))]);
    assert_eq!(a.state(), EndpointState::Connected);
    assert!(!a.peer_supports_ready_ack());
    assert_eq!(a.gate(t0), Gate::Post);
}

#[test]
fn active_rejected_reply_rebuilds_qps() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let mut reply = desc(B, A, &QB, Some(false));
    reply.reply_msg = "Peer nic not found in that server".into();
    let acts = a.on_handshake_reply(g, Ok(reply), t0);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert_eq!(acts[0], Action::RebuildQps { generation: g + 1 });
    assert!(matches!(
        &acts[1],
        Action::ActiveDone(Err(Error::RejectHandshake(m))) if m.contains("Peer nic not found")
    ));
    assert_eq!(a.state(), EndpointState::Initializing);
    assert!(a.local_qpns().is_empty());
    assert_eq!(a.gate(t0), Gate::Wait);
    // Fresh QPNs come back: Unconnected again, a new attempt advertises them.
    assert!(a.on_qps_rebuilt(g + 1, Ok(vec![55, 66])).is_empty());
    assert_eq!(a.state(), EndpointState::Unconnected);
    assert_eq!(a.gate(t0), Gate::Connect);
    let (g2, req) = send_handshake(&mut a);
    assert_eq!(g2, g + 1);
    assert_eq!(req.qp_num, vec![55, 66]);
    assert!(!a.has_connected());
}

#[test]
fn active_reply_with_wrong_nic_paths_is_rejected() {
    let t0 = Instant::now();
    for reply in [
        desc("10.0.0.9:1@mlx5_0", A, &QB, Some(false)),
        desc(B, "10.0.0.9:1@mlx5_0", &QB, Some(false)),
    ] {
        let mut a = ep_a();
        let (g, _) = send_handshake(&mut a);
        let acts = a.on_handshake_reply(g, Ok(reply), t0);
        assert_eq!(acts[0], Action::RebuildQps { generation: g + 1 });
        assert!(matches!(
            &acts[1],
            Action::ActiveDone(Err(Error::RejectHandshake(m))) if m.contains("inconsistency")
        ));
    }
}

#[test]
fn active_reply_with_wrong_qp_count_is_rejected() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let acts = a.on_handshake_reply(g, Ok(desc(B, A, &[33], Some(false))), t0);
    assert_eq!(acts[0], Action::RebuildQps { generation: g + 1 });
    assert!(matches!(
        &acts[1],
        Action::ActiveDone(Err(Error::RejectHandshake(m))) if m == MSG_QP_COUNT
    ));
}

#[test]
fn active_rpc_failure_rebuilds_and_reports_error() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let acts = a.on_handshake_reply(g, Err(Error::Socket("connection refused".into())), t0);
    assert_eq!(
        acts,
        vec![
            Action::RebuildQps { generation: g + 1 },
            Action::ActiveDone(Err(Error::Socket("connection refused".into())))
        ]
    );
}

#[test]
fn active_qp_setup_failure_rebuilds_and_reports_error() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let acts = a.on_handshake_reply(g, Ok(desc(B, A, &QB, Some(false))), t0);
    let (g, role, _) = configure_of(&acts);
    let err = Error::Endpoint("ibv_modify_qp: init→rtr: EINVAL".into());
    let acts = a.on_qps_configured(g, role, Err(err.clone()), t0);
    assert_eq!(
        acts,
        vec![
            Action::RebuildQps { generation: g + 1 },
            Action::ActiveDone(Err(err))
        ]
    );
    assert!(!a.has_connected());
}

#[test]
fn active_ack_rejected_or_failed_retires() {
    let t0 = Instant::now();
    let rejected = HandShakeDesc::rejected(MSG_ACK_STALE);
    for result in [Ok(rejected), Err(Error::Socket("reset by peer".into()))] {
        let (mut a, g, _) = active_waiting_for_ack(t0);
        let acts = a.on_ready_ack_sent(g, result, t0);
        assert_eq!(acts[0], Action::Retire);
        assert!(matches!(acts[1], Action::ActiveDone(Err(_))), "{acts:?}");
        assert_eq!(a.state(), EndpointState::Destroying);
        assert_eq!(a.gate(t0), Gate::Fail);
    }
}

#[test]
fn loopback_connects_qps_to_themselves_without_rpc() {
    let t0 = Instant::now();
    let mut l = Endpoint::with_qps(cfg(A, A), 0, QA.to_vec());
    let (g, role, peer) = match l.start_active().unwrap() {
        StartActive::Configure {
            generation,
            role,
            peer,
        } => (generation, role, peer),
        other => panic!("{other:?}"),
    };
    assert_eq!(peer.qpns, QA.to_vec());
    assert_eq!(peer.gid, format!("gid-{A}"));
    let acts = l.on_qps_configured(g, role, Ok(()), t0);
    assert_eq!(acts, vec![Action::ActiveDone(Ok(()))]);
    assert_eq!(l.gate(t0), Gate::Post);
}

// ----------------------------------------------------------- review race

#[test]
fn review_race_reset_while_ack_in_flight_never_becomes_connected() {
    let t0 = Instant::now();
    let (mut a, g, _) = active_waiting_for_ack(t0);
    // A completion error on another thread resets the endpoint meanwhile.
    assert_eq!(a.reset("completion error"), vec![Action::Retire]);
    let acts = a.on_ready_ack_sent(g, Ok(HandShakeDesc::default()), t0);
    assert_eq!(acts.len(), 1);
    assert!(is_endpoint_err(&acts[0]), "{acts:?}");
    assert_eq!(a.state(), EndpointState::Destroying);
    assert!(!a.ready_to_send());
    assert_eq!(a.gate(t0), Gate::Fail);
}

#[test]
fn review_race_stale_ack_completion_cannot_promote_a_new_generation() {
    let t0 = Instant::now();
    let (mut old, old_gen, _) = active_waiting_for_ack(t0);
    old.reset("peer restarted");
    // The driver replaces the retired endpoint; the successor reconnects and
    // is itself waiting for its own ACK.
    let mut new = Endpoint::with_qps(cfg(A, B), GENERATION_STRIDE, vec![77, 88]);
    let (g, _) = send_handshake(&mut new);
    let acts = new.on_handshake_reply(g, Ok(desc(B, A, &[99, 111], Some(false))), t0);
    let (g, role, _) = configure_of(&acts);
    let (new_gen, _) = ack_of(&new.on_qps_configured(g, role, Ok(()), t0));
    assert_ne!(new_gen, old_gen);
    // The old ACK's completion arrives late, addressed to the old generation.
    let acts = new.on_ready_ack_sent(old_gen, Ok(HandShakeDesc::default()), t0);
    assert!(is_endpoint_err(&acts[0]), "{acts:?}");
    assert_eq!(new.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(new.gate(t0), Gate::Wait);
    // Its own completion still works.
    let acts = new.on_ready_ack_sent(new_gen, Ok(HandShakeDesc::default()), t0);
    assert_eq!(acts, vec![Action::ActiveDone(Ok(()))]);
    assert_eq!(new.gate(t0), Gate::Post);
}

#[test]
fn stale_handshake_reply_after_reset_and_new_attempt_is_discarded() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (g0, _) = send_handshake(&mut a);
    assert_eq!(
        a.reset("waited too long"),
        vec![Action::RebuildQps { generation: g0 + 1 }]
    );
    a.on_qps_rebuilt(g0 + 1, Ok(vec![55, 66]));
    let (g1, _) = send_handshake(&mut a);
    // The first attempt's reply (configured by the peer for old QPNs).
    let acts = a.on_handshake_reply(g0, Ok(desc(B, A, &QB, Some(false))), t0);
    assert_eq!(acts.len(), 1);
    assert!(is_endpoint_err(&acts[0]));
    assert_eq!(a.state(), EndpointState::Connecting);
    // The current attempt is unaffected.
    let acts = a.on_handshake_reply(g1, Ok(desc(B, A, &[35, 45], Some(false))), t0);
    let (g, _, peer) = configure_of(&acts);
    assert_eq!(g, g1);
    assert_eq!(peer.qpns, vec![35, 45]);
}

#[test]
fn stale_qp_configuration_is_answered_not_applied() {
    let t0 = Instant::now();
    // Passive configuration interrupted by a retire (eviction).
    let mut b = ep_b();
    let (g, role, _) = configure_of(&b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0));
    b.retire("evicted");
    let acts = b.on_qps_configured(g, role, Ok(()), t0);
    assert!(!reply_of(&acts).reply_msg.is_empty());
    assert_eq!(b.state(), EndpointState::Destroying);
    // Active configuration interrupted likewise.
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    let (g, role, _) = configure_of(&a.on_handshake_reply(g, Ok(desc(B, A, &QB, None)), t0));
    a.retire("evicted");
    let acts = a.on_qps_configured(g, role, Ok(()), t0);
    assert!(is_endpoint_err(&acts[0]));
    assert_eq!(a.state(), EndpointState::Destroying);
}

// --------------------------------------------------------------- passive

#[test]
fn passive_request_configures_then_waits_for_ack_with_timer() {
    let t0 = Instant::now();
    let mut b = ep_b();
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0);
    let (g, role, peer) = configure_of(&acts);
    assert_eq!(role, Role::Passive);
    assert_eq!(peer.qpns, QA.to_vec());
    assert_eq!(peer.gid, format!("gid-{A}"));
    assert_eq!(b.state(), EndpointState::Connecting);
    let t1 = t0 + secs(1);
    let acts = b.on_qps_configured(g, role, Ok(()), t1);
    let reply = reply_of(&acts);
    assert_eq!(acts.len(), 1);
    assert_eq!(reply.qp_num, QB.to_vec());
    assert_eq!(reply.ready_ack, Some(false));
    assert_eq!(reply.local_nic_path, B);
    assert_eq!(reply.peer_nic_path, A);
    assert!(reply.reply_msg.is_empty());
    assert_eq!(b.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(b.ready_wait_start(), Some(t1));
    assert!(b.connected() && !b.ready_to_send());
    assert_eq!(b.gate(t1), Gate::Wait);
}

#[test]
fn passive_ack_with_matching_qpns_marks_ready() {
    let t0 = Instant::now();
    let mut b = passive_waiting_for_ack(t0);
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(true)), t0);
    assert_eq!(acts, vec![Action::Reply(HandShakeDesc::default())]);
    assert!(reply_of(&acts).ready_ack.is_none());
    assert_eq!(b.state(), EndpointState::Connected);
    assert_eq!(b.ready_wait_start(), None);
    assert!(!b.ready_ack_timed_out(t0 + secs(3600)));
    assert_eq!(b.gate(t0 + secs(3600)), Gate::Post);
}

#[test]
fn passive_ack_for_unconnected_endpoint_is_rejected_without_change() {
    let t0 = Instant::now();
    let ack = desc(A, B, &QA, Some(true));
    let mut unconnected = ep_b();
    let mut connecting = ep_b();
    configure_of(&connecting.on_handshake_request(&desc(A, B, &QA, Some(false)), t0));
    let mut initializing = Endpoint::new(cfg(B, A), 3);
    let mut destroying = passive_waiting_for_ack(t0);
    destroying.reset("x");
    for ep in [
        &mut unconnected,
        &mut connecting,
        &mut initializing,
        &mut destroying,
    ] {
        let (state, gen) = (ep.state(), ep.generation());
        let acts = ep.on_handshake_request(&ack, t0);
        assert_eq!(reply_of(&acts).reply_msg, MSG_ACK_UNCONNECTED);
        assert_eq!(acts.len(), 1);
        assert_eq!((ep.state(), ep.generation()), (state, gen));
    }
}

#[test]
fn passive_stale_ack_with_other_qpns_does_not_reset() {
    let t0 = Instant::now();
    let mut b = passive_waiting_for_ack(t0);
    let gen = b.generation();
    let acts = b.on_handshake_request(&desc(A, B, &[12, 23], Some(true)), t0);
    assert_eq!(acts.len(), 1);
    assert_eq!(reply_of(&acts).reply_msg, MSG_ACK_STALE);
    assert_eq!(b.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(b.generation(), gen);
    assert_eq!(b.ready_wait_start(), Some(t0));
    assert!(b.ready_ack_timed_out(t0 + secs(11)));
}

#[test]
fn duplicate_and_late_acks_after_connected() {
    let t0 = Instant::now();
    let mut b = passive_waiting_for_ack(t0);
    b.on_handshake_request(&desc(A, B, &QA, Some(true)), t0);
    // Duplicate ACK: accepted, still Connected.
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(true)), t0);
    assert_eq!(acts, vec![Action::Reply(HandShakeDesc::default())]);
    assert_eq!(b.state(), EndpointState::Connected);
    // Late ACK from an older QP generation of the peer: rejected, no change.
    let acts = b.on_handshake_request(&desc(A, B, &[1, 2], Some(true)), t0);
    assert_eq!(reply_of(&acts).reply_msg, MSG_ACK_STALE);
    assert_eq!(b.state(), EndpointState::Connected);
}

#[test]
fn passive_with_legacy_peer_is_connected_at_once() {
    let t0 = Instant::now();
    let mut b = ep_b();
    let acts = b.on_handshake_request(&desc(A, B, &QA, None), t0);
    let (g, role, _) = configure_of(&acts);
    let acts = b.on_qps_configured(g, role, Ok(()), t0);
    // Modern replies always carry the key, even to legacy peers.
    assert_eq!(reply_of(&acts).ready_ack, Some(false));
    assert_eq!(b.state(), EndpointState::Connected);
    assert_eq!(b.ready_wait_start(), None);
    assert_eq!(b.gate(t0), Gate::Post);
}

#[test]
fn passive_repeated_request_with_same_qpns_replies_again() {
    let t0 = Instant::now();
    let mut b = passive_waiting_for_ack(t0);
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0);
    assert_eq!(acts, vec![Action::Reply(b.local_desc(false))]);
    assert_eq!(b.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(b.ready_wait_start(), Some(t0));
    // Same QPNs from a peer without ready-ACK: Connected.
    let acts = b.on_handshake_request(&desc(A, B, &QA, None), t0);
    assert_eq!(reply_of(&acts).qp_num, QB.to_vec());
    assert_eq!(b.state(), EndpointState::Connected);
}

#[test]
fn passive_request_with_new_qpns_retires_and_retries_on_fresh_endpoint() {
    let t0 = Instant::now();
    for mut b in [passive_waiting_for_ack(t0), {
        let mut b = passive_waiting_for_ack(t0);
        b.on_handshake_request(&desc(A, B, &QA, Some(true)), t0);
        b
    }] {
        let acts = b.on_handshake_request(&desc(A, B, &[5, 6], Some(false)), t0);
        assert_eq!(acts, vec![Action::Retire, Action::RetryOnFreshEndpoint]);
        assert_eq!(b.state(), EndpointState::Destroying);
        // Anything further on the retired endpoint goes to a fresh one.
        let acts = b.on_handshake_request(&desc(A, B, &[5, 6], Some(false)), t0);
        assert_eq!(acts, vec![Action::RetryOnFreshEndpoint]);
    }
    // The fresh endpoint accepts the request.
    let mut fresh = Endpoint::with_qps(cfg(B, A), GENERATION_STRIDE, vec![70, 71]);
    let acts = fresh.on_handshake_request(&desc(A, B, &[5, 6], Some(false)), t0);
    assert_eq!(configure_of(&acts).2.qpns, vec![5, 6]);
}

#[test]
fn passive_rejects_bad_requests_without_state_change() {
    let t0 = Instant::now();
    let cases = [
        (
            desc(A, "10.0.0.2:15000@mlx5_1", &QA, Some(false)),
            "inconsistency",
        ),
        (
            desc("10.0.0.3:1@mlx5_0", B, &QA, Some(false)),
            "inconsistency",
        ),
        (desc(A, B, &[1, 2, 3], Some(false)), MSG_QP_COUNT),
    ];
    for (req, want) in cases {
        let mut b = ep_b();
        let acts = b.on_handshake_request(&req, t0);
        assert_eq!(acts.len(), 1);
        let msg = reply_of(&acts).reply_msg;
        assert!(msg.contains(want), "{msg}");
        assert_eq!(b.state(), EndpointState::Unconnected);
        assert_eq!(b.generation(), 1000);
    }
}

#[test]
fn passive_request_while_initializing_or_configuring_is_rejected() {
    let t0 = Instant::now();
    let mut init = Endpoint::new(cfg(B, A), 0);
    let acts = init.on_handshake_request(&desc(A, B, &QA, Some(false)), t0);
    assert!(reply_of(&acts).reply_msg.contains("unavailable"));
    assert_eq!(init.state(), EndpointState::Initializing);

    let mut b = ep_b();
    configure_of(&b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0));
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0);
    assert!(reply_of(&acts).reply_msg.contains("in progress"));
    assert_eq!(b.state(), EndpointState::Connecting);
}

#[test]
fn passive_qp_setup_failure_rebuilds_and_rejects() {
    let t0 = Instant::now();
    let mut b = ep_b();
    let (g, role, _) = configure_of(&b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0));
    let acts = b.on_qps_configured(
        g,
        role,
        Err(Error::Endpoint("Failed to modify QP to RTR".into())),
        t0,
    );
    assert_eq!(acts[0], Action::RebuildQps { generation: g + 1 });
    assert!(reply_of(&acts)
        .reply_msg
        .contains("Failed to modify QP to RTR"));
    assert_eq!(b.state(), EndpointState::Initializing);
}

// ----------------------------------------------------------------- timer

#[test]
fn ready_ack_timeout_only_in_wait_state() {
    let t0 = Instant::now();
    let mut b = passive_waiting_for_ack(t0);
    assert!(!b.ready_ack_timed_out(t0 + secs(10)));
    assert!(b.handle_timeout(t0 + secs(10)).is_empty());
    assert_eq!(b.gate(t0 + secs(10)), Gate::Wait);
    let late = t0 + secs(10) + Duration::from_nanos(1);
    assert!(b.ready_ack_timed_out(late));
    assert_eq!(b.gate(late), Gate::Fail);
    assert_eq!(
        b.handle_timeout(late),
        vec![Action::Retire, Action::TimedOut]
    );
    assert_eq!(b.state(), EndpointState::Destroying);
    assert!(b.handle_timeout(late + secs(60)).is_empty());
    // A late ACK after the timeout finds an unconnected endpoint.
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(true)), late);
    assert_eq!(reply_of(&acts).reply_msg, MSG_ACK_UNCONNECTED);

    let (mut c, _) = connected_pair(t0);
    assert!(c.handle_timeout(t0 + secs(3600)).is_empty());
    assert_eq!(c.gate(t0 + secs(3600)), Gate::Post);
}

#[test]
fn ready_ack_timeout_is_configurable() {
    let t0 = Instant::now();
    let c = cfg(B, A).with_ready_ack_timeout(Duration::from_millis(100));
    let mut b = Endpoint::with_qps(c, 0, QB.to_vec());
    let (g, role, _) = configure_of(&b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0));
    b.on_qps_configured(g, role, Ok(()), t0);
    assert!(b.handle_timeout(t0 + Duration::from_millis(100)).is_empty());
    assert_eq!(
        b.handle_timeout(t0 + Duration::from_millis(101)),
        vec![Action::Retire, Action::TimedOut]
    );
}

// ----------------------------------------------------- reset / retirement

#[test]
fn reset_is_a_noop_unless_connecting_or_connected() {
    let mut u = ep_a();
    assert!(u.reset("x").is_empty());
    assert_eq!((u.state(), u.generation()), (EndpointState::Unconnected, 0));
    let mut i = Endpoint::new(cfg(A, B), 4);
    assert!(i.reset("x").is_empty());
    assert_eq!(i.state(), EndpointState::Initializing);
}

#[test]
fn never_connected_reset_rebuilds_qps() {
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    assert_eq!(a.reset("x"), vec![Action::RebuildQps { generation: g + 1 }]);
    assert_eq!(a.state(), EndpointState::Initializing);
    // A stale rebuild report is ignored.
    assert!(a.on_qps_rebuilt(g, Ok(vec![1, 2])).is_empty());
    assert_eq!(a.state(), EndpointState::Initializing);
    a.on_qps_rebuilt(g + 1, Ok(vec![55, 66]));
    assert_eq!(a.state(), EndpointState::Unconnected);
    assert_eq!(a.local_qpns(), &[55, 66]);
    assert_eq!(a.generation(), g + 1);
    // A duplicate report changes nothing.
    assert!(a.on_qps_rebuilt(g + 1, Ok(vec![9, 9])).is_empty());
    assert_eq!(a.local_qpns(), &[55, 66]);
}

#[test]
fn failed_rebuild_retires() {
    let mut a = ep_a();
    let (g, _) = send_handshake(&mut a);
    a.reset("x");
    let acts = a.on_qps_rebuilt(g + 1, Err(Error::Endpoint("ibv_create_qp: ENOMEM".into())));
    assert_eq!(acts, vec![Action::Retire]);
    assert_eq!(a.state(), EndpointState::Destroying);
}

#[test]
fn ever_connected_endpoint_is_one_shot() {
    let t0 = Instant::now();
    let (mut a, mut b) = connected_pair(t0);
    for ep in [&mut a, &mut b] {
        let g = ep.generation();
        assert_eq!(ep.reset("completion error"), vec![Action::Retire]);
        assert_eq!(ep.state(), EndpointState::Destroying);
        assert_eq!(ep.generation(), g + 1);
        assert_eq!(ep.gate(t0), Gate::Fail);
        assert!(ep.reset("again").is_empty());
        assert!(ep.retire("again").is_empty());
        ep.finish_destroy();
        assert_eq!(ep.state(), EndpointState::Destroyed);
        assert_eq!(ep.gate(t0), Gate::Fail);
        assert!(ep.on_qps_rebuilt(g + 1, Ok(vec![1, 2])).is_empty());
        assert_eq!(ep.state(), EndpointState::Destroyed);
    }
}

#[test]
fn retire_works_from_every_live_state() {
    let t0 = Instant::now();
    let mut eps = vec![Endpoint::new(cfg(A, B), 0), ep_a()];
    let mut c = ep_a();
    send_handshake(&mut c);
    eps.push(c);
    eps.push(active_waiting_for_ack(t0).0);
    eps.push(connected_pair(t0).0);
    for mut ep in eps {
        assert_eq!(ep.retire("shutdown"), vec![Action::Retire]);
        assert_eq!(ep.state(), EndpointState::Destroying);
    }
    let mut never = ep_a();
    never.finish_destroy();
    assert_eq!(never.state(), EndpointState::Unconnected);
}

// ---------------------------------------------------- simultaneous open

/// A (active) ↔ B (passive), fully connected.
fn connected_pair(t0: Instant) -> (Endpoint, Endpoint) {
    let mut a = ep_a();
    let mut b = ep_b();
    let (ga, req) = send_handshake(&mut a);
    let (g, role, _) = configure_of(&b.on_handshake_request(&req, t0));
    let reply = reply_of(&b.on_qps_configured(g, role, Ok(()), t0));
    let (g, role, _) = configure_of(&a.on_handshake_reply(ga, Ok(reply), t0));
    let (g, ack) = ack_of(&a.on_qps_configured(g, role, Ok(()), t0));
    let ack_reply = reply_of(&b.on_handshake_request(&ack, t0));
    assert_eq!(
        a.on_ready_ack_sent(g, Ok(ack_reply), t0),
        vec![Action::ActiveDone(Ok(()))]
    );
    assert_eq!(a.state(), EndpointState::Connected);
    assert_eq!(b.state(), EndpointState::Connected);
    (a, b)
}

#[test]
fn full_handshake_connects_both_sides() {
    let (a, b) = connected_pair(Instant::now());
    assert_eq!(a.peer_qpns(), Some(&QB[..]));
    assert_eq!(b.peer_qpns(), Some(&QA[..]));
}

/// Both sides start actively; both requests are handled passively before
/// either reply returns.
#[test]
fn simultaneous_open_requests_first() {
    let t0 = Instant::now();
    let (mut a, mut b) = (ep_a(), ep_b());
    let (ga, req_a) = send_handshake(&mut a);
    let (gb, req_b) = send_handshake(&mut b);
    // B handles A's request, A handles B's.
    let (g, r, _) = configure_of(&b.on_handshake_request(&req_a, t0));
    let reply_b = reply_of(&b.on_qps_configured(g, r, Ok(()), t0));
    let (g, r, _) = configure_of(&a.on_handshake_request(&req_b, t0));
    let reply_a = reply_of(&a.on_qps_configured(g, r, Ok(()), t0));
    assert_eq!(a.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(b.state(), EndpointState::ConnectedWaitReadyAck);
    // Replies return: each side finds itself connected with the same QPNs
    // and sends its ACK without reconfiguring.
    let (ack_ga, ack_a) = ack_of(&a.on_handshake_reply(ga, Ok(reply_b), t0));
    let (ack_gb, ack_b) = ack_of(&b.on_handshake_reply(gb, Ok(reply_a), t0));
    assert_eq!(ack_a.qp_num, QA.to_vec());
    assert_eq!(ack_b.qp_num, QB.to_vec());
    // ACKs cross.
    let ra = reply_of(&b.on_handshake_request(&ack_a, t0));
    let rb = reply_of(&a.on_handshake_request(&ack_b, t0));
    assert!(ra.reply_msg.is_empty() && rb.reply_msg.is_empty());
    assert_eq!(
        a.on_ready_ack_sent(ack_ga, Ok(rb), t0),
        vec![Action::ActiveDone(Ok(()))]
    );
    assert_eq!(
        b.on_ready_ack_sent(ack_gb, Ok(ra), t0),
        vec![Action::ActiveDone(Ok(()))]
    );
    assert_eq!(a.gate(t0), Gate::Post);
    assert_eq!(b.gate(t0), Gate::Post);
}

/// A's reply returns before A handles B's request.
#[test]
fn simultaneous_open_reply_first() {
    let t0 = Instant::now();
    let (mut a, mut b) = (ep_a(), ep_b());
    let (ga, req_a) = send_handshake(&mut a);
    let (gb, req_b) = send_handshake(&mut b);
    let (g, r, _) = configure_of(&b.on_handshake_request(&req_a, t0));
    let reply_b = reply_of(&b.on_qps_configured(g, r, Ok(()), t0));
    // A configures actively from the reply and sends its ACK.
    let (g, r, _) = configure_of(&a.on_handshake_reply(ga, Ok(reply_b), t0));
    let (ack_ga, ack_a) = ack_of(&a.on_qps_configured(g, r, Ok(()), t0));
    // B's request now reaches A, which is connected with the same QPNs.
    let acts = a.on_handshake_request(&req_b, t0);
    assert_eq!(acts, vec![Action::Reply(a.local_desc(false))]);
    let reply_a = reply_of(&acts);
    assert_eq!(a.state(), EndpointState::ConnectedWaitReadyAck);
    // B's reply: same QPNs → B sends its ACK.
    let (ack_gb, ack_b) = ack_of(&b.on_handshake_reply(gb, Ok(reply_a), t0));
    // ACKs are delivered in the "wrong" order: B's first.
    let rb = reply_of(&a.on_handshake_request(&ack_b, t0));
    assert_eq!(a.state(), EndpointState::Connected);
    let ra = reply_of(&b.on_handshake_request(&ack_a, t0));
    assert_eq!(b.state(), EndpointState::Connected);
    assert_eq!(
        a.on_ready_ack_sent(ack_ga, Ok(rb), t0),
        vec![Action::ActiveDone(Ok(()))]
    );
    assert_eq!(
        b.on_ready_ack_sent(ack_gb, Ok(ra), t0),
        vec![Action::ActiveDone(Ok(()))]
    );
}

#[test]
fn reply_during_passive_configuration_is_applied_afterwards() {
    let t0 = Instant::now();
    let (mut a, mut b) = (ep_a(), ep_b());
    let (ga, req_a) = send_handshake(&mut a);
    let (_, req_b) = send_handshake(&mut b);
    let (g, r, _) = configure_of(&b.on_handshake_request(&req_a, t0));
    let reply_b = reply_of(&b.on_qps_configured(g, r, Ok(()), t0));
    // A is configuring passively for B's request when its reply returns.
    let (g, r, _) = configure_of(&a.on_handshake_request(&req_b, t0));
    assert!(a.on_handshake_reply(ga, Ok(reply_b), t0).is_empty());
    let acts = a.on_qps_configured(g, r, Ok(()), t0);
    assert_eq!(acts.len(), 2, "{acts:?}");
    assert_eq!(reply_of(&acts).qp_num, QA.to_vec());
    assert_eq!(ack_of(&acts).1.qp_num, QA.to_vec());
}

#[test]
fn deferred_reply_is_answered_when_passive_configuration_fails() {
    let t0 = Instant::now();
    let (mut a, mut b) = (ep_a(), ep_b());
    let (ga, req_a) = send_handshake(&mut a);
    let (_, req_b) = send_handshake(&mut b);
    let (g, r, _) = configure_of(&b.on_handshake_request(&req_a, t0));
    let reply_b = reply_of(&b.on_qps_configured(g, r, Ok(()), t0));
    let (g, r, _) = configure_of(&a.on_handshake_request(&req_b, t0));
    assert!(a.on_handshake_reply(ga, Ok(reply_b), t0).is_empty());
    let acts = a.on_qps_configured(g, r, Err(Error::Endpoint("RTR".into())), t0);
    assert!(acts.contains(&Action::RebuildQps { generation: g + 1 }));
    assert!(!reply_of(&acts).reply_msg.is_empty());
    assert!(acts.iter().any(is_endpoint_err), "{acts:?}");
}

#[test]
fn simultaneous_open_with_different_qpns_retires() {
    let t0 = Instant::now();
    let (mut a, mut b) = (ep_a(), ep_b());
    let (ga, _) = send_handshake(&mut a);
    let (_, req_b) = send_handshake(&mut b);
    let (g, r, _) = configure_of(&a.on_handshake_request(&req_b, t0));
    a.on_qps_configured(g, r, Ok(()), t0);
    // The reply to A's request comes from a restarted B with other QPNs.
    let acts = a.on_handshake_reply(ga, Ok(desc(B, A, &[90, 91], Some(false))), t0);
    assert_eq!(acts[0], Action::Retire);
    assert!(is_endpoint_err(&acts[1]));
    assert_eq!(a.state(), EndpointState::Destroying);
}

#[test]
fn rpc_failure_after_passive_connect_reuses_the_endpoint() {
    let t0 = Instant::now();
    let (mut a, mut b) = (ep_a(), ep_b());
    let (ga, _) = send_handshake(&mut a);
    let (_, req_b) = send_handshake(&mut b);
    let (g, r, _) = configure_of(&a.on_handshake_request(&req_b, t0));
    a.on_qps_configured(g, r, Ok(()), t0);
    let acts = a.on_handshake_reply(ga, Err(Error::Socket("timeout".into())), t0);
    assert_eq!(acts, vec![Action::ActiveDone(Ok(()))]);
    // Still waiting for B's ACK: the passive path governs readiness.
    assert_eq!(a.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(a.gate(t0), Gate::Wait);
}

#[test]
fn simultaneous_open_with_legacy_reply_connects() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (ga, _) = send_handshake(&mut a);
    let (g, r, _) = configure_of(&a.on_handshake_request(&desc(B, A, &QB, Some(false)), t0));
    a.on_qps_configured(g, r, Ok(()), t0);
    let acts = a.on_handshake_reply(ga, Ok(desc(B, A, &QB, None)), t0);
    assert_eq!(acts, vec![Action::ActiveDone(Ok(()))]);
    assert_eq!(a.state(), EndpointState::Connected);
}

#[test]
fn wire_form_signals_capability_by_key_presence() {
    let t0 = Instant::now();
    let mut a = ep_a();
    let (_, req) = send_handshake(&mut a);
    let json = serde_json::to_string(&req).unwrap();
    assert!(json.contains("\"ready_ack\":false"), "{json}");
    let (_, _, ack) = active_waiting_for_ack(t0);
    let json = serde_json::to_string(&ack).unwrap();
    assert!(json.contains("\"ready_ack\":true"), "{json}");
    // The reply to an ACK is an empty desc without the key.
    let mut b = passive_waiting_for_ack(t0);
    let reply = reply_of(&b.on_handshake_request(&ack, t0));
    let json = serde_json::to_string(&reply).unwrap();
    assert!(!json.contains("ready_ack"), "{json}");
    assert_eq!(b.state(), EndpointState::Connected);
}

// ---------------------------------------------------------------- timers

#[test]
fn poll_timeout_is_the_first_instant_handle_timeout_acts() {
    let t0 = Instant::now();
    let mut b = passive_waiting_for_ack(t0);
    let deadline = b
        .poll_timeout()
        .expect("a passive ready-ACK wait has a deadline");
    assert_eq!(deadline, t0 + secs(10) + Duration::from_nanos(1));
    // Pure: asking again, or acting before the deadline, changes nothing.
    assert_eq!(b.poll_timeout(), Some(deadline));
    assert!(b
        .handle_timeout(deadline - Duration::from_nanos(1))
        .is_empty());
    assert_eq!(b.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(b.poll_timeout(), Some(deadline));
    assert_eq!(
        b.handle_timeout(deadline),
        vec![Action::Retire, Action::TimedOut]
    );
    assert_eq!(b.poll_timeout(), None);
}

#[test]
fn poll_timeout_follows_the_configured_ready_ack_timeout() {
    let t0 = Instant::now();
    let c = cfg(B, A).with_ready_ack_timeout(Duration::from_millis(250));
    let mut b = Endpoint::with_qps(c, 0, QB.to_vec());
    let (g, role, _) = configure_of(&b.on_handshake_request(&desc(A, B, &QA, Some(false)), t0));
    b.on_qps_configured(g, role, Ok(()), t0);
    assert_eq!(
        b.poll_timeout(),
        Some(t0 + Duration::from_millis(250) + Duration::from_nanos(1))
    );
}

#[test]
fn poll_timeout_is_none_without_a_running_timer() {
    let t0 = Instant::now();
    assert_eq!(ep_a().poll_timeout(), None);
    // The active side's wait is the ACK RPC itself: no timer.
    let (a, _, _) = active_waiting_for_ack(t0);
    assert_eq!(a.state(), EndpointState::ConnectedWaitReadyAck);
    assert_eq!(a.poll_timeout(), None);
    let (a, b) = connected_pair(t0);
    assert_eq!((a.poll_timeout(), b.poll_timeout()), (None, None));
    // A legacy peer (no ready ACK): connected at once, no timer.
    let mut b = ep_b();
    let (g, role, _) = configure_of(&b.on_handshake_request(&desc(A, B, &QA, None), t0));
    b.on_qps_configured(g, role, Ok(()), t0);
    assert_eq!(b.state(), EndpointState::Connected);
    assert_eq!(b.poll_timeout(), None);
    // The ACK arrives: the passive timer stops.
    let mut b = passive_waiting_for_ack(t0);
    let acts = b.on_handshake_request(&desc(A, B, &QA, Some(true)), t0 + secs(1));
    assert!(reply_of(&acts).reply_msg.is_empty());
    assert_eq!(b.state(), EndpointState::Connected);
    assert_eq!(b.poll_timeout(), None);
}
