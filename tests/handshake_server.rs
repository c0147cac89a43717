//! Handshake server and client over loopback: every message type, legacy
//! framing, hostile input, slow clients, shutdown, and client-side errors.

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::{mpsc, Arc, Mutex};
use std::time::Duration;

use transfer_engine::error::Error;
use transfer_engine::metadata::handshake::client::{self, CallOptions};
use transfer_engine::metadata::handshake::frame::{self, Framing, MsgType};
use transfer_engine::metadata::handshake::{HandShakeDesc, HandshakeHandler, HandshakeServer};

const HOST: &str = "127.0.0.1";
const METADATA_REPLY: &str = "{\"name\":\"test-seg\",\"protocol\":\"tcp\"}\n";

#[derive(Default)]
struct TestHandler {
    notifies: Mutex<Vec<(String, String)>>,
    metadata_requests: Mutex<Vec<String>>,
}

impl HandshakeHandler for TestHandler {
    fn on_connection(&self, req: HandShakeDesc) -> HandShakeDesc {
        if req.payload == "reject me" {
            return HandShakeDesc::rejected("rejected by test");
        }
        HandShakeDesc {
            local_nic_path: req.peer_nic_path.clone(),
            peer_nic_path: req.local_nic_path.clone(),
            qp_num: req.qp_num.iter().map(|q| q + 1).collect(),
            ready_ack: req.ready_ack.map(|_| false),
            ..Default::default()
        }
    }

    fn on_metadata(&self, requester_json: &str) -> String {
        self.metadata_requests
            .lock()
            .unwrap()
            .push(requester_json.to_string());
        METADATA_REPLY.to_string()
    }

    fn on_notify(&self, name: String, msg: String) {
        self.notifies.lock().unwrap().push((name, msg));
    }
}

fn start() -> (HandshakeServer, Arc<TestHandler>) {
    let listener = TcpListener::bind((HOST, 0)).unwrap();
    let handler = Arc::new(TestHandler::default());
    let server = HandshakeServer::start(listener, handler.clone()).unwrap();
    (server, handler)
}

fn short_opts() -> CallOptions {
    CallOptions {
        connect_timeout: Duration::from_secs(2),
        read_timeout: Duration::from_secs(3),
    }
}

/// Send raw bytes, half-close, and collect whatever the server answers
/// (bounded by a read timeout).
fn raw_exchange(port: u16, bytes: &[u8]) -> Vec<u8> {
    let mut s = TcpStream::connect((HOST, port)).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(8))).unwrap();
    // The server may close before reading everything; a failed write is fine.
    let _ = s.write_all(bytes);
    let _ = s.shutdown(Shutdown::Write);
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out);
    out
}

#[test]
fn every_message_type_round_trips() {
    let (server, handler) = start();
    let port = server.local_port();

    let req = HandShakeDesc {
        local_nic_path: "a:1@mlx5_0".into(),
        peer_nic_path: "b:2@mlx5_1".into(),
        qp_num: vec![10, 20],
        ready_ack: Some(false),
        ..Default::default()
    };
    let reply = client::connection(HOST, port, &req).unwrap();
    assert_eq!(reply.local_nic_path, "b:2@mlx5_1");
    assert_eq!(reply.peer_nic_path, "a:1@mlx5_0");
    assert_eq!(reply.qp_num, vec![11, 21]);
    assert!(reply.supports_ready_ack());

    let rejected = HandShakeDesc {
        payload: "reject me".into(),
        ..Default::default()
    };
    assert_eq!(
        client::connection(HOST, port, &rejected),
        Err(Error::RejectHandshake("rejected by test".into()))
    );

    let own = "{\"name\":\"requester\"}\n";
    let text = client::call(HOST, port, MsgType::Metadata, own).unwrap();
    assert_eq!(text, METADATA_REPLY);
    assert_eq!(*handler.metadata_requests.lock().unwrap(), vec![own]);

    let ack = client::notify(HOST, port, "seg \"x\"", "héllo\n").unwrap();
    assert_eq!(ack, "success");
    let raw = client::call(
        HOST,
        port,
        MsgType::Notify,
        "{\"name\":\"n2\",\"notify_msg\":\"m2\"}\n",
    )
    .unwrap();
    assert_eq!(raw, "{\"name\":\"\",\"notify_msg\":\"success\"}\n");
    assert_eq!(
        *handler.notifies.lock().unwrap(),
        vec![
            ("seg \"x\"".to_string(), "héllo\n".to_string()),
            ("n2".to_string(), "m2".to_string())
        ]
    );

    client::probe(HOST, port).unwrap();
    assert_eq!(
        client::call(HOST, port, MsgType::Probe, "{}\n").unwrap(),
        "{\"status\":\"success\"}\n"
    );
    server.stop();
}

