//! Segment descriptors and RPC meta entries, in Mooncake's JSON layout.
//!
//! Fields are declared in byte-sorted order because JsonCpp (the C++ engine's
//! writer) emits object keys sorted; serde emits them in declaration order,
//! so the bytes we write match the captures in `shared/vectors/descriptors`.

use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;

/// `location -> [[preferred HCAs], [available HCAs]]` (spec §3.4).
pub type PriorityMatrix = BTreeMap<String, (Vec<String>, Vec<String>)>;

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct DeviceDesc {
    pub gid: String,
    #[serde(default)]
    pub lid: u16,
    pub name: String,
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq, Default)]
pub struct BufferDesc {
    pub addr: u64,
    pub length: u64,
    /// One lkey per device of the owner, in `devices` order (RDMA only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lkey: Option<Vec<u32>>,
    /// RDMA: the memory location (`cpu:0`); TCP: the segment name.
    pub name: String,
    /// One rkey per device of the owner, in `devices` order (RDMA only).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rkey: Option<Vec<u32>>,
}

impl BufferDesc {
    pub fn end(&self) -> u64 {
        self.addr.saturating_add(self.length)
    }

    /// Whether `[addr, addr+len)` lies inside this buffer (len > 0, no overflow).
    pub fn contains(&self, addr: u64, len: u64) -> bool {
        match addr.checked_add(len) {
            Some(end) => len > 0 && addr >= self.addr && end <= self.end(),
            None => false,
        }
    }
}

#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Default)]
pub struct SegmentDesc {
    #[serde(default)]
    pub buffers: Vec<BufferDesc>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub devices: Option<Vec<DeviceDesc>>,
    pub name: String,
    /// RDMA only; JSON `null` when empty (spec §3.3).
    #[serde(
        default,
        skip_serializing_if = "Option::is_none",
        deserialize_with = "deserialize_matrix"
    )]
    pub priority_matrix: Option<Option<PriorityMatrix>>,
    pub protocol: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rdma_server_name: Option<String>,
    #[serde(default)]
    pub tcp_data_port: u16,
    /// te-rs only: the TCP data port of an `rdma` segment whose owner also
    /// runs the tcp transport and lets peers move slices over it when no
    /// RDMA path is left (`MC_TE_RS_TCP_FALLBACK`). Written only then; the
    /// C++ engine reads the keys it knows and ignores this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tcp_fallback_port: Option<u16>,
    #[serde(default = "default_proto_version")]
    pub tcp_proto_version: u32,
    /// te-rs only: the owner's incarnation, 16 hex digits drawn at random
    /// per engine. A te-rs initiator compares it on every new data
    /// connection to notice that a new process took the segment's name and
    /// ports; the C++ engine reads the keys it knows and ignores this one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub te_rs_incarnation: Option<String>,
    #[serde(default)]
    pub timestamp: String,
}

fn default_proto_version() -> u32 {
    1
}

/// A malformed matrix only warns upstream; we keep the descriptor usable.
fn deserialize_matrix<'de, D>(d: D) -> Result<Option<Option<PriorityMatrix>>, D::Error>
where
    D: serde::Deserializer<'de>,
{
    let v = serde_json::Value::deserialize(d)?;
    if v.is_null() {
        return Ok(Some(None));
    }
    match serde_json::from_value::<PriorityMatrix>(v) {
        Ok(m) => Ok(Some(Some(m))),
        Err(e) => {
            log::warn!("ignoring malformed priority_matrix in segment descriptor: {e}");
            Ok(Some(None))
        }
    }
}

impl SegmentDesc {
    /// The buffer holding all of `[addr, addr+len)`, if one does.
    pub fn find_buffer(&self, addr: u64, len: u64) -> Option<(usize, &BufferDesc)> {
        self.buffers
            .iter()
            .enumerate()
            .find(|(_, b)| b.contains(addr, len))
    }

    /// Equality for cache refresh: ignores `timestamp` (spec §3.6).
    pub fn same_content(&self, other: &SegmentDesc) -> bool {
        let mut a = self.clone();
        a.timestamp.clear();
        let mut b = other.clone();
        b.timestamp.clear();
        a == b
    }
}

/// `mooncake/rpc_meta/<name>` value: where a segment's handshake daemon listens.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
pub struct RpcMeta {
    pub ip_or_host_name: String,
    pub rpc_port: u16,
}

/// A fresh incarnation id: 64 random bits from the kernel, as 16 hex digits.
pub fn new_incarnation() -> String {
    let mut v = 0u64;
    // SAFETY: getrandom writes at most 8 bytes into `v`, which has 8.
    let n = unsafe { libc::getrandom((&mut v as *mut u64).cast(), 8, 0) };
    if n != 8 {
        // No entropy syscall: time and pid still differ between processes.
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos() as u64)
            .unwrap_or(0);
        v = t ^ ((std::process::id() as u64) << 32);
    }
    format!("{v:016x}")
}

/// Local time as `YYYY-MM-DD HH:MM:SS.uuuuuu`, the descriptor timestamp format.
pub fn timestamp_now() -> String {
    let (tm, micros) = crate::logging::local_now();
    format!(
        "{:04}-{:02}-{:02} {:02}:{:02}:{:02}.{:06}",
        tm.tm_year + 1900,
        tm.tm_mon + 1,
        tm.tm_mday,
        tm.tm_hour,
        tm.tm_min,
        tm.tm_sec,
        micros
    )
}

