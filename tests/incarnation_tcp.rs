//! A segment's owner replaced by a new engine under the same name, over
//! TCP: nothing the initiator submitted to the old owner lands in the new
//! one, and the initiator's later submits to the same segment handle go to
//! the new owner without the application reopening it.
//!
//! The engines find each other through the bundled HTTP metadata server.
//! Two test-owned TCP proxies make the replacement deterministic: the
//! target's data port as the initiator sees it (`DataProxy`: its backend
//! switches from the old engine to the new one, and it holds the requests
//! it is given until told, so they are in flight when the old engine goes)
//! and the initiator's way to the metadata server (held while the new engine
//! comes up, so the initiator's re-read of the descriptor sees the new one
//! as a process taking the ports within a moment would have it).

mod common;

use std::io::{Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicU16, Ordering};
use std::sync::Arc;
use std::time::Duration;

use common::{pattern, req, run_batch, wait_all, Guarded};
use transfer_engine::metadata::http_server::MetadataServer;
use transfer_engine::metadata::store::http::HttpStore;
use transfer_engine::metadata::store::MetadataStore;
use transfer_engine::{Opcode, TaskStatus, TransferEngine};

const LIMIT: Duration = Duration::from_secs(30);
/// Requests of the old session (`TE_INCARNATION_REQUESTS` to change).
fn old_requests() -> usize {
    std::env::var("TE_INCARNATION_REQUESTS")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(64)
}
const BLOCK: usize = 64 << 10;

/// A TCP proxy: each accepted connection is joined to the backend port
/// current at that time (waiting while it is 0); bytes from the client wait
/// while `held`. Either side ending ends the other.
struct Proxy {
    port: u16,
    backend: Arc<AtomicU16>,
    held: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
}

impl Proxy {
    fn start(backend: u16) -> Proxy {
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let p = Proxy {
            port,
            backend: Arc::new(AtomicU16::new(backend)),
            held: Arc::new(AtomicBool::new(false)),
            stop: Arc::new(AtomicBool::new(false)),
        };
        let (backend, held, stop) = (p.backend.clone(), p.held.clone(), p.stop.clone());
        l.set_nonblocking(true).unwrap();
        std::thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                let client = match l.accept() {
                    Ok((c, _)) => c,
                    Err(_) => {
                        std::thread::sleep(Duration::from_millis(1));
                        continue;
                    }
                };
                let (backend, held, stop) = (backend.clone(), held.clone(), stop.clone());
                std::thread::spawn(move || join(client, &backend, held, stop));
            }
        });
        p
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

fn join(client: TcpStream, backend: &AtomicU16, held: Arc<AtomicBool>, stop: Arc<AtomicBool>) {
    client.set_nonblocking(false).unwrap();
    let port = loop {
        match backend.load(Ordering::Acquire) {
            0 if stop.load(Ordering::Relaxed) => return,
            0 => std::thread::sleep(Duration::from_millis(1)),
            p => break p,
        }
    };
    let Ok(server) = TcpStream::connect(("127.0.0.1", port)) else {
        return;
    };
    let (c2, s2) = (client.try_clone().unwrap(), server.try_clone().unwrap());
    std::thread::spawn(move || pump(s2, c2, None));
    pump(client, server, Some(held));
}

/// Copy `from` to `to` (waiting while `held`), then end both.
fn pump(mut from: TcpStream, mut to: TcpStream, held: Option<Arc<AtomicBool>>) {
    let mut buf = vec![0u8; 64 << 10];
    loop {
        let n = match from.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => n,
        };
        while held.as_ref().is_some_and(|h| h.load(Ordering::Acquire)) {
            std::thread::sleep(Duration::from_millis(1));
        }
        if to.write_all(&buf[..n]).is_err() {
            break;
        }
    }
    let _ = from.shutdown(Shutdown::Both);
    let _ = to.shutdown(Shutdown::Both);
}

fn engine(url: &str, name: &str) -> Arc<TransferEngine> {
    let e = TransferEngine::new(url, name, false)
        .unwrap_or_else(|err| panic!("create '{name}' via {url}: {err}"));
    e.install_transport("tcp", None).unwrap();
    e
}

fn data_port(e: &TransferEngine) -> u16 {
    e.metadata().local_desc().unwrap().tcp_data_port
}

/// Point `name`'s published descriptor at data port `port` (the proxy).
fn route_through(store: &HttpStore, name: &str, port: u16) {
    let key = format!("mooncake/ram/{name}");
    let mut v: serde_json::Value =
        serde_json::from_str(&store.get(&key).unwrap().unwrap()).unwrap();
    v["tcp_data_port"] = port.into();
    store.set(&key, &v.to_string()).unwrap();
}

fn replaced_owners(e: &TransferEngine) -> u64 {
    let v: serde_json::Value = serde_json::from_str(&e.show_links(true)).unwrap();
    v["transports"]["tcp"]["replaced_owners"].as_u64().unwrap()
}