#[test]
fn legacy_request_gets_legacy_reply() {
    let (server, _) = start();
    let port = server.local_port();
    let req = "{\"local_gid\":\"\",\"local_lid\":0,\"local_nic_path\":\"x:1@d\",\"payload\":\"\",\"peer_nic_path\":\"y:2@d\",\"qp_num\":[],\"reply_msg\":\"\"}\n";

    let reply = raw_exchange(port, &frame::encode(Framing::Legacy, req));
    let f = frame::decode(&reply, frame::max_frame_len()).unwrap();
    assert_eq!(f.framing, Framing::Legacy);
    let desc: HandShakeDesc = serde_json::from_str(f.text()).unwrap();
    assert_eq!(desc.local_nic_path, "y:2@d");
    assert!(!desc.supports_ready_ack());
    assert!(!f.text().contains("ready_ack"));

    let text = client::call_with(HOST, port, Framing::Legacy, req, &short_opts()).unwrap();
    assert_eq!(text, f.text());
    server.stop();
}

#[test]
fn silent_client_does_not_block_others() {
    let (server, _) = start();
    let port = server.local_port();
    let _silent = TcpStream::connect((HOST, port)).unwrap();
    let mut half = TcpStream::connect((HOST, port)).unwrap();
    half.write_all(&100u64.to_ne_bytes()).unwrap();
    // The server's per-connection timeout is 5 s; the read timeout here is
    // shorter, so a sequential server would make these calls fail.
    for _ in 0..3 {
        let text = client::call_with(
            HOST,
            port,
            Framing::Typed(MsgType::Probe),
            "{}\n",
            &short_opts(),
        )
        .unwrap();
        assert_eq!(text, "{\"status\":\"success\"}\n");
    }
    server.stop();
}

#[test]
fn hostile_frames_are_rejected_and_server_keeps_serving() {
    let (server, handler) = start();
    let port = server.local_port();

    let mut over_max = (frame::max_frame_len() + 1).to_ne_bytes().to_vec();
    over_max.extend_from_slice(b"\x02{}");
    let mut bad_type = 3u64.to_ne_bytes().to_vec();
    bad_type.extend_from_slice(b"\x80{}");
    let tls_hello: &[u8] = &[
        0x16, 0x03, 0x01, 0x02, 0x00, 0x01, 0x00, 0x01, 0xfc, 0x03, 0x03, 0xaa, 0xbb,
    ];
    let cases: Vec<(&str, Vec<u8>)> = vec![
        ("zero length", 0u64.to_ne_bytes().to_vec()),
        ("over max", over_max),
        ("unknown type", bad_type),
        (
            "garbage json",
            frame::encode(Framing::Typed(MsgType::Notify), "{\"name\":"),
        ),
        (
            "non-string notify fields",
            frame::encode(Framing::Typed(MsgType::Notify), "{\"name\":[1]}"),
        ),
        (
            "bad HandShakeDesc",
            frame::encode(Framing::Typed(MsgType::Connection), "{\"qp_num\":\"x\"}\n"),
        ),
        (
            "http",
            b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n".to_vec(),
        ),
        ("tls", tls_hello.to_vec()),
        ("truncated", {
            let f = frame::encode(Framing::Typed(MsgType::Probe), "{}\n");
            f[..f.len() - 1].to_vec()
        }),
    ];
    for (what, bytes) in cases {
        let reply = raw_exchange(port, &bytes);
        assert!(reply.is_empty(), "{what}: got a reply {reply:?}");
        client::probe(HOST, port).unwrap_or_else(|e| panic!("after {what}: {e}"));
    }
    assert!(handler.notifies.lock().unwrap().is_empty());
    server.stop();
}

