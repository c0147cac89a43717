//! Engines that find each other through a real metadata store: the bundled
//! HTTP server, etcd and Redis (started by scripts/services.sh; their
//! addresses come in TE_TEST_ETCD and TE_TEST_REDIS). A missing server is a
//! failure, not a skip, unless TE_SKIP_SERVICE_TESTS=1.

mod common;

use std::net::TcpListener;
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use transfer_engine::metadata::store::http::HttpStore;
use transfer_engine::metadata::store::MetadataStore;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

const T: Duration = Duration::from_secs(30);

fn service(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("TE_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => None,
        _ => panic!("{var} is not set: start the servers with `scripts/services.sh start` (or run scripts/test.sh)"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

struct MetaServer {
    child: Child,
    port: u16,
}

impl MetaServer {
    fn start(port: u16, persist: Option<&std::path::Path>) -> MetaServer {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_te-metadata-server"));
        cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()]);
        if let Some(p) = persist {
            cmd.arg("--persist").arg(p);
        }
        let child = cmd
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn te-metadata-server");
        let deadline = Instant::now() + Duration::from_secs(10);
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            assert!(
                Instant::now() < deadline,
                "te-metadata-server did not come up"
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        MetaServer { child, port }
    }
    fn url(&self) -> String {
        format!("http://127.0.0.1:{}/metadata", self.port)
    }
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for MetaServer {
    fn drop(&mut self) {
        self.kill();
    }
}

fn engine(url: &str, name: &str) -> Arc<TransferEngine> {
    let e = TransferEngine::new(url, name, false)
        .unwrap_or_else(|err| panic!("create via {url}: {err}"));
    e.install_transport("tcp", None).unwrap();
    e
}

/// Two engines exchange a WRITE and a READ through the store at `url`.
fn exchange(url: &str, tag: &str) {
    let pid = std::process::id();
    let target = engine(url, &format!("store-{tag}-target-{pid}"));
    let init = engine(url, &format!("store-{tag}-init-{pid}"));
    let remote = Guarded::new(1 << 20);
    let mut local = Guarded::new(1 << 20);
    target
        .register_local_memory(remote.addr(), 1 << 20, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), 1 << 20, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let data = pattern(7, 1 << 20);
    local.data_mut().copy_from_slice(&data);
    let st = run_batch(
        &init,
        &[req(Opcode::Write, local.addr(), id, remote.addr(), 1 << 20)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(remote.data() == &data[..]);
    local.data_mut().fill(0);
    let st = run_batch(
        &init,
        &[req(Opcode::Read, local.addr(), id, remote.addr(), 1 << 20)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(local.data() == &data[..]);
    // Notifications go through the rpc_meta the store holds.
    let back = target.open_segment(&init.local_server_name()).unwrap();
    target.send_notify(back, "done", tag).unwrap();
    assert_eq!(
        init.take_notifies(),
        vec![("done".to_string(), tag.to_string())]
    );
    // Destroy removes our keys: the segment can no longer be opened.
    let name = target.local_server_name();
    target.shutdown();
    let fresh = engine(url, &format!("store-{tag}-late-{pid}"));
    assert!(
        fresh.open_segment(&name).is_err(),
        "a destroyed engine's segment must be gone from the store"
    );
}

#[test]
fn http_store_exchange() {
    let server = MetaServer::start(free_port(), None);
    exchange(&server.url(), "http");
}

#[test]
fn etcd_store_exchange() {
    if let Some(addr) = service("TE_TEST_ETCD") {
        exchange(&format!("etcd://{addr}"), "etcd");
        exchange(&addr, "etcd-bare");
    }
}

#[test]
fn redis_store_exchange() {
    if let Some(url) = service("TE_TEST_REDIS") {
        exchange(&url, "redis");
    }
}

#[test]
fn unreachable_store_fails_creation_cleanly() {
    let port = free_port(); // nothing listens there
    for url in [
        format!("http://127.0.0.1:{port}/metadata"),
        format!("etcd://127.0.0.1:{port}"),
        format!("redis://127.0.0.1:{port}"),
    ] {
        let start = Instant::now();
        assert!(
            TransferEngine::new(&url, "unreachable-node", false).is_err(),
            "{url}"
        );
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "{url} took {:?}",
            start.elapsed()
        );
    }
}

#[test]
fn metadata_server_restart_keeps_transfers_and_republishes_keys() {
    let port = free_port();
    let mut server = MetaServer::start(port, None);
    let url = server.url();
    let pid = std::process::id();
    let target = engine(&url, &format!("restart-target-{pid}"));
    let init = engine(&url, &format!("restart-init-{pid}"));
    let remote = Guarded::new(4096);
    let local = Guarded::new(4096);
    target
        .register_local_memory(remote.addr(), 4096, "cpu:0", true)
        .unwrap();
    init.register_local_memory(local.addr(), 4096, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&target.local_server_name()).unwrap();
    run_batch(
        &init,
        &[req(Opcode::Write, local.addr(), id, remote.addr(), 4096)],
        T,
    );

    // The store goes away: open segments keep working, new opens fail (-1).
    server.kill();
    let st = run_batch(
        &init,
        &[req(Opcode::Write, local.addr(), id, remote.addr(), 4096)],
        T,
    );
    assert_eq!(
        st[0].status,
        TaskStatus::Completed,
        "transfers to an open segment survive a store outage"
    );
    assert!(init.open_segment("never-registered-node").is_err());

    // A fresh server without persistence comes back empty; our keys return.
    let _server2 = MetaServer::start(port, None);
    let third = engine(&url, &format!("restart-third-{pid}"));
    let deadline = Instant::now() + Duration::from_secs(15);
    let id3 = loop {
        if let Ok(id) = third.open_segment(&target.local_server_name()) {
            break id;
        }
        assert!(
            Instant::now() < deadline,
            "target's keys were not republished after the restart"
        );
        std::thread::sleep(Duration::from_millis(200));
    };
    let l3 = Guarded::new(4096);
    third
        .register_local_memory(l3.addr(), 4096, "cpu:0", true)
        .unwrap();
    let st = run_batch(
        &third,
        &[req(Opcode::Read, l3.addr(), id3, remote.addr(), 4096)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
}

#[test]
fn persisted_metadata_server_loses_nothing_on_restart() {
    let dir = std::env::temp_dir().join(format!("te-md-persist-{}", std::process::id()));
    let _ = std::fs::remove_file(&dir);
    let port = free_port();
    let mut server = MetaServer::start(port, Some(&dir));
    let url = server.url();
    let target = engine(&url, &format!("persist-target-{}", std::process::id()));
    let remote = Guarded::new(4096);
    target
        .register_local_memory(remote.addr(), 4096, "cpu:0", true)
        .unwrap();
    server.kill();
    let _server2 = MetaServer::start(port, Some(&dir));
    // Right away (well before the keeper's next check), the descriptor is there.
    let init = engine(&url, &format!("persist-init-{}", std::process::id()));
    let id = init.open_segment(&target.local_server_name()).unwrap();
    let desc = init.metadata().segment_desc(id).unwrap();
    assert_eq!(desc.buffers.len(), 1);
    assert_eq!(desc.buffers[0].addr, remote.addr());
    let _ = std::fs::remove_file(&dir);
}

/// Shut `e` down and put back the keys it had published under `name`, as a
/// process killed with SIGKILL leaves them: its RPC port is closed.
fn crash_leaving_keys(url: &str, name: &str, e: &TransferEngine) -> Vec<(String, String)> {
    let store = HttpStore::new(url).unwrap();
    let keys = [
        format!("mooncake/rpc_meta/{name}"),
        format!("mooncake/ram/{name}"),
    ];
    let kept: Vec<(String, String)> = keys
        .iter()
        .map(|k| (k.clone(), store.get(k).unwrap().expect("published key")))
        .collect();
    e.shutdown();
    for (k, v) in &kept {
        store.set(k, v).unwrap();
    }
    kept
}

/// A second engine asking for a live engine's name is refused, as upstream
/// is by the master's metadata server; the first keeps its key and stays
/// reachable under it.
#[test]
fn a_live_engines_name_is_refused_to_a_second_engine() {
    let server = MetaServer::start(free_port(), None);
    let url = server.url();
    let pid = std::process::id();
    let name = format!("taken-{pid}");
    let first = engine(&url, &name);
    let store = HttpStore::new(&url).unwrap();
    let key = format!("mooncake/rpc_meta/{name}");
    let held = store.get(&key).unwrap().expect("first engine's rpc_meta");
    let remote = Guarded::new(4096);
    first
        .register_local_memory(remote.addr(), 4096, "cpu:0", true)
        .unwrap();

    match TransferEngine::new(&url, &name, false) {
        Err(e) => {
            assert_eq!(e.err_code(), -200, "ERR_METADATA as upstream: {e}");
            assert!(e.to_string().contains("held by a live engine"), "{e}");
        }
        Ok(_) => panic!("a second engine took the live name '{name}'"),
    }
    // Through the C API too: createTransferEngine returns NULL.
    let (c_url, c_name) = (
        std::ffi::CString::new(url.clone()).unwrap(),
        std::ffi::CString::new(name.clone()).unwrap(),
    );
    // SAFETY: valid NUL-terminated strings; a NULL ip is ignored.
    let h = unsafe {
        transfer_engine::ffi::engine::createTransferEngine(
            c_url.as_ptr(),
            c_name.as_ptr(),
            std::ptr::null(),
            0,
            0,
        )
    };
    assert!(h.is_null(), "createTransferEngine must refuse a live name");

    assert_eq!(store.get(&key).unwrap().as_deref(), Some(held.as_str()));
    let peer = engine(&url, &format!("taken-peer-{pid}"));
    let id = peer.open_segment(&name).unwrap();
    let mut local = Guarded::new(4096);
    local.data_mut().copy_from_slice(&pattern(3, 4096));
    let st = run_batch(
        &peer,
        &[req(Opcode::Write, local.addr(), id, remote.addr(), 4096)],
        T,
    );
    assert_eq!(st[0].status, TaskStatus::Completed);
    assert!(remote.data() == local.data());
}

#[test]
fn stale_descriptor_of_a_crashed_process_does_not_leak() {
    let server = MetaServer::start(free_port(), None);
    let url = server.url();
    let name = format!("crashy-{}", std::process::id());
    let old = engine(&url, &name);
    let m = Guarded::new(8192);
    old.register_local_memory(m.addr(), 8192, "cpu:0", true)
        .unwrap();
    // "Crash": what the engine published stays in the store, its ports close.
    let left_behind = crash_leaving_keys(&url, &name, &old);
    let new = engine(&url, &name);
    assert!(
        new.metadata().local_desc().unwrap().buffers.is_empty(),
        "a new engine must not inherit the buffers of a crashed one"
    );
    let store = HttpStore::new(&url).unwrap();
    assert_ne!(
        store.get(&left_behind[0].0).unwrap().as_deref(),
        Some(left_behind[0].1.as_str()),
        "the new engine publishes its own rpc_meta over the crashed one's"
    );
    let peer = engine(&url, &format!("peer-of-crashy-{}", std::process::id()));
    let id = peer.open_segment(&name).unwrap();
    assert!(peer.metadata().segment_desc(id).unwrap().buffers.is_empty());
}
