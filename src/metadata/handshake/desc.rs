//! `HandShakeDesc`, the JSON body of Connection (type 0) RPCs (spec §4.4).

use serde::{Deserialize, Serialize};

/// Wire form. `ready_ack` is present only when the sender supports ready-ACK
/// (value `false`) or is sending one (`true`): capability is key presence.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct HandShakeDesc {
    #[serde(default)]
    pub local_gid: String,
    #[serde(default, deserialize_with = "lenient_u16")]
    pub local_lid: u16,
    #[serde(default)]
    pub local_nic_path: String,
    #[serde(default)]
    pub payload: String,
    #[serde(default)]
    pub peer_nic_path: String,
    #[serde(default)]
    pub qp_num: Vec<u32>,
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "lenient_ready_ack"
    )]
    pub ready_ack: Option<bool>,
    #[serde(default)]
    pub reply_msg: String,
    /// te-rs only: the sender's engine incarnation (`path_trust.rs`); the
    /// C++ engine reads the keys it knows and ignores this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub te_rs_incarnation: Option<String>,
    /// te-rs only: the NIC path pair's secret, sent by the active side.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub te_rs_path_secret: Option<String>,
}

/// `peer_nic_path` of an `rdma_twosided` control-channel handshake.
pub const CTRL_NIC_PATH: &str = "__ctrl__";

impl HandShakeDesc {
    /// An `rdma_twosided` peer (Mooncake #3440) asking for its control
    /// (notify) channel, which te-rs does not offer: refused, the peer sends
    /// notifications over the handshake RPC. Its extra keys
    /// (`ctrl_channel`, `notify_qp_num`, `notify_rq_depth`) are ignored.
    pub fn is_ctrl_channel(&self) -> bool {
        self.peer_nic_path == CTRL_NIC_PATH
    }

    /// The peer speaks ready-ACK (the key was present).
    pub fn supports_ready_ack(&self) -> bool {
        self.ready_ack.is_some()
    }

    /// This message is a ready ACK.
    pub fn is_ready_ack(&self) -> bool {
        self.ready_ack == Some(true)
    }

    /// A rejection reply carries a non-empty `reply_msg`.
    pub fn rejected(reason: impl Into<String>) -> Self {
        HandShakeDesc {
            reply_msg: reason.into(),
            ..Default::default()
        }
    }
}

/// Upstream decodes a non-uint `local_lid` as 0.
fn lenient_u16<'de, D: serde::Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(v.as_u64().and_then(|n| u16::try_from(n).ok()).unwrap_or(0))
}

/// Key present ⇒ `Some`; a non-bool value reads as `false` (spec §4.4).
fn lenient_ready_ack<'de, D: serde::Deserializer<'de>>(d: D) -> Result<Option<bool>, D::Error> {
    let v = serde_json::Value::deserialize(d)?;
    Ok(Some(v.as_bool().unwrap_or(false)))
}

/// Body of Notify (type 2) requests and replies (spec §9).
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct NotifyDesc {
    #[serde(default)]
    pub name: String,
    #[serde(default)]
    pub notify_msg: String,
}

impl NotifyDesc {
    /// What a receiver answers to every notification.
    pub fn success() -> Self {
        NotifyDesc {
            name: String::new(),
            notify_msg: "success".into(),
        }
    }
}

/// Body of a Probe (type 3) reply.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct ProbeReply {
    #[serde(default)]
    pub status: String,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_rdma_twosided_control_handshake_is_read_and_recognised() {
        // Mooncake #3440: CtrlChannel::fillLocalDesc, FastWriter key order.
        let text = r#"{"ctrl_channel":true,"local_gid":"fe80::1","local_lid":0,"local_nic_path":"10.0.0.5:15001@mlx5_0","notify_qp_num":1234,"notify_rq_depth":64,"peer_nic_path":"__ctrl__","qp_num":[],"reply_msg":""}"#;
        let d: HandShakeDesc = serde_json::from_str(text).unwrap();
        assert!(d.is_ctrl_channel());
        assert_eq!(d.local_nic_path, "10.0.0.5:15001@mlx5_0");
        // A classic data-path handshake from the same peer is not.
        let data = text.replace("__ctrl__", "10.0.0.6:15002@mlx5_1");
        assert!(!serde_json::from_str::<HandShakeDesc>(&data)
            .unwrap()
            .is_ctrl_channel());
        // te-rs's own messages carry none of the new keys.
        let ours = serde_json::to_string(&HandShakeDesc::rejected("x")).unwrap();
        assert!(!ours.contains("notify_qp_num") && !ours.contains("ctrl_channel"));
    }
}
