//! Every parser that reads bytes from a peer or a store survives arbitrary
//! input: random bytes and mutations of valid documents never panic, and
//! whatever is accepted is internally valid.

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

fn exercise(bytes: &[u8]) {
    let Ok(text) = std::str::from_utf8(bytes) else {
        return;
    };
    if let Ok(d) = serde_json::from_str::<SegmentDesc>(text) {
        if d.validate().is_ok() {
            // Accepted descriptors never hold a zero-length or zero-address buffer.
            assert!(d.buffers.iter().all(|b| b.length > 0 && b.addr != 0));
            let _ = d.find_buffer(u64::MAX - 1, 2);
        }
    }
    let _ = serde_json::from_str::<HandShakeDesc>(text);
    let _ = serde_json::from_str::<RpcMeta>(text);
    if let Ok(m) = parse_matrix(text) {
        // What is accepted survives a round trip unchanged.
        let again = parse_matrix(&serde_json::to_string(&m).unwrap()).unwrap();
        assert_eq!(again, m);
    }
}

#[test]
fn random_bytes_never_panic() {
    let mut rng = Rng(0x5eed_1234_abcd_ef01);
    for _ in 0..20_000 {
        let len = rng.below(300);
        let v: Vec<u8> = (0..len).map(|_| rng.next() as u8).collect();
        exercise(&v);
    }
}

#[test]
fn mutated_documents_never_panic() {
    let mut rng = Rng(0xfeed_face_cafe_beef);
    for seed in SEEDS {
        exercise(seed.as_bytes());
        for _ in 0..5_000 {
            exercise(&mutate(&mut rng, seed.as_bytes()));
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
