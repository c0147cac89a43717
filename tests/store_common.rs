//! Shared conformance checks for the metadata store tests (included with
//! `#[path]` by tests/store_*.rs; as its own test target it has no tests).
#![allow(dead_code)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use transfer_engine::metadata::descriptor::SegmentDesc;
use transfer_engine::metadata::store::MetadataStore;
use transfer_engine::metadata::Metadata;

/// Serialises environment reads/writes inside one test binary
/// (`MC_METADATA_CLUSTER_ID`, `MC_REDIS_*` are read at construction).
pub static ENV_LOCK: Mutex<()> = Mutex::new(());

/// The address of a real server from `var`, or a failure telling how to get
/// one. `None` only when TE_SKIP_SERVICE_TESTS=1 is set explicitly.
pub fn service_env(var: &str) -> Option<String> {
    match std::env::var(var) {
        Ok(v) if !v.is_empty() => Some(v),
        _ if std::env::var("TE_SKIP_SERVICE_TESTS").as_deref() == Ok("1") => {
            eprintln!("{var} unset and TE_SKIP_SERVICE_TESTS=1: skipping");
            None
        }
        _ => panic!(
            "{var} is not set: run `eval \"$(scripts/services.sh start)\"` first \
             (or set TE_SKIP_SERVICE_TESTS=1 to skip the real-server tests on purpose)"
        ),
    }
}

/// Keys unique to this process and test, so parallel runs don't collide.
pub fn unique(tag: &str) -> String {
    static N: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let n = N.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let t = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos())
        .unwrap_or(0);
    format!("te-test/{tag}/{}-{t}-{n}", std::process::id())
}

pub fn round_trip(store: &dyn MetadataStore) {
    let key = unique("rt");
    assert_eq!(store.get(&key).unwrap(), None);
    store.set(&key, "{\"a\":1}").unwrap();
    assert_eq!(store.get(&key).unwrap().as_deref(), Some("{\"a\":1}"));
    store.set(&key, "{\"a\":2}\n").unwrap();
    assert_eq!(store.get(&key).unwrap().as_deref(), Some("{\"a\":2}\n"));
    store.remove(&key).unwrap();
    assert_eq!(store.get(&key).unwrap(), None);
    // Removing a missing key is not an error (engine destroy after a crash).
    store.remove(&key).unwrap();
}

pub fn missing_key(store: &dyn MetadataStore) {
    assert_eq!(store.get(&unique("never-written")).unwrap(), None);
}

pub fn odd_keys(store: &dyn MetadataStore) {
    let base = unique("odd");
    let keys = [
        format!("{base}/mooncake/rpc_meta/127.0.0.1:22067"),
        format!("{base}/mooncake/ram/[::1]:15000"),
        format!("{base}/a b+c%20&key=x?#é"),
    ];
    for (i, k) in keys.iter().enumerate() {
        store.set(k, &format!("{{\"i\":{i}}}")).unwrap();
    }
    for (i, k) in keys.iter().enumerate() {
        assert_eq!(
            store.get(k).unwrap().as_deref(),
            Some(format!("{{\"i\":{i}}}").as_str()),
            "key {k}"
        );
        store.remove(k).unwrap();
        assert_eq!(store.get(k).unwrap(), None, "key {k}");
    }
}

/// A 1 MiB JSON value (a descriptor with many buffers is this big).
pub fn large_value(store: &dyn MetadataStore) {
    let key = unique("large");
    let filler: String = (0..(1 << 20))
        .map(|i| (b'a' + (i % 26) as u8) as char)
        .collect();
    let value = format!("{{\"filler\":\"{filler}\",\"u\":\"\\u00e9\"}}");
    assert!(value.len() > 1 << 20);
    store.set(&key, &value).unwrap();
    assert_eq!(store.get(&key).unwrap().as_deref(), Some(value.as_str()));
    store.remove(&key).unwrap();
}

pub fn concurrent(store: Arc<dyn MetadataStore>) {
    let base = unique("conc");
    let threads: Vec<_> = (0..8)
        .map(|t| {
            let store = store.clone();
            let base = base.clone();
            std::thread::spawn(move || {
                for i in 0..20 {
                    let key = format!("{base}/{t}/{i}");
                    let value = format!("{{\"t\":{t},\"i\":{i}}}");
                    store.set(&key, &value).unwrap();
                    assert_eq!(store.get(&key).unwrap().as_deref(), Some(value.as_str()));
                }
                for i in 0..20 {
                    store.remove(&format!("{base}/{t}/{i}")).unwrap();
                }
            })
        })
        .collect();
    for t in threads {
        t.join().expect("worker thread panicked");
    }
    for t in 0..8 {
        assert_eq!(store.get(&format!("{base}/{t}/0")).unwrap(), None);
    }
}

