//! te-metadata-server answers the C++ engine's captured libcurl requests
//! (tests/vectors/http, replayed byte for byte) under both rule sets, and
//! every status code of `mooncake_master`'s metadata server over real HTTP.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::time::Duration;

use transfer_engine::metadata::http_server::{Flavor, MetadataServer, PutOutcome};
use transfer_engine::metadata::store::{http::HttpStore, MetadataStore};
use transfer_engine::TransferEngine;

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
    replay(Flavor::Master);
    replay(Flavor::GoExample);
}

fn replay(flavor: Flavor) {
    let srv = MetadataServer::start_with("127.0.0.1:0", None, 2, flavor).unwrap();
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

fn request(addr: std::net::SocketAddr, method: &str, target: &str, body: &str) -> (u16, String) {
    let req = format!(
        "{method} {target} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n{body}",
        body.len()
    );
    exchange(addr, req.as_bytes())
}

#[test]
fn mooncake_master_status_codes_over_http() {
    let srv = MetadataServer::start("127.0.0.1:0", None, 2).unwrap();
    let a = srv.local_addr();
    let rpc = "/metadata?key=mooncake%2Frpc_meta%2Fnode%3A1";
    let ram = "/metadata?key=mooncake%2Fram%2Fnode%3A1";
    let s = |v: &str| v.to_string();
    assert_eq!(request(a, "GET", "/health", ""), (200, s("OK")));
    assert_eq!(request(a, "GET", ram, ""), (404, s("metadata not found")));
    assert_eq!(request(a, "PUT", ram, "{}"), (200, s("metadata updated")));
    assert_eq!(
        request(a, "PUT", ram, "{\"v\":2}"),
        (200, s("metadata updated"))
    );
    assert_eq!(request(a, "GET", ram, ""), (200, s("{\"v\":2}")));
    assert_eq!(
        request(a, "PUT", rpc, "{\"p\":1}"),
        (200, s("metadata updated"))
    );
    assert_eq!(
        request(a, "PUT", rpc, "{\"p\":1}"),
        (200, s("metadata unchanged"))
    );
    assert_eq!(
        request(a, "PUT", rpc, "{\"p\":2}"),
        (400, s("Duplicate rpc_meta key not allowed"))
    );
    assert_eq!(request(a, "GET", rpc, ""), (200, s("{\"p\":1}")));
    for m in ["GET", "PUT", "DELETE"] {
        assert_eq!(
            request(a, m, "/metadata?key=", "{}"),
            (400, s("Missing key parameter"))
        );
        assert_eq!(
            request(a, m, "/metadata", "{}"),
            (400, s("Missing key parameter"))
        );
    }
    assert_eq!(request(a, "DELETE", rpc, ""), (200, s("metadata deleted")));
    assert_eq!(
        request(a, "DELETE", rpc, ""),
        (404, s("metadata not found"))
    );
    assert_eq!(
        request(a, "GET", "/elsewhere?key=mooncake%2Fram%2Fnode%3A1", "").0,
        404
    );
    assert_eq!(request(a, "POST", ram, "{}").0, 404);
}

#[test]
fn go_compat_flag_answers_as_the_go_example_server() {
    let srv = MetadataServer::start_with("127.0.0.1:0", None, 2, Flavor::GoExample).unwrap();
    let a = srv.local_addr();
    let rpc = "/metadata?key=mooncake%2Frpc_meta%2Fnode%3A1";
    assert_eq!(request(a, "DELETE", rpc, "").0, 200);
    assert_eq!(request(a, "PUT", rpc, "{\"p\":1}").0, 200);
    assert_eq!(request(a, "PUT", rpc, "{\"p\":2}").0, 200);
    assert_eq!(request(a, "GET", rpc, ""), (200, "{\"p\":2}".to_string()));
    // gin routes GET/PUT/DELETE /metadata only.
    let not_found = (404, "404 page not found".to_string());
    assert_eq!(request(a, "POST", rpc, "{}"), not_found);
    assert_eq!(
        request(a, "GET", "/any?key=mooncake%2Frpc_meta%2Fnode%3A1", ""),
        not_found
    );
    assert_eq!(request(a, "GET", "/health", ""), not_found);
}

#[test]
fn http_store_takes_over_a_stale_rpc_meta_on_the_strict_server() {
    let srv = MetadataServer::start("127.0.0.1:0", None, 2).unwrap();
    let store = HttpStore::new(&srv.url()).unwrap();
    let key = "mooncake/rpc_meta/node:1";
    store.set(key, "{\"rpc_port\":1}").unwrap();
    // Same value again (the keeper's republish): fine.
    store.set(key, "{\"rpc_port\":1}").unwrap();
    // A restarted engine with the same name publishes a new port.
    store.set(key, "{\"rpc_port\":2}").unwrap();
    assert_eq!(store.get(key).unwrap().as_deref(), Some("{\"rpc_port\":2}"));
    store.remove(key).unwrap();
    // Removing a missing key (404 here) is not an error for the client.
    store.remove(key).unwrap();
    assert_eq!(store.get(key).unwrap(), None);
}

/// The binary on a free port with `extra` flags; killed on drop.
struct Binary(std::process::Child, std::net::SocketAddr);

impl Drop for Binary {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn spawn_binary(extra: &[&str]) -> Binary {
    use std::io::BufRead;
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_te-metadata-server"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let mut line = String::new();
    std::io::BufReader::new(child.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert!(line.contains("listening on"), "{line}");
    Binary(child, format!("127.0.0.1:{port}").parse().unwrap())
}

#[test]
fn the_binary_defaults_to_master_rules_and_takes_go_compat() {
    let missing = "/metadata?key=mooncake%2Fram%2Fnobody";
    let strict = spawn_binary(&[]);
    assert_eq!(
        request(strict.1, "GET", "/health", ""),
        (200, "OK".to_string())
    );
    assert_eq!(request(strict.1, "DELETE", missing, "").0, 404);
    let loose = spawn_binary(&["--go-compat"]);
    assert_eq!(request(loose.1, "DELETE", missing, "").0, 200);
}

#[test]
fn an_engine_restarted_under_its_name_replaces_its_stale_rpc_meta() {
    let srv = MetadataServer::start("127.0.0.1:0", None, 2).unwrap();
    // What a crashed engine of the same name left behind.
    let key = "mooncake/rpc_meta/restarted-node";
    let stale = "{\"ip_or_host_name\":\"127.0.0.1\",\"rpc_port\":1}";
    assert_eq!(
        srv.map().put_exclusive(key, stale.into()).unwrap(),
        PutOutcome::Stored
    );
    let e = TransferEngine::new(&srv.url(), "restarted-node", false).expect("engine starts");
    let now = srv.map().get(key).expect("rpc_meta published");
    assert_ne!(now, stale);
    let port = e
        .local_ip_and_port()
        .rsplit_once(':')
        .unwrap()
        .1
        .to_string();
    assert!(now.contains(&format!("\"rpc_port\":{port}")), "{now}");
    e.shutdown();
    assert_eq!(srv.map().get(key), None, "shutdown removes the key");
}
