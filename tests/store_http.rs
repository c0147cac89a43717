//! HTTP metadata store against our own te-metadata-server (in-process and as
//! a child process), plus request bytes compared with the C++ engine's
//! captured libcurl requests (tests/vectors/http).

#[path = "store_common.rs"]
mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use transfer_engine::metadata::http_rules::query_param;
use transfer_engine::metadata::http_server::MetadataServer;
use transfer_engine::metadata::store::http::HttpStore;
use transfer_engine::metadata::store::{self, MetadataStore};
use transfer_engine::Error;

fn server() -> MetadataServer {
    MetadataServer::start("127.0.0.1:0", None, 4).expect("start metadata server")
}

fn store_for(srv: &MetadataServer) -> HttpStore {
    HttpStore::new(&srv.url()).expect("http store")
}

#[test]
fn round_trip_missing_and_odd_keys() {
    let srv = server();
    let s = store_for(&srv);
    common::round_trip(&s);
    common::missing_key(&s);
    common::odd_keys(&s);
    assert!(srv.map().is_empty(), "everything written was removed");
}

#[test]
fn large_values() {
    let srv = server();
    common::large_value(&store_for(&srv));
    // Above the server's 16 MiB limit: refused (413), not a hang or a crash.
    let s = store_for(&srv);
    let huge = format!("\"{}\"", "x".repeat(17 << 20));
    match s.set("too-big", &huge) {
        Err(Error::Metadata(m)) => assert!(m.contains("413"), "{m}"),
        other => panic!("17 MiB PUT must fail with 413, got {other:?}"),
    }
    assert_eq!(s.get("too-big").unwrap(), None);
}

#[test]
fn concurrent_clients() {
    let srv = server();
    common::concurrent(Arc::new(store_for(&srv)));
}

#[test]
fn connect_through_connection_string() {
    let srv = server();
    let s = store::connect(&srv.url())
        .unwrap()
        .expect("a store, not P2P");
    assert!(
        !s.trailing_newline(),
        "HTTP bodies are compact without newline"
    );
    common::round_trip(s.as_ref());
}

#[test]
fn non_json_get_body_is_an_error() {
    let srv = server();
    let s = store_for(&srv);
    s.set("plain", "not json").unwrap();
    assert!(
        s.get("plain").is_err(),
        "Mooncake rejects a non-JSON GET body"
    );
}

#[test]
fn unreachable_server_fails_fast() {
    let port = free_port();
    let s = HttpStore::new(&format!("http://127.0.0.1:{port}/metadata")).unwrap();
    common::unreachable(&s, Duration::from_secs(10));
}

#[test]
fn https_is_not_built() {
    assert!(matches!(
        store::connect("https://127.0.0.1:1/metadata"),
        Err(Error::NotImplemented(_))
    ));
}

#[test]
fn cluster_id_isolation() {
    let srv = server();
    common::cluster_isolation(&srv.url(), &store_for(&srv), false);
}

// ---- the standalone binary, restarted mid-run ---------------------------

struct ServerProcess(Child);

impl Drop for ServerProcess {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("free port")
}

fn spawn_server(port: u16, persist: &PathBuf) -> ServerProcess {
    let mut child = Command::new(env!("CARGO_BIN_EXE_te-metadata-server"))
        .args([
            "--host",
            "127.0.0.1",
            "--port",
            &port.to_string(),
            "--persist",
        ])
        .arg(persist)
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .expect("spawn te-metadata-server");
    // It prints one line once it listens.
    let mut line = String::new();
    let stdout = child.stdout.take().expect("stdout");
    BufReader::new(stdout)
        .read_line(&mut line)
        .expect("read banner");
    assert!(
        line.contains("listening on http://127.0.0.1:"),
        "banner: {line}"
    );
    ServerProcess(child)
}

#[test]
fn binary_restart_with_persist_keeps_keys() {
    let persist = std::env::temp_dir().join(format!("te-md-restart-{}.json", std::process::id()));
    let _ = std::fs::remove_file(&persist);
    let port = free_port();
    let s = HttpStore::new(&format!("http://127.0.0.1:{port}/metadata")).unwrap();

    let srv = spawn_server(port, &persist);
    s.set("mooncake/ram/a:1", "{\"v\":1}").unwrap();
    s.set("mooncake/rpc_meta/a:1", "{\"v\":2}").unwrap();
    s.remove("mooncake/rpc_meta/a:1").unwrap();
    drop(srv); // SIGKILL: only the persisted file survives

    let t = Instant::now();
    assert!(s.get("mooncake/ram/a:1").is_err(), "server is down");
    assert!(t.elapsed() < Duration::from_secs(5));

    let _srv = spawn_server(port, &persist);
    assert_eq!(
        s.get("mooncake/ram/a:1").unwrap().as_deref(),
        Some("{\"v\":1}")
    );
    assert_eq!(s.get("mooncake/rpc_meta/a:1").unwrap(), None);
    s.set("mooncake/ram/b", "{}").unwrap();
    assert_eq!(s.get("mooncake/ram/b").unwrap().as_deref(), Some("{}"));
    drop(_srv);
    let _ = std::fs::remove_file(&persist);
}

