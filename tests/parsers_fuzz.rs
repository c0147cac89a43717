//! Every parser that reads bytes from a peer or a store survives arbitrary
//! input: random bytes and mutations of valid documents never panic, and
//! whatever is accepted is internally valid.

use proptest::prelude::*;
use proptest::strategy::ValueTree;
use transfer_engine::metadata::descriptor::{RpcMeta, SegmentDesc};
use transfer_engine::metadata::handshake::HandShakeDesc;
use transfer_engine::topology::parse_matrix;

struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n.max(1) as u64) as usize
    }
}

const SEEDS: &[&str] = &[
    r#"{"buffers":[{"addr":140001906171904,"length":1048576,"name":"127.0.0.1:16741"}],"name":"127.0.0.1:16741","protocol":"tcp","tcp_data_port":16093,"tcp_proto_version":2,"timestamp":"2026-11-24 07:09:32.203302"}"#,
    r#"{"buffers":[{"addr":4096,"length":65536,"lkey":[1,2],"name":"cpu:0","rkey":[3,4]}],"devices":[{"gid":"00:00:00:00:00:00:00:00:00:00:ff:ff:7f:00:00:01","lid":0,"name":"soft0"},{"gid":"00:00:00:00:00:00:00:00:00:00:ff:ff:7f:00:00:02","lid":0,"name":"soft1"}],"name":"n","priority_matrix":{"cpu:0":[["soft0"],["soft1"]]},"protocol":"rdma","tcp_data_port":0,"tcp_proto_version":1,"timestamp":""}"#,
    r#"{"local_gid":"","local_lid":0,"local_nic_path":"a:1@soft0","payload":"","peer_nic_path":"b:2@soft0","qp_num":[11,22],"ready_ack":false,"reply_msg":""}"#,
    r#"{"ip_or_host_name":"127.0.0.1","rpc_port":15024}"#,
    r#"{"cpu:0": [["a","b"], ["c"]], "*": [[], ["d"]]}"#,
];

fn mutate(rng: &mut Rng, s: &[u8]) -> Vec<u8> {
    let mut v = s.to_vec();
    for _ in 0..1 + rng.below(6) {
        match rng.below(5) {
            0 if !v.is_empty() => {
                let i = rng.below(v.len());
                v[i] = rng.next() as u8;
            }
            1 if !v.is_empty() => {
                let i = rng.below(v.len());
                v.truncate(i);
            }
            2 => {
                let i = rng.below(v.len() + 1);
                let tok: &[u8] = [
                    &b"null"[..],
                    b"-1",
                    b"18446744073709551616",
                    b"\"\"",
                    b"[]",
                    b"{}",
                    b"1e309",
                    b"\"\\ud800\"",
                ][rng.below(8)];
                v.splice(i..i, tok.iter().copied());
            }
            3 if v.len() > 2 => {
                let a = rng.below(v.len());
                let b = rng.below(v.len());
                v.swap(a, b);
            }
            _ => v.push(rng.next() as u8),
        }
    }
    v
}

/// How far one input got: which parsers accepted it.
#[derive(Default)]
struct Reach {
    descriptor: usize,
    valid_descriptor: usize,
    handshake: usize,
    matrix: usize,
}

fn exercise(bytes: &[u8], reach: &mut Reach) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(d) = serde_json::from_str::<SegmentDesc>(text) {
        reach.descriptor += 1;
        if d.validate().is_ok() {
            reach.valid_descriptor += 1;
            // Accepted descriptors never hold a zero-length or zero-address buffer.
            assert!(d.buffers.iter().all(|b| b.length > 0 && b.addr != 0));
            let _ = d.find_buffer(u64::MAX - 1, 2);
        }
    }
    if serde_json::from_str::<HandShakeDesc>(text).is_ok() {
        reach.handshake += 1;
    }
    let _ = serde_json::from_str::<RpcMeta>(text);
    if let Ok(m) = parse_matrix(text) {
        reach.matrix += 1;
        // What is accepted survives a round trip unchanged.
        let again = parse_matrix(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }
}

/// Feed `cases` documents drawn from `strategy` (fixed seed) to the parsers.
fn run<S: Strategy>(strategy: S, cases: usize, doc: impl Fn(S::Value) -> String) -> Reach {
    let mut runner = proptest::test_runner::TestRunner::deterministic();
    let mut reach = Reach::default();
    for _ in 0..cases {
        let text = doc(strategy.new_tree(&mut runner).unwrap().current());
        let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            exercise(text.as_bytes(), &mut reach)
        }));
        assert!(r.is_ok(), "a parser panicked on: {text}");
    }
    reach
}

/// Field names the parsers know, so generated documents reach past the
/// first key lookup into every field's validation.
const KEYS: &[&str] = &[
    "buffers",
    "devices",
    "name",
    "priority_matrix",
    "protocol",
    "rdma_server_name",
    "tcp_data_port",
    "tcp_fallback_port",
    "tcp_proto_version",
    "timestamp",
    "addr",
    "length",
    "lkey",
    "rkey",
    "gid",
    "lid",
    "local_gid",
    "local_lid",
    "local_nic_path",
    "payload",
    "peer_nic_path",
    "qp_num",
    "ready_ack",
    "reply_msg",
    "ip_or_host_name",
    "rpc_port",
    "cpu:0",
    "*",
];