/// Every operation against a dead server fails (no hang) within `limit`.
pub fn unreachable(store: &dyn MetadataStore, limit: Duration) {
    let t = Instant::now();
    assert!(store.get("k").is_err(), "get on a dead server must fail");
    assert!(
        store.set("k", "{}").is_err(),
        "set on a dead server must fail"
    );
    assert!(
        store.remove("k").is_err(),
        "remove on a dead server must fail"
    );
    let took = t.elapsed();
    assert!(
        took < limit,
        "dead-server calls took {took:?} (limit {limit:?})"
    );
}

/// A TCP segment descriptor as the C++ engine publishes it.
pub fn tcp_desc(name: &str) -> SegmentDesc {
    let text = format!(
        "{{\"buffers\":[{{\"addr\":140001906171904,\"length\":1048576,\"name\":\"{name}\"}}],\
         \"name\":\"{name}\",\"protocol\":\"tcp\",\"tcp_data_port\":16093,\
         \"tcp_proto_version\":2,\"timestamp\":\"2026-11-24 07:09:32.203302\"}}"
    );
    serde_json::from_str(&text).expect("test descriptor parses")
}

fn metadata_with_cluster(conn: &str, cluster: &str, name: &str) -> Arc<Metadata> {
    let _g = ENV_LOCK.lock();
    std::env::set_var("MC_METADATA_CLUSTER_ID", cluster);
    let md = Metadata::new(conn, name);
    std::env::remove_var("MC_METADATA_CLUSTER_ID");
    md.expect("Metadata::new")
}

/// Two clusters on one store don't see each other's segments; the value is
/// stored under `mooncake/<cluster>/ram/<name>` in the store's writer style.
pub fn cluster_isolation(conn: &str, raw: &dyn MetadataStore, trailing_newline: bool) {
    let tag = unique("cl").replace('/', "-");
    let (ca, cb) = (format!("{tag}-a"), format!("{tag}-b"));
    let seg = format!("seg-{tag}");
    let a = metadata_with_cluster(conn, &ca, &seg);
    let b = metadata_with_cluster(conn, &cb, "reader-b");
    let a2 = metadata_with_cluster(conn, &ca, "reader-a");

    a.set_local_desc(tcp_desc(&seg)).unwrap();
    let key = format!("mooncake/{ca}/ram/{seg}");
    let stored = raw
        .get(&key)
        .unwrap()
        .expect("descriptor stored under the cluster prefix");
    assert_eq!(
        stored.ends_with('\n'),
        trailing_newline,
        "stored value {stored:?}"
    );
    assert!(
        stored.starts_with("{\"buffers\":[{\"addr\":140001906171904,"),
        "{stored}"
    );
    assert_eq!(raw.get(&format!("mooncake/ram/{seg}")).unwrap(), None);

    assert!(
        b.open_segment(&seg).is_err(),
        "cluster b must not see cluster a's segment"
    );
    let id = a2
        .open_segment(&seg)
        .expect("same cluster sees the segment");
    let desc = a2.segment_desc(id).expect("descriptor cached");
    assert_eq!(desc.name, seg);
    assert_eq!(desc.buffers.len(), 1);

    a.remove_local_desc();
    assert_eq!(raw.get(&key).unwrap(), None);
}

/// Tests that restart a shared server take this for writing; all others
/// hold it for reading, so nobody else sees the outage.
pub static SERVICE_LOCK: parking_lot::RwLock<()> = parking_lot::RwLock::new(());

/// `scripts/services.sh restart <which>`, failing the test if it fails.
pub fn restart_service(which: &str) {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/services.sh");
    let out = std::process::Command::new("bash")
        .args([script, "restart", which])
        .output()
        .expect("run scripts/services.sh");
    assert!(
        out.status.success(),
        "services.sh restart {which} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Wait (bounded) until `f` succeeds; returns its last error otherwise.
pub fn eventually<T, E: std::fmt::Debug>(
    limit: Duration,
    mut f: impl FnMut() -> Result<T, E>,
) -> T {
    let deadline = Instant::now() + limit;
    loop {
        match f() {
            Ok(v) => return v,
            Err(e) if Instant::now() >= deadline => panic!("still failing after {limit:?}: {e:?}"),
            Err(_) => std::thread::sleep(Duration::from_millis(100)),
        }
    }
}
