//! MC_METADATA_CLUSTER_ID isolates groups sharing one store. The variable is
//! process-wide, so this binary holds a single test that sets it in turn.

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use transfer_engine::TransferEngine;

#[test]
fn cluster_id_prefix_isolates_groups() {
    let port = TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut child = Command::new(env!("CARGO_BIN_EXE_te-metadata-server"))
        .args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(10);
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(Instant::now() < deadline);
        std::thread::sleep(Duration::from_millis(20));
    }
    let url = format!("http://127.0.0.1:{port}/metadata");
    let mk = |cluster: &str, name: &str| {
        std::env::set_var("MC_METADATA_CLUSTER_ID", cluster);
        let e = TransferEngine::new(&url, name, false).unwrap();
        e.install_transport("tcp", None).unwrap();
        e
    };
    let a1 = mk("group-a", "node-1");
    let a2 = mk("group-a", "node-2");
    let b1 = mk("group-b", "node-1"); // same name, other group: no clash
    let b2 = mk("group-b", "node-2");
    assert!(a2.open_segment("node-1").is_ok());
    assert!(b2.open_segment("node-1").is_ok());
    let mem = vec![0u8; 4096];
    a1.register_local_memory(mem.as_ptr() as u64, 4096, "cpu:0", true)
        .unwrap();
    let id_a = a2.open_segment_no_cache("node-1").unwrap();
    let id_b = b2.open_segment_no_cache("node-1").unwrap();
    assert_eq!(a2.metadata().segment_desc(id_a).unwrap().buffers.len(), 1);
    assert_eq!(
        b2.metadata().segment_desc(id_b).unwrap().buffers.len(),
        0,
        "group b sees its own node-1"
    );
    drop((a1, a2, b1, b2));
    let _ = child.kill();
    let _ = child.wait();
}
