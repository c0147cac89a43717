//! JSON text as the C++ engine writes it (JsonCpp): compact, keys sorted
//! (our serde types declare fields in sorted order; `serde_json::Value` maps
//! are BTreeMaps). PLACEHOLDER escaping: replaced by the handshake work.

use serde::Serialize;

/// JsonCpp `FastWriter`: compact with a trailing newline (handshake frames,
/// etcd and Redis values).
pub fn to_fast_writer<T: Serialize>(value: &T) -> String {
    let mut s = to_compact(value);
    s.push('\n');
    s
}

/// JsonCpp `StreamWriterBuilder` with empty indentation: compact, no newline
/// (HTTP metadata bodies).
pub fn to_compact<T: Serialize>(value: &T) -> String {
    serde_json::to_string(value).unwrap_or_else(|_| "null".to_string())
}