#[test]
fn sigterm_stops_the_binary() {
    let persist = std::env::temp_dir().join(format!("te-md-term-{}.json", std::process::id()));
    let port = free_port();
    let mut srv = spawn_server(port, &persist);
    let pid = srv.0.id() as libc::pid_t;
    // SAFETY: plain kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(pid, libc::SIGTERM) }, 0);
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        if let Some(status) = srv.0.try_wait().unwrap() {
            assert!(status.success(), "clean exit on SIGTERM, got {status}");
            break;
        }
        assert!(Instant::now() < deadline, "server ignored SIGTERM");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = std::fs::remove_file(&persist);
}

// ---- request bytes vs the C++ engine's captured requests ------------------

struct Captured {
    request_line: String,
    headers: Vec<(String, String)>,
    body: Vec<u8>,
}

fn parse_request(raw: &[u8]) -> Captured {
    let split = raw
        .windows(4)
        .position(|w| w == b"\r\n\r\n")
        .expect("header end");
    let head = std::str::from_utf8(&raw[..split]).expect("ascii headers");
    let mut lines = head.split("\r\n");
    let request_line = lines.next().unwrap_or_default().to_string();
    let headers = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.trim().to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    Captured {
        request_line,
        headers,
        body: raw[split + 4..].to_vec(),
    }
}

impl Captured {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(k, _)| k == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Accept one connection, read one request, answer with `response` bytes.
fn one_shot_server(response: Vec<u8>) -> (u16, std::thread::JoinHandle<Vec<u8>>) {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let h = std::thread::spawn(move || {
        let (mut c, _) = l.accept().unwrap();
        c.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
        let mut buf = Vec::new();
        let mut chunk = [0u8; 4096];
        loop {
            if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
                let req = parse_request(&buf);
                let len: usize = req
                    .header("content-length")
                    .map_or(0, |v| v.parse().unwrap());
                if buf.len() >= end + 4 + len {
                    break;
                }
            }
            let n = c.read(&mut chunk).unwrap();
            if n == 0 {
                break;
            }
            buf.extend_from_slice(&chunk[..n]);
        }
        c.write_all(&response).unwrap();
        buf
    });
    (port, h)
}

fn vector_files() -> Vec<(PathBuf, PathBuf)> {
    let dir = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/vectors/http");
    let mut reqs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.to_string_lossy().ends_with(".request.txt"))
        .collect();
    reqs.sort();
    reqs.into_iter()
        .map(|r| {
            let resp = PathBuf::from(r.to_string_lossy().replace(".request.txt", ".response.txt"));
            (r, resp)
        })
        .collect()
}

#[test]
fn requests_match_the_cpp_engine_captures() {
    let files = vector_files();
    assert_eq!(
        files.len(),
        18,
        "all 18 http_extra exchanges are in tests/vectors/http"
    );
    for (req_path, resp_path) in files {
        let name = req_path.file_name().unwrap().to_string_lossy().to_string();
        let want = parse_request(&std::fs::read(&req_path).unwrap());
        let (method, target) = {
            let mut p = want.request_line.split(' ');
            (p.next().unwrap().to_string(), p.next().unwrap().to_string())
        };
        let query = target.split_once('?').unwrap().1;
        let key = query_param(query, "key").unwrap();
        let response = std::fs::read(&resp_path).unwrap();
        let resp_text = String::from_utf8_lossy(&response).to_string();
        let resp_body = resp_text.split_once("\r\n\r\n").unwrap().1.to_string();
        let status_ok = resp_text.starts_with("HTTP/1.0 200");

        let (port, h) = one_shot_server(response.clone());
        let s = HttpStore::new(&format!("http://127.0.0.1:{port}/metadata")).unwrap();
        match method.as_str() {
            "GET" => {
                let got = s.get(&key).unwrap();
                if status_ok {
                    assert_eq!(got.as_deref(), Some(resp_body.as_str()), "{name}");
                } else {
                    assert_eq!(got, None, "{name}");
                }
            }
            "PUT" => s
                .set(&key, std::str::from_utf8(&want.body).unwrap())
                .unwrap(),
            "DELETE" => s.remove(&key).unwrap(),
            m => panic!("{name}: unexpected method {m}"),
        }
        let got = parse_request(&h.join().unwrap());
        assert_eq!(got.request_line, want.request_line, "{name}: request line");
        assert_eq!(
            got.header("host"),
            Some(format!("127.0.0.1:{port}").as_str()),
            "{name}"
        );
        assert_eq!(
            got.header("accept"),
            want.header("accept"),
            "{name}: Accept"
        );
        assert_eq!(
            got.header("content-type"),
            want.header("content-type"),
            "{name}: Content-Type"
        );
        assert_eq!(
            got.header("content-length"),
            want.header("content-length"),
            "{name}: Content-Length"
        );
        assert_eq!(got.body, want.body, "{name}: body");
    }
}
