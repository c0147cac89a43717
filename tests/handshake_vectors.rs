//! Every captured handshake frame (tests/vectors/handshake, from the C++
//! engine) decodes as its sidecar says, and our encoder reproduces it byte
//! for byte, both from the raw JSON text and from our typed structs.

use std::fs;
use std::path::{Path, PathBuf};

use serde_json::Value;
use transfer_engine::metadata::descriptor::SegmentDesc;
use transfer_engine::metadata::handshake::desc::{NotifyDesc, ProbeReply};
use transfer_engine::metadata::handshake::frame::{self, Framing, MsgType};
use transfer_engine::metadata::handshake::HandShakeDesc;
use transfer_engine::metadata::json::to_fast_writer;

fn vector_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/handshake")
}

fn unhex(text: &str) -> Vec<u8> {
    let digits: Vec<u8> = text.bytes().filter(|b| !b.is_ascii_whitespace()).collect();
    assert!(digits.len() % 2 == 0, "odd number of hex digits");
    digits
        .chunks(2)
        .map(|p| u8::from_str_radix(std::str::from_utf8(p).unwrap(), 16).unwrap())
        .collect()
}

struct Vector {
    name: String,
    bytes: Vec<u8>,
    meta: Value,
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for entry in fs::read_dir(vector_dir()).unwrap() {
        let path = entry.unwrap().path();
        if path.extension().and_then(|e| e.to_str()) != Some("hex") {
            continue;
        }
        let name = path.file_stem().unwrap().to_string_lossy().into_owned();
        let bytes = unhex(&fs::read_to_string(&path).unwrap());
        let meta: Value =
            serde_json::from_str(&fs::read_to_string(path.with_extension("json")).unwrap())
                .unwrap();
        out.push(Vector { name, bytes, meta });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(out.len(), 14, "expected the 14 captured handshake frames");
    out
}

fn expected_framing(meta: &Value) -> Framing {
    match meta["framing"].as_str().unwrap() {
        "legacy" => {
            assert!(meta["type"].is_null());
            Framing::Legacy
        }
        "typed" => {
            let t = meta["type"].as_u64().unwrap() as u8;
            Framing::Typed(MsgType::from_u8(t).unwrap())
        }
        other => panic!("unknown framing {other}"),
    }
}

#[test]
fn decode_matches_sidecar_and_raw_reencode_is_identical() {
    for v in vectors() {
        let meta = &v.meta;
        assert_eq!(
            v.bytes.len() as u64,
            meta["total_bytes"].as_u64().unwrap(),
            "{}",
            v.name
        );
        let length = u64::from_ne_bytes(v.bytes[..8].try_into().unwrap());
        assert_eq!(length, meta["length"].as_u64().unwrap(), "{}", v.name);

        let f = frame::decode(&v.bytes, frame::max_frame_len())
            .unwrap_or_else(|e| panic!("{}: {e}", v.name));
        assert_eq!(f.framing, expected_framing(meta), "{}", v.name);
        assert_eq!(f.text(), meta["json_text"].as_str().unwrap(), "{}", v.name);

        let again = frame::encode(f.framing, f.text());
        assert_eq!(again, v.bytes, "{}: raw re-encode differs", v.name);

        // The streaming reader agrees with the whole-buffer decoder.
        let mut r = &v.bytes[..];
        assert_eq!(
            frame::read_frame(&mut r, frame::max_frame_len()).unwrap(),
            f
        );
    }
}

/// Re-serialize the decoded body through our typed wire structs.
fn typed_json(name: &str, framing: Framing, text: &str) -> String {
    match framing.msg_type() {
        MsgType::Connection => {
            to_fast_writer(&serde_json::from_str::<HandShakeDesc>(text).unwrap())
        }
        MsgType::Metadata => to_fast_writer(&serde_json::from_str::<SegmentDesc>(text).unwrap()),
        MsgType::Notify => to_fast_writer(&serde_json::from_str::<NotifyDesc>(text).unwrap()),
        MsgType::Probe if name.ends_with("request") => {
            to_fast_writer(&serde_json::from_str::<Value>(text).unwrap())
        }
        MsgType::Probe => to_fast_writer(&serde_json::from_str::<ProbeReply>(text).unwrap()),
    }
}

#[test]
fn typed_reencode_is_byte_identical() {
    for v in vectors() {
        let f = frame::decode(&v.bytes, frame::max_frame_len()).unwrap();
        let json = typed_json(&v.name, f.framing, f.text());
        let bytes = frame::encode(f.framing, &json);
        assert_eq!(
            String::from_utf8_lossy(&bytes[8..]),
            String::from_utf8_lossy(&v.bytes[8..]),
            "{}",
            v.name
        );
        assert_eq!(bytes, v.bytes, "{}: typed re-encode differs", v.name);
    }
}

#[test]
fn special_chars_notify_decodes_to_the_sent_text() {
    let v = vectors()
        .into_iter()
        .find(|v| v.name == "notify_request_special_chars")
        .unwrap();
    let f = frame::decode(&v.bytes, frame::max_frame_len()).unwrap();
    let n: NotifyDesc = serde_json::from_str(f.text()).unwrap();
    assert_eq!(n.name, "name with \"quotes\"");
    assert!(n
        .notify_msg
        .starts_with("quote\" backslash\\ slash/ nl\n tab\t {\"k\":[1,2]} utf8-é€"));
    // Built from scratch, the request is the captured frame.
    let bytes = frame::encode(Framing::Typed(MsgType::Notify), &to_fast_writer(&n));
    assert_eq!(bytes, v.bytes);
}

#[test]
fn default_replies_match_captures() {
    let all = vectors();
    let get = |n: &str| all.iter().find(|v| v.name == n).unwrap().bytes.clone();
    assert_eq!(
        frame::encode(
            Framing::Typed(MsgType::Connection),
            &to_fast_writer(&HandShakeDesc::default())
        ),
        get("connection_reply")
    );
    assert_eq!(
        frame::encode(Framing::Legacy, &to_fast_writer(&HandShakeDesc::default())),
        get("connection_legacy_reply")
    );
    assert_eq!(
        frame::encode(
            Framing::Typed(MsgType::Notify),
            &to_fast_writer(&NotifyDesc::success())
        ),
        get("notify_reply")
    );
    assert_eq!(
        frame::encode(Framing::Typed(MsgType::Probe), "{}\n"),
        get("probe_request")
    );
}
