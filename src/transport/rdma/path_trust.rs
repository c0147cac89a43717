//! Who may replace a live endpoint (issue: a forged Connection RPC with
//! other QP numbers for a live peer NIC path used to retire the endpoint).
//!
//! Between te-rs engines each NIC path pair shares a random secret, sent by
//! the active side in its Connection request (`te_rs_path_secret`) and kept
//! by both; each side also keeps the peer's incarnation
//! (`te_rs_incarnation`). A request that would replace a connected endpoint
//! is believed when it carries the pair's secret (the same peer process,
//! which retired its endpoint), or when it names another incarnation that
//! the peer's descriptor, read afresh, confirms (a new process). A peer
//! that never sent an incarnation (the C++ engine) is believed as upstream
//! believes it. The secret travels only on the handshake connection between
//! the two engines, so an off-path sender cannot know it.

use std::collections::HashMap;

use parking_lot::Mutex;

use crate::metadata::descriptor::new_incarnation;
use crate::metadata::handshake::HandShakeDesc;

/// What one side knows of a NIC path pair.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Trust {
    peer_incarnation: Option<String>,
    secret: Option<String>,
}

/// Whether to let a request replace a connected endpoint.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Believe,
    /// Believe only if the peer's descriptor publishes this incarnation.
    IfPublished(String),
    Reject(&'static str),
}

/// Per (local NIC path, peer NIC path), at most `cap` pairs.
pub struct PathTrust {
    pairs: Mutex<HashMap<(String, String), Trust>>,
    cap: usize,
}

impl Default for PathTrust {
    fn default() -> Self {
        PathTrust::with_cap(crate::config::env_u64(
            "MC_TE_RS_RDMA_TRUSTED_PATHS",
            65536,
            16,
            1 << 24,
        ) as usize)
    }
}

static FULL_LOG: crate::serving::RateLimited =
    crate::serving::RateLimited::new(module_path!(), std::time::Duration::from_secs(5));

impl PathTrust {
    pub fn with_cap(cap: usize) -> PathTrust {
        PathTrust {
            pairs: Mutex::new(HashMap::new()),
            cap,
        }
    }

    /// Make room for one more pair: a full table forgets one (its pair is
    /// then believed as a peer without incarnation would be, as upstream).
    fn make_room(&self, pairs: &mut HashMap<(String, String), Trust>, key: &(String, String)) {
        if pairs.len() < self.cap || pairs.contains_key(key) {
            return;
        }
        let victim = pairs.keys().next().cloned();
        if let Some(v) = victim {
            pairs.remove(&v);
            FULL_LOG.warn(format_args!(
                "RDMA: {} NIC path pairs known (MC_TE_RS_RDMA_TRUSTED_PATHS); forgetting {} -> {}",
                self.cap, v.0, v.1
            ));
        }
    }

    /// Stamp an outgoing Connection request: our incarnation and the pair's
    /// secret (a new one when there is none yet).
    pub fn stamp(&self, local: &str, peer: &str, ours: Option<&str>, req: &mut HandShakeDesc) {
        let Some(ours) = ours else {
            return;
        };
        req.te_rs_incarnation = Some(ours.to_string());
        let mut pairs = self.pairs.lock();
        let key = (local.to_string(), peer.to_string());
        self.make_room(&mut pairs, &key);
        let t = pairs.entry(key).or_insert(Trust {
            peer_incarnation: None,
            secret: None,
        });
        let secret = t.secret.get_or_insert_with(new_incarnation);
        req.te_rs_path_secret = Some(secret.clone());
    }

    /// Our request was accepted: remember the peer's incarnation from its
    /// reply (the secret we sent is the pair's now).
    pub fn accepted_reply(&self, local: &str, peer: &str, reply: &HandShakeDesc) {
        let mut pairs = self.pairs.lock();
        if let Some(t) = pairs.get_mut(&(local.to_string(), peer.to_string())) {
            t.peer_incarnation = reply.te_rs_incarnation.clone();
        }
    }