/// The old owner goes with `old_requests()` WRITEs in flight to it; the
/// new one registers its buffer at the same address as the old one
/// (`same_address`) or at another.
fn replaced_owner(same_address: bool) {
    let srv = MetadataServer::start("127.0.0.1:0", None, 4).unwrap();
    let direct = HttpStore::new(&srv.url()).unwrap();
    let srv_port: u16 = srv
        .url()
        .rsplit(':')
        .next()
        .unwrap()
        .split('/')
        .next()
        .unwrap()
        .parse()
        .unwrap();
    let meta_proxy = Proxy::start(srv_port);
    let init_url = format!("http://127.0.0.1:{}/metadata", meta_proxy.port);
    let pid = std::process::id();
    let name = format!("incarnation-target-{pid}-{same_address}");
    let n = old_requests();
    let len = n * BLOCK;

    let old = engine(&srv.url(), &name);
    let mut mem = Guarded::new(len);
    let mut other = Guarded::new(len);
    old.register_local_memory(mem.addr(), len as u64, "cpu:0", true)
        .unwrap();
    let data = Proxy::start(data_port(&old));
    route_through(&direct, &name, data.port);

    let init = engine(&init_url, &format!("incarnation-init-{pid}-{same_address}"));
    let src = Guarded::new(len);
    init.register_local_memory(src.addr(), len as u64, "cpu:0", true)
        .unwrap();
    let id = init.open_segment(&name).unwrap();
    let warm = run_batch(
        &init,
        &[req(Opcode::Write, src.addr(), id, mem.addr(), BLOCK as u64)],
        LIMIT,
    );
    assert_eq!(warm[0].status, TaskStatus::Completed, "warm-up WRITE");

    // The old session: WRITEs of 0xAB held at the proxy, so they are in
    // flight when the old owner goes.
    let mut src = src;
    src.data_mut().fill(0xAB);
    meta_proxy.held.store(true, Ordering::Release);
    data.held.store(true, Ordering::Release);
    data.backend.store(0, Ordering::Release);
    let reqs: Vec<_> = (0..n as u64)
        .map(|i| {
            let off = i * BLOCK as u64;
            req(
                Opcode::Write,
                src.addr() + off,
                id,
                mem.addr() + off,
                BLOCK as u64,
            )
        })
        .collect();
    let batch = init.allocate_batch_id(n);
    init.submit_transfer(batch, &reqs, None).unwrap();
    old.shutdown();
    drop(old);

    // The new owner, same name; its buffer at the old address or another.
    mem.data_mut().fill(0);
    other.data_mut().fill(0);
    let new = engine(&srv.url(), &name);
    let (new_buf, new_len) = if same_address {
        (mem.addr(), len as u64)
    } else {
        (other.addr(), len as u64)
    };
    new.register_local_memory(new_buf, new_len, "cpu:0", true)
        .unwrap();
    route_through(&direct, &name, data.port);
    data.backend.store(data_port(&new), Ordering::Release);
    data.held.store(false, Ordering::Release);
    meta_proxy.held.store(false, Ordering::Release);

    let st = wait_all(&init, batch, n, LIMIT);
    let failed = st.iter().filter(|s| s.status == TaskStatus::Failed).count();
    assert!(
        st.iter()
            .all(|s| matches!(s.status, TaskStatus::Failed | TaskStatus::Completed)),
        "every old-session task ends: {:?}",
        st.iter().map(|s| s.status).collect::<Vec<_>>()
    );
    let stale = mem
        .data()
        .iter()
        .chain(other.data())
        .filter(|&&b| b != 0)
        .count();
    assert_eq!(
        stale, 0,
        "{stale} bytes of the old session landed in the new owner"
    );
    assert_eq!(
        failed, n,
        "the old session's WRITEs never reached the old owner, so all fail"
    );
    assert_eq!(
        replaced_owners(&init),
        1,
        "the initiator saw the owner replaced once"
    );
    assert_eq!(
        init.metadata()
            .segment_desc(id)
            .unwrap()
            .te_rs_incarnation
            .as_deref(),
        Some(new.incarnation()),
        "the initiator now knows the new owner"
    );

    // Later submits on the same handle, no reopening: to the new buffer they
    // complete, with the new bytes.
    let fresh = pattern(5, BLOCK);
    src.data_mut()[..BLOCK].copy_from_slice(&fresh);
    let st = run_batch(
        &init,
        &[req(Opcode::Write, src.addr(), id, new_buf, BLOCK as u64)],
        LIMIT,
    );
    assert_eq!(
        st[0].status,
        TaskStatus::Completed,
        "next submit to the new owner"
    );
    let landed = if same_address {
        mem.data()
    } else {
        other.data()
    };
    assert!(
        landed[..BLOCK] == fresh[..],
        "the new owner holds the new bytes"
    );
    if !same_address {
        // The old address is not the new owner's: refused, nothing lands.
        let st = run_batch(
            &init,
            &[req(Opcode::Write, src.addr(), id, mem.addr(), BLOCK as u64)],
            LIMIT,
        );
        assert_eq!(st[0].status, TaskStatus::Failed);
        assert!(mem.data().iter().all(|&b| b == 0));
    }
    new.shutdown();
    init.shutdown();
}

#[test]
fn replaced_owner_buffer_at_the_same_address() {
    replaced_owner(true);
}

#[test]
fn replaced_owner_buffer_at_another_address() {
    replaced_owner(false);
}
