//! The C++ captures (tests/vectors/tcp): decode every header and status
//! frame, re-encode headers, and replay each connection against our client
//! through a fake server that answers with the captured bytes.

mod tcp_support;

use std::io::{Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tcp_support::*;
use transfer_engine::task::TaskStatus;
use transfer_engine::transport::tcp::config::TcpConfig;
use transfer_engine::transport::tcp::wire::{Header, Status, HEADER_LEN, STATUS_LEN};
use transfer_engine::transport::Transport;

struct Vector {
    name: String,
    json: Value,
    c2s: Vec<u8>,
    s2c: Vec<u8>,
}

fn dir() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/tcp")
}

fn vectors() -> Vec<Vector> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir()).unwrap() {
        let p = e.unwrap().path();
        if p.extension().and_then(|x| x.to_str()) != Some("json") {
            continue;
        }
        let json: Value = serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
        let read_hex = |k: &str| {
            let f = json[k]["file"].as_str().unwrap();
            unhex(&std::fs::read_to_string(dir().join(f)).unwrap())
        };
        out.push(Vector {
            name: p.file_stem().unwrap().to_string_lossy().into_owned(),
            c2s: read_hex("c2s"),
            s2c: read_hex("s2c"),
            json,
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    assert_eq!(out.len(), 20, "expected all 20 captured TCP connections");
    out
}

fn hex_u64(v: &Value) -> u64 {
    u64::from_str_radix(v.as_str().unwrap().trim_start_matches("0x"), 16).unwrap()
}

fn masked(h: &[u8]) -> Vec<u8> {
    let mut v = h[..HEADER_LEN].to_vec();
    v[17..].fill(0);
    v
}

#[test]
fn headers_and_status_frames_decode_and_reencode() {
    for v in vectors() {
        let rh = &v.json["request_header"];
        let hb: [u8; HEADER_LEN] = v.c2s[..HEADER_LEN].try_into().unwrap();
        let h = Header::decode(&hb);
        assert_eq!(h.size, rh["size"].as_u64().unwrap(), "{}", v.name);
        assert_eq!(h.addr, hex_u64(&rh["addr"]), "{}", v.name);
        assert_eq!(h.opcode as u64, hex_u64(&rh["opcode_byte"]), "{}", v.name);
        assert_eq!(h.is_v2(), rh["v2_flag"].as_bool().unwrap(), "{}", v.name);
        assert_eq!(h.is_write(), rh["op_name"] == "WRITE", "{}", v.name);
        let ours = Header::new(h.is_write(), h.is_v2(), h.addr, h.size).encode();
        assert_eq!(ours.to_vec(), masked(&v.c2s), "{}: header bytes", v.name);

        let sf = &v.json["s2c"]["status_frame"];
        let sb: [u8; STATUS_LEN] = v.s2c[..STATUS_LEN].try_into().unwrap();
        let st = Status::decode(&sb).expect("captured status has the magic");
        assert_eq!(st.code() as u64, sf["code"].as_u64().unwrap(), "{}", v.name);
        assert_eq!(st.encode(), sb, "{}: status bytes", v.name);
        let ok = v.json["expected_task_status"] == "COMPLETED";
        assert_eq!(st == Status::Ok, ok, "{}", v.name);
    }
}

/// Replay one capture: our client issues the captured request; a fake
/// server checks the bytes it receives and answers with the captured ones.
fn replay(v: &Vector) {
    let hb: [u8; HEADER_LEN] = v.c2s[..HEADER_LEN].try_into().unwrap();
    let h = Header::decode(&hb);
    let size = h.size as usize;
    let kept_c2s = v.c2s[HEADER_LEN..].to_vec();
    let status: [u8; STATUS_LEN] = v.s2c[..STATUS_LEN].try_into().unwrap();
    let ok = Status::decode(&status) == Some(Status::Ok);
    // READ body: captured prefix, then zeros (the capture keeps <= 64 bytes).
    let mut read_body = v.s2c[STATUS_LEN..].to_vec();
    read_body.resize(if h.is_write() { 0 } else { size }, 0);

    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let expect_body = kept_c2s.clone();
    let write = h.is_write();
    let server = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut got = [0u8; HEADER_LEN];
        s.read_exact(&mut got).unwrap();
        if write && ok {
            let mut body = vec![0u8; size];
            s.read_exact(&mut body).unwrap();
            assert_eq!(body[..expect_body.len()], expect_body[..], "body prefix");
        }
        s.write_all(&status).unwrap();
        if ok && !write {
            s.write_all(&read_body).unwrap();
        }
        if ok {
            let mut rest = Vec::new();
            let _ = s.read_to_end(&mut rest);
        }
        got
    });

    let client = transport(TcpConfig::default());
    let tgt = target(port, 2);
    let mut local = vec![0u8; size];
    if write {
        local[..kept_c2s.len()].copy_from_slice(&kept_c2s);
    }
    let t = submit(
        &client,
        &tgt,
        write,
        local.as_mut_ptr() as u64,
        h.addr,
        h.size,
    );
    let want = if ok {
        TaskStatus::Completed
    } else {
        TaskStatus::Failed
    };
    assert_eq!(wait(&t, Duration::from_secs(20)), want, "{}", v.name);
    if ok && !write {
        let prefix = &v.s2c[STATUS_LEN..];
        assert_eq!(&local[..prefix.len()], prefix, "{}: READ bytes", v.name);
    }
    client.shutdown();
    let sent = server.join().unwrap();
    assert_eq!(masked(&sent), masked(&v.c2s), "{}: our header", v.name);
}

#[test]
fn our_client_replays_every_capture() {
    for v in vectors() {
        replay(&v);
    }
}

#[test]
fn our_server_answers_like_the_capture() {
    // Same request shapes against our server, on a buffer of our own: the
    // status frames and READ layout must be byte-identical.
    let server = transport(TcpConfig::default());
    let mut buf = vec![0u8; 64];
    for (i, b) in buf.iter_mut().enumerate() {
        *b = 0xa0 + (i % 16) as u8;
    }
    register(&server, buf.as_ptr() as u64, 64);
    let base = buf.as_ptr() as u64;
    let exchange = |hdr: Header, body: &[u8], want: usize| -> Vec<u8> {
        let mut s = std::net::TcpStream::connect(("127.0.0.1", server.data_port())).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut out = hdr.encode().to_vec();
        out.extend_from_slice(body);
        s.write_all(&out).unwrap();
        let mut r = vec![0u8; want];
        s.read_exact(&mut r).unwrap();
        r
    };
    let v = vectors();
    let find = |n: &str| v.iter().find(|x| x.name == n).unwrap();
    // READ 32 at +0x10: Ok then a0..af a0..af.
    let r = exchange(Header::new(false, true, base + 0x10, 32), &[], 40);
    assert_eq!(r, find("read_32B_ok.p2p").s2c);
    // WRITE 16 straddling the end: AddrRejected.
    let body: Vec<u8> = (0u8..16).collect();
    let r = exchange(Header::new(true, true, base + 56, 16), &body, 8);
    assert_eq!(r, find("write_16B_rejected_straddle_end.p2p").s2c);
    // WRITE 64 of 00..3f: Ok, and the bytes landed.
    let body: Vec<u8> = (0u8..64).collect();
    let r = exchange(Header::new(true, true, base, 64), &body, 8);
    assert_eq!(r, find("write_64B_ok.p2p").s2c);
    assert_eq!(buf, body);
    server.shutdown();
}
