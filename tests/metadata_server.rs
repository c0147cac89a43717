//! te-metadata-server answers the C++ engine's captured libcurl requests
//! (tests/vectors/http, replayed byte for byte) as the Go server would.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use transfer_engine::metadata::http_server::MetadataServer;

fn exchange(addr: std::net::SocketAddr, request: &[u8]) -> (u16, String) {
    let mut c = TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    // Ask the server to close after the reply so read_to_end terminates.
    let text = String::from_utf8(request.to_vec()).unwrap();
    let text = text.replacen("\r\n", "\r\nConnection: close\r\n", 1);
    c.write_all(text.as_bytes()).unwrap();
    let mut out = Vec::new();
    c.read_to_end(&mut out).unwrap();
    let out = String::from_utf8(out).unwrap();
    let status = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_string())
        .unwrap_or_default();
    (status, body)
}

#[test]
fn replays_the_cpp_engine_session() {
    let srv = MetadataServer::start("127.0.0.1:0", None, 2).unwrap();
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/http");
    let mut reqs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".request.txt"))
        .collect();
    reqs.sort();
    assert_eq!(reqs.len(), 18);
    for req in reqs {
        let name = req.file_name().unwrap().to_string_lossy().to_string();
        let bytes = std::fs::read(&req).unwrap();
        let want = std::fs::read_to_string(
            req.to_string_lossy()
                .replace(".request.txt", ".response.txt"),
        )
        .unwrap();
        let want_status: u16 = want[9..12].parse().unwrap();
        let want_body = want.split_once("\r\n\r\n").unwrap().1;
        let (status, body) = exchange(srv.local_addr(), &bytes);
        assert_eq!(status, want_status, "{name}");
        assert_eq!(body, want_body, "{name}");
    }
    // The session deleted everything it wrote, as in the capture.
    assert!(srv.map().is_empty());
}