impl SegmentDesc {
    /// Mooncake's decode-time checks (spec §3.3): a descriptor failing them is
    /// "corrupted" and `openSegment` returns -1.
    pub fn validate(&self) -> std::result::Result<(), String> {
        match self.protocol.as_str() {
            "tcp" => {}
            "rdma" => {
                let devices = self.devices.as_deref().unwrap_or(&[]);
                if let Some(d) = devices
                    .iter()
                    .find(|d| d.name.is_empty() || d.gid.is_empty())
                {
                    return Err(format!("rdma device with empty name or gid: {d:?}"));
                }
                for b in &self.buffers {
                    let rk = b.rkey.as_deref().unwrap_or(&[]);
                    let lk = b.lkey.as_deref().unwrap_or(&[]);
                    if !rk.is_empty() && (rk.len() != lk.len() || rk.len() != devices.len()) {
                        return Err(format!(
                            "buffer {:#x}: {} rkeys, {} lkeys, {} devices",
                            b.addr,
                            rk.len(),
                            lk.len(),
                            devices.len()
                        ));
                    }
                }
            }
            other => return Err(format!("unknown protocol '{other}'")),
        }
        if let Some(b) = self
            .buffers
            .iter()
            .find(|b| b.name.is_empty() || b.addr == 0 || b.length == 0)
        {
            return Err(format!(
                "buffer with empty name, zero addr or zero length: {b:?}"
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::metadata::json::{to_compact, to_fast_writer};

    macro_rules! vector {
        ($name:literal) => {
            include_str!(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/tests/vectors/descriptors/",
                $name
            ))
        };
    }

    /// (file, bytes, whether it is a FastWriter (handshake) capture)
    const SEGMENTS: [(&str, &str, bool); 6] = [
        (
            "tcp_segment_0_buffers.handshake.json",
            vector!("tcp_segment_0_buffers.handshake.json"),
            true,
        ),
        (
            "tcp_segment_1_buffer.handshake.json",
            vector!("tcp_segment_1_buffer.handshake.json"),
            true,
        ),
        (
            "tcp_segment_3_buffers.handshake.json",
            vector!("tcp_segment_3_buffers.handshake.json"),
            true,
        ),
        (
            "tcp_segment_0_buffers.http.json",
            vector!("tcp_segment_0_buffers.http.json"),
            false,
        ),
        (
            "tcp_segment_1_buffer.http.json",
            vector!("tcp_segment_1_buffer.http.json"),
            false,
        ),
        (
            "tcp_segment_3_buffers.http.json",
            vector!("tcp_segment_3_buffers.http.json"),
            false,
        ),
    ];

    #[test]
    fn segment_vectors_round_trip_byte_identical() {
        for (name, text, fast) in SEGMENTS {
            let desc: SegmentDesc = serde_json::from_str(text).unwrap();
            assert_eq!(desc.protocol, "tcp", "{name}");
            assert_eq!(desc.tcp_proto_version, 2, "{name}");
            assert!(desc.validate().is_ok(), "{name}");
            let out = if fast {
                to_fast_writer(&desc)
            } else {
                to_compact(&desc)
            };
            assert_eq!(out, text, "{name}");
        }
    }

    #[test]
    fn three_buffers_keep_registration_order() {
        let desc: SegmentDesc =
            serde_json::from_str(vector!("tcp_segment_3_buffers.handshake.json")).unwrap();
        let lens: Vec<u64> = desc.buffers.iter().map(|b| b.length).collect();
        assert_eq!(lens, [1048576, 65536, 4096]);
        assert!(desc.buffers.iter().all(|b| b.name == desc.name));
        assert!(desc.buffers[0].addr > desc.buffers[1].addr);
    }

    #[test]
    fn tcp_fallback_port_is_written_only_when_set_and_keeps_key_order() {
        let mut desc: SegmentDesc =
            serde_json::from_str(vector!("tcp_segment_1_buffer.http.json")).unwrap();
        assert_eq!(desc.tcp_fallback_port, None);
        assert!(!to_compact(&desc).contains("tcp_fallback_port"));
        desc.tcp_fallback_port = Some(15123);
        let text = to_compact(&desc);
        let at = |k: &str| text.find(&format!("\"{k}\"")).unwrap();
        assert!(at("tcp_data_port") < at("tcp_fallback_port"));
        assert!(at("tcp_fallback_port") < at("tcp_proto_version"));
        let back: SegmentDesc = serde_json::from_str(&text).unwrap();
        assert_eq!(back.tcp_fallback_port, Some(15123));
    }

    #[test]
    fn newer_upstream_keys_are_tolerated() {
        // A descriptor from an engine with Mooncake #3543 (tcp_data_host,
        // which it also fills from the RPC address te-rs connects to) and a
        // key no version knows yet: read, and the rest of it is intact.
        let base = vector!("tcp_segment_1_buffer.http.json");
        let newer = base.replacen(
            "\"tcp_data_port\"",
            "\"tcp_data_host\":\"10.0.0.5\",\"some_future_key\":{\"a\":[1]},\"tcp_data_port\"",
            1,
        );
        assert_ne!(newer, base);
        let old: SegmentDesc = serde_json::from_str(base).unwrap();
        let new: SegmentDesc = serde_json::from_str(&newer).unwrap();
        assert_eq!(new, old);
        assert!(new.validate().is_ok());
    }

    #[test]
    fn rpc_meta_vectors_round_trip_byte_identical() {
        for text in [
            vector!("rpc_meta.http.json"),
            vector!("rpc_meta_host_port_name.http.json"),
        ] {
            let meta: RpcMeta = serde_json::from_str(text).unwrap();
            assert_eq!(meta.ip_or_host_name, "127.0.0.1");
            assert_eq!(to_compact(&meta), text);
        }
    }
}