/// Any JSON value, biased towards the shapes and edge values the parsers meet:
/// numbers at the type limits, known keys, nested arrays of names.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    use serde_json::Value;
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        prop_oneof![
            Just(0u64),
            Just(1),
            Just(u64::from(u16::MAX)),
            Just(u64::from(u16::MAX) + 1),
            Just(u64::from(u32::MAX)),
            Just(u64::MAX),
            any::<u64>()
        ]
        .prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        "[a-z0-9:@./_ -]{0,12}".prop_map(Value::String),
        any::<String>().prop_map(Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(KEYS), inner), 0..8).prop_map(|kv| {
                serde_json::Value::Object(kv.into_iter().map(|(k, v)| (k.to_string(), v)).collect())
            }),
        ]
    })
}

#[test]
fn structured_documents_never_panic() {
    let reach = run(json_value(), 6_000, |v| v.to_string());
    // The generator must reach the parsers, not bounce off the first byte.
    assert!(
        reach.handshake > 0 && reach.matrix > 100,
        "matrix {}",
        reach.matrix
    );
}

/// Documents shaped like a descriptor and a handshake, every field drawn
/// from the generator, get past serde into `validate()`.
#[test]
fn descriptor_and_handshake_shaped_documents_never_panic() {
    let buffer = (
        prop_oneof![Just(0u64), Just(4096), any::<u64>()],
        prop_oneof![Just(0u64), Just(65536), any::<u64>()],
        prop::collection::vec(any::<u32>(), 0..3),
        prop::collection::vec(any::<u32>(), 0..3),
        "[a-z0-9:]{0,6}",
    );
    let desc = (
        json_value(),
        prop::collection::vec(buffer, 0..4),
        prop::collection::vec("[a-z0-9]{0,5}", 0..3),
        prop::sample::select(&["tcp", "rdma", "nvlink", ""][..]),
        any::<u16>(),
    );
    let reach = run(desc, 6_000, |(name, buffers, devices, protocol, port)| {
        serde_json::json!({
            "name": if name.is_object() { serde_json::json!("n") } else { name },
            "protocol": protocol,
            "tcp_data_port": port,
            "buffers": buffers.iter().map(|(addr, length, lkey, rkey, n)| serde_json::json!({
                "addr": addr, "length": length, "lkey": lkey, "rkey": rkey, "name": n,
            })).collect::<Vec<_>>(),
            "devices": devices.iter().map(|d| serde_json::json!({"name": d, "lid": 0, "gid": ""}))
                .collect::<Vec<_>>(),
        })
        .to_string()
    });
    assert!(
        reach.descriptor > 600 && reach.valid_descriptor > 60,
        "descriptors parsed {}, valid {}",
        reach.descriptor,
        reach.valid_descriptor
    );
    let hs = (
        json_value(),
        prop::collection::vec(any::<u32>(), 0..4),
        any::<u16>(),
        prop::option::of(any::<bool>()),
        "[a-z0-9:@]{0,12}",
    );
    let reach = run(hs, 3_000, |(payload, qp, lid, ack, path)| {
        serde_json::json!({
            "local_gid": "", "local_lid": lid, "local_nic_path": path, "peer_nic_path": path,
            "payload": if payload.is_string() { payload } else { serde_json::json!("") },
            "qp_num": qp, "ready_ack": ack, "reply_msg": "",
        })
        .to_string()
    });
    assert!(
        reach.handshake > 2_000,
        "handshakes parsed {}",
        reach.handshake
    );
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&v, &mut Reach::default());
    }
}

#[test]
fn mutated_documents_never_panic() {
    let mut rng = Rng(0xfeed_face_cafe_beef);
    for seed in SEEDS {
        exercise(seed.as_bytes(), &mut Reach::default());
        for _ in 0..5_000 {
            exercise(&mutate(&mut rng, seed.as_bytes()), &mut Reach::default());
        }
    }
}

#[test]
fn seeds_are_accepted_as_valid() {
    let d: SegmentDesc = serde_json::from_str(SEEDS[0]).unwrap();
    d.validate().unwrap();
    let d: SegmentDesc = serde_json::from_str(SEEDS[1]).unwrap();
    d.validate().unwrap();
    let h: HandShakeDesc = serde_json::from_str(SEEDS[2]).unwrap();
    assert!(h.supports_ready_ack() && !h.is_ready_ack());
    assert_eq!(parse_matrix(SEEDS[4]).unwrap().len(), 2);
    // Corrupt descriptors are refused (spec §3.3).
    let bad = SEEDS[1].replace(r#""rkey":[3,4]"#, r#""rkey":[3]"#);
    assert!(serde_json::from_str::<SegmentDesc>(&bad)
        .unwrap()
        .validate()
        .is_err());
    let bad = SEEDS[0].replace("\"length\":1048576", "\"length\":0");
    assert!(serde_json::from_str::<SegmentDesc>(&bad)
        .unwrap()
        .validate()
        .is_err());
    let bad = SEEDS[0].replace("\"protocol\":\"tcp\"", "\"protocol\":\"nvlink\"");
    assert!(serde_json::from_str::<SegmentDesc>(&bad)
        .unwrap()
        .validate()
        .is_err());
}