#[test]
fn stop_returns_promptly_with_idle_connections() {
    let (server, _) = start();
    let port = server.local_port();
    let idle = TcpStream::connect((HOST, port)).unwrap();
    let mut partial = TcpStream::connect((HOST, port)).unwrap();
    partial.write_all(&[5, 0, 0]).unwrap();
    // Let the accept loop pick both up.
    client::probe(HOST, port).unwrap();

    let (tx, rx) = mpsc::channel();
    let stopper = std::thread::spawn(move || {
        server.stop();
        server.stop(); // idempotent
        tx.send(server).unwrap();
    });
    // Far below the 5 s per-connection read timeout.
    let server = rx
        .recv_timeout(Duration::from_secs(3))
        .expect("stop() did not return while idle clients were connected");
    stopper.join().unwrap();

    // The idle connection was closed by the server.
    idle.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    let mut buf = [0u8; 1];
    assert!(matches!((&idle).read(&mut buf), Ok(0) | Err(_)));
    assert!(matches!(
        client::call_with(
            HOST,
            port,
            Framing::Typed(MsgType::Probe),
            "{}\n",
            &short_opts()
        ),
        Err(Error::Socket(_))
    ));
    drop(server);
}

#[test]
fn closed_port_is_a_socket_error_naming_the_address() {
    let port = {
        let l = TcpListener::bind((HOST, 0)).unwrap();
        l.local_addr().unwrap().port()
    };
    match client::probe(HOST, port) {
        Err(Error::Socket(msg)) => assert!(msg.contains(&format!("127.0.0.1:{port}")), "{msg}"),
        other => panic!("expected a socket error, got {other:?}"),
    }
}

#[test]
fn unresolvable_host_is_a_dns_error() {
    let r = client::call("no-such-host.invalid", 12001, MsgType::Probe, "{}\n");
    assert!(matches!(r, Err(Error::Dns(_))), "{r:?}");
}

/// A peer that answers every request with `reply` (raw bytes).
fn fake_peer(reply: Vec<u8>) -> (u16, std::thread::JoinHandle<()>) {
    let l = TcpListener::bind((HOST, 0)).unwrap();
    let port = l.local_addr().unwrap().port();
    let t = std::thread::spawn(move || {
        let (mut s, _) = l.accept().unwrap();
        s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let _ = frame::read_frame(&mut s, 1 << 20).unwrap();
        s.write_all(&reply).unwrap();
    });
    (port, t)
}

#[test]
fn mismatched_reply_type_is_a_socket_error() {
    let (port, t) = fake_peer(frame::encode(
        Framing::Typed(MsgType::Metadata),
        "{\"status\":\"success\"}\n",
    ));
    let r = client::call_with(
        HOST,
        port,
        Framing::Typed(MsgType::Probe),
        "{}\n",
        &short_opts(),
    );
    assert!(matches!(r, Err(Error::Socket(_))), "{r:?}");
    t.join().unwrap();

    // A legacy reply to a typed Connection request does not match either.
    let (port, t) = fake_peer(frame::encode(
        Framing::Legacy,
        &transfer_engine::metadata::json::to_fast_writer(&HandShakeDesc::default()),
    ));
    let r = client::connection(HOST, port, &HandShakeDesc::default());
    assert!(matches!(r, Err(Error::Socket(_))), "{r:?}");
    t.join().unwrap();
}

#[test]
fn unparsable_reply_is_malformed_json() {
    let (port, t) = fake_peer(frame::encode(Framing::Typed(MsgType::Probe), "not json"));
    let r = client::call_with(
        HOST,
        port,
        Framing::Typed(MsgType::Probe),
        "{}\n",
        &short_opts(),
    );
    assert!(matches!(r, Err(Error::MalformedJson(_))), "{r:?}");
    t.join().unwrap();
}

#[test]
fn concurrent_clients_all_succeed() {
    let (server, handler) = start();
    let port = server.local_port();
    let threads: Vec<_> = (0..16)
        .map(|i| {
            std::thread::spawn(move || client::notify(HOST, port, &format!("c{i}"), "m").unwrap())
        })
        .collect();
    for t in threads {
        assert_eq!(t.join().unwrap(), "success");
    }
    assert_eq!(handler.notifies.lock().unwrap().len(), 16);
    server.stop();
}