    /// We accepted the peer's request: its incarnation and secret are the
    /// pair's now.
    pub fn accepted_request(&self, local: &str, peer: &str, req: &HandShakeDesc) {
        let mut pairs = self.pairs.lock();
        let key = (local.to_string(), peer.to_string());
        self.make_room(&mut pairs, &key);
        pairs.insert(
            key,
            Trust {
                peer_incarnation: req.te_rs_incarnation.clone(),
                secret: req.te_rs_path_secret.clone(),
            },
        );
    }

    /// May `req` replace the connected endpoint of this pair?
    pub fn judge(&self, local: &str, peer: &str, req: &HandShakeDesc) -> Verdict {
        let pairs = self.pairs.lock();
        let Some(t) = pairs.get(&(local.to_string(), peer.to_string())) else {
            return Verdict::Believe;
        };
        let Some(known) = &t.peer_incarnation else {
            return Verdict::Believe; // a C++ peer: as upstream
        };
        if t.secret.is_some() && req.te_rs_path_secret == t.secret {
            return Verdict::Believe;
        }
        match &req.te_rs_incarnation {
            Some(new) if new != known => Verdict::IfPublished(new.clone()),
            Some(_) => Verdict::Reject("the request does not carry this path's secret"),
            None => {
                Verdict::Reject("the peer is a te-rs engine and the request names no incarnation")
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(inc: Option<&str>, secret: Option<&str>) -> HandShakeDesc {
        HandShakeDesc {
            te_rs_incarnation: inc.map(str::to_string),
            te_rs_path_secret: secret.map(str::to_string),
            ..Default::default()
        }
    }

    #[test]
    fn a_full_table_forgets_a_pair_instead_of_growing() {
        let t = PathTrust::with_cap(16);
        for i in 0..100 {
            t.accepted_request("a@x", &format!("p{i}@y"), &req(Some("i"), Some("s")));
        }
        assert_eq!(t.pairs.lock().len(), 16);
        // The newest pair is kept.
        assert!(matches!(
            t.judge("a@x", "p99@y", &req(None, None)),
            Verdict::Reject(_)
        ));
    }

    #[test]
    fn unknown_and_cpp_peers_are_believed() {
        let t = PathTrust::default();
        assert_eq!(t.judge("a@x", "b@y", &req(None, None)), Verdict::Believe);
        t.accepted_request("a@x", "b@y", &req(None, None));
        assert_eq!(t.judge("a@x", "b@y", &req(None, None)), Verdict::Believe);
    }

    #[test]
    fn a_te_rs_peer_proves_itself_by_secret_or_new_incarnation() {
        let t = PathTrust::default();
        t.accepted_request("a@x", "b@y", &req(Some("i1"), Some("s1")));
        assert_eq!(
            t.judge("a@x", "b@y", &req(Some("i1"), Some("s1"))),
            Verdict::Believe
        );
        assert!(matches!(
            t.judge("a@x", "b@y", &req(Some("i1"), Some("s2"))),
            Verdict::Reject(_)
        ));
        assert!(matches!(
            t.judge("a@x", "b@y", &req(None, None)),
            Verdict::Reject(_)
        ));
        assert_eq!(
            t.judge("a@x", "b@y", &req(Some("i2"), None)),
            Verdict::IfPublished("i2".into())
        );
    }

    #[test]
    fn the_active_side_keeps_its_secret_and_learns_the_peer() {
        let t = PathTrust::default();
        let mut r = HandShakeDesc::default();
        t.stamp("a@x", "b@y", Some("me"), &mut r);
        let s = r.te_rs_path_secret.clone().unwrap();
        let mut again = HandShakeDesc::default();
        t.stamp("a@x", "b@y", Some("me"), &mut again);
        assert_eq!(again.te_rs_path_secret.as_deref(), Some(s.as_str()));
        t.accepted_reply("a@x", "b@y", &req(Some("peer"), None));
        assert_eq!(
            t.judge("a@x", "b@y", &req(Some("peer"), Some(&s))),
            Verdict::Believe
        );
        assert!(matches!(
            t.judge("a@x", "b@y", &req(Some("peer"), None)),
            Verdict::Reject(_)
        ));
        // A C++ engine (no incarnation) never gets fields stamped.
        let mut cpp = HandShakeDesc::default();
        t.stamp("a@x", "c@z", None, &mut cpp);
        assert_eq!(cpp, HandShakeDesc::default());
    }
}
